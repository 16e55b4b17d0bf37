//! A seeded fuzzer for a dma-buf heap fd and the dma-buf fds it returns.
//!
//! Every choice comes from a splitmix64 stream and a model of what is live (buffers, their
//! fds, mappings, importer holds and expected content), so a seed replays the same operation
//! sequence on the same kernel. Each operation's outcome is checked against the model and
//! the kernel's taint flags are re-read after every operation, so a WARN or a KASAN report
//! is pinned to the operation that caused it. A failure names the seed and the operation
//! index; `max_ops = index + 1` replays up to and including the failing operation.
//!
//! Where things are: `ops` is the operation table (name, weight, availability, step);
//! `ops_buf` and `ops_importer` hold the steps; `state` is the fuzzer's state and shared
//! helpers; `model` the model of live buffers; `gen` the argument generators; `expect` what
//! the kernel must answer; `rng` the PRNG; `crate::taint` the kernel taint check.

mod expect;
mod gen;
mod model;
mod ops;
mod ops_buf;
mod ops_importer;
mod rng;
mod state;

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::harness::{Ctx, Outcome, Stop};
use crate::uapi::{importer, Heap};

use self::ops::{available, choose_op, OPS, OP_COUNT};
use self::rng::Rng;
use self::state::Fuzz;
use crate::taint::Taint;

/// Live buffers the model keeps at most; each is at most 2 MiB, so content tracking is cheap.
const MAX_BUFS: usize = 8;
/// Operations shown when a run fails.
const RING: usize = 16;

/// Lengths from here on exceed any test VM's RAM and must fail.
const HUGE_MIN: u64 = 1 << 40;
/// fd_flags the dma-heap core accepts (`DMA_HEAP_VALID_FD_FLAGS`).
const VALID_FD_FLAGS: u32 = (libc::O_CLOEXEC | libc::O_ACCMODE) as u32;
const RDWR: u32 = libc::O_RDWR as u32;
const RDWR_CLOEXEC: u32 = (libc::O_RDWR | libc::O_CLOEXEC) as u32;

const DEFAULT_BUDGET: Duration = Duration::from_secs(10);

/// What a fuzz run does: the seed picks every operation; the run ends at `budget` or after
/// `max_ops` operations, whichever comes first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub seed: u64,
    pub budget: Duration,
    pub max_ops: Option<u64>,
}

impl Config {
    /// A fresh seed (clock nanoseconds mixed with getrandom when it has entropy), no op limit.
    pub fn from_time(budget: Duration) -> Config {
        Config {
            seed: fresh_seed(),
            budget,
            max_ops: None,
        }
    }
}

fn fresh_seed() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    let nanos = (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64);
    let mut b = [0u8; 8];
    // SAFETY: `b` is writable for exactly the length passed. GRND_NONBLOCK: early in a VM's
    // boot the pool may not be ready, and then the clock alone seeds.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    let random = if n == b.len() as isize {
        u64::from_ne_bytes(b)
    } else {
        0
    };
    Rng::new(nanos ^ (u64::from(std::process::id()) << 40)).u64() ^ random
}

static CONFIG: Mutex<Option<Config>> = Mutex::new(None);

/// Sets the configuration `case` uses; main calls it before tests fork.
pub fn set_config(c: Config) {
    *CONFIG.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
}

/// What `set_config` stored, else a fresh seed with a 10 s budget.
pub fn config() -> Config {
    let stored = CONFIG.lock().unwrap_or_else(|p| p.into_inner()).clone();
    stored.unwrap_or_else(|| Config::from_time(DEFAULT_BUDGET))
}

/// The test-table entry: fuzzes `heap` with the process-wide configuration. The budget is
/// CPU time: beside other heaps' columns on fewer CPUs, the run is longer by their share.
pub fn case(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let cfg = config();
    let budget = ctx.wall_for(cfg.budget);
    if budget != cfg.budget {
        ctx.diag(format!(
            "fuzz: {} columns side by side on fewer CPUs: {:.1}s of wall time for a {}s budget",
            ctx.beside,
            budget.as_secs_f64(),
            budget_str(cfg.budget)
        ));
    }
    run(ctx, heap, &Config { budget, ..cfg })
}

/// The last few operations: index, description, result.
#[derive(Debug)]
struct Ring {
    cap: usize,
    items: VecDeque<(u64, String, String)>,
}

impl Ring {
    fn new(cap: usize) -> Ring {
        Ring {
            cap,
            items: VecDeque::with_capacity(cap),
        }
    }

    fn push(&mut self, n: u64, desc: String, result: String) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back((n, desc, result));
    }
}

fn fail_line(heap: &str, seed: u64, n: u64, desc: &str, what: &str) -> String {
    format!(
        "fuzz seed {seed} op {n} ({desc}): {what}; replay: cargo xtask fuzz --heap {heap} --seed {seed} --ops {}",
        n + 1
    )
}

fn budget_str(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{:.3}", d.as_secs_f64())
    }
}

/// Prints the seed and logs it to the kernel log, so it survives a panic of either.
fn announce(heap: &str, cfg: &Config) {
    let mut out = io::stdout().lock();
    let _ = writeln!(
        out,
        "# fuzz: heap={heap} seed={} budget={}s",
        cfg.seed,
        budget_str(cfg.budget)
    );
    let _ = out.flush();
    if let Ok(mut k) = OpenOptions::new().write(true).open("/dev/kmsg") {
        let line = heaprig_protocol::kmsg::fuzz_seed(heap, cfg.seed);
        let _ = k.write_all(format!("{line}\n").as_bytes());
    }
}

fn push_last_ops(ctx: &mut Ctx, ring: &Ring) {
    for (n, desc, result) in &ring.items {
        ctx.diag(format!("fuzz: last op {n}: {desc} -> {result}"));
    }
}

/// The fuzzer: runs operations until the budget or `max_ops`, then tears down in order.
pub fn run(ctx: &mut Ctx, heap: &Heap, cfg: &Config) -> Outcome {
    let seed = cfg.seed;
    announce(&heap.name, cfg);
    // ION mode on odd seeds, on a heap that has it: every START then maps the buffer in the
    // kernel as old ION did, so importer vmaps, holds and END storms meet that mapping. The
    // seed decides, so a replay gets the same mode.
    let _ion = if crate::uapi::IonCompat::available(&heap.name) {
        let on = seed % 2 == 1;
        ctx.diag(format!(
            "fuzz: ion_compat {} (the seed is {})",
            if on { "on" } else { "off" },
            if on { "odd" } else { "even" }
        ));
        Some(
            crate::uapi::IonCompat::set(&heap.name, on)
                .map_err(|e| Stop::Fail(format!("fuzz: setting ion_compat: {e}")))?,
        )
    } else {
        None
    };
    let mut taint = match Taint::open() {
        Ok(t) => Some(t),
        Err(e) => {
            ctx.diag(format!(
                "fuzz: cannot read /proc/sys/kernel/tainted ({e}); taint is not checked"
            ));
            None
        }
    };
    let imp = crate::expect::optional_importer()?;
    if imp.is_none() {
        ctx.diag(format!(
            "fuzz: no {} (kernel built without it); importer operations skipped",
            importer::IMPORTER_DEV
        ));
    }
    let mut f = Fuzz {
        heap,
        rng: Rng::new(seed),
        imp,
        bufs: Vec::new(),
        next_id: 0,
        closed: Vec::new(),
        released: Vec::new(),
        other_fd: taint.as_ref().map(|t| t.file.as_raw_fd()),
    };
    let mut ring = Ring::new(RING);
    let mut counts = [0u64; OP_COUNT];
    let start = Instant::now();
    let mut n = 0u64;
    while cfg.max_ops.is_none_or(|m| n < m) && start.elapsed() < cfg.budget {
        let avail = available(&f);
        let Some(i) = choose_op(&mut f.rng, &avail) else {
            break;
        };
        let op = &OPS[i];
        counts[i] += 1;
        let mut desc = op.name.to_string();
        let mut r = (op.step)(&mut f, &mut desc);
        if r.is_ok() {
            if let Some(t) = &mut taint {
                if let Err(e) = t.check(|| format!("op {n}")) {
                    r = Err(e);
                }
            }
        }
        match r {
            Ok(result) => ring.push(n, desc, result),
            Err(what) => {
                let line = fail_line(&heap.name, seed, n, &desc, &what);
                ring.push(n, desc, format!("UNEXPECTED: {what}"));
                push_last_ops(ctx, &ring);
                return Err(Stop::Fail(line));
            }
        }
        n += 1;
    }
    let elapsed = start.elapsed();
    let mut end = f.teardown();
    if end.is_ok() {
        if let Some(t) = &mut taint {
            end = t.check(|| "teardown".to_string());
        }
    }
    if let Err(what) = end {
        push_last_ops(ctx, &ring);
        return Err(Stop::Fail(format!(
            "fuzz seed {seed} teardown after {n} ops: {what}; replay: cargo xtask fuzz --heap {} --seed {seed} --ops {n}",
            heap.name
        )));
    }
    let secs = elapsed.as_secs_f64();
    ctx.diag(heaprig_protocol::fuzz::summary(&heap.name, seed, n, secs));
    let per_op: Vec<String> = OPS
        .iter()
        .zip(&counts)
        .map(|(o, c)| format!("{}={}", o.name, c))
        .collect();
    ctx.diag(format!("fuzz: op counts: {}", per_op.join(" ")));
    ctx.fact("fuzz", "no unexpected outcome");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_last_16_in_order() {
        let mut ring = Ring::new(RING);
        for n in 0..20u64 {
            ring.push(n, format!("op{n}"), "ok".to_string());
        }
        let kept: Vec<u64> = ring.items.iter().map(|(n, _, _)| *n).collect();
        assert_eq!(kept, (4..20).collect::<Vec<_>>());
        assert_eq!(ring.items.front().map(|i| i.1.as_str()), Some("op4"));
        let mut short = Ring::new(RING);
        short.push(0, "a".to_string(), "ok".to_string());
        assert_eq!(short.items.len(), 1);
    }

    #[test]
    fn failure_line_names_the_replay() {
        assert_eq!(
            fail_line(
                "system",
                77,
                41,
                "sync b0 fd 5 flags START|READ",
                "expected ok, got EINVAL"
            ),
            "fuzz seed 77 op 41 (sync b0 fd 5 flags START|READ): expected ok, got EINVAL; \
             replay: cargo xtask fuzz --heap system --seed 77 --ops 42"
        );
    }

    #[test]
    fn config_is_what_was_set() {
        let c = Config {
            seed: 123,
            budget: Duration::from_millis(1500),
            max_ops: Some(9),
        };
        set_config(c.clone());
        assert_eq!(config(), c);
        assert_eq!(budget_str(c.budget), "1.500");
        assert_eq!(budget_str(Duration::from_secs(10)), "10");
        let fresh = Config::from_time(Duration::from_secs(3));
        assert_eq!(fresh.budget, Duration::from_secs(3));
        assert_eq!(fresh.max_ops, None);
    }
}
