//! Who may call what: credentials from a token file, their roles, and the
//! `audit` log.
//!
//! Auth is off when no token file is given: every caller may do
//! everything (the default, for a tracker on loopback or a trusted
//! network). With `--token-file FILE` it is on for every service but
//! health, reflection and `ClusterService` (see `docs/security.md`).
//!
//! The file holds one credential a line, `CREDENTIAL ROLE[:GROUP,...] NAME`:
//! - `CREDENTIAL` is the SHA-256 of a bearer token in hex (what
//!   `jobtracker hash-token` prints; the token itself is never stored), or
//!   `cert:SUBJECT`, a client certificate whose common name or DNS
//!   subject-alternative name is `SUBJECT` (checked against
//!   `--tls-client-ca` during the TLS handshake);
//! - `ROLE` is `submit`, `operate`, `admin` or `worker`; the groups after
//!   `:` limit it (submit node groups for `submit`, TaskTracker node
//!   groups for `operate` and `worker`); without them it covers every
//!   group;
//! - `NAME` names the caller in the audit log (no `/`). A TaskTracker
//!   that connects with a credential acts as `NAME/IDENTITY`, where
//!   `IDENTITY` is the one its hello names.
//!
//! Blank lines and lines starting with `#` are skipped. The tracker looks
//! at the file's modification time every [`RELOAD_INTERVAL`] and reads it
//! again when it changed, so tokens rotate without a restart; a file that
//! no longer parses is reported and the previous credentials stay in force.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

/// How often the token file's modification time is checked.
pub const RELOAD_INTERVAL: Duration = Duration::from_millis(500);

/// What a credential may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Submit jobs for its submit node groups, read those jobs and their
    /// feedback.
    Submit,
    /// Cancel, suspend, resume, trigger and update jobs of its node
    /// groups, list them and read their logs.
    Operate,
    /// Everything.
    Admin,
    /// Only the `WorkService`, only for its node groups.
    Worker,
}

impl Role {
    fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "submit" => Role::Submit,
            "operate" => Role::Operate,
            "admin" => Role::Admin,
            "worker" => Role::Worker,
            _ => return None,
        })
    }

    /// The role's name in the token file.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Submit => "submit",
            Role::Operate => "operate",
            Role::Admin => "admin",
            Role::Worker => "worker",
        }
    }
}

/// What a call needs, checked against a node group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Submit a job whose submit node group is the one checked.
    Submit,
    /// Read a job or its log: the submitter (by the job's submit node
    /// group) or an operator (by its TaskTracker node group).
    Read,
    /// Receive and ack the feedback of a submit node group.
    Feedback,
    /// Operator verbs and listings on a TaskTracker node group.
    Operate,
    /// Delete a job: administrators only.
    Delete,
    /// Open a `WorkService` stream for a TaskTracker node group.
    Work,
}

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// Its name in the token file, shown in the audit log.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The node groups it is limited to; `None`: every group.
    pub groups: Option<Vec<String>>,
}

impl Principal {
    fn covers(&self, group: &str) -> bool {
        self.groups
            .as_ref()
            .is_none_or(|gs| gs.iter().any(|g| g == group))
    }

    /// Whether it may do `need` on `group` (for [`Need::Read`], `group` is
    /// the TaskTracker node group and `submit_group` the job's submit node
    /// group).
    pub fn may(&self, need: Need, group: &str, submit_group: &str) -> bool {
        match (self.role, need) {
            (Role::Admin, _) => true,
            (Role::Submit, Need::Submit | Need::Feedback) => self.covers(group),
            (Role::Submit, Need::Read) => !submit_group.is_empty() && self.covers(submit_group),
            (Role::Operate, Need::Operate | Need::Read) => self.covers(group),
            (Role::Worker, Need::Work) => self.covers(group),
            _ => false,
        }
    }
}

/// The credentials of one version of the token file.
#[derive(Default, Debug)]
struct Table {
    tokens: HashMap<String, Arc<Principal>>,
    subjects: HashMap<String, Arc<Principal>>,
}

/// The SHA-256 of `token` in lower-case hex: what the token file holds.
pub fn hash_token(token: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes());
    let mut hex = String::with_capacity(64);
    for b in digest.as_ref() {
        hex.push(HEX[usize::from(b >> 4)] as char);
        hex.push(HEX[usize::from(b & 0x0f)] as char);
    }
    hex
}

fn parse_table(text: &str) -> Result<Table, String> {
    let mut table = Table::default();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [credential, role, name] = fields[..] else {
            return Err(format!(
                "line {n}: expected `CREDENTIAL ROLE[:GROUPS] NAME`, found {} fields",
                fields.len()
            ));
        };
        let (role_text, groups) = match role.split_once(':') {
            Some((r, g)) => {
                let groups: Vec<String> = g
                    .split(',')
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect();
                if groups.is_empty() {
                    return Err(format!("line {n}: `{role}` names no group after `:`"));
                }
                (r, Some(groups))
            }
            None => (role, None),
        };
        let Some(role) = Role::parse(role_text) else {
            return Err(format!(
                "line {n}: unknown role `{role_text}`; say submit, operate, admin or worker"
            ));
        };
        if name.contains('/') {
            return Err(format!(
                "line {n}: the name `{name}` holds a `/`, which separates a worker credential's \
                 name from its TaskTrackers' identities"
            ));
        }
        let principal = Arc::new(Principal {
            name: name.to_string(),
            role,
            groups,
        });
        if let Some(subject) = credential.strip_prefix("cert:") {
            if subject.is_empty() {
                return Err(format!("line {n}: `cert:` names no certificate subject"));
            }
            if table
                .subjects
                .insert(subject.to_string(), principal)
                .is_some()
            {
                return Err(format!("line {n}: certificate `{subject}` is listed twice"));
            }
        } else {
            let hash = credential.to_ascii_lowercase();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "line {n}: the credential is neither a SHA-256 hex digest (64 hex digits, \
                     see `jobtracker hash-token`) nor `cert:SUBJECT`"
                ));
            }
            if table.tokens.insert(hash, principal).is_some() {
                return Err(format!("line {n}: this token hash is listed twice"));
            }
        }
    }
    Ok(table)
}

/// What identifies one version of the file on disk.
type Stamp = (Option<SystemTime>, u64);

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified().ok(), meta.len()))
}

/// The credentials in force, read from the token file and kept current.
pub struct Auth {
    path: PathBuf,
    table: RwLock<Arc<Table>>,
    // std Mutex: held to compare and swap the stamp, never across an await.
    stamp: Mutex<Stamp>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth").field("path", &self.path).finish()
    }
}

impl Auth {
    /// Reads the token file; an error names the file and the line.
    pub fn load(path: &Path) -> Result<Arc<Auth>, String> {
        let what = |e: String| format!("--token-file {}: {e}", path.display());
        let stamp = stamp(path).map_err(|e| what(e.to_string()))?;
        let text = std::fs::read_to_string(path).map_err(|e| what(e.to_string()))?;
        let table = parse_table(&text).map_err(what)?;
        tracing::info!(
            tokens = table.tokens.len(),
            certificates = table.subjects.len(),
            "auth on: credentials from {}",
            path.display()
        );
        Ok(Arc::new(Auth {
            path: path.to_path_buf(),
            table: RwLock::new(Arc::new(table)),
            stamp: Mutex::new(stamp),
        }))
    }

    /// Reads the file again if it changed since the last read. Returns
    /// whether new credentials are in force.
    pub fn reload_if_changed(&self) -> bool {
        let now = match stamp(&self.path) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    "token file {}: {e}; the previous credentials stay in force",
                    self.path.display()
                );
                return false;
            }
        };
        {
            let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
            if *last == now {
                return false;
            }
            *last = now;
        }
        let parsed = std::fs::read_to_string(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|text| parse_table(&text));
        match parsed {
            Ok(table) => {
                tracing::info!(
                    target: "audit",
                    tokens = table.tokens.len(),
                    certificates = table.subjects.len(),
                    "token file {} read again",
                    self.path.display()
                );
                *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(table);
                true
            }
            Err(e) => {
                tracing::error!(
                    "token file {}: {e}; the previous credentials stay in force",
                    self.path.display()
                );
                false
            }
        }
    }

    /// Keeps the credentials current until `shutdown`.
    pub async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(RELOAD_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let me = self.clone();
            // A stat and, rarely, a small read: off the async threads.
            let _ = tokio::task::spawn_blocking(move || me.reload_if_changed()).await;
        }
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Who sent `request`: its bearer token, else its client certificate.
    /// A missing or unknown credential is `UNAUTHENTICATED` (and an audit
    /// line naming `job`, its first 128 bytes, or `-` for a call about no
    /// single job); the message never depends on the call's arguments.
    pub fn authenticate<T>(
        &self,
        request: &Request<T>,
        what: &str,
        job: &str,
    ) -> Result<Arc<Principal>, Status> {
        let table = self.table();
        let from = peer(request);
        let job = audit_job(job);
        let refuse = |reason: &str| {
            tracing::warn!(target: "audit", who = "-", what, job, from = %from, outcome = "unauthenticated", "{reason}");
            Status::unauthenticated(reason.to_string())
        };
        if let Some(value) = request.metadata().get("authorization") {
            let token = value.to_str().ok().and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
            let Some(token) = token else {
                return Err(refuse("the authorization header is not `Bearer <token>`"));
            };
            return match table.tokens.get(&hash_token(token)) {
                Some(p) => Ok(p.clone()),
                None => Err(refuse("the token is not valid")),
            };
        }
        if let Some(certs) = request.peer_certs() {
            if let Some(cert) = certs.first() {
                let subjects = certificate_subjects(cert.as_ref());
                for s in &subjects {
                    if let Some(p) = table.subjects.get(s) {
                        return Ok(p.clone());
                    }
                }
                return Err(refuse(&format!(
                    "the client certificate ({}) maps to no role in the token file",
                    subjects.join(", ")
                )));
            }
        }
        Err(refuse(
            "no credential: send `authorization: Bearer <token>` or a client certificate",
        ))
    }
}

/// A job id as an audit line shows it: `-` when empty, else its first
/// 128 bytes (a refused caller's id is not checked yet).
fn audit_job(job: &str) -> &str {
    if job.is_empty() {
        return "-";
    }
    let mut end = job.len().min(lts_common::limits::MAX_JOB_ID_LEN);
    while !job.is_char_boundary(end) {
        end -= 1;
    }
    &job[..end]
}

/// The common names and DNS subject-alternative names of a DER
/// certificate.
pub fn certificate_subjects(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_string());
            }
        }
    }
    names
}

/// An interceptor that authenticates every call (with auth on) and puts
/// its [`Caller`] in the request's extensions, where a service finds it
/// with `request.extensions().get::<Caller>()`. The `WorkService` is
/// served behind one: a worker credential fixes which node groups the
/// stream may take jobs of, whatever its hello says.
pub fn caller_interceptor(
    auth: Option<Arc<Auth>>,
    what: &'static str,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |mut request: Request<()>| {
        let caller = Caller::of(auth.as_deref(), &request, what)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller's address, or `-`.
pub fn peer<T>(request: &Request<T>) -> String {
    request
        .remote_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into())
}

/// Who called, as far as the tracker checked: what a handler asks before
/// it acts.
#[derive(Clone, Debug)]
pub struct Caller {
    /// `None`: auth is off.
    pub principal: Option<Arc<Principal>>,
    /// The caller's address.
    pub from: String,
}

impl Caller {
    /// The caller of `request`; with auth on, an unknown credential fails
    /// with `UNAUTHENTICATED`.
    pub fn of<T>(auth: Option<&Auth>, request: &Request<T>, what: &str) -> Result<Caller, Status> {
        Self::of_for(auth, request, what, "-")
    }

    /// [`Caller::of`] for a call about one job (named in the audit line of
    /// a refused credential).
    pub fn of_for<T>(
        auth: Option<&Auth>,
        request: &Request<T>,
        what: &str,
        job: &str,
    ) -> Result<Caller, Status> {
        let principal = match auth {
            Some(a) => Some(a.authenticate(request, what, job)?),
            None => None,
        };
        Ok(Caller {
            principal,
            from: peer(request),
        })
    }

    /// The caller's name for logs, `-` with auth off.
    pub fn name(&self) -> &str {
        self.principal.as_ref().map_or("-", |p| p.name.as_str())
    }

    /// Whether the caller may do `need` on `group`.
    pub fn may(&self, need: Need, group: &str, submit_group: &str) -> bool {
        self.principal
            .as_ref()
            .is_none_or(|p| p.may(need, group, submit_group))
    }

    /// Whether the caller may do `need` on every group (auth off, an
    /// administrator, or a role of that kind without groups).
    pub fn unlimited(&self, need: Need) -> bool {
        match &self.principal {
            None => true,
            Some(p) => p.groups.is_none() && p.may(need, "", "*"),
        }
    }

    /// `PERMISSION_DENIED` (and an audit line) unless the caller may do
    /// `need` on `group`.
    pub fn require(&self, need: Need, group: &str, what: &str) -> Result<(), Status> {
        if self.may(need, group, group) {
            return Ok(());
        }
        Err(self.deny(what, "", &format!("node group `{group}`")))
    }

    /// `PERMISSION_DENIED` (and an audit line) unless the caller may do
    /// `need` on `job`. Whether the job exists is not told: a caller
    /// limited to some groups gets the same answer for a job of another
    /// group and for no job at all.
    pub fn require_job(
        &self,
        need: Need,
        job: Option<&lts_common::Job>,
        job_id: &str,
        what: &str,
    ) -> Result<(), Status> {
        if self.unlimited(need) {
            return Ok(());
        }
        if let Some(job) = job {
            if self.may(
                need,
                &job.spec.task_tracker_node_group,
                &job.spec.submit_node_group,
            ) {
                return Ok(());
            }
        }
        Err(self.deny(what, job_id, &format!("job `{job_id}`: not found, or")))
    }

    fn deny(&self, what: &str, job: &str, subject: &str) -> Status {
        let role = self.principal.as_ref().map_or("-", |p| p.role.as_str());
        tracing::warn!(
            target: "audit",
            who = self.name(),
            role,
            what,
            job,
            from = %self.from,
            outcome = "permission_denied",
            "refused"
        );
        Status::permission_denied(format!(
            "{subject} not permitted to `{}` (role {role}) for {what}",
            self.name()
        ))
    }

    /// One audit line for an operator action that was carried out.
    pub fn audit(&self, what: &str, job: &str) {
        let role = self.principal.as_ref().map_or("-", |p| p.role.as_str());
        tracing::info!(
            target: "audit",
            who = self.name(),
            role,
            what,
            job,
            from = %self.from,
            outcome = "ok",
            "operator action"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(token: &str, rest: &str) -> String {
        format!("{} {rest}\n", hash_token(token))
    }

    #[test]
    fn the_file_maps_tokens_and_certificates_to_roles() {
        let text = format!(
            "# comment\n\n{}{}cert:tt-1.example worker:a ci-workers\n",
            line("t-submit", "submit:billing,reports alice"),
            line("t-admin", "admin root"),
        );
        let table = parse_table(&text).expect("parses");
        let alice = &table.tokens[&hash_token("t-submit")];
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.role, Role::Submit);
        assert!(alice.may(Need::Submit, "billing", ""));
        assert!(!alice.may(Need::Submit, "other", ""));
        assert!(!alice.may(Need::Operate, "billing", ""));
        assert!(alice.may(Need::Read, "any-tt-group", "reports"));
        assert!(!alice.may(Need::Work, "billing", ""));
        let worker = &table.subjects["tt-1.example"];
        assert!(worker.may(Need::Work, "a", ""));
        assert!(!worker.may(Need::Work, "b", ""));
        assert!(!worker.may(Need::Read, "a", "a"));
        assert!(table.tokens[&hash_token("t-admin")].may(Need::Delete, "x", ""));
    }

    #[test]
    fn bad_lines_are_refused_naming_the_line() {
        for (text, says) in [
            ("abc submit alice\n", "line 1"),
            (&line("t", "boss alice"), "unknown role `boss`"),
            (&line("t", "submit: alice"), "names no group"),
            (&line("t", "submit"), "expected"),
            (&line("t", "worker ops/a"), "holds a `/`"),
            (
                &format!("{}{}", line("t", "admin a"), line("t", "admin b")),
                "line 2",
            ),
        ] {
            let e = parse_table(text).unwrap_err();
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn the_hash_is_the_sha256_of_the_trimmed_token() {
        assert_eq!(
            hash_token("abc\n"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
