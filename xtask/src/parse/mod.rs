//! From captured output to typed results: KTAP (`ktap`), kernel console splats (`splat`), and
//! the two combined with how the session ended (`results`). Each parser is tested on real
//! captured logs (`xtask/tests/fixtures/`).

pub mod ktap;
pub mod results;
pub mod splat;

/// A test's (or one heap's) verdict, as KTAP reports it and as the rig judges it. The guest
/// only says pass, fail or skip; `Known` and `Flaky` are the triage's (`crate::triage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TestVerdict {
    Pass,
    Fail,
    Skip,
    /// Failed only through kernel splats a live known-issues entry lists: does not fail the run.
    Known,
    /// Failed, then passed when retried: does not fail the run unless `--strict`.
    Flaky,
}

impl TestVerdict {
    /// How the reports spell it.
    pub fn word(self) -> &'static str {
        match self {
            TestVerdict::Pass => "PASS",
            TestVerdict::Fail => "FAIL",
            TestVerdict::Skip => "SKIP",
            TestVerdict::Known => "KNOWN",
            TestVerdict::Flaky => "FLAKY",
        }
    }
}
