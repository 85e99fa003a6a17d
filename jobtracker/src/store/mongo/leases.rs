//! Leases on runs: a claim records this tracker's instance name and a
//! lease end; a background task renews the leases of this tracker's runs
//! and requeues runs whose lease expired (their tracker died).

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::TryStreamExt;
use lts_common::{Job, JobState};
use mongodb::bson::{doc, Document};

use super::connection::store_err;
use super::{decode, state_bson, MongoStore};
use crate::error::Result;

/// Most runs one sweep of expired leases puts back.
const SWEEP_LIMIT: i64 = 1_000;

impl MongoStore {
    /// Extends the leases of this tracker's runs.
    pub async fn renew_leases(&self, now_ms: i64) -> Result<u64> {
        let r = self.c().await?
            .jobs
            .update_many(
                doc! {
                    "state": state_bson(JobState::Running),
                    "lease_owner": &self.options.instance,
                },
                doc! { "$set": { "lease_until_ms": now_ms + self.options.lease.as_millis() as i64 } },
            )
            .await
            .map_err(store_err("renewing leases"))?;
        Ok(r.modified_count)
    }

    /// Requeues runs whose lease expired before `now_ms`: their tracker
    /// stopped renewing them. Safe on every tracker at once: each run is
    /// put back only while it is still that attempt.
    pub async fn requeue_expired(&self, now_ms: i64) -> Result<usize> {
        let expired = self
            .c()
            .await?
            .jobs
            .find(doc! {
                "state": state_bson(JobState::Running),
                "lease_until_ms": { "$lt": now_ms },
            })
            .limit(SWEEP_LIMIT)
            .await
            .map_err(store_err("reading expired leases"))?
            .try_collect::<Vec<Document>>()
            .await
            .map_err(store_err("reading expired leases"))?;
        let mut jobs = Vec::with_capacity(expired.len());
        let mut owners = HashMap::new();
        for d in expired {
            let owner = d.get_str("lease_owner").unwrap_or("?").to_string();
            if let Some(j) = decode::<Job>("job", d) {
                owners.insert(j.job_id.clone(), owner);
                jobs.push(j);
            }
        }
        let n = self
            .requeue_jobs(jobs, now_ms, |j| {
                format!(
                    "the lease of attempt {} on {} expired: JobTracker {} stopped renewing it; it runs again with a new attempt",
                    j.attempt,
                    j.worker,
                    owners.get(&j.job_id).map_or("?", String::as_str)
                )
            })
            .await?;
        if n > 0 {
            tracing::warn!("requeued {n} runs whose lease expired");
        }
        Ok(n)
    }

    /// Starts the background task that renews this tracker's leases and
    /// requeues expired ones (of any tracker). It stops when the store is
    /// dropped.
    pub fn spawn_maintenance(self: &Arc<Self>) {
        let weak: Weak<MongoStore> = Arc::downgrade(self);
        let every = (self.options.lease / 3).max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { return };
                let now = lts_common::now_ms();
                if let Err(e) = store.renew_leases(now).await {
                    tracing::warn!("cannot renew run leases: {e}");
                }
                if let Err(e) = store.requeue_expired(now).await {
                    tracing::warn!("cannot requeue runs with expired leases: {e}");
                }
            }
        });
    }
}
