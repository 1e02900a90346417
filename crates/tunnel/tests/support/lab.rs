//! A router's end of the tunnel made by others: a network namespace joined to ours by a
//! veth pair, with Debian's `wireguard-go` on a TUN device inside, configured with `wg`
//! and `ip` the way Postern's enrolment script configures a RouterOS router (the
//! gateway as its one peer, the gateway's tunnel address /32 as allowed-ips, a persistent
//! keepalive of 25 s). Everything is removed on drop, even when a test fails.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The port RouterOS gives a new WireGuard interface.
pub const ROUTER_LISTEN_PORT: u16 = 13231;

/// Whether this process may make namespaces; if not, says why the test is skipped.
pub fn can_run() -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: network namespaces need root (CI runs this suite as root)");
        return false;
    }
    for tool in ["ip", "wg", "wireguard-go"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "{tool} is missing: apt-get install iproute2 wireguard-go wireguard-tools (.ci/run does)"
        );
    }
    true
}

pub struct Lab {
    pub ns: String,
    host_veth: String,
    /// Our side of the veth pair, in the test's own namespace.
    pub host_ip: Ipv4Addr,
    /// The router's side, inside the namespace.
    pub router_ip: Ipv4Addr,
    pub wg_if: String,
    wireguard: Option<Child>,
    /// The baseline's second namespace and processes, when made.
    extra_ns: Vec<String>,
    extra_children: Vec<Child>,
    tag: String,
    dir: PathBuf,
    /// The router's public key, made by `wg genkey` inside the lab.
    pub router_public: String,
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

impl Lab {
    /// A namespace with a veth pair on a random /30 of 198.18.0.0/15 (the benchmarking
    /// range), so that parallel tests and other suites do not collide.
    pub fn new() -> Lab {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let seed = pid.wrapping_mul(2_654_435_761) ^ n.wrapping_mul(40_503) ^ nanos;
        let block = seed % (1 << 13); // 8192 /30 blocks in 198.18.0.0/15
        let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + block * 4;
        let tag = format!("{:x}{n}", pid & 0xffff);
        let dir = std::env::temp_dir().join(format!("postern-tunnel-lab-{pid}-{n}"));
        std::fs::create_dir_all(&dir).unwrap();
        let lab = Lab {
            ns: format!("pt-tun-{pid}-{n}"),
            host_veth: format!("ptth{tag}"),
            host_ip: Ipv4Addr::from(base + 1),
            router_ip: Ipv4Addr::from(base + 2),
            wg_if: format!("ptwg{tag}"),
            wireguard: None,
            extra_ns: Vec::new(),
            extra_children: Vec::new(),
            tag: tag.clone(),
            dir,
            router_public: String::new(),
        };
        let router_veth = format!("pttr{tag}");
        ip(&["netns", "add", &lab.ns]);
        ip(&[
            "link",
            "add",
            &lab.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &router_veth,
        ]);
        ip(&["link", "set", &router_veth, "netns", &lab.ns]);
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
            &format!("{}/30", lab.router_ip),
            "dev",
            &router_veth,
        ]);
        lab.exec(&["ip", "link", "set", &router_veth, "up"]);
        lab.exec(&["ip", "link", "set", "lo", "up"]);
        lab
    }

    /// Runs a command inside the namespace and insists it succeeds.
    pub fn exec(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .args(args))
    }

    /// Starts `wireguard-go` in the namespace and configures it as the enrolment script
    /// configures a router: its own key, the gateway as peer at `gateway_endpoint`,
    /// allowed-ips the gateway's tunnel address /32, keepalive 25 s, and the router's
    /// tunnel address on the interface.
    pub fn start_router(
        &mut self,
        gateway_public: &str,
        gateway_endpoint: SocketAddr,
        router_addr: &str,
        gateway_addr: Ipv4Addr,
    ) {
        let key_file = self.dir.join("router.key");
        let key = self.exec(&["wg", "genkey"]).stdout;
        std::fs::write(&key_file, &key).unwrap();
        let public = run(Command::new("wg")
            .arg("pubkey")
            .stdin(std::fs::File::open(&key_file).unwrap()));
        self.router_public = String::from_utf8(public.stdout).unwrap().trim().to_string();

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
        self.exec(&["ip", "addr", "add", router_addr, "dev", &self.wg_if]);
        self.exec(&["ip", "link", "set", &self.wg_if, "up"]);
        self.exec(&[
            "wg",
            "set",
            &self.wg_if,
            "private-key",
            key_file.to_str().unwrap(),
            "listen-port",
            &ROUTER_LISTEN_PORT.to_string(),
            "peer",
            gateway_public,
            "endpoint",
            &gateway_endpoint.to_string(),
            "allowed-ips",
            &format!("{gateway_addr}/32"),
            "persistent-keepalive",
            "25",
        ]);
    }

    /// The baseline: a second namespace joined to the router's by its own veth pair, with
    /// `wireguard-go` as the gateway's end too, at tunnel address `baseline_addr`, which
    /// the router admits as a second peer. Returns the namespace's name.
    pub fn add_baseline_gateway(
        &mut self,
        baseline_addr: Ipv4Addr,
        router_addr: Ipv4Addr,
    ) -> String {
        let ns = format!("{}-g", self.ns);
        let tag = self.tag.clone();
        let (gw_veth, router_veth, wg_if) = (
            format!("ptbg{tag}"),
            format!("ptbr{tag}"),
            format!("ptwb{tag}"),
        );
        ip(&["netns", "add", &ns]);
        self.extra_ns.push(ns.clone());
        let in_ns = |args: &[&str]| run(Command::new("ip").args(["netns", "exec", &ns]).args(args));
        // 10.255.x/30 inside two private namespaces: nothing else sees these addresses.
        ip(&[
            "link",
            "add",
            &gw_veth,
            "netns",
            &ns,
            "type",
            "veth",
            "peer",
            "name",
            &router_veth,
            "netns",
            &self.ns,
        ]);
        in_ns(&["ip", "addr", "add", "10.255.0.1/30", "dev", &gw_veth]);
        in_ns(&["ip", "link", "set", &gw_veth, "up"]);
        in_ns(&["ip", "link", "set", "lo", "up"]);
        self.exec(&["ip", "addr", "add", "10.255.0.2/30", "dev", &router_veth]);
        self.exec(&["ip", "link", "set", &router_veth, "up"]);

        let key_file = self.dir.join("baseline.key");
        std::fs::write(&key_file, in_ns(&["wg", "genkey"]).stdout).unwrap();
        let public = run(Command::new("wg")
            .arg("pubkey")
            .stdin(std::fs::File::open(&key_file).unwrap()));
        let public = String::from_utf8(public.stdout).unwrap().trim().to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, "wireguard-go", "-f", &wg_if])
            .env("LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wireguard-go starts");
        self.extra_children.push(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !Command::new("ip")
            .args(["netns", "exec", &ns, "wg", "show", &wg_if])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(Instant::now() < deadline, "wireguard-go did not come up");
            std::thread::sleep(Duration::from_millis(20));
        }
        let router_public = self.router_public.clone();
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{baseline_addr}/10"),
            "dev",
            &wg_if,
        ]);
        in_ns(&["ip", "link", "set", &wg_if, "up"]);
        in_ns(&[
            "wg",
            "set",
            &wg_if,
            "private-key",
            key_file.to_str().unwrap(),
            "peer",
            &router_public,
            "endpoint",
            &format!("10.255.0.2:{ROUTER_LISTEN_PORT}"),
            "allowed-ips",
            &format!("{router_addr}/32"),
            "persistent-keepalive",
            "25",
        ]);
        self.exec(&[
            "wg",
            "set",
            &self.wg_if,
            "peer",
            &public,
            "allowed-ips",
            &format!("{baseline_addr}/32"),
        ]);
        ns
    }

    /// Runs `make` on a thread that entered namespace `ns`.
    pub fn inside_ns<T: Send + 'static>(ns: &str, make: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{ns}");
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            make()
        })
        .join()
        .unwrap()
    }

    /// Moves the router's WireGuard socket to another port: what a NAT remapping looks
    /// like from the gateway.
    pub fn change_listen_port(&self, port: u16) {
        self.exec(&["wg", "set", &self.wg_if, "listen-port", &port.to_string()]);
    }

    /// Binds a TCP listener inside the namespace (a thread enters it, binds, and leaves
    /// the socket to whoever uses it).
    pub fn listen_tcp(&self, address: SocketAddr) -> std::net::TcpListener {
        self.inside(move || {
            let listener = std::net::TcpListener::bind(address).expect("bind inside the namespace");
            listener.set_nonblocking(true).unwrap();
            listener
        })
    }

    /// A UDP socket inside the namespace: datagrams from it to the gateway's tunnel
    /// address are traffic the router sends, as a router's own would be.
    pub fn udp_socket(&self) -> std::net::UdpSocket {
        self.inside(|| std::net::UdpSocket::bind("0.0.0.0:0").expect("bind inside the namespace"))
    }

    /// Runs `make` on a thread that entered the namespace; sockets it makes stay there.
    fn inside<T: Send + 'static>(&self, make: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            make()
        })
        .join()
        .unwrap()
    }

    /// A command left running inside the namespace (killed on drop of the `Child`'s guard).
    pub fn spawn(&self, args: &[&str]) -> ChildGuard {
        ChildGuard(
            Command::new("ip")
                .args(["netns", "exec", &self.ns])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut child in self
            .wireguard
            .take()
            .into_iter()
            .chain(self.extra_children.drain(..))
        {
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
        for ns in &self.extra_ns {
            quiet(&["netns", "del", ns]);
        }
        let _ = std::fs::remove_file(format!("/var/run/wireguard/ptwb{}.sock", self.tag));
        quiet(&["link", "del", &self.host_veth]);
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{}.sock", self.wg_if));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
