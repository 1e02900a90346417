//! What the grant handlers share: loading a router within the caller's organisation,
//! resolving expiry and `allow_from`, drawing port candidates, and audit entries.

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use axum::response::IntoResponse as _;
use chrono::{DateTime, TimeDelta, Utc};
use domain::{AllowFrom, OrgId, RouterId};
use rand::seq::SliceRandom as _;

use crate::auth::{Caller, ListCaller};
use crate::cache::Versioned;
use crate::dto::GrantListQuery;
use crate::error::{ApiError, FieldError};
use crate::extract::parse_id;
use crate::state::AppState;

/// How many random ports a create offers the store when the range is large.
const PORT_CANDIDATES: usize = 64;
/// How often a router job is tried before it fails.
/// Attempts of a creation job before the grant fails (clean-ups retry forever).
const JOB_ATTEMPTS: u32 = 8;

/// The caller's router, or 404 (also for another organisation's router).
pub async fn load_router(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<store::Router, ApiError> {
    let id: RouterId = parse_id(id, "router")?;
    state
        .store
        .get_router(caller.org_id, id)
        .await
        .map_err(|e| not_found_as(e, "router"))
}

/// How many ended grants `?all=true` shows when no `limit` is given.
const ENDED_DEFAULT: i64 = 100;

/// The window of ended grants a list asks for: none by default; with `all=true`,
/// `limit` (1–500, default 100) of them after skipping `offset`.
pub fn ended_window(q: &GrantListQuery) -> Result<Option<store::Page>, ApiError> {
    let mut checks = Checks::default();
    if q.all != Some(true) {
        if q.limit.is_some() {
            checks.push("limit", "pages ended grants: give it with all=true");
        }
        if q.offset.is_some() {
            checks.push("offset", "pages ended grants: give it with all=true");
        }
        checks.finish()?;
        return Ok(None);
    }
    let limit = q.limit.unwrap_or(ENDED_DEFAULT);
    let offset = q.offset.unwrap_or(0);
    if !(1..=500).contains(&limit) {
        checks.push("limit", "must be between 1 and 500");
    }
    if !(0..=1_000_000).contains(&offset) {
        checks.push("offset", "must be between 0 and 1000000");
    }
    checks.finish()?;
    Ok(Some(store::Page {
        limit: u32::try_from(limit).unwrap_or(100),
        offset: u32::try_from(offset).unwrap_or(0),
    }))
}

/// A router's grant list for `caller`, with one query when this process holds the list
/// as of the router's current grants version: `Store::list_stamp` reads that version
/// (404 for a router outside the caller's organisation) and confirms a cached token
/// (401 once deleted) in one statement; `fetch` runs only when the version moved or the
/// cache is switched off. The records are read after the version, so they are never
/// older than the version they are filed under.
pub async fn grant_list<T, F, Fut>(
    state: &AppState,
    caller: ListCaller,
    router_id: RouterId,
    ended: Option<store::Page>,
    cache: &Versioned<T>,
    fetch: F,
) -> Result<Arc<Vec<T>>, ApiError>
where
    F: FnOnce(OrgId) -> Fut,
    Fut: Future<Output = Result<Vec<T>, ApiError>>,
{
    let org = caller.org_id();
    let stamp = state
        .store
        .list_stamp(org, router_id, caller.token_to_confirm())
        .await?;
    caller.confirm(stamp.token_exists, state)?;
    let version = stamp.grants_version.ok_or(ApiError::NotFound("router"))?;
    let cached = state.config.list_cache;
    if cached && let Some(records) = cache.get(org, router_id, ended, version) {
        return Ok(records);
    }
    let records = Arc::new(fetch(org).await?);
    if cached {
        cache.put(org, router_id, ended, version, records.clone());
    }
    Ok(records)
}

/// Maps the store's NotFound to a 404 naming `what`.
pub fn not_found_as(e: store::StoreError, what: &'static str) -> ApiError {
    match e {
        store::StoreError::NotFound => ApiError::NotFound(what),
        other => other.into(),
    }
}

/// Collects field errors so one response names every bad field.
#[derive(Default)]
pub struct Checks {
    errors: Vec<FieldError>,
}

impl Checks {
    /// Keeps the value or records the error.
    pub fn take<T>(&mut self, result: Result<T, domain::ValidationError>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                self.errors.push(FieldError::new(e.field, e.message));
                None
            }
        }
    }

    pub fn push(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(field, message));
    }

    /// Fails with every recorded error, if any.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

/// The grant limits as the domain rules take them.
pub fn limits(state: &AppState) -> domain::Limits {
    let l = &state.config.grant_limits;
    let delta = |d: std::time::Duration| TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX);
    domain::Limits {
        min: delta(l.min),
        max: delta(l.max),
        default: delta(l.default),
    }
}

/// Parses an `expires_at` text (RFC 3339; converted to UTC).
pub fn parse_time(field: &'static str, s: &str) -> Result<DateTime<Utc>, domain::ValidationError> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            domain::ValidationError::new(
                field,
                "must be an RFC 3339 time such as 2024-06-22T04:33:29+00:00",
            )
        })
}

/// When a grant ends, from the request's two optional fields.
pub fn resolve_expiry(
    state: &AppState,
    checks: &mut Checks,
    now: DateTime<Utc>,
    minutes: Option<i64>,
    at: Option<&str>,
) -> Option<DateTime<Utc>> {
    let at = match at {
        Some(s) => Some(checks.take(parse_time("expires_at", s))?),
        None => None,
    };
    checks.take(domain::rules::resolve_expiry(
        now,
        minutes,
        at,
        &limits(state),
    ))
}

/// Whether the region's gateway takes IPv4 connections only: its entry point is an IPv4
/// address, or this server's gateway binds the region on an IPv4 address (the default
/// for a host-name entry point is 0.0.0.0). An IPv6 `allow_from` could never be used.
pub fn ipv4_only(state: &AppState, region: &store::Region) -> bool {
    match region.entry_point.parse::<IpAddr>() {
        Ok(ip) => ip.is_ipv4(),
        Err(_) => state
            .config
            .regions
            .iter()
            .find(|r| r.name == region.name)
            .is_some_and(|r| r.bind_address().is_ipv4()),
    }
}

/// `allow_from` as given, or the caller's own address; IPv6 is refused when the
/// region's entry point takes IPv4 only.
pub fn resolve_allow_from(
    state: &AppState,
    checks: &mut Checks,
    given: Option<&str>,
    caller: IpAddr,
    region: &store::Region,
) -> Option<AllowFrom> {
    let policy = state.policy();
    let family = |a: AllowFrom| {
        if ipv4_only(state, region) {
            a.require_ipv4(&region.entry_point)
        } else {
            Ok(a)
        }
    };
    match given {
        Some(s) => checks.take(AllowFrom::parse(s, &policy).and_then(family)),
        None => match AllowFrom::from_addr(caller, &policy).and_then(family) {
            Ok(a) => Some(a),
            Err(e) => {
                checks.push(
                    "allow_from",
                    format!(
                        "not given, and your address cannot be used instead: {}",
                        e.message
                    ),
                );
                None
            }
        },
    }
}

/// Ports to try, in random order: the whole range when small, else a random sample.
pub fn port_candidates(min: u16, max: u16) -> Vec<u16> {
    let mut rng = rand::rng();
    let size = usize::from(max.saturating_sub(min)) + 1;
    if size <= PORT_CANDIDATES * 4 {
        let mut all: Vec<u16> = (min..=max).collect();
        all.shuffle(&mut rng);
        return all;
    }
    let mut picked = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(PORT_CANDIDATES);
    while out.len() < PORT_CANDIDATES {
        let p = rand::Rng::random_range(&mut rng, min..=max);
        if picked.insert(p) {
            out.push(p);
        }
    }
    out
}

/// Entry-port candidates for a create in `region`: from this process's gateway when it
/// serves the region (skipping ports live or cooling down there and ports it cannot
/// bind; none left makes the store's 409), else drawn from the region's range.
pub fn entry_port_candidates(state: &AppState, region: &store::Region) -> Vec<u16> {
    state
        .gateway
        .as_ref()
        .and_then(|g| g.port_candidates(region.id))
        .unwrap_or_else(|| port_candidates(region.port_min, region.port_max))
}

/// An audit entry by this caller.
pub fn audit(
    caller: &Caller,
    at: DateTime<Utc>,
    action: &str,
    target: Option<String>,
    details: serde_json::Value,
) -> store::NewAudit {
    store::NewAudit {
        org_id: caller.org_id,
        at,
        actor: caller.actor.clone(),
        actor_address: Some(caller.address),
        action: action.to_owned(),
        target,
        details,
    }
}

pub use crate::render::is_expired;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_stay_in_range_and_are_distinct() {
        let c = port_candidates(49152, 65535);
        assert_eq!(c.len(), PORT_CANDIDATES);
        assert!(c.iter().all(|p| (49152..=65535).contains(p)));
        let set: std::collections::BTreeSet<_> = c.iter().collect();
        assert_eq!(set.len(), c.len());
        let mut small = port_candidates(40000, 40002);
        small.sort();
        assert_eq!(small, vec![40000, 40001, 40002]);
        assert_eq!(port_candidates(65535, 65535), vec![65535]);
    }
}

/// The first job of a new grant; the orchestrator runs it at once.
pub fn new_job(
    caller: &Caller,
    router_id: RouterId,
    kind: &str,
    now: DateTime<Utc>,
) -> store::NewJob {
    store::NewJob {
        org_id: caller.org_id,
        router_id,
        kind: kind.to_owned(),
        payload: serde_json::json!({}),
        max_attempts: JOB_ATTEMPTS,
        run_after: now,
        created_at: now,
    }
}

/// A grant of either kind.
#[derive(Debug, Clone, Copy)]
pub enum Grant {
    Access(domain::AccessId),
    Forward(domain::ForwardId),
}

impl Grant {
    /// The orchestrator's name for it.
    pub fn key(self) -> orchestrator::GrantKey {
        match self {
            Grant::Access(id) => orchestrator::GrantKey::Access(id),
            Grant::Forward(id) => orchestrator::GrantKey::Forward(id),
        }
    }

    /// The word in audit actions (`access.update`) and targets (`access:<id>`).
    pub fn kind(self) -> &'static str {
        match self {
            Grant::Access(_) => "access",
            Grant::Forward(_) => "forward",
        }
    }

    /// The audit target, `<kind>:<id>`.
    pub fn target(self) -> String {
        match self {
            Grant::Access(id) => format!("access:{id}"),
            Grant::Forward(id) => format!("forward:{id}"),
        }
    }
}

/// The new end a PATCH asks for: exactly one of `expire_after_minutes` and `expires_at`,
/// within the configured limits, or a 422 naming the field.
pub fn requested_expiry(
    state: &AppState,
    req: &crate::dto::UpdateExpiry,
    now: DateTime<Utc>,
) -> Result<DateTime<Utc>, ApiError> {
    if req.expire_after_minutes.is_none() && req.expires_at.is_none() {
        return Err(ApiError::field(
            "expire_after_minutes",
            "give expire_after_minutes or expires_at",
        ));
    }
    let mut checks = Checks::default();
    let at = resolve_expiry(
        state,
        &mut checks,
        now,
        req.expire_after_minutes,
        req.expires_at.as_deref(),
    );
    checks.finish()?;
    at.ok_or_else(|| ApiError::Internal("validation passed without a value".into()))
}

/// What follows a grant's end moving in the store: the cached lists, the orchestrator
/// (timers and the router's self-expiry entry) and the audit log.
pub async fn expiry_moved(
    state: &AppState,
    caller: &Caller,
    grant: Grant,
    router_id: RouterId,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    state.lists.invalidate(router_id);
    if let Some(o) = &state.orchestrator {
        o.grant_extended(grant.key(), caller.org_id, router_id, at)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
    }
    state
        .store
        .append_audit(audit(
            caller,
            now,
            &format!("{}.update", grant.kind()),
            Some(grant.target()),
            serde_json::json!({ "expires_at": crate::dto::timestamp(at) }),
        ))
        .await?;
    Ok(())
}

/// Tells the orchestrator a grant and its first job were just recorded: run it now,
/// and re-arm the expiry timer.
pub async fn grant_created(state: &AppState) {
    if let Some(o) = &state.orchestrator {
        o.jobs_queued().await;
        o.expiry_changed();
    }
}

/// A grant record that names its grant.
pub trait GrantRecord {
    fn grant_key(&self) -> orchestrator::GrantKey;
    /// Whether the gateway opens an entry port for it (not for the Terminal's access).
    fn has_entry_port(&self) -> bool {
        true
    }
}

impl GrantRecord for store::TransientAccess {
    fn grant_key(&self) -> orchestrator::GrantKey {
        orchestrator::GrantKey::Access(self.id)
    }

    fn has_entry_port(&self) -> bool {
        !self.terminal
    }
}

impl GrantRecord for store::TransientForward {
    fn grant_key(&self) -> orchestrator::GrantKey {
        orchestrator::GrantKey::Forward(self.id)
    }
}

/// For `?wait=true`: waits until the grant leaves `requested`/`provisioning` (and, once
/// active, until this process's gateway listens on its port) or the configured wait
/// passes, and returns it as it is then.
pub async fn wait_until_settled<T, F, Fut>(state: &AppState, mut read: F, initial: T) -> T
where
    T: GrantRecord,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<(T, domain::GrantStatus)>>,
{
    use domain::GrantStatus::{Provisioning, Requested};
    let deadline = tokio::time::Instant::now() + state.config.create_wait;
    // This process's gateway knows at once when a grant it serves is open (recorded
    // active) or ended: until then the store is read only every 50 ms (a grant another
    // process made active, or one this gateway does not serve), not every 5 ms for
    // each waiting request.
    let key = initial.grant_key();
    let watched = initial.has_entry_port() && state.gateway.is_some();
    let mut last = initial;
    let mut tick: u64 = 0;
    let mut asked = false;
    loop {
        tick += 1;
        // Woken at once when an open is answered here; else every 5 ms.
        let pause = tokio::time::sleep(std::time::Duration::from_millis(5));
        match &state.gateway {
            Some(g) if watched => {
                tokio::select! {
                    () = g.some_open_settled() => {}
                    () = pause => {}
                }
            }
            _ => pause.await,
        }
        let news = !watched
            || tick.is_multiple_of(10)
            || state.gateway.as_ref().is_some_and(|g| g.settled(key));
        if !news {
            if tokio::time::Instant::now() >= deadline {
                return last;
            }
            continue;
        }
        match read().await {
            Some((grant, status)) => {
                last = grant;
                let listening = || {
                    status != domain::GrantStatus::Active
                        || !last.has_entry_port()
                        || state
                            .gateway
                            .as_ref()
                            .is_none_or(|g| g.settled(last.grant_key()))
                };
                if !matches!(status, Requested | Provisioning) && listening() {
                    return last;
                }
                if status == domain::GrantStatus::Active
                    && !asked
                    && let Some(g) = &state.gateway
                {
                    // Made active by another server's orchestrator: this server's link
                    // asks the gateway too (an open of an open grant is answered at
                    // once), so it learns the port listens.
                    g.confirm_open(last.grant_key());
                    asked = true;
                }
            }
            None => return last,
        }
        if tokio::time::Instant::now() >= deadline {
            return last;
        }
    }
}

/// Revokes a live grant, audited. With an orchestrator (the server always has one):
/// `closing`, the gateway closed first, then the router clean-up job run at once; the
/// grant becomes `revoked` when the router is clean. Without one (API-only tests): the
/// grant goes straight through `closing` to `revoked` and the clean-up job is queued.
/// A grant that ended meanwhile is left as it is (the caller's wish already holds).
pub async fn revoke(
    state: &AppState,
    caller: &Caller,
    grant: Grant,
    router_id: RouterId,
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    if let Some(o) = &state.orchestrator {
        let (key, action, target) = (
            grant.key(),
            format!("{}.revoke", grant.kind()),
            grant.target(),
        );
        // The grant's end and its audit entry: one write.
        let entry = audit(
            caller,
            now,
            &action,
            Some(target),
            serde_json::json!({ "router_id": router_id.to_string() }),
        );
        let revoked = o
            .revoke_audited(key, &entry)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if revoked {
            state.lists.invalidate(router_id);
        }
        return Ok(());
    }
    use domain::GrantStatus::{Active, Closing, Provisioning, Requested, Revoked};
    let live = [Requested, Provisioning, Active];
    let closing = match grant {
        Grant::Access(id) => state
            .store
            .transition_access(id, &live, Closing, now, None)
            .await
            .map(|_| ()),
        Grant::Forward(id) => state
            .store
            .transition_forward(id, &live, Closing, now, None)
            .await
            .map(|_| ()),
    };
    match closing {
        Ok(()) => {}
        Err(store::StoreError::Conflict(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    state.lists.invalidate(router_id);
    let (action, kind, target, payload) = match grant {
        Grant::Access(id) => {
            state
                .store
                .transition_access(id, &[Closing], Revoked, now, None)
                .await?;
            (
                "access.revoke",
                "access.end",
                format!("access:{id}"),
                serde_json::json!({ "grant_id": id.to_string(), "reason": "revoked" }),
            )
        }
        Grant::Forward(id) => {
            state
                .store
                .transition_forward(id, &[Closing], Revoked, now, None)
                .await?;
            (
                "forward.revoke",
                "forward.end",
                format!("forward:{id}"),
                serde_json::json!({ "grant_id": id.to_string(), "reason": "revoked" }),
            )
        }
    };
    state
        .store
        .create_job(store::NewJob {
            payload,
            max_attempts: 0,
            ..new_job(caller, router_id, kind, now)
        })
        .await?;
    state
        .store
        .append_audit(audit(
            caller,
            now,
            action,
            Some(target),
            serde_json::json!({ "router_id": router_id.to_string() }),
        ))
        .await?;
    Ok(())
}

/// A response whose body is JSON already rendered.
pub fn json_body(body: axum::body::Bytes) -> axum::response::Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}
