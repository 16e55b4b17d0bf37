//! Command-line flags, parsed once in main. Values are validated here (clap value parsers)
//! so bad input fails before anything is built or booted.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use std::time::Duration;

use anyhow::Result;
use heaprig_protocol::shard::Shard;

use crate::plan::{
    BenchPlan, ExecPlan, FuzzPlan, KcidbPlan, KernelPlan, MutatePlan, Outputs, SkipWhy, Snapshots,
    SuitePlan, TestPlan, Triage, VmPlan,
};
use crate::stages::kernel::Profile;
use crate::stages::series::Series;
use crate::stages::vm::{parse_memory, AccelChoice};
use crate::triage::known::KnownIssues;

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "heaprig: build a 6.12 kernel with dma-buf heaps, boot it under virtme-ng, run the guest tests",
    after_help = "Exit codes: 0 pass; 1 a test failed, the kernel splatted or a snapshot differs; \
                  2 the rig could not do its job (setup, build or boot)."
)]
pub struct Xtask {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Install every Debian, PyPI and cargo requirement (as root on Debian).
    Setup,
    /// Report each requirement: found / missing / version.
    Doctor,
    /// Prepare the source, configure and build the kernel (cached).
    Build(KernelArgs),
    /// Build, boot, run the guest tests, report, and check the snapshots.
    Test(TestArgs),
    /// Run one command in a booted test kernel; prints its output, returns its exit code.
    Exec(ExecArgs),
    /// An interactive shell in the test kernel.
    Shell(VmArgs),
    /// Re-parse and report a saved run (no kernel needed), by default the last one.
    Parse(ParseArgs),
    /// Microbenchmarks of every heap in one boot of the perf kernel (never a pass/fail test).
    Bench(BenchArgs),
    /// The seeded fuzzer on the debug kernel, for longer than the suite gives it.
    Fuzz(FuzzArgs),
    /// Test a patch series against its base in a git tree; report what it changed.
    Validate(ValidateArgs),
    /// Find the first bad commit between two revisions with `git bisect run`.
    Bisect(BisectArgs),
    /// One verdict on the tree as checked out: `git bisect run cargo xtask bisect-step ...`.
    BisectStep(StepArgs),
    /// Run the suite on each mutant of mutants/corpus.toml (one small realistic bug at a
    /// time); report what caught each and a mutation score per heap.
    Mutate(MutateArgs),
    /// Join the results.json of every shard of a run (`test --shard I/N --json F`) into one
    /// report, JUnit and KCIDB file; fails when a shard is missing.
    Merge(MergeArgs),
    /// Lint the GitHub workflow users copy (schema and security checks).
    Lint(LintArgs),
}

/// KernelCI output, shared by `test`, `validate`, `bench` and `merge`.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct KcidbArgs {
    /// Write the results as a KCIDB v5.3 file here (checkouts, builds, tests), validated
    /// with the pinned kcidb-io schema; submit it with `kci-dev submit` (see README).
    #[arg(long, value_name = "FILE")]
    pub kcidb: Option<PathBuf>,
    /// The KCIDB origin: names your CI system and prefixes every id.
    #[arg(long, default_value = "heaprig", value_name = "NAME", value_parser = parse_origin, requires = "kcidb")]
    pub kcidb_origin: String,
    /// The run's part of every KCIDB id (give every shard of a run the same one, e.g.
    /// $GITHUB_RUN_ID). Default: the start time and process id.
    #[arg(long, value_name = "ID", value_parser = parse_run_id, requires = "kcidb")]
    pub kcidb_run_id: Option<String>,
}

impl KcidbArgs {
    pub fn plan(&self) -> Option<KcidbPlan> {
        self.kcidb.as_ref().map(|path| KcidbPlan {
            path: path.clone(),
            origin: self.kcidb_origin.clone(),
            run_id: self.kcidb_run_id.clone(),
        })
    }
}

/// KCIDB origins are `[a-z0-9_]+`.
fn parse_origin(s: &str) -> Result<String, String> {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a KCIDB origin (lower-case letters, digits and '_')"
        ))
    }
}

/// A run id goes into test paths' ids: letters, digits, '_', '-' and '.'.
fn parse_run_id(s: &str) -> Result<String, String> {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
    {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a run id (letters, digits, '_', '-' and '.')"
        ))
    }
}

#[derive(Args)]
pub struct LintArgs {
    /// Workflow files to lint. Default: every one in .github/workflows/.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

#[derive(Args)]
pub struct MergeArgs {
    /// Also write the merged results as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write JUnit XML here.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    #[command(flatten)]
    pub kcidb: KcidbArgs,
    /// The shards' results.json files (or run directories holding one).
    #[arg(required = true, value_name = "RESULTS")]
    pub shards: Vec<PathBuf>,
}

/// The suite as `validate` and `bisect` run it.
#[derive(Args, Clone)]
pub struct SuiteArgs {
    /// Tests that decide (repeatable): names, substrings or globs. Default: all.
    #[arg(long = "test", value_name = "NAME|GLOB")]
    pub patterns: Vec<String>,
    /// Limit for each guest test.
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub test_timeout: u64,
    /// Limit for each guest run (boot included).
    #[arg(long, default_value_t = 1200, value_name = "SECS", value_parser = clap::value_parser!(u64).range(30..=86400))]
    pub run_timeout: u64,
}

#[derive(Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    #[command(flatten)]
    pub suite: SuiteArgs,
    /// The revision the series applies to. Default: A of a range A..B, else HEAD.
    #[arg(long, value_name = "REV")]
    pub base: Option<String>,
    /// Also build and test every commit of the series on its own; name the first failing.
    #[arg(long)]
    pub each: bool,
    /// Leave the scratch clone behind (its path is printed).
    #[arg(long)]
    pub keep: bool,
    /// Also benchmark base and patched (perf kernel, full iterations) and report medians that
    /// moved beyond the runs' own noise. Reported, never a regression by itself.
    #[arg(long)]
    pub bench: bool,
    /// Also write the Markdown report here (it is always in target/heaprig/validate/).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub kcidb: KcidbArgs,
    /// Patch files, mboxes of a series, or commit ranges A..B in --kernel-src, in order.
    #[arg(required = true, value_name = "PATCH")]
    pub patches: Vec<String>,
}

/// What makes a commit bad, and how sure to be.
#[derive(Args, Clone)]
pub struct VerdictArgs {
    /// Bad when a kernel splat's normalised text contains this (case-insensitive), instead
    /// of when a chosen test fails.
    #[arg(long, value_name = "TEXT")]
    pub splat: Option<String>,
    /// Rerun a bad verdict this many times; a commit that passes in any rerun is flaky and
    /// skipped (125), never blamed. For a suite that is noisy.
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=10))]
    pub retries: u32,
    /// Run every step N times: bad if any run is bad (an intermittent bug seen once is seen),
    /// good only if all N are; the summary gives a confidence figure. For a bug that
    /// reproduces sometimes.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10), conflicts_with = "retries")]
    pub runs: u32,
}

#[derive(Args)]
pub struct MutateArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    #[command(flatten)]
    pub suite: SuiteArgs,
    /// Only this mutant (repeatable); all that apply to the kernel when none is named.
    #[arg(long = "mutant", value_name = "NAME", conflicts_with = "sample")]
    pub mutants: Vec<String>,
    /// Only N of them, a different N for each commit of the rig (so CI covers the corpus
    /// over time while paying for N).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub sample: Option<u64>,
    /// Also write the Markdown report here (it is always in target/heaprig/mutate/).
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
}

impl MutateArgs {
    /// Fails before anything is built: an invalid corpus, an unknown mutant, a kernel tree
    /// other than the rig's own (mutants are edits of its prepared source).
    pub fn plan(&self, root: &Path, seed: u64) -> Result<MutatePlan> {
        if self.vm.kernel.kernel_src.is_some() {
            anyhow::bail!(
                "mutate edits the rig's own prepared source of a kernel series; it takes \
                 --kernel, not --kernel-src"
            );
        }
        let (kernel, vm) = self.vm.plans(Profile::Debug);
        let cases = crate::mutants::select(
            crate::mutants::load(root)?,
            kernel.series,
            &self.mutants,
            self.sample.map(|n| n as usize),
            seed,
        )?;
        Ok(MutatePlan {
            suite: TestPlan {
                kernel,
                vm,
                suite: self.suite.plan(),
                snapshots: Snapshots::Skip(SkipWhy::ComparedElsewhere),
                triage: Triage::default(),
                outputs: Outputs::default(),
            },
            cases,
            report: self.report.clone(),
        })
    }
}

#[derive(Args)]
pub struct BisectArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    #[command(flatten)]
    pub suite: SuiteArgs,
    #[command(flatten)]
    pub verdict: VerdictArgs,
    /// A revision known to be good.
    #[arg(long, value_name = "REV")]
    pub good: String,
    /// A revision known to be bad.
    #[arg(long, value_name = "REV")]
    pub bad: String,
    /// Leave the scratch clone behind (its path is printed).
    #[arg(long)]
    pub keep: bool,
    /// Skip the check that reverting the culprit on --bad makes it good (one more build and
    /// boot).
    #[arg(long)]
    pub no_confirm: bool,
}

#[derive(Args)]
pub struct StepArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    #[command(flatten)]
    pub suite: SuiteArgs,
    #[command(flatten)]
    pub verdict: VerdictArgs,
    /// Append this step's verdict and time as a JSON line (used by `bisect`).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

fn parse_shard(s: &str) -> Result<Shard, String> {
    s.parse()
}

/// A heap name as /dev/dma_heap spells it.
fn parse_heap(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a heap name (letters, digits, '_' and '-', as under /dev/dma_heap)"
        ))
    }
}

#[derive(Args)]
pub struct FuzzArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// How long to fuzz each heap.
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub seconds: u64,
    /// Seed to replay (printed by every run); default: a new one.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop after this many operations (replays a failure up to the op that failed).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: Option<u64>,
    /// Fuzz only this heap (repeatable). Default: every heap.
    #[arg(long, value_parser = parse_heap)]
    pub heap: Vec<String>,
}

impl KernelArgs {
    /// The chosen profile, or `default` when none was given.
    pub fn profile_or(&self, default: Profile) -> Profile {
        self.profile.unwrap_or(default)
    }

    /// The chosen profile for everything but `bench`.
    pub fn profile(&self) -> Profile {
        self.profile_or(Profile::Debug)
    }

    /// The kernel plan, `default` being the command's profile when none was given.
    pub fn plan(&self, default: Profile) -> KernelPlan {
        KernelPlan {
            profile: self.profile_or(default),
            series: self.kernel.unwrap_or(Series::DEFAULT),
            src: self.kernel_src.clone(),
            tree_id: self.tree_id.clone(),
            mutation: None,
        }
    }
}

/// Guest memory when `--memory` is not given, by the profile of the kernel booted. The debug
/// kernel's detectors cost in proportion to memory: KASAN's shadow and page_owner's page_ext
/// grow with it, and kmemleak scans both (a scan took 3.5 s at 1 GiB and 5.5 s at 2 GiB,
/// 2026-12-06), while the suite needs well under 1 GiB. The benchmarks keep 2 GiB.
pub fn default_memory(profile: Profile) -> &'static str {
    match profile {
        Profile::Debug => "1024M",
        Profile::Perf => "2048M",
    }
}

impl VmArgs {
    /// The kernel plan (`default` being the command's profile) and the machine it boots in:
    /// the profile is resolved once, for both.
    pub fn plans(&self, default: Profile) -> (KernelPlan, VmPlan) {
        let kernel = self.kernel.plan(default);
        let vm = self.plan(kernel.profile);
        (kernel, vm)
    }

    /// The machine for a kernel of `profile` (which sets the memory unless given).
    pub fn plan(&self, profile: Profile) -> VmPlan {
        VmPlan {
            accel: self.accel,
            memory: self
                .memory
                .clone()
                .unwrap_or_else(|| default_memory(profile).to_string()),
            cpus: self.cpus,
            boot_timeout: Duration::from_secs(self.boot_timeout),
        }
    }
}

impl SuiteArgs {
    /// The suite as `validate` and `bisect` run it: all heaps, the suite's own fuzz budget.
    pub fn plan(&self) -> SuitePlan {
        SuitePlan {
            patterns: self.patterns.clone(),
            test_timeout: Duration::from_secs(self.test_timeout),
            run_timeout: Duration::from_secs(self.run_timeout),
            heaps: Vec::new(),
            fuzz: None,
            shard: None,
            attempt: 0,
        }
    }
}

/// Snapshots hold every heap: a run narrowed with `--heap` is not compared with them.
fn snapshots_for(heaps: &[String], accept: bool) -> Snapshots {
    if heaps.is_empty() {
        Snapshots::Compare { accept }
    } else {
        Snapshots::Skip(SkipWhy::HeapSubset)
    }
}

/// The plan of a suite run on a scratch or user tree (`validate`, `bisect-step`): compared
/// with another run (validate's base, bisect's verdicts), never with the snapshots.
pub fn tree_plan(vm: &VmArgs, suite: &SuiteArgs, tree: &Path, tree_id: Option<&str>) -> TestPlan {
    let (mut kernel, vm) = vm.plans(Profile::Debug);
    kernel.src = Some(tree.to_path_buf());
    kernel.tree_id = tree_id.map(str::to_string);
    TestPlan {
        kernel,
        vm,
        suite: suite.plan(),
        snapshots: Snapshots::Skip(SkipWhy::ComparedElsewhere),
        triage: Triage::default(),
        outputs: Outputs::default(),
    }
}

impl TestArgs {
    /// Fails (before anything is built) when the known-issues file is missing or invalid.
    pub fn plan(self) -> Result<TestPlan> {
        let snapshots = snapshots_for(&self.heap, self.accept);
        let known = match &self.known_issues {
            Some(path) => KnownIssues::load(path)?,
            None => KnownIssues::default(),
        };
        let (kernel, vm) = self.vm.plans(Profile::Debug);
        Ok(TestPlan {
            kernel,
            vm,
            suite: SuitePlan {
                patterns: self.patterns,
                test_timeout: Duration::from_secs(self.test_timeout),
                run_timeout: Duration::from_secs(self.run_timeout),
                heaps: self.heap,
                fuzz: None,
                shard: self.shard,
                attempt: 0,
            },
            snapshots,
            triage: Triage {
                retries: self.retries,
                strict: self.strict,
                known,
            },
            outputs: Outputs {
                ktap: self.ktap,
                json: self.json,
                junit: self.junit,
                kcidb: self.kcidb.plan(),
            },
        })
    }
}

/// The guest's own limits: time to set up and tear down around each heap's fuzz budget.
const FUZZ_SLACK_PER_HEAP: u64 = 60;
/// Heaps the debug kernel has (system, rust_system, the CMA heap); sizes the fuzz run's limit
/// when `--heap` is not given.
const HEAPS_IN_KERNEL: u64 = 3;

impl FuzzArgs {
    /// The suite's `fuzz` test alone, with this budget and `seed` (a fresh one unless given).
    pub fn plan(self, seed: u64) -> TestPlan {
        let heaps = if self.heap.is_empty() {
            HEAPS_IN_KERNEL
        } else {
            self.heap.len() as u64
        };
        // The heaps run side by side, each given its budget in CPU time: more wall time when
        // there are more heaps than guest CPUs.
        let cpus = u64::from(self.vm.cpus.max(1));
        let side_by_side = self.seconds * heaps.div_ceil(cpus) + FUZZ_SLACK_PER_HEAP;
        let alone = self.seconds + FUZZ_SLACK_PER_HEAP;
        let per_test = side_by_side.max(alone);
        // Boot, the heaps side by side, each alone again should something go wrong there, and
        // the whole-run checks (kmemleak) after them.
        let run = self.vm.boot_timeout + per_test + alone * heaps + 120;
        let snapshots = snapshots_for(&self.heap, false);
        let (kernel, vm) = self.vm.plans(Profile::Debug);
        TestPlan {
            kernel,
            vm,
            suite: SuitePlan {
                // kmemleak named: a targeted run skips the whole-run checks otherwise.
                patterns: vec!["fuzz".to_string(), "kmemleak".to_string()],
                test_timeout: Duration::from_secs(per_test),
                run_timeout: Duration::from_secs(run),
                heaps: self.heap,
                fuzz: Some(FuzzPlan {
                    seconds: self.seconds,
                    seed,
                    ops: self.ops,
                }),
                shard: None,
                attempt: 0,
            },
            snapshots,
            triage: Triage::default(),
            outputs: Outputs::default(),
        }
    }
}

impl BenchArgs {
    pub fn plan(&self) -> BenchPlan {
        let (kernel, vm) = self.vm.plans(Profile::Perf);
        BenchPlan {
            kernel,
            vm,
            quick: self.quick,
            run_timeout: Duration::from_secs(self.run_timeout),
            kcidb: self.kcidb.plan(),
        }
    }
}

impl ExecArgs {
    pub fn plan(self) -> ExecPlan {
        let (kernel, vm) = self.vm.plans(Profile::Debug);
        ExecPlan {
            kernel,
            vm,
            command: self.command,
            run_timeout: Duration::from_secs(self.run_timeout),
        }
    }
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Few iterations and a 32 MiB mmap instead of 256 MiB: keeps the benchmarks working in
    /// CI; the numbers are not worth comparing.
    #[arg(long)]
    pub quick: bool,
    /// Limit for the whole run (boot included).
    #[arg(long, default_value_t = 1800, value_name = "SECS", value_parser = clap::value_parser!(u64).range(30..=86400))]
    pub run_timeout: u64,
    /// Re-render the table and SVG of a saved bench.json instead of running (no kernel).
    #[arg(long, value_name = "JSON")]
    pub render: Option<PathBuf>,
    #[command(flatten)]
    pub kcidb: KcidbArgs,
    /// Measure the rig instead of the heaps: cold build per profile (or only --profile),
    /// no-change `test`, boot to first test, one-line heap edit to verdict. Slow (two cold
    /// kernel builds); leaves the project and its caches as they were.
    #[arg(long, conflicts_with_all = ["render", "quick"])]
    pub rig: bool,
}

#[derive(Args, Clone, Debug, PartialEq)]
pub struct KernelArgs {
    /// Kernel profile: debug (detectors on) or perf (no debugging). Default: debug, and
    /// perf for `bench`.
    #[arg(long, value_enum)]
    pub profile: Option<Profile>,
    /// Kernel series, built from Debian's source package: 6.12 (LTS, the default; heap and
    /// importer built in) or 7.3 (heap and importer as loadable modules).
    #[arg(long, value_enum, conflicts_with = "kernel_src")]
    pub kernel: Option<Series>,
    /// A Linux tree to test instead of a Debian source; never written to. Its Makefile's
    /// version picks the kernel support (patches, config, toolchain).
    #[arg(long, value_name = "DIR")]
    pub kernel_src: Option<PathBuf>,
    /// Cache identity of a rig scratch tree (set by `validate` and `bisect`): steps share
    /// one private copy and build dir, and the copy compares content, not mtimes.
    #[arg(long, hide = true, requires = "kernel_src")]
    pub tree_id: Option<String>,
}

#[derive(Args, Clone, Debug, PartialEq)]
pub struct VmArgs {
    #[command(flatten)]
    pub kernel: KernelArgs,
    /// auto probes KVM with a bounded canary boot and falls back to TCG.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: AccelChoice,
    /// Guest memory (M or G); default 1G for the debug kernel, 2G for the perf kernel.
    #[arg(long, value_parser = parse_memory)]
    pub memory: Option<String>,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub cpus: u32,
    /// Limit from starting QEMU to the guest running its command.
    #[arg(long, default_value_t = 180, value_name = "SECS", value_parser = clap::value_parser!(u64).range(10..=3600))]
    pub boot_timeout: u64,
}

impl VmArgs {
    /// These flags as a child `cargo xtask` takes them: the one place a child's VM and kernel
    /// flags are written (`bench --rig` and `bisect` start children), round-trip tested.
    pub fn to_argv(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(p) = self.kernel.profile {
            v.extend(["--profile".into(), p.name().into()]);
        }
        if let Some(s) = self.kernel.kernel {
            v.extend(["--kernel".into(), s.name().into()]);
        }
        if let Some(src) = &self.kernel.kernel_src {
            v.extend(["--kernel-src".into(), src.display().to_string()]);
        }
        if let Some(id) = &self.kernel.tree_id {
            v.extend(["--tree-id".into(), id.clone()]);
        }
        if let Some(a) = clap::ValueEnum::to_possible_value(&self.accel) {
            v.extend(["--accel".into(), a.get_name().to_string()]);
        }
        if let Some(m) = &self.memory {
            v.extend(["--memory".into(), m.clone()]);
        }
        v.extend([
            "--cpus".into(),
            self.cpus.to_string(),
            "--boot-timeout".into(),
            self.boot_timeout.to_string(),
        ]);
        v
    }
}

#[derive(Args)]
pub struct TestArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Limit for each guest test.
    #[arg(long, default_value_t = 60, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub test_timeout: u64,
    /// Limit for the whole guest run (boot included).
    #[arg(long, default_value_t = 1200, value_name = "SECS", value_parser = clap::value_parser!(u64).range(30..=86400))]
    pub run_timeout: u64,
    /// Also write the guest's KTAP here.
    #[arg(long, value_name = "FILE")]
    pub ktap: Option<PathBuf>,
    /// Also write the results as JSON here.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Also write JUnit XML here.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write changed snapshots instead of failing (review them with `git diff snapshots/`).
    #[arg(long)]
    pub accept: bool,
    /// Run per-heap tests on this heap only (repeatable); snapshots are then not compared.
    #[arg(long, value_parser = parse_heap)]
    pub heap: Vec<String>,
    /// Run part I of N of the selected tests (split by name, stable as tests are added); the
    /// checks over the whole run (kmemleak) run in every shard. Join with `cargo xtask merge`.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
    /// Rerun failed tests up to N times, each in a fresh boot; a test that then passes is
    /// FLAKY and does not fail the run (unless --strict).
    #[arg(long, default_value_t = 0, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=5))]
    pub retries: u32,
    /// A FLAKY test fails the run.
    #[arg(long)]
    pub strict: bool,
    /// Splats already known (TOML: fingerprint, reason, link, expires); a test failed only by
    /// live entries is KNOWN and does not fail the run.
    #[arg(long, value_name = "FILE")]
    pub known_issues: Option<PathBuf>,
    #[command(flatten)]
    pub kcidb: KcidbArgs,
    /// Tests to run: names, substrings, globs (`vmap`, `alloc_*`) or `=NAME`. Default: all.
    #[arg(last = true, value_name = "PATTERN")]
    pub patterns: Vec<String>,
}

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub vm: VmArgs,
    /// Limit for the whole command (boot included).
    #[arg(long, default_value_t = 600, value_name = "SECS", value_parser = clap::value_parser!(u64).range(10..=86400))]
    pub run_timeout: u64,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args)]
pub struct ParseArgs {
    /// A run directory holding guest.ktap, console.log and selected.txt.
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Triage the saved run's splats with this known-issues file (as `test` does).
    #[arg(long, value_name = "FILE")]
    pub known_issues: Option<PathBuf>,
}

/// Parses `cargo xtask ARGV...` as the CLI would (tests of code that builds a child's argv).
#[cfg(test)]
pub fn parse_cmd<S: AsRef<str>>(argv: &[S]) -> Cmd {
    let words = std::iter::once("cargo xtask").chain(argv.iter().map(AsRef::as_ref));
    match Xtask::try_parse_from(words) {
        Ok(x) => x.cmd,
        Err(e) => panic!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm_of(cmd: &[&str]) -> VmArgs {
        match parse_cmd(cmd) {
            Cmd::Test(t) => t.vm,
            Cmd::Bench(b) => b.vm,
            Cmd::BisectStep(s) => s.vm,
            _ => panic!("not a VM command: {cmd:?}"),
        }
    }

    /// `--heap` narrows the run, so it is never compared with the all-heap snapshots, in
    /// `test` and in `fuzz` alike (fuzz once compared and failed).
    #[test]
    fn a_heap_subset_is_not_compared_with_snapshots() {
        let Cmd::Test(t) = parse_cmd(&["test", "--heap", "system", "--accept"]) else {
            panic!()
        };
        assert_eq!(
            t.plan().unwrap().snapshots,
            Snapshots::Skip(SkipWhy::HeapSubset)
        );
        let Cmd::Fuzz(f) = parse_cmd(&["fuzz", "--heap", "system"]) else {
            panic!()
        };
        assert_eq!(f.plan(1).snapshots, Snapshots::Skip(SkipWhy::HeapSubset));
        let Cmd::Fuzz(f) = parse_cmd(&["fuzz", "--seconds", "5"]) else {
            panic!()
        };
        let p = f.plan(9);
        assert_eq!(p.snapshots, Snapshots::Compare { accept: false });
        assert_eq!(p.suite.patterns, ["fuzz", "kmemleak"]);
        assert_eq!(
            p.suite.fuzz.as_ref().map(|f| (f.seconds, f.seed)),
            Some((5, 9))
        );
        // Three heaps side by side on two CPUs: a column may take twice its budget.
        assert_eq!(p.suite.test_timeout, Duration::from_secs(5 * 2 + 60));
        let Cmd::Fuzz(f) = parse_cmd(&["fuzz", "--seconds", "5", "--cpus", "1"]) else {
            panic!()
        };
        assert_eq!(
            f.plan(9).suite.test_timeout,
            Duration::from_secs(5 * 3 + 60)
        );
        let Cmd::Test(t) = parse_cmd(&["test", "--accept", "--", "zeroing"]) else {
            panic!()
        };
        let p = t.plan().unwrap();
        assert_eq!(p.snapshots, Snapshots::Compare { accept: true });
        assert_eq!(p.kernel.profile, Profile::Debug);
        // Guest memory follows the kernel's profile unless given, in parse_memory's form.
        assert_eq!(p.vm.memory, parse_memory("1G").unwrap());
        let Cmd::Bench(b) = parse_cmd(&["bench", "--quick"]) else {
            panic!()
        };
        assert_eq!(b.plan().kernel.profile, Profile::Perf);
        assert_eq!(b.plan().vm.memory, parse_memory("2G").unwrap());
        let Cmd::Test(t) = parse_cmd(&["test", "--memory", "3G"]) else {
            panic!()
        };
        assert_eq!(t.plan().unwrap().vm.memory, "3072M");
    }

    #[test]
    fn vm_flags_round_trip_through_clap() {
        for flags in [
            &[][..],
            &[
                "--memory",
                "4G",
                "--cpus",
                "4",
                "--accel",
                "tcg",
                "--boot-timeout",
                "99",
            ][..],
            &["--profile", "perf", "--kernel-src", "/k", "--tree-id", "t1"][..],
        ] {
            let vm = vm_of(&[&["test"][..], flags].concat());
            let argv = vm.to_argv();
            let again: Vec<&str> = argv.iter().map(String::as_str).collect();
            assert_eq!(vm_of(&[&["test"][..], &again].concat()), vm, "{argv:?}");
        }
    }
}
