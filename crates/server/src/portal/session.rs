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

/// Failed sign-ins allowed from one (user, address) before back-off starts.
const FREE_PER_USER: u32 = 5;
/// Failed sign-ins allowed from one address, whatever the names, before back-off.
const FREE_PER_ADDRESS: u32 = 30;
/// The first back-off; each further failure doubles it, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(15 * 60);
/// Failures older than this (since the last one) are forgotten.
const THROTTLE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// The most keys the throttle keeps; beyond it, forgotten ones are swept and new keys
/// are not recorded (so a flood cannot grow it without bound).
const THROTTLE_KEYS: usize = 100_000;

/// One key's record: failures in the window, the last one, and sign-ins refused by
/// the back-off since the last audited attempt (counted, not each audited).
#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    last: Instant,
    refused: u32,
}

impl Record {
    /// When the next attempt is allowed, if back-off applies after `free` failures.
    fn next_allowed(&self, free: u32) -> Option<Instant> {
        let over = self.failures.checked_sub(free)?;
        let factor = 1u32.checked_shl(over.min(20)).unwrap_or(u32::MAX);
        let wait = FIRST_BACKOFF.saturating_mul(factor).min(MAX_BACKOFF);
        Some(self.last + wait)
    }
}

/// The sign-in throttle, per process: failures are counted per address (IPv6 by /64) and
/// per (organisation, username, address), never per username alone, so nobody can lock
/// another person out from their own address. Past a few failures, each further one
/// doubles the wait before the next attempt (2 s, 4 s, … up to 15 min); a refused
/// attempt checks no password, costs no hash, and is counted rather than audited.
#[derive(Clone, Default)]
pub struct Throttle {
    inner: Arc<Mutex<HashMap<String, Record>>>,
}

/// What the throttle says of an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    /// Refused: try again after this long.
    Wait(Duration),
}

impl Throttle {
    fn address_key(address: IpAddr) -> String {
        match address {
            IpAddr::V4(a) => format!("ip:{a}"),
            IpAddr::V6(a) => match a.to_ipv4_mapped() {
                Some(v4) => format!("ip:{v4}"),
                None => format!(
                    "ip:{}/64",
                    std::net::Ipv6Addr::from(u128::from(a) & (u128::MAX << 64))
                ),
            },
        }
    }

    fn keys(address: IpAddr, org: &str, username: &str) -> [(String, u32); 2] {
        let ip = Self::address_key(address);
        [
            (
                format!(
                    "user:{}\u{0}{}\u{0}{ip}",
                    org.to_lowercase(),
                    username.to_lowercase()
                ),
                FREE_PER_USER,
            ),
            (ip, FREE_PER_ADDRESS),
        ]
    }

    /// Whether an attempt from `address` for `username` of `org` may check a password
    /// now, at `now`. A refusal is counted on the user's record.
    pub fn check(&self, address: IpAddr, org: &str, username: &str, now: Instant) -> Verdict {
        let Ok(mut map) = self.inner.lock() else {
            return Verdict::Wait(FIRST_BACKOFF);
        };
        let keys = Self::keys(address, org, username);
        let until = keys
            .iter()
            .filter_map(|(k, free)| map.get(k).and_then(|r| r.next_allowed(*free)))
            .max();
        match until {
            Some(at) if at > now => {
                if let Some((user_key, _)) = keys.first()
                    && let Some(r) = map.get_mut(user_key)
                {
                    r.refused = r.refused.saturating_add(1);
                }
                Verdict::Wait(at - now)
            }
            _ => Verdict::Allowed,
        }
    }

    /// Notes a failed attempt at `now`.
    pub fn failed(&self, address: IpAddr, org: &str, username: &str, now: Instant) {
        let Ok(mut map) = self.inner.lock() else {
            return;
        };
        if map.len() >= THROTTLE_KEYS {
            map.retain(|_, r| now.saturating_duration_since(r.last) < THROTTLE_WINDOW);
        }
        for (k, _) in Self::keys(address, org, username) {
            if map.len() >= THROTTLE_KEYS && !map.contains_key(&k) {
                continue;
            }
            let r = map.entry(k).or_insert(Record {
                failures: 0,
                last: now,
                refused: 0,
            });
            if now.saturating_duration_since(r.last) >= THROTTLE_WINDOW {
                r.failures = 0;
            }
            r.failures = r.failures.saturating_add(1);
            r.last = now;
        }
    }

    /// Takes the number of attempts refused for this (user, address) since the last
    /// call, for the audit entry of the attempt that is let through.
    pub fn take_refused(&self, address: IpAddr, org: &str, username: &str) -> u32 {
        let Ok(mut map) = self.inner.lock() else {
            return 0;
        };
        let [(user_key, _), _] = Self::keys(address, org, username);
        map.get_mut(&user_key)
            .map_or(0, |r| std::mem::take(&mut r.refused))
    }

    /// Forgets this (user, address)'s failures after a success (the address's own count
    /// stays: one good account must not reset the guessing of others).
    pub fn succeeded(&self, address: IpAddr, org: &str, username: &str) {
        if let Ok(mut map) = self.inner.lock() {
            let [(user_key, _), _] = Self::keys(address, org, username);
            map.remove(&user_key);
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
    fn the_throttle_backs_off_per_user_and_address_and_never_locks_others_out() {
        let t = Throttle::default();
        let attacker = IpAddr::from([192, 0, 2, 1]);
        let owner = IpAddr::from([198, 51, 100, 7]);
        let mut now = Instant::now();
        // Free failures, then back-off: 2 s after the sixth, doubling.
        for _ in 0..FREE_PER_USER {
            assert_eq!(t.check(attacker, "default", "Admin", now), Verdict::Allowed);
            t.failed(attacker, "default", "admin", now);
        }
        assert_eq!(
            t.check(attacker, "default", "ADMIN", now),
            Verdict::Wait(Duration::from_secs(2))
        );
        // The owner, elsewhere, is not locked out; nor is another user of that address.
        assert_eq!(t.check(owner, "default", "admin", now), Verdict::Allowed);
        assert_eq!(t.check(attacker, "default", "bob", now), Verdict::Allowed);
        // Nor the same name in another organisation.
        assert_eq!(t.check(attacker, "beta", "admin", now), Verdict::Allowed);
        now += Duration::from_secs(2);
        assert_eq!(t.check(attacker, "default", "admin", now), Verdict::Allowed);
        t.failed(attacker, "default", "admin", now);
        assert_eq!(
            t.check(attacker, "default", "admin", now),
            Verdict::Wait(Duration::from_secs(4))
        );
        for _ in 0..30 {
            t.failed(attacker, "default", "admin", now);
        }
        assert_eq!(
            t.check(attacker, "default", "admin", now),
            Verdict::Wait(MAX_BACKOFF)
        );
        // Refusals are counted once taken, for one audit entry.
        assert_eq!(t.take_refused(attacker, "default", "admin"), 3);
        assert_eq!(t.take_refused(attacker, "default", "admin"), 0);
        // The window forgets.
        now += THROTTLE_WINDOW;
        assert_eq!(t.check(attacker, "default", "admin", now), Verdict::Allowed);
        t.failed(attacker, "default", "admin", now);
        assert_eq!(t.check(attacker, "default", "admin", now), Verdict::Allowed);
    }

    #[test]
    fn one_address_spraying_names_is_throttled_by_address() {
        let t = Throttle::default();
        let sprayer: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let neighbour: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        let now = Instant::now();
        for i in 0..FREE_PER_ADDRESS {
            let name = format!("user{i}");
            assert_eq!(t.check(sprayer, "default", &name, now), Verdict::Allowed);
            t.failed(sprayer, "default", &name, now);
        }
        // A new name from the same /64 waits; another address does not.
        assert!(matches!(
            t.check(neighbour, "default", "fresh", now),
            Verdict::Wait(_)
        ));
        assert_eq!(
            t.check(IpAddr::from([192, 0, 2, 9]), "default", "fresh", now),
            Verdict::Allowed
        );
        // A success resets the user's record, never the address's.
        t.succeeded(sprayer, "default", "user0");
        assert!(matches!(
            t.check(sprayer, "default", "user0", now),
            Verdict::Wait(_)
        ));
    }
}
