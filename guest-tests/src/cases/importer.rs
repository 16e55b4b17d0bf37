//! Kernel-side access through `/dev/dmabuf_test_importer`, for any exporter: vmap, nested
//! vmap, page-by-page kmap walks, device attachments, and a vmap held past the fd's close.

use crate::ensure;
use crate::expect::stats;
use crate::harness::result_name;
use crate::harness::{Context, Ctx, Outcome, Stop};
use crate::uapi::importer::{
    checksum, ImporterArgs, IMPORTER_ATTACH_HOLD, IMPORTER_ATTACH_MAP, IMPORTER_CPU_ACCESS,
    IMPORTER_HOLD, IMPORTER_KMAP_WALK, IMPORTER_NOT_AN_IOCTL, IMPORTER_RELEASE, IMPORTER_VMAP,
    IMPORTER_VMAP_TWICE, OP_CHECKSUM, OP_FILL,
};
use crate::uapi::{Access, DmaBuf, Heap};

use super::MIB;

pub(super) const LEN: u64 = MIB + 8 * 4096;

use crate::expect::importer;

/// A buffer filled from user space with a pattern; returns it and the pattern's checksum.
pub(super) fn patterned(heap: &Heap, seed: u8) -> Result<(DmaBuf, u64), Stop> {
    let buf = heap.alloc(LEN).context("alloc")?;
    let mut map = buf.mmap(0, LEN as usize).context("mmap")?;
    buf.sync_start(Access::Write).context("SYNC START")?;
    for (i, b) in map.as_mut_slice().iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ (i >> 12) as u8 ^ seed;
    }
    buf.sync_end(Access::Write).context("SYNC END")?;
    let sum = checksum(map.as_slice());
    Ok((buf, sum))
}

/// Bytes of `buf` that do not read `byte` through a fresh mapping, under SYNC READ.
fn count_not(buf: &DmaBuf, byte: u8) -> Result<usize, Stop> {
    let map = buf.mmap(0, LEN as usize).context("mmap")?;
    buf.sync_start(Access::Read).context("SYNC START")?;
    let bad = map.as_slice().iter().filter(|&&b| b != byte).count();
    buf.sync_end(Access::Read).context("SYNC END")?;
    Ok(bad)
}

fn current_vmaps(heap: &Heap) -> Result<Option<u64>, Stop> {
    Ok(stats(&heap.name)?.map(|s| s["current_vmaps"]))
}

/// What user space wrote is what the kernel reads through vmap.
pub fn vmap_reads_user_writes(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let imp = importer()?;
    let (buf, sum) = patterned(heap, 0x11)?;
    let a = imp
        .on(IMPORTER_VMAP, &buf, OP_CHECKSUM, 0)
        .context("IMPORTER_VMAP")?;
    ensure!(
        a.pages == LEN,
        "vmap covered {} bytes, buffer has {LEN}",
        a.pages
    );
    ensure!(
        a.checksum == sum,
        "vmap checksum {:#x}, user wrote {sum:#x}",
        a.checksum
    );
    ctx.fact("vmap content", "equals what user space wrote");
    Ok(())
}

/// Kernel writes through vmap are visible through mmap after SYNC.
pub fn vmap_writes_visible_to_user(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let imp = importer()?;
    let buf = heap.alloc(LEN).context("alloc")?;
    imp.on(IMPORTER_VMAP, &buf, OP_FILL, 0xab)
        .context("IMPORTER_VMAP fill")?;
    let bad = count_not(&buf, 0xab)?;
    ensure!(bad == 0, "{bad} bytes do not show the kernel's 0xab");
    ctx.fact("kernel fill via vmap", "visible through mmap after SYNC");
    Ok(())
}

/// Two nested vmaps share one address; unwinding them leaves no mapping behind.
pub fn vmap_nested(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let imp = importer()?;
    let (buf, sum) = patterned(heap, 0x22)?;
    let before = current_vmaps(heap)?;
    let a = imp
        .on(IMPORTER_VMAP_TWICE, &buf, OP_CHECKSUM, 0)
        .context("IMPORTER_VMAP_TWICE")?;
    ctx.fact("nested vmaps share the address", a.shared == 1);
    ensure!(
        a.shared == 1,
        "two nested vmaps returned different addresses (the core refcounts one mapping)"
    );
    ensure!(
        a.checksum == sum,
        "outer mapping unusable after the inner vunmap"
    );
    if let (Some(b), Some(after)) = (before, current_vmaps(heap)?) {
        ensure!(
            b == after,
            "current_vmaps {b} -> {after} after a balanced pair"
        );
        ctx.fact("kernel mappings left", after as i64 - b as i64);
    }
    Ok(())
}

/// The page-by-page kmap walk of a mapped attachment reads what vmap reads.
pub fn kmap_walk_matches_vmap(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let imp = importer()?;
    let (buf, sum) = patterned(heap, 0x33)?;
    let walk = imp
        .on(IMPORTER_KMAP_WALK, &buf, OP_CHECKSUM, 0)
        .context("IMPORTER_KMAP_WALK")?;
    let vmap = imp
        .on(IMPORTER_VMAP, &buf, OP_CHECKSUM, 0)
        .context("IMPORTER_VMAP")?;
    ctx.fact("pages walked", walk.pages);
    ensure!(
        walk.pages == LEN / 4096,
        "walked {} pages of {}",
        walk.pages,
        LEN / 4096
    );
    ensure!(
        walk.checksum == vmap.checksum && vmap.checksum == sum,
        "kmap walk {:#x}, vmap {:#x}, user {sum:#x}",
        walk.checksum,
        vmap.checksum
    );
    ctx.fact("kmap walk checksum", "equals vmap and user checksums");
    // Kernel writes page by page are visible to user space too.
    imp.on(IMPORTER_KMAP_WALK, &buf, OP_FILL, 0x5c)
        .context("kmap walk fill")?;
    let bad = count_not(&buf, 0x5c)?;
    ensure!(bad == 0, "{bad} bytes miss the kmap walk's fill");
    Ok(())
}

/// One and two device attachments, each mapped, with a kernel begin/end CPU access while
/// mapped, then unmapped and detached: every page mapped, and the content unchanged.
pub fn attach_map(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let imp = importer()?;
    let (buf, sum) = patterned(heap, 0x55)?;
    for count in [1u32, 2] {
        let mut a = ImporterArgs {
            fd: buf.raw_fd(),
            count,
            ..Default::default()
        };
        imp.call(IMPORTER_ATTACH_MAP, &mut a)
            .context(format!("IMPORTER_ATTACH_MAP with {count}"))?;
        ctx.fact(format!("{count} attachment(s) mapped, pages"), a.pages);
        let want = u64::from(count) * LEN / 4096;
        ensure!(
            a.pages == want,
            "{count} attachment(s) mapped {} pages, expected {want}",
            a.pages
        );
        let map = buf.mmap(0, LEN as usize).context("mmap")?;
        buf.sync_start(Access::Read).context("SYNC START")?;
        let now = checksum(map.as_slice());
        buf.sync_end(Access::Read).context("SYNC END")?;
        ensure!(
            now == sum,
            "content changed across {count} attach/map/sync/unmap cycle(s)"
        );
    }
    ctx.fact("content after the cycles", "unchanged");
    Ok(())
}

/// A vmap held by the kernel keeps the buffer alive after user space closed every fd and
/// mapping, and reads the right data when it is finally released.
pub fn hold_after_close(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let imp = importer()?;
    let (buf, sum) = patterned(heap, 0x44)?;
    let live = stats(&heap.name)?.map(|s| s["live_buffers"]);
    let held = imp
        .on(IMPORTER_HOLD, &buf, OP_CHECKSUM, 0)
        .context("IMPORTER_HOLD")?;
    drop(buf);
    let live_while_held = stats(&heap.name)?.map(|s| s["live_buffers"]);
    let mut r = ImporterArgs {
        handle: held.handle,
        ..Default::default()
    };
    imp.call(IMPORTER_RELEASE, &mut r)
        .context("IMPORTER_RELEASE")?;
    ensure!(
        r.checksum == sum,
        "held vmap read {:#x}, user wrote {sum:#x}",
        r.checksum
    );
    ctx.fact("held vmap after close", "valid, content intact");
    if let (Some(l0), Some(l1), Some(l2)) = (
        live,
        live_while_held,
        stats(&heap.name)?.map(|s| s["live_buffers"]),
    ) {
        ctx.fact("buffer alive while held", l1 == l0);
        ctx.fact("buffer freed after release", l2 + 1 == l0);
        ensure!(
            l1 == l0,
            "live_buffers {l0} -> {l1} after close while held: freed under a vmap"
        );
        ensure!(
            l2 + 1 == l0,
            "live_buffers {l0} -> {l2} after the release: the buffer was not freed"
        );
    }
    let mut again = ImporterArgs {
        handle: held.handle,
        ..Default::default()
    };
    let second = crate::harness::result_name(&imp.call(IMPORTER_RELEASE, &mut again));
    ctx.fact("second release of the handle", &second);
    ensure!(
        second == "ENOENT",
        "second release of a released handle: {second}, expected ENOENT"
    );
    Ok(())
}

/// An argument block in a page user space can read but the kernel cannot write back to.
struct ReadOnlyArgs {
    page: *mut libc::c_void,
}

impl ReadOnlyArgs {
    fn new(args: ImporterArgs) -> Result<ReadOnlyArgs, Stop> {
        let len = crate::uapi::PAGE as usize;
        // SAFETY: a fresh anonymous mapping aliases nothing.
        let page = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if page == libc::MAP_FAILED {
            return Err(Stop::Fail(format!(
                "mmap of an argument page: {}",
                std::io::Error::last_os_error()
            )));
        }
        let ro = ReadOnlyArgs { page };
        // SAFETY: the page is ours, writable and large enough for one `ImporterArgs`.
        unsafe { page.cast::<ImporterArgs>().write(args) };
        // SAFETY: changing the protection of our own mapping.
        if unsafe { libc::mprotect(page, len, libc::PROT_READ) } != 0 {
            return Err(Stop::Fail(format!(
                "mprotect: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(ro)
    }

    fn addr(&self) -> usize {
        self.page as usize
    }
}

impl Drop for ReadOnlyArgs {
    fn drop(&mut self) {
        // SAFETY: unmapping the page `new` mapped, which nothing references any more.
        unsafe { libc::munmap(self.page, crate::uapi::PAGE as usize) };
    }
}

/// What user space must not be able to do to the importer: an unknown ioctl is ENOTTY
/// (even with a bad pointer); a hold whose handle cannot be copied back is EFAULT and keeps
/// nothing (the leak oracle after this test would see the buffer otherwise); a second
/// attachment hold of one buffer is EBUSY (it would map the pages twice for one device, a
/// DMA-API debug WARNING), and possible again once the first is released.
pub fn misuse(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let imp = importer()?;
    let unknown = result_name(&imp.call_at(IMPORTER_NOT_AN_IOCTL, 0));
    ctx.fact("unknown ioctl, NULL argument", &unknown);
    ensure!(
        unknown == "ENOTTY",
        "unknown ioctl: {unknown}, expected ENOTTY"
    );

    let buf = heap.alloc(64 * 1024).context("alloc 64 KiB")?;
    for (what, req) in [
        ("HOLD", IMPORTER_HOLD),
        ("ATTACH_HOLD", IMPORTER_ATTACH_HOLD),
    ] {
        let args = ReadOnlyArgs::new(ImporterArgs {
            fd: buf.raw_fd(),
            op: OP_CHECKSUM,
            ..Default::default()
        })?;
        let r = result_name(&imp.call_at(req, args.addr()));
        ctx.fact(format!("{what} into a read-only argument"), &r);
        ensure!(
            r == "EFAULT",
            "{what} into a read-only argument: {r}, expected EFAULT"
        );
    }

    let first = imp
        .on(IMPORTER_ATTACH_HOLD, &buf, OP_CHECKSUM, 0)
        .context("first ATTACH_HOLD")?;
    let second = result_name(&imp.on(IMPORTER_ATTACH_HOLD, &buf, OP_CHECKSUM, 0));
    ctx.fact("second ATTACH_HOLD of one buffer", &second);
    let dup = buf.try_clone().context("dup")?;
    let via_dup = result_name(&imp.on(IMPORTER_ATTACH_HOLD, &dup, OP_CHECKSUM, 0));
    ctx.fact("ATTACH_HOLD through a dup of its fd", &via_dup);
    imp.release(first.handle).context("release the first")?;
    ensure!(
        second == "EBUSY",
        "second ATTACH_HOLD: {second}, expected EBUSY"
    );
    ensure!(
        via_dup == "EBUSY",
        "ATTACH_HOLD through a dup: {via_dup}, expected EBUSY"
    );
    let again = imp
        .on(IMPORTER_ATTACH_HOLD, &buf, OP_CHECKSUM, 0)
        .context("ATTACH_HOLD after the release")?;
    imp.release(again.handle).context("release")?;
    ctx.fact("ATTACH_HOLD after the release", "ok");
    Ok(())
}

/// Holds belong to the open file that made them: a process that exits between HOLD and
/// RELEASE leaves nothing held (the leak oracle after this test sees the buffer gone once
/// the test closes it), and its attachment hold no longer blocks another file's.
pub fn holds_die_with_their_file(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let buf = heap.alloc(64 * 1024).context("alloc 64 KiB")?;
    let fd = buf.raw_fd();
    let mut child = crate::process::spawn(std::time::Duration::from_secs(30), move || {
        // Its own open file: one inherited from the parent would outlive the child.
        let Ok(imp) = crate::uapi::Importer::open() else {
            return 4;
        };
        let vmap = imp.on_fd(IMPORTER_HOLD, fd, OP_CHECKSUM, 0);
        let att = imp.on_fd(IMPORTER_ATTACH_HOLD, fd, OP_CHECKSUM, 0);
        // Exits holding both: the file's release must undo them.
        i32::from(vmap.is_err()) + 2 * i32::from(att.is_err())
    })
    .context("fork")?;
    let code = child
        .wait(std::time::Duration::from_secs(30))
        .map_err(Stop::Fail)?;
    ensure!(
        code == 0,
        "the child's HOLD or ATTACH_HOLD failed (exit {code}: 1 HOLD, 2 ATTACH_HOLD, 3 both, 4 open)"
    );
    let imp = importer()?;
    let after = result_name(
        &imp.on(IMPORTER_ATTACH_HOLD, &buf, OP_CHECKSUM, 0)
            .and_then(|a| imp.release(a.handle)),
    );
    ctx.fact("ATTACH_HOLD after the holding process exited", &after);
    ensure!(
        after == "ok",
        "ATTACH_HOLD after the holding process exited: {after}, expected ok (its hold outlived its file)"
    );
    Ok(())
}

/// The soft-lockup threshold (seconds; a lockup is reported after twice this).
const WATCHDOG_THRESH: &str = "/proc/sys/kernel/watchdog_thresh";

/// Bytes the long-loop test has the importer checksum and fill through a vmap: 3.6 s under
/// KASAN and TCG (0.9 s per 64 MiB, measured 2026-11-30), longer than the lowered
/// soft-lockup threshold of 2 s.
const LONG_LOOP_BYTES: u64 = 256 * MIB;

/// The importer's byte loops yield the CPU: with the soft-lockup threshold lowered to 1 s (a
/// report after 2 s), a checksum and fill of a large buffer through a vmap must not make the
/// kernel report a soft lockup (the kernel is built without preemption, so a loop that never
/// calls `cond_resched` holds its CPU until it ends). The page walk yields the same way; a
/// walk long enough to prove it would take 512 MiB, so it is not part of this test.
pub fn long_loops_yield(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let imp = importer()?;
    let buf = heap.alloc(LONG_LOOP_BYTES).context("alloc")?;
    if !std::path::Path::new(WATCHDOG_THRESH).exists() {
        return Err(crate::expect::missing(
            "CONFIG_SOFTLOCKUP_DETECTOR",
            format!("{WATCHDOG_THRESH} is missing"),
        ));
    }
    let _thresh = crate::uapi::Knob::set(WATCHDOG_THRESH, "1")
        .context(format!("setting {WATCHDOG_THRESH} to 1"))?;
    let t = std::time::Instant::now();
    imp.on(IMPORTER_VMAP, &buf, OP_FILL, 0x5a)
        .context("importer VMAP fill")?;
    ctx.diag(format!(
        "long loops: {} MiB checksum and fill through a vmap in {:.1}s",
        LONG_LOOP_BYTES / MIB,
        t.elapsed().as_secs_f64()
    ));
    ctx.fact(
        format!("{} MiB importer checksum and fill", LONG_LOOP_BYTES / MIB),
        "no soft lockup",
    );
    Ok(())
}

/// Kernel-side begin/end CPU access, including an END without BEGIN.
pub fn kernel_cpu_access(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let imp = importer()?;
    let buf = heap.alloc(LEN).context("alloc")?;
    for (label, end) in [("begin", 0), ("end", 1), ("end without begin", 1)] {
        let mut a = ImporterArgs {
            fd: buf.raw_fd(),
            end,
            ..Default::default()
        };
        let v = crate::harness::result_name(&imp.call(IMPORTER_CPU_ACCESS, &mut a));
        ctx.fact(format!("kernel {label}"), &v);
        // An unmatched END succeeds, as SYNC END does for user space.
        ensure!(v == "ok", "kernel {label}: {v}, expected ok");
    }
    Ok(())
}
