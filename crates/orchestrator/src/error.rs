//! The orchestrator's error type: what failed in an attempt, in words for the log.

/// Why a job attempt or an orchestrator call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// The router could not be reached or the connection broke.
    #[error("router unreachable: {0}")]
    Unreachable(String),
    /// The router refused a command (its `!trap` message) or answered oddly.
    #[error("{0}")]
    Router(String),
    /// The job cannot succeed whatever the number of attempts (bad payload, unknown kind).
    #[error("{0}")]
    Permanent(String),
}

impl Error {
    /// A routeros error, classified: connection problems are `Unreachable`.
    pub fn from_router(e: routeros::Error) -> Self {
        if e.is_connection_error() || matches!(e, routeros::Error::Timeout(_)) {
            Error::Unreachable(e.to_string())
        } else if let routeros::Error::Trap { message, .. } = &e {
            Error::Router(format!("the router refused: {message}"))
        } else {
            Error::Router(e.to_string())
        }
    }

    /// Whether another attempt cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Permanent(_))
    }
}

/// The orchestrator's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
