//! The operator's whole path, side by side in one run, in network namespaces (root):
//! the operator's host → the gateway's entry port (a real `postern server`) → Postern's
//! userspace WireGuard → a router behind an nftables NAT whose end of the tunnel is
//! Debian's `wireguard-go` on a TUN device (`postern sim --wireguard-external`, enrolled
//! by pasting the line into its console) → a sink or echo on the router's tunnel address,
//! or on a LAN device behind it (a transient forward).
//!
//! ```text
//!  operator 198.51.100.2 ─ hub ─┬─ server 203.0.113.2: postern server (entry ports, tunnel :51820)
//!                               │                      wireguard-go wgb<pid> (the baseline, :51821)
//!                               └─ 192.0.2.2 nat 10.1.0.1 ── 10.1.0.2 r (sim, wireguard-go) 192.168.88.1 ── lan 192.168.88.10
//! ```
//!
//! Every path starts at the same operator socket and ends at the same sink thread; only
//! the middle differs:
//!
//! - **postern**: the forward's entry port on the server: Postern's gateway terminates the
//!   operator's TCP and dials the router's tunnel address (boringtun + smoltcp).
//! - **wg-go + DNAT**: the baseline the issue names, the same hosts joined by
//!   `wireguard-go` at both ends and the kernel's TCP: a second `wireguard-go` in the
//!   server's namespace, a peer of the same router (the router initiates through its
//!   NAT, as with Postern), and an nftables DNAT + masquerade as its entry port, so one
//!   TCP connection runs end to end from the operator to the sink.
//! - **wg-go + proxy**: the same baseline, with a minimal userspace proxy as its entry
//!   port (two blocking threads per connection, 256 KiB reads, kernel TCP on both legs):
//!   it terminates the operator's TCP as Postern's gateway must.
//! - **direct** (latency only): no WireGuard at all, a DNAT on the server and a port
//!   forward on the router's NAT, over the same veths.
//!
//! Each forward's dst-nat port on the router (read from the router's own NAT table) is
//! served by the router's kernel, as a RouterOS router would: for the "router" target a
//! sink and an echo bound there; for the "lan" target an nftables dst-nat to the LAN
//! device, where the sink and echo listen (the sim's `wireguard-go` backend serves no
//! dst-nat itself).
//!
//! Rounds alternate the paths (the order turns each round); per round one stream of
//! `MIB` MiB per path and target, then `PINGS` 1-byte ping-pongs per path and target.
//! Ratios are per round, against the DNAT baseline. CPU time is counted per stream for
//! `postern server`, each `wireguard-go`, and this process (writer, sinks, proxy).
//!
//! `cargo bench -p postern-cli --bench entry_tunnel` (as root; env `ROUNDS` (5), `MIB`
//! (256), `PINGS` (2000 per round), `TARGETS` (`router,lan`)). A benchmark, not a test:
//! it asserts nothing about speed. Namespaces and processes go on drop, also on a panic.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[allow(dead_code)]
mod common;
#[path = "../tests/hosts/mod.rs"]
mod hosts;
#[path = "../tests/listening/mod.rs"]
mod listening;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hosts::Hosts;
use serde_json::{Value, json};

const SERVER: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
const OPERATOR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const NAT_WAN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);
const LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 88, 10);
/// The baseline gateway's tunnel address, inside the region's 100.64.0.0/10.
const BASE: Ipv4Addr = Ipv4Addr::new(100, 127, 255, 254);
const API_PORT: u16 = 8080;
const BASE_WG_PORT: u16 = 51821;
const SINK_PORT: u16 = 9;
const ECHO_PORT: u16 = 7;
const CHUNK: usize = 256 * 1024;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Path {
    Postern,
    Dnat,
    Proxy,
    Direct,
}

impl Path {
    fn name(self) -> &'static str {
        match self {
            Path::Postern => "postern",
            Path::Dnat => "wg-go + DNAT",
            Path::Proxy => "wg-go + proxy",
            Path::Direct => "direct (no WireGuard)",
        }
    }
    /// The server port of the baselines' entry for service `i`.
    fn base_port(self, i: usize) -> u16 {
        match self {
            Path::Dnat => 41_000 + i as u16,
            Path::Proxy => 42_000 + i as u16,
            Path::Direct => 43_000 + i as u16,
            Path::Postern => unreachable!(),
        }
    }
}

/// One forward: where it ends (`router` or `lan`), sink or echo.
struct Service {
    target: &'static str,
    echo: bool,
    /// The LAN port the forward names (also its key in the router's NAT table).
    dst_port: u16,
    /// The forward's entry port on the server.
    entry: u16,
    /// Its dst-nat port on the router's tunnel address.
    router_port: u16,
}

impl Service {
    fn port(&self, i: usize, path: Path) -> u16 {
        match path {
            Path::Postern => self.entry,
            p => p.base_port(i),
        }
    }
}

fn main() {
    if !hosts::can_run(&["ip", "nft", "wireguard-go", "wg", "ssh", "sshpass"]) {
        return;
    }
    // wireguard-go's control sockets are named by their devices, in one directory for
    // every namespace: this run's devices carry its pid.
    let rounds = env("ROUNDS", 5);
    let bytes = env("MIB", 256) << 20;
    let pings = env("PINGS", 2000);
    let targets: Vec<String> = std::env::var("TARGETS")
        .unwrap_or_else(|_| "router,lan".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    println!(
        "machine: {} cores, {}; commit {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        common::cpu_model(),
        commit()
    );
    println!("load average at start: {}", common::loadavg());
    println!("postern binary: {}", common::bin());

    let mut h = Hosts::new();
    for name in ["hub", "server", "operator", "nat", "r", "lan"] {
        h.host(name);
    }
    h.forwarding("hub");
    let (_, server_if) = h.link("hub", "203.0.113.1/24", "server", &format!("{SERVER}/24"));
    h.link(
        "hub",
        "198.51.100.1/24",
        "operator",
        &format!("{OPERATOR}/24"),
    );
    let (_, nat_wan) = h.link("hub", "192.0.2.1/30", "nat", &format!("{NAT_WAN}/30"));
    h.default_route("server", "203.0.113.1");
    h.default_route("operator", "198.51.100.1");
    h.default_route("nat", "192.0.2.1");
    h.nat("nat", &nat_wan);
    h.link("nat", "10.1.0.1/24", "r", &format!("{ROUTER}/24"));
    h.default_route("r", "10.1.0.1");
    h.link("r", "192.168.88.1/24", "lan", &format!("{LAN}/24"));
    h.default_route("lan", "192.168.88.1");
    h.forwarding("r");
    h.forwarding("server");

    // The server, and the router enrolled by pasting its line.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server_pid = start_server(&mut h, &data);
    let token = admin_token(&data);
    let (ssh_port, password) = start_sim(&mut h);
    let site = api(
        &h,
        &token,
        "POST",
        "/api/sites",
        Some(json!({ "name": "bench" })),
    );
    let router_id = site["router_id"].as_str().unwrap().to_owned();
    let line = site["enrollment"]["command"].as_str().unwrap().to_owned();
    let pasted = Instant::now();
    paste(&h, ssh_port, &password, &line);
    let paste_took = pasted.elapsed();
    let router = loop {
        let r = api(
            &h,
            &token,
            "GET",
            &format!("/api/routers/{router_id}"),
            None,
        );
        if r["status"] == "online" {
            break r;
        }
        assert!(
            pasted.elapsed() < Duration::from_secs(30),
            "not online: {r}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    println!(
        "\nthe router behind NAT (wireguard-go): paste returned after {:.0} ms, shown online {:.0} ms after the paste began",
        paste_took.as_secs_f64() * 1e3,
        pasted.elapsed().as_secs_f64() * 1e3
    );
    let tunnel_ip: Ipv4Addr = router["tunnel"]["address"]
        .as_str()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    println!(
        "router tunnel address {tunnel_ip}, gateway's {}",
        router["tunnel"]["gateway_address"]
    );

    // The forwards: per target, one to the sink and one to the echo.
    let mut services = Vec::new();
    for target in ["router", "lan"] {
        for echo in [false, true] {
            let dst_port = match (target, echo) {
                ("lan", false) => SINK_PORT,
                ("lan", true) => ECHO_PORT,
                (_, false) => SINK_PORT + 10,
                (_, true) => ECHO_PORT + 10,
            };
            let f = api(
                &h,
                &token,
                "POST",
                &format!("/api/routers/{router_id}/transient-forwarding?wait=true"),
                Some(json!({
                    "dst_address": LAN.to_string(),
                    "dst_port": dst_port,
                    "allow_from": OPERATOR.to_string(),
                    "expire_after_minutes": 120,
                })),
            );
            assert_eq!(f["status"], "active", "{f}");
            services.push(Service {
                target,
                echo,
                dst_port,
                entry: f["port"].as_u64().unwrap() as u16,
                router_port: 0,
            });
        }
    }
    // Their dst-nat ports, from the router's own NAT table (the API shows none).
    let rules = router_nat_rules(&h, tunnel_ip, &password);
    for s in &mut services {
        s.router_port = *rules
            .get(&s.dst_port)
            .unwrap_or_else(|| panic!("no dst-nat rule to port {}: {rules:?}", s.dst_port));
    }

    // What answers on the router: sinks on its own address, a kernel dst-nat to the LAN.
    let mut router_nat =
        String::from("table ip bench {\n chain pre { type nat hook prerouting priority dstnat;\n");
    for s in &services {
        if s.target == "router" {
            let l = bind_in(&h, "r", SocketAddr::from(([0, 0, 0, 0], s.router_port)));
            if s.echo { serve_echo(l) } else { serve_sink(l) }
        } else {
            router_nat.push_str(&format!(
                "  tcp dport {} dnat to {LAN}:{}\n",
                s.router_port, s.dst_port
            ));
        }
    }
    router_nat.push_str(" }\n}\n");
    nft(&h, "r", &router_nat);
    serve_sink(bind_in(&h, "lan", SocketAddr::from((LAN, SINK_PORT))));
    serve_echo(bind_in(&h, "lan", SocketAddr::from((LAN, ECHO_PORT))));

    // The baseline: wireguard-go in the server's namespace, a second peer of the router.
    let base_pid = start_baseline(&mut h, dir.path(), tunnel_ip);
    let router_wg_pid = pid_in(&h, "r", "wireguard-go");
    let mut server_nat =
        String::from("table ip bench {\n chain pre { type nat hook prerouting priority dstnat;\n");
    for (i, s) in services.iter().enumerate() {
        server_nat.push_str(&format!(
            "  tcp dport {} dnat to {tunnel_ip}:{}\n  tcp dport {} dnat to {NAT_WAN}:{}\n",
            Path::Dnat.base_port(i),
            s.router_port,
            Path::Direct.base_port(i),
            s.router_port
        ));
        let l = bind_in(
            &h,
            "server",
            SocketAddr::from((SERVER, Path::Proxy.base_port(i))),
        );
        serve_proxy(&h, l, SocketAddr::from((tunnel_ip, s.router_port)));
    }
    let wgb = base_device();
    server_nat.push_str(&format!(
        " }}\n chain post {{ type nat hook postrouting priority srcnat;\n  oifname \"{wgb}\" masquerade\n  oifname \"{server_if}\" ct status dnat masquerade\n }}\n}}\n"
    ));
    nft(&h, "server", &server_nat);
    // Direct: the router's NAT forwards the dst-nat ports to the router (only for this).
    let ports: Vec<String> = services.iter().map(|s| s.router_port.to_string()).collect();
    nft(
        &h,
        "nat",
        &format!(
            "table ip bench {{\n chain pre {{ type nat hook prerouting priority dstnat;\n  iifname \"{nat_wan}\" tcp dport {{ {} }} dnat to {ROUTER}\n }}\n}}\n",
            ports.join(", ")
        ),
    );
    h.exec(
        "nat",
        &[
            "nft",
            "insert",
            "rule",
            "inet",
            "postern_nat",
            "forward",
            "iifname",
            &nat_wan,
            "ct",
            "status",
            "dnat",
            "accept",
        ],
    );

    for s in &services {
        println!(
            "forward to {}:{} ({} {}): entry port {}, router port {}",
            LAN,
            s.dst_port,
            s.target,
            if s.echo { "echo" } else { "sink" },
            s.entry,
            s.router_port
        );
    }

    // Every path answers (the baseline's handshake is made by the router's first
    // packet), then a warm-up stream each.
    let paths = [Path::Postern, Path::Dnat, Path::Proxy];
    for (i, s) in services.iter().enumerate() {
        for p in [Path::Postern, Path::Dnat, Path::Proxy, Path::Direct] {
            let port = s.port(i, p);
            let ok = h.inside("operator", move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                loop {
                    match TcpStream::connect_timeout(
                        &SocketAddr::from((SERVER, port)),
                        Duration::from_secs(2),
                    ) {
                        Ok(c) => {
                            // The echo answers, or the sink counts 0.
                            let mut c = c;
                            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                            if c.write_all(b"x").is_ok()
                                && c.shutdown(Shutdown::Write).is_ok()
                                && c.read(&mut [0u8; 8]).is_ok_and(|n| n > 0)
                            {
                                return true;
                            }
                        }
                        Err(_) if Instant::now() > deadline => return false,
                        Err(_) => {}
                    }
                    if Instant::now() > deadline {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
            assert!(ok, "{} to {} does not answer", p.name(), s.target);
        }
    }
    let procs = Procs {
        postern: server_pid,
        router_wg: router_wg_pid,
        base_wg: base_pid,
    };
    let sinks: Vec<(usize, &Service)> = services
        .iter()
        .enumerate()
        .filter(|(_, s)| !s.echo && targets.iter().any(|t| t == s.target))
        .collect();
    let echoes: Vec<(usize, &Service)> = services
        .iter()
        .enumerate()
        .filter(|(_, s)| s.echo && targets.iter().any(|t| t == s.target))
        .collect();
    for &(i, s) in &sinks {
        for p in paths {
            stream(&h, s.port(i, p), 16 << 20);
        }
    }

    // The rounds.
    let mut mbps: HashMap<(&str, Path), Vec<f64>> = HashMap::new();
    let mut ratios: HashMap<(&str, Path), Vec<f64>> = HashMap::new();
    let mut cpu: HashMap<(&str, Path), [f64; 4]> = HashMap::new();
    let mut rtts: HashMap<(&str, Path), Vec<Duration>> = HashMap::new();
    let mut added: HashMap<(&str, Path), Vec<f64>> = HashMap::new();
    println!(
        "\n{rounds} rounds; per round one stream of {} MiB per path and target, then {pings} ping-pongs each:",
        bytes >> 20
    );
    for round in 0..rounds {
        for &(i, s) in &sinks {
            let mut got = HashMap::new();
            for k in 0..paths.len() {
                let p = paths[(k + round) % paths.len()];
                let before = procs.cpu();
                let m = stream(&h, s.port(i, p), bytes);
                let after = procs.cpu();
                let c = cpu.entry((s.target, p)).or_default();
                for j in 0..4 {
                    c[j] += after[j] - before[j];
                }
                got.insert(p, m);
                mbps.entry((s.target, p)).or_default().push(m);
            }
            for p in paths {
                ratios
                    .entry((s.target, p))
                    .or_default()
                    .push(got[&p] / got[&Path::Dnat]);
            }
            println!(
                "  round {round}, {}: postern {:.0} Mb/s, wg-go + DNAT {:.0}, wg-go + proxy {:.0}; postern / DNAT {:.2}, / proxy {:.2}",
                s.target,
                got[&Path::Postern],
                got[&Path::Dnat],
                got[&Path::Proxy],
                got[&Path::Postern] / got[&Path::Dnat],
                got[&Path::Postern] / got[&Path::Proxy],
            );
        }
        for &(i, s) in &echoes {
            let all = [Path::Direct, Path::Postern, Path::Dnat, Path::Proxy];
            let mut p50 = HashMap::new();
            for k in 0..all.len() {
                let p = all[(k + round) % all.len()];
                let mut t = ping_pong(&h, s.port(i, p), pings);
                p50.insert(p, percentile(&mut t, 0.5));
                rtts.entry((s.target, p)).or_default().extend(t);
            }
            for p in all {
                added
                    .entry((s.target, p))
                    .or_default()
                    .push(p50[&p] - p50[&Path::Direct]);
            }
            println!(
                "  round {round}, {} ping-pong p50: direct {:.1} µs, postern {:.1}, wg-go + DNAT {:.1}, wg-go + proxy {:.1}",
                s.target,
                p50[&Path::Direct],
                p50[&Path::Postern],
                p50[&Path::Dnat],
                p50[&Path::Proxy]
            );
        }
    }

    let gib = (bytes * rounds) as f64 / (1u64 << 30) as f64;
    for &(_, s) in &sinks {
        println!(
            "\none TCP stream to the {} target, {} MiB, median of {rounds} rounds (range):",
            s.target,
            bytes >> 20
        );
        for p in paths {
            let (med, lo, hi) = stats(mbps[&(s.target, p)].clone());
            let (r, rlo, rhi) = stats(ratios[&(s.target, p)].clone());
            let c = cpu[&(s.target, p)];
            println!(
                "  {:<15} {med:6.0} Mb/s ({lo:.0}–{hi:.0})  ÷ DNAT per round {r:.2} ({rlo:.2}–{rhi:.2})  CPU-s/GiB: postern server {:.2}, router wg-go {:.2}, baseline wg-go {:.2}, bench (writer, sink, proxy) {:.2}",
                p.name(),
                c[0] / gib,
                c[1] / gib,
                c[2] / gib,
                c[3] / gib,
            );
        }
        let pr = stats(
            mbps[&(s.target, Path::Postern)]
                .iter()
                .zip(&mbps[&(s.target, Path::Proxy)])
                .map(|(a, b)| a / b)
                .collect(),
        );
        println!(
            "  postern ÷ wg-go + proxy per round: {:.2} ({:.2}–{:.2})",
            pr.0, pr.1, pr.2
        );
    }
    for &(_, s) in &echoes {
        println!(
            "\n1-byte ping-pong to the {} target, {} round trips per path (all rounds):",
            s.target,
            pings * rounds
        );
        for p in [Path::Direct, Path::Postern, Path::Dnat, Path::Proxy] {
            let t = rtts.get_mut(&(s.target, p)).unwrap();
            let (p50, p90, p99) = (percentile(t, 0.5), percentile(t, 0.9), percentile(t, 0.99));
            let (a, alo, ahi) = stats(added[&(s.target, p)].clone());
            println!(
                "  {:<22} p50 {p50:7.1} µs  p90 {p90:7.1}  p99 {p99:7.1}  added over direct, p50 per round: {a:+.1} µs ({alo:+.1} to {ahi:+.1})",
                p.name()
            );
        }
    }
    println!("\nload average at end: {}", common::loadavg());
    drop(h);
}

/// The prefix of the sim router's device (`postern sim --wireguard-device-prefix`).
fn sim_prefix() -> String {
    format!("wgr{}", std::process::id())
}

/// The sim router's device.
fn sim_device() -> String {
    format!("{}1", sim_prefix())
}

fn commit() -> String {
    Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Median, minimum and maximum.
fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], v[0], v[v.len() - 1])
}

fn percentile(times: &mut [Duration], p: f64) -> f64 {
    times.sort();
    let i = ((times.len() as f64 - 1.0) * p).round() as usize;
    times[i].as_secs_f64() * 1e6
}

/// The processes whose CPU time each stream is charged: ticks in seconds.
struct Procs {
    postern: u32,
    router_wg: u32,
    base_wg: u32,
}

impl Procs {
    fn cpu(&self) -> [f64; 4] {
        let s = |pid: u32| common::cpu_ns(pid) as f64 / 1e9;
        [
            s(self.postern),
            s(self.router_wg),
            s(self.base_wg),
            s(std::process::id()),
        ]
    }
}

/// One stream of `bytes` from the operator's host to `SERVER:port`, whose far end is a
/// sink that answers with the count; Mb/s.
fn stream(h: &Hosts, port: u16, bytes: usize) -> f64 {
    h.inside("operator", move || {
        let mut conn = TcpStream::connect((SERVER, port)).unwrap();
        conn.set_write_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let chunk = vec![7u8; CHUNK];
        let start = Instant::now();
        let mut sent = 0;
        while sent < bytes {
            conn.write_all(&chunk)
                .unwrap_or_else(|e| panic!("stream to port {port}: {e}"));
            sent += CHUNK;
        }
        conn.shutdown(Shutdown::Write).unwrap();
        let mut count = [0u8; 8];
        conn.read_exact(&mut count)
            .unwrap_or_else(|e| panic!("the sink's count through port {port}: {e}"));
        assert_eq!(u64::from_le_bytes(count), sent as u64);
        sent as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e6
    })
}

fn ping_pong(h: &Hosts, port: u16, n: usize) -> Vec<Duration> {
    h.inside("operator", move || {
        let mut conn = TcpStream::connect((SERVER, port)).unwrap();
        conn.set_nodelay(true).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut byte = [1u8];
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = Instant::now();
            conn.write_all(&byte).unwrap();
            conn.read_exact(&mut byte)
                .unwrap_or_else(|e| panic!("echo through port {port}: {e}"));
            times.push(t.elapsed());
        }
        times
    })
}

/// A listener bound inside host `name`'s namespace.
fn bind_in(h: &Hosts, name: &str, at: SocketAddr) -> TcpListener {
    h.inside(name, move || {
        TcpListener::bind(at).unwrap_or_else(|e| panic!("bind {at}: {e}"))
    })
}

/// The sink: reads to EOF, then answers with the byte count (8 bytes) and closes.
fn serve_sink(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; CHUNK];
                let mut total = 0u64;
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => total += n as u64,
                    }
                }
                let _ = conn.write_all(&total.to_le_bytes());
            });
        }
    });
}

fn serve_echo(listener: TcpListener) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            conn.set_nodelay(true).unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
}

/// The baseline's userspace entry port: per connection, a kernel TCP connection to
/// `upstream` made from the server's namespace, and a blocking thread each way.
fn serve_proxy(h: &Hosts, listener: TcpListener, upstream: SocketAddr) {
    let path = format!("/var/run/netns/{}", h.ns("server"));
    std::thread::spawn(move || {
        // This thread, and the threads it starts, dial from the server's namespace.
        let ns = std::fs::File::open(&path).unwrap();
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns");
        for conn in listener.incoming() {
            let Ok(client) = conn else { return };
            let Ok(up) = TcpStream::connect_timeout(&upstream, Duration::from_secs(5)) else {
                continue;
            };
            let _ = client.set_nodelay(true);
            let _ = up.set_nodelay(true);
            let (c2, u2) = (client.try_clone().unwrap(), up.try_clone().unwrap());
            std::thread::spawn(move || copy(client, up));
            std::thread::spawn(move || copy(u2, c2));
        }
    });
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn nft(h: &Hosts, name: &str, rules: &str) {
    let mut child = h
        .command(name, "nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(
        child.wait().unwrap().success(),
        "nft refused on {name}:\n{rules}"
    );
}

/// The id of the process called `comm` in host `name`'s namespace.
fn pid_in(h: &Hosts, name: &str, comm: &str) -> u32 {
    let out = Command::new("ip")
        .args(["netns", "pids", &h.ns(name)])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .unwrap_or_else(|| panic!("no {comm} in {name}"))
}

/// `postern server` in the server's namespace (fixed ports there, lab mode); its pid.
fn start_server(h: &mut Hosts, data: &std::path::Path) -> u32 {
    let config = data.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "0.0.0.0:{API_PORT}"
lab_mode = true
public_url = "http://{SERVER}:{API_PORT}"
[[regions]]
name = "local"
entry_point = "{SERVER}"
port_min = 40000
port_max = 40999
tunnel_listen = "{SERVER}:51820"
"#
        ),
    )
    .unwrap();
    let mut child = h
        .command("server", &common::bin())
        .args(["server", "--log-format", "json", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data)
        .env_remove("POSTERN_LISTEN")
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    listening::server_address(child.stderr.take().unwrap());
    // `ip netns exec` execs the program: the child's pid is the server's.
    let pid = child.id();
    h.keep(child);
    pid
}

fn admin_token(data: &std::path::Path) -> String {
    let out = Command::new(common::bin())
        .args([
            "admin",
            "create-token",
            "--role",
            "admin",
            "--name",
            "bench",
            "--data-dir",
        ])
        .arg(data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// `postern sim --wireguard-external` on the router's host: its console's SSH port and
/// admin password.
fn start_sim(h: &mut Hosts) -> (u16, String) {
    let mut child = h
        .command("r", &common::bin())
        .args([
            "sim",
            "--routers",
            "1",
            "--base-address",
            &ROUTER.to_string(),
            "--routeros-version",
            "7.21.4",
            "--wireguard-external",
            "--wireguard-device-prefix",
            &sim_prefix(),
        ])
        .env("POSTERN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    h.keep(child);
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    (
        v["ssh_port"].as_u64().unwrap() as u16,
        v["admin_password"].as_str().unwrap().to_owned(),
    )
}

/// Pastes the line into the router's console over SSH from its own host.
fn paste(h: &Hosts, ssh_port: u16, password: &str, line: &str) {
    let out = h.try_exec(
        "r",
        &[
            "sshpass",
            "-p",
            password,
            "ssh",
            "-p",
            &ssh_port.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            &format!("admin@{ROUTER}"),
            line,
        ],
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("enrolled"),
        "the console: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An API call from the operator's host: the JSON answer, which must be a success.
fn api(h: &Hosts, token: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let (token, method, path) = (token.to_owned(), method.to_owned(), path.to_owned());
    h.inside("operator", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut req = reqwest::Client::new()
                .request(
                    method.parse().unwrap(),
                    format!("http://{SERVER}:{API_PORT}{path}"),
                )
                .bearer_auth(token)
                .timeout(Duration::from_secs(60));
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let resp = req.send().await.expect("the API answers");
            let status = resp.status();
            let text = resp.text().await.unwrap();
            assert!(status.is_success(), "{method} {path}: {status} {text}");
            serde_json::from_str(&text).unwrap_or(Value::Null)
        })
    })
}

/// The router's dst-nat rules, as its own API shows them (from its host, as admin):
/// `to-ports` → `dst-port`.
fn router_nat_rules(h: &Hosts, tunnel_ip: Ipv4Addr, password: &str) -> HashMap<u16, u16> {
    let password = password.to_owned();
    h.inside("r", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = routeros::Client::connect(&routeros::ClientConfig::new(
                format!("{tunnel_ip}:8728"),
                "admin",
                password,
            ))
            .await
            .expect("the router's API, from its own host");
            routeros::api::nat::print(&client, &routeros::api::Filter::all())
                .await
                .unwrap()
                .into_iter()
                .filter(|r| r.action.as_deref() == Some("dst-nat"))
                .filter_map(|r| {
                    Some((
                        r.to_ports.as_deref()?.parse().ok()?,
                        r.dst_port.as_deref()?.parse().ok()?,
                    ))
                })
                .collect()
        })
    })
}

/// The baseline gateway's device, `wgb<pid>` (its control socket is named by it, the
/// same in every namespace).
fn base_device() -> String {
    format!("wgb{}", std::process::id())
}

/// The baseline gateway: `wireguard-go` on `wgb<pid>` in the server's namespace with address
/// BASE, the router as its peer (no endpoint: the router initiates through its NAT, as
/// it does with Postern), and the router told of it as a second peer. Its pid.
fn start_baseline(h: &mut Hosts, dir: &std::path::Path, tunnel_ip: Ipv4Addr) -> u32 {
    let wgb = base_device();
    let child = h
        .command("server", "wireguard-go")
        .args(["-f", &wgb])
        .env("LOG_LEVEL", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    h.keep(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !h.try_exec("server", &["wg", "show", &wgb]).status.success() {
        assert!(Instant::now() < deadline, "wireguard-go made no wgb");
        std::thread::sleep(Duration::from_millis(20));
    }
    let key = String::from_utf8(h.exec("server", &["wg", "genkey"]).stdout).unwrap();
    let key_file = dir.join("wgb.key");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&key_file)
            .unwrap();
        f.write_all(key.trim().as_bytes()).unwrap();
    }
    let mut pubkey = Command::new("wg")
        .arg("pubkey")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    pubkey
        .stdin
        .take()
        .unwrap()
        .write_all(key.as_bytes())
        .unwrap();
    let base_public = String::from_utf8(pubkey.wait_with_output().unwrap().stdout)
        .unwrap()
        .trim()
        .to_owned();
    let router_public = String::from_utf8(
        h.exec("r", &["wg", "show", &sim_device(), "public-key"])
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    h.exec(
        "server",
        &[
            "wg",
            "set",
            &wgb,
            "private-key",
            key_file.to_str().unwrap(),
            "listen-port",
            &BASE_WG_PORT.to_string(),
            "peer",
            &router_public,
            "allowed-ips",
            &format!("{tunnel_ip}/32"),
        ],
    );
    h.exec(
        "server",
        &[
            "ip",
            "addr",
            "add",
            &format!("{BASE}/32"),
            "peer",
            &format!("{tunnel_ip}/32"),
            "dev",
            &wgb,
        ],
    );
    h.exec("server", &["ip", "link", "set", &wgb, "up"]);
    h.exec(
        "r",
        &[
            "wg",
            "set",
            &sim_device(),
            "peer",
            &base_public,
            "endpoint",
            &format!("{SERVER}:{BASE_WG_PORT}"),
            "allowed-ips",
            &format!("{BASE}/32"),
            "persistent-keepalive",
            "25",
        ],
    );
    h.exec(
        "r",
        &[
            "ip",
            "route",
            "add",
            &format!("{BASE}/32"),
            "dev",
            &sim_device(),
        ],
    );
    pid
}
