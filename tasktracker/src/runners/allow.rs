//! What the shell runner lets a job choose: which programs run
//! ([`AllowList`], `--allow`) and which environment variables a job may pass
//! to them ([`EnvAllowList`], `--allow-env`). Both are allow-lists checked
//! when the TaskTracker starts; a job asking for anything else is refused.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// PATH for programs when the TaskTracker itself has none.
const FALLBACK_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The programs a TaskTracker may run, as the operator named them
/// (`--allow`), each resolved once, when the list is made, to its canonical
/// file.
#[derive(Clone, Debug)]
pub struct AllowList {
    /// Each entry as given, with its file.
    entries: Vec<(String, PathBuf)>,
    files: HashSet<PathBuf>,
    search_path: String,
}

impl AllowList {
    /// Allows `programs`: bare names looked up in the TaskTracker's PATH now,
    /// or absolute paths. Symlinks are followed, so a job may name the same
    /// file another way (`/usr/bin/echo` for `echo`). A relative path
    /// (`./job.sh`, `bin/job`), a program that does not exist and a file
    /// that is not executable are errors naming the entry.
    pub fn new<I, S>(programs: I) -> Result<AllowList>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let search_path = std::env::var("PATH")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| FALLBACK_PATH.to_string());
        AllowList::with_search_path(programs, search_path)
    }

    /// As [`AllowList::new`], with `search_path` in place of the process's
    /// PATH, for bare names now and for the programs jobs start.
    pub fn with_search_path<I, S>(programs: I, search_path: impl Into<String>) -> Result<AllowList>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let search_path = search_path.into();
        let mut entries = Vec::new();
        for program in programs {
            let program: String = program.into();
            let file = resolve_entry(&program, &search_path).map_err(|message| Error::Config {
                field: "--allow",
                message,
            })?;
            entries.push((program, file));
        }
        let files = entries.iter().map(|(_, file)| file.clone()).collect();
        Ok(AllowList {
            entries,
            files,
            search_path,
        })
    }

    /// An empty list: every job is refused.
    pub fn none() -> AllowList {
        AllowList {
            entries: Vec::new(),
            files: HashSet::new(),
            search_path: FALLBACK_PATH.to_string(),
        }
    }

    /// The programs as given.
    pub fn names(&self) -> Vec<&str> {
        self.entries.iter().map(|(name, _)| name.as_str()).collect()
    }

    /// Each program as given with the file it was resolved to.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.entries
            .iter()
            .map(|(name, file)| (name.as_str(), file.as_path()))
    }

    /// Whether nothing is allowed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The PATH programs are looked up in, and that they get.
    pub fn search_path(&self) -> &str {
        &self.search_path
    }

    /// The file to execute for `program` if it is allowed. A bare name that
    /// is an entry runs the file resolved at start; any other name or path
    /// (relative ones against `cwd`) is resolved now and runs only if its
    /// canonical file is one of the entries' files. `Err` says why not, for
    /// the job's outcome.
    pub(crate) fn permit(&self, program: &str, cwd: Option<&Path>) -> Result<PathBuf, String> {
        if !program.contains('/') {
            if let Some((_, file)) = self.entries.iter().find(|(name, _)| name == program) {
                return Ok(file.clone());
            }
        }
        match resolve(program, cwd, &self.search_path) {
            Some(file) if self.files.contains(&file) => Ok(file),
            _ => {
                let allowed = if self.entries.is_empty() {
                    "none".to_string()
                } else {
                    self.names().join(", ")
                };
                Err(format!(
                    "program `{program}` is not on this TaskTracker's allow-list (--allow); \
                     allowed: {allowed}"
                ))
            }
        }
    }
}

/// The canonical file of an `--allow` entry, or why it cannot be one.
fn resolve_entry(program: &str, search_path: &str) -> Result<PathBuf, String> {
    if program.trim().is_empty() {
        return Err("an entry is empty".into());
    }
    if program.contains('/') {
        let path = Path::new(program);
        if path.is_relative() {
            return Err(format!(
                "`{program}` is a relative path, which would mean another file in each job's \
                 working directory; give an absolute path, or a bare name looked up in PATH"
            ));
        }
        let file = std::fs::canonicalize(path)
            .map_err(|e| format!("`{program}` cannot be resolved: {e}"))?;
        if !is_executable(&file) {
            return Err(format!(
                "`{program}` ({}) is not an executable file",
                file.display()
            ));
        }
        return Ok(file);
    }
    resolve(program, None, search_path)
        .ok_or_else(|| format!("`{program}` was not found in PATH ({search_path})"))
}

/// The canonical file `program` names: a path (relative to `cwd` when
/// given), or a name searched in `search_path`.
pub(crate) fn resolve(program: &str, cwd: Option<&Path>, search_path: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = match cwd {
            Some(cwd) if Path::new(program).is_relative() => cwd.join(program),
            _ => PathBuf::from(program),
        };
        return std::fs::canonicalize(path)
            .ok()
            .filter(|p| is_executable(p));
    }
    search_path
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| is_executable(candidate))
        .and_then(|found| std::fs::canonicalize(found).ok())
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The variables a job's `env` may set when the operator names none
/// (`--allow-env`): the locale and the time zone. They select data (message
/// catalogues, time zone files), not code.
pub const DEFAULT_ALLOWED_ENV: &[&str] = &["LANG", "LANGUAGE", "LC_*", "TZ"];

/// Variables no job may set, whatever the operator allows: the runner sets
/// them itself (`PATH`, `HOME`, `USER`, `LOGNAME`, `LTS_*`) or they change
/// which code a program loads (`LD_*`, `DYLD_*`).
const NEVER_FROM_A_JOB: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LTS_*", "LD_*", "DYLD_*"];

/// The names of environment variables a job's `env` may pass to its
/// program (`--allow-env`): exact names, or prefixes ending in `*`
/// (`LC_*`). A job setting any other variable is refused, naming it.
///
/// An allow-list because the variables that make an interpreter run other
/// code are many and keep growing (`BASH_ENV`, `ENV`, `PYTHONPATH`,
/// `PYTHONSTARTUP`, `PYTHONWARNINGS` with `BROWSER`, `PERL5OPT`,
/// `RUBYOPT`, `NODE_OPTIONS`, `GIT_*`, ...): a list of what to refuse is
/// never complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvAllowList {
    entries: Vec<String>,
}

impl Default for EnvAllowList {
    fn default() -> Self {
        EnvAllowList {
            entries: DEFAULT_ALLOWED_ENV.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl EnvAllowList {
    /// Allows `names`: each a variable name (letters, digits, `_`) or such
    /// a prefix followed by `*`. A bare `*`, a malformed name, and a name
    /// the runner sets itself or that changes which code runs (`PATH`,
    /// `HOME`, `USER`, `LOGNAME`, `LTS_*`, `LD_*`, `DYLD_*`) are errors
    /// naming the entry. No names: jobs may set no variable.
    pub fn new<I, S>(names: I) -> Result<EnvAllowList>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut entries = Vec::new();
        for name in names {
            let name: String = name.into();
            check_env_entry(&name).map_err(|message| Error::Config {
                field: "--allow-env",
                message,
            })?;
            entries.push(name);
        }
        Ok(EnvAllowList { entries })
    }

    /// The entries as given.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// Whether a job may set `name`.
    pub fn allows(&self, name: &str) -> bool {
        self.entries.iter().any(|entry| matches(entry, name))
    }

    /// Checks a job's variables: `Err` names every one not allowed, for the
    /// job's outcome.
    pub(crate) fn check<'a>(
        &self,
        names: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), String> {
        let refused: Vec<&str> = names
            .into_iter()
            .filter(|name| !self.allows(name))
            .map(String::as_str)
            .collect();
        if refused.is_empty() {
            return Ok(());
        }
        let allowed = if self.entries.is_empty() {
            "none".to_string()
        } else {
            self.entries.join(", ")
        };
        Err(format!(
            "`env` sets {} that this TaskTracker does not pass to programs: {} \
             (--allow-env; allowed: {allowed})",
            if refused.len() == 1 {
                "a variable"
            } else {
                "variables"
            },
            refused.join(", ")
        ))
    }
}

/// Whether the allow-list entry `entry` (a name or a `PREFIX*`) covers
/// `name`.
fn matches(entry: &str, name: &str) -> bool {
    match entry.strip_suffix('*') {
        Some(prefix) => name.starts_with(prefix),
        None => entry == name,
    }
}

fn check_env_entry(entry: &str) -> Result<(), String> {
    let name = entry.strip_suffix('*').unwrap_or(entry);
    if name.is_empty() {
        return Err(format!(
            "`{entry}` would allow every variable; name the variables jobs need"
        ));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "`{entry}` is not a variable name (letters, digits and `_`, optionally ending in `*`)"
        ));
    }
    // Two patterns overlap when one's prefix starts with the other's.
    let overlaps = |reserved: &str| match (entry.strip_suffix('*'), reserved.strip_suffix('*')) {
        (None, None) => entry == reserved,
        (None, Some(r)) => entry.starts_with(r),
        (Some(e), None) => reserved.starts_with(e),
        (Some(e), Some(r)) => e.starts_with(r) || r.starts_with(e),
    };
    if let Some(reserved) = NEVER_FROM_A_JOB.iter().find(|r| overlaps(r)) {
        if entry == *reserved {
            return Err(format!(
                "`{entry}` may not be set by a job: the runner sets it itself or it changes \
                 which code a program loads"
            ));
        }
        return Err(format!(
            "`{entry}` covers `{reserved}`, which no job may set: the runner sets it itself or it \
             changes which code a program loads"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, "#!/bin/sh\necho ran\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn entries_are_resolved_to_canonical_files_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let real = script(dir.path(), "job.sh");
        let link = dir.path().join("link.sh");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let list = AllowList::new([link.display().to_string(), "echo".to_string()]).unwrap();
        let files: Vec<&Path> = list.entries().map(|(_, f)| f).collect();
        assert_eq!(files[0], std::fs::canonicalize(&real).unwrap());
        assert!(files[1].is_absolute(), "{files:?}");
        // The script is allowed by its real path, its link, and relative to
        // a cwd where it lies.
        let canonical = std::fs::canonicalize(&real).unwrap();
        assert_eq!(
            list.permit(real.to_str().unwrap(), None),
            Ok(canonical.clone())
        );
        assert_eq!(list.permit("./job.sh", Some(dir.path())), Ok(canonical));
    }

    #[test]
    fn a_relative_entry_is_refused_at_start() {
        for entry in ["./job.sh", "bin/job", "../x"] {
            let e = AllowList::new([entry]).unwrap_err().to_string();
            assert!(e.starts_with("--allow:"), "{e}");
            assert!(e.contains(&format!("`{entry}` is a relative path")), "{e}");
        }
    }

    #[test]
    fn a_missing_or_non_executable_entry_is_an_error_naming_it() {
        let e = AllowList::new(["/no/such/prog"]).unwrap_err().to_string();
        assert!(e.starts_with("--allow:"), "{e}");
        assert!(e.contains("`/no/such/prog` cannot be resolved"), "{e}");
        let e = AllowList::new(["no-such-prog-anywhere"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`no-such-prog-anywhere` was not found in PATH"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data.txt");
        std::fs::write(&data, "x").unwrap();
        let e = AllowList::new([data.display().to_string()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not an executable file"), "{e}");
        let e = AllowList::new([""]).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn a_jobs_cwd_does_not_change_what_an_entry_means() {
        // The operator allows one script; a job naming the same relative
        // spelling in a directory of its own gets nothing.
        let operator = tempfile::tempdir().unwrap();
        let allowed = script(operator.path(), "job.sh");
        let attacker = tempfile::tempdir().unwrap();
        script(attacker.path(), "job.sh");
        let list = AllowList::new([allowed.display().to_string()]).unwrap();
        let refused = list.permit("./job.sh", Some(attacker.path())).unwrap_err();
        assert!(
            refused.contains("not on this TaskTracker's allow-list"),
            "{refused}"
        );
        let refused = list.permit("job.sh", Some(attacker.path())).unwrap_err();
        assert!(
            refused.contains("not on this TaskTracker's allow-list"),
            "{refused}"
        );
    }

    #[test]
    fn env_entries_are_names_or_prefixes_and_never_the_runners_own() {
        let list = EnvAllowList::new(["GREETING", "APP_*"]).unwrap();
        assert!(list.allows("GREETING"));
        assert!(list.allows("APP_MODE"));
        assert!(!list.allows("GREETINGS"));
        assert!(!list.allows("BASH_ENV"));
        let default = EnvAllowList::default();
        for allowed in ["LANG", "LC_ALL", "LC_TIME", "TZ"] {
            assert!(default.allows(allowed), "{allowed}");
        }
        for refused in [
            "BASH_ENV",
            "ENV",
            "PYTHONPATH",
            "PYTHONWARNINGS",
            "BROWSER",
            "HOME",
        ] {
            assert!(!default.allows(refused), "{refused}");
        }
        for (entry, expected) in [
            ("*", "would allow every variable"),
            ("", "would allow every variable"),
            ("A-B", "is not a variable name"),
            ("PATH", "`PATH` may not be set by a job"),
            ("LT*", "covers `LTS_*`"),
            ("L*", "covers `LOGNAME`"),
            ("LD_PRELOAD", "covers `LD_*`"),
            ("LTS_JOB_ID", "covers `LTS_*`"),
            ("HOME", "`HOME` may not be set by a job"),
            ("LTS_*", "`LTS_*` may not be set by a job"),
        ] {
            let e = EnvAllowList::new([entry]).unwrap_err().to_string();
            assert!(e.starts_with("--allow-env:"), "{e}");
            assert!(e.contains(expected), "{entry}: {e}");
        }
        let none = EnvAllowList::new(Vec::<String>::new()).unwrap();
        let e = none.check([&"LANG".to_string()]).unwrap_err();
        assert!(e.contains("allowed: none"), "{e}");
    }
}
