//! TLS, mutual TLS and tokens with roles, against a real in-process
//! JobTracker (embedded store, port 0) with a CA and certificates made
//! here: what a client or a TaskTracker may do with each credential, and
//! what happens without one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lts_common::endpoint::{ClientTls, EndpointOptions, JobTrackerEndpoint, Token};
use lts_common::{JobSpec, JobState};
use lts_jobclient::{ClientOptions, Error, JobClient, SubmitOutcome};
use lts_jobtracker::auth::hash_token;
use lts_proto::v1 as pb;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio::sync::oneshot;

/// PEM certificate and key.
#[derive(Clone)]
struct Pair {
    cert: String,
    key: String,
}

impl Pair {
    fn identity(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        Some((
            self.cert.clone().into_bytes(),
            self.key.clone().into_bytes(),
        ))
    }
}

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS names or IP addresses), with the
    /// first as its common name.
    fn issue(&self, names: &[&str]) -> Pair {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

const SUBMIT: &str = "submit-token-for-clients";
const ADMIN: &str = "admin-token";
const WORKER_A: &str = "worker-token-for-group-a";
const OPERATE_B: &str = "operate-token-for-group-b";

fn token_file(lines: &[(&str, &str)]) -> String {
    let mut text = String::from("# credential role[:groups] name\n");
    for (token, rest) in lines {
        text.push_str(&format!("{} {rest}\n", hash_token(token)));
    }
    text
}

fn standard_tokens() -> String {
    let mut text = token_file(&[
        (SUBMIT, "submit:clients alice"),
        (ADMIN, "admin root"),
        (WORKER_A, "worker:a workers-of-a"),
        (OPERATE_B, "operate:b bob"),
    ]);
    text.push_str("cert:tt-a.example worker:a tt-a\n");
    text
}

struct Tracker {
    address: String,
    ca: String,
    tokens: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Tracker {
    /// A tracker with TLS (a server certificate for 127.0.0.1 and
    /// localhost), mutual TLS against `client_ca`, and the token file
    /// holding `tokens`.
    async fn start(ca: &Ca, client_ca: Option<&Ca>, tokens: &str) -> Tracker {
        let dir = tempfile::tempdir().expect("temp dir");
        let token_path = dir.path().join("tokens");
        std::fs::write(&token_path, tokens).expect("write tokens");
        let server = ca.issue(&["localhost", "127.0.0.1"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().expect("addr").port()
        );
        let mut config = lts_jobtracker::TrackerConfig::embedded(dir.path().join("data"));
        config.security.tls = Some(lts_jobtracker::ServerTls {
            cert_pem: server.cert.into_bytes(),
            key_pem: server.key.into_bytes(),
            client_ca_pem: client_ca.map(|c| c.pem.clone().into_bytes()),
        });
        config.security.token_file = Some(token_path.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = lts_jobtracker::serve(config, listener, shutdown).await {
                panic!("JobTracker failed: {e}");
            }
        });
        Tracker {
            address,
            ca: ca.pem.clone(),
            tokens: token_path,
            stop: Some(stop),
            task,
            _dir: dir,
        }
    }

    fn tls(&self, identity: Option<&Pair>) -> ClientTls {
        ClientTls::from_pem(self.ca.clone(), identity.and_then(Pair::identity))
    }

    fn client(&self, token: Option<&str>) -> JobClient {
        let options = ClientOptions {
            connect_timeout: Duration::from_secs(5),
            tls: Some(self.tls(None)),
            token: token.map(|t| Token::new(t).expect("token")),
            ..ClientOptions::default()
        };
        JobClient::new(vec![self.address.clone()], options).expect("client")
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.task).await;
    }
}

/// Opens a work stream for `group` and waits for the welcome: `Ok` once
/// welcomed, the status (or the connection error) otherwise.
async fn open_work_stream(
    address: &str,
    tls: ClientTls,
    token: Option<&str>,
    group: &str,
) -> Result<(), String> {
    let options = EndpointOptions::default()
        .with_tls(Some(tls))
        .with_token(token.map(|t| Token::new(t).expect("token")));
    let endpoint = JobTrackerEndpoint::new(address, &options).map_err(|e| e.to_string())?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut client = pb::work_service_client::WorkServiceClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::WorkerMessage {
        kind: Some(pb::worker_message::Kind::Hello(pb::Hello {
            identity: format!("test-{group}"),
            node_group: group.into(),
            slots: 1,
            protocol_version: lts_proto::PROTOCOL_VERSION,
            ..Default::default()
        })),
    })
    .await
    .expect("queue hello");
    let call = async {
        let mut inbound = client
            .work(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        match inbound.message().await {
            Ok(Some(pb::TrackerMessage {
                kind: Some(pb::tracker_message::Kind::Welcome(_)),
            })) => Ok(()),
            Ok(other) => Err(format!("no welcome: {other:?}")),
            Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(20), call)
        .await
        .unwrap_or_else(|_| Err("no answer within 20 s".into()));
    drop(tx);
    result
}

fn job(task_id: &str, group: &str, submit_group: &str) -> JobSpec {
    let mut spec = JobSpec::new(task_id, group);
    spec.submit_node_group = submit_group.into();
    spec
}

async fn submit_one(client: &JobClient, spec: JobSpec) -> String {
    match client.submit(vec![spec]).await.expect("submit").remove(0) {
        SubmitOutcome::Accepted { job_id, .. } => job_id,
        other => panic!("not accepted: {other:?}"),
    }
}

fn code(e: &Error) -> Option<tonic::Code> {
    e.code()
}

#[tokio::test]
async fn a_tasktracker_needs_a_client_certificate_signed_by_the_ca() {
    let ca = Ca::new("test CA");
    let tracker = Tracker::start(&ca, Some(&ca), &standard_tokens()).await;
    let good = ca.issue(&["tt-a.example"]);
    let rogue_ca = Ca::new("rogue CA");
    let rogue = rogue_ca.issue(&["tt-a.example"]);

    // The right certificate: welcomed, and its role (worker:a) applies.
    open_work_stream(&tracker.address, tracker.tls(Some(&good)), None, "a")
        .await
        .expect("a certificate signed by the CA is welcomed");
    let e = open_work_stream(&tracker.address, tracker.tls(Some(&good)), None, "b")
        .await
        .unwrap_err();
    assert!(e.starts_with("PermissionDenied"), "{e}");

    // No certificate, even with a valid worker token: refused.
    let e = open_work_stream(&tracker.address, tracker.tls(None), Some(WORKER_A), "a")
        .await
        .unwrap_err();
    assert!(
        e.starts_with("Unauthenticated") && e.contains("client certificate"),
        "{e}"
    );

    // A certificate of another CA with the same name: the handshake fails.
    let e = open_work_stream(&tracker.address, tracker.tls(Some(&rogue)), None, "a")
        .await
        .unwrap_err();
    assert!(
        e.starts_with("connect") || e.contains("transport error"),
        "{e}"
    );

    // A whole TaskTracker with the right certificate runs a job over TLS.
    let mut config = lts_tasktracker::TaskTrackerConfig::new(tracker.address.clone(), "a");
    config.tls = Some(tracker.tls(Some(&good)));
    let tt =
        lts_tasktracker::TaskTracker::new(config, Arc::new(lts_tasktracker::runners::NoopRunner))
            .expect("TaskTracker");
    let (tt_stop, tt_stopped) = oneshot::channel::<()>();
    let tt_task = tokio::spawn(tt.run(async move {
        let _ = tt_stopped.await;
    }));
    let admin = tracker.client(Some(ADMIN));
    let job_id = submit_one(&admin, job("over-tls", "a", "")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let j = admin.get(&job_id).await.expect("get");
        if j.state == JobState::Succeeded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the job did not succeed: {:?}",
            j.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = tt_stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), tt_task).await;
    tracker.stop().await;
}

#[tokio::test]
async fn each_role_does_only_what_it_may_and_never_learns_whether_a_job_exists() {
    let ca = Ca::new("test CA");
    let tracker = Tracker::start(&ca, None, &standard_tokens()).await;
    let submitter = tracker.client(Some(SUBMIT));
    let admin = tracker.client(Some(ADMIN));
    let operator_b = tracker.client(Some(OPERATE_B));

    // Submit for its own submit group: accepted; it reads its job back.
    let mine = submit_one(&submitter, job("mine", "a", "clients")).await;
    assert_eq!(submitter.get(&mine).await.expect("get").job_id, mine);
    // For another submit group: refused.
    let e = submitter
        .submit(vec![job("theirs", "a", "others")])
        .await
        .unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::PermissionDenied), "{e}");

    // A submit token cannot cancel, by either service.
    let e = submitter.cancel(&mine).await.unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::PermissionDenied), "{e}");
    let e = submitter.admin().cancel(&mine).await.unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::PermissionDenied), "{e}");
    // ...nor open a work stream.
    let e = open_work_stream(&tracker.address, tracker.tls(None), Some(SUBMIT), "a")
        .await
        .unwrap_err();
    assert!(e.starts_with("PermissionDenied"), "{e}");

    // An operator of group b may not touch a job of group a, and gets the
    // same answer for a job that does not exist.
    let e_real = operator_b.admin().suspend(&mine).await.unwrap_err();
    let e_none = operator_b.admin().suspend("no-such-job").await.unwrap_err();
    assert_eq!(code(&e_real), Some(tonic::Code::PermissionDenied));
    assert_eq!(code(&e_none), Some(tonic::Code::PermissionDenied));
    let shown = |e: &Error, id: &str| e.to_string().replace(id, "ID");
    assert_eq!(shown(&e_real, &mine), shown(&e_none, "no-such-job"));
    // On its own group it may.
    let b_job = submit_one(&admin, job("for-b", "b", "")).await;
    let suspended = operator_b.admin().suspend(&b_job).await.expect("suspend");
    assert_eq!(suspended.state, JobState::Suspended);
    // The administrator may cancel anything.
    let cancelled = admin.cancel(&mine).await.expect("cancel");
    assert_eq!(cancelled.state, JobState::Cancelled);

    // A worker token for group a takes group a's stream, not group b's.
    open_work_stream(&tracker.address, tracker.tls(None), Some(WORKER_A), "a")
        .await
        .expect("worker for a");
    let e = open_work_stream(&tracker.address, tracker.tls(None), Some(WORKER_A), "b")
        .await
        .unwrap_err();
    assert!(e.starts_with("PermissionDenied"), "{e}");

    // A wrong token, or none: unauthenticated, before anything is looked up.
    for client in [tracker.client(Some("not-a-token")), tracker.client(None)] {
        let e = client.get(&mine).await.unwrap_err();
        assert_eq!(code(&e), Some(tonic::Code::Unauthenticated), "{e}");
        let e = client.get("no-such-job").await.unwrap_err();
        assert_eq!(code(&e), Some(tonic::Code::Unauthenticated), "{e}");
    }
    tracker.stop().await;
}

#[tokio::test]
async fn a_rotated_token_takes_effect_without_a_restart() {
    let ca = Ca::new("test CA");
    let tracker = Tracker::start(&ca, None, &token_file(&[("old-token", "admin ops")])).await;
    let old = tracker.client(Some("old-token"));
    let new = tracker.client(Some("new-token"));
    let id = submit_one(&old, job("rotate", "a", "")).await;
    let e = new.get(&id).await.unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::Unauthenticated), "{e}");

    replace(&tracker.tokens, &token_file(&[("new-token", "admin ops")]));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match new.get(&id).await {
            Ok(job) => {
                assert_eq!(job.job_id, id);
                break;
            }
            Err(e) => {
                assert_eq!(code(&e), Some(tonic::Code::Unauthenticated), "{e}");
                assert!(Instant::now() < deadline, "the new token was not taken");
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = old.get(&id).await.unwrap_err();
    assert_eq!(code(&e), Some(tonic::Code::Unauthenticated), "{e}");
    tracker.stop().await;
}

/// Replaces a file the way operators and config tools do: write beside
/// it, then rename over it.
fn replace(path: &Path, text: &str) {
    let next = path.with_extension("next");
    std::fs::write(&next, text).expect("write");
    std::fs::rename(&next, path).expect("rename");
}

#[test]
fn an_https_address_without_a_ca_is_refused_naming_it() {
    let e = JobClient::new(
        vec!["https://tracker-1:7070".into()],
        ClientOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`https://tracker-1:7070`"), "{e}");
    assert!(
        e.contains("no CA certificate") && e.contains("--tls-ca"),
        "{e}"
    );

    let config = lts_tasktracker::TaskTrackerConfig::new("https://tracker-1:7070", "a");
    let e = config.validate().unwrap_err().to_string();
    assert!(
        e.contains("--jobtracker") && e.contains("no CA certificate"),
        "{e}"
    );
}
