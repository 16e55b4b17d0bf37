//! The pipeline every booting command is made of: setup → source → build → accel (one
//! `prepare`), then boot and run one guest command (one `boot_and_run`). Each stage is timed;
//! a kernel that does not build is told apart from the rig failing, so `validate` and
//! `bisect` can call it a verdict and everyone else an error.
//!
//! The stages themselves: `setup` (requirements), `kernel` and `kconfig` (source, config,
//! build), `vm` (booting under virtme-ng, typed events and endings).

pub mod kconfig;
pub mod kernel;
pub mod series;
pub mod setup;
pub mod vm;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use heaprig_protocol::guest::ListArgs;
use serde::{Deserialize, Serialize};
use xshell::cmd;

use self::kernel::Built;
use self::vm::{Accel, Event, Limits, Session, VmSpec};
use crate::env::Env;
use crate::plan::{KernelPlan, VmPlan};
use crate::report::fmt_duration;

/// Stage timings, printed at the end of every run and kept in the JSON report.
#[derive(Default, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Times(pub Vec<(String, f64)>);

impl Times {
    pub fn add(&mut self, stage: &str, d: Duration) {
        self.0.push((stage.to_string(), d.as_secs_f64()));
    }

    /// A stage's time, by name.
    pub fn get(&self, stage: &str) -> Option<f64> {
        self.0.iter().find(|(s, _)| s == stage).map(|(_, t)| *t)
    }

    pub fn line(&self) -> String {
        self.0
            .iter()
            .map(|(s, t)| format!("{s} {}", fmt_duration(Duration::from_secs_f64(*t))))
            .collect::<Vec<_>>()
            .join(" | ")
    }
}

/// Why the pipeline stopped before the guest ran.
#[derive(Debug)]
pub enum StageError {
    /// The kernel does not build (configure or make failed): a property of the tree.
    NoBuild(anyhow::Error),
    /// The rig could not do its job (setup, copying the source, the accelerator probe).
    Rig(anyhow::Error),
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StageError::NoBuild(e) | StageError::Rig(e) => write!(f, "{e:#}"),
        }
    }
}

impl std::error::Error for StageError {}

/// A built kernel, ready to boot.
pub struct Prepared {
    pub built: Built,
    pub accel: Accel,
    pub accel_why: String,
    /// What the kernel source is (tarball version, or commit and diff hash).
    pub identity: String,
}

/// Setup, source and build stages.
pub fn build(env: &Env, k: &KernelPlan, times: &mut Times) -> Result<(Built, String), StageError> {
    let t = Instant::now();
    setup::ensure(env, true).map_err(StageError::Rig)?;
    times.add("setup", t.elapsed());
    let t = Instant::now();
    let mut src = kernel::prepare_source(env, k.series, k.src.as_deref(), k.tree_id.as_deref())
        .map_err(StageError::Rig)?;
    // A mutant from an earlier `mutate` never survives into another build.
    kernel::undo_mutation(&src.dir).map_err(StageError::Rig)?;
    if let Some(m) = &k.mutation {
        src.identity =
            kernel::apply_mutation(&src.dir, &src.identity, m).map_err(StageError::Rig)?;
    }
    times.add("source", t.elapsed());
    let t = Instant::now();
    match kernel::build(env, &src, k.profile) {
        Ok(built) => {
            let stage = if built.rebuilt {
                "build"
            } else {
                "build (cached)"
            };
            times.add(stage, t.elapsed());
            Ok((built, src.identity))
        }
        Err(e) => {
            times.add("build (failed)", t.elapsed());
            Err(StageError::NoBuild(e))
        }
    }
}

/// Every stage before the boot: build, then choose the accelerator.
pub fn prepare(
    env: &Env,
    k: &KernelPlan,
    v: &VmPlan,
    times: &mut Times,
) -> Result<Prepared, StageError> {
    let (built, identity) = build(env, k, times)?;
    let t = Instant::now();
    let (accel, accel_why) = vm::resolve_accel(v.accel, &built.bzimage, &env.cache, &env.root)
        .map_err(StageError::Rig)?;
    times.add("accel", t.elapsed());
    println!("accel: {accel:?} ({accel_why})");
    Ok(Prepared {
        built,
        accel,
        accel_why,
        identity,
    })
}

/// The machine a prepared kernel boots in; `rwdir` is shared read-write with the guest.
pub fn vm_spec(env: &Env, v: &VmPlan, p: &Prepared, rwdir: Option<PathBuf>) -> VmSpec {
    VmSpec {
        kernel: p.built.bzimage.clone(),
        accel: p.accel,
        memory: v.memory.clone(),
        cpus: v.cpus,
        rwdir,
        cwd: env.root.clone(),
        udev_rules: Some(env.root.join("xtask/guest-udev")),
        boot_args: p
            .built
            .series
            .boot_args()
            .iter()
            .map(|a| a.to_string())
            .collect(),
    }
}

/// Boots the prepared kernel and runs `command` (already split into words) in the guest,
/// after loading the kernel's modules (the heap and the importer on a series that builds
/// them as modules).
pub fn boot_and_run(
    env: &Env,
    v: &VmPlan,
    p: &Prepared,
    command: &[String],
    limits: Limits,
    rwdir: Option<PathBuf>,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Session> {
    vm::run(
        &vm_spec(env, v, p, rwdir),
        &guest_line(&module_paths(p), command),
        limits,
        on_event,
    )
}

/// The `.ko` files the guest loads before its command, in load order.
pub fn module_paths(p: &Prepared) -> Vec<PathBuf> {
    p.built
        .series
        .modules()
        .iter()
        .map(|m| p.built.build_dir.join(m))
        .collect()
}

/// The guest's shell line: load each module (a failure stops the line with insmod's own
/// error on the console), tell the command where they came from (`HEAPRIG_MODULES`, for
/// the tests that unload and reload them), then the command.
fn guest_line(modules: &[PathBuf], command: &[String]) -> String {
    let quote = |p: &PathBuf| vm::sh_quote(&p.display().to_string());
    let mut words = Vec::new();
    if !modules.is_empty() {
        let list: Vec<String> = modules.iter().map(|p| p.display().to_string()).collect();
        words.push(format!(
            "export HEAPRIG_MODULES={} &&",
            vm::sh_quote(&list.join(":"))
        ));
        for m in modules {
            words.push(format!("insmod {} &&", quote(m)));
        }
    }
    words.extend(command.iter().map(|s| vm::sh_quote(s)));
    words.join(" ")
}

/// Builds the guest test runner and returns its path, as cargo reports it.
pub fn build_guest(env: &Env) -> Result<PathBuf> {
    let sh = &env.sh;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = cmd!(
        sh,
        "{cargo} build --release --package guest-tests --bin heaprig-guest --message-format=json-render-diagnostics"
    )
    .quiet()
    .ignore_status()
    .output()
    .context("running cargo to build the guest tests")?;
    if !out.status.success() {
        bail!(
            "building the guest tests failed (cargo build -p guest-tests):\n{}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["reason"] == "compiler-artifact" && v["target"]["name"] == "heaprig-guest" {
            if let Some(exe) = v["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("cargo built guest-tests but reported no heaprig-guest executable")
}

/// The tests a pattern list selects, asked of the runner itself (it runs on the host too).
pub fn select(
    env: &Env,
    guest: &Path,
    patterns: &[String],
    shard: Option<heaprig_protocol::shard::Shard>,
) -> Result<Vec<String>> {
    let sh = &env.sh;
    let args = ListArgs {
        shard,
        whole_run: false,
        patterns: patterns.to_vec(),
    }
    .to_argv();
    let out = cmd!(sh, "{guest} {args...}").quiet().read()?;
    let names: Vec<String> = out.lines().map(str::to_string).collect();
    if names.is_empty() {
        let all = cmd!(sh, "{guest} list").quiet().read()?;
        bail!(
            "no guest test matches {patterns:?}. Patterns are names, substrings or globs; the \
             tests are: {}",
            all.lines().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(names)
}

/// The checks over the whole run every selection ends with (kmemleak).
pub fn whole_run(env: &Env, guest: &Path) -> Result<Vec<String>> {
    let args = ListArgs {
        whole_run: true,
        ..ListArgs::default()
    }
    .to_argv();
    let out = cmd!(env.sh, "{guest} {args...}").quiet().read()?;
    Ok(out.lines().map(str::to_string).collect())
}

/// Console lines a failure report shows (every report of a console tail uses it).
const CONSOLE_TAIL: usize = 30;

/// The last lines of a kernel console, oldest first (for failure reports).
pub fn console_tail(console: &[String]) -> Vec<&str> {
    last_lines(console, CONSOLE_TAIL)
}

fn last_lines(lines: &[String], n: usize) -> Vec<&str> {
    let start = lines.len().saturating_sub(n);
    lines[start..].iter().map(String::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_before_the_command_and_are_named_to_it() {
        let cmd = ["heaprig-guest".to_string(), "run".into()];
        assert_eq!(guest_line(&[], &cmd), "heaprig-guest run");
        let mods = [PathBuf::from("/b/heap.ko"), PathBuf::from("/b/imp.ko")];
        let line = guest_line(&mods, &cmd);
        assert!(
            line.starts_with("export HEAPRIG_MODULES=") && line.contains("/b/heap.ko:/b/imp.ko"),
            "{line}"
        );
        let heap = line.find("insmod /b/heap.ko &&").unwrap();
        let imp = line.find("insmod /b/imp.ko &&").unwrap();
        assert!(
            heap < imp && line.ends_with("&& heaprig-guest run"),
            "{line}"
        );
    }

    #[test]
    fn console_tail_keeps_the_last_lines_in_order() {
        let c: Vec<String> = (1..=5).map(|i| i.to_string()).collect();
        assert_eq!(last_lines(&c, 2), ["4", "5"]);
        assert_eq!(last_lines(&c, 9).len(), 5);
        assert_eq!(console_tail(&c).len(), 5);
    }

    #[test]
    fn times_are_kept_in_order_and_found_by_name() {
        let mut t = Times::default();
        t.add("boot", Duration::from_millis(1500));
        t.add("tests", Duration::from_secs(2));
        assert_eq!(t.get("boot"), Some(1.5));
        assert_eq!(t.line(), "boot 1.5s | tests 2.0s");
    }
}
