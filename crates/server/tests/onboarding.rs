//! Onboarding over HTTP, against a real server on an ephemeral port: adding a site
//! (API), the line and its token, the script a router fetches, the enrolment it posts
//! (hostile bodies refused, nothing changed), spent, replaced, expired and unknown
//! tokens, key and serial clashes, re-issuing, the removal script, the rate limit, and
//! the OpenAPI document naming all of it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use postern_server as server;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use server::config::{RegionConfig, ServerConfig};

struct ManualClock(Mutex<DateTime<Utc>>);

impl server::Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

impl ManualClock {
    fn advance(&self, by: TimeDelta) {
        *self.0.lock().unwrap() += by;
    }
}

struct Server {
    base: String,
    http: reqwest::Client,
    store: store::Store,
    clock: Arc<ManualClock>,
    admin: String,
    operator: String,
    viewer: String,
    other_admin: String,
    _dir: tempfile::TempDir,
}

async fn token(store: &store::Store, org: domain::OrgId, role: domain::Role) -> String {
    let secret = server::auth::generate_token();
    store
        .create_api_token(store::NewApiToken {
            org_id: org,
            name: format!("{role:?}"),
            role,
            token_hash: server::auth::hash_token(&secret),
            created_by: None,
            expires_at: None,
        })
        .await
        .unwrap();
    secret
}

/// A server on SQLite in a temporary directory, `public_url` set, and the enrolment
/// rate limit at `per_minute`.
async fn start(per_minute: u32) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let mut region = RegionConfig::local();
    region.entry_point = "gw.example.net".into();
    // No gateway runs in these tests: routers are told the configured endpoint.
    region.tunnel_endpoint = Some("gw.example.net:51820".into());
    let config = ServerConfig {
        data_dir: dir.path().to_owned(),
        public_url: Some("https://postern.example.com".into()),
        regions: vec![region],
        ..ServerConfig::default()
    };
    let store = server::bootstrap::open_store(&config).await.unwrap();
    let region = store.find_region_by_name("local").await.unwrap().unwrap();
    store
        .ensure_region_tunnel(
            region.id,
            &store::Secret::new("private"),
            "GATEWAYkeyGATEWAYkeyGATEWAYkeyGATEWAYkey00=",
        )
        .await
        .unwrap();
    let org = store.create_organisation("alpha").await.unwrap().id;
    let other = store.create_organisation("beta").await.unwrap().id;
    let clock = Arc::new(ManualClock(Mutex::new(Utc::now())));
    let mut state = server::AppState::new(store.clone(), config, clock.clone());
    state.enroll_limit = server::onboarding::RateLimit::new(per_minute, Duration::from_secs(60));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(server::run(listener, state, std::future::pending()));
    Server {
        base: format!("http://{addr}"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        admin: token(&store, org, domain::Role::Admin).await,
        operator: token(&store, org, domain::Role::Operator).await,
        viewer: token(&store, org, domain::Role::Viewer).await,
        other_admin: token(&store, other, domain::Role::Admin).await,
        store,
        clock,
        _dir: dir,
    }
}

impl Server {
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let kind = content_type(&resp);
        let text = resp.text().await.unwrap();
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(kind, "application/problem+json", "{status} {path}: {text}");
        }
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// What a router's `/tool fetch` of its script gets: status, content type, text.
    async fn script(&self, token: &str) -> (StatusCode, String, String) {
        let resp = self
            .http
            .get(format!("{}/enroll/{token}", self.base))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let kind = content_type(&resp);
        if status == StatusCode::OK {
            assert_eq!(resp.headers()["cache-control"], "no-store");
        }
        (status, kind, resp.text().await.unwrap())
    }

    /// What the script posts back: raw bytes as `http-data`.
    async fn report(&self, token: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!("{}/enroll/{token}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let kind = content_type(&resp);
        let text = resp.text().await.unwrap();
        if !status.is_success() {
            assert_eq!(kind, "application/problem+json", "{status}: {text}");
        }
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn add_site(&self, name: &str) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/sites",
                Some(&self.operator),
                Some(json!({ "name": name })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// The token inside a line's URL.
fn token_of(enrollment: &Value) -> String {
    let url = enrollment["url"].as_str().unwrap();
    url.rsplit_once("/enroll/").unwrap().1.to_owned()
}

fn report(key: &str, serial: &str) -> Value {
    json!({
        "public_key": key,
        "identity": "MikroTik",
        "version": "7.21.4 (stable)",
        "board": "hAP ax3",
        "serial": serial,
        "api_port": 8728,
        "ssh_port": 2222,
        "winbox_port": 8291
    })
}

const KEY_A: &str = "hT3p0Rk4VxgZf5H0Uq7m1c3lQWqz8dJv6yY2bN0aE1s=";
const KEY_B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_is_added_and_its_router_enrols_once() {
    let s = start(1000).await;

    // Who may add a site, and what is refused.
    let (status, _) = s
        .call(
            Method::POST,
            "/api/sites",
            Some(&s.viewer),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = s
        .call(Method::POST, "/api/sites", None, Some(json!({"name": "x"})))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = s
        .call(
            Method::POST,
            "/api/sites",
            Some(&s.operator),
            Some(json!({"name": "x", "region": "mars"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["field"], "region", "{body}");
    let (status, body) = s
        .call(
            Method::POST,
            "/api/sites",
            Some(&s.operator),
            Some(json!({"name": ""})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");

    // The site, its pending router and its line.
    let created = s.add_site("branch-7").await;
    assert_eq!(created["name"], "branch-7");
    assert_eq!(created["router_id"], created["router"]["id"]);
    assert_eq!(created["router"]["tunnel_address"], "100.64.0.2");
    assert_eq!(created["router"]["username"], "postern");
    assert_eq!(created["router"]["status"], "pending");
    assert_eq!(
        created["router"]["tunnel"]["type"], "wireguard",
        "{created}"
    );
    let enrollment = &created["enrollment"];
    let token = token_of(enrollment);
    assert!(server::onboarding::well_formed(&token), "{token}");
    assert_eq!(
        enrollment["url"],
        format!("https://postern.example.com/enroll/{token}")
    );
    let command = enrollment["command"].as_str().unwrap();
    assert_eq!(
        command,
        server::onboarding::paste_line(
            &server::onboarding::PublicUrl::parse("https://postern.example.com", false).unwrap(),
            &token
        )
    );
    assert!(command.contains("check-certificate=yes-without-crl"));
    let expires: DateTime<Utc> = enrollment["expires_at"].as_str().unwrap().parse().unwrap();
    let lifetime = expires - *s.clock.0.lock().unwrap();
    assert!(
        (lifetime - TimeDelta::hours(24)).num_seconds().abs() <= 1,
        "{lifetime}"
    );
    let (status, _) = s
        .call(
            Method::POST,
            "/api/sites",
            Some(&s.operator),
            Some(json!({"name": "branch-7"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // Only the hash is stored.
    let raw = s
        .store
        .find_enrollment(&server::auth::hash_token(&token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw.created_by, "token:Operator");

    // The script: text, RouterOS 7 commands only, the login's password stored sealed.
    let (status, kind, script) = s.script(&token).await;
    assert_eq!(status, StatusCode::OK, "{script}");
    assert_eq!(kind, "text/plain; charset=utf-8");
    let db = surface::Database::routeros_7().unwrap();
    assert!(
        db.check_script(&script).is_empty(),
        "{:?}",
        db.check_script(&script)
    );
    assert!(script.contains("address=100.64.0.2/32 network=100.64.0.1"));
    let region = s.store.find_region_by_name("local").await.unwrap().unwrap();
    let gateway_key = s
        .store
        .region_tunnel(region.id)
        .await
        .unwrap()
        .unwrap()
        .public_key;
    assert!(script.contains(&format!("public-key=\"{gateway_key}\"")));
    assert!(script.contains("endpoint-address=\"gw.example.net\" endpoint-port=51820"));
    assert!(script.contains(&format!(
        "url=\"https://postern.example.com/enroll/{token}\""
    )));
    let password = script
        .split("password=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    assert_eq!(password.len(), 32);
    let router_id: domain::RouterId = created["router_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        s.store.router_password(router_id).await.unwrap().expose(),
        password
    );

    // Hostile reports change nothing: the token stays open.
    let long = json!({ "public_key": "A".repeat(5000) });
    let huge = json!({ "public_key": "A".repeat(100_000) });
    for (body, status, field) in [
        (bytes(&huge), StatusCode::PAYLOAD_TOO_LARGE, None),
        (bytes(&long), StatusCode::PAYLOAD_TOO_LARGE, None),
        (b"{not json".to_vec(), StatusCode::BAD_REQUEST, None),
        (
            bytes(&json!({"public_key": KEY_A})),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            bytes(&{
                let mut r = report(KEY_A, "");
                r["extra"] = json!(1);
                r
            }),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            bytes(&report("c2hvcnQ=", "")),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("public_key"),
        ),
        (
            bytes(&{
                let mut r = report(KEY_A, "");
                r["identity"] = json!("a\u{1b}[31mb");
                r
            }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("identity"),
        ),
        (
            bytes(&{
                let mut r = report(KEY_A, "");
                r["api_port"] = json!(70000);
                r
            }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("api_port"),
        ),
        (
            bytes(&{
                let mut r = report(KEY_A, "");
                r["version"] = json!("6.49.8 (long-term)");
                r
            }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("version"),
        ),
        (
            bytes(&report(KEY_A, "bad serial!")),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("serial"),
        ),
    ] {
        let (got, problem) = s.report(&token, body).await;
        assert_eq!(got, status, "{problem}");
        if let Some(field) = field {
            assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        }
    }
    let router = s.store.get_router_any_org(router_id).await.unwrap();
    assert_eq!(router.tunnel_public_key, None);

    // Enrolment: the key and facts recorded, the token spent, audited.
    let (status, body) = s.report(&token, bytes(&report(KEY_A, "HE608ABC"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["address"], "100.64.0.2");
    assert_eq!(body["gateway_address"], "100.64.0.1");
    let (_, view) = s
        .call(
            Method::GET,
            &format!("/api/routers/{router_id}"),
            Some(&s.viewer),
            None,
        )
        .await;
    assert_eq!(view["identity"], "MikroTik");
    assert_eq!(view["routeros_version"], "7.21.4 (stable)");
    assert_eq!(view["board_name"], "hAP ax3");
    assert_eq!(view["ssh_port"], 2222);
    // Enrolled: no longer pending (offline here: no gateway runs in this test).
    assert_eq!(view["status"], "offline", "{view}");
    let (_, audit) = s
        .call(Method::GET, "/api/audit", Some(&s.admin), None)
        .await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for wanted in [
        "site.create",
        "site.enrollment.issue",
        "router.enroll.script",
        "router.enroll",
    ] {
        assert!(actions.contains(&wanted), "{wanted} not in {actions:?}");
    }
    assert!(
        !audit.to_string().contains(&token),
        "the token is in the audit log"
    );
    assert!(
        !audit.to_string().contains(password),
        "the password is in the audit log"
    );

    // Spent: both routes say so, and nothing changes.
    let (status, problem) = s.report(&token, bytes(&report(KEY_B, ""))).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(
        problem["detail"].as_str().unwrap().contains("used already"),
        "{problem}"
    );
    let (status, _, text) = s.script(&token).await;
    assert_eq!(status, StatusCode::GONE, "{text}");
    assert_eq!(
        s.store
            .get_router_any_org(router_id)
            .await
            .unwrap()
            .tunnel_public_key
            .as_deref(),
        Some(KEY_A)
    );

    // Unknown and malformed tokens.
    let unknown = format!("pet_{}", "Z".repeat(43));
    for t in [unknown.as_str(), "pet_short", "..%2F..%2Fetc", "pst_x"] {
        let (status, _, text) = s.script(t).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{t}: {text}");
        let (status, _) = s.report(t, bytes(&report(KEY_B, ""))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{t}");
    }

    // Another site may not take the key, nor the serial; its token stays open.
    let second = s.add_site("branch-8").await;
    let token2 = token_of(&second["enrollment"]);
    let (status, problem) = s.report(&token2, bytes(&report(KEY_A, ""))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "public_key");
    let (status, problem) = s.report(&token2, bytes(&report(KEY_B, "HE608ABC"))).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "serial");

    // Re-issuing: the old line is replaced; for an enrolled router, admins only; not
    // for another organisation.
    let site2 = second["id"].as_str().unwrap();
    let (status, line) = s
        .call(
            Method::POST,
            &format!("/api/sites/{site2}/enrollment"),
            Some(&s.operator),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{line}");
    let token3 = token_of(&line);
    assert_ne!(token3, token2);
    let (status, problem) = s.report(&token2, bytes(&report(KEY_B, ""))).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(
        problem["detail"].as_str().unwrap().contains("newer"),
        "{problem}"
    );
    let (status, _) = s
        .call(
            Method::POST,
            &format!("/api/sites/{site2}/enrollment"),
            Some(&s.other_admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let site1 = created["id"].as_str().unwrap();
    let (status, _) = s
        .call(
            Method::POST,
            &format!("/api/sites/{site1}/enrollment"),
            Some(&s.operator),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(
            Method::POST,
            &format!("/api/sites/{site1}/enrollment"),
            Some(&s.admin),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    // Expiry: the line stops working after its lifetime.
    s.clock
        .advance(TimeDelta::hours(24) + TimeDelta::seconds(1));
    let (status, problem) = s.report(&token3, bytes(&report(KEY_B, ""))).await;
    assert_eq!(status, StatusCode::GONE);
    assert!(
        problem["detail"].as_str().unwrap().contains("expired"),
        "{problem}"
    );

    // The removal script.
    let (status, removal) = s
        .call(
            Method::GET,
            &format!("/api/sites/{site1}/removal"),
            Some(&s.viewer),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let command = removal["command"].as_str().unwrap();
    assert!(
        command
            .contains("/interface wireguard remove [find where comment=\"postern:tunnel:interface")
    );
    assert!(db.check_script(command).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_routes_are_rate_limited_per_address() {
    let s = start(5).await;
    let unknown = format!("pet_{}", "Z".repeat(43));
    for _ in 0..5 {
        let (status, _, _) = s.script(&unknown).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    let (status, _, text) = s.script(&unknown).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{text}");
    let (status, _) = s.report(&unknown, bytes(&report(KEY_A, ""))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // The API itself is not limited by it.
    let (status, _) = s
        .call(Method::GET, "/api/sites", Some(&s.viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_onboarding() {
    let doc = serde_json::to_value(server::openapi()).unwrap();
    let paths = &doc["paths"];
    assert!(paths["/api/sites"]["post"].is_object());
    assert!(paths["/api/sites/{site_id}/enrollment"]["post"].is_object());
    assert!(paths["/api/sites/{site_id}/removal"]["get"].is_object());
    for method in ["get", "post"] {
        let op = &paths["/enroll/{token}"][method];
        for status in ["404", "410", "429"] {
            assert!(op["responses"][status].is_object(), "{method} {status}");
        }
        assert_eq!(op["security"], json!([{}]), "{method} needs no credential");
    }
    for status in ["400", "409", "413", "422"] {
        assert!(
            paths["/enroll/{token}"]["post"]["responses"][status].is_object(),
            "{status}"
        );
    }
    let schemas = &doc["components"]["schemas"];
    for field in [
        "public_key",
        "identity",
        "version",
        "board",
        "serial",
        "api_port",
        "ssh_port",
        "winbox_port",
    ] {
        assert!(
            schemas["EnrollReport"]["properties"][field].is_object(),
            "{field}"
        );
    }
    assert!(schemas["CreatedSite"]["properties"]["enrollment"].is_object());
    assert!(schemas["EnrollmentView"]["properties"]["expires_at"].is_object());
}

/// Sends one HTTP/1.1 request over TLS to `addr`, trusting `ca` alone; the response.
async fn https_get(addr: SocketAddr, ca: &[u8], path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(ca.to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// `postern server` terminates TLS itself from `tls_cert` and `tls_key`: a client
/// trusting the certificate gets the API and a router's script over HTTPS, the line
/// names `https://` and checks the certificate; a client that does not trust it, or
/// speaks plain HTTP, gets nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_speaks_https_from_its_certificate_and_key() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let dir = tempfile::tempdir().unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert, made.cert.pem()).unwrap();
    std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut region = RegionConfig::local();
    region.tunnel_endpoint = Some("gw.example.net:51820".into());
    let config = ServerConfig {
        data_dir: dir.path().join("data"),
        listen: addr,
        tls_cert: Some(cert),
        tls_key: Some(key),
        public_hosts: vec!["localhost".into()],
        regions: vec![region],
        ..ServerConfig::default()
    };
    let store = server::bootstrap::open_store(&config).await.unwrap();
    let org = store.create_organisation("alpha").await.unwrap().id;
    let operator = token(&store, org, domain::Role::Operator).await;
    let state = server::AppState::new(store.clone(), config.clone(), Arc::new(server::SystemClock));
    tokio::spawn(server::run(listener, state, std::future::pending()));

    let ca = made.cert.der().to_vec();
    let health = https_get(addr, &ca, "/healthz").await.unwrap();
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    assert!(
        health.ends_with(r#"{"status":"ok","database":"sqlite"}"#),
        "{health}"
    );

    // Without public_url, the line names this server over HTTPS.
    let (_, _, line) = server::sites::add_site(
        &store,
        &config,
        &server::sites::Asker {
            org_id: org,
            actor: "test".into(),
            address: None,
        },
        "tls-site",
        None,
        Utc::now(),
    )
    .await
    .unwrap();
    assert!(
        line.url.starts_with(&format!("https://{addr}/enroll/pet_")),
        "{}",
        line.url
    );
    assert!(line.command.contains("check-certificate=yes-without-crl"));
    let path = line.url.split_once(&addr.to_string()).unwrap().1.to_owned();
    let script = https_get(addr, &ca, &path).await.unwrap();
    assert!(script.starts_with("HTTP/1.1 200 OK"), "{script}");
    assert!(
        script.contains("/interface wireguard add name=postern"),
        "{script}"
    );
    drop(operator);

    // A client trusting another certificate is refused by its own check.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let refused = https_get(addr, other.cert.der(), "/healthz").await;
    assert!(refused.is_err(), "{refused:?}");
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got)).await;
    assert!(!String::from_utf8_lossy(&got).contains("200 OK"));
}

#[test]
fn a_tls_certificate_without_its_key_is_refused() {
    let e = ServerConfig::load(
        None,
        [("POSTERN_TLS_CERT".to_owned(), "/x.pem".to_owned())],
        &server::config::Overrides::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("tls_key"), "{e}");
    let e = ServerConfig::load(
        None,
        [(
            "POSTERN_PUBLIC_URL".to_owned(),
            "http://postern.example.com".to_owned(),
        )],
        &server::config::Overrides::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("lab mode"), "{e}");
    let c = ServerConfig::default();
    assert!(c.enroll_url().unwrap_err().contains("public_url"));
    let lab = ServerConfig {
        lab_mode: true,
        ..ServerConfig::default()
    };
    assert_eq!(lab.enroll_url().unwrap().origin, "http://127.0.0.1:8080");
}

/// With the in-process gateway running: the script names the tunnel as it really runs
/// (the region's key, the port it is bound on), and by the time the enrolment is
/// answered the gateway already holds the router's key as a peer at its address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_admits_the_router_before_the_answer() {
    use server::tunnels::TunnelGateway as _;
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        data_dir: dir.path().to_owned(),
        public_url: Some("https://postern.example.com".into()),
        regions: vec![RegionConfig::local()],
        ..ServerConfig::default()
    };
    let store = server::bootstrap::open_store(&config).await.unwrap();
    let org = store.create_organisation("alpha").await.unwrap().id;
    let operator = token(&store, org, domain::Role::Operator).await;
    let plane =
        server::dataplane::GatewayPlane::start(store.clone(), &config, gateway::Config::default())
            .await
            .unwrap();
    let region = store.find_region_by_name("local").await.unwrap().unwrap();
    let info = plane
        .tunnels()
        .region(region.id)
        .expect("the local region's tunnel");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = server::AppState::new(store.clone(), config, Arc::new(server::SystemClock))
        .with_gateway(plane.clone());
    tokio::spawn(server::run(listener, state, std::future::pending()));
    let http = reqwest::Client::new();

    let created: Value = http
        .post(format!("{base}/api/sites"))
        .bearer_auth(&operator)
        .json(&json!({ "name": "nat-1" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let router_id: domain::RouterId = created["router_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(created["router"]["status"], "pending");
    assert_eq!(created["router"]["tunnel"]["gateway_address"], "100.64.0.1");
    let token = token_of(&created["enrollment"]);
    let script = http
        .get(format!("{base}/enroll/{token}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        script.contains(&format!("public-key=\"{}\"", info.public_key)),
        "{script}"
    );
    assert!(
        script.contains(&format!(
            "endpoint-address=\"127.0.0.1\" endpoint-port={}",
            info.listen.port()
        )),
        "{script}"
    );
    assert!(plane.tunnels().tunnel_status(router_id).is_none());

    let key = tunnel::PrivateKey::generate()
        .unwrap()
        .public_key()
        .to_base64();
    let resp = http
        .post(format!("{base}/enroll/{token}"))
        .json(&report(&key, ""))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Admitted before the answer: the gateway knows the peer now.
    assert!(plane.tunnels().tunnel_status(router_id).is_some());
    let view: Value = http
        .get(format!("{base}/api/routers/{router_id}"))
        .bearer_auth(&operator)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        view["status"], "offline",
        "enrolled, not yet heard from: {view}"
    );
    assert_eq!(view["tunnel"]["address"], "100.64.0.2");
    plane.shutdown().await;
}
