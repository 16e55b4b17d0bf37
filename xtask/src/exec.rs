//! `cargo xtask exec -- CMD...` and `cargo xtask shell`: the test kernel as a debugging
//! tool. `exec` prints the command's output and returns its exit code.

use std::fs;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::env::Env;
use crate::flags::{ExecArgs, VmArgs};
use crate::results::describe_ending;
use crate::splat;
use crate::test::{prepare, spec, Times};
use crate::vm::{self, Ending, Event, Limits};

pub fn exec(env: &Env, a: ExecArgs) -> Result<ExitCode> {
    let mut times = Times::default();
    let p = prepare(env, &a.vm, a.vm.kernel.profile(), &mut times)?;
    let spec = spec(env, &a.vm, &p, None);
    let command: Vec<String> = a.command.iter().map(|s| vm::sh_quote(s)).collect();
    let limits = Limits {
        boot: Duration::from_secs(a.vm.boot_timeout),
        test: None,
        run: Duration::from_secs(a.run_timeout),
    };
    let session = vm::run(&spec, &command.join(" "), limits, &mut |ev| {
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
            let tail: Vec<&String> = session.console.iter().rev().take(20).collect();
            for l in tail.into_iter().rev() {
                eprintln!("  {l}");
            }
            bail!(
                "{}; the kernel console tail is above, the full log is {}",
                describe_ending(&other),
                log.display()
            )
        }
    }
}

pub fn shell(env: &Env, v: VmArgs) -> Result<ExitCode> {
    let mut times = Times::default();
    let p = prepare(env, &v, v.kernel.profile(), &mut times)?;
    let code = vm::interactive(&spec(env, &v, &p, None))?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
