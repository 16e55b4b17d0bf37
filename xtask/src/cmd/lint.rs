//! `cargo xtask lint`: the GitHub workflow users copy (`.github/workflows/`) is checked against
//! the GitHub workflow JSON schema (check-jsonschema's vendored copy, offline) and audited by
//! zizmor (offline: template injection, unpinned actions, credentials, permissions). Both are
//! pinned in the rig's venv (`cargo xtask setup`). The workflow never runs here.

use std::process::ExitCode;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use xshell::cmd;

use crate::env::Env;
use crate::stages::setup;

pub fn run(env: &Env, mut files: Vec<PathBuf>) -> Result<ExitCode> {
    setup::ensure(env, true)?;
    if files.is_empty() {
        let dir = env.root.join(".github/workflows");
        files = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
            .collect();
        files.sort();
        if files.is_empty() {
            bail!("no workflow in {}", dir.display());
        }
    }
    if let Some(f) = files.iter().find(|f| !f.is_file()) {
        bail!("{} is not a file", f.display());
    }
    let bin = setup::venv(env).join("bin");
    let (schema, zizmor) = (bin.join("check-jsonschema"), bin.join("zizmor"));
    let sh = &env.sh;
    let mut ok = true;
    let all = &files;
    let r = cmd!(
        sh,
        "{schema} --builtin-schema vendor.github-workflows {all...}"
    )
    .run();
    ok &= r.is_ok();
    // zizmor is Rust: its errors are one paragraph unless a backtrace is asked for.
    let _quiet = sh.push_env("RUST_BACKTRACE", "0");
    let r = cmd!(
        sh,
        "{zizmor} --offline --no-progress --strict-collection {all...}"
    )
    .run();
    ok &= r.is_ok();
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if ok {
        println!(
            "lint: {} pass the GitHub workflow schema (check-jsonschema {}) and zizmor {} (offline)",
            names.join(", "),
            setup::CHECK_JSONSCHEMA,
            setup::ZIZMOR
        );
        Ok(ExitCode::SUCCESS)
    } else {
        println!("lint: {} FAILED (findings above)", names.join(", "));
        Ok(ExitCode::from(1))
    }
}
