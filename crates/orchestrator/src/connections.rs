//! Connections to routers: one logged-in API client per router, made on first use with
//! the management credentials from the store, reused by every job, dropped when it
//! breaks, and closed when idle: a sweeper closes a connection no job has used for
//! `Config::router_idle` (none holding it, no command in flight), and the next job opens
//! it again. A reconciler scan does not keep a connection alive: it uses the open one if
//! a job left one, else opens one and closes it when the scan is done. So memory and
//! router sessions follow the routers being worked on, not the routers enrolled.
//! Connect and command timeouts come from the orchestrator's config. Each new
//! connection (and the reconciler's scan, at most every 10 s) records the router's
//! facts: identity, RouterOS version, board, uptime, last seen; an unreachable router
//! is recorded offline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::RouterId;
use routeros::{Client, ClientConfig};

use crate::Inner;
use crate::error::{Error, Result};
use crate::joblog::JobLog;

/// A connection to one router and what was learnt through it.
pub(crate) struct RouterConn {
    pub client: Client,
    pub version: String,
    /// How the router is reached (a tunnelled one sees the gateway's tunnel address).
    pub reach: store::Reach,
    /// The router's name and API address when connected (for the log).
    name: String,
    address: std::net::SocketAddr,
    /// The router's `updated_at` when connected: a router changed since (by any
    /// process) is connected to afresh.
    router_updated_at: chrono::DateTime<chrono::Utc>,
    /// Whether device-mode allows the scheduler, once asked.
    pub scheduler_allowed: Mutex<Option<bool>>,
    /// The router's clock offset from UTC and whether its dates are in RouterOS 7's
    /// form, and when they were read (see `handlers::router_clock_offset`).
    pub clock: Mutex<Option<(Instant, chrono::Duration, bool)>>,
    /// When the router's facts were last read through this connection.
    facts_at: Mutex<Option<Instant>>,
    /// Leases held now: a connection held is never closed for idleness.
    holders: AtomicUsize,
    /// When a job last let go of it (when opened, before any has).
    last_used: Mutex<Instant>,
}

/// Who holds a connection: a job's use keeps it open for `router_idle` after; a
/// reconciler scan's does not (scans run every router on a schedule, and would keep
/// every connection open for ever).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Use {
    Job,
    Scan,
}

/// A connection in use: not closed for idleness while held. Derefs to the connection.
pub(crate) struct Lease {
    conn: Arc<RouterConn>,
    id: RouterId,
    by: Use,
    /// Opened for this lease (not found open).
    fresh: bool,
    taken_at: Instant,
}

impl std::ops::Deref for Lease {
    type Target = RouterConn;
    fn deref(&self) -> &RouterConn {
        &self.conn
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.by == Use::Job {
            *self
                .conn
                .last_used
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
        // After `last_used`: a sweeper that sees no holder sees this use's time.
        self.conn.holders.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The connections' figures, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Connections open now.
    pub open: usize,
    /// Connections opened (logged in) since the start.
    pub opened: u64,
    /// Connections the sweeper closed after `router_idle` unused.
    pub closed_idle: u64,
    /// Connections a reconciler scan opened and closed when it was done.
    pub closed_after_scan: u64,
}

/// The per-router client cache.
#[derive(Default)]
pub(crate) struct Connections {
    entries: Mutex<HashMap<RouterId, Arc<RouterConn>>>,
    /// How many times each router was changed in this process: a connection opened
    /// across a change is not kept.
    changes: Mutex<HashMap<RouterId, u64>>,
    opened: AtomicU64,
    closed_idle: AtomicU64,
    closed_after_scan: AtomicU64,
}

impl Connections {
    /// The open connection of router `id`, leased (under the map's lock, so the sweeper
    /// never closes a connection between its lookup and its lease).
    fn cached(&self, id: RouterId, by: Use) -> Option<Lease> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let conn = entries.get(&id).filter(|c| !c.client.is_closed())?;
        conn.holders.fetch_add(1, Ordering::AcqRel);
        Some(Lease {
            conn: conn.clone(),
            id,
            by,
            fresh: false,
            taken_at: Instant::now(),
        })
    }

    /// Closes every connection no one holds, with no command in flight, that no job has
    /// used for `idle`; forgets broken ones. Returns how many were closed for idleness.
    pub(crate) fn sweep(&self, idle: Duration) -> usize {
        let now = Instant::now();
        let mut idled = Vec::new();
        {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            entries.retain(|_, c| {
                if c.client.is_closed() {
                    return false;
                }
                let unused = c.holders.load(Ordering::Acquire) == 0
                    && c.client.in_flight() == 0
                    && now.saturating_duration_since(
                        *c.last_used.lock().unwrap_or_else(|e| e.into_inner()),
                    ) >= idle;
                if unused {
                    idled.push(c.clone());
                }
                !unused
            });
        }
        for conn in &idled {
            conn.client.close();
            tracing::debug!(router = %conn.name, address = %conn.address, idle_secs = idle.as_secs_f64(), "closed the idle connection to the router");
        }
        self.closed_idle
            .fetch_add(idled.len() as u64, Ordering::Relaxed);
        idled.len()
    }

    /// A scan is done with its lease: a connection it opened is closed now unless a job
    /// holds it or used it meanwhile (then the sweeper closes it when idle).
    pub(crate) fn scan_done(&self, lease: Lease) {
        let (conn, id, fresh, since) = (lease.conn.clone(), lease.id, lease.fresh, lease.taken_at);
        drop(lease);
        if !fresh {
            return;
        }
        let removed = {
            let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            let ours = entries.get(&id).is_some_and(|c| Arc::ptr_eq(c, &conn));
            let unused = conn.holders.load(Ordering::Acquire) == 0
                && conn.client.in_flight() == 0
                && *conn.last_used.lock().unwrap_or_else(|e| e.into_inner()) <= since;
            ours && unused && entries.remove(&id).is_some()
        };
        if removed {
            conn.client.close();
            self.closed_after_scan.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn stats(&self) -> ConnectionStats {
        let open = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|c| !c.client.is_closed())
            .count();
        ConnectionStats {
            open,
            opened: self.opened.load(Ordering::Relaxed),
            closed_idle: self.closed_idle.load(Ordering::Relaxed),
            closed_after_scan: self.closed_after_scan.load(Ordering::Relaxed),
        }
    }

    fn changes(&self, id: RouterId) -> u64 {
        let changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        changes.get(&id).copied().unwrap_or(0)
    }

    /// The router changed: its connection goes, and one being opened is not kept.
    pub(crate) fn router_changed(&self, id: RouterId) {
        {
            let mut changes = self.changes.lock().unwrap_or_else(|e| e.into_inner());
            *changes.entry(id).or_insert(0) += 1;
        }
        self.drop_router(id);
    }

    /// Forgets a router's connection (it broke, or the router changed).
    pub(crate) fn drop_router(&self, id: RouterId) {
        let removed = self
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        if let Some(conn) = removed {
            conn.client.close();
        }
    }
}

/// "using the open connection …", with how long it has been unused.
fn log_reuse(log: &JobLog, name: &str, conn: &RouterConn) {
    let idle = conn
        .last_used
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .elapsed();
    log.line(format!(
        "using the open connection to router {name} at {} (RouterOS {}; last used {} s ago)",
        conn.address,
        conn.version,
        idle.as_secs()
    ));
}

/// Router `id`'s connection for a job: the open one (without reading the router), else
/// the router is read and connected to. Logged either way.
pub(crate) async fn connect_to(inner: &Arc<Inner>, id: RouterId, log: &JobLog) -> Result<Lease> {
    if let Some(conn) = inner.conns.cached(id, Use::Job) {
        log_reuse(log, &conn.name, &conn);
        return Ok(conn);
    }
    open(inner, id, log, Use::Job).await
}

/// The router's connection for a job, opened now if there is none (or the router changed
/// since it was opened, as `router` shows); logged either way.
pub(crate) async fn connect(
    inner: &Arc<Inner>,
    router: &store::Router,
    log: &JobLog,
) -> Result<Lease> {
    connect_for(inner, router, log, Use::Job).await
}

/// [`connect`] for a job or a scan (`by`).
pub(crate) async fn connect_for(
    inner: &Arc<Inner>,
    router: &store::Router,
    log: &JobLog,
    by: Use,
) -> Result<Lease> {
    if let Some(conn) = inner.conns.cached(router.id, by) {
        if conn.router_updated_at == router.updated_at {
            log_reuse(log, &router.name, &conn);
            return Ok(conn);
        }
        log.line(format!(
            "router {} changed since its connection was opened: connecting afresh",
            router.name
        ));
        drop(conn);
        inner.conns.drop_router(router.id);
    }
    open(inner, router.id, log, by).await
}

/// Opens a connection to router `id` as the store holds it now (address, port, login
/// read together, so a change is never half seen).
async fn open(inner: &Arc<Inner>, id: RouterId, log: &JobLog, by: Use) -> Result<Lease> {
    let changes = inner.conns.changes(id);
    let router = inner.store.get_router_any_org(id).await?;
    let router = &router;
    let address = std::net::SocketAddr::new(router.tunnel_address, router.api_port);
    let started = Instant::now();
    let password = inner.store.router_password(router.id).await?;
    let mut config = ClientConfig::new(address.to_string(), &router.username, password.expose())
        .with_connect_timeout(inner.config.connect_timeout)
        .with_command_timeout(inner.config.command_timeout);
    // API-SSL: the pinned certificate, or on first use whatever the router presents,
    // pinned below and kept (a later different one is refused).
    let first_use = router.api_tls && router.api_tls_fingerprint.is_none();
    if router.api_tls {
        let mode = match &router.api_tls_fingerprint {
            Some(pin) => routeros::TlsMode::pinned_sha256(pin).map_err(|_| {
                Error::Permanent(format!(
                    "router {}'s pinned certificate fingerprint is unreadable",
                    router.name
                ))
            })?,
            None => routeros::TlsMode::InsecureAcceptAnyCertificate,
        };
        config = config.with_tls(mode);
    }
    // One way to the router, direct or through its tunnel (the data plane's dial), then
    // TLS when configured and the login, all within the connect timeout.
    let attempt = async {
        let stream = inner
            .dataplane
            .dial(router, router.api_port)
            .await
            .map_err(|source| routeros::Error::Connect {
                address: address.to_string(),
                source,
            })?;
        Client::connect_over(stream, router.tunnel_address, &config).await
    };
    let connected = match tokio::time::timeout(inner.config.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(routeros::Error::ConnectTimeout {
            address: address.to_string(),
            after: inner.config.connect_timeout,
        }),
    };
    let client = match connected {
        Ok(client) => client,
        Err(e) => {
            tracing::warn!(router = %router.id, %address, error = %e, "cannot connect to the router");
            let why = crate::error::neutral(&e);
            log.line(format!(
                "cannot reach router {} at {address}: {why}",
                router.name
            ));
            inner.mark_offline(router.id).await;
            return Err(Error::Unreachable(why));
        }
    };
    if first_use && let Some(presented) = client.peer_certificate() {
        let pin = presented.to_string();
        match inner.store.pin_router_certificate(router.id, &pin).await {
            Ok(true) => log.line(format!(
                "pinned router {}'s API-SSL certificate on first use: SHA-256 {pin}",
                router.name
            )),
            Ok(false) => {
                // Pinned meanwhile (another connection's first contact): this one is
                // kept only if it met the same certificate.
                let now = inner.store.get_router_any_org(router.id).await?;
                if now.api_tls_fingerprint.as_deref() != Some(pin.as_str()) {
                    client.close();
                    return Err(Error::Unreachable(
                        "the router's certificate is not the one pinned meanwhile".into(),
                    ));
                }
            }
            Err(e) => {
                client.close();
                return Err(e.into());
            }
        }
    }
    let (resource, identity) = tokio::join!(
        routeros::api::system::resource(&client),
        routeros::api::system::identity(&client),
    );
    let resource = match resource {
        Ok(resource) => resource,
        Err(e) => {
            tracing::warn!(router = %router.id, %address, error = %e, "/system/resource/print failed after the login");
            log.line(format!(
                "router {} at {address} accepted the login but /system/resource/print failed: {}",
                router.name,
                crate::error::neutral(&e)
            ));
            return Err(Error::from_router(e));
        }
    };
    let version = resource.version.clone().unwrap_or_else(|| "unknown".into());
    log.line(format!(
        "connected to router {} at {address} as {} (RouterOS {version}) in {} ms",
        router.name,
        router.username,
        started.elapsed().as_millis()
    ));
    let conn = Arc::new(RouterConn {
        client,
        version,
        reach: router.reach,
        name: router.name.clone(),
        address,
        router_updated_at: router.updated_at,
        scheduler_allowed: Mutex::new(None),
        clock: Mutex::new(None),
        facts_at: Mutex::new(Some(Instant::now())),
        holders: AtomicUsize::new(1),
        last_used: Mutex::new(Instant::now()),
    });
    let lease = Lease {
        conn: conn.clone(),
        id: router.id,
        by,
        fresh: true,
        taken_at: Instant::now(),
    };
    inner.conns.opened.fetch_add(1, Ordering::Relaxed);
    // Recorded off the job's path (an ordinary write, queued behind the API's).
    {
        let inner = inner.clone();
        let id = router.id;
        tokio::spawn(async move { store_facts(&inner, id, &resource, identity.ok()).await });
    }
    {
        let mut entries = inner
            .conns
            .entries
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if inner.conns.changes(router.id) != changes {
            // Changed while this connection was being made: it goes to the old place.
            drop(entries);
            conn.client.close();
            log.line(format!(
                "router {} changed while connecting: the connection is not kept",
                router.name
            ));
            return Err(Error::Unreachable(
                "the router changed while connecting".into(),
            ));
        }
        entries.insert(router.id, conn);
    }
    inner.mark_online(router.id).await;
    Ok(lease)
}

/// Records what the router says of itself (identity, RouterOS version, board, uptime)
/// and that it was seen now, for the portal's Overview.
async fn store_facts(
    inner: &Arc<Inner>,
    id: RouterId,
    resource: &routeros::api::system::Resource,
    identity: Option<String>,
) {
    let facts = store::RouterFacts {
        status: domain::RouterStatus::Online,
        identity,
        routeros_version: resource.version.clone(),
        board_name: resource.board_name.clone(),
        uptime: resource.uptime.clone(),
        last_seen_at: Some(inner.clock.now()),
    };
    if let Err(e) = inner.store.set_router_facts(id, facts).await {
        tracing::warn!(router = %id, error = %e, "could not record the router's facts");
    }
}

/// Reads and records the router's facts again (the reconciler's periodic scan), unless
/// this connection did within `FACTS_EVERY`.
pub(crate) async fn refresh_facts(inner: &Arc<Inner>, id: RouterId, conn: &RouterConn) {
    {
        let mut at = conn.facts_at.lock().unwrap_or_else(|e| e.into_inner());
        if at.is_some_and(|t| t.elapsed() < FACTS_EVERY) {
            return;
        }
        *at = Some(Instant::now());
    }
    let (resource, identity) = tokio::join!(
        routeros::api::system::resource(&conn.client),
        routeros::api::system::identity(&conn.client),
    );
    match resource {
        Ok(resource) => store_facts(inner, id, &resource, identity.ok()).await,
        Err(e) => tracing::debug!(router = %id, error = %e, "could not read the router's facts"),
    }
}

/// How often a connection's router facts are read again.
const FACTS_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Records that a router did not answer (its other facts stay as last seen).
pub(crate) async fn store_offline(inner: &Arc<Inner>, id: RouterId) {
    let facts = store::RouterFacts {
        status: domain::RouterStatus::Offline,
        identity: None,
        routeros_version: None,
        board_name: None,
        uptime: None,
        last_seen_at: None,
    };
    if let Err(e) = inner.store.set_router_facts(id, facts).await {
        tracing::warn!(router = %id, error = %e, "could not record the router as offline");
    }
}

impl RouterConn {
    /// The router's name when connected.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}
