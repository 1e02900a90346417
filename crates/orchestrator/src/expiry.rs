//! Expiry: one timer armed at the earliest `expires_at` among live grants (asked of the
//! store at start-up and whenever a grant is created or changed: an index lookup, not a
//! read of every live grant), backed by a periodic sweep. A grant that is due goes
//! `closing`, its data plane closes, and its router clean-up job is queued; that job's
//! success makes it `expired`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::watch;

use crate::Inner;
use crate::dataplane::{EndReason, GrantKey};

/// Ends every due grant; returns the next expiry among the others. At start-up
/// (`recover`, reading every live and closing grant), a closing grant with no clean-up
/// job (the process died between the two) gets one.
pub(crate) async fn sweep(inner: &Arc<Inner>, recover: bool) -> Option<DateTime<Utc>> {
    if !recover {
        return end_due(inner).await;
    }
    let now = inner.clock.now();
    let mut next: Option<DateTime<Utc>> = None;
    let mut due = Vec::new();
    let mut closing = Vec::new();
    match inner.store.list_live_access().await {
        Ok(grants) => {
            for g in grants {
                let key = GrantKey::Access(g.id);
                if g.status.is_live() {
                    if g.expires_at <= now {
                        due.push(key);
                    } else {
                        next = Some(next.map_or(g.expires_at, |n| n.min(g.expires_at)));
                    }
                } else {
                    closing.push((g.org_id, g.router_id, key, g.revoked_early));
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "expiry sweep could not list transient access"),
    }
    match inner.store.list_live_forwards().await {
        Ok(grants) => {
            for g in grants {
                let key = GrantKey::Forward(g.id);
                if g.status.is_live() {
                    if g.expires_at <= now {
                        due.push(key);
                    } else {
                        next = Some(next.map_or(g.expires_at, |n| n.min(g.expires_at)));
                    }
                } else {
                    closing.push((g.org_id, g.router_id, key, g.revoked_early));
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "expiry sweep could not list transient forwards"),
    }
    for key in due {
        if let Err(e) = inner.end_grant(key, EndReason::Expired, None).await {
            tracing::warn!(grant = %key, error = %e, "could not end an expired grant");
        }
    }
    if recover {
        for (org, router, key, early) in closing {
            match inner.store.has_open_grant_job(&key.id(), ".end").await {
                Ok(false) => {
                    let reason = if early {
                        EndReason::Revoked
                    } else {
                        EndReason::Expired
                    };
                    inner.dataplane.close(key, reason);
                    if let Err(e) = inner.queue_end(org, router, key, reason).await {
                        tracing::warn!(grant = %key, error = %e, "could not queue a clean-up");
                    }
                }
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(grant = %key, error = %e, "could not check for a clean-up job")
                }
            }
        }
    }
    next
}

/// Ends every due grant; returns the next expiry among the others.
async fn end_due(inner: &Arc<Inner>) -> Option<DateTime<Utc>> {
    let (due, next) = match inner.store.expiring(inner.clock.now()).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "expiry could not read the grants due");
            return None;
        }
    };
    for key in due {
        if let Err(e) = inner.end_grant(key, EndReason::Expired, None).await {
            tracing::warn!(grant = %key, error = %e, "could not end an expired grant");
        }
    }
    next
}

/// Runs the expiry timer and sweep until shutdown.
pub(crate) async fn run(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut recover = true;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let next = sweep(&inner, recover).await;
        recover = false;
        let sweep_every = inner.config.sweep_interval;
        let wait = match next {
            Some(at) => (at - inner.clock.now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(sweep_every),
            None => sweep_every,
        };
        tokio::select! {
            _ = inner.expiry_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
}
