//! Routers behind NAT, onboarded by pasting the line into their console, reached only
//! through the management tunnel: a multi-host test in network namespaces.
//!
//! ```text
//!  operator 198.51.100.2 ─┐                      ┌─ 192.0.2.2 nat1 10.1.0.1 ── 10.1.0.2 r1 (sim) 192.168.88.1 ── lan1 192.168.88.10
//!                          hub (the internet) ───┤
//!  server 203.0.113.2 ────┘                      └─ 192.0.2.6 nat2 10.2.0.1 ── 10.2.0.2 r2 (sim, wireguard-go)
//! ```
//!
//! The NATs masquerade their LAN and drop everything that comes in unasked, and the hub
//! knows no route to 10.x or 192.168.x: nothing can reach a router but the tunnel the
//! router builds. r1's end of the tunnel is the sim's own userspace WireGuard; r2's is
//! Debian's `wireguard-go` on a TUN device, configured from what the script asked for.
//! The server's namespace is its own, so it listens on fixed ports there.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod hosts;
mod listening;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hosts::Hosts;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_postern");
const SERVER: &str = "203.0.113.2";
const OPERATOR: &str = "198.51.100.2";
const API_PORT: u16 = 8080;

/// An API call made from the operator's host (a thread inside its namespace with a
/// runtime of its own): `(status, body)`.
fn api(h: &Hosts, token: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let (token, method, path) = (token.to_owned(), method.to_owned(), path.to_owned());
    h.inside("operator", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = reqwest::Client::new();
            let url = format!("http://{SERVER}:{API_PORT}{path}");
            let mut req = client
                .request(method.parse().unwrap(), url)
                .bearer_auth(token)
                .timeout(Duration::from_secs(30));
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            let resp = req.send().await.expect("the API answers the operator");
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
            (status, v)
        })
    })
}

fn ok(h: &Hosts, token: &str, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = api(h, token, method, path, body);
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

/// Waits for `check` to hold, up to `limit`.
fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// The prefix of the devices of this run's wireguard-go routers: wireguard-go's control
/// sockets are shared by every namespace, so another run (the entry_tunnel benchmark)
/// must not find the same names.
fn sim_prefix() -> String {
    format!("wgt{}", std::process::id())
}

/// A sim router started on host `name`: its console's SSH port and admin password.
struct SimRouter {
    ssh_port: u16,
    password: String,
}

fn start_sim(h: &mut Hosts, name: &str, address: &str, external: bool) -> SimRouter {
    let mut cmd = h.command(name, BIN);
    cmd.args([
        "sim",
        "--routers",
        "1",
        "--base-address",
        address,
        "--routeros-version",
        "7.21.4",
    ]);
    if external {
        cmd.args([
            "--wireguard-external",
            "--wireguard-device-prefix",
            &sim_prefix(),
        ]);
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    h.keep(child);
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    SimRouter {
        ssh_port: v["ssh_port"].as_u64().unwrap() as u16,
        password: v["admin_password"].as_str().unwrap().to_owned(),
    }
}

/// Pastes `line` into the router's console over SSH from its own host, as an admin at
/// the router would; returns what the console printed.
fn paste(h: &Hosts, host: &str, address: &str, sim: &SimRouter, line: &str) -> String {
    let out = h.try_exec(
        host,
        &[
            "sshpass",
            "-p",
            &sim.password,
            "ssh",
            "-p",
            &sim.ssh_port.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            &format!("admin@{address}"),
            line,
        ],
    );
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the console refused the line: {printed}"
    );
    printed
}

/// OpenSSH from the operator's host through the entry port, with the grant's login.
fn ssh_through(h: &Hosts, port: u16, user: &str, password: &str, command: &str) -> (bool, String) {
    let out = h.try_exec(
        "operator",
        &[
            "sshpass",
            "-p",
            password,
            "ssh",
            "-p",
            &port.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
            &format!("{user}@{SERVER}"),
            command,
        ],
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// An SSH transient access for the operator, made and used through the entry port.
fn ssh_access(h: &Hosts, token: &str, router: &str) -> (String, u16, String, String) {
    let grant = ok(
        h,
        token,
        "POST",
        &format!("/api/routers/{router}/transient-access?wait=true"),
        Some(json!({ "type": "ssh", "allow_from": OPERATOR, "expire_after_minutes": 30 })),
    );
    assert_eq!(grant["status"], "active", "{grant}");
    let id = grant["id"].as_str().unwrap().to_owned();
    let creds = ok(
        h,
        token,
        "GET",
        &format!("/api/routers/{router}/transient-access/{id}/credentials"),
        None,
    );
    (
        id,
        creds["port"].as_u64().unwrap() as u16,
        creds["username"].as_str().unwrap().to_owned(),
        creds["password"].as_str().unwrap().to_owned(),
    )
}

/// The server: fixed ports inside its own namespace, lab mode (plain HTTP enrolment).
fn start_server(h: &mut Hosts, data: &std::path::Path) -> usize {
    let config = data.with_extension("toml");
    std::fs::write(
        &config,
        format!(
            r#"listen = "0.0.0.0:{API_PORT}"
lab_mode = true
public_url = "http://{SERVER}:{API_PORT}"
grant_min = "1s"
[[regions]]
name = "local"
entry_point = "{SERVER}"
port_min = 40000
port_max = 40999
tunnel_listen = "{SERVER}:51820"
"#
        ),
    )
    .unwrap();
    let mut child = h
        .command("server", BIN)
        .args(["server", "--log-format", "json", "--config"])
        .arg(&config)
        .arg("--data-dir")
        .arg(data)
        .env_remove("POSTERN_LISTEN")
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    listening::server_address(child.stderr.take().unwrap());
    h.keep(child)
}

#[test]
fn routers_behind_nat_enrol_with_the_pasted_line_and_are_reached_only_through_the_tunnel() {
    if !hosts::can_run(&[
        "ip",
        "nft",
        "wireguard-go",
        "wg",
        "ssh",
        "sshpass",
        "python3",
    ]) {
        return;
    }
    let mut h = Hosts::new();
    for name in [
        "hub", "server", "operator", "nat1", "r1", "lan1", "nat2", "r2",
    ] {
        h.host(name);
    }
    h.forwarding("hub");
    h.link("hub", "203.0.113.1/24", "server", &format!("{SERVER}/24"));
    h.link(
        "hub",
        "198.51.100.1/24",
        "operator",
        &format!("{OPERATOR}/24"),
    );
    let (_, nat1_wan) = h.link("hub", "192.0.2.1/30", "nat1", "192.0.2.2/30");
    let (_, nat2_wan) = h.link("hub", "192.0.2.5/30", "nat2", "192.0.2.6/30");
    h.default_route("server", "203.0.113.1");
    h.default_route("operator", "198.51.100.1");
    h.default_route("nat1", "192.0.2.1");
    h.default_route("nat2", "192.0.2.5");
    h.nat("nat1", &nat1_wan);
    h.nat("nat2", &nat2_wan);
    h.link("nat1", "10.1.0.1/24", "r1", "10.1.0.2/24");
    h.link("nat2", "10.2.0.1/24", "r2", "10.2.0.2/24");
    h.default_route("r1", "10.1.0.1");
    h.default_route("r2", "10.2.0.1");
    h.link("r1", "192.168.88.1/24", "lan1", "192.168.88.10/24");
    h.default_route("lan1", "192.168.88.1");

    // The LAN device: a web server only the LAN can reach (a few lines of Python's
    // socket module: `http.server` would first look its address up in the DNS, which
    // nothing here answers).
    const LAN_SERVER: &str = r#"import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("192.168.88.10", 8000))
s.listen()
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nlan device behind r1\n")
    c.close()
"#;
    let lan = h
        .command("lan1", "/usr/bin/python3")
        .args(["-c", LAN_SERVER])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    h.keep(lan);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = start_server(&mut h, &data);
    let out = Command::new(BIN)
        .args([
            "admin",
            "create-token",
            "--role",
            "admin",
            "--name",
            "e2e",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let h = Arc::new(std::sync::Mutex::new(h));
    let hh = || h.lock().unwrap();

    let sim1 = start_sim(&mut hh(), "r1", "10.1.0.2", false);
    let sim2 = start_sim(&mut hh(), "r2", "10.2.0.2", true);

    // Nothing but the tunnel: the server's host reaches neither router nor the LAN.
    for (to, what) in [
        ("10.1.0.2:8728", "r1's API"),
        ("10.2.0.2:8728", "r2's API"),
        ("192.168.88.10:8000", "the LAN device"),
    ] {
        let to: SocketAddr = to.parse().unwrap();
        assert!(
            !hh().can_connect("server", to, Duration::from_secs(1)),
            "the server's host reached {what} directly"
        );
    }

    // Add each site, paste its line into the router's console, and see it online.
    let mut routers = Vec::new();
    for (name, host, address, sim) in [
        ("branch-1", "r1", "10.1.0.2", &sim1),
        ("branch-2", "r2", "10.2.0.2", &sim2),
    ] {
        let site = ok(
            &hh(),
            &token,
            "POST",
            "/api/sites",
            Some(json!({ "name": name })),
        );
        let router = site["router_id"].as_str().unwrap().to_owned();
        let line = site["enrollment"]["command"].as_str().unwrap().to_owned();
        let pending = ok(
            &hh(),
            &token,
            "GET",
            &format!("/api/routers/{router}"),
            None,
        );
        assert_eq!(pending["status"], "pending", "{pending}");
        let started = Instant::now();
        let printed = paste(&hh(), host, address, sim, &line);
        let online = wait_for(&format!("{name} online"), Duration::from_secs(30), || {
            let r = ok(
                &hh(),
                &token,
                "GET",
                &format!("/api/routers/{router}"),
                None,
            );
            r["status"] == "online" && !r["tunnel"]["last_handshake_at"].is_null()
        });
        eprintln!(
            "{name}: pasted to online in {:?}, online seen {online:?} after the paste \
             returned (console said: {})",
            started.elapsed(),
            printed.trim()
        );
        assert!(printed.contains("enrolled"), "the script said: {printed}");
        let r = ok(
            &hh(),
            &token,
            "GET",
            &format!("/api/routers/{router}"),
            None,
        );
        assert_eq!(r["tunnel"]["type"], "wireguard", "{r}");
        assert!(
            r["tunnel"]["endpoint"]
                .as_str()
                .is_some_and(|e| e.starts_with(if host == "r1" {
                    "192.0.2.2:"
                } else {
                    "192.0.2.6:"
                })),
            "the gateway sees the router at its NAT's address: {r}"
        );
        routers.push((router, host, address, sim, line));
    }

    // OpenSSH through each router's entry port, with transient credentials.
    for (router, host, _, _, _) in &routers {
        let (id, port, user, password) = ssh_access(&hh(), &token, router);
        let (ok_, out) = ssh_through(&hh(), port, &user, &password, "/system identity print");
        assert!(ok_, "ssh through the entry port to {host}: {out}");
        assert!(out.contains("name:"), "{out}");
        // The temporary user may come only from the gateway's tunnel address.
        // Revoke ends it: the entry port refuses at once.
        let (status, _) = api(
            &hh(),
            &token,
            "DELETE",
            &format!("/api/routers/{router}/transient-access/{id}"),
            None,
        );
        assert_eq!(status, 204);
        let (ok_, _) = ssh_through(&hh(), port, &user, &password, "/system identity print");
        assert!(!ok_, "a revoked grant still let ssh in");
    }

    // A transient forward reaches the LAN device behind r1 (which only its LAN can
    // reach), until it expires.
    let lan_device: SocketAddr = "192.168.88.10:8000".parse().unwrap();
    wait_for("the LAN device to listen", Duration::from_secs(10), || {
        hh().can_connect("r1", lan_device, Duration::from_secs(1))
    });
    let router1 = routers[0].0.clone();
    let expires = chrono::Utc::now() + chrono::TimeDelta::seconds(8);
    let forward = ok(
        &hh(),
        &token,
        "POST",
        &format!("/api/routers/{router1}/transient-forwarding?wait=true"),
        Some(json!({
            "dst_address": "192.168.88.10",
            "dst_port": 8000,
            "allow_from": OPERATOR,
            "expires_at": expires.to_rfc3339(),
        })),
    );
    assert_eq!(forward["status"], "active", "{forward}");
    let port = forward["port"].as_u64().unwrap();
    let fetch = |h: &Hosts| {
        h.try_exec(
            "operator",
            &[
                "/usr/bin/python3",
                "-c",
                &format!(
                    "import urllib.request,sys; print(urllib.request.urlopen('http://{SERVER}:{port}/', timeout=5).read().decode())"
                ),
            ],
        )
    };
    let got = fetch(&hh());
    assert!(
        String::from_utf8_lossy(&got.stdout).contains("lan device behind r1"),
        "the forward did not reach the LAN device: {}",
        String::from_utf8_lossy(&got.stderr)
    );
    wait_for("the forward's expiry", Duration::from_secs(20), || {
        !fetch(&hh()).status.success()
    });

    // r2's NAT mapping changes (its WireGuard moves to a new source port): still reachable.
    hh().exec(
        "r2",
        &[
            "wg",
            "set",
            &format!("{}1", sim_prefix()),
            "listen-port",
            "40123",
        ],
    );
    let (router2, ..) = routers[1].clone();
    let (_, port, user, password) = ssh_access(&hh(), &token, &router2);
    let (ok_, out) = ssh_through(&hh(), port, &user, &password, "/system identity print");
    assert!(ok_, "after r2's new source port: {out}");

    // The gateway restarts (the whole server): routers come back, grants resume. (The
    // gateway records where each router is every 2 s; r2's new port is recorded first.)
    std::thread::sleep(Duration::from_secs(3));
    {
        let mut g = hh();
        let child = g.child(server);
        let _ = child.kill();
        let _ = child.wait();
    }
    let _server = start_server(&mut hh(), &data);
    for (router, host, ..) in &routers {
        let back = wait_for(
            &format!("{host} back after the restart"),
            Duration::from_secs(60),
            || {
                let (s, r) = api(
                    &hh(),
                    &token,
                    "GET",
                    &format!("/api/routers/{router}"),
                    None,
                );
                s == 200 && r["status"] == "online"
            },
        );
        eprintln!("{host} online again {back:?} after the server's restart");
    }
    let (ok_, out) = ssh_through(&hh(), port, &user, &password, "/system identity print");
    assert!(ok_, "the live grant resumed after the restart: {out}");

    // A spent token: pasting the same line again is refused with a clear word and
    // changes nothing.
    let (_, host, address, sim, line) = &routers[0];
    let again = hh().try_exec(
        host,
        &[
            "sshpass",
            "-p",
            &sim.password,
            "ssh",
            "-p",
            &sim.ssh_port.to_string(),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            &format!("admin@{address}"),
            line,
        ],
    );
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&again.stdout),
        String::from_utf8_lossy(&again.stderr)
    );
    eprintln!("a spent line pasted again: {}", said.trim());
    assert!(
        said.contains("410 Gone"),
        "a spent line is refused in words the console shows: {said}"
    );
    let r = ok(
        &hh(),
        &token,
        "GET",
        &format!("/api/routers/{}", routers[0].0),
        None,
    );
    assert_eq!(
        r["status"], "online",
        "a spent line changed the router: {r}"
    );
}
