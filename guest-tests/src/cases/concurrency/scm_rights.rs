//! `scm_rights_handoff`: dma-buf fds passed between processes with SCM_RIGHTS.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::ensure;
use crate::harness::{Context, Ctx, Outcome, Stop};
use crate::process::{self, recv_with_fd, send_with_fd};
use crate::uapi::{Access, DmaBuf, Heap, KIB, MIB};

use super::{
    check, child_exit_meaning, fill, first_mismatch, fork_failed, CHILD_ALARM, CHILD_EXIT_LIMIT,
    CHILD_SOCKET_FAILED,
};

/// How long the parent waits for each reply from a forked child.
const REPLY_LIMIT: Duration = Duration::from_secs(5);

const HANDOFF_SIZES: [u64; 8] = [
    4 * KIB,
    8 * KIB,
    16 * KIB,
    64 * KIB,
    128 * KIB,
    256 * KIB,
    512 * KIB,
    MIB,
];
/// The buffer the child sends back after rewriting it.
const RETURNED: usize = HANDOFF_SIZES.len() - 1;

fn parent_seed(i: usize) -> u32 {
    0x9a00 + i as u32
}

fn child_seed(i: usize) -> u32 {
    0xc400 + i as u32
}

/// Parent to child: which buffer and how long (the fd rides along as SCM_RIGHTS).
fn encode_offer(index: usize, len: u64) -> [u8; 16] {
    let mut b = [0; 16];
    b[..8].copy_from_slice(&(index as u64).to_le_bytes());
    b[8..].copy_from_slice(&len.to_le_bytes());
    b
}

fn decode_offer(b: &[u8; 16]) -> (u64, u64) {
    let mut index = [0; 8];
    let mut len = [0; 8];
    index.copy_from_slice(&b[..8]);
    len.copy_from_slice(&b[8..]);
    (u64::from_le_bytes(index), u64::from_le_bytes(len))
}

/// Child to parent: what the child found in one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Verdict {
    code: u8,
    got: u8,
    want: u8,
    /// The offset of a mismatch, the size seen, or the errno of a failed call.
    at: u64,
}

impl Verdict {
    const OK: u8 = 0;
    const BAD_OFFER: u8 = 1;
    const NO_FD: u8 = 2;
    const WRONG_SIZE: u8 = 3;
    const MMAP_FAILED: u8 = 4;
    const SYNC_FAILED: u8 = 5;
    const MISMATCH: u8 = 6;
    const LSEEK_FAILED: u8 = 7;

    fn new(code: u8, at: u64) -> Verdict {
        Verdict {
            code,
            got: 0,
            want: 0,
            at,
        }
    }

    fn errno(code: u8, e: &io::Error) -> Verdict {
        Verdict::new(code, e.raw_os_error().unwrap_or(0) as u64)
    }

    fn encode(self) -> [u8; 16] {
        let mut b = [0; 16];
        b[0] = self.code;
        b[1] = self.got;
        b[2] = self.want;
        b[8..].copy_from_slice(&self.at.to_le_bytes());
        b
    }

    fn decode(b: &[u8; 16]) -> Verdict {
        let mut at = [0; 8];
        at.copy_from_slice(&b[8..]);
        Verdict {
            code: b[0],
            got: b[1],
            want: b[2],
            at: u64::from_le_bytes(at),
        }
    }

    fn describe(self, len: u64, seed: u32) -> String {
        let at = self.at;
        match self.code {
            Verdict::OK => "ok".to_string(),
            Verdict::BAD_OFFER => "the child got a record for another buffer".to_string(),
            Verdict::NO_FD => "the child received no fd with the record".to_string(),
            Verdict::WRONG_SIZE => format!("the received fd has size {at}, expected {len}"),
            Verdict::LSEEK_FAILED => format!("lseek on the received fd failed with errno {at}"),
            Verdict::MMAP_FAILED => format!("mmap of the received fd failed with errno {at}"),
            Verdict::SYNC_FAILED => format!("SYNC on the received fd failed with errno {at}"),
            Verdict::MISMATCH => format!(
                "byte {at} reads {:#04x} in the child, the parent wrote {:#04x} \
                 (pattern {seed:#x})",
                self.got, self.want
            ),
            c => format!("unknown verdict code {c}"),
        }
    }
}

/// A dma-buf crosses to a forked child with SCM_RIGHTS while the parent closes its copy at
/// once; the child verifies and rewrites it and sends one buffer back, which the parent
/// verifies through a fresh mapping.
pub fn scm_rights_handoff(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let (ours, theirs) = UnixStream::pair().context("socketpair(AF_UNIX, SOCK_STREAM)")?;
    ours.set_read_timeout(Some(REPLY_LIMIT))
        .context("SO_RCVTIMEO")?;
    let started = Instant::now();
    let (mut kid, (ours, theirs)) =
        process::spawn_with(CHILD_ALARM, (ours, theirs), |(ours, theirs)| {
            drop(ours);
            handoff_child(&theirs)
        })
        .map_err(fork_failed)?;
    drop(theirs);
    let sock = &ours;
    for (i, &len) in HANDOFF_SIZES.iter().enumerate() {
        let buf = heap
            .alloc(len)
            .context(format!("alloc buffer {i} ({len} bytes)"))?;
        {
            let mut map = buf.mmap(0, len as usize).context("mmap")?;
            buf.sync_start(Access::Write).context("SYNC START|WRITE")?;
            fill(map.as_mut_slice(), 0, parent_seed(i));
            buf.sync_end(Access::Write).context("SYNC END|WRITE")?;
        }
        send_with_fd(sock, &encode_offer(i, len), Some(buf.raw_fd()))
            .context(format!("sending buffer {i} with SCM_RIGHTS"))?;
        // From here the fd in flight, then the child's, is the only reference.
        drop(buf);
        let mut reply = [0; 16];
        let back = recv_with_fd(sock, &mut reply)
            .context(format!("the child's verdict on buffer {i} ({len} bytes)"))?;
        let verdict = Verdict::decode(&reply);
        ensure!(
            verdict.code == Verdict::OK,
            "buffer {i} ({len} bytes) in the child: {}",
            verdict.describe(len, parent_seed(i))
        );
        match (back, i == RETURNED) {
            (Some(fd), true) => check_returned(fd, len, child_seed(i))
                .map_err(|e| Stop::Fail(format!("buffer {i} back from the child: {e}")))?,
            (None, true) => {
                return Err(Stop::Fail(format!(
                    "the child's verdict on buffer {i} came without the fd it should send back"
                )))
            }
            (Some(_), false) => {
                return Err(Stop::Fail(format!(
                    "the child's verdict on buffer {i} came with an unexpected fd"
                )))
            }
            (None, false) => {}
        }
    }
    let code = kid.wait(CHILD_EXIT_LIMIT).map_err(Stop::Fail)?;
    ensure!(
        code == 0,
        "the child exited with {code}, expected 0: {}",
        child_exit_meaning(code)
    );
    ctx.diag(format!(
        "{} buffers handed off and checked in {} ms",
        HANDOFF_SIZES.len(),
        started.elapsed().as_millis()
    ));
    ctx.fact(
        "SCM_RIGHTS handoff, sender's copy closed at once",
        "8 buffers (4 KiB..1 MiB) verified in the child",
    );
    ctx.fact(
        "buffer sent back after the child's writes",
        "child's pattern visible through a fresh mapping",
    );
    Ok(())
}

/// The parent's check of the buffer the child rewrote and sent back.
fn check_returned(fd: OwnedFd, len: u64, seed: u32) -> Result<(), String> {
    let buf = DmaBuf::from_fd(fd).map_err(|e| format!("lseek: {e}"))?;
    if buf.len != len {
        return Err(format!("size {}, expected {len}", buf.len));
    }
    let map = buf
        .mmap(0, len as usize)
        .map_err(|e| format!("mmap: {e}"))?;
    buf.sync_start(Access::Read)
        .map_err(|e| format!("SYNC START|READ: {e}"))?;
    let seen = check(map.as_slice(), 0, seed);
    buf.sync_end(Access::Read)
        .map_err(|e| format!("SYNC END|READ: {e}"))?;
    seen.map_err(|e| format!("the child's writes: {e}"))
}

/// The forked child of `scm_rights_handoff`: exit code 0 only if every buffer verified.
fn handoff_child(sock: &UnixStream) -> i32 {
    let mut all_ok = true;
    for (i, &len) in HANDOFF_SIZES.iter().enumerate() {
        let mut offer = [0; 16];
        let Ok(fd) = recv_with_fd(sock, &mut offer) else {
            return CHILD_SOCKET_FAILED;
        };
        let (verdict, back) = take_offer(i, len, &offer, fd);
        all_ok &= verdict.code == Verdict::OK;
        let back_fd = back.as_ref().map(DmaBuf::raw_fd);
        if send_with_fd(sock, &verdict.encode(), back_fd).is_err() {
            return CHILD_SOCKET_FAILED;
        }
        // `back`, the child's copy, closes here; the one in flight keeps the buffer.
    }
    i32::from(!all_ok)
}

/// Verifies the parent's pattern in a received buffer and writes the child's; returns the
/// verdict and, for the buffer that goes back, its fd.
fn take_offer(
    i: usize,
    len: u64,
    offer: &[u8; 16],
    fd: Option<OwnedFd>,
) -> (Verdict, Option<DmaBuf>) {
    if decode_offer(offer) != (i as u64, len) {
        return (Verdict::new(Verdict::BAD_OFFER, 0), None);
    }
    let Some(fd) = fd else {
        return (Verdict::new(Verdict::NO_FD, 0), None);
    };
    let buf = match DmaBuf::from_fd(fd) {
        Ok(buf) if buf.len == len => buf,
        Ok(buf) => return (Verdict::new(Verdict::WRONG_SIZE, buf.len), None),
        Err(e) => return (Verdict::errno(Verdict::LSEEK_FAILED, &e), None),
    };
    let mut map = match buf.mmap(0, len as usize) {
        Ok(m) => m,
        Err(e) => return (Verdict::errno(Verdict::MMAP_FAILED, &e), None),
    };
    let bracket = |r: io::Result<()>| r.map_err(|e| Verdict::errno(Verdict::SYNC_FAILED, &e));
    let verified = (|| {
        bracket(buf.sync_start(Access::Read))?;
        let seen = first_mismatch(map.as_slice(), 0, parent_seed(i));
        bracket(buf.sync_end(Access::Read))?;
        if let Some((at, got, want)) = seen {
            return Err(Verdict {
                code: Verdict::MISMATCH,
                got,
                want,
                at: at as u64,
            });
        }
        bracket(buf.sync_start(Access::Write))?;
        fill(map.as_mut_slice(), 0, child_seed(i));
        bracket(buf.sync_end(Access::Write))
    })();
    drop(map);
    match verified {
        Err(v) => (v, None),
        Ok(()) if i == RETURNED => (Verdict::new(Verdict::OK, 0), Some(buf)),
        Ok(()) => (Verdict::new(Verdict::OK, 0), None),
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::super::memfd_with;
    use super::*;
    use crate::uapi::{fd_size, PAGE};

    #[test]
    fn records_round_trip() {
        assert_eq!(decode_offer(&encode_offer(3, MIB)), (3, MIB));
        let v = Verdict {
            code: Verdict::MISMATCH,
            got: 1,
            want: 2,
            at: 4097,
        };
        assert_eq!(Verdict::decode(&v.encode()), v);
        assert!(v.describe(MIB, 9).contains("byte 4097"));
    }

    #[test]
    fn scm_rights_round_trip_keeps_the_file_after_the_sender_closes() {
        let (a, b) = UnixStream::pair().unwrap();
        b.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let file = memfd_with(&[0x5a; PAGE as usize]);
        send_with_fd(&a, &encode_offer(1, PAGE), Some(file.as_raw_fd())).unwrap();
        drop(file);
        let mut rec = [0; 16];
        let got = recv_with_fd(&b, &mut rec).unwrap().unwrap();
        assert_eq!(decode_offer(&rec), (1, PAGE));
        assert_eq!(fd_size(got.as_raw_fd()).unwrap(), PAGE);
        let got = DmaBuf::from_fd(got).unwrap();
        assert_eq!(got.len, PAGE);
        let map = got.mmap(0, PAGE as usize).unwrap();
        assert!(map.as_slice().iter().all(|&x| x == 0x5a));

        // Without an fd, and a receive that times out.
        send_with_fd(&a, &[9; 16], None).unwrap();
        assert!(recv_with_fd(&b, &mut rec).unwrap().is_none());
        assert_eq!(rec, [9; 16]);
        b.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let e = recv_with_fd(&b, &mut rec).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(a);
        let e = recv_with_fd(&b, &mut rec).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
