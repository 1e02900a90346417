//! The management tunnel in `postern server`: one [`tunnel::Tunnel`] per region this
//! process serves, on its own UDP socket, with the region's key from the store and every
//! enrolled router of the region as a peer; and the one way to reach a router,
//! [`Tunnels::dial`]: a router reached directly gets a TCP connection to its
//! `tunnel_address`, a tunnelled one a stream inside its region's tunnel and nothing
//! else.
//!
//! [`TunnelGateway`] is what the rest of the server asks of a gateway's tunnels (admit
//! and remove a router's key, its live status, a stream to it, the gateway's address in
//! a region). [`Tunnels`] implements it in-process; a remote gateway (issue 15, over a
//! control channel) implements the same trait.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use domain::{RegionId, RouterId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::ServerConfig;
use crate::dataplane::DataPlaneError;

/// A tunnelled router is online while its last authenticated datagram is this recent:
/// about three of its 25 s keepalives.
pub const ONLINE_WITHIN: Duration = Duration::from_secs(80);

/// A tunnelled router as the gateway sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelStatus {
    /// Its public address and port as seen by the gateway (the NAT's), once it spoke.
    pub endpoint: Option<SocketAddr>,
    pub last_handshake_at: Option<SystemTime>,
    /// Its last authenticated datagram (keepalives included).
    pub last_seen_at: Option<SystemTime>,
    /// Bytes from the router, and to it.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

impl TunnelStatus {
    /// Whether the router spoke within [`ONLINE_WITHIN`].
    pub fn online(&self, now: SystemTime) -> bool {
        self.last_seen_at
            .and_then(|at| now.duration_since(at).ok().or(Some(Duration::ZERO)))
            .is_some_and(|ago| ago <= ONLINE_WITHIN)
    }
}

/// A region's tunnel, as routers are told to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTunnelInfo {
    pub region: RegionId,
    /// The gateway's public key (base64).
    pub public_key: String,
    /// The gateway's address inside the tunnel.
    pub gateway_address: Ipv4Addr,
    pub prefix: ipnet::Ipv4Net,
    /// `host:port` routers send to.
    pub endpoint: String,
    /// Where the UDP socket is bound.
    pub listen: SocketAddr,
}

/// Why a router's key was not admitted.
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("no tunnel serves this region here")]
    NoRegion,
    #[error("not a WireGuard public key: {0}")]
    Key(#[from] tunnel::KeyError),
    #[error("tunnel addresses are IPv4")]
    NotIpv4,
    #[error("{0}")]
    Peer(#[from] tunnel::PeerError),
}

/// A region's tunnel figures, for `/metrics`.
#[derive(Debug, Clone)]
pub struct RegionFigures {
    pub region: String,
    pub stats: tunnel::TunnelStats,
    /// Peers whose last authenticated datagram is recent ([`ONLINE_WITHIN`]).
    pub peers_up: usize,
}

/// A stream to a router.
pub type RouterStream = orchestrator::RouterStream;
/// What a dial returns.
pub type DialFuture = orchestrator::DialFuture;

/// What the server asks of a gateway's tunnels; [`Tunnels`] in-process, a remote
/// gateway's control channel later (issue 15).
pub trait TunnelGateway: Send + Sync + 'static {
    /// Lets `router`'s key in at `address` in `region`'s tunnel (replacing a key the
    /// router had). Called once its enrolment is stored, before it is answered.
    fn admit_peer(
        &self,
        router: RouterId,
        region: RegionId,
        public_key: &str,
        address: IpAddr,
    ) -> Result<(), AdmitError>;
    /// Ends `router`'s session and streams and forgets its key. Whether it had one.
    fn remove_peer(&self, router: RouterId) -> bool;
    /// `router`'s tunnel as the gateway sees it now; `None` unless it is a peer here.
    fn tunnel_status(&self, router: RouterId) -> Option<TunnelStatus>;
    /// A stream to `port` on `router`: TCP for a direct router, the tunnel only for a
    /// tunnelled one.
    fn dial(&self, router: &store::Router, port: u16) -> DialFuture;
    /// The region's tunnel (keys, addresses, endpoint), if served here.
    fn region(&self, region: RegionId) -> Option<RegionTunnelInfo>;
}

struct RegionTunnel {
    name: String,
    tunnel: tunnel::Tunnel,
    info: RegionTunnelInfo,
    /// The gateway crate's dialer for this region (one per region, so targets compare).
    dialer: Arc<dyn gateway::Dial>,
}

struct Inner {
    regions: HashMap<RegionId, RegionTunnel>,
    /// The remote gateways, for the regions configured `gateway = "remote"`.
    links: Option<crate::links::Links>,
    /// Those regions' tunnel prefix and gateway address, from the configuration.
    remote: HashMap<RegionId, (ipnet::Ipv4Net, Ipv4Addr)>,
    /// Each admitted router: its region, key and address.
    peers: Mutex<HashMap<RouterId, (RegionId, tunnel::PublicKey, Ipv4Addr)>>,
    tasks: Mutex<Vec<(oneshot::Sender<()>, JoinHandle<()>)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The tunnels of the regions this process serves. Cheap to clone.
#[derive(Clone)]
pub struct Tunnels {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels")
            .field("regions", &self.inner.regions.len())
            .finish()
    }
}

impl Tunnels {
    /// Binds and runs a tunnel for every configured region (its key made if it has none,
    /// as `bootstrap` does at first start), and admits every enrolled router of it.
    pub async fn start(
        store: &store::Store,
        config: &ServerConfig,
        links: Option<crate::links::Links>,
    ) -> Result<Self, DataPlaneError> {
        let mut regions = HashMap::new();
        let mut tasks = Vec::new();
        let mut peers = HashMap::new();
        let mut remote = HashMap::new();
        for r in config.regions.iter().filter(|r| r.remote()) {
            if let Some(stored) = store.find_region_by_name(&r.name).await? {
                remote.insert(stored.id, (r.tunnel_prefix(), r.tunnel_gateway()));
            }
        }
        for r in config.regions.iter().filter(|r| !r.remote()) {
            let err = |message: String| DataPlaneError::Region {
                name: r.name.clone(),
                message,
            };
            let stored = store
                .find_region_by_name(&r.name)
                .await?
                .ok_or_else(|| err("not in the store".into()))?;
            crate::bootstrap::ensure_region_tunnel(store, stored.id)
                .await
                .map_err(|e| err(e.to_string()))?;
            let private = store.region_tunnel_private_key(stored.id).await?;
            let private = tunnel::PrivateKey::from_base64(private.expose())
                .map_err(|e| err(format!("the stored tunnel key is unreadable: {e}")))?;
            let prefix = r.tunnel_prefix();
            let gateway_address = r.tunnel_gateway();
            let tunnel =
                tunnel::Tunnel::new(tunnel::TunnelConfig::new(private, gateway_address, prefix))
                    .map_err(|e| err(format!("tunnel: {e}")))?;
            let listen = r.tunnel_listen();
            let socket = tunnel::bind_udp(listen)
                .map_err(|e| err(format!("cannot bind the tunnel's UDP socket {listen}: {e}")))?;
            let bound = socket.local_addr().map_err(|e| err(e.to_string()))?;
            let info = RegionTunnelInfo {
                region: stored.id,
                public_key: tunnel.public_key().to_base64(),
                gateway_address,
                prefix,
                endpoint: r.tunnel_endpoint(bound),
                listen: bound,
            };
            for peer in store.list_tunnel_peers(stored.id).await? {
                let admitted = peer
                    .public_key
                    .parse::<tunnel::PublicKey>()
                    .map_err(AdmitError::from)
                    .and_then(|key| match peer.tunnel_address {
                        IpAddr::V4(a) => Ok((key, a)),
                        IpAddr::V6(_) => Err(AdmitError::NotIpv4),
                    })
                    .and_then(|(key, a)| {
                        tunnel.upsert_peer(key, a)?;
                        Ok((key, a))
                    });
                match admitted {
                    Ok((key, a)) => {
                        peers.insert(peer.router_id, (stored.id, key, a));
                        // Where an earlier run last saw it: start the handshake there.
                        if let Some(endpoint) =
                            peer.endpoint.as_deref().and_then(|e| e.parse().ok())
                        {
                            tunnel.resume_peer(&key, endpoint);
                        }
                    }
                    Err(e) => {
                        tracing::error!(router = %peer.router_id, region = %r.name, error = %e, "start-up: the router's tunnel key was not admitted");
                    }
                }
            }
            tracing::info!(
                region = %r.name,
                listen = %bound,
                endpoint = %info.endpoint,
                gateway = %gateway_address,
                peers = peers.values().filter(|p| p.0 == stored.id).count(),
                "tunnel listening"
            );
            let (stop, stopped) = oneshot::channel::<()>();
            let running = tunnel.clone();
            let name = r.name.clone();
            let task = tokio::spawn(async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                if let Err(e) = running.run(socket, shutdown).await {
                    tracing::error!(region = %name, error = %e, "the tunnel stopped");
                }
            });
            tasks.push((stop, task));
            let dialer: Arc<dyn gateway::Dial> = Arc::new(RegionDial {
                name: r.name.clone(),
                tunnel: tunnel.clone(),
            });
            regions.insert(
                stored.id,
                RegionTunnel {
                    name: r.name.clone(),
                    tunnel,
                    info,
                    dialer,
                },
            );
        }
        let tunnels = Tunnels {
            inner: Arc::new(Inner {
                regions,
                links,
                remote,
                peers: Mutex::new(peers),
                tasks: Mutex::new(tasks),
            }),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let recorder = tokio::spawn(record_endpoints(tunnels.clone(), store.clone(), stopped));
        lock(&tunnels.inner.tasks).push((stop, recorder));
        Ok(tunnels)
    }

    /// The gateway's address inside `region`'s tunnel, if served here.
    pub fn gateway_address(&self, region: RegionId) -> Option<Ipv4Addr> {
        if let Some((_, gateway)) = self.inner.remote.get(&region) {
            return Some(*gateway);
        }
        self.inner
            .regions
            .get(&region)
            .map(|r| r.info.gateway_address)
    }

    /// Whether `region` is served by a remote gateway that this server cannot reach now
    /// (none joined, or its control link is not up); `false` for a region served here.
    pub fn gateway_unreachable(&self, region: RegionId) -> bool {
        self.inner.remote.contains_key(&region) && !self.link(region).is_some_and(|l| l.up())
    }

    /// The link of a region served remotely (`None` for a local region, or while no
    /// gateway has joined it).
    fn link(&self, region: RegionId) -> Option<Arc<crate::links::Link>> {
        self.inner.links.as_ref()?.link(region)
    }

    /// Where a grant's connections to `address` go: a TCP target for a direct router,
    /// the region's tunnel for a tunnelled one (`None` when no tunnel serves it here).
    pub fn target(&self, router: &store::Router, port: u16) -> Option<gateway::Target> {
        let address = SocketAddr::new(router.tunnel_address, port);
        match router.reach {
            store::Reach::Direct => Some(gateway::Target::Tcp(address)),
            store::Reach::Tunnel => {
                let region = self.inner.regions.get(&router.region_id)?;
                Some(gateway::Target::Dial {
                    address,
                    dialer: region.dialer.clone(),
                })
            }
        }
    }

    /// Per region: the tunnel's counters and how many peers are up.
    pub fn figures(&self) -> Vec<RegionFigures> {
        let now = SystemTime::now();
        let mut out: Vec<RegionFigures> = self
            .inner
            .regions
            .values()
            .map(|r| {
                let peers_up = r
                    .tunnel
                    .peers()
                    .iter()
                    .filter(|p| status_of(p).online(now))
                    .count();
                RegionFigures {
                    region: r.name.clone(),
                    stats: r.tunnel.stats(),
                    peers_up,
                }
            })
            .collect();
        out.sort_by(|a, b| a.region.cmp(&b.region));
        out
    }

    /// Stops every tunnel (streams reset) and waits for their tasks.
    pub async fn shutdown(&self) {
        let tasks = std::mem::take(&mut *lock(&self.inner.tasks));
        for (stop, task) in tasks {
            let _ = stop.send(());
            let _ = task.await;
        }
    }
}

fn status_of(p: &tunnel::PeerStatus) -> TunnelStatus {
    TunnelStatus {
        endpoint: p.endpoint,
        last_handshake_at: p.last_handshake_at,
        last_seen_at: p.last_seen_at,
        rx_bytes: p.rx_bytes,
        tx_bytes: p.tx_bytes,
    }
}

impl TunnelGateway for Tunnels {
    fn admit_peer(
        &self,
        router: RouterId,
        region: RegionId,
        public_key: &str,
        address: IpAddr,
    ) -> Result<(), AdmitError> {
        if self.inner.remote.contains_key(&region) {
            let key: tunnel::PublicKey = public_key.parse()?;
            let IpAddr::V4(address) = address else {
                return Err(AdmitError::NotIpv4);
            };
            let link = self.link(region).ok_or(AdmitError::NoRegion)?;
            // Sent now if the gateway is reachable; else its convergence sends it.
            link.send(control::msg::Down::UpsertPeer(control::msg::PeerSpec {
                router,
                region,
                public_key: key.to_base64(),
                address,
                endpoint: None,
            }));
            tracing::info!(%router, gateway = %link.gateway, %address, public_key = %key, "tunnel peer admitted at the remote gateway");
            return Ok(());
        }
        let served = self
            .inner
            .regions
            .get(&region)
            .ok_or(AdmitError::NoRegion)?;
        let key: tunnel::PublicKey = public_key.parse()?;
        let IpAddr::V4(address) = address else {
            return Err(AdmitError::NotIpv4);
        };
        let mut peers = lock(&self.inner.peers);
        if let Some((old_region, old_key, _)) = peers.get(&router).copied()
            && (old_key != key || old_region != region)
            && let Some(old) = self.inner.regions.get(&old_region)
        {
            old.tunnel.remove_peer(&old_key);
        }
        if let Err(e) = served.tunnel.upsert_peer(key, address) {
            peers.remove(&router);
            return Err(e.into());
        }
        peers.insert(router, (region, key, address));
        tracing::info!(%router, region = %served.name, %address, public_key = %key, "tunnel peer admitted");
        Ok(())
    }

    fn remove_peer(&self, router: RouterId) -> bool {
        if let Some(links) = &self.inner.links {
            links.broadcast(control::msg::Down::RemovePeer { router });
        }
        let Some((region, key, _)) = lock(&self.inner.peers).remove(&router) else {
            return false;
        };
        let removed = self
            .inner
            .regions
            .get(&region)
            .is_some_and(|r| r.tunnel.remove_peer(&key));
        tracing::info!(%router, "tunnel peer removed");
        removed
    }

    fn tunnel_status(&self, router: RouterId) -> Option<TunnelStatus> {
        let local = lock(&self.inner.peers).get(&router).copied();
        let Some((region, key, _)) = local else {
            let p = self.inner.links.as_ref()?.peer_status(router)?;
            return Some(TunnelStatus {
                endpoint: p.endpoint,
                last_handshake_at: p.last_handshake_at.map(SystemTime::from),
                last_seen_at: p.last_seen_at.map(SystemTime::from),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
            });
        };
        let served = self.inner.regions.get(&region)?;
        served.tunnel.peer(&key).as_ref().map(status_of)
    }

    fn dial(&self, router: &store::Router, port: u16) -> DialFuture {
        if self.inner.remote.contains_key(&router.region_id) {
            let link = self.link(router.region_id);
            let target = match (router.reach, router.tunnel_address) {
                (store::Reach::Tunnel, IpAddr::V4(address)) => {
                    control::msg::Target::Tunnel { address, port }
                }
                _ => control::msg::Target::Direct {
                    address: SocketAddr::new(router.tunnel_address, port),
                },
            };
            let region = router.region_id;
            return Box::pin(async move {
                let Some(link) = link else {
                    return Err(io::Error::new(
                        io::ErrorKind::NotConnected,
                        "no gateway has joined the router's region",
                    ));
                };
                let stream = link
                    .dial(control::msg::DialRequest { region, target })
                    .await?;
                Ok(Box::new(stream) as RouterStream)
            });
        }
        match router.reach {
            store::Reach::Direct => orchestrator::dial_direct(router, port),
            store::Reach::Tunnel => {
                let found = self
                    .inner
                    .regions
                    .get(&router.region_id)
                    .map(|r| r.tunnel.clone());
                let address = router.tunnel_address;
                Box::pin(async move {
                    let Some(tunnel) = found else {
                        return Err(io::Error::new(
                            io::ErrorKind::NotConnected,
                            "no tunnel serves the router's region here",
                        ));
                    };
                    let IpAddr::V4(address) = address else {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "a tunnelled router's address is IPv4",
                        ));
                    };
                    let stream = tunnel.dial(address, port).await.map_err(tunnel_io)?;
                    Ok(Box::new(TunnelConn(stream)) as RouterStream)
                })
            }
        }
    }

    fn region(&self, region: RegionId) -> Option<RegionTunnelInfo> {
        if let Some((prefix, gateway_address)) = self.inner.remote.get(&region) {
            let link = self.link(region)?;
            return Some(RegionTunnelInfo {
                region,
                public_key: link.public_key.clone(),
                gateway_address: *gateway_address,
                prefix: *prefix,
                endpoint: link.endpoint.clone(),
                listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            });
        }
        self.inner.regions.get(&region).map(|r| r.info.clone())
    }
}

fn tunnel_io(e: tunnel::TunnelError) -> io::Error {
    let kind = match &e {
        tunnel::TunnelError::ConnectTimeout(_) => io::ErrorKind::TimedOut,
        tunnel::TunnelError::ConnectRefused(_) => io::ErrorKind::ConnectionRefused,
        tunnel::TunnelError::NoPeer(_) => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.to_string())
}

/// The gateway crate's dialer for one region's tunnel.
struct RegionDial {
    name: String,
    tunnel: tunnel::Tunnel,
}

impl gateway::Dial for RegionDial {
    fn dial(&self, address: SocketAddr) -> gateway::DialFuture {
        let tunnel = self.tunnel.clone();
        Box::pin(async move {
            let IpAddr::V4(ip) = address.ip() else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a tunnelled router's address is IPv4",
                ));
            };
            let stream = tunnel.dial(ip, address.port()).await.map_err(tunnel_io)?;
            Ok(Box::new(TunnelConn(stream)) as gateway::BoxUpstream)
        })
    }

    fn via(&self) -> String {
        format!("tunnel {}", self.name)
    }
}

/// A stream inside a tunnel, as the gateway and the orchestrator take it.
pub struct TunnelConn(tunnel::TunnelStream);

impl AsyncRead for TunnelConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl gateway::Upstream for TunnelConn {
    fn kill(&mut self) {
        self.0.kill();
    }
}

/// How often the routers' endpoints are compared with what was last recorded.
const ENDPOINTS_EVERY: Duration = Duration::from_secs(2);

/// Records in the store where each router is seen (its NAT's address and port) whenever
/// that changes, so that the next start of a gateway resumes it at once
/// ([`tunnel::Tunnel::resume_peer`]) rather than at its next rekey.
async fn record_endpoints(tunnels: Tunnels, store: store::Store, mut stop: oneshot::Receiver<()>) {
    let mut recorded: HashMap<RouterId, SocketAddr> = HashMap::new();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(ENDPOINTS_EVERY) => {}
        }
        let peers: Vec<(RouterId, RegionId, tunnel::PublicKey)> = lock(&tunnels.inner.peers)
            .iter()
            .map(|(router, (region, key, _))| (*router, *region, *key))
            .collect();
        let mut changed = Vec::new();
        for (router, region, key) in peers {
            let Some(endpoint) = tunnels
                .inner
                .regions
                .get(&region)
                .and_then(|r| r.tunnel.peer(&key))
                .and_then(|p| p.endpoint)
            else {
                continue;
            };
            if recorded.get(&router) != Some(&endpoint) {
                changed.push((router, endpoint));
            }
        }
        let rows: Vec<(RouterId, String)> =
            changed.iter().map(|(r, e)| (*r, e.to_string())).collect();
        match store.set_tunnel_endpoints(&rows).await {
            Ok(()) => recorded.extend(changed),
            Err(e) => tracing::warn!(error = %e, "could not record the routers' tunnel endpoints"),
        }
    }
}
