//! The tunnel's benchmark, side by side in one run, in network namespaces (root needed):
//!
//! - throughput of one TCP stream to a sink on a router's tunnel address, the router's
//!   end being Debian's `wireguard-go` on a TUN device: through our driver (boringtun +
//!   smoltcp, userspace), and through `wireguard-go` at both ends with the kernel's TCP
//!   (the baseline: a second namespace as the gateway);
//! - a 1-byte ping-pong's round trip, p50 and p99: direct over the veth (no WireGuard),
//!   through our driver, and through the baseline;
//! - many peers: N boringtun initiators on loopback handshaking with a gateway in a child
//!   process, and that process's resident memory and idle CPU.
//!
//! `cargo bench -p postern-tunnel --bench tunnel` (env: `ROUNDS`, `MIB` per stream,
//! `PINGS`, `PEERS`; `ONLY=peers` or `ONLY=stream` for one part).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "../tests/support/lab.rs"]
mod lab;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use postern_tunnel::{PrivateKey, PublicKey, Tunnel, TunnelConfig, bind_udp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const BASELINE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 3);
const SINK_PORT: u16 = 9;
const ECHO_PORT: u16 = 7;
const CHUNK: usize = 256 * 1024;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("gateway-child") {
        peers::gateway_child(&args[2..]);
        return;
    }
    let only = std::env::var("ONLY").unwrap_or_default();
    println!("machine: {} cores, {}", nproc(), cpu_model());
    println!("load average at start: {}", load());
    if (only.is_empty() || only == "stream") && lab::can_run() {
        stream_bench();
    }
    if only.is_empty() || only == "peers" {
        peers::bench(env("PEERS", 10_000));
    }
    println!("load average at end: {}", load());
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("?")
        .trim()
        .to_string()
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The sink: reads to EOF, then answers with the byte count (8 bytes) and closes.
fn serve_sink(listener: std::net::TcpListener) {
    listener.set_nonblocking(false).unwrap();
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

fn serve_echo(listener: std::net::TcpListener) {
    listener.set_nonblocking(false).unwrap();
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

fn mbps(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 * 8.0 / elapsed.as_secs_f64() / 1e6
}

/// One stream of `bytes` to the sink over a kernel TCP socket; Mb/s.
fn kernel_stream(mut conn: TcpStream, bytes: usize) -> f64 {
    let chunk = vec![7u8; CHUNK];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        conn.write_all(&chunk).unwrap();
        sent += CHUNK;
    }
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    conn.read_exact(&mut count).unwrap();
    assert_eq!(u64::from_le_bytes(count), sent as u64);
    mbps(sent, start.elapsed())
}

async fn tunnel_stream(tunnel: &Tunnel, bytes: usize) -> f64 {
    let mut conn = tunnel.dial(ROUTER, SINK_PORT).await.unwrap();
    let chunk = vec![7u8; CHUNK];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        conn.write_all(&chunk).await.unwrap();
        sent += CHUNK;
    }
    conn.shutdown().await.unwrap();
    let mut count = [0u8; 8];
    conn.read_exact(&mut count).await.unwrap();
    assert_eq!(u64::from_le_bytes(count), sent as u64);
    mbps(sent, start.elapsed())
}

fn kernel_pings(mut conn: TcpStream, n: usize) -> Vec<Duration> {
    conn.set_nodelay(true).unwrap();
    let mut byte = [1u8];
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        conn.write_all(&byte).unwrap();
        conn.read_exact(&mut byte).unwrap();
        times.push(t.elapsed());
    }
    times
}

async fn tunnel_pings(tunnel: &Tunnel, n: usize) -> Vec<Duration> {
    let mut conn = tunnel.dial(ROUTER, ECHO_PORT).await.unwrap();
    let mut byte = [1u8];
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        conn.write_all(&byte).await.unwrap();
        conn.read_exact(&mut byte).await.unwrap();
        times.push(t.elapsed());
    }
    times
}

fn percentile(times: &mut [Duration], p: f64) -> f64 {
    times.sort();
    let i = ((times.len() as f64 - 1.0) * p).round() as usize;
    times[i].as_secs_f64() * 1e6
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    values[values.len() / 2]
}

fn stream_bench() {
    let rounds = env("ROUNDS", 5);
    let bytes = env("MIB", 256) << 20;
    let pings = env("PINGS", 10_000);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut lab = lab::Lab::new();
    let key = PrivateKey::generate().unwrap();
    let mut config = TunnelConfig::new(key.clone(), GATEWAY, "100.64.0.0/10".parse().unwrap());
    config.stream_send_buffer = env("SEND_KIB", config.stream_send_buffer >> 10) << 10;
    println!(
        "stream buffers: send {} KiB, receive {} KiB",
        config.stream_send_buffer >> 10,
        config.stream_recv_buffer >> 10
    );
    let tunnel = Tunnel::new(config).unwrap();
    let socket = runtime.block_on(async { bind_udp(SocketAddr::from((lab.host_ip, 0))).unwrap() });
    let gateway_udp = socket.local_addr().unwrap();
    let driver = tunnel.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = runtime.spawn(async move {
        driver
            .run(socket, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    lab.start_router(
        &key.public_key().to_base64(),
        gateway_udp,
        &format!("{ROUTER}/10"),
        GATEWAY,
    );
    let router: PublicKey = lab.router_public.parse().unwrap();
    tunnel.upsert_peer(router, ROUTER).unwrap();
    let baseline_ns = lab.add_baseline_gateway(BASELINE, ROUTER);
    serve_sink(lab.listen_tcp(SocketAddr::from(([0, 0, 0, 0], SINK_PORT))));
    serve_echo(lab.listen_tcp(SocketAddr::from(([0, 0, 0, 0], ECHO_PORT))));
    let router_ip = lab.router_ip;
    let baseline_connect = |port: u16| {
        lab::Lab::inside_ns(&baseline_ns, move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                match TcpStream::connect_timeout(
                    &SocketAddr::from((ROUTER, port)),
                    Duration::from_secs(2),
                ) {
                    Ok(conn) => return conn,
                    Err(e) if Instant::now() > deadline => panic!("baseline connect: {e}"),
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        })
    };

    // Warm up both paths (handshakes, TCP windows).
    kernel_stream(baseline_connect(SINK_PORT), 16 << 20);
    runtime.block_on(tunnel_stream(&tunnel, 16 << 20));

    println!(
        "\none TCP stream, {} MiB to a sink behind wireguard-go, {rounds} rounds alternating:",
        bytes >> 20
    );
    let (mut ours, mut base, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    // The router's wireguard-go socket drops what it cannot read in time; count it per path.
    let drops = || -> u64 {
        let snmp =
            String::from_utf8_lossy(&lab.exec(&["cat", "/proc/net/snmp"]).stdout).to_string();
        let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
        let names: Vec<&str> = udp.next().unwrap_or("").split_whitespace().collect();
        let values: Vec<&str> = udp.next().unwrap_or("").split_whitespace().collect();
        names
            .iter()
            .position(|n| *n == "RcvbufErrors")
            .and_then(|i| values.get(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let (mut ours_dropped, mut base_dropped) = (0, 0);
    for round in 0..rounds {
        let d0 = drops();
        let b = kernel_stream(baseline_connect(SINK_PORT), bytes);
        let d1 = drops();
        let o = runtime.block_on(async {
            match tokio::time::timeout(Duration::from_secs(120), tunnel_stream(&tunnel, bytes))
                .await
            {
                Ok(o) => o,
                Err(_) => panic!("the tunnel stream stalled: {:?}", tunnel.stats()),
            }
        });
        println!(
            "  round {round}: postern tunnel {o:.0} Mb/s, wireguard-go both ends {b:.0} Mb/s, ratio {:.2}",
            o / b
        );
        ratios.push(o / b);
        let d2 = drops();
        base_dropped += d1 - d0;
        ours_dropped += d2 - d1;
        ours.push(o);
        base.push(b);
    }
    let (o, b) = (median(&mut ours), median(&mut base));
    println!(
        "  median: postern tunnel {o:.0} Mb/s, baseline {b:.0} Mb/s, ratio of medians {:.2}, median of per-round ratios {:.2}",
        o / b,
        median(&mut ratios)
    );
    println!(
        "  datagrams the router's wireguard-go socket dropped (RcvbufErrors): postern tunnel {ours_dropped}, baseline {base_dropped}"
    );

    println!("\n1-byte ping-pong, {pings} round trips each:");
    // Direct: a kernel TCP connection from our own namespace over the veth.
    let mut direct = kernel_pings(TcpStream::connect((router_ip, ECHO_PORT)).unwrap(), pings);
    let mut ours = runtime.block_on(tunnel_pings(&tunnel, pings));
    let mut base = kernel_pings(baseline_connect(ECHO_PORT), pings);
    let row = |name: &str, t: &mut Vec<Duration>| {
        let (p50, p99) = (percentile(t, 0.5), percentile(t, 0.99));
        let (p90, p98) = (percentile(t, 0.9), percentile(t, 0.98));
        println!("  {name:<28} p50 {p50:8.1} µs   p99 {p99:8.1} µs   (p90 {p90:.1}, p98 {p98:.1})");
        (p50, p99)
    };
    let d = row("direct (no WireGuard)", &mut direct);
    let o = row("postern tunnel", &mut ours);
    let b = row("wireguard-go both ends", &mut base);
    println!(
        "  added by the postern tunnel: p50 {:+.1} µs, p99 {:+.1} µs (wireguard-go both ends: p50 {:+.1} µs)",
        o.0 - d.0,
        o.1 - d.1,
        b.0 - d.0
    );
    let stats = tunnel.stats();
    println!("  tunnel counters: {stats:?}");
    let _ = stop.send(());
    runtime.block_on(task).unwrap();
}

mod peers {
    //! Many peers: a gateway in a child process (so its memory is its own), N boringtun
    //! initiators in this one, on loopback.

    use super::*;
    use boringtun::noise::{Tunn, TunnResult};
    use boringtun::x25519;
    use std::collections::HashMap;
    use std::process::{Command, Stdio};

    pub fn gateway_child(args: &[String]) {
        let key = PrivateKey::from_base64(&args[0]).unwrap();
        let n: usize = args[1].parse().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut config = TunnelConfig::new(key, GATEWAY, "100.64.0.0/10".parse().unwrap());
        config.handshakes_per_second = 100_000;
        let tunnel = Tunnel::new(config).unwrap();
        println!("{}", rss_kib(std::process::id()));
        // Peers' public keys arrive on stdin, one per line.
        let mut keys = String::new();
        std::io::stdin().read_to_string(&mut keys).unwrap();
        for (i, line) in keys.lines().enumerate() {
            let address = Ipv4Addr::from(u32::from(Ipv4Addr::new(100, 64, 0, 10)) + i as u32);
            tunnel.upsert_peer(line.parse().unwrap(), address).unwrap();
        }
        assert_eq!(tunnel.stats().peers, n);
        runtime.block_on(async {
            let socket = bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
            println!("{}", socket.local_addr().unwrap());
            let driver = tunnel.clone();
            let task =
                tokio::spawn(async move { driver.run(socket, std::future::pending()).await });
            let _ = task.await;
        });
    }

    fn rss_kib(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    fn cpu_ticks(pid: u32) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let after = stat.rsplit(')').next().unwrap_or("");
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ")".
        fields
            .get(11)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            + fields
                .get(12)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
    }

    pub fn bench(n: usize) {
        println!("\n{n} peers handshaking with a gateway in a child process, on loopback:");
        let gateway_key = PrivateKey::generate().unwrap();
        let gateway_public = x25519::PublicKey::from(*gateway_key.public_key().as_bytes());
        let mut keys = Vec::with_capacity(n);
        let mut list = String::new();
        for _ in 0..n {
            let k = PrivateKey::generate().unwrap();
            list.push_str(&k.public_key().to_base64());
            list.push('\n');
            keys.push(k);
        }
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args(["gateway-child", &gateway_key.to_base64(), &n.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(list.as_bytes())
            .unwrap();
        let mut out = child.stdout.take().unwrap();
        let mut read_line = || {
            let mut line = Vec::new();
            let mut byte = [0u8];
            while out.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
            String::from_utf8(line).unwrap()
        };
        let rss_empty: u64 = read_line().trim().parse().unwrap();
        let gateway: SocketAddr = read_line().trim().parse().unwrap();
        let pid = child.id();
        let rss_before = rss_kib(pid);

        // Initiators share 16 sockets; replies find their Tunn by our sender index.
        let sockets: Vec<std::net::UdpSocket> = (0..16)
            .map(|_| {
                let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
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
        let mut done = vec![false; n];
        let mut buf = vec![0u8; 2048];
        let mut rbuf = vec![0u8; 2048];
        let by_index: HashMap<u32, usize> = (0..n).map(|i| (i as u32 + 1, i)).collect();
        for s in &sockets {
            s.set_nonblocking(true).unwrap();
        }
        let start = Instant::now();
        let mut remaining = n;
        let mut sent = 0;
        let mut last_retry = Instant::now();
        let deadline = start + Duration::from_secs(120);
        while remaining > 0 && Instant::now() < deadline {
            // Initiations in batches of 256, replies drained in between, so loopback
            // buffers do not overflow; unanswered ones are retried after 5 s, as
            // WireGuard's REKEY_TIMEOUT (sooner, and a late answer would find its
            // initiation replaced).
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
        let took = start.elapsed();
        let rss = rss_kib(pid);
        println!(
            "  handshakes completed: {}/{n} in {:.2} s; gateway RSS {:.1} MiB ({:.1} MiB empty, {:.1} MiB with the peers added before any handshake; {:.1} KiB per peer)",
            n - remaining,
            took.as_secs_f64(),
            rss as f64 / 1024.0,
            rss_empty as f64 / 1024.0,
            rss_before as f64 / 1024.0,
            (rss.saturating_sub(rss_empty)) as f64 / n as f64
        );
        // Idle: peers keep alive every 25 s (spread out); measure the gateway's CPU over 10 s.
        let ticks = rustix::param::clock_ticks_per_second() as f64;
        let c0 = cpu_ticks(pid);
        let t0 = Instant::now();
        let mut next = vec![Instant::now(); n];
        for (i, at) in next.iter_mut().enumerate() {
            *at += Duration::from_millis((i as u64 * 25_000) / n as u64);
        }
        while t0.elapsed() < Duration::from_secs(10) {
            let now = Instant::now();
            for i in 0..n {
                if done[i] && next[i] <= now {
                    if let TunnResult::WriteToNetwork(k) = tunns[i].encapsulate(&[], &mut buf) {
                        let _ = sockets[i % 16].send_to(k, gateway);
                    }
                    next[i] = now + Duration::from_secs(25);
                }
            }
            for s in &sockets {
                while s.recv_from(&mut rbuf).is_ok() {}
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let cpu = (cpu_ticks(pid) - c0) as f64 / ticks / t0.elapsed().as_secs_f64() * 100.0;
        println!(
            "  idle with {n} peers keeping alive every 25 s: gateway CPU {cpu:.1}% of a core, RSS {:.1} MiB",
            rss_kib(pid) as f64 / 1024.0
        );
        let _ = child.kill();
        let _ = child.wait();
    }

    fn decode(text: &str) -> [u8; 32] {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap()
            .try_into()
            .unwrap()
    }
}
