//! `/api/routers/{router_id}/transient-access`: temporary WinBox/SSH logins on a router, in
//! the forwards' style, plus `/credentials` (every read audited).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::{AccessId, RouterId};

use super::common::{
    ended_window, expiry_moved, grant_list, is_expired, json_body, load_router, not_found_as,
    requested_expiry,
};
use crate::auth::{Caller, ListCaller};
use crate::dto::{
    AccessView, CreateAccess, CreateQuery, CredentialsView, GrantListQuery, UpdateExpiry, timestamp,
};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, parse_id};
use crate::render::{self, Prerendered};
use crate::state::AppState;

pub fn view(a: &store::TransientAccess, now: DateTime<Utc>) -> AccessView {
    AccessView {
        id: a.id.to_string(),
        access_type: a.access_type.into(),
        access: a.access.into(),
        status: a.status.as_str().to_owned(),
        username: a.username.clone(),
        port: a.port,
        revoked_early: a.revoked_early,
        allow_only_cidr: a.allow_from.to_string(),
        allow_rfc1918: a.allow_rfc1918,
        authorized_at: a.authorized_at.map(timestamp),
        expires_at: timestamp(a.expires_at),
        expired: is_expired(a.status, a.expires_at, now),
        entry_point: a.entry_point.clone(),
        time_to_expire: domain::rules::time_to_expire(now, a.expires_at),
    }
}

async fn load(
    state: &AppState,
    caller: &Caller,
    router_id: &str,
    id: &str,
) -> Result<(store::Router, store::TransientAccess), ApiError> {
    let router = load_router(state, caller, router_id).await?;
    let id: AccessId = parse_id(id, "transient access")?;
    let access = state
        .store
        .get_access(caller.org_id, router.id, id)
        .await
        .map_err(|e| not_found_as(e, "transient access"))?;
    Ok((router, access))
}

/// Lists the router's live transient access grants (`?all=true`: ended ones too).
#[utoipa::path(
    get,
    path = "/api/routers/{router_id}/transient-access",
    tag = "transient-access",
    params(("router_id" = String, Path, description = "Router id"), GrantListQuery),
    responses(
        (status = 200, description = "The router's transient access grants", body = [AccessView]),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such router in your organisation", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad query", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn access_list(
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
        &state.lists.access,
        |org| async move {
            let grants = store
                .list_access(org, router_id, ended)
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

/// Creates transient access: a generated user and password, recorded as `requested` with
/// its `access.create` job.
#[utoipa::path(
    post,
    path = "/api/routers/{router_id}/transient-access",
    tag = "transient-access",
    params(("router_id" = String, Path, description = "Router id"), CreateQuery),
    request_body = CreateAccess,
    responses(
        (status = 201, description = "Created; fetch the login from /credentials", body = AccessView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not create", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such router in your organisation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No free port in the region", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn access_post(
    State(state): State<AppState>,
    caller: ListCaller,
    ApiPath(router_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<CreateQuery>,
    ApiJson(req): ApiJson<CreateAccess>,
) -> Result<impl IntoResponse, ApiError> {
    let id: domain::RouterId = crate::extract::parse_id(&router_id, "router")?;
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
    let grant = super::grants::create_access_in(&state, &caller, &router, region, &req).await?;
    let grant = if query.wait.unwrap_or(false) {
        settled(&state, caller.org_id, grant).await
    } else {
        grant
    };
    let now = state.now();
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!(
        "/api/routers/{}/transient-access/{}",
        router.id, grant.id
    )) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(view(&grant, now))))
}

/// For `?wait=true` (and the portal's Terminal button): the grant once it is `active` or
/// `failed`, or as it is when the configured wait runs out.
pub(crate) async fn settled(
    state: &AppState,
    org: domain::OrgId,
    grant: store::TransientAccess,
) -> store::TransientAccess {
    let (store, router_id, id) = (state.store.clone(), grant.router_id, grant.id);
    super::common::wait_until_settled(
        state,
        || {
            let store = store.clone();
            async move {
                let g = store.get_access(org, router_id, id).await.ok()?;
                let status = g.status;
                Some((g, status))
            }
        },
        grant,
    )
    .await
}

/// One transient access grant.
#[utoipa::path(
    get,
    path = "/api/routers/{router_id}/transient-access/{id}",
    tag = "transient-access",
    params(("router_id" = String, Path, description = "Router id"), ("id" = String, Path, description = "Grant id")),
    responses(
        (status = 200, description = "The grant", body = AccessView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn access_get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((router_id, id)): ApiPath<(String, String)>,
) -> Result<Json<AccessView>, ApiError> {
    let (_, grant) = load(&state, &caller, &router_id, &id).await?;
    Ok(Json(view(&grant, state.now())))
}

/// The login of a transient access grant. Viewers may not read it; every read is audited.
#[utoipa::path(
    get,
    path = "/api/routers/{router_id}/transient-access/{id}/credentials",
    tag = "transient-access",
    params(("router_id" = String, Path, description = "Router id"), ("id" = String, Path, description = "Grant id")),
    responses(
        (status = 200, description = "Username, password, entry point, port and link (a WinBox grant's `winbox_url` holds a fresh one-time ticket, audited as `access.winbox_ticket.issue`)", body = CredentialsView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not read credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The grant has ended", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn access_credentials_get(
    State(state): State<AppState>,
    caller: Caller,
    origin: super::winbox::RequestOrigin,
    ApiPath((router_id, id)): ApiPath<(String, String)>,
) -> Result<Json<CredentialsView>, ApiError> {
    caller.require_write()?;
    let (_, grant) = load(&state, &caller, &router_id, &id).await?;
    Ok(Json(
        super::grants::credentials(&state, &caller, &grant, &origin).await?,
    ))
}

/// Extends or shortens a live grant.
#[utoipa::path(
    patch,
    path = "/api/routers/{router_id}/transient-access/{id}",
    tag = "transient-access",
    params(("router_id" = String, Path, description = "Router id"), ("id" = String, Path, description = "Grant id")),
    request_body = UpdateExpiry,
    responses(
        (status = 200, description = "The grant with its new end", body = AccessView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not change", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The grant has ended", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn access_patch(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((router_id, id)): ApiPath<(String, String)>,
    ApiJson(req): ApiJson<UpdateExpiry>,
) -> Result<Json<AccessView>, ApiError> {
    caller.require_write()?;
    let (router, grant) = load(&state, &caller, &router_id, &id).await?;
    let now = state.now();
    let at = requested_expiry(&state, &req, now)?;
    if !grant.status.is_live() {
        return Err(ApiError::Conflict(format!(
            "the grant is {} and can no longer change",
            grant.status.as_str()
        )));
    }
    let updated = state
        .store
        .set_access_expiry(caller.org_id, router.id, grant.id, at)
        .await?;
    expiry_moved(
        &state,
        &caller,
        super::common::Grant::Access(grant.id),
        router.id,
        at,
        now,
    )
    .await?;
    Ok(Json(view(&updated, now)))
}

/// Revokes a grant (204); deleting one that already ended is also 204 and changes nothing.
#[utoipa::path(
    delete,
    path = "/api/routers/{router_id}/transient-access/{id}",
    tag = "transient-access",
    params(("router_id" = String, Path, description = "Router id"), ("id" = String, Path, description = "Grant id")),
    responses(
        (status = 204, description = "Revoked (or had already ended)"),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not revoke", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn access_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((router_id, id)): ApiPath<(String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_write()?;
    let (router, grant) = load(&state, &caller, &router_id, &id).await?;
    super::grants::revoke_grant(
        &state,
        &caller,
        super::grants::Grant::Access(grant.id),
        grant.status,
        router.id,
        state.now(),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
