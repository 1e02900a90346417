//! The control plane's side of the control channel: one [`Link`] per gateway that
//! serves a region of this server's configuration as `gateway = "remote"`. A link dials
//! the gateway's control address (mTLS: this server's certificate from the control CA,
//! the gateway's checked against the CA and its own name), opens the control stream,
//! converges the gateway to the database, then forwards what the orchestrator and
//! onboarding ask (open, close, new ends, peers) and brings back what the gateway says
//! (events, status). When the connection drops it dials again, and converges again.
//!
//! Convergence (several servers may drive one gateway, each over its own link): the
//! gateway says what it holds (`State`); the link sends every enrolled router of the
//! gateway's regions (`UpsertPeer`) and every active grant (`Open`); then for each grant
//! and peer the gateway holds that the link did not send, it reads that one again and
//! closes or removes it only if the database says it ended or is gone. So a grant another
//! server opened a moment ago is never closed by a link that read the database before it.
//!
//! Events are recorded here (connections by the gateway's boot and connection number, so
//! an event sent twice is one row) and acknowledged once written; status reports keep
//! the routers' tunnel status, the live connections' byte counts and the gateway's
//! figures for the API, the portal and `/metrics`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use control::msg::{
    CloseReason, DialRequest, Down, Event, GatewayState, GrantKey, GrantSpec, PROTOCOL, PeerSpec,
    Status, Target, Up,
};
use domain::{ConnectionRecordId, GatewayId, GatewayRunId, GrantStatus, OrgId, RegionId, RouterId};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::ServerConfig;

/// The first wait before dialling a gateway again; doubled up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(4);
/// How long dialling a gateway (TCP, TLS, h2, the first frame) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an `Open` waits for the gateway's answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the set of gateways is read again from the store.
const REFRESH: Duration = Duration::from_secs(3);
/// Operations queued for one gateway; beyond, the link drops its connection and
/// converges again from the database rather than lose one.
const OPS_QUEUE: usize = 65_536;
/// The most messages from a gateway handled together (their events written in one
/// transaction).
const EVENT_BATCH: usize = 512;
/// Refused connections audited per grant per minute.
const REFUSALS_AUDITED_PER_MINUTE: u32 = 20;
/// How long after asking a gateway to renew its certificate the link asks again if the
/// renewal did not happen (the request refused, the connection dropped meanwhile).
const RENEW_RETRY: Duration = Duration::from_secs(3600);
/// The longest a link sleeps before it looks at the gateway's certificate again.
const RENEW_LOOK: Duration = Duration::from_secs(86_400);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This server's identity on the control channel.
#[derive(Clone)]
pub struct Identity {
    /// TLS client configuration: this server's certificate, the control CA as the only
    /// root.
    pub tls: Arc<rustls::ClientConfig>,
    /// How this server names itself in its `Hello` (for the gateway's logs).
    pub name: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .finish()
    }
}

/// How a link stands, for the API, the portal and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkState {
    /// Never reached since this server started.
    Connecting,
    /// The control stream is up and converged.
    Up { since: DateTime<Utc> },
    /// Reached before, not now.
    Down { since: DateTime<Utc>, error: String },
}

/// How a link reaches its gateway.
enum Connect {
    /// A `postern gateway`, over TCP and mutual TLS at `Link::address`.
    Remote,
    /// The node inside this process, over an in-memory stream: the same channel, the
    /// same messages, no socket.
    Local(gateway::Node),
}

/// The in-memory stream's buffer each way.
const LOCAL_BUFFER: usize = 1 << 20;

/// Told when the gateway answers an open: the entry port's address, or its words.
type OpenWaiter = oneshot::Sender<Result<SocketAddr, String>>;

/// A remotely served region's link and the task that runs it.
type RunningLink = (Arc<Link>, JoinHandle<()>);

/// One gateway as this server reaches it.
pub struct Link {
    connect: Connect,
    pub gateway: GatewayId,
    pub region: RegionId,
    /// Where this server dials it (`host:port`).
    pub address: String,
    /// The region tunnel's public key and the endpoint routers send to, as it joined.
    pub public_key: String,
    pub endpoint: String,
    ops: Mutex<Option<mpsc::Sender<Down>>>,
    channel: Mutex<Option<control::channel::Channel>>,
    state: watch::Sender<LinkState>,
    /// The gateway's last report, and its boot.
    status: Mutex<Option<(GatewayRunId, Status)>>,
    /// Grants whose ports the gateway said are open (and not closed since).
    open: Mutex<HashSet<GrantKey>>,
    /// Grants whose open failed, with the gateway's words.
    failed: Mutex<HashMap<GrantKey, String>>,
    waiters: Mutex<HashMap<GrantKey, Vec<OpenWaiter>>>,
    /// Ends the session, to converge afresh.
    kick: tokio::sync::Notify,
    /// The regions the gateway said it serves, in its last `State`.
    regions: Mutex<Vec<control::msg::RegionInfo>>,
    /// The gateway's certificate as its TLS handshake presented it (a remote gateway's),
    /// or as this server renewed it since.
    certificate: Mutex<Option<control::pki::CertificateInfo>>,
    /// Where this session's certificate renewal stands.
    renewing: Mutex<Renewing>,
}

/// A certificate renewal on a link's session.
#[derive(Debug, Clone, Default)]
enum Renewing {
    #[default]
    Idle,
    /// `RenewCertificate` sent: a `CertificateRequest` is awaited.
    Asked,
    /// This certificate sent: `CertificateRenewed` is awaited.
    Sent(control::pki::CertificateInfo),
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("gateway", &self.gateway)
            .field("region", &self.region)
            .field("address", &self.address)
            .finish()
    }
}

impl Link {
    fn new(gateway: &store::Gateway, joined: &store::JoinedGateway) -> Self {
        Self::reaching(
            Connect::Remote,
            gateway.id,
            gateway.region_id,
            joined.control_address.clone(),
            joined.wireguard_public_key.clone(),
            joined.tunnel_endpoint.clone(),
        )
    }

    /// The link to the node inside this process, for `regions`.
    fn local(node: gateway::Node, region: RegionId) -> Self {
        Self::reaching(
            Connect::Local(node),
            // The in-process gateway has no enrolment: the nil id names it.
            GatewayId::from_uuid(uuid::Uuid::nil()),
            region,
            "in-process".into(),
            String::new(),
            String::new(),
        )
    }

    /// A link not yet connected: what it reaches, and nothing learnt from it yet.
    fn reaching(
        connect: Connect,
        gateway: GatewayId,
        region: RegionId,
        address: String,
        public_key: String,
        endpoint: String,
    ) -> Self {
        Self {
            connect,
            gateway,
            region,
            address,
            public_key,
            endpoint,
            ops: Mutex::new(None),
            channel: Mutex::new(None),
            state: watch::Sender::new(LinkState::Connecting),
            status: Mutex::new(None),
            open: Mutex::new(HashSet::new()),
            failed: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            kick: tokio::sync::Notify::new(),
            regions: Mutex::new(Vec::new()),
            certificate: Mutex::new(None),
            renewing: Mutex::new(Renewing::Idle),
        }
    }

    /// Whether this is the node inside this process.
    pub fn is_local(&self) -> bool {
        matches!(self.connect, Connect::Local(_))
    }

    /// The gateway's control-channel certificate as it presented it (or as this server
    /// renewed it since); `None` for the in-process node and before the first
    /// connection.
    pub fn certificate(&self) -> Option<control::pki::CertificateInfo> {
        lock(&self.certificate).clone()
    }

    /// The regions the gateway serves, as its last `State` said.
    pub fn regions(&self) -> Vec<control::msg::RegionInfo> {
        lock(&self.regions).clone()
    }

    pub fn state(&self) -> LinkState {
        self.state.borrow().clone()
    }

    /// Whether the control stream is up now.
    pub fn up(&self) -> bool {
        matches!(*self.state.borrow(), LinkState::Up { .. })
    }

    /// The gateway's last status report.
    pub fn status(&self) -> Option<Status> {
        lock(&self.status).as_ref().map(|(_, s)| s.clone())
    }

    /// Sends `op` if a session is up or converging (then it goes after the
    /// convergence's messages); else it is dropped: the convergence on reconnect sends
    /// the database's state. A full queue drops the connection, for the
    /// same convergence.
    pub(crate) fn send(&self, op: Down) {
        let ops = lock(&self.ops).clone();
        let Some(ops) = ops else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = ops.try_send(op) {
            tracing::warn!(gateway = %self.gateway, "control queue full: reconnecting to converge");
            *lock(&self.ops) = None;
            self.kick.notify_one();
        }
    }

    /// Whether the gateway said a grant's port is open (and has not said it closed).
    pub fn is_open(&self, key: GrantKey) -> bool {
        lock(&self.open).contains(&key)
    }

    /// The grants whose ports the gateway said are open.
    pub fn open_keys(&self) -> Vec<GrantKey> {
        lock(&self.open).iter().copied().collect()
    }

    /// Whether a grant's port is settled here: open, or its open failed.
    pub fn settled(&self, key: GrantKey) -> bool {
        lock(&self.open).contains(&key) || lock(&self.failed).contains_key(&key)
    }

    /// Forgets that a grant's open failed here (its port is held elsewhere).
    pub(crate) fn forget_failure(&self, key: GrantKey) {
        lock(&self.failed).remove(&key);
    }

    /// Opens a grant's port and waits for the gateway's answer.
    pub async fn open(&self, spec: GrantSpec) -> Result<SocketAddr, String> {
        let key = spec.key;
        lock(&self.failed).remove(&key);
        // A gateway not reached yet since this server started (its first connection
        // under way): wait for it a while rather than fail the open.
        let mut state = self.state.subscribe();
        let _ = tokio::time::timeout(
            OPEN_TIMEOUT,
            state.wait_for(|s| !matches!(s, LinkState::Connecting)),
        )
        .await;
        let (tx, rx) = oneshot::channel();
        lock(&self.waiters).entry(key).or_default().push(tx);
        // A session (up, or converging: then the open goes after the convergence).
        if lock(&self.ops).is_none() {
            lock(&self.waiters).remove(&key);
            return Err("the region's gateway is unreachable".into());
        }
        self.send(Down::Open(spec));
        match tokio::time::timeout(OPEN_TIMEOUT, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err("the gateway's connection dropped before it answered".into()),
            Err(_) => Err("the gateway did not answer in time".into()),
        }
    }

    /// A stream to a router through the gateway.
    pub async fn dial(
        &self,
        request: DialRequest,
    ) -> std::io::Result<control::channel::DialStream> {
        let channel = lock(&self.channel).clone();
        let Some(channel) = channel else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "the region's gateway is unreachable",
            ));
        };
        channel.dial(request).await
    }

    fn answer(&self, key: GrantKey, answer: Result<SocketAddr, String>) {
        match &answer {
            Ok(_) => {
                lock(&self.open).insert(key);
            }
            Err(e) => {
                lock(&self.failed).insert(key, e.clone());
            }
        }
        let waiters = lock(&self.waiters).remove(&key).unwrap_or_default();
        for w in waiters {
            let _ = w.send(answer.clone());
        }
    }

    fn set_state(&self, state: LinkState) {
        self.state.send_replace(state);
    }
}

/// This server's identity on the control channel: the control CA (made at first start,
/// its private key sealed in the store) issues it a client certificate now.
pub async fn identity(store: &store::Store, name: &str) -> Result<Identity, String> {
    let (ca_cert, ca_key) = store
        .ensure_control_ca(|| {
            let ca = control::pki::Ca::generate().map_err(|e| {
                store::StoreError::Corrupt(format!("cannot make the control CA: {e}"))
            })?;
            Ok((
                ca.cert_pem().to_owned(),
                store::Secret::new(ca.key_pem().into_string()),
            ))
        })
        .await
        .map_err(|e| format!("the control CA: {e}"))?;
    let ca = control::pki::Ca::from_pem(&ca_cert, &control::pki::KeyPem::new(ca_key.into_inner()))
        .map_err(|e| format!("the stored control CA is unreadable: {e}"))?;
    let (cert, key) = ca
        .issue_server(name)
        .map_err(|e| format!("cannot issue this server's certificate: {e}"))?;
    let tls = control::pki::server_tls(&cert, &key, &ca_cert)
        .map_err(|e| format!("this server's TLS configuration: {e}"))?;
    Ok(Identity {
        tls: Arc::new(tls),
        name: name.to_owned(),
    })
}

/// How this server names itself to gateways: its host name and process id.
pub fn server_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "server".into());
    format!("{host}/{}", std::process::id())
}

/// Every link of this server. Cheap to clone.
#[derive(Clone)]
pub struct Links {
    inner: Arc<Inner>,
}

struct Inner {
    store: store::Store,
    config: Arc<ServerConfig>,
    /// This server's certificate, when a region is served remotely.
    identity: Option<Identity>,
    /// Regions served remotely.
    remote: HashSet<RegionId>,
    /// The link to the node inside this process and the regions it serves.
    local: Option<(Arc<Link>, HashSet<RegionId>)>,
    local_task: Mutex<Option<JoinHandle<()>>>,
    links: Mutex<HashMap<RegionId, RunningLink>>,
    recorder: Mutex<Recorder>,
    stop: watch::Sender<bool>,
    refresher: Mutex<Option<JoinHandle<()>>>,
    /// Told of each grant whose port a gateway closed (the plane releases its port).
    closed: Mutex<Option<GrantClosedHook>>,
}

/// What [`Links::on_grant_closed`] takes.
pub type GrantClosedHook = Box<dyn Fn(GrantKey) + Send + Sync>;

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Links")
            .field("links", &lock(&self.inner.links).len())
            .finish()
    }
}

impl Links {
    /// Links to the gateways of `remote` regions, kept up (and following joins and
    /// removals) until [`Links::shutdown`].
    pub async fn start(
        store: store::Store,
        config: Arc<ServerConfig>,
        identity: Option<Identity>,
        remote: HashSet<RegionId>,
        local: Option<(gateway::Node, HashSet<RegionId>)>,
    ) -> Links {
        let (stop, _) = watch::channel(false);
        let local = local.and_then(|(node, regions)| {
            let first = *regions.iter().next()?;
            Some((Arc::new(Link::local(node, first)), regions))
        });
        let links = Links {
            inner: Arc::new(Inner {
                store,
                config,
                identity,
                remote,
                local,
                local_task: Mutex::new(None),
                links: Mutex::new(HashMap::new()),
                recorder: Mutex::new(Recorder::default()),
                stop,
                refresher: Mutex::new(None),
                closed: Mutex::new(None),
            }),
        };
        if let Some((link, _)) = &links.inner.local {
            let task = tokio::spawn(run_link(links.clone(), link.clone()));
            *lock(&links.inner.local_task) = Some(task);
        }
        if !links.inner.remote.is_empty() {
            links.refresh().await;
            let task = tokio::spawn(refresh_loop(links.clone()));
            *lock(&links.inner.refresher) = Some(task);
        }
        links
    }

    /// The link to the node inside this process, if a region is served here.
    pub fn local(&self) -> Option<Arc<Link>> {
        self.inner.local.as_ref().map(|(l, _)| l.clone())
    }

    /// Calls `hook` with each grant whose port a gateway closed.
    pub fn on_grant_closed(&self, hook: GrantClosedHook) {
        *lock(&self.inner.closed) = Some(hook);
    }

    /// The link of `region`'s gateway: the in-process node's for a local region, the
    /// joined gateway's for a remote one (`None` while none has joined).
    pub fn link(&self, region: RegionId) -> Option<Arc<Link>> {
        if let Some((link, regions)) = &self.inner.local
            && regions.contains(&region)
        {
            return Some(link.clone());
        }
        lock(&self.inner.links).get(&region).map(|(l, _)| l.clone())
    }

    /// Every link: the in-process node's first, then the remote gateways'.
    pub fn all(&self) -> Vec<Arc<Link>> {
        let mut all: Vec<Arc<Link>> = self.local().into_iter().collect();
        all.extend(lock(&self.inner.links).values().map(|(l, _)| l.clone()));
        all
    }

    /// The remote gateways' links.
    pub fn remote(&self) -> Vec<Arc<Link>> {
        lock(&self.inner.links)
            .values()
            .map(|(l, _)| l.clone())
            .collect()
    }

    /// Sends `op` to every link (a close or a new end: a no-op where the grant is not).
    pub fn broadcast(&self, op: Down) {
        for link in self.all() {
            link.send(op.clone());
        }
    }

    /// A router's tunnel as its gateway last reported it.
    pub fn peer_status(&self, router: RouterId) -> Option<control::msg::PeerStatus> {
        self.all().iter().find_map(|l| {
            lock(&l.status)
                .as_ref()
                .and_then(|(_, s)| s.peers.iter().find(|p| p.router == router).cloned())
        })
    }

    /// Forgets what the gateways last reported of a router (its peer was just removed:
    /// their next reports leave it out).
    pub fn forget_peer(&self, router: RouterId) {
        for link in self.all() {
            if let Some((_, status)) = lock(&link.status).as_mut() {
                status.peers.retain(|p| p.router != router);
            }
        }
    }

    /// Byte counts so far of a grant's live connections at its gateway, by their rows.
    pub fn live_counts(&self, key: GrantKey) -> HashMap<ConnectionRecordId, (u64, u64)> {
        let mut out = HashMap::new();
        for link in self.all() {
            if let Some((boot, status)) = lock(&link.status).as_ref() {
                for c in status.connections.iter().filter(|c| c.key == key) {
                    out.insert(row_id(*boot, c.id), (c.bytes_in, c.bytes_out));
                }
            }
        }
        out
    }

    /// Reads the gateways from the store: links to new ones, drops removed ones.
    async fn refresh(&self) {
        let gateways = match self.inner.store.list_gateways().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the gateways");
                return;
            }
        };
        let wanted: HashMap<RegionId, store::Gateway> = gateways
            .into_iter()
            .filter(|g| g.live() && self.inner.remote.contains(&g.region_id))
            .map(|g| (g.region_id, g))
            .collect();
        let mut links = lock(&self.inner.links);
        links.retain(|region, (link, task)| {
            let keep = wanted.get(region).is_some_and(|g| {
                g.id == link.gateway
                    && g.joined.as_ref().map(|j| j.control_address.as_str())
                        == Some(link.address.as_str())
            });
            if !keep {
                tracing::info!(gateway = %link.gateway, "gateway removed or replaced: link closed");
                task.abort();
                lock(&link.channel).take();
                *lock(&link.ops) = None;
            }
            keep
        });
        for (region, g) in wanted {
            if links.contains_key(&region) {
                continue;
            }
            let Some(joined) = &g.joined else { continue };
            let link = Arc::new(Link::new(&g, joined));
            let task = tokio::spawn(run_link(self.clone(), link.clone()));
            links.insert(region, (link, task));
        }
    }

    /// Closes every link.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        if let Some(task) = lock(&self.inner.refresher).take() {
            task.abort();
        }
        let local = lock(&self.inner.local_task).take();
        if let Some(task) = local {
            task.abort();
            let _ = task.await;
        }
        let links: Vec<(Arc<Link>, JoinHandle<()>)> =
            lock(&self.inner.links).drain().map(|(_, v)| v).collect();
        for (link, task) in links {
            lock(&link.channel).take();
            *lock(&link.ops) = None;
            task.abort();
            let _ = task.await;
        }
    }
}

async fn refresh_loop(links: Links) {
    let mut stop = links.inner.stop.subscribe();
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(REFRESH) => {}
        }
        links.refresh().await;
    }
}

/// Dials, converges and serves one gateway until the link is dropped.
async fn run_link(links: Links, link: Arc<Link>) {
    let mut stop = links.inner.stop.subscribe();
    let mut wait = RETRY_MIN;
    loop {
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = stop.changed() => return,
            r = session(&links, &link) => r,
        };
        *lock(&link.ops) = None;
        lock(&link.channel).take();
        // Open waiters learn the connection dropped; what was open stays open there.
        lock(&link.waiters).clear();
        let error = match outcome {
            Ok(()) => "the gateway closed the control stream".to_owned(),
            Err(e) => e,
        };
        let was_up = link.up();
        if was_up || matches!(link.state(), LinkState::Connecting) {
            tracing::warn!(gateway = %link.gateway, address = %link.address, %error, "gateway unreachable");
        }
        if was_up || !matches!(link.state(), LinkState::Down { .. }) {
            link.set_state(LinkState::Down {
                since: Utc::now(),
                error,
            });
        } else if let LinkState::Down { since, .. } = link.state() {
            link.set_state(LinkState::Down { since, error });
        }
        if started.elapsed() > RETRY_MAX * 4 {
            wait = RETRY_MIN;
        }
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// One connection to the gateway: dial, converge, serve. Returns why it ended.
async fn session(links: &Links, link: &Arc<Link>) -> Result<(), String> {
    let inner = &links.inner;
    let name = inner
        .identity
        .as_ref()
        .map_or_else(server_name, |i| i.name.clone());
    let (channel, up_rx, down_tx) = tokio::time::timeout(CONNECT_TIMEOUT, async {
        let channel = match &link.connect {
            Connect::Local(node) => {
                let (ours, theirs) = tokio::io::duplex(LOCAL_BUFFER);
                let handler = node.handler();
                tokio::spawn(async move {
                    if let Err(e) = control::channel::serve(theirs, handler).await {
                        tracing::warn!(error = %e, "the in-process gateway's channel ended");
                    }
                });
                control::channel::Channel::connect(ours)
                    .await
                    .map_err(|e| format!("control channel: {e}"))?
            }
            Connect::Remote => {
                let identity = inner
                    .identity
                    .as_ref()
                    .ok_or_else(|| "this server has no control-channel certificate".to_owned())?;
                // A server certificate lasts 30 days: one is issued afresh for each
                // connection (one signature), so a server up for months still connects.
                let identity = match self::identity(&inner.store, &identity.name).await {
                    Ok(fresh) => fresh,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot issue a fresh control-channel certificate; using the one from start-up");
                        identity.clone()
                    }
                };
                let tcp = tokio::net::TcpStream::connect(link.address.as_str())
                    .await
                    .map_err(|e| format!("cannot connect to {}: {e}", link.address))?;
                let _ = tcp.set_nodelay(true);
                let connector = tokio_rustls::TlsConnector::from(identity.tls.clone());
                let tls = connector
                    .connect(control::pki::gateway_server_name(link.gateway), tcp)
                    .await
                    .map_err(|e| format!("TLS with {}: {e}", link.address))?;
                // Its certificate, verified: what a renewal's request must match.
                let presented = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|der| control::pki::CertificateInfo::from_der(der));
                match presented {
                    Some(Ok(info)) => *lock(&link.certificate) = Some(info),
                    Some(Err(e)) => {
                        tracing::warn!(gateway = %link.gateway, error = %e, "the gateway's certificate does not parse; it will not be renewed");
                        *lock(&link.certificate) = None;
                    }
                    None => *lock(&link.certificate) = None,
                }
                control::channel::Channel::connect(tls)
                    .await
                    .map_err(|e| format!("control channel: {e}"))?
            }
        };
        let (down_tx, up_rx) = channel
            .control(Down::Hello {
                protocol: PROTOCOL,
                server: name,
            })
            .await
            .map_err(|e| format!("control stream: {e}"))?
            .into_parts();
        Ok::<_, String>((channel, up_rx, down_tx))
    })
    .await
    .map_err(|_| format!("no answer from {} in {CONNECT_TIMEOUT:?}", link.address))??;
    let mut up_rx = drain(up_rx);
    let state = match tokio::time::timeout(CONNECT_TIMEOUT, up_rx.recv()).await {
        Ok(Some(Up::State(state))) => state,
        Ok(Some(other)) => return Err(format!("the gateway spoke before its state: {other:?}")),
        Ok(None) => return Err("the gateway closed the control stream at once".into()),
        Err(_) => return Err("the gateway did not say its state in time".into()),
    };
    if state.protocol != PROTOCOL {
        return Err(format!(
            "the gateway speaks protocol {}, this server {PROTOCOL}",
            state.protocol
        ));
    }
    // From here what the orchestrator and onboarding send is queued, and goes after the
    // convergence's messages: a revoke or a new grant during the convergence is never
    // lost (the convergence read the database after the queue existed).
    let (ops_tx, mut ops_rx) = mpsc::channel(OPS_QUEUE);
    *lock(&link.ops) = Some(ops_tx);
    *lock(&link.channel) = Some(channel.clone());
    *lock(&link.regions) = state.regions.clone();
    *lock(&link.open) = state.grants.iter().map(|g| g.key).collect();
    if !link.is_local() {
        // The in-process node's boot is this server's gateway run, kept by the plane.
        links.new_boot(link, &state).await;
    }
    let boot = state.boot;
    let mut pending = converge(links, link, &state, &down_tx).await?;
    // Up means the gateway holds the database's state: its answer to every Open first.
    pending.retain(|k| !link.settled(*k));
    while !pending.is_empty() {
        let first = match tokio::time::timeout(OPEN_TIMEOUT, up_rx.recv()).await {
            Ok(Some(up)) => up,
            Ok(None) => return Err("the gateway closed the control stream while converging".into()),
            Err(_) => {
                return Err("the gateway did not answer the convergence's opens in time".into());
            }
        };
        let mut batch = vec![first];
        while batch.len() < EVENT_BATCH {
            match up_rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        links.handle(link, boot, batch, &down_tx).await;
        pending.retain(|k| !link.settled(*k));
    }
    link.set_state(LinkState::Up { since: Utc::now() });
    tracing::info!(gateway = %link.gateway, address = %link.address, grants = state.grants.len(), peers = state.peers.len(), "gateway linked and converged");
    *lock(&link.renewing) = Renewing::Idle;
    let renew_before = links.inner.config.gateway_renew_before;
    let mut look = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(look), if !link.is_local() => {
                look = tokio::time::Instant::now() + renewal_due(link, renew_before, &down_tx).await?;
            }
            () = link.kick.notified() => return Err("resynchronising".into()),
            () = channel.closed() => return Err("the control channel closed".into()),
            op = ops_rx.recv() => {
                let Some(op) = op else { return Ok(()) };
                down_tx.send(op).await.map_err(|_| "the control stream closed".to_owned())?;
            }
            up = up_rx.recv() => {
                let Some(up) = up else { return Ok(()) };
                let mut batch = vec![up];
                while batch.len() < EVENT_BATCH {
                    match up_rx.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                links.handle(link, boot, batch, &down_tx).await;
            }
        }
    }
}

/// Asks the gateway for a certificate request if its certificate is due for renewal
/// (and no renewal is under way); how long until the next look.
async fn renewal_due(
    link: &Link,
    renew_before: Option<Duration>,
    down: &mpsc::Sender<Down>,
) -> Result<Duration, String> {
    let Some(info) = link.certificate() else {
        return Ok(RENEW_LOOK);
    };
    let at = info.renew_at(renew_before);
    let now = Utc::now();
    if now < at {
        let wait = (at - now).to_std().unwrap_or(RENEW_LOOK);
        return Ok(wait.min(RENEW_LOOK));
    }
    tracing::info!(gateway = %link.gateway, not_after = %info.not_after, "the gateway's certificate is due for renewal: asking it for a request");
    *lock(&link.renewing) = Renewing::Asked;
    down.send(Down::RenewCertificate)
        .await
        .map_err(|_| "the control stream closed".to_owned())?;
    Ok(RENEW_RETRY)
}

/// Reads the gateway's messages as they come, whatever this side is doing. The gateway
/// answers every `Open` and stops reading while its answers wait, so a session that
/// sent more `Down`s than the queues and the stream's window hold (convergence sends
/// one `Open` per active grant before it reads anything) without reading would stall
/// both sides for good. What waits here is bounded by what was sent and by the
/// gateway's own bounded event queue.
fn drain(mut bounded: mpsc::Receiver<Up>) -> mpsc::UnboundedReceiver<Up> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tx.closed() => return,
                up = bounded.recv() => match up {
                    Some(up) => {
                        if tx.send(up).is_err() {
                            return;
                        }
                    }
                    None => return,
                },
            }
        }
    });
    rx
}

/// Brings the gateway to what the database says, from what it holds. The grants it
/// sent an `Open` for.
async fn converge(
    links: &Links,
    link: &Arc<Link>,
    state: &GatewayState,
    down: &mpsc::Sender<Down>,
) -> Result<Vec<GrantKey>, String> {
    let store = &links.inner.store;
    let send = |op: Down| async move {
        down.send(op)
            .await
            .map_err(|_| "the control stream closed while converging".to_owned())
    };
    let regions: HashSet<RegionId> = state.regions.iter().map(|r| r.region).collect();
    if !regions.contains(&link.region) {
        return Err(format!(
            "the gateway does not serve the region it joined ({})",
            link.region
        ));
    }
    let mut sent_peers = HashSet::new();
    for region in &regions {
        let peers = store
            .list_tunnel_peers(*region)
            .await
            .map_err(|e| format!("store: {e}"))?;
        for p in peers {
            let IpAddr::V4(address) = p.tunnel_address else {
                continue;
            };
            sent_peers.insert((p.router_id, p.public_key.clone()));
            send(Down::UpsertPeer(PeerSpec {
                router: p.router_id,
                region: *region,
                public_key: p.public_key,
                address,
                endpoint: p.endpoint.and_then(|e| e.parse().ok()),
            }))
            .await?;
        }
    }
    let desired = desired_grants(store, &regions)
        .await
        .map_err(|e| format!("store: {e}"))?;
    let sent: HashSet<GrantKey> = desired.iter().map(|g| g.key).collect();
    for spec in desired {
        send(Down::Open(spec)).await?;
    }
    for held in &state.grants {
        if sent.contains(&held.key) {
            continue;
        }
        // Read again now: a grant opened by another server since the read above is
        // active, and stays open.
        match grant_end(store, held.key).await {
            Ok(Some(reason)) => {
                tracing::info!(gateway = %link.gateway, grant = %held.key, "converging: the grant ended meanwhile; closing its port");
                send(Down::Close {
                    key: held.key,
                    reason,
                })
                .await?;
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(grant = %held.key, error = %e, "converging: cannot read the grant")
            }
        }
    }
    for held in &state.peers {
        if sent_peers.contains(&(held.router, held.public_key.clone())) {
            continue;
        }
        let current = match store.get_router_any_org(held.router).await {
            Ok(r) => r.tunnel_public_key.as_deref() == Some(held.public_key.as_str()),
            Err(store::StoreError::NotFound) => false,
            Err(e) => {
                tracing::warn!(router = %held.router, error = %e, "converging: cannot read the router");
                continue;
            }
        };
        if !current {
            send(Down::RemovePeer {
                router: held.router,
            })
            .await?;
        }
    }
    send(Down::Synced).await?;
    Ok(sent.into_iter().collect())
}

/// Every active grant of `regions`, as the gateway opens it.
async fn desired_grants(
    store: &store::Store,
    regions: &HashSet<RegionId>,
) -> Result<Vec<GrantSpec>, store::StoreError> {
    let (access, forwards) =
        tokio::try_join!(store.list_live_access(), store.list_live_forwards())?;
    let mut grants: Vec<orchestrator::LiveGrant> = Vec::new();
    grants.extend(
        access
            .into_iter()
            .filter(|g| {
                g.status == GrantStatus::Active && !g.terminal && regions.contains(&g.region_id)
            })
            .map(orchestrator::LiveGrant::Access),
    );
    grants.extend(
        forwards
            .into_iter()
            .filter(|g| g.status == GrantStatus::Active && regions.contains(&g.region_id))
            .map(orchestrator::LiveGrant::Forward),
    );
    let mut routers: HashMap<RouterId, store::Router> = HashMap::new();
    let mut out = Vec::with_capacity(grants.len());
    let now = Utc::now();
    for grant in &grants {
        let router_id = match grant {
            orchestrator::LiveGrant::Access(a) => a.router_id,
            orchestrator::LiveGrant::Forward(f) => f.router_id,
        };
        let router = match routers.entry(router_id) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                match store.get_router_any_org(router_id).await {
                    Ok(r) => e.insert(r),
                    Err(store::StoreError::NotFound) => continue,
                    Err(e) => return Err(e),
                }
            }
        };
        let spec = grant_spec(grant, router);
        if spec.expires_at > now {
            out.push(spec);
        }
    }
    Ok(out)
}

/// What a gateway needs to open a grant's port.
pub fn grant_spec(grant: &orchestrator::LiveGrant, router: &store::Router) -> GrantSpec {
    let address = crate::dataplane::target(grant, router);
    let target = match (router.reach, address.ip()) {
        (store::Reach::Tunnel, IpAddr::V4(v4)) => Target::Tunnel {
            address: v4,
            port: address.port(),
        },
        _ => Target::Direct { address },
    };
    let (key, region, port, expires_at, sources) = match grant {
        orchestrator::LiveGrant::Access(a) => (
            GrantKey::Access(a.id),
            a.region_id,
            a.port,
            a.expires_at,
            control::msg::Sources {
                allow: vec![a.allow_from],
                allow_rfc1918: a.allow_rfc1918,
            },
        ),
        orchestrator::LiveGrant::Forward(f) => (
            GrantKey::Forward(f.id),
            f.region_id,
            f.port,
            f.expires_at,
            control::msg::Sources {
                allow: vec![f.allow_from],
                allow_rfc1918: false,
            },
        ),
    };
    GrantSpec {
        key,
        region,
        port,
        target,
        sources,
        expires_at,
    }
}

/// How a grant ended, as the database says now; `None` while it is active (or not yet).
async fn grant_end(
    store: &store::Store,
    key: GrantKey,
) -> Result<Option<CloseReason>, store::StoreError> {
    let found = match key {
        GrantKey::Access(id) => store
            .get_access_any_org(id)
            .await?
            .map(|a| (a.status, a.expires_at)),
        GrantKey::Forward(id) => store
            .get_forward_any_org(id)
            .await?
            .map(|f| (f.status, f.expires_at)),
    };
    Ok(match found {
        None => Some(CloseReason::Revoked),
        Some((GrantStatus::Active | GrantStatus::Requested | GrantStatus::Provisioning, _)) => None,
        Some((GrantStatus::Failed, _)) => Some(CloseReason::Failed),
        Some((_, expires_at)) if expires_at <= Utc::now() => Some(CloseReason::Expired),
        Some(_) => Some(CloseReason::Revoked),
    })
}

/// The row of a connection at a gateway: its boot and number, so an event sent twice
/// is one row.
pub fn row_id(boot: GatewayRunId, id: u64) -> ConnectionRecordId {
    let (high, _) = boot.as_uuid().as_u64_pair();
    ConnectionRecordId::from_uuid(uuid::Uuid::from_u64_pair(high, id))
}

/// What a link's recorder knows of a grant.
#[derive(Debug, Clone, Copy)]
struct Meta {
    org: OrgId,
    router: RouterId,
}

#[derive(Default)]
struct Recorder {
    meta: HashMap<GrantKey, Meta>,
    refusals: HashMap<GrantKey, (Instant, u32)>,
    /// Boots whose runs this server registered, with when last renewed.
    beats: HashMap<GatewayRunId, Instant>,
}

impl Links {
    /// A new boot of the gateway: its run is registered, and the connections its earlier
    /// boots left recorded as live are ended.
    async fn new_boot(&self, link: &Link, state: &GatewayState) {
        let store = &self.inner.store;
        let now = Utc::now();
        let process = format!("gateway={}", link.gateway);
        let run = store::GatewayRun {
            id: state.boot,
            process: process.clone(),
            started_at: now,
            seen_at: now,
        };
        if let Err(e) = store.record_gateway_run(&run).await {
            tracing::warn!(error = %e, "could not register the gateway's boot");
        }
        lock(&self.inner.recorder)
            .beats
            .insert(state.boot, Instant::now());
        let runs = match store.list_gateway_runs().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not list gateway runs");
                return;
            }
        };
        let mut forgot = false;
        for old in runs
            .iter()
            .filter(|r| r.process == process && r.id != state.boot)
        {
            tracing::info!(gateway = %link.gateway, boot = %old.id, "the gateway restarted: its earlier boot's connections end");
            forgot |= store.forget_gateway_run(old.id).await.unwrap_or(false);
        }
        if forgot
            && let Err(e) = store
                .end_orphaned_connections(now, "gateway restarted")
                .await
        {
            tracing::warn!(error = %e, "could not end the earlier boot's connections");
        }
    }

    /// Handles what the gateway sent, in order: runs of events are written together
    /// and acknowledged once written.
    async fn handle(
        &self,
        link: &Arc<Link>,
        boot: GatewayRunId,
        batch: Vec<Up>,
        down: &mpsc::Sender<Down>,
    ) {
        let mut events: Vec<Event> = Vec::new();
        let mut closed: Vec<GrantKey> = Vec::new();
        let mut last_seq = None;
        for up in batch {
            if let Up::Event { seq, event } = up {
                if let Event::GrantClosed { key, .. } = &event {
                    closed.push(*key);
                }
                events.push(event);
                last_seq = Some(seq);
                continue;
            }
            if !events.is_empty() {
                self.record(boot, std::mem::take(&mut events)).await;
                self.closed(link, &mut closed);
            }
            match up {
                Up::Opened { key, listen } => link.answer(key, Ok(listen)),
                Up::OpenFailed { key, error } => {
                    tracing::warn!(gateway = %link.gateway, grant = %key, %error, "the gateway could not open the grant's port");
                    link.answer(key, Err(error));
                }
                Up::Status(status) => self.status(link, boot, status).await,
                Up::Refused { error } => {
                    tracing::error!(gateway = %link.gateway, %error, "the gateway refused a frame");
                }
                Up::State(_) => {
                    tracing::warn!(gateway = %link.gateway, "the gateway sent its state again; ignored");
                }
                Up::CertificateRequest { csr_pem } => self.renew(link, &csr_pem, down).await,
                Up::CertificateRenewed { not_after } => {
                    let renewing = std::mem::take(&mut *lock(&link.renewing));
                    if let Renewing::Sent(info) = renewing {
                        tracing::info!(gateway = %link.gateway, %not_after, "gateway certificate renewed");
                        *lock(&link.certificate) = Some(info);
                    } else {
                        tracing::warn!(gateway = %link.gateway, %not_after, "the gateway says it renewed a certificate this link did not send; ignored");
                    }
                }
                Up::Event { .. } => {}
            }
        }
        if !events.is_empty() {
            self.record(boot, events).await;
            self.closed(link, &mut closed);
        }
        if let Some(seq) = last_seq {
            // Written (or logged as unwritable): the gateway may forget them.
            let _ = down.send(Down::Ack { seq }).await;
        }
    }

    /// Grants whose ports closed, once their events are written: no longer open here,
    /// and the plane releases their ports.
    fn closed(&self, link: &Link, keys: &mut Vec<GrantKey>) {
        for key in keys.drain(..) {
            lock(&link.open).remove(&key);
            if let Some(hook) = lock(&self.inner.closed).as_ref() {
                hook(key);
            }
        }
    }

    async fn status(&self, link: &Link, boot: GatewayRunId, status: Status) {
        let store = &self.inner.store;
        // Where each router is seen, for the next start's resume.
        let changed: Vec<(RouterId, String)> = {
            let old = lock(&link.status);
            status
                .peers
                .iter()
                .filter_map(|p| {
                    let endpoint = p.endpoint?;
                    let before = old
                        .as_ref()
                        .and_then(|(_, s)| s.peers.iter().find(|q| q.router == p.router))
                        .and_then(|q| q.endpoint);
                    (before != Some(endpoint)).then(|| (p.router, endpoint.to_string()))
                })
                .collect()
        };
        *lock(&link.status) = Some((boot, status));
        if !changed.is_empty()
            && let Err(e) = store.set_tunnel_endpoints(&changed).await
        {
            tracing::warn!(error = %e, "could not record the routers' tunnel endpoints");
        }
        // The in-process node's boot is this server's run, renewed by the plane's own
        // heartbeat with this process's identity.
        let due = !link.is_local() && {
            let mut rec = lock(&self.inner.recorder);
            let beat = rec.beats.entry(boot).or_insert_with(Instant::now);
            if beat.elapsed() >= self.inner.config.gateway_heartbeat {
                *beat = Instant::now();
                true
            } else {
                false
            }
        };
        if due {
            let now = Utc::now();
            let run = store::GatewayRun {
                id: boot,
                process: format!("gateway={}", link.gateway),
                started_at: now,
                seen_at: now,
            };
            if let Err(e) = store.record_gateway_run(&run).await {
                tracing::warn!(error = %e, "could not renew the gateway's boot");
            }
        }
    }

    async fn meta(&self, key: GrantKey) -> Option<Meta> {
        if let Some(m) = lock(&self.inner.recorder).meta.get(&key).copied() {
            return Some(m);
        }
        let store = &self.inner.store;
        let found = match key {
            GrantKey::Access(id) => {
                store
                    .get_access_any_org(id)
                    .await
                    .ok()
                    .flatten()
                    .map(|a| Meta {
                        org: a.org_id,
                        router: a.router_id,
                    })
            }
            GrantKey::Forward(id) => {
                store
                    .get_forward_any_org(id)
                    .await
                    .ok()
                    .flatten()
                    .map(|f| Meta {
                        org: f.org_id,
                        router: f.router_id,
                    })
            }
        }?;
        let mut rec = lock(&self.inner.recorder);
        if rec.meta.len() > 100_000 {
            rec.meta.clear();
        }
        rec.meta.insert(key, found);
        Some(found)
    }

    /// Writes a run of events in order: connection rows (by boot and number, so an
    /// event sent twice is one row) together in one transaction, first uses after
    /// them; a refusal audited, a grant's close ending what is left of its rows, each
    /// after the rows before it.
    async fn record(&self, boot: GatewayRunId, events: Vec<Event>) {
        let store = &self.inner.store;
        let mut rows: Vec<store::NewConnection> = Vec::new();
        let mut firsts: Vec<(GrantKey, DateTime<Utc>)> = Vec::new();
        for event in events {
            let key = match &event {
                Event::ConnectionOpened { key, .. }
                | Event::ConnectionClosed { key, .. }
                | Event::ConnectionRefused { key, .. }
                | Event::GrantClosed { key, .. } => *key,
            };
            let Some(meta) = self.meta(key).await else {
                tracing::warn!(grant = %key, "an event of a grant the store does not have; dropped");
                continue;
            };
            let (kind, id) = match key {
                GrantKey::Access(id) => (store::GrantKind::Access, id.to_string()),
                GrantKey::Forward(id) => (store::GrantKind::Forward, id.to_string()),
            };
            let row = |conn: u64, source, started_at, end| store::NewConnection {
                id: row_id(boot, conn),
                gateway_run: boot,
                org_id: meta.org,
                router_id: meta.router,
                grant_kind: kind,
                grant_id: id.clone(),
                source,
                started_at,
                end,
            };
            match event {
                Event::ConnectionOpened {
                    id: conn,
                    source,
                    at,
                    first,
                    ..
                } => {
                    tracing::info!(grant = %key, %source, connection = conn, "connection forwarded");
                    rows.push(row(conn, source, at, None));
                    if first {
                        firsts.push((key, at));
                    }
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
                    tracing::info!(grant = %key, %source, connection = conn, bytes_in, bytes_out, %reason, "connection ended");
                    rows.push(row(
                        conn,
                        source,
                        started_at,
                        Some(store::ConnectionEnd {
                            at,
                            bytes_from_client: bytes_in,
                            bytes_to_client: bytes_out,
                            reason,
                        }),
                    ));
                }
                Event::ConnectionRefused {
                    source,
                    at,
                    refusal,
                    ..
                } => {
                    tracing::warn!(grant = %key, %source, reason = refusal_words(refusal), "connection refused");
                    if self.audit_refusal(key) {
                        let word = match key {
                            GrantKey::Access(_) => "access",
                            GrantKey::Forward(_) => "forward",
                        };
                        let audited = store
                            .append_audit(store::NewAudit {
                                org_id: meta.org,
                                at,
                                actor: "gateway".into(),
                                actor_address: Some(source.ip()),
                                action: format!("{word}.connection_refused"),
                                target: Some(format!("{word}:{id}")),
                                details: serde_json::json!({
                                    "source": source.to_string(),
                                    "reason": refusal_words(refusal),
                                    "router_id": meta.router.to_string(),
                                }),
                            })
                            .await;
                        if let Err(e) = audited {
                            tracing::error!(grant = %key, error = %e, "could not audit a refused connection");
                        }
                    }
                }
                Event::GrantClosed {
                    at,
                    reason,
                    connections_killed,
                    ..
                } => {
                    tracing::info!(grant = %key, %reason, killed = connections_killed, "grant closed at the gateway");
                    // Its rows first: then what is left open of them is ended.
                    self.flush(&mut rows, &mut firsts).await;
                    if let Err(e) = store
                        .end_grant_connections(boot, kind, &id, at, &reason)
                        .await
                    {
                        tracing::error!(grant = %key, error = %e, "could not end the grant's connections");
                    }
                }
            }
        }
        self.flush(&mut rows, &mut firsts).await;
    }

    /// Writes the rows together (one at a time if that fails, so one bad row sinks no
    /// other), then the first uses.
    async fn flush(
        &self,
        rows: &mut Vec<store::NewConnection>,
        firsts: &mut Vec<(GrantKey, DateTime<Utc>)>,
    ) {
        let store = &self.inner.store;
        let rows = std::mem::take(rows);
        if !rows.is_empty()
            && let Err(e) = store.record_connections(&rows).await
        {
            tracing::warn!(error = %e, rows = rows.len(), "could not record connections together; one at a time");
            for row in &rows {
                if let Err(e) = store.record_connections(std::slice::from_ref(row)).await {
                    tracing::error!(error = %e, connection = %row.id, "could not record a connection");
                }
            }
        }
        for (key, at) in std::mem::take(firsts) {
            let set = match key {
                GrantKey::Access(a) => store.set_access_authorized(a, at).await.map(|_| ()),
                GrantKey::Forward(f) => store.set_forward_authorized(f, at).await.map(|_| ()),
            };
            if let Err(e) = set {
                tracing::error!(grant = %key, error = %e, "could not record the grant's first use");
            }
        }
    }

    /// A gateway's certificate request, asked for by this link: signed by the control
    /// CA only if its key is the one the gateway presented in its TLS handshake, and
    /// sent back.
    async fn renew(&self, link: &Link, csr_pem: &str, down: &mpsc::Sender<Down>) {
        if !matches!(*lock(&link.renewing), Renewing::Asked) {
            tracing::warn!(gateway = %link.gateway, "a certificate request this link did not ask for; ignored");
            return;
        }
        *lock(&link.renewing) = Renewing::Idle;
        let Some(current) = link.certificate() else {
            tracing::warn!(gateway = %link.gateway, "a certificate request with no certificate presented; ignored");
            return;
        };
        let signed = async {
            let (ca_cert, ca_key) = self
                .inner
                .store
                .control_ca()
                .await
                .map_err(|e| format!("store: {e}"))?
                .ok_or_else(|| "the control CA is not made yet".to_owned())?;
            let ca = control::pki::Ca::from_pem(
                &ca_cert,
                &control::pki::KeyPem::new(ca_key.into_inner()),
            )
            .map_err(|e| format!("the stored control CA is unreadable: {e}"))?;
            let pem = ca
                .renew_gateway(csr_pem, link.gateway, &current)
                .map_err(|e| format!("request refused: {e}"))?;
            let info = control::pki::CertificateInfo::from_pem(&pem)
                .map_err(|e| format!("the certificate just signed: {e}"))?;
            Ok::<_, String>((pem, info))
        }
        .await;
        match signed {
            Ok((certificate_pem, info)) => {
                tracing::info!(gateway = %link.gateway, not_after = %info.not_after, "gateway certificate signed; sending it");
                *lock(&link.renewing) = Renewing::Sent(info);
                let _ = down.send(Down::Certificate { certificate_pem }).await;
            }
            Err(error) => {
                tracing::error!(gateway = %link.gateway, %error, "gateway certificate not renewed");
            }
        }
    }

    fn audit_refusal(&self, key: GrantKey) -> bool {
        let mut rec = lock(&self.inner.recorder);
        let now = Instant::now();
        rec.refusals
            .retain(|_, (since, _)| now.duration_since(*since) < Duration::from_secs(60));
        let entry = rec.refusals.entry(key).or_insert((now, 0));
        entry.1 += 1;
        entry.1 <= REFUSALS_AUDITED_PER_MINUTE
    }
}

/// A refusal in the words the in-process gateway's audit entries use.
fn refusal_words(r: control::msg::Refusal) -> &'static str {
    match r {
        control::msg::Refusal::SourceNotAllowed => "source not allowed",
        control::msg::Refusal::TooManyConnections => "too many connections",
        control::msg::Refusal::TooManyFromSource => "too many connections from this source",
    }
}
