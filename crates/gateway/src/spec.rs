//! What the gateway is asked to open: a grant's key, where to listen, where to forward,
//! which sources may come in, and until when.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;

use domain::AllowFrom;
use domain::rules::{AddressClass, classify};
use tokio::time::Instant;

pub use domain::GrantKey;

/// Which sources may use a grant: its `allow_from` networks, plus the private ranges when
/// `allow_rfc1918` is set. The networks were validated when the grant was made (lab mode
/// included); here they are only matched.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourcePolicy {
    /// The grant's `allow_from` networks.
    pub allow: Vec<AllowFrom>,
    /// Also admit private sources: RFC 1918 (10/8, 172.16/12, 192.168/16) and, as
    /// `domain` classes it, the IPv6 counterpart fc00::/7.
    pub allow_rfc1918: bool,
}

impl SourcePolicy {
    /// A policy of these networks, with or without the private ranges.
    pub fn new(allow: impl IntoIterator<Item = AllowFrom>, allow_rfc1918: bool) -> Self {
        Self {
            allow: allow.into_iter().collect(),
            allow_rfc1918,
        }
    }

    /// Whether a connection from `source` may be forwarded. IPv4-mapped IPv6 sources (a
    /// dual-stack listener) are judged as their IPv4 address.
    pub fn permits(&self, source: IpAddr) -> bool {
        let source = match source {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(source, IpAddr::V4),
            IpAddr::V4(_) => source,
        };
        self.allow.iter().any(|net| net.contains(source))
            || (self.allow_rfc1918 && classify(source) == AddressClass::Private)
    }
}

/// One listener to open: a live grant as the gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSpec {
    /// The grant.
    pub key: GrantKey,
    /// The gateway's address and the grant's port (port 0 picks one, for tests).
    pub listen: SocketAddr,
    /// Where allowed connections go: the router's tunnel address and 8291 or 22, or for a
    /// transient forward the router's dst-nat port; by TCP, or through a dialer (the
    /// management tunnel).
    pub target: Target,
    /// Who may connect.
    pub sources: SourcePolicy,
    /// When the gateway closes the grant on its own (reason `Expired`); `None` for never.
    pub deadline: Option<Instant>,
}

/// A byte stream to a target that is not a kernel TCP socket (a TCP connection inside
/// the management tunnel). Dropping it closes it gracefully; [`Upstream::kill`] resets it.
pub trait Upstream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {
    /// Resets the connection at once (a revoke, an expiry, a shutdown).
    fn kill(&mut self);
}

/// A boxed [`Upstream`].
pub type BoxUpstream = Box<dyn Upstream>;

/// What a [`Dial`] returns.
pub type DialFuture = Pin<Box<dyn Future<Output = io::Result<BoxUpstream>> + Send>>;

/// Opens connections to addresses the kernel cannot reach (inside the management
/// tunnel). The gateway bounds each dial by its `connect_timeout`.
pub trait Dial: Send + Sync + 'static {
    /// Opens a stream to `address`.
    fn dial(&self, address: SocketAddr) -> DialFuture;
    /// What to call this way in logs (`tunnel eu`).
    fn via(&self) -> String;
}

/// Where a grant's connections go.
#[derive(Clone)]
pub enum Target {
    /// A TCP connection from the gateway's host, forwarded with `splice(2)`.
    Tcp(SocketAddr),
    /// A stream opened by a dialer (copied through user space).
    Dial {
        address: SocketAddr,
        dialer: Arc<dyn Dial>,
    },
}

impl Target {
    /// The address connections go to (inside the tunnel for [`Target::Dial`]).
    pub fn address(&self) -> SocketAddr {
        match self {
            Target::Tcp(a) | Target::Dial { address: a, .. } => *a,
        }
    }
}

impl PartialEq for Target {
    /// The same address the same way (the same dialer).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Target::Tcp(a), Target::Tcp(b)) => a == b,
            (
                Target::Dial {
                    address: a,
                    dialer: x,
                },
                Target::Dial {
                    address: b,
                    dialer: y,
                },
            ) => a == b && std::ptr::addr_eq(Arc::as_ptr(x), Arc::as_ptr(y)),
            _ => false,
        }
    }
}

impl Eq for Target {}

impl From<SocketAddr> for Target {
    fn from(address: SocketAddr) -> Self {
        Target::Tcp(address)
    }
}

impl std::str::FromStr for Target {
    type Err = std::net::AddrParseError;

    /// A TCP target, `ip:port`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Target::Tcp)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tcp(a) => write!(f, "{a}"),
            Target::Dial { address, dialer } => write!(f, "{address} via {}", dialer.via()),
        }
    }
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(nets: &[&str], rfc1918: bool) -> SourcePolicy {
        SourcePolicy::new(nets.iter().map(|n| n.parse().unwrap()), rfc1918)
    }

    fn check(p: &SourcePolicy, source: &str, expected: bool) {
        assert_eq!(p.permits(source.parse().unwrap()), expected, "{source}");
    }

    #[test]
    fn source_policy_table() {
        let p = policy(
            &["198.51.100.0/24", "203.0.113.7/32", "2001:db8::/48"],
            false,
        );
        let rows = [
            ("198.51.100.0", true),
            ("198.51.100.255", true),
            ("198.51.101.0", false),
            ("198.51.99.255", false),
            ("203.0.113.7", true),
            ("203.0.113.8", false),
            ("::ffff:198.51.100.9", true),
            ("::ffff:198.51.101.9", false),
            ("2001:db8::1", true),
            ("2001:db8:1::1", false),
            ("10.0.0.1", false),
            ("192.168.1.1", false),
            ("127.0.0.1", false),
        ];
        for (source, expected) in rows {
            check(&p, source, expected);
        }

        let p = policy(&["198.51.100.0/24"], true);
        let rows = [
            ("198.51.100.1", true),
            ("10.0.0.1", true),
            ("10.255.255.255", true),
            ("172.16.0.1", true),
            ("172.31.255.255", true),
            ("172.32.0.1", false),
            ("192.168.88.2", true),
            ("::ffff:192.168.1.1", true),
            ("fd00::1", true),
            ("127.0.0.1", false),
            ("169.254.1.1", false),
            ("100.64.0.1", false),
            ("8.8.8.8", false),
        ];
        for (source, expected) in rows {
            check(&p, source, expected);
        }

        // Lab style: a loopback /30.
        let p = policy(&["127.0.0.0/30"], false);
        for (source, expected) in [
            ("127.0.0.1", true),
            ("127.0.0.3", true),
            ("127.0.0.4", false),
            ("127.0.1.1", false),
        ] {
            check(&p, source, expected);
        }

        // Nothing allowed: nobody gets in.
        check(&SourcePolicy::default(), "198.51.100.1", false);
    }
}
