//! Combines the parsed KTAP, the kernel's splats and how the session ended into one typed
//! result; maps it to the exit code; derives the normalised per-test snapshot values.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::parse::ktap::{Ktap, Node};
use crate::parse::splat::Splat;
use crate::stages::vm::Ending;

pub use super::TestVerdict;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeapResult {
    pub heap: String,
    pub verdict: TestVerdict,
    /// What the guest runner said, before kernel splats and triage.
    pub guest: TestVerdict,
    pub reasons: Vec<String>,
    pub facts: Vec<(String, String)>,
    pub diags: Vec<String>,
    pub splats: Vec<Splat>,
    pub time_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TestResult {
    pub name: String,
    pub verdict: TestVerdict,
    /// What the guest runner said, before kernel splats and triage.
    pub guest: TestVerdict,
    pub reasons: Vec<String>,
    pub heaps: Vec<HeapResult>,
    pub facts: Vec<(String, String)>,
    pub diags: Vec<String>,
    pub splats: Vec<Splat>,
    pub time_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub tests: Vec<TestResult>,
    pub heaps: Vec<String>,
    /// Splats while no test was running: they fail the run.
    pub splats_outside_tests: Vec<Splat>,
    /// Selected tests the guest never reported.
    pub not_run: Vec<String>,
    /// Anything else that makes the run untrustworthy (missing sentinel, protocol errors).
    pub problems: Vec<String>,
    pub ending: Ending,
    /// The guest never got as far as running the suite: the rig, not a test, failed.
    pub boot_failed: bool,
    /// Known-issue entries that matched a splat of this run (`--known-issues`), live or expired.
    #[serde(default)]
    pub known_seen: Vec<crate::triage::known::Seen>,
}

fn verdict_of(node: &Node) -> (TestVerdict, Vec<String>) {
    match &node.status {
        // The guest never says KNOWN or FLAKY (the parser does not produce them either).
        Some(TestVerdict::Pass | TestVerdict::Known | TestVerdict::Flaky) => {
            (TestVerdict::Pass, vec![])
        }
        Some(TestVerdict::Skip) => (
            TestVerdict::Skip,
            vec![format!(
                "SKIP: {}",
                node.skip_reason.clone().unwrap_or_default()
            )],
        ),
        // The decisive line first: summaries (bisect steps, reports) quote the first reason.
        Some(TestVerdict::Fail) => {
            let mut reasons = node.diags.clone();
            if let Some(i) = node
                .failure
                .as_ref()
                .and_then(|f| reasons.iter().rposition(|d| d == f))
            {
                let decisive = reasons.remove(i);
                reasons.insert(0, decisive);
            }
            (TestVerdict::Fail, reasons)
        }
        None => (TestVerdict::Fail, node.diags.clone()),
    }
}

pub fn splat_reason(s: &Splat) -> String {
    format!("kernel {}: {}", s.kind.label(), s.title)
}

/// Fails the test a kernel-log label names (`name`, or `name/heap` for one heap's column,
/// as the runner's markers write it) with `reason`; its index and the heap column's, or
/// None when no test of that name ran.
fn fail_label(
    tests: &mut [TestResult],
    label: &str,
    reason: &str,
) -> Option<(usize, Option<usize>)> {
    let (top, heap) = match label.split_once('/') {
        Some((t, h)) => (t, Some(h)),
        None => (label, None),
    };
    let i = tests.iter().position(|t| t.name == top)?;
    let t = &mut tests[i];
    t.verdict = TestVerdict::Fail;
    t.reasons.push(reason.to_string());
    let h = heap.and_then(|h| t.heaps.iter().position(|r| r.heap == h));
    if let Some(h) = h {
        t.heaps[h].verdict = TestVerdict::Fail;
        t.heaps[h].reasons.push(reason.to_string());
    }
    Some((i, h))
}

/// The whole-run check whose findings name other tests.
const KMEMLEAK_TEST: &str = "kmemleak";

pub fn combine(ktap: &Ktap, splats: &[Splat], selected: &[String], ending: &Ending) -> RunResult {
    let mut tests: Vec<TestResult> = ktap
        .tests
        .iter()
        .map(|n| {
            let (verdict, reasons) = verdict_of(n);
            TestResult {
                name: n.name.clone(),
                verdict,
                guest: verdict,
                reasons,
                heaps: n
                    .subtests
                    .iter()
                    .map(|s| {
                        let (verdict, reasons) = verdict_of(s);
                        HeapResult {
                            heap: s.name.clone(),
                            verdict,
                            guest: verdict,
                            reasons,
                            facts: s.facts.clone(),
                            diags: s.diags.clone(),
                            splats: vec![],
                            time_ms: s.time_ms,
                        }
                    })
                    .collect(),
                facts: n.facts.clone(),
                diags: n.diags.clone(),
                splats: vec![],
                time_ms: n.time_ms,
            }
        })
        .collect();

    let mut outside = Vec::new();
    for s in splats {
        let Some(label) = &s.test else {
            outside.push(s.clone());
            continue;
        };
        match fail_label(&mut tests, label, &splat_reason(s)) {
            Some((t, Some(h))) => tests[t].heaps[h].splats.push(s.clone()),
            Some((t, None)) => tests[t].splats.push(s.clone()),
            None => outside.push(s.clone()),
        }
    }

    // A leak the whole-run kmemleak check names by the test that allocated it fails that
    // test too, so `bisect --test NAME` follows a leak as it follows a splat.
    let mut leaks: Vec<(String, String)> = tests
        .iter()
        .filter(|t| t.name == KMEMLEAK_TEST)
        .flat_map(|t| t.diags.iter())
        .filter_map(|d| heaprig_protocol::leak::parse_attributed(d))
        .map(|(label, summary)| (label.to_string(), summary.to_string()))
        .collect();
    leaks.sort();
    leaks.dedup();
    for (label, summary) in leaks.iter().filter(|(l, _)| l != KMEMLEAK_TEST) {
        let reason = format!("kmemleak (whole-run scan): {summary}");
        fail_label(&mut tests, label, &reason);
    }

    let not_run: Vec<String> = selected
        .iter()
        .filter(|n| !tests.iter().any(|t| &t.name == *n))
        .cloned()
        .collect();

    let mut problems = ktap.problems.clone();
    let boot_failed = !ktap.saw_header
        && matches!(
            ending,
            Ending::BootTimeout { .. } | Ending::Exited { .. } | Ending::Signalled { .. }
        )
        && tests.is_empty();
    if !ktap.saw_header {
        problems.push("the guest printed no KTAP header: the test runner never started".into());
    } else if !ktap.done {
        problems.push(format!(
            "the guest runner's closing line never arrived (the run ended: {})",
            ending
        ));
    }
    match ending {
        Ending::Exited { code: 0 | 1 } => {}
        Ending::Exited { code } => problems.push(format!("the guest command exited with {code}")),
        other => problems.push(other.to_string()),
    }
    RunResult {
        tests,
        heaps: ktap.heaps.clone(),
        splats_outside_tests: outside,
        not_run,
        problems,
        ending: ending.clone(),
        boot_failed,
        known_seen: Vec::new(),
    }
}

impl RunResult {
    pub fn passed(&self) -> bool {
        self.tests.iter().all(|t| t.verdict != TestVerdict::Fail)
            && self.splats_outside_tests.is_empty()
            && self.not_run.is_empty()
            && self.problems.is_empty()
    }

    /// Tests per verdict; a test whose snapshot differs counts as failed, and so does a
    /// selected test that never ran.
    pub fn counts(&self, snapshot_mismatches: &[String]) -> Counts {
        let verdict = |t: &TestResult| {
            if snapshot_mismatches.contains(&t.name) {
                TestVerdict::Fail
            } else {
                t.verdict
            }
        };
        let c = |v| self.tests.iter().filter(|t| verdict(t) == v).count();
        Counts {
            pass: c(TestVerdict::Pass),
            fail: c(TestVerdict::Fail) + self.not_run.len(),
            skip: c(TestVerdict::Skip),
            known: c(TestVerdict::Known),
            flaky: c(TestVerdict::Flaky),
        }
    }

    /// Whether any test is FLAKY (fails the run under `--strict`).
    pub fn has_flakes(&self) -> bool {
        self.tests.iter().any(|t| t.verdict == TestVerdict::Flaky)
    }
}

/// Tests per verdict, for the closing line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub pass: usize,
    pub fail: usize,
    pub skip: usize,
    pub known: usize,
    pub flaky: usize,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.pass, self.fail, self.skip
        )?;
        // Only when triage was asked for, so the usual line stays as CI readers know it.
        if self.known > 0 {
            write!(f, ", {} known", self.known)?;
        }
        if self.flaky > 0 {
            write!(f, ", {} flaky", self.flaky)?;
        }
        Ok(())
    }
}

/// What insta records for one test: deterministic facts only (no times, no diagnostics).
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub verdict: TestVerdict,
    /// Why a test without heap columns was skipped (a skip for another reason differs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub heaps: BTreeMap<String, HeapSnapshot>,
}

#[derive(Debug, Serialize)]
pub struct HeapSnapshot {
    pub verdict: TestVerdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skip: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub facts: BTreeMap<String, String>,
}

impl TestResult {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            verdict: self.verdict,
            skip: (self.verdict == TestVerdict::Skip && self.heaps.is_empty())
                .then(|| self.reasons.join("; ")),
            facts: self.facts.iter().cloned().collect(),
            heaps: self
                .heaps
                .iter()
                .map(|h| {
                    let skip = (h.verdict == TestVerdict::Skip).then(|| h.reasons.join("; "));
                    (
                        heaprig_protocol::heaps::snapshot_name(&h.heap).to_string(),
                        HeapSnapshot {
                            verdict: h.verdict,
                            skip,
                            facts: h.facts.iter().cloned().collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Rig self-tests are expected to fail and are never snapshotted.
    pub fn is_selftest(&self) -> bool {
        self.name.starts_with("rig_selftest")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{parse::ktap, parse::splat};

    use crate::fixture;

    fn names(k: &Ktap) -> Vec<String> {
        k.tests.iter().map(|t| t.name.clone()).collect()
    }

    #[test]
    fn clean_run_passes() {
        let k = ktap::parse(&fixture("guest-pass.ktap"));
        let s = splat::parse(&fixture("boot-clean.log"));
        assert!(s.is_empty(), "{s:#?}");
        let r = combine(&k, &s, &names(&k), &Ending::Exited { code: 0 });
        assert!(r.passed(), "{r:#?}");
    }

    #[test]
    fn a_splat_in_a_test_fails_that_heap() {
        let k = ktap::parse(&fixture("guest-pass.ktap"));
        let log = "[ 1.0] heaprig: begin set_name/system\n[ 1.1] WARNING: CPU: 0 PID: 9 at x.c:1 f\n[ 1.2] ---[ end trace 0 ]---\n[ 1.3] heaprig: end set_name/system\n";
        let r = combine(
            &k,
            &splat::parse(log),
            &names(&k),
            &Ending::Exited { code: 0 },
        );
        assert!(!r.passed());
        let t = r.tests.iter().find(|t| t.name == "set_name").unwrap();
        assert_eq!(t.verdict, TestVerdict::Fail);
        let heap = |n: &str| t.heaps.iter().find(|h| h.heap == n).unwrap();
        assert_eq!(heap("system").verdict, TestVerdict::Fail);
        assert!(heap("system").reasons[0].contains("kernel WARNING"));
        // The other heap's column of the same test is untouched.
        assert_eq!(heap("rust_system").verdict, TestVerdict::Pass);
    }

    /// The whole-run kmemleak check names the test whose process leaked (the self-test's
    /// captured report, its first object given the label the guest now prints): that test
    /// fails too, once however often the line repeats; other tests are untouched.
    #[test]
    fn a_kmemleak_leak_fails_the_test_that_leaked() {
        let text = fixture("guest-selftests.ktap").replacen(
            "# kmemleak: unreferenced object 0xff11000005fa8200",
            "# kmemleak: leaked by rig_selftest_kmemleak/rust_system: unreferenced object 0xff11000005fa8200",
            1,
        );
        let text = format!(
            "{text}\n# kmemleak: leaked by no_such_test: unreferenced object 0x1 (size 8)\n"
        );
        let k = ktap::parse(&text);
        let r = combine(&k, &[], &names(&k), &Ending::Exited { code: 1 });
        let t = |n: &str| r.tests.iter().find(|t| t.name == n).unwrap();
        let leaked = t("rig_selftest_kmemleak");
        assert_eq!(leaked.verdict, TestVerdict::Fail, "{leaked:#?}");
        assert_eq!(leaked.guest, TestVerdict::Pass);
        let why: Vec<_> = leaked
            .reasons
            .iter()
            .filter(|r| {
                r.starts_with("kmemleak (whole-run scan): unreferenced object 0xff11000005fa8200")
            })
            .collect();
        assert_eq!(why.len(), 1, "{:#?}", leaked.reasons);
        assert_eq!(t("kmemleak").verdict, TestVerdict::Fail);
        assert!(r
            .tests
            .iter()
            .filter(|x| !["rig_selftest_kmemleak", "kmemleak"].contains(&x.name.as_str()))
            .all(|x| x
                .reasons
                .iter()
                .all(|r| !r.starts_with("kmemleak (whole-run"))));
    }

    #[test]
    fn splat_outside_tests_and_missing_tests_fail_the_run() {
        let k = ktap::parse(&fixture("guest-pass.ktap"));
        let s = splat::parse("[ 1.0] BUG: KASAN: use-after-free in f\n");
        let mut sel = names(&k);
        sel.push("never_ran".into());
        let r = combine(&k, &s, &sel, &Ending::Exited { code: 0 });
        assert_eq!(r.splats_outside_tests.len(), 1);
        assert_eq!(r.not_run, ["never_ran"]);
        assert!(!r.passed());
    }

    #[test]
    fn no_ktap_is_a_boot_failure() {
        let r = combine(
            &Ktap::default(),
            &[],
            &["a".into()],
            &Ending::BootTimeout { secs: 5 },
        );
        assert!(r.boot_failed);
        assert!(!r.passed());
    }

    #[test]
    fn snapshot_has_no_volatile_fields() {
        let k = ktap::parse(&fixture("guest-pass.ktap"));
        let r = combine(&k, &[], &names(&k), &Ending::Exited { code: 0 });
        // The captured run has times for every test and heap; none may reach a snapshot.
        assert!(r.tests.iter().all(|t| t.time_ms.is_some()));
        let ms = regex::Regex::new(r"\b\d+ ?ms\b|time").unwrap();
        for t in &r.tests {
            let y = serde_json::to_string(&t.snapshot()).unwrap();
            assert!(!ms.is_match(&y), "{y}");
        }
    }
}
