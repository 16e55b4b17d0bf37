// SPDX-License-Identifier: GPL-2.0

//! Minimal misc device support.
//!
//! C header: [`include/linux/miscdevice.h`](srctree/include/linux/miscdevice.h).
//!
//! 6.12 has no Rust misc device abstraction (6.13 added one); this follows its shape: the C
//! `struct miscdevice` in an [`Opaque`], a trait for the driver with per-open-file state
//! (created in `open`, dropped in `release`), and `extern "C"` trampolines. Dropping the
//! registration deregisters the device; its file operations name the owning module, so no
//! file of the device can be open when the module's exit drops it.

use crate::{
    bindings,
    device::Device,
    error::{to_result, Error, Result},
    prelude::*,
    rig::compat,
    str::CStr,
    types::Opaque,
};
use core::marker::PhantomData;

/// A misc device driver.
pub trait MiscDevice: Sized + Sync + Send + 'static {
    /// What each open file of the device owns; dropped when the file is released (its last
    /// reference closed, or its process died).
    type Open: Send + Sync;

    /// Creates the state of a newly opened file.
    fn open(reg: &'static Registration<Self>) -> impl PinInit<Self::Open, Error>;

    /// Handles `ioctl(cmd, arg)` on an open file of the device.
    fn ioctl(
        reg: &'static Registration<Self>,
        open: &Self::Open,
        cmd: u32,
        arg: usize,
    ) -> Result<isize>;
}

/// What an open file's `private_data` points to.
#[pin_data]
struct OpenFile<T: MiscDevice> {
    reg: &'static Registration<T>,
    #[pin]
    open: T::Open,
}

/// A registered misc device and its driver data.
///
/// # Invariants
///
/// When `registered`, `misc` is registered with `misc_register`, with `fops` as its file
/// operations, until `drop`; everything is pinned.
#[pin_data(PinnedDrop)]
#[repr(C)]
pub struct Registration<T: MiscDevice> {
    misc: Opaque<bindings::miscdevice>,
    fops: Opaque<bindings::file_operations>,
    dma_parms: Opaque<bindings::device_dma_parameters>,
    /// Whether `misc_register` succeeded (written once, before the registration is shared).
    registered: bool,
    #[pin]
    data: T,
}

// SAFETY: the C struct is only touched by the misc core under its own lock after
// registration, and `T` is `Sync`.
unsafe impl<T: MiscDevice> Sync for Registration<T> {}
// SAFETY: as above; the registration is pinned.
unsafe impl<T: MiscDevice> Send for Registration<T> {}

impl<T: MiscDevice> Registration<T> {
    /// Registers `/dev/<name>` (mode 0600) served by the data `init` creates, owned by
    /// `module` (open files of the device keep it loaded). Dropping the result deregisters.
    pub fn register(
        name: &'static CStr,
        module: &'static ThisModule,
        init: impl PinInit<T, Error>,
    ) -> Result<Pin<KBox<Registration<T>>>> {
        let mut fops = FopsTable::<T>::FOPS;
        fops.owner = module.as_ptr();
        // SAFETY: an all-zero `miscdevice` is valid; the fields used are set here and, for
        // `fops`, once the registration is pinned.
        let mut misc: bindings::miscdevice = unsafe { core::mem::zeroed() };
        misc.minor = bindings::MISC_DYNAMIC_MINOR as _;
        misc.name = compat::c_str_ptr(name);
        misc.mode = 0o600;
        // SAFETY: all-zero DMA parameters are valid; `set_dma_params` fills them in.
        let parms: bindings::device_dma_parameters = unsafe { core::mem::zeroed() };
        let mut reg = KBox::pin_init(
            try_pin_init!(Registration {
                misc: Opaque::new(misc),
                fops: Opaque::new(fops),
                dma_parms: Opaque::new(parms),
                registered: false,
                data <- init,
            }),
            GFP_KERNEL,
        )?;
        // SAFETY: `misc` and `fops` are pinned beside each other; the misc core keeps
        // pointers to both until `misc_deregister` in `drop`.
        to_result(unsafe {
            (*reg.misc.get()).fops = reg.fops.get();
            bindings::misc_register(reg.misc.get())
        })?;
        // SAFETY: only a plain field is written; nothing is moved out of the pin.
        unsafe { reg.as_mut().get_unchecked_mut().registered = true };
        // INVARIANT: registered above, with `fops`; `drop` deregisters.
        Ok(reg)
    }

    /// The driver data.
    pub fn data(&self) -> &T {
        &self.data
    }

    /// The device misc_register created (for DMA mapping).
    pub fn device(&self) -> &Device {
        // SAFETY: `this_device` is set by `misc_register` and lives while registered, which
        // is as long as `self` (type invariant; `register` returns only registered ones).
        unsafe { compat::device_from_raw((*self.misc.get()).this_device) }
    }

    /// Lets the device do 64-bit DMA with segments of any size. A misc device has no bus to
    /// say so, and without it mapping fails (no mask) or DMA-API debug warns about segments
    /// longer than the 64 KiB default.
    pub fn set_dma_params(&self) -> Result {
        // SAFETY: `this_device` is valid (see `device`); `dma_parms` is pinned, and `drop`
        // clears the device's pointer to it before deregistering.
        unsafe {
            let dev = (*self.misc.get()).this_device;
            let parms = self.dma_parms.get();
            (*parms).max_segment_size = u32::MAX;
            (*parms).segment_boundary_mask = !0;
            (*dev).dma_parms = parms;
            to_result(bindings::dma_coerce_mask_and_coherent(dev, u64::MAX))
        }
    }
}

#[pinned_drop]
impl<T: MiscDevice> PinnedDrop for Registration<T> {
    fn drop(self: Pin<&mut Self>) {
        if !self.registered {
            return;
        }
        // SAFETY: registered (type invariant), so `this_device` is live until the
        // deregistration, which happens once. The device may outlive it (references held
        // elsewhere), so it must stop pointing at our `dma_parms` first.
        unsafe {
            let dev = (*self.misc.get()).this_device;
            (*dev).dma_parms = core::ptr::null_mut();
            bindings::misc_deregister(self.misc.get());
        }
    }
}

struct FopsTable<T: MiscDevice>(PhantomData<T>);

impl<T: MiscDevice> FopsTable<T> {
    const FOPS: bindings::file_operations = bindings::file_operations {
        open: Some(Self::open),
        release: Some(Self::release),
        unlocked_ioctl: Some(Self::ioctl),
        // SAFETY: all other members may be NULL.
        ..unsafe { core::mem::MaybeUninit::zeroed().assume_init() }
    };

    /// # Safety
    ///
    /// Called by `misc_open` for a file of a [`Registration<T>`], with `private_data` set to
    /// its `miscdevice`.
    unsafe extern "C" fn open(
        _inode: *mut bindings::inode,
        file: *mut bindings::file,
    ) -> crate::ffi::c_int {
        // SAFETY: misc_open stored the `miscdevice` pointer, which is the first field of a
        // `#[repr(C)]` `Registration<T>`. It outlives every open file: open files hold the
        // owning module (the fops' `owner`), whose exit is what drops the registration; a
        // built-in one is never dropped. Hence `'static` for as long as files can see it.
        let reg: &'static Registration<T> = unsafe { &*(*file).private_data.cast() };
        let init = try_pin_init!(OpenFile::<T> {
            reg,
            open <- T::open(reg),
        }? Error);
        match KBox::try_pin_init(init, GFP_KERNEL) {
            Ok(of) => {
                // SAFETY: the box is never moved out of: `release` rebuilds and drops it in
                // place, so pinning holds.
                let raw = KBox::into_raw(unsafe { Pin::into_inner_unchecked(of) });
                // SAFETY: `file` is valid during `open`; from now on `private_data` is ours.
                unsafe { (*file).private_data = raw.cast() };
                0
            }
            Err(e) => e.to_errno(),
        }
    }

    /// # Safety
    ///
    /// Called by the VFS once, after the last use of a file `open` succeeded on.
    unsafe extern "C" fn release(
        _inode: *mut bindings::inode,
        file: *mut bindings::file,
    ) -> crate::ffi::c_int {
        // SAFETY: `open` stored a leaked `KBox<OpenFile<T>>` here, and nothing uses it after
        // release; dropping it in place keeps it pinned until it is gone.
        drop(unsafe { KBox::from_raw((*file).private_data.cast::<OpenFile<T>>()) });
        0
    }

    /// # Safety
    ///
    /// Called by the VFS for a file `open` succeeded on, before its `release`.
    unsafe extern "C" fn ioctl(
        file: *mut bindings::file,
        cmd: crate::ffi::c_uint,
        arg: crate::ffi::c_ulong,
    ) -> crate::ffi::c_long {
        // SAFETY: `open` stored a `KBox<OpenFile<T>>`, alive until `release`, which the VFS
        // does not call while an ioctl runs.
        let of: &OpenFile<T> = unsafe { &*(*file).private_data.cast() };
        match T::ioctl(of.reg, &of.open, cmd, arg as usize) {
            Ok(v) => v as crate::ffi::c_long,
            Err(e) => e.to_errno() as crate::ffi::c_long,
        }
    }
}
