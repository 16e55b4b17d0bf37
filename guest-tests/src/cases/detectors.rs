//! The whole-run kmemleak check, and the self-tests that prove each hostile-suite detector
//! fires: each switches on one importer fault knob and the rig must report exactly that fault.

use std::path::Path;
use std::time::Duration;

use crate::expect::{importer, missing};
use crate::harness::{Context, Ctx, Outcome, Stop};
use crate::leaks::{parse_kmemleak, KMEMLEAK};
use crate::uapi::importer::{
    FAULT_LEAK_MEMORY, FAULT_LEAK_REF, FAULT_LEAK_VMAP, FAULT_LOCK_INVERSION, FAULT_SHORT_FILL,
    IMPORTER_VMAP, OP_CHECKSUM,
};
use crate::uapi::{Fault, Heap, Knob};

const KMEMLEAK_OPTION: &str = "CONFIG_DEBUG_KMEMLEAK";

/// kmemleak never reports an object younger than this (mm/kmemleak.c, jiffies_min_age).
const KMEMLEAK_MIN_AGE: Duration = Duration::from_secs(5);

/// After every test: a kmemleak scan; any report allocated on a dma-buf path fails the run.
pub fn kmemleak(ctx: &mut Ctx) -> Outcome {
    if !Path::new(KMEMLEAK).exists() {
        return Err(missing(KMEMLEAK_OPTION, format!("{KMEMLEAK} is missing")));
    }
    // kmemleak reports an object only when two scans in a row find it unreferenced and
    // unchanged (the first records its checksum), and only once it is older than the minimum
    // age; so: scan, let the last test's objects age, scan again.
    let started = std::time::Instant::now();
    let mut spent = Vec::new();
    for pass in 0..2 {
        if pass == 1 {
            let wait =
                (KMEMLEAK_MIN_AGE + Duration::from_millis(500)).saturating_sub(started.elapsed());
            std::thread::sleep(wait);
            spent.push(format!("waited {:.1}s", wait.as_secs_f64()));
        }
        let scan = std::time::Instant::now();
        let scanned = std::fs::write(KMEMLEAK, "scan");
        spent.push(format!("scan {:.1}s", scan.elapsed().as_secs_f64()));
        if let Err(e) = scanned {
            // kmemleak turns itself off after an internal error; that is not a pass.
            return Err(missing(
                KMEMLEAK_OPTION,
                format!("kmemleak refused a scan ({e}): it disabled itself; see the kernel log"),
            ));
        }
    }
    // Where its time goes: the scans walk all of memory and vary with what the kernel holds.
    ctx.diag(format!("kmemleak: {}", spent.join(", ")));
    let text = std::fs::read_to_string(KMEMLEAK).context(format!("reading {KMEMLEAK}"))?;
    let reports = parse_kmemleak(&text);
    let ours: Vec<_> = reports.iter().filter(|r| r.is_ours()).collect();
    ctx.diag(format!(
        "kmemleak: {} unreferenced object(s) in all, {} on dma-buf paths",
        reports.len(),
        ours.len()
    ));
    // Each test runs in its own process, so the allocating task names the test that leaked
    // (a leak from a test's own children or a kernel thread stays unattributed).
    let mut decisive = None;
    for r in &ours {
        let line = match r.pid().and_then(crate::runner::test_of_pid) {
            Some(label) => heaprig_protocol::leak::attributed(&label, &r.summary()),
            None => format!("kmemleak: {}", r.summary()),
        };
        ctx.diag(line.clone());
        decisive.get_or_insert(line);
    }
    ctx.fact("kmemleak reports on dma-buf paths", ours.len());
    match decisive {
        Some(line) => Err(Stop::Fail(line)),
        None => Ok(()),
    }
}

/// Switches on `knob` and vmaps a fresh 4 KiB buffer `times` times through the importer.
fn vmap_with_fault(heap: &Heap, knob: &str, times: usize) -> Outcome {
    let imp = importer()?;
    let _fault = Fault::set(knob).context(format!("switching on the {knob} knob"))?;
    for _ in 0..times {
        let buf = heap.alloc(4096).context("alloc 4 KiB")?;
        imp.on(IMPORTER_VMAP, &buf, OP_CHECKSUM, 0)
            .context("importer VMAP")?;
    }
    Ok(())
}

/// The leak oracle must name the buffer the importer kept a reference to.
pub fn selftest_leak(_ctx: &mut Ctx, heap: &Heap) -> Outcome {
    vmap_with_fault(heap, FAULT_LEAK_REF, 1)
}

/// The vmap oracle must name the kernel mapping the C system heap made for the importer and
/// that was never unmapped: the C heap keeps no counters, so only /proc/vmallocinfo sees it.
pub fn selftest_vmap_leak(_ctx: &mut Ctx, heap: &Heap) -> Outcome {
    vmap_with_fault(heap, FAULT_LEAK_VMAP, 1)
}

/// The page leak oracle must name the page the heap allocated and never freed (its
/// `selftest_leak_page` switch), though every buffer is closed and every counter of the heap
/// balances: only page_owner sees it.
pub fn selftest_page_leak(_ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let knob = format!("/sys/kernel/debug/{}_heap/selftest_leak_page", heap.name);
    let _leak = Knob::set(&knob, "1").context(format!("switching on {knob}"))?;
    let buf = heap.alloc(4096).context("alloc 4 KiB")?;
    drop(buf);
    Ok(())
}

/// Columns run side by side must still name the heap at fault: our heap's column leaks a
/// page, the C system heap's provokes a kernel WARNING, any other heap's does nothing wrong.
/// The rig must fail exactly those two columns, the WARNING by the process it names.
pub fn selftest_side_by_side(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    match heap.name.as_str() {
        heaprig_protocol::bench::OURS => selftest_page_leak(ctx, heap),
        heaprig_protocol::bench::C_HEAP => super::selftest_warning(ctx),
        _ => {
            drop(heap.alloc(4096).context("alloc 4 KiB")?);
            Ok(())
        }
    }
}

/// The whole-run kmemleak check must report blocks allocated in the importer's ioctl.
pub fn selftest_kmemleak(_ctx: &mut Ctx, heap: &Heap) -> Outcome {
    vmap_with_fault(heap, FAULT_LEAK_MEMORY, 4)
}

/// Lockdep must report the importer taking its two locks in both orders. Lockdep switches
/// itself off after its first report, so this belongs last in a boot.
pub fn selftest_lockdep(_ctx: &mut Ctx, heap: &Heap) -> Outcome {
    vmap_with_fault(heap, FAULT_LOCK_INVERSION, 1)
}

/// The fuzz self-test's seed (the e2e test checks the byte its failure names).
pub const SELFTEST_FUZZ_SEED: u64 = 42;

/// The fuzzer must catch a fill that misses the last byte, with a seed to replay it.
pub fn selftest_fuzz(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    importer()?;
    let _fault = Fault::set(FAULT_SHORT_FILL).context("switching on the short_fill knob")?;
    // A pinned seed, so the failure (and the byte it names) is the same in every run.
    let cfg = crate::fuzz::Config {
        seed: SELFTEST_FUZZ_SEED,
        budget: Duration::from_secs(10),
        max_ops: None,
    };
    crate::fuzz::run(ctx, heap, &cfg)
}
