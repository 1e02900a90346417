//! One virtual router: its configuration, its [`State`] behind a lock, its clock, its
//! faults, and the sessions of users logged in through any service.
//!
//! [`Router`] is a cheap handle (an `Arc`); every service of the router holds one. Login
//! ([`Router::login`]) is the one place that checks a user's password, `disabled`,
//! `address=` list and the group policy of the service, for every service alike, and
//! registers the session in `/user/active`; dropping the [`Session`] removes it.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use md5::{Digest, Md5};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::addr::AddressList;
use crate::clock::{self, Clock};
use crate::faults::Faults;
use crate::nat::Forwarder;
use crate::state::{Item, Policies, State, TableKind};

/// What a new router looks like.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub identity: String,
    /// The address the router's services and dst-nat rules listen on.
    pub address: IpAddr,
    /// The RouterOS version it claims, such as `7.18.2`.
    pub version: String,
    pub board_name: String,
    pub admin_password: String,
    pub clock: Clock,
    /// Whether a `print` with no items sends `!empty` (before its `!done`). `None`:
    /// as the version does (7.18 and later).
    pub empty_reply: Option<bool>,
    /// Behind NAT: no TCP listener on `address` at all (services and dst-nat alike); the
    /// router is reachable only through the WireGuard tunnel it builds.
    pub behind_nat: bool,
    /// `/system/routerboard`'s `serial-number`; `None` (the default) for a CHR-like
    /// router, which has no `/system/routerboard` at all.
    pub serial_number: Option<String>,
    /// The certificates `/tool/fetch` trusts with `check-certificate=yes` (PEM); `None`:
    /// none, so only `check-certificate=no` fetches over https.
    pub trust_pem: Option<std::path::PathBuf>,
}

impl RouterConfig {
    pub fn new(identity: &str, address: IpAddr, admin_password: &str) -> Self {
        Self {
            identity: identity.to_string(),
            address,
            version: "7.18.2".into(),
            board_name: "CHR".into(),
            admin_password: admin_password.to_string(),
            clock: Clock::real(),
            empty_reply: None,
            behind_nat: false,
            serial_number: None,
            trust_pem: None,
        }
    }
}

/// `major.minor` of a version string such as `7.18.2`.
pub fn version_major_minor(version: &str) -> (u32, u32) {
    let mut it = version.split(['.', ' ']);
    let major = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let minor = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (major, minor)
}

/// `major.minor.patch` of a version string such as `6.49.10 (long-term)`.
pub fn version_triple(version: &str) -> (u32, u32, u32) {
    let mut it = version.split(['.', ' ']);
    let mut next = || it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (next(), next(), next())
}

/// The service a session came through, as `/user/active` prints it in `via`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Api,
    Ssh,
    Winbox,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::Api => "api",
            Via::Ssh => "ssh",
            Via::Winbox => "winbox",
        }
    }

    /// The group policy a user needs to log in through this service.
    pub fn policy(self) -> &'static str {
        self.name()
    }
}

/// A password, or the answer to the API's MD5 challenge.
#[derive(Debug, Clone, Copy)]
pub enum Credential<'a> {
    Password(&'a [u8]),
    /// `response` is `00` and the hex MD5 of a zero byte, the password and the
    /// challenge's bytes.
    Challenge {
        challenge: &'a [u8],
        response: &'a [u8],
    },
}

/// Every failed login looks the same from outside (RouterOS's
/// `invalid user name or password (6)`); the reason is kept for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error("invalid user name or password (6)")]
    BadCredentials,
    #[error("invalid user name or password (6)")]
    Disabled,
    #[error("invalid user name or password (6)")]
    AddressNotAllowed,
    #[error("invalid user name or password (6)")]
    PolicyMissing,
}

/// Who runs a command: a logged-in user's name and policies, or the router itself (a
/// scheduler script, a test).
#[derive(Debug, Clone)]
pub struct Caller {
    pub user: String,
    pub policies: Policies,
}

impl Caller {
    pub fn system() -> Caller {
        Caller {
            user: "*sys".into(),
            policies: Policies::ALL,
        }
    }
}

pub(crate) struct Inner {
    pub config: RouterConfig,
    pub started: u64,
    pub state: Mutex<State>,
    pub faults: Faults,
    pub active_changed: watch::Sender<u64>,
    pub wireguard_changed: watch::Sender<u64>,
    pub scheduler_wake: Notify,
    pub nat: Mutex<Forwarder>,
    /// The router's WireGuard tunnel ([`crate::wg`]).
    pub wg: Mutex<crate::wg::Slot>,
    /// Cancelled when the router shuts down: ends dst-nat listeners and the scheduler.
    pub shutdown: CancellationToken,
    /// Every command the API received, once a test asked to keep them.
    pub received: Mutex<Option<Vec<crate::menu::Request>>>,
}

/// A handle on one router; clones share it.
#[derive(Clone)]
pub struct Router {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("identity", &self.identity())
            .field("address", &self.inner.config.address)
            .finish()
    }
}

impl Router {
    pub fn new(config: RouterConfig) -> Router {
        let state = State::new(&config.identity, &config.admin_password);
        Router {
            inner: Arc::new(Inner {
                started: config.clock.unix(),
                state: Mutex::new(state),
                faults: Faults::default(),
                active_changed: watch::channel(0).0,
                wireguard_changed: watch::channel(0).0,
                scheduler_wake: Notify::new(),
                nat: Mutex::new(Forwarder::default()),
                wg: Mutex::new(crate::wg::Slot::default()),
                shutdown: CancellationToken::new(),
                received: Mutex::new(None),
                config,
            }),
        }
    }

    pub fn config(&self) -> &RouterConfig {
        &self.inner.config
    }

    pub fn address(&self) -> IpAddr {
        self.inner.config.address
    }

    pub fn clock(&self) -> &Clock {
        &self.inner.config.clock
    }

    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    pub fn version(&self) -> &str {
        &self.inner.config.version
    }

    /// Whether this router answers a `print` with no items with `!empty`.
    pub fn sends_empty(&self) -> bool {
        self.inner.config.empty_reply.unwrap_or_else(|| {
            let (major, minor) = version_major_minor(&self.inner.config.version);
            (major, minor) >= (7, 18)
        })
    }

    /// RouterOS 7 and later answer a command before login with a `!trap`; RouterOS 6
    /// with `!fatal` and a closed connection.
    pub fn is_v7(&self) -> bool {
        version_major_minor(&self.inner.config.version).0 >= 7
    }

    /// The router's version as `(major, minor, patch)`.
    pub fn version_triple(&self) -> (u32, u32, u32) {
        version_triple(&self.inner.config.version)
    }

    /// Starts keeping every command the API service receives (see [`Router::received`]).
    pub fn record_commands(&self) {
        let mut r = self
            .inner
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        r.get_or_insert_with(Vec::new);
    }

    /// The commands the API service received since [`Router::record_commands`], in
    /// order, as sent (path, attributes, queries; `.tag` aside).
    pub fn received(&self) -> Vec<crate::menu::Request> {
        self.inner
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default()
    }

    pub(crate) fn record(&self, req: &crate::menu::Request) {
        let mut r = self
            .inner
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(list) = r.as_mut() {
            list.push(req.clone());
        }
    }

    /// Whether the router's version is older than `major.minor`.
    pub fn version_before(&self, major: u32, minor: u32) -> bool {
        version_major_minor(&self.inner.config.version) < (major, minor)
    }

    /// A snapshot of a menu's items.
    pub fn items(&self, kind: TableKind) -> Vec<Item> {
        self.state().table(kind).items.clone()
    }

    /// Runs a command in-process, as `caller` (for test set-up and inspection):
    /// `router.run(&Caller::system(), &Request::new("/user/add").attr("name", "x"))`.
    pub fn run(
        &self,
        caller: &Caller,
        request: &crate::menu::Request,
    ) -> Result<crate::menu::Outcome, crate::menu::Trap> {
        crate::menu::execute(self, caller, request)
    }

    /// Sets device-mode, as the owner would with a button press at the device.
    pub fn set_device_mode(&self, mode: crate::state::DeviceMode) {
        self.state().device_mode = mode;
    }

    pub fn uptime_secs(&self) -> u64 {
        self.clock().unix().saturating_sub(self.inner.started)
    }

    /// The router's state, locked. Hold it briefly and never across an `.await`.
    pub fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn identity(&self) -> String {
        self.state().identity.clone()
    }

    /// A token cancelled when the router shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.inner.shutdown.clone()
    }

    /// A receiver that changes whenever `/user/active` does.
    pub fn subscribe_active(&self) -> watch::Receiver<u64> {
        self.inner.active_changed.subscribe()
    }

    /// The WireGuard interfaces, their peers and addresses, in a plain form (see
    /// [`State::wireguard`]).
    pub fn wireguard(&self) -> Vec<crate::state::WgInterface> {
        self.state().wireguard()
    }

    /// A receiver that changes whenever a WireGuard interface, a peer or an IP address
    /// is added, changed or removed: read [`Router::wireguard`] again then.
    pub fn subscribe_wireguard(&self) -> watch::Receiver<u64> {
        self.inner.wireguard_changed.subscribe()
    }

    pub(crate) fn wireguard_changed(&self) {
        self.inner
            .wireguard_changed
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Records what the tunnel saw of peer `id` (its `.id` in
    /// `/interface/wireguard/peers`), shown by `print`. Does not notify
    /// [`Router::subscribe_wireguard`]. Returns whether the peer exists.
    pub fn set_peer_status(&self, id: u32, status: &crate::state::PeerStatus) -> bool {
        let mut state = self.state();
        let Some(peer) = state.wireguard_peers.get_mut(id) else {
            return false;
        };
        match status.current_endpoint {
            Some(e) => {
                peer.set("current-endpoint-address", e.ip().to_string());
                peer.set("current-endpoint-port", e.port().to_string());
            }
            None => {
                peer.props.remove("current-endpoint-address");
                peer.props.remove("current-endpoint-port");
            }
        }
        match status.last_handshake {
            Some(d) => peer.set("last-handshake", clock::format_interval(d)),
            None => {
                peer.props.remove("last-handshake");
            }
        }
        peer.set("rx", status.rx.to_string());
        peer.set("tx", status.tx.to_string());
        true
    }

    pub(crate) fn active_changed(&self) {
        self.inner
            .active_changed
            .send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(crate) fn wake_scheduler(&self) {
        self.inner.scheduler_wake.notify_one();
    }

    /// Checks a login for `via` from `from` and, if it passes, registers the session.
    ///
    /// `token` ends the session's connection; `/user/active remove` cancels it.
    pub fn login(
        &self,
        name: &str,
        credential: Credential<'_>,
        from: IpAddr,
        via: Via,
        token: CancellationToken,
    ) -> Result<Session, LoginError> {
        let now = self.clock().unix();
        let mut state = self.state();
        let user = state
            .users
            .by_name(name)
            .ok_or(LoginError::BadCredentials)?;
        let password = user.get("password").unwrap_or_default().as_bytes();
        let ok = match credential {
            Credential::Password(p) => constant_time_eq(p, password),
            Credential::Challenge {
                challenge,
                response,
            } => {
                let expected = challenge_response(password, challenge);
                constant_time_eq(response, expected.as_bytes())
            }
        };
        if !ok {
            return Err(LoginError::BadCredentials);
        }
        if user.is_disabled() {
            return Err(LoginError::Disabled);
        }
        let allowed = AddressList::parse(user.get("address").unwrap_or_default())
            .is_some_and(|l| l.allows(from));
        if !allowed {
            return Err(LoginError::AddressNotAllowed);
        }
        let user_id = user.id;
        let group = user.get("group").unwrap_or_default().to_string();
        let policies = state.group_policies(&group).unwrap_or_default();
        if !policies.has(via.policy()) {
            return Err(LoginError::PolicyMissing);
        }
        if let Some(u) = state.users.get_mut(user_id) {
            u.set("last-logged-in", clock::format_datetime(now));
        }
        let mut props = std::collections::BTreeMap::new();
        props.insert("when".into(), clock::format_datetime(now));
        props.insert("name".into(), name.to_string());
        props.insert("address".into(), from.to_string());
        props.insert("via".into(), via.name().to_string());
        props.insert("group".into(), group);
        props.insert("radius".into(), "false".into());
        let id = state.active.insert(props);
        state.session_tokens.insert(id, token.clone());
        drop(state);
        self.active_changed();
        tracing::debug!(user = name, %from, via = via.name(), "login");
        Ok(Session {
            router: self.clone(),
            id,
            user: name.to_string(),
            policies,
            token,
        })
    }

    /// Ends the session with `/user/active` id `id`, as `/user/active remove` does. Returns
    /// whether there was one.
    pub fn logout(&self, id: u32) -> bool {
        let token = {
            let mut state = self.state();
            let item = state.active.remove(id);
            let token = state.session_tokens.remove(&id);
            item.and(token)
        };
        match token {
            Some(t) => {
                t.cancel();
                self.active_changed();
                true
            }
            None => false,
        }
    }

    /// Whether the router sits behind NAT (no TCP listener on its address).
    pub fn behind_nat(&self) -> bool {
        self.inner.config.behind_nat
    }

    /// Stops the router's own tasks (dst-nat listeners and forwards, the scheduler, the
    /// WireGuard tunnel). Listeners for API, SSH and 8291 stop with their own shutdown
    /// futures.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        crate::wg::stop(self);
        self.inner
            .nat
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .stop_all();
    }
}

/// The MD5 login's expected response: `00` and hex MD5(0x00, password, challenge).
pub fn challenge_response(password: &[u8], challenge: &[u8]) -> String {
    let mut h = Md5::new();
    h.update([0u8]);
    h.update(password);
    h.update(challenge);
    format!("00{}", hex::encode(h.finalize()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A logged-in session: its `/user/active` entry lives as long as this value.
#[derive(Debug)]
pub struct Session {
    router: Router,
    pub id: u32,
    pub user: String,
    /// The group's policies at login (RouterOS keeps them for the session's life).
    pub policies: Policies,
    pub token: CancellationToken,
}

impl Session {
    pub fn caller(&self) -> Caller {
        Caller {
            user: self.user.clone(),
            policies: self.policies,
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let removed = {
            let mut state = self.router.state();
            state.session_tokens.remove(&self.id);
            state.active.remove(self.id).is_some()
        };
        if removed {
            self.router.active_changed();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_vector_from_the_issue() {
        // challenge `abc123` (hex), password `passTest`.
        let challenge = hex::decode("abc123").unwrap();
        assert_eq!(
            challenge_response(b"passTest", &challenge),
            "0021277bff9ac7caf06aa608e46616d47f"
        );
    }

    #[test]
    fn versions() {
        assert_eq!(version_major_minor("7.18.2"), (7, 18));
        assert_eq!(version_major_minor("6.49.10 (long-term)"), (6, 49));
        assert_eq!(version_major_minor("junk"), (0, 0));
    }
}
