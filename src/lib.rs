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
pub enum SnapshotMatch {
    Match,
    /// Different or missing; insta has printed the diff and, unless in CI, written
    /// `snapshots/<name>.snap.new` for `cargo insta review`.
    Mismatch,
}

/// The profile whose results `snapshots/` records; the others may override single tests.
pub const DEFAULT_PROFILE: &str = "debug";

/// Where `name`'s snapshot for `profile` lives, relative to this file: `snapshots/<profile>/`
/// when that file exists (a test whose result legitimately differs there, such as a detector
/// the perf kernel does not build, which SKIPs), else `snapshots/`.
pub fn snapshot_dir(profile: &str, name: &str) -> String {
    let own = format!("snapshots/{profile}");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    if profile != DEFAULT_PROFILE && root.join(&own).join(format!("{name}.snap")).is_file() {
        format!("../{own}")
    } else {
        "../snapshots".to_string()
    }
}

/// Compares `value` with `name`'s snapshot for `profile` (see [`snapshot_dir`]).
pub fn check(name: &str, profile: &str, value: &impl Serialize) -> SnapshotMatch {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(snapshot_dir(profile, name));
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
        Ok(()) => SnapshotMatch::Match,
        Err(_) => SnapshotMatch::Mismatch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_profile_overrides_only_the_snapshots_it_has() {
        // snapshots/perf/ holds the tests whose detector the perf kernel does not build.
        assert_eq!(snapshot_dir("perf", "kmemleak"), "../snapshots/perf");
        assert_eq!(snapshot_dir("perf", "zeroing"), "../snapshots");
        // The default profile's snapshots are the recorded ones, whatever else exists.
        assert_eq!(snapshot_dir(DEFAULT_PROFILE, "kmemleak"), "../snapshots");
    }
}
