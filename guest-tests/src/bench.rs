//! Microbenchmarks, run in the guest by `cargo xtask bench` (never as tests: nothing fails
//! because a number moved). Each measurement is a list of per-iteration times; the host
//! computes median, p99 and min and the ratios between heaps.
//!
//! Variants run in the same boot: our heap, the C system heap, and our heap with the
//! ION-compatibility switch on (begin_cpu_access maps the buffer, as old ION did).

use std::io::{self, Write};
use std::time::Instant;

use crate::uapi::importer::{
    ImporterArgs, IMPORTER_KMAP_WALK, IMPORTER_VMAP, OP_CHECKSUM, OP_NONE,
};
use crate::uapi::{heap_names, Access, Heap, Importer, IonCompat};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// One measured operation on one variant.
pub struct Series {
    pub variant: String,
    pub op: &'static str,
    pub size: u64,
    pub nanos: Vec<u64>,
}

fn time<E>(mut f: impl FnMut() -> Result<(), E>, n: usize) -> Result<Vec<u64>, E> {
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_nanos() as u64);
    }
    Ok(v)
}

/// Iterations scaled down for `--quick` (CI keeps the benchmarks working, not accurate).
fn iters(n: usize, quick: bool) -> usize {
    if quick {
        (n / 10).max(3)
    } else {
        n
    }
}

fn run_variant(variant: &str, heap: &Heap, quick: bool, out: &mut Vec<Series>) -> io::Result<()> {
    let mut push = |op, size, nanos| {
        out.push(Series {
            variant: variant.to_string(),
            op,
            size,
            nanos,
        })
    };
    // Warm-up, so the variant measured first does not pay for cold caches and page
    // allocator state the others inherit.
    time(|| heap.alloc(64 * KIB).map(drop), iters(500, quick))?;
    // alloc + close: many iterations for small sizes, as Linaro's dmabuf_heap_bench does.
    for (size, n) in [
        (4 * KIB, 2000),
        (64 * KIB, 1000),
        (MIB, 200),
        (8 * MIB, 40),
        (32 * MIB, 12),
    ] {
        push(
            "alloc+close",
            size,
            time(|| heap.alloc(size).map(drop), iters(n, quick))?,
        );
    }
    // DMA_BUF_IOCTL_SYNC START+END (no attachment mapped).
    for size in [4 * KIB, MIB, 32 * MIB] {
        let buf = heap.alloc(size)?;
        let n = iters(2000, quick);
        push(
            "sync start+end",
            size,
            time(
                || {
                    buf.sync_start(Access::ReadWrite)?;
                    buf.sync_end(Access::ReadWrite)
                },
                n,
            )?,
        );
    }
    // mmap + touch every page, 256 MiB: one sample per run, reported as time.
    let size = if quick { 32 * MIB } else { 256 * MIB };
    let buf = heap.alloc(size)?;
    push(
        "mmap+touch",
        size,
        time(
            || {
                let mut m = buf.mmap(0, size as usize)?;
                for b in m.as_mut_slice().iter_mut().step_by(4096) {
                    *b = 1;
                }
                Ok::<(), io::Error>(())
            },
            iters(5, quick).min(5),
        )?,
    );
    // Kernel access through the test importer.
    if let Ok(imp) = Importer::open() {
        for size in [MIB, 64 * MIB] {
            let buf = heap.alloc(size)?;
            push(
                "vmap+vunmap",
                size,
                time(
                    || imp.on(IMPORTER_VMAP, &buf, OP_NONE, 0).map(drop),
                    iters(200, quick),
                )?,
            );
        }
        let size = 16 * MIB;
        let buf = heap.alloc(size)?;
        let walk = |req| {
            let mut a = ImporterArgs {
                fd: buf.raw_fd(),
                op: OP_CHECKSUM,
                ..Default::default()
            };
            imp.call(req, &mut a)
        };
        push(
            "kernel read: kmap walk",
            size,
            time(|| walk(IMPORTER_KMAP_WALK), iters(10, quick))?,
        );
        push(
            "kernel read: vmap",
            size,
            time(|| walk(IMPORTER_VMAP), iters(10, quick))?,
        );
    }
    Ok(())
}

/// Runs every benchmark on every variant and writes JSON lines to `w`.
pub fn run(quick: bool, w: &mut dyn Write) -> io::Result<()> {
    let names = heap_names()?;
    let mut series = Vec::new();
    let started = Instant::now();
    for name in &names {
        let heap = Heap::open(name)?;
        run_variant(name, &heap, quick, &mut series)?;
        // Our heap again with the ION switch on, when it has one.
        if let Ok(_ion) = IonCompat::set(name, true) {
            run_variant(&format!("{name}+ion_compat"), &heap, quick, &mut series)?;
        }
    }
    for s in &series {
        let nanos: Vec<String> = s.nanos.iter().map(u64::to_string).collect();
        writeln!(
            w,
            "{{\"variant\":\"{}\",\"op\":\"{}\",\"size\":{},\"nanos\":[{}]}}",
            s.variant,
            s.op,
            s.size,
            nanos.join(",")
        )?;
    }
    writeln!(
        w,
        "{{\"done\":true,\"seconds\":{:.1}}}",
        started.elapsed().as_secs_f64()
    )?;
    w.flush()?;
    Ok(())
}
