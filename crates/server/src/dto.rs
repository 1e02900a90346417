//! The API's request and response bodies, with their OpenAPI schemas. The server owns
//! these shapes: the forward object is the reference's, field for field.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A timestamp as the reference writes it: RFC 3339, UTC, whole seconds, `+00:00`.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, false)
}

// ---------------------------------------------------------------- grants

/// Creation object of a transient port forward (the reference's, plus `masquerade` and
/// `expires_at`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateForward {
    /// Minutes the forward stays open (default 120; 10–1440 unless configured otherwise:
    /// `minimum` and `maximum` are the server's). Not with `expires_at`.
    #[schema(example = 120, minimum = 10, maximum = 1440)]
    pub expire_after_minutes: Option<i64>,
    /// An absolute end time (RFC 3339), instead of `expire_after_minutes`: within the
    /// same limits from now.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// The port on the device behind the router (1–65535).
    #[schema(example = 22, minimum = 1, maximum = 65535)]
    pub dst_port: i64,
    /// The device's address: private (RFC 1918) or publicly routed.
    #[schema(example = "192.168.88.43", format = "ip")]
    pub dst_address: String,
    /// Who may connect: an address or a CIDR, IPv4 /24 to /32 or IPv6 /48 to /128,
    /// publicly routed (documentation ranges count; loopback and private only in lab
    /// mode). IPv6 forms around a non-public IPv4 address are refused (6to4 2002::/16,
    /// Teredo 2001::/32, whose ranges must be one /128, NAT64 64:ff9b::/32, IPv4-mapped
    /// is read as its IPv4 address), and so is any IPv6 source when the router's entry
    /// point takes IPv4 only. Defaults to the caller's own address.
    #[schema(example = "198.51.100.0/24", format = "cidr")]
    pub allow_from: Option<String>,
    /// Add a masquerade rule, for devices that do not route through the router.
    #[schema(example = false)]
    pub masquerade: Option<bool>,
}

/// A transient port forward, as the reference shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ForwardView {
    #[schema(example = "9c56202d-c388-484d-ac9a-7677f24f1f18")]
    pub id: String,
    /// The gateway port operators connect to.
    #[schema(example = 49159)]
    pub port: u16,
    pub revoked_early: bool,
    #[schema(example = "198.51.100.0/24")]
    pub allow_only_cidr: String,
    /// When the forward was first used (null until then).
    #[schema(format = DateTime)]
    pub authorized_at: Option<String>,
    #[schema(format = DateTime, example = "2024-06-22T04:33:29+00:00")]
    pub expires_at: String,
    pub expired: bool,
    #[schema(example = "us-east1.example.net")]
    pub entry_point: String,
    #[schema(example = "192.168.88.43")]
    pub dst_address: String,
    #[schema(example = 22)]
    pub dst_port: u16,
    #[schema(example = "2 hours from now")]
    pub time_to_expire: String,
    pub masquerade: bool,
    /// requested, provisioning, active, closing, expired, revoked or failed.
    #[schema(example = "requested")]
    pub status: String,
}

/// Access type of a transient access grant.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccessTypeDto {
    Winbox,
    Ssh,
}

/// What a transient user may do on the router.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccessLevelDto {
    Full,
    Write,
    Read,
}

/// Creation object of a transient access grant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccess {
    /// `winbox` (default) or `ssh`.
    #[serde(rename = "type")]
    pub access_type: Option<AccessTypeDto>,
    /// `full` (default), `write` or `read`.
    pub access: Option<AccessLevelDto>,
    /// The portal's switch: true is `full`, false is `read`. Must agree with `access`.
    pub full_access: Option<bool>,
    /// Also accept connections from private (RFC 1918) addresses (default false).
    pub allow_rfc1918: Option<bool>,
    /// Who may connect: an address or a CIDR, IPv4 /24 to /32 or IPv6 /48 to /128,
    /// publicly routed (documentation ranges count; loopback and private only in lab
    /// mode). IPv6 forms around a non-public IPv4 address are refused (6to4 2002::/16,
    /// Teredo 2001::/32, whose ranges must be one /128, NAT64 64:ff9b::/32, IPv4-mapped
    /// is read as its IPv4 address), and so is any IPv6 source when the router's entry
    /// point takes IPv4 only. Defaults to the caller's own address.
    #[schema(example = "198.51.100.0/24", format = "cidr")]
    pub allow_from: Option<String>,
    /// Minutes the grant stays open (default 120; the server's limits, 10–1440 unless
    /// configured otherwise). Not with `expires_at`.
    #[schema(example = 120, minimum = 10, maximum = 1440)]
    pub expire_after_minutes: Option<i64>,
    /// An absolute end time (RFC 3339), instead of `expire_after_minutes`: within the
    /// same limits from now.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// A transient access grant (no password: see its credentials).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AccessView {
    pub id: String,
    #[serde(rename = "type")]
    pub access_type: AccessTypeDto,
    pub access: AccessLevelDto,
    pub status: String,
    #[schema(example = "postern-k3x9q2mz")]
    pub username: String,
    pub port: u16,
    pub revoked_early: bool,
    pub allow_only_cidr: String,
    pub allow_rfc1918: bool,
    #[schema(format = DateTime)]
    pub authorized_at: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: String,
    pub expired: bool,
    pub entry_point: String,
    pub time_to_expire: String,
}

/// How to log in with a transient access grant. Every read is audited.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CredentialsView {
    pub username: String,
    pub password: String,
    pub entry_point: String,
    pub port: u16,
    /// For WinBox grants, the link `postern-launcher` opens:
    /// `winbox://entry_point:port?user=…&ticket=…&server=…`, with a one-time ticket (fresh
    /// on each read, redeemable once within 60 s at `POST /api/winbox/redeem` of `server`,
    /// this server as the request reached it) instead of the password; null for SSH.
    #[schema(
        example = "winbox://127.0.0.1:49159?user=postern-k3x9q2mz&ticket=wbt_3q2-7wAbCdEfGhIjKlMnOpQrStUvWxYz0123456789A&server=http%3A%2F%2F127.0.0.1%3A8080"
    )]
    pub winbox_url: Option<String>,
    /// `ssh -p port user@entry_point` for SSH grants; null for WinBox.
    pub ssh_command: Option<String>,
}

/// A new end for a live grant: exactly one of the two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateExpiry {
    /// Minutes from now (the server's limits, 10–1440 unless configured otherwise).
    #[schema(example = 60, minimum = 10, maximum = 1440)]
    pub expire_after_minutes: Option<i64>,
    /// An absolute end time (RFC 3339), within the same limits from now.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// Query of a grant create.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CreateQuery {
    /// Wait (a few seconds at most) until the router has the grant (`active`) or gave up
    /// (`failed`), and return the grant as it is then.
    pub wait: Option<bool>,
}

/// Query of grant lists.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct GrantListQuery {
    /// Include ended grants (expired, revoked, failed) too: the newest `limit` of them
    /// after skipping `offset`, merged newest first with the live ones (always all shown).
    pub all: Option<bool>,
    /// With `all=true` only: how many ended grants, 1–500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// With `all=true` only: how many of the newest ended grants to skip, 0–1000000
    /// (default 0).
    #[param(minimum = 0, maximum = 1000000)]
    pub offset: Option<i64>,
}

// ---------------------------------------------------------------- routers and sites

/// A router to manage.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRouter {
    /// 1–64 characters, no control characters, no white space at either end; unique in
    /// the organisation (409).
    #[schema(
        example = "branch-01",
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\s\\x00-\\x1f\\x7f-\\x9f](?:[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f])?$"
    )]
    pub name: String,
    /// Where the router's API, SSH and WinBox answer: a publicly routed address
    /// (loopback and private addresses only when the server runs in lab mode; shared,
    /// link-local and other special ranges never). Only admins may register a router.
    #[schema(example = "203.0.113.2", format = "ip")]
    pub tunnel_address: String,
    /// Its management login: 1–64 printable ASCII characters without spaces, quotes,
    /// backslashes or `=`.
    #[schema(
        example = "postern",
        min_length = 1,
        max_length = 64,
        pattern = "^[!#-&(-<>-\\[\\]-_a-~]+$"
    )]
    pub username: String,
    /// Its management password (stored encrypted, never returned): 1–256 characters, no
    /// control characters.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
    )]
    pub password: String,
    /// Default 8728, or 8729 with `api_tls`.
    #[schema(minimum = 1, maximum = 65535)]
    pub api_port: Option<i64>,
    /// Default 22.
    #[schema(minimum = 1, maximum = 65535)]
    pub ssh_port: Option<i64>,
    /// Default 8291.
    #[schema(minimum = 1, maximum = 65535)]
    pub winbox_port: Option<i64>,
    /// Reach the API over TLS (API-SSL). Default false; true when
    /// `api_tls_fingerprint` is given (false with it is refused).
    pub api_tls: Option<bool>,
    /// The SHA-256 of the router's certificate (64 hex digits, `:` between bytes
    /// allowed). Without it, the certificate the router presents on the first
    /// connection is pinned and kept: a later different one is refused.
    #[schema(
        pattern = "^:*(?:[0-9A-Fa-f]:*){64}$",
        example = "ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab"
    )]
    pub api_tls_fingerprint: Option<String>,
    /// Region name, one of the server's regions (default: the first configured region).
    #[schema(example = "local")]
    pub region: Option<String>,
    /// Site name (default: the router's name; created when absent): as `name`.
    #[schema(
        example = "branch-01",
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\s\\x00-\\x1f\\x7f-\\x9f](?:[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f])?$"
    )]
    pub site: Option<String>,
}

/// Changes to a router: any subset of the fields. Changing where and how it is reached
/// (`tunnel_address`, `api_port`, `ssh_port`, `winbox_port`, `api_tls`,
/// `api_tls_fingerprint`) is for admins only; the open
/// management connection is dropped and live grants' entry ports forward to the new
/// place. The audit entry records each changed field's old and new value.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateRouter {
    /// As when registering.
    #[schema(
        example = "branch-02",
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\s\\x00-\\x1f\\x7f-\\x9f](?:[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f])?$"
    )]
    pub name: Option<String>,
    /// As when registering: publicly routed, loopback and private only in lab mode.
    /// Changing it requires `password` in the same request.
    #[schema(example = "203.0.113.7", format = "ip")]
    pub tunnel_address: Option<String>,
    /// As when registering.
    #[schema(
        example = "postern",
        min_length = 1,
        max_length = 64,
        pattern = "^[!#-&(-<>-\\[\\]-_a-~]+$"
    )]
    pub username: Option<String>,
    /// The management password; required whenever `tunnel_address`, `api_port` or
    /// API-SSL changes, so the stored one is never sent to a new place.
    #[schema(
        min_length = 1,
        max_length = 256,
        pattern = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
    )]
    pub password: Option<String>,
    /// Changing it requires `password` in the same request.
    #[schema(minimum = 1, maximum = 65535)]
    pub api_port: Option<i64>,
    #[schema(minimum = 1, maximum = 65535)]
    pub ssh_port: Option<i64>,
    #[schema(minimum = 1, maximum = 65535)]
    pub winbox_port: Option<i64>,
    /// API-SSL on or off (admins only, with `password`). Turning it off forgets the
    /// pinned certificate (and is refused together with `api_tls_fingerprint`).
    pub api_tls: Option<bool>,
    /// Pins this certificate instead (admins only, with `password`; implies
    /// `api_tls`).
    #[schema(
        pattern = "^:*(?:[0-9A-Fa-f]:*){64}$",
        example = "ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab:ab"
    )]
    pub api_tls_fingerprint: Option<String>,
    /// One of the server's regions.
    #[schema(example = "local")]
    pub region: Option<String>,
}

/// A router (its password is never shown).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RouterView {
    pub id: String,
    pub site_id: String,
    pub name: String,
    pub region: String,
    pub entry_point: String,
    pub tunnel_address: String,
    pub api_port: u16,
    pub ssh_port: u16,
    pub winbox_port: u16,
    /// Whether the API is reached over TLS (API-SSL).
    pub api_tls: bool,
    /// The pinned certificate's SHA-256 (absent until the first connection pins it).
    pub api_tls_fingerprint: Option<String>,
    pub username: String,
    /// unknown, online or offline; `pending` for a tunnelled router until it enrols.
    /// A tunnelled router is online while the gateway has had an authenticated
    /// datagram from it within about three keepalives (80 s). `gateway_unreachable`
    /// when the router's region is served by a remote gateway (`GET /api/regions`)
    /// that this server cannot reach now (none joined, or its link is not `up`): the
    /// router may well be up, but nothing reaches it until the gateway is back.
    #[schema(example = "online")]
    pub status: String,
    /// The router's management tunnel: null for a router reached directly (at
    /// `tunnel_address`, through a path the operator provides).
    pub tunnel: Option<TunnelView>,
    /// What the router says of itself (`/system/identity`, `/system/resource`), as of
    /// `last_seen_at`: recorded by the orchestrator on each new connection and at most
    /// every minute by the reconciler; absent until it first connected.
    pub identity: Option<String>,
    pub routeros_version: Option<String>,
    pub board_name: Option<String>,
    /// As the router printed it at `last_seen_at`, such as `1w2d3h4m5s`.
    pub uptime: Option<String>,
    #[schema(format = DateTime)]
    pub last_seen_at: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// A tunnelled router's WireGuard tunnel, as the gateway sees it now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TunnelView {
    /// Always `wireguard`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The router's address inside the tunnel.
    pub address: String,
    /// The gateway's address inside the tunnel (what the router sees Postern's
    /// connections come from); null when no gateway here serves the region.
    pub gateway_address: Option<String>,
    /// The router's public address and port as the gateway last saw them (its NAT's);
    /// null until it first spoke.
    pub endpoint: Option<String>,
    #[schema(format = DateTime)]
    pub last_handshake_at: Option<String>,
    /// Bytes received from the router, and sent to it, through the tunnel.
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A site and its router.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SiteView {
    pub id: String,
    pub name: String,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub router: Option<RouterView>,
}

// ---------------------------------------------------------------- jobs and audit

/// Paging of lists that grow: newest first.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1–500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
    /// 0–1000000, default 0.
    #[param(minimum = 0, maximum = 1000000)]
    pub offset: Option<i64>,
}

/// One line of a job's log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobLineView {
    pub seq: i64,
    #[schema(format = DateTime)]
    pub at: String,
    pub message: String,
}

/// A router job and its log: the orchestration log.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    pub id: String,
    #[schema(example = "access.create")]
    pub kind: String,
    /// pending, running, completed, failed, or stuck (the router refused a command as
    /// unknown or invalid: not retried; `last_error` holds the router's words).
    #[schema(example = "pending")]
    pub state: String,
    pub attempts: i64,
    pub max_attempts: i64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub started_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    pub last_error: Option<String>,
    pub lines: Vec<JobLineView>,
}

/// One audit log entry.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AuditView {
    pub id: String,
    #[schema(format = DateTime)]
    pub at: String,
    pub actor: String,
    pub actor_address: Option<String>,
    #[schema(example = "forward.create")]
    pub action: String,
    pub target: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

// ---------------------------------------------------------------- tokens and users

/// Role of a user or token.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RoleDto {
    Admin,
    Operator,
    Viewer,
}

/// A new API token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1–64 characters, no control characters, no white space at either end.
    #[schema(
        example = "ci",
        min_length = 1,
        max_length = 64,
        pattern = "^[^\\s\\x00-\\x1f\\x7f-\\x9f](?:[^\\x00-\\x1f\\x7f-\\x9f]*[^\\s\\x00-\\x1f\\x7f-\\x9f])?$"
    )]
    pub name: String,
    pub role: RoleDto,
    /// Days until it stops working (1–3650; default: never).
    #[schema(minimum = 1, maximum = 3650)]
    pub expires_in_days: Option<i64>,
}

/// An API token as listed (the secret is shown only once, at creation).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: RoleDto,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
}

/// A token just made: the only time `token` is shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NewTokenView {
    #[serde(flatten)]
    pub info: TokenView,
    #[schema(example = "pst_…")]
    pub token: String,
}

/// A new user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// 1–64 letters, digits, `.`, `_`, `@` and `-`; unique in the organisation (409).
    #[schema(
        example = "alice",
        min_length = 1,
        max_length = 64,
        pattern = "^[A-Za-z0-9._@-]+$"
    )]
    pub username: String,
    pub role: RoleDto,
    /// 12–1024 characters; generated (and shown once) when absent.
    #[schema(min_length = 12, max_length = 1024)]
    pub password: Option<String>,
}

/// Changes to a user.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub role: Option<RoleDto>,
    pub disabled: Option<bool>,
}

/// A user (never the password hash).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub role: RoleDto,
    pub disabled: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
}

/// A user just made, with the password if the server generated it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NewUserView {
    #[serde(flatten)]
    pub user: UserView,
    pub password: Option<String>,
}

/// A region routers can be placed in, and the gateway that serves it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RegionView {
    #[schema(example = "local")]
    pub name: String,
    /// Where operators connect for grants of routers in this region.
    #[schema(example = "127.0.0.1")]
    pub entry_point: String,
    pub port_min: u16,
    pub port_max: u16,
    pub gateway: RegionGatewayView,
}

/// Who serves a region: `local`, the server's own gateway; `remote`, a `postern gateway`
/// the server drives over the control channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GatewayModeDto {
    Local,
    Remote,
}

/// How a remote region's gateway stands, as the server answering sees it: `none`, no
/// gateway was added for the region (`postern admin add-gateway`); `pending`, added but
/// not joined yet; `connecting`, joined but not reached since this server started;
/// `up`, its control link is up and converged; `down`, reached before, not now (see
/// `error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GatewayStateDto {
    None,
    Pending,
    Connecting,
    Up,
    Down,
}

/// A region's gateway. For a `local` region every field but `mode` is null, except
/// `routers` and `routers_up` when this process runs the region's tunnel. For a
/// `remote` one, the figures (`status_at` to `events_dropped`) are from the gateway's
/// last status report (every 2 s while the link is up), null until one came.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RegionGatewayView {
    pub mode: GatewayModeDto,
    /// The gateway's id (null for a local region, or when none was added).
    pub id: Option<String>,
    /// Null for a local region.
    pub state: Option<GatewayStateDto>,
    /// Since when `state` holds: up or down since (a link's), or when a pending gateway
    /// was added; null otherwise.
    #[schema(format = DateTime)]
    pub since: Option<String>,
    /// Why the link is down (`down` only).
    pub error: Option<String>,
    /// `host:port` where servers reach its control channel, as it joined.
    #[schema(example = "gw-eu.example.net:7443")]
    pub control_address: Option<String>,
    /// `host:port` routers send WireGuard to, as it joined.
    #[schema(example = "gw-eu.example.net:51820")]
    pub tunnel_endpoint: Option<String>,
    #[schema(format = DateTime)]
    pub joined_at: Option<String>,
    /// Until when a pending gateway's join token works.
    #[schema(format = DateTime)]
    pub token_expires_at: Option<String>,
    /// When the gateway made its last status report (by its clock).
    #[schema(format = DateTime)]
    pub status_at: Option<String>,
    /// Routers admitted to the region's tunnel.
    pub routers: Option<u64>,
    /// Of those, heard from within about three keepalives (80 s), as a router's
    /// `online` status is computed.
    pub routers_up: Option<u64>,
    /// Connections open through its entry ports.
    pub live_connections: Option<u64>,
    /// Events (connections, refusals, closes) it holds until a server records them.
    pub events_pending: Option<u64>,
    /// Events it dropped for want of room (openings and refusals only), since it started.
    pub events_dropped: Option<u64>,
}

/// Who the caller is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MeView {
    pub organisation_id: String,
    pub organisation: String,
    /// As the audit log names the caller: a user name or `token:<name>`.
    pub actor: String,
    pub role: RoleDto,
    /// The address the server sees the caller at (the default `allow_from`).
    pub address: String,
}

/// `/healthz`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
    /// sqlite or postgres.
    pub database: String,
}

impl From<domain::Role> for RoleDto {
    fn from(r: domain::Role) -> Self {
        match r {
            domain::Role::Admin => Self::Admin,
            domain::Role::Operator => Self::Operator,
            domain::Role::Viewer => Self::Viewer,
        }
    }
}

impl From<RoleDto> for domain::Role {
    fn from(r: RoleDto) -> Self {
        match r {
            RoleDto::Admin => Self::Admin,
            RoleDto::Operator => Self::Operator,
            RoleDto::Viewer => Self::Viewer,
        }
    }
}

impl From<domain::AccessType> for AccessTypeDto {
    fn from(t: domain::AccessType) -> Self {
        match t {
            domain::AccessType::Winbox => Self::Winbox,
            domain::AccessType::Ssh => Self::Ssh,
        }
    }
}

impl From<AccessTypeDto> for domain::AccessType {
    fn from(t: AccessTypeDto) -> Self {
        match t {
            AccessTypeDto::Winbox => Self::Winbox,
            AccessTypeDto::Ssh => Self::Ssh,
        }
    }
}

impl From<domain::AccessLevel> for AccessLevelDto {
    fn from(t: domain::AccessLevel) -> Self {
        match t {
            domain::AccessLevel::Full => Self::Full,
            domain::AccessLevel::Write => Self::Write,
            domain::AccessLevel::Read => Self::Read,
        }
    }
}

impl From<AccessLevelDto> for domain::AccessLevel {
    fn from(t: AccessLevelDto) -> Self {
        match t {
            AccessLevelDto::Full => Self::Full,
            AccessLevelDto::Write => Self::Write,
            AccessLevelDto::Read => Self::Read,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_look_like_the_reference() {
        let at = DateTime::parse_from_rfc3339("2024-06-22T04:33:29.123Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(timestamp(at), "2024-06-22T04:33:29+00:00");
    }
}
