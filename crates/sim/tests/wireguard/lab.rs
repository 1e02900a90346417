//! The gateway's end of the tunnel made by others: a network namespace joined to ours by
//! a veth pair, with Debian's `wireguard-go` on a TUN device inside, configured with
//! `wg` and `ip` as Postern's gateway holds a router (it only responds; the router's
//! tunnel address /32 as allowed-ips). The sim router runs in the test's own namespace on
//! our side of the veth pair. Everything is removed on drop, even when a test fails.

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The gateway's WireGuard port inside the namespace.
pub const GATEWAY_PORT: u16 = 51820;

/// Whether this process may make namespaces and has wireguard-go; if not, says why the
/// test is skipped.
pub fn can_run() -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: network namespaces and TUN devices need root (CI runs this as root)");
        return false;
    }
    for tool in ["ip", "wg", "wireguard-go"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            eprintln!(
                "SKIPPED: {tool} is missing (apt-get install iproute2 wireguard-go wireguard-tools)"
            );
            return false;
        }
    }
    true
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) -> Output {
    run(Command::new("ip").args(args))
}

pub struct Lab {
    pub ns: String,
    host_veth: String,
    /// Our side of the veth pair: the sim router's address.
    pub host_ip: Ipv4Addr,
    /// The gateway's side, inside the namespace.
    pub gateway_ip: Ipv4Addr,
    pub wg_if: String,
    wireguard: Option<Child>,
    dir: PathBuf,
    /// The gateway's public key, made by `wg genkey` inside the lab.
    pub gateway_public: String,
    /// Extra devices made in our own namespace (the external backend's), deleted on drop.
    pub cleanup_links: Vec<String>,
}

impl Lab {
    /// A namespace with a veth pair on a random /30 of 198.18.0.0/15.
    pub fn new() -> Lab {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let seed = pid.wrapping_mul(2_654_435_761) ^ n.wrapping_mul(40_503) ^ nanos;
        let block = seed % (1 << 13);
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + block * 4;
        let tag = format!("{:x}{n}", pid & 0xffff);
        let dir = std::env::temp_dir().join(format!("postern-sim-wg-{pid}-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let lab = Lab {
            ns: format!("ps-wg-{pid}-{n}"),
            host_veth: format!("pswh{tag}"),
            host_ip: Ipv4Addr::from(base + 1),
            gateway_ip: Ipv4Addr::from(base + 2),
            wg_if: format!("pswg{tag}"),
            wireguard: None,
            dir,
            gateway_public: String::new(),
            cleanup_links: Vec::new(),
        };
        let gw_veth = format!("pswt{tag}");
        ip(&["netns", "add", &lab.ns]);
        ip(&[
            "link",
            "add",
            &lab.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &gw_veth,
        ]);
        ip(&["link", "set", &gw_veth, "netns", &lab.ns]);
        ip(&[
            "addr",
            "add",
            &format!("{}/30", lab.host_ip),
            "dev",
            &lab.host_veth,
        ]);
        ip(&["link", "set", &lab.host_veth, "up"]);
        lab.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", lab.gateway_ip),
            "dev",
            &gw_veth,
        ]);
        lab.exec(&["ip", "link", "set", &gw_veth, "up"]);
        lab.exec(&["ip", "link", "set", "lo", "up"]);
        lab
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args))
    }

    /// Starts the gateway: `wireguard-go` at `gateway_addr` (with `prefix`) that admits
    /// the router's key at `router_addr`/32, with no endpoint (it only responds).
    pub fn start_gateway(
        &mut self,
        gateway_addr: &str,
        router_public: &str,
        router_addr: Ipv4Addr,
    ) {
        let key_file = self.dir.join("gateway.key");
        std::fs::write(&key_file, self.exec(&["wg", "genkey"]).stdout).unwrap();
        let public = run(Command::new("wg")
            .arg("pubkey")
            .stdin(std::fs::File::open(&key_file).unwrap()));
        self.gateway_public = String::from_utf8(public.stdout).unwrap().trim().to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns, "wireguard-go", "-f", &self.wg_if])
            .env("LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wireguard-go starts");
        self.wireguard = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Command::new("ip")
            .args(["netns", "exec", &self.ns, "wg", "show", &self.wg_if])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(Instant::now() < deadline, "wireguard-go did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.exec(&["ip", "addr", "add", gateway_addr, "dev", &self.wg_if]);
        self.exec(&["ip", "link", "set", &self.wg_if, "up"]);
        self.exec(&[
            "wg",
            "set",
            &self.wg_if,
            "private-key",
            key_file.to_str().unwrap(),
            "listen-port",
            &GATEWAY_PORT.to_string(),
            "peer",
            router_public,
            "allowed-ips",
            &format!("{router_addr}/32"),
        ]);
    }

    /// The router's endpoint as the gateway sees it now.
    pub fn router_endpoint(&self) -> Option<SocketAddr> {
        let out = self.exec(&["wg", "show", &self.wg_if, "endpoints"]).stdout;
        String::from_utf8(out)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .and_then(|e| e.parse().ok())
    }

    /// Seconds since the epoch of the gateway's last handshake with the router (0: none).
    pub fn latest_handshake(&self) -> u64 {
        let out = self
            .exec(&["wg", "show", &self.wg_if, "latest-handshakes"])
            .stdout;
        String::from_utf8(out)
            .unwrap()
            .split_whitespace()
            .nth(1)
            .and_then(|e| e.parse().ok())
            .unwrap_or(0)
    }

    /// Opens a TCP connection from inside the namespace (the gateway's side).
    pub async fn connect(&self, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let path = format!("/var/run/netns/{}", self.ns);
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A thread of its own enters the namespace, connects, and ends.
        std::thread::spawn(move || {
            let r = (|| {
                let ns = std::fs::File::open(&path)?;
                rustix::thread::move_into_link_name_space(
                    ns.as_fd(),
                    Some(rustix::thread::LinkNameSpaceType::Network),
                )?;
                std::net::TcpStream::connect_timeout(&to, Duration::from_secs(10))
            })();
            let _ = tx.send(r);
        });
        let std = rx.await.unwrap()?;
        std.set_nonblocking(true)?;
        tokio::net::TcpStream::from_std(std)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.wireguard.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let quiet = |args: &[&str]| {
            let _ = Command::new("ip")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        quiet(&["netns", "del", &self.ns]);
        quiet(&["link", "del", &self.host_veth]);
        for l in &self.cleanup_links {
            quiet(&["link", "del", l]);
        }
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.wg_if));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
