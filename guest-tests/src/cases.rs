//! The test table. Tests that are not specific to one heap run on every heap under
//! /dev/dma_heap, so the snapshot shows each heap side by side: `SideBySide` (every heap's
//! column at once) when a test touches only its own heap's buffers, `PerHeap` (one after the
//! other) when it turns a switch every heap shares (fault knobs, the non-coherent device, a
//! memory cgroup) or races threads whose timing a neighbour would change.

use std::path::Path;

use crate::ensure;
use crate::harness::{errno_name, result_name, Body, Case, CaseKind, Context, Ctx, Outcome, Stop};
use crate::uapi::{
    heap_names, registered_heaps, Access, Heap, DMA_BUF_SYNC_END, DMA_BUF_SYNC_READ,
    DMA_BUF_SYNC_RW, DMA_BUF_SYNC_START, DMA_BUF_SYNC_WRITE, DMA_HEAP_DIR,
};

mod coherence;
pub mod concurrency;
mod detectors;
mod faults;
mod heap;
mod importer;
mod memcg;
mod modules;
mod pool;

/// Shorthand for table rows.
const fn case(name: &'static str, body: Body) -> Case {
    Case {
        name,
        kind: CaseKind::Test,
        body,
    }
}

/// A check over the whole run, after every selected test.
const fn finally(name: &'static str, body: Body) -> Case {
    Case {
        kind: CaseKind::Finally,
        ..case(name, body)
    }
}

/// A rig self-test: runs only when named, must make the rig report a failure.
const fn selftest(name: &'static str, body: Body) -> Case {
    Case {
        kind: CaseKind::SelfTest,
        ..case(name, body)
    }
}

pub const CASES: &[Case] = &[
    case("heaps_present", Body::Global(heaps_present)),
    case(
        "alloc_mmap_sync_roundtrip",
        Body::SideBySide(alloc_mmap_sync_roundtrip),
    ),
    case(
        "sync_flag_validation",
        Body::SideBySide(sync_flag_validation),
    ),
    case("set_name", Body::SideBySide(set_name)),
    case("alloc_sizes", Body::SideBySide(heap::alloc_sizes)),
    case("zeroing", Body::SideBySide(heap::zeroing)),
    case("mmap_bounds", Body::SideBySide(heap::mmap_bounds)),
    case("mmap_private", Body::SideBySide(heap::mmap_private)),
    case("sync_end_storm", Body::SideBySide(heap::sync_end_storm)),
    case(
        "importer_vmap_reads_user_writes",
        Body::SideBySide(importer::vmap_reads_user_writes),
    ),
    case(
        "importer_vmap_writes_visible",
        Body::SideBySide(importer::vmap_writes_visible_to_user),
    ),
    case(
        "importer_vmap_nested",
        Body::SideBySide(importer::vmap_nested),
    ),
    case(
        "importer_kmap_walk",
        Body::SideBySide(importer::kmap_walk_matches_vmap),
    ),
    case(
        "importer_attach_map",
        Body::SideBySide(importer::attach_map),
    ),
    case("importer_misuse", Body::SideBySide(importer::misuse)),
    case(
        "importer_holds_die_with_their_file",
        Body::SideBySide(importer::holds_die_with_their_file),
    ),
    // The loops are the importer's, the same for every exporter: one heap is enough.
    case(
        "importer_long_loops_yield",
        Body::OnHeap("rust_system", importer::long_loops_yield),
    ),
    case(
        "importer_hold_after_close",
        Body::SideBySide(importer::hold_after_close),
    ),
    case(
        "importer_cpu_access",
        Body::SideBySide(importer::kernel_cpu_access),
    ),
    case(
        "noncoherent_sync",
        Body::PerHeap(coherence::noncoherent_sync),
    ),
    case("memcg_accounting", Body::PerHeap(memcg::memcg_accounting)),
    case(
        "rust_heap_sync_without_kernel_mapping",
        Body::OnHeap("rust_system", heap::rust_heap_sync_without_kernel_mapping),
    ),
    case(
        "rust_heap_ion_compat",
        Body::OnHeap("rust_system", heap::rust_heap_ion_compat),
    ),
    case(
        "rust_heap_ion_meets_importer",
        Body::OnHeap("rust_system", heap::rust_heap_ion_meets_importer),
    ),
    case(
        "rust_heap_huge_alloc",
        Body::OnHeap("rust_system", heap::rust_heap_huge_alloc),
    ),
    case(
        "module_heap_pinned",
        Body::OnHeap("rust_system", modules::heap_module_pinned),
    ),
    case(
        "module_importer_unload_reload",
        Body::Global(modules::importer_module_unload_reload),
    ),
    case(
        "rust_heap_pool_zeroed",
        Body::OnHeap("rust_system", pool::pool_pages_zeroed),
    ),
    case(
        "rust_heap_pool_shrinker",
        Body::OnHeap("rust_system", pool::pool_shrinker),
    ),
    case(
        "rust_heap_pool_memory_pressure",
        Body::OnHeap("rust_system", pool::pool_memory_pressure),
    ),
    case(
        "rust_heap_stats",
        Body::OnHeap("rust_system", heap::rust_heap_stats_track_buffers),
    ),
    // Hostile user space and a hostile kernel (debug profile).
    case("fault_sweep", Body::PerHeap(faults::fault_sweep)),
    case(
        "concurrent_threads",
        Body::PerHeap(concurrency::threads_alloc_map_sync),
    ),
    case(
        "concurrent_vmap_sync_close",
        Body::PerHeap(concurrency::vmap_sync_close_race),
    ),
    case(
        "concurrent_scm_rights",
        Body::PerHeap(concurrency::scm_rights_handoff),
    ),
    case(
        "concurrent_fork_mappings",
        Body::PerHeap(concurrency::fork_with_live_mappings),
    ),
    case("fuzz", Body::SideBySide(crate::fuzz::case)),
    // Rig self-tests: each must make the rig report a failure of a specific kind.
    selftest("rig_selftest_fail", Body::Global(selftest_fail)),
    selftest("rig_selftest_crash", Body::Global(selftest_crash)),
    selftest("rig_selftest_timeout", Body::Global(selftest_timeout)),
    selftest("rig_selftest_warning", Body::Global(selftest_warning)),
    selftest("rig_selftest_flaky", Body::Global(selftest_flaky)),
    selftest(
        "rig_selftest_leak",
        Body::OnHeap("rust_system", detectors::selftest_leak),
    ),
    selftest(
        "rig_selftest_page_leak",
        Body::OnHeap("rust_system", detectors::selftest_page_leak),
    ),
    selftest(
        "rig_selftest_vmap_leak",
        Body::OnHeap("system", detectors::selftest_vmap_leak),
    ),
    selftest(
        "rig_selftest_stale_cpu_read",
        Body::OnHeap("system", coherence::selftest_stale_cpu_read),
    ),
    selftest(
        "rig_selftest_fault_leak",
        Body::OnHeap("rust_system", faults::selftest_fault_leak),
    ),
    selftest(
        "rig_selftest_fuzz",
        Body::OnHeap("rust_system", detectors::selftest_fuzz),
    ),
    selftest(
        "rig_selftest_kmemleak",
        Body::OnHeap("rust_system", detectors::selftest_kmemleak),
    ),
    selftest(
        "rig_selftest_side_by_side",
        Body::SideBySide(detectors::selftest_side_by_side),
    ),
    // Last: lockdep switches itself off after its first report.
    selftest(
        "rig_selftest_lockdep",
        Body::OnHeap("rust_system", detectors::selftest_lockdep),
    ),
    // After everything: leaks only a whole-run scan can see.
    finally("kmemleak", Body::Global(detectors::kmemleak)),
];

use crate::uapi::{KIB, MIB};

fn heaps_present(ctx: &mut Ctx) -> Outcome {
    ensure!(
        Path::new(DMA_HEAP_DIR).is_dir(),
        "{DMA_HEAP_DIR} does not exist: the kernel has no dma-buf heaps (CONFIG_DMABUF_HEAPS)"
    );
    let names = heap_names().context(format!("listing {DMA_HEAP_DIR}"))?;
    ctx.fact("heaps", names.join(", "));
    let all = registered_heaps().context(format!("listing {DMA_HEAP_DIR}"))?;
    for alias in all.iter().filter(|h| !names.contains(h)) {
        let of = heaprig_protocol::heaps::alias_of(alias, &all).unwrap_or("?");
        ctx.fact(
            alias,
            format!("the same heap as {of}, registered twice; tested as {of}"),
        );
    }
    // Every heap the kernel was built with (all of them decide bisect and --heap verdicts,
    // which compare no snapshot); without a config, at least the C system heap.
    let expected = crate::expect::expected_heaps();
    let expected = if expected.is_empty() {
        vec![("CONFIG_DMABUF_HEAPS_SYSTEM", "system")]
    } else {
        expected
    };
    for (option, heap) in expected {
        ensure!(
            names.iter().any(|n| n == heap),
            "heap {heap} ({option}) is not registered; heaps found: {names:?}"
        );
    }
    Ok(())
}

/// A byte pattern that differs per page and per heap run, so a stale or shifted page shows.
fn pattern(i: usize, seed: u8) -> u8 {
    (i as u8).wrapping_mul(31).wrapping_add((i >> 12) as u8) ^ seed
}

fn alloc_mmap_sync_roundtrip(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    for (len, seed) in [(4 * KIB, 0x5a), (MIB, 0xa5), (MIB + 4 * KIB, 0x3c)] {
        let buf = heap.alloc(len).context(format!("alloc {len} bytes"))?;
        let mut map = buf.mmap(0, len as usize).context("mmap")?;

        buf.sync_start(Access::Read).context("SYNC START|READ")?;
        let nonzero = map.as_slice().iter().filter(|&&b| b != 0).count();
        buf.sync_end(Access::Read).context("SYNC END|READ")?;
        ensure!(
            nonzero == 0,
            "fresh {len}-byte buffer has {nonzero} non-zero bytes"
        );

        buf.sync_start(Access::Write).context("SYNC START|WRITE")?;
        for (i, b) in map.as_mut_slice().iter_mut().enumerate() {
            *b = pattern(i, seed);
        }
        buf.sync_end(Access::Write).context("SYNC END|WRITE")?;

        // Read back through a second, independent mapping of the same buffer.
        let again = buf.mmap(0, len as usize).context("second mmap")?;
        buf.sync_start(Access::Read).context("SYNC START|READ")?;
        let bad = again
            .as_slice()
            .iter()
            .enumerate()
            .find(|&(i, &b)| b != pattern(i, seed));
        buf.sync_end(Access::Read).context("SYNC END|READ")?;
        if let Some((i, &b)) = bad {
            return Err(Stop::Fail(format!(
                "{len}-byte buffer: byte {i} reads {b:#04x}, wrote {:#04x}",
                pattern(i, seed)
            )));
        }
        ctx.fact(format!("roundtrip {len}"), "ok");
    }
    Ok(())
}

/// Every combination of the four low flag bits (READ, WRITE, END and the first unknown bit),
/// then single high bits and all bits: (label, flags).
fn sync_flag_table() -> Vec<(String, u64)> {
    // START is 0: a word without END is a START.
    let bits = [
        (DMA_BUF_SYNC_READ, "READ"),
        (DMA_BUF_SYNC_WRITE, "WRITE"),
        (0x8, "0x8"),
    ];
    let mut table: Vec<(String, u64)> = [DMA_BUF_SYNC_START, DMA_BUF_SYNC_END]
        .into_iter()
        .flat_map(|edge| (0u64..8).map(move |combo| (edge, combo)))
        .map(|(edge, combo)| {
            let chosen = bits
                .iter()
                .enumerate()
                .filter(move |(i, _)| combo & (1 << i) != 0)
                .map(|(_, b)| *b);
            let flags = chosen.clone().fold(edge, |f, (b, _)| f | b);
            let label = std::iter::once(if edge == DMA_BUF_SYNC_END {
                "END"
            } else {
                "START"
            })
            .chain(chosen.map(|(_, n)| n))
            .collect::<Vec<_>>()
            .join("|");
            (format!("{label} ({flags:#x})"), flags)
        })
        .collect();
    for bit in [4u32, 31, 32, 63] {
        table.push((format!("RW | bit {bit}"), DMA_BUF_SYNC_RW | 1 << bit));
    }
    table.push(("all bits".to_string(), u64::MAX));
    table
}

/// What the dma-buf core promises for a SYNC flag word: valid only with a direction and no
/// bit beyond READ, WRITE and END.
fn sync_flags_valid(flags: u64) -> bool {
    flags & DMA_BUF_SYNC_RW != 0 && flags & !(DMA_BUF_SYNC_RW | DMA_BUF_SYNC_END) == 0
}

fn sync_flag_validation(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let buf = heap.alloc(64 * KIB).context("alloc 64 KiB")?;
    for (label, flags) in sync_flag_table() {
        let got = buf.sync_raw(flags);
        ctx.fact(format!("sync {label}"), result_name(&got));
        match (sync_flags_valid(flags), &got) {
            (true, Ok(())) => {}
            (false, Err(e)) if e.raw_os_error() == Some(libc::EINVAL) => {}
            (true, Err(e)) => {
                return Err(Stop::Fail(format!(
                    "valid SYNC {label} failed: {}",
                    errno_name(e)
                )))
            }
            (false, Err(e)) => {
                return Err(Stop::Fail(format!(
                    "invalid SYNC {label}: {}, expected EINVAL",
                    errno_name(e)
                )))
            }
            (false, Ok(())) => return Err(Stop::Fail(format!("invalid SYNC {label} succeeded"))),
        }
    }
    Ok(())
}

fn set_name(ctx: &mut Ctx, heap: &Heap) -> Outcome {
    let buf = heap.alloc(4 * KIB).context("alloc 4 KiB")?;
    let name = format!("heaprig-{}", heap.name);
    buf.set_name(&name).context("DMA_BUF_SET_NAME_B")?;
    ctx.fact("set_name", "ok");
    // The name is visible in the exporter-independent bufinfo when debugfs is mounted.
    match std::fs::read_to_string("/sys/kernel/debug/dma_buf/bufinfo") {
        Ok(info) => {
            ensure!(
                info.contains(&name),
                "bufinfo does not list the buffer named {name}"
            );
            ctx.fact("name in bufinfo", "yes");
        }
        Err(e) => ctx.diag(format!(
            "bufinfo not readable ({e}); name not cross-checked"
        )),
    }
    Ok(())
}

fn selftest_fail(_ctx: &mut Ctx) -> Outcome {
    ensure!(
        1 + 1 == 3,
        "deliberate failure: the rig must report this test as not ok"
    );
    Ok(())
}

fn selftest_crash(_ctx: &mut Ctx) -> Outcome {
    // The Rust runtime's SIGSEGV handler (stack-overflow detection) would swallow a raised
    // signal, so restore the default action first, as a real segfault would meet it.
    // SAFETY: resetting a signal disposition and raising a signal touch no Rust memory.
    unsafe {
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    Ok(())
}

fn selftest_timeout(_ctx: &mut Ctx) -> Outcome {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// A flake on demand: fails on the run's first attempt, passes on any retry, so `--retries`
/// must report it FLAKY (and a run without retries must report it failed).
fn selftest_flaky(ctx: &mut Ctx) -> Outcome {
    let attempt = crate::harness::attempt();
    ctx.diag(format!("attempt {attempt}"));
    ensure!(
        attempt > 0,
        "deliberate flake: fails on its first attempt, passes when retried"
    );
    Ok(())
}

fn selftest_warning(_ctx: &mut Ctx) -> Outcome {
    let trigger = "/sys/kernel/debug/provoke-crash/DIRECT";
    if !Path::new(trigger).exists() {
        return Err(crate::expect::missing(
            "CONFIG_LKDTM",
            format!("{trigger} is missing"),
        ));
    }
    std::fs::write(trigger, "WARNING").context(format!("writing WARNING to {trigger}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_flags_cover_every_low_bit_combination() {
        let t = sync_flag_table();
        let low: std::collections::BTreeSet<u64> = t.iter().map(|(_, f)| f & 0xf).collect();
        assert_eq!(low.len(), 16, "{t:?}");
        assert!(t.iter().any(|(_, f)| *f == u64::MAX));
        assert!(t.iter().any(|(_, f)| *f == DMA_BUF_SYNC_RW | 1 << 63));
        let valid: Vec<&str> = t
            .iter()
            .filter(|(_, f)| sync_flags_valid(*f))
            .map(|(l, _)| l.as_str())
            .collect();
        // READ, WRITE, RW, each with and without END.
        assert_eq!(
            valid,
            [
                "START|READ (0x1)",
                "START|WRITE (0x2)",
                "START|READ|WRITE (0x3)",
                "END|READ (0x5)",
                "END|WRITE (0x6)",
                "END|READ|WRITE (0x7)"
            ]
        );
    }
}
