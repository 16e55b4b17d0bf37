// SPDX-License-Identifier: GPL-2.0

//! DMA-BUF heaps: registering an allocator as `/dev/dma_heap/<name>`.
//!
//! C header: [`include/linux/dma-heap.h`](srctree/include/linux/dma-heap.h).
//!
//! Neither 6.12 nor 7.3 can remove a heap once added, so a registration lives forever and
//! pins the module that made it.

use crate::{
    bindings,
    dma_buf::Exported,
    error::{from_err_ptr, Result},
    prelude::*,
    str::CStr,
};
use core::marker::PhantomData;

/// An allocator behind a dma-buf heap.
pub trait Heap: Send + Sync + 'static {
    /// `DMA_HEAP_IOCTL_ALLOC`: `len` is page-aligned and non-zero (the core checks), the
    /// flags are the validated user flags.
    /// The buffer must be exported with `owner` (see [`crate::dma_buf::export`]).
    fn allocate(
        &'static self,
        owner: &'static ThisModule,
        len: usize,
        fd_flags: u32,
        heap_flags: u64,
    ) -> Result<Exported>;
}

/// What the core's private data points to: the heap and its module.
struct Registered<T: 'static> {
    heap: &'static T,
    module: &'static ThisModule,
}

struct HeapVTable<T: Heap>(PhantomData<T>);

impl<T: Heap> HeapVTable<T> {
    const OPS: bindings::dma_heap_ops = bindings::dma_heap_ops {
        allocate: Some(Self::allocate),
    };

    /// # Safety
    ///
    /// Called by the dma-heap core for a heap registered by [`register`] with this `T`.
    unsafe extern "C" fn allocate(
        heap: *mut bindings::dma_heap,
        len: crate::ffi::c_ulong,
        fd_flags: u32,
        heap_flags: u64,
    ) -> *mut bindings::dma_buf {
        // SAFETY: `register` stored a leaked `Registered<T>` as the heap's private data.
        let this: &Registered<T> =
            unsafe { &*bindings::dma_heap_get_drvdata(heap).cast::<Registered<T>>() };
        match this
            .heap
            .allocate(this.module, len as usize, fd_flags, heap_flags)
        {
            Ok(e) => e.0.as_ptr(),
            Err(e) => e.to_ptr(),
        }
    }
}

/// Adds `heap` as `/dev/dma_heap/<name>`, made by `module`. The heap can never be removed,
/// so on success `module` is pinned (`rmmod` answers "in use"; a built-in one has nothing to
/// pin).
pub fn register<T: Heap>(
    name: &'static CStr,
    heap: &'static T,
    module: &'static ThisModule,
) -> Result {
    let reg = KBox::into_raw(KBox::new(Registered { heap, module }, GFP_KERNEL)?);
    let info = bindings::dma_heap_export_info {
        name: crate::rig::compat::c_str_ptr(name),
        ops: &HeapVTable::<T>::OPS,
        priv_: reg.cast(),
    };
    // SAFETY: `info` is valid for the call; the core copies what it keeps, and the name, ops
    // and private data it points to live forever (the private data is leaked on success).
    if let Err(e) = from_err_ptr(unsafe { bindings::dma_heap_add(&info) }) {
        // SAFETY: the core did not keep `reg`, which came from `KBox::into_raw` above.
        drop(unsafe { KBox::from_raw(reg) });
        return Err(e);
    }
    // SAFETY: `module` is this live module (or NULL when built in, which the helper ignores).
    unsafe { bindings::heaprig_pin_module(module.as_ptr()) };
    Ok(())
}
