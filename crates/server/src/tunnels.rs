//! The management tunnels as the rest of the server sees them ([`TunnelGateway`]): admit
//! and remove a router's key, its live status, a stream to it, a region's tunnel as
//! routers are told to reach it. [`Tunnels`] implements it over the gateways' links
//! ([`crate::links`]): each region's tunnel runs in its gateway node (the one inside this
//! process, or a `postern gateway`), and the one way to reach a router is a dial through
//! that gateway: a tunnelled router only inside its region's tunnel, a direct one by TCP
//! from the gateway.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use domain::{RegionId, RouterId};

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

/// The tunnels of every configured region, reached through their gateways. Cheap to
/// clone.
#[derive(Clone)]
pub struct Tunnels {
    inner: Arc<Inner>,
}

struct Inner {
    links: crate::links::Links,
    /// The node inside this process, for its regions' figures and listen addresses.
    node: Option<gateway::Node>,
    /// Each configured region's name, tunnel prefix and gateway address.
    regions: HashMap<RegionId, (String, ipnet::Ipv4Net, Ipv4Addr)>,
    /// Each admitted router: its region, key and address (what this server sent).
    peers: Mutex<HashMap<RouterId, (RegionId, String, Ipv4Addr)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::fmt::Debug for Tunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tunnels")
            .field("regions", &self.inner.regions.len())
            .finish()
    }
}

impl Tunnels {
    /// The tunnels of `config`'s regions, through `links`; the routers enrolled so far
    /// count as admitted (their gateways get them when their links converge).
    pub async fn new(
        config: &ServerConfig,
        store: &store::Store,
        links: crate::links::Links,
        node: Option<gateway::Node>,
    ) -> Result<Self, DataPlaneError> {
        let mut regions = HashMap::new();
        let mut peers = HashMap::new();
        for r in &config.regions {
            let Some(stored) = store.find_region_by_name(&r.name).await? else {
                continue;
            };
            regions.insert(
                stored.id,
                (r.name.clone(), r.tunnel_prefix(), r.tunnel_gateway()),
            );
            for p in store.list_tunnel_peers(stored.id).await? {
                if let IpAddr::V4(a) = p.tunnel_address {
                    peers.insert(p.router_id, (stored.id, p.public_key, a));
                }
            }
        }
        Ok(Tunnels {
            inner: Arc::new(Inner {
                links,
                node,
                regions,
                peers: Mutex::new(peers),
            }),
        })
    }

    /// The gateway's address inside `region`'s tunnel.
    pub fn gateway_address(&self, region: RegionId) -> Option<Ipv4Addr> {
        self.inner.regions.get(&region).map(|(_, _, g)| *g)
    }

    /// Whether `region` is served by a remote gateway that this server cannot reach now
    /// (none joined, or its link is not up); `false` for a region served here.
    pub fn gateway_unreachable(&self, region: RegionId) -> bool {
        match self.inner.links.link(region) {
            Some(link) => !link.is_local() && !link.up(),
            None => self.inner.regions.contains_key(&region),
        }
    }

    /// Per region of the in-process node: the tunnel's counters and how many peers are
    /// up.
    pub fn figures(&self) -> Vec<RegionFigures> {
        let Some(node) = &self.inner.node else {
            return Vec::new();
        };
        let mut out: Vec<RegionFigures> = node
            .figures()
            .regions
            .into_iter()
            .map(|r| RegionFigures {
                region: r.name,
                stats: r.stats,
                peers_up: r.peers_up,
            })
            .collect();
        out.sort_by(|a, b| a.region.cmp(&b.region));
        out
    }

    /// Nothing to stop: the tunnels run in their gateways.
    pub async fn shutdown(&self) {}
}

impl TunnelGateway for Tunnels {
    fn admit_peer(
        &self,
        router: RouterId,
        region: RegionId,
        public_key: &str,
        address: IpAddr,
    ) -> Result<(), AdmitError> {
        if !self.inner.regions.contains_key(&region) {
            return Err(AdmitError::NoRegion);
        }
        let key: tunnel::PublicKey = public_key.parse()?;
        let IpAddr::V4(address) = address else {
            return Err(AdmitError::NotIpv4);
        };
        let link = self.inner.links.link(region).ok_or(AdmitError::NoRegion)?;
        lock(&self.inner.peers).insert(router, (region, key.to_base64(), address));
        // Sent now if the gateway is reachable; else its convergence sends it.
        link.send(control::msg::Down::UpsertPeer(control::msg::PeerSpec {
            router,
            region,
            public_key: key.to_base64(),
            address,
            endpoint: None,
        }));
        tracing::info!(%router, gateway = %link.gateway, %address, public_key = %key, "tunnel peer admitted");
        Ok(())
    }

    fn remove_peer(&self, router: RouterId) -> bool {
        self.inner
            .links
            .broadcast(control::msg::Down::RemovePeer { router });
        self.inner.links.forget_peer(router);
        let had = lock(&self.inner.peers).remove(&router).is_some();
        if had {
            tracing::info!(%router, "tunnel peer removed");
        }
        had
    }

    fn tunnel_status(&self, router: RouterId) -> Option<TunnelStatus> {
        // Admitted here: as its gateway last reported it (nothing yet, until it does).
        // Admitted by another server of the same database (enrolled there): as its
        // gateway reports it.
        let p = self.inner.links.peer_status(router);
        if p.is_none() && !lock(&self.inner.peers).contains_key(&router) {
            return None;
        }
        Some(p.map_or(
            TunnelStatus {
                endpoint: None,
                last_handshake_at: None,
                last_seen_at: None,
                rx_bytes: 0,
                tx_bytes: 0,
            },
            |p| TunnelStatus {
                endpoint: p.endpoint,
                last_handshake_at: p.last_handshake_at.map(SystemTime::from),
                last_seen_at: p.last_seen_at.map(SystemTime::from),
                rx_bytes: p.rx_bytes,
                tx_bytes: p.tx_bytes,
            },
        ))
    }

    fn dial(&self, router: &store::Router, port: u16) -> DialFuture {
        let link = self.inner.links.link(router.region_id);
        let target = match (router.reach, router.tunnel_address) {
            (store::Reach::Tunnel, IpAddr::V4(address)) => {
                control::msg::Target::Tunnel { address, port }
            }
            (store::Reach::Tunnel, IpAddr::V6(_)) => {
                return Box::pin(async {
                    Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "a tunnelled router's address is IPv4",
                    ))
                });
            }
            (store::Reach::Direct, _) => control::msg::Target::Direct {
                address: SocketAddr::new(router.tunnel_address, port),
            },
        };
        let Some(link) = link else {
            // A region no gateway here serves: a direct router is still reached from
            // here; a tunnelled one is not.
            return orchestrator::dial_direct(router, port);
        };
        let region = router.region_id;
        Box::pin(async move {
            let stream = link
                .dial(control::msg::DialRequest { region, target })
                .await?;
            Ok(Box::new(stream) as RouterStream)
        })
    }

    fn region(&self, region: RegionId) -> Option<RegionTunnelInfo> {
        let (name, prefix, gateway_address) = self.inner.regions.get(&region)?.clone();
        let link = self.inner.links.link(region)?;
        if link.is_local() {
            let node = self.inner.node.as_ref()?;
            let info = node.regions().into_iter().find(|r| r.region == region)?;
            let listen = node
                .figures()
                .regions
                .into_iter()
                .find(|r| r.name == name)
                .map(|r| r.listen)?;
            return Some(RegionTunnelInfo {
                region,
                public_key: info.public_key,
                gateway_address,
                prefix,
                endpoint: info.endpoint,
                listen,
            });
        }
        Some(RegionTunnelInfo {
            region,
            public_key: link.public_key.clone(),
            gateway_address,
            prefix,
            endpoint: link.endpoint.clone(),
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
        })
    }
}
