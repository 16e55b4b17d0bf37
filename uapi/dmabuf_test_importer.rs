// SPDX-License-Identifier: GPL-2.0

// The test importer's user API, written once: the kernel importer
// (drivers/dma-buf/dmabuf_test_importer.rs) and the guest tests both `include!` this file.
// The including module provides `_IOWR::<T>(ty, nr) -> u32` (kernel::ioctl's, or the guest's
// copy of the same encoding).

/// Device node of the importer.
pub const IMPORTER_DEV: &str = "/dev/dmabuf_test_importer";
/// The importer's non-coherent device: the same ioctls, for a device that keeps its own copy
/// of a mapped buffer ("device memory"), moved only by the DMA API's maps, syncs and unmaps,
/// as on a non-coherent Arm system (`IMPORTER_DEVICE_ACCESS` reaches that copy).
pub const IMPORTER_NC_DEV: &str = "/dev/dmabuf_test_importer_nc";

/// One argument block for every importer ioctl; each says which fields it reads and writes.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct ImporterArgs {
    /// In: a dma-buf fd from any exporter.
    pub fd: i32,
    /// In: [`OP_CHECKSUM`] or [`OP_FILL`].
    pub op: u32,
    /// In: the byte [`OP_FILL`] writes.
    pub fill: u32,
    /// In: how many attachments `ATTACH_MAP` makes (1 or 2).
    pub count: u32,
    /// In/out: a held vmap's handle (`HOLD` returns it, `RELEASE` takes it).
    pub handle: u64,
    /// Out: FNV-1a 64 of the bytes read (before a fill).
    pub checksum: u64,
    /// Out: pages walked, or bytes mapped.
    pub pages: u64,
    /// Out: 1 when two nested vmaps returned the same address.
    pub shared: u32,
    /// In: for `CPU_ACCESS`, 0 = begin, 1 = end.
    pub end: u32,
}

/// Operation on the bytes the importer reaches.
pub const OP_CHECKSUM: u32 = 0;
/// Fill every byte with `fill` (the checksum is still of the bytes before the fill).
pub const OP_FILL: u32 = 1;
/// Touch nothing: only map and unmap (for timing the mapping itself).
pub const OP_NONE: u32 = 2;

const MAGIC: u32 = b'h' as u32;

/// `dma_buf_vmap_unlocked`, checksum or fill, `dma_buf_vunmap_unlocked`.
pub const IMPORTER_VMAP: u32 = _IOWR::<ImporterArgs>(MAGIC, 1);
/// vmap twice, report `shared`, unwind both.
pub const IMPORTER_VMAP_TWICE: u32 = _IOWR::<ImporterArgs>(MAGIC, 2);
/// Attach, map, walk every page of the mapped table with `kmap_local_page`, unmap, detach.
pub const IMPORTER_KMAP_WALK: u32 = _IOWR::<ImporterArgs>(MAGIC, 3);
/// Attach `count` times, map each, begin/end CPU access, unmap, detach.
pub const IMPORTER_ATTACH_MAP: u32 = _IOWR::<ImporterArgs>(MAGIC, 4);
/// Take a dma-buf reference and a vmap, and keep both after the call; returns `handle`.
/// A hold whose handle cannot be copied back (`EFAULT`) is not kept.
pub const IMPORTER_HOLD: u32 = _IOWR::<ImporterArgs>(MAGIC, 5);
/// Checksum a held vmap, then drop the vmap and the reference.
pub const IMPORTER_RELEASE: u32 = _IOWR::<ImporterArgs>(MAGIC, 6);
/// `dma_buf_begin_cpu_access` (end = 0) or `dma_buf_end_cpu_access` (end = 1), bidirectional.
pub const IMPORTER_CPU_ACCESS: u32 = _IOWR::<ImporterArgs>(MAGIC, 7);
/// Attach and map for the importer's device, and keep it mapped after the call; returns
/// `handle`, which `IMPORTER_RELEASE` takes (its checksum is then 0). `EBUSY` while the
/// buffer already has one: two mappings of the same pages for one device overlap.
pub const IMPORTER_ATTACH_HOLD: u32 = _IOWR::<ImporterArgs>(MAGIC, 8);
/// On a held attachment (`handle` from `ATTACH_HOLD` on the same open file), the device
/// reads (`OP_CHECKSUM`: the checksum of what it sees) or writes (`OP_FILL`: every byte;
/// `checksum` is of the bytes before) the buffer; `pages` returns the bytes it reached.
/// `EINVAL` for a vmap handle.
pub const IMPORTER_DEVICE_ACCESS: u32 = _IOWR::<ImporterArgs>(MAGIC, 9);
/// No importer ioctl has this number: the importer answers `ENOTTY` without reading the
/// argument (the tests use it).
pub const IMPORTER_NOT_AN_IOCTL: u32 = _IOWR::<ImporterArgs>(MAGIC, 0x7f);

/// FNV-1a 64 offset basis: the checksum of no bytes.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// One FNV-1a 64 step; both sides checksum with this.
pub const fn fnv1a(h: u64, byte: u8) -> u64 {
    (h ^ byte as u64).wrapping_mul(0x0000_0100_0000_01b3)
}

/// Fault knobs (debugfs, "none" at boot): each makes the importer misbehave in one way, so a
/// rig self-test can prove the detector for that fault fires. Write a name to switch it on.
pub const FAULTS_PATH: &str = "/sys/kernel/debug/dmabuf_test_importer/faults";
/// Behave correctly.
pub const FAULT_NONE: &str = "none";
/// Every `VMAP` takes one extra reference to its buffer and never drops it (leak oracle).
pub const FAULT_LEAK_REF: &str = "leak_ref";
/// Every `VMAP` leaks a small kmalloc'ed block (kmemleak).
pub const FAULT_LEAK_MEMORY: &str = "leak_memory";
/// Every `VMAP` takes the importer's two locks in the opposite order to `HOLD` (lockdep).
pub const FAULT_LOCK_INVERSION: &str = "lock_inversion";
/// `VMAP` with `OP_FILL` leaves the buffer's last byte unchanged (content checks, the fuzzer).
pub const FAULT_SHORT_FILL: &str = "short_fill";
/// A `VMAP` that fails leaks a reference to its buffer (fault injection + leak oracle).
pub const FAULT_ERROR_PATH_LEAK: &str = "error_path_leak";
/// Every `VMAP` keeps its kernel mapping (and with it its buffer reference): the mapping
/// outlives every fd (the vmap oracle, /proc/vmallocinfo, sees it on any heap).
pub const FAULT_LEAK_VMAP: &str = "leak_vmap";
/// Every knob, for validation on both sides.
pub const FAULTS: [&str; 7] = [
    FAULT_NONE,
    FAULT_LEAK_REF,
    FAULT_LEAK_MEMORY,
    FAULT_LOCK_INVERSION,
    FAULT_SHORT_FILL,
    FAULT_ERROR_PATH_LEAK,
    FAULT_LEAK_VMAP,
];
