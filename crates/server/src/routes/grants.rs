//! Creating grants, revealing a login and revoking: the one code path behind both the
//! API's handlers (`access`, `forwards`) and the portal's forms, so a grant made in either
//! place is validated, recorded, audited and queued alike. The caller's surface (JSON or
//! HTML) only turns requests into [`CreateAccess`]/[`CreateForward`] and errors into its
//! own answer.

use chrono::{DateTime, Utc};
use domain::{AccessLevel, AccessType, DstAddress};
use serde_json::json;

use super::common::{
    Checks, audit, entry_port_candidates, new_job, port_candidates, resolve_allow_from,
    resolve_expiry, revoke,
};
use crate::auth::{Caller, random_alnum};
use crate::dto::{AccessLevelDto, CreateAccess, CreateForward, CredentialsView, timestamp};
use crate::error::ApiError;
use crate::state::AppState;

pub use super::common::{Grant, limits};

/// Length of generated passwords: 24 letters and digits, about 143 bits.
const PASSWORD_LEN: usize = 24;

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

/// The back-pressure on every create: the caller's rates (429), then the live-grant
/// caps of the router and the organisation (409). The admission is kept only by a
/// create that succeeds.
async fn admit(
    state: &AppState,
    caller: &Caller,
    router: &store::Router,
) -> Result<crate::backpressure::Admission, ApiError> {
    let limits = &state.config.creation;
    let admission = state
        .creates
        .admit(limits, caller, std::time::Instant::now())?;
    if let Err(e) = crate::backpressure::check_caps(&state.store, limits, caller, router.id).await {
        if matches!(e, ApiError::Conflict(_)) {
            state
                .creates
                .refused_cap
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        return Err(e);
    }
    Ok(admission)
}

/// Creates transient access on `router` (already loaded within the caller's
/// organisation): validates every field (422 naming each bad one), generates the user
/// and password, records the grant with its port, audit entry (`access.create`) and
/// `access.create` job in one transaction, and wakes the orchestrator.
pub async fn create_access(
    state: &AppState,
    caller: &Caller,
    router: &store::Router,
    req: &CreateAccess,
) -> Result<store::TransientAccess, ApiError> {
    create(state, caller, router, None, req, false).await
}

/// As [`create_access`], with the router's region already read (with the router, in
/// one read: `Store::get_router_with_region`).
pub async fn create_access_in(
    state: &AppState,
    caller: &Caller,
    router: &store::Router,
    region: store::Region,
    req: &CreateAccess,
) -> Result<store::TransientAccess, ApiError> {
    create(state, caller, router, Some(region), req, false).await
}

/// As [`create_access`], for the portal's Terminal: the server connects to the router
/// itself, so the gateway opens no entry port for this grant.
pub async fn create_terminal_access(
    state: &AppState,
    caller: &Caller,
    router: &store::Router,
    req: &CreateAccess,
) -> Result<store::TransientAccess, ApiError> {
    create(state, caller, router, None, req, true).await
}

async fn create(
    state: &AppState,
    caller: &Caller,
    router: &store::Router,
    region: Option<store::Region>,
    req: &CreateAccess,
    terminal: bool,
) -> Result<store::TransientAccess, ApiError> {
    caller.require_write()?;
    let admission = admit(state, caller, router).await?;
    let now = state.now();
    let mut checks = Checks::default();
    let access = access_level(req, &mut checks);
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
    let region = match region {
        Some(region) => region,
        None => state.store.get_region(router.region_id).await?,
    };
    let allow_from = resolve_allow_from(
        state,
        &mut checks,
        req.allow_from.as_deref(),
        caller.address,
        &region,
    );
    checks.finish()?;
    let (Some(expires_at), Some(allow_from)) = (expires_at, allow_from) else {
        return Err(ApiError::Internal(
            "validation passed without values".into(),
        ));
    };
    let allow_rfc1918 = req.allow_rfc1918.unwrap_or(false);
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
            port_candidates: entry_port_candidates(state, &region),
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
                    "terminal": terminal,
                }),
            ),
            job: Some(new_job(caller, router.id, "access.create", now)),
            terminal,
        })
        .await?;
    admission.keep();
    state.lists.invalidate(router.id);
    super::common::grant_created(state).await;
    Ok(grant)
}

/// Creates a port forward on `router` (already loaded within the caller's organisation),
/// as [`create_access`] does: validated, recorded with its ports, audit entry
/// (`forward.create`) and `forward.create` job, the orchestrator woken.
pub async fn create_forward(
    state: &AppState,
    caller: &Caller,
    router: &store::Router,
    req: &CreateForward,
) -> Result<store::TransientForward, ApiError> {
    create_forward_in(state, caller, router, None, req).await
}

/// As [`create_forward`], with the router's region already read when `region` is given.
pub async fn create_forward_in(
    state: &AppState,
    caller: &Caller,
    router: &store::Router,
    region: Option<store::Region>,
    req: &CreateForward,
) -> Result<store::TransientForward, ApiError> {
    caller.require_write()?;
    let admission = admit(state, caller, router).await?;
    let now = state.now();
    let mut checks = Checks::default();
    let expires_at = resolve_expiry(
        state,
        &mut checks,
        now,
        req.expire_after_minutes,
        req.expires_at.as_deref(),
    );
    let dst_port = checks.take(domain::rules::dst_port(req.dst_port));
    let dst_address = checks.take(DstAddress::parse_with(&req.dst_address, &state.policy()));
    let region = match region {
        Some(region) => region,
        None => state.store.get_region(router.region_id).await?,
    };
    let allow_from = resolve_allow_from(
        state,
        &mut checks,
        req.allow_from.as_deref(),
        caller.address,
        &region,
    );
    checks.finish()?;
    let (Some(expires_at), Some(dst_port), Some(dst_address), Some(allow_from)) =
        (expires_at, dst_port, dst_address, allow_from)
    else {
        return Err(ApiError::Internal(
            "validation passed without values".into(),
        ));
    };
    let masquerade = req.masquerade.unwrap_or(false);
    let forward = state
        .store
        .create_forward(store::NewForward {
            org_id: caller.org_id,
            router_id: router.id,
            dst_address: dst_address.addr(),
            dst_port,
            masquerade,
            allow_from,
            expires_at,
            created_by: caller.actor.clone(),
            region_id: region.id,
            entry_point: region.entry_point.clone(),
            port_candidates: entry_port_candidates(state, &region),
            router_port_candidates: port_candidates(
                state.config.forward_port_min,
                state.config.forward_port_max,
            ),
            audit: audit(
                caller,
                now,
                "forward.create",
                Some(format!("router:{}", router.id)),
                json!({
                    "dst_address": dst_address.to_string(),
                    "dst_port": dst_port,
                    "allow_from": allow_from.to_string(),
                    "masquerade": masquerade,
                    "expires_at": timestamp(expires_at),
                }),
            ),
            job: Some(new_job(caller, router.id, "forward.create", now)),
        })
        .await?;
    admission.keep();
    state.lists.invalidate(router.id);
    super::common::grant_created(state).await;
    Ok(forward)
}

/// The login of a live access grant, audited (`access.credentials.read`). Viewers may
/// not read it (403); an ended grant's is refused (409). A WinBox grant's `winbox_url`
/// carries a fresh one-time ticket for the launcher, redeemed at `origin`.
pub async fn credentials(
    state: &AppState,
    caller: &Caller,
    grant: &store::TransientAccess,
    origin: &super::winbox::RequestOrigin,
) -> Result<CredentialsView, ApiError> {
    caller.require_credentials()?;
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
            caller,
            state.now(),
            "access.credentials.read",
            Some(format!("access:{}", grant.id)),
            json!({ "username": grant.username }),
        ))
        .await?;
    let (winbox_url, ssh_command) = match grant.access_type {
        AccessType::Winbox => (
            Some(super::winbox::issue(state, caller, grant, origin).await?),
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
    Ok(CredentialsView {
        username: grant.username.clone(),
        password: password.expose().to_owned(),
        entry_point: grant.entry_point.clone(),
        port: grant.port,
        winbox_url,
        ssh_command,
    })
}

/// Revokes a grant of `router_id` found within the caller's organisation (audited as
/// `<kind>.revoke`). Viewers may not (403); a grant that has ended already is left as
/// it is, which is not an error: the caller's wish, that it be gone, holds.
pub async fn revoke_grant(
    state: &AppState,
    caller: &Caller,
    grant: Grant,
    status: domain::GrantStatus,
    router_id: domain::RouterId,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    caller.require_write()?;
    if !status.is_live() {
        return Ok(());
    }
    revoke(state, caller, grant, router_id, now).await
}
