//! Reaching the database: connection options, the connect with its
//! schema check and indexes, and how driver errors reach callers.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use mongodb::event::command::CommandEvent;
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};

use super::{group_field, MongoStore};
use crate::error::{Error, Result};

/// The layout this code writes; a database marked newer is refused.
pub const SCHEMA_VERSION: i64 = 1;

/// A connection string; its password never shows in `Debug` output
/// (`--check-config`, logs).
#[derive(Clone, PartialEq, Eq)]
pub struct MongoUri(pub String);

impl std::fmt::Debug for MongoUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", redact_uri(&self.0))
    }
}

/// How to reach the database and how this tracker uses it.
#[derive(Clone, Debug)]
pub struct MongoOptions {
    /// `mongodb://` or `mongodb+srv://` connection string.
    pub uri: String,
    /// Database holding the collections.
    pub database: String,
    /// How long execution logs are kept (TTL index).
    pub log_retention: Duration,
    /// This tracker's stable name: its runs are leased under it, and a
    /// restart under the same name requeues what its previous life ran.
    pub instance: String,
    /// How long a run's lease lasts without renewal.
    pub lease: Duration,
}

/// Why [`MongoStore::connect`] failed.
#[derive(Debug)]
pub enum ConnectError {
    /// No server answered; trying again later may work.
    Unreachable(mongodb::error::Error),
    /// Anything else (bad URI, newer schema, refused index): retrying
    /// will not help.
    Fatal(Error),
}

/// The collections, once connected.
pub(super) struct Conn {
    pub(super) db: Database,
    pub(super) jobs: Collection<Document>,
    pub(super) logs: Collection<Document>,
    pub(super) feedback: Collection<Document>,
}

pub(super) fn store_err(what: &str) -> impl Fn(mongodb::error::Error) -> Error + '_ {
    move |e| {
        if is_unreachable(&e) {
            // The driver's topology dump helps the operator, not the
            // client: log it, answer in one line.
            tracing::warn!("MongoDB unreachable while {what}: {e}");
            Error::unavailable(
                format!("MongoDB cannot be reached ({what}); try again later"),
                e,
            )
        } else if is_transient(&e) {
            Error::unavailable(format!("MongoDB, {what}; try again later"), e)
        } else {
            Error::internal(format!("MongoDB, {what}"), e)
        }
    }
}

/// A failure the server itself calls temporary (a failover, an overload,
/// a write concern it could not meet yet): the request may succeed later.
fn is_transient(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{
        ErrorKind, RETRYABLE_ERROR, RETRYABLE_WRITE_ERROR, SYSTEM_OVERLOADED_ERROR,
        TRANSIENT_TRANSACTION_ERROR,
    };
    [
        RETRYABLE_ERROR,
        RETRYABLE_WRITE_ERROR,
        SYSTEM_OVERLOADED_ERROR,
        TRANSIENT_TRANSACTION_ERROR,
    ]
    .iter()
    .any(|label| e.contains_label(label))
        || matches!(
            &*e.kind,
            ErrorKind::DnsResolve { .. }
                | ErrorKind::Shutdown
                | ErrorKind::Write(mongodb::error::WriteFailure::WriteConcernError(_))
        )
}

fn is_unreachable(e: &mongodb::error::Error) -> bool {
    use mongodb::error::ErrorKind;
    matches!(
        *e.kind,
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
    )
}

/// `uri` without its password, for messages.
pub fn redact_uri(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_string();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    match rest[..host_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => uri.to_string(),
    }
}

impl MongoStore {
    /// A store that connects on [`MongoStore::connect`] or its first call;
    /// no I/O yet.
    pub fn new(options: MongoOptions) -> MongoStore {
        MongoStore {
            conn: tokio::sync::OnceCell::new(),
            options,
            commands: Arc::new(AtomicU64::new(0)),
            seq: AtomicU64::new(0),
            seen_groups: Mutex::new(HashSet::new()),
            fence: Mutex::new(None),
            waiting: Mutex::new(Vec::new()),
        }
    }

    /// Connects, checks the schema version and creates missing indexes;
    /// nothing once connected. One attempt, bounded by the server
    /// selection timeout.
    pub async fn connect(&self) -> std::result::Result<(), ConnectError> {
        self.conn.get_or_try_init(|| self.open_conn()).await?;
        Ok(())
    }

    pub(super) async fn c(&self) -> Result<&Conn> {
        self.conn
            .get_or_try_init(|| self.open_conn())
            .await
            .map_err(|e| match e {
                ConnectError::Unreachable(m) => Error::unavailable(
                    format!("cannot reach MongoDB at {}", redact_uri(&self.options.uri)),
                    m,
                ),
                ConnectError::Fatal(e) => e,
            })
    }

    async fn open_conn(&self) -> std::result::Result<Conn, ConnectError> {
        let options = &self.options;
        let mut client_options = ClientOptions::parse(&options.uri).await.map_err(|e| {
            ConnectError::Fatal(Error::Config(format!(
                "--mongodb {}: {e}",
                redact_uri(&options.uri)
            )))
        })?;
        // Bound each attempt so a start with MongoDB down keeps saying so,
        // and a request during an outage fails instead of hanging.
        client_options
            .server_selection_timeout
            .get_or_insert(Duration::from_secs(5));
        client_options
            .connect_timeout
            .get_or_insert(Duration::from_secs(5));
        client_options
            .app_name
            .get_or_insert_with(|| format!("lts-jobtracker {}", options.instance));
        let counter = self.commands.clone();
        client_options.command_event_handler =
            Some(mongodb::event::EventHandler::callback(move |ev| {
                if let CommandEvent::Started(_) = ev {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }));
        let client = Client::with_options(client_options).map_err(|e| {
            ConnectError::Fatal(Error::Config(format!(
                "--mongodb {}: {e}",
                redact_uri(&options.uri)
            )))
        })?;
        let db = client.database(&options.database);
        let db_name = options.database.clone();
        let classify = |what: &str, e: mongodb::error::Error| {
            if is_unreachable(&e) {
                ConnectError::Unreachable(e)
            } else {
                ConnectError::Fatal(Error::internal(
                    format!("MongoDB database {db_name}, {what}"),
                    e,
                ))
            }
        };
        db.run_command(doc! { "ping": 1 })
            .await
            .map_err(|e| classify("ping", e))?;

        let meta: Collection<Document> = db.collection("meta");
        let found = meta
            .find_one(doc! { "_id": "schema" })
            .await
            .map_err(|e| classify("reading the schema version", e))?;
        if let Some(found) = found {
            let version = match found.get("version") {
                Some(Bson::Int32(v)) => i64::from(*v),
                Some(Bson::Int64(v)) => *v,
                other => {
                    return Err(ConnectError::Fatal(Error::corrupt(
                        format!("{}.meta schema", options.database),
                        format!("version is {other:?}, an integer expected"),
                    )))
                }
            };
            if version > SCHEMA_VERSION {
                return Err(ConnectError::Fatal(Error::Incompatible(format!(
                    "MongoDB database {} was written with store schema {version}; this JobTracker reads schema {SCHEMA_VERSION} and older. Run a newer JobTracker.",
                    options.database
                ))));
            }
        }
        meta.update_one(
            doc! { "_id": "schema" },
            doc! { "$max": { "version": SCHEMA_VERSION } },
        )
        .upsert(true)
        .await
        .map_err(|e| classify("recording the schema version", e))?;

        let conn = Conn {
            jobs: db.collection("jobs"),
            logs: db.collection("logs"),
            feedback: db.collection("feedback"),
            db,
        };
        self.create_indexes(&conn)
            .await
            .map_err(|e| classify("creating indexes", e))?;
        Ok(conn)
    }

    async fn create_indexes(&self, c: &Conn) -> mongodb::error::Result<()> {
        let g = group_field();
        let index = |name: &str, keys: Document, unique: bool| {
            IndexModel::builder()
                .keys(keys)
                .options(
                    IndexOptions::builder()
                        .name(name.to_string())
                        .unique(unique.then_some(true))
                        .build(),
                )
                .build()
        };
        c.jobs
            .create_indexes([
                index(
                    "claim_order",
                    doc! { g: 1, "state": 1, "spec.priority": 1, "trigger_at_ms": 1, "seq": 1 },
                    false,
                ),
                index(
                    "next_trigger",
                    doc! { g: 1, "state": 1, "trigger_at_ms": 1 },
                    false,
                ),
                index(
                    "task_id_unique",
                    doc! { g: 1, "spec.task_id": 1, "dedup_slot": 1 },
                    true,
                ),
                index("lease_owner", doc! { "state": 1, "lease_owner": 1 }, false),
                index(
                    "lease_expiry",
                    doc! { "state": 1, "lease_until_ms": 1 },
                    false,
                ),
                index("op_token", doc! { "op_token": 1 }, false),
                index(
                    "cycle_due",
                    doc! { "template": 1, "state": 1, "trigger_at_ms": 1 },
                    false,
                ),
            ])
            .await?;
        c.logs
            .create_index(index("job_log", doc! { "job_id": 1, "seq": 1 }, false))
            .await?;
        let retention = IndexModel::builder()
            .keys(doc! { "written_at": 1 })
            .options(
                IndexOptions::builder()
                    .name("log_retention".to_string())
                    .expire_after(self.options.log_retention)
                    .build(),
            )
            .build();
        if let Err(e) = c.logs.create_index(retention).await {
            // The index exists with another retention: change it in place.
            tracing::info!("log retention index differs ({e}); updating it");
            c.db.run_command(doc! {
                "collMod": "logs",
                "index": {
                    "name": "log_retention",
                    "expireAfterSeconds": self.options.log_retention.as_secs() as i64,
                },
            })
            .await?;
        }
        c.feedback
            .create_index(index(
                "by_group",
                doc! { "submit_node_group": 1, "_id": 1 },
                false,
            ))
            .await?;
        Ok(())
    }

    /// Commands sent to MongoDB since this store was opened, counted by the
    /// driver's command monitoring: one per round trip.
    pub fn commands_sent(&self) -> u64 {
        self.commands.load(Ordering::Relaxed)
    }

    /// Drops the whole database: for tests and benchmarks that made one of
    /// their own.
    pub async fn drop_database(&self) -> Result<()> {
        self.c()
            .await?
            .db
            .drop()
            .await
            .map_err(store_err("dropping the database"))
    }

    /// The database name.
    pub fn database(&self) -> &str {
        &self.options.database
    }

    /// This tracker's instance name (lease owner).
    pub fn instance(&self) -> &str {
        &self.options.instance
    }
}
