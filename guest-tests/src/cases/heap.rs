//! Heap behaviour seen from user space: allocation, zeroing, mmap bounds, SYNC brackets,
//! and (for heaps with counters) what the heap did in the kernel.

use crate::ensure;
use crate::expect::stats;
use crate::harness::{errno_name, result_name, Context, Ctx, Outcome, Stop};
use crate::process::{spawn_with, Exit};
use crate::uapi::{
    fd_size, heap_stats, Access, Heap, IonCompat, DMA_BUF_SYNC_END, DMA_BUF_SYNC_RW,
};
use std::time::Duration;

use crate::uapi::PAGE;
use heaprig_protocol::bench::OURS;

use super::{KIB, MIB};

const RDWR_CLOEXEC: u32 = (libc::O_RDWR | libc::O_CLOEXEC) as u32;

/// Allocation sizes and flags every heap must handle the same way. A size the kernel rounds
/// up records the resulting dma-buf size. Sizes that could exhaust memory are not here: the
/// C system heap allocates until the OOM killer runs (see `rust_heap_huge_alloc`).
pub fn alloc_sizes(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    // (label, length, fd flags, heap flags, what the uapi promises)
    let table: &[(&str, u64, u32, u64, &str)] = &[
        ("4 KiB", 4 * KIB, RDWR_CLOEXEC, 0, "ok, size 4096"),
        ("1 MiB", MIB, RDWR_CLOEXEC, 0, "ok, size 1048576"),
        ("64 MiB", 64 * MIB, RDWR_CLOEXEC, 0, "ok, size 67108864"),
        ("1 byte", 1, RDWR_CLOEXEC, 0, "ok, size 4096"),
        ("4097 bytes", 4097, RDWR_CLOEXEC, 0, "ok, size 8192"),
        ("0 bytes", 0, RDWR_CLOEXEC, 0, "EINVAL"),
        ("u64::MAX bytes", u64::MAX, RDWR_CLOEXEC, 0, "EINVAL"),
        ("bad fd_flags", 4 * KIB, 0x8000_0000, 0, "EINVAL"),
        ("bad heap_flags", 4 * KIB, RDWR_CLOEXEC, 1, "EINVAL"),
    ];
    let mut wrong = Vec::new();
    for (label, len, fd_flags, heap_flags, want) in table {
        let r = heap.alloc_raw(*len, *fd_flags, *heap_flags);
        let v = match &r {
            Ok(b) => format!("ok, size {}", fd_size(b.raw_fd()).context("lseek")?),
            Err(_) => result_name(&r),
        };
        if v != *want {
            wrong.push(format!("alloc {label}: {v}, expected {want}"));
        }
        ctx.fact(format!("alloc {label}"), v);
    }
    ensure!(wrong.is_empty(), "{}", wrong.join("; "));
    Ok(())
}

/// Freed memory must never reach the next user: dirty buffers, free them, allocate again.
pub fn zeroing(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let len = 2 * MIB;
    for round in 0..4 {
        let buf = heap.alloc(len).context("alloc 2 MiB")?;
        let mut map = buf.mmap(0, len as usize).context("mmap")?;
        buf.sync_start(Access::ReadWrite).context("SYNC START")?;
        let dirty = map.as_slice().iter().filter(|&&b| b != 0).count();
        map.as_mut_slice().fill(0xee);
        buf.sync_end(Access::ReadWrite).context("SYNC END")?;
        ensure!(
            dirty == 0,
            "round {round}: fresh buffer had {dirty} non-zero bytes"
        );
    }
    ctx.fact(
        "fresh buffers zeroed",
        "yes (4 rounds of 2 MiB, dirtied before free)",
    );
    Ok(())
}

/// mmap within, across and past the end; the last page; mremap growth.
/// `MAP_PRIVATE` is copy-on-write: CPU writes would go to anonymous copies no device sees.
/// Ours refuses every private mapping (EINVAL). Before it did, a private mapping of a buffer
/// held in one contiguous chunk succeeded and one spanning two chunks failed, by physical
/// layout alone. The C heap maps page by page, and `remap_pfn_range` on a copy-on-write VMA
/// must cover it whole, so it maps one page and refuses more; that is recorded, not asserted.
pub fn mmap_private(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let len = 16 * PAGE;
    let buf = heap.alloc(len).context("alloc 64 KiB")?;
    for (label, n) in [("1 page", PAGE), ("16 pages", len)] {
        let r = buf.mmap_private(0, n as usize);
        let v = result_name(&r);
        ctx.fact(format!("MAP_PRIVATE {label}"), &v);
        if heap.name == OURS {
            ensure!(v == "EINVAL", "MAP_PRIVATE {label}: {v}, expected EINVAL");
        }
    }
    Ok(())
}

pub fn mmap_bounds(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let len = 16 * PAGE;
    let buf = heap.alloc(len).context("alloc 64 KiB")?;
    {
        let mut full = buf.mmap(0, len as usize).context("full mmap")?;
        buf.sync_start(Access::Write).context("SYNC START")?;
        for (i, b) in full.as_mut_slice().iter_mut().enumerate() {
            *b = (i / PAGE as usize) as u8 + 1;
        }
        buf.sync_end(Access::Write).context("SYNC END")?;
    }
    // (label, offset, length, accepted): a partial mapping must show the pages at its
    // offset; a mapping reaching past the buffer must be refused with EINVAL.
    let table: &[(&str, u64, u64, bool)] = &[
        ("full", 0, len, true),
        ("offset 1 page, 2 pages", PAGE, 2 * PAGE, true),
        ("last page", len - PAGE, PAGE, true),
        ("past the end", len, PAGE, false),
        ("straddling the end", len - PAGE, 2 * PAGE, false),
        ("one page too long", 0, len + PAGE, false),
        ("huge offset", 1 << 50, PAGE, false),
    ];
    for (label, off, n, accepted) in table {
        let v = match buf.mmap(*off, *n as usize) {
            Ok(m) => {
                ensure!(
                    *accepted,
                    "mmap {label} succeeded; it reaches past the buffer"
                );
                buf.sync_start(Access::Read).context("SYNC START")?;
                // Every byte: each page holds its own index + 1, so a swapped or shifted
                // page anywhere in the mapping shows.
                let bad =
                    m.as_slice().iter().enumerate().find(|&(i, &b)| {
                        b != ((off / PAGE) as usize + i / PAGE as usize) as u8 + 1
                    });
                buf.sync_end(Access::Read).context("SYNC END")?;
                if let Some((i, &b)) = bad {
                    return Err(Stop::Fail(format!(
                        "mmap {label}: byte {i} (page {}) reads {b}, expected {}",
                        i / PAGE as usize,
                        ((off / PAGE) as usize + i / PAGE as usize) as u8 + 1
                    )));
                }
                "ok, content matches".to_string()
            }
            Err(e) => {
                let name = crate::harness::errno_name(&e);
                ensure!(
                    !*accepted && name == "EINVAL",
                    "mmap {label}: {name}, expected {}",
                    if *accepted { "success" } else { "EINVAL" }
                );
                name
            }
        };
        ctx.fact(format!("mmap {label}"), v);
    }
    // The last page, grown by one: past the buffer's end.
    let map = buf
        .mmap(len - PAGE, PAGE as usize)
        .context("mmap for mremap")?;
    let v = match map.mremap_grow(2 * PAGE as usize) {
        // VM_DONTEXPAND (remap_pfn_range mappings): mremap says EFAULT.
        Err(e) => {
            let v = errno_name(&e);
            ensure!(
                v == "EFAULT",
                "mremap growth of a dma-buf mapping: {v}, expected EFAULT"
            );
            v
        }
        // A fault-handler mapping grows; the page past the end must then SIGBUS (the CMA
        // heap's off-by-one, fixed in 2024, handed out the page after the buffer instead).
        Ok(grown) => {
            let (mut child, _) = spawn_with(Duration::from_secs(10), grown, |g| {
                // SAFETY: a read of the grown mapping's second page, inside the mapping.
                let b =
                    unsafe { std::ptr::read_volatile(g.as_slice().as_ptr().add(PAGE as usize)) };
                i32::from(b)
            })
            .context("fork")?;
            let end = child.wait_exit().context("wait")?;
            ensure!(
                end == Exit::Signal(libc::SIGBUS),
                "mremap grew the last page's mapping and the page past the buffer's end read \
                 without SIGBUS ({end:?}): the fault handler hands out memory past the buffer"
            );
            "grows; the page past the end: SIGBUS".to_string()
        }
    };
    ctx.fact("mremap growth", &v);
    Ok(())
}

/// A storm of END without START, as the 2018 thread's malicious client sent; then a normal
/// bracket must still work and the data must be intact. Heaps with counters must have
/// counted every unmatched END.
pub fn sync_end_storm(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    const STORM: u64 = 100_000;
    let buf = heap.alloc(MIB).context("alloc 1 MiB")?;
    let mut map = buf.mmap(0, MIB as usize).context("mmap")?;
    buf.sync_start(Access::Write).context("SYNC START")?;
    map.as_mut_slice().fill(0x42);
    buf.sync_end(Access::Write).context("SYNC END")?;
    let before = stats(&heap.name)?;
    let mut errors = 0u64;
    for _ in 0..STORM {
        if buf.sync_raw(DMA_BUF_SYNC_END | DMA_BUF_SYNC_RW).is_err() {
            errors += 1;
        }
    }
    let after = stats(&heap.name)?;
    ctx.fact("END without START x100000", format!("{errors} errors"));
    // user space relies on SYNC END succeeding (the C heap never fails it).
    ensure!(errors == 0, "{errors} of {STORM} unmatched ENDs failed");
    buf.sync_start(Access::Read)
        .context("SYNC START after the storm")?;
    let intact = map.as_slice().iter().all(|&b| b == 0x42);
    buf.sync_end(Access::Read)
        .context("SYNC END after the storm")?;
    ensure!(intact, "buffer content changed during the END storm");
    ctx.fact("bracket after the storm", "ok, content intact");
    match (before, after) {
        (Some(b), Some(a)) => {
            let counted =
                a["unmatched_end_cpu_access"] as i64 - b["unmatched_end_cpu_access"] as i64;
            ctx.fact("unmatched ENDs counted", counted);
            ensure!(
                counted == STORM as i64,
                "counted {counted} unmatched ENDs, sent {STORM}"
            );
            ensure!(
                a["current_vmaps"] == b["current_vmaps"],
                "the storm changed current_vmaps: {} -> {}",
                b["current_vmaps"],
                a["current_vmaps"]
            );
        }
        _ => ctx.fact("unmatched ENDs counted", "heap has no counters"),
    }
    Ok(())
}

/// A counter of the heap, read now.
pub(super) fn counter(heap: &Heap, key: &str) -> Result<u64, Stop> {
    heap_stats(&heap.name)
        .and_then(|s| s.get(key).copied())
        .ok_or_else(|| Stop::Fail(format!("{} has no counter {key}", heap.name)))
}

/// A counter of the heap, as i64 so differences never wrap.
fn stat(heap: &Heap, key: &str) -> Result<i64, Stop> {
    counter(heap, key).map(|v| v as i64)
}

/// START/END must not create a kernel mapping (the ION regression), with the switch off.
pub fn rust_heap_sync_without_kernel_mapping(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let _off = IonCompat::set(&heap.name, false).context("ion_compat off")?;
    let buf = heap.alloc(MIB).context("alloc 1 MiB")?;
    let created = stat(heap, "kernel_mappings_created")?;
    let begins = stat(heap, "begin_cpu_access")?;
    for _ in 0..1000 {
        buf.sync_start(Access::ReadWrite).context("SYNC START")?;
        buf.sync_end(Access::ReadWrite).context("SYNC END")?;
    }
    let created_after = stat(heap, "kernel_mappings_created")?;
    ctx.fact(
        "begin_cpu_access calls",
        stat(heap, "begin_cpu_access")? - begins,
    );
    ctx.fact(
        "kernel mappings created by 1000 START/END",
        created_after - created,
    );
    ensure!(
        created_after == created,
        "START/END created kernel mappings"
    );
    Ok(())
}

/// With `ion_compat` on, START creates a kernel mapping and END drops it, as old ION did.
pub fn rust_heap_ion_compat(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let buf = heap.alloc(MIB).context("alloc 1 MiB")?;
    let _on = IonCompat::set(&heap.name, true).context("ion_compat on")?;
    let created = stat(heap, "kernel_mappings_created")?;
    let current = stat(heap, "current_vmaps")?;
    buf.sync_start(Access::ReadWrite).context("SYNC START")?;
    let during = stat(heap, "current_vmaps")? - current;
    buf.sync_end(Access::ReadWrite).context("SYNC END")?;
    let after = stat(heap, "current_vmaps")?;
    let made = stat(heap, "kernel_mappings_created")? - created;
    ctx.fact("mappings created by one START", made);
    ctx.fact("live mappings during the bracket", during);
    ctx.fact("live mappings after END", after - current);
    ensure!(
        made == 1 && during == 1 && after == current,
        "ION mode did not map per START"
    );
    // An END storm in ION mode must not unmap anything it did not map.
    for _ in 0..1000 {
        buf.sync_end(Access::ReadWrite).context("SYNC END")?;
    }
    ensure!(
        stat(heap, "current_vmaps")? == current,
        "END storm in ION mode changed current_vmaps"
    );
    ctx.fact("END storm in ION mode", "harmless");
    Ok(())
}

/// One step of [`rust_heap_ion_meets_importer`].
#[derive(Clone, Copy, Debug)]
enum IonStep {
    /// SYNC START (read-write): in ION mode, a kernel mapping reference.
    Start,
    /// SYNC END.
    End,
    /// 100 SYNC ENDs in a row, the seed thread's refcount attack.
    EndStorm,
    /// Importer VMAP (checksum), vmapped and vunmapped inside the call.
    Vmap,
    /// Importer VMAP_TWICE: two nested vmaps must share one address.
    Twice,
    /// Importer HOLD: a vmap kept across calls.
    Hold,
    /// Importer RELEASE of the hold, whose checksum must be the user's pattern.
    Release,
}

/// ION mode (`ion_compat`: START maps, END unmaps, as old ION did) and importer vmaps on one
/// buffer, in both orders, with END storms in between. Whatever the order, there is one
/// kernel mapping, shared (exactly one created per sequence), the importer reads the user's
/// data through it, an END never drops a reference it does not own (so storms cannot unmap
/// the importer's mapping under it), and every sequence ends with no mapping left.
pub fn rust_heap_ion_meets_importer(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    use crate::expect::importer;
    use crate::uapi::importer::{
        checksum, IMPORTER_HOLD, IMPORTER_VMAP, IMPORTER_VMAP_TWICE, OP_CHECKSUM,
    };
    use IonStep::*;
    let imp = importer()?;
    let buf = heap.alloc(MIB).context("alloc 1 MiB")?;
    let pattern: Vec<u8> = (0..MIB as usize).map(|i| (i % 253) as u8).collect();
    {
        let mut m = buf.mmap(0, MIB as usize).context("mmap")?;
        m.as_mut_slice().copy_from_slice(&pattern);
    }
    let sum = checksum(&pattern);
    let _on = IonCompat::set(&heap.name, true).context("ion_compat on")?;
    let sequences: &[&[IonStep]] = &[
        &[Start, Vmap, End],
        &[Start, Hold, End, Release],
        &[Hold, Start, End, Release],
        &[Hold, Start, EndStorm, Start, Release, End],
        &[Hold, EndStorm, Vmap, Release],
        &[Start, Twice, EndStorm],
        &[Hold, Twice, Start, Twice, Release, End],
    ];
    for seq in sequences {
        let label = format!("{seq:?}");
        let created = stat(heap, "kernel_mappings_created")?;
        let live = stat(heap, "current_vmaps")?;
        let mut handle = None;
        for step in *seq {
            let fail = |what: String| Stop::Fail(format!("{label}: {step:?}: {what}"));
            match step {
                Start => buf.sync_start(Access::ReadWrite).context("SYNC START")?,
                End => buf.sync_end(Access::ReadWrite).context("SYNC END")?,
                EndStorm => {
                    for _ in 0..100 {
                        buf.sync_end(Access::ReadWrite).context("SYNC END")?;
                    }
                }
                Vmap | Twice => {
                    let req = if matches!(step, Vmap) {
                        IMPORTER_VMAP
                    } else {
                        IMPORTER_VMAP_TWICE
                    };
                    let a = imp.on(req, &buf, OP_CHECKSUM, 0).context("importer vmap")?;
                    if a.checksum != sum {
                        return Err(fail(format!(
                            "read {:#x}, the user wrote {sum:#x}",
                            a.checksum
                        )));
                    }
                    if matches!(step, Twice) && a.shared != 1 {
                        return Err(fail("two nested vmaps got two addresses".into()));
                    }
                }
                Hold => {
                    let a = imp
                        .on(IMPORTER_HOLD, &buf, OP_CHECKSUM, 0)
                        .context("HOLD")?;
                    handle = Some(a.handle);
                }
                Release => {
                    let h = handle
                        .take()
                        .ok_or_else(|| fail("no hold to release".into()))?;
                    let a = imp.release(h).context("RELEASE")?;
                    if a.checksum != sum {
                        return Err(fail(format!(
                            "the held mapping read {:#x}, the user wrote {sum:#x}",
                            a.checksum
                        )));
                    }
                }
            }
            if stat(heap, "current_vmaps")? - live > 1 {
                return Err(fail("more than one kernel mapping of one buffer".into()));
            }
        }
        let made = stat(heap, "kernel_mappings_created")? - created;
        let left = stat(heap, "current_vmaps")? - live;
        ctx.fact(
            format!("{label}: mappings created, left"),
            format!("{made}, {left}"),
        );
        ensure!(
            made == 1,
            "{label}: {made} kernel mappings created, expected one shared"
        );
        ensure!(
            left == 0,
            "{label}: {left} kernel mapping(s) left after the sequence"
        );
    }
    Ok(())
}

/// A request larger than RAM fails at once with ENOMEM: no OOM killer, no splat.
pub fn rust_heap_huge_alloc(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let refused = stat(heap, "alloc_refused_too_large")?;
    for (label, len) in [("1 TiB", 1u64 << 40), ("2^62 bytes", 1u64 << 62)] {
        let v = result_name(&heap.alloc(len));
        ctx.fact(format!("alloc {label}"), &v);
        ensure!(v == "ENOMEM", "alloc {label}: {v}, expected ENOMEM");
    }
    // Refused up front by the size check, not after an allocation loop ran out of memory.
    let counted = stat(heap, "alloc_refused_too_large")? - refused;
    ctx.fact("refused as too large", counted);
    ensure!(
        counted == 2,
        "{counted} of 2 huge requests were refused by the size check"
    );
    Ok(())
}

/// Live buffer and byte counters follow allocations and frees.
pub fn rust_heap_stats_track_buffers(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let sizes = [4 * KIB, MIB, 3 * MIB];
    let b0 = stat(heap, "live_buffers")?;
    let y0 = stat(heap, "live_bytes")?;
    let bufs: Vec<_> = sizes
        .iter()
        .map(|&n| heap.alloc(n))
        .collect::<Result<_, _>>()
        .context("alloc")?;
    let open = (
        stat(heap, "live_buffers")? - b0,
        stat(heap, "live_bytes")? - y0,
    );
    ctx.fact("live buffers with 3 open", open.0);
    ctx.fact("live bytes with 3 open", open.1);
    drop(bufs);
    let closed = (
        stat(heap, "live_buffers")? - b0,
        stat(heap, "live_bytes")? - y0,
    );
    ctx.fact("live buffers after close", closed.0);
    ctx.fact("live bytes after close", closed.1);
    let total: u64 = sizes.iter().sum();
    ensure!(
        open == (3, total as i64),
        "with 3 open: {} buffers, {} bytes; expected 3, {total}",
        open.0,
        open.1
    );
    ensure!(
        closed == (0, 0),
        "after close: {} buffers, {} bytes still counted",
        closed.0,
        closed.1
    );
    Ok(())
}
