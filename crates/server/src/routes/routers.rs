//! `/api/routers`, `/api/sites` and `/api/routers/{id}/jobs`: the routers an organisation
//! manages, the sites they belong to, and each router's orchestration log.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use domain::SiteId;
use serde_json::json;

use super::common::{Checks, audit, load_router, not_found_as};
use crate::auth::Caller;
use crate::dto::{
    CreateRouter, GatewayModeDto, GatewayStateDto, JobLineView, JobView, MeView, PageQuery,
    RegionGatewayView, RegionView, RouterView, SiteView, TunnelView, UpdateRouter, timestamp,
};
use crate::error::{ApiError, Problem};
use crate::extract::{ApiJson, ApiPath, ApiQuery, parse_id};
use crate::state::AppState;

/// A router as shown, with its region's name and entry point, and for a tunnelled
/// router its tunnel as the gateway in this process sees it now (`tunnels`): `status`
/// is `pending` until it enrols, then online or offline from its last authenticated
/// datagram (within about three keepalives); `gateway_unreachable` (enrolled or direct)
/// while its region's remote gateway cannot be reached.
pub fn view(
    r: &store::Router,
    regions: &[store::Region],
    tunnels: Option<&crate::tunnels::Tunnels>,
) -> RouterView {
    let region = regions.iter().find(|g| g.id == r.region_id);
    let (tunnel, status) = tunnel_view(r, tunnels);
    RouterView {
        id: r.id.to_string(),
        site_id: r.site_id.to_string(),
        name: r.name.clone(),
        region: region.map(|g| g.name.clone()).unwrap_or_default(),
        entry_point: region.map(|g| g.entry_point.clone()).unwrap_or_default(),
        tunnel_address: r.tunnel_address.to_string(),
        api_port: r.api_port,
        ssh_port: r.ssh_port,
        winbox_port: r.winbox_port,
        api_tls: r.api_tls,
        api_tls_fingerprint: r.api_tls_fingerprint.clone(),
        username: r.username.clone(),
        status,
        tunnel,
        identity: r.identity.clone(),
        routeros_version: r.routeros_version.clone(),
        board_name: r.board_name.clone(),
        uptime: r.uptime.clone(),
        last_seen_at: r.last_seen_at.map(timestamp),
        created_at: timestamp(r.created_at),
        updated_at: timestamp(r.updated_at),
    }
}

/// The `status` of a router whose region's remote gateway this server cannot reach now.
pub const GATEWAY_UNREACHABLE: &str = "gateway_unreachable";

/// A router's `status` as the API and the portal show it: see [`view`].
pub fn router_status(r: &store::Router, tunnels: Option<&crate::tunnels::Tunnels>) -> &'static str {
    use crate::tunnels::TunnelGateway as _;
    let live = match r.reach {
        store::Reach::Tunnel => tunnels.and_then(|t| t.tunnel_status(r.id)),
        store::Reach::Direct => None,
    };
    status_of(r, tunnels, live.as_ref())
}

fn status_of(
    r: &store::Router,
    tunnels: Option<&crate::tunnels::Tunnels>,
    live: Option<&crate::tunnels::TunnelStatus>,
) -> &'static str {
    let unreachable = tunnels.is_some_and(|t| t.gateway_unreachable(r.region_id));
    match r.reach {
        // Reached through the region's gateway too when a remote one serves it.
        store::Reach::Direct if unreachable => GATEWAY_UNREACHABLE,
        store::Reach::Direct => r.status.as_str(),
        store::Reach::Tunnel if r.tunnel_public_key.is_none() => "pending",
        store::Reach::Tunnel if unreachable => GATEWAY_UNREACHABLE,
        store::Reach::Tunnel if live.is_some_and(|l| l.online(std::time::SystemTime::now())) => {
            "online"
        }
        store::Reach::Tunnel => "offline",
    }
}

/// A router's `tunnel` and `status`.
fn tunnel_view(
    r: &store::Router,
    tunnels: Option<&crate::tunnels::Tunnels>,
) -> (Option<TunnelView>, String) {
    use crate::tunnels::TunnelGateway as _;
    if r.reach == store::Reach::Direct {
        return (None, status_of(r, tunnels, None).to_owned());
    }
    let live = tunnels.and_then(|t| t.tunnel_status(r.id));
    let gateway_address = tunnels
        .and_then(|t| t.gateway_address(r.region_id))
        .map(|a| a.to_string());
    let status = status_of(r, tunnels, live.as_ref());
    let at = |t: Option<std::time::SystemTime>| {
        t.map(|t| timestamp(chrono::DateTime::<chrono::Utc>::from(t)))
    };
    let view = TunnelView {
        kind: "wireguard".to_owned(),
        address: r.tunnel_address.to_string(),
        gateway_address,
        endpoint: live
            .as_ref()
            .and_then(|l| l.endpoint)
            .map(|e| e.to_string()),
        last_handshake_at: at(live.as_ref().and_then(|l| l.last_handshake_at)),
        rx_bytes: live.as_ref().map_or(0, |l| l.rx_bytes),
        tx_bytes: live.as_ref().map_or(0, |l| l.tx_bytes),
    };
    (Some(view), status.to_owned())
}

/// The region named `name`, or the first configured one when none is named.
async fn region_for(
    state: &AppState,
    checks: &mut Checks,
    name: Option<&str>,
) -> Result<Option<store::Region>, ApiError> {
    let wanted = match name {
        Some(n) => n.to_owned(),
        None => state
            .config
            .regions
            .first()
            .map(|r| r.name.clone())
            .unwrap_or_default(),
    };
    let found = state.store.find_region_by_name(&wanted).await?;
    if found.is_none() {
        checks.push("region", format!("no region named {wanted:?}"));
    }
    Ok(found)
}

fn check_password(checks: &mut Checks, password: &str) {
    let count = password.chars().count();
    if count == 0 || count > 256 || password.chars().any(char::is_control) {
        checks.push(
            "password",
            "must be 1 to 256 characters without control characters",
        );
    }
}

/// Lists the organisation's routers.
#[utoipa::path(
    get,
    path = "/api/routers",
    tag = "routers",
    responses(
        (status = 200, description = "Routers", body = [RouterView]),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn routers_list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<RouterView>>, ApiError> {
    let routers = state.store.list_routers(caller.org_id).await?;
    let regions = state.store.list_regions().await?;
    let tunnels = state.gateway.as_ref().map(|g| g.tunnels());
    Ok(Json(
        routers.iter().map(|r| view(r, &regions, tunnels)).collect(),
    ))
}

/// Adds a router (and its site, named after it unless `site` is given).
#[utoipa::path(
    post,
    path = "/api/routers",
    tag = "routers",
    request_body = CreateRouter,
    responses(
        (status = 201, description = "Created", body = RouterView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Only admins may register a router", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A router of that name exists", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn routers_post(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateRouter>,
) -> Result<impl IntoResponse, ApiError> {
    // Registering a directly reached router points the server at an address of the
    // caller's choosing, with a login: an admin's act.
    caller.require_admin()?;
    let mut checks = Checks::default();
    let name = checks.take(domain::rules::router_name(&req.name));
    let tunnel_address = checks.take(domain::rules::router_address(
        &req.tunnel_address,
        &state.policy(),
    ));
    let username = checks.take(domain::rules::routeros_username(&req.username));
    check_password(&mut checks, &req.password);
    let fingerprint = match &req.api_tls_fingerprint {
        Some(f) => checks.take(domain::rules::tls_fingerprint(f)).map(Some),
        None => Some(None),
    };
    let api_tls = req.api_tls.unwrap_or(req.api_tls_fingerprint.is_some());
    if !api_tls && req.api_tls_fingerprint.is_some() {
        checks.push("api_tls", "a pinned certificate needs api_tls");
    }
    let api_port = checks.take(domain::rules::port(
        "api_port",
        req.api_port.unwrap_or(if api_tls { 8729 } else { 8728 }),
    ));
    let ssh_port = checks.take(domain::rules::port("ssh_port", req.ssh_port.unwrap_or(22)));
    let winbox_port = checks.take(domain::rules::port(
        "winbox_port",
        req.winbox_port.unwrap_or(8291),
    ));
    let site = match &req.site {
        Some(s) => checks.take(domain::rules::site_name(s)).map(Some),
        None => Some(None),
    };
    let region = region_for(&state, &mut checks, req.region.as_deref()).await?;
    checks.finish()?;
    let (
        Some(name),
        Some(tunnel_address),
        Some(username),
        Some(api_port),
        Some(ssh_port),
        Some(winbox_port),
        Some(site_name),
        Some(region),
        Some(api_tls_fingerprint),
    ) = (
        name,
        tunnel_address,
        username,
        api_port,
        ssh_port,
        winbox_port,
        site,
        region,
        fingerprint,
    )
    else {
        return Err(ApiError::Internal(
            "validation passed without values".into(),
        ));
    };
    let now = state.now();
    let router = state
        .store
        .create_router(store::NewRouter {
            org_id: caller.org_id,
            site_name,
            region_id: region.id,
            name: name.clone(),
            tunnel_address,
            api_port,
            ssh_port,
            winbox_port,
            api_tls,
            api_tls_fingerprint,
            username,
            password: req.password,
        })
        .await?;
    state
        .store
        .append_audit(audit(
            &caller,
            now,
            "router.create",
            Some(format!("router:{}", router.id)),
            json!({ "name": name, "tunnel_address": tunnel_address.to_string() }),
        ))
        .await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/routers/{}", router.id)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((
        StatusCode::CREATED,
        headers,
        Json(view(
            &router,
            std::slice::from_ref(&region),
            state.gateway.as_ref().map(|g| g.tunnels()),
        )),
    ))
}

/// One router.
#[utoipa::path(
    get,
    path = "/api/routers/{router_id}",
    tag = "routers",
    params(("router_id" = String, Path, description = "Router id")),
    responses(
        (status = 200, description = "The router", body = RouterView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn router_get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(router_id): ApiPath<String>,
) -> Result<Json<RouterView>, ApiError> {
    let router = load_router(&state, &caller, &router_id).await?;
    let region = state.store.get_region(router.region_id).await?;
    Ok(Json(view(
        &router,
        std::slice::from_ref(&region),
        state.gateway.as_ref().map(|g| g.tunnels()),
    )))
}

/// Changes a router: any subset of its fields.
#[utoipa::path(
    patch,
    path = "/api/routers/{router_id}",
    tag = "routers",
    params(("router_id" = String, Path, description = "Router id")),
    request_body = UpdateRouter,
    responses(
        (status = 200, description = "The router as changed", body = RouterView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not change a router; only admins may change where it is reached (tunnel_address and ports)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Conflict", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid field, or `password` missing while `tunnel_address` or `api_port` changes", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn router_patch(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(router_id): ApiPath<String>,
    ApiJson(req): ApiJson<UpdateRouter>,
) -> Result<Json<RouterView>, ApiError> {
    caller.require_write()?;
    let router = load_router(&state, &caller, &router_id).await?;
    // Where the router is reached (its address and ports) is an admin's to change, and
    // where the management login goes (address, API port) only with that password typed
    // again: the stored one is never sent to a new place on an operator's word.
    let moves = req.tunnel_address.is_some()
        || req.api_port.is_some()
        || req.ssh_port.is_some()
        || req.winbox_port.is_some()
        || req.api_tls.is_some()
        || req.api_tls_fingerprint.is_some();
    if moves {
        caller.require_admin()?;
    }
    let mut checks = Checks::default();
    let mut patch = store::RouterPatch::default();
    if let Some(n) = &req.name {
        patch.name = checks.take(domain::rules::router_name(n));
    }
    if router.reach == store::Reach::Tunnel {
        // Its address and region are its place in a region's tunnel, given at creation.
        if req.tunnel_address.is_some() {
            checks.push(
                "tunnel_address",
                "a tunnelled router's address is allocated in its region's tunnel prefix and cannot be changed",
            );
        }
        if req.region.is_some() {
            checks.push(
                "region",
                "a tunnelled router stays in the region whose tunnel it enrolled with",
            );
        }
    } else if let Some(t) = &req.tunnel_address {
        patch.tunnel_address = checks.take(domain::rules::router_address(t, &state.policy()));
    }
    if let Some(u) = &req.username {
        patch.username = checks.take(domain::rules::routeros_username(u));
    }
    if let Some(p) = &req.password {
        check_password(&mut checks, p);
        patch.password = Some(p.clone());
    }
    if let Some(p) = req.api_port {
        patch.api_port = checks.take(domain::rules::port("api_port", p));
    }
    if let Some(p) = req.ssh_port {
        patch.ssh_port = checks.take(domain::rules::port("ssh_port", p));
    }
    if let Some(p) = req.winbox_port {
        patch.winbox_port = checks.take(domain::rules::port("winbox_port", p));
    }
    if let Some(r) = &req.region {
        patch.region_id = region_for(&state, &mut checks, Some(r))
            .await?
            .map(|g| g.id);
    }
    match (req.api_tls, &req.api_tls_fingerprint) {
        (Some(false), Some(_)) => checks.push("api_tls", "a pinned certificate needs api_tls"),
        (Some(false), None) => {
            patch.api_tls = Some(false);
            patch.api_tls_fingerprint = Some(None);
        }
        (tls, Some(f)) => {
            patch.api_tls = tls.or(Some(true));
            patch.api_tls_fingerprint = checks.take(domain::rules::tls_fingerprint(f)).map(Some);
        }
        (Some(true), None) => patch.api_tls = Some(true),
        (None, None) => {}
    }
    let login_moves = patch
        .tunnel_address
        .is_some_and(|a| a != router.tunnel_address)
        || patch.api_port.is_some_and(|p| p != router.api_port)
        || patch.api_tls.is_some_and(|t| t != router.api_tls)
        || patch
            .api_tls_fingerprint
            .as_ref()
            .is_some_and(|f| *f != router.api_tls_fingerprint);
    if login_moves && req.password.is_none() {
        checks.push(
            "password",
            "the management password must be given again when tunnel_address, api_port or API-SSL changes",
        );
    }
    checks.finish()?;
    let now = state.now();
    let updated = state
        .store
        .update_router(caller.org_id, router.id, patch)
        .await
        .map_err(|e| not_found_as(e, "router"))?;
    state.lists.invalidate(router.id);
    state
        .store
        .append_audit(audit(
            &caller,
            now,
            "router.update",
            Some(format!("router:{}", router.id)),
            json!({ "changed": changes(&router, &updated, req.password.is_some()) }),
        ))
        .await?;
    let reached_elsewhere = updated.tunnel_address != router.tunnel_address
        || updated.api_port != router.api_port
        || updated.api_tls != router.api_tls
        || updated.api_tls_fingerprint != router.api_tls_fingerprint
        || updated.ssh_port != router.ssh_port
        || updated.winbox_port != router.winbox_port
        || updated.username != router.username
        || req.password.is_some();
    if reached_elsewhere {
        // The open management connection goes (it was made to the old place or with
        // the old login), and the live grants' entry ports forward to the new place.
        if let Some(orchestrator) = &state.orchestrator {
            orchestrator.router_changed(router.id);
        }
        if let Some(gateway) = &state.gateway {
            gateway.router_moved(&updated).await;
        }
    }
    let region = state.store.get_region(updated.region_id).await?;
    Ok(Json(view(
        &updated,
        std::slice::from_ref(&region),
        state.gateway.as_ref().map(|g| g.tunnels()),
    )))
}

/// What a change did, field by field with the old and the new value (the password only
/// as changed, never its value), for the audit entry.
fn changes(old: &store::Router, new: &store::Router, password: bool) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    let mut field = |name: &str, before: String, after: String| {
        if before != after {
            out.insert(name.to_owned(), json!({ "old": before, "new": after }));
        }
    };
    field("name", old.name.clone(), new.name.clone());
    field(
        "tunnel_address",
        old.tunnel_address.to_string(),
        new.tunnel_address.to_string(),
    );
    field(
        "api_port",
        old.api_port.to_string(),
        new.api_port.to_string(),
    );
    field(
        "ssh_port",
        old.ssh_port.to_string(),
        new.ssh_port.to_string(),
    );
    field(
        "winbox_port",
        old.winbox_port.to_string(),
        new.winbox_port.to_string(),
    );
    field("api_tls", old.api_tls.to_string(), new.api_tls.to_string());
    field(
        "api_tls_fingerprint",
        old.api_tls_fingerprint.clone().unwrap_or_default(),
        new.api_tls_fingerprint.clone().unwrap_or_default(),
    );
    field("username", old.username.clone(), new.username.clone());
    field(
        "region",
        old.region_id.to_string(),
        new.region_id.to_string(),
    );
    if password {
        out.insert("password".to_owned(), json!("changed"));
    }
    serde_json::Value::Object(out)
}

/// Removes a router; refused (409) while it has live grants.
#[utoipa::path(
    delete,
    path = "/api/routers/{router_id}",
    tag = "routers",
    params(("router_id" = String, Path, description = "Router id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not delete", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The router has live grants", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn router_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(router_id): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    caller.require_write()?;
    let router = load_router(&state, &caller, &router_id).await?;
    state
        .store
        .delete_router(caller.org_id, router.id)
        .await
        .map_err(|e| not_found_as(e, "router"))?;
    state.lists.invalidate(router.id);
    if router.reach == store::Reach::Tunnel
        && let Some(gateway) = &state.gateway
    {
        // Its key no longer opens the tunnel.
        crate::tunnels::TunnelGateway::remove_peer(gateway.tunnels(), router.id);
    }
    state
        .store
        .append_audit(audit(
            &caller,
            state.now(),
            "router.delete",
            Some(format!("router:{}", router.id)),
            json!({ "name": router.name }),
        ))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Validated paging: limit 1–500 (default 50), offset ≥ 0.
pub fn page(q: &PageQuery) -> Result<store::Page, ApiError> {
    let mut checks = Checks::default();
    let limit = q.limit.unwrap_or(50);
    let offset = q.offset.unwrap_or(0);
    if !(1..=500).contains(&limit) {
        checks.push("limit", "must be between 1 and 500");
    }
    if !(0..=1_000_000).contains(&offset) {
        checks.push("offset", "must be between 0 and 1000000");
    }
    checks.finish()?;
    Ok(store::Page {
        limit: u32::try_from(limit).unwrap_or(50),
        offset: u32::try_from(offset).unwrap_or(0),
    })
}

/// The router's orchestration log: its jobs with their lines, newest first.
#[utoipa::path(
    get,
    path = "/api/routers/{router_id}/jobs",
    tag = "routers",
    params(("router_id" = String, Path, description = "Router id"), PageQuery),
    responses(
        (status = 200, description = "Jobs, newest first", body = [JobView]),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad paging", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn router_jobs_get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(router_id): ApiPath<String>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Vec<JobView>>, ApiError> {
    let page = page(&q)?;
    let router = load_router(&state, &caller, &router_id).await?;
    let jobs = state
        .store
        .list_jobs(caller.org_id, router.id, page)
        .await?;
    Ok(Json(
        jobs.into_iter()
            .map(|(job, lines)| JobView {
                id: job.id.to_string(),
                kind: job.kind,
                state: job.state.as_str().to_owned(),
                attempts: i64::from(job.attempts),
                max_attempts: i64::from(job.max_attempts),
                created_at: timestamp(job.created_at),
                started_at: job.started_at.map(timestamp),
                finished_at: job.finished_at.map(timestamp),
                last_error: job.last_error,
                lines: lines
                    .into_iter()
                    .map(|l| JobLineView {
                        seq: i64::from(l.seq),
                        at: timestamp(l.at),
                        message: l.message,
                    })
                    .collect(),
            })
            .collect(),
    ))
}

fn site_view(
    site: &store::Site,
    router: Option<&store::Router>,
    regions: &[store::Region],
    tunnels: Option<&crate::tunnels::Tunnels>,
) -> SiteView {
    SiteView {
        id: site.id.to_string(),
        name: site.name.clone(),
        created_at: timestamp(site.created_at),
        router: router.map(|r| view(r, regions, tunnels)),
    }
}

/// Lists the organisation's sites with their router.
#[utoipa::path(
    get,
    path = "/api/sites",
    tag = "routers",
    responses(
        (status = 200, description = "Sites", body = [SiteView]),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn sites_list(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<SiteView>>, ApiError> {
    let sites = state.store.list_sites(caller.org_id).await?;
    let regions = state.store.list_regions().await?;
    let tunnels = state.gateway.as_ref().map(|g| g.tunnels());
    Ok(Json(
        sites
            .iter()
            .map(|(site, routers)| site_view(site, routers.first(), &regions, tunnels))
            .collect(),
    ))
}

/// One site with its router.
#[utoipa::path(
    get,
    path = "/api/sites/{site_id}",
    tag = "routers",
    params(("site_id" = String, Path, description = "Site id")),
    responses(
        (status = 200, description = "The site", body = SiteView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn site_get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(site_id): ApiPath<String>,
) -> Result<Json<SiteView>, ApiError> {
    let id: SiteId = parse_id(&site_id, "site")?;
    let (site, routers) = state
        .store
        .get_site(caller.org_id, id)
        .await
        .map_err(|e| not_found_as(e, "site"))?;
    let regions = state.store.list_regions().await?;
    let tunnels = state.gateway.as_ref().map(|g| g.tunnels());
    Ok(Json(site_view(&site, routers.first(), &regions, tunnels)))
}

/// The regions routers can be placed in, each with its gateway: this server's own
/// (`local`) or a `postern gateway` (`remote`) with its link's state and its last
/// status report's figures.
#[utoipa::path(
    get,
    path = "/api/regions",
    tag = "routers",
    responses(
        (status = 200, description = "Regions", body = [RegionView]),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn regions_list(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Vec<RegionView>>, ApiError> {
    let regions = crate::regions::regions(&state).await?;
    Ok(Json(regions.into_iter().map(region_view).collect()))
}

fn region_view(row: crate::regions::RegionRow) -> RegionView {
    use crate::regions::{GatewayState, Mode};
    let g = row.gateway;
    let at = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(timestamp);
    RegionView {
        name: row.region.name,
        entry_point: row.region.entry_point,
        port_min: row.region.port_min,
        port_max: row.region.port_max,
        gateway: RegionGatewayView {
            mode: match g.mode {
                Mode::Local => GatewayModeDto::Local,
                Mode::Remote => GatewayModeDto::Remote,
            },
            id: g.id.map(|id| id.to_string()),
            state: g.state.map(|s| match s {
                GatewayState::None => GatewayStateDto::None,
                GatewayState::Pending => GatewayStateDto::Pending,
                GatewayState::Connecting => GatewayStateDto::Connecting,
                GatewayState::Up => GatewayStateDto::Up,
                GatewayState::Down => GatewayStateDto::Down,
            }),
            since: at(g.since),
            error: g.error,
            control_address: g.control_address,
            tunnel_endpoint: g.tunnel_endpoint,
            joined_at: at(g.joined_at),
            token_expires_at: at(g.token_expires_at),
            status_at: at(g.status_at),
            routers: g.routers,
            routers_up: g.routers_up,
            live_connections: g.live_connections,
            events_pending: g.events_pending,
            events_dropped: g.events_dropped,
        },
    }
}

/// Who the caller is: organisation, role, and the address the server sees.
#[utoipa::path(
    get,
    path = "/api/me",
    tag = "routers",
    responses(
        (status = 200, description = "The caller", body = MeView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn me_get(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<MeView>, ApiError> {
    let org = state.store.get_organisation(caller.org_id).await?;
    Ok(Json(MeView {
        organisation_id: org.id.to_string(),
        organisation: org.name,
        actor: caller.actor,
        role: caller.role.into(),
        address: caller.address.to_string(),
    }))
}
