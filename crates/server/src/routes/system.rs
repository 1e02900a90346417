//! Unguarded routes: `/healthz`, `/metrics` (Prometheus, behind its own token) and
//! `/api/openapi.json`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::dto::Health;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

/// Liveness and database reachability.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "system",
    security(()),
    responses(
        (status = 200, description = "Up, database reachable", body = Health),
        (status = 503, description = "The database does not answer", body = Health)
    )
)]
pub async fn healthz(State(state): State<AppState>) -> Response {
    let database = match state.store.backend() {
        store::Backend::Sqlite => "sqlite",
        store::Backend::Postgres => "postgres",
    }
    .to_owned();
    match state.store.ping().await {
        Ok(()) => Json(Health {
            status: "ok".into(),
            database,
        })
        .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(Health {
                    status: "database unreachable".into(),
                    database,
                }),
            )
                .into_response()
        }
    }
}

/// Request counts and latencies, and the number of stuck router jobs, in the Prometheus
/// text format. Served here only when `metrics_token` is configured, and then only to a
/// request bearing it; otherwise on the separate `metrics_listen` listener alone (see
/// SECURITY.md).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    security(("metrics_token" = [])),
    responses(
        (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"),
        (status = 401, description = "`metrics_token` is configured and the request does not bear it", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No `metrics_token` is configured: metrics are served only on `metrics_listen`, if set", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let Some(secret) = &state.config.metrics_token else {
        return ApiError::NotFound("route").into_response();
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    if !given.is_some_and(|t| secret.matches(t)) {
        return ApiError::Unauthorized.into_response();
    }
    crate::metrics::exposition(State(state)).await
}

/// The OpenAPI 3 document of this API, as this server's configuration bounds it.
pub async fn openapi_json(State(state): State<AppState>) -> Response {
    let body = serde_json::to_string_pretty(&super::document(&state.config, state.now()))
        .unwrap_or_else(|_| "{}".to_owned());
    let mut response = body.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The portal's sign-in form, as the OpenAPI document describes it (the route itself is
/// the portal's, `portal::login`).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SignIn {
    /// The user's name, unique within its organisation.
    username: String,
    password: String,
    /// The organisation's name; empty or absent means `default` (or the only one).
    organisation: Option<String>,
}

/// Signs in to the portal: a session cookie for the pages (the API itself takes bearer
/// tokens only). Before any password is checked, attempts are throttled per client
/// address and per (organisation, username, address): after 5 failures for a user (30
/// from an address) each further one doubles the wait, from 2 s up to 15 minutes (429).
/// At most `max_concurrent_hashes` passwords are checked at once; a sign-in that cannot
/// start within `hash_queue_wait` is refused (503).
#[utoipa::path(
    post,
    path = "/login",
    tag = "system",
    security(()),
    request_body(content = SignIn, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 303, description = "Signed in: the session cookie is set, and the browser is sent to /sites"),
        (status = 401, description = "Wrong organisation, username or password: one answer for all, as an HTML page", content_type = "text/html"),
        (status = 403, description = "Sent from another site's page (`Sec-Fetch-Site: cross-site` or a foreign `Origin`)", content_type = "text/html"),
        (status = 429, description = "Throttled: too many failures from this address, or for this user from it; `Retry-After` gives the seconds to wait", content_type = "text/html"),
        (status = 503, description = "Too many passwords being checked at once; `Retry-After: 5`", content_type = "text/html")
    )
)]
#[allow(dead_code)]
pub async fn login_doc() {}
