// SPDX-License-Identifier: GPL-2.0

//! Miscdevice support: a backport to Linux 6.12 of 7.3's `kernel::miscdevice`.
//!
//! C headers: [`include/linux/miscdevice.h`](srctree/include/linux/miscdevice.h).
//!
//! Same names and signatures as upstream for what the rig uses (options, registration,
//! `open`, `release`, `ioctl`), so a driver written against 7.3 compiles unchanged here.
//! Left out: `mmap`, `read_iter`, `write_iter`, `compat_ioctl` and `show_fdinfo`, whose
//! upstream types (`VmaNew`, `Kiocb`, `SeqFile`) 6.12 lacks. One difference: 7.3's
//! `#[vtable]` names the owning module through an `OwnerModule` type that 6.12's macro cannot
//! add, so these file operations have no owner. That is right only for built-in code, and
//! every user on 6.12 is built in (its Kconfig symbol is `bool`).

use crate::{
    bindings,
    device::Device,
    error::{to_result, VTABLE_DEFAULT_ERROR},
    ffi::{c_int, c_long, c_uint, c_ulong},
    fs::File,
    init::pin_init_from_closure,
    prelude::*,
    str::CStr,
    types::{ForeignOwnable, Opaque},
};
use core::{marker::PhantomData, mem::MaybeUninit};

/// Options for creating a misc device.
#[derive(Copy, Clone)]
pub struct MiscDeviceOptions {
    /// The name of the miscdevice.
    pub name: &'static CStr,
}

impl MiscDeviceOptions {
    /// Create a raw `struct miscdev` ready for registration.
    pub const fn into_raw<T: MiscDevice>(self) -> bindings::miscdevice {
        // SAFETY: all zeroes is a valid `struct miscdevice`; the fields needed are set below.
        let mut result: bindings::miscdevice = unsafe { MaybeUninit::zeroed().assume_init() };
        result.minor = bindings::MISC_DYNAMIC_MINOR as c_int;
        result.name = self.name.as_char_ptr();
        result.fops = MiscdeviceVTable::<T>::build();
        result
    }
}

/// A registration of a miscdevice.
///
/// # Invariants
///
/// `inner` is a `struct miscdevice` registered with `misc_register()` for as long as the
/// [`MiscDeviceRegistration`] exists, deregistered exactly once, in [`Drop`].
#[repr(transparent)]
#[pin_data(PinnedDrop)]
pub struct MiscDeviceRegistration<T> {
    #[pin]
    inner: Opaque<bindings::miscdevice>,
    _t: PhantomData<T>,
}

// SAFETY: `misc_deregister` may be called on another thread than `misc_register`.
unsafe impl<T> Send for MiscDeviceRegistration<T> {}
// SAFETY: all `&self` methods may be called in parallel.
unsafe impl<T> Sync for MiscDeviceRegistration<T> {}

impl<T: MiscDevice> MiscDeviceRegistration<T> {
    /// Register a misc device.
    pub fn register(opts: MiscDeviceOptions) -> impl PinInit<Self, Error> {
        let init = move |slot: *mut Self| {
            // SAFETY: `slot` is valid for writes; no reference to its contents is made.
            let misc = Opaque::raw_get(unsafe { core::ptr::addr_of_mut!((*slot).inner) });
            // SAFETY: `misc` is valid for writes and uninitialised: nothing is dropped.
            unsafe { misc.write(opts.into_raw::<T>()) };
            // SAFETY: `misc` holds the options just written and is pinned; `drop`
            // deregisters it before its memory goes.
            // INVARIANT: on success the slot holds a registered device.
            to_result(unsafe { bindings::misc_register(misc) })
        };
        // SAFETY: the closure initialises every field of `Self` (`_t` is zero-sized) or
        // fails with nothing registered.
        unsafe { pin_init_from_closure(init) }
    }

    /// Returns a raw pointer to the misc device.
    pub fn as_raw(&self) -> *mut bindings::miscdevice {
        self.inner.get()
    }

    /// Access the `this_device` field.
    pub fn device(&self) -> &Device {
        // SAFETY: `misc_register` set `this_device` to a valid device, which lives while the
        // registration does (type invariant), and the returned reference borrows `self`.
        unsafe { Device::as_ref((*self.as_raw()).this_device) }
    }
}

#[pinned_drop]
impl<T> PinnedDrop for MiscDeviceRegistration<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: registered (type invariant), and deregistered only here.
        unsafe { bindings::misc_deregister(self.inner.get()) };
    }
}

/// Trait implemented by the private data of an open misc device.
#[vtable]
pub trait MiscDevice: Sized {
    /// What kind of pointer should `Self` be wrapped in.
    type Ptr: ForeignOwnable + Send + Sync;

    /// Called when the misc device is opened.
    ///
    /// The returned pointer will be stored as the private data for the file.
    fn open(_file: &File, _misc: &MiscDeviceRegistration<Self>) -> Result<Self::Ptr>;

    /// Called when the misc device is released.
    fn release(device: Self::Ptr, _file: &File) {
        drop(device);
    }

    /// Handler for ioctls.
    fn ioctl(
        _device: <Self::Ptr as ForeignOwnable>::Borrowed<'_>,
        _file: &File,
        _cmd: u32,
        _arg: usize,
    ) -> Result<isize> {
        crate::build_error!(VTABLE_DEFAULT_ERROR)
    }
}

/// A vtable for the file operations of a Rust miscdevice.
struct MiscdeviceVTable<T: MiscDevice>(PhantomData<T>);

impl<T: MiscDevice> MiscdeviceVTable<T> {
    /// # Safety
    ///
    /// `file` and `inode` must be the file and inode for a file that is undergoing
    /// initialization. The file must be associated with a `MiscDeviceRegistration<T>`.
    unsafe extern "C" fn open(inode: *mut bindings::inode, raw_file: *mut bindings::file) -> c_int {
        // SAFETY: The pointers are valid and for a file being opened.
        let ret = unsafe { bindings::generic_file_open(inode, raw_file) };
        if ret != 0 {
            return ret;
        }
        // SAFETY: `misc_open()` set the private data to the `struct miscdevice`, the only
        // field of a `#[repr(transparent)]` `MiscDeviceRegistration<T>`, and keeps it
        // registered during this call.
        let misc = unsafe { &*(*raw_file).private_data.cast::<MiscDeviceRegistration<T>>() };
        // SAFETY: the file is valid for (much longer than) the duration of `T::open`.
        let file = unsafe { File::from_raw_file(raw_file) };
        let ptr = match T::open(file, misc) {
            Ok(ptr) => ptr,
            Err(err) => return err.to_errno(),
        };
        // From here on the private data is `T::Ptr`, as every other operation below expects.
        // SAFETY: the open call of a file may set its private data.
        unsafe { (*raw_file).private_data = ptr.into_foreign().cast_mut() };
        0
    }

    /// # Safety
    ///
    /// `file` and `inode` must be the file and inode for a file that is being released. The
    /// file must be associated with a `MiscDeviceRegistration<T>`.
    unsafe extern "C" fn release(_inode: *mut bindings::inode, file: *mut bindings::file) -> c_int {
        // SAFETY: the release call of a file owns the private data, which `open` set from
        // `into_foreign`.
        let ptr = unsafe { <T::Ptr as ForeignOwnable>::from_foreign((*file).private_data) };
        // SAFETY: the file is valid during release.
        T::release(ptr, unsafe { File::from_raw_file(file) });
        0
    }

    /// # Safety
    ///
    /// `file` must be a valid file that is associated with a `MiscDeviceRegistration<T>`.
    unsafe extern "C" fn ioctl(file: *mut bindings::file, cmd: c_uint, arg: c_ulong) -> c_long {
        // SAFETY: the ioctl call of a file can access the private data, set by `open` and
        // not released while an ioctl runs.
        let device = unsafe { <T::Ptr as ForeignOwnable>::borrow((*file).private_data) };
        // SAFETY: the file is valid during the ioctl.
        let file = unsafe { File::from_raw_file(file) };
        match T::ioctl(device, file, cmd, arg as usize) {
            Ok(ret) => ret as c_long,
            Err(err) => err.to_errno() as c_long,
        }
    }

    const VTABLE: bindings::file_operations = bindings::file_operations {
        open: Some(Self::open),
        release: Some(Self::release),
        unlocked_ioctl: if T::HAS_IOCTL {
            Some(Self::ioctl)
        } else {
            None
        },
        // SAFETY: all other members may be NULL (among them `owner`: see the module docs).
        ..unsafe { MaybeUninit::zeroed().assume_init() }
    };

    const fn build() -> &'static bindings::file_operations {
        &Self::VTABLE
    }
}
