//! One TCP connection accepted on the router's tunnel address: a smoltcp socket in the
//! tunnel's stack, read and written through tokio's `AsyncRead`/`AsyncWrite` so the same
//! service handlers serve it as serve a kernel TCP connection.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::stack::Shared;

/// A TCP connection that arrived through the tunnel. Dropping it closes it (FIN).
pub struct WgStream {
    pub(crate) shared: Arc<Shared>,
    pub(crate) handle: SocketHandle,
    pub(crate) peer: SocketAddr,
}

impl std::fmt::Debug for WgStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgStream")
            .field("peer", &self.peer)
            .finish()
    }
}

impl WgStream {
    /// Who connected: an address inside the tunnel (the gateway's tunnel address).
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }
}

impl AsyncRead for WgStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut st = self.shared.lock();
        let socket = st.sockets.get_mut::<tcp::Socket>(self.handle);
        let result = match socket.recv_slice(buf.initialize_unfilled()) {
            Ok(0) => {
                socket.register_recv_waker(cx.waker());
                return Poll::Pending;
            }
            Ok(n) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Err(tcp::RecvError::Finished) => return Poll::Ready(Ok(())),
            Err(tcp::RecvError::InvalidState) => {
                return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()));
            }
        };
        drop(st);
        // The window opened: the driver may owe the peer a window update.
        self.shared.wake.notify_one();
        result
    }
}

impl AsyncWrite for WgStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.shared.lock();
        let socket = st.sockets.get_mut::<tcp::Socket>(self.handle);
        let result = match socket.send_slice(data) {
            Ok(0) if !data.is_empty() => {
                if !socket.may_send() {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                }
                socket.register_send_waker(cx.waker());
                return Poll::Pending;
            }
            Ok(n) => Poll::Ready(Ok(n)),
            Err(tcp::SendError::InvalidState) => {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
        };
        drop(st);
        self.shared.wake.notify_one();
        result
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared
            .lock()
            .sockets
            .get_mut::<tcp::Socket>(self.handle)
            .close();
        self.shared.wake.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for WgStream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.sockets.get_mut::<tcp::Socket>(self.handle).close();
        st.detach(self.handle);
        drop(st);
        self.shared.wake.notify_one();
    }
}
