//! The in-process gateway: the orchestrator's [`orchestrator::DataPlane`] hook backed by
//! the `gateway` crate, the entry-port proposals a create offers the store, the
//! start-up rebuild of every active grant's listener, and the task that turns the
//! gateway's events into the store's connections, `authorized_at` and audit entries.
//!
//! The hook is synchronous and must not block, while opening a grant needs its router
//! from the store: `open` spawns that work. So that a revoke or a new end arriving while
//! an open is still under way is never lost, `close` and `set_deadline` leave a note
//! (under one lock) that the opening task reads once its listener is up: an open that
//! finds its grant ended closes it at once.
//!
//! Ends are never lost: the gateway's queue always keeps them (only openings and
//! refusals are dropped when this task falls behind, and a closing event alone makes a
//! complete row); a row whose end could not be written is ended with its grant's reason
//! when the grant's listener closes. What has queued while a write ran is written in
//! one transaction (`Store::record_connections`). Each row names this process's gateway run
//! ([`crate::runs`]): a heartbeat keeps the run registered, and at start-up and on each
//! heartbeat the rows of runs that are gone (and rows from before owners) are ended as
//! "gateway stopped", never those of another live server on the same database.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::{
    AccessType, ConnectionRecordId, GatewayRunId, GrantStatus, OrgId, RegionId, RouterId,
};
use gateway::{
    ConnectionId, Event, Events, ForwardSpec, Gateway, GrantKey, PortAllocator, PortRange,
};
use orchestrator::LiveGrant;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::ServerConfig;
use crate::runs::{self, Process};

/// How many ports a create offers the store from a large range.
const CANDIDATES: usize = 64;
/// Below this many ports, every free one is offered.
const SMALL_RANGE: usize = 256;
/// How many of a large range's drawn candidates are offered to the store: the first
/// this many found bindable, checked in order.
const BINDABLE_CANDIDATES: usize = 8;
/// Refused connections audited per grant per minute; beyond, only counted in the log.
const REFUSALS_AUDITED_PER_MINUTE: u32 = 20;
/// Notes older than this are forgotten (an open is never pending that long).
const NOTE_LIFETIME: Duration = Duration::from_secs(600);
/// Another host's run is gone once unseen for this many heartbeats.
const HEARTBEATS_TO_GONE: u32 = 4;
/// How the rows of a gateway run that is gone end.
const GONE_REASON: &str = "gateway stopped";
/// How often a gateway that shares PostgreSQL with other servers checks its open
/// grants against the store: the backstop for a grant note it missed (sent before its
/// `LISTEN` started, or while that connection was being made again).
const ENDS_SWEEP: Duration = Duration::from_secs(1);

/// Why the gateway could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("region {name}: {message}")]
    Region { name: String, message: String },
}

/// One region this process serves: where it binds and which ports it hands out; or,
/// served by a remote gateway, which ports this server offers it.
struct Region {
    bind: IpAddr,
    ports: Mutex<PortAllocator>,
    /// Served by a `postern gateway` over the control channel.
    remote: bool,
    /// The gateway's address inside the region's tunnel (from the configuration, so
    /// it is known whether or not the gateway is reachable).
    tunnel_gateway: std::net::Ipv4Addr,
}

/// What the event task needs to know of an open grant.
#[derive(Debug, Clone, Copy)]
struct Meta {
    org: OrgId,
    router: RouterId,
    region: RegionId,
    port: u16,
}

/// What happened to a grant while its open may still be under way.
#[derive(Debug, Clone, Copy)]
enum Note {
    Ended(Instant),
    Deadline(Instant, DateTime<Utc>),
    Failed(Instant),
}

impl Note {
    fn at(&self) -> Instant {
        match self {
            Note::Ended(at) | Note::Deadline(at, _) | Note::Failed(at) => *at,
        }
    }
}

struct Shared {
    store: store::Store,
    /// This process's gateway run, the owner of the rows it writes.
    run: GatewayRunId,
    process: Process,
    started_at: DateTime<Utc>,
    heartbeat: Duration,
    regions: HashMap<RegionId, Region>,
    grants: Mutex<HashMap<GrantKey, Meta>>,
    notes: Mutex<HashMap<GrantKey, Note>>,
    /// Live connections, their grants and the store rows they are recorded under; an
    /// entry stays until its end is written.
    live: Mutex<HashMap<ConnectionId, (GrantKey, ConnectionRecordId)>>,
    /// Refusals audited per grant in the current minute.
    refusals: Mutex<HashMap<GrantKey, (Instant, u32)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A background task (the event recorder, the heartbeat) and how to tell it to stop.
type Task = (oneshot::Sender<()>, JoinHandle<()>);

/// The gateway of `postern server`: cheap to clone, every clone drives the same one.
#[derive(Clone)]
pub struct GatewayPlane {
    gateway: Gateway,
    tunnels: crate::tunnels::Tunnels,
    /// The remote gateways of `gateway = "remote"` regions.
    links: Option<crate::links::Links>,
    shared: Arc<Shared>,
    tasks: Arc<Mutex<Vec<Task>>>,
}

impl GatewayPlane {
    /// Connections the gateway refused so far for `refusal`.
    pub fn refused(&self, refusal: gateway::Refusal) -> u64 {
        self.gateway.refused(refusal)
    }
}

impl std::fmt::Debug for GatewayPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayPlane")
            .field("grants", &self.gateway.grants().len())
            .finish()
    }
}

/// The orchestrator's key for the control channel's.
fn orchestrator_key_of(key: control::msg::GrantKey) -> orchestrator::GrantKey {
    match key {
        control::msg::GrantKey::Access(id) => orchestrator::GrantKey::Access(id),
        control::msg::GrantKey::Forward(id) => orchestrator::GrantKey::Forward(id),
    }
}

/// The orchestrator's key for the gateway's own.
fn orchestrator_key(key: GrantKey) -> orchestrator::GrantKey {
    match key {
        GrantKey::Access(id) => orchestrator::GrantKey::Access(id),
        GrantKey::Forward(id) => orchestrator::GrantKey::Forward(id),
    }
}

/// The gateway's own key for the orchestrator's.
pub fn gateway_key(key: orchestrator::GrantKey) -> GrantKey {
    match key {
        orchestrator::GrantKey::Access(id) => GrantKey::Access(id),
        orchestrator::GrantKey::Forward(id) => GrantKey::Forward(id),
    }
}

fn kind(key: GrantKey) -> (&'static str, String) {
    match key {
        GrantKey::Access(id) => ("access", id.to_string()),
        GrantKey::Forward(id) => ("forward", id.to_string()),
    }
}

/// The address a grant's connections go to: the router's tunnel address and its SSH or
/// WinBox port (as stored for the router), or for a forward its dst-nat port there.
pub fn target(grant: &LiveGrant, router: &store::Router) -> SocketAddr {
    let port = match grant {
        LiveGrant::Access(a) => match a.access_type {
            AccessType::Ssh => router.ssh_port,
            AccessType::Winbox => router.winbox_port,
        },
        LiveGrant::Forward(f) => f.router_port,
    };
    SocketAddr::new(router.tunnel_address, port)
}

fn sources(grant: &LiveGrant) -> gateway::SourcePolicy {
    match grant {
        LiveGrant::Access(a) => gateway::SourcePolicy::new([a.allow_from], a.allow_rfc1918),
        LiveGrant::Forward(f) => gateway::SourcePolicy::new([f.allow_from], false),
    }
}

fn record_parts(grant: &LiveGrant) -> (OrgId, RouterId, RegionId, u16, DateTime<Utc>) {
    match grant {
        LiveGrant::Access(a) => (a.org_id, a.router_id, a.region_id, a.port, a.expires_at),
        LiveGrant::Forward(f) => (f.org_id, f.router_id, f.region_id, f.port, f.expires_at),
    }
}

impl GatewayPlane {
    /// A gateway for the regions `config` names (each must exist in the store, as
    /// `bootstrap::open_store` makes sure), with its event task and heartbeat running,
    /// registered as a new gateway run. Connections that runs now gone left recorded as
    /// live are ended first ("gateway stopped"); another live server's are not.
    pub async fn start(
        store: store::Store,
        config: &ServerConfig,
        gateway_config: gateway::Config,
    ) -> Result<GatewayPlane, DataPlaneError> {
        let mut regions = HashMap::new();
        for r in &config.regions {
            let stored = store.find_region_by_name(&r.name).await?.ok_or_else(|| {
                DataPlaneError::Region {
                    name: r.name.clone(),
                    message: "not in the store".into(),
                }
            })?;
            let range = PortRange::new(stored.port_min, stored.port_max).map_err(|e| {
                DataPlaneError::Region {
                    name: r.name.clone(),
                    message: e.to_string(),
                }
            })?;
            regions.insert(
                stored.id,
                Region {
                    bind: r.bind_address(),
                    ports: Mutex::new(PortAllocator::new(range, config.port_cooldown)),
                    remote: r.remote(),
                    tunnel_gateway: r.tunnel_gateway(),
                },
            );
        }
        let remote: std::collections::HashSet<RegionId> = regions
            .iter()
            .filter(|(_, r)| r.remote)
            .map(|(id, _)| *id)
            .collect();
        let links = if remote.is_empty() {
            None
        } else {
            let identity = crate::links::identity(&store, &crate::links::server_name())
                .await
                .map_err(|message| DataPlaneError::Region {
                    name: "control channel".into(),
                    message,
                })?;
            Some(
                crate::links::Links::start(
                    store.clone(),
                    Arc::new(config.clone()),
                    identity,
                    remote,
                )
                .await,
            )
        };
        let started_at = Utc::now();
        let shared = Arc::new(Shared {
            store,
            run: GatewayRunId::new(),
            process: Process::current(),
            started_at,
            heartbeat: config.gateway_heartbeat,
            regions,
            grants: Mutex::new(HashMap::new()),
            notes: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            refusals: Mutex::new(HashMap::new()),
        });
        let tunnels = crate::tunnels::Tunnels::start(&shared.store, config, links.clone()).await?;
        shared.alive(started_at).await?;
        tracing::info!(run = %shared.run, process = %shared.process.to_record(), "gateway run registered");
        shared.sweep(started_at, true).await?;
        let (gateway, rx) = Gateway::new(gateway_config);
        let (stop_events, events_stopped) = oneshot::channel();
        let events = tokio::spawn(record_events(shared.clone(), rx, events_stopped));
        let (stop_beat, beat_stopped) = oneshot::channel();
        let beat = tokio::spawn(heartbeat(shared.clone(), beat_stopped));
        if let Some(links) = &links {
            let weak = Arc::downgrade(&shared);
            links.on_grant_closed(Box::new(move |key| {
                if let Some(shared) = weak.upgrade() {
                    shared.forget(gateway_key(orchestrator_key_of(key)));
                }
            }));
        }
        let plane = GatewayPlane {
            gateway,
            tunnels,
            links,
            shared,
            tasks: Arc::new(Mutex::new(vec![(stop_events, events), (stop_beat, beat)])),
        };
        if plane.shared.store.backend() == store::Backend::Postgres {
            let (stop_sweep, sweep_stopped) = oneshot::channel();
            let sweep = tokio::spawn(ends_sweep(plane.clone(), sweep_stopped));
            lock(&plane.tasks).push((stop_sweep, sweep));
        }
        Ok(plane)
    }

    /// The gateway itself.
    pub fn gateway(&self) -> &Gateway {
        &self.gateway
    }

    /// The links to the remote gateways (regions configured `gateway = "remote"`).
    pub fn links(&self) -> Option<&crate::links::Links> {
        self.links.as_ref()
    }

    /// The regions' management tunnels (admit and remove routers' keys, their status,
    /// streams to routers).
    pub fn tunnels(&self) -> &crate::tunnels::Tunnels {
        &self.tunnels
    }

    /// Where a grant's connections go: TCP to a direct router, the region's tunnel for
    /// a tunnelled one.
    fn grant_target(
        &self,
        grant: &LiveGrant,
        router: &store::Router,
    ) -> Result<gateway::Target, String> {
        let address = target(grant, router);
        self.tunnels
            .target(router, address.port())
            .ok_or_else(|| "no tunnel serves the router's region here".to_owned())
    }

    /// This process's gateway run, the owner of the connection rows it writes.
    pub fn run(&self) -> GatewayRunId {
        self.shared.run
    }

    /// Opens the listener of every active grant in the store (`Gateway::reconcile`), so
    /// a restart keeps access working. Call before the orchestrator starts. Returns how
    /// many listen.
    pub async fn rebuild(&self) -> Result<usize, DataPlaneError> {
        let store = &self.shared.store;
        let routers: HashMap<RouterId, store::Router> = store
            .list_all_routers()
            .await?
            .into_iter()
            .map(|r| (r.id, r))
            .collect();
        let mut grants: Vec<LiveGrant> = Vec::new();
        grants.extend(
            store
                .list_live_access()
                .await?
                .into_iter()
                .filter(|g| g.status == GrantStatus::Active && !g.terminal)
                .map(LiveGrant::Access),
        );
        grants.extend(
            store
                .list_live_forwards()
                .await?
                .into_iter()
                .filter(|g| g.status == GrantStatus::Active)
                .map(LiveGrant::Forward),
        );
        let mut specs = Vec::new();
        let now = Utc::now();
        for grant in &grants {
            let key = gateway_key(grant.key());
            let (_, router_id, _, _, expires_at) = record_parts(grant);
            if expires_at <= now {
                // Ended while no gateway ran: the orchestrator expires it now.
                continue;
            }
            let Some(router) = routers.get(&router_id) else {
                tracing::warn!(grant = %key, "start-up: the grant's router is gone");
                continue;
            };
            match self.prepare(grant, router) {
                Ok(spec) => specs.push(spec),
                Err(why) => tracing::warn!(grant = %key, "start-up: not opened: {why}"),
            }
        }
        let report = self.gateway.reconcile(specs).await;
        for (key, e) in &report.failed {
            tracing::error!(grant = %key, error = %e, "start-up: the grant's port could not open");
            self.forget(*key);
        }
        tracing::info!(
            listening = report.opened.len(),
            failed = report.failed.len(),
            "gateway rebuilt from the store"
        );
        Ok(report.opened.len())
    }

    /// The spec of a grant's listener, its bookkeeping done (port reserved, meta kept).
    fn prepare(&self, grant: &LiveGrant, router: &store::Router) -> Result<ForwardSpec, String> {
        let key = gateway_key(grant.key());
        let (org, router_id, region_id, port, expires_at) = record_parts(grant);
        let region = self
            .shared
            .regions
            .get(&region_id)
            .ok_or_else(|| "its region is not served by this process".to_owned())?;
        let now = Instant::now();
        // The store settled the port; the allocator only learns it is live.
        let _ = lock(&region.ports).reserve(port, now);
        lock(&self.shared.grants).insert(
            key,
            Meta {
                org,
                router: router_id,
                region: region_id,
                port,
            },
        );
        Ok(ForwardSpec {
            key,
            listen: SocketAddr::new(region.bind, port),
            target: self.grant_target(grant, router)?,
            sources: sources(grant),
            deadline: Some(self.gateway.deadline_for(expires_at)),
        })
    }

    /// Drops a grant's bookkeeping and releases its port (idempotent).
    fn forget(&self, key: GrantKey) {
        self.shared.forget(key);
    }

    fn note(&self, key: GrantKey, note: Note) {
        let mut notes = lock(&self.shared.notes);
        if notes.len() > 4096 {
            notes.retain(|_, n| n.at().elapsed() < NOTE_LIFETIME);
        }
        notes.insert(key, note);
    }

    async fn open_now(&self, grant: LiveGrant) {
        let key = gateway_key(grant.key());
        {
            let mut notes = lock(&self.shared.notes);
            match notes.get(&key) {
                Some(Note::Ended(_)) => return,
                // A new attempt: an earlier failure no longer settles it.
                Some(Note::Failed(_)) => {
                    notes.remove(&key);
                }
                _ => {}
            }
        }
        let (_, router_id, region_id, _, expires_at) = record_parts(&grant);
        let router = match self.shared.store.get_router_any_org(router_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(grant = %key, error = %e, "cannot open the grant's port: its router cannot be read");
                self.note(key, Note::Failed(Instant::now()));
                return;
            }
        };
        if self
            .shared
            .regions
            .get(&region_id)
            .is_some_and(|r| r.remote)
        {
            self.open_remote(&grant, &router).await;
            return;
        }
        let spec = match self.prepare(&grant, &router) {
            Ok(spec) => spec,
            Err(why) => {
                tracing::error!(grant = %key, "cannot open the grant's port: {why}");
                self.note(key, Note::Failed(Instant::now()));
                return;
            }
        };
        match self.gateway.open(spec).await {
            Ok(open) => {
                tracing::info!(grant = %key, listen = %open.listen, "entry port listening");
            }
            Err(gateway::Error::AlreadyOpen { .. }) => {
                let _ = self
                    .gateway
                    .set_deadline(key, Some(self.gateway.deadline_for(expires_at)));
            }
            Err(e) => {
                tracing::error!(grant = %key, error = %e, "cannot open the grant's port");
                self.forget(key);
                self.note(key, Note::Failed(Instant::now()));
                return;
            }
        }
        // What arrived while the listener was being opened (a new end is used once).
        let note = {
            let mut notes = lock(&self.shared.notes);
            match notes.get(&key).copied() {
                Some(Note::Deadline(..)) => notes.remove(&key),
                other => other,
            }
        };
        match note {
            Some(Note::Ended(_)) => {
                // Its port and bookkeeping go with the `GrantClosed` event.
                let _ = self.gateway.close(key, gateway::EndReason::Revoked).await;
            }
            Some(Note::Deadline(_, at)) => {
                let _ = self
                    .gateway
                    .set_deadline(key, Some(self.gateway.deadline_for(at)));
            }
            Some(Note::Failed(_)) | None => {}
        }
    }

    /// Opens a grant's port at its region's remote gateway and waits for the answer;
    /// then passes on a new end that arrived meanwhile (a close needs nothing: it was
    /// sent on the same ordered stream, and the gateway never reopens a closed grant).
    async fn open_remote(&self, grant: &LiveGrant, router: &store::Router) {
        let key = gateway_key(grant.key());
        let (org, router_id, region_id, port, _) = record_parts(grant);
        let Some(link) = self.links.as_ref().and_then(|l| l.link(region_id)) else {
            tracing::error!(grant = %key, "cannot open the grant's port: no gateway has joined its region");
            self.note(key, Note::Failed(Instant::now()));
            return;
        };
        if let Some(region) = self.shared.regions.get(&region_id) {
            let _ = lock(&region.ports).reserve(port, Instant::now());
        }
        lock(&self.shared.grants).insert(
            key,
            Meta {
                org,
                router: router_id,
                region: region_id,
                port,
            },
        );
        match link.open(crate::links::grant_spec(grant, router)).await {
            Ok(listen) => {
                tracing::info!(grant = %key, %listen, gateway = %link.gateway, "entry port listening at the remote gateway");
            }
            Err(error) => {
                tracing::error!(grant = %key, %error, gateway = %link.gateway, "cannot open the grant's port at the remote gateway");
                self.forget(key);
                self.note(key, Note::Failed(Instant::now()));
                return;
            }
        }
        let note = {
            let mut notes = lock(&self.shared.notes);
            match notes.get(&key).copied() {
                Some(Note::Deadline(..)) => notes.remove(&key),
                other => other,
            }
        };
        if let Some(Note::Deadline(_, at)) = note {
            link.send(control::msg::Down::SetDeadline {
                key: crate::links::key_of(grant.key()),
                expires_at: at,
            });
        }
    }

    /// The router was moved (address or ports changed): every live grant of it that
    /// listens here forwards its new connections to the router's new place.
    pub async fn router_moved(&self, router: &store::Router) {
        let store = &self.shared.store;
        let (access, forwards) = tokio::join!(store.list_live_access(), store.list_live_forwards());
        let mut grants: Vec<LiveGrant> = Vec::new();
        match access {
            Ok(list) => grants.extend(
                list.into_iter()
                    .filter(|g| g.router_id == router.id)
                    .map(LiveGrant::Access),
            ),
            Err(e) => {
                tracing::error!(router = %router.id, error = %e, "cannot list the moved router's grants")
            }
        }
        match forwards {
            Ok(list) => grants.extend(
                list.into_iter()
                    .filter(|g| g.router_id == router.id)
                    .map(LiveGrant::Forward),
            ),
            Err(e) => {
                tracing::error!(router = %router.id, error = %e, "cannot list the moved router's forwards")
            }
        }
        for grant in &grants {
            let key = gateway_key(grant.key());
            // Not listening here (a terminal grant, or not open yet: an open reads the
            // router afresh) is fine.
            if let Ok(target) = self.grant_target(grant, router) {
                let _ = self.gateway.set_target(key, target);
            }
            if let Some(links) = &self.links {
                let spec = crate::links::grant_spec(grant, router);
                links.broadcast(control::msg::Down::SetTarget {
                    key: spec.key,
                    target: spec.target,
                });
            }
        }
    }

    /// Whether a grant's port is settled: listening, or known not to be coming (ended,
    /// or its open failed). `?wait=true` waits for this as well as for `active`.
    pub fn settled(&self, key: orchestrator::GrantKey) -> bool {
        let remote = self.links.as_ref().is_some_and(|l| {
            l.all()
                .iter()
                .any(|link| link.settled(crate::links::key_of(key)))
        });
        let key = gateway_key(key);
        remote
            || self.gateway.grant(key).is_ok()
            || matches!(
                lock(&self.shared.notes).get(&key),
                Some(Note::Ended(_) | Note::Failed(_))
            )
    }

    /// Entry-port candidates for a create in `region`: free in this gateway (neither
    /// live nor cooling down) and bindable now, in random order. `None` when this
    /// process does not serve the region (the caller draws from the range itself);
    /// empty when nothing is free, which the store reports as a conflict.
    pub fn port_candidates(&self, region: RegionId) -> Option<Vec<u16>> {
        let served = self.shared.regions.get(&region)?;
        let now = Instant::now();
        let mut ports = lock(&served.ports);
        let (n, offered) = if ports.range().len() <= SMALL_RANGE {
            (ports.range().len(), usize::MAX)
        } else {
            (CANDIDATES, BINDABLE_CANDIDATES)
        };
        let drawn = ports.candidates(n, now).unwrap_or_default();
        drop(ports);
        if served.remote {
            // Bound at the gateway: a port it cannot bind fails the open there.
            return Some(drawn.into_iter().take(offered).collect());
        }
        // From a large range the store takes the first it holds free (nearly always the
        // first): checking all 64 cost four system calls each on every create.
        Some(
            drawn
                .into_iter()
                .filter(|p| bindable(SocketAddr::new(served.bind, *p)))
                .take(offered)
                .collect(),
        )
    }

    /// Byte counts so far of a grant's live connections, by their store rows.
    pub fn live_counts(
        &self,
        key: orchestrator::GrantKey,
    ) -> HashMap<ConnectionRecordId, (u64, u64)> {
        if let Some(links) = &self.links {
            let remote = links.live_counts(crate::links::key_of(key));
            if !remote.is_empty() {
                return remote;
            }
        }
        let Ok(conns) = self.gateway.connections(gateway_key(key)) else {
            return HashMap::new();
        };
        let live = lock(&self.shared.live);
        conns
            .into_iter()
            .filter_map(|c| {
                live.get(&c.id)
                    .map(|(_, row)| (*row, (c.bytes_in, c.bytes_out)))
            })
            .collect()
    }

    /// Closes every listener and connection, records their ends, stops the event task
    /// and the heartbeat, and unregisters the run.
    pub async fn shutdown(&self) {
        let report = self.gateway.shutdown().await;
        tracing::info!(
            grants = report.grants,
            connections = report.connections_killed,
            "gateway stopped"
        );
        self.tunnels.shutdown().await;
        if let Some(links) = &self.links {
            links.shutdown().await;
        }
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        if tasks.is_empty() {
            return;
        }
        for (stop, task) in tasks {
            let _ = stop.send(());
            let _ = task.await;
        }
        // Every end is written; a row that could not be is an orphan now, ended by the
        // sweep below or by the next server's.
        let store = &self.shared.store;
        let forgotten = store.forget_gateway_run(self.shared.run).await;
        let orphans = store
            .end_orphaned_connections(Utc::now(), GONE_REASON)
            .await;
        if let Err(e) = forgotten.and(orphans) {
            tracing::error!(error = %e, "could not unregister the gateway run");
        }
    }
}

/// Whether a listener could be bound at `addr` now (as the gateway binds: SO_REUSEADDR,
/// so a port whose old connections linger in TIME_WAIT counts as free).
fn bindable(addr: SocketAddr) -> bool {
    // std's listener sets SO_REUSEADDR, as the gateway's does, and is not registered
    // with the runtime (two system calls fewer than tokio's).
    std::net::TcpListener::bind(addr).is_ok()
}

impl orchestrator::DataPlane for GatewayPlane {
    fn open(&self, grant: &LiveGrant) {
        if let LiveGrant::Access(a) = grant
            && a.terminal
        {
            // The server's own terminal connects to the router: no entry port.
            tracing::debug!(grant = %grant.key(), "terminal access: no entry port");
            return;
        }
        let plane = self.clone();
        let grant = grant.clone();
        tokio::spawn(async move { plane.open_now(grant).await });
    }

    fn set_deadline(&self, key: orchestrator::GrantKey, expires_at: DateTime<Utc>) {
        let key = gateway_key(key);
        let deadline = Some(self.gateway.deadline_for(expires_at));
        // Under the notes' lock, so an open under way either sees the note or its
        // listener is already there to take the deadline.
        if let Some(links) = &self.links {
            links.broadcast(control::msg::Down::SetDeadline {
                key: crate::links::key_of(orchestrator_key(key)),
                expires_at,
            });
        }
        let mut notes = lock(&self.shared.notes);
        if self.gateway.set_deadline(key, deadline).is_err() {
            notes.insert(key, Note::Deadline(Instant::now(), expires_at));
        }
    }

    fn close(&self, key: orchestrator::GrantKey, reason: orchestrator::EndReason) {
        if let Some(links) = &self.links {
            links.broadcast(control::msg::Down::Close {
                key: crate::links::key_of(key),
                reason: match reason {
                    orchestrator::EndReason::Expired => control::msg::CloseReason::Expired,
                    orchestrator::EndReason::Revoked => control::msg::CloseReason::Revoked,
                    orchestrator::EndReason::Failed => control::msg::CloseReason::Failed,
                },
            });
        }
        let key = gateway_key(key);
        self.note(key, Note::Ended(Instant::now()));
        let reason = match reason {
            orchestrator::EndReason::Expired => gateway::EndReason::Expired,
            orchestrator::EndReason::Revoked => gateway::EndReason::Revoked,
            orchestrator::EndReason::Failed => {
                gateway::EndReason::Error("provisioning failed".into())
            }
        };
        let plane = self.clone();
        tokio::spawn(async move {
            if let Ok(report) = plane.gateway.close(key, reason).await {
                tracing::info!(
                    grant = %key,
                    reason = %report.reason,
                    killed = report.connections_killed,
                    "entry port closed"
                );
            }
            // Its port and bookkeeping go with the `GrantClosed` event, after the
            // events of its connections.
        });
    }
    fn dial(&self, router: &store::Router, port: u16) -> orchestrator::DialFuture {
        crate::tunnels::TunnelGateway::dial(&self.tunnels, router, port)
    }

    fn tunnel_gateway(&self, region: RegionId) -> Option<std::net::Ipv4Addr> {
        match self.shared.regions.get(&region) {
            Some(r) if r.remote => Some(r.tunnel_gateway),
            _ => self.tunnels.gateway_address(region),
        }
    }
}

impl Shared {
    /// Registers the run, or renews its heartbeat (re-registering it if another server
    /// judged it gone during a long pause).
    async fn alive(&self, now: DateTime<Utc>) -> Result<(), store::StoreError> {
        self.store
            .record_gateway_run(&store::GatewayRun {
                id: self.run,
                process: self.process.to_record(),
                started_at: self.started_at,
                seen_at: now,
            })
            .await
    }

    /// Forgets the runs that are gone and ends the live rows no registered run owns
    /// (always at start-up, for rows from before owners; else only when a run was
    /// forgotten). Returns how many rows it ended.
    async fn sweep(&self, now: DateTime<Utc>, always: bool) -> Result<u64, store::StoreError> {
        let stale_after = self.heartbeat * HEARTBEATS_TO_GONE;
        let mut forgot = false;
        for run in self.store.list_gateway_runs().await? {
            if run.id == self.run || !runs::gone(&self.process, &run, now, stale_after) {
                continue;
            }
            tracing::info!(run = %run.id, process = %run.process, seen_at = %run.seen_at, "gateway run gone");
            forgot |= self.store.forget_gateway_run(run.id).await?;
        }
        if !(always || forgot) {
            return Ok(0);
        }
        let ended = self
            .store
            .end_orphaned_connections(now, GONE_REASON)
            .await?;
        if ended > 0 {
            tracing::info!(
                connections = ended,
                "ended connections of gateway runs that are gone"
            );
        }
        Ok(ended)
    }

    /// Drops a grant's bookkeeping and releases its port (idempotent).
    fn forget(&self, key: GrantKey) {
        let meta = lock(&self.grants).remove(&key);
        if let Some(meta) = meta {
            self.release(meta);
        }
    }

    fn release(&self, meta: Meta) {
        if let Some(region) = self.regions.get(&meta.region) {
            lock(&region.ports).release(meta.port, Instant::now());
        }
    }

    /// Whether this refusal is audited (a scanner must not flood the audit log).
    fn audit_refusal(&self, key: GrantKey) -> bool {
        let mut refusals = lock(&self.refusals);
        let now = Instant::now();
        refusals.retain(|_, (since, _)| now.duration_since(*since) < Duration::from_secs(60));
        let entry = refusals.entry(key).or_insert((now, 0));
        entry.1 += 1;
        entry.1 <= REFUSALS_AUDITED_PER_MINUTE
    }

    async fn handle(&self, event: Event) -> Result<(), store::StoreError> {
        let key = event.key();
        let meta = lock(&self.grants).get(&key).copied();
        let (kind, id) = kind(key);
        match event {
            Event::ConnectionRefused {
                source,
                at,
                refusal,
                ..
            } => {
                tracing::warn!(grant = %key, %source, %refusal, "connection refused");
                if let Some(meta) = meta
                    && self.audit_refusal(key)
                {
                    self.store
                        .append_audit(store::NewAudit {
                            org_id: meta.org,
                            at,
                            actor: "gateway".into(),
                            actor_address: Some(source.ip()),
                            action: format!("{kind}.connection_refused"),
                            target: Some(format!("{kind}:{id}")),
                            details: serde_json::json!({
                                "source": source.to_string(),
                                "reason": refusal.to_string(),
                                "router_id": meta.router.to_string(),
                            }),
                        })
                        .await?;
                }
            }
            // Staged into a batch by `stage`.
            Event::ConnectionOpened { .. } | Event::ConnectionClosed { .. } => {}
            Event::GrantClosed {
                at,
                reason,
                connections_killed,
                ..
            } => {
                tracing::info!(grant = %key, %reason, killed = connections_killed, "grant closed at the gateway");
                let meta = lock(&self.grants).remove(&key);
                if let Some(meta) = meta {
                    self.release(meta);
                }
                // Rows whose end was not written (or not yet reported): none of the
                // grant's connections is open any more.
                let unended = {
                    let mut live = lock(&self.live);
                    let before = live.len();
                    live.retain(|_, (k, _)| *k != key);
                    before - live.len()
                };
                if unended > 0 {
                    let n = self
                        .store
                        .end_grant_connections(
                            self.run,
                            grant_kind(key),
                            &id,
                            at,
                            &reason.to_string(),
                        )
                        .await?;
                    tracing::warn!(grant = %key, connections = n, "ended connections whose end was not recorded");
                }
            }
        }
        Ok(())
    }
}

/// Connection rows waiting to be written together, and what follows their write.
#[derive(Default)]
struct Batch {
    /// Each row, and for an end the connection it ends (its `live` entry goes once the
    /// end is written).
    rows: Vec<(store::NewConnection, Option<ConnectionId>)>,
    /// First uses to record: `authorized_at`.
    authorized: Vec<(GrantKey, DateTime<Utc>)>,
}

impl Shared {
    /// Stages a connection's opening or end (logged now, written by `flush`); hands any
    /// other event back.
    fn stage(&self, event: Event, batch: &mut Batch) -> Option<Event> {
        let key = event.key();
        match event {
            Event::ConnectionOpened {
                id: conn,
                source,
                at,
                first,
                ..
            } => {
                tracing::info!(grant = %key, %source, connection = %conn, "connection forwarded");
                let meta = lock(&self.grants).get(&key).copied()?;
                let row = ConnectionRecordId::new();
                lock(&self.live).insert(conn, (key, row));
                batch
                    .rows
                    .push((self.row(key, meta, row, source, at, None), None));
                if first {
                    batch.authorized.push((key, at));
                }
                None
            }
            Event::ConnectionClosed {
                id: conn,
                source,
                started_at,
                at,
                bytes_in,
                bytes_out,
                reason,
                ..
            } => {
                tracing::info!(grant = %key, %source, connection = %conn, bytes_in, bytes_out, %reason, "connection ended");
                // No meta: its grant's close already ended its row, if it had one.
                let meta = lock(&self.grants).get(&key).copied()?;
                // No row: its opening was dropped; the end writes the whole row.
                let row = lock(&self.live)
                    .get(&conn)
                    .map_or_else(ConnectionRecordId::new, |(_, row)| *row);
                let end = store::ConnectionEnd {
                    at,
                    bytes_from_client: bytes_in,
                    bytes_to_client: bytes_out,
                    reason: reason.to_string(),
                };
                batch.rows.push((
                    self.row(key, meta, row, source, started_at, Some(end)),
                    Some(conn),
                ));
                None
            }
            other => Some(other),
        }
    }

    fn row(
        &self,
        key: GrantKey,
        meta: Meta,
        id: ConnectionRecordId,
        source: SocketAddr,
        started_at: DateTime<Utc>,
        end: Option<store::ConnectionEnd>,
    ) -> store::NewConnection {
        store::NewConnection {
            id,
            gateway_run: self.run,
            org_id: meta.org,
            router_id: meta.router,
            grant_kind: grant_kind(key),
            grant_id: kind(key).1,
            source,
            started_at,
            end,
        }
    }

    /// Writes the staged rows in one transaction (one at a time if that fails, so one
    /// bad row sinks no other), then the first uses. A row whose end could not be
    /// written keeps its `live` entry: its grant's close ends it.
    async fn flush(&self, batch: &mut Batch) {
        let rows = std::mem::take(&mut batch.rows);
        if !rows.is_empty() {
            let all: Vec<store::NewConnection> = rows.iter().map(|(r, _)| r.clone()).collect();
            let written: Vec<Option<ConnectionId>> = match self.store.record_connections(&all).await
            {
                Ok(()) => rows.into_iter().map(|(_, conn)| conn).collect(),
                Err(e) => {
                    tracing::warn!(error = %e, rows = all.len(), "could not record connections together; one at a time");
                    let mut done = Vec::new();
                    for (row, conn) in rows {
                        match self
                            .store
                            .record_connections(std::slice::from_ref(&row))
                            .await
                        {
                            Ok(()) => done.push(conn),
                            Err(e) => {
                                tracing::error!(error = %e, connection = %row.id, "could not record a connection")
                            }
                        }
                    }
                    done
                }
            };
            let mut live = lock(&self.live);
            for conn in written.into_iter().flatten() {
                live.remove(&conn);
            }
        }
        for (key, at) in std::mem::take(&mut batch.authorized) {
            let set = match key {
                GrantKey::Access(id) => self.store.set_access_authorized(id, at).await,
                GrantKey::Forward(id) => self.store.set_forward_authorized(id, at).await,
            };
            if let Err(e) = set {
                tracing::error!(grant = %key, error = %e, "could not record the grant's first use");
            }
        }
    }

    /// Records a run of events: connection rows together, other events in their place.
    async fn record(&self, events: Vec<Event>) {
        let mut batch = Batch::default();
        for event in events {
            let Some(other) = self.stage(event, &mut batch) else {
                continue;
            };
            // What came before is written first (a grant's close ends what is left).
            self.flush(&mut batch).await;
            if let Err(e) = self.handle(other).await {
                tracing::error!(error = %e, "could not record a gateway event");
            }
        }
        self.flush(&mut batch).await;
    }
}

fn grant_kind(key: GrantKey) -> store::GrantKind {
    match key {
        GrantKey::Access(_) => store::GrantKind::Access,
        GrantKey::Forward(_) => store::GrantKind::Forward,
    }
}

/// Keeps the run registered and ends the rows of runs that are gone, every heartbeat,
/// until told to stop.
async fn heartbeat(shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(shared.heartbeat) => {}
        }
        let now = Utc::now();
        let beat = shared.alive(now).await;
        if let Err(e) = beat.and(shared.sweep(now, false).await.map(|_| ())) {
            tracing::error!(error = %e, "gateway heartbeat failed");
        }
    }
}

/// Closes, every [`ENDS_SWEEP`], the open grants the store no longer has active: those
/// another server ended while this one missed its note. The keys are taken before the
/// store is read, and a grant is opened only once the store has it active, so a grant
/// opened meanwhile is never taken for an ended one.
async fn ends_sweep(plane: GatewayPlane, mut stop: oneshot::Receiver<()>) {
    use orchestrator::DataPlane;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(ENDS_SWEEP) => {}
        }
        let open: Vec<GrantKey> = plane.gateway.grants().into_iter().map(|g| g.key).collect();
        if open.is_empty() {
            continue;
        }
        let store = &plane.shared.store;
        let live = match tokio::try_join!(store.list_live_access(), store.list_live_forwards()) {
            Ok((access, forwards)) => {
                let mut live = HashMap::new();
                for a in access {
                    live.insert(GrantKey::Access(a.id), (a.status, a.expires_at));
                }
                for f in forwards {
                    live.insert(GrantKey::Forward(f.id), (f.status, f.expires_at));
                }
                live
            }
            Err(e) => {
                tracing::warn!(error = %e, "gateway: could not check open grants against the store");
                continue;
            }
        };
        let now = Utc::now();
        for key in open {
            let reason = match live.get(&key) {
                Some((GrantStatus::Active, _)) => continue,
                Some((_, expires_at)) if *expires_at <= now => orchestrator::EndReason::Expired,
                _ => orchestrator::EndReason::Revoked,
            };
            tracing::info!(grant = %key, "gateway: the grant ended elsewhere; closing its port");
            let key = match key {
                GrantKey::Access(id) => orchestrator::GrantKey::Access(id),
                GrantKey::Forward(id) => orchestrator::GrantKey::Forward(id),
            };
            plane.close(key, reason);
        }
    }
}

/// Most events recorded in one go (their connection rows in one transaction).
const BATCH: usize = 256;

/// What is queued now, up to `BATCH` events after `first`.
fn take_queued(rx: &mut Events, first: Option<Event>) -> Vec<Event> {
    let mut events: Vec<Event> = first.into_iter().collect();
    while events.len() < BATCH
        && let Some(e) = rx.try_recv()
    {
        events.push(e);
    }
    events
}

/// Writes the gateway's events to the store until told to stop, then what is already
/// queued: whatever has queued up while the last write ran is written together, so a
/// burst of connections costs a few transactions, not two per connection.
async fn record_events(shared: Arc<Shared>, mut rx: Events, mut stop: oneshot::Receiver<()>) {
    loop {
        let first = tokio::select! {
            event = rx.recv() => match event {
                Some(e) => e,
                None => return,
            },
            _ = &mut stop => break,
        };
        let events = take_queued(&mut rx, Some(first));
        shared.record(events).await;
    }
    loop {
        let events = take_queued(&mut rx, None);
        if events.is_empty() {
            return;
        }
        shared.record(events).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use orchestrator::DataPlane as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A store with one SSH access grant, active, whose router's SSH port is an echo
    /// service; the gateway plane over it.
    async fn fixture(
        dir: &std::path::Path,
    ) -> (store::Store, GatewayPlane, store::TransientAccess) {
        fixture_with(dir, gateway::Config::default()).await
    }

    async fn fixture_with(
        dir: &std::path::Path,
        gateway_config: gateway::Config,
    ) -> (store::Store, GatewayPlane, store::TransientAccess) {
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let echo_port = echo.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = c.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let config = ServerConfig {
            data_dir: dir.to_owned(),
            ..ServerConfig::default()
        };
        let store = crate::bootstrap::open_store(&config).await.unwrap();
        let org = store.create_organisation("o").await.unwrap();
        let region = store.find_region_by_name("local").await.unwrap().unwrap();
        let router = store
            .create_router(store::NewRouter {
                org_id: org.id,
                site_name: None,
                region_id: region.id,
                name: "r".into(),
                tunnel_address: IpAddr::from([127, 0, 0, 1]),
                api_port: 8728,
                ssh_port: echo_port,
                winbox_port: 8291,
                api_tls: false,
                api_tls_fingerprint: None,
                username: "admin".into(),
                password: "x".into(),
            })
            .await
            .unwrap();
        let plane = GatewayPlane::start(store.clone(), &config, gateway_config)
            .await
            .unwrap();
        let now = Utc::now();
        let grant = store
            .create_access(store::NewAccess {
                org_id: org.id,
                router_id: router.id,
                access_type: AccessType::Ssh,
                access: domain::AccessLevel::Full,
                allow_rfc1918: false,
                allow_from: domain::AllowFrom::parse(
                    "127.0.0.1",
                    &domain::Policy { lab_mode: true },
                )
                .unwrap(),
                username: "u".into(),
                password: "p".into(),
                expires_at: now + chrono::TimeDelta::minutes(30),
                created_by: "test".into(),
                region_id: region.id,
                entry_point: "127.0.0.1".into(),
                port_candidates: plane.port_candidates(region.id).unwrap(),
                audit: store::NewAudit {
                    org_id: org.id,
                    at: now,
                    actor: "test".into(),
                    actor_address: None,
                    action: "access.create".into(),
                    target: None,
                    details: serde_json::json!({}),
                },
                terminal: false,
                job: None,
            })
            .await
            .unwrap();
        for (from, to) in [
            (GrantStatus::Requested, GrantStatus::Provisioning),
            (GrantStatus::Provisioning, GrantStatus::Active),
        ] {
            store
                .transition_access(grant.id, &[from], to, now, None)
                .await
                .unwrap();
        }
        let grant = store.get_access(org.id, router.id, grant.id).await.unwrap();
        (store, plane, grant)
    }

    async fn settle(plane: &GatewayPlane, key: orchestrator::GrantKey) {
        for _ in 0..200 {
            if plane.settled(key) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("never settled");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_forwards_records_and_a_close_during_the_open_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (store, plane, grant) = fixture(dir.path()).await;
        let key = orchestrator::GrantKey::Access(grant.id);
        plane.open(&LiveGrant::Access(grant.clone()));
        settle(&plane, key).await;
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", grant.port))
            .await
            .unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        c.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"ping");
        // Live: listed with its counts so far.
        for _ in 0..200 {
            if plane.live_counts(key).values().any(|v| *v == (4, 4)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            plane.live_counts(key).into_values().collect::<Vec<_>>(),
            [(4, 4)]
        );
        drop(c);
        // Revoked: the port closes, the connection is recorded, first use set.
        plane.close(key, orchestrator::EndReason::Revoked);
        for _ in 0..200 {
            if plane.gateway().grants().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(plane.gateway().grants().is_empty());
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", grant.port))
                .await
                .is_err()
        );
        plane.shutdown().await;
        let rows = store
            .list_connections(
                grant.org_id,
                grant.router_id,
                store::GrantKind::Access,
                &grant.id.to_string(),
                10,
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].bytes_from_client, rows[0].bytes_to_client), (4, 4));
        assert!(rows[0].ended_at.is_some());
        let again = store
            .get_access(grant.org_id, grant.router_id, grant.id)
            .await
            .unwrap();
        assert_eq!(again.authorized_at, Some(rows[0].started_at));

        // Another store and plane: open and close at once. The close is noted before the
        // open's task has its listener, and none is left.
        let (_, plane, grant) = fixture(dir.path().join("b").as_path()).await;
        let key = orchestrator::GrantKey::Access(grant.id);
        plane.open(&LiveGrant::Access(grant.clone()));
        plane.close(key, orchestrator::EndReason::Revoked);
        settle(&plane, key).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(plane.gateway().grants().is_empty());
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", grant.port))
                .await
                .is_err()
        );
        plane.shutdown().await;
    }

    /// Issue 13, finding 1: a moved router's live grants kept forwarding to its old
    /// address. Now new connections go to the new place.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_moved_routers_live_grant_forwards_to_its_new_place() {
        let dir = tempfile::tempdir().unwrap();
        let (store, plane, grant) = fixture(dir.path()).await;
        let key = orchestrator::GrantKey::Access(grant.id);
        plane.open(&LiveGrant::Access(grant.clone()));
        settle(&plane, key).await;
        // The router's new SSH service says who it is.
        let moved_to = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let new_port = moved_to.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = moved_to.accept().await {
                let _ = c.write_all(b"new place").await;
            }
        });
        let router = store
            .update_router(
                grant.org_id,
                grant.router_id,
                store::RouterPatch {
                    ssh_port: Some(new_port),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        plane.router_moved(&router).await;
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", grant.port))
            .await
            .unwrap();
        let mut got = [0u8; 9];
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got, b"new place");
        assert_eq!(
            plane
                .gateway()
                .grant(gateway_key(key))
                .unwrap()
                .target
                .address()
                .port(),
            new_port
        );
        plane.shutdown().await;
    }

    /// Waits until `check` holds (5 s at most).
    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..1000 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("never: {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_end_is_lost_when_the_recorder_falls_behind() {
        let dir = tempfile::tempdir().unwrap();
        // Room for one droppable event: the recorder, writing each event to SQLite,
        // falls behind at once.
        let (store, plane, grant) = fixture_with(
            dir.path(),
            gateway::Config {
                event_capacity: 1,
                ..gateway::Config::default()
            },
        )
        .await;
        let key = orchestrator::GrantKey::Access(grant.id);
        plane.open(&LiveGrant::Access(grant.clone()));
        settle(&plane, key).await;
        let gkey = gateway_key(key);
        let live = |n: usize| {
            let plane = plane.clone();
            move || {
                plane
                    .gateway()
                    .grant(gkey)
                    .is_ok_and(|g| g.connections == n)
            }
        };
        // 40 connections at once, each echoing a byte, then all closed together: 40
        // ends in one burst. Then 10 more, still open when the grant is revoked.
        let mut conns = Vec::new();
        for _ in 0..40 {
            conns.push(echo_one(grant.port).await);
        }
        until("40 live", live(40)).await;
        drop(conns);
        until("none live", live(0)).await;
        let mut open = Vec::new();
        for _ in 0..10 {
            open.push(echo_one(grant.port).await);
        }
        until("10 live", live(10)).await;
        plane.close(key, orchestrator::EndReason::Revoked);
        until("the grant closed", || plane.gateway().grants().is_empty()).await;
        assert!(
            plane.gateway().events_dropped() > 0,
            "the queue never overflowed"
        );

        // What an operator sees through the API.
        let config = ServerConfig {
            data_dir: dir.path().to_owned(),
            ..ServerConfig::default()
        };
        let state = crate::AppState::new(store.clone(), config, Arc::new(crate::SystemClock))
            .with_gateway(plane.clone());
        let secret = crate::auth::generate_token();
        store
            .create_api_token(store::NewApiToken {
                org_id: grant.org_id,
                name: "t".into(),
                role: domain::Role::Viewer,
                token_hash: crate::auth::hash_token(&secret),
                created_by: None,
                expires_at: None,
            })
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/api/routers/{}/transient-access/{}/connections",
            listener.local_addr().unwrap(),
            grant.router_id,
            grant.id
        );
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(crate::run(listener, state, async {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        let mut list = Vec::new();
        for _ in 0..400 {
            list = http
                .get(&url)
                .bearer_auth(&secret)
                .send()
                .await
                .unwrap()
                .json::<Vec<serde_json::Value>>()
                .await
                .unwrap();
            if list.len() == 50 && list.iter().all(|c| !c["ended_at"].is_null()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let ended = |reason: &str| {
            list.iter()
                .filter(|c| {
                    c["end_reason"] == reason
                        && c["bytes_from_client"] == 1
                        && c["bytes_to_client"] == 1
                        && c["source_address"] == "127.0.0.1"
                        && c["source_port"].as_u64().is_some_and(|p| p > 0)
                })
                .count()
        };
        assert_eq!(
            (list.len(), ended("finished"), ended("revoked")),
            (50, 40, 10),
            "{list:#?}"
        );
        let _ = stop.send(());
        server.await.unwrap().unwrap();
        plane.shutdown().await;
        drop(open);
    }

    /// A connection through the grant's port that has echoed one byte.
    async fn echo_one(port: u16) -> tokio::net::TcpStream {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        c.write_all(b"x").await.unwrap();
        let mut back = [0u8; 1];
        c.read_exact(&mut back).await.unwrap();
        c
    }
}
