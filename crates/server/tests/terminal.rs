//! The portal's terminal end to end: a real server on 127.0.0.1:0 with its orchestrator,
//! a sim router on a 127.x address, a signed-in portal session, the Terminal button, and
//! a WebSocket client (tokio-tungstenite) in place of xterm.js. The identity printed by
//! the router comes back through the bridge; closing the terminal (either side) revokes
//! the access on the router; the recording is valid asciicast v2 with what was shown.
//! And the refusals: no session, another site's page (`Origin`), another organisation's
//! or another user's terminal, a second connection, a viewer, hostile messages. And a
//! terminal ends with the portal session that opened it: logout, expiry, deletion.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use futures::{SinkExt as _, StreamExt as _};
use postern_server as server;
use reqwest::StatusCode;
use serde_json::Value;
use server::config::ServerConfig;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

const PASSWORD: &str = "correct horse battery";

/// The server's clock: the real time, plus what a test moves it on by.
#[derive(Default)]
struct Ahead(AtomicI64);

impl Ahead {
    fn advance(&self, by: chrono::TimeDelta) {
        self.0.fetch_add(by.num_seconds(), Ordering::SeqCst);
    }
}

impl server::Clock for Ahead {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now() + chrono::TimeDelta::seconds(self.0.load(Ordering::SeqCst))
    }
}

struct World {
    base: String,
    addr: SocketAddr,
    http: reqwest::Client,
    store: store::Store,
    org: domain::OrgId,
    site: domain::SiteId,
    other_site: domain::SiteId,
    router: store::Router,
    sim: sim::RouterHandle,
    clock: Arc<Ahead>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    stop_jobs: tokio::sync::watch::Sender<bool>,
    jobs: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

async fn user(store: &store::Store, org: domain::OrgId, name: &str, role: domain::Role) {
    store
        .create_user(store::NewUser {
            org_id: org,
            username: name.into(),
            role,
            password_hash: server::auth::hash_password(PASSWORD).unwrap(),
        })
        .await
        .unwrap();
}

impl World {
    /// A server (lab mode: loopback visitors are allowed) with its orchestrator, a sim
    /// router `identity` at `address` in organisation "default" (users alice, carol and the
    /// viewer victor), and organisation "beta" (bob) with a router of its own.
    async fn start(identity: &str, address: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            data_dir: dir.path().to_owned(),
            lab_mode: true,
            ..ServerConfig::default()
        };
        let store = server::bootstrap::open_store(&config).await.unwrap();
        let org = store.create_organisation("default").await.unwrap().id;
        let other = store.create_organisation("beta").await.unwrap().id;
        user(&store, org, "alice", domain::Role::Admin).await;
        user(&store, org, "carol", domain::Role::Admin).await;
        user(&store, org, "victor", domain::Role::Viewer).await;
        user(&store, other, "bob", domain::Role::Admin).await;
        let region = store.list_regions().await.unwrap()[0].id;
        let sim =
            sim::RouterHandle::start(sim::RouterOptions::new(identity, address.parse().unwrap()))
                .await
                .unwrap();
        let router = store
            .create_router(store::NewRouter {
                org_id: org,
                site_name: Some(format!("{identity} site")),
                region_id: region,
                name: identity.into(),
                tunnel_address: sim.ssh_addr.ip(),
                api_port: sim.api_addr.port(),
                ssh_port: sim.ssh_addr.port(),
                winbox_port: sim.winbox_addr.port(),
                api_tls: false,
                api_tls_fingerprint: None,
                username: "admin".into(),
                password: sim.admin_password.clone(),
            })
            .await
            .unwrap();
        let other_site = store
            .create_router(store::NewRouter {
                org_id: other,
                site_name: Some("beta site".into()),
                region_id: region,
                name: "beta-01".into(),
                tunnel_address: "10.255.0.2".parse().unwrap(),
                api_port: 8728,
                ssh_port: 22,
                winbox_port: 8291,
                api_tls: false,
                api_tls_fingerprint: None,
                username: "postern".into(),
                password: "router-secret".into(),
            })
            .await
            .unwrap()
            .site_id;
        let orch = orchestrator::Orchestrator::new(
            store.clone(),
            orchestrator::Config {
                backoff_base: Duration::from_millis(200),
                backoff_max: Duration::from_millis(800),
                connect_timeout: Duration::from_secs(2),
                command_timeout: Duration::from_secs(3),
                ..orchestrator::Config::default()
            },
            Arc::new(orchestrator::SystemClock),
            Arc::new(orchestrator::LoggingDataPlane),
        );
        let (stop_jobs, jobs_stopped) = tokio::sync::watch::channel(false);
        let jobs = tokio::spawn(orch.clone().run(jobs_stopped));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let clock = Arc::new(Ahead::default());
        let state =
            server::AppState::new(store.clone(), config, clock.clone()).with_orchestrator(orch);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, state, async {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://{addr}"),
            addr,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            site: router.site_id,
            store,
            org,
            other_site,
            router,
            sim,
            clock,
            shutdown: Some(tx),
            task: Some(task),
            stop_jobs,
            jobs: Some(jobs),
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        let _ = self.stop_jobs.send(true);
        if let Some(jobs) = self.jobs.take() {
            let _ = jobs.await;
        }
        self.sim.shutdown().await;
    }

    /// Signs in; the session cookie's value.
    async fn login(&self, username: &str) -> String {
        let resp = self
            .http
            .post(format!("{}/login", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!(
                "username={username}&password={}&organisation={}",
                PASSWORD.replace(' ', "+"),
                // bob is organisation "beta"'s; the others "default"'s.
                if username == "bob" { "beta" } else { "" }
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::SEE_OTHER);
        let set_cookie = resp.headers()["set-cookie"].to_str().unwrap();
        set_cookie
            .split(';')
            .next()
            .unwrap()
            .split_once('=')
            .unwrap()
            .1
            .to_owned()
    }

    /// Signs in; the session cookie's value and the CSRF token of its pages.
    async fn sign_in(&self, username: &str) -> (String, String) {
        let cookie = self.login(username).await;
        let page = self.page(&format!("/sites/{}", self.site), &cookie).await;
        let marker = r#""x-csrf-token": ""#;
        let at = page.find(marker).expect("a csrf token in the page") + marker.len();
        let csrf = page[at..].split('"').next().unwrap().to_owned();
        (cookie, csrf)
    }

    async fn get(&self, path: &str, cookie: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header("cookie", format!("postern_session={cookie}"))
            .send()
            .await
            .unwrap()
    }

    async fn page(&self, path: &str, cookie: &str) -> String {
        let resp = self.get(path, cookie).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        resp.text().await.unwrap()
    }

    /// Presses Terminal on `site` as htmx does: the panel's HTML.
    async fn press_terminal(
        &self,
        site: domain::SiteId,
        cookie: &str,
        csrf: &str,
    ) -> (StatusCode, String) {
        let resp = self
            .http
            .post(format!("{}/sites/{site}/terminal", self.base))
            .header("cookie", format!("postern_session={cookie}"))
            .header("x-csrf-token", csrf)
            .header("hx-request", "true")
            .header("origin", &self.base)
            .send()
            .await
            .unwrap();
        (resp.status(), resp.text().await.unwrap())
    }

    /// A new terminal for `user`: its WebSocket path and its access id.
    async fn terminal(&self, cookie: &str, csrf: &str) -> (String, domain::AccessId) {
        let (status, panel) = self.press_terminal(self.site, cookie, csrf).await;
        assert_eq!(status, StatusCode::OK, "{panel}");
        let marker = r#"data-ws=""#;
        let at = panel
            .find(marker)
            .unwrap_or_else(|| panic!("no data-ws in {panel}"))
            + marker.len();
        let path = panel[at..].split('"').next().unwrap().to_owned();
        let id = path.split('/').nth(4).unwrap().parse().unwrap();
        (path, id)
    }

    /// Opens a WebSocket at `path` with these headers; the socket, or the HTTP refusal.
    async fn connect(
        &self,
        path: &str,
        cookie: Option<&str>,
        origin: Option<&str>,
    ) -> Result<Ws, (u16, String)> {
        let mut req = format!("ws://{}{path}", self.addr)
            .into_client_request()
            .unwrap();
        if let Some(c) = cookie {
            req.headers_mut()
                .insert("cookie", format!("postern_session={c}").parse().unwrap());
        }
        if let Some(o) = origin {
            req.headers_mut().insert("origin", o.parse().unwrap());
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(ws),
            Err(tungstenite::Error::Http(resp)) => Err((
                resp.status().as_u16(),
                resp.body()
                    .as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .unwrap_or_default(),
            )),
            Err(e) => panic!("websocket: {e}"),
        }
    }

    async fn access(&self, id: domain::AccessId) -> store::TransientAccess {
        self.store
            .get_access(self.org, self.router.id, id)
            .await
            .unwrap()
    }

    /// Waits until the access reaches `status`.
    async fn until_status(&self, id: domain::AccessId, status: domain::GrantStatus) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let g = self.access(id).await;
            if g.status == status {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "access is {:?}, expected {status:?}",
                g.status
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn sim_has_user(&self, name: &str) -> bool {
        self.sim
            .router()
            .state()
            .users
            .items
            .iter()
            .any(|u| u.get("name") == Some(name))
    }
}

/// What the terminal shows, and how it ended: reads until `until` is in the output (or
/// the end note, when `until` is `None`).
struct Screen {
    text: String,
    notes: Vec<Value>,
}

impl Screen {
    fn new() -> Self {
        Self {
            text: String::new(),
            notes: Vec::new(),
        }
    }

    fn ended(&self) -> Option<String> {
        self.notes
            .iter()
            .find(|n| n["type"] == "end")
            .map(|n| n["reason"].as_str().unwrap().to_owned())
    }

    /// Reads frames until `until` appears in the output (or, with `None`, the socket
    /// closes), within 15 s.
    async fn read(&mut self, ws: &mut Ws, until: Option<&str>) {
        match until {
            Some(u) => self.read_until(ws, |t| t.contains(u)).await,
            None => self.read_to_close(ws).await,
        }
    }

    async fn read_until(&mut self, ws: &mut Ws, done: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while !done(&self.text) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Ok(msg) = tokio::time::timeout(left, ws.next()).await else {
                panic!(
                    "timed out; screen: {:?}; notes: {:?}",
                    self.text, self.notes
                );
            };
            if !self.take(msg) {
                panic!(
                    "closed early; screen: {:?}; notes: {:?}",
                    self.text, self.notes
                );
            }
        }
    }

    async fn read_to_close(&mut self, ws: &mut Ws) {
        loop {
            let Ok(msg) = tokio::time::timeout(Duration::from_secs(15), ws.next()).await else {
                panic!(
                    "not closed; screen: {:?}; notes: {:?}",
                    self.text, self.notes
                );
            };
            if !self.take(msg) {
                return;
            }
        }
    }

    /// Notes a frame; false once the socket is closed.
    fn take(&mut self, msg: Option<Result<Message, tungstenite::Error>>) -> bool {
        match msg {
            Some(Ok(Message::Binary(b))) => self.text.push_str(&String::from_utf8_lossy(&b)),
            Some(Ok(Message::Text(t))) => self.notes.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return false,
            Some(Ok(_)) => {}
        }
        true
    }
}

/// Parses an asciicast v2 text: its header and events.
fn asciicast(text: &str) -> (Value, Vec<Value>) {
    let mut lines = text.lines();
    let header: Value = serde_json::from_str(lines.next().unwrap()).unwrap();
    let events = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
    (header, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_runs_a_command_on_the_router_is_recorded_and_revoked_when_closed() {
    let w = World::start("branch-77", "127.77.0.2").await;
    let (cookie, csrf) = w.sign_in("alice").await;
    let overview = w.page(&format!("/sites/{}", w.site), &cookie).await;
    assert!(
        overview.contains(r#"id="terminal-open""#),
        "the Terminal button"
    );
    assert!(overview.contains(r#"id="terminal-dock""#));

    let (path, id) = w.terminal(&cookie, &csrf).await;
    // The access is the user's own, SSH, from their address, active on the router.
    let grant = w.access(id).await;
    assert_eq!(grant.status, domain::GrantStatus::Active);
    assert_eq!(grant.access_type, domain::AccessType::Ssh);
    assert_eq!(grant.created_by, "alice");
    assert_eq!(grant.allow_from.to_string(), "127.0.0.1/32");
    assert!(w.sim_has_user(&grant.username));
    // It is listed like any other grant.
    let listed = w.page(&format!("/sites/{}/access", w.site), &cookie).await;
    assert!(listed.contains(&grant.username));

    let origin = w.base.clone();
    let mut ws = w
        .connect(
            &format!("{path}?cols=100&rows=30"),
            Some(&cookie),
            Some(&origin),
        )
        .await
        .unwrap();
    let mut screen = Screen::new();
    let prompt = format!("[{}@branch-77] > ", grant.username);
    screen.read(&mut ws, Some(&prompt)).await;
    ws.send(Message::Binary(b"/system identity print\r".to_vec().into()))
        .await
        .unwrap();
    screen.read(&mut ws, Some("name: branch-77")).await;
    ws.send(Message::Text(
        r#"{"type":"resize","cols":120,"rows":40}"#.into(),
    ))
    .await
    .unwrap();
    // A paste arrives as one message.
    ws.send(Message::Binary(
        b"/system identity print\r/system identity print\r"
            .to_vec()
            .into(),
    ))
    .await
    .unwrap();
    screen
        .read_until(&mut ws, |t| t.matches("name: branch-77").count() >= 3)
        .await;
    // A second connection to the same terminal is refused while it runs.
    let again = w.connect(&path, Some(&cookie), Some(&origin)).await;
    assert_eq!(again.err().map(|e| e.0), Some(409));

    // The browser closes the terminal: the access is revoked, the user gone from the router.
    ws.close(None).await.unwrap();
    screen.read(&mut ws, None).await;
    w.until_status(id, domain::GrantStatus::Revoked).await;
    assert!(!w.sim_has_user(&grant.username));

    // The recording: asciicast v2 with the output and the resize.
    let session = w.store.get_terminal_session(w.org, id).await.unwrap();
    assert_eq!(session.end_reason.as_deref(), Some("closed in the browser"));
    let resp = w
        .get(&format!("/sites/{}/recordings/{id}/cast", w.site), &cookie)
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-asciicast");
    assert!(
        resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"postern-branch-77-")
    );
    let (header, events) = asciicast(&resp.text().await.unwrap());
    assert_eq!(header["version"], 2);
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(100), Some(30))
    );
    assert!(header["timestamp"].as_i64().unwrap() > 1_700_000_000);
    assert!(header["title"].as_str().unwrap().contains("branch-77"));
    let output: String = events
        .iter()
        .filter(|e| e[1] == "o")
        .map(|e| e[2].as_str().unwrap())
        .collect();
    assert!(output.contains("name: branch-77"), "{output}");
    assert!(
        output.contains("/system identity print"),
        "the echo is recorded"
    );
    assert!(events.iter().any(|e| e[1] == "r" && e[2] == "120x40"));
    let times: Vec<f64> = events.iter().map(|e| e[0].as_f64().unwrap()).collect();
    assert!(
        times.windows(2).all(|p| p[0] <= p[1]),
        "times only go forward"
    );
    // Replayable from the site: the Overview lists it, the replay page loads it.
    let overview = w.page(&format!("/sites/{}", w.site), &cookie).await;
    assert!(overview.contains(&format!("/sites/{}/recordings/{id}", w.site)));
    let ended = w.page(&format!("/sites/{}/access", w.site), &cookie).await;
    assert!(
        ended.contains(&format!(
            r#"<a href="/sites/{}/recordings/{id}">Recording</a>"#,
            w.site
        )),
        "the grant's row links its recording"
    );
    let replay = w
        .page(&format!("/sites/{}/recordings/{id}", w.site), &cookie)
        .await;
    assert!(replay.contains(&format!(
        r#"data-cast="/sites/{}/recordings/{id}/cast""#,
        w.site
    )));

    // Audited: created, started, revoked, ended.
    let audit = w
        .store
        .list_audit(
            w.org,
            store::Page {
                limit: 100,
                offset: 0,
            },
        )
        .await;
    let actions: Vec<String> = match audit {
        Ok(entries) => entries.iter().map(|e| e.action.clone()).collect(),
        Err(e) => panic!("audit: {e}"),
    };
    for action in [
        "access.create",
        "terminal.start",
        "access.revoke",
        "terminal.end",
    ] {
        assert!(
            actions.iter().any(|a| a == action),
            "{action} in {actions:?}"
        );
    }

    // The terminal cannot be opened again once used.
    let used = w.connect(&path, Some(&cookie), Some(&origin)).await;
    assert_eq!(used.err().map(|e| e.0), Some(409));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_exiting_ends_the_terminal_and_revokes_its_access() {
    let w = World::start("branch-78", "127.78.0.2").await;
    let (cookie, csrf) = w.sign_in("alice").await;
    let (path, id) = w.terminal(&cookie, &csrf).await;
    let mut ws = w
        .connect(&path, Some(&cookie), Some(&w.base))
        .await
        .unwrap();
    let mut screen = Screen::new();
    screen.read(&mut ws, Some("@branch-78] > ")).await;
    ws.send(Message::Binary(b"/quit\r".to_vec().into()))
        .await
        .unwrap();
    screen.read(&mut ws, None).await;
    assert_eq!(
        screen.ended().as_deref(),
        Some("the router ended the session")
    );
    w.until_status(id, domain::GrantStatus::Revoked).await;
    let (header, _) = asciicast(&w.store.terminal_recording(w.org, id).await.unwrap());
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(80), Some(24))
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminals_are_refused_to_strangers_and_hostile_messages_end_them() {
    let w = World::start("branch-79", "127.79.0.2").await;
    let (alice, csrf) = w.sign_in("alice").await;
    let (path, id) = w.terminal(&alice, &csrf).await;

    // No session: sent to the login page, whatever else is right.
    let refused = w.connect(&path, None, Some(&w.base)).await.err().unwrap();
    assert_eq!(refused.0, 303);
    // A page of another site: 403, and nothing claimed.
    for origin in [Some("http://evil.example"), Some("null"), None] {
        let refused = w.connect(&path, Some(&alice), origin).await.err().unwrap();
        assert_eq!(refused.0, 403, "{origin:?}");
    }
    // Another organisation: not found, by its own site or by this one.
    let bob = w.login("bob").await;
    let theirs = path.replace(&w.site.to_string(), &w.other_site.to_string());
    for p in [&path, &theirs] {
        let refused = w.connect(p, Some(&bob), Some(&w.base)).await.err().unwrap();
        assert_eq!(refused.0, 404, "{p}");
    }
    let resp = w
        .get(&format!("/sites/{}/recordings/{id}/cast", w.site), &bob)
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = w
        .get(
            &format!("/sites/{}/recordings/{id}/cast", w.other_site),
            &bob,
        )
        .await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Another user of the same organisation: not found either.
    let (carol, carol_csrf) = w.sign_in("carol").await;
    let refused = w
        .connect(&path, Some(&carol), Some(&w.base))
        .await
        .err()
        .unwrap();
    assert_eq!(refused.0, 404);
    let page = w
        .get(&format!("/sites/{}/terminal/{id}", w.site), &carol)
        .await;
    assert_eq!(page.status(), StatusCode::NOT_FOUND);
    // Recordings are the organisation's: carol may replay alice's.
    let replay = w
        .get(&format!("/sites/{}/recordings/{id}", w.site), &carol)
        .await;
    assert_eq!(replay.status(), StatusCode::OK);
    // A viewer is not offered the button, and may not press it.
    let (victor, victor_csrf) = w.sign_in("victor").await;
    let site_page = w.page(&format!("/sites/{}", w.site), &victor).await;
    assert!(!site_page.contains("terminal-open"));
    let (status, _) = w.press_terminal(w.site, &victor, &victor_csrf).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Nor may a viewer replay or download a recording (it holds what the router
    // printed): refused, and not linked from the Overview or the grant's row.
    for p in [
        format!("/sites/{}/recordings/{id}", w.site),
        format!("/sites/{}/recordings/{id}/cast", w.site),
    ] {
        let resp = w.get(&p, &victor).await;
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{p}");
        let body = resp.text().await.unwrap();
        assert!(!body.contains("\"version\""), "{p}: {body}");
    }
    let overview = w.page(&format!("/sites/{}", w.site), &victor).await;
    assert!(!overview.contains("/recordings/"), "{overview}");
    let access = w.page(&format!("/sites/{}/access", w.site), &victor).await;
    assert!(!access.contains("/recordings/"), "{access}");
    // Without the CSRF token, the button is refused.
    let (status, _) = w.press_terminal(w.site, &carol, "wrong").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let _ = carol_csrf;
    // A bad size in the URL is refused before anything is claimed.
    for q in ["?cols=1&rows=24", "?cols=80&rows=24&cmd=reboot", "?cols=80"] {
        let refused = w
            .connect(&format!("{path}{q}"), Some(&alice), Some(&w.base))
            .await
            .err()
            .unwrap();
        assert_eq!(refused.0, 400, "{q}");
    }
    assert_eq!(
        w.store
            .get_terminal_session(w.org, id)
            .await
            .unwrap()
            .started_at,
        None
    );

    // The owner connects; an unknown control message ends the session (policy), and the
    // access is revoked.
    let mut ws = w.connect(&path, Some(&alice), Some(&w.base)).await.unwrap();
    let mut screen = Screen::new();
    screen.read(&mut ws, Some("@branch-79] > ")).await;
    ws.send(Message::Text(
        r#"{"type":"exec","command":"/system reboot"}"#.into(),
    ))
    .await
    .unwrap();
    let close = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(Message::Text(t))) => screen.notes.push(serde_json::from_str(&t).unwrap()),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1008));
    assert!(
        screen
            .ended()
            .unwrap()
            .starts_with("refused a message from the browser")
    );
    w.until_status(id, domain::GrantStatus::Revoked).await;
    // A message over 64 KiB is refused by the socket itself.
    let (path2, id2) = w.terminal(&alice, &csrf).await;
    let mut ws = w
        .connect(&path2, Some(&alice), Some(&w.base))
        .await
        .unwrap();
    let mut screen = Screen::new();
    screen.read(&mut ws, Some("@branch-79] > ")).await;
    let _ = ws.send(Message::Binary(vec![b'x'; 70 * 1024].into())).await;
    screen.read(&mut ws, None).await;
    w.until_status(id2, domain::GrantStatus::Revoked).await;
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_server_ends_its_terminals_and_revokes_their_access() {
    let mut w = World::start("branch-80", "127.80.0.2").await;
    let (cookie, csrf) = w.sign_in("alice").await;
    // Without htmx, the button leads to the terminal's own page.
    let resp = w
        .http
        .post(format!("{}/sites/{}/terminal", w.base, w.site))
        .header("cookie", format!("postern_session={cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let page_path = resp.headers()["location"].to_str().unwrap().to_owned();
    let page = w.page(&page_path, &cookie).await;
    let path = format!("{page_path}/ws");
    assert!(page.contains(&format!(r#"data-ws="{path}""#)), "{page}");
    let id: domain::AccessId = page_path.split('/').nth(4).unwrap().parse().unwrap();

    let mut ws = w
        .connect(&path, Some(&cookie), Some(&w.base))
        .await
        .unwrap();
    let mut screen = Screen::new();
    screen.read(&mut ws, Some("@branch-80] > ")).await;
    // The page no longer offers the used terminal.
    assert!(!w.page(&page_path, &cookie).await.contains("data-ws="));
    // Stop the server: the terminal is told, closed, and its access revoked.
    let _ = w.shutdown.take().unwrap().send(());
    screen.read(&mut ws, None).await;
    assert_eq!(
        screen.ended().as_deref(),
        Some("the server is shutting down")
    );
    w.task.take().unwrap().await.unwrap().unwrap();
    let status = w.access(id).await.status;
    assert!(
        matches!(
            status,
            domain::GrantStatus::Closing | domain::GrantStatus::Revoked
        ),
        "{status:?}"
    );
    let session = w.store.get_terminal_session(w.org, id).await.unwrap();
    assert_eq!(
        session.end_reason.as_deref(),
        Some("the server is shutting down")
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_whose_recording_cannot_be_stored_ends() {
    let w = World::start("branch-81", "127.81.0.2").await;
    let (cookie, csrf) = w.sign_in("alice").await;
    let (path, _) = w.terminal(&cookie, &csrf).await;
    let mut ws = w
        .connect(&path, Some(&cookie), Some(&w.base))
        .await
        .unwrap();
    let mut screen = Screen::new();
    screen.read(&mut ws, Some("@branch-81] > ")).await;
    // The database goes away: the next chunk cannot be written, so the session ends
    // rather than run unrecorded.
    w.store.close().await;
    ws.send(Message::Binary(b"/system identity print\r".to_vec().into()))
        .await
        .unwrap();
    screen.read(&mut ws, None).await;
    assert_eq!(
        screen.ended().as_deref(),
        Some("the recording could not be stored")
    );
}

/// Reads `ws` until it closes, within `within`; how the terminal said it ended.
async fn ended_within(ws: &mut Ws, within: Duration) -> Option<String> {
    let mut screen = Screen::new();
    tokio::time::timeout(within, screen.read(ws, None))
        .await
        .unwrap_or_else(|_| panic!("still open after {within:?}; notes: {:?}", screen.notes));
    screen.ended()
}

/// Opens a terminal of the session `cookie` and waits for its prompt: the socket, the
/// access id and the router login it uses.
async fn open_terminal(w: &World, cookie: &str, csrf: &str) -> (Ws, domain::AccessId, String) {
    let (path, id) = w.terminal(cookie, csrf).await;
    let mut ws = w.connect(&path, Some(cookie), Some(&w.base)).await.unwrap();
    Screen::new().read(&mut ws, Some("] > ")).await;
    let login = w.access(id).await.username;
    assert!(w.sim_has_user(&login));
    (ws, id, login)
}

/// The terminal ended with `reason`: its session's end stored, its access revoked on
/// the router, and both ends audited.
async fn ended_and_revoked(w: &World, id: domain::AccessId, login: &str, reason: &str) {
    w.until_status(id, domain::GrantStatus::Revoked).await;
    assert!(!w.sim_has_user(login), "{login} is still on the router");
    let session = w.store.get_terminal_session(w.org, id).await.unwrap();
    assert_eq!(session.end_reason.as_deref(), Some(reason));
    let audit = w
        .store
        .list_audit(
            w.org,
            store::Page {
                limit: 200,
                offset: 0,
            },
        )
        .await
        .unwrap();
    let target = format!("access:{id}");
    let end = audit
        .iter()
        .find(|e| e.action == "terminal.end" && e.target.as_deref() == Some(target.as_str()))
        .expect("a terminal.end entry");
    assert_eq!(end.details["reason"], reason);
    assert!(
        audit
            .iter()
            .any(|e| e.action == "access.revoke" && e.target.as_deref() == Some(target.as_str())),
        "the revoke is audited"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_ends_every_terminal_of_that_session_and_revokes_its_access() {
    let w = World::start("branch-82", "127.82.0.2").await;
    let (cookie, csrf) = w.sign_in("alice").await;
    let (mut first, first_id, first_login) = open_terminal(&w, &cookie, &csrf).await;
    let (mut second, second_id, second_login) = open_terminal(&w, &cookie, &csrf).await;
    // The same user signed in elsewhere: that session's terminal is not touched.
    let (other_cookie, other_csrf) = w.sign_in("alice").await;
    let (mut other, other_id, _) = open_terminal(&w, &other_cookie, &other_csrf).await;

    // Log out from another tab: the session's form post with its CSRF token.
    let resp = w
        .http
        .post(format!("{}/logout", w.base))
        .header("cookie", format!("postern_session={cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", &w.base)
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert_eq!(resp.headers()["location"], "/login");

    for ws in [&mut first, &mut second] {
        assert_eq!(
            ended_within(ws, Duration::from_secs(5)).await.as_deref(),
            Some("signed out of the portal")
        );
    }
    ended_and_revoked(&w, first_id, &first_login, "signed out of the portal").await;
    ended_and_revoked(&w, second_id, &second_login, "signed out of the portal").await;

    // The other session's terminal still runs commands.
    other
        .send(Message::Binary(b"/system identity print\r".to_vec().into()))
        .await
        .unwrap();
    Screen::new()
        .read(&mut other, Some("name: branch-82"))
        .await;
    assert!(w.access(other_id).await.status.is_live());
    // When that session logs out, its terminal ends, and one it made but never
    // opened is revoked too.
    let (_, unopened) = w.terminal(&other_cookie, &other_csrf).await;
    let resp = w
        .http
        .post(format!("{}/logout", w.base))
        .header("cookie", format!("postern_session={other_cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", &w.base)
        .body(format!("csrf={other_csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    w.until_status(unopened, domain::GrantStatus::Revoked).await;
    let session = w.store.get_terminal_session(w.org, unopened).await.unwrap();
    assert_eq!(
        session.end_reason.as_deref(),
        Some("the browser never connected")
    );
    assert_eq!(
        ended_within(&mut other, Duration::from_secs(5))
            .await
            .as_deref(),
        Some("signed out of the portal")
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminal_ends_when_its_portal_session_expires_or_is_deleted() {
    let w = World::start("branch-83", "127.83.0.2").await;
    let within = server::terminal::SESSION_CHECK + Duration::from_secs(3);

    // Deletion: the session's row goes (as a logout in another server process does).
    let (cookie, csrf) = w.sign_in("alice").await;
    let (mut ws, id, login) = open_terminal(&w, &cookie, &csrf).await;
    assert!(
        w.store
            .delete_session(&server::portal::session::hash(&cookie))
            .await
            .unwrap()
    );
    assert_eq!(
        ended_within(&mut ws, within).await.as_deref(),
        Some("the portal session ended")
    );
    ended_and_revoked(&w, id, &login, "the portal session ended").await;

    // Expiry: an idle session passes its idle limit while its terminal is open. (Last:
    // the server's clock is then ahead of the orchestrator's.)
    let (cookie, csrf) = w.sign_in("alice").await;
    let (mut ws, id, login) = open_terminal(&w, &cookie, &csrf).await;
    // Typing in the terminal is using the session: it does not go idle meanwhile.
    let idle = server::portal::session::IDLE;
    w.clock.advance(idle - chrono::TimeDelta::minutes(10));
    ws.send(Message::Binary(b"/system identity print\r".to_vec().into()))
        .await
        .unwrap();
    let mut screen = Screen::new();
    screen.read(&mut ws, Some("name: branch-83")).await;
    tokio::time::sleep(within).await;
    w.clock.advance(chrono::TimeDelta::minutes(20));
    tokio::time::sleep(within).await;
    ws.send(Message::Binary(b"/system identity print\r".to_vec().into()))
        .await
        .unwrap();
    screen
        .read_until(&mut ws, |t| t.matches("name: branch-83").count() == 2)
        .await;
    // Left idle past the limit, it ends.
    w.clock.advance(idle + chrono::TimeDelta::minutes(1));
    assert_eq!(
        ended_within(&mut ws, within).await.as_deref(),
        Some("the portal session ended")
    );
    ended_and_revoked(&w, id, &login, "the portal session ended").await;
    assert!(
        w.store
            .find_session(&server::portal::session::hash(&cookie))
            .await
            .unwrap()
            .is_none(),
        "the expired session is gone"
    );
    w.stop().await;
}
