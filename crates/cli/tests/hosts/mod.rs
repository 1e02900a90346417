//! Hosts for multi-host tests: network namespaces joined by veth pairs, with routes,
//! forwarding and Debian's nftables for a NAT that masquerades its LAN and drops every
//! connection from outside. Each namespace, and every process started in one, is removed
//! on drop, even when a test fails.
//!
//! Names carry this process's id, so parallel tests and suites never collide; addresses
//! live inside the namespaces only (no link touches the test's own namespace), so they
//! may repeat between tests.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Whether this process may make namespaces and has the tools; if not, says why the
/// test is skipped (CI runs the suite as root, with the tools installed by `.ci/run`).
pub fn can_run(tools: &[&str]) -> bool {
    if !rustix::process::geteuid().is_root() {
        eprintln!("SKIPPED: network namespaces need root (CI runs this suite as root)");
        return false;
    }
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(found, "{tool} is missing (.ci/run installs it)");
    }
    true
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out
}

/// A set of hosts. Hosts are named by the test (`"server"`, `"nat1"`…); each is a
/// namespace `pe<pid>-<n>-<name>`.
pub struct Hosts {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<Child>,
    links: u32,
}

impl Hosts {
    pub fn new() -> Hosts {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Hosts {
            prefix: format!("pe{}-{n}", std::process::id()),
            namespaces: Vec::new(),
            children: Vec::new(),
            links: 0,
        }
    }

    /// The namespace of host `name`.
    pub fn ns(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// Makes host `name`, with its loopback up.
    pub fn host(&mut self, name: &str) {
        let ns = self.ns(name);
        run(Command::new("ip").args(["netns", "add", &ns]));
        self.namespaces.push(ns);
        self.exec(name, &["ip", "link", "set", "lo", "up"]);
    }

    /// Joins hosts `a` and `b` by a veth pair with the given addresses (CIDR form);
    /// returns the interface names on `a` and on `b`.
    pub fn link(&mut self, a: &str, a_addr: &str, b: &str, b_addr: &str) -> (String, String) {
        self.links += 1;
        // Interface names: at most 15 bytes, unique in each namespace.
        let (ia, ib) = (format!("v{}a", self.links), format!("v{}b", self.links));
        run(Command::new("ip").args([
            "link",
            "add",
            &ia,
            "netns",
            &self.ns(a),
            "type",
            "veth",
            "peer",
            "name",
            &ib,
            "netns",
            &self.ns(b),
        ]));
        self.exec(a, &["ip", "addr", "add", a_addr, "dev", &ia]);
        self.exec(a, &["ip", "link", "set", &ia, "up"]);
        self.exec(b, &["ip", "addr", "add", b_addr, "dev", &ib]);
        self.exec(b, &["ip", "link", "set", &ib, "up"]);
        (ia, ib)
    }

    /// Host `name`'s default route through `via`.
    pub fn default_route(&self, name: &str, via: &str) {
        self.exec(name, &["ip", "route", "add", "default", "via", via]);
    }

    /// A route on host `name` to `net` through `via`.
    pub fn route(&self, name: &str, net: &str, via: &str) {
        self.exec(name, &["ip", "route", "add", net, "via", via]);
    }

    /// Host `name` forwards packets between its interfaces.
    pub fn forwarding(&self, name: &str) {
        self.exec(name, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    }

    /// Host `name` is a NAT: what leaves by `wan` from its LAN is masqueraded, and from
    /// `wan` only replies come in (to it or through it); nothing can open a connection
    /// or send a first datagram from outside.
    pub fn nat(&self, name: &str, wan: &str) {
        self.forwarding(name);
        let rules = format!(
            "table inet postern_nat {{
  chain postrouting {{ type nat hook postrouting priority srcnat; oifname \"{wan}\" masquerade; }}
  chain forward {{ type filter hook forward priority filter; policy accept;
    iifname \"{wan}\" ct state established,related accept
    iifname \"{wan}\" drop
  }}
  chain input {{ type filter hook input priority filter; policy accept;
    iifname \"{wan}\" ct state established,related accept
    iifname \"{wan}\" drop
  }}
}}
"
        );
        self.nft(name, &rules);
    }

    /// Loads nftables rules (`nft -f` syntax) on host `name`.
    pub fn nft(&self, name: &str, rules: &str) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(name), "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("nft starts");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft refused: {rules}");
    }

    /// Runs a command on host `name` and insists it succeeds.
    pub fn exec(&self, name: &str, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns(name)])
            .args(args))
    }

    /// Runs a command on host `name`, whatever it returns.
    pub fn try_exec(&self, name: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(name)])
            .args(args)
            .output()
            .unwrap()
    }

    /// A command to run on host `name` (add arguments, then `spawn` it with
    /// [`Hosts::keep`] so it is killed on drop).
    pub fn command(&self, name: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(name), program]);
        cmd
    }

    /// Keeps a started process, killed when the hosts go.
    pub fn keep(&mut self, child: Child) -> usize {
        self.children.push(child);
        self.children.len() - 1
    }

    /// A kept process, to kill or wait on.
    pub fn child(&mut self, i: usize) -> &mut Child {
        &mut self.children[i]
    }

    /// Runs `make` on a thread that entered host `name`'s namespace (sockets it makes
    /// stay in that namespace).
    pub fn inside<T: Send + 'static>(
        &self,
        name: &str,
        make: impl FnOnce() -> T + Send + 'static,
    ) -> T {
        let path = format!("/var/run/netns/{}", self.ns(name));
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

    /// Whether host `name` can open a TCP connection to `to` within `timeout`.
    pub fn can_connect(&self, name: &str, to: SocketAddr, timeout: Duration) -> bool {
        self.inside(name, move || {
            std::net::TcpStream::connect_timeout(&to, timeout).is_ok()
        })
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in &self.namespaces {
            // Processes still inside (a sim's children) die with their namespace's
            // last reference; the veths go with it.
            let _ = Command::new("ip")
                .args(["netns", "pids", ns])
                .output()
                .map(|o| {
                    for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                        let _ = Command::new("kill").args(["-9", pid]).status();
                    }
                });
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        remove_dead_wireguard_sockets();
    }
}

/// wireguard-go's control sockets, one per device in one directory for every namespace,
/// outlive a `kill -9`: those no process answers on any longer go.
fn remove_dead_wireguard_sockets() {
    let Ok(entries) = std::fs::read_dir("/var/run/wireguard") else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "sock")
            && std::os::unix::net::UnixStream::connect(&path).is_err()
        {
            let _ = std::fs::remove_file(&path);
        }
    }
}
