//! Fault injection a test turns on and off while the router runs: added latency before
//! every API reply, going offline (existing connections cut, new ones reset at once),
//! and dropping an API connection in the middle of a command.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Where a dropped command is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropPoint {
    /// The command is received, never applied, and the connection is closed.
    BeforeApply,
    /// The command is applied (a user is added, say), then the connection is closed
    /// before the reply: the case that makes a client's retry meet its own work.
    AfterApply,
}

/// The fault switches of one router. Every switch takes effect at once.
#[derive(Debug)]
pub struct Faults {
    latency_us: AtomicU64,
    offline: AtomicBool,
    drop_point: AtomicU8,
    /// Cancelled when the router goes offline; every connection's token is a child.
    epoch: Mutex<CancellationToken>,
    /// Commands answered as a router without them answers (`no such command or
    /// directory`), as an older or newer RouterOS may lack what a client sends.
    missing: Mutex<Vec<String>>,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            latency_us: AtomicU64::new(0),
            offline: AtomicBool::new(false),
            drop_point: AtomicU8::new(0),
            epoch: Mutex::new(CancellationToken::new()),
            missing: Mutex::new(Vec::new()),
        }
    }
}

impl Faults {
    /// Waits this long before each API reply sentence (zero turns it off).
    pub fn set_latency(&self, latency: Duration) {
        self.latency_us.store(
            latency.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::SeqCst,
        );
    }

    pub fn latency(&self) -> Duration {
        Duration::from_micros(self.latency_us.load(Ordering::SeqCst))
    }

    /// Offline: every live connection of every service (API, TLS, SSH, 8291, dst-nat
    /// forwards) is cut now, and new ones are accepted and reset at once. The WireGuard
    /// tunnel falls silent (no datagram in or out, as a router without power or link),
    /// and carries on with its session once back online.
    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
        if offline {
            let mut epoch = self.epoch.lock().unwrap_or_else(|e| e.into_inner());
            epoch.cancel();
            *epoch = CancellationToken::new();
        }
    }

    pub fn is_offline(&self) -> bool {
        self.offline.load(Ordering::SeqCst)
    }

    /// Drops API connections at `point` of every command from now on (`None`: off).
    pub fn set_drop_commands(&self, point: Option<DropPoint>) {
        let v = match point {
            None => 0,
            Some(DropPoint::BeforeApply) => 1,
            Some(DropPoint::AfterApply) => 2,
        };
        self.drop_point.store(v, Ordering::SeqCst);
    }

    pub fn drop_commands(&self) -> Option<DropPoint> {
        match self.drop_point.load(Ordering::SeqCst) {
            1 => Some(DropPoint::BeforeApply),
            2 => Some(DropPoint::AfterApply),
            _ => None,
        }
    }

    /// A token for a new connection, cancelled when the router goes offline.
    pub fn connection_token(&self) -> CancellationToken {
        self.epoch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .child_token()
    }

    /// Answers the API command `path` (`/user/remove`) as a RouterOS without it would:
    /// `no such command or directory (remove)`.
    pub fn set_missing_command(&self, path: &str) {
        self.missing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(path.to_string());
    }

    /// Whether `path` is one of the commands made missing.
    pub fn is_missing(&self, path: &str) -> bool {
        self.missing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|p| p == path)
    }

    /// Clears every fault.
    pub fn clear(&self) {
        self.set_latency(Duration::ZERO);
        self.set_offline(false);
        self.set_drop_commands(None);
        self.missing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}
