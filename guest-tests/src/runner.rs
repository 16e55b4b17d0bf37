//! Runs test cases, each in its own child process with its own timeout, and prints KTAP v1
//! as it goes so a crash mid-suite loses nothing already reported.
//!
//! Test boundaries are also written to /dev/kmsg (`heaprig_protocol::kmsg` markers) so the host
//! can attribute kernel splats to the test that caused them; heaprig's KTAP notes come from
//! `heaprig_protocol::note`, whose parser the host uses.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::time::{Duration, Instant};

use heaprig_protocol::{kmsg, note};

use crate::harness::{Body, Case, Ctx, Stop};
use crate::leaks::Holdings;
use crate::process::{self, signal_name, Exit};
use crate::taint::Taint;
use crate::uapi::{heap_names, Heap, DMA_HEAP_DIR};

/// Where KTAP goes: stdout (streamed to the host) and optionally a copy in the results dir.
pub struct Out {
    copy: Option<File>,
    kmsg: Option<File>,
}

impl Out {
    pub fn new(copy: Option<File>) -> Out {
        // User writes to /dev/kmsg are rate-limited by default (10 lines per 5 s), which
        // would silently drop test markers and misattribute splats.
        let _ = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n");
        Out {
            copy,
            kmsg: OpenOptions::new().write(true).open("/dev/kmsg").ok(),
        }
    }

    pub fn line(&mut self, indent: usize, text: &str) {
        let line = format!("{:width$}{text}\n", "", width = indent * 4);
        let mut stdout = io::stdout().lock();
        // Output errors cannot be reported anywhere better than by the missing lines.
        let _ = stdout.write_all(line.as_bytes());
        let _ = stdout.flush();
        if let Some(f) = &mut self.copy {
            let _ = f.write_all(line.as_bytes());
        }
    }

    /// Writes one kernel-log line (a `heaprig_protocol::kmsg` marker).
    fn kmsg(&mut self, line: &str) {
        if let Some(k) = &mut self.kmsg {
            let _ = k.write_all(format!("{line}\n").as_bytes());
        }
    }
}

/// What one child run produced.
#[derive(Debug)]
pub struct ChildResult {
    pub ctx: Ctx,
    pub status: ChildStatus,
    pub elapsed: Duration,
    /// The test's process, when one was forked.
    pub pid: Option<libc::pid_t>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ChildStatus {
    Pass,
    Fail(String),
    Skip(String),
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// A test child forked and not yet collected (see [`start_child`]).
pub struct Running {
    child: process::Child,
    rd: std::os::fd::OwnedFd,
    start: Instant,
    timeout: Duration,
}

/// Runs `f` in a forked child with an alarm-based timeout and collects what it reported.
pub fn run_in_child(
    timeout: Duration,
    f: impl FnOnce(&mut Ctx) -> Result<(), Stop>,
) -> ChildResult {
    match start_child(timeout, f) {
        Ok(running) => running.finish(),
        Err(failed) => failed,
    }
}

/// Forks a child that runs `f` under its own alarm; the error is the result of a child that
/// could not be started.
pub fn start_child(
    timeout: Duration,
    f: impl FnOnce(&mut Ctx) -> Result<(), Stop>,
) -> Result<Running, ChildResult> {
    let start = Instant::now();
    let not_started = |why: String| ChildResult {
        ctx: Ctx::default(),
        status: ChildStatus::Fail(why),
        elapsed: start.elapsed(),
        pid: None,
    };
    let (rd, wr) = process::pipe().map_err(|e| not_started(format!("pipe2: {e}")))?;
    // The runner is single-threaded, so the child may run arbitrary code after fork.
    let spawned = process::spawn_with(timeout, (rd, wr), move |(rd, wr)| {
        drop(rd);
        let mut ctx = Ctx::default();
        let result = f(&mut ctx);
        let mut w = File::from(wr);
        let mut msg = String::new();
        for (k, v) in &ctx.facts {
            msg.push_str(&format!("F {}\t{}\n", one_line(k), one_line(v)));
        }
        for d in &ctx.diags {
            msg.push_str(&format!("D {}\n", one_line(d)));
        }
        msg.push_str(&match result {
            Ok(()) => "P\n".to_string(),
            Err(Stop::Fail(m)) => format!("X {}\n", one_line(&m)),
            Err(Stop::Skip(m)) => format!("S {}\n", one_line(&m)),
        });
        let ok = w.write_all(msg.as_bytes()).is_ok();
        if ok {
            0
        } else {
            1
        }
    });
    let (child, (rd, wr)) = spawned.map_err(|e| not_started(format!("fork: {e}")))?;
    drop(wr);
    Ok(Running {
        child,
        rd,
        start,
        timeout,
    })
}

impl Running {
    pub fn pid(&self) -> libc::pid_t {
        self.child.pid()
    }

    /// Reads what the child reported until it closes its end, then reaps it. A child writes
    /// only at its end, so collecting several in turn never waits on one that is blocked.
    pub fn finish(self) -> ChildResult {
        let Running {
            mut child,
            rd,
            start,
            timeout,
        } = self;
        let mut ctx = Ctx::default();
        let mut status = None;
        for line in BufReader::new(File::from(rd)).lines() {
            let Ok(line) = line else { break };
            let (tag, rest) = line.split_at(1.min(line.len()));
            let rest = rest.trim_start();
            match tag {
                "F" => {
                    let (k, v) = rest.split_once('\t').unwrap_or((rest, ""));
                    ctx.fact(k, v);
                }
                "D" => ctx.diag(rest),
                "P" => status = Some(ChildStatus::Pass),
                "X" => status = Some(ChildStatus::Fail(rest.to_string())),
                "S" => status = Some(ChildStatus::Skip(rest.to_string())),
                _ => ctx.diag(format!("unexpected child output: {line}")),
            }
        }
        // A failed waitpid leaves a zero status: exited, with status 0.
        let exit = child.wait_exit().unwrap_or(Exit::Code(0));
        let status = match exit {
            Exit::Signal(libc::SIGALRM) => {
                ChildStatus::Fail(format!("timed out after {}s", timeout.as_secs()))
            }
            Exit::Signal(sig) => ChildStatus::Fail(format!(
                "crashed: killed by signal {sig} ({})",
                signal_name(sig)
            )),
            Exit::Code(code) => status.unwrap_or_else(|| {
                ChildStatus::Fail(format!(
                    "child exited with status {} without reporting a result",
                    code
                ))
            }),
        };
        ChildResult {
            ctx,
            status,
            elapsed: start.elapsed(),
            pid: Some(child.pid()),
        }
    }
}

/// Prints one result line plus its facts and diagnostics at `indent`.
fn report(out: &mut Out, indent: usize, n: usize, name: &str, r: &ChildResult) {
    for (k, v) in &r.ctx.facts {
        out.line(indent, &note::fact(k, v));
    }
    for d in &r.ctx.diags {
        out.line(indent, &format!("# {d}"));
    }
    match &r.status {
        ChildStatus::Pass => out.line(indent, &format!("ok {n} {name}")),
        ChildStatus::Skip(why) => out.line(indent, &format!("ok {n} {name} # SKIP {why}")),
        ChildStatus::Fail(why) => {
            out.line(indent, &format!("# {why}"));
            out.line(indent, &format!("not ok {n} {name}"));
        }
    }
    out.line(indent, &note::time(name, r.elapsed.as_millis()));
}

/// Totals for the closing sentinel line.
#[derive(Default, Debug)]
pub struct Totals {
    pub pass: usize,
    pub fail: usize,
    pub skip: usize,
}

impl Totals {
    fn add(&mut self, s: &ChildStatus) {
        match s {
            ChildStatus::Pass => self.pass += 1,
            ChildStatus::Fail(_) => self.fail += 1,
            ChildStatus::Skip(_) => self.skip += 1,
        }
    }
}

/// Runs `f` in a child between kernel-log markers naming `label`, with the leak oracle: what
/// the kernel holds for dma-bufs after the child is gone must be what it held before (a
/// process's files are released before its parent can reap it).
fn run_checked(
    out: &mut Out,
    label: &str,
    timeout: Duration,
    f: impl FnOnce(&mut Ctx) -> Result<(), Stop>,
) -> ChildResult {
    out.kmsg(&kmsg::begin(label));
    let before = holdings_before();
    let mut r = run_in_child(timeout, f);
    if let Some(pid) = r.pid {
        remember_pid(pid, label);
    }
    let after = holdings_after();
    out.kmsg(&kmsg::end(label));
    let finding = oracle_verdict(&before, &after, oracle_expected(), &mut r.ctx);
    r.status = with_finding(r.status, finding);
    r
}

/// The holdings before a test. Nothing runs between two tests, so the holdings after one are
/// the next one's before: one read per test instead of two (page_owner's stacks cost ~0.2 s
/// a read here).
fn holdings_before() -> Result<Holdings, String> {
    LAST_HOLDINGS
        .lock()
        .ok()
        .and_then(|mut l| l.take())
        .map_or_else(Holdings::read, Ok)
}

/// The holdings after a test, kept as the next one's before.
fn holdings_after() -> Result<Holdings, String> {
    let after = Holdings::read();
    if let (Ok(a), Ok(mut l)) = (&after, LAST_HOLDINGS.lock()) {
        *l = Some(a.clone());
    }
    after
}

/// Records the process that ran `label`, for the whole-run kmemleak check.
fn remember_pid(pid: libc::pid_t, label: &str) {
    if let Ok(mut p) = TEST_PIDS.lock() {
        p.push((pid, label.to_string()));
    }
}

/// Opens `heap` in a test's child, failing the test with the reason.
fn open_heap(heap: &str) -> Result<Heap, Stop> {
    Heap::open(heap).map_err(|e| Stop::Fail(format!("open {DMA_HEAP_DIR}/{heap}: {e}")))
}

/// A leak fails a pass and a skip alike (a test that leaked and then skipped still leaked);
/// a failure keeps its own reason.
fn with_finding(status: ChildStatus, finding: Option<String>) -> ChildStatus {
    match (status, finding) {
        (ChildStatus::Fail(why), _) => ChildStatus::Fail(why),
        (_, Some(why)) => ChildStatus::Fail(why),
        (s, None) => s,
    }
}

/// The leak oracle's finding for one test: the failure reason, if any, with each finding as a
/// diagnostic. It fails closed: a holdings read that fails around a test is a failure, unless
/// the oracle is off for the whole run (no bufinfo on a kernel without debugfs, said at the
/// top of the run).
pub fn oracle_verdict(
    before: &Result<Holdings, String>,
    after: &Result<Holdings, String>,
    expected: bool,
    ctx: &mut Ctx,
) -> Option<String> {
    let (b, a) = match (before, after) {
        (Ok(b), Ok(a)) => (b, a),
        (Err(e), _) | (_, Err(e)) if expected => {
            return Some(format!(
                "leak oracle: cannot read the kernel's holdings {} the test: {e}",
                if before.is_err() { "before" } else { "after" }
            ))
        }
        _ => return None,
    };
    let leaks = a.leaked_since(b);
    let first = leaks.first()?;
    for l in &leaks {
        ctx.diag(format!("leak: {l}"));
    }
    Some(format!(
        "leak oracle: {first} ({} finding(s) in all)",
        leaks.len()
    ))
}

/// The oracle must work on a kernel with debugfs (bufinfo); without a config, it must work if
/// it worked when the run started.
fn oracle_expected() -> bool {
    crate::expect::built_with("CONFIG_DEBUG_FS") || ORACLE_AT_START.get().copied().unwrap_or(false)
}

static ORACLE_AT_START: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Each test's process and its label (`name` or `name/heap`), in run order: the whole-run
/// kmemleak check names a leak by the process that allocated it.
static TEST_PIDS: std::sync::Mutex<Vec<(libc::pid_t, String)>> = std::sync::Mutex::new(Vec::new());

/// The label of the test whose process was `pid` (the latest, should a pid be reused).
pub fn test_of_pid(pid: libc::pid_t) -> Option<String> {
    let pids = TEST_PIDS.lock().ok()?;
    pids.iter()
        .rev()
        .find(|(p, _)| *p == pid)
        .map(|(_, l)| l.clone())
}

/// The holdings read after the last test (see `run_checked`).
static LAST_HOLDINGS: std::sync::Mutex<Option<Holdings>> = std::sync::Mutex::new(None);

/// What a side-by-side case produced: a result per heap, in heap order, and a failure of
/// the case as a whole when something went wrong side by side that no heap did again alone.
struct SideBySide {
    results: Vec<ChildResult>,
    unexplained: Option<String>,
}

/// Runs a per-heap body on every heap at once, one child each, between markers naming every
/// column and each child's pid (so the host can name the test of a report that names its
/// task). One leak-oracle reading covers them all. A failure, a leak or a new kernel taint
/// sends each heap again alone, with its own markers and oracle: those runs are the
/// verdicts, and what went wrong side by side is a diagnostic of each.
fn run_side_by_side(
    out: &mut Out,
    name: &str,
    heaps: &[String],
    f: fn(&mut Ctx, &Heap) -> Result<(), Stop>,
    timeout: Duration,
) -> SideBySide {
    let labels: Vec<String> = heaps.iter().map(|h| format!("{name}/{h}")).collect();
    for label in &labels {
        out.kmsg(&kmsg::begin(label));
    }
    let before = holdings_before();
    let taint_before = Taint::now().ok();
    let beside = heaps.len();
    let running: Vec<Result<Running, ChildResult>> = heaps
        .iter()
        .zip(&labels)
        .map(|(heap, label)| {
            let started = start_child(timeout, |ctx| {
                ctx.beside = beside;
                f(ctx, &open_heap(heap)?)
            });
            if let Ok(r) = &started {
                out.kmsg(&kmsg::pid(r.pid(), label));
                remember_pid(r.pid(), label);
            }
            started
        })
        .collect();
    let results: Vec<ChildResult> = running
        .into_iter()
        .map(|r| r.map_or_else(|failed| failed, Running::finish))
        .collect();
    let after = holdings_after();
    for label in &labels {
        out.kmsg(&kmsg::end(label));
    }
    let mut oracle = Ctx::default();
    let finding = oracle_verdict(&before, &after, oracle_expected(), &mut oracle);
    let trouble = Trouble::of(heaps, &results, finding, taint_before, Taint::now().ok());
    if trouble.is_none() {
        return SideBySide {
            results,
            unexplained: None,
        };
    }
    out.line(
        1,
        &format!(
            "# side by side: {}; each heap again alone, to name the one at fault",
            trouble.why()
        ),
    );
    for d in &oracle.diags {
        out.line(1, &format!("# side by side: {d}"));
    }
    let mut again = Vec::new();
    for (heap, first) in heaps.iter().zip(&results) {
        // A begin note per rerun keeps the host's watchdog on each child's own limit.
        out.line(1, &note::begin(&format!("{name}/{heap}")));
        let mut r = run_on_heap(out, name, heap, f, timeout);
        r.ctx.diag(format!(
            "side by side with the other heaps first: {}",
            match &first.status {
                ChildStatus::Pass => "passed".to_string(),
                ChildStatus::Skip(why) => format!("skipped: {why}"),
                ChildStatus::Fail(why) => format!("failed: {why}"),
            }
        ));
        again.push(r);
    }
    SideBySide {
        unexplained: trouble.unexplained(&again),
        results: again,
    }
}

/// What went wrong with columns side by side: failures and leaks, which a heap alone must do
/// again to be named, and a new kernel taint, whose report the host names by its task.
#[derive(Debug, Default)]
struct Trouble {
    wrong: Vec<String>,
    tainted: Option<String>,
}

impl Trouble {
    fn of(
        heaps: &[String],
        results: &[ChildResult],
        finding: Option<String>,
        taint_before: Option<u64>,
        taint_after: Option<u64>,
    ) -> Trouble {
        let mut wrong: Vec<String> = heaps
            .iter()
            .zip(results)
            .filter_map(|(heap, r)| match &r.status {
                ChildStatus::Fail(why) => Some(format!("{heap} failed: {why}")),
                _ => None,
            })
            .collect();
        wrong.extend(finding);
        let tainted = match (taint_before, taint_after) {
            (Some(a), Some(b)) if a != b => Some(format!("kernel taint went from {a} to {b}")),
            _ => None,
        };
        Trouble { wrong, tainted }
    }

    fn is_none(&self) -> bool {
        self.wrong.is_empty() && self.tainted.is_none()
    }

    fn why(&self) -> String {
        let all: Vec<&str> = self
            .wrong
            .iter()
            .chain(&self.tainted)
            .map(String::as_str)
            .collect();
        all.join("; ")
    }

    /// The case's own failure once each heap ran alone: a failure or leak side by side that
    /// no heap did again is still a failure, of the case as a whole. A taint alone fails
    /// nothing here: the host judges the kernel's report.
    fn unexplained(&self, again: &[ChildResult]) -> Option<String> {
        let reproduced = again
            .iter()
            .any(|r| matches!(r.status, ChildStatus::Fail(_)));
        (!self.wrong.is_empty() && !reproduced).then(|| {
            format!(
                "side by side: {}; no heap did it again alone",
                self.wrong.join("; ")
            )
        })
    }
}

/// Runs a per-heap body on `heap`.
fn run_on_heap(
    out: &mut Out,
    name: &str,
    heap: &str,
    f: fn(&mut Ctx, &Heap) -> Result<(), Stop>,
    timeout: Duration,
) -> ChildResult {
    run_checked(out, &format!("{name}/{heap}"), timeout, |ctx| {
        f(ctx, &open_heap(heap)?)
    })
}

/// The status of a case for one heap when that heap is not there: a SKIP when the run left it
/// out (`--heap`) or the kernel was built without it, a failure when its Kconfig option is set
/// (the heap failed to register).
fn absent_heap_status(heap: &str, selected: &[String], option: Option<&str>) -> ChildStatus {
    let deselected = !selected.is_empty() && !selected.iter().any(|s| s == heap);
    match (deselected, option) {
        (true, _) => ChildStatus::Skip(format!("heap {heap} is not selected (--heap)")),
        (false, Some(option)) => ChildStatus::Fail(format!(
            "heap {heap} is not registered although the kernel was built with {option}"
        )),
        (false, None) => ChildStatus::Skip(format!("heap {heap} is not present")),
    }
}

/// Heaps the kernel was built with, selected by `--heap` (or all), that are not `present`:
/// (heap, the option that asks for it).
fn absent_expected(
    expected: &[(&'static str, &'static str)],
    present: &[String],
    selected: &[String],
) -> Vec<(&'static str, &'static str)> {
    expected
        .iter()
        .copied()
        .filter(|(_, h)| !present.iter().any(|p| p == h))
        .filter(|(_, h)| selected.is_empty() || selected.iter().any(|s| s == h))
        .map(|(option, heap)| (heap, option))
        .collect()
}

/// How the runner runs the cases.
#[derive(Debug, Clone)]
pub struct Options {
    /// Limit for each child.
    pub timeout: Duration,
    /// Run heap tests on these heaps only (all when empty).
    pub heaps: Vec<String>,
}

/// Runs the selected cases and prints KTAP; returns the totals of leaf results.
pub fn run(cases: &[&Case], opts: &Options, out: &mut Out) -> Totals {
    let timeout = opts.timeout;
    let mut totals = Totals::default();
    out.line(0, "KTAP version 1");
    out.line(0, &format!("1..{}", cases.len()));
    let heaps = heap_names().map(|all| {
        all.into_iter()
            .filter(|h| opts.heaps.is_empty() || opts.heaps.contains(h))
            .collect::<Vec<_>>()
    });
    let oracle = Holdings::read();
    let _ = ORACLE_AT_START.set(oracle.is_ok());
    // Nothing runs before the first test: this reading is its before (see `run_checked`).
    if let (Ok(h), Ok(mut l)) = (&oracle, LAST_HOLDINGS.lock()) {
        *l = Some(h.clone());
    }
    if let Err(why) = oracle {
        out.line(
            0,
            &note::warning(&format!("leak oracle off, cannot read {why}")),
        );
    }
    if let Err(e) = crate::leaks::stop_kmemleak_thread() {
        out.line(
            0,
            &note::warning(&format!(
                "cannot stop kmemleak's scanning thread ({e}): a scan of its own may slow a test"
            )),
        );
    }
    match &heaps {
        Ok(h) => {
            out.line(0, &note::heaps(h));
            for want in opts.heaps.iter().filter(|w| !h.contains(w)) {
                out.line(
                    0,
                    &note::warning(&format!("--heap {want}: no such heap under {DMA_HEAP_DIR}")),
                );
            }
        }
        Err(e) => out.line(
            0,
            &note::warning(&format!("cannot list {DMA_HEAP_DIR}: {e}")),
        ),
    }
    for (i, case) in cases.iter().enumerate() {
        let n = i + 1;
        out.line(0, &note::begin(case.name));
        match case.body {
            Body::Global(f) => {
                let r = run_checked(out, case.name, timeout, f);
                totals.add(&r.status);
                report(out, 0, n, case.name, &r);
            }
            Body::OnHeap(heap, f) => {
                let present = heaps.as_ref().is_ok_and(|h| h.iter().any(|n| n == heap));
                if !present {
                    let r = ChildResult {
                        ctx: Ctx::default(),
                        status: absent_heap_status(
                            heap,
                            &opts.heaps,
                            crate::expect::heap_expected(heap),
                        ),
                        elapsed: Duration::ZERO,
                        pid: None,
                    };
                    totals.add(&r.status);
                    report(out, 0, n, case.name, &r);
                    continue;
                }
                let r = run_on_heap(out, case.name, heap, f, timeout);
                totals.add(&r.status);
                report(out, 0, n, case.name, &r);
            }
            Body::PerHeap(f) | Body::SideBySide(f) => {
                // A heap the kernel was built with but that is not there is a failing column,
                // not a missing one: runs of a few tests (bisect steps) never see heaps_present.
                let absent = absent_expected(
                    &crate::expect::expected_heaps(),
                    heaps.as_deref().unwrap_or_default(),
                    &opts.heaps,
                );
                let names = match &heaps {
                    Ok(h) if !h.is_empty() || !absent.is_empty() => h.clone(),
                    Err(_) if !absent.is_empty() => Vec::new(),
                    Ok(_) => {
                        totals.skip += 1;
                        out.line(
                            0,
                            &format!("ok {n} {} # SKIP no heap under {DMA_HEAP_DIR}", case.name),
                        );
                        continue;
                    }
                    Err(e) => {
                        totals.skip += 1;
                        out.line(
                            0,
                            &format!(
                                "ok {n} {} # SKIP cannot list {DMA_HEAP_DIR}: {e}",
                                case.name
                            ),
                        );
                        continue;
                    }
                };
                out.line(1, "KTAP version 1");
                out.line(1, &format!("# Subtest: {}", case.name));
                out.line(1, &format!("1..{}", names.len() + absent.len()));
                let mut any_fail = false;
                let mut all_skip = true;
                let started = Instant::now();
                let mut unexplained = None;
                let mut column = |out: &mut Out, j: usize, heap: &str, r: &ChildResult| {
                    totals.add(&r.status);
                    any_fail |= matches!(r.status, ChildStatus::Fail(_));
                    all_skip &= matches!(r.status, ChildStatus::Skip(_));
                    report(out, 1, j + 1, heap, r);
                };
                if matches!(case.body, Body::SideBySide(_)) && names.len() > 1 {
                    let run = run_side_by_side(out, case.name, &names, f, timeout);
                    for (j, (heap, r)) in names.iter().zip(&run.results).enumerate() {
                        out.line(1, &note::begin(&format!("{}/{heap}", case.name)));
                        column(out, j, heap, r);
                    }
                    unexplained = run.unexplained;
                } else {
                    // Alone, each column is reported as it ends: a crash loses none before it.
                    for (j, heap) in names.iter().enumerate() {
                        out.line(1, &note::begin(&format!("{}/{heap}", case.name)));
                        let r = run_on_heap(out, case.name, heap, f, timeout);
                        column(out, j, heap, &r);
                    }
                }
                for (j, (heap, option)) in absent.iter().enumerate() {
                    let r = ChildResult {
                        ctx: Ctx::default(),
                        status: absent_heap_status(heap, &opts.heaps, Some(option)),
                        elapsed: Duration::ZERO,
                        pid: None,
                    };
                    totals.add(&r.status);
                    any_fail = true;
                    all_skip = false;
                    report(out, 1, names.len() + j + 1, heap, &r);
                }
                if let Some(why) = &unexplained {
                    // Not a leaf: the heaps' own results are already counted.
                    out.line(0, &format!("# {why}"));
                    any_fail = true;
                    all_skip = false;
                }
                let line = if any_fail {
                    format!("not ok {n} {}", case.name)
                } else if all_skip {
                    format!("ok {n} {} # SKIP skipped on every heap", case.name)
                } else {
                    format!("ok {n} {}", case.name)
                };
                out.line(0, &line);
                out.line(0, &note::time(case.name, started.elapsed().as_millis()));
            }
        }
    }
    out.line(0, &note::done(totals.pass, totals.fail, totals.skip));
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leak_fails_a_skip_too() {
        let leak = || Some("leak oracle: x".to_string());
        assert_eq!(
            with_finding(ChildStatus::Skip("why".into()), leak()),
            ChildStatus::Fail("leak oracle: x".into())
        );
        assert_eq!(
            with_finding(ChildStatus::Pass, leak()),
            ChildStatus::Fail("leak oracle: x".into())
        );
        assert_eq!(
            with_finding(ChildStatus::Fail("own".into()), leak()),
            ChildStatus::Fail("own".into())
        );
        assert_eq!(with_finding(ChildStatus::Pass, None), ChildStatus::Pass);
    }

    #[test]
    fn the_oracle_fails_closed() {
        let mut ctx = Ctx::default();
        let ok = Ok(Holdings::default());
        let err: Result<Holdings, String> = Err("bufinfo: EIO".into());
        assert_eq!(oracle_verdict(&ok, &ok, true, &mut ctx), None);
        // Expected (debugfs in the kernel, or it worked at the start): a failed read fails.
        let why = oracle_verdict(&ok, &err, true, &mut ctx).expect("a failed read must fail");
        assert!(why.contains("after the test: bufinfo: EIO"), "{why}");
        let why = oracle_verdict(&err, &ok, true, &mut ctx).expect("a failed read must fail");
        assert!(why.contains("before the test"), "{why}");
        // Off for the whole run (no debugfs, said at the top): nothing to judge.
        assert_eq!(oracle_verdict(&err, &err, false, &mut ctx), None);
    }

    fn result(status: ChildStatus) -> ChildResult {
        ChildResult {
            ctx: Ctx::default(),
            status,
            elapsed: Duration::ZERO,
            pid: None,
        }
    }

    #[test]
    fn trouble_side_by_side_is_named_alone_or_kept() {
        let heaps = ["system".to_string(), "rust_system".to_string()];
        let pass = || result(ChildStatus::Pass);
        let fail = |why: &str| result(ChildStatus::Fail(why.into()));
        // Nothing wrong: no rerun.
        assert!(Trouble::of(&heaps, &[pass(), pass()], None, Some(0), Some(0)).is_none());
        // A leak: found again alone on one heap, it is that heap's.
        let leak = Trouble::of(&heaps, &[pass(), pass()], Some("leak".into()), None, None);
        assert_eq!(leak.why(), "leak");
        assert_eq!(leak.unexplained(&[pass(), fail("leak")]), None);
        // Not found again: the case fails as a whole.
        let why = leak.unexplained(&[pass(), pass()]).expect("kept");
        assert!(why.contains("no heap did it again alone"), "{why}");
        let failed = Trouble::of(&heaps, &[pass(), fail("EIO")], None, None, None);
        assert_eq!(failed.why(), "rust_system failed: EIO");
        // A taint alone reruns, and leaves the verdict to the host's reading of the report.
        let tainted = Trouble::of(&heaps, &[pass(), pass()], None, Some(0), Some(512));
        assert!(!tainted.is_none());
        assert_eq!(tainted.why(), "kernel taint went from 0 to 512");
        assert_eq!(tainted.unexplained(&[pass(), pass()]), None);
    }

    #[test]
    fn every_expected_heap_gets_a_column() {
        let expected = [
            ("CONFIG_DMABUF_HEAPS_SYSTEM", "system"),
            ("CONFIG_DMABUF_HEAPS_RUST_SYSTEM", "rust_system"),
        ];
        let present = ["system".to_string()];
        assert_eq!(
            absent_expected(&expected, &present, &[]),
            [("rust_system", "CONFIG_DMABUF_HEAPS_RUST_SYSTEM")]
        );
        // --heap system leaves rust_system out on purpose.
        assert!(absent_expected(&expected, &present, &["system".into()]).is_empty());
        assert!(
            absent_expected(&expected, &["system".into(), "rust_system".into()], &[]).is_empty()
        );
    }

    #[test]
    fn an_absent_heap_fails_only_when_the_kernel_should_have_it() {
        let option = Some("CONFIG_DMABUF_HEAPS_RUST_SYSTEM");
        assert!(matches!(
            absent_heap_status("rust_system", &[], option),
            ChildStatus::Fail(m) if m.contains("CONFIG_DMABUF_HEAPS_RUST_SYSTEM")
        ));
        assert!(matches!(
            absent_heap_status("rust_system", &[], None),
            ChildStatus::Skip(_)
        ));
        // Left out with --heap: a skip even when the kernel has it.
        assert!(matches!(
            absent_heap_status("rust_system", &["system".into()], option),
            ChildStatus::Skip(m) if m.contains("--heap")
        ));
    }
}
