//! The tunnel against a WireGuard written by others: Debian's `wireguard-go` on a TUN
//! device in a network namespace, set up as a router's enrolment script would set it up,
//! with a TCP echo server on the router's tunnel address. Runs as root (CI does);
//! skipped, with a message, otherwise.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

#[path = "support/lab.rs"]
mod lab;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use postern_tunnel::{PrivateKey, PublicKey, Tunnel, TunnelConfig, TunnelStream, bind_udp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);
const ECHO_PORT: u16 = 7;

/// A running tunnel and the means to stop it.
struct Running {
    tunnel: Tunnel,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

fn start(
    key: &PrivateKey,
    bind: SocketAddr,
    router: Option<PublicKey>,
    connect_timeout: Duration,
) -> (Running, SocketAddr) {
    let mut config = TunnelConfig::new(key.clone(), GATEWAY, "100.64.0.0/10".parse().unwrap());
    config.connect_timeout = connect_timeout;
    let tunnel = Tunnel::new(config).unwrap();
    if let Some(router) = router {
        tunnel.upsert_peer(router, ROUTER).unwrap();
    }
    let socket = bind_udp(bind).unwrap();
    let local = socket.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let driver = tunnel.clone();
    let task = tokio::spawn(async move {
        driver
            .run(socket, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    (
        Running {
            tunnel,
            stop: Some(tx),
            task,
        },
        local,
    )
}

/// The echo server on the router's tunnel address, inside the namespace.
fn serve_echo(lab: &lab::Lab) -> JoinHandle<()> {
    let listener = lab.listen_tcp(SocketAddr::from((ROUTER, ECHO_PORT)));
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    })
}

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes `len` pseudo-random bytes and reads them back, concurrently.
async fn echo_round_trip(stream: &mut TunnelStream, len: usize, seed: u8) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let (mut r, mut w) = tokio::io::split(stream);
    let expected = data.clone();
    let writer = async move {
        w.write_all(&data).await.unwrap();
        w
    };
    let reader = async move {
        let mut back = vec![0u8; len];
        r.read_exact(&mut back).await.unwrap();
        back
    };
    let (_, back) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(writer, reader)
    })
    .await
    .expect("the echo came back");
    assert!(back == expected, "the echo differs from what was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wireguard_go_router_roams_and_survives_a_gateway_restart() {
    if !lab::can_run() {
        return;
    }
    let mut lab = lab::Lab::new();
    let key = PrivateKey::generate().unwrap();
    let (running, gateway_udp) = start(
        &key,
        SocketAddr::from((lab.host_ip, 0)),
        None,
        Duration::from_secs(10),
    );
    lab.start_router(
        &key.public_key().to_base64(),
        gateway_udp,
        &format!("{ROUTER}/10"),
        GATEWAY,
    );
    let router: PublicKey = lab.router_public.parse().unwrap();
    running.tunnel.upsert_peer(router, ROUTER).unwrap();
    let _echo = serve_echo(&lab);

    // The router initiates (its keepalive starts the handshake); the gateway answers.
    wait_for("the router's handshake", Duration::from_secs(15), || {
        running
            .tunnel
            .peer(&router)
            .is_some_and(|p| p.last_handshake_at.is_some())
    })
    .await;
    let status = running.tunnel.peer(&router).unwrap();
    assert_eq!(
        status.endpoint,
        Some(SocketAddr::from((lab.router_ip, lab::ROUTER_LISTEN_PORT)))
    );

    let mut stream = running.tunnel.dial(ROUTER, ECHO_PORT).await.unwrap();
    assert_eq!(stream.remote(), SocketAddrV4::new(ROUTER, ECHO_PORT));
    echo_round_trip(&mut stream, 1, 1).await;
    echo_round_trip(&mut stream, 4 << 20, 2).await;
    let status = running.tunnel.peer(&router).unwrap();
    assert!(
        status.rx_bytes > 4 << 20 && status.tx_bytes > 4 << 20,
        "{status:?}"
    );

    // What the gateway's entry ports will do: accept a kernel TCP connection, dial the
    // router through the tunnel, and copy both ways.
    let entry = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let entry_addr = entry.local_addr().unwrap();
    let forwarder = running.tunnel.clone();
    let forward = tokio::spawn(async move {
        let (mut client, _) = entry.accept().await.unwrap();
        let mut upstream = forwarder.dial(ROUTER, ECHO_PORT).await.unwrap();
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await
    });
    let mut client = tokio::net::TcpStream::connect(entry_addr).await.unwrap();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    client.write_all(&data).await.unwrap();
    let mut back = vec![0u8; data.len()];
    client.read_exact(&mut back).await.unwrap();
    assert!(back == data, "the forwarded echo differs");
    client.shutdown().await.unwrap();
    let mut rest = Vec::new();
    client.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    let (up, down) = forward.await.unwrap().unwrap();
    assert_eq!((up, down), (200_000, 200_000));

    // Roaming: the router's source port changes. Its next packet (any traffic of its
    // own towards the gateway) moves the endpoint, and the open stream carries on.
    lab.change_listen_port(lab::ROUTER_LISTEN_PORT + 1);
    let chatter = lab.udp_socket();
    chatter.send_to(b"router traffic", (GATEWAY, 9)).unwrap();
    let moved = SocketAddr::from((lab.router_ip, lab::ROUTER_LISTEN_PORT + 1));
    wait_for(
        "the endpoint to follow the router",
        Duration::from_secs(5),
        || running.tunnel.peer(&router).unwrap().endpoint == Some(moved),
    )
    .await;
    echo_round_trip(&mut stream, 64 << 10, 3).await;

    // A connection refused by the router is an error, not a hang.
    let refused = running.tunnel.dial(ROUTER, 9).await;
    assert!(
        matches!(refused, Err(postern_tunnel::TunnelError::ConnectRefused(_))),
        "{refused:?}"
    );

    // The gateway restarts on the same UDP port with the same key: the open stream is
    // reset, and once the router re-handshakes (WireGuard starts one 15 s after data the
    // router sends goes unanswered) a new dial works.
    running.stop().await;
    let mut buf = [0u8; 16];
    let after = stream.read(&mut buf).await;
    assert!(
        after.is_err() || after.is_ok_and(|n| n == 0),
        "the stream ended"
    );
    drop(stream);
    let (running, again) = start(&key, gateway_udp, Some(router), Duration::from_secs(60));
    assert_eq!(again, gateway_udp);
    let chatter = tokio::net::UdpSocket::from_std({
        chatter.set_nonblocking(true).unwrap();
        chatter
    })
    .unwrap();
    let chatter = tokio::spawn(async move {
        loop {
            let _ = chatter.send_to(b"router traffic", (GATEWAY, 9)).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let restarted = Instant::now();
    let mut stream = running.tunnel.dial(ROUTER, ECHO_PORT).await.unwrap();
    eprintln!(
        "re-handshake and connect after the gateway's restart: {:?}",
        restarted.elapsed()
    );
    echo_round_trip(&mut stream, 256 << 10, 4).await;
    assert!(
        running.tunnel.stats().table.unknown_peer > 0,
        "the old session's packets were refused"
    );

    // Restarted again, the gateway now remembers where the router was and resumes it:
    // it initiates there itself, so the router is back at once, with nothing of its own
    // to send (keepalives alone would wait for its next rekey, up to two minutes).
    chatter.abort();
    drop(stream);
    let endpoint = running.tunnel.peer(&router).unwrap().endpoint.unwrap();
    running.stop().await;
    // (Usually a few ms; a lost initiation is sent again 5 s later by WireGuard's timers.
    // Without resuming, a router with nothing to send waits for its rekey, 2 minutes.)
    let (running, _) = start(&key, gateway_udp, Some(router), Duration::from_secs(15));
    let restarted = Instant::now();
    assert!(running.tunnel.resume_peer(&router, endpoint));
    let mut stream = running.tunnel.dial(ROUTER, ECHO_PORT).await.unwrap();
    let resumed = restarted.elapsed();
    eprintln!("resumed by the gateway after its restart: {resumed:?}");
    assert!(resumed < Duration::from_secs(12), "{resumed:?}");
    assert!(running.tunnel.stats().table.initiations_sent >= 1);
    echo_round_trip(&mut stream, 64 << 10, 5).await;

    // Removing the peer ends its streams at once.
    assert!(running.tunnel.remove_peer(&router));
    let mut buf = [0u8; 16];
    let after = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf))
        .await
        .unwrap();
    assert!(
        after.is_err(),
        "a removed peer's stream is reset: {after:?}"
    );
    assert!(matches!(
        running.tunnel.dial(ROUTER, ECHO_PORT).await,
        Err(postern_tunnel::TunnelError::NoPeer(_))
    ));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_gets_no_answer_and_no_stream() {
    if !lab::can_run() {
        return;
    }
    let mut lab = lab::Lab::new();
    let key = PrivateKey::generate().unwrap();
    // The gateway does not know the router's key: its handshakes go unanswered.
    let (running, gateway_udp) = start(
        &key,
        SocketAddr::from((lab.host_ip, 0)),
        None,
        Duration::from_secs(2),
    );
    lab.start_router(
        &key.public_key().to_base64(),
        gateway_udp,
        &format!("{ROUTER}/10"),
        GATEWAY,
    );
    wait_for(
        "the router's handshake attempt",
        Duration::from_secs(10),
        || running.tunnel.stats().table.unknown_peer > 0,
    )
    .await;
    assert_eq!(running.tunnel.stats().table.handshakes, 0);
    assert!(matches!(
        running.tunnel.dial(ROUTER, ECHO_PORT).await,
        Err(postern_tunnel::TunnelError::NoPeer(_))
    ));
    running.stop().await;
}
