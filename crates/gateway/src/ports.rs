//! Entry-port allocation for one gateway: ports are drawn at random from a configurable
//! range (default 49152–65535), never one that is live, and never one released less than
//! a cool-down ago (so a client still retrying an old port cannot land on a new grant).
//!
//! The allocator is plain data behind `&mut self` (wrap it in a mutex to share it) and
//! takes the time as a parameter. It does not know about other processes: with several
//! servers, the store enforces uniqueness and uses [`PortAllocator::candidates`] as a
//! source of proposals, marking the winner with [`PortAllocator::reserve`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::Error;

/// An inclusive range of TCP ports, never containing 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// The IANA dynamic range, 49152–65535.
    pub const DEFAULT: PortRange = PortRange {
        first: 49152,
        last: 65535,
    };

    /// `first..=last`; refuses 0 and reversed ends.
    pub fn new(first: u16, last: u16) -> Result<Self, Error> {
        if first == 0 || first > last {
            return Err(Error::InvalidPortRange { first, last });
        }
        Ok(Self { first, last })
    }

    /// The lowest port.
    pub fn first(&self) -> u16 {
        self.first
    }

    /// The highest port.
    pub fn last(&self) -> u16 {
        self.last
    }

    /// How many ports it holds.
    pub fn len(&self) -> usize {
        usize::from(self.last - self.first) + 1
    }

    /// Never: a range holds at least one port. Here for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl Default for PortRange {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// The default cool-down before a released port is handed out again.
pub const DEFAULT_COOLDOWN: Duration = Duration::from_secs(60);

/// Random draws tried before falling back to a scan of the whole range.
const RANDOM_TRIES: usize = 64;

/// Hands out ports of one gateway. See the module documentation.
#[derive(Debug)]
pub struct PortAllocator {
    range: PortRange,
    cooldown: Duration,
    live: HashSet<u16>,
    /// Released ports and when they become free again.
    cooling: HashMap<u16, Instant>,
    rng: SmallRng,
}

impl PortAllocator {
    /// An allocator over `range` with the given cool-down, seeded from the OS.
    pub fn new(range: PortRange, cooldown: Duration) -> Self {
        Self::with_rng(range, cooldown, SmallRng::from_os_rng())
    }

    /// The same with a fixed seed, for reproducible tests.
    pub fn with_seed(range: PortRange, cooldown: Duration, seed: u64) -> Self {
        Self::with_rng(range, cooldown, SmallRng::seed_from_u64(seed))
    }

    fn with_rng(range: PortRange, cooldown: Duration, rng: SmallRng) -> Self {
        Self {
            range,
            cooldown,
            live: HashSet::new(),
            cooling: HashMap::new(),
            rng,
        }
    }

    /// The range ports are drawn from.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// The cool-down after release.
    pub fn cooldown(&self) -> Duration {
        self.cooldown
    }

    /// Whether `port` could be handed out at `now`: in range, not live, not cooling.
    pub fn is_free(&self, port: u16, now: Instant) -> bool {
        self.range.contains(port)
            && !self.live.contains(&port)
            && self.cooling.get(&port).is_none_or(|until| *until <= now)
    }

    /// How many ports are live.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Picks a free port at random and marks it live.
    pub fn allocate(&mut self, now: Instant) -> Result<u16, Error> {
        let port = self.pick(now)?;
        self.cooling.remove(&port);
        self.live.insert(port);
        Ok(port)
    }

    /// Marks `port` live without drawing it: a port the store already holds for a live
    /// grant (start-up), or the candidate that won in the store. A cooling port may be
    /// reserved (the store is the authority); a live one may not.
    pub fn reserve(&mut self, port: u16, _now: Instant) -> Result<(), Error> {
        if !self.range.contains(port) {
            return Err(Error::PortOutOfRange {
                port,
                range: self.range,
            });
        }
        if !self.live.insert(port) {
            return Err(Error::PortInUse { port });
        }
        self.cooling.remove(&port);
        Ok(())
    }

    /// Releases a live port; it cools down until `now + cooldown`. Releasing a port that
    /// is not live does nothing.
    pub fn release(&mut self, port: u16, now: Instant) {
        if self.live.remove(&port) {
            self.cooling.insert(port, now + self.cooldown);
        }
    }

    /// Up to `n` distinct free ports in random order, without marking them: proposals for
    /// a store that settles uniqueness itself. Fewer than `n` when fewer are free; an
    /// error when none is. Drawn at random while most of the range is free (a create
    /// asks for a few dozen among thousands: scanning the range each time cost more
    /// than the rest of the request); from the list of free ports when it is crowded.
    pub fn candidates(&mut self, n: usize, now: Instant) -> Result<Vec<u16>, Error> {
        if n.saturating_mul(4) <= self.range.len() {
            let mut drawn: Vec<u16> = Vec::with_capacity(n);
            for _ in 0..n.saturating_mul(4) {
                let port = self.rng.random_range(self.range.first..=self.range.last);
                if self.is_free(port, now) && !drawn.contains(&port) {
                    drawn.push(port);
                    if drawn.len() == n {
                        return Ok(drawn);
                    }
                }
            }
        }
        self.prune(now);
        let mut free = self.free_ports(now);
        if free.is_empty() {
            return Err(self.exhausted());
        }
        let n = n.min(free.len());
        // A partial Fisher–Yates shuffle: the first `n` are a uniform sample.
        for i in 0..n {
            let j = self.rng.random_range(i..free.len());
            free.swap(i, j);
        }
        free.truncate(n);
        Ok(free)
    }

    fn pick(&mut self, now: Instant) -> Result<u16, Error> {
        for _ in 0..RANDOM_TRIES {
            let port = self.rng.random_range(self.range.first..=self.range.last);
            if self.is_free(port, now) {
                return Ok(port);
            }
        }
        // The range is mostly taken: draw among what is left.
        self.prune(now);
        let free = self.free_ports(now);
        if free.is_empty() {
            return Err(self.exhausted());
        }
        let i = self.rng.random_range(0..free.len());
        free.get(i).copied().ok_or_else(|| self.exhausted())
    }

    fn free_ports(&self, now: Instant) -> Vec<u16> {
        (self.range.first..=self.range.last)
            .filter(|&port| self.is_free(port, now))
            .collect()
    }

    /// Forgets cool-downs that are over.
    fn prune(&mut self, now: Instant) {
        self.cooling.retain(|_, until| *until > now);
    }

    fn exhausted(&self) -> Error {
        Error::PortsExhausted { range: self.range }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(first: u16, last: u16, cooldown_s: u64) -> PortAllocator {
        PortAllocator::with_seed(
            PortRange::new(first, last).unwrap(),
            Duration::from_secs(cooldown_s),
            7,
        )
    }

    #[test]
    fn range_rules() {
        for (first, last, ok) in [
            (0, 10, false),
            (10, 9, false),
            (10, 10, true),
            (1, 65535, true),
            (49152, 65535, true),
        ] {
            assert_eq!(PortRange::new(first, last).is_ok(), ok, "{first}-{last}");
        }
        assert_eq!(PortRange::DEFAULT.len(), 16384);
        assert_eq!(PortRange::default().to_string(), "49152-65535");
        let err = PortRange::new(9, 3).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid port range 9-3: it must be 1-65535 with first <= last"
        );
    }

    #[test]
    fn allocates_every_port_once_then_reports_exhaustion() {
        let now = Instant::now();
        let mut a = small(40000, 40099, 60);
        let mut seen = HashSet::new();
        for _ in 0..100 {
            let port = a.allocate(now).unwrap();
            assert!((40000..=40099).contains(&port));
            assert!(seen.insert(port), "port {port} handed out twice");
        }
        let err = a.allocate(now).unwrap_err();
        assert!(matches!(err, Error::PortsExhausted { range } if range.first() == 40000));
        assert_eq!(
            err.to_string(),
            "no free port in 40000-40099: every port is in use or cooling down"
        );
        assert!(matches!(
            a.candidates(5, now),
            Err(Error::PortsExhausted { .. })
        ));
    }

    #[test]
    fn released_port_cools_down_before_reuse() {
        let t0 = Instant::now();
        let mut a = small(50000, 50000, 60);
        assert_eq!(a.allocate(t0).unwrap(), 50000);
        a.release(50000, t0);
        assert!(!a.is_free(50000, t0 + Duration::from_secs(59)));
        assert!(matches!(
            a.allocate(t0 + Duration::from_secs(59)),
            Err(Error::PortsExhausted { .. })
        ));
        assert!(a.is_free(50000, t0 + Duration::from_secs(60)));
        assert_eq!(a.allocate(t0 + Duration::from_secs(60)).unwrap(), 50000);
    }

    #[test]
    fn allocation_is_spread_over_the_range() {
        let now = Instant::now();
        let mut a = PortAllocator::new(PortRange::DEFAULT, DEFAULT_COOLDOWN);
        let ports: Vec<u16> = (0..200).map(|_| a.allocate(now).unwrap()).collect();
        let low = ports.iter().filter(|&&p| p < 57344).count();
        // Uniform: about half in each half; sequential allocation would fail this.
        assert!((60..=140).contains(&low), "{low} of 200 in the lower half");
        assert!(ports.iter().all(|&p| p >= 49152));
    }

    #[test]
    fn candidates_skip_live_and_cooling_ports() {
        let t0 = Instant::now();
        let mut a = small(60000, 60009, 60);
        a.reserve(60000, t0).unwrap();
        a.reserve(60001, t0).unwrap();
        a.reserve(60002, t0).unwrap();
        a.release(60002, t0);
        let c = a.candidates(100, t0).unwrap();
        assert_eq!(c.len(), 7);
        assert!(c.iter().all(|p| (60003..=60009).contains(p)));
        let unique: HashSet<_> = c.iter().collect();
        assert_eq!(unique.len(), 7);
        // Candidates are not marked live.
        assert_eq!(a.live_count(), 2);
        assert_eq!(a.candidates(3, t0).unwrap().len(), 3);
        // After the cool-down, 60002 is a candidate again.
        let later = a.candidates(100, t0 + Duration::from_secs(61)).unwrap();
        assert!(later.contains(&60002));
    }

    #[test]
    fn reserve_refuses_live_and_out_of_range_ports() {
        let now = Instant::now();
        let mut a = small(60000, 60009, 60);
        a.reserve(60005, now).unwrap();
        assert!(matches!(
            a.reserve(60005, now),
            Err(Error::PortInUse { port: 60005 })
        ));
        let err = a.reserve(80, now).unwrap_err();
        assert_eq!(err.to_string(), "port 80 is outside the range 60000-60009");
        // Releasing a port that is not live is harmless and does not cool it.
        a.release(60006, now);
        assert!(a.is_free(60006, now));
    }

    #[test]
    fn candidates_from_a_large_range_are_drawn_free_distinct_and_spread() {
        let t0 = Instant::now();
        let mut a =
            PortAllocator::with_seed(PortRange::new(40000, 40999).unwrap(), DEFAULT_COOLDOWN, 3);
        // Every even port live, ports 40001..40100 cooling.
        for port in (40000..=40999u16).step_by(2) {
            a.reserve(port, t0).unwrap();
        }
        for port in (40001..40100u16).step_by(2) {
            a.reserve(port, t0).unwrap();
            a.release(port, t0);
        }
        let mut seen = HashSet::new();
        for _ in 0..50 {
            let c = a.candidates(64, t0).unwrap();
            assert_eq!(c.len(), 64);
            assert!(c.iter().all(|p| p % 2 == 1 && *p >= 40101), "{c:?}");
            assert_eq!(c.iter().collect::<HashSet<_>>().len(), 64);
            seen.extend(c);
        }
        // Random, not the same few: most of the 450 free ports come up.
        assert!(seen.len() > 400, "{} distinct", seen.len());
        // Crowded (fewer free than asked for four times over): every free one.
        let mut b = small(60000, 60300, 60);
        for port in 60000..=60290u16 {
            b.reserve(port, t0).unwrap();
        }
        let mut c = b.candidates(64, t0).unwrap();
        c.sort_unstable();
        assert_eq!(c, (60291..=60300).collect::<Vec<_>>());
    }

    #[test]
    fn nearly_full_range_still_finds_the_last_port() {
        let now = Instant::now();
        let mut a = PortAllocator::with_seed(PortRange::DEFAULT, DEFAULT_COOLDOWN, 1);
        for port in 49152..=65535u16 {
            if port != 61234 {
                a.reserve(port, now).unwrap();
            }
        }
        assert_eq!(a.allocate(now).unwrap(), 61234);
        assert!(matches!(a.allocate(now), Err(Error::PortsExhausted { .. })));
    }
}
