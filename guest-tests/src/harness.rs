//! What a test can say: facts (deterministic values the snapshot records), diagnostics,
//! a failure with its location, or a skip with its reason.

use std::fmt;
use std::time::Duration;

use std::sync::atomic::{AtomicU32, Ordering};

use crate::uapi::Heap;

/// Which attempt of the host's run this is (0 first, 1.. retries of failed tests).
static ATTEMPT: AtomicU32 = AtomicU32::new(0);

/// Records the attempt for this process and the test children it forks.
pub fn set_attempt(n: u32) {
    ATTEMPT.store(n, Ordering::Relaxed);
}

/// 0 on a first run; the retry number when the host reruns failed tests.
pub fn attempt() -> u32 {
    ATTEMPT.load(Ordering::Relaxed)
}

/// Why a test did not pass.
#[derive(Debug)]
pub enum Stop {
    Fail(String),
    Skip(String),
}

pub type Outcome = Result<(), Stop>;

/// Collects what a running test reports; the runner forwards it to the parent process.
#[derive(Debug, Default)]
pub struct Ctx {
    pub facts: Vec<(String, String)>,
    pub diags: Vec<String>,
    /// How many columns of this test run at once, this one included (0 or 1: alone).
    pub beside: usize,
}

impl Ctx {
    /// Records a deterministic result (it goes into the insta snapshot).
    pub fn fact(&mut self, key: impl fmt::Display, value: impl fmt::Display) {
        self.facts.push((key.to_string(), value.to_string()));
    }

    /// Records a diagnostic line (shown on failure, never snapshotted).
    pub fn diag(&mut self, text: impl fmt::Display) {
        self.diags.push(text.to_string());
    }

    /// The wall time that gives this test `cpu` of CPU time: longer when more columns run
    /// side by side than the machine has CPUs, so a time budget buys the same work either way.
    pub fn wall_for(&self, cpu: Duration) -> Duration {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        wall_share(cpu, self.beside, cpus)
    }
}

/// `cpu` stretched by `beside` columns sharing `cpus` CPUs (never shortened).
fn wall_share(cpu: Duration, beside: usize, cpus: usize) -> Duration {
    let (beside, cpus) = (beside.max(1), cpus.max(1));
    if beside <= cpus {
        cpu
    } else {
        cpu.mul_f64(beside as f64 / cpus as f64)
    }
}

/// How a test case runs: once, once per heap under /dev/dma_heap, or on one named heap
/// (for guarantees only that heap makes; SKIP with the reason when it is absent).
#[derive(Clone, Copy)]
pub enum Body {
    Global(fn(&mut Ctx) -> Outcome),
    PerHeap(fn(&mut Ctx, &Heap) -> Outcome),
    /// Like `PerHeap`, with every heap's column at once (on both guest CPUs): for a body that
    /// touches only its own heap's buffers and no switch shared between heaps. One leak-oracle
    /// reading covers them all; if anything is wrong, each heap runs again alone to name it.
    SideBySide(fn(&mut Ctx, &Heap) -> Outcome),
    OnHeap(&'static str, fn(&mut Ctx, &Heap) -> Outcome),
}

/// When a case runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CaseKind {
    /// Whenever selected (all of them by default).
    Test,
    /// Rig self-tests prove the detectors fire; they run only when asked for by name.
    SelfTest,
    /// Checks over the whole run (kmemleak): appended last to every non-empty selection.
    Finally,
}

/// One entry of the test table.
#[derive(Clone, Copy)]
pub struct Case {
    pub name: &'static str,
    pub kind: CaseKind,
    pub body: Body,
}

/// Fails the test with the caller's location unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::harness::Stop::Fail(format!(
                "{}:{}: {}", file!(), line!(), format!($($fmt)+)
            )));
        }
    };
}

/// Turns an I/O error into a failure that says what was being done.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T, Stop>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T, Stop> {
        self.map_err(|e| Stop::Fail(format!("{what}: {e}")))
    }
}

/// Names an errno the way the kernel headers do, so facts read like the man pages.
pub fn errno_name(err: &std::io::Error) -> String {
    let name = match err.raw_os_error() {
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::ENOMEM) => "ENOMEM",
        Some(libc::EBADF) => "EBADF",
        Some(libc::ENOTTY) => "ENOTTY",
        Some(libc::EFAULT) => "EFAULT",
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::ENODEV) => "ENODEV",
        Some(libc::EBUSY) => "EBUSY",
        Some(libc::EAGAIN) => "EAGAIN",
        Some(libc::EINTR) => "EINTR",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EOVERFLOW) => "EOVERFLOW",
        Some(n) => return format!("errno {n}"),
        None => return err.to_string(),
    };
    name.to_string()
}

/// Describes a result as `ok` or the errno name, for tables of expected outcomes.
pub fn result_name<T>(r: &std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".to_string(),
        Err(e) => errno_name(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_beyond_the_cpus_get_more_wall_time() {
        let ten = Duration::from_secs(10);
        assert_eq!(wall_share(ten, 0, 2), ten);
        assert_eq!(wall_share(ten, 2, 2), ten);
        assert_eq!(wall_share(ten, 3, 2), Duration::from_secs(15));
        assert_eq!(wall_share(ten, 3, 1), Duration::from_secs(30));
        assert_eq!(wall_share(ten, 1, 0), ten);
    }
}
