//! Helpers: start a router, and a raw API client that speaks sentences with the codec
//! only, so every exchange in the tests is explicit.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::BytesMut;
use postern_sim::{RouterHandle, RouterOptions};
use routeros::codec::{Decoder, encode_sentence};
use routeros::message::{Reply, ReplyKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A router on `address` with every service on an ephemeral port and admin password
/// `pw`.
pub async fn router_at(address: &str) -> RouterHandle {
    let mut o = RouterOptions::new("sim-1", address.parse().unwrap());
    o.admin_password = Some("pw".into());
    RouterHandle::start(o).await.unwrap()
}

pub async fn router() -> RouterHandle {
    router_at("127.0.0.1").await
}

pub async fn router_with(options: impl FnOnce(&mut RouterOptions)) -> RouterHandle {
    let mut o = RouterOptions::new("sim-1", "127.0.0.1".parse().unwrap());
    o.admin_password = Some("pw".into());
    options(&mut o);
    RouterHandle::start(o).await.unwrap()
}

/// Connects to `to` from the local address `from` (any 127.x works on Linux).
pub async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    sock.connect(to).await.unwrap()
}

pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A raw RouterOS API connection.
pub struct Raw {
    stream: Box<dyn Stream>,
    buf: BytesMut,
}

impl Raw {
    pub fn new(stream: impl Stream + 'static) -> Raw {
        Raw {
            stream: Box::new(stream),
            buf: BytesMut::new(),
        }
    }

    pub async fn connect(to: SocketAddr) -> Raw {
        Raw::new(TcpStream::connect(to).await.unwrap())
    }

    pub async fn connect_from(from: &str, to: SocketAddr) -> Raw {
        Raw::new(connect_from(from, to).await)
    }

    /// Logs in as admin/pw with the plaintext method and checks it worked.
    pub async fn admin(to: SocketAddr) -> Raw {
        let mut c = Raw::connect(to).await;
        c.login_ok("admin", "pw").await;
        c
    }

    pub async fn send(&mut self, words: &[&str]) {
        let mut out = BytesMut::new();
        encode_sentence(words, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// Sends words that need not be UTF-8.
    pub async fn send_raw(&mut self, words: &[&[u8]]) {
        let mut out = BytesMut::new();
        encode_sentence(words, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }

    /// The next reply, or `None` when the router closed the connection.
    pub async fn recv(&mut self) -> Option<Reply> {
        tokio::time::timeout(TIMEOUT, async {
            loop {
                if let Some(s) = Decoder::default().decode(&mut self.buf).unwrap() {
                    return Some(Reply::parse(&s).unwrap());
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("no reply within the timeout")
    }

    /// Whether the router closed the connection (EOF or reset) within the timeout.
    pub async fn closed(&mut self) -> bool {
        let r = tokio::time::timeout(TIMEOUT, async {
            loop {
                let mut b = [0u8; 256];
                match self.stream.read(&mut b).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await;
        r.unwrap_or(false)
    }

    /// Sends a command and reads replies up to and including the final `!done` (or a
    /// `!fatal`).
    pub async fn call(&mut self, words: &[&str]) -> Vec<Reply> {
        self.send(words).await;
        self.read_done().await
    }

    pub async fn read_done(&mut self) -> Vec<Reply> {
        let mut out = Vec::new();
        loop {
            let r = self.recv().await.expect("connection closed before !done");
            let kind = r.kind;
            out.push(r);
            if matches!(kind, ReplyKind::Done | ReplyKind::Fatal) {
                return out;
            }
        }
    }

    pub async fn login_ok(&mut self, user: &str, password: &str) {
        let r = self.login(user, password).await;
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!(r[0].kind, ReplyKind::Done, "{r:?}");
    }

    pub async fn login(&mut self, user: &str, password: &str) -> Vec<Reply> {
        let name = format!("=name={user}");
        let pw = format!("=password={password}");
        self.call(&["/login", &name, &pw]).await
    }

    /// `!re` rows of a command as (key, value) text pairs; panics on a trap.
    pub async fn rows(&mut self, words: &[&str]) -> Vec<Vec<(String, String)>> {
        let replies = self.call(words).await;
        if let Some(t) = replies.iter().find(|r| r.kind == ReplyKind::Trap) {
            panic!("{words:?} trapped: {:?}", t.message());
        }
        replies
            .iter()
            .filter(|r| r.kind == ReplyKind::Re)
            .map(|r| {
                r.attributes
                    .iter()
                    .map(|(k, v)| {
                        (
                            String::from_utf8_lossy(k).into_owned(),
                            String::from_utf8_lossy(v).into_owned(),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    /// The `=ret=` of a command that must succeed.
    pub async fn ok(&mut self, words: &[&str]) -> Option<String> {
        let replies = self.call(words).await;
        let last = replies.last().unwrap();
        assert_eq!(replies.len(), 1, "{words:?} -> {replies:?}");
        assert_eq!(last.kind, ReplyKind::Done, "{words:?} -> {replies:?}");
        last.ret().map(|r| String::from_utf8_lossy(r).into_owned())
    }

    /// The `!trap` of a command that must fail: (message, category).
    pub async fn trap(&mut self, words: &[&str]) -> (String, Option<u8>) {
        let replies = self.call(words).await;
        assert_eq!(replies.len(), 2, "{words:?} -> {replies:?}");
        assert_eq!(replies[0].kind, ReplyKind::Trap, "{words:?} -> {replies:?}");
        assert_eq!(replies[1].kind, ReplyKind::Done, "{words:?} -> {replies:?}");
        (
            replies[0].message().unwrap(),
            replies[0].category().map(|c| c.code()),
        )
    }
}

pub fn get<'a>(row: &'a [(String, String)], key: &str) -> Option<&'a str> {
    row.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Names (`name=`) of rows.
pub fn names(rows: &[Vec<(String, String)>]) -> Vec<String> {
    rows.iter()
        .filter_map(|r| get(r, "name").map(str::to_string))
        .collect()
}

/// Waits until `f` holds, polling; panics after the timeout.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Adds a user through the API as admin.
pub async fn add_user(
    c: &mut Raw,
    name: &str,
    group: &str,
    password: &str,
    extra: &[&str],
) -> String {
    let n = format!("=name={name}");
    let g = format!("=group={group}");
    let p = format!("=password={password}");
    let mut words = vec!["/user/add", n.as_str(), g.as_str(), p.as_str()];
    words.extend_from_slice(extra);
    c.ok(&words).await.unwrap()
}
