//! Serving: a listener that caps how many connections are served at once, and from one
//! client address, and closes connections that are idle too long or take too long to
//! send a request's headers (so silent or trickling clients cannot hold every slot), and
//! `serve`, which runs the app on a bound listener until the shutdown future resolves,
//! then drains. With a TLS acceptor (`tls_cert`, `tls_key`) each connection speaks TLS
//! (rustls): the handshake runs on the connection's first read or write, inside its
//! header deadline, never in the accept loop.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// How a listener limits its connections.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once; more wait in the kernel's backlog.
    pub max: usize,
    /// Connections at once from one address (IPv4) or one /64 (IPv6); more are closed.
    pub per_address: usize,
    /// A connection with no byte read or written for this long is closed.
    pub idle: Duration,
    /// A request's headers must be complete this long after its first byte (a new
    /// connection's, after the accept).
    pub headers: Duration,
    /// Peers exempt from the per-address cap (every connection of a reverse proxy
    /// comes from it).
    pub exempt: Vec<IpAddr>,
}

impl Limits {
    /// The limits a server's configuration sets.
    pub fn from_config(c: &crate::config::ServerConfig) -> Self {
        Self {
            max: c.max_connections,
            per_address: c.max_connections_per_address,
            idle: c.idle_timeout,
            headers: c.header_timeout,
            exempt: c.trusted_proxies.clone(),
        }
    }
}

/// What the listeners refused or cut, for `/metrics`.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Closed at accept: their address already had its share of connections.
    pub refused_per_address: AtomicU64,
    /// Closed because a request's headers did not arrive in time.
    pub header_timeouts: AtomicU64,
    /// Closed because nothing moved for the idle timeout.
    pub idle_timeouts: AtomicU64,
    /// Open now.
    pub open: AtomicU64,
}

/// The key the per-address cap counts under: the IPv4 address, or the IPv6 /64 (one
/// host usually holds a whole /64).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// Connections open per address.
#[derive(Default)]
struct PerAddress {
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// Counts a connection from `key` unless it already has `max`.
    fn admit(self: &Arc<Self>, key: IpAddr, max: usize) -> Option<AddressSlot> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(key).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            table: self.clone(),
            key,
        })
    }
}

/// One connection's place in its address's count, given back on drop.
struct AddressSlot {
    table: Arc<PerAddress>,
    key: IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.table.open.lock()
            && let Some(n) = open.get_mut(&self.key)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The peer of a connection, as the TCP socket saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub SocketAddr);

/// A TCP listener that accepts only while fewer than `max` connections are open (the
/// others wait in the kernel's backlog), and closes at once a connection from an address
/// that already has `per_address`.
pub struct CappedListener {
    inner: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    permits: Arc<Semaphore>,
    limits: Limits,
    per_address: Arc<PerAddress>,
    stats: Arc<ConnectionStats>,
}

impl CappedListener {
    pub fn new(inner: TcpListener, limits: Limits, stats: Arc<ConnectionStats>) -> Self {
        Self {
            inner,
            tls: None,
            permits: Arc::new(Semaphore::new(limits.max.max(1))),
            limits,
            per_address: Arc::default(),
            stats,
        }
    }
}

impl CappedListener {
    /// Every connection speaks TLS with `acceptor`.
    pub fn with_tls(mut self, acceptor: Option<tokio_rustls::TlsAcceptor>) -> Self {
        self.tls = acceptor;
        self
    }
}

/// A connection's bytes: plain TCP, or TLS (its handshake first).
enum Conn {
    Tcp(TcpStream),
    Handshake(Box<tokio_rustls::Accept<TcpStream>>),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Failed,
}

impl Conn {
    /// Drives a TLS handshake to its end; ready at once otherwise.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Conn::Handshake(accept) = self {
            match Pin::new(accept.as_mut()).poll(cx) {
                Poll::Ready(Ok(tls)) => *self = Conn::Tls(Box::new(tls)),
                Poll::Ready(Err(e)) => {
                    *self = Conn::Failed;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        if let Conn::Failed = self {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "TLS handshake failed",
            )));
        }
        Poll::Ready(Ok(()))
    }
}

macro_rules! ready_then {
    ($conn:expr, $cx:expr, |$s:ident| $body:expr) => {
        match $conn.poll_ready($cx) {
            Poll::Ready(Ok(())) => match $conn {
                Conn::Tcp($s) => {
                    let $s = Pin::new($s);
                    $body
                }
                Conn::Tls($s) => {
                    let $s = Pin::new($s.as_mut());
                    $body
                }
                _ => Poll::Ready(Err(io::Error::from(io::ErrorKind::NotConnected))),
            },
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready_then!(this, cx, |s| s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready_then!(this, cx, |s| s.poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready_then!(this, cx, |s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready_then!(this, cx, |s| s.poll_shutdown(cx))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready_then!(this, cx, |s| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
            _ => false,
        }
    }
}

/// Where a connection is in its current request, as far as its deadlines care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request's headers: the header deadline runs.
    Headers,
    /// Headers read; the request is being served (body, handler, response).
    Serving,
    /// A response went out: the next byte read starts another request.
    Responded,
    /// Switched protocols (a WebSocket): only the idle timeout applies.
    Upgraded,
}

/// A connection holding its slots until it is dropped, closed when idle too long or when
/// a request's headers take too long.
pub struct CappedStream {
    stream: Conn,
    _permit: OwnedSemaphorePermit,
    _slot: Option<AddressSlot>,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
    headers: Duration,
    header_deadline: Pin<Box<Sleep>>,
    phase: Phase,
    /// The last bytes read while in `Headers`, to find the blank line that ends them
    /// across reads (`\n\n` or `\n\r\n`).
    tail: [u8; 2],
    stats: Arc<ConnectionStats>,
}

impl CappedStream {
    fn progressed(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// Follows the request through the bytes just read.
    fn read_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if self.phase == Phase::Responded {
            self.phase = Phase::Headers;
            self.tail = [0, 0];
            let next = Instant::now() + self.headers;
            self.header_deadline.as_mut().reset(next);
        }
        if self.phase != Phase::Headers {
            return;
        }
        for &b in bytes {
            let ends = b == b'\n' && (self.tail[1] == b'\n' || self.tail == *b"\n\r");
            self.tail = [self.tail[1], b];
            if ends {
                self.phase = Phase::Serving;
                return;
            }
        }
    }

    /// Follows the response through the bytes about to be written.
    fn wrote_bytes(&mut self, bytes: &[u8]) {
        if bytes.is_empty() || self.phase == Phase::Upgraded {
            return;
        }
        if bytes.starts_with(b"HTTP/1.1 101 ") {
            self.phase = Phase::Upgraded;
        } else if bytes.starts_with(b"HTTP/1.1 1") {
            // 100 Continue: the request's body follows.
        } else if self.phase == Phase::Serving {
            self.phase = Phase::Responded;
        }
    }

    /// After an inner poll returned `Pending`: fails the connection if it has been idle
    /// past its deadline, or its request's headers are late (the timers wake the task).
    fn check_deadlines<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if self.phase == Phase::Headers && self.header_deadline.as_mut().poll(cx).is_ready() {
            self.stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request headers too slow",
            )));
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle too long",
                )))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for CappedStream {
    fn drop(&mut self) {
        self.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Listener for CappedListener {
    type Io = CappedStream;
    type Addr = ClientAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok(permit) = self.permits.clone().acquire_owned().await else {
                // The semaphore is never closed; wait rather than spin if it were.
                std::future::pending::<()>().await;
                continue;
            };
            match self.inner.accept().await {
                Ok((stream, peer)) => {
                    let slot = if self.limits.exempt.contains(&peer.ip()) {
                        None
                    } else {
                        match self
                            .per_address
                            .admit(address_key(peer.ip()), self.limits.per_address)
                        {
                            Some(slot) => Some(slot),
                            None => {
                                // Its address has its share: closed before a byte is
                                // read, and its permit goes back at once.
                                self.stats
                                    .refused_per_address
                                    .fetch_add(1, Ordering::Relaxed);
                                drop(stream);
                                continue;
                            }
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    self.stats.open.fetch_add(1, Ordering::Relaxed);
                    let stream = match &self.tls {
                        Some(acceptor) => Conn::Handshake(Box::new(acceptor.accept(stream))),
                        None => Conn::Tcp(stream),
                    };
                    return (
                        CappedStream {
                            stream,
                            _permit: permit,
                            _slot: slot,
                            idle: self.limits.idle,
                            deadline: Box::pin(tokio::time::sleep(self.limits.idle)),
                            headers: self.limits.headers,
                            header_deadline: Box::pin(tokio::time::sleep(self.limits.headers)),
                            phase: Phase::Headers,
                            tail: [0, 0],
                            stats: self.stats.clone(),
                        },
                        ClientAddr(peer),
                    );
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    drop(permit);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr().map(ClientAddr)
    }
}

impl Connected<IncomingStream<'_, CappedListener>> for ClientAddr {
    fn connect_info(stream: IncomingStream<'_, CappedListener>) -> Self {
        *stream.remote_addr()
    }
}

impl AsyncRead for CappedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.progressed();
                this.read_bytes(buf.filled().get(before..).unwrap_or_default());
                Poll::Ready(r)
            }
            Poll::Pending => this.check_deadlines(cx),
        }
    }
}

impl AsyncWrite for CappedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(r) => {
                this.progressed();
                if let Ok(n) = &r {
                    this.wrote_bytes(buf.get(..*n).unwrap_or_default());
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.check_deadlines(cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                this.progressed();
                if let Ok(n) = &r
                    && *n > 0
                    && let Some(first) = bufs.iter().find(|b| !b.is_empty())
                {
                    this.wrote_bytes(first.get(..(*n).min(first.len())).unwrap_or_default());
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.check_deadlines(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// A TLS acceptor from a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or
/// SEC1), for `tls_cert` and `tls_key`; HTTP/1.1 only (as the plain listener).
pub fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("tls_cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("tls_cert {}: no certificate in it", cert.display()));
    }
    let key =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("tls_cert and tls_key do not make a certificate: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves; then stops
/// accepting and waits for open requests to finish. What the limits cut is counted in
/// `stats`.
pub async fn serve(
    listener: TcpListener,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    serve_tls(listener, limits, stats, None, app, shutdown).await
}

/// [`serve`], each connection speaking TLS with `tls` when given.
pub async fn serve_tls(
    listener: TcpListener,
    limits: Limits,
    stats: Arc<ConnectionStats>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let listener = CappedListener::new(listener, limits, stats).with_tls(tls);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<ClientAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_counted_by_host_or_slash_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(address_key(ip("198.51.100.7")), ip("198.51.100.7"));
        assert_eq!(address_key(ip("::ffff:198.51.100.7")), ip("198.51.100.7"));
        assert_eq!(
            address_key(ip("2001:db8:1:2:3:4:5:6")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            address_key(ip("2001:db8:1:2::9")),
            address_key(ip("2001:db8:1:2:ffff::1"))
        );
        let table = Arc::new(PerAddress::default());
        let a = table.admit(ip("192.0.2.1"), 2).unwrap();
        let _b = table.admit(ip("192.0.2.1"), 2).unwrap();
        assert!(table.admit(ip("192.0.2.1"), 2).is_none());
        assert!(table.admit(ip("192.0.2.2"), 2).is_some());
        drop(a);
        assert!(table.admit(ip("192.0.2.1"), 2).is_some());
    }
}
