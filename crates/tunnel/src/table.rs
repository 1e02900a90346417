//! The peers table: WireGuard's responder side for many peers on one UDP socket, sans I/O.
//!
//! [`PeerTable::receive`] takes a datagram, its source and the time, and says what to do:
//! send a reply, hand an IP packet to the local stack, or nothing (and a counter says
//! why). [`PeerTable::encapsulate`] turns an IP packet for a peer's tunnel address into a
//! datagram and its destination; [`PeerTable::update_timers`] runs WireGuard's timers.
//! No sockets and no clock: the driver (or a test) passes both in.
//!
//! Each peer is one [`boringtun::noise::Tunn`], found by its public key for a handshake
//! initiation (after the MAC check and the rate limiter, so a flood costs no
//! Diffie-Hellman) and by its 24-bit index for everything else. The gateway does not
//! initiate: a handshake initiation that a `Tunn`'s timers want to send is dropped and
//! counted, so a router behind NAT starts the exchange. The one exception is
//! [`PeerTable::resume`]: after a gateway restart, a peer whose last endpoint the caller
//! remembers is sent an initiation there (and its retries, for [`RESUME_WINDOW`]), so a
//! router whose NAT mapping its keepalives still hold open is back in a second rather
//! than at its next rekey, up to two minutes later.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use ipnet::Ipv4Net;

use crate::error::PeerError;
use crate::key::{PrivateKey, PublicKey};

/// How long a resumed peer's handshake is retried (WireGuard's `REKEY_ATTEMPT_TIME`).
pub const RESUME_WINDOW: Duration = Duration::from_secs(90);

/// WireGuard message types, the first byte of every datagram.
const MSG_HANDSHAKE_INIT: u8 = 1;
const MSG_HANDSHAKE_RESPONSE: u8 = 2;
const MSG_COOKIE_REPLY: u8 = 3;
/// The largest per-packet overhead of a data message (header + tag).
pub const DATA_OVERHEAD: usize = 32;
/// The smallest buffer [`PeerTable::encapsulate`] and [`PeerTable::update_timers`] accept:
/// a handshake initiation is 148 bytes.
pub const MIN_OUT_BUFFER: usize = 148;
/// Peer indices are 24 bits: boringtun keeps the low 8 bits of a session index for itself.
const INDEX_MASK: u32 = 0x00ff_ffff;

/// How the table is set up.
#[derive(Debug, Clone)]
pub struct TableConfig {
    pub private_key: PrivateKey,
    /// The gateway's own tunnel address: the only inner destination accepted from peers.
    pub address: Ipv4Addr,
    /// The region's tunnel prefix: every peer's address lies inside it.
    pub prefix: Ipv4Net,
    /// At most this many peers; adding one more is refused and counted.
    pub max_peers: usize,
    /// Handshake messages per second, over all peers, before the gateway answers with
    /// cookie replies (WireGuard's "under load"): a flood then costs the sender a round
    /// trip per attempt and costs the gateway no Diffie-Hellman.
    pub handshakes_per_second: u64,
}

impl TableConfig {
    /// The defaults: 65,536 peers, 2,000 handshakes per second before cookies.
    pub fn new(private_key: PrivateKey, address: Ipv4Addr, prefix: Ipv4Net) -> Self {
        Self {
            private_key,
            address,
            prefix,
            max_peers: 65_536,
            handshakes_per_second: 2_000,
        }
    }
}

/// What [`PeerTable::receive`] asks of the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// Nothing to send or deliver: a keepalive, or a packet dropped (see [`Counters`]).
    Nothing,
    /// Send this datagram to this address: a handshake response or a cookie reply.
    Reply { to: SocketAddr, datagram: &'a [u8] },
    /// An IP packet from the peer at tunnel address `from`, for the local stack.
    Deliver { from: Ipv4Addr, packet: &'a [u8] },
}

/// What the table counted. Everything a peer (or a stranger) can make it refuse has a
/// counter here, for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Handshake responses sent.
    pub handshakes: u64,
    /// Sessions the peer confirmed with its first packet after the handshake: from then
    /// on the gateway can send to it.
    pub sessions: u64,
    /// Cookie replies sent because handshakes came faster than the limit.
    pub cookie_replies: u64,
    /// Datagrams that were not WireGuard, failed a MAC, failed to decrypt, or replayed.
    pub invalid: u64,
    /// Handshakes from a key the table does not know, data for an index it does not know.
    pub unknown_peer: u64,
    /// Handshake responses and cookie replies for a peer the gateway is not resuming.
    pub unexpected: u64,
    /// Decrypted packets whose inner source was not the peer's tunnel address.
    pub wrong_source: u64,
    /// Decrypted packets addressed to anything but the gateway (peers never reach each other).
    pub wrong_destination: u64,
    /// Outgoing packets for an address no peer holds.
    pub no_route: u64,
    /// Outgoing packets for a peer with no session or no known endpoint yet.
    pub no_session: u64,
    /// Handshake initiations a peer's timers wanted to send; the gateway only responds.
    pub initiations_suppressed: u64,
    /// Handshake initiations sent to resume a peer's session ([`PeerTable::resume`]).
    pub initiations_sent: u64,
    /// Peers refused because the table was full.
    pub table_full: u64,
}

/// One peer's figures, as the portal shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStats {
    pub public_key: PublicKey,
    pub address: Ipv4Addr,
    /// The source of the last authenticated datagram: where replies go.
    pub endpoint: Option<SocketAddr>,
    /// When the last handshake completed (the table's clock).
    pub last_handshake: Option<Instant>,
    /// When the last authenticated datagram arrived, keepalives included: a router
    /// keeping alive every 25 s is online while this is recent.
    pub last_seen: Option<Instant>,
    /// Datagram bytes received and sent, handshakes and keepalives included (as `wg show`).
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

struct Peer {
    key: PublicKey,
    address: Ipv4Addr,
    tunn: Box<Tunn>,
    endpoint: Option<SocketAddr>,
    last_handshake: Option<Instant>,
    last_seen: Option<Instant>,
    /// A handshake was answered and the peer's first packet on it is still to come.
    unconfirmed: bool,
    /// Until when the gateway's own initiations to this peer are sent, not suppressed.
    resuming_until: Option<Instant>,
    /// An initiation is to go out on the next timer run.
    resume_due: bool,
    rx_bytes: u64,
    tx_bytes: u64,
}

impl Peer {
    /// The peer's first authenticated packet after a handshake confirms the session.
    fn authenticated(
        &mut self,
        now: Instant,
        from: SocketAddr,
        len: usize,
        counters: &mut Counters,
    ) {
        self.endpoint = Some(from);
        self.last_seen = Some(now);
        self.rx_bytes += len as u64;
        if self.unconfirmed {
            self.unconfirmed = false;
            counters.sessions += 1;
        }
    }

    fn stats(&self) -> PeerStats {
        PeerStats {
            public_key: self.key,
            address: self.address,
            endpoint: self.endpoint,
            last_handshake: self.last_handshake,
            last_seen: self.last_seen,
            rx_bytes: self.rx_bytes,
            tx_bytes: self.tx_bytes,
        }
    }
}

/// The responder's state for every peer of one UDP socket.
pub struct PeerTable {
    private: x25519::StaticSecret,
    public: x25519::PublicKey,
    own_key: PublicKey,
    address: Ipv4Addr,
    prefix: Ipv4Net,
    max_peers: usize,
    limiter: Arc<RateLimiter>,
    /// Handed to every `Tunn`, whose `decapsulate` checks MAC1 again: it has no limit,
    /// so it never refuses what `limiter` let through. Sharing it (rather than
    /// boringtun's default of a limiter per peer) spares every peer a limiter and a
    /// reset each timer tick, which was most of an idle gateway's CPU.
    tunn_limiter: Arc<RateLimiter>,
    limiter_reset: Instant,
    peers: HashMap<u32, Peer>,
    by_key: HashMap<PublicKey, u32>,
    by_address: HashMap<Ipv4Addr, u32>,
    next_index: u32,
    counters: Counters,
}

impl PeerTable {
    pub fn new(config: TableConfig, now: Instant) -> Self {
        let private = config.private_key.to_x25519();
        let public = x25519::PublicKey::from(&private);
        // Start the indices somewhere unpredictable, so a restarted gateway does not
        // hand out the indices its previous life used.
        let mut start = [0u8; 4];
        let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut start);
        let start = u32::from_le_bytes(start);
        Self {
            limiter: Arc::new(RateLimiter::new(&public, config.handshakes_per_second)),
            tunn_limiter: Arc::new(RateLimiter::new(&public, u64::MAX)),
            limiter_reset: now,
            own_key: config.private_key.public_key(),
            private,
            public,
            address: config.address,
            prefix: config.prefix,
            max_peers: config.max_peers,
            peers: HashMap::new(),
            by_key: HashMap::new(),
            by_address: HashMap::new(),
            next_index: start & INDEX_MASK,
            counters: Counters::default(),
        }
    }

    /// The gateway's public key, what a router's peer entry names.
    pub fn public_key(&self) -> PublicKey {
        self.own_key
    }

    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    pub fn prefix(&self) -> Ipv4Net {
        self.prefix
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    /// Adds a peer, or changes the tunnel address of a known key (its session, endpoint
    /// and figures stay). The address must be inside the prefix, not the gateway's, and
    /// not another peer's.
    pub fn upsert(&mut self, key: PublicKey, address: Ipv4Addr) -> Result<(), PeerError> {
        if key == self.own_key {
            return Err(PeerError::OwnKey);
        }
        if address == self.address {
            return Err(PeerError::GatewayAddress(address));
        }
        if !self.prefix.contains(&address)
            || address == self.prefix.network()
            || address == self.prefix.broadcast()
        {
            return Err(PeerError::OutsidePrefix {
                address,
                prefix: self.prefix.to_string(),
            });
        }
        let holder = self.by_address.get(&address).copied();
        if let Some(&index) = self.by_key.get(&key) {
            if holder.is_some_and(|h| h != index) {
                return Err(PeerError::AddressInUse(address));
            }
            if let Some(peer) = self.peers.get_mut(&index) {
                self.by_address.remove(&peer.address);
                peer.address = address;
                self.by_address.insert(address, index);
            }
            return Ok(());
        }
        if holder.is_some() {
            return Err(PeerError::AddressInUse(address));
        }
        if self.peers.len() >= self.max_peers {
            self.counters.table_full += 1;
            return Err(PeerError::TableFull {
                limit: self.max_peers,
            });
        }
        let index = self.free_index();
        let tunn = Tunn::new(
            self.private.clone(),
            key.to_x25519(),
            None,
            None,
            index,
            Some(Arc::clone(&self.tunn_limiter)),
        );
        self.peers.insert(
            index,
            Peer {
                key,
                address,
                tunn: Box::new(tunn),
                endpoint: None,
                last_handshake: None,
                last_seen: None,
                unconfirmed: false,
                resuming_until: None,
                resume_due: false,
                rx_bytes: 0,
                tx_bytes: 0,
            },
        );
        self.by_key.insert(key, index);
        self.by_address.insert(address, index);
        Ok(())
    }

    /// Asks the gateway to start the handshake with a peer that has no session, at the
    /// endpoint it was last seen at (by an earlier run of the gateway): the initiation goes
    /// out on the next [`PeerTable::update_timers`], and is retried by WireGuard's timers
    /// for [`RESUME_WINDOW`] or until the peer answers. A peer that handshakes first is
    /// simply served as usual. Returns whether the peer was armed.
    pub fn resume(&mut self, key: &PublicKey, endpoint: SocketAddr, now: Instant) -> bool {
        let Some(peer) = self.by_key.get(key).and_then(|i| self.peers.get_mut(i)) else {
            return false;
        };
        if peer.tunn.time_since_last_handshake().is_some() {
            return false;
        }
        peer.endpoint.get_or_insert(endpoint);
        peer.resuming_until = Some(now + RESUME_WINDOW);
        peer.resume_due = true;
        true
    }

    /// Removes a peer: its sessions end at once. Returns its tunnel address if it was known.
    pub fn remove(&mut self, key: &PublicKey) -> Option<Ipv4Addr> {
        let index = self.by_key.remove(key)?;
        let peer = self.peers.remove(&index)?;
        self.by_address.remove(&peer.address);
        Some(peer.address)
    }

    pub fn stats(&self, key: &PublicKey) -> Option<PeerStats> {
        let index = self.by_key.get(key)?;
        self.peers.get(index).map(Peer::stats)
    }

    pub fn all_stats(&self) -> Vec<PeerStats> {
        self.peers.values().map(Peer::stats).collect()
    }

    /// Whether the peer at this address can be sent to now: it has handshaken, confirmed
    /// the session, and has an endpoint.
    pub fn has_session(&self, address: Ipv4Addr) -> bool {
        self.by_address
            .get(&address)
            .and_then(|index| self.peers.get(index))
            .is_some_and(|p| p.endpoint.is_some() && p.tunn.time_since_last_handshake().is_some())
    }

    /// Whether some peer holds this tunnel address.
    pub fn has_address(&self, address: Ipv4Addr) -> bool {
        self.by_address.contains_key(&address)
    }

    fn free_index(&mut self) -> u32 {
        // The table never holds more than 2^24 - 1 peers (max_peers is checked first and
        // far below), so this loop ends.
        loop {
            self.next_index = (self.next_index + 1) & INDEX_MASK;
            if !self.peers.contains_key(&self.next_index) {
                return self.next_index;
            }
        }
    }

    /// Handles one datagram from `from`. `out` must be at least as long as the datagram
    /// (a shorter one drops it as invalid); the answer borrows from it.
    pub fn receive<'a>(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &'a mut [u8],
    ) -> Received<'a> {
        self.reset_limiter(now);
        if out.len() < datagram.len().max(MIN_OUT_BUFFER) {
            self.counters.invalid += 1;
            return Received::Nothing;
        }
        // The MAC check and the table-wide rate limit come before any Diffie-Hellman.
        let mut cookie = [0u8; 64];
        let packet = match self
            .limiter
            .verify_packet(Some(from.ip()), datagram, &mut cookie)
        {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(reply)) => {
                self.counters.cookie_replies += 1;
                let len = reply.len();
                return match (out.get_mut(..len), cookie.get(..len)) {
                    (Some(dst), Some(src)) => {
                        dst.copy_from_slice(src);
                        Received::Reply {
                            to: from,
                            datagram: dst,
                        }
                    }
                    _ => Received::Nothing,
                };
            }
            Err(_) => {
                self.counters.invalid += 1;
                return Received::Nothing;
            }
        };
        let index = match &packet {
            Packet::HandshakeInit(init) => {
                match parse_handshake_anon(&self.private, &self.public, init) {
                    Ok(half) => match self
                        .by_key
                        .get(&PublicKey::from_bytes(half.peer_static_public))
                    {
                        Some(&index) => index,
                        None => {
                            self.counters.unknown_peer += 1;
                            return Received::Nothing;
                        }
                    },
                    Err(_) => {
                        self.counters.invalid += 1;
                        return Received::Nothing;
                    }
                }
            }
            Packet::PacketData(data) => data.receiver_idx >> 8,
            Packet::HandshakeResponse(response) => response.receiver_idx >> 8,
            Packet::PacketCookieReply(reply) => reply.receiver_idx >> 8,
        };
        let answer = matches!(
            packet,
            Packet::HandshakeResponse(_) | Packet::PacketCookieReply(_)
        );
        let Some(peer) = self.peers.get_mut(&index) else {
            self.counters.unknown_peer += 1;
            return Received::Nothing;
        };
        if answer && peer.resuming_until.is_none_or(|until| now >= until) {
            self.counters.unexpected += 1;
            return Received::Nothing;
        }
        let response = matches!(packet, Packet::HandshakeResponse(_));
        match peer.tunn.decapsulate(Some(from.ip()), datagram, out) {
            TunnResult::Done => {
                // A keepalive: authenticated, so the peer is where it came from.
                peer.authenticated(now, from, datagram.len(), &mut self.counters);
                Received::Nothing
            }
            TunnResult::WriteToNetwork(reply) if response => {
                // The peer answered the gateway's initiation: the session is confirmed
                // (its response authenticated it), and the reply is its first keepalive.
                peer.endpoint = Some(from);
                peer.last_handshake = Some(now);
                peer.last_seen = Some(now);
                peer.unconfirmed = false;
                peer.resuming_until = None;
                peer.rx_bytes += datagram.len() as u64;
                peer.tx_bytes += reply.len() as u64;
                self.counters.handshakes += 1;
                self.counters.sessions += 1;
                Received::Reply {
                    to: from,
                    datagram: reply,
                }
            }
            TunnResult::WriteToNetwork(reply) => {
                match reply.first().copied() {
                    Some(MSG_HANDSHAKE_RESPONSE) => {
                        peer.endpoint = Some(from);
                        peer.last_handshake = Some(now);
                        peer.last_seen = Some(now);
                        peer.unconfirmed = true;
                        peer.rx_bytes += datagram.len() as u64;
                        peer.tx_bytes += reply.len() as u64;
                        self.counters.handshakes += 1;
                    }
                    Some(MSG_COOKIE_REPLY) => self.counters.cookie_replies += 1,
                    _ => {}
                }
                Received::Reply {
                    to: from,
                    datagram: reply,
                }
            }
            TunnResult::WriteToTunnelV4(packet, source) => {
                peer.authenticated(now, from, datagram.len(), &mut self.counters);
                if source != peer.address {
                    self.counters.wrong_source += 1;
                    return Received::Nothing;
                }
                if destination(packet) != Some(self.address) {
                    self.counters.wrong_destination += 1;
                    return Received::Nothing;
                }
                Received::Deliver {
                    from: source,
                    packet,
                }
            }
            TunnResult::WriteToTunnelV6(..) => {
                // Peers hold one IPv4 address; IPv6 inside the tunnel is never theirs.
                peer.authenticated(now, from, datagram.len(), &mut self.counters);
                self.counters.wrong_source += 1;
                Received::Nothing
            }
            TunnResult::Err(_) => {
                self.counters.invalid += 1;
                Received::Nothing
            }
        }
    }

    /// Encrypts an IP packet for the peer holding its destination address. Returns the
    /// datagram and where to send it, or `None` (counted) when no peer holds the address,
    /// the peer has no session yet, or its endpoint is unknown. `out` must be at least
    /// `packet.len() + DATA_OVERHEAD` and [`MIN_OUT_BUFFER`] long.
    pub fn encapsulate<'a>(
        &mut self,
        packet: &[u8],
        out: &'a mut [u8],
    ) -> Option<(SocketAddr, &'a [u8])> {
        if out.len() < (packet.len() + DATA_OVERHEAD).max(MIN_OUT_BUFFER) {
            self.counters.no_route += 1;
            return None;
        }
        let Some(peer) = destination(packet)
            .and_then(|d| self.by_address.get(&d))
            .and_then(|index| self.peers.get_mut(index))
        else {
            self.counters.no_route += 1;
            return None;
        };
        // Without a session, boringtun would queue the packet and start a handshake; the
        // gateway never initiates, so the packet is dropped (TCP will retry).
        let Some(endpoint) = peer
            .endpoint
            .filter(|_| peer.tunn.time_since_last_handshake().is_some())
        else {
            self.counters.no_session += 1;
            return None;
        };
        match peer.tunn.encapsulate(packet, out) {
            TunnResult::WriteToNetwork(datagram)
                if datagram.first() != Some(&MSG_HANDSHAKE_INIT) =>
            {
                peer.tx_bytes += datagram.len() as u64;
                Some((endpoint, datagram))
            }
            _ => {
                self.counters.no_session += 1;
                None
            }
        }
    }

    /// Runs every peer's WireGuard timers (session expiry, keepalives owed) and calls
    /// `send` for each datagram to go out. Call it a few times a second.
    pub fn update_timers(
        &mut self,
        now: Instant,
        out: &mut [u8],
        mut send: impl FnMut(SocketAddr, &[u8]),
    ) {
        self.reset_limiter(now);
        if out.len() < MIN_OUT_BUFFER {
            return;
        }
        for peer in self.peers.values_mut() {
            let resuming = peer.resuming_until.is_some_and(|until| now < until);
            if !resuming {
                peer.resuming_until = None;
            }
            let due = std::mem::take(&mut peer.resume_due) && resuming;
            let result = if due {
                peer.tunn.format_handshake_initiation(out, false)
            } else {
                peer.tunn.update_timers(out)
            };
            match result {
                TunnResult::WriteToNetwork(datagram) => {
                    if datagram.first() == Some(&MSG_HANDSHAKE_INIT) {
                        match peer.endpoint.filter(|_| resuming) {
                            Some(endpoint) => {
                                self.counters.initiations_sent += 1;
                                peer.tx_bytes += datagram.len() as u64;
                                send(endpoint, datagram);
                            }
                            None => self.counters.initiations_suppressed += 1,
                        }
                    } else if let Some(endpoint) = peer.endpoint {
                        peer.tx_bytes += datagram.len() as u64;
                        send(endpoint, datagram);
                    }
                }
                TunnResult::Done | TunnResult::Err(_) => {}
                TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
            }
        }
    }

    /// The table-wide limiter's window is one second of the table's clock. (boringtun's
    /// limiter also checks its own monotonic clock, so a window never ends early.)
    fn reset_limiter(&mut self, now: Instant) {
        if now.saturating_duration_since(self.limiter_reset) >= Duration::from_secs(1) {
            self.limiter.reset_count();
            self.limiter_reset = now;
        }
    }
}

/// The destination of an IPv4 packet, or `None` for anything else.
pub fn destination(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.first().map(|b| b >> 4) != Some(4) {
        return None;
    }
    let bytes: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
    Some(Ipv4Addr::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
    const ROUTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

    /// A router's end: boringtun's `Tunn` as an initiator, with its own key.
    struct Router {
        key: PrivateKey,
        tunn: Tunn,
        buf: Vec<u8>,
    }

    impl Router {
        fn new(gateway: PublicKey) -> Self {
            let key = PrivateKey::generate().unwrap();
            let tunn = Tunn::new(
                key.to_x25519(),
                gateway.to_x25519(),
                None,
                Some(25),
                7,
                None,
            );
            Self {
                key,
                tunn,
                buf: vec![0; 2048],
            }
        }

        fn public(&self) -> PublicKey {
            self.key.public_key()
        }

        fn initiation(&mut self) -> Vec<u8> {
            match self.tunn.format_handshake_initiation(&mut self.buf, true) {
                TunnResult::WriteToNetwork(d) => d.to_vec(),
                other => panic!("no initiation: {other:?}"),
            }
        }

        /// Feeds a datagram from the gateway; returns what the router sends back, if anything.
        fn feed(&mut self, datagram: &[u8]) -> Option<Vec<u8>> {
            match self.tunn.decapsulate(None, datagram, &mut self.buf) {
                TunnResult::WriteToNetwork(d) => Some(d.to_vec()),
                TunnResult::Done => None,
                other => panic!("unexpected {other:?}"),
            }
        }

        fn receive_packet(&mut self, datagram: &[u8]) -> Vec<u8> {
            match self.tunn.decapsulate(None, datagram, &mut self.buf) {
                TunnResult::WriteToTunnelV4(p, _) => p.to_vec(),
                other => panic!("no packet: {other:?}"),
            }
        }

        fn send_packet(&mut self, packet: &[u8]) -> Vec<u8> {
            match self.tunn.encapsulate(packet, &mut self.buf) {
                TunnResult::WriteToNetwork(d) => d.to_vec(),
                other => panic!("not sent: {other:?}"),
            }
        }
    }

    /// A minimal IPv4 packet (UDP protocol number, no checksum: nobody here checks it).
    fn ipv4(src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let total = (20 + payload.len()) as u16;
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        p[2..4].copy_from_slice(&total.to_be_bytes());
        p.extend_from_slice(&src.octets());
        p.extend_from_slice(&dst.octets());
        p.extend_from_slice(payload);
        p
    }

    fn table(now: Instant) -> PeerTable {
        let mut config = TableConfig::new(
            PrivateKey::generate().unwrap(),
            GATEWAY,
            "100.64.0.0/10".parse().unwrap(),
        );
        config.handshakes_per_second = 4;
        PeerTable::new(config, now)
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 7], port))
    }

    /// Handshake + the router's first keepalive, as a real router does it.
    fn connect(t: &mut PeerTable, r: &mut Router, now: Instant, from: SocketAddr) {
        let mut out = vec![0; 2048];
        let init = r.initiation();
        let Received::Reply { to, datagram } = t.receive(now, from, &init, &mut out) else {
            panic!("no handshake response");
        };
        assert_eq!(to, from);
        let keepalive = r
            .feed(datagram)
            .expect("the initiator confirms with a keepalive");
        assert_eq!(
            t.receive(now, from, &keepalive, &mut out),
            Received::Nothing
        );
    }

    #[test]
    fn handshake_then_packets_both_ways() {
        let now = Instant::now();
        let mut t = table(now);
        let mut r = Router::new(t.public_key());
        t.upsert(r.public(), ROUTER).unwrap();
        connect(&mut t, &mut r, now, addr(4000));

        let stats = t.stats(&r.public()).unwrap();
        assert_eq!(stats.endpoint, Some(addr(4000)));
        assert_eq!(stats.last_handshake, Some(now));
        assert_eq!(stats.last_seen, Some(now));
        assert_eq!(t.counters().handshakes, 1);
        assert_eq!(t.counters().sessions, 1);
        assert!(t.has_session(ROUTER));

        let mut out = vec![0; 2048];
        let up = r.send_packet(&ipv4(ROUTER, GATEWAY, b"hello"));
        match t.receive(now, addr(4000), &up, &mut out) {
            Received::Deliver { from, packet } => {
                assert_eq!(from, ROUTER);
                assert!(packet.ends_with(b"hello"));
            }
            other => panic!("not delivered: {other:?}"),
        }

        let (to, down) = t
            .encapsulate(&ipv4(GATEWAY, ROUTER, b"world"), &mut out)
            .unwrap();
        assert_eq!(to, addr(4000));
        let down = down.to_vec();
        assert!(r.receive_packet(&down).ends_with(b"world"));

        let stats = t.stats(&r.public()).unwrap();
        assert!(stats.rx_bytes > 148 && stats.tx_bytes > 92, "{stats:?}");
    }

    #[test]
    fn endpoint_follows_the_last_authenticated_packet() {
        let now = Instant::now();
        let mut t = table(now);
        let mut r = Router::new(t.public_key());
        t.upsert(r.public(), ROUTER).unwrap();
        connect(&mut t, &mut r, now, addr(4000));
        let mut out = vec![0; 2048];

        // The router's NAT mapping changes: same session, new source port.
        let up = r.send_packet(&ipv4(ROUTER, GATEWAY, b"moved"));
        assert!(matches!(
            t.receive(now, addr(5000), &up, &mut out),
            Received::Deliver { .. }
        ));
        assert_eq!(t.stats(&r.public()).unwrap().endpoint, Some(addr(5000)));
        let (to, _) = t
            .encapsulate(&ipv4(GATEWAY, ROUTER, b"x"), &mut out)
            .unwrap();
        assert_eq!(to, addr(5000));

        // A forged datagram from elsewhere does not move it.
        let mut forged = r.send_packet(&ipv4(ROUTER, GATEWAY, b"forged"));
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(
            t.receive(now, addr(6000), &forged, &mut out),
            Received::Nothing
        );
        assert_eq!(t.stats(&r.public()).unwrap().endpoint, Some(addr(5000)));
        assert_eq!(t.counters().invalid, 1);

        // A replayed one does not either.
        assert_eq!(t.receive(now, addr(6001), &up, &mut out), Received::Nothing);
        assert_eq!(t.stats(&r.public()).unwrap().endpoint, Some(addr(5000)));
    }

    #[test]
    fn wrong_inner_source_or_destination_is_dropped_and_counted() {
        let now = Instant::now();
        let mut t = table(now);
        let mut r = Router::new(t.public_key());
        t.upsert(r.public(), ROUTER).unwrap();
        connect(&mut t, &mut r, now, addr(4000));
        let mut out = vec![0; 2048];

        let spoofed = r.send_packet(&ipv4(Ipv4Addr::new(100, 64, 0, 3), GATEWAY, b"x"));
        assert_eq!(
            t.receive(now, addr(4000), &spoofed, &mut out),
            Received::Nothing
        );
        assert_eq!(t.counters().wrong_source, 1);

        // Another peer's address as destination: peers never reach each other.
        let sideways = r.send_packet(&ipv4(ROUTER, Ipv4Addr::new(100, 64, 0, 3), b"x"));
        assert_eq!(
            t.receive(now, addr(4000), &sideways, &mut out),
            Received::Nothing
        );
        assert_eq!(t.counters().wrong_destination, 1);
    }

    #[test]
    fn unknown_key_gets_no_answer() {
        let now = Instant::now();
        let mut t = table(now);
        let mut stranger = Router::new(t.public_key());
        let mut out = vec![0; 2048];
        let init = stranger.initiation();
        assert_eq!(
            t.receive(now, addr(4000), &init, &mut out),
            Received::Nothing
        );
        assert_eq!(t.counters().unknown_peer, 1);
        assert_eq!(t.counters().handshakes, 0);

        // Noise and truncated datagrams are invalid, never a panic.
        let mut data = [0u8; 48];
        data[0] = 4;
        data[4..8].copy_from_slice(&0x00ab_cd00u32.to_le_bytes());
        for junk in [&b""[..], &[1u8; 3], &data, &init[..100], &[9u8; 1500]] {
            assert_eq!(
                t.receive(now, addr(4000), junk, &mut out),
                Received::Nothing
            );
        }
        assert_eq!(t.counters().invalid, 4);
        assert_eq!(
            t.counters().unknown_peer,
            2,
            "the data header names an unknown index"
        );
    }

    #[test]
    fn handshakes_over_the_limit_get_a_cookie_and_then_succeed() {
        let now = Instant::now();
        let mut t = table(now);
        let mut out = vec![0; 2048];
        let mut routers: Vec<Router> = (0..5).map(|_| Router::new(t.public_key())).collect();
        for (i, r) in routers.iter().enumerate() {
            t.upsert(r.public(), Ipv4Addr::new(100, 64, 1, i as u8 + 1))
                .unwrap();
        }
        // The limit is 4 a second: the first four are answered.
        for r in routers.iter_mut().take(4) {
            let init = r.initiation();
            let reply = t.receive(now, addr(4000), &init, &mut out);
            assert!(
                matches!(reply, Received::Reply { datagram, .. } if datagram[0] == MSG_HANDSHAKE_RESPONSE)
            );
        }
        // The fifth gets a cookie reply, and no Diffie-Hellman.
        let last = routers.last_mut().unwrap();
        let init = last.initiation();
        let Received::Reply { datagram, .. } = t.receive(now, addr(4005), &init, &mut out) else {
            panic!("no cookie");
        };
        assert_eq!(datagram[0], MSG_COOKIE_REPLY);
        assert_eq!(t.counters().cookie_replies, 1);
        assert_eq!(t.counters().handshakes, 4);
        // With the cookie, its retry proves its address and is answered even under load.
        let cookie = datagram.to_vec();
        assert_eq!(last.feed(&cookie), None);
        let retry = last.initiation();
        let reply = t.receive(now, addr(4005), &retry, &mut out);
        assert!(
            matches!(reply, Received::Reply { datagram, .. } if datagram[0] == MSG_HANDSHAKE_RESPONSE)
        );
        assert_eq!(t.counters().handshakes, 5);
    }

    #[test]
    fn removed_peer_is_ignored_and_its_address_freed() {
        let now = Instant::now();
        let mut t = table(now);
        let mut r = Router::new(t.public_key());
        t.upsert(r.public(), ROUTER).unwrap();
        connect(&mut t, &mut r, now, addr(4000));
        assert_eq!(t.remove(&r.public()), Some(ROUTER));
        assert!(t.is_empty());

        let mut out = vec![0; 2048];
        let up = r.send_packet(&ipv4(ROUTER, GATEWAY, b"x"));
        assert_eq!(t.receive(now, addr(4000), &up, &mut out), Received::Nothing);
        assert!(
            t.encapsulate(&ipv4(GATEWAY, ROUTER, b"x"), &mut out)
                .is_none()
        );
        let init = r.initiation();
        assert_eq!(
            t.receive(now, addr(4000), &init, &mut out),
            Received::Nothing
        );
        assert_eq!(t.counters().unknown_peer, 2);

        // The address can go to someone else now.
        let other = Router::new(t.public_key());
        t.upsert(other.public(), ROUTER).unwrap();
    }

    #[test]
    fn upsert_replaces_an_address_and_refuses_conflicts() {
        let now = Instant::now();
        let mut t = table(now);
        let mut r = Router::new(t.public_key());
        let other = Router::new(t.public_key());
        t.upsert(r.public(), ROUTER).unwrap();
        t.upsert(other.public(), Ipv4Addr::new(100, 64, 0, 3))
            .unwrap();
        connect(&mut t, &mut r, now, addr(4000));

        let check =
            |t: &mut PeerTable, key: PublicKey, address: &str, expected: Result<(), PeerError>| {
                assert_eq!(
                    t.upsert(key, address.parse().unwrap()),
                    expected,
                    "{address}"
                );
            };
        check(
            &mut t,
            r.public(),
            "100.64.0.3",
            Err(PeerError::AddressInUse(Ipv4Addr::new(100, 64, 0, 3))),
        );
        check(
            &mut t,
            r.public(),
            "100.64.0.1",
            Err(PeerError::GatewayAddress(GATEWAY)),
        );
        for outside in ["10.0.0.1", "100.128.0.1", "100.64.0.0", "100.127.255.255"] {
            let expected = Err(PeerError::OutsidePrefix {
                address: outside.parse().unwrap(),
                prefix: "100.64.0.0/10".into(),
            });
            check(&mut t, r.public(), outside, expected);
        }
        assert_eq!(t.upsert(t.public_key(), ROUTER), Err(PeerError::OwnKey));

        // Moving the router keeps its session: the next packet from its new address arrives.
        check(&mut t, r.public(), "100.64.0.9", Ok(()));
        let mut out = vec![0; 2048];
        let up = r.send_packet(&ipv4(Ipv4Addr::new(100, 64, 0, 9), GATEWAY, b"x"));
        assert!(matches!(
            t.receive(now, addr(4000), &up, &mut out),
            Received::Deliver { .. }
        ));
        assert!(!t.has_address(ROUTER));
    }

    #[test]
    fn the_table_is_bounded() {
        let now = Instant::now();
        let mut config = TableConfig::new(
            PrivateKey::generate().unwrap(),
            GATEWAY,
            "100.64.0.0/24".parse().unwrap(),
        );
        config.max_peers = 2;
        let mut t = PeerTable::new(config, now);
        for i in 0..2 {
            t.upsert(
                PrivateKey::generate().unwrap().public_key(),
                Ipv4Addr::new(100, 64, 0, 10 + i),
            )
            .unwrap();
        }
        let refused = t.upsert(
            PrivateKey::generate().unwrap().public_key(),
            Ipv4Addr::new(100, 64, 0, 20),
        );
        assert_eq!(refused, Err(PeerError::TableFull { limit: 2 }));
        assert_eq!(t.counters().table_full, 1);
    }

    #[test]
    fn the_gateway_never_initiates_and_sends_nothing_without_a_session() {
        let now = Instant::now();
        let mut t = table(now);
        let r = Router::new(t.public_key());
        t.upsert(r.public(), ROUTER).unwrap();
        let mut out = vec![0; 2048];
        assert!(
            t.encapsulate(&ipv4(GATEWAY, ROUTER, b"x"), &mut out)
                .is_none()
        );
        assert_eq!(t.counters().no_session, 1);
        assert!(
            t.encapsulate(&ipv4(GATEWAY, Ipv4Addr::new(100, 64, 9, 9), b"x"), &mut out)
                .is_none()
        );
        assert_eq!(t.counters().no_route, 1);
        let mut sent = 0;
        t.update_timers(now + Duration::from_secs(30), &mut out, |_, _| sent += 1);
        assert_eq!(sent, 0);
    }

    #[test]
    fn a_resumed_peer_is_sent_an_initiation_at_its_last_endpoint_and_its_answer_opens_the_session()
    {
        let now = Instant::now();
        let mut t = table(now);
        let mut r = Router::new(t.public_key());
        t.upsert(r.public(), ROUTER).unwrap();
        let mut out = vec![0; 2048];

        assert!(t.resume(&r.public(), addr(7000), now));
        let mut sent = Vec::new();
        t.update_timers(now, &mut out, |to, d| sent.push((to, d.to_vec())));
        assert_eq!(sent.len(), 1, "one initiation");
        assert_eq!(sent[0].0, addr(7000));
        assert_eq!(sent[0].1[0], MSG_HANDSHAKE_INIT);
        assert_eq!(t.counters().initiations_sent, 1);

        // The router answers from its NAT's address; the gateway confirms with a keepalive.
        let response = r.feed(&sent[0].1).expect("the router answers");
        assert_eq!(response[0], MSG_HANDSHAKE_RESPONSE);
        let Received::Reply { to, datagram } = t.receive(now, addr(7000), &response, &mut out)
        else {
            panic!("the gateway confirms the session");
        };
        assert_eq!(to, addr(7000));
        let keepalive = datagram.to_vec();
        assert!(r.feed(&keepalive).is_none(), "a keepalive");
        assert!(t.has_session(ROUTER));
        assert_eq!(t.counters().sessions, 1);

        // The session carries packets both ways.
        let down = t
            .encapsulate(&ipv4(GATEWAY, ROUTER, b"down"), &mut out)
            .map(|(_, d)| d.to_vec())
            .expect("sent");
        assert!(r.receive_packet(&down).ends_with(b"down"));

        // A second resume is refused: the peer has a session.
        assert!(!t.resume(&r.public(), addr(7001), now));
    }

    #[test]
    fn answers_to_initiations_never_sent_are_refused_and_resumes_end() {
        let now = Instant::now();
        let mut t = table(now);
        let mut r = Router::new(t.public_key());
        t.upsert(r.public(), ROUTER).unwrap();
        let mut out = vec![0; 2048];
        // Resume, but the window passes without an answer: retries stop.
        assert!(t.resume(&r.public(), addr(7000), now));
        let mut sent = Vec::new();
        t.update_timers(now, &mut out, |_, d| sent.push(d.to_vec()));
        assert_eq!(sent.len(), 1);
        let late = r.feed(&sent[0]).expect("an answer");
        let after = now + RESUME_WINDOW + Duration::from_secs(1);
        let mut more = 0;
        t.update_timers(after, &mut out, |_, _| more += 1);
        assert_eq!(more, 0, "nothing after the window");
        assert_eq!(
            t.receive(after, addr(7000), &late, &mut out),
            Received::Nothing
        );
        assert_eq!(t.counters().unexpected, 1);
        assert!(!t.has_session(ROUTER));
        // An unknown key is not armed.
        assert!(!t.resume(&PrivateKey::generate().unwrap().public_key(), addr(1), now));
    }
}
