//! The heap and the test importer as loadable modules (Linux 7.3 builds both as `=m`; 6.12
//! builds them in, since it exports no `dma_heap_add` to modules, and these tests SKIP).
//!
//! A dma-buf heap can never be removed once added, so the heap module pins itself: `rmmod`
//! must be refused at any time, and every exported buffer holds the module too (its owner).
//! The importer can be unloaded, but never while a file of its device is open (and so never
//! while a hold is alive); load/unload cycles must leave nothing behind (the per-test leak
//! oracle, and kmemleak at the end of a complete run).

use std::path::Path;

use crate::ensure;
use crate::expect::{built_as_module, importer};
use crate::harness::{result_name, Context, Ctx, Outcome, Stop};
use crate::uapi::importer::{checksum, IMPORTER_DEV, IMPORTER_HOLD, IMPORTER_VMAP, OP_CHECKSUM};
use crate::uapi::module::{load, loaded_from, refcnt, unload};
use crate::uapi::{heap_names, Access, Heap};

use super::importer::{patterned, LEN};

const HEAP_MODULE: &str = "rust_system_heap";
const IMPORTER_MODULE: &str = "dmabuf_test_importer";
const IMPORTER_DEBUGFS: &str = "/sys/kernel/debug/dmabuf_test_importer";
/// Load, use, unload rounds after the first unload.
const CYCLES: u32 = 3;

/// SKIP unless the kernel builds `option` as a module; then the module must be loaded.
fn loaded_module(option: &str, name: &str) -> Result<u64, Stop> {
    if !built_as_module(option) {
        return Err(Stop::Skip(format!(
            "{name} is not a loadable module on this kernel ({option} is not =m; Linux 6.12 \
             exports no dma_heap_add to modules, so the rig builds it in there)"
        )));
    }
    refcnt(name).ok_or_else(|| {
        Stop::Fail(format!(
            "{option}=m but /sys/module/{name} is missing: the rig did not load it"
        ))
    })
}

/// The heap module is pinned, and each buffer (through an fd, a mapping or an importer
/// hold) holds it once more; a refused `rmmod` leaves every buffer intact.
pub fn heap_module_pinned(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let base = loaded_module("CONFIG_DMABUF_HEAPS_RUST_SYSTEM", HEAP_MODULE)?;
    ctx.fact("refcnt with no buffer alive", base);
    ensure!(base >= 1, "the heap module is not pinned (refcnt {base})");
    let delta = || refcnt(HEAP_MODULE).map(|r| r as i64 - base as i64);
    // "+1", "0", or why there is no count.
    let shown = || delta().map_or_else(|| "module gone".to_string(), |d| format!("{d:+}"));
    let (buf, sum) = patterned(heap, 0x3c)?;
    ctx.fact("refcnt delta, one buffer", shown());
    ensure!(
        delta() == Some(1),
        "a buffer does not hold its module: {:?}",
        delta()
    );
    let map = buf.mmap(0, LEN as usize).context("mmap")?;
    let imp = crate::expect::optional_importer()?;
    let (held, held_sum) = match &imp {
        Some(imp) => {
            let (b2, s2) = patterned(heap, 0x5a)?;
            let h = imp
                .on(IMPORTER_HOLD, &b2, OP_CHECKSUM, 0)
                .context("IMPORTER_HOLD")?;
            (Some(h.handle), s2)
        }
        None => (None, 0),
    };
    drop(buf);
    let want = 1 + i64::from(held.is_some());
    ctx.fact(
        "refcnt delta, fds closed (a mapping and an importer hold left)",
        shown(),
    );
    ensure!(
        delta() == Some(want),
        "after closing the fds: {:?}, expected +{want} (the mapping and the hold)",
        delta()
    );
    let refused = unload(HEAP_MODULE);
    ctx.fact("rmmod with buffers alive", result_name(&refused));
    ensure!(refused.is_err(), "rmmod of the heap module succeeded");
    ensure!(
        checksum(map.as_slice()) == sum,
        "the mapping changed after the refused rmmod"
    );
    if let (Some(imp), Some(h)) = (&imp, held) {
        let r = imp.release(h).context("IMPORTER_RELEASE")?;
        ensure!(
            r.checksum == held_sum,
            "the held buffer changed after the refused rmmod"
        );
    }
    ctx.fact("buffers after the refused rmmod", "intact");
    drop(map);
    ctx.fact("refcnt delta, all released", shown());
    ensure!(delta() == Some(0), "references left: {:?}", delta());
    let pinned = unload(HEAP_MODULE);
    ctx.fact("rmmod with nothing alive", result_name(&pinned));
    ensure!(
        pinned.is_err(),
        "the heap module unloaded: a heap cannot be removed"
    );
    let again = heap.alloc(4096).and_then(|b| b.sync_start(Access::Read));
    ctx.fact("alloc after the refused rmmods", result_name(&again));
    ensure!(again.is_ok(), "the heap stopped working: {again:?}");
    Ok(())
}

/// Reloads the importer on every exit path, so the tests after this one find it.
struct Reload<'a>(&'a Path);

impl Drop for Reload<'_> {
    fn drop(&mut self) {
        if refcnt(IMPORTER_MODULE).is_none() {
            if let Err(e) = load(self.0) {
                eprintln!("reloading {}: {e}", self.0.display());
            }
        }
    }
}

/// The importer cannot be unloaded while one of its files is open (here, with a hold in
/// it); then it unloads, its device and debugfs files go, and it loads, works and unloads
/// again, [`CYCLES`] times.
pub fn importer_module_unload_reload(ctx: &mut Ctx) -> Outcome {
    loaded_module("CONFIG_DMABUF_TEST_IMPORTER", IMPORTER_MODULE)?;
    let path = loaded_from(IMPORTER_MODULE).ok_or_else(|| {
        Stop::Fail(format!(
            "the rig did not say where {IMPORTER_MODULE}.ko is (HEAPRIG_MODULES)"
        ))
    })?;
    let _reload = Reload(&path);
    let names = heap_names().context("listing heaps")?;
    let name = names.first().ok_or_else(|| Stop::Fail("no heap".into()))?;
    let heap = Heap::open(name).context("open heap")?;
    let imp = importer()?;
    let (buf, sum) = patterned(&heap, 0x77)?;
    let h = imp
        .on(IMPORTER_HOLD, &buf, OP_CHECKSUM, 0)
        .context("IMPORTER_HOLD")?;
    drop(buf);
    let busy = unload(IMPORTER_MODULE);
    ctx.fact(
        "rmmod with a file open and a hold in it",
        result_name(&busy),
    );
    ensure!(busy.is_err(), "the importer unloaded under an open file");
    let r = imp.release(h.handle).context("IMPORTER_RELEASE")?;
    ensure!(
        r.checksum == sum,
        "the held buffer changed after the refused rmmod"
    );
    drop(imp);
    let gone = unload(IMPORTER_MODULE);
    ctx.fact("rmmod with no file open", result_name(&gone));
    ensure!(gone.is_ok(), "rmmod with no file open: {gone:?}");
    for (what, p) in [
        ("device", IMPORTER_DEV),
        ("debugfs directory", IMPORTER_DEBUGFS),
    ] {
        ensure!(!Path::new(p).exists(), "the {what} {p} outlived the module");
    }
    ctx.fact("device and debugfs after rmmod", "gone");
    for round in 1..=CYCLES {
        load(&path).context(format!("round {round}: loading {}", path.display()))?;
        let imp = importer()?;
        let (buf, sum) = patterned(&heap, round as u8)?;
        let a = imp
            .on(IMPORTER_VMAP, &buf, OP_CHECKSUM, 0)
            .context(format!("round {round}: IMPORTER_VMAP"))?;
        ensure!(
            a.checksum == sum,
            "round {round}: the reloaded importer read other bytes"
        );
        drop(imp);
        unload(IMPORTER_MODULE).context(format!("round {round}: rmmod"))?;
    }
    ctx.fact("load, use, unload rounds", CYCLES);
    load(&path).context("loading the importer for the tests after this one")?;
    Ok(())
}
