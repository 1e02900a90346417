//! Grant lists, the API's hottest read, kept as decoded records together with the
//! router's `grants_version` they were read at. The database raises that version in the
//! transaction of every insert or update of one of the router's grants, whoever writes
//! (this process, another server on the same PostgreSQL, the orchestrator), so a list
//! request reads the version first (one indexed row, in the same statement that
//! authorises the request) and reuses the records only when it has not moved: a list is
//! never staler than the database. Records are kept prepared for JSON ([`Prerendered`]);
//! `expired` and `time_to_expire` are written by each request, as of its time.
//!
//! Reading the version before the records matters: records read afterwards are at least
//! as new as the version they are filed under, so a later write always shows as a
//! different version.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use domain::{OrgId, RouterId};

use crate::render::Prerendered;

/// Lists kept per kind before the map is emptied (a bound, not an eviction policy:
/// emptying costs one query per list afterwards).
const MAX_ENTRIES: usize = 4096;

/// Which list of a router: the live grants, or with a window (limit, offset) of ended ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    org: OrgId,
    router: RouterId,
    ended: Option<(u32, u32)>,
}

struct Entry<T> {
    version: i64,
    records: Arc<Vec<T>>,
}

/// Decoded lists of one kind of grant, by router, each with the version it was read at.
pub struct Versioned<T> {
    inner: Mutex<HashMap<Key, Entry<T>>>,
}

impl<T> Default for Versioned<T> {
    fn default() -> Self {
        Self {
            inner: Mutex::new(HashMap::new()),
        }
    }
}

impl<T> Versioned<T> {
    /// The records of this list if they were read at `version`.
    pub fn get(
        &self,
        org: OrgId,
        router: RouterId,
        ended: Option<store::Page>,
        version: i64,
    ) -> Option<Arc<Vec<T>>> {
        let map = self.inner.lock().ok()?;
        map.get(&key(org, router, ended))
            .filter(|e| e.version == version)
            .map(|e| e.records.clone())
    }

    /// Files records read after the router's grants version was `version`.
    pub fn put(
        &self,
        org: OrgId,
        router: RouterId,
        ended: Option<store::Page>,
        version: i64,
        records: Arc<Vec<T>>,
    ) {
        if let Ok(mut map) = self.inner.lock() {
            if map.len() >= MAX_ENTRIES {
                map.clear();
            }
            let entry = map.entry(key(org, router, ended)).or_insert_with(|| Entry {
                version,
                records: records.clone(),
            });
            // A slower request must not replace newer records with older ones.
            if entry.version <= version {
                *entry = Entry { version, records };
            }
        }
    }

    fn forget(&self, router: RouterId) {
        if let Ok(mut map) = self.inner.lock() {
            map.retain(|k, _| k.router != router);
        }
    }
}

fn key(org: OrgId, router: RouterId, ended: Option<store::Page>) -> Key {
    Key {
        org,
        router,
        ended: ended.map(|p| (p.limit, p.offset)),
    }
}

/// The grant lists of both kinds. Cheap to clone.
#[derive(Clone, Default)]
pub struct ListCache {
    pub forwards: Arc<Versioned<Prerendered>>,
    pub access: Arc<Versioned<Prerendered>>,
}

impl ListCache {
    /// Drops every list of `router` early, to free memory. Never needed for correctness:
    /// a changed router has a new version, so its old lists are not used again.
    pub fn invalidate(&self, router: RouterId) {
        self.forwards.forget(router);
        self.access.forget(router);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_serve_only_their_version() {
        let c: Versioned<u32> = Versioned::default();
        let (org, router) = (OrgId::new(), RouterId::new());
        c.put(org, router, None, 7, Arc::new(vec![1, 2]));
        assert_eq!(c.get(org, router, None, 7).as_deref(), Some(&vec![1, 2]));
        assert!(
            c.get(org, router, None, 8).is_none(),
            "a new version reads anew"
        );
        assert!(
            c.get(OrgId::new(), router, None, 7).is_none(),
            "keyed by organisation"
        );
        let page = Some(store::Page {
            limit: 100,
            offset: 0,
        });
        assert!(c.get(org, router, page, 7).is_none(), "keyed by window");
        // Older records never replace newer ones.
        c.put(org, router, None, 9, Arc::new(vec![3]));
        c.put(org, router, None, 8, Arc::new(vec![4]));
        assert_eq!(c.get(org, router, None, 9).as_deref(), Some(&vec![3]));
        c.forget(router);
        assert!(c.get(org, router, None, 9).is_none());
    }
}
