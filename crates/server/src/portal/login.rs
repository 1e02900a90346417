//! Signing in and out: the login form, the throttle (checked before any hashing), the
//! argon2id check (bounded by [`crate::auth::Hashing`], the same work whether or not the
//! user exists), the session cookie, and the audit entries.
//!
//! A user is named by organisation and username: usernames are unique per organisation.
//! The form's Organisation field may be left empty for organisation `default` (made at
//! first start; or the only organisation, when there is one alone), so a single-tenant
//! installation signs in with the username alone.

use std::net::IpAddr;
use std::sync::OnceLock;
use std::time::Instant;

use askama::Template;
use axum::extract::{FromRequest as _, FromRequestParts as _, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::error::PortalError;
use super::session::{self, Signed, Throttle, Verdict};
use super::{render, urls};
use crate::auth::hash_password;
use crate::state::AppState;

/// The longest username or password the form takes.
const MAX_FIELD: usize = 1024;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    css: String,
    action: &'static str,
    username: String,
    organisation: String,
    error: Option<String>,
}

impl LoginPage {
    fn new(username: String, organisation: String, error: Option<String>) -> Self {
        Self {
            css: urls::asset("portal.css"),
            action: urls::LOGIN,
            username,
            organisation,
            error,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LoginForm {
    username: String,
    password: String,
    /// Empty: organisation `default` (or the only one).
    organisation: String,
}

/// `GET /login`: the form, or the sites for someone already signed in.
pub async fn login_get(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, PortalError> {
    let (mut parts, _) = req.into_parts();
    if Signed::from_request_parts(&mut parts, &state).await.is_ok() {
        return Ok(Redirect::to(urls::SITES).into_response());
    }
    render(&LoginPage::new(String::new(), String::new(), None))
}

/// A hash to verify against when the user does not exist, so both cases cost the same.
pub(crate) fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("postern dummy password").unwrap_or_default())
}

const FAILED: &str = "Wrong username or password (or organisation).";

/// `POST /login`: checks the password and opens a session. Refused with 401 (wrong
/// organisation, username or password: one message), 429 (throttled: this address, or
/// this user from this address, failed too often; `Retry-After`) or 503 (too many
/// passwords being checked at once; `Retry-After`).
pub async fn login_post(
    State(state): State<AppState>,
    Extension(throttle): Extension<Throttle>,
    req: Request,
) -> Result<Response, PortalError> {
    let (parts, body) = req.into_parts();
    let address: IpAddr = session::address(&state, &parts.extensions, &parts.headers);
    let https = session::over_https(&state, &parts.extensions, &parts.headers);
    let form = match Form::<LoginForm>::from_request(Request::from_parts(parts, body), &()).await {
        Ok(Form(f)) => f,
        Err(_) => LoginForm::default(),
    };
    let username = form.username.trim().to_owned();
    let org_name = form.organisation.trim().to_owned();
    let refuse = |status: StatusCode, message: String, retry: Option<u64>| {
        let page = LoginPage::new(
            username.chars().take(MAX_FIELD).collect(),
            org_name.chars().take(MAX_FIELD).collect(),
            Some(message),
        );
        let mut res = (status, render(&page)?).into_response();
        if let Some(secs) = retry
            && let Ok(v) = header::HeaderValue::from_str(&secs.to_string())
        {
            res.headers_mut().insert(header::RETRY_AFTER, v);
        }
        Ok::<_, PortalError>(res)
    };
    if username.is_empty()
        || username.len() > MAX_FIELD
        || form.password.len() > MAX_FIELD
        || org_name.len() > MAX_FIELD
    {
        return refuse(StatusCode::UNAUTHORIZED, FAILED.to_owned(), None);
    }
    // Who is meant: cheap reads, before the throttle and the hash.
    let org = if org_name.is_empty() {
        state.store.default_organisation().await?
    } else {
        state.store.find_organisation_by_name(&org_name).await?
    };
    let org_key = org.as_ref().map_or_else(
        || format!("?{}", org_name.to_lowercase()),
        |o| o.id.to_string(),
    );
    let user = match &org {
        Some(o) => state.store.find_user(o.id, &username).await?,
        None => None,
    };
    if let Verdict::Wait(wait) = throttle.check(address, &org_key, &username, Instant::now()) {
        state
            .metrics
            .logins
            .throttled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let secs = wait.as_secs().max(1);
        return refuse(
            StatusCode::TOO_MANY_REQUESTS,
            format!("Too many failed sign-ins from your address: try again in {secs} s."),
            Some(secs),
        );
    }
    let hash = user
        .as_ref()
        .filter(|u| !u.disabled)
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| dummy_hash().to_owned());
    let matches = match state.hashing.verify(form.password, hash).await {
        Ok(m) => m,
        Err(crate::error::ApiError::Busy(_)) => {
            state
                .metrics
                .logins
                .busy
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "The server is busy checking passwords: try again in a few seconds.".to_owned(),
                Some(5),
            );
        }
        Err(e) => return Err(e.into()),
    };
    let refused_before = throttle.take_refused(address, &org_key, &username);
    let user = match user {
        Some(u) if matches && !u.disabled => u,
        other => {
            throttle.failed(address, &org_key, &username, Instant::now());
            if let Some(u) = other {
                audit(
                    &state,
                    u.org_id,
                    &u.username,
                    address,
                    "session.login_failed",
                    refused_before,
                )
                .await?;
            }
            return refuse(StatusCode::UNAUTHORIZED, FAILED.to_owned(), None);
        }
    };
    throttle.succeeded(address, &org_key, &username);
    let token = session::random_token();
    let now = state.now();
    state
        .store
        .create_session(store::NewSession {
            id_hash: session::hash(&token),
            user_id: user.id,
            org_id: user.org_id,
            csrf_token: session::random_token(),
            at: now,
            expires_at: now + session::ABSOLUTE,
        })
        .await?;
    // Sign-in is also when old sessions are swept.
    let _ = state
        .store
        .delete_stale_sessions(now, now - session::IDLE)
        .await;
    audit(
        &state,
        user.org_id,
        &user.username,
        address,
        "session.login",
        refused_before,
    )
    .await?;
    let mut res = Redirect::to(urls::SITES).into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, session::set_cookie(&token, https));
    Ok(res)
}

/// `POST /logout`: ends the session (the CSRF guard has checked the form).
pub async fn logout_post(
    State(state): State<AppState>,
    req: Request,
) -> Result<Response, PortalError> {
    let (mut parts, _) = req.into_parts();
    let signed = Signed::from_request_parts(&mut parts, &state).await?;
    let https = session::over_https(&state, &parts.extensions, &parts.headers);
    state.store.delete_session(&signed.id_hash).await?;
    // The session's open terminals end now (those of other processes at their next
    // check of the session).
    state.terminals.end_session(&signed.id_hash);
    audit(
        &state,
        signed.caller.org_id,
        &signed.username,
        signed.caller.address,
        "session.logout",
        0,
    )
    .await?;
    let mut res = Redirect::to(urls::LOGIN).into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie(https));
    Ok(res)
}

/// One audit entry; `throttled` is how many attempts for this user from this address
/// the throttle refused since the last entry (counted here, never one entry each).
async fn audit(
    state: &AppState,
    org_id: domain::OrgId,
    actor: &str,
    address: IpAddr,
    action: &str,
    throttled: u32,
) -> Result<(), PortalError> {
    let details = if throttled > 0 {
        serde_json::json!({ "via": "portal", "throttled_attempts": throttled })
    } else {
        serde_json::json!({ "via": "portal" })
    };
    state
        .store
        .append_audit(store::NewAudit {
            org_id,
            at: state.now(),
            actor: actor.to_owned(),
            actor_address: Some(address),
            action: action.to_owned(),
            target: None,
            details,
        })
        .await?;
    Ok(())
}
