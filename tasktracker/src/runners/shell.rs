//! Runs programs from the operator's allow-list.
//!
//! A job names the program in its payload, as JSON:
//!
//! ```json
//! {"program": "echo", "args": ["hi"], "env": {"K": "V"}, "cwd": "/tmp"}
//! ```
//!
//! Only `program` is required. When the payload is empty, the params
//! `program`, `args` (a JSON array of strings, e.g. `["-c", "1"]`) and `cwd`
//! are read instead. [`ShellJob`] (shared with the CLI, which writes it)
//! reads both forms.
//!
//! The program runs only if it is on the [`AllowList`] (`--allow`): its
//! canonical file is the file of an entry, resolved when the TaskTracker
//! started (a job's `cwd` cannot change what an entry means). There is no
//! shell: that file is executed directly with the given arguments, in its
//! own process group, stdin from `/dev/null`, and an environment of:
//! the TaskTracker's `PATH`; `HOME`, `USER` and `LOGNAME` of the user the
//! program runs as; the run's identity (`LTS_JOB_ID`, `LTS_TASK_ID`,
//! `LTS_ATTEMPT`, `LTS_NODE_GROUP`); and the job's `env`, whose every name
//! must be on the [`EnvAllowList`] (`--allow-env`, by default the locale
//! and `TZ`). Nothing else. A job setting any other variable fails,
//! naming it: `BASH_ENV`, `PYTHONPATH` and their kin would make an allowed
//! program run the job's code.
//!
//! Every line on stdout goes to the job's log at info level, every line on
//! stderr at warn level. Exit status 0 is success; another status is an
//! error (counting against the job's retry plan) naming the status and the
//! last line of stderr; death by a signal is an error naming the signal.
//! When the run is cancelled (or times out), the process group gets SIGTERM,
//! then SIGKILL after the kill grace. A job the runner refuses (a program
//! not allowed, a malformed payload) fails permanently.

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use async_trait::async_trait;
use lts_common::limits::MAX_LOG_MESSAGE_BYTES;
pub use lts_common::shell_job::ShellJob;
use lts_common::{LogLevel, Outcome};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};

use std::sync::Arc;

use super::allow::{AllowList, EnvAllowList};
use super::guard::{register_self, JobGuard, RunningJobs};
use crate::runner::{BizLogger, JobContext, JobRunner};

/// After the program exits, how long to keep reading output that is still
/// in the pipes. A background child that inherited them could hold them
/// open forever.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// Runs allow-listed programs; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct ShellRunner {
    allow: AllowList,
    allow_env: EnvAllowList,
    /// `HOME`, `USER` and `LOGNAME` of the user programs run as.
    user_env: Vec<(&'static str, String)>,
    kill_grace: Duration,
    guard: Option<Arc<JobGuard>>,
    running: Option<RunningJobs>,
    run_as: Option<RunAs>,
}

/// The user jobs run as (`--run-as`), looked up when the TaskTracker
/// starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunAs {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

impl RunAs {
    /// Looks `user` (a name, or a numeric uid) up in the user database. An
    /// unknown user is an error naming it, and so is one other than this
    /// process's own when this process cannot switch users (it does not run
    /// as root).
    pub fn lookup(user: &str) -> crate::Result<RunAs> {
        let config = |message: String| crate::Error::Config {
            field: "--run-as",
            message,
        };
        let found = match user.parse::<u32>() {
            Ok(uid) => nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
            Err(_) => nix::unistd::User::from_name(user),
        }
        .map_err(|e| config(format!("cannot look `{user}` up: {e}")))?
        .ok_or_else(|| config(format!("there is no user `{user}` on this host")))?;
        let me = nix::unistd::geteuid();
        if !me.is_root() && found.uid != me {
            return Err(config(format!(
                "running jobs as `{user}` needs this TaskTracker to run as root; it runs as uid {me}"
            )));
        }
        Ok(RunAs {
            name: found.name,
            uid: found.uid.as_raw(),
            gid: found.gid.as_raw(),
            home: found.dir.display().to_string(),
        })
    }

    /// The user's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The user's id and primary group id.
    pub fn ids(&self) -> (u32, u32) {
        (self.uid, self.gid)
    }
}

impl ShellRunner {
    /// A runner for the programs in `allow`. With an empty list every job
    /// is refused.
    /// Jobs may set the variables of [`EnvAllowList::default`].
    pub fn new(allow: AllowList) -> ShellRunner {
        ShellRunner {
            allow,
            allow_env: EnvAllowList::default(),
            user_env: user_env(nix::unistd::getuid()),
            kill_grace: Duration::from_secs(1),
            guard: None,
            running: None,
            run_as: None,
        }
    }

    /// Programs run as `user`: its uid and primary group, no supplementary
    /// groups, its `HOME`; the job's `cwd` is entered as that user.
    pub fn with_run_as(mut self, user: RunAs) -> ShellRunner {
        self.user_env = vec![
            ("HOME", user.home.clone()),
            ("USER", user.name.clone()),
            ("LOGNAME", user.name.clone()),
        ];
        self.run_as = Some(user);
        self
    }

    /// Each job's process group is listed with `guard` before its program
    /// starts, so it is killed when this process ends, however it ends.
    pub fn with_job_guard(mut self, guard: Arc<JobGuard>) -> ShellRunner {
        self.guard = Some(guard);
        self
    }

    /// A file per running job in `running`, so that a TaskTracker starting
    /// after this one can tell whether jobs of this one still run.
    pub fn with_running_jobs(mut self, running: RunningJobs) -> ShellRunner {
        self.running = Some(running);
        self
    }

    /// The variables a job's `env` may set (`--allow-env`); a job setting
    /// another one fails, naming it.
    pub fn with_allowed_env(mut self, allow_env: EnvAllowList) -> ShellRunner {
        self.allow_env = allow_env;
        self
    }

    /// The environment allow-list.
    pub fn allowed_env(&self) -> &EnvAllowList {
        &self.allow_env
    }

    /// Time between SIGTERM and SIGKILL when a run is cancelled; default
    /// 1 s. Keep it below the TaskTracker's
    /// [`cancel_grace`](crate::TaskTrackerConfig::cancel_grace), which aborts
    /// the run (and SIGKILLs the group) when it passes.
    pub fn with_kill_grace(mut self, kill_grace: Duration) -> ShellRunner {
        self.kill_grace = kill_grace;
        self
    }

    /// The allow-list.
    pub fn allow_list(&self) -> &AllowList {
        &self.allow
    }
}

#[async_trait]
impl JobRunner for ShellRunner {
    async fn run(&self, ctx: JobContext) -> Outcome {
        let shell_job = match ShellJob::from_job(&ctx.job) {
            Ok(j) => j,
            Err(why) => return Outcome::Failed(why),
        };
        let file = match self
            .allow
            .permit(&shell_job.program, shell_job.cwd.as_deref())
        {
            Ok(file) => file,
            Err(why) => return Outcome::Failed(why),
        };
        if let Err(why) = self.allow_env.check(shell_job.env.keys()) {
            return Outcome::Failed(why);
        }
        let mut command = tokio::process::Command::new(&file);
        command
            .args(&shell_job.args)
            .env_clear()
            .envs(self.user_env.iter().map(|(k, v)| (k, v)))
            .envs(&shell_job.env)
            .env("PATH", self.allow.search_path())
            // Who the program runs for, so it can be idempotent per job.
            .env("LTS_JOB_ID", &ctx.job.job_id)
            .env("LTS_TASK_ID", &ctx.job.spec.task_id)
            .env("LTS_ATTEMPT", ctx.attempt.to_string())
            .env("LTS_NODE_GROUP", &ctx.job.spec.task_tracker_node_group)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so cancelling reaches the children it forks.
            .process_group(0)
            .kill_on_drop(true);
        if let Some(cwd) = &shell_job.cwd {
            command.current_dir(cwd);
        }
        if let Some(user) = &self.run_as {
            // Switched between fork and exec, before the `cwd` is entered;
            // the supplementary groups are dropped with the switch.
            command.gid(user.gid).uid(user.uid);
        }
        if let Some(guard) = &self.guard {
            let fd = guard.fd();
            // SAFETY: `register_self` is async-signal-safe, as code between
            // fork and exec must be.
            #[allow(unsafe_code)]
            unsafe {
                command.pre_exec(move || {
                    register_self(fd);
                    Ok(())
                });
            }
        }
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                let why = match &shell_job.cwd {
                    Some(cwd) => format!(
                        "cannot start `{}` in `{}`: {e}",
                        file.display(),
                        cwd.display()
                    ),
                    None => format!("cannot start `{}`: {e}", file.display()),
                };
                return match e.kind() {
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                        Outcome::Failed(why)
                    }
                    _ => Outcome::Error(why),
                };
            }
        };
        let group = GroupGuard {
            pgid: child.id().map(|id| Pid::from_raw(id as i32)),
            guard: self.guard.clone(),
            running: self.running.clone(),
        };
        if let (Some(running), Some(pgid)) = (&self.running, group.pgid) {
            running.add(
                pgid.as_raw(),
                &format!("{} {} {}", ctx.job.job_id, ctx.attempt, file.display()),
            );
        }
        let mut stdout = LinePump::new(child.stdout.take(), LogLevel::Info);
        let mut stderr = LinePump::new(child.stderr.take(), LogLevel::Warn);
        let log = &ctx.log;
        let mut cancelled = false;
        let status = loop {
            tokio::select! {
                _ = stdout.pump(log), if stdout.open() => {}
                _ = stderr.pump(log), if stderr.open() => {}
                status = child.wait() => break status,
                _ = ctx.cancel.cancelled(), if !cancelled => {
                    cancelled = true;
                    group.signal(Signal::SIGTERM);
                    break stop(&mut child, &group, self.kill_grace, &mut stdout, &mut stderr, log).await;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_AFTER_EXIT, async {
            while stdout.open() || stderr.open() {
                tokio::select! {
                    _ = stdout.pump(log), if stdout.open() => {}
                    _ = stderr.pump(log), if stderr.open() => {}
                }
            }
        })
        .await;
        stdout.flush(log);
        stderr.flush(log);
        drop(group);
        let status = match status {
            Ok(status) => status,
            Err(e) => return Outcome::Error(format!("cannot wait for `{}`: {e}", file.display())),
        };
        if cancelled {
            return Outcome::Error(format!(
                "cancelled; `{}` was stopped ({})",
                shell_job.program,
                describe(status)
            ));
        }
        if status.success() {
            return Outcome::Success("exit status 0".into());
        }
        let mut why = describe(status);
        if let Some(line) = stderr.last_line.take() {
            why.push_str(": ");
            why.push_str(&line);
        }
        Outcome::Error(why)
    }
}

/// `HOME`, `USER` and `LOGNAME` of the user `uid`, from the user database;
/// none when it has no entry there.
fn user_env(uid: nix::unistd::Uid) -> Vec<(&'static str, String)> {
    match nix::unistd::User::from_uid(uid) {
        Ok(Some(user)) => vec![
            ("HOME", user.dir.display().to_string()),
            ("USER", user.name.clone()),
            ("LOGNAME", user.name),
        ],
        _ => Vec::new(),
    }
}

/// After SIGTERM: waits up to `grace` for the program, then SIGKILLs its
/// group. Output keeps flowing meanwhile so a full pipe cannot block it.
async fn stop(
    child: &mut tokio::process::Child,
    group: &GroupGuard,
    grace: Duration,
    stdout: &mut LinePump,
    stderr: &mut LinePump,
    log: &BizLogger,
) -> std::io::Result<ExitStatus> {
    let deadline = tokio::time::sleep(grace);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = stdout.pump(log), if stdout.open() => {}
            _ = stderr.pump(log), if stderr.open() => {}
            status = child.wait() => return status,
            _ = &mut deadline => {
                group.signal(Signal::SIGKILL);
                return child.wait().await;
            }
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    match status.signal() {
        Some(sig) => match Signal::try_from(sig) {
            Ok(signal) => format!("killed by signal {}", signal.as_str()),
            Err(_) => format!("killed by signal {sig}"),
        },
        None => format!("ended with {status}"),
    }
}

/// SIGKILLs whatever is left of the process group when the run ends, even
/// by abort: background children would otherwise outlive the job and hold
/// its pipes open.
struct GroupGuard {
    pgid: Option<Pid>,
    guard: Option<Arc<JobGuard>>,
    running: Option<RunningJobs>,
}

impl GroupGuard {
    fn signal(&self, signal: Signal) {
        if let Some(pgid) = self.pgid {
            // ESRCH: the group is gone already, which is what we want.
            let _ = killpg(pgid, signal);
        }
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
        if let Some(pgid) = self.pgid {
            if let Some(guard) = &self.guard {
                guard.forget(pgid);
            }
            if let Some(running) = &self.running {
                running.remove(pgid.as_raw());
            }
        }
    }
}

/// Cuts a pipe into log lines of at most the log message limit, whatever
/// the program writes (no newline, invalid UTF-8).
struct LinePump {
    pipe: Option<Box<dyn AsyncRead + Send + Unpin>>,
    level: LogLevel,
    line: Vec<u8>,
    chunk: Box<[u8]>,
    last_line: Option<String>,
}

impl LinePump {
    fn new<R: AsyncRead + Send + Unpin + 'static>(pipe: Option<R>, level: LogLevel) -> Self {
        LinePump {
            pipe: pipe.map(|p| Box::new(p) as Box<dyn AsyncRead + Send + Unpin>),
            level,
            line: Vec::new(),
            chunk: vec![0; 8192].into_boxed_slice(),
            last_line: None,
        }
    }

    fn open(&self) -> bool {
        self.pipe.is_some()
    }

    /// Reads once and logs the complete lines. Cancel safe: `read` takes no
    /// data when it does not complete.
    async fn pump(&mut self, log: &BizLogger) {
        let Some(pipe) = self.pipe.as_mut() else {
            return std::future::pending().await;
        };
        match pipe.read(&mut self.chunk).await {
            Ok(0) | Err(_) => {
                self.pipe = None;
                self.flush(log);
            }
            Ok(n) => {
                let mut rest = &self.chunk[..n];
                while let Some(end) = rest.iter().position(|&b| b == b'\n') {
                    self.line.extend_from_slice(&rest[..end]);
                    emit(&mut self.line, self.level, &mut self.last_line, log);
                    rest = &rest[end + 1..];
                }
                self.line.extend_from_slice(rest);
                if self.line.len() >= MAX_LOG_MESSAGE_BYTES {
                    emit(&mut self.line, self.level, &mut self.last_line, log);
                }
            }
        }
    }

    /// Logs a last line that had no newline.
    fn flush(&mut self, log: &BizLogger) {
        if !self.line.is_empty() {
            emit(&mut self.line, self.level, &mut self.last_line, log);
        }
    }
}

/// Logs `line` and empties it; stderr lines are remembered for the outcome.
fn emit(line: &mut Vec<u8>, level: LogLevel, last_line: &mut Option<String>, log: &BizLogger) {
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    let text = String::from_utf8_lossy(line).into_owned();
    line.clear();
    if level == LogLevel::Warn {
        *last_line = Some(text.clone());
    }
    log.log(level, text);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::job;
    use lts_common::Job;

    fn shell_job(payload: serde_json::Value) -> Job {
        let mut job = job(0);
        job.spec.payload = serde_json::to_vec(&payload).unwrap();
        job
    }

    fn runner(allow: &[&str]) -> ShellRunner {
        ShellRunner::new(AllowList::new(allow.iter().copied()).unwrap())
            .with_kill_grace(Duration::from_millis(300))
    }

    async fn run(runner: &ShellRunner, job: Job) -> (Outcome, Vec<(LogLevel, String)>) {
        let (ctx, mut logs) = JobContext::standalone(job, 1);
        let outcome = runner.run(ctx).await;
        (outcome, logs.lines())
    }

    #[tokio::test]
    async fn programs_off_the_allow_list_fail_permanently() {
        let (outcome, _) = run(
            &runner(&["echo"]),
            shell_job(serde_json::json!({"program": "true"})),
        )
        .await;
        match outcome {
            Outcome::Failed(m) => {
                assert!(
                    m.contains("program `true` is not on this TaskTracker's allow-list (--allow)"),
                    "{m}"
                );
                assert!(m.contains("allowed: echo"), "{m}");
            }
            other => panic!("expected failed, got {other:?}"),
        }
        let (outcome, _) = run(
            &runner(&[]),
            shell_job(serde_json::json!({"program": "echo"})),
        )
        .await;
        assert!(
            matches!(&outcome, Outcome::Failed(m) if m.contains("allowed: none")),
            "{outcome:?}"
        );
    }

    #[tokio::test]
    async fn a_path_to_an_allowed_file_is_allowed() {
        let echo =
            crate::runners::allow::resolve("echo", None, &std::env::var("PATH").unwrap()).unwrap();
        let job = shell_job(serde_json::json!({"program": echo, "args": ["by path"]}));
        let (outcome, logs) = run(&runner(&["echo"]), job).await;
        assert_eq!(outcome, Outcome::Success("exit status 0".into()));
        assert_eq!(logs, vec![(LogLevel::Info, "by path".to_string())]);
    }

    #[tokio::test]
    async fn stdout_and_stderr_lines_reach_the_log() {
        let script = "echo one; echo two; echo oops >&2; printf tail";
        let job = shell_job(serde_json::json!({"program": "sh", "args": ["-c", script]}));
        let (outcome, logs) = run(&runner(&["sh"]), job).await;
        assert_eq!(outcome, Outcome::Success("exit status 0".into()));
        let info: Vec<_> = logs
            .iter()
            .filter(|(l, _)| *l == LogLevel::Info)
            .map(|(_, m)| m.as_str())
            .collect();
        assert_eq!(info, vec!["one", "two", "tail"]);
        assert!(
            logs.contains(&(LogLevel::Warn, "oops".to_string())),
            "{logs:?}"
        );
    }

    #[tokio::test]
    async fn env_is_the_allowed_job_env_plus_path_user_and_the_run_identity_only() {
        let job = shell_job(serde_json::json!({"program": "env", "env": {"K": "V", "LANG": "C"}}));
        let runner = runner(&["env"]).with_allowed_env(EnvAllowList::new(["K", "LANG"]).unwrap());
        let (outcome, logs) = run(&runner, job).await;
        assert_eq!(outcome, Outcome::Success("exit status 0".into()));
        let mut names: Vec<_> = logs
            .iter()
            .map(|(_, m)| m.split('=').next().unwrap().to_string())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                "HOME",
                "K",
                "LANG",
                "LOGNAME",
                "LTS_ATTEMPT",
                "LTS_JOB_ID",
                "LTS_NODE_GROUP",
                "LTS_TASK_ID",
                "PATH",
                "USER"
            ],
            "{logs:?}"
        );
        assert!(logs.iter().any(|(_, m)| m == "LTS_ATTEMPT=1"), "{logs:?}");
        assert!(logs.iter().any(|(_, m)| m == "K=V"), "{logs:?}");
    }

    /// A directory with an allowed program and the attacker's files, and a
    /// marker the attacker's code would create.
    struct Attack {
        dir: tempfile::TempDir,
    }

    impl Attack {
        fn new() -> Attack {
            Attack {
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn file(&self, name: &str, text: &str, mode: u32) -> String {
            use std::os::unix::fs::PermissionsExt;
            let path = self.dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            std::fs::write(&path, text).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            path.display().to_string()
        }

        fn marker(&self) -> std::path::PathBuf {
            self.dir.path().join("attacker-code-ran")
        }

        /// Runs `program`, allowed, with the job's `env`; checks the job is
        /// refused naming `refused`, and that no attacker code ran.
        async fn assert_refused(&self, program: &str, env: serde_json::Value, refused: &[&str]) {
            let job = shell_job(serde_json::json!({"program": program, "env": env}));
            let (outcome, _) = run(&runner(&[program]), job).await;
            match &outcome {
                Outcome::Failed(m) => {
                    for name in refused {
                        assert!(m.contains(name), "{m}");
                    }
                    assert!(m.contains("--allow-env"), "{m}");
                }
                other => panic!("expected failed, got {other:?}"),
            }
            assert!(
                !self.marker().exists(),
                "the attacker's code ran through {refused:?}"
            );
        }
    }

    fn python3() -> String {
        let path = std::env::var("PATH").unwrap();
        crate::runners::allow::resolve("python3", None, &path)
            .expect("python3 is needed by this test")
            .display()
            .to_string()
    }

    #[tokio::test]
    async fn bash_env_cannot_run_the_jobs_code_in_an_allowed_script() {
        let attack = Attack::new();
        let script = attack.file("job.sh", "#!/bin/bash\necho job\n", 0o755);
        let evil = attack.file(
            "evil.sh",
            &format!("touch '{}'\n", attack.marker().display()),
            0o644,
        );
        attack
            .assert_refused(
                &script,
                serde_json::json!({"BASH_ENV": evil}),
                &["BASH_ENV"],
            )
            .await;
    }

    #[tokio::test]
    async fn pythonpath_cannot_run_the_jobs_code_in_an_allowed_python_program() {
        let attack = Attack::new();
        let program = attack.file(
            "job.py",
            &format!("#!{}\nimport json\nprint('job')\n", python3()),
            0o755,
        );
        attack.file(
            "lib/json.py",
            &format!("open('{}', 'w')\n", attack.marker().display()),
            0o644,
        );
        let lib = attack.dir.path().join("lib").display().to_string();
        attack
            .assert_refused(
                &program,
                serde_json::json!({"PYTHONPATH": lib}),
                &["PYTHONPATH"],
            )
            .await;
    }

    #[tokio::test]
    async fn pythonwarnings_and_browser_cannot_run_a_command() {
        // No file of the attacker's on the host: a warning filter naming a
        // module imports it, and `antigravity` opens BROWSER.
        let attack = Attack::new();
        let program = attack.file("job.py", &format!("#!{}\nprint('job')\n", python3()), 0o755);
        let env = serde_json::json!({
            "PYTHONWARNINGS": "all:0:antigravity.x:0:0",
            "BROWSER": format!("touch {} %s", attack.marker().display()),
        });
        attack
            .assert_refused(&program, env, &["PYTHONWARNINGS", "BROWSER"])
            .await;
    }

    #[tokio::test]
    async fn an_operator_may_allow_a_variable_and_the_job_gets_it() {
        let job = shell_job(serde_json::json!({
            "program": "sh",
            "args": ["-c", "echo \"$GREETING $APP_MODE\""],
            "env": {"GREETING": "hi", "APP_MODE": "fast"},
        }));
        let runner =
            runner(&["sh"]).with_allowed_env(EnvAllowList::new(["GREETING", "APP_*"]).unwrap());
        let (outcome, logs) = run(&runner, job).await;
        assert_eq!(outcome, Outcome::Success("exit status 0".into()));
        assert_eq!(logs, vec![(LogLevel::Info, "hi fast".to_string())]);
    }

    #[tokio::test]
    async fn run_as_switches_user_and_group_drops_the_others_and_sets_home() {
        if !nix::unistd::geteuid().is_root() {
            // Only root may switch: another user is refused naming the flag.
            let e = RunAs::lookup("nobody").unwrap_err().to_string();
            assert!(e.starts_with("--run-as:") && e.contains("root"), "{e}");
            return;
        }
        let nobody = RunAs::lookup("nobody").unwrap();
        let (uid, gid) = nobody.ids();
        let script = "echo \"$(id -u) $(id -g) $(id -G) $HOME $USER\"";
        let job = shell_job(serde_json::json!({"program": "sh", "args": ["-c", script]}));
        let runner = runner(&["sh"]).with_run_as(nobody.clone());
        let (outcome, logs) = run(&runner, job).await;
        assert_eq!(
            outcome,
            Outcome::Success("exit status 0".into()),
            "{logs:?}"
        );
        let home = nix::unistd::User::from_name("nobody")
            .unwrap()
            .unwrap()
            .dir
            .display()
            .to_string();
        assert_eq!(
            logs,
            vec![(LogLevel::Info, format!("{uid} {gid} {gid} {home} nobody"))]
        );

        // The job's cwd is entered as that user: a directory only root may
        // enter is refused.
        let private = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let job = shell_job(
            serde_json::json!({"program": "sh", "args": ["-c", "pwd"], "cwd": private.path()}),
        );
        let (outcome, logs) = run(&runner, job).await;
        assert!(
            matches!(&outcome, Outcome::Failed(m) if m.contains("Permission denied")),
            "{outcome:?} {logs:?}"
        );
    }

    #[test]
    fn run_as_an_unknown_user_is_an_error_naming_it() {
        let e = RunAs::lookup("no-such-user-here").unwrap_err().to_string();
        assert!(e.starts_with("--run-as:"), "{e}");
        assert!(e.contains("no user `no-such-user-here`"), "{e}");
        let me = nix::unistd::geteuid();
        let own = RunAs::lookup(&me.to_string()).unwrap();
        assert_eq!(own.ids().0, me.as_raw());
    }

    #[tokio::test]
    async fn a_non_zero_exit_is_an_error_with_the_last_stderr_line() {
        let job = shell_job(
            serde_json::json!({"program": "sh", "args": ["-c", "echo first >&2; echo disk full >&2; exit 3"]}),
        );
        let (outcome, _) = run(&runner(&["sh"]), job).await;
        assert_eq!(outcome, Outcome::Error("exit status 3: disk full".into()));
    }

    #[tokio::test]
    async fn death_by_signal_names_the_signal() {
        let job = shell_job(serde_json::json!({"program": "sh", "args": ["-c", "kill -9 $$"]}));
        let (outcome, _) = run(&runner(&["sh"]), job).await;
        assert_eq!(outcome, Outcome::Error("killed by signal SIGKILL".into()));
    }

    /// Whether process `pid` is gone: no such process, or a zombie
    /// waiting to be reaped (it runs no more code).
    fn process_is_gone(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            // The state follows the command name in parentheses.
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
            Err(_) => true,
        }
    }

    /// Waits until `pid` is gone; false if it is still there at the end of
    /// a generous bound (a failure, not a measure of speed).
    async fn wait_until_gone(pid: i32) -> bool {
        tokio::time::timeout(Duration::from_secs(30), async {
            while !process_is_gone(pid) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_ok()
    }

    /// Reads log lines until one is a pid, and returns it.
    async fn logged_pid(logs: &mut crate::runner::CapturedLogs) -> i32 {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let (_, line) = logs.next().await.expect("a log line");
                if let Ok(pid) = line.trim().parse::<i32>() {
                    return pid;
                }
            }
        })
        .await
        .expect("the script logs a pid")
    }

    #[tokio::test]
    async fn cancelling_terminates_the_whole_group() {
        // The child ignores SIGTERM, so it takes the SIGKILL; the background
        // grandchild, whose pid it logs, must die with it.
        let script = "trap '' TERM; sleep 300 & echo $!; wait";
        let job = shell_job(serde_json::json!({"program": "sh", "args": ["-c", script]}));
        let (ctx, mut logs) = JobContext::standalone(job, 1);
        let cancel = ctx.cancel.clone();
        let r = runner(&["sh"]);
        let run = tokio::spawn(async move { r.run(ctx).await });
        // The program is running once it logged its grandchild's pid.
        let grandchild = logged_pid(&mut logs).await;
        assert!(!process_is_gone(grandchild), "the grandchild runs");
        cancel.cancel();
        let outcome = run.await.unwrap();
        assert!(
            matches!(&outcome, Outcome::Error(m) if m.starts_with("cancelled") && m.contains("SIGKILL")),
            "{outcome:?}"
        );
        assert!(
            wait_until_gone(grandchild).await,
            "the background grandchild {grandchild} outlived the cancelled run"
        );
    }

    #[tokio::test]
    async fn a_timeout_kills_the_program() {
        // The shell becomes `sleep` (same pid), so the logged pid is the
        // program's.
        let mut job = shell_job(
            serde_json::json!({"program": "sh", "args": ["-c", "echo $$; exec sleep 300"]}),
        );
        job.spec.timeout_ms = 200;
        let (ctx, mut logs) = JobContext::standalone(job, 1);
        let runner = std::sync::Arc::new(runner(&["sh"]));
        let run = tokio::spawn(crate::execute::execute(runner, ctx, Duration::from_secs(2)));
        let program = logged_pid(&mut logs).await;
        let outcome = run.await.unwrap();
        assert_eq!(outcome, Outcome::Error("timed out after 200 ms".into()));
        assert!(
            wait_until_gone(program).await,
            "the program {program} outlived its timed-out run"
        );
    }

    #[tokio::test]
    async fn malformed_payloads_fail_naming_the_problem() {
        let mut bad = job(0);
        bad.spec.payload = b"{\"program\": 3}".to_vec();
        let (outcome, _) = run(&runner(&["echo"]), bad).await;
        assert!(
            matches!(&outcome, Outcome::Failed(m) if m.contains("payload is not a shell job")),
            "{outcome:?}"
        );

        let (outcome, _) = run(
            &runner(&["echo"]),
            shell_job(serde_json::json!({"program": "echo", "shell": true})),
        )
        .await;
        assert!(
            matches!(&outcome, Outcome::Failed(m) if m.contains("unknown field `shell`")),
            "{outcome:?}"
        );

        let job =
            shell_job(serde_json::json!({"program": "echo", "env": {"LD_PRELOAD": "/tmp/x.so"}}));
        let (outcome, _) = run(&runner(&["echo"]), job).await;
        assert!(
            matches!(&outcome, Outcome::Failed(m) if m.contains("env.LD_PRELOAD")),
            "{outcome:?}"
        );

        let (outcome, _) = run(&runner(&["echo"]), job_with_params(&[])).await;
        assert!(
            matches!(&outcome, Outcome::Failed(m) if m.contains("names no program")),
            "{outcome:?}"
        );

        let job = job_with_params(&[("program", "echo"), ("args", "not json")]);
        let (outcome, _) = run(&runner(&["echo"]), job).await;
        assert!(
            matches!(&outcome, Outcome::Failed(m) if m.contains("param `args`")),
            "{outcome:?}"
        );
    }

    fn job_with_params(params: &[(&str, &str)]) -> Job {
        let mut job = job(0);
        for (k, v) in params {
            job.spec.params.insert(k.to_string(), v.to_string());
        }
        job
    }

    #[tokio::test]
    async fn params_work_when_the_payload_is_empty() {
        let job = job_with_params(&[("program", "echo"), ("args", "[\"a b\", \"c\"]")]);
        let (outcome, logs) = run(&runner(&["echo"]), job).await;
        assert_eq!(outcome, Outcome::Success("exit status 0".into()));
        assert_eq!(logs, vec![(LogLevel::Info, "a b c".to_string())]);
    }
}
