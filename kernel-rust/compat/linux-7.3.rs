// SPDX-License-Identifier: GPL-2.0

//! The few kernel APIs that differ between the kernels the rig builds, behind one set of
//! names, so the dma-buf abstractions, the heap and the importer compile unchanged on each.
//! This is the Linux 7.3 version; `linux-6.12.rs` beside it has the same items.

use crate::{
    bindings,
    ffi::c_char,
    str::{CStr, CStrExt},
    uaccess::{UserPtr, UserSlice},
};

/// `DMA_BIDIRECTIONAL` (a newtype enum in 7.3's bindings).
pub const DMA_BIDIRECTIONAL: bindings::dma_data_direction =
    bindings::dma_data_direction::DMA_BIDIRECTIONAL;
/// `DMA_TO_DEVICE`.
pub const DMA_TO_DEVICE: bindings::dma_data_direction = bindings::dma_data_direction::DMA_TO_DEVICE;
/// `DMA_FROM_DEVICE`.
pub const DMA_FROM_DEVICE: bindings::dma_data_direction =
    bindings::dma_data_direction::DMA_FROM_DEVICE;

/// A C string's pointer.
pub fn c_str_ptr(s: &CStr) -> *const c_char {
    s.as_char_ptr()
}

/// A user-space buffer at address `addr`.
pub fn user_slice(addr: usize, len: usize) -> UserSlice {
    UserSlice::new(UserPtr::from_addr(addr), len)
}

/// An owned reference to a refcounted kernel object (it moved between the kernels).
pub use crate::sync::aref::ARef;
pub use crate::transmute::{AsBytes, FromBytes};

/// `module!` for the rig's drivers, importing the symbol namespaces they use (modpost
/// refuses a module that uses `DMA_BUF` or `DMA_BUF_HEAP` symbols without importing them).
#[macro_export]
macro_rules! rig_module {
    (
        type: $type:tt,
        name: $name:tt,
        description: $description:tt,
        imports_ns: [$($ns:tt),* $(,)?] $(,)?
    ) => {
        $crate::prelude::module! {
            type: $type,
            name: $name,
            authors: ["heaprig"],
            description: $description,
            license: "GPL",
            imports_ns: [$($ns),*],
        }
    };
}

/// Removes element `i` of `v` by moving the last one into its place (order not kept).
pub fn kvec_swap_remove<T: Copy>(v: &mut crate::alloc::KVec<T>, i: usize) {
    let last = v.len() - 1;
    v.swap(i, last);
    v.pop();
}

/// Removes and returns the last element of `v`.
pub fn kvvec_pop<T>(v: &mut crate::alloc::KVVec<T>) -> Option<T> {
    v.pop()
}

/// Whether dma-buf heaps charge their pages to the allocating task's memory cgroup (the
/// `dma_heap.mem_accounting` parameter, set at boot).
pub fn heap_mem_accounting() -> bool {
    // SAFETY: a plain read of a bool that only the command line writes, before any heap
    // allocates.
    unsafe { bindings::mem_accounting }
}
