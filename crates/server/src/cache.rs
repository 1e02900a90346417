//! A short-lived cache of rendered grant lists, the API's hottest read. An entry is used
//! only within the same wall-clock second it was rendered in (so `time_to_expire` and
//! `expired` are never more than a second old) and is dropped at once when this process
//! changes a grant or router. Writes by other processes sharing the database (several
//! servers on PostgreSQL, the orchestrator) show within one second.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use domain::{OrgId, RouterId};

/// Longest an entry is trusted, whatever the clock says.
const TTL: Duration = Duration::from_secs(1);
/// Entries kept before the map is swept.
const MAX_ENTRIES: usize = 4096;

/// Which list of a router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    Forwards { all: bool },
    Access { all: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    org: OrgId,
    router: RouterId,
    kind: ListKind,
}

struct Entry {
    body: Bytes,
    /// The unix second the body was rendered for.
    second: i64,
    stored: Instant,
}

/// Rendered JSON bodies of grant lists.
#[derive(Clone, Default)]
pub struct ListCache {
    inner: Arc<Mutex<HashMap<Key, Entry>>>,
}

impl ListCache {
    /// The body rendered for `second`, if still fresh.
    pub fn get(&self, org: OrgId, router: RouterId, kind: ListKind, second: i64) -> Option<Bytes> {
        let map = self.inner.lock().ok()?;
        map.get(&Key { org, router, kind })
            .filter(|e| e.second == second && e.stored.elapsed() < TTL)
            .map(|e| e.body.clone())
    }

    pub fn put(&self, org: OrgId, router: RouterId, kind: ListKind, second: i64, body: Bytes) {
        if let Ok(mut map) = self.inner.lock() {
            if map.len() >= MAX_ENTRIES {
                map.retain(|_, e| e.stored.elapsed() < TTL);
            }
            map.insert(
                Key { org, router, kind },
                Entry {
                    body,
                    second,
                    stored: Instant::now(),
                },
            );
        }
    }

    /// Forgets every list of `router`: called by each handler that changes it or its grants.
    pub fn invalidate(&self, router: RouterId) {
        if let Ok(mut map) = self.inner.lock() {
            map.retain(|k, _| k.router != router);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_within_their_second_until_invalidated() {
        let c = ListCache::default();
        let (org, router) = (OrgId::new(), RouterId::new());
        let kind = ListKind::Forwards { all: false };
        c.put(org, router, kind, 100, Bytes::from_static(b"[]"));
        assert_eq!(c.get(org, router, kind, 100).as_deref(), Some(&b"[]"[..]));
        assert!(
            c.get(org, router, kind, 101).is_none(),
            "a new second renders anew"
        );
        assert!(
            c.get(OrgId::new(), router, kind, 100).is_none(),
            "keyed by organisation"
        );
        assert!(
            c.get(org, router, ListKind::Access { all: false }, 100)
                .is_none()
        );
        c.invalidate(router);
        assert!(c.get(org, router, kind, 100).is_none());
    }
}
