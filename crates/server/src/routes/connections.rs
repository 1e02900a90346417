//! `/api/routers/{router_id}/transient-access/{id}/connections` and the same under
//! `transient-forwarding`: the connections made through a grant's entry port (source
//! address and port, start, end, bytes each way, how it ended), live ones with their
//! counts so far.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, SecondsFormat, Utc};
use domain::{AccessId, ForwardId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::common::{load_router, not_found_as};
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiPath, parse_id};
use crate::state::AppState;

/// The newest connections listed.
const LIMIT: u32 = 500;

/// One connection through a grant's entry port.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConnectionView {
    pub id: String,
    /// The client's IP address (IPv4 or IPv6, no port), as the gateway saw it.
    pub source_address: String,
    /// The client's TCP source port.
    pub source_port: u16,
    /// RFC 3339, UTC, milliseconds.
    pub started_at: String,
    /// `null` while the connection is live.
    pub ended_at: Option<String>,
    /// Bytes the client sent through the gateway (so far, while live).
    pub bytes_from_client: u64,
    /// Bytes the router or device sent back to the client (so far, while live).
    pub bytes_to_client: u64,
    /// How it ended: `finished` (both sides closed), `revoked`, `expired`, `shutdown`,
    /// `target unreachable`, `error: …`, `gateway stopped` (the server that carried it
    /// stopped without recording its end); `null` while live.
    pub end_reason: Option<String>,
}

fn millis(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

async fn list(
    state: &AppState,
    caller: &Caller,
    router: &store::Router,
    key: orchestrator::GrantKey,
) -> Result<Vec<ConnectionView>, ApiError> {
    let kind = match key {
        orchestrator::GrantKey::Access(_) => store::GrantKind::Access,
        orchestrator::GrantKey::Forward(_) => store::GrantKind::Forward,
    };
    let rows = state
        .store
        .list_connections(caller.org_id, router.id, kind, &key.id(), LIMIT)
        .await?;
    let live = state
        .gateway
        .as_ref()
        .map(|g| g.live_counts(key))
        .unwrap_or_default();
    Ok(rows
        .into_iter()
        .map(|c| {
            let (from_client, to_client) = match (c.ended_at, live.get(&c.id)) {
                (None, Some(counts)) => *counts,
                _ => (c.bytes_from_client, c.bytes_to_client),
            };
            ConnectionView {
                id: c.id.to_string(),
                source_address: c.source.ip().to_canonical().to_string(),
                source_port: c.source.port(),
                started_at: millis(c.started_at),
                ended_at: c.ended_at.map(millis),
                bytes_from_client: from_client,
                bytes_to_client: to_client,
                end_reason: c.end_reason,
            }
        })
        .collect())
}

/// The connections through a transient access grant's entry port, newest first (at
/// most 500), live ones included with `ended_at` null.
#[utoipa::path(
    get,
    path = "/api/routers/{router_id}/transient-access/{id}/connections",
    tag = "transient-access",
    params(("router_id" = String, Path, description = "Router id"), ("id" = String, Path, description = "Grant id")),
    responses(
        (status = 200, description = "The grant's connections", body = [ConnectionView]),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn access_connections_get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((router_id, id)): ApiPath<(String, String)>,
) -> Result<Json<Vec<ConnectionView>>, ApiError> {
    let router = load_router(&state, &caller, &router_id).await?;
    let id: AccessId = parse_id(&id, "transient access")?;
    let grant = state
        .store
        .get_access(caller.org_id, router.id, id)
        .await
        .map_err(|e| not_found_as(e, "transient access"))?;
    let key = orchestrator::GrantKey::Access(grant.id);
    Ok(Json(list(&state, &caller, &router, key).await?))
}

/// The connections through a transient forward's entry port, newest first (at most
/// 500), live ones included with `ended_at` null.
#[utoipa::path(
    get,
    path = "/api/routers/{router_id}/transient-forwarding/{id}/connections",
    tag = "transient-forwarding",
    params(("router_id" = String, Path, description = "Router id"), ("id" = String, Path, description = "Forward id")),
    responses(
        (status = 200, description = "The forward's connections", body = [ConnectionView]),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn forward_connections_get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((router_id, id)): ApiPath<(String, String)>,
) -> Result<Json<Vec<ConnectionView>>, ApiError> {
    let router = load_router(&state, &caller, &router_id).await?;
    let id: ForwardId = parse_id(&id, "transient forward")?;
    let grant = state
        .store
        .get_forward(caller.org_id, router.id, id)
        .await
        .map_err(|e| not_found_as(e, "transient forward"))?;
    let key = orchestrator::GrantKey::Forward(grant.id);
    Ok(Json(list(&state, &caller, &router, key).await?))
}
