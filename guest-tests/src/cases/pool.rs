//! The page pool of our heap (`rust_system_heap/pool`): freed chunks are zeroed by a worker
//! and handed out again, and a shrinker gives them back under memory pressure. What must
//! hold: a pooled page is zero when user space sees it, on every order the pool keeps; the
//! pool empties when the kernel asks its shrinkers; real memory pressure takes the pool's
//! pages back without an OOM kill. (The leak oracle around every test takes pooled pages
//! off the heap's outstanding pages, so a page lost from the pool is still a leak.)

use std::fs;
use std::time::{Duration, Instant};

use super::heap::counter;
use crate::ensure;
use crate::harness::{Context, Ctx, Outcome, Stop};
use crate::process::{lock_memory, signal_name, spawn, Exit};
use crate::uapi::{Heap, Knob, MIB, PAGE};

/// Where the heap exposes its pool switch.
fn switch(heap: &Heap) -> String {
    format!("/sys/kernel/debug/{}_heap/pool", heap.name)
}

/// The pool switched off (emptied) and on again, so it starts empty; back to on after.
/// SKIP when the kernel charges heap pages to memory cgroups: the heap bypasses its pool
/// then (a pooled page would stay charged to the cgroup that first allocated it).
fn fresh_pool(heap: &Heap) -> Result<Knob, Stop> {
    if fs::read_to_string(super::memcg::PARAM).is_ok_and(|v| v.trim() == "Y") {
        return Err(Stop::Skip(
            "dma_heap.mem_accounting is on (the rig boots 7.x with it): the heap bypasses \
             its page pool, whose pages would stay charged to the cgroup that first \
             allocated them"
                .into(),
        ));
    }
    let path = switch(heap);
    // Off restores what was there before (on) when the test ends, however it ends.
    let knob = Knob::set(&path, "0").context(format!("writing 0 to {path}"))?;
    fs::write(&path, "1").context(format!("writing 1 to {path}"))?;
    ensure!(
        counter(heap, "pool_pages")? == 0,
        "the pool holds pages right after being switched off"
    );
    Ok(knob)
}

/// Waits (bounded) until the worker has zeroed everything freed so far.
fn wait_zeroed(heap: &Heap) -> Outcome {
    let t = Instant::now();
    while counter(heap, "pool_dirty_pages")? > 0 {
        ensure!(
            t.elapsed() < Duration::from_secs(20),
            "the pool's worker left {} page(s) unzeroed for 20 s",
            counter(heap, "pool_dirty_pages")?
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// One chunk of each order the heap allocates (0, 4, 8): allocated, dirtied through mmap,
/// freed, zeroed by the worker, then allocated again from the pool (the hit counter shows it
/// came from there) and read: every byte zero. Then the same without waiting for the worker:
/// a chunk still dirty must never be handed out.
pub fn pool_pages_zeroed(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let _on = fresh_pool(heap)?;
    for (label, len) in [
        ("order 0 (4 KiB)", PAGE),
        ("order 4 (64 KiB)", 16 * PAGE),
        ("order 8 (1 MiB)", MIB),
    ] {
        for wait in [true, false] {
            let buf = heap.alloc(len).context(format!("alloc {label}"))?;
            buf.mmap(0, len as usize)
                .context("mmap")?
                .as_mut_slice()
                .fill(0xa5);
            drop(buf);
            if wait {
                wait_zeroed(heap)?;
            }
            let hits = counter(heap, "pool_hits")?;
            let again = heap.alloc(len).context(format!("alloc {label} again"))?;
            let reused = counter(heap, "pool_hits")? - hits;
            let map = again.mmap(0, len as usize).context("mmap")?;
            let dirty = map.as_slice().iter().filter(|&&b| b != 0).count();
            ensure!(
                dirty == 0,
                "{label}: {dirty} non-zero byte(s) in a buffer allocated after a dirtied one \
                 was freed ({reused} chunk(s) from the pool)"
            );
            if wait {
                ensure!(
                    reused == 1,
                    "{label}: {reused} chunk(s) came from the pool, not the one freed and \
                     zeroed"
                );
                ctx.fact(label, "freed dirty, zeroed in the pool, reused: all zero");
            }
        }
    }
    Ok(())
}

/// Fills the pool with `bytes` of freed 1 MiB buffers and waits until they are zeroed;
/// returns the pooled pages.
fn fill_pool(heap: &Heap, bytes: u64) -> Result<u64, Stop> {
    let bufs = (0..bytes / MIB)
        .map(|_| heap.alloc(MIB))
        .collect::<Result<Vec<_>, _>>()
        .context("alloc 1 MiB buffers")?;
    drop(bufs);
    wait_zeroed(heap)?;
    let pooled = counter(heap, "pool_pages")?;
    ensure!(
        pooled * PAGE == bytes,
        "{} MiB freed, but the pool holds {pooled} page(s)",
        bytes / MIB
    );
    Ok(pooled)
}

/// The shrinker: `drop_caches` mode 2 asks every shrinker for all it can free, and the
/// pool must give back every page it holds.
pub fn pool_shrinker(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let _on = fresh_pool(heap)?;
    let pooled = fill_pool(heap, 16 * MIB)?;
    let shrunk = counter(heap, "pool_shrunk_pages")?;
    fs::write("/proc/sys/vm/drop_caches", "2").context("writing 2 to drop_caches")?;
    let left = counter(heap, "pool_pages")?;
    let given = counter(heap, "pool_shrunk_pages")? - shrunk;
    ensure!(
        left == 0 && given == pooled,
        "after drop_caches the pool holds {left} page(s) and its shrinker gave back {given} of \
         {pooled}"
    );
    ctx.fact(
        "16 MiB pooled, then drop_caches=2",
        "the shrinker gave back every page",
    );
    Ok(())
}

/// The heap the memory hog allocates from (never ours: ours would take the pool's pages
/// directly, with no pressure at all), and in what pieces.
const HOG_HEAP: &str = heaprig_protocol::bench::C_HEAP;
const HOG_CHUNK: u64 = 16 * MIB;
/// How much less than our heap could get with the pool off the memory hog asks for.
const HOG_MARGIN: u64 = 32 * MIB;

/// What our heap can allocate with its pool off, in [`HOG_CHUNK`] buffers, before ENOMEM
/// (ours fails rather than wake the OOM killer); all freed again before it returns.
fn capacity(heap: &Heap) -> Result<u64, Stop> {
    let mut held = Vec::new();
    loop {
        match heap.alloc(HOG_CHUNK) {
            Ok(b) => held.push(b),
            Err(e) if e.raw_os_error() == Some(libc::ENOMEM) => break,
            Err(e) => return Err(Stop::Fail(format!("measuring free memory: {e}"))),
        }
        ensure!(
            held.len() < 4096,
            "64 GiB allocated without ENOMEM: the heap does not run out"
        );
    }
    Ok(held.len() as u64 * HOG_CHUNK)
}

/// Real memory pressure. First what our heap can allocate with the pool off (it stops at
/// ENOMEM, never OOM-kills); then, with 64 MiB in the pool, a child allocates that much less
/// [`HOG_MARGIN`] from the C system heap: 32 MiB more than is free while the pool holds its
/// pages. The pool must give back at least half of that deficit; the rest may come from other
/// reclaimable memory (page cache, KASAN's quarantine: 7 MiB once in a 1 GiB guest, when the
/// test wanted all of it from the pool). A smaller margin is not safe: at 8 MiB the hog was
/// OOM-killed with the whole pool given back, since what our heap reaches before ENOMEM is
/// known only to within a 16 MiB chunk. The child volunteers as the OOM killer's victim
/// (oom_score_adj 1000): without the shrinker, it dies.
pub fn pool_memory_pressure(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let _on = fresh_pool(heap)?;
    // Measuring to ENOMEM reclaims all page cache, this binary's text with it; refaulting it
    // then needs memory there is none of (seen: the test OOM-killed in a targeted run).
    lock_memory().context("mlockall before running the machine out of memory")?;
    let path = switch(heap);
    fs::write(&path, "0").context(format!("writing 0 to {path}"))?;
    let free = capacity(heap)?;
    fs::write(&path, "1").context(format!("writing 1 to {path}"))?;
    let pool_bytes = 64 * MIB;
    fill_pool(heap, pool_bytes)?;
    let shrunk = counter(heap, "pool_shrunk_pages")?;
    let want = free.saturating_sub(HOG_MARGIN);
    let hog_heap = Heap::open(HOG_HEAP).context(format!("opening the {HOG_HEAP} heap"))?;
    let mut child = spawn(Duration::from_secs(60), move || {
        if fs::write("/proc/self/oom_score_adj", "1000").is_err() {
            return 254;
        }
        // Buffers of the C system heap, held until exit: 1 MiB chunks cost one page_owner
        // record each, where touching anonymous memory costs one per page (several times
        // slower under emulation).
        let mut held = Vec::new();
        let mut got = 0;
        while got < want {
            match hog_heap.alloc(HOG_CHUNK) {
                Ok(b) => held.push(b),
                Err(e) => return e.raw_os_error().unwrap_or(255).min(250),
            }
            got += HOG_CHUNK;
        }
        0
    })
    .context("fork the memory hog")?;
    let exit = child.wait_exit().context("wait for the memory hog")?;
    let given = counter(heap, "pool_shrunk_pages")? - shrunk;
    ctx.diag(format!(
        "the hog took {} MiB; the pool gave back {given} of {} page(s)",
        want / MIB,
        pool_bytes / PAGE
    ));
    match exit {
        Exit::Code(0) => {}
        Exit::Signal(sig) => {
            return Err(Stop::Fail(format!(
                "the memory hog ({} MiB, {} MiB less than was free before the pool held 64 \
                 MiB) died of {}: the pool gave back {given} page(s) of {}",
                want / MIB,
                HOG_MARGIN / MIB,
                signal_name(sig),
                pool_bytes / PAGE
            )))
        }
        Exit::Code(254) => {
            return Err(Stop::Fail(
                "the memory hog could not set its oom_score_adj".into(),
            ))
        }
        Exit::Code(n) => {
            return Err(Stop::Fail(format!(
                "the memory hog's {} MiB from the {HOG_HEAP} heap failed with {} (errno {n}): \
                 the pool gave back {given} page(s)",
                want / MIB,
                crate::harness::errno_name(&std::io::Error::from_raw_os_error(n))
            )))
        }
    }
    ensure!(
        given * PAGE >= HOG_MARGIN / 2,
        "the hog got its memory, but the pool gave back only {given} page(s)"
    );
    ctx.fact(
        format!(
            "64 MiB pooled, a process takes all but {} MiB of what was free before",
            HOG_MARGIN / MIB
        ),
        format!(
            "no OOM kill; the shrinker gave back at least {} MiB",
            HOG_MARGIN / 2 / MIB
        ),
    );
    Ok(())
}
