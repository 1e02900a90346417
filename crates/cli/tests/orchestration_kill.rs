//! `postern server` killed with SIGKILL in the middle of a router job: after a restart
//! on the same data directory the job is taken up again once its lease lapses, and it
//! completes exactly once (one user on the router, nothing lost, nothing doubled), and
//! the log keeps what the killed attempt did.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod listening;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_postern");

/// Starts `postern server` (lab mode, JSON logs) and returns it with its address.
fn start(data: &std::path::Path) -> (Child, String) {
    let mut child = Command::new(BIN)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--lab-mode",
            "--data-dir",
        ])
        .arg(data)
        .env_remove("POSTERN_LISTEN")
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
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
        "DELETE" => client.delete(url),
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
    if text.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_job_resumes_it_after_restart_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sim = sim::RouterHandle::start(sim::RouterOptions::new(
        "branch",
        "127.0.21.2".parse().unwrap(),
    ))
    .await
    .unwrap();
    // Slow enough that a job takes seconds: room to kill the server in the middle.
    sim.faults().set_latency(Duration::from_millis(150));

    let (mut server, addr) = start(&data);
    let out = Command::new(BIN)
        .args([
            "admin",
            "create-token",
            "--role",
            "admin",
            "--name",
            "t",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let router = call(
        &addr,
        &token,
        "POST",
        "/api/routers",
        Some(json!({
            "name": "branch",
            "tunnel_address": "127.0.21.2",
            "api_port": sim.api_addr.port(),
            "username": "admin",
            "password": sim.admin_password,
        })),
    )
    .await;
    let router_id = router["id"].as_str().unwrap().to_owned();
    let grant = call(
        &addr,
        &token,
        "POST",
        &format!("/api/routers/{router_id}/transient-access"),
        Some(json!({ "allow_from": "127.0.0.1", "expire_after_minutes": 30 })),
    )
    .await;
    let grant_id = grant["id"].as_str().unwrap().to_owned();
    let username = grant["username"].as_str().unwrap().to_owned();

    // Kill -9 once the user is on the router but the job has not finished.
    let started = Instant::now();
    loop {
        let on_router = sim.router().state().users.by_name(&username).is_some();
        if on_router {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the user never came"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    let jobs = {
        // Read the store directly: the server is gone.
        let store = server_store(&data).await;
        let org = store.list_organisations().await.unwrap()[0].id;
        let jobs = store
            .list_jobs(org, router_id.parse().unwrap(), store::Page::default())
            .await
            .unwrap();
        store.close().await;
        jobs
    };
    let create = jobs
        .iter()
        .find(|(j, _)| j.kind == "access.create")
        .unwrap();
    assert_eq!(create.0.state, domain::JobState::Running, "killed mid-job");
    // The killed attempt's lines up to its last few milliseconds are on record: the
    // connection, and the commands it had sent and had answers to more than a few
    // milliseconds before the kill (each command takes 150 ms here; the last group's
    // answer came just before the user's add, which the kill follows within a poll).
    let killed: Vec<&str> = create.1.iter().map(|l| l.message.as_str()).collect();
    let text = killed.join("\n");
    assert!(
        text.contains("connected to router branch at 127.0.21.2"),
        "{text}"
    );
    assert!(text.contains("sent /user/group/print: ok"), "{text}");
    assert!(
        text.contains("sent /user/group/add name=postern-write"),
        "{text}"
    );
    assert!(!text.contains("completed in"), "{text}");
    let seqs: Vec<u32> = create.1.iter().map(|l| l.seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u32).collect::<Vec<_>>(),
        "numbered in order"
    );

    let (mut server, addr) = start(&data);
    let grant_path = format!("/api/routers/{router_id}/transient-access/{grant_id}");
    let restarted = Instant::now();
    loop {
        let g = call(&addr, &token, "GET", &grant_path, None).await;
        if g["status"] == "active" {
            break;
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(45),
            "the grant never became active: {g}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let users: Vec<_> = sim
        .router()
        .state()
        .users
        .items
        .iter()
        .filter(|u| u.get("name") == Some(username.as_str()))
        .map(|u| u.props.clone())
        .collect();
    assert_eq!(users.len(), 1, "one user, not two: {users:?}");
    let jobs = call(
        &addr,
        &token,
        "GET",
        &format!("/api/routers/{router_id}/jobs"),
        None,
    )
    .await;
    let create = jobs
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["kind"] == "access.create")
        .unwrap();
    assert_eq!(create["state"], "completed");
    assert_eq!(create["attempts"], 2, "{create}");
    let lines: Vec<&str> = create["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect();
    let text = lines.join("\n");
    assert!(text.contains("express execution requested"), "{text}");
    // Attempt 1's lines, then attempt 2's, in order.
    let connected = text.find("connected to router branch").unwrap();
    let second = text.find("attempt 2 of 8 started by worker").unwrap();
    assert!(connected < second, "{text}");
    assert!(
        text.contains("is already on the router: nothing to add"),
        "{text}"
    );
    assert!(text.contains("completed in"), "{text}");

    // The same server: a create that waits comes back active, and DELETE ends the grant
    // on the router (user gone) before it reads `revoked`.
    sim.faults().set_latency(Duration::ZERO);
    let waited = call(
        &addr,
        &token,
        "POST",
        &format!("/api/routers/{router_id}/transient-access?wait=true"),
        Some(json!({ "allow_from": "127.0.0.1", "expire_after_minutes": 30 })),
    )
    .await;
    assert_eq!(waited["status"], "active", "{waited}");
    let second = waited["username"].as_str().unwrap().to_owned();
    assert!(sim.router().state().users.by_name(&second).is_some());
    call(&addr, &token, "DELETE", &grant_path, None).await;
    let deleted = Instant::now();
    loop {
        let g = call(&addr, &token, "GET", &grant_path, None).await;
        if g["status"] == "revoked" {
            assert!(sim.router().state().users.by_name(&username).is_none());
            assert_eq!(g["revoked_early"], true);
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(10),
            "never revoked: {g}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    sim.shutdown().await;
}

/// Opens the data directory's store as the server does.
async fn server_store(data: &std::path::Path) -> store::Store {
    let config = server::config::ServerConfig {
        data_dir: data.to_owned(),
        ..server::config::ServerConfig::default()
    };
    server::bootstrap::open_store(&config).await.unwrap()
}
