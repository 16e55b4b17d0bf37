//! From captured output to typed results: KTAP (`ktap`), kernel console splats (`splat`), and
//! the two combined with how the session ended (`results`). Each parser is tested on real
//! captured logs (`xtask/tests/fixtures/`).

pub mod ktap;
pub mod results;
pub mod splat;

/// A test's (or one heap's) verdict, as KTAP reports it and as the rig judges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TestVerdict {
    Pass,
    Fail,
    Skip,
}
