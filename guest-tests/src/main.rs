//! `heaprig-guest`: the test runner the rig starts inside the guest.
//!
//!   heaprig-guest list [PATTERN...]           names of the tests a run would execute
//!   heaprig-guest run [--timeout SECS] [--results DIR] [PATTERN...]

use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use guest_tests::bench;
use guest_tests::cases::CASES;
use guest_tests::runner::{run, Out};
use guest_tests::select::select;

const USAGE: &str = "usage: heaprig-guest list [PATTERN...]\n       heaprig-guest run [--timeout SECS] [--results DIR] [PATTERN...]\n       heaprig-guest bench [--quick] [--out FILE]";

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
            Ok((timeout, results, patterns)) => {
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
                let totals = run(&cases, timeout, &mut Out::new(copy));
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

type RunArgs = (Duration, Option<PathBuf>, Vec<String>);

fn parse_run(args: &[String]) -> Result<RunArgs, String> {
    let mut timeout = Duration::from_secs(60);
    let mut results = None;
    let mut patterns = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--timeout" => {
                let v = it.next().ok_or("--timeout needs a value")?;
                let secs: u64 = v
                    .parse()
                    .map_err(|_| format!("--timeout takes whole seconds, not {v:?}"))?;
                if secs == 0 {
                    return Err("--timeout must be at least 1 second".into());
                }
                timeout = Duration::from_secs(secs);
            }
            "--results" => results = Some(PathBuf::from(it.next().ok_or("--results needs a dir")?)),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s => patterns.push(s.to_string()),
        }
    }
    Ok((timeout, results, patterns))
}
