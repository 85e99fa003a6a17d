//! A runner that does nothing.

use async_trait::async_trait;
use lts_common::Outcome;

use crate::runner::{JobContext, JobRunner};

/// Succeeds at once with an empty message. Measures the scheduler, not the
/// work.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoopRunner;

#[async_trait]
impl JobRunner for NoopRunner {
    async fn run(&self, _ctx: JobContext) -> Outcome {
        Outcome::Success(String::new())
    }
}
