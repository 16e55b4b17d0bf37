//! One module per command: each composes the stages (`crate::stages`) with a plan built from
//! its flags, and reports through `crate::report`.

pub mod bench;
pub mod bench_rig;
pub mod bisect;
pub mod exec;
pub mod fuzz;
pub mod lint;
pub mod merge;
pub mod mutate;
pub mod results_cache;
pub mod shell;
pub mod test;
pub mod tree;
pub mod validate;
