//! Portal sessions: the cookie, the [`Signed`] extractor that turns it into a
//! [`Caller`], the CSRF guard every non-GET portal request passes, and the login
//! throttle.
//!
//! The cookie holds 32 random bytes (base64url); the store keeps only their SHA-256, with
//! the user, the organisation, a per-session CSRF token and the idle and absolute limits.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header, request::Parts};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::TimeDelta;
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use super::error::PortalError;
use crate::auth::{Caller, client_address};
use crate::listen::ClientAddr;
use crate::state::AppState;

/// The cookie's name over plain HTTP.
pub const COOKIE: &str = "postern_session";
/// The cookie's name over HTTPS: the `__Host-` prefix pins it to this host, path `/`,
/// `Secure`.
pub const COOKIE_HTTPS: &str = "__Host-postern_session";
/// The form field and the header that carry the CSRF token.
pub const CSRF_FIELD: &str = "csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// A session unused this long ends.
pub const IDLE: TimeDelta = TimeDelta::minutes(60);
/// A session ends this long after sign-in, however busy.
pub const ABSOLUTE: TimeDelta = TimeDelta::hours(12);
/// `last_seen_at` is written at most this often.
const TOUCH_EVERY: TimeDelta = TimeDelta::seconds(60);
/// Failed sign-ins allowed per address and per username in [`THROTTLE_WINDOW`].
const THROTTLE_FAILURES: u32 = 10;
const THROTTLE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The largest form body the CSRF guard reads.
const FORM_LIMIT: usize = 64 * 1024;

/// A fresh secret: 32 CSPRNG bytes, base64url.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What the store keeps of a cookie token.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether text has the shape of one of our tokens (43 base64url characters).
fn well_formed(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// The session token a request carries, from either cookie name.
pub fn cookie_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE || *name == COOKIE_HTTPS)
        .map(|(_, value)| value.trim())
        .filter(|value| well_formed(value))
}

/// The TCP peer of a request.
fn peer(parts_ext: &axum::http::Extensions) -> IpAddr {
    parts_ext
        .get::<ConnectInfo<ClientAddr>>()
        .map(|ConnectInfo(ClientAddr(a))| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// The client's address, believing `X-Forwarded-For` only from trusted proxies.
pub fn address(state: &AppState, ext: &axum::http::Extensions, headers: &HeaderMap) -> IpAddr {
    client_address(&state.config.trusted_proxies, peer(ext), headers)
}

/// Whether the browser reached us over HTTPS: only a trusted proxy can say so.
pub fn over_https(state: &AppState, ext: &axum::http::Extensions, headers: &HeaderMap) -> bool {
    state.config.trusted_proxies.contains(&peer(ext))
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// The `Set-Cookie` value that starts a session.
pub fn set_cookie(token: &str, https: bool) -> HeaderValue {
    let text = if https {
        format!("{COOKIE_HTTPS}={token}; Path=/; HttpOnly; SameSite=Strict; Secure")
    } else {
        format!("{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict")
    };
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The `Set-Cookie` value that ends one.
pub fn clear_cookie(https: bool) -> HeaderValue {
    if https {
        HeaderValue::from_static(
            "__Host-postern_session=; Path=/; HttpOnly; SameSite=Strict; Secure; Max-Age=0",
        )
    } else {
        HeaderValue::from_static("postern_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
    }
}

/// A signed-in portal user: the [`Caller`] the API's code takes, plus what pages show.
#[derive(Debug, Clone)]
pub struct Signed {
    pub caller: Caller,
    pub username: String,
    pub csrf: String,
    /// SHA-256 of the cookie token (to end the session).
    pub id_hash: String,
}

/// Looks up a live session for `token`, touching it; `None` for anything that is not one.
async fn lookup(
    state: &AppState,
    token: &str,
) -> Result<Option<(store::Session, store::User)>, PortalError> {
    Ok(live(state, &hash(token), true).await?)
}

/// The session with this hash if it is still live (not logged out, not past its idle
/// or absolute limit, its user not disabled or deleted), touched when `used`; an ended
/// one is deleted. Sign-in checks and the terminal's periodic check share this rule.
pub async fn live(
    state: &AppState,
    id_hash: &str,
    used: bool,
) -> Result<Option<(store::Session, store::User)>, store::StoreError> {
    let Some(session) = state.store.find_session(id_hash).await? else {
        return Ok(None);
    };
    let now = state.now();
    if session.expires_at <= now || session.last_seen_at + IDLE <= now {
        state.store.delete_session(id_hash).await?;
        return Ok(None);
    }
    let user = match state.store.get_user(session.org_id, session.user_id).await {
        Ok(u) if !u.disabled => u,
        Ok(_) | Err(store::StoreError::NotFound) => {
            state.store.delete_session(id_hash).await?;
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    if used && now - session.last_seen_at >= TOUCH_EVERY {
        state.store.touch_session(id_hash, now).await?;
    }
    Ok(Some((session, user)))
}

impl FromRequestParts<AppState> for Signed {
    type Rejection = PortalError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, PortalError> {
        if let Some(signed) = parts.extensions.get::<Signed>() {
            return Ok(signed.clone());
        }
        let token = cookie_token(&parts.headers).ok_or(PortalError::SignedOut)?;
        let (session, user) = lookup(state, token).await?.ok_or(PortalError::SignedOut)?;
        let signed = Signed {
            caller: Caller {
                org_id: session.org_id,
                actor: user.username.clone(),
                role: user.role,
                address: address(state, &parts.extensions, &parts.headers),
                user_id: Some(user.id),
                token_id: None,
            },
            username: user.username,
            csrf: session.csrf_token,
            id_hash: session.id_hash,
        };
        parts.extensions.insert(signed.clone());
        Ok(signed)
    }
}

/// Refuses a request that another site made the browser send: `Sec-Fetch-Site` says
/// cross-site, or `Origin` names another host.
fn cross_site(headers: &HeaderMap) -> bool {
    let fetch_site = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == "cross-site");
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_elsewhere = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|origin| {
            let authority = origin
                .split_once("://")
                .map(|(_, rest)| rest)
                .unwrap_or(origin);
            Some(authority) != host
        });
    fetch_site || origin_elsewhere
}

/// The `csrf` field of an urlencoded form, if present (our tokens need no decoding).
fn form_csrf(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == CSRF_FIELD)
        .map(|(_, value)| value.to_owned())
}

/// Middleware on every portal route: a non-GET request must come from this site and,
/// when a session is open, carry its CSRF token (header or form field). All failures
/// look the same.
pub async fn csrf_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) {
        return next.run(req).await;
    }
    if cross_site(req.headers()) {
        return PortalError::Forbidden.into_response();
    }
    let (mut parts, body) = req.into_parts();
    let Some(token) = cookie_token(&parts.headers).map(str::to_owned) else {
        // No session: only the login form may be posted, and it needs none.
        let req = Request::from_parts(parts, body);
        return next.run(req).await;
    };
    let signed = match Signed::from_request_parts(&mut parts, &state).await {
        Ok(s) => s,
        Err(_) => {
            // A stale cookie: treat the request as signed out.
            let _ = token;
            let req = Request::from_parts(parts, body);
            return next.run(req).await;
        }
    };
    let Ok(bytes) = axum::body::to_bytes(body, FORM_LIMIT).await else {
        return PortalError::Forbidden.into_response();
    };
    let given = parts
        .headers
        .get(CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| form_csrf(&bytes));
    if !given.is_some_and(|g| same_secret(&g, &signed.csrf)) {
        return PortalError::Forbidden.into_response();
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
        .await
}

/// Counts failed sign-ins per address and per username; past the limit, sign-in is
/// refused (with the same message as a wrong password) until the window passes.
#[derive(Clone, Default)]
pub struct Throttle {
    inner: Arc<Mutex<HashMap<String, (u32, Instant)>>>,
}

impl Throttle {
    fn keys(address: IpAddr, username: &str) -> [String; 2] {
        [
            format!("ip:{address}"),
            format!("user:{}", username.to_lowercase()),
        ]
    }

    /// Whether another attempt is allowed now.
    pub fn allows(&self, address: IpAddr, username: &str) -> bool {
        let Ok(map) = self.inner.lock() else {
            return false;
        };
        Self::keys(address, username).iter().all(|k| {
            map.get(k).is_none_or(|(n, since)| {
                *n < THROTTLE_FAILURES || since.elapsed() >= THROTTLE_WINDOW
            })
        })
    }

    /// Notes a failure.
    pub fn failed(&self, address: IpAddr, username: &str) {
        if let Ok(mut map) = self.inner.lock() {
            if map.len() > 100_000 {
                map.retain(|_, (_, since)| since.elapsed() < THROTTLE_WINDOW);
            }
            for k in Self::keys(address, username) {
                let entry = map.entry(k).or_insert((0, Instant::now()));
                if entry.1.elapsed() >= THROTTLE_WINDOW {
                    *entry = (0, Instant::now());
                }
                entry.0 = entry.0.saturating_add(1);
            }
        }
    }

    /// Forgets the username's failures after a success.
    pub fn succeeded(&self, username: &str) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(&format!("user:{}", username.to_lowercase()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_by_either_name_and_only_when_well_formed() {
        let t = random_token();
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("a=b; {COOKIE}={t}").parse().unwrap(),
        );
        assert_eq!(cookie_token(&h), Some(t.as_str()));
        h.insert(
            header::COOKIE,
            format!("{COOKIE_HTTPS}={t}").parse().unwrap(),
        );
        assert_eq!(cookie_token(&h), Some(t.as_str()));
        h.insert(header::COOKIE, format!("{COOKIE}=short").parse().unwrap());
        assert_eq!(cookie_token(&h), None);
    }

    #[test]
    fn csrf_comes_from_the_form_and_secrets_compare() {
        assert_eq!(form_csrf(b"a=1&csrf=xyz&b=2").as_deref(), Some("xyz"));
        assert_eq!(form_csrf(b"a=1"), None);
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
    }

    #[test]
    fn cross_site_requests_are_recognised() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "127.0.0.1:8080".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert(header::ORIGIN, "http://127.0.0.1:8080".parse().unwrap());
        assert!(!cross_site(&h));
        h.insert(header::ORIGIN, "http://evil.example".parse().unwrap());
        assert!(cross_site(&h));
        h.remove(header::ORIGIN);
        h.insert("sec-fetch-site", "cross-site".parse().unwrap());
        assert!(cross_site(&h));
    }

    #[test]
    fn the_throttle_stops_after_repeated_failures() {
        let t = Throttle::default();
        let ip = IpAddr::from([192, 0, 2, 1]);
        for _ in 0..THROTTLE_FAILURES {
            assert!(t.allows(ip, "Alice"));
            t.failed(ip, "alice");
        }
        assert!(!t.allows(ip, "ALICE"));
        assert!(!t.allows(IpAddr::from([192, 0, 2, 2]), "alice"));
        assert!(!t.allows(ip, "bob"));
        assert!(t.allows(IpAddr::from([192, 0, 2, 2]), "bob"));
    }
}
