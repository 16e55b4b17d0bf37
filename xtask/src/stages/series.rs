//! The kernel series the rig supports, and everything that differs between them: where the
//! source comes from, which patches and config fragment apply, which toolchain builds it,
//! and whether the heap is built in or a module. One table; nothing else matches on versions.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use xshell::cmd;

use crate::env::Env;

/// A kernel series (`--kernel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Series {
    /// 6.12 LTS (Debian bookworm's `linux-source-6.12`): heap and importer built in, since
    /// 6.12 exports no `dma_heap_add` to modules.
    #[serde(rename = "6.12")]
    V6_12,
    /// 7.3 (Debian trixie-backports' `linux-source-7.3`): heap and importer are modules.
    #[serde(rename = "7.3")]
    V7_3,
}

/// How a series' Debian source package is obtained.
pub enum Fetch {
    /// A package of the machine's own suites, installed by `setup` like any other.
    Installed,
    /// A package of another suite, downloaded with a private apt state into the cache and
    /// unpacked there; the system's package set is never touched.
    Download { suite: &'static str },
}

/// The loadable modules the rig loads in the guest before the tests, in this order (paths
/// of `.ko` files in the build directory).
const MODULES_7_3: &[&str] = &[
    "drivers/dma-buf/heaps/rust_system_heap.ko",
    "drivers/dma-buf/dmabuf_test_importer.ko",
];

impl Series {
    pub const ALL: [Series; 2] = [Series::V6_12, Series::V7_3];
    /// The series a command uses without `--kernel` (see the README for why).
    pub const DEFAULT: Series = Series::V6_12;

    pub fn name(self) -> &'static str {
        match self {
            Series::V6_12 => "6.12",
            Series::V7_3 => "7.3",
        }
    }

    fn version(self) -> (u32, u32) {
        match self {
            Series::V6_12 => (6, 12),
            Series::V7_3 => (7, 3),
        }
    }

    /// The Debian source package.
    pub fn package(self) -> String {
        format!("linux-source-{}", self.name())
    }

    pub fn fetch(self) -> Fetch {
        match self {
            Series::V6_12 => Fetch::Installed,
            Series::V7_3 => Fetch::Download {
                suite: "trixie-backports",
            },
        }
    }

    /// The quilt-style list of `kernel-patches/` files for this series.
    pub fn series_file(self) -> String {
        format!("series-{}", self.name())
    }

    /// The series' own Kconfig fragment (merged after the profile's).
    pub fn fragment(self) -> String {
        format!("kernel-{}.config", self.name())
    }

    /// The suffix of the series' LLVM tools (`clang-19`), empty for the default ones. 7.3
    /// needs LLVM >= 17 and bookworm's default clang is 14; its versioned clang-19 is used.
    fn llvm_suffix(self) -> &'static str {
        match self {
            Series::V6_12 => "",
            Series::V7_3 => "-19",
        }
    }

    /// Kbuild's `LLVM=` value: `1` for the default tools, else their suffix.
    pub fn llvm(self) -> &'static str {
        match self.llvm_suffix() {
            "" => "1",
            suffix => suffix,
        }
    }

    /// The libclang bindgen loads (`LIBCLANG_PATH`): the one matching the C compiler.
    /// Without it bindgen picks the newest libclang installed, whose flags the older clang
    /// (and its kernel build) does not share.
    pub fn libclang_path(self) -> &'static str {
        match self {
            Series::V6_12 => "/usr/lib/llvm-14/lib",
            Series::V7_3 => "/usr/lib/llvm-19/lib",
        }
    }

    /// The compiler, linker and archiver the build uses, for the cache key.
    pub fn toolchain(self) -> [String; 2] {
        let suffix = self.llvm_suffix();
        [format!("clang{suffix}"), format!("ld.lld{suffix}")]
    }

    /// The modules the rig loads in the guest (empty: everything is built in).
    pub fn modules(self) -> &'static [&'static str] {
        match self {
            Series::V6_12 => &[],
            Series::V7_3 => MODULES_7_3,
        }
    }

    /// Kernel command-line arguments every boot of this series gets: 7.x makes dma-buf heaps
    /// charge their pages to the allocating task's memory cgroup only when asked
    /// (`dma_heap.mem_accounting`, read-only after boot), and the memcg tests need it.
    pub fn boot_args(self) -> &'static [&'static str] {
        match self {
            Series::V6_12 => &[],
            Series::V7_3 => &["dma_heap.mem_accounting=1"],
        }
    }

    /// The upstream kernel-crate modules the rig's kernel Rust uses that this series lacks:
    /// small backports with the upstream API (the newest series needs none), so the heap and
    /// the importer are written once, against upstream.
    pub fn backports(self) -> &'static [&'static str] {
        match self {
            Series::V6_12 => &["debugfs", "dma", "fs", "miscdevice"],
            Series::V7_3 => &[],
        }
    }

    /// The series that supports a tree of version `major.minor`: the newest one not newer
    /// than the tree, else the oldest. The note says when it is not an exact match.
    pub fn for_version(major: u32, minor: u32) -> (Series, Option<String>) {
        let v = (major, minor);
        if let Some(s) = Self::ALL.iter().copied().find(|s| s.version() == v) {
            return (s, None);
        }
        let below = Self::ALL.iter().copied().filter(|s| s.version() < v).max();
        let (s, how) = match below {
            Some(s) if s == *Self::ALL.last().expect("non-empty") => {
                (s, "newer than every series the rig supports")
            }
            Some(s) => (s, "between the series the rig supports"),
            None => (Self::ALL[0], "older than every series the rig supports"),
        };
        let note = format!(
            "the tree is Linux {major}.{minor}, {how}; using the {} kernel support \
             (kernel-patches/{}, kernel-config/{}). If a patch does not apply, the error \
             names it.",
            s.name(),
            s.series_file(),
            s.fragment()
        );
        (s, Some(note))
    }

    /// Reads `VERSION` and `PATCHLEVEL` from a tree's top Makefile.
    pub fn of_tree(tree: &Path) -> Result<(u32, u32)> {
        let mk = fs::read_to_string(tree.join("Makefile"))
            .with_context(|| format!("reading {}/Makefile", tree.display()))?;
        parse_makefile_version(&mk).with_context(|| {
            format!(
                "{}/Makefile has no numeric VERSION and PATCHLEVEL lines",
                tree.display()
            )
        })
    }
}

impl fmt::Display for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl clap::ValueEnum for Series {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

fn parse_makefile_version(mk: &str) -> Option<(u32, u32)> {
    let field = |name: &str| {
        mk.lines()
            .find_map(|l| l.strip_prefix(name)?.trim_start().strip_prefix('='))
            .and_then(|v| v.trim().parse().ok())
    };
    Some((field("VERSION")?, field("PATCHLEVEL")?))
}

/// Where a downloaded series' tarball is kept.
pub fn downloaded_tarball(env: &Env, s: Series) -> PathBuf {
    env.cache
        .join("sources")
        .join(format!("linux-source-{}.tar.xz", s.name()))
}

/// The source tarball of a series, and the Debian version it came from.
pub fn tarball(env: &Env, s: Series) -> Result<(PathBuf, String)> {
    match s.fetch() {
        Fetch::Installed => {
            let fmt = "-f=${Version}";
            let pkg = s.package();
            let version = cmd!(env.sh, "dpkg-query -W {fmt} {pkg}")
                .quiet()
                .ignore_stderr()
                .read()
                .with_context(|| format!("{pkg} is not installed; run `cargo xtask setup`"))?;
            Ok((
                PathBuf::from(format!("/usr/src/linux-source-{}.tar.xz", s.name())),
                version,
            ))
        }
        Fetch::Download { .. } => {
            let tar = downloaded_tarball(env, s);
            if !tar.is_file() {
                download(env, s)?;
            }
            let version = fs::read_to_string(tar.with_extension("version"))
                .with_context(|| format!("reading the version beside {}", tar.display()))?;
            Ok((tar, version.trim().to_string()))
        }
    }
}

/// Downloads a series' source package from another Debian suite with a private apt state
/// (sources list, lists and archives under the cache) and unpacks its tarball into the
/// cache. Nothing is installed and the system's apt state is untouched.
pub fn download(env: &Env, s: Series) -> Result<()> {
    let Fetch::Download { suite } = s.fetch() else {
        return Ok(());
    };
    let sh = &env.sh;
    let dir = env.cache.join("apt").join(suite);
    for d in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(dir.join(d))?;
    }
    let list = dir.join("sources.list");
    // The machine's own mirror and keyring (Debian's default ones).
    fs::write(
        &list,
        format!(
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian {suite} main\n"
        ),
    )?;
    let opts = &[
        format!("-o=Dir::Etc::sourcelist={}", list.display()),
        "-o=Dir::Etc::sourceparts=-".to_string(),
        // The files are root's: apt's `_apt` sandbox user could not write them.
        "-o=APT::Sandbox::User=root".to_string(),
        format!("-o=Dir::State::Lists={}", dir.join("lists").display()),
        format!("-o=Dir::Cache={}", dir.join("cache").display()),
    ];
    let pkg = s.package();
    println!(
        "source: downloading {pkg} from Debian {suite} (private apt state in {})",
        dir.display()
    );
    let fail = |what: &str| {
        format!(
            "could not {what} {pkg} from Debian's {suite} suite (deb.debian.org). The {} \
             kernel needs it; check the network and rerun `cargo xtask setup`.",
            s.name()
        )
    };
    cmd!(sh, "apt-get {opts...} -q update")
        .quiet()
        .ignore_stdout()
        .run()
        .with_context(|| fail("list"))?;
    let _cd = sh.push_dir(&dir);
    // Remove older downloads so the glob below sees one.
    for e in fs::read_dir(&dir)?.flatten() {
        if e.file_name().to_string_lossy().ends_with(".deb") {
            fs::remove_file(e.path())?;
        }
    }
    cmd!(sh, "apt-get {opts...} -q download {pkg}")
        .quiet()
        .ignore_stdout()
        .ignore_stderr()
        .run()
        .with_context(|| fail("download"))?;
    let deb = fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .with_context(|| fail("find the downloaded .deb of"))?;
    let version = cmd!(sh, "dpkg-deb --field {deb} Version").quiet().read()?;
    let unpack = dir.join("unpack");
    let _ = fs::remove_dir_all(&unpack);
    cmd!(sh, "dpkg-deb -x {deb} {unpack}").quiet().run()?;
    let inner = unpack.join(format!("usr/src/linux-source-{}.tar.xz", s.name()));
    if !inner.is_file() {
        bail!(
            "{} does not contain usr/src/linux-source-{}.tar.xz",
            deb.display(),
            s.name()
        );
    }
    let tar = downloaded_tarball(env, s);
    fs::create_dir_all(tar.parent().expect("has a parent"))?;
    fs::rename(&inner, &tar)?;
    // The version file is written last: its presence marks a complete download.
    fs::write(tar.with_extension("version"), format!("{version}\n"))?;
    let _ = fs::remove_dir_all(&unpack);
    fs::remove_file(&deb)?;
    println!("source: {pkg} {version} ready at {}", tar.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_maps_to_the_newest_series_not_newer_than_the_tree() {
        assert_eq!(Series::for_version(6, 12), (Series::V6_12, None));
        assert_eq!(Series::for_version(7, 3), (Series::V7_3, None));
        let (s, note) = Series::for_version(7, 5);
        assert_eq!(s, Series::V7_3);
        assert!(note.unwrap().contains("newer than every series"));
        let (s, note) = Series::for_version(6, 18);
        assert_eq!(s, Series::V6_12);
        assert!(note.unwrap().contains("kernel-patches/series-6.12"));
        assert_eq!(Series::for_version(5, 15).0, Series::V6_12);
    }

    #[test]
    fn makefile_version_is_read_from_its_own_lines() {
        let mk = "# SPDX\nVERSION = 7\nPATCHLEVEL = 3\nSUBLEVEL = 4\nEXTRAVERSION =\n";
        assert_eq!(parse_makefile_version(mk), Some((7, 3)));
        assert_eq!(
            parse_makefile_version("VERSION = x\nPATCHLEVEL = 3\n"),
            None
        );
        assert_eq!(parse_makefile_version("PATCHLEVEL = 3\n"), None);
    }
}
