//! Suite results kept across commands, keyed by everything that decides them (the kernel's
//! identity, profile, the rig's own version, the VM and the suite): `validate` runs a base
//! once, and `mutate` reuses the unmutated run `cargo xtask test` just made of the same
//! kernel instead of booting it again. Only raw artefacts of a real guest run are stored;
//! a load re-parses them.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::cmd::test;
use crate::cmd::tree;
use crate::env::Env;
use crate::parse::results::RunResult;
use crate::plan::TestPlan;
use crate::stages::vm::Ending;
use crate::stages::Prepared;

/// Cached base results: the raw artefacts, re-parsed on use (the parse stage needs no kernel).
pub struct ResultCache {
    pub dir: PathBuf,
}

const ARTEFACTS: &[&str] = &[
    "guest.ktap",
    "stream.ktap",
    "console.log",
    "selected.txt",
    "ending.json",
    "results.json",
];

impl ResultCache {
    pub fn new(env: &Env, key: &str) -> ResultCache {
        ResultCache {
            dir: env.cache.join("results").join(key),
        }
    }

    pub fn load(&self) -> Option<RunResult> {
        let selected: Vec<String> = fs::read_to_string(self.dir.join("selected.txt"))
            .ok()?
            .lines()
            .map(str::to_string)
            .collect();
        let ending: Ending =
            serde_json::from_str(&fs::read_to_string(self.dir.join("ending.json")).ok()?).ok()?;
        test::analyse(&self.dir, &selected, &ending).ok()
    }

    pub fn store(&self, run_dir: &Path) -> Result<()> {
        let tmp = self.dir.with_extension("partial");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp)?;
        for f in ARTEFACTS {
            let from = run_dir.join(f);
            if from.exists() {
                fs::copy(&from, tmp.join(f))?;
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        fs::rename(&tmp, &self.dir)?;
        Ok(())
    }
}

impl ResultCache {
    /// The entry of a suite run of the prepared kernel `p` as `plan` runs it.
    pub fn for_suite(env: &Env, p: &Prepared, plan: &TestPlan) -> ResultCache {
        let key = tree::result_key(
            env,
            &p.identity,
            plan.kernel.profile,
            &plan.vm,
            &plan.suite.cache_part(),
        );
        ResultCache::new(env, &key)
    }
}
