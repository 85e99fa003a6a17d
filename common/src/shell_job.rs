//! [`ShellJob`]: what a job for the TaskTracker's built-in shell runner
//! asks to run. The CLI writes it (`jobclient submit --shell`), the runner
//! reads it, so both use this one type.
//!
//! It travels as the job's payload, in JSON:
//!
//! ```json
//! {"program": "echo", "args": ["hi"], "env": {"K": "V"}, "cwd": "/tmp"}
//! ```
//!
//! Only `program` is required; unknown fields are refused. When the payload
//! is empty, the params `program`, `args` (a JSON array of strings, e.g.
//! `["-c", "1"]`) and `cwd` are read instead.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Job;

/// What a shell job asks to run; the JSON payload of the job.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellJob {
    /// A program name looked up in the TaskTracker's PATH, or a path.
    pub program: String,
    /// Arguments, passed as they are (no shell, no globbing).
    #[serde(default)]
    pub args: Vec<String>,
    /// Variables for the program. A TaskTracker passes only the names on its
    /// environment allow-list (`--allow-env`) and refuses a job setting any
    /// other; it sets `PATH`, `HOME`, `USER`, `LOGNAME` and `LTS_*` itself.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory; the TaskTracker's own when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
}

impl ShellJob {
    /// A job running `program` with `args`, no environment of its own, in
    /// the TaskTracker's working directory.
    pub fn new(program: impl Into<String>, args: Vec<String>) -> ShellJob {
        ShellJob {
            program: program.into(),
            args,
            ..ShellJob::default()
        }
    }

    /// Reads the shell job out of a job's payload, or out of its params when
    /// the payload is empty, and [checks](Self::validate) it. The error says
    /// what is wrong.
    pub fn from_job(job: &Job) -> Result<ShellJob, String> {
        let shell_job = if job.spec.payload.is_empty() {
            Self::from_params(&job.spec.params)?
        } else {
            Self::from_payload(&job.spec.payload)?
        };
        shell_job.validate()?;
        Ok(shell_job)
    }

    /// Reads a JSON payload, without [checking](Self::validate) it.
    pub fn from_payload(payload: &[u8]) -> Result<ShellJob, String> {
        serde_json::from_slice::<ShellJob>(payload).map_err(|e| {
            format!(
                "the payload is not a shell job ({e}); expected JSON like \
                 {{\"program\": \"echo\", \"args\": [\"hi\"], \"env\": {{}}, \"cwd\": \"/tmp\"}}"
            )
        })
    }

    /// The JSON payload of this job. Fails only for a `cwd` that is not
    /// UTF-8, which JSON cannot carry.
    pub fn to_payload(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(self).map_err(|e| format!("cannot write the shell job as JSON: {e}"))
    }

    fn from_params(params: &BTreeMap<String, String>) -> Result<ShellJob, String> {
        let program = params.get("program").cloned().ok_or_else(|| {
            "the job names no program: give a JSON payload {\"program\": ...} \
             or a `program` param"
                .to_string()
        })?;
        let args = match params.get("args") {
            None => Vec::new(),
            Some(text) => serde_json::from_str::<Vec<String>>(text).map_err(|e| {
                format!("param `args` is not a JSON array of strings ({e}): {text}")
            })?,
        };
        Ok(ShellJob {
            program,
            args,
            env: BTreeMap::new(),
            cwd: params.get("cwd").map(PathBuf::from),
        })
    }

    /// Checks what the runner refuses whatever its allow-list: an empty
    /// program, NUL bytes, and environment variables that would change
    /// which code runs (`PATH`, `LD_*`, `DYLD_*`) or what the program is
    /// told about its run (`LTS_*`).
    pub fn validate(&self) -> Result<(), String> {
        if self.program.trim().is_empty() {
            return Err("`program` is empty".into());
        }
        if self.program.contains('\0') || self.args.iter().any(|a| a.contains('\0')) {
            return Err("`program` or `args` holds a NUL byte".into());
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(format!("`env` has an invalid name {key:?}"));
            }
            if key == "PATH"
                || key.starts_with("LD_")
                || key.starts_with("DYLD_")
                || key.starts_with("LTS_")
            {
                return Err(format!(
                    "`env.{key}` may not be set by a job: it would change which program runs"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::JobSpec;

    fn job(payload: &[u8], params: &[(&str, &str)]) -> Job {
        let mut spec = JobSpec::new("t-1", "workers");
        spec.payload = payload.to_vec();
        for (k, v) in params {
            spec.params.insert(k.to_string(), v.to_string());
        }
        Job {
            job_id: "j-1".into(),
            spec,
            state: crate::JobState::Running,
            attempt: 1,
            seq: 0,
            submitted_at_ms: 0,
            trigger_at_ms: 0,
            updated_at_ms: 0,
            worker: String::new(),
            last_outcome: None,
            failures: 0,
            cycles: 0,
        }
    }

    #[test]
    fn the_payload_format_round_trips() {
        let mut shell = ShellJob::new("sh", vec!["-c".into(), "exit 3".into()]);
        shell.env.insert("A".into(), "1".into());
        let payload: serde_json::Value =
            serde_json::from_slice(&shell.to_payload().unwrap()).unwrap();
        // No `cwd` key when there is none: what older CLIs wrote.
        assert_eq!(
            payload,
            serde_json::json!({"program": "sh", "args": ["-c", "exit 3"], "env": {"A": "1"}})
        );
        shell.cwd = Some("/tmp".into());
        let read = ShellJob::from_job(&job(&shell.to_payload().unwrap(), &[])).unwrap();
        assert_eq!(read, shell);
        let minimal = ShellJob::from_job(&job(br#"{"program": "true"}"#, &[])).unwrap();
        assert_eq!(minimal, ShellJob::new("true", vec![]));
        let null_cwd = ShellJob::from_job(&job(br#"{"program": "true", "cwd": null}"#, &[]));
        assert_eq!(null_cwd, Ok(ShellJob::new("true", vec![])));
    }

    #[test]
    fn params_are_read_when_the_payload_is_empty() {
        let shell = ShellJob::from_job(&job(
            b"",
            &[
                ("program", "echo"),
                ("args", "[\"a b\", \"c\"]"),
                ("cwd", "/srv"),
            ],
        ))
        .unwrap();
        assert_eq!(shell.program, "echo");
        assert_eq!(shell.args, ["a b", "c"]);
        assert_eq!(shell.cwd, Some(PathBuf::from("/srv")));
    }

    #[test]
    fn bad_jobs_are_refused_naming_the_problem() {
        for (payload, params, expected) in [
            (
                &br#"{"program": 3}"#[..],
                &[][..],
                "payload is not a shell job",
            ),
            (
                br#"{"program": "echo", "shell": true}"#,
                &[],
                "unknown field `shell`",
            ),
            (br#"{"program": " "}"#, &[], "`program` is empty"),
            (
                br#"{"program": "echo", "env": {"LD_PRELOAD": "/x.so"}}"#,
                &[],
                "env.LD_PRELOAD",
            ),
            (
                br#"{"program": "echo", "env": {"LTS_JOB_ID": "x"}}"#,
                &[],
                "env.LTS_JOB_ID",
            ),
            (
                br#"{"program": "echo", "env": {"PATH": "/x"}}"#,
                &[],
                "env.PATH",
            ),
            (
                br#"{"program": "echo", "env": {"A=B": "x"}}"#,
                &[],
                "invalid name",
            ),
            (b"", &[], "names no program"),
            (
                b"",
                &[("program", "echo"), ("args", "not json")],
                "param `args`",
            ),
        ] {
            let e = ShellJob::from_job(&job(payload, params)).unwrap_err();
            assert!(e.contains(expected), "{e}");
        }
    }
}
