//! One run in a slot: the runner with the job's timeout and cancellation
//! around it, and a panic caught as an outcome.
//!
//! The runner's future is polled in the run's own task (no second task per
//! run: when thousands of runs start at the same instant, each spawn
//! counts); dropping it is what aborts a runner that ignores its
//! cancellation.

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use lts_common::Outcome;

use crate::runner::{JobContext, JobRunner};

/// Why the run's token fired before the runner returned.
enum Stop {
    TimedOut,
    Cancelled,
}

/// Runs `ctx` through `runner` and always returns an outcome: the runner's
/// own, or an error for a panic, a timeout or a runner that ignored its
/// cancellation for longer than `cancel_grace`.
pub(crate) async fn execute(
    runner: Arc<dyn JobRunner>,
    ctx: JobContext,
    cancel_grace: Duration,
) -> Outcome {
    let timeout_ms = ctx.job.spec.timeout_ms;
    let token = ctx.cancel.clone();
    // The runner's panic, if any, ends this future, not the TaskTracker.
    let task = AssertUnwindSafe(async move { runner.run(ctx).await }).catch_unwind();
    tokio::pin!(task);
    let timeout = async {
        if timeout_ms > 0 {
            tokio::time::sleep(Duration::from_millis(timeout_ms)).await
        } else {
            std::future::pending().await
        }
    };
    let stop = tokio::select! {
        // The runner first: a run that ends at its first poll never sets up
        // the timer or the cancellation wait.
        biased;
        joined = &mut task => return outcome_of(joined),
        _ = timeout => Stop::TimedOut,
        _ = token.cancelled() => Stop::Cancelled,
    };
    token.cancel();
    // Past the grace, the runner's future is dropped with this call.
    let joined = tokio::time::timeout(cancel_grace, &mut task).await;
    match (stop, joined) {
        (Stop::TimedOut, _) => Outcome::Error(format!("timed out after {timeout_ms} ms")),
        (Stop::Cancelled, Ok(joined)) => outcome_of(joined),
        (Stop::Cancelled, Err(_)) => Outcome::Error(format!(
            "cancelled; the runner did not stop within {} ms and was aborted",
            cancel_grace.as_millis()
        )),
    }
}

fn outcome_of(joined: Result<Outcome, Box<dyn Any + Send>>) -> Outcome {
    match joined {
        Ok(outcome) => outcome,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a non-string panic payload".to_string());
            Outcome::Error(format!("runner panicked: {message}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::job;
    use async_trait::async_trait;

    struct Panics;
    #[async_trait]
    impl JobRunner for Panics {
        async fn run(&self, _ctx: JobContext) -> Outcome {
            panic!("boom {}", 42)
        }
    }

    /// Sleeps forever; returns promptly on cancel if `cooperative`.
    struct Sleeper {
        cooperative: bool,
    }
    #[async_trait]
    impl JobRunner for Sleeper {
        async fn run(&self, ctx: JobContext) -> Outcome {
            if self.cooperative {
                ctx.cancel.cancelled().await;
                Outcome::Failed("stopped on cancel".into())
            } else {
                std::future::pending().await
            }
        }
    }

    #[tokio::test]
    async fn a_panic_becomes_an_error_outcome() {
        let (ctx, _logs) = JobContext::standalone(job(0), 1);
        let outcome = execute(Arc::new(Panics), ctx, Duration::from_secs(1)).await;
        assert_eq!(outcome, Outcome::Error("runner panicked: boom 42".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_timeout_fires_the_token_and_reports_an_error() {
        let (ctx, _logs) = JobContext::standalone(job(50), 1);
        let token = ctx.cancel.clone();
        let runner = Arc::new(Sleeper { cooperative: true });
        let outcome = execute(runner, ctx, Duration::from_secs(2)).await;
        assert_eq!(outcome, Outcome::Error("timed out after 50 ms".into()));
        assert!(token.is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_runner_ignoring_its_timeout_is_aborted_after_the_grace() {
        let (ctx, _logs) = JobContext::standalone(job(50), 1);
        let started = tokio::time::Instant::now();
        let runner = Arc::new(Sleeper { cooperative: false });
        let outcome = execute(runner, ctx, Duration::from_secs(2)).await;
        assert_eq!(outcome, Outcome::Error("timed out after 50 ms".into()));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(2050), "{took:?}");
        assert!(took < Duration::from_millis(2200), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_run_reports_what_the_runner_returns_or_is_aborted() {
        let (ctx, _logs) = JobContext::standalone(job(0), 1);
        ctx.cancel.cancel();
        let outcome = execute(
            Arc::new(Sleeper { cooperative: true }),
            ctx,
            Duration::from_secs(1),
        )
        .await;
        assert_eq!(outcome, Outcome::Failed("stopped on cancel".into()));

        let (ctx, _logs) = JobContext::standalone(job(0), 1);
        ctx.cancel.cancel();
        let runner = Arc::new(Sleeper { cooperative: false });
        let outcome = execute(runner, ctx, Duration::from_secs(1)).await;
        assert!(
            outcome.message().contains("did not stop within 1000 ms"),
            "{outcome}"
        );
    }
}
