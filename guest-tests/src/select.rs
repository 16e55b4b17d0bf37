//! Test selection by name or glob, shared by the guest runner and (through `list`) the host,
//! so a pattern that selects nothing is rejected before a kernel is booted.

use heaprig_protocol::shard::Shard;

use crate::harness::{Case, CaseKind};

/// `*` matches any run of characters, `?` one character; everything else is literal.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], n) || (!n.is_empty() && go(p, &n[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &n[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// A pattern without glob characters matches as a substring (`vmap` selects `vmap_nested`);
/// `=NAME` matches that name only (the host's retries name tests this way).
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if let Some(exact) = pattern.strip_prefix('=') {
        exact == name
    } else if pattern.contains(['*', '?']) {
        glob_match(pattern, name)
    } else {
        name.contains(pattern)
    }
}

/// The cases a run executes. With no patterns: every case except the rig self-tests.
/// Self-tests run only when a pattern names them explicitly (contains "selftest"). The
/// `Finally` cases (checks over the whole run, kmemleak's 13 s) end the complete run, and a
/// targeted run only when a pattern names them (`-- vmap kmemleak`): a targeted run pays for
/// what it selected, with each test's own leak oracle as its leak check. Shards of the
/// complete run each end with them.
pub fn select<'a>(cases: &'a [Case], patterns: &[String], shard: Option<Shard>) -> Vec<&'a Case> {
    let in_shard = |c: &Case| shard.is_none_or(|s| s.owns(c.name));
    let named = |c: &Case| patterns.iter().any(|p| pattern_matches(p, c.name));
    let chosen = |c: &Case| {
        in_shard(c)
            && match c.kind {
                CaseKind::Test => patterns.is_empty() || named(c),
                CaseKind::SelfTest => patterns
                    .iter()
                    .any(|p| pattern_matches(p, c.name) && p.contains("selftest")),
                CaseKind::Finally => false,
            }
    };
    let mut out: Vec<&Case> = cases.iter().filter(|c| chosen(c)).collect();
    // Named, a whole-run check runs even alone (what leaked since boot); unnamed, it ends a
    // selection that has tests.
    let any = !out.is_empty();
    out.extend(cases.iter().filter(|c| {
        c.kind == CaseKind::Finally && if patterns.is_empty() { any } else { named(c) }
    }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cases::CASES;

    #[test]
    fn globs() {
        let table = [
            ("*", "anything", true),
            ("alloc_*", "alloc_mmap", true),
            ("alloc_*", "xalloc_mmap", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*sync*", "alloc_mmap_sync_roundtrip", true),
            ("exact", "exact", true),
        ];
        for (p, n, want) in table {
            assert_eq!(glob_match(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn default_selection_excludes_selftests() {
        let all = select(CASES, &[], None);
        assert!(!all.is_empty());
        assert!(all.iter().all(|c| c.kind != CaseKind::SelfTest));
        let star = select(CASES, &["*".to_string()], None);
        assert!(star.iter().all(|c| c.kind != CaseKind::SelfTest));
        let st = select(CASES, &["rig_selftest_fail".to_string()], None);
        assert_eq!(st[0].name, "rig_selftest_fail");
        assert_eq!(st.len(), 1, "a targeted run has no whole-run checks");
    }

    #[test]
    fn whole_run_checks_end_the_complete_run_and_runs_that_name_them() {
        let finally: Vec<&str> = CASES
            .iter()
            .filter(|c| c.kind == CaseKind::Finally)
            .map(|c| c.name)
            .collect();
        assert!(!finally.is_empty());
        let targeted = select(CASES, &["vmap".to_string()], None);
        assert!(targeted.iter().all(|c| c.kind == CaseKind::Test));
        for patterns in [vec![], vec!["vmap".to_string(), "kmemleak".to_string()]] {
            let s = select(CASES, &patterns, None);
            let tail: Vec<&str> = s[s.len() - finally.len()..]
                .iter()
                .map(|c| c.name)
                .collect();
            assert_eq!(tail, finally, "{patterns:?}");
        }
        assert!(select(CASES, &["no_such_test".to_string()], None).is_empty());
        let alone: Vec<&str> = select(CASES, &["kmemleak".to_string()], None)
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(alone, ["kmemleak"]);
    }

    #[test]
    fn substring_selects() {
        let s = select(CASES, &["sync".to_string()], None);
        assert!(s.iter().any(|c| c.name == "alloc_mmap_sync_roundtrip"));
        assert!(s
            .iter()
            .all(|c| c.name.contains("sync") || c.kind == CaseKind::Finally));
    }

    #[test]
    fn exact_names_select_one_test() {
        let s = select(CASES, &["=vmap".to_string()], None);
        assert!(s.is_empty(), "no test is called exactly vmap");
        let s = select(CASES, &["=rig_selftest_flaky".to_string()], None);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].name, "rig_selftest_flaky");
    }

    #[test]
    fn shards_split_the_tests_and_each_ends_with_the_whole_run_checks() {
        let all = select(CASES, &[], None);
        let tests: Vec<&str> = all
            .iter()
            .filter(|c| c.kind == CaseKind::Test)
            .map(|c| c.name)
            .collect();
        let mut seen = Vec::new();
        for index in 1..=2 {
            let part = select(CASES, &[], Some(Shard { index, count: 2 }));
            let finally = part.iter().filter(|c| c.kind == CaseKind::Finally).count();
            assert!(finally > 0 && part.last().unwrap().kind == CaseKind::Finally);
            seen.extend(
                part.iter()
                    .filter(|c| c.kind == CaseKind::Test)
                    .map(|c| c.name),
            );
        }
        seen.sort_unstable();
        let mut want = tests.clone();
        want.sort_unstable();
        assert_eq!(seen, want, "two shards together are the whole suite, once");
    }
}
