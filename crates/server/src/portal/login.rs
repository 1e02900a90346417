//! Signing in and out: the login form, the argon2id check (the same work whether or not
//! the user exists), the session cookie, and the audit entries.

use std::net::IpAddr;
use std::sync::OnceLock;

use askama::Template;
use axum::extract::{FromRequest as _, FromRequestParts as _, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use serde::Deserialize;

use super::error::PortalError;
use super::session::{self, Signed, Throttle};
use super::{render, urls};
use crate::auth::{hash_password, verify_password};
use crate::state::AppState;

/// The longest username or password the form takes.
const MAX_FIELD: usize = 1024;

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    css: String,
    action: &'static str,
    username: String,
    error: Option<&'static str>,
}

impl LoginPage {
    fn new(username: String, error: Option<&'static str>) -> Self {
        Self {
            css: urls::asset("portal.css"),
            action: urls::LOGIN,
            username,
            error,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub struct LoginForm {
    username: String,
    password: String,
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
    render(&LoginPage::new(String::new(), None))
}

/// A hash to verify against when the user does not exist, so both cases cost the same.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("postern dummy password").unwrap_or_default())
}

const FAILED: &str = "Wrong username or password (after repeated failures, wait a few minutes).";

/// `POST /login`: checks the password and opens a session.
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
    let fail = |username: String| -> Result<Response, PortalError> {
        let page = LoginPage::new(username, Some(FAILED));
        Ok((StatusCode::UNAUTHORIZED, render(&page)?).into_response())
    };
    if username.is_empty() || username.len() > MAX_FIELD || form.password.len() > MAX_FIELD {
        return fail(username.chars().take(MAX_FIELD).collect());
    }
    let allowed = throttle.allows(address, &username);
    let user = state.store.find_user_by_username(&username).await?;
    let hash = user
        .as_ref()
        .filter(|u| !u.disabled)
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| dummy_hash().to_owned());
    let password = form.password;
    let matches = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
        .await
        .unwrap_or(false);
    let user = match user {
        Some(u) if matches && allowed && !u.disabled => u,
        other => {
            throttle.failed(address, &username);
            if let Some(u) = other {
                audit(
                    &state,
                    u.org_id,
                    &u.username,
                    address,
                    "session.login_failed",
                )
                .await?;
            }
            return fail(username);
        }
    };
    throttle.succeeded(&username);
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
    )
    .await?;
    let mut res = Redirect::to(urls::LOGIN).into_response();
    res.headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie(https));
    Ok(res)
}

async fn audit(
    state: &AppState,
    org_id: domain::OrgId,
    actor: &str,
    address: IpAddr,
    action: &str,
) -> Result<(), PortalError> {
    state
        .store
        .append_audit(store::NewAudit {
            org_id,
            at: state.now(),
            actor: actor.to_owned(),
            actor_address: Some(address),
            action: action.to_owned(),
            target: None,
            details: serde_json::json!({ "via": "portal" }),
        })
        .await?;
    Ok(())
}
