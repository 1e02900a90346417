//! Prometheus metrics, hand-rolled: a request counter by route, method and status, and a
//! latency histogram by route, rendered in the text exposition format at `/metrics`,
//! with the in-process gateway's and tunnels' figures and, per remote gateway, its
//! link's state and its last status report's figures.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

#[derive(Default)]
struct Inner {
    requests: BTreeMap<(String, String, u16), u64>,
    latency: BTreeMap<String, Histogram>,
}

/// The process's request metrics; cheap to clone.
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Mutex<Inner>>,
    /// What the listeners refused or cut (`listen`).
    pub connections: Arc<crate::listen::ConnectionStats>,
    /// Sign-ins refused before any password was checked (`portal::login`).
    pub logins: Arc<LoginStats>,
}

/// Sign-ins the login's bounds refused.
#[derive(Debug, Default)]
pub struct LoginStats {
    /// Refused by the per-address or per-(user, address) throttle.
    pub throttled: AtomicU64,
    /// Refused because the password-hashing queue stayed full (503).
    pub busy: AtomicU64,
}

impl Metrics {
    /// Records one finished request.
    pub fn record(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        *inner
            .requests
            .entry((route.to_owned(), method.to_owned(), status))
            .or_default() += 1;
        let h = inner.latency.entry(route.to_owned()).or_default();
        for (slot, bound) in h.counts.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *slot += 1;
            }
        }
        h.sum += seconds;
        h.count += 1;
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_connections(&mut out);
        let Ok(inner) = self.inner.lock() else {
            return out;
        };
        out.push_str(
            "# HELP postern_http_requests_total HTTP requests by route, method and status.\n",
        );
        out.push_str("# TYPE postern_http_requests_total counter\n");
        for ((route, method, status), n) in &inner.requests {
            let _ = writeln!(
                out,
                "postern_http_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {n}",
                escape(route),
                escape(method)
            );
        }
        out.push_str(
            "# HELP postern_http_request_duration_seconds HTTP request latency by route.\n",
        );
        out.push_str("# TYPE postern_http_request_duration_seconds histogram\n");
        for (route, h) in &inner.latency {
            let route = escape(route);
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "postern_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "postern_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "postern_http_request_duration_seconds_sum{{route=\"{route}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "postern_http_request_duration_seconds_count{{route=\"{route}\"}} {}",
                h.count
            );
        }
        out
    }
}

impl Metrics {
    fn render_connections(&self, out: &mut String) {
        let c = &self.connections;
        let counter = |out: &mut String, name: &str, help: &str, rows: &[(&str, &AtomicU64)]| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            for (reason, n) in rows {
                let _ = writeln!(
                    out,
                    "{name}{{reason=\"{reason}\"}} {}",
                    n.load(Ordering::Relaxed)
                );
            }
        };
        counter(
            out,
            "postern_http_connections_refused_total",
            "Connections closed at accept, by reason.",
            &[("per_address_limit", &c.refused_per_address)],
        );
        counter(
            out,
            "postern_http_connections_timed_out_total",
            "Connections closed for being too slow, by reason.",
            &[("headers", &c.header_timeouts), ("idle", &c.idle_timeouts)],
        );
        let _ = writeln!(
            out,
            "# HELP postern_http_connections_open Connections open now.\n\
             # TYPE postern_http_connections_open gauge\n\
             postern_http_connections_open {}",
            c.open.load(Ordering::Relaxed)
        );
        counter(
            out,
            "postern_logins_refused_total",
            "Sign-ins refused before a password was checked, by reason.",
            &[
                ("throttled", &self.logins.throttled),
                ("busy", &self.logins.busy),
            ],
        );
    }
}

/// The orchestrator's API connections to routers: opened on demand, closed when idle.
pub fn render_router_connections(stats: &orchestrator::ConnectionStats, out: &mut String) {
    let _ = write!(
        out,
        "# HELP postern_router_connections_open API connections to routers open now.\n\
         # TYPE postern_router_connections_open gauge\n\
         postern_router_connections_open {}\n\
         # HELP postern_router_connections_opened_total API connections to routers opened (logged in).\n\
         # TYPE postern_router_connections_opened_total counter\n\
         postern_router_connections_opened_total {}\n\
         # HELP postern_router_connections_closed_idle_total API connections closed after router_idle with no job using them.\n\
         # TYPE postern_router_connections_closed_idle_total counter\n\
         postern_router_connections_closed_idle_total {}\n\
         # HELP postern_router_connections_closed_after_scan_total API connections a reconcile scan opened and closed when done.\n\
         # TYPE postern_router_connections_closed_after_scan_total counter\n\
         postern_router_connections_closed_after_scan_total {}\n",
        stats.open, stats.opened, stats.closed_idle, stats.closed_after_scan
    );
}

/// The management tunnels' figures, one series per region.
pub fn render_tunnels(regions: &[crate::tunnels::RegionFigures], out: &mut String) {
    use std::fmt::Write as _;
    if regions.is_empty() {
        return;
    }
    type Pick = fn(&crate::tunnels::RegionFigures) -> u64;
    let series: [(&str, &str, &str, Pick); 12] = [
        (
            "postern_tunnel_peers",
            "gauge",
            "Routers admitted to the region's tunnel.",
            |f| f.stats.peers as u64,
        ),
        (
            "postern_tunnel_peers_up",
            "gauge",
            "Admitted routers heard from within about three keepalives.",
            |f| f.peers_up as u64,
        ),
        (
            "postern_tunnel_streams",
            "gauge",
            "TCP streams open inside the tunnel.",
            |f| f.stats.streams as u64,
        ),
        (
            "postern_tunnel_handshakes_total",
            "counter",
            "Handshakes completed.",
            |f| f.stats.table.handshakes,
        ),
        (
            "postern_tunnel_handshakes_refused_total",
            "counter",
            "Handshakes answered with a cookie (rate limit).",
            |f| f.stats.table.cookie_replies,
        ),
        (
            "postern_tunnel_unknown_peer_total",
            "counter",
            "Datagrams from keys or sessions the gateway does not know.",
            |f| f.stats.table.unknown_peer,
        ),
        (
            "postern_tunnel_invalid_total",
            "counter",
            "Datagrams refused as malformed or unauthenticated.",
            |f| f.stats.table.invalid,
        ),
        (
            "postern_tunnel_wrong_source_total",
            "counter",
            "Packets whose inner source was not the peer's address.",
            |f| f.stats.table.wrong_source,
        ),
        (
            "postern_tunnel_streams_refused_total",
            "counter",
            "Dials refused at the stream limit.",
            |f| f.stats.streams_refused,
        ),
        (
            "postern_tunnel_datagrams_in_total",
            "counter",
            "Datagrams received.",
            |f| f.stats.datagrams_in,
        ),
        (
            "postern_tunnel_datagrams_out_total",
            "counter",
            "Datagrams sent.",
            |f| f.stats.datagrams_out,
        ),
        (
            "postern_tunnel_send_errors_total",
            "counter",
            "Datagrams the socket failed to send.",
            |f| f.stats.send_errors,
        ),
    ];
    for (name, kind, help, pick) in series {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for f in regions {
            let _ = writeln!(
                out,
                "{name}{{region=\"{}\"}} {}",
                escape(&f.region),
                pick(f)
            );
        }
    }
}

/// A remote gateway as `/metrics` shows it: this server's link to it and the figures of
/// its last status report.
#[derive(Debug, Clone)]
pub struct RemoteGateway {
    pub gateway: String,
    pub region: String,
    pub up: bool,
    pub status: Option<control::msg::Status>,
    /// When its control-channel certificate ends (Unix time), as it presented it or as
    /// this server renewed it since; `None` before the first connection.
    pub certificate_expires: Option<i64>,
}

/// The remote gateways' series, labelled by gateway id and region name.
/// `postern_gateway_connections_refused_total` carries `gateway` and `region` here and
/// only `reason` for the in-process gateway (whose header `in_process_refusals` says
/// was written).
pub fn render_remote_gateways(
    gateways: &[RemoteGateway],
    in_process_refusals: bool,
    now: std::time::SystemTime,
    out: &mut String,
) {
    use control::msg::Refusal;
    if gateways.is_empty() {
        return;
    }
    let labels = |g: &RemoteGateway| {
        format!(
            "gateway=\"{}\",region=\"{}\"",
            escape(&g.gateway),
            escape(&g.region)
        )
    };
    let _ = writeln!(
        out,
        "# HELP postern_gateway_link_up Whether this server's control link to the remote gateway is up (1) or not (0).\n\
         # TYPE postern_gateway_link_up gauge"
    );
    for g in gateways {
        let _ = writeln!(
            out,
            "postern_gateway_link_up{{{}}} {}",
            labels(g),
            u8::from(g.up)
        );
    }
    let _ = writeln!(
        out,
        "# HELP postern_gateway_certificate_expires_seconds When the remote gateway's control-channel certificate ends (Unix time); renewed over the channel when a third of its lifetime is left.\n\
         # TYPE postern_gateway_certificate_expires_seconds gauge"
    );
    for g in gateways {
        if let Some(at) = g.certificate_expires {
            let _ = writeln!(
                out,
                "postern_gateway_certificate_expires_seconds{{{}}} {at}",
                labels(g)
            );
        }
    }
    type Pick = fn(&control::msg::Status, std::time::SystemTime) -> u64;
    let series: [(&str, &str, &str, Pick); 6] = [
        (
            "postern_gateway_last_status_timestamp_seconds",
            "gauge",
            "When the remote gateway made its last status report (Unix time, its clock).",
            |s, _| u64::try_from(s.at.timestamp()).unwrap_or(0),
        ),
        (
            "postern_gateway_peers",
            "gauge",
            "Routers admitted to the remote gateway's tunnels, as of its last status report.",
            |s, _| u64::try_from(s.peers.len()).unwrap_or(u64::MAX),
        ),
        (
            "postern_gateway_peers_up",
            "gauge",
            "Of those, heard from within about three keepalives.",
            crate::regions::peers_up,
        ),
        (
            "postern_gateway_connections_open",
            "gauge",
            "Connections open through the remote gateway's entry ports, as of its last status report.",
            |s, _| u64::try_from(s.connections.len()).unwrap_or(u64::MAX),
        ),
        (
            "postern_gateway_events_pending",
            "gauge",
            "Events the remote gateway holds until a server records them.",
            |s, _| s.events_pending,
        ),
        (
            "postern_gateway_events_dropped_total",
            "counter",
            "Events the remote gateway dropped for want of room (openings and refusals only).",
            |s, _| s.events_dropped,
        ),
    ];
    for (name, kind, help, pick) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for g in gateways {
            if let Some(status) = &g.status {
                let _ = writeln!(out, "{name}{{{}}} {}", labels(g), pick(status, now));
            }
        }
    }
    if !in_process_refusals {
        out.push_str(
            "# HELP postern_gateway_connections_refused_total Connections the gateway reset at once, by reason.\n\
             # TYPE postern_gateway_connections_refused_total counter\n",
        );
    }
    for g in gateways {
        let Some(status) = &g.status else { continue };
        for refusal in [
            Refusal::SourceNotAllowed,
            Refusal::TooManyConnections,
            Refusal::TooManyFromSource,
        ] {
            let label = match refusal {
                Refusal::SourceNotAllowed => gateway::Refusal::SourceNotAllowed.label(),
                Refusal::TooManyConnections => gateway::Refusal::TooManyConnections.label(),
                Refusal::TooManyFromSource => gateway::Refusal::TooManyFromSource.label(),
            };
            let n: u64 = status
                .refused
                .iter()
                .filter(|(r, _)| *r == refusal)
                .map(|(_, n)| *n)
                .sum();
            let _ = writeln!(
                out,
                "postern_gateway_connections_refused_total{{{},reason=\"{label}\"}} {n}",
                labels(g)
            );
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `/metrics` itself: the text exposition (the main listener's route checks the token
/// first; the metrics listener serves this as it is).
pub async fn exposition(State(state): State<crate::state::AppState>) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let mut text = state.metrics.render();
    // Jobs the router refused as unknown or invalid: not retried, to be acted on.
    if let Ok(stuck) = state.store.count_stuck_jobs().await {
        text.push_str(
            "# HELP postern_router_jobs_stuck Router jobs stopped because the router refused a command as unknown or invalid.\n",
        );
        text.push_str("# TYPE postern_router_jobs_stuck gauge\n");
        text.push_str(&format!("postern_router_jobs_stuck {stuck}\n"));
    }
    let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    text.push_str(&format!(
        "# HELP postern_grant_creates_refused_total Grant creates refused by back-pressure, by reason.\n\
         # TYPE postern_grant_creates_refused_total counter\n\
         postern_grant_creates_refused_total{{reason=\"rate_limit\"}} {}\n\
         postern_grant_creates_refused_total{{reason=\"live_grant_cap\"}} {}\n",
        load(&state.creates.refused_rate),
        load(&state.creates.refused_cap),
    ));
    if let Some(orchestrator) = &state.orchestrator {
        render_router_connections(&orchestrator.connection_stats(), &mut text);
    }
    if let Some(gateway) = &state.gateway {
        text.push_str(
            "# HELP postern_gateway_connections_refused_total Connections the gateway reset at once, by reason.\n\
             # TYPE postern_gateway_connections_refused_total counter\n",
        );
        for refusal in gateway::Refusal::ALL {
            text.push_str(&format!(
                "postern_gateway_connections_refused_total{{reason=\"{}\"}} {}\n",
                refusal.label(),
                gateway.refused(refusal)
            ));
        }
        render_tunnels(&gateway.tunnels().figures(), &mut text);
        {
            let links = gateway.links();
            let names: std::collections::HashMap<domain::RegionId, String> = state
                .store
                .list_regions()
                .await
                .map(|rs| rs.into_iter().map(|r| (r.id, r.name)).collect())
                .unwrap_or_default();
            let mut remote: Vec<RemoteGateway> = links
                .remote()
                .iter()
                .map(|l| RemoteGateway {
                    gateway: l.gateway.to_string(),
                    region: names
                        .get(&l.region)
                        .cloned()
                        .unwrap_or_else(|| l.region.to_string()),
                    up: l.up(),
                    status: l.status(),
                    certificate_expires: l.certificate().map(|c| c.not_after.timestamp()),
                })
                .collect();
            remote.sort_by(|a, b| a.region.cmp(&b.region));
            render_remote_gateways(&remote, true, std::time::SystemTime::now(), &mut text);
        }
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// Middleware: times each request and records it under its route template (never the raw
/// path, so ids do not explode the label set).
pub async fn track(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let response = next.run(req).await;
    let seconds = started.elapsed().as_secs_f64();
    let status = response.status().as_u16();
    metrics.record(&route, &method, status, seconds);
    tracing::debug!(%route, %method, status, ms = seconds * 1000.0, "request");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_remote_gateways_with_their_link_and_last_status() {
        let now = std::time::SystemTime::now();
        let at = chrono::DateTime::<chrono::Utc>::from(now);
        let peer = |seen: Option<chrono::DateTime<chrono::Utc>>| control::msg::PeerStatus {
            router: domain::RouterId::new(),
            endpoint: None,
            last_handshake_at: seen,
            last_seen_at: seen,
            rx_bytes: 0,
            tx_bytes: 0,
        };
        let status = control::msg::Status {
            at,
            peers: vec![
                peer(Some(at)),
                peer(Some(at - chrono::TimeDelta::seconds(300))),
                peer(None),
            ],
            connections: vec![],
            tunnels: vec![],
            refused: vec![(control::msg::Refusal::SourceNotAllowed, 4)],
            events_dropped: 2,
            events_pending: 7,
        };
        let gateways = [
            RemoteGateway {
                gateway: "g-eu".into(),
                region: "eu".into(),
                up: true,
                status: Some(status),
                certificate_expires: Some(1_900_000_000),
            },
            RemoteGateway {
                gateway: "g-us".into(),
                region: "us".into(),
                up: false,
                status: None,
                certificate_expires: None,
            },
        ];
        let mut text = String::new();
        render_remote_gateways(&gateways, false, now, &mut text);
        for line in [
            "postern_gateway_link_up{gateway=\"g-eu\",region=\"eu\"} 1",
            "postern_gateway_link_up{gateway=\"g-us\",region=\"us\"} 0",
            "postern_gateway_certificate_expires_seconds{gateway=\"g-eu\",region=\"eu\"} 1900000000",
            "postern_gateway_peers{gateway=\"g-eu\",region=\"eu\"} 3",
            "postern_gateway_peers_up{gateway=\"g-eu\",region=\"eu\"} 1",
            "postern_gateway_connections_open{gateway=\"g-eu\",region=\"eu\"} 0",
            "postern_gateway_events_pending{gateway=\"g-eu\",region=\"eu\"} 7",
            "postern_gateway_events_dropped_total{gateway=\"g-eu\",region=\"eu\"} 2",
            "postern_gateway_connections_refused_total{gateway=\"g-eu\",region=\"eu\",reason=\"source_not_allowed\"} 4",
            "postern_gateway_connections_refused_total{gateway=\"g-eu\",region=\"eu\",reason=\"connection_cap\"} 0",
            "# TYPE postern_gateway_connections_refused_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing in:\n{text}"
            );
        }
        // No figures for a gateway that never reported.
        assert!(!text.contains("postern_gateway_peers{gateway=\"g-us\""));
        assert!(!text.contains("postern_gateway_certificate_expires_seconds{gateway=\"g-us\""));
        let mut again = String::new();
        render_remote_gateways(&gateways, true, now, &mut again);
        assert!(!again.contains("# TYPE postern_gateway_connections_refused_total"));
    }

    #[test]
    fn renders_counters_and_histograms() {
        let m = Metrics::default();
        m.record("/api/routers", "GET", 200, 0.002);
        m.record("/api/routers", "GET", 200, 0.2);
        let text = m.render();
        assert!(text.contains(
            "postern_http_requests_total{route=\"/api/routers\",method=\"GET\",status=\"200\"} 2"
        ));
        assert!(text.contains(
            "postern_http_request_duration_seconds_bucket{route=\"/api/routers\",le=\"0.0025\"} 1"
        ));
        assert!(
            text.contains("postern_http_request_duration_seconds_count{route=\"/api/routers\"} 2")
        );
    }

    #[test]
    fn renders_the_routers_connections() {
        let mut text = String::new();
        render_router_connections(
            &orchestrator::ConnectionStats {
                open: 2,
                opened: 7,
                closed_idle: 4,
                closed_after_scan: 1,
            },
            &mut text,
        );
        for line in [
            "# TYPE postern_router_connections_open gauge",
            "postern_router_connections_open 2",
            "postern_router_connections_opened_total 7",
            "# TYPE postern_router_connections_closed_idle_total counter",
            "postern_router_connections_closed_idle_total 4",
            "postern_router_connections_closed_after_scan_total 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }
}
