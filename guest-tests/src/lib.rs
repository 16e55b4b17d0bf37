//! heaprig guest tests: ordinary Linux binaries that run inside the test kernel.
//!
//! `uapi` wraps the kernel interfaces once; `harness` is the tiny vocabulary tests use
//! (facts, failures, skips); `cases` is the table of tests; `runner` runs them in child
//! processes with timeouts and prints KTAP v1; `process` forks, waits for and passes fds to
//! child processes for the runner, the tests and the fuzzer.

pub mod bench;
pub mod cases;
pub mod expect;
pub mod fuzz;
pub mod harness;
pub mod leaks;
/// Child processes (fork, bounded wait, signal names) and SCM_RIGHTS fd passing, shared by
/// the runner, the concurrency tests and the fuzzer.
pub mod process;
pub mod runner;
pub mod select;
/// The kernel's taint flags, read by the fuzzer after every operation and by the runner
/// around side-by-side columns.
pub mod taint;
pub mod uapi;
