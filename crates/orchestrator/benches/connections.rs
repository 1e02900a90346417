//! Issue 15's sizing, measured: the orchestrator's memory per open router connection.
//!
//! What the orchestrator keeps per open connection is a logged-in `routeros::Client`
//! (its reader and writer tasks, buffers and socket) and a few facts beside it. For each
//! N (`POSTERN_SIZING_CONNECTIONS`, default `100,1000`) a child process (this binary
//! re-executed with `clients-child`, so its memory is its own) logs N clients in to sim
//! routers on loopback (200 to a router: a sim takes 256 connections at most) and reads
//! `/system/resource/print` through each, as opening a connection does; its RSS
//! (`VmRSS`) is read before and after, and the sims' `/user/active` show the N API
//! sessions.
//!
//! Run: `cargo bench -p postern-orchestrator --bench connections`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use routeros::{Client, ClientConfig};
use sim::{RouterHandle, RouterOptions};

/// Connections to one sim router (it takes 256 at most).
const PER_ROUTER: usize = 200;
const PASSWORD: &str = "Sizing-bench-pw1";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("clients-child") {
        let addresses: Vec<&str> = args[2].split(',').collect();
        clients_child(&addresses, &args[3], args[4].parse().unwrap());
        return;
    }
    let sizes: Vec<usize> = std::env::var("POSTERN_SIZING_CONNECTIONS")
        .unwrap_or_else(|_| "100,1000".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let most = sizes.iter().copied().max().unwrap_or(0);
        let mut sims = Vec::new();
        for i in 0..most.div_ceil(PER_ROUTER) {
            let mut options = RouterOptions::new(
                &format!("r{i}"),
                format!("127.0.99.{}", i + 2).parse().unwrap(),
            );
            options.admin_password = Some(PASSWORD.into());
            sims.push(RouterHandle::start(options).await.unwrap());
        }
        let addresses: Vec<String> = sims.iter().map(|s| s.api_addr.to_string()).collect();
        let addresses = addresses.join(",");
        println!("| connections | process before | after | KiB per connection | logged in (s) |");
        println!("| --- | --- | --- | --- | --- |");
        for n in sizes {
            let exe = std::env::current_exe().unwrap();
            let mut child = Command::new(exe)
                .args(["clients-child", &addresses, PASSWORD, &n.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let stdout = child.stdout.take().unwrap();
            let line = tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).unwrap();
                line
            })
            .await
            .unwrap();
            let v: Vec<f64> = line
                .split_whitespace()
                .map(|v| v.parse().unwrap())
                .collect();
            let sessions: usize = sims
                .iter()
                .map(|sim| {
                    sim.router()
                        .state()
                        .active
                        .items
                        .iter()
                        .filter(|s| s.props.get("via").map(String::as_str) == Some("api"))
                        .count()
                })
                .sum();
            assert_eq!(sessions, n, "the router shows every session");
            println!(
                "| {n} | {:.1} MiB | {:.1} MiB | {:.1} | {:.2} |",
                v[0] / 1024.0,
                v[1] / 1024.0,
                (v[1] - v[0]) / n as f64,
                v[2]
            );
            drop(child.stdin.take());
            let _ = child.kill();
            let _ = child.wait();
            // The sim notices the sessions end.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        for sim in sims {
            sim.shutdown().await;
        }
    });
}

/// Logs `n` clients in to `address`, prints "rss-before rss-after seconds", and holds
/// them until stdin closes.
fn clients_child(addresses: &[&str], password: &str, n: usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let configs: Vec<ClientConfig> = addresses
            .iter()
            .map(|a| ClientConfig::new(a.to_string(), "admin", password))
            .collect();
        // Warm: the runtime's and the allocator's first costs are not the clients'.
        let warm = Client::connect(&configs[0]).await.unwrap();
        routeros::api::system::resource(&warm).await.unwrap();
        warm.close();
        drop(warm);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let before = rss_kib(std::process::id());
        let started = Instant::now();
        let mut clients = Vec::with_capacity(n);
        for i in 0..n {
            let client = Client::connect(&configs[i / PER_ROUTER]).await.unwrap();
            routeros::api::system::resource(&client).await.unwrap();
            clients.push(client);
        }
        let took = started.elapsed().as_secs_f64();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let after = rss_kib(std::process::id());
        println!("{before} {after} {took}");
        tokio::task::spawn_blocking(|| {
            let mut rest = String::new();
            let _ = std::io::stdin().read_line(&mut rest);
        })
        .await
        .unwrap();
        drop(clients);
    });
}
