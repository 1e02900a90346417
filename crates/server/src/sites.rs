//! Adding a site to onboard (a pending tunnelled router and its first enrolment line),
//! issuing a new line, and the enrolment itself: what the API, the portal and
//! `postern admin add-site` share. The token is generated here, handed out once inside
//! its line and stored only as its SHA-256.

use chrono::{DateTime, TimeDelta, Utc};
use domain::{OrgId, RouterId};
use serde_json::json;

use crate::auth::{hash_token, random_alnum};
use crate::config::{RegionConfig, ServerConfig};
use crate::onboarding::{self, PublicUrl};

/// Length of the management password Postern gives its login on an enrolled router.
pub const MANAGEMENT_PASSWORD_LEN: usize = 32;

/// Why onboarding could not go on; the server maps these to statuses.
#[derive(Debug, thiserror::Error)]
pub enum SiteError {
    /// A field is wrong (its name, the message).
    #[error("{0}: {1}")]
    Field(&'static str, String),
    /// The server is not set up for onboarding (no public address, no tunnel key).
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// A line handed out: what to paste, the URL inside it, its end.
#[derive(Debug, Clone)]
pub struct Line {
    pub command: String,
    pub url: String,
    pub expires_at: DateTime<Utc>,
}

/// Who asks, for the token's `created_by` and the audit entry.
#[derive(Debug, Clone)]
pub struct Asker {
    pub org_id: OrgId,
    pub actor: String,
    pub address: Option<std::net::IpAddr>,
}

fn region_config<'a>(config: &'a ServerConfig, name: &str) -> Option<&'a RegionConfig> {
    config.regions.iter().find(|r| r.name == name)
}

/// Creates a site and its pending tunnelled router in `region` (the first configured
/// one when `None`), at the next free address of the region's tunnel prefix, with
/// Postern's management login name; then issues its first line. The management
/// password is set when the router fetches its script.
pub async fn add_site(
    store: &store::Store,
    config: &ServerConfig,
    asker: &Asker,
    name: &str,
    region: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(store::Site, store::Router, Line), SiteError> {
    let url = config.enroll_url().map_err(SiteError::Setup)?;
    let name = domain::rules::site_name(name).map_err(|e| SiteError::Field("name", e.message))?;
    let router_name =
        domain::rules::router_name(&name).map_err(|e| SiteError::Field("name", e.message))?;
    let wanted = region
        .map(str::to_owned)
        .or_else(|| config.regions.first().map(|r| r.name.clone()))
        .unwrap_or_default();
    let (Some(region_config), Some(region)) = (
        region_config(config, &wanted),
        store.find_region_by_name(&wanted).await?,
    ) else {
        return Err(SiteError::Field(
            "region",
            format!("no region named {wanted:?}"),
        ));
    };
    if region_config.remote() {
        let joined = store
            .list_gateways()
            .await?
            .iter()
            .any(|g| g.region_id == region.id && g.live());
        if !joined {
            return Err(SiteError::Setup(format!(
                "region {wanted:?} is served by a remote gateway and none has joined it yet: \
                 run `postern admin add-gateway --region {wanted}` and start the gateway"
            )));
        }
    } else if store.region_tunnel(region.id).await?.is_none() {
        return Err(SiteError::Setup(format!(
            "region {wanted:?} has no tunnel key yet: start postern server once"
        )));
    }
    let router = store
        .create_tunnel_router(store::NewTunnelRouter {
            org_id: asker.org_id,
            site_name: Some(name.clone()),
            region_id: region.id,
            name: router_name,
            tunnel_prefix: region_config.tunnel_prefix(),
            gateway_address: region_config.tunnel_gateway(),
            api_port: 8728,
            ssh_port: 22,
            winbox_port: 8291,
            username: onboarding::MANAGEMENT_USER.into(),
            // Replaced by the one the script carries, when the router fetches it.
            password: random_alnum(MANAGEMENT_PASSWORD_LEN, false),
        })
        .await?;
    let (site, _) = store.get_site(asker.org_id, router.site_id).await?;
    store
        .append_audit(store::NewAudit {
            org_id: asker.org_id,
            at: now,
            actor: asker.actor.clone(),
            actor_address: asker.address,
            action: "site.create".into(),
            target: Some(format!("router:{}", router.id)),
            details: json!({
                "site": site.name,
                "region": region.name,
                "reach": "tunnel",
                "tunnel_address": router.tunnel_address.to_string(),
            }),
        })
        .await?;
    let line = issue_line(store, config, &url, asker, router.id, now).await?;
    Ok((site, router, line))
}

/// Issues a new line for a router of the asker's organisation (the old one stops
/// working), audited as `site.enrollment.issue`.
pub async fn issue_line(
    store: &store::Store,
    config: &ServerConfig,
    url: &PublicUrl,
    asker: &Asker,
    router: RouterId,
    now: DateTime<Utc>,
) -> Result<Line, SiteError> {
    let token = onboarding::generate_token();
    let lifetime = TimeDelta::from_std(config.enrollment_lifetime).unwrap_or(TimeDelta::hours(24));
    let expires_at = now + lifetime;
    let issued = store
        .issue_enrollment(store::NewEnrollment {
            token_hash: hash_token(&token),
            org_id: asker.org_id,
            router_id: router,
            created_by: asker.actor.clone(),
            at: now,
            expires_at,
            audit: store::NewAudit {
                org_id: asker.org_id,
                at: now,
                actor: asker.actor.clone(),
                actor_address: asker.address,
                action: "site.enrollment.issue".into(),
                target: Some(format!("router:{router}")),
                details: json!({ "expires_at": crate::dto::timestamp(expires_at) }),
            },
        })
        .await?;
    Ok(Line {
        command: onboarding::paste_line(url, &token),
        url: url.enroll_url(&token),
        expires_at: issued.expires_at,
    })
}

/// The region's tunnel as a router is told to reach it.
#[derive(Debug, Clone)]
pub struct TunnelPlan {
    pub gateway_address: std::net::IpAddr,
    pub public_key: String,
    pub endpoint_host: String,
    pub endpoint_port: u16,
}

/// Splits `host:port` (`[v6]:port` too).
fn split_endpoint(endpoint: &str) -> Option<(String, u16)> {
    let (host, port) = endpoint.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), port.parse().ok().filter(|p| *p > 0)?))
}

/// The tunnel of `router`'s region: the in-process gateway's when it serves the region
/// (its bound port), else from the configuration and the store's key.
pub async fn tunnel_plan(
    store: &store::Store,
    config: &ServerConfig,
    gateway: Option<&crate::dataplane::GatewayPlane>,
    router: &store::Router,
) -> Result<TunnelPlan, SiteError> {
    use crate::tunnels::TunnelGateway as _;
    if let Some(info) = gateway.and_then(|g| g.tunnels().region(router.region_id)) {
        let (endpoint_host, endpoint_port) = split_endpoint(&info.endpoint).ok_or_else(|| {
            SiteError::Setup(format!(
                "tunnel endpoint {:?} is not host:port",
                info.endpoint
            ))
        })?;
        return Ok(TunnelPlan {
            gateway_address: info.gateway_address.into(),
            public_key: info.public_key,
            endpoint_host,
            endpoint_port,
        });
    }
    let region = store.get_region(router.region_id).await?;
    let region_config = region_config(config, &region.name).ok_or_else(|| {
        SiteError::Setup(format!("region {:?} is not configured here", region.name))
    })?;
    if region_config.remote() {
        // The gateway that joined the region says where it is and what its key is.
        let joined = store
            .list_gateways()
            .await?
            .into_iter()
            .find(|g| g.region_id == region.id && g.live())
            .and_then(|g| g.joined)
            .ok_or_else(|| {
                SiteError::Setup(format!(
                    "region {:?} is served by a remote gateway and none has joined it yet: \
                     run `postern admin add-gateway --region {}` and start the gateway",
                    region.name, region.name
                ))
            })?;
        let (endpoint_host, endpoint_port) =
            split_endpoint(&joined.tunnel_endpoint).ok_or_else(|| {
                SiteError::Setup(format!(
                    "the gateway's tunnel endpoint {:?} is not host:port",
                    joined.tunnel_endpoint
                ))
            })?;
        return Ok(TunnelPlan {
            gateway_address: region_config.tunnel_gateway().into(),
            public_key: joined.wireguard_public_key,
            endpoint_host,
            endpoint_port,
        });
    }
    let key = store.region_tunnel(region.id).await?.ok_or_else(|| {
        SiteError::Setup(format!("region {:?} has no tunnel key yet", region.name))
    })?;
    let endpoint = region_config.tunnel_endpoint(region_config.tunnel_listen());
    let (endpoint_host, endpoint_port) = split_endpoint(&endpoint).ok_or_else(|| {
        SiteError::Setup(format!(
            "the region's tunnel endpoint {endpoint:?} names no port routers can reach (no \
             gateway runs the region in this process): set the region's tunnel_endpoint \
             or tunnel_listen"
        ))
    })?;
    Ok(TunnelPlan {
        gateway_address: region_config.tunnel_gateway().into(),
        public_key: key.public_key,
        endpoint_host,
        endpoint_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_split() {
        assert_eq!(
            split_endpoint("gw.example.net:51820"),
            Some(("gw.example.net".into(), 51820))
        );
        assert_eq!(
            split_endpoint("[2001:db8::1]:51820"),
            Some(("2001:db8::1".into(), 51820))
        );
        assert_eq!(split_endpoint("gw.example.net"), None);
        assert_eq!(split_endpoint("gw:0"), None);
    }
}
