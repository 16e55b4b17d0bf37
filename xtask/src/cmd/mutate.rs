//! `cargo xtask mutate`: how many realistic bugs the suite catches. Stages: corpus (checked
//! before anything is built) → the unmutated suite → each mutant (its edit made in the
//! prepared tree, an incremental build, the same suite) → compare with the unmutated run →
//! report a verdict per mutant and a score per target. The tree is restored and rebuilt last.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::cmd::results_cache::ResultCache;
use crate::cmd::tree::{self, SuiteOutcome};
use crate::env::Env;
use crate::mutants::{Case, Expect, Target};
use crate::parse::results::RunResult;
use crate::plan::{MutatePlan, TestPlan};
use crate::report::compare;
use crate::report::fmt_duration;
use crate::stages::{self, StageError, Times};

/// What the suite did with one mutant.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Caught: what differed from the unmutated run (failing tests, splats, changed facts).
    Killed(Vec<String>),
    /// The kernel with the mutant never ran the suite: caught by the boot itself.
    NoBoot(String),
    /// Nothing differed.
    Survived,
    /// The mutant does not compile: the corpus is out of date.
    NoBuild(String),
}

impl Outcome {
    fn caught(&self) -> bool {
        matches!(self, Outcome::Killed(_) | Outcome::NoBoot(_))
    }
}

/// Whether an outcome is what the corpus says, and if not, what to do about it.
pub fn agreement(expect: &Expect, outcome: &Outcome) -> Result<(), String> {
    match (expect, outcome) {
        (_, Outcome::NoBuild(_)) => Err("does not build: fix its edit in the corpus".into()),
        (Expect::Killed, o) if o.caught() => Ok(()),
        (Expect::Killed, _) => Err("unexplained: a bug the suite misses".into()),
        (Expect::Gap(_) | Expect::Equivalent(_), Outcome::Survived) => Ok(()),
        (Expect::Gap(_), _) => {
            Err("caught, though the corpus calls it a gap: change it to expect = \"killed\"".into())
        }
        (Expect::Equivalent(_), _) => {
            Err("caught, so it is not equivalent: fix the corpus or the suite's flake".into())
        }
    }
}

/// What differed: one line per newly failing test, splat, changed fact or rig problem.
fn caught_by(base: &RunResult, mutant: &RunResult) -> Vec<String> {
    let d = compare::diff(base, mutant);
    let mut by: Vec<String> = d
        .newly_failing
        .iter()
        .map(|(name, reasons)| match reasons.first() {
            Some(r) => format!("{name}: {}", first_line(r, 160)),
            None => name.clone(),
        })
        .collect();
    by.extend(d.new_splats.iter().map(|s| format!("splat: {s}")));
    by.extend(
        d.snapshot_changes
            .iter()
            .map(|(t, facts)| format!("{t} (facts changed: {})", facts.join("; "))),
    );
    by.extend(d.new_problems.iter().map(|p| format!("rig: {p}")));
    by
}

fn first_line(s: &str, max: usize) -> String {
    let l = s.lines().next().unwrap_or_default();
    match l.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &l[..i]),
        None => l.to_string(),
    }
}

/// One mutant's run.
pub struct Row {
    pub case: Case,
    pub outcome: Outcome,
    pub time: Duration,
}

pub fn run(env: &Env, plan: MutatePlan) -> Result<ExitCode> {
    let started = Instant::now();
    let out_root = env.root.join("target/heaprig/mutate");
    let _ = fs::remove_dir_all(&out_root);
    fs::create_dir_all(&out_root)?;
    let series = plan.suite.kernel.series;
    println!(
        "mutate: {} mutant(s) on Linux {series}: {}",
        plan.cases.len(),
        plan.cases
            .iter()
            .map(|c| c.mutation.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );

    println!("\n== mutate: unmutated ==");
    let base = match unmutated(env, &plan.suite, &out_root.join("unmutated"))? {
        SuiteOutcome::Ran(r) => r,
        SuiteOutcome::NoBuild(e) | SuiteOutcome::NoBoot(e) => bail!(
            "the unmutated kernel could not be tested, so no mutant can be judged:\n{}",
            e.lines().take(30).collect::<Vec<_>>().join("\n")
        ),
    };

    let mut rows = Vec::new();
    for (i, case) in plan.cases.iter().enumerate() {
        let m = &case.mutation;
        println!(
            "\n== mutate {}/{}: {} ({}, {}) ==",
            i + 1,
            plan.cases.len(),
            m.name,
            case.target,
            case.class
        );
        let mut p = plan.suite.clone();
        p.kernel.mutation = Some(m.clone());
        let t = Instant::now();
        let outcome = match side(env, &p, &out_root.join(&m.name))?.0 {
            SuiteOutcome::Ran(r) => {
                let by = caught_by(&base, &r);
                if by.is_empty() {
                    Outcome::Survived
                } else {
                    Outcome::Killed(by)
                }
            }
            SuiteOutcome::NoBoot(e) => Outcome::NoBoot(first_line(&e, 200)),
            SuiteOutcome::NoBuild(e) => Outcome::NoBuild(first_line(&e, 200)),
        };
        println!("mutate: {}: {}", m.name, word(&outcome));
        rows.push(Row {
            case: case.clone(),
            outcome,
            time: t.elapsed(),
        });
    }

    // Put the tree back and rebuild it, so the next build starts from the real source.
    println!("\n== mutate: restoring the unmutated kernel ==");
    let mut times = Times::default();
    if let Err(e) = stages::build(env, &plan.suite.kernel, &mut times) {
        bail!("the unmutated kernel did not rebuild after the mutants: {e}");
    }
    println!("time: {}", times.line());

    let md = report(series.name(), &rows, started.elapsed());
    let path = out_root.join("report.md");
    fs::write(&path, &md)?;
    if let Some(p) = &plan.report {
        fs::write(p, &md)?;
    }
    println!("\n{md}\nreport: {}", path.display());
    let all_agree = rows
        .iter()
        .all(|r| agreement(&r.case.expect, &r.outcome).is_ok());
    Ok(if all_agree {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The seed of `--sample`: the rig's version, so each commit tries other mutants.
pub fn sample_seed(env: &Env) -> u64 {
    let v = crate::hash::sha256_hex(tree::rig_version(env).as_bytes());
    u64::from_str_radix(&v[..15], 16).unwrap_or(0)
}

/// The suite on one plan, artefacts in `out`.
/// The unmutated suite: the result `cargo xtask test` stored for this very kernel and suite
/// when there is one (CI runs it just before), else a run of its own, stored likewise.
fn unmutated(env: &Env, plan: &TestPlan, out: &Path) -> Result<SuiteOutcome> {
    let mut times = Times::default();
    let p = match stages::prepare(env, &plan.kernel, &plan.vm, &mut times) {
        Ok(p) => p,
        Err(StageError::NoBuild(e)) => return Ok(SuiteOutcome::NoBuild(format!("{e:#}"))),
        Err(StageError::Rig(e)) => return Err(e),
    };
    let cache = ResultCache::for_suite(env, &p, plan);
    if let Some(r) = cache.load() {
        println!(
            "mutate: the unmutated result of an earlier run of this kernel and suite ({})",
            cache.dir.display()
        );
        return Ok(SuiteOutcome::Ran(r));
    }
    let (o, _) = side(env, plan, out)?;
    if matches!(o, SuiteOutcome::Ran(_)) {
        cache.store(out)?;
    }
    Ok(o)
}

fn side(env: &Env, plan: &TestPlan, out: &Path) -> Result<(SuiteOutcome, Times)> {
    let (o, times) = tree::run_suite(env, plan, out)?;
    println!("time: {}", times.line());
    Ok((o, times))
}

fn word(o: &Outcome) -> &'static str {
    match o {
        Outcome::Killed(_) => "killed",
        Outcome::NoBoot(_) => "killed (did not boot)",
        Outcome::Survived => "SURVIVED",
        Outcome::NoBuild(_) => "DOES NOT BUILD",
    }
}

/// Caught mutants over mutants that are not equivalent, per target.
pub fn scores(rows: &[Row]) -> BTreeMap<Target, (usize, usize)> {
    let mut s: BTreeMap<Target, (usize, usize)> = BTreeMap::new();
    for r in rows {
        if matches!(r.case.expect, Expect::Equivalent(_))
            || matches!(r.outcome, Outcome::NoBuild(_))
        {
            continue;
        }
        let e = s.entry(r.case.target).or_default();
        e.1 += 1;
        e.0 += usize::from(r.outcome.caught());
    }
    s
}

pub fn report(kernel: &str, rows: &[Row], took: Duration) -> String {
    let mut md = format!(
        "# cargo xtask mutate: Linux {kernel}, {} mutant(s), {}\n\n",
        rows.len(),
        fmt_duration(took)
    );
    md.push_str("Mutation score (caught / mutants that are not equivalent):\n\n");
    for (target, (caught, n)) in scores(rows) {
        let _ = writeln!(md, "- {target}: {caught}/{n}");
    }
    md.push_str("\n| mutant | target | class | verdict | caught by, or why it survives | time |\n");
    md.push_str("| --- | --- | --- | --- | --- | --- |\n");
    for r in rows {
        let why = match (&r.outcome, &r.case.expect) {
            (Outcome::Killed(by), _) => by
                .iter()
                .take(4)
                .map(|b| b.replace('|', "\\|"))
                .collect::<Vec<_>>()
                .join("<br>"),
            (Outcome::NoBoot(e) | Outcome::NoBuild(e), _) => e.replace('|', "\\|"),
            (Outcome::Survived, Expect::Gap(why)) => format!("gap: {why}"),
            (Outcome::Survived, Expect::Equivalent(why)) => format!("equivalent: {why}"),
            (Outcome::Survived, Expect::Killed) => "nothing differed".into(),
        };
        let verdict = match agreement(&r.case.expect, &r.outcome) {
            Ok(()) => word(&r.outcome).to_string(),
            Err(problem) => format!("**{}: {problem}**", word(&r.outcome)),
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {verdict} | {why} | {} |",
            r.case.mutation.name,
            r.case.target,
            r.case.class,
            fmt_duration(r.time)
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Mutation;

    fn row(name: &str, target: Target, expect: Expect, outcome: Outcome) -> Row {
        Row {
            case: Case {
                mutation: Mutation {
                    name: name.into(),
                    file: "f".into(),
                    from: "a".into(),
                    to: "b".into(),
                },
                target,
                class: "c".into(),
                kernels: vec![],
                expect,
            },
            outcome,
            time: Duration::from_secs(1),
        }
    }

    #[test]
    fn agreement_table() {
        let killed = Outcome::Killed(vec!["t".into()]);
        let gap = Expect::Gap("why".into());
        let eq = Expect::Equivalent("why".into());
        let cases = [
            (Expect::Killed, killed.clone(), true),
            (Expect::Killed, Outcome::NoBoot("panic".into()), true),
            (Expect::Killed, Outcome::Survived, false),
            (gap.clone(), Outcome::Survived, true),
            (gap, killed.clone(), false),
            (eq.clone(), Outcome::Survived, true),
            (eq, killed, false),
            (Expect::Killed, Outcome::NoBuild("error".into()), false),
        ];
        for (expect, outcome, ok) in cases {
            assert_eq!(
                agreement(&expect, &outcome).is_ok(),
                ok,
                "{expect:?} {outcome:?}"
            );
        }
    }

    #[test]
    fn scores_skip_equivalents_and_report_marks_disagreements() {
        let rows = [
            row(
                "a",
                Target::RustSystem,
                Expect::Killed,
                Outcome::Killed(vec!["x [rust_system]: y".into()]),
            ),
            row("b", Target::RustSystem, Expect::Killed, Outcome::Survived),
            row(
                "c",
                Target::RustSystem,
                Expect::Equivalent("same".into()),
                Outcome::Survived,
            ),
            row(
                "d",
                Target::System,
                Expect::Gap("blind".into()),
                Outcome::Survived,
            ),
        ];
        let s = scores(&rows);
        assert_eq!(s[&Target::RustSystem], (1, 2));
        assert_eq!(s[&Target::System], (0, 1));
        let md = report("6.12", &rows, Duration::from_secs(60));
        assert!(md.contains("- rust_system: 1/2"), "{md}");
        assert!(md.contains("**SURVIVED: unexplained"), "{md}");
        assert!(md.contains("gap: blind"), "{md}");
        assert!(md.contains("x [rust_system]: y"), "{md}");
    }
}
