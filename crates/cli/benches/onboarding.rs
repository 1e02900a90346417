//! Onboarding, from "Add site" to the router shown online, against a real `postern
//! server` (the binary cargo built, SQLite in a temporary directory, lab mode) and sim
//! routers behind NAT (no TCP port open; in this process): per router, `POST /api/sites`,
//! the line pasted into the router's console (the router fetches its script, makes its
//! key, reports it, adds the gateway as its peer), then `GET /api/routers/{id}` every
//! 5 ms until it says `online`. The target: under 5 s on loopback.
//!
//! Run: `cargo bench -p postern-cli --bench onboarding` (`POSTERN_BENCH_ROUTERS`,
//! default 12: every router here enrols from 127.0.0.1, and the enrolment routes take
//! 30 requests a minute from one address, two per router).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::time::{Duration, Instant};

use serde_json::json;
use sim::{Fleet, FleetOptions, Ports};

mod common;

fn main() {
    let routers: usize = std::env::var("POSTERN_BENCH_ROUTERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(routers));
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn run(routers: usize) {
    let dir = tempfile::tempdir().unwrap();
    let server = common::Server::start(dir.path(), "warn,postern::commands::server=info");
    let fleet = Fleet::start(
        routers,
        "127.0.98.1".parse().unwrap(),
        FleetOptions {
            ports: Ports::ephemeral(),
            behind_nat: true,
            ..FleetOptions::default()
        },
    )
    .await
    .unwrap();
    let (mut add, mut paste, mut online) = (Vec::new(), Vec::new(), Vec::new());
    for r in &fleet.routers {
        let started = Instant::now();
        let site = server
            .call("POST", "/api/sites", Some(json!({ "name": r.identity() })))
            .await;
        let added = started.elapsed();
        let router = site["router_id"].as_str().unwrap().to_owned();
        let line = site["enrollment"]["command"].as_str().unwrap().to_owned();
        let mut cwd = Vec::new();
        let out =
            sim::ssh::console::run_line(r.router(), &sim::Caller::system(), &line, &mut cwd).await;
        assert!(!out.failed, "{}", out.output);
        let pasted = started.elapsed();
        loop {
            let v = server
                .call("GET", &format!("/api/routers/{router}"), None)
                .await;
            if v["status"] == "online" {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{v}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        add.push(added);
        paste.push(pasted);
        online.push(started.elapsed());
    }
    println!(
        "onboarding {routers} routers one after another (machine: {}, load {}):",
        common::cpu_model(),
        common::loadavg()
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9}",
        "from POST /api/sites to", "p50", "p90", "max"
    );
    for (what, mut v) in [
        ("the line returned", add),
        ("the paste done (script run)", paste),
        ("the router shown online", online),
    ] {
        v.sort();
        println!(
            "{what:<34} {:>9.1?} {:>9.1?} {:>9.1?}",
            percentile(&v, 0.5),
            percentile(&v, 0.9),
            v[v.len() - 1]
        );
    }
    fleet.shutdown().await;
}
