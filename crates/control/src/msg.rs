//! The control channel's messages: [`Down`] from a server to a gateway (desired state),
//! [`Up`] from a gateway to a server (what it holds, replies, events, status), and the
//! dial request of a stream to a router. JSON, so a frame reads in a capture and a
//! field added by a newer release is ignored by an older one; [`PROTOCOL`] is the
//! version both sides state first and must share.
//!
//! Every operation is idempotent and keyed (a grant by its [`GrantKey`], a peer by its
//! router), so several servers may drive one gateway at once: an `Open` of an open grant
//! is an `Opened`, a `Close` of a closed one nothing. A server sends `Close` or
//! `RemovePeer` only for what its database says is gone; a closed grant is never opened
//! again (the gateway remembers it until its deadline has passed).

use std::net::{Ipv4Addr, SocketAddr};

use chrono::{DateTime, Utc};
use domain::{AllowFrom, GatewayRunId, RegionId, RouterId};
use serde::{Deserialize, Serialize};

/// The version of this protocol. A side that receives another version says so and
/// closes the stream.
pub const PROTOCOL: u32 = 1;

pub use domain::{BadGrantKey, GrantKey};

/// Where a grant's connections (or a dial) go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "via", rename_all = "snake_case")]
pub enum Target {
    /// Through the region's management tunnel, to a router's tunnel address.
    Tunnel { address: Ipv4Addr, port: u16 },
    /// Plain TCP from the gateway (a router reached directly: its own VPN, RouterOS 6).
    Direct { address: SocketAddr },
}

impl Target {
    /// The address connections reach in the end.
    pub fn address(&self) -> SocketAddr {
        match *self {
            Target::Tunnel { address, port } => SocketAddr::from((address, port)),
            Target::Direct { address } => address,
        }
    }
}

/// Which sources may use a grant's entry port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sources {
    pub allow: Vec<AllowFrom>,
    /// Also admit private sources (RFC 1918 and fc00::/7).
    #[serde(default)]
    pub allow_rfc1918: bool,
}

/// A router's key in a region's tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerSpec {
    pub router: RouterId,
    pub region: RegionId,
    /// WireGuard public key, base64.
    pub public_key: String,
    /// The router's address inside the tunnel.
    pub address: Ipv4Addr,
    /// Where the router was last seen (its NAT's address and port), so a gateway that
    /// just started can resume the session at once rather than at the router's next
    /// handshake.
    #[serde(default)]
    pub endpoint: Option<SocketAddr>,
}

/// An entry port to open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantSpec {
    pub key: GrantKey,
    pub region: RegionId,
    /// The entry port (chosen by the control plane from the region's range).
    pub port: u16,
    pub target: Target,
    pub sources: Sources,
    /// When the port closes and its connections are killed, whether or not any server
    /// is connected then.
    pub expires_at: DateTime<Utc>,
}

/// Why a grant ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    Expired,
    Revoked,
    /// Provisioning gave up.
    Failed,
}

/// From a server to a gateway, on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Down {
    /// The first frame: who speaks, in which version.
    Hello { protocol: u32, server: String },
    /// Admit (or update) a router's key in its region's tunnel.
    UpsertPeer(PeerSpec),
    /// End the router's tunnel session and streams, and forget its key.
    RemovePeer { router: RouterId },
    /// Open (or keep) a grant's entry port; answered with `Opened` or `OpenFailed`.
    Open(GrantSpec),
    /// The grant's end moved.
    SetDeadline {
        key: GrantKey,
        expires_at: DateTime<Utc>,
    },
    /// The router moved: new connections of the grant go to `target`.
    SetTarget { key: GrantKey, target: Target },
    /// Close the grant's port and kill its live connections now.
    Close { key: GrantKey, reason: CloseReason },
    /// Everything the server wants of this gateway has been sent since the gateway's
    /// `State` (the end of a resynchronisation).
    Synced,
    /// Every event up to and including `seq` is recorded: the gateway may forget them.
    Ack { seq: u64 },
    /// The gateway's certificate nears its end: answered with `CertificateRequest`, a
    /// request made with the key the gateway already holds (or `Refused`).
    RenewCertificate,
    /// The renewed certificate (PEM): the gateway takes it only if it chains to its CA,
    /// names it and carries its key, keeps it, and serves new connections with it;
    /// answered with `CertificateRenewed` (or `Refused`: it keeps the one it has).
    Certificate { certificate_pem: String },
}

/// A grant as a gateway holds it, in its `State`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldGrant {
    pub key: GrantKey,
    pub region: RegionId,
    pub port: u16,
    pub expires_at: DateTime<Utc>,
}

/// A peer as a gateway holds it, in its `State`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldPeer {
    pub router: RouterId,
    pub region: RegionId,
    pub public_key: String,
}

/// A region as a gateway serves it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionInfo {
    pub region: RegionId,
    pub name: String,
    /// The region tunnel's public key (base64); the private half never leaves the
    /// gateway.
    pub public_key: String,
    /// The gateway's own address inside the tunnel.
    pub gateway_address: Ipv4Addr,
    /// `host:port` routers send WireGuard to.
    pub endpoint: String,
    /// The entry ports it may open, inclusive.
    pub port_min: u16,
    pub port_max: u16,
}

/// What a gateway holds when a control stream starts: the server converges from it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayState {
    pub protocol: u32,
    /// The gateway's identity (as in its certificate).
    pub gateway: String,
    /// Changes at every start of the gateway process: with a connection's `id`, names a
    /// connection uniquely, so an event sent twice is recorded once.
    pub boot: GatewayRunId,
    pub regions: Vec<RegionInfo>,
    pub grants: Vec<HeldGrant>,
    pub peers: Vec<HeldPeer>,
    /// The first event not yet acknowledged by any server (events before it are gone).
    pub next_seq: u64,
}

/// How a gateway refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    SourceNotAllowed,
    TooManyConnections,
    TooManyFromSource,
}

/// What happened at a gateway's entry ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    ConnectionOpened {
        key: GrantKey,
        /// Unique within the gateway's boot.
        id: u64,
        source: SocketAddr,
        at: DateTime<Utc>,
        /// The grant's first allowed connection (its `authorized_at`).
        first: bool,
    },
    ConnectionClosed {
        key: GrantKey,
        id: u64,
        source: SocketAddr,
        started_at: DateTime<Utc>,
        at: DateTime<Utc>,
        bytes_in: u64,
        bytes_out: u64,
        /// `finished`, `revoked`, `expired`, `shutdown`, `target unreachable`,
        /// `error: …`.
        reason: String,
    },
    ConnectionRefused {
        key: GrantKey,
        source: SocketAddr,
        at: DateTime<Utc>,
        refusal: Refusal,
    },
    /// The grant's port closed (revoke, deadline, shutdown) and its connections were
    /// killed.
    GrantClosed {
        key: GrantKey,
        at: DateTime<Utc>,
        reason: String,
        connections_killed: u64,
    },
}

/// A router's tunnel as the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub router: RouterId,
    /// Its public address and port as seen by the gateway (the NAT's), once it spoke.
    pub endpoint: Option<SocketAddr>,
    pub last_handshake_at: Option<DateTime<Utc>>,
    /// Its last authenticated datagram (keepalives included).
    pub last_seen_at: Option<DateTime<Utc>>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A live connection's byte counts so far.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveConnection {
    pub key: GrantKey,
    pub id: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

/// A region tunnel's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelFigures {
    pub region: RegionId,
    pub peers: u64,
    pub peers_up: u64,
    pub handshakes: u64,
    pub handshakes_refused: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A gateway's periodic report (every couple of seconds, to every connected server).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub at: DateTime<Utc>,
    pub peers: Vec<PeerStatus>,
    pub connections: Vec<LiveConnection>,
    pub tunnels: Vec<TunnelFigures>,
    /// Connections refused so far, by refusal.
    pub refused: Vec<(Refusal, u64)>,
    /// Events dropped for want of room (openings and refusals only; ends never are).
    pub events_dropped: u64,
    /// Events held for want of an acknowledgement.
    pub events_pending: u64,
}

/// From a gateway to a server, on the control stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Up {
    /// The first frame: what the gateway holds now.
    State(GatewayState),
    /// An `Open` took effect (or the grant was already open): its port listens.
    Opened {
        key: GrantKey,
        listen: SocketAddr,
    },
    /// An `Open` did not: the port could not be bound, the grant was already closed, the
    /// region is not served here.
    OpenFailed {
        key: GrantKey,
        error: String,
    },
    /// An event, numbered; resent until acknowledged.
    Event {
        seq: u64,
        event: Event,
    },
    Status(Status),
    /// A frame was refused (it did not parse, or named a region not served here); the
    /// stream goes on.
    Refused {
        error: String,
    },
    /// The answer to `RenewCertificate`: a certificate request (PEM, PKCS#10) made with
    /// the key the gateway's current certificate carries.
    CertificateRequest {
        csr_pem: String,
    },
    /// The answer to `Certificate`: it is kept, and new connections get it.
    CertificateRenewed {
        not_after: DateTime<Utc>,
    },
}

/// What a dial stream asks for: the first frame of a dial stream, answered by
/// [`DialReply`], then raw bytes both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialRequest {
    pub region: RegionId,
    pub target: Target,
}

/// How a dial ended, mirroring `std::io::ErrorKind` where it matters to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DialError {
    TimedOut,
    Refused,
    /// No session with the router, or the region is not served here.
    NotConnected,
    Other,
}

/// The answer to a [`DialRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum DialReply {
    Connected,
    Failed { error: DialError, message: String },
}

/// A gateway's enrolment (`POST /api/gateways/join` on a server's public URL): the
/// single-use token from `postern admin add-gateway` is the credential. The gateway made
/// both private keys itself; only their public halves travel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    /// A PKCS#10 request for the control channel's certificate, PEM.
    pub csr_pem: String,
    /// The region tunnel's WireGuard public key, base64.
    pub wireguard_public_key: String,
    /// `host:port` where servers reach the gateway's control channel.
    pub control_address: String,
    /// `host:port` routers send WireGuard to.
    pub tunnel_endpoint: String,
    /// The host operators connect to for entry ports (a name or an address).
    pub entry_host: String,
}

/// The region a gateway joined, as the control plane configured it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinedRegion {
    pub id: RegionId,
    pub name: String,
    /// The tunnel's prefix, e.g. `100.64.1.0/24`.
    pub prefix: String,
    /// The gateway's own address inside it.
    pub gateway_address: Ipv4Addr,
    pub port_min: u16,
    pub port_max: u16,
}

/// What a gateway gets back from a join: its identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinResponse {
    pub gateway_id: domain::GatewayId,
    pub region: JoinedRegion,
    /// Its control-channel certificate, signed by the control plane's CA, PEM.
    pub certificate_pem: String,
    /// The control plane's CA certificate, PEM: what servers' client certificates chain to.
    pub ca_pem: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{AccessId, ForwardId};

    #[test]
    fn grant_keys_round_trip_as_text_and_noise_is_refused() {
        let key = GrantKey::Access(AccessId::new());
        let text = serde_json::to_string(&key).unwrap();
        assert!(text.starts_with("\"access:"), "{text}");
        assert_eq!(serde_json::from_str::<GrantKey>(&text).unwrap(), key);
        for noise in ["\"\"", "\"access\"", "\"router:x\"", "\"access:nope\"", "7"] {
            assert!(serde_json::from_str::<GrantKey>(noise).is_err(), "{noise}");
        }
    }

    #[test]
    fn messages_round_trip() {
        let key = GrantKey::Forward(ForwardId::new());
        let down = Down::Open(GrantSpec {
            key,
            region: RegionId::new(),
            port: 40001,
            target: Target::Tunnel {
                address: Ipv4Addr::new(100, 64, 0, 7),
                port: 8291,
            },
            sources: Sources {
                allow: vec![],
                allow_rfc1918: true,
            },
            expires_at: DateTime::from_timestamp_millis(1_790_000_000_000).unwrap(),
        });
        let text = serde_json::to_string(&down).unwrap();
        assert!(text.contains("\"type\":\"open\""), "{text}");
        assert_eq!(serde_json::from_str::<Down>(&text).unwrap(), down);
        let up = Up::OpenFailed {
            key,
            error: "port in use".into(),
        };
        let text = serde_json::to_string(&up).unwrap();
        assert_eq!(serde_json::from_str::<Up>(&text).unwrap(), up);
    }

    #[test]
    fn renewal_frames_are_new_variants_beside_the_old_ones() {
        // An old frame reads as before.
        let old: Down = serde_json::from_str(r#"{"type":"ack","seq":7}"#).unwrap();
        assert_eq!(old, Down::Ack { seq: 7 });
        let ask = serde_json::to_string(&Down::RenewCertificate).unwrap();
        assert_eq!(ask, r#"{"type":"renew_certificate"}"#);
        let cert = Down::Certificate {
            certificate_pem: "-----BEGIN CERTIFICATE-----".into(),
        };
        let text = serde_json::to_string(&cert).unwrap();
        assert!(text.contains(r#""type":"certificate""#), "{text}");
        assert_eq!(serde_json::from_str::<Down>(&text).unwrap(), cert);
        for up in [
            Up::CertificateRequest {
                csr_pem: "-----BEGIN CERTIFICATE REQUEST-----".into(),
            },
            Up::CertificateRenewed {
                not_after: DateTime::from_timestamp(1_900_000_000, 0).unwrap(),
            },
        ] {
            let text = serde_json::to_string(&up).unwrap();
            assert_eq!(serde_json::from_str::<Up>(&text).unwrap(), up);
        }
    }
}
