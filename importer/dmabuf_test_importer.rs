// SPDX-License-Identifier: GPL-2.0

//! `/dev/dmabuf_test_importer`: a kernel-side dma-buf importer for tests.
//!
//! User space cannot call `dma_buf_vmap`, walk a buffer page by page or attach it to a
//! device; this misc device does it on request, for a dma-buf fd from any exporter. The
//! ioctls and their argument block are defined once, in `dmabuf_test_importer_uapi.rs`.

use core::{
    convert::Infallible,
    fmt,
    sync::atomic::{
        AtomicBool, AtomicU64, AtomicUsize,
        Ordering::{Acquire, Relaxed, Release},
    },
};
use kernel::{
    c_str,
    debugfs::{Reader, Scope, Writer},
    device::Device,
    dma_buf::{Bytes, DataDirection, DmaBufRef, DmaParams, MappedAttachment, Vmapped},
    fs::File,
    miscdevice::{MiscDevice, MiscDeviceOptions, MiscDeviceRegistration},
    new_mutex,
    prelude::*,
    rig::compat::{self, ARef, AsBytes, FromBytes},
    sync::{Arc, Mutex},
    uaccess::{UserSliceReader, UserSliceWriter},
};

// Shared with user space, which uses items the kernel side does not.
#[allow(dead_code, unreachable_pub)]
mod uapi {
    use kernel::ioctl::_IOWR;
    include!("dmabuf_test_importer_uapi.rs");
}
use uapi::*;

kernel::rig_module! {
    type: ImporterModule,
    name: "dmabuf_test_importer",
    description: "dma-buf test importer",
    imports_ns: ["DMA_BUF"],
}

/// A vmap kept alive across calls (and past the close of its fd), by handle.
/// What a handle keeps alive: a vmap, or an attachment mapped for the importer's device.
enum Held {
    Vmap(Vmapped),
    /// Unmapped, detached and unregistered on drop.
    Attachment(AttachHold),
}

/// An attachment mapped for the importer's device, registered in `Importer::attached` from
/// before it is mapped until after it is unmapped: while registered, no other hold of the
/// same buffer, from any open file, can map the same pages for the device a second time.
struct AttachHold {
    imp: Arc<Importer>,
    id: usize,
    mapped: Option<MappedAttachment>,
}

impl Drop for AttachHold {
    fn drop(&mut self) {
        // Unmapped first, then the buffer is free to be attached again.
        drop(self.mapped.take());
        let mut attached = self.imp.attached.lock();
        if let Some(i) = attached.iter().position(|&id| id == self.id) {
            compat::kvec_swap_remove(&mut attached, i);
        }
    }
}

struct Hold {
    handle: u64,
    held: Held,
}

/// What all open files of the device share.
#[pin_data]
struct Importer {
    /// Taken only by the `lock_inversion` fault, in both orders with a file's holds.
    #[pin]
    order: Mutex<()>,
    next_handle: AtomicU64,
    /// The buffers with an attachment hold (`DmaBufRef::id`), across all open files.
    #[pin]
    attached: Mutex<KVec<usize>>,
    /// Set once the device's DMA set-up is done; until then it cannot be opened.
    ready: AtomicBool,
}

/// An open file's holds: released with the file, so a test process that dies between HOLD
/// and RELEASE leaks nothing past its exit.
#[pin_data]
struct Holds {
    #[pin]
    list: Mutex<KVec<Hold>>,
}

/// An open file of the device.
#[pin_data]
struct OpenFile {
    imp: Arc<Importer>,
    /// The device buffers are attached and mapped for.
    dev: ARef<Device>,
    #[pin]
    holds: Holds,
}

/// The device: its registration and what its open files share.
#[pin_data]
struct ImporterDevice {
    imp: Arc<Importer>,
    #[pin]
    reg: MiscDeviceRegistration<OpenFile>,
}

/// The fault knob: an index into `FAULTS` (0 is "none"); see the uapi file.
struct Faults(AtomicUsize);

static FAULT: Faults = Faults(AtomicUsize::new(0));

impl Faults {
    fn is(&self, name: &str) -> bool {
        FAULTS.get(self.0.load(Relaxed)) == Some(&name)
    }
}

impl Writer for Faults {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = FAULTS.get(self.0.load(Relaxed)).unwrap_or(&FAULT_NONE);
        writeln!(f, "{}", name)
    }
}

impl Reader for Faults {
    fn read_from_slice(&self, reader: &mut UserSliceReader) -> Result {
        let mut data = [0u8; 64];
        let n = reader.len();
        if n > data.len() {
            return Err(EINVAL);
        }
        reader.read_slice(&mut data[..n])?;
        let name = data[..n].strip_suffix(b"\n").unwrap_or(&data[..n]);
        let (i, f) = FAULTS
            .iter()
            .enumerate()
            .find(|(_, f)| f.as_bytes() == name)
            .ok_or(EINVAL)?;
        if i != 0 {
            pr_warn!("fault knob on: {}\n", f);
        }
        self.0.store(i, Relaxed);
        Ok(())
    }
}

/// Most holds one open file keeps at a time (each pins a buffer).
const MAX_HOLDS: usize = 4096;

/// Rejects argument blocks with an unknown operation or a fill that is not a byte.
fn validate(args: &ImporterArgs) -> Result {
    if !matches!(args.op, OP_CHECKSUM | OP_FILL | OP_NONE) || args.fill > 0xff {
        return Err(EINVAL);
    }
    Ok(())
}

/// Checksums (FNV-1a 64, as user space computes it) and optionally fills `b`.
fn checksum_and_fill(b: &Bytes<'_>, h: u64, args: &ImporterArgs) -> u64 {
    if args.op == OP_NONE {
        return h;
    }
    let mut h = h;
    b.for_each(|x| h = fnv1a(h, x));
    if args.op == OP_FILL {
        b.fill(args.fill as u8);
    }
    h
}

impl Importer {
    fn vmap(&self, holds: &Holds, args: &mut ImporterArgs) -> Result {
        self.inject_faults(holds, args)?;
        // Taken before the vmap so that only a failing vmap leaks it (`error_path_leak`).
        let extra = if FAULT.is(FAULT_ERROR_PATH_LEAK) {
            Some(DmaBufRef::from_fd(args.fd)?)
        } else {
            None
        };
        let m = match DmaBufRef::from_fd(args.fd)?.vmap() {
            Ok(m) => m,
            Err(e) => {
                core::mem::forget(extra);
                return Err(e);
            }
        };
        drop(extra);
        let bytes = m.bytes();
        if FAULT.is(FAULT_SHORT_FILL) && args.op == OP_FILL {
            let read_only = ImporterArgs {
                op: OP_CHECKSUM,
                ..*args
            };
            args.checksum = checksum_and_fill(&bytes, FNV_OFFSET, &read_only);
            bytes
                .prefix(bytes.len().saturating_sub(1))
                .fill(args.fill as u8);
        } else {
            args.checksum = checksum_and_fill(&bytes, FNV_OFFSET, args);
        }
        args.pages = bytes.len() as u64;
        if FAULT.is(FAULT_LEAK_VMAP) {
            // Deliberately never vunmapped (see `FAULT_LEAK_VMAP`).
            core::mem::forget(m);
        }
        Ok(())
    }

    /// The misbehaviour a fault knob asks `VMAP` for, before it does its real work.
    fn inject_faults(&self, holds: &Holds, args: &ImporterArgs) -> Result {
        if FAULT.is(FAULT_LEAK_REF) {
            core::mem::forget(DmaBufRef::from_fd(args.fd)?);
        }
        if FAULT.is(FAULT_LEAK_MEMORY) {
            core::mem::forget(KBox::new([0x6bu8; 128], GFP_KERNEL)?);
        }
        if FAULT.is(FAULT_LOCK_INVERSION) {
            {
                let _h = holds.list.lock();
                let _o = self.order.lock();
            }
            let _o = self.order.lock();
            let _h = holds.list.lock();
        }
        Ok(())
    }

    fn vmap_twice(&self, args: &mut ImporterArgs) -> Result {
        let a = DmaBufRef::from_fd(args.fd)?.vmap()?;
        let b = DmaBufRef::from_fd(args.fd)?.vmap()?;
        args.shared = u32::from(a.bytes().addr() == b.bytes().addr());
        // Unwind in reverse order: the inner vunmap must leave the outer mapping usable.
        drop(b);
        args.checksum = checksum_and_fill(&a.bytes(), FNV_OFFSET, args);
        Ok(())
    }

    fn kmap_walk(&self, dev: &Device, args: &mut ImporterArgs) -> Result {
        let buf = DmaBufRef::from_fd(args.fd)?;
        let mut att = buf.attach(dev)?;
        let map = att.map(DataDirection::Bidirectional)?;
        let mut h = FNV_OFFSET;
        args.pages = map.walk_pages(|b| h = checksum_and_fill(b, h, args))? as u64;
        args.checksum = h;
        Ok(())
    }

    fn attach_map(&self, dev: &Device, args: &mut ImporterArgs) -> Result {
        if !(1..=2).contains(&args.count) {
            return Err(EINVAL);
        }
        let buf = DmaBufRef::from_fd(args.fd)?;
        let mut atts = KVec::new();
        for _ in 0..args.count {
            atts.push(buf.attach(dev)?, GFP_KERNEL)?;
        }
        // All stay attached; each is mapped in turn, because two live mappings of the same
        // pages for one device overlap, which DMA-API debug rightly reports.
        let mut pages = 0;
        for att in atts.iter_mut() {
            let m = att.map(DataDirection::Bidirectional)?;
            buf.begin_cpu_access(DataDirection::Bidirectional)?;
            buf.end_cpu_access(DataDirection::Bidirectional)?;
            pages += m.walk_pages(|_| ())? as u64;
        }
        args.pages = pages;
        Ok(())
    }

    /// Makes a hold with `make` and tells user space its handle
    /// before committing it: a handle that cannot be copied out (`EFAULT`) leaves nothing
    /// held, since the caller could never release it.
    fn hold(
        &self,
        holds: &Holds,
        out: &mut UserSliceWriter,
        args: &mut ImporterArgs,
        make: impl FnOnce() -> Result<Held>,
    ) -> Result {
        let mut holds = holds.list.lock();
        if holds.len() >= MAX_HOLDS {
            return Err(ENOSPC);
        }
        // Reserved first, so the push below cannot fail once the handle is out.
        holds.reserve(1, GFP_KERNEL)?;
        let held = make()?;
        let handle = self.next_handle.fetch_add(1, Relaxed);
        args.handle = handle;
        out.write(args)?;
        holds.push(Hold { handle, held }, GFP_KERNEL)?;
        Ok(())
    }

    /// Attaches `buf` to the device and maps it, unless it already has an attachment hold
    /// (`EBUSY`): a second mapping of the same pages for one device overlaps the first, which
    /// DMA-API debug reports as a kernel WARNING user space must not be able to cause.
    fn attach_hold(imp: &Arc<Importer>, buf: DmaBufRef, dev: &Device) -> Result<AttachHold> {
        let id = buf.id();
        {
            let mut attached = imp.attached.lock();
            if attached.contains(&id) {
                return Err(EBUSY);
            }
            attached.push(id, GFP_KERNEL)?;
        }
        // Registered: dropping `hold` on an error below unregisters it again.
        let mut hold = AttachHold {
            imp: imp.clone(),
            id,
            mapped: None,
        };
        hold.mapped = Some(buf.attach_mapped(dev, DataDirection::Bidirectional)?);
        Ok(hold)
    }

    fn release(&self, holds: &Holds, args: &mut ImporterArgs) -> Result {
        let mut holds = holds.list.lock();
        let i = holds
            .iter()
            .position(|h| h.handle == args.handle)
            .ok_or(ENOENT)?;
        if let Held::Vmap(map) = &holds[i].held {
            args.checksum = checksum_and_fill(&map.bytes(), FNV_OFFSET, args);
            args.pages = map.bytes().len() as u64;
        }
        // Swap the entry to the end and shrink by rebuilding, since 6.12's KVec has no pop.
        let last = holds.len() - 1;
        holds.swap(i, last);
        let mut keep = KVec::with_capacity(last, GFP_KERNEL)?;
        let mut it = core::mem::take(&mut *holds).into_iter();
        for _ in 0..last {
            if let Some(h) = it.next() {
                keep.push(h, GFP_KERNEL)?;
            }
        }
        *holds = keep;
        // Dropping the rest of the iterator (the released hold) vunmaps or unmaps and
        // detaches, then puts the buffer.
        drop(it);
        Ok(())
    }

    /// The device reads or writes the buffer of a held attachment (`IMPORTER_DEVICE_ACCESS`).
    fn device_access(&self, holds: &Holds, args: &mut ImporterArgs) -> Result {
        let holds = holds.list.lock();
        let hold = holds
            .iter()
            .find(|h| h.handle == args.handle)
            .ok_or(ENOENT)?;
        let Held::Attachment(AttachHold {
            mapped: Some(mapped),
            ..
        }) = &hold.held
        else {
            return Err(EINVAL);
        };
        let mut h = FNV_OFFSET;
        args.pages = mapped.device_access(|b| h = checksum_and_fill(b, h, args))? as u64;
        args.checksum = h;
        Ok(())
    }

    fn cpu_access(&self, args: &mut ImporterArgs) -> Result {
        let buf = DmaBufRef::from_fd(args.fd)?;
        if args.end == 0 {
            buf.begin_cpu_access(DataDirection::Bidirectional)
        } else {
            buf.end_cpu_access(DataDirection::Bidirectional)
        }
    }
}

// SAFETY: `ImporterArgs` is `repr(C)` and made only of integers, so every bit pattern is a
// valid value.
unsafe impl FromBytes for ImporterArgs {}
// SAFETY: `ImporterArgs` is `repr(C)` integers laid out without padding (4 x u32, 3 x u64,
// 2 x u32: 48 bytes, checked below), so all its bytes are initialised.
unsafe impl AsBytes for ImporterArgs {}
kernel::static_assert!(core::mem::size_of::<ImporterArgs>() == 48);

/// Every ioctl the importer has; anything else is `ENOTTY` before the argument is read.
const IOCTLS: [u32; 9] = [
    IMPORTER_VMAP,
    IMPORTER_VMAP_TWICE,
    IMPORTER_KMAP_WALK,
    IMPORTER_ATTACH_MAP,
    IMPORTER_HOLD,
    IMPORTER_ATTACH_HOLD,
    IMPORTER_RELEASE,
    IMPORTER_CPU_ACCESS,
    IMPORTER_DEVICE_ACCESS,
];

#[vtable]
impl MiscDevice for OpenFile {
    type Ptr = Pin<KBox<Self>>;

    fn open(_file: &File, misc: &MiscDeviceRegistration<Self>) -> Result<Pin<KBox<Self>>> {
        let misc_ptr = core::ptr::from_ref(misc).cast_mut();
        // SAFETY: every registration of `OpenFile` is the `reg` field of an `ImporterDevice`
        // (`Node::new` makes each), which outlives the open call.
        let device = unsafe { &*kernel::container_of!(misc_ptr, ImporterDevice, reg) };
        if !device.imp.ready.load(Acquire) {
            return Err(EAGAIN);
        }
        KBox::pin_init(
            try_pin_init!(OpenFile {
                imp: device.imp.clone(),
                dev: ARef::from(misc.device()),
                holds <- try_pin_init!(Holds {
                    list <- new_mutex!(KVec::new(), "Holds::list"),
                }? Error),
            }? Error),
            GFP_KERNEL,
        )
    }

    fn ioctl(me: Pin<&OpenFile>, _file: &File, cmd: u32, arg: usize) -> Result<isize> {
        if !IOCTLS.contains(&cmd) {
            return Err(ENOTTY);
        }
        let size = core::mem::size_of::<ImporterArgs>();
        let (mut r, mut w) = compat::user_slice(arg, size).reader_writer();
        let mut args: ImporterArgs = r.read()?;
        validate(&args)?;
        let (imp, holds, dev) = (&me.imp, &me.holds, &*me.dev);
        match cmd {
            IMPORTER_VMAP => imp.vmap(holds, &mut args)?,
            IMPORTER_VMAP_TWICE => imp.vmap_twice(&mut args)?,
            IMPORTER_KMAP_WALK => imp.kmap_walk(dev, &mut args)?,
            IMPORTER_ATTACH_MAP => imp.attach_map(dev, &mut args)?,
            // Each copies its result out itself, before committing the hold.
            IMPORTER_HOLD => {
                let map = DmaBufRef::from_fd(args.fd)?.vmap()?;
                imp.hold(holds, &mut w, &mut args, || Ok(Held::Vmap(map)))?;
                return Ok(0);
            }
            IMPORTER_ATTACH_HOLD => {
                let buf = DmaBufRef::from_fd(args.fd)?;
                imp.hold(holds, &mut w, &mut args, || {
                    Importer::attach_hold(imp, buf, dev).map(Held::Attachment)
                })?;
                return Ok(0);
            }
            IMPORTER_RELEASE => imp.release(holds, &mut args)?,
            IMPORTER_CPU_ACCESS => imp.cpu_access(&mut args)?,
            IMPORTER_DEVICE_ACCESS => imp.device_access(holds, &mut args)?,
            _ => return Err(ENOTTY),
        }
        w.write(&args)?;
        Ok(0)
    }
}

/// One device node: its DMA parameters, dropped first, then the device. No file of the
/// device is open by then: open files keep the module loaded.
struct Node {
    _dma: Pin<KBox<DmaParams>>,
    _dev: Pin<KBox<ImporterDevice>>,
}

impl Node {
    /// Registers `/dev/NAME`, coherent or not, and opens it once its DMA set-up is done.
    fn new(name: &'static CStr, noncoherent: bool) -> Result<Self> {
        let imp = Arc::pin_init(
            try_pin_init!(Importer {
                order <- new_mutex!((), "Importer::order"),
                attached <- new_mutex!(KVec::new(), "Importer::attached"),
                next_handle: AtomicU64::new(1),
                ready: AtomicBool::new(false),
            }),
            GFP_KERNEL,
        )?;
        let dev = KBox::pin_init(
            try_pin_init!(ImporterDevice {
                imp,
                reg <- MiscDeviceRegistration::register(MiscDeviceOptions { name }),
            }),
            GFP_KERNEL,
        )?;
        let device = dev.reg.device();
        let dma = if noncoherent {
            KBox::pin_init(DmaParams::new_noncoherent(device), GFP_KERNEL)?
        } else {
            KBox::pin_init(DmaParams::new(device), GFP_KERNEL)?
        };
        // Before this no file could be opened, so nothing was mapped before the DMA set-up.
        dev.imp.ready.store(true, Release);
        let kind = if noncoherent {
            "non-coherent"
        } else {
            "coherent"
        };
        pr_info!("registered the {} device\n", kind);
        Ok(Self {
            _dma: dma,
            _dev: dev,
        })
    }
}

/// The module's state, dropped in field order at the module's exit: the debugfs knobs, then
/// the two device nodes.
struct ImporterModule {
    _files: Pin<KBox<Scope<&'static Faults>>>,
    _coherent: Node,
    _noncoherent: Option<Node>,
}

impl kernel::Module for ImporterModule {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        let coherent = Node::new(c_str!("dmabuf_test_importer"), false)?;
        let noncoherent = match Node::new(c_str!("dmabuf_test_importer_nc"), true) {
            Ok(node) => Some(node),
            Err(e) if e == ENODEV => {
                pr_info!("no non-coherent device: the kernel lacks CONFIG_ARCH_HAS_DMA_OPS\n");
                None
            }
            Err(e) => return Err(e),
        };
        // debugfs is optional: without it the fault knobs stay off.
        // The data is the static itself: moved in by value, which cannot fail.
        let files = KBox::pin_init::<Infallible>(
            Scope::dir(&FAULT, c_str!("dmabuf_test_importer"), |faults, dir| {
                dir.read_write_file(c_str!("faults"), *faults)
            }),
            GFP_KERNEL,
        )?;
        Ok(Self {
            _files: files,
            _coherent: coherent,
            _noncoherent: noncoherent,
        })
    }
}
