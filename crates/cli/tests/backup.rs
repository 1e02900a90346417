//! `postern admin backup` and `restore` as an operator runs them: a backup taken while a
//! real `postern server` runs, with a router, grants, a user, an API token and a terminal
//! recording; restored into a new data directory; a server started there serves every one
//! of them through the API and the portal, and the token still authenticates.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_postern");

struct Running {
    child: Child,
    addr: String,
    /// Standard output, line by line (the first start prints the admin's password).
    stdout: mpsc::Receiver<String>,
}

/// Starts `postern server` on `data` and waits for its "listening" log line.
fn start(data: &Path) -> Running {
    let mut child = Command::new(BIN)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(data)
        .env_remove("POSTERN_LISTEN")
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap_or_default();
            if v["fields"]["message"] == "postern server listening"
                && let Some(a) = v["fields"]["listen"].as_str()
            {
                let _ = tx.send(a.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a listen address in the log");
    let out = BufReader::new(child.stdout.take().unwrap());
    let (tx, stdout) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    Running {
        child,
        addr,
        stdout,
    }
}

fn stop(mut r: Running) {
    let status = Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(r.child.wait().unwrap().success());
}

fn postern(args: &[&str], paths: &[&Path]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(paths)
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn api(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("http://{addr}{path}");
    let mut req = match method {
        "POST" => client.post(url),
        _ => client.get(url),
    }
    .bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

async fn created(addr: &str, token: &str, path: &str, body: Value) -> Value {
    let (status, v) = api(addr, token, "POST", path, Some(body)).await;
    assert!(status == 201 || status == 200, "POST {path}: {status} {v}");
    v
}

fn ids(list: &Value) -> Vec<String> {
    let items = list
        .as_array()
        .or_else(|| list["items"].as_array())
        .unwrap_or_else(|| panic!("not a list: {list}"));
    let mut ids: Vec<String> = items
        .iter()
        .map(|g| g["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Signs in to the portal; the session cookie.
async fn sign_in(addr: &str, username: &str, password: &str) -> String {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let resp = client
        .post(format!("http://{addr}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        // Both are letters and digits: nothing to escape.
        .body(format!("username={username}&password={password}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 303);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

async fn recording(addr: &str, cookie: &str, site: &str, access: &str) -> (u16, String) {
    let resp = reqwest::Client::new()
        .get(format!(
            "http://{addr}/sites/{site}/recordings/{access}/cast"
        ))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

const CAST: &str =
    "{\"version\":2,\"width\":80,\"height\":24}\n[0.5, \"o\", \"[admin@backup] > \"]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_running_server_restores_every_grant_user_token_and_recording() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let s = start(&data);
    let admin_password = loop {
        let line = s.stdout.recv_timeout(Duration::from_secs(30)).unwrap();
        if line.contains("password") {
            break line.rsplit(' ').next().unwrap().to_owned();
        }
    };
    let (ok, token) = postern(
        &[
            "admin",
            "create-token",
            "--role",
            "admin",
            "--name",
            "backup-test",
            "--data-dir",
        ],
        &[&data],
    );
    assert!(ok, "{token}");
    let token = token.trim().to_owned();
    let addr = s.addr.clone();

    // A router nobody answers for (its grants stay pending), its grants, a user.
    let router = created(
        &addr,
        &token,
        "/api/routers",
        json!({ "name": "branch-1", "tunnel_address": "192.0.2.10",
                "username": "postern", "password": "management-pw-1" }),
    )
    .await;
    let (router_id, site_id) = (
        router["id"].as_str().unwrap().to_owned(),
        router["site_id"].as_str().unwrap().to_owned(),
    );
    let access_path = format!("/api/routers/{router_id}/transient-access");
    let forward_path = format!("/api/routers/{router_id}/transient-forwarding");
    let mut access_ids = Vec::new();
    for kind in ["ssh", "winbox"] {
        let g = created(
            &addr,
            &token,
            &access_path,
            json!({ "type": kind, "allow_from": "203.0.113.7", "expire_after_minutes": 60 }),
        )
        .await;
        access_ids.push(g["id"].as_str().unwrap().to_owned());
    }
    access_ids.sort();
    let forward = created(
        &addr,
        &token,
        &forward_path,
        json!({ "dst_address": "192.168.88.20", "dst_port": 443,
                "allow_from": "203.0.113.7", "expire_after_minutes": 60 }),
    )
    .await;
    let forward_id = forward["id"].as_str().unwrap().to_owned();
    let user = created(
        &addr,
        &token,
        "/api/users",
        json!({ "username": "alice", "role": "operator", "password": "alice-password-12" }),
    )
    .await;
    let (_, users_before) = api(&addr, &token, "GET", "/api/users", None).await;

    // A terminal recording of the first grant, written as the terminal bridge writes one
    // (the store on the same file, while the server runs).
    let key: [u8; 32] = std::fs::read(data.join("secret.key"))
        .unwrap()
        .try_into()
        .unwrap();
    let url = format!("sqlite://{}", data.join("postern.db").display());
    let side = store::Store::open(&url, &store::StoreConfig::new(key))
        .await
        .unwrap();
    let org = side.list_organisations().await.unwrap()[0].id;
    let recorded: domain::AccessId = access_ids[0].parse().unwrap();
    side.create_terminal_session(store::NewTerminalSession {
        access_id: recorded,
        org_id: org,
        router_id: router_id.parse().unwrap(),
        created_by: "admin".into(),
        at: chrono::Utc::now(),
    })
    .await
    .unwrap();
    side.append_terminal_chunk(recorded, 0, CAST).await.unwrap();
    side.close().await;
    let cookie = sign_in(&addr, "admin", &admin_password).await;
    assert_eq!(
        recording(&addr, &cookie, &site_id, &access_ids[0]).await,
        (200, CAST.to_owned())
    );

    // The backup, while the server runs (its orchestrator retrying the router's jobs).
    let backup = dir.path().join("backup");
    let (ok, said) = postern(&["admin", "backup", "--data-dir"], &[&data, &backup]);
    assert!(ok, "{said}");
    assert!(said.contains("secret.key"), "{said}");
    #[cfg(unix)]
    {
        assert_eq!(mode(&backup), 0o700);
        for file in ["postern.db", "secret.key", "backup.json"] {
            assert_eq!(mode(&backup.join(file)), 0o600, "{file}");
        }
    }
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(backup.join("backup.json")).unwrap()).unwrap();
    assert_eq!(manifest["backend"], "sqlite");
    assert_eq!(manifest["format"], 1);
    // A backup is never written over.
    let (ok, said) = postern(&["admin", "backup", "--data-dir"], &[&data, &backup]);
    assert!(!ok && said.contains("exists already"), "{said}");
    stop(s);

    // Restored into a new directory; a second restore there is refused without --force.
    let restored = dir.path().join("restored");
    let (ok, said) = postern(&["admin", "restore", "--data-dir"], &[&restored, &backup]);
    assert!(ok, "{said}");
    let (ok, said) = postern(&["admin", "restore", "--data-dir"], &[&restored, &backup]);
    assert!(!ok && said.contains("not empty"), "{said}");
    let (ok, said) = postern(
        &["admin", "restore", "--force", "--data-dir"],
        &[&restored, &backup],
    );
    assert!(ok, "{said}");
    #[cfg(unix)]
    {
        assert_eq!(mode(&restored), 0o700);
        assert_eq!(mode(&restored.join("secret.key")), 0o600);
        assert_eq!(mode(&restored.join("postern.db")), 0o600);
    }

    // A server on the restored directory: everything is there, the token works.
    let s = start(&restored);
    let addr = s.addr.clone();
    let (status, routers) = api(&addr, &token, "GET", "/api/routers", None).await;
    assert_eq!(status, 200, "the token authenticates: {routers}");
    assert_eq!(ids(&routers), vec![router_id.clone()]);
    let (_, grants) = api(&addr, &token, "GET", &access_path, None).await;
    assert_eq!(ids(&grants), access_ids);
    let (_, forwards) = api(&addr, &token, "GET", &forward_path, None).await;
    assert_eq!(ids(&forwards), vec![forward_id]);
    let (_, users) = api(&addr, &token, "GET", "/api/users", None).await;
    assert_eq!(users, users_before);
    assert!(ids(&users).contains(&user["id"].as_str().unwrap().to_owned()));
    // The router's management password still opens with the restored key: the grant's
    // credentials are readable (they are sealed the same way).
    let (status, creds) = api(
        &addr,
        &token,
        "GET",
        &format!("{access_path}/{}/credentials", access_ids[1]),
        None,
    )
    .await;
    assert_eq!(status, 200, "{creds}");
    assert!(!creds["password"].as_str().unwrap().is_empty());
    // The recording, through the portal, with the same admin password.
    let cookie = sign_in(&addr, "admin", &admin_password).await;
    assert_eq!(
        recording(&addr, &cookie, &site_id, &access_ids[0]).await,
        (200, CAST.to_owned())
    );
    stop(s);
}
