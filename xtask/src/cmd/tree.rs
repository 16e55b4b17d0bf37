//! Git trees for `validate` and `bisect`: a scratch clone of the user's repository (never
//! their checkout), and one suite run on whatever the scratch has checked out, typed by how
//! far it got: no build, no boot, or a result.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use xshell::{cmd, Shell};

use crate::env::Env;
use crate::report::kcidb::Provenance;
use clap::ValueEnum;

use crate::cmd::test;
use crate::parse::results::RunResult;
use crate::plan::{TestPlan, VmPlan};
use crate::stages::kernel;
use crate::stages::series::Series;
use crate::stages::{self, StageError, Times};

/// A commit as reports show it: its first 12 hex digits (all of a shorter name).
pub fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// Commits in scratch trees need an identity (they never leave the scratch); the user's
/// signing and hooks must not prompt or fail there.
const GIT_ID: [&str; 8] = [
    "-c",
    "user.name=heaprig",
    "-c",
    "user.email=heaprig@localhost",
    "-c",
    "commit.gpgsign=false",
    "-c",
    "core.hooksPath=/dev/null",
];

/// A git repository the user named with --kernel-src, checked up front.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    pub fn open(sh: &Shell, dir: Option<&Path>, task: &str) -> Result<Repo> {
        let Some(dir) = dir else {
            bail!(
                "`{task}` needs --kernel-src TREE: a git checkout of Linux (6.12-based) whose \
                 history holds the revisions to test"
            );
        };
        kernel::validate_tree(dir)?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let top = cmd!(sh, "git -C {dir} rev-parse --show-toplevel")
            .quiet()
            .ignore_stderr()
            .read();
        match top {
            Ok(t) if Path::new(&t) == dir => Ok(Repo { dir }),
            _ => bail!(
                "--kernel-src {} is not the top of a git repository; `{task}` needs git to \
                 check revisions out (it does so in a scratch clone, never in your checkout)",
                dir.display()
            ),
        }
    }

    /// The full commit id of `rev`, or a clear error naming it.
    pub fn resolve(&self, sh: &Shell, rev: &str) -> Result<String> {
        let dir = &self.dir;
        let spec = format!("{rev}^{{commit}}");
        cmd!(sh, "git -C {dir} rev-parse --verify --quiet {spec}")
            .quiet()
            .ignore_stderr()
            .read()
            .ok()
            .filter(|s| !s.is_empty())
            .with_context(|| format!("{rev:?} is not a commit in {}", dir.display()))
    }

    /// Names the private copy and build dir every scratch of this history shares: the root
    /// commit(s), so any clone of the same history (and every CI run of the e2e history)
    /// builds incrementally on the last one.
    pub fn tree_id(&self, sh: &Shell, rev: &str) -> Result<String> {
        let dir = &self.dir;
        let roots = cmd!(sh, "git -C {dir} rev-list --max-parents=0 {rev}")
            .quiet()
            .read()?;
        Ok(format!(
            "git-{}",
            &crate::hash::sha256_hex(roots.as_bytes())[..12]
        ))
    }
}

/// A `git clone --shared` of the user's repository: objects are borrowed through
/// alternates, nothing is written to the user's repository or checkout. Removed on drop
/// unless kept.
pub struct Scratch {
    dir: tempfile::TempDir,
    pub tree_id: String,
}

impl Scratch {
    pub fn new(env: &Env, repo: &Repo, tree_id: String) -> Result<Scratch> {
        let parent = env.cache.join("scratch");
        fs::create_dir_all(&parent)?;
        let dir = tempfile::Builder::new()
            .prefix("tree-")
            .tempdir_in(&parent)?;
        let (from, to) = (&repo.dir, dir.path());
        cmd!(
            env.sh,
            "git clone --quiet --shared --no-checkout {from} {to}"
        )
        .quiet()
        .run()
        .with_context(|| format!("cloning {} into a scratch tree", from.display()))?;
        Ok(Scratch { dir, tree_id })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Keeps the scratch tree on disk after the task ends; returns where.
    pub fn keep(self) -> PathBuf {
        self.dir.keep()
    }

    pub fn git(&self, sh: &Shell, args: &[&str]) -> Result<String> {
        let dir = self.path();
        cmd!(sh, "git -C {dir} {GIT_ID...} {args...}")
            .quiet()
            .read()
            .with_context(|| format!("git {} in the scratch tree", args.join(" ")))
    }

    /// `git` that may fail: (success, stdout + stderr).
    pub fn git_try(&self, sh: &Shell, args: &[&str]) -> Result<(bool, String)> {
        let dir = self.path();
        let out = cmd!(sh, "git -C {dir} {GIT_ID...} {args...}")
            .quiet()
            .ignore_status()
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }

    pub fn checkout(&self, sh: &Shell, rev: &str) -> Result<()> {
        let t = Instant::now();
        self.git(sh, &["checkout", "--quiet", "--detach", "--force", rev])?;
        println!(
            "tree: checked out {} in {}",
            short(rev),
            crate::report::fmt_duration(t.elapsed())
        );
        Ok(())
    }
}

/// `subject` of a commit, for reports.
pub fn subject(sh: &Shell, git_dir: &Path, rev: &str) -> String {
    cmd!(sh, "git -C {git_dir} log -1 --format=%s {rev}")
        .quiet()
        .read()
        .unwrap_or_default()
}

/// An exclusive hold on one private tree and its build dir: a `validate` and a `bisect` of
/// the same history share them, and must not rsync or make over each other.
pub struct TreeLock {
    _file: fs::File,
}

impl TreeLock {
    pub fn take(env: &Env, tree_id: &str) -> Result<TreeLock> {
        use std::os::fd::AsRawFd;
        let dir = env.cache.join("locks");
        fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{tree_id}.lock"));
        let file =
            fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let fd = file.as_raw_fd();
        // SAFETY: `fd` is an open descriptor owned by `file`, which outlives the call.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            println!(
                "tree: another heaprig is using this tree's build ({}); waiting for it",
                path.display()
            );
            // SAFETY: as above. Blocks until the other process ends or releases it.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
                bail!(
                    "locking {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
        // Released when the file is closed (on drop, or when the process dies).
        Ok(TreeLock { _file: file })
    }
}

/// What one suite run on a tree came to.
pub enum SuiteOutcome {
    /// The kernel did not build: the first error.
    NoBuild(String),
    /// The kernel built but the guest never ran the suite.
    NoBoot(String),
    Ran(RunResult),
}

/// Builds and runs the suite on the plan's tree, artefacts in `out`. Err only when the rig
/// itself failed (setup, copying, the guest runner).
pub fn run_suite(env: &Env, plan: &TestPlan, out: &Path) -> Result<(SuiteOutcome, Times)> {
    let mut times = Times::default();
    let t = Instant::now();
    let guest = stages::build_guest(env)?;
    let selected = stages::select(env, &guest, &plan.suite.patterns, None)?;
    times.add("guest build", t.elapsed());
    let started = crate::clock::rfc3339_now();
    let _lock = match &plan.kernel.tree_id {
        Some(id) => Some(TreeLock::take(env, id)?),
        None => None,
    };
    let p = match stages::prepare(env, &plan.kernel, &plan.vm, &mut times) {
        Ok(p) => p,
        Err(StageError::NoBuild(e)) => return Ok((SuiteOutcome::NoBuild(format!("{e:#}")), times)),
        Err(StageError::Rig(e)) => return Err(e),
    };
    let x = test::execute(env, plan, &p, &guest, &selected, out, &mut times)?;
    let prov = Provenance::of(env, &plan.kernel, &plan.vm, &p, &times, started, None);
    test::save_report(plan, &p, &x, &times, &selected, Some(prov))?;
    // No test reported at all: the suite never ran (a panic or hang during boot included).
    if x.result.boot_failed || x.result.tests.is_empty() {
        return Ok((
            SuiteOutcome::NoBoot(format!(
                "{}; console tail:\n{}",
                x.result.ending,
                stages::console_tail(&x.console).join("\n")
            )),
            times,
        ));
    }
    Ok((SuiteOutcome::Ran(x.result), times))
}

/// The rig's own identity for result caches: its commit plus any uncommitted change,
/// untracked files included.
pub fn rig_version(env: &Env) -> String {
    let sh = &env.sh;
    let head = cmd!(sh, "git rev-parse HEAD")
        .quiet()
        .ignore_stderr()
        .read()
        .unwrap_or_else(|_| "no-git".into());
    let diff = cmd!(sh, "git diff HEAD").quiet().read().unwrap_or_default();
    let untracked = cmd!(sh, "git ls-files --others --exclude-standard")
        .quiet()
        .read()
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(diff.as_bytes());
    for f in untracked.lines() {
        h.update(f.as_bytes());
        h.update(fs::read(env.root.join(f)).unwrap_or_default());
    }
    format!("{head}+{}", &crate::hash::hex(&h.finalize())[..12])
}

/// Key for a cached base result: what was tested, on what, and how (everything that can
/// change a verdict: profile, accelerator, guest size, and `what` ran: the suite's selection
/// and limits, or the benchmark's settings).
pub fn result_key(
    env: &Env,
    commit: &str,
    profile: kernel::Profile,
    vm: &VmPlan,
    what: &str,
) -> String {
    let accel = vm
        .accel
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let mut h = Sha256::new();
    for part in [
        commit.to_string(),
        profile.name().to_string(),
        rig_version(env),
        // The commit's own version picks the series; every series' identity is covered.
        Series::ALL
            .map(|s| kernel::config_identity(env, profile, s).unwrap_or_default())
            .concat(),
        accel,
        format!("{} {} {}", vm.memory, vm.cpus, vm.boot_timeout.as_secs()),
        what.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    crate::hash::hex(&h.finalize())[..16].to_string()
}
