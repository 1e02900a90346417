//! The rows the store hands out (records, all fields public) and the inputs it takes
//! (`New*`, `*Patch`). Secrets are never fields of a record: they are read on their own
//! (`router_password`, `access_password`).

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use domain::{
    AccessId, AccessLevel, AccessType, AllowFrom, ForwardId, GrantStatus, JobId, JobState, OrgId,
    RegionId, Role, RouterId, RouterStatus, SiteId, TokenId, UserId,
};
use serde::Serialize;

/// What `Debug` shows in place of a password or password hash.
const REDACTED: &str = "<redacted>";

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Organisation {
    pub id: OrgId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A person who logs in with a password (argon2id hash made by the caller).
#[derive(Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub org_id: OrgId,
    pub username: String,
    pub role: Role,
    pub password_hash: String,
    pub disabled: bool,
    pub created_at: DateTime<Utc>,
}

/// Input of `create_user`.
#[derive(Clone)]
pub struct NewUser {
    pub org_id: OrgId,
    pub username: String,
    pub role: Role,
    pub password_hash: String,
}

/// An API token; the store only ever sees its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: TokenId,
    pub org_id: OrgId,
    pub name: String,
    pub role: Role,
    /// sha256 of the token, hex.
    pub token_hash: String,
    pub created_by: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// Input of `create_api_token`.
#[derive(Debug, Clone)]
pub struct NewApiToken {
    pub org_id: OrgId,
    pub name: String,
    pub role: Role,
    pub token_hash: String,
    pub created_by: Option<UserId>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// A regional gateway: where operators connect and which ports it hands out. Global
/// (shared by all organisations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Region {
    pub id: RegionId,
    pub name: String,
    pub entry_point: String,
    pub port_min: u16,
    pub port_max: u16,
    pub created_at: DateTime<Utc>,
}

/// Input of `upsert_region` (keyed by name).
#[derive(Debug, Clone)]
pub struct NewRegion {
    pub name: String,
    pub entry_point: String,
    pub port_min: u16,
    pub port_max: u16,
}

/// A place with one router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Site {
    pub id: SiteId,
    pub org_id: OrgId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

/// A managed router. Its management password is not here: see `router_password`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    pub id: RouterId,
    pub org_id: OrgId,
    pub site_id: SiteId,
    pub region_id: RegionId,
    pub name: String,
    pub tunnel_address: IpAddr,
    pub api_port: u16,
    pub ssh_port: u16,
    pub winbox_port: u16,
    /// The API is reached over TLS (API-SSL), with the certificate pinned below.
    pub api_tls: bool,
    /// The SHA-256 of the router's certificate, as `CertFingerprint` prints it; with
    /// `api_tls` and none yet, the first connection's is pinned and kept.
    pub api_tls_fingerprint: Option<String>,
    /// How the router is reached: directly at `tunnel_address`, or through its region's
    /// WireGuard tunnel (then `tunnel_address` is its address inside the tunnel prefix).
    pub reach: Reach,
    /// A tunnelled router's WireGuard public key (base64); `None` while it is pending
    /// (not enrolled yet), and always for a direct router.
    pub tunnel_public_key: Option<String>,
    pub username: String,
    pub status: RouterStatus,
    pub identity: Option<String>,
    pub routeros_version: Option<String>,
    pub board_name: Option<String>,
    /// As the router printed it when last seen (`1w2d3h4m5s`).
    pub uptime: Option<String>,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Input of `create_router`.
#[derive(Clone)]
pub struct NewRouter {
    pub org_id: OrgId,
    /// The site to put the router in, created if absent; `None` means the router's name.
    pub site_name: Option<String>,
    pub region_id: RegionId,
    pub name: String,
    pub tunnel_address: IpAddr,
    pub api_port: u16,
    pub ssh_port: u16,
    pub winbox_port: u16,
    pub api_tls: bool,
    pub api_tls_fingerprint: Option<String>,
    pub username: String,
    /// Plaintext; encrypted before it reaches the database.
    pub password: String,
}

/// How Postern reaches a router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reach {
    /// At its `tunnel_address`, which the gateway already has a path to (the operator's
    /// own VPN, a LAN, RouterOS 6).
    Direct,
    /// Only through its region's WireGuard tunnel, terminated by the gateway.
    Tunnel,
}

impl Reach {
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::Direct => "direct",
            Reach::Tunnel => "tunnel",
        }
    }
}

impl fmt::Display for Reach {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Reach {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "direct" => Ok(Reach::Direct),
            "tunnel" => Ok(Reach::Tunnel),
            other => Err(format!("unknown reach {other:?}")),
        }
    }
}

/// Input of `create_tunnel_router`: a router reached through its region's tunnel,
/// pending until it enrols (`set_router_tunnel_key`). Its tunnel address is the next
/// free one of `tunnel_prefix` (never `gateway_address`, the network or broadcast
/// address), chosen in the creating transaction.
#[derive(Clone)]
pub struct NewTunnelRouter {
    pub org_id: OrgId,
    /// The site to put the router in, created if absent; `None` means the router's name.
    pub site_name: Option<String>,
    pub region_id: RegionId,
    pub name: String,
    pub tunnel_prefix: ipnet::Ipv4Net,
    pub gateway_address: std::net::Ipv4Addr,
    pub api_port: u16,
    pub ssh_port: u16,
    pub winbox_port: u16,
    pub username: String,
    /// Plaintext; encrypted before it reaches the database.
    pub password: String,
}

impl fmt::Debug for NewTunnelRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewTunnelRouter")
            .field("org_id", &self.org_id)
            .field("site_name", &self.site_name)
            .field("region_id", &self.region_id)
            .field("name", &self.name)
            .field("tunnel_prefix", &self.tunnel_prefix)
            .field("gateway_address", &self.gateway_address)
            .field("username", &self.username)
            .field("password", &REDACTED)
            .finish()
    }
}

/// A region's WireGuard identity: its public key (base64) and when it was made. The
/// private key is read on its own (`region_tunnel_private_key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionTunnel {
    pub region_id: RegionId,
    pub public_key: String,
    pub created_at: DateTime<Utc>,
}

/// An enrolled tunnelled router, as the gateway loads it as a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelPeer {
    pub router_id: RouterId,
    pub org_id: OrgId,
    pub region_id: RegionId,
    pub public_key: String,
    pub tunnel_address: IpAddr,
    /// Where the gateway last saw the router (`ip:port`), if it ever did.
    pub endpoint: Option<String>,
}

/// Input of `update_router`: `None` leaves a field as it is.
#[derive(Clone, Default)]
pub struct RouterPatch {
    pub name: Option<String>,
    pub tunnel_address: Option<IpAddr>,
    pub api_port: Option<u16>,
    pub ssh_port: Option<u16>,
    pub winbox_port: Option<u16>,
    pub api_tls: Option<bool>,
    /// `Some(None)` forgets the pin (the next connection pins afresh).
    pub api_tls_fingerprint: Option<Option<String>>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub region_id: Option<RegionId>,
}

/// What Postern learnt by talking to a router. `None` leaves a field as it is.
#[derive(Debug, Clone)]
pub struct RouterFacts {
    pub status: RouterStatus,
    pub identity: Option<String>,
    pub routeros_version: Option<String>,
    pub board_name: Option<String>,
    pub uptime: Option<String>,
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// A transient access grant: a temporary RouterOS user behind a gateway port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransientAccess {
    pub id: AccessId,
    pub org_id: OrgId,
    pub router_id: RouterId,
    pub region_id: RegionId,
    pub access_type: AccessType,
    pub access: AccessLevel,
    pub allow_rfc1918: bool,
    pub allow_from: AllowFrom,
    pub username: String,
    /// The gateway port.
    pub port: u16,
    pub entry_point: String,
    pub status: GrantStatus,
    /// Who asked, for display: "alice" or "token:ci".
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub authorized_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub revoked_early: bool,
    pub failure_reason: Option<String>,
    /// Made by the portal's Terminal: the server connects to the router itself, and the
    /// gateway opens no entry port for it.
    pub terminal: bool,
}

/// Input of `create_access`.
#[derive(Clone)]
pub struct NewAccess {
    pub org_id: OrgId,
    pub router_id: RouterId,
    pub access_type: AccessType,
    pub access: AccessLevel,
    pub allow_rfc1918: bool,
    pub allow_from: AllowFrom,
    pub username: String,
    /// Plaintext; encrypted before it reaches the database.
    pub password: String,
    pub expires_at: DateTime<Utc>,
    pub created_by: String,
    pub region_id: RegionId,
    pub entry_point: String,
    /// Gateway ports to try, in order; the first one free in the region is taken.
    pub port_candidates: Vec<u16>,
    /// Written in the same transaction; its `at` is the grant's `created_at`.
    pub audit: NewAudit,
    /// The first job, written in the same transaction.
    pub job: Option<NewJob>,
    /// For the portal's Terminal: no gateway entry port is opened for it.
    pub terminal: bool,
}

/// A transient port forward: a gateway port to a LAN device through a router dst-nat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransientForward {
    pub id: ForwardId,
    pub org_id: OrgId,
    pub router_id: RouterId,
    pub region_id: RegionId,
    pub dst_address: IpAddr,
    pub dst_port: u16,
    pub masquerade: bool,
    pub allow_from: AllowFrom,
    /// The gateway port.
    pub port: u16,
    /// The dst-nat port on the router's tunnel address.
    pub router_port: u16,
    pub entry_point: String,
    pub status: GrantStatus,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub authorized_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub revoked_early: bool,
    pub failure_reason: Option<String>,
}

/// Input of `create_forward`.
#[derive(Debug, Clone)]
pub struct NewForward {
    pub org_id: OrgId,
    pub router_id: RouterId,
    pub dst_address: IpAddr,
    pub dst_port: u16,
    pub masquerade: bool,
    pub allow_from: AllowFrom,
    pub expires_at: DateTime<Utc>,
    pub created_by: String,
    pub region_id: RegionId,
    pub entry_point: String,
    /// Gateway ports to try, in order (unique per region among unfinished grants).
    pub port_candidates: Vec<u16>,
    /// Router dst-nat ports to try, in order (unique per router among unfinished forwards).
    pub router_port_candidates: Vec<u16>,
    pub audit: NewAudit,
    pub job: Option<NewJob>,
}

/// A durable router job and its state (leasing is the orchestrator's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: JobId,
    pub org_id: OrgId,
    pub router_id: RouterId,
    pub kind: String,
    pub payload: serde_json::Value,
    pub state: JobState,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_after: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    /// The number of the last line of its log when this record was read (lines are
    /// numbered 1, 2, … across attempts; 0 when there is none): a worker numbers the
    /// lines it adds from here.
    pub log_seq: u32,
}

/// Input of `create_job` (state `pending`, no attempts yet).
#[derive(Debug, Clone)]
pub struct NewJob {
    pub org_id: OrgId,
    pub router_id: RouterId,
    pub kind: String,
    pub payload: serde_json::Value,
    pub max_attempts: u32,
    pub run_after: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

/// One line of a job's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobLine {
    pub job_id: JobId,
    /// 1, 2, … within the job.
    pub seq: u32,
    pub at: DateTime<Utc>,
    pub message: String,
}

/// One entry of the append-only audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditEntry {
    /// Increasing in append order.
    pub id: i64,
    pub org_id: OrgId,
    pub at: DateTime<Utc>,
    /// "alice" or "token:ci".
    pub actor: String,
    pub actor_address: Option<IpAddr>,
    /// "transient_access.create", "router.delete", …
    pub action: String,
    pub target: Option<String>,
    pub details: serde_json::Value,
}

/// Input of `append_audit`.
#[derive(Debug, Clone)]
pub struct NewAudit {
    pub org_id: OrgId,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub actor_address: Option<IpAddr>,
    pub action: String,
    pub target: Option<String>,
    pub details: serde_json::Value,
}

/// Live grants (requested, provisioning, active or closing) on a router and in its
/// organisation, from `Store::count_live_grants`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveCounts {
    pub router: u64,
    pub org: u64,
}

/// What a server reads, in one statement, to know whether a grant list it cached is
/// still exact: the router's grants version, and whether a cached API token still exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListStamp {
    /// The router's `grants_version`, which goes up with every insert or update of one of
    /// its grants; `None` when the router is not in the organisation asked about.
    pub grants_version: Option<i64>,
    /// Whether the token asked about still exists (`false` when none was).
    pub token_exists: bool,
}

/// A window of a newest-first list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    /// At most this many rows (capped at 1000).
    pub limit: u32,
    /// Skip this many rows first.
    pub offset: u32,
}

impl Default for Page {
    fn default() -> Self {
        Self {
            limit: 50,
            offset: 0,
        }
    }
}

impl Page {
    pub(crate) fn limit_i64(self) -> i64 {
        i64::from(self.limit.min(1000))
    }

    pub(crate) fn offset_i64(self) -> i64 {
        i64::from(self.offset)
    }
}

// Debug by hand where a record or input holds a password or its hash: logs never see it.

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("password_hash", &REDACTED)
            .field("disabled", &self.disabled)
            .field("created_at", &self.created_at)
            .finish()
    }
}

impl fmt::Debug for NewUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewUser")
            .field("org_id", &self.org_id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("password_hash", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for NewRouter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewRouter")
            .field("org_id", &self.org_id)
            .field("site_name", &self.site_name)
            .field("region_id", &self.region_id)
            .field("name", &self.name)
            .field("tunnel_address", &self.tunnel_address)
            .field("api_port", &self.api_port)
            .field("ssh_port", &self.ssh_port)
            .field("winbox_port", &self.winbox_port)
            .field("api_tls", &self.api_tls)
            .field("api_tls_fingerprint", &self.api_tls_fingerprint)
            .field("username", &self.username)
            .field("password", &REDACTED)
            .finish()
    }
}

impl fmt::Debug for RouterPatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouterPatch")
            .field("name", &self.name)
            .field("tunnel_address", &self.tunnel_address)
            .field("api_port", &self.api_port)
            .field("ssh_port", &self.ssh_port)
            .field("winbox_port", &self.winbox_port)
            .field("api_tls", &self.api_tls)
            .field("api_tls_fingerprint", &self.api_tls_fingerprint)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("region_id", &self.region_id)
            .finish()
    }
}

impl fmt::Debug for NewAccess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewAccess")
            .field("org_id", &self.org_id)
            .field("router_id", &self.router_id)
            .field("access_type", &self.access_type)
            .field("access", &self.access)
            .field("allow_rfc1918", &self.allow_rfc1918)
            .field("allow_from", &self.allow_from)
            .field("username", &self.username)
            .field("password", &REDACTED)
            .field("expires_at", &self.expires_at)
            .field("created_by", &self.created_by)
            .field("region_id", &self.region_id)
            .field("entry_point", &self.entry_point)
            .field("port_candidates", &self.port_candidates.len())
            .field("audit", &self.audit)
            .field("job", &self.job)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_passwords_or_hashes() {
        let org = OrgId::new();
        let user = User {
            id: UserId::new(),
            org_id: org,
            username: "alice".into(),
            role: Role::Admin,
            password_hash: "$argon2id$secret-hash".into(),
            disabled: false,
            created_at: Utc::now(),
        };
        let patch = RouterPatch {
            password: Some("router-secret".into()),
            ..RouterPatch::default()
        };
        let new_user = NewUser {
            org_id: org,
            username: "bob".into(),
            role: Role::Viewer,
            password_hash: "$argon2id$secret-hash".into(),
        };
        let router = NewRouter {
            org_id: org,
            site_name: None,
            region_id: RegionId::new(),
            name: "r".into(),
            tunnel_address: "100.64.0.2".parse().unwrap(),
            api_port: 8728,
            ssh_port: 22,
            winbox_port: 8291,
            api_tls: false,
            api_tls_fingerprint: None,
            username: "admin".into(),
            password: "router-secret".into(),
        };
        let text = format!("{user:?} {patch:?} {new_user:?} {router:?}");
        assert!(!text.contains("secret"), "{text}");
        assert!(text.contains("alice") && text.contains("<redacted>"));
    }
}
