//! `heaprig-guest`: the test runner the rig starts inside the guest.
//!
//!   heaprig-guest list [PATTERN...]           names of the tests a run would execute
//!   heaprig-guest run ...                      the suite (`heaprig_protocol::guest::RunArgs`)
//!   heaprig-guest bench ...                    benchmarks (`heaprig_protocol::guest::BenchArgs`)

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use guest_tests::bench;
use guest_tests::cases::CASES;
use guest_tests::fuzz;
use guest_tests::harness::CaseKind;
use guest_tests::runner::{run, Options, Out};
use guest_tests::select::select;
use heaprig_protocol::guest::{BenchArgs, ListArgs, RunArgs};

const USAGE: &str = "usage: heaprig-guest list [--shard I/N] [--whole-run] [--] [PATTERN...]\n       heaprig-guest run [--timeout SECS] [--results DIR] [--heap NAME]... [--kernel-config FILE] [--fuzz-seconds N] [--fuzz-seed S] [--fuzz-ops N] [--shard I/N] [--attempt N] [--] [PATTERN...]\n       heaprig-guest bench [--quick] [--out FILE]";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("list") => match ListArgs::parse(&args[1..]) {
            Ok(l) => {
                for c in select(CASES, &l.patterns, l.shard) {
                    if !l.whole_run || c.kind == CaseKind::Finally {
                        println!("{}", c.name);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(msg) => {
                eprintln!("heaprig-guest: {msg}\n{USAGE}");
                ExitCode::from(2)
            }
        },
        Some("bench") => {
            let b = match BenchArgs::parse(&args[1..]) {
                Ok(b) => b,
                Err(msg) => {
                    eprintln!("heaprig-guest: {msg}\n{USAGE}");
                    return ExitCode::from(2);
                }
            };
            let r = match &b.out {
                Some(path) => File::create(path).and_then(|mut f| bench::run(b.quick, &mut f)),
                None => bench::run(b.quick, &mut std::io::stdout()),
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
            Ok(Run {
                opts,
                results,
                patterns,
                shard,
                fuzz,
            }) => {
                fuzz::set_config(fuzz);
                let cases = select(CASES, &patterns, shard);
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

struct Run {
    opts: Options,
    results: Option<PathBuf>,
    patterns: Vec<String>,
    shard: Option<heaprig_protocol::shard::Shard>,
    fuzz: fuzz::Config,
}

/// The fuzzer's budget inside the suite, per heap (`cargo xtask fuzz` asks for more).
const SUITE_FUZZ_SECONDS: u64 = 10;

/// The host's `heaprig_protocol::guest::RunArgs`, turned into the runner's options.
fn parse_run(args: &[String]) -> Result<Run, String> {
    let a = RunArgs::parse(args)?;
    if let Some(path) = &a.kernel_config {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("--kernel-config {path}: {e}"))?;
        guest_tests::expect::set_config(&text);
    }
    let mut fuzz = fuzz::Config::from_time(Duration::from_secs(
        a.fuzz_seconds.unwrap_or(SUITE_FUZZ_SECONDS),
    ));
    if let Some(seed) = a.fuzz_seed {
        fuzz.seed = seed;
    }
    fuzz.max_ops = a.fuzz_ops;
    guest_tests::harness::set_attempt(a.attempt);
    Ok(Run {
        opts: Options {
            timeout: Duration::from_secs(a.timeout),
            heaps: a.heaps,
        },
        results: a.results.map(PathBuf::from),
        patterns: a.patterns,
        shard: a.shard,
        fuzz,
    })
}
