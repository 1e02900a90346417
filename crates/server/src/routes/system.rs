//! Unguarded routes: `/healthz`, `/metrics` (Prometheus) and `/api/openapi.json`.

use std::sync::OnceLock;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::dto::Health;
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
/// text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "system",
    security(()),
    responses((status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"))
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.metrics.render();
    // Jobs the router refused as unknown or invalid: not retried, to be acted on.
    if let Ok(stuck) = state.store.count_stuck_jobs().await {
        text.push_str(
            "# HELP postern_router_jobs_stuck Router jobs stopped because the router refused a command as unknown or invalid.\n",
        );
        text.push_str("# TYPE postern_router_jobs_stuck gauge\n");
        text.push_str(&format!("postern_router_jobs_stuck {stuck}\n"));
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The OpenAPI 3 document of this API.
pub async fn openapi_json() -> Response {
    static DOC: OnceLock<String> = OnceLock::new();
    let body = DOC.get_or_init(|| {
        super::openapi()
            .to_pretty_json()
            .unwrap_or_else(|_| "{}".to_owned())
    });
    let mut response = body.clone().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
