//! What can go wrong talking to the JobTrackers.

/// An error of the JobClient library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A JobTracker address cannot be used (the error names it and says
    /// why; an `https://` address is refused while no CA is configured).
    #[error(transparent)]
    InvalidAddress(#[from] lts_common::endpoint::EndpointError),

    /// No JobTracker address was given.
    #[error("no JobTracker address given")]
    NoAddresses,

    /// The cluster's ZooKeeper could not be used (unreachable, a bad
    /// connect string or cluster name, a refused registration).
    #[error("cluster: {0}")]
    Cluster(#[from] lts_cluster::ClusterError),

    /// No JobTracker could be reached. Nothing was done; the call may be
    /// retried later (a spooling client keeps the submission meanwhile).
    #[error("no JobTracker reachable (tried {}): {last_error}", .tried.join(", "))]
    Unavailable {
        /// The addresses tried, in order.
        tried: Vec<String>,
        /// What the last attempt said.
        last_error: String,
    },

    /// The JobTracker answered with an error.
    #[error("JobTracker {address} refused: {code:?}: {message}")]
    Status {
        /// The tracker that answered.
        address: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// Its message, meant for people.
        message: String,
    },

    /// The JobTracker sent something this client cannot read, e.g. a reply
    /// of a different protocol version.
    #[error("JobTracker {address} sent an unreadable reply: {reason}")]
    InvalidResponse {
        /// The tracker that answered.
        address: String,
        /// What is wrong with the reply.
        reason: String,
    },

    /// A large submit went as several requests and a later one failed.
    /// The jobs after `submitted` were not stored by this call.
    #[error("{} jobs submitted, then: {source}", .submitted.len())]
    PartialSubmit {
        /// Outcomes of the first jobs, in order.
        submitted: Vec<crate::SubmitOutcome>,
        /// Why the rest were not submitted.
        source: Box<Error>,
    },

    /// An ack could not be sent because the feedback stream broke. The
    /// tracker will deliver those items again.
    #[error(
        "the feedback stream to {address} broke before the ack was sent; the items will come again"
    )]
    AckLost {
        /// The tracker of the broken stream.
        address: String,
    },

    /// A feedback subscription was finished, but the tracker did not end the
    /// stream cleanly, so the acks sent on it may not have been handled.
    /// Those items may come again.
    #[error(
        "the feedback stream to {address} ended without confirming the acks ({reason}); \
         the items acked on it may come again"
    )]
    AcksUnconfirmed {
        /// The tracker of the stream.
        address: String,
        /// How the stream ended.
        reason: String,
    },

    /// The spool cannot take the batch: it would pass a limit. Nothing of
    /// the batch was spooled; what the spool holds is kept.
    #[error("the spool {} is full (limit {limit}); the batch was not spooled, the spooled jobs are kept", .dir.display())]
    SpoolFull {
        /// The spool directory.
        dir: std::path::PathBuf,
        /// The limit reached, with what the spool holds.
        limit: String,
    },

    /// Another client (in this process or another) holds the spool
    /// directory.
    #[error("the spool {} is in use by another client", .dir.display())]
    SpoolInUse {
        /// The spool directory.
        dir: std::path::PathBuf,
    },

    /// The spool could not be read or written.
    #[error("spool {}: {context}: {reason}", .dir.display())]
    Spool {
        /// The spool directory.
        dir: std::path::PathBuf,
        /// What the spool was doing.
        context: String,
        /// What failed.
        reason: String,
    },

    /// A feedback subscription was used after it was closed.
    #[error("the feedback subscription is closed")]
    SubscriptionClosed,
}

impl Error {
    /// This error again, for each of the submits that shared the call
    /// that failed (see [`crate::coalesce`]): the same variant with the
    /// same fields; a cluster error, which cannot be copied, as
    /// [`Error::Unavailable`] with its text.
    pub(crate) fn for_each_caller(&self) -> Error {
        match self {
            Error::InvalidAddress(e) => Error::InvalidAddress(e.clone()),
            Error::NoAddresses => Error::NoAddresses,
            Error::Cluster(e) => Error::Unavailable {
                tried: Vec::new(),
                last_error: format!("cluster: {e}"),
            },
            Error::Unavailable { tried, last_error } => Error::Unavailable {
                tried: tried.clone(),
                last_error: last_error.clone(),
            },
            Error::Status {
                address,
                code,
                message,
            } => Error::Status {
                address: address.clone(),
                code: *code,
                message: message.clone(),
            },
            Error::InvalidResponse { address, reason } => Error::InvalidResponse {
                address: address.clone(),
                reason: reason.clone(),
            },
            Error::PartialSubmit { submitted, source } => Error::PartialSubmit {
                submitted: submitted.clone(),
                source: Box::new(source.for_each_caller()),
            },
            Error::AckLost { address } => Error::AckLost {
                address: address.clone(),
            },
            Error::AcksUnconfirmed { address, reason } => Error::AcksUnconfirmed {
                address: address.clone(),
                reason: reason.clone(),
            },
            Error::SpoolFull { dir, limit } => Error::SpoolFull {
                dir: dir.clone(),
                limit: limit.clone(),
            },
            Error::SpoolInUse { dir } => Error::SpoolInUse { dir: dir.clone() },
            Error::Spool {
                dir,
                context,
                reason,
            } => Error::Spool {
                dir: dir.clone(),
                context: context.clone(),
                reason: reason.clone(),
            },
            Error::SubscriptionClosed => Error::SubscriptionClosed,
        }
    }

    /// The gRPC code of a [`Error::Status`], if it is one.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Status { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the job or object asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        self.code() == Some(tonic::Code::NotFound)
    }

    /// Whether no tracker could be reached. A spooling client keeps its
    /// submission on this error and replays it later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Unavailable { .. } => true,
            Error::PartialSubmit { source, .. } => source.is_unavailable(),
            _ => false,
        }
    }

    pub(crate) fn from_status(address: &str, status: tonic::Status) -> Self {
        Error::Status {
            address: address.to_string(),
            code: status.code(),
            message: status.message().to_string(),
        }
    }
}

/// The result of a JobClient call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
