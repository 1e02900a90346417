//! The [`Gateway`] handle and what runs behind it: one accept loop per grant (which also
//! holds the grant's deadline timer), one task per forwarded connection, and the kill.
//!
//! Ending a grant, by [`Gateway::close`], by its deadline, or by [`Gateway::shutdown`],
//! goes through one path: the grant leaves the table (so it ends once), its cancellation
//! token fires, the accept loop drops the listener, every connection task sets
//! `SO_LINGER` 0 on both sockets and drops them (the client sees a reset at once), and
//! any task that has not finished within `kill_grace` is aborted. Each connection task
//! carries a guard that reports `ConnectionClosed` however the task ends, so the counts
//! are never lost, then `GrantClosed` follows.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{Clock, SystemClock};
use crate::conn::{self, Counters, Pumps};
use crate::event::{ConnectionId, EndReason, Event, EventSink, Events, Refusal, Transfer};
use crate::{Error, ForwardSpec, GrantKey, SourcePolicy, Target};

/// How allowed connections move their bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferMode {
    /// `splice(2)` through a pipe (Linux), falling back to [`TransferMode::Copy`] per
    /// direction when the kernel refuses it (`EINVAL`, `ENOSYS`) or no pipe can be made.
    Splice,
    /// A userspace buffer, everywhere.
    Copy,
}

impl Default for TransferMode {
    fn default() -> Self {
        if cfg!(target_os = "linux") {
            TransferMode::Splice
        } else {
            TransferMode::Copy
        }
    }
}

/// Tuning of a gateway. `Config::default()` suits production.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a connection to the target may take before the client is closed with
    /// `TargetUnreachable`.
    pub connect_timeout: Duration,
    /// Live forwarded connections one grant may have; beyond, new ones are refused.
    pub max_connections_per_grant: usize,
    /// Live forwarded connections of the whole gateway.
    pub max_connections: usize,
    /// Room in the event queue for droppable events (refusals, openings but a grant's
    /// first); beyond, they are dropped and counted. Ends are always queued.
    pub event_capacity: usize,
    /// Splice or copy.
    pub transfer: TransferMode,
    /// The size a splice pipe grows to once a read fills half of it (bulk traffic);
    /// `None` keeps every pipe at the kernel's default (64 KiB). Pipes start at the
    /// default, are borrowed per burst and go back to the pool shrunk to the default, so
    /// this costs nothing per idle connection. The kernel caps it at
    /// `/proc/sys/fs/pipe-max-size` (1 MiB by default) and, for an unprivileged user
    /// over its pipe quota (`pipe-user-pages-soft`), refuses it: the pipe then stays as
    /// it is.
    pub pipe_size: Option<usize>,
    /// How long a killed connection's task has to finish before it is aborted.
    pub kill_grace: Duration,
    /// The listen backlog of each grant's listener.
    pub backlog: u32,
    /// Where event times come from.
    pub clock: Arc<dyn Clock>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            max_connections_per_grant: 256,
            max_connections: 16384,
            event_capacity: 4096,
            transfer: TransferMode::default(),
            pipe_size: Some(1 << 20),
            kill_grace: Duration::from_millis(50),
            backlog: 1024,
            clock: Arc::new(SystemClock),
        }
    }
}

/// A grant's listener, once open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenForward {
    /// The grant.
    pub key: GrantKey,
    /// Where it listens (the actual port when port 0 was asked).
    pub listen: SocketAddr,
}

/// What ending a grant did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReport {
    /// The grant.
    pub key: GrantKey,
    /// Why it ended.
    pub reason: EndReason,
    /// Live connections it had, all now closed.
    pub connections_killed: usize,
}

/// What [`Gateway::shutdown`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Grants closed.
    pub grants: usize,
    /// Live connections killed, over all grants.
    pub connections_killed: usize,
}

/// What [`Gateway::reconcile`] did.
#[derive(Debug, Default)]
pub struct ReconcileReport {
    /// Listeners newly opened.
    pub opened: Vec<OpenForward>,
    /// Grants already open as desired (their deadline updated).
    pub kept: Vec<GrantKey>,
    /// Grants open but not desired, closed as revoked.
    pub closed: Vec<CloseReport>,
    /// Desired grants that could not be opened.
    pub failed: Vec<(GrantKey, Error)>,
}

/// A live grant as seen from outside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantInfo {
    pub key: GrantKey,
    pub listen: SocketAddr,
    pub target: Target,
    pub deadline: Option<Instant>,
    pub opened_at: DateTime<Utc>,
    /// The first allowed connection: the grant's `authorized_at`.
    pub first_connection_at: Option<DateTime<Utc>>,
    /// Live forwarded connections.
    pub connections: usize,
}

/// A live forwarded connection, with its counts so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub id: ConnectionId,
    pub source: SocketAddr,
    pub started_at: DateTime<Utc>,
    pub duration: Duration,
    /// Client → target, so far.
    pub bytes_in: u64,
    /// Target → client, so far.
    pub bytes_out: u64,
}

/// The data plane's handle: cheap to clone, all clones drive the same gateway. Dropping
/// the last clone cancels every grant (as [`Gateway::shutdown`] does, without waiting).
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
    _owner: Arc<Owner>,
}

/// Cancels everything when the last handle goes.
#[derive(Debug)]
struct Owner(CancellationToken);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

#[derive(Debug)]
struct Inner {
    config: Config,
    grants: Mutex<HashMap<GrantKey, Arc<Grant>>>,
    events: EventSink,
    next_id: AtomicU64,
    live: AtomicUsize,
    root: CancellationToken,
    pumps: Pumps,
}

#[derive(Debug)]
struct Grant {
    key: GrantKey,
    /// The address asked for (port 0 allowed) and the one bound.
    requested: SocketAddr,
    listen: SocketAddr,
    /// Where new connections go; moved by [`Gateway::set_target`].
    target: Mutex<Target>,
    sources: SourcePolicy,
    opened_at: DateTime<Utc>,
    deadline: watch::Sender<Option<Instant>>,
    token: CancellationToken,
    end: OnceLock<EndReason>,
    first_at: OnceLock<DateTime<Utc>>,
    conns: Mutex<HashMap<ConnectionId, Conn>>,
    tracker: TaskTracker,
    listener_task: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Conn {
    source: SocketAddr,
    started: Instant,
    started_at: DateTime<Utc>,
    counters: Arc<Counters>,
    abort: Option<AbortHandle>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every critical
/// section here is a single map operation).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Gateway {
    /// A gateway and the receiving end of its events.
    pub fn new(config: Config) -> (Gateway, Events) {
        let (events, rx) = EventSink::new(config.event_capacity);
        let root = CancellationToken::new();
        let inner = Arc::new(Inner {
            grants: Mutex::new(HashMap::new()),
            events,
            next_id: AtomicU64::new(1),
            live: AtomicUsize::new(0),
            root: root.clone(),
            pumps: Pumps::new(config.transfer, config.pipe_size),
            config,
        });
        let gateway = Gateway {
            inner,
            _owner: Arc::new(Owner(root)),
        };
        (gateway, rx)
    }

    /// Opens a grant's listener and starts forwarding. The deadline, if any, is armed
    /// here: at that instant the gateway closes the grant by itself (reason `Expired`).
    pub async fn open(&self, spec: ForwardSpec) -> Result<OpenForward, Error> {
        let key = spec.key;
        if spec.deadline.is_some_and(|d| d <= Instant::now()) {
            return Err(Error::DeadlinePassed { key });
        }
        if lock(&self.inner.grants).contains_key(&key) {
            return Err(Error::AlreadyOpen { key });
        }
        let listener =
            bind(spec.listen, self.inner.config.backlog).map_err(|source| Error::Bind {
                addr: spec.listen,
                source,
            })?;
        let listen = listener.local_addr().map_err(|source| Error::Bind {
            addr: spec.listen,
            source,
        })?;
        let grant = Arc::new(Grant {
            key,
            requested: spec.listen,
            listen,
            target: Mutex::new(spec.target),
            sources: spec.sources,
            opened_at: self.inner.config.clock.now(),
            deadline: watch::Sender::new(spec.deadline),
            token: self.inner.root.child_token(),
            end: OnceLock::new(),
            first_at: OnceLock::new(),
            conns: Mutex::new(HashMap::new()),
            tracker: TaskTracker::new(),
            listener_task: Mutex::new(None),
        });
        {
            let mut grants = lock(&self.inner.grants);
            if grants.contains_key(&key) {
                return Err(Error::AlreadyOpen { key });
            }
            grants.insert(key, grant.clone());
        }
        let task = tokio::spawn(accept_loop(self.inner.clone(), grant.clone(), listener));
        *lock(&grant.listener_task) = Some(task);
        tracing::info!(%key, %listen, target = %grant.target(), "grant listener open");
        Ok(OpenForward { key, listen })
    }

    /// Revokes: closes the listener and kills every live connection of the grant, then
    /// reports. Returns within `kill_grace` (twice at worst) whatever the peers do.
    pub async fn close(&self, key: GrantKey, reason: EndReason) -> Result<CloseReport, Error> {
        self.inner
            .end(key, reason, true)
            .await
            .ok_or(Error::NotFound { key })
    }

    /// Moves where a grant's new connections go (its router was moved); connections
    /// already forwarded keep theirs.
    pub fn set_target(&self, key: GrantKey, target: Target) -> Result<(), Error> {
        let grant = self.inner.grant(key)?;
        tracing::info!(%key, %target, "grant target moved");
        *lock(&grant.target) = target;
        Ok(())
    }

    /// Moves a grant's deadline (extend or shorten; `None` removes it). A deadline
    /// already past closes the grant at once, as expired.
    pub fn set_deadline(&self, key: GrantKey, deadline: Option<Instant>) -> Result<(), Error> {
        let grant = self.inner.grant(key)?;
        grant.deadline.send_replace(deadline);
        Ok(())
    }

    /// The instant of tokio's clock that corresponds to `expires_at` on the gateway's
    /// wall clock (already past gives now): for turning a stored `expires_at` into a
    /// deadline.
    pub fn deadline_for(&self, expires_at: DateTime<Utc>) -> Instant {
        let left = (expires_at - self.inner.config.clock.now())
            .to_std()
            .unwrap_or(Duration::ZERO);
        Instant::now() + left
    }

    /// The live connections of a grant, with their counts so far.
    pub fn connections(&self, key: GrantKey) -> Result<Vec<ConnectionInfo>, Error> {
        let grant = self.inner.grant(key)?;
        let conns = lock(&grant.conns);
        let mut list: Vec<ConnectionInfo> = conns
            .iter()
            .map(|(id, c)| {
                let (bytes_in, bytes_out) = c.counters.get();
                ConnectionInfo {
                    id: *id,
                    source: c.source,
                    started_at: c.started_at,
                    duration: c.started.elapsed(),
                    bytes_in,
                    bytes_out,
                }
            })
            .collect();
        list.sort_by_key(|c| c.id);
        Ok(list)
    }

    /// One live grant.
    pub fn grant(&self, key: GrantKey) -> Result<GrantInfo, Error> {
        Ok(self.inner.grant(key)?.info())
    }

    /// Every live grant.
    pub fn grants(&self) -> Vec<GrantInfo> {
        let grants: Vec<Arc<Grant>> = lock(&self.inner.grants).values().cloned().collect();
        grants.iter().map(|g| g.info()).collect()
    }

    /// Droppable events dropped because the queue held `event_capacity` of them.
    pub fn events_dropped(&self) -> u64 {
        self.inner.events.dropped()
    }

    /// Makes the open grants exactly `desired`, as at start-up from the store (or in a
    /// regional gateway fed by the server): opens what is missing, updates the deadline
    /// of what is already open as described, closes (as revoked) what is not desired, and
    /// reopens a grant whose listen address, target or sources changed.
    pub async fn reconcile(&self, desired: Vec<ForwardSpec>) -> ReconcileReport {
        let mut report = ReconcileReport::default();
        let wanted: HashSet<GrantKey> = desired.iter().map(|s| s.key).collect();
        let current: Vec<GrantKey> = lock(&self.inner.grants).keys().copied().collect();
        for key in current.into_iter().filter(|k| !wanted.contains(k)) {
            if let Some(r) = self.inner.end(key, EndReason::Revoked, true).await {
                report.closed.push(r);
            }
        }
        for spec in desired {
            let key = spec.key;
            let existing = lock(&self.inner.grants).get(&key).cloned();
            if let Some(grant) = existing {
                if grant.requested == spec.listen
                    && grant.target() == spec.target
                    && grant.sources == spec.sources
                {
                    grant.deadline.send_replace(spec.deadline);
                    report.kept.push(key);
                    continue;
                }
                if let Some(r) = self.inner.end(key, EndReason::Revoked, true).await {
                    report.closed.push(r);
                }
            }
            match self.open(spec).await {
                Ok(open) => report.opened.push(open),
                Err(e) => report.failed.push((key, e)),
            }
        }
        report
    }

    /// Closes every grant (reason `Shutdown`), killing their connections.
    pub async fn shutdown(&self) -> ShutdownReport {
        let keys: Vec<GrantKey> = lock(&self.inner.grants).keys().copied().collect();
        let ends = keys
            .into_iter()
            .map(|key| self.inner.end(key, EndReason::Shutdown, true));
        let reports = futures::future::join_all(ends).await;
        let mut total = ShutdownReport::default();
        for r in reports.into_iter().flatten() {
            total.grants += 1;
            total.connections_killed += r.connections_killed;
        }
        total
    }
}

impl Inner {
    fn grant(&self, key: GrantKey) -> Result<Arc<Grant>, Error> {
        lock(&self.grants)
            .get(&key)
            .cloned()
            .ok_or(Error::NotFound { key })
    }

    /// Ends a grant once: `None` if it was not (or no longer) open. `join_listener` is
    /// false when called from the grant's own accept loop.
    async fn end(
        &self,
        key: GrantKey,
        reason: EndReason,
        join_listener: bool,
    ) -> Option<CloseReport> {
        let grant = lock(&self.grants).remove(&key)?;
        let _ = grant.end.set(reason.clone());
        // Counted before the kill: connections unregister themselves as they die.
        let killed = lock(&grant.conns).len();
        grant.token.cancel();
        let grace = self.config.kill_grace;
        let task = if join_listener {
            lock(&grant.listener_task).take()
        } else {
            None
        };
        if let Some(mut task) = task
            && tokio::time::timeout(grace, &mut task).await.is_err()
        {
            task.abort();
        }
        grant.tracker.close();
        if tokio::time::timeout(grace, grant.tracker.wait())
            .await
            .is_err()
        {
            let stragglers: Vec<AbortHandle> = lock(&grant.conns)
                .values()
                .filter_map(|c| c.abort.clone())
                .collect();
            tracing::warn!(%key, count = stragglers.len(), "aborting connection tasks");
            for task in stragglers {
                task.abort();
            }
            let _ = tokio::time::timeout(grace, grant.tracker.wait()).await;
        }
        self.events.emit(Event::GrantClosed {
            key,
            at: self.config.clock.now(),
            reason: reason.clone(),
            connections_killed: killed,
        });
        tracing::info!(%key, %reason, connections_killed = killed, "grant closed");
        Some(CloseReport {
            key,
            reason,
            connections_killed: killed,
        })
    }
}

impl Grant {
    fn target(&self) -> Target {
        lock(&self.target).clone()
    }

    fn info(&self) -> GrantInfo {
        GrantInfo {
            key: self.key,
            listen: self.listen,
            target: self.target(),
            deadline: *self.deadline.borrow(),
            opened_at: self.opened_at,
            first_connection_at: self.first_at.get().copied(),
            connections: lock(&self.conns).len(),
        }
    }

    /// Why this grant's connections are being cancelled.
    fn end_reason(&self) -> EndReason {
        self.end.get().cloned().unwrap_or(EndReason::Shutdown)
    }
}

fn bind(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    // A port cooling down may still have connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// A grant's accept loop and deadline timer, until the grant is cancelled or expires.
async fn accept_loop(inner: Arc<Inner>, grant: Arc<Grant>, listener: TcpListener) {
    let mut deadline_rx = grant.deadline.subscribe();
    let mut deadline = *deadline_rx.borrow_and_update();
    // Armed far away when there is no deadline; the branch is disabled then anyway.
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    let sleep = tokio::time::sleep_until(deadline.unwrap_or(far));
    tokio::pin!(sleep);
    let expired = loop {
        tokio::select! {
            biased;
            () = grant.token.cancelled() => break false,
            () = &mut sleep, if deadline.is_some() => break true,
            changed = deadline_rx.changed() => {
                if changed.is_err() {
                    break false;
                }
                deadline = *deadline_rx.borrow_and_update();
                sleep.as_mut().reset(deadline.unwrap_or(far));
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, source)) => admit(&inner, &grant, stream, source),
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(key = %grant.key, error = %e, "accept failed");
                    tokio::select! {
                        () = grant.token.cancelled() => break false,
                        () = tokio::time::sleep(Duration::from_millis(10)) => {}
                    }
                }
            },
        }
    };
    drop(listener);
    if expired {
        inner.end(grant.key, EndReason::Expired, false).await;
    }
}

/// Decides on one accepted connection: refuse it at once, or start forwarding it.
fn admit(inner: &Arc<Inner>, grant: &Arc<Grant>, stream: TcpStream, source: SocketAddr) {
    let at = inner.config.clock.now();
    let refuse = |refusal: Refusal| {
        // Reset, not FIN: nothing is sent, and no TIME_WAIT stays behind here.
        let _ = stream.set_zero_linger();
        tracing::info!(key = %grant.key, %source, %refusal, "connection refused");
        inner.events.emit(Event::ConnectionRefused {
            key: grant.key,
            source,
            at,
            refusal,
        });
    };
    if !grant.sources.permits(source.ip()) {
        refuse(Refusal::SourceNotAllowed);
        return;
    }
    let counters = Arc::new(Counters::default());
    let id = ConnectionId(inner.next_id.fetch_add(1, Ordering::Relaxed));
    {
        let mut conns = lock(&grant.conns);
        if conns.len() >= inner.config.max_connections_per_grant
            || inner.live.load(Ordering::Relaxed) >= inner.config.max_connections
        {
            drop(conns);
            refuse(Refusal::TooManyConnections);
            return;
        }
        inner.live.fetch_add(1, Ordering::Relaxed);
        conns.insert(
            id,
            Conn {
                source,
                started: Instant::now(),
                started_at: at,
                counters: counters.clone(),
                abort: None,
            },
        );
    }
    let first = grant.first_at.set(at).is_ok();
    inner.events.emit(Event::ConnectionOpened {
        key: grant.key,
        id,
        source,
        at,
        first,
    });
    tracing::info!(key = %grant.key, %id, %source, first, "connection allowed");
    // The guard exists before the task runs, so even a task aborted before its first
    // poll reports and unregisters.
    let guard = Closing {
        inner: inner.clone(),
        grant: grant.clone(),
        id,
        source,
        started: Instant::now(),
        started_at: at,
        counters,
        reason: None,
        transfer: match inner.config.transfer {
            TransferMode::Splice => Transfer::Splice,
            TransferMode::Copy => Transfer::Copy,
        },
    };
    let task = grant.tracker.spawn(run_connection(guard, stream));
    if let Some(conn) = lock(&grant.conns).get_mut(&id) {
        conn.abort = Some(task.abort_handle());
    }
}

/// Reports a connection's end and unregisters it, however its task ends.
struct Closing {
    inner: Arc<Inner>,
    grant: Arc<Grant>,
    id: ConnectionId,
    source: SocketAddr,
    started: Instant,
    started_at: DateTime<Utc>,
    counters: Arc<Counters>,
    reason: Option<EndReason>,
    transfer: Transfer,
}

impl Drop for Closing {
    fn drop(&mut self) {
        lock(&self.grant.conns).remove(&self.id);
        self.inner.live.fetch_sub(1, Ordering::Relaxed);
        let reason = self
            .reason
            .take()
            .unwrap_or_else(|| self.grant.end_reason());
        let (bytes_in, bytes_out) = self.counters.get();
        let duration = self.started.elapsed();
        tracing::info!(
            key = %self.grant.key, id = %self.id, source = %self.source, %reason,
            bytes_in, bytes_out, ?duration, "connection closed"
        );
        self.inner.events.emit(Event::ConnectionClosed {
            key: self.grant.key,
            id: self.id,
            source: self.source,
            started_at: self.started_at,
            at: self.inner.config.clock.now(),
            bytes_in,
            bytes_out,
            duration,
            reason,
            transfer: self.transfer,
        });
    }
}

/// One allowed connection: connect to the target, forward, and on cancellation reset
/// both sockets.
async fn run_connection(mut guard: Closing, client: TcpStream) {
    let grant = guard.grant.clone();
    let inner = guard.inner.clone();
    let timeout = inner.config.connect_timeout;
    let target = grant.target();
    let address = match &target {
        Target::Tcp(address) => *address,
        Target::Dial { .. } => {
            return run_dialed(guard, client, target).await;
        }
    };
    let connect = tokio::time::timeout(timeout, TcpStream::connect(address));
    let upstream = tokio::select! {
        biased;
        () = grant.token.cancelled() => {
            let _ = client.set_zero_linger();
            return;
        }
        connected = connect => match connected {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(e)) => {
                tracing::warn!(key = %grant.key, %target, error = %e, "target unreachable");
                guard.reason = Some(EndReason::TargetUnreachable);
                return;
            }
            Err(_) => {
                tracing::warn!(key = %grant.key, %target, "target connect timed out");
                guard.reason = Some(EndReason::TargetUnreachable);
                return;
            }
        }
    };
    // Interactive sessions (SSH, WinBox) must not wait on Nagle at the gateway.
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let outcome = tokio::select! {
        biased;
        () = grant.token.cancelled() => None,
        done = conn::forward(&client, &upstream, &guard.counters, &inner.pumps) => Some(done),
    };
    match outcome {
        None => {
            let _ = client.set_zero_linger();
            let _ = upstream.set_zero_linger();
        }
        Some(Ok(transfer)) => {
            guard.transfer = transfer;
            guard.reason = Some(EndReason::Finished);
        }
        Some(Err(e)) => {
            guard.reason = Some(EndReason::Error(e.to_string()));
        }
    }
}

/// [`run_connection`] for a target behind a dialer (the management tunnel): the same
/// connect timeout, cancellation and kill (the client reset, the upstream killed), with
/// the bytes copied through user space.
async fn run_dialed(mut guard: Closing, client: TcpStream, target: Target) {
    let Target::Dial { address, dialer } = &target else {
        return;
    };
    let grant = guard.grant.clone();
    let inner = guard.inner.clone();
    let connect = tokio::time::timeout(inner.config.connect_timeout, dialer.dial(*address));
    let mut upstream = tokio::select! {
        biased;
        () = grant.token.cancelled() => {
            let _ = client.set_zero_linger();
            return;
        }
        connected = connect => match connected {
            Ok(Ok(upstream)) => upstream,
            Ok(Err(e)) => {
                tracing::warn!(key = %grant.key, %target, error = %e, "target unreachable");
                guard.reason = Some(EndReason::TargetUnreachable);
                return;
            }
            Err(_) => {
                tracing::warn!(key = %grant.key, %target, "target connect timed out");
                guard.reason = Some(EndReason::TargetUnreachable);
                return;
            }
        }
    };
    let _ = client.set_nodelay(true);
    let outcome = tokio::select! {
        biased;
        () = grant.token.cancelled() => None,
        done = conn::forward_dialed(&client, &mut upstream, &guard.counters) => Some(done),
    };
    match outcome {
        None => {
            let _ = client.set_zero_linger();
            upstream.kill();
        }
        Some(Ok(transfer)) => {
            guard.transfer = transfer;
            guard.reason = Some(EndReason::Finished);
        }
        Some(Err(e)) => {
            upstream.kill();
            guard.reason = Some(EndReason::Error(e.to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed(DateTime<Utc>);

    impl Clock for Fixed {
        fn now(&self) -> DateTime<Utc> {
            self.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_for_maps_wall_clock_to_tokio_instants() {
        let noon: DateTime<Utc> = "2026-01-01T12:00:00Z".parse().unwrap();
        let config = Config {
            clock: Arc::new(Fixed(noon)),
            ..Config::default()
        };
        let (gw, _rx) = Gateway::new(config);
        let now = Instant::now();
        let in_an_hour = noon + chrono::Duration::hours(1);
        assert_eq!(gw.deadline_for(in_an_hour), now + Duration::from_secs(3600));
        let past = noon - chrono::Duration::minutes(5);
        assert_eq!(gw.deadline_for(past), now);
    }
}
