//! Runners the `tasktracker` binary offers without writing Rust.
//!
//! - [`shell::ShellRunner`] runs programs from the operator's allow-list,
//!   named in the job's payload.
//! - [`noop::NoopRunner`] succeeds at once; for benchmarks and smoke tests.

pub mod allow;
pub mod guard;
pub mod noop;
pub mod shell;

pub use allow::{AllowList, EnvAllowList};
pub use guard::{JobGuard, RunningJobs};
pub use noop::NoopRunner;
pub use shell::{RunAs, ShellJob, ShellRunner};
