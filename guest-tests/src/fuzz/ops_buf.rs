//! The operations on buffers through their fds: allocate, close, dup, mmap, read and
//! write, munmap, SYNC, SET_NAME, and a forked child that reads a mapping.

use std::time::Duration;

use crate::harness::{errno_name, result_name};
use crate::process::{self, Exit};
use crate::uapi::{fd_size, DMA_BUF_SYNC_END};

use super::expect::{
    expect_alloc, expect_mmap, expect_set_name, expect_sync, judge, page_align, Expect,
};
use super::gen::{
    gen_bad_alloc, gen_len, gen_mmap, gen_name, gen_sync_flags, gen_valid_fd_flags, sync_name,
};
use super::model::{can_dup, can_map_rw, can_mmap, has_fd, has_map, Buf};
use super::state::{child_check, read_then_write, Fuzz};
use super::MAX_BUFS;

/// Bytes a forked child compares.
const CHILD_CHECKS: usize = 16;
/// A forked child's own alarm: it ends a child that hangs.
const CHILD_ALARM: Duration = Duration::from_secs(5);

impl Fuzz<'_> {
    pub(super) fn op_alloc(&mut self, d: &mut String) -> Result<String, String> {
        let len = gen_len(&mut self.rng);
        let fd_flags = gen_valid_fd_flags(&mut self.rng);
        *d = format!("alloc len={len} fd_flags={fd_flags:#x} heap_flags=0");
        self.alloc(len, fd_flags, 0)
    }

    pub(super) fn op_alloc_bad(&mut self, d: &mut String) -> Result<String, String> {
        // Only the Rust heap promises to refuse a length beyond RAM without reclaim.
        let huge_ok = self.heap.name == "rust_system";
        let (len, fd_flags, heap_flags) = gen_bad_alloc(&mut self.rng, huge_ok);
        *d = format!("alloc len={len:#x} fd_flags={fd_flags:#x} heap_flags={heap_flags:#x}");
        self.alloc(len, fd_flags, heap_flags)
    }

    fn alloc(&mut self, len: u64, fd_flags: u32, heap_flags: u64) -> Result<String, String> {
        let exp = expect_alloc(len, fd_flags, heap_flags);
        let r = self.heap.alloc_raw(len, fd_flags, heap_flags);
        judge("DMA_HEAP_IOCTL_ALLOC", exp, &r)?;
        let buf = match r {
            Ok(b) => b,
            Err(e) => return Ok(errno_name(&e)),
        };
        if exp != Expect::Ok || self.bufs.len() >= MAX_BUFS {
            // Admitted, but not something the model tracks.
            return Ok("ok (closed again)".to_string());
        }
        let size = page_align(len);
        let got = fd_size(buf.raw_fd()).map_err(|e| format!("lseek on the new fd: {e}"))?;
        if got != size {
            return Err(format!("dma-buf size {got}, expected {size}"));
        }
        let id = self.next_id;
        self.next_id += 1;
        let fd = buf.raw_fd();
        self.bufs.push(Buf {
            id,
            size,
            accmode: fd_flags & libc::O_ACCMODE as u32,
            fds: vec![buf],
            maps: Vec::new(),
            holds: Vec::new(),
            content: vec![0; size as usize],
            open_starts: 0,
        });
        Ok(format!("ok, b{id} size {size} fd {fd}"))
    }

    pub(super) fn op_close(&mut self, d: &mut String) -> Result<String, String> {
        let i = self.pick(has_fd)?;
        let k = self.rng.index(self.bufs[i].fds.len());
        let fd = self.bufs[i].fds.remove(k);
        let raw = fd.raw_fd();
        *d = format!("close b{} fd {raw}", self.bufs[i].id);
        drop(fd);
        self.remember_closed(raw);
        Ok(format!("ok{}", self.retire_if_unreferenced(i)))
    }

    pub(super) fn op_dup(&mut self, d: &mut String) -> Result<String, String> {
        let (i, k) = self.pick_fd_at(can_dup)?;
        let b = &mut self.bufs[i];
        *d = format!("dup b{} fd {}", b.id, b.fds[k].raw_fd());
        let dup = b.fds[k]
            .try_clone()
            .map_err(|e| format!("F_DUPFD_CLOEXEC failed: {}", errno_name(&e)))?;
        let raw = dup.raw_fd();
        let got = fd_size(raw).map_err(|e| format!("lseek on the dup: {e}"))?;
        b.fds.push(dup);
        if got != b.size {
            return Err(format!("dup reports size {got}, buffer has {}", b.size));
        }
        Ok(format!("ok, fd {raw}"))
    }

    pub(super) fn op_mmap(&mut self, d: &mut String) -> Result<String, String> {
        let (i, k) = self.pick_fd_at(can_mmap)?;
        let b = &mut self.bufs[i];
        let (id, size, accmode, fd) = (b.id, b.size, b.accmode, b.fds[k].raw_fd());
        let (off, len) = gen_mmap(&mut self.rng, size);
        *d = format!("mmap b{id} fd {fd} off={off:#x} len={len:#x}");
        let exp = expect_mmap(off, len, size, accmode);
        let r = b.fds[k].mmap(off, len as usize);
        judge("mmap", exp, &r)?;
        let mut map = match r {
            Ok(m) => m,
            Err(e) => return Ok(errno_name(&e)),
        };
        let what = read_then_write(&mut self.rng, &b.fds[k], &mut map, &mut b.content)?;
        b.maps.push(map);
        Ok(what)
    }

    pub(super) fn op_map_rw(&mut self, d: &mut String) -> Result<String, String> {
        let (i, k) = self.pick_fd_at(can_map_rw)?;
        let j = self.rng.index(self.bufs[i].maps.len());
        let b = &mut self.bufs[i];
        let m = &mut b.maps[j];
        let buf = &b.fds[k];
        *d = format!(
            "map_rw b{} fd {} map {:#x}+{:#x}",
            b.id,
            buf.raw_fd(),
            m.offset(),
            m.len()
        );
        read_then_write(&mut self.rng, buf, m, &mut b.content)
    }

    pub(super) fn op_munmap(&mut self, d: &mut String) -> Result<String, String> {
        let i = self.pick(has_map)?;
        let j = self.rng.index(self.bufs[i].maps.len());
        let m = self.bufs[i].maps.remove(j);
        *d = format!(
            "munmap b{} map {:#x}+{:#x}",
            self.bufs[i].id,
            m.offset(),
            m.len()
        );
        drop(m);
        Ok(format!("ok{}", self.retire_if_unreferenced(i)))
    }

    pub(super) fn op_sync(&mut self, d: &mut String) -> Result<String, String> {
        let (i, k) = self.pick_fd_at(has_fd)?;
        let flags = gen_sync_flags(&mut self.rng);
        let b = &mut self.bufs[i];
        let fd = b.fds[k].raw_fd();
        let exp = expect_sync(flags);
        let unmatched = exp == Expect::Ok && flags & DMA_BUF_SYNC_END != 0 && b.open_starts == 0;
        *d = format!(
            "sync b{} fd {fd} flags {}{}",
            b.id,
            sync_name(flags),
            if unmatched {
                " (END without START)"
            } else {
                ""
            }
        );
        let r = b.fds[k].sync_raw(flags);
        judge("DMA_BUF_IOCTL_SYNC", exp, &r)?;
        if r.is_ok() {
            if flags & DMA_BUF_SYNC_END != 0 {
                b.open_starts = b.open_starts.saturating_sub(1);
            } else {
                b.open_starts += 1;
            }
        }
        Ok(result_name(&r))
    }

    pub(super) fn op_set_name(&mut self, d: &mut String) -> Result<String, String> {
        let (i, k) = self.pick_fd_at(has_fd)?;
        let name = gen_name(&mut self.rng);
        let buf = &self.bufs[i].fds[k];
        *d = format!(
            "set_name b{} fd {} {name:?} ({} bytes)",
            self.bufs[i].id,
            buf.raw_fd(),
            name.len()
        );
        let r = buf.set_name(&name);
        judge("DMA_BUF_SET_NAME_B", expect_set_name(name.len()), &r)?;
        Ok(result_name(&r))
    }

    pub(super) fn op_fork(&mut self, d: &mut String) -> Result<String, String> {
        let i = self.pick(has_map)?;
        let j = self.rng.index(self.bufs[i].maps.len());
        let b = &self.bufs[i];
        let m = &b.maps[j];
        let picks: Vec<usize> = (0..CHILD_CHECKS.min(m.len()))
            .map(|_| self.rng.index(m.len()))
            .collect();
        let first = b.fds.first();
        *d = format!(
            "fork: child checks {} bytes of b{} map {:#x}+{:#x}",
            picks.len(),
            b.id,
            m.offset(),
            m.len()
        );
        // The fuzzer runs single-threaded (the runner forks each test into its own
        // single-threaded process), so the child may run arbitrary code after fork.
        let mut child = process::spawn(CHILD_ALARM, || child_check(m, &b.content, &picks, first))
            .map_err(|e| format!("fork: {e}"))?;
        let code = match child.wait_exit().map_err(|e| format!("waitpid: {e}"))? {
            Exit::Signal(libc::SIGALRM) => return Err("child timed out (5 s alarm)".to_string()),
            Exit::Signal(sig) => return Err(format!("child killed by signal {sig}")),
            Exit::Code(code) => code,
        };
        match code {
            0 => Ok("ok, child saw the model".to_string()),
            1 => Err(format!(
                "child read bytes that differ from the model (offsets {picks:?} of the mapping)"
            )),
            2 => Err("child's SYNC START|READ failed".to_string()),
            n => Err(format!("child exited with status {n}")),
        }
    }
}
