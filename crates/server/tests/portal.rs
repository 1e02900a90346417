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
            api_tls: false,
            api_tls_fingerprint: None,
            username: "postern".into(),
            password: "router-secret".into(),
        })
        .await
        .unwrap()
        .site_id
}

/// The portal servers' `metrics_token` (`/metrics` is off without one).
const METRICS_TOKEN: &str = "portal-metrics-token";

impl Portal {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            data_dir: dir.path().to_owned(),
            // The test may speak as a proxy, to be a visitor from a public address.
            trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
            metrics_token: Some(server::config::Secret::new(METRICS_TOKEN)),
            // Where routers fetch their enrolment script (onboarding).
            public_url: Some("https://postern.example.com".into()),
            ..ServerConfig::default()
        };
        let store = server::bootstrap::open_store(&config).await.unwrap();
        let org = store.create_organisation("default").await.unwrap().id;
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

    /// Signs in; the cookie's token. bob belongs to organisation "beta", named on the form, the others to
    /// "default", which an empty Organisation field means.
    async fn sign_in(&self, username: &str) -> String {
        let org = if username == "bob" { "beta" } else { "" };
        let (status, location, set_cookie, _) = self
            .post(
                "/login",
                None,
                &[
                    ("username", username),
                    ("password", PASSWORD),
                    ("organisation", org),
                ],
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

/// Issue 13, finding 9: eleven wrong passwords from anywhere used to lock `admin` out
/// from everywhere, each audited. Now the throttle is per (user, address) and per
/// address, backs off, and what it refuses is counted in the next audit entry.
#[tokio::test]
async fn repeated_failures_back_off_for_that_user_from_that_address_only() {
    async fn attempt(p: &Portal, password: &str, ip: &str) -> (StatusCode, String, String, String) {
        p.post(
            "/login",
            None,
            &[("username", "alice"), ("password", password)],
            headers(&[("x-forwarded-for", ip)]),
        )
        .await
    }
    let p = Portal::start().await;
    for _ in 0..5 {
        let (status, ..) = attempt(&p, "guess", "203.0.113.66").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    // The attacker's address now waits, even with the right password, and is told so.
    let resp = p
        .http
        .post(format!("{}/login", p.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-forwarded-for", "203.0.113.66")
        .body(format!("username=alice&password={PASSWORD}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(resp.headers(), "retry-after").parse().unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
    assert!(header(resp.headers(), "set-cookie").is_empty());
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("Too many failed sign-ins from your address"),
        "{body}"
    );
    for _ in 0..20 {
        let (status, ..) = attempt(&p, "guess", "203.0.113.66").await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    }
    // Alice, from her own address, is not locked out.
    let (status, _, set_cookie, _) = attempt(&p, PASSWORD, "198.51.100.23").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(!set_cookie.is_empty());
    // The audit holds five failures, not twenty-six entries; the attempt after the
    // back-off carries the count of those refused meanwhile.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, ..) = attempt(&p, "guess", "203.0.113.66").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let audit = p
        .store
        .list_audit(p.org, store::Page::default())
        .await
        .unwrap();
    let failed: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "session.login_failed")
        .collect();
    assert_eq!(failed.len(), 6);
    assert_eq!(
        failed[0].details["throttled_attempts"], 21,
        "{:?}",
        failed[0]
    );
    assert!(
        failed[1..]
            .iter()
            .all(|e| e.details.get("throttled_attempts").is_none())
    );
    p.stop().await;
}

/// Issue 13, finding 10: usernames are per organisation, so sign-in names one (empty
/// means "default"): the same name in two organisations is two people.
#[tokio::test]
async fn sign_in_names_the_organisation_and_names_repeat_across_them() {
    let p = Portal::start().await;
    let beta = p
        .store
        .find_organisation_by_name("beta")
        .await
        .unwrap()
        .unwrap();
    p.store
        .create_user(store::NewUser {
            org_id: beta.id,
            username: "alice".into(),
            role: domain::Role::Viewer,
            password_hash: server::auth::hash_password("beta's own password").unwrap(),
        })
        .await
        .unwrap();
    let login = |user: &'static str, password: &'static str, org: &'static str| {
        let form = [
            ("username", user),
            ("password", password),
            ("organisation", org),
        ];
        let p = &p;
        async move { p.post("/login", None, &form, HeaderMap::new()).await }
    };
    // bob is beta's: not found in "default", and the answer is the usual one.
    let (status, _, _, body) = login("bob", PASSWORD, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.contains("Wrong username or password"));
    let (status, ..) = login("bob", PASSWORD, "nowhere").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Each alice with her own password, in her own organisation.
    let (status, ..) = login("alice", "beta's own password", "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, cookie, _) = login("alice", "beta's own password", "beta").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let theirs = cookie_value(&cookie);
    let (status, _, page) = p.get("/sites", Some(&theirs), HeaderMap::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("beta-01"), "{page}");
    assert!(!page.contains("branch-01"), "{page}");
    let ours = p.sign_in("alice").await;
    let (_, _, page) = p.get("/sites", Some(&ours), HeaderMap::new()).await;
    assert!(
        page.contains("branch-01") && !page.contains("beta-01"),
        "{page}"
    );
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
    // A job the router refused as unknown is stuck: the Overview says so with the
    // router's words, the log shows its state, and /metrics counts it.
    let claimed = p
        .store
        .claim_job(
            "portal-test",
            now + TimeDelta::hours(2),
            std::time::Duration::from_secs(15),
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.id, job.id);
    let words = "the router refused /user/remove .id=*5: no such command or directory (remove)";
    assert!(
        p.store
            .finish_job(
                job.id,
                "portal-test",
                now + TimeDelta::hours(2),
                store::JobOutcome::Stuck(words.into()),
            )
            .await
            .unwrap()
    );
    let (_, _, overview) = p
        .get(
            &format!("/sites/{}", p.site),
            Some(&alice),
            HeaderMap::new(),
        )
        .await;
    assert!(
        overview.contains("Stuck on the router")
            && overview.contains("no such command or directory (remove)"),
        "{overview}"
    );
    let (_, _, log) = p
        .get(
            &format!("/sites/{}/jobs", p.site),
            Some(&alice),
            headers(&[("hx-request", "true"), ("hx-target", "jobs-log")]),
        )
        .await;
    assert!(
        log.contains(r#"<span class="badge stuck">stuck</span>"#),
        "{log}"
    );
    let (_, _, metrics) = p
        .get(
            "/metrics",
            None,
            headers(&[("authorization", &format!("Bearer {METRICS_TOKEN}"))]),
        )
        .await;
    assert!(metrics.contains("postern_router_jobs_stuck 1"), "{metrics}");
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

// ---------------------------------------------------------------- grant tabs

impl Portal {
    /// The router of the signed-in organisation's site.
    async fn router_of(&self, org: domain::OrgId, site: domain::SiteId) -> store::Router {
        let (_, routers) = self.store.get_site(org, site).await.unwrap();
        routers.into_iter().next().unwrap()
    }

    /// The CSRF token of `who`'s session, read from a page.
    async fn csrf(&self, cookie: &str) -> String {
        let (_, _, page) = self.get("/sites", Some(cookie), HeaderMap::new()).await;
        csrf_of(&page)
    }

    async fn actions(&self, org: domain::OrgId) -> Vec<String> {
        self.store
            .list_audit(org, store::Page::default())
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.action)
            .collect()
    }
}

/// An HTML page's text of the element with `id` (its opening tag on).
fn around<'a>(page: &'a str, id: &str) -> &'a str {
    let at = page
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no #{id} in {page}"));
    let start = page[..at].rfind('<').unwrap();
    let end = page[at..].find('>').unwrap() + at + 1;
    &page[start..end]
}

#[tokio::test]
async fn the_add_form_starts_with_the_references_defaults() {
    let p = Portal::start().await;
    let alice = p.sign_in("alice").await;
    let (status, _, page) = p
        .get(
            &format!("/sites/{}/access", p.site),
            Some(&alice),
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Add transient access"));
    assert!(around(&page, "full_access").contains(" checked"));
    assert!(!around(&page, "allow_rfc1918").contains(" checked"));
    // Loopback cannot be used outside lab mode: the field starts empty and says why.
    assert!(around(&page, "allow_from").contains(r#"value="""#));
    assert!(page.contains("Your address as Postern sees it (127.0.0.1) cannot be used"));
    // A visitor from a public address starts with theirs.
    let (_, _, public) = p
        .get(
            &format!("/sites/{}/access", p.site),
            Some(&alice),
            headers(&[("x-forwarded-for", "198.51.100.23")]),
        )
        .await;
    assert!(around(&public, "allow_from").contains(r#"value="198.51.100.23""#));
    assert!(!public.contains("Your address as Postern sees it"));
    assert!(page.contains(r#"<option value="120" selected>2 hours</option>"#));
    assert!(page.contains(r#"value="winbox" checked"#));
    assert!(!page.contains(r#"value="ssh" checked"#));
    // Only durations within the limits (10 min to 1 day by default).
    assert!(page.contains(r#"<option value="10">10 minutes</option>"#));
    assert!(page.contains(r#"<option value="1440">1 day</option>"#));
    assert!(!page.contains(r#"value="10080""#));
    // Every input has a label.
    for id in [
        "full_access",
        "access",
        "allow_rfc1918",
        "allow_from",
        "expire_after_minutes",
    ] {
        assert!(
            page.contains(&format!(r#"for="{id}""#))
                || page.contains(&format!(
                    r#"<label class="switch"><input type="checkbox" name="{id}""#
                )),
            "{id} has no label"
        );
    }
    let (_, _, page) = p
        .get(
            &format!("/sites/{}/forwards", p.site),
            Some(&alice),
            HeaderMap::new(),
        )
        .await;
    assert!(page.contains("Add transient forward"));
    assert!(!around(&page, "masquerade").contains(" checked"));
    assert!(around(&page, "dst_address").contains(r#"value="""#));
    p.stop().await;
}

#[tokio::test]
async fn adding_access_is_the_apis_create_csrf_protected_and_audited() {
    let p = Portal::start().await;
    let alice = p.sign_in("alice").await;
    let csrf = p.csrf(&alice).await;
    let url = format!("/sites/{}/access", p.site);
    let router = p.router_of(p.org, p.site).await;
    let form = [
        ("type", "ssh"),
        ("full_access", "on"),
        ("access", "read"),
        ("allow_from", "198.51.100.7"),
        ("expire_after_minutes", "120"),
    ];
    // Without the token, with a forged one, or from another site: refused, nothing made.
    let (status, ..) = p.post(&url, Some(&alice), &form, HeaderMap::new()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, ..) = p
        .post(
            &url,
            Some(&alice),
            &form,
            headers(&[("x-csrf-token", "forged")]),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, ..) = p
        .post(
            &url,
            Some(&alice),
            &form,
            headers(&[("x-csrf-token", &csrf), ("origin", "http://evil.example")]),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        p.store
            .list_access(p.org, router.id, None)
            .await
            .unwrap()
            .is_empty()
    );

    // A plain form post: created, then back to the tab.
    let mut with_csrf = form.to_vec();
    with_csrf.push(("csrf", &csrf));
    let (status, location, _, _) = p
        .post(&url, Some(&alice), &with_csrf, HeaderMap::new())
        .await;
    assert_eq!(
        (status, location.as_str()),
        (StatusCode::SEE_OTHER, url.as_str())
    );
    let grants = p.store.list_access(p.org, router.id, None).await.unwrap();
    assert_eq!(grants.len(), 1);
    let g = &grants[0];
    assert_eq!(g.access_type, domain::AccessType::Ssh);
    assert_eq!(g.access, domain::AccessLevel::Full);
    assert_eq!(g.allow_from.to_string(), "198.51.100.7/32");
    assert!(!g.allow_rfc1918);
    assert_eq!(g.created_by, "alice");
    assert_eq!(g.expires_at - g.created_at, TimeDelta::hours(2));
    assert_eq!(g.status, domain::GrantStatus::Requested);
    assert_eq!(p.actions(p.org).await[0], "access.create");
    let audit = p
        .store
        .list_audit(p.org, store::Page::default())
        .await
        .unwrap();
    assert_eq!(audit[0].actor, "alice");
    assert_eq!(audit[0].details["username"], g.username.as_str());

    // Through htmx: the panel, with the new grant listed and a fresh form; full access
    // off means the level chosen below it.
    let (status, _, _, panel) = p
        .post(
            &url,
            Some(&alice),
            &[
                ("type", "winbox"),
                ("access", "write"),
                ("allow_rfc1918", "on"),
                ("allow_from", "198.51.100.0/24"),
                ("expire_after_minutes", "30"),
            ],
            headers(&[
                ("hx-request", "true"),
                ("hx-target", "grant-panel"),
                ("x-csrf-token", &csrf),
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        panel.trim_start().starts_with(r#"<div id="grant-panel">"#),
        "{panel}"
    );
    let grants = p.store.list_access(p.org, router.id, None).await.unwrap();
    assert_eq!(grants.len(), 2);
    let new = grants.iter().find(|x| x.id != g.id).unwrap();
    assert_eq!(new.access, domain::AccessLevel::Write);
    assert!(new.allow_rfc1918);
    assert_eq!(new.expires_at - new.created_at, TimeDelta::minutes(30));
    assert!(panel.contains(&format!("Transient access {} created", new.username)));
    assert!(panel.contains(&new.username) && panel.contains(&g.username));
    assert!(panel.contains("WinBox · write") && panel.contains("SSH · full"));
    assert!(panel.contains("not yet used"));
    assert!(panel.contains("198.51.100.0/24 + RFC 1918"));
    assert!(
        panel.contains(r#"hx-trigger="every 2s""#),
        "requested grants: the list polls"
    );
    assert!(
        around(&panel, "allow_from").contains(r#"value="""#),
        "a fresh form"
    );
    p.stop().await;
}

#[tokio::test]
async fn a_refused_form_keeps_what_was_typed_and_names_each_bad_field() {
    let p = Portal::start().await;
    let alice = p.sign_in("alice").await;
    let csrf = p.csrf(&alice).await;
    let router = p.router_of(p.org, p.site).await;
    let before = p.actions(p.org).await.len();
    let (status, _, _, page) = p
        .post(
            &format!("/sites/{}/access", p.site),
            Some(&alice),
            &[
                ("csrf", &csrf),
                ("type", "ssh"),
                ("allow_from", "10.0.0.0/8"),
                ("expire_after_minutes", "5"),
            ],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("<html"), "a plain post gets the whole page");
    let input = around(&page, "allow_from");
    assert!(input.contains(r#"aria-invalid="true""#), "{input}");
    assert!(input.contains(r#"value="10.0.0.0/8""#), "{input}");
    assert!(
        input.contains("allow_from-error"),
        "described by its error: {input}"
    );
    assert!(page.contains(r#"id="allow_from-error""#));
    assert!(around(&page, "expire_after_minutes").contains(r#"aria-invalid="true""#));
    assert!(page.contains(r#"id="expire_after_minutes-error""#));
    assert!(
        page.contains(r#"value="ssh" checked"#),
        "the choice is kept"
    );
    assert!(
        page.contains("<details class=\"add\" open>"),
        "the form stays open"
    );
    assert!(
        p.store
            .list_access(p.org, router.id, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(p.actions(p.org).await.len(), before, "nothing audited");

    // A forward's port that is not a number, and one out of range, through htmx.
    for port in ["http", "70000"] {
        let (status, _, _, panel) = p
            .post(
                &format!("/sites/{}/forwards", p.site),
                Some(&alice),
                &[
                    ("dst_address", "192.168.88.43"),
                    ("dst_port", port),
                    ("allow_from", "198.51.100.7"),
                    ("expire_after_minutes", "60"),
                ],
                headers(&[
                    ("hx-request", "true"),
                    ("hx-target", "grant-panel"),
                    ("x-csrf-token", &csrf),
                ]),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{port}");
        assert!(!panel.contains("<html"));
        assert!(
            around(&panel, "dst_port").contains(r#"aria-invalid="true""#),
            "{port}"
        );
        assert!(around(&panel, "dst_address").contains(r#"value="192.168.88.43""#));
        assert!(!around(&panel, "dst_address").contains("aria-invalid"));
    }
    assert!(
        p.store
            .list_forwards(p.org, router.id, None)
            .await
            .unwrap()
            .is_empty()
    );
    p.stop().await;
}

#[tokio::test]
async fn credentials_and_revoke_go_through_the_apis_code() {
    let p = Portal::start().await;
    let alice = p.sign_in("alice").await;
    let csrf = p.csrf(&alice).await;
    let router = p.router_of(p.org, p.site).await;
    p.post(
        &format!("/sites/{}/access", p.site),
        Some(&alice),
        &[
            ("csrf", &csrf),
            ("type", "winbox"),
            ("full_access", "on"),
            ("allow_from", "198.51.100.7"),
            ("expire_after_minutes", "60"),
        ],
        HeaderMap::new(),
    )
    .await;
    let g = p.store.list_access(p.org, router.id, None).await.unwrap()[0].clone();
    let password = p.store.access_password(g.id).await.unwrap();
    let creds = format!("/sites/{}/access/{}/credentials", p.site, g.id);

    // A GET does not reveal them (reading is recorded, so it is a POST with the token).
    let (status, ..) = p.get(&creds, Some(&alice), HeaderMap::new()).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let (status, ..) = p.post(&creds, Some(&alice), &[], HeaderMap::new()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _, dialog) = p
        .post(
            &creds,
            Some(&alice),
            &[],
            headers(&[("hx-request", "true"), ("x-csrf-token", &csrf)]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!dialog.contains("<html"), "a fragment for the dialog");
    assert!(dialog.contains(password.expose()));
    assert!(dialog.contains(&g.username));
    assert!(dialog.contains(&format!("{}:{}", g.entry_point, g.port)));
    // "Open in WinBox" holds a one-time ticket for the launcher, never the password;
    // the launcher's instructions are given, and copying stays for those without it.
    let href = dialog.split(r#"href="winbox://"#).nth(1).unwrap();
    let href = href
        .split('"')
        .next()
        .unwrap()
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    let link = format!(
        "{}:{}?user={}&ticket=wbt_",
        g.entry_point, g.port, g.username
    );
    assert!(href.starts_with(&link), "{href}");
    assert!(href.contains("&server=http%3A%2F%2F"), "{href}");
    assert!(!href.contains(password.expose()));
    assert!(dialog.contains("postern-launcher install"));
    assert!(dialog.contains("Windows") && dialog.contains("macOS") && dialog.contains("Linux"));
    assert_eq!(dialog.matches("class=\"button small copy\"").count(), 3);
    let reads = p
        .actions(p.org)
        .await
        .into_iter()
        .filter(|a| a == "access.credentials.read")
        .count();
    assert_eq!(reads, 1, "audited as through the API");
    // A plain post gets a page.
    let (status, _, _, page) = p
        .post(&creds, Some(&alice), &[("csrf", &csrf)], HeaderMap::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<html") && page.contains(password.expose()));

    // Revoke: the list, without the grant among the live ones.
    let revoke = format!("/sites/{}/access/{}/revoke", p.site, g.id);
    let (status, ..) = p.post(&revoke, Some(&alice), &[], HeaderMap::new()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        p.store
            .get_access(p.org, router.id, g.id)
            .await
            .unwrap()
            .status
            .is_live()
    );
    let (status, _, _, list) = p
        .post(
            &revoke,
            Some(&alice),
            &[],
            headers(&[("hx-request", "true"), ("x-csrf-token", &csrf)]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        list.trim_start().starts_with(r#"<div id="grants-list""#),
        "{list}"
    );
    let after = p.store.get_access(p.org, router.id, g.id).await.unwrap();
    assert_eq!(after.status, domain::GrantStatus::Revoked);
    assert!(after.revoked_early);
    let ended = &list[list.find("<h2>Ended</h2>").unwrap()..];
    assert!(ended.contains(&g.username) && ended.contains("revoked"));
    assert!(!list[..list.find("<h2>Ended</h2>").unwrap()].contains(&g.username));
    assert!(p.actions(p.org).await.contains(&"access.revoke".to_owned()));
    // Revoking again changes nothing; the login of an ended grant is refused.
    let (status, location, ..) = p
        .post(&revoke, Some(&alice), &[("csrf", &csrf)], HeaderMap::new())
        .await;
    assert_eq!(
        (status, location.as_str()),
        (
            StatusCode::SEE_OTHER,
            format!("/sites/{}/access", p.site).as_str()
        )
    );
    let (status, _, _, body) = p
        .post(
            &creds,
            Some(&alice),
            &[],
            headers(&[("hx-request", "true"), ("x-csrf-token", &csrf)]),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(body.contains("no longer work") && !body.contains(password.expose()));
    p.stop().await;
}

#[tokio::test]
async fn forwards_are_added_shown_and_revoked() {
    let p = Portal::start().await;
    let alice = p.sign_in("alice").await;
    let csrf = p.csrf(&alice).await;
    let router = p.router_of(p.org, p.site).await;
    let (status, ..) = p
        .post(
            &format!("/sites/{}/forwards", p.site),
            Some(&alice),
            &[
                ("csrf", &csrf),
                ("dst_address", "192.168.88.43"),
                ("dst_port", "443"),
                ("masquerade", "on"),
                ("allow_from", "198.51.100.7"),
                ("expire_after_minutes", "240"),
            ],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let f = p.store.list_forwards(p.org, router.id, None).await.unwrap()[0].clone();
    assert_eq!(f.dst_address.to_string(), "192.168.88.43");
    assert_eq!(f.dst_port, 443);
    assert!(f.masquerade);
    assert_eq!(f.expires_at - f.created_at, TimeDelta::hours(4));
    assert_eq!(p.actions(p.org).await[0], "forward.create");
    let (status, _, details) = p
        .get(
            &format!("/sites/{}/forwards/{}", p.site, f.id),
            Some(&alice),
            headers(&[("hx-request", "true")]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(details.contains(&format!(
        "Connections from 198.51.100.7/32 to {}:{} are forwarded to 192.168.88.43:443",
        f.entry_point, f.port
    )));
    let (status, ..) = p
        .post(
            &format!("/sites/{}/forwards/{}/revoke", p.site, f.id),
            Some(&alice),
            &[("csrf", &csrf)],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let after = p.store.get_forward(p.org, router.id, f.id).await.unwrap();
    assert_eq!(after.status, domain::GrantStatus::Revoked);
    assert!(
        p.actions(p.org)
            .await
            .contains(&"forward.revoke".to_owned())
    );
    p.stop().await;
}

#[tokio::test]
async fn viewers_may_look_but_not_add_reveal_or_revoke() {
    let p = Portal::start().await;
    let alice = p.sign_in("alice").await;
    let alice_csrf = p.csrf(&alice).await;
    let router = p.router_of(p.org, p.site).await;
    p.post(
        &format!("/sites/{}/access", p.site),
        Some(&alice),
        &[("csrf", &alice_csrf), ("allow_from", "198.51.100.7")],
        HeaderMap::new(),
    )
    .await;
    let g = p.store.list_access(p.org, router.id, None).await.unwrap()[0].clone();

    let victor = p.sign_in("victor").await;
    let csrf = p.csrf(&victor).await;
    let (status, _, page) = p
        .get(
            &format!("/sites/{}/access", p.site),
            Some(&victor),
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(&g.username), "viewers see the grants");
    assert!(!page.contains("Add transient access"));
    assert!(!page.contains(">Credentials<") && !page.contains(">Revoke<"));
    assert!(!page.contains(">Share<"));
    assert!(page.contains("may look but not change"));
    let (status, ..) = p
        .post(
            &format!("/sites/{}/access", p.site),
            Some(&victor),
            &[("csrf", &csrf), ("allow_from", "198.51.100.7")],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for action in ["credentials", "revoke", "share"] {
        let (status, _, _, body) = p
            .post(
                &format!("/sites/{}/access/{}/{action}", p.site, g.id),
                Some(&victor),
                &[("csrf", &csrf)],
                HeaderMap::new(),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{action}");
        assert!(!body.contains(p.store.access_password(g.id).await.unwrap().expose()));
    }
    let (status, ..) = p
        .post(
            &format!("/sites/{}/forwards", p.site),
            Some(&victor),
            &[
                ("csrf", &csrf),
                ("dst_address", "192.168.88.43"),
                ("dst_port", "443"),
                ("allow_from", "198.51.100.7"),
            ],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        p.store
            .list_access(p.org, router.id, None)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        p.store
            .list_forwards(p.org, router.id, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        p.store
            .get_access(p.org, router.id, g.id)
            .await
            .unwrap()
            .status
            .is_live(),
        "still live"
    );
    p.stop().await;
}

#[tokio::test]
async fn another_organisations_grant_is_not_found() {
    let p = Portal::start().await;
    let bob = p.sign_in("bob").await;
    let bob_csrf = p.csrf(&bob).await;
    let (status, ..) = p
        .post(
            &format!("/sites/{}/access", p.other_site),
            Some(&bob),
            &[("csrf", &bob_csrf), ("allow_from", "198.51.100.9")],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, _, page) = p
        .get(
            &format!("/sites/{}/access", p.other_site),
            Some(&bob),
            HeaderMap::new(),
        )
        .await;
    let start = page.find("/access/").unwrap() + "/access/".len();
    let grant_id: String = page[start..].chars().take(36).collect();
    let _: domain::AccessId = grant_id.parse().unwrap();

    let alice = p.sign_in("alice").await;
    let csrf = p.csrf(&alice).await;
    for site in [p.other_site, p.site] {
        for action in ["credentials", "revoke"] {
            let (status, _, _, body) = p
                .post(
                    &format!("/sites/{site}/access/{grant_id}/{action}"),
                    Some(&alice),
                    &[("csrf", &csrf)],
                    HeaderMap::new(),
                )
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{site} {action}");
            assert!(body.contains("Not found"));
        }
        let (status, ..) = p
            .post(
                &format!("/sites/{site}/access"),
                Some(&alice),
                &[("csrf", &csrf), ("allow_from", "198.51.100.7")],
                HeaderMap::new(),
            )
            .await;
        let expected = if site == p.site {
            StatusCode::SEE_OTHER
        } else {
            StatusCode::NOT_FOUND
        };
        assert_eq!(status, expected, "{site}");
    }
    // Bob's grant is untouched.
    let (_, _, page) = p
        .get(
            &format!("/sites/{}/access", p.other_site),
            Some(&bob),
            HeaderMap::new(),
        )
        .await;
    assert!(page.contains(">requested<"), "still live");
    p.stop().await;
}

/// Builds of the WinBox launcher put in the data directory's `launcher/` are offered in a
/// WinBox grant's Credentials dialog and served, as downloads, to signed-in users only;
/// nothing else of the data directory is reachable that way.
#[tokio::test]
async fn launcher_builds_are_offered_for_download() {
    let p = Portal::start().await;
    let alice = p.sign_in("alice").await;
    let csrf = p.csrf(&alice).await;
    let router = p.router_of(p.org, p.site).await;
    p.post(
        &format!("/sites/{}/access", p.site),
        Some(&alice),
        &[
            ("csrf", &csrf),
            ("type", "winbox"),
            ("allow_from", "198.51.100.7"),
            ("expire_after_minutes", "60"),
        ],
        HeaderMap::new(),
    )
    .await;
    let g = p.store.list_access(p.org, router.id, None).await.unwrap()[0].clone();
    let creds = format!("/sites/{}/access/{}/credentials", p.site, g.id);
    let dialog = || {
        p.post(
            &creds,
            Some(&alice),
            &[],
            headers(&[("hx-request", "true"), ("x-csrf-token", &csrf)]),
        )
    };
    // None yet: the dialog says where an administrator puts them.
    assert!(dialog().await.3.contains("under <code>launcher/</code>"));

    let folder = p._dir.path().join("launcher");
    std::fs::create_dir_all(&folder).unwrap();
    let build = b"\x7fELF pretend launcher";
    std::fs::write(
        folder.join("postern-launcher-x86_64-unknown-linux-gnu"),
        build,
    )
    .unwrap();
    std::fs::write(folder.join("notes.txt"), "not a build").unwrap();
    let text = dialog().await.3;
    assert!(
        text.contains(r#"<a href="/launcher/postern-launcher-x86_64-unknown-linux-gnu" download>"#),
        "{text}"
    );
    assert!(!text.contains("notes.txt"));

    let resp = p
        .http
        .get(format!(
            "{}/launcher/postern-launcher-x86_64-unknown-linux-gnu",
            p.base
        ))
        .header("cookie", format!("postern_session={alice}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(resp.headers(), "content-disposition"),
        "attachment; filename=\"postern-launcher-x86_64-unknown-linux-gnu\""
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), build);

    // Signed out: the login page. Anything else of the data directory: not found.
    let (status, location, _) = p
        .get(
            "/launcher/postern-launcher-x86_64-unknown-linux-gnu",
            None,
            HeaderMap::new(),
        )
        .await;
    assert!(
        status.is_redirection() && location.contains("/login"),
        "{status} {location}"
    );
    for path in [
        "/launcher/notes.txt",
        "/launcher/secret.key",
        "/launcher/postern-launcher-missing",
        "/launcher/..%2Fsecret.key",
        "/launcher/postern-launcher%2F..%2F..%2Fsecret.key",
    ] {
        let (status, ..) = p.get(path, Some(&alice), HeaderMap::new()).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    p.stop().await;
}

/// The enrolment token in a page (the line, or its copy button).
fn token_in(page: &str) -> String {
    let at = page.find("/enroll/pet_").expect("a line") + "/enroll/".len();
    page[at..at + 47].to_owned()
}

#[tokio::test]
async fn sites_are_added_with_their_line_and_pending_ones_offer_a_new_one() {
    let p = Portal::start().await;
    let alice = p.sign_in("alice").await;
    let csrf = p.csrf(&alice).await;
    let (_, _, page) = p.get("/sites", Some(&alice), HeaderMap::new()).await;
    assert!(
        page.contains(r#"<form method="post" action="/sites""#),
        "{page}"
    );
    assert!(page.contains(r#"<option value="local""#));

    // Viewers see no form and may not post it; nor may anyone without the CSRF token.
    let victor = p.sign_in("victor").await;
    let (_, _, page) = p.get("/sites", Some(&victor), HeaderMap::new()).await;
    assert!(!page.contains(r#"action="/sites""#));
    let victor_csrf = p.csrf(&victor).await;
    let (status, _, _, _) = p
        .post(
            "/sites",
            Some(&victor),
            &[("csrf", &victor_csrf), ("name", "v-site")],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _, _) = p
        .post(
            "/sites",
            Some(&alice),
            &[("name", "branch-9"), ("region", "local")],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Added: the line, with a copy button, and when it stops working.
    let (status, _, _, page) = p
        .post(
            "/sites",
            Some(&alice),
            &[("csrf", &csrf), ("name", "branch-9"), ("region", "local")],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("Site branch-9 added"), "{page}");
    assert!(page.contains(r#"<pre class="enroll-line" id="enroll-line">:if ([:pick [/system resource get version] 0 2] = &#34;7.&#34;) do={/tool fetch url=&#34;https://postern.example.com/enroll/pet_"#), "{page}");
    assert!(
        page.contains(r#"class="button copy" data-copy=":if ([:pick"#),
        "{page}"
    );
    assert!(page.contains("(1 day from now)"), "{page}");
    let first = token_in(&page);
    let hash = server::auth::hash_token(&first);
    let open = p.store.find_enrollment(&hash).await.unwrap().unwrap();
    assert_eq!(open.created_by, "alice");
    assert!(p.actions(p.org).await.contains(&"site.create".to_owned()));

    // Listed as pending; its Overview waits for the router, offers a new line and the
    // removal script.
    let (_, _, page) = p.get("/sites", Some(&alice), HeaderMap::new()).await;
    let row = page.split("branch-9").nth(1).unwrap();
    assert!(
        row.contains(r#"<span class="badge pending">pending</span>"#),
        "{row}"
    );
    let sites = p.store.list_sites(p.org).await.unwrap();
    let (site, routers) = sites.iter().find(|(s, _)| s.name == "branch-9").unwrap();
    let site_url = format!("/sites/{}", site.id);
    let (_, _, overview) = p.get(&site_url, Some(&alice), HeaderMap::new()).await;
    assert!(overview.contains("Waiting for the router"), "{overview}");
    assert!(
        overview.contains("The current line stops working 1 day from now"),
        "{overview}"
    );
    assert!(
        overview.contains(&format!(r#"action="{site_url}/enrollment""#)),
        "{overview}"
    );
    assert!(overview.contains("Remove from the router"));
    assert!(
        overview.contains(
            "/interface wireguard remove [find where comment=&#34;postern:tunnel:interface"
        ),
        "{overview}"
    );
    assert!(!overview.contains(&first), "the line is shown once");
    assert_eq!(routers[0].tunnel_address.to_string(), "100.64.0.2");

    // Re-issue: a new line, the old one replaced.
    let (status, _, _, page) = p
        .post(
            &format!("{site_url}/enrollment"),
            Some(&alice),
            &[("csrf", &csrf)],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert!(page.contains("A new line for branch-9"), "{page}");
    let second = token_in(&page);
    assert_ne!(second, first);
    let now = *p.clock.0.lock().unwrap();
    let old = p.store.find_enrollment(&hash).await.unwrap().unwrap();
    assert_eq!(old.state(now), store::EnrollmentState::Revoked);
    let (status, _, _, _) = p
        .post(
            &format!("{site_url}/enrollment"),
            Some(&victor),
            &[("csrf", &victor_csrf)],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Time left counts down with the clock.
    p.advance(TimeDelta::hours(23));
    let alice = p.sign_in("alice").await;
    let csrf = p.csrf(&alice).await;
    let (_, _, overview) = p.get(&site_url, Some(&alice), HeaderMap::new()).await;
    assert!(
        overview.contains("stops working 1 hour from now"),
        "{overview}"
    );

    // A refused form keeps what was typed and says why.
    let (status, _, _, page) = p
        .post(
            "/sites",
            Some(&alice),
            &[("csrf", &csrf), ("name", "branch-9"), ("region", "local")],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        page.contains(r#"role="alert""#) && page.contains("branch-9"),
        "{page}"
    );
    let (status, _, _, page) = p
        .post(
            "/sites",
            Some(&alice),
            &[("csrf", &csrf), ("name", "x"), ("region", "mars")],
            HeaderMap::new(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(page.contains("region: no region named"), "{page}");

    // A directly reached site has no onboarding panel.
    let (_, _, overview) = p
        .get(
            &format!("/sites/{}", p.site),
            Some(&alice),
            HeaderMap::new(),
        )
        .await;
    assert!(!overview.contains("Waiting for the router"));
    assert!(overview.contains("directly, at its address"));
    p.stop().await;
}

/// The Share button on a grant's row: a one-use link in the dialog (the API's code,
/// audited), which a person without an account opens once on the public page; a
/// revoked grant's Share is refused in the dialog.
#[tokio::test]
async fn share_makes_a_one_use_link_anyone_can_open_once() {
    let p = Portal::start().await;
    let alice = p.sign_in("alice").await;
    let csrf = p.csrf(&alice).await;
    let router = p.router_of(p.org, p.site).await;
    p.post(
        &format!("/sites/{}/access", p.site),
        Some(&alice),
        &[
            ("csrf", &csrf),
            ("type", "ssh"),
            ("allow_from", "198.51.100.7"),
            ("expire_after_minutes", "60"),
        ],
        HeaderMap::new(),
    )
    .await;
    let g = p.store.list_access(p.org, router.id, None).await.unwrap()[0].clone();
    let password = p.store.access_password(g.id).await.unwrap();
    let (_, _, page) = p
        .get(
            &format!("/sites/{}/access", p.site),
            Some(&alice),
            HeaderMap::new(),
        )
        .await;
    let share = format!("/sites/{}/access/{}/share", p.site, g.id);
    assert!(
        page.contains(&format!(r#"hx-post="{share}""#)),
        "a Share button"
    );
    assert!(page.contains(">Share<"));
    // Without the CSRF token: refused.
    let (status, ..) = p.post(&share, Some(&alice), &[], HeaderMap::new()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _, dialog) = p
        .post(
            &share,
            Some(&alice),
            &[],
            headers(&[("hx-request", "true"), ("x-csrf-token", &csrf)]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{dialog}");
    assert!(
        !dialog.contains(password.expose()),
        "the dialog shows a link, not the login"
    );
    assert!(
        dialog.contains("198.51.100.7"),
        "it says who may still connect"
    );
    let link = dialog
        .split("/shared/")
        .nth(1)
        .and_then(|rest| rest.split(['"', '<', ' ']).next())
        .expect("a /shared/ link in the dialog");
    assert!(link.starts_with("shr_"), "{link}");
    assert!(
        p.actions(p.org)
            .await
            .contains(&"access.share.create".to_owned())
    );

    // Someone without an account: the page has a button; pressing it shows the login.
    let url = format!("/shared/{link}");
    let (status, _, page) = p.get(&url, None, HeaderMap::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Show the login"));
    assert!(!page.contains(password.expose()));
    let (status, _, _, shown) = p.post(&url, None, &[], HeaderMap::new()).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    assert!(shown.contains(password.expose()));
    assert!(shown.contains(&g.username));
    let (status, _, _, again) = p.post(&url, None, &[], HeaderMap::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!again.contains(password.expose()));
    let actions = p.actions(p.org).await;
    assert!(actions.contains(&"access.share.open".to_owned()));
    assert!(actions.contains(&"access.share.refused".to_owned()));

    // An ended grant cannot be shared: the dialog says why.
    p.post(
        &format!("/sites/{}/access/{}/revoke", p.site, g.id),
        Some(&alice),
        &[],
        headers(&[("hx-request", "true"), ("x-csrf-token", &csrf)]),
    )
    .await;
    let (status, _, _, dialog) = p
        .post(
            &share,
            Some(&alice),
            &[],
            headers(&[("hx-request", "true"), ("x-csrf-token", &csrf)]),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{dialog}");
    assert!(dialog.contains("nothing left to share"), "{dialog}");
    p.stop().await;
}
