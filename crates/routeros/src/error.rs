//! The crate's one error type: everything a connection, a login or a command can fail with.
//!
//! No variant ever carries a password: login failures carry the router's message only.

use std::io;
use std::time::Duration;

use crate::codec::{DecodeError, EncodeError};
use crate::message::TrapCategory;

/// Why talking to a router failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TCP connection could not be made.
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: io::Error,
    },
    /// Connecting, the TLS handshake and the login together took longer than allowed.
    #[error("connecting to {address} timed out after {after:?}")]
    ConnectTimeout { address: String, after: Duration },
    /// The TLS handshake failed (a certificate that does not match the pin, for one).
    #[error("tls handshake with {address} failed: {source}")]
    Tls {
        address: String,
        #[source]
        source: io::Error,
    },
    /// The TLS settings cannot be used (a pin that is not a certificate or a fingerprint).
    #[error("invalid tls settings: {0}")]
    TlsConfig(String),
    /// The router refused the login; `message` is the router's, such as
    /// `invalid user name or password (6)`.
    #[error("login failed: {message}")]
    Login { message: String },
    /// The router answered the command with `!trap`.
    #[error("router refused the command: {message}")]
    Trap {
        message: String,
        category: Option<TrapCategory>,
    },
    /// The command was cancelled (`/cancel`) and the router interrupted it.
    #[error("command cancelled")]
    Cancelled,
    /// The command did not finish in time; it was cancelled on the router.
    #[error("command timed out after {0:?}")]
    Timeout(Duration),
    /// The connection is gone (end of stream, reset, a protocol violation, or closed by
    /// this side); every command waiting on it, and every later one, fails with this.
    #[error("connection lost: {reason}")]
    ConnectionLost { reason: String },
    /// The router sent `!fatal` and closed the connection.
    #[error("router closed the connection: {message}")]
    Fatal { message: String },
    /// Reading or writing the stream failed.
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    /// The peer sent bytes that are not a sentence.
    #[error("protocol error: {0}")]
    Decode(#[from] DecodeError),
    /// A command could not be encoded.
    #[error("cannot encode command: {0}")]
    Encode(#[from] EncodeError),
    /// The router answered with something the protocol does not allow here.
    #[error("unexpected reply: {0}")]
    Protocol(String),
    /// A reply lacks a property a typed helper needs.
    #[error("reply lacks property {0:?}")]
    MissingProperty(String),
    /// A property's value cannot be read as the type a typed helper needs.
    #[error("property {key:?} has invalid value {value:?}")]
    InvalidProperty { key: String, value: String },
}

impl Error {
    /// Whether the connection is unusable after this error (a new connection is needed).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::ConnectionLost { .. }
                | Error::Fatal { .. }
                | Error::Io(_)
                | Error::Decode(_)
                | Error::Connect { .. }
                | Error::ConnectTimeout { .. }
                | Error::Tls { .. }
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
