//! A router reached only through the management tunnel, end to end: `postern server`'s
//! parts in-process (gateway with its region tunnel, orchestrator, API), and a sim router
//! inside a network namespace behind Debian's `wireguard-go` on a TUN device, configured
//! the way the enrolment script configures a router. The router's services listen on
//! its tunnel address only, which nothing outside the namespace routes to: every byte
//! Postern exchanges with it crosses the tunnel.
//!
//! The API shows the router pending, then its tunnel (endpoint, handshake, bytes) and
//! online once it speaks; a transient SSH access made through the API is provisioned
//! over the tunnel with `address=` the gateway's tunnel address; OpenSSH logs in through
//! the entry port and the tunnel; revoke ends it. `/metrics` carries the tunnel's gauges.
//! Needs root (namespaces), like the tunnel crate's interop test; skipped otherwise.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "../../tunnel/tests/support/lab.rs"]
mod lab;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use postern_server as server;
use serde_json::{Value, json};
use server::config::{RegionConfig, ServerConfig};
use server::tunnels::TunnelGateway as _;

const ADMIN_PASSWORD: &str = "sim-admin-password-7";
const GATEWAY: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const METRICS_TOKEN: &str = "metrics-token-for-the-tunnel-test";

/// A sim router running on its own thread, inside the lab's namespace, bound to its
/// tunnel address: stopped when dropped.
struct NsRouter {
    api: u16,
    ssh: u16,
    winbox: u16,
    router: sim::Router,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsRouter {
    fn start(ns: &str, identity: &str, address: IpAddr) -> NsRouter {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let path = format!("/var/run/netns/{ns}");
        let identity = identity.to_owned();
        let thread = std::thread::spawn(move || {
            use std::os::fd::AsFd as _;
            let ns = std::fs::File::open(&path).unwrap();
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut options = sim::RouterOptions::new(&identity, address);
                options.admin_password = Some(ADMIN_PASSWORD.into());
                let handle = sim::RouterHandle::start(options).await.unwrap();
                tx.send((
                    handle.api_addr.port(),
                    handle.ssh_addr.port(),
                    handle.winbox_addr.port(),
                    handle.router().clone(),
                ))
                .unwrap();
                let _ = stopped.await;
                handle.shutdown().await;
            });
        });
        let (api, ssh, winbox, router) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        NsRouter {
            api,
            ssh,
            winbox,
            router,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for NsRouter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method.clone(), path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }
}

async fn eventually(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `sshpass -p PASSWORD ssh … -p PORT USER@127.0.0.1 COMMAND`.
fn openssh(port: u16, user: &str, password: &str, command: &str) -> Command {
    let mut c = Command::new("sshpass");
    c.args(["-p", password, "ssh"])
        .args([
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
            "ConnectTimeout=10",
            "-p",
        ])
        .arg(port.to_string())
        .arg(format!("{user}@127.0.0.1"))
        .arg(command);
    c
}

async fn run(mut c: Command) -> std::process::Output {
    tokio::task::spawn_blocking(move || c.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_router_reached_only_through_the_tunnel_gets_transient_ssh_end_to_end() {
    if !lab::can_run() {
        return;
    }
    for tool in ["ssh", "sshpass"] {
        assert!(
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success()),
            "{tool} is missing (apt-get install openssh-client sshpass)"
        );
    }
    let mut lab = lab::Lab::new();
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        data_dir: dir.path().to_owned(),
        lab_mode: true,
        metrics_token: Some(server::config::Secret::new(METRICS_TOKEN)),
        regions: vec![RegionConfig {
            // The routers' side of the lab reaches us at the veth's address only.
            tunnel_listen: Some(SocketAddr::new(IpAddr::V4(lab.host_ip), 0)),
            ..RegionConfig::local()
        }],
        ..ServerConfig::default()
    };
    let store = server::bootstrap::open_store(&config).await.unwrap();
    let region = store.list_regions().await.unwrap()[0].clone();
    // The region's key was made at first start, its private half sealed.
    let made = store.region_tunnel(region.id).await.unwrap().unwrap();
    let org = store.create_organisation("default").await.unwrap().id;
    let token = server::auth::generate_token();
    store
        .create_api_token(store::NewApiToken {
            org_id: org,
            name: "ops".into(),
            role: domain::Role::Admin,
            token_hash: server::auth::hash_token(&token),
            created_by: None,
            expires_at: None,
        })
        .await
        .unwrap();
    // A pending tunnelled router: its address is allocated in the prefix.
    let pending = store
        .create_tunnel_router(store::NewTunnelRouter {
            org_id: org,
            site_name: Some("far away".into()),
            region_id: region.id,
            name: "far-01".into(),
            tunnel_prefix: config.regions[0].tunnel_prefix(),
            gateway_address: GATEWAY,
            api_port: 8728,
            ssh_port: 22,
            winbox_port: 8291,
            username: "admin".into(),
            password: ADMIN_PASSWORD.into(),
        })
        .await
        .unwrap();
    assert_eq!(pending.tunnel_address.to_string(), "100.64.0.2");

    // The server's parts, as `postern server` runs them.
    let plane =
        server::dataplane::GatewayPlane::start(store.clone(), &config, gateway::Config::default())
            .await
            .unwrap();
    plane.rebuild().await.unwrap();
    let orch = orchestrator::Orchestrator::new(
        store.clone(),
        orchestrator::Config {
            backoff_base: Duration::from_millis(200),
            backoff_max: Duration::from_millis(800),
            connect_timeout: Duration::from_secs(20),
            command_timeout: Duration::from_secs(5),
            ..orchestrator::Config::default()
        },
        Arc::new(orchestrator::SystemClock),
        Arc::new(plane.clone()),
    );
    let (stop_jobs, jobs_stopped) = tokio::sync::watch::channel(false);
    let jobs = tokio::spawn(orch.clone().run(jobs_stopped));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = server::AppState::new(store.clone(), config.clone(), Arc::new(server::SystemClock))
        .with_orchestrator(orch)
        .with_gateway(plane.clone());
    let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(server::run(listener, state, async {
        let _ = stopped.await;
    }));
    let api = Api {
        base: format!("http://{addr}"),
        token,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    };
    let path = format!("/api/routers/{}", pending.id);

    // Pending: the tunnel's addresses are known, nothing live yet.
    let shown = api.ok(reqwest::Method::GET, &path, None).await;
    assert_eq!(shown["status"], "pending", "{shown}");
    assert_eq!(shown["tunnel"]["type"], "wireguard", "{shown}");
    assert_eq!(shown["tunnel"]["address"], "100.64.0.2");
    assert_eq!(shown["tunnel"]["gateway_address"], "100.64.0.1");
    assert_eq!(shown["tunnel"]["endpoint"], Value::Null);
    assert_eq!(shown["tunnel"]["rx_bytes"], 0);

    // The router's end: wireguard-go in the namespace, as the script sets it up, with
    // the region's key and endpoint; the sim's services on its tunnel address only.
    let info = plane.tunnels().region(region.id).unwrap();
    assert_eq!(info.public_key, made.public_key);
    assert_eq!(info.gateway_address, GATEWAY);
    assert_eq!(info.endpoint, format!("127.0.0.1:{}", info.listen.port()));
    lab.start_router(
        &info.public_key,
        info.listen,
        "100.64.0.2/10",
        info.gateway_address,
    );
    let ns_router = NsRouter::start(&lab.ns, "far-01", "100.64.0.2".parse().unwrap());
    store
        .update_router(
            org,
            pending.id,
            store::RouterPatch {
                api_port: Some(ns_router.api),
                ssh_port: Some(ns_router.ssh),
                winbox_port: Some(ns_router.winbox),
                ..store::RouterPatch::default()
            },
        )
        .await
        .unwrap();
    // Nothing here routes to the router's address: only the tunnel does.
    assert!(
        tokio::time::timeout(
            Duration::from_secs(2),
            tokio::net::TcpStream::connect(("100.64.0.2", ns_router.api))
        )
        .await
        .map_or(true, |r| r.is_err()),
        "the router is reachable outside the tunnel"
    );

    // Enrolment, as `onboard` does it: the key stored, then admitted.
    let enrolled = store
        .set_router_tunnel_key(pending.id, &lab.router_public)
        .await
        .unwrap();
    plane
        .tunnels()
        .admit_peer(
            enrolled.id,
            enrolled.region_id,
            &lab.router_public,
            enrolled.tunnel_address,
        )
        .unwrap();
    // A garbage key is refused with a reason.
    assert!(
        plane
            .tunnels()
            .admit_peer(enrolled.id, region.id, "not-a-key", enrolled.tunnel_address)
            .is_err()
    );

    // wireguard-go handshakes at once (its peer was configured); the API shows it.
    eventually(
        "the router to show online",
        Duration::from_secs(30),
        async || {
            let shown = api.ok(reqwest::Method::GET, &path, None).await;
            shown["status"] == "online" && shown["tunnel"]["last_handshake_at"].is_string()
        },
    )
    .await;
    let shown = api.ok(reqwest::Method::GET, &path, None).await;
    let endpoint: SocketAddr = shown["tunnel"]["endpoint"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(endpoint.ip(), IpAddr::V4(lab.router_ip), "{shown}");
    assert_eq!(endpoint.port(), lab::ROUTER_LISTEN_PORT);
    let list = api.ok(reqwest::Method::GET, "/api/routers", None).await;
    assert_eq!(list[0]["tunnel"]["address"], "100.64.0.2", "{list}");

    // A transient SSH access through the API: provisioned over the tunnel.
    let base = format!("/api/routers/{}/transient-access", pending.id);
    let grant = api
        .ok(
            reqwest::Method::POST,
            &format!("{base}?wait=true"),
            Some(json!({ "type": "ssh", "allow_from": "127.0.0.1", "expire_after_minutes": 30 })),
        )
        .await;
    assert_eq!(grant["status"], "active", "{grant}");
    let id = grant["id"].as_str().unwrap().to_owned();
    let creds = api
        .ok(
            reqwest::Method::GET,
            &format!("{base}/{id}/credentials"),
            None,
        )
        .await;
    let (user, password) = (
        creds["username"].as_str().unwrap().to_owned(),
        creds["password"].as_str().unwrap().to_owned(),
    );
    let port = u16::try_from(creds["port"].as_u64().unwrap()).unwrap();
    // The temporary user may log in from the gateway's tunnel address only.
    let props = ns_router
        .router
        .state()
        .users
        .by_name(&user)
        .map(|u| u.props.clone())
        .expect("the user is on the router");
    assert_eq!(
        props.get("address").map(String::as_str),
        Some("100.64.0.1/32")
    );

    // OpenSSH logs in through the entry port and the tunnel.
    let out = run(openssh(port, &user, &password, "/system identity print")).await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "  name: far-01\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    let shown = api.ok(reqwest::Method::GET, &path, None).await;
    assert!(shown["tunnel"]["rx_bytes"].as_u64().unwrap() > 0, "{shown}");
    assert!(shown["tunnel"]["tx_bytes"].as_u64().unwrap() > 0, "{shown}");

    // The gauges.
    let metrics = api
        .http
        .get(format!("{}/metrics", api.base))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("postern_tunnel_peers{region=\"local\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("postern_tunnel_peers_up{region=\"local\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("postern_tunnel_handshakes_refused_total{region=\"local\"}"));

    // Revoke: the user goes from the router (over the tunnel), the port closes.
    api.ok(reqwest::Method::DELETE, &format!("{base}/{id}"), None)
        .await;
    eventually(
        "the user to leave the router",
        Duration::from_secs(30),
        async || ns_router.router.state().users.by_name(&user).is_none(),
    )
    .await;
    let out = run(openssh(port, &user, &password, "/system identity print")).await;
    assert!(!out.status.success());

    // Removing the peer ends the tunnel's view of it.
    assert!(plane.tunnels().remove_peer(enrolled.id));
    let shown = api.ok(reqwest::Method::GET, &path, None).await;
    assert_eq!(shown["status"], "offline", "{shown}");
    assert_eq!(shown["tunnel"]["endpoint"], Value::Null);

    let _ = shutdown.send(());
    served.await.unwrap().unwrap();
    let _ = stop_jobs.send(true);
    let _ = jobs.await;
    plane.shutdown().await;
    drop(ns_router);
    drop(lab);
}
