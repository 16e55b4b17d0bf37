//! The leak oracle: what the kernel holds for dma-bufs before and after a test.
//!
//! Four views, all compared across every test by the runner:
//! - `/sys/kernel/debug/dma_buf/bufinfo`, the dma-buf core's list of every live buffer and
//!   its attachments, whichever exporter made it (so it covers the C heaps too);
//! - each heap's own counters, for heaps that keep them (live buffers, bytes, vmaps);
//! - pages still allocated from a heap's allocation path, which trusts no heap: page_owner
//!   (`CONFIG_PAGE_OWNER`, booted with `page_owner=on`) counts, per allocation stack, the
//!   pages not yet freed; a stack that runs through `dma_heap_ioctl` is a heap allocating
//!   (ours or C), and its count must be back where it was once a test closed everything;
//! - kernel mappings made on a dma-buf path, which trusts no heap either: /proc/vmallocinfo
//!   names each vmap area's caller, and the areas made by a heap's or the core's vmap code
//!   must be back where they were (the C heap counts none of its own).
//!
//! And after the whole suite, kmemleak: reports whose backtrace runs through dma-buf code.

use std::collections::BTreeMap;

use crate::uapi::{heap_names, heap_stats, DMA_HEAP_DIR};

pub const BUFINFO: &str = "/sys/kernel/debug/dma_buf/bufinfo";
pub const KMEMLEAK: &str = "/sys/kernel/debug/kmemleak";
pub const PAGE_OWNER_STACKS: &str = "/sys/kernel/debug/page_owner_stacks/show_stacks";
pub const VMALLOCINFO: &str = "/proc/vmallocinfo";

/// Stops kmemleak's own scanning thread, if kmemleak is there. Its first scan comes 60 s
/// after boot (mm/kmemleak.c, `SECS_FIRST_SCAN`), in the middle of a long run: it takes a
/// guest CPU from the tests for seconds and holds the scan mutex the suite's own check then
/// waits on (6.12: that check's second scan took 12.6 s instead of 5 s). The suite's own
/// scans report everything the thread would have found.
pub fn stop_kmemleak_thread() -> std::io::Result<()> {
    if !std::path::Path::new(KMEMLEAK).exists() {
        return Ok(());
    }
    std::fs::write(KMEMLEAK, "scan=off")
}

/// Callers of `vmap()` that make a dma-buf's kernel mapping: the C system and CMA heaps, and the
/// helper the Rust abstractions call (`rust_helper_vmap_kernel`).
const VMAP_CALLERS: [&str; 3] = ["system_heap", "cma_heap", "vmap_kernel"];

/// Counts /proc/vmallocinfo's `vmap` areas (mm/vmalloc.c, `vmalloc_info_show`: range, size,
/// `caller+off/len`, `pages=N`, kind, NUMA counts) by caller function, for callers on a
/// dma-buf path.
pub fn heap_vmaps(text: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(_range), Some(_size), Some(caller)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        if !words.any(|w| w == "vmap") {
            continue;
        }
        let func = caller.split('+').next().unwrap_or(caller);
        if VMAP_CALLERS.iter().any(|c| func.contains(c)) {
            *out.entry(func.to_string()).or_insert(0) += 1;
        }
    }
    out
}

/// The frame every heap allocation runs through (`DMA_HEAP_IOCTL_ALLOC`).
const HEAP_PATH: &str = "dma_heap_ioctl";
/// Slab pages outlive the objects that made a cache grow: not a leak of whoever grew it.
const SLAB_FRAMES: [&str; 2] = ["allocate_slab", "new_slab"];

/// Parses `show_stacks` (mm/page_owner.c, `stack_print`): blocks of ` symbol+off/len` frames,
/// innermost first, each ended by `nr_base_pages: N` (pages allocated there, not yet freed).
pub fn parse_page_owner_stacks(text: &str) -> Vec<(Vec<String>, u64)> {
    let mut out = Vec::new();
    let mut frames = Vec::new();
    for line in text.lines() {
        if let Some(n) = line.trim().strip_prefix("nr_base_pages:") {
            if let Ok(n) = n.trim().parse() {
                out.push((std::mem::take(&mut frames), n));
            }
        } else if !line.trim().is_empty() {
            // "symbol+0x1a/0x40 [module]": the symbol names the frame.
            let sym = line.trim().split(['+', ' ']).next().unwrap_or_default();
            frames.push(sym.to_string());
        }
    }
    out
}

/// Pages outstanding from heap allocation paths, by the heap's own frame (the one the
/// dma-heap core called), so a finding names who allocated them.
pub fn heap_path_pages(stacks: &[(Vec<String>, u64)]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (frames, n) in stacks {
        let Some(ioctl) = frames.iter().position(|f| f.starts_with(HEAP_PATH)) else {
            continue;
        };
        if frames.iter().any(|f| SLAB_FRAMES.contains(&f.as_str())) {
            continue;
        }
        // Innermost first: the frames just inside the core's ioctl are the heap's own.
        let who = frames[..ioctl]
            .iter()
            .rev()
            .find(|f| !f.starts_with("dma_heap"))
            // `{:#}` drops the crate hashes of a Rust frame; a C symbol stays as it is.
            .map(|f| format!("{:#}", rustc_demangle::demangle(f)))
            .unwrap_or_else(|| HEAP_PATH.to_string());
        *out.entry(who).or_insert(0) += n;
    }
    out
}

/// The counter a heap with a page pool keeps of the base pages its pool holds.
const POOL_PAGES: &str = "pool_pages";

/// The pooled pages of every heap that has a pool: heap -> pages.
fn pooled_pages() -> BTreeMap<String, u64> {
    heap_names()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|h| {
            let n = *heap_stats(&h)?.get(POOL_PAGES)?;
            Some((h, n))
        })
        .collect()
}

/// Takes each heap's pooled pages off its allocating frame's outstanding pages: a pooled page
/// was allocated on the heap path and not freed, and is no leak, but a page that is neither
/// in a buffer, in the pool nor freed still is. A Rust heap's frame names its crate
/// (`<kernel::dma_heap::HeapVTable<rust_system_heap::RustSystemHeap>>::allocate`); pooled
/// pages no frame accounts for are an error, never silently dropped.
pub fn without_pooled(
    mut pages: BTreeMap<String, u64>,
    pooled: &BTreeMap<String, u64>,
) -> Result<BTreeMap<String, u64>, String> {
    for (heap, &n) in pooled {
        if n == 0 {
            continue;
        }
        let crate_path = format!("{heap}_heap::");
        let Some((who, have)) = pages.iter_mut().find(|(who, _)| who.contains(&crate_path)) else {
            return Err(format!(
                "{heap} heap: its pool holds {n} page(s) but page_owner shows no allocating \
                 frame of {crate_path}"
            ));
        };
        *have = have.checked_sub(n).ok_or_else(|| {
            format!(
                "{heap} heap: its pool claims {n} page(s) but page_owner counts only {have} \
                 outstanding from {who} (a pool counter that overcounts)"
            )
        })?;
    }
    Ok(pages)
}

/// The counts of a per-source view (page_owner pages, vmap areas) that grew from `then` to
/// `now`: (source, before, after). Nothing when either side was not read.
fn grown<'a>(
    now: &'a Option<BTreeMap<String, u64>>,
    then: &'a Option<BTreeMap<String, u64>>,
) -> impl Iterator<Item = (&'a str, u64, u64)> {
    let pairs = match (now, then) {
        (Some(now), Some(then)) => Some((now, then)),
        _ => None,
    };
    pairs.into_iter().flat_map(|(now, then)| {
        now.iter().filter_map(|(who, &n)| {
            let old = then.get(who).copied().unwrap_or(0);
            (n > old).then_some((who.as_str(), old, n))
        })
    })
}

/// One live dma-buf as bufinfo lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Buffer {
    pub ino: u64,
    pub size: u64,
    pub exporter: String,
    pub name: String,
    pub file_count: u64,
    pub attachments: Vec<String>,
}

/// Parses bufinfo (drivers/dma-buf/dma-buf.c, `dma_buf_debug_show`): one tab-separated line
/// per buffer (size, flags, mode, count, exp_name, ino, name), then its attached devices.
pub fn parse_bufinfo(text: &str) -> Vec<Buffer> {
    let mut out: Vec<Buffer> = Vec::new();
    let mut in_attached = false;
    for line in text.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        // "%08zu": at least 8 digits, more for a buffer of 100,000,000 bytes or larger.
        if fields.len() >= 7
            && fields[0].len() >= 8
            && fields[0].bytes().all(|b| b.is_ascii_digit())
        {
            let num = |s: &str| s.trim().parse::<u64>().ok();
            if let (Some(size), Some(file_count), Some(ino)) =
                (num(fields[0]), num(fields[3]), num(fields[5]))
            {
                out.push(Buffer {
                    ino,
                    size,
                    exporter: fields[4].to_string(),
                    name: fields[6..].join("\t"),
                    file_count,
                    attachments: Vec::new(),
                });
                in_attached = false;
                continue;
            }
        }
        if line == "\tAttached Devices:" {
            in_attached = true;
        } else if line.starts_with("Total ") || line.is_empty() {
            in_attached = false;
        } else if in_attached {
            if let (Some(b), Some(dev)) = (out.last_mut(), line.strip_prefix('\t')) {
                b.attachments.push(dev.to_string());
            }
        }
    }
    out
}

/// Counters that describe what a heap holds now (the others only ever grow).
const HELD_COUNTERS: [&str; 3] = ["live_buffers", "live_bytes", "current_vmaps"];

/// What the kernel holds for dma-bufs at one moment.
#[derive(Debug, Default, Clone)]
pub struct Holdings {
    /// By inode number, unique per buffer for the life of the boot.
    pub buffers: BTreeMap<u64, Buffer>,
    /// heap -> counter -> value, for heaps with counters.
    pub counters: BTreeMap<String, BTreeMap<String, u64>>,
    /// Pages outstanding from heap allocation paths, by allocating frame (see
    /// [`heap_path_pages`]); `None` on a kernel without page_owner.
    pub heap_pages: Option<BTreeMap<String, u64>>,
    /// Kernel mappings made on a dma-buf path, by caller (see [`heap_vmaps`]); `None` when
    /// not read.
    pub heap_vmaps: Option<BTreeMap<String, u64>>,
}

impl Holdings {
    /// Reads every view; fails with the reason when bufinfo is unreadable (no debugfs).
    pub fn read() -> Result<Holdings, String> {
        let mut h = Self::read_buffers()?;
        h.heap_pages = match Self::read_page_owner() {
            Ok(pages) => Some(pages?),
            Err(e) if crate::expect::built_with("CONFIG_PAGE_OWNER") => {
                return Err(format!(
                    "{PAGE_OWNER_STACKS}: {e} (the kernel has CONFIG_PAGE_OWNER: was it booted \
                     without page_owner=on?)"
                ))
            }
            Err(_) => None,
        };
        let text =
            std::fs::read_to_string(VMALLOCINFO).map_err(|e| format!("{VMALLOCINFO}: {e}"))?;
        h.heap_vmaps = Some(heap_vmaps(&text));
        Ok(h)
    }

    /// Outstanding heap-path pages, pools taken off. The pool counters are read before and
    /// after page_owner and must agree (a shrinker may free pooled pages at any time); the
    /// outer error is page_owner's file, the inner one a pool that does not add up.
    fn read_page_owner() -> std::io::Result<Result<BTreeMap<String, u64>, String>> {
        let mut tries = 0;
        loop {
            let pooled = pooled_pages();
            let text = std::fs::read_to_string(PAGE_OWNER_STACKS)?;
            if pooled_pages() == pooled || tries == 4 {
                return Ok(without_pooled(
                    heap_path_pages(&parse_page_owner_stacks(&text)),
                    &pooled,
                ));
            }
            tries += 1;
        }
    }

    /// The buffer and counter views only: for checks repeated many times within one test
    /// (the fault sweep), where page_owner's ~0.2 s per read would dominate; the test's own
    /// oracle reads every view around it.
    pub fn read_buffers() -> Result<Holdings, String> {
        let text = std::fs::read_to_string(BUFINFO).map_err(|e| format!("{BUFINFO}: {e}"))?;
        let buffers = parse_bufinfo(&text)
            .into_iter()
            .map(|b| (b.ino, b))
            .collect();
        let mut counters = BTreeMap::new();
        let heaps = heap_names().map_err(|e| format!("{DMA_HEAP_DIR}: {e}"))?;
        for heap in heaps {
            match heap_stats(&heap) {
                Some(stats) => {
                    let held = stats
                        .into_iter()
                        .filter(|(k, _)| HELD_COUNTERS.contains(&k.as_str()))
                        .collect();
                    counters.insert(heap, held);
                }
                None if crate::expect::counters_expected(&heap) => {
                    return Err(format!("{heap}'s counters are unreadable"))
                }
                None => {}
            }
        }
        Ok(Holdings {
            buffers,
            counters,
            heap_pages: None,
            heap_vmaps: None,
        })
    }

    /// What `self` (after) holds that `before` did not, one line per finding.
    pub fn leaked_since(&self, before: &Holdings) -> Vec<String> {
        let mut found = Vec::new();
        for (ino, b) in &self.buffers {
            match before.buffers.get(ino) {
                None => found.push(format!(
                    "dma-buf left behind: {} bytes from {} (ino {ino}, name {}, {} file \
                     reference(s), attached to [{}])",
                    b.size,
                    b.exporter,
                    b.name,
                    b.file_count,
                    b.attachments.join(", ")
                )),
                Some(old) => {
                    if b.attachments.len() > old.attachments.len() {
                        found.push(format!(
                            "attachment left behind on a {}-byte {} buffer (ino {ino}): [{}] \
                             before, [{}] after",
                            b.size,
                            b.exporter,
                            old.attachments.join(", "),
                            b.attachments.join(", ")
                        ));
                    }
                    // A reference taken in the kernel (dma_buf_get) and never put.
                    if b.file_count > old.file_count {
                        found.push(format!(
                            "buffer reference left behind on a {}-byte {} buffer (ino {ino}): \
                             {} file reference(s) before, {} after",
                            b.size, b.exporter, old.file_count, b.file_count
                        ));
                    }
                }
            }
        }
        for (who, old, n) in grown(&self.heap_pages, &before.heap_pages) {
            found.push(format!(
                "pages left behind on a heap's allocation path: {} page(s) allocated by {who} \
                 under {HEAP_PATH} and never freed (page_owner: {old} before, {n} after)",
                n - old
            ));
        }
        for (who, old, n) in grown(&self.heap_vmaps, &before.heap_vmaps) {
            found.push(format!(
                "kernel mapping left behind: {} vmap area(s) made by {who} and never unmapped \
                 (/proc/vmallocinfo: {old} before, {n} after)",
                n - old
            ));
        }
        for heap in before.counters.keys() {
            if !self.counters.contains_key(heap) {
                found.push(format!(
                    "{heap} heap: its counters were there before and not after"
                ));
            }
        }
        for (heap, now) in &self.counters {
            let Some(then) = before.counters.get(heap) else {
                continue;
            };
            for (k, v) in now {
                let old = then.get(k).copied().unwrap_or(0);
                if *v > old {
                    found.push(format!("{heap} heap: {k} went from {old} to {v}"));
                } else if *v < old {
                    // Nothing the test did not make can be freed by it: a fall is a double
                    // release or an underflow.
                    found.push(format!(
                        "{heap} heap: {k} fell from {old} to {v} (released more than the test \
                         made: a double release or an underflow, or an earlier test's leak \
                         freed late)"
                    ));
                }
            }
        }
        found
    }
}

/// One kmemleak report: its header line and backtrace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeakReport {
    pub header: String,
    pub comm: String,
    pub backtrace: Vec<String>,
}

/// Parses /sys/kernel/debug/kmemleak (mm/kmemleak.c, `print_unreferenced`): blocks that
/// start with "unreferenced object", then comm, hex dump and backtrace lines.
pub fn parse_kmemleak(text: &str) -> Vec<LeakReport> {
    let mut out: Vec<LeakReport> = Vec::new();
    let mut in_trace = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with("unreferenced object") {
            out.push(LeakReport {
                header: t.to_string(),
                comm: String::new(),
                backtrace: Vec::new(),
            });
            in_trace = false;
        } else if let Some(r) = out.last_mut() {
            if t.starts_with("comm ") {
                r.comm = t.to_string();
            } else if t.starts_with("backtrace") {
                in_trace = true;
            } else if in_trace && !t.is_empty() {
                // 6.12 prints "func+0x12/0x34"; older kernels prefix "[<address>] ".
                let sym = t.split_once("] ").map_or(t, |(_, s)| s);
                r.backtrace.push(sym.to_string());
            }
        }
    }
    out
}

/// Symbol fragments of the code under test: the dma-buf core and heaps, our heap, the test
/// importer and the Rust abstractions (mangled Rust names keep the module path).
const OURS: [&str; 4] = ["dma_buf", "dma_heap", "dmabuf", "system_heap"];

impl LeakReport {
    /// The allocating task's pid, from `comm "name", pid N, jiffies J`.
    pub fn pid(&self) -> Option<i32> {
        let rest = &self.comm[self.comm.find(", pid ")? + 6..];
        rest.split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    }

    /// Whether the leaked object was allocated on a path through dma-buf code.
    pub fn is_ours(&self) -> bool {
        self.backtrace
            .iter()
            .any(|f| OURS.iter().any(|o| f.to_ascii_lowercase().contains(o)))
    }

    pub fn summary(&self) -> String {
        let frames: Vec<&str> = self
            .backtrace
            .iter()
            .map(|f| f.split('+').next().unwrap_or(f))
            .take(8)
            .collect();
        format!("{} [{}] via {}", self.header, self.comm, frames.join(" < "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from the debug kernel after `rig_selftest_leak` (cargo xtask exec, 2026-11-25).
    const BUFINFO_CAPTURED: &str = "\nDma-buf Objects:\nsize    \tflags   \tmode    \tcount   \texp_name\tino     \tname\n00004096\t00000002\t00080007\t00000001\trust_system\t00000001\t<none>\n\tAttached Devices:\nTotal 0 devices attached\n\n\nTotal 1 objects, 4096 bytes\n";

    #[test]
    fn bufinfo_captured_from_the_kernel() {
        let b = parse_bufinfo(BUFINFO_CAPTURED);
        assert_eq!(b.len(), 1);
        assert_eq!((b[0].ino, b[0].size, b[0].file_count), (1, 4096, 1));
        assert_eq!(
            (b[0].exporter.as_str(), b[0].name.as_str()),
            ("rust_system", "<none>")
        );
        assert!(b[0].attachments.is_empty());
    }

    // Built from the format of stack_print() in mm/page_owner.c (" %pS" per frame, innermost
    // first, then "nr_base_pages: %d" and a blank line): a C heap allocation, a slab page
    // grown under the same ioctl, our heap's stack as the 6.12 debug kernel printed it after
    // `rig_selftest_page_leak` (cargo xtask exec, 2026-11-30), and a page allocated elsewhere.
    const STACKS_SAMPLE: &str = " get_page_from_freelist+0x4d3/0x1e90
 __alloc_pages_noprof+0x1b1/0x3a0
 system_heap_allocate+0x2d5/0x750
 dma_heap_ioctl+0x2b0/0x420
 __x64_sys_ioctl+0x12b/0x190
 do_syscall_64+0x6c/0x180
nr_base_pages: 16

 get_page_from_freelist+0x4d3/0x1e90
 allocate_slab+0x2b1/0x420
 ___slab_alloc+0x7a2/0x1100
 __kmalloc_noprof+0x1d0/0x3e0
 system_heap_allocate+0x1a0/0x750
 dma_heap_ioctl+0x2b0/0x420
nr_base_pages: 8

 get_page_from_freelist+0x4d3/0x1e90
 __alloc_pages_noprof+0x1b1/0x3a0
 rust_helper_alloc_pages+0x11/0x20
 _RNvMs1_NtCsl7L7n58I0Vr_6kernel7dma_bufNtB5_5Pages5alloc+0x11/0x20
 _RNvXs2_CsT8LgENHLCX_16rust_system_heapNtB5_14RustSystemHeapNtNtCsl7L7n58I0Vr_6kernel8dma_heap4Heap8allocate+0x423/0xb30
 _RNvMNtCsl7L7n58I0Vr_6kernel8dma_heapINtB2_10HeapVTableNtCsT8LgENHLCX_16rust_system_heap14RustSystemHeapE8allocateBS_+0x87/0xf0
 dma_heap_ioctl+0x299/0x460
nr_base_pages: 1

 get_page_from_freelist+0x4d3/0x1e90
 pte_alloc_one+0x1e/0x90
 __handle_mm_fault+0x9c1/0x1a40
nr_base_pages: 3

";

    #[test]
    fn page_owner_stacks_count_only_heap_paths_and_name_the_heap() {
        let stacks = parse_page_owner_stacks(STACKS_SAMPLE);
        assert_eq!(stacks.len(), 4);
        assert_eq!(stacks[0].1, 16);
        assert_eq!(stacks[0].0[2], "system_heap_allocate");
        let pages = heap_path_pages(&stacks);
        assert_eq!(pages.len(), 2, "{pages:?}");
        assert_eq!(
            pages["system_heap_allocate"], 16,
            "slab pages are not counted"
        );
        // Ours: the frame the core called, the vtable's trampoline.
        let ours = "<kernel::dma_heap::HeapVTable<rust_system_heap::RustSystemHeap>>::allocate";
        assert_eq!(pages.get(ours), Some(&1), "{pages:?}");
    }

    #[test]
    fn pooled_pages_are_taken_off_their_heap_and_only_theirs() {
        let ours = "<kernel::dma_heap::HeapVTable<rust_system_heap::RustSystemHeap>>::allocate";
        let pages = heap_path_pages(&parse_page_owner_stacks(STACKS_SAMPLE));
        let pooled = BTreeMap::from([("rust_system".to_string(), 1)]);
        let left = without_pooled(pages.clone(), &pooled).unwrap();
        assert_eq!(left[ours], 0);
        assert_eq!(
            left["system_heap_allocate"], 16,
            "the C heap keeps its pages"
        );
        let none = BTreeMap::from([("rust_system".to_string(), 0)]);
        assert_eq!(without_pooled(pages.clone(), &none).unwrap(), pages);
        let over = BTreeMap::from([("rust_system".to_string(), 2)]);
        let e = without_pooled(pages.clone(), &over).unwrap_err();
        assert!(e.contains("claims 2 page(s)"), "{e}");
        let stranger = BTreeMap::from([("other".to_string(), 1)]);
        let e = without_pooled(pages, &stranger).unwrap_err();
        assert!(e.contains("other_heap::"), "{e}");
    }

    #[test]
    fn more_heap_path_pages_after_a_test_are_a_leak() {
        let mut before = Holdings {
            heap_pages: Some(BTreeMap::from([("system_heap_allocate".to_string(), 16)])),
            ..Holdings::default()
        };
        let mut after = before.clone();
        assert!(after.leaked_since(&before).is_empty());
        after
            .heap_pages
            .as_mut()
            .unwrap()
            .insert("system_heap_allocate".into(), 17);
        let found = after.leaked_since(&before);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("1 page(s) allocated by system_heap_allocate"));
        // Fewer is no finding (an earlier leak's pages cannot be told apart from a free).
        before.heap_pages = Some(BTreeMap::from([("system_heap_allocate".to_string(), 20)]));
        assert!(after.leaked_since(&before).is_empty());
    }

    // Captured from /proc/vmallocinfo on the 6.12 debug kernel (cargo xtask exec, 2026-12-01)
    // after `importer_vmap_writes_visible` ran with the importer's `leak_vmap` knob on: one
    // leaked mapping per heap, an ioremap and a vmalloc area of other code.
    const VMALLOCINFO_SAMPLE: &str = "\
0x00000000c954cbc9-0x000000002d82870c    8192 acpi_os_map_iomem+0x289/0x4b0 phys=0x000000007ffe2000 ioremap
0x000000006b6012e1-0x0000000001e09526 1085440 rust_helper_vmap_kernel+0x59/0x60 vmap
0x000000000e748be9-0x00000000fc058778 1085440 system_heap_vmap+0x32a/0x4e0 vmap
0x0000000064694268-0x000000006b6012e1   16384 n_tty_open+0x1c/0x140 pages=3 vmalloc
";

    #[test]
    fn vmap_areas_are_counted_by_dma_buf_caller_and_a_new_one_is_a_leak() {
        let v = heap_vmaps(VMALLOCINFO_SAMPLE);
        assert_eq!(
            v,
            BTreeMap::from([
                ("rust_helper_vmap_kernel".to_string(), 1),
                ("system_heap_vmap".to_string(), 1)
            ])
        );
        let before = Holdings {
            heap_vmaps: Some(heap_vmaps("")),
            ..Holdings::default()
        };
        let after = Holdings {
            heap_vmaps: Some(v),
            ..Holdings::default()
        };
        let found = after.leaked_since(&before);
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[1].contains("1 vmap area(s) made by system_heap_vmap"));
        assert!(
            before.leaked_since(&after).is_empty(),
            "an unmap is no leak"
        );
    }

    // Built from the format of dma_buf_debug_show() (attachment lines are "\t<device>"):
    // two buffers, one attached to the test importer.
    const BUFINFO_SAMPLE: &str = "\nDma-buf Objects:\nsize    \tflags   \tmode    \tcount   \texp_name\tino     \tname\n00065536\t00000002\t00080007\t00000001\trust_system\t00000042\t<none>\n\tAttached Devices:\nTotal 0 devices attached\n\n00004096\t00000002\t00080007\t00000002\tsystem\t00000043\theaprig-system\n\tAttached Devices:\n\tdmabuf_test_importer\nTotal 1 devices attached\n\n\nTotal 2 objects, 69632 bytes\n";

    #[test]
    fn bufinfo_lists_buffers_and_attachments() {
        let b = parse_bufinfo(BUFINFO_SAMPLE);
        assert_eq!(b.len(), 2);
        assert_eq!(
            (b[0].ino, b[0].size, b[0].exporter.as_str()),
            (42, 65536, "rust_system")
        );
        assert!(b[0].attachments.is_empty());
        assert_eq!(b[1].name, "heaprig-system");
        assert_eq!(b[1].file_count, 2);
        assert_eq!(b[1].attachments, ["dmabuf_test_importer"]);
    }

    #[test]
    fn leaks_are_new_buffers_attachments_and_counters() {
        let all = parse_bufinfo(BUFINFO_SAMPLE);
        let mut before = Holdings::default();
        before.buffers.insert(42, all[0].clone());
        let mut old43 = all[1].clone();
        old43.attachments.clear();
        before.buffers.insert(43, old43);
        before.counters.insert(
            "rust_system".into(),
            BTreeMap::from([("current_vmaps".to_string(), 0)]),
        );
        let mut after = before.clone();
        assert!(after.leaked_since(&before).is_empty());

        after.buffers.insert(43, all[1].clone());
        after.buffers.insert(
            44,
            Buffer {
                ino: 44,
                ..all[0].clone()
            },
        );
        after
            .counters
            .get_mut("rust_system")
            .map(|c| c.insert("current_vmaps".into(), 1));
        let found = after.leaked_since(&before);
        assert_eq!(found.len(), 3, "{found:#?}");
        assert!(found[0].contains("attachment left behind") && found[0].contains("ino 43"));
        assert!(found[1].contains("dma-buf left behind: 65536 bytes from rust_system (ino 44"));
        assert!(found[2].contains("current_vmaps went from 0 to 1"));
        // A reference the kernel took and never put shows as a higher file count.
        if let Some(b) = after.buffers.get_mut(&42) {
            b.file_count += 1;
        }
        let found = after.leaked_since(&before);
        assert_eq!(found.len(), 4, "{found:#?}");
        assert!(found[0].contains("buffer reference left behind") && found[0].contains("ino 42"));
        // A buffer freed during the test is not a leak.
        let mut fewer = after.clone();
        fewer.counters = before.counters.clone();
        assert!(before.leaked_since(&fewer).is_empty());
        // A counter that falls is a double release or an underflow.
        let fell = before.leaked_since(&after);
        assert_eq!(fell.len(), 1, "{fell:#?}");
        assert!(
            fell[0].contains("current_vmaps fell from 1 to 0"),
            "{fell:?}"
        );
    }

    #[test]
    fn bufinfo_sizes_wider_than_eight_digits() {
        let text = BUFINFO_SAMPLE.replace("00065536\t", "134217728\t");
        let b = parse_bufinfo(&text);
        assert_eq!(b.len(), 2, "{b:#?}");
        assert_eq!(b[0].size, 134_217_728);
    }

    // Captured from the debug kernel after `rig_selftest_kmemleak` (first of its four reports,
    // cargo xtask exec, 2026-11-25), then a report from outside dma-buf code in the same
    // format (mm/kmemleak.c print_unreferenced()).
    const KMEMLEAK_SAMPLE: &str = "unreferenced object 0xff1100000bb23000 (size 128):
  comm \"heaprig-guest\", pid 73, jiffies 4294938732
  hex dump (first 32 bytes):
    6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b  kkkkkkkkkkkkkkkk
    6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b 6b  kkkkkkkkkkkkkkkk
  backtrace (crc d74abb28):
    kmemleak_alloc+0x27/0x30
    __kmalloc_node_track_caller_noprof+0x217/0x3b0
    krealloc_noprof+0x8a/0x120
    rust_helper_krealloc+0xd/0x10
    _RNvMNtNtCsl7L7n58I0Vr_6kernel5alloc9allocatorNtB2_11ReallocFunc4call+0x54/0x70
    _RNvMs0_Csav8P1tSYnBq_20dmabuf_test_importerNtB5_8Importer4vmap+0x9a/0x6e0
    _RNvXs3_Csav8P1tSYnBq_20dmabuf_test_importerNtB5_8ImporterNtNtCsl7L7n58I0Vr_6kernel10miscdevice10MiscDevice5ioctl+0x36e/0xa70
    _RNvMs1_NtCsl7L7n58I0Vr_6kernel10miscdeviceINtB5_9FopsTableNtCsav8P1tSYnBq_20dmabuf_test_importer8ImporterE5ioctlBW_+0x65/0xe0
    __x64_sys_ioctl+0x1fc1/0x2760
    x64_sys_call+0x14cc/0x27e0
    do_syscall_64+0x81/0x130
    entry_SYSCALL_64_after_hwframe+0x4b/0x53
unreferenced object 0xffff888100fe1000 (size 64):
  comm \"swapper/0\", pid 1, jiffies 4294892296
  backtrace (crc 0):
    kmalloc_trace+0x24/0x30
    acpi_os_map_iomem+0x1c1/0x250
";

    #[test]
    fn kmemleak_reports_are_attributed_by_backtrace() {
        let r = parse_kmemleak(KMEMLEAK_SAMPLE);
        assert_eq!(r.len(), 2);
        assert!(r[0].is_ours(), "{r:#?}");
        assert!(!r[1].is_ours());
        assert_eq!(r[0].backtrace.len(), 12);
        assert_eq!(r[0].backtrace[0], "kmemleak_alloc+0x27/0x30");
        assert!(r[0].summary().contains("heaprig-guest"));
        assert!(r[0].summary().contains("dmabuf_test_importer"));
        assert_eq!(r[0].pid(), Some(73));
        assert_eq!(r[1].pid(), Some(1));
    }
}
