//! `setup` installs what the rig needs; `doctor` reports it. Both read one table.

use std::path::Path;

use anyhow::{bail, Result};
use xshell::{cmd, Shell};

use crate::env::Env;
use crate::stages::series::{self, Fetch, Series};

/// Debian packages, each with why the rig needs it.
const DEB: &[(&str, &str)] = &[
    (
        "linux-source-6.12",
        "the default kernel tree (6.12 stable tarball)",
    ),
    (
        "rustc-web",
        "a rustc the 6.12 kernel accepts (/usr/bin/rustc)",
    ),
    (
        "rust-web-src",
        "core/alloc sources for rustc-web, needed by the kernel build",
    ),
    (
        "clang",
        "KASAN with Rust needs a clang-built kernel (LLVM=1)",
    ),
    ("lld", "linker for LLVM=1"),
    ("llvm", "llvm-ar/nm/objcopy for LLVM=1"),
    ("libclang-dev", "libclang for bindgen (6.12)"),
    (
        "clang-19",
        "the 7.3 kernel needs LLVM >= 17 (LLVM=-19); bookworm's default clang is 14",
    ),
    ("lld-19", "linker for LLVM=-19 (7.3)"),
    ("llvm-19", "llvm-ar/nm/objcopy for LLVM=-19 (7.3)"),
    ("libclang-19-dev", "libclang for bindgen on 7.3"),
    ("make", "kernel build"),
    ("patch", "applies kernel-patches/ to the private tree"),
    ("flex", "kconfig"),
    ("bison", "kconfig"),
    ("bc", "kernel build"),
    ("libelf-dev", "objtool"),
    ("libssl-dev", "kernel build (sign-file, certs)"),
    ("kmod", "depmod, used by virtme-ng"),
    ("cpio", "virtme-ng initramfs"),
    (
        "rsync",
        "copying a --kernel-src tree into the private build copy",
    ),
    ("xz-utils", "extracting the kernel tarball"),
    ("zstd", "kernel build"),
    ("qemu-system-x86", "the VM"),
    (
        "udev",
        "virtme-ng-init finds its virtio-serial ports through udevd",
    ),
    (
        "python3-venv",
        "a private venv for the KCIDB validator and the workflow linters",
    ),
];

pub const VIRTME_NG: &str = "1.42";
pub const BINDGEN: &str = "0.71.1";
/// KCIDB's schema and validator (`kernelci/kcidb-io`), pinned: every KCIDB file the rig
/// writes is validated with it.
pub const KCIDB_IO: &str = "141";
/// The workflow linters (`cargo xtask lint`): JSON-schema validation of GitHub workflows,
/// and zizmor's offline audits. actionlint is not among them: its PyPI package is an sdist
/// that downloads the binary from GitHub while building, which this machine cannot reach.
pub const CHECK_JSONSCHEMA: &str = "0.39.0";
pub const ZIZMOR: &str = "1.32.0";

/// The private venv's Python packages and their pinned versions.
const VENV_PACKAGES: [(&str, &str); 3] = [
    ("kcidb-io", KCIDB_IO),
    ("check-jsonschema", CHECK_JSONSCHEMA),
    ("zizmor", ZIZMOR),
];

/// `name==version` for each venv package, as pip takes them.
fn venv_packages() -> Vec<String> {
    VENV_PACKAGES
        .iter()
        .map(|(name, version)| format!("{name}=={version}"))
        .collect()
}

/// The rig's private venv (KCIDB validation, workflow linters): `setup` makes it.
pub fn venv(env: &Env) -> std::path::PathBuf {
    env.cache.join("venv")
}

pub fn venv_python(env: &Env) -> std::path::PathBuf {
    venv(env).join("bin/python")
}

/// The installed versions of the venv's packages, as `kcidb-io==V ...`, if the venv runs.
fn venv_versions(env: &Env) -> Option<String> {
    let python = venv_python(env);
    let script = "import importlib.metadata as m, sys\nprint(' '.join(p + '==' + m.version(p) for p in sys.argv[1:]))";
    let names = VENV_PACKAGES.map(|(name, _)| name);
    cmd!(env.sh, "{python} -c {script} {names...}")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()
}

#[derive(Debug)]
pub struct Check {
    pub name: String,
    pub found: Option<String>,
    pub ok: bool,
    pub why: &'static str,
}

fn deb_version(sh: &Shell, pkg: &str) -> Option<String> {
    let fmt = "-f=${Status}\t${Version}";
    let out = cmd!(sh, "dpkg-query -W {fmt} {pkg}")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()?;
    let (status, version) = out.split_once('\t')?;
    status.ends_with(" installed").then(|| version.to_string())
}

/// First line of `tool --version`, if the tool runs.
pub fn tool_version(sh: &Shell, tool: &str) -> Option<String> {
    cmd!(sh, "{tool} --version")
        .quiet()
        .ignore_stderr()
        .read()
        .ok()
        .and_then(|o| o.lines().next().map(str::to_string))
}

pub fn checks(env: &Env) -> Vec<Check> {
    let sh = &env.sh;
    let mut out: Vec<Check> = DEB
        .iter()
        .map(|(pkg, why)| {
            let found = deb_version(sh, pkg);
            Check {
                name: format!("deb {pkg}"),
                ok: found.is_some(),
                found,
                why,
            }
        })
        .collect();
    let vng = tool_version(sh, "vng");
    out.push(Check {
        name: format!("pip virtme-ng=={VIRTME_NG}"),
        ok: vng.as_deref() == Some(&format!("virtme-ng {VIRTME_NG}")),
        found: vng,
        why: "boots the kernel with the host's root file system",
    });
    let bindgen = tool_version(sh, "bindgen");
    out.push(Check {
        name: format!("cargo bindgen-cli {BINDGEN}"),
        ok: bindgen.as_deref() == Some(&format!("bindgen {BINDGEN}")),
        found: bindgen,
        why: "Rust bindings for the kernel (Debian's 0.60 is older than 6.12's minimum 0.65.1)",
    });
    let want = venv_packages().join(" ");
    let found = venv_versions(env);
    out.push(Check {
        name: format!("venv {want}"),
        ok: found.as_deref() == Some(want.as_str()),
        found,
        why: "validates KCIDB files (--kcidb) and lints the GitHub workflow (cargo xtask lint)",
    });
    out
}

/// The commands that install whatever `checks` found missing.
fn install_plan(missing: &[&Check], venv: &Path) -> Vec<Vec<String>> {
    let mut plan = Vec::new();
    let debs: Vec<String> = missing
        .iter()
        .filter_map(|c| c.name.strip_prefix("deb ").map(str::to_string))
        .collect();
    if !debs.is_empty() {
        plan.push(vec!["apt-get".into(), "update".into()]);
        let mut v: Vec<String> = ["apt-get", "install", "-y", "--no-install-recommends"]
            .map(String::from)
            .into();
        v.extend(debs);
        plan.push(v);
    }
    if missing.iter().any(|c| c.name.starts_with("pip ")) {
        plan.push(
            ["python3", "-m", "pip", "install", "--break-system-packages"]
                .map(String::from)
                .into_iter()
                .chain([format!("virtme-ng=={VIRTME_NG}")])
                .collect(),
        );
        // pyenv (as on these machines) only exposes new console scripts after a rehash.
        if which("pyenv") {
            plan.push(vec!["pyenv".into(), "rehash".into()]);
        }
    }
    if missing.iter().any(|c| c.name.starts_with("venv ")) {
        let dir = venv.display().to_string();
        plan.push(vec![
            "python3".into(),
            "-m".into(),
            "venv".into(),
            dir.clone(),
        ]);
        plan.push(
            [format!("{dir}/bin/pip"), "install".into(), "--quiet".into()]
                .into_iter()
                .chain(venv_packages())
                .collect(),
        );
    }
    if missing.iter().any(|c| c.name.starts_with("cargo ")) {
        plan.push(
            [
                "cargo",
                "install",
                "bindgen-cli",
                "--locked",
                "--version",
                BINDGEN,
            ]
            .map(String::from)
            .into(),
        );
    }
    plan
}

/// `cargo xtask setup` also fetches the kernel sources that are not Debian packages of this
/// machine's suites (a booting command fetches the one it needs on first use).
pub fn fetch_sources(env: &Env) -> Result<()> {
    for s in Series::ALL {
        if let Fetch::Download { .. } = s.fetch() {
            if series::downloaded_tarball(env, s).is_file() {
                println!("setup: the Linux {s} source is in the cache");
            } else {
                series::download(env, s)?;
            }
        }
    }
    Ok(())
}

pub fn doctor(env: &Env) -> Result<bool> {
    let checks = checks(env);
    println!("{:<34} {:<8} found", "requirement", "status");
    for c in &checks {
        let status = match (&c.found, c.ok) {
            (_, true) => "ok",
            (Some(_), false) => "WRONG",
            (None, _) => "missing",
        };
        let found = c.found.as_deref().unwrap_or("-");
        if c.ok {
            println!("{:<34} {:<8} {found}", c.name, status);
        } else {
            println!(
                "{:<34} {:<8} {found} (needed for: {})",
                c.name, status, c.why
            );
        }
    }
    let kvm = if Path::new("/dev/kvm").exists() {
        "present (usable only if the probe boot succeeds; see `--accel`)"
    } else {
        "absent: guests run under TCG"
    };
    println!("{:<34} {:<8} {kvm}", "/dev/kvm", "info");
    for s in Series::ALL {
        if let Fetch::Download { suite } = s.fetch() {
            let tar = series::downloaded_tarball(env, s);
            let state = if tar.is_file() {
                format!("{} (from Debian {suite})", tar.display())
            } else {
                format!("not fetched yet: `cargo xtask setup` or the first `--kernel {s}` run downloads it from Debian {suite}")
            };
            println!(
                "{:<34} {:<8} {state}",
                format!("source linux-source-{s}"),
                "info"
            );
        }
    }
    println!("{:<34} {:<8} {}", "cache dir", "info", env.cache.display());
    Ok(checks.iter().all(|c| c.ok))
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Installs what is missing; `quiet_if_ok` makes the implicit call from `test` silent.
pub fn ensure(env: &Env, quiet_if_ok: bool) -> Result<()> {
    let checks = checks(env);
    let missing: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    if missing.is_empty() {
        if !quiet_if_ok {
            println!("setup: every requirement is installed");
        }
        return Ok(());
    }
    let plan = install_plan(&missing, &venv(env));
    let names: Vec<&str> = missing.iter().map(|c| c.name.as_str()).collect();
    let script: Vec<String> = plan.iter().map(|c| c.join(" ")).collect();
    let debian = Path::new("/etc/debian_version").exists();
    if !is_root() || !debian {
        let why = if debian {
            "not running as root"
        } else {
            "this is not Debian"
        };
        bail!(
            "missing requirements: {}. The rig installs them itself only as root on Debian 12 \
             ({why}). Run these commands, then try again:\n  {}",
            names.join(", "),
            script.join("\n  ")
        );
    }
    println!("setup: installing {}", names.join(", "));
    for c in &plan {
        let (prog, args) = c.split_first().expect("non-empty command");
        let sh = &env.sh;
        let _env = sh.push_env("DEBIAN_FRONTEND", "noninteractive");
        let r = cmd!(sh, "{prog} {args...}").run();
        if let Err(e) = r {
            bail!(
                "setup failed while running `{}`: {e}. Fix the cause (network, disk space, a \
                 held package) and rerun `cargo xtask setup`.",
                c.join(" ")
            );
        }
    }
    let still: Vec<String> = checks_after(env);
    if !still.is_empty() {
        bail!(
            "setup ran but these are still missing or at the wrong version: {}. If `vng` or \
             `bindgen` were installed outside PATH, add pip's and cargo's bin directories to PATH.",
            still.join(", ")
        );
    }
    Ok(())
}

fn checks_after(env: &Env) -> Vec<String> {
    checks(env)
        .into_iter()
        .filter(|c| !c.ok)
        .map(|c| {
            format!(
                "{} (found {})",
                c.name,
                c.found.as_deref().unwrap_or("nothing")
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_each_kind_once() {
        let mk = |name: &str| Check {
            name: name.into(),
            found: None,
            ok: false,
            why: "",
        };
        let a = mk("deb flex");
        let b = mk("deb bison");
        let c = mk(&format!("pip virtme-ng=={VIRTME_NG}"));
        let d = mk(&format!("cargo bindgen-cli {BINDGEN}"));
        let e = mk("venv kcidb-io==141");
        let plan = install_plan(&[&a, &b, &c, &d, &e], Path::new("/v"));
        let text: Vec<String> = plan.iter().map(|c| c.join(" ")).collect();
        assert_eq!(text[0], "apt-get update");
        assert!(text[1].starts_with("apt-get install") && text[1].ends_with("flex bison"));
        assert!(text[2].contains("virtme-ng==1.42"));
        assert!(text
            .last()
            .unwrap()
            .contains("bindgen-cli --locked --version 0.71.1"));
        assert!(text.iter().any(|l| l == "python3 -m venv /v"));
        assert!(text
            .iter()
            .any(|l| l.starts_with("/v/bin/pip install --quiet kcidb-io==141 ")));
        assert!(install_plan(&[], Path::new("/v")).is_empty());
    }
}
