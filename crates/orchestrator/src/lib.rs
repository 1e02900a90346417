//! Orchestration: durable router jobs and their handlers, the orchestration log, expiry
//! timers and the reconciler. A grant is only real when its router holds the user (or
//! NAT rule), and only over when it no longer does: every change is a job in the store,
//! run at once, logged step by step, retried until it holds.
//!
//! ```no_run
//! # async fn demo(store: store::Store) {
//! use std::sync::Arc;
//! use postern_orchestrator::{Config, LoggingDataPlane, Orchestrator, SystemClock};
//! let orchestrator = Orchestrator::new(store, Config::default(), Arc::new(SystemClock), Arc::new(LoggingDataPlane));
//! let (stop, stopped) = tokio::sync::watch::channel(false);
//! let task = tokio::spawn(orchestrator.clone().run(stopped));
//! orchestrator.jobs_queued().await; // after the server queued a job: run it now
//! let _ = stop.send(true);
//! let _ = task.await;
//! # }
//! ```
//!
//! # Layout
//!
//! - [`Orchestrator`], [`Config`]: the handle the server holds; ending grants.
//! - `worker`: claiming jobs, leases and heartbeats, back-off, giving up.
//! - `handlers`: what each job kind does on the router, idempotently.
//! - `connections`: one API client per router, reused, dropped when broken, closed when
//!   idle ([`ConnectionStats`]).
//! - `joblog`: the orchestration log: lines numbered per attempt, batched, durable
//!   within a few milliseconds.
//! - `expiry`: the expiry timer and sweep.
//! - `reconcile`: drift between routers and grants, found and repaired.
//! - [`dataplane`]: the hook to the gateway ([`DataPlane`]).
//! - [`clock`]: time as a parameter.
//! - [`Error`].

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod clock;
mod connections;
pub mod dataplane;
mod error;
mod expiry;
pub mod handlers;
mod joblog;
pub mod reconcile;
mod worker;

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use domain::{GrantStatus, OrgId, RouterId};
use tokio::sync::{Notify, watch};

pub use clock::{Clock, ManualClock, SystemClock};
pub use connections::ConnectionStats;
pub use dataplane::{
    DataPlane, DialFuture, EndReason, GrantKey, GrantNote, LiveGrant, LoggingDataPlane, RouterIo,
    RouterStream, TUNNEL_INTERFACE, dial_direct,
};
pub use error::{Error, Result};
pub use worker::backoff;

/// How the orchestrator runs. `Default` gives production values.
#[derive(Debug, Clone)]
pub struct Config {
    /// This worker's name in leases (unique per process).
    pub owner: String,
    /// How long a claimed job is ours without a heartbeat.
    pub lease: Duration,
    /// How often a running job's lease is renewed.
    pub heartbeat: Duration,
    /// The first retry delay; doubled each attempt up to `backoff_max`.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Jobs (of different routers) running at once in this process.
    pub max_concurrent_jobs: usize,
    /// The longest the worker sleeps without being woken.
    pub poll_interval: Duration,
    /// The expiry sweep's period (the timer is exact; the sweep is a backstop).
    pub sweep_interval: Duration,
    /// How often every router is compared with the grants.
    pub reconcile_interval: Duration,
    /// How often an unreachable router is tried again.
    pub offline_probe_interval: Duration,
    /// A router's API connection no job has used for this long (none holding it, no
    /// command in flight) is closed; the next job opens it again. Checked every quarter
    /// of it (at most every 5 s), so a connection closes between this and a quarter more
    /// (5 s more at most) after its last use.
    pub router_idle: Duration,
    pub connect_timeout: Duration,
    pub command_timeout: Duration,
    /// One attempt of a job may take this long.
    pub attempt_timeout: Duration,
    /// Attempts of a creation before the grant fails (clean-ups retry forever).
    pub create_attempts: u32,
    /// The address routers see gateway connections come from, for regions that do not
    /// set their own (`regions.tunnel_source`).
    pub default_tunnel_source: Option<IpAddr>,
    /// Install a scheduler entry on the router that ends the grant at expiry by itself.
    pub router_self_expiry: bool,
    /// The longest a job log line waits to be written when no attempt's end carries it
    /// (lines are batched, many per write).
    pub log_flush_delay: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            owner: format!("{}-{}", std::process::id(), rand::random::<u32>()),
            lease: Duration::from_secs(15),
            heartbeat: Duration::from_secs(5),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            max_concurrent_jobs: 64,
            poll_interval: Duration::from_secs(1),
            sweep_interval: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(60),
            offline_probe_interval: Duration::from_secs(5),
            router_idle: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            command_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(60),
            create_attempts: 8,
            default_tunnel_source: None,
            router_self_expiry: true,
            log_flush_delay: Duration::from_millis(5),
        }
    }
}

/// What every task of the orchestrator shares.
pub(crate) struct Inner {
    pub store: store::Store,
    pub clock: Arc<dyn Clock>,
    pub config: Config,
    pub dataplane: Arc<dyn DataPlane>,
    pub jobs_wake: Notify,
    pub expiry_wake: Notify,
    pub conns: connections::Connections,
    pub log_buffer: joblog::LogBuffer,
    offline: Mutex<HashSet<RouterId>>,
    executions: AtomicU64,
}

impl Inner {
    /// A router did not answer: probed until it does; recorded offline.
    pub(crate) async fn mark_offline(self: &Arc<Self>, id: RouterId) {
        let added = self
            .offline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id);
        if added {
            tracing::info!(router = %id, "router unreachable; probing it until it answers");
            connections::store_offline(self, id).await;
        }
    }

    pub(crate) fn forget_offline(&self, id: RouterId) {
        self.offline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// A router answered: if it was unreachable, its waiting jobs run now.
    pub(crate) async fn mark_online(&self, id: RouterId) {
        let was_offline = self
            .offline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if was_offline {
            tracing::info!(router = %id, "router is reachable again; its waiting jobs run now");
            if let Err(e) = self.store.hasten_jobs(id, self.clock.now()).await {
                tracing::warn!(error = %e, "could not hasten the router's jobs");
            }
            self.wake_jobs().await;
        }
    }

    pub(crate) fn offline_routers(&self) -> Vec<RouterId> {
        self.offline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    pub(crate) fn count_execution(&self) {
        self.executions.fetch_add(1, Ordering::Relaxed);
    }

    /// Tells every other process's gateway on a shared PostgreSQL (nothing on SQLite).
    pub(crate) async fn announce(&self, note: GrantNote) {
        if let Err(e) = self.store.notify_grants(&note.encode()).await {
            tracing::warn!(error = %e, grant = %match note {
                GrantNote::Close(k, _) | GrantNote::Deadline(k, _) => k,
            }, "could not tell the other servers' gateways");
        }
    }

    /// Wakes this process's worker, and on PostgreSQL every other process's.
    pub(crate) async fn wake_jobs(&self) {
        self.jobs_wake.notify_one();
        if let Err(e) = self.store.notify_jobs().await {
            tracing::warn!(error = %e, "could not notify other processes of a job");
        }
    }

    /// Queues the router clean-up of a grant (retried until it succeeds).
    pub(crate) async fn queue_end(
        &self,
        org: OrgId,
        router: RouterId,
        key: GrantKey,
        reason: EndReason,
    ) -> Result<()> {
        let now = self.clock.now();
        self.store
            .supersede_jobs(
                &key.id(),
                ".create",
                now,
                "superseded: the grant ended before its creation ran",
            )
            .await?;
        self.store
            .create_job(store::NewJob {
                org_id: org,
                router_id: router,
                kind: format!("{}.end", key.kind()),
                payload: serde_json::json!({ "grant_id": key.id(), "reason": reason.as_str() }),
                max_attempts: 0,
                run_after: now,
                created_at: now,
            })
            .await?;
        self.wake_jobs().await;
        Ok(())
    }

    /// Ends a live grant: `closing`, its pending creation superseded, the router
    /// clean-up queued and `audit` appended, in one write; then the data plane closed
    /// and the job run. False (and no audit entry) if it was not live (already ending or
    /// ended).
    pub(crate) async fn end_grant(
        &self,
        key: GrantKey,
        reason: EndReason,
        audit: Option<&store::NewAudit>,
    ) -> Result<bool> {
        let now = self.clock.now();
        let live = [
            GrantStatus::Requested,
            GrantStatus::Provisioning,
            GrantStatus::Active,
        ];
        let closed = self
            .store
            .close_grant(
                key,
                &live,
                now,
                (
                    ".create",
                    "superseded: the grant ended before its creation ran",
                ),
                &store::ClosingJob {
                    kind: format!("{}.end", key.kind()),
                    payload: serde_json::json!({ "reason": reason.as_str() }),
                    max_attempts: 0,
                },
                audit,
            )
            .await;
        match closed {
            Ok(_) => {}
            Err(store::StoreError::Conflict(_)) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        // The gateway at once: access ends there whatever the router's state; and every
        // other server's gateway on the same PostgreSQL, whichever opened the port.
        self.dataplane.close(key, reason);
        self.announce(GrantNote::Close(key, reason)).await;
        self.wake_jobs().await;
        Ok(true)
    }
}

/// The orchestrator: cheap to clone; [`run`](Self::run) it once per process.
#[derive(Clone)]
pub struct Orchestrator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Orchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("owner", &self.inner.config.owner)
            .finish()
    }
}

impl Orchestrator {
    /// An orchestrator working through `store`'s orchestrator connections
    /// ([`store::Store::for_orchestrator`]), so API requests never hold it up.
    pub fn new(
        store: store::Store,
        config: Config,
        clock: Arc<dyn Clock>,
        dataplane: Arc<dyn DataPlane>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: store.for_orchestrator(),
                clock,
                config,
                dataplane,
                jobs_wake: Notify::new(),
                expiry_wake: Notify::new(),
                conns: connections::Connections::default(),
                log_buffer: joblog::LogBuffer::default(),
                offline: Mutex::new(HashSet::new()),
                executions: AtomicU64::new(0),
            }),
        }
    }

    /// Runs the worker, the expiry timer, the reconciler and (on PostgreSQL) the
    /// `LISTEN` for other processes' jobs, until `shutdown` becomes true; then lets
    /// running attempts end.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        let inner = self.inner;
        let listener = {
            let inner = inner.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut listener = match inner.store.job_listener().await {
                    Ok(Some(l)) => l,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot LISTEN for jobs; polling only");
                        return;
                    }
                };
                loop {
                    tokio::select! {
                        r = listener.recv() => {
                            if let Err(e) = r {
                                tracing::warn!(error = %e, "job notifications interrupted");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                            inner.jobs_wake.notify_one();
                        }
                        _ = shutdown.changed() => return,
                    }
                }
            })
        };
        // Other servers' grant ends and new deadlines, for this process's gateway.
        let notes = {
            let inner = inner.clone();
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut listener = match inner.store.grant_listener().await {
                    Ok(Some(l)) => l,
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot LISTEN for other servers' grant ends");
                        return;
                    }
                };
                loop {
                    tokio::select! {
                        r = listener.recv() => match r {
                            Ok(payload) => match GrantNote::decode(&payload) {
                                Some(note) => note.apply(inner.dataplane.as_ref()),
                                None => tracing::warn!(%payload, "an unknown grant note"),
                            },
                            Err(e) => {
                                tracing::warn!(error = %e, "grant notes interrupted; ends meanwhile are left to the deadlines and the next revoke");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        },
                        _ = shutdown.changed() => return,
                    }
                }
            })
        };
        let expiry = tokio::spawn(expiry::run(inner.clone(), shutdown.clone()));
        // Routers' connections closed when idle.
        let sweeper = {
            let inner = inner.clone();
            let mut shutdown = shutdown.clone();
            let every = (inner.config.router_idle / 4)
                .clamp(Duration::from_millis(10), Duration::from_secs(5));
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = shutdown.changed() => return,
                    }
                    inner.conns.sweep(inner.config.router_idle);
                }
            })
        };
        let reconciler = tokio::spawn(reconcile::run(inner.clone(), shutdown.clone()));
        // The log's flusher outlives the attempts, so their last lines are written.
        let (flushed, flush_stop) = watch::channel(false);
        let flusher = tokio::spawn(joblog::flusher(inner.clone(), flush_stop));
        worker::dispatcher(inner.clone(), shutdown).await;
        let _ = expiry.await;
        let _ = sweeper.await;
        let _ = reconciler.await;
        let _ = listener.await;
        let _ = notes.await;
        let _ = flushed.send(true);
        let _ = flusher.await;
    }

    /// A job was queued (by the server, with a grant): run it now. Call after the
    /// creating transaction committed.
    pub async fn jobs_queued(&self) {
        self.inner.wake_jobs().await;
    }

    /// A grant's expiry changed or a grant was created: re-arm the expiry timer.
    pub fn expiry_changed(&self) {
        self.inner.expiry_wake.notify_one();
    }

    /// A live grant's end moved: tell the data plane, re-arm the timer, and queue a job
    /// that moves the router's self-expiry entry.
    pub async fn grant_extended(
        &self,
        key: GrantKey,
        org: OrgId,
        router: RouterId,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        self.inner.dataplane.set_deadline(key, expires_at);
        self.inner
            .announce(GrantNote::Deadline(key, expires_at))
            .await;
        self.expiry_changed();
        let now = self.inner.clock.now();
        self.inner
            .store
            .create_job(store::NewJob {
                org_id: org,
                router_id: router,
                kind: format!("{}.update", key.kind()),
                payload: serde_json::json!({ "grant_id": key.id() }),
                max_attempts: self.inner.config.create_attempts,
                run_after: now,
                created_at: now,
            })
            .await?;
        self.inner.wake_jobs().await;
        Ok(())
    }

    /// Ends a live grant now (revoke): `closing`, data plane closed, router clean-up
    /// queued and run at once; the grant becomes `revoked` when the router is clean.
    /// False if the grant was not live.
    pub async fn revoke(&self, key: GrantKey) -> Result<bool> {
        self.inner.end_grant(key, EndReason::Revoked, None).await
    }

    /// [`revoke`](Self::revoke) that appends the revoke's `audit` entry in the same
    /// write (none when the grant was not live).
    pub async fn revoke_audited(&self, key: GrantKey, audit: &store::NewAudit) -> Result<bool> {
        self.inner
            .end_grant(key, EndReason::Revoked, Some(audit))
            .await
    }

    /// A router's address, ports or login changed: its open connection is dropped at
    /// once (commands in flight on it fail and their jobs retry), and a connection being
    /// opened meanwhile is not kept. The next job connects afresh with what the store
    /// holds then. Other processes notice through the router's `updated_at`.
    pub fn router_changed(&self, id: RouterId) {
        self.inner.conns.router_changed(id);
    }

    /// Compares one router with the grants now; on drift a reconcile job is queued.
    /// Returns how many differences were found.
    pub async fn reconcile_router(&self, id: RouterId) -> Result<usize> {
        let router = self.inner.store.get_router_any_org(id).await?;
        reconcile::check_router(&self.inner, &router).await
    }

    /// This process's connections to routers: open now, opened, closed when idle.
    pub fn connection_stats(&self) -> ConnectionStats {
        self.inner.conns.stats()
    }

    /// How many job attempts this process has started (for tests and metrics).
    pub fn executions(&self) -> u64 {
        self.inner.executions.load(Ordering::Relaxed)
    }

    /// The attempts a creation job should be queued with.
    pub fn create_attempts(&self) -> u32 {
        self.inner.config.create_attempts
    }

    /// This worker's lease owner name.
    pub fn owner(&self) -> &str {
        &self.inner.config.owner
    }
}

#[cfg(test)]
mod tidy {
    /// Every module says its role first; the crate root lists its layout.
    #[test]
    fn every_module_opens_with_a_doc_comment() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut count = 0;
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    text.starts_with("//!"),
                    "{} lacks a //! header",
                    path.display()
                );
                count += 1;
            }
        }
        assert!(count >= 9);
        assert!(
            std::fs::read_to_string(src.join("lib.rs"))
                .unwrap()
                .contains("# Layout")
        );
    }

    #[test]
    fn back_off_doubles_to_its_ceiling() {
        use std::time::Duration;
        let (base, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let delays: Vec<u64> = (1..=8)
            .map(|k| crate::backoff(base, max, k).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(crate::backoff(base, max, u32::MAX), max);
    }

    #[test]
    fn router_clock_in_both_date_forms() {
        use routeros::{Attributes, Item};
        let item = |date: &'static str, time: &'static str| {
            let mut a = Attributes::default();
            a.push("date", date);
            a.push("time", time);
            Item::new(a)
        };
        let (v7, is_v7) =
            crate::handlers::parse_router_clock(&item("2026-11-22", "13:05:09")).unwrap();
        assert!(is_v7);
        assert_eq!(v7.to_string(), "2026-11-22 13:05:09");
        let (v6, is_v7) =
            crate::handlers::parse_router_clock(&item("nov/22/2026", "13:05:09")).unwrap();
        assert!(!is_v7);
        assert_eq!(v6, v7);
        assert!(crate::handlers::parse_router_clock(&item("22.11.2026", "13:05:09")).is_none());
        assert!(crate::handlers::parse_router_clock(&item("2026-11-22", "25:00:00")).is_none());
    }

    #[test]
    fn self_expiry_start_in_the_router_clock() {
        use chrono::{DateTime, TimeDelta, Utc};
        use routeros::{Attributes, Item};
        let start = crate::handlers::schedule_start;
        let end: DateTime<Utc> = "2026-11-22T13:05:09.5Z".parse().unwrap();
        let at = |date: &str, time: &str| Some((date.to_string(), time.to_string()));
        // One second more, rounded up to a whole second; the router's offset applied.
        assert_eq!(
            start(end, TimeDelta::zero(), true),
            at("2026-11-22", "13:05:11")
        );
        assert_eq!(
            start(end, TimeDelta::hours(-2), false),
            at("nov/22/2026", "11:05:11")
        );
        // Found writing the `routeros_reply` fuzz target: a router whose clock says 262142
        // made the worker panic on a date past the last one chrono holds. Such a clock,
        // or one past RouterOS's four-digit years, now gets no self-expiry entry.
        let mut a = Attributes::default();
        a.push("date", "+262142-12-31");
        a.push("time", "23:59:59");
        let (local, v7) = crate::handlers::parse_router_clock(&Item::new(a)).unwrap();
        let now: DateTime<Utc> = "2026-11-22T12:00:00Z".parse().unwrap();
        assert_eq!(start(end, local - now.naive_utc(), v7), None);
        assert_eq!(start(end, TimeDelta::days(3_000_000), true), None);
        assert_eq!(start(end, TimeDelta::days(-30_000), true), None);
    }
}
