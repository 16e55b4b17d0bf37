// SPDX-License-Identifier: GPL-2.0

//! The importer side: a reference to any exporter's dma-buf, its kernel mapping, and device
//! attachments with their mapped scatter-gather tables, each undone on drop.

use super::*;
use core::cell::Cell;

/// A reference to a dma-buf from any exporter (importer side), dropped with `dma_buf_put`.
///
/// # Invariants
///
/// `buf` holds a reference taken by `dma_buf_get`.
pub struct DmaBufRef {
    buf: NonNull<bindings::dma_buf>,
}

// SAFETY: a dma-buf reference may be used and dropped from any thread.
unsafe impl Send for DmaBufRef {}
// SAFETY: the dma-buf functions used through `&self` do their own locking.
unsafe impl Sync for DmaBufRef {}

impl DmaBufRef {
    /// Takes a reference on the dma-buf behind file descriptor `fd` of the current task.
    pub fn from_fd(fd: i32) -> Result<Self> {
        // SAFETY: `dma_buf_get` validates the fd and returns a reference or an error pointer.
        let p = crate::error::from_err_ptr(unsafe { bindings::dma_buf_get(fd) })?;
        // INVARIANT: we own the reference `dma_buf_get` took.
        Ok(Self {
            buf: NonNull::new(p).ok_or(EINVAL)?,
        })
    }

    fn as_ptr(&self) -> *mut bindings::dma_buf {
        self.buf.as_ptr()
    }

    /// An identity for the buffer, equal for two references to the same dma-buf (two fds of
    /// one buffer included) and unique among live buffers while this reference is held.
    pub fn id(&self) -> usize {
        self.buf.as_ptr() as usize
    }

    /// Size in bytes.
    pub fn size(&self) -> usize {
        // SAFETY: the buffer is alive while we hold a reference.
        unsafe { (*self.as_ptr()).size }
    }

    /// `dma_buf_begin_cpu_access`.
    pub fn begin_cpu_access(&self, dir: DataDirection) -> Result {
        // SAFETY: the buffer is alive while we hold a reference.
        to_result(unsafe { bindings::dma_buf_begin_cpu_access(self.as_ptr(), dir.into()) })
    }

    /// `dma_buf_end_cpu_access`.
    pub fn end_cpu_access(&self, dir: DataDirection) -> Result {
        // SAFETY: the buffer is alive while we hold a reference.
        to_result(unsafe { bindings::dma_buf_end_cpu_access(self.as_ptr(), dir.into()) })
    }

    /// `dma_buf_vmap_unlocked`; the mapping keeps this reference until it is dropped.
    pub fn vmap(self) -> Result<Vmapped> {
        // SAFETY: an all-zero `iosys_map` is the cleared state.
        let mut map: bindings::iosys_map = unsafe { core::mem::zeroed() };
        // SAFETY: the buffer is alive and `map` is valid for writes.
        to_result(unsafe { bindings::dma_buf_vmap_unlocked(self.as_ptr(), &mut map) })?;
        if map.is_iomem {
            // SAFETY: `map` was filled by the successful vmap above.
            unsafe { bindings::dma_buf_vunmap_unlocked(self.as_ptr(), &mut map) };
            return Err(EINVAL);
        }
        // INVARIANT: `map` holds a system-memory mapping of the whole buffer.
        Ok(Vmapped { buf: self, map })
    }

    /// `dma_buf_attach` for `dev`.
    pub fn attach<'a>(&'a self, dev: &'a crate::device::Device) -> Result<Attachment<'a>> {
        Ok(Attachment {
            raw: RawAttachment::new(self, dev)?,
            _buf: PhantomData,
        })
    }
}

/// What every attachment owns: the attachment, a reference to its device, and its mapping
/// while it has one. Leaking it (`mem::forget` is safe) leaks, but never leaves a freed
/// device in the buffer's attachment list (the device reference goes with it) nor frees a
/// table that is still DMA-mapped (dropping the attachment unmaps first).
///
/// # Invariants
///
/// `att` was returned by `dma_buf_attach` for `buf`, which outlives it (a reference the
/// owner holds); `dev` is the attachment's device, with one reference owned by this object;
/// `mapped` is the table `att` is mapped to, and its direction, if it is mapped.
struct RawAttachment {
    buf: NonNull<bindings::dma_buf>,
    att: NonNull<bindings::dma_buf_attachment>,
    dev: NonNull<bindings::device>,
    mapped: Cell<Option<(NonNull<bindings::sg_table>, DataDirection)>>,
}

impl RawAttachment {
    fn new(buf: &DmaBufRef, dev: &crate::device::Device) -> Result<Self> {
        // SAFETY: the buffer is alive and `dev` is a valid device.
        let a = unsafe { bindings::dma_buf_attach(buf.as_ptr(), dev.as_raw()) };
        let att = NonNull::new(crate::error::from_err_ptr(a)?).ok_or(EINVAL)?;
        // SAFETY: `dev` is valid; the reference taken is dropped in `drop`.
        let dev = unsafe { bindings::get_device(dev.as_raw()) };
        // INVARIANT: attached above, one device reference taken, not mapped.
        Ok(Self {
            buf: buf.buf,
            att,
            dev: NonNull::new(dev).ok_or(EINVAL)?,
            mapped: Cell::new(None),
        })
    }

    /// `dma_buf_map_attachment_unlocked`; the caller keeps one mapping at a time.
    fn map(&self, dir: DataDirection) -> Result<NonNull<bindings::sg_table>> {
        if self.mapped.get().is_some() {
            return Err(EBUSY);
        }
        // SAFETY: `att` is a live attachment (type invariant).
        let t = unsafe { bindings::dma_buf_map_attachment_unlocked(self.att.as_ptr(), dir.into()) };
        let t = NonNull::new(crate::error::from_err_ptr(t)?).ok_or(EINVAL)?;
        self.mapped.set(Some((t, dir)));
        Ok(t)
    }

    /// Undoes [`RawAttachment::map`], if mapped.
    fn unmap(&self) {
        if let Some((table, dir)) = self.mapped.take() {
            // SAFETY: `table` came from mapping this attachment with `dir` (type invariant).
            unsafe {
                bindings::dma_buf_unmap_attachment_unlocked(
                    self.att.as_ptr(),
                    table.as_ptr(),
                    dir.into(),
                )
            };
        }
    }
}

impl Drop for RawAttachment {
    fn drop(&mut self) {
        self.unmap();
        // SAFETY: `att` came from `dma_buf_attach` on `buf`, alive (type invariant), and is
        // detached once; then the device reference `new` took is dropped.
        unsafe {
            bindings::dma_buf_detach(self.buf.as_ptr(), self.att.as_ptr());
            bindings::put_device(self.dev.as_ptr());
        }
    }
}

impl Drop for DmaBufRef {
    fn drop(&mut self) {
        // SAFETY: we own one reference (type invariant).
        unsafe { bindings::dma_buf_put(self.as_ptr()) };
    }
}

/// A kernel mapping of a whole dma-buf taken with `dma_buf_vmap_unlocked`; it owns a
/// reference to the buffer, so it stays valid after user space closed its fd.
///
/// # Invariants
///
/// `map` is a live system-memory vmap of `buf`.
pub struct Vmapped {
    buf: DmaBufRef,
    map: bindings::iosys_map,
}

// SAFETY: a vmap of a dma-buf is plain kernel memory; it and the buffer reference may be
// used and released from any thread.
unsafe impl Send for Vmapped {}
// SAFETY: shared access only reads the mapping's address and length.
unsafe impl Sync for Vmapped {}

impl Vmapped {
    /// The mapped bytes.
    pub fn bytes(&self) -> Bytes<'_> {
        // INVARIANT: the vmap covers the whole buffer and lives as long as `self`.
        Bytes {
            // SAFETY: `vaddr` is the active union member since `is_iomem` is false.
            ptr: unsafe { self.map.__bindgen_anon_1.vaddr }.cast(),
            len: self.buf.size(),
            _p: PhantomData,
        }
    }
}

impl Drop for Vmapped {
    fn drop(&mut self) {
        // SAFETY: `map` came from the vmap of `buf` (type invariant).
        unsafe { bindings::dma_buf_vunmap_unlocked(self.buf.as_ptr(), &mut self.map) };
    }
}

/// An attachment mapped for a device that lives forever, owning its buffer reference, so it
/// can be kept across calls (a device that keeps a buffer mapped while the CPU syncs it).
///
/// # Invariants
///
/// `raw` is an attachment of `buf`, mapped.
pub struct MappedAttachment {
    // Declared first: dropped (unmapped, detached) before the buffer reference.
    _raw: RawAttachment,
    _buf: DmaBufRef,
}

// SAFETY: attaching, mapping and their undoing may happen on any thread; the pointers are
// owned by this object.
unsafe impl Send for MappedAttachment {}
// SAFETY: shared references give no access to the pointers.
unsafe impl Sync for MappedAttachment {}

impl MappedAttachment {
    /// What the device sees of the buffer, one [`Bytes`] per piece, in order: its own copy
    /// when the device is not coherent ([`DmaParams::new_noncoherent`]), otherwise the
    /// buffer's pages themselves. Returns the number of bytes.
    pub fn device_access(&self, mut f: impl FnMut(&Bytes<'_>)) -> Result<usize> {
        let (table, _) = self._raw.mapped.get().ok_or(EINVAL)?;
        // SAFETY: `dev` is the attachment's device, held by `_raw` (its type invariant).
        if unsafe { noncoherent::is_installed(self._raw.dev.as_ptr()) } {
            // SAFETY: the table is mapped for that device until `self` drops.
            Ok(unsafe { noncoherent::for_each_device_segment(table.as_ptr(), f) })
        } else {
            let mut bytes = 0;
            // SAFETY: as above; a coherent device reads the pages themselves.
            unsafe {
                walk_table(table, |b| {
                    bytes += b.len();
                    f(b)
                })
            }?;
            Ok(bytes)
        }
    }
}

impl DmaBufRef {
    /// Attaches `buf` to `dev` and maps it for `dir`, keeping both until the result drops.
    pub fn attach_mapped(
        self,
        dev: &crate::device::Device,
        dir: DataDirection,
    ) -> Result<MappedAttachment> {
        // On failure `raw` drops: detached, device reference dropped.
        let raw = RawAttachment::new(&self, dev)?;
        raw.map(dir)?;
        Ok(MappedAttachment {
            _raw: raw,
            _buf: self,
        })
    }
}

/// An importer's attachment, detached on drop (unmapped first if a [`Mapping`] of it was
/// leaked).
pub struct Attachment<'a> {
    raw: RawAttachment,
    _buf: PhantomData<&'a DmaBufRef>,
}

impl Attachment<'_> {
    /// `dma_buf_map_attachment_unlocked`; `&mut` so one attachment has one mapping at a time.
    pub fn map(&mut self, dir: DataDirection) -> Result<Mapping<'_>> {
        let table = self.raw.map(dir)?;
        Ok(Mapping {
            att: &self.raw,
            table,
        })
    }
}

/// A mapped attachment, unmapped on drop.
///
/// # Invariants
///
/// `table` is `att`'s current mapping.
pub struct Mapping<'a> {
    att: &'a RawAttachment,
    table: NonNull<bindings::sg_table>,
}

impl Mapping<'_> {
    /// Walks every page of the mapped table with `kmap_local_page`, one page at a time (the
    /// access pattern `dma_buf_kmap` used to provide). Returns the number of pages.
    ///
    /// Needs `CONFIG_DMABUF_DEBUG=n`: the debug option scrambles the page pointers of mapped
    /// tables precisely to stop importers from doing this.
    pub fn walk_pages(&self, f: impl FnMut(&Bytes<'_>)) -> Result<usize> {
        // SAFETY: the table is mapped and valid until `self` is dropped.
        unsafe { walk_table(self.table, f) }
    }
}

/// Walks every page of `table` with `kmap_local_page`, one page at a time; returns the
/// number of pages.
///
/// # Safety
///
/// `table` is a mapped table, valid until this returns.
unsafe fn walk_table(
    table: NonNull<bindings::sg_table>,
    mut f: impl FnMut(&Bytes<'_>),
) -> Result<usize> {
    let mut pages = 0;
    // SAFETY: the table is valid (function contract).
    let (mut sg, n) = unsafe { ((*table.as_ptr()).sgl, (*table.as_ptr()).orig_nents) };
    for _ in 0..n {
        // SAFETY: `sg` is one of the table's `n` entries.
        let (page, len, off) = unsafe { (bindings::sg_page(sg), (*sg).length, (*sg).offset) };
        if page.is_null() {
            // Exporters of memory without `struct page` (device memory) have nothing to
            // kmap.
            return Err(EINVAL);
        }
        let end = off as usize + len as usize;
        let mut pos = off as usize;
        while pos < end {
            let idx = pos >> bindings::PAGE_SHIFT;
            let in_page = pos & (bindings::PAGE_SIZE - 1);
            let chunk = (bindings::PAGE_SIZE - in_page).min(end - pos);
            // SAFETY: `page + idx` is a page of this entry: the entry's pages are
            // physically contiguous, and their `struct page`s virtually contiguous because
            // the importer depends on SPARSEMEM_VMEMMAP (its Kconfig entry).
            let va = unsafe { bindings::kmap_local_page(page.add(idx)) }.cast::<u8>();
            // INVARIANT: the page stays mapped until `kunmap_local` below.
            let bytes = Bytes {
                // SAFETY: `in_page < PAGE_SIZE`, inside the local mapping.
                ptr: unsafe { va.add(in_page) },
                len: chunk,
                _p: PhantomData,
            };
            f(&bytes);
            // SAFETY: `va` is the most recent local mapping of this task.
            unsafe { bindings::kunmap_local(va.cast()) };
            pos += chunk;
            pages += 1;
            // Outside the local mapping: a walk of a huge buffer yields now and then.
            if pages % 16 == 0 {
                super::cond_resched();
            }
        }
        // SAFETY: advancing within the table's `n` entries.
        sg = unsafe { bindings::sg_next(sg) };
    }
    Ok(pages)
}

impl Drop for Mapping<'_> {
    fn drop(&mut self) {
        self.att.unmap();
    }
}

/// DMA parameters for a device no bus gives any, such as a misc device an importer maps
/// buffers for: a 64-bit mask and segments of any size. Without them mapping fails (no
/// mask) or DMA-API debug warns about segments longer than the 64 KiB default.
///
/// # Invariants
///
/// `dev` is a device this object holds a reference to; from a successful [`DmaParams::new`]
/// until `drop`, its `dma_parms` points to `parms`.
#[pin_data(PinnedDrop)]
pub struct DmaParams {
    #[pin]
    parms: Opaque<bindings::device_dma_parameters>,
    dev: NonNull<bindings::device>,
}

// SAFETY: the device reference may be dropped on any thread, and `parms` is only written
// before it is shared.
unsafe impl Send for DmaParams {}
// SAFETY: `&DmaParams` gives no access to anything.
unsafe impl Sync for DmaParams {}

impl DmaParams {
    /// Gives `dev` the parameters until the result is dropped.
    pub fn new(dev: &crate::device::Device) -> impl PinInit<Self, Error> + '_ {
        Self::with(dev, false)
    }

    /// The same, and `dev` becomes a device that is not cache-coherent with the CPU (see
    /// [`noncoherent`](super::noncoherent)) until the result is dropped; `ENODEV` on a
    /// kernel without `CONFIG_ARCH_HAS_DMA_OPS`. `dev` must have no DMA mapping yet.
    pub fn new_noncoherent(dev: &crate::device::Device) -> impl PinInit<Self, Error> + '_ {
        Self::with(dev, true)
    }

    fn with(dev: &crate::device::Device, noncoherent: bool) -> impl PinInit<Self, Error> + '_ {
        // SAFETY: all-zero DMA parameters are valid; the ones that matter are set below.
        let zeroed: bindings::device_dma_parameters = unsafe { core::mem::zeroed() };
        try_pin_init!(Self {
            parms: Opaque::new(zeroed),
            // Taken only when the initializer runs, so an unused one leaks nothing.
            // SAFETY: `dev` is a valid device; the reference is dropped in `drop`.
            dev: NonNull::new(unsafe { bindings::get_device(dev.as_raw()) }).ok_or(EINVAL)?,
        })
        .pin_chain(move |this| {
            let (dev, parms) = (this.dev.as_ptr(), this.parms.get());
            // Ops before the mask: setting the mask decides from them whether syncs run.
            // SAFETY: `dev` is alive (we hold a reference) and `parms` is pinned; on failure
            // the caller drops `this`, whose `drop` takes the pointer back.
            // INVARIANT: the device points to our parameters until `drop`.
            unsafe {
                (*parms).max_segment_size = u32::MAX;
                (*parms).segment_boundary_mask = !0;
                (*dev).dma_parms = parms;
                if noncoherent {
                    super::noncoherent::install(dev)?;
                }
                to_result(bindings::dma_coerce_mask_and_coherent(dev, u64::MAX))
            }
        })
    }
}

#[pinned_drop]
impl PinnedDrop for DmaParams {
    fn drop(self: Pin<&mut Self>) {
        let (dev, parms) = (self.dev.as_ptr(), self.parms.get());
        // SAFETY: we hold a reference to `dev` (type invariant); the device may outlive us
        // (references held elsewhere), so it must stop pointing at our parameters and ops.
        unsafe {
            super::noncoherent::uninstall(dev);
            if (*dev).dma_parms == parms {
                (*dev).dma_parms = core::ptr::null_mut();
            }
            bindings::put_device(dev);
        }
    }
}
