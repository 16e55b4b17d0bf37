//! The fuzzer's state (the PRNG, the importer, the model's pool of buffers) and the
//! helpers the operations share.

use std::os::fd::RawFd;

use crate::harness::errno_name;
use crate::uapi::importer::{ImporterArgs, IMPORTER_RELEASE};
use crate::uapi::{
    DmaBuf, Heap, Importer, Mapping, DMA_BUF_SYNC_END, DMA_BUF_SYNC_READ, DMA_BUF_SYNC_START,
    DMA_BUF_SYNC_WRITE,
};

use super::expect::{judge, Expect};
use super::gen::sync_name;
use super::model::{check_bytes, check_release, Buf};
use super::rng::Rng;

/// Closed fd numbers remembered for importer calls on a closed fd.
const MAX_CLOSED: usize = 8;

/// The model and everything the operations need.
pub(super) struct Fuzz<'a> {
    pub(super) heap: &'a Heap,
    pub(super) rng: Rng,
    pub(super) imp: Option<Importer>,
    pub(super) bufs: Vec<Buf>,
    pub(super) next_id: u64,
    pub(super) closed: Vec<RawFd>,
    pub(super) released: Vec<u64>,
    /// An open fd that is not a dma-buf (the taint file), for importer calls that must
    /// fail with EINVAL.
    pub(super) other_fd: Option<RawFd>,
}

impl Fuzz<'_> {
    /// Whether any buffer of the pool satisfies `p` (what the operation table's `avail`
    /// conditions ask).
    pub(super) fn any_buf(&self, p: fn(&Buf) -> bool) -> bool {
        self.bufs.iter().any(p)
    }

    /// A buffer satisfying `p`, chosen by the PRNG among those in pool order.
    pub(super) fn pick(&mut self, p: fn(&Buf) -> bool) -> Result<usize, String> {
        let fits: Vec<usize> = (0..self.bufs.len()).filter(|&i| p(&self.bufs[i])).collect();
        if fits.is_empty() {
            return Err("internal: no buffer fits the chosen operation".to_string());
        }
        Ok(fits[self.rng.index(fits.len())])
    }

    /// A buffer with an fd, and one of its fds: (buffer, index in its `fds`).
    pub(super) fn pick_fd_at(&mut self, p: fn(&Buf) -> bool) -> Result<(usize, usize), String> {
        let i = self.pick(p)?;
        let k = self.rng.index(self.bufs[i].fds.len());
        Ok((i, k))
    }

    /// A buffer with an fd, and one of its fds' numbers.
    pub(super) fn pick_fd(&mut self, p: fn(&Buf) -> bool) -> Result<(usize, RawFd), String> {
        let (i, k) = self.pick_fd_at(p)?;
        Ok((i, self.bufs[i].fds[k].raw_fd()))
    }

    pub(super) fn importer(&self) -> Result<&Importer, String> {
        self.imp.as_ref().ok_or_else(no_importer)
    }

    /// Drops buffer `i` from the pool when nothing refers to it any more.
    pub(super) fn retire_if_unreferenced(&mut self, i: usize) -> &'static str {
        if self.bufs[i].unreferenced() {
            self.bufs.remove(i);
            ", buffer gone"
        } else {
            ""
        }
    }

    pub(super) fn remember_closed(&mut self, fd: RawFd) {
        if self.closed.len() == MAX_CLOSED {
            self.closed.remove(0);
        }
        self.closed.push(fd);
    }

    /// Releases every importer hold (checking what RELEASE reports), unmaps, closes.
    pub(super) fn teardown(&mut self) -> Result<(), String> {
        let mut first_err = None;
        for i in 0..self.bufs.len() {
            let holds = std::mem::take(&mut self.bufs[i].holds);
            for hold in holds {
                let mut a = ImporterArgs {
                    handle: hold.handle,
                    ..Default::default()
                };
                let r = match &self.imp {
                    Some(imp) => imp.call(IMPORTER_RELEASE, &mut a),
                    None => Ok(()),
                };
                let res = judge("RELEASE", Expect::Ok, &r)
                    .and_then(|()| check_release(&a, hold.kind, &self.bufs[i]));
                if let Err(e) = res {
                    first_err.get_or_insert(format!(
                        "b{} {:?} handle {}: {e}",
                        self.bufs[i].id, hold.kind, hold.handle
                    ));
                }
            }
        }
        for b in &mut self.bufs {
            b.maps.clear();
            b.fds.clear();
        }
        self.bufs.clear();
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Fuzz<'_> {
    /// Holds live in the importer device, not in this process: release them even when a
    /// run stops early, so no buffer stays pinned for the tests that follow.
    fn drop(&mut self) {
        if let Some(imp) = &self.imp {
            for b in &self.bufs {
                for h in &b.holds {
                    let mut a = ImporterArgs {
                        handle: h.handle,
                        ..Default::default()
                    };
                    let _ = imp.call(IMPORTER_RELEASE, &mut a);
                }
            }
        }
    }
}

fn no_importer() -> String {
    "internal: importer op without the importer".to_string()
}

/// One importer call that fills or checksums a whole buffer and must succeed; the importer
/// is passed in because the caller holds a buffer of the pool mutably.
pub(super) fn whole_buffer_op(
    imp: Option<&Importer>,
    req: u32,
    fd: i32,
    op: u32,
    fill: u8,
    label: &str,
) -> Result<ImporterArgs, String> {
    let imp = imp.ok_or_else(no_importer)?;
    let mut a = ImporterArgs {
        fd,
        op,
        fill: u32::from(fill),
        count: 1,
        ..Default::default()
    };
    judge(label, Expect::Ok, &imp.call(req, &mut a))?;
    Ok(a)
}

fn sync_ok(buf: &DmaBuf, flags: u64) -> Result<(), String> {
    buf.sync_raw(flags)
        .map_err(|e| format!("SYNC {} failed: {}", sync_name(flags), errno_name(&e)))
}

/// Reads a mapping under SYNC READ and compares it with the model, then writes random
/// bytes to part of it under SYNC WRITE and records them in the model.
pub(super) fn read_then_write(
    rng: &mut Rng,
    buf: &DmaBuf,
    map: &mut Mapping,
    content: &mut [u8],
) -> Result<String, String> {
    let range = map.range();
    sync_ok(buf, DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ)?;
    let size = content.len() as u64;
    let checked = check_bytes(
        rng,
        map.as_slice(),
        &content[range.clone()],
        map.offset(),
        size,
    );
    sync_ok(buf, DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ)?;
    let checked = checked?;
    let (start, n) = if rng.chance(10) {
        (0, map.len())
    } else {
        let s = rng.index(map.len());
        (s, 1 + rng.index((map.len() - s).min(4096)))
    };
    let model = &mut content[range][start..start + n];
    rng.fill(model);
    sync_ok(buf, DMA_BUF_SYNC_START | DMA_BUF_SYNC_WRITE)?;
    map.as_mut_slice()[start..start + n].copy_from_slice(model);
    sync_ok(buf, DMA_BUF_SYNC_END | DMA_BUF_SYNC_WRITE)?;
    Ok(format!(
        "ok, {checked} bytes match, wrote {n} at +{:#x}",
        map.offset() + start as u64
    ))
}

/// The forked child's whole life: compare a few bytes of `map` with `content`, then `_exit`
/// (through `process::spawn`) 0 (match), 1 (mismatch) or 2 (SYNC failed).
pub(super) fn child_check(
    map: &Mapping,
    content: &[u8],
    picks: &[usize],
    buf: Option<&DmaBuf>,
) -> i32 {
    let mut code = 0;
    if let Some(buf) = buf {
        if buf
            .sync_raw(DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ)
            .is_err()
        {
            code = 2;
        }
    }
    if code == 0 {
        let bytes = map.as_slice();
        let base = map.offset() as usize;
        if picks.iter().any(|&p| bytes.get(p) != content.get(base + p)) {
            code = 1;
        }
    }
    if let Some(buf) = buf {
        let _ = buf.sync_raw(DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ);
    }
    // `process::spawn` then `_exit`s at once, running no destructors or atexit handlers of
    // the parent's state (its fds, mappings and holds belong to the parent).
    code
}

pub(super) fn is_closed(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the fd table.
    let r = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    r == -1
}
