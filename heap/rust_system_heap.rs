// SPDX-License-Identifier: GPL-2.0

//! `rust_system`: a dma-buf system heap written in Rust, ION's system heap done right.
//!
//! - Pages are zeroed before user space can see them; high orders first (8, 4, 0), falling
//!   back without heavy reclaim, as the C system heap does. A request larger than RAM fails
//!   with ENOMEM at once, and order-0 pages use `__GFP_RETRY_MAYFAIL`, so an allocation
//!   fails rather than waking the OOM killer. A fatal signal interrupts a long allocation.
//! - `begin_cpu_access` never creates a kernel mapping (the 2018 ION regression: every sync
//!   paid for `alloc_vmap_area`); it syncs the mapped attachments only.
//! - CPU access brackets are counted per buffer and never go below zero: an END without a
//!   START is counted and touches no mapping (what made ION's `kmap_cnt` go negative); it
//!   still syncs mapped attachments for the device and succeeds, as the C system heap does,
//!   because the bracket count is per buffer, not per file, and user space relies on it.
//! - vmap is refcounted under the buffer lock (nested vmaps share one mapping), torn down at
//!   the last vunmap; see `kernel::dma_buf::PageBuffer`.
//! - `ion_compat` (debugfs, off by default) makes `begin_cpu_access` take a kernel mapping
//!   the way old ION did, so benchmarks can show what the lazy design saves.
//!
//! Statistics: `/sys/kernel/debug/rust_system_heap/stats`.

use core::{
    convert::Infallible,
    fmt,
    sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
};
use kernel::{
    bindings, c_str,
    debugfs::{Reader, Scope, Writer},
    dma_buf::{self, DataDirection, Exported, Exporter, PageBuffer, Pages},
    dma_heap,
    prelude::*,
    rig::compat,
    uaccess::UserSliceReader,
};

kernel::rig_module! {
    type: RustSystemHeapModule,
    name: "rust_system_heap",
    description: "dma-buf system heap written in Rust",
    imports_ns: ["DMA_BUF", "DMA_BUF_HEAP"],
}

/// Orders tried from largest to smallest, as in drivers/dma-buf/heaps/system_heap.c.
const ORDERS: [u32; 3] = [8, 4, 0];

/// High orders: no reclaim, no retries, no warnings; fall back to a smaller order instead.
const HIGH_ORDER_GFP: bindings::gfp_t = ((bindings::GFP_HIGHUSER
    | bindings::__GFP_ZERO
    | bindings::__GFP_NOWARN
    | bindings::__GFP_NORETRY)
    & !bindings::__GFP_RECLAIM)
    | bindings::__GFP_COMP;

/// Order 0: may reclaim, but fails instead of invoking the OOM killer.
const LOW_ORDER_GFP: bindings::gfp_t = bindings::GFP_HIGHUSER
    | bindings::__GFP_ZERO
    | bindings::__GFP_NOWARN
    | bindings::__GFP_RETRY_MAYFAIL;

/// Counters shown in debugfs; tests read them.
struct Stats {
    live_buffers: AtomicU64,
    live_bytes: AtomicU64,
    current_vmaps: AtomicU64,
    kernel_mappings_created: AtomicU64,
    begin_cpu_access: AtomicU64,
    end_cpu_access: AtomicU64,
    unmatched_end_cpu_access: AtomicU64,
    alloc_refused_too_large: AtomicU64,
    alloc_failed_no_memory: AtomicU64,
    alloc_interrupted: AtomicU64,
}

impl Stats {
    const fn new() -> Self {
        Self {
            live_buffers: AtomicU64::new(0),
            live_bytes: AtomicU64::new(0),
            current_vmaps: AtomicU64::new(0),
            kernel_mappings_created: AtomicU64::new(0),
            begin_cpu_access: AtomicU64::new(0),
            end_cpu_access: AtomicU64::new(0),
            unmatched_end_cpu_access: AtomicU64::new(0),
            alloc_refused_too_large: AtomicU64::new(0),
            alloc_failed_no_memory: AtomicU64::new(0),
            alloc_interrupted: AtomicU64::new(0),
        }
    }
}

impl Writer for Stats {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows: [(&str, &AtomicU64); 10] = [
            ("live_buffers", &self.live_buffers),
            ("live_bytes", &self.live_bytes),
            ("current_vmaps", &self.current_vmaps),
            ("kernel_mappings_created", &self.kernel_mappings_created),
            ("begin_cpu_access", &self.begin_cpu_access),
            ("end_cpu_access", &self.end_cpu_access),
            ("unmatched_end_cpu_access", &self.unmatched_end_cpu_access),
            ("alloc_refused_too_large", &self.alloc_refused_too_large),
            ("alloc_failed_no_memory", &self.alloc_failed_no_memory),
            ("alloc_interrupted", &self.alloc_interrupted),
        ];
        for (name, v) in rows {
            writeln!(f, "{}: {}", name, v.load(Relaxed))?;
        }
        Ok(())
    }
}

/// A debugfs switch, "1" or "0".
struct Switch(AtomicBool);

impl Writer for Switch {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", u8::from(self.0.load(Relaxed)))
    }
}

impl Reader for Switch {
    fn read_from_slice(&self, reader: &mut UserSliceReader) -> Result {
        let mut first = [0u8; 1];
        if reader.len() == 0 || reader.len() > 8 {
            return Err(EINVAL);
        }
        reader.read_slice(&mut first)?;
        match first[0] {
            b'1' | b'y' | b'Y' => self.0.store(true, Relaxed),
            b'0' | b'n' | b'N' => self.0.store(false, Relaxed),
            _ => return Err(EINVAL),
        }
        Ok(())
    }
}

struct RustSystemHeap {
    stats: Stats,
    /// "1" makes `begin_cpu_access` create a kernel mapping, as ION did.
    ion_compat: Switch,
    /// "1" makes the next allocation leak one page it never frees: the bug class no counter
    /// of the heap sees, for the rig's page leak oracle to prove it fires. Off after firing.
    selftest_leak_page: Switch,
}

static HEAP: RustSystemHeap = RustSystemHeap {
    stats: Stats::new(),
    ion_compat: Switch(AtomicBool::new(false)),
    selftest_leak_page: Switch(AtomicBool::new(false)),
};

/// Per-buffer CPU access bookkeeping.
struct Policy {
    /// STARTs not yet matched by an END; never below zero.
    open_brackets: AtomicU64,
}

/// Decrements `v` unless it is zero; returns whether it did.
fn dec_if_positive(v: &AtomicU64) -> bool {
    v.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

#[vtable]
impl Exporter for Policy {
    fn begin_cpu_access(buf: &PageBuffer<Self>, dir: DataDirection) -> Result {
        HEAP.stats.begin_cpu_access.fetch_add(1, Relaxed);
        if HEAP.ion_compat.0.load(Relaxed) {
            // Old ION: a kernel mapping for every sync, dropped by the matching END. The
            // reference is the exporter's, so no END can drop one an importer holds.
            buf.map_kernel()?;
        }
        buf.data().open_brackets.fetch_add(1, Relaxed);
        // No kernel mapping is created here. An existing one would need
        // invalidate_kernel_vmap_range(), which is a no-op on x86.
        buf.sync_attachments(dir, true);
        Ok(())
    }

    fn end_cpu_access(buf: &PageBuffer<Self>, dir: DataDirection) -> Result {
        HEAP.stats.end_cpu_access.fetch_add(1, Relaxed);
        if dec_if_positive(&buf.data().open_brackets) {
            // Drops this bracket's ION-mode mapping, if it took one; false otherwise.
            buf.unmap_kernel();
        } else {
            HEAP.stats.unmatched_end_cpu_access.fetch_add(1, Relaxed);
        }
        // Like the C heap, always hand the memory back to mapped devices.
        buf.sync_attachments(dir, false);
        Ok(())
    }

    fn vmapped(_buf: &PageBuffer<Self>, created: bool) {
        if created {
            HEAP.stats.kernel_mappings_created.fetch_add(1, Relaxed);
            HEAP.stats.current_vmaps.fetch_add(1, Relaxed);
        }
    }

    fn vunmapped(_buf: &PageBuffer<Self>, destroyed: bool) {
        if destroyed {
            dec_if_positive(&HEAP.stats.current_vmaps);
        }
    }

    fn released(buf: &PageBuffer<Self>) {
        // The abstraction has dropped ION-mode references already; this is a core reference
        // left behind, which it warns about.
        if buf.vmap_count() > 0 {
            dec_if_positive(&HEAP.stats.current_vmaps);
        }
        HEAP.stats.live_buffers.fetch_sub(1, Relaxed);
        HEAP.stats.live_bytes.fetch_sub(buf.len() as u64, Relaxed);
    }
}

/// The largest chunk that fits in `remaining` bytes and is no larger than `max_order`.
fn alloc_largest(remaining: usize, max_order: u32) -> Option<Pages> {
    for order in ORDERS {
        if order > max_order || remaining < (bindings::PAGE_SIZE << order) {
            continue;
        }
        let gfp = if order > 0 {
            HIGH_ORDER_GFP
        } else {
            LOW_ORDER_GFP
        };
        // Charged to the allocating task's memory cgroup when the kernel asks heaps to
        // (`dma_heap.mem_accounting`, 7.x), as the C system heap is.
        let gfp = if compat::heap_mem_accounting() {
            gfp | bindings::__GFP_ACCOUNT
        } else {
            gfp
        };
        if let Some(p) = Pages::alloc(gfp, order) {
            return Some(p);
        }
    }
    None
}

impl dma_heap::Heap for RustSystemHeap {
    fn allocate(
        &'static self,
        owner: &'static ThisModule,
        len: usize,
        fd_flags: u32,
        _heap_flags: u64,
    ) -> Result<Exported> {
        if len >> bindings::PAGE_SHIFT > dma_buf::totalram_pages() {
            self.stats.alloc_refused_too_large.fetch_add(1, Relaxed);
            return Err(ENOMEM);
        }
        // kvmalloc-backed: a fragmented 1 GiB buffer needs 2^18 order-0 chunks, more than
        // kmalloc can hold in one array.
        let mut chunks = KVVec::new();
        let mut remaining = len;
        let mut max_order = ORDERS[0];
        while remaining > 0 {
            if dma_buf::fatal_signal_pending() {
                self.stats.alloc_interrupted.fetch_add(1, Relaxed);
                return Err(EINTR);
            }
            let Some(c) = alloc_largest(remaining, max_order) else {
                self.stats.alloc_failed_no_memory.fetch_add(1, Relaxed);
                return Err(ENOMEM);
            };
            remaining -= c.size();
            max_order = c.order();
            chunks.push(c, GFP_KERNEL)?;
        }
        if self.selftest_leak_page.0.swap(false, Relaxed) {
            // Deliberately never freed (see `selftest_leak_page`).
            core::mem::forget(Pages::alloc(LOW_ORDER_GFP, 0));
        }
        let policy = Policy {
            open_brackets: AtomicU64::new(0),
        };
        let exported =
            dma_buf::export(c_str!("rust_system"), owner, chunks, len, fd_flags, policy)?;
        // Counted after export: `released` runs only for exported buffers, and not before
        // the core has installed the fd, which happens after this returns.
        self.stats.live_buffers.fetch_add(1, Relaxed);
        self.stats.live_bytes.fetch_add(len as u64, Relaxed);
        Ok(exported)
    }
}

/// The module's state. A dma-buf heap cannot be removed once added, so `dma_heap::register`
/// pins the module: it is never unloaded and this is never dropped.
struct RustSystemHeapModule {
    _files: Pin<KBox<Scope<&'static RustSystemHeap>>>,
}

impl kernel::Module for RustSystemHeapModule {
    fn init(module: &'static ThisModule) -> Result<Self> {
        // debugfs is optional equipment: without it the heap works, with no stats and no
        // ion_compat switch.
        // The data is the static itself: moved in by value, which cannot fail.
        let files = KBox::pin_init::<Infallible>(
            Scope::dir(&HEAP, c_str!("rust_system_heap"), |heap, dir| {
                dir.read_only_file(c_str!("stats"), &heap.stats);
                dir.read_write_file(c_str!("ion_compat"), &heap.ion_compat);
                dir.read_write_file(c_str!("selftest_leak_page"), &heap.selftest_leak_page);
            }),
            GFP_KERNEL,
        )?;
        dma_heap::register(c_str!("rust_system"), &HEAP, module)?;
        pr_info!("registered /dev/dma_heap/rust_system\n");
        Ok(Self { _files: files })
    }
}
