//! Kernel log parser: turns console text into splat records (WARNING, BUG, Oops, KASAN,
//! UBSAN, KFENCE, lockdep, hung task, RCU stall, kmemleak, panic), each normalised (no
//! timestamps, addresses, pids) and attributed to the guest test that was running, from the
//! `heaprig: begin NAME` / `heaprig: end NAME` markers the guest writes to /dev/kmsg (and,
//! for columns run side by side, the `heaprig: pid N NAME` markers naming their processes).

use std::collections::HashMap;
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SplatKind {
    Warning,
    Bug,
    Oops,
    Kasan,
    Ubsan,
    Kfence,
    Lockdep,
    HungTask,
    RcuStall,
    SoftLockup,
    Kmemleak,
    RustPanic,
    Panic,
}

impl SplatKind {
    pub fn label(self) -> &'static str {
        match self {
            SplatKind::Warning => "WARNING",
            SplatKind::Bug => "BUG",
            SplatKind::Oops => "Oops",
            SplatKind::Kasan => "KASAN",
            SplatKind::Ubsan => "UBSAN",
            SplatKind::Kfence => "KFENCE",
            SplatKind::Lockdep => "lockdep",
            SplatKind::HungTask => "hung task",
            SplatKind::RcuStall => "RCU stall",
            SplatKind::SoftLockup => "soft lockup",
            SplatKind::Kmemleak => "kmemleak",
            SplatKind::RustPanic => "Rust panic",
            SplatKind::Panic => "panic",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Splat {
    pub kind: SplatKind,
    /// First line, normalised: the fingerprint users compare.
    pub title: String,
    /// The test (NAME or NAME/HEAP) running when it appeared; None outside any test.
    pub test: Option<String>,
    /// Normalised report, capped at [`MAX_LINES`].
    pub lines: Vec<String>,
}

pub const MAX_LINES: usize = 60;

fn re(cell: &'static OnceLock<Regex>, pat: &str) -> &'static Regex {
    cell.get_or_init(|| Regex::new(pat).expect("static regex"))
}

/// Strips the printk timestamp and any console prefix.
pub fn strip_timestamp(line: &str) -> &str {
    static TS: OnceLock<Regex> = OnceLock::new();
    let line = line.trim_end_matches('\r');
    match re(&TS, r"^\s*\[\s*\d+\.\d+\]\s?").find(line) {
        Some(m) => &line[m.end()..],
        None => line,
    }
}

/// Replaces volatile values with placeholders so the same bug reads the same every run.
pub fn normalise(line: &str) -> String {
    static OFFSET: OnceLock<Regex> = OnceLock::new();
    static HEX: OnceLock<Regex> = OnceLock::new();
    static KADDR: OnceLock<Regex> = OnceLock::new();
    static PID: OnceLock<Regex> = OnceLock::new();
    static CPU: OnceLock<Regex> = OnceLock::new();
    static COMM_PID: OnceLock<Regex> = OnceLock::new();
    static TAINT: OnceLock<Regex> = OnceLock::new();
    static SECS: OnceLock<Regex> = OnceLock::new();
    static SRCROOT: OnceLock<Regex> = OnceLock::new();
    let s = strip_timestamp(line);
    // Absolute paths (UBSAN prints them) differ per machine and cache dir; keep the part
    // from the kernel's top-level directory on.
    let s = re(
        &SRCROOT,
        r"/\S*?/(arch|block|crypto|drivers|fs|include|init|io_uring|ipc|kernel|lib|mm|net|rust|security|sound|virt)/",
    )
    .replace_all(s, "$1/");
    let s = re(&OFFSET, r"\+0x[0-9a-f]+/0x[0-9a-f]+").replace_all(&s, "");
    let s = re(&HEX, r"\b0x[0-9a-fA-F]+\b").replace_all(&s, "[ADDR]");
    let s = re(&KADDR, r"\b[0-9a-f]{16}\b").replace_all(&s, "[ADDR]");
    let s = re(&PID, r"(?i)\b(pid:?\s*)\d+").replace_all(&s, "${1}[PID]");
    let s = re(&CPU, r"\b(CPU:?\s*)\d+").replace_all(&s, "${1}[N]");
    let s = re(&COMM_PID, r"\btask ([^\s:]+):\d+").replace_all(&s, "task ${1}:[PID]");
    let s = re(
        &TAINT,
        r"(Not tainted|Tainted: [A-Z ]+?) \d+\.\d+\.\d+\S* #\d+",
    )
    .replace_all(&s, "[TAINT] [VERSION]");
    let s = re(&SECS, r"\b\d+ seconds\b").replace_all(&s, "[N] seconds");
    s.trim_end().to_string()
}

/// Recognises the first line of a splat.
pub fn classify(line: &str) -> Option<SplatKind> {
    let l = line.trim_start();
    let kind = if l.starts_with("Kernel panic - not syncing") {
        SplatKind::Panic
    } else if l.starts_with("BUG: KASAN:") {
        SplatKind::Kasan
    } else if l.starts_with("BUG: KFENCE:") {
        SplatKind::Kfence
    } else if l.starts_with("UBSAN:") {
        SplatKind::Ubsan
    } else if l.contains("BUG: soft lockup") {
        SplatKind::SoftLockup
    } else if l.starts_with("WARNING: CPU:") {
        SplatKind::Warning
    } else if l.starts_with("WARNING: ") {
        // Lockdep and RCU-lockdep reports: "WARNING: possible circular locking ...".
        SplatKind::Lockdep
    } else if l.starts_with("rust_kernel: panicked at") || l.contains("] panicked at ") {
        SplatKind::RustPanic
    } else if l.starts_with("BUG: ") || l.starts_with("kernel BUG at") {
        SplatKind::Bug
    } else if l.starts_with("Oops: ") || l.starts_with("general protection fault") {
        SplatKind::Oops
    } else if l.starts_with("INFO: task ") && l.contains("blocked for more than") {
        SplatKind::HungTask
    } else if l.starts_with("rcu: INFO:") && l.contains("stall") {
        SplatKind::RcuStall
    } else if l.starts_with("unreferenced object 0x") {
        SplatKind::Kmemleak
    } else {
        return None;
    };
    Some(kind)
}

/// Lines that close a report.
fn is_end(line: &str) -> bool {
    line.contains("---[ end trace") || line.contains("---[ end Kernel panic")
}

/// Whether a new start line continues the current report (an Oops after a BUG, the panic
/// after an Oops) rather than starting another one.
fn continues(current: SplatKind, next: SplatKind) -> bool {
    matches!(
        (current, next),
        (SplatKind::Bug, SplatKind::Oops)
            | (SplatKind::RustPanic, SplatKind::Bug)
            | (SplatKind::RustPanic, SplatKind::Oops)
            | (SplatKind::Bug, SplatKind::Panic)
            | (SplatKind::Oops, SplatKind::Panic)
            | (SplatKind::Kasan, SplatKind::Panic)
            | (SplatKind::Warning, SplatKind::Panic)
    )
}

/// The task a report names first (`PID: N`, or `by task COMM/N` in a KASAN header): the
/// one that hit it, not one it quotes later (KASAN's "Allocated by task N").
fn task_pid(line: &str) -> Option<i32> {
    static TASK: OnceLock<Regex> = OnceLock::new();
    let c = re(&TASK, r"\bPID: (\d+)|\bby task [^\s/]+/(\d+)").captures(line)?;
    c.get(1).or_else(|| c.get(2))?.as_str().parse().ok()
}

/// A report being read, with the tests that were running when it began.
struct Reading {
    splat: Splat,
    /// Every test running when it began; more than one when columns ran side by side.
    running: Vec<String>,
    pid: Option<i32>,
}

impl Reading {
    /// The report, attributed: to the one test running, or among tests side by side to the
    /// one whose process the report names, else to their common test as a whole.
    fn finish(mut self, pids: &HashMap<i32, Vec<String>>) -> Splat {
        self.splat.test = match self.running.as_slice() {
            [] => None,
            [one] => Some(one.clone()),
            several => self
                .pid
                .and_then(|p| pids.get(&p))
                .and_then(|labels| several.iter().find(|l| labels.contains(l)))
                .cloned()
                .or_else(|| {
                    let top = |l: &String| l.split('/').next().unwrap_or(l).to_string();
                    let first = top(&several[0]);
                    several.iter().all(|l| top(l) == first).then_some(first)
                }),
        };
        self.splat
    }
}

/// Parses a whole console log. Tests are bounded by `heaprig: begin`/`end` markers; columns
/// that run side by side overlap, and `heaprig: pid N LABEL` names each one's process.
pub fn parse(log: &str) -> Vec<Splat> {
    use heaprig_protocol::kmsg::{self, Marker};
    // Every pid marker first: a forked column can hit a report before its parent has logged
    // its pid. A pid reused later names another label; only a running one is chosen.
    let mut pids: HashMap<i32, Vec<String>> = HashMap::new();
    for line in log.lines().map(strip_timestamp) {
        if let Some(Marker::Pid(pid, n)) = kmsg::parse(line) {
            pids.entry(pid).or_default().push(n.to_string());
        }
    }
    let mut out: Vec<Splat> = Vec::new();
    let mut running: Vec<String> = Vec::new();
    let mut open: Option<Reading> = None;
    for raw in log.lines() {
        let line = strip_timestamp(raw);
        if let Some(m) = kmsg::parse(line) {
            match m {
                Marker::Begin(n) => running.push(n.to_string()),
                Marker::End(n) => running.retain(|r| r != n),
                Marker::Pid(..) => continue,
            }
            out.extend(open.take().map(|r| r.finish(&pids)));
            continue;
        }
        if let Some(kind) = classify(line) {
            match &mut open {
                // A report that ends in a panic keeps the kind of its cause; the panic
                // shows in its lines.
                Some(r) if continues(r.splat.kind, kind) => {}
                _ => {
                    out.extend(open.take().map(|r| r.finish(&pids)));
                    open = Some(Reading {
                        splat: Splat {
                            kind,
                            title: normalise(line),
                            test: None,
                            lines: Vec::new(),
                        },
                        running: running.clone(),
                        pid: None,
                    });
                }
            }
        }
        if let Some(r) = &mut open {
            if r.pid.is_none() {
                r.pid = task_pid(line);
            }
            if r.splat.lines.len() < MAX_LINES {
                r.splat.lines.push(normalise(line));
            }
            if is_end(line) {
                out.extend(open.take().map(|r| r.finish(&pids)));
            }
        }
    }
    out.extend(open.map(|r| r.finish(&pids)));
    out
}

/// Whether the log shows the kernel has stopped for good.
pub fn is_panic_line(line: &str) -> bool {
    strip_timestamp(line)
        .trim_start()
        .starts_with("Kernel panic - not syncing")
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixture;

    #[test]
    fn normalises_volatile_values() {
        let l = "[   12.345678] WARNING: CPU: 1 PID: 87 at drivers/misc/lkdtm/bugs.c:118 lkdtm_WARNING+0x1a/0x30";
        assert_eq!(
            normalise(l),
            "WARNING: CPU: [N] PID: [PID] at drivers/misc/lkdtm/bugs.c:118 lkdtm_WARNING"
        );
        assert_eq!(
            normalise("RIP: 0010:foo+0x5/0x10 RSP: ffff88800abcdef0"),
            "RIP: 0010:foo RSP: [ADDR]"
        );
        assert_eq!(
            normalise("INFO: task heaprig-guest:93 blocked for more than 5 seconds."),
            "INFO: task heaprig-guest:[PID] blocked for more than [N] seconds."
        );
    }

    #[test]
    fn classifies_start_lines() {
        let table = [
            (
                "WARNING: CPU: 0 PID: 1 at x.c:1 f",
                Some(SplatKind::Warning),
            ),
            (
                "WARNING: possible circular locking dependency detected",
                Some(SplatKind::Lockdep),
            ),
            (
                "BUG: KASAN: slab-out-of-bounds in f",
                Some(SplatKind::Kasan),
            ),
            (
                "BUG: sleeping function called from invalid context",
                Some(SplatKind::Bug),
            ),
            (
                "UBSAN: array-index-out-of-bounds in x.c:3:4",
                Some(SplatKind::Ubsan),
            ),
            (
                "INFO: task cat:12 blocked for more than 5 seconds.",
                Some(SplatKind::HungTask),
            ),
            (
                "rcu: INFO: rcu_preempt self-detected stall on CPU",
                Some(SplatKind::RcuStall),
            ),
            (
                "unreferenced object 0xffff888001234560 (size 64):",
                Some(SplatKind::Kmemleak),
            ),
            (
                "Kernel panic - not syncing: Fatal exception",
                Some(SplatKind::Panic),
            ),
            (
                "watchdog: BUG: soft lockup - CPU#0 stuck for 22s!",
                Some(SplatKind::SoftLockup),
            ),
            ("heaprig: begin foo", None),
            ("virtio_net virtio0: something", None),
        ];
        for (line, want) in table {
            assert_eq!(classify(line), want, "{line}");
        }
    }

    #[test]
    fn attributes_to_the_running_test() {
        let log = "[ 1.0] heaprig: begin a/system\n[ 1.1] WARNING: CPU: 0 PID: 5 at x.c:1 f+0x1/0x2\n[ 1.2] ---[ end trace 0000000000000000 ]---\n[ 1.3] heaprig: end a/system\n[ 1.4] WARNING: CPU: 0 PID: 5 at y.c:2 g\n";
        let s = parse(log);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].test.as_deref(), Some("a/system"));
        assert_eq!(s[0].title, "WARNING: CPU: [N] PID: [PID] at x.c:1 f");
        assert_eq!(s[1].test, None);
    }

    #[test]
    fn side_by_side_reports_go_to_the_process_they_name() {
        let log = "\
[ 1.0] heaprig: begin fuzz/system
[ 1.0] heaprig: begin fuzz/rust_system
[ 1.0] heaprig: pid 81 fuzz/system
[ 1.1] WARNING: CPU: 1 PID: 82 at x.c:1 f+0x1/0x2
[ 1.2] ---[ end trace 0000000000000000 ]---
[ 1.2] heaprig: pid 82 fuzz/rust_system
[ 1.3] BUG: KASAN: slab-use-after-free in g+0x1/0x2
[ 1.3] Write of size 4 at addr ff1100000a9a1400 by task heaprig-guest/81
[ 1.3] CPU: 0 UID: 0 PID: 81 Comm: heaprig-guest Not tainted 6.12.117 #1
[ 1.3] Allocated by task 82:
[ 1.4] ==================================================================
[ 1.5] WARNING: CPU: 0 PID: 9 at y.c:2 kworker_thing
[ 1.6] ---[ end trace 0000000000000000 ]---
[ 1.7] heaprig: end fuzz/system
[ 1.8] WARNING: CPU: 0 PID: 81 at z.c:3 h
[ 1.9] ---[ end trace 0000000000000000 ]---
[ 2.0] heaprig: end fuzz/rust_system
[ 2.1] heaprig: begin fuzz/system
[ 2.2] WARNING: CPU: 0 PID: 90 at w.c:4 k
";
        let splats = parse(log);
        let tests: Vec<Option<&str>> = splats.iter().map(|s| s.test.as_deref()).collect();
        assert_eq!(
            tests,
            [
                // Its pid marker came after it: the child ran before its parent logged it.
                Some("fuzz/rust_system"),
                Some("fuzz/system"),
                // A kernel thread's report: the test as a whole, not a guessed heap.
                Some("fuzz"),
                // Only one column left running: it is that one's, whatever the pid.
                Some("fuzz/rust_system"),
                Some("fuzz/system"),
            ]
        );
    }

    /// Captured: a column side by side hit its report before its pid was logged.
    #[test]
    fn a_real_side_by_side_report_goes_to_its_column() {
        let splats = parse(&fixture("side-by-side-race.log"));
        let tests: Vec<Option<&str>> = splats.iter().map(|s| s.test.as_deref()).collect();
        assert_eq!(
            tests,
            [
                Some("rig_selftest_side_by_side/system"),
                Some("rig_selftest_side_by_side/system")
            ]
        );
    }

    /// Real logs from this project's debug kernel, provoked through LKDTM (see
    /// tests/fixtures/README.md for how each was captured).
    #[test]
    fn real_splats_from_the_debug_kernel() {
        let table = [
            ("lkdtm-warning.log", SplatKind::Warning, "lkdtm"),
            ("lkdtm-bug.log", SplatKind::Bug, "lkdtm"),
            ("lkdtm-kasan.log", SplatKind::Kasan, "KASAN"),
            (
                "lkdtm-ubsan.log",
                SplatKind::Ubsan,
                "UBSAN: array-index-out-of-bounds in drivers/misc/lkdtm/bugs.c",
            ),
            ("lkdtm-panic.log", SplatKind::Panic, "Kernel panic"),
        ];
        for (file, kind, needle) in table {
            let splats = parse(&fixture(file));
            let s = splats
                .iter()
                .find(|s| s.kind == kind)
                .unwrap_or_else(|| panic!("{file}: no {kind:?} in {splats:#?}"));
            assert!(
                s.lines.iter().any(|l| l.contains(needle)),
                "{file}: {needle} not in {s:#?}"
            );
            assert!(
                !s.lines.iter().any(|l| l.contains("ffff8")),
                "{file}: unnormalised address in {s:#?}"
            );
        }
    }
}
