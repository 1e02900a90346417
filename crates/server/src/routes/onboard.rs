//! Onboarding in the API: `POST /api/sites` (a pending tunnelled router and its line),
//! `POST /api/sites/{id}/enrollment` (a new line; the old one stops working),
//! `GET /api/sites/{id}/removal` (the script that removes what Postern put on the
//! router); and the public routes a router uses with its token, without a session:
//! `GET /enroll/{token}` (its RouterOS 7 script) and `POST /enroll/{token}` (its key and
//! facts). Tokens never reach a log line; the management password appears only in the
//! script's response.

use std::net::IpAddr;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, State};
use axum::http::{HeaderValue, StatusCode, header, request::Parts};
use axum::response::{IntoResponse, Response};
use domain::SiteId;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::common::not_found_as;
use crate::auth::{Caller, hash_token, random_alnum};
use crate::dto::{RouterView, timestamp};
use crate::error::{ApiError, FieldError, Problem, problem_response};
use crate::extract::{ApiJson, ApiPath, parse_id};
use crate::onboarding::{self, EnrollReport};
use crate::sites::{self, Asker, Line, SiteError};
use crate::state::AppState;

/// The largest body `POST /enroll/{token}` reads.
pub const REPORT_LIMIT: usize = 4096;

/// A site to onboard.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSite {
    /// The site's name, also its router's: 1–64 characters, no control characters, no
    /// white space at either end, unique in the organisation (409).
    #[schema(
        example = "branch-7",
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\s\\x00-\\x1f\\x7f-\\x9f](?:[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f])?$"
    )]
    pub name: String,
    /// A region by name (`GET /api/regions`); the first configured one when absent.
    pub region: Option<String>,
}

/// The line to paste into the router's terminal, and its token's end.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentView {
    /// The line: on RouterOS 7 it fetches the enrolment script over HTTPS with the
    /// server's certificate checked (`check-certificate=yes-without-crl`), imports it and
    /// deletes the file; on RouterOS 6 it only prints why it stops. In lab mode the URL
    /// is plain HTTP and the line is preceded by a `#` comment line saying so. Shown
    /// once: only the token's hash is kept.
    pub command: String,
    /// The script's URL (`{public_url}/enroll/{token}`).
    pub url: String,
    /// When the token stops working (`enrollment_lifetime`, default 24 h).
    #[schema(format = DateTime)]
    pub expires_at: String,
}

impl From<Line> for EnrollmentView {
    fn from(l: Line) -> Self {
        Self {
            command: l.command,
            url: l.url,
            expires_at: timestamp(l.expires_at),
        }
    }
}

/// A site made for onboarding, with its pending router and the line to paste.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedSite {
    pub id: String,
    pub name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The pending router's id (also `router.id`).
    pub router_id: String,
    /// The router: reached through the tunnel, `pending` until it enrols.
    pub router: RouterView,
    pub enrollment: EnrollmentView,
}

/// The script that removes what Postern put on a router.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RemovalView {
    /// A RouterOS script to paste into the router's terminal: it removes the management
    /// tunnel (interface, peer, address), its firewall rule, Postern's management login
    /// and its group, each by its comment, and what grants left (users, NAT rules,
    /// scheduler entries, groups tagged `postern:`). The IP services are left as they
    /// are.
    pub command: String,
}

fn site_problem(e: SiteError) -> ApiError {
    match e {
        SiteError::Field(field, message) => ApiError::field(field, message),
        SiteError::Setup(m) => ApiError::Conflict(m),
        SiteError::Store(e) => e.into(),
    }
}

fn asker(caller: &Caller) -> Asker {
    Asker {
        org_id: caller.org_id,
        actor: caller.actor.clone(),
        address: Some(caller.address),
    }
}

/// Adds a site to onboard: a pending router reached through its region's tunnel, at
/// the next free address of the region's tunnel prefix, with Postern's management login
/// `postern`, and its first enrolment line (single use, `enrollment_lifetime`, default
/// 24 h). Writers and admins may add one: nothing is reached until someone pastes the
/// line into the router itself.
#[utoipa::path(
    post,
    path = "/api/sites",
    tag = "routers",
    request_body = CreateSite,
    responses(
        (status = 201, description = "The site, its pending router and its line", body = CreatedSite),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not add sites", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A site or router of that name exists, the region's tunnel prefix is full, or the server is not set up for onboarding (no `public_url`, no region tunnel key)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid `name` or unknown `region`", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn sites_post(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateSite>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_write()?;
    let (site, router, line) = sites::add_site(
        &state.store,
        &state.config,
        &asker(&caller),
        &req.name,
        req.region.as_deref(),
        state.now(),
    )
    .await
    .map_err(site_problem)?;
    let region = state.store.get_region(router.region_id).await?;
    let body = CreatedSite {
        id: site.id.to_string(),
        name: site.name,
        created_at: timestamp(site.created_at),
        router_id: router.id.to_string(),
        router: super::routers::view(
            &router,
            std::slice::from_ref(&region),
            state.gateway.as_ref().map(|g| g.tunnels()),
        ),
        enrollment: line.into(),
    };
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/sites/{}", site.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The site's router, of the caller's organisation.
async fn site_router(
    state: &AppState,
    caller: &Caller,
    site_id: &str,
) -> Result<store::Router, ApiError> {
    let id: SiteId = parse_id(site_id, "site")?;
    let (_, routers) = state
        .store
        .get_site(caller.org_id, id)
        .await
        .map_err(|e| not_found_as(e, "site"))?;
    routers
        .into_iter()
        .next()
        .ok_or(ApiError::NotFound("site's router"))
}

/// Issues a new enrolment line for the site's router; the line issued before stops
/// working at once. For a pending router writers may; for one that has enrolled only
/// admins (enrolling again replaces its tunnel key).
#[utoipa::path(
    post,
    path = "/api/sites/{site_id}/enrollment",
    tag = "routers",
    params(("site_id" = String, Path, description = "Site id")),
    responses(
        (status = 201, description = "The new line", body = EnrollmentView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not; writers may not for an enrolled router", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such site (or no router) in your organisation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The site's router is reached directly (no tunnel to enrol), or the server is not set up for onboarding", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn site_enrollment_post(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(site_id): ApiPath<String>,
) -> Result<impl IntoResponse, ApiError> {
    caller.require_write()?;
    let router = site_router(&state, &caller, &site_id).await?;
    if router.reach != store::Reach::Tunnel {
        return Err(ApiError::Conflict(
            "this site's router is reached directly: there is no tunnel to enrol it in".into(),
        ));
    }
    if router.tunnel_public_key.is_some() {
        caller.require_admin()?;
    }
    let url = state.config.enroll_url().map_err(ApiError::Conflict)?;
    let line = sites::issue_line(
        &state.store,
        &state.config,
        &url,
        &asker(&caller),
        router.id,
        state.now(),
    )
    .await
    .map_err(site_problem)?;
    let mut response = (StatusCode::CREATED, Json(EnrollmentView::from(line))).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// The script that removes everything Postern put on the site's router, to paste into
/// its terminal before (or after) removing the site.
#[utoipa::path(
    get,
    path = "/api/sites/{site_id}/removal",
    tag = "routers",
    params(("site_id" = String, Path, description = "Site id")),
    responses(
        (status = 200, description = "The removal script", body = RemovalView),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such site (or no router) in your organisation", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn site_removal_get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(site_id): ApiPath<String>,
) -> Result<Json<RemovalView>, ApiError> {
    let router = site_router(&state, &caller, &site_id).await?;
    Ok(Json(RemovalView {
        command: onboarding::removal_script(&router.name),
    }))
}

// ------------------------------------------------------------------ public: /enroll

/// The enrolling router's address (the TCP peer, or `X-Forwarded-For` from a trusted
/// proxy), for the rate limit and the audit log.
pub struct EnrollerAddress(pub IpAddr);

impl FromRequestParts<AppState> for EnrollerAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let super::winbox::RedeemerAddress(a) =
            super::winbox::RedeemerAddress::from_request_parts(parts, state).await?;
        Ok(EnrollerAddress(a))
    }
}

fn problem(status: StatusCode, kind: &str, detail: &str, errors: Vec<FieldError>) -> Response {
    let mut response = problem_response(
        status,
        &Problem {
            kind: format!("urn:postern:problem:{kind}"),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: detail.into(),
            errors,
        },
    );
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    }
    response
}

fn unknown() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "enrollment-unknown",
        "unknown enrolment token: copy the whole line from Postern again",
        Vec::new(),
    )
}

fn closed(token: &store::Enrollment, now: chrono::DateTime<chrono::Utc>) -> Response {
    let detail = match token.state(now) {
        store::EnrollmentState::Spent => {
            "this enrolment line was used already: issue a new one in Postern (Re-issue line) to enrol again"
        }
        store::EnrollmentState::Revoked => {
            "this enrolment line was replaced by a newer one: paste the newest line from Postern"
        }
        _ => "this enrolment line has expired: issue a new one in Postern (Re-issue line)",
    };
    problem(StatusCode::GONE, "enrollment-closed", detail, Vec::new())
}

fn limited() -> Response {
    problem(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "too many enrolment requests from this address: wait a minute",
        Vec::new(),
    )
}

/// An open token and its router, or the response refusing it.
async fn open_token(
    state: &AppState,
    token: &str,
    from: IpAddr,
) -> Result<Result<(store::Enrollment, String), Response>, ApiError> {
    if !state.enroll_limit.allow(from, std::time::Instant::now()) {
        tracing::warn!(%from, "enrolment requests over the rate limit");
        return Ok(Err(limited()));
    }
    if !onboarding::well_formed(token) {
        return Ok(Err(unknown()));
    }
    let hash = hash_token(token);
    let Some(found) = state.store.find_enrollment(&hash).await? else {
        tracing::warn!(%from, "an unknown enrolment token was presented");
        return Ok(Err(unknown()));
    };
    let now = state.now();
    if found.state(now) != store::EnrollmentState::Open {
        tracing::warn!(%from, router = %found.router_id, state = ?found.state(now), "a closed enrolment token was presented");
        return Ok(Err(closed(&found, now)));
    }
    Ok(Ok((found, hash)))
}

/// The enrolment script for the router this token stands for (RouterOS 7, `text/plain`):
/// what the pasted line fetches and imports. Needs no other credential: the token is
/// one. Each fetch sets a fresh management password, carried only in this response and
/// stored encrypted. The token stays open until the script posts back.
#[utoipa::path(
    get,
    path = "/enroll/{token}",
    tag = "routers",
    security(()),
    params(("token" = String, Path, description = "The enrolment token: `pet_` and 43 base64url characters")),
    responses(
        (status = 200, description = "The script", body = String, content_type = "text/plain",
         headers(("Cache-Control" = String, description = "no-store"))),
        (status = 404, description = "Unknown or malformed token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "This server cannot write the script: the router's region has no tunnel here, or no endpoint routers can reach (the detail says what to set)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The token was used, replaced by a newer line, or has expired (the detail says which)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over 30 enrolment requests a minute from this address", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn enroll_get(
    State(state): State<AppState>,
    EnrollerAddress(from): EnrollerAddress,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Result<Response, ApiError> {
    let (found, _) = match open_token(&state, &token, from).await? {
        Ok(open) => open,
        Err(refused) => return Ok(refused),
    };
    let router = state
        .store
        .get_router(found.org_id, found.router_id)
        .await?;
    let url = state.config.enroll_url().map_err(ApiError::Conflict)?;
    let plan = sites::tunnel_plan(&state.store, &state.config, state.gateway.as_ref(), &router)
        .await
        .map_err(site_problem)?;
    let password = random_alnum(sites::MANAGEMENT_PASSWORD_LEN, false);
    state
        .store
        .update_router(
            router.org_id,
            router.id,
            store::RouterPatch {
                password: Some(password.clone()),
                username: Some(onboarding::MANAGEMENT_USER.into()),
                ..Default::default()
            },
        )
        .await?;
    let script = onboarding::enroll_script(&onboarding::ScriptParams {
        router_name: &router.name,
        url: &url,
        token: &token,
        router_address: router.tunnel_address,
        gateway_address: plan.gateway_address,
        gateway_public_key: &plan.public_key,
        endpoint_host: &plan.endpoint_host,
        endpoint_port: plan.endpoint_port,
        password: &password,
    });
    state
        .store
        .append_audit(store::NewAudit {
            org_id: router.org_id,
            at: state.now(),
            actor: format!("router:{}", router.name),
            actor_address: Some(from),
            action: "router.enroll.script".into(),
            target: Some(format!("router:{}", router.id)),
            details: json!({ "management_user": onboarding::MANAGEMENT_USER }),
        })
        .await?;
    let mut response = script.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// What a completed enrolment answers.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Enrolled {
    /// The router's id.
    pub router_id: String,
    /// Its address in the tunnel.
    pub address: String,
    /// The gateway's address in the tunnel.
    pub gateway_address: String,
}

/// Completes an enrolment with what the script posts: the router's WireGuard public
/// key and facts. Every field is checked (a 32-byte base64 key, printable text within
/// its length, RouterOS 7, ports 1–65535); a key another router uses, or a serial number
/// another router of the organisation has, is refused. On success the key and facts are
/// recorded, the token is spent, the gateway admits the router's key (before this
/// answer, so the router's first handshake succeeds) and it is audited
/// (`router.enroll`). A refused or malformed report changes nothing: the token stays
/// open.
#[utoipa::path(
    post,
    path = "/enroll/{token}",
    tag = "routers",
    security(()),
    params(("token" = String, Path, description = "The enrolment token")),
    request_body(content = EnrollReport, description = "At most 4096 bytes of JSON"),
    responses(
        (status = 200, description = "Enrolled: the token is spent and the gateway admits the router", body = Enrolled),
        (status = 400, description = "The body is not JSON of that shape (unknown, missing or mistyped field)", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Unknown or malformed token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Another router uses this public key, or another router of the organisation has this serial number (`errors` names the field)", body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "The token was used, replaced by a newer line, or has expired", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 4096 bytes", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid (`errors` names each)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over 30 enrolment requests a minute from this address", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn enroll_post(
    State(state): State<AppState>,
    EnrollerAddress(from): EnrollerAddress,
    axum::extract::Path(token): axum::extract::Path<String>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let (found, hash) = match open_token(&state, &token, from).await? {
        Ok(open) => open,
        Err(refused) => return Ok(refused),
    };
    // Over the server's body limit the body is not even read: the same 413.
    let body = body.unwrap_or_else(|_| Bytes::from_static(&[0; REPORT_LIMIT + 1]));
    if body.len() > REPORT_LIMIT {
        return Ok(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "the enrolment report is over 4096 bytes",
            Vec::new(),
        ));
    }
    let report: EnrollReport = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                "malformed",
                &format!("the enrolment report is not the JSON Postern's script sends: {e}"),
                Vec::new(),
            ));
        }
    };
    let checked = match onboarding::check_report(&report) {
        Ok(c) => c,
        Err(errors) => {
            return Ok(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "validation",
                "the enrolment report has invalid fields",
                errors
                    .into_iter()
                    .map(|(f, m)| FieldError::new(f, m))
                    .collect(),
            ));
        }
    };
    let now = state.now();
    let outcome = state
        .store
        .complete_enrollment(
            &hash,
            now,
            &store::EnrollmentReport {
                public_key: checked.public_key.clone(),
                identity: checked.identity.clone(),
                routeros_version: checked.version.clone(),
                board_name: checked.board.clone(),
                serial_number: checked.serial.clone(),
                api_port: checked.api_port,
                ssh_port: checked.ssh_port,
                winbox_port: checked.winbox_port,
                from: Some(from),
            },
            store::NewAudit {
                org_id: found.org_id,
                at: now,
                actor: format!("token of {}", found.created_by),
                actor_address: Some(from),
                action: "router.enroll".into(),
                target: None,
                details: json!({
                    "public_key": checked.public_key,
                    "identity": checked.identity,
                    "routeros_version": checked.version,
                    "board_name": checked.board,
                    "serial_number": checked.serial,
                    "api_port": checked.api_port,
                    "ssh_port": checked.ssh_port,
                    "winbox_port": checked.winbox_port,
                }),
            },
        )
        .await;
    let router = match outcome {
        Ok(store::EnrollmentUse::Done(router, _)) => *router,
        Ok(store::EnrollmentUse::Closed(t)) => return Ok(closed(&t, now)),
        Ok(store::EnrollmentUse::Unknown) => return Ok(unknown()),
        Err(store::StoreError::Conflict(m)) => {
            let (field, message) = m.split_once(": ").unwrap_or(("public_key", m.as_str()));
            return Ok(problem(
                StatusCode::CONFLICT,
                "enrollment-clash",
                message,
                vec![FieldError::new(field, message)],
            ));
        }
        Err(e) => return Err(e.into()),
    };
    state.lists.invalidate(router.id);
    admit(&state, &router)?;
    if let Some(orchestrator) = &state.orchestrator {
        orchestrator.router_changed(router.id);
    }
    let plan = sites::tunnel_plan(&state.store, &state.config, state.gateway.as_ref(), &router)
        .await
        .map_err(site_problem)?;
    tracing::info!(router = %router.id, %from, "router enrolled");
    Ok(Json(Enrolled {
        router_id: router.id.to_string(),
        address: router.tunnel_address.to_string(),
        gateway_address: plan.gateway_address.to_string(),
    })
    .into_response())
}

/// Lets the enrolled router's key into the in-process gateway's tunnel (a gateway
/// elsewhere loads it from the store).
fn admit(state: &AppState, router: &store::Router) -> Result<(), ApiError> {
    use crate::tunnels::TunnelGateway as _;
    let (Some(gateway), Some(key)) = (&state.gateway, &router.tunnel_public_key) else {
        return Ok(());
    };
    match gateway
        .tunnels()
        .admit_peer(router.id, router.region_id, key, router.tunnel_address)
    {
        Ok(()) => Ok(()),
        // Its region's tunnel runs elsewhere: that gateway loads the key from the store.
        Err(crate::tunnels::AdmitError::NoRegion) => Ok(()),
        Err(e) => Err(ApiError::Internal(format!(
            "admitting router {} to the tunnel: {e}",
            router.id
        ))),
    }
}
