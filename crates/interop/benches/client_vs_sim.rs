//! Commands per second over ONE client connection with 32 commands in flight, against
//! the virtual MikroTik on loopback (issue: "the client over 20,000 commands/s").
//!
//! `cargo bench -p postern-interop --bench client_vs_sim`
//!
//! The sim runs in this process on its own runtime thread, so the figure includes the
//! router side too: both share the machine's cores, as they would on one host.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use routeros::{Client, ClientConfig, Command};
use sim::{RouterHandle, RouterOptions};

const IN_FLIGHT: usize = 32;
const COMMANDS: usize = 100_000;
const ROUNDS: usize = 5;

async fn round(client: &Client, make: Arc<dyn Fn() -> Command + Send + Sync>) -> f64 {
    let started = Instant::now();
    let workers: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let client = client.clone();
            let make = make.clone();
            tokio::spawn(async move {
                for _ in 0..COMMANDS / IN_FLIGHT {
                    client.call(make()).await.expect("command failed");
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let done = (COMMANDS / IN_FLIGHT * IN_FLIGHT) as f64;
    done / started.elapsed().as_secs_f64()
}

/// Makes the command a case sends, afresh for each round.
type MakeCommand = Arc<dyn Fn() -> Command + Send + Sync>;

fn main() {
    // The router: a runtime of its own, on its own thread.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut options = RouterOptions::new("bench", "127.0.4.1".parse::<IpAddr>().unwrap());
            options.admin_password = Some("bench-admin".into());
            let router = RouterHandle::start(options).await.unwrap();
            tx.send(router.api_addr).unwrap();
            std::future::pending::<()>().await;
        });
    });
    let addr = rx.recv().unwrap();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let config = ClientConfig::new(addr.to_string(), "admin", "bench-admin")
            .with_command_timeout(Duration::from_secs(30));
        let client = Client::connect(&config).await.unwrap();
        let cases: Vec<(&str, MakeCommand)> = vec![
            (
                "/system/identity/print",
                Arc::new(|| Command::new("/system/identity/print")),
            ),
            (
                "/user/print ?name=admin",
                Arc::new(|| Command::new("/user/print").where_eq("name", "admin")),
            ),
        ];
        println!(
            "client vs sim: {COMMANDS} commands per round, {IN_FLIGHT} in flight, one connection"
        );
        for (name, make) in cases {
            round(&client, make.clone()).await; // warm-up
            let mut rates: Vec<f64> = Vec::new();
            for _ in 0..ROUNDS {
                rates.push(round(&client, make.clone()).await);
            }
            rates.sort_by(|a, b| a.total_cmp(b));
            println!(
                "{name:<28} median {:>8.0} commands/s  (min {:.0}, max {:.0}, {ROUNDS} rounds)",
                rates[ROUNDS / 2],
                rates[0],
                rates[ROUNDS - 1]
            );
        }
    });
}
