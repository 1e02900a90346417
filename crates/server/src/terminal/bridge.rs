//! One terminal session: waits for the transient access to be active on the router,
//! connects to the router's SSH port with its login, asks for a pty of the browser's
//! size and a shell, then pumps keystrokes one way and output the other (recording the
//! output and resizes), until the browser closes, the shell exits, the grant ends, the
//! recording is full, the portal session that opened it ends or the server stops. Then
//! it closes both sides, stores the end of the recording and revokes the access through
//! the API's revoke path.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use domain::{AccessId, GrantStatus};
use russh::ChannelMsg;
use russh::client::{self, Handle, Msg};
use serde_json::json;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::asciicast::{CAP_NOTICE, Recorder};
use super::{RECORDING_CAP, SESSION_CHECK, protocol};
use crate::auth::Caller;
use crate::routes::common::{self, Grant};
use crate::state::AppState;

/// How long the bridge waits for the router to have the login.
const ACTIVE_WAIT: Duration = Duration::from_secs(20);
/// TCP connect plus SSH handshake and login.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A recording chunk goes to the store this often, or sooner when this big.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
const FLUSH_SIZE: usize = 32 * 1024;
/// The browser is pinged this often (which also keeps the server's idle timer away).
const PING_EVERY: Duration = Duration::from_secs(20);

/// WebSocket close codes: normal, and policy violation (a refused message).
const CLOSE_NORMAL: u16 = 1000;
const CLOSE_POLICY: u16 = 1008;

/// What the WebSocket handler checked before the upgrade: who (and the portal session,
/// by hash, whose end ends the terminal), which router, which grant (its terminal
/// session claimed), and the browser's terminal size.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub caller: Caller,
    pub session: String,
    pub router: store::Router,
    pub access_id: AccessId,
    pub cols: u16,
    pub rows: u16,
}

/// How a session ended: words for people, and the WebSocket close code.
struct Ending {
    reason: String,
    code: u16,
}

impl Ending {
    fn normal(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            code: CLOSE_NORMAL,
        }
    }
}

/// The SSH client's callbacks: the router's host key is accepted (see the module
/// documentation of `terminal`) and its fingerprint kept for the audit log.
struct Client {
    fingerprint: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let text = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.fingerprint(russh::keys::HashAlg::Sha256).to_string()
            }
            russh::keys::PublicKeyOrCertificate::Certificate(_) => "a certificate".to_owned(),
        };
        if let Ok(mut f) = self.fingerprint.lock() {
            *f = Some(text);
        }
        Ok(true)
    }
}

/// Runs one session to its end. `_slot` is this session's place under the process's cap.
pub async fn run(state: AppState, ticket: Ticket, mut socket: WebSocket, _slot: super::Slot) {
    let started = Instant::now();
    let title = format!(
        "{} ({}) by {}",
        ticket.router.name, ticket.router.tunnel_address, ticket.caller.actor
    );
    let mut recorder = Recorder::new(ticket.cols, ticket.rows, state.now(), &title, RECORDING_CAP);
    let fingerprint = Arc::new(Mutex::new(None));
    let ending = match connect(&state, &ticket, &mut socket, fingerprint.clone()).await {
        Ok((ssh, mut channel)) => {
            let ending = pump(
                &state,
                &ticket,
                &mut socket,
                &mut channel,
                &mut recorder,
                started,
            )
            .await;
            let _ = channel.close().await;
            let _ = ssh
                .disconnect(russh::Disconnect::ByApplication, "terminal closed", "en")
                .await;
            ending
        }
        Err(ending) => ending,
    };
    recorder.finish(started.elapsed());
    let _ = flush(&state, ticket.access_id, &mut recorder).await;
    let _ = socket
        .send(Message::Text(protocol::end(&ending.reason).into()))
        .await;
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: ending.code,
            reason: "".into(),
        })))
        .await;
    drop(socket);
    finish(&state, &ticket, &ending, fingerprint).await;
}

/// Ends a session whose WebSocket never opened: recorded as such, the access revoked.
pub async fn abandoned(state: AppState, ticket: Ticket) {
    let ending = Ending::normal("the browser never connected");
    finish(&state, &ticket, &ending, Arc::new(Mutex::new(None))).await;
}

/// Ends a session that no browser opened within `within` of the button being pressed
/// (the page was closed, the script did not load), or sooner when the portal session
/// that pressed it logs out: claimed here, so a late browser is refused rather than
/// racing, recorded as never connected, the access revoked.
pub async fn revoke_unopened(state: AppState, ticket: Ticket, within: Duration) {
    let mut logouts = state.terminals.logouts();
    let deadline = tokio::time::sleep(within);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => break,
            logout = logouts.recv() => match logout {
                Ok(hash) if hash == ticket.session => break,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => {
                    deadline.as_mut().await;
                    break;
                }
            },
        }
    }
    let now = state.now();
    match state
        .store
        .start_terminal_session(ticket.access_id, now, ticket.cols, ticket.rows)
        .await
    {
        Ok(true) => abandoned(state, ticket).await,
        Ok(false) => {}
        Err(e) => {
            tracing::error!(access_id = %ticket.access_id, error = %e, "cannot check an unopened terminal")
        }
    }
}

/// Waits for the grant to be active, then logs in to the router and opens a shell.
async fn connect(
    state: &AppState,
    ticket: &Ticket,
    socket: &mut WebSocket,
    fingerprint: Arc<Mutex<Option<String>>>,
) -> Result<(Handle<Client>, russh::Channel<Msg>), Ending> {
    let store = &state.store;
    let (org, router) = (ticket.caller.org_id, &ticket.router);
    let deadline = Instant::now() + ACTIVE_WAIT;
    let mut said = false;
    let grant = loop {
        let grant = store
            .get_access(org, router.id, ticket.access_id)
            .await
            .map_err(|e| Ending::normal(format!("cannot read the access: {e}")))?;
        match grant.status {
            GrantStatus::Active => break grant,
            GrantStatus::Requested | GrantStatus::Provisioning if Instant::now() < deadline => {
                if !said {
                    said = true;
                    let note = protocol::status("waiting for the router to create the login");
                    let _ = socket.send(Message::Text(note.into())).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            GrantStatus::Requested | GrantStatus::Provisioning => {
                return Err(Ending::normal(
                    "the router did not create the login in time",
                ));
            }
            GrantStatus::Failed => {
                return Err(Ending::normal(format!(
                    "the router refused the access: {}",
                    grant.failure_reason.as_deref().unwrap_or("no reason given")
                )));
            }
            _ => return Err(Ending::normal("the access has ended")),
        }
    };
    let password = store
        .access_password(grant.id)
        .await
        .map_err(|e| Ending::normal(format!("cannot read the login: {e}")))?;
    let address = SocketAddr::new(router.tunnel_address, router.ssh_port);
    let note = protocol::status(&format!("connecting to {} ({address})", router.name));
    let _ = socket.send(Message::Text(note.into())).await;
    let config = Arc::new(client::Config {
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(30)),
        keepalive_max: 3,
        nodelay: true,
        ..client::Config::default()
    });
    let login = async {
        // The one way to the router: TCP when reached directly, its tunnel otherwise.
        let stream = match &state.gateway {
            Some(plane) => {
                crate::tunnels::TunnelGateway::dial(plane.tunnels(), router, router.ssh_port).await
            }
            None => orchestrator::dial_direct(router, router.ssh_port).await,
        }
        .map_err(|e| format!("cannot reach the router's SSH at {address}: {e}"))?;
        let mut ssh = client::connect_stream(config, stream, Client { fingerprint })
            .await
            .map_err(|e| format!("cannot reach the router's SSH at {address}: {e}"))?;
        let auth = ssh
            .authenticate_password(grant.username.clone(), password.expose())
            .await
            .map_err(|e| format!("SSH login failed: {e}"))?;
        if !auth.success() {
            return Err("the router refused the temporary login".to_owned());
        }
        let channel = ssh
            .channel_open_session()
            .await
            .map_err(|e| format!("the router refused a session: {e}"))?;
        channel
            .request_pty(
                false,
                "xterm-256color",
                u32::from(ticket.cols),
                u32::from(ticket.rows),
                0,
                0,
                &[],
            )
            .await
            .map_err(|e| format!("the router refused a terminal: {e}"))?;
        channel
            .request_shell(false)
            .await
            .map_err(|e| format!("the router refused a shell: {e}"))?;
        Ok::<_, String>((ssh, channel))
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, login).await {
        Ok(Ok(pair)) => Ok(pair),
        Ok(Err(reason)) => Err(Ending::normal(reason)),
        Err(_) => Err(Ending::normal(format!(
            "the router's SSH at {address} did not answer in time"
        ))),
    }
}

/// Forwards both ways until one side ends; records output and resizes.
async fn pump(
    state: &AppState,
    ticket: &Ticket,
    socket: &mut WebSocket,
    channel: &mut russh::Channel<Msg>,
    recorder: &mut Recorder,
    started: Instant,
) -> Ending {
    let mut stopping = state.terminals.stopping();
    let mut logouts = state.terminals.logouts();
    let mut logouts_open = true;
    // The first tick is at once: the session may have ended while the router connected.
    let mut session_tick = tokio::time::interval(SESSION_CHECK);
    // Whether the browser sent anything since the last check (the session is in use).
    let mut used = false;
    // Failed checks in a row.
    let mut unchecked = 0u8;
    let mut flush_tick = tokio::time::interval(FLUSH_EVERY);
    let mut ping_tick = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    loop {
        tokio::select! {
            msg = socket.recv() => match msg {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => {
                    return Ending::normal("closed in the browser");
                }
                Some(Ok(Message::Binary(bytes))) => {
                    used = true;
                    if bytes.len() > protocol::MAX_MESSAGE {
                        return refused("input larger than 64 KiB");
                    }
                    if channel.data_bytes(bytes).await.is_err() {
                        return Ending::normal("the connection to the router ended");
                    }
                }
                Some(Ok(Message::Text(text))) => match protocol::control(text.as_str()) {
                    Ok(protocol::Control::Resize { cols, rows }) => {
                        used = true;
                        let _ = channel
                            .window_change(u32::from(cols), u32::from(rows), 0, 0)
                            .await;
                        if recorder.resize(started.elapsed(), cols, rows).is_err() {
                            return full(socket).await;
                        }
                    }
                    Err(e) => return refused(&e.to_string()),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            },
            msg = channel.wait() => match msg {
                Some(ChannelMsg::Data { data }) | Some(ChannelMsg::ExtendedData { data, .. }) => {
                    if recorder.output(started.elapsed(), &data).is_err() {
                        return full(socket).await;
                    }
                    if socket.send(Message::Binary(data)).await.is_err() {
                        return Ending::normal("closed in the browser");
                    }
                    if recorder.pending_len() >= FLUSH_SIZE
                        && flush(state, ticket.access_id, recorder).await.is_err()
                    {
                        return unrecorded();
                    }
                }
                Some(ChannelMsg::ExitStatus { .. } | ChannelMsg::ExitSignal { .. }) => {}
                Some(ChannelMsg::Eof | ChannelMsg::Close) | None => {
                    return Ending::normal("the router ended the session");
                }
                Some(_) => {}
            },
            _ = flush_tick.tick() => {
                if flush(state, ticket.access_id, recorder).await.is_err() {
                    return unrecorded();
                }
            }
            _ = ping_tick.tick() => {
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return Ending::normal("closed in the browser");
                }
            }
            _ = session_tick.tick() => {
                match crate::portal::session::live(state, &ticket.session, used).await {
                    Ok(Some(_)) => (used, unchecked) = (false, 0),
                    Ok(None) => return Ending::normal("the portal session ended"),
                    // One failure may pass (a busy database); the next ends the terminal.
                    Err(e) => {
                        tracing::error!(access_id = %ticket.access_id, error = %e, "cannot check a terminal's portal session");
                        unchecked += 1;
                        if unchecked >= 2 {
                            return Ending::normal("the portal session could not be checked");
                        }
                    }
                }
            }
            logout = logouts.recv(), if logouts_open => match logout {
                Ok(hash) if hash == ticket.session => {
                    return Ending::normal("signed out of the portal");
                }
                Ok(_) => {}
                // Missed logouts: the store says whether this one was among them.
                Err(broadcast::error::RecvError::Lagged(_)) => session_tick.reset_immediately(),
                Err(broadcast::error::RecvError::Closed) => logouts_open = false,
            },
            changed = stopping.changed() => {
                let stop = changed.is_err() || *stopping.borrow();
                if stop {
                    return Ending::normal("the server is shutting down");
                }
            }
        }
    }
}

/// Ends a session on a message the bridge refuses.
fn refused(why: &str) -> Ending {
    Ending {
        reason: format!("refused a message from the browser: {why}"),
        code: CLOSE_POLICY,
    }
}

/// Ends a session whose recording is full, telling the browser.
async fn full(socket: &mut WebSocket) -> Ending {
    let _ = socket
        .send(Message::Binary(CAP_NOTICE.as_bytes().to_vec().into()))
        .await;
    Ending::normal("the recording reached its size limit")
}

/// Writes what the recorder holds to the store. A failure is logged and ends the
/// session: a terminal is not left running unrecorded.
async fn flush(state: &AppState, access_id: AccessId, recorder: &mut Recorder) -> Result<(), ()> {
    let Some((seq, text)) = recorder.take_chunk() else {
        return Ok(());
    };
    state
        .store
        .append_terminal_chunk(access_id, seq, &text)
        .await
        .map_err(|e| {
            tracing::error!(%access_id, seq, error = %e, "cannot store a terminal recording chunk");
        })
}

fn unrecorded() -> Ending {
    Ending::normal("the recording could not be stored")
}

/// After both sides are closed: the session's end in the store, the access revoked if
/// it is still live (the API's revoke path: audited, gateway first, router clean-up),
/// and an audit entry for the session.
async fn finish(
    state: &AppState,
    ticket: &Ticket,
    ending: &Ending,
    fingerprint: Arc<Mutex<Option<String>>>,
) {
    let (caller, router, id) = (&ticket.caller, &ticket.router, ticket.access_id);
    let now = state.now();
    if let Err(e) = state
        .store
        .end_terminal_session(id, now, &ending.reason)
        .await
    {
        tracing::error!(access_id = %id, error = %e, "cannot store a terminal session's end");
    }
    let live = state
        .store
        .get_access(caller.org_id, router.id, id)
        .await
        .is_ok_and(|g| g.status.is_live());
    if live && let Err(e) = common::revoke(state, caller, Grant::Access(id), router.id, now).await {
        tracing::error!(access_id = %id, error = ?e, "cannot revoke a terminal's access");
    }
    let host_key = fingerprint.lock().ok().and_then(|f| f.clone());
    let entry = common::audit(
        caller,
        now,
        "terminal.end",
        Some(Grant::Access(id).target()),
        json!({
            "router_id": router.id.to_string(),
            "reason": ending.reason,
            "host_key": host_key,
        }),
    );
    if let Err(e) = state.store.append_audit(entry).await {
        tracing::error!(access_id = %id, error = %e, "cannot audit a terminal's end");
    }
}
