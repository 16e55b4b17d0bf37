//! `threads_alloc_map_sync`: threads allocating, mapping and syncing at once.

use std::fmt::Display;
use std::thread;
use std::time::Instant;

use crate::harness::{Ctx, Outcome, Stop};
use crate::uapi::{Access, Heap, KIB, MIB};

use super::{check, fill, PHASE};

const THREADS: usize = 4;
const THREAD_SIZES: [usize; 3] = [4 * KIB as usize, 64 * KIB as usize, MIB as usize];
/// Per-thread iteration cap; the deadline usually ends the loop first under TCG.
const THREAD_ITERS: u64 = 48;

/// Four threads each allocate, map, write, sync and verify buffers of 4 KiB, 64 KiB and
/// 1 MiB in turn, each with its own pattern, all at once.
pub fn threads_alloc_map_sync(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let started = Instant::now();
    let deadline = started + PHASE;
    let results: Vec<Result<u64, String>> = thread::scope(|s| {
        let workers: Vec<_> = (0..THREADS)
            .map(|t| {
                thread::Builder::new()
                    .name(format!("alloc-{t}"))
                    .spawn_scoped(s, move || alloc_map_sync_worker(heap, t, deadline))
            })
            .collect();
        workers
            .into_iter()
            .enumerate()
            .map(|(t, w)| match w {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(format!("thread {t} panicked"))),
                Err(e) => Err(format!("spawning thread {t}: {e}")),
            })
            .collect()
    });
    let failed = results.iter().filter(|r| r.is_err()).count();
    let mut iterations = Vec::with_capacity(THREADS);
    for r in results {
        match r {
            Ok(n) => iterations.push(n),
            Err(e) => {
                return Err(Stop::Fail(format!(
                    "{e} ({failed} of {THREADS} threads failed)"
                )))
            }
        }
    }
    ctx.diag(format!(
        "iterations per thread: {iterations:?} in {} ms",
        started.elapsed().as_millis()
    ));
    ctx.fact("threads", "4 x alloc/mmap/write/sync/verify: ok");
    Ok(())
}

/// One thread of `threads_alloc_map_sync`: returns how many buffers it checked.
fn alloc_map_sync_worker(heap: &Heap, t: usize, deadline: Instant) -> Result<u64, String> {
    for iter in 0..THREAD_ITERS {
        // Every thread covers each size once before the deadline may stop it.
        if iter >= THREAD_SIZES.len() as u64 && Instant::now() >= deadline {
            return Ok(iter);
        }
        let len = THREAD_SIZES[(t + iter as usize) % THREAD_SIZES.len()];
        let seed = ((t as u32) << 16) | iter as u32;
        let at = |step: &str, e: &dyn Display| {
            format!("thread {t}, iteration {iter}, {len}-byte buffer: {step}: {e}")
        };
        let buf = heap.alloc(len as u64).map_err(|e| at("alloc", &e))?;
        let mut map = buf.mmap(0, len).map_err(|e| at("mmap", &e))?;
        buf.sync_start(Access::Write)
            .map_err(|e| at("SYNC START|WRITE", &e))?;
        fill(map.as_mut_slice(), 0, seed);
        buf.sync_end(Access::Write)
            .map_err(|e| at("SYNC END|WRITE", &e))?;
        buf.sync_start(Access::Read)
            .map_err(|e| at("SYNC START|READ", &e))?;
        let seen = check(map.as_slice(), 0, seed);
        buf.sync_end(Access::Read)
            .map_err(|e| at("SYNC END|READ", &e))?;
        seen.map_err(|e| at("reading back what it wrote", &e))?;
    }
    Ok(THREAD_ITERS)
}
