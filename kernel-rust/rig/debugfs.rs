// SPDX-License-Identifier: GPL-2.0

//! Minimal debugfs support: a directory of text files backed by `'static` Rust objects.
//!
//! C header: [`include/linux/debugfs.h`](srctree/include/linux/debugfs.h).
//!
//! A [`Dir`] removes itself and its files when dropped; a module keeps it in its module
//! object, so the files are gone (and `debugfs_remove` has waited out their readers and
//! writers) before the module's statics they serve are unloaded.

use crate::{
    bindings,
    error::{from_err_ptr, Result},
    prelude::*,
    rig::compat,
    str::CStr,
};
use core::marker::PhantomData;

/// A text file's behaviour.
pub trait File: Sync + 'static {
    /// Appends the file's contents to `out`.
    fn show(&self, out: &mut KVec<u8>) -> Result;
    /// Handles a write of `data` (at most 64 bytes); the default refuses writes.
    fn store(&self, _data: &[u8]) -> Result {
        Err(EPERM)
    }
}

/// A debugfs directory.
///
/// # Invariants
///
/// `dentry` is a live debugfs directory, removed (with its files) only by `drop`.
pub struct Dir {
    dentry: *mut bindings::dentry,
}

// SAFETY: debugfs functions may be called on a dentry from any thread.
unsafe impl Send for Dir {}
// SAFETY: `&Dir` only creates files, which debugfs serialises itself.
unsafe impl Sync for Dir {}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: `dentry` is live (type invariant) and removed once; removal waits for the
        // files' in-flight operations (they are created with proxied fops).
        unsafe { bindings::debugfs_remove(self.dentry) };
    }
}

impl Dir {
    /// Creates `/sys/kernel/debug/<name>`.
    pub fn new(name: &'static CStr) -> Result<Self> {
        // SAFETY: `name` is a valid C string; a NULL parent means the debugfs root.
        let d =
            unsafe { bindings::debugfs_create_dir(compat::c_str_ptr(name), core::ptr::null_mut()) };
        let dentry = from_err_ptr(d)?;
        // INVARIANT: debugfs_create_dir succeeded; only `drop` removes it.
        Ok(Self { dentry })
    }

    /// Adds a file `name` with permissions `mode`, served by `data`.
    pub fn file<T: File>(&self, name: &'static CStr, mode: u16, data: &'static T) -> Result {
        // SAFETY: the parent is live (type invariant), `data` outlives the file, and the fops
        // table is `'static`.
        let d = unsafe {
            compat::debugfs_create_file(
                compat::c_str_ptr(name),
                mode,
                self.dentry,
                (data as *const T).cast_mut().cast(),
                &FileVTable::<T>::FOPS,
            )
        };
        from_err_ptr(d)?;
        Ok(())
    }
}

struct FileVTable<T: File>(PhantomData<T>);

impl<T: File> FileVTable<T> {
    const FOPS: bindings::file_operations = bindings::file_operations {
        open: Some(bindings::simple_open),
        read: Some(Self::read),
        write: Some(Self::write),
        llseek: Some(bindings::default_llseek),
        // SAFETY: all other members may be NULL.
        ..unsafe { core::mem::MaybeUninit::zeroed().assume_init() }
    };

    /// # Safety
    ///
    /// Called by the VFS for a file created by [`Dir::file`] with this `T`.
    unsafe extern "C" fn read(
        file: *mut bindings::file,
        buf: *mut crate::ffi::c_char,
        count: usize,
        ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: `simple_open` set `private_data` to the `&'static T` given to `Dir::file`.
        let this = unsafe { &*(*file).private_data.cast::<T>() };
        let mut out = KVec::new();
        if let Err(e) = this.show(&mut out) {
            return e.to_errno() as isize;
        }
        // SAFETY: `buf`/`count`/`ppos` come from the VFS; `out` is a valid kernel buffer.
        unsafe {
            bindings::simple_read_from_buffer(
                buf.cast(),
                count,
                ppos,
                out.as_ptr().cast(),
                out.len(),
            )
        }
    }

    /// # Safety
    ///
    /// Called by the VFS for a file created by [`Dir::file`] with this `T`.
    unsafe extern "C" fn write(
        file: *mut bindings::file,
        buf: *const crate::ffi::c_char,
        count: usize,
        _ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: `simple_open` set `private_data` to the `&'static T` given to `Dir::file`.
        let this = unsafe { &*(*file).private_data.cast::<T>() };
        let mut data = [0u8; 64];
        let n = count.min(data.len());
        let r = compat::user_slice(buf as usize, n)
            .reader()
            .read_slice(&mut data[..n])
            .and_then(|()| this.store(&data[..n]));
        match r {
            Ok(()) => count as isize,
            Err(e) => e.to_errno() as isize,
        }
    }
}
