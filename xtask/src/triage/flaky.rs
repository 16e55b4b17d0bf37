//! `--retries N`: failed tests are run again, each retry in a fresh boot of the same kernel
//! (nothing a failure left in the kernel can leak into the retry), selected by exact name. A
//! test that fails and then passes is FLAKY; one that fails every time stays FAIL. The checks
//! over the whole run (kmemleak) are judged but never retried: a retry runs other tests, so it
//! cannot show that a whole run's failure was a flake.

use crate::parse::results::{RunResult, TestVerdict};

/// The tests of `r` worth retrying: failed, not a whole-run check.
pub fn to_retry(r: &RunResult, whole_run: &[String]) -> Vec<String> {
    r.tests
        .iter()
        .filter(|t| t.verdict == TestVerdict::Fail && !whole_run.contains(&t.name))
        .map(|t| t.name.clone())
        .collect()
}

/// Merges retry number `attempt` (1-based), which ran `retried`, into the first run `r`.
pub fn apply(r: &mut RunResult, attempt: u32, retried: &[String], retry: &RunResult) {
    let run_no = attempt + 1;
    for name in retried {
        let Some(t) = r.tests.iter_mut().find(|t| &t.name == name) else {
            continue;
        };
        match retry.tests.iter().find(|x| &x.name == name) {
            None => t
                .reasons
                .push(format!("retry: did not run on attempt {run_no}")),
            Some(x) if x.verdict == TestVerdict::Fail => t.reasons.push(format!(
                "failed again on attempt {run_no}: {}",
                x.reasons.first().map_or("no reason given", String::as_str)
            )),
            Some(x) => {
                t.verdict = TestVerdict::Flaky;
                let then = match x.verdict {
                    TestVerdict::Skip => "skipped",
                    TestVerdict::Known => "failed only through known issues",
                    _ => "passed",
                };
                t.reasons.insert(
                    0,
                    format!("FLAKY: failed on attempt 1, {then} on attempt {run_no}"),
                );
                for h in t
                    .heaps
                    .iter_mut()
                    .filter(|h| h.verdict == TestVerdict::Fail)
                {
                    let again = x.heaps.iter().find(|y| y.heap == h.heap);
                    if again.is_none_or(|y| y.verdict != TestVerdict::Fail) {
                        h.verdict = TestVerdict::Flaky;
                    }
                }
            }
        }
    }
    // Whatever else the retry saw is a finding of this run, never hidden by the triage.
    for x in retry.tests.iter().filter(|x| !retried.contains(&x.name)) {
        if x.verdict != TestVerdict::Fail {
            continue;
        }
        match r.tests.iter_mut().find(|t| t.name == x.name) {
            Some(t) => {
                t.verdict = TestVerdict::Fail;
                t.reasons.push(format!(
                    "attempt {run_no} (a retry): {}",
                    x.reasons.first().map_or("failed", String::as_str)
                ));
            }
            None => r
                .problems
                .push(format!("attempt {run_no} (a retry): {} failed", x.name)),
        }
    }
    r.problems
        .extend(retry.splats_outside_tests.iter().map(|s| {
            format!(
                "attempt {run_no}: kernel {} outside any test: {}",
                s.kind.label(),
                s.title
            )
        }));
    r.problems.extend(
        retry
            .problems
            .iter()
            .map(|p| format!("attempt {run_no}: {p}")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::results::combine;
    use crate::parse::{ktap, splat};
    use crate::stages::vm::Ending;

    fn run(ktap_text: &str) -> RunResult {
        let k = ktap::parse(ktap_text);
        let names: Vec<String> = k.tests.iter().map(|t| t.name.clone()).collect();
        combine(&k, &splat::parse(""), &names, &Ending::Exited { code: 1 })
    }

    const FIRST: &str = "KTAP version 1\n1..3\nnot ok 1 rig_selftest_flaky\n# deliberate flake\nnot ok 2 zeroing\n# broke\nnot ok 3 kmemleak\n# leak\n# heaprig-done: pass=0 fail=3 skip=0\n";

    #[test]
    fn a_failure_that_passes_when_retried_is_flaky() {
        let mut r = run(FIRST);
        let whole = vec!["kmemleak".to_string()];
        let again = to_retry(&r, &whole);
        assert_eq!(
            again,
            ["rig_selftest_flaky", "zeroing"],
            "whole-run checks are not retried"
        );
        let retry = run("KTAP version 1\n1..3\nok 1 rig_selftest_flaky\nnot ok 2 zeroing\n# broke again\nok 3 kmemleak\n# heaprig-done: pass=2 fail=1 skip=0\n");
        apply(&mut r, 1, &again, &retry);
        let v = |n: &str| r.tests.iter().find(|t| t.name == n).unwrap();
        assert_eq!(v("rig_selftest_flaky").verdict, TestVerdict::Flaky);
        assert!(v("rig_selftest_flaky").reasons[0]
            .starts_with("FLAKY: failed on attempt 1, passed on attempt 2"));
        assert_eq!(v("zeroing").verdict, TestVerdict::Fail);
        assert!(v("zeroing")
            .reasons
            .iter()
            .any(|x| x.contains("failed again on attempt 2")));
        assert_eq!(v("kmemleak").verdict, TestVerdict::Fail);
        assert_eq!(r.counts(&[]).flaky, 1);
        // Nothing left to retry but the test that keeps failing.
        assert_eq!(to_retry(&r, &whole), ["zeroing"]);
    }

    #[test]
    fn a_retry_cannot_hide_what_else_it_saw() {
        let mut r = run("KTAP version 1\n1..2\nnot ok 1 zeroing\nok 2 kmemleak\n# heaprig-done: pass=1 fail=1 skip=0\n");
        let retry = run("KTAP version 1\n1..2\nok 1 zeroing\nnot ok 2 kmemleak\n# 3 unreferenced objects\n# heaprig-done: pass=1 fail=1 skip=0\n");
        apply(&mut r, 1, &["zeroing".to_string()], &retry);
        let v = |n: &str| r.tests.iter().find(|t| t.name == n).unwrap().verdict;
        assert_eq!(
            (v("zeroing"), v("kmemleak")),
            (TestVerdict::Flaky, TestVerdict::Fail)
        );
        assert!(!r.passed());
    }
}
