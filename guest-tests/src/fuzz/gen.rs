//! Argument generators: each draws one operation's arguments from the PRNG.

use crate::uapi::{
    DMA_BUF_SYNC_END, DMA_BUF_SYNC_READ, DMA_BUF_SYNC_RW, DMA_BUF_SYNC_START, DMA_BUF_SYNC_WRITE,
    KIB, MIB, PAGE,
};

use super::rng::Rng;
use super::{HUGE_MIN, RDWR, RDWR_CLOEXEC, VALID_FD_FLAGS};

/// A requested allocation length: mostly 4 KiB..=256 KiB, some not page multiples, rarely
/// 1 or 2 MiB.
pub(super) fn gen_len(rng: &mut Rng) -> u64 {
    match rng.percent() {
        0..=2 => 1,
        3..=7 => 1 + rng.below(PAGE - 1),
        8..=22 => 1 + rng.below(256 * KIB),
        23..=27 => [MIB, 2 * MIB, MIB + 1, 2 * MIB - 1][rng.index(4)],
        _ => (1 + rng.below(64)) * PAGE,
    }
}

/// fd_flags the core accepts: usually O_RDWR|O_CLOEXEC, sometimes another access mode.
pub(super) fn gen_valid_fd_flags(rng: &mut Rng) -> u32 {
    match rng.percent() {
        0..=79 => RDWR_CLOEXEC,
        80..=87 => RDWR,
        _ => {
            let mode = [libc::O_RDONLY, libc::O_WRONLY, libc::O_ACCMODE][rng.index(3)] as u32;
            mode | if rng.chance(50) {
                libc::O_CLOEXEC as u32
            } else {
                0
            }
        }
    }
}

/// An allocation request with at least one bad argument. Lengths beyond RAM only when the
/// heap refuses them at once (`huge_ok`): the C system heap allocates until the OOM killer
/// runs, so there only lengths that page-align to 0 are used.
pub(super) fn gen_bad_alloc(rng: &mut Rng, huge_ok: bool) -> (u64, u32, u64) {
    let mut len = gen_len(rng);
    let mut fd_flags = RDWR_CLOEXEC;
    let mut heap_flags = 0;
    let first = rng.below(4);
    let second = if rng.chance(20) { rng.below(4) } else { first };
    for kind in [first, second] {
        match kind {
            0 => len = 0,
            1 => {
                let bad: Vec<u32> = (0..32)
                    .filter(|b| (1u32 << b) & VALID_FD_FLAGS == 0)
                    .collect();
                let bit = bad[rng.index(bad.len())];
                fd_flags = if rng.chance(10) {
                    u32::MAX
                } else {
                    RDWR_CLOEXEC | (1 << bit)
                };
            }
            2 => {
                heap_flags = if rng.chance(10) {
                    u64::MAX
                } else {
                    1 << rng.below(64)
                }
            }
            _ => {
                let wrapping = [u64::MAX, u64::MAX - rng.below(PAGE - 1)];
                let r = rng.below(6);
                len = if huge_ok && r >= 2 {
                    [1 << 40, 1 << 50, 1 << 62, HUGE_MIN + rng.below(1 << 62)][(r - 2) as usize]
                } else {
                    wrapping[(r % 2) as usize]
                };
            }
        }
    }
    (len, fd_flags, heap_flags)
}

/// Offset and length of an mmap of a `size`-byte buffer: mostly valid, sometimes
/// misaligned, past the end, empty or absurd.
pub(super) fn gen_mmap(rng: &mut Rng, size: u64) -> (u64, u64) {
    let pages = size / PAGE;
    let off = match rng.percent() {
        0..=59 => 0,
        60..=84 => rng.below(pages) * PAGE,
        85..=89 => (pages + rng.below(4)) * PAGE,
        90..=94 => rng.below(pages) * PAGE + 1 + rng.below(PAGE - 1),
        _ => 1 << 50,
    };
    let rest = size.saturating_sub(off);
    let len = match rng.percent() {
        0..=49 => {
            if rest > 0 {
                rest
            } else {
                PAGE
            }
        }
        50..=74 => 1 + rng.below(rest.max(1)),
        75..=84 => (1 + rng.below(pages)) * PAGE,
        85..=89 => 0,
        _ => rest + PAGE * (1 + rng.below(4)),
    };
    (off, len)
}

/// SYNC flags: valid START/END brackets mostly, then no direction, unknown bits, noise.
pub(super) fn gen_sync_flags(rng: &mut Rng) -> u64 {
    let dir = [DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_RW][rng.index(3)];
    match rng.percent() {
        0..=34 => DMA_BUF_SYNC_START | dir,
        35..=69 => DMA_BUF_SYNC_END | dir,
        70..=79 => [DMA_BUF_SYNC_START, DMA_BUF_SYNC_END][rng.index(2)],
        80..=94 => {
            let end = [DMA_BUF_SYNC_START, DMA_BUF_SYNC_END][rng.index(2)];
            end | dir | (1 << (3 + rng.below(61)))
        }
        _ => rng.u64(),
    }
}

pub(super) fn sync_name(flags: u64) -> String {
    let known = match flags {
        0 => "START",
        1 => "START|READ",
        2 => "START|WRITE",
        3 => "START|RW",
        4 => "END",
        5 => "END|READ",
        6 => "END|WRITE",
        7 => "END|RW",
        _ => return format!("{flags:#x}"),
    };
    known.to_string()
}

pub(super) fn gen_name(rng: &mut Rng) -> String {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_.:/ ";
    let len = rng.index(41);
    (0..len)
        .map(|_| CHARS[rng.index(CHARS.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::expect::{expect_alloc, expect_mmap, expect_sync, page_align, Expect};

    #[test]
    fn generated_allocations_are_safe_for_the_c_heap() {
        let mut r = Rng::new(11);
        for _ in 0..10_000 {
            let len = gen_len(&mut r);
            assert!((1..=2 * MIB).contains(&len));
            assert_eq!(expect_alloc(len, gen_valid_fd_flags(&mut r), 0), Expect::Ok);
            // Without huge_ok every bad request is refused before any page is allocated.
            let (len, fd_flags, heap_flags) = gen_bad_alloc(&mut r, false);
            assert_eq!(
                expect_alloc(len, fd_flags, heap_flags),
                Expect::Err(libc::EINVAL),
                "len {len:#x} fd_flags {fd_flags:#x} heap_flags {heap_flags:#x}"
            );
            let (len, fd_flags, heap_flags) = gen_bad_alloc(&mut r, true);
            assert!(matches!(
                expect_alloc(len, fd_flags, heap_flags),
                Expect::Err(libc::EINVAL) | Expect::AnyErr
            ));
        }
    }

    #[test]
    fn generated_mmaps_stay_near_the_buffer() {
        let mut r = Rng::new(5);
        let mut ok = 0;
        for _ in 0..10_000 {
            let size = page_align(gen_len(&mut r));
            let (off, len) = gen_mmap(&mut r, size);
            assert!(len <= size + 4 * PAGE);
            assert!(off < size + 4 * PAGE || off == 1 << 50);
            if expect_mmap(off, len, size, RDWR) == Expect::Ok {
                ok += 1;
                assert!(off + len <= size);
            }
        }
        assert!(ok > 5_000, "only {ok} of 10000 mmaps are valid");
    }

    #[test]
    fn generated_sync_flags_cover_valid_and_invalid() {
        let mut r = Rng::new(8);
        let valid = (0..1000)
            .filter(|_| expect_sync(gen_sync_flags(&mut r)) == Expect::Ok)
            .count();
        assert!((500..900).contains(&valid), "{valid} valid of 1000");
    }
}
