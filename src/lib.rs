//! Snapshot checks for heaprig guest results.
//!
//! This crate is the workspace root package so that `snapshots/` lies inside a package
//! directory, which is where `cargo insta review` looks for pending snapshots. The rig calls
//! [`check`] once per test with the normalised result; insta decides pass / fail / pending
//! according to `INSTA_UPDATE` (CI sets `CI=true`, which makes insta never write).

use std::panic::{self, AssertUnwindSafe};

use serde::Serialize;

/// The result of comparing one value with its stored snapshot.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Match,
    /// Different or missing; insta has printed the diff and, unless in CI, written
    /// `snapshots/<name>.snap.new` for `cargo insta review`.
    Mismatch,
}

/// Compares `value` with `snapshots/<name>.snap`.
pub fn check(name: &str, value: &impl Serialize) -> Verdict {
    let mut settings = insta::Settings::clone_current();
    // Relative to this file: the workspace root's snapshots/ directory.
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_description(format!("heaprig guest test {name} (normalised)"));

    // insta reports a mismatch by panicking; the rig turns that into a verdict and keeps the
    // diff insta printed, but not a backtrace.
    let hook = panic::take_hook();
    panic::set_hook(Box::new(|_| {}));
    let result = panic::catch_unwind(AssertUnwindSafe(|| {
        settings.bind(|| insta::assert_yaml_snapshot!(name, value));
    }));
    panic::set_hook(hook);
    match result {
        Ok(()) => Verdict::Match,
        Err(_) => Verdict::Mismatch,
    }
}
