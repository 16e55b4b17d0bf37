//! KernelCI's KCIDB format (schema v5.3, `kernelci/kcidb-io`): one checkout per kernel source,
//! one build per kernel × profile, one test per test × heap (`heaprig.TEST.HEAP`), benchmark
//! medians as `number`s, and known issues as KCIDB issues with incidents on the tests they
//! hit. Built from saved results only ([`Provenance`] is in every results.json), so `test`,
//! `merge`, `validate` and `bench` write the same shapes. Every file written is validated with
//! the pinned kcidb-io before the command reports success.

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xshell::cmd;

use crate::env::Env;
use crate::hash::sha256_hex;
use crate::parse::results::{RunResult, TestVerdict};
use crate::plan::{KcidbPlan, KernelPlan, VmPlan};
use crate::stages::{setup, Prepared, Times};

/// What was built and run, and where: recorded with every run so a saved run can be
/// reported to KCIDB later (`merge --kcidb`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Provenance {
    /// The kernel source: `debian:VERSION`, `git:COMMIT+DIFFHASH` or `unversioned:...`.
    pub source: String,
    /// An https:// remote of a git tree, when it has one.
    pub git_url: Option<String>,
    /// sha256 over the patches applied on top of the commit (`validate`), KCIDB's definition.
    pub patchset_hash: Option<String>,
    pub profile: String,
    pub arch: String,
    /// The Kconfig fragments merged, in order.
    pub fragments: Vec<String>,
    pub compiler: String,
    /// Seconds this run spent building (0 when the cached kernel was current).
    pub build_seconds: f64,
    pub rebuilt: bool,
    /// `QEMU TCG, 2 vCPUs, 2G` and the like.
    pub machine: String,
    /// The run's share of every id (`--kcidb-run-id`, else start time and pid).
    pub run_id: String,
    /// RFC 3339, UTC.
    pub started: String,
}

impl Provenance {
    /// What a run built and booted (`started` taken before the build).
    pub fn of(
        env: &Env,
        kernel: &KernelPlan,
        vm: &VmPlan,
        p: &Prepared,
        times: &Times,
        started: String,
        run_id: Option<String>,
    ) -> Provenance {
        let sh = &env.sh;
        let first = |tool: &str| {
            setup::tool_version(sh, tool).unwrap_or_else(|| format!("{tool} (unknown)"))
        };
        let git_url = kernel.src.as_ref().and_then(|src| {
            cmd!(sh, "git -C {src} remote get-url origin")
                .quiet()
                .ignore_stderr()
                .read()
                .ok()
                .filter(|u| u.starts_with("https://"))
        });
        Provenance {
            source: p.identity.clone(),
            git_url,
            patchset_hash: None,
            profile: kernel.profile.name().to_string(),
            arch: "x86_64".into(),
            fragments: crate::stages::kernel::fragment_names(kernel.profile, p.built.series),
            compiler: format!(
                "{} + {}",
                first(&p.built.series.toolchain()[0]),
                first(crate::stages::kernel::KERNEL_RUSTC)
            ),
            build_seconds: times.get("build").unwrap_or(0.0),
            rebuilt: p.built.rebuilt,
            machine: format!("QEMU {:?}, {} vCPUs, {}", p.accel, vm.cpus, vm.memory),
            run_id: run_id.unwrap_or_else(default_run_id),
            started,
        }
    }
}

/// The id part a run gets when none was given: unique per machine and second.
pub fn default_run_id() -> String {
    format!("{}-{}", crate::clock::unix_now(), std::process::id())
}

#[derive(Serialize, Debug)]
pub struct Doc {
    pub version: Version,
    pub checkouts: Vec<Checkout>,
    pub builds: Vec<Build>,
    pub tests: Vec<Test>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub issues: Vec<Issue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub incidents: Vec<Incident>,
}

#[derive(Serialize, Debug)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
}

#[derive(Serialize, Debug)]
pub struct Checkout {
    pub id: String,
    pub origin: String,
    pub tree_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_repository_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_commit_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patchset_hash: Option<String>,
    pub comment: String,
    pub start_time: String,
    pub valid: bool,
    pub misc: serde_json::Value,
}

#[derive(Serialize, Debug)]
pub struct Build {
    pub id: String,
    pub origin: String,
    pub checkout_id: String,
    pub architecture: String,
    pub compiler: String,
    pub config_name: String,
    pub duration: f64,
    pub start_time: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_excerpt: Option<String>,
    pub misc: serde_json::Value,
}

#[derive(Serialize, Debug)]
pub struct Number {
    pub value: f64,
    pub unit: &'static str,
}

#[derive(Serialize, Debug)]
pub struct Environment {
    pub comment: String,
}

#[derive(Serialize, Debug)]
pub struct Test {
    pub id: String,
    pub origin: String,
    pub build_id: String,
    pub path: String,
    pub status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_excerpt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<Number>,
    pub start_time: String,
    pub environment: Environment,
    pub misc: serde_json::Value,
}

#[derive(Serialize, Debug)]
pub struct Culprit {
    pub code: bool,
}

#[derive(Serialize, Debug)]
pub struct Issue {
    pub id: String,
    pub version: u32,
    pub origin: String,
    pub report_url: String,
    pub comment: String,
    pub culprit: Culprit,
    pub misc: serde_json::Value,
}

#[derive(Serialize, Debug)]
pub struct Incident {
    pub id: String,
    pub origin: String,
    pub issue_id: String,
    pub issue_version: u32,
    pub test_id: String,
    pub present: bool,
}

/// KCIDB caps log excerpts at 16 KiB.
const EXCERPT: usize = 16_000;

fn excerpt(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.chars().take(EXCERPT).collect())
}

/// A test path component: KCIDB allows `[a-zA-Z0-9_-]`.
fn component(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn status(v: TestVerdict) -> &'static str {
    match v {
        TestVerdict::Pass => "PASS",
        // A known issue still failed the test; the incident says it is known.
        TestVerdict::Fail | TestVerdict::Known => "FAIL",
        TestVerdict::Skip => "SKIP",
        // The last attempt passed; misc and the excerpt keep the failure.
        TestVerdict::Flaky => "PASS",
    }
}

/// One KCIDB test: a test's heap column, or a test without heaps.
struct Column<'a> {
    path: String,
    verdict: TestVerdict,
    reasons: &'a [String],
    splats: Vec<&'a crate::parse::splat::Splat>,
    ms: Option<u64>,
}

/// Builds one document from any number of runs.
pub struct Builder {
    origin: String,
    run_id: String,
    doc: Doc,
}

impl Builder {
    pub fn new(plan: &KcidbPlan, first: &Provenance) -> Builder {
        Builder {
            origin: plan.origin.clone(),
            run_id: plan.run_id.clone().unwrap_or_else(|| first.run_id.clone()),
            doc: Doc {
                version: Version { major: 5, minor: 3 },
                checkouts: vec![],
                builds: vec![],
                tests: vec![],
                issues: vec![],
                incidents: vec![],
            },
        }
    }

    fn id(&self, rest: &str) -> String {
        format!("{}:{}.{rest}", self.origin, self.run_id)
    }

    /// The checkout and build of `p` (each added once); returns the build id.
    pub fn build(&mut self, p: &Provenance, ok: bool, log: Option<&str>) -> String {
        let key = &sha256_hex(format!("{}\n{:?}", p.source, p.patchset_hash).as_bytes())[..12];
        let checkout_id = self.id(key);
        if !self.doc.checkouts.iter().any(|c| c.id == checkout_id) {
            let commit = p
                .source
                .strip_prefix("git:")
                .and_then(|s| s.split('+').next())
                .filter(|c| c.len() == 40)
                .map(str::to_string);
            let tree_name = if p.source.starts_with("debian:") {
                "debian-linux-source".to_string()
            } else {
                "local".to_string()
            };
            self.doc.checkouts.push(Checkout {
                id: checkout_id.clone(),
                origin: self.origin.clone(),
                tree_name,
                git_repository_url: p.git_url.clone(),
                git_commit_hash: commit,
                patchset_hash: p.patchset_hash.clone(),
                comment: format!("heaprig kernel source {}", p.source),
                start_time: p.started.clone(),
                valid: true,
                misc: serde_json::json!({ "source": p.source }),
            });
        }
        let build_id = format!("{checkout_id}.{}", component(&p.profile));
        if !self.doc.builds.iter().any(|b| b.id == build_id) {
            self.doc.builds.push(Build {
                id: build_id.clone(),
                origin: self.origin.clone(),
                checkout_id,
                architecture: p.arch.clone(),
                compiler: p.compiler.clone(),
                config_name: format!("heaprig-{}", p.profile),
                duration: p.build_seconds,
                start_time: p.started.clone(),
                status: if ok { "PASS" } else { "FAIL" },
                log_excerpt: log.and_then(excerpt),
                misc: serde_json::json!({
                    "fragments": p.fragments,
                    "rebuilt": p.rebuilt,
                }),
            });
        }
        build_id
    }

    fn test(
        &mut self,
        build_id: &str,
        p: &Provenance,
        path: String,
        status: &'static str,
    ) -> &mut Test {
        self.doc.tests.push(Test {
            id: format!("{build_id}.{path}"),
            origin: self.origin.clone(),
            build_id: build_id.to_string(),
            path,
            status,
            duration: None,
            log_excerpt: None,
            number: None,
            start_time: p.started.clone(),
            environment: Environment {
                comment: p.machine.clone(),
            },
            misc: serde_json::Value::Null,
        });
        self.doc.tests.last_mut().expect("just pushed")
    }

    /// Every test × heap of a run, the tests that never ran (MISS), and the rig's own
    /// problems as one ERROR node.
    pub fn run(&mut self, build_id: &str, p: &Provenance, r: &RunResult) {
        for t in &r.tests {
            let columns: Vec<Column> = if t.heaps.is_empty() {
                vec![Column {
                    path: format!("heaprig.{}", component(&t.name)),
                    verdict: t.verdict,
                    reasons: &t.reasons,
                    splats: t.splats.iter().collect(),
                    ms: t.time_ms,
                }]
            } else {
                t.heaps
                    .iter()
                    .map(|h| Column {
                        path: format!("heaprig.{}.{}", component(&t.name), component(&h.heap)),
                        verdict: h.verdict,
                        reasons: &h.reasons,
                        splats: h.splats.iter().chain(&t.splats).collect(),
                        ms: h.time_ms,
                    })
                    .collect()
            };
            for Column {
                path,
                verdict,
                reasons,
                splats,
                ms,
            } in columns
            {
                let mut log = reasons.join("\n");
                for s in &splats {
                    log.push_str(&format!(
                        "\n--- kernel {} (normalised) ---\n",
                        s.kind.label()
                    ));
                    log.push_str(&s.lines.join("\n"));
                }
                let test = self.test(build_id, p, path, status(verdict));
                test.duration = ms.map(|ms| ms as f64 / 1000.0);
                test.log_excerpt = excerpt(&log);
                test.misc = serde_json::json!({ "heaprig_verdict": verdict.word() });
                let test_id = test.id.clone();
                if verdict == TestVerdict::Known {
                    for s in splats {
                        self.incident(&test_id, r, &s.title);
                    }
                }
            }
        }
        for n in &r.not_run {
            let t = self.test(build_id, p, format!("heaprig.{}", component(n)), "MISS");
            t.log_excerpt = excerpt(&format!("not run: the guest stopped first ({})", r.ending));
        }
        let mut problems: Vec<String> = r.problems.clone();
        problems.extend(
            r.splats_outside_tests
                .iter()
                .map(|s| format!("kernel {} outside any test: {}", s.kind.label(), s.title)),
        );
        if !problems.is_empty() || r.boot_failed {
            let t = self.test(build_id, p, "heaprig".into(), "ERROR");
            t.log_excerpt = excerpt(&problems.join("\n"));
        }
    }

    /// An incident of the known issue whose fingerprint is `title`, on `test_id`.
    fn incident(&mut self, test_id: &str, r: &RunResult, title: &str) {
        let Some(seen) = r
            .known_seen
            .iter()
            .find(|k| k.fingerprint == title && !k.expired)
        else {
            return;
        };
        let issue_id = format!(
            "{}:known-{}",
            self.origin,
            &sha256_hex(title.as_bytes())[..16]
        );
        if !self.doc.issues.iter().any(|i| i.id == issue_id) {
            self.doc.issues.push(Issue {
                id: issue_id.clone(),
                version: 1,
                origin: self.origin.clone(),
                report_url: seen.link.clone(),
                comment: seen.reason.clone(),
                culprit: Culprit { code: true },
                misc: serde_json::json!({ "fingerprint": title, "expires": seen.expires }),
            });
        }
        let n = self.doc.incidents.len() + 1;
        let id = self.id(&format!("incident{n}"));
        self.doc.incidents.push(Incident {
            id,
            origin: self.origin.clone(),
            issue_id,
            issue_version: 1,
            test_id: test_id.to_string(),
            present: true,
        });
    }

    /// Benchmark medians: DONE tests with the value in nanoseconds, one per operation ×
    /// size × heap variant (`heaprig.bench.sync_start_end.4096.rust_system`).
    pub fn bench(&mut self, build_id: &str, p: &Provenance, rows: &[crate::cmd::bench::Row]) {
        for row in rows {
            for (variant, s) in &row.by_variant {
                let path = format!(
                    "heaprig.bench.{}.{}.{}",
                    component(&row.op),
                    row.size,
                    component(variant)
                );
                let t = self.test(build_id, p, path, "DONE");
                t.number = Some(Number {
                    value: s.median_ns as f64,
                    unit: "ns",
                });
                t.misc = serde_json::json!({
                    "p99_ns": s.p99_ns, "min_ns": s.min_ns, "samples": s.samples,
                });
            }
        }
    }

    pub fn finish(self) -> Doc {
        self.doc
    }
}

/// Writes `doc` to `path` and validates it with the pinned kcidb-io schema.
pub fn write(env: &Env, doc: &Doc, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(doc)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    validate(env, path)?;
    println!(
        "kcidb: {} ({} checkout(s), {} build(s), {} test(s), {} issue(s); valid against kcidb-io {} schema v5.3)",
        path.display(),
        doc.checkouts.len(),
        doc.builds.len(),
        doc.tests.len(),
        doc.issues.len(),
        crate::stages::setup::KCIDB_IO
    );
    Ok(())
}

/// Checks a KCIDB file against the v5.3 schema with the kcidb-io `setup` installed.
pub fn validate(env: &Env, path: &Path) -> Result<()> {
    let python = crate::stages::setup::venv_python(env);
    let script = "import json, sys, kcidb_io\nkcidb_io.schema.V5_3.validate_exactly(json.load(open(sys.argv[1])))\n";
    let out = cmd!(env.sh, "{python} -c {script} {path}")
        .quiet()
        .ignore_status()
        .output()
        .with_context(|| format!("running kcidb-io's validator ({})", python.display()))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        bail!(
            "{} does not validate against the KCIDB v5.3 schema: {last}",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::results::combine;
    use crate::parse::{ktap, splat};
    use crate::stages::vm::Ending;

    fn provenance() -> Provenance {
        Provenance {
            source: "git:0123456789abcdef0123456789abcdef01234567+deadbeef".into(),
            git_url: None,
            patchset_hash: None,
            profile: "debug".into(),
            arch: "x86_64".into(),
            fragments: vec!["base.config".into(), "debug.config".into()],
            compiler: "clang 14 + rustc 1.85".into(),
            build_seconds: 1.5,
            rebuilt: true,
            machine: "QEMU TCG, 2 vCPUs, 2G".into(),
            run_id: "r1".into(),
            started: "2026-11-30T12:00:00Z".into(),
        }
    }

    #[test]
    fn a_run_maps_to_checkouts_builds_and_tests() {
        let k = ktap::parse(&crate::fixture("guest-pass.ktap"));
        let log = "[ 1.0] heaprig: begin set_name/system\n[ 1.1] WARNING: CPU: 0 PID: 9 at x.c:1 f\n[ 1.2] ---[ end trace 0 ]---\n[ 1.3] heaprig: end set_name/system\n";
        let mut names: Vec<String> = k.tests.iter().map(|t| t.name.clone()).collect();
        names.push("never_ran".into());
        let r = combine(&k, &splat::parse(log), &names, &Ending::Exited { code: 0 });
        let plan = KcidbPlan {
            path: "x".into(),
            origin: "heaprig".into(),
            run_id: None,
        };
        let p = provenance();
        let mut b = Builder::new(&plan, &p);
        let build = b.build(&p, true, None);
        b.run(&build, &p, &r);
        let doc = b.finish();
        assert_eq!(doc.checkouts.len(), 1);
        assert_eq!(
            doc.checkouts[0].git_commit_hash.as_deref(),
            Some("0123456789abcdef0123456789abcdef01234567")
        );
        let by_path = |path: &str| doc.tests.iter().find(|t| t.path == path).unwrap();
        let splatted = by_path("heaprig.set_name.system");
        assert_eq!(splatted.status, "FAIL");
        assert!(splatted
            .log_excerpt
            .as_deref()
            .unwrap()
            .contains("kernel WARNING"));
        assert_eq!(by_path("heaprig.set_name.rust_system").status, "PASS");
        assert_eq!(by_path("heaprig.never_ran").status, "MISS");
        assert!(doc.tests.iter().all(|t| t.id.starts_with("heaprig:r1.")));
        let ids: std::collections::BTreeSet<&str> =
            doc.tests.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids.len(), doc.tests.len(), "test ids are unique");
    }

    #[test]
    fn paths_keep_to_kcidbs_alphabet() {
        assert_eq!(component("a.b/c d"), "a_b_c_d");
        assert_eq!(status(TestVerdict::Known), "FAIL");
        assert_eq!(status(TestVerdict::Flaky), "PASS");
    }
}
