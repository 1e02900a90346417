//! Authentication and the caller: API tokens (`Authorization: Bearer pst_…`, stored as
//! SHA-256 hex), argon2id password hashes for users, and the [`Caller`] extractor every
//! guarded handler takes. A later session cookie plugs into [`Caller`] beside the token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::{HeaderMap, header, request::Parts};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use domain::{OrgId, Role, TokenId, UserId};
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::listen::ClientAddr;
use crate::state::AppState;

/// Every token starts with this, so leaked ones are easy to scan for.
pub const TOKEN_PREFIX: &str = "pst_";
/// `last_used_at` is written at most this often per token.
const TOUCH_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(60);

/// A new random API token: `pst_` + 32 CSPRNG bytes in base64url (43 characters).
pub fn generate_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// What the store keeps of a token: its SHA-256, hex.
pub fn hash_token(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether text has the shape of one of our tokens (checked before any lookup).
fn well_formed(token: &str) -> bool {
    token.strip_prefix(TOKEN_PREFIX).is_some_and(|rest| {
        rest.len() == 43
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    })
}

/// An argon2id hash in PHC form.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("hashing a password: {e}")))
}

/// Whether `password` matches the PHC `hash`; a malformed hash never matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// Password hashing, bounded: argon2id takes 19 MiB and tens of milliseconds a hash, so
/// hashes run on `max` threads of their own and nowhere else; others wait in a queue of
/// at most [`Hashing::QUEUE`] for up to `wait`, and beyond either are refused
/// ([`ApiError::Busy`], 503) rather than piling up memory. Sign-ins and user creation
/// pass here.
///
/// Why threads of their own rather than tokio's blocking pool: the allocator keeps
/// freed memory per thread (glibc's arenas), so 19 MiB hashed once on each of dozens
/// of pool threads stays resident on each; a fixed few threads keep it to a fixed few
/// times 19 MiB (the flood test measured 650 MiB of peak growth on the pool, with four
/// hashes at once).
#[derive(Clone)]
pub struct Hashing {
    permits: Arc<tokio::sync::Semaphore>,
    jobs: std::sync::mpsc::SyncSender<Job>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    running: Arc<std::sync::atomic::AtomicUsize>,
    most_running: Arc<std::sync::atomic::AtomicUsize>,
    wait: std::time::Duration,
}

type Job = Box<dyn FnOnce() + Send>;

const BUSY: &str = "the server is busy checking passwords: try again in a few seconds";

impl Hashing {
    /// The longest queue of hashes waiting for a slot.
    pub const QUEUE: usize = 64;

    /// Starts `max` hashing threads; they end when the last clone is dropped.
    pub fn new(max: usize, wait: std::time::Duration) -> Self {
        let max = max.max(1);
        let (jobs, queue) = std::sync::mpsc::sync_channel::<Job>(max);
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..max {
            let queue = queue.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("postern-hash-{i}"))
                .spawn(move || {
                    loop {
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "starting a password hashing thread");
            }
        }
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
            jobs,
            waiting: Arc::default(),
            running: Arc::default(),
            most_running: Arc::default(),
            wait,
        }
    }

    /// The most hashes that ever ran at once in this process (for tests and metrics).
    pub fn most_running(&self) -> usize {
        self.most_running.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `work` on a hashing thread once a slot is free.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        use std::sync::atomic::Ordering::{Relaxed, SeqCst};
        if self.waiting.fetch_add(1, SeqCst) >= Self::QUEUE {
            self.waiting.fetch_sub(1, SeqCst);
            return Err(ApiError::Busy(BUSY));
        }
        let permit = tokio::time::timeout(self.wait, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, SeqCst);
        let Ok(Ok(permit)) = permit else {
            return Err(ApiError::Busy(BUSY));
        };
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.most_running.fetch_max(now, Relaxed);
        let running = self.running.clone();
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let out = work();
            running.fetch_sub(1, SeqCst);
            drop(permit);
            let _ = done.send(out);
        });
        // A permit means a thread is free (as many permits as threads), so this does not
        // block; a send fails only if the threads are gone.
        self.jobs
            .try_send(job)
            .map_err(|_| ApiError::Internal("password hashing threads are gone".into()))?;
        result
            .await
            .map_err(|_| ApiError::Internal("a password hashing job was lost".into()))
    }

    /// [`hash_password`], bounded.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move || hash_password(&password)).await?
    }

    /// [`verify_password`], bounded, in the hashing thread's own reused memory.
    pub async fn verify(&self, password: String, hash: String) -> Result<bool, ApiError> {
        self.run(move || MEMORY.with(|m| verify_in(&mut m.borrow_mut(), &password, &hash)))
            .await
    }
}

/// The most memory a stored hash's parameters may ask a verification for (64 MiB, in
/// 1 KiB blocks); a hash asking more never matches.
const MAX_VERIFY_BLOCKS: usize = 64 * 1024;

/// Verifies `password` against the PHC `hash` in `memory`, which is grown once to what
/// the hash's parameters need and then reused, so a hashing thread holds one buffer for
/// its life instead of allocating 19 MiB per attempt. A malformed hash never matches.
fn verify_in(memory: &mut Vec<argon2::Block>, password: &str, hash: &str) -> bool {
    let Ok(parsed) = argon2::PasswordHash::new(hash) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm.as_str()) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = argon2::Params::try_from(&parsed) else {
        return false;
    };
    let blocks = params.block_count();
    if blocks > MAX_VERIFY_BLOCKS {
        return false;
    }
    if memory.len() < blocks {
        memory.resize(blocks, argon2::Block::default());
    }
    let Some(memory) = memory.get_mut(..blocks) else {
        return false;
    };
    let mut out = vec![0u8; expected.as_bytes().len()];
    let computed = Argon2::new(algorithm, version, params).hash_password_into_with_memory(
        password.as_bytes(),
        salt,
        &mut out,
        memory,
    );
    // Compared in time that depends only on the length.
    computed.is_ok()
        && out.len() == expected.as_bytes().len()
        && out
            .iter()
            .zip(expected.as_bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

thread_local! {
    /// A hashing thread's argon2 memory (see [`verify_in`]).
    static MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A random string from a CSPRNG over letters and digits.
pub fn random_alnum(len: usize, lowercase_only: bool) -> String {
    const LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    const MIXED: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let set = if lowercase_only { LOWER } else { MIXED };
    let mut rng = rand::rng();
    (0..len)
        .map(|_| {
            let i = rand::Rng::random_range(&mut rng, 0..set.len());
            char::from(set.get(i).copied().unwrap_or(b'x'))
        })
        .collect()
}

/// Who is making a request, for which organisation, from where.
#[derive(Debug, Clone)]
pub struct Caller {
    pub org_id: OrgId,
    /// How the audit log names the caller: a user name or `token:<name>`.
    pub actor: String,
    pub role: Role,
    /// The client's address (the TCP peer, or `X-Forwarded-For` from a trusted proxy).
    pub address: IpAddr,
    pub user_id: Option<UserId>,
    pub token_id: Option<TokenId>,
}

impl Caller {
    /// Refuses a caller whose role may not change things.
    pub fn require_write(&self) -> Result<(), ApiError> {
        if self.role.can_write() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("this role may only read"))
        }
    }

    /// Whether the caller may read secrets: grants' credentials and terminal recordings
    /// (which hold what the router printed). Admins and operators; never viewers.
    pub fn may_read_credentials(&self) -> bool {
        self.role.can_write()
    }

    /// Refuses a caller who may not read credentials or recordings.
    pub fn require_credentials(&self) -> Result<(), ApiError> {
        if self.may_read_credentials() {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "this role may not read credentials or recordings",
            ))
        }
    }

    /// Refuses a caller who is not an admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if self.role.is_admin() {
            Ok(())
        } else {
            Err(ApiError::Forbidden("only an admin may do this"))
        }
    }
}

/// Tokens seen before, by hash, so a request need not read and decode the whole token
/// row. A cached token is still confirmed on every request (it exists: one indexed read,
/// or a column of the list handlers' own first query, see [`ListCaller`]), so a token
/// deleted in any process stops working at once. Tokens cannot change otherwise; expiry
/// is checked against the clock.
#[derive(Clone, Default)]
pub struct TokenCache {
    inner: Arc<Mutex<HashMap<String, store::ApiToken>>>,
}

impl TokenCache {
    fn get(&self, hash: &str) -> Option<store::ApiToken> {
        self.inner.lock().ok()?.get(hash).cloned()
    }

    fn put(&self, hash: String, token: store::ApiToken) {
        if let Ok(mut map) = self.inner.lock() {
            if map.len() > 10_000 {
                map.clear();
            }
            map.insert(hash, token);
        }
    }

    /// Forgets a deleted token.
    pub fn forget(&self, id: TokenId) {
        if let Ok(mut map) = self.inner.lock() {
            map.retain(|_, t| t.id != id);
        }
    }
}

/// The bearer token of a request, if it has one.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The client's address: the TCP peer unless that peer is a trusted proxy, in which case
/// the right-most `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_address(trusted: &[IpAddr], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    let forwarded = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|s| s.trim().parse::<IpAddr>().ok())
        .collect::<Vec<_>>();
    forwarded
        .into_iter()
        .rev()
        .find(|ip| !trusted.contains(ip))
        .unwrap_or(peer)
}

/// Authenticates a request. A token found in the cache is confirmed here with one read,
/// unless `defer` is set: then it is returned for the handler to confirm in a query it
/// makes anyway (see [`ListCaller`]).
async fn authenticate(
    parts: &Parts,
    state: &AppState,
    defer: bool,
) -> Result<(Caller, Option<TokenId>), ApiError> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<ClientAddr>>()
        .map(|ConnectInfo(ClientAddr(a))| a.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let address = client_address(&state.config.trusted_proxies, peer, &parts.headers);
    let token = bearer(&parts.headers).ok_or(ApiError::Unauthorized)?;
    if !well_formed(token) {
        return Err(ApiError::Unauthorized);
    }
    // The lookup is by the token's hash: comparing hashes leaks nothing useful about
    // the token through timing.
    let hash = hash_token(token);
    let (record, unconfirmed) = match state.tokens.get(&hash) {
        Some(t) if defer => {
            let id = t.id;
            (t, Some(id))
        }
        Some(t) => {
            if !state.store.api_token_exists(t.id).await? {
                state.tokens.forget(t.id);
                return Err(ApiError::Unauthorized);
            }
            (t, None)
        }
        None => {
            let found = state
                .store
                .find_api_token_by_hash(&hash)
                .await?
                .ok_or(ApiError::Unauthorized)?;
            state.tokens.put(hash.clone(), found.clone());
            (found, None)
        }
    };
    let now = state.now();
    if record.expires_at.is_some_and(|at| at <= now) {
        return Err(ApiError::Unauthorized);
    }
    if record.last_used_at.is_none_or(|at| now - at >= TOUCH_EVERY) {
        match state.store.touch_api_token(record.id, now).await {
            Ok(()) => {}
            Err(store::StoreError::NotFound) => {
                state.tokens.forget(record.id);
                return Err(ApiError::Unauthorized);
            }
            Err(e) => return Err(e.into()),
        }
        let mut touched = record.clone();
        touched.last_used_at = Some(now);
        state.tokens.put(hash, touched);
    }
    let caller = Caller {
        org_id: record.org_id,
        actor: format!("token:{}", record.name),
        role: record.role,
        address,
        user_id: None,
        token_id: Some(record.id),
    };
    Ok((caller, unconfirmed))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        Ok(authenticate(parts, state, false).await?.0)
    }
}

/// A caller for the grant-list handlers, whose cached token is confirmed by the query
/// those handlers make first anyway (`Store::list_stamp` reads the router's grants
/// version and whether the token exists in one statement), so a cached list costs one
/// query in all. The [`Caller`] is only reachable through [`ListCaller::confirm`].
pub struct ListCaller {
    caller: Caller,
    unconfirmed: Option<TokenId>,
}

impl ListCaller {
    /// The caller's organisation (for the confirming query only).
    pub fn org_id(&self) -> OrgId {
        self.caller.org_id
    }

    /// The token the confirming query must look for, if any.
    pub fn token_to_confirm(&self) -> Option<TokenId> {
        self.unconfirmed
    }

    /// The caller, once the query said whether the token to confirm still exists.
    pub fn confirm(self, token_exists: bool, state: &AppState) -> Result<Caller, ApiError> {
        match self.unconfirmed {
            Some(id) if !token_exists => {
                state.tokens.forget(id);
                Err(ApiError::Unauthorized)
            }
            _ => Ok(self.caller),
        }
    }
}

impl FromRequestParts<AppState> for ListCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (caller, unconfirmed) = authenticate(parts, state, true).await?;
        Ok(ListCaller {
            caller,
            unconfirmed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_have_their_shape_and_hash() {
        let t = generate_token();
        assert!(well_formed(&t), "{t}");
        assert_ne!(t, generate_token());
        assert_eq!(hash_token(&t).len(), 64);
        assert!(!well_formed("pst_short"));
        assert!(!well_formed(&t.replace("pst_", "xyz_")));
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", "203.0.113.9, 10.0.0.5".parse().unwrap());
        let proxies = [ip("127.0.0.1"), ip("10.0.0.5")];
        // No trusted proxies (the default): the TCP peer, whatever the header says.
        assert_eq!(
            client_address(&[], ip("127.0.0.1"), &headers),
            ip("127.0.0.1")
        );
        // A peer that is not a trusted proxy cannot forge the header.
        assert_eq!(
            client_address(&proxies, ip("198.51.100.1"), &headers),
            ip("198.51.100.1")
        );
        // Through trusted proxies: the right-most address that is not one of them.
        assert_eq!(
            client_address(&proxies, ip("127.0.0.1"), &headers),
            ip("203.0.113.9")
        );
        // Garbage in the header is skipped; nothing usable leaves the peer.
        headers.insert("x-forwarded-for", "junk, 10.0.0.5".parse().unwrap());
        assert_eq!(
            client_address(&proxies, ip("127.0.0.1"), &headers),
            ip("127.0.0.1")
        );
    }

    #[test]
    fn passwords_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("x", "not a hash"));
        // The hashing threads' verification agrees, reusing one buffer.
        let mut memory = Vec::new();
        assert!(verify_in(&mut memory, "correct horse", &h));
        let len = memory.len();
        assert_eq!(len, 19 * 1024);
        assert!(!verify_in(&mut memory, "wrong", &h));
        assert_eq!(memory.len(), len);
        assert!(!verify_in(&mut memory, "x", "not a hash"));
        let greedy = h.replace("m=19456", "m=1048576");
        assert!(!verify_in(&mut memory, "correct horse", &greedy));
    }
}
