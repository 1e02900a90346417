//! A region served by a remote gateway, as the API, the portal and `/metrics` show it:
//! a real server (its gateway plane and links, as `postern server` runs them) with one
//! region configured `gateway = "remote"`, and a real `gateway::Node` served over the
//! control channel (TCP, mTLS, h2) on loopback. The region's gateway goes from `none`
//! (nothing added) to `pending` (added), `down` (joined at an address where nothing
//! listens), `up` (the node listens there), `down` again (the node stopped) and `up`
//! once more (a new node at that address); its enrolled router shows
//! `gateway_unreachable` whenever the link is not up, and `offline` (not heard from)
//! while it is.

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

use harness::{Ctx, Db};
use postern_server as server;
use reqwest::StatusCode;
use serde_json::Value;
use server::config::{GatewayMode, RegionConfig, ServerConfig};

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
    let node = gateway::Node::start(config).await.unwrap();
    let handler = node.handler();
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
    let secret = server::auth::generate_token();
    store
        .create_api_token(store::NewApiToken {
            org_id: org,
            name: "viewer".into(),
            role: domain::Role::Viewer,
            token_hash: server::auth::hash_token(&secret),
            created_by: None,
            expires_at: None,
        })
        .await
        .unwrap();
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
