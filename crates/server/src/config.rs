//! The server's configuration: defaults, then a TOML file, then `POSTERN_*` environment
//! variables, then command-line flags, each layer overriding the one before.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("unknown log format {s:?}: expected text or json")),
        }
    }
}

/// A regional gateway: where operators connect, and which ports it hands out.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionConfig {
    pub name: String,
    pub entry_point: String,
    pub port_min: u16,
    pub port_max: u16,
    /// The address routers see this region's gateway connections come from: temporary
    /// users' `address=` is limited to it. `local` defaults to 127.0.0.1.
    #[serde(default)]
    pub tunnel_source: Option<IpAddr>,
    /// Where this process's gateway listens for the region's entry ports: by default the
    /// entry point when it is an IP address, else every address (0.0.0.0).
    #[serde(default)]
    pub gateway_bind: Option<IpAddr>,
    /// The region's WireGuard prefix: routers reached through the tunnel get addresses
    /// in it, and the gateway holds its first host address. Default 100.64.0.0/10.
    #[serde(default)]
    pub tunnel_prefix: Option<ipnet::Ipv4Net>,
    /// The UDP address the region's tunnel listens on. Default 0.0.0.0:51820; a region
    /// whose entry point is a loopback address (the built-in `local`) listens on an
    /// ephemeral loopback port (127.0.0.1:0).
    #[serde(default)]
    pub tunnel_listen: Option<SocketAddr>,
    /// `host:port` routers are told to reach the tunnel at. Default the entry point's
    /// host and the port the tunnel listens on.
    #[serde(default)]
    pub tunnel_endpoint: Option<String>,
    /// Who serves the region: `local` (default), this process's own gateway; or
    /// `remote`, a `postern gateway` enrolled with `postern admin add-gateway`, which
    /// this server drives over the control channel (then `gateway_bind`,
    /// `tunnel_listen` and `tunnel_endpoint` are the gateway's business: it says where
    /// routers reach it when it joins).
    #[serde(default)]
    pub gateway: GatewayMode,
}

/// Who serves a region: see [`RegionConfig::gateway`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayMode {
    #[default]
    Local,
    Remote,
}

/// The default tunnel prefix of a region.
pub const DEFAULT_TUNNEL_PREFIX: &str = "100.64.0.0/10";
/// The default UDP port of a region's tunnel.
pub const DEFAULT_TUNNEL_PORT: u16 = 51820;

impl RegionConfig {
    /// The region every fresh installation has: this machine, the IANA dynamic ports.
    pub fn local() -> Self {
        Self {
            name: "local".into(),
            entry_point: "127.0.0.1".into(),
            port_min: 49152,
            port_max: 65535,
            tunnel_source: Some(IpAddr::from([127, 0, 0, 1])),
            gateway_bind: None,
            tunnel_prefix: None,
            tunnel_listen: None,
            tunnel_endpoint: None,
            gateway: GatewayMode::Local,
        }
    }

    /// Whether a `postern gateway` serves the region rather than this process.
    pub fn remote(&self) -> bool {
        self.gateway == GatewayMode::Remote
    }

    /// The region's tunnel prefix (default 100.64.0.0/10), truncated to its network.
    pub fn tunnel_prefix(&self) -> ipnet::Ipv4Net {
        self.tunnel_prefix
            .unwrap_or_else(|| {
                DEFAULT_TUNNEL_PREFIX
                    .parse()
                    .unwrap_or_else(|_| ipnet::Ipv4Net::default())
            })
            .trunc()
    }

    /// The gateway's address inside the tunnel: the prefix's first host address.
    pub fn tunnel_gateway(&self) -> std::net::Ipv4Addr {
        let network = u32::from(self.tunnel_prefix().network());
        std::net::Ipv4Addr::from(network.saturating_add(1))
    }

    /// Where the region's tunnel listens (UDP): as configured, else 0.0.0.0:51820, or for
    /// a region whose entry point is a loopback address (a lab on one machine) an
    /// ephemeral loopback port.
    pub fn tunnel_listen(&self) -> SocketAddr {
        self.tunnel_listen
            .unwrap_or_else(|| match self.entry_point.parse::<IpAddr>() {
                Ok(ip) if ip.is_loopback() => SocketAddr::new(ip, 0),
                _ => SocketAddr::from(([0, 0, 0, 0], DEFAULT_TUNNEL_PORT)),
            })
    }

    /// What routers are told to reach, once the tunnel listens on `bound`: the
    /// configured endpoint, else the entry point's host and `bound`'s port.
    pub fn tunnel_endpoint(&self, bound: SocketAddr) -> String {
        if let Some(endpoint) = &self.tunnel_endpoint {
            return endpoint.clone();
        }
        match self.entry_point.parse::<std::net::Ipv6Addr>() {
            Ok(v6) => format!("[{v6}]:{}", bound.port()),
            Err(_) => format!("{}:{}", self.entry_point, bound.port()),
        }
    }

    /// The address the gateway binds this region's entry ports on.
    pub fn bind_address(&self) -> IpAddr {
        self.gateway_bind.unwrap_or_else(|| {
            self.entry_point
                .parse()
                .unwrap_or(IpAddr::from([0, 0, 0, 0]))
        })
    }
}

/// A secret from the configuration: compared, never printed (`Debug` shows its length).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// Whether `given` is this secret, in time that depends only on the lengths.
    pub fn matches(&self, given: &str) -> bool {
        use sha2::{Digest as _, Sha256};
        let (a, b) = (Sha256::digest(self.0.as_bytes()), Sha256::digest(given));
        a.iter()
            .zip(b.iter())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} characters)", self.0.len())
    }
}

/// Limits on a grant's life; durations so that a test server can allow seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantLimits {
    pub min: Duration,
    pub max: Duration,
    /// Used when a create gives neither `expire_after_minutes` nor `expires_at`.
    pub default: Duration,
}

impl Default for GrantLimits {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(10 * 60),
            max: Duration::from_secs(1440 * 60),
            default: Duration::from_secs(120 * 60),
        }
    }
}

/// Back-pressure on creating grants (API, portal and terminal alike). Every figure is
/// per minute or a count; 0 switches that limit off. The defaults are far above what a
/// person at a keyboard does, and stop a runaway script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CreationLimits {
    /// Creates a minute by one signed-in user (`grant_rate_per_user`).
    pub per_user: u32,
    /// Creates a minute with one API token (`grant_rate_per_token`).
    pub per_token: u32,
    /// Creates a minute from one client address, whoever signs them
    /// (`grant_rate_per_address`).
    pub per_address: u32,
    /// Live grants one router may have (`max_live_grants_per_router`).
    pub live_per_router: u32,
    /// Live grants one organisation may have (`max_live_grants_per_org`).
    pub live_per_org: u32,
}

impl Default for CreationLimits {
    fn default() -> Self {
        Self {
            per_user: 30,
            per_token: 30,
            per_address: 60,
            live_per_router: 256,
            live_per_org: 4096,
        }
    }
}

/// Everything `postern server` needs to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// `sqlite://…` or `postgres://…`; `None` means `<data_dir>/postern.db`.
    pub database_url: Option<String>,
    pub regions: Vec<RegionConfig>,
    pub grant_limits: GrantLimits,
    /// The range the router-side dst-nat port of a forward is drawn from.
    pub forward_port_min: u16,
    pub forward_port_max: u16,
    /// Lets loopback and private sources into `allow_from`: for demos and tests only.
    pub lab_mode: bool,
    pub log_format: LogFormat,
    /// `None` means `<data_dir>/secret.key`.
    pub secret_key_file: Option<PathBuf>,
    /// Peers whose `X-Forwarded-For` is believed; empty (the default) believes none.
    pub trusted_proxies: Vec<IpAddr>,
    /// Request bodies larger than this are refused with 413.
    pub body_limit_bytes: usize,
    /// Connections served at once; more wait in the listen queue.
    pub max_connections: usize,
    /// A connection with no byte read or written for this long is closed.
    pub idle_timeout: Duration,
    /// A request's headers must arrive whole within this long of its first byte (and a
    /// new connection's first request within this long of the accept), however slowly
    /// they trickle: else the connection is closed.
    pub header_timeout: Duration,
    /// Connections served at once from one client address; more are closed at once
    /// (counted in `/metrics`). Trusted proxies are exempt.
    pub max_connections_per_address: usize,
    /// Password hashes (argon2id, 19 MiB each) computed at once for sign-ins; others
    /// queue.
    pub max_concurrent_hashes: usize,
    /// How long a sign-in waits in that queue before it is refused with 503.
    pub hash_queue_wait: Duration,
    /// The host names (optionally `name:port`) the server is reached by, through a proxy
    /// or directly: a request whose `Host` names any other is refused (421), so a DNS
    /// rebinding page cannot talk to the server. IP addresses and `localhost` are always
    /// accepted.
    pub public_hosts: Vec<String>,
    /// When set, `/metrics` on the main listener needs `Authorization: Bearer <it>`.
    pub metrics_token: Option<Secret>,
    /// When set, a second listener here serves `/metrics` (and `/healthz`) alone, with no
    /// token. With neither, `/metrics` is not served (404).
    pub metrics_listen: Option<SocketAddr>,
    /// Reuse grant lists while their router's grants version stands (see `cache`); off
    /// only to measure.
    pub list_cache: bool,
    /// How long a create with `?wait=true` waits for the grant to become active (or fail).
    pub create_wait: Duration,
    /// How often the orchestrator compares every router with the grants.
    pub reconcile_interval: Duration,
    /// How long a router's API connection stays open with no job using it; the next
    /// job opens it again.
    pub router_idle: Duration,
    /// How long a gateway port stays unused after its grant ends before it is handed
    /// out again.
    pub port_cooldown: Duration,
    /// How often the in-process gateway tells the store its run is alive and looks for
    /// runs that are gone (whose live connections it then ends). A run on another host
    /// is gone once unseen for four of these: every server of one database should use
    /// the same value.
    pub gateway_heartbeat: Duration,
    /// How long before its end a remote gateway's control-channel certificate is renewed
    /// (over the control channel, by whichever server is linked then). `None`: when a
    /// third of its lifetime is left (four months of a year).
    pub gateway_renew_before: Option<Duration>,
    /// Where routers reach this server to enrol (`https://host[:port]`; `http://` only
    /// in lab mode): the pasted line fetches its script there. Behind a reverse proxy,
    /// the proxy's address. `None`: `https://` + `listen` when the server terminates
    /// TLS itself, `http://` + `listen` in lab mode, else adding a site is refused.
    pub public_url: Option<String>,
    /// A PEM certificate chain and its private key: with both, `postern server` speaks
    /// HTTPS itself (rustls) on `listen`. Without, plain HTTP (behind a reverse proxy
    /// that terminates TLS, or on loopback).
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// How long an enrolment token (the pasted line) works.
    pub enrollment_lifetime: Duration,
    /// Rate limits and caps on creating grants.
    pub creation: CreationLimits,
    /// Live connections one entry port (one grant) may carry at the gateway; more are
    /// refused, counted and recorded like other refusals.
    pub gateway_max_connections_per_port: usize,
    /// Live connections from one source address over every entry port of the gateway.
    pub gateway_max_connections_per_source: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./postern-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database_url: None,
            regions: vec![RegionConfig::local()],
            grant_limits: GrantLimits::default(),
            forward_port_min: 20000,
            forward_port_max: 29999,
            lab_mode: false,
            log_format: LogFormat::Text,
            secret_key_file: None,
            trusted_proxies: Vec::new(),
            body_limit_bytes: 64 * 1024,
            max_connections: 1024,
            idle_timeout: Duration::from_secs(60),
            header_timeout: Duration::from_secs(10),
            max_connections_per_address: 64,
            max_concurrent_hashes: 4,
            hash_queue_wait: Duration::from_secs(5),
            public_hosts: Vec::new(),
            metrics_token: None,
            metrics_listen: None,
            list_cache: true,
            create_wait: Duration::from_secs(5),
            reconcile_interval: Duration::from_secs(60),
            router_idle: Duration::from_secs(60),
            port_cooldown: Duration::from_secs(60),
            gateway_heartbeat: Duration::from_secs(5),
            gateway_renew_before: None,
            public_url: None,
            tls_cert: None,
            tls_key: None,
            enrollment_lifetime: Duration::from_secs(24 * 3600),
            creation: CreationLimits::default(),
            gateway_max_connections_per_port: 256,
            gateway_max_connections_per_source: 128,
        }
    }
}

/// The config file's shape: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data_dir: Option<PathBuf>,
    listen: Option<SocketAddr>,
    database_url: Option<String>,
    regions: Option<Vec<RegionConfig>>,
    grant_min: Option<String>,
    grant_max: Option<String>,
    grant_default: Option<String>,
    forward_port_min: Option<u16>,
    forward_port_max: Option<u16>,
    lab_mode: Option<bool>,
    log_format: Option<LogFormat>,
    secret_key_file: Option<PathBuf>,
    trusted_proxies: Option<Vec<IpAddr>>,
    body_limit_bytes: Option<usize>,
    max_connections: Option<usize>,
    idle_timeout: Option<String>,
    header_timeout: Option<String>,
    max_connections_per_address: Option<usize>,
    max_concurrent_hashes: Option<usize>,
    hash_queue_wait: Option<String>,
    public_hosts: Option<Vec<String>>,
    metrics_token: Option<String>,
    metrics_listen: Option<SocketAddr>,
    list_cache: Option<bool>,
    create_wait: Option<String>,
    reconcile_interval: Option<String>,
    router_idle: Option<String>,
    port_cooldown: Option<String>,
    gateway_heartbeat: Option<String>,
    gateway_renew_before: Option<String>,
    public_url: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    enrollment_lifetime: Option<String>,
    grant_rate_per_user: Option<u32>,
    grant_rate_per_token: Option<u32>,
    grant_rate_per_address: Option<u32>,
    max_live_grants_per_router: Option<u32>,
    max_live_grants_per_org: Option<u32>,
    gateway_max_connections_per_port: Option<usize>,
    gateway_max_connections_per_source: Option<usize>,
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub data_dir: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub database_url: Option<String>,
    pub lab_mode: Option<bool>,
    pub log_format: Option<LogFormat>,
}

impl ServerConfig {
    /// Builds the configuration from its four layers. `env` is the process environment
    /// (a parameter so tests need not touch the real one).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Self, ConfigError> {
        let text = match file {
            Some(path) => {
                Some(
                    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                        path: path.to_owned(),
                        source,
                    })?,
                )
            }
            None => None,
        };
        Self::from_text(file.zip(text.as_deref()), env, flags)
    }

    /// [`load`](Self::load) with the config file already read: its path (for messages)
    /// and its text.
    pub fn from_text(
        file: Option<(&Path, &str)>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: &Overrides,
    ) -> Result<Self, ConfigError> {
        let mut config = Self::default();
        if let Some((path, text)) = file {
            let parsed: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string().trim_end().to_owned(),
            })?;
            config.apply_file(parsed)?;
        }
        for (key, value) in env {
            if let Some(name) = key.strip_prefix("POSTERN_") {
                config.apply_env(name, &value)?;
            }
        }
        config.apply_flags(flags);
        config.check()?;
        config.accept_public_url_host();
        Ok(config)
    }

    fn apply_file(&mut self, f: FileConfig) -> Result<(), ConfigError> {
        set(&mut self.data_dir, f.data_dir);
        set(&mut self.listen, f.listen);
        if f.database_url.is_some() {
            self.database_url = f.database_url;
        }
        set(&mut self.regions, f.regions);
        if let Some(s) = f.grant_min {
            self.grant_limits.min = parse_duration("grant_min", &s)?;
        }
        if let Some(s) = f.grant_max {
            self.grant_limits.max = parse_duration("grant_max", &s)?;
        }
        if let Some(s) = f.grant_default {
            self.grant_limits.default = parse_duration("grant_default", &s)?;
        }
        set(&mut self.forward_port_min, f.forward_port_min);
        set(&mut self.forward_port_max, f.forward_port_max);
        set(&mut self.lab_mode, f.lab_mode);
        set(&mut self.log_format, f.log_format);
        if f.secret_key_file.is_some() {
            self.secret_key_file = f.secret_key_file;
        }
        set(&mut self.trusted_proxies, f.trusted_proxies);
        set(&mut self.body_limit_bytes, f.body_limit_bytes);
        set(&mut self.max_connections, f.max_connections);
        set(&mut self.list_cache, f.list_cache);
        if let Some(s) = f.idle_timeout {
            self.idle_timeout = parse_duration("idle_timeout", &s)?;
        }
        if let Some(s) = f.header_timeout {
            self.header_timeout = parse_duration("header_timeout", &s)?;
        }
        set(
            &mut self.max_connections_per_address,
            f.max_connections_per_address,
        );
        set(&mut self.max_concurrent_hashes, f.max_concurrent_hashes);
        if let Some(s) = f.hash_queue_wait {
            self.hash_queue_wait = parse_duration("hash_queue_wait", &s)?;
        }
        set(&mut self.public_hosts, f.public_hosts);
        if let Some(t) = f.metrics_token {
            self.metrics_token = Some(Secret::new(t));
        }
        if f.metrics_listen.is_some() {
            self.metrics_listen = f.metrics_listen;
        }
        if let Some(s) = f.create_wait {
            self.create_wait = parse_duration("create_wait", &s)?;
        }
        if let Some(s) = f.reconcile_interval {
            self.reconcile_interval = parse_duration("reconcile_interval", &s)?;
        }
        if let Some(s) = f.router_idle {
            self.router_idle = parse_duration("router_idle", &s)?;
        }
        if let Some(s) = f.port_cooldown {
            self.port_cooldown = parse_duration("port_cooldown", &s)?;
        }
        if let Some(s) = f.gateway_heartbeat {
            self.gateway_heartbeat = parse_duration("gateway_heartbeat", &s)?;
        }
        if let Some(s) = f.gateway_renew_before {
            self.gateway_renew_before = Some(parse_duration("gateway_renew_before", &s)?);
        }
        if f.public_url.is_some() {
            self.public_url = f.public_url;
        }
        if f.tls_cert.is_some() {
            self.tls_cert = f.tls_cert;
        }
        if f.tls_key.is_some() {
            self.tls_key = f.tls_key;
        }
        if let Some(s) = f.enrollment_lifetime {
            self.enrollment_lifetime = parse_duration("enrollment_lifetime", &s)?;
        }
        let c = &mut self.creation;
        set(&mut c.per_user, f.grant_rate_per_user);
        set(&mut c.per_token, f.grant_rate_per_token);
        set(&mut c.per_address, f.grant_rate_per_address);
        set(&mut c.live_per_router, f.max_live_grants_per_router);
        set(&mut c.live_per_org, f.max_live_grants_per_org);
        set(
            &mut self.gateway_max_connections_per_port,
            f.gateway_max_connections_per_port,
        );
        set(
            &mut self.gateway_max_connections_per_source,
            f.gateway_max_connections_per_source,
        );
        Ok(())
    }

    /// One `POSTERN_<NAME>` variable. Unknown names are ignored: other parts of the
    /// binary (the gateway, the sim) read their own.
    fn apply_env(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let key = format!("POSTERN_{name}");
        let bad = |message: String| ConfigError::Invalid {
            key: key.clone(),
            message,
        };
        match name {
            "DATA_DIR" => self.data_dir = PathBuf::from(value),
            "LISTEN" => self.listen = value.parse().map_err(|e| bad(format!("{e}")))?,
            "DATABASE_URL" => self.database_url = Some(value.to_owned()),
            "LAB_MODE" => {
                self.lab_mode =
                    parse_bool(value).ok_or_else(|| bad("expected true or false".into()))?
            }
            "LIST_CACHE" => {
                self.list_cache =
                    parse_bool(value).ok_or_else(|| bad("expected true or false".into()))?
            }
            "LOG_FORMAT" => self.log_format = value.parse().map_err(bad)?,
            "SECRET_KEY_FILE" => self.secret_key_file = Some(PathBuf::from(value)),
            "GRANT_MIN" => self.grant_limits.min = parse_duration(&key, value)?,
            "GRANT_MAX" => self.grant_limits.max = parse_duration(&key, value)?,
            "GRANT_DEFAULT" => self.grant_limits.default = parse_duration(&key, value)?,
            "CREATE_WAIT" => self.create_wait = parse_duration(&key, value)?,
            "RECONCILE_INTERVAL" => self.reconcile_interval = parse_duration(&key, value)?,
            "ROUTER_IDLE" => self.router_idle = parse_duration(&key, value)?,
            "PORT_COOLDOWN" => self.port_cooldown = parse_duration(&key, value)?,
            "GATEWAY_HEARTBEAT" => self.gateway_heartbeat = parse_duration(&key, value)?,
            "GATEWAY_RENEW_BEFORE" => {
                self.gateway_renew_before = Some(parse_duration(&key, value)?);
            }
            "ENROLLMENT_LIFETIME" => self.enrollment_lifetime = parse_duration(&key, value)?,
            "PUBLIC_URL" => self.public_url = Some(value.to_owned()).filter(|v| !v.is_empty()),
            "TLS_CERT" => self.tls_cert = Some(PathBuf::from(value)),
            "TLS_KEY" => self.tls_key = Some(PathBuf::from(value)),
            "HEADER_TIMEOUT" => self.header_timeout = parse_duration(&key, value)?,
            "IDLE_TIMEOUT" => self.idle_timeout = parse_duration(&key, value)?,
            "HASH_QUEUE_WAIT" => self.hash_queue_wait = parse_duration(&key, value)?,
            "MAX_CONNECTIONS" => {
                self.max_connections = value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "MAX_CONNECTIONS_PER_ADDRESS" => {
                self.max_connections_per_address = value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "GRANT_RATE_PER_USER" => {
                self.creation.per_user = value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "GRANT_RATE_PER_TOKEN" => {
                self.creation.per_token = value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "GRANT_RATE_PER_ADDRESS" => {
                self.creation.per_address = value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "MAX_LIVE_GRANTS_PER_ROUTER" => {
                self.creation.live_per_router = value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "MAX_LIVE_GRANTS_PER_ORG" => {
                self.creation.live_per_org = value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "GATEWAY_MAX_CONNECTIONS_PER_PORT" => {
                self.gateway_max_connections_per_port =
                    value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "GATEWAY_MAX_CONNECTIONS_PER_SOURCE" => {
                self.gateway_max_connections_per_source =
                    value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "MAX_CONCURRENT_HASHES" => {
                self.max_concurrent_hashes = value.parse().map_err(|e| bad(format!("{e}")))?
            }
            "PUBLIC_HOSTS" => {
                self.public_hosts = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            "METRICS_TOKEN" => {
                self.metrics_token = Some(value).filter(|v| !v.is_empty()).map(Secret::new)
            }
            "METRICS_LISTEN" => {
                self.metrics_listen = Some(value.parse().map_err(|e| bad(format!("{e}")))?)
            }
            "TRUSTED_PROXIES" => {
                self.trusted_proxies = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().map_err(|e| bad(format!("{s:?}: {e}"))))
                    .collect::<Result<_, _>>()?;
            }
            _ => {}
        }
        Ok(())
    }

    fn apply_flags(&mut self, o: &Overrides) {
        set(&mut self.data_dir, o.data_dir.clone());
        set(&mut self.listen, o.listen);
        if o.database_url.is_some() {
            self.database_url = o.database_url.clone();
        }
        set(&mut self.lab_mode, o.lab_mode);
        set(&mut self.log_format, o.log_format);
    }

    fn check(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        };
        if self.regions.is_empty() {
            return Err(invalid("regions", "at least one region is needed"));
        }
        for r in &self.regions {
            if r.port_min == 0 || r.port_min > r.port_max {
                return Err(invalid(
                    "regions",
                    &format!("region {}: port_min must be 1..=port_max", r.name),
                ));
            }
            if let Some(prefix) = r.tunnel_prefix
                && prefix.prefix_len() > 30
            {
                return Err(invalid(
                    "regions",
                    &format!(
                        "region {}: tunnel_prefix {prefix} is too small (at most /30)",
                        r.name
                    ),
                ));
            }
            if let Some(endpoint) = &r.tunnel_endpoint {
                let port_ok = endpoint.rsplit_once(':').is_some_and(|(host, port)| {
                    !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
                });
                if !port_ok {
                    return Err(invalid(
                        "regions",
                        &format!(
                            "region {}: tunnel_endpoint {endpoint:?} must be host:port",
                            r.name
                        ),
                    ));
                }
            }
        }
        let l = &self.grant_limits;
        if l.min.is_zero() || l.min > l.max || l.default < l.min || l.default > l.max {
            return Err(invalid(
                "grant limits",
                "need 0 < grant_min <= grant_default <= grant_max",
            ));
        }
        if self.forward_port_min == 0 || self.forward_port_min > self.forward_port_max {
            return Err(invalid("forward_port_min", "must be 1..=forward_port_max"));
        }
        if self.idle_timeout.is_zero() {
            return Err(invalid("idle_timeout", "must be at least 1s"));
        }
        if self.reconcile_interval.is_zero() {
            return Err(invalid("reconcile_interval", "must be at least 1s"));
        }
        if self.router_idle.is_zero() {
            return Err(invalid("router_idle", "must be at least 1s"));
        }
        if self.gateway_heartbeat.is_zero() {
            return Err(invalid("gateway_heartbeat", "must be at least 1s"));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.max_connections_per_address == 0 {
            return Err(invalid("max_connections_per_address", "must be at least 1"));
        }
        if self.header_timeout.is_zero() {
            return Err(invalid("header_timeout", "must be at least 1s"));
        }
        if self.gateway_max_connections_per_port == 0 {
            return Err(invalid(
                "gateway_max_connections_per_port",
                "must be at least 1",
            ));
        }
        if self.gateway_max_connections_per_source == 0 {
            return Err(invalid(
                "gateway_max_connections_per_source",
                "must be at least 1",
            ));
        }
        if self.max_concurrent_hashes == 0 {
            return Err(invalid("max_concurrent_hashes", "must be at least 1"));
        }
        if let Some(t) = &self.metrics_token
            && t.0.len() < 16
        {
            return Err(invalid("metrics_token", "must be at least 16 characters"));
        }
        if self.enrollment_lifetime < Duration::from_secs(60)
            || self.enrollment_lifetime > Duration::from_secs(30 * 86400)
        {
            return Err(invalid("enrollment_lifetime", "must be between 1m and 30d"));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid(
                "tls_cert",
                "tls_cert and tls_key go together: give both or neither",
            ));
        }
        if let Some(url) = &self.public_url {
            crate::onboarding::PublicUrl::parse(url, self.lab_mode)
                .map_err(|m| invalid("public_url", &m))?;
        }
        for h in &self.public_hosts {
            if h.is_empty() || h.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
                return Err(invalid(
                    "public_hosts",
                    &format!("{h:?} is not a host name (like postern.example.com)"),
                ));
            }
        }
        Ok(())
    }

    /// Requests naming `public_url`'s host are this server's (the `Host` check).
    fn accept_public_url_host(&mut self) {
        let Some(url) = &self.public_url else {
            return;
        };
        let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
        let host = rest.trim_end_matches('/').to_owned();
        if !host.is_empty() && !self.public_hosts.contains(&host) {
            self.public_hosts.push(host);
        }
    }

    /// Where routers fetch their enrolment script: `public_url`, else this server's own
    /// `listen` over HTTPS (when it terminates TLS) or HTTP (lab mode only). An error
    /// says what to set.
    pub fn enroll_url(&self) -> Result<crate::onboarding::PublicUrl, String> {
        if let Some(url) = &self.public_url {
            return crate::onboarding::PublicUrl::parse(url, self.lab_mode);
        }
        let tls = self.tls_cert.is_some();
        if !tls && !self.lab_mode {
            return Err(
                "set public_url (the https:// address routers reach this server at) to add a site"
                    .into(),
            );
        }
        if self.listen.ip().is_unspecified() {
            return Err("set public_url: the server listens on every address, so routers cannot be told which one to reach".into());
        }
        let scheme = if tls { "https" } else { "http" };
        crate::onboarding::PublicUrl::parse(&format!("{scheme}://{}", self.listen), self.lab_mode)
    }

    /// Where the database lives when no URL was given.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("postern.db").display()
            ),
        }
    }

    /// Where the 32-byte secret key lives.
    pub fn secret_key_path(&self) -> PathBuf {
        self.secret_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secret.key"))
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *slot = v;
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// "30s", "10m", "24h", "1d", or a bare number of seconds.
pub fn parse_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().map_err(|_| ConfigError::Invalid {
        key: key.into(),
        message: format!("{s:?} is not a duration like 30s, 10m, 24h or 1d"),
    })?;
    let factor = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        other => {
            return Err(ConfigError::Invalid {
                key: key.into(),
                message: format!("unknown duration unit {other:?}: use s, m, h or d"),
            });
        }
    };
    n.checked_mul(factor)
        .map(Duration::from_secs)
        .ok_or_else(|| ConfigError::Invalid {
            key: key.into(),
            message: "duration too large".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_are_those_of_the_issue() {
        let c = ServerConfig::load(None, env(&[]), &Overrides::default()).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.data_dir, PathBuf::from("./postern-data"));
        assert_eq!(c.regions, vec![RegionConfig::local()]);
        assert_eq!(c.grant_limits.min, Duration::from_secs(600));
        assert_eq!(c.grant_limits.max, Duration::from_secs(86400));
        assert_eq!(c.grant_limits.default, Duration::from_secs(7200));
        assert!(!c.lab_mode);
        assert_eq!(
            c.database_url(),
            "sqlite://./postern-data/postern.db?mode=rwc"
        );
        assert_eq!(
            c.secret_key_path(),
            PathBuf::from("./postern-data/secret.key")
        );
    }

    #[test]
    fn region_tunnel_settings_default_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("postern.toml");
        let load = |regions: &str| {
            std::fs::write(&file, regions).unwrap();
            ServerConfig::load(Some(&file), env(&[("HOME", "/x")]), &Overrides::default())
        };
        let c = load(
            r#"
[[regions]]
name = "eu"
entry_point = "eu.example.net"
port_min = 40000
port_max = 40010
[[regions]]
name = "us"
entry_point = "2001:db8::1"
port_min = 40000
port_max = 40010
tunnel_prefix = "10.77.0.0/16"
tunnel_listen = "127.0.0.2:0"
"#,
        )
        .unwrap();
        let (eu, us) = (&c.regions[0], &c.regions[1]);
        assert_eq!(eu.tunnel_prefix().to_string(), "100.64.0.0/10");
        assert_eq!(eu.tunnel_gateway().to_string(), "100.64.0.1");
        assert_eq!(eu.tunnel_listen().to_string(), "0.0.0.0:51820");
        let bound: SocketAddr = "0.0.0.0:51820".parse().unwrap();
        assert_eq!(eu.tunnel_endpoint(bound), "eu.example.net:51820");
        assert_eq!(us.tunnel_gateway().to_string(), "10.77.0.1");
        assert_eq!(us.tunnel_listen().to_string(), "127.0.0.2:0");
        let bound: SocketAddr = "127.0.0.2:40123".parse().unwrap();
        assert_eq!(us.tunnel_endpoint(bound), "[2001:db8::1]:40123");
        // The built-in region (a loopback entry point) listens on an ephemeral loopback port.
        assert_eq!(
            RegionConfig::local().tunnel_listen().to_string(),
            "127.0.0.1:0"
        );

        let region = |extra: &str| {
            format!(
                "[[regions]]\nname = \"eu\"\nentry_point = \"eu.example.net\"\nport_min = 1\nport_max = 2\n{extra}\n"
            )
        };
        let c = load(&region("tunnel_endpoint = \"vpn.example.net:443\"")).unwrap();
        assert_eq!(
            c.regions[0].tunnel_endpoint("0.0.0.0:51820".parse().unwrap()),
            "vpn.example.net:443"
        );
        for (extra, says) in [
            ("tunnel_prefix = \"100.64.0.0/31\"", "tunnel_prefix"),
            ("tunnel_endpoint = \"vpn.example.net\"", "tunnel_endpoint"),
            ("tunnel_endpoint = \"vpn.example.net:0\"", "tunnel_endpoint"),
        ] {
            let e = load(&region(extra)).unwrap_err().to_string();
            assert!(e.contains(says), "{extra}: {e}");
        }
        assert!(load(&region("tunnel_prefix = \"not a prefix\"")).is_err());
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("postern.toml");
        std::fs::write(
            &file,
            r#"
data_dir = "/from/file"
listen = "127.0.0.1:9000"
lab_mode = true
grant_min = "5s"
log_format = "json"
[[regions]]
name = "eu"
entry_point = "eu.example.net"
port_min = 40000
port_max = 40010
"#,
        )
        .unwrap();
        let c = ServerConfig::load(
            Some(&file),
            env(&[("POSTERN_LISTEN", "127.0.0.1:9001"), ("HOME", "/x")]),
            &Overrides {
                data_dir: Some("/from/flag".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/flag"));
        assert_eq!(c.listen.to_string(), "127.0.0.1:9001");
        assert!(c.lab_mode);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.grant_limits.min, Duration::from_secs(5));
        assert_eq!(c.regions[0].name, "eu");
        // A host name as entry point: the gateway binds every address.
        assert_eq!(c.regions[0].bind_address().to_string(), "0.0.0.0");
        assert_eq!(c.port_cooldown, Duration::from_secs(60));
    }

    #[test]
    fn gateway_bind_address_and_port_cooldown() {
        let mut r = RegionConfig::local();
        assert_eq!(r.bind_address().to_string(), "127.0.0.1");
        r.entry_point = "2001:db8::7".into();
        assert_eq!(r.bind_address().to_string(), "2001:db8::7");
        r.gateway_bind = Some(IpAddr::from([10, 0, 0, 5]));
        assert_eq!(r.bind_address().to_string(), "10.0.0.5");
        let c = ServerConfig::load(
            None,
            env(&[
                ("POSTERN_PORT_COOLDOWN", "5s"),
                ("POSTERN_GATEWAY_HEARTBEAT", "2s"),
                ("POSTERN_GATEWAY_RENEW_BEFORE", "30d"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.port_cooldown, Duration::from_secs(5));
        assert_eq!(c.gateway_heartbeat, Duration::from_secs(2));
        assert_eq!(
            c.gateway_renew_before,
            Some(Duration::from_secs(30 * 86_400))
        );
        assert_eq!(ServerConfig::default().gateway_renew_before, None);
        assert_eq!(
            ServerConfig::default().gateway_heartbeat,
            Duration::from_secs(5)
        );
    }

    #[test]
    fn router_idle_from_the_file_and_the_environment() {
        assert_eq!(ServerConfig::default().router_idle, Duration::from_secs(60));
        let path = Path::new("postern.toml");
        let c = ServerConfig::from_text(
            Some((path, "router_idle = \"5m\"\n")),
            env(&[]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.router_idle, Duration::from_secs(300));
        let c = ServerConfig::from_text(
            Some((path, "router_idle = \"5m\"\n")),
            env(&[("POSTERN_ROUTER_IDLE", "20s")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.router_idle, Duration::from_secs(20));
        let e = ServerConfig::from_text(
            None,
            env(&[("POSTERN_ROUTER_IDLE", "0s")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("router_idle"), "{e}");
    }

    #[test]
    fn hardening_settings_have_safe_defaults_and_layers() {
        let c = ServerConfig::default();
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connections_per_address, 64);
        assert_eq!(c.max_concurrent_hashes, 4);
        assert!(c.public_hosts.is_empty());
        assert_eq!((c.metrics_token.clone(), c.metrics_listen), (None, None));
        let c = ServerConfig::load(
            None,
            env(&[
                (
                    "POSTERN_PUBLIC_HOSTS",
                    "postern.example.net, ops.example.net:8443",
                ),
                ("POSTERN_METRICS_TOKEN", "sixteen-chars-at-least"),
                ("POSTERN_METRICS_LISTEN", "127.0.0.1:9464"),
                ("POSTERN_HEADER_TIMEOUT", "3s"),
                ("POSTERN_MAX_CONNECTIONS_PER_ADDRESS", "8"),
            ]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(
            c.public_hosts,
            ["postern.example.net", "ops.example.net:8443"]
        );
        assert!(
            c.metrics_token
                .as_ref()
                .unwrap()
                .matches("sixteen-chars-at-least")
        );
        assert!(
            !c.metrics_token
                .as_ref()
                .unwrap()
                .matches("sixteen-chars-at-leas")
        );
        // The token never reaches a log through `Debug`.
        assert!(!format!("{c:?}").contains("sixteen"));
        assert_eq!(c.metrics_listen.unwrap().port(), 9464);
        assert_eq!(c.header_timeout, Duration::from_secs(3));
        assert_eq!(c.max_connections_per_address, 8);
        for (key, value, says) in [
            ("POSTERN_METRICS_TOKEN", "short", "16 characters"),
            (
                "POSTERN_PUBLIC_HOSTS",
                "https://x.example/",
                "not a host name",
            ),
            ("POSTERN_MAX_CONNECTIONS_PER_ADDRESS", "0", "at least 1"),
        ] {
            let e =
                ServerConfig::load(None, env(&[(key, value)]), &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains(says), "{key}: {e}");
        }
    }

    #[test]
    fn bad_values_are_named() {
        let e = ServerConfig::load(
            None,
            env(&[("POSTERN_GRANT_MIN", "5 parsecs")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("POSTERN_GRANT_MIN"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "listne = \"x\"\n").unwrap();
        let e = ServerConfig::load(Some(&file), env(&[]), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("listne"), "{e}");
    }
}
