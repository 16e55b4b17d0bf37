//! Microbenchmarks, run in the guest by `cargo xtask bench` (never as tests: nothing fails
//! because a number moved). Each measurement is a list of per-iteration times; the host
//! computes median, p99 and min and the ratios between heaps.
//!
//! Variants are measured in the same boot and interleaved in small blocks (A, B, C, then
//! C, B, A, ...), so drift in the emulator or the page allocator hits them alike: every heap,
//! our heap with its page pool off (for allocations), and, for CPU-access brackets, our heap
//! with the ION-compatibility switch on (begin_cpu_access maps the buffer, as old ION did).
//! Each block starts with one untimed iteration, so a switch just flipped (the pool refilling
//! after being off) settles before anything is recorded.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use heaprig_protocol::bench::{ion_variant, pool_off_variant, Record};
use heaprig_protocol::heaps::CMA_NAMES;

use crate::uapi::importer::{
    ImporterArgs, IMPORTER_ATTACH_HOLD, IMPORTER_KMAP_WALK, IMPORTER_RELEASE, IMPORTER_VMAP,
    OP_CHECKSUM, OP_NONE,
};
use crate::uapi::{heap_names, Access, DmaBuf, Heap, Importer};

use crate::uapi::{KIB, MIB};
/// Iterations per variant before switching to the next one.
const BLOCK: usize = 20;

/// The alloc+close sizes and their iterations.
const ALLOC_SWEEP: [(u64, usize); 7] = [
    (4 * KIB, 2000),
    (64 * KIB, 1000),
    (256 * KIB, 500),
    (MIB, 200),
    (4 * MIB, 80),
    (16 * MIB, 30),
    (64 * MIB, 12),
];

/// What the memory hog leaves of `MemAvailable`.
const PRESSURE_FREE: u64 = 48 * MIB;

/// `MemAvailable`, in bytes.
fn mem_available() -> io::Result<u64> {
    std::fs::read_to_string("/proc/meminfo")?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * KIB)
        .ok_or_else(|| io::Error::other("/proc/meminfo has no MemAvailable"))
}

/// A child process holding all but [`PRESSURE_FREE`] of the available memory, touched and
/// sleeping; killed and reaped when dropped (by its `Child`).
struct Hog {
    child: crate::process::Child,
}

impl Hog {
    fn start() -> io::Result<Hog> {
        let take = mem_available()?.saturating_sub(PRESSURE_FREE) as usize;
        let mut child = crate::process::spawn(Duration::from_secs(900), move || {
            // The hog, not the benchmark, is what an OOM kill should take.
            let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
            let v = vec![1u8; take];
            std::hint::black_box(&v);
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        })?;
        // Ready once the memory is gone (bounded: the hog may die or never get there).
        let t = Instant::now();
        while mem_available()? > 2 * PRESSURE_FREE {
            if !child.is_running() || t.elapsed() > Duration::from_secs(120) {
                return Err(io::Error::other(
                    "it died or did not take its memory in 120 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Hog { child })
    }

    /// Whether it still holds its memory (the OOM killer may have taken it).
    fn alive(&mut self) -> bool {
        self.child.is_running()
    }
}

/// One measured operation on one variant.
pub struct Series {
    pub variant: String,
    pub op: &'static str,
    pub size: u64,
    pub nanos: Vec<u64>,
}

/// A heap, optionally with its `ion_compat` switch on or its page pool off while it is
/// measured.
struct Variant {
    name: String,
    heap: Heap,
    ion: bool,
    pool_off: bool,
}

impl Variant {
    fn new(heap: &str, ion: bool, pool_off: bool) -> io::Result<Variant> {
        let name = match (ion, pool_off) {
            (true, _) => ion_variant(heap),
            (false, true) => pool_off_variant(heap),
            (false, false) => heap.to_string(),
        };
        Ok(Variant {
            name,
            heap: Heap::open(heap)?,
            ion,
            pool_off,
        })
    }

    /// Puts the heap's switches (where it has them) in this variant's position.
    fn select(&self) {
        let dir = format!("/sys/kernel/debug/{}_heap", self.heap.name);
        let _ = std::fs::write(
            format!("{dir}/ion_compat"),
            if self.ion { "1" } else { "0" },
        );
        let _ = std::fs::write(format!("{dir}/pool"), if self.pool_off { "0" } else { "1" });
    }
}

/// The variants of `set` that are not on a CMA heap (whose area is small and, under memory
/// pressure, full of other pages).
fn without_cma(set: &[Variant]) -> io::Result<Vec<Variant>> {
    set.iter()
        .filter(|v| !CMA_NAMES.contains(&v.heap.name.as_str()))
        .map(|v| Variant::new(&v.heap.name, v.ion, v.pool_off))
        .collect()
}

/// Whether `heap` has a page pool to switch off.
fn has_pool(heap: &str) -> bool {
    std::path::Path::new(&format!("/sys/kernel/debug/{heap}_heap/pool")).exists()
}

/// Iterations scaled down for `--quick` (CI keeps the benchmarks working, not accurate).
fn iters(n: usize, quick: bool) -> usize {
    if quick {
        (n / 10).max(3)
    } else {
        n
    }
}

/// The order of blocks: (variant, iterations). Every series is cut into at least five blocks
/// (at most [`BLOCK`] long), and every other round runs the variants in reverse (A B, B A, ...).
/// A series of 10 was once one unbroken block per variant, so a slow patch of a few hundred
/// milliseconds in the emulator landed on one heap only: a 16 MiB kmap walk read 1.42x the C
/// heap in one run and 1.00x in another, with identical code on both sides.
fn schedule(variants: usize, n: usize) -> Vec<(usize, usize)> {
    let block = (n / 5).clamp(1, BLOCK);
    let mut out = Vec::new();
    let mut done = 0;
    let mut round = 0;
    while done < n {
        let b = block.min(n - done);
        let order: Vec<usize> = if round % 2 == 0 {
            (0..variants).collect()
        } else {
            (0..variants).rev().collect()
        };
        out.extend(order.into_iter().map(|v| (v, b)));
        done += b;
        round += 1;
    }
    out
}

/// Names the row an error came from (a bare ENOMEM says nothing).
fn in_row(op: &str, size: u64) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| io::Error::new(e.kind(), format!("{op}, {size} bytes: {e}"))
}

/// Times `op(variant index)` `n` times per variant, interleaved in blocks (see [`schedule`]).
fn measure(
    variants: &[Variant],
    n: usize,
    mut op: impl FnMut(usize) -> io::Result<()>,
) -> io::Result<Vec<Vec<u64>>> {
    let mut out = vec![Vec::with_capacity(n); variants.len()];
    for (i, block) in schedule(variants.len(), n) {
        variants[i].select();
        op(i)?;
        for _ in 0..block {
            let t = Instant::now();
            op(i)?;
            out[i].push(t.elapsed().as_nanos() as u64);
        }
    }
    Ok(out)
}

struct Recorder {
    series: Vec<Series>,
}

impl Recorder {
    fn add(&mut self, set: &[Variant], op: &'static str, size: u64, nanos: Vec<Vec<u64>>) {
        for (v, n) in set.iter().zip(nanos) {
            self.series.push(Series {
                variant: v.name.clone(),
                op,
                size,
                nanos: n,
            });
        }
    }
}

/// One buffer of `size` per variant.
fn buffers(set: &[Variant], size: u64) -> io::Result<Vec<DmaBuf>> {
    set.iter().map(|v| v.heap.alloc(size)).collect()
}

fn sync_pair(b: &DmaBuf) -> io::Result<()> {
    b.sync_start(Access::ReadWrite)?;
    b.sync_end(Access::ReadWrite)
}

/// Runs every benchmark and writes JSON lines to `w`.
pub fn run(quick: bool, w: &mut dyn Write) -> io::Result<()> {
    let started = Instant::now();
    let names = heap_names()?;
    let plain: Vec<Variant> = names
        .iter()
        .map(|n| Variant::new(n, false, false))
        .collect::<io::Result<_>>()?;
    // Heaps with a page pool get a second variant for allocations, without it.
    let mut with_pool_off: Vec<Variant> = names
        .iter()
        .map(|n| Variant::new(n, false, false))
        .collect::<io::Result<_>>()?;
    for n in names.iter().filter(|n| has_pool(n)) {
        with_pool_off.push(Variant::new(n, false, true)?);
    }
    // Heaps with an ION switch get a second variant for the CPU-access brackets.
    let mut with_ion: Vec<Variant> = names
        .iter()
        .map(|n| Variant::new(n, false, false))
        .collect::<io::Result<_>>()?;
    for n in &names {
        if crate::uapi::IonCompat::available(n) {
            with_ion.push(Variant::new(n, true, false)?);
        }
    }
    let mut rec = Recorder { series: Vec::new() };

    // Warm-up: the page allocator and caches settle before anything is recorded.
    measure(&plain, iters(200, quick), |i| {
        plain[i].heap.alloc(64 * KIB).map(drop)
    })?;

    // alloc + close from 4 KiB to 64 MiB: many iterations for small sizes, as Linaro's
    // dmabuf_heap_bench does.
    for (size, n) in ALLOC_SWEEP {
        let t = measure(&with_pool_off, iters(n, quick), |i| {
            with_pool_off[i].heap.alloc(size).map(drop)
        })
        .map_err(in_row("alloc+close", size))?;
        rec.add(&with_pool_off, "alloc+close", size, t);
    }
    // The same under memory pressure: a process holds all but PRESSURE_FREE of the
    // available memory, so allocations reclaim (the pool's pages are the shrinker's). Not on
    // CMA heaps: the hog's pages fill their area, and an allocation there must migrate them
    // away first, which fails under pressure (ENOMEM).
    let pressured = without_cma(&with_pool_off)?;
    match Hog::start() {
        Ok(mut hog) => {
            for (size, n) in [(MIB, 100), (16 * MIB, 20)] {
                let op = "alloc+close, memory pressure";
                let t = match measure(&pressured, iters(n, quick), |i| {
                    pressured[i].heap.alloc(size).map(drop)
                }) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!(
                            "heaprig-guest bench: {}: that row and the rest are left out",
                            in_row(op, size)(e)
                        );
                        break;
                    }
                };
                if !hog.alive() {
                    eprintln!(
                        "heaprig-guest bench: the memory hog died (OOM-killed?) during the \
                         {size}-byte memory-pressure row: that row and the rest are left out"
                    );
                    break;
                }
                rec.add(&pressured, op, size, t);
            }
        }
        Err(e) => eprintln!(
            "heaprig-guest bench: no memory-pressure rows: the memory hog did not start ({e})"
        ),
    }
    for v in &with_pool_off {
        if !v.pool_off {
            v.select();
        }
    }

    // DMA_BUF_IOCTL_SYNC START+END, without and with an attachment mapped for a device.
    let importer = match Importer::open() {
        Ok(i) => Some(i),
        Err(e) => {
            // Say so, rather than a table that silently lacks rows.
            eprintln!(
                "heaprig-guest bench: no test importer ({e}): the rows with a mapped \
                 attachment and the kernel reads are left out"
            );
            None
        }
    };
    for size in [4 * KIB, MIB, 32 * MIB] {
        let bufs = buffers(&with_ion, size)?;
        let t = measure(&with_ion, iters(2000, quick), |i| sync_pair(&bufs[i]))
            .map_err(in_row("sync start+end", size))?;
        rec.add(&with_ion, "sync start+end", size, t);
        if let Some(imp) = &importer {
            let mut handles = Vec::new();
            for b in &bufs {
                handles.push(imp.on(IMPORTER_ATTACH_HOLD, b, OP_NONE, 0)?.handle);
            }
            let t = measure(&with_ion, iters(2000, quick), |i| sync_pair(&bufs[i]))?;
            rec.add(&with_ion, "sync start+end, mapped attachment", size, t);
            for handle in handles {
                let mut a = ImporterArgs {
                    handle,
                    ..Default::default()
                };
                imp.call(IMPORTER_RELEASE, &mut a)?;
            }
        }
    }
    // Leave every switch off.
    for v in with_ion.iter().filter(|v| !v.ion) {
        v.select();
    }

    // mmap + touch every page.
    let size = if quick { 32 * MIB } else { 256 * MIB };
    // Not on CMA heaps: 256 MiB is more than the rig's 128 MiB CMA area.
    let touched = without_cma(&plain)?;
    let bufs = buffers(&touched, size).map_err(in_row("mmap+touch", size))?;
    let t = measure(&touched, iters(5, quick).min(5), |i| {
        let mut m = bufs[i].mmap(0, size as usize)?;
        for b in m.as_mut_slice().iter_mut().step_by(4096) {
            *b = 1;
        }
        Ok(())
    })?;
    rec.add(&touched, "mmap+touch", size, t);
    drop(bufs);

    // Kernel access through the test importer.
    if let Some(imp) = &importer {
        for size in [MIB, 64 * MIB] {
            let bufs = buffers(&plain, size)?;
            let t = measure(&plain, iters(200, quick), |i| {
                imp.on(IMPORTER_VMAP, &bufs[i], OP_NONE, 0).map(drop)
            })?;
            rec.add(&plain, "vmap+vunmap", size, t);
        }
        let size = 16 * MIB;
        let bufs = buffers(&plain, size)?;
        for (op, req) in [
            ("kernel read: kmap walk", IMPORTER_KMAP_WALK),
            ("kernel read: vmap", IMPORTER_VMAP),
        ] {
            let t = measure(&plain, iters(10, quick), |i| {
                imp.on(req, &bufs[i], OP_CHECKSUM, 0).map(drop)
            })?;
            rec.add(&plain, op, size, t);
        }
    }

    for s in rec.series {
        let r = Record::Series {
            variant: s.variant,
            op: s.op.to_string(),
            size: s.size,
            nanos: s.nanos,
        };
        writeln!(w, "{}", r.to_line())?;
    }
    let done = Record::Done {
        seconds: started.elapsed().as_secs_f64(),
    };
    writeln!(w, "{}", done.to_line())?;
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_series_are_interleaved_and_alternate_first() {
        for (variants, n) in [(2, 10), (3, 10), (2, 100), (2, 3), (3, 1000)] {
            let s = schedule(variants, n);
            for v in 0..variants {
                let blocks: Vec<usize> =
                    s.iter().filter(|(i, _)| *i == v).map(|(_, b)| *b).collect();
                assert_eq!(blocks.iter().sum::<usize>(), n, "{s:?}");
                assert!(
                    blocks.len() >= 5.min(n),
                    "variant {v} in {} blocks: {s:?}",
                    blocks.len()
                );
                assert!(blocks.iter().all(|&b| b <= BLOCK));
            }
            // No variant always goes first in a round.
            if n >= 2 {
                let firsts: std::collections::BTreeSet<usize> =
                    s.chunks(variants).map(|c| c[0].0).collect();
                assert!(firsts.len() > 1, "{s:?}");
            }
        }
    }
}
