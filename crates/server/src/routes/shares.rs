//! Share links (`/api/routers/{router_id}/transient-access/{id}/share`): a grant's
//! credentials for someone with no account (a teammate, a vendor). A link shows the
//! login once, to whoever opens it first (the portal's public `/shared/{secret}` page,
//! behind a button so that a link preview does not spend it), until the grant ends. It
//! is stored as a hash, audited (`access.share.create`, `.open`, `.refused`, `.revoke`:
//! who made it and from where, when and from where it was opened), revocable, and
//! refused after its one use. The grant's `allow_from` still decides who can connect.

use std::net::IpAddr;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::common::{audit, load_router, not_found_as};
use super::winbox::RequestOrigin;
use crate::auth::{Caller, hash_token};
use crate::dto::timestamp;
use crate::error::{ApiError, Problem};
use crate::extract::{ApiPath, parse_id};
use crate::state::AppState;

/// Every share link's secret starts with this.
pub const SECRET_PREFIX: &str = "shr_";
/// Where a link points, under the server's origin.
pub const SHARED_PATH: &str = "/shared/";

/// A share link as the API shows it (`url` only in the answer that made it).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ShareView {
    pub id: String,
    /// The link: shown once, here; only its hash is kept.
    #[schema(
        example = "http://127.0.0.1:8080/shared/shr_3q2-7wAbCdEfGhIjKlMnOpQrStUvWxYz0123456789A"
    )]
    pub url: Option<String>,
    /// `unused`, `opened`, `revoked` or `expired`.
    pub state: String,
    pub created_by: String,
    pub created_from: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    /// The grant's end: the link is worthless after it.
    #[schema(format = DateTime)]
    pub expires_at: String,
    #[schema(format = DateTime)]
    pub opened_at: Option<String>,
    pub opened_from: Option<String>,
    #[schema(format = DateTime)]
    pub revoked_at: Option<String>,
}

fn view(
    s: &store::GrantShare,
    url: Option<String>,
    now: chrono::DateTime<chrono::Utc>,
) -> ShareView {
    let state = if s.used_at.is_some() {
        "opened"
    } else if s.revoked_at.is_some() {
        "revoked"
    } else if s.expires_at <= now {
        "expired"
    } else {
        "unused"
    };
    ShareView {
        id: s.id.to_string(),
        url,
        state: state.into(),
        created_by: s.created_by.clone(),
        created_from: s.created_from.map(|a| a.to_string()),
        created_at: timestamp(s.created_at),
        expires_at: timestamp(s.expires_at),
        opened_at: s.used_at.map(timestamp),
        opened_from: s.used_from.map(|a| a.to_string()),
        revoked_at: s.revoked_at.map(timestamp),
    }
}

/// Whether text has the shape of a link's secret (checked before any lookup).
pub fn well_formed(secret: &str) -> bool {
    secret.strip_prefix(SECRET_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// Makes a share link for a live grant (the API's and the portal's one path): viewers
/// may not (403), an ended grant may not be shared (409). Audited in the link's own
/// transaction. Returns the link's record and its URL.
pub async fn make(
    state: &AppState,
    caller: &Caller,
    grant: &store::TransientAccess,
    origin: &RequestOrigin,
) -> Result<(store::GrantShare, String), ApiError> {
    caller.require_credentials()?;
    if !grant.status.is_live() {
        return Err(ApiError::Conflict(format!(
            "the grant is {}: there is nothing left to share",
            grant.status.as_str()
        )));
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let secret = format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let now = state.now();
    let id = uuid::Uuid::new_v4();
    let share = state
        .store
        .create_grant_share(store::NewGrantShare {
            id,
            id_hash: hash_token(&secret),
            org_id: caller.org_id,
            router_id: grant.router_id,
            access_id: grant.id,
            created_by: caller.actor.clone(),
            created_from: Some(caller.address),
            at: now,
            expires_at: grant.expires_at,
            audit: audit(
                caller,
                now,
                "access.share.create",
                Some(format!("access:{}", grant.id)),
                json!({
                    "share_id": id.to_string(),
                    "username": grant.username,
                    "expires_at": timestamp(grant.expires_at),
                }),
            ),
        })
        .await
        .map_err(|e| not_found_as(e, "transient access"))?;
    Ok((share, format!("{}{SHARED_PATH}{secret}", origin.0)))
}

/// What an opened link shows.
#[derive(Debug)]
pub struct Opened {
    pub grant: store::TransientAccess,
    pub password: String,
}

/// Opens a link (once): the grant's login, or `None` for every link that cannot be
/// opened (unknown, malformed, opened already, revoked, expired, grant ended), which
/// all look the same from outside. Audited as `access.share.open` or `.refused`, with
/// the opener's address.
pub async fn open(
    state: &AppState,
    secret: &str,
    address: IpAddr,
) -> Result<Option<Opened>, ApiError> {
    if !well_formed(secret) {
        return Ok(None);
    }
    let now = state.now();
    let share = match state
        .store
        .take_grant_share(&hash_token(secret), now, Some(address))
        .await?
    {
        store::ShareUse::Taken(share) => share,
        store::ShareUse::Unknown => {
            tracing::warn!(%address, "an unknown share link was opened");
            return Ok(None);
        }
        store::ShareUse::Spent(share) => {
            let reason = if share.used_at.is_some() {
                "opened already"
            } else if share.revoked_at.is_some() {
                "revoked"
            } else {
                "expired"
            };
            refused(state, &share, address, reason).await?;
            return Ok(None);
        }
    };
    let grant = match state
        .store
        .get_access(share.org_id, share.router_id, share.access_id)
        .await
    {
        Ok(g) if g.status.is_live() && g.expires_at > now => g,
        Ok(_) | Err(store::StoreError::NotFound) => {
            refused(state, &share, address, "the grant has ended").await?;
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let password = state.store.access_password(grant.id).await?;
    state
        .store
        .append_audit(store::NewAudit {
            org_id: share.org_id,
            at: now,
            actor: share.created_by.clone(),
            actor_address: Some(address),
            action: "access.share.open".into(),
            target: Some(format!("access:{}", grant.id)),
            details: json!({
                "share_id": share.id.to_string(),
                "username": grant.username,
                "opened_from": address.to_string(),
            }),
        })
        .await?;
    Ok(Some(Opened {
        grant,
        password: password.expose().to_owned(),
    }))
}

async fn refused(
    state: &AppState,
    share: &store::GrantShare,
    address: IpAddr,
    reason: &str,
) -> Result<(), ApiError> {
    tracing::warn!(%address, share = %share.id, reason, "a share link was refused");
    state
        .store
        .append_audit(store::NewAudit {
            org_id: share.org_id,
            at: state.now(),
            actor: share.created_by.clone(),
            actor_address: Some(address),
            action: "access.share.refused".into(),
            target: Some(format!("access:{}", share.access_id)),
            details: json!({ "share_id": share.id.to_string(), "reason": reason }),
        })
        .await?;
    Ok(())
}

async fn load(
    state: &AppState,
    caller: &Caller,
    router_id: &str,
    id: &str,
) -> Result<store::TransientAccess, ApiError> {
    let router = load_router(state, caller, router_id).await?;
    let id: domain::AccessId = parse_id(id, "transient access")?;
    state
        .store
        .get_access(caller.org_id, router.id, id)
        .await
        .map_err(|e| not_found_as(e, "transient access"))
}

/// Makes a one-use share link for a live grant's credentials: whoever opens it first
/// sees the login, once, until the grant ends. The link is in this answer alone.
#[utoipa::path(
    post,
    path = "/api/routers/{router_id}/transient-access/{id}/share",
    tag = "transient-access",
    params(("router_id" = String, Path, description = "Router id"), ("id" = String, Path, description = "Grant id")),
    responses(
        (status = 201, description = "The link (`url`): keep it, it is not shown again", body = ShareView,
         headers(("Cache-Control" = String, description = "no-store"))),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not share credentials", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The grant has ended", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn access_share_post(
    State(state): State<AppState>,
    caller: Caller,
    origin: RequestOrigin,
    ApiPath((router_id, id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    caller.require_credentials()?;
    let grant = load(&state, &caller, &router_id, &id).await?;
    let (share, url) = make(&state, &caller, &grant, &origin).await?;
    let mut res = (
        StatusCode::CREATED,
        Json(view(&share, Some(url), state.now())),
    )
        .into_response();
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(res)
}

/// A grant's share links, newest first (never their secrets): who made each, and
/// when and from where it was opened.
#[utoipa::path(
    get,
    path = "/api/routers/{router_id}/transient-access/{id}/share",
    tag = "transient-access",
    params(("router_id" = String, Path, description = "Router id"), ("id" = String, Path, description = "Grant id")),
    responses(
        (status = 200, description = "The grant's share links", body = [ShareView]),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not see share links", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn access_shares_get(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((router_id, id)): ApiPath<(String, String)>,
) -> Result<Json<Vec<ShareView>>, ApiError> {
    caller.require_credentials()?;
    let grant = load(&state, &caller, &router_id, &id).await?;
    let now = state.now();
    let shares = state
        .store
        .list_grant_shares(caller.org_id, grant.id)
        .await?;
    Ok(Json(shares.iter().map(|s| view(s, None, now)).collect()))
}

/// Revokes a share link (204): it can no longer be opened. Revoking one already
/// opened or revoked is also 204 and changes nothing.
#[utoipa::path(
    delete,
    path = "/api/routers/{router_id}/transient-access/{id}/share/{share_id}",
    tag = "transient-access",
    params(
        ("router_id" = String, Path, description = "Router id"),
        ("id" = String, Path, description = "Grant id"),
        ("share_id" = String, Path, description = "Share link id")
    ),
    responses(
        (status = 204, description = "Revoked (or already opened or revoked)"),
        (status = 401, description = "No or invalid credentials", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Viewers may not revoke share links", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not found in your organisation", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn access_share_delete(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((router_id, id, share_id)): ApiPath<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    caller.require_credentials()?;
    let grant = load(&state, &caller, &router_id, &id).await?;
    let share_id: uuid::Uuid = share_id
        .parse()
        .map_err(|_| ApiError::field("share_id", "must be a UUID"))?;
    let now = state.now();
    state
        .store
        .revoke_grant_share(
            caller.org_id,
            grant.id,
            share_id,
            now,
            audit(
                &caller,
                now,
                "access.share.revoke",
                Some(format!("access:{}", grant.id)),
                json!({ "share_id": share_id.to_string() }),
            ),
        )
        .await
        .map_err(|e| not_found_as(e, "share link"))?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_their_shape() {
        assert!(well_formed(&format!("shr_{}", "a".repeat(43))));
        assert!(!well_formed(&format!("shr_{}", "a".repeat(42))));
        assert!(!well_formed(&format!("wbt_{}", "a".repeat(43))));
        assert!(!well_formed(&format!("shr_{}/", "a".repeat(42))));
    }
}
