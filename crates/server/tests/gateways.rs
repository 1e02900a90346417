//! A region served by a remote gateway, as the API, the portal and `/metrics` show it:
//! a real server (its gateway plane and links, as `postern server` runs them) with one
//! region configured `gateway = "remote"`, and a real `gateway::Node` served over the
//! control channel (TCP, mTLS, h2) on loopback. The region's gateway goes from `none`
//! (nothing added) to `pending` (added), `down` (joined at an address where nothing
//! listens), `up` (the node listens there), `down` again (the node stopped) and `up`
//! once more (a new node at that address); its enrolled router shows
//! `gateway_unreachable` whenever the link is not up, and `offline` (not heard from)
//! while it is.
//!
//! Certificate renewal over the channel: a gateway whose certificate has a minute left
//! gets a new one from the linked server (same key, a year on), keeps it on disk and
//! serves it to the next connection while the link's connection carries on; a request
//! of another key is not signed, and the gateway keeps what it has; a certificate that
//! is not the gateway's own (another CA, gateway, key) is refused and not written.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

extern crate store as postern_store;

#[allow(dead_code)]
#[path = "../../store/tests/harness/mod.rs"]
mod harness;

mod support;

use harness::{Ctx, Db};
use postern_server as server;
use reqwest::StatusCode;
use serde_json::Value;
use server::config::{GatewayMode, RegionConfig, ServerConfig};

use control::channel::Handler;
use control::msg::{Down, Up};
use control::pki::{CertificateInfo, GatewayCertificate};
use futures::future::BoxFuture;
use std::sync::Mutex;

const METRICS_TOKEN: &str = "metrics-token-for-the-gateways-test";
const PASSWORD: &str = "correct horse battery";
/// The links retry at most every 4 s and read the gateways every 3 s.
const WAIT: Duration = Duration::from_secs(20);

struct Api {
    base: String,
    http: reqwest::Client,
    token: String,
}

impl Api {
    async fn get(&self, path: &str) -> Value {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        resp.json().await.unwrap()
    }

    async fn region(&self) -> Value {
        let regions = self.get("/api/regions").await;
        // Every answer as the OpenAPI document describes it.
        let doc = self.get("/api/openapi.json").await;
        let schema = serde_json::json!({
            "type": "array",
            "items": { "$ref": "#/components/schemas/RegionView" },
            "components": doc["components"],
        });
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .build(&schema)
            .unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&regions)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}: {regions}");
        let mut bent = regions.clone();
        bent[0]["gateway"]["state"] = "sideways".into();
        assert!(!validator.is_valid(&bent), "the schema holds the states");
        let eu = regions
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "eu")
            .expect("region eu listed")
            .clone();
        eu["gateway"].clone()
    }

    /// The region's gateway once `state` is `want` (within [`WAIT`]).
    async fn region_when(&self, want: &str) -> Value {
        let started = Instant::now();
        loop {
            let g = self.region().await;
            if g["state"] == want {
                return g;
            }
            assert!(
                started.elapsed() < WAIT,
                "the gateway is not {want} after {WAIT:?}: {g}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    async fn router_status(&self, router: domain::RouterId, site: domain::SiteId) -> String {
        let one = self.get(&format!("/api/routers/{router}")).await;
        let listed = self.get("/api/routers").await;
        let in_list = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == router.to_string())
            .unwrap()["status"]
            .clone();
        let site = self.get(&format!("/api/sites/{site}")).await;
        assert_eq!(one["status"], in_list);
        assert_eq!(one["status"], site["router"]["status"]);
        one["status"].as_str().unwrap().to_owned()
    }

    /// A portal page, signed in as alice.
    async fn page(&self, path: &str) -> String {
        let login = self
            .http
            .post(format!("{}/login", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("username=alice&password={PASSWORD}&organisation="))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), StatusCode::SEE_OTHER);
        let cookie = login.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_owned();
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        resp.text().await.unwrap()
    }
}

fn config(dir: &std::path::Path, url: &str) -> ServerConfig {
    ServerConfig {
        data_dir: dir.to_owned(),
        database_url: Some(url.to_owned()),
        lab_mode: true,
        metrics_token: Some(server::config::Secret::new(METRICS_TOKEN)),
        regions: vec![
            RegionConfig {
                port_min: 20000,
                port_max: 60000,
                ..RegionConfig::local()
            },
            RegionConfig {
                name: "eu".into(),
                entry_point: "127.0.0.1".into(),
                port_min: 20000,
                port_max: 60000,
                tunnel_prefix: Some("100.64.1.0/24".parse().unwrap()),
                gateway: GatewayMode::Remote,
                ..RegionConfig::local()
            },
        ],
        ..ServerConfig::default()
    }
}

/// A gateway node serving `region` with `key`, its control channel on `listener`
/// (mTLS with the identity it joined with): the node and the accept loop's task (each
/// connection's task is aborted with it, as a process that stops closes its sockets).
async fn node(
    listener: tokio::net::TcpListener,
    region: &store::Region,
    key: tunnel::PrivateKey,
    tls: rustls::ServerConfig,
) -> (gateway::Node, tokio::task::JoinHandle<()>) {
    node_with(listener, region, key, tls, None, |h| h).await
}

/// [`node`] with a renewable certificate, its handler wrapped by `wrap`.
async fn node_with(
    listener: tokio::net::TcpListener,
    region: &store::Region,
    key: tunnel::PrivateKey,
    tls: rustls::ServerConfig,
    renewal: Option<gateway::node::Renewal>,
    wrap: impl FnOnce(Arc<dyn Handler>) -> Arc<dyn Handler>,
) -> (gateway::Node, tokio::task::JoinHandle<()>) {
    let socket = tunnel::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    let udp = socket.local_addr().unwrap();
    let config = gateway::NodeConfig::new(
        "gw-eu-test",
        vec![gateway::RegionConfig {
            id: region.id,
            name: region.name.clone(),
            private_key: key,
            gateway_address: Ipv4Addr::new(100, 64, 1, 1),
            prefix: "100.64.1.0/24".parse().unwrap(),
            udp: gateway::Udp::Socket(socket),
            endpoint: udp.to_string(),
            entry_bind: "127.0.0.1".parse().unwrap(),
            ports: gateway::PortRange::new(region.port_min, region.port_max).unwrap(),
        }],
    );
    let mut config = config;
    config.renewal = renewal;
    let node = gateway::Node::start(config).await.unwrap();
    let handler = wrap(node.handler());
    let tls = Arc::new(tls);
    let accept = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            connections.spawn(control::channel::serve_tls(
                tcp,
                tls.clone(),
                handler.clone(),
                control::channel::ChannelConfig::default(),
            ));
        }
    });
    (node, accept)
}

async fn a_remote_regions_gateway_and_its_routers_are_shown_as_they_stand(db: Db) {
    let Some(ctx) = Ctx::new(db).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &ctx.url);
    let store = server::bootstrap::open_store(&config).await.unwrap();
    let org = store.create_organisation("default").await.unwrap().id;
    let (secret, _) = support::token(&store, org, domain::Role::Viewer, "viewer").await;
    store
        .create_user(store::NewUser {
            org_id: org,
            username: "alice".into(),
            role: domain::Role::Operator,
            password_hash: server::auth::hash_password(PASSWORD).unwrap(),
        })
        .await
        .unwrap();
    let region = store.find_region_by_name("eu").await.unwrap().unwrap();
    // An enrolled tunnelled router of the remote region.
    let router = store
        .create_tunnel_router(store::NewTunnelRouter {
            org_id: org,
            site_name: Some("lisbon".into()),
            region_id: region.id,
            name: "lisbon-01".into(),
            tunnel_prefix: config.regions[1].tunnel_prefix(),
            gateway_address: config.regions[1].tunnel_gateway(),
            api_port: 8728,
            ssh_port: 22,
            winbox_port: 8291,
            username: "admin".into(),
            password: "router-secret".into(),
        })
        .await
        .unwrap();
    let router_key = tunnel::PrivateKey::generate()
        .unwrap()
        .public_key()
        .to_base64();
    store
        .set_router_tunnel_key(router.id, &router_key)
        .await
        .unwrap();

    let plane =
        server::dataplane::GatewayPlane::start(store.clone(), &config, gateway::Config::default())
            .await
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let state = server::AppState::new(store.clone(), config.clone(), Arc::new(server::SystemClock))
        .with_gateway(plane.clone());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, state, async {
        let _ = stopped.await;
    }));
    let api = Api {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        token: secret,
    };

    // The local region is served by this server; the remote one has no gateway yet.
    let regions = api.get("/api/regions").await;
    let local = regions
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "local")
        .unwrap();
    assert_eq!(local["gateway"]["mode"], "local");
    assert_eq!(local["gateway"]["state"], Value::Null);
    assert_eq!(local["gateway"]["routers"], 0);
    let g = api.region().await;
    assert_eq!(g["mode"], "remote");
    assert_eq!(g["state"], "none");
    assert_eq!(g["id"], Value::Null);
    assert_eq!(
        api.router_status(router.id, router.site_id).await,
        "gateway_unreachable"
    );

    // Added, not joined: pending, with its token's end.
    let now = chrono::Utc::now();
    let added = server::gateways::add_gateway(
        &store,
        &config,
        "eu",
        "tests",
        server::gateways::DEFAULT_TOKEN_LIFETIME,
        now,
    )
    .await
    .unwrap();
    let g = api.region().await;
    assert_eq!(g["state"], "pending", "{g}");
    assert_eq!(g["id"], added.gateway.id.to_string());
    assert!(
        g["since"].is_string() && g["token_expires_at"].is_string(),
        "{g}"
    );
    assert_eq!(g["control_address"], Value::Null);

    // Joined at an address where nothing listens (bound, then let go).
    let control = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let control_addr = control.local_addr().unwrap();
    drop(control);
    let (csr_key, csr_pem) = control::pki::gateway_request().unwrap();
    let wireguard = tunnel::PrivateKey::generate().unwrap();
    let joined = server::gateways::join(
        &store,
        &config,
        &control::msg::JoinRequest {
            token: added.token.clone(),
            csr_pem,
            wireguard_public_key: wireguard.public_key().to_base64(),
            control_address: control_addr.to_string(),
            tunnel_endpoint: "127.0.0.1:51821".into(),
            entry_host: "127.0.0.1".into(),
        },
        None,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    assert_eq!(joined.region.id, region.id);
    let g = api.region_when("down").await;
    assert_eq!(g["control_address"], control_addr.to_string());
    assert_eq!(g["tunnel_endpoint"], "127.0.0.1:51821");
    assert!(g["joined_at"].is_string() && g["since"].is_string(), "{g}");
    assert!(
        g["error"]
            .as_str()
            .unwrap()
            .contains(&control_addr.to_string()),
        "{g}"
    );
    assert_eq!(g["status_at"], Value::Null);
    assert_eq!(
        api.router_status(router.id, router.site_id).await,
        "gateway_unreachable"
    );
    let metrics = api.metrics().await;
    let up_line = |v: u8| {
        format!(
            "postern_gateway_link_up{{gateway=\"{}\",region=\"eu\"}} {v}",
            joined.gateway_id
        )
    };
    assert!(metrics.lines().any(|l| l == up_line(0)), "{metrics}");
    let sites = api.page("/sites").await;
    assert!(
        sites.contains(r#"<span class="badge gateway_unreachable">gateway unreachable</span>"#),
        "{sites}"
    );
    let site = api.page(&format!("/sites/{}", router.site_id)).await;
    assert!(site.contains("gateway unreachable"), "{site}");

    // The node listens there now: up within a retry, and its status reports come.
    let control = tokio::net::TcpListener::bind(control_addr).await.unwrap();
    let tls = control::pki::gateway_tls(&joined.certificate_pem, &csr_key, &joined.ca_pem).unwrap();
    let (gw, accept) = node(control, &region, wireguard.clone(), tls).await;
    api.region_when("up").await;
    let started = Instant::now();
    let g = loop {
        let g = api.region().await;
        if g["routers"] == 1 {
            break g;
        }
        assert!(started.elapsed() < WAIT, "no status with the router: {g}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(g["state"], "up");
    assert_eq!(g["error"], Value::Null);
    assert_eq!(g["routers_up"], 0, "the router never spoke: {g}");
    assert_eq!(g["live_connections"], 0);
    assert_eq!(g["events_pending"], 0);
    assert!(g["status_at"].is_string(), "{g}");
    // Reachable now: the router is offline (never heard from), not unreachable.
    assert_eq!(
        api.router_status(router.id, router.site_id).await,
        "offline"
    );
    let metrics = api.metrics().await;
    for line in [
        up_line(1),
        format!(
            "postern_gateway_peers{{gateway=\"{}\",region=\"eu\"}} 1",
            joined.gateway_id
        ),
        format!(
            "postern_gateway_peers_up{{gateway=\"{}\",region=\"eu\"}} 0",
            joined.gateway_id
        ),
        format!(
            "postern_gateway_events_pending{{gateway=\"{}\",region=\"eu\"}} 0",
            joined.gateway_id
        ),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}:\n{metrics}");
    }
    let sites = api.page("/sites").await;
    assert!(
        sites.contains(r#"<span class="badge offline">offline</span>"#)
            && !sites.contains("gateway unreachable"),
        "{sites}"
    );
    let page = api.page("/regions").await;
    for text in [
        "local",
        "this server",
        "eu",
        "remote gateway",
        &joined.gateway_id.to_string(),
        &control_addr.to_string(),
        "badge up",
    ] {
        assert!(page.contains(text), "{text} missing:\n{page}");
    }

    // The node stops (its sockets close): down, and the router unreachable again.
    accept.abort();
    let _ = accept.await;
    gw.shutdown().await;
    let g = api.region_when("down").await;
    assert!(g["error"].is_string(), "{g}");
    assert_eq!(
        api.router_status(router.id, router.site_id).await,
        "gateway_unreachable"
    );
    assert!(api.metrics().await.lines().any(|l| l == up_line(0)));
    let page = api.page("/regions").await;
    assert!(page.contains("badge down"), "{page}");

    // It comes back (a new boot at the same address): up again within a retry, and the
    // router reachable (offline: it never spoke) again.
    let control = tokio::net::TcpListener::bind(control_addr).await.unwrap();
    let tls = control::pki::gateway_tls(&joined.certificate_pem, &csr_key, &joined.ca_pem).unwrap();
    let (gw, accept) = node(control, &region, wireguard, tls).await;
    let g = api.region_when("up").await;
    assert_eq!(g["error"], Value::Null);
    assert_eq!(
        api.router_status(router.id, router.site_id).await,
        "offline"
    );
    assert!(api.metrics().await.lines().any(|l| l == up_line(1)));
    accept.abort();
    let _ = accept.await;
    gw.shutdown().await;

    let _ = stop.send(());
    task.await.unwrap().unwrap();
    plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_regions_gateway_and_its_routers_are_shown_as_they_stand_sqlite() {
    a_remote_regions_gateway_and_its_routers_are_shown_as_they_stand(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_regions_gateway_and_its_routers_are_shown_as_they_stand_postgres() {
    a_remote_regions_gateway_and_its_routers_are_shown_as_they_stand(Db::Postgres).await;
}

// ---- certificate renewal over the control channel ----

/// A server joined to `eu` at `control`'s address: the server's store, its plane (links
/// up), the joined gateway's identity, and the key and request it joined with.
struct Joined {
    store: store::Store,
    plane: server::dataplane::GatewayPlane,
    region: store::Region,
    joined: control::msg::JoinResponse,
    key: control::pki::KeyPem,
    csr: String,
    wireguard: tunnel::PrivateKey,
    _dir: tempfile::TempDir,
}

async fn joined(ctx: &Ctx, control: SocketAddr) -> Joined {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), &ctx.url);
    let store = server::bootstrap::open_store(&config).await.unwrap();
    let region = store.find_region_by_name("eu").await.unwrap().unwrap();
    let plane =
        server::dataplane::GatewayPlane::start(store.clone(), &config, gateway::Config::default())
            .await
            .unwrap();
    let added = server::gateways::add_gateway(
        &store,
        &config,
        "eu",
        "tests",
        server::gateways::DEFAULT_TOKEN_LIFETIME,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    let (key, csr) = control::pki::gateway_request().unwrap();
    let wireguard = tunnel::PrivateKey::generate().unwrap();
    let joined = server::gateways::join(
        &store,
        &config,
        &control::msg::JoinRequest {
            token: added.token,
            csr_pem: csr.clone(),
            wireguard_public_key: wireguard.public_key().to_base64(),
            control_address: control.to_string(),
            tunnel_endpoint: "127.0.0.1:51821".into(),
            entry_host: "127.0.0.1".into(),
        },
        None,
        chrono::Utc::now(),
    )
    .await
    .unwrap();
    Joined {
        store,
        plane,
        region,
        joined,
        key,
        csr,
        wireguard,
        _dir: dir,
    }
}

/// The control CA as the store keeps it.
async fn control_ca(store: &store::Store) -> control::pki::Ca {
    let (cert, key) = store.control_ca().await.unwrap().unwrap();
    control::pki::Ca::from_pem(&cert, &control::pki::KeyPem::new(key.into_inner())).unwrap()
}

/// A gateway certificate near its end (one minute left of six: a third is two), kept in
/// `dir/control.crt`, and its file.
fn near_its_end(
    ca: &control::pki::Ca,
    j: &Joined,
    dir: &std::path::Path,
) -> (Arc<GatewayCertificate>, std::path::PathBuf) {
    let pem = ca
        .sign_gateway_for(&j.csr, j.joined.gateway_id, Duration::from_secs(60))
        .unwrap();
    let file = dir.join("control.crt");
    std::fs::write(&file, &pem).unwrap();
    let certificate = Arc::new(
        GatewayCertificate::new(j.joined.gateway_id, &pem, &j.key, &j.joined.ca_pem).unwrap(),
    );
    (certificate, file)
}

/// What a new TLS connection to the gateway at `addr` is shown, as a server of `ca`
/// meaning to reach `gateway` checks it.
async fn presented(
    ca: &control::pki::Ca,
    addr: SocketAddr,
    gateway: domain::GatewayId,
) -> CertificateInfo {
    let (cert, key) = ca.issue_server("renewal test").unwrap();
    let tls = control::pki::server_tls(&cert, &key, ca.cert_pem()).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(control::pki::gateway_server_name(gateway), tcp)
        .await
        .unwrap();
    let der = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    CertificateInfo::from_der(&der).unwrap()
}

/// The link's state once it is up.
async fn link_up(
    plane: &server::dataplane::GatewayPlane,
    region: domain::RegionId,
) -> Arc<server::links::Link> {
    let started = Instant::now();
    loop {
        if let Some(link) = plane.links().link(region)
            && link.up()
        {
            return link;
        }
        assert!(started.elapsed() < WAIT, "the link never came up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn a_gateway_near_its_certificates_end_is_renewed_over_the_channel(db: Db) {
    let Some(ctx) = Ctx::new(db).await else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let j = joined(&ctx, addr).await;
    let ca = control_ca(&j.store).await;
    let gw_dir = tempfile::tempdir().unwrap();
    let (certificate, file) = near_its_end(&ca, &j, gw_dir.path());
    let old = certificate.info();
    let tls = control::pki::gateway_tls_renewable(certificate.clone()).unwrap();
    let renewal = gateway::node::Renewal {
        certificate: certificate.clone(),
        file: Some(file.clone()),
    };
    let (gw, accept) = node_with(
        listener,
        &j.region,
        j.wireguard.clone(),
        tls,
        Some(renewal),
        |h| h,
    )
    .await;

    // The link comes up, sees a certificate with a minute left, and renews it.
    let link = link_up(&j.plane, j.region.id).await;
    let started = Instant::now();
    while certificate.info().not_after == old.not_after {
        assert!(started.elapsed() < WAIT, "not renewed in {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let renewed_by = chrono::Utc::now();
    let new = certificate.info();
    assert_eq!(new.public_key, old.public_key, "the key stays");
    assert!(
        new.not_after - old.not_after > chrono::Duration::days(360),
        "{new:?}"
    );
    // On disk, whole, readable by all as before, no temporary file left.
    let on_disk = std::fs::read_to_string(&file).unwrap();
    assert_eq!(on_disk, certificate.pem());
    assert_eq!(CertificateInfo::from_pem(&on_disk).unwrap(), new);
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o644
    );
    assert!(!file.with_extension("tmp").exists());
    // The next connection gets it; the link that renewed it is the connection it was.
    assert_eq!(presented(&ca, addr, j.joined.gateway_id).await, new);
    let started = Instant::now();
    while link.certificate() != Some(new.clone()) {
        assert!(
            started.elapsed() < WAIT,
            "the link never recorded the renewal"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match link.state() {
        server::links::LinkState::Up { since } => assert!(since < renewed_by),
        other => panic!("the link is {other:?}"),
    }
    assert_eq!(gw.figures().sessions, 1, "one control session throughout");

    accept.abort();
    let _ = accept.await;
    gw.shutdown().await;
    j.plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_near_its_certificates_end_is_renewed_over_the_channel_sqlite() {
    a_gateway_near_its_certificates_end_is_renewed_over_the_channel(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_near_its_certificates_end_is_renewed_over_the_channel_postgres() {
    a_gateway_near_its_certificates_end_is_renewed_over_the_channel(Db::Postgres).await;
}

/// A gateway's handler whose certificate requests are swapped, on their way to the
/// server, for one of another key (a gateway whose name was taken by another key);
/// every `Down` is noted by its type.
struct SwapKey {
    inner: Arc<dyn Handler>,
    other_csr: String,
    downs: Arc<Mutex<Vec<String>>>,
    swapped: Arc<std::sync::atomic::AtomicBool>,
}

impl Handler for SwapKey {
    fn control(
        &self,
        mut down: tokio::sync::mpsc::Receiver<Down>,
        up: tokio::sync::mpsc::Sender<Up>,
    ) -> BoxFuture<'static, ()> {
        let (to_node, node_down) = tokio::sync::mpsc::channel(256);
        let (node_up, mut from_node) = tokio::sync::mpsc::channel(256);
        let inner = self.inner.control(node_down, node_up);
        let (downs, swapped, other) = (
            self.downs.clone(),
            self.swapped.clone(),
            self.other_csr.clone(),
        );
        Box::pin(async move {
            let downwards = async move {
                while let Some(d) = down.recv().await {
                    let kind = serde_json::to_value(&d).unwrap()["type"]
                        .as_str()
                        .unwrap()
                        .to_owned();
                    downs.lock().unwrap().push(kind);
                    if to_node.send(d).await.is_err() {
                        return;
                    }
                }
            };
            let upwards = async move {
                while let Some(mut u) = from_node.recv().await {
                    if let Up::CertificateRequest { csr_pem } = &mut u {
                        *csr_pem = other.clone();
                        swapped.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    if up.send(u).await.is_err() {
                        return;
                    }
                }
            };
            tokio::join!(inner, downwards, upwards);
        })
    }

    fn dial(
        &self,
        request: control::msg::DialRequest,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn control::channel::DialIo>>> {
        self.inner.dial(request)
    }
}

async fn a_request_with_another_key_is_refused_and_the_gateway_keeps_its_certificate(db: Db) {
    let Some(ctx) = Ctx::new(db).await else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let j = joined(&ctx, addr).await;
    let ca = control_ca(&j.store).await;
    let gw_dir = tempfile::tempdir().unwrap();
    let (certificate, file) = near_its_end(&ca, &j, gw_dir.path());
    let old_pem = certificate.pem();
    let old = certificate.info();
    let tls = control::pki::gateway_tls_renewable(certificate.clone()).unwrap();
    let renewal = gateway::node::Renewal {
        certificate: certificate.clone(),
        file: Some(file.clone()),
    };
    let downs = Arc::new(Mutex::new(Vec::new()));
    let swapped = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (_, other_csr) = control::pki::gateway_request().unwrap();
    let (d, s) = (downs.clone(), swapped.clone());
    let (gw, accept) = node_with(
        listener,
        &j.region,
        j.wireguard.clone(),
        tls,
        Some(renewal),
        move |inner| {
            Arc::new(SwapKey {
                inner,
                other_csr,
                downs: d,
                swapped: s,
            })
        },
    )
    .await;

    let link = link_up(&j.plane, j.region.id).await;
    let started = Instant::now();
    while !swapped.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            started.elapsed() < WAIT,
            "the server never asked for a request"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Whatever the server does with it, it has done within a couple of seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = downs.lock().unwrap().clone();
    assert!(seen.iter().any(|k| k == "renew_certificate"), "{seen:?}");
    assert!(
        !seen.iter().any(|k| k == "certificate"),
        "the server signed another key: {seen:?}"
    );
    // The gateway keeps its certificate, on disk and on the wire, and keeps working.
    assert_eq!(certificate.pem(), old_pem);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), old_pem);
    assert_eq!(presented(&ca, addr, j.joined.gateway_id).await, old);
    assert!(link.up(), "{:?}", link.state());
    assert_eq!(link.certificate(), Some(old));

    accept.abort();
    let _ = accept.await;
    gw.shutdown().await;
    j.plane.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_another_key_is_refused_and_the_gateway_keeps_its_certificate_sqlite() {
    a_request_with_another_key_is_refused_and_the_gateway_keeps_its_certificate(Db::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_another_key_is_refused_and_the_gateway_keeps_its_certificate_postgres() {
    a_request_with_another_key_is_refused_and_the_gateway_keeps_its_certificate(Db::Postgres).await;
}

/// The next `Up` that is not a status report.
async fn reply(stream: &mut control::ControlStream) -> Up {
    loop {
        let up = tokio::time::timeout(WAIT, stream.recv())
            .await
            .expect("no reply in time")
            .expect("the stream ended");
        if !matches!(up, Up::Status(_)) {
            return up;
        }
    }
}

/// A server speaking to a gateway node directly (real TLS, the real channel): a
/// certificate of another CA, of another gateway or of another key is refused, not
/// written and not served; the stream goes on, and a genuine one is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_not_the_gateways_own_is_refused_and_not_written() {
    let ca = control::pki::Ca::generate().unwrap();
    let id = domain::GatewayId::new();
    let (key, csr) = control::pki::gateway_request().unwrap();
    let pem = ca
        .sign_gateway_for(&csr, id, Duration::from_secs(60))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("control.crt");
    std::fs::write(&file, &pem).unwrap();
    let certificate = Arc::new(GatewayCertificate::new(id, &pem, &key, ca.cert_pem()).unwrap());
    let tls = control::pki::gateway_tls_renewable(certificate.clone()).unwrap();
    let region = store::Region {
        id: domain::RegionId::new(),
        name: "eu".into(),
        entry_point: "127.0.0.1".into(),
        port_min: 20000,
        port_max: 60000,
        created_at: chrono::Utc::now(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let renewal = gateway::node::Renewal {
        certificate: certificate.clone(),
        file: Some(file.clone()),
    };
    let (gw, accept) = node_with(
        listener,
        &region,
        tunnel::PrivateKey::generate().unwrap(),
        tls,
        Some(renewal),
        |h| h,
    )
    .await;
    let (cert, server_key) = ca.issue_server("renewal test").unwrap();
    let client = Arc::new(control::pki::server_tls(&cert, &server_key, ca.cert_pem()).unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let channel = control::Channel::connect_tls(tcp, client, id, Default::default())
        .await
        .unwrap();
    let mut stream = channel
        .control(Down::Hello {
            protocol: control::msg::PROTOCOL,
            server: "renewal test".into(),
        })
        .await
        .unwrap();
    assert!(matches!(reply(&mut stream).await, Up::State(_)));

    // The gateway's request carries the key it holds.
    stream.send(Down::RenewCertificate).await.unwrap();
    let Up::CertificateRequest { csr_pem } = reply(&mut stream).await else {
        panic!("no certificate request");
    };
    let old = certificate.info();
    let other_ca = control::pki::Ca::generate().unwrap();
    let (_, other_key) = control::pki::gateway_request().unwrap();
    for (what, forged) in [
        ("another ca's", other_ca.sign_gateway(&csr_pem, id).unwrap()),
        (
            "another gateway's",
            ca.sign_gateway(&csr_pem, domain::GatewayId::new()).unwrap(),
        ),
        ("another key's", ca.sign_gateway(&other_key, id).unwrap()),
        ("a server's", ca.issue_server("other").unwrap().0),
        ("no certificate", "-----BEGIN NOTHING-----".to_owned()),
    ] {
        stream
            .send(Down::Certificate {
                certificate_pem: forged,
            })
            .await
            .unwrap();
        match reply(&mut stream).await {
            Up::Refused { error } => assert!(error.contains("refused"), "{what}: {error}"),
            other => panic!("{what} was answered {other:?}"),
        }
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            pem,
            "{what} written"
        );
        assert_eq!(certificate.pem(), pem, "{what} taken");
        assert_eq!(presented(&ca, addr, id).await, old, "{what} served");
    }

    // The stream went on: a genuine renewal is taken, kept and served; this connection
    // carries on.
    let renewed = ca.renew_gateway(&csr_pem, id, &old).unwrap();
    stream
        .send(Down::Certificate {
            certificate_pem: renewed.clone(),
        })
        .await
        .unwrap();
    let Up::CertificateRenewed { not_after } = reply(&mut stream).await else {
        panic!("the genuine certificate was not taken");
    };
    let new = CertificateInfo::from_pem(&renewed).unwrap();
    assert_eq!(not_after, new.not_after);
    assert_eq!(std::fs::read_to_string(&file).unwrap(), renewed);
    assert_eq!(presented(&ca, addr, id).await, new);
    stream.send(Down::RenewCertificate).await.unwrap();
    assert!(matches!(
        reply(&mut stream).await,
        Up::CertificateRequest { .. }
    ));

    drop(stream);
    accept.abort();
    let _ = accept.await;
    gw.shutdown().await;
}
