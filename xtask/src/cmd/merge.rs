//! `cargo xtask merge`: joins the results.json of every shard of a split run (`test --shard
//! I/N --json FILE`) into one result, reported like a run and written as JSON, JUnit and
//! KCIDB. A missing, repeated or foreign shard is an error, never a smaller green report.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use heaprig_protocol::shard::Shard;
use serde::Deserialize;

use crate::cmd::test::{finish, RunInfo};
use crate::env::Env;
use crate::flags::MergeArgs;
use crate::parse::results::{HeapResult, RunResult, TestResult, TestVerdict};
use crate::report::{self, kcidb};
use crate::stages::vm::Ending;
use crate::stages::Times;

/// One shard's saved report.
#[derive(Deserialize)]
pub struct Saved {
    pub result: RunResult,
    pub run: RunInfo,
}

fn read(path: &Path) -> Result<(Saved, Shard)> {
    let file = if path.is_dir() {
        path.join("results.json")
    } else {
        path.to_path_buf()
    };
    let saved: Saved = report::read_json(&file, "results.json")?;
    let shard = match &saved.run.shard {
        Some(s) => s
            .parse::<Shard>()
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?,
        None => bail!(
            "{} is not a shard's report (it was not run with --shard I/N)",
            file.display()
        ),
    };
    Ok((saved, shard))
}

/// Checks the shards make one whole run: one count, each index once, one kernel.
fn check(shards: &[(Saved, Shard)]) -> Result<()> {
    let n = shards[0].1.count;
    if let Some((_, s)) = shards.iter().find(|(_, s)| s.count != n) {
        bail!(
            "shard {s} is from a run split {} ways, the first from one split {n} ways",
            s.count
        );
    }
    let mut missing = Vec::new();
    for i in 1..=n {
        match shards.iter().filter(|(_, s)| s.index == i).count() {
            0 => missing.push(format!("{i}/{n}")),
            1 => {}
            k => bail!("shard {i}/{n} was given {k} times"),
        }
    }
    if !missing.is_empty() {
        bail!(
            "shard(s) {} missing: a merged report must cover the whole run",
            missing.join(", ")
        );
    }
    let kernel = |s: &Saved| (s.run.kernel.clone(), s.run.profile.clone());
    let first = kernel(&shards[0].0);
    if let Some((s, sh)) = shards.iter().find(|(s, _)| kernel(s) != first) {
        bail!(
            "shard {sh} ran {} ({}), shard {} ran {} ({}): shards of one run test one kernel",
            s.run.kernel,
            s.run.profile,
            shards[0].1,
            first.0,
            first.1
        );
    }
    Ok(())
}

fn severity(v: TestVerdict) -> u8 {
    match v {
        TestVerdict::Pass => 0,
        TestVerdict::Skip => 1,
        TestVerdict::Flaky => 2,
        TestVerdict::Known => 3,
        TestVerdict::Fail => 4,
    }
}

fn worst(a: TestVerdict, b: TestVerdict) -> TestVerdict {
    if severity(b) > severity(a) {
        b
    } else {
        a
    }
}

/// A test two shards both ran (the whole-run checks): the worse verdict, every reason.
fn fold(into: &mut TestResult, other: &TestResult, shard: Shard) {
    into.verdict = worst(into.verdict, other.verdict);
    into.guest = worst(into.guest, other.guest);
    into.reasons
        .extend(other.reasons.iter().map(|r| format!("shard {shard}: {r}")));
    into.splats.extend(other.splats.iter().cloned());
    for h in &other.heaps {
        match into.heaps.iter_mut().find(|x| x.heap == h.heap) {
            Some(x) => fold_heap(x, h, shard),
            None => into.heaps.push(h.clone()),
        }
    }
}

fn fold_heap(into: &mut HeapResult, other: &HeapResult, shard: Shard) {
    into.verdict = worst(into.verdict, other.verdict);
    into.reasons
        .extend(other.reasons.iter().map(|r| format!("shard {shard}: {r}")));
    into.splats.extend(other.splats.iter().cloned());
}

/// The shards as one run, tests in shard order, the checks every shard ran last.
pub fn merge(shards: &[(Saved, Shard)]) -> RunResult {
    let mut sorted: Vec<&(Saved, Shard)> = shards.iter().collect();
    sorted.sort_by_key(|(_, s)| s.index);
    let in_all = |name: &str| {
        sorted
            .iter()
            .all(|(s, _)| s.result.tests.iter().any(|t| t.name == name))
    };
    let mut tests: Vec<TestResult> = Vec::new();
    let mut out = RunResult {
        tests: vec![],
        heaps: vec![],
        splats_outside_tests: vec![],
        not_run: vec![],
        problems: vec![],
        ending: Ending::Exited { code: 0 },
        boot_failed: false,
        known_seen: vec![],
    };
    for (s, shard) in &sorted {
        let r = &s.result;
        for t in &r.tests {
            match tests.iter_mut().find(|x| x.name == t.name) {
                Some(x) => fold(x, t, *shard),
                None => tests.push(t.clone()),
            }
        }
        for h in &r.heaps {
            if !out.heaps.contains(h) {
                out.heaps.push(h.clone());
            }
        }
        out.splats_outside_tests
            .extend(r.splats_outside_tests.iter().cloned());
        out.not_run.extend(r.not_run.iter().cloned());
        out.problems
            .extend(r.problems.iter().map(|p| format!("shard {shard}: {p}")));
        if out.ending == (Ending::Exited { code: 0 }) {
            out.ending = r.ending.clone();
        }
        out.boot_failed |= r.boot_failed;
        for k in &r.known_seen {
            if !out
                .known_seen
                .iter()
                .any(|x| x.fingerprint == k.fingerprint)
            {
                out.known_seen.push(k.clone());
            }
        }
    }
    let (shared, own): (Vec<TestResult>, Vec<TestResult>) = tests
        .into_iter()
        .partition(|t| sorted.len() > 1 && in_all(&t.name));
    out.tests = own.into_iter().chain(shared).collect();
    out
}

pub fn run(env: &Env, a: MergeArgs) -> Result<ExitCode> {
    let shards: Vec<(Saved, Shard)> = a.shards.iter().map(|p| read(p)).collect::<Result<_>>()?;
    check(&shards)?;
    let merged = merge(&shards);
    let mut mismatches: Vec<String> = shards
        .iter()
        .flat_map(|(s, _)| s.run.snapshot_mismatches.iter().cloned())
        .collect();
    mismatches.sort();
    mismatches.dedup();
    let dir: PathBuf = env.root.join("target/heaprig/merged");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut run = merged_info(&shards);
    run.snapshot_mismatches = mismatches.clone();
    let json = serde_json::to_string_pretty(&report::JsonReport {
        result: &merged,
        run: &run,
    })?;
    fs::write(dir.join("results.json"), &json)?;
    if let Some(p) = &a.json {
        fs::write(p, &json).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(p) = &a.junit {
        fs::write(p, report::junit(&merged)).with_context(|| format!("writing {}", p.display()))?;
    }
    if let Some(k) = a.kcidb.plan() {
        let Some(prov) = &run.provenance else {
            bail!("the shards' reports carry no provenance (made by an older heaprig): cannot write KCIDB");
        };
        let mut b = kcidb::Builder::new(&k, prov);
        let build = b.build(prov, true, None);
        b.run(&build, prov, &merged);
        kcidb::write(env, &b.finish(), &k.path)?;
    }
    println!(
        "merge: {} shard(s) of {}, {} test(s)",
        shards.len(),
        shards[0].0.run.kernel,
        merged.tests.len()
    );
    finish(&merged, &mismatches, &[], &Times::default(), &dir, false)
}

/// The merged run's description: the first shard's, covering every shard's selection.
fn merged_info(shards: &[(Saved, Shard)]) -> RunInfo {
    let mut selected: Vec<String> = Vec::new();
    for (s, _) in shards {
        for n in &s.run.selected {
            if !selected.contains(n) {
                selected.push(n.clone());
            }
        }
    }
    RunInfo {
        times: Times::default(),
        snapshot_mismatches: vec![],
        shard: None,
        selected,
        ..shards[0].0.run.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::results::combine;
    use crate::parse::{ktap, splat};

    fn shard(ktap_text: &str, s: &str) -> (Saved, Shard) {
        let k = ktap::parse(ktap_text);
        let names: Vec<String> = k.tests.iter().map(|t| t.name.clone()).collect();
        let result = combine(&k, &splat::parse(""), &names, &Ending::Exited { code: 0 });
        let run: RunInfo = serde_json::from_value(serde_json::json!({
            "profile": "debug", "kernel": "debian:6.12", "accel": "tcg", "accel_why": "",
            "kernel_rebuilt": false, "times": [], "snapshot_mismatches": [],
            "shard": s, "selected": names,
        }))
        .unwrap();
        (Saved { result, run }, s.parse().unwrap())
    }

    const ONE: &str =
        "KTAP version 1\n1..2\nok 1 a\nok 2 kmemleak\n# heaprig-done: pass=2 fail=0 skip=0\n";
    const TWO: &str = "KTAP version 1\n1..2\nok 1 b\n# 1 unreferenced object\nnot ok 2 kmemleak\n# heaprig-done: pass=1 fail=1 skip=0\n";

    #[test]
    fn shards_merge_into_one_run_with_the_worst_shared_verdict() {
        let shards = vec![shard(TWO, "2/2"), shard(ONE, "1/2")];
        check(&shards).unwrap();
        let m = merge(&shards);
        let names: Vec<&str> = m.tests.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "kmemleak"]);
        let k = m.tests.iter().find(|t| t.name == "kmemleak").unwrap();
        assert_eq!(k.verdict, TestVerdict::Fail);
        assert!(
            k.reasons.iter().any(|r| r.starts_with("shard 2/2: ")),
            "{k:#?}"
        );
        assert!(!m.passed());
    }

    #[test]
    fn a_missing_or_repeated_shard_is_an_error() {
        let e = check(&[shard(ONE, "1/3"), shard(TWO, "3/3")]).unwrap_err();
        assert!(e.to_string().contains("shard(s) 2/3 missing"), "{e}");
        let e = check(&[shard(ONE, "1/2"), shard(ONE, "1/2")]).unwrap_err();
        assert!(e.to_string().contains("given 2 times"), "{e}");
        let e = check(&[shard(ONE, "1/2"), shard(TWO, "2/3")]).unwrap_err();
        assert!(e.to_string().contains("split 3 ways"), "{e}");
    }
}
