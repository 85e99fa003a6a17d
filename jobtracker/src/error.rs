//! Errors of the JobTracker and how they reach callers.
//!
//! Each variant says what the caller should do about it, and
//! [`From<Error> for tonic::Status`](#impl-From<Error>-for-Status) gives
//! each its own code: retry later (`UNAVAILABLE`), a bug or corrupt data
//! (`INTERNAL`, `DATA_LOSS`), the caller's fault (`INVALID_ARGUMENT`,
//! `FAILED_PRECONDITION`, `NOT_FOUND`), a feature the configured store
//! lacks (`UNIMPLEMENTED`), or a master superseded by a newer one
//! (`ABORTED`). Store errors keep the error that caused them
//! as their [`std::error::Error::source`].

use lts_common::ValidationError;

/// The cause of a store error, kept for logs and for [`Error::chain`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong in the JobTracker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or wrong.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// No job with that id.
    #[error("no job with id {0}")]
    NotFound(String),
    /// The request does not fit the job's state (e.g. cancel a finished job).
    #[error("{0}")]
    WrongState(String),
    /// The store cannot serve the request now: its database is down or
    /// unreachable, or a write failed on I/O. The request may be retried
    /// later.
    #[error("job store unavailable: {context}")]
    Unavailable {
        /// What the store was doing, in words a caller understands.
        context: String,
        /// What failed.
        #[source]
        source: Option<BoxError>,
    },
    /// The store broke one of its own rules: a record it cannot encode, a
    /// dead writer thread, a write the database refused. Retrying will not
    /// help; it is a bug to report.
    #[error("job store internal error: {context}")]
    Internal {
        /// What the store was doing.
        context: String,
        /// What failed.
        #[source]
        source: Option<BoxError>,
    },
    /// A stored record could not be read.
    #[error("stored record {key} cannot be decoded: {source}")]
    Corrupt {
        /// Key of the record.
        key: String,
        /// What the decoder said.
        #[source]
        source: BoxError,
    },
    /// The data was written by a newer JobTracker, or in a layout this one
    /// does not read.
    #[error("{0}")]
    Incompatible(String),
    /// The configured store does not do this (yet).
    #[error("the {backend} store does not support {feature}")]
    Unsupported {
        /// Which store.
        backend: &'static str,
        /// What it lacks, in the user's words.
        feature: String,
    },
    /// This tracker's master term was superseded: another tracker became
    /// master in a newer term and recorded it in the store, so the store
    /// refuses the once-only writes (cycle firing) of the older term. The
    /// tracker stops that work until it leads again in a newer term.
    #[error("master term {term} is fenced off: the store records the newer term {current}; once-only work stops until this JobTracker leads in a newer term")]
    Fenced {
        /// The term the refused write was made under.
        term: u64,
        /// The newest term the store has recorded.
        current: u64,
    },
    /// The tracker is shutting down.
    #[error("the JobTracker is shutting down")]
    ShuttingDown,
    /// Bad configuration.
    #[error("config: {0}")]
    Config(String),
    /// I/O outside the store (listeners).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Result with the JobTracker's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The store cannot serve now; `source` says why.
    pub fn unavailable(context: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Unavailable {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A bug or broken invariant in the store; `source` says what failed.
    pub fn internal(context: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Internal {
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// A record under `key` that does not decode.
    pub fn corrupt(key: impl Into<String>, source: impl Into<BoxError>) -> Error {
        Error::Corrupt {
            key: key.into(),
            source: source.into(),
        }
    }

    /// The error and every cause below it, joined by `: `, for logs.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        // `Corrupt` and the transparent variants already show their cause.
        if matches!(
            self,
            Error::Corrupt { .. } | Error::Invalid(_) | Error::Io(_) | Error::Transport(_)
        ) {
            next = next.and_then(std::error::Error::source);
        }
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }
}

impl From<lts_common::durable::Error> for Error {
    fn from(e: lts_common::durable::Error) -> Self {
        use lts_common::durable::Error as Durable;
        match e {
            Durable::Io { context, source } => Error::Unavailable {
                context,
                source: Some(source),
            },
            Durable::Internal { context, source } => Error::Internal { context, source },
            Durable::Closed => Error::ShuttingDown,
            Durable::InUse { dir } => Error::Unavailable {
                context: format!(
                    "cannot open {}: the data directory is in use by another JobTracker",
                    dir.display()
                ),
                source: None,
            },
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Status;
        match e {
            Error::Invalid(v) => Status::invalid_argument(v.to_string()),
            Error::NotFound(id) => Status::not_found(format!("no job with id {id}")),
            Error::WrongState(m) => Status::failed_precondition(m),
            // The store may be back by then: the caller retries. The cause
            // (a driver's topology dump, an OS error) is for the operator.
            e @ Error::Unavailable { .. } => {
                tracing::warn!("answering UNAVAILABLE: {}", e.chain());
                Status::unavailable(e.to_string())
            }
            // Bugs and corrupt records: the whole chain, so the report
            // names the cause.
            e @ Error::Internal { .. } => {
                let m = e.chain();
                tracing::error!("answering INTERNAL: {m}");
                Status::internal(m)
            }
            e @ Error::Corrupt { .. } => {
                let m = e.chain();
                tracing::error!("answering DATA_LOSS: {m}");
                Status::data_loss(m)
            }
            Error::Incompatible(m) => Status::failed_precondition(m),
            e @ Error::Unsupported { .. } => Status::unimplemented(e.to_string()),
            // Not a fault of the request: this tracker lost its mastership.
            e @ Error::Fenced { .. } => Status::aborted(e.to_string()),
            Error::ShuttingDown => Status::unavailable("the JobTracker is shutting down"),
            Error::Config(m) => Status::internal(format!("config: {m}")),
            Error::Io(e) => Status::internal(e.to_string()),
            Error::Transport(e) => Status::internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn io(kind: std::io::ErrorKind, m: &str) -> std::io::Error {
        std::io::Error::new(kind, m)
    }

    #[test]
    fn each_kind_of_error_reaches_the_caller_with_its_own_code() {
        let cases: Vec<(Error, Code)> = vec![
            (
                ValidationError::new("task_id", "is empty").into(),
                Code::InvalidArgument,
            ),
            (Error::NotFound("j1".into()), Code::NotFound),
            (
                Error::WrongState("job j1 is already succeeded".into()),
                Code::FailedPrecondition,
            ),
            (
                Error::unavailable(
                    "writing to the data directory",
                    io(std::io::ErrorKind::Other, "disk gone"),
                ),
                Code::Unavailable,
            ),
            (
                Error::internal("encoding a record", "depth limit exceeded"),
                Code::Internal,
            ),
            (
                Error::Internal {
                    context: "the write thread has stopped".into(),
                    source: None,
                },
                Code::Internal,
            ),
            (
                Error::corrupt("jabc", "unexpected end of input"),
                Code::DataLoss,
            ),
            (
                Error::Incompatible("written with store schema 9".into()),
                Code::FailedPrecondition,
            ),
            (
                Error::Unsupported {
                    backend: "MongoDB",
                    feature: "operator verbs".into(),
                },
                Code::Unimplemented,
            ),
            (Error::ShuttingDown, Code::Unavailable),
            (
                Error::Fenced {
                    term: 5,
                    current: 6,
                },
                Code::Aborted,
            ),
        ];
        for (e, code) in cases {
            let shown = e.to_string();
            let status = tonic::Status::from(e);
            assert_eq!(status.code(), code, "{shown}");
            assert!(status.message().contains(&shown), "{shown} -> {status:?}");
        }
    }

    #[test]
    fn an_encoding_failure_is_not_a_retry() {
        let status = tonic::Status::from(Error::internal(
            "encoding a record",
            "a map key is not a string",
        ));
        assert_eq!(status.code(), Code::Internal);
        assert!(
            status.message().contains("a map key is not a string"),
            "the cause reaches the report: {}",
            status.message()
        );
    }

    #[test]
    fn store_errors_keep_their_cause() {
        let e = Error::unavailable(
            "flushing the data directory",
            io(std::io::ErrorKind::StorageFull, "no space left"),
        );
        let source = std::error::Error::source(&e).expect("a source");
        assert_eq!(source.to_string(), "no space left");
        assert_eq!(
            e.chain(),
            "job store unavailable: flushing the data directory: no space left"
        );
        let unsupported = Error::Unsupported {
            backend: "MongoDB",
            feature: "cron schedules".into(),
        };
        assert_eq!(
            unsupported.to_string(),
            "the MongoDB store does not support cron schedules"
        );
    }
}
