//! Limits that hold under abuse: each answers with a clear status, and a
//! well-behaved client keeps being served while it bites.

mod support;

use std::sync::Arc;
use std::time::Duration;

use lts_jobtracker::limits::ServerLimits;
use lts_proto::v1 as pb;
use pb::job_service_client::JobServiceClient;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// The HTTP/2 client preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A tracker served in-process with `limits`, and its state.
async fn tracker_with(limits: ServerLimits) -> (TestTracker, Arc<lts_jobtracker::Tracker>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(dir.path());
    config.limits = limits;
    let tracker = lts_jobtracker::create_tracker(config)
        .await
        .expect("create tracker");
    let mut t = TestTracker::serve(tracker.clone()).await;
    t.dir = Some(dir);
    (t, tracker)
}

fn limited(tracker: &lts_jobtracker::Tracker, limit: &str) -> u64 {
    tracker.metrics.limited.with_label_values(&[limit]).get()
}

fn error_of(r: &pb::SubmitResult) -> Option<&pb::SubmitError> {
    match &r.result {
        Some(pb::submit_result::Result::Error(e)) => Some(e),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_node_groups_in_one_submit_store_only_the_first_hundred() {
    let (t, tracker) = tracker_with(ServerLimits::default()).await;
    let mut c = t.jobs().await;
    let jobs: Vec<pb::JobSpec> = (0..10_000)
        .map(|i| job(&format!("t{i}"), &format!("group-{i}")))
        .collect();
    let results = c
        .submit_jobs(pb::SubmitJobsRequest { jobs })
        .await
        .expect("submit")
        .into_inner()
        .results;
    let stored = results.iter().filter(|r| error_of(r).is_none()).count();
    assert_eq!(stored, 100);
    let e = error_of(&results[100]).expect("refused");
    assert_eq!(e.code, "RESOURCE_EXHAUSTED");
    assert_eq!(e.field, "task_tracker_node_group");
    assert!(
        e.message.contains("jobs[100].task_tracker_node_group") && e.message.contains("100"),
        "{}",
        e.message
    );
    assert_eq!(limited(&tracker, "node_groups_per_call"), 9_900);
    // A job of a group the call already named is not refused for it.
    let results = c
        .submit_jobs(pb::SubmitJobsRequest {
            jobs: vec![job("again-0", "group-0"), job("again-1", "group-0")],
        })
        .await
        .expect("submit")
        .into_inner()
        .results;
    assert!(results.iter().all(|r| error_of(r).is_none()), "{results:?}");

    // Node groups beyond the label cap share one series in the metrics.
    for call in 0..2 {
        let jobs = (0..100)
            .map(|i| job(&format!("m{call}-{i}"), &format!("more-{call}-{i}")))
            .collect();
        submit(&mut c, jobs).await;
    }
    // A sample's gauges are set one by one: a scrape during the first
    // sample with `_other` may see part of them, so wait for a whole one.
    let depth_series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("lts_jobtracker_queue_depth{"))
            .count()
    };
    let text = eventually("queue depths sampled", || async {
        let text = tracker.metrics.render();
        (text.contains("lts_jobtracker_queue_depth{node_group=\"_other\"}")
            && depth_series(&text) > lts_jobtracker::metrics::MAX_NODE_GROUP_LABELS)
            .then_some(text)
    })
    .await;
    let series = depth_series(&text);
    assert_eq!(
        series,
        lts_jobtracker::metrics::MAX_NODE_GROUP_LABELS + 1,
        "{text}"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submits_beyond_the_rate_get_resource_exhausted_and_later_ones_pass() {
    let (t, tracker) = tracker_with(ServerLimits {
        max_submits_per_second: 5,
        ..ServerLimits::default()
    })
    .await;
    let mut c = t.jobs().await;
    let status = loop {
        match c
            .submit_jobs(pb::SubmitJobsRequest {
                jobs: vec![job("same", "g")],
            })
            .await
        {
            Ok(_) => continue,
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("--max-submits-per-second"),
        "{status:?}"
    );
    assert!(limited(&tracker, "submit_rate") >= 1);
    // The bucket refills: a later submit goes through.
    eventually("a submit to pass again", || {
        let mut c = c.clone();
        async move {
            c.submit_jobs(pb::SubmitJobsRequest {
                jobs: vec![job("later", "g")],
            })
            .await
            .ok()
        }
    })
    .await;
    t.stop().await;
}

/// Opens `n` raw TCP connections to `addr` from `source` (another
/// loopback address, so the caps of the well-behaved client on 127.0.0.1
/// are its own); each sends `first` and then nothing.
async fn hostile_connections(addr: &str, source: &str, n: usize, first: &[u8]) -> Vec<TcpStream> {
    let target: std::net::SocketAddr = addr.trim_start_matches("http://").parse().expect("address");
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = TcpSocket::new_v4().expect("socket");
        socket
            .bind(format!("{source}:0").parse().expect("source"))
            .expect("bind");
        let mut s = socket.connect(target).await.expect("connect");
        if !first.is_empty() {
            // The tracker may already have closed a connection over a cap.
            let _ = s.write_all(first).await;
        }
        conns.push(s);
    }
    conns
}

/// Waits until the tracker closed `conn`: a read ends (EOF or reset).
async fn closed_by_tracker(conn: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(WAIT, conn.read(&mut buf))
            .await
            .expect("the tracker closes the connection within the wait")
        {
            Ok(0) | Err(_) => return,
            // The server's own preface and settings, then nothing.
            Ok(_) => continue,
        }
    }
}

/// A client and a TaskTracker that behave: a job submitted now is
/// started and succeeds within the wait.
async fn a_job_gets_through(t: &TestTracker, task: &str) {
    let mut c = JobServiceClient::connect(t.addr.clone())
        .await
        .expect("connect");
    let id = submit(&mut c, vec![job(task, "g")]).await.remove(0);
    let mut worker = open_work(&t.addr, hello(&format!("tt-{task}"), "g", 1))
        .await
        .expect("work stream");
    let a = worker.assignments().await.remove(0);
    assert_eq!(a.job.as_ref().map(|j| j.job_id.clone()), Some(id.clone()));
    worker.succeed(&[(id.clone(), a.attempt)]).await;
    eventually("the job to succeed", || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let job = c
                .get_job(pb::GetJobRequest {
                    job_id: id,
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .job?;
            (job.state == pb::JobState::Succeeded as i32).then_some(())
        }
    })
    .await;
}

/// Reads `peer`'s stream and sends heartbeats, so it stays connected,
/// until the returned task is aborted.
fn keep_alive(mut peer: Peer) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                m = peer.rx.message() => if !matches!(m, Ok(Some(_))) { return },
                _ = beat.tick() => {
                    let beat = pb::Heartbeat { at_unix_ms: lts_common::now_ms() };
                    if peer.tx.send(pb::WorkerMessage {
                        kind: Some(pb::worker_message::Kind::Heartbeat(beat)),
                    }).await.is_err() {
                        return;
                    }
                }
            }
        }
    })
}

/// This process's resident set size in KiB, from /proc (0 elsewhere).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_well_behaved_client_is_served_while_hostile_peers_abuse_the_tracker() {
    let (t, tracker) = tracker_with(ServerLimits {
        max_connections_per_peer: 150,
        // Long enough that no admitted hostile connection is closed by
        // it (freeing a place) before all 1,000 are opened, however
        // slow the machine: the count of refusals below is then exact.
        handshake_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(2),
        ..ServerLimits::default()
    })
    .await;
    let rss_before = rss_kib();
    // 1,000 connections from four hostile addresses: on each, 125 idle
    // and 125 sending only the HTTP/2 preface; 150 per address are let
    // in, the rest closed at once.
    let mut idle = Vec::new();
    let mut preface = Vec::new();
    for source in ["127.0.0.2", "127.0.0.4", "127.0.0.5", "127.0.0.6"] {
        idle.extend(hostile_connections(&t.addr, source, 125, b"").await);
        preface.extend(hostile_connections(&t.addr, source, 125, PREFACE).await);
    }
    // Garbage bytes on a connection of their own.
    let mut garbage = hostile_connections(&t.addr, "127.0.0.3", 1, &[0xff; 4096]).await;
    // A log line whose job id is 50 MB long, on a stream of its own.
    let (big_tx, big_rx) = mpsc::channel(2);
    big_tx.send(hello("big-id", "g3", 1)).await.expect("queue");
    let mut big_stream = pb::work_service_client::WorkServiceClient::connect(t.addr.clone())
        .await
        .expect("connect")
        .max_encoding_message_size(lts_common::limits::MAX_MESSAGE_BYTES)
        .work(ReceiverStream::new(big_rx))
        .await
        .expect("stream")
        .into_inner();
    big_tx
        .send(pb::WorkerMessage {
            kind: Some(pb::worker_message::Kind::BizLogs(pb::BizLogs {
                lines: vec![pb::BizLog {
                    job_id: "x".repeat(50 * 1024 * 1024),
                    attempt: 1,
                    level: pb::LogLevel::Info as i32,
                    message: "hostile".into(),
                    at_unix_ms: lts_common::now_ms(),
                }],
            })),
        })
        .await
        .expect("queue");
    // 200 feedback streams that never read, on one connection.
    let mut deaf_feedback = Vec::new();
    let mut deaf_client = t.jobs().await;
    for i in 0..200 {
        deaf_feedback.push(subscribe(&mut deaf_client, "clients", &format!("deaf-{i}")).await);
    }
    // A TaskTracker of another group crediting far beyond its one slot.
    let greedy = open_work(&t.addr, hello("greedy", "g2", 1))
        .await
        .expect("work stream");
    greedy
        .send(pb::worker_message::Kind::Credit(pb::Credit {
            credits: 100_000,
            ahead_credits: 100_000,
        }))
        .await;
    let greedy = keep_alive(greedy);
    let mut c = t.jobs().await;
    let flood = (0..1000)
        .map(|i| job(&format!("flood-{i}"), "g2"))
        .collect();
    submit(&mut c, flood).await;

    a_job_gets_through(&t, "while-hostile").await;

    for conn in idle
        .iter_mut()
        .chain(preface.iter_mut())
        .chain(garbage.iter_mut())
    {
        closed_by_tracker(conn).await;
    }
    assert!(limited(&tracker, "connections_per_peer") >= 400);
    // The 50 MB job id ends its stream with a status naming the field.
    let status = loop {
        match big_stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream with a 50 MB job id ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("job_id") && status.message().contains("128"),
        "{status:?}"
    );
    eventually("the greedy credit to be cut", || async {
        (limited(&tracker, "credit") >= 1).then_some(())
    })
    .await;
    let running_on_greedy = eventually("a run on the greedy TaskTracker", || {
        let mut c = c.clone();
        async move {
            let n = c
                .list_jobs(pb::ListJobsRequest {
                    state: pb::JobState::Running as i32,
                    task_tracker_node_group: "g2".into(),
                    ..Default::default()
                })
                .await
                .ok()?
                .into_inner()
                .jobs
                .len();
            (n > 0).then_some(n)
        }
    })
    .await;
    assert_eq!(running_on_greedy, 1, "one slot, one run in flight");
    // The hostile address may connect again once its connections closed.
    let mut again = hostile_connections(&t.addr, "127.0.0.2", 1, PREFACE).await;
    closed_by_tracker(&mut again[0]).await;
    a_job_gets_through(&t, "after-hostile").await;
    eprintln!(
        "hostile peers: RSS of the test process (tracker and peers) {rss_before} KiB before, {} KiB after",
        rss_kib()
    );
    greedy.abort();
    drop(deaf_feedback);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feedback_ack_of_items_not_in_flight_to_that_stream_deletes_nothing() {
    let (t, tracker) = tracker_with(ServerLimits::default()).await;
    let mut c = t.jobs().await;
    let mut spec = job("fb", "g");
    spec.need_feedback = true;
    spec.submit_node_group = "clients".into();
    let id = submit(&mut c, vec![spec]).await.remove(0);
    let mut worker = open_work(&t.addr, hello("tt", "g", 1))
        .await
        .expect("work stream");
    let a = worker.assignments().await.remove(0);
    worker.succeed(&[(id.clone(), a.attempt)]).await;
    let feedback_id = eventually("the feedback stored", || async {
        let pending = tracker.store.pending_feedback().await.ok()?;
        pending
            .into_iter()
            .find(|f| f.job_id == id)
            .map(|f| f.feedback_id)
    })
    .await;

    // A stream of another group acks it, then ends.
    let (tx, rx) = mpsc::channel(4);
    let subscribe = |group: &str| pb::FeedbackClientMessage {
        kind: Some(pb::feedback_client_message::Kind::Subscribe(
            pb::Subscribe {
                submit_node_group: group.into(),
                client_id: "c".into(),
            },
        )),
    };
    let ack = |ids: Vec<String>| pb::FeedbackClientMessage {
        kind: Some(pb::feedback_client_message::Kind::Ack(pb::FeedbackAck {
            feedback_ids: ids,
        })),
    };
    tx.send(subscribe("evil")).await.expect("queue");
    tx.send(ack(vec![feedback_id.clone()]))
        .await
        .expect("queue");
    let evil = c.feedback(ReceiverStream::new(rx)).await.expect("stream");
    eventually("the evil subscriber to join", || async {
        tracker
            .feedback
            .subscribed_groups()
            .contains(&"evil".to_string())
            .then_some(())
    })
    .await;
    drop(tx);
    drop(evil);
    // Its messages were handled before it left.
    eventually("the evil subscriber to leave", || async {
        (!tracker
            .feedback
            .subscribed_groups()
            .contains(&"evil".to_string()))
        .then_some(())
    })
    .await;
    let pending = tracker.store.pending_feedback().await.expect("pending");
    assert!(
        pending.iter().any(|f| f.feedback_id == feedback_id),
        "the item survives an ack from a stream it was not sent to"
    );

    // The real client gets it and its ack removes it.
    let (tx, rx) = mpsc::channel(4);
    tx.send(subscribe("clients")).await.expect("queue");
    let mut real = c
        .feedback(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let m = tokio::time::timeout(WAIT, real.message())
        .await
        .expect("feedback within the wait")
        .expect("ok")
        .expect("a message");
    assert_eq!(m.items[0].feedback_id, feedback_id);
    tx.send(ack(vec![feedback_id.clone()]))
        .await
        .expect("queue");
    eventually("the acked item deleted", || async {
        let pending = tracker.store.pending_feedback().await.ok()?;
        (!pending.iter().any(|f| f.feedback_id == feedback_id)).then_some(())
    })
    .await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_tracker_that_stops_reading_is_dropped_and_its_runs_go_to_another() {
    const JOBS: usize = 8;
    let (t, tracker) = tracker_with(ServerLimits::default()).await;
    // It opens a stream with a small HTTP/2 window, then reads nothing
    // while it goes on sending heartbeats.
    let channel = tonic::transport::Endpoint::from_shared(t.addr.clone())
        .expect("endpoint")
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let mut client = pb::work_service_client::WorkServiceClient::new(channel);
    let (tx, rx) = mpsc::channel(4);
    tx.send(hello("deaf", "g", JOBS as u32))
        .await
        .expect("queue");
    let _deaf = client.work(ReceiverStream::new(rx)).await.expect("stream");
    let beats = tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(100));
        loop {
            beat.tick().await;
            let m = pb::WorkerMessage {
                kind: Some(pb::worker_message::Kind::Heartbeat(pb::Heartbeat {
                    at_unix_ms: lts_common::now_ms(),
                })),
            };
            if tx.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut c = t.jobs().await;
    let jobs = (0..JOBS)
        .map(|i| {
            let mut spec = job(&format!("big-{i}"), "g");
            spec.payload = vec![7; 512 * 1024];
            spec
        })
        .collect();
    submit(&mut c, jobs).await;
    eventually("the deaf TaskTracker to be dropped", || async {
        (limited(&tracker, "work_not_read") == 1).then_some(())
    })
    .await;
    // Its runs go to a TaskTracker that reads.
    let mut reader = open_work(&t.addr, hello("reader", "g", JOBS as u32))
        .await
        .expect("work stream");
    let mut got = 0;
    while got < JOBS {
        for a in reader.assignments().await {
            assert!(a.attempt >= 2, "the run went to the deaf one first");
            got += 1;
        }
    }
    beats.abort();
    t.stop().await;
}

/// A feedback subscription of `group` as `client_id` on `c`'s connection;
/// the sender keeps it open.
async fn subscribe(
    c: &mut JobServiceClient<tonic::transport::Channel>,
    group: &str,
    client_id: &str,
) -> (
    mpsc::Sender<pb::FeedbackClientMessage>,
    tonic::Streaming<pb::FeedbackServerMessage>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::FeedbackClientMessage {
        kind: Some(pb::feedback_client_message::Kind::Subscribe(
            pb::Subscribe {
                submit_node_group: group.into(),
                client_id: client_id.into(),
            },
        )),
    })
    .await
    .expect("queue");
    let stream = c
        .feedback(ReceiverStream::new(rx))
        .await
        .expect("feedback")
        .into_inner();
    (tx, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_while_a_quiet_live_client_stays_connected() {
    let (t, _tracker) = tracker_with(ServerLimits {
        // The handshake timeout is out of the way: a close below is the
        // idle timeout's.
        handshake_timeout: Duration::from_secs(120),
        idle_timeout: Duration::from_secs(1),
        ..ServerLimits::default()
    })
    .await;
    // A live client that then says nothing: its connection answers the
    // tracker's pings.
    let mut c = t.jobs().await;
    let (_keep, mut quiet) = subscribe(&mut c, "quiet", "quiet-client").await;
    // A peer that completes the HTTP/2 preface and an empty SETTINGS
    // frame, then sends nothing (and answers no ping).
    let mut first = PREFACE.to_vec();
    first.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let mut silent = hostile_connections(&t.addr, "127.0.0.2", 1, &first).await;
    closed_by_tracker(&mut silent[0]).await;
    // The silent peer was closed after more than the idle timeout; the
    // quiet client's stream, open all along, still delivers.
    let mut spec = job("after-idle", "g");
    spec.need_feedback = true;
    spec.submit_node_group = "quiet".into();
    let id = submit(&mut c, vec![spec]).await.remove(0);
    let mut worker = open_work(&t.addr, hello("tt", "g", 1))
        .await
        .expect("work stream");
    let a = worker.assignments().await.remove(0);
    worker.succeed(&[(id.clone(), a.attempt)]).await;
    let m = tokio::time::timeout(WAIT, quiet.message())
        .await
        .expect("feedback within the wait")
        .expect("the quiet client's stream is still open")
        .expect("a message");
    assert_eq!(m.items[0].job_id, id);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_beyond_the_streams_per_connection_waits_for_a_stream_to_end() {
    let (t, _tracker) = tracker_with(ServerLimits {
        max_streams_per_connection: 2,
        ..ServerLimits::default()
    })
    .await;
    let mut c = t.jobs().await;
    let (one_tx, one) = subscribe(&mut c, "one", "one-client").await;
    let (_two_tx, _two) = subscribe(&mut c, "two", "two-client").await;
    // A third call on the same connection waits for a stream.
    let mut third = c.clone();
    let mut call = tokio::spawn(async move {
        third
            .list_jobs(pb::ListJobsRequest::default())
            .await
            .map(|r| r.into_inner().jobs.len())
    });
    tokio::select! {
        r = &mut call => panic!("a third stream was opened on a connection allowing two: {r:?}"),
        _ = tokio::time::sleep(Duration::from_millis(300)) => {}
    }
    // Another connection is served meanwhile.
    let mut other = t.jobs().await;
    other
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("a call on another connection");
    // Once a stream ends, the waiting call goes through.
    drop(one_tx);
    drop(one);
    let listed = tokio::time::timeout(WAIT, call)
        .await
        .expect("the waiting call within the wait")
        .expect("task")
        .expect("list");
    assert_eq!(listed, 0);
    t.stop().await;
}
