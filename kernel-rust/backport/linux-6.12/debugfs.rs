// SPDX-License-Identifier: GPL-2.0

//! DebugFS: a backport to Linux 6.12 of the scoped part of 7.3's `kernel::debugfs`.
//!
//! C header: [`include/linux/debugfs.h`](srctree/include/linux/debugfs.h).
//!
//! Same names and signatures as upstream for what the rig uses ([`Scope::dir`],
//! [`ScopedDir::read_only_file`], [`ScopedDir::read_write_file`], [`Writer`], [`Reader`]), so
//! a driver written against 7.3 compiles unchanged here. Left out: `Dir`, `File`, binary and
//! callback files, subdirectories. As upstream, failing to create an entry is silent (a
//! driver must work without debugfs). One difference: upstream formats a file once per open
//! (`seq_file`); this formats it on every `read`, through `simple_read_from_buffer`, because
//! 6.12's Rust has no `seq_file` bindings.

use crate::{
    bindings,
    error::from_err_ptr,
    ffi::c_char,
    init::PinInit,
    prelude::*,
    str::CStr,
    uaccess::{UserSlice, UserSliceReader},
};
use core::{
    fmt,
    marker::{PhantomData, PhantomPinned},
    ops::Deref,
};

/// A trait for types that can be written into a string.
///
/// Implemented for everything that implements [`Debug`](fmt::Debug), as upstream.
pub trait Writer {
    /// Formats the value using the given formatter.
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result;
}

impl<T: fmt::Debug> Writer for T {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{self:?}")
    }
}

/// A trait for types that can be updated from a user slice.
pub trait Reader {
    /// Updates the value from the given user slice.
    fn read_from_slice(&self, reader: &mut UserSliceReader) -> Result;
}

/// A directory at the debugfs root, tied to data its files serve: dropping the scope
/// removes the directory and every file in it before the data is dropped.
///
/// # Invariants
///
/// `dentry` is NULL or a debugfs directory whose files point into `data`, removed (with
/// them) only by `drop`.
#[pin_data(PinnedDrop)]
pub struct Scope<T> {
    dentry: *mut bindings::dentry,
    #[pin]
    data: T,
    // Even if `T` is `Unpin`, the files point into it: it must not move.
    #[pin]
    _pin: PhantomPinned,
}

// SAFETY: debugfs entries may be removed from any thread; `T` decides the rest.
unsafe impl<T: Send> Send for Scope<T> {}
// SAFETY: `&Scope` only gives `&T`.
unsafe impl<T: Sync> Sync for Scope<T> {}

#[pinned_drop]
impl<T> PinnedDrop for Scope<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: `dentry` is NULL (a no-op) or ours (type invariant), removed once. Removal
        // waits for the files' running operations, so none uses `data` after this.
        unsafe { bindings::debugfs_remove(self.dentry) };
    }
}

impl<'a, T: 'a> Scope<T> {
    /// Creates a new scope, which is a directory at the root of the debugfs filesystem,
    /// associated with some data `T`.
    ///
    /// The `init` closure is called to populate the directory with files. These files can
    /// reference the data stored in the scope.
    pub fn dir<E: 'a, F>(
        data: impl PinInit<T, E> + 'a,
        name: &'a CStr,
        init: F,
    ) -> impl PinInit<Self, E> + 'a
    where
        F: for<'data, 'dir> FnOnce(&'data T, &'dir ScopedDir<'data, 'dir>) + 'a,
    {
        try_pin_init!(Self {
            dentry: core::ptr::null_mut(),
            data <- data,
            _pin: PhantomPinned,
        }? E)
        .pin_chain(move |mut scope| {
            // SAFETY: `name` is a valid C string; a NULL parent means the debugfs root.
            let d =
                unsafe { bindings::debugfs_create_dir(name.as_char_ptr(), core::ptr::null_mut()) };
            let dentry = from_err_ptr(d).unwrap_or(core::ptr::null_mut());
            // SAFETY: `dentry` is not structurally pinned.
            // INVARIANT: the directory is ours; `drop` removes it.
            unsafe { scope.as_mut().get_unchecked_mut().dentry = dentry };
            if !dentry.is_null() {
                init(
                    &scope.data,
                    &ScopedDir {
                        dentry,
                        _p: PhantomData,
                    },
                );
            }
            Ok(())
        })
    }
}

impl<T> Deref for Scope<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.data
    }
}

/// A handle to a directory which will live at most `'dir`, accessing data that will live
/// for at least `'data`. Dropping it removes nothing: the [`Scope`] that made it does.
pub struct ScopedDir<'data, 'dir> {
    dentry: *mut bindings::dentry,
    _p: PhantomData<(&'data (), &'dir ())>,
}

impl<'data, 'dir> ScopedDir<'data, 'dir> {
    fn create_file<T: Sync>(
        &self,
        name: &CStr,
        mode: u16,
        data: &'data T,
        fops: &'static bindings::file_operations,
    ) {
        // SAFETY: the parent is a live directory of a scope whose data outlives it, and with
        // it the file, which points at `data` ('data outlives the scope's directory).
        let d = unsafe {
            bindings::debugfs_create_file(
                name.as_char_ptr(),
                mode,
                self.dentry,
                (data as *const T).cast_mut().cast(),
                fops,
            )
        };
        // As upstream: a file that cannot be made is not an error.
        let _ = from_err_ptr(d);
    }

    /// Creates a read-only file in this directory, with the contents from [`Writer`].
    pub fn read_only_file<T: Writer + Send + Sync + 'static>(&self, name: &CStr, data: &'data T) {
        self.create_file(name, 0o400, data, &FileOps::<T>::READ_ONLY)
    }

    /// Creates a read-write file in this directory. Reading it uses the [`Writer`]
    /// implementation, writing it the [`Reader`] one.
    pub fn read_write_file<T: Writer + Reader + Send + Sync + 'static>(
        &self,
        name: &CStr,
        data: &'data T,
    ) {
        self.create_file(name, 0o600, data, &FileOps::<T>::READ_WRITE)
    }
}

/// Collects formatted text into a vector.
struct Text(KVec<u8>);

impl fmt::Write for Text {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0
            .extend_from_slice(s.as_bytes(), GFP_KERNEL)
            .map_err(|_| fmt::Error)
    }
}

/// Shows a [`Writer`] through [`fmt::Display`].
struct Shown<'a, T>(&'a T);

impl<T: Writer> fmt::Display for Shown<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write(f)
    }
}

struct FileOps<T>(PhantomData<T>);

impl<T: Writer + Sync> FileOps<T> {
    const READ_ONLY: bindings::file_operations = bindings::file_operations {
        open: Some(bindings::simple_open),
        read: Some(Self::read),
        llseek: Some(bindings::default_llseek),
        // SAFETY: all other members may be NULL.
        ..unsafe { core::mem::MaybeUninit::zeroed().assume_init() }
    };

    /// # Safety
    ///
    /// Called by the VFS for a file [`ScopedDir::create_file`] made with this `T`, whose
    /// `private_data` `simple_open` set to the `&T` it was made with.
    unsafe extern "C" fn read(
        file: *mut bindings::file,
        buf: *mut c_char,
        count: usize,
        ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: see the function's safety section; the scope keeps the data alive until
        // the file is removed, which waits for this call.
        let data = unsafe { &*(*file).private_data.cast::<T>() };
        let mut out = Text(KVec::new());
        if fmt::write(&mut out, format_args!("{}", Shown(data))).is_err() {
            return ENOMEM.to_errno() as isize;
        }
        // SAFETY: `buf`, `count` and `ppos` come from the VFS; `out` is a kernel buffer.
        unsafe {
            bindings::simple_read_from_buffer(
                buf.cast(),
                count,
                ppos,
                out.0.as_ptr().cast(),
                out.0.len(),
            )
        }
    }
}

impl<T: Writer + Reader + Sync> FileOps<T> {
    const READ_WRITE: bindings::file_operations = bindings::file_operations {
        write: Some(Self::write),
        ..FileOps::<T>::READ_ONLY
    };

    /// # Safety
    ///
    /// As [`Self::read`].
    unsafe extern "C" fn write(
        file: *mut bindings::file,
        buf: *const c_char,
        count: usize,
        _ppos: *mut bindings::loff_t,
    ) -> isize {
        // SAFETY: as in `read`.
        let data = unsafe { &*(*file).private_data.cast::<T>() };
        let mut reader = UserSlice::new(buf as usize, count).reader();
        match data.read_from_slice(&mut reader) {
            Ok(()) => count as isize,
            Err(e) => e.to_errno() as isize,
        }
    }
}
