//! `/api/routers/{router_id}/transient-forwarding`: temporary port forwards to LAN devices,
//! shaped exactly as the reference's.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::{ForwardId, RouterId};

use super::common::{
    ended_window, expiry_moved, grant_list, is_expired, json_body, load_router, not_found_as,
    requested_expiry,
};
use crate::auth::{Caller, ListCaller};
use crate::dto::{
    CreateForward, CreateQuery, ForwardView, GrantListQuery, UpdateExpiry, timestamp,
};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, parse_id};
use crate::render::{self, Prerendered};
use crate::state::AppState;

pub fn view(f: &store::TransientForward, now: DateTime<Utc>) -> ForwardView {
    ForwardView {
        id: f.id.to_string(),
        port: f.port,
        revoked_early: f.revoked_early,
        allow_only_cidr: f.allow_from.to_string(),
        authorized_at: f.authorized_at.map(timestamp),
        expires_at: timestamp(f.expires_at),
        expired: is_expired(f.status, f.expires_at, now),
        entry_point: f.entry_point.clone(),
        dst_address: f.dst_address.to_string(),
        dst_port: f.dst_port,
        time_to_expire: domain::rules::time_to_expire(now, f.expires_at),
        masquerade: f.masquerade,
        status: f.status.as_str().to_owned(),
    }
}

async fn load(
    state: &AppState,
    caller: &Caller,
    router_id: &str,
    id: &str,
) -> Result<(store::Router, store::TransientForward), ApiError> {
    let router = load_router(state, caller, router_id).await?;
    let id: ForwardId = parse_id(id, "transient forward")?;
    let forward = state
        .store
        .get_forward(caller.org_id, router.id, id)
        .await
        .map_err(|e| not_found_as(e, "transient forward"))?;
    Ok((router, forward))
}

/// Lists the router's live port forwards (`?all=true`: ended ones too), newest first.
#[utoipa::path(
    get,
    path = "/api/routers/{router_id}/transient-forwarding",
    tag = "transient-forwarding",
    params(("router_id" = String, Path, description = "Router id"), GrantListQuery),
    responses(
        (status = 200, description = "The router's port forwards", body = [ForwardView]),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such router in your organisation", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad query", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn forwards_list(
    State(state): State<AppState>,
    caller: ListCaller,
    ApiPath(router_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<GrantListQuery>,
) -> Result<Response, ApiError> {
    let router_id: RouterId = parse_id(&router_id, "router")?;
    let ended = ended_window(&query)?;
    let now = state.now();
    let store = state.store.clone();
    let records = grant_list(
        &state,
        caller,
        router_id,
        ended,
        &state.lists.forwards,
        |org| async move {
            let grants = store
                .list_forwards(org, router_id, ended)
                .await
                .map_err(|e| not_found_as(e, "router"))?;
            grants
                .iter()
                .map(|g| Prerendered::new(&view(g, now), g.status, g.expires_at))
                .collect()
        },
    )
    .await?;
    // `expired` and `time_to_expire` are as of this request.
    Ok(json_body(render::list(&records, now)))
}

/// Creates a port forward: recorded as `requested` with its `forward.create` job.
#[utoipa::path(
    post,
    path = "/api/routers/{router_id}/transient-forwarding",
    tag = "transient-forwarding",
    params(("router_id" = String, Path, description = "Router id"), CreateQuery),
    request_body = CreateForward,
    responses(
        (status = 201, description = "Created; the router is configured within seconds", body = ForwardView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not create", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such router in your organisation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No free port in the region", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn forwards_post(
    State(state): State<AppState>,
    caller: ListCaller,
    ApiPath(router_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<CreateQuery>,
    ApiJson(req): ApiJson<CreateForward>,
) -> Result<impl IntoResponse, ApiError> {
    let id: RouterId = parse_id(&router_id, "router")?;
    // One read: the router, its region, and whether the caller's cached token still
    // exists (as a list confirms it).
    let (found, token_exists) = state
        .store
        .get_router_with_region(caller.org_id(), id, caller.token_to_confirm())
        .await?;
    let caller = caller.confirm(token_exists, &state)?;
    caller.require_write()?;
    let (router, region) =
        found.ok_or_else(|| not_found_as(store::StoreError::NotFound, "router"))?;
    let forward =
        super::grants::create_forward_in(&state, &caller, &router, Some(region), &req).await?;
    let forward = if query.wait.unwrap_or(false) {
        let (store, org, id) = (state.store.clone(), caller.org_id, forward.id);
        let initial = forward.clone();
        super::common::wait_until_settled(
            &state,
            || {
                let store = store.clone();
                async move {
                    let f = store.get_forward(org, router.id, id).await.ok()?;
                    let status = f.status;
                    Some((f, status))
                }
            },
            initial,
        )
        .await
    } else {
        forward
    };
    let now = state.now();
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!(
        "/api/routers/{}/transient-forwarding/{}",
        router.id, forward.id
    )) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(view(&forward, now))))
}

/// One port forward.
#[utoipa::path(
    get,
    path = "/api/routers/{router_id}/transient-forwarding/{id}",
    tag = "transient-forwarding",
    params(("router_id" = String, Path, description = "Router id"), ("id" = String, Path, description = "Forward id")),
    responses(
        (status = 200, description = "The port forward", body = ForwardView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn forward_get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((router_id, id)): ApiPath<(String, String)>,
) -> Result<Json<ForwardView>, ApiError> {
    let (_, forward) = load(&state, &caller, &router_id, &id).await?;
    Ok(Json(view(&forward, state.now())))
}

/// Extends or shortens a live port forward.
#[utoipa::path(
    patch,
    path = "/api/routers/{router_id}/transient-forwarding/{id}",
    tag = "transient-forwarding",
    params(("router_id" = String, Path, description = "Router id"), ("id" = String, Path, description = "Forward id")),
    request_body = UpdateExpiry,
    responses(
        (status = 200, description = "The port forward with its new end", body = ForwardView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not change", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The forward has ended", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn forward_patch(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((router_id, id)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<UpdateExpiry>,
) -> Result<Json<ForwardView>, ApiError> {
    caller.require_write()?;
    let (router, forward) = load(&state, &caller, &router_id, &id).await?;
    let now = state.now();
    let at = requested_expiry(&state, &req, now)?;
    if !forward.status.is_live() {
        return Err(ApiError::Conflict(format!(
            "the forward is {} and can no longer change",
            forward.status.as_str()
        )));
    }
    let updated = state
        .store
        .set_forward_expiry(caller.org_id, router.id, forward.id, at)
        .await?;
    expiry_moved(
        &state,
        &caller,
        super::common::Grant::Forward(forward.id),
        router.id,
        at,
        now,
    )
    .await?;
    Ok(Json(view(&updated, now)))
}

/// Revokes a port forward (204). Deleting one that already ended is also 204 and changes
/// nothing: the caller's wish, that it be gone, holds.
#[utoipa::path(
    delete,
    path = "/api/routers/{router_id}/transient-forwarding/{id}",
    tag = "transient-forwarding",
    params(("router_id" = String, Path, description = "Router id"), ("id" = String, Path, description = "Forward id")),
    responses(
        (status = 204, description = "Revoked (or had already ended)"),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not revoke", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn forward_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((router_id, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_write()?;
    let (router, forward) = load(&state, &caller, &router_id, &id).await?;
    super::grants::revoke_grant(
        &state,
        &caller,
        super::grants::Grant::Forward(forward.id),
        forward.status,
        router.id,
        state.now(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
