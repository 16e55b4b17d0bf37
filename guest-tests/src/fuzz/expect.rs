//! What the kernel must answer to each request, as a function of its arguments.

use std::io;

use crate::harness::{errno_name, result_name};
use crate::uapi::{DMA_BUF_SYNC_END, DMA_BUF_SYNC_RW, PAGE};

use super::{HUGE_MIN, RDWR, VALID_FD_FLAGS};

/// Allocation lengths up to here must succeed (the fuzzer asks for at most ~2 MiB).
const SANE_MAX: u64 = 1 << 30;

/// What an operation must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expect {
    Ok,
    Err(i32),
    /// Fail, with any errno.
    AnyErr,
    /// Succeed, or fail with this errno.
    OkOr(i32),
    /// Either outcome; only the absence of a crash or splat is checked.
    Any,
}

fn errno_str(e: i32) -> String {
    errno_name(&io::Error::from_raw_os_error(e))
}

impl Expect {
    fn admits<T>(self, r: &io::Result<T>) -> bool {
        match (self, r) {
            (Expect::Any, _) | (Expect::Ok | Expect::OkOr(_), Ok(_)) | (Expect::AnyErr, Err(_)) => {
                true
            }
            (Expect::Err(e) | Expect::OkOr(e), Err(x)) => x.raw_os_error() == Some(e),
            _ => false,
        }
    }

    fn describe(self) -> String {
        match self {
            Expect::Ok => "ok".to_string(),
            Expect::Err(e) => errno_str(e),
            Expect::AnyErr => "an error".to_string(),
            Expect::OkOr(e) => format!("ok or {}", errno_str(e)),
            Expect::Any => "anything".to_string(),
        }
    }
}

pub(super) fn judge<T>(what: &str, e: Expect, r: &io::Result<T>) -> Result<(), String> {
    if e.admits(r) {
        Ok(())
    } else {
        Err(format!(
            "{what}: expected {}, got {}",
            e.describe(),
            result_name(r)
        ))
    }
}

/// `PAGE_ALIGN` as the kernel computes it on a 64-bit `size_t`: wraps to 0 near `u64::MAX`.
pub(super) fn page_align(len: u64) -> u64 {
    len.wrapping_add(PAGE - 1) & !(PAGE - 1)
}

/// `DMA_HEAP_IOCTL_ALLOC`: the core rejects unknown fd_flags, any heap_flags and a length
/// that page-aligns to 0 with EINVAL (alloc_sizes records both heaps doing so); sizes the
/// fuzzer uses succeed; sizes beyond any VM's RAM fail.
pub(super) fn expect_alloc(len: u64, fd_flags: u32, heap_flags: u64) -> Expect {
    if fd_flags & !VALID_FD_FLAGS != 0 || heap_flags != 0 || page_align(len) == 0 {
        Expect::Err(libc::EINVAL)
    } else if len <= SANE_MAX {
        Expect::Ok
    } else if len >= HUGE_MIN {
        Expect::AnyErr
    } else {
        Expect::Any
    }
}

/// `DMA_BUF_IOCTL_SYNC`: only READ/WRITE/END bits, and at least one direction. END without
/// START is fine (sync_end_storm).
pub(super) fn expect_sync(flags: u64) -> Expect {
    if flags & !(DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END) != 0 || flags & DMA_BUF_SYNC_RW == 0 {
        Expect::Err(libc::EINVAL)
    } else {
        Expect::Ok
    }
}

/// A shared read-write mmap of a dma-buf opened with access mode `accmode`, in the order
/// the kernel checks: misaligned offset and zero length (the syscall), the file mode
/// (do_mmap: a shared writable mapping needs FMODE_READ and FMODE_WRITE), then the range
/// (dma-buf core: past the size is EINVAL, as mmap_bounds records).
pub(super) fn expect_mmap(off: u64, len: u64, size: u64, accmode: u32) -> Expect {
    if off % PAGE != 0 || len == 0 {
        Expect::Err(libc::EINVAL)
    } else if accmode != RDWR {
        Expect::Err(libc::EACCES)
    } else if (off / PAGE).saturating_add(page_align(len) / PAGE) > size / PAGE {
        Expect::Err(libc::EINVAL)
    } else {
        Expect::Ok
    }
}

/// `DMA_BUF_SET_NAME_B` copies at most DMA_BUF_NAME_LEN (32) bytes with the NUL.
pub(super) fn expect_set_name(len: usize) -> Expect {
    if len <= 31 {
        Expect::Ok
    } else {
        Expect::OkOr(libc::EINVAL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::RDWR_CLOEXEC;
    use crate::uapi::{DMA_BUF_SYNC_READ, DMA_BUF_SYNC_START, DMA_BUF_SYNC_WRITE, MIB};

    #[test]
    fn expect_sync_table() {
        use Expect::{Err, Ok};
        let einval = Err(libc::EINVAL);
        for dir in [DMA_BUF_SYNC_READ, DMA_BUF_SYNC_WRITE, DMA_BUF_SYNC_RW] {
            assert_eq!(expect_sync(DMA_BUF_SYNC_START | dir), Ok);
            assert_eq!(expect_sync(DMA_BUF_SYNC_END | dir), Ok);
            assert_eq!(expect_sync(dir | 0x8), einval);
            assert_eq!(expect_sync(dir | 1 << 63), einval);
        }
        assert_eq!(expect_sync(DMA_BUF_SYNC_START), einval);
        assert_eq!(expect_sync(DMA_BUF_SYNC_END), einval);
        assert_eq!(expect_sync(u64::MAX), einval);
    }

    #[test]
    fn expect_alloc_table() {
        let einval = Expect::Err(libc::EINVAL);
        assert_eq!(expect_alloc(4096, RDWR_CLOEXEC, 0), Expect::Ok);
        assert_eq!(expect_alloc(1, RDWR_CLOEXEC, 0), Expect::Ok);
        assert_eq!(expect_alloc(4097, libc::O_RDONLY as u32, 0), Expect::Ok);
        assert_eq!(expect_alloc(2 * MIB, VALID_FD_FLAGS, 0), Expect::Ok);
        assert_eq!(expect_alloc(0, RDWR_CLOEXEC, 0), einval);
        assert_eq!(expect_alloc(u64::MAX, RDWR_CLOEXEC, 0), einval);
        assert_eq!(expect_alloc(u64::MAX - 4094, RDWR_CLOEXEC, 0), einval);
        assert_eq!(expect_alloc(4096, 0x8000_0000, 0), einval);
        assert_eq!(
            expect_alloc(4096, RDWR_CLOEXEC | libc::O_NONBLOCK as u32, 0),
            einval
        );
        assert_eq!(expect_alloc(4096, RDWR_CLOEXEC, 1), einval);
        assert_eq!(expect_alloc(1 << 50, RDWR_CLOEXEC, 1), einval);
        assert_eq!(expect_alloc(1 << 50, RDWR_CLOEXEC, 0), Expect::AnyErr);
        // Page-aligned just below the wrap: a real request beyond RAM.
        assert_eq!(
            expect_alloc(u64::MAX - 4095, RDWR_CLOEXEC, 0),
            Expect::AnyErr
        );
        assert_eq!(expect_alloc(1 << 35, RDWR_CLOEXEC, 0), Expect::Any);
    }

    #[test]
    fn expect_mmap_table() {
        let (einval, eacces) = (Expect::Err(libc::EINVAL), Expect::Err(libc::EACCES));
        let size = 16 * PAGE;
        assert_eq!(expect_mmap(0, size, size, RDWR), Expect::Ok);
        assert_eq!(expect_mmap(0, 1, size, RDWR), Expect::Ok);
        assert_eq!(expect_mmap(15 * PAGE, 100, size, RDWR), Expect::Ok);
        assert_eq!(expect_mmap(15 * PAGE, PAGE + 1, size, RDWR), einval);
        assert_eq!(expect_mmap(size, PAGE, size, RDWR), einval);
        assert_eq!(expect_mmap(0, size + 1, size, RDWR), einval);
        assert_eq!(expect_mmap(1 << 50, PAGE, size, RDWR), einval);
        assert_eq!(expect_mmap(1, PAGE, size, RDWR), einval);
        assert_eq!(expect_mmap(0, 0, size, RDWR), einval);
        assert_eq!(expect_mmap(0, PAGE, size, libc::O_RDONLY as u32), eacces);
        assert_eq!(expect_mmap(0, PAGE, size, libc::O_WRONLY as u32), eacces);
        assert_eq!(
            expect_mmap(size, PAGE, size, libc::O_ACCMODE as u32),
            eacces
        );
        // The syscall rejects a misaligned offset before looking at the file.
        assert_eq!(expect_mmap(1, PAGE, size, libc::O_RDONLY as u32), einval);
    }

    #[test]
    fn expect_set_name_boundary() {
        assert_eq!(expect_set_name(0), Expect::Ok);
        assert_eq!(expect_set_name(31), Expect::Ok);
        assert_eq!(expect_set_name(32), Expect::OkOr(libc::EINVAL));
        assert_eq!(expect_set_name(40), Expect::OkOr(libc::EINVAL));
    }

    #[test]
    fn expect_admits_outcomes() {
        let ok: io::Result<()> = Ok(());
        let einval: io::Result<()> = Err(io::Error::from_raw_os_error(libc::EINVAL));
        let enomem: io::Result<()> = Err(io::Error::from_raw_os_error(libc::ENOMEM));
        assert!(Expect::Ok.admits(&ok) && !Expect::Ok.admits(&einval));
        assert!(Expect::Err(libc::EINVAL).admits(&einval));
        assert!(!Expect::Err(libc::EINVAL).admits(&enomem));
        assert!(!Expect::Err(libc::EINVAL).admits(&ok));
        assert!(Expect::AnyErr.admits(&enomem) && !Expect::AnyErr.admits(&ok));
        assert!(Expect::OkOr(libc::EINVAL).admits(&ok));
        assert!(!Expect::OkOr(libc::EINVAL).admits(&enomem));
        assert!(Expect::Any.admits(&ok) && Expect::Any.admits(&enomem));
        assert_eq!(
            judge("SYNC", Expect::Ok, &einval),
            Err("SYNC: expected ok, got EINVAL".to_string())
        );
    }
}
