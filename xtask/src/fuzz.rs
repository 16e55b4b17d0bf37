//! `cargo xtask fuzz`: the suite's `fuzz` test alone, on the debug kernel, for as long as
//! asked, with a seed that is printed before the boot so any run can be replayed.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

use crate::env::Env;
use crate::flags::{FuzzArgs, TestArgs};
use crate::results::RunResult;
use crate::test;

/// The guest's own limits: time to set up and tear down around each heap's budget.
const SLACK_PER_HEAP: u64 = 60;
/// Heaps the debug kernel has; sizes the run limit when `--heap` is not given.
const HEAPS_IN_KERNEL: u64 = 2;

pub fn run(env: &Env, a: FuzzArgs) -> Result<ExitCode> {
    let seed = a.seed.unwrap_or_else(fresh_seed);
    let heaps = if a.heap.is_empty() {
        HEAPS_IN_KERNEL
    } else {
        a.heap.len() as u64
    };
    let mut guest_args = vec![
        "--fuzz-seconds".to_string(),
        a.seconds.to_string(),
        "--fuzz-seed".to_string(),
        seed.to_string(),
    ];
    if let Some(n) = a.ops {
        guest_args.extend(["--fuzz-ops".to_string(), n.to_string()]);
    }
    println!(
        "fuzz: seed {seed}, {}s per heap (replay: cargo xtask fuzz --seed {seed} --seconds {})",
        a.seconds, a.seconds
    );
    let per_test = a.seconds + SLACK_PER_HEAP;
    // Boot, every heap's budget, and the whole-run checks (kmemleak) after them.
    let run_timeout = a.vm.boot_timeout + per_test * heaps + 120;
    let args = TestArgs {
        vm: a.vm,
        test_timeout: per_test,
        run_timeout,
        ktap: None,
        json: None,
        junit: None,
        accept: false,
        heap: a.heap,
        guest_args,
        no_snapshots: false,
        patterns: vec!["fuzz".to_string()],
    };
    let (result, code) = test::run_and_report(env, args)?;
    for line in summary(&result) {
        println!("{line}");
    }
    Ok(code)
}

/// A seed from the clock, mixed so runs a second apart differ in every bit.
fn fresh_seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut z = nanos ^ u64::from(std::process::id()).rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The fuzzer's own report lines (seed, operations, rate) for each heap it ran on.
fn summary(r: &RunResult) -> Vec<String> {
    r.tests
        .iter()
        .filter(|t| t.name == "fuzz")
        .flat_map(|t| t.heaps.iter())
        .flat_map(|h| h.diags.iter().filter(|d| d.starts_with("fuzz: heap=")))
        .cloned()
        .collect()
}
