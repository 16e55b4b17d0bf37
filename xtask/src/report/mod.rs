//! Renders a [`RunResult`]: terminal table, JSON, JUnit XML. The runner never prints
//! results itself; these are consumers of the typed result. `compare` diffs two results
//! (validate's base and patched).

pub mod compare;
pub mod kcidb;

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::parse::results::{RunResult, TestVerdict};

/// Formats a duration the way the reports show it: `4m12s`, `9.3s`, `120ms`.
pub fn fmt_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// The known-issues entries a run matched, live and expired (empty when none).
pub fn known_seen(r: &RunResult) -> String {
    let mut out = String::new();
    for k in &r.known_seen {
        let state = if k.expired {
            format!("EXPIRED on {}, so it failed the run", k.expires)
        } else {
            format!("until {}", k.expires)
        };
        let _ = writeln!(
            out,
            "known issue ({state}): {}\n  {} ({})\n  seen in: {}",
            k.fingerprint,
            k.reason,
            k.link,
            k.seen_in.join(", ")
        );
    }
    out
}

/// The summary table: one row per test, one column per heap, side by side.
pub fn table(r: &RunResult) -> String {
    let mut heaps: Vec<String> = r.heaps.clone();
    for t in &r.tests {
        for h in &t.heaps {
            if !heaps.contains(&h.heap) {
                heaps.push(h.heap.clone());
            }
        }
    }
    let name_w = r
        .tests
        .iter()
        .map(|t| t.name.len())
        .chain(r.not_run.iter().map(String::len))
        .max()
        .unwrap_or(4)
        .max(4);
    let col_w = heaps.iter().map(String::len).max().unwrap_or(6).max(6);
    let mut out = String::new();
    let _ = write!(out, "{:<name_w$}  {:<6}", "TEST", "RESULT");
    for h in &heaps {
        let _ = write!(out, "  {h:<col_w$}");
    }
    let _ = writeln!(out, "  TIME");
    for t in &r.tests {
        let _ = write!(out, "{:<name_w$}  {:<6}", t.name, t.verdict.word());
        for h in &heaps {
            let c = t
                .heaps
                .iter()
                .find(|x| &x.heap == h)
                .map_or("-", |x| x.verdict.word());
            let _ = write!(out, "  {c:<col_w$}");
        }
        let time = t.time_ms.map_or("-".to_string(), |ms| format!("{ms}ms"));
        let _ = writeln!(out, "  {time}");
    }
    for n in &r.not_run {
        let _ = writeln!(out, "{n:<name_w$}  NOT RUN");
    }
    out
}

/// Why each failing or skipped test did not pass, with its splats.
pub fn details(r: &RunResult) -> String {
    let mut out = String::new();
    for t in &r.tests {
        if t.verdict == TestVerdict::Pass {
            continue;
        }
        let mut lines: Vec<String> = t.reasons.iter().map(|x| format!("  {x}")).collect();
        for h in &t.heaps {
            if h.verdict != TestVerdict::Pass {
                lines.extend(h.reasons.iter().map(|x| format!("  [{}] {x}", h.heap)));
            }
        }
        let _ = writeln!(out, "{} {}:", t.verdict.word(), t.name);
        lines.dedup();
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
        for s in t
            .splats
            .iter()
            .chain(t.heaps.iter().flat_map(|h| &h.splats))
        {
            let _ = writeln!(out, "  --- kernel {} (normalised) ---", s.kind.label());
            for l in s.lines.iter().take(25) {
                let _ = writeln!(out, "  | {l}");
            }
        }
    }
    for s in &r.splats_outside_tests {
        let _ = writeln!(
            out,
            "kernel {} outside any test: {}",
            s.kind.label(),
            s.title
        );
        for l in s.lines.iter().take(25) {
            let _ = writeln!(out, "  | {l}");
        }
    }
    for p in &r.problems {
        let _ = writeln!(out, "run problem: {p}");
    }
    out
}

fn xml_escape(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
        .map(|c| match c {
            '&' => "&amp;".to_string(),
            '<' => "&lt;".to_string(),
            '>' => "&gt;".to_string(),
            '"' => "&quot;".to_string(),
            '\'' => "&apos;".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// JUnit XML: one testcase per (test, heap), or per test when it has no heaps.
pub fn junit(r: &RunResult) -> String {
    struct Case {
        class: String,
        name: String,
        verdict: TestVerdict,
        text: String,
        ms: u64,
    }
    let mut cases = Vec::new();
    for t in &r.tests {
        if t.heaps.is_empty() {
            cases.push(Case {
                class: "heaprig".into(),
                name: t.name.clone(),
                verdict: t.verdict,
                text: t.reasons.join("\n"),
                ms: t.time_ms.unwrap_or(0),
            });
        }
        for h in &t.heaps {
            cases.push(Case {
                class: t.name.clone(),
                name: h.heap.clone(),
                verdict: h.verdict,
                text: h.reasons.join("\n"),
                ms: h.time_ms.unwrap_or(0),
            });
        }
    }
    for n in &r.not_run {
        cases.push(Case {
            class: "heaprig".into(),
            name: n.clone(),
            verdict: TestVerdict::Fail,
            text: "not run: the guest stopped before this test".into(),
            ms: 0,
        });
    }
    let failures = cases
        .iter()
        .filter(|c| c.verdict == TestVerdict::Fail)
        .count();
    let skipped = cases
        .iter()
        .filter(|c| c.verdict == TestVerdict::Skip)
        .count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        out,
        "<testsuite name=\"heaprig\" tests=\"{}\" failures=\"{failures}\" skipped=\"{skipped}\" errors=\"{}\">",
        cases.len(),
        usize::from(!r.problems.is_empty())
    );
    for c in &cases {
        let _ = write!(
            out,
            "  <testcase classname=\"{}\" name=\"{}\" time=\"{:.3}\"",
            xml_escape(&c.class),
            xml_escape(&c.name),
            c.ms as f64 / 1000.0
        );
        match c.verdict {
            TestVerdict::Pass => out.push_str("/>\n"),
            // Passing, with what was triaged away kept visible (surefire's flakyFailure).
            TestVerdict::Flaky => {
                let _ = writeln!(
                    out,
                    ">\n    <flakyFailure message=\"{}\">{}</flakyFailure>\n  </testcase>",
                    xml_escape(c.text.lines().next().unwrap_or("flaky")),
                    xml_escape(&c.text)
                );
            }
            TestVerdict::Known => {
                let _ = writeln!(
                    out,
                    ">\n    <system-out>{}</system-out>\n  </testcase>",
                    xml_escape(&c.text)
                );
            }
            TestVerdict::Fail => {
                let _ = writeln!(
                    out,
                    ">\n    <failure message=\"{}\">{}</failure>\n  </testcase>",
                    xml_escape(c.text.lines().next().unwrap_or("failed")),
                    xml_escape(&c.text)
                );
            }
            TestVerdict::Skip => {
                let _ = writeln!(
                    out,
                    ">\n    <skipped message=\"{}\"/>\n  </testcase>",
                    xml_escape(&c.text)
                );
            }
        }
    }
    if !r.problems.is_empty() {
        let _ = writeln!(
            out,
            "  <system-err>{}</system-err>",
            xml_escape(&r.problems.join("\n"))
        );
    }
    out.push_str("</testsuite>\n");
    out
}

/// A JSON file the rig wrote, read back through the type that wrote it; `what` names the file
/// kind in the error ("results.json").
pub fn read_json<T: serde::de::DeserializeOwned>(path: &std::path::Path, what: &str) -> Result<T> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a heaprig {what}", path.display()))
}

/// The JSON report: the typed result plus how the run went.
#[derive(Serialize)]
pub struct JsonReport<'a, T: Serialize> {
    pub result: &'a RunResult,
    pub run: T,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::results::combine;
    use crate::stages::vm::Ending;
    use crate::{parse::ktap, parse::splat};

    fn run() -> RunResult {
        let text = crate::fixture("guest-pass.ktap");
        let k = ktap::parse(&text);
        let log = "[ 1.0] heaprig: begin set_name/system\n[ 1.1] BUG: KASAN: use-after-free in f <x>\n[ 1.3] heaprig: end set_name/system\n";
        let names: Vec<String> = k.tests.iter().map(|t| t.name.clone()).collect();
        combine(&k, &splat::parse(log), &names, &Ending::Exited { code: 0 })
    }

    #[test]
    fn table_has_a_column_per_heap() {
        let t = table(&run());
        let header = t.lines().next().unwrap();
        let cols: Vec<&str> = header.split_whitespace().collect();
        assert_eq!(
            cols,
            ["TEST", "RESULT", "rust_system", "system", "TIME"],
            "{t}"
        );
        // The splat fails the C heap's column only: FAIL overall, PASS, FAIL.
        let row: Vec<&str> = t
            .lines()
            .find(|l| l.starts_with("set_name "))
            .unwrap()
            .split_whitespace()
            .collect();
        assert_eq!(row[1..4], ["FAIL", "PASS", "FAIL"], "{t}");
        // Heap-less tests show "-" in the heap columns.
        assert!(t
            .lines()
            .any(|l| l.starts_with("heaps_present ") && l.contains(" - ")));
    }

    #[test]
    fn junit_escapes_and_counts() {
        let x = junit(&run());
        assert!(x.contains("failures=\"1\""), "{x}");
        assert!(x.contains("&lt;x&gt;"), "{x}");
        assert!(!x.contains("<x>"));
    }
}
