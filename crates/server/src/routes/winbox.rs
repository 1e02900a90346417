//! One-time WinBox tickets: each reading of a WinBox grant's credentials (API or portal)
//! issues one and puts it in the `winbox://HOST:PORT?user=…&ticket=…&server=…` link, so
//! the password never sits in a link or a browser's history; `postern-launcher` redeems
//! it at `POST /api/winbox/redeem` for the login. A ticket works once, for
//! [`TICKET_TTL`], for the grant and the person who asked; it is stored as a hash and
//! audited when issued and when redeemed (or refused). The redemption needs no other
//! credential, and every refusal looks the same from outside.

use std::net::IpAddr;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::{HeaderMap, HeaderValue, header, request::Parts};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::TimeDelta;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::common::audit;
use crate::auth::{Caller, client_address, hash_token};
use crate::dto::timestamp;
use crate::error::{ApiError, Problem};
use crate::extract::ApiJson;
use crate::listen::ClientAddr;
use crate::state::AppState;

/// Every ticket starts with this.
pub const TICKET_PREFIX: &str = "wbt_";
/// How long a ticket can be redeemed after it was issued.
pub const TICKET_TTL: TimeDelta = TimeDelta::seconds(60);

/// The server's origin as the caller reached it (`scheme://host[:port]`), for the
/// launcher to redeem the ticket at: the `Host` header (checked: a host name or address
/// and a port, nothing else), and `https` when a trusted proxy says
/// `X-Forwarded-Proto: https`, else `http` (the server itself speaks plain HTTP; the
/// launcher accepts that only for a server on its own machine or in the lab).
#[derive(Debug, Clone)]
pub struct RequestOrigin(pub String);

impl FromRequestParts<AppState> for RequestOrigin {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = peer(parts);
        let trusted = state.config.trusted_proxies.contains(&peer);
        let proto = parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim);
        let scheme = match proto {
            Some(p) if trusted && p.eq_ignore_ascii_case("https") => "https",
            _ => "http",
        };
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| plain_authority(h))
            .map(str::to_owned)
            .unwrap_or_else(|| state.config.listen.to_string());
        Ok(RequestOrigin(format!("{scheme}://{host}")))
    }
}

/// The TCP peer (loopback when unknown, as in tests without a socket).
fn peer(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<ConnectInfo<ClientAddr>>()
        .map(|ConnectInfo(ClientAddr(a))| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

/// A `Host` header's value made only of what a host and port are made of.
fn plain_authority(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An IPv6 literal needs brackets in a URL's authority.
fn host_for_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

/// The link for a grant and a ticket.
pub fn winbox_url(grant: &store::TransientAccess, ticket: &str, origin: &RequestOrigin) -> String {
    format!(
        "winbox://{}:{}?user={}&ticket={ticket}&server={}",
        host_for_url(&grant.entry_point),
        grant.port,
        encode(&grant.username),
        encode(&origin.0)
    )
}

/// Issues a ticket for `grant` to `caller` (audited as `access.winbox_ticket.issue`, in
/// the ticket's own transaction) and returns its link.
pub async fn issue(
    state: &AppState,
    caller: &Caller,
    grant: &store::TransientAccess,
    origin: &RequestOrigin,
) -> Result<String, ApiError> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let ticket = format!("{TICKET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let now = state.now();
    let expires_at = now + TICKET_TTL;
    state
        .store
        .create_winbox_ticket(store::NewWinboxTicket {
            id_hash: hash_token(&ticket),
            org_id: caller.org_id,
            router_id: grant.router_id,
            access_id: grant.id,
            issued_to: caller.actor.clone(),
            user_id: caller.user_id,
            token_id: caller.token_id,
            at: now,
            expires_at,
            audit: audit(
                caller,
                now,
                "access.winbox_ticket.issue",
                Some(format!("access:{}", grant.id)),
                json!({ "username": grant.username, "expires_at": timestamp(expires_at) }),
            ),
        })
        .await?;
    Ok(winbox_url(grant, &ticket, origin))
}

/// Whether text has the shape of one of our tickets (checked before any lookup).
fn well_formed(ticket: &str) -> bool {
    ticket.strip_prefix(TICKET_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// A ticket to redeem.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RedeemTicket {
    /// The `ticket` of a `winbox://` link: `wbt_` and 43 base64url characters.
    #[schema(
        example = "wbt_3q2-7wAbCdEfGhIjKlMnOpQrStUvWxYz0123456789A",
        pattern = "^wbt_[A-Za-z0-9_-]{43}$"
    )]
    pub ticket: String,
}

/// The login a ticket stood for: what WinBox is started with.
#[derive(Debug, Serialize, ToSchema)]
pub struct RedeemedLogin {
    /// The entry point: the gateway's host name or address.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    /// When the grant ends (the login stops working then).
    #[schema(format = DateTime)]
    pub expires_at: String,
}

/// The one answer to every ticket that cannot be redeemed.
fn refused() -> ApiError {
    ApiError::NotFound("WinBox ticket")
}

/// Redeems a one-time WinBox ticket for the login it stands for. Needs no other
/// credential: the ticket is one. It works once, within 60 s of being issued (by a read of
/// a WinBox grant's credentials), while the grant is live and the person who asked may
/// still read credentials; every other case (unknown, malformed, used, expired, grant
/// ended, asker removed or no longer allowed) is the same 404. Issue and redemption are
/// audited (`access.winbox_ticket.issue`, `.redeem`, `.refused`).
#[utoipa::path(
    post,
    path = "/api/winbox/redeem",
    tag = "transient-access",
    security(()),
    request_body = RedeemTicket,
    responses(
        (status = 200, description = "The login; the ticket is spent", body = RedeemedLogin,
         headers(("Cache-Control" = String, description = "no-store"))),
        (status = 404, description = "Unknown, malformed, used or expired ticket, or a grant or asker no longer valid: one answer for all", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The body is not {\"ticket\": string}", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn winbox_redeem_post(
    State(state): State<AppState>,
    from: RedeemerAddress,
    ApiJson(req): ApiJson<RedeemTicket>,
) -> Result<Response, ApiError> {
    if !well_formed(&req.ticket) {
        return Err(refused());
    }
    let now = state.now();
    let address = from.0;
    let taken = state
        .store
        .take_winbox_ticket(&hash_token(&req.ticket), now, Some(address))
        .await?;
    let ticket = match taken {
        store::TicketUse::Taken(ticket) => ticket,
        store::TicketUse::Unknown => {
            tracing::warn!(%address, "an unknown WinBox ticket was presented");
            return Err(refused());
        }
        store::TicketUse::Spent(ticket) => {
            let reason = if ticket.used_at.is_some() {
                "used already"
            } else {
                "expired"
            };
            refuse(&state, &ticket, address, reason).await?;
            return Err(refused());
        }
    };
    let grant = state
        .store
        .get_access(ticket.org_id, ticket.router_id, ticket.access_id)
        .await;
    let grant = match grant {
        Ok(g) if g.status.is_live() && g.access_type == domain::AccessType::Winbox => g,
        Ok(_) | Err(store::StoreError::NotFound) => {
            refuse(&state, &ticket, address, "the grant has ended").await?;
            return Err(refused());
        }
        Err(e) => return Err(e.into()),
    };
    if !asker_still_allowed(&state, &ticket).await? {
        refuse(
            &state,
            &ticket,
            address,
            "the asker may no longer read credentials",
        )
        .await?;
        return Err(refused());
    }
    let password = state.store.access_password(grant.id).await?;
    state
        .store
        .append_audit(store::NewAudit {
            org_id: ticket.org_id,
            at: now,
            actor: ticket.issued_to.clone(),
            actor_address: Some(address),
            action: "access.winbox_ticket.redeem".into(),
            target: Some(format!("access:{}", grant.id)),
            details: json!({ "username": grant.username, "via": "launcher" }),
        })
        .await?;
    let mut response = Json(RedeemedLogin {
        host: grant.entry_point.clone(),
        port: grant.port,
        user: grant.username.clone(),
        password: password.expose().to_owned(),
        expires_at: timestamp(grant.expires_at),
    })
    .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Whether the user or token that asked for the ticket still exists and may still
/// read credentials.
async fn asker_still_allowed(
    state: &AppState,
    ticket: &store::WinboxTicket,
) -> Result<bool, ApiError> {
    if let Some(user) = ticket.user_id {
        return match state.store.get_user(ticket.org_id, user).await {
            Ok(u) => Ok(!u.disabled && u.role.can_write()),
            Err(store::StoreError::NotFound) => Ok(false),
            Err(e) => Err(e.into()),
        };
    }
    if let Some(token) = ticket.token_id {
        return Ok(state.store.api_token_exists(token).await?);
    }
    Ok(false)
}

/// Audits a refused redemption of a ticket that exists (`access.winbox_ticket.refused`).
async fn refuse(
    state: &AppState,
    ticket: &store::WinboxTicket,
    address: IpAddr,
    reason: &str,
) -> Result<(), ApiError> {
    tracing::warn!(%address, access = %ticket.access_id, reason, "a WinBox ticket was refused");
    state
        .store
        .append_audit(store::NewAudit {
            org_id: ticket.org_id,
            at: state.now(),
            actor: ticket.issued_to.clone(),
            actor_address: Some(address),
            action: "access.winbox_ticket.refused".into(),
            target: Some(format!("access:{}", ticket.access_id)),
            details: json!({ "reason": reason }),
        })
        .await?;
    Ok(())
}

/// The redeeming client's address (the TCP peer, or `X-Forwarded-For` from a trusted
/// proxy), for the audit log.
pub struct RedeemerAddress(pub IpAddr);

impl FromRequestParts<AppState> for RedeemerAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let headers: &HeaderMap = &parts.headers;
        Ok(RedeemerAddress(client_address(
            &state.config.trusted_proxies,
            peer(parts),
            headers,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_have_their_shape() {
        assert!(well_formed(&format!("wbt_{}", "a".repeat(43))));
        assert!(!well_formed(&format!("wbt_{}", "a".repeat(42))));
        assert!(!well_formed(&format!("pst_{}", "a".repeat(43))));
        assert!(!well_formed(&format!("wbt_{}=", "a".repeat(42))));
    }

    #[test]
    fn the_server_origin_is_escaped_in_the_link() {
        assert_eq!(
            encode("http://[::1]:8080"),
            "http%3A%2F%2F%5B%3A%3A1%5D%3A8080"
        );
        assert_eq!(encode("postern-ab.c_~"), "postern-ab.c_~");
        assert!(plain_authority("postern.example.com:8443"));
        assert!(plain_authority("[2001:db8::1]:80"));
        assert!(!plain_authority("evil.com/x"));
        assert!(!plain_authority("a b"));
        assert!(!plain_authority(""));
    }
}
