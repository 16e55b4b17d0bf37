//! Kernel stages: source (a private copy, never the user's files), config (fragments merged
//! onto allnoconfig, then verified), build (cached by a key over everything that matters).

use std::fs;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use sha2::{Digest, Sha256};

use crate::hash::{hex, sha256_hex};
use xshell::cmd;

use crate::env::Env;
use crate::plan::Mutation;
use crate::report::fmt_duration;
use crate::stages::kconfig::{describe_missing, Kconfig};
use crate::stages::series::{self, Series};

/// The rustc the kernel accepts (rustc-web); the rustup one on PATH has no rust-src.
pub const KERNEL_RUSTC: &str = "/usr/bin/rustc";
/// Bumped when the way the rig configures or builds changes, so old caches are not reused.
const RECIPE: &str = "heaprig-build-recipe-1";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// KASAN, lockdep, KMEMLEAK, UBSAN, DMA-API debug, fault injection, LKDTM.
    Debug,
    /// No debugging options, for benchmarks.
    Perf,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Debug => "debug",
            Profile::Perf => "perf",
        }
    }
}

/// A prepared private source tree.
pub struct Source {
    /// Short, path-safe name for cache directories.
    pub id: String,
    /// The kernel support (patches, fragment, toolchain) the tree is built with.
    pub series: Series,
    /// What the tree is, for the cache key (tarball version, or git commit + diff hash).
    pub identity: String,
    pub dir: PathBuf,
}

pub struct Built {
    pub bzimage: PathBuf,
    /// The kernel support it was built with.
    pub series: Series,
    /// The private source tree it was built from.
    pub source: PathBuf,
    pub build_dir: PathBuf,
    pub rebuilt: bool,
    pub log: PathBuf,
}

/// heaprig's own kernel sources, kept in the project so they are read, reviewed and edited
/// like any other code, and copied into the private tree: (project path, tree path). One
/// file differs by series: [`COMPAT`].
pub const OVERLAY: &[(&str, &str)] = &[
    ("kernel-rust/dma_buf/mod.rs", "rust/kernel/dma_buf/mod.rs"),
    (
        "kernel-rust/dma_buf/exporter.rs",
        "rust/kernel/dma_buf/exporter.rs",
    ),
    (
        "kernel-rust/dma_buf/importer.rs",
        "rust/kernel/dma_buf/importer.rs",
    ),
    (
        "kernel-rust/dma_buf/noncoherent.rs",
        "rust/kernel/dma_buf/noncoherent.rs",
    ),
    (
        "kernel-rust/dma_buf/page_pool.rs",
        "rust/kernel/dma_buf/page_pool.rs",
    ),
    ("kernel-rust/dma_heap.rs", "rust/kernel/dma_heap.rs"),
    ("kernel-rust/rig.rs", "rust/kernel/rig.rs"),
    (
        "heap/rust_system_heap.rs",
        "drivers/dma-buf/heaps/rust_system_heap.rs",
    ),
    (
        "importer/dmabuf_test_importer.rs",
        "drivers/dma-buf/dmabuf_test_importer.rs",
    ),
    (
        "uapi/dmabuf_test_importer.rs",
        "drivers/dma-buf/dmabuf_test_importer_uapi.rs",
    ),
];

/// Where a series' compat module goes; the project keeps one per series
/// (`kernel-rust/compat/linux-<series>.rs`), with the same items.
const COMPAT: &str = "rust/kernel/rig/compat.rs";

/// The overlay of a series: [`OVERLAY`], its compat module, and its backports of upstream
/// kernel-crate modules (`kernel-rust/backport/linux-<series>/<module>.rs`, each becoming
/// `kernel::<module>`; the series' patch declares them in the crate root).
fn overlay(series: Series) -> Vec<(String, String)> {
    let backports = series.backports().iter().map(|m| {
        (
            format!("kernel-rust/backport/linux-{series}/{m}.rs"),
            format!("rust/kernel/{m}.rs"),
        )
    });
    OVERLAY
        .iter()
        .map(|(from, to)| (from.to_string(), to.to_string()))
        .chain([(
            format!("kernel-rust/compat/linux-{series}.rs"),
            COMPAT.to_string(),
        )])
        .chain(backports)
        .collect()
}

/// Every tree path the overlay of `series` writes.
pub fn overlay_targets(series: Series) -> Vec<String> {
    overlay(series).into_iter().map(|(_, to)| to).collect()
}

fn overlay_sources(env: &Env, series: Series) -> Vec<PathBuf> {
    overlay(series)
        .iter()
        .map(|(from, _)| env.root.join(from))
        .collect()
}

/// Where a mutated tree records what `undo_mutation` puts back (`mutate`).
const MUTATION_RECORD: &str = "heaprig-mutation.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct MutationRecord {
    file: String,
    original: String,
}

/// Puts back the file a `mutate` run changed in `tree`, if one did (also after an
/// interrupted run), so no other build ever sees a mutant.
pub fn undo_mutation(tree: &Path) -> Result<()> {
    let record = tree.join(MUTATION_RECORD);
    let Ok(text) = fs::read_to_string(&record) else {
        return Ok(());
    };
    let r: MutationRecord =
        serde_json::from_str(&text).with_context(|| format!("reading {}", record.display()))?;
    let path = tree.join(&r.file);
    if fs::read_to_string(&path).ok().as_deref() != Some(r.original.as_str()) {
        fs::write(&path, &r.original).with_context(|| format!("restoring {}", path.display()))?;
    }
    fs::remove_file(&record)?;
    Ok(())
}

/// Makes mutant `m`'s edit in `tree` (recording the original first) and returns the source
/// identity of the mutated tree, so the build cache rebuilds it and then the original.
pub fn apply_mutation(tree: &Path, identity: &str, m: &Mutation) -> Result<String> {
    let path = tree.join(&m.file);
    let text = fs::read_to_string(&path)
        .with_context(|| format!("mutant {}: reading {}", m.name, path.display()))?;
    let n = text.matches(m.from.as_str()).count();
    if n != 1 {
        bail!(
            "mutant {}: the text it changes occurs {n} times in {} (it must occur exactly \
             once); update mutants/corpus.toml to the current source",
            m.name,
            m.file
        );
    }
    let record = MutationRecord {
        file: m.file.clone(),
        original: text.clone(),
    };
    fs::write(tree.join(MUTATION_RECORD), serde_json::to_string(&record)?)?;
    fs::write(&path, text.replacen(m.from.as_str(), &m.to, 1))?;
    let edit = sha256_hex(format!("{}\0{}\0{}", m.file, m.from, m.to).as_bytes());
    Ok(format!("{identity}+mutant:{}:{}", m.name, &edit[..12]))
}

/// The root of the kernel crate, which declares the overlay's `rust/kernel/` modules.
const KERNEL_CRATE_ROOT: &str = "rust/kernel/lib.rs";

/// Where the overlay puts its files: part of a Debian tree's stamp, so a changed layout (a
/// module that became a directory) extracts a clean tree instead of leaving the old file
/// beside the new one. A user's tree is synced with `--delete`, which removes it there.
fn overlay_layout(series: Series) -> String {
    overlay_targets(series).join(" ")
}

/// Copies the overlay into `dir`, rewriting only files whose content changed so make's
/// timestamps stay meaningful.
fn apply_overlay(env: &Env, dir: &Path, series: Series) -> Result<()> {
    // A new file is invisible to rustc's dependency list of the crate it joins (make only
    // checks the files the crate's last build read): rebuild that crate.
    let mut created = false;
    for (from, to) in overlay(series) {
        let data = fs::read(env.root.join(&from)).with_context(|| format!("reading {from}"))?;
        let dst = dir.join(to);
        let now = fs::read(&dst).ok();
        if now.as_deref() != Some(data.as_slice()) {
            created |= now.is_none();
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(&dst, &data).with_context(|| format!("writing {}", dst.display()))?;
        }
    }
    if created {
        // Touching the kernel crate's root rebuilds the crate our abstractions are in (and,
        // through it, every Rust object that uses them).
        if let Ok(f) = fs::File::options()
            .append(true)
            .open(dir.join(KERNEL_CRATE_ROOT))
        {
            f.set_modified(std::time::SystemTime::now())?;
        }
    }
    Ok(())
}

/// A series' patches, in the order its `kernel-patches/series-*` file lists them.
fn patches(env: &Env, s: Series) -> Result<Vec<PathBuf>> {
    let dir = env.root.join("kernel-patches");
    let list = dir.join(s.series_file());
    let text = fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
    let mut v = Vec::new();
    for name in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let p = dir.join(name);
        if !p.is_file() {
            bail!(
                "{} lists {name}, which is not in kernel-patches/",
                list.display()
            );
        }
        v.push(p);
    }
    Ok(v)
}

fn hash_files(paths: &[PathBuf]) -> Result<String> {
    let mut h = Sha256::new();
    for p in paths {
        h.update(p.file_name().unwrap_or_default().as_encoded_bytes());
        h.update(fs::read(p).with_context(|| format!("reading {}", p.display()))?);
    }
    Ok(hex(&h.finalize()))
}

/// Files the patches touch (`+++ b/<path>` lines).
fn patched_files(env: &Env, s: Series) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for p in patches(env, s)? {
        for line in fs::read_to_string(&p)?.lines() {
            if let Some(path) = line.strip_prefix("+++ b/") {
                out.push(path.split('\t').next().unwrap_or(path).to_string());
            }
        }
    }
    Ok(out)
}

fn apply_patches(env: &Env, dir: &Path, s: Series) -> Result<()> {
    for p in patches(env, s)? {
        let out = Command::new("patch")
            .args(["-p1", "--forward", "--batch", "-i"])
            .arg(&p)
            .current_dir(dir)
            .output()
            .context("running patch")?;
        if !out.status.success() {
            let list = s.series_file();
            bail!(
                "kernel patch {} does not apply to the tree at {}:\n{}{}It is in the rig's \
                 Linux {s} support (kernel-patches/{}); a tree that already carries the \
                 change or diverged here needs the patch rebased.",
                p.display(),
                dir.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                list
            );
        }
    }
    Ok(())
}

/// Checks that `dir` looks like the top of a Linux source tree.
pub fn validate_tree(dir: &Path) -> Result<()> {
    let makefile = fs::read_to_string(dir.join("Makefile")).unwrap_or_default();
    let ok = makefile.lines().any(|l| l.starts_with("VERSION ="))
        && makefile.lines().any(|l| l.starts_with("PATCHLEVEL ="))
        && dir.join("Kconfig").is_file()
        && dir.join("arch/x86/Kconfig").is_file();
    if !ok {
        bail!(
            "--kernel-src {} is not a Linux kernel tree: it needs a top-level Makefile with \
             VERSION/PATCHLEVEL, a Kconfig and arch/x86. Pass the top directory of a kernel \
             checkout, or omit --kernel-src to use a Debian source (--kernel).",
            dir.display()
        );
    }
    Ok(())
}

/// The overlay file that marks a tree as already carrying the rig's kernel side (the heap).
pub const CARRIED_MARK: &str = "drivers/dma-buf/heaps/rust_system_heap.rs";

/// Does `tree` carry the heap itself (a tree the rig's source was committed into)? Then the
/// tree is tested as it is: its own heap, no overlay, no rig patches.
pub fn carries_heap(tree: &Path) -> bool {
    tree.join(CARRIED_MARK).is_file()
}

/// `tree_id` names a rig scratch tree (see `KernelArgs::tree_id`). Without a user tree the
/// source is Debian's tarball of `series`; a user tree's own version picks the series.
pub fn prepare_source(
    env: &Env,
    series: Series,
    user_tree: Option<&Path>,
    tree_id: Option<&str>,
) -> Result<Source> {
    match user_tree {
        None => prepare_debian(env, series),
        Some(t) => prepare_user_tree(env, t, tree_id),
    }
}

fn prepare_debian(env: &Env, series: Series) -> Result<Source> {
    let sh = &env.sh;
    let patch_hash = hash_files(&patches(env, series)?)?;
    let (tarball, version) = series::tarball(env, series)?;
    let id = format!("debian-{}", version.replace(['~', ':', '+'], "_"));
    let top = env.cache.join("src").join(&id);
    let dir = top.join(format!("linux-source-{series}"));
    let stamp = top.join("heaprig-source.stamp");
    let want = format!("{version}\n{patch_hash}\n{}\n", overlay_layout(series));
    let identity = format!("debian:{version}");
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str())
        && dir.join("Makefile").is_file()
    {
        apply_overlay(env, &dir, series)?;
        return Ok(Source {
            id,
            series,
            identity,
            dir,
        });
    }
    // Files an earlier patch set touched: after re-extraction they carry the tarball's old
    // mtimes, older than the objects built from the patched versions, so they are touched
    // below to make make rebuild them.
    let mut touch: Vec<String> = fs::read_to_string(top.join("heaprig-patched-files"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    if top.exists() {
        println!(
            "source: cached tree at {} is stale or incomplete; extracting again",
            top.display()
        );
        fs::remove_dir_all(&top).with_context(|| format!("removing {}", top.display()))?;
    }
    let tmp = env.cache.join("src").join(format!("{id}.partial"));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    let t = Instant::now();
    println!("source: extracting {} ({version})", tarball.display());
    cmd!(sh, "tar -xf {tarball} -C {tmp}")
        .quiet()
        .run()
        .context("extracting the kernel tarball")?;
    let tree = tmp.join(format!("linux-source-{series}"));
    for f in &touch {
        if let Ok(file) = fs::File::options().append(true).open(tree.join(f)) {
            file.set_modified(std::time::SystemTime::now())?;
        }
    }
    apply_patches(env, &tree, series)?;
    touch = patched_files(env, series)?;
    fs::write(tmp.join("heaprig-patched-files"), touch.join("\n"))?;
    fs::write(tmp.join("heaprig-source.stamp"), &want)?;
    fs::rename(&tmp, &top)?;
    apply_overlay(env, &dir, series)?;
    println!("source: ready in {}", fmt_duration(t.elapsed()));
    Ok(Source {
        id,
        series,
        identity,
        dir,
    })
}

fn prepare_user_tree(env: &Env, tree: &Path, tree_id: Option<&str>) -> Result<Source> {
    validate_tree(tree)?;
    let (major, minor) = Series::of_tree(tree)?;
    let (series, note) = Series::for_version(major, minor);
    if let Some(note) = note {
        println!("source: {note}");
    }
    let patch_hash = hash_files(&patches(env, series)?)?;
    let tree = tree
        .canonicalize()
        .with_context(|| format!("resolving {}", tree.display()))?;
    let sh = &env.sh;
    // Read-only git queries; --no-optional-locks keeps `git status` from refreshing the index.
    let head = cmd!(sh, "git -C {tree} --no-optional-locks rev-parse HEAD")
        .quiet()
        .ignore_stderr()
        .read()
        .ok();
    let identity = match head {
        Some(head) => {
            let diff = cmd!(sh, "git -C {tree} --no-optional-locks diff HEAD")
                .quiet()
                .read()
                .unwrap_or_default();
            format!("git:{head}+{}", &sha256_hex(diff.as_bytes())[..16])
        }
        // Without git there is no cheap identity; make decides what to rebuild.
        None => format!("unversioned:{}:{}", tree.display(), std::process::id()),
    };
    let id = match tree_id {
        Some(t) => format!("scratch-{t}"),
        None => format!(
            "tree-{}",
            &sha256_hex(tree.as_os_str().as_encoded_bytes())[..12]
        ),
    };
    let dir = env.cache.join("src").join(&id).join("tree");
    fs::create_dir_all(&dir)?;
    let from = format!("{}/", tree.display());
    let to = format!("{}/", dir.display());
    let carried = carries_heap(&tree);
    if carried {
        println!("source: the tree carries the heap ({CARRIED_MARK}); testing it as it is, without the rig's overlay and patches");
    }
    // The overlay files are ours and must survive --delete, unless the tree has its own.
    let excludes: Vec<String> = if carried {
        vec![]
    } else {
        overlay_targets(series)
            .iter()
            .map(|to| format!("--exclude=/{to}"))
            .collect()
    };
    // A user's tree keeps its mtimes (-a), so make rebuilds what changed there. A scratch
    // tree is checked out afresh (every mtime new): compare content instead, and give only
    // the files that differ a new mtime (no -t), so the shared build stays incremental.
    let mode: &[&str] = if tree_id.is_some() {
        &["-rlpD", "--checksum"]
    } else {
        &["-a"]
    };
    cmd!(
        sh,
        "rsync {mode...} --delete --exclude=/.git {excludes...} {from} {to}"
    )
    .quiet()
    .run()
    .with_context(|| {
        format!(
            "copying {} into the private tree {}",
            tree.display(),
            dir.display()
        )
    })?;
    if dir.join(".config").exists() || dir.join("include/config").exists() {
        // The user built in-tree; O= builds need a clean source tree (only our copy is cleaned).
        cmd!(sh, "make -s -C {dir} mrproper").quiet().run()?;
    }
    if carried {
        return Ok(Source {
            id,
            series,
            identity,
            dir,
        });
    }
    apply_patches(env, &dir, series)?;
    apply_overlay(env, &dir, series)?;
    Ok(Source {
        id,
        series,
        identity: format!("{identity}+patches:{patch_hash}"),
        dir,
    })
}

/// make's arguments for a build of `src` into `build` (`LIBCLANG_PATH` goes to make's
/// environment through [`make_command`]).
fn make_base_args(src: &Source, build: &Path) -> Vec<String> {
    vec![
        "-C".into(),
        src.dir.display().to_string(),
        format!("O={}", build.display()),
        format!("LLVM={}", src.series.llvm()),
        format!("RUSTC={KERNEL_RUSTC}"),
    ]
}

/// `make` with the series' environment (bindgen's libclang).
fn make_command(series: Series) -> Command {
    let mut c = Command::new("make");
    c.env("LIBCLANG_PATH", series.libclang_path());
    c
}

/// The Kconfig fragments a profile merges on a series, in order (under kernel-config/).
pub fn fragment_names(profile: Profile, series: Series) -> Vec<String> {
    vec![
        "base.config".into(),
        format!("{}.config", profile.name()),
        series.fragment(),
    ]
}

fn fragments(env: &Env, profile: Profile, series: Series) -> Vec<PathBuf> {
    let dir = env.root.join("kernel-config");
    fragment_names(profile, series)
        .into_iter()
        .map(|f| dir.join(f))
        .collect()
}

/// The merged fragments: what the final .config must contain.
pub fn wanted_config(env: &Env, profile: Profile, series: Series) -> Result<Kconfig> {
    let mut want = Kconfig::default();
    for f in fragments(env, profile, series) {
        want.merge_in(&Kconfig::read(&f)?);
    }
    Ok(want)
}

fn run_make_quiet(series: Series, args: &[String], log: &Path) -> Result<()> {
    let out = make_command(series)
        .args(args)
        .output()
        .context("running make")?;
    let mut f = fs::OpenOptions::new().create(true).append(true).open(log)?;
    f.write_all(&out.stdout)?;
    f.write_all(&out.stderr)?;
    if !out.status.success() {
        bail!(
            "`make {}` failed:\n{}\nFull log: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            log.display()
        );
    }
    Ok(())
}

/// Config stage: allnoconfig + fragments, olddefconfig, then verify every requested option.
pub fn configure(
    env: &Env,
    src: &Source,
    build: &Path,
    profile: Profile,
    log: &Path,
) -> Result<()> {
    let want = wanted_config(env, profile, src.series)?;
    let mut args = make_base_args(src, build);
    args.push("allnoconfig".into());
    run_make_quiet(src.series, &args, log)?;
    let cfg_path = build.join(".config");
    let mut cfg = Kconfig::read(&cfg_path)?;
    cfg.merge_in(&want);
    fs::write(&cfg_path, cfg.to_string())?;
    args.pop();
    args.push("olddefconfig".into());
    run_make_quiet(src.series, &args, log)?;
    let actual = Kconfig::read(&cfg_path)?;
    let missing = want.missing_from(&actual);
    if !missing.is_empty() {
        let mut msg = format!(
            "the {} profile's Kconfig fragments (Linux {}) ask for options that olddefconfig \
             dropped:\n{}",
            profile.name(),
            src.series,
            describe_missing(&src.dir, &missing)
        );
        if missing.iter().any(|(k, _)| k == "CONFIG_RUST") {
            args.pop();
            args.push("rustavailable".into());
            let out = make_command(src.series).args(&args).output()?;
            msg.push_str(&format!(
                "\n`make rustavailable` says:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        bail!("{msg}");
    }
    Ok(())
}

fn toolchain_identity(env: &Env, series: Series) -> String {
    let v = |tool: &str| {
        crate::stages::setup::tool_version(&env.sh, tool)
            .unwrap_or_else(|| format!("{tool}: not found"))
    };
    let [cc, ld] = series.toolchain();
    [
        v(KERNEL_RUSTC),
        v("bindgen"),
        v(&cc),
        v(&ld),
        series.libclang_path().to_string(),
    ]
    .join("\n")
}

/// Everything but the source that decides what gets built: recipe, profile and series
/// fragments, patches, overlay, toolchain.
pub fn config_identity(env: &Env, profile: Profile, series: Series) -> Result<String> {
    let mut h = Sha256::new();
    h.update(RECIPE);
    h.update(profile.name());
    h.update(series.name());
    h.update(hash_files(&fragments(env, profile, series))?);
    h.update(hash_files(&patches(env, series)?)?);
    h.update(hash_files(&overlay_sources(env, series))?);
    h.update(toolchain_identity(env, series));
    Ok(hex(&h.finalize()))
}

/// The build cache key: source identity and [`config_identity`].
pub fn cache_key(env: &Env, src: &Source, profile: Profile) -> Result<String> {
    let mut h = Sha256::new();
    h.update(&src.identity);
    h.update(config_identity(env, profile, src.series)?);
    Ok(hex(&h.finalize()))
}

/// A bzImage carries "HdrS" at offset 0x202 (Documentation/arch/x86/boot.rst).
pub fn is_bzimage(path: &Path) -> bool {
    fs::read(path)
        .map(|b| b.len() > 0x206 && &b[0x202..0x206] == b"HdrS")
        .unwrap_or(false)
}

pub fn build(env: &Env, src: &Source, profile: Profile) -> Result<Built> {
    let build_dir = env
        .cache
        .join("build")
        .join(format!("{}-{}", src.id, profile.name()));
    build_in(env, src, profile, &build_dir)
}

/// [`build`] into a given directory (`bench --rig` times cold builds in a scratch one).
pub fn build_in(env: &Env, src: &Source, profile: Profile, build_dir: &Path) -> Result<Built> {
    let build_dir = build_dir.to_path_buf();
    fs::create_dir_all(&build_dir)?;
    let bzimage = build_dir.join("arch/x86/boot/bzImage");
    let key_file = build_dir.join("heaprig-build.key");
    let log = build_dir.join("heaprig-build.log");
    let key = cache_key(env, src, profile)?;
    let old_key = fs::read_to_string(&key_file).ok();
    if old_key.as_deref() == Some(key.as_str()) {
        if is_bzimage(&bzimage) {
            return Ok(Built {
                bzimage,
                series: src.series,
                source: src.dir.clone(),
                build_dir,
                rebuilt: false,
                log,
            });
        }
        println!(
            "build: the cached build in {} has no valid bzImage; rebuilding",
            build_dir.display()
        );
    }
    // A corrupt image can be newer than everything it is made from; make would keep it.
    if bzimage.exists() && !is_bzimage(&bzimage) {
        fs::remove_file(&bzimage)?;
    }
    // Remove the key first: an interrupted build must never look complete.
    let _ = fs::remove_file(&key_file);
    fs::write(&log, "")?;
    configure(env, src, &build_dir, profile, &log)?;
    let mut args = make_base_args(src, &build_dir);
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get()) + 1;
    args.push(format!("-j{jobs}"));
    args.push("bzImage".into());
    if !src.series.modules().is_empty() {
        args.push("modules".into());
    }
    make_with_progress(src.series, &args, &log)?;
    if !is_bzimage(&bzimage) {
        bail!(
            "make finished but {} is not a bzImage; see {}",
            bzimage.display(),
            log.display()
        );
    }
    fs::write(&key_file, &key)?;
    Ok(Built {
        bzimage,
        series: src.series,
        source: src.dir.clone(),
        build_dir,
        rebuilt: true,
        log,
    })
}

/// The kbuild step a line announces ("  CC      drivers/dma-buf/dma-buf.o" -> "drivers").
fn step_area(line: &str) -> Option<String> {
    let mut it = line.split_whitespace();
    let tag = it.next()?;
    if !line.starts_with("  ") || !tag.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        return None;
    }
    let path = it.last()?;
    Some(path.split('/').next().unwrap_or(path).to_string())
}

/// Runs make, keeping the full output in `log` and showing elapsed time and current area.
fn make_with_progress(series: Series, args: &[String], log: &Path) -> Result<()> {
    let mut logf = fs::OpenOptions::new().append(true).open(log)?;
    // std::process rather than xshell: the output is streamed line by line while it runs.
    let mut child = make_command(series)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting make")?;
    let (tx, rx) = mpsc::channel::<String>();
    let mut readers = Vec::new();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let start = Instant::now();
    let tty = std::io::stdout().is_terminal();
    let every = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(30)
    };
    let mut last_print = Instant::now();
    let mut steps = 0usize;
    let mut area = String::from("starting");
    loop {
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(line) => {
                writeln!(logf, "{line}")?;
                if let Some(a) = step_area(&line) {
                    steps += 1;
                    area = a;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if last_print.elapsed() >= every {
            last_print = Instant::now();
            let msg = format!(
                "build: {} elapsed, {steps} steps, now in {area}/",
                fmt_duration(start.elapsed())
            );
            if tty {
                print!("\r{msg:<70}");
                std::io::stdout().flush()?;
            } else {
                println!("{msg}");
            }
        }
    }
    if tty {
        println!();
    }
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait().context("waiting for make")?;
    if !status.success() {
        let text = fs::read_to_string(log).unwrap_or_default();
        bail!(
            "the kernel build failed after {}.\n{}\nFull log: {}",
            fmt_duration(start.elapsed()),
            first_error(&text).unwrap_or_else(|| "(no error line found in the log)".into()),
            log.display()
        );
    }
    println!(
        "build: done in {}, {steps} steps",
        fmt_duration(start.elapsed())
    );
    Ok(())
}

/// The first compiler or make error with a few lines of context.
pub fn first_error(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let is_err = |l: &str| l.contains("error:") || l.contains("error[E");
    let idx = lines.iter().position(|l| is_err(l)).or_else(|| {
        lines
            .iter()
            .position(|l| l.contains("*** [") || l.contains("Error "))
    })?;
    let from = idx.saturating_sub(3);
    let to = (idx + 8).min(lines.len());
    Some(lines[from..to].join("\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every series' overlay names files the project has, and the backports go only where
    /// upstream lacks the module: a 7.x tree keeps its own `kernel::miscdevice`.
    #[test]
    fn overlay_files_exist_and_backports_are_per_series() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        for s in Series::ALL {
            for (from, _) in overlay(s) {
                assert!(root.join(&from).is_file(), "{s}: {from} is missing");
            }
        }
        let old = overlay_targets(Series::V6_12);
        assert!(old.contains(&"rust/kernel/miscdevice.rs".to_string()));
        let new = overlay_targets(Series::V7_3);
        assert!(!new.iter().any(|t| t == "rust/kernel/miscdevice.rs"));
        assert!(new.iter().any(|t| t == COMPAT));
    }

    #[test]
    fn step_areas() {
        assert_eq!(
            step_area("  CC      drivers/dma-buf/dma-buf.o").as_deref(),
            Some("drivers")
        );
        assert_eq!(
            step_area("  RUSTC L rust/kernel.o").as_deref(),
            Some("rust")
        );
        assert_eq!(step_area("make[1]: Entering directory"), None);
        assert_eq!(step_area("drivers/x.c:1:2: error: foo"), None);
    }

    #[test]
    fn first_error_prefers_compiler_errors() {
        let log = "  CC a.o\n  CC b.o\nb.c:3:1: error: expected ';'\n  3 | x\nmake[2]: *** [b.o] Error 1\n";
        let e = first_error(log).unwrap();
        assert!(e.contains("error: expected ';'"));
        assert!(first_error("all fine\n").is_none());
    }

    #[test]
    fn bzimage_magic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let mut b = vec![0u8; 0x300];
        fs::write(&p, &b).unwrap();
        assert!(!is_bzimage(&p));
        b[0x202..0x206].copy_from_slice(b"HdrS");
        fs::write(&p, &b).unwrap();
        assert!(is_bzimage(&p));
        assert!(!is_bzimage(&dir.path().join("missing")));
    }

    /// A user tree the patches do not fit: the failing patch is named, with patch's output,
    /// and the user's tree is left exactly as it was.
    #[test]
    fn a_patch_that_does_not_apply_is_named_and_the_users_tree_is_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let tree = tmp.path().join("linux");
        fs::create_dir_all(tree.join("arch/x86")).unwrap();
        fs::write(tree.join("Makefile"), "VERSION = 6\nPATCHLEVEL = 12\n").unwrap();
        fs::write(tree.join("Kconfig"), "mainmenu \"x\"\n").unwrap();
        fs::write(tree.join("arch/x86/Kconfig"), "config X86\n\tdef_bool y\n").unwrap();
        let before: Vec<_> = walk(&tree);
        let env = Env {
            sh: xshell::Shell::new().unwrap(),
            root: Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap()
                .to_path_buf(),
            cache: tmp.path().join("cache"),
        };
        let err = match prepare_source(&env, Series::DEFAULT, Some(&tree), None) {
            Ok(_) => panic!("patches applied to an empty tree"),
            Err(e) => format!("{e:#}"),
        };
        assert!(
            err.contains("kernel patch") && err.contains("does not apply"),
            "{err}"
        );
        assert!(err.contains("0001-"), "{err}");
        assert_eq!(walk(&tree), before, "the user's tree changed");
    }

    fn walk(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push((p.clone(), fs::read(&p).unwrap()));
            }
        }
        out.sort();
        out
    }

    #[test]
    fn rejects_a_non_kernel_tree() {
        let dir = tempfile::tempdir().unwrap();
        let e = validate_tree(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is not a Linux kernel tree"), "{e}");
    }
}
