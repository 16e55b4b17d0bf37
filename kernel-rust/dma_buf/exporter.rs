// SPDX-License-Identifier: GPL-2.0

//! The exporter side: a [`PageBuffer`] owns its pages and implements the parts of
//! `struct dma_buf_ops` every page-backed exporter needs in the same way: attach (each
//! attachment gets its own copy of the scatter-gather table), map/unmap for a device, a
//! refcounted kernel mapping (vmap), mmap, and release. The exporter's policy (CPU access
//! brackets) comes from an [`Exporter`] implementation, which never handles a raw pointer.

use super::*;
use crate::error::VTABLE_DEFAULT_ERROR;

/// One device's view of a buffer.
///
/// # Invariants
///
/// `dev` is the attachment's device, valid from attach until detach.
struct AttachmentRec {
    dev: *mut bindings::device,
    table: KBox<SgTable>,
    mapped: Option<DataDirection>,
}

/// Mutable state of a [`PageBuffer`], under its mutex.
struct State {
    /// Attachment records; each also sits in its `dma_buf_attachment::priv`.
    attachments: KVec<*mut AttachmentRec>,
    /// All references on the kernel mapping: the core's (at most one, see `dma_buf_vmap`)
    /// plus the exporter's own.
    vmap_count: usize,
    /// The exporter's share of `vmap_count`, so it can never drop a reference the core holds.
    exporter_refs: usize,
    vaddr: Option<NonNull<c_void>>,
}

// SAFETY: the attachment records are owned by their attachments and only touched under the
// buffer mutex; `vaddr` is a kernel address, valid from any thread while mapped.
unsafe impl Send for State {}

/// A mapped kernel address of the whole buffer, as `vmap` made it.
#[derive(Clone, Copy, Debug)]
pub struct KernelMapping {
    /// The address, valid while the mapping's reference is held.
    pub addr: NonNull<c_void>,
    /// Whether this call created the mapping (rather than reusing the one in place).
    pub created: bool,
}

/// Policy an exporter adds to a [`PageBuffer`]. The CPU-access callbacks are `dma_buf_ops`
/// members an exporter may leave out (the core then skips them, as for a C exporter without
/// them); the others are hooks on the generic operations [`PageBuffer`] provides.
#[vtable]
pub trait Exporter: Sized + Send + Sync + 'static {
    /// `DMA_BUF_IOCTL_SYNC` start, or `dma_buf_begin_cpu_access` from a kernel importer.
    fn begin_cpu_access(_buf: &PageBuffer<Self>, _dir: DataDirection) -> Result {
        crate::build_error!(VTABLE_DEFAULT_ERROR)
    }
    /// The matching end.
    fn end_cpu_access(_buf: &PageBuffer<Self>, _dir: DataDirection) -> Result {
        crate::build_error!(VTABLE_DEFAULT_ERROR)
    }
    /// Called after a kernel mapping reference was taken; `created` if it made the mapping.
    fn vmapped(_buf: &PageBuffer<Self>, _created: bool) {}
    /// Called after a reference was dropped; `destroyed` if it was the last one.
    fn vunmapped(_buf: &PageBuffer<Self>, _destroyed: bool) {}
    /// Called when an exported buffer is released, before its pages are freed (never for a
    /// buffer whose export failed). `vmaps_left`: kernel-mapping references the dma-buf core
    /// never dropped, which the abstraction has just warned about and unmapped.
    fn released(_buf: &PageBuffer<Self>, _vmaps_left: usize) {}
    /// Takes the pages of a buffer being freed, once nothing maps them any more (for a
    /// page pool); by default they are freed.
    fn recycle(&self, chunks: KVVec<Pages>) {
        drop(chunks);
    }
}

/// A page-backed buffer exported as a dma-buf.
///
/// # Invariants
///
/// - `len` is non-zero and equals the total size of `chunks`, which this object owns.
/// - `mapped` is the number of attachments in `state` whose table is currently DMA-mapped.
/// - Once `exported` is set, the dma-buf core owns this object (through the dma-buf's
///   `priv`) and frees it in `release`; before that the exporting function does. It is
///   pinned: it never moves from the allocation `export` made.
#[pin_data(PinnedDrop)]
pub struct PageBuffer<T: Exporter> {
    chunks: KVVec<Pages>,
    len: usize,
    /// Set once `dma_buf_export` succeeded: only then does [`Exporter::released`] run.
    exported: core::sync::atomic::AtomicBool,
    /// Mapped attachments, kept under the mutex; read without it so a CPU-access bracket on a
    /// buffer no device has mapped (the common case) takes no lock.
    mapped: core::sync::atomic::AtomicUsize,
    /// In the buffer's own allocation: one allocation a buffer fewer than a boxed mutex.
    #[pin]
    state: Mutex<State>,
    data: T,
}

impl<T: Exporter> PageBuffer<T> {
    /// The exporter's own data.
    pub fn data(&self) -> &T {
        &self.data
    }

    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no pages (never true for an exported buffer).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Syncs every mapped attachment for CPU access (`for_cpu`) or back for the device.
    pub fn sync_attachments(&self, dir: DataDirection, for_cpu: bool) {
        // A device mapping that races with this bracket is synced by `dma_map_sgtable` itself.
        if self.mapped.load(core::sync::atomic::Ordering::Acquire) == 0 {
            return;
        }
        let state = self.state.lock();
        for &a in state.attachments.iter() {
            // SAFETY: records in the list are live until detach removes them, which needs the
            // lock we hold.
            let rec = unsafe { &mut *a };
            if rec.mapped.is_some() {
                let t = rec.table.as_raw();
                // SAFETY: `rec.dev` is valid while attached; the table was mapped for it.
                unsafe {
                    if for_cpu {
                        bindings::dma_sync_sgtable_for_cpu(rec.dev, t, dir.into());
                    } else {
                        bindings::dma_sync_sgtable_for_device(rec.dev, t, dir.into());
                    }
                }
            }
        }
    }

    /// Takes a kernel-mapping reference owned by the exporter (ION mode maps on every
    /// START), creating the mapping if none exists; nested references share it. Dropped with
    /// [`PageBuffer::unmap_kernel`], or at release.
    pub fn map_kernel(&self) -> Result<KernelMapping> {
        self.vmap_ref(true)
    }

    /// Drops one exporter-owned reference; `false` when the exporter holds none, so no
    /// sequence of calls can drop a reference the dma-buf core (an importer) still uses.
    pub fn unmap_kernel(&self) -> bool {
        self.vunmap_ref(true)
    }

    fn vmap_ref(&self, exporter: bool) -> Result<KernelMapping> {
        let m = self.vmap_locked(exporter)?;
        T::vmapped(self, m.created);
        Ok(m)
    }

    fn vmap_locked(&self, exporter: bool) -> Result<KernelMapping> {
        let mut state = self.state.lock();
        if let Some(addr) = state.vaddr {
            state.vmap_count += 1;
            state.exporter_refs += usize::from(exporter);
            return Ok(KernelMapping {
                addr,
                created: false,
            });
        }
        let total: usize = self.chunks.iter().map(Pages::count).sum();
        let mut pages = KVVec::with_capacity(total, GFP_KERNEL)?;
        for c in self.chunks.iter() {
            for i in 0..c.count() {
                pages.push(c.nth(i), GFP_KERNEL)?;
            }
        }
        let n = u32::try_from(total).map_err(|_| ENOMEM)?;
        // SAFETY: `pages` holds `n` valid pages owned by this buffer, which outlive the
        // mapping: it is torn down at the last vunmap or at release.
        let addr = unsafe { bindings::vmap_kernel(pages.as_mut_ptr(), n) };
        let addr = NonNull::new(addr).ok_or(ENOMEM)?;
        state.vaddr = Some(addr);
        state.vmap_count = 1;
        state.exporter_refs = usize::from(exporter);
        Ok(KernelMapping {
            addr,
            created: true,
        })
    }

    /// Drops one reference; the last one unmaps. An unbalanced call is refused (with a
    /// warning for the core's) instead of unmapping a mapping someone still uses.
    fn vunmap_ref(&self, exporter: bool) -> bool {
        let mut state = self.state.lock();
        if exporter {
            if state.exporter_refs == 0 {
                return false;
            }
            state.exporter_refs -= 1;
        } else if state.vmap_count <= state.exporter_refs {
            pr_warn!("dma-buf: vunmap without a matching vmap ignored\n");
            return false;
        }
        let destroyed = state.vmap_count == 1;
        state.vmap_count -= 1;
        if destroyed {
            if let Some(addr) = state.vaddr.take() {
                // SAFETY: `addr` came from `vmap` and this was its last reference.
                unsafe { bindings::vunmap(addr.as_ptr()) };
            }
        }
        drop(state);
        T::vunmapped(self, destroyed);
        true
    }

    /// Maps the pages covering the VMA, from its `vm_pgoff`, contiguous runs in one call each.
    ///
    /// Bounds are checked against the buffer size, `vm_pgoff` included, without overflow; the
    /// mapping is made `VM_DONTEXPAND` so mremap cannot grow it past the buffer. Only shared
    /// mappings: a private one is copy-on-write, so CPU writes would land in anonymous copies
    /// no device sees, and `remap_pfn_range` on it succeeds or fails with the physical layout
    /// (it must cover the whole VMA in one call), so it is refused outright.
    pub fn mmap(&self, vma: &mut Vma) -> Result {
        if !vma.is_shared() {
            return Err(EINVAL);
        }
        let pages = vma.pages();
        let buf_pages = self.len >> bindings::PAGE_SHIFT;
        let end = vma.pgoff().checked_add(pages).ok_or(EINVAL)?;
        if pages == 0 || end > buf_pages {
            return Err(EINVAL);
        }
        vma.set_flags((bindings::VM_DONTEXPAND | bindings::VM_DONTDUMP) as bindings::vm_flags_t);
        let mut skip = vma.pgoff();
        let mut addr = vma.start();
        let vm_end = vma.end();
        for c in self.chunks.iter() {
            if addr >= vm_end {
                break;
            }
            if skip >= c.count() {
                skip -= c.count();
                continue;
            }
            let len = ((c.count() - skip) << bindings::PAGE_SHIFT).min(vm_end - addr);
            vma.remap_pfn_range(addr, c.pfn() + skip, len)?;
            addr += len;
            skip = 0;
        }
        Ok(())
    }

    fn attach(&self, dev: *mut bindings::device) -> Result<*mut AttachmentRec> {
        // SAFETY: the chunks live as long as this buffer, and C detaches every attachment
        // before it releases the buffer, so they outlive the table.
        let table = unsafe { SgTable::new(&self.chunks)? };
        let rec = KBox::into_raw(KBox::new(
            AttachmentRec {
                dev,
                table,
                mapped: None,
            },
            GFP_KERNEL,
        )?);
        let mut state = self.state.lock();
        if let Err(e) = state.attachments.push(rec, GFP_KERNEL) {
            drop(state);
            // SAFETY: `rec` came from `KBox::into_raw` above and was never shared.
            drop(unsafe { KBox::from_raw(rec) });
            return Err(e.into());
        }
        Ok(rec)
    }

    fn detach(&self, rec: *mut AttachmentRec) {
        let mut state = self.state.lock();
        let list = &mut state.attachments;
        if let Some(i) = list.iter().position(|&a| a == rec) {
            compat::kvec_swap_remove(list, i);
        }
        drop(state);
        // SAFETY: `rec` was created by `attach` via `KBox::into_raw` and is no longer listed.
        drop(unsafe { KBox::from_raw(rec) });
    }
}

#[pinned_drop]
impl<T: Exporter> PinnedDrop for PageBuffer<T> {
    fn drop(self: Pin<&mut Self>) {
        // References the exporter never dropped (an ION-mode START without END) are ours.
        let mut state = self.state.lock();
        while state.exporter_refs > 0 {
            drop(state);
            self.vunmap_ref(true);
            state = self.state.lock();
        }
        let left = state.vmap_count;
        if left != 0 {
            pr_warn!("dma-buf: buffer released with {left} kernel mapping reference(s)\n");
            if let Some(addr) = state.vaddr.take() {
                // SAFETY: `addr` came from `vmap`; nobody can use it after release.
                unsafe { bindings::vunmap(addr.as_ptr()) };
            }
            state.vmap_count = 0;
        }
        drop(state);
        if self.exported.load(core::sync::atomic::Ordering::Acquire) {
            T::released(&self, left);
        }
        // SAFETY: nothing structurally pinned (`state`) is moved through this reference; only
        // `chunks` is taken out.
        let this = unsafe { self.get_unchecked_mut() };
        let chunks = core::mem::replace(&mut this.chunks, KVVec::new());
        this.data.recycle(chunks);
    }
}

/// A `struct vm_area_struct` being set up by an mmap call.
///
/// # Invariants
///
/// `vma` is valid for the duration of the mmap callback this object lives in.
pub struct Vma {
    vma: *mut bindings::vm_area_struct,
}

impl Vma {
    /// `VM_SHARED`: a `MAP_SHARED` mapping.
    pub fn is_shared(&self) -> bool {
        // SAFETY: valid by the type invariant; `vm_flags` is the readable view of the flags.
        let flags = unsafe { (*self.vma).__bindgen_anon_2.vm_flags };
        flags & bindings::VM_SHARED as bindings::vm_flags_t != 0
    }

    fn start(&self) -> usize {
        // SAFETY: valid by the type invariant.
        unsafe { (*self.vma).__bindgen_anon_1.__bindgen_anon_1.vm_start as usize }
    }

    fn end(&self) -> usize {
        // SAFETY: valid by the type invariant.
        unsafe { (*self.vma).__bindgen_anon_1.__bindgen_anon_1.vm_end as usize }
    }

    /// Length in pages.
    pub fn pages(&self) -> usize {
        (self.end() - self.start()) >> bindings::PAGE_SHIFT
    }

    /// Offset into the buffer, in pages.
    pub fn pgoff(&self) -> usize {
        // SAFETY: valid by the type invariant.
        unsafe { (*self.vma).vm_pgoff as usize }
    }

    fn set_flags(&mut self, flags: bindings::vm_flags_t) {
        // SAFETY: valid by the type invariant; mmap callbacks may set VMA flags.
        unsafe { bindings::vm_flags_set(self.vma, flags) };
    }

    fn remap_pfn_range(&mut self, addr: usize, pfn: usize, len: usize) -> Result {
        // SAFETY: valid by the type invariant; `addr..addr+len` lies inside the VMA and the
        // caller maps pages of a live buffer, which the VMA's file reference keeps alive.
        to_result(unsafe {
            bindings::remap_pfn_range(
                self.vma,
                addr as _,
                pfn as _,
                len as _,
                (*self.vma).vm_page_prot,
            )
        })
    }
}

/// A newly exported dma-buf, to be handed back to the dma-buf heap core.
pub struct Exported(pub(crate) NonNull<bindings::dma_buf>);

/// Exports `chunks` (covering `len` bytes) with policy `data` as a dma-buf named `name`,
/// owned by `owner`: the buffer keeps that module loaded until it is released.
///
/// `len` must equal the chunks' total size (and not be zero), or this fails with `EINVAL`:
/// importers read `len` bytes of every mapping.
pub fn export<T: Exporter>(
    name: &'static CStr,
    owner: &'static ThisModule,
    chunks: KVVec<Pages>,
    len: usize,
    fd_flags: u32,
    data: T,
) -> Result<Exported> {
    if len == 0 || chunks.iter().map(Pages::size).sum::<usize>() != len {
        return Err(EINVAL);
    }
    let buf = KBox::pin_init(
        pin_init!(PageBuffer {
            chunks,
            len,
            exported: core::sync::atomic::AtomicBool::new(false),
            mapped: core::sync::atomic::AtomicUsize::new(0),
            state <- crate::new_mutex!(
                State {
                    attachments: KVec::new(),
                    vmap_count: 0,
                    exporter_refs: 0,
                    vaddr: None,
                },
                "PageBuffer::state"
            ),
            data,
        }),
        GFP_KERNEL,
    )?;
    // SAFETY: the buffer is never moved out of this allocation: `release` (or the error path
    // below) frees it in place through `KBox::from_raw`.
    let raw = KBox::into_raw(unsafe { Pin::into_inner_unchecked(buf) });
    // SAFETY: an all-zero `dma_buf_export_info` is valid; the fields that matter are set below
    // (this is what DEFINE_DMA_BUF_EXPORT_INFO does).
    let mut info: bindings::dma_buf_export_info = unsafe { core::mem::zeroed() };
    info.owner = owner.as_ptr();
    info.exp_name = compat::c_str_ptr(name);
    info.ops = OpsTable::<T>::build();
    info.size = len;
    info.flags = fd_flags as _;
    info.priv_ = raw.cast();
    // SAFETY: `info` is fully initialised and `priv_` points to a live `PageBuffer<T>`.
    let dmabuf = unsafe { bindings::dma_buf_export(&info) };
    match crate::error::from_err_ptr(dmabuf) {
        Ok(p) => {
            // SAFETY: the buffer is live: the core holds it and nothing can release it before
            // the caller installs the fd.
            unsafe {
                (*raw)
                    .exported
                    .store(true, core::sync::atomic::Ordering::Release)
            };
            Ok(Exported(NonNull::new(p).ok_or(ENOMEM)?))
        }
        Err(e) => {
            // SAFETY: the core does not call `release` when export fails, so we still own it.
            drop(unsafe { KBox::from_raw(raw) });
            Err(e)
        }
    }
}

struct OpsTable<T: Exporter>(PhantomData<T>);

impl<T: Exporter> OpsTable<T> {
    const OPS: bindings::dma_buf_ops = bindings::dma_buf_ops {
        attach: Some(Self::attach),
        detach: Some(Self::detach),
        pin: None,
        unpin: None,
        map_dma_buf: Some(Self::map_dma_buf),
        unmap_dma_buf: Some(Self::unmap_dma_buf),
        release: Some(Self::release),
        begin_cpu_access: if T::HAS_BEGIN_CPU_ACCESS {
            Some(Self::begin_cpu_access)
        } else {
            None
        },
        end_cpu_access: if T::HAS_END_CPU_ACCESS {
            Some(Self::end_cpu_access)
        } else {
            None
        },
        mmap: Some(Self::mmap),
        vmap: Some(Self::vmap),
        vunmap: Some(Self::vunmap),
        // Whatever else a kernel's `dma_buf_ops` has is off (6.12's `cache_sgt_mapping`,
        // gone in 7.x; the rarely used callbacks above are listed for the reader).
        // SAFETY: all-zero is a valid `dma_buf_ops`: `None` callbacks and `false` flags.
        ..unsafe { core::mem::zeroed() }
    };

    const fn build() -> &'static bindings::dma_buf_ops {
        &Self::OPS
    }

    /// # Safety
    ///
    /// `dmabuf` must be a dma-buf exported by [`export`] with this `T` and not yet released.
    unsafe fn buffer<'a>(dmabuf: *mut bindings::dma_buf) -> &'a PageBuffer<T> {
        // SAFETY: per the function's contract `priv_` is our `PageBuffer<T>`.
        unsafe { &*(*dmabuf).priv_.cast::<PageBuffer<T>>() }
    }

    /// # Safety
    ///
    /// Called by the dma-buf core with a live buffer of ours and a new attachment.
    unsafe extern "C" fn attach(
        dmabuf: *mut bindings::dma_buf,
        att: *mut bindings::dma_buf_attachment,
    ) -> crate::ffi::c_int {
        from_result(|| {
            // SAFETY: the core passes our buffer and a valid attachment.
            let buf = unsafe { Self::buffer(dmabuf) };
            // SAFETY: `att` is valid for the duration of the call.
            let rec = buf.attach(unsafe { (*att).dev })?;
            // SAFETY: `att` is valid; `priv_` is ours to use until detach.
            unsafe { (*att).priv_ = rec.cast() };
            Ok(0)
        })
    }

    /// # Safety
    ///
    /// Called by the dma-buf core with an attachment made by [`Self::attach`].
    unsafe extern "C" fn detach(
        dmabuf: *mut bindings::dma_buf,
        att: *mut bindings::dma_buf_attachment,
    ) {
        // SAFETY: the core passes our buffer and the attachment `attach` set up.
        unsafe { Self::buffer(dmabuf).detach((*att).priv_.cast()) };
    }

    /// # Safety
    ///
    /// Called by the dma-buf core, with the reservation lock held, for one of our attachments.
    unsafe extern "C" fn map_dma_buf(
        att: *mut bindings::dma_buf_attachment,
        dir: bindings::dma_data_direction,
    ) -> *mut bindings::sg_table {
        // SAFETY: `att` is valid and its `dmabuf` is ours.
        let buf = unsafe { Self::buffer((*att).dmabuf) };
        let r = (|| -> Result<*mut bindings::sg_table> {
            let dir = super::direction(dir)?;
            let _state = buf.state.lock();
            // SAFETY: `priv_` is the record `attach` made; the lock serialises its updates.
            let rec = unsafe { &mut *(*att).priv_.cast::<AttachmentRec>() };
            if rec.mapped.is_some() {
                return Err(EBUSY);
            }
            let t = rec.table.as_raw();
            // SAFETY: `rec.dev` is the attached device and `t` a valid table of our pages.
            to_result(unsafe { bindings::dma_map_sgtable(rec.dev, t, dir.into(), 0) })?;
            rec.mapped = Some(dir);
            buf.mapped
                .fetch_add(1, core::sync::atomic::Ordering::Release);
            Ok(t)
        })();
        r.unwrap_or_else(|e| e.to_ptr())
    }

    /// # Safety
    ///
    /// Called by the dma-buf core for a table [`Self::map_dma_buf`] returned.
    unsafe extern "C" fn unmap_dma_buf(
        att: *mut bindings::dma_buf_attachment,
        table: *mut bindings::sg_table,
        dir: bindings::dma_data_direction,
    ) {
        // SAFETY: `att` is valid and its `dmabuf` is ours.
        let buf = unsafe { Self::buffer((*att).dmabuf) };
        let _state = buf.state.lock();
        // SAFETY: `priv_` is the record `attach` made; the lock serialises its updates.
        let rec = unsafe { &mut *(*att).priv_.cast::<AttachmentRec>() };
        if rec.mapped.take().is_some() {
            buf.mapped
                .fetch_sub(1, core::sync::atomic::Ordering::Release);
            // SAFETY: the table was mapped for this device by `map_dma_buf`.
            unsafe { bindings::dma_unmap_sgtable(rec.dev, table, dir, 0) };
        }
    }

    /// # Safety
    ///
    /// Called once by the dma-buf core when the last reference is gone.
    unsafe extern "C" fn release(dmabuf: *mut bindings::dma_buf) {
        // SAFETY: `priv_` came from `KBox::into_raw` in `export`; this is the last use.
        drop(unsafe { KBox::from_raw((*dmabuf).priv_.cast::<PageBuffer<T>>()) });
    }

    /// Runs the exporter's `begin_cpu_access` or `end_cpu_access` hook.
    ///
    /// # Safety
    ///
    /// `dmabuf` must be a live buffer exported by [`export`] with this `T`.
    unsafe fn cpu_access(
        dmabuf: *mut bindings::dma_buf,
        dir: bindings::dma_data_direction,
        hook: fn(&PageBuffer<T>, DataDirection) -> Result,
    ) -> crate::ffi::c_int {
        from_result(|| {
            // SAFETY: live and ours, by the function's contract.
            let buf = unsafe { Self::buffer(dmabuf) };
            hook(buf, super::direction(dir)?)?;
            Ok(0)
        })
    }

    /// # Safety
    ///
    /// Called by the dma-buf core with a live buffer of ours.
    unsafe extern "C" fn begin_cpu_access(
        dmabuf: *mut bindings::dma_buf,
        dir: bindings::dma_data_direction,
    ) -> crate::ffi::c_int {
        // SAFETY: the core passes our live buffer.
        unsafe { Self::cpu_access(dmabuf, dir, T::begin_cpu_access) }
    }

    /// # Safety
    ///
    /// Called by the dma-buf core with a live buffer of ours.
    unsafe extern "C" fn end_cpu_access(
        dmabuf: *mut bindings::dma_buf,
        dir: bindings::dma_data_direction,
    ) -> crate::ffi::c_int {
        // SAFETY: the core passes our live buffer.
        unsafe { Self::cpu_access(dmabuf, dir, T::end_cpu_access) }
    }

    /// # Safety
    ///
    /// Called by the dma-buf core with a live buffer of ours and a VMA being set up.
    unsafe extern "C" fn mmap(
        dmabuf: *mut bindings::dma_buf,
        vma: *mut bindings::vm_area_struct,
    ) -> crate::ffi::c_int {
        from_result(|| {
            // SAFETY: the core passes our live buffer.
            let buf = unsafe { Self::buffer(dmabuf) };
            // INVARIANT: `vma` is valid for this callback, which `Vma` does not outlive.
            buf.mmap(&mut Vma { vma })?;
            Ok(0)
        })
    }

    /// # Safety
    ///
    /// Called by the dma-buf core, reservation lock held, with a live buffer and a map.
    unsafe extern "C" fn vmap(
        dmabuf: *mut bindings::dma_buf,
        map: *mut bindings::iosys_map,
    ) -> crate::ffi::c_int {
        from_result(|| {
            // SAFETY: the core passes our live buffer.
            let buf = unsafe { Self::buffer(dmabuf) };
            let m = buf.vmap_ref(false)?;
            // SAFETY: `map` is valid; this is `iosys_map_set_vaddr`.
            unsafe {
                (*map).__bindgen_anon_1.vaddr = m.addr.as_ptr();
                (*map).is_iomem = false;
            }
            Ok(0)
        })
    }

    /// # Safety
    ///
    /// Called by the dma-buf core, reservation lock held, for a map `vmap` filled.
    unsafe extern "C" fn vunmap(dmabuf: *mut bindings::dma_buf, map: *mut bindings::iosys_map) {
        // SAFETY: the core passes our live buffer.
        unsafe { Self::buffer(dmabuf) }.vunmap_ref(false);
        // SAFETY: `map` is valid; this is `iosys_map_clear`.
        unsafe {
            (*map).__bindgen_anon_1.vaddr = core::ptr::null_mut();
            (*map).is_iomem = false;
        }
    }
}
