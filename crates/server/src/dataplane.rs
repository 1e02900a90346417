//! The gateways of `postern server`: the orchestrator's [`orchestrator::DataPlane`] hook,
//! the entry-port proposals a create offers the store, and the bookkeeping of grants
//! whose ports are being opened. Every region is served by a gateway node driven over
//! the control channel ([`crate::links`]): a region configured `local` (the default) by
//! the node inside this process, over an in-memory stream; a region configured `remote`
//! by a `postern gateway`, over mutual TLS. One code path: the same messages, the same
//! convergence, the same event recording for both.
//!
//! The hook is synchronous and must not block, while opening a grant needs its router
//! from the store: `open` spawns that work. A close or a new end is sent on the same
//! ordered stream as the open (a gateway never reopens a closed grant), and a new end
//! that arrives while the open is still being prepared is noted and sent once the port
//! listens.
//!
//! The in-process node's boot is this process's gateway run ([`crate::runs`]): the
//! connection rows it records are owned by the run, a heartbeat keeps the run
//! registered, and at start-up and on each heartbeat the rows of runs that are gone (and
//! rows from before owners) are ended as "gateway stopped", never those of another live
//! server on the same database. A remote gateway's boots are its own runs (see
//! [`crate::links`]).

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use domain::{AccessType, GatewayRunId, GrantStatus, OrgId, RegionId, RouterId};
use gateway::{GrantKey, PortAllocator, PortRange};
use orchestrator::LiveGrant;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::ServerConfig;
use crate::links::{Link, Links};
use crate::runs::{self, Process};

/// How many ports a create offers the store from a large range.
const CANDIDATES: usize = 64;
/// Below this many ports, every free one is offered.
const SMALL_RANGE: usize = 256;
/// How many of a large range's drawn candidates are offered to the store: the first
/// this many found bindable, checked in order.
const BINDABLE_CANDIDATES: usize = 8;
/// Notes older than this are forgotten (an open is never pending that long).
const NOTE_LIFETIME: Duration = Duration::from_secs(600);
/// Another host's run is gone once unseen for this many heartbeats.
const HEARTBEATS_TO_GONE: u32 = 4;
/// How the rows of a gateway run that is gone end.
const GONE_REASON: &str = "gateway stopped";
/// How often a server that shares PostgreSQL with other servers checks the grants open
/// at its gateways against the store: the backstop for a grant note it missed (sent
/// before its `LISTEN` started, or while that connection was being made again).
const ENDS_SWEEP: Duration = Duration::from_secs(1);
/// How often the in-process node reports its status (tunnel peers, live counts).
const LOCAL_STATUS_EVERY: Duration = Duration::from_millis(500);
/// How long `rebuild` waits for the in-process node's first convergence.
const REBUILD_WAIT: Duration = Duration::from_secs(60);

/// Why the gateway could not be started.
#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("region {name}: {message}")]
    Region { name: String, message: String },
}

/// One region of the configuration: where its entry ports bind (for a local one) and
/// which ports this server offers it.
struct Region {
    bind: IpAddr,
    ports: Mutex<PortAllocator>,
    /// Served by a `postern gateway` over the control channel.
    remote: bool,
    /// The gateway's address inside the region's tunnel (from the configuration, so
    /// it is known whether or not the gateway is reachable).
    tunnel_gateway: std::net::Ipv4Addr,
}

/// What this server keeps of a grant whose port it opened.
#[derive(Debug, Clone, Copy)]
struct Meta {
    region: RegionId,
    port: u16,
}

/// What happened to a grant while its open may still be under way.
#[derive(Debug, Clone, Copy)]
enum Note {
    Ended(Instant),
    Deadline(Instant, DateTime<Utc>),
    Failed(Instant),
    /// Its port is bound on this host by another process: with several servers on one
    /// database, another server's in-process gateway, which opened it.
    Elsewhere(Instant),
}

impl Note {
    fn at(&self) -> Instant {
        match self {
            Note::Ended(at) | Note::Deadline(at, _) | Note::Failed(at) | Note::Elsewhere(at) => *at,
        }
    }
}

struct Shared {
    store: store::Store,
    /// This process's gateway run: the in-process node's boot, the owner of the rows
    /// it records.
    run: GatewayRunId,
    process: Process,
    started_at: DateTime<Utc>,
    heartbeat: Duration,
    regions: HashMap<RegionId, Region>,
    grants: Mutex<HashMap<GrantKey, Meta>>,
    notes: Mutex<HashMap<GrantKey, Note>>,
    /// Woken whenever an open is answered (or given up): `?wait=true` waits on it.
    settled: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A background task (the heartbeat, the ends sweep) and how to tell it to stop.
type Task = (oneshot::Sender<()>, JoinHandle<()>);

/// The gateways of `postern server`: cheap to clone, every clone drives the same ones.
#[derive(Clone)]
pub struct GatewayPlane {
    /// The node inside this process, when a region is local.
    node: Option<gateway::Node>,
    links: Links,
    tunnels: crate::tunnels::Tunnels,
    shared: Arc<Shared>,
    tasks: Arc<Mutex<Vec<Task>>>,
}

impl std::fmt::Debug for GatewayPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayPlane")
            .field("links", &self.links)
            .finish()
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

fn record_parts(grant: &LiveGrant) -> (OrgId, RouterId, RegionId, u16, DateTime<Utc>) {
    match grant {
        LiveGrant::Access(a) => (a.org_id, a.router_id, a.region_id, a.port, a.expires_at),
        LiveGrant::Forward(f) => (f.org_id, f.router_id, f.region_id, f.port, f.expires_at),
    }
}

impl GatewayPlane {
    /// The gateways of the regions `config` names (each must exist in the store, as
    /// `bootstrap::open_store` makes sure): the in-process node for the local ones
    /// (their tunnels bound, their keys from the store), links to it and to the remote
    /// gateways, the heartbeat of this process's gateway run. Connections that runs now
    /// gone left recorded as live are ended first ("gateway stopped"); another live
    /// server's are not.
    pub async fn start(
        store: store::Store,
        config: &ServerConfig,
        gateway_config: gateway::Config,
    ) -> Result<GatewayPlane, DataPlaneError> {
        let run = GatewayRunId::new();
        let mut regions = HashMap::new();
        let mut node_regions = Vec::new();
        for r in &config.regions {
            let err = |message: String| DataPlaneError::Region {
                name: r.name.clone(),
                message,
            };
            let stored = store
                .find_region_by_name(&r.name)
                .await?
                .ok_or_else(|| err("not in the store".into()))?;
            let range =
                PortRange::new(stored.port_min, stored.port_max).map_err(|e| err(e.to_string()))?;
            regions.insert(
                stored.id,
                Region {
                    bind: r.bind_address(),
                    ports: Mutex::new(PortAllocator::new(range, config.port_cooldown)),
                    remote: r.remote(),
                    tunnel_gateway: r.tunnel_gateway(),
                },
            );
            if r.remote() {
                continue;
            }
            crate::bootstrap::ensure_region_tunnel(&store, stored.id)
                .await
                .map_err(|e| err(e.to_string()))?;
            let private = store.region_tunnel_private_key(stored.id).await?;
            let private_key = tunnel::PrivateKey::from_base64(private.expose())
                .map_err(|e| err(format!("the stored tunnel key is unreadable: {e}")))?;
            let listen = r.tunnel_listen();
            let socket = tunnel::bind_udp(listen)
                .map_err(|e| err(format!("cannot bind the tunnel's UDP socket {listen}: {e}")))?;
            let bound = socket.local_addr().map_err(|e| err(e.to_string()))?;
            node_regions.push(gateway::RegionConfig {
                id: stored.id,
                name: r.name.clone(),
                private_key,
                gateway_address: r.tunnel_gateway(),
                prefix: r.tunnel_prefix(),
                udp: gateway::Udp::Socket(socket),
                endpoint: r.tunnel_endpoint(bound),
                entry_bind: r.bind_address(),
                ports: range,
            });
        }
        let local_ids: HashSet<RegionId> = node_regions.iter().map(|r| r.id).collect();
        let node =
            if node_regions.is_empty() {
                None
            } else {
                let mut node_config = gateway::NodeConfig::new("in-process", node_regions);
                // The same room for droppable events while the link writes them.
                node_config.event_capacity = gateway_config.event_capacity;
                node_config.gateway = gateway_config;
                node_config.status_every = LOCAL_STATUS_EVERY;
                node_config.boot = Some(run);
                Some(gateway::Node::start(node_config).await.map_err(|e| {
                    DataPlaneError::Region {
                        name: "in-process gateway".into(),
                        message: e.to_string(),
                    }
                })?)
            };
        let remote: HashSet<RegionId> = regions
            .iter()
            .filter(|(_, r)| r.remote)
            .map(|(id, _)| *id)
            .collect();
        let identity = if remote.is_empty() {
            None
        } else {
            Some(
                crate::links::identity(&store, &crate::links::server_name())
                    .await
                    .map_err(|message| DataPlaneError::Region {
                        name: "control channel".into(),
                        message,
                    })?,
            )
        };
        let started_at = Utc::now();
        let shared = Arc::new(Shared {
            store: store.clone(),
            run,
            process: Process::current(),
            started_at,
            heartbeat: config.gateway_heartbeat,
            regions,
            grants: Mutex::new(HashMap::new()),
            notes: Mutex::new(HashMap::new()),
            settled: tokio::sync::Notify::new(),
        });
        shared.alive(started_at).await?;
        tracing::info!(run = %shared.run, process = %shared.process.to_record(), "gateway run registered");
        shared.sweep(started_at, true).await?;
        let links = Links::start(
            store,
            Arc::new(config.clone()),
            identity,
            remote,
            node.clone().map(|n| (n, local_ids)),
        )
        .await;
        let weak = Arc::downgrade(&shared);
        links.on_grant_closed(Box::new(move |key| {
            if let Some(shared) = weak.upgrade() {
                shared.forget(key);
            }
        }));
        let tunnels =
            crate::tunnels::Tunnels::new(config, &shared.store, links.clone(), node.clone())
                .await?;
        let (stop_beat, beat_stopped) = oneshot::channel();
        let beat = tokio::spawn(heartbeat(shared.clone(), beat_stopped));
        let plane = GatewayPlane {
            node,
            links,
            tunnels,
            shared,
            tasks: Arc::new(Mutex::new(vec![(stop_beat, beat)])),
        };
        if plane.shared.store.backend() == store::Backend::Postgres {
            let (stop_sweep, sweep_stopped) = oneshot::channel();
            let sweep = tokio::spawn(ends_sweep(plane.clone(), sweep_stopped));
            lock(&plane.tasks).push((stop_sweep, sweep));
        }
        Ok(plane)
    }

    /// The in-process node's entry ports (for figures and tests), when a region is
    /// local.
    pub fn gateway(&self) -> Option<&gateway::Gateway> {
        self.node.as_ref().map(gateway::Node::gateway)
    }

    /// Connections the in-process node refused so far for `refusal`.
    pub fn refused(&self, refusal: gateway::Refusal) -> u64 {
        self.gateway().map_or(0, |g| g.refused(refusal))
    }

    /// The in-process node, when a region is local.
    pub fn node(&self) -> Option<&gateway::Node> {
        self.node.as_ref()
    }

    /// Every link: the in-process node's and the remote gateways'.
    pub fn links(&self) -> &Links {
        &self.links
    }

    /// The regions' management tunnels (admit and remove routers' keys, their status,
    /// streams to routers).
    pub fn tunnels(&self) -> &crate::tunnels::Tunnels {
        &self.tunnels
    }

    /// This process's gateway run, the owner of the connection rows its node records.
    pub fn run(&self) -> GatewayRunId {
        self.shared.run
    }

    /// Waits for the in-process node's first convergence: every active grant of the
    /// local regions listening (and every enrolled router admitted), so a restart keeps
    /// access working. Call before the orchestrator starts. Returns how many grants
    /// listen there. Remote gateways converge when their links come up.
    pub async fn rebuild(&self) -> Result<usize, DataPlaneError> {
        let Some(link) = self.links.local() else {
            return Ok(0);
        };
        let started = Instant::now();
        while !link.up() {
            if started.elapsed() > REBUILD_WAIT {
                return Err(DataPlaneError::Region {
                    name: "in-process gateway".into(),
                    message: format!("did not converge in {REBUILD_WAIT:?}: {:?}", link.state()),
                });
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Convergence sent every open; the node answers them in order.
        let listening = self.node.as_ref().map_or(0, |n| n.gateway().grants().len());
        tracing::info!(listening, "in-process gateway converged with the store");
        Ok(listening)
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

    /// Opens a grant's port at its region's gateway and waits for the answer; then
    /// passes on a new end that arrived meanwhile.
    async fn open_now(&self, grant: LiveGrant, opening: Opening) {
        self.open_at_gateway(grant, opening).await;
        self.shared.settled.notify_waiters();
    }

    fn spawn_open(&self, grant: &LiveGrant, opening: Opening) {
        if let LiveGrant::Access(a) = grant
            && a.terminal
        {
            // The server's own terminal connects to the router: no entry port.
            tracing::debug!(grant = %grant.key(), "terminal access: no entry port");
            return;
        }
        let plane = self.clone();
        let grant = grant.clone();
        tokio::spawn(async move { plane.open_now(grant, opening).await });
    }

    /// Resolves at the next answer of an open (or a give-up) at any gateway.
    pub async fn some_open_settled(&self) {
        self.shared.settled.notified().await;
    }

    async fn open_at_gateway(&self, grant: LiveGrant, opening: Opening) {
        let key = grant.key();
        {
            let mut notes = lock(&self.shared.notes);
            match notes.get(&key) {
                Some(Note::Ended(_)) => return,
                // A new attempt: an earlier failure no longer settles it.
                Some(Note::Failed(_) | Note::Elsewhere(_)) => {
                    notes.remove(&key);
                }
                _ => {}
            }
        }
        let (_, router_id, region_id, port, _) = record_parts(&grant);
        let router = match self.shared.store.get_router_any_org(router_id).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(grant = %key, error = %e, "cannot open the grant's port: its router cannot be read");
                self.note(key, Note::Failed(Instant::now()));
                return;
            }
        };
        let Some(link) = self.links.link(region_id) else {
            tracing::error!(grant = %key, "cannot open the grant's port: no gateway serves its region (none has joined)");
            self.note(key, Note::Failed(Instant::now()));
            return;
        };
        if let Some(region) = self.shared.regions.get(&region_id) {
            // The store settled the port; the allocator only learns it is live.
            let _ = lock(&region.ports).reserve(port, Instant::now());
        }
        lock(&self.shared.grants).insert(
            key,
            Meta {
                region: region_id,
                port,
            },
        );
        match link.open(crate::links::grant_spec(&grant, &router)).await {
            Ok(listen) => {
                tracing::info!(grant = %key, %listen, gateway = %link.gateway, "entry port listening");
            }
            Err(error) => {
                self.forget(key);
                let held_here = opening == Opening::Keep
                    && link.is_local()
                    && self
                        .shared
                        .regions
                        .get(&region_id)
                        .is_some_and(|r| !bindable(SocketAddr::new(r.bind, port)));
                if held_here {
                    // Another server's in-process gateway on this host opened it.
                    link.forget_failure(key);
                    self.note(key, Note::Elsewhere(Instant::now()));
                    tracing::info!(grant = %key, "entry port held by another process on this host (another server's gateway): left there");
                    return;
                }
                tracing::error!(grant = %key, %error, gateway = %link.gateway, "cannot open the grant's port");
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
                key: grant.key(),
                expires_at: at,
            });
        }
    }

    /// A grant this server may not have opened (another server's orchestrator made it
    /// active): reads it and, active, asks its gateway to open it too (idempotent: an
    /// open grant is answered at once), so that `settled` learns it here.
    pub fn confirm_open(&self, key: orchestrator::GrantKey) {
        let plane = self.clone();
        tokio::spawn(async move {
            let store = &plane.shared.store;
            let grant = match key {
                orchestrator::GrantKey::Access(id) => store
                    .get_access_any_org(id)
                    .await
                    .ok()
                    .flatten()
                    .filter(|a| !a.terminal)
                    .map(LiveGrant::Access),
                orchestrator::GrantKey::Forward(id) => store
                    .get_forward_any_org(id)
                    .await
                    .ok()
                    .flatten()
                    .map(LiveGrant::Forward),
            };
            if let Some(grant) = grant
                && grant.status() == GrantStatus::Active
            {
                plane.open_now(grant, Opening::Keep).await;
            }
        });
    }

    /// The router was moved (address or ports changed): every live grant of it
    /// forwards its new connections to the router's new place.
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
            let spec = crate::links::grant_spec(grant, router);
            self.links.broadcast(control::msg::Down::SetTarget {
                key: spec.key,
                target: spec.target,
            });
        }
    }

    /// Whether a grant's port is settled: listening (here, or at another server's gateway
    /// on this host), or known not to be coming (ended, or its open failed).
    /// `?wait=true` waits for this as well as for `active`.
    pub fn settled(&self, key: orchestrator::GrantKey) -> bool {
        let at_gateway = self.links.all().iter().any(|link| link.settled(key));
        at_gateway
            || matches!(
                lock(&self.shared.notes).get(&key),
                Some(Note::Ended(_) | Note::Failed(_) | Note::Elsewhere(_))
            )
    }

    /// Entry-port candidates for a create in `region`: free here (neither live nor
    /// cooling down) and, for a local region, bindable now, in random order. `None`
    /// when the region is not configured (the caller draws from the range itself);
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

    /// Byte counts so far of a grant's live connections, by their store rows (as its
    /// gateway last reported them).
    pub fn live_counts(
        &self,
        key: orchestrator::GrantKey,
    ) -> HashMap<domain::ConnectionRecordId, (u64, u64)> {
        self.links.live_counts(key)
    }

    /// Closes every port of the in-process node (their connections killed and
    /// recorded), stops the links and the heartbeat, and unregisters the run.
    pub async fn shutdown(&self) {
        if let Some(node) = &self.node {
            node.shutdown().await;
            // The ends of what it closed reach the store through its link.
            let link = self.links.local();
            for _ in 0..200 {
                if node.figures().events_pending == 0 || !link.as_ref().is_some_and(|l| l.up()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.links.shutdown().await;
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

/// Why a grant's port is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Opening {
    /// The grant has just become active.
    First,
    /// It was active already (an update on its router, or another server's orchestrator
    /// made it active): if its port on this host is already bound, another server's
    /// gateway holds it, which is not a failure.
    Keep,
}

/// Whether a listener could be bound at `addr` now (as the gateway binds: SO_REUSEADDR,
/// so a port whose old connections linger in TIME_WAIT counts as free).
fn bindable(addr: SocketAddr) -> bool {
    // std's listener sets SO_REUSEADDR, as the gateway's does, and is not registered
    // with the runtime (two system calls fewer than tokio's).
    std::net::TcpListener::bind(addr).is_ok()
}

fn close_reason(reason: orchestrator::EndReason) -> control::msg::CloseReason {
    match reason {
        orchestrator::EndReason::Expired => control::msg::CloseReason::Expired,
        orchestrator::EndReason::Revoked => control::msg::CloseReason::Revoked,
        orchestrator::EndReason::Failed => control::msg::CloseReason::Failed,
    }
}

impl orchestrator::DataPlane for GatewayPlane {
    fn open(&self, grant: &LiveGrant) {
        self.spawn_open(grant, Opening::First);
    }

    fn keep(&self, grant: &LiveGrant) {
        // Held by one of this server's gateways: nothing to do (its deadline travels on
        // its own). Else it is opened again, for a grant no gateway holds (its port lost,
        // say, to a restart); another server's in-process gateway on this host holding
        // it shows as a port already bound (see `Opening::Keep`).
        let key = grant.key();
        if self.links.all().iter().any(|l| l.is_open(key)) {
            return;
        }
        self.spawn_open(grant, Opening::Keep);
    }

    fn set_deadline(&self, key: orchestrator::GrantKey, expires_at: DateTime<Utc>) {
        // A gateway that holds the grant takes it now; an open still being prepared
        // sends it once its port listens.
        self.links
            .broadcast(control::msg::Down::SetDeadline { key, expires_at });
        let open = self.links.all().iter().any(|l| l.is_open(key));
        let mut notes = lock(&self.shared.notes);
        if !open && !matches!(notes.get(&key), Some(Note::Ended(_) | Note::Failed(_))) {
            notes.insert(key, Note::Deadline(Instant::now(), expires_at));
        }
    }

    fn close(&self, key: orchestrator::GrantKey, reason: orchestrator::EndReason) {
        self.note(key, Note::Ended(Instant::now()));
        // On the stream its open went (or goes) on: the gateway never reopens it.
        self.links.broadcast(control::msg::Down::Close {
            key,
            reason: close_reason(reason),
        });
        tracing::info!(grant = %key, reason = reason.as_str(), "entry port closing");
    }

    fn dial(&self, router: &store::Router, port: u16) -> orchestrator::DialFuture {
        crate::tunnels::TunnelGateway::dial(&self.tunnels, router, port)
    }

    fn tunnel_gateway(&self, region: RegionId) -> Option<std::net::Ipv4Addr> {
        self.shared.regions.get(&region).map(|r| r.tunnel_gateway)
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
    /// forgotten). Returns how many rows it ended. Remote gateways' boots are the
    /// links' business (a boot is gone when the gateway starts again).
    async fn sweep(&self, now: DateTime<Utc>, always: bool) -> Result<u64, store::StoreError> {
        let stale_after = self.heartbeat * HEARTBEATS_TO_GONE;
        let mut forgot = false;
        for run in self.store.list_gateway_runs().await? {
            if run.id == self.run
                || run.process.starts_with("gateway=")
                || !runs::gone(&self.process, &run, now, stale_after)
            {
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
        if let Some(meta) = meta
            && let Some(region) = self.regions.get(&meta.region)
        {
            lock(&region.ports).release(meta.port, Instant::now());
        }
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

/// Closes, every [`ENDS_SWEEP`], the grants open at this server's gateways that the
/// store no longer has active: those another server ended while this one missed its
/// note. The keys are taken before the store is read, and a grant is opened only once
/// the store has it active, so a grant opened meanwhile is never taken for an ended one.
async fn ends_sweep(plane: GatewayPlane, mut stop: oneshot::Receiver<()>) {
    use orchestrator::DataPlane;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(ENDS_SWEEP) => {}
        }
        let open: HashSet<control::msg::GrantKey> = plane
            .links
            .all()
            .iter()
            .flat_map(|l: &Arc<Link>| l.open_keys())
            .collect();
        if open.is_empty() {
            continue;
        }
        let store = &plane.shared.store;
        let live = match tokio::try_join!(store.list_live_access(), store.list_live_forwards()) {
            Ok((access, forwards)) => {
                let mut live = HashMap::new();
                for a in access {
                    live.insert(
                        control::msg::GrantKey::Access(a.id),
                        (a.status, a.expires_at),
                    );
                }
                for f in forwards {
                    live.insert(
                        control::msg::GrantKey::Forward(f.id),
                        (f.status, f.expires_at),
                    );
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
            plane.close(key, reason);
        }
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
        let (store, org, region, router) = store_with_router(&config, echo_port).await;
        let plane = GatewayPlane::start(store.clone(), &config, gateway_config)
            .await
            .unwrap();
        // As `postern server` does before its orchestrator runs.
        plane.rebuild().await.unwrap();
        let grant = active_access(
            &store,
            (org.id, router.id, region.id),
            "u",
            plane.port_candidates(region.id).unwrap(),
        )
        .await;
        let grant = store.get_access(org.id, router.id, grant.id).await.unwrap();
        (store, plane, grant)
    }

    /// The store of `config` with an organisation and, in its `local` region, a router on
    /// 127.0.0.1 whose SSH port is `ssh_port`.
    async fn store_with_router(
        config: &ServerConfig,
        ssh_port: u16,
    ) -> (
        store::Store,
        store::Organisation,
        store::Region,
        store::Router,
    ) {
        let store = crate::bootstrap::open_store(config).await.unwrap();
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
                ssh_port,
                winbox_port: 8291,
                api_tls: false,
                api_tls_fingerprint: None,
                username: "admin".into(),
                password: "x".into(),
            })
            .await
            .unwrap();
        (store, org, region, router)
    }

    /// An SSH access grant of `router` from 127.0.0.1 for 30 minutes, made `active` in
    /// the store (the orchestrator's part done), on the first free port of `ports`.
    async fn active_access(
        store: &store::Store,
        (org, router, region): (OrgId, RouterId, RegionId),
        username: &str,
        ports: Vec<u16>,
    ) -> store::TransientAccess {
        let now = Utc::now();
        let grant = store
            .create_access(store::NewAccess {
                org_id: org,
                router_id: router,
                access_type: AccessType::Ssh,
                access: domain::AccessLevel::Full,
                allow_rfc1918: false,
                allow_from: domain::AllowFrom::parse(
                    "127.0.0.1",
                    &domain::Policy { lab_mode: true },
                )
                .unwrap(),
                username: username.into(),
                password: "p".into(),
                expires_at: now + chrono::TimeDelta::minutes(30),
                created_by: "test".into(),
                region_id: region,
                entry_point: "127.0.0.1".into(),
                port_candidates: ports,
                audit: store::NewAudit {
                    org_id: org,
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
        grant
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
            if plane.gateway().unwrap().grants().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(plane.gateway().unwrap().grants().is_empty());
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
        assert!(plane.gateway().unwrap().grants().is_empty());
        assert!(
            tokio::net::TcpStream::connect(("127.0.0.1", grant.port))
                .await
                .is_err()
        );
        plane.shutdown().await;
    }

    /// With several servers on one database each runs an in-process gateway, and an
    /// update job may run on the server whose gateway does not hold the grant's port:
    /// it finds the port bound on this host. Keeping the grant is then no failure and
    /// leaves the holder alone; a first open that finds its port bound has failed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeping_a_port_another_gateway_holds_is_no_failure() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, plane, grant) = fixture(dir.path()).await;
        let key = orchestrator::GrantKey::Access(grant.id);
        let live = LiveGrant::Access(grant.clone());
        let answered = |plane: &GatewayPlane| {
            let plane = plane.clone();
            tokio::spawn(async move { plane.some_open_settled().await })
        };
        // The other server's gateway.
        let other = std::net::TcpListener::bind(("127.0.0.1", grant.port)).unwrap();
        let waiting = answered(&plane);
        tokio::time::sleep(Duration::from_millis(20)).await;
        plane.keep(&live);
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .unwrap()
            .unwrap();
        // Settled (a `?wait=true` returns), as open elsewhere, not failed.
        assert!(plane.settled(key));
        assert!(matches!(
            lock(&plane.shared.notes).get(&key),
            Some(Note::Elsewhere(_))
        ));
        assert!(!plane.links.all().iter().any(|l| l.settled(key)));
        assert!(plane.gateway().unwrap().grant(key).is_err());

        let waiting = answered(&plane);
        tokio::time::sleep(Duration::from_millis(20)).await;
        plane.open(&live);
        tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            lock(&plane.shared.notes).get(&key),
            Some(Note::Failed(_))
        ));
        assert!(plane.gateway().unwrap().grant(key).is_err());

        // Once free, opened here; keeping it then changes nothing.
        drop(other);
        plane.open(&live);
        until("open here", || plane.gateway().unwrap().grant(key).is_ok()).await;
        plane.keep(&live);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(plane.gateway().unwrap().grant(key).is_ok());
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
        // The new target travels to the gateway on the control stream: new
        // connections reach the new place within moments.
        // A connection that still went to the old place is closed at once (nothing
        // listens there), so attempts are paced and bounded in time, not in number.
        let mut got = [0u8; 9];
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let mut c = tokio::net::TcpStream::connect(("127.0.0.1", grant.port))
                .await
                .unwrap();
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_millis(200), c.read_exact(&mut got)).await
            {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never forwarded to the new place"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(&got, b"new place");
        assert_eq!(
            plane
                .gateway()
                .unwrap()
                .grant(key)
                .unwrap()
                .target
                .address()
                .port(),
            new_port
        );
        plane.shutdown().await;
    }

    /// A restart with more active grants than the control channel's queues and stream
    /// windows hold in flight: convergence sends an `Open` for each before it reads
    /// any answer, and the node stops reading while its answers wait. The link reads
    /// them as they come, and is up once every one is answered, so `rebuild` returns
    /// with every port listening (before: with 6,000 grants both sides stalled and
    /// `rebuild` failed after a minute, "did not converge"; with 4,000 it returned
    /// with 2,688 listening). Its ports are below the kernel's ephemeral range.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restart_converges_more_grants_than_the_channel_holds_in_flight() {
        const GRANTS: u16 = 6000;
        // A socket per port: the soft limit of open files raised to the hard one.
        let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        let _ = rustix::process::setrlimit(
            rustix::process::Resource::Nofile,
            rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        );
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig {
            data_dir: dir.path().to_owned(),
            ..ServerConfig::default()
        };
        config.regions[0].port_min = 10000;
        config.regions[0].port_max = 10000 + GRANTS - 1;
        let (store, org, region, router) = store_with_router(&config, 22).await;
        let mut writers = tokio::task::JoinSet::new();
        for w in 0..32u16 {
            let store = store.clone();
            let (org, router, region) = (org.id, router.id, region.id);
            writers.spawn(async move {
                for i in (w..GRANTS).step_by(32) {
                    active_access(
                        &store,
                        (org, router, region),
                        &format!("u{i}"),
                        vec![10000 + i],
                    )
                    .await;
                }
            });
        }
        while let Some(w) = writers.join_next().await {
            w.unwrap();
        }
        let first = store.list_live_access().await.unwrap()[0].clone();
        let plane = GatewayPlane::start(store.clone(), &config, gateway::Config::default())
            .await
            .unwrap();
        // A revoke while the convergence is under way is queued behind it, not lost.
        let node = plane.node().unwrap().clone();
        until("the convergence under way", || {
            !node.gateway().grants().is_empty()
        })
        .await;
        let revoked = orchestrator::GrantKey::Access(first.id);
        plane.close(revoked, orchestrator::EndReason::Revoked);
        let listening = plane.rebuild().await.unwrap();
        assert!(listening >= usize::from(GRANTS) - 1, "{listening}");
        until("the grant revoked while converging is closed", || {
            node.gateway().grant(revoked).is_err()
        })
        .await;
        assert_eq!(node.gateway().grants().len(), usize::from(GRANTS) - 1);
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
        let live = |n: usize| {
            let plane = plane.clone();
            move || {
                plane
                    .gateway()
                    .unwrap()
                    .grant(key)
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
        until("the grant closed", || {
            plane.gateway().unwrap().grants().is_empty()
        })
        .await;
        assert!(
            plane.gateway().unwrap().events_dropped() > 0
                || plane.node().unwrap().figures().events_dropped > 0,
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
