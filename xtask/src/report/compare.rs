//! Base versus patched: what a patch changed in the suite's result. Pure functions over two
//! [`RunResult`]s, so the report is tested on parsed captured logs without a kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::OnceLock;

use regex::Regex;

use serde::Serialize;

use crate::parse::results::{RunResult, TestVerdict};
use crate::parse::splat::Splat;

/// One line of the suite's outcome: a test, or a test on one heap.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Item {
    pub verdict: TestVerdict,
    pub reasons: Vec<String>,
}

/// Every test (per heap where it ran per heap) by a stable name: `test [heap]`.
pub fn items(r: &RunResult) -> BTreeMap<String, Item> {
    let mut out = BTreeMap::new();
    for t in r.tests.iter().filter(|t| !t.is_selftest()) {
        if t.heaps.is_empty() {
            out.insert(
                t.name.clone(),
                Item {
                    verdict: t.verdict,
                    reasons: t.reasons.clone(),
                },
            );
        }
        for h in &t.heaps {
            out.insert(
                format!("{} [{}]", t.name, h.heap),
                Item {
                    verdict: h.verdict,
                    reasons: h.reasons.clone(),
                },
            );
        }
        // A failure of the test as a whole (a splat between heaps, a crash) with every heap
        // passing still has to show.
        if !t.heaps.is_empty()
            && t.verdict == TestVerdict::Fail
            && t.heaps.iter().all(|h| h.verdict != TestVerdict::Fail)
        {
            out.insert(
                t.name.clone(),
                Item {
                    verdict: TestVerdict::Fail,
                    reasons: t.reasons.clone(),
                },
            );
        }
    }
    for n in &r.not_run {
        out.insert(
            n.clone(),
            Item {
                verdict: TestVerdict::Fail,
                reasons: vec!["selected but never reported (the guest stopped early)".into()],
            },
        );
    }
    out
}

/// A splat's identity across two kernels: `KIND: title` without source line numbers, so a
/// patch that only moves an existing WARN_ON down a file does not make it "new".
pub fn fingerprint(s: &Splat) -> String {
    static LINE: OnceLock<Regex> = OnceLock::new();
    let re =
        LINE.get_or_init(|| Regex::new(r"(\.(?:c|h|S|rs)):\d+(?::\d+)?").expect("static regex"));
    format!("{}: {}", s.kind.label(), re.replace_all(&s.title, "$1"))
}

/// Splat fingerprints anywhere in the run.
pub fn splats(r: &RunResult) -> BTreeSet<String> {
    let fp = fingerprint;
    let mut out: BTreeSet<String> = r.splats_outside_tests.iter().map(fp).collect();
    for t in &r.tests {
        out.extend(t.splats.iter().map(fp));
        for h in &t.heaps {
            out.extend(h.splats.iter().map(fp));
        }
    }
    out
}

#[derive(Debug, Default, Serialize)]
pub struct Diff {
    /// Failing after the patch, not before: (item, reasons).
    pub newly_failing: Vec<(String, Vec<String>)>,
    pub newly_passing: Vec<String>,
    /// Failing before and after (not the patch's doing, but not fixed either).
    pub still_failing: Vec<String>,
    pub new_splats: Vec<String>,
    pub gone_splats: Vec<String>,
    /// Tests passing on both sides whose recorded facts differ: (test, "fact: base -> patched").
    pub snapshot_changes: Vec<(String, Vec<String>)>,
    pub new_problems: Vec<String>,
}

impl Diff {
    /// A regression: something fails that did not, a new splat, a changed snapshot (the same
    /// rule `cargo xtask test` applies to recorded snapshots), or a new rig problem.
    pub fn regressed(&self) -> bool {
        !self.newly_failing.is_empty()
            || !self.new_splats.is_empty()
            || !self.snapshot_changes.is_empty()
            || !self.new_problems.is_empty()
    }
}

fn flat(s: &crate::parse::results::Snapshot) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    m.insert("verdict".to_string(), format!("{:?}", s.verdict));
    for (k, v) in &s.facts {
        m.insert(k.clone(), v.clone());
    }
    for (heap, h) in &s.heaps {
        m.insert(format!("[{heap}] verdict"), format!("{:?}", h.verdict));
        for (k, v) in &h.facts {
            m.insert(format!("[{heap}] {k}"), v.clone());
        }
    }
    m
}

pub fn diff(base: &RunResult, patched: &RunResult) -> Diff {
    let (b, p) = (items(base), items(patched));
    let mut d = Diff::default();
    for (name, item) in &p {
        let before = b.get(name).map(|i| i.verdict);
        match (before, item.verdict) {
            (Some(TestVerdict::Fail), TestVerdict::Fail) => d.still_failing.push(name.clone()),
            (_, TestVerdict::Fail) => d.newly_failing.push((name.clone(), item.reasons.clone())),
            (Some(TestVerdict::Fail), TestVerdict::Pass) => d.newly_passing.push(name.clone()),
            (Some(TestVerdict::Pass), TestVerdict::Skip) => d.newly_failing.push((
                name.clone(),
                vec![format!(
                    "passed on the base, skipped after the patch ({})",
                    item.reasons.join("; ")
                )],
            )),
            _ => {}
        }
    }
    // Passing before and gone after (a heap that no longer registers, a test not reported).
    for (name, item) in &b {
        if item.verdict == TestVerdict::Pass && !p.contains_key(name) {
            d.newly_failing.push((
                name.clone(),
                vec!["passed on the base, not reported after the patch".into()],
            ));
        }
    }
    let (sb, sp) = (splats(base), splats(patched));
    d.new_splats = sp.difference(&sb).cloned().collect();
    d.gone_splats = sb.difference(&sp).cloned().collect();
    for t in &patched.tests {
        let Some(bt) = base.tests.iter().find(|x| x.name == t.name) else {
            continue;
        };
        if t.is_selftest() || t.verdict != TestVerdict::Pass || bt.verdict != TestVerdict::Pass {
            continue;
        }
        let (fb, fp) = (flat(&bt.snapshot()), flat(&t.snapshot()));
        let keys: BTreeSet<&String> = fb.keys().chain(fp.keys()).collect();
        let changes: Vec<String> = keys
            .into_iter()
            .filter(|k| fb.get(*k) != fp.get(*k))
            .map(|k| {
                let show = |v: Option<&String>| v.cloned().unwrap_or_else(|| "(absent)".into());
                format!("{k}: {} -> {}", show(fb.get(k)), show(fp.get(k)))
            })
            .collect();
        if !changes.is_empty() {
            d.snapshot_changes.push((t.name.clone(), changes));
        }
    }
    d.new_problems = patched
        .problems
        .iter()
        .filter(|x| !base.problems.contains(x))
        .cloned()
        .collect();
    d
}

/// The diff as Markdown bullets: readable in a terminal, pasteable into a mail reply.
pub fn render(d: &Diff) -> String {
    let mut s = String::new();
    let mut section = |title: &str, lines: Vec<String>| {
        if !lines.is_empty() {
            let _ = writeln!(s, "\n{title}:");
            for l in lines {
                let _ = writeln!(s, "- {l}");
            }
        }
    };
    section(
        "Newly failing",
        d.newly_failing
            .iter()
            .map(|(n, r)| {
                let why = r.first().map(String::as_str).unwrap_or("(no reason given)");
                format!("`{n}`: {why}")
            })
            .collect(),
    );
    section(
        "New kernel splats",
        d.new_splats.iter().map(|x| format!("`{x}`")).collect(),
    );
    section(
        "Snapshot changes",
        d.snapshot_changes
            .iter()
            .map(|(n, c)| format!("`{n}`: {}", c.join("; ")))
            .collect(),
    );
    section(
        "New problems in the run",
        d.new_problems.iter().map(|x| x.to_string()).collect(),
    );
    section(
        "Newly passing",
        d.newly_passing.iter().map(|x| format!("`{x}`")).collect(),
    );
    section(
        "Splats gone",
        d.gone_splats.iter().map(|x| format!("`{x}`")).collect(),
    );
    section(
        "Failing before and after (not caused by the patch)",
        d.still_failing.iter().map(|x| format!("`{x}`")).collect(),
    );
    if s.is_empty() {
        s.push_str("\nNo differences: every test and heap gave the same verdict and facts.\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use crate::parse::results::combine;
    use crate::stages::vm::Ending;
    use crate::{parse::ktap, parse::splat};

    /// A real captured pass, and the same run with one heap failing and a WARNING in it.
    fn runs() -> (RunResult, RunResult) {
        let k = ktap::parse(&fixture("guest-pass.ktap"));
        let names: Vec<String> = k.tests.iter().map(|t| t.name.clone()).collect();
        let ok = Ending::Exited { code: 0 };
        let base = combine(&k, &splat::parse(&fixture("boot-clean.log")), &names, &ok);
        let log = "[ 1.0] heaprig: begin set_name/system\n[ 1.1] WARNING: CPU: 0 PID: 9 at drivers/dma-buf/dma-buf.c:1 f\n[ 1.2] ---[ end trace 0 ]---\n[ 1.3] heaprig: end set_name/system\n";
        let patched = combine(&k, &splat::parse(log), &names, &ok);
        (base, patched)
    }

    #[test]
    fn identical_runs_do_not_regress() {
        let (base, _) = runs();
        let d = diff(&base, &base);
        assert!(!d.regressed(), "{d:#?}");
        assert!(render(&d).contains("No differences"));
    }

    #[test]
    fn a_new_failure_and_splat_regress_and_are_named() {
        let (base, patched) = runs();
        let d = diff(&base, &patched);
        assert!(d.regressed());
        assert_eq!(d.newly_failing.len(), 1, "{d:#?}");
        assert_eq!(d.newly_failing[0].0, "set_name [system]");
        assert_eq!(d.new_splats.len(), 1);
        assert!(d.new_splats[0].starts_with("WARNING: "), "{d:#?}");
        assert!(
            !d.new_splats[0].contains("dma-buf.c:1"),
            "line numbers kept: {d:#?}"
        );
        let text = render(&d);
        assert!(text.contains("Newly failing:\n- `set_name [system]`: kernel WARNING"));
        // And the other way round: the fix is reported as such, not as a regression.
        let back = diff(&patched, &base);
        assert!(!back.regressed());
        assert_eq!(back.newly_passing, ["set_name [system]"]);
        assert_eq!(back.gone_splats.len(), 1);
    }

    #[test]
    fn a_heap_that_disappears_is_a_regression() {
        let (base, _) = runs();
        let (mut patched, _) = runs();
        let t = patched
            .tests
            .iter_mut()
            .find(|t| !t.heaps.is_empty() && t.verdict == TestVerdict::Pass)
            .unwrap();
        let gone = format!("{} [{}]", t.name, t.heaps[0].heap);
        t.heaps.remove(0);
        let d = diff(&base, &patched);
        assert!(d.regressed());
        assert_eq!(d.newly_failing[0].0, gone);
        assert!(d.newly_failing[0].1[0].contains("not reported after the patch"));
    }

    #[test]
    fn changed_facts_are_snapshot_changes() {
        let (base, mut patched) = runs();
        let (base2, _) = runs();
        patched = RunResult {
            tests: base2.tests,
            ..patched
        };
        let t = patched
            .tests
            .iter_mut()
            .find(|t| !t.heaps.is_empty() && t.verdict == TestVerdict::Pass)
            .unwrap();
        let name = t.name.clone();
        t.heaps[0].facts.push(("new fact".into(), "42".into()));
        patched.splats_outside_tests.clear();
        let d = diff(&base, &patched);
        assert!(d.regressed());
        assert_eq!(d.snapshot_changes.len(), 1);
        assert_eq!(d.snapshot_changes[0].0, name);
        assert!(d.snapshot_changes[0].1[0].ends_with("new fact: (absent) -> 42"));
    }
}
