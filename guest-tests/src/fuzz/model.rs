//! The model of live buffers: what each holds (fds, mappings, importer holds, expected
//! content), which buffers each operation may pick, and comparisons against the model.

use crate::uapi::importer::{self, ImporterArgs};
use crate::uapi::{DmaBuf, Mapping, DMA_BUF_SYNC_END, DMA_BUF_SYNC_READ, DMA_BUF_SYNC_START, KIB};

use super::rng::Rng;

const MAX_FDS_PER_BUF: usize = 4;
const MAX_MAPS_PER_BUF: usize = 4;
const MAX_HOLDS_PER_BUF: usize = 2;
/// Mappings up to this size are compared whole; larger ones are sampled.
const FULL_CHECK: usize = 256 * KIB as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HoldKind {
    /// `IMPORTER_HOLD`: a vmap; RELEASE checksums the current content.
    Vmap,
    /// `IMPORTER_ATTACH_HOLD`: an attachment mapped for the importer's device.
    Attach,
}

#[derive(Debug)]
pub(super) struct Hold {
    pub(super) handle: u64,
    pub(super) kind: HoldKind,
}

/// One dma-buf of the model; it stays in the pool while an fd, mapping or hold keeps it.
#[derive(Debug)]
pub(super) struct Buf {
    pub(super) id: u64,
    pub(super) size: u64,
    pub(super) accmode: u32,
    /// The fd the heap returned and dups of fds on the buffer, in the order they opened.
    pub(super) fds: Vec<DmaBuf>,
    pub(super) maps: Vec<Mapping>,
    pub(super) holds: Vec<Hold>,
    /// Expected content: zeros when fresh.
    pub(super) content: Vec<u8>,
    /// STARTs without END seen by the Sync op (only to label unmatched ENDs).
    pub(super) open_starts: u64,
}

impl Buf {
    pub(super) fn unreferenced(&self) -> bool {
        self.fds.is_empty() && self.maps.is_empty() && self.holds.is_empty()
    }

    fn attach_held(&self) -> bool {
        self.holds.iter().any(|h| h.kind == HoldKind::Attach)
    }
}

// Which buffers each operation may pick; `avail` and the operations share them.
pub(super) fn has_fd(b: &Buf) -> bool {
    !b.fds.is_empty()
}
pub(super) fn can_dup(b: &Buf) -> bool {
    has_fd(b) && b.fds.len() < MAX_FDS_PER_BUF
}
pub(super) fn can_mmap(b: &Buf) -> bool {
    has_fd(b) && b.maps.len() < MAX_MAPS_PER_BUF
}
pub(super) fn can_map_rw(b: &Buf) -> bool {
    has_fd(b) && !b.maps.is_empty()
}
pub(super) fn has_map(b: &Buf) -> bool {
    !b.maps.is_empty()
}
/// A second DMA mapping of pages an attachment hold keeps mapped overlaps it, which
/// DMA-API debug reports with a WARN (see the importer's attach_map); the model avoids it.
pub(super) fn can_dma_map(b: &Buf) -> bool {
    has_fd(b) && !b.attach_held()
}
pub(super) fn can_hold(b: &Buf) -> bool {
    has_fd(b) && b.holds.len() < MAX_HOLDS_PER_BUF
}
pub(super) fn can_attach_hold(b: &Buf) -> bool {
    can_hold(b) && can_dma_map(b)
}
pub(super) fn has_hold(b: &Buf) -> bool {
    !b.holds.is_empty()
}

/// Compares what a mapping reads with the model: whole when small, sampled when large.
/// `base` is the mapping's offset and `size` the buffer's, so a mismatch names the byte's
/// place in the buffer ("byte 8191 of 8192": the last one).
pub(super) fn check_bytes(
    rng: &mut Rng,
    got: &[u8],
    want: &[u8],
    base: u64,
    size: u64,
) -> Result<usize, String> {
    let mismatch = |i: usize| {
        format!(
            "byte {} of {size} reads {:#04x}, model has {:#04x}",
            base + i as u64,
            got[i],
            want[i]
        )
    };
    if got.len() <= FULL_CHECK {
        if got != want {
            let i = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            return Err(mismatch(i));
        }
        return Ok(got.len());
    }
    let mut picks: Vec<usize> = (0..64).map(|_| rng.index(got.len())).collect();
    picks.extend([0, got.len() - 1]);
    for &i in &picks {
        if got[i] != want[i] {
            return Err(mismatch(i));
        }
    }
    Ok(picks.len())
}

/// Where a buffer differs from its model, read through a fresh mapping under SYNC READ: the
/// decisive detail when a kernel checksum disagrees with the model.
fn locate(b: &Buf) -> String {
    for fd in &b.fds {
        let Ok(map) = fd.mmap(0, b.size as usize) else {
            continue;
        };
        if fd.sync_raw(DMA_BUF_SYNC_START | DMA_BUF_SYNC_READ).is_err() {
            continue;
        }
        let got = map.as_slice();
        let at = got.iter().zip(&b.content).position(|(g, m)| g != m);
        let _ = fd.sync_raw(DMA_BUF_SYNC_END | DMA_BUF_SYNC_READ);
        return match at {
            Some(i) => format!(
                "byte {i} of {} reads {:#04x}, model has {:#04x}",
                b.size, got[i], b.content[i]
            ),
            None => "a fresh mapping reads what the model has".to_string(),
        };
    }
    "not located: no fd of the buffer maps for reading".to_string()
}

/// A kernel checksum that disagrees with the model, with where the buffer differs.
pub(super) fn checksum_mismatch(what: &str, got: u64, want: u64, b: &Buf) -> String {
    format!("{what} checksum {got:#x}, model {want:#x}: {}", locate(b))
}

/// A checksum taken before a kernel fill disagreed: what was checksummed is gone, so the
/// buffer is located against the model of the fill instead.
pub(super) fn fill_mismatch(got: u64, want: u64, fill: u8, b: &mut Buf) -> String {
    b.content.fill(fill);
    format!(
        "kernel checksum {got:#x}, model {want:#x} (before a fill with {fill:#04x}; after it: {})",
        locate(b)
    )
}

/// What RELEASE must report: a vmap hold checksums the current content; an attachment hold
/// writes nothing back.
pub(super) fn check_release(a: &ImporterArgs, kind: HoldKind, b: &Buf) -> Result<(), String> {
    match kind {
        HoldKind::Vmap => {
            let want = importer::checksum(&b.content);
            if a.checksum != want {
                return Err(checksum_mismatch("held vmap", a.checksum, want, b));
            }
            if a.pages != b.size {
                return Err(format!("held vmap covers {} bytes of {}", a.pages, b.size));
            }
        }
        HoldKind::Attach => {
            if a.checksum != 0 || a.pages != 0 {
                return Err(format!(
                    "attachment release wrote checksum {:#x}, pages {}",
                    a.checksum, a.pages
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_bytes_reports_the_first_mismatch() {
        let mut r = Rng::new(1);
        let want = vec![0u8; 100];
        let mut got = want.clone();
        assert_eq!(check_bytes(&mut r, &got, &want, 0, 8192), Ok(100));
        got[42] = 7;
        assert_eq!(
            check_bytes(&mut r, &got, &want, 4096, 8192),
            Err("byte 4138 of 8192 reads 0x07, model has 0x00".to_string())
        );
    }
}
