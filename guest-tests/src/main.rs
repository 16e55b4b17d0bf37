//! `heaprig-guest`: the test runner the rig starts inside the guest.
//!
//!   heaprig-guest list [PATTERN...]           names of the tests a run would execute
//!   heaprig-guest run [--timeout SECS] [--results DIR] [--kernel-config FILE] [PATTERN...]

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use guest_tests::bench;
use guest_tests::cases::CASES;
use guest_tests::fuzz;
use guest_tests::runner::{run, Options, Out};
use guest_tests::select::select;

const USAGE: &str = "usage: heaprig-guest list [PATTERN...]\n       heaprig-guest run [--timeout SECS] [--results DIR] [--heap NAME]... [--kernel-config FILE] [--fuzz-seconds N] [--fuzz-seed S] [--fuzz-ops N] [PATTERN...]\n       heaprig-guest bench [--quick] [--out FILE]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("list") => {
            for c in select(CASES, &args[1..]) {
                println!("{}", c.name);
            }
            ExitCode::SUCCESS
        }
        Some("bench") => {
            let quick = args.iter().any(|a| a == "--quick");
            let out = args
                .iter()
                .position(|a| a == "--out")
                .and_then(|i| args.get(i + 1));
            let r = match out {
                Some(path) => File::create(path).and_then(|mut f| bench::run(quick, &mut f)),
                None => bench::run(quick, &mut std::io::stdout()),
            };
            match r {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("heaprig-guest bench: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Some("run") => match parse_run(&args[1..]) {
            Ok(RunArgs {
                opts,
                results,
                patterns,
                fuzz,
            }) => {
                fuzz::set_config(fuzz);
                let cases = select(CASES, &patterns);
                if cases.is_empty() {
                    eprintln!("heaprig-guest: no test matches {patterns:?}");
                    return ExitCode::from(2);
                }
                let copy = match results
                    .map(|d| File::create(d.join("guest.ktap")))
                    .transpose()
                {
                    Ok(f) => f,
                    Err(e) => {
                        eprintln!(
                            "heaprig-guest: cannot create guest.ktap in the results dir: {e}"
                        );
                        return ExitCode::from(2);
                    }
                };
                let totals = run(&cases, &opts, &mut Out::new(copy));
                if totals.fail == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                }
            }
            Err(msg) => {
                eprintln!("heaprig-guest: {msg}\n{USAGE}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

struct RunArgs {
    opts: Options,
    results: Option<PathBuf>,
    patterns: Vec<String>,
    fuzz: fuzz::Config,
}

/// The fuzzer's budget inside the suite, per heap (`cargo xtask fuzz` asks for more).
const SUITE_FUZZ_SECONDS: u64 = 10;

fn parse_run(args: &[String]) -> Result<RunArgs, String> {
    let mut opts = Options {
        timeout: Duration::from_secs(60),
        heaps: Vec::new(),
    };
    let mut results = None;
    let mut patterns = Vec::new();
    let mut fuzz = fuzz::Config::from_time(Duration::from_secs(SUITE_FUZZ_SECONDS));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--timeout" => opts.timeout = Duration::from_secs(number(&mut it, "--timeout", 1)?),
            "--fuzz-seconds" => {
                fuzz.budget = Duration::from_secs(number(&mut it, "--fuzz-seconds", 1)?)
            }
            "--fuzz-seed" => fuzz.seed = number(&mut it, "--fuzz-seed", 0)?,
            "--fuzz-ops" => fuzz.max_ops = Some(number(&mut it, "--fuzz-ops", 1)?),
            "--results" => results = Some(PathBuf::from(value(&mut it, "--results")?)),
            "--heap" => opts.heaps.push(value(&mut it, "--heap")?),
            "--kernel-config" => {
                let path = value(&mut it, "--kernel-config")?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| format!("--kernel-config {path}: {e}"))?;
                guest_tests::expect::set(guest_tests::expect::parse_config(&text));
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s => patterns.push(s.to_string()),
        }
    }
    Ok(RunArgs {
        opts,
        results,
        patterns,
        fuzz,
    })
}

fn value(it: &mut std::slice::Iter<String>, what: &str) -> Result<String, String> {
    it.next().cloned().ok_or(format!("{what} needs a value"))
}

fn number(it: &mut std::slice::Iter<String>, what: &str, min: u64) -> Result<u64, String> {
    let v = value(it, what)?;
    let n: u64 = v
        .parse()
        .map_err(|_| format!("{what} takes a whole number, not {v:?}"))?;
    if n < min {
        return Err(format!("{what} must be at least {min}"));
    }
    Ok(n)
}
