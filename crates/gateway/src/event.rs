//! What the gateway reports: refused and forwarded connections with their byte counts,
//! and grants that ended. The caller turns these into audit entries, `authorized_at`
//! (the first allowed connection) and the connections list of the API.
//!
//! Events go to a bounded `tokio::sync::mpsc` channel. The data path never waits for the
//! reader: when the channel is full the event is dropped and counted
//! ([`crate::Gateway::events_dropped`]); what matters most is also kept in the gateway's
//! state ([`crate::GrantInfo::first_connection_at`], [`crate::Gateway::connections`]).

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;

use crate::GrantKey;

/// A forwarded connection, unique within one gateway (a counter, not a secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// Why a connection was closed without being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source is outside `allow_from` (and not private with `allow_rfc1918`).
    SourceNotAllowed,
    /// The grant or the gateway is at its connection cap.
    TooManyConnections,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::SourceNotAllowed => "source not allowed",
            Refusal::TooManyConnections => "too many connections",
        })
    }
}

/// How a forwarded connection, or a whole grant, ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    /// Both sides closed their end.
    Finished,
    /// The grant was revoked (`Gateway::close`).
    Revoked,
    /// The grant's deadline passed.
    Expired,
    /// The gateway shut down.
    Shutdown,
    /// The target did not accept the connection in time.
    TargetUnreachable,
    /// An I/O error on either side (reset by peer and the like).
    Error(String),
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EndReason::Finished => f.write_str("finished"),
            EndReason::Revoked => f.write_str("revoked"),
            EndReason::Expired => f.write_str("expired"),
            EndReason::Shutdown => f.write_str("shutdown"),
            EndReason::TargetUnreachable => f.write_str("target unreachable"),
            EndReason::Error(e) => write!(f, "error: {e}"),
        }
    }
}

/// How a connection's bytes were moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    /// Both directions through `splice(2)` (Linux).
    Splice,
    /// At least one direction through a userspace buffer.
    Copy,
}

/// Something the gateway did, for the audit log and the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection was closed at once, no byte sent.
    ConnectionRefused {
        key: GrantKey,
        source: SocketAddr,
        at: DateTime<Utc>,
        refusal: Refusal,
    },
    /// An allowed connection is being forwarded. `first` marks the grant's first allowed
    /// connection: its `at` is the grant's `authorized_at`.
    ConnectionOpened {
        key: GrantKey,
        id: ConnectionId,
        source: SocketAddr,
        at: DateTime<Utc>,
        first: bool,
    },
    /// A forwarded connection ended at `at`; it started at `started_at` (its
    /// `ConnectionOpened`'s `at`). `bytes_in` went from the client to the target,
    /// `bytes_out` from the target to the client.
    ConnectionClosed {
        key: GrantKey,
        id: ConnectionId,
        source: SocketAddr,
        started_at: DateTime<Utc>,
        at: DateTime<Utc>,
        bytes_in: u64,
        bytes_out: u64,
        duration: Duration,
        reason: EndReason,
        transfer: Transfer,
    },
    /// A grant's listener is closed and its connections are gone (after their
    /// `ConnectionClosed` events).
    GrantClosed {
        key: GrantKey,
        at: DateTime<Utc>,
        reason: EndReason,
        connections_killed: usize,
    },
}

impl Event {
    /// The grant the event is about.
    pub fn key(&self) -> GrantKey {
        match self {
            Event::ConnectionRefused { key, .. }
            | Event::ConnectionOpened { key, .. }
            | Event::ConnectionClosed { key, .. }
            | Event::GrantClosed { key, .. } => *key,
        }
    }
}

/// The sending side: never waits, drops and counts when full.
#[derive(Debug)]
pub(crate) struct EventSink {
    tx: mpsc::Sender<Event>,
    dropped: AtomicU64,
}

impl EventSink {
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let sink = Self {
            tx,
            dropped: AtomicU64::new(0),
        };
        (sink, rx)
    }

    pub(crate) fn emit(&self, event: Event) {
        match self.tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            // Nobody listens: nothing to count.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::AccessId;

    #[test]
    fn full_channel_drops_and_counts_without_blocking() {
        let (sink, mut rx) = EventSink::new(2);
        let key = GrantKey::Access(AccessId::new());
        let event = Event::GrantClosed {
            key,
            at: Utc::now(),
            reason: EndReason::Revoked,
            connections_killed: 0,
        };
        for _ in 0..5 {
            sink.emit(event.clone());
        }
        assert_eq!(sink.dropped(), 3);
        assert_eq!(rx.try_recv().unwrap().key(), key);
        assert_eq!(rx.try_recv().unwrap(), event);
        assert!(rx.try_recv().is_err());
        drop(rx);
        sink.emit(event);
        assert_eq!(sink.dropped(), 3);
    }

    #[test]
    fn reasons_read_well() {
        assert_eq!(
            EndReason::TargetUnreachable.to_string(),
            "target unreachable"
        );
        assert_eq!(
            EndReason::Error("connection reset by peer".into()).to_string(),
            "error: connection reset by peer"
        );
        assert_eq!(Refusal::SourceNotAllowed.to_string(), "source not allowed");
        assert_eq!(ConnectionId(42).to_string(), "c42");
    }
}
