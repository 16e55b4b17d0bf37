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
//! - A page pool (`kernel::dma_buf::PagePool`, on by default, `pool` in debugfs turns it off
//!   and empties it) keeps freed chunks of every order, zeroes them in a worker and hands
//!   them out again before asking the page allocator; a shrinker empties it under memory
//!   pressure. It holds at most an eighth of RAM, and no more than 128 MiB. When the kernel
//!   charges heap pages to memory cgroups (`dma_heap.mem_accounting`, 7.x) the pool is
//!   bypassed: a pooled page would stay charged to the cgroup that first allocated it.
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
    dma_buf::{self, DataDirection, Exported, Exporter, PageBuffer, PagePool, Pages},
    dma_heap,
    prelude::*,
    rig::compat,
    sync::Arc,
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

/// The most the page pool holds: 128 MiB (in base pages), and never more than an eighth of
/// RAM.
const POOL_MAX_PAGES: usize = (128 << 20) >> bindings::PAGE_SHIFT;

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

impl Writer for RustSystemHeap {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        let pool = self.pool.stats();
        let rows: [(&str, u64); 17] = [
            ("live_buffers", s.live_buffers.load(Relaxed)),
            ("live_bytes", s.live_bytes.load(Relaxed)),
            ("current_vmaps", s.current_vmaps.load(Relaxed)),
            (
                "kernel_mappings_created",
                s.kernel_mappings_created.load(Relaxed),
            ),
            ("begin_cpu_access", s.begin_cpu_access.load(Relaxed)),
            ("end_cpu_access", s.end_cpu_access.load(Relaxed)),
            (
                "unmatched_end_cpu_access",
                s.unmatched_end_cpu_access.load(Relaxed),
            ),
            (
                "alloc_refused_too_large",
                s.alloc_refused_too_large.load(Relaxed),
            ),
            (
                "alloc_failed_no_memory",
                s.alloc_failed_no_memory.load(Relaxed),
            ),
            ("alloc_interrupted", s.alloc_interrupted.load(Relaxed)),
            ("pool_pages", pool.pages),
            ("pool_dirty_pages", pool.dirty_pages),
            ("pool_hits", pool.hits),
            ("pool_misses", pool.misses),
            ("pool_zeroed_pages", pool.zeroed_pages),
            ("pool_shrunk_pages", pool.shrunk_pages),
            ("pool_refused_pages", pool.refused_pages),
        ];
        for (name, v) in rows {
            writeln!(f, "{}: {}", name, v)?;
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

/// Parses what user space wrote to a switch file: "1"/"y" or "0"/"n".
fn parse_switch(reader: &mut UserSliceReader) -> Result<bool> {
    let mut first = [0u8; 1];
    if reader.len() == 0 || reader.len() > 8 {
        return Err(EINVAL);
    }
    reader.read_slice(&mut first)?;
    match first[0] {
        b'1' | b'y' | b'Y' => Ok(true),
        b'0' | b'n' | b'N' => Ok(false),
        _ => Err(EINVAL),
    }
}

impl Reader for Switch {
    fn read_from_slice(&self, reader: &mut UserSliceReader) -> Result {
        self.0.store(parse_switch(reader)?, Relaxed);
        Ok(())
    }
}

/// The `pool` debugfs switch: "0" empties the pool and keeps it off, "1" turns it on.
struct PoolSwitch(Arc<PagePool>);

impl Writer for PoolSwitch {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", u8::from(self.0.enabled()))
    }
}

impl Reader for PoolSwitch {
    fn read_from_slice(&self, reader: &mut UserSliceReader) -> Result {
        self.0.set_enabled(parse_switch(reader)?);
        Ok(())
    }
}

struct RustSystemHeap {
    stats: Stats,
    /// Freed chunks, zeroed in the background and handed out again.
    pool: Arc<PagePool>,
    pool_switch: PoolSwitch,
    /// "1" makes `begin_cpu_access` create a kernel mapping, as ION did.
    ion_compat: Switch,
    /// "1" makes the next allocation leak one page it never frees: the bug class no counter
    /// of the heap sees, for the rig's page leak oracle to prove it fires. Off after firing.
    selftest_leak_page: Switch,
}

/// Per-buffer CPU access bookkeeping.
struct Policy {
    heap: &'static RustSystemHeap,
    /// STARTs not yet matched by an END; never below zero.
    open_brackets: AtomicU64,
    /// ION-mode kernel mapping references taken by STARTs and not yet dropped by an END, so
    /// an END outside ION mode (nearly all of them) takes no lock.
    ion_refs: AtomicU64,
}

/// Decrements `v` unless it is zero; returns whether it did.
fn dec_if_positive(v: &AtomicU64) -> bool {
    v.fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
        .is_ok()
}

#[vtable]
impl Exporter for Policy {
    fn begin_cpu_access(buf: &PageBuffer<Self>, dir: DataDirection) -> Result {
        let heap = buf.data().heap;
        heap.stats.begin_cpu_access.fetch_add(1, Relaxed);
        if heap.ion_compat.0.load(Relaxed) {
            // Old ION: a kernel mapping for every sync, dropped by the matching END. The
            // reference is the exporter's, so no END can drop one an importer holds.
            buf.map_kernel()?;
            buf.data().ion_refs.fetch_add(1, Relaxed);
        }
        buf.data().open_brackets.fetch_add(1, Relaxed);
        // No kernel mapping is created here. An existing one would need
        // invalidate_kernel_vmap_range(), which is a no-op on x86.
        buf.sync_attachments(dir, true);
        Ok(())
    }

    fn end_cpu_access(buf: &PageBuffer<Self>, dir: DataDirection) -> Result {
        let heap = buf.data().heap;
        heap.stats.end_cpu_access.fetch_add(1, Relaxed);
        if dec_if_positive(&buf.data().open_brackets) {
            // Drops an ION-mode mapping if a START took one.
            if dec_if_positive(&buf.data().ion_refs) {
                buf.unmap_kernel();
            }
        } else {
            heap.stats.unmatched_end_cpu_access.fetch_add(1, Relaxed);
        }
        // Like the C heap, always hand the memory back to mapped devices.
        buf.sync_attachments(dir, false);
        Ok(())
    }

    fn vmapped(buf: &PageBuffer<Self>, created: bool) {
        if created {
            let stats = &buf.data().heap.stats;
            stats.kernel_mappings_created.fetch_add(1, Relaxed);
            stats.current_vmaps.fetch_add(1, Relaxed);
        }
    }

    fn vunmapped(buf: &PageBuffer<Self>, destroyed: bool) {
        if destroyed {
            dec_if_positive(&buf.data().heap.stats.current_vmaps);
        }
    }

    fn released(buf: &PageBuffer<Self>, vmaps_left: usize) {
        // The abstraction has dropped ION-mode references already; this is a core reference
        // left behind, which it warns about.
        let stats = &buf.data().heap.stats;
        if vmaps_left > 0 {
            dec_if_positive(&stats.current_vmaps);
        }
        stats.live_buffers.fetch_sub(1, Relaxed);
        stats.live_bytes.fetch_sub(buf.len() as u64, Relaxed);
    }

    fn recycle(&self, chunks: KVVec<Pages>) {
        if self.heap.pooling() {
            for c in chunks {
                self.heap.pool.give(c);
            }
        }
    }
}

impl RustSystemHeap {
    /// Whether freed pages go to the pool and allocations look there first.
    fn pooling(&self) -> bool {
        !compat::heap_mem_accounting()
    }

    /// The largest chunk that fits in `remaining` bytes and is no larger than `max_order`:
    /// per order, a pooled chunk, else a new one.
    fn alloc_largest(&self, remaining: usize, max_order: u32) -> Option<Pages> {
        for order in ORDERS {
            if order > max_order || remaining < (bindings::PAGE_SIZE << order) {
                continue;
            }
            if self.pooling() {
                if let Some(p) = self.pool.take(order) {
                    return Some(p);
                }
            }
            if let Some(p) = alloc_new(order) {
                return Some(p);
            }
        }
        None
    }
}

/// A new, zeroed chunk of `order` from the page allocator.
fn alloc_new(order: u32) -> Option<Pages> {
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
    Pages::alloc(gfp, order)
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
            let Some(c) = self.alloc_largest(remaining, max_order) else {
                self.stats.alloc_failed_no_memory.fetch_add(1, Relaxed);
                return Err(ENOMEM);
            };
            remaining -= c.size();
            max_order = c.order();
            chunks.push(c, GFP_KERNEL)?;
        }
        // Read before the swap: a swap is a locked instruction on every allocation.
        let leak = &self.selftest_leak_page.0;
        if leak.load(Relaxed) && leak.swap(false, Relaxed) {
            // Deliberately never freed (see `selftest_leak_page`).
            core::mem::forget(Pages::alloc(LOW_ORDER_GFP, 0));
        }
        let policy = Policy {
            heap: self,
            open_brackets: AtomicU64::new(0),
            ion_refs: AtomicU64::new(0),
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
        let limit = POOL_MAX_PAGES.min(dma_buf::totalram_pages() / 8);
        let pool = PagePool::new(c_str!("rust_system-pool"), &ORDERS, limit)?;
        // Leaked: a registered heap lives as long as the kernel (see above), and every
        // buffer's policy points back at it.
        let heap: &'static RustSystemHeap = KBox::leak(KBox::new(
            RustSystemHeap {
                stats: Stats::new(),
                pool_switch: PoolSwitch(pool.clone()),
                pool,
                ion_compat: Switch(AtomicBool::new(false)),
                selftest_leak_page: Switch(AtomicBool::new(false)),
            },
            GFP_KERNEL,
        )?);
        // debugfs is optional equipment: without it the heap works, with no stats and no
        // switches.
        // The data is a reference: moved in by value, which cannot fail.
        let files = KBox::pin_init::<Infallible>(
            Scope::dir(heap, c_str!("rust_system_heap"), |heap, dir| {
                dir.read_only_file(c_str!("stats"), *heap);
                dir.read_write_file(c_str!("pool"), &heap.pool_switch);
                dir.read_write_file(c_str!("ion_compat"), &heap.ion_compat);
                dir.read_write_file(c_str!("selftest_leak_page"), &heap.selftest_leak_page);
            }),
            GFP_KERNEL,
        )?;
        dma_heap::register(c_str!("rust_system"), heap, module)?;
        pr_info!("registered /dev/dma_heap/rust_system\n");
        Ok(Self { _files: files })
    }
}
