//! The RouterOS API service (8728, and 8729 over TLS): login, tagged commands, `/cancel`,
//! `/quit`, `/user/active/listen`, `/tool/fetch` and `/import` (through the script
//! interpreter, [`crate::script::run_request`]), and everything else through
//! [`menu::execute`].
//!
//! Wire behaviour, as RouterOS does it:
//! - Login: `/login =name= =password=` (6.43+), or the legacy challenge: `/login` alone
//!   gets `!done =ret=<32 hex>`, then `/login =name= =response=00<md5 hex>`. A router
//!   configured as older than 6.43 answers a plaintext login with a challenge, as those
//!   versions did, so a client's fall-back can be tested. A failure is
//!   `!trap =message=invalid user name or password (6)` and the connection stays open;
//!   after [`MAX_LOGIN_FAILURES`] it is closed.
//! - Before login, other commands get `!trap =message=not logged in` on RouterOS 7 and
//!   `!fatal not logged in` (and the connection closes) on RouterOS 6.
//! - Every reply carries the command's `.tag`. A `!trap` is followed by `!done`. A
//!   `print` with no items sends `!empty` then `!done` on 7.18+ (a per-router option).
//! - `/cancel =tag=X` ends command X with `!trap =category=2 =message=interrupted` and
//!   `!done`, then answers `!done` itself; `/cancel` alone cancels every running command.
//!   Only `listen` runs long enough to be cancelled; other commands finish at once.
//! - `/quit` answers `!fatal session terminated on request` and closes.

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use rand::RngCore;
use routeros::codec::{Decoder, Sentence};
use routeros::message::{Attributes, Reply, ReplyKind, Words};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::faults::DropPoint;
use crate::menu::{self, Outcome, Request, Trap};
use crate::router::{Caller, Credential, Router, Session, Via};
use crate::state::{ACTIVE, Item};
use crate::tls::TlsIdentity;

/// Reply sentences queued for a client before the service stops reading its commands.
const REPLY_QUEUE: usize = 1024;

/// Long-running commands (`listen`) one connection may have at once.
pub const MAX_RUNNING: usize = 64;

/// Failed logins after which the connection is closed.
pub const MAX_LOGIN_FAILURES: u32 = 5;

/// The decoder's limits for what a client may send.
const DECODER: Decoder = Decoder {
    max_word_len: 1024 * 1024,
    max_words: 4096,
};

/// Serves the plain API on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let r = router.clone();
    crate::server::serve(listener, router, shutdown, move |stream, peer, cut| {
        connection(stream, peer, r.clone(), cut)
    })
    .await;
}

/// Serves the API over TLS on `listener` until `shutdown`.
pub async fn run_tls(
    listener: TcpListener,
    router: Router,
    tls: TlsIdentity,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let r = router.clone();
    let acceptor = tls.acceptor();
    crate::server::serve(listener, router, shutdown, move |stream, peer, cut| {
        tls_connection(stream, peer, r.clone(), acceptor.clone(), cut)
    })
    .await;
}

/// Serves one API-SSL connection on any stream (a TCP connection, or one that came
/// through the router's WireGuard tunnel): the TLS handshake, then the API.
pub async fn tls_connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    acceptor: tokio_rustls::TlsAcceptor,
    cut: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake =
        tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(stream));
    let handshake = async {
        tokio::select! {
            r = handshake => Some(r),
            _ = cut.cancelled() => None,
        }
    };
    let Some(handshake) = handshake.await else {
        return;
    };
    match handshake {
        Ok(Ok(tls)) => connection(tls, peer, router, cut).await,
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "tls handshake failed"),
        Err(_) => tracing::debug!(%peer, "tls handshake timed out"),
    }
}

enum Out {
    Sentence(Sentence),
    /// Close the connection once everything before this is written.
    Close,
}

fn reply(kind: ReplyKind, tag: &Option<Bytes>, attrs: Vec<(String, String)>) -> Out {
    let mut attributes = Attributes::default();
    for (k, v) in attrs {
        attributes.push(k, v);
    }
    Out::Sentence(
        Reply {
            kind,
            tag: tag.clone(),
            attributes,
            api_attributes: Attributes::default(),
            other: vec![],
        }
        .to_sentence(),
    )
}

fn trap(tag: &Option<Bytes>, t: &Trap) -> Vec<Out> {
    let mut attrs = Vec::new();
    if let Some(c) = t.category {
        attrs.push(("category".to_string(), c.to_string()));
    }
    attrs.push(("message".to_string(), t.message.clone()));
    vec![
        reply(ReplyKind::Trap, tag, attrs),
        reply(ReplyKind::Done, tag, vec![]),
    ]
}

fn fatal(reason: &str) -> Out {
    Out::Sentence(Sentence::new(vec![
        Bytes::from_static(b"!fatal"),
        Bytes::copy_from_slice(reason.as_bytes()),
    ]))
}

fn outcome_replies(router: &Router, tag: &Option<Bytes>, out: Outcome) -> Vec<Out> {
    let mut v = Vec::new();
    let empty = out.rows.is_empty();
    for row in out.rows {
        v.push(reply(ReplyKind::Re, tag, row));
    }
    if out.is_print && empty && router.sends_empty() {
        v.push(reply(ReplyKind::Empty, tag, vec![]));
    }
    let done = match out.ret {
        Some(r) => vec![("ret".to_string(), r)],
        None => vec![],
    };
    v.push(reply(ReplyKind::Done, tag, done));
    v
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Conn {
    router: Router,
    peer: SocketAddr,
    tx: mpsc::Sender<Out>,
    cut: CancellationToken,
    session: Option<Session>,
    challenge: Option<[u8; 16]>,
    failures: u32,
    running: HashMap<Option<Bytes>, CancellationToken>,
}

impl Conn {
    /// The token that ends this connection now: the session's once logged in (so
    /// `/user/active remove` would cut it, were it not refused for API sessions), the connection's before.
    fn session_cut(&self) -> CancellationToken {
        self.session
            .as_ref()
            .map(|s| s.token.clone())
            .unwrap_or_else(|| self.cut.clone())
    }

    /// Queues replies; waits while the client is not reading (backpressure), unless the
    /// connection is being cut.
    async fn send(&self, outs: Vec<Out>) {
        let cut = self.session_cut();
        for o in outs {
            tokio::select! {
                r = self.tx.send(o) => if r.is_err() { return },
                _ = cut.cancelled() => return,
            }
        }
    }

    /// Handles one sentence; `false` ends the connection.
    async fn handle(&mut self, sentence: Sentence) -> bool {
        if sentence.words.is_empty() {
            return true;
        }
        let words = Words::parse(&sentence);
        let tag = words.tag.clone();
        let path = text(&words.head);
        if path == "/login" {
            return self.login(&words, &tag).await;
        }
        if path == "/quit" {
            self.send(vec![fatal("session terminated on request"), Out::Close])
                .await;
            return false;
        }
        let Some(session) = &self.session else {
            if self.router.is_v7() {
                self.send(trap(&tag, &Trap::new("not logged in"))).await;
                return true;
            }
            self.send(vec![fatal("not logged in"), Out::Close]).await;
            return false;
        };
        let caller = session.caller();
        if path == "/cancel" {
            self.cancel(words.attributes.get("tag").map(Bytes::copy_from_slice));
            self.send(vec![reply(ReplyKind::Done, &tag, vec![])]).await;
            return true;
        }
        let req = Request {
            path: path.clone(),
            attrs: words
                .attributes
                .iter()
                .map(|(k, v)| (text(k), text(v)))
                .collect(),
            queries: words.queries.iter().map(|q| text(q)).collect(),
        };
        self.router.record(&req);
        let drop_point = self.router.faults().drop_commands();
        if drop_point == Some(DropPoint::BeforeApply) {
            return false;
        }
        if path == "/user/active/listen" {
            self.listen(tag, &caller).await;
            return true;
        }
        let result = if self.router.faults().is_missing(&path) {
            let verb = path.rsplit('/').next().unwrap_or_default();
            Err(Trap {
                message: format!("no such command or directory ({verb})"),
                category: Some(0),
            })
        } else if matches!(path.as_str(), "/tool/fetch" | "/import") {
            crate::script::run_request(&self.router, &caller, &req).await
        } else {
            menu::execute(&self.router, &caller, &req)
        };
        if drop_point == Some(DropPoint::AfterApply) {
            return false;
        }
        let outs = match result {
            Ok(out) => outcome_replies(&self.router, &tag, out),
            Err(t) => trap(&tag, &t),
        };
        self.send(outs).await;
        true
    }

    async fn login(&mut self, words: &Words, tag: &Option<Bytes>) -> bool {
        let name = words.attributes.get("name");
        let password = words.attributes.get("password");
        let response = words.attributes.get("response");
        // Before 6.43 RouterOS knew only the challenge: a plaintext `/login` got a
        // challenge back (which is how clients learn to fall back to MD5).
        let plaintext_unknown = self.router.version_before(6, 43) && response.is_none();
        if name.is_none() || plaintext_unknown {
            let mut c = [0u8; 16];
            rand::rng().fill_bytes(&mut c);
            self.challenge = Some(c);
            self.send(vec![reply(
                ReplyKind::Done,
                tag,
                vec![("ret".into(), hex::encode(c))],
            )])
            .await;
            return true;
        }
        let name = text(name.unwrap_or_default());
        let challenge = self.challenge.take();
        let credential = match (password, response, &challenge) {
            (Some(p), _, _) => Some(Credential::Password(p)),
            (None, Some(r), Some(c)) => Some(Credential::Challenge {
                challenge: c,
                response: r,
            }),
            _ => None,
        };
        let token = self.cut.child_token();
        let result = match credential {
            Some(c) => self
                .router
                .login(&name, c, self.peer.ip(), Via::Api, token)
                .map_err(|e| e.to_string()),
            None => Err("invalid user name or password (6)".to_string()),
        };
        match result {
            Ok(session) => {
                // A second login on a logged-in connection replaces the session.
                self.session = Some(session);
                self.send(vec![reply(ReplyKind::Done, tag, vec![])]).await;
                true
            }
            Err(message) => {
                tracing::info!(user = %name, peer = %self.peer, "api login failed");
                self.failures += 1;
                self.send(trap(tag, &Trap::new(message))).await;
                if self.failures >= MAX_LOGIN_FAILURES {
                    self.send(vec![Out::Close]).await;
                    return false;
                }
                true
            }
        }
    }

    fn cancel(&mut self, tag: Option<Bytes>) {
        match tag {
            Some(t) => {
                if let Some(token) = self.running.remove(&Some(t)) {
                    token.cancel();
                }
            }
            None => {
                for (_, token) in self.running.drain() {
                    token.cancel();
                }
            }
        }
    }

    /// `/user/active/listen`: a `!re` for each session that starts, and one with
    /// `=.dead=yes` for each that ends, until cancelled.
    async fn listen(&mut self, tag: Option<Bytes>, caller: &Caller) {
        if !caller.policies.has("read") {
            self.send(trap(&tag, &Trap::permissions())).await;
            return;
        }
        if self.running.len() >= MAX_RUNNING && !self.running.contains_key(&tag) {
            let t = Trap::new("too many commands running on this connection");
            self.send(trap(&tag, &t)).await;
            return;
        }
        let token = CancellationToken::new();
        if let Some(old) = self.running.insert(tag.clone(), token.clone()) {
            old.cancel();
        }
        let router = self.router.clone();
        let tx = self.tx.clone();
        let mut changes = router.subscribe_active();
        tokio::spawn(async move {
            let snapshot = |r: &Router| -> Vec<Item> { r.state().active.items.clone() };
            let mut known = snapshot(&router);
            loop {
                tokio::select! {
                    _ = token.cancelled() => {
                        let t = Trap { message: "interrupted".into(), category: Some(2) };
                        for o in trap(&tag, &t) {
                            let _ = tx.send(o).await;
                        }
                        return;
                    }
                    r = changes.changed() => if r.is_err() { return },
                }
                let now = snapshot(&router);
                for item in &now {
                    if !known.contains(item) {
                        let _ = tx
                            .send(reply(ReplyKind::Re, &tag, menu::row(item, &ACTIVE)))
                            .await;
                    }
                }
                for item in &known {
                    if !now.iter().any(|i| i.id == item.id) {
                        let row = vec![
                            (".id".to_string(), item.id_string()),
                            (".dead".to_string(), "yes".to_string()),
                        ];
                        let _ = tx.send(reply(ReplyKind::Re, &tag, row)).await;
                    }
                }
                known = now;
            }
        });
    }
}

async fn writer<W: AsyncWrite + Unpin>(mut w: W, mut rx: mpsc::Receiver<Out>, router: Router) {
    let mut buf = BytesMut::new();
    while let Some(out) = rx.recv().await {
        match out {
            Out::Sentence(s) => {
                let latency = router.faults().latency();
                if !latency.is_zero() {
                    tokio::time::sleep(latency).await;
                }
                buf.clear();
                if s.encode(&mut buf).is_err() {
                    continue;
                }
                if w.write_all(&buf).await.is_err() {
                    return;
                }
            }
            Out::Close => break,
        }
        if rx.is_empty() && w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.flush().await;
    let _ = w.shutdown().await;
}

/// Serves one API connection until the client leaves, the session is logged out, the
/// router goes offline, or a fault drops it.
pub async fn connection<S>(stream: S, peer: SocketAddr, router: Router, cut: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::channel(REPLY_QUEUE);
    let mut write_task = tokio::spawn(writer(wr, rx, router.clone()));
    let mut conn = Conn {
        router,
        peer,
        tx,
        cut: cut.clone(),
        session: None,
        challenge: None,
        failures: 0,
        running: HashMap::new(),
    };
    let mut buf = BytesMut::with_capacity(4096);
    'conn: loop {
        loop {
            match DECODER.decode(&mut buf) {
                Ok(Some(sentence)) => {
                    if !conn.handle(sentence).await {
                        break 'conn;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "bad sentence from api client");
                    conn.send(vec![fatal("invalid sentence"), Out::Close]).await;
                    break 'conn;
                }
            }
        }
        let session_cut = conn.session_cut();
        tokio::select! {
            _ = session_cut.cancelled() => break,
            _ = &mut write_task => break,
            r = rd.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
        }
    }
    for (_, token) in conn.running.drain() {
        token.cancel();
    }
    let logged_out = conn
        .session
        .as_ref()
        .is_some_and(|s| s.token.is_cancelled());
    if logged_out || cut.is_cancelled() {
        // Logged out or offline: cut at once, whatever is queued.
        write_task.abort();
    } else {
        let _ = conn.tx.try_send(Out::Close);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), &mut write_task).await;
        write_task.abort();
    }
    drop(conn);
}
