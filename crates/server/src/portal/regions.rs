//! The Regions page: every region with the gateway that serves it (this server's own,
//! or a remote `postern gateway` with its link's state, since when, why it is down, its
//! addresses and its last status report's figures), as `GET /api/regions` has them.

use askama::Template;
use axum::extract::State;
use axum::response::Response;

use super::error::PortalError;
use super::session::Signed;
use super::{Layout, ago, human, render};
use crate::regions::{GatewayState, Mode, RegionRow};
use crate::state::AppState;

struct Row {
    name: String,
    entry_point: String,
    ports: String,
    /// `this server` or `remote`.
    served_by: &'static str,
    /// The gateway's id, when one was added.
    gateway: String,
    /// The badge's class and words (`in-process` for a local region).
    state: &'static str,
    state_label: &'static str,
    /// Since when (empty when not known).
    since: String,
    error: String,
    control_address: String,
    tunnel_endpoint: String,
    routers: String,
    live_connections: String,
    events_pending: String,
    last_report: String,
}

#[derive(Template)]
#[template(path = "regions.html")]
struct RegionsPage {
    l: Layout,
    rows: Vec<Row>,
}

fn row(r: RegionRow, now: chrono::DateTime<chrono::Utc>) -> Row {
    let g = r.gateway;
    let dash = || "—".to_owned();
    let (state, state_label) = match (g.mode, g.state) {
        (Mode::Local, _) | (Mode::Remote, None) => ("local", "in-process"),
        (Mode::Remote, Some(s)) => (
            s.as_str(),
            match s {
                GatewayState::None => "no gateway added",
                GatewayState::Pending => "pending join",
                GatewayState::Connecting => "connecting",
                GatewayState::Up => "up",
                GatewayState::Down => "down",
            },
        ),
    };
    let since = g.since.map_or_else(String::new, |at| {
        let word = if g.state == Some(GatewayState::Pending) {
            "added"
        } else {
            "since"
        };
        format!("{word} {} ({})", ago(now, at), human(at))
    });
    let count = |n: Option<u64>| n.map_or_else(dash, |n| n.to_string());
    Row {
        name: r.region.name,
        entry_point: r.region.entry_point,
        ports: format!("{}–{}", r.region.port_min, r.region.port_max),
        served_by: match g.mode {
            Mode::Local => "this server",
            Mode::Remote => "remote gateway",
        },
        gateway: g.id.map(|id| id.to_string()).unwrap_or_default(),
        state,
        state_label,
        since,
        error: g.error.unwrap_or_default(),
        control_address: g.control_address.unwrap_or_else(dash),
        tunnel_endpoint: g.tunnel_endpoint.unwrap_or_else(dash),
        routers: match (g.routers_up, g.routers) {
            (Some(up), Some(all)) => format!("{up} / {all}"),
            _ => dash(),
        },
        live_connections: count(g.live_connections),
        events_pending: count(g.events_pending),
        last_report: g
            .status_at
            .map_or_else(dash, |at| format!("{} ({})", ago(now, at), human(at))),
    }
}

/// `GET /regions`.
pub async fn regions_get(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<Response, PortalError> {
    let now = state.now();
    let rows = crate::regions::regions(&state)
        .await?
        .into_iter()
        .map(|r| row(r, now))
        .collect();
    render(&RegionsPage {
        l: Layout::new(&state, &signed, "Regions", "regions"),
        rows,
    })
}
