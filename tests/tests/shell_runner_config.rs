//! The `tasktracker` binary refuses an allow-list it cannot pin down at
//! start: a relative `--allow` entry, a program that does not exist, an
//! environment entry a job may never set, an unknown `--run-as` user.

use std::process::Command;

use anyhow::Result;

/// Runs `tasktracker` with `args` (it fails before connecting anywhere);
/// returns its exit success and stderr.
fn start(args: &[&str]) -> Result<(bool, String)> {
    let out = Command::new(lts_tests::binary("tasktracker")?)
        .args(["--node-group", "g", "--jobtracker", "127.0.0.1:9"])
        .args(args)
        .env("NO_COLOR", "1")
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn bad_allow_lists_are_errors_at_start_naming_the_entry() -> Result<()> {
    for (args, expected) in [
        (
            &["--allow", "./job.sh"][..],
            "--allow: `./job.sh` is a relative path",
        ),
        (
            &["--allow", "/no/such/prog"],
            "--allow: `/no/such/prog` cannot be resolved",
        ),
        (
            &["--allow", "no-such-prog-anywhere"],
            "--allow: `no-such-prog-anywhere` was not found in PATH",
        ),
        (
            &["--allow", "echo", "--allow-env", "LD_PRELOAD"],
            "--allow-env: `LD_PRELOAD` covers `LD_*`",
        ),
        (
            &["--allow", "echo", "--run-as", "no-such-user-here"],
            "--run-as: there is no user `no-such-user-here`",
        ),
    ] {
        let (ok, stderr) = start(args)?;
        assert!(!ok, "{args:?} started");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    Ok(())
}
