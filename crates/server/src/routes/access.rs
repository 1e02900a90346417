//! `/api/routers/{router_id}/transient-access`: temporary WinBox/SSH logins on a router, in
//! the forwards' style, plus `/credentials` (every read audited).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::{AccessId, AccessLevel, AccessType, RouterId};
use serde_json::json;

use super::common::{
    Checks, audit, ended_window, expiry_moved, grant_list, is_expired, json_body, load_router,
    new_job, not_found_as, port_candidates, requested_expiry, resolve_allow_from, resolve_expiry,
};
use crate::auth::{Caller, ListCaller, random_alnum};
use crate::dto::{
    AccessLevelDto, AccessView, CreateAccess, CreateQuery, CredentialsView, GrantListQuery,
    UpdateExpiry, timestamp,
};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, parse_id};
use crate::render::{self, Prerendered};
use crate::state::AppState;

/// Length of generated passwords: 24 letters and digits, about 143 bits.
const PASSWORD_LEN: usize = 24;

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

/// The access level a create asks for, from `access` and/or `full_access`.
fn access_level(req: &CreateAccess, checks: &mut Checks) -> AccessLevel {
    let from_flag = req.full_access.map(|full| {
        if full {
            AccessLevelDto::Full
        } else {
            AccessLevelDto::Read
        }
    });
    match (req.access, from_flag) {
        (Some(a), Some(f)) if a != f => {
            checks.push(
                "full_access",
                "contradicts access: give one of them, or make them agree",
            );
            a.into()
        }
        (Some(a), _) => a.into(),
        (None, Some(f)) => f.into(),
        (None, None) => AccessLevel::Full,
    }
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
    caller: Caller,
    ApiPath(router_id): ApiPath<String>,
    ApiQuery(query): ApiQuery<CreateQuery>,
    ApiJson(req): ApiJson<CreateAccess>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_write()?;
    let router = load_router(&state, &caller, &router_id).await?;
    let grant = create(&state, &caller, &router, req, query.wait.unwrap_or(false)).await?;
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

/// Creates transient access on `router` for `caller` (validated, recorded with its audit
/// entry and `access.create` job, the orchestrator woken); with `wait`, polls until the
/// grant is `active` or `failed` (at most `create_wait`). The API's POST and the portal
/// (its Terminal button) share it.
pub(crate) async fn create(
    state: &AppState,
    caller: &Caller,
    router: &store::Router,
    req: CreateAccess,
    wait: bool,
) -> Result<store::TransientAccess, ApiError> {
    let now = state.now();
    let mut checks = Checks::default();
    let access = access_level(&req, &mut checks);
    let access_type: AccessType = req
        .access_type
        .map(Into::into)
        .unwrap_or(AccessType::Winbox);
    let expires_at = resolve_expiry(
        state,
        &mut checks,
        now,
        req.expire_after_minutes,
        req.expires_at.as_deref(),
    );
    let allow_from = resolve_allow_from(
        state,
        &mut checks,
        req.allow_from.as_deref(),
        caller.address,
    );
    checks.finish()?;
    let (Some(expires_at), Some(allow_from)) = (expires_at, allow_from) else {
        return Err(ApiError::Internal(
            "validation passed without values".into(),
        ));
    };
    let allow_rfc1918 = req.allow_rfc1918.unwrap_or(false);
    let region = state.store.get_region(router.region_id).await?;
    let username = format!("postern-{}", random_alnum(8, true));
    let grant = state
        .store
        .create_access(store::NewAccess {
            org_id: caller.org_id,
            router_id: router.id,
            access_type,
            access,
            allow_rfc1918,
            allow_from,
            username: username.clone(),
            password: random_alnum(PASSWORD_LEN, false),
            expires_at,
            created_by: caller.actor.clone(),
            region_id: region.id,
            entry_point: region.entry_point.clone(),
            port_candidates: port_candidates(region.port_min, region.port_max),
            audit: audit(
                caller,
                now,
                "access.create",
                Some(format!("router:{}", router.id)),
                json!({
                    "type": access_type.as_str(),
                    "access": access.as_str(),
                    "username": username,
                    "allow_from": allow_from.to_string(),
                    "allow_rfc1918": allow_rfc1918,
                    "expires_at": timestamp(expires_at),
                }),
            ),
            job: Some(new_job(caller, router.id, "access.create", now)),
        })
        .await?;
    state.lists.invalidate(router.id);
    super::common::grant_created(state).await;
    let grant = if wait {
        let (store, org, id) = (state.store.clone(), caller.org_id, grant.id);
        let initial = grant.clone();
        super::common::wait_until_settled(
            state,
            || {
                let store = store.clone();
                async move {
                    let g = store.get_access(org, router.id, id).await.ok()?;
                    let status = g.status;
                    Some((g, status))
                }
            },
            initial,
        )
        .await
    } else {
        grant
    };
    Ok(grant)
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
        (status = 200, description = "Username, password, entry point, port and link", body = CredentialsView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not read credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The grant has ended", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn access_credentials_get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((router_id, id)): ApiPath<(String, String)>,
) -> Result<Json<CredentialsView>, ApiError> {
    caller.require_write()?;
    let (_, grant) = load(&state, &caller, &router_id, &id).await?;
    if !grant.status.is_live() {
        return Err(ApiError::Conflict(format!(
            "the grant is {}: its credentials no longer work",
            grant.status.as_str()
        )));
    }
    let password = state.store.access_password(grant.id).await?;
    state
        .store
        .append_audit(audit(
            &caller,
            state.now(),
            "access.credentials.read",
            Some(format!("access:{}", grant.id)),
            json!({ "username": grant.username }),
        ))
        .await?;
    let (winbox_url, ssh_command) = match grant.access_type {
        AccessType::Winbox => (
            Some(format!(
                "winbox://{}@{}:{}",
                grant.username,
                host_for_url(&grant.entry_point),
                grant.port
            )),
            None,
        ),
        AccessType::Ssh => (
            None,
            Some(format!(
                "ssh -p {} {}@{}",
                grant.port, grant.username, grant.entry_point
            )),
        ),
    };
    Ok(Json(CredentialsView {
        username: grant.username.clone(),
        password: password.expose().to_owned(),
        entry_point: grant.entry_point.clone(),
        port: grant.port,
        winbox_url,
        ssh_command,
    }))
}

/// An IPv6 literal needs brackets in a URL's authority.
fn host_for_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
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
    if !grant.status.is_live() {
        return Ok(StatusCode::NO_CONTENT);
    }
    let now = state.now();
    super::common::revoke(
        &state,
        &caller,
        super::common::Grant::Access(grant.id),
        router.id,
        now,
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
