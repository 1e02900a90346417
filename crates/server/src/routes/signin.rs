//! `POST /api/login`: a user's username and password (and organisation) exchanged for
//! an API token of the user's own role, for `postern login` and scripts that have no
//! token yet. The same throttle and bounded argon2id check as the portal's sign-in form
//! (one throttle for both), the same one answer for every wrong organisation, username
//! or password, and an audit entry for the token made (`token.create`, `via: sign-in`)
//! or the failure (`session.login_failed`).

use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::TimeDelta;
use serde::Deserialize;
use serde_json::json;
use utoipa::ToSchema;

use super::winbox::RedeemerAddress;
use crate::auth::{generate_token, hash_token};
use crate::dto::{NewTokenView, TokenView, timestamp};
use crate::error::{ApiError, Problem, problem_response};
use crate::extract::ApiJson;
use crate::portal::session::{Throttle, Verdict};
use crate::state::AppState;

/// The longest username, password or organisation taken.
const MAX_FIELD: usize = 1024;
/// Days a signed-in token works when the request names none.
const DEFAULT_DAYS: i64 = 30;

/// A sign-in for an API token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignInForToken {
    #[schema(example = "alice")]
    pub username: String,
    pub password: String,
    /// The organisation's name; absent or empty means `default` (or the only one).
    pub organisation: Option<String>,
    /// A name to recognise the token by in the token list [default: `cli`]: 1–64
    /// characters, no control characters, no white space at either end.
    #[schema(
        example = "alice's laptop",
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\s\\x00-\\x1f\\x7f-\\x9f](?:[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f])?$"
    )]
    pub token_name: Option<String>,
    /// Days until the token stops working (1–365) [default: 30].
    #[schema(minimum = 1, maximum = 365)]
    pub expires_in_days: Option<i64>,
}

fn refused(status: StatusCode, kind: &str, detail: String, retry: Option<u64>) -> Response {
    let problem = Problem {
        kind: kind.into(),
        title: status.canonical_reason().unwrap_or("error").into(),
        status: status.as_u16(),
        detail,
        errors: Vec::new(),
    };
    let mut res = problem_response(status, &problem);
    if let Some(secs) = retry
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

fn wrong() -> Response {
    refused(
        StatusCode::UNAUTHORIZED,
        "urn:postern:problem:unauthorized",
        "wrong username or password (or organisation)".into(),
        None,
    )
}

/// Signs in with a username and password and makes an API token of the user's role,
/// shown this once (`postern login` uses it). Throttled exactly as the portal's sign-in
/// form (one throttle for both): after 5 failures for a user (30 from an address) each
/// further one doubles the wait, from 2 s up to 15 minutes (429 with `Retry-After`). A
/// disabled user, an unknown one and a wrong password get the same 401. The token is
/// audited as `token.create` by the user (`via: sign-in`).
#[utoipa::path(
    post,
    path = "/api/login",
    tag = "system",
    security(()),
    request_body = SignInForToken,
    responses(
        (status = 201, description = "Signed in: keep `token`, it is not shown again", body = NewTokenView),
        (status = 401, description = "Wrong organisation, username or password: one answer for all", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Throttled: too many failures; `Retry-After` gives the seconds to wait", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Too many passwords being checked at once; `Retry-After: 5`", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn login_post(
    State(state): State<AppState>,
    Extension(throttle): Extension<Throttle>,
    from: RedeemerAddress,
    ApiJson(req): ApiJson<SignInForToken>,
) -> Result<Response, ApiError> {
    let address = from.0;
    let mut checks = super::common::Checks::default();
    let name = checks.take(domain::rules::token_name(
        req.token_name.as_deref().unwrap_or("cli"),
    ));
    let days = req.expires_in_days.unwrap_or(DEFAULT_DAYS);
    if !(1..=365).contains(&days) {
        checks.push("expires_in_days", "must be between 1 and 365");
    }
    checks.finish()?;
    let name = name.unwrap_or_else(|| "cli".to_owned());
    let username = req.username.trim().to_owned();
    let org_name = req
        .organisation
        .as_deref()
        .unwrap_or_default()
        .trim()
        .to_owned();
    if username.is_empty()
        || username.len() > MAX_FIELD
        || req.password.len() > MAX_FIELD
        || org_name.len() > MAX_FIELD
    {
        return Ok(wrong());
    }
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
        return Ok(refused(
            StatusCode::TOO_MANY_REQUESTS,
            "urn:postern:problem:throttled",
            format!("too many failed sign-ins from your address: try again in {secs} s"),
            Some(secs),
        ));
    }
    let hash = user
        .as_ref()
        .filter(|u| !u.disabled)
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| crate::portal::login::dummy_hash().to_owned());
    let matches = state.hashing.verify(req.password, hash).await?;
    let refused_before = throttle.take_refused(address, &org_key, &username);
    let user = match user {
        Some(u) if matches && !u.disabled => u,
        other => {
            throttle.failed(address, &org_key, &username, Instant::now());
            if let Some(u) = other {
                state
                    .store
                    .append_audit(store::NewAudit {
                        org_id: u.org_id,
                        at: state.now(),
                        actor: u.username.clone(),
                        actor_address: Some(address),
                        action: "session.login_failed".into(),
                        target: None,
                        details: json!({ "via": "api", "throttled_attempts": refused_before }),
                    })
                    .await?;
            }
            return Ok(wrong());
        }
    };
    throttle.succeeded(address, &org_key, &username);
    let now = state.now();
    let secret = generate_token();
    let token = state
        .store
        .create_api_token(store::NewApiToken {
            org_id: user.org_id,
            name: name.clone(),
            role: user.role,
            token_hash: hash_token(&secret),
            created_by: Some(user.id),
            expires_at: Some(now + TimeDelta::days(days)),
        })
        .await?;
    state
        .store
        .append_audit(store::NewAudit {
            org_id: user.org_id,
            at: now,
            actor: user.username.clone(),
            actor_address: Some(address),
            action: "token.create".into(),
            target: Some(format!("token:{}", token.id)),
            details: json!({ "name": name, "role": token.role.as_str(), "via": "sign-in" }),
        })
        .await?;
    let mut res = (
        StatusCode::CREATED,
        Json(NewTokenView {
            info: TokenView {
                id: token.id.to_string(),
                name: token.name.clone(),
                role: token.role.into(),
                created_at: timestamp(token.created_at),
                expires_at: token.expires_at.map(timestamp),
                last_used_at: None,
            },
            token: secret,
        }),
    )
        .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// Deletes the API token this request bears (`postern logout`): it stops working at
/// once. Any role may end its own token; audited as `token.delete` (`via: logout`).
#[utoipa::path(
    delete,
    path = "/api/login",
    tag = "system",
    responses(
        (status = 204, description = "The token is deleted"),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The request bears no API token (a portal session)", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn login_delete(
    State(state): State<AppState>,
    caller: crate::auth::Caller,
) -> Result<StatusCode, ApiError> {
    let Some(id) = caller.token_id else {
        return Err(ApiError::field(
            "authorization",
            "only an API token can be deleted this way",
        ));
    };
    state
        .store
        .delete_api_token(caller.org_id, id)
        .await
        .map_err(|e| super::common::not_found_as(e, "token"))?;
    state.tokens.forget(id);
    state
        .store
        .append_audit(super::common::audit(
            &caller,
            state.now(),
            "token.delete",
            Some(format!("token:{id}")),
            json!({ "via": "logout" }),
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
