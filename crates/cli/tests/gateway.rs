//! The gateway end to end, with real clients: `postern server` (lab mode) in front of a
//! sim router. OpenSSH logs in through a grant's entry port with the issued credentials
//! and fails after revoke; a source outside `allow_from` is refused while one inside
//! works; a live SSH session dies within 100 ms of the DELETE returning; a transient
//! forward reaches a TCP service behind the sim's dst-nat; the connections API shows
//! each connection with its bytes; a restarted server listens again on the grant's port.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod listening;

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_postern");

/// A `postern server` child, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    token: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `postern server` (lab mode, JSON logs) on `data` and makes an admin token.
fn start(data: &std::path::Path) -> Server {
    start_with(data, &[])
}

/// The same with more arguments (`--config FILE`).
fn start_with(data: &std::path::Path, extra: &[&str]) -> Server {
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
        .args(extra)
        .env_remove("POSTERN_LISTEN")
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
        .env_remove("POSTERN_PORT_COOLDOWN")
        .env("POSTERN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = listening::server_address(child.stderr.take().unwrap());
    let out = Command::new(BIN)
        .args(["admin", "create-token", "--role", "admin", "--name"])
        .arg(format!("t{}", rand_suffix()))
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    Server { child, addr, token }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

async fn call(s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("http://{}{path}", s.addr);
    let req = match method {
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        "PATCH" => client.patch(url),
        _ => client.get(url),
    }
    .bearer_auth(&s.token);
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(b.to_string()),
        None => req,
    };
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, value)
}

async fn ok(s: &Server, method: &str, path: &str, body: Option<Value>) -> Value {
    let (status, v) = call(s, method, path, body).await;
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {v}"
    );
    v
}

async fn register(s: &Server, sim: &sim::RouterHandle, name: &str) -> String {
    let router = ok(
        s,
        "POST",
        "/api/routers",
        Some(json!({
            "name": name,
            "tunnel_address": sim.address().to_string(),
            "api_port": sim.api_addr.port(),
            "ssh_port": sim.ssh_addr.port(),
            "winbox_port": sim.winbox_addr.port(),
            "username": "admin",
            "password": sim.admin_password,
        })),
    )
    .await;
    router["id"].as_str().unwrap().to_owned()
}

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

/// `sshpass -p PASSWORD ssh … -p PORT [extra] USER@127.0.0.1`.
fn openssh(port: u16, user: &str, password: &str, extra: &[&str]) -> Command {
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
        "PubkeyAuthentication=no",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-o",
        "ConnectTimeout=5",
        "-p",
    ])
    .arg(port.to_string())
    .args(extra)
    .arg(format!("{user}@127.0.0.1"));
    c
}

async fn run(mut c: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

/// Connects from `from` to the gateway port and reads what comes within a second:
/// `Ok(bytes)` (empty on a clean close), or the error (a reset).
async fn probe(from: IpAddr, port: u16) -> std::io::Result<Vec<u8>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let mut stream = socket
        .connect(SocketAddr::from(([127, 0, 0, 1], port)))
        .await?;
    let mut buf = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf))
        .await
        .unwrap_or(Ok(0))?;
    buf.truncate(n);
    Ok(buf)
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_through_the_gateway_until_revoke() {
    if !openssh_available() {
        if std::env::var_os("CI").is_some() {
            panic!("ssh and sshpass are required in CI");
        }
        eprintln!("SKIPPED: OpenSSH ssh or sshpass not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sim = sim::RouterHandle::start(sim::RouterOptions::new(
        "gw-ssh",
        "127.0.31.1".parse().unwrap(),
    ))
    .await
    .unwrap();
    let s = start(&dir.path().join("data"));
    let router = register(&s, &sim, "gw-ssh").await;
    let base = format!("/api/routers/{router}/transient-access");
    let grant = ok(
        &s,
        "POST",
        &format!("{base}?wait=true"),
        Some(json!({ "type": "ssh", "allow_from": "127.0.0.1", "expire_after_minutes": 30 })),
    )
    .await;
    assert_eq!(grant["status"], "active", "{grant}");
    assert_eq!(grant["authorized_at"], Value::Null);
    let id = grant["id"].as_str().unwrap().to_owned();
    let creds = ok(&s, "GET", &format!("{base}/{id}/credentials"), None).await;
    let (user, password) = (
        creds["username"].as_str().unwrap().to_owned(),
        creds["password"].as_str().unwrap().to_owned(),
    );
    let port = u16::try_from(creds["port"].as_u64().unwrap()).unwrap();
    assert_eq!(
        creds["ssh_command"],
        format!("ssh -p {port} {user}@127.0.0.1")
    );

    // OpenSSH logs in with the issued credentials and runs a command.
    let mut c = openssh(port, &user, &password, &[]);
    c.arg("/system identity print");
    let out = run(c).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "  name: gw-ssh\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());

    // Inside allow_from: the router's SSH banner. Outside (127.0.0.77): closed at once,
    // not a byte sent; OpenSSH from there fails too.
    let inside = probe("127.0.0.1".parse().unwrap(), port).await.unwrap();
    assert!(inside.starts_with(b"SSH-2.0-"), "{inside:?}");
    match probe("127.0.0.77".parse().unwrap(), port).await {
        Ok(bytes) => assert!(bytes.is_empty(), "outside got {bytes:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let mut c = openssh(port, &user, &password, &["-b", "127.0.0.77"]);
    c.arg("/system identity print");
    let out = run(c).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());

    // A live interactive session, then revoke: it dies within 100 ms of the DELETE
    // returning.
    let mut session = openssh(port, &user, &password, &["-tt"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = session.stdin.take().unwrap();
    let router_state = sim.router().clone();
    eventually("the session to log in through the gateway", async || {
        router_state
            .state()
            .active
            .items
            .iter()
            .any(|i| i.get("via") == Some("ssh") && i.get("name") == Some(user.as_str()))
    })
    .await;
    let (died_tx, died_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let status = session.wait().unwrap();
        let _ = died_tx.send((Instant::now(), status));
    });
    assert!(
        died_rx.try_recv().is_err(),
        "the session ended before revoke"
    );
    let (status, _) = call(&s, "DELETE", &format!("{base}/{id}"), None).await;
    let returned = Instant::now();
    assert_eq!(status, 204);
    let (died, exit) = died_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the session outlived revoke");
    let after = died.saturating_duration_since(returned);
    eprintln!("the live session died {after:?} after DELETE returned");
    assert!(
        after <= Duration::from_millis(100),
        "the session died {after:?} after DELETE returned"
    );
    assert!(!exit.success());
    drop(stdin);

    // After revoke the port is closed: OpenSSH cannot log in again.
    let mut c = openssh(port, &user, &password, &[]);
    c.arg("/system identity print");
    let out = run(c).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());

    // The connections, each with its bytes and how it ended; first use recorded.
    let path = format!("{base}/{id}/connections");
    let mut conns = Value::Null;
    eventually("every connection recorded as ended", async || {
        conns = ok(&s, "GET", &path, None).await;
        let list = conns.as_array().unwrap();
        list.len() == 3 && list.iter().all(|c| !c["ended_at"].is_null())
    })
    .await;
    let list = conns.as_array().unwrap();
    for c in list {
        assert_eq!(c["source_address"], "127.0.0.1", "{c}");
        assert!(c["source_port"].as_u64().unwrap() > 0, "{c}");
        assert!(c["bytes_to_client"].as_u64().unwrap() > 0, "{c}");
    }
    // Newest first: the interactive session (revoked), the banner probe, the exec.
    assert_eq!(list[0]["end_reason"], "revoked", "{conns}");
    assert!(
        list[0]["bytes_from_client"].as_u64().unwrap() > 1000,
        "{conns}"
    );
    assert!(
        list[2]["bytes_from_client"].as_u64().unwrap() > 1000,
        "{conns}"
    );
    assert_eq!(list[2]["end_reason"], "finished", "{conns}");
    let g = ok(&s, "GET", &format!("{base}/{id}"), None).await;
    assert_eq!(g["status"], "revoked");
    assert!(g["authorized_at"].is_string(), "{g}");
    // The refused attempts are audited with their source.
    let audit = ok(&s, "GET", "/api/audit", None).await;
    let refused: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "access.connection_refused")
        .collect();
    assert_eq!(refused.len(), 2, "{audit}");
    assert_eq!(refused[0]["actor_address"], "127.0.0.77");
    assert_eq!(refused[0]["target"], format!("access:{id}"));

    // Another organisation's view of it does not exist.
    let (status, _) = call(&s, "GET", "/api/routers/00000000-0000-4000-8000-000000000000/transient-access/00000000-0000-4000-8000-000000000000/connections", None).await;
    assert_eq!(status, 404);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_reaches_a_service_behind_dst_nat_and_survives_a_restart() {
    // A TCP echo service "on the LAN": a loopback address the sim router forwards to.
    let echo = tokio::net::TcpListener::bind("127.0.31.50:0")
        .await
        .unwrap();
    let echo_addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = echo.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let sim = sim::RouterHandle::start(sim::RouterOptions::new(
        "gw-fwd",
        "127.0.31.2".parse().unwrap(),
    ))
    .await
    .unwrap();
    let s = start(&data);
    let router = register(&s, &sim, "gw-fwd").await;
    let base = format!("/api/routers/{router}/transient-forwarding");
    let fwd = ok(
        &s,
        "POST",
        &format!("{base}?wait=true"),
        Some(json!({
            "dst_address": echo_addr.ip().to_string(),
            "dst_port": echo_addr.port(),
            "allow_from": "127.0.0.1/32",
            "expire_after_minutes": 30,
        })),
    )
    .await;
    assert_eq!(fwd["status"], "active", "{fwd}");
    let id = fwd["id"].as_str().unwrap().to_owned();
    let port = u16::try_from(fwd["port"].as_u64().unwrap()).unwrap();

    let echo_once = async |payload: &[u8]| -> Vec<u8> {
        let mut c = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        c.write_all(payload).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut back))
            .await
            .unwrap()
            .unwrap();
        back
    };
    let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(echo_once(&payload).await, payload);

    let path = format!("{base}/{id}/connections");
    let mut conns = Value::Null;
    eventually("the connection recorded with its bytes", async || {
        conns = ok(&s, "GET", &path, None).await;
        conns.as_array().unwrap().len() == 1 && !conns[0]["ended_at"].is_null()
    })
    .await;
    assert_eq!(conns[0]["bytes_from_client"], 100_000, "{conns}");
    assert_eq!(conns[0]["bytes_to_client"], 100_000, "{conns}");
    assert_eq!(conns[0]["end_reason"], "finished", "{conns}");

    // A live connection shows with ended_at null and its counts so far.
    let mut live = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    live.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 5];
    live.read_exact(&mut buf).await.unwrap();
    eventually("the live connection listed", async || {
        conns = ok(&s, "GET", &path, None).await;
        conns.as_array().unwrap().len() == 2
            && conns[0]["ended_at"].is_null()
            && conns[0]["bytes_from_client"] == 5
            && conns[0]["bytes_to_client"] == 5
    })
    .await;
    drop(live);

    // A restart reopens the forward's port from the store.
    drop(s);
    let s = start(&data);
    assert_eq!(echo_once(b"again").await, b"again");
    let conns = ok(&s, "GET", &path, None).await;
    let reasons: Vec<&str> = conns
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["end_reason"].as_str())
        .collect();
    assert!(reasons.len() >= 2, "{conns}");
    sim.shutdown().await;
}

/// Two consecutive ports free on 127.0.0.1 now.
fn free_pair() -> u16 {
    for i in 0..2000u32 {
        let p =
            42000 + u16::try_from((rand_suffix() as u32).wrapping_add(i * 7919) % 6000).unwrap();
        let a = std::net::TcpListener::bind(("127.0.0.1", p));
        let b = std::net::TcpListener::bind(("127.0.0.1", p + 1));
        if a.is_ok() && b.is_ok() {
            return p;
        }
    }
    panic!("no two free consecutive ports");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entry_ports_skip_unbindable_and_cooling_ports_and_a_full_range_is_409() {
    let dir = tempfile::tempdir().unwrap();
    let p = free_pair();
    let config = dir.path().join("postern.toml");
    std::fs::write(
        &config,
        format!(
            "[[regions]]\nname = \"local\"\nentry_point = \"127.0.0.1\"\nport_min = {p}\nport_max = {}\n",
            p + 1
        ),
    )
    .unwrap();
    // Someone else holds the range's second port.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", p + 1)).unwrap();
    let sim = sim::RouterHandle::start(sim::RouterOptions::new(
        "gw-ports",
        "127.0.31.3".parse().unwrap(),
    ))
    .await
    .unwrap();
    let s = start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let router = register(&s, &sim, "gw-ports").await;
    let base = format!("/api/routers/{router}/transient-access");
    let body = json!({ "type": "ssh", "allow_from": "127.0.0.1", "expire_after_minutes": 30 });
    // Only the bindable port is offered, every time.
    let a = ok(&s, "POST", &format!("{base}?wait=true"), Some(body.clone())).await;
    assert_eq!(a["port"], p, "{a}");
    assert_eq!(a["status"], "active", "{a}");
    assert!(
        probe("127.0.0.1".parse().unwrap(), p)
            .await
            .unwrap()
            .starts_with(b"SSH-2.0-")
    );
    // Nothing left: 409, and nothing made.
    let (status, problem) = call(&s, "POST", &base, Some(body.clone())).await;
    assert_eq!(status, 409, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("no free gateway port"),
        "{problem}"
    );
    // Revoked and clean on the router, its port is free in the store but cools down.
    let a_id = a["id"].as_str().unwrap();
    let (status, _) = call(&s, "DELETE", &format!("{base}/{a_id}"), None).await;
    assert_eq!(status, 204);
    eventually("the grant revoked", async || {
        ok(&s, "GET", &format!("{base}/{a_id}"), None).await["status"] == "revoked"
    })
    .await;
    let (status, problem) = call(&s, "POST", &base, Some(body.clone())).await;
    assert_eq!(status, 409, "the cooling port was handed out: {problem}");
    // The other port freed: it is the one offered.
    drop(squatter);
    let d = ok(&s, "POST", &format!("{base}?wait=true"), Some(body)).await;
    assert_eq!(d["port"], p + 1, "{d}");
    assert_eq!(d["status"], "active", "{d}");
    let list = ok(&s, "GET", &format!("{base}?all=true"), None).await;
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    sim.shutdown().await;
}

/// A line from the WinBox stand-in.
async fn line(r: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    use tokio::io::AsyncBufReadExt;
    let mut l = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut l))
        .await
        .unwrap()
        .unwrap();
    l.trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn winbox_access_ends_at_the_gateway_on_its_moved_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("postern.toml");
    std::fs::write(&config, "grant_min = \"1s\"\n").unwrap();
    let sim = sim::RouterHandle::start(sim::RouterOptions::new(
        "gw-wb",
        "127.0.31.4".parse().unwrap(),
    ))
    .await
    .unwrap();
    let s = start_with(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let router = register(&s, &sim, "gw-wb").await;
    let base = format!("/api/routers/{router}/transient-access");
    let at = |secs: i64| {
        let t = chrono::Utc::now() + chrono::TimeDelta::seconds(secs);
        chrono::DateTime::from_timestamp(t.timestamp(), 0).unwrap()
    };
    let grant = ok(
        &s,
        "POST",
        &format!("{base}?wait=true"),
        Some(json!({ "type": "winbox", "allow_from": "127.0.0.1", "expires_at": at(3).to_rfc3339() })),
    )
    .await;
    assert_eq!(grant["status"], "active", "{grant}");
    let id = grant["id"].as_str().unwrap().to_owned();
    let creds = ok(&s, "GET", &format!("{base}/{id}/credentials"), None).await;
    let user = creds["username"].as_str().unwrap().to_owned();
    let url = creds["winbox_url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!(
            "winbox://127.0.0.1:{}?user={user}&ticket=wbt_",
            creds["port"]
        )),
        "{url}"
    );
    // The WinBox port (the sim's stand-in) through the gateway, with the issued login.
    let port = u16::try_from(creds["port"].as_u64().unwrap()).unwrap();
    let conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (r, mut w) = conn.into_split();
    let mut r = tokio::io::BufReader::new(r);
    assert!(line(&mut r).await.ends_with("gw-wb"));
    w.write_all(format!("login {user} {}\n", creds["password"].as_str().unwrap()).as_bytes())
        .await
        .unwrap();
    assert_eq!(line(&mut r).await, "ok gw-wb");

    // Moved later: the session outlives the first end and stops at the new one, at the
    // gateway, within a second.
    let end = at(5);
    ok(
        &s,
        "PATCH",
        &format!("{base}/{id}"),
        Some(json!({ "expires_at": end.to_rfc3339() })),
    )
    .await;
    let mut whoami = 0;
    let died = loop {
        if w.write_all(b"whoami\n").await.is_err() {
            break chrono::Utc::now();
        }
        let mut l = String::new();
        match tokio::time::timeout(
            Duration::from_secs(10),
            tokio::io::AsyncBufReadExt::read_line(&mut r, &mut l),
        )
        .await
        .unwrap()
        {
            Ok(n) if n > 0 => {
                assert_eq!(l.trim_end(), user);
                whoami += 1;
            }
            _ => break chrono::Utc::now(),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let late = died - end;
    assert!(
        late >= chrono::TimeDelta::milliseconds(-20) && late < chrono::TimeDelta::seconds(1),
        "ended {late} after its end"
    );
    assert!(whoami > 10, "the session ran until its moved end");
    let conns = ok(&s, "GET", &format!("{base}/{id}/connections"), None).await;
    eventually("the connection recorded as expired", async || {
        let c = ok(&s, "GET", &format!("{base}/{id}/connections"), None).await;
        c[0]["end_reason"] == "expired"
    })
    .await;
    assert_eq!(conns.as_array().unwrap().len(), 1, "{conns}");
    eventually("the grant expired", async || {
        ok(&s, "GET", &format!("{base}/{id}"), None).await["status"] == "expired"
    })
    .await;
    sim.shutdown().await;
}
