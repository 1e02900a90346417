//! What the gateway reports: refused and forwarded connections with their byte counts,
//! and grants that ended. The caller turns these into audit entries, `authorized_at`
//! (the first allowed connection) and the connections list of the API.
//!
//! Events go, in the order they happen, to one queue ([`Events`]) that the data path
//! never waits on. Ends are never lost: `ConnectionClosed`, `GrantClosed` and a grant's
//! first `ConnectionOpened` (its `authorized_at`) are always queued. The others, other
//! openings and refusals, count against `event_capacity`: beyond it they are dropped and
//! counted ([`crate::Gateway::events_dropped`]), so a reader that falls behind costs
//! memory only for ends (one per connection that closed, a few hundred bytes each),
//! while a flood of refused sources costs nothing. A closing event carries everything
//! of its connection (source, start, bytes, reason), so the reader can record a
//! connection whose opening it never saw.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// The grant (its entry port) or the gateway is at its connection cap.
    TooManyConnections,
    /// The source address is at its cap of live connections over every entry port.
    TooManyFromSource,
}

impl Refusal {
    /// Every refusal, in order.
    pub const ALL: [Refusal; 3] = [
        Refusal::SourceNotAllowed,
        Refusal::TooManyConnections,
        Refusal::TooManyFromSource,
    ];

    /// Its place in [`Refusal::ALL`].
    pub fn index(self) -> usize {
        match self {
            Refusal::SourceNotAllowed => 0,
            Refusal::TooManyConnections => 1,
            Refusal::TooManyFromSource => 2,
        }
    }

    /// A short name for metrics labels.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::SourceNotAllowed => "source_not_allowed",
            Refusal::TooManyConnections => "connection_cap",
            Refusal::TooManyFromSource => "source_cap",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::SourceNotAllowed => "source not allowed",
            Refusal::TooManyConnections => "too many connections",
            Refusal::TooManyFromSource => "too many connections from this source",
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

impl Event {
    /// Whether the event may be dropped when the reader falls behind: refusals and
    /// openings but a grant's first. Ends never are.
    pub fn droppable(&self) -> bool {
        match self {
            Event::ConnectionRefused { .. } => true,
            Event::ConnectionOpened { first, .. } => !first,
            Event::ConnectionClosed { .. } | Event::GrantClosed { .. } => false,
        }
    }
}

/// The sending side: never waits; drops and counts droppable events beyond capacity.
#[derive(Debug)]
pub(crate) struct EventSink {
    tx: mpsc::UnboundedSender<Event>,
    /// Droppable events in the queue now.
    queued: Arc<AtomicUsize>,
    capacity: usize,
    dropped: AtomicU64,
}

/// The receiving side of a gateway's events, in the order they happened.
#[derive(Debug)]
pub struct Events {
    rx: mpsc::UnboundedReceiver<Event>,
    queued: Arc<AtomicUsize>,
}

impl Events {
    /// The next event; `None` once the gateway is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Event> {
        let event = self.rx.recv().await?;
        Some(self.taken(event))
    }

    /// The next event if one is queued now.
    pub fn try_recv(&mut self) -> Option<Event> {
        let event = self.rx.try_recv().ok()?;
        Some(self.taken(event))
    }

    /// Events queued now, ends included.
    pub fn len(&self) -> usize {
        self.rx.len()
    }

    /// Whether no event is queued now.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    fn taken(&self, event: Event) -> Event {
        if event.droppable() {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
        event
    }
}

impl EventSink {
    pub(crate) fn new(capacity: usize) -> (Self, Events) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let sink = Self {
            tx,
            queued: queued.clone(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        };
        (sink, Events { rx, queued })
    }

    pub(crate) fn emit(&self, event: Event) {
        let droppable = event.droppable();
        if droppable && self.queued.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if self.tx.send(event).is_err() && droppable {
            // Nobody listens: nothing to count, nothing queued.
            self.queued.fetch_sub(1, Ordering::Relaxed);
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

    fn refused(key: GrantKey) -> Event {
        Event::ConnectionRefused {
            key,
            source: "127.0.0.1:1".parse().unwrap(),
            at: Utc::now(),
            refusal: Refusal::SourceNotAllowed,
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_refusals_but_never_ends() {
        let (sink, mut rx) = EventSink::new(2);
        let key = GrantKey::Access(AccessId::new());
        let closed = Event::GrantClosed {
            key,
            at: Utc::now(),
            reason: EndReason::Revoked,
            connections_killed: 0,
        };
        for _ in 0..5 {
            sink.emit(refused(key));
        }
        for _ in 0..3 {
            sink.emit(closed.clone());
        }
        assert_eq!(sink.dropped(), 3);
        assert_eq!(rx.len(), 5);
        assert!(matches!(
            rx.try_recv(),
            Some(Event::ConnectionRefused { .. })
        ));
        // Taking a droppable event makes room for one more.
        sink.emit(refused(key));
        assert_eq!(sink.dropped(), 3);
        sink.emit(refused(key));
        assert_eq!(sink.dropped(), 4);
        let rest: Vec<Event> = std::iter::from_fn(|| rx.try_recv()).collect();
        assert_eq!(rest.iter().filter(|e| !e.droppable()).count(), 3);
        assert_eq!(rest.len(), 5);
        assert!(rx.is_empty());
        drop(rx);
        sink.emit(refused(key));
        assert_eq!(sink.dropped(), 4);
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
