//! `cargo xtask bench --rig`: the rig's own speed. Cold build per profile (in a scratch build
//! dir, so the cache is untouched), a no-change `cargo xtask test`, boot to first test, and
//! one line of the heap edited to a verdict. The test runs are real `cargo xtask test`
//! subprocesses, timed from outside, with their own stage times read back from results.json.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::cmd::test::RunInfo;
use crate::env::Env;
use crate::flags::{BenchArgs, VmArgs};
use crate::report::fmt_duration;
use crate::stages::kernel::{self, Profile};

/// The file the edit-to-verdict measurement touches, and restores.
const EDITED: &str = "heap/rust_system_heap.rs";

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct RigRow {
    pub what: String,
    pub seconds: f64,
    pub note: String,
}

impl RigRow {
    fn new(what: impl Into<String>, d: Duration, note: impl Into<String>) -> RigRow {
        RigRow {
            what: what.into(),
            seconds: d.as_secs_f64(),
            note: note.into(),
        }
    }
}

pub fn table(rows: &[RigRow]) -> String {
    let mut s = String::from("| what | time | how |\n| --- | --- | --- |\n");
    for r in rows {
        s.push_str(&format!(
            "| {} | {} | {} |\n",
            r.what,
            fmt_duration(Duration::from_secs_f64(r.seconds)),
            r.note
        ));
    }
    s
}

/// What `bench --rig` writes: rig.json.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub struct RigReport {
    pub date: String,
    pub machine: String,
    pub rig: Vec<RigRow>,
}

/// Restores the edited heap source on drop, whatever happens in between.
struct Edit {
    path: PathBuf,
    original: Vec<u8>,
}

impl Edit {
    fn append_line(path: &Path, line: &str) -> Result<Edit> {
        let original = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let mut edited = original.clone();
        edited.extend_from_slice(line.as_bytes());
        edited.push(b'\n');
        fs::write(path, edited)?;
        Ok(Edit {
            path: path.to_path_buf(),
            original,
        })
    }
}

impl Drop for Edit {
    fn drop(&mut self) {
        if let Err(e) = fs::write(&self.path, &self.original) {
            eprintln!(
                "heaprig: error: could not restore {} after the timed edit: {e}. Restore it \
                 with `git checkout -- {EDITED}`.",
                self.path.display()
            );
        }
    }
}

struct TestRun {
    wall: Duration,
    code: Option<i32>,
    /// How the child's run went, read back from its results.json (None if it wrote none).
    run: Option<RunInfo>,
}

impl TestRun {
    fn accel(&self) -> String {
        self.run.as_ref().map_or("unknown".into(), |r| {
            format!("{:?}", r.accel).to_uppercase()
        })
    }
}

/// The child `cargo xtask test` that `bench --rig` times: the debug kernel (the profile flag
/// only limits the cold builds), with every other VM flag as given (guest size included, which
/// the rows are labelled with).
fn child_test_argv(vm: &VmArgs) -> Vec<String> {
    let mut vm = vm.clone();
    vm.kernel.profile = Some(Profile::Debug);
    if let Some(src) = &vm.kernel.kernel_src {
        // The child runs in the project root; a relative path would point elsewhere there.
        vm.kernel.kernel_src = Some(src.canonicalize().unwrap_or_else(|_| src.clone()));
    }
    std::iter::once("test".to_string())
        .chain(vm.to_argv())
        .collect()
}

fn xtask_test(env: &Env, a: &BenchArgs) -> Result<TestRun> {
    let exe = std::env::current_exe().context("finding the xtask binary")?;
    let mut cmd = Command::new(exe);
    cmd.current_dir(&env.root).args(child_test_argv(&a.vm));
    // A child that dies before writing must not be credited with an older run's stages.
    let _ = fs::remove_file(env.run_dir().join("results.json"));
    let t = Instant::now();
    let status = cmd.status().context("running `cargo xtask test`")?;
    let wall = t.elapsed();
    Ok(TestRun {
        wall,
        code: status.code(),
        run: RunInfo::read(&env.run_dir().join("results.json")).ok(),
    })
}

fn stage(r: &TestRun, name: &str) -> Option<f64> {
    r.run.as_ref()?.times.get(name)
}

fn exit_summary(r: &TestRun) -> String {
    match r.code {
        Some(0) => "all passed".into(),
        Some(c) => format!("exit {c}"),
        None => "killed by a signal".into(),
    }
}

fn stages_line(r: &TestRun) -> String {
    let Some(run) = &r.run else {
        return "no results.json".into();
    };
    run.times
        .0
        .iter()
        .filter(|(s, _)| s != "total")
        .map(|(s, t)| format!("{s} {}", fmt_duration(Duration::from_secs_f64(*t))))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn run(env: &Env, a: &BenchArgs) -> Result<ExitCode> {
    crate::stages::setup::ensure(env, true)?;
    let profiles = match a.vm.kernel.profile {
        Some(p) => vec![p],
        None => vec![Profile::Debug, Profile::Perf],
    };
    let k = a.vm.kernel.plan(Profile::Debug);
    let src = kernel::prepare_source(env, k.series, k.src.as_deref(), None)?;
    let mut rows = Vec::new();
    for p in profiles {
        let scratch_root = env.cache.join("build");
        fs::create_dir_all(&scratch_root)?;
        // Same filesystem as the real build dirs; removed when this scope ends.
        let dir = tempfile::Builder::new()
            .prefix(&format!("rig-bench-cold-{}-", p.name()))
            .tempdir_in(&scratch_root)?;
        println!("rig: cold {} build in {}", p.name(), dir.path().display());
        let t = Instant::now();
        kernel::build_in(env, &src, p, dir.path())?;
        rows.push(RigRow::new(
            format!("cold build, {} profile", p.name()),
            t.elapsed(),
            "configure + make bzImage in an empty build dir (source already extracted)",
        ));
    }

    println!("rig: warming the debug build and guest runner (not timed)");
    let warm = xtask_test(env, a)?;
    println!("rig: timing `cargo xtask test` with nothing changed");
    let same = xtask_test(env, a)?;
    rows.push(RigRow::new(
        "`cargo xtask test`, nothing changed",
        same.wall,
        format!("{}; {}", exit_summary(&same), stages_line(&same)),
    ));
    if let Some(boot) = stage(&same, "boot") {
        rows.push(RigRow::new(
            "boot to first test",
            Duration::from_secs_f64(boot),
            "QEMU start to the guest runner's first line, under the accelerator the run used",
        ));
    }

    let edited = env.root.join(EDITED);
    let run = {
        let _edit = Edit::append_line(&edited, "// heaprig bench --rig: one-line edit")?;
        println!("rig: timing a one-line edit of {EDITED} to a verdict");
        xtask_test(env, a)?
    };
    rows.push(RigRow::new(
        format!("edit one line of `{EDITED}` to a verdict"),
        run.wall,
        format!("{}; {}", exit_summary(&run), stages_line(&run)),
    ));
    // A build is enough to bring the cache back; no boot needed.
    println!("rig: rebuilding the unedited heap so the cache matches the project (not timed)");
    crate::stages::build(
        env,
        &a.vm.kernel.plan(Profile::Debug),
        &mut Default::default(),
    )?;
    if warm.code != Some(0) || same.code != Some(0) || run.code != Some(0) {
        println!(
            "rig: note: a suite run did not pass (warm-up: {}, unchanged: {}, edited: {}); the \
             times are still what a user waits for a verdict",
            exit_summary(&warm),
            exit_summary(&same),
            exit_summary(&run)
        );
    }

    let date = crate::clock::Date::today().to_string();
    let machine = format!(
        "{} cores, {}, {} guest CPUs, {}",
        crate::env::host_cores(),
        same.accel(),
        a.vm.cpus,
        // The timed runs are `test`, on the debug kernel.
        a.vm.plan(Profile::Debug).memory
    );
    let dir = env.root.join("target/heaprig/bench");
    fs::create_dir_all(&dir)?;
    let report = RigReport {
        date,
        machine,
        rig: rows,
    };
    let out = dir.join("rig.json");
    fs::write(&out, serde_json::to_string_pretty(&report)?)?;
    println!(
        "\nheaprig rig speed {}: {}\n\n{}\nwritten: {}",
        report.date,
        report.machine,
        table(&report.rig),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_published_rig_run_reads_back() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/rig-2026-11-26-tcg.json");
        let r: RigReport = crate::report::read_json(&path, "rig.json").unwrap();
        assert!(r.rig.iter().any(|row| row.what == "boot to first test"));
    }

    #[test]
    fn rig_json_reads_back_through_its_type() {
        let r = RigReport {
            date: "2026-11-30".into(),
            machine: "2 cores".into(),
            rig: vec![RigRow::new("boot", Duration::from_millis(21_900), "x")],
        };
        let text = serde_json::to_string_pretty(&r).unwrap();
        assert_eq!(serde_json::from_str::<RigReport>(&text).unwrap(), r);
    }

    /// `bench --rig --memory 4G --cpus 4` labels its rows with that guest size; the child
    /// test must run with it too (it once ran with the 2 CPU / 2G defaults).
    #[test]
    fn the_timed_child_gets_the_guest_size_it_is_labelled_with() {
        use crate::flags::{parse_cmd, Cmd};
        let Cmd::Bench(b) = parse_cmd(&[
            "bench", "--rig", "--memory", "4G", "--cpus", "4", "--accel", "tcg",
        ]) else {
            panic!("not bench")
        };
        let argv = child_test_argv(&b.vm);
        let Cmd::Test(t) = parse_cmd(&argv) else {
            panic!("not test: {argv:?}")
        };
        // clap normalises 4G to 4096M on both sides.
        assert_eq!(
            (t.vm.memory.as_deref(), t.vm.cpus),
            (Some("4096M"), 4),
            "{argv:?}"
        );
        assert_eq!(t.vm.accel, b.vm.accel);
        assert_eq!(t.vm.kernel.profile, Some(Profile::Debug));
    }

    #[test]
    fn an_edit_is_undone_even_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.rs");
        fs::write(&f, "fn a() {}\n").unwrap();
        let r: Result<()> = (|| {
            let _e = Edit::append_line(&f, "// edit")?;
            assert_eq!(fs::read_to_string(&f)?, "fn a() {}\n// edit\n");
            anyhow::bail!("failed midway")
        })();
        assert!(r.is_err());
        assert_eq!(fs::read_to_string(&f).unwrap(), "fn a() {}\n");
    }

    #[test]
    fn table_has_one_row_per_measurement() {
        let rows = vec![RigRow::new("boot", Duration::from_millis(21_900), "x")];
        assert_eq!(table(&rows).lines().count(), 3);
        assert!(table(&rows).contains("| boot | 21.9s | x |"));
    }
}
