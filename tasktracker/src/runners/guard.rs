//! Job processes that die with their TaskTracker.
//!
//! A TaskTracker killed with `kill -9` (or by the OOM killer, or a crash)
//! runs no code as it goes, and its jobs would keep running beside the new
//! attempts the JobTracker hands to other TaskTrackers: a job that is not
//! idempotent would then run twice at the same time. Two pieces prevent
//! and report that:
//!
//! - [`JobGuard`]: a small process forked when the TaskTracker starts,
//!   before it has threads. Each job's process, between its fork and its
//!   exec, writes its pid (which is its process group: every job has a
//!   group of its own) to a pipe the guard reads; the runner writes again
//!   when the run has ended and the group is gone. Only the TaskTracker
//!   holds the pipe's write end, so when the TaskTracker's process ends,
//!   however it ends, the guard reads end-of-file and SIGKILLs every group
//!   still listed, then exits. A group is listed before its program runs a
//!   single instruction, so there is no window in which a job escapes.
//!
//!   Why not `PR_SET_PDEATHSIG` on each job: it fires when the *thread*
//!   that forked the job ends, not the process, and a runtime's threads
//!   come and go; and it would reach only the job's first process, not the
//!   children it forks.
//!
//! - [`RunningJobs`]: a file per running job (its process group, job id,
//!   attempt and program) in a directory of the TaskTracker's, removed when
//!   the run ends. A TaskTracker starting where a previous one left files
//!   checks whether those groups still run and reports the ones that do:
//!   they were left by an instance whose guard was killed too, or ran on a
//!   platform without the guard.
//!
//! The guard needs Linux (`/proc`); elsewhere [`JobGuard::start`] returns
//! an error and jobs run without it (see `tasktracker/README.md`).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// The TaskTracker's side of the guard process; see the [module docs](self).
#[derive(Debug)]
pub struct JobGuard {
    /// The write end of the guard's pipe; close-on-exec, so jobs' programs
    /// do not keep it.
    pipe: std::io::PipeWriter,
    pid: Pid,
    /// Set once this side lets the guard go, so its exit is expected.
    closing: Arc<AtomicBool>,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::SeqCst);
    }
}

impl JobGuard {
    /// Forks the guard process. Call it before the process starts threads
    /// (before the async runtime): a forked copy of a process with threads
    /// may only call async-signal-safe functions, and the guard does more.
    /// Errors when the process already has threads, off Linux, and when
    /// the fork fails.
    #[allow(unsafe_code)]
    pub fn start() -> std::io::Result<JobGuard> {
        if !cfg!(target_os = "linux") {
            return Err(std::io::Error::other(
                "the job guard needs Linux; jobs will not die with the TaskTracker",
            ));
        }
        let threads = std::fs::read_dir("/proc/self/task")?.count();
        if threads != 1 {
            return Err(std::io::Error::other(format!(
                "the job guard must be started before any thread (this process has {threads})"
            )));
        }
        // Both ends are close-on-exec.
        let (read, write) = std::io::pipe()?;
        // SAFETY: the process has one thread (checked above), so the child
        // is a full copy that may run any code.
        match unsafe { nix::unistd::fork() }? {
            nix::unistd::ForkResult::Child => {
                drop(write);
                let code = serve(OwnedFd::from(read));
                // Not `process::exit`: that would flush output the parent
                // had buffered at the fork a second time.
                // SAFETY: _exit ends the process at once; nothing runs after.
                unsafe { nix::libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(read);
                Ok(JobGuard {
                    pipe: write,
                    pid: child,
                    closing: Arc::new(AtomicBool::new(false)),
                })
            }
        }
    }

    /// The guard process's id.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Reaps the guard when it exits, on a thread of its own, and logs an
    /// error if it exits while this side still uses it: from then on jobs
    /// would outlive this process.
    pub fn watch(&self) -> std::io::Result<()> {
        let pid = self.pid;
        let closing = self.closing.clone();
        std::thread::Builder::new()
            .name("job-guard-watch".into())
            .spawn(move || {
                let status = nix::sys::wait::waitpid(pid, None);
                if !closing.load(Ordering::SeqCst) {
                    tracing::error!(
                        "the job guard (pid {pid}) ended ({status:?}): from now on the processes \
                         of jobs would outlive this TaskTracker if it were killed; restart it"
                    );
                }
            })
            .map(|_| ())
    }

    /// The descriptor a job's process writes its registration to, between
    /// fork and exec ([`register_self`]).
    pub(crate) fn fd(&self) -> RawFd {
        self.pipe.as_raw_fd()
    }

    /// Tells the guard the group `pgid` is gone: the run ended and its
    /// group was killed.
    pub(crate) fn forget(&self, pgid: Pid) {
        // A write of a few bytes to a pipe is atomic; it fails only when
        // the guard is gone, which `start`'s caller is told about elsewhere.
        let _ = (&self.pipe).write_all(format!("-{}\n", pgid.as_raw()).as_bytes());
    }
}

/// Writes `+<pid>\n` to the guard's pipe `fd`. Runs in a job's process
/// between fork and exec, so it does only async-signal-safe things: no
/// allocation, no lock. SIGPIPE is ignored for the write (the guard may be
/// gone) and set back to its default, which the program starts with.
#[allow(unsafe_code)]
pub(crate) fn register_self(fd: RawFd) {
    use nix::libc;
    let mut buf = [0u8; 24];
    let mut end = buf.len();
    end -= 1;
    buf[end] = b'\n';
    let mut pid = std::process::id();
    loop {
        end -= 1;
        buf[end] = b'0' + (pid % 10) as u8;
        pid /= 10;
        if pid == 0 {
            break;
        }
    }
    end -= 1;
    buf[end] = b'+';
    // SAFETY: signal and write are async-signal-safe; the buffer is ours
    // and outlives the call.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        let _ = libc::write(
            fd,
            buf[end..].as_ptr().cast::<libc::c_void>(),
            buf.len() - end,
        );
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The guard process: lists the groups it is told about until end of
/// file, then kills those still listed. Returns its exit status.
fn serve(read: OwnedFd) -> i32 {
    // A group of its own: a Ctrl-C, or a supervisor signalling the
    // TaskTracker's process group, must not end the guard before the
    // TaskTracker.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    set_name(c"lts-job-guard");
    // Group -> the start time of its first process, to tell it from a
    // later process that got the same pid.
    let mut groups: BTreeMap<i32, Option<u64>> = BTreeMap::new();
    let reader = std::io::BufReader::new(std::fs::File::from(read));
    for line in reader.lines() {
        let Ok(line) = line else { break };
        let pid = |text: &str| text.parse::<i32>().ok().filter(|&pid| pid > 1);
        if let Some(pid) = line.strip_prefix('+').and_then(pid) {
            groups.insert(pid, start_time(pid));
        } else if let Some(pid) = line.strip_prefix('-').and_then(pid) {
            groups.remove(&pid);
        }
    }
    let mut killed = 0;
    for (pgid, started) in groups {
        // A group whose first process is still there with another start
        // time is someone else's: that pid was reused.
        if let Some(now) = start_time(pgid) {
            if started != Some(now) {
                continue;
            }
        }
        if killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok() {
            killed += 1;
        }
    }
    if killed > 0 {
        eprintln!(
            "lts-job-guard: the TaskTracker is gone; killed the processes of {killed} running \
             job(s)"
        );
    }
    0
}

fn set_name(name: &std::ffi::CStr) {
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_name(name);
    #[cfg(not(target_os = "linux"))]
    let _ = name;
}

/// When process `pid` started, in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`); `None` when there is no such process.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count after it.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A file per running job in a directory of the TaskTracker's; see the
/// [module docs](self).
#[derive(Clone, Debug)]
pub struct RunningJobs {
    dir: PathBuf,
}

/// A job process group a previous TaskTracker left running.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeftOver {
    /// The process group (the pid of the job's first process).
    pub pgid: i32,
    /// What the file says about it: job id, attempt, program.
    pub job: String,
}

impl RunningJobs {
    /// Files in `dir`, created if needed.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<RunningJobs> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(RunningJobs { dir })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The job groups the files name that still run, then removes every
    /// file: call it once, when the TaskTracker starts and before it runs
    /// jobs.
    pub fn take_left_overs(&self) -> std::io::Result<Vec<LeftOver>> {
        let mut left = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(pgid) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".job"))
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let mut lines = text.lines();
            let started: Option<u64> = lines.next().and_then(|l| l.parse().ok());
            let job = lines.next().unwrap_or("").to_string();
            let same_leader = match start_time(pgid) {
                Some(now) => started == Some(now),
                // The first process ended; others may still be in its group.
                None => true,
            };
            if pgid > 1 && same_leader && killpg(Pid::from_raw(pgid), None).is_ok() {
                left.push(LeftOver { pgid, job });
            }
            let _ = std::fs::remove_file(&path);
        }
        left.sort_by_key(|l| l.pgid);
        Ok(left)
    }

    /// Records that group `pgid` runs `job` (a line: job id, attempt,
    /// program).
    pub(crate) fn add(&self, pgid: i32, job: &str) {
        let started = start_time(pgid).map(|t| t.to_string()).unwrap_or_default();
        let path = self.path(pgid);
        if let Err(e) = std::fs::write(&path, format!("{started}\n{job}\n")) {
            tracing::warn!("cannot record running job in {}: {e}", path.display());
        }
    }

    /// The run of group `pgid` ended.
    pub(crate) fn remove(&self, pgid: i32) {
        let _ = std::fs::remove_file(self.path(pgid));
    }

    fn path(&self, pgid: i32) -> PathBuf {
        self.dir.join(format!("{pgid}.job"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn the_guard_is_refused_once_the_process_has_threads() {
        // The test harness runs tests on threads of its own.
        std::thread::scope(|s| {
            s.spawn(|| {
                let e = JobGuard::start().unwrap_err().to_string();
                assert!(e.contains("before any thread"), "{e}");
            });
        });
    }

    #[test]
    fn start_time_reads_this_process() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert_eq!(start_time(me), start_time(me));
        assert_eq!(start_time(i32::MAX), None);
    }

    #[test]
    fn left_overs_are_the_groups_still_running() {
        let dir = tempfile::tempdir().unwrap();
        let running = RunningJobs::open(dir.path().join("running")).unwrap();
        let mut alive = std::process::Command::new("sleep")
            .arg("300")
            .process_group(0)
            .spawn()
            .unwrap();
        let mut gone = std::process::Command::new("true")
            .process_group(0)
            .spawn()
            .unwrap();
        gone.wait().unwrap();
        running.add(alive.id() as i32, "j-1 1 sleep");
        std::fs::write(running.path(gone.id() as i32), "1\nj-2 1 true\n").unwrap();
        let left = running.take_left_overs().unwrap();
        assert_eq!(
            left,
            vec![LeftOver {
                pgid: alive.id() as i32,
                job: "j-1 1 sleep".into()
            }]
        );
        assert_eq!(std::fs::read_dir(running.dir()).unwrap().count(), 0);
        assert!(running.take_left_overs().unwrap().is_empty());
        alive.kill().unwrap();
        alive.wait().unwrap();
    }
}
