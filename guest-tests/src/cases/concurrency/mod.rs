//! Concurrency and process boundaries: threads allocating, mapping and syncing at once;
//! kernel vmaps racing user SYNC brackets and the close of the original fd; dma-buf fds
//! passed between processes with SCM_RIGHTS; mappings inherited across fork.
//!
//! Every test is bounded in iterations and in wall time (the guest runs under TCG), and
//! leaves no thread, process, fd, mapping or importer hold behind when it returns: the
//! runner checks for leaked dma-bufs once the test's process is gone.

use std::io;
#[cfg(test)]
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use crate::harness::Stop;
use crate::process;

mod fork_mappings;
mod scm_rights;
mod threads;
mod vmap_race;

pub use fork_mappings::fork_with_live_mappings;
pub use scm_rights::scm_rights_handoff;
pub use threads::threads_alloc_map_sync;
pub use vmap_race::vmap_sync_close_race;

/// Length of one racing phase; with the iteration caps it keeps each test at a few seconds
/// under TCG (2 vCPUs).
const PHASE: Duration = Duration::from_secs(2);
/// How long a forked child may take to exit once its work is done, before it is killed.
const CHILD_EXIT_LIMIT: Duration = Duration::from_secs(5);
/// A forked child's own alarm, in case its parent hangs or dies without killing it.
const CHILD_ALARM: Duration = Duration::from_secs(10);
/// Exit code of a forked child that lost its socket to the parent.
const CHILD_SOCKET_FAILED: i32 = 102;

// ---------------------------------------------------------------------------------------
// Content patterns

/// The byte at offset `i` of a buffer written with `seed`. Hashed, so it differs by offset
/// within a page, by page and by seed: a stale, shifted or foreign page shows.
fn thread_byte(seed: u32, i: usize) -> u8 {
    let mut x = (i as u32) ^ seed.wrapping_mul(0x9e37_79b9);
    x = x.wrapping_mul(0x85eb_ca6b);
    x ^= x >> 16;
    (x ^ (x >> 8)) as u8
}

/// Writes the pattern of `seed` into `bytes`, which start at offset `base` of their buffer.
fn fill(bytes: &mut [u8], base: usize, seed: u32) {
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = thread_byte(seed, base + i);
    }
}

/// The first byte of `bytes` (at offset `base`) that is not the pattern of `seed`:
/// (offset, read, expected).
fn first_mismatch(bytes: &[u8], base: usize, seed: u32) -> Option<(usize, u8, u8)> {
    bytes.iter().enumerate().find_map(|(i, &b)| {
        let want = thread_byte(seed, base + i);
        (b != want).then_some((base + i, b, want))
    })
}

/// Checks `bytes` (at offset `base`) against the pattern of `seed`; says where it first
/// differs and how much differs.
fn check(bytes: &[u8], base: usize, seed: u32) -> Result<(), String> {
    let Some((at, got, want)) = first_mismatch(bytes, base, seed) else {
        return Ok(());
    };
    let bad = bytes
        .iter()
        .enumerate()
        .filter(|&(i, &b)| b != thread_byte(seed, base + i))
        .count();
    Err(format!(
        "byte {at} reads {got:#04x}, expected {want:#04x} (pattern {seed:#x}); \
         {bad} of {} bytes differ",
        bytes.len()
    ))
}

// ---------------------------------------------------------------------------------------
// Forked children

/// A failed fork, as a test failure.
fn fork_failed(e: io::Error) -> Stop {
    Stop::Fail(format!("fork: {e}"))
}

// Exit codes of the forked child, so the parent can say what the child saw.
const FORK_SYNC_FAILED: i32 = 10;
const FORK_A_WRONG: i32 = 11;
const FORK_VMAP_FAILED: i32 = 12;
const FORK_VMAP_WRONG: i32 = 13;

fn child_exit_meaning(code: i32) -> &'static str {
    match code {
        0 => "all checks passed",
        1 => "a buffer failed its checks (the verdicts say which)",
        FORK_SYNC_FAILED => "SYNC on the inherited fd failed",
        FORK_A_WRONG => "pattern A was not visible through the inherited mapping",
        FORK_VMAP_FAILED => "IMPORTER_VMAP failed in the child",
        FORK_VMAP_WRONG => "the importer's checksum in the child did not cover A+B",
        process::PANICKED => "the child panicked",
        CHILD_SOCKET_FAILED => "the child lost its socket to the parent",
        _ => "unknown exit code",
    }
}

/// A memfd stands in for a dma-buf: the SCM_RIGHTS plumbing does not care.
#[cfg(test)]
fn memfd_with(bytes: &[u8]) -> OwnedFd {
    use std::io::Write;
    // SAFETY: the name is NUL-terminated and outlives the call.
    let fd = unsafe { libc::memfd_create(c"heaprig-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: memfd_create returned a fresh fd nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes).unwrap();
    f.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::uapi::{fd_size, DmaBuf, PAGE};

    #[test]
    fn pattern_differs_by_seed_offset_and_page() {
        let a: Vec<u8> = (0..2 * PAGE as usize).map(|i| thread_byte(1, i)).collect();
        let b: Vec<u8> = (0..2 * PAGE as usize).map(|i| thread_byte(2, i)).collect();
        let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
        assert!(
            differ > PAGE as usize,
            "seeds 1 and 2 differ in only {differ} bytes"
        );
        assert_ne!(
            a[..PAGE as usize],
            a[PAGE as usize..],
            "two pages of one seed are equal"
        );
        assert!(a[..256].iter().any(|&x| x != a[0]), "a page starts flat");
    }

    #[test]
    fn check_reports_the_first_mismatch() {
        let mut v = vec![0; 3 * PAGE as usize];
        fill(&mut v, 100, 7);
        assert_eq!(check(&v, 100, 7), Ok(()));
        v[5] ^= 0xff;
        v[9] ^= 0x01;
        assert_eq!(first_mismatch(&v, 100, 7).map(|m| m.0), Some(105));
        let msg = check(&v, 100, 7).unwrap_err();
        assert!(msg.starts_with("byte 105 reads"), "{msg}");
        assert!(msg.contains("2 of 12288 bytes differ"), "{msg}");
    }

    #[test]
    fn dup_gives_an_independent_fd() {
        let file = DmaBuf::from_fd(memfd_with(&[1; 10])).unwrap();
        let d = file.try_clone().unwrap();
        assert_ne!(d.raw_fd(), file.raw_fd());
        drop(file);
        assert_eq!(d.len, 10);
        assert_eq!(fd_size(d.raw_fd()).unwrap(), 10);
    }
}
