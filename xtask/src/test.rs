//! `cargo xtask test`: setup → source → build → guest build → boot and run → parse →
//! report → snapshots, each stage timed. `cargo xtask parse` re-runs the last three on a
//! saved run directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use xshell::cmd;

use crate::env::{fmt_duration, Env};
use crate::flags::{KernelArgs, ParseArgs, TestArgs, VmArgs};
use crate::kernel::{self, Built};
use crate::results::{combine, describe_ending, RunResult};
use crate::vm::{self, Accel, Ending, Event, Limits, VmSpec};
use crate::{ktap, report, setup, splat};

/// Stage timings, printed at the end of every run and kept in the JSON report.
#[derive(Default, Serialize)]
pub struct Times(pub Vec<(String, f64)>);

impl Times {
    pub fn add(&mut self, stage: &str, d: Duration) {
        self.0.push((stage.to_string(), d.as_secs_f64()));
    }

    pub fn line(&self) -> String {
        self.0
            .iter()
            .map(|(s, t)| format!("{s} {}", fmt_duration(Duration::from_secs_f64(*t))))
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// What every VM-using task needs before it boots.
pub struct Prepared {
    pub built: Built,
    pub accel: Accel,
    pub accel_why: String,
    pub identity: String,
}

pub fn build_kernel(
    env: &Env,
    k: &KernelArgs,
    profile: kernel::Profile,
    times: &mut Times,
) -> Result<(Built, String)> {
    let t = Instant::now();
    setup::ensure(env, true)?;
    times.add("setup", t.elapsed());
    let t = Instant::now();
    let src = kernel::prepare_source(env, k.kernel_src.as_deref(), k.tree_id.as_deref())?;
    times.add("source", t.elapsed());
    let t = Instant::now();
    let built = kernel::build(env, &src, profile)?;
    let stage = if built.rebuilt {
        "build"
    } else {
        "build (cached)"
    };
    times.add(stage, t.elapsed());
    Ok((built, src.identity))
}

pub fn prepare(
    env: &Env,
    v: &VmArgs,
    profile: kernel::Profile,
    times: &mut Times,
) -> Result<Prepared> {
    let (built, identity) = build_kernel(env, &v.kernel, profile, times)?;
    let t = Instant::now();
    let (accel, accel_why) = vm::resolve_accel(v.accel, &built.bzimage, &env.cache, &env.root)?;
    times.add("accel", t.elapsed());
    println!("accel: {accel:?} ({accel_why})");
    Ok(Prepared {
        built,
        accel,
        accel_why,
        identity,
    })
}

pub fn spec(env: &Env, v: &VmArgs, p: &Prepared, rwdir: Option<PathBuf>) -> VmSpec {
    VmSpec {
        kernel: p.built.bzimage.clone(),
        accel: p.accel,
        memory: v.memory.clone(),
        cpus: v.cpus,
        rwdir,
        cwd: env.root.clone(),
    }
}

/// Builds the guest test runner and returns its path, as cargo reports it.
pub fn build_guest(env: &Env) -> Result<PathBuf> {
    let sh = &env.sh;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = cmd!(
        sh,
        "{cargo} build --release --package guest-tests --bin heaprig-guest --message-format=json-render-diagnostics"
    )
    .quiet()
    .ignore_status()
    .output()
    .context("running cargo to build the guest tests")?;
    if !out.status.success() {
        bail!(
            "building the guest tests failed (cargo build -p guest-tests):\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == "heaprig-guest" {
            if let Some(exe) = v["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo built guest-tests but reported no heaprig-guest executable")
}

/// The tests a pattern list selects, asked of the runner itself (it runs on the host too).
pub fn select(env: &Env, guest: &Path, patterns: &[String]) -> Result<Vec<String>> {
    let sh = &env.sh;
    let out = cmd!(sh, "{guest} list {patterns...}").quiet().read()?;
    let names: Vec<String> = out.lines().map(str::to_string).collect();
    if names.is_empty() {
        let all = cmd!(sh, "{guest} list").quiet().read()?;
        bail!(
            "no guest test matches {patterns:?}. Patterns are names, substrings or globs; the \
             tests are: {}",
            all.lines().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(names)
}

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
                    ktap::Status::Pass => "ok",
                    ktap::Status::Fail => "FAIL",
                    ktap::Status::Skip => "SKIP",
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

#[derive(Serialize)]
struct RunInfo<'a> {
    profile: &'a str,
    kernel: &'a str,
    accel: Accel,
    accel_why: &'a str,
    kernel_rebuilt: bool,
    times: &'a Times,
    snapshot_mismatches: &'a [String],
}

pub fn run(env: &Env, a: TestArgs) -> Result<ExitCode> {
    run_and_report(env, a).map(|(_, code)| code)
}

/// A finished guest run: the typed result and where its artefacts are.
pub struct Executed {
    pub result: RunResult,
    pub console: Vec<String>,
    pub mismatches: Vec<String>,
    pub run_dir: PathBuf,
}

/// [`run`], also returning the typed result for tasks built on the suite (`fuzz`).
pub fn run_and_report(env: &Env, a: TestArgs) -> Result<(RunResult, ExitCode)> {
    let total = Instant::now();
    let mut times = Times::default();
    let t = Instant::now();
    let guest = build_guest(env)?;
    let selected = select(env, &guest, &a.patterns)?;
    times.add("guest build", t.elapsed());
    let p = prepare(env, &a.vm, a.vm.kernel.profile(), &mut times)?;
    let x = execute(env, &a, &p, &guest, &selected, &env.run_dir(), &mut times)?;
    times.add("total", total.elapsed());
    let json = save_report(&a, &p, &x, &times)?;
    write_outputs(&a, &x.run_dir, &x.result, &json)?;
    let code = finish(&x.result, &x.mismatches, &x.console, &times, &x.run_dir)?;
    Ok((x.result, code))
}

/// Boot and run stages on a built kernel, then parse; artefacts go to `run_dir` (emptied
/// first). Snapshots are compared unless `a.heap` narrows the run or `a.no_snapshots`.
pub fn execute(
    env: &Env,
    a: &TestArgs,
    p: &Prepared,
    guest: &Path,
    selected: &[String],
    run_dir: &Path,
    times: &mut Times,
) -> Result<Executed> {
    let _ = fs::remove_dir_all(run_dir);
    fs::create_dir_all(run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    fs::write(run_dir.join("selected.txt"), selected.join("\n") + "\n")?;

    let mut guest_cmd = vec![
        guest.display().to_string(),
        "run".into(),
        "--timeout".into(),
        a.test_timeout.to_string(),
        "--results".into(),
        run_dir.display().to_string(),
    ];
    for h in &a.heap {
        guest_cmd.extend(["--heap".to_string(), h.clone()]);
    }
    // What the kernel was built with: a heap or detector it has must not merely SKIP.
    guest_cmd.extend([
        "--kernel-config".to_string(),
        p.built.build_dir.join(".config").display().to_string(),
    ]);
    guest_cmd.extend(a.guest_args.iter().cloned());
    guest_cmd.extend(a.patterns.iter().cloned());
    let guest_cmd: Vec<String> = guest_cmd.iter().map(|s| vm::sh_quote(s)).collect();
    let limits = Limits {
        boot: Duration::from_secs(a.vm.boot_timeout),
        test: Some(Duration::from_secs(a.test_timeout)),
        run: Duration::from_secs(a.run_timeout),
    };
    println!(
        "run: {} test(s) on the {} kernel under {:?}",
        selected.len(),
        a.vm.kernel.profile().name(),
        p.accel
    );
    let spec = spec(env, &a.vm, p, Some(run_dir.to_path_buf()));
    let started = Instant::now();
    let mut boot_shown = false;
    let session = vm::run(&spec, &guest_cmd.join(" "), limits, &mut |ev| {
        show(ev, &mut boot_shown, started)
    })?;
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
    let result = analyse(run_dir, selected, &session.ending)?;
    let mismatches = if result.boot_failed || a.no_snapshots {
        vec![]
    } else if !a.heap.is_empty() {
        println!(
            "snapshots: not compared (--heap {} leaves the other heaps out)",
            a.heap.join(", ")
        );
        vec![]
    } else {
        check_snapshots(&result, a.vm.kernel.profile().name(), a.accept)
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
pub fn save_report(a: &TestArgs, p: &Prepared, x: &Executed, times: &Times) -> Result<String> {
    let info = RunInfo {
        profile: a.vm.kernel.profile().name(),
        kernel: &p.identity,
        accel: p.accel,
        accel_why: &p.accel_why,
        kernel_rebuilt: p.built.rebuilt,
        times,
        snapshot_mismatches: &x.mismatches,
    };
    let json = serde_json::to_string_pretty(&report::JsonReport {
        result: &x.result,
        run: &info,
    })?;
    fs::write(x.run_dir.join("results.json"), &json)?;
    Ok(json)
}

fn write_outputs(a: &TestArgs, run_dir: &Path, result: &RunResult, json: &str) -> Result<()> {
    let write = |dest: &Option<PathBuf>, data: &[u8]| -> Result<()> {
        if let Some(d) = dest {
            fs::write(d, data).with_context(|| format!("writing {}", d.display()))?;
        }
        Ok(())
    };
    write(&a.json, json.as_bytes())?;
    write(&a.junit, report::junit(result).as_bytes())?;
    if a.ktap.is_some() {
        write(&a.ktap, &fs::read(ktap_path(run_dir))?)?;
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

fn check_snapshots(r: &RunResult, profile: &str, accept: bool) -> Vec<String> {
    if accept {
        // Read by insta when it decides whether to write .snap files.
        std::env::set_var("INSTA_UPDATE", "always");
    }
    r.tests
        .iter()
        .filter(|t| snapshotted(t))
        .filter(|t| heaprig::check(&t.name, profile, &t.snapshot()) == heaprig::Verdict::Mismatch)
        .map(|t| t.name.clone())
        .collect()
}

/// A failure is reported as such (comparing it would only repeat it); a pass and a SKIP are
/// compared, so a test that starts skipping (a detector switched off, a heap gone) differs
/// from its recorded verdict.
fn snapshotted(t: &crate::results::TestResult) -> bool {
    !t.is_selftest() && t.verdict != crate::results::Verdict::Fail
}

pub fn finish(
    r: &RunResult,
    mismatches: &[String],
    console: &[String],
    times: &Times,
    run_dir: &Path,
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
        for l in console
            .iter()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            println!("  {l}");
        }
    }
    let (pass, fail, skip) = r.counts(mismatches);
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
    println!("heaprig: {pass} passed, {fail} failed, {skip} skipped");
    if r.boot_failed {
        bail!(
            "the guest never ran the test suite ({}). The kernel console tail is above; the \
             full log is {}/console.log.",
            describe_ending(&r.ending),
            run_dir.display()
        );
    }
    Ok(if r.passed() && mismatches.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
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
    let result = analyse(&dir, &selected, &ending)?;
    let console: Vec<String> = fs::read_to_string(dir.join("console.log"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    finish(&result, &[], &console, &Times::default(), &dir)
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
}
