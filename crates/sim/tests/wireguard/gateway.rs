//! A gateway written in the test, without root: boringtun's `Tunn` as the WireGuard
//! **responder** for one router, and a smoltcp stack at the gateway's tunnel address
//! that dials TCP into the tunnel. It shares no code with the sim's `wg` (the sim is
//! the initiator; this only answers), so the two sides are held against each other.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UdpSocket;
use tokio::sync::Notify;

#[derive(Default)]
struct Dev {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut p = vec![0; len];
        let r = f(&mut p);
        self.0.push_back(p);
        r
    }
}

impl phy::Device for Dev {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = 1420;
        c
    }
}

struct Inner {
    tunn: Tunn,
    /// Where the router was last heard from (authenticated).
    endpoint: Option<SocketAddr>,
    iface: Interface,
    dev: Dev,
    sockets: SocketSet<'static>,
    next_port: u16,
    epoch: Instant,
    /// Handshake initiations answered.
    handshakes: u32,
}

struct Shared {
    inner: Mutex<Inner>,
    wake: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap()
    }
}

pub struct Gateway {
    shared: Arc<Shared>,
    pub public: [u8; 32],
    pub udp: SocketAddr,
    router: Ipv4Addr,
    task: tokio::task::JoinHandle<()>,
}

fn now_smol(epoch: Instant) -> smoltcp::time::Instant {
    smoltcp::time::Instant::from_micros(epoch.elapsed().as_micros() as i64)
}

impl Gateway {
    /// A gateway on `bind` (UDP) at tunnel address `address`/`prefix` that admits
    /// `router_public` at `router`.
    pub async fn start(
        bind: &str,
        address: Ipv4Addr,
        prefix: u8,
        router_public: [u8; 32],
        router: Ipv4Addr,
    ) -> Gateway {
        let secret = x25519::StaticSecret::from(rand::random::<[u8; 32]>());
        let public = *x25519::PublicKey::from(&secret).as_bytes();
        let tunn = Tunn::new(
            secret,
            x25519::PublicKey::from(router_public),
            None,
            None,
            7,
            None,
        );
        let epoch = Instant::now();
        let mut dev = Dev::default();
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut dev, now_smol(epoch));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(address), prefix))
                .unwrap();
        });
        let socket = Arc::new(UdpSocket::bind(bind).await.unwrap());
        let udp = socket.local_addr().unwrap();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                tunn,
                endpoint: None,
                iface,
                dev,
                sockets: SocketSet::new(Vec::new()),
                next_port: 40000,
                epoch,
                handshakes: 0,
            }),
            wake: Notify::new(),
        });
        let task = tokio::spawn(drive(Arc::clone(&shared), socket));
        Gateway {
            shared,
            public,
            udp,
            router,
            task,
        }
    }

    /// Where the gateway sends the router's packets now.
    pub fn endpoint(&self) -> Option<SocketAddr> {
        self.shared.lock().endpoint
    }

    pub fn handshakes(&self) -> u32 {
        self.shared.lock().handshakes
    }

    /// A TCP connection to the router's tunnel address, through the tunnel.
    pub async fn dial(&self, port: u16) -> io::Result<GwStream> {
        let handle = {
            let mut st = self.shared.lock();
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; 65536]),
                tcp::SocketBuffer::new(vec![0; 65536]),
            );
            let local = st.next_port;
            st.next_port += 1;
            let Inner { iface, sockets, .. } = &mut *st;
            s.connect(iface.context(), (IpAddress::Ipv4(self.router), port), local)
                .map_err(|e| io::Error::other(e.to_string()))?;
            sockets.add(s)
        };
        self.shared.wake.notify_one();
        let stream = GwStream {
            shared: Arc::clone(&self.shared),
            handle,
        };
        tokio::time::timeout(
            Duration::from_secs(3),
            std::future::poll_fn(|cx| {
                let mut st = stream.shared.lock();
                let s = st.sockets.get_mut::<tcp::Socket>(stream.handle);
                match s.state() {
                    tcp::State::SynSent | tcp::State::SynReceived => {
                        s.register_send_waker(cx.waker());
                        Poll::Pending
                    }
                    tcp::State::Established => Poll::Ready(Ok(())),
                    _ => Poll::Ready(Err(io::Error::from(io::ErrorKind::ConnectionRefused))),
                }
            }),
        )
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
        Ok(stream)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drive(shared: Arc<Shared>, socket: Arc<UdpSocket>) {
    let mut buf = vec![0u8; 65536];
    let mut out = vec![0u8; 65536];
    let mut next_timer = Instant::now();
    loop {
        let delay = {
            let mut st = shared.lock();
            let Inner {
                iface,
                sockets,
                epoch,
                ..
            } = &mut *st;
            iface
                .poll_delay(now_smol(*epoch), sockets)
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(Duration::from_millis(100))
                .min(Duration::from_millis(100))
        };
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let mut st = shared.lock();
                let is_init = buf.first() == Some(&1);
                match st.tunn.decapsulate(Some(from.ip()), &buf[..n], &mut out) {
                    TunnResult::WriteToNetwork(d) => {
                        let _ = socket.try_send_to(d, from);
                        if is_init {
                            st.handshakes += 1;
                        }
                        st.endpoint = Some(from);
                        while let TunnResult::WriteToNetwork(d) = st.tunn.decapsulate(None, &[], &mut out) {
                            let _ = socket.try_send_to(d, from);
                        }
                    }
                    TunnResult::WriteToTunnelV4(p, _) => {
                        let p = p.to_vec();
                        st.dev.rx.push_back(p);
                        st.endpoint = Some(from);
                    }
                    TunnResult::Done => st.endpoint = Some(from),
                    _ => {}
                }
            }
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep(delay) => {}
        }
        let mut st = shared.lock();
        if Instant::now() >= next_timer {
            if let TunnResult::WriteToNetwork(d) = st.tunn.update_timers(&mut out)
                && let Some(e) = st.endpoint
            {
                let _ = socket.try_send_to(d, e);
            }
            next_timer = Instant::now() + Duration::from_millis(250);
        }
        loop {
            let Inner {
                iface,
                dev,
                sockets,
                epoch,
                ..
            } = &mut *st;
            iface.poll(now_smol(*epoch), dev, sockets);
            if st.dev.tx.is_empty() {
                break;
            }
            while let Some(p) = st.dev.tx.pop_front() {
                if let TunnResult::WriteToNetwork(d) = st.tunn.encapsulate(&p, &mut out)
                    && let Some(e) = st.endpoint
                {
                    let _ = socket.try_send_to(d, e);
                }
            }
        }
    }
}

/// A TCP connection the test gateway opened through the tunnel.
pub struct GwStream {
    shared: Arc<Shared>,
    handle: SocketHandle,
}

impl AsyncRead for GwStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut st = self.shared.lock();
        let s = st.sockets.get_mut::<tcp::Socket>(self.handle);
        let r = match s.recv_slice(buf.initialize_unfilled()) {
            Ok(0) => {
                s.register_recv_waker(cx.waker());
                return Poll::Pending;
            }
            Ok(n) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Err(tcp::RecvError::Finished) => return Poll::Ready(Ok(())),
            Err(_) => return Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
        };
        drop(st);
        self.shared.wake.notify_one();
        r
    }
}

impl AsyncWrite for GwStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut st = self.shared.lock();
        let s = st.sockets.get_mut::<tcp::Socket>(self.handle);
        let r = match s.send_slice(data) {
            Ok(0) if !data.is_empty() => {
                if !s.may_send() {
                    return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
                }
                s.register_send_waker(cx.waker());
                return Poll::Pending;
            }
            Ok(n) => Poll::Ready(Ok(n)),
            Err(_) => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
        };
        drop(st);
        self.shared.wake.notify_one();
        r
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared
            .lock()
            .sockets
            .get_mut::<tcp::Socket>(self.handle)
            .close();
        self.shared.wake.notify_one();
        Poll::Ready(Ok(()))
    }
}

impl Drop for GwStream {
    fn drop(&mut self) {
        self.shared
            .lock()
            .sockets
            .get_mut::<tcp::Socket>(self.handle)
            .abort();
        self.shared.wake.notify_one();
    }
}
