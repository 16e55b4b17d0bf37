// SPDX-License-Identifier: GPL-2.0

//! The few kernel APIs that differ between the kernels the rig builds, behind one set of
//! names, so the dma-buf abstractions, the heap and the importer compile unchanged on each.
//! This is the Linux 6.12 version; `linux-7.3.rs` beside it has the same items.

use crate::{bindings, ffi::c_char, str::CStr, uaccess::UserSlice};

/// `DMA_BIDIRECTIONAL` (a plain integer constant in 6.12's bindings).
pub const DMA_BIDIRECTIONAL: bindings::dma_data_direction =
    bindings::dma_data_direction_DMA_BIDIRECTIONAL;
/// `DMA_TO_DEVICE`.
pub const DMA_TO_DEVICE: bindings::dma_data_direction = bindings::dma_data_direction_DMA_TO_DEVICE;
/// `DMA_FROM_DEVICE`.
pub const DMA_FROM_DEVICE: bindings::dma_data_direction =
    bindings::dma_data_direction_DMA_FROM_DEVICE;

/// A C string's pointer.
pub fn c_str_ptr(s: &CStr) -> *const c_char {
    s.as_char_ptr()
}

/// A user-space buffer at address `addr`.
pub fn user_slice(addr: usize, len: usize) -> UserSlice {
    UserSlice::new(addr, len)
}

/// An owned reference to a refcounted kernel object (it moved between the kernels).
pub use crate::types::ARef;
pub use crate::types::{AsBytes, FromBytes};

/// `module!` for the rig's drivers. 6.12's `module!` has no `imports_ns`: the drivers are
/// built in there (6.12 exports no `dma_heap_add` to modules), so the namespaces are dropped.
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
            author: "heaprig",
            description: $description,
            license: "GPL",
        }
    };
}

/// Removes element `i` of `v` by moving the last one into its place (order not kept).
pub fn kvec_swap_remove<T: Copy>(v: &mut crate::alloc::KVec<T>, i: usize) {
    let last = v.len() - 1;
    v.as_mut_slice().swap(i, last);
    // SAFETY: shrinking by one keeps the rest initialised, and `T: Copy` needs no drop.
    unsafe { v.set_len(last) };
}

/// Removes and returns the last element of `v` (6.12's `Vec` has no `pop`).
pub fn kvvec_pop<T>(v: &mut crate::alloc::KVVec<T>) -> Option<T> {
    let n = v.len().checked_sub(1)?;
    // SAFETY: element `n` is initialised; shrinking the length by one gives its ownership to
    // the value read out, so it is dropped exactly once.
    unsafe {
        let last = core::ptr::read(v.as_ptr().add(n));
        v.set_len(n);
        Some(last)
    }
}

/// Whether dma-buf heaps charge their pages to the allocating task's memory cgroup: never
/// on 6.12 (`dma_heap.mem_accounting` came later).
pub fn heap_mem_accounting() -> bool {
    false
}
