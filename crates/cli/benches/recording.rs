//! What recording connections costs inside `postern server`, side by side in one run:
//! the rate of (connect, 1-byte echo, close), 64 at once, through
//!
//! 1. a forward of the `gateway` crate alone (this binary re-executed with
//!    `--serve-gateway`: a 2-worker tokio runtime, events read and discarded, no log);
//! 2. a grant's entry port on a real `postern server` (the release binary, SQLite in a
//!    temporary directory, lab mode, its default `info` log read from a pipe and
//!    discarded): every connection recorded in the store, opened and ended, and logged;
//! 3. the same server with `POSTERN_LOG=warn`: recorded, not logged.
//!
//! All three forward to the same echo service, on the address of a sim router that the
//! servers provision their grant through (registered with the echo's port as its SSH
//! port). Rounds go round-robin over the paths; medians are printed, with, for the
//! servers, how long after a round's last connection closed the API showed all of the
//! round's newest 500 connections ended (how far the recorder lags behind), and the CPU
//! time the gateway's process spent per connection (from the round's start until every
//! end was recorded, so the recording's work counts; `/proc/<pid>/stat`).
//!
//! Run: `cargo bench -p postern-cli --bench recording` (`POSTERN_BENCH_ROUNDS`, default 5;
//! `POSTERN_BENCH_CONNS` per round, default 10,000; `POSTERN_BENCH_BIN`, the `postern`
//! binary to run instead of the one cargo built).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gateway::{Config, ForwardSpec, Gateway, GrantKey, SourcePolicy};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::Reaped;

mod common;

const CONCURRENCY: usize = 64;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--serve-gateway") {
        serve_gateway(args[i + 1].parse().unwrap());
        return;
    }
    let rounds: usize = env_or("POSTERN_BENCH_ROUNDS", 5);
    let conns: usize = env_or("POSTERN_BENCH_CONNS", 10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("postern-cli recording benchmark (loopback, release build)");
    println!(
        "machine: {} CPUs, {}; load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        common::cpu_model(),
        common::loadavg()
    );
    rt.block_on(run(rounds, conns));
    println!("load average at end: {}", common::loadavg());
}

fn env_or(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn run(rounds: usize, conns: usize) {
    let sim = sim::RouterHandle::start(sim::RouterOptions::new(
        "bench",
        "127.0.41.1".parse().unwrap(),
    ))
    .await
    .unwrap();
    let echo = echo(SocketAddr::new(sim.address(), 0)).await;
    let dir = tempfile::tempdir().unwrap();

    let mut child = Reaped(
        Command::new(std::env::current_exe().unwrap())
            .args(["--serve-gateway", &echo.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let alone: SocketAddr = line.trim().parse().unwrap();

    let logged = Server::start(&dir.path().join("info"), "info", &sim, echo.port()).await;
    let quiet = Server::start(
        &dir.path().join("warn"),
        // The line that says where it listens is the one info line kept.
        "warn,postern::commands::server=info",
        &sim,
        echo.port(),
    )
    .await;
    let names = [
        "gateway crate alone",
        "postern server (recorded, info log)",
        "postern server (recorded, warn log)",
    ];
    let pids = [child.0.id(), logged.server.pid(), quiet.server.pid()];
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut lags: [Vec<f64>; 3] = Default::default();
    let mut cpu: [Vec<f64>; 3] = Default::default();
    for round in 0..rounds {
        for (i, name) in names.iter().enumerate() {
            let server = match i {
                1 => Some(&logged),
                2 => Some(&quiet),
                _ => None,
            };
            let addr = server.map_or(alone, |s| s.entry);
            let before = common::cpu_ns(pids[i]);
            let rate = conn_rate(addr, conns).await;
            let lag = match server {
                Some(s) => s.recorded_lag().await.as_secs_f64() * 1000.0,
                None => 0.0,
            };
            // Until every end is recorded: the recording's work included.
            let us = common::cpu_ns(pids[i]).saturating_sub(before) as f64 / 1000.0 / conns as f64;
            eprintln!(
                "round {round}: {name}: {rate:.0} connections/s, {us:.1} CPU-µs each, recorder lag {lag:.0} ms"
            );
            rates[i].push(rate);
            lags[i].push(lag);
            cpu[i].push(us);
        }
    }
    println!(
        "\nconnect + 1-byte echo + close, {CONCURRENCY} at once, {conns} per round, {rounds} rounds (medians):"
    );
    for (i, name) in names.iter().enumerate() {
        let r = median(rates[i].clone());
        // Per round, against the gateway alone in the same round.
        let ratio = median(
            rates[i]
                .iter()
                .zip(&rates[0])
                .map(|(x, base)| x / base)
                .collect(),
        );
        let us = median(cpu[i].clone());
        let lo = rates[i].iter().copied().fold(f64::MAX, f64::min);
        let hi = rates[i].iter().copied().fold(0.0, f64::max);
        let lag = if i == 0 {
            String::new()
        } else {
            format!(
                "; all ended in the API {:.0} ms after the round (max {:.0} ms)",
                median(lags[i].clone()),
                lags[i].iter().copied().fold(0.0, f64::max)
            )
        };
        println!(
            "  {name:<38} {r:>8.0}/s ({lo:.0}-{hi:.0}), {ratio:.2} of the gateway alone (per round); {us:.1} CPU-µs per connection in the process{lag}"
        );
    }
    drop(logged);
    drop(quiet);
    drop(child);
    sim.shutdown().await;
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// An echo service for many connections.
async fn echo(at: SocketAddr) -> SocketAddr {
    let listener = TcpListener::bind(at).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// `conns` × (connect, write a byte, read it back, close), `CONCURRENCY` at once.
async fn conn_rate(addr: SocketAddr, conns: usize) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let next = next.clone();
            let errors = errors.clone();
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < conns {
                    let one = async {
                        let mut s = TcpStream::connect(addr).await?;
                        s.set_nodelay(true)?;
                        s.write_all(b"c").await?;
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).await?;
                        std::io::Result::Ok(())
                    };
                    if let Err(e) = one.await
                        && errors.fetch_add(1, Ordering::Relaxed) == 0
                    {
                        eprintln!("  first connection error via {addr}: {e}");
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let rate = conns as f64 / start.elapsed().as_secs_f64();
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        eprintln!("  {addr}: {errors} connections failed");
    }
    rate
}

/// The gateway crate alone, as `postern server` configures it, printing its listen
/// address on stdout.
fn serve_gateway(target: SocketAddr) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (gw, mut events) = Gateway::new(Config::default());
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let open = gw
            .open(ForwardSpec {
                key: GrantKey::Access(domain::AccessId::new()),
                listen: "127.0.0.1:0".parse().unwrap(),
                target: target.into(),
                sources: SourcePolicy::new(["127.0.0.1/32".parse().unwrap()], false),
                deadline: None,
            })
            .await
            .unwrap();
        let mut out = std::io::stdout();
        writeln!(out, "{}", open.listen).unwrap();
        out.flush().unwrap();
        // Until the parent goes (stdin closes).
        let _ = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        })
        .await;
        drop(gw);
    });
}

/// A `postern server` with one active SSH access grant whose target is the echo.
struct Server {
    server: common::Server,
    connections: String,
    entry: SocketAddr,
}

impl Server {
    async fn start(
        data: &std::path::Path,
        log: &str,
        sim: &sim::RouterHandle,
        echo_port: u16,
    ) -> Self {
        let server = common::Server::start(data, log);
        let router = server
            .call(
                "POST",
                "/api/routers",
                Some(json!({
                    "name": "bench",
                    "tunnel_address": sim.address().to_string(),
                    "api_port": sim.api_addr.port(),
                    "ssh_port": echo_port,
                    "username": "admin",
                    "password": sim.admin_password,
                })),
            )
            .await;
        let base = format!(
            "/api/routers/{}/transient-access",
            router["id"].as_str().unwrap()
        );
        let grant = server
            .call(
                "POST",
                &format!("{base}?wait=true"),
                Some(json!({ "type": "ssh", "allow_from": "127.0.0.1", "expire_after_minutes": 600 })),
            )
            .await;
        assert_eq!(grant["status"], "active", "{grant}");
        Server {
            server,
            entry: SocketAddr::from((
                [127, 0, 0, 1],
                u16::try_from(grant["port"].as_u64().unwrap()).unwrap(),
            )),
            connections: format!("{base}/{}/connections", grant["id"].as_str().unwrap()),
        }
    }

    /// How long until the API shows the newest 500 connections all ended.
    async fn recorded_lag(&self) -> Duration {
        let start = Instant::now();
        loop {
            let list = self.server.call("GET", &self.connections, None).await;
            let list = list.as_array().unwrap();
            if !list.is_empty() && list.iter().all(|c| !c["ended_at"].is_null()) {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "connections never all ended"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}
