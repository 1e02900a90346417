//! The channel itself: HTTP/2 (the `h2` crate) over any byte stream, TLS or in memory.
//! The server is the h2 client and opens every stream: [`Channel::control`] (`POST
//! /control`, [`Down`] frames one way and [`Up`] frames the other) and [`Channel::dial`]
//! (`POST /dial`, a [`DialRequest`] frame, a [`DialReply`] frame back, then raw bytes both
//! ways as a [`DialStream`]). The gateway is the h2 server: [`serve`] answers each stream
//! through its [`Handler`].
//!
//! Flow control is HTTP/2's: a receiver releases window as its reader consumes data
//! (one DATA frame at most is held), a sender waits for window before it queues more, so
//! a slow reader slows its own stream and no buffer grows without bound. Every queue has
//! a bound ([`ChannelConfig`]). Both sides send a PING every
//! [`ChannelConfig::keepalive_interval`] and give the connection up when one is not
//! answered within [`ChannelConfig::keepalive_timeout`]: a link dropped without a FIN or
//! RST is noticed within their sum.
//!
//! Control stream on the gateway: the first frame must be `Down::Hello` of
//! [`PROTOCOL`]; otherwise the gateway answers `Up::Refused` and ends the stream without
//! calling its handler. Later, a frame that is not a `Down` is answered `Up::Refused` and
//! skipped; one whose length breaks framing is answered `Up::Refused` and ends the
//! stream (the gateway reads no more of it: END_STREAM, then RST_STREAM NO_ERROR).
//!
//! One caution of HTTP/2: every stream shares the connection's window, so streams whose
//! readers stall (a few at the full [`ChannelConfig::stream_window`]) can hold it all;
//! the connection window is kept at many stream windows for that reason.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, poll_fn};
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode, Uri};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot, watch};

use crate::frame::{self, Decoder, FrameError};
use crate::msg::{DialError, DialReply, DialRequest, Down, PROTOCOL, Up};

/// The request paths.
const CONTROL_PATH: &str = "/control";
const DIAL_PATH: &str = "/dial";
/// The authority the h2 requests carry (the TLS layer below has already named the peer).
const CONTROL_URI: &str = "http://postern.invalid/control";
const DIAL_URI: &str = "http://postern.invalid/dial";

/// The most a dial stream's first frame (request or reply) may take: they are tiny.
const FIRST_FRAME_LIMIT: usize = 64 * 1024;

/// Limits and timers of one connection; both sides have their own.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// How often each side PINGs the other.
    pub keepalive_interval: Duration,
    /// How long a PING may stay unanswered before the connection is given up (also the
    /// longest an HTTP/2 handshake may take on the gateway).
    pub keepalive_timeout: Duration,
    /// Streams (control and dials) the gateway lets a server have open at once; a
    /// server's `dial` waits for a slot beyond that.
    pub max_streams: u32,
    /// Each stream's receive window, bytes.
    pub stream_window: u32,
    /// The connection's receive window, bytes (shared by every stream).
    pub connection_window: u32,
    /// Messages queued each way on a control stream.
    pub control_queue: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        ChannelConfig {
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            max_streams: 1024,
            stream_window: 256 * 1024,
            connection_window: 32 * 1024 * 1024,
            control_queue: 256,
        }
    }
}

/// Why a channel or one of its streams failed.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("http/2: {0}")]
    H2(#[from] h2::Error),
    #[error("the http/2 handshake took over {0:?}")]
    HandshakeTimeout(Duration),
    #[error("the peer did not answer a ping within {0:?}")]
    KeepaliveTimeout(Duration),
    #[error("the channel is closed")]
    Closed,
    #[error("the gateway answered {0}")]
    Status(StatusCode),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("the stream ended before its first frame")]
    Truncated,
    #[error("first frame over {FIRST_FRAME_LIMIT} bytes")]
    FirstFrameTooLong,
    #[error("tls: {0}")]
    Tls(io::Error),
    #[error("the tls handshake took over {0:?}")]
    TlsTimeout(Duration),
}

/// Something a dial gives back: a byte stream both ways.
pub trait DialIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + ?Sized> DialIo for T {}

/// What a gateway does with the streams a server opens.
pub trait Handler: Send + Sync + 'static {
    /// A control stream, after its `Hello` (which `down` yields first). Runs as long as
    /// the stream lives: `down` ends when the server's side ends (or the connection
    /// does); the stream ends when this future has returned and `up` is dropped.
    fn control(&self, down: mpsc::Receiver<Down>, up: mpsc::Sender<Up>) -> BoxFuture<'static, ()>;

    /// A dial: connect to the request's target. The error's kind becomes the reply's
    /// [`DialError`] (`TimedOut`, `ConnectionRefused`, `NotConnected`, else `Other`) and
    /// its text the reply's message.
    fn dial(&self, request: DialRequest) -> BoxFuture<'static, io::Result<Box<dyn DialIo>>>;
}

/// A server's connection to one gateway: the h2 client. Cheap to clone; every clone
/// opens streams on the same connection. The connection's driver runs as a task until
/// the connection ends (the peer closes, an I/O error, a PING unanswered) or every
/// clone is dropped and no stream is left.
#[derive(Clone)]
pub struct Channel {
    send: h2::client::SendRequest<Bytes>,
    closed: watch::Receiver<bool>,
    config: Arc<ChannelConfig>,
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// Starts HTTP/2 over `io` (a TLS stream to a gateway, or one end of a
    /// `tokio::io::duplex`) with the default [`ChannelConfig`].
    pub async fn connect<T>(io: T) -> Result<Channel, ChannelError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Channel::connect_with(io, ChannelConfig::default()).await
    }

    /// [`Channel::connect`] with limits and timers of one's own.
    pub async fn connect_with<T>(io: T, config: ChannelConfig) -> Result<Channel, ChannelError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut connection) = h2::client::Builder::new()
            .enable_push(false)
            .initial_window_size(config.stream_window)
            .initial_connection_window_size(config.connection_window)
            .max_concurrent_streams(0)
            .handshake::<T, Bytes>(io)
            .await?;
        let (closed_tx, closed) = watch::channel(false);
        let pings = connection.ping_pong();
        let (interval, timeout) = (config.keepalive_interval, config.keepalive_timeout);
        tokio::spawn(async move {
            tokio::select! {
                result = &mut connection => {
                    if let Err(error) = result {
                        tracing::debug!(%error, "control channel ended");
                    }
                }
                () = keepalive(pings, interval, timeout) => {
                    tracing::warn!(?timeout, "control channel: a ping went unanswered, giving the connection up");
                }
            }
            // Dropping the connection fails every stream still open.
            drop(connection);
            closed_tx.send_replace(true);
        });
        Ok(Channel {
            send,
            closed,
            config: Arc::new(config),
        })
    }

    /// TLS over `io` (a TCP stream to the gateway), checked with `tls` (from
    /// [`crate::pki::server_tls`]) against the certificate of `gateway` and no other,
    /// then [`Channel::connect_with`]. The TLS handshake may take
    /// [`ChannelConfig::keepalive_timeout`].
    pub async fn connect_tls<T>(
        io: T,
        tls: Arc<rustls::ClientConfig>,
        gateway: domain::GatewayId,
        config: ChannelConfig,
    ) -> Result<Channel, ChannelError>
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = tokio_rustls::TlsConnector::from(tls)
            .connect(crate::pki::gateway_server_name(gateway), io);
        let stream = tokio::time::timeout(config.keepalive_timeout, handshake)
            .await
            .map_err(|_| ChannelError::TlsTimeout(config.keepalive_timeout))?
            .map_err(ChannelError::Tls)?;
        Channel::connect_with(stream, config).await
    }

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves when the connection has ended (at once if it has).
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut closed = self.closed.clone();
        async move {
            // An error means the driver is gone: closed too.
            let _ = closed.wait_for(|closed| *closed).await;
        }
    }

    /// Opens a stream: a request to `uri`, its first frame sent, the response's headers
    /// received (a 200, or the status as an error).
    async fn open(
        &self,
        uri: &'static str,
        first: Bytes,
    ) -> Result<(SendStream<Bytes>, RecvStream), ChannelError> {
        if self.is_closed() {
            return Err(ChannelError::Closed);
        }
        let mut send = self.send.clone().ready().await?;
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = Uri::from_static(uri);
        let (response, mut stream) = send.send_request(request, false)?;
        send_all(&mut stream, first, false).await?;
        let response = response.await?;
        if response.status() != StatusCode::OK {
            return Err(ChannelError::Status(response.status()));
        }
        Ok((stream, response.into_body()))
    }

    /// Opens the control stream: `hello` (a `Down::Hello`) goes first; then
    /// [`ControlStream`] sends `Down`s and receives `Up`s, each way through a queue of
    /// [`ChannelConfig::control_queue`] messages. Dropping both halves ends the stream.
    pub async fn control(&self, hello: Down) -> Result<ControlStream, ChannelError> {
        let (stream, body) = self.open(CONTROL_URI, frame::encode(&hello)?).await?;
        let (down, down_rx) = mpsc::channel(self.config.control_queue);
        let (up_tx, up) = mpsc::channel(self.config.control_queue);
        let (stop_tx, stop_rx) = oneshot::channel();
        tokio::spawn(write_frames(stream, down_rx, stop_rx));
        tokio::spawn(async move {
            let mut reader = FrameReader::new(body, None);
            loop {
                match reader.next::<Up>().await {
                    Ok(Some(up)) => {
                        if up_tx.send(up).await.is_err() {
                            let _ = stop_tx.send(());
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(ChannelError::Frame(FrameError::Json(error))) => {
                        tracing::warn!(%error, "control stream: a frame from the gateway is not a message, skipped");
                    }
                    Err(error) => {
                        tracing::warn!(%error, "control stream from the gateway failed");
                        let _ = stop_tx.send(());
                        return;
                    }
                }
            }
        });
        Ok(ControlStream { down, up })
    }

    /// Opens a dial stream to `request.target` through the gateway. Failures have the
    /// kind of the gateway's [`DialError`] (`TimedOut`, `ConnectionRefused`,
    /// `NotConnected`, `Other`) and its message; a channel that is gone or broke is
    /// `ConnectionAborted` (its [`ChannelError`] inside), so a caller tells "gateway
    /// unreachable" from "router offline".
    pub async fn dial(&self, request: DialRequest) -> io::Result<DialStream> {
        let aborted = |e: ChannelError| io::Error::new(io::ErrorKind::ConnectionAborted, e);
        let first = frame::encode(&request).map_err(|e| aborted(e.into()))?;
        let (send, body) = self.open(DIAL_URI, first).await.map_err(aborted)?;
        let mut reader = FrameReader::new(body, Some(FIRST_FRAME_LIMIT));
        let reply = match reader.next::<DialReply>().await {
            Ok(Some(reply)) => reply,
            Ok(None) => return Err(aborted(ChannelError::Truncated)),
            Err(e) => return Err(aborted(e)),
        };
        match reply {
            DialReply::Connected => Ok(reader.into_stream(send)),
            DialReply::Failed { error, message } => {
                let kind = match error {
                    DialError::TimedOut => io::ErrorKind::TimedOut,
                    DialError::Refused => io::ErrorKind::ConnectionRefused,
                    DialError::NotConnected => io::ErrorKind::NotConnected,
                    DialError::Other => io::ErrorKind::Other,
                };
                Err(io::Error::new(kind, message))
            }
        }
    }
}

/// A server's control stream: `Down`s out, `Up`s in.
#[derive(Debug)]
pub struct ControlStream {
    down: mpsc::Sender<Down>,
    up: mpsc::Receiver<Up>,
}

impl ControlStream {
    /// Queues a message; waits while the queue is full. An error: the stream has ended.
    pub async fn send(&self, down: Down) -> Result<(), ChannelError> {
        self.down.send(down).await.map_err(|_| ChannelError::Closed)
    }

    /// The next message from the gateway; `None` once the stream has ended.
    pub async fn recv(&mut self) -> Option<Up> {
        self.up.recv().await
    }

    /// The two queues, to use from two tasks. Dropping the sender ends the server's
    /// side of the stream (the gateway's `down` ends); dropping the receiver cancels it.
    pub fn into_parts(self) -> (mpsc::Sender<Down>, mpsc::Receiver<Up>) {
        (self.down, self.up)
    }
}

/// Bytes both ways over one h2 stream: a server's dial to a router (and the gateway's
/// side of it). Shutting the write side down ends the stream's sending half
/// (END_STREAM); reads end (EOF) when the peer's half ends.
///
/// Dropped before its write side is shut down, it aborts the stream (RST_STREAM CANCEL:
/// bytes not yet sent are dropped, and the gateway resets the router's connection).
/// Dropped after, what was written still goes out: a task reads and discards the peer's
/// bytes until it ends its half (for [`DRAIN_LIMIT`] at most), since h2 would drop the
/// queued bytes with a reset. [`DialStream::abort`] resets it at once.
pub struct DialStream {
    /// `None` only once dropped or aborted.
    halves: Option<Halves>,
    /// Bytes received and not yet read (their window already released).
    buf: Bytes,
    read_eof: bool,
    write_closed: bool,
}

impl fmt::Debug for DialStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DialStream")
            .field("stream", &self.halves.as_ref().map(|h| h.send.stream_id()))
            .field("buffered", &self.buf.len())
            .field("read_eof", &self.read_eof)
            .field("write_closed", &self.write_closed)
            .finish()
    }
}

struct Halves {
    send: SendStream<Bytes>,
    recv: RecvStream,
}

impl DialStream {
    /// Ends the stream at once both ways (RST_STREAM CANCEL): bytes not yet sent are
    /// dropped, and the other side's reads and writes fail.
    pub fn abort(mut self) {
        if let Some(mut halves) = self.halves.take() {
            halves.send.send_reset(Reason::CANCEL);
        }
    }
}

/// How long a dropped [`DialStream`] whose write side was shut down waits for the peer
/// to end its half.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

impl Drop for DialStream {
    fn drop(&mut self) {
        let Some(Halves { send, mut recv }) = self.halves.take() else {
            return;
        };
        if !self.write_closed || self.read_eof {
            // An abort, or both halves ended already: h2 does the rest.
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let drain = async {
                while let Some(Ok(chunk)) = recv.data().await {
                    let _ = recv.flow_control().release_capacity(chunk.len());
                }
            };
            let _ = tokio::time::timeout(DRAIN_LIMIT, drain).await;
            drop(send);
        });
    }
}

/// The most one write hands h2 at once.
const MAX_WRITE: usize = 64 * 1024;

impl AsyncRead for DialStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.buf.is_empty() {
                let n = this.buf.len().min(out.remaining());
                out.put_slice(&this.buf.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read_eof || out.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let Some(halves) = this.halves.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(halves.recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = halves.recv.flow_control().release_capacity(chunk.len());
                    this.buf = chunk;
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
                None => this.read_eof = true,
            }
        }
    }
}

impl AsyncWrite for DialStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.write_closed {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the stream's write side is shut down",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let Some(halves) = this.halves.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        };
        let n = ready!(poll_send_capacity(
            &mut halves.send,
            cx,
            data.len().min(MAX_WRITE)
        ))?;
        let chunk = data.get(..n).unwrap_or(data);
        halves
            .send
            .send_data(Bytes::copy_from_slice(chunk), false)
            .map_err(h2_io)?;
        Poll::Ready(Ok(chunk.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The connection's driver writes queued frames out on its own.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            if let Some(halves) = this.halves.as_mut() {
                halves.send.send_data(Bytes::new(), true).map_err(h2_io)?;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Waits for send window on `send`, having asked for `want` bytes of it; the window
/// granted (never zero).
fn poll_send_capacity(
    send: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
    want: usize,
) -> Poll<io::Result<usize>> {
    send.reserve_capacity(want);
    loop {
        let capacity = send.capacity();
        if capacity > 0 {
            return Poll::Ready(Ok(capacity.min(want)));
        }
        match ready!(send.poll_capacity(cx)) {
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Poll::Ready(Err(h2_io(e))),
            // Our own end is caught before this: the peer reset the stream.
            None => {
                let reason = match send.poll_reset(cx) {
                    Poll::Ready(Ok(reason)) => reason.to_string(),
                    _ => "closed".to_owned(),
                };
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionReset,
                    format!("the peer reset the stream: {reason}"),
                )));
            }
        }
    }
}

/// Sends all of `data` as the window allows, then ends the stream if `end`.
async fn send_all(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), ChannelError> {
    while !data.is_empty() {
        let want = data.len().min(MAX_WRITE);
        let n = poll_fn(|cx| poll_send_capacity(send, cx, want))
            .await
            .map_err(|_| ChannelError::Closed)?;
        send.send_data(data.split_to(n.min(data.len())), false)?;
    }
    if end {
        send.send_data(Bytes::new(), true)?;
    }
    Ok(())
}

fn h2_io(error: h2::Error) -> io::Error {
    if error.is_io() {
        match error.into_io() {
            Some(io) => io,
            None => io::Error::other("http/2 i/o error"),
        }
    } else if error.is_reset() || error.is_go_away() {
        io::Error::new(io::ErrorKind::ConnectionReset, error)
    } else {
        io::Error::other(error)
    }
}

/// Frames from an h2 stream: data in as it comes (its window released as it is taken
/// into the decoder), messages out.
struct FrameReader {
    recv: RecvStream,
    decoder: Decoder,
    eof: bool,
    /// The most bytes held without a whole frame (dial streams' first frames).
    limit: Option<usize>,
}

impl FrameReader {
    fn new(recv: RecvStream, limit: Option<usize>) -> Self {
        FrameReader {
            recv,
            decoder: Decoder::new(),
            eof: false,
            limit,
        }
    }

    /// The next message; `Ok(None)` when the stream ended cleanly between frames. A
    /// `FrameError::Json` leaves the reader usable (that frame is skipped); any other
    /// error does not.
    async fn next<M: DeserializeOwned>(&mut self) -> Result<Option<M>, ChannelError> {
        loop {
            if let Some(message) = self.decoder.next::<M>()? {
                return Ok(Some(message));
            }
            if self.eof {
                return match self.decoder.buffered() {
                    0 => Ok(None),
                    _ => Err(ChannelError::Truncated),
                };
            }
            if self
                .limit
                .is_some_and(|limit| self.decoder.buffered() > limit)
            {
                return Err(ChannelError::FirstFrameTooLong);
            }
            match self.recv.data().await {
                Some(Ok(chunk)) => {
                    self.decoder.push(&chunk);
                    let _ = self.recv.flow_control().release_capacity(chunk.len());
                }
                Some(Err(e)) => return Err(e.into()),
                None => self.eof = true,
            }
        }
    }

    /// The rest of the stream as raw bytes, those already read after the last frame
    /// first.
    fn into_stream(self, send: SendStream<Bytes>) -> DialStream {
        DialStream {
            halves: Some(Halves {
                send,
                recv: self.recv,
            }),
            buf: self.decoder.into_remainder(),
            read_eof: self.eof,
            write_closed: false,
        }
    }
}

/// Writes `messages` as frames until their senders are all gone (then ends the stream),
/// the peer resets the stream, or `cancel` fires (then resets it, CANCEL; a `cancel`
/// dropped unsent is no cancel: the reader merely ended).
async fn write_frames<M: Serialize>(
    mut send: SendStream<Bytes>,
    mut messages: mpsc::Receiver<M>,
    cancel: oneshot::Receiver<()>,
) {
    let cancel = async move {
        if cancel.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(cancel);
    loop {
        let message = tokio::select! {
            message = messages.recv() => message,
            () = &mut cancel => {
                send.send_reset(Reason::CANCEL);
                return;
            }
            _ = poll_fn(|cx| send.poll_reset(cx)) => return,
        };
        let Some(message) = message else {
            let _ = send.send_data(Bytes::new(), true);
            return;
        };
        let cancelled = tokio::select! {
            sent = write_frame(&mut send, &message) => match sent {
                Ok(()) => false,
                Err(_) => return,
            },
            () = &mut cancel => true,
        };
        if cancelled {
            send.send_reset(Reason::CANCEL);
            return;
        }
    }
}

async fn write_frame<M: Serialize>(
    send: &mut SendStream<Bytes>,
    message: &M,
) -> Result<(), ChannelError> {
    match frame::encode(message) {
        Ok(bytes) => send_all(send, bytes, false).await,
        Err(error) => {
            tracing::error!(%error, "control stream: a message could not be framed, dropped");
            Ok(())
        }
    }
}

/// PINGs every `interval`; returns when one is not answered within `timeout`.
async fn keepalive(pings: Option<PingPong>, interval: Duration, timeout: Duration) {
    let Some(mut pings) = pings else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(interval).await;
        match tokio::time::timeout(timeout, pings.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            // The connection failed: its own future says so.
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

/// Runs the gateway's side of one connection (the h2 server) with the default
/// [`ChannelConfig`] until it ends: `Ok` when the server closed it, an error when it
/// broke or stopped answering PINGs.
pub async fn serve<T>(io: T, handler: Arc<dyn Handler>) -> Result<(), ChannelError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_with(io, handler, ChannelConfig::default()).await
}

/// [`serve`] with limits and timers of one's own.
pub async fn serve_with<T>(
    io: T,
    handler: Arc<dyn Handler>,
    config: ChannelConfig,
) -> Result<(), ChannelError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(config.stream_window)
        .initial_connection_window_size(config.connection_window)
        .max_concurrent_streams(config.max_streams)
        .max_header_list_size(16 * 1024)
        .handshake::<T, Bytes>(io);
    let mut connection = tokio::time::timeout(config.keepalive_timeout, handshake)
        .await
        .map_err(|_| ChannelError::HandshakeTimeout(config.keepalive_timeout))??;
    let config = Arc::new(config);
    let keepalive = keepalive(
        connection.ping_pong(),
        config.keepalive_interval,
        config.keepalive_timeout,
    );
    tokio::pin!(keepalive);
    loop {
        let accepted = tokio::select! {
            accepted = connection.accept() => accepted,
            () = &mut keepalive => {
                return Err(ChannelError::KeepaliveTimeout(config.keepalive_timeout));
            }
        };
        let (request, respond) = match accepted {
            Some(Ok(stream)) => stream,
            Some(Err(e)) if e.is_go_away() && e.reason() == Some(Reason::NO_ERROR) => {
                return Ok(());
            }
            Some(Err(e)) => return Err(e.into()),
            None => return Ok(()),
        };
        let handler = handler.clone();
        let config = config.clone();
        tokio::spawn(async move {
            let (parts, body) = request.into_parts();
            match (parts.method, parts.uri.path()) {
                (Method::POST, CONTROL_PATH) => {
                    serve_control(handler, body, respond, &config).await
                }
                (Method::POST, DIAL_PATH) => serve_dial(handler, body, respond).await,
                _ => {
                    let mut respond = respond;
                    let mut response = Response::new(());
                    *response.status_mut() = StatusCode::NOT_FOUND;
                    let _ = respond.send_response(response, true);
                }
            }
        });
    }
}

/// The gateway's side of one TCP connection: TLS with `tls` (from
/// [`crate::pki::gateway_tls`]: a server's certificate required), then [`serve_with`].
/// The TLS handshake may take [`ChannelConfig::keepalive_timeout`]; a refused
/// certificate is [`ChannelError::Tls`].
pub async fn serve_tls<T>(
    io: T,
    tls: Arc<rustls::ServerConfig>,
    handler: Arc<dyn Handler>,
    config: ChannelConfig,
) -> Result<(), ChannelError>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(io);
    let stream = tokio::time::timeout(config.keepalive_timeout, handshake)
        .await
        .map_err(|_| ChannelError::TlsTimeout(config.keepalive_timeout))?
        .map_err(ChannelError::Tls)?;
    serve_with(stream, handler, config).await
}

async fn serve_control(
    handler: Arc<dyn Handler>,
    body: RecvStream,
    mut respond: h2::server::SendResponse<Bytes>,
    config: &ChannelConfig,
) {
    let Ok(send) = respond.send_response(Response::new(()), false) else {
        return;
    };
    let (down_tx, down) = mpsc::channel(config.control_queue);
    let (up, up_rx) = mpsc::channel(config.control_queue);
    // Never cancelled: the gateway's side ends with END_STREAM, after what is queued.
    let (_cancel, cancel_rx) = oneshot::channel();
    tokio::spawn(write_frames(send, up_rx, cancel_rx));
    let refuse = |error: String| {
        let up = up.clone();
        async move {
            let _ = up.send(Up::Refused { error }).await;
        }
    };
    let mut reader = FrameReader::new(body, None);
    match reader.next::<Down>().await {
        Ok(Some(hello @ Down::Hello { protocol, .. })) if protocol == PROTOCOL => {
            let _ = down_tx.send(hello).await;
        }
        Ok(Some(Down::Hello { protocol, .. })) => {
            refuse(format!(
                "protocol {protocol} is not this gateway's ({PROTOCOL})"
            ))
            .await;
            return;
        }
        Ok(Some(_)) => {
            refuse("the first frame must be a hello".into()).await;
            return;
        }
        Ok(None) => return,
        Err(ChannelError::Frame(FrameError::Json(error))) => {
            refuse(format!("the first frame is not a hello: {error}")).await;
            return;
        }
        Err(error) => {
            refuse(error.to_string()).await;
            return;
        }
    }
    tokio::spawn(handler.control(down, up.clone()));
    loop {
        let next = tokio::select! {
            next = reader.next::<Down>() => next,
            // The handler is done with the stream.
            () = down_tx.closed() => return,
        };
        match next {
            Ok(Some(message)) => {
                if down_tx.send(message).await.is_err() {
                    return;
                }
            }
            Ok(None) => return,
            Err(ChannelError::Frame(FrameError::Json(error))) => {
                refuse(format!("not a message: {error}")).await;
            }
            Err(ChannelError::H2(_)) => return,
            Err(error) => {
                // Framing is lost: nothing more can be read. Returning drops `down`'s
                // sender, so the handler returns and the stream ends (END_STREAM after
                // what is queued, the refusal included; h2 then resets the unread
                // half with NO_ERROR, which keeps queued data where CANCEL drops it).
                refuse(error.to_string()).await;
                return;
            }
        }
    }
}

async fn serve_dial(
    handler: Arc<dyn Handler>,
    body: RecvStream,
    mut respond: h2::server::SendResponse<Bytes>,
) {
    let Ok(mut send) = respond.send_response(Response::new(()), false) else {
        return;
    };
    let mut reader = FrameReader::new(body, Some(FIRST_FRAME_LIMIT));
    let request = match reader.next::<DialRequest>().await {
        Ok(Some(request)) => request,
        Ok(None) | Err(ChannelError::H2(_)) => return,
        Err(error) => {
            let reply = DialReply::Failed {
                error: DialError::Other,
                message: format!("not a dial request: {error}"),
            };
            reply_and_end(&mut send, &reply).await;
            return;
        }
    };
    let dialled = tokio::select! {
        dialled = handler.dial(request) => dialled,
        // The server gave up first.
        _ = poll_fn(|cx| send.poll_reset(cx)) => return,
    };
    let mut target = match dialled {
        Ok(target) => target,
        Err(error) => {
            let kind = match error.kind() {
                io::ErrorKind::TimedOut => DialError::TimedOut,
                io::ErrorKind::ConnectionRefused => DialError::Refused,
                io::ErrorKind::NotConnected => DialError::NotConnected,
                _ => DialError::Other,
            };
            let reply = DialReply::Failed {
                error: kind,
                message: error.to_string(),
            };
            reply_and_end(&mut send, &reply).await;
            return;
        }
    };
    let Ok(reply) = frame::encode(&DialReply::Connected) else {
        return;
    };
    if send_all(&mut send, reply, false).await.is_err() {
        return;
    }
    let mut stream = reader.into_stream(send);
    if let Err(error) = tokio::io::copy_bidirectional(&mut stream, &mut target).await {
        // One way failed: the server's side learns at once (rather than its bytes being
        // drained into the void), and the target is closed as `target` drops.
        tracing::debug!(%error, "dial stream ended");
        stream.abort();
    }
}

async fn reply_and_end(send: &mut SendStream<Bytes>, reply: &DialReply) {
    if let Ok(bytes) = frame::encode(reply) {
        let _ = send_all(send, bytes, true).await;
    }
}
