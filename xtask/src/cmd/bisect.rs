//! `cargo xtask bisect` drives `git bisect run` in a scratch clone with `bisect-step`, which
//! is also usable on its own as `git bisect run cargo xtask bisect-step ...`. Exit codes
//! follow git: 0 good, 1 bad, 125 skip (no build, no boot, a flaky verdict, the rig failing);
//! never above 127, which would abort the bisection. After naming a culprit, `bisect` reverts
//! it on `--bad` and judges that tree too (exit 1 when it is still bad), and gives a
//! confidence figure from the runs it made (`--runs N`).

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::cmd::tree::{self, short, Repo, Scratch, SuiteOutcome};
use crate::env::Env;
use crate::flags::{BisectArgs, StepArgs};
use crate::parse::results::TestVerdict;
use crate::parse::splat;
use crate::report::compare;
use crate::report::fmt_duration;
use crate::stages::vm::Ending;

pub const GOOD: u8 = 0;
pub const BAD: u8 = 1;
pub const SKIP: u8 = 125;

/// Ends a bisection. `git bisect reset` takes a commit, not `--quiet`: given that, it printed
/// "error: '--quiet' is not a valid commit" into a successful run's summary.
const RESET: &[&str] = &["bisect", "reset"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BisectVerdict {
    Good,
    Bad,
    Skip,
}

impl BisectVerdict {
    pub fn code(&self) -> u8 {
        match self {
            BisectVerdict::Good => GOOD,
            BisectVerdict::Bad => BAD,
            BisectVerdict::Skip => SKIP,
        }
    }
}

/// Good, bad or skip for one run, and why.
pub fn decide(outcome: &SuiteOutcome, splat_text: Option<&str>) -> (BisectVerdict, String) {
    let r = match outcome {
        SuiteOutcome::NoBuild(e) => {
            let first = e.lines().find(|l| l.contains("error")).unwrap_or("");
            return (
                BisectVerdict::Skip,
                format!("does not build: {}", first.trim()),
            );
        }
        SuiteOutcome::NoBoot(e) => {
            let first = e.lines().next().unwrap_or("");
            return (BisectVerdict::Skip, format!("does not boot: {first}"));
        }
        SuiteOutcome::Ran(r) => r,
    };
    if let Some(text) = splat_text {
        let needle = splat::normalise(text).to_lowercase();
        return match compare::splats(r)
            .into_iter()
            .find(|fp| fp.to_lowercase().contains(&needle))
        {
            Some(fp) => (BisectVerdict::Bad, format!("splat: {fp}")),
            // A run that stopped early cannot show the splat's absence.
            None if !r.not_run.is_empty() || !matches!(r.ending, Ending::Exited { .. }) => (
                BisectVerdict::Skip,
                format!(
                    "no splat matching {text:?}, but the run ended early ({})",
                    r.ending
                ),
            ),
            None => (BisectVerdict::Good, format!("no splat matching {text:?}")),
        };
    }
    let mut failing: Vec<String> = compare::items(r)
        .into_iter()
        .filter(|(_, i)| i.verdict == TestVerdict::Fail)
        .map(|(n, i)| match i.reasons.first() {
            Some(why) => format!("{n}: {why}"),
            None => n,
        })
        .collect();
    failing.extend(
        r.splats_outside_tests
            .iter()
            .map(|s| format!("kernel {} outside any test: {}", s.kind.label(), s.title)),
    );
    failing.extend(r.problems.iter().cloned());
    if failing.is_empty() {
        (BisectVerdict::Good, "all chosen tests passed".into())
    } else {
        (BisectVerdict::Bad, failing.join("; "))
    }
}

/// One line of the step log `bisect` summarises.
#[derive(Debug, Serialize, Deserialize)]
pub struct StepRecord {
    pub commit: String,
    pub subject: String,
    pub verdict: BisectVerdict,
    pub why: String,
    pub seconds: f64,
    pub runs: u32,
    /// Each run's verdict (`--runs`, `--retries`), in order.
    #[serde(default)]
    pub run_verdicts: Vec<BisectVerdict>,
}

/// A step's verdict from its runs' verdicts (`--runs N`): skip if a run could not test the
/// commit, bad if any run was bad (syzbot's rule: a crash seen once is real), good only if
/// every run was.
pub fn combine_runs(verdicts: &[(BisectVerdict, String)]) -> (BisectVerdict, String) {
    let n = verdicts.len();
    if let Some((_, why)) = verdicts.iter().find(|(v, _)| *v == BisectVerdict::Skip) {
        return (BisectVerdict::Skip, why.clone());
    }
    let bad: Vec<&String> = verdicts
        .iter()
        .filter(|(v, _)| *v == BisectVerdict::Bad)
        .map(|(_, why)| why)
        .collect();
    match bad.first() {
        None => (
            BisectVerdict::Good,
            format!("good in {n} of {n} run(s): {}", verdicts[0].1),
        ),
        Some(why) => (
            BisectVerdict::Bad,
            format!("bad in {} of {n} run(s): {why}", bad.len()),
        ),
    }
}

/// Runs the step as the flags say; returns the verdict, why, and every run's verdict.
fn judge(
    env: &Env,
    a: &StepArgs,
    tree: &Path,
    out: &Path,
) -> Result<(BisectVerdict, String, Vec<BisectVerdict>)> {
    let plan = crate::flags::tree_plan(&a.vm, &a.suite, tree, a.vm.kernel.tree_id.as_deref());
    let once = || -> Result<(BisectVerdict, String)> {
        let (outcome, times) = tree::run_suite(env, &plan, out)?;
        println!("time: {}", times.line());
        Ok(decide(&outcome, a.verdict.splat.as_deref()))
    };
    let mut seen: Vec<(BisectVerdict, String)> = Vec::new();
    if a.verdict.runs > 1 {
        for i in 1..=a.verdict.runs {
            let (v, why) = once()?;
            println!("bisect-step: run {i} of {}: {v:?} ({why})", a.verdict.runs);
            let stop = v == BisectVerdict::Skip;
            seen.push((v, why));
            if stop {
                break;
            }
        }
        let (v, why) = combine_runs(&seen);
        return Ok((v, why, seen.into_iter().map(|(v, _)| v).collect()));
    }
    // --retries: rerun while bad; bad only if every run was.
    loop {
        let (v, why) = once()?;
        seen.push((v.clone(), why.clone()));
        let runs = seen.len() as u32;
        match v {
            BisectVerdict::Bad if runs <= a.verdict.retries => {
                println!(
                    "bisect-step: bad ({why}); rerun {runs} of {}",
                    a.verdict.retries
                );
            }
            BisectVerdict::Good if runs > 1 => {
                return Ok((
                    BisectVerdict::Skip,
                    format!("flaky: bad then good in {runs} runs ({})", seen[0].1),
                    seen.into_iter().map(|(v, _)| v).collect(),
                ))
            }
            _ => return Ok((v, why, seen.into_iter().map(|(v, _)| v).collect())),
        }
    }
}

/// How far the good verdicts can be trusted, from the runs on the bad steps: the bug's
/// reproduction rate p is estimated by Laplace's rule of succession, (bad runs + 1) / (runs
/// on bad steps + 2), so a bug seen every time still leaves room for doubt; a good step of N
/// runs misses a bad commit with probability (1 - p)^N, and the confidence is that no good
/// step did. None without a bad step to measure p on.
pub fn confidence(steps: &[StepRecord]) -> Option<Confidence> {
    let bad: Vec<&StepRecord> = steps
        .iter()
        .filter(|s| s.verdict == BisectVerdict::Bad)
        .collect();
    if bad.is_empty() {
        return None;
    }
    let runs_of = |s: &StepRecord| s.run_verdicts.len().max(1) as u32;
    let bad_runs: u32 = bad
        .iter()
        .map(|s| {
            if s.run_verdicts.is_empty() {
                1
            } else {
                s.run_verdicts
                    .iter()
                    .filter(|v| **v == BisectVerdict::Bad)
                    .count() as u32
            }
        })
        .sum();
    let runs_on_bad: u32 = bad.iter().map(|s| runs_of(s)).sum();
    let p = f64::from(bad_runs + 1) / f64::from(runs_on_bad + 2);
    let goods: Vec<u32> = steps
        .iter()
        .filter(|s| s.verdict == BisectVerdict::Good)
        .map(runs_of)
        .collect();
    let value = goods
        .iter()
        .map(|&n| 1.0 - (1.0 - p).powi(n as i32))
        .product::<f64>();
    Some(Confidence {
        value,
        p,
        bad_runs,
        runs_on_bad,
        good_steps: goods.len(),
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Confidence {
    pub value: f64,
    pub p: f64,
    pub bad_runs: u32,
    pub runs_on_bad: u32,
    pub good_steps: usize,
}

impl std::fmt::Display for Confidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.1}% that no good verdict hid the bug (reproduced in {} of {} run(s) on bad steps: \
             p = {:.2} by the rule of succession; {} good step(s))",
            self.value * 100.0,
            self.bad_runs,
            self.runs_on_bad,
            self.p,
            self.good_steps
        )
    }
}

pub fn step(env: &Env, a: StepArgs) -> ExitCode {
    let t = Instant::now();
    // Absolute before anything runs git: the rig's shell works from the project root.
    let given =
        a.vm.kernel
            .kernel_src
            .clone()
            .unwrap_or_else(|| PathBuf::from("."));
    let tree = given.canonicalize().unwrap_or(given);
    let commit = head(env, &tree);
    let subject = tree::subject(&env.sh, &tree, "HEAD");
    let out = env.root.join("target/heaprig/bisect").join(short(&commit));
    let (verdict, why, run_verdicts) = match crate::stages::kernel::validate_tree(&tree)
        .and_then(|()| judge(env, &a, &tree, &out))
    {
        Ok(x) => x,
        // The rig failing says nothing about the commit: skip it, loudly.
        Err(e) => (
            BisectVerdict::Skip,
            format!("the rig could not test this commit: {e:#}"),
            vec![BisectVerdict::Skip],
        ),
    };
    let rec = StepRecord {
        commit,
        subject,
        verdict: verdict.clone(),
        why,
        seconds: t.elapsed().as_secs_f64(),
        runs: run_verdicts.len() as u32,
        run_verdicts,
    };
    println!(
        "bisect-step: {} {} \"{}\": {} ({}) in {}",
        match rec.verdict {
            BisectVerdict::Good => "GOOD",
            BisectVerdict::Bad => "BAD",
            BisectVerdict::Skip => "SKIP",
        },
        short(&rec.commit),
        rec.subject,
        rec.why,
        rec.verdict.code(),
        fmt_duration(t.elapsed())
    );
    if let Some(log) = &a.log {
        let line = serde_json::to_string(&rec).unwrap_or_default();
        let written = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| writeln!(f, "{line}"));
        if let Err(e) = written {
            eprintln!(
                "heaprig: warning: could not append to {}: {e}",
                log.display()
            );
        }
    }
    ExitCode::from(verdict.code())
}

fn head(env: &Env, tree: &Path) -> String {
    xshell::cmd!(env.sh, "git -C {tree} rev-parse HEAD")
        .quiet()
        .ignore_stderr()
        .read()
        .unwrap_or_else(|_| "unknown".into())
}

/// The flags a step needs, forwarded from `bisect`'s own.
fn step_flags(a: &BisectArgs, tree: &Path, tree_id: &str, log: &Path) -> Vec<String> {
    let mut vm = a.vm.clone();
    vm.kernel.profile = Some(a.vm.kernel.profile());
    vm.kernel.kernel_src = Some(tree.to_path_buf());
    vm.kernel.tree_id = Some(tree_id.into());
    let mut v: Vec<String> = vec![
        "bisect-step".into(),
        "--log".into(),
        log.display().to_string(),
    ];
    v.extend(vm.to_argv());
    v.extend([
        "--test-timeout".into(),
        a.suite.test_timeout.to_string(),
        "--run-timeout".into(),
        a.suite.run_timeout.to_string(),
    ]);
    // One of the two, as given (clap refuses both).
    if a.verdict.runs > 1 {
        v.extend(["--runs".into(), a.verdict.runs.to_string()]);
    } else {
        v.extend(["--retries".into(), a.verdict.retries.to_string()]);
    }
    for p in &a.suite.patterns {
        v.extend(["--test".into(), p.clone()]);
    }
    if let Some(s) = &a.verdict.splat {
        v.extend(["--splat".into(), s.clone()]);
    }
    v
}

/// `<sha> is the first bad commit`, as `git bisect run` prints it.
pub fn first_bad(output: &str) -> Option<String> {
    output.lines().find_map(|l| {
        let sha = l.strip_suffix(" is the first bad commit")?;
        (sha.len() >= 40 && sha.bytes().all(|b| b.is_ascii_hexdigit())).then(|| sha.to_string())
    })
}

pub fn read_steps(log: &Path) -> Vec<StepRecord> {
    fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

pub fn summary(steps: &[StepRecord], found: Option<(&str, &str)>, total: Duration) -> String {
    let mut s = String::new();
    match found {
        Some((sha, subj)) => s.push_str(&format!("first bad commit: {sha} \"{subj}\"\n")),
        None => s.push_str("no first bad commit was named (see git's output above)\n"),
    }
    s.push_str(&format!(
        "steps: {} in {} ({} per step on average)\n",
        steps.len(),
        fmt_duration(total),
        fmt_duration(total / steps.len().max(1) as u32)
    ));
    for (i, r) in steps.iter().enumerate() {
        s.push_str(&format!(
            "  {:>2}. {} {:<4} {:>7}  {}  ({})\n",
            i + 1,
            short(&r.commit),
            match r.verdict {
                BisectVerdict::Good => "good",
                BisectVerdict::Bad => "bad",
                BisectVerdict::Skip => "skip",
            },
            fmt_duration(Duration::from_secs_f64(r.seconds)),
            r.subject,
            r.why
        ));
    }
    if found.is_some() {
        match confidence(steps) {
            Some(c) => s.push_str(&format!("confidence: {c}\n")),
            None => s.push_str("confidence: not estimated (no step was judged bad)\n"),
        }
    }
    s
}

/// What reverting the culprit on the bad revision showed.
#[derive(Debug, PartialEq)]
pub enum Confirmation {
    /// The bad revision with the culprit reverted is good.
    Confirmed(String),
    /// Still bad with the culprit reverted: the culprit is doubtful.
    Contradicted(String),
    /// The revert does not apply, or the reverted tree could not be judged.
    Unchecked(String),
}

impl std::fmt::Display for Confirmation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Confirmation::Confirmed(why) => write!(
                f,
                "CONFIRMED: --bad with the culprit reverted is good ({why})"
            ),
            Confirmation::Contradicted(why) => write!(
                f,
                "NOT CONFIRMED: --bad with the culprit reverted is still bad ({why}); the culprit \
                 is doubtful (a flaky test, or more than one bad commit)"
            ),
            Confirmation::Unchecked(why) => write!(f, "not confirmed: {why}"),
        }
    }
}

/// Reverts `culprit` on `bad` in the scratch tree and judges the result with the same step
/// flags as the bisection.
fn confirm(
    env: &Env,
    a: &BisectArgs,
    scratch: &Scratch,
    bad: &str,
    culprit: &str,
    out_root: &Path,
    exe: &Path,
) -> Result<Confirmation> {
    let sh = &env.sh;
    scratch.checkout(sh, bad)?;
    let (ok, out) = scratch.git_try(sh, &["revert", "--no-edit", culprit])?;
    if !ok {
        let _ = scratch.git_try(sh, &["revert", "--abort"]);
        let first = out.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Ok(Confirmation::Unchecked(format!(
            "the revert of {} does not apply to {}: {first}",
            short(culprit),
            short(bad)
        )));
    }
    println!(
        "\n== bisect: checking {} with {} reverted ==",
        short(bad),
        short(culprit)
    );
    let log = out_root.join("revert.jsonl");
    let _ = fs::remove_file(&log);
    let status = Command::new(exe)
        .args(step_flags(a, scratch.path(), &scratch.tree_id, &log))
        .stdin(Stdio::null())
        .status()
        .context("running bisect-step on the reverted tree")?;
    let why = read_steps(&log)
        .pop()
        .map_or_else(|| "no step record".to_string(), |r| r.why);
    Ok(match status.code() {
        Some(0) => Confirmation::Confirmed(why),
        Some(1) => Confirmation::Contradicted(why),
        _ => Confirmation::Unchecked(format!("the reverted tree could not be judged: {why}")),
    })
}

pub fn run(env: &Env, a: BisectArgs) -> Result<ExitCode> {
    let sh = &env.sh;
    let repo = Repo::open(sh, a.vm.kernel.kernel_src.as_deref(), "bisect")?;
    let good = repo.resolve(sh, &a.good)?;
    let bad = repo.resolve(sh, &a.bad)?;
    let dir = &repo.dir;
    let is_ancestor = xshell::cmd!(sh, "git -C {dir} merge-base --is-ancestor {good} {bad}")
        .quiet()
        .run()
        .is_ok();
    if !is_ancestor {
        bail!(
            "--good {} is not an ancestor of --bad {}; bisect needs the good revision in the \
             bad one's history",
            a.good,
            a.bad
        );
    }
    let started = Instant::now();
    let scratch = Scratch::new(env, &repo, repo.tree_id(sh, &bad)?)?;
    let out_root = env.root.join("target/heaprig/bisect");
    fs::create_dir_all(&out_root)?;
    let log = out_root.join("steps.jsonl");
    let _ = fs::remove_file(&log);
    println!(
        "bisect: {}..{} in scratch tree {}",
        short(&good),
        short(&bad),
        scratch.path().display()
    );
    scratch.git(sh, &["bisect", "start", &bad, &good])?;
    // Resolved once, now: a rebuild of the rig during a long bisect replaces the binary, and
    // /proc/self/exe then names a deleted file (the revert check below failed so, "No such
    // file or directory", on 2026-12-01). The path stays valid and runs the new build.
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let mut child = Command::new("git")
        .arg("-C")
        .arg(scratch.path())
        .args(["bisect", "run"])
        .arg(&exe)
        .args(step_flags(&a, scratch.path(), &scratch.tree_id, &log))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting git bisect run")?;
    let mut output = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            println!("{line}");
            output.push_str(&line);
            output.push('\n');
        }
    }
    let status = child.wait().context("waiting for git bisect run")?;
    let bisect_log = scratch.git(sh, &["bisect", "log"]).unwrap_or_default();
    fs::write(out_root.join("bisect.log"), &bisect_log)?;
    // The scratch tree goes away (or is kept for a look); a failed reset is only a warning.
    match scratch.git_try(sh, RESET) {
        Ok((true, _)) => {}
        Ok((false, out)) => eprintln!(
            "heaprig: warning: `git {}` failed in the scratch tree: {}",
            RESET.join(" "),
            out.trim()
        ),
        Err(e) => eprintln!("heaprig: warning: `git {}`: {e:#}", RESET.join(" ")),
    }
    let steps = read_steps(&log);
    let found = first_bad(&output).map(|sha| {
        let subj = tree::subject(sh, &repo.dir, &sha);
        (sha, subj)
    });
    println!(
        "\n{}",
        summary(
            &steps,
            found.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
            started.elapsed()
        )
    );
    let confirmation = match &found {
        Some((sha, _)) if !a.no_confirm => {
            let c = confirm(env, &a, &scratch, &bad, sha, &out_root, &exe)
                .unwrap_or_else(|e| Confirmation::Unchecked(format!("{e:#}")));
            println!("\nrevert check: {c}");
            Some(c)
        }
        _ => None,
    };
    println!(
        "artefacts: {} (steps.jsonl, bisect.log, revert.jsonl)",
        out_root.display()
    );
    if a.keep {
        println!("scratch tree kept: {}", scratch.keep().display());
    }
    match found {
        Some(_) if matches!(confirmation, Some(Confirmation::Contradicted(_))) => {
            Ok(ExitCode::from(1))
        }
        Some(_) => Ok(ExitCode::SUCCESS),
        None => bail!(
            "git bisect run ended ({status}) without naming a first bad commit: every candidate \
             was skipped, or the good revision is bad too. The steps are listed above and in {}",
            log.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture;
    use crate::parse::results::combine;
    use crate::{parse::ktap, parse::splat};

    fn ran(log: &str) -> SuiteOutcome {
        let k = ktap::parse(&fixture("guest-pass.ktap"));
        let names: Vec<String> = k.tests.iter().map(|t| t.name.clone()).collect();
        SuiteOutcome::Ran(combine(
            &k,
            &splat::parse(log),
            &names,
            &Ending::Exited { code: 0 },
        ))
    }

    #[test]
    fn verdicts_follow_git_exit_codes() {
        let clean = ran(&fixture("boot-clean.log"));
        assert_eq!(decide(&clean, None).0.code(), 0);
        let warned = ran("[ 1.0] heaprig: begin set_name/system\n[ 1.1] WARNING: CPU: 0 PID: 9 at drivers/dma-buf/dma-buf.c:1 dma_buf_vmap+0x1/0x2\n[ 1.2] ---[ end trace 0 ]---\n[ 1.3] heaprig: end set_name/system\n");
        let (v, why) = decide(&warned, None);
        assert_eq!(
            (v.code(), why.starts_with("set_name [system]")),
            (1, true),
            "{why}"
        );
        // With --splat only the splat decides.
        assert_eq!(decide(&warned, Some("dma_buf_vmap")).0, BisectVerdict::Bad);
        assert_eq!(decide(&warned, Some("kasan")).0, BisectVerdict::Good);
        assert_eq!(decide(&clean, Some("dma_buf_vmap")).0, BisectVerdict::Good);
        let (v, why) = decide(
            &SuiteOutcome::NoBuild("make\nfoo.rs:1: error: x\n".into()),
            None,
        );
        assert_eq!(
            (v.code(), why.as_str()),
            (125, "does not build: foo.rs:1: error: x")
        );
        assert_eq!(
            decide(&SuiteOutcome::NoBoot("boot timeout".into()), None)
                .0
                .code(),
            125
        );
        // A run cut short cannot prove a splat absent: skip, not good.
        let k = ktap::parse(&fixture("guest-pass.ktap"));
        let mut sel: Vec<String> = k.tests.iter().map(|t| t.name.clone()).collect();
        sel.push("never_reported".into());
        let short = SuiteOutcome::Ran(combine(&k, &[], &sel, &Ending::RunTimeout { secs: 9 }));
        assert_eq!(decide(&short, Some("dma_buf_vmap")).0, BisectVerdict::Skip);
        for v in [BisectVerdict::Good, BisectVerdict::Bad, BisectVerdict::Skip] {
            assert!(v.code() <= 127);
        }
    }

    /// A fuzz failure's step reason is its decisive line (the failing op, the byte, the replay
    /// command), not the last op of the replay context. The captured self-test block stands in
    /// for the suite's `fuzz` test, which prints the same lines (self-tests are not judged).
    #[test]
    fn a_fuzz_failure_is_summarised_by_its_decisive_line() {
        let text = fixture("guest-selftests.ktap").replace("rig_selftest_fuzz", "fuzz");
        let k = ktap::parse(&text);
        let names: Vec<String> = k.tests.iter().map(|t| t.name.clone()).collect();
        let r = combine(&k, &[], &names, &Ending::Exited { code: 1 });
        let (v, why) = decide(&SuiteOutcome::Ran(r), None);
        assert_eq!(v, BisectVerdict::Bad);
        let at = why
            .find("fuzz: ")
            .unwrap_or_else(|| panic!("no fuzz reason in {why}"));
        let fuzz = &why[at..];
        assert!(fuzz.starts_with("fuzz: fuzz seed 42 op "), "{fuzz}");
        assert!(
            fuzz.contains("byte ") && fuzz.contains("replay: cargo xtask fuzz"),
            "{fuzz}"
        );
        assert!(!why.contains("last op"), "{why}");
    }

    #[test]
    fn finds_gits_first_bad_commit_line() {
        let out = "Bisecting: 2 revisions left\nrunning foo\n\
                   0123456789abcdef0123456789abcdef01234567 is the first bad commit\ncommit 0123\n";
        assert_eq!(
            first_bad(out).as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        assert_eq!(
            first_bad("There are only 'skip'ped commits left to test.\n"),
            None
        );
    }

    /// Every flag `bisect` takes reaches its steps: the step's parsed flags equal the run's.
    #[test]
    fn step_flags_carry_the_bisect_flags() {
        let parse = |argv: Vec<String>| crate::flags::parse_cmd(&argv);
        let crate::flags::Cmd::Bisect(b) = parse(
            [
                "bisect",
                "--kernel-src",
                "/user/tree",
                "--good",
                "a",
                "--bad",
                "b",
                "--memory",
                "3G",
                "--cpus",
                "3",
                "--accel",
                "tcg",
                "--test",
                "zeroing",
                "--splat",
                "kasan",
                "--retries",
                "2",
                "--test-timeout",
                "7",
            ]
            .map(String::from)
            .to_vec(),
        ) else {
            panic!()
        };
        let flags = step_flags(&b, Path::new("/scratch"), "t1", Path::new("/l.jsonl"));
        let crate::flags::Cmd::BisectStep(s) = parse(flags.clone()) else {
            panic!("{flags:?}")
        };
        let mut want = b.vm.clone();
        want.kernel.profile = Some(crate::stages::kernel::Profile::Debug);
        want.kernel.kernel_src = Some("/scratch".into());
        want.kernel.tree_id = Some("t1".into());
        assert_eq!(s.vm, want);
        assert_eq!(s.suite.patterns, ["zeroing"]);
        assert_eq!(s.suite.test_timeout, 7);
        assert_eq!(
            (s.verdict.retries, s.verdict.splat.as_deref()),
            (2, Some("kasan"))
        );
    }

    /// The reset `bisect` runs ends a real bisection quietly: no `error:` line, no bisect state.
    #[test]
    fn reset_ends_a_real_bisection_without_an_error_line() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let git = |args: &[&str]| {
            let out = Command::new("git")
                .arg("-C")
                .arg(d)
                .args([
                    "-c",
                    "user.name=t",
                    "-c",
                    "user.email=t@t",
                    "-c",
                    "commit.gpgsign=false",
                ])
                .args(args)
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        };
        assert!(git(&["init", "-q"]).0);
        for n in ["1", "2", "3"] {
            fs::write(d.join("f"), n).unwrap();
            assert!(git(&["add", "f"]).0);
            assert!(git(&["commit", "-q", "-m", n]).0);
        }
        assert!(git(&["bisect", "start", "HEAD", "HEAD~2"]).0);
        assert!(d.join(".git/BISECT_START").exists());
        let (ok, stderr) = git(RESET);
        assert!(ok, "git {RESET:?} failed: {stderr}");
        assert!(!stderr.lines().any(|l| l.starts_with("error:")), "{stderr}");
        assert!(!d.join(".git/BISECT_START").exists());
    }

    #[test]
    fn summary_lists_each_step_with_its_time() {
        let steps = vec![
            StepRecord {
                commit: "a".repeat(40),
                subject: "ok".into(),
                verdict: BisectVerdict::Good,
                why: "all chosen tests passed".into(),
                seconds: 90.0,
                runs: 1,
                run_verdicts: vec![],
            },
            StepRecord {
                commit: "b".repeat(40),
                subject: "broken".into(),
                verdict: BisectVerdict::Skip,
                why: "does not build".into(),
                seconds: 30.0,
                runs: 1,
                run_verdicts: vec![],
            },
        ];
        let s = summary(&steps, Some(("c", "the bad one")), Duration::from_secs(120));
        assert!(s.starts_with("first bad commit: c \"the bad one\"\n"));
        assert!(s.contains("steps: 2 in 2m00s (1m00s per step on average)"));
        assert!(s.contains("skip"));
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("steps.jsonl");
        fs::write(
            &log,
            steps
                .iter()
                .map(|r| serde_json::to_string(r).unwrap() + "\n")
                .collect::<String>(),
        )
        .unwrap();
        assert_eq!(read_steps(&log).len(), 2);
    }

    fn step(verdict: BisectVerdict, runs: &[BisectVerdict]) -> StepRecord {
        StepRecord {
            commit: "c".repeat(40),
            subject: String::new(),
            verdict,
            why: String::new(),
            seconds: 1.0,
            runs: runs.len() as u32,
            run_verdicts: runs.to_vec(),
        }
    }

    #[test]
    fn runs_make_a_step_bad_when_any_is_bad_and_skip_when_one_could_not_test() {
        use BisectVerdict::*;
        let r = |v: &[BisectVerdict]| {
            combine_runs(
                &v.iter()
                    .map(|v| (v.clone(), format!("{v:?}")))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(r(&[Good, Good, Good]).0, Good);
        let (v, why) = r(&[Good, Bad, Good]);
        assert_eq!(
            (v, why.starts_with("bad in 1 of 3 run(s)")),
            (Bad, true),
            "{why}"
        );
        assert_eq!(r(&[Bad, Skip]).0, Skip);
    }

    #[test]
    fn confidence_follows_the_reproduction_rate_and_the_runs_per_good_step() {
        use BisectVerdict::*;
        // A bug seen in every run of 2 bad steps x 2 runs: p = 5/6; two good steps of 2 runs
        // each miss it with (1/6)^2 each.
        let steps = vec![
            step(Good, &[Good, Good]),
            step(Bad, &[Bad, Bad]),
            step(Good, &[Good, Good]),
            step(Bad, &[Bad, Bad]),
        ];
        let c = confidence(&steps).unwrap();
        assert!((c.p - 5.0 / 6.0).abs() < 1e-9);
        let want = (1.0 - (1.0f64 / 6.0).powi(2)).powi(2);
        assert!((c.value - want).abs() < 1e-9, "{c:?}");
        // A bug that showed in half the runs makes one-run good steps far less trustworthy.
        let flaky = vec![step(Good, &[Good]), step(Bad, &[Bad, Good, Good, Bad])];
        let c2 = confidence(&flaky).unwrap();
        assert!(c2.value < 0.6, "{c2:?}");
        assert!(confidence(&[step(Good, &[Good])]).is_none());
        assert!(summary(&steps, Some(("c", "x")), Duration::from_secs(1)).contains("confidence: "));
    }
}
