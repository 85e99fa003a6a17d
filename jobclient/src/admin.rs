//! [`AdminClient`]: the operators' calls (`AdminService`): suspend, resume,
//! trigger, delete and update jobs of every kind.

use std::collections::BTreeMap;

use lts_common::{Job, RetryPlan, Schedule};
use lts_proto::v1 as pb;

use crate::client::{list_request, read_job, read_page, with_timeout, JobClient, Retry};
use crate::error::Result;
use crate::{JobFilter, JobPage};

/// What [`AdminClient::update`] changes; `None` leaves a part as it is.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobUpdate {
    /// Replaces all of the job's params (an empty map clears them).
    pub params: Option<BTreeMap<String, String>>,
    /// The new priority; smaller runs first.
    pub priority: Option<i32>,
    /// The new schedule.
    pub schedule: Option<Schedule>,
    /// The new retry plan. The tracker restarts the job's error counter.
    pub retry_plan: Option<RetryPlan>,
}

impl JobUpdate {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.params.is_none()
            && self.priority.is_none()
            && self.schedule.is_none()
            && self.retry_plan.is_none()
    }

    fn into_request(self, job_id: &str) -> pb::UpdateJobRequest {
        pb::UpdateJobRequest {
            job_id: job_id.to_string(),
            set_params: self.params.is_some(),
            params: self.params.unwrap_or_default().into_iter().collect(),
            priority: self.priority,
            schedule: self.schedule.map(Into::into),
            retry_plan: self.retry_plan.map(Into::into),
        }
    }
}

/// A client of the JobTrackers' `AdminService`.
///
/// It is a view of a [`JobClient`]: the same addresses, the same sticky
/// connection and the same failover (see [`JobClient`]). Make one with
/// [`JobClient::admin`].
///
/// Calls that change a job are retried on another tracker only when the
/// first could not be reached, never after a timeout: the change may have
/// been made, and doing it twice is not always the same as once (a second
/// trigger fires a second cycle, a second delete finds nothing).
#[derive(Clone, Debug)]
pub struct AdminClient {
    client: JobClient,
}

impl JobClient {
    /// The operators' calls on the same trackers and connection.
    pub fn admin(&self) -> AdminClient {
        AdminClient {
            client: self.clone(),
        }
    }
}

impl AdminClient {
    /// The [`JobClient`] this admin client shares its connection with.
    pub fn job_client(&self) -> &JobClient {
        &self.client
    }

    /// Parks a pending job, or a cron or repeat job between cycles, until
    /// it is resumed. The tracker refuses a running job with
    /// `FAILED_PRECONDITION`.
    pub async fn suspend(&self, job_id: &str) -> Result<Job> {
        let request = job_ref(job_id);
        let (address, response) = self
            .client
            .admin_call(Retry::Unreachable, |mut client, timeout| {
                let request = request.clone();
                async move { client.suspend_job(with_timeout(request, timeout)).await }
            })
            .await?;
        read_job(&address, response.job)
    }

    /// Makes a suspended job pending again.
    pub async fn resume(&self, job_id: &str) -> Result<Job> {
        let request = job_ref(job_id);
        let (address, response) = self
            .client
            .admin_call(Retry::Unreachable, |mut client, timeout| {
                let request = request.clone();
                async move { client.resume_job(with_timeout(request, timeout)).await }
            })
            .await?;
        read_job(&address, response.job)
    }

    /// Cancels a job of any kind; a running one's runner is told to stop.
    pub async fn cancel(&self, job_id: &str) -> Result<Job> {
        let request = job_ref(job_id);
        // Cancelling twice is cancelling once, so a slow tracker may be
        // skipped as for reads.
        let (address, response) = self
            .client
            .admin_call(Retry::UnreachableOrSlow, |mut client, timeout| {
                let request = request.clone();
                async move { client.cancel_job(with_timeout(request, timeout)).await }
            })
            .await?;
        read_job(&address, response.job)
    }

    /// Runs a pending job now, or fires one cycle of a cron or repeat job
    /// now.
    pub async fn trigger(&self, job_id: &str) -> Result<Job> {
        let request = job_ref(job_id);
        let (address, response) = self
            .client
            .admin_call(Retry::Unreachable, |mut client, timeout| {
                let request = request.clone();
                async move { client.trigger_job(with_timeout(request, timeout)).await }
            })
            .await?;
        read_job(&address, response.job)
    }

    /// Removes a job that is not running, with its execution log.
    pub async fn delete(&self, job_id: &str) -> Result<()> {
        let request = job_ref(job_id);
        self.client
            .admin_call(Retry::Unreachable, |mut client, timeout| {
                let request = request.clone();
                async move { client.delete_job(with_timeout(request, timeout)).await }
            })
            .await?;
        Ok(())
    }

    /// Changes params, priority, schedule or retry plan of a job and
    /// returns it as it is now. A new retry plan restarts the job's error
    /// counter.
    pub async fn update(&self, job_id: &str, update: JobUpdate) -> Result<Job> {
        let request = update.into_request(job_id);
        let (address, response) = self
            .client
            .admin_call(Retry::Unreachable, |mut client, timeout| {
                let request = request.clone();
                async move { client.update_job(with_timeout(request, timeout)).await }
            })
            .await?;
        read_job(&address, response.job)
    }

    /// One page of jobs of every kind, filtered also by
    /// [`JobFilter::kind`]; like [`JobClient::list`].
    pub async fn list(
        &self,
        filter: &JobFilter,
        page_size: u32,
        page_token: Option<&str>,
    ) -> Result<JobPage> {
        let request = list_request(filter, page_size, page_token);
        let (address, response) = self
            .client
            .admin_call(Retry::UnreachableOrSlow, |mut client, timeout| {
                let request = request.clone();
                async move { client.list_jobs(with_timeout(request, timeout)).await }
            })
            .await?;
        read_page(&address, filter, response)
    }
}

fn job_ref(job_id: &str) -> pb::JobRef {
    pb::JobRef {
        job_id: job_id.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lts_common::{MisfirePolicy, RetryStep};

    #[test]
    fn updates_send_only_what_changes() {
        let r = JobUpdate::default().into_request("j");
        assert!(JobUpdate::default().is_empty());
        assert_eq!(r.job_id, "j");
        assert!(!r.set_params && r.priority.is_none());
        assert!(r.schedule.is_none() && r.retry_plan.is_none());

        // Clearing params is a change, so it must be told from "unchanged".
        let clear = JobUpdate {
            params: Some(BTreeMap::new()),
            ..Default::default()
        };
        assert!(!clear.is_empty());
        let r = clear.into_request("j");
        assert!(r.set_params && r.params.is_empty());

        let r = JobUpdate {
            params: Some(BTreeMap::from([("k".into(), "v".into())])),
            priority: Some(-1),
            schedule: Some(Schedule::Cron {
                expression: "0 0 3 * * ?".into(),
                time_zone: "Europe/Paris".into(),
                misfire: MisfirePolicy::Skip,
            }),
            retry_plan: Some(RetryPlan {
                steps: vec![RetryStep::Suspend],
                count: 1,
                forever: false,
            }),
        }
        .into_request("j");
        assert_eq!(r.params.get("k").map(String::as_str), Some("v"));
        assert_eq!(r.priority, Some(-1));
        match r.schedule.and_then(|s| s.kind) {
            Some(pb::schedule::Kind::Cron(c)) => {
                assert_eq!(c.misfire, pb::MisfirePolicy::Skip as i32);
                assert_eq!(c.time_zone, "Europe/Paris");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.retry_plan.map(|p| p.steps.len()), Some(1));
    }
}
