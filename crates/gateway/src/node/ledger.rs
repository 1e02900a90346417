//! The node's protocol logic, sans I/O: the control sessions in their order, the grants
//! and peers the node holds, the tombstones of closed grants, and the numbered event
//! outbox with its acknowledgements. Every method takes the time it needs as an
//! argument and returns what to do ([`Step`]); the node's driver (`node`) does it with
//! the tunnels and the [`Gateway`](crate::Gateway) and reports back.
//!
//! Rules kept here:
//! - a session must open with `Hello` in [`PROTOCOL`]; anything else ends it;
//! - every `Down` is idempotent: an `Open` of an open grant is `Opened` with its
//!   address, a `Close` of a closed or unknown one leaves a tombstone and nothing else;
//! - a closed grant (closed by a server, by its deadline, or never seen but closed) is
//!   never opened again while its tombstone lasts: at least until its deadline and at
//!   least [`TOMBSTONE_MIN`] after it closed;
//! - events are numbered from 1 in the order they happen, held until a session
//!   acknowledges them, and sent to one session at a time, the oldest greeted one;
//!   when it ends, the next one gets every unacknowledged event again;
//! - the outbox is bounded for refusals and openings (a grant's first opening excepted,
//!   it is its `authorized_at`): beyond `capacity` they are dropped and counted; ends
//!   are always kept.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};

use chrono::{DateTime, Utc};
use control::msg::{
    CloseReason, Down, Event, GatewayState, GrantKey, GrantSpec, HeldGrant, HeldPeer, PROTOCOL,
    PeerSpec, RegionInfo, Target, Up,
};
use domain::{GatewayRunId, RegionId, RouterId};

/// How long a closed grant's key is remembered at least, past its close.
pub const TOMBSTONE_MIN: chrono::TimeDelta = chrono::TimeDelta::minutes(10);

/// Tombstones kept at most before a `Close` of a grant never held here is no longer
/// remembered (and counted): a server cannot grow the map without bound. A grant that
/// was held is always remembered.
pub const MAX_TOMBSTONES: usize = 262_144;

/// How often expired tombstones are swept (not at every frame: a resynchronisation
/// sends thousands).
const PRUNE_EVERY: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// One control stream, as the ledger numbers them (in the order they began).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

/// A region the node serves: its entry port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    pub port_min: u16,
    pub port_max: u16,
}

/// A grant the node holds open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub region: RegionId,
    pub port: u16,
    pub expires_at: DateTime<Utc>,
    pub target: Target,
    pub listen: SocketAddr,
}

/// A router admitted in a region's tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub region: RegionId,
    pub key: tunnel::PublicKey,
    pub address: Ipv4Addr,
}

/// What the driver is to do with one `Down`.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing to do (an idempotent repeat, an acknowledgement, `Synced`).
    Nothing,
    /// Send this to the session only.
    Reply(Up),
    /// Open the grant's port, then report with [`Ledger::opened`] or
    /// [`Ledger::open_failed`]-style reply.
    Open(GrantSpec),
    /// Move an open grant's deadline (the ledger already holds the new one).
    SetDeadline {
        key: GrantKey,
        expires_at: DateTime<Utc>,
    },
    /// An `Open` of a held grant with another deadline or target: move them (the ledger
    /// already holds the new ones), then send `reply`.
    Converge {
        key: GrantKey,
        region: RegionId,
        expires_at: Option<DateTime<Utc>>,
        target: Option<Target>,
        reply: Up,
    },
    /// Move an open grant's target.
    SetTarget {
        key: GrantKey,
        region: RegionId,
        target: Target,
    },
    /// Close an open grant and kill its connections (the ledger already forgot it and
    /// keeps its tombstone).
    Close { key: GrantKey, reason: CloseReason },
    /// Admit a router's key (after removing `replace`, the key it had, when that is
    /// another key or region); report with [`Ledger::peer_admitted`].
    UpsertPeer {
        spec: PeerSpec,
        peer: Peer,
        replace: Option<Peer>,
    },
    /// Remove a router's key from its tunnel (the ledger already forgot it).
    RemovePeer { router: RouterId, peer: Peer },
    /// Answer with a certificate request made from the key held here.
    RenewCertificate,
    /// Check, keep and serve a renewed certificate.
    InstallCertificate { certificate_pem: String },
}

#[derive(Debug, Clone, Default)]
struct Session {
    server: Option<String>,
    synced: bool,
}

/// The node's bookkeeping.
#[derive(Debug)]
pub struct Ledger {
    regions: BTreeMap<RegionId, Served>,
    grants: BTreeMap<GrantKey, Held>,
    tombstones: HashMap<GrantKey, DateTime<Utc>>,
    /// Closes of grants never held here not remembered, [`MAX_TOMBSTONES`] being kept.
    tombstones_refused: u64,
    next_prune: Option<DateTime<Utc>>,
    peers: BTreeMap<RouterId, Peer>,
    outbox: VecDeque<(u64, Event)>,
    next_seq: u64,
    capacity: usize,
    /// Droppable events in the outbox now.
    droppable: usize,
    dropped: u64,
    sessions: BTreeMap<SessionId, Session>,
    next_session: u64,
    /// The session events go to, and the next seq it is to get.
    holder: Option<(SessionId, u64)>,
    last_session_end: Option<DateTime<Utc>>,
}

/// Whether an event may be dropped when the outbox is full: refusals and openings but a
/// grant's first. Ends never are.
pub fn droppable(event: &Event) -> bool {
    match event {
        Event::ConnectionRefused { .. } => true,
        Event::ConnectionOpened { first, .. } => !first,
        Event::ConnectionClosed { .. } | Event::GrantClosed { .. } => false,
    }
}

impl Ledger {
    /// A ledger for these regions, with room for `capacity` droppable events.
    pub fn new(regions: impl IntoIterator<Item = (RegionId, Served)>, capacity: usize) -> Self {
        Self {
            regions: regions.into_iter().collect(),
            grants: BTreeMap::new(),
            tombstones: HashMap::new(),
            tombstones_refused: 0,
            next_prune: None,
            peers: BTreeMap::new(),
            outbox: VecDeque::new(),
            next_seq: 1,
            capacity: capacity.max(1),
            droppable: 0,
            dropped: 0,
            sessions: BTreeMap::new(),
            next_session: 1,
            holder: None,
            last_session_end: None,
        }
    }

    // ---- sessions ----

    /// A control stream began; it must say `Hello` next.
    pub fn begin_session(&mut self) -> SessionId {
        let id = SessionId(self.next_session);
        self.next_session += 1;
        id
    }

    /// The session's first frame. `Ok` (the session counts from now on and is to be
    /// sent the node's [`GatewayState`]) or why it is refused (an `Up::Refused` to send
    /// before ending it).
    pub fn hello(&mut self, id: SessionId, first: &Down) -> Result<(), String> {
        match first {
            Down::Hello { protocol, server } if *protocol == PROTOCOL => {
                self.sessions.insert(
                    id,
                    Session {
                        server: Some(server.clone()),
                        synced: false,
                    },
                );
                Ok(())
            }
            Down::Hello { protocol, .. } => Err(format!(
                "protocol {protocol} is not spoken here (this gateway speaks {PROTOCOL})"
            )),
            _ => Err("the first frame of a control stream must be hello".into()),
        }
    }

    /// The session ended (its stream closed, or the node is stopping). Unacknowledged
    /// events go to the next session.
    pub fn end_session(&mut self, id: SessionId, now: DateTime<Utc>) {
        if self.sessions.remove(&id).is_some() {
            self.last_session_end = Some(now);
        }
        if self.holder.is_some_and(|(h, _)| h == id) {
            self.holder = None;
        }
    }

    /// Sessions that said hello and have not ended.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Sessions that sent `Synced`.
    pub fn sessions_synced(&self) -> usize {
        self.sessions.values().filter(|s| s.synced).count()
    }

    /// When the last session ended, if one did.
    pub fn last_session_end(&self) -> Option<DateTime<Utc>> {
        self.last_session_end
    }

    /// The server names of the live sessions, oldest first.
    pub fn servers(&self) -> Vec<String> {
        self.sessions
            .values()
            .filter_map(|s| s.server.clone())
            .collect()
    }

    /// What the node holds, for a new session's first answer.
    pub fn state(
        &self,
        gateway: String,
        boot: GatewayRunId,
        regions: Vec<RegionInfo>,
    ) -> GatewayState {
        GatewayState {
            protocol: PROTOCOL,
            gateway,
            boot,
            regions,
            grants: self
                .grants
                .iter()
                .map(|(key, h)| HeldGrant {
                    key: *key,
                    region: h.region,
                    port: h.port,
                    expires_at: h.expires_at,
                })
                .collect(),
            peers: self
                .peers
                .iter()
                .map(|(router, p)| HeldPeer {
                    router: *router,
                    region: p.region,
                    public_key: p.key.to_base64(),
                })
                .collect(),
            next_seq: self.first_unacked(),
        }
    }

    // ---- desired state ----

    /// What to do with one `Down` of a greeted session.
    pub fn decide(&mut self, id: SessionId, down: Down, now: DateTime<Utc>) -> Step {
        if self.next_prune.is_none_or(|at| now >= at) {
            self.prune(now);
            self.next_prune = Some(now + PRUNE_EVERY);
        }
        match down {
            Down::Hello { .. } => Step::Reply(Up::Refused {
                error: "hello was already received on this stream".into(),
            }),
            Down::UpsertPeer(spec) => self.upsert_peer(spec),
            Down::RemovePeer { router } => match self.peers.remove(&router) {
                Some(peer) => Step::RemovePeer { router, peer },
                None => Step::Nothing,
            },
            Down::Open(spec) => self.open(spec, now),
            Down::SetDeadline { key, expires_at } => match self.grants.get_mut(&key) {
                Some(held) => {
                    held.expires_at = expires_at;
                    Step::SetDeadline { key, expires_at }
                }
                None => Step::Nothing,
            },
            Down::SetTarget { key, target } => match self.grants.get_mut(&key) {
                Some(held) => {
                    held.target = target;
                    Step::SetTarget {
                        key,
                        region: held.region,
                        target,
                    }
                }
                None => Step::Nothing,
            },
            Down::Close { key, reason } => match self.grants.remove(&key) {
                Some(held) => {
                    self.bury(key, Some(held.expires_at), now);
                    Step::Close { key, reason }
                }
                None => {
                    self.bury(key, None, now);
                    Step::Nothing
                }
            },
            Down::Synced => {
                if let Some(s) = self.sessions.get_mut(&id) {
                    s.synced = true;
                }
                Step::Nothing
            }
            Down::Ack { seq } => {
                self.ack(seq);
                Step::Nothing
            }
            Down::RenewCertificate => Step::RenewCertificate,
            Down::Certificate { certificate_pem } => Step::InstallCertificate { certificate_pem },
        }
    }

    fn upsert_peer(&mut self, spec: PeerSpec) -> Step {
        if !self.regions.contains_key(&spec.region) {
            return Step::Reply(Up::Refused {
                error: format!(
                    "router {}: region {} is not served here",
                    spec.router, spec.region
                ),
            });
        }
        let key: tunnel::PublicKey = match spec.public_key.parse() {
            Ok(key) => key,
            Err(e) => {
                return Step::Reply(Up::Refused {
                    error: format!("router {}: {e}", spec.router),
                });
            }
        };
        let peer = Peer {
            region: spec.region,
            key,
            address: spec.address,
        };
        let replace = self
            .peers
            .get(&spec.router)
            .copied()
            .filter(|old| old.key != key || old.region != spec.region);
        Step::UpsertPeer {
            spec,
            peer,
            replace,
        }
    }

    /// The driver admitted (`Ok`) a peer of [`Step::UpsertPeer`], or not: then the
    /// router is no longer held (its old key, if replaced, is gone from the tunnel).
    pub fn peer_admitted(&mut self, router: RouterId, peer: Peer, admitted: bool, replaced: bool) {
        if admitted {
            self.peers.insert(router, peer);
        } else if replaced {
            self.peers.remove(&router);
        }
    }

    /// The router holding `address` in `region`, if admitted.
    pub fn peer_at(&self, region: RegionId, address: Ipv4Addr) -> Option<RouterId> {
        self.peers
            .iter()
            .find(|(_, p)| p.region == region && p.address == address)
            .map(|(r, _)| *r)
    }

    /// Every admitted peer.
    pub fn peers(&self) -> impl Iterator<Item = (RouterId, Peer)> + '_ {
        self.peers.iter().map(|(r, p)| (*r, *p))
    }

    fn open(&mut self, spec: GrantSpec, now: DateTime<Utc>) -> Step {
        let key = spec.key;
        let failed = |error: String| Step::Reply(Up::OpenFailed { key, error });
        if let Some(held) = self.grants.get_mut(&key) {
            // Held already: converge on the Open's deadline and target (a SetDeadline or
            // SetTarget this node missed while cut off), answer with its address.
            let expires_at = (held.expires_at != spec.expires_at).then_some(spec.expires_at);
            let target = (held.target != spec.target).then_some(spec.target);
            held.expires_at = spec.expires_at;
            held.target = spec.target;
            let reply = if spec.expires_at <= now {
                Up::OpenFailed {
                    key,
                    error: "the deadline has already passed".into(),
                }
            } else {
                Up::Opened {
                    key,
                    listen: held.listen,
                }
            };
            if expires_at.is_none() && target.is_none() {
                return Step::Reply(reply);
            }
            return Step::Converge {
                key,
                region: held.region,
                expires_at,
                target,
                reply,
            };
        }
        if self.tombstones.contains_key(&key) {
            return failed(
                "the grant was closed here; a closed grant is never opened again".into(),
            );
        }
        let Some(served) = self.regions.get(&spec.region) else {
            return failed(format!("region {} is not served here", spec.region));
        };
        if !(served.port_min..=served.port_max).contains(&spec.port) {
            return failed(format!(
                "port {} is outside the region's range {}-{}",
                spec.port, served.port_min, served.port_max
            ));
        }
        if spec.expires_at <= now {
            return failed("the deadline has already passed".into());
        }
        Step::Open(spec)
    }

    /// The driver opened a grant of [`Step::Open`]: it is held from now on.
    pub fn opened(&mut self, spec: &GrantSpec, listen: SocketAddr) {
        self.grants.insert(
            spec.key,
            Held {
                region: spec.region,
                port: spec.port,
                expires_at: spec.expires_at,
                target: spec.target,
                listen,
            },
        );
    }

    /// A grant ended by itself (its deadline) or by the node's shutdown: it is no
    /// longer held, and never opened again while its tombstone lasts.
    pub fn grant_ended(&mut self, key: GrantKey, now: DateTime<Utc>) {
        let expires_at = self.grants.remove(&key).map(|h| h.expires_at);
        self.bury(key, expires_at, now);
    }

    /// A grant held open.
    pub fn grant(&self, key: GrantKey) -> Option<&Held> {
        self.grants.get(&key)
    }

    /// Grants held open.
    pub fn grants(&self) -> usize {
        self.grants.len()
    }

    /// Whether `key` was closed here and may not be opened again.
    pub fn is_buried(&self, key: GrantKey) -> bool {
        self.tombstones.contains_key(&key)
    }

    /// Tombstones kept now.
    pub fn tombstones(&self) -> usize {
        self.tombstones.len()
    }

    /// Closes of grants never held here that were not remembered, the map being full.
    pub fn tombstones_refused(&self) -> u64 {
        self.tombstones_refused
    }

    fn bury(&mut self, key: GrantKey, expires_at: Option<DateTime<Utc>>, now: DateTime<Utc>) {
        if expires_at.is_none()
            && self.tombstones.len() >= MAX_TOMBSTONES
            && !self.tombstones.contains_key(&key)
        {
            self.tombstones_refused += 1;
            return;
        }
        let until = expires_at.map_or(now + TOMBSTONE_MIN, |e| e.max(now + TOMBSTONE_MIN));
        let entry = self.tombstones.entry(key).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// Forgets tombstones whose time has passed.
    pub fn prune(&mut self, now: DateTime<Utc>) {
        self.tombstones.retain(|_, until| *until > now);
    }

    // ---- events ----

    /// Numbers and holds an event: `Some(seq)`, or `None` when it was dropped (a
    /// droppable event with the outbox full).
    pub fn push(&mut self, event: Event) -> Option<u64> {
        let drop_it = droppable(&event);
        if drop_it {
            if self.droppable >= self.capacity {
                self.dropped += 1;
                return None;
            }
            self.droppable += 1;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.outbox.push_back((seq, event));
        Some(seq)
    }

    /// Every event up to `seq` is recorded: forget them. An acknowledgement beyond what
    /// was numbered covers what was numbered.
    pub fn ack(&mut self, seq: u64) {
        while let Some((s, event)) = self.outbox.front() {
            if *s > seq {
                break;
            }
            if droppable(event) {
                self.droppable = self.droppable.saturating_sub(1);
            }
            self.outbox.pop_front();
        }
    }

    /// The events `id` is to send now, at most `max`: none unless it is the oldest
    /// greeted session. A session that just became the one gets every unacknowledged
    /// event from the first.
    pub fn take_for(&mut self, id: SessionId, max: usize) -> Vec<Up> {
        if self.sessions.keys().next() != Some(&id) {
            return Vec::new();
        }
        let first = self.first_unacked();
        let cursor = match self.holder {
            Some((h, cursor)) if h == id => cursor.max(first),
            _ => first,
        };
        // Numbers in the outbox are contiguous (a dropped event never gets one).
        let skip = usize::try_from(cursor - first)
            .unwrap_or(usize::MAX)
            .min(self.outbox.len());
        let out: Vec<Up> = self
            .outbox
            .range(skip..)
            .take(max)
            .map(|(seq, event)| Up::Event {
                seq: *seq,
                event: event.clone(),
            })
            .collect();
        let next = match out.last() {
            Some(Up::Event { seq, .. }) => seq + 1,
            _ => cursor,
        };
        self.holder = Some((id, next));
        out
    }

    /// The first event not yet acknowledged (the next to be numbered if none is held).
    pub fn first_unacked(&self) -> u64 {
        self.outbox.front().map_or(self.next_seq, |(s, _)| *s)
    }

    /// Events held for want of an acknowledgement.
    pub fn pending(&self) -> u64 {
        self.outbox.len() as u64
    }

    /// Droppable events dropped for want of room.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use control::msg::{Refusal, Sources};
    use domain::AccessId;

    fn t(s: &str) -> DateTime<Utc> {
        format!("2026-01-01T{s}Z").parse().unwrap()
    }

    fn region() -> RegionId {
        RegionId::new()
    }

    fn ledger(r: RegionId) -> Ledger {
        Ledger::new(
            [(
                r,
                Served {
                    port_min: 40000,
                    port_max: 40999,
                },
            )],
            3,
        )
    }

    fn hello(l: &mut Ledger) -> SessionId {
        let id = l.begin_session();
        l.hello(
            id,
            &Down::Hello {
                protocol: PROTOCOL,
                server: format!("s{}", id.0),
            },
        )
        .unwrap();
        id
    }

    fn spec(r: RegionId, expires_at: DateTime<Utc>) -> GrantSpec {
        GrantSpec {
            key: GrantKey::Access(AccessId::new()),
            region: r,
            port: 40001,
            target: Target::Direct {
                address: "127.0.0.1:22".parse().unwrap(),
            },
            sources: Sources::default(),
            expires_at,
        }
    }

    fn refused(key: GrantKey) -> Event {
        Event::ConnectionRefused {
            key,
            source: "203.0.113.1:5000".parse().unwrap(),
            at: t("12:00:00"),
            refusal: Refusal::SourceNotAllowed,
        }
    }

    fn closed(key: GrantKey) -> Event {
        Event::GrantClosed {
            key,
            at: t("12:00:00"),
            reason: "revoked".into(),
            connections_killed: 0,
        }
    }

    fn seqs(ups: &[Up]) -> Vec<u64> {
        ups.iter()
            .map(|u| match u {
                Up::Event { seq, .. } => *seq,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_session_must_say_hello_in_our_protocol() {
        let mut l = ledger(region());
        let id = l.begin_session();
        let wrong = Down::Hello {
            protocol: PROTOCOL + 1,
            server: "s".into(),
        };
        let error = l.hello(id, &wrong).unwrap_err();
        assert!(error.contains("not spoken here"), "{error}");
        let error = l.hello(id, &Down::Synced).unwrap_err();
        assert!(error.contains("must be hello"), "{error}");
        assert_eq!(l.sessions(), 0);
        hello(&mut l);
        assert_eq!(l.sessions(), 1);
    }

    #[test]
    fn open_is_idempotent_and_refused_when_it_cannot_hold() {
        let r = region();
        let mut l = ledger(r);
        let s = hello(&mut l);
        let now = t("12:00:00");
        let g = spec(r, t("13:00:00"));
        let Step::Open(asked) = l.decide(s, Down::Open(g.clone()), now) else {
            panic!()
        };
        let listen: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        l.opened(&asked, listen);
        // Again, from this or another session: Opened at once, no second open.
        let s2 = hello(&mut l);
        for id in [s, s2] {
            assert_eq!(
                l.decide(id, Down::Open(g.clone()), now),
                Step::Reply(Up::Opened { key: g.key, listen })
            );
        }
        let state = l.state("gw".into(), GatewayRunId::new(), vec![]);
        assert_eq!(state.grants.len(), 1);
        assert_eq!(state.grants[0].port, 40001);

        let failed = |step: Step| match step {
            Step::Reply(Up::OpenFailed { error, .. }) => error,
            other => panic!("{other:?}"),
        };
        let past = spec(r, t("11:59:59"));
        assert!(failed(l.decide(s, Down::Open(past), now)).contains("already passed"));
        let elsewhere = spec(region(), t("13:00:00"));
        assert!(failed(l.decide(s, Down::Open(elsewhere), now)).contains("not served"));
        let mut outside = spec(r, t("13:00:00"));
        outside.port = 80;
        assert!(failed(l.decide(s, Down::Open(outside), now)).contains("outside"));
    }

    #[test]
    fn a_closed_grant_is_never_reopened_while_its_tombstone_lasts() {
        let r = region();
        let mut l = ledger(r);
        let s = hello(&mut l);
        let now = t("12:00:00");
        // Its deadline is far: the tombstone lasts until then.
        let g = spec(r, t("14:00:00"));
        let Step::Open(asked) = l.decide(s, Down::Open(g.clone()), now) else {
            panic!()
        };
        l.opened(&asked, "127.0.0.1:40001".parse().unwrap());
        let close = Down::Close {
            key: g.key,
            reason: CloseReason::Revoked,
        };
        assert_eq!(
            l.decide(s, close.clone(), now),
            Step::Close {
                key: g.key,
                reason: CloseReason::Revoked
            }
        );
        // A second close is nothing; the grant is gone from the state.
        assert_eq!(l.decide(s, close, now), Step::Nothing);
        assert!(
            l.state("gw".into(), GatewayRunId::new(), vec![])
                .grants
                .is_empty()
        );
        for at in ["12:00:01", "13:00:00", "13:59:59"] {
            assert!(
                matches!(
                    l.decide(s, Down::Open(g.clone()), t(at)),
                    Step::Reply(Up::OpenFailed { .. })
                ),
                "{at}"
            );
        }
        // After its deadline (and ten minutes) the key is forgotten: but the deadline has
        // passed too, so it still cannot open.
        assert!(matches!(
            l.decide(s, Down::Open(g.clone()), t("14:00:01")),
            Step::Reply(Up::OpenFailed { .. })
        ));
        assert!(!l.is_buried(g.key));

        // A grant closed before it was ever seen here is buried for ten minutes.
        let unseen = spec(r, t("12:05:00"));
        let close = Down::Close {
            key: unseen.key,
            reason: CloseReason::Revoked,
        };
        assert_eq!(l.decide(s, close, now), Step::Nothing);
        assert!(matches!(
            l.decide(s, Down::Open(unseen.clone()), t("12:04:00")),
            Step::Reply(Up::OpenFailed { error, .. }) if error.contains("closed")
        ));
        l.prune(t("12:09:59"));
        assert!(l.is_buried(unseen.key));
        l.prune(t("12:10:00"));
        assert!(!l.is_buried(unseen.key));

        // A grant that expired by itself: buried as well.
        let g = spec(r, t("12:30:00"));
        let Step::Open(asked) = l.decide(s, Down::Open(g.clone()), now) else {
            panic!()
        };
        l.opened(&asked, "127.0.0.1:40001".parse().unwrap());
        l.grant_ended(g.key, t("12:30:00"));
        assert_eq!(l.grants(), 0);
        assert!(l.is_buried(g.key));
    }

    #[test]
    fn an_open_of_a_held_grant_converges_on_its_deadline_and_target() {
        let r = region();
        let mut l = ledger(r);
        let s = hello(&mut l);
        let now = t("12:00:00");
        let g = spec(r, t("13:00:00"));
        let Step::Open(asked) = l.decide(s, Down::Open(g.clone()), now) else {
            panic!()
        };
        let listen: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        l.opened(&asked, listen);
        let mut moved = g.clone();
        moved.expires_at = t("14:00:00");
        moved.target = Target::Tunnel {
            address: Ipv4Addr::new(100, 64, 0, 9),
            port: 22,
        };
        assert_eq!(
            l.decide(s, Down::Open(moved.clone()), now),
            Step::Converge {
                key: g.key,
                region: r,
                expires_at: Some(moved.expires_at),
                target: Some(moved.target),
                reply: Up::Opened { key: g.key, listen }
            }
        );
        assert_eq!(l.grant(g.key).unwrap().expires_at, moved.expires_at);
        // Once converged, the same Open is a plain answer.
        assert_eq!(
            l.decide(s, Down::Open(moved.clone()), now),
            Step::Reply(Up::Opened { key: g.key, listen })
        );
        // Moved into the past: the port is to close, and the answer says why.
        let mut past = moved.clone();
        past.expires_at = t("11:00:00");
        let Step::Converge {
            reply, expires_at, ..
        } = l.decide(s, Down::Open(past), now)
        else {
            panic!()
        };
        assert_eq!(expires_at, Some(t("11:00:00")));
        assert!(matches!(reply, Up::OpenFailed { .. }));
    }

    #[test]
    fn tombstones_of_unseen_grants_are_bounded_but_held_grants_always_buried() {
        let r = region();
        let mut l = ledger(r);
        let s = hello(&mut l);
        let now = t("12:00:00");
        for _ in 0..MAX_TOMBSTONES {
            l.bury(GrantKey::Access(AccessId::new()), None, now);
        }
        let unseen = GrantKey::Access(AccessId::new());
        let close = |key| Down::Close {
            key,
            reason: CloseReason::Revoked,
        };
        l.decide(s, close(unseen), now);
        assert!(!l.is_buried(unseen));
        assert_eq!(l.tombstones_refused(), 1);
        let g = spec(r, t("13:00:00"));
        let Step::Open(asked) = l.decide(s, Down::Open(g.clone()), now) else {
            panic!()
        };
        l.opened(&asked, "127.0.0.1:40001".parse().unwrap());
        l.decide(s, close(g.key), now);
        assert!(l.is_buried(g.key));
        // Ten minutes on, the sweep empties the map.
        l.decide(s, Down::Synced, t("12:10:01"));
        assert_eq!(
            l.tombstones(),
            1,
            "only the held grant's, until its deadline"
        );
    }

    #[test]
    fn deadlines_and_targets_follow_only_held_grants() {
        let r = region();
        let mut l = ledger(r);
        let s = hello(&mut l);
        let now = t("12:00:00");
        let g = spec(r, t("13:00:00"));
        let later = t("15:00:00");
        let move_it = Down::SetDeadline {
            key: g.key,
            expires_at: later,
        };
        assert_eq!(l.decide(s, move_it.clone(), now), Step::Nothing);
        let Step::Open(asked) = l.decide(s, Down::Open(g.clone()), now) else {
            panic!()
        };
        l.opened(&asked, "127.0.0.1:40001".parse().unwrap());
        assert_eq!(
            l.decide(s, move_it, now),
            Step::SetDeadline {
                key: g.key,
                expires_at: later
            }
        );
        assert_eq!(l.grant(g.key).unwrap().expires_at, later);
        let target = Target::Tunnel {
            address: Ipv4Addr::new(100, 64, 0, 9),
            port: 22,
        };
        assert_eq!(
            l.decide(s, Down::SetTarget { key: g.key, target }, now),
            Step::SetTarget {
                key: g.key,
                region: r,
                target
            }
        );
        // Closed after the move: the tombstone lasts until the new deadline.
        l.decide(
            s,
            Down::Close {
                key: g.key,
                reason: CloseReason::Expired,
            },
            now,
        );
        l.prune(t("14:59:00"));
        assert!(l.is_buried(g.key));
    }

    #[test]
    fn peers_are_checked_and_replaced() {
        let r = region();
        let mut l = ledger(r);
        let s = hello(&mut l);
        let now = t("12:00:00");
        let router = RouterId::new();
        let key = tunnel::PrivateKey::generate().unwrap().public_key();
        let peer = |region, public_key: String| PeerSpec {
            router,
            region,
            public_key,
            address: Ipv4Addr::new(100, 64, 0, 9),
            endpoint: None,
        };
        let refused = |step: Step| match step {
            Step::Reply(Up::Refused { error }) => error,
            other => panic!("{other:?}"),
        };
        assert!(
            refused(l.decide(s, Down::UpsertPeer(peer(region(), key.to_base64())), now))
                .contains("not served")
        );
        assert!(
            refused(l.decide(s, Down::UpsertPeer(peer(r, "nope".into())), now)).contains("base64")
        );
        let Step::UpsertPeer {
            peer: p, replace, ..
        } = l.decide(s, Down::UpsertPeer(peer(r, key.to_base64())), now)
        else {
            panic!()
        };
        assert_eq!(replace, None);
        l.peer_admitted(router, p, true, false);
        assert_eq!(l.peer_at(r, Ipv4Addr::new(100, 64, 0, 9)), Some(router));
        // The same key again replaces nothing; a new key replaces the old.
        let Step::UpsertPeer { replace, .. } =
            l.decide(s, Down::UpsertPeer(peer(r, key.to_base64())), now)
        else {
            panic!()
        };
        assert_eq!(replace, None);
        let key2 = tunnel::PrivateKey::generate().unwrap().public_key();
        let Step::UpsertPeer { replace, .. } =
            l.decide(s, Down::UpsertPeer(peer(r, key2.to_base64())), now)
        else {
            panic!()
        };
        assert_eq!(replace.map(|p| p.key), Some(key));
        assert!(matches!(
            l.decide(s, Down::RemovePeer { router }, now),
            Step::RemovePeer { .. }
        ));
        assert_eq!(l.decide(s, Down::RemovePeer { router }, now), Step::Nothing);
        assert_eq!(l.peer_at(r, Ipv4Addr::new(100, 64, 0, 9)), None);
    }

    #[test]
    fn events_go_to_the_oldest_session_and_are_resent_to_the_next_until_acked() {
        let r = region();
        let mut l = ledger(r);
        let key = GrantKey::Access(AccessId::new());
        // Before any session: held, numbered from 1.
        assert_eq!(l.push(closed(key)), Some(1));
        let a = hello(&mut l);
        let b = hello(&mut l);
        assert_eq!(l.push(closed(key)), Some(2));
        assert!(
            l.take_for(b, 10).is_empty(),
            "only the oldest session gets events"
        );
        assert_eq!(seqs(&l.take_for(a, 10)), [1, 2]);
        assert!(l.take_for(a, 10).is_empty(), "sent once");
        l.push(closed(key));
        assert_eq!(seqs(&l.take_for(a, 10)), [3]);
        // An ack from any session counts.
        l.decide(b, Down::Ack { seq: 1 }, t("12:00:00"));
        assert_eq!(l.first_unacked(), 2);
        assert_eq!(l.pending(), 2);
        // a drops: b gets everything unacknowledged again.
        l.end_session(a, t("12:00:01"));
        assert_eq!(l.last_session_end(), Some(t("12:00:01")));
        assert_eq!(seqs(&l.take_for(b, 1)), [2]);
        assert_eq!(seqs(&l.take_for(b, 10)), [3]);
        l.decide(b, Down::Ack { seq: 99 }, t("12:00:02"));
        assert_eq!(l.pending(), 0);
        assert_eq!(l.first_unacked(), 4);
        let state = l.state("gw".into(), GatewayRunId::new(), vec![]);
        assert_eq!(state.next_seq, 4);
        // A session that arrives after the last one ended gets what is pending.
        l.push(closed(key));
        l.end_session(b, t("12:00:03"));
        let c = hello(&mut l);
        assert_eq!(seqs(&l.take_for(c, 10)), [4]);
    }

    #[test]
    fn a_full_outbox_drops_refusals_and_openings_but_never_ends() {
        let mut l = ledger(region());
        let key = GrantKey::Access(AccessId::new());
        let opened = |first| Event::ConnectionOpened {
            key,
            id: 1,
            source: "203.0.113.1:5000".parse().unwrap(),
            at: t("12:00:00"),
            first,
        };
        for _ in 0..5 {
            l.push(refused(key));
        }
        assert!(l.push(opened(false)).is_none());
        assert!(l.push(opened(true)).is_some(), "a first opening is kept");
        for _ in 0..4 {
            assert!(l.push(closed(key)).is_some());
        }
        assert_eq!(l.dropped(), 3);
        assert_eq!(l.pending(), 3 + 1 + 4);
        // Numbers stay contiguous: dropped events never got one.
        let s = hello(&mut l);
        assert_eq!(seqs(&l.take_for(s, 100)), (1..=8).collect::<Vec<_>>());
        // Acknowledged refusals make room again.
        l.ack(1);
        assert!(l.push(refused(key)).is_some());
        assert!(l.push(refused(key)).is_none());
    }
}
