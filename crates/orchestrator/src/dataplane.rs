//! The hook to the data plane (the gateway): what the orchestrator tells it when a grant
//! becomes active, changes its end, or ends. The server implements it with the gateway
//! crate; until then [`LoggingDataPlane`] only logs. Calls are synchronous and must not
//! block: the gateway closes listeners and connections on its own tasks.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;

use chrono::{DateTime, Utc};
use domain::RegionId;
use tokio::io::{AsyncRead, AsyncWrite};

/// The name of a tunnelled router's WireGuard interface, as its enrolment script
/// creates it: a forward's dst-nat rule matches it (`in-interface=`).
pub const TUNNEL_INTERFACE: &str = "postern";

/// A byte stream to a router (a TCP connection, directly or inside the management
/// tunnel).
pub trait RouterIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> RouterIo for T {}

/// A boxed [`RouterIo`].
pub type RouterStream = Box<dyn RouterIo>;

/// What [`DataPlane::dial`] returns.
pub type DialFuture = Pin<Box<dyn Future<Output = io::Result<RouterStream>> + Send>>;

/// Opens a TCP connection to a router reached directly (its `tunnel_address` and
/// `port`), Nagle off; a tunnelled router is refused: it is reached only through the
/// tunnel.
pub fn dial_direct(router: &store::Router, port: u16) -> DialFuture {
    let address = SocketAddr::new(router.tunnel_address, port);
    let reach = router.reach;
    Box::pin(async move {
        if reach == store::Reach::Tunnel {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the router is reached only through the tunnel, and no gateway here serves it",
            ));
        }
        let tcp = tokio::net::TcpStream::connect(address).await?;
        let _ = tcp.set_nodelay(true);
        Ok(Box::new(tcp) as RouterStream)
    })
}

pub use domain::GrantKey;

/// Why a grant ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// `expires_at` was reached.
    Expired,
    /// Revoked through the API.
    Revoked,
    /// Provisioning gave up.
    Failed,
}

impl EndReason {
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Expired => "expired",
            EndReason::Revoked => "revoked",
            EndReason::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "expired" => EndReason::Expired,
            "revoked" => EndReason::Revoked,
            "failed" => EndReason::Failed,
            _ => return None,
        })
    }
}

/// A grant that became active, for the data plane to open its port.
#[derive(Debug, Clone)]
pub enum LiveGrant {
    Access(store::TransientAccess),
    Forward(store::TransientForward),
}

impl LiveGrant {
    pub fn key(&self) -> GrantKey {
        match self {
            LiveGrant::Access(a) => GrantKey::Access(a.id),
            LiveGrant::Forward(f) => GrantKey::Forward(f.id),
        }
    }

    pub fn status(&self) -> domain::GrantStatus {
        match self {
            LiveGrant::Access(a) => a.status,
            LiveGrant::Forward(f) => f.status,
        }
    }

    pub(crate) fn set_status(&mut self, status: domain::GrantStatus) {
        match self {
            LiveGrant::Access(a) => a.status = status,
            LiveGrant::Forward(f) => f.status = status,
        }
    }
}

/// What the orchestrator asks of the data plane.
pub trait DataPlane: Send + Sync + 'static {
    /// The grant became active on its router: open its gateway port.
    fn open(&self, grant: &LiveGrant);
    /// The grant was already active and still is after a job on its router (an update, a
    /// repair): keep its port. A port this process's gateways hold stays as it is (with
    /// several servers on one database, another server's gateway may hold it); by
    /// default, [`open`](Self::open) again, which a gateway holding it takes as a no-op.
    fn keep(&self, grant: &LiveGrant) {
        self.open(grant);
    }
    /// The grant's end moved.
    fn set_deadline(&self, key: GrantKey, expires_at: DateTime<Utc>);
    /// The grant ends: close its port and kill its live connections now. Called before
    /// the router clean-up job is queued.
    fn close(&self, key: GrantKey, reason: EndReason);
    /// Opens a stream to `port` on `router`: the one way the orchestrator reaches a
    /// router (its API connections, the reconciler). A router reached directly gets a
    /// TCP connection to its `tunnel_address`; a tunnelled one goes only through its
    /// region's tunnel. By default, direct only.
    fn dial(&self, router: &store::Router, port: u16) -> DialFuture {
        dial_direct(router, port)
    }
    /// The gateway's own address inside `region`'s tunnel (what a tunnelled router sees
    /// management and grant connections come from), if a tunnel serves that region.
    fn tunnel_gateway(&self, region: RegionId) -> Option<Ipv4Addr> {
        let _ = region;
        None
    }
}

/// The address routers see the gateway's connections come from: for a tunnelled router
/// the gateway's tunnel address; otherwise the region's tunnel source (or the default).
pub(crate) fn gateway_source(
    dataplane: &dyn DataPlane,
    reach: store::Reach,
    region: RegionId,
    region_source: Option<IpAddr>,
    default_source: Option<IpAddr>,
) -> Option<IpAddr> {
    match reach {
        store::Reach::Tunnel => dataplane.tunnel_gateway(region).map(IpAddr::V4),
        store::Reach::Direct => region_source.or(default_source),
    }
}

/// A data plane that only logs (until the gateway is wired in).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoggingDataPlane;

impl DataPlane for LoggingDataPlane {
    fn open(&self, grant: &LiveGrant) {
        tracing::info!(grant = %grant.key(), "data plane: open (no gateway wired)");
    }

    fn set_deadline(&self, key: GrantKey, expires_at: DateTime<Utc>) {
        tracing::info!(grant = %key, %expires_at, "data plane: new deadline (no gateway wired)");
    }

    fn close(&self, key: GrantKey, reason: EndReason) {
        tracing::info!(grant = %key, reason = reason.as_str(), "data plane: close (no gateway wired)");
    }
}

/// What one process tells the others' gateways about a grant (PostgreSQL `NOTIFY`, see
/// [`store::Store::notify_grants`]): several servers on one database each run a gateway,
/// and the one that opened a grant's port may not be the one its revoke or new end
/// reached. Text, so it reads in `pg_stat_activity` and logs: `close access:<id> revoked`
/// or `deadline forward:<id> <unix ms>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantNote {
    Close(GrantKey, EndReason),
    Deadline(GrantKey, DateTime<Utc>),
}

impl GrantNote {
    pub fn encode(self) -> String {
        match self {
            GrantNote::Close(key, reason) => {
                format!("close {}:{} {}", key.kind(), key.id(), reason.as_str())
            }
            GrantNote::Deadline(key, at) => {
                format!(
                    "deadline {}:{} {}",
                    key.kind(),
                    key.id(),
                    at.timestamp_millis()
                )
            }
        }
    }

    /// `None` for anything else (another version's note, or noise on the channel).
    pub fn decode(payload: &str) -> Option<Self> {
        let mut words = payload.split(' ');
        let (verb, grant, arg) = (words.next()?, words.next()?, words.next()?);
        if words.next().is_some() {
            return None;
        }
        let key = match grant.split_once(':')? {
            ("access", id) => GrantKey::Access(id.parse().ok()?),
            ("forward", id) => GrantKey::Forward(id.parse().ok()?),
            _ => return None,
        };
        match verb {
            "close" => Some(GrantNote::Close(key, EndReason::parse(arg)?)),
            "deadline" => Some(GrantNote::Deadline(
                key,
                DateTime::from_timestamp_millis(arg.parse().ok()?)?,
            )),
            _ => None,
        }
    }

    /// Applies the note to this process's data plane (its own notes come back too: both
    /// calls are idempotent).
    pub fn apply(self, dataplane: &dyn DataPlane) {
        match self {
            GrantNote::Close(key, reason) => dataplane.close(key, reason),
            GrantNote::Deadline(key, at) => dataplane.set_deadline(key, at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{AccessId, ForwardId};

    #[test]
    fn grant_notes_round_trip_and_noise_is_ignored() {
        let key = GrantKey::Access(AccessId::new());
        let at = DateTime::from_timestamp_millis(1_790_000_000_123).unwrap();
        for note in [
            GrantNote::Close(key, EndReason::Revoked),
            GrantNote::Deadline(GrantKey::Forward(ForwardId::new()), at),
        ] {
            assert_eq!(GrantNote::decode(&note.encode()), Some(note));
        }
        for noise in [
            "",
            "close",
            "close access:not-a-uuid revoked",
            "close router:00000000-0000-0000-0000-000000000000 revoked",
            "open access:00000000-0000-0000-0000-000000000000 revoked",
            "close access:00000000-0000-0000-0000-000000000000 sideways",
            "deadline access:00000000-0000-0000-0000-000000000000 soon",
            "close access:00000000-0000-0000-0000-000000000000 revoked extra",
        ] {
            assert_eq!(GrantNote::decode(noise), None, "{noise:?}");
        }
    }
}
