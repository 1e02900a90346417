//! Connections to routers: one logged-in API client per router, made on first use with
//! the management credentials from the store, reused by every job, and dropped when it
//! breaks. Connect and command timeouts come from the orchestrator's config.

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
    /// Postern's groups were found or made on this connection.
    pub groups_ready: AtomicBool,
    /// Whether device-mode allows the scheduler, once asked.
    pub scheduler_allowed: Mutex<Option<bool>>,
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
            inner.mark_offline(router.id);
            return Err(Error::Unreachable(e.to_string()));
        }
    };
    let version = match routeros::api::system::resource(&client).await {
        Ok(resource) => resource.version.unwrap_or_else(|| "unknown".into()),
        Err(e) => {
            log.line(format!(
                "router {} at {address} accepted the login but /system/resource/print failed: {e}",
                router.name
            ));
            return Err(Error::from_router(e));
        }
    };
    log.line(format!(
        "connected to router {} at {address} as {} (RouterOS {version}) in {} ms",
        router.name,
        router.username,
        started.elapsed().as_millis()
    ));
    let conn = Arc::new(RouterConn {
        client,
        version,
        groups_ready: AtomicBool::new(false),
        scheduler_allowed: Mutex::new(None),
    });
    inner
        .conns
        .entries
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(router.id, conn.clone());
    inner.mark_online(router.id).await;
    Ok(conn)
}

impl RouterConn {
    pub(crate) fn groups_ready(&self) -> bool {
        self.groups_ready.load(Ordering::Relaxed)
    }

    pub(crate) fn set_groups_ready(&self, ready: bool) {
        self.groups_ready.store(ready, Ordering::Relaxed);
    }
}
