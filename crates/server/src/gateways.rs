//! Regional gateways from the control plane's side: adding one (`postern admin
//! add-gateway`: a pending gateway and its single-use join token) and its join (`POST
//! /api/gateways/join`: the token spent, the gateway's request for a control-channel
//! certificate signed by the control CA, what servers and routers need to reach it
//! recorded). The join token is the only credential a gateway ever presents over HTTP;
//! after it, the gateway is known by its certificate.

use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use control::msg::{JoinRequest, JoinResponse, JoinedRegion};
use domain::GatewayId;

use crate::auth::{hash_token, random_alnum};
use crate::config::ServerConfig;

/// A join token's prefix, so a pasted one is recognised.
const TOKEN_PREFIX: &str = "pgj_";
/// Its random part: 40 letters and digits (238 bits).
const TOKEN_CHARS: usize = 40;
/// How long a join token works unless told otherwise.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::hours(24);
/// The longest PEM request accepted.
const CSR_LIMIT: usize = 8192;

/// Why a gateway was not added or did not join.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A field of the request, and what is wrong with it.
    #[error("{0}: {1}")]
    Field(&'static str, String),
    /// The token is unknown, spent, expired or its gateway removed (one answer for all).
    #[error("this join token is not valid: it is unknown, used, expired or revoked")]
    Refused,
    /// The server is not set up for it.
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// A gateway just added: its id, its token (shown once), and the command that joins.
#[derive(Debug, Clone)]
pub struct AddedGateway {
    pub gateway: store::Gateway,
    pub token: String,
    pub command: String,
}

/// Adds a pending gateway for `region` (a region configured `gateway = "remote"`) with
/// a join token valid for `lifetime`.
pub async fn add_gateway(
    store: &store::Store,
    config: &ServerConfig,
    region: &str,
    created_by: &str,
    lifetime: Duration,
    now: DateTime<Utc>,
) -> Result<AddedGateway, GatewayError> {
    let configured = config
        .regions
        .iter()
        .find(|r| r.name == region)
        .ok_or_else(|| {
            GatewayError::Field(
                "region",
                format!("no region named {region:?} is configured"),
            )
        })?;
    if !configured.remote() {
        return Err(GatewayError::Field(
            "region",
            format!(
                "region {region:?} is served by this server's own gateway: set gateway = \"remote\" for it in the configuration first"
            ),
        ));
    }
    if lifetime <= Duration::zero() || lifetime > Duration::days(30) {
        return Err(GatewayError::Field(
            "valid_for",
            "must be more than 0 and at most 30 days".into(),
        ));
    }
    let url = config.enroll_url().map_err(GatewayError::Setup)?;
    let stored = store.find_region_by_name(region).await?.ok_or_else(|| {
        GatewayError::Field("region", format!("region {region:?} is not in the store"))
    })?;
    let token = format!("{TOKEN_PREFIX}{}", random_alnum(TOKEN_CHARS, false));
    let gateway = store
        .add_gateway(store::NewGateway {
            id: GatewayId::new(),
            region_id: stored.id,
            token_hash: hash_token(&token),
            created_by: created_by.to_owned(),
            at: now,
            expires_at: now + lifetime,
        })
        .await?;
    tracing::info!(gateway = %gateway.id, region, by = created_by, expires_at = %gateway.token_expires_at, "gateway added; waiting for its join");
    let command = format!(
        "postern gateway --join {} --token {token} --data-dir /var/lib/postern-gateway",
        url.origin
    );
    Ok(AddedGateway {
        gateway,
        token,
        command,
    })
}

/// Whether text has the shape of a join token (checked before any lookup).
fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
        rest.len() == TOKEN_CHARS && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    })
}

/// `host:port` with a host of letters, digits, dots, hyphens (or `[v6]`) and a port > 0.
fn host_port(field: &'static str, value: &str) -> Result<(), GatewayError> {
    let bad = |why: &str| GatewayError::Field(field, why.to_owned());
    if value.len() > 261 {
        return Err(bad("at most 261 characters"));
    }
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| bad("must be host:port"))?;
    if !port.parse::<u16>().is_ok_and(|p| p > 0) {
        return Err(bad("the port must be 1-65535"));
    }
    host_name(field, host)
}

fn host_name(field: &'static str, host: &str) -> Result<(), GatewayError> {
    let bad = |why: &str| GatewayError::Field(field, why.to_owned());
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| bad("not an IPv6 address in brackets"));
    }
    if host.is_empty() || host.len() > 253 {
        return Err(bad("the host must be 1-253 characters"));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err(bad(
            "the host may hold only letters, digits, dots and hyphens",
        ));
    }
    Ok(())
}

/// Checks a join request's fields (all but the token and the request's signature).
pub fn check_request(req: &JoinRequest) -> Result<(), Vec<GatewayError>> {
    let mut errors = Vec::new();
    if req.csr_pem.len() > CSR_LIMIT || !req.csr_pem.contains("-----BEGIN CERTIFICATE REQUEST-----")
    {
        errors.push(GatewayError::Field(
            "csr_pem",
            format!("must be a PEM certificate request of at most {CSR_LIMIT} bytes"),
        ));
    }
    if req
        .wireguard_public_key
        .parse::<tunnel::PublicKey>()
        .is_err()
    {
        errors.push(GatewayError::Field(
            "wireguard_public_key",
            "must be a WireGuard public key (base64 of 32 bytes)".into(),
        ));
    }
    for (field, value) in [
        ("control_address", &req.control_address),
        ("tunnel_endpoint", &req.tunnel_endpoint),
    ] {
        if let Err(e) = host_port(field, value) {
            errors.push(e);
        }
    }
    if let Err(e) = host_name("entry_host", &req.entry_host) {
        errors.push(e);
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Spends a join token: the gateway's certificate is signed, its facts recorded (a
/// gateway the region had is replaced), and its identity returned.
pub async fn join(
    store: &store::Store,
    config: &ServerConfig,
    req: &JoinRequest,
    from: Option<IpAddr>,
    now: DateTime<Utc>,
) -> Result<JoinResponse, GatewayError> {
    if !well_formed(&req.token) {
        return Err(GatewayError::Refused);
    }
    if let Err(mut errors) = check_request(req) {
        return Err(errors.remove(0));
    }
    let (ca_cert, ca_key) = store.control_ca().await?.ok_or_else(|| {
        GatewayError::Setup("the control CA is not made yet: start `postern server` once".into())
    })?;
    let ca = control::pki::Ca::from_pem(&ca_cert, &control::pki::KeyPem::new(ca_key.into_inner()))
        .map_err(|e| GatewayError::Setup(format!("the stored control CA is unreadable: {e}")))?;
    let mut signing_error = None;
    let joined = store
        .join_gateway(&hash_token(&req.token), now, |id| {
            match ca.sign_gateway(&req.csr_pem, id) {
                Ok(certificate_pem) => Ok(store::JoinedGateway {
                    at: now,
                    from,
                    control_address: req.control_address.clone(),
                    tunnel_endpoint: req.tunnel_endpoint.clone(),
                    entry_host: req.entry_host.clone(),
                    wireguard_public_key: req.wireguard_public_key.clone(),
                    certificate_pem,
                }),
                Err(e) => {
                    signing_error = Some(e.to_string());
                    Err(store::StoreError::Conflict("csr_pem".into()))
                }
            }
        })
        .await;
    if let Some(e) = signing_error {
        return Err(GatewayError::Field(
            "csr_pem",
            format!("not a certificate request this CA can sign: {e}"),
        ));
    }
    let (gateway, replaced) = match joined? {
        store::GatewayJoin::Refused => return Err(GatewayError::Refused),
        store::GatewayJoin::Joined { gateway, replaced } => (gateway, replaced),
    };
    let region = store.get_region(gateway.region_id).await?;
    let configured = config
        .regions
        .iter()
        .find(|r| r.name == region.name)
        .ok_or_else(|| {
            GatewayError::Setup(format!("region {:?} is not configured here", region.name))
        })?;
    if let Some(old) = replaced {
        tracing::warn!(gateway = %gateway.id, replaced = %old, region = %region.name, "a new gateway joined the region and replaces the old");
    }
    tracing::info!(gateway = %gateway.id, region = %region.name, control = %req.control_address, tunnel = %req.tunnel_endpoint, ?from, "gateway joined");
    let certificate_pem = gateway
        .joined
        .map(|j| j.certificate_pem)
        .unwrap_or_default();
    Ok(JoinResponse {
        gateway_id: gateway.id,
        region: JoinedRegion {
            id: region.id,
            name: region.name,
            prefix: configured.tunnel_prefix().to_string(),
            gateway_address: configured.tunnel_gateway(),
            port_min: region.port_min,
            port_max: region.port_max,
        },
        certificate_pem,
        ca_pem: ca_cert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_checked() {
        for ok in ["gw.example.net:7443", "192.0.2.7:1", "[2001:db8::1]:51820"] {
            assert!(host_port("f", ok).is_ok(), "{ok}");
        }
        for bad in [
            "gw.example.net",
            "gw.example.net:0",
            ":7443",
            "gw example:1",
            "gw;rm:1",
            "[nope]:1",
        ] {
            assert!(host_port("f", bad).is_err(), "{bad}");
        }
        assert!(well_formed(&format!("{TOKEN_PREFIX}{}", "a".repeat(40))));
        assert!(!well_formed("pgj_short"));
        assert!(!well_formed(&format!("{TOKEN_PREFIX}{}", "-".repeat(40))));
    }
}
