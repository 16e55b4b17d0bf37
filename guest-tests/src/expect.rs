//! What the kernel under test was built with: the rig passes its `.config`
//! (`--kernel-config`), so a heap, a detector or the test importer that the kernel should have
//! is a failure when it is missing, and a SKIP only on a kernel built without it. Without a
//! config (the runner started by hand) nothing is expected and absences stay SKIPs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::OnceLock;

use crate::harness::Stop;
use crate::uapi::importer::{IMPORTER_DEV, IMPORTER_NC_DEV};
use crate::uapi::{heap_stats, Importer};

static BUILT_WITH: OnceLock<BTreeSet<String>> = OnceLock::new();
static MODULES: OnceLock<BTreeSet<String>> = OnceLock::new();

/// The options a `.config` sets to `y` or `m`.
pub fn parse_config(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, v)| k.starts_with("CONFIG_") && (*v == "y" || *v == "m"))
        .map(|(k, _)| k.to_string())
        .collect()
}

/// The options a `.config` builds as modules (`m`).
pub fn parse_modules(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.trim().split_once('='))
        .filter(|(k, v)| k.starts_with("CONFIG_") && *v == "m")
        .map(|(k, _)| k.to_string())
        .collect()
}

/// Records the kernel's options (from its `.config`) for this process and the test children
/// it forks.
pub fn set_config(text: &str) {
    let _ = BUILT_WITH.set(parse_config(text));
    let _ = MODULES.set(parse_modules(text));
}

/// Whether the kernel builds `option` as a loadable module.
pub fn built_as_module(option: &str) -> bool {
    MODULES.get().is_some_and(|o| o.contains(option))
}

/// Whether the kernel was built with `option` (`y` or `m`); false when no config was given.
pub fn built_with(option: &str) -> bool {
    BUILT_WITH.get().is_some_and(|o| o.contains(option))
}

/// The heap each option registers under /dev/dma_heap, by its names: the default CMA area's
/// heap is `reserved` up to 6.16 and `default_cma_region` since.
pub const HEAPS: &[(&str, &[&str])] = &[
    ("CONFIG_DMABUF_HEAPS_SYSTEM", &["system"]),
    ("CONFIG_DMABUF_HEAPS_RUST_SYSTEM", &["rust_system"]),
    (
        "CONFIG_DMABUF_HEAPS_CMA",
        heaprig_protocol::heaps::CMA_NAMES,
    ),
];

/// Which of `names` this kernel registered (the first when none is there, for messages).
fn registered(names: &'static [&'static str]) -> &'static str {
    let present = crate::uapi::heap_names().unwrap_or_default();
    names
        .iter()
        .find(|n| present.iter().any(|p| p == *n))
        .unwrap_or(&names[0])
}

/// Heaps that publish counters in debugfs (`/sys/kernel/debug/<heap>_heap/stats`).
const COUNTED: &[(&str, &str)] = &[("CONFIG_DMABUF_HEAPS_RUST_SYSTEM", "rust_system")];

/// Whether `heap`'s counters must be readable on this kernel.
pub fn counters_expected(heap: &str) -> bool {
    built_with("CONFIG_DEBUG_FS")
        && COUNTED
            .iter()
            .any(|(option, h)| *h == heap && built_with(option))
}

/// A heap's counters: `None` for a heap without them, a failure when they should be there
/// (a check that needs them must not quietly do nothing).
pub fn stats(heap: &str) -> Result<Option<BTreeMap<String, u64>>, Stop> {
    match heap_stats(heap) {
        None if counters_expected(heap) => Err(Stop::Fail(format!(
            "{heap}'s counters (/sys/kernel/debug/{heap}_heap/stats) are unreadable, though \
             this kernel has the heap and debugfs"
        ))),
        s => Ok(s),
    }
}

/// The heaps this kernel must register, with the option that asks for each.
pub fn expected_heaps() -> Vec<(&'static str, &'static str)> {
    HEAPS
        .iter()
        .filter(|(option, _)| built_with(option))
        .map(|(option, names)| (*option, registered(names)))
        .collect()
}

/// The option that registers `heap`, if the kernel was built with it.
pub fn heap_expected(heap: &str) -> Option<&'static str> {
    expected_heaps()
        .into_iter()
        .find(|(_, h)| *h == heap)
        .map(|(o, _)| o)
}

/// The stop for something absent: a failure when the kernel was built with `option` (the
/// detector or device switched itself off, or never registered), else a SKIP.
pub fn missing(option: &str, what: impl fmt::Display) -> Stop {
    missing_all(&[option], what)
}

/// As [`missing`] for something that needs every one of `options`.
pub fn missing_all(options: &[&str], what: impl fmt::Display) -> Stop {
    stop_for(
        options.iter().all(|o| built_with(o)),
        &options.join(" and "),
        what,
    )
}

fn stop_for(built: bool, option: &str, what: impl fmt::Display) -> Stop {
    if built {
        Stop::Fail(format!(
            "{what}; this kernel was built with {option}, so that is a failure, not a skip"
        ))
    } else {
        Stop::Skip(format!("{what} (kernel built without {option})"))
    }
}

/// The test importer: the one policy for opening it.
pub fn importer() -> Result<Importer, Stop> {
    Importer::open().map_err(|e| {
        missing(
            "CONFIG_DMABUF_TEST_IMPORTER",
            format!("cannot open {IMPORTER_DEV}: {e}"),
        )
    })
}

/// The test importer's non-coherent device: it exists where devices can have their own DMA
/// operations (`CONFIG_ARCH_HAS_DMA_OPS`, which the rig's config gets from `GART_IOMMU`).
pub fn noncoherent_importer() -> Result<Importer, Stop> {
    Importer::open_at(IMPORTER_NC_DEV).map_err(|e| {
        missing_all(
            &["CONFIG_DMABUF_TEST_IMPORTER", "CONFIG_ARCH_HAS_DMA_OPS"],
            format!("cannot open {IMPORTER_NC_DEV}: {e}"),
        )
    })
}

/// The test importer for tests that use it as an extra check: `None` only on a kernel built
/// without it.
pub fn optional_importer() -> Result<Option<Importer>, Stop> {
    match importer() {
        Ok(i) => Ok(Some(i)),
        Err(Stop::Skip(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_options_set_to_y_or_m() {
        let c = parse_config(
            "# comment\nCONFIG_DEBUG_KMEMLEAK=y\nCONFIG_LKDTM=m\n# CONFIG_KASAN is not set\nCONFIG_HZ=100\n",
        );
        assert_eq!(
            c.into_iter().collect::<Vec<_>>(),
            ["CONFIG_DEBUG_KMEMLEAK", "CONFIG_LKDTM"]
        );
        let m = parse_modules("CONFIG_A=y\nCONFIG_B=m\n# CONFIG_C is not set\n");
        assert_eq!(m.into_iter().collect::<Vec<_>>(), ["CONFIG_B"]);
    }

    #[test]
    fn absent_is_a_failure_only_when_the_kernel_was_built_with_it() {
        assert!(matches!(
            stop_for(false, "CONFIG_X", "x is absent"),
            Stop::Skip(m) if m.contains("without CONFIG_X")
        ));
        assert!(matches!(
            stop_for(true, "CONFIG_X", "x is absent"),
            Stop::Fail(m) if m.starts_with("x is absent; this kernel was built with CONFIG_X")
        ));
        // This test process was given no config, so nothing is expected.
        assert!(expected_heaps().is_empty());
    }
}
