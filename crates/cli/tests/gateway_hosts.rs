//! Two regions served by `postern gateway` processes on hosts of their own, driven by two
//! `postern server` processes on one PostgreSQL: a multi-host test in network namespaces.
//!
//! ```text
//!                                    ┌─ 192.0.2.2  gw-eu (postern gateway, region eu)
//!  control 203.0.113.2 ──┐           ├─ 192.0.2.6  gw-us (postern gateway, region us)
//!  (PostgreSQL :5432,    ├── hub ────┼─ 192.0.2.10 nat-eu 10.1.0.1 ── 10.1.0.2 r-eu (sim behind NAT)
//!   servers A :8080,     │           └─ 192.0.2.14 nat-us 10.2.0.1 ── 10.2.0.2 r-us (sim behind NAT)
//!   B :8081)             │
//!  operator 198.51.100.2 ┘
//! ```
//!
//! The NATs masquerade their LAN and drop whatever comes in unasked; the hub knows no
//! route to 10.x: a router is reached only through the tunnel it builds to its region's
//! gateway. Each gateway joins once (`postern admin add-gateway`), then the servers dial
//! it. What is checked, as an operator sees it:
//! - each router, onboarded into its region by pasting its line into its console, serves
//!   OpenSSH logins through its region's entry point (the gateway host's address);
//! - the orchestrator of either server reaches the routers of both regions (the other
//!   server paused while it works, so the job log names the one that did it);
//! - a gateway cut off from the servers (its packets to and from the control host dropped
//!   on the hub, not those of operators or routers) keeps its deadlines and its logins,
//!   and converges within seconds of the link's return (a grant revoked meanwhile is
//!   closed, a new one opens, a session across the cut lives on);
//! - `kill -9` of a server in the middle of router jobs loses nothing: the other server
//!   finishes them, and their logins work;
//! - a gateway's data directory holds no database credentials, and no packet from a
//!   gateway host ever goes to a PostgreSQL port (nftables counters on each gateway host
//!   and on the control host, which does count the servers' own connections), nor does
//!   the gateway process hold such a socket.

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

mod hosts;

mod gateway_dir;

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use chrono::Utc;
use hosts::Hosts;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_postern");
const CONTROL: &str = "203.0.113.2";
const OPERATOR: &str = "198.51.100.2";
const PG_PORT: u16 = 5432;
const PORT_A: u16 = 8080;
const PORT_B: u16 = 8081;
const CONTROL_PORT: u16 = 7443;
const HEALTH_PORT: u16 = 9810;

/// A region and the hosts that serve it.
struct Region {
    name: &'static str,
    /// The gateway's host and address (its entry point).
    gateway: &'static str,
    gateway_addr: &'static str,
    /// The gateway's address inside the region's tunnel.
    tunnel_gateway: &'static str,
    nat: &'static str,
    nat_wan: &'static str,
    router: &'static str,
    router_addr: &'static str,
    /// The name the router's admin gives it, which SSH logins print.
    identity: &'static str,
}

const EU: Region = Region {
    name: "eu",
    gateway: "gw-eu",
    gateway_addr: "192.0.2.2",
    tunnel_gateway: "100.64.7.1",
    nat: "nat-eu",
    nat_wan: "192.0.2.10",
    router: "r-eu",
    router_addr: "10.1.0.2",
    identity: "branch-paris",
};

const US: Region = Region {
    name: "us",
    gateway: "gw-us",
    gateway_addr: "192.0.2.6",
    tunnel_gateway: "100.64.8.1",
    nat: "nat-us",
    nat_wan: "192.0.2.14",
    router: "r-us",
    router_addr: "10.2.0.2",
    identity: "branch-denver",
};

fn config(dir: &Path) -> PathBuf {
    let path = dir.join("server.toml");
    std::fs::write(
        &path,
        format!(
            r#"lab_mode = true
public_url = "http://{CONTROL}:{PORT_A}"
grant_min = "1s"

[[regions]]
name = "eu"
entry_point = "{}"
port_min = 42000
port_max = 42099
tunnel_prefix = "100.64.7.0/24"
gateway = "remote"

[[regions]]
name = "us"
entry_point = "{}"
port_min = 43000
port_max = 43099
tunnel_prefix = "100.64.8.0/24"
gateway = "remote"
"#,
            EU.gateway_addr, US.gateway_addr
        ),
    )
    .unwrap();
    path
}

/// Waits for `check` to hold, up to `limit`; how long it took.
fn until(what: &str, limit: Duration, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

/// The processes' logs: on a failure their tails are printed.
struct Logs(PathBuf);

impl Logs {
    fn file(&self, name: &str) -> std::fs::File {
        std::fs::File::create(self.0.join(format!("{name}.log"))).unwrap()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut files: Vec<_> = std::fs::read_dir(&self.0)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("---- {} (last lines)", file.display());
            for line in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{line}");
            }
        }
    }
}

/// PostgreSQL on the control host, on TCP with a password (as a deployment would run
/// it): stopped first when the test ends, however it ends.
struct Postgres {
    child: Child,
    url: String,
    password: String,
    psql: PathBuf,
    dir: tempfile::TempDir,
}

impl Postgres {
    /// A query's result through its Unix socket (`psql`, unaligned, no headers).
    fn query(&self, sql: &str) -> String {
        let out = Command::new(&self.psql)
            .args(["-h", self.dir.path().to_str().unwrap()])
            .args([
                "-p",
                &PG_PORT.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-tAc", sql])
            .env("PGPASSWORD", &self.password)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // A fast shutdown (SIGINT), so no shared memory is left behind.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_postgres(h: &Hosts, logs: &Logs) -> Postgres {
    let bin = harness::find_bin_dir()
        .expect("PostgreSQL's binaries (initdb, postgres): .ci/run installs them");
    // PostgreSQL refuses to run as root: `nobody` owns its directory (under /tmp, which
    // `nobody` can reach).
    let (prefix, ids) = harness::unprivileged();
    let dir = tempfile::Builder::new()
        .prefix("postern-pg-hosts-")
        .tempdir_in("/tmp")
        .unwrap();
    let password = uuid::Uuid::new_v4().simple().to_string();
    let pwfile = dir.path().join("pw");
    std::fs::write(&pwfile, &password).unwrap();
    if let Some((u, g)) = ids {
        std::os::unix::fs::chown(dir.path(), Some(u), Some(g)).unwrap();
        std::os::unix::fs::chown(&pwfile, Some(u), Some(g)).unwrap();
    }
    let data = dir.path().join("data");
    let as_postgres = |program: &str| {
        let mut c = Command::new(prefix.first().map_or(program, |p| p.as_str()));
        if !prefix.is_empty() {
            c.args(&prefix[1..]).arg(program);
        }
        c
    };
    let out = as_postgres(bin.join("initdb").to_str().unwrap())
        .args(["-D", data.to_str().unwrap(), "-U", "postgres", "-E", "UTF8"])
        .args(["-A", "scram-sha-256", "--pwfile", pwfile.to_str().unwrap()])
        .args(["--no-sync", "--no-instructions"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Any host may try (only the password keeps a stranger out): so a gateway host's
    // attempt would be a real connection, and the counter would see it.
    let mut hba = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("pg_hba.conf"))
        .unwrap();
    writeln!(hba, "host all all 0.0.0.0/0 scram-sha-256").unwrap();
    drop(hba);
    let mut cmd = h.command("control", prefix.first().map_or("postgres", |p| p.as_str()));
    if !prefix.is_empty() {
        cmd.args(&prefix[1..]).arg(bin.join("postgres"));
    }
    let child = cmd
        .args([
            "-D",
            data.to_str().unwrap(),
            "-k",
            dir.path().to_str().unwrap(),
        ])
        .args(["-c", &format!("listen_addresses={CONTROL}")])
        .args(["-p", &PG_PORT.to_string()])
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logs.file("postgres"))
        .spawn()
        .unwrap();
    let pg = Postgres {
        child,
        url: format!("postgres://postgres:{password}@{CONTROL}:{PG_PORT}/postgres"),
        password,
        psql: bin.join("psql"),
        dir,
    };
    let isready = bin.join("pg_isready");
    until("PostgreSQL accepts", Duration::from_secs(30), || {
        h.try_exec(
            "control",
            &[
                isready.to_str().unwrap(),
                "-q",
                "-h",
                CONTROL,
                "-p",
                &PG_PORT.to_string(),
            ],
        )
        .status
        .success()
    });
    pg
}

/// A `postern server` on the control host: its index in the hosts, pid and API URL.
struct Server {
    index: usize,
    pid: u32,
    url: String,
}

fn start_server(
    h: &mut Hosts,
    logs: &Logs,
    name: &str,
    dir: &Path,
    pg: &Postgres,
    port: u16,
) -> Server {
    let mut child = h
        .command("control", BIN)
        .args(["server", "--log-format", "json", "--listen"])
        .arg(format!("{CONTROL}:{port}"))
        .arg("--config")
        .arg(config(dir))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--database-url", &pg.url])
        .env_remove("POSTERN_LISTEN")
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
        .env("POSTERN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Its log goes to a file; the "listening" line says it is ready.
    let stderr = child.stderr.take().unwrap();
    let mut log = logs.file(name);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(log, "{line}");
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["fields"]["message"] == "postern server listening"
            {
                let _ = tx.send(());
            }
        }
    });
    let index = h.keep(child);
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("server {name} never said it listens"));
    Server {
        index,
        pid,
        url: format!("http://{CONTROL}:{port}"),
    }
}

/// `postern admin …` on the control host (it reaches the database there).
fn admin(h: &Hosts, dir: &Path, pg: &Postgres, args: &[&str]) -> String {
    let mut cmd = h.command("control", BIN);
    let out = cmd
        .arg("admin")
        .args(args)
        .arg("--config")
        .arg(config(dir))
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--database-url", &pg.url])
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

/// Sends a signal to a process (`STOP`, `CONT`).
fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid}");
}

/// An HTTP call made from the operator's host: `(status, body)`.
fn http(h: &Hosts, token: &str, method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    let (token, method, url) = (token.to_owned(), method.to_owned(), url.to_owned());
    h.inside("operator", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let client = reqwest::Client::new();
            let mut req = client
                .request(method.parse().unwrap(), &url)
                .timeout(Duration::from_secs(30));
            if !token.is_empty() {
                req = req.bearer_auth(token);
            }
            if let Some(b) = body {
                req = req
                    .header("content-type", "application/json")
                    .body(b.to_string());
            }
            match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let text = resp.text().await.unwrap_or_default();
                    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
                    (status, v)
                }
                Err(e) => (0, Value::String(e.to_string())),
            }
        })
    })
}

/// An API call through server `server` that must succeed.
fn ok(
    h: &Hosts,
    server: &Server,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Value {
    let (status, v) = http(h, token, method, &format!("{}{path}", server.url), body);
    assert!(
        (200..300).contains(&status),
        "{method} {path} through {}: {status} {v}",
        server.url
    );
    v
}

/// A gateway host's `/healthz`, read from the operator's host.
fn health(h: &Hosts, region: &Region) -> Value {
    http(
        h,
        "",
        "GET",
        &format!("http://{}:{HEALTH_PORT}/healthz", region.gateway_addr),
        None,
    )
    .1
}

/// A `postern gateway` on its host: its pid and data directory.
struct Gateway {
    pid: u32,
    data: PathBuf,
}

fn start_gateway(
    h: &mut Hosts,
    logs: &Logs,
    region: &Region,
    join: &[&str],
    data: &Path,
) -> Gateway {
    let addr = region.gateway_addr;
    let mut child = h
        .command(region.gateway, BIN)
        .arg("gateway")
        .args(join)
        .arg("--data-dir")
        .arg(data)
        .args(["--control-listen", &format!("{addr}:{CONTROL_PORT}")])
        .args(["--tunnel-listen", &format!("{addr}:51820")])
        .args(["--entry-bind", addr])
        .args(["--http-listen", &format!("{addr}:{HEALTH_PORT}")])
        .env("POSTERN_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(logs.file(region.gateway))
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    h.keep(child);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(
        line.contains(&format!("of region {}", region.name))
            && line.contains(&format!("health on http://{addr}:{HEALTH_PORT}")),
        "the gateway's first line: {line:?}"
    );
    // Whatever else it prints is read and dropped.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    Gateway {
        pid,
        data: data.to_owned(),
    }
}

/// A sim router behind its NAT, with its serial console.
struct Sim {
    pid: u32,
    console: ChildStdin,
    printed: mpsc::Receiver<String>,
}

impl Sim {
    /// Types `line` at the console; what it printed within `wait`.
    fn type_line(&mut self, line: &str, wait: Duration) -> String {
        while self.printed.try_recv().is_ok() {}
        writeln!(self.console, "{line}").unwrap();
        self.console.flush().unwrap();
        let mut said = String::new();
        let end = Instant::now() + wait;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.printed.recv_timeout(left) {
                Ok(l) => {
                    said.push_str(&l);
                    said.push('\n');
                }
                Err(_) => break,
            }
        }
        said
    }
}

fn start_sim(h: &mut Hosts, region: &Region) -> Sim {
    let mut child = h
        .command(region.router, BIN)
        .args(["sim", "--behind-nat", "--console", "--base-address"])
        .arg(region.router_addr)
        .args([
            "--admin-password",
            "sim-admin-pw",
            "--routeros-version",
            "7.21.4",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let console = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    h.keep(child);
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    assert_eq!(v["behind_nat"], true, "{v}");
    let (tx, printed) = mpsc::channel();
    std::thread::spawn(move || {
        for line in out.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Sim {
        pid,
        console,
        printed,
    }
}

/// An SSH grant for the operator: id, port, username, password.
struct Grant {
    id: String,
    port: u16,
    user: String,
    password: String,
}

fn credentials(h: &Hosts, server: &Server, token: &str, router: &str, id: &str) -> Grant {
    let creds = ok(
        h,
        server,
        token,
        "GET",
        &format!("/api/routers/{router}/transient-access/{id}/credentials"),
        None,
    );
    Grant {
        id: id.to_owned(),
        port: u16::try_from(creds["port"].as_u64().unwrap()).unwrap(),
        user: creds["username"].as_str().unwrap().to_owned(),
        password: creds["password"].as_str().unwrap().to_owned(),
    }
}

/// A grant made through `server`, waited for until active.
fn grant(
    h: &Hosts,
    server: &Server,
    token: &str,
    region: &Region,
    router: &str,
    expires_at: Option<chrono::DateTime<Utc>>,
) -> Grant {
    let mut body = json!({"type": "ssh", "allow_from": OPERATOR, "expire_after_minutes": 30});
    if let Some(at) = expires_at {
        body = json!({"type": "ssh", "allow_from": OPERATOR, "expires_at": at.to_rfc3339()});
    }
    let g = ok(
        h,
        server,
        token,
        "POST",
        &format!("/api/routers/{router}/transient-access?wait=true"),
        Some(body),
    );
    assert_eq!(g["status"], "active", "{g}");
    assert_eq!(g["entry_point"], region.gateway_addr, "{g}");
    credentials(h, server, token, router, g["id"].as_str().unwrap())
}

fn ssh_args(region: &Region, g: &Grant, command: &str) -> Vec<String> {
    [
        "-p",
        &g.password,
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
        &g.port.to_string(),
        &format!("{}@{}", g.user, region.gateway_addr),
        command,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// OpenSSH from the operator's host through the region's entry point: runs
/// `/system identity print` and insists it was the region's router that answered.
fn ssh_identity(h: &Hosts, region: &Region, g: &Grant, what: &str) {
    let args = ssh_args(region, g, "/system identity print");
    let mut argv = vec!["sshpass"];
    argv.extend(args.iter().map(String::as_str));
    let out = h.try_exec("operator", &argv);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains(&format!("name: {}", region.identity)),
        "{what}: ssh through {}:{} said {said:?} {}",
        region.gateway_addr,
        g.port,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether the operator's host can open a TCP connection to the grant's entry port.
fn accepts(h: &Hosts, region: &Region, g: &Grant) -> bool {
    let to: SocketAddr = format!("{}:{}", region.gateway_addr, g.port)
        .parse()
        .unwrap();
    h.can_connect("operator", to, Duration::from_millis(700))
}

/// The router's jobs, as the API shows them.
fn jobs(h: &Hosts, server: &Server, token: &str, router: &str) -> Vec<Value> {
    ok(
        h,
        server,
        token,
        "GET",
        &format!("/api/routers/{router}/jobs?limit=500"),
        None,
    )
    .as_array()
    .unwrap()
    .clone()
}

/// The creation job of grant `id` among `jobs` (its first line names the grant), once
/// its first lines are written.
fn find_creation<'a>(jobs: &'a [Value], id: &str) -> Option<&'a Value> {
    jobs.iter().find(|j| {
        j["kind"] == "access.create"
            && j["lines"].as_array().is_some_and(|l| {
                l.iter()
                    .any(|l| l["message"].as_str().unwrap().contains(id))
            })
    })
}

fn creation<'a>(jobs: &'a [Value], id: &str) -> &'a Value {
    find_creation(jobs, id).unwrap_or_else(|| panic!("no creation job for grant {id}: {jobs:?}"))
}

fn job_text(job: &Value) -> String {
    job["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["message"].as_str().unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// An nftables named counter's packets on host `name`.
fn counter(h: &Hosts, name: &str, table: &str, counter: &str) -> u64 {
    let out = h.exec(name, &["nft", "list", "counter", "inet", table, counter]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packets in {text}"))
}

/// The (local, remote) ports of the TCP sockets process `pid` holds open (read from
/// its namespace's table).
fn tcp_sockets(pid: u32) -> Vec<(u16, u16)> {
    let mut inodes = std::collections::HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(fd.path()) {
            let t = target.to_string_lossy().into_owned();
            if let Some(inode) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let port = |field: &str| u16::from_str_radix(field.rsplit(':').next().unwrap(), 16).unwrap();
    let mut sockets = Vec::new();
    for table in ["tcp", "tcp6"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && inodes.contains(f[9]) {
                sockets.push((port(f[1]), port(f[2])));
            }
        }
    }
    sockets
}

/// Pauses a server (`SIGSTOP`), at a moment it holds no transaction open: a paused
/// transaction would keep its locks from the other server until it resumes.
fn pause(pg: &Postgres, pid: u32) {
    for _ in 0..100 {
        signal(pid, "STOP");
        let ports: Vec<String> = tcp_sockets(pid)
            .into_iter()
            .filter(|(_, remote)| *remote == PG_PORT)
            .map(|(local, _)| local.to_string())
            .collect();
        assert!(
            !ports.is_empty(),
            "server {pid} holds no connection to the database"
        );
        let open = pg.query(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE client_port IN ({}) \
             AND state LIKE 'idle in transaction%'",
            ports.join(",")
        ));
        if open == "0" {
            return;
        }
        signal(pid, "CONT");
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("server {pid} is always in a transaction");
}

#[test]
fn two_regions_behind_remote_gateways_with_two_servers_on_one_postgres() {
    if !hosts::can_run(&["ip", "nft", "ssh", "sshpass"]) {
        return;
    }
    let started = Instant::now();
    let phase = |what: &str| eprintln!("[{:>6.1?}] {what}", started.elapsed());
    let dir = tempfile::tempdir().unwrap();
    let logs = Logs(dir.path().to_owned());
    let mut h = Hosts::new();
    for name in [
        "hub", "control", "operator", "gw-eu", "gw-us", "nat-eu", "nat-us", "r-eu", "r-us",
    ] {
        h.host(name);
    }
    h.forwarding("hub");
    h.link("hub", "203.0.113.1/24", "control", &format!("{CONTROL}/24"));
    h.link(
        "hub",
        "198.51.100.1/24",
        "operator",
        &format!("{OPERATOR}/24"),
    );
    h.default_route("control", "203.0.113.1");
    h.default_route("operator", "198.51.100.1");
    for (region, hub_side) in [
        (&EU, ["192.0.2.1", "192.0.2.9"]),
        (&US, ["192.0.2.5", "192.0.2.13"]),
    ] {
        h.link(
            "hub",
            &format!("{}/30", hub_side[0]),
            region.gateway,
            &format!("{}/30", region.gateway_addr),
        );
        h.default_route(region.gateway, hub_side[0]);
        let (_, wan) = h.link(
            "hub",
            &format!("{}/30", hub_side[1]),
            region.nat,
            &format!("{}/30", region.nat_wan),
        );
        h.default_route(region.nat, hub_side[1]);
        h.nat(region.nat, &wan);
        let lan = region.router_addr.rsplit_once('.').unwrap().0;
        h.link(
            region.nat,
            &format!("{lan}.1/24"),
            region.router,
            &format!("{}/24", region.router_addr),
        );
        h.default_route(region.router, &format!("{lan}.1"));
        h.nft(
            region.gateway,
            &format!(
                "table inet postern_watch {{
  counter to_pg {{}}
  chain output {{ type filter hook output priority filter; policy accept;
    tcp dport {PG_PORT} counter name to_pg
  }}
}}
"
            ),
        );
    }
    // Each gateway host counts what it sends to any PostgreSQL port, and the control host
    // what reaches its own: every new connection,
    // and anything at all from a gateway host.
    h.nft(
        "control",
        &format!(
            "table inet postern_watch {{
  counter pg_connections {{}}
  counter gateways_to_pg {{}}
  chain input {{ type filter hook input priority filter; policy accept;
    ip saddr {{ {}, {} }} tcp dport {PG_PORT} counter name gateways_to_pg
    tcp dport {PG_PORT} ct state new counter name pg_connections
  }}
}}
",
            EU.gateway_addr, US.gateway_addr
        ),
    );

    // The control host: PostgreSQL, servers A and B on it, an admin token.
    let pg = start_postgres(&h, &logs);
    phase("PostgreSQL up");
    let a = start_server(&mut h, &logs, "server-a", dir.path(), &pg, PORT_A);
    let b = start_server(&mut h, &logs, "server-b", dir.path(), &pg, PORT_B);
    phase("servers A and B up");
    let token = admin(
        &h,
        dir.path(),
        &pg,
        &["create-token", "--role", "admin", "--name", "e2e"],
    );

    // Each region's gateway: added with `postern admin add-gateway`, joined from its host
    // (eu with the printed line's URL, server A's; us through server B).
    let mut gateways = Vec::new();
    for (region, via) in [(&EU, &a), (&US, &b)] {
        let line = admin(
            &h,
            dir.path(),
            &pg,
            &["add-gateway", "--region", region.name],
        );
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[..3], ["postern", "gateway", "--join"], "{line}");
        assert_eq!(
            words[3], a.url,
            "the printed line joins at the public URL: {line}"
        );
        assert_eq!(words[4], "--token", "{line}");
        let data = dir.path().join(format!("gateway-{}", region.name));
        let gw = start_gateway(
            &mut h,
            &logs,
            region,
            &["--join", &via.url, "--token", words[5], "--lab"],
            &data,
        );
        gateways.push(gw);
    }
    for region in [&EU, &US] {
        until(
            &format!("both servers drive the {} gateway", region.name),
            Duration::from_secs(30),
            || {
                let v = health(&h, region);
                v["control"] == "connected" && v["servers"] == 2
            },
        );
    }
    phase("gateways joined, both servers drive both");

    // A router behind NAT in each region, onboarded by pasting its line into its
    // console; its admin names it.
    let mut routers = Vec::new();
    let mut sims = Vec::new();
    for (region, via) in [(&EU, &a), (&US, &b)] {
        let mut sim = start_sim(&mut h, region);
        let site = ok(
            &h,
            via,
            &token,
            "POST",
            "/api/sites",
            Some(json!({"name": format!("{}-branch", region.name), "region": region.name})),
        );
        let router = site["router_id"].as_str().unwrap().to_owned();
        let line = site["enrollment"]["command"].as_str().unwrap().to_owned();
        let said = sim.type_line(&line, Duration::from_millis(500));
        let online = until(
            &format!("the {} router online through its gateway", region.name),
            Duration::from_secs(40),
            || {
                let r = ok(
                    &h,
                    via,
                    &token,
                    "GET",
                    &format!("/api/routers/{router}"),
                    None,
                );
                r["status"] == "online" && r["tunnel"]["gateway_address"] == region.tunnel_gateway
            },
        );
        eprintln!(
            "{}: online {online:?} after the paste (console: {})",
            region.name,
            said.trim()
        );
        sim.type_line(
            &format!("/system identity set name={}", region.identity),
            Duration::ZERO,
        );
        routers.push(router);
        sims.push(sim);
    }
    // Both servers see both routers where their gateways see them: at their NAT.
    for server in [&a, &b] {
        for (region, router) in [(&EU, &routers[0]), (&US, &routers[1])] {
            until(
                "the router's endpoint as its gateway sees it",
                Duration::from_secs(10),
                || {
                    let r = ok(
                        &h,
                        server,
                        &token,
                        "GET",
                        &format!("/api/routers/{router}"),
                        None,
                    );
                    r["tunnel"]["endpoint"]
                        .as_str()
                        .is_some_and(|e| e.starts_with(&format!("{}:", region.nat_wan)))
                },
            );
        }
    }
    // Nothing but the tunnels: neither the control host nor the operator's reaches a
    // router directly.
    for host in ["control", "operator"] {
        for region in [&EU, &US] {
            let to: SocketAddr = format!("{}:22", region.router_addr).parse().unwrap();
            assert!(!h.can_connect(host, to, Duration::from_millis(500)));
        }
    }
    phase("both routers online");

    // The orchestrator of either server reaches the routers of both regions: grants
    // through A while B is paused, then through B while A is paused, so each job is
    // done by the server it was asked of (the job log names the worker).
    let mut made = Vec::new(); // (server, region index, grant)
    for (server, paused) in [(&a, &b), (&b, &a)] {
        pause(&pg, paused.pid);
        for (i, region) in [&EU, &US].into_iter().enumerate() {
            let g = grant(&h, server, &token, region, &routers[i], None);
            made.push((server.pid, i, g));
        }
        signal(paused.pid, "CONT");
    }
    for (pid, i, g) in &made {
        let region = [&EU, &US][*i];
        ssh_identity(&h, region, g, "a grant of either server");
        let jobs = jobs(&h, &b, &token, &routers[*i]);
        let job = creation(&jobs, &g.id);
        assert_eq!(job["state"], "completed", "{job}");
        let text = job_text(job);
        assert!(
            text.contains(&format!("started by worker {pid}-")),
            "the {} router's job was done by server {pid}: {text}",
            region.name
        );
    }
    phase("grants of both servers in both regions: SSH works");

    // Cut off: the eu gateway's packets to and from the control host are dropped on the
    // hub (operators and routers still reach it).
    let (long, revokee) = (&made[0].2, &made[2].2);
    // A session that lasts across the cut.
    let mut live = {
        let mut c = h.command("operator", "sshpass");
        c.args(ssh_args(&EU, long, ":delay 40s; /system identity print"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c.spawn().unwrap()
    };
    std::thread::sleep(Duration::from_millis(1500));
    // A grant that ends while the gateway is cut off (the deadline leaves time for
    // the checks below on a slow machine).
    let short_end = Utc::now() + chrono::Duration::seconds(15);
    let short = &grant(&h, &a, &token, &EU, &routers[0], Some(short_end));
    h.nft(
        "hub",
        &format!(
            "table inet postern_cut {{
  chain forward {{ type filter hook forward priority filter; policy accept;
    ip saddr {CONTROL} ip daddr {gw} drop
    ip saddr {gw} ip daddr {CONTROL} drop
  }}
}}
",
            gw = EU.gateway_addr
        ),
    );
    let cut = Instant::now();
    phase("eu gateway cut off from the control host");
    // The short grant is open until its deadline, then closes on time; a grant revoked
    // meanwhile stays open (the gateway cannot hear of it); logins it had work.
    assert!(
        accepts(&h, &EU, short),
        "the short grant, before its deadline"
    );
    let margin = short_end - Utc::now();
    assert!(
        margin > chrono::Duration::seconds(1),
        "the cut came too late to see the short grant open ({margin} left)"
    );
    let (status, v) = http(
        &h,
        &token,
        "DELETE",
        &format!(
            "{}/api/routers/{}/transient-access/{}",
            b.url, routers[0], revokee.id
        ),
        None,
    );
    assert_eq!(status, 204, "{v}");
    assert!(
        accepts(&h, &EU, revokee),
        "the cut is real: the gateway has not heard of the revoke"
    );
    until(
        "the short grant's port closes at its deadline, cut off",
        Duration::from_secs(20),
        || !accepts(&h, &EU, short),
    );
    let late = Utc::now() - short_end;
    eprintln!(
        "cut off, the short grant closed {late} after its deadline (open {margin} before it)"
    );
    assert!(
        late < chrono::Duration::milliseconds(1500),
        "closed {late} after its deadline"
    );
    ssh_identity(&h, &EU, long, "cut off, a login it had");
    assert!(accepts(&h, &EU, long), "the long grant's port stays open");
    until(
        "the eu gateway sees no server",
        Duration::from_secs(45),
        || health(&h, &EU)["control"] == "disconnected",
    );
    eprintln!(
        "the eu gateway saw its servers gone {:?} after the cut",
        cut.elapsed()
    );
    // Its figures say so too, and that its tunnel is up all the same.
    let (_, metrics) = http(
        &h,
        "",
        "GET",
        &format!("http://{}:{HEALTH_PORT}/metrics", EU.gateway_addr),
        None,
    );
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    for line in [
        "postern_gateway_control_connected 0",
        "postern_gateway_tunnel_peers_up{region=\"eu\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
    assert_eq!(health(&h, &US)["servers"], 2, "the us gateway is untouched");
    ssh_identity(&h, &EU, long, "cut off for long, a login it had");

    // The link returns: the gateway converges within seconds.
    h.exec("hub", &["nft", "delete", "table", "inet", "postern_cut"]);
    let back = Instant::now();
    phase("eu link back");
    let closed = until(
        "the grant revoked meanwhile closes once the link is back",
        Duration::from_secs(20),
        || !accepts(&h, &EU, revokee),
    );
    eprintln!("the revoked grant's port closed {closed:?} after the link came back");
    until(
        "both servers drive the eu gateway again",
        Duration::from_secs(20),
        || health(&h, &EU)["servers"] == 2,
    );
    eprintln!(
        "both servers back on the eu gateway {:?} after the link",
        back.elapsed()
    );
    let fresh = grant(&h, &b, &token, &EU, &routers[0], None);
    ssh_identity(&h, &EU, &fresh, "a new grant after the link came back");
    let status = live.wait().unwrap();
    let mut said = String::new();
    live.stdout
        .take()
        .unwrap()
        .read_to_string(&mut said)
        .unwrap();
    assert!(
        status.success() && said.contains(&format!("name: {}", EU.identity)),
        "the session across the cut lived on: {status:?} {said:?}"
    );
    assert!(accepts(&h, &EU, long), "the long grant is still open");
    phase("eu converged");

    // `kill -9` of server A in the middle of us router jobs: B is paused meanwhile, so A
    // takes them, and the router is slow to answer (paused too), so A dies with a job
    // under way. B finishes them all; nothing is lost.
    pause(&pg, b.pid);
    signal(sims[1].pid, "STOP");
    let mut pending = Vec::new();
    for _ in 0..3 {
        let g = ok(
            &h,
            &a,
            &token,
            "POST",
            &format!("/api/routers/{}/transient-access", routers[1]),
            Some(json!({"type": "ssh", "allow_from": OPERATOR, "expire_after_minutes": 30})),
        );
        pending.push(g["id"].as_str().unwrap().to_owned());
    }
    let mut running = None;
    until(
        "a job of A under way on the us router",
        Duration::from_secs(20),
        || {
            let jobs = jobs(&h, &a, &token, &routers[1]);
            running = pending.iter().find_map(|id| {
                let job = find_creation(&jobs, id)?;
                (job["state"] == "running"
                    && job_text(job).contains(&format!("started by worker {}-", a.pid)))
                .then(|| id.clone())
            });
            running.is_some()
        },
    );
    // Its first command is on its way to the router.
    std::thread::sleep(Duration::from_millis(300));
    {
        let child = h.child(a.index);
        child.kill().unwrap();
        child.wait().unwrap();
    }
    signal(sims[1].pid, "CONT");
    signal(b.pid, "CONT");
    let killed = Instant::now();
    phase("server A killed mid-job");
    let running = running.unwrap();
    let mut finished = Vec::new();
    for id in &pending {
        until(
            &format!("grant {id} finished by B"),
            Duration::from_secs(45),
            || {
                let g = ok(
                    &h,
                    &b,
                    &token,
                    "GET",
                    &format!("/api/routers/{}/transient-access/{id}", routers[1]),
                    None,
                );
                assert!(g["status"] != "failed", "{g}");
                g["status"] == "active"
            },
        );
        finished.push(credentials(&h, &b, &token, &routers[1], id));
    }
    eprintln!(
        "A's jobs finished by B {:?} after the kill",
        killed.elapsed()
    );
    let jobs_us = jobs(&h, &b, &token, &routers[1]);
    for id in &pending {
        let job = creation(&jobs_us, id);
        assert_eq!(job["state"], "completed", "{job}");
    }
    let job = creation(&jobs_us, &running);
    let text = job_text(job);
    // Taken by A, which died in it; finished by B (a first try of B's may fail on a
    // connection to the router that A's death broke: then a third).
    let (by_a, by_b) = (
        text.find(&format!("started by worker {}-", a.pid)),
        text.find(&format!("started by worker {}-", b.pid)),
    );
    assert!(
        job["attempts"].as_u64() >= Some(2) && by_a.is_some() && by_a < by_b,
        "{text}"
    );
    eprintln!("the job A died in:\n{text}");
    for g in &finished {
        ssh_identity(&h, &US, g, "a grant A was making when it died");
    }
    // One temporary user per grant on the router: nothing doubled.
    let users = sims[1].type_line("/user print", Duration::from_millis(500));
    for g in &finished {
        assert_eq!(users.matches(&g.user).count(), 1, "{users}");
    }
    phase("A's jobs finished by B; SSH works");

    // The gateways hold no database credentials and never reached the database.
    for gw in &gateways {
        gateway_dir::holds_only_its_identity(
            &gw.data,
            &["postgres", &pg.password, &format!(":{PG_PORT}"), "database"],
        );
        let ports: Vec<u16> = tcp_sockets(gw.pid).into_iter().map(|(_, r)| r).collect();
        assert!(
            !ports.contains(&PG_PORT),
            "the gateway holds a socket to the database: {ports:?}"
        );
    }
    assert!(
        counter(&h, "control", "postern_watch", "pg_connections") > 0,
        "the counter sees the servers' connections"
    );
    assert_eq!(
        counter(&h, "control", "postern_watch", "gateways_to_pg"),
        0,
        "a gateway host sent packets to the database's port"
    );
    for region in [&EU, &US] {
        assert_eq!(
            counter(&h, region.gateway, "postern_watch", "to_pg"),
            0,
            "{} sent packets to a PostgreSQL port",
            region.gateway
        );
    }
    phase("done");
    drop(pg);
}
