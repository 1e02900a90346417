//! The thin tokio driver: one UDP socket, the peers table, and a smoltcp interface whose
//! device carries IP packets to and from the table.
//!
//! One task ([`Tunnel::run`]) owns the socket and does all the work: it drains datagrams
//! in batches into the table, hands decrypted packets to smoltcp, polls the interface,
//! encrypts what smoltcp emits and sends it, and runs WireGuard's timers. The state sits
//! behind one mutex that streams take briefly to move bytes in and out of their smoltcp
//! socket buffers (no copy through channels); a stream that moved bytes wakes the task.
//! [`Tunnel::dial`] opens a [`TunnelStream`], a TCP connection to a peer's tunnel address
//! that implements tokio's `AsyncRead` and `AsyncWrite`.

use std::collections::{HashMap, HashSet};
use std::future::{Future, poll_fn};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use ipnet::Ipv4Net;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::Notify;

use crate::device::VirtualDevice;
use crate::error::{PeerError, TunnelError};
use crate::key::{PrivateKey, PublicKey};
use crate::table::{Counters, PeerStats, PeerTable, Received, TableConfig};

/// How often WireGuard's timers run over all peers (they count whole seconds).
const TIMER_TICK: Duration = Duration::from_secs(1);
/// At most this many datagrams are read before the stack is polled.
const RECV_BATCH: usize = 128;
/// The ephemeral ports of streams the gateway opens.
const PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// A dropped stream that has not finished closing by then is reset.
const LINGER: Duration = Duration::from_secs(30);
/// The largest datagram there is.
const MAX_DATAGRAM: usize = 65_536;

/// How a [`Tunnel`] is set up. [`TunnelConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    pub private_key: PrivateKey,
    /// The gateway's own tunnel address, inside `prefix`.
    pub address: Ipv4Addr,
    /// The region's tunnel prefix (Postern's default is inside 100.64.0.0/10).
    pub prefix: Ipv4Net,
    pub max_peers: usize,
    /// Handshakes per second over all peers before cookie replies.
    pub handshakes_per_second: u64,
    /// Streams open at once; one more is refused and counted.
    /// Streams open or still closing at once (each holds its buffers until closed);
    /// one more dial is refused and counted.
    pub max_streams: usize,
    /// Each stream's send buffer, in bytes: what it may have in flight. 64 KiB by
    /// default: larger bursts overrun a userspace peer's socket buffer (`wireguard-go`'s
    /// default 208 KiB), and smoltcp recovers from loss by going back N, with a 1 s
    /// minimum RTO. The cost: one stream's upload is capped near 64 KiB per round trip
    /// (about 5 Mb/s at 100 ms).
    pub stream_send_buffer: usize,
    /// Each stream's receive buffer, in bytes: the window it offers the peer.
    pub stream_recv_buffer: usize,
    /// The tunnel's MTU: 1420, as WireGuard's default on a 1500-byte path.
    pub mtu: usize,
    pub connect_timeout: Duration,
    /// Packets waiting between the table and the stack, each way.
    pub queue_packets: usize,
}

impl TunnelConfig {
    pub fn new(private_key: PrivateKey, address: Ipv4Addr, prefix: Ipv4Net) -> Self {
        Self {
            private_key,
            address,
            prefix,
            max_peers: 65_536,
            handshakes_per_second: 2_000,
            max_streams: 4_096,
            stream_send_buffer: 64 * 1024,
            stream_recv_buffer: 256 * 1024,
            mtu: 1420,
            connect_timeout: Duration::from_secs(10),
            queue_packets: 4_096,
        }
    }
}

/// The driver's own counters, next to the table's.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TunnelStats {
    pub table: Counters,
    pub peers: usize,
    pub streams: usize,
    /// Dials refused because `max_streams` were open or closing.
    pub streams_refused: u64,
    /// Decrypted packets dropped because the stack's queue was full.
    pub rx_queue_dropped: u64,
    /// Datagrams the UDP socket would not take (its buffer full) or refused.
    pub send_errors: u64,
    pub datagrams_in: u64,
    pub datagrams_out: u64,
}

/// One peer's figures with wall-clock times, for the API and the portal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub public_key: PublicKey,
    pub address: Ipv4Addr,
    pub endpoint: Option<SocketAddr>,
    pub last_handshake_at: Option<SystemTime>,
    /// The last authenticated datagram, keepalives included.
    pub last_seen_at: Option<SystemTime>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// Binds the tunnel's UDP socket with large kernel buffers (as large as the system
/// allows an unprivileged process), non-blocking, for [`Tunnel::run`].
pub fn bind_udp(address: SocketAddr) -> io::Result<UdpSocket> {
    let domain = socket2::Domain::for_address(address);
    let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

/// A region's WireGuard endpoint and userspace TCP/IP stack. Cheap to clone: every clone
/// is a handle to the same tunnel.
#[derive(Clone)]
pub struct Tunnel {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the driver: a stream moved bytes, a dial began, a stream closed.
    wake: Notify,
    /// Wakes dials waiting for a peer's session: a peer confirmed a new one.
    handshake: Notify,
    epoch: Instant,
    stopped: AtomicBool,
    buffers: (usize, usize),
    max_streams: usize,
    connect_timeout: Duration,
}

struct State {
    table: PeerTable,
    iface: Interface,
    device: VirtualDevice,
    sockets: SocketSet<'static>,
    /// Local port of every socket in `sockets`.
    ports: HashMap<SocketHandle, u16>,
    used_ports: HashSet<u16>,
    next_port: u16,
    /// Sockets whose stream was dropped, with when: removed once closed, reset after `LINGER`.
    detached: Vec<(SocketHandle, Instant)>,
    /// The running driver's socket: streams send through it directly, without waking
    /// the driver (one task hop less per write).
    socket: Option<Arc<UdpSocket>>,
    /// The buffer datagrams are encrypted into on the way out.
    out: Vec<u8>,
    /// When the driver will next wake by itself; a stream that needs it sooner wakes it.
    deadline: Instant,
    /// WireGuard's timers are to run at the driver's next wake, not at its next tick (a
    /// peer was asked to resume).
    timers_due: bool,
    epoch: Instant,
    streams: usize,
    stats: TunnelStats,
}

impl Tunnel {
    pub fn new(config: TunnelConfig) -> Result<Self, TunnelError> {
        if !config.prefix.contains(&config.address) {
            return Err(TunnelError::Config(
                "the gateway's address is outside the prefix",
            ));
        }
        if !(576..=65_535).contains(&config.mtu) {
            return Err(TunnelError::Config("the MTU is between 576 and 65535"));
        }
        if config.stream_send_buffer < 4096 || config.stream_recv_buffer < 4096 {
            return Err(TunnelError::Config(
                "a stream buffer is at least 4096 bytes",
            ));
        }
        let epoch = Instant::now();
        let mut table_config =
            TableConfig::new(config.private_key.clone(), config.address, config.prefix);
        table_config.max_peers = config.max_peers;
        table_config.handshakes_per_second = config.handshakes_per_second;
        let table = PeerTable::new(table_config, epoch);

        let mut device = VirtualDevice::new(config.mtu, config.queue_packets);
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = random_u64();
        let mut iface = Interface::new(iface_config, &mut device, smol_time(epoch, epoch));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(
                IpAddress::Ipv4(config.address),
                config.prefix.prefix_len(),
            ));
        });
        let span = u32::from(PORTS.end() - PORTS.start()) + 1;
        let next_port = PORTS.start() + (random_u64() % u64::from(span)) as u16;
        Ok(Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    table,
                    iface,
                    device,
                    sockets: SocketSet::new(Vec::new()),
                    ports: HashMap::new(),
                    used_ports: HashSet::new(),
                    next_port,
                    detached: Vec::new(),
                    socket: None,
                    out: vec![
                        0;
                        config.mtu
                            + crate::table::DATA_OVERHEAD
                            + crate::table::MIN_OUT_BUFFER
                    ],
                    deadline: epoch,
                    timers_due: false,
                    epoch,
                    streams: 0,
                    stats: TunnelStats::default(),
                }),
                wake: Notify::new(),
                handshake: Notify::new(),
                epoch,
                stopped: AtomicBool::new(false),
                buffers: (config.stream_recv_buffer, config.stream_send_buffer),
                max_streams: config.max_streams,
                connect_timeout: config.connect_timeout,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    pub fn public_key(&self) -> PublicKey {
        self.lock().table.public_key()
    }

    pub fn address(&self) -> Ipv4Addr {
        self.lock().table.address()
    }

    /// Admits a peer at a tunnel address, or moves a known peer to a new address.
    pub fn upsert_peer(&self, key: PublicKey, address: Ipv4Addr) -> Result<(), PeerError> {
        let mut st = self.lock();
        let old = st.table.stats(&key).map(|s| s.address);
        st.table.upsert(key, address)?;
        if let Some(old) = old.filter(|&old| old != address) {
            st.kill_streams_to(old);
            drop(st);
            self.shared.wake.notify_one();
        }
        Ok(())
    }

    /// Sends a known peer that has no session a handshake initiation at `endpoint`, where
    /// an earlier run of the gateway last saw it, retried for
    /// [`RESUME_WINDOW`](crate::table::RESUME_WINDOW) (see [`PeerTable::resume`]). After
    /// a restart this brings a router whose NAT mapping its keepalives hold open back at
    /// once, instead of at its next rekey. Returns whether the peer was armed (known, and
    /// without a session).
    pub fn resume_peer(&self, key: &PublicKey, endpoint: SocketAddr) -> bool {
        let mut st = self.lock();
        let armed = st.table.resume(key, endpoint, Instant::now());
        if armed {
            st.timers_due = true;
            drop(st);
            self.shared.wake.notify_one();
        }
        armed
    }

    /// Removes a peer: its session ends and its streams are reset at once.
    pub fn remove_peer(&self, key: &PublicKey) -> bool {
        let mut st = self.lock();
        let Some(address) = st.table.remove(key) else {
            return false;
        };
        st.kill_streams_to(address);
        drop(st);
        self.shared.wake.notify_one();
        true
    }

    pub fn peer(&self, key: &PublicKey) -> Option<PeerStatus> {
        let st = self.lock();
        st.table.stats(key).map(|s| self.status(s))
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        let st = self.lock();
        st.table
            .all_stats()
            .into_iter()
            .map(|s| self.status(s))
            .collect()
    }

    fn status(&self, stats: PeerStats) -> PeerStatus {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let to_wall = |t: Instant| wall.checked_sub(now.saturating_duration_since(t));
        PeerStatus {
            public_key: stats.public_key,
            address: stats.address,
            endpoint: stats.endpoint,
            last_handshake_at: stats.last_handshake.and_then(to_wall),
            last_seen_at: stats.last_seen.and_then(to_wall),
            rx_bytes: stats.rx_bytes,
            tx_bytes: stats.tx_bytes,
        }
    }

    pub fn stats(&self) -> TunnelStats {
        let st = self.lock();
        TunnelStats {
            table: st.table.counters(),
            peers: st.table.len(),
            streams: st.streams,
            rx_queue_dropped: st.device.rx_dropped,
            ..st.stats
        }
    }

    /// Opens a TCP stream to `port` on the peer holding `address`. Waits for the peer's
    /// answer up to the configured connect timeout: a peer that has not handshaken yet
    /// (a gateway just restarted, a router just enrolled) is waited for, not refused.
    pub async fn dial(&self, address: Ipv4Addr, port: u16) -> Result<TunnelStream, TunnelError> {
        let remote = SocketAddrV4::new(address, port);
        let deadline = tokio::time::Instant::now() + self.shared.connect_timeout;
        // Wait for the peer's session before the SYN: a SYN sent into no session would
        // only be retried on TCP's backoff (1, 2, 4, 8, 16 s), long after the handshake.
        loop {
            let handshake = self.shared.handshake.notified();
            tokio::pin!(handshake);
            handshake.as_mut().enable();
            {
                let st = self.lock();
                if self.shared.stopped.load(Ordering::Acquire) {
                    return Err(TunnelError::Shutdown);
                }
                if !st.table.has_address(address) {
                    return Err(TunnelError::NoPeer(address));
                }
                if st.table.has_session(address) {
                    break;
                }
            }
            if tokio::time::timeout_at(deadline, handshake).await.is_err() {
                return Err(TunnelError::ConnectTimeout(remote));
            }
        }
        let handle = {
            let mut st = self.lock();
            if st.ports.len() >= self.shared.max_streams {
                st.stats.streams_refused += 1;
                return Err(TunnelError::TooManyStreams {
                    limit: self.shared.max_streams,
                });
            }
            st.open_socket(remote, self.shared.buffers)?
        };
        self.shared.wake.notify_one();
        let stream = TunnelStream {
            shared: Arc::clone(&self.shared),
            handle,
            remote,
        };
        let established = poll_fn(|cx| stream.poll_established(cx));
        match tokio::time::timeout_at(deadline, established).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(e),
            Err(_) => {
                stream.kill();
                Err(TunnelError::ConnectTimeout(remote))
            }
        }
    }

    /// Runs the tunnel on `socket` until `shutdown` completes; then every stream is reset
    /// and further dials are refused (a restarted gateway makes a new `Tunnel`). Errors
    /// if the socket fails, or if this tunnel is already running.
    pub async fn run(
        &self,
        socket: UdpSocket,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), TunnelError> {
        let socket = Arc::new(socket);
        {
            let mut st = self.lock();
            if st.socket.is_some() {
                return Err(TunnelError::Config("the tunnel is already running"));
            }
            st.socket = Some(Arc::clone(&socket));
        }
        let result = self.run_inner(&socket, shutdown).await;
        self.shared.stopped.store(true, Ordering::Release);
        let mut st = self.lock();
        let handles: Vec<SocketHandle> = st.ports.keys().copied().collect();
        for handle in handles {
            st.sockets.get_mut::<tcp::Socket>(handle).abort();
        }
        // Send the resets, so the peers' ends learn at once.
        st.flush(Instant::now());
        st.socket = None;
        result
    }

    async fn run_inner(
        &self,
        socket: &UdpSocket,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), TunnelError> {
        tokio::pin!(shutdown);
        let epoch = self.shared.epoch;
        let mut rx = vec![0u8; MAX_DATAGRAM];
        let mut out = vec![0u8; MAX_DATAGRAM];
        let mut next_timer = Instant::now() + TIMER_TICK;
        let sleep = tokio::time::sleep(TIMER_TICK);
        tokio::pin!(sleep);
        loop {
            let deadline = {
                let mut st = self.lock();
                let now = Instant::now();
                let State { iface, sockets, .. } = &mut *st;
                let stack = iface
                    .poll_delay(smol_time(epoch, now), sockets)
                    .map(|d| now + Duration::from_micros(d.total_micros()));
                st.deadline = stack.map_or(next_timer, |s| s.min(next_timer));
                st.deadline
            };
            sleep.as_mut().reset(deadline.into());
            tokio::select! {
                biased;
                () = &mut shutdown => return Ok(()),
                readable = socket.readable() => readable?,
                () = self.shared.wake.notified() => {}
                () = &mut sleep => {}
            }
            let now = Instant::now();
            let mut st = self.lock();
            let sessions = st.table.counters().sessions;
            for _ in 0..RECV_BATCH {
                match socket.try_recv_from(&mut rx) {
                    Ok((len, from)) => {
                        st.stats.datagrams_in += 1;
                        if let Some(datagram) = rx.get(..len) {
                            st.on_datagram(now, from, datagram, &mut out, socket);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    // An ICMP error for an earlier send (a peer gone), or a signal: nothing to do.
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionRefused
                                | io::ErrorKind::ConnectionReset
                                | io::ErrorKind::HostUnreachable
                                | io::ErrorKind::NetworkUnreachable
                                | io::ErrorKind::Interrupted
                        ) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if now >= next_timer || std::mem::take(&mut st.timers_due) {
                let State { table, stats, .. } = &mut *st;
                table.update_timers(now, &mut out, |to, datagram| {
                    send(socket, stats, to, datagram)
                });
                st.reap(now);
                next_timer = now + TIMER_TICK;
            }
            st.poll_stack(now, socket);
            if st.table.counters().sessions != sessions {
                self.shared.handshake.notify_waiters();
            }
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn send(socket: &UdpSocket, stats: &mut TunnelStats, to: SocketAddr, datagram: &[u8]) {
    match socket.try_send_to(datagram, to) {
        Ok(_) => stats.datagrams_out += 1,
        Err(_) => stats.send_errors += 1,
    }
}

impl State {
    fn on_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        datagram: &[u8],
        out: &mut [u8],
        socket: &UdpSocket,
    ) {
        match self.table.receive(now, from, datagram, out) {
            Received::Nothing => {}
            Received::Reply { to, datagram } => send(socket, &mut self.stats, to, datagram),
            Received::Deliver { packet, .. } => self.device.push_rx(packet),
        }
    }

    /// From a stream: lets the stack send what the stream gave it, through the driver's
    /// socket, and wakes the driver if the stack's next timer is due before it wakes.
    fn flush_from_stream(&mut self, wake: &Notify) {
        let now = Instant::now();
        self.flush(now);
        let next = self
            .iface
            .poll_delay(smol_time(self.epoch, now), &self.sockets)
            .map(|d| now + Duration::from_micros(d.total_micros()));
        if next.is_some_and(|next| next < self.deadline) {
            wake.notify_one();
        }
    }

    fn flush(&mut self, now: Instant) {
        if let Some(socket) = self.socket.clone() {
            self.poll_stack(now, &socket);
        }
    }

    /// Lets smoltcp take in what arrived and emit what it wants to send, then encrypts
    /// and sends that.
    fn poll_stack(&mut self, now: Instant, socket: &UdpSocket) {
        let State {
            iface,
            device,
            sockets,
            table,
            stats,
            out,
            epoch,
            ..
        } = self;
        let epoch = *epoch;
        loop {
            iface.poll(smol_time(epoch, now), device, sockets);
            let mut sent = false;
            while let Some(packet) = device.pop_tx() {
                sent = true;
                if let Some((to, datagram)) = table.encapsulate(&packet, out) {
                    send(socket, stats, to, datagram);
                }
            }
            // The stack stops emitting when its queue is full; go again until it is quiet.
            if !sent {
                break;
            }
        }
    }

    fn open_socket(
        &mut self,
        remote: SocketAddrV4,
        (recv, send): (usize, usize),
    ) -> Result<SocketHandle, TunnelError> {
        let port = self.free_port()?;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; recv]),
            tcp::SocketBuffer::new(vec![0; send]),
        );
        socket.set_nagle_enabled(false);
        socket.set_congestion_control(congestion_control());
        socket.set_ack_delay(Some(smoltcp::time::Duration::from_millis(1)));
        socket.set_keep_alive(Some(smoltcp::time::Duration::from_secs(25)));
        socket.set_timeout(Some(smoltcp::time::Duration::from_secs(120)));
        socket
            .connect(
                self.iface.context(),
                (IpAddress::Ipv4(*remote.ip()), remote.port()),
                port,
            )
            .map_err(|_| TunnelError::NoPeer(*remote.ip()))?;
        let handle = self.sockets.add(socket);
        self.ports.insert(handle, port);
        self.used_ports.insert(port);
        self.streams += 1;
        Ok(handle)
    }

    fn free_port(&mut self) -> Result<u16, TunnelError> {
        let span = usize::from(PORTS.end() - PORTS.start()) + 1;
        if self.ports.len() >= span {
            return Err(TunnelError::NoPort);
        }
        // Fewer sockets than ports: a free one turns up within `span` tries.
        for _ in 0..span {
            let port = self.next_port;
            self.next_port = if port == *PORTS.end() {
                *PORTS.start()
            } else {
                port + 1
            };
            if !self.used_ports.contains(&port) {
                return Ok(port);
            }
        }
        Err(TunnelError::NoPort)
    }

    fn kill_streams_to(&mut self, address: Ipv4Addr) {
        for (_, socket) in self.sockets.iter_mut() {
            if let smoltcp::socket::Socket::Tcp(socket) = socket
                && socket.remote_endpoint().map(|e| e.addr) == Some(IpAddress::Ipv4(address))
            {
                socket.abort();
            }
        }
    }

    /// Removes the sockets of dropped streams once they are closed; resets any still
    /// lingering after `LINGER`.
    fn reap(&mut self, now: Instant) {
        let mut i = 0;
        while let Some(&(handle, since)) = self.detached.get(i) {
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            if now.saturating_duration_since(since) >= LINGER {
                socket.abort();
            }
            if matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                self.sockets.remove(handle);
                if let Some(port) = self.ports.remove(&handle) {
                    self.used_ports.remove(&port);
                }
                self.detached.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }
}

/// A TCP connection to a peer's tunnel address. Dropping it closes it gracefully (FIN);
/// [`TunnelStream::kill`] resets it.
pub struct TunnelStream {
    shared: Arc<Shared>,
    handle: SocketHandle,
    remote: SocketAddrV4,
}

impl std::fmt::Debug for TunnelStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunnelStream")
            .field("remote", &self.remote)
            .finish()
    }
}

impl TunnelStream {
    pub fn remote(&self) -> SocketAddrV4 {
        self.remote
    }

    /// Resets the connection (RST) at once; reads and writes then fail.
    pub fn kill(&self) {
        self.shared
            .lock()
            .sockets
            .get_mut::<tcp::Socket>(self.handle)
            .abort();
        self.shared.wake.notify_one();
    }

    fn poll_established(&self, cx: &mut Context<'_>) -> Poll<Result<(), TunnelError>> {
        let mut st = self.shared.lock();
        if self.shared.stopped.load(Ordering::Acquire) {
            return Poll::Ready(Err(TunnelError::Shutdown));
        }
        let socket = st.sockets.get_mut::<tcp::Socket>(self.handle);
        match socket.state() {
            tcp::State::SynSent | tcp::State::SynReceived => {
                socket.register_send_waker(cx.waker());
                Poll::Pending
            }
            tcp::State::Closed | tcp::State::Listen => {
                Poll::Ready(Err(TunnelError::ConnectRefused(self.remote)))
            }
            _ => Poll::Ready(Ok(())),
        }
    }
}

impl AsyncRead for TunnelStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut st = self.shared.lock();
        let socket = st.sockets.get_mut::<tcp::Socket>(self.handle);
        match socket.recv_slice(buf.initialize_unfilled()) {
            Ok(0) => {
                socket.register_recv_waker(cx.waker());
                Poll::Pending
            }
            Ok(n) => {
                buf.advance(n);
                // The window opened: the peer may be owed a window update.
                st.flush_from_stream(&self.shared.wake);
                Poll::Ready(Ok(()))
            }
            Err(tcp::RecvError::Finished) => Poll::Ready(Ok(())),
            Err(tcp::RecvError::InvalidState) => {
                Poll::Ready(Err(io::ErrorKind::ConnectionReset.into()))
            }
        }
    }
}

impl AsyncWrite for TunnelStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.shared.lock();
        let socket = st.sockets.get_mut::<tcp::Socket>(self.handle);
        match socket.send_slice(data) {
            Ok(0) if !data.is_empty() => {
                socket.register_send_waker(cx.waker());
                Poll::Pending
            }
            Ok(n) => {
                st.flush_from_stream(&self.shared.wake);
                Poll::Ready(Ok(n))
            }
            Err(tcp::SendError::InvalidState) => Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared
            .lock()
            .sockets
            .get_mut::<tcp::Socket>(self.handle)
            .close();
        self.shared.wake.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for TunnelStream {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.sockets.get_mut::<tcp::Socket>(self.handle).close();
        st.detached.push((self.handle, Instant::now()));
        st.streams = st.streams.saturating_sub(1);
        drop(st);
        self.shared.wake.notify_one();
    }
}

fn congestion_control() -> tcp::CongestionControl {
    match std::env::var("POSTERN_TUNNEL_CC").as_deref() {
        Ok("none") => tcp::CongestionControl::None,
        Ok("reno") => tcp::CongestionControl::Reno,
        _ => tcp::CongestionControl::Cubic,
    }
}

fn smol_time(epoch: Instant, now: Instant) -> smoltcp::time::Instant {
    let micros = now.saturating_duration_since(epoch).as_micros();
    smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    u64::from_le_bytes(bytes)
}
