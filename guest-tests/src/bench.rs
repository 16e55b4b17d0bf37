//! Microbenchmarks, run in the guest by `cargo xtask bench` (never as tests: nothing fails
//! because a number moved). Each measurement is a list of per-iteration times; the host
//! computes median, p99 and min and the ratios between heaps.
//!
//! Variants are measured in the same boot and interleaved in small blocks (A, B, C, then
//! C, B, A, ...), so drift in the emulator or the page allocator hits them alike: our heap, the C
//! system heap, and, for CPU-access brackets, our heap with the ION-compatibility switch on
//! (begin_cpu_access maps the buffer, as old ION did).

use std::io::{self, Write};
use std::time::Instant;

use heaprig_protocol::bench::{ion_variant, Record};

use crate::uapi::importer::{
    ImporterArgs, IMPORTER_ATTACH_HOLD, IMPORTER_KMAP_WALK, IMPORTER_RELEASE, IMPORTER_VMAP,
    OP_CHECKSUM, OP_NONE,
};
use crate::uapi::{heap_names, Access, DmaBuf, Heap, Importer};

use crate::uapi::{KIB, MIB};
/// Iterations per variant before switching to the next one.
const BLOCK: usize = 20;

/// One measured operation on one variant.
pub struct Series {
    pub variant: String,
    pub op: &'static str,
    pub size: u64,
    pub nanos: Vec<u64>,
}

/// A heap, optionally with its `ion_compat` switch on while it is measured.
struct Variant {
    name: String,
    heap: Heap,
    ion: bool,
}

impl Variant {
    /// Puts the heap's switch (if it has one) in this variant's position.
    fn select(&self) {
        let path = crate::uapi::IonCompat::path(&self.heap.name);
        let _ = std::fs::write(path, if self.ion { "1" } else { "0" });
    }
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

/// Times `op(variant index)` `n` times per variant, interleaved in blocks (see [`schedule`]).
fn measure(
    variants: &[Variant],
    n: usize,
    mut op: impl FnMut(usize) -> io::Result<()>,
) -> io::Result<Vec<Vec<u64>>> {
    let mut out = vec![Vec::with_capacity(n); variants.len()];
    for (i, block) in schedule(variants.len(), n) {
        variants[i].select();
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
    let variant = |n: &String, ion: bool| -> io::Result<Variant> {
        let name = if ion { ion_variant(n) } else { n.clone() };
        Ok(Variant {
            name,
            heap: Heap::open(n)?,
            ion,
        })
    };
    let plain: Vec<Variant> = names
        .iter()
        .map(|n| variant(n, false))
        .collect::<io::Result<_>>()?;
    // Heaps with an ION switch get a second variant for the CPU-access brackets.
    let mut with_ion: Vec<Variant> = names
        .iter()
        .map(|n| variant(n, false))
        .collect::<io::Result<_>>()?;
    for n in &names {
        if crate::uapi::IonCompat::available(n) {
            with_ion.push(variant(n, true)?);
        }
    }
    let mut rec = Recorder { series: Vec::new() };

    // Warm-up: the page allocator and caches settle before anything is recorded.
    measure(&plain, iters(200, quick), |i| {
        plain[i].heap.alloc(64 * KIB).map(drop)
    })?;

    // alloc + close: many iterations for small sizes, as Linaro's dmabuf_heap_bench does.
    for (size, n) in [
        (4 * KIB, 2000),
        (64 * KIB, 1000),
        (MIB, 200),
        (8 * MIB, 40),
        (32 * MIB, 20),
    ] {
        let t = measure(&plain, iters(n, quick), |i| {
            plain[i].heap.alloc(size).map(drop)
        })?;
        rec.add(&plain, "alloc+close", size, t);
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
        let t = measure(&with_ion, iters(2000, quick), |i| sync_pair(&bufs[i]))?;
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
    let bufs = buffers(&plain, size)?;
    let t = measure(&plain, iters(5, quick).min(5), |i| {
        let mut m = bufs[i].mmap(0, size as usize)?;
        for b in m.as_mut_slice().iter_mut().step_by(4096) {
            *b = 1;
        }
        Ok(())
    })?;
    rec.add(&plain, "mmap+touch", size, t);
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
