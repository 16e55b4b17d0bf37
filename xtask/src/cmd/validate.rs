//! `cargo xtask validate`: apply a series in a scratch clone, run the suite on the base
//! (cached by commit + config + rig version) and on the patched tree, report the difference.
//! Stages: inputs → apply → base → patched (→ each commit) → compare → report.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use xshell::{cmd, Shell};

use crate::cmd::bench;
use crate::cmd::results_cache::ResultCache;
use crate::cmd::test;
use crate::cmd::tree::{self, short, Repo, Scratch, SuiteOutcome};
use crate::env::Env;
use crate::flags::ValidateArgs;
use crate::parse::results::RunResult;
use crate::plan::{BenchPlan, KernelPlan, TestPlan};
use crate::report::compare::{self, Diff};
use crate::report::fmt_duration;
use crate::stages::kernel::Profile;
use crate::stages::series::Series;
use crate::stages::vm::Ending;

/// What the user passed as PATCH.
#[derive(Debug, PartialEq)]
pub enum Input {
    /// `git format-patch` output or an mbox of a series (`b4 am`, a mail client).
    Mbox(PathBuf),
    /// A plain diff (`diff -u`, `git diff`).
    Diff(PathBuf),
    /// `A..B` in the user's tree.
    Range(String, String),
}

/// Decides what PATCH is, from its content or its form; fails with what it expected.
pub fn classify(arg: &str) -> Result<Input> {
    let p = Path::new(arg);
    if p.is_file() {
        let text = fs::read(p).with_context(|| format!("reading {arg}"))?;
        let text = String::from_utf8_lossy(&text[..text.len().min(64 * 1024)]);
        if text.starts_with("From ") || (text.contains("\nSubject: ") && text.contains("From: ")) {
            return Ok(Input::Mbox(p.to_path_buf()));
        }
        if text
            .lines()
            .any(|l| l.starts_with("diff --git ") || l.starts_with("--- "))
        {
            return Ok(Input::Diff(p.to_path_buf()));
        }
        bail!(
            "{arg} is neither a patch (no `diff --git` or `---` line) nor a mail (no `From `, \
             `From:` and `Subject:`); pass `git format-patch` output, an mbox, a diff, or a \
             commit range A..B"
        );
    }
    if let Some((a, b)) = arg.split_once("..") {
        if !a.is_empty() && !b.is_empty() && !b.starts_with('.') {
            return Ok(Input::Range(a.to_string(), b.to_string()));
        }
    }
    bail!(
        "PATCH {arg:?} is not a file and not a commit range A..B; pass patch files, an mbox, \
         or a range of commits in --kernel-src"
    )
}

/// Applies each input on top of what the scratch has checked out. On failure: which patch,
/// and git's own words for which hunk did not apply and why.
pub fn apply(sh: &Shell, repo: &Repo, s: &Scratch, inputs: &[Input]) -> Result<()> {
    for input in inputs {
        let (ok, out, what) = match input {
            Input::Mbox(p) => {
                let file = p.canonicalize()?;
                let (ok, out) = s.git_try(
                    sh,
                    // A cover letter (lore's t.mbox, 0000-cover-letter.patch) is empty.
                    &["am", "--quiet", "--empty=drop", &file.display().to_string()],
                )?;
                if !ok {
                    let _ = s.git_try(sh, &["am", "--abort"]);
                }
                (ok, out, p.display().to_string())
            }
            Input::Diff(p) => {
                let file = p.canonicalize()?;
                let f = file.display().to_string();
                let (mut ok, mut out) = s.git_try(sh, &["apply", "--index", &f])?;
                if ok {
                    let name = p.file_name().unwrap_or_default().to_string_lossy();
                    let msg = format!("validate: {name}");
                    (ok, out) =
                        s.git_try(sh, &["commit", "--quiet", "--allow-empty", "-m", &msg])?;
                }
                (ok, out, p.display().to_string())
            }
            Input::Range(a, b) => {
                let (a, b) = (repo.resolve(sh, a)?, repo.resolve(sh, b)?);
                let dir = &repo.dir;
                let range = format!("{a}..{b}");
                let merges = cmd!(sh, "git -C {dir} rev-list --merges {range}")
                    .quiet()
                    .read()?;
                if !merges.is_empty() {
                    bail!(
                        "the range {range} contains merge commits ({}); validate takes a linear \
                         series. Pass the merge's parent range, or the patches as files",
                        merges.lines().next().unwrap_or_default()
                    );
                }
                let here = s.git(sh, &["rev-parse", "HEAD"])?;
                if here == a {
                    // The series' own commits, unchanged: nothing to apply.
                    s.git(sh, &["checkout", "--quiet", "--detach", &b])?;
                    continue;
                }
                let list = cmd!(sh, "git -C {dir} rev-list --reverse {range}")
                    .quiet()
                    .read()?;
                let mut res = (true, String::new());
                for c in list.lines() {
                    res = s.git_try(sh, &["cherry-pick", "--empty=keep", "--allow-empty", c])?;
                    if !res.0 {
                        let _ = s.git_try(sh, &["cherry-pick", "--abort"]);
                        res.1 = format!("commit {c}:\n{}", res.1);
                        break;
                    }
                }
                (res.0, res.1, range)
            }
        };
        if !ok {
            bail!(
                "{what} does not apply to the base. git says:\n{}\nRebase the series onto the \
                 base (or pass the base it was written for with --base).",
                out.trim()
            );
        }
    }
    Ok(())
}

/// One side of the comparison, as the report shows it.
struct Side {
    label: String,
    outcome: SuiteOutcome,
    time: Duration,
    cached: bool,
}

fn run_side(
    env: &Env,
    plan: &TestPlan,
    s: &Scratch,
    rev: &str,
    label: &str,
    out: &Path,
) -> Result<Side> {
    s.checkout(&env.sh, rev)?;
    println!("\n== validate: {label} ==");
    let t = Instant::now();
    let (outcome, times) = tree::run_suite(env, plan, out)?;
    println!("time: {}", times.line());
    Ok(Side {
        label: label.to_string(),
        outcome,
        time: t.elapsed(),
        cached: false,
    })
}

/// The verdict on one patched side against the base.
enum Judgement {
    Clean(Diff),
    Regressed(Diff),
    NoBuild(String),
    NoBoot(String),
}

fn judge(base: &RunResult, side: &SuiteOutcome) -> Judgement {
    match side {
        SuiteOutcome::NoBuild(e) => Judgement::NoBuild(e.clone()),
        SuiteOutcome::NoBoot(e) => Judgement::NoBoot(e.clone()),
        SuiteOutcome::Ran(r) => {
            let d = compare::diff(base, r);
            if d.regressed() {
                Judgement::Regressed(d)
            } else {
                Judgement::Clean(d)
            }
        }
    }
}

impl Judgement {
    fn bad(&self) -> bool {
        !matches!(self, Judgement::Clean(_))
    }

    fn word(&self) -> &'static str {
        match self {
            Judgement::Clean(_) => "no regressions",
            Judgement::Regressed(_) => "REGRESSED",
            Judgement::NoBuild(_) => "DOES NOT BUILD",
            Judgement::NoBoot(_) => "DOES NOT BOOT",
        }
    }
}

fn first_lines(text: &str, n: usize) -> String {
    text.lines().take(n).collect::<Vec<_>>().join("\n")
}

pub fn run(env: &Env, a: ValidateArgs) -> Result<ExitCode> {
    let sh = &env.sh;
    let repo = Repo::open(sh, a.vm.kernel.kernel_src.as_deref(), "validate")?;
    let inputs: Vec<Input> = a
        .patches
        .iter()
        .map(|p| classify(p))
        .collect::<Result<_>>()?;
    let base_rev = match (&a.base, inputs.first()) {
        (Some(b), _) => b.clone(),
        (None, Some(Input::Range(from, _))) => from.clone(),
        (None, _) => "HEAD".to_string(),
    };
    let base = repo.resolve(sh, &base_rev)?;
    let base_subject = tree::subject(sh, &repo.dir, &base);
    let started = Instant::now();
    // No stale report survives a run that stops early.
    let out_root = env.root.join("target/heaprig/validate");
    let _ = fs::remove_dir_all(&out_root);
    fs::create_dir_all(&out_root)?;
    let scratch = Scratch::new(env, &repo, repo.tree_id(sh, &base)?)?;
    println!(
        "validate: base {} (\"{base_subject}\"), scratch tree {}",
        short(&base),
        scratch.path().display()
    );
    let result = validate_in(
        env,
        &a,
        &repo,
        &scratch,
        &inputs,
        (&base, &base_subject),
        &out_root,
        started,
    );
    // Kept on failure too: a series that does not apply is when the tree is worth a look.
    if a.keep {
        println!("scratch tree kept: {}", scratch.keep().display());
    }
    result
}

#[allow(clippy::too_many_arguments)]
fn validate_in(
    env: &Env,
    a: &ValidateArgs,
    repo: &Repo,
    scratch: &Scratch,
    inputs: &[Input],
    (base, base_subject): (&str, &str),
    out_root: &Path,
    started: Instant,
) -> Result<ExitCode> {
    let sh = &env.sh;
    let base = base.to_string();
    scratch.checkout(sh, &base)?;
    apply(sh, repo, scratch, inputs)?;
    let range = format!("{base}..HEAD");
    let series: Vec<(String, String)> = scratch
        .git(sh, &["log", "--reverse", "--format=%H %s", &range])?
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(h, s)| (h.to_string(), s.to_string()))
        .collect();
    let Some((tip, _)) = series.last().cloned() else {
        bail!(
            "the series is empty on top of {}: nothing to validate",
            short(&base)
        );
    };
    println!("validate: {} commit(s) applied:", series.len());
    for (h, s) in &series {
        println!("  {} {s}", short(h));
    }

    let plan = crate::flags::tree_plan(&a.vm, &a.suite, scratch.path(), Some(&scratch.tree_id));
    // Base: from the cache, or run once and cached.
    let key = tree::result_key(
        env,
        &base,
        plan.kernel.profile,
        &plan.vm,
        &plan.suite.cache_part(),
    );
    let cache = ResultCache::new(env, &key);
    let base_side = match cache.load() {
        Some(r) => {
            println!(
                "\n== validate: base {} (cached result, {}) ==",
                short(&base),
                cache.dir.display()
            );
            Side {
                label: "base".into(),
                outcome: SuiteOutcome::Ran(r),
                time: Duration::ZERO,
                cached: true,
            }
        }
        None => {
            let out = out_root.join("base");
            let side = run_side(env, &plan, scratch, &base, "base", &out)?;
            // Only a complete run is worth reusing; a flaky or cut-short one is not cached.
            if let SuiteOutcome::Ran(r) = &side.outcome {
                let complete = matches!(r.ending, Ending::Exited { code: 0 | 1 })
                    && r.not_run.is_empty()
                    && r.problems.is_empty();
                if complete {
                    cache.store(&out)?;
                }
            }
            side
        }
    };
    let base_result = match &base_side.outcome {
        SuiteOutcome::Ran(r) => r,
        SuiteOutcome::NoBuild(e) | SuiteOutcome::NoBoot(e) => bail!(
            "the base {} could not be tested, so nothing can be said about the patches:\n{}",
            short(&base),
            first_lines(e, 30)
        ),
    };

    let patched = run_side(
        env,
        &plan,
        scratch,
        &tip,
        "patched",
        &out_root.join("patched"),
    )?;
    let verdict = judge(base_result, &patched.outcome);

    // --each: every commit on its own; the tip's run is the patched one.
    let mut each: Vec<(String, String, Judgement, Duration)> = Vec::new();
    if a.each {
        for (i, (h, subj)) in series.iter().enumerate() {
            if *h == tip {
                each.push((
                    h.clone(),
                    subj.clone(),
                    judge(base_result, &patched.outcome),
                    patched.time,
                ));
                continue;
            }
            let label = format!("commit {}/{}", i + 1, series.len());
            let out = out_root.join(format!("commit-{}", i + 1));
            let side = run_side(env, &plan, scratch, h, &label, &out)?;
            each.push((
                h.clone(),
                subj.clone(),
                judge(base_result, &side.outcome),
                side.time,
            ));
        }
    }

    let bench = if a.bench {
        Some(bench_both(env, a, scratch, &base, &tip, out_root))
    } else {
        None
    };

    let mut md = report(
        &base,
        base_subject,
        &series,
        &base_side,
        &patched,
        &verdict,
        &each,
        a,
        started.elapsed(),
    );
    match bench {
        Some(Ok(lines)) if lines.is_empty() => {
            md.push_str("\nBenchmarks (perf kernel): no median moved beyond the runs' own noise.\n")
        }
        Some(Ok(lines)) => {
            md.push_str("\nBenchmark medians that moved beyond noise (perf kernel; reported, not a pass/fail):\n");
            for l in lines {
                let _ = writeln!(md, "- {l}");
            }
        }
        Some(Err(e)) => {
            let _ = writeln!(md, "\nBenchmarks: not compared: {e:#}");
        }
        None => {}
    }
    if let Some(k) = a.kcidb.plan() {
        let base_dir = if base_side.cached {
            cache.dir.clone()
        } else {
            out_root.join("base")
        };
        let sides = [
            (base_dir, base_result.clone(), None),
            (
                out_root.join("patched"),
                match &patched.outcome {
                    SuiteOutcome::Ran(r) => r.clone(),
                    _ => base_result.clone(),
                },
                Some(patchset_hash(sh, scratch, &series)?),
            ),
        ];
        write_kcidb(env, &k, &base, &sides, &patched.outcome)?;
    }
    let md_path = out_root.join("report.md");
    fs::write(&md_path, &md)?;
    if let Some(p) = &a.report {
        fs::write(p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    println!("\n{md}\nreport: {}", md_path.display());
    let any_bad = verdict.bad() || each.iter().any(|(_, _, j, _)| j.bad());
    Ok(if any_bad {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// KCIDB's patchset hash: sha256 over the newline-terminated sha256 of each patch, in order.
fn patchset_hash(sh: &xshell::Shell, s: &Scratch, series: &[(String, String)]) -> Result<String> {
    let mut all = String::new();
    for (h, _) in series {
        let patch = s.git(sh, &["format-patch", "--stdout", "-1", h])?;
        all.push_str(&crate::hash::sha256_hex(patch.as_bytes()));
        all.push('\n');
    }
    Ok(crate::hash::sha256_hex(all.as_bytes()))
}

/// The base and the patched run as two checkouts of one commit (the patched one with the
/// series' patchset hash), each with its build and tests. A patched tree that did not build
/// is a failed build with the error in its log excerpt.
fn write_kcidb(
    env: &Env,
    k: &crate::plan::KcidbPlan,
    base: &str,
    sides: &[(PathBuf, RunResult, Option<String>)],
    patched: &SuiteOutcome,
) -> Result<()> {
    let mut provs = Vec::new();
    for (dir, _, patchset) in sides {
        // A patched tree that did not build or boot saved no report: its build is the base's.
        let saved = match test::RunInfo::read(&dir.join("results.json")) {
            Ok(info) => info.provenance,
            Err(_) if !provs.is_empty() => provs.first().cloned(),
            Err(e) => return Err(e),
        };
        let Some(mut prov) = saved else {
            bail!(
                "{} carries no provenance (an older cached base): cannot write KCIDB; clear {}",
                dir.display(),
                dir.display()
            );
        };
        prov.source = format!("git:{base}");
        prov.patchset_hash = patchset.clone();
        provs.push(prov);
    }
    let mut b = crate::report::kcidb::Builder::new(k, &provs[0]);
    for ((_, r, _), prov) in sides.iter().zip(&provs) {
        let (ok, log) = match (prov.patchset_hash.is_some(), patched) {
            (true, SuiteOutcome::NoBuild(e)) => (false, Some(e.as_str())),
            _ => (true, None),
        };
        let build = b.build(prov, ok, log);
        if ok {
            b.run(&build, prov, r);
        }
    }
    crate::report::kcidb::write(env, &b.finish(), &k.path)
}

/// `bench` on the base (cached like the suite's result) and on the patched tree; the
/// medians that moved beyond noise.
fn bench_both(
    env: &Env,
    a: &ValidateArgs,
    scratch: &Scratch,
    base: &str,
    tip: &str,
    out_root: &Path,
) -> Result<Vec<String>> {
    let plan = BenchPlan {
        kcidb: None,
        kernel: KernelPlan {
            profile: Profile::Perf,
            // The scratch tree's own version picks its kernel support.
            series: Series::DEFAULT,
            src: Some(scratch.path().to_path_buf()),
            tree_id: Some(scratch.tree_id.clone()),
            mutation: None,
        },
        vm: a.vm.plan(Profile::Perf),
        quick: false,
        run_timeout: Duration::from_secs(3600),
    };
    let key = tree::result_key(env, base, Profile::Perf, &plan.vm, &plan.cache_part());
    let cache = ResultCache::new(env, &key);
    let cached = bench::Measured::read(&cache.dir.join("bench.json"))
        .ok()
        .map(|m| m.rows);
    let _lock = tree::TreeLock::take(env, &scratch.tree_id)?;
    let base_rows = match cached {
        Some(r) => {
            println!("\n== validate: base benchmarks (cached) ==");
            r
        }
        None => {
            scratch.checkout(&env.sh, base)?;
            println!("\n== validate: base benchmarks ==");
            let dir = out_root.join("bench-base");
            let m = bench::measure(env, &plan, &dir)?;
            fs::create_dir_all(&cache.dir)?;
            fs::copy(dir.join("bench.json"), cache.dir.join("bench.json"))?;
            m.rows
        }
    };
    scratch.checkout(&env.sh, tip)?;
    println!("\n== validate: patched benchmarks ==");
    let m = bench::measure(env, &plan, &out_root.join("bench-patched"))?;
    Ok(bench::changes(&base_rows, &m.rows))
}

#[allow(clippy::too_many_arguments)]
fn report(
    base: &str,
    base_subject: &str,
    series: &[(String, String)],
    base_side: &Side,
    patched: &Side,
    verdict: &Judgement,
    each: &[(String, String, Judgement, Duration)],
    a: &ValidateArgs,
    total: Duration,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## heaprig validate: {}\n\n{} patch(es) on {} (\"{base_subject}\"), {} kernel, tests: {}.",
        verdict.word(),
        series.len(),
        short(base),
        a.vm.kernel.profile().name(),
        if a.suite.patterns.is_empty() {
            "all".to_string()
        } else {
            a.suite.patterns.join(" ")
        }
    );
    let _ = writeln!(s);
    for (h, subj) in series {
        let _ = writeln!(s, "- {} {subj}", short(h));
    }
    match verdict {
        Judgement::Clean(d) | Judgement::Regressed(d) => s.push_str(&compare::render(d)),
        Judgement::NoBuild(e) => {
            let _ = writeln!(
                s,
                "\nThe patched tree does not build:\n\n```\n{}\n```",
                first_lines(e, 20)
            );
        }
        Judgement::NoBoot(e) => {
            let _ = writeln!(
                s,
                "\nThe patched kernel does not boot:\n\n```\n{}\n```",
                first_lines(e, 20)
            );
        }
    }
    if !each.is_empty() {
        let _ = writeln!(s, "\nEach commit on its own:");
        for (h, subj, j, t) in each {
            let _ = writeln!(
                s,
                "- {} {subj}: {} ({})",
                short(h),
                j.word(),
                fmt_duration(*t)
            );
        }
        if let Some((h, subj, j, _)) = each.iter().find(|(_, _, j, _)| j.bad()) {
            let _ = writeln!(
                s,
                "\nFirst failing commit: {} {subj} ({})",
                short(h),
                j.word()
            );
            if let Judgement::Regressed(d) = j {
                s.push_str(&compare::render(d));
            }
        }
    }
    let side = |x: &Side| {
        if x.cached {
            format!("{} cached", x.label)
        } else {
            format!("{} {}", x.label, fmt_duration(x.time))
        }
    };
    let _ = writeln!(
        s,
        "\nTime: {}, {}, total {}.",
        side(base_side),
        side(patched),
        fmt_duration(total)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_patches_by_content_and_ranges_by_form() {
        let dir = tempfile::tempdir().unwrap();
        let fp = dir.path().join("0001-x.patch");
        fs::write(
            &fp,
            "From 1234 Mon Sep 17 00:00:00 2001\nFrom: A <a@b>\nSubject: [PATCH] x\n\n---\n",
        )
        .unwrap();
        assert_eq!(
            classify(fp.to_str().unwrap()).unwrap(),
            Input::Mbox(fp.clone())
        );
        let d = dir.path().join("x.diff");
        fs::write(&d, "--- a/f\n+++ b/f\n@@ -1 +1 @@\n-a\n+b\n").unwrap();
        assert_eq!(
            classify(d.to_str().unwrap()).unwrap(),
            Input::Diff(d.clone())
        );
        assert_eq!(
            classify("v6.12..topic").unwrap(),
            Input::Range("v6.12".into(), "topic".into())
        );
        let junk = dir.path().join("notes.txt");
        fs::write(&junk, "hello\n").unwrap();
        let e = classify(junk.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("neither a patch"), "{e}");
        let e = classify("no-such-file").unwrap_err().to_string();
        assert!(e.contains("not a file and not a commit range"), "{e}");
        assert!(classify("a...b").is_err());
    }

    /// A tiny git repository shaped like a kernel tree (no build is reached).
    fn fake_tree(dir: &Path) {
        let sh = Shell::new().unwrap();
        fs::create_dir_all(dir.join("arch/x86")).unwrap();
        fs::write(dir.join("Makefile"), "VERSION = 6\nPATCHLEVEL = 12\n").unwrap();
        fs::write(dir.join("Kconfig"), "mainmenu \"x\"\n").unwrap();
        fs::write(dir.join("arch/x86/Kconfig"), "config X86\n").unwrap();
        fs::write(dir.join("a.c"), "int a;\nint b;\nint c;\n").unwrap();
        let id = ["-c", "user.name=t", "-c", "user.email=t@t"];
        cmd!(sh, "git -C {dir} init --quiet").run().unwrap();
        cmd!(sh, "git -C {dir} add -A").run().unwrap();
        cmd!(sh, "git -C {dir} {id...} commit --quiet -m base")
            .run()
            .unwrap();
    }

    /// The user's checkout is untouched and a patch that does not apply is named with the
    /// file and line git could not match.
    #[test]
    fn a_patch_that_does_not_apply_names_the_hunk_and_leaves_the_tree_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("linux");
        fake_tree(&tree);
        let env = Env {
            sh: Shell::new().unwrap(),
            root: Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap()
                .into(),
            cache: tmp.path().join("cache"),
        };
        let repo = Repo::open(&env.sh, Some(&tree), "validate").unwrap();
        let s = Scratch::new(&env, &repo, "t".into()).unwrap();
        let base = repo.resolve(&env.sh, "HEAD").unwrap();
        s.checkout(&env.sh, &base).unwrap();
        let good = tmp.path().join("good.diff");
        fs::write(
            &good,
            "--- a/a.c\n+++ b/a.c\n@@ -1,3 +1,3 @@\n int a;\n-int b;\n+long b;\n int c;\n",
        )
        .unwrap();
        let bad = tmp.path().join("bad.patch");
        fs::write(
            &bad,
            "From 0 Mon Sep 17 00:00:00 2001\nFrom: T <t@t>\nSubject: [PATCH] bad\n\n---\n\
             diff --git a/a.c b/a.c\n--- a/a.c\n+++ b/a.c\n@@ -1,3 +1,3 @@\n int a;\n-int x;\n+int y;\n int c;\n",
        )
        .unwrap();
        apply(&env.sh, &repo, &s, &[Input::Diff(good.clone())]).unwrap();
        let e = format!(
            "{:#}",
            apply(&env.sh, &repo, &s, &[Input::Mbox(bad.clone())]).unwrap_err()
        );
        assert!(e.contains("bad.patch does not apply"), "{e}");
        assert!(e.contains("a.c:1"), "git's hunk location is missing: {e}");
        assert_eq!(
            fs::read_to_string(tree.join("a.c")).unwrap(),
            "int a;\nint b;\nint c;\n"
        );
        let sh = Shell::new().unwrap();
        let log = cmd!(sh, "git -C {tree} log --format=%s").read().unwrap();
        assert_eq!(log, "base", "the user's history changed");
    }
}
