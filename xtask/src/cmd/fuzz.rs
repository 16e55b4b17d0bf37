//! `cargo xtask fuzz`: the suite's `fuzz` test alone, on the debug kernel, for as long as
//! asked, with a seed that is printed before the boot so any run can be replayed.

use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;

use crate::cmd::test;
use crate::env::Env;
use crate::parse::results::RunResult;
use crate::plan::TestPlan;

pub fn run(env: &Env, plan: TestPlan) -> Result<ExitCode> {
    if let Some(f) = &plan.suite.fuzz {
        println!(
            "fuzz: seed {}, {}s per heap (replay: cargo xtask fuzz --seed {} --seconds {})",
            f.seed, f.seconds, f.seed, f.seconds
        );
    }
    let (result, code) = test::run_and_report(env, &plan)?;
    for line in summary(&result) {
        println!("{line}");
    }
    Ok(code)
}

/// A seed from the clock, mixed so runs a second apart differ in every bit.
pub fn fresh_seed() -> u64 {
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
        .flat_map(|h| {
            h.diags
                .iter()
                .filter(|d| heaprig_protocol::fuzz::is_summary(d))
        })
        .cloned()
        .collect()
}
