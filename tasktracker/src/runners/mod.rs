//! Runners the `tasktracker` binary offers without writing Rust.
//!
//! - [`shell::ShellRunner`] runs programs from the operator's allow-list,
//!   named in the job's payload.
//! - [`noop::NoopRunner`] succeeds at once; for benchmarks and smoke tests.

pub mod noop;
pub mod shell;

pub use noop::NoopRunner;
pub use shell::{AllowList, ShellJob, ShellRunner};
