//! `cargo xtask shell`: an interactive root shell in the test kernel.

use std::process::ExitCode;

use anyhow::Result;

use crate::env::Env;
use crate::plan::{KernelPlan, VmPlan};
use crate::stages::{self, vm, Times};

pub fn shell(env: &Env, kernel: KernelPlan, v: VmPlan) -> Result<ExitCode> {
    let mut times = Times::default();
    let p = stages::prepare(env, &kernel, &v, &mut times)?;
    let modules = stages::module_paths(&p);
    if !modules.is_empty() {
        // An interactive shell has no command line to prefix; say what the rig would load.
        let list: Vec<String> = modules.iter().map(|m| m.display().to_string()).collect();
        println!(
            "shell: this kernel builds the heap and the importer as modules; load them with\n  insmod {}",
            list.join(" && insmod ")
        );
    }
    let code = vm::interactive(&stages::vm_spec(env, &v, &p, None))?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}
