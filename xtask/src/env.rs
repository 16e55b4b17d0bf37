//! Where things live: the project, the cache (outside the repo, never required), and the
//! per-run artefacts (under target/, inside the repo but ignored by git).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::Shell;

pub struct Env {
    pub sh: Shell,
    pub root: PathBuf,
    pub cache: PathBuf,
}

impl Env {
    pub fn new() -> Result<Env> {
        let sh = Shell::new().context("creating a shell")?;
        // xtask's manifest dir is <root>/xtask.
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        sh.change_dir(&root);
        let cache = cache_dir()?;
        Ok(Env { sh, root, cache })
    }

    /// Output of the latest run: KTAP, console log, results.json.
    pub fn run_dir(&self) -> PathBuf {
        self.root.join("target/heaprig/last-run")
    }
}

/// `$HEAPRIG_CACHE_DIR`, else `$XDG_CACHE_HOME/heaprig`, else `~/.cache/heaprig`.
fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("HEAPRIG_CACHE_DIR") {
        return Ok(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Ok(PathBuf::from(d).join("heaprig"));
    }
    let home = std::env::var_os("HOME").context(
        "neither HEAPRIG_CACHE_DIR, XDG_CACHE_HOME nor HOME is set, so there is no place for \
         the kernel cache; set HEAPRIG_CACHE_DIR to a directory with ~10 GB free",
    )?;
    Ok(PathBuf::from(home).join(".cache/heaprig"))
}

/// The host's cores, for labelling measurements.
pub fn host_cores() -> usize {
    std::thread::available_parallelism().map_or(0, |n| n.get())
}
