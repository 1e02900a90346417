//! The SSH terminal bridge: a browser's WebSocket joined to a russh client session on a
//! router, for the portal's Terminal button. The server connects to the router itself
//! (its tunnel address and stored SSH port) with the login of a transient access made
//! for the signed-in user, so no gateway port is opened; closing the terminal revokes
//! that access. Every session is recorded in asciicast v2, in the store, as it runs.
//!
//! - [`protocol`]: the messages over the WebSocket, checked (the browser is not trusted).
//! - [`asciicast`]: the recording format, sans I/O.
//! - `bridge`: one session: wait for the grant, connect, pump both ways, end.
//! - [`Terminals`]: the sessions of this process: a cap, the end of them all at
//!   shutdown, and the end of a portal session's own at its logout.
//!
//! A terminal lives no longer than the portal session that opened it: logout ends the
//! session's terminals in this process at once, and every terminal checks its session
//! in the store every [`SESSION_CHECK`] (logout in another process, expiry, a disabled
//! user), ending when it is no longer live.
//!
//! The router's host key is not pinned: Postern has no record of it, and the bridge
//! reaches the router over its management tunnel, whose own authentication is what
//! identifies the router (as for the orchestrator's API connections). The key's
//! fingerprint is written to the audit entry of each session.

pub mod asciicast;
mod bridge;
pub mod protocol;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};

pub use bridge::{Ticket, abandoned, revoke_unopened, run};

/// At most this many terminal sessions at once per server process.
pub const MAX_SESSIONS: usize = 64;
/// At most this many at once per user (of an organisation), so one user cannot take
/// every slot.
pub const MAX_PER_USER: usize = 4;
/// A terminal no browser opened this long after its button was pressed is ended.
pub const OPEN_WITHIN: Duration = Duration::from_secs(120);
/// A recording stops (and its session ends) at this size.
pub const RECORDING_CAP: usize = 8 * 1024 * 1024;
/// A running terminal checks that its portal session is still live this often.
pub const SESSION_CHECK: Duration = Duration::from_secs(3);
/// Logouts not yet seen by every terminal before older ones are dropped (a terminal
/// that misses some checks its session in the store instead).
const LOGOUTS_QUEUED: usize = 64;

/// The terminal sessions this process runs: a slot each, and a signal that ends them.
#[derive(Clone)]
pub struct Terminals {
    slots: Arc<Semaphore>,
    max: u32,
    /// Open sessions per user key (organisation and user name).
    users: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<watch::Sender<bool>>,
    /// The hashes of portal sessions logged out in this process.
    logouts: broadcast::Sender<String>,
}

/// A session's place: under the process's cap and its user's; given back when dropped.
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    users: Arc<Mutex<HashMap<String, usize>>>,
    user: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut users) = self.users.lock()
            && let Some(n) = users.get_mut(&self.user)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                users.remove(&self.user);
            }
        }
    }
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
            users: Arc::default(),
            stop: Arc::new(watch::channel(false).0),
            logouts: broadcast::channel(LOGOUTS_QUEUED).0,
        }
    }

    /// A slot for a new session of `user`, unless the process's or the user's are all
    /// taken, or the server is stopping.
    pub fn slot(&self, user: &str) -> Option<Slot> {
        if *self.stop.borrow() {
            return None;
        }
        let mut users = self.users.lock().ok()?;
        let open = users.entry(user.to_owned()).or_insert(0);
        if *open >= MAX_PER_USER {
            return None;
        }
        let permit = self.slots.clone().try_acquire_owned().ok()?;
        *open += 1;
        Some(Slot {
            _permit: permit,
            users: self.users.clone(),
            user: user.to_owned(),
        })
    }

    /// Changes to true when the server stops.
    pub fn stopping(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Tells every session to end (each revokes its access and closes its recording).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// The portal sessions logged out from now on, by hash.
    pub fn logouts(&self) -> broadcast::Receiver<String> {
        self.logouts.subscribe()
    }

    /// Tells the terminals of the portal session `id_hash` to end (it was logged out).
    pub fn end_session(&self, id_hash: &str) {
        // No receiver means no terminal is running: nothing to tell.
        let _ = self.logouts.send(id_hash.to_owned());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_process_and_per_user() {
        let t = Terminals::new(6);
        let alice: Vec<Slot> = (0..MAX_PER_USER)
            .map(|_| t.slot("o/alice").unwrap())
            .collect();
        assert!(t.slot("o/alice").is_none(), "alice has her four");
        let bob = t.slot("o/bob").unwrap();
        let bob2 = t.slot("o/bob").unwrap();
        assert!(t.slot("o/carol").is_none(), "the process has its six");
        drop(bob);
        assert!(t.slot("o/alice").is_none());
        let carol = t.slot("o/carol").unwrap();
        drop(alice);
        assert!(t.slot("o/alice").is_some(), "slots come back when dropped");
        t.stop();
        assert!(t.slot("o/dave").is_none(), "none once stopping");
        drop((bob2, carol));
    }
}
