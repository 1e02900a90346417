//! Connections to routers: one logged-in API client per router, made on first use with
//! the management credentials from the store, reused by every job, and dropped when it
//! breaks. Connect and command timeouts come from the orchestrator's config. Each new
//! connection (and the reconciler's scan, at most every 10 s) records the router's
//! facts: identity, RouterOS version, board, uptime, last seen; an unreachable router
//! is recorded offline.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use domain::RouterId;
use routeros::{Client, ClientConfig};

use crate::Inner;
use crate::error::{Error, Result};
use crate::joblog::JobLog;

/// A connection to one router and what was learnt through it.
pub(crate) struct RouterConn {
    pub client: Client,
    pub version: String,
    /// The router's name and API address when connected (for the log).
    name: String,
    address: std::net::SocketAddr,
    /// Postern's groups were found or made on this connection.
    pub groups_ready: AtomicBool,
    /// Whether device-mode allows the scheduler, once asked.
    pub scheduler_allowed: Mutex<Option<bool>>,
    /// The router's clock offset from UTC and whether its dates are in RouterOS 7's
    /// form, and when they were read (see `handlers::router_clock_offset`).
    pub clock: Mutex<Option<(Instant, chrono::Duration, bool)>>,
    /// When the router's facts were last read through this connection.
    facts_at: Mutex<Option<Instant>>,
}

/// The per-router client cache.
#[derive(Default)]
pub(crate) struct Connections {
    entries: Mutex<HashMap<RouterId, Arc<RouterConn>>>,
}

impl Connections {
    fn cached(&self, id: RouterId) -> Option<Arc<RouterConn>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.get(&id).filter(|c| !c.client.is_closed()).cloned()
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

/// Router `id`'s connection: the open one (without reading the router), else the
/// router is read and connected to. Logged either way.
pub(crate) async fn connect_to(
    inner: &Arc<Inner>,
    id: RouterId,
    log: &JobLog,
) -> Result<Arc<RouterConn>> {
    if let Some(conn) = inner.conns.cached(id) {
        log.line(format!(
            "using the open connection to router {} at {} (RouterOS {})",
            conn.name, conn.address, conn.version
        ));
        return Ok(conn);
    }
    let router = inner.store.get_router_any_org(id).await?;
    connect(inner, &router, log).await
}

/// The router's connection, opened now if there is none; logged either way.
pub(crate) async fn connect(
    inner: &Arc<Inner>,
    router: &store::Router,
    log: &JobLog,
) -> Result<Arc<RouterConn>> {
    let address = std::net::SocketAddr::new(router.tunnel_address, router.api_port);
    if let Some(conn) = inner.conns.cached(router.id) {
        log.line(format!(
            "using the open connection to router {} at {address} (RouterOS {})",
            router.name, conn.version
        ));
        return Ok(conn);
    }
    let started = Instant::now();
    let password = inner.store.router_password(router.id).await?;
    let config = ClientConfig::new(address.to_string(), &router.username, password.expose())
        .with_connect_timeout(inner.config.connect_timeout)
        .with_command_timeout(inner.config.command_timeout);
    let client = match Client::connect(&config).await {
        Ok(client) => client,
        Err(e) => {
            log.line(format!(
                "cannot reach router {} at {address}: {e}",
                router.name
            ));
            inner.mark_offline(router.id).await;
            return Err(Error::Unreachable(e.to_string()));
        }
    };
    let (resource, identity) = tokio::join!(
        routeros::api::system::resource(&client),
        routeros::api::system::identity(&client),
    );
    let resource = match resource {
        Ok(resource) => resource,
        Err(e) => {
            log.line(format!(
                "router {} at {address} accepted the login but /system/resource/print failed: {e}",
                router.name
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
        name: router.name.clone(),
        address,
        groups_ready: AtomicBool::new(false),
        scheduler_allowed: Mutex::new(None),
        clock: Mutex::new(None),
        facts_at: Mutex::new(Some(Instant::now())),
    });
    // Recorded off the job's path (an ordinary write, queued behind the API's).
    {
        let inner = inner.clone();
        let id = router.id;
        tokio::spawn(async move { store_facts(&inner, id, &resource, identity.ok()).await });
    }
    inner
        .conns
        .entries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(router.id, conn.clone());
    inner.mark_online(router.id).await;
    Ok(conn)
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
    pub(crate) fn groups_ready(&self) -> bool {
        self.groups_ready.load(Ordering::Relaxed)
    }

    pub(crate) fn set_groups_ready(&self, ready: bool) {
        self.groups_ready.store(ready, Ordering::Relaxed);
    }
}
