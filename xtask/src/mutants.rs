//! The mutant corpus (`mutants/corpus.toml`): small realistic bugs of classes dma-buf heaps
//! have had, each a one-place text edit, with what the suite is expected to do about it.
//! Parsed and checked once, before anything is built.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::plan::Mutation;
use crate::stages::series::Series;

/// Where the corpus lives, from the project root.
pub const CORPUS: &str = "mutants/corpus.toml";

/// What a mutant breaks: a score is given per target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Our heap and its kernel-crate abstractions.
    RustSystem,
    /// The kernel's C system heap.
    System,
    /// The kernel's C CMA heap.
    Cma,
    /// The rig's test importer.
    Importer,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::RustSystem => "rust_system",
            Target::System => "system",
            Target::Cma => "cma",
            Target::Importer => "importer",
        })
    }
}

/// What the suite should do with a mutant.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    Killed,
    /// A known blind spot of the suite, and why.
    Gap(String),
    /// The edit does not change behaviour, and why.
    Equivalent(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Case {
    pub mutation: Mutation,
    pub target: Target,
    /// The bug class, in words.
    pub class: String,
    /// The kernels the edit applies to (the source differs between them); all when empty.
    pub kernels: Vec<Series>,
    pub expect: Expect,
}

impl Case {
    pub fn applies_to(&self, s: Series) -> bool {
        self.kernels.is_empty() || self.kernels.contains(&s)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    target: Target,
    class: String,
    file: String,
    from: String,
    to: String,
    #[serde(default)]
    kernels: Vec<Series>,
    expect: Option<String>,
    gap: Option<String>,
    equivalent: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCorpus {
    mutant: Vec<Raw>,
}

/// Parses and checks a corpus: unique kebab-case names, relative paths inside the tree, a
/// real edit, and exactly one expectation each.
pub fn parse(text: &str) -> Result<Vec<Case>> {
    let raw: RawCorpus = toml::from_str(text).context("the mutant corpus is not valid")?;
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for r in raw.mutant {
        let n = &r.name;
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            bail!("mutant {n:?}: a name is lowercase letters, digits and dashes");
        }
        if !names.insert(n.clone()) {
            bail!("mutant {n}: the name is used twice");
        }
        let p = Path::new(&r.file);
        if r.file.is_empty()
            || p.is_absolute()
            || p.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            bail!(
                "mutant {n}: file {:?} must be a path inside the kernel tree",
                r.file
            );
        }
        if r.from.is_empty() || r.from == r.to {
            bail!("mutant {n}: `from` must be non-empty text that `to` changes");
        }
        let expect = match (r.expect.as_deref(), r.gap, r.equivalent) {
            (Some("killed"), None, None) => Expect::Killed,
            (None, Some(why), None) if !why.trim().is_empty() => Expect::Gap(why),
            (None, None, Some(why)) if !why.trim().is_empty() => Expect::Equivalent(why),
            _ => bail!(
                "mutant {n}: give exactly one of expect = \"killed\", gap = \"why the suite \
                 cannot see it\", equivalent = \"why it changes nothing\""
            ),
        };
        out.push(Case {
            mutation: Mutation {
                name: r.name,
                file: r.file,
                from: r.from,
                to: r.to,
            },
            target: r.target,
            class: r.class,
            kernels: r.kernels,
            expect,
        });
    }
    if out.is_empty() {
        bail!("the mutant corpus is empty");
    }
    Ok(out)
}

/// Reads the project's corpus.
pub fn load(root: &Path) -> Result<Vec<Case>> {
    let path = root.join(CORPUS);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading the mutant corpus {}", path.display()))?;
    parse(&text).with_context(|| format!("in {}", path.display()))
}

/// Which mutants a run takes: the named ones (each must exist and apply to the kernel), or
/// `sample` of those that apply, picked by `seed` so successive runs cover the corpus, or all.
pub fn select(
    cases: Vec<Case>,
    series: Series,
    names: &[String],
    sample: Option<usize>,
    seed: u64,
) -> Result<Vec<Case>> {
    if !names.is_empty() {
        let mut picked = Vec::new();
        for n in names {
            let Some(c) = cases.iter().find(|c| &c.mutation.name == n) else {
                let all: Vec<&str> = cases.iter().map(|c| c.mutation.name.as_str()).collect();
                bail!(
                    "no mutant named {n:?} in {CORPUS}; it has: {}",
                    all.join(", ")
                );
            };
            if !c.applies_to(series) {
                bail!("mutant {n} does not apply to Linux {series} (see its `kernels`)");
            }
            picked.push(c.clone());
        }
        return Ok(picked);
    }
    let applicable: Vec<Case> = cases.into_iter().filter(|c| c.applies_to(series)).collect();
    Ok(match sample {
        Some(k) if k < applicable.len() => {
            let start = (seed % applicable.len() as u64) as usize;
            (0..k)
                .map(|i| applicable[(start + i) % applicable.len()].clone())
                .collect()
        }
        _ => applicable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = r#"
[[mutant]]
name = "a-b"
target = "rust_system"
class = "c"
file = "drivers/x.rs"
from = "x"
to = "y"
expect = "killed"
"#;

    #[test]
    fn parses_and_rejects() {
        let c = parse(ONE).unwrap();
        assert_eq!(c[0].expect, Expect::Killed);
        assert_eq!(c[0].target, Target::RustSystem);
        let bad = [
            (ONE.replace("a-b", "A_B"), "lowercase"),
            (
                ONE.replace("drivers/x.rs", "../x.rs"),
                "inside the kernel tree",
            ),
            (ONE.replace("to = \"y\"", "to = \"x\""), "non-empty"),
            (
                ONE.replace("expect = \"killed\"", "expect = \"killed\"\ngap = \"g\""),
                "exactly one",
            ),
            (ONE.replace("expect = \"killed\"", ""), "exactly one"),
            (format!("{ONE}{ONE}"), "used twice"),
            (ONE.replace("rust_system", "nope"), "not valid"),
        ];
        for (text, want) in bad {
            let e = format!("{:#}", parse(&text).unwrap_err());
            assert!(e.contains(want), "{want:?} not in {e}");
        }
    }

    #[test]
    fn selects_by_name_sample_and_kernel() {
        let mut cases = Vec::new();
        for (i, k) in ["", "6.12", "7.3"].iter().enumerate() {
            let mut c = parse(ONE).unwrap().remove(0);
            c.mutation.name = format!("m{i}");
            c.kernels = match *k {
                "6.12" => vec![Series::V6_12],
                "7.3" => vec![Series::V7_3],
                _ => vec![],
            };
            cases.push(c);
        }
        let names = |v: Vec<Case>| v.into_iter().map(|c| c.mutation.name).collect::<Vec<_>>();
        let all = select(cases.clone(), Series::V6_12, &[], None, 0).unwrap();
        assert_eq!(names(all), ["m0", "m1"]);
        let one = select(cases.clone(), Series::V6_12, &[], Some(1), 3).unwrap();
        assert_eq!(names(one), ["m1"]);
        let e = select(cases.clone(), Series::V6_12, &["m2".into()], None, 0).unwrap_err();
        assert!(e.to_string().contains("does not apply"), "{e}");
        let e = select(cases, Series::V6_12, &["zz".into()], None, 0).unwrap_err();
        assert!(e.to_string().contains("m0, m1, m2"), "{e}");
    }

    /// Every mutant of a file the project keeps (the overlay) applies to it today: the text
    /// it changes occurs exactly once. (Mutants of Debian's C files are checked against the
    /// prepared tree when `mutate` runs, before anything is built.)
    #[test]
    fn project_mutants_apply_to_the_current_source() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let cases = load(root).unwrap();
        let mut checked = 0;
        for c in &cases {
            let Some((from, _)) = crate::stages::kernel::OVERLAY
                .iter()
                .find(|(_, to)| *to == c.mutation.file)
            else {
                continue;
            };
            let text = std::fs::read_to_string(root.join(from)).unwrap();
            assert_eq!(
                text.matches(c.mutation.from.as_str()).count(),
                1,
                "mutant {}: its text in {from}",
                c.mutation.name
            );
            checked += 1;
        }
        assert!(checked > 0);
    }
}
