//! Typed wrappers for the dma-buf and dma-heap user API, written once.
//!
//! The numbers come from `include/uapi/linux/dma-heap.h` and `include/uapi/linux/dma-buf.h`;
//! they are built with the same `_IOC` encoding the kernel uses, never copied as literals.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

/// The directory where dma-buf heaps appear.
pub const DMA_HEAP_DIR: &str = "/dev/dma_heap";

/// Sizes the tests speak in; the guest is x86_64, 4 KiB pages.
pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const PAGE: u64 = 4 * KIB;

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)` from `include/uapi/asm-generic/ioctl.h`.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> libc::c_ulong {
    ((dir << IOC_DIRSHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)) as libc::c_ulong
}

/// `_IOW(type, nr, T)`.
pub const fn iow<T>(ty: u8, nr: u8) -> libc::c_ulong {
    ioc(IOC_WRITE, ty, nr, std::mem::size_of::<T>())
}

/// `_IOWR(type, nr, T)`.
pub const fn iowr<T>(ty: u8, nr: u8) -> libc::c_ulong {
    ioc(IOC_READ | IOC_WRITE, ty, nr, std::mem::size_of::<T>())
}

/// `struct dma_heap_allocation_data`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DmaHeapAllocationData {
    pub len: u64,
    pub fd: u32,
    pub fd_flags: u32,
    pub heap_flags: u64,
}

/// `struct dma_buf_sync`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct DmaBufSync {
    pub flags: u64,
}

const DMA_HEAP_IOC_MAGIC: u8 = b'H';
const DMA_BUF_BASE: u8 = b'b';

pub const DMA_HEAP_IOCTL_ALLOC: libc::c_ulong =
    iowr::<DmaHeapAllocationData>(DMA_HEAP_IOC_MAGIC, 0);
pub const DMA_BUF_IOCTL_SYNC: libc::c_ulong = iow::<DmaBufSync>(DMA_BUF_BASE, 0);
/// `DMA_BUF_SET_NAME_B`: the fixed-size variant, `_IOW(DMA_BUF_BASE, 1, __u64)`.
pub const DMA_BUF_SET_NAME_B: libc::c_ulong = iow::<u64>(DMA_BUF_BASE, 1);

// The header writes these as (1 << 0), (2 << 0), (0 << 2), (1 << 2).
pub const DMA_BUF_SYNC_READ: u64 = 1;
pub const DMA_BUF_SYNC_WRITE: u64 = 2;
pub const DMA_BUF_SYNC_RW: u64 = DMA_BUF_SYNC_READ | DMA_BUF_SYNC_WRITE;
pub const DMA_BUF_SYNC_START: u64 = 0;
pub const DMA_BUF_SYNC_END: u64 = 4;

/// Direction of a CPU access bracket, as `DMA_BUF_IOCTL_SYNC` encodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    fn bits(self) -> u64 {
        match self {
            Access::Read => DMA_BUF_SYNC_READ,
            Access::Write => DMA_BUF_SYNC_WRITE,
            Access::ReadWrite => DMA_BUF_SYNC_RW,
        }
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// An open dma-buf heap (`/dev/dma_heap/<name>`).
#[derive(Debug)]
pub struct Heap {
    pub name: String,
    file: File,
}

impl Heap {
    pub fn open(name: &str) -> io::Result<Heap> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(Path::new(DMA_HEAP_DIR).join(name))?;
        Ok(Heap {
            name: name.to_string(),
            file,
        })
    }

    /// Allocates with explicit flags, for tests that feed the kernel bad input.
    pub fn alloc_raw(&self, len: u64, fd_flags: u32, heap_flags: u64) -> io::Result<DmaBuf> {
        let mut data = DmaHeapAllocationData {
            len,
            fd: 0,
            fd_flags,
            heap_flags,
        };
        // SAFETY: `data` is a valid, writable `dma_heap_allocation_data` that outlives the call,
        // and DMA_HEAP_IOCTL_ALLOC encodes exactly its size.
        check(unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                DMA_HEAP_IOCTL_ALLOC,
                &mut data as *mut DmaHeapAllocationData,
            )
        })?;
        // SAFETY: on success the kernel installed a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(data.fd as RawFd) };
        Ok(DmaBuf { fd, len })
    }

    /// Allocates `len` bytes with the usual `O_RDWR | O_CLOEXEC` fd flags.
    pub fn alloc(&self, len: u64) -> io::Result<DmaBuf> {
        self.alloc_raw(len, (libc::O_RDWR | libc::O_CLOEXEC) as u32, 0)
    }
}

/// Names of every heap registered under `/dev/dma_heap`, sorted so results are stable.
pub fn registered_heaps() -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(DMA_HEAP_DIR)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    Ok(names)
}

/// The heaps to test: every registered one but a second name of the same heap
/// ([`heaprig_protocol::heaps::alias_of`]).
pub fn heap_names() -> io::Result<Vec<String>> {
    let all = registered_heaps()?;
    Ok(all
        .iter()
        .filter(|h| heaprig_protocol::heaps::alias_of(h, &all).is_none())
        .cloned()
        .collect())
}

/// A dma-buf fd returned by a heap.
#[derive(Debug)]
pub struct DmaBuf {
    fd: OwnedFd,
    pub len: u64,
}

impl DmaBuf {
    /// Wraps a dma-buf fd that did not come from `Heap::alloc` (a dup, or one received over
    /// a socket); its length is the size lseek reports.
    pub fn from_fd(fd: OwnedFd) -> io::Result<DmaBuf> {
        let len = fd_size(fd.as_raw_fd())?;
        Ok(DmaBuf { fd, len })
    }

    /// A close-on-exec duplicate of the fd (never 0..=2), owned, so it closes exactly once;
    /// it keeps `len`.
    pub fn try_clone(&self) -> io::Result<DmaBuf> {
        // SAFETY: F_DUPFD_CLOEXEC reads no memory; on an invalid fd it fails with EBADF.
        let new = check(unsafe { libc::fcntl(self.raw_fd(), libc::F_DUPFD_CLOEXEC, 3) })?;
        // SAFETY: fcntl just installed `new`, and nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(new) };
        Ok(DmaBuf { fd, len: self.len })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// `DMA_BUF_IOCTL_SYNC` with raw flags, for tests of invalid combinations.
    pub fn sync_raw(&self, flags: u64) -> io::Result<()> {
        let sync = DmaBufSync { flags };
        // SAFETY: `sync` is a valid `dma_buf_sync` that outlives the call; the ioctl only reads it.
        check(unsafe {
            libc::ioctl(
                self.raw_fd(),
                DMA_BUF_IOCTL_SYNC,
                &sync as *const DmaBufSync,
            )
        })?;
        Ok(())
    }

    pub fn sync_start(&self, access: Access) -> io::Result<()> {
        self.sync_raw(DMA_BUF_SYNC_START | access.bits())
    }

    pub fn sync_end(&self, access: Access) -> io::Result<()> {
        self.sync_raw(DMA_BUF_SYNC_END | access.bits())
    }

    pub fn set_name(&self, name: &str) -> io::Result<()> {
        let name =
            CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `name` is a NUL-terminated string that outlives the call; the kernel copies
        // at most DMA_BUF_NAME_LEN bytes from it.
        check(unsafe { libc::ioctl(self.raw_fd(), DMA_BUF_SET_NAME_B, name.as_ptr()) })?;
        Ok(())
    }

    /// Maps `len` bytes at `offset` shared and read-write.
    pub fn mmap(&self, offset: u64, len: usize) -> io::Result<Mapping> {
        Mapping::new(
            self.raw_fd(),
            std::ptr::null_mut(),
            libc::MAP_SHARED,
            offset,
            len,
        )
    }

    /// A `MAP_PRIVATE` (copy-on-write) mapping, which a heap may refuse.
    pub fn mmap_private(&self, offset: u64, len: usize) -> io::Result<Mapping> {
        Mapping::new(
            self.raw_fd(),
            std::ptr::null_mut(),
            libc::MAP_PRIVATE,
            offset,
            len,
        )
    }

    /// Maps at exactly `addr` (`MAP_FIXED_NOREPLACE`: `EEXIST` if anything is there), e.g. in
    /// a region with no page tables yet, so the mmap has to allocate them.
    pub fn mmap_at(&self, addr: usize, offset: u64, len: usize) -> io::Result<Mapping> {
        Mapping::new(
            self.raw_fd(),
            addr as *mut libc::c_void,
            libc::MAP_SHARED | libc::MAP_FIXED_NOREPLACE,
            offset,
            len,
        )
    }
}

/// A mapping of a dma-buf (shared unless made by `mmap_private`), unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
    offset: u64,
}

impl Mapping {
    fn new(
        fd: RawFd,
        addr: *mut libc::c_void,
        flags: libc::c_int,
        offset: u64,
        len: usize,
    ) -> io::Result<Mapping> {
        // SAFETY: the flags never include a replacing MAP_FIXED, so the new mapping takes only
        // free address space and aliases no Rust object.
        let ptr = unsafe {
            libc::mmap(
                addr,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
            offset,
        })
    }

    /// Bytes mapped (as asked for; the kernel maps whole pages).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Offset in the buffer where the mapping starts.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The buffer offsets the mapping covers.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset as usize..self.offset as usize + self.len
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps `len` writable bytes for as long as `self` lives, and `&mut self`
        // makes this the only slice over them in this process.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Mapping {
    /// Grows the mapping with mremap (allowed to move) and returns the grown one; consumed
    /// either way. Most dma-buf mappings are VM_DONTEXPAND and the kernel refuses (EFAULT); a
    /// heap that maps through a fault handler (CMA) lets it grow, and must then refuse the
    /// pages past its buffer in the fault handler.
    pub fn mremap_grow(self, new_len: usize) -> io::Result<Mapping> {
        // SAFETY: `ptr`/`len` describe our mapping; on success the old range is gone and the
        // returned mapping owns the new one, so `self` must not unmap again.
        let p = unsafe { libc::mremap(self.ptr.cast(), self.len, new_len, libc::MREMAP_MAYMOVE) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let grown = Mapping {
            ptr: p.cast(),
            len: new_len,
            offset: self.offset,
        };
        std::mem::forget(self);
        Ok(grown)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly what mmap returned, and no slice outlives `self`.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// The kernel test importer's user API: the same file the kernel importer includes.
pub mod importer {
    /// `_IOWR` under the name and signature `kernel::ioctl` uses, for the shared file.
    #[allow(non_snake_case)]
    const fn _IOWR<T>(ty: u32, nr: u32) -> u32 {
        super::iowr::<T>(ty as u8, nr as u8) as u32
    }

    include!("../../uapi/dmabuf_test_importer.rs");

    /// FNV-1a 64 of `bytes`, as the importer computes it.
    pub fn checksum(bytes: &[u8]) -> u64 {
        bytes.iter().fold(FNV_OFFSET, |h, &b| fnv1a(h, b))
    }
}

/// An open `/dev/dmabuf_test_importer`.
#[derive(Debug)]
pub struct Importer {
    file: File,
}

impl Importer {
    /// The importer's coherent device.
    pub fn open() -> io::Result<Importer> {
        Self::open_at(importer::IMPORTER_DEV)
    }

    /// The importer's device node at `path` (`IMPORTER_DEV` or `IMPORTER_NC_DEV`).
    pub fn open_at(path: &str) -> io::Result<Importer> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Importer { file })
    }

    /// `IMPORTER_DEVICE_ACCESS` on held attachment `handle`: the device reads (`OP_CHECKSUM`)
    /// or fills (`OP_FILL`) the buffer.
    pub fn device_access(
        &self,
        handle: u64,
        op: u32,
        fill: u8,
    ) -> io::Result<importer::ImporterArgs> {
        let mut a = importer::ImporterArgs {
            handle,
            op,
            fill: fill as u32,
            ..Default::default()
        };
        self.call(importer::IMPORTER_DEVICE_ACCESS, &mut a)?;
        Ok(a)
    }

    /// Issues one importer ioctl; `args` is read and written back.
    pub fn call(&self, req: u32, args: &mut importer::ImporterArgs) -> io::Result<()> {
        // SAFETY: every importer ioctl takes one `ImporterArgs`, which `args` is, valid and
        // writable for the call.
        check(unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                req as libc::c_ulong,
                args as *mut importer::ImporterArgs,
            )
        })?;
        Ok(())
    }

    /// Issues `req` with `arg` as the argument's address, whatever it points to: the kernel
    /// checks user pointers, and a bad one is what a caller of this wants to see refused.
    pub fn call_at(&self, req: u32, arg: usize) -> io::Result<()> {
        // SAFETY: the kernel accesses `arg` only through its user-copy routines, which fail
        // with EFAULT on a bad address; no Rust object is written through it unless the
        // caller passed one that is valid for it.
        check(unsafe { libc::ioctl(self.file.as_raw_fd(), req as libc::c_ulong, arg) })?;
        Ok(())
    }

    /// Runs `req` on `buf` with `op` and returns the filled-in arguments.
    pub fn on(
        &self,
        req: u32,
        buf: &DmaBuf,
        op: u32,
        fill: u8,
    ) -> io::Result<importer::ImporterArgs> {
        self.on_fd(req, buf.raw_fd(), op, fill)
    }

    /// [`Importer::on`] for any fd number (dups, closed or foreign fds included).
    pub fn on_fd(
        &self,
        req: u32,
        fd: RawFd,
        op: u32,
        fill: u8,
    ) -> io::Result<importer::ImporterArgs> {
        let mut a = importer::ImporterArgs {
            fd,
            op,
            fill: fill as u32,
            count: 1,
            ..Default::default()
        };
        self.call(req, &mut a)?;
        Ok(a)
    }

    /// `IMPORTER_RELEASE` of `handle`, checksumming a held vmap first.
    pub fn release(&self, handle: u64) -> io::Result<importer::ImporterArgs> {
        let mut a = importer::ImporterArgs {
            handle,
            op: importer::OP_CHECKSUM,
            ..Default::default()
        };
        self.call(importer::IMPORTER_RELEASE, &mut a)?;
        Ok(a)
    }
}

/// A heap's debugfs counters, for heaps that have them (`/sys/kernel/debug/<heap>_heap/stats`,
/// lines `name: value`). The C heaps have none.
pub fn heap_stats(heap: &str) -> Option<std::collections::BTreeMap<String, u64>> {
    let text = std::fs::read_to_string(format!("/sys/kernel/debug/{heap}_heap/stats")).ok()?;
    Some(
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(':')?;
                Some((k.trim().to_string(), v.trim().parse().ok()?))
            })
            .collect(),
    )
}

/// Sets a heap's `ion_compat` switch; restores the previous value on drop.
pub struct IonCompat;

impl IonCompat {
    /// The switch's debugfs file (only heaps that model old ION have one).
    pub fn path(heap: &str) -> String {
        format!("/sys/kernel/debug/{heap}_heap/ion_compat")
    }

    pub fn available(heap: &str) -> bool {
        std::path::Path::new(&Self::path(heap)).exists()
    }

    pub fn set(heap: &str, on: bool) -> io::Result<Knob> {
        Knob::set(&Self::path(heap), if on { "1" } else { "0" })
    }
}

/// A kernel knob (a debugfs, sysfs or procfs file) set for a while: its old value is written
/// back on drop, so a test that fails half-way leaves the knob as it found it.
pub struct Knob {
    path: String,
    old: String,
}

impl Knob {
    pub fn set(path: &str, value: &str) -> io::Result<Knob> {
        let old = std::fs::read_to_string(path)?;
        std::fs::write(path, value)?;
        Ok(Knob {
            path: path.to_string(),
            old,
        })
    }
}

impl Drop for Knob {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.path, self.old.trim());
    }
}

/// Switches one of the importer's fault knobs on; switches it back to "none" on drop, so a
/// self-test that fails half-way leaves no fault behind for the next test.
pub struct Fault {
    _private: (),
}

impl Fault {
    pub fn set(name: &str) -> io::Result<Fault> {
        std::fs::write(importer::FAULTS_PATH, name)?;
        Ok(Fault { _private: () })
    }
}

impl Drop for Fault {
    fn drop(&mut self) {
        let _ = std::fs::write(importer::FAULTS_PATH, importer::FAULT_NONE);
    }
}

/// Size of the file behind `fd` (a dma-buf's size), from lseek.
pub fn fd_size(fd: RawFd) -> io::Result<u64> {
    // SAFETY: lseek on any fd has no memory-safety preconditions.
    let end = unsafe { libc::lseek(fd, 0, libc::SEEK_END) };
    if end < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(end as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values from the kernel headers as compiled (printf("%#lx", DMA_HEAP_IOCTL_ALLOC) etc.).
    #[test]
    fn ioctl_numbers_match_the_kernel_encoding() {
        assert_eq!(DMA_HEAP_IOCTL_ALLOC, 0xc018_4800);
        assert_eq!(DMA_BUF_IOCTL_SYNC, 0x4008_6200);
        assert_eq!(DMA_BUF_SET_NAME_B, 0x4008_6201);
    }

    #[test]
    fn importer_numbers_are_distinct_iowr() {
        use importer::*;
        let all = [
            IMPORTER_VMAP,
            IMPORTER_VMAP_TWICE,
            IMPORTER_KMAP_WALK,
            IMPORTER_ATTACH_MAP,
            IMPORTER_HOLD,
            IMPORTER_RELEASE,
            IMPORTER_CPU_ACCESS,
            IMPORTER_ATTACH_HOLD,
        ];
        // The last request is IMPORTER_ATTACH_HOLD, number 8; a ninth must join this list.
        assert_eq!(all.len() as u32, IMPORTER_ATTACH_HOLD & 0xff);
        for (i, a) in all.iter().enumerate() {
            // Numbered 1.. in order, so a request left out of the middle shows as a gap.
            assert_eq!(a & 0xff, i as u32 + 1, "request number");
            assert_eq!(a >> 30, 3, "_IOWR direction");
            assert_eq!((a >> 16) & 0x3fff, 48, "argument size");
            assert!(all[i + 1..].iter().all(|b| b != a));
        }
        assert_eq!(checksum(b""), FNV_OFFSET);
        assert_eq!(checksum(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}

/// Loadable kernel modules: load, unload and reference counts (`init_module(2)`,
/// `delete_module(2)`, `/sys/module/<name>/refcnt`).
pub mod module {
    use std::ffi::CString;
    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;
    use std::path::{Path, PathBuf};

    /// Where the rig says it loaded each module from (`HEAPRIG_MODULES`, `:`-separated).
    pub const MODULES_ENV: &str = "HEAPRIG_MODULES";

    /// The `.ko` the rig loaded for module `name`, if it loaded one.
    pub fn loaded_from(name: &str) -> Option<PathBuf> {
        std::env::var(MODULES_ENV).ok().and_then(|v| {
            v.split(':')
                .map(PathBuf::from)
                .find(|p| p.file_stem().is_some_and(|s| s == name))
        })
    }

    /// `finit_module` of a `.ko` file, without parameters.
    pub fn load(path: &Path) -> io::Result<()> {
        let f = File::open(path)?;
        let params = c"";
        // SAFETY: `f` is an open file and `params` a valid C string for the call.
        let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// `delete_module(name, O_NONBLOCK)`: fails at once (`EAGAIN`) while the module is in
    /// use, as `rmmod` does.
    pub fn unload(name: &str) -> io::Result<()> {
        let name = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `name` is a valid C string for the call.
        let r = unsafe { libc::syscall(libc::SYS_delete_module, name.as_ptr(), libc::O_NONBLOCK) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The module's reference count, `None` when it is not loaded.
    pub fn refcnt(name: &str) -> Option<u64> {
        std::fs::read_to_string(format!("/sys/module/{name}/refcnt"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }
}
