//! Streams through a region's tunnel, as the gateway and its callers take them:
//! [`TunnelConn`] (a stream inside the tunnel, an [`Upstream`](crate::Upstream) the
//! gateway can kill), [`RegionDial`] (the gateway's [`Dial`](crate::Dial) for one
//! region's tunnel) and [`DialStream`], what [`Node::dial`](super::Node::dial) returns.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A byte stream to a router or a direct target: what a dial returns.
pub trait DialStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> DialStream for T {}

/// A boxed [`DialStream`].
pub type BoxDialStream = Box<dyn DialStream>;

/// A tunnel error as the `io::ErrorKind` a caller acts on: `TimedOut`,
/// `ConnectionRefused`, `NotConnected` (no such peer), `Other`.
pub fn tunnel_io(e: tunnel::TunnelError) -> io::Error {
    let kind = match &e {
        tunnel::TunnelError::ConnectTimeout(_) => io::ErrorKind::TimedOut,
        tunnel::TunnelError::ConnectRefused(_) => io::ErrorKind::ConnectionRefused,
        tunnel::TunnelError::NoPeer(_) | tunnel::TunnelError::Shutdown => {
            io::ErrorKind::NotConnected
        }
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, e.to_string())
}

/// The gateway's dialer for one region's tunnel (one per region, so targets compare).
pub struct RegionDial {
    name: String,
    tunnel: tunnel::Tunnel,
}

impl RegionDial {
    /// A dialer through `tunnel`, named `tunnel <name>` in logs.
    pub fn new(name: impl Into<String>, tunnel: tunnel::Tunnel) -> Self {
        Self {
            name: name.into(),
            tunnel,
        }
    }
}

impl crate::Dial for RegionDial {
    fn dial(&self, address: SocketAddr) -> crate::DialFuture {
        let tunnel = self.tunnel.clone();
        Box::pin(async move {
            let IpAddr::V4(ip) = address.ip() else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a tunnelled router's address is IPv4",
                ));
            };
            let stream = tunnel.dial(ip, address.port()).await.map_err(tunnel_io)?;
            Ok(Box::new(TunnelConn(stream)) as crate::BoxUpstream)
        })
    }

    fn via(&self) -> String {
        format!("tunnel {}", self.name)
    }
}

/// A stream inside a tunnel.
pub struct TunnelConn(pub tunnel::TunnelStream);

impl AsyncRead for TunnelConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TunnelConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl crate::Upstream for TunnelConn {
    fn kill(&mut self) {
        self.0.kill();
    }
}
