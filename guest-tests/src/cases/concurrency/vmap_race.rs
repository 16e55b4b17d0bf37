//! `vmap_sync_close_race`: kernel vmaps racing user SYNC brackets and the close of the
//! original fd.

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::expect::importer;
use crate::harness::{Context, Ctx, Outcome, Stop};
use crate::uapi::importer::{checksum, IMPORTER_HOLD, IMPORTER_VMAP, OP_CHECKSUM};
use crate::uapi::{Access, DmaBuf, Heap, Importer, MIB, PAGE};

use super::{check, fill, PHASE};

const RACE_LEN: usize = MIB as usize;
const RACE_SEED: u32 = 0x2ace;
/// Iteration caps per worker; each also stops at the end of the phase.
const RACE_VMAP_ITERS: u64 = 64;
const RACE_SYNC_ITERS: u64 = 2000;
const RACE_HOLD_ITERS: u64 = 64;

/// A number that differs from run to run, to vary when the racing close happens.
fn jitter() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u64::from(nanos ^ std::process::id().rotate_left(16))
}

// ---------------------------------------------------------------------------------------
// The test importer

/// `IMPORTER_VMAP` with `OP_CHECKSUM` on a raw fd: (checksum, bytes mapped).
fn vmap_checksum(imp: &Importer, fd: RawFd) -> io::Result<(u64, u64)> {
    let a = imp.on_fd(IMPORTER_VMAP, fd, OP_CHECKSUM, 0)?;
    Ok((a.checksum, a.pages))
}

/// A vmap the importer holds. Holds belong to the importer device, not to the open file, so
/// one a failing test forgot would pin its buffer for good: drop releases it.
struct HeldVmap<'a> {
    imp: &'a Importer,
    handle: Option<u64>,
}

impl<'a> HeldVmap<'a> {
    fn take(imp: &'a Importer, fd: RawFd) -> io::Result<HeldVmap<'a>> {
        let a = imp.on_fd(IMPORTER_HOLD, fd, OP_CHECKSUM, 0)?;
        Ok(HeldVmap {
            imp,
            handle: Some(a.handle),
        })
    }

    /// Releases the hold: (checksum of the held mapping, bytes it covered).
    fn release(mut self) -> io::Result<(u64, u64)> {
        let handle = self.handle.take().unwrap_or_default();
        Self::release_handle(self.imp, handle)
    }

    fn release_handle(imp: &Importer, handle: u64) -> io::Result<(u64, u64)> {
        let a = imp.release(handle)?;
        Ok((a.checksum, a.pages))
    }
}

impl Drop for HeldVmap<'_> {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            let _ = Self::release_handle(self.imp, handle);
        }
    }
}

// ---------------------------------------------------------------------------------------
// The race

/// What the racing threads share.
struct Race {
    start: Instant,
    deadline: Instant,
    /// Set once the original fd is closed.
    closed: AtomicBool,
    /// Set by the first worker that fails, so the others stop early.
    failed: AtomicBool,
    /// Iterations done by all workers together (the closer waits for some).
    progress: AtomicU64,
}

/// How much one racing worker did.
#[derive(Debug)]
struct Ran {
    iterations: u64,
    after_close: u64,
}

impl Race {
    /// Runs `step` until `cap` iterations or the end of the phase, but always at least once
    /// after the original fd was closed, so every worker races the close. The closer fires
    /// by mid-phase, so a phase and a half is only a backstop.
    fn run(
        &self,
        who: &str,
        cap: u64,
        mut step: impl FnMut(u64) -> Result<(), String>,
    ) -> Result<Ran, String> {
        let backstop = self.deadline + PHASE / 2;
        let mut ran = Ran {
            iterations: 0,
            after_close: 0,
        };
        loop {
            if self.failed.load(Ordering::Relaxed) {
                return Ok(ran);
            }
            let closed = self.closed.load(Ordering::Acquire);
            if let Err(e) = step(ran.iterations) {
                self.failed.store(true, Ordering::Relaxed);
                let when = if closed { "after" } else { "before" };
                return Err(format!(
                    "{who}, iteration {} ({when} the original fd was closed): {e}",
                    ran.iterations
                ));
            }
            ran.iterations += 1;
            ran.after_close += u64::from(closed);
            self.progress.fetch_add(1, Ordering::Relaxed);
            let now = Instant::now();
            let done = ran.iterations >= cap || now >= self.deadline;
            if ran.after_close > 0 && done {
                return Ok(ran);
            }
            if now >= backstop {
                // A worker that never ran after the close did not race it: not a pass.
                return Err(format!(
                    "{who}: no iteration after the original fd was closed ({} before it, \
                     stopped at the backstop)",
                    ran.iterations
                ));
            }
        }
    }

    /// Closes the original fd after a varying amount of the workers' progress (or at
    /// mid-phase, whichever comes first); returns the progress at the close.
    fn close_mid_run<T>(&self, buf: T) -> u64 {
        let target = 8 + jitter() % 56;
        let latest = self.start + PHASE / 2;
        while self.progress.load(Ordering::Relaxed) < target
            && Instant::now() < latest
            && !self.failed.load(Ordering::Relaxed)
        {
            thread::sleep(Duration::from_micros(200));
        }
        let at = self.progress.load(Ordering::Relaxed);
        drop(buf);
        self.closed.store(true, Ordering::Release);
        at
    }
}

/// Kernel vmaps (one-shot and held), user SYNC brackets on other fds and the close of the
/// original fd, all at once on one buffer; then a held vmap outlives the last fd.
pub fn vmap_sync_close_race(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let imp = importer()?;
    let buf = heap.alloc(RACE_LEN as u64).context("alloc 1 MiB")?;
    let sum = {
        let mut map = buf.mmap(0, RACE_LEN).context("mmap")?;
        buf.sync_start(Access::Write).context("SYNC START|WRITE")?;
        fill(map.as_mut_slice(), 0, RACE_SEED);
        buf.sync_end(Access::Write).context("SYNC END|WRITE")?;
        buf.sync_start(Access::Read).context("SYNC START|READ")?;
        let sum = checksum(map.as_slice());
        buf.sync_end(Access::Read).context("SYNC END|READ")?;
        sum
    };
    // Every worker gets its own fd before any thread starts: closing the original can then
    // never hand its number to something a worker uses.
    let dup_for = |who: &str| buf.try_clone().context(format!("dup for {who}"));
    let vmap_fd = dup_for("the vmap thread")?;
    let sync_fds = [dup_for("sync thread 0")?, dup_for("sync thread 1")?];
    let hold_fd = dup_for("the hold thread")?;
    let final_fd = dup_for("the final phase")?;

    let start = Instant::now();
    let race = Race {
        start,
        deadline: start + PHASE,
        closed: AtomicBool::new(false),
        failed: AtomicBool::new(false),
        progress: AtomicU64::new(0),
    };
    let (race, imp) = (&race, &imp);
    let results: Vec<Result<String, String>> = thread::scope(|s| {
        let mut spawned = Vec::new();
        spawned.push(
            thread::Builder::new()
                .name("closer".into())
                .spawn_scoped(s, move || {
                    let at = race.close_mid_run(buf);
                    Ok(format!("closer: closed the original fd at progress {at}"))
                }),
        );
        spawned.push(
            thread::Builder::new()
                .name("vmap".into())
                .spawn_scoped(s, move || {
                    let ran = race.run("vmap thread", RACE_VMAP_ITERS, |_| {
                        let (got, len) = vmap_checksum(imp, vmap_fd.raw_fd())
                            .map_err(|e| format!("IMPORTER_VMAP: {e}"))?;
                        expect_checksum("IMPORTER_VMAP", got, len, sum)
                    })?;
                    Ok(format!("vmap: {ran:?}"))
                }),
        );
        for (k, fd) in sync_fds.into_iter().enumerate() {
            spawned.push(
                thread::Builder::new()
                    .name(format!("sync-{k}"))
                    .spawn_scoped(s, move || {
                        let who = format!("sync thread {k}");
                        let ran = sync_reader(race, &who, fd)?;
                        Ok(format!("{who}: {ran:?}"))
                    }),
            );
        }
        spawned.push(
            thread::Builder::new()
                .name("hold".into())
                .spawn_scoped(s, move || {
                    let ran = race.run("hold thread", RACE_HOLD_ITERS, |_| {
                        let hold = HeldVmap::take(imp, hold_fd.raw_fd())
                            .map_err(|e| format!("IMPORTER_HOLD: {e}"))?;
                        let (got, len) = hold
                            .release()
                            .map_err(|e| format!("IMPORTER_RELEASE: {e}"))?;
                        expect_checksum("IMPORTER_RELEASE", got, len, sum)
                    })?;
                    Ok(format!("hold: {ran:?}"))
                }),
        );
        spawned
            .into_iter()
            .map(|w| match w {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err("a racing thread panicked".to_string())),
                Err(e) => {
                    // The threads already running must not wait for the closer.
                    race.failed.store(true, Ordering::Relaxed);
                    Err(format!("spawning a racing thread: {e}"))
                }
            })
            .collect()
    });
    let mut report = Vec::new();
    for r in results {
        report.push(r.map_err(Stop::Fail)?);
    }
    ctx.diag(format!(
        "race ({} ms): {}",
        start.elapsed().as_millis(),
        report.join("; ")
    ));
    ctx.fact(
        "race",
        "vmap + hold/release + 2 x SYNC READ + close of the original fd: content ok",
    );

    // The last fd closes while the importer holds a vmap: the hold alone keeps the buffer.
    let hold = HeldVmap::take(imp, final_fd.raw_fd()).context("IMPORTER_HOLD (final phase)")?;
    drop(final_fd);
    let (got, len) = hold
        .release()
        .context("IMPORTER_RELEASE after the last fd was closed")?;
    expect_checksum(
        "IMPORTER_RELEASE after the last fd was closed",
        got,
        len,
        sum,
    )
    .map_err(Stop::Fail)?;
    ctx.fact("held vmap after the last fd closed", "content intact");
    Ok(())
}

/// A kernel checksum must cover the whole racing buffer and equal what user space wrote.
fn expect_checksum(what: &str, got: u64, len: u64, want: u64) -> Result<(), String> {
    if len != RACE_LEN as u64 {
        return Err(format!("{what} covered {len} bytes, expected {RACE_LEN}"));
    }
    if got != want {
        return Err(format!(
            "{what} checksum {got:#018x}, expected {want:#018x} (what user space wrote)"
        ));
    }
    Ok(())
}

/// A racing SYNC READ thread: brackets on its own fd, checking one page (a different one
/// each time) through its own mapping inside each bracket.
fn sync_reader(race: &Race, who: &str, buf: DmaBuf) -> Result<Ran, String> {
    let map = buf
        .mmap(0, RACE_LEN)
        .map_err(|e| format!("{who}: mmap: {e}"))?;
    race.run(who, RACE_SYNC_ITERS, |n| {
        let page = (n as usize * 7) % (RACE_LEN / PAGE as usize);
        let base = page * PAGE as usize;
        buf.sync_start(Access::Read)
            .map_err(|e| format!("SYNC START|READ: {e}"))?;
        let seen = check(&map.as_slice()[base..base + PAGE as usize], base, RACE_SEED);
        buf.sync_end(Access::Read)
            .map_err(|e| format!("SYNC END|READ: {e}"))?;
        seen
    })
}

#[cfg(test)]
mod tests {
    use super::super::memfd_with;
    use super::*;

    #[test]
    fn race_workers_all_run_past_the_close_and_stop_in_time() {
        let start = Instant::now();
        let race = Race {
            start,
            deadline: start + Duration::from_millis(200),
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            progress: AtomicU64::new(0),
        };
        let race = &race;
        let (at, ran) = thread::scope(|s| {
            let closer = s.spawn(move || race.close_mid_run(memfd_with(&[0; 4])));
            let workers: Vec<_> = [3, 1_000_000]
                .into_iter()
                .map(|cap| {
                    s.spawn(move || {
                        race.run("w", cap, |_| {
                            thread::sleep(Duration::from_micros(100));
                            Ok(())
                        })
                    })
                })
                .collect();
            let ran: Vec<Ran> = workers
                .into_iter()
                .map(|w| w.join().unwrap().unwrap())
                .collect();
            (closer.join().unwrap(), ran)
        });
        assert!(at >= 8 || start.elapsed() >= PHASE / 2, "closed at {at}");
        for r in &ran {
            assert!(r.after_close > 0, "{r:?}");
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        // A failing step stops every worker.
        race.failed.store(false, Ordering::Relaxed);
        let e = race.run("w", 10, |_| Err("boom".into())).unwrap_err();
        assert!(
            e.contains("iteration 0 (after the original fd was closed): boom"),
            "{e}"
        );
        assert_eq!(race.run("v", 10, |_| Ok(())).unwrap().iterations, 0);
    }

    #[test]
    fn a_worker_that_never_runs_after_the_close_fails() {
        let start = Instant::now() - PHASE * 2;
        let race = Race {
            start,
            deadline: start + PHASE,
            closed: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            progress: AtomicU64::new(0),
        };
        let e = race.run("w", 10, |_| Ok(())).unwrap_err();
        assert!(
            e.contains("no iteration after the original fd was closed"),
            "{e}"
        );
    }
}
