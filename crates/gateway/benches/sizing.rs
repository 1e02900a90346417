//! Issue 15's sizing, measured: a gateway node's resident memory per enrolled router.
//!
//! For each N (`POSTERN_SIZING_PEERS`, default `1000,10000`) a fresh node runs in a
//! child process (this binary re-executed with `node-child`, so its memory is its own),
//! with one region whose prefix holds every router. The parent, as a control-plane
//! server does, admits N routers with `Down::UpsertPeer` over a control session; then N
//! boringtun initiators in the parent (one per router, as the routers' WireGuard would)
//! handshake with it on loopback, each followed by its keepalive. The child's RSS
//! (`VmRSS` in `/proc/<pid>/status`) is read empty, after the admissions and after the handshakes.
//!
//! Run: `cargo bench -p postern-gateway --bench sizing`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use control::msg::{Down, PROTOCOL, PeerSpec, Up};
use domain::{RegionId, RouterId};
use postern_gateway::{Node, NodeConfig, PortRange, RegionConfig, Udp};
use tokio::sync::mpsc;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("node-child") {
        node_child(&args[2]);
        return;
    }
    let sizes: Vec<usize> = std::env::var("POSTERN_SIZING_PEERS")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    println!(
        "machine: {} cores, {}; load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model(),
        load()
    );
    println!(
        "| routers | node empty | after UpsertPeer | KiB per router admitted | handshakes done (s) | after handshakes | KiB per router with a session |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for n in sizes {
        run(n);
    }
    println!("load average at end: {}", load());
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Resident memory of `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// The node: reads commands on stdin, one a line: `peer <base64 key>` admits a router
/// (by `UpsertPeer` on its control session), `rss` prints the resident KiB once every
/// peer sent so far is admitted. Prints the tunnel's UDP address first.
fn node_child(key: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let region = RegionId::new();
        let socket = tunnel::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let udp = socket.local_addr().unwrap();
        let mut config = NodeConfig::new(
            "gw-sizing",
            vec![RegionConfig {
                id: region,
                name: "eu".into(),
                private_key: tunnel::PrivateKey::from_base64(key).unwrap(),
                gateway_address: GATEWAY,
                prefix: "100.64.0.0/16".parse().unwrap(),
                udp: Udp::Socket(socket),
                endpoint: udp.to_string(),
                entry_bind: "127.0.0.1".parse().unwrap(),
                ports: PortRange::new(20000, 29999).unwrap(),
            }],
        );
        config.status_every = Duration::from_secs(3600);
        let node = Node::start(config).await.unwrap();
        let (down, down_rx) = mpsc::channel(1024);
        let (up_tx, mut up) = mpsc::channel(1024);
        tokio::spawn(node.session(down_rx, up_tx));
        down.send(Down::Hello {
            protocol: PROTOCOL,
            server: "sizing".into(),
        })
        .await
        .unwrap();
        tokio::spawn(async move {
            while let Some(frame) = up.recv().await {
                if let Up::Refused { error } = frame {
                    eprintln!("refused: {error}");
                }
            }
        });
        println!("{udp}");
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                if lines_tx.send(line.unwrap()).is_err() {
                    return;
                }
            }
        });
        let mut admitted = 0u32;
        while let Some(line) = lines.recv().await {
            if let Some(key) = line.strip_prefix("peer ") {
                let address = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 10)) + admitted);
                admitted += 1;
                down.send(Down::UpsertPeer(PeerSpec {
                    router: RouterId::new(),
                    region,
                    public_key: key.to_owned(),
                    address,
                    endpoint: None,
                }))
                .await
                .unwrap();
            } else if line == "rss" {
                // Every UpsertPeer applied (they are applied in order).
                while node.figures().regions[0].stats.peers < admitted as usize {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                let f = node.figures();
                println!(
                    "{} {} {}",
                    rss_kib(std::process::id()),
                    f.regions[0].stats.peers,
                    f.regions[0].peers_up
                );
            }
        }
    });
}

fn run(n: usize) {
    let gateway_key = tunnel::PrivateKey::generate().unwrap();
    let gateway_public = x25519::PublicKey::from(decode(&gateway_key.public_key().to_base64()));
    let keys: Vec<tunnel::PrivateKey> = (0..n)
        .map(|_| tunnel::PrivateKey::generate().unwrap())
        .collect();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["node-child", &gateway_key.to_base64()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap());
    let mut read_line = || {
        let mut line = String::new();
        from_child.read_line(&mut line).unwrap();
        line.trim().to_owned()
    };
    let gateway: SocketAddr = read_line().parse().unwrap();
    let mut measure = |to_child: &mut std::process::ChildStdin| -> (u64, usize, usize) {
        // Settle: let the node's tasks go quiet before reading.
        std::thread::sleep(Duration::from_millis(500));
        writeln!(to_child, "rss").unwrap();
        let line = read_line();
        let mut parts = line.split_whitespace().map(|v| v.parse::<u64>().unwrap());
        (
            parts.next().unwrap(),
            parts.next().unwrap() as usize,
            parts.next().unwrap() as usize,
        )
    };
    let (empty, _, _) = measure(&mut to_child);
    let mut list = String::new();
    for k in &keys {
        list.push_str("peer ");
        list.push_str(&k.public_key().to_base64());
        list.push('\n');
    }
    to_child.write_all(list.as_bytes()).unwrap();
    let (admitted, peers, _) = measure(&mut to_child);
    assert_eq!(peers, n);

    let (took, done) = handshake_all(&keys, gateway_public, gateway);
    let (live, _, up) = measure(&mut to_child);
    println!(
        "| {n} | {} | {} | {:.2} | {done}/{n} in {:.1} (peers up: {up}) | {} | {:.2} |",
        mib(empty),
        mib(admitted),
        admitted.saturating_sub(empty) as f64 / n as f64,
        took.as_secs_f64(),
        mib(live),
        live.saturating_sub(empty) as f64 / n as f64,
    );
    drop(to_child);
    let _ = child.kill();
    let _ = child.wait();
    let _ = pid;
}

/// Every key handshakes with the gateway (initiations in batches, unanswered ones
/// retried after 5 s) and sends its first keepalive. Returns the time taken and how many
/// completed.
fn handshake_all(
    keys: &[tunnel::PrivateKey],
    gateway_public: x25519::PublicKey,
    gateway: SocketAddr,
) -> (Duration, usize) {
    let n = keys.len();
    let sockets: Vec<std::net::UdpSocket> = (0..16)
        .map(|_| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    let mut tunns: Vec<Tunn> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let secret = x25519::StaticSecret::from(decode(&k.to_base64()));
            Tunn::new(secret, gateway_public, None, Some(25), i as u32 + 1, None)
        })
        .collect();
    let by_index: HashMap<u32, usize> = (0..n).map(|i| (i as u32 + 1, i)).collect();
    let mut done = vec![false; n];
    let mut buf = vec![0u8; 2048];
    let mut rbuf = vec![0u8; 2048];
    let start = Instant::now();
    let deadline = start + Duration::from_secs(180);
    let (mut remaining, mut sent) = (n, 0);
    let mut last_retry = Instant::now();
    while remaining > 0 && Instant::now() < deadline {
        let batch_end = (sent + 256).min(n);
        for i in sent..batch_end {
            if let TunnResult::WriteToNetwork(init) =
                tunns[i].format_handshake_initiation(&mut buf, false)
            {
                let _ = sockets[i % 16].send_to(init, gateway);
            }
        }
        sent = batch_end;
        let mut got = false;
        for s in &sockets {
            while let Ok((len, _)) = s.recv_from(&mut rbuf) {
                got = true;
                // A handshake response's receiver index is our sender index.
                let receiver = u32::from_le_bytes(rbuf[8..12].try_into().unwrap()) >> 8;
                let Some(&i) = by_index.get(&receiver) else {
                    continue;
                };
                if let TunnResult::WriteToNetwork(keepalive) =
                    tunns[i].decapsulate(None, &rbuf[..len], &mut buf)
                {
                    let _ = s.send_to(keepalive, gateway);
                    if !done[i] {
                        done[i] = true;
                        remaining -= 1;
                    }
                }
            }
        }
        if !got && sent == n {
            std::thread::sleep(Duration::from_millis(1));
            if last_retry.elapsed() > Duration::from_secs(5) {
                last_retry = Instant::now();
                for i in (0..n).filter(|&i| !done[i]) {
                    if let TunnResult::WriteToNetwork(init) =
                        tunns[i].format_handshake_initiation(&mut buf, true)
                    {
                        let _ = sockets[i % 16].send_to(init, gateway);
                    }
                }
            }
        }
    }
    (start.elapsed(), n - remaining)
}

fn decode(text: &str) -> [u8; 32] {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
        .try_into()
        .unwrap()
}
