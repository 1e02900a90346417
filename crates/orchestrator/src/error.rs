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
    /// The router refused a command as one it does not have or cannot take (unknown
    /// command or parameter, invalid value): the same commands will be refused again,
    /// so the job is not retried but shown as stuck, with the router's words.
    #[error("{0}")]
    Refused(String),
    /// The job cannot succeed whatever the number of attempts (bad payload, unknown kind).
    #[error("{0}")]
    Permanent(String),
}

impl Error {
    /// A routeros error, classified: connection problems are `Unreachable`.
    /// Its words are [`neutral`]'s: what the peer said is never repeated.
    pub fn from_router(e: routeros::Error) -> Self {
        if e.is_connection_error() || matches!(e, routeros::Error::Timeout(_)) {
            Error::Unreachable(neutral(&e))
        } else if let routeros::Error::Trap { message, .. } = &e {
            let text = format!("the router refused: {message}");
            if is_refusal(message) {
                Error::Refused(text)
            } else {
                Error::Router(text)
            }
        } else {
            Error::Router(neutral(&e))
        }
    }

    /// Whether another attempt cannot help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Permanent(_))
    }
}

/// A routeros error in words that repeat nothing the peer said nor how its connection
/// failed, for the job log and a job's last error, which operators read: a "router" at
/// an address of someone's choosing must not turn them into a port scanner
/// (`connection refused` against `protocol error … (103 bytes left over)`). A
/// RouterOS `!trap` message is the router's own and stays; the details go to the
/// server's log (`tracing`), which only the people running Postern read.
pub fn neutral(e: &routeros::Error) -> String {
    use routeros::Error as E;
    match e {
        E::Connect { .. }
        | E::ConnectTimeout { .. }
        | E::Tls { .. }
        | E::Io(_)
        | E::Decode(_)
        | E::Protocol(_)
        | E::ConnectionLost { .. }
        | E::Fatal { .. } => "no RouterOS API answered as expected".into(),
        E::Login { .. } => "the router refused the login".into(),
        E::Trap { message, .. } => format!("the router refused: {message}"),
        E::Timeout(after) => format!("the command timed out after {after:?}"),
        E::Cancelled => "the command was cancelled".into(),
        E::TlsConfig(_) => "the router's TLS settings cannot be used".into(),
        E::Encode(_) => "the command could not be encoded".into(),
        E::MissingProperty(_) | E::InvalidProperty { .. } => {
            "the router's answer was not understood".into()
        }
    }
}

/// Whether a router's `!trap` message says the command itself is wrong for this
/// router (RouterOS's words for an unknown menu or command, an unknown parameter, a
/// value it cannot take, a script it cannot compile), rather than something that may
/// pass another time (an item not there yet, a busy router).
pub fn is_refusal(message: &str) -> bool {
    // Not "input does not match any value of …": the values it means may come (a
    // group Postern makes again), so that one is retried.
    const WORDS: [&str; 7] = [
        "no such command",
        "unknown parameter",
        "invalid value",
        "expected end of command",
        "bad command name",
        "missing value(s) of argument",
        "ambiguous value",
    ];
    WORDS.iter().any(|w| message.contains(w))
}

/// The orchestrator's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
