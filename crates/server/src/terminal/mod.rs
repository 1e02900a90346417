//! The SSH terminal bridge: a browser's WebSocket joined to a russh client session on a
//! router, for the portal's Terminal button. The server connects to the router itself
//! (its tunnel address and stored SSH port) with the login of a transient access made
//! for the signed-in user, so no gateway port is opened; closing the terminal revokes
//! that access. Every session is recorded in asciicast v2, in the store, as it runs.
//!
//! - [`protocol`]: the messages over the WebSocket, checked (the browser is not trusted).
//! - [`asciicast`]: the recording format, sans I/O.
//! - `bridge`: one session: wait for the grant, connect, pump both ways, end.
//! - [`Terminals`]: the sessions of this process: a cap, and the end of them all at
//!   shutdown.
//!
//! The router's host key is not pinned: Postern has no record of it, and the bridge
//! reaches the router over its management tunnel, whose own authentication is what
//! identifies the router (as for the orchestrator's API connections). The key's
//! fingerprint is written to the audit entry of each session.

pub mod asciicast;
mod bridge;
pub mod protocol;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

pub use bridge::{Ticket, abandoned, revoke_unopened, run};

/// At most this many terminal sessions at once per server process.
pub const MAX_SESSIONS: usize = 64;
/// A terminal no browser opened this long after its button was pressed is ended.
pub const OPEN_WITHIN: Duration = Duration::from_secs(120);
/// A recording stops (and its session ends) at this size.
pub const RECORDING_CAP: usize = 8 * 1024 * 1024;

/// The terminal sessions this process runs: a slot each, and a signal that ends them.
#[derive(Clone)]
pub struct Terminals {
    slots: Arc<Semaphore>,
    max: u32,
    stop: Arc<watch::Sender<bool>>,
}

impl Default for Terminals {
    fn default() -> Self {
        Self::new(MAX_SESSIONS)
    }
}

impl Terminals {
    pub fn new(max: usize) -> Self {
        let max = u32::try_from(max.clamp(1, 10_000)).unwrap_or(64);
        Self {
            slots: Arc::new(Semaphore::new(max as usize)),
            max,
            stop: Arc::new(watch::channel(false).0),
        }
    }

    /// A slot for a new session, unless every one is taken or the server is stopping.
    pub fn slot(&self) -> Option<OwnedSemaphorePermit> {
        if *self.stop.borrow() {
            return None;
        }
        self.slots.clone().try_acquire_owned().ok()
    }

    /// Changes to true when the server stops.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Tells every session to end (each revokes its access and closes its recording).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Ends every session and waits up to `grace` for them.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop();
        let all = self.slots.acquire_many(self.max);
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!("terminal sessions still open at shutdown");
        }
    }
}
