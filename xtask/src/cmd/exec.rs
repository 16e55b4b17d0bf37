//! `cargo xtask exec -- CMD...`: one command in the test kernel, as a debugging tool. Prints
//! the command's output and returns its exit code.

use std::fs;
use std::process::ExitCode;

use anyhow::{bail, Result};

use crate::env::Env;
use crate::parse::splat;
use crate::plan::ExecPlan;
use crate::stages::vm::{Ending, Event, Limits};
use crate::stages::{self, console_tail, Times};

pub fn exec(env: &Env, plan: ExecPlan) -> Result<ExitCode> {
    let mut times = Times::default();
    let p = stages::prepare(env, &plan.kernel, &plan.vm, &mut times)?;
    let limits = Limits {
        boot: plan.vm.boot_timeout,
        test: None,
        run: plan.run_timeout,
    };
    let session =
        stages::boot_and_run(env, &plan.vm, &p, &plan.command, limits, None, &mut |ev| {
            if let Event::Guest(l) = ev {
                println!("{l}");
            }
        })?;
    let log = env.root.join("target/heaprig/exec-console.log");
    if let Some(dir) = log.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(&log, session.console.join("\n") + "\n")?;
    let splats = splat::parse(&session.console.join("\n"));
    for s in &splats {
        eprintln!(
            "heaprig: kernel {} during the command: {}",
            s.kind.label(),
            s.title
        );
    }
    match session.ending {
        Ending::Exited { code } => {
            if !splats.is_empty() {
                eprintln!("heaprig: full kernel log in {}", log.display());
            }
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        other => {
            for l in console_tail(&session.console) {
                eprintln!("  {l}");
            }
            bail!(
                "{}; the kernel console tail is above, the full log is {}",
                other,
                log.display()
            )
        }
    }
}
