//! The router's userspace TCP/IP stack on its tunnel address (smoltcp): a virtual IP
//! device fed with the packets WireGuard decrypted, listening TCP sockets on the ports
//! the router serves through the tunnel, and the connections they accepted.
//!
//! smoltcp's listening socket becomes the connection it accepts, so after every poll a
//! port whose listener moved on gets a fresh one (up to [`MAX_CONNECTIONS`] per port).

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use tokio::sync::Notify;

/// Connections one port serves at once through the tunnel; more SYNs go unanswered.
pub const MAX_CONNECTIONS: usize = 64;
/// Packets waiting between WireGuard and the stack, each way.
const QUEUE: usize = 1024;
/// Each connection's buffers, each way.
const BUFFER: usize = 64 * 1024;
/// A dropped connection that has not finished closing by then is reset.
const LINGER: Duration = Duration::from_secs(30);

/// The stack and the wake-up its streams use to have the driver poll it.
pub(crate) struct Shared {
    state: Mutex<Stack>,
    pub(crate) wake: Notify,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Stack> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) struct Stack {
    pub(crate) iface: Interface,
    pub(crate) device: Device,
    pub(crate) sockets: SocketSet<'static>,
    /// Listening sockets, by the port they listen on.
    listeners: Vec<(SocketHandle, u16)>,
    /// Accepted connections not yet established, by port.
    pending: Vec<(SocketHandle, u16)>,
    /// Connections handed out, by port (to count them).
    live: Vec<(SocketHandle, u16)>,
    /// The ports listened on.
    wanted: Vec<u16>,
    /// Connections whose stream was dropped, with when.
    detached: Vec<(SocketHandle, Instant)>,
    epoch: Instant,
}

impl Shared {
    /// A stack at `address`/`prefix` (a /32, as RouterOS's `address=A network=B`), with
    /// a default route through the tunnel towards `gateway`, listening on `ports`.
    pub(crate) fn new(
        address: Ipv4Addr,
        prefix: u8,
        gateway: Ipv4Addr,
        mtu: usize,
        ports: &[u16],
    ) -> Shared {
        let epoch = Instant::now();
        let mut device = Device::new(mtu);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = rand::random();
        let mut iface = Interface::new(config, &mut device, smol_time(epoch, epoch));
        iface.update_ip_addrs(|addrs| {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(address), prefix.min(32)));
        });
        let _ = iface.routes_mut().add_default_ipv4_route(gateway);
        let mut stack = Stack {
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            listeners: Vec::new(),
            pending: Vec::new(),
            live: Vec::new(),
            wanted: ports.to_vec(),
            detached: Vec::new(),
            epoch,
        };
        for &port in ports {
            stack.listen(port);
        }
        Shared {
            state: Mutex::new(stack),
            wake: Notify::new(),
        }
    }
}

impl Stack {
    fn listen(&mut self, port: u16) {
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; BUFFER]),
            tcp::SocketBuffer::new(vec![0; BUFFER]),
        );
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(Some(smoltcp::time::Duration::from_millis(1)));
        socket.set_keep_alive(Some(smoltcp::time::Duration::from_secs(30)));
        socket.set_timeout(Some(smoltcp::time::Duration::from_secs(120)));
        if socket.listen(port).is_err() {
            return;
        }
        let handle = self.sockets.add(socket);
        self.listeners.push((handle, port));
    }

    /// Listens on exactly `ports` from now on: new ports get a listener, gone ones lose
    /// theirs (their connections stay until their handlers end them).
    pub(crate) fn set_ports(&mut self, ports: &[u16]) {
        self.wanted = ports.to_vec();
        let mut i = 0;
        while let Some(&(handle, port)) = self.listeners.get(i) {
            if ports.contains(&port) {
                i += 1;
            } else {
                self.listeners.swap_remove(i);
                self.remove(handle);
            }
        }
        for &port in ports {
            if !self.listeners.iter().any(|(_, p)| *p == port) {
                self.listen(port);
            }
        }
    }

    fn count(&self, port: u16) -> usize {
        self.pending
            .iter()
            .chain(self.live.iter())
            .filter(|(_, p)| *p == port)
            .count()
    }

    /// Lets smoltcp take in what arrived and emit what it wants to send (into
    /// `device.tx`), then returns the connections that became established, with their
    /// port and the peer's address.
    pub(crate) fn poll(&mut self, now: Instant) -> Vec<(SocketHandle, u16, SocketAddr)> {
        let t = smol_time(self.epoch, now);
        self.iface.poll(t, &mut self.device, &mut self.sockets);
        // Listeners that accepted a SYN are connections now; listen again behind them.
        let mut i = 0;
        while let Some(&(handle, port)) = self.listeners.get(i) {
            if self.sockets.get::<tcp::Socket>(handle).is_listening() {
                i += 1;
                continue;
            }
            self.listeners.swap_remove(i);
            self.pending.push((handle, port));
            if self.wanted.contains(&port) && self.count(port) < MAX_CONNECTIONS {
                self.listen(port);
            }
        }
        let mut ready = Vec::new();
        let mut i = 0;
        while let Some(&(handle, port)) = self.pending.get(i) {
            let socket = self.sockets.get::<tcp::Socket>(handle);
            match socket.state() {
                tcp::State::SynReceived => i += 1,
                tcp::State::Established | tcp::State::CloseWait => {
                    let peer = socket.remote_endpoint().and_then(|e| match e.addr {
                        IpAddress::Ipv4(a) => Some(SocketAddr::from((a, e.port))),
                        #[allow(unreachable_patterns)]
                        _ => None,
                    });
                    self.pending.swap_remove(i);
                    match peer {
                        Some(peer) => {
                            self.live.push((handle, port));
                            ready.push((handle, port, peer));
                        }
                        None => self.remove(handle),
                    }
                }
                _ => {
                    // Reset before it was established.
                    self.pending.swap_remove(i);
                    self.remove(handle);
                }
            }
        }
        // A port that was full gets its listener back once a connection ended.
        let mut ports: Vec<u16> = self
            .pending
            .iter()
            .chain(self.live.iter())
            .map(|(_, p)| *p)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        for port in ports {
            if self.wanted.contains(&port)
                && !self.listeners.iter().any(|(_, p)| *p == port)
                && self.count(port) < MAX_CONNECTIONS
            {
                self.listen(port);
            }
        }
        ready
    }

    /// When smoltcp next wants to be polled, from `now`.
    pub(crate) fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        self.iface
            .poll_delay(smol_time(self.epoch, now), &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()))
    }

    fn remove(&mut self, handle: SocketHandle) {
        self.sockets.remove(handle);
    }

    /// A stream let go of its connection: it is removed once closed.
    pub(crate) fn detach(&mut self, handle: SocketHandle) {
        self.live.retain(|(h, _)| *h != handle);
        self.detached.push((handle, Instant::now()));
    }

    /// Removes closed connections of dropped streams; resets those lingering too long.
    pub(crate) fn reap(&mut self, now: Instant) {
        let mut i = 0;
        while let Some(&(handle, since)) = self.detached.get(i) {
            let socket = self.sockets.get_mut::<tcp::Socket>(handle);
            if now.saturating_duration_since(since) >= LINGER {
                socket.abort();
            }
            if matches!(socket.state(), tcp::State::Closed | tcp::State::TimeWait) {
                self.detached.swap_remove(i);
                self.remove(handle);
            } else {
                i += 1;
            }
        }
    }

    /// Resets every connection (the tunnel is going down).
    pub(crate) fn abort_all(&mut self) {
        for (_, socket) in self.sockets.iter_mut() {
            #[allow(irrefutable_let_patterns)]
            if let smoltcp::socket::Socket::Tcp(s) = socket {
                s.abort();
            }
        }
    }
}

/// The virtual IP device: decrypted packets wait in `rx` for the stack, packets the
/// stack emits wait in `tx` for encryption. Both bounded; what `rx` refuses is dropped
/// (TCP retransmits).
pub(crate) struct Device {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
}

impl Device {
    fn new(mtu: usize) -> Device {
        Device {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu,
        }
    }

    pub(crate) fn push_rx(&mut self, packet: &[u8]) {
        if self.rx.len() < QUEUE && packet.len() <= self.mtu {
            self.rx.push_back(packet.to_vec());
        }
    }

    pub(crate) fn pop_tx(&mut self) -> Option<Vec<u8>> {
        self.tx.pop_front()
    }
}

pub(crate) struct RxToken(Vec<u8>);
pub(crate) struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let r = f(&mut packet);
        self.0.push_back(packet);
        r
    }
}

impl phy::Device for Device {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(
        &mut self,
        _now: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        (self.tx.len() < QUEUE).then_some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // What arrives was authenticated by WireGuard; checksums only on what we send.
        caps.checksum.ipv4 = Checksum::Tx;
        caps.checksum.tcp = Checksum::Tx;
        caps.checksum.icmpv4 = Checksum::Tx;
        caps
    }
}

pub(crate) fn smol_time(epoch: Instant, now: Instant) -> smoltcp::time::Instant {
    let micros = now.saturating_duration_since(epoch).as_micros();
    smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
}
