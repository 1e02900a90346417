//! The crate's errors: one enum per thing that can be refused.

use std::io;
use std::net::Ipv4Addr;

/// A key that cannot be read or made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("a key is 32 bytes, 44 characters of base64")]
    Length,
    #[error("a key is written in base64")]
    Base64,
    #[error("the system's random number generator failed")]
    Random,
}

/// A peer the table refuses to add.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeerError {
    #[error("the table is full ({limit} peers)")]
    TableFull { limit: usize },
    #[error("tunnel address {0} belongs to another peer")]
    AddressInUse(Ipv4Addr),
    #[error("tunnel address {0} is the gateway's own")]
    GatewayAddress(Ipv4Addr),
    #[error("tunnel address {address} is outside the tunnel prefix {prefix}")]
    OutsidePrefix { address: Ipv4Addr, prefix: String },
    #[error("the peer's key is the gateway's own")]
    OwnKey,
}

/// What the driver refuses or fails at.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error(transparent)]
    Peer(#[from] PeerError),
    #[error("no peer has tunnel address {0}")]
    NoPeer(Ipv4Addr),
    #[error("too many streams open ({limit})")]
    TooManyStreams { limit: usize },
    #[error("no free local port for a new stream")]
    NoPort,
    #[error("connecting to {0} timed out")]
    ConnectTimeout(std::net::SocketAddrV4),
    #[error("{0} refused the connection")]
    ConnectRefused(std::net::SocketAddrV4),
    #[error("the tunnel is shut down")]
    Shutdown,
    #[error("invalid configuration: {0}")]
    Config(&'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
}
