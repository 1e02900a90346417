//! `postern demo --json` as a script (and the portal's browser tests) use it: one JSON
//! line once everything listens; its token creates SSH access with `?wait=true`, OpenSSH
//! logs in through the gateway, the portal answers; SIGTERM stops it all cleanly and
//! removes its temporary data directory.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_postern");

fn openssh_available() -> bool {
    let ok = |c: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {c}"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    ok("ssh") && ok("sshpass")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_json_gives_a_token_that_opens_ssh_through_the_gateway() {
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--json",
            "--listen",
            "127.0.0.1:0",
            "--base-address",
            "127.0.41.1",
        ])
        .env_remove("POSTERN_LISTEN")
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the JSON line");
    let demo: Value = serde_json::from_str(&line).unwrap();
    for key in ["portal_url", "admin_user", "admin_password", "api_token"] {
        assert!(demo[key].is_string(), "{key} in {demo}");
    }
    assert_eq!(demo["admin_user"], "admin");
    let routers = demo["routers"].as_array().unwrap();
    assert_eq!(routers.len(), 3, "{demo}");
    let names: Vec<&str> = routers
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sim-1", "sim-2", "sim-3"]);
    let portal = demo["portal_url"].as_str().unwrap().to_owned();
    let token = demo["api_token"].as_str().unwrap().to_owned();
    let router_id = routers[0]["id"].as_str().unwrap().to_owned();

    let http = reqwest::Client::new();
    // The portal answers (its sign-in page), and the admin login works.
    let page = http.get(&portal).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("Postern"));

    // SSH access with wait, then its credentials.
    let access = format!("{portal}api/routers/{router_id}/transient-access");
    let resp = http
        .post(format!("{access}?wait=true"))
        .bearer_auth(&token)
        .json(&json!({ "type": "ssh", "allow_from": "127.0.0.1", "expire_after_minutes": 30 }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let grant: Value = resp.json().await.unwrap();
    assert_eq!(grant["status"], "active", "{grant}");
    let creds: Value = http
        .get(format!(
            "{access}/{}/credentials",
            grant["id"].as_str().unwrap()
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let port = creds["port"].as_u64().unwrap().to_string();
    let user = creds["username"].as_str().unwrap().to_owned();
    let password = creds["password"].as_str().unwrap().to_owned();

    if openssh_available() {
        let out = tokio::task::spawn_blocking(move || {
            Command::new("sshpass")
                .args(["-p", &password, "ssh"])
                .args(["-o", "StrictHostKeyChecking=no"])
                .args(["-o", "UserKnownHostsFile=/dev/null"])
                .args(["-o", "LogLevel=ERROR"])
                .args(["-o", "PubkeyAuthentication=no"])
                .args(["-p", &port])
                .arg(format!("{user}@127.0.0.1"))
                .arg("/system identity print")
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "  name: sim-1\n",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else if std::env::var_os("CI").is_some() {
        panic!("ssh and sshpass are required in CI");
    } else {
        eprintln!("SKIPPED the ssh part: OpenSSH ssh or sshpass not installed");
    }

    // SIGTERM: a clean exit, soon.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "demo did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(http.get(&portal).send().await.is_err(), "still answering");
    let data = std::path::PathBuf::from(demo["data_dir"].as_str().unwrap());
    assert!(!data.exists(), "{} left behind", data.display());
}
