//! The real driver on loopback, no root needed: a router's end made of boringtun's `Tunn`
//! as initiator over a real UDP socket, hand-built IP packets, and what the gateway's
//! stack answers (ICMP echo). Hostile datagrams, limits and shutdown.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use boringtun::x25519;
use postern_tunnel::{PrivateKey, Tunnel, TunnelConfig, TunnelError, bind_udp};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

struct Running {
    tunnel: Tunnel,
    udp: SocketAddr,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), TunnelError>>,
}

fn start(config: TunnelConfig) -> Running {
    let tunnel = Tunnel::new(config).unwrap();
    let socket = bind_udp(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let udp = socket.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let driver = tunnel.clone();
    let task = tokio::spawn(async move {
        driver
            .run(socket, async {
                let _ = stopped.await;
            })
            .await
    });
    Running {
        tunnel,
        udp,
        stop,
        task,
    }
}

fn config(key: &PrivateKey) -> TunnelConfig {
    let mut config = TunnelConfig::new(key.clone(), GATEWAY, "100.64.0.0/10".parse().unwrap());
    config.connect_timeout = Duration::from_millis(500);
    config
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request from `src` to `dst`, with valid checksums.
fn echo_request(src: Ipv4Addr, dst: Ipv4Addr, seq: u16) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34];
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(b"postern tunnel ping");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

/// A router: boringtun's initiator on its own UDP socket.
struct Router {
    key: PrivateKey,
    tunn: Tunn,
    socket: UdpSocket,
    gateway: SocketAddr,
}

impl Router {
    async fn new(gateway_key: &PrivateKey, gateway: SocketAddr) -> Router {
        let key = PrivateKey::generate().unwrap();
        let secret = x25519::StaticSecret::from(decode(&key.to_base64()));
        let public = x25519::PublicKey::from(*gateway_key.public_key().as_bytes());
        Router {
            tunn: Tunn::new(secret, public, None, Some(25), 1, None),
            key,
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            gateway,
        }
    }

    async fn recv(&mut self) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let (len, _) =
            tokio::time::timeout(Duration::from_secs(5), self.socket.recv_from(&mut buf))
                .await
                .expect("the gateway answered")
                .unwrap();
        buf.truncate(len);
        buf
    }

    /// Initiation, response, and the confirming keepalive.
    async fn handshake(&mut self) {
        let mut buf = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(init) =
            self.tunn.format_handshake_initiation(&mut buf, true)
        else {
            panic!("no initiation");
        };
        self.socket.send_to(init, self.gateway).await.unwrap();
        let response = self.recv().await;
        let TunnResult::WriteToNetwork(keepalive) =
            self.tunn.decapsulate(None, &response, &mut buf)
        else {
            panic!("the response did not complete the handshake");
        };
        self.socket.send_to(keepalive, self.gateway).await.unwrap();
    }

    async fn send_packet(&mut self, packet: &[u8]) {
        let mut buf = vec![0u8; 2048];
        let TunnResult::WriteToNetwork(datagram) = self.tunn.encapsulate(packet, &mut buf) else {
            panic!("no session to send on");
        };
        self.socket.send_to(datagram, self.gateway).await.unwrap();
    }

    async fn receive_packet(&mut self) -> Vec<u8> {
        let datagram = self.recv().await;
        let mut buf = vec![0u8; 2048];
        match self.tunn.decapsulate(None, &datagram, &mut buf) {
            TunnResult::WriteToTunnelV4(packet, source) => {
                assert_eq!(source, GATEWAY);
                packet.to_vec()
            }
            other => panic!("not a packet: {other:?}"),
        }
    }
}

fn decode(text: &str) -> [u8; 32] {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap()
        .try_into()
        .unwrap()
}

#[tokio::test]
async fn a_router_handshakes_and_the_gateway_answers_its_ping() {
    let key = PrivateKey::generate().unwrap();
    let running = start(config(&key));
    let mut router = Router::new(&key, running.udp).await;
    running
        .tunnel
        .upsert_peer(router.key.public_key(), ROUTER)
        .unwrap();

    let before = std::time::SystemTime::now();
    router.handshake().await;
    router.send_packet(&echo_request(ROUTER, GATEWAY, 1)).await;
    let reply = router.receive_packet().await;
    assert_eq!(reply[9], 1, "ICMP");
    assert_eq!(&reply[12..16], &GATEWAY.octets());
    assert_eq!(&reply[16..20], &ROUTER.octets());
    assert_eq!(reply[20], 0, "an echo reply");
    assert!(reply.ends_with(b"postern tunnel ping"));

    let status = running.tunnel.peer(&router.key.public_key()).unwrap();
    assert_eq!(status.endpoint, Some(router.socket.local_addr().unwrap()));
    assert!(status.last_handshake_at.unwrap() >= before - Duration::from_secs(1));
    assert!(status.last_seen_at.unwrap() >= status.last_handshake_at.unwrap());
    assert!(status.rx_bytes > 0 && status.tx_bytes > 0);
    let stats = running.tunnel.stats();
    assert_eq!((stats.table.handshakes, stats.table.sessions), (1, 1));

    // A packet claiming another inner source is dropped and counted, not answered.
    router
        .send_packet(&echo_request(Ipv4Addr::new(100, 64, 0, 99), GATEWAY, 2))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(running.tunnel.stats().table.wrong_source, 1);
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(
            Duration::from_millis(200),
            router.socket.recv_from(&mut buf)
        )
        .await
        .is_err(),
        "nothing came back"
    );
    running.stop.send(()).unwrap();
    running.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn hostile_datagrams_are_counted_and_the_driver_carries_on() {
    let key = PrivateKey::generate().unwrap();
    let running = start(config(&key));
    let attacker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut sent = 0;
    for len in [0usize, 1, 3, 4, 31, 32, 92, 148, 1500, 65_000] {
        for first in [1u8, 2, 3, 4, 0xff] {
            let mut junk = vec![0x5a; len];
            if let Some(b) = junk.first_mut() {
                *b = first;
            }
            attacker.send_to(&junk, running.udp).unwrap();
            sent += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = running.tunnel.stats();
        if s.datagrams_in == sent {
            // Everything refused, nothing answered, nothing delivered.
            assert_eq!(s.table.handshakes + s.table.cookie_replies, 0);
            assert_eq!(s.datagrams_out, 0);
            assert_eq!(
                s.table.invalid + s.table.unknown_peer + s.table.unexpected,
                sent,
                "{s:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all datagrams were read: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The driver still serves a real router.
    let mut router = Router::new(&key, running.udp).await;
    running
        .tunnel
        .upsert_peer(router.key.public_key(), ROUTER)
        .unwrap();
    router.handshake().await;
    router.send_packet(&echo_request(ROUTER, GATEWAY, 1)).await;
    assert_eq!(router.receive_packet().await[20], 0);
    running.stop.send(()).unwrap();
    running.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn dials_that_cannot_succeed_fail_clearly() {
    let key = PrivateKey::generate().unwrap();
    let running = start(config(&key));
    let router = PrivateKey::generate().unwrap().public_key();
    running.tunnel.upsert_peer(router, ROUTER).unwrap();

    let unknown = running.tunnel.dial(Ipv4Addr::new(100, 64, 9, 9), 22).await;
    assert!(
        matches!(unknown, Err(TunnelError::NoPeer(_))),
        "{unknown:?}"
    );
    // A known peer that never handshook: the dial waits for it, then times out.
    let started = Instant::now();
    let silent = running.tunnel.dial(ROUTER, 22).await;
    assert!(
        matches!(silent, Err(TunnelError::ConnectTimeout(_))),
        "{silent:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(450));

    // Refused peers, at the table's door.
    let refused = running
        .tunnel
        .upsert_peer(PrivateKey::generate().unwrap().public_key(), ROUTER);
    assert!(refused.is_err(), "an address is one peer's");
    assert!(
        running
            .tunnel
            .upsert_peer(key.public_key(), Ipv4Addr::new(100, 64, 0, 5))
            .is_err()
    );

    running.stop.send(()).unwrap();
    running.task.await.unwrap().unwrap();
    let after = running.tunnel.dial(ROUTER, 22).await;
    assert!(matches!(after, Err(TunnelError::Shutdown)), "{after:?}");
}

#[test]
fn bad_configuration_is_refused() {
    let key = PrivateKey::generate().unwrap();
    let mut outside = config(&key);
    outside.address = Ipv4Addr::new(10, 0, 0, 1);
    assert!(matches!(Tunnel::new(outside), Err(TunnelError::Config(_))));
    let mut tiny = config(&key);
    tiny.mtu = 100;
    assert!(matches!(Tunnel::new(tiny), Err(TunnelError::Config(_))));
}

#[tokio::test]
async fn streams_are_bounded_and_the_refusal_counted() {
    let key = PrivateKey::generate().unwrap();
    let mut config = config(&key);
    config.max_streams = 2;
    config.connect_timeout = Duration::from_secs(3);
    let running = start(config);
    let mut router = Router::new(&key, running.udp).await;
    running
        .tunnel
        .upsert_peer(router.key.public_key(), ROUTER)
        .unwrap();
    router.handshake().await;

    // The router never answers a SYN: two dials stay pending and hold their places.
    let pending: Vec<_> = (0..2)
        .map(|_| {
            let tunnel = running.tunnel.clone();
            tokio::spawn(async move { tunnel.dial(ROUTER, 22).await })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    while running.tunnel.stats().streams < 2 {
        assert!(Instant::now() < deadline, "the two dials did not start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let third = running.tunnel.dial(ROUTER, 22).await;
    assert!(
        matches!(third, Err(TunnelError::TooManyStreams { limit: 2 })),
        "{third:?}"
    );
    assert_eq!(running.tunnel.stats().streams_refused, 1);
    for dial in pending {
        dial.abort();
    }
    running.stop.send(()).unwrap();
    running.task.await.unwrap().unwrap();
}
