//! The operations through the test importer device: vmap, kmap walk, attach and map,
//! holds and their release, and importer calls on fds that are not live dma-bufs.

use std::os::fd::RawFd;

use crate::harness::{errno_name, result_name};
use crate::uapi::importer::{
    self, ImporterArgs, IMPORTER_ATTACH_HOLD, IMPORTER_ATTACH_MAP, IMPORTER_CPU_ACCESS,
    IMPORTER_HOLD, IMPORTER_KMAP_WALK, IMPORTER_RELEASE, IMPORTER_VMAP, IMPORTER_VMAP_TWICE,
    OP_CHECKSUM, OP_FILL,
};
use crate::uapi::PAGE;

use super::expect::{judge, Expect};
use super::model::{
    can_attach_hold, can_dma_map, can_hold, check_release, checksum_mismatch, fill_mismatch,
    has_fd, has_hold, Hold, HoldKind,
};
use super::state::{is_closed, whole_buffer_op, Fuzz};

/// Released handles remembered for RELEASE-twice (handles are never reissued).
const MAX_RELEASED: usize = 8;

impl Fuzz<'_> {
    pub(super) fn op_vmap(&mut self, d: &mut String) -> Result<String, String> {
        let (i, fd) = self.pick_fd(has_fd)?;
        let roll = self.rng.percent();
        let fill = self.rng.below(256) as u8;
        let b = &mut self.bufs[i];
        let (req, op, label) = match roll {
            0..=59 => (IMPORTER_VMAP, OP_CHECKSUM, "VMAP checksum".to_string()),
            60..=84 => (IMPORTER_VMAP, OP_FILL, format!("VMAP fill {fill:#04x}")),
            _ => (
                IMPORTER_VMAP_TWICE,
                OP_CHECKSUM,
                "VMAP_TWICE checksum".to_string(),
            ),
        };
        *d = format!("importer {label} b{} fd {fd}", b.id);
        let a = whole_buffer_op(self.imp.as_ref(), req, fd, op, fill, &label)?;
        let want = importer::checksum(&b.content);
        if a.checksum != want {
            if op == OP_FILL {
                return Err(fill_mismatch(a.checksum, want, fill, b));
            }
            return Err(checksum_mismatch("kernel", a.checksum, want, b));
        }
        if req == IMPORTER_VMAP_TWICE {
            if a.shared != 1 {
                return Err("nested vmaps returned different addresses".to_string());
            }
        } else if a.pages != b.size {
            return Err(format!("vmap covered {} bytes of {}", a.pages, b.size));
        }
        if op == OP_FILL {
            b.content.fill(fill);
        }
        Ok("ok, checksum matches".to_string())
    }

    pub(super) fn op_kmap_walk(&mut self, d: &mut String) -> Result<String, String> {
        let (i, fd) = self.pick_fd(can_dma_map)?;
        let do_fill = self.rng.chance(25);
        let fill = self.rng.below(256) as u8;
        let b = &mut self.bufs[i];
        let label = if do_fill {
            format!("KMAP_WALK fill {fill:#04x}")
        } else {
            "KMAP_WALK checksum".to_string()
        };
        *d = format!("importer {label} b{} fd {fd}", b.id);
        let op = if do_fill { OP_FILL } else { OP_CHECKSUM };
        let a = whole_buffer_op(self.imp.as_ref(), IMPORTER_KMAP_WALK, fd, op, fill, &label)?;
        if a.pages != b.size / PAGE {
            return Err(format!("walked {} pages of {}", a.pages, b.size / PAGE));
        }
        let want = importer::checksum(&b.content);
        if a.checksum != want {
            if do_fill {
                return Err(fill_mismatch(a.checksum, want, fill, b));
            }
            return Err(checksum_mismatch("kernel", a.checksum, want, b));
        }
        if do_fill {
            b.content.fill(fill);
        }
        Ok(format!("ok, {} pages, checksum matches", a.pages))
    }

    pub(super) fn op_attach_map(&mut self, d: &mut String) -> Result<String, String> {
        let (i, fd) = self.pick_fd(can_dma_map)?;
        let count = 1 + self.rng.below(2) as u32;
        let (id, size) = (self.bufs[i].id, self.bufs[i].size);
        *d = format!("importer ATTACH_MAP x{count} b{id} fd {fd}");
        let mut a = ImporterArgs {
            fd,
            count,
            ..Default::default()
        };
        let r = self.importer()?.call(IMPORTER_ATTACH_MAP, &mut a);
        judge("ATTACH_MAP", Expect::Ok, &r)?;
        let want = u64::from(count) * size / PAGE;
        if a.pages != want {
            return Err(format!("mapped {} pages, expected {want}", a.pages));
        }
        Ok(format!("ok, {} pages", a.pages))
    }

    pub(super) fn op_hold(&mut self, d: &mut String, kind: HoldKind) -> Result<String, String> {
        let p = match kind {
            HoldKind::Vmap => can_hold,
            HoldKind::Attach => can_attach_hold,
        };
        let (i, fd) = self.pick_fd(p)?;
        let (req, label) = match kind {
            HoldKind::Vmap => (IMPORTER_HOLD, "HOLD"),
            HoldKind::Attach => (IMPORTER_ATTACH_HOLD, "ATTACH_HOLD"),
        };
        *d = format!("importer {label} b{} fd {fd}", self.bufs[i].id);
        let mut a = ImporterArgs {
            fd,
            count: 1,
            ..Default::default()
        };
        let r = self.importer()?.call(req, &mut a);
        judge(label, Expect::Ok, &r)?;
        self.bufs[i].holds.push(Hold {
            handle: a.handle,
            kind,
        });
        Ok(format!("ok, handle {}", a.handle))
    }

    pub(super) fn op_release(&mut self, d: &mut String) -> Result<String, String> {
        let roll = self.rng.percent();
        let fill_roll = self.rng.percent();
        let fill = self.rng.below(256) as u8;
        let live = self.bufs.iter().any(has_hold);
        if !live || (roll < 15 && !self.released.is_empty()) {
            let k = self.rng.index(self.released.len());
            let handle = *self
                .released
                .get(k)
                .ok_or_else(|| "internal: no hold and no released handle".to_string())?;
            *d = format!("importer RELEASE of released handle {handle}");
            let mut a = ImporterArgs {
                handle,
                ..Default::default()
            };
            let r = self.importer()?.call(IMPORTER_RELEASE, &mut a);
            judge("RELEASE", Expect::Err(libc::ENOENT), &r)?;
            return Ok(result_name(&r));
        }
        let i = self.pick(has_hold)?;
        let j = self.rng.index(self.bufs[i].holds.len());
        let hold = self.bufs[i].holds.remove(j);
        let do_fill = hold.kind == HoldKind::Vmap && fill_roll < 20;
        *d = format!(
            "importer RELEASE{} b{} {:?} handle {}",
            if do_fill {
                format!(" fill {fill:#04x}")
            } else {
                String::new()
            },
            self.bufs[i].id,
            hold.kind,
            hold.handle
        );
        let mut a = ImporterArgs {
            handle: hold.handle,
            op: if do_fill { OP_FILL } else { OP_CHECKSUM },
            fill: u32::from(fill),
            ..Default::default()
        };
        if let Err(e) = self.importer()?.call(IMPORTER_RELEASE, &mut a) {
            // Not released: keep it, so the final cleanup tries again.
            self.bufs[i].holds.push(hold);
            return Err(format!("RELEASE: expected ok, got {}", errno_name(&e)));
        }
        self.released.push(hold.handle);
        if self.released.len() > MAX_RELEASED {
            self.released.remove(0);
        }
        let b = &mut self.bufs[i];
        check_release(&a, hold.kind, b)?;
        if do_fill {
            b.content.fill(fill);
        }
        Ok(format!("ok{}", self.retire_if_unreferenced(i)))
    }

    pub(super) fn op_bad_fd(&mut self, d: &mut String) -> Result<String, String> {
        const REQS: [(u32, &str); 7] = [
            (IMPORTER_VMAP, "VMAP"),
            (IMPORTER_VMAP_TWICE, "VMAP_TWICE"),
            (IMPORTER_KMAP_WALK, "KMAP_WALK"),
            (IMPORTER_ATTACH_MAP, "ATTACH_MAP"),
            (IMPORTER_HOLD, "HOLD"),
            (IMPORTER_ATTACH_HOLD, "ATTACH_HOLD"),
            (IMPORTER_CPU_ACCESS, "CPU_ACCESS"),
        ];
        let (req, label) = REQS[self.rng.index(REQS.len())];
        let roll = self.rng.percent();
        let k = self.rng.index(self.closed.len().max(1));
        let big = (1 << 20) + self.rng.below(1 << 16) as RawFd;
        let end = self.rng.below(2) as u32;
        let closed = self.closed.get(k).copied().filter(|&fd| is_closed(fd));
        let (fd, kind, exp) = match (roll, closed, self.other_fd) {
            (0..=49, Some(fd), _) => (fd, "closed", libc::EBADF),
            (50..=64, _, _) => (-1, "negative", libc::EBADF),
            (65..=84, _, Some(fd)) => (fd, "not a dma-buf", libc::EINVAL),
            _ => (big, "never opened", libc::EBADF),
        };
        *d = format!("importer {label} on {kind} fd {fd}");
        let mut a = ImporterArgs {
            fd,
            count: 1,
            end,
            ..Default::default()
        };
        let imp = self.importer()?;
        let r = imp.call(req, &mut a);
        if r.is_ok() && (req == IMPORTER_HOLD || req == IMPORTER_ATTACH_HOLD) {
            let mut rel = ImporterArgs {
                handle: a.handle,
                ..Default::default()
            };
            let _ = imp.call(IMPORTER_RELEASE, &mut rel);
        }
        judge(label, Expect::Err(exp), &r)?;
        Ok(result_name(&r))
    }
}
