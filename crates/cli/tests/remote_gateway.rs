//! A region served by a `postern gateway` process, as an operator deploys it on one
//! machine (loopback addresses stand for the hosts; the multi-host test runs the same in
//! network namespaces): `postern admin add-gateway`, the gateway's join, a router behind
//! NAT onboarded into the region by pasting its line, SSH through the gateway's entry
//! port, revoke. Then the failure behaviour: with the server killed the gateway keeps
//! what it had (an SSH login still works) and still closes a port at its deadline; a
//! restarted server converges it without touching a live session, and new grants open.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod listening;

mod gateway_dir;

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_postern");
/// The gateway host's address, and its entry ports'.
const GATEWAY_HOST: &str = "127.0.0.2";

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(dir: &Path) -> PathBuf {
    let path = dir.join("server.toml");
    std::fs::write(
        &path,
        format!(
            r#"lab_mode = true
grant_min = "5s"

[[regions]]
name = "local"
entry_point = "127.0.0.1"
port_min = 40000
port_max = 40999

[[regions]]
name = "eu"
entry_point = "{GATEWAY_HOST}"
port_min = 42000
port_max = 42999
tunnel_prefix = "100.64.7.0/24"
gateway = "remote"
"#
        ),
    )
    .unwrap();
    path
}

/// `postern server` on the data directory; its API address.
fn server(dir: &Path) -> (Proc, String) {
    let mut child = Command::new(BIN)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--config",
        ])
        .arg(config(dir))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("POSTERN_LISTEN")
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
        .env("POSTERN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening::server_address(child.stderr.take().unwrap());
    (Proc(child), format!("http://{addr}"))
}

fn admin(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("admin")
        .args(args)
        .arg("--config")
        .arg(config(dir))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "admin {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn api(url: &str, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut req = client
        .request(method.parse().unwrap(), format!("{url}{path}"))
        .bearer_auth(token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    (
        status,
        serde_json::from_str(&resp.text().unwrap()).unwrap_or(Value::Null),
    )
}

fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The gateway process: its stdout line says where its health endpoint is.
fn gateway(args: &[&str]) -> (Proc, String) {
    let mut child = Command::new(BIN)
        .arg("gateway")
        .args(args)
        .env("POSTERN_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let health = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|_| line.contains("health on http://"))
        .unwrap_or_else(|| panic!("the gateway's first line: {line:?}"))
        .to_owned();
    (Proc(child), health)
}

fn health(url: &str) -> Value {
    reqwest::blocking::get(format!("{url}/healthz"))
        .and_then(|r| r.json())
        .unwrap_or(Value::Null)
}

/// An SSH login's grant: username, password, port.
fn ssh_grant(
    url: &str,
    token: &str,
    router: &str,
    expires_at: Option<String>,
) -> (String, String, String, u16) {
    let mut body = json!({"type": "ssh", "allow_from": "127.0.0.1"});
    if let Some(at) = expires_at {
        body["expires_at"] = json!(at);
    }
    let (status, grant) = api(
        url,
        token,
        "POST",
        &format!("/api/routers/{router}/transient-access?wait=true"),
        Some(body),
    );
    assert_eq!(status, 201, "{grant}");
    assert_eq!(grant["status"], "active", "{grant}");
    assert_eq!(grant["entry_point"], GATEWAY_HOST, "{grant}");
    let id = grant["id"].as_str().unwrap().to_owned();
    let (status, creds) = api(
        url,
        token,
        "GET",
        &format!("/api/routers/{router}/transient-access/{id}/credentials"),
        None,
    );
    assert_eq!(status, 200, "{creds}");
    (
        id,
        grant["username"].as_str().unwrap().to_owned(),
        creds["password"].as_str().unwrap().to_owned(),
        u16::try_from(grant["port"].as_u64().unwrap()).unwrap(),
    )
}

fn ssh(user: &str, password: &str, port: u16, command: &str) -> Command {
    let mut c = Command::new("sshpass");
    c.args([
        "-p",
        password,
        "ssh",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
        "-p",
    ])
    .arg(port.to_string())
    .arg(format!("{user}@{GATEWAY_HOST}"))
    .arg(command)
    .stdin(Stdio::null());
    c
}

fn listens(port: u16) -> bool {
    let addr: SocketAddr = format!("{GATEWAY_HOST}:{port}").parse().unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

#[test]
fn a_remote_gateway_serves_its_region_and_keeps_its_deadlines_when_cut_off() {
    if Command::new("sshpass").arg("-V").output().is_err() {
        panic!("sshpass is needed (.ci/run installs it)");
    }
    let dir = tempfile::tempdir().unwrap();
    let (srv, url) = server(dir.path());
    let token = admin(dir.path(), &["create-token", "--role", "admin"]);

    // The region has no gateway yet: adding a site there says what to do.
    let (status, refused) = api(
        &url,
        &token,
        "POST",
        "/api/sites",
        Some(json!({"name": "eu-1", "region": "eu"})),
    );
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused["detail"].as_str().unwrap().contains("add-gateway"),
        "{refused}"
    );

    // Add the gateway, join it.
    let join = admin(dir.path(), &["add-gateway", "--region", "eu"]);
    let words: Vec<&str> = join.split_whitespace().collect();
    assert_eq!(words[..3], ["postern", "gateway", "--join"], "{join}");
    // (words[3] is the configured public URL; this server's port is ephemeral.)
    assert_eq!(words[4], "--token");
    let gw_dir = dir.path().join("gateway");
    let gw_data = gw_dir.to_str().unwrap().to_owned();
    let (mut gw, gw_health) = gateway(&[
        "--join",
        &url,
        "--token",
        words[5],
        "--data-dir",
        &gw_data,
        "--lab",
        "--control-listen",
        &format!("{GATEWAY_HOST}:0"),
        "--tunnel-listen",
        &format!("{GATEWAY_HOST}:0"),
        "--entry-bind",
        GATEWAY_HOST,
        "--http-listen",
        &format!("{GATEWAY_HOST}:0"),
    ]);
    // Its data directory: its identity and keys, no database credentials.
    gateway_dir::holds_only_its_identity(&gw_dir, &["postgres", "sqlite", "database", "secret"]);
    let identity = std::fs::read_to_string(gw_dir.join("gateway.toml")).unwrap();
    // The same token does not join twice.
    let again = Command::new(BIN)
        .args([
            "gateway",
            "--join",
            &url,
            "--token",
            words[5],
            "--lab",
            "--data-dir",
        ])
        .arg(dir.path().join("gateway-2"))
        .args([
            "--control-listen",
            "127.0.0.1:0",
            "--tunnel-listen",
            "127.0.0.1:0",
            "--entry-bind",
            "127.0.0.1",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not valid"),
        "{again:?}"
    );

    until(
        "the server drives the gateway",
        Duration::from_secs(20),
        || health(&gw_health)["control"] == "connected",
    );

    // A router behind NAT, onboarded into the region by pasting its line.
    let (status, site) = api(
        &url,
        &token,
        "POST",
        "/api/sites",
        Some(json!({"name": "eu-1", "region": "eu"})),
    );
    assert_eq!(status, 201, "{site}");
    let router = site["router_id"].as_str().unwrap().to_owned();
    let line = site["enrollment"]["command"].as_str().unwrap().to_owned();
    let mut sim = Command::new(BIN)
        .args([
            "sim",
            "--behind-nat",
            "--console",
            "--base-address",
            "127.0.3.1",
            "--admin-password",
            "sim-admin-pw",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut console = sim.stdin.take().unwrap();
    let mut printed = sim.stdout.take().unwrap();
    let sim = Proc(sim);
    writeln!(console, "{line}").unwrap();
    until(
        "the router is online through the gateway's tunnel",
        Duration::from_secs(40),
        || {
            let (_, r) = api(&url, &token, "GET", &format!("/api/routers/{router}"), None);
            r["status"] == "online" && r["tunnel"]["gateway_address"] == "100.64.7.1"
        },
    );

    // SSH through the gateway's entry port, to the router inside the tunnel.
    let (first, user, password, port) = ssh_grant(&url, &token, &router, None);
    let out = ssh(&user, &password, port, "/system identity print")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("name: sim-1"),
        "{out:?}"
    );
    // Revoked: the gateway's port closes within a second.
    let (status, _) = api(
        &url,
        &token,
        "DELETE",
        &format!("/api/routers/{router}/transient-access/{first}"),
        None,
    );
    assert_eq!(status, 204);
    let revoked = Instant::now();
    until("the revoked port closes", Duration::from_secs(1), || {
        !listens(port)
    });
    eprintln!("revoke to closed port: {:?}", revoked.elapsed());
    let (_, conns) = api(
        &url,
        &token,
        "GET",
        &format!("/api/routers/{router}/transient-access/{first}/connections"),
        None,
    );
    // The SSH login, recorded with its bytes (the probes of the port are there too).
    assert!(
        conns
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["end_reason"] == "finished" && c["bytes_from_client"].as_u64() > Some(1000)),
        "{conns}"
    );

    // Cut off: the server is killed. What the gateway had goes on; a deadline still
    // closes its port on time.
    let short_end = Utc::now() + chrono::Duration::seconds(10);
    let (_, s_user, s_password, short_port) =
        ssh_grant(&url, &token, &router, Some(short_end.to_rfc3339()));
    let (long, l_user, l_password, long_port) = ssh_grant(&url, &token, &router, None);
    // A session that lasts across the server's death and restart.
    let mut live = ssh(
        &l_user,
        &l_password,
        long_port,
        ":delay 12s; /system identity print",
    )
    .stdout(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    drop(srv);
    until(
        "the gateway sees its server gone",
        Duration::from_secs(40),
        || health(&gw_health)["control"] == "disconnected",
    );
    let out = ssh(&s_user, &s_password, short_port, "/system identity print")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("name: sim-1"),
        "cut off, a login it had still works: {out:?}"
    );
    until(
        "the short grant's port closes at its deadline",
        Duration::from_secs(20),
        || !listens(short_port),
    );
    let late = Utc::now() - short_end;
    eprintln!("closed {late} after the deadline, cut off");
    assert!(
        late < chrono::Duration::milliseconds(1500),
        "closed {late} after its deadline"
    );
    assert!(listens(long_port), "the long grant's port stays open");

    // A new server on the same database converges the gateway; the live session is
    // untouched; a revoke and a new grant work.
    let (_srv2, url2) = server(dir.path());
    until(
        "the new server drives the gateway",
        Duration::from_secs(20),
        || health(&gw_health)["control"] == "connected",
    );
    let status = live.wait().unwrap();
    let mut said = String::new();
    live.stdout
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert!(
        status.success() && said.contains("name: sim-1"),
        "the live session survived: {status:?} {said:?}"
    );
    let (status, _) = api(
        &url2,
        &token,
        "DELETE",
        &format!("/api/routers/{router}/transient-access/{long}"),
        None,
    );
    assert_eq!(status, 204);
    until(
        "the long grant's port closes on revoke",
        Duration::from_secs(1),
        || !listens(long_port),
    );
    let (_, user, password, port) = ssh_grant(&url2, &token, &router, None);
    let out = ssh(&user, &password, port, "/system identity print")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("name: sim-1"),
        "{out:?}"
    );

    // The gateway's own figures.
    let metrics = reqwest::blocking::get(format!("{gw_health}/metrics"))
        .unwrap()
        .text()
        .unwrap();
    for line in [
        "postern_gateway_control_connected 1",
        "postern_gateway_tunnel_peers_up{region=\"eu\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    // The control certificate's end: a year from the join (renewed at a third left).
    let expires: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("postern_gateway_certificate_expires_seconds "))
        .unwrap_or_else(|| panic!("no certificate expiry in {metrics}"))
        .parse()
        .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        expires > now + 364.0 * 86_400.0 && expires < now + 366.0 * 86_400.0,
        "{expires}"
    );

    // Removed by an administrator: the servers stop driving it, and once more is refused.
    let gateway_id = identity
        .lines()
        .find_map(|l| l.strip_prefix("gateway_id = "))
        .unwrap()
        .trim_matches('"')
        .to_owned();
    admin(dir.path(), &["remove-gateway", "--id", &gateway_id]);
    until(
        "the removed gateway is no longer driven",
        Duration::from_secs(20),
        || health(&gw_health)["control"] == "disconnected",
    );
    let again = Command::new(BIN)
        .args(["admin", "remove-gateway", "--id", &gateway_id, "--config"])
        .arg(config(dir.path()))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!again.status.success(), "{again:?}");
    drop(console);
    let _ = printed.read(&mut [0; 1]);
    drop(sim);
    let _ = gw.0.kill();
    let _ = gw.0.wait();
}
