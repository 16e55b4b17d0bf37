//! KTAP v1 parser for what `heaprig-guest` prints (Documentation/dev-tools/ktap.rst), plus
//! heaprig's own notes (facts, times, test begins, the closing sentinel), which the
//! `heaprig-protocol` crate writes and parses for both sides.
//!
//! The input may be cut anywhere (a guest crash); what was reported survives, a begun test
//! without a result is reported as interrupted, and plan entries never reached as not run.

use heaprig_protocol::note::{self, Note};
use serde::Serialize;

use super::TestVerdict;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Node {
    pub name: String,
    pub status: Option<TestVerdict>,
    pub skip_reason: Option<String>,
    pub facts: Vec<(String, String)>,
    pub diags: Vec<String>,
    /// For `not ok`: the diagnostic printed just before it, which the runner makes the
    /// failure's own reason (the lines above it are context, such as a fuzzer's last ops).
    pub failure: Option<String>,
    pub time_ms: Option<u64>,
    pub subtests: Vec<Node>,
}

#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Ktap {
    pub saw_header: bool,
    pub plan: Option<usize>,
    pub tests: Vec<Node>,
    /// A test that began (`# heaprig-begin`) but never reported: where the guest stopped.
    pub interrupted: Option<String>,
    /// The closing sentinel, if it arrived exactly once.
    pub done: bool,
    /// Lines that broke the protocol (duplicate sentinel, results out of order).
    pub problems: Vec<String>,
    /// Heaps the guest listed at the start.
    pub heaps: Vec<String>,
}

#[derive(Default)]
struct Pending {
    facts: Vec<(String, String)>,
    diags: Vec<String>,
}

impl Pending {
    fn take_into(&mut self, node: &mut Node) {
        node.facts.append(&mut self.facts);
        node.diags.append(&mut self.diags);
    }
}

/// Parses a result line body (after indentation): `ok 3 name # SKIP why` / `not ok 3 name`.
pub fn parse_result(line: &str) -> Option<(TestVerdict, usize, String, Option<String>)> {
    let (ok, rest) = if let Some(r) = line.strip_prefix("not ok ") {
        (false, r)
    } else if let Some(r) = line.strip_prefix("ok ") {
        (true, r)
    } else {
        return None;
    };
    let (num, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let num: usize = num.parse().ok()?;
    let (name, directive) = match rest.split_once(" # ") {
        Some((n, d)) => (n.trim(), Some(d.trim())),
        None => (rest.trim(), None),
    };
    let skip = directive
        .and_then(|d| d.strip_prefix("SKIP"))
        .map(|r| r.trim().to_string());
    let status = match (ok, &skip) {
        (false, _) => TestVerdict::Fail,
        (true, Some(_)) => TestVerdict::Skip,
        (true, None) => TestVerdict::Pass,
    };
    Some((status, num, name.to_string(), skip))
}

/// Parses KTAP text; lines that are not KTAP (other guest output) are ignored.
pub fn parse(text: &str) -> Ktap {
    let mut k = Ktap::default();
    let mut pending = [Pending::default(), Pending::default()];
    let mut subtests: Vec<Node> = Vec::new();
    let mut begun: Option<String> = None;
    let mut last_level0: Option<usize> = None;

    for raw in text.lines() {
        let raw = raw.trim_end_matches('\r');
        let trimmed = raw.trim_start_matches(' ');
        let indent = (raw.len() - trimmed.len()) / 4;
        if indent > 1 {
            continue;
        }
        let line = trimmed;
        if line == "KTAP version 1" {
            if indent == 0 {
                k.saw_header = true;
            }
            continue;
        }
        if let Some(n) = line.strip_prefix("1..") {
            if indent == 0 {
                k.plan = n.trim().parse().ok();
            }
            continue;
        }
        if let Some(d) = line.strip_prefix("#") {
            match note::parse(d) {
                Note::Begin(label) => begun = Some(label.to_string()),
                Note::Done(totals) => {
                    if k.done {
                        k.problems.push(format!("duplicate sentinel: {totals}"));
                    }
                    k.done = true;
                }
                Note::Heaps(heaps) => k.heaps = heaps,
                Note::Fact(key, v) => pending[indent].facts.push((key.to_string(), v.to_string())),
                // A time follows the result it times.
                Note::Time(ms) => {
                    let target = if indent == 1 {
                        subtests.last_mut()
                    } else {
                        last_level0.and_then(|i| k.tests.get_mut(i))
                    };
                    if let Some(node) = target {
                        node.time_ms = ms;
                    }
                }
                Note::Diagnostic(t) if t.starts_with("Subtest:") => subtests.clear(),
                // A warning is shown with the first test's diagnostics, as any other line.
                Note::Warning(_) | Note::Diagnostic(_) => {
                    pending[indent].diags.push(d.trim().to_string())
                }
            }
            continue;
        }
        if let Some((status, num, name, skip)) = parse_result(line) {
            let mut node = Node {
                name,
                status: Some(status),
                skip_reason: skip,
                ..Node::default()
            };
            if node.status == Some(TestVerdict::Fail) {
                node.failure = pending[indent].diags.last().cloned();
            }
            pending[indent].take_into(&mut node);
            if indent == 1 {
                subtests.push(node);
                continue;
            }
            node.subtests = std::mem::take(&mut subtests);
            if num != k.tests.len() + 1 {
                k.problems
                    .push(format!("result {num} ({}) out of order", node.name));
            }
            begun = None;
            k.tests.push(node);
            last_level0 = Some(k.tests.len() - 1);
        }
    }
    if let Some(name) = begun {
        // The top-level name is what the report groups by; keep NAME/HEAP as detail.
        let top = name.split('/').next().unwrap_or(&name).to_string();
        let mut node = Node {
            name: top,
            diags: vec![format!(
                "interrupted during {name}: the guest stopped before it reported"
            )],
            subtests: std::mem::take(&mut subtests),
            ..Node::default()
        };
        pending[0].take_into(&mut node);
        k.tests.push(node);
        k.interrupted = Some(name);
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::fixture;

    #[test]
    fn result_lines() {
        assert_eq!(
            parse_result("ok 1 foo"),
            Some((TestVerdict::Pass, 1, "foo".into(), None))
        );
        assert_eq!(
            parse_result("not ok 12 bar baz"),
            Some((TestVerdict::Fail, 12, "bar baz".into(), None))
        );
        assert_eq!(
            parse_result("ok 3 x # SKIP no heap"),
            Some((TestVerdict::Skip, 3, "x".into(), Some("no heap".into())))
        );
        assert_eq!(parse_result("okay 1 x"), None);
    }

    #[test]
    fn complete_guest_run() {
        let k = parse(&fixture("guest-pass.ktap"));
        assert!(k.saw_header && k.done, "{k:?}");
        assert_eq!(k.plan, Some(k.tests.len()));
        assert!(k.problems.is_empty(), "{:?}", k.problems);
        assert!(k.interrupted.is_none());
        assert!(k.heaps.contains(&"system".to_string()));
        let rt = k
            .tests
            .iter()
            .find(|t| t.name == "alloc_mmap_sync_roundtrip")
            .expect("roundtrip test");
        assert_eq!(rt.status, Some(TestVerdict::Pass));
        assert!(rt.subtests.iter().any(|s| s.name == "system"
            && s.status == Some(TestVerdict::Pass)
            && !s.facts.is_empty()
            && s.time_ms.is_some()));
    }

    #[test]
    fn failures_and_crashes_from_a_guest_run() {
        let k = parse(&fixture("guest-selftests.ktap"));
        let by = |n: &str| k.tests.iter().find(|t| t.name == n).expect(n);
        assert_eq!(by("rig_selftest_fail").status, Some(TestVerdict::Fail));
        assert!(by("rig_selftest_fail")
            .diags
            .iter()
            .any(|d| d.contains("deliberate failure")));
        assert!(by("rig_selftest_crash")
            .diags
            .iter()
            .any(|d| d.contains("SIGSEGV")));
        assert!(by("rig_selftest_timeout")
            .diags
            .iter()
            .any(|d| d.contains("timed out")));
        // All nine self-tests and the whole-run kmemleak check, as the e2e test runs them.
        assert_eq!(k.tests.len(), 10, "{:?}", k.tests);
        assert!(k.done && k.problems.is_empty(), "{:?}", k.problems);
        for t in &k.tests {
            // These three fail through the kernel log (a splat) or the final scan, not in KTAP.
            let want = if matches!(
                t.name.as_str(),
                "rig_selftest_kmemleak" | "rig_selftest_warning" | "rig_selftest_lockdep"
            ) {
                TestVerdict::Pass
            } else {
                TestVerdict::Fail
            };
            assert_eq!(t.status, Some(want), "{}", t.name);
        }
        // The line printed just before `not ok` is the failure's own reason, not the context
        // above it (the fuzzer's last operations, the leak oracle's findings).
        let failure = |n: &str| by(n).failure.clone().unwrap_or_default();
        assert!(
            failure("rig_selftest_fuzz").starts_with("fuzz seed 42 op "),
            "{}",
            failure("rig_selftest_fuzz")
        );
        assert!(failure("rig_selftest_leak").starts_with("leak oracle: dma-buf left behind"));
        assert!(failure("rig_selftest_fault_leak").starts_with("importer VMAP: fault point"));
        assert_eq!(by("rig_selftest_kmemleak").failure, None);
    }

    /// The perf kernel builds no kmemleak and no fault injection: real SKIP lines, at the top
    /// level and per heap, each with the reason naming the missing option.
    #[test]
    fn skips_from_a_perf_kernel_run() {
        let k = parse(&fixture("guest-perf.ktap"));
        assert!(k.done && k.problems.is_empty(), "{:?}", k.problems);
        let by = |n: &str| k.tests.iter().find(|t| t.name == n).expect(n);
        let km = by("kmemleak");
        assert_eq!(km.status, Some(TestVerdict::Skip));
        assert!(km
            .skip_reason
            .as_deref()
            .is_some_and(|r| r.contains("without CONFIG_DEBUG_KMEMLEAK")));
        let fs = by("fault_sweep");
        assert_eq!(fs.status, Some(TestVerdict::Skip));
        assert_eq!(fs.subtests.len(), 2);
        for h in &fs.subtests {
            assert_eq!(h.status, Some(TestVerdict::Skip), "{}", h.name);
            assert!(h
                .skip_reason
                .as_deref()
                .is_some_and(|r| r.contains("without CONFIG_FAULT_INJECTION")));
        }
        assert_eq!(by("zeroing").status, Some(TestVerdict::Pass));
    }

    #[test]
    fn cut_mid_test_keeps_earlier_results() {
        let full = fixture("guest-pass.ktap");
        // Cut right after the second test began, as a guest panic would.
        let mut cut = String::new();
        let mut begins = 0;
        for line in full.lines() {
            cut.push_str(line);
            cut.push('\n');
            if line.contains("heaprig-begin:") && !line.contains('/') {
                begins += 1;
                if begins == 2 {
                    break;
                }
            }
        }
        let k = parse(&cut);
        assert!(!k.done);
        assert_eq!(k.tests.len(), 2);
        assert_eq!(k.tests[0].status, Some(TestVerdict::Pass));
        assert_eq!(k.tests[1].status, None);
        assert!(k.interrupted.is_some());
    }

    #[test]
    fn duplicate_sentinel_is_a_problem() {
        let k = parse("KTAP version 1\n1..0\n# heaprig-done: a\n# heaprig-done: b\n");
        assert_eq!(k.problems.len(), 1);
    }
}
