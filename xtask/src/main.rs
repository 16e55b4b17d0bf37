//! heaprig's orchestrator. This file only parses flags and dispatches; each task lives in
//! its own module.

mod clock;
mod cmd;
mod env;
mod flags;
mod hash;
mod mutants;
mod parse;
mod plan;
mod report;
mod stages;
mod triage;

use std::process::ExitCode;

use clap::Parser;

use cmd::{bench, bisect, exec, fuzz, lint, merge, mutate, shell, test, validate};
use flags::{Cmd, Xtask};
use stages::kernel::Profile;
use stages::setup;

/// A captured log from `xtask/tests/fixtures/`, for the parser tests.
#[cfg(test)]
fn fixture(name: &str) -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn main() -> ExitCode {
    // Under `git bisect run`, 2 would blame the commit: a bisect-step that cannot even start
    // says skip (125) instead.
    let failed = if std::env::args().nth(1).as_deref() == Some("bisect-step") {
        // A panic would exit 101: "bad" to git.
        std::panic::set_hook(Box::new(|info| {
            eprintln!("heaprig: internal error in bisect-step ({info}); skipping this commit");
            std::process::exit(i32::from(bisect::SKIP));
        }));
        ExitCode::from(bisect::SKIP)
    } else {
        ExitCode::from(2)
    };
    let flags = match Xtask::try_parse() {
        Ok(f) => f,
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return failed;
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let result = env::Env::new().and_then(|env| match flags.cmd {
        Cmd::Setup => setup::ensure(&env, false)
            .and_then(|()| setup::fetch_sources(&env))
            .map(|()| ExitCode::SUCCESS),
        Cmd::Doctor => setup::doctor(&env).map(|ok| {
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            }
        }),
        Cmd::Build(k) => {
            let mut times = stages::Times::default();
            let (b, _) = stages::build(&env, &k.plan(Profile::Debug), &mut times)?;
            println!("kernel: {}", b.bzimage.display());
            println!("source: {}", b.source.display());
            println!(
                "build dir: {} (log: {})",
                b.build_dir.display(),
                b.log.display()
            );
            println!("time: {}", times.line());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Test(a) => test::run(&env, a.plan()?),
        Cmd::Merge(a) => merge::run(&env, a),
        Cmd::Lint(a) => lint::run(&env, a.files),
        Cmd::Exec(a) => exec::exec(&env, a.plan()),
        Cmd::Shell(v) => {
            let (kernel, vm) = v.plans(Profile::Debug);
            shell::shell(&env, kernel, vm)
        }
        Cmd::Parse(a) => test::parse(&env, a),
        Cmd::Bench(a) => bench::run(&env, a),
        Cmd::Fuzz(a) => {
            let seed = a.seed.unwrap_or_else(fuzz::fresh_seed);
            fuzz::run(&env, a.plan(seed))
        }
        Cmd::Validate(a) => validate::run(&env, a),
        Cmd::Bisect(a) => bisect::run(&env, a),
        // Never exits 2 (a "bad" verdict to git): rig failures are skips, see bisect.rs.
        Cmd::BisectStep(a) => Ok(bisect::step(&env, a)),
        Cmd::Mutate(a) => a
            .plan(&env.root, mutate::sample_seed(&env))
            .and_then(|plan| mutate::run(&env, plan)),
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // One paragraph: the context chain joined, no backtrace.
            eprintln!("heaprig: error: {e:#}");
            failed
        }
    }
}
