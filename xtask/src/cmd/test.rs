//! `cargo xtask test`: setup → source → build → guest build → boot and run → parse →
//! report → snapshots, each stage timed. `cargo xtask parse` re-runs the last three on a
//! saved run directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use heaprig_protocol::guest::RunArgs;
use serde::{Deserialize, Serialize};

use crate::cmd::results_cache::ResultCache;
use crate::env::Env;
use crate::flags::ParseArgs;
use crate::parse::results::{combine, RunResult};
use crate::parse::TestVerdict;
use crate::plan::{SkipWhy, Snapshots, TestPlan};
use crate::report::fmt_duration;
use crate::report::kcidb::{self, Provenance};
use crate::stages::vm::{Accel, Ending, Event, Limits};
use crate::stages::{self, console_tail, Prepared, Times};
use crate::triage::flaky;
use crate::triage::known::{self, Date, KnownIssues};
use crate::{parse::ktap, parse::splat, report};

/// Progress on the terminal while the guest runs.
fn show(ev: &Event, boot_shown: &mut bool, started: Instant) {
    match ev {
        Event::Guest(l) => {
            if !*boot_shown {
                *boot_shown = true;
                println!(
                    "boot: guest running after {}",
                    fmt_duration(started.elapsed())
                );
            }
            if let Some((status, _, name, _)) = ktap::parse_result(l.trim_start()) {
                let word = match status {
                    TestVerdict::Pass => "ok",
                    other => other.word(),
                };
                let indent = if l.starts_with("    ") {
                    "      "
                } else {
                    "  "
                };
                println!("{indent}{word:<5} {name}");
            }
        }
        Event::Console(l) => {
            if let Some(kind) = splat::classify(splat::strip_timestamp(l)) {
                println!("  kernel {}: {}", kind.label(), splat::normalise(l));
            }
        }
    }
}

/// How a run was made: the `run` half of results.json.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct RunInfo {
    pub profile: String,
    pub kernel: String,
    pub accel: Accel,
    pub accel_why: String,
    pub kernel_rebuilt: bool,
    pub times: Times,
    pub snapshot_mismatches: Vec<String>,
    /// `I/N` when this run was one shard of a split run.
    #[serde(default)]
    pub shard: Option<String>,
    /// The tests this run selected (its shard's part), for `merge`.
    #[serde(default)]
    pub selected: Vec<String>,
    /// What was built and booted, for KCIDB.
    #[serde(default)]
    pub provenance: Option<Provenance>,
}

impl RunInfo {
    /// The `run` half of a saved results.json, read back through this type.
    pub fn read(path: &Path) -> Result<RunInfo> {
        #[derive(Deserialize)]
        struct Saved {
            run: RunInfo,
        }
        let saved: Saved = crate::report::read_json(path, "results.json")?;
        Ok(saved.run)
    }
}

pub fn run(env: &Env, plan: TestPlan) -> Result<ExitCode> {
    run_and_report(env, &plan).map(|(_, code)| code)
}

/// The selection of `plan`, with the whole-run checks it ends with.
pub struct Selection {
    pub names: Vec<String>,
    pub whole_run: Vec<String>,
}

fn selection(env: &Env, guest: &Path, plan: &TestPlan) -> Result<Selection> {
    let s = &plan.suite;
    let names = stages::select(env, guest, &s.patterns, s.shard)?;
    let whole_run = stages::whole_run(env, guest)?;
    if let Some(shard) = s.shard {
        if names.iter().all(|n| whole_run.contains(n)) {
            bail!(
                "shard {shard} holds none of the selected tests (tests are split by name, so                  small selections leave some shards empty); use fewer shards"
            );
        }
    }
    Ok(Selection { names, whole_run })
}

/// A retry of `names`, each selected by exact name, in a fresh boot.
fn retry_plan(plan: &TestPlan, names: &[String], attempt: u32) -> TestPlan {
    let mut r = plan.clone();
    r.suite.patterns = names.iter().map(|n| format!("={n}")).collect();
    r.suite.shard = None;
    r.suite.attempt = attempt;
    r.snapshots = Snapshots::Skip(SkipWhy::Retry);
    r.outputs = Default::default();
    r
}

/// A finished guest run: the typed result and where its artefacts are.
pub struct Executed {
    pub result: RunResult,
    pub console: Vec<String>,
    pub mismatches: Vec<String>,
    pub run_dir: PathBuf,
}

/// [`run`], also returning the typed result for tasks built on the suite (`fuzz`).
pub fn run_and_report(env: &Env, plan: &TestPlan) -> Result<(RunResult, ExitCode)> {
    let total = Instant::now();
    let mut times = Times::default();
    let t = Instant::now();
    let guest = stages::build_guest(env)?;
    let sel = selection(env, &guest, plan)?;
    times.add("guest build", t.elapsed());
    let started = crate::clock::rfc3339_now();
    let p = stages::prepare(env, &plan.kernel, &plan.vm, &mut times)?;
    let mut x = execute(
        env,
        plan,
        &p,
        &guest,
        &sel.names,
        &env.run_dir(),
        &mut times,
    )?;
    // Kept for `mutate`, whose unmutated run of the same kernel this is.
    if plan.kernel.mutation.is_none() && !x.result.boot_failed && !x.result.tests.is_empty() {
        ResultCache::for_suite(env, &p, plan).store(&x.run_dir)?;
    }
    let t = Instant::now();
    for attempt in 1..=plan.triage.retries {
        let again = flaky::to_retry(&x.result, &sel.whole_run);
        if again.is_empty() || x.result.boot_failed {
            break;
        }
        println!("\nretry {attempt}: {} in a fresh boot", again.join(", "));
        let rplan = retry_plan(plan, &again, attempt);
        let names = stages::select(env, &guest, &rplan.suite.patterns, None)?;
        let dir = x.run_dir.join(format!("retry-{attempt}"));
        let rx = execute(env, &rplan, &p, &guest, &names, &dir, &mut Times::default())?;
        flaky::apply(&mut x.result, attempt, &again, &rx.result);
    }
    if plan.triage.retries > 0 {
        times.add("retries", t.elapsed());
    }
    times.add("total", total.elapsed());
    let run_id = plan.outputs.kcidb.as_ref().and_then(|k| k.run_id.clone());
    let prov = Provenance::of(env, &plan.kernel, &plan.vm, &p, &times, started, run_id);
    let json = save_report(plan, &p, &x, &times, &sel.names, Some(prov.clone()))?;
    write_outputs(env, plan, &x, &json, &prov)?;
    let code = finish(
        &x.result,
        &x.mismatches,
        &x.console,
        &times,
        &x.run_dir,
        plan.triage.strict,
    )?;
    Ok((x.result, code))
}

/// The runner's command line for `plan`, artefacts in `run_dir`.
fn guest_command(plan: &TestPlan, p: &Prepared, guest: &Path, run_dir: &Path) -> Vec<String> {
    let s = &plan.suite;
    let args = RunArgs {
        timeout: s.test_timeout.as_secs(),
        results: Some(run_dir.display().to_string()),
        heaps: s.heaps.clone(),
        // What the kernel was built with: a heap or detector it has must not merely SKIP.
        kernel_config: Some(p.built.build_dir.join(".config").display().to_string()),
        fuzz_seconds: s.fuzz.as_ref().map(|f| f.seconds),
        fuzz_seed: s.fuzz.as_ref().map(|f| f.seed),
        fuzz_ops: s.fuzz.as_ref().and_then(|f| f.ops),
        shard: s.shard,
        attempt: s.attempt,
        patterns: s.patterns.clone(),
    };
    std::iter::once(guest.display().to_string())
        .chain(args.to_argv())
        .collect()
}

/// Boot and run stages on a built kernel, then parse; artefacts go to `run_dir` (emptied
/// first). Snapshots are compared as the plan says.
pub fn execute(
    env: &Env,
    plan: &TestPlan,
    p: &Prepared,
    guest: &Path,
    selected: &[String],
    run_dir: &Path,
    times: &mut Times,
) -> Result<Executed> {
    let _ = fs::remove_dir_all(run_dir);
    fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    fs::write(run_dir.join("selected.txt"), selected.join("\n") + "\n")?;

    let limits = Limits {
        boot: plan.vm.boot_timeout,
        test: Some(plan.suite.test_timeout),
        run: plan.suite.run_timeout,
    };
    println!(
        "run: {} test(s) on the Linux {} {} kernel under {:?}",
        selected.len(),
        p.built.series,
        plan.kernel.profile.name(),
        p.accel
    );
    let started = Instant::now();
    let mut boot_shown = false;
    let session = stages::boot_and_run(
        env,
        &plan.vm,
        p,
        &guest_command(plan, p, guest, run_dir),
        limits,
        Some(run_dir.to_path_buf()),
        &mut |ev| show(ev, &mut boot_shown, started),
    )?;
    let boot = session.boot.unwrap_or(session.total);
    times.add("boot", boot);
    times.add("tests", session.total.saturating_sub(boot));

    fs::write(run_dir.join("stream.ktap"), session.guest.join("\n") + "\n")?;
    fs::write(
        run_dir.join("console.log"),
        session.console.join("\n") + "\n",
    )?;
    fs::write(
        run_dir.join("ending.json"),
        serde_json::to_string(&session.ending)?,
    )?;

    let t = Instant::now();
    let mut result = analyse(run_dir, selected, &session.ending)?;
    known::apply(&mut result, &plan.triage.known, Date::today());
    let mismatches = match &plan.snapshots {
        _ if result.boot_failed => vec![],
        Snapshots::Compare { accept } => {
            let variant = heaprig::Variant {
                kernel: p.built.series.name(),
                profile: plan.kernel.profile.name(),
            };
            check_snapshots(&result, variant, *accept)
        }
        Snapshots::Skip(SkipWhy::HeapSubset) => {
            println!(
                "snapshots: not compared (--heap {} leaves the other heaps out)",
                plan.suite.heaps.join(", ")
            );
            vec![]
        }
        Snapshots::Skip(SkipWhy::ComparedElsewhere | SkipWhy::Retry) => vec![],
    };
    times.add("report", t.elapsed());
    Ok(Executed {
        result,
        console: session.console,
        mismatches,
        run_dir: run_dir.to_path_buf(),
    })
}

/// Writes results.json into the run directory; returns its text.
pub fn save_report(
    plan: &TestPlan,
    p: &Prepared,
    x: &Executed,
    times: &Times,
    selected: &[String],
    provenance: Option<Provenance>,
) -> Result<String> {
    let info = RunInfo {
        profile: plan.kernel.profile.name().to_string(),
        kernel: p.identity.clone(),
        accel: p.accel,
        accel_why: p.accel_why.clone(),
        kernel_rebuilt: p.built.rebuilt,
        times: times.clone(),
        snapshot_mismatches: x.mismatches.clone(),
        shard: plan.suite.shard.map(|s| s.to_string()),
        selected: selected.to_vec(),
        provenance,
    };
    let json = serde_json::to_string_pretty(&report::JsonReport {
        result: &x.result,
        run: &info,
    })?;
    fs::write(x.run_dir.join("results.json"), &json)?;
    Ok(json)
}

fn write_outputs(
    env: &Env,
    plan: &TestPlan,
    x: &Executed,
    json: &str,
    prov: &Provenance,
) -> Result<()> {
    let (run_dir, result) = (&x.run_dir, &x.result);
    let write = |dest: &Option<PathBuf>, data: &[u8]| -> Result<()> {
        if let Some(d) = dest {
            fs::write(d, data).with_context(|| format!("writing {}", d.display()))?;
        }
        Ok(())
    };
    let o = &plan.outputs;
    write(&o.json, json.as_bytes())?;
    write(&o.junit, report::junit(result).as_bytes())?;
    if o.ktap.is_some() {
        write(&o.ktap, &fs::read(ktap_path(run_dir))?)?;
    }
    if let Some(k) = &o.kcidb {
        let mut b = kcidb::Builder::new(k, prov);
        let build = b.build(prov, true, None);
        b.run(&build, prov, result);
        kcidb::write(env, &b.finish(), &k.path)?;
    }
    Ok(())
}

/// The guest's own copy (written line by line into the shared results dir) when present,
/// else what the host captured from the guest's stdout.
fn ktap_path(run_dir: &Path) -> PathBuf {
    let own = run_dir.join("guest.ktap");
    if fs::metadata(&own).is_ok_and(|m| m.len() > 0) {
        own
    } else {
        run_dir.join("stream.ktap")
    }
}

/// Parse stage: saved run directory in, typed result out. Needs no kernel.
pub fn analyse(run_dir: &Path, selected: &[String], ending: &Ending) -> Result<RunResult> {
    let read =
        |p: PathBuf| fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()));
    let k = ktap::parse(&read(ktap_path(run_dir))?);
    let splats = splat::parse(&read(run_dir.join("console.log"))?);
    Ok(combine(&k, &splats, selected, ending))
}

fn check_snapshots(r: &RunResult, variant: heaprig::Variant<'_>, accept: bool) -> Vec<String> {
    if accept {
        // Read by insta when it decides whether to write .snap files.
        std::env::set_var("INSTA_UPDATE", "always");
    }
    let mismatches = r
        .tests
        .iter()
        .filter(|t| snapshotted(t))
        .filter(|t| {
            heaprig::check(&t.name, variant, accept, &t.snapshot())
                == heaprig::SnapshotMatch::Mismatch
        })
        .map(|t| t.name.clone())
        .collect();
    if accept {
        for t in r.tests.iter().filter(|t| snapshotted(t)) {
            match heaprig::prune(variant, &t.name) {
                Ok(true) => println!(
                    "snapshots: {} is the same on {}/{} as below it; no override kept",
                    t.name, variant.kernel, variant.profile
                ),
                Ok(false) => {}
                Err(e) => eprintln!("snapshots: could not prune {}'s override: {e}", t.name),
            }
        }
    }
    mismatches
}

/// A failure is reported as such (comparing it would only repeat it); a pass and a SKIP are
/// compared, so a test that starts skipping (a detector switched off, a heap gone) differs
/// from its recorded verdict. KNOWN and FLAKY are triage verdicts no snapshot records.
fn snapshotted(t: &crate::parse::results::TestResult) -> bool {
    !t.is_selftest() && matches!(t.verdict, TestVerdict::Pass | TestVerdict::Skip)
}

pub fn finish(
    r: &RunResult,
    mismatches: &[String],
    console: &[String],
    times: &Times,
    run_dir: &Path,
    strict: bool,
) -> Result<ExitCode> {
    println!();
    print!("{}", report::table(r));
    let details = report::details(r);
    if !details.is_empty() {
        println!();
        print!("{details}");
    }
    let stopped_early = !matches!(r.ending, Ending::Exited { .. });
    if stopped_early || r.boot_failed {
        println!("\nlast kernel console lines:");
        for l in console_tail(console) {
            println!("  {l}");
        }
    }
    let known = report::known_seen(r);
    if !known.is_empty() {
        println!();
        print!("{known}");
    }
    let counts = r.counts(mismatches);
    println!("\ntime: {}", times.line());
    println!("artefacts: {}", run_dir.display());
    if !mismatches.is_empty() {
        println!(
            "snapshots differ for: {}. Review with `cargo insta review`, or rerun with \
             `cargo xtask test --accept` and inspect `git diff snapshots/`.",
            mismatches.join(", ")
        );
    }
    // The plain closing line CI readers look for.
    println!("heaprig: {counts}");
    if strict && r.has_flakes() {
        println!("--strict: a FLAKY test fails the run");
    }
    if r.boot_failed {
        bail!(
            "the guest never ran the test suite ({}). The kernel console tail is above; the \
             full log is {}/console.log.",
            r.ending,
            run_dir.display()
        );
    }
    Ok(
        if r.passed() && mismatches.is_empty() && !(strict && r.has_flakes()) {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        },
    )
}

pub fn parse(env: &Env, a: ParseArgs) -> Result<ExitCode> {
    let dir = a.dir.unwrap_or_else(|| env.run_dir());
    let selected: Vec<String> = fs::read_to_string(dir.join("selected.txt"))
        .with_context(|| {
            format!(
                "{} is not a heaprig run directory (no selected.txt)",
                dir.display()
            )
        })?
        .lines()
        .map(str::to_string)
        .collect();
    let ending: Ending = serde_json::from_str(
        &fs::read_to_string(dir.join("ending.json"))
            .unwrap_or_else(|_| r#"{"kind":"exited","code":0}"#.into()),
    )
    .context("reading ending.json")?;
    let mut result = analyse(&dir, &selected, &ending)?;
    let known = match &a.known_issues {
        Some(path) => KnownIssues::load(path)?,
        None => KnownIssues::default(),
    };
    known::apply(&mut result, &known, Date::today());
    let console: Vec<String> = fs::read_to_string(dir.join("console.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    finish(&result, &[], &console, &Times::default(), &dir, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;

    #[test]
    fn skips_are_compared_with_their_snapshots_and_failures_are_not() {
        let k = ktap::parse(
            "KTAP version 1\n1..3\nok 1 kmemleak # SKIP kmemleak is missing\nnot ok 2 zeroing\nok 3 set_name\n# heaprig-done: pass=1 fail=1 skip=1\n",
        );
        let names: Vec<String> = k.tests.iter().map(|t| t.name.clone()).collect();
        let r = combine(&k, &[], &names, &Ending::Exited { code: 1 });
        let compared: Vec<&str> = r
            .tests
            .iter()
            .filter(|t| snapshotted(t))
            .map(|t| t.name.as_str())
            .collect();
        assert_eq!(compared, ["kmemleak", "set_name"]);
        // Self-tests are never snapshotted, whatever their verdict.
        let s = ktap::parse(&fixture("guest-selftests.ktap"));
        let names: Vec<String> = s.tests.iter().map(|t| t.name.clone()).collect();
        let r = combine(&s, &[], &names, &Ending::Exited { code: 1 });
        assert!(r
            .tests
            .iter()
            .filter(|t| t.is_selftest())
            .all(|t| !snapshotted(t)));
    }

    /// FLAKY passes the run, unless --strict; KNOWN passes it.
    #[test]
    fn strict_makes_a_flake_fail_the_run() {
        let k = ktap::parse(
            "KTAP version 1\n1..1\nnot ok 1 zeroing\n# heaprig-done: pass=0 fail=1 skip=0\n",
        );
        let mut r = combine(&k, &[], &["zeroing".into()], &Ending::Exited { code: 1 });
        let dir = tempfile::tempdir().unwrap();
        let code = |r: &RunResult, strict| {
            finish(r, &[], &[], &Times::default(), dir.path(), strict).unwrap()
        };
        assert_eq!(code(&r, false), ExitCode::from(1));
        r.tests[0].verdict = TestVerdict::Flaky;
        assert_eq!(code(&r, false), ExitCode::SUCCESS);
        assert_eq!(code(&r, true), ExitCode::from(1));
        r.tests[0].verdict = TestVerdict::Known;
        assert_eq!(code(&r, true), ExitCode::SUCCESS);
    }
}
