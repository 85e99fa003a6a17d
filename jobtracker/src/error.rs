//! Errors of the JobTracker and how they reach callers.

use lts_common::ValidationError;

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
    /// The store failed; the request may be retried.
    #[error("job store: {0}")]
    Store(String),
    /// A stored record could not be read.
    #[error("stored record {key} cannot be decoded: {message}")]
    Corrupt {
        /// Key of the record.
        key: String,
        /// What the decoder said.
        message: String,
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

impl From<::sled::Error> for Error {
    fn from(e: ::sled::Error) -> Self {
        Error::Store(e.to_string())
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        use tonic::Status;
        match e {
            Error::Invalid(v) => Status::invalid_argument(v.to_string()),
            Error::NotFound(id) => Status::not_found(format!("no job with id {id}")),
            Error::WrongState(m) => Status::failed_precondition(m),
            // The caller may retry: the store may be back by then.
            Error::Store(m) => Status::unavailable(format!("job store: {m}")),
            Error::Corrupt { key, message } => {
                Status::data_loss(format!("stored record {key} cannot be decoded: {message}"))
            }
            Error::ShuttingDown => Status::unavailable("the JobTracker is shutting down"),
            Error::Config(m) => Status::internal(format!("config: {m}")),
            Error::Io(e) => Status::internal(e.to_string()),
            Error::Transport(e) => Status::internal(e.to_string()),
        }
    }
}
