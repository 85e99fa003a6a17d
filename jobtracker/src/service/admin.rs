//! `AdminService`: operator verbs on every kind of job.

use std::sync::Arc;

use lts_common::limits::{MAX_PARAMS, MAX_PARAMS_BYTES};
use lts_common::{JobSpec, RetryPlan, ValidationError};
use lts_proto::v1 as pb;
use pb::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

use crate::auth::{Caller, Need};
use crate::store::{AdminAction, JobUpdate};
use crate::Tracker;

/// The `AdminService` implementation.
#[derive(Clone)]
pub struct AdminApi {
    tracker: Arc<Tracker>,
}

impl AdminApi {
    /// The service over a tracker's state.
    pub fn new(tracker: Arc<Tracker>) -> Self {
        AdminApi { tracker }
    }

    async fn act(
        &self,
        caller: Caller,
        job_id: String,
        action: AdminAction,
    ) -> Result<Response<pb::AdminJobResponse>, Status> {
        if job_id.is_empty() {
            return Err(Status::invalid_argument("job_id: is empty"));
        }
        let what = match &action {
            AdminAction::Suspend => "suspend",
            AdminAction::Resume => "resume",
            AdminAction::Trigger => "trigger",
            AdminAction::Delete => "delete",
            AdminAction::Update(_) => "update",
        };
        let need = match &action {
            AdminAction::Delete => Need::Delete,
            _ => Need::Operate,
        };
        self.tracker.check_job(&caller, need, &job_id, what).await?;
        let done = crate::store::operator(&*self.tracker.store)?
            .admin(&job_id, action, lts_common::now_ms())
            .await?;
        for g in &done.wake {
            self.tracker.dispatcher.wake(g);
        }
        self.tracker.scheduler.notify_one();
        caller.audit(what, &job_id);
        let job = done.after.unwrap_or(done.before);
        Ok(Response::new(pb::AdminJobResponse {
            job: Some(job.into()),
        }))
    }
}

/// Reads the fields an update changes, validating each like a submit does.
fn read_update(r: pb::UpdateJobRequest) -> Result<JobUpdate, ValidationError> {
    let params = if r.set_params {
        if r.params.len() > MAX_PARAMS {
            return Err(ValidationError::new(
                "params",
                format!("has {} entries, the limit is {MAX_PARAMS}", r.params.len()),
            ));
        }
        let bytes: usize = r.params.iter().map(|(k, v)| k.len() + v.len()).sum();
        if bytes > MAX_PARAMS_BYTES {
            return Err(ValidationError::new(
                "params",
                format!("holds {bytes} bytes, the limit is {MAX_PARAMS_BYTES}"),
            ));
        }
        if r.params.keys().any(|k| k.is_empty()) {
            return Err(ValidationError::new("params", "has an empty key"));
        }
        Some(r.params.into_iter().collect())
    } else {
        None
    };
    let schedule = match r.schedule {
        Some(schedule) => {
            // The schedule is checked by the same rules as on submit.
            let probe = pb::JobSpec {
                task_id: "update".into(),
                task_tracker_node_group: "update".into(),
                schedule: Some(schedule),
                ..Default::default()
            };
            let spec = JobSpec::try_from(probe)?;
            crate::store::check_recurring(&spec, lts_common::now_ms())?;
            Some(spec.schedule)
        }
        None => None,
    };
    let retry_plan = r.retry_plan.map(RetryPlan::try_from).transpose()?;
    Ok(JobUpdate {
        params,
        priority: r.priority,
        schedule,
        retry_plan,
    })
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn suspend_job(
        &self,
        r: Request<pb::JobRef>,
    ) -> Result<Response<pb::AdminJobResponse>, Status> {
        let caller = self
            .tracker
            .caller_for(&r, "suspend", &r.get_ref().job_id)?;
        self.act(caller, r.into_inner().job_id, AdminAction::Suspend)
            .await
    }

    async fn resume_job(
        &self,
        r: Request<pb::JobRef>,
    ) -> Result<Response<pb::AdminJobResponse>, Status> {
        let caller = self.tracker.caller_for(&r, "resume", &r.get_ref().job_id)?;
        self.act(caller, r.into_inner().job_id, AdminAction::Resume)
            .await
    }

    async fn cancel_job(
        &self,
        r: Request<pb::JobRef>,
    ) -> Result<Response<pb::AdminJobResponse>, Status> {
        let caller = self.tracker.caller_for(&r, "cancel", &r.get_ref().job_id)?;
        let job_id = r.into_inner().job_id;
        if job_id.is_empty() {
            return Err(Status::invalid_argument("job_id: is empty"));
        }
        self.tracker
            .check_job(&caller, Need::Operate, &job_id, "cancel")
            .await?;
        let job = self.tracker.cancel_job(&job_id).await?;
        caller.audit("cancel", &job_id);
        Ok(Response::new(pb::AdminJobResponse {
            job: Some(job.into()),
        }))
    }

    async fn trigger_job(
        &self,
        r: Request<pb::JobRef>,
    ) -> Result<Response<pb::AdminJobResponse>, Status> {
        let caller = self
            .tracker
            .caller_for(&r, "trigger", &r.get_ref().job_id)?;
        self.act(caller, r.into_inner().job_id, AdminAction::Trigger)
            .await
    }

    async fn delete_job(
        &self,
        r: Request<pb::JobRef>,
    ) -> Result<Response<pb::DeleteJobResponse>, Status> {
        let caller = self.tracker.caller_for(&r, "delete", &r.get_ref().job_id)?;
        self.act(caller, r.into_inner().job_id, AdminAction::Delete)
            .await?;
        Ok(Response::new(pb::DeleteJobResponse {}))
    }

    async fn update_job(
        &self,
        r: Request<pb::UpdateJobRequest>,
    ) -> Result<Response<pb::AdminJobResponse>, Status> {
        let caller = self.tracker.caller_for(&r, "update", &r.get_ref().job_id)?;
        let r = r.into_inner();
        let job_id = r.job_id.clone();
        let update = read_update(r)?;
        self.act(caller, job_id, AdminAction::Update(update)).await
    }

    async fn list_jobs(
        &self,
        r: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = self.tracker.caller(&r, "list-jobs")?;
        let r = r.into_inner();
        if !caller.unlimited(Need::Operate) {
            caller.require(Need::Operate, &r.task_tracker_node_group, "list-jobs")?;
        }
        Ok(Response::new(
            super::job::list_jobs(&self.tracker, r).await?,
        ))
    }
}
