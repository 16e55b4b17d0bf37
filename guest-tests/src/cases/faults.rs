//! Fault injection: make the n-th allocation of the test task fail, for n = 1, 2, ... until
//! the operation needs fewer than n, and check that every injected failure reaches user space
//! as a clean error, leaks nothing, and leaves the buffer working for the next call.
//!
//! `/proc/thread-self/fail-nth` arms failslab and fail_page_alloc for this task only; other
//! tasks never see a failure because the attributes' probability stays 0.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::ensure;
use crate::expect::{missing, missing_all, optional_importer};
use crate::harness::{errno_name, Context, Ctx, Outcome, Stop};
use crate::leaks::Holdings;
use crate::uapi::importer::{
    checksum, ImporterArgs, IMPORTER_ATTACH_MAP, IMPORTER_HOLD, IMPORTER_KMAP_WALK, IMPORTER_VMAP,
    OP_CHECKSUM,
};
use crate::uapi::{fd_size, Access, DmaBuf, Fault, Heap, Importer};

use super::{KIB, MIB};

const FAIL_NTH: &str = "/proc/thread-self/fail-nth";
const FAILSLAB: &str = "/sys/kernel/debug/failslab";
const FAIL_PAGE_ALLOC: &str = "/sys/kernel/debug/fail_page_alloc";
/// A bound on the sweep, far above what any operation here allocates.
const MAX_POINTS: u32 = 4000;
/// Errors an allocation failure may surface as.
const CLEAN: [i32; 2] = [libc::ENOMEM, libc::EAGAIN];

/// The buffer every operation works on, filled with a known pattern.
struct Subject<'a> {
    heap: &'a Heap,
    importer: Option<&'a Importer>,
    buf: DmaBuf,
    sum: u64,
}

/// What an operation did wrong: an error from the kernel, or a wrong result.
enum OpError {
    Errno(io::Error),
    Wrong(String),
}

impl From<io::Error> for OpError {
    fn from(e: io::Error) -> Self {
        OpError::Errno(e)
    }
}

type OpResult = Result<(), OpError>;

/// One operation to sweep; `importer` says whether it needs /dev/dmabuf_test_importer;
/// `floor` is the fewest fault points its sweep may find on any heap (about half of the
/// fewest the debug kernel showed on any heap; importer operations, whose counts vary by 2x
/// between runs with the slabs' state, well below that), so a sweep that quietly stops
/// reaching the operation's allocations fails instead of reading "clean".
pub struct Op {
    pub name: &'static str,
    importer: bool,
    floor: u32,
    run: fn(&Subject) -> OpResult,
}

const SIZE: u64 = 64 * KIB;

fn importer_call(s: &Subject, req: u32, count: u32) -> Result<ImporterArgs, OpError> {
    let imp = s
        .importer
        .ok_or_else(|| OpError::Wrong("no importer".into()))?;
    let mut a = ImporterArgs {
        fd: s.buf.raw_fd(),
        op: OP_CHECKSUM,
        count,
        ..Default::default()
    };
    imp.call(req, &mut a)?;
    Ok(a)
}

fn check_sum(what: &str, got: u64, want: u64) -> OpResult {
    if got != want {
        return Err(OpError::Wrong(format!(
            "{what} checksum {got:#x}, content is {want:#x}"
        )));
    }
    Ok(())
}

pub const OPS: &[Op] = &[
    Op {
        name: "alloc 64 KiB",
        importer: false,
        floor: 8,
        run: |s| {
            let b = s.heap.alloc(SIZE)?;
            let size = fd_size(b.raw_fd())?;
            if size != SIZE {
                return Err(OpError::Wrong(format!("size {size}, asked {SIZE}")));
            }
            Ok(())
        },
    },
    Op {
        name: "alloc 2 MiB",
        importer: false,
        floor: 8,
        run: |s| {
            s.heap.alloc(2 * MIB)?;
            Ok(())
        },
    },
    Op {
        name: "mmap + read",
        importer: false,
        floor: 4,
        run: |s| {
            let m = s.buf.mmap(0, SIZE as usize)?;
            check_sum("mmap", checksum(m.as_slice()), s.sum)
        },
    },
    Op {
        // Each call maps in a fresh 1 GiB region of the address space, so the mmap must
        // allocate page tables and the sweep fails those too (remap_pfn_range's error path).
        name: "mmap in fresh page tables + read",
        importer: false,
        floor: 6,
        run: |s| {
            let m = s.buf.mmap_at(fresh_region(), 0, SIZE as usize)?;
            check_sum("mmap", checksum(m.as_slice()), s.sum)
        },
    },
    Op {
        name: "SET_NAME",
        importer: false,
        floor: 1,
        run: |s| Ok(s.buf.set_name("heaprig-fault")?),
    },
    Op {
        name: "SYNC START+END",
        importer: false,
        floor: 0,
        run: |s| {
            s.buf.sync_start(Access::ReadWrite)?;
            Ok(s.buf.sync_end(Access::ReadWrite)?)
        },
    },
    Op {
        name: "importer VMAP",
        importer: true,
        // 2 on 7.3's CMA heap (2026-12-01): its vmap allocates little.
        floor: 1,
        run: |s| check_sum("vmap", importer_call(s, IMPORTER_VMAP, 1)?.checksum, s.sum),
    },
    Op {
        name: "importer KMAP_WALK",
        importer: true,
        // 6 to 16 on every heap and kernel in runs of 2026-12-01: the count depends on
        // whether a slab needs a fresh page, so the floor stays well below.
        floor: 3,
        run: |s| {
            let a = importer_call(s, IMPORTER_KMAP_WALK, 1)?;
            check_sum("kmap walk", a.checksum, s.sum)
        },
    },
    Op {
        name: "importer ATTACH_MAP x2",
        importer: true,
        floor: 8,
        run: |s| {
            importer_call(s, IMPORTER_ATTACH_MAP, 2)?;
            Ok(())
        },
    },
    Op {
        name: "importer HOLD + RELEASE",
        importer: true,
        floor: 4,
        run: |s| {
            let held = importer_call(s, IMPORTER_HOLD, 1)?;
            let imp = s
                .importer
                .ok_or_else(|| OpError::Wrong("no importer".into()))?;
            check_sum("held vmap", imp.release(held.handle)?.checksum, s.sum)
        },
    },
];

/// A 1 GiB-aligned address no earlier call used, far from where the kernel places mappings,
/// so nothing maps near it and its page tables do not exist yet.
fn fresh_region() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    const BASE: usize = 0x5000_0000_0000;
    BASE + NEXT.fetch_add(1, Ordering::Relaxed) * (1 << 30)
}

/// `/proc/thread-self/fail-nth`, opened before arming so opening it is not swept.
struct FailNth(File);

impl FailNth {
    fn open() -> io::Result<FailNth> {
        Ok(FailNth(
            OpenOptions::new().read(true).write(true).open(FAIL_NTH)?,
        ))
    }

    fn arm(&self, n: u32) -> io::Result<()> {
        self.0.write_all_at(n.to_string().as_bytes(), 0)
    }

    /// Disarms; returns whether the armed failure was injected (the counter reached 0).
    fn disarm(&self) -> io::Result<bool> {
        let mut b = [0u8; 16];
        let n = self.0.read_at(&mut b, 0)?;
        let left = String::from_utf8_lossy(&b[..n]).trim().to_string();
        self.0.write_all_at(b"0", 0)?;
        Ok(left == "0")
    }
}

/// Lets failslab and fail_page_alloc fail the allocations the heaps make (sleeping, highmem,
/// order 0), without their log lines and stack dumps, which would read as splats.
fn prepare() -> Outcome {
    if !Path::new(FAIL_NTH).exists() {
        return Err(missing(
            "CONFIG_FAULT_INJECTION",
            format!("{FAIL_NTH} is missing"),
        ));
    }
    // (directory, the option that makes it, knob, value)
    let knobs: &[(&str, &str, &str, &str)] = &[
        (FAILSLAB, "CONFIG_FAILSLAB", "ignore-gfp-wait", "N"),
        (FAILSLAB, "CONFIG_FAILSLAB", "verbose", "0"),
        (
            FAIL_PAGE_ALLOC,
            "CONFIG_FAIL_PAGE_ALLOC",
            "ignore-gfp-wait",
            "N",
        ),
        (
            FAIL_PAGE_ALLOC,
            "CONFIG_FAIL_PAGE_ALLOC",
            "ignore-gfp-highmem",
            "N",
        ),
        (FAIL_PAGE_ALLOC, "CONFIG_FAIL_PAGE_ALLOC", "min-order", "0"),
        (FAIL_PAGE_ALLOC, "CONFIG_FAIL_PAGE_ALLOC", "verbose", "0"),
    ];
    for (dir, option, knob, value) in knobs {
        let path = format!("{dir}/{knob}");
        if !Path::new(dir).is_dir() {
            return Err(missing_all(
                &[option, "CONFIG_FAULT_INJECTION_DEBUG_FS"],
                format!("{dir} is missing"),
            ));
        }
        std::fs::write(&path, value).context(format!("writing {value} to {path}"))?;
    }
    Ok(())
}

/// What a sweep of one operation saw.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Allocations the operation makes, each of which was failed once.
    pub points: u32,
    /// Injected failures the operation reported as an error.
    pub errors: u32,
    /// Injected failures the operation absorbed (a fallback) and still succeeded.
    pub absorbed: u32,
}

/// Fails each allocation `op` makes in turn; after each, the same operation without injection
/// must succeed and the kernel must hold what it held before.
fn sweep(s: &Subject, op: &Op, nth: &FailNth) -> Result<Sweep, Stop> {
    let mut out = Sweep::default();
    let fail = |n: u32, what: String| Stop::Fail(format!("{}: fault point {n}: {what}", op.name));
    for n in 1..=MAX_POINTS {
        let before = Holdings::read_buffers().map_err(Stop::Fail)?;
        nth.arm(n).context("arming fail-nth")?;
        let r = (op.run)(s);
        let injected = nth.disarm().context("disarming fail-nth")?;
        if !injected {
            // The operation made fewer than n allocations: the sweep is complete.
            return match r {
                Ok(()) => Ok(out),
                Err(e) => Err(fail(
                    n,
                    format!("failed with no fault injected: {}", describe(&e)),
                )),
            };
        }
        out.points = n;
        match r {
            Ok(()) => out.absorbed += 1,
            Err(OpError::Errno(e)) if e.raw_os_error().is_some_and(|c| CLEAN.contains(&c)) => {
                out.errors += 1
            }
            Err(e) => return Err(fail(n, format!("unclean failure: {}", describe(&e)))),
        }
        let leaks = Holdings::read_buffers()
            .map_err(Stop::Fail)?
            .leaked_since(&before);
        if let Some(l) = leaks.first() {
            return Err(fail(n, format!("leak after the injected failure: {l}")));
        }
        if let Err(e) = (op.run)(s) {
            return Err(fail(
                n,
                format!("the next call without injection failed: {}", describe(&e)),
            ));
        }
    }
    Err(Stop::Fail(format!(
        "{}: more than {MAX_POINTS} allocations; sweep abandoned",
        op.name
    )))
}

fn describe(e: &OpError) -> String {
    match e {
        OpError::Errno(e) => errno_name(e),
        OpError::Wrong(w) => w.clone(),
    }
}

/// Sweeps `ops` on `heap`, one fact per operation and the counts as diagnostics.
fn sweep_all(ctx: &mut Ctx, heap: &Heap, ops: &[&Op]) -> Outcome {
    prepare()?;
    let importer = optional_importer()?;
    let buf = heap.alloc(SIZE).context("alloc 64 KiB")?;
    {
        let mut m = buf.mmap(0, SIZE as usize).context("mmap")?;
        buf.sync_start(Access::Write).context("SYNC START")?;
        for (i, b) in m.as_mut_slice().iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        buf.sync_end(Access::Write).context("SYNC END")?;
    }
    let sum = checksum(
        &(0..SIZE as usize)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<_>>(),
    );
    let s = Subject {
        heap,
        importer: importer.as_ref(),
        buf,
        sum,
    };
    let nth = FailNth::open().context(format!("opening {FAIL_NTH}"))?;
    let mut total = 0;
    for op in ops {
        if op.importer && s.importer.is_none() {
            ctx.diag(format!("{}: skipped, no test importer", op.name));
            continue;
        }
        // Once without injection, so one-time setup (page tables, caches) is not swept.
        if let Err(e) = (op.run)(&s) {
            return Err(Stop::Fail(format!(
                "{} fails without injection: {}",
                op.name,
                describe(&e)
            )));
        }
        let r = sweep(&s, op, &nth)?;
        total += r.points;
        ensure!(
            r.points >= op.floor,
            "{}: the sweep found {} fault point(s), fewer than its floor of {}",
            op.name,
            r.points,
            op.floor
        );
        ctx.diag(format!(
            "faults: {}: {} fault points, {} errors, {} absorbed",
            op.name, r.points, r.errors, r.absorbed
        ));
        // An operation that allocates nothing has no failure to inject; say so, not "clean".
        let verdict = if r.points == 0 {
            "no allocation to fail".to_string()
        } else {
            format!("clean (at least {} fault point(s))", op.floor)
        };
        ctx.fact(format!("{}: every injected failure", op.name), verdict);
    }
    ctx.diag(format!("faults: {total} fault points swept in all"));
    ensure!(
        total > 0,
        "no operation allocated anything: the sweep tested nothing"
    );
    Ok(())
}

/// Every operation in [`OPS`].
pub fn fault_sweep(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let ops: Vec<&Op> = OPS.iter().collect();
    sweep_all(ctx, heap, &ops)
}

/// Self-test: with the importer's `error_path_leak` knob, a vmap that fails under injection
/// leaks a buffer reference; the sweep must report that leak at the fault point.
pub fn selftest_fault_leak(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let _fault = Fault::set(crate::uapi::importer::FAULT_ERROR_PATH_LEAK)
        .context("switching on the error_path_leak knob")?;
    let vmap: Vec<&Op> = OPS.iter().filter(|o| o.name == "importer VMAP").collect();
    sweep_all(ctx, heap, &vmap)
}
