//! The portal: server-rendered pages (askama templates in `templates/`) with htmx for
//! the live parts, served by `postern server` itself under `/`. Pages reach the store
//! through the same functions and the same [`Caller`](crate::auth::Caller) as the API,
//! scoped by the signed-in user's organisation.
//!
//! - [`urls`]: every portal URL in one place.
//! - [`session`]: the session cookie, the `Signed` extractor, the CSRF guard, the login
//!   throttle.
//! - [`assets`]: htmx, xterm.js, the stylesheet and script, embedded at build time.
//! - [`error`]: `PortalError`, rendered as a page.
//! - `login`, `sites`, `grants`, `admin`, `regions`: the handlers, by page area, named
//!   `<page>_<method>` (`grants`: the Transient Access and Forwarding tabs and their
//!   forms, which go through the API's own code in `routes::grants`).
//! - `terminal`: the Terminal button, the terminal's WebSocket, recordings and replay.
//! - `shared`: a share link's public page (`/shared/{secret}`), opened with a button.
//! - `launcher`: builds of the WinBox launcher offered for download (from the data
//!   directory's `launcher/`).
//!
//! Routes are split into a public router (login, assets) and a guarded one whose every
//! route needs a live session; both pass the CSRF guard and get the security headers.

pub mod assets;
pub mod error;
pub mod session;
pub mod urls;

mod admin;
mod grants;
mod launcher;
pub(crate) mod login;
mod onboard;
mod regions;
mod shared;
mod sites;
mod terminal;

use askama::Template;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};

use crate::state::AppState;
use error::PortalError;
use session::Signed;

/// The portal's routes over `state`.
pub fn router(state: AppState) -> Router<AppState> {
    let public = Router::new()
        .route(urls::LOGIN, get(login::login_get).post(login::login_post))
        .route(urls::ASSET, get(assets::asset_get))
        .route(
            urls::SHARED,
            get(shared::shared_get).post(shared::shared_post),
        );
    let guarded = Router::new()
        .route(urls::ROOT, get(sites::root_get))
        .route(urls::LOGOUT, post(login::logout_post))
        .route(urls::SITES, get(sites::sites_get).post(onboard::sites_post))
        .route(urls::SITE_ENROLLMENT, post(onboard::site_enrollment_post))
        .route(urls::SITE, get(sites::site_get))
        .route(
            urls::SITE_ACCESS,
            get(grants::site_access_get).post(grants::site_access_post),
        )
        .route(
            urls::SITE_FORWARDS,
            get(grants::site_forwards_get).post(grants::site_forwards_post),
        )
        .route(
            urls::SITE_ACCESS_CREDENTIALS,
            post(grants::access_credentials_post),
        )
        .route(urls::SITE_ACCESS_REVOKE, post(grants::access_revoke_post))
        .route(urls::SITE_ACCESS_SHARE, post(grants::access_share_post))
        .route(urls::SITE_FORWARD, get(grants::forward_get))
        .route(urls::SITE_FORWARD_REVOKE, post(grants::forward_revoke_post))
        .route(urls::SITE_JOBS, get(sites::site_jobs_get))
        .route(urls::USERS, get(admin::users_get))
        .route(urls::TOKENS, get(admin::tokens_get))
        .route(urls::AUDIT, get(admin::audit_get))
        .route(urls::REGIONS, get(regions::regions_get))
        .route(urls::SITE_TERMINAL, post(terminal::terminal_post))
        .route(urls::TERMINAL, get(terminal::terminal_get))
        .route(urls::TERMINAL_WS, get(terminal::terminal_ws_get))
        .route(urls::RECORDING, get(terminal::recording_get))
        .route(urls::RECORDING_CAST, get(terminal::recording_cast_get))
        .route(urls::LAUNCHER_FILE, get(launcher::launcher_file_get))
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_signed,
        ));
    public
        .merge(guarded)
        .layer(middleware::from_fn_with_state(state, session::csrf_guard))
        .layer(middleware::from_fn(security_headers))
}

/// Sends a request without a live session to the login page.
async fn require_signed(State(state): State<AppState>, req: Request, next: Next) -> Response {
    use axum::extract::FromRequestParts as _;
    let (mut parts, body) = req.into_parts();
    match Signed::from_request_parts(&mut parts, &state).await {
        Ok(_) => next.run(Request::from_parts(parts, body)).await,
        Err(e) => e.into_response(),
    }
}

/// Headers every portal response carries: a strict content security policy (no inline
/// script or style anywhere), no framing, no referrer to other sites (same-origin keeps `Origin` on our own forms), and
/// no caching of pages.
async fn security_headers(req: Request, next: Next) -> Response {
    let is_asset = req.uri().path().starts_with("/assets/");
    let nonce = session::cookie_token(req.headers()).map(|t| style_nonce(&session::hash(t)));
    let mut res = next.run(req).await;
    let h = res.headers_mut();
    // xterm.js adds <style> elements for its colours and sizes; `terminal.js` gives them
    // the session's style nonce, which no inline style in a page can guess.
    let styles = nonce.map_or_else(
        || "style-src 'self'".to_owned(),
        |n| format!("style-src 'self' 'nonce-{n}'"),
    );
    let policy = format!(
        "default-src 'none'; script-src 'self'; {styles}; img-src 'self' data:; \
         connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; \
         base-uri 'none'"
    );
    if let Ok(policy) = HeaderValue::from_str(&policy) {
        h.insert(header::CONTENT_SECURITY_POLICY, policy);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if !is_asset {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// The nonce a signed-in session's pages allow `<style>` elements with (xterm.js makes
/// them): derived from the session's id hash, so the header and the page agree without
/// a lookup, and unknown to anyone who cannot read the session's pages.
pub fn style_nonce(id_hash: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("postern style nonce:{id_hash}").as_bytes());
    base64::engine::general_purpose::STANDARD.encode(digest.get(..18).unwrap_or_default())
}

/// What the base layout shows: who is signed in, which nav entry is current, the asset
/// URLs and the CSRF token for forms and htmx.
pub struct Layout {
    pub title: String,
    pub nav: &'static str,
    pub username: String,
    pub role: String,
    pub is_admin: bool,
    pub csrf: String,
    pub css: String,
    pub htmx: String,
    pub js: String,
    /// The server's clock, so countdowns do not depend on the browser's.
    pub now: String,
    /// The session's nonce for `<style>` elements made by scripts (see [`style_nonce`]).
    pub style_nonce: String,
    pub urls: Nav,
}

/// The nav's links.
pub struct Nav {
    pub sites: &'static str,
    pub regions: &'static str,
    pub users: &'static str,
    pub tokens: &'static str,
    pub audit: &'static str,
    pub logout: &'static str,
}

const NAV: Nav = Nav {
    sites: urls::SITES,
    regions: urls::REGIONS,
    users: urls::USERS,
    tokens: urls::TOKENS,
    audit: urls::AUDIT,
    logout: urls::LOGOUT,
};

impl Layout {
    pub fn new(
        state: &AppState,
        signed: &Signed,
        title: impl Into<String>,
        nav: &'static str,
    ) -> Self {
        Self {
            title: title.into(),
            nav,
            username: signed.username.clone(),
            role: signed.caller.role.as_str().to_owned(),
            is_admin: signed.caller.role.is_admin(),
            csrf: signed.csrf.clone(),
            css: urls::asset("portal.css"),
            htmx: urls::asset("htmx.min.js"),
            js: urls::asset("portal.js"),
            now: iso(state.now()),
            style_nonce: style_nonce(&signed.id_hash),
            urls: NAV,
        }
    }

    /// The URL of an embedded asset (for pages that load more than the layout does).
    pub fn asset(&self, name: &str) -> String {
        urls::asset(name)
    }
}

/// Renders a template into a response.
pub fn render(t: &impl Template) -> Result<Response, PortalError> {
    Ok(Html(t.render()?).into_response())
}

/// Whether htmx made this request (and it is not a history restore, which wants a page).
pub fn is_htmx(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request") && !headers.contains_key("hx-history-restore-request")
}

/// The element an htmx request will swap, if it said.
pub fn hx_target(headers: &HeaderMap) -> Option<&str> {
    headers.get("hx-target").and_then(|v| v.to_str().ok())
}

/// A time for machines (`datetime=` attributes, countdowns).
pub fn iso(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// A time for people, in UTC.
pub fn human(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// How long ago, roughly, for people.
pub fn ago(now: DateTime<Utc>, at: DateTime<Utc>) -> String {
    let s = (now - at).num_seconds().max(0);
    match s {
        0..60 => "just now".to_owned(),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h ago", s / 3600),
        _ => format!("{} days ago", s / 86400),
    }
}

#[cfg(test)]
mod tidy {
    use std::path::Path;

    fn files(dir: &str, ext: &str) -> Vec<(String, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == ext) {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                out.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
        out
    }

    /// Every portal module says its role first.
    #[test]
    fn every_module_opens_with_a_doc_comment() {
        let modules = files("src/portal", "rs");
        assert!(modules.len() >= 8);
        for (name, text) in modules {
            assert!(text.starts_with("//!"), "{name} lacks a //! header");
        }
    }

    /// Fragments are fragments, pages are pages, and nothing inlines script or style
    /// (the content security policy would block it).
    #[test]
    fn templates_follow_the_naming_and_the_policy() {
        let templates = files("templates", "html");
        assert!(templates.len() >= 10);
        for (name, text) in templates {
            let lower = text.to_lowercase();
            if name.ends_with("_partial.html") {
                assert!(
                    !lower.contains("<html") && !lower.contains("{% extends"),
                    "{name}"
                );
            } else {
                assert!(
                    lower.contains("{% extends \"base.html\" %}")
                        || lower.starts_with("<!doctype html>"),
                    "{name} is neither a page on the base layout nor a whole document"
                );
            }
            assert!(
                !lower.contains("<script>")
                    && !lower.contains(" style=")
                    && !lower.contains("<style"),
                "{name}"
            );
            let inline_handler = lower.match_indices(" on").any(|(at, _)| {
                let rest = lower.get(at + 3..).unwrap_or("");
                let word: String = rest.chars().take_while(char::is_ascii_lowercase).collect();
                !word.is_empty() && rest.get(word.len()..).is_some_and(|r| r.starts_with('='))
            });
            assert!(!inline_handler, "{name}: inline event handler");
            assert!(!lower.contains("hx-on"), "{name}: hx-on needs eval");
        }
    }
}
