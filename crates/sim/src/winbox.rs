//! A stand-in on the WinBox port (8291). **This is not the WinBox protocol**, nor any
//! part of it: it is a line-based login that lets a test prove that a user's
//! credentials, `address=` list and `winbox` policy work through a forward, and that
//! `/user/active remove` ends the session.
//!
//! The exchange, one line each way, `\n`-terminated:
//!
//! ```text
//! S: POSTERN-SIM WINBOX STAND-IN (not the WinBox protocol) <identity>
//! C: login <user> <password>
//! S: ok <identity>            or: denied
//! C: whoami                   S: <user>
//! C: <anything else>          S: echo: <line>
//! C: quit                     S: bye   (and the server closes)
//! ```
//!
//! Three denied logins close the connection. Lines longer than 4 KiB close it too.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::router::{Credential, Router, Via};

/// The longest line the stand-in reads.
pub const MAX_LINE: usize = 4096;

/// Serves the stand-in on `listener` until `shutdown`.
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

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    line: &mut Vec<u8>,
) -> Option<String> {
    line.clear();
    let mut limited = r.take(MAX_LINE as u64 + 1);
    let n = limited.read_until(b'\n', line).await.ok()?;
    if n == 0 || line.len() > MAX_LINE {
        return None;
    }
    Some(
        String::from_utf8_lossy(line)
            .trim_end_matches(['\r', '\n'])
            .to_string(),
    )
}

use tokio::io::AsyncReadExt;

/// Serves one connection on any stream (a TCP connection, or one that came through the
/// router's WireGuard tunnel).
pub async fn connection<S>(stream: S, peer: SocketAddr, router: Router, cut: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (rd, mut wr) = tokio::io::split(stream);
    let mut rd = BufReader::new(rd);
    let banner = format!(
        "POSTERN-SIM WINBOX STAND-IN (not the WinBox protocol) {}\n",
        router.identity()
    );
    if wr.write_all(banner.as_bytes()).await.is_err() {
        return;
    }
    let mut line = Vec::new();
    let mut failures = 0;
    let session = loop {
        let l = tokio::select! {
            _ = cut.cancelled() => return,
            l = read_line(&mut rd, &mut line) => l,
        };
        let Some(l) = l else { return };
        let mut parts = l.splitn(3, ' ');
        let (cmd, user, password) = (parts.next(), parts.next(), parts.next());
        if cmd == Some("quit") {
            let _ = wr.write_all(b"bye\n").await;
            return;
        }
        let result = match (cmd, user, password) {
            (Some("login"), Some(user), Some(password)) => router
                .login(
                    user,
                    Credential::Password(password.as_bytes()),
                    peer.ip(),
                    Via::Winbox,
                    cut.child_token(),
                )
                .ok(),
            _ => None,
        };
        match result {
            Some(s) => {
                let ok = format!("ok {}\n", router.identity());
                if wr.write_all(ok.as_bytes()).await.is_err() {
                    return;
                }
                break s;
            }
            None => {
                failures += 1;
                if wr.write_all(b"denied\n").await.is_err() || failures >= 3 {
                    return;
                }
            }
        }
    };
    loop {
        let l = tokio::select! {
            _ = session.token.cancelled() => return,
            l = read_line(&mut rd, &mut line) => l,
        };
        let Some(l) = l else { return };
        let answer = match l.trim() {
            "quit" => {
                let _ = wr.write_all(b"bye\n").await;
                return;
            }
            "whoami" => format!("{}\n", session.user),
            other => format!("echo: {other}\n"),
        };
        if wr.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}
