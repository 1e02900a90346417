//! SSH (russh): password authentication against the router's users (with their
//! `address=` list and the `ssh` policy), and a small RouterOS-like console.
//!
//! The console prompt is `[user@identity] > `. It knows the commands of [`console`]:
//! `/system identity print`, `/user print`, `/ip firewall nat print`,
//! `/system resource print`, writes such as `/user add name=x group=read password=y`
//! (refused without the `write` policy), and `/quit`. Paths take spaces or slashes. An
//! exec request (`ssh router '/system identity print'`) runs one command and exits.
//! The server identifies as `SSH-2.0-ROSSSH`, as RouterOS does.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::{Auth, Msg, Session as SshSession};
use russh::{Channel, ChannelId, MethodKind, MethodSet, Pty, SshId};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::router::{Caller, Credential, Router, Session, Via};

pub mod console;

/// A new random ed25519 host key.
pub fn generate_host_key() -> PrivateKey {
    use rand::RngCore;
    let mut seed = [0u8; 32];
    rand::rng().fill_bytes(&mut seed);
    let pair = russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed);
    PrivateKey::from(pair)
}

/// The SHA-256 fingerprint of a host key, as OpenSSH prints it (`SHA256:…`).
pub fn fingerprint(key: &PrivateKey) -> String {
    key.public_key()
        .fingerprint(russh::keys::HashAlg::Sha256)
        .to_string()
}

/// The SSH server's configuration for a host key.
pub fn config(host_key: PrivateKey) -> Arc<russh::server::Config> {
    Arc::new(russh::server::Config {
        server_id: SshId::Standard(Cow::Borrowed("SSH-2.0-ROSSSH")),
        methods: MethodSet::from(&[MethodKind::Password][..]),
        auth_rejection_time: Duration::from_millis(200),
        auth_rejection_time_initial: Some(Duration::ZERO),
        keys: vec![host_key],
        inactivity_timeout: Some(Duration::from_secs(600)),
        max_auth_attempts: 6,
        nodelay: true,
        ..Default::default()
    })
}

/// Serves SSH on `listener` until `shutdown`.
pub async fn run(
    listener: TcpListener,
    router: Router,
    host_key: PrivateKey,
    shutdown: impl std::future::Future<Output = ()>,
) {
    run_with_config(listener, router, config(host_key), shutdown).await;
}

/// Serves SSH on `listener` with a server configuration made by [`config`].
pub async fn run_with_config(
    listener: TcpListener,
    router: Router,
    config: Arc<russh::server::Config>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let r = router.clone();
    crate::server::serve(listener, router, shutdown, move |stream, peer, cut| {
        connection(stream, peer, r.clone(), config.clone(), cut)
    })
    .await;
}

/// Serves one SSH connection on any stream (a TCP connection, or one that came through
/// the router's WireGuard tunnel) until the client leaves or `cut` ends it.
pub async fn connection<S>(
    stream: S,
    peer: SocketAddr,
    router: Router,
    config: Arc<russh::server::Config>,
    cut: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let token = cut.child_token();
    let handler = Handler {
        router,
        peer,
        token: token.clone(),
        session: None,
        channels: HashMap::new(),
    };
    let running = match russh::server::run_stream(config, stream, handler).await {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "ssh handshake failed");
            return;
        }
    };
    let handle = running.handle();
    tokio::pin!(running);
    tokio::select! {
        r = &mut running => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "ssh session ended with an error");
            }
        }
        _ = token.cancelled() => {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "logged out".into(), "en".into())
                .await;
            // Give the session a moment to send the disconnect, then drop it
            // (and with it the connection).
            let _ = tokio::time::timeout(Duration::from_millis(500), &mut running).await;
        }
    }
}

#[derive(Default)]
struct ChannelState {
    line: Vec<u8>,
    pty: bool,
    shell: bool,
    /// The console's directory (`/ip firewall filter` after such a path line).
    cwd: Vec<String>,
    /// Lines of a paste whose brackets or quotes are still open.
    pending: String,
}

/// The longest line (or open multi-line paste) the console keeps.
const MAX_LINE: usize = 64 * 1024;

struct Handler {
    router: Router,
    peer: SocketAddr,
    token: CancellationToken,
    session: Option<Session>,
    channels: HashMap<ChannelId, ChannelState>,
}

impl Handler {
    fn caller(&self) -> Caller {
        self.session
            .as_ref()
            .map(|s| s.caller())
            .unwrap_or_else(|| Caller {
                user: String::new(),
                policies: Default::default(),
            })
    }

    fn prompt(&self, channel: ChannelId) -> String {
        let cwd = self
            .channels
            .get(&channel)
            .map(|c| c.cwd.as_slice())
            .unwrap_or_default();
        console::prompt(&self.caller().user, &self.router.identity(), cwd)
    }

    /// Runs console input on a channel, in its directory.
    async fn run_console(&mut self, channel: ChannelId, text: &str) -> console::ConsoleOutput {
        let mut cwd = self
            .channels
            .get_mut(&channel)
            .map(|c| std::mem::take(&mut c.cwd))
            .unwrap_or_default();
        let out = console::run_line(&self.router, &self.caller(), text, &mut cwd).await;
        if let Some(c) = self.channels.get_mut(&channel) {
            c.cwd = cwd;
        }
        out
    }

    fn end_channel(session: &mut SshSession, channel: ChannelId) -> Result<(), russh::Error> {
        session.exit_status_request(channel, 0)?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }
}

/// Turns `\n` into `\r\n` for a terminal.
fn crlf(s: &str) -> String {
    s.replace("\r\n", "\n").replace('\n', "\r\n")
}

impl russh::server::Handler for Handler {
    type Error = russh::Error;

    async fn auth_password(&mut self, user: &str, password: &str) -> Result<Auth, Self::Error> {
        let result = self.router.login(
            user,
            Credential::Password(password.as_bytes()),
            self.peer.ip(),
            Via::Ssh,
            self.token.clone(),
        );
        match result {
            Ok(s) => {
                self.session = Some(s);
                Ok(Auth::Accept)
            }
            Err(e) => {
                tracing::info!(user, peer = %self.peer, reason = ?e, "ssh login failed");
                Ok(Auth::Reject {
                    proceed_with_methods: None,
                    partial_success: false,
                })
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: russh::server::ChannelOpenHandle,
        _session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), ChannelState::default());
        reply.accept().await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        _term: &str,
        _col_width: u32,
        _row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(Pty, u32)],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.channels.entry(channel).or_default().pty = true;
        session.channel_success(channel)?;
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        self.channels.entry(channel).or_default().shell = true;
        session.channel_success(channel)?;
        let banner = format!(
            "\r\n  MikroTik RouterOS {} (c) 1999-2025       https://www.mikrotik.com/\r\n  (postern-sim: a virtual router for tests)\r\n\r\n{}",
            self.router.version(),
            self.prompt(channel)
        );
        session.data(channel, banner.into_bytes())?;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        session.channel_success(channel)?;
        let line = String::from_utf8_lossy(data).into_owned();
        let out = self.run_console(channel, &line).await;
        let mut text = out.output;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        let pty = self.channels.get(&channel).is_some_and(|c| c.pty);
        let text = if pty { crlf(&text) } else { text };
        if !text.is_empty() {
            session.data(channel, text.into_bytes())?;
        }
        session.exit_status_request(channel, if out.failed { 1 } else { 0 })?;
        session.eof(channel)?;
        session.close(channel)?;
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut SshSession,
    ) -> Result<(), Self::Error> {
        let mut echo = Vec::new();
        let mut lines = Vec::new();
        let mut quit = false;
        {
            let state = self.channels.entry(channel).or_default();
            for &b in data {
                match b {
                    b'\r' | b'\n' => {
                        if b == b'\n' && state.pty {
                            continue;
                        }
                        lines.push(String::from_utf8_lossy(&state.line).into_owned());
                        state.line.clear();
                        if state.pty {
                            echo.extend_from_slice(b"\r\n");
                        }
                    }
                    0x7f | 0x08 if state.pty && state.line.pop().is_some() => {
                        echo.extend_from_slice(b"\x08 \x08");
                    }
                    0x7f | 0x08 => {
                        state.line.pop();
                    }
                    0x03 => {
                        // Ctrl-C drops the line and any unfinished paste.
                        state.line.clear();
                        state.pending.clear();
                        if state.pty {
                            echo.extend_from_slice(b"\r\n");
                        }
                    }
                    0x04 if state.line.is_empty() => quit = true,
                    b if (b >= 0x20 || b == b'\t') && state.line.len() < MAX_LINE => {
                        state.line.push(b);
                        if state.pty {
                            echo.push(b);
                        }
                    }
                    _ => {}
                }
            }
        }
        if !echo.is_empty() {
            session.data(channel, echo)?;
        }
        let pty = self.channels.get(&channel).is_some_and(|c| c.pty);
        for line in lines {
            // A paste with open brackets or quotes goes on over the next lines.
            let text = {
                let state = self.channels.entry(channel).or_default();
                if !state.pending.is_empty() {
                    state.pending.push('\n');
                }
                state.pending.push_str(&line);
                if console::is_open(&state.pending) && state.pending.len() < MAX_LINE {
                    continue;
                }
                std::mem::take(&mut state.pending)
            };
            let out = self.run_console(channel, &text).await;
            let mut text = out.output;
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            if out.quit {
                if !text.is_empty() {
                    session.data(channel, crlf(&text).into_bytes())?;
                }
                return Self::end_channel(session, channel);
            }
            text.push_str(&self.prompt(channel));
            let text = if pty { crlf(&text) } else { text };
            session.data(channel, text.into_bytes())?;
        }
        if quit {
            return Self::end_channel(session, channel);
        }
        Ok(())
    }
}
