// SPDX-License-Identifier: GPL-2.0

//! Files: a backport to Linux 6.12 of the `kernel::fs::File` type of 7.3.
//!
//! C header: [`include/linux/fs.h`](srctree/include/linux/fs.h).
//!
//! Only what the misc device backport passes to its drivers: the type and its raw
//! conversions. Upstream's reference counting and accessors have no user in the rig; a
//! driver that needs them is written for 7.3.

use crate::{bindings, types::Opaque};

/// Wraps the kernel's `struct file`.
///
/// # Invariants
///
/// The wrapped `struct file` is valid for as long as a `&File` to it exists.
#[repr(transparent)]
pub struct File {
    inner: Opaque<bindings::file>,
}

impl File {
    /// Creates a reference to a [`File`] from a valid pointer.
    ///
    /// # Safety
    ///
    /// The caller must ensure that `ptr` points at a valid file and that the file's refcount
    /// is positive for the duration of `'a`.
    pub unsafe fn from_raw_file<'a>(ptr: *const bindings::file) -> &'a File {
        // SAFETY: `File` is `repr(transparent)` over the C struct, and the caller keeps it
        // valid for `'a`.
        unsafe { &*ptr.cast() }
    }

    /// Returns a raw pointer to the inner C struct.
    #[inline]
    pub fn as_ptr(&self) -> *mut bindings::file {
        self.inner.get()
    }
}
