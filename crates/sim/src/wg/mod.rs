//! The router's own WireGuard: the management tunnel its configuration asks for, built
//! for real, so a router that sits behind NAT is reachable through it and through
//! nothing else.
//!
//! Given a [`WgConfig`] (the router's private key and listen port, its tunnel address
//! from `/ip address`, and its peers: public key, endpoint, allowed-address,
//! persistent-keepalive), the router is the WireGuard **initiator**:
//! - it binds a UDP socket on its own address (the listen port, or any free port if that
//!   one is taken), sends a handshake initiation to each peer that has an endpoint, and
//!   runs WireGuard's timers (boringtun's `noise::Tunn`): retries, re-keying, and the
//!   persistent keepalive that keeps a NAT mapping open. When a handshake attempt gives
//!   up (90 s without an answer) a peer with a keepalive starts again at its next
//!   keepalive, as a real router sending keepalives does;
//! - it follows a peer to the source of the peer's last authenticated datagram;
//! - a userspace TCP/IP stack (`stack`, smoltcp) holds the router's tunnel address and
//!   accepts TCP on the API, API-SSL, SSH and WinBox ports ([`ServicePorts`]), handing
//!   each connection ([`WgStream`]) to the same handlers the TCP listeners use, with the
//!   peer's tunnel address as the client address (so `/user` `address=` sees the
//!   gateway's tunnel address), and on the port of each dst-nat rule that applies to
//!   the WireGuard interface, forwarding it over real TCP from the sim's host.
//!
//! [`configure`] applies a configuration (a change tears the tunnel down and builds it
//! again, except one of `/ip service`'s ports alone, which the running tunnel follows); [`rebind_udp`] moves the UDP socket to a new source port, as a NAT mapping
//! change (or the router roaming) looks from the gateway; [`status`] reports each peer's
//! endpoint, last handshake and bytes. [`external`] is the other backend: Debian's
//! `wireguard-go`, `wg` and `ip` in a network namespace.

pub mod external;
pub(crate) mod stack;
pub mod stream;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::addr::AddressList;
use crate::nat::Forward;
use crate::router::Router;
use crate::tls::TlsIdentity;

pub use stream::WgStream;

/// How often WireGuard's timers run.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Datagrams read before the stack is polled.
const RECV_BATCH: usize = 64;
/// The largest datagram there is.
const MAX_DATAGRAM: usize = 65_536;
/// How long a connection's handler gets to close by itself once the tunnel goes down.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A Curve25519 key (32 bytes). Debug output is redacted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Reads the base64 form RouterOS and `wg` print (44 characters).
    pub fn from_base64(text: &str) -> Option<Key> {
        let bytes = STANDARD.decode(text.trim()).ok()?;
        <[u8; 32]>::try_from(bytes.as_slice()).ok().map(Key)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// A new private key from the OS-seeded CSPRNG, clamped as Curve25519 keys are.
    pub fn generate_private() -> Key {
        let mut bytes: [u8; 32] = rand::random();
        if let Some(b) = bytes.first_mut() {
            *b &= 248;
        }
        if let Some(b) = bytes.last_mut() {
            *b = (*b & 127) | 64;
        }
        Key(bytes)
    }

    /// The public key of this private key.
    pub fn public(&self) -> Key {
        let secret = x25519::StaticSecret::from(self.0);
        Key(*x25519::PublicKey::from(&secret).as_bytes())
    }
}

/// A new private key and its public key, base64, as `/interface wireguard add` makes
/// them.
pub fn generate_keypair() -> (String, String) {
    let private = Key::generate_private();
    (private.to_base64(), private.public().to_base64())
}

/// The ports the router serves through the tunnel: RouterOS's own by default (the
/// tunnel needs no privilege, unlike the sim's SSH listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePorts {
    pub api: u16,
    pub api_ssl: u16,
    pub ssh: u16,
    pub winbox: u16,
}

impl Default for ServicePorts {
    fn default() -> Self {
        ServicePorts {
            api: 8728,
            api_ssl: 8729,
            ssh: 22,
            winbox: 8291,
        }
    }
}

/// One peer of the router's WireGuard interface (`/interface wireguard peers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgPeerConfig {
    /// Its `.id` in `/interface/wireguard/peers`, where the tunnel reports what it sees
    /// of it (`last-handshake`, `rx`, `tx`, `current-endpoint-*`); `None` for a tunnel
    /// configured directly.
    pub id: Option<u32>,
    pub public_key: Key,
    pub preshared_key: Option<Key>,
    /// `endpoint-address` and `endpoint-port`; `None`: the router waits to be contacted.
    pub endpoint: Option<(String, u16)>,
    /// `allowed-address`: whose packets are accepted from this peer, and where packets
    /// to those addresses go.
    pub allowed: AddressList,
    /// `persistent-keepalive`, in seconds.
    pub keepalive: Option<u16>,
}

/// What the router's WireGuard interface and its address ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WgConfig {
    /// The interface's name (`wireguard1`, `postern`): dst-nat rules with this
    /// `in-interface` are served through the tunnel.
    pub interface: String,
    pub private_key: Key,
    /// `listen-port`; 0 for any free port.
    pub listen_port: u16,
    /// The router's tunnel address (`/ip address address=`).
    pub address: Ipv4Addr,
    /// Its prefix length (32 for RouterOS's `address=A/32 network=B`).
    pub prefix: u8,
    /// The other end (`network=` of a /32 address, the gateway's tunnel address): the
    /// stack's default route points there.
    pub network: Ipv4Addr,
    pub mtu: u16,
    pub peers: Vec<WgPeerConfig>,
    pub ports: ServicePorts,
}

impl WgConfig {
    /// One peer, RouterOS's defaults for the rest (listen port 13231, MTU 1420).
    pub fn new(private_key: Key, address: Ipv4Addr, network: Ipv4Addr) -> WgConfig {
        WgConfig {
            interface: "wireguard1".into(),
            private_key,
            listen_port: 13231,
            address,
            prefix: 32,
            network,
            mtu: 1420,
            peers: Vec::new(),
            ports: ServicePorts::default(),
        }
    }
}

/// One peer as the tunnel sees it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub public_key: String,
    /// Where its datagrams go (the configured endpoint, then wherever it was last heard
    /// from).
    pub endpoint: Option<SocketAddr>,
    /// Time since the session in use was made; `None` before the first handshake.
    pub last_handshake: Option<Duration>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// The tunnel as it runs now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The UDP socket's address (its source port is what a NAT would map).
    pub local: Option<SocketAddr>,
    pub peers: Vec<PeerStatus>,
}

impl Status {
    /// Whether every peer has a session.
    pub fn is_up(&self) -> bool {
        !self.peers.is_empty() && self.peers.iter().all(|p| p.last_handshake.is_some())
    }
}

/// What the service handlers need besides the router: the API-SSL certificate and the
/// SSH server's configuration (host key).
#[derive(Clone)]
pub struct Services {
    pub tls: TlsIdentity,
    pub ssh: Arc<russh::server::Config>,
}

/// The router's WireGuard: what serves it and what runs.
#[derive(Default)]
pub(crate) struct Slot {
    services: Option<Services>,
    running: Option<Running>,
    /// Set for the [`external`] backend.
    external: Option<external::Options>,
}

struct Running {
    config: WgConfig,
    token: CancellationToken,
    ctl: Arc<Ctl>,
    external: Option<external::Running>,
}

/// Shared between the driver and whoever asks it something.
#[derive(Default)]
struct Ctl {
    rebind: Notify,
    rehandshake: Notify,
    nat_changed: Notify,
    /// `/ip service`'s ports, changed without rebuilding the tunnel.
    ports: Mutex<Option<ServicePorts>>,
    status: Mutex<Status>,
}

fn slot(router: &Router) -> std::sync::MutexGuard<'_, Slot> {
    router.inner.wg.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gives the router what its tunnel's handlers need (done once it has a certificate and
/// a host key).
pub fn set_services(router: &Router, services: Services) {
    slot(router).services = Some(services);
}

/// Makes the router build its tunnel with Debian's `wireguard-go` in a network
/// namespace instead of the userspace stack (see [`external`]).
pub fn use_external(router: &Router, options: external::Options) {
    slot(router).external = Some(options);
}

/// Brings the tunnel in line with `config`: `None` takes it down; a changed one takes
/// it down and builds it again; the same one leaves it alone. Outside a Tokio runtime,
/// or before [`set_services`], it does nothing.
pub fn configure(router: &Router, config: Option<WgConfig>) {
    if tokio::runtime::Handle::try_current().is_err() {
        tracing::warn!("wireguard changed outside a Tokio runtime; tunnel not updated");
        return;
    }
    let mut slot = slot(router);
    if slot.running.as_ref().map(|r| &r.config) == config.as_ref() {
        return;
    }
    // Only `/ip service`'s ports moved: the running tunnel listens on the new ones
    // (its sessions, such as the API connection that made the change, carry on).
    if let (Some(running), Some(new)) = (slot.running.as_mut(), config.as_ref())
        && running.external.is_none()
        && (WgConfig {
            ports: new.ports,
            ..running.config.clone()
        }) == *new
    {
        running.config.ports = new.ports;
        *running.ctl.ports.lock().unwrap_or_else(|e| e.into_inner()) = Some(new.ports);
        running.ctl.nat_changed.notify_one();
        return;
    }
    if let Some(old) = slot.running.take() {
        old.token.cancel();
        drop(old.external);
    }
    let Some(config) = config else { return };
    if router.shutdown_token().is_cancelled() {
        return;
    }
    let Some(services) = slot.services.clone() else {
        tracing::warn!("the router has no services yet; tunnel not started");
        return;
    };
    let token = router.shutdown_token().child_token();
    let ctl = Arc::new(Ctl::default());
    let mut external = None;
    if let Some(options) = slot.external.clone() {
        match external::start(router, &config, &options, &services) {
            Ok(r) => external = Some(r),
            Err(e) => tracing::warn!(error = %e, "external wireguard failed to start"),
        }
    } else {
        tokio::spawn(drive(
            router.clone(),
            services,
            config.clone(),
            Arc::clone(&ctl),
            token.clone(),
        ));
    }
    slot.running = Some(Running {
        config,
        token,
        ctl,
        external,
    });
}

/// The configuration the tunnel runs with, if any.
pub fn current(router: &Router) -> Option<WgConfig> {
    slot(router).running.as_ref().map(|r| r.config.clone())
}

/// Moves the tunnel's UDP socket to a new source port at once (and sends a keepalive
/// from it, as the packet that made the new NAT mapping): what a NAT mapping change or
/// a roaming router looks like from the gateway. Returns whether a tunnel runs.
pub fn rebind_udp(router: &Router) -> bool {
    let slot = slot(router);
    match &slot.running {
        Some(r) if r.external.is_some() => {
            r.external.as_ref().is_some_and(external::Running::rebind)
        }
        Some(r) => {
            r.ctl.rebind.notify_one();
            true
        }
        None => false,
    }
}

/// The tunnel the router's own configuration asks for: the first enabled WireGuard
/// interface with an enabled IPv4 address and at least one enabled peer, with the
/// ports of `/ip/service` (a disabled service is not served). `None`: no tunnel.
pub fn config_from_state(router: &Router) -> Option<WgConfig> {
    let (interfaces, ports) = {
        let state = router.state();
        let port = |name: &str| -> u16 {
            state
                .services
                .items
                .iter()
                .find(|i| i.get("name") == Some(name))
                .filter(|i| !i.is_disabled())
                .map_or(0, |i| {
                    i.get("port").and_then(|p| p.parse().ok()).unwrap_or(0)
                })
        };
        let ports = ServicePorts {
            api: port("api"),
            api_ssl: port("api-ssl"),
            ssh: port("ssh"),
            winbox: port("winbox"),
        };
        (state.wireguard(), ports)
    };
    interfaces
        .into_iter()
        .filter(|i| !i.disabled)
        .find_map(|i| {
            let (address, prefix, network) =
                i.addresses.iter().filter(|a| !a.disabled).find_map(|a| {
                    let IpAddr::V4(address) = a.address else {
                        return None;
                    };
                    let network = match a.network {
                        Some(IpAddr::V4(n)) => n,
                        _ => address,
                    };
                    Some((address, a.prefix, network))
                })?;
            let peers: Vec<WgPeerConfig> = i
                .peers
                .iter()
                .filter(|p| !p.disabled)
                .map(|p| WgPeerConfig {
                    id: Some(p.id),
                    public_key: Key(p.public_key),
                    preshared_key: p.preshared_key.map(Key),
                    endpoint: p.endpoint_address.clone().zip(p.endpoint_port),
                    allowed: AddressList(p.allowed_address.clone()),
                    keepalive: p
                        .persistent_keepalive
                        .map(|d| u16::try_from(d.as_secs()).unwrap_or(u16::MAX)),
                })
                .collect();
            if peers.is_empty() {
                return None;
            }
            Some(WgConfig {
                interface: i.name,
                private_key: Key(i.private_key),
                listen_port: i.listen_port,
                address,
                prefix,
                network,
                mtu: i.mtu,
                peers,
                ports,
            })
        })
}

/// Keeps the tunnel in line with the router's configuration until it shuts down:
/// rebuilds it whenever `/interface/wireguard`, its peers, `/ip/address` or
/// `/ip/service` change (see [`config_from_state`]).
pub async fn follow(router: Router) {
    let mut changes = router.subscribe_wireguard();
    let stop = router.shutdown_token();
    // Only what the configuration asks for changes the tunnel: a tunnel configured
    // directly ([`configure`]) stays until the router's own configuration changes.
    let mut last = None;
    loop {
        let wanted = config_from_state(&router);
        if wanted != last {
            configure(&router, wanted.clone());
            last = wanted;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            r = changes.changed() => if r.is_err() { return },
        }
    }
}

/// Starts a new handshake with every peer now, as WireGuard does by itself when a
/// session expires (at the latest 180 s after it was made, then at the next keepalive):
/// what a test that restarts the gateway uses to not wait for that. Returns whether a
/// userspace tunnel runs.
pub fn rehandshake(router: &Router) -> bool {
    match &slot(router).running {
        Some(r) if r.external.is_none() => {
            r.ctl.rehandshake.notify_one();
            true
        }
        _ => false,
    }
}

/// The tunnel's peers and socket now (`None`: no tunnel).
pub fn status(router: &Router) -> Option<Status> {
    let slot = slot(router);
    let running = slot.running.as_ref()?;
    if let Some(ext) = &running.external {
        return Some(ext.status());
    }
    Some(
        running
            .ctl
            .status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone(),
    )
}

/// The NAT table changed: the tunnel serves the new set of dst-nat ports.
pub fn nat_changed(router: &Router) {
    if let Some(r) = &slot(router).running {
        r.ctl.nat_changed.notify_one();
    }
}

/// Stops the tunnel (the router shuts down).
pub(crate) fn stop(router: &Router) {
    if let Some(r) = slot(router).running.take() {
        r.token.cancel();
    }
}

/// The dst-nat rules served through the tunnel: those whose `in-interface` is the
/// WireGuard interface, or that name none, and whose `dst-address` (if any) is the
/// router's tunnel address.
fn forwards(router: &Router, config: &WgConfig) -> HashMap<u16, Forward> {
    let mut out = HashMap::new();
    let state = router.state();
    for item in &state.nat.items {
        if let Some(f) = crate::nat::forward_on(item, &config.interface, IpAddr::V4(config.address))
        {
            out.entry(f.port).or_insert(f);
        }
    }
    out
}

/// What a port of the tunnel's stack serves.
#[derive(Debug, Clone)]
enum Service {
    Api,
    ApiSsl,
    Ssh,
    Winbox,
    Forward(Forward),
}

fn service_for(
    port: u16,
    ports: &ServicePorts,
    forwards: &HashMap<u16, Forward>,
) -> Option<Service> {
    // dst-nat happens before the router's own services see a packet.
    if let Some(f) = forwards.get(&port) {
        return Some(Service::Forward(f.clone()));
    }
    match port {
        0 => None,
        p if p == ports.api => Some(Service::Api),
        p if p == ports.api_ssl => Some(Service::ApiSsl),
        p if p == ports.ssh => Some(Service::Ssh),
        p if p == ports.winbox => Some(Service::Winbox),
        _ => None,
    }
}

fn listening_ports(ports: &ServicePorts, forwards: &HashMap<u16, Forward>) -> Vec<u16> {
    let mut v = vec![ports.api, ports.api_ssl, ports.ssh, ports.winbox];
    v.extend(forwards.keys().copied());
    // 0: a disabled service.
    v.retain(|p| *p != 0);
    v.sort_unstable();
    v.dedup();
    v
}

/// Serves one connection that came through the tunnel.
async fn serve(
    service: Service,
    stream: WgStream,
    peer: SocketAddr,
    router: Router,
    services: Services,
    cut: CancellationToken,
) {
    match service {
        Service::Api => crate::api::connection(stream, peer, router, cut).await,
        Service::ApiSsl => {
            crate::api::tls_connection(stream, peer, router, services.tls.acceptor(), cut).await
        }
        Service::Ssh => crate::ssh::connection(stream, peer, router, services.ssh, cut).await,
        Service::Winbox => crate::winbox::connection(stream, peer, router, cut).await,
        Service::Forward(f) => {
            // `src-address=!net` matches everyone outside `net`.
            if f.sources.allows(peer.ip()) == f.negate_sources {
                return;
            }
            let mut stream = stream;
            tokio::select! {
                _ = cut.cancelled() => {}
                r = async {
                    let mut upstream = tokio::net::TcpStream::connect(f.to).await?;
                    tokio::io::copy_bidirectional(&mut stream, &mut upstream).await
                } => if let Err(e) = r {
                    tracing::debug!(error = %e, to = %f.to, "dst-nat forward through the tunnel ended");
                },
            }
        }
    }
}

struct Peer {
    tunn: Tunn,
    public: Key,
    id: Option<u32>,
    endpoint: Option<SocketAddr>,
    allowed: AddressList,
    keepalive: Option<u16>,
    /// When a handshake was last started after the previous attempt gave up.
    restarted: Option<Instant>,
}

/// The tunnel's UDP socket: tokio's half to wait for datagrams, and a clone of the
/// std socket to send with (tokio's `try_send_to` refuses until the reactor has seen
/// the socket writable, which would lose the first datagram of a new socket).
struct Udp {
    rx: UdpSocket,
    tx: std::net::UdpSocket,
}

impl Udp {
    fn bind_exact(ip: IpAddr, port: u16) -> std::io::Result<Udp> {
        let s = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
        s.set_nonblocking(true)?;
        let tx = s.try_clone()?;
        Ok(Udp {
            rx: UdpSocket::from_std(s)?,
            tx,
        })
    }

    /// `port`, or any free port if that one is taken.
    fn bind(ip: IpAddr, port: u16) -> std::io::Result<Udp> {
        let bind = |port| Udp::bind_exact(ip, port);
        match bind(port) {
            Ok(s) => Ok(s),
            Err(e) if port != 0 => {
                tracing::debug!(port, error = %e, "wireguard listen port taken; using any");
                bind(0)
            }
            Err(e) => Err(e),
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tx.local_addr()
    }

    fn try_send_to(&self, datagram: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        self.tx.send_to(datagram, to)
    }
}

fn send(socket: &Udp, to: Option<SocketAddr>, datagram: &[u8], offline: bool) {
    if offline {
        return;
    }
    if let Some(to) = to {
        let _ = socket.try_send_to(datagram, to);
    }
}

/// The driver: one task owns the UDP socket, the peers' `Tunn`s and the stack.
async fn drive(
    router: Router,
    services: Services,
    config: WgConfig,
    ctl: Arc<Ctl>,
    token: CancellationToken,
) {
    let secret = x25519::StaticSecret::from(config.private_key.0);
    let mut peers = Vec::new();
    for (i, p) in config.peers.iter().enumerate() {
        let endpoint = match &p.endpoint {
            Some((host, port)) => match tokio::net::lookup_host((host.as_str(), *port)).await {
                Ok(mut addrs) => addrs.next(),
                Err(e) => {
                    tracing::warn!(%host, error = %e, "wireguard peer endpoint does not resolve");
                    None
                }
            },
            None => None,
        };
        let index = u32::try_from(i).unwrap_or(0) + 1;
        peers.push(Peer {
            tunn: Tunn::new(
                secret.clone(),
                x25519::PublicKey::from(p.public_key.0),
                p.preshared_key.map(|k| k.0),
                p.keepalive.filter(|k| *k > 0),
                index,
                None,
            ),
            public: p.public_key,
            id: p.id,
            endpoint,
            allowed: p.allowed.clone(),
            keepalive: p.keepalive.filter(|k| *k > 0),
            restarted: None,
        });
    }
    // A tunnel being rebuilt may still hold the listen port for a moment.
    let mut bound = Udp::bind_exact(router.address(), config.listen_port);
    for _ in 0..25 {
        if bound.is_ok() || config.listen_port == 0 || token.is_cancelled() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        bound = Udp::bind_exact(router.address(), config.listen_port);
    }
    let bound = match bound {
        Ok(s) => Ok(s),
        Err(_) => Udp::bind(router.address(), config.listen_port),
    };
    let mut socket = match bound {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "wireguard cannot bind its udp socket");
            return;
        }
    };
    let mut forwards = forwards(&router, &config);
    let mut ports = config.ports;
    let shared = Arc::new(stack::Shared::new(
        config.address,
        config.prefix,
        config.network,
        usize::from(config.mtu),
        &listening_ports(&ports, &forwards),
    ));
    // Each dst-nat port's connections end when its rule goes.
    let mut forward_tokens: HashMap<u16, CancellationToken> = HashMap::new();
    let mut rx = vec![0u8; MAX_DATAGRAM];
    let mut out = vec![0u8; MAX_DATAGRAM];

    // The router initiates.
    for p in &mut peers {
        if let TunnResult::WriteToNetwork(d) = p.tunn.format_handshake_initiation(&mut out, false) {
            send(&socket, p.endpoint, d, router.faults().is_offline());
        }
    }
    let mut next_timer = Instant::now() + TIMER_TICK;
    let sleep = tokio::time::sleep(TIMER_TICK);
    tokio::pin!(sleep);
    loop {
        let now = Instant::now();
        let delay = shared.lock().poll_delay(now);
        let deadline = delay.map_or(next_timer, |d| (now + d).min(next_timer));
        sleep.as_mut().reset(deadline.into());
        let mut rebind = false;
        let mut nat = false;
        let mut rehandshake = false;
        tokio::select! {
            biased;
            _ = token.cancelled() => break,
            _ = ctl.rebind.notified() => rebind = true,
            _ = ctl.rehandshake.notified() => rehandshake = true,
            _ = ctl.nat_changed.notified() => nat = true,
            r = socket.rx.readable() => if let Err(e) = r {
                tracing::warn!(error = %e, "wireguard socket failed");
                break;
            },
            _ = shared.wake.notified() => {}
            _ = &mut sleep => {}
        }
        let offline = router.faults().is_offline();
        let now = Instant::now();
        if rebind {
            match Udp::bind(router.address(), 0) {
                Ok(s) => {
                    socket = s;
                    // The packet that makes the new mapping.
                    for p in &mut peers {
                        if let TunnResult::WriteToNetwork(d) = p.tunn.encapsulate(&[], &mut out) {
                            send(&socket, p.endpoint, d, offline);
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "wireguard cannot rebind its udp socket"),
            }
        }
        if rehandshake {
            for p in &mut peers {
                if let TunnResult::WriteToNetwork(d) =
                    p.tunn.format_handshake_initiation(&mut out, true)
                {
                    send(&socket, p.endpoint, d, offline);
                }
            }
        }
        if nat {
            let new = self::forwards(&router, &config);
            forward_tokens.retain(|port, t| {
                let keep = new.get(port) == forwards.get(port);
                if !keep {
                    t.cancel();
                }
                keep
            });
            let new_ports = ctl
                .ports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take()
                .unwrap_or(ports);
            if new != forwards || new_ports != ports {
                forwards = new;
                ports = new_ports;
                shared.lock().set_ports(&listening_ports(&ports, &forwards));
            }
        }
        for _ in 0..RECV_BATCH {
            let (len, from) = match socket.rx.try_recv_from(&mut rx) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => continue,
            };
            if offline {
                continue;
            }
            let Some(datagram) = rx.get(..len) else {
                continue;
            };
            on_datagram(&mut peers, from, datagram, &mut out, &socket, &shared);
        }
        if now >= next_timer {
            for p in &mut peers {
                match p.tunn.update_timers(&mut out) {
                    TunnResult::WriteToNetwork(d) => send(&socket, p.endpoint, d, offline),
                    TunnResult::Err(
                        boringtun::noise::errors::WireGuardError::ConnectionExpired,
                    ) => {
                        // The attempt gave up; a router with a keepalive tries again at
                        // its next keepalive (the keepalive is a packet to send).
                        let Some(k) = p.keepalive else { continue };
                        let due = p
                            .restarted
                            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(k.into()));
                        if due {
                            p.restarted = Some(now);
                            if let TunnResult::WriteToNetwork(d) =
                                p.tunn.format_handshake_initiation(&mut out, true)
                            {
                                send(&socket, p.endpoint, d, offline);
                            }
                        }
                    }
                    _ => {}
                }
            }
            shared.lock().reap(now);
            next_timer = now + TIMER_TICK;
            for p in &peers {
                if let Some(id) = p.id {
                    let (last, tx, rx, _, _) = p.tunn.stats();
                    router.set_peer_status(
                        id,
                        &crate::state::PeerStatus {
                            current_endpoint: p.endpoint,
                            last_handshake: last,
                            rx: rx as u64,
                            tx: tx as u64,
                        },
                    );
                }
            }
        }
        // Let the stack work, accept what it accepted, and encrypt what it emits.
        loop {
            let (ready, packets) = {
                let mut st = shared.lock();
                let ready = st.poll(now);
                let mut packets = Vec::new();
                while let Some(p) = st.device.pop_tx() {
                    packets.push(p);
                }
                (ready, packets)
            };
            for (handle, port, peer) in ready {
                let stream = WgStream {
                    shared: Arc::clone(&shared),
                    handle,
                    peer,
                };
                let Some(service) = service_for(port, &ports, &forwards) else {
                    continue;
                };
                let forward_token = match &service {
                    Service::Forward(_) => Some(
                        forward_tokens
                            .entry(port)
                            .or_insert_with(|| token.child_token())
                            .clone(),
                    ),
                    _ => None,
                };
                spawn_connection(
                    service,
                    stream,
                    peer,
                    router.clone(),
                    services.clone(),
                    forward_token.unwrap_or_else(|| token.clone()),
                );
            }
            if packets.is_empty() {
                break;
            }
            for packet in packets {
                let Some(dst) = packet
                    .get(16..20)
                    .and_then(|b| <[u8; 4]>::try_from(b).ok())
                    .map(Ipv4Addr::from)
                else {
                    continue;
                };
                let Some(p) = peers.iter_mut().find(|p| p.allowed.allows(IpAddr::V4(dst))) else {
                    continue;
                };
                if let TunnResult::WriteToNetwork(d) = p.tunn.encapsulate(&packet, &mut out) {
                    send(&socket, p.endpoint, d, offline);
                }
            }
        }
        let status = Status {
            local: socket.local_addr().ok(),
            peers: peers
                .iter()
                .map(|p| {
                    let (last, tx, rx, _, _) = p.tunn.stats();
                    PeerStatus {
                        public_key: p.public.to_base64(),
                        endpoint: p.endpoint,
                        last_handshake: last,
                        rx_bytes: rx as u64,
                        tx_bytes: tx as u64,
                    }
                })
                .collect(),
        };
        *ctl.status.lock().unwrap_or_else(|e| e.into_inner()) = status;
    }
    // Down: reset every connection and tell the peers' stacks so.
    let packets = {
        let mut st = shared.lock();
        st.abort_all();
        let _ = st.poll(Instant::now());
        let mut v = Vec::new();
        while let Some(p) = st.device.pop_tx() {
            v.push(p);
        }
        v
    };
    let offline = router.faults().is_offline();
    for packet in packets {
        let dst = packet
            .get(16..20)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(Ipv4Addr::from);
        if let Some(p) =
            dst.and_then(|d| peers.iter_mut().find(|p| p.allowed.allows(IpAddr::V4(d))))
            && let TunnResult::WriteToNetwork(d) = p.tunn.encapsulate(&packet, &mut out)
        {
            send(&socket, p.endpoint, d, offline);
        }
    }
    *ctl.status.lock().unwrap_or_else(|e| e.into_inner()) = Status::default();
}

/// The peer a datagram is for: by the receiver index of a response, a cookie or data
/// (each `Tunn` is made with its peer's index); an initiation is tried on each.
fn on_datagram(
    peers: &mut [Peer],
    from: SocketAddr,
    datagram: &[u8],
    out: &mut [u8],
    socket: &Udp,
    shared: &stack::Shared,
) {
    let (index, kind) = match Tunn::parse_incoming_packet(datagram) {
        Ok(Packet::HandshakeResponse(p)) => (Some(p.receiver_idx), 2),
        Ok(Packet::PacketCookieReply(p)) => (Some(p.receiver_idx), 3),
        Ok(Packet::PacketData(p)) => (Some(p.receiver_idx), 4),
        Ok(Packet::HandshakeInit(_)) => (None, 1),
        Err(_) => return,
    };
    let candidates: Vec<usize> = match index {
        Some(i) => usize::try_from((i >> 8).saturating_sub(1))
            .ok()
            .into_iter()
            .collect(),
        None => (0..peers.len()).collect(),
    };
    for i in candidates {
        let Some(p) = peers.get_mut(i) else { continue };
        // Whether the datagram proved to come from the peer (a cookie reply does not,
        // nor does the cookie a flood of initiations is answered with).
        let authenticated = match p.tunn.decapsulate(Some(from.ip()), datagram, out) {
            TunnResult::Err(_) => continue,
            TunnResult::Done => kind == 2 || kind == 4,
            TunnResult::WriteToNetwork(d) => {
                // To an initiation: a handshake response (type 2), or a cookie.
                let answered = kind != 1 || d.first() == Some(&2);
                let _ = socket.try_send_to(d, from);
                // Packets queued while there was no session go now.
                while let TunnResult::WriteToNetwork(d) = p.tunn.decapsulate(None, &[], out) {
                    let _ = socket.try_send_to(d, from);
                }
                answered && kind != 3
            }
            TunnResult::WriteToTunnelV4(packet, source) => {
                if p.allowed.allows(IpAddr::V4(source)) {
                    shared.lock().device.push_rx(packet);
                }
                true
            }
            TunnResult::WriteToTunnelV6(..) => true,
        };
        if authenticated {
            // WireGuard follows a peer to where its last authenticated datagram came from.
            p.endpoint = Some(from);
        }
        return;
    }
}

fn spawn_connection(
    service: Service,
    stream: WgStream,
    peer: SocketAddr,
    router: Router,
    services: Services,
    down: CancellationToken,
) {
    let offline = router.faults().connection_token();
    let cut = CancellationToken::new();
    let handler = serve(service, stream, peer, router, services, cut.clone());
    tokio::spawn(async move {
        tokio::pin!(handler);
        tokio::select! {
            _ = &mut handler => return,
            _ = down.cancelled() => {}
            _ = offline.cancelled() => {}
        }
        // Let the handler close its side (an SSH session sends its disconnect).
        cut.cancel();
        let _ = tokio::time::timeout(CLOSE_GRACE, handler).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::menu::Request;
    use crate::router::{Caller, RouterConfig};

    fn run(router: &Router, path: &str, attrs: &[(&str, &str)]) {
        let mut req = Request::new(path);
        for (k, v) in attrs {
            req = req.attr(k, v);
        }
        router.run(&Caller::system(), &req).unwrap();
    }

    #[test]
    fn keys_read_and_print_as_routeros_does() {
        // RFC 7748's Alice.
        let private = Key(hex::decode(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        )
        .unwrap()
        .try_into()
        .unwrap());
        assert_eq!(
            hex::encode(private.public().0),
            "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
        );
        let text = private.to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(Key::from_base64(&text), Some(private));
        assert_eq!(Key::from_base64("c2hvcnQ="), None);
        assert_eq!(format!("{private:?}"), "Key(..)");
        let (a, b) = generate_keypair();
        assert_eq!(Key::from_base64(&a).unwrap().public().to_base64(), b);
    }

    #[test]
    fn the_tunnel_is_what_the_menus_describe() {
        let router = Router::new(RouterConfig::new("r", "127.0.0.1".parse().unwrap(), "pw"));
        assert_eq!(config_from_state(&router), None);
        run(&router, "/interface/wireguard/add", &[("name", "postern")]);
        run(
            &router,
            "/ip/address/add",
            &[
                ("address", "100.64.0.7/32"),
                ("network", "100.64.0.1"),
                ("interface", "postern"),
            ],
        );
        assert_eq!(config_from_state(&router), None, "no peer yet");
        let gateway = Key::generate_private().public();
        run(
            &router,
            "/interface/wireguard/peers/add",
            &[
                ("interface", "postern"),
                ("public-key", &gateway.to_base64()),
                ("endpoint-address", "gw.example"),
                ("endpoint-port", "51820"),
                ("allowed-address", "100.64.0.1/32"),
                ("persistent-keepalive", "25s"),
            ],
        );
        let c = config_from_state(&router).unwrap();
        assert_eq!(c.interface, "postern");
        assert_eq!(c.address, Ipv4Addr::new(100, 64, 0, 7));
        assert_eq!(c.network, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(c.listen_port, 13231);
        assert_eq!(c.ports, ServicePorts::default());
        let p = &c.peers[0];
        assert_eq!(p.public_key, gateway);
        assert_eq!(p.endpoint, Some(("gw.example".to_string(), 51820)));
        assert_eq!(p.keepalive, Some(25));
        assert!(p.allowed.allows("100.64.0.1".parse().unwrap()));
        assert!(!p.allowed.allows("100.64.0.2".parse().unwrap()));

        // A disabled service is not served; a moved one is served on its new port.
        run(
            &router,
            "/ip/service/set",
            &[("numbers", "api"), ("disabled", "yes")],
        );
        run(
            &router,
            "/ip/service/set",
            &[("numbers", "ssh"), ("port", "2200")],
        );
        let c = config_from_state(&router).unwrap();
        assert_eq!((c.ports.api, c.ports.ssh), (0, 2200));
        let ports = listening_ports(&c.ports, &HashMap::new());
        assert_eq!(ports, vec![2200, 8291, 8729]);
        assert!(service_for(0, &c.ports, &HashMap::new()).is_none());
        assert!(matches!(
            service_for(2200, &c.ports, &HashMap::new()),
            Some(Service::Ssh)
        ));

        // Disabling the peer takes the tunnel down.
        run(
            &router,
            "/interface/wireguard/peers/set",
            &[("numbers", "*1"), ("disabled", "yes")],
        );
        assert_eq!(config_from_state(&router), None);
    }
}
