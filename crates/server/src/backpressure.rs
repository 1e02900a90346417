//! Back-pressure on creating grants: per-minute rate limits per user, per API token and
//! per client address (429 with `Retry-After`), and caps on live grants per router and
//! per organisation (409). Counted in this process's memory: with several servers on
//! one database each applies the rates on its own (the caps are read from the store).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::{TokenId, UserId};

use crate::auth::Caller;
use crate::config::CreationLimits;
use crate::error::ApiError;

/// The window every rate is counted over.
const WINDOW: Duration = Duration::from_secs(60);
/// Beyond this many callers tracked, idle ones (whose window has passed) are dropped.
const PRUNE_AT: usize = 10_000;

/// Who a rate counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    User(UserId),
    Token(TokenId),
    Address(IpAddr),
}

/// A sliding log of one caller's creates in the last [`WINDOW`] (at most its limit).
#[derive(Debug, Default)]
struct Log(std::collections::VecDeque<Instant>);

impl Log {
    fn trim(&mut self, now: Instant) {
        while self
            .0
            .front()
            .is_some_and(|t| now.duration_since(*t) >= WINDOW)
        {
            self.0.pop_front();
        }
    }
}

/// The creation limiter shared by every request of this process.
#[derive(Debug, Clone, Default)]
pub struct CreateLimiter {
    logs: Arc<Mutex<HashMap<Key, Log>>>,
    /// Creates refused for a rate (429), and for a live-grant cap (409), for `/metrics`.
    pub refused_rate: Arc<std::sync::atomic::AtomicU64>,
    pub refused_cap: Arc<std::sync::atomic::AtomicU64>,
}

impl CreateLimiter {
    /// Counts one create by `caller` at `now`, or refuses it (nothing counted) with 429
    /// and the seconds until the oldest create that holds it back leaves the window. The
    /// create counts once [`Admission::keep`] is called: one that fails (a bad field, no
    /// free port, a cap) gives its place back when the admission is dropped.
    pub fn admit(
        &self,
        limits: &CreationLimits,
        caller: &Caller,
        now: Instant,
    ) -> Result<Admission, ApiError> {
        let mut keys: Vec<(Key, u32, &'static str)> = Vec::with_capacity(3);
        if let Some(u) = caller.user_id {
            keys.push((Key::User(u), limits.per_user, "this user"));
        }
        if let Some(t) = caller.token_id {
            keys.push((Key::Token(t), limits.per_token, "this API token"));
        }
        keys.push((
            Key::Address(caller.address),
            limits.per_address,
            "this client address",
        ));
        keys.retain(|(_, limit, _)| *limit > 0);
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if logs.len() >= PRUNE_AT {
            logs.retain(|_, log| {
                log.trim(now);
                !log.0.is_empty()
            });
        }
        let mut wait: Option<(Duration, u32, &'static str)> = None;
        for (key, limit, who) in &keys {
            let log = logs.entry(*key).or_default();
            log.trim(now);
            let full = log.0.len() >= usize::try_from(*limit).unwrap_or(usize::MAX);
            if full && let Some(oldest) = log.0.front() {
                let left = WINDOW.saturating_sub(now.duration_since(*oldest));
                if wait.is_none_or(|(w, _, _)| left > w) {
                    wait = Some((left, *limit, who));
                }
            }
        }
        if let Some((left, limit, who)) = wait {
            self.refused_rate
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let retry_after = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            return Err(ApiError::TooManyRequests {
                message: format!(
                    "{who} created {limit} grants in the last minute, the most allowed: \
                     try again in {retry_after} s"
                ),
                retry_after: retry_after.max(1),
            });
        }
        for (key, _, _) in &keys {
            logs.entry(*key).or_default().0.push_back(now);
        }
        Ok(Admission {
            logs: self.logs.clone(),
            keys: keys.into_iter().map(|(k, _, _)| k).collect(),
            at: now,
            kept: false,
        })
    }
}

/// A create let through the rates: kept (it happened) or, when dropped unkept, taken
/// back out of every count it was put in.
#[derive(Debug)]
pub struct Admission {
    logs: Arc<Mutex<HashMap<Key, Log>>>,
    keys: Vec<Key>,
    at: Instant,
    kept: bool,
}

impl Admission {
    /// The create succeeded: it counts.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        for key in &self.keys {
            if let Some(log) = logs.get_mut(key)
                && let Some(i) = log.0.iter().rposition(|t| *t == self.at)
            {
                log.0.remove(i);
            }
        }
    }
}

/// Refuses a create that would take the router or the organisation over its cap of live
/// grants (409).
pub async fn check_caps(
    store: &store::Store,
    limits: &CreationLimits,
    caller: &Caller,
    router_id: domain::RouterId,
) -> Result<(), ApiError> {
    if limits.live_per_router == 0 && limits.live_per_org == 0 {
        return Ok(());
    }
    let counts = store.count_live_grants(caller.org_id, router_id).await?;
    let over = |n: u64, cap: u32| cap > 0 && n >= u64::from(cap);
    if over(counts.router, limits.live_per_router) {
        return Err(ApiError::Conflict(format!(
            "the router has {} live grants, the most allowed (max_live_grants_per_router): \
             revoke one first",
            counts.router
        )));
    }
    if over(counts.org, limits.live_per_org) {
        return Err(ApiError::Conflict(format!(
            "the organisation has {} live grants, the most allowed (max_live_grants_per_org): \
             revoke one first",
            counts.org
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(user: Option<UserId>, token: Option<TokenId>, address: [u8; 4]) -> Caller {
        Caller {
            org_id: domain::OrgId::new(),
            actor: "t".into(),
            role: domain::Role::Operator,
            address: IpAddr::from(address),
            user_id: user,
            token_id: token,
        }
    }

    fn limits(per_user: u32, per_token: u32, per_address: u32) -> CreationLimits {
        CreationLimits {
            per_user,
            per_token,
            per_address,
            ..CreationLimits::default()
        }
    }

    fn retry_after(r: Result<Admission, ApiError>) -> Option<u64> {
        match r {
            Ok(a) => {
                a.keep();
                None
            }
            Err(ApiError::TooManyRequests { retry_after, .. }) => Some(retry_after),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_key_is_limited_on_its_own_and_the_window_slides() {
        let l = CreateLimiter::default();
        let t0 = Instant::now();
        let token = Some(TokenId::new());
        let a = caller(None, token, [198, 51, 100, 1]);
        let limits = limits(0, 3, 100);
        for i in 0..3 {
            assert_eq!(
                retry_after(l.admit(&limits, &a, t0 + Duration::from_secs(i))),
                None
            );
        }
        // The fourth within the minute: wait until the first leaves the window.
        assert_eq!(
            retry_after(l.admit(&limits, &a, t0 + Duration::from_secs(10))),
            Some(50)
        );
        // Another token from the same address is not held back.
        let b = caller(None, Some(TokenId::new()), [198, 51, 100, 1]);
        assert_eq!(
            retry_after(l.admit(&limits, &b, t0 + Duration::from_secs(10))),
            None
        );
        // A minute after the first, one more fits.
        assert_eq!(
            retry_after(l.admit(&limits, &a, t0 + Duration::from_secs(60))),
            None
        );
        assert!(retry_after(l.admit(&limits, &a, t0 + Duration::from_secs(60))).is_some());
    }

    #[test]
    fn the_address_limit_holds_whoever_signs_and_zero_is_off() {
        let l = CreateLimiter::default();
        let t0 = Instant::now();
        let limits = limits(0, 0, 2);
        for _ in 0..2 {
            let c = caller(Some(UserId::new()), None, [203, 0, 113, 9]);
            assert_eq!(retry_after(l.admit(&limits, &c, t0)), None);
        }
        let c = caller(Some(UserId::new()), None, [203, 0, 113, 9]);
        assert_eq!(retry_after(l.admit(&limits, &c, t0)), Some(60));
        let off = CreationLimits {
            per_user: 0,
            per_token: 0,
            per_address: 0,
            ..CreationLimits::default()
        };
        for _ in 0..1000 {
            assert_eq!(retry_after(l.admit(&off, &c, t0)), None);
        }
    }

    #[test]
    fn a_failed_create_gives_its_place_back() {
        let l = CreateLimiter::default();
        let t0 = Instant::now();
        let limits = limits(0, 1, 0);
        let c = caller(None, Some(TokenId::new()), [203, 0, 113, 9]);
        for _ in 0..5 {
            // Admitted, then dropped unkept: a refused create.
            drop(l.admit(&limits, &c, t0).unwrap());
        }
        assert_eq!(retry_after(l.admit(&limits, &c, t0)), None);
        assert_eq!(retry_after(l.admit(&limits, &c, t0)), Some(60));
    }
}
