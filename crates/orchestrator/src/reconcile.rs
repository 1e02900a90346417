//! The reconciler: compares what a router holds under Postern's tags (users, NAT rules,
//! scheduler entries whose comment starts `postern:`) with the live grants. A scan is
//! read-only; when it finds drift, a `router.reconcile` job is queued, which scans again
//! inside the router's job queue (so never alongside another job of that router),
//! removes what no grant backs, re-creates what an active grant lacks, and logs each
//! drift in words. Scans run on a schedule, and at once when a router comes back. A
//! scan uses a router's open connection if a job left one, else opens one for itself
//! and closes it when done, so scanning every router keeps no connection open.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::{GrantStatus, RouterId};
use routeros::api::{self, Filter, ItemId};
use store::Job;
use tokio::sync::watch;

use crate::Inner;
use crate::connections::{self, RouterConn};
use crate::dataplane::GrantKey;
use crate::error::Result;
use crate::handlers::{self, step};
use crate::joblog::JobLog;

/// One difference between a router and the grants.
#[derive(Debug, Clone)]
pub enum Drift {
    /// A tagged user no live grant backs.
    OrphanUser {
        id: ItemId,
        name: String,
        tag: String,
    },
    /// A tagged NAT rule no live grant backs.
    OrphanNat { id: ItemId, tag: String },
    /// A tagged scheduler entry no live grant backs.
    OrphanSchedule {
        id: ItemId,
        name: String,
        tag: String,
    },
    /// An active access grant whose user is missing.
    MissingUser(Box<store::TransientAccess>),
    /// An active forward whose dst-nat rule is missing.
    MissingNat(Box<store::TransientForward>),
    /// An active grant without its self-expiry scheduler entry (where device-mode
    /// allows the scheduler and nothing refuses it one).
    MissingSchedule {
        key: GrantKey,
        expires_at: chrono::DateTime<chrono::Utc>,
        user: Option<Box<store::TransientAccess>>,
    },
    /// A live grant's entry whose script or policy is not what Postern wrote (someone
    /// edited it): removed, and written again for an active grant.
    AlteredSchedule {
        id: ItemId,
        name: String,
        key: GrantKey,
        expires_at: chrono::DateTime<chrono::Utc>,
        user: Option<Box<store::TransientAccess>>,
        active: bool,
    },
    /// An access grant's entry where none may stand (a write grant is live on the
    /// router, or it is a write grant's own).
    UnwantedSchedule { id: ItemId, name: String },
    /// One of Postern's groups with policies other than Postern's.
    Group(handlers::GroupDrift),
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::OrphanUser { name, tag, .. } => {
                write!(f, "user {name} is tagged {tag} but no live grant backs it")
            }
            Drift::OrphanNat { id, tag } => {
                write!(
                    f,
                    "NAT rule {id} is tagged {tag} but no live grant backs it"
                )
            }
            Drift::OrphanSchedule { name, tag, .. } => write!(
                f,
                "scheduler entry {name} is tagged {tag} but no live grant backs it"
            ),
            Drift::MissingUser(g) => write!(
                f,
                "transient access {} is active but its user {} is missing on the router",
                g.id, g.username
            ),
            Drift::MissingNat(g) => write!(
                f,
                "transient forward {} is active but its dst-nat rule is missing on the router",
                g.id
            ),
            Drift::MissingSchedule { key, .. } => write!(
                f,
                "{key} is active but its self-expiry scheduler entry is missing on the router"
            ),
            Drift::AlteredSchedule { name, key, .. } => write!(
                f,
                "scheduler entry {name} of {key} has a script or policy Postern did not write"
            ),
            Drift::UnwantedSchedule { name, .. } => write!(
                f,
                "scheduler entry {name} removes a user but a write grant is live on the router"
            ),
            Drift::Group(g) => write!(f, "{g}"),
        }
    }
}

/// A live grant whose self-expiry entry the scan checks: what Postern writes for it.
struct LiveEntry {
    key: GrantKey,
    expires_at: chrono::DateTime<chrono::Utc>,
    /// The access grant (its entry removes this user); `None` for a forward.
    user: Option<Box<store::TransientAccess>>,
    active: bool,
}

/// Whether a `postern:` tag is one of a grant (not a group, nor what onboarding made:
/// `postern:tunnel:…`, such as the management login), and its `kind:id` key.
fn grant_tag(comment: Option<&str>) -> Option<&str> {
    let rest = comment?.strip_prefix("postern:")?;
    if rest.starts_with("group:") || rest.starts_with("tunnel:") {
        return None;
    }
    Some(rest)
}

/// Compares the router with the grants.
pub(crate) async fn scan(
    inner: &Arc<Inner>,
    router: &store::Router,
    conn: &RouterConn,
    log: &JobLog,
) -> Result<Vec<Drift>> {
    // Every grant not yet final backs its objects (a creation or an end may be under
    // way); only active ones must have them.
    let mut backed: HashMap<String, GrantStatus> = HashMap::new();
    let mut active_access = Vec::new();
    let mut active_forwards = Vec::new();
    // What each live grant's entry must hold, by tag.
    let mut live: HashMap<String, LiveEntry> = HashMap::new();
    // While a write grant is live here, no access grant may have an entry (its user
    // could edit it: `handlers::self_expiry_refusal`).
    let mut write_live = false;
    for g in inner.store.list_live_access().await? {
        if g.router_id == router.id {
            backed.insert(format!("access:{}", g.id), g.status);
            write_live |= g.access == domain::AccessLevel::Write;
            let key = GrantKey::Access(g.id);
            live.insert(
                key.tag(),
                LiveEntry {
                    key,
                    expires_at: g.expires_at,
                    user: Some(Box::new(g.clone())),
                    active: g.status == GrantStatus::Active,
                },
            );
            if g.status == GrantStatus::Active {
                active_access.push(g);
            }
        }
    }
    for g in inner.store.list_live_forwards().await? {
        if g.router_id == router.id {
            backed.insert(format!("forward:{}", g.id), g.status);
            let key = GrantKey::Forward(g.id);
            live.insert(
                key.tag(),
                LiveEntry {
                    key,
                    expires_at: g.expires_at,
                    user: None,
                    active: g.status == GrantStatus::Active,
                },
            );
            if g.status == GrantStatus::Active {
                active_forwards.push(g);
            }
        }
    }
    let users = step(
        log,
        "/user/print",
        api::user::print(&conn.client, &Filter::all()),
    )
    .await?;
    let rules = step(
        log,
        "/ip/firewall/nat/print",
        api::nat::print(&conn.client, &Filter::all()),
    )
    .await?;
    let entries = step(
        log,
        "/system/scheduler/print",
        api::scheduler::print(&conn.client, &Filter::all()),
    )
    .await?;
    let groups = step(
        log,
        "/user/group/print",
        api::group::print(&conn.client, &Filter::all()),
    )
    .await?;
    let mut drift: Vec<Drift> = handlers::group_drift(&groups)
        .into_iter()
        .map(Drift::Group)
        .collect();
    for u in &users {
        if let Some(key) = grant_tag(u.comment.as_deref())
            && !backed.contains_key(key)
        {
            drift.push(Drift::OrphanUser {
                id: u.id.clone(),
                name: u.name.clone(),
                tag: format!("postern:{key}"),
            });
        }
    }
    for r in &rules {
        if let Some(key) = grant_tag(r.comment.as_deref())
            && !backed.contains_key(key)
        {
            drift.push(Drift::OrphanNat {
                id: r.id.clone(),
                tag: format!("postern:{key}"),
            });
        }
    }
    // Read once, and only when an entry is to be compared.
    let mut v7: Option<bool> = None;
    for e in &entries {
        let Some(key) = grant_tag(e.comment.as_deref()) else {
            continue;
        };
        if !backed.contains_key(key) {
            drift.push(Drift::OrphanSchedule {
                id: e.id.clone(),
                name: e.name.clone(),
                tag: format!("postern:{key}"),
            });
            continue;
        }
        let Some(LiveEntry {
            key: gkey,
            expires_at,
            user,
            active,
        }) = live.get(&format!("postern:{key}"))
        else {
            continue;
        };
        if user.is_some() && write_live {
            drift.push(Drift::UnwantedSchedule {
                id: e.id.clone(),
                name: e.name.clone(),
            });
            continue;
        }
        let v7 = match v7 {
            Some(v7) => v7,
            None => *v7.insert(handlers::router_is_v7(inner, conn, log).await?),
        };
        let (script, policy) =
            handlers::entry_script(*gkey, user.as_ref().map(|u| u.username.as_str()), v7);
        if !handlers::entry_matches(e, &script, policy) {
            drift.push(Drift::AlteredSchedule {
                id: e.id.clone(),
                name: e.name.clone(),
                key: *gkey,
                expires_at: *expires_at,
                user: user.clone(),
                active: *active,
            });
        }
    }
    let schedules =
        inner.config.router_self_expiry && handlers::scheduler_allowed(conn, log).await?;
    if schedules {
        let has_entry = |key: GrantKey| {
            let tag = key.tag();
            entries
                .iter()
                .any(|e| e.comment.as_deref() == Some(tag.as_str()))
        };
        for g in active_access.iter().filter(|_| !write_live) {
            if !has_entry(GrantKey::Access(g.id)) {
                drift.push(Drift::MissingSchedule {
                    key: GrantKey::Access(g.id),
                    expires_at: g.expires_at,
                    user: Some(Box::new(g.clone())),
                });
            }
        }
        for g in &active_forwards {
            if !has_entry(GrantKey::Forward(g.id)) {
                drift.push(Drift::MissingSchedule {
                    key: GrantKey::Forward(g.id),
                    expires_at: g.expires_at,
                    user: None,
                });
            }
        }
    }
    for g in active_access {
        let tag = GrantKey::Access(g.id).tag();
        if !users
            .iter()
            .any(|u| u.comment.as_deref() == Some(tag.as_str()))
        {
            drift.push(Drift::MissingUser(Box::new(g)));
        }
    }
    for g in active_forwards {
        let tag = GrantKey::Forward(g.id).tag();
        if !rules.iter().any(|r| {
            r.comment.as_deref() == Some(tag.as_str()) && r.action.as_deref() == Some("dst-nat")
        }) {
            drift.push(Drift::MissingNat(Box::new(g)));
        }
    }
    Ok(drift)
}

/// The `router.reconcile` job: scan again and repair each drift.
pub(crate) async fn run_job(inner: &Arc<Inner>, job: &Job, log: &JobLog) -> Result<()> {
    let router = inner.store.get_router_any_org(job.router_id).await?;
    let conn = connections::connect(inner, &router, log).await?;
    let drift = scan(inner, &router, &conn, log).await?;
    // A stuck clean-up is not repaired here: the reconciler would send the router the
    // same refused command. It is said, so "matches" never hides it.
    let stuck = inner.store.stuck_jobs(router.id).await?;
    for job in &stuck {
        log.line(format!(
            "not repaired here: job {} ({}) is stuck: {}",
            job.id,
            job.kind,
            job.last_error
                .as_deref()
                .unwrap_or("the router refused a command")
        ));
    }
    if drift.is_empty() {
        if stuck.is_empty() {
            log.line("no drift: the router matches the live grants");
        } else {
            log.line(format!(
                "no other drift; {} stuck job(s) keep what they were to remove on the router",
                stuck.len()
            ));
        }
        return Ok(());
    }
    for d in drift {
        log.line(format!("drift: {d}"));
        match d {
            Drift::OrphanUser { id, name, .. } => {
                let sessions = api::active::print(&conn.client, &Filter::name(&name))
                    .await
                    .unwrap_or_default();
                for s in &sessions {
                    handlers::end_session(&conn, s, log).await?;
                }
                step(
                    log,
                    &format!("/user/remove .id={id} (user {name})"),
                    api::user::remove(&conn.client, &id),
                )
                .await?;
            }
            Drift::OrphanNat { id, .. } => {
                step(
                    log,
                    &format!("/ip/firewall/nat/remove .id={id}"),
                    api::nat::remove(&conn.client, &id),
                )
                .await?;
            }
            Drift::OrphanSchedule { id, name, .. } => {
                step(
                    log,
                    &format!("/system/scheduler/remove .id={id} ({name})"),
                    api::scheduler::remove(&conn.client, &id),
                )
                .await?;
            }
            Drift::MissingUser(g) => {
                handlers::ensure_groups(&conn, log).await?;
                handlers::ensure_user(inner, &conn, &g, None, log).await?;
            }
            Drift::MissingNat(g) => {
                let source = handlers::forward_source(inner, &router, g.region_id).await?;
                handlers::ensure_nat(&conn, &router, &g, source, log).await?;
            }
            Drift::MissingSchedule {
                key,
                expires_at,
                user,
            } => {
                handlers::ensure_schedule(inner, &conn, key, expires_at, user.as_deref(), log)
                    .await?;
            }
            Drift::AlteredSchedule {
                id,
                name,
                key,
                expires_at,
                user,
                active,
            } => {
                tracing::warn!(router = %router.name, entry = %name, "a self-expiry entry was altered on the router; replacing it");
                step(
                    log,
                    &format!("/system/scheduler/remove .id={id} ({name}: altered)"),
                    api::scheduler::remove(&conn.client, &id),
                )
                .await?;
                if active {
                    handlers::ensure_schedule(inner, &conn, key, expires_at, user.as_deref(), log)
                        .await?;
                }
            }
            Drift::UnwantedSchedule { id, name } => {
                step(
                    log,
                    &format!("/system/scheduler/remove .id={id} ({name})"),
                    api::scheduler::remove(&conn.client, &id),
                )
                .await?;
            }
            Drift::Group(g) => {
                handlers::repair_group(&conn, &g, log).await?;
            }
        }
    }
    if stuck.is_empty() {
        log.line("the router matches the live grants again");
    } else {
        log.line(format!(
            "repaired; {} stuck job(s) keep what they were to remove on the router",
            stuck.len()
        ));
    }
    Ok(())
}

/// Scans one router; on drift queues a reconcile job (unless one is queued). Returns
/// the drift found.
pub(crate) async fn check_router(inner: &Arc<Inner>, router: &store::Router) -> Result<usize> {
    let log = JobLog::detached(inner.clock.clone());
    // A scan's use does not keep the connection open: one opened for it is closed when
    // it is done (see `connections`).
    let conn = connections::connect_for(inner, router, &log, connections::Use::Scan).await?;
    connections::refresh_facts(inner, router.id, &conn).await;
    let scanned = scan(inner, router, &conn, &log).await;
    inner.conns.scan_done(conn);
    let drift = match scanned {
        Ok(d) => d,
        Err(e) => {
            inner.conns.drop_router(router.id);
            return Err(e);
        }
    };
    if !drift.is_empty()
        && !inner
            .store
            .has_open_job(router.id, "router.reconcile")
            .await?
    {
        tracing::info!(router = %router.name, drift = drift.len(), "drift found; queueing a reconcile job");
        let now = inner.clock.now();
        inner
            .store
            .create_job(store::NewJob {
                org_id: router.org_id,
                router_id: router.id,
                kind: "router.reconcile".into(),
                payload: serde_json::json!({ "drift": drift.iter().map(|d| d.to_string()).collect::<Vec<_>>() }),
                max_attempts: 5,
                run_after: now,
                created_at: now,
            })
            .await?;
        inner.wake_jobs().await;
    }
    Ok(drift.len())
}

/// Scans every router each `reconcile_interval`, and probes offline ones more often.
pub(crate) async fn run(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut last_full: Option<Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        if last_full.is_none_or(|t| t.elapsed() >= inner.config.reconcile_interval) {
            last_full = Some(Instant::now());
            match inner.store.list_all_routers().await {
                Ok(routers) => {
                    for router in routers {
                        if let Err(e) = check_router(&inner, &router).await {
                            tracing::info!(router = %router.name, error = %e, "reconcile scan failed");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reconciler could not list routers"),
            }
        } else {
            for id in inner.offline_routers() {
                probe(&inner, id).await;
            }
        }
        let wait = inner
            .config
            .offline_probe_interval
            .min(inner.config.reconcile_interval);
        tokio::select! {
            _ = tokio::time::sleep(wait.max(Duration::from_millis(50))) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Tries an offline router; when it answers, `connect` marks it online (which hastens
/// its jobs) and the scan queues a repair if needed.
async fn probe(inner: &Arc<Inner>, id: RouterId) {
    let Ok(router) = inner.store.get_router_any_org(id).await else {
        inner.forget_offline(id);
        return;
    };
    if let Err(e) = check_router(inner, &router).await {
        tracing::debug!(router = %router.name, error = %e, "router still unreachable");
    }
}

#[cfg(test)]
mod tag_tests {
    use super::grant_tag;

    #[test]
    fn only_grants_tags_are_grants() {
        assert_eq!(grant_tag(Some("postern:access:abc")), Some("access:abc"));
        assert_eq!(grant_tag(Some("postern:group:full")), None);
        // The management login onboarding made is no grant's: never drift.
        assert_eq!(
            grant_tag(Some("postern:tunnel:user Postern's management login")),
            None
        );
        assert_eq!(grant_tag(Some("someone else's")), None);
        assert_eq!(grant_tag(None), None);
    }
}
