//! Starting routers: one ([`RouterHandle::start`]) or a fleet on consecutive 127.x
//! addresses ([`Fleet::start`]), each with its API, API-SSL, SSH and WinBox-port
//! stand-in listening, its scheduler running, and a handle to read its state, move its
//! clock, inject faults and shut it down cleanly.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use rand::Rng;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Error;
use crate::clock::Clock;
use crate::faults::Faults;
use crate::router::{Router, RouterConfig};
use crate::tls::TlsIdentity;

/// The ports a router listens on (0: any free port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub api: u16,
    pub api_tls: u16,
    pub winbox: u16,
    pub ssh: u16,
}

impl Default for Ports {
    /// RouterOS's ports, except SSH on 2222 so the sim runs unprivileged.
    fn default() -> Self {
        Ports {
            api: 8728,
            api_tls: 8729,
            winbox: 8291,
            ssh: 2222,
        }
    }
}

impl Ports {
    /// Every service on a free port chosen by the system: what tests use.
    pub fn ephemeral() -> Self {
        Ports {
            api: 0,
            api_tls: 0,
            winbox: 0,
            ssh: 0,
        }
    }
}

/// How to start one router.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    pub identity: String,
    pub address: IpAddr,
    pub ports: Ports,
    /// `None`: a random 20-character password is generated (and reported).
    pub admin_password: Option<String>,
    pub version: String,
    pub board_name: String,
    pub clock: Clock,
    /// See [`RouterConfig::empty_reply`].
    pub empty_reply: Option<bool>,
    /// Behind NAT: no TCP listener on `address` (the handle's addresses then have port
    /// 0); reachable only through the WireGuard tunnel it builds ([`crate::wg`]).
    pub behind_nat: bool,
    /// Build the tunnel with Debian's `wireguard-go` instead of the userspace stack
    /// (root only; see [`crate::wg::external`]).
    pub wireguard_external: Option<crate::wg::external::Options>,
    /// See [`RouterConfig::serial_number`] (`None`: a CHR, no `/system/routerboard`).
    pub serial_number: Option<String>,
    /// See [`RouterConfig::trust_pem`]: the CA certificates `/tool/fetch` trusts.
    pub trust_pem: Option<std::path::PathBuf>,
}

impl RouterOptions {
    pub fn new(identity: &str, address: IpAddr) -> Self {
        RouterOptions {
            identity: identity.to_string(),
            address,
            ports: Ports::ephemeral(),
            admin_password: None,
            version: "7.18.2".into(),
            board_name: "CHR".into(),
            clock: Clock::real(),
            empty_reply: None,
            behind_nat: false,
            wireguard_external: None,
            serial_number: None,
            trust_pem: None,
        }
    }
}

/// A random password from the OS-seeded CSPRNG: 20 letters and digits.
pub fn generate_password() -> String {
    const CHARS: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::rng();
    (0..20)
        .map(|_| {
            let i = rng.random_range(0..CHARS.len());
            char::from(CHARS.get(i).copied().unwrap_or(b'x'))
        })
        .collect()
}

/// A running router.
pub struct RouterHandle {
    router: Router,
    pub api_addr: SocketAddr,
    pub api_tls_addr: SocketAddr,
    pub winbox_addr: SocketAddr,
    pub ssh_addr: SocketAddr,
    pub admin_password: String,
    /// Whether the admin password was generated (rather than given).
    pub password_generated: bool,
    pub tls: TlsIdentity,
    /// The SSH host key's fingerprint, `SHA256:…`.
    pub ssh_fingerprint: String,
    /// Whether the router opened no TCP listener (see [`RouterOptions::behind_nat`]).
    pub behind_nat: bool,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for RouterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterHandle")
            .field("router", &self.router)
            .field("api_addr", &self.api_addr)
            .finish()
    }
}

async fn bind(addr: IpAddr, port: u16) -> Result<TcpListener, Error> {
    let at = SocketAddr::new(addr, port);
    TcpListener::bind(at)
        .await
        .map_err(|source| Error::Bind { addr: at, source })
}

impl RouterHandle {
    /// Binds every service and starts the router.
    pub async fn start(options: RouterOptions) -> Result<RouterHandle, Error> {
        let (admin_password, password_generated) = match options.admin_password {
            Some(p) => (p, false),
            None => (generate_password(), true),
        };
        let mut config = RouterConfig::new(&options.identity, options.address, &admin_password);
        config.version = options.version;
        config.board_name = options.board_name;
        config.clock = options.clock;
        config.empty_reply = options.empty_reply;
        config.behind_nat = options.behind_nat;
        config.serial_number = options.serial_number;
        config.trust_pem = options.trust_pem;
        let router = Router::new(config);

        let tls = TlsIdentity::generate(&options.identity, options.address)?;
        let host_key = crate::ssh::generate_host_key();
        let ssh_fingerprint = crate::ssh::fingerprint(&host_key);
        let ssh_config = crate::ssh::config(host_key);
        crate::wg::set_services(
            &router,
            crate::wg::Services {
                tls: tls.clone(),
                ssh: ssh_config.clone(),
            },
        );
        if let Some(external) = options.wireguard_external {
            crate::wg::use_external(&router, external);
        }

        let stop = CancellationToken::new();
        let on_stop = |t: &CancellationToken| {
            let t = t.clone();
            async move { t.cancelled().await }
        };
        let mut tasks = vec![
            tokio::spawn(crate::scheduler::run(router.clone())),
            tokio::spawn(crate::wg::follow(router.clone())),
        ];
        let unbound = SocketAddr::new(options.address, 0);
        let (mut api_addr, mut api_tls_addr, mut winbox_addr, mut ssh_addr) =
            (unbound, unbound, unbound, unbound);
        if !options.behind_nat {
            let api = bind(options.address, options.ports.api).await?;
            let api_tls = bind(options.address, options.ports.api_tls).await?;
            let winbox = bind(options.address, options.ports.winbox).await?;
            let ssh = bind(options.address, options.ports.ssh).await?;
            let local = |l: &TcpListener| l.local_addr().map_err(Error::Io);
            (api_addr, api_tls_addr, winbox_addr, ssh_addr) = (
                local(&api)?,
                local(&api_tls)?,
                local(&winbox)?,
                local(&ssh)?,
            );
            tasks.extend([
                tokio::spawn(crate::api::run(api, router.clone(), on_stop(&stop))),
                tokio::spawn(crate::api::run_tls(
                    api_tls,
                    router.clone(),
                    tls.clone(),
                    on_stop(&stop),
                )),
                tokio::spawn(crate::winbox::run(winbox, router.clone(), on_stop(&stop))),
                tokio::spawn(crate::ssh::run_with_config(
                    ssh,
                    router.clone(),
                    ssh_config,
                    on_stop(&stop),
                )),
            ]);
            // `/ip/service` shows the ports the services really listen on (behind NAT:
            // RouterOS's defaults, which the tunnel serves).
            let mut state = router.state();
            for (name, addr) in [
                ("api", api_addr),
                ("api-ssl", api_tls_addr),
                ("winbox", winbox_addr),
                ("ssh", ssh_addr),
            ] {
                if let Some(s) = state
                    .services
                    .items
                    .iter_mut()
                    .find(|i| i.get("name") == Some(name))
                {
                    s.set("port", addr.port().to_string());
                }
            }
        }
        Ok(RouterHandle {
            router,
            api_addr,
            api_tls_addr,
            winbox_addr,
            ssh_addr,
            admin_password,
            password_generated,
            tls,
            ssh_fingerprint,
            behind_nat: options.behind_nat,
            stop,
            tasks,
        })
    }

    /// The router: its state ([`Router::state`]), clock, login, …
    pub fn router(&self) -> &Router {
        &self.router
    }

    pub fn faults(&self) -> &Faults {
        self.router.faults()
    }

    pub fn clock(&self) -> &Clock {
        self.router.clock()
    }

    pub fn address(&self) -> IpAddr {
        self.router.address()
    }

    pub fn identity(&self) -> String {
        self.router.identity()
    }

    /// Builds (or rebuilds, or with `None` takes down) the router's WireGuard tunnel
    /// directly, until the router's own configuration (`/interface/wireguard`, peers,
    /// `/ip/address`) changes: see [`crate::wg::configure`]. A router follows its own
    /// configuration by itself ([`crate::wg::follow`]).
    pub fn set_wireguard(&self, config: Option<crate::wg::WgConfig>) {
        crate::wg::configure(&self.router, config);
    }

    /// The tunnel's peers and socket now (`None`: no tunnel).
    pub fn wireguard_status(&self) -> Option<crate::wg::Status> {
        crate::wg::status(&self.router)
    }

    /// A NAT mapping change: the tunnel's UDP source port changes now (see
    /// [`crate::wg::rebind_udp`]). Returns whether a tunnel runs.
    pub fn rebind_udp(&self) -> bool {
        crate::wg::rebind_udp(&self.router)
    }

    /// Starts a new WireGuard handshake now (see [`crate::wg::rehandshake`]).
    pub fn rehandshake(&self) -> bool {
        crate::wg::rehandshake(&self.router)
    }

    /// Runs the scheduler entries that are due now (after moving a manual clock).
    pub fn run_scheduler(&self) -> usize {
        crate::scheduler::tick(&self.router)
    }

    /// Stops every service, waits for their connections to drain, stops dst-nat
    /// forwards and the scheduler.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.router.shutdown();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Options for every router of a fleet.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub ports: Ports,
    /// One password for every `admin`; `None`: one generated per router.
    pub admin_password: Option<String>,
    pub version: String,
    pub clock: Clock,
    pub empty_reply: Option<bool>,
    /// Every router behind NAT (see [`RouterOptions::behind_nat`]).
    pub behind_nat: bool,
    /// `Some(prefix)`: every router builds its tunnel with Debian's `wireguard-go` (root
    /// only), router `i` (from 1) on TUN device `<prefix><i>`, its key file in the
    /// temporary directory.
    pub wireguard_external: Option<String>,
    /// See [`RouterOptions::trust_pem`].
    pub trust_pem: Option<std::path::PathBuf>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            ports: Ports::default(),
            admin_password: None,
            version: "7.18.2".into(),
            clock: Clock::real(),
            empty_reply: None,
            behind_nat: false,
            wireguard_external: None,
            trust_pem: None,
        }
    }
}

/// `base` plus `i`, carrying into higher octets; `None` past 127.255.255.255 or outside
/// 127/8 (the fleet only lives on loopback).
pub fn nth_address(base: Ipv4Addr, i: u32) -> Option<Ipv4Addr> {
    let a = u32::from(base).checked_add(i)?;
    let ip = Ipv4Addr::from(a);
    // On loopback (tests, the demo) a fleet stays inside 127.0.0.0/8; on a host's own
    // addresses (a router in a network namespace) it only may not run off the end.
    (ip.is_loopback() || !base.is_loopback()).then_some(ip)
}

/// Several routers, `sim-1`, `sim-2`, … on consecutive addresses.
#[derive(Debug)]
pub struct Fleet {
    pub routers: Vec<RouterHandle>,
}

impl Fleet {
    /// Starts `n` routers from `base` (127.0.1.1, 127.0.1.2, …); returns once all
    /// listen.
    pub async fn start(n: usize, base: Ipv4Addr, options: FleetOptions) -> Result<Fleet, Error> {
        let mut routers = Vec::with_capacity(n);
        for i in 0..n {
            let addr = u32::try_from(i)
                .ok()
                .and_then(|i| nth_address(base, i))
                .ok_or(Error::AddressRange { base, count: n })?;
            let mut o = RouterOptions::new(&format!("sim-{}", i + 1), IpAddr::V4(addr));
            o.ports = options.ports;
            o.admin_password = options.admin_password.clone();
            o.version = options.version.clone();
            o.clock = options.clock.clone();
            o.empty_reply = options.empty_reply;
            o.behind_nat = options.behind_nat;
            if let Some(prefix) = &options.wireguard_external {
                o.wireguard_external = Some(crate::wg::external::Options {
                    device: format!("{prefix}{}", i + 1),
                    dir: std::env::temp_dir(),
                });
            }
            o.trust_pem = options.trust_pem.clone();
            match RouterHandle::start(o).await {
                Ok(r) => routers.push(r),
                Err(e) => {
                    for r in routers {
                        r.shutdown().await;
                    }
                    return Err(e);
                }
            }
        }
        Ok(Fleet { routers })
    }

    pub fn get(&self, i: usize) -> Option<&RouterHandle> {
        self.routers.get(i)
    }

    pub async fn shutdown(self) {
        for r in self.routers {
            r.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let b: Ipv4Addr = "127.0.1.1".parse().unwrap();
        assert_eq!(nth_address(b, 2), Some("127.0.1.3".parse().unwrap()));
        assert_eq!(nth_address(b, 255), Some("127.0.2.0".parse().unwrap()));
        assert_eq!(nth_address("127.255.255.255".parse().unwrap(), 1), None);
        // A fleet on a host's own addresses (a router in a network namespace).
        assert_eq!(
            nth_address("10.0.0.1".parse().unwrap(), 1),
            Some("10.0.0.2".parse().unwrap())
        );
        assert_eq!(nth_address("255.255.255.255".parse().unwrap(), 1), None);
    }

    #[test]
    fn passwords() {
        let a = generate_password();
        assert_eq!(a.len(), 20);
        assert_ne!(a, generate_password());
    }
}
