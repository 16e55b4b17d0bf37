// SPDX-License-Identifier: GPL-2.0

//! DMA operations for a device that is not cache-coherent with the CPU, on machines whose DMA
//! is (x86).
//!
//! On x86 the DMA API's syncs do nothing, so an exporter that forgets one, or syncs the wrong
//! way, passes every test. A device given these operations keeps its own copy of every mapped
//! segment ("device memory"), moved the way swiotlb moves a bounce buffer: mapping copies
//! the CPU's bytes in; a sync for the device copies CPU to device for `DMA_TO_DEVICE` and
//! `DMA_BIDIRECTIONAL`; a sync for the CPU copies device to CPU for `DMA_FROM_DEVICE` and
//! `DMA_BIDIRECTIONAL`; unmapping copies back as a sync for the CPU does. A missing or
//! misdirected sync then shows as wrong data.
//!
//! Only scatterlist mappings exist (what dma-buf exporters make); the bus address of a
//! segment is the kernel address of its device copy, one buddy allocation (at most
//! `MAX_PAGE_ORDER`: a longer segment fails to map with `ENOMEM`). The operations sleep
//! (they allocate with `GFP_KERNEL`): for test devices only.
//!
//! A device has its own DMA operations only on kernels with `CONFIG_ARCH_HAS_DMA_OPS` (on
//! x86, `GART_IOMMU` or `XEN` selects it); elsewhere [`install`] fails with `ENODEV`.
//!
//! C header: [`include/linux/dma-map-ops.h`](srctree/include/linux/dma-map-ops.h).
#![cfg_attr(not(CONFIG_ARCH_HAS_DMA_OPS), allow(dead_code))]

use super::*;
use crate::ffi::{c_int, c_ulong};

/// Which way a segment's bytes move.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    ToDevice,
    ToCpu,
}

impl Way {
    /// What a sync or unmap in `dir` moves, as swiotlb does; `None` moves nothing.
    fn of(dir: bindings::dma_data_direction, for_cpu: bool) -> Option<Way> {
        match (direction(dir).ok()?, for_cpu) {
            (DataDirection::Bidirectional | DataDirection::FromDevice, true) => Some(Way::ToCpu),
            (DataDirection::Bidirectional | DataDirection::ToDevice, false) => Some(Way::ToDevice),
            _ => None,
        }
    }
}

/// The smallest buddy order holding `len` bytes.
fn order_of(len: usize) -> u32 {
    let pages = len.div_ceil(bindings::PAGE_SIZE).max(1);
    pages.next_power_of_two().trailing_zeros()
}

/// Copies segment `sg` between its CPU pages and its device copy.
///
/// # Safety
///
/// `sg` is an entry that [`map_sg`] mapped and that is not yet unmapped: its pages are valid
/// and its `dma_address` is the kernel address of a device copy of `length` bytes.
unsafe fn copy_segment(sg: *mut bindings::scatterlist, way: Way) {
    // SAFETY: `sg` is a valid mapped entry (function contract).
    let (page, off, len, dev) = unsafe {
        (
            bindings::sg_page(sg),
            (*sg).offset as usize,
            (*sg).length as usize,
            (*sg).dma_address as usize as *mut u8,
        )
    };
    let mut pos = 0;
    while pos < len {
        let at = off + pos;
        let in_page = at & (bindings::PAGE_SIZE - 1);
        let chunk = (bindings::PAGE_SIZE - in_page).min(len - pos);
        // SAFETY: `page + at / PAGE_SIZE` is a page of this entry (physically contiguous,
        // with contiguous `struct page`s under SPARSEMEM_VMEMMAP, which x86_64 uses).
        let va = unsafe { bindings::kmap_local_page(page.add(at >> bindings::PAGE_SHIFT)) };
        // SAFETY: `chunk` bytes from `in_page` stay inside the locally mapped page, and
        // `pos + chunk <= len` inside the device copy; the two never overlap. User space may
        // write the CPU page meanwhile: the copy is then torn, as a real device's DMA would be.
        unsafe {
            let cpu = va.cast::<u8>().add(in_page);
            match way {
                Way::ToDevice => core::ptr::copy_nonoverlapping(cpu, dev.add(pos), chunk),
                Way::ToCpu => core::ptr::copy_nonoverlapping(dev.add(pos), cpu, chunk),
            }
            bindings::kunmap_local(va);
        }
        pos += chunk;
    }
}

/// Moves every one of the `n` segments from `sgl` the way `dir` asks, if any.
///
/// # Safety
///
/// The `n` entries from `sgl` are mapped by [`map_sg`] and not yet unmapped.
unsafe fn sync(
    sgl: *mut bindings::scatterlist,
    n: c_int,
    dir: bindings::dma_data_direction,
    cpu: bool,
) {
    let Some(way) = Way::of(dir, cpu) else {
        return;
    };
    let mut sg = sgl;
    for _ in 0..n {
        // SAFETY: one of the `n` mapped entries (function contract).
        unsafe {
            copy_segment(sg, way);
            sg = bindings::sg_next(sg);
        }
    }
}

/// Frees the device copies of the first `n` entries from `sgl`.
///
/// # Safety
///
/// Those entries are mapped by [`map_sg`]; they are unmapped after this.
unsafe fn free_copies(sgl: *mut bindings::scatterlist, n: c_int) {
    let mut sg = sgl;
    for _ in 0..n {
        // SAFETY: the entry's device copy was allocated by `map_sg` with this order, at this
        // kernel address.
        unsafe {
            let (addr, len) = ((*sg).dma_address as c_ulong, (*sg).length as usize);
            bindings::free_pages(addr, order_of(len));
            sg = bindings::sg_next(sg);
        }
    }
}

/// `map_sg`: a device copy per entry, filled from the CPU (as swiotlb fills a bounce buffer
/// whatever the direction, so the device never sees stale memory).
///
/// # Safety
///
/// Called by the DMA API with a scatterlist of `nents` entries with valid pages.
unsafe extern "C" fn map_sg(
    _dev: *mut bindings::device,
    sgl: *mut bindings::scatterlist,
    nents: c_int,
    _dir: bindings::dma_data_direction,
    _attrs: c_ulong,
) -> c_int {
    let mut sg = sgl;
    for i in 0..nents {
        // SAFETY: `sg` is one of the `nents` entries (function contract).
        let len = unsafe { (*sg).length };
        let gfp = bindings::GFP_KERNEL | bindings::__GFP_NOWARN;
        // SAFETY: any flags and order may be asked for; NULL means no memory (or too large).
        let page = unsafe { bindings::alloc_pages(gfp, order_of(len as usize)) };
        // SAFETY: a lowmem page (`GFP_KERNEL`) has a kernel address; `free_copies` frees the
        // allocation by it.
        let copy = (!page.is_null()).then(|| unsafe { bindings::page_address(page) } as usize);
        let Some(copy) = copy else {
            // SAFETY: the first `i` entries were mapped above.
            unsafe { free_copies(sgl, i) };
            return ENOMEM.to_errno();
        };
        // SAFETY: `sg` is valid; once its bus address is set it is a mapped entry.
        unsafe {
            (*sg).dma_address = copy as bindings::dma_addr_t;
            (*sg).dma_length = len;
            copy_segment(sg, Way::ToDevice);
            sg = bindings::sg_next(sg);
        }
    }
    nents
}

/// `unmap_sg`: copies back for the CPU as a sync would, then frees the device copies.
///
/// # Safety
///
/// Called by the DMA API with the `nents` entries a [`map_sg`] call mapped.
unsafe extern "C" fn unmap_sg(
    _dev: *mut bindings::device,
    sgl: *mut bindings::scatterlist,
    nents: c_int,
    dir: bindings::dma_data_direction,
    _attrs: c_ulong,
) {
    // SAFETY: the entries are mapped until here (function contract).
    unsafe {
        sync(sgl, nents, dir, true);
        free_copies(sgl, nents);
    }
}

/// `sync_sg_for_cpu`.
///
/// # Safety
///
/// Called by the DMA API with `nents` entries a [`map_sg`] call mapped.
unsafe extern "C" fn sync_sg_for_cpu(
    _dev: *mut bindings::device,
    sgl: *mut bindings::scatterlist,
    nents: c_int,
    dir: bindings::dma_data_direction,
) {
    // SAFETY: mapped entries (function contract).
    unsafe { sync(sgl, nents, dir, true) }
}

/// `sync_sg_for_device`.
///
/// # Safety
///
/// Called by the DMA API with `nents` entries a [`map_sg`] call mapped.
unsafe extern "C" fn sync_sg_for_device(
    _dev: *mut bindings::device,
    sgl: *mut bindings::scatterlist,
    nents: c_int,
    dir: bindings::dma_data_direction,
) {
    // SAFETY: mapped entries (function contract).
    unsafe { sync(sgl, nents, dir, false) }
}

/// The operations; everything not set is absent (`dma_supported` absent means any mask).
static OPS: bindings::dma_map_ops = bindings::dma_map_ops {
    map_sg: Some(map_sg),
    unmap_sg: Some(unmap_sg),
    sync_sg_for_cpu: Some(sync_sg_for_cpu),
    sync_sg_for_device: Some(sync_sg_for_device),
    // SAFETY: all-zero is a valid `dma_map_ops`: no flags, every other operation absent.
    ..unsafe { core::mem::zeroed() }
};

/// Gives `dev` the non-coherent operations; `ENODEV` on a kernel where devices cannot have
/// their own.
///
/// # Safety
///
/// `dev` is valid, has no DMA mapping yet, and keeps the operations until
/// [`uninstall`] (they are static, so the device may outlive the caller).
pub(crate) unsafe fn install(dev: *mut bindings::device) -> Result {
    #[cfg(CONFIG_ARCH_HAS_DMA_OPS)]
    {
        // SAFETY: `dev` is valid (function contract); `set_dma_ops` is this store.
        unsafe { (*dev).dma_ops = &OPS };
        Ok(())
    }
    #[cfg(not(CONFIG_ARCH_HAS_DMA_OPS))]
    {
        let _ = dev;
        Err(ENODEV)
    }
}

/// Takes the operations back from `dev`, if it has them.
///
/// # Safety
///
/// `dev` is valid and has no DMA mapping left.
pub(crate) unsafe fn uninstall(dev: *mut bindings::device) {
    // SAFETY: `dev` is valid (function contract).
    #[cfg(CONFIG_ARCH_HAS_DMA_OPS)]
    unsafe {
        if is_installed(dev) {
            (*dev).dma_ops = core::ptr::null();
        }
    }
    #[cfg(not(CONFIG_ARCH_HAS_DMA_OPS))]
    let _ = dev;
}

/// Whether `dev` has these operations.
///
/// # Safety
///
/// `dev` is valid.
pub(crate) unsafe fn is_installed(dev: *mut bindings::device) -> bool {
    #[cfg(CONFIG_ARCH_HAS_DMA_OPS)]
    // SAFETY: `dev` is valid (function contract).
    return core::ptr::eq(unsafe { (*dev).dma_ops }, &OPS);
    #[cfg(not(CONFIG_ARCH_HAS_DMA_OPS))]
    {
        let _ = dev;
        false
    }
}

/// The device's copy of the segments of `table`, mapped for a device with these operations,
/// one [`Bytes`] per segment, in order.
///
/// # Safety
///
/// `table` is mapped (by `dma_map_sgtable`) for a device with these operations, and stays
/// mapped while `f` runs.
pub(crate) unsafe fn for_each_device_segment(
    table: *const bindings::sg_table,
    mut f: impl FnMut(&Bytes<'_>),
) -> usize {
    // SAFETY: the table is mapped (function contract).
    let (mut sg, n) = unsafe { ((*table).sgl, (*table).nents) };
    let mut bytes = 0;
    for _ in 0..n {
        // SAFETY: one of the table's `nents` mapped entries, whose bus address is the kernel
        // address of its device copy (`map_sg`).
        let (ptr, len) = unsafe { ((*sg).dma_address as usize as *mut u8, (*sg).dma_length) };
        // INVARIANT: the device copy lives until the table is unmapped, after `f` returns.
        f(&Bytes {
            ptr,
            len: len as usize,
            _p: PhantomData,
        });
        bytes += len as usize;
        // SAFETY: advancing within the table's `nents` entries.
        sg = unsafe { bindings::sg_next(sg) };
    }
    bytes
}
