//! Two `postern server` processes on one PostgreSQL (a throwaway cluster the store's test
//! harness starts): grants created through either are each provisioned exactly once,
//! by whichever process claims the job first (woken by LISTEN/NOTIFY); a server that
//! starts leaves the other's live connections live, and ends them once that one is
//! gone.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

extern crate store as postern_store;

#[allow(dead_code)]
#[path = "../../store/tests/harness/mod.rs"]
mod harness;

mod listening;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_postern");

fn start(data: &std::path::Path, url: &str) -> (Child, String) {
    start_env(data, url, &[])
}

/// The same with more environment variables.
fn start_env(data: &std::path::Path, url: &str, env: &[(&str, &str)]) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--lab-mode",
            "--database-url",
            url,
            "--data-dir",
        ])
        .arg(data)
        .env_remove("POSTERN_LISTEN")
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening::server_address(child.stderr.take().unwrap());
    (child, addr)
}

async fn call(addr: &str, token: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}{path}");
    let req = match method {
        "POST" => client.post(url),
        _ => client.get(url),
    }
    .bearer_auth(token);
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(b.to_string()),
        None => req,
    };
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{method} {path}: {status} {text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_provision_each_grant_exactly_once() {
    let Some(ctx) = harness::Ctx::new(harness::Db::Postgres).await else {
        return;
    };
    ctx.store.close().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let fleet = sim::Fleet::start(
        10,
        "127.0.23.1".parse().unwrap(),
        sim::FleetOptions {
            ports: sim::Ports::ephemeral(),
            ..sim::FleetOptions::default()
        },
    )
    .await
    .unwrap();
    // One after the other, so only the first makes the first admin.
    let (mut a, addr_a) = start(&data, &ctx.url);
    let (mut b, addr_b) = start(&data, &ctx.url);
    let out = Command::new(BIN)
        .args(["admin", "create-token", "--role", "admin", "--name", "t"])
        .args(["--database-url", &ctx.url, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let mut routers = Vec::new();
    for (i, r) in fleet.routers.iter().enumerate() {
        let created = call(
            &addr_a,
            &token,
            "POST",
            "/api/routers",
            Some(json!({
                "name": format!("r{i}"),
                "tunnel_address": r.address().to_string(),
                "api_port": r.api_addr.port(),
                "username": "admin",
                "password": r.admin_password,
            })),
        )
        .await;
        routers.push(created["id"].as_str().unwrap().to_owned());
    }
    let mut grants = Vec::new();
    for n in 0..60 {
        let router = n % routers.len();
        let addr = if n % 2 == 0 { &addr_a } else { &addr_b };
        let g = call(
            addr,
            &token,
            "POST",
            &format!("/api/routers/{}/transient-access", routers[router]),
            Some(json!({ "allow_from": "127.0.0.1", "expire_after_minutes": 30 })),
        )
        .await;
        grants.push((
            router,
            g["id"].as_str().unwrap().to_owned(),
            g["username"].as_str().unwrap().to_owned(),
        ));
    }
    let started = Instant::now();
    for (router, id, _) in &grants {
        loop {
            let g = call(
                &addr_b,
                &token,
                "GET",
                &format!("/api/routers/{}/transient-access/{id}", routers[*router]),
                None,
            )
            .await;
            if g["status"] == "active" {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "never active: {g}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut workers = std::collections::HashMap::new();
    for (i, router) in routers.iter().enumerate() {
        let jobs = call(
            &addr_a,
            &token,
            "GET",
            &format!("/api/routers/{router}/jobs"),
            None,
        )
        .await;
        for job in jobs.as_array().unwrap() {
            if job["kind"] != "access.create" {
                continue;
            }
            assert_eq!(job["state"], "completed", "{job}");
            assert_eq!(job["attempts"], 1, "{job}");
            let starts: Vec<&str> = job["lines"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["message"].as_str().unwrap())
                .filter(|m| m.starts_with("express execution requested: started by worker"))
                .collect();
            assert_eq!(starts.len(), 1, "{job}");
            let worker = starts[0].split_whitespace().nth(6).unwrap().to_owned();
            *workers.entry(worker).or_insert(0) += 1;
        }
        let state = fleet.routers[i].router().state();
        for (r, _, username) in &grants {
            if *r == i {
                let count = state
                    .users
                    .items
                    .iter()
                    .filter(|u| u.get("name") == Some(username.as_str()))
                    .count();
                assert_eq!(count, 1, "{username} on r{i}");
            }
        }
    }
    eprintln!("create jobs per server process: {workers:?}");
    assert_eq!(workers.values().sum::<i32>(), 60);
    a.kill().unwrap();
    b.kill().unwrap();
    a.wait().unwrap();
    b.wait().unwrap();
    fleet.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_server_leaves_the_others_live_connections_and_ends_them_once_it_is_gone() {
    use tokio::io::AsyncReadExt as _;

    let Some(ctx) = harness::Ctx::new(harness::Db::Postgres).await else {
        return;
    };
    ctx.store.close().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sim = sim::RouterHandle::start(sim::RouterOptions::new(
        "two-gw",
        "127.0.23.60".parse().unwrap(),
    ))
    .await
    .unwrap();
    let beat = [("POSTERN_GATEWAY_HEARTBEAT", "1s")];
    let (mut a, addr_a) = start_env(&data, &ctx.url, &beat);
    let out = Command::new(BIN)
        .args(["admin", "create-token", "--role", "admin", "--name", "t"])
        .args(["--database-url", &ctx.url, "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let router = call(
        &addr_a,
        &token,
        "POST",
        "/api/routers",
        Some(json!({
            "name": "two-gw",
            "tunnel_address": sim.address().to_string(),
            "api_port": sim.api_addr.port(),
            "ssh_port": sim.ssh_addr.port(),
            "username": "admin",
            "password": sim.admin_password,
        })),
    )
    .await;
    let router = router["id"].as_str().unwrap().to_owned();
    let base = format!("/api/routers/{router}/transient-access");
    let grant = call(
        &addr_a,
        &token,
        "POST",
        &format!("{base}?wait=true"),
        Some(json!({ "type": "ssh", "allow_from": "127.0.0.1", "expire_after_minutes": 30 })),
    )
    .await;
    assert_eq!(grant["status"], "active", "{grant}");
    let port = u16::try_from(grant["port"].as_u64().unwrap()).unwrap();
    let path = format!("{base}/{}/connections", grant["id"].as_str().unwrap());

    // A live connection through A's gateway (the router's SSH banner comes back).
    let mut live = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut banner = [0u8; 4];
    live.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"SSH-");
    let listed = async |addr: &str| -> Vec<Value> {
        let started = Instant::now();
        loop {
            let list = call(addr, &token, "GET", &path, None).await;
            let list = list.as_array().unwrap().clone();
            if !list.is_empty() || started.elapsed() > Duration::from_secs(10) {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let list = listed(&addr_a).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(list[0]["ended_at"].is_null(), "{list:?}");

    // B starts on the same database and beats a few times: A's connection stays live.
    let (mut b, addr_b) = start_env(&data, &ctx.url, &beat);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let list = listed(&addr_b).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert!(
        list[0]["ended_at"].is_null(),
        "B ended A's live connection: {list:?}"
    );

    // A dies (SIGKILL): B sees it gone and ends what A left live.
    a.kill().unwrap();
    a.wait().unwrap();
    let started = Instant::now();
    let ended = loop {
        let list = listed(&addr_b).await;
        if !list[0]["ended_at"].is_null() {
            break list;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "A's connection never ended: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ended[0]["end_reason"], "gateway stopped", "{ended:?}");
    eprintln!("ended {:?} after A was killed", started.elapsed());
    b.kill().unwrap();
    b.wait().unwrap();
    drop(live);
    sim.shutdown().await;
}
