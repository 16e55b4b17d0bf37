//! Typed plans: what a command will do, built once from its flags (`flags.rs`, the CLI
//! boundary) and handed to the stages, as kunit_tool turns argparse into request dataclasses.
//! No stage sees a flag struct.

use std::path::PathBuf;
use std::time::Duration;

use heaprig_protocol::shard::Shard;

use crate::stages::kernel::Profile;
use crate::stages::series::Series;
use crate::stages::vm::AccelChoice;
use crate::triage::known::KnownIssues;

/// Which kernel to build.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelPlan {
    pub profile: Profile,
    /// Which Debian kernel source to build when `src` is None (a tree's own version picks
    /// its kernel support).
    pub series: Series,
    /// A Linux tree to test (never written to); Debian's source of `series` when None.
    pub src: Option<PathBuf>,
    /// Cache identity of a rig scratch tree (validate, bisect): its steps share one private
    /// copy and build dir.
    pub tree_id: Option<String>,
    /// One small edit made to the prepared source before the build (`mutate`); undone by
    /// the next build that does not ask for it.
    pub mutation: Option<Mutation>,
}

/// A mutant's edit: `from`, which must occur exactly once in `file` (a path in the
/// prepared kernel tree), becomes `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mutation {
    pub name: String,
    pub file: String,
    pub from: String,
    pub to: String,
}

/// The guest machine, and how long it may take to reach its command.
#[derive(Debug, Clone, PartialEq)]
pub struct VmPlan {
    pub accel: AccelChoice,
    /// QEMU's size syntax, validated (`2048M`).
    pub memory: String,
    pub cpus: u32,
    pub boot_timeout: Duration,
}

/// The fuzzer's budget and seed when a command asks for more than the suite gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct FuzzPlan {
    pub seconds: u64,
    pub seed: u64,
    pub ops: Option<u64>,
}

/// Which tests run, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct SuitePlan {
    /// Names, substrings or globs; all tests when empty.
    pub patterns: Vec<String>,
    pub test_timeout: Duration,
    /// The whole guest run, boot included.
    pub run_timeout: Duration,
    /// Per-heap tests on these heaps only; all when empty.
    pub heaps: Vec<String>,
    pub fuzz: Option<FuzzPlan>,
    /// This run's part of the selection.
    pub shard: Option<Shard>,
    /// 0 for a first run; N for the N-th retry of failed tests.
    pub attempt: u32,
}

impl SuitePlan {
    /// What of this plan decides a result, for result-cache keys.
    pub fn cache_part(&self) -> String {
        format!(
            "suite {} {} {} heaps {} fuzz {:?} shard {:?} attempt {}",
            self.test_timeout.as_secs(),
            self.run_timeout.as_secs(),
            self.patterns.join("\u{1f}"),
            self.heaps.join("\u{1f}"),
            self.fuzz,
            self.shard,
            self.attempt
        )
    }
}

/// Whether a run is compared with the recorded snapshots.
#[derive(Debug, Clone, PartialEq)]
pub enum Snapshots {
    Compare {
        accept: bool,
    },
    /// Not compared, and why (said on the terminal when it is the user's choice).
    Skip(SkipWhy),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SkipWhy {
    /// `--heap` leaves the other heaps out, and snapshots hold every heap.
    HeapSubset,
    /// `validate` and `bisect` compare runs with each other, not with snapshots.
    ComparedElsewhere,
    /// A retry of failed tests: its verdicts are merged into the first run's.
    Retry,
}

/// What is decided about failures after parsing (`crate::triage`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Triage {
    /// Fresh-boot reruns of failed tests; a test that then passes is FLAKY.
    pub retries: u32,
    /// FLAKY fails the run.
    pub strict: bool,
    pub known: KnownIssues,
}

/// A KernelCI (KCIDB v5.3) file to write, and the identities in it.
#[derive(Debug, Clone, PartialEq)]
pub struct KcidbPlan {
    pub path: PathBuf,
    /// Names the submitting CI system; the prefix of every id.
    pub origin: String,
    /// Unique per run (shards of one run share it); a time-based one when None.
    pub run_id: Option<String>,
}

/// Copies of the results the user asked for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outputs {
    pub ktap: Option<PathBuf>,
    pub json: Option<PathBuf>,
    pub junit: Option<PathBuf>,
    pub kcidb: Option<KcidbPlan>,
}

/// `cargo xtask test`, and the suite runs of `fuzz`, `validate` and `bisect-step`.
#[derive(Debug, Clone, PartialEq)]
pub struct TestPlan {
    pub kernel: KernelPlan,
    pub vm: VmPlan,
    pub suite: SuitePlan,
    pub snapshots: Snapshots,
    pub triage: Triage,
    pub outputs: Outputs,
}

/// `cargo xtask bench` (and `validate --bench`).
#[derive(Debug, Clone, PartialEq)]
pub struct BenchPlan {
    pub kernel: KernelPlan,
    pub vm: VmPlan,
    pub quick: bool,
    pub run_timeout: Duration,
    pub kcidb: Option<KcidbPlan>,
}

impl BenchPlan {
    /// What of this plan decides a result, for result-cache keys.
    pub fn cache_part(&self) -> String {
        format!("bench {} {}", self.quick, self.run_timeout.as_secs())
    }
}

/// `cargo xtask exec`.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecPlan {
    pub kernel: KernelPlan,
    pub vm: VmPlan,
    pub command: Vec<String>,
    pub run_timeout: Duration,
}

/// `cargo xtask mutate`: the unmutated suite, then the same suite on each mutant.
#[derive(Debug, Clone, PartialEq)]
pub struct MutatePlan {
    /// The suite as it runs on the unmutated kernel (its `kernel.mutation` is None).
    pub suite: TestPlan,
    pub cases: Vec<crate::mutants::Case>,
    pub report: Option<PathBuf>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_that_changes_a_result_changes_the_cache_key() {
        let base = SuitePlan {
            patterns: vec![],
            test_timeout: Duration::from_secs(60),
            run_timeout: Duration::from_secs(1200),
            heaps: vec![],
            fuzz: None,
            shard: None,
            attempt: 0,
        };
        let variants = [
            SuitePlan {
                patterns: vec!["sync".into()],
                ..base.clone()
            },
            SuitePlan {
                heaps: vec!["system".into()],
                ..base.clone()
            },
            SuitePlan {
                fuzz: Some(FuzzPlan {
                    seconds: 5,
                    seed: 1,
                    ops: None,
                }),
                ..base.clone()
            },
            SuitePlan {
                attempt: 1,
                ..base.clone()
            },
        ];
        for v in variants {
            assert_ne!(v.cache_part(), base.cache_part(), "{v:?}");
        }
    }
}
