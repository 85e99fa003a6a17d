//! A TaskTracker with a runner written in Rust.
//!
//! It counts the words of each job's payload, writes progress to the job's
//! execution log, stops early when the run is cancelled, and fails for good
//! on a payload that is not UTF-8 (no retry can fix that).
//!
//! ```text
//! cargo run --release --bin jobtracker &                       # a JobTracker on 127.0.0.1:7070
//! cargo run --release --example custom_runner -- --node-group text
//! cargo run --release --bin jobclient -- submit --node-group text --task-id doc-1 --payload "to be or not to be"
//! cargo run --release --bin jobclient -- get <JOB_ID> --log
//! ```

use std::sync::Arc;

use clap::Parser;
use lts_common::Outcome;
use lts_tasktracker::{JobContext, JobRunner, TaskTrackerConfig};

#[derive(Parser)]
struct Args {
    /// The JobTracker to connect to.
    #[arg(long, default_value = "http://127.0.0.1:7070")]
    jobtracker: String,
    /// The node group whose jobs this process runs.
    #[arg(long, default_value = "text")]
    node_group: String,
    /// Jobs run at the same time.
    #[arg(long, default_value_t = 4)]
    slots: u32,
}

struct WordCount;

#[async_trait::async_trait]
impl JobRunner for WordCount {
    async fn run(&self, ctx: JobContext) -> Outcome {
        let Ok(text) = std::str::from_utf8(&ctx.job.spec.payload) else {
            return Outcome::Failed("the payload is not UTF-8 text".into());
        };
        let mut words = 0usize;
        for (i, line) in text.lines().enumerate() {
            // A long document checks for cancellation between lines.
            if ctx.cancel.is_cancelled() {
                return Outcome::Error(format!("cancelled after {i} lines"));
            }
            words += line.split_whitespace().count();
            if i % 1000 == 999 {
                ctx.log.info(format!("{} lines read", i + 1));
                tokio::task::yield_now().await;
            }
        }
        ctx.log.info(format!("{words} words"));
        Outcome::Success(format!("{words} words"))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lts_common::runtime::init_tracing(Default::default());
    let args = Args::parse();
    let mut config = TaskTrackerConfig::new(args.jobtracker, args.node_group);
    config.slots = args.slots;
    lts_tasktracker::run(
        config,
        Arc::new(WordCount),
        lts_common::runtime::shutdown_signal(),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(payload: &[u8]) -> lts_common::Job {
        let mut spec = lts_common::JobSpec::new("t", "text");
        spec.payload = payload.to_vec();
        lts_jobtracker::store::new_job("j".into(), spec, 1, 0)
    }

    #[tokio::test]
    async fn counts_words_and_refuses_binary() {
        let (ctx, _logs) = JobContext::standalone(job(b"to be\nor not to be"), 1);
        assert_eq!(WordCount.run(ctx).await, Outcome::Success("6 words".into()));
        let (ctx, _logs) = JobContext::standalone(job(&[0xff, 0xfe]), 1);
        assert!(matches!(WordCount.run(ctx).await, Outcome::Failed(_)));
    }
}
