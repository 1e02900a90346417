//! The async RouterOS API client: connect (TCP or TLS), log in, and run many tagged
//! commands at once on one connection.
//!
//! A [`Client`] is a cheap handle (clone it freely) to one logged-in connection, served by
//! two tasks: a writer that sends queued sentences, and a reader that routes each reply to
//! the command whose `.tag=` it carries. A command that times out, or whose handle is
//! dropped, is cancelled on the router with `/cancel` and its late replies are discarded.
//! When the connection ends (end of stream, reset, bytes that are not a sentence,
//! `!fatal`), every waiting command is told at once and every later one fails at once.
//!
//! ```no_run
//! # async fn demo() -> Result<(), postern_routeros::Error> {
//! use std::time::Duration;
//! use postern_routeros::{Client, ClientConfig, Command, TlsMode};
//!
//! let config = ClientConfig::new("192.0.2.1:8729", "admin", "secret")
//!     .with_tls(TlsMode::pinned_sha256("ab:cd:…")?)
//!     .with_command_timeout(Duration::from_secs(10));
//! let client = Client::connect(&config).await?;
//! let users = client
//!     .call(Command::new("/user/print").where_eq("name", "alice").proplist(&[".id", "group"]))
//!     .await?;
//! for user in &users.items {
//!     println!("{:?} {:?}", user.id(), user.get_str("group"));
//! }
//! let mut events = client.stream(Command::new("/interface/listen"))?;
//! while let Some(event) = events.next().await {
//!     println!("{:?}", event?.to_map());
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use md5::{Digest, Md5};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use crate::codec::Decoder;
use crate::connection::{Connection, SentenceReader, SentenceWriter};
use crate::error::Error;
use crate::item::{Item, Response};
use crate::message::{Attributes, Command, Reply, ReplyKind, TrapCategory};
use crate::tls::{self, CertFingerprint, TlsMode};

/// How long connecting, the TLS handshake and the login may take unless told otherwise.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a command may take unless told otherwise.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// A password that never shows in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(password: impl Into<String>) -> Self {
        Self(password.into())
    }

    /// The password itself, for sending it to the router.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl From<&str> for Password {
    fn from(s: &str) -> Self {
        Self::new(s)
    }
}

impl From<String> for Password {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

/// Where and how to connect. Build with [`ClientConfig::new`] and the `with_*` setters.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port`, such as `192.0.2.1:8728` or `router.example:8729`.
    pub address: String,
    pub username: String,
    pub password: Password,
    /// For connecting, the TLS handshake and the login together.
    pub connect_timeout: Duration,
    /// For each command unless a call says otherwise.
    pub command_timeout: Duration,
    /// `None` for plain TCP (port 8728); TLS (port 8729) otherwise.
    pub tls: Option<TlsMode>,
    /// The name sent in TLS SNI; by default the peer's IP address (no SNI).
    pub tls_server_name: Option<String>,
    /// Limits on what the router may send.
    pub decoder: Decoder,
}

impl ClientConfig {
    /// Plain TCP to `address` with the default timeouts.
    pub fn new(
        address: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<Password>,
    ) -> Self {
        Self {
            address: address.into(),
            username: username.into(),
            password: password.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            tls: None,
            tls_server_name: None,
            decoder: Decoder::default(),
        }
    }

    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn with_command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Uses TLS, checking the router's certificate as `mode` says.
    pub fn with_tls(mut self, mode: TlsMode) -> Self {
        self.tls = Some(mode);
        self
    }

    pub fn with_tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls_server_name = Some(name.into());
        self
    }

    pub fn with_decoder(mut self, decoder: Decoder) -> Self {
        self.decoder = decoder;
        self
    }
}

/// The `.tag=` of a command in flight on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(u64);

impl Tag {
    pub fn value(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The MD5 challenge response of RouterOS before 6.43: `00` followed by the hex of
/// `md5(0x00, password, challenge)`.
pub fn md5_challenge_response(password: &str, challenge: &[u8]) -> String {
    let mut md5 = Md5::new();
    md5.update([0u8]);
    md5.update(password.as_bytes());
    md5.update(challenge);
    format!("00{}", hex::encode(md5.finalize()))
}

/// Why the connection ended, kept to tell later commands.
#[derive(Debug, Clone)]
enum Closed {
    Lost(String),
    Fatal(String),
}

impl Closed {
    /// The error for a command that was waiting when it happened.
    fn for_waiter(&self) -> Error {
        match self {
            Closed::Lost(reason) => Error::ConnectionLost {
                reason: reason.clone(),
            },
            Closed::Fatal(message) => Error::Fatal {
                message: message.clone(),
            },
        }
    }

    /// The error for a command started afterwards.
    fn for_new_command(&self) -> Error {
        match self {
            Closed::Lost(reason) => Error::ConnectionLost {
                reason: reason.clone(),
            },
            Closed::Fatal(message) => Error::ConnectionLost {
                reason: format!("the router sent !fatal: {message}"),
            },
        }
    }
}

#[derive(Debug)]
enum Event {
    Reply(Reply),
    Closed(Closed),
}

#[derive(Debug, Default)]
struct State {
    pending: HashMap<u64, mpsc::UnboundedSender<Event>>,
    closed: Option<Closed>,
}

/// What the handles and both tasks share.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Becomes `true` once the connection is closed; both tasks watch it.
    closed: watch::Sender<bool>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-changed in a way that
        // matters more than losing the connection; keep going.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(&self, tag: u64) -> Result<mpsc::UnboundedReceiver<Event>, Error> {
        let mut state = self.lock();
        if let Some(closed) = &state.closed {
            return Err(closed.for_new_command());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        state.pending.insert(tag, tx);
        Ok(rx)
    }

    fn deregister(&self, tag: u64) {
        self.lock().pending.remove(&tag);
    }

    fn closed_error(&self) -> Error {
        match &self.lock().closed {
            Some(closed) => closed.for_new_command(),
            None => Error::ConnectionLost {
                reason: "the connection's writer stopped".to_string(),
            },
        }
    }

    /// Ends the connection: every waiting command is told why, later ones fail at once.
    fn close(&self, why: Closed) {
        let pending = {
            let mut state = self.lock();
            if state.closed.is_some() {
                return;
            }
            state.closed = Some(why.clone());
            std::mem::take(&mut state.pending)
        };
        for (_, tx) in pending {
            let _ = tx.send(Event::Closed(why.clone()));
        }
        self.closed.send_replace(true);
    }

    fn is_closed(&self) -> bool {
        self.lock().closed.is_some()
    }

    /// Hands a reply to the command it belongs to; replies for no waiting command (late
    /// replies of a timed-out or cancelled one, or a `/cancel`'s own) are dropped.
    fn dispatch(&self, reply: Reply) {
        let Some(tag) = reply
            .tag
            .as_ref()
            .and_then(|t| std::str::from_utf8(t).ok())
            .and_then(|t| t.parse::<u64>().ok())
        else {
            tracing::debug!(kind = reply.kind.word(), "dropping a reply without our tag");
            return;
        };
        let mut state = self.lock();
        let finished = reply.kind.is_final();
        let Some(tx) = state.pending.get(&tag) else {
            tracing::trace!(tag, kind = reply.kind.word(), "dropping a late reply");
            return;
        };
        if tx.send(Event::Reply(reply)).is_err() || finished {
            state.pending.remove(&tag);
        }
    }
}

/// The part of a client that lives as long as any handle does.
#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    writer: mpsc::UnboundedSender<Bytes>,
    next_tag: AtomicU64,
    command_timeout: Duration,
    /// The certificate the router presented over TLS (set once, before the login).
    peer_certificate: std::sync::OnceLock<CertFingerprint>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared
            .close(Closed::Lost("the client was dropped".to_string()));
    }
}

/// A logged-in connection to a router. Cloning is cheap; all clones share the
/// connection, and it closes when the last clone (and the last [`Request`]) is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl Client {
    /// Connects to `config.address` (TLS when configured), logs in, and starts the
    /// connection's tasks. Everything together is bounded by `config.connect_timeout`.
    pub async fn connect(config: &ClientConfig) -> Result<Client, Error> {
        let attempt = Self::connect_inner(config);
        match tokio::time::timeout(config.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Error::ConnectTimeout {
                address: config.address.clone(),
                after: config.connect_timeout,
            }),
        }
    }

    async fn connect_inner(config: &ClientConfig) -> Result<Client, Error> {
        let tcp = TcpStream::connect(&config.address)
            .await
            .map_err(|source| Error::Connect {
                address: config.address.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr()?.ip();
        Self::over_inner(tcp, peer, config).await
    }

    /// [`Client::connect`] over a stream already open to the router at `peer` (a
    /// connection inside the management tunnel): TLS when configured (the certificate
    /// checked as over TCP; SNI `config.tls_server_name`, else none), then the login.
    /// `config.address` only names the router in errors. Bounded by
    /// `config.connect_timeout`.
    pub async fn connect_over<S>(
        stream: S,
        peer: std::net::IpAddr,
        config: &ClientConfig,
    ) -> Result<Client, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let attempt = Self::over_inner(stream, peer, config);
        match tokio::time::timeout(config.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(Error::ConnectTimeout {
                address: config.address.clone(),
                after: config.connect_timeout,
            }),
        }
    }

    async fn over_inner<S>(
        stream: S,
        peer: std::net::IpAddr,
        config: &ClientConfig,
    ) -> Result<Client, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Some(mode) = &config.tls else {
            return Self::handshake(stream, config).await;
        };
        let connector = tls::connector(mode)?;
        let name = match &config.tls_server_name {
            Some(name) => ServerName::try_from(name.clone())
                .map_err(|e| Error::TlsConfig(format!("invalid server name {name:?}: {e}")))?,
            None => ServerName::IpAddress(peer.into()),
        };
        let stream = connector
            .connect(name, stream)
            .await
            .map_err(|source| Error::Tls {
                address: config.address.clone(),
                source,
            })?;
        let presented = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| CertFingerprint::of_der(cert.as_ref()));
        let client = Self::handshake(stream, config).await?;
        if let Some(fingerprint) = presented {
            let _ = client.inner.peer_certificate.set(fingerprint);
        }
        Ok(client)
    }

    /// The SHA-256 fingerprint of the certificate the router presented, on a TLS
    /// connection: what to pin after a first contact made with
    /// [`TlsMode::InsecureAcceptAnyCertificate`].
    pub fn peer_certificate(&self) -> Option<CertFingerprint> {
        self.inner.peer_certificate.get().copied()
    }

    /// Logs in over an already open stream (a tunnel, an in-memory pipe) and starts the
    /// connection's tasks. `config.address` and `config.tls` are not used; no timeout
    /// applies but the caller's.
    pub async fn handshake<S>(stream: S, config: &ClientConfig) -> Result<Client, Error>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut conn = Connection::with_decoder(stream, config.decoder);
        login(&mut conn, &config.username, config.password.expose()).await?;
        Ok(Self::start_tasks(conn, config.command_timeout))
    }

    fn start_tasks<S>(conn: Connection<S>, command_timeout: Duration) -> Client
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (reader, writer) = conn.into_split();
        let (closed, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            closed,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(reader, Arc::clone(&shared)));
        tokio::spawn(write_loop(writer, rx, Arc::clone(&shared)));
        Client {
            inner: Arc::new(Inner {
                shared,
                writer: tx,
                next_tag: AtomicU64::new(1),
                command_timeout,
                peer_certificate: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Runs `command` to the end with the default timeout: its items, or why it failed.
    pub async fn call(&self, command: Command) -> Result<Response, Error> {
        self.call_with_timeout(command, self.inner.command_timeout)
            .await
    }

    /// Runs `command` to the end within `timeout`; past it the command is cancelled on the
    /// router and [`Error::Timeout`] returned.
    pub async fn call_with_timeout(
        &self,
        command: Command,
        timeout: Duration,
    ) -> Result<Response, Error> {
        let mut request = self.start(command)?;
        match tokio::time::timeout(timeout, request.collect_items()).await {
            Ok(result) => result,
            Err(_) => {
                request.abandon();
                Err(Error::Timeout(timeout))
            }
        }
    }

    /// Sends `command` and returns a handle that yields its items as they come, with no
    /// timeout: for long-running commands (`listen`, `follow`, `interval=`) or for a
    /// command to cancel. Dropping the handle before the end cancels the command.
    pub fn start(&self, command: Command) -> Result<Request, Error> {
        let tag = self.inner.next_tag.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        command.tag(tag.to_string()).encode(&mut buf)?;
        let rx = self.inner.shared.register(tag)?;
        if self.inner.writer.send(buf.freeze()).is_err() {
            self.inner.shared.deregister(tag);
            return Err(self.inner.shared.closed_error());
        }
        Ok(Request {
            client: self.clone(),
            tag: Tag(tag),
            rx,
            trap: None,
            done: None,
            finished: false,
        })
    }

    /// Alias of [`start`](Self::start), for reading a long-running command as a stream.
    pub fn stream(&self, command: Command) -> Result<Request, Error> {
        self.start(command)
    }

    /// Asks the router to cancel the command tagged `tag` (`/cancel =tag=…`, itself under
    /// a tag of its own) and waits for the router to acknowledge. The cancelled command
    /// then ends with [`Error::Cancelled`].
    pub async fn cancel(&self, tag: Tag) -> Result<(), Error> {
        self.call(Command::new("/cancel").attr("tag", tag.to_string()))
            .await
            .map(|_| ())
    }

    /// Sends `/cancel =tag=…` without waiting for an answer.
    fn send_cancel(&self, tag: Tag) {
        let own = self.inner.next_tag.fetch_add(1, Ordering::Relaxed);
        let mut buf = BytesMut::new();
        let cancel = Command::new("/cancel")
            .attr("tag", tag.to_string())
            .tag(own.to_string());
        if cancel.encode(&mut buf).is_ok() {
            let _ = self.inner.writer.send(buf.freeze());
        }
    }

    /// Whether the connection has ended; a closed client fails every command at once.
    pub fn is_closed(&self) -> bool {
        self.inner.shared.is_closed()
    }

    /// Closes the connection now; waiting commands get [`Error::ConnectionLost`].
    pub fn close(&self) {
        self.inner
            .shared
            .close(Closed::Lost("closed by this client".to_string()));
    }

    /// The default per-command timeout.
    pub fn command_timeout(&self) -> Duration {
        self.inner.command_timeout
    }

    /// The number of commands waiting for replies.
    pub fn in_flight(&self) -> usize {
        self.inner.shared.lock().pending.len()
    }
}

/// A command in flight: yields its `!re` items until it ends.
///
/// Dropping a request that has not ended cancels it on the router.
#[derive(Debug)]
pub struct Request {
    client: Client,
    tag: Tag,
    rx: mpsc::UnboundedReceiver<Event>,
    trap: Option<Reply>,
    done: Option<Attributes>,
    finished: bool,
}

impl Request {
    /// The command's `.tag=`.
    pub fn tag(&self) -> Tag {
        self.tag
    }

    /// The next item; `None` once the command ended well (`!done`; an `!empty` before it
    /// only says there were no items). An error
    /// (`!trap`, cancelled, connection lost) ends the command.
    pub async fn next(&mut self) -> Option<Result<Item, Error>> {
        while !self.finished {
            let event = match self.rx.recv().await {
                Some(event) => event,
                None => {
                    self.finished = true;
                    return Some(Err(self.client.inner.shared.closed_error()));
                }
            };
            match event {
                Event::Closed(why) => {
                    self.finished = true;
                    return Some(Err(why.for_waiter()));
                }
                Event::Reply(reply) => match reply.kind {
                    ReplyKind::Re => return Some(Ok(Item::new(reply.attributes))),
                    // RouterOS follows a `!trap` with a `!done`; wait for it.
                    ReplyKind::Trap => self.trap = Some(reply),
                    // RouterOS 7.18 follows `!empty` with `!done`; wait for it.
                    ReplyKind::Empty => {}
                    ReplyKind::Done | ReplyKind::Fatal => {
                        self.finished = true;
                        if let Some(trap) = self.trap.take() {
                            return Some(Err(trap_error(&trap)));
                        }
                        self.done = Some(reply.attributes);
                        return None;
                    }
                },
            }
        }
        None
    }

    /// Waits for the end and returns everything not yet read.
    pub async fn collect(mut self) -> Result<Response, Error> {
        self.collect_items().await
    }

    async fn collect_items(&mut self) -> Result<Response, Error> {
        let mut items = Vec::new();
        while let Some(item) = self.next().await {
            items.push(item?);
        }
        Ok(Response {
            items,
            done: self.done.take().unwrap_or_default(),
        })
    }

    /// The attributes of the final `!done`, once the command ended well.
    pub fn done(&self) -> Option<&Attributes> {
        self.done.as_ref()
    }

    /// Whether the command has ended.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Asks the router to cancel this command, without waiting: the request then ends
    /// with [`Error::Cancelled`] when the router's interrupted `!trap` arrives (or
    /// normally, if the command finished first).
    pub fn cancel(&self) {
        if !self.finished {
            self.client.send_cancel(self.tag);
        }
    }

    /// Stops listening and cancels the command on the router; its late replies are dropped.
    fn abandon(&mut self) {
        if !self.finished {
            self.finished = true;
            self.client.inner.shared.deregister(self.tag.0);
            self.client.send_cancel(self.tag);
        }
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        self.abandon();
    }
}

/// The error a `!trap` stands for: [`Error::Cancelled`] for an interrupted command.
fn trap_error(trap: &Reply) -> Error {
    let category = trap.category();
    if category == Some(TrapCategory::Interrupted) {
        return Error::Cancelled;
    }
    Error::Trap {
        message: trap
            .message()
            .unwrap_or_else(|| "the router gave no reason".to_string()),
        category,
    }
}

/// Logs in: the plaintext method first, then the MD5 challenge if the router answers
/// with one (RouterOS before 6.43).
async fn login<S>(conn: &mut Connection<S>, username: &str, password: &str) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    conn.write_command(
        &Command::new("/login")
            .attr("name", username)
            .attr("password", password),
    )
    .await?;
    let done = read_login_reply(conn).await?;
    let Some(challenge) = done.ret() else {
        return Ok(());
    };
    let challenge = hex::decode(challenge)
        .map_err(|_| Error::Protocol("the login challenge is not hex".to_string()))?;
    conn.write_command(
        &Command::new("/login")
            .attr("name", username)
            .attr("response", md5_challenge_response(password, &challenge)),
    )
    .await?;
    read_login_reply(conn).await?;
    Ok(())
}

async fn read_login_reply<S>(conn: &mut Connection<S>) -> Result<Reply, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let Some(sentence) = conn.read_sentence().await? else {
            return Err(Error::ConnectionLost {
                reason: "the router closed the connection during login".to_string(),
            });
        };
        if sentence.words.is_empty() {
            continue;
        }
        let reply = Reply::parse(&sentence).map_err(|e| Error::Protocol(e.to_string()))?;
        match reply.kind {
            ReplyKind::Done => return Ok(reply),
            ReplyKind::Trap | ReplyKind::Fatal => {
                return Err(Error::Login {
                    message: reply
                        .message()
                        .unwrap_or_else(|| "the router refused the login".to_string()),
                });
            }
            ReplyKind::Re | ReplyKind::Empty => continue,
        }
    }
}

async fn read_loop<R>(mut reader: SentenceReader<R>, shared: Arc<Shared>)
where
    R: AsyncRead + Unpin,
{
    let mut closed = shared.closed.subscribe();
    loop {
        let read = tokio::select! {
            read = reader.read_sentence() => read,
            _ = closed.wait_for(|closed| *closed) => return,
        };
        let sentence = match read {
            Ok(Some(sentence)) => sentence,
            Ok(None) => {
                shared.close(Closed::Lost("the router closed the connection".to_string()));
                return;
            }
            Err(e) => {
                shared.close(Closed::Lost(e.to_string()));
                return;
            }
        };
        if sentence.words.is_empty() {
            continue;
        }
        let reply = match Reply::parse(&sentence) {
            Ok(reply) => reply,
            Err(e) => {
                // Newer RouterOS may add reply types; a command that never ends
                // still ends at its timeout.
                tracing::warn!(error = %e, "ignoring a sentence that is not a known reply");
                continue;
            }
        };
        if reply.kind == ReplyKind::Fatal {
            let message = reply
                .message()
                .unwrap_or_else(|| "no reason given".to_string());
            shared.close(Closed::Fatal(message));
            return;
        }
        shared.dispatch(reply);
    }
}

async fn write_loop<W>(
    mut writer: SentenceWriter<W>,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    shared: Arc<Shared>,
) where
    W: AsyncWrite + Unpin,
{
    let mut closed = shared.closed.subscribe();
    loop {
        let first = tokio::select! {
            msg = rx.recv() => match msg {
                Some(bytes) => bytes,
                None => break,
            },
            _ = closed.wait_for(|closed| *closed) => break,
        };
        // A peer that stops reading must not keep this task stuck once the connection
        // is closed for another reason.
        let written = tokio::select! {
            written = write_batch(&mut writer, first, &mut rx) => written,
            _ = closed.wait_for(|closed| *closed) => break,
        };
        if let Err(e) = written {
            shared.close(Closed::Lost(format!("writing to the router failed: {e}")));
            break;
        }
    }
    // Best effort: a peer that stopped reading must not keep this task alive.
    let _ = tokio::time::timeout(Duration::from_secs(1), writer.shutdown()).await;
}

/// Writes `first` and whatever else is already queued, then flushes once.
async fn write_batch<W>(
    writer: &mut SentenceWriter<W>,
    first: Bytes,
    rx: &mut mpsc::UnboundedReceiver<Bytes>,
) -> Result<(), Error>
where
    W: AsyncWrite + Unpin,
{
    writer.write_encoded(&first).await?;
    for _ in 0..256 {
        match rx.try_recv() {
            Ok(bytes) => writer.write_encoded(&bytes).await?,
            Err(_) => break,
        }
    }
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_challenge_vector() {
        let challenge = hex::decode("abc123").unwrap();
        assert_eq!(
            md5_challenge_response("passTest", &challenge),
            "0021277bff9ac7caf06aa608e46616d47f"
        );
    }

    #[test]
    fn config_debug_does_not_show_the_password() {
        let config = ClientConfig::new("127.0.0.1:8728", "admin", "hunter2-secret");
        let shown = format!("{config:?}");
        assert!(shown.contains("admin"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn interrupted_trap_is_cancelled_other_traps_keep_their_message() {
        let mut a = Attributes::default();
        a.push("category", "2");
        a.push("message", "interrupted");
        let trap = Reply {
            kind: ReplyKind::Trap,
            tag: None,
            attributes: a,
            api_attributes: Attributes::default(),
            other: vec![],
        };
        assert!(matches!(trap_error(&trap), Error::Cancelled));
        let mut a = Attributes::default();
        a.push("message", "no such item");
        let trap = Reply {
            attributes: a,
            ..trap
        };
        assert!(matches!(
            trap_error(&trap),
            Error::Trap { message, category: None } if message == "no such item"
        ));
    }
}
