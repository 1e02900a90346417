//! The gateway node: the data plane of one or more regions, driven only by control
//! messages ([`control::msg`]). Each region has its [`tunnel::Tunnel`] on its own UDP
//! socket; one [`Gateway`] holds the entry ports of every region. A server's control
//! stream is a [`Node::session`]: the node answers its `Hello` with its `State`, applies
//! its `Down`s (idempotent, keyed; several sessions may run at once, their frames
//! applied one at a time), numbers the gateway's events and sends them to one session
//! at a time until acknowledged, and reports its `Status` to every session every
//! `status_every`. [`Node::dial`] opens a server's stream to a router through its
//! region's tunnel.
//!
//! The bookkeeping (sessions, tombstones, event numbers and acknowledgements) is the
//! sans-I/O [`Ledger`](ledger::Ledger); this module is the thin driver around it.
//!
//! With no session at all the node keeps everything it holds: the gateway's own timers
//! close each grant at its deadline, live connections and ports stay, and nothing new
//! opens (nothing opens but by an `Open`).

pub mod dial;
pub mod ledger;
pub mod renew;
pub mod wire;

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use control::msg::{
    self, DialRequest, Down, LiveConnection, PeerStatus, RegionInfo, Status, TunnelFigures, Up,
};
use domain::{GatewayRunId, RegionId, RouterId};
use ipnet::Ipv4Net;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::event::{Event, Events, Refusal};
use crate::{Config, Error, ForwardSpec, Gateway, PortRange};
pub use dial::{BoxDialStream, DialStream, RegionDial, TunnelConn};
use ledger::{Ledger, Peer, Served, SessionId, Step};
pub use renew::Renewal;

/// A router's tunnel is up while its last authenticated datagram is this recent: about
/// three of its 25 s keepalives.
pub const PEER_UP_WITHIN: Duration = Duration::from_secs(80);

/// Events a session sends in one go before it looks at its incoming frames again.
const EVENT_BATCH: usize = 256;

/// A region's UDP socket for its tunnel: one already bound (see [`tunnel::bind_udp`]),
/// or an address to bind.
#[derive(Debug)]
pub enum Udp {
    Bind(SocketAddr),
    Socket(tokio::net::UdpSocket),
}

/// A region the node serves.
#[derive(Debug)]
pub struct RegionConfig {
    pub id: RegionId,
    pub name: String,
    /// The region tunnel's static key; the node keeps it in memory only.
    pub private_key: tunnel::PrivateKey,
    /// The gateway's own address inside the tunnel, in `prefix`.
    pub gateway_address: Ipv4Addr,
    pub prefix: Ipv4Net,
    pub udp: Udp,
    /// `host:port` routers are told to send WireGuard to.
    pub endpoint: String,
    /// The address entry ports listen on.
    pub entry_bind: IpAddr,
    /// The entry ports `Open`s may ask for.
    pub ports: PortRange,
}

/// How a node is set up.
#[derive(Debug)]
pub struct NodeConfig {
    /// The gateway's identity (as in its certificate), stated in every `State`.
    pub gateway_name: String,
    pub regions: Vec<RegionConfig>,
    /// The entry ports' tuning; its clock is the node's.
    pub gateway: Config,
    /// How often every session gets a `Status`.
    pub status_every: Duration,
    /// Room for droppable events (refusals, openings but a grant's first) held for want
    /// of an acknowledgement; beyond, they are dropped and counted.
    pub event_capacity: usize,
    /// The control channel's certificate, renewed when a server asks (`None`: the node
    /// inside `postern server`, reached without TLS, refuses renewals).
    pub renewal: Option<Renewal>,
    /// This start's run id (`State.boot`); a fresh one when `None`. The node inside
    /// `postern server` takes the server's gateway run, which owns its connections.
    pub boot: Option<GatewayRunId>,
}

impl NodeConfig {
    /// A node of these regions with the defaults: a status every 2 s, room for 4096
    /// droppable events.
    pub fn new(gateway_name: impl Into<String>, regions: Vec<RegionConfig>) -> Self {
        Self {
            gateway_name: gateway_name.into(),
            regions,
            gateway: Config::default(),
            status_every: Duration::from_secs(2),
            event_capacity: 4096,
            boot: None,
            renewal: None,
        }
    }
}

/// A region's figures, for `/metrics` and `/healthz`.
#[derive(Debug, Clone)]
pub struct RegionFigures {
    pub region: RegionId,
    pub name: String,
    /// Where the tunnel's UDP socket is bound.
    pub listen: SocketAddr,
    pub stats: tunnel::TunnelStats,
    /// Peers whose last authenticated datagram is within [`PEER_UP_WITHIN`].
    pub peers_up: usize,
    /// The age of the stalest handshake among peers that have handshaken.
    pub oldest_handshake: Option<Duration>,
    /// The age of the freshest one.
    pub newest_handshake: Option<Duration>,
}

/// The node's figures, for `/metrics` and `/healthz`.
#[derive(Debug, Clone)]
pub struct NodeFigures {
    /// Control sessions that said hello and have not ended.
    pub sessions: usize,
    /// Those that sent `Synced`.
    pub sessions_synced: usize,
    pub last_session_end: Option<DateTime<Utc>>,
    pub regions: Vec<RegionFigures>,
    /// Grants held open.
    pub grants: usize,
    /// Closed grants remembered (never reopened).
    pub tombstones: usize,
    /// Closes of grants never held here not remembered, at [`ledger::MAX_TOMBSTONES`].
    pub tombstones_refused: u64,
    /// Live forwarded connections.
    pub connections: usize,
    /// Connections forwarded since the start.
    pub connections_total: u64,
    /// Bytes client → target and back since the start, live connections included.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Connections refused since the start, by refusal.
    pub refused: Vec<(Refusal, u64)>,
    /// Events held for want of an acknowledgement.
    pub events_pending: u64,
    /// Events dropped for want of room (openings and refusals only).
    pub events_dropped: u64,
}

struct Region {
    name: String,
    tunnel: tunnel::Tunnel,
    dialer: Arc<dyn crate::Dial>,
    info: RegionInfo,
    entry_bind: IpAddr,
    listen: SocketAddr,
}

/// What the event pump shares with the node (not the gateway: the pump must not keep it
/// alive).
struct Shared {
    ledger: Mutex<Ledger>,
    /// Bumped when an event is held or a session ends: sessions look for events to send.
    wake: watch::Sender<u64>,
    clock: Arc<dyn Clock>,
    connections_total: AtomicU64,
    /// Bytes of connections that ended.
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

struct Inner {
    name: String,
    boot: GatewayRunId,
    gateway: Gateway,
    regions: BTreeMap<RegionId, Region>,
    shared: Arc<Shared>,
    /// `Down`s of every session are applied one at a time.
    apply: tokio::sync::Mutex<()>,
    status_every: Duration,
    connect_timeout: Duration,
    renewal: Option<Renewal>,
    stop: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running node. Cheap to clone: every clone drives the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("gateway", &self.inner.name)
            .field("boot", &self.inner.boot)
            .field("regions", &self.inner.regions.len())
            .finish()
    }
}

impl Node {
    /// Binds each region's UDP socket, runs its tunnel, and starts the entry ports'
    /// gateway (empty: grants come by `Open`, peers by `UpsertPeer`).
    pub async fn start(config: NodeConfig) -> Result<Node, Error> {
        let stop = CancellationToken::new();
        let mut regions = BTreeMap::new();
        let mut tasks = Vec::new();
        let mut served = Vec::new();
        for r in config.regions {
            let err = |message: String| Error::Region {
                region: r.name.clone(),
                message,
            };
            if regions.contains_key(&r.id) {
                return Err(err("the region is configured twice".into()));
            }
            let tunnel = tunnel::Tunnel::new(tunnel::TunnelConfig::new(
                r.private_key,
                r.gateway_address,
                r.prefix,
            ))
            .map_err(|e| err(format!("tunnel: {e}")))?;
            let socket = match r.udp {
                Udp::Socket(s) => s,
                Udp::Bind(addr) => tunnel::bind_udp(addr)
                    .map_err(|e| err(format!("cannot bind the tunnel's UDP socket {addr}: {e}")))?,
            };
            let listen = socket.local_addr().map_err(|e| err(e.to_string()))?;
            let info = RegionInfo {
                region: r.id,
                name: r.name.clone(),
                public_key: tunnel.public_key().to_base64(),
                gateway_address: r.gateway_address,
                endpoint: r.endpoint.clone(),
                port_min: r.ports.first(),
                port_max: r.ports.last(),
            };
            let running = tunnel.clone();
            let stopped = stop.clone().cancelled_owned();
            let name = r.name.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = running.run(socket, stopped).await {
                    tracing::error!(region = %name, error = %e, "the tunnel stopped");
                }
            }));
            tracing::info!(region = %r.name, %listen, endpoint = %r.endpoint, gateway = %r.gateway_address, "tunnel listening");
            served.push((
                r.id,
                Served {
                    port_min: r.ports.first(),
                    port_max: r.ports.last(),
                },
            ));
            regions.insert(
                r.id,
                Region {
                    dialer: Arc::new(RegionDial::new(r.name.clone(), tunnel.clone())),
                    name: r.name,
                    tunnel,
                    info,
                    entry_bind: r.entry_bind,
                    listen,
                },
            );
        }
        let clock = config.gateway.clock.clone();
        let connect_timeout = config.gateway.connect_timeout;
        let (gateway, events) = Gateway::new(config.gateway);
        let shared = Arc::new(Shared {
            ledger: Mutex::new(Ledger::new(served, config.event_capacity)),
            wake: watch::Sender::new(0),
            clock,
            connections_total: AtomicU64::new(0),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
        });
        tasks.push(tokio::spawn(pump(shared.clone(), events, stop.clone())));
        let boot = config.boot.unwrap_or_else(GatewayRunId::new);
        tracing::info!(gateway = %config.gateway_name, %boot, regions = regions.len(), "gateway node started");
        Ok(Node {
            inner: Arc::new(Inner {
                name: config.gateway_name,
                boot,
                gateway,
                regions,
                shared,
                apply: tokio::sync::Mutex::new(()),
                status_every: config.status_every.max(Duration::from_millis(10)),
                connect_timeout,
                renewal: config.renewal,
                stop,
                tasks: Mutex::new(tasks),
            }),
        })
    }

    /// This run's identity (new at every start): with an event's connection id, names a
    /// connection uniquely.
    pub fn boot(&self) -> GatewayRunId {
        self.inner.boot
    }

    /// The regions served, as a `State` lists them.
    pub fn regions(&self) -> Vec<RegionInfo> {
        self.inner
            .regions
            .values()
            .map(|r| r.info.clone())
            .collect()
    }

    /// The entry ports' gateway (for figures and tests; grants are driven by sessions).
    pub fn gateway(&self) -> &Gateway {
        &self.inner.gateway
    }

    /// One server's control stream, until `down` ends, `up` is dropped, or the node
    /// shuts down. Expects `Down::Hello` first (anything else is answered with
    /// `Up::Refused` and ends the stream), answers `Up::State`, then applies every
    /// `Down`, sends this session's replies, the events while it is the oldest session,
    /// and a `Status` every `status_every`.
    pub fn session(
        &self,
        down: mpsc::Receiver<Down>,
        up: mpsc::Sender<Up>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let inner = self.inner.clone();
        async move { inner.session(down, up).await }
    }

    /// A stream for a server: through the region's tunnel to an admitted router's
    /// address (`NotConnected` for a region not served here or an address no admitted
    /// router holds), or plain TCP from here for a direct target. Bounded by the
    /// gateway's connect timeout (the tunnel's own for a tunnelled one).
    pub fn dial(
        &self,
        request: DialRequest,
    ) -> impl Future<Output = io::Result<BoxDialStream>> + Send + 'static {
        let inner = self.inner.clone();
        async move { inner.dial(request).await }
    }

    /// This node as the gateway side of a control channel: `control::channel::serve(io,
    /// node.handler())` runs one server's connection (its control stream and dials).
    pub fn handler(&self) -> Arc<dyn control::channel::Handler> {
        Arc::new(self.clone())
    }

    /// The `Status` sessions get, now.
    pub fn status(&self) -> Status {
        self.inner.status()
    }

    /// Figures for `/metrics` and `/healthz`.
    pub fn figures(&self) -> NodeFigures {
        self.inner.figures()
    }

    /// Closes every grant (reason `shutdown`, their connections killed), ends every
    /// session and stops the tunnels.
    pub async fn shutdown(&self) {
        let report = self.inner.gateway.shutdown().await;
        // Let the pump hold the grants' last events for whoever is still connected.
        tokio::task::yield_now().await;
        self.inner.stop.cancel();
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for task in tasks {
            if tokio::time::timeout(Duration::from_secs(2), task)
                .await
                .is_err()
            {
                tracing::warn!("a node task did not stop in time");
            }
        }
        tracing::info!(
            grants = report.grants,
            connections_killed = report.connections_killed,
            "gateway node stopped"
        );
    }
}

/// Moves the gateway's events into the ledger, numbered, and wakes the sessions. Ends
/// when the gateway is gone or the node stops.
async fn pump(shared: Arc<Shared>, mut events: Events, stop: CancellationToken) {
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            () = stop.cancelled() => events.try_recv(),
        };
        let Some(event) = event else { return };
        let now = shared.clock.now();
        match &event {
            Event::ConnectionOpened { .. } => {
                shared.connections_total.fetch_add(1, Ordering::Relaxed);
            }
            Event::ConnectionClosed {
                bytes_in,
                bytes_out,
                ..
            } => {
                shared.bytes_in.fetch_add(*bytes_in, Ordering::Relaxed);
                shared.bytes_out.fetch_add(*bytes_out, Ordering::Relaxed);
            }
            _ => {}
        }
        {
            let mut ledger = lock(&shared.ledger);
            if let Event::GrantClosed { key, .. } = &event {
                ledger.grant_ended(wire::key_out(*key), now);
            }
            if ledger.push(wire::event(event)).is_none() {
                tracing::debug!("event dropped: the outbox is full");
            }
        }
        shared.wake.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// Ends a session in the ledger however its task ends.
struct SessionGuard {
    shared: Arc<Shared>,
    id: SessionId,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let now = self.shared.clock.now();
        lock(&self.shared.ledger).end_session(self.id, now);
        self.shared.wake.send_modify(|n| *n = n.wrapping_add(1));
        tracing::info!(session = self.id.0, "control session ended");
    }
}

impl Inner {
    async fn send(&self, up: &mpsc::Sender<Up>, message: Up) -> bool {
        tokio::select! {
            biased;
            () = self.stop.cancelled() => false,
            sent = up.send(message) => sent.is_ok(),
        }
    }

    async fn session(&self, mut down: mpsc::Receiver<Down>, up: mpsc::Sender<Up>) {
        let id = lock(&self.shared.ledger).begin_session();
        let first = tokio::select! {
            biased;
            () = self.stop.cancelled() => return,
            first = down.recv() => match first {
                Some(first) => first,
                None => return,
            },
        };
        let greeted = {
            let mut ledger = lock(&self.shared.ledger);
            ledger
                .hello(id, &first)
                .map(|()| ledger.state(self.name.clone(), self.boot, self.regions_info()))
        };
        let state = match greeted {
            Ok(state) => state,
            Err(error) => {
                tracing::warn!(session = id.0, %error, "control session refused");
                self.send(&up, Up::Refused { error }).await;
                return;
            }
        };
        let _guard = SessionGuard {
            shared: self.shared.clone(),
            id,
        };
        if let Down::Hello { server, .. } = &first {
            tracing::info!(session = id.0, %server, grants = state.grants.len(), peers = state.peers.len(), next_seq = state.next_seq, "control session began");
        }
        if !self.send(&up, Up::State(state)).await {
            return;
        }
        let mut wake = self.shared.wake.subscribe();
        let mut tick = tokio::time::interval_at(
            tokio::time::Instant::now() + self.status_every,
            self.status_every,
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            wake.mark_unchanged();
            let batch = lock(&self.shared.ledger).take_for(id, EVENT_BATCH);
            // More may wait: take it after a look at incoming frames (acks).
            let more = batch.len() == EVENT_BATCH;
            for event in batch {
                if !self.send(&up, event).await {
                    return;
                }
            }
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return,
                frame = down.recv() => {
                    let Some(frame) = frame else { return };
                    if let Some(reply) = self.apply(id, frame).await
                        && !self.send(&up, reply).await
                    {
                        return;
                    }
                }
                changed = wake.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tick.tick() => {
                    if !self.send(&up, Up::Status(self.status())).await {
                        return;
                    }
                }
                () = std::future::ready(()), if more => {}
            }
        }
    }

    fn regions_info(&self) -> Vec<RegionInfo> {
        self.regions.values().map(|r| r.info.clone()).collect()
    }

    /// Applies one `Down`; the reply for its session, if any.
    async fn apply(&self, id: SessionId, down: Down) -> Option<Up> {
        let _serial = self.apply.lock().await;
        let now = self.shared.clock.now();
        let step = lock(&self.shared.ledger).decide(id, down, now);
        match step {
            Step::Nothing => None,
            Step::Reply(up) => Some(up),
            Step::Open(spec) => Some(self.open(spec).await),
            Step::SetDeadline { key, expires_at } => {
                let deadline = self.gateway.deadline_for(expires_at);
                if let Err(e) = self.gateway.set_deadline(wire::key_in(key), Some(deadline)) {
                    tracing::debug!(%key, error = %e, "deadline not moved");
                }
                None
            }
            Step::Converge {
                key,
                region,
                expires_at,
                target,
                reply,
            } => {
                if let Some(expires_at) = expires_at {
                    let deadline = self.gateway.deadline_for(expires_at);
                    let _ = self.gateway.set_deadline(wire::key_in(key), Some(deadline));
                }
                if let Some(target) = target.and_then(|t| self.target(region, t)) {
                    let _ = self.gateway.set_target(wire::key_in(key), target);
                }
                tracing::info!(%key, ?expires_at, ?target, "held grant converged");
                Some(reply)
            }
            Step::SetTarget {
                key,
                region,
                target,
            } => {
                let target = self.target(region, target)?;
                if let Err(e) = self.gateway.set_target(wire::key_in(key), target) {
                    tracing::debug!(%key, error = %e, "target not moved");
                }
                None
            }
            Step::Close { key, reason } => {
                if let Err(e) = self
                    .gateway
                    .close(wire::key_in(key), wire::close_reason(reason))
                    .await
                {
                    // Its deadline closed it meanwhile.
                    tracing::debug!(%key, error = %e, "close: already closed");
                }
                None
            }
            Step::UpsertPeer {
                spec,
                peer,
                replace,
            } => self.upsert_peer(spec, peer, replace),
            Step::RemovePeer { router, peer } => {
                if let Some(region) = self.regions.get(&peer.region) {
                    region.tunnel.remove_peer(&peer.key);
                }
                tracing::info!(%router, "tunnel peer removed");
                None
            }
            Step::RenewCertificate => Some(renew::request(self.renewal.as_ref())),
            Step::InstallCertificate { certificate_pem } => {
                Some(renew::install(self.renewal.as_ref(), certificate_pem).await)
            }
        }
    }

    fn target(&self, region: RegionId, target: msg::Target) -> Option<crate::Target> {
        match target {
            msg::Target::Direct { address } => Some(crate::Target::Tcp(address)),
            msg::Target::Tunnel { address, port } => {
                let region = self.regions.get(&region)?;
                Some(crate::Target::Dial {
                    address: SocketAddr::from((address, port)),
                    dialer: region.dialer.clone(),
                })
            }
        }
    }

    async fn open(&self, spec: msg::GrantSpec) -> Up {
        let key = spec.key;
        let failed = |error: String| Up::OpenFailed { key, error };
        let Some(region) = self.regions.get(&spec.region) else {
            return failed(format!("region {} is not served here", spec.region));
        };
        let Some(target) = self.target(spec.region, spec.target) else {
            return failed(format!("region {} is not served here", spec.region));
        };
        let forward = ForwardSpec {
            key: wire::key_in(key),
            listen: SocketAddr::new(region.entry_bind, spec.port),
            target,
            sources: wire::sources(spec.sources.clone()),
            deadline: Some(self.gateway.deadline_for(spec.expires_at)),
        };
        match self.gateway.open(forward).await {
            Ok(open) => {
                lock(&self.shared.ledger).opened(&spec, open.listen);
                Up::Opened {
                    key,
                    listen: open.listen,
                }
            }
            Err(Error::AlreadyOpen { .. }) => match self.gateway.grant(wire::key_in(key)) {
                Ok(info) => {
                    lock(&self.shared.ledger).opened(&spec, info.listen);
                    Up::Opened {
                        key,
                        listen: info.listen,
                    }
                }
                Err(e) => failed(e.to_string()),
            },
            Err(e) => {
                tracing::warn!(%key, error = %e, "entry port not opened");
                failed(e.to_string())
            }
        }
    }

    fn upsert_peer(&self, spec: msg::PeerSpec, peer: Peer, replace: Option<Peer>) -> Option<Up> {
        let router = spec.router;
        let region = self.regions.get(&peer.region)?;
        if let Some(old) = replace
            && let Some(r) = self.regions.get(&old.region)
        {
            r.tunnel.remove_peer(&old.key);
        }
        match region.tunnel.upsert_peer(peer.key, peer.address) {
            Ok(()) => {
                lock(&self.shared.ledger).peer_admitted(router, peer, true, replace.is_some());
                if let Some(endpoint) = spec.endpoint {
                    // Where it was last seen: start the handshake there.
                    region.tunnel.resume_peer(&peer.key, endpoint);
                }
                tracing::info!(%router, region = %region.name, address = %peer.address, public_key = %peer.key, "tunnel peer admitted");
                None
            }
            Err(e) => {
                lock(&self.shared.ledger).peer_admitted(router, peer, false, replace.is_some());
                tracing::warn!(%router, region = %region.name, error = %e, "tunnel peer refused");
                Some(Up::Refused {
                    error: format!("router {router}: {e}"),
                })
            }
        }
    }

    async fn dial(&self, request: DialRequest) -> io::Result<BoxDialStream> {
        let not_connected = |m: String| io::Error::new(io::ErrorKind::NotConnected, m);
        match request.target {
            msg::Target::Direct { address } => {
                let stream = tokio::time::timeout(
                    self.connect_timeout,
                    tokio::net::TcpStream::connect(address),
                )
                .await
                .map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("connecting to {address} timed out"),
                    )
                })??;
                let _ = stream.set_nodelay(true);
                Ok(Box::new(stream))
            }
            msg::Target::Tunnel { address, port } => {
                let region = self.regions.get(&request.region).ok_or_else(|| {
                    not_connected(format!("region {} is not served here", request.region))
                })?;
                if lock(&self.shared.ledger)
                    .peer_at(request.region, address)
                    .is_none()
                {
                    return Err(not_connected(format!(
                        "no admitted router has the tunnel address {address}"
                    )));
                }
                let stream = region
                    .tunnel
                    .dial(address, port)
                    .await
                    .map_err(dial::tunnel_io)?;
                Ok(Box::new(TunnelConn(stream)))
            }
        }
    }

    fn peer_statuses(&self) -> Vec<(RegionId, RouterId, tunnel::PeerStatus)> {
        let peers: Vec<(RouterId, Peer)> = lock(&self.shared.ledger).peers().collect();
        peers
            .into_iter()
            .filter_map(|(router, peer)| {
                let status = self.regions.get(&peer.region)?.tunnel.peer(&peer.key)?;
                Some((peer.region, router, status))
            })
            .collect()
    }

    fn status(&self) -> Status {
        let at = self.shared.clock.now();
        let now = SystemTime::now();
        let statuses = self.peer_statuses();
        let peers = statuses
            .iter()
            .map(|(_, router, p)| PeerStatus {
                router: *router,
                endpoint: p.endpoint,
                last_handshake_at: p.last_handshake_at.map(DateTime::<Utc>::from),
                last_seen_at: p.last_seen_at.map(DateTime::<Utc>::from),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
            })
            .collect();
        let mut connections = Vec::new();
        for grant in self.gateway.grants() {
            for c in self.gateway.connections(grant.key).unwrap_or_default() {
                connections.push(LiveConnection {
                    key: wire::key_out(grant.key),
                    id: c.id.0,
                    bytes_in: c.bytes_in,
                    bytes_out: c.bytes_out,
                });
            }
        }
        let tunnels = self
            .regions
            .iter()
            .map(|(id, r)| {
                let stats = r.tunnel.stats();
                let mine = || statuses.iter().filter(|(region, _, _)| region == id);
                TunnelFigures {
                    region: *id,
                    peers: stats.peers as u64,
                    peers_up: mine().filter(|(_, _, p)| up(p, now)).count() as u64,
                    handshakes: stats.table.handshakes,
                    handshakes_refused: stats.table.cookie_replies + stats.table.unknown_peer,
                    rx_bytes: mine().map(|(_, _, p)| p.rx_bytes).sum(),
                    tx_bytes: mine().map(|(_, _, p)| p.tx_bytes).sum(),
                }
            })
            .collect();
        let (pending, dropped) = {
            let ledger = lock(&self.shared.ledger);
            (ledger.pending(), ledger.dropped())
        };
        Status {
            at,
            peers,
            connections,
            tunnels,
            refused: Refusal::ALL
                .iter()
                .map(|r| (wire::refusal(*r), self.gateway.refused(*r)))
                .collect(),
            events_dropped: dropped + self.gateway.events_dropped(),
            events_pending: pending,
        }
    }

    fn figures(&self) -> NodeFigures {
        let now = SystemTime::now();
        let statuses = self.peer_statuses();
        let regions = self
            .regions
            .iter()
            .map(|(id, r)| {
                let mine: Vec<&tunnel::PeerStatus> = statuses
                    .iter()
                    .filter(|(region, _, _)| region == id)
                    .map(|(_, _, p)| p)
                    .collect();
                let ages: Vec<Duration> = mine
                    .iter()
                    .filter_map(|p| p.last_handshake_at)
                    .map(|at| now.duration_since(at).unwrap_or_default())
                    .collect();
                RegionFigures {
                    region: *id,
                    name: r.name.clone(),
                    listen: r.listen,
                    stats: r.tunnel.stats(),
                    peers_up: mine.iter().filter(|p| up(p, now)).count(),
                    oldest_handshake: ages.iter().max().copied(),
                    newest_handshake: ages.iter().min().copied(),
                }
            })
            .collect();
        let grants = self.gateway.grants();
        let (mut bytes_in, mut bytes_out) = (
            self.shared.bytes_in.load(Ordering::Relaxed),
            self.shared.bytes_out.load(Ordering::Relaxed),
        );
        let mut connections = 0;
        for grant in &grants {
            for c in self.gateway.connections(grant.key).unwrap_or_default() {
                connections += 1;
                bytes_in += c.bytes_in;
                bytes_out += c.bytes_out;
            }
        }
        let ledger = lock(&self.shared.ledger);
        NodeFigures {
            sessions: ledger.sessions(),
            sessions_synced: ledger.sessions_synced(),
            last_session_end: ledger.last_session_end(),
            regions,
            grants: grants.len(),
            tombstones: ledger.tombstones(),
            tombstones_refused: ledger.tombstones_refused(),
            connections,
            connections_total: self.shared.connections_total.load(Ordering::Relaxed),
            bytes_in,
            bytes_out,
            refused: Refusal::ALL
                .iter()
                .map(|r| (*r, self.gateway.refused(*r)))
                .collect(),
            events_pending: ledger.pending(),
            events_dropped: ledger.dropped() + self.gateway.events_dropped(),
        }
    }
}

/// Whether a peer spoke within [`PEER_UP_WITHIN`].
fn up(p: &tunnel::PeerStatus, now: SystemTime) -> bool {
    p.last_seen_at
        .is_some_and(|at| now.duration_since(at).unwrap_or_default() <= PEER_UP_WITHIN)
}

impl control::channel::Handler for Node {
    fn control(
        &self,
        down: mpsc::Receiver<Down>,
        up: mpsc::Sender<Up>,
    ) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(self.session(down, up))
    }

    fn dial(
        &self,
        request: DialRequest,
    ) -> futures::future::BoxFuture<'static, io::Result<Box<dyn control::channel::DialIo>>> {
        let dial = Node::dial(self, request);
        Box::pin(async move {
            let stream = dial.await?;
            Ok(Box::new(stream) as Box<dyn control::channel::DialIo>)
        })
    }
}
