//! The audit lines the `jobtracker` binary writes with its default log
//! settings: one per operator action and per refused credential or
//! permission, naming who, what, which job and from where.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lts_jobtracker::auth::hash_token;
use lts_proto::v1 as pb;
use pb::admin_service_client::AdminServiceClient;
use pb::job_service_client::JobServiceClient;

/// Kills the child when the test ends, however it ends.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read(path: &std::path::Path) -> String {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .expect("read log");
    text
}

/// Waits (bounded) until the log holds a line with every one of `parts`;
/// returns all such lines.
async fn lines_with(log: &std::path::Path, parts: &[&str]) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found: Vec<String> = read(log)
            .lines()
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_string)
            .collect();
        if !found.is_empty() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "no line with {parts:?} in:\n{}",
            read(log)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn with<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_actions_and_refusals_each_leave_one_audit_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        format!(
            "{} admin root\n{} operate:b bob\n",
            hash_token("admin-token"),
            hash_token("operate-b-token")
        ),
    )
    .expect("write tokens");
    let log = dir.path().join("jobtracker.log");
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_jobtracker"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--token-file")
        .arg(&tokens)
        .env_remove("RUST_LOG")
        .env_remove("JOBTRACKER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start jobtracker");
    let _reap = Reap(child);
    let start = lines_with(&log, &["jobtracker listening on "])
        .await
        .remove(0);
    let bound = start
        .rsplit("listening on ")
        .next()
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the bound address");
    let addr = format!("http://{bound}");

    let mut jobs = JobServiceClient::connect(addr.clone())
        .await
        .expect("connect");
    let mut admin = AdminServiceClient::connect(addr).await.expect("connect");
    let submitted = jobs
        .submit_jobs(with(
            "admin-token",
            pb::SubmitJobsRequest {
                jobs: vec![pb::JobSpec {
                    task_id: "audited".into(),
                    task_tracker_node_group: "a".into(),
                    ..Default::default()
                }],
            },
        ))
        .await
        .expect("submit")
        .into_inner();
    let id = match &submitted.results[0].result {
        Some(pb::submit_result::Result::JobId(id)) => id.clone(),
        other => panic!("not accepted: {other:?}"),
    };
    let job = format!("job=\"{id}\"");

    // An operator action carried out.
    admin
        .cancel_job(with("admin-token", pb::JobRef { job_id: id.clone() }))
        .await
        .expect("cancel");
    // A permission refused: an operator of another group.
    admin
        .suspend_job(with("operate-b-token", pb::JobRef { job_id: id.clone() }))
        .await
        .expect_err("suspend refused");
    // A credential refused: a token not in the file.
    let e = admin
        .resume_job(with("stolen-token", pb::JobRef { job_id: id.clone() }))
        .await
        .expect_err("unauthenticated");
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");

    let cancelled = lines_with(&log, &["audit", "what=\"cancel\"", &job]).await;
    assert_eq!(cancelled.len(), 1, "{cancelled:?}");
    for part in ["who=\"root\"", "from=127.0.0.1:", "outcome=\"ok\""] {
        assert!(cancelled[0].contains(part), "{part} in {}", cancelled[0]);
    }
    let denied = lines_with(&log, &["audit", "what=\"suspend\"", &job]).await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    for part in [
        "who=\"bob\"",
        "from=127.0.0.1:",
        "outcome=\"permission_denied\"",
    ] {
        assert!(denied[0].contains(part), "{part} in {}", denied[0]);
    }
    let refused = lines_with(&log, &["audit", "what=\"resume\"", "unauthenticated"]).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    for part in ["who=\"-\"", "from=127.0.0.1:", job.as_str()] {
        assert!(refused[0].contains(part), "{part} in {}", refused[0]);
    }
}
