//! `postern gateway`: a region's data plane as a process of its own. Joined once
//! (`--join URL --token T`, the token from `postern admin add-gateway`): it makes its
//! control-channel key and WireGuard key here, sends their public halves and where it
//! is reached, and keeps the identity it gets back in its data directory. Then, at
//! every start, it runs the region's tunnel and entry ports (`gateway::Node`), accepts
//! the servers' control channels (mTLS: only certificates of the control plane's CA
//! with the server role), and serves `/healthz` and `/metrics`. It holds no database
//! credentials and never opens a database.
//!
//! The data directory (0700): `gateway.toml` (identity and addresses), `control.key`
//! and `wireguard.key` (0600), `control.crt`, `ca.crt`. A server renews `control.crt`
//! over the control channel when a third of its lifetime is left (a request made with
//! `control.key`, which never changes): the file is replaced whole and new control
//! connections get the new certificate at once, without a restart.

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use control::msg::{JoinRequest, JoinResponse};
use serde::{Deserialize, Serialize};

/// Control channels served at once (a few servers each, reconnecting).
const MAX_CONTROL_CONNECTIONS: usize = 64;

#[derive(clap::Args)]
pub struct Args {
    /// The gateway's data directory (its identity and keys) [default: ./postern-gateway].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Join the control plane at this URL (the server's public URL) with --token, once.
    #[arg(long, requires = "token")]
    join: Option<String>,
    /// The join token `postern admin add-gateway` printed (or POSTERN_GATEWAY_TOKEN).
    #[arg(long, env = "POSTERN_GATEWAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Where the control channel listens (TCP) [default: 0.0.0.0:7443].
    #[arg(long)]
    control_listen: Option<SocketAddr>,
    /// `host:port` servers dial, told at join [default: the listen address, when it is
    /// a specific one].
    #[arg(long)]
    control_address: Option<String>,
    /// Where the region's WireGuard listens (UDP) [default: 0.0.0.0:51820].
    #[arg(long)]
    tunnel_listen: Option<SocketAddr>,
    /// `host:port` routers send WireGuard to, told at join [default: the listen
    /// address, when it is a specific one].
    #[arg(long)]
    tunnel_endpoint: Option<String>,
    /// The host operators connect to for entry ports, told at join [default: the
    /// entry bind address, when it is a specific one].
    #[arg(long)]
    entry_host: Option<String>,
    /// Where entry ports listen [default: 0.0.0.0].
    #[arg(long)]
    entry_bind: Option<IpAddr>,
    /// Where /healthz and /metrics are served [default: 127.0.0.1:9810].
    #[arg(long)]
    http_listen: Option<SocketAddr>,
    /// Join over plain http:// (a lab: the token and the CA certificate would travel in
    /// clear).
    #[arg(long)]
    lab: bool,
    /// A CA certificate (PEM) to trust for the join's HTTPS, besides the system's.
    #[arg(long)]
    join_ca_file: Option<PathBuf>,
}

/// `gateway.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    gateway_id: domain::GatewayId,
    /// The server URL it joined.
    joined: String,
    region_id: domain::RegionId,
    region: String,
    prefix: ipnet::Ipv4Net,
    gateway_address: std::net::Ipv4Addr,
    port_min: u16,
    port_max: u16,
    control_listen: SocketAddr,
    control_address: String,
    tunnel_listen: SocketAddr,
    tunnel_endpoint: String,
    entry_host: String,
    entry_bind: IpAddr,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    super::server::init_logs(server::config::LogFormat::Text);
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("postern-gateway"));
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(args, dir))
}

fn private_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("making {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("securing {}", dir.display()))?;
    Ok(())
}

/// Writes a file, readable by its owner only when `secret`.
fn write_file(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    let mode = if secret { 0o600 } else { 0o644 };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn read_file(dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// An address to tell others: the given one, else the bound one if it is specific.
fn advertised(given: Option<&str>, bound: SocketAddr, what: &str) -> anyhow::Result<String> {
    if let Some(g) = given {
        return Ok(g.to_owned());
    }
    if bound.ip().is_unspecified() {
        bail!("--{what} is needed: the listen address {bound} is not one others can reach");
    }
    Ok(bound.to_string())
}

/// Joins the control plane: keys made here, the request sent, the identity written.
fn join(
    args: &Args,
    dir: &Path,
    url: &str,
    token: &str,
    control: SocketAddr,
    tunnel: SocketAddr,
) -> anyhow::Result<Identity> {
    if dir.join("gateway.toml").exists() {
        bail!(
            "{} already holds a joined gateway: start it without --join, or use a new data directory",
            dir.display()
        );
    }
    let origin = launcher::link::Origin::parse(url)
        .map_err(|e| anyhow::anyhow!("{url:?} is not a server URL: {e}"))?;
    if origin.scheme == launcher::link::Scheme::Http && !args.lab {
        bail!(
            "refusing to join over plain http:// (the token would travel in clear): use https://, or --lab for a lab"
        );
    }
    let entry_bind = args.entry_bind.unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let control_address = advertised(args.control_address.as_deref(), control, "control-address")?;
    let tunnel_endpoint = advertised(args.tunnel_endpoint.as_deref(), tunnel, "tunnel-endpoint")?;
    let entry_host = match &args.entry_host {
        Some(h) => h.clone(),
        None if !entry_bind.is_unspecified() => entry_bind.to_string(),
        None => bail!("--entry-host is needed: the entry ports listen on every address"),
    };
    let (control_key, csr_pem) = control::pki::gateway_request()?;
    let wireguard = tunnel::PrivateKey::generate()
        .map_err(|e| anyhow::anyhow!("cannot make the WireGuard key: {e}"))?;
    let request = JoinRequest {
        token: token.to_owned(),
        csr_pem,
        wireguard_public_key: wireguard.public_key().to_base64(),
        control_address: control_address.clone(),
        tunnel_endpoint: tunnel_endpoint.clone(),
        entry_host: entry_host.clone(),
    };
    let body = serde_json::to_vec(&request)?;
    let trust = launcher::redeem::Trust {
        ca_file: args.join_ca_file.clone(),
    };
    let headers = vec![
        "Content-Type: application/json".to_owned(),
        concat!("User-Agent: postern-gateway/", env!("CARGO_PKG_VERSION")).to_owned(),
    ];
    let (status, answer) = launcher::redeem::request(
        &origin,
        "POST",
        "/api/gateways/join",
        &headers,
        &body,
        &trust,
        1 << 20,
    )
    .map_err(|e| anyhow::anyhow!("cannot reach {url}: {e}"))?;
    if status != 201 {
        let detail = serde_json::from_slice::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| {
                let detail = v.get("detail")?.as_str()?.to_owned();
                let fields: Vec<String> = v
                    .get("errors")
                    .and_then(serde_json::Value::as_array)
                    .map(|e| {
                        e.iter()
                            .filter_map(|f| {
                                Some(format!(
                                    "{}: {}",
                                    f.get("field")?.as_str()?,
                                    f.get("message")?.as_str()?
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                Some(if fields.is_empty() {
                    detail
                } else {
                    format!("{detail} ({})", fields.join("; "))
                })
            })
            .unwrap_or_else(|| format!("HTTP {status}"));
        bail!("the join was refused: {detail}");
    }
    let joined: JoinResponse =
        serde_json::from_slice(&answer).context("the server's answer to the join")?;
    let identity = Identity {
        gateway_id: joined.gateway_id,
        joined: url.to_owned(),
        region_id: joined.region.id,
        region: joined.region.name.clone(),
        prefix: joined
            .region
            .prefix
            .parse()
            .with_context(|| format!("the region's prefix {:?}", joined.region.prefix))?,
        gateway_address: joined.region.gateway_address,
        port_min: joined.region.port_min,
        port_max: joined.region.port_max,
        control_listen: control,
        control_address,
        tunnel_listen: tunnel,
        tunnel_endpoint,
        entry_host,
        entry_bind,
    };
    private_dir(dir)?;
    write_file(&dir.join("control.key"), control_key.expose(), true)?;
    write_file(&dir.join("wireguard.key"), &wireguard.to_base64(), true)?;
    write_file(&dir.join("control.crt"), &joined.certificate_pem, false)?;
    write_file(&dir.join("ca.crt"), &joined.ca_pem, false)?;
    write_file(
        &dir.join("gateway.toml"),
        &toml::to_string(&identity)?,
        false,
    )?;
    tracing::info!(gateway = %identity.gateway_id, region = %identity.region, "joined the control plane");
    Ok(identity)
}

async fn serve(args: Args, dir: PathBuf) -> anyhow::Result<()> {
    // Bind first: an ephemeral port given as :0 is told at join as it is bound.
    let joined_before: Option<Identity> = match std::fs::read_to_string(dir.join("gateway.toml")) {
        Ok(text) if args.join.is_none() => {
            Some(toml::from_str(&text).context("reading gateway.toml")?)
        }
        _ => None,
    };
    let control_at = args
        .control_listen
        .or(joined_before.as_ref().map(|i| i.control_listen))
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 7443)));
    let tunnel_at = args
        .tunnel_listen
        .or(joined_before.as_ref().map(|i| i.tunnel_listen))
        .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 51820)));
    let control_listener = tokio::net::TcpListener::bind(control_at)
        .await
        .with_context(|| format!("cannot listen for the control channel on {control_at}"))?;
    let udp = tunnel::bind_udp(tunnel_at)
        .with_context(|| format!("cannot bind the tunnel's UDP socket {tunnel_at}"))?;
    let control_bound = control_listener.local_addr()?;
    let tunnel_bound = udp.local_addr()?;
    let identity = match (&args.join, joined_before) {
        (Some(url), _) => {
            let token = args.token.clone().unwrap_or_default();
            let (url, dir2, args_ref) = (url.clone(), dir.clone(), &args);
            // The join is one blocking HTTP exchange.
            tokio::task::block_in_place(|| {
                join(args_ref, &dir2, &url, &token, control_bound, tunnel_bound)
            })?
        }
        (None, Some(identity)) => identity,
        (None, None) => bail!(
            "{} holds no joined gateway: join first with --join URL --token T (from `postern admin add-gateway`)",
            dir.display()
        ),
    };
    let control_key = control::pki::KeyPem::new(read_file(&dir, "control.key")?);
    let certificate = read_file(&dir, "control.crt")?;
    let ca = read_file(&dir, "ca.crt")?;
    let certificate = Arc::new(
        control::pki::GatewayCertificate::new(identity.gateway_id, &certificate, &control_key, &ca)
            .context("control.crt, control.key and ca.crt")?,
    );
    let tls = Arc::new(control::pki::gateway_tls_renewable(certificate.clone())?);
    let private_key = tunnel::PrivateKey::from_base64(read_file(&dir, "wireguard.key")?.trim())
        .map_err(|e| anyhow::anyhow!("wireguard.key: {e}"))?;
    let ports = gateway::PortRange::new(identity.port_min, identity.port_max)?;
    let region = gateway::RegionConfig {
        id: identity.region_id,
        name: identity.region.clone(),
        private_key,
        gateway_address: identity.gateway_address,
        prefix: identity.prefix,
        udp: gateway::Udp::Socket(udp),
        endpoint: identity.tunnel_endpoint.clone(),
        entry_bind: identity.entry_bind,
        ports,
    };
    let mut node_config = gateway::NodeConfig::new(identity.gateway_id.to_string(), vec![region]);
    node_config.renewal = Some(gateway::node::Renewal {
        certificate: certificate.clone(),
        file: Some(dir.join("control.crt")),
    });
    let node = gateway::Node::start(node_config).await?;
    tracing::info!(not_after = %certificate.info().not_after, "control-channel certificate loaded");
    let http_at = args
        .http_listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9810)));
    let http = tokio::net::TcpListener::bind(http_at)
        .await
        .with_context(|| format!("cannot listen for /healthz and /metrics on {http_at}"))?;
    let http_bound = http.local_addr()?;
    // Standard output, for people and scripts: where everything is.
    println!(
        "gateway {} of region {}: control channel on {control_bound}, WireGuard on {tunnel_bound}, entry ports on {} ({}-{}), health on http://{http_bound}",
        identity.gateway_id,
        identity.region,
        identity.entry_bind,
        identity.port_min,
        identity.port_max
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let health = tokio::spawn(serve_health(
        http,
        node.clone(),
        identity.clone(),
        certificate.clone(),
        shutdown.clone(),
    ));
    let accept = tokio::spawn(accept_control(
        control_listener,
        tls,
        node.clone(),
        shutdown.clone(),
    ));
    super::server::shutdown_signal()?.await;
    tracing::info!("stopping: closing every entry port");
    shutdown.cancel();
    node.shutdown().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = accept.await;
        let _ = health.await;
    })
    .await;
    Ok(())
}

async fn accept_control(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    node: gateway::Node,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONTROL_CONNECTIONS));
    loop {
        let (tcp, from) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "control channel: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%from, "control channel: too many connections; refused");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (tls, handler) = (tls.clone(), node.handler());
        tokio::spawn(async move {
            let _slot = slot;
            match control::channel::serve_tls(
                tcp,
                tls,
                handler,
                control::channel::ChannelConfig::default(),
            )
            .await
            {
                Ok(()) => tracing::info!(%from, "control channel closed"),
                Err(e) => tracing::warn!(%from, error = %e, "control channel ended"),
            }
        });
    }
}

async fn serve_health(
    listener: tokio::net::TcpListener,
    node: gateway::Node,
    identity: Identity,
    certificate: Arc<control::pki::GatewayCertificate>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use axum::routing::get;
    let identity = Arc::new(identity);
    let (n1, n2, id1) = (node.clone(), node, identity.clone());
    let app = axum::Router::new()
        .route(
            "/healthz",
            get(move || {
                let (node, identity) = (n1.clone(), id1.clone());
                async move { axum::Json(health(&node, &identity)) }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let (node, certificate) = (n2.clone(), certificate.clone());
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        metrics(&node, &certificate),
                    )
                }
            }),
        );
    let _ = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
}

/// `/healthz`: the process is up; whether servers drive it, and its tunnel.
fn health(node: &gateway::Node, identity: &Identity) -> serde_json::Value {
    let f = node.figures();
    serde_json::json!({
        "status": "ok",
        "gateway": identity.gateway_id.to_string(),
        "region": identity.region,
        "control": if f.sessions > 0 { "connected" } else { "disconnected" },
        "servers": f.sessions,
        "last_server_left_at": f.last_session_end.map(|t| t.to_rfc3339()),
        "grants": f.grants,
        "connections": f.connections,
        "tunnel_peers_up": f.regions.iter().map(|r| r.peers_up).sum::<usize>(),
        "events_pending": f.events_pending,
    })
}

/// `/metrics`, Prometheus text.
fn metrics(node: &gateway::Node, certificate: &control::pki::GatewayCertificate) -> String {
    let f = node.figures();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(String, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: f64| vec![(String::new(), v)];
    metric(
        "postern_gateway_control_sessions",
        "gauge",
        "Servers driving this gateway now (control streams).",
        &one(f.sessions as f64),
    );
    metric(
        "postern_gateway_control_connected",
        "gauge",
        "1 while at least one server drives this gateway.",
        &one(if f.sessions > 0 { 1.0 } else { 0.0 }),
    );
    metric(
        "postern_gateway_grants",
        "gauge",
        "Entry ports open.",
        &one(f.grants as f64),
    );
    metric(
        "postern_gateway_connections",
        "gauge",
        "Live forwarded connections.",
        &one(f.connections as f64),
    );
    metric(
        "postern_gateway_connections_total",
        "counter",
        "Connections forwarded since the start.",
        &one(f.connections_total as f64),
    );
    metric(
        "postern_gateway_bytes_total",
        "counter",
        "Bytes forwarded since the start, by direction.",
        &[
            ("{direction=\"from_client\"}".into(), f.bytes_in as f64),
            ("{direction=\"to_client\"}".into(), f.bytes_out as f64),
        ],
    );
    let refused: Vec<(String, f64)> = f
        .refused
        .iter()
        .map(|(r, n)| (format!("{{reason=\"{}\"}}", r.label()), *n as f64))
        .collect();
    metric(
        "postern_gateway_refused_total",
        "counter",
        "Connections refused, by reason.",
        &refused,
    );
    metric(
        "postern_gateway_certificate_expires_seconds",
        "gauge",
        "When the control channel's certificate ends (Unix time); servers renew it when a third of its lifetime is left.",
        &one(certificate.info().not_after.timestamp() as f64),
    );
    metric(
        "postern_gateway_events_pending",
        "gauge",
        "Events not yet acknowledged by a server.",
        &one(f.events_pending as f64),
    );
    metric(
        "postern_gateway_events_dropped_total",
        "counter",
        "Events dropped for want of room (openings and refusals only).",
        &one(f.events_dropped as f64),
    );
    let by_region = |v: &dyn Fn(&gateway::node::RegionFigures) -> f64| -> Vec<(String, f64)> {
        f.regions
            .iter()
            .map(|r| (format!("{{region=\"{}\"}}", r.name), v(r)))
            .collect()
    };
    metric(
        "postern_gateway_tunnel_peers",
        "gauge",
        "Routers admitted to the tunnel.",
        &by_region(&|r| r.stats.peers as f64),
    );
    metric(
        "postern_gateway_tunnel_peers_up",
        "gauge",
        "Routers heard from within 80 s.",
        &by_region(&|r| r.peers_up as f64),
    );
    metric(
        "postern_gateway_tunnel_newest_handshake_age_seconds",
        "gauge",
        "Age of the most recent handshake of any router (absent: none yet).",
        &f.regions
            .iter()
            .filter_map(|r| {
                Some((
                    format!("{{region=\"{}\"}}", r.name),
                    r.newest_handshake?.as_secs_f64(),
                ))
            })
            .collect::<Vec<_>>(),
    );
    metric(
        "postern_gateway_tunnel_oldest_handshake_age_seconds",
        "gauge",
        "Age of the oldest last handshake among routers (a router that stopped rekeying).",
        &f.regions
            .iter()
            .filter_map(|r| {
                Some((
                    format!("{{region=\"{}\"}}", r.name),
                    r.oldest_handshake?.as_secs_f64(),
                ))
            })
            .collect::<Vec<_>>(),
    );
    metric(
        "postern_gateway_tunnel_datagrams_total",
        "counter",
        "WireGuard datagrams, by direction.",
        &f.regions
            .iter()
            .flat_map(|r| {
                [
                    (
                        format!("{{region=\"{}\",direction=\"in\"}}", r.name),
                        r.stats.datagrams_in as f64,
                    ),
                    (
                        format!("{{region=\"{}\",direction=\"out\"}}", r.name),
                        r.stats.datagrams_out as f64,
                    ),
                ]
            })
            .collect::<Vec<_>>(),
    );
    out
}
