//! Jobs with payloads near the 1 MiB limit: assignments and listings stay
//! under the gRPC message limit, so such jobs run once and can be listed.

mod support;

use lts_common::limits::MAX_PAYLOAD_BYTES;
use lts_jobtracker::outbound::MESSAGE_BUDGET_BYTES;
use lts_proto::v1 as pb;
use support::*;

const JOBS: usize = 110;
const GROUP: &str = "big";

fn big_job(i: usize) -> pb::JobSpec {
    let mut spec = job(&format!("big-{i:03}"), GROUP);
    spec.payload = vec![(i % 251) as u8; MAX_PAYLOAD_BYTES];
    spec.params.insert("index".into(), i.to_string());
    spec
}

async fn submit_big_jobs(t: &TestTracker) -> Vec<String> {
    let mut c = t.jobs().await;
    let mut ids = Vec::new();
    // 20 MiB per submit, well under the message limit.
    for chunk in (0..JOBS).collect::<Vec<_>>().chunks(20) {
        ids.extend(submit(&mut c, chunk.iter().map(|&i| big_job(i)).collect()).await);
    }
    ids
}

#[tokio::test]
async fn jobs_of_large_payloads_reach_a_task_tracker_of_100_slots_and_run_once() {
    let t = TestTracker::start().await;
    let ids = submit_big_jobs(&t).await;
    let mut peer = open_work(&t.addr, hello("wide", GROUP, 100))
        .await
        .expect("work stream opens");
    assert!(matches!(
        peer.next().await.expect("welcome"),
        pb::tracker_message::Kind::Welcome(_)
    ));

    let mut ran = std::collections::HashMap::new();
    while ran.len() < JOBS {
        let mut batch = Vec::new();
        while batch.len() < 100.min(JOBS - ran.len()) {
            for a in peer.assignments().await {
                let job = a.job.expect("job");
                assert_eq!(
                    job.spec.as_ref().map(|s| s.payload.len()),
                    Some(MAX_PAYLOAD_BYTES),
                    "the runner gets the whole payload"
                );
                batch.push((job.job_id, a.attempt));
            }
        }
        for (job_id, attempt) in &batch {
            assert!(
                ran.insert(job_id.clone(), *attempt).is_none(),
                "{job_id} was sent twice"
            );
        }
        peer.succeed(&batch).await;
        peer.send(pb::worker_message::Kind::Credit(pb::Credit {
            credits: batch.len() as u32,
            ahead_credits: 0,
        }))
        .await;
    }
    assert!(
        ran.values().all(|&attempt| attempt == 1),
        "every job ran on its first attempt: {ran:?}"
    );

    let mut c = t.jobs().await;
    for id in &ids {
        let id = id.clone();
        let c = &mut c;
        eventually("the job succeeded", move || {
            let id = id.clone();
            let mut c = c.clone();
            async move {
                let job = c
                    .get_job(pb::GetJobRequest {
                        job_id: id,
                        ..Default::default()
                    })
                    .await
                    .expect("get")
                    .into_inner()
                    .job?;
                (job.state == pb::JobState::Succeeded as i32 && job.attempt == 1).then_some(())
            }
        })
        .await;
    }
    drop(peer);
    t.stop().await;
}

async fn list_all(
    c: &mut pb::job_service_client::JobServiceClient<tonic::transport::Channel>,
    include_payload: bool,
) -> Vec<pb::Job> {
    let mut all = Vec::new();
    let mut token = String::new();
    loop {
        let page = c
            .list_jobs(pb::ListJobsRequest {
                task_tracker_node_group: GROUP.into(),
                page_size: 1000,
                page_token: token.clone(),
                include_payload,
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        let bytes = prost::Message::encoded_len(&page);
        assert!(bytes <= MESSAGE_BUDGET_BYTES, "a page of {bytes} bytes");
        assert!(!page.jobs.is_empty() || page.next_page_token.is_empty());
        all.extend(page.jobs);
        if page.next_page_token.is_empty() {
            return all;
        }
        token = page.next_page_token;
    }
}

#[tokio::test]
async fn listings_of_large_jobs_come_in_bounded_pages_without_payloads_unless_asked() {
    let t = TestTracker::start().await;
    let mut ids = submit_big_jobs(&t).await;
    ids.sort();
    // The default client limit (4 MiB) reads every page.
    let mut c = pb::job_service_client::JobServiceClient::connect(t.addr.clone())
        .await
        .expect("connect");

    let lean = list_all(&mut c, false).await;
    let mut listed: Vec<String> = lean.iter().map(|j| j.job_id.clone()).collect();
    listed.sort();
    assert_eq!(listed, ids, "every job is reachable by page tokens");
    for j in &lean {
        let spec = j.spec.as_ref().expect("spec");
        assert!(spec.payload.is_empty(), "payload left out by default");
        assert!(spec.params.is_empty(), "params left out by default");
        assert!(
            spec.task_id.starts_with("big-"),
            "the rest of the spec is there"
        );
    }

    let full = list_all(&mut c, true).await;
    let mut listed: Vec<String> = full.iter().map(|j| j.job_id.clone()).collect();
    listed.sort();
    assert_eq!(listed, ids);
    for j in &full {
        let spec = j.spec.as_ref().expect("spec");
        assert_eq!(spec.payload.len(), MAX_PAYLOAD_BYTES, "asked for payloads");
        assert!(spec.params.contains_key("index"));
    }

    // GetJob returns the whole job.
    let one = c
        .get_job(pb::GetJobRequest {
            job_id: ids[0].clone(),
            ..Default::default()
        })
        .await
        .expect("get")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(one.spec.expect("spec").payload.len(), MAX_PAYLOAD_BYTES);
    t.stop().await;
}

#[tokio::test]
async fn a_log_of_long_lines_comes_in_pages_a_default_client_reads() {
    const LINES: usize = 600;
    let t = TestTracker::start().await;
    let mut c = t.jobs().await;
    let id = submit(&mut c, vec![job("chatty", "logs")]).await.remove(0);
    let mut peer = open_work(&t.addr, hello("w", "logs", 1))
        .await
        .expect("work stream");
    let attempt = peer.assignments().await[0].attempt;
    let long = "y".repeat(lts_common::limits::MAX_LOG_MESSAGE_BYTES);
    peer.send(pb::worker_message::Kind::BizLogs(pb::BizLogs {
        lines: (0..LINES)
            .map(|i| pb::BizLog {
                job_id: id.clone(),
                attempt,
                level: pb::LogLevel::Info as i32,
                message: format!("{i:04} {long}"),
                at_unix_ms: lts_common::now_ms(),
            })
            .collect(),
    }))
    .await;
    peer.succeed(&[(id.clone(), attempt)]).await;

    // The default client limit (4 MiB) reads every page.
    let mut c = pb::job_service_client::JobServiceClient::connect(t.addr.clone())
        .await
        .expect("connect");
    let biz_lines = |c: &mut pb::job_service_client::JobServiceClient<_>| {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let mut token = String::new();
            let mut biz = 0;
            loop {
                let page = c
                    .get_job_log(pb::GetJobLogRequest {
                        job_id: id.clone(),
                        page_size: 1000,
                        page_token: token,
                    })
                    .await
                    .expect("a page within the client's limit")
                    .into_inner();
                assert!(prost::Message::encoded_len(&page) <= MESSAGE_BUDGET_BYTES);
                biz += page
                    .entries
                    .iter()
                    .filter(|e| e.kind == pb::LogKind::Biz as i32)
                    .count();
                if page.next_page_token.is_empty() {
                    return biz;
                }
                token = page.next_page_token;
            }
        }
    };
    eventually("every line is stored", || {
        let lines = biz_lines(&mut c);
        async move { (lines.await == LINES).then_some(()) }
    })
    .await;
    drop(peer);
    t.stop().await;
}
