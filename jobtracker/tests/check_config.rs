//! `jobtracker --check-config`: every effective setting, with where it came
//! from, as an operator checks a deployment before starting it.

use std::process::Command;

fn line_of<'a>(out: &'a str, flag: &str) -> &'a str {
    out.lines()
        .find(|l| l.trim_start().starts_with(&format!("{flag} ")))
        .unwrap_or_else(|| panic!("{flag} not printed:\n{out}"))
}

#[test]
fn check_config_prints_every_setting_and_its_source() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("jobtracker.toml");
    std::fs::write(&file, "log_retention = \"2d\"\n").expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_jobtracker"))
        .args(["--check-config", "--listen", "127.0.0.1:7171", "--config"])
        .arg(&file)
        .args(["--mongodb", "mongodb://app:s3cret@127.0.0.1:27017/"])
        .env("JOBTRACKER_HEARTBEAT_INTERVAL", "3s")
        .env("JOBTRACKER_MAX_BYTES_PER_NODE_GROUP", "2GiB")
        .env_remove("JOBTRACKER_MAX_JOBS_PER_NODE_GROUP")
        .env_remove("JOBTRACKER_LISTEN")
        .env_remove("JOBTRACKER_SHUTDOWN_TIMEOUT")
        .env_remove("JOBTRACKER_CONFIG")
        .output()
        .expect("run jobtracker");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let listen = line_of(&text, "--listen");
    assert!(
        listen.contains("127.0.0.1:7171") && listen.ends_with("(command line)"),
        "{listen}"
    );
    let heartbeat = line_of(&text, "--heartbeat-interval");
    assert!(
        heartbeat.contains("3s") && heartbeat.ends_with("(env JOBTRACKER_HEARTBEAT_INTERVAL)"),
        "{heartbeat}"
    );
    let retention = line_of(&text, "--log-retention");
    assert!(
        retention.contains("2d")
            && retention.ends_with(&format!(
                "(config file {} key `log_retention`)",
                file.display()
            )),
        "{retention}"
    );
    let shutdown = line_of(&text, "--shutdown-timeout");
    assert!(
        shutdown.contains("10s") && shutdown.ends_with("(default)"),
        "{shutdown}"
    );
    let bytes = line_of(&text, "--max-bytes-per-node-group");
    assert!(
        bytes.contains("2GiB") && bytes.ends_with("(env JOBTRACKER_MAX_BYTES_PER_NODE_GROUP)"),
        "{bytes}"
    );
    let jobs = line_of(&text, "--max-jobs-per-node-group");
    assert!(
        jobs.contains("10000000") && jobs.ends_with("(default)"),
        "{jobs}"
    );
    for flag in [
        "--metrics-addr",
        "--log-format",
        "--data-dir",
        "--zookeeper",
    ] {
        line_of(&text, flag);
    }
    assert!(!text.contains("s3cret"), "a password printed:\n{text}");
}
