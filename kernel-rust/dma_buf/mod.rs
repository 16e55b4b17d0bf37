// SPDX-License-Identifier: GPL-2.0

//! DMA-BUF abstractions for page-backed buffers: the exporter side ([`exporter`]: a
//! [`PageBuffer`] and its `dma_buf_ops`, driven by an [`Exporter`] policy) and the importer
//! side ([`importer`]: references, vmaps, attachments and their mappings), as upstream splits
//! `rust/kernel/sync/`.
//!
//! C headers: [`include/linux/dma-buf.h`](srctree/include/linux/dma-buf.h),
//! [`include/linux/scatterlist.h`](srctree/include/linux/scatterlist.h),
//! [`include/linux/dma-mapping.h`](srctree/include/linux/dma-mapping.h).
//!
//! Locking, as the dma-buf core calls the ops in 6.12: `vmap`, `vunmap`, `map_dma_buf` and
//! `unmap_dma_buf` run with the reservation lock held, `attach`, `detach`,
//! `begin_cpu_access`, `end_cpu_access` and `mmap` without it. The buffer's own mutex
//! therefore nests inside the reservation lock and is never held while taking it.
//!
//! Architecture note: kernel-mapping cache maintenance (`invalidate_kernel_vmap_range`,
//! `flush_kernel_vmap_range`) is a no-op on x86, the only architecture this is built for.

pub mod exporter;
pub mod importer;
pub mod noncoherent;
pub mod page_pool;

pub use exporter::*;
pub use importer::*;
pub use page_pool::{PagePool, PoolStats};

use crate::{
    bindings,
    error::{code::*, from_result, to_result, Result},
    prelude::*,
    rig::compat,
    str::CStr,
    sync::Mutex,
    types::Opaque,
};
use core::{ffi::c_void, marker::PhantomData, ptr::NonNull};

pub use crate::dma::DataDirection;

/// The direction of a mapping, sync or CPU access the dma-buf core asks for: `DMA_NONE`
/// moves no data and is refused, as is anything unknown.
fn direction(raw: bindings::dma_data_direction) -> Result<DataDirection> {
    match raw {
        compat::DMA_BIDIRECTIONAL => Ok(DataDirection::Bidirectional),
        compat::DMA_TO_DEVICE => Ok(DataDirection::ToDevice),
        compat::DMA_FROM_DEVICE => Ok(DataDirection::FromDevice),
        _ => Err(EINVAL),
    }
}

/// `2^order` physically contiguous pages from the buddy allocator, freed on drop.
///
/// # Invariants
///
/// `page` is the first page of an allocation of order `order` that this object owns.
pub struct Pages {
    page: NonNull<bindings::page>,
    order: u32,
}

// SAFETY: the pages are plain memory owned by this object; any thread may free them.
unsafe impl Send for Pages {}
// SAFETY: shared references only read `page` and `order`.
unsafe impl Sync for Pages {}

impl Pages {
    /// Allocates `2^order` pages with the raw GFP flags `gfp`; `None` when none are free.
    pub fn alloc(gfp: bindings::gfp_t, order: u32) -> Option<Self> {
        // SAFETY: `alloc_pages` may be called with any flags and order; it returns NULL on
        // failure.
        let page = unsafe { bindings::alloc_pages(gfp, order) };
        // INVARIANT: a non-NULL result is an allocation of order `order` we now own.
        NonNull::new(page).map(|page| Self { page, order })
    }

    /// The allocation order.
    pub fn order(&self) -> u32 {
        self.order
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        bindings::PAGE_SIZE << self.order
    }

    /// Number of base pages.
    pub fn count(&self) -> usize {
        1 << self.order
    }

    /// Writes zeros over every byte. Owning the pages means no mapping of them is in use (a
    /// buffer's mappings end before its pages are handed back).
    pub fn zero(&mut self) {
        // x86_64 has no highmem: the direct map covers the whole allocation contiguously.
        // SAFETY: `page` is valid (type invariant).
        let addr = unsafe { bindings::page_address(self.page.as_ptr()) }.cast::<u8>();
        // SAFETY: `addr..addr+size()` is the direct mapping of pages we own exclusively.
        unsafe { core::ptr::write_bytes(addr, 0, self.size()) };
    }

    /// The `i`-th base page of the allocation, `i < count()`.
    fn nth(&self, i: usize) -> *mut bindings::page {
        // x86_64 uses SPARSEMEM_VMEMMAP, where the `struct page`s of one buddy allocation are
        // contiguous, so `nth_page()` is plain pointer arithmetic.
        self.page.as_ptr().wrapping_add(i)
    }

    /// The page frame number of the first page.
    fn pfn(&self) -> usize {
        // SAFETY: `page` is a valid page by the type invariant.
        unsafe { bindings::page_to_pfn(self.page.as_ptr()) as usize }
    }
}

impl Drop for Pages {
    fn drop(&mut self) {
        // SAFETY: by the type invariant we own an allocation of this order.
        unsafe { bindings::__free_pages(self.page.as_ptr(), self.order) };
    }
}

/// A `struct sg_table` describing a list of [`Pages`], freed on drop.
///
/// # Invariants
///
/// `table` was initialised by `sg_alloc_table` (or is zeroed, which `sg_free_table` accepts)
/// and its entries point at pages that outlive it.
struct SgTable {
    table: bindings::sg_table,
}

impl SgTable {
    /// # Safety
    ///
    /// The pages in `chunks` must outlive the returned table.
    unsafe fn new(chunks: &[Pages]) -> Result<KBox<Self>> {
        // SAFETY: an all-zero `sg_table` is its documented empty state.
        let empty: bindings::sg_table = unsafe { core::mem::zeroed() };
        let mut t = KBox::new(SgTable { table: empty }, GFP_KERNEL)?;
        let n = u32::try_from(chunks.len()).map_err(|_| EINVAL)?;
        // SAFETY: `t.table` is a valid, empty table.
        to_result(unsafe { bindings::sg_alloc_table(&mut t.table, n, bindings::GFP_KERNEL) })?;
        let mut sg = t.table.sgl;
        for c in chunks {
            let len = u32::try_from(c.size()).map_err(|_| EINVAL)?;
            // SAFETY: `sg_alloc_table` gave `n` chained entries and we visit each once; the
            // page outlives the table by this function's contract.
            unsafe {
                bindings::sg_set_page(sg, c.page.as_ptr(), len, 0);
                sg = bindings::sg_next(sg);
            }
        }
        Ok(t)
    }

    fn as_raw(&mut self) -> *mut bindings::sg_table {
        &mut self.table
    }
}

impl Drop for SgTable {
    fn drop(&mut self) {
        // SAFETY: the table was set up by `sg_alloc_table` or is zeroed (type invariant).
        unsafe { bindings::sg_free_table(&mut self.table) };
    }
}

/// Whether the current task has a fatal signal pending (a long allocation should stop).
pub fn fatal_signal_pending() -> bool {
    // SAFETY: `get_current` returns the running task, valid for this call.
    unsafe { bindings::fatal_signal_pending(bindings::get_current()) }
}

/// Total RAM in pages.
pub fn totalram_pages() -> usize {
    // SAFETY: reads a global counter.
    unsafe { bindings::totalram_pages() as usize }
}

/// Lets the scheduler run something else during a long loop: on a kernel without preemption
/// (the rig's), a multi-GiB byte loop would otherwise hold its CPU until the soft-lockup
/// detector fires. Sleeps, so never in atomic context.
pub(crate) fn cond_resched() {
    #[cfg(any(not(CONFIG_PREEMPTION), CONFIG_PREEMPT_DYNAMIC))]
    // SAFETY: `__cond_resched` has no preconditions beyond process context, which every
    // caller (an ioctl or a release path) is in.
    unsafe {
        bindings::__cond_resched();
    }
}

/// Bytes between scheduling points in [`Bytes`]' loops: small enough to stay far below the
/// soft-lockup threshold under emulation, large enough to cost nothing.
const RESCHED_EVERY: usize = 64 * 1024;

/// A range of kernel-mapped bytes of a dma-buf, accessed with volatile reads and writes
/// (user space may write the same memory at any time, so no Rust reference is formed). The
/// loops over it may sleep (every 64 KiB), so a range is never walked in atomic context.
///
/// # Invariants
///
/// `ptr..ptr+len` is mapped and stays mapped for `'a`.
pub struct Bytes<'a> {
    ptr: *mut u8,
    len: usize,
    _p: PhantomData<&'a ()>,
}

impl Bytes<'_> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Start address, for comparing mappings (never dereferenced by callers).
    pub fn addr(&self) -> usize {
        self.ptr as usize
    }

    /// Calls `f` on every byte, in order.
    pub fn for_each(&self, mut f: impl FnMut(u8)) {
        for i in 0..self.len {
            // SAFETY: `i < len`, and the range is mapped (type invariant).
            f(unsafe { core::ptr::read_volatile(self.ptr.add(i)) });
            if i % RESCHED_EVERY == RESCHED_EVERY - 1 {
                cond_resched();
            }
        }
    }

    /// The first `n` bytes (all of them if `n` is larger).
    pub fn prefix(&self, n: usize) -> Bytes<'_> {
        // INVARIANT: a shorter range of a mapped range is mapped for as long.
        Bytes {
            ptr: self.ptr,
            len: n.min(self.len),
            _p: PhantomData,
        }
    }

    /// Writes `b` to every byte.
    pub fn fill(&self, b: u8) {
        for i in 0..self.len {
            // SAFETY: `i < len`, and the range is mapped writable (type invariant).
            unsafe { core::ptr::write_volatile(self.ptr.add(i), b) };
            if i % RESCHED_EVERY == RESCHED_EVERY - 1 {
                cond_resched();
            }
        }
    }
}
