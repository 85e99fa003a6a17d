//! What the `jobtracker` binary writes to a log file: plain lines, with no
//! ANSI colour codes, since the file is not a terminal.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child when the test ends, however it ends.
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the jobtracker listening on `listen` with its log in a file,
/// and returns its log once it says where it listens (bounded wait).
fn start_and_read_log(listen: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = dir.path().join("jobtracker.log");
    let file = std::fs::File::create(&log).expect("log file");
    let child = Command::new(env!("CARGO_BIN_EXE_jobtracker"))
        .args(["--listen", listen, "--data-dir"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .env_remove("JOBTRACKER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("start jobtracker");
    let _reap = Reap(child);
    // Bounded wait for the first lines: the tracker logs where it listens.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let mut text = String::new();
        std::fs::File::open(&log)
            .and_then(|mut f| f.read_to_string(&mut text))
            .expect("read log");
        if text.contains("listening") || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(text.contains("listening"), "no start line in: {text}");
    text
}

#[test]
fn a_log_file_gets_no_colour_codes() {
    let text = start_and_read_log("127.0.0.1:0");
    // On loopback, plaintext without auth is the quiet default.
    assert!(
        !text.contains("NO TLS") && !text.contains("NO AUTH"),
        "a warning on loopback: {text}"
    );
    assert!(
        !text.contains('\u{1b}'),
        "colour codes in a log file: {text:?}"
    );
}

#[test]
fn a_listener_off_loopback_without_tls_or_auth_warns_at_start() {
    // Bound to every address; the test itself sends it nothing.
    let text = start_and_read_log("0.0.0.0:0");
    let warning = |what: &str| {
        text.lines()
            .find(|l| l.contains("WARN") && l.contains(what))
            .unwrap_or_else(|| panic!("no warning about {what} in: {text}"))
            .to_string()
    };
    let tls = warning("NO TLS");
    assert!(
        tls.contains("not on loopback") && tls.contains("--tls-cert"),
        "{tls}"
    );
    let auth = warning("NO AUTH");
    assert!(auth.contains("--token-file"), "{auth}");
}
