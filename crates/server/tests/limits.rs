//! Back-pressure on creating grants, as a caller meets it: the per-token and
//! per-address rates (429 problem+json with `Retry-After`), and the caps on live grants
//! per router and per organisation (409), on a real server over HTTP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use postern_server as server;
use reqwest::StatusCode;
use serde_json::{Value, json};

extern crate store as postern_store;

#[allow(dead_code)]
#[path = "../../store/tests/harness/mod.rs"]
mod harness;

mod support;

use support::{METRICS_TOKEN, Server, token};

/// The value of one `/metrics` line.
async fn metric(s: &Server, line_start: &str) -> String {
    let text = s
        .http
        .get(format!("{}/metrics", s.base))
        .bearer_auth(METRICS_TOKEN)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in {text}"))
        .trim()
        .to_owned()
}

/// Every limit off; each test turns on the one it shows.
fn off(c: &mut server::ServerConfig) {
    c.creation.per_user = 0;
    c.creation.per_token = 0;
    c.creation.per_address = 0;
    c.creation.live_per_router = 0;
    c.creation.live_per_org = 0;
}

struct Answer {
    status: StatusCode,
    retry_after: Option<String>,
    kind: String,
    body: Value,
}

async fn create(s: &Server, token: &str, router: &str, kind: &str) -> Answer {
    let body = if kind == "transient-forwarding" {
        json!({"dst_port": 22, "dst_address": "192.168.88.2"})
    } else {
        json!({})
    };
    let resp = s
        .http
        .post(format!("{}/api/routers/{router}/{kind}", s.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    Answer {
        status: resp.status(),
        retry_after: resp
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned()),
        kind: resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default(),
        body: resp.json().await.unwrap_or(Value::Null),
    }
}

async fn router(s: &Server, name: &str) -> String {
    let r = s
        .post(
            "/api/routers",
            json!({"name": name, "tunnel_address": "127.0.0.1",
                   "username": "postern", "password": "router-pass"}),
        )
        .await;
    r["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_token_over_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let s = Server::start(|c| {
        off(c);
        c.creation.per_token = 3;
    })
    .await;
    let r = router(&s, "r1").await;
    let (other, _) = token(&s.store, s.org, domain::Role::Operator, "other").await;
    // Forwards and access count alike.
    for kind in [
        "transient-forwarding",
        "transient-access",
        "transient-forwarding",
    ] {
        let a = create(&s, &s.admin, &r, kind).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    let a = create(&s, &s.admin, &r, "transient-access").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    assert_eq!(a.kind, "application/problem+json");
    assert_eq!(a.body["status"], 429);
    assert_eq!(a.body["type"], "urn:postern:problem:rate-limited");
    assert!(
        a.body["detail"]
            .as_str()
            .unwrap()
            .contains("this API token"),
        "{}",
        a.body
    );
    let wait: u64 = a.retry_after.expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    // Nothing was made by the refused one.
    let list: Value = s
        .http
        .get(format!("{}/api/routers/{r}/transient-access", s.base))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    // Another token is held to its own count.
    let a = create(&s, &other, &r, "transient-forwarding").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(
        metric(
            &s,
            "postern_grant_creates_refused_total{reason=\"rate_limit\"}"
        )
        .await,
        "1"
    );
    s.stop().await;
}

#[tokio::test]
async fn an_address_over_its_rate_is_refused_whichever_token_it_uses() {
    let s = Server::start(|c| {
        off(c);
        c.creation.per_address = 2;
    })
    .await;
    let r = router(&s, "r1").await;
    let (second, _) = token(&s.store, s.org, domain::Role::Operator, "second").await;
    let (third, _) = token(&s.store, s.org, domain::Role::Operator, "third").await;
    assert_eq!(
        create(&s, &s.admin, &r, "transient-access").await.status,
        StatusCode::CREATED
    );
    assert_eq!(
        create(&s, &second, &r, "transient-access").await.status,
        StatusCode::CREATED
    );
    let a = create(&s, &third, &r, "transient-forwarding").await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    assert!(
        a.body["detail"]
            .as_str()
            .unwrap()
            .contains("this client address"),
        "{}",
        a.body
    );
    assert!(a.retry_after.is_some());
    s.stop().await;
}

#[tokio::test]
async fn the_default_rates_let_a_person_work() {
    // The defaults: 30 a minute per token; ten creates in a row are nowhere near.
    let s = Server::start(|c| {
        c.creation.live_per_router = 0;
    })
    .await;
    let defaults = server::config::CreationLimits::default();
    assert!(defaults.per_token >= 30 && defaults.per_user >= 30 && defaults.per_address >= 30);
    let r = router(&s, "r1").await;
    for _ in 0..10 {
        let a = create(&s, &s.admin, &r, "transient-forwarding").await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    s.stop().await;
}

#[tokio::test]
async fn live_grants_are_capped_per_router_and_per_organisation_sqlite() {
    live_grants_are_capped(harness::Db::Sqlite).await;
}

#[tokio::test]
async fn live_grants_are_capped_per_router_and_per_organisation_postgres() {
    live_grants_are_capped(harness::Db::Postgres).await;
}

async fn live_grants_are_capped(db: harness::Db) {
    let Some(s) = Server::start_on(db, |c| {
        off(c);
        c.creation.live_per_router = 2;
        c.creation.live_per_org = 3;
    })
    .await
    else {
        return;
    };
    let r1 = router(&s, "r1").await;
    let r2 = router(&s, "r2").await;
    let first = create(&s, &s.admin, &r1, "transient-access").await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(
        create(&s, &s.admin, &r1, "transient-forwarding")
            .await
            .status,
        StatusCode::CREATED
    );
    let a = create(&s, &s.admin, &r1, "transient-forwarding").await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert_eq!(a.kind, "application/problem+json");
    assert!(
        a.body["detail"]
            .as_str()
            .unwrap()
            .contains("max_live_grants_per_router"),
        "{}",
        a.body
    );
    // The other router has room, until the organisation is full.
    assert_eq!(
        create(&s, &s.admin, &r2, "transient-access").await.status,
        StatusCode::CREATED
    );
    let a = create(&s, &s.admin, &r2, "transient-access").await;
    assert_eq!(a.status, StatusCode::CONFLICT, "{}", a.body);
    assert!(
        a.body["detail"]
            .as_str()
            .unwrap()
            .contains("max_live_grants_per_org"),
        "{}",
        a.body
    );
    // A revoked grant frees its place.
    let id = first.body["id"].as_str().unwrap();
    let resp = s
        .http
        .delete(format!("{}/api/routers/{r1}/transient-access/{id}", s.base))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let a = create(&s, &s.admin, &r2, "transient-forwarding").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    assert_eq!(
        metric(
            &s,
            "postern_grant_creates_refused_total{reason=\"live_grant_cap\"}"
        )
        .await,
        "2"
    );
    s.stop().await;
}

/// Signs `username` in to the portal: the session cookie and the page's CSRF token.
async fn portal_session(s: &Server, http: &reqwest::Client, username: &str) -> (String, String) {
    let resp = http
        .post(format!("{}/login", s.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "username={username}&password=correct-horse-battery&organisation=tests"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = http
        .get(format!("{}/sites", s.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at = page.find(r#"name="csrf" value=""#).expect("a csrf field") + 19;
    let csrf = page[at..].split('"').next().unwrap().to_owned();
    (cookie, csrf)
}

#[tokio::test]
async fn a_portal_user_over_the_rate_is_told_so_in_the_form_and_others_are_not() {
    let s = Server::start(|c| {
        off(c);
        c.creation.per_user = 2;
    })
    .await;
    let r = router(&s, "r1").await;
    let site: Value = s
        .http
        .get(format!("{}/api/routers/{r}", s.base))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let site = site["site_id"].as_str().unwrap().to_owned();
    for name in ["alice", "carol"] {
        s.post(
            "/api/users",
            json!({"username": name, "role": "operator", "password": "correct-horse-battery"}),
        )
        .await;
    }
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let add = |cookie: String, csrf: String| {
        let http = http.clone();
        let url = format!("{}/sites/{site}/access", s.base);
        async move {
            let resp = http
                .post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("cookie", cookie)
                .header("x-csrf-token", csrf)
                .body("type=ssh&access=read&allow_from=127.0.0.1&expire_after_minutes=60")
                .send()
                .await
                .unwrap();
            (resp.status(), resp.text().await.unwrap())
        }
    };
    let (alice, alice_csrf) = portal_session(&s, &http, "alice").await;
    for _ in 0..2 {
        let (status, page) = add(alice.clone(), alice_csrf.clone()).await;
        assert!(
            status.is_success() || status.is_redirection(),
            "{status}: {page}"
        );
    }
    let (status, page) = add(alice.clone(), alice_csrf.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{page}");
    assert!(page.contains("this user created 2 grants"), "{page}");
    // Another user from the same address has a count of their own.
    let (carol, carol_csrf) = portal_session(&s, &http, "carol").await;
    let (status, page) = add(carol, carol_csrf).await;
    assert!(
        status.is_success() || status.is_redirection(),
        "{status}: {page}"
    );
    s.stop().await;
}

#[test]
fn the_limits_are_configuration() {
    let text = "grant_rate_per_user = 5\ngrant_rate_per_token = 6\ngrant_rate_per_address = 0\n\
                max_live_grants_per_router = 7\nmax_live_grants_per_org = 8\n\
                gateway_max_connections_per_port = 9\ngateway_max_connections_per_source = 10\n";
    let c = server::ServerConfig::from_text(
        Some((std::path::Path::new("postern.toml"), text)),
        [("POSTERN_GRANT_RATE_PER_TOKEN".to_owned(), "11".to_owned())],
        &server::config::Overrides::default(),
    )
    .unwrap();
    assert_eq!(
        c.creation,
        server::config::CreationLimits {
            per_user: 5,
            per_token: 11,
            per_address: 0,
            live_per_router: 7,
            live_per_org: 8,
        }
    );
    assert_eq!(c.gateway_max_connections_per_port, 9);
    assert_eq!(c.gateway_max_connections_per_source, 10);
    let zero = server::ServerConfig::from_text(
        None,
        [(
            "POSTERN_GATEWAY_MAX_CONNECTIONS_PER_SOURCE".to_owned(),
            "0".to_owned(),
        )],
        &server::config::Overrides::default(),
    );
    assert!(zero.is_err());
}

/// Another process (a backup, a script with `sqlite3`) holds SQLite's writer lock past the
/// store's wait: a create is refused with 503, `Retry-After` and a problem saying why, and
/// leaves nothing behind; once the lock is let go, the same create succeeds.
#[tokio::test]
async fn a_create_that_finds_the_database_locked_past_the_wait_gets_503_and_makes_nothing() {
    use sqlx::{ConnectOptions, Connection};
    let s = Server::start(off).await;
    let r = router(&s, "r1").await;
    let mut other =
        <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(s.database_url())
            .unwrap()
            .connect()
            .await
            .unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut other)
        .await
        .unwrap();
    let a = create(&s, &s.admin, &r, "transient-forwarding").await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert_eq!(a.kind, "application/problem+json");
    assert_eq!(a.body["type"], "urn:postern:problem:busy");
    assert!(
        a.body["detail"]
            .as_str()
            .unwrap()
            .contains("database is locked"),
        "{}",
        a.body
    );
    let wait: u64 = a.retry_after.expect("Retry-After").parse().unwrap();
    assert!(wait >= 1, "{wait}");
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();

    let list: Value = s
        .http
        .get(format!(
            "{}/api/routers/{r}/transient-forwarding?all=true",
            s.base
        ))
        .bearer_auth(&s.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    let a = create(&s, &s.admin, &r, "transient-forwarding").await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    s.stop().await;
}
