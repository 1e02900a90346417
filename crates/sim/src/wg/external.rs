//! The other backend: the router's tunnel made by Debian's `wireguard-go` on a TUN
//! device in the sim's own network namespace, configured with `wg` and `ip` from the
//! same [`WgConfig`], with the router's ordinary TCP listeners (API, API-SSL, SSH,
//! WinBox) bound on the tunnel address. It needs root (a TUN device and `ip`); tests
//! that use it run the sim in a namespace of their own.
//!
//! What it runs, for interface `wgX`:
//!
//! ```text
//! wireguard-go -f wgX
//! wg set wgX private-key FILE listen-port P peer KEY endpoint H:P allowed-ips A persistent-keepalive K
//! ip addr add ADDRESS/32 peer NETWORK dev wgX
//! ip link set wgX up
//! ```
//!
//! dst-nat rules are not forwarded from the tunnel address in this backend.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{PeerStatus, Status, WgConfig};
use crate::router::Router;

/// How the external backend is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// The TUN device's name (at most 15 bytes).
    pub device: String,
    /// Where the private key file is written (mode 0600) while the tunnel runs.
    pub dir: PathBuf,
}

/// Why the external backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    #[error("{command}: {reason}")]
    Command { command: String, reason: String },
    #[error("wireguard-go did not create {0}")]
    NoDevice(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A running `wireguard-go` and the listeners on the tunnel address. Dropping it stops
/// both and deletes the device.
pub struct Running {
    device: String,
    /// The tunnel address and the other end, for the packet a rebind sends.
    address: std::net::Ipv4Addr,
    network: std::net::Ipv4Addr,
    child: Mutex<Option<Child>>,
    key_file: PathBuf,
    stop: CancellationToken,
}

fn run(args: &[&str]) -> Result<String, ExternalError> {
    let (program, rest) = args.split_first().ok_or_else(|| ExternalError::Command {
        command: String::new(),
        reason: "empty command".into(),
    })?;
    let out = Command::new(program).args(rest).output()?;
    if !out.status.success() {
        return Err(ExternalError::Command {
            command: args.join(" "),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Starts `wireguard-go` for `config`, then binds the router's services on the tunnel
/// address.
pub fn start(
    router: &Router,
    config: &WgConfig,
    options: &Options,
    services: &super::Services,
) -> Result<Running, ExternalError> {
    let device = options.device.clone();
    let child = Command::new("wireguard-go")
        .args(["-f", &device])
        .env("LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let running = Running {
        device: device.clone(),
        address: config.address,
        network: config.network,
        child: Mutex::new(Some(child)),
        key_file: options.dir.join(format!("{device}.key")),
        stop: router.shutdown_token().child_token(),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while run(&["wg", "show", &device]).is_err() {
        if Instant::now() > deadline {
            return Err(ExternalError::NoDevice(device));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    write_key(&running.key_file, &config.private_key.to_base64())?;
    let mut args: Vec<String> = vec![
        "wg".into(),
        "set".into(),
        device.clone(),
        "private-key".into(),
        running.key_file.display().to_string(),
    ];
    if config.listen_port != 0 {
        args.extend(["listen-port".into(), config.listen_port.to_string()]);
    }
    for p in &config.peers {
        args.extend(["peer".into(), p.public_key.to_base64()]);
        if let Some((host, port)) = &p.endpoint {
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host.clone()
            };
            args.extend(["endpoint".into(), format!("{host}:{port}")]);
        }
        let allowed: Vec<String> = p
            .allowed
            .0
            .iter()
            .map(|c| format!("{}/{}", c.addr, c.prefix))
            .collect();
        if !allowed.is_empty() {
            args.extend(["allowed-ips".into(), allowed.join(",")]);
        }
        if let Some(k) = p.keepalive {
            args.extend(["persistent-keepalive".into(), k.to_string()]);
        }
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&refs)?;
    run(&[
        "ip",
        "addr",
        "add",
        &format!("{}/32", config.address),
        "peer",
        &config.network.to_string(),
        "dev",
        &device,
    ])?;
    run(&["ip", "link", "set", &device, "up"])?;

    // The router's ordinary listeners, on the tunnel address.
    let ip = IpAddr::V4(config.address);
    let bind = |port: u16| -> Result<TcpListener, ExternalError> {
        let l = std::net::TcpListener::bind(SocketAddr::new(ip, port))?;
        l.set_nonblocking(true)?;
        Ok(TcpListener::from_std(l)?)
    };
    let stop = running.stop.clone();
    let on_stop = move || {
        let t = stop.clone();
        async move { t.cancelled().await }
    };
    let ports = config.ports;
    tokio::spawn(crate::api::run(bind(ports.api)?, router.clone(), on_stop()));
    tokio::spawn(crate::winbox::run(
        bind(ports.winbox)?,
        router.clone(),
        on_stop(),
    ));
    tokio::spawn(crate::api::run_tls(
        bind(ports.api_ssl)?,
        router.clone(),
        services.tls.clone(),
        on_stop(),
    ));
    tokio::spawn(crate::ssh::run_with_config(
        bind(ports.ssh)?,
        router.clone(),
        services.ssh.clone(),
        on_stop(),
    ));
    Ok(running)
}

fn write_key(path: &std::path::Path, key: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(key.as_bytes())
}

impl Running {
    /// Moves `wireguard-go`'s socket to another port (a NAT mapping change), and sends a
    /// datagram into the tunnel, the packet that makes the new mapping.
    pub fn rebind(&self) -> bool {
        let port = 20_000 + rand::random::<u16>() % 40_000;
        let moved = run(&["wg", "set", &self.device, "listen-port", &port.to_string()]).is_ok();
        // A packet into the tunnel, so the next datagram (from the new port) goes now.
        if let Ok(s) = std::net::UdpSocket::bind((self.address, 0)) {
            let _ = s.send_to(b"rebind", (self.network, 9));
        }
        moved
    }

    /// What `wg show DEVICE dump` says.
    pub fn status(&self) -> Status {
        let Ok(dump) = run(&["wg", "show", &self.device, "dump"]) else {
            return Status::default();
        };
        let mut lines = dump.lines();
        // The interface: private key, public key, listen port, fwmark.
        let local = lines
            .next()
            .and_then(|l| l.split('\t').nth(2))
            .and_then(|p| p.parse::<u16>().ok())
            .map(|p| SocketAddr::from(([0, 0, 0, 0], p)));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let peers = lines
            .filter_map(|l| {
                // public key, preshared key, endpoint, allowed ips, latest handshake,
                // rx, tx, keepalive.
                let f: Vec<&str> = l.split('\t').collect();
                let handshake: u64 = f.get(4)?.parse().ok()?;
                Some(PeerStatus {
                    public_key: f.first()?.to_string(),
                    endpoint: f.get(2)?.parse().ok(),
                    last_handshake: (handshake > 0)
                        .then(|| Duration::from_secs(now.saturating_sub(handshake))),
                    rx_bytes: f.get(5)?.parse().ok()?,
                    tx_bytes: f.get(6)?.parse().ok()?,
                })
            })
            .collect();
        Status { local, peers }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.device])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.device));
        let _ = std::fs::remove_file(&self.key_file);
    }
}
