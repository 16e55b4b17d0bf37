//! A Kconfig as a value (kunit_tool's `kunit_config.py`): parse fragments and `.config`
//! files, merge fragments in order, and after `olddefconfig` check that every requested
//! option survived, explaining what a dropped option depends on.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};

/// `Some(value)` for `CONFIG_X=value`, `None` for `# CONFIG_X is not set`.
///
/// Order is kept: Kconfig resolves a `choice` by the last member read as `y`, so merged
/// entries go after the ones they override, as `scripts/kconfig/merge_config.sh` does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kconfig {
    pub entries: BTreeMap<String, Option<String>>,
    order: Vec<String>,
}

impl Kconfig {
    fn set(&mut self, key: &str, value: Option<String>) {
        if self.entries.insert(key.to_string(), value).is_some() {
            self.order.retain(|k| k != key);
        }
        self.order.push(key.to_string());
    }

    pub fn parse(text: &str) -> Result<Kconfig, String> {
        let mut k = Kconfig::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("# ") {
                if let Some(name) = rest.strip_suffix(" is not set") {
                    if name.starts_with("CONFIG_") {
                        k.set(name, None);
                    }
                }
                continue;
            }
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, v) = line
                .split_once('=')
                .ok_or_else(|| format!("line {}: expected CONFIG_X=value, got {line:?}", n + 1))?;
            if !key.starts_with("CONFIG_") || key.contains(char::is_whitespace) {
                return Err(format!("line {}: {key:?} is not a CONFIG_ option", n + 1));
            }
            k.set(key, Some(v.to_string()));
        }
        Ok(k)
    }

    pub fn read(path: &Path) -> Result<Kconfig> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Kconfig::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Later fragments override earlier ones, as `merge_config.sh` does.
    pub fn merge_in(&mut self, other: &Kconfig) {
        for k in &other.order {
            self.set(k, other.entries[k].clone());
        }
    }

    /// Entries of `self` that `actual` does not honour. "Not set" is honoured by absence.
    pub fn missing_from(&self, actual: &Kconfig) -> Vec<(String, Option<String>)> {
        self.entries
            .iter()
            .filter(|(k, want)| {
                let got = actual.entries.get(*k).cloned().flatten();
                match want {
                    Some(v) => got.as_deref() != Some(v.as_str()),
                    None => got.is_some_and(|g| g != "n"),
                }
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

impl fmt::Display for Kconfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for k in &self.order {
            match &self.entries[k] {
                Some(v) => writeln!(f, "{k}={v}")?,
                None => writeln!(f, "# {k} is not set")?,
            }
        }
        Ok(())
    }
}

/// What a symbol needs, read from the Kconfig sources: `depends on` lines and the `if`
/// blocks around its definition. Used to explain a dropped option.
pub fn explain(src: &Path, option: &str) -> Option<String> {
    let sym = option.strip_prefix("CONFIG_").unwrap_or(option);
    let mut found = Vec::new();
    visit_kconfigs(src, &mut |path, text| {
        let mut ifs: Vec<String> = Vec::new();
        let mut in_sym = false;
        let mut deps = Vec::new();
        for line in text.lines() {
            let t = line.trim();
            if let Some(c) = t.strip_prefix("if ") {
                ifs.push(c.trim().to_string());
            } else if t == "endif" {
                ifs.pop();
            }
            let starts = t
                .strip_prefix("config ")
                .or_else(|| t.strip_prefix("menuconfig "));
            if let Some(name) = starts {
                if in_sym {
                    break;
                }
                in_sym = name.trim() == sym;
                if in_sym {
                    deps.extend(ifs.iter().map(|c| format!("inside `if {c}`")));
                }
                continue;
            }
            if in_sym {
                if let Some(d) = t.strip_prefix("depends on ") {
                    deps.push(format!("depends on {d}"));
                }
            }
        }
        if in_sym || !deps.is_empty() {
            let rel = path.strip_prefix(src).unwrap_or(path);
            found.push(format!("{}: {}", rel.display(), deps.join("; ")));
        }
    });
    if found.is_empty() {
        None
    } else {
        Some(found.join(" | "))
    }
}

fn visit_kconfigs(dir: &Path, f: &mut dyn FnMut(&Path, &str)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        match e.file_type() {
            Ok(t) if t.is_dir() => visit_kconfigs(&p, f),
            Ok(t) if t.is_file() && name.starts_with("Kconfig") => {
                if let Ok(text) = std::fs::read_to_string(&p) {
                    f(&p, &text);
                }
            }
            _ => {}
        }
    }
}

/// One `Missing: ...` line per dropped option, as the config stage prints them.
pub fn describe_missing(src: &Path, missing: &[(String, Option<String>)]) -> String {
    missing
        .iter()
        .map(|(k, v)| {
            let want = match v {
                Some(v) => format!("{k}={v}"),
                None => format!("# {k} is not set"),
            };
            match explain(src, k) {
                Some(why) => format!("Missing: {want} (needs: {why})"),
                None => format!("Missing: {want} (no such symbol in this tree's Kconfig)"),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_merge() {
        let mut a =
            Kconfig::parse("CONFIG_A=y\n# CONFIG_B is not set\n\n# comment\nCONFIG_C=\"x y\"\n")
                .unwrap();
        let b = Kconfig::parse("CONFIG_B=y\n# CONFIG_A is not set\n").unwrap();
        a.merge_in(&b);
        assert_eq!(a.entries["CONFIG_A"], None);
        assert_eq!(a.entries["CONFIG_B"].as_deref(), Some("y"));
        assert_eq!(a.entries["CONFIG_C"].as_deref(), Some("\"x y\""));
        let round = Kconfig::parse(&a.to_string()).unwrap();
        assert_eq!(round, a);
        // Overridden entries move after the rest, so a choice member set later wins.
        let text = a.to_string();
        assert!(
            text.find("CONFIG_C").unwrap() < text.find("CONFIG_B").unwrap(),
            "{text}"
        );
    }

    #[test]
    fn bad_fragment_lines_are_errors() {
        assert!(Kconfig::parse("FOO=y").is_err());
        assert!(Kconfig::parse("CONFIG_FOO").is_err());
    }

    #[test]
    fn missing_options() {
        let want =
            Kconfig::parse("CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=m\n").unwrap();
        let got = Kconfig::parse("CONFIG_A=y\nCONFIG_C=y\nCONFIG_D=y\n").unwrap();
        let m: Vec<_> = want
            .missing_from(&got)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(m, ["CONFIG_B", "CONFIG_C", "CONFIG_D"]);
    }

    #[test]
    fn explains_dependencies() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("lib")).unwrap();
        std::fs::write(
            dir.path().join("lib/Kconfig.debug"),
            "menuconfig RUNTIME_TESTING_MENU\n\tbool \"x\"\nif RUNTIME_TESTING_MENU\nconfig LKDTM\n\ttristate \"l\"\n\tdepends on DEBUG_FS\n\nconfig OTHER\n\tbool\nendif\n",
        )
        .unwrap();
        let why = explain(dir.path(), "CONFIG_LKDTM").unwrap();
        assert!(why.contains("inside `if RUNTIME_TESTING_MENU`"), "{why}");
        assert!(why.contains("depends on DEBUG_FS"), "{why}");
        assert!(explain(dir.path(), "CONFIG_NOPE").is_none());
    }
}
