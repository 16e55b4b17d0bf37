//! `--known-issues FILE`: kernel splats already reported somewhere, each listed by its
//! fingerprint (the normalised first line the reports print) with a reason, a link and an
//! expiry date. A test that failed only through live-listed splats is KNOWN and does not fail
//! the run; after the expiry date the entry stops matching, so the splat fails the run again
//! and the report says the entry expired.
//!
//! ```toml
//! [[issue]]
//! fingerprint = "WARNING: CPU: [N] PID: [PID] at drivers/misc/lkdtm/bugs.c:123 lkdtm_WARNING"
//! reason = "LKDTM provokes it on purpose"
//! link = "https://lore.kernel.org/..."
//! expires = 2027-03-31
//! ```

use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use crate::clock::Date;
use crate::parse::results::{splat_reason, RunResult, TestVerdict};
use crate::parse::splat::{self, Splat};

/// One entry, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct KnownIssue {
    /// Normalised, as the reports print it.
    pub fingerprint: String,
    pub reason: String,
    pub link: String,
    pub expires: Date,
}

impl KnownIssue {
    fn live(&self, today: Date) -> bool {
        today <= self.expires
    }
}

/// The entries of a known-issues file; empty when none was given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KnownIssues(pub Vec<KnownIssue>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    #[serde(default)]
    issue: Vec<EntryToml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryToml {
    fingerprint: String,
    reason: String,
    link: String,
    expires: toml::value::Datetime,
}

impl KnownIssues {
    /// Reads and validates a file; every problem is an error naming the file and the entry.
    pub fn load(path: &Path) -> Result<KnownIssues> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the known-issues file {}", path.display()))?;
        Self::parse(&text).with_context(|| {
            format!(
                "{} is not a valid known-issues file (TOML: [[issue]] entries with fingerprint, \
                 reason, link and expires = YYYY-MM-DD)",
                path.display()
            )
        })
    }

    pub fn parse(text: &str) -> Result<KnownIssues> {
        let file: FileToml =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        let mut out = Vec::new();
        for (i, e) in file.issue.into_iter().enumerate() {
            let n = i + 1;
            let fingerprint = splat::normalise(e.fingerprint.trim());
            if fingerprint.len() < 8 {
                bail!(
                    "issue {n}: the fingerprint {:?} is too short to name one splat",
                    e.fingerprint
                );
            }
            if e.reason.trim().is_empty() || e.link.trim().is_empty() {
                bail!("issue {n}: reason and link must say why the splat is known and where");
            }
            let expires = match (e.expires.date, e.expires.time) {
                (Some(d), None) => Date {
                    year: i32::from(d.year),
                    month: u32::from(d.month),
                    day: u32::from(d.day),
                },
                _ => bail!(
                    "issue {n}: expires must be a date (YYYY-MM-DD), not {}",
                    e.expires
                ),
            };
            out.push(KnownIssue {
                fingerprint,
                reason: e.reason.trim().to_string(),
                link: e.link.trim().to_string(),
                expires,
            });
        }
        Ok(KnownIssues(out))
    }

    fn lookup(&self, s: &Splat) -> Option<&KnownIssue> {
        self.0.iter().find(|k| k.fingerprint == s.title)
    }
}

/// A known-issues entry that matched a splat of the run, and where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Seen {
    pub fingerprint: String,
    pub reason: String,
    pub link: String,
    pub expires: String,
    /// Expired entries match no more: their splats failed the run.
    pub expired: bool,
    /// `TEST` or `TEST/HEAP`, or "(outside any test)".
    pub seen_in: Vec<String>,
}

/// Applies the entries to a judged run (in place).
pub fn apply(r: &mut RunResult, known: &KnownIssues, today: Date) {
    if known.0.is_empty() {
        return;
    }
    let mut seen: Vec<Seen> = Vec::new();
    let mut note = |k: &KnownIssue, label: &str| {
        let expired = !k.live(today);
        match seen.iter_mut().find(|s| s.fingerprint == k.fingerprint) {
            Some(s) => {
                if !s.seen_in.iter().any(|x| x == label) {
                    s.seen_in.push(label.to_string());
                }
            }
            None => seen.push(Seen {
                fingerprint: k.fingerprint.clone(),
                reason: k.reason.clone(),
                link: k.link.clone(),
                expires: k.expires.to_string(),
                expired,
                seen_in: vec![label.to_string()],
            }),
        }
    };
    for t in &mut r.tests {
        let mut any_known = false;
        for h in &mut t.heaps {
            let label = format!("{}/{}", t.name, h.heap);
            any_known |= triage_node(
                &mut h.verdict,
                h.guest,
                &mut h.reasons,
                &h.splats,
                known,
                today,
                &label,
                &mut note,
            );
        }
        let own_known = triage_node(
            &mut t.verdict,
            t.guest,
            &mut t.reasons,
            &t.splats,
            known,
            today,
            &t.name,
            &mut note,
        );
        any_known |= own_known;
        // The test as a whole: KNOWN when nothing but live-known splats failed it.
        let heaps_ok = t.heaps.iter().all(|h| h.verdict != TestVerdict::Fail);
        if t.verdict == TestVerdict::Fail && any_known && heaps_ok && t.guest != TestVerdict::Fail {
            let own_unknown = t
                .splats
                .iter()
                .any(|s| !known.lookup(s).is_some_and(|k| k.live(today)));
            if !own_unknown {
                t.verdict = TestVerdict::Known;
                for x in &mut t.reasons {
                    relabel(x, known, today, &t.splats, &t.heaps);
                }
            }
        }
    }
    let mut still = Vec::new();
    for s in std::mem::take(&mut r.splats_outside_tests) {
        match known.lookup(&s) {
            Some(k) => {
                note(k, "(outside any test)");
                if !k.live(today) {
                    still.push(s);
                }
            }
            None => still.push(s),
        }
    }
    r.splats_outside_tests = still;
    r.known_seen = seen;
}

/// One test or heap column: KNOWN when the guest did not fail it and every splat it had is
/// listed and live. Returns whether any of its splats was listed and live.
#[allow(clippy::too_many_arguments)]
fn triage_node(
    verdict: &mut TestVerdict,
    guest: TestVerdict,
    reasons: &mut [String],
    splats: &[Splat],
    known: &KnownIssues,
    today: Date,
    label: &str,
    note: &mut impl FnMut(&KnownIssue, &str),
) -> bool {
    let mut live = 0;
    for s in splats {
        if let Some(k) = known.lookup(s) {
            note(k, label);
            let why = splat_reason(s);
            if let Some(x) = reasons.iter_mut().find(|x| **x == why) {
                *x = if k.live(today) {
                    live += 1;
                    format!("known issue: {why} ({}; {})", k.reason, k.link)
                } else {
                    format!("{why} (its known-issues entry expired on {})", k.expires)
                };
            }
        }
    }
    if !splats.is_empty() && live == splats.len() && guest != TestVerdict::Fail {
        *verdict = TestVerdict::Known;
    }
    live > 0
}

/// A whole test's copy of a heap's splat reason, relabelled as the heap's was.
fn relabel(
    x: &mut String,
    known: &KnownIssues,
    today: Date,
    own: &[Splat],
    heaps: &[crate::parse::results::HeapResult],
) {
    for s in own.iter().chain(heaps.iter().flat_map(|h| &h.splats)) {
        if *x == splat_reason(s) {
            if let Some(k) = known.lookup(s).filter(|k| k.live(today)) {
                *x = format!("known issue: {x} ({}; {})", k.reason, k.link);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::results::combine;
    use crate::parse::{ktap, splat};
    use crate::stages::vm::Ending;

    const WARN: &str = "[ 1.0] heaprig: begin set_name/system\n[ 1.1] WARNING: CPU: 0 PID: 9 at x.c:1 f\n[ 1.2] ---[ end trace 0 ]---\n[ 1.3] heaprig: end set_name/system\n";

    fn run(log: &str) -> RunResult {
        let k = ktap::parse(&crate::fixture("guest-pass.ktap"));
        let names: Vec<String> = k.tests.iter().map(|t| t.name.clone()).collect();
        combine(&k, &splat::parse(log), &names, &Ending::Exited { code: 0 })
    }

    fn file(expires: &str) -> KnownIssues {
        KnownIssues::parse(&format!(
            "[[issue]]\nfingerprint = \"[ 5.5] WARNING: CPU: 1 PID: 77 at x.c:1 f\"\nreason = \"seen upstream\"\nlink = \"https://example.org/1\"\nexpires = {expires}\n"
        ))
        .unwrap()
    }

    const DAY: Date = Date {
        year: 2026,
        month: 11,
        day: 30,
    };

    #[test]
    fn a_listed_splat_is_known_until_its_entry_expires() {
        let mut r = run(WARN);
        assert!(!r.passed());
        // The entry was pasted from a raw console line: it is normalised like the splat.
        apply(&mut r, &file("2026-11-30"), DAY);
        let t = r.tests.iter().find(|t| t.name == "set_name").unwrap();
        assert_eq!(t.verdict, TestVerdict::Known, "{t:#?}");
        let h = t.heaps.iter().find(|h| h.heap == "system").unwrap();
        assert_eq!(h.verdict, TestVerdict::Known);
        assert!(
            h.reasons[0].starts_with("known issue: kernel WARNING"),
            "{h:#?}"
        );
        assert!(r.passed());
        assert_eq!(r.known_seen.len(), 1);
        assert_eq!(r.known_seen[0].seen_in, ["set_name/system"]);
        assert!(!r.known_seen[0].expired);

        let mut r = run(WARN);
        apply(&mut r, &file("2026-11-29"), DAY);
        let t = r.tests.iter().find(|t| t.name == "set_name").unwrap();
        assert_eq!(t.verdict, TestVerdict::Fail);
        assert!(t.heaps.iter().any(|h| h
            .reasons
            .iter()
            .any(|x| x.contains("expired on 2026-11-29"))));
        assert!(!r.passed());
        assert!(r.known_seen[0].expired);
    }

    #[test]
    fn a_test_that_failed_by_itself_stays_failed() {
        let mut r = run(WARN);
        let t = r.tests.iter_mut().find(|t| t.name == "set_name").unwrap();
        let h = t.heaps.iter_mut().find(|h| h.heap == "system").unwrap();
        h.guest = TestVerdict::Fail;
        apply(&mut r, &file("2027-01-01"), DAY);
        let t = r.tests.iter().find(|t| t.name == "set_name").unwrap();
        assert_eq!(t.verdict, TestVerdict::Fail);
        // An unlisted splat stays a failure too.
        let mut r = run(&WARN.replace("x.c:1 f", "y.c:2 g"));
        apply(&mut r, &file("2027-01-01"), DAY);
        assert!(!r.passed());
        assert!(r.known_seen.is_empty());
    }

    #[test]
    fn outside_splats_are_triaged_too() {
        let mut r = run("[ 1.1] WARNING: CPU: 0 PID: 9 at x.c:1 f\n[ 1.2] ---[ end trace 0 ]---\n");
        assert_eq!(r.splats_outside_tests.len(), 1);
        apply(&mut r, &file("2027-01-01"), DAY);
        assert!(r.splats_outside_tests.is_empty() && r.passed());
    }

    #[test]
    fn bad_files_are_clear_errors() {
        for (text, words) in [
            ("[[issue]]\nfingerprint = \"x\"\nreason = \"r\"\nlink = \"l\"\nexpires = 2027-01-01\n", "too short"),
            ("[[issue]]\nfingerprint = \"WARNING: at x.c\"\nreason = \"r\"\nlink = \"l\"\nexpires = \"soon\"\n", "TOML datetime"),
            ("[[issue]]\nfingerprint = \"WARNING: at x.c\"\nreason = \"r\"\nlink = \"l\"\n", "missing field `expires`"),
            ("[[issue]]\nfingerprint = \"WARNING: at x.c\"\nreason = \"r\"\nlink = \"l\"\nexpires = 2027-01-01\ncolour = 1\n", "colour"),
            ("[[issue]]\nfingerprint = \"WARNING: at x.c\"\nreason = \"\"\nlink = \"l\"\nexpires = 2027-01-01\n", "reason"),
        ] {
            let e = format!("{:#}", KnownIssues::parse(text).unwrap_err());
            assert!(e.contains(words), "{e}");
        }
    }
}
