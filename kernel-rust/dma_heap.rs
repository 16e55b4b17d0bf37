// SPDX-License-Identifier: GPL-2.0

//! DMA-BUF heaps: registering an allocator as `/dev/dma_heap/<name>`.
//!
//! C header: [`include/linux/dma-heap.h`](srctree/include/linux/dma-heap.h).
//!
//! 6.12 has no way to remove a heap once added, so a registration lives forever.

use crate::{
    bindings,
    dma_buf::Exported,
    error::{from_err_ptr, Result},
    str::CStr,
};
use core::marker::PhantomData;

/// An allocator behind a dma-buf heap.
pub trait Heap: Send + Sync + 'static {
    /// `DMA_HEAP_IOCTL_ALLOC`: `len` is page-aligned and non-zero (the core checks), the
    /// flags are the validated user flags.
    fn allocate(&'static self, len: usize, fd_flags: u32, heap_flags: u64) -> Result<Exported>;
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
        // SAFETY: `register` stored a `&'static T` as the heap's private data.
        let this: &'static T = unsafe { &*bindings::dma_heap_get_drvdata(heap).cast::<T>() };
        match this.allocate(len as usize, fd_flags, heap_flags) {
            Ok(e) => e.0.as_ptr(),
            Err(e) => e.to_ptr(),
        }
    }
}

/// Adds `heap` as `/dev/dma_heap/<name>`.
pub fn register<T: Heap>(name: &'static CStr, heap: &'static T) -> Result {
    let info = bindings::dma_heap_export_info {
        name: name.as_char_ptr(),
        ops: &HeapVTable::<T>::OPS,
        priv_: (heap as *const T).cast_mut().cast(),
    };
    // SAFETY: `info` is valid for the call; the core copies what it keeps, and the name, ops
    // and private data it points to are all `'static`.
    from_err_ptr(unsafe { bindings::dma_heap_add(&info) })?;
    Ok(())
}
