//! heaprig guest tests: ordinary Linux binaries that run inside the test kernel.
//!
//! `uapi` wraps the kernel interfaces once; `harness` is the tiny vocabulary tests use
//! (facts, failures, skips); `cases` is the table of tests; `runner` runs them in child
//! processes with timeouts and prints KTAP v1.

pub mod bench;
pub mod cases;
pub mod expect;
pub mod fuzz;
pub mod harness;
pub mod leaks;
pub mod runner;
pub mod select;
pub mod uapi;
