//! Regions and their gateways as the API (`GET /api/regions`), the portal's Regions page
//! and `/metrics` show them: who serves each region (this process, or a remote `postern
//! gateway`), and for a remote one how this server's link to it stands and what its last
//! status report said. Read from the configuration, the store (gateways added and
//! joined) and the links (`links::Link`); nothing here changes anything.

use std::time::SystemTime;

use chrono::{DateTime, Utc};
use domain::GatewayId;

use crate::links::{Link, LinkState};
use crate::state::AppState;
use crate::tunnels::TunnelStatus;

/// Who serves a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// This process's own gateway.
    Local,
    /// A `postern gateway` driven over the control channel.
    Remote,
}

/// How a remote region's gateway stands, as this server sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayState {
    /// No gateway was added for the region.
    None,
    /// Added (`postern admin add-gateway`), not joined yet.
    Pending,
    /// Joined; this server has not reached it since it started.
    Connecting,
    /// The control link is up and converged.
    Up,
    /// Reached before, not now.
    Down,
}

impl GatewayState {
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayState::None => "none",
            GatewayState::Pending => "pending",
            GatewayState::Connecting => "connecting",
            GatewayState::Up => "up",
            GatewayState::Down => "down",
        }
    }
}

/// A region's gateway. Every field but `mode` is `None` for a local region, except
/// `routers_up` when this process serves the region's tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionGateway {
    pub mode: Mode,
    pub id: Option<GatewayId>,
    pub state: Option<GatewayState>,
    /// Since when `state` holds (up or down since; a pending gateway's addition).
    pub since: Option<DateTime<Utc>>,
    /// Why the link is down.
    pub error: Option<String>,
    pub control_address: Option<String>,
    pub tunnel_endpoint: Option<String>,
    pub joined_at: Option<DateTime<Utc>>,
    /// Until when a pending gateway's join token works.
    pub token_expires_at: Option<DateTime<Utc>>,
    /// When the gateway made its last status report (its clock).
    pub status_at: Option<DateTime<Utc>>,
    /// Routers admitted to the region's tunnel, and those heard from within
    /// [`ONLINE_WITHIN`](crate::tunnels::ONLINE_WITHIN).
    pub routers: Option<u64>,
    pub routers_up: Option<u64>,
    pub live_connections: Option<u64>,
    pub events_pending: Option<u64>,
    pub events_dropped: Option<u64>,
}

impl RegionGateway {
    fn local(routers: Option<(u64, u64)>) -> Self {
        Self::empty(Mode::Local, None, routers)
    }

    fn empty(mode: Mode, state: Option<GatewayState>, routers: Option<(u64, u64)>) -> Self {
        RegionGateway {
            mode,
            id: None,
            state,
            since: None,
            error: None,
            control_address: None,
            tunnel_endpoint: None,
            joined_at: None,
            token_expires_at: None,
            status_at: None,
            routers: routers.map(|(all, _)| all),
            routers_up: routers.map(|(_, up)| up),
            live_connections: None,
            events_pending: None,
            events_dropped: None,
        }
    }
}

/// A region with its gateway.
#[derive(Debug, Clone)]
pub struct RegionRow {
    pub region: store::Region,
    pub gateway: RegionGateway,
}

/// How many peers of a status report are up at `now`: heard from within
/// [`ONLINE_WITHIN`](crate::tunnels::ONLINE_WITHIN), as a router's `online` is computed.
pub fn peers_up(status: &control::msg::Status, now: SystemTime) -> u64 {
    let up = status
        .peers
        .iter()
        .filter(|p| {
            TunnelStatus {
                endpoint: p.endpoint,
                last_handshake_at: None,
                last_seen_at: p.last_seen_at.map(SystemTime::from),
                rx_bytes: 0,
                tx_bytes: 0,
            }
            .online(now)
        })
        .count();
    u64::try_from(up).unwrap_or(u64::MAX)
}

/// Every region (by name) with its gateway as this server sees it now.
pub async fn regions(state: &AppState) -> Result<Vec<RegionRow>, store::StoreError> {
    let regions = state.store.list_regions().await?;
    let gateways = state.store.list_gateways().await?;
    let links = state.gateway.as_ref().map(|g| g.links());
    let figures = state
        .gateway
        .as_ref()
        .map(|g| g.tunnels().figures())
        .unwrap_or_default();
    let now = SystemTime::now();
    Ok(regions
        .into_iter()
        .map(|region| {
            let remote = state
                .config
                .regions
                .iter()
                .any(|c| c.name == region.name && c.remote());
            let gateway = if remote {
                let link = links.and_then(|l| l.link(region.id));
                let rows: Vec<&store::Gateway> = gateways
                    .iter()
                    .filter(|g| g.region_id == region.id && g.removed_at.is_none())
                    .collect();
                remote_gateway(&rows, link.as_deref(), now)
            } else {
                let routers = figures.iter().find(|f| f.region == region.name).map(|f| {
                    (
                        u64::try_from(f.stats.peers).unwrap_or(u64::MAX),
                        u64::try_from(f.peers_up).unwrap_or(u64::MAX),
                    )
                });
                RegionGateway::local(routers)
            };
            RegionRow { region, gateway }
        })
        .collect())
}

/// A remote region's gateway from its rows (not removed, oldest first) and the link
/// to it: the joined one if any, else the newest pending one.
fn remote_gateway(rows: &[&store::Gateway], link: Option<&Link>, now: SystemTime) -> RegionGateway {
    let joined = rows.iter().rev().find(|g| g.joined.is_some());
    let Some(g) = joined.or_else(|| rows.last()) else {
        return RegionGateway::empty(Mode::Remote, Some(GatewayState::None), None);
    };
    let mut out = RegionGateway::empty(Mode::Remote, Some(GatewayState::Pending), None);
    out.id = Some(g.id);
    let Some(j) = &g.joined else {
        out.since = Some(g.created_at);
        out.token_expires_at = Some(g.token_expires_at);
        return out;
    };
    out.control_address = Some(j.control_address.clone());
    out.tunnel_endpoint = Some(j.tunnel_endpoint.clone());
    out.joined_at = Some(j.at);
    // The link this server holds, if it is to this gateway (a refresh may lag a join).
    let link = link.filter(|l| l.gateway == g.id);
    let (state, since, error) = match link.map(Link::state) {
        None | Some(LinkState::Connecting) => (GatewayState::Connecting, None, None),
        Some(LinkState::Up { since }) => (GatewayState::Up, Some(since), None),
        Some(LinkState::Down { since, error }) => (GatewayState::Down, Some(since), Some(error)),
    };
    out.state = Some(state);
    out.since = since;
    out.error = error;
    if let Some(status) = link.and_then(Link::status) {
        out.status_at = Some(status.at);
        out.routers = Some(u64::try_from(status.peers.len()).unwrap_or(u64::MAX));
        out.routers_up = Some(peers_up(&status, now));
        out.live_connections = Some(u64::try_from(status.connections.len()).unwrap_or(u64::MAX));
        out.events_pending = Some(status.events_pending);
        out.events_dropped = Some(status.events_dropped);
    }
    out
}
