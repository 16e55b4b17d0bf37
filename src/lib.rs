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
/// The kernel series whose results `snapshots/` records.
pub const DEFAULT_KERNEL: &str = "6.12";

/// Which kernel and profile a result comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Variant<'a> {
    pub kernel: &'a str,
    pub profile: &'a str,
}

impl Variant<'_> {
    /// Override directories under `snapshots/`, most specific first: `<kernel>/<profile>`,
    /// `<profile>` (a detector the profile does not build, which SKIPs on every kernel),
    /// `<kernel>` (a fact that legitimately differs on that kernel).
    fn overrides(&self) -> Vec<String> {
        let k = self.kernel != DEFAULT_KERNEL;
        let p = self.profile != DEFAULT_PROFILE;
        let mut v = Vec::new();
        if k && p {
            v.push(format!("{}/{}", self.kernel, self.profile));
        }
        if p {
            v.push(self.profile.to_string());
        }
        if k {
            v.push(self.kernel.to_string());
        }
        v
    }
}

fn root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where `name`'s snapshot for `variant` lives, relative to this file: the first override
/// directory (see [`Variant`]) holding `<name>.snap`, else `snapshots/`.
pub fn snapshot_dir(variant: Variant<'_>, name: &str) -> String {
    variant
        .overrides()
        .into_iter()
        .find(|d| {
            root()
                .join("snapshots")
                .join(d)
                .join(format!("{name}.snap"))
                .is_file()
        })
        .map_or_else(
            || "../snapshots".to_string(),
            |d| format!("../snapshots/{d}"),
        )
}

/// Where `--accept` records `name` for `variant`: its most specific override directory
/// (the default variant records into `snapshots/`); [`prune`] then removes an override equal
/// to what the variant would read without it.
fn accept_dir(variant: Variant<'_>) -> String {
    variant.overrides().into_iter().next().map_or_else(
        || "../snapshots".to_string(),
        |d| format!("../snapshots/{d}"),
    )
}

/// After `--accept`: deletes `name`'s override for `variant` when it is byte-identical to the
/// snapshot the variant reads without it, so an override exists only where results differ.
pub fn prune(variant: Variant<'_>, name: &str) -> std::io::Result<bool> {
    let Some(own) = variant.overrides().into_iter().next() else {
        return Ok(false);
    };
    let file = format!("{name}.snap");
    let own_path = root().join("snapshots").join(&own).join(&file);
    let Ok(mine) = std::fs::read(&own_path) else {
        return Ok(false);
    };
    let below = variant
        .overrides()
        .into_iter()
        .skip(1)
        .map(|d| root().join("snapshots").join(d).join(&file))
        .find(|p| p.is_file())
        .unwrap_or_else(|| root().join("snapshots").join(&file));
    if std::fs::read(below).ok().as_deref() == Some(mine.as_slice()) {
        std::fs::remove_file(own_path)?;
        return Ok(true);
    }
    Ok(false)
}

/// Compares `value` with `name`'s snapshot for `variant` (see [`snapshot_dir`]); with
/// `accept`, records it in the variant's own place (see [`accept_dir`]).
pub fn check(
    name: &str,
    variant: Variant<'_>,
    accept: bool,
    value: &impl Serialize,
) -> SnapshotMatch {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(if accept {
        accept_dir(variant)
    } else {
        snapshot_dir(variant, name)
    });
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

    const PERF: Variant<'static> = Variant {
        kernel: DEFAULT_KERNEL,
        profile: "perf",
    };
    const DEFAULT: Variant<'static> = Variant {
        kernel: DEFAULT_KERNEL,
        profile: DEFAULT_PROFILE,
    };

    #[test]
    fn a_profile_overrides_only_the_snapshots_it_has() {
        // snapshots/perf/ holds the tests whose detector the perf kernel does not build.
        assert_eq!(snapshot_dir(PERF, "kmemleak"), "../snapshots/perf");
        assert_eq!(snapshot_dir(PERF, "zeroing"), "../snapshots");
        // The default variant's snapshots are the recorded ones, whatever else exists.
        assert_eq!(snapshot_dir(DEFAULT, "kmemleak"), "../snapshots");
    }

    #[test]
    fn overrides_go_from_most_to_least_specific() {
        let v = Variant {
            kernel: "7.3",
            profile: "perf",
        };
        assert_eq!(v.overrides(), ["7.3/perf", "perf", "7.3"]);
        let v = Variant {
            kernel: "7.3",
            profile: DEFAULT_PROFILE,
        };
        assert_eq!(v.overrides(), ["7.3"]);
        assert!(DEFAULT.overrides().is_empty());
        assert_eq!(accept_dir(DEFAULT), "../snapshots");
        assert_eq!(accept_dir(PERF), "../snapshots/perf");
    }
}
