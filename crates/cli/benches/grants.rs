//! Grants through the REST API of a real `postern server` (the release binary, SQLite in
//! a temporary directory, lab mode, `POSTERN_LOG=warn`), against a fleet of 20 sim
//! routers on loopback (in this process, so the benchmark sees each router's users the
//! moment they change). Per round, 100 requests at once, 5 per router, over kept-alive
//! HTTP connections:
//!
//! 1. `POST /api/routers/{id}/transient-access`: time from sending the request to the
//!    temporary user existing on the router (target p50 < 50 ms, p99 < 250 ms), and to
//!    the API's answer (`requested`);
//! 2. `DELETE` of those 100: time to the user gone from the router (p99 < 250 ms);
//! 3. the same creation with `?wait=true`: time to the answer, the grant `active`.
//!
//! Run: `cargo bench -p postern-cli --bench grants` (`POSTERN_BENCH_ROUNDS`, default 5;
//! `POSTERN_BENCH_BIN`, the `postern` binary to run instead of the one cargo built).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sim::{Fleet, FleetOptions, Ports};
use tokio::sync::oneshot;

mod common;

const ROUTERS: usize = 20;
const AT_ONCE: usize = 100;

fn main() {
    let rounds: usize = std::env::var("POSTERN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "postern-cli grants benchmark (REST API of a release `postern server`, 20 sim routers)"
    );
    println!(
        "machine: {} CPUs, {}; load average at start: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        common::cpu_model(),
        common::loadavg()
    );
    rt.block_on(run(rounds));
    println!("load average at end: {}", common::loadavg());
}

/// Which users to wait for on which router: one task scans them all every 250 µs (a
/// hundred tasks polling would load the two cores being measured).
struct Watcher {
    fleet: Fleet,
    waiting: Mutex<Vec<Waiting>>,
}

/// A router, a user name, whether it should be there, and whom to tell.
type Waiting = (usize, String, bool, oneshot::Sender<Instant>);

impl Watcher {
    fn start(fleet: Fleet) -> Arc<Watcher> {
        let watcher = Arc::new(Watcher {
            fleet,
            waiting: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&watcher);
        tokio::spawn(async move {
            while let Some(w) = weak.upgrade() {
                {
                    let mut waiting = w.waiting.lock().unwrap();
                    let mut i = 0;
                    while i < waiting.len() {
                        let (router, name, present, _) = &waiting[i];
                        if w.has_user(*router, name) == *present {
                            let (_, _, _, tx) = waiting.swap_remove(i);
                            let _ = tx.send(Instant::now());
                        } else {
                            i += 1;
                        }
                    }
                }
                drop(w);
                tokio::time::sleep(Duration::from_micros(250)).await;
            }
        });
        watcher
    }

    fn has_user(&self, router: usize, name: &str) -> bool {
        self.fleet.routers[router]
            .router()
            .state()
            .users
            .by_name(name)
            .is_some()
    }

    /// When user `name` was seen on `router` (`present`) or gone from it.
    async fn until(&self, router: usize, name: &str, present: bool) -> Instant {
        let (tx, rx) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap()
            .push((router, name.to_owned(), present, tx));
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("the router never changed")
            .unwrap()
    }
}

async fn run(rounds: usize) {
    let fleet = Fleet::start(
        ROUTERS,
        "127.0.42.1".parse().unwrap(),
        FleetOptions {
            ports: Ports::ephemeral(),
            ..FleetOptions::default()
        },
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Arc::new(common::Server::start(
        dir.path(),
        "warn,postern::commands::server=info",
    ));
    let mut routers = Vec::new();
    for (i, r) in fleet.routers.iter().enumerate() {
        let router = server
            .call(
                "POST",
                "/api/routers",
                Some(json!({
                    "name": format!("r{i}"),
                    "tunnel_address": r.address().to_string(),
                    "api_port": r.api_addr.port(),
                    "ssh_port": r.ssh_addr.port(),
                    "winbox_port": r.winbox_addr.port(),
                    "username": "admin",
                    "password": r.admin_password,
                })),
            )
            .await;
        routers.push(router["id"].as_str().unwrap().to_owned());
    }
    let routers = Arc::new(routers);
    let watcher = Watcher::start(fleet);

    // Warm-up: a grant per router (connections to the routers, Postern's groups), and
    // the client's connections to the API.
    for r in routers.iter() {
        let g = create(&server, r, true).await;
        assert_eq!(g["status"], "active", "{g}");
    }
    let mut warm = Vec::new();
    for _ in 0..AT_ONCE {
        let server = server.clone();
        warm.push(tokio::spawn(async move {
            server.call("GET", "/api/routers", None).await
        }));
    }
    for w in warm {
        w.await.unwrap();
    }

    let mut rows: Vec<(&str, Vec<Vec<Duration>>)> = vec![
        ("POST -> user on the router", Vec::new()),
        ("POST -> answer (requested)", Vec::new()),
        ("DELETE -> user gone from the router", Vec::new()),
        ("POST ?wait=true -> answer (active)", Vec::new()),
    ];
    for round in 0..rounds {
        // 1. Creations.
        let cpu_before = (
            common::cpu_ns(server.pid()),
            common::cpu_ns(std::process::id()),
        );
        let mut tasks = Vec::new();
        for i in 0..AT_ONCE {
            let (server, routers, watcher) = (server.clone(), routers.clone(), watcher.clone());
            tasks.push(tokio::spawn(async move {
                let router = i % ROUTERS;
                let t0 = Instant::now();
                let g = create(&server, &routers[router], false).await;
                let answered = t0.elapsed();
                let name = g["username"].as_str().unwrap().to_owned();
                let seen = watcher.until(router, &name, true).await;
                (
                    seen - t0,
                    answered,
                    router,
                    g["id"].as_str().unwrap().to_owned(),
                    name,
                )
            }));
        }
        let mut made = Vec::new();
        for t in tasks {
            made.push(t.await.unwrap());
        }
        let cpu = (
            common::cpu_ns(server.pid()) - cpu_before.0,
            common::cpu_ns(std::process::id()) - cpu_before.1,
        );
        eprintln!(
            "round {round}: creations: CPU {:.0} ms in the server, {:.0} ms in the benchmark (sims, HTTP client)",
            cpu.0 as f64 / 1e6,
            cpu.1 as f64 / 1e6
        );
        rows[0].1.push(made.iter().map(|m| m.0).collect());
        rows[1].1.push(made.iter().map(|m| m.1).collect());
        // Until every grant is active (its job's end written).
        for (_, _, router, id, _) in &made {
            let path = format!("/api/routers/{}/transient-access/{id}", routers[*router]);
            while server.call("GET", &path, None).await["status"] != "active" {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }

        // 2. Revokes.
        let gone = revoke_all(&server, &routers, &watcher, made).await;
        rows[2].1.push(gone);

        // 3. Creations that wait for the grant to be active.
        let mut tasks = Vec::new();
        for i in 0..AT_ONCE {
            let (server, routers) = (server.clone(), routers.clone());
            tasks.push(tokio::spawn(async move {
                let router = i % ROUTERS;
                let t0 = Instant::now();
                let g = create(&server, &routers[router], true).await;
                let answered = t0.elapsed();
                assert_eq!(g["status"], "active", "{g}");
                let (id, name) = (g["id"].as_str().unwrap(), g["username"].as_str().unwrap());
                (answered, answered, router, id.to_owned(), name.to_owned())
            }));
        }
        let mut made = Vec::new();
        for t in tasks {
            made.push(t.await.unwrap());
        }
        rows[3].1.push(made.iter().map(|m| m.0).collect());
        revoke_all(&server, &routers, &watcher, made).await;

        let p50 = |v: &Vec<Duration>| ms(pct(v, 0.5));
        eprintln!(
            "round {round}: POST -> user p50 {:.1} ms p99 {:.1} ms; DELETE -> gone p99 {:.1} ms; wait=true p50 {:.1} ms; load {}",
            p50(rows[0].1.last().unwrap()),
            ms(pct(rows[0].1.last().unwrap(), 0.99)),
            ms(pct(rows[2].1.last().unwrap(), 0.99)),
            p50(rows[3].1.last().unwrap()),
            common::loadavg()
        );
    }

    println!(
        "\n{AT_ONCE} at once over {ROUTERS} routers, {rounds} rounds (each round's p50 and p99, ms; the median round's):"
    );
    for (name, per_round) in &rows {
        let p50s: Vec<f64> = per_round.iter().map(|v| ms(pct(v, 0.5))).collect();
        let p99s: Vec<f64> = per_round.iter().map(|v| ms(pct(v, 0.99))).collect();
        println!(
            "  {name:<38} p50 {:>6.1} ({:.1}-{:.1})   p99 {:>6.1} ({:.1}-{:.1})",
            median(&p50s),
            min(&p50s),
            max(&p50s),
            median(&p99s),
            min(&p99s),
            max(&p99s),
        );
    }
    drop(server);
}

/// Creates a WinBox grant on `router` (waiting for it to be active with `wait`).
async fn create(server: &common::Server, router: &str, wait: bool) -> Value {
    server
        .call(
            "POST",
            &format!(
                "/api/routers/{router}/transient-access{}",
                if wait { "?wait=true" } else { "" }
            ),
            Some(json!({ "type": "winbox", "allow_from": "198.51.100.0/24", "expire_after_minutes": 30 })),
        )
        .await
}

/// Revokes every grant of `made` at once; for each, the time until its user was gone.
async fn revoke_all(
    server: &Arc<common::Server>,
    routers: &Arc<Vec<String>>,
    watcher: &Arc<Watcher>,
    made: Vec<(Duration, Duration, usize, String, String)>,
) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for (_, _, router, id, name) in made {
        let (server, routers, watcher) = (server.clone(), routers.clone(), watcher.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            server
                .call(
                    "DELETE",
                    &format!("/api/routers/{}/transient-access/{id}", routers[router]),
                    None,
                )
                .await;
            watcher.until(router, &name, false).await - t0
        }));
    }
    let mut gone = Vec::new();
    for t in tasks {
        gone.push(t.await.unwrap());
    }
    gone
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MAX, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}
