//! The portal over HTTP (no browser: `web-tests/` drives chromium): a real server on
//! 127.0.0.1:0 over a temporary SQLite store and a clock the test moves. Sign-in and the
//! session cookie, the CSRF guard, session limits, the login throttle, organisation
//! scoping, roles, htmx fragments and the embedded assets.
//!
//! A test binary of its own (not in `api.rs`) while other branches are editing that one.

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
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use server::config::ServerConfig;
use sha2::{Digest, Sha256};

/// A clock the test moves.
struct TestClock(Mutex<DateTime<Utc>>);

impl server::Clock for TestClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

struct Portal {
    base: String,
    http: reqwest::Client,
    store: store::Store,
    clock: Arc<TestClock>,
    org: domain::OrgId,
    site: domain::SiteId,
    other_site: domain::SiteId,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

const PASSWORD: &str = "correct horse battery";

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

async fn router(store: &store::Store, org: domain::OrgId, name: &str) -> domain::SiteId {
    let region = store.list_regions().await.unwrap()[0].id;
    store
        .create_router(store::NewRouter {
            org_id: org,
            site_name: Some(format!("{name} site")),
            region_id: region,
            name: name.into(),
            tunnel_address: "10.255.0.2".parse().unwrap(),
            api_port: 8728,
            ssh_port: 22,
            winbox_port: 8291,
            username: "postern".into(),
            password: "router-secret".into(),
        })
        .await
        .unwrap()
        .site_id
}

impl Portal {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            data_dir: dir.path().to_owned(),
            ..ServerConfig::default()
        };
        let store = server::bootstrap::open_store(&config).await.unwrap();
        let org = store.create_organisation("alpha").await.unwrap().id;
        let other = store.create_organisation("beta").await.unwrap().id;
        user(&store, org, "alice", domain::Role::Admin).await;
        user(&store, org, "victor", domain::Role::Viewer).await;
        user(&store, other, "bob", domain::Role::Admin).await;
        let site = router(&store, org, "branch-01").await;
        let other_site = router(&store, other, "beta-01").await;
        let clock = Arc::new(TestClock(Mutex::new(Utc::now())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let state = server::AppState::new(store.clone(), config, clock.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, state, async {
            let _ = rx.await;
        }));
        Self {
            base: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            store,
            clock,
            org,
            site,
            other_site,
            shutdown: Some(tx),
            task: Some(task),
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
    }

    fn advance(&self, by: TimeDelta) {
        *self.clock.0.lock().unwrap() += by;
    }

    /// GET with the session cookie (if any) and extra headers; status, location, body.
    async fn get(
        &self,
        path: &str,
        cookie: Option<&str>,
        headers: HeaderMap,
    ) -> (StatusCode, String, String) {
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .headers(headers);
        if let Some(c) = cookie {
            req = req.header("cookie", format!("postern_session={c}"));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let location = header(resp.headers(), "location");
        (status, location, resp.text().await.unwrap())
    }

    /// POST a form; status, location, `Set-Cookie`, body.
    async fn post(
        &self,
        path: &str,
        cookie: Option<&str>,
        form: &[(&str, &str)],
        headers: HeaderMap,
    ) -> (StatusCode, String, String, String) {
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/x-www-form-urlencoded")
            .headers(headers)
            .body(body);
        if let Some(c) = cookie {
            req = req.header("cookie", format!("postern_session={c}"));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let location = header(resp.headers(), "location");
        let set_cookie = header(resp.headers(), "set-cookie");
        (status, location, set_cookie, resp.text().await.unwrap())
    }

    /// Signs in; the cookie's token.
    async fn sign_in(&self, username: &str) -> String {
        let (status, location, set_cookie, _) = self
            .post(
                "/login",
                None,
                &[("username", username), ("password", PASSWORD)],
                HeaderMap::new(),
            )
            .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(location, "/sites");
        cookie_value(&set_cookie)
    }
}

fn header(h: &HeaderMap, name: &str) -> String {
    h.get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn cookie_value(set_cookie: &str) -> String {
    let first = set_cookie.split(';').next().unwrap();
    let (name, value) = first.split_once('=').unwrap();
    assert_eq!(name, "postern_session");
    value.to_owned()
}

/// The CSRF token a page carries in its forms.
fn csrf_of(page: &str) -> String {
    let start =
        page.find(r#"name="csrf" value=""#).expect("a csrf field") + r#"name="csrf" value=""#.len();
    page[start..].split('"').next().unwrap().to_owned()
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[tokio::test]
async fn sign_in_gives_a_hashed_session_and_logout_needs_its_csrf_token() {
    let p = Portal::start().await;
    // Signed out: every page sends to the login.
    let (status, location, _) = p.get("/sites", None, HeaderMap::new()).await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, "/login")
    );
    // htmx is told where to go too.
    let resp = p
        .http
        .get(format!("{}/sites/{}/access", p.base, p.site))
        .header("hx-request", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(header(resp.headers(), "hx-redirect"), "/login");

    // A wrong password and an unknown user read the same.
    let (s1, _, c1, wrong) = p
        .post(
            "/login",
            None,
            &[("username", "alice"), ("password", "nope")],
            HeaderMap::new(),
        )
        .await;
    let (s2, _, _, unknown) = p
        .post(
            "/login",
            None,
            &[("username", "nobody"), ("password", "nope")],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(
        (s1, s2),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert!(c1.is_empty(), "no cookie on failure");
    assert!(wrong.contains("Wrong username or password"));
    assert_eq!(wrong.replace("alice", ""), unknown.replace("nobody", ""));

    let (_, _, set_cookie, _) = p
        .post(
            "/login",
            None,
            &[("username", "alice"), ("password", PASSWORD)],
            HeaderMap::new(),
        )
        .await;
    assert!(set_cookie.contains("HttpOnly"), "{set_cookie}");
    assert!(set_cookie.contains("SameSite=Strict"), "{set_cookie}");
    assert!(set_cookie.contains("Path=/"), "{set_cookie}");
    assert!(!set_cookie.contains("Secure"), "plain HTTP: {set_cookie}");
    let token = cookie_value(&set_cookie);
    // The store has the token's SHA-256, never the token.
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    assert!(p.store.find_session(&hash).await.unwrap().is_some());

    let (status, _, page) = p.get("/sites", Some(&token), HeaderMap::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("branch-01 site"), "own site listed");
    assert!(
        !page.contains("beta-01"),
        "another organisation's site is not"
    );
    let csrf = csrf_of(&page);

    // Logout without the token, with a wrong one, or from another site: the same 403.
    let bodies = [
        p.post("/logout", Some(&token), &[], HeaderMap::new()).await,
        p.post(
            "/logout",
            Some(&token),
            &[("csrf", "forged")],
            HeaderMap::new(),
        )
        .await,
        p.post(
            "/logout",
            Some(&token),
            &[("csrf", &csrf)],
            headers(&[("origin", "http://evil.example")]),
        )
        .await,
        p.post(
            "/logout",
            Some(&token),
            &[("csrf", &csrf)],
            headers(&[("sec-fetch-site", "cross-site")]),
        )
        .await,
    ];
    for (status, _, _, body) in &bodies {
        assert_eq!(*status, StatusCode::FORBIDDEN);
        assert_eq!(body, &bodies[0].3);
    }
    assert!(p.store.find_session(&hash).await.unwrap().is_some());
    // The header htmx sends works as well as the field.
    let (status, location, cleared, _) = p
        .post(
            "/logout",
            Some(&token),
            &[],
            headers(&[("x-csrf-token", &csrf)]),
        )
        .await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, "/login")
    );
    assert!(cleared.contains("Max-Age=0"));
    assert!(p.store.find_session(&hash).await.unwrap().is_none());
    let (status, ..) = p.get("/sites", Some(&token), HeaderMap::new()).await;
    assert_eq!(status, StatusCode::SEE_OTHER);

    let actions: Vec<String> = p
        .store
        .list_audit(p.org, store::Page::default())
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions,
        ["session.logout", "session.login", "session.login_failed"]
    );
    p.stop().await;
}

#[tokio::test]
async fn sessions_end_when_idle_and_at_their_absolute_limit() {
    let p = Portal::start().await;
    let token = p.sign_in("alice").await;
    // Activity every 50 minutes keeps a session past an hour...
    for _ in 0..3 {
        p.advance(TimeDelta::minutes(50));
        let (status, ..) = p.get("/sites", Some(&token), HeaderMap::new()).await;
        assert_eq!(status, StatusCode::OK);
    }
    // ...but not past an hour of silence.
    p.advance(TimeDelta::minutes(61));
    let (status, location, _) = p.get("/sites", Some(&token), HeaderMap::new()).await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, "/login")
    );

    // However busy, a session ends after 12 hours (13 × 55 min is 11 h 55).
    let token = p.sign_in("alice").await;
    for _ in 0..13 {
        p.advance(TimeDelta::minutes(55));
        let (status, ..) = p.get("/sites", Some(&token), HeaderMap::new()).await;
        assert_eq!(status, StatusCode::OK);
    }
    p.advance(TimeDelta::minutes(55));
    let (status, ..) = p.get("/sites", Some(&token), HeaderMap::new()).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    p.stop().await;
}

#[tokio::test]
async fn repeated_failures_stop_sign_in_with_the_same_message() {
    let p = Portal::start().await;
    for _ in 0..10 {
        let (status, ..) = p
            .post(
                "/login",
                None,
                &[("username", "alice"), ("password", "guess")],
                HeaderMap::new(),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, _, set_cookie, body) = p
        .post(
            "/login",
            None,
            &[("username", "alice"), ("password", PASSWORD)],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the right password is refused for now"
    );
    assert!(set_cookie.is_empty());
    assert!(body.contains("Wrong username or password"));
    p.stop().await;
}

#[tokio::test]
async fn pages_are_scoped_by_organisation_and_role() {
    let p = Portal::start().await;
    let alice = p.sign_in("alice").await;
    for tab in ["", "/access", "/forwards", "/jobs"] {
        let (status, _, page) = p
            .get(
                &format!("/sites/{}{tab}", p.site),
                Some(&alice),
                HeaderMap::new(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{tab}");
        assert!(page.contains("<html"), "a whole page without htmx");
        assert!(page.contains(r#"aria-current="page""#));
        let (status, _, page) = p
            .get(
                &format!("/sites/{}{tab}", p.other_site),
                Some(&alice),
                HeaderMap::new(),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{tab}");
        assert!(!page.contains("beta-01"));
    }
    let (status, ..) = p
        .get("/sites/not-an-id/access", Some(&alice), HeaderMap::new())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // htmx gets the tabs and the panel only; the log's own poll gets the log only.
    let (status, _, fragment) = p
        .get(
            &format!("/sites/{}/access", p.site),
            Some(&alice),
            headers(&[("hx-request", "true"), ("hx-target", "site-body")]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!fragment.contains("<html") && fragment.contains(r#"class="tabs""#));
    let (_, _, log) = p
        .get(
            &format!("/sites/{}/jobs", p.site),
            Some(&alice),
            headers(&[("hx-request", "true"), ("hx-target", "jobs-log")]),
        )
        .await;
    assert!(
        log.trim_start().starts_with(r#"<div id="jobs-log""#),
        "{log}"
    );
    // No job yet: the log does not poll. A pending job: it polls every 2 s, open.
    assert!(!log.contains("hx-trigger"), "{log}");
    let (_, routers) = p.store.get_site(p.org, p.site).await.unwrap();
    let now = Utc::now();
    let job = p
        .store
        .create_job(store::NewJob {
            org_id: p.org,
            router_id: routers[0].id,
            kind: "access.create".into(),
            payload: serde_json::json!({}),
            max_attempts: 3,
            run_after: now + TimeDelta::hours(1),
            created_at: now,
        })
        .await
        .unwrap();
    p.store
        .append_job_line(job.id, now, "waiting for <the router>")
        .await
        .unwrap();
    let (_, _, log) = p
        .get(
            &format!("/sites/{}/jobs", p.site),
            Some(&alice),
            headers(&[("hx-request", "true"), ("hx-target", "jobs-log")]),
        )
        .await;
    assert!(log.contains(r#"hx-trigger="every 2s""#), "{log}");
    assert!(
        log.contains(&format!(r#"<details id="job-{}" open>"#, job.id)),
        "{log}"
    );
    assert!(
        log.contains("waiting for &#60;the router&#62;")
            || log.contains("waiting for &lt;the router&gt;"),
        "lines are escaped: {log}"
    );
    let (_, _, list) = p
        .get(
            &format!("/sites/{}/forwards", p.site),
            Some(&alice),
            headers(&[("hx-request", "true"), ("hx-target", "grants-list")]),
        )
        .await;
    assert!(
        list.trim_start().starts_with(r#"<div id="grants-list""#),
        "{list}"
    );
    assert!(
        !list.contains("hx-trigger"),
        "nothing live: the list does not poll"
    );

    for page in ["/users", "/tokens", "/audit"] {
        let (status, ..) = p.get(page, Some(&alice), HeaderMap::new()).await;
        assert_eq!(status, StatusCode::OK, "{page}");
    }
    let victor = p.sign_in("victor").await;
    let (_, _, sites) = p.get("/sites", Some(&victor), HeaderMap::new()).await;
    assert!(
        !sites.contains(r#"href="/users""#),
        "no admin links for a viewer"
    );
    for page in ["/users", "/tokens", "/audit"] {
        let (status, ..) = p.get(page, Some(&victor), HeaderMap::new()).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{page}");
    }
    p.stop().await;
}

#[tokio::test]
async fn assets_are_embedded_with_a_content_hash_and_cached_for_a_year() {
    let p = Portal::start().await;
    let (_, _, login) = p.get("/login", None, HeaderMap::new()).await;
    let start = login.find("/assets/").unwrap();
    let css = login[start..].split('"').next().unwrap().to_owned();
    assert!(css.ends_with("/portal.css"), "{css}");
    let resp = p.http.get(format!("{}{css}", p.base)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(resp.headers(), "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert!(header(resp.headers(), "content-type").starts_with("text/css"));
    assert!(resp.text().await.unwrap().contains(":focus-visible"));
    // An old hash is not served as if it were current.
    let stale = css.replace("/assets/", "/assets/0000");
    let resp = p
        .http
        .get(format!("{}{stale}", p.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Pages forbid inline script and framing.
    let resp = p
        .http
        .get(format!("{}/login", p.base))
        .send()
        .await
        .unwrap();
    let csp = header(resp.headers(), "content-security-policy");
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"));
    if server::portal::assets::complete() {
        let alice = p.sign_in("alice").await;
        let (_, _, page) = p.get("/sites", Some(&alice), HeaderMap::new()).await;
        let start = page.find("/assets/").unwrap();
        assert!(page[start..].contains("htmx.min.js"));
    }
    p.stop().await;
}
