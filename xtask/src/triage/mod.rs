//! Triage: what a maintainer's CI decides about failures after the parser has judged them.
//! `known` turns splats a known-issues file lists into KNOWN (never paging anyone twice for
//! the same bug); `flaky` merges the reruns of failed tests, turning a failure that does not
//! reproduce into FLAKY. Both work on the typed result only, so `parse` and `merge` can apply
//! them to saved runs.

pub mod flaky;
pub mod known;
