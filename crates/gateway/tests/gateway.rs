//! The gateway over real TCP on loopback: echo and sink targets on 127.0.0.1:0, clients
//! bound to chosen 127.x source addresses, events read from the gateway's channel.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use domain::{AccessId, ForwardId};
use postern_gateway::{
    Config, EndReason, Error, Event, ForwardSpec, Gateway, GrantKey, Refusal, SourcePolicy,
    Transfer, TransferMode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::{Instant, timeout};

const WAIT: Duration = Duration::from_secs(5);

/// A target that echoes every byte, counting the connections it accepted.
async fn echo_target() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// A target that reads until end of stream, then answers `reply` bytes and closes.
async fn sink_target(reply: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink).await;
                let _ = s.write_all(&vec![b'r'; reply]).await;
                let _ = s.shutdown().await;
            });
        }
    });
    addr
}

/// A loopback address with nothing listening on it.
async fn dead_target() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

fn policy(nets: &[&str]) -> SourcePolicy {
    SourcePolicy::new(nets.iter().map(|n| n.parse().unwrap()), false)
}

fn spec(key: GrantKey, target: SocketAddr, nets: &[&str]) -> ForwardSpec {
    ForwardSpec {
        key,
        listen: "127.0.0.1:0".parse().unwrap(),
        target: target.into(),
        sources: policy(nets),
        deadline: None,
    }
}

fn access() -> GrantKey {
    GrantKey::Access(AccessId::new())
}

/// Connects to `addr` from `source` (a 127.x address), like an operator on another host.
async fn connect_from(source: &str, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.parse::<IpAddr>().unwrap(), 0))?;
    socket.connect(addr).await
}

async fn echo_once(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0; msg.len()];
    timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("echo timed out")
        .unwrap();
    assert_eq!(buf, msg);
}

/// Waits for the stream to be closed by the far end; returns the bytes read first (a
/// reset counts as closed).
async fn wait_closed(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    match timeout(WAIT, s.read_to_end(&mut got)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => assert!(
            matches!(
                e.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
            ),
            "{e}"
        ),
        Err(_) => panic!("connection still open"),
    }
    got
}

/// The next event matching `pred`, skipping others.
async fn next_event(rx: &mut postern_gateway::Events, pred: impl Fn(&Event) -> bool) -> Event {
    timeout(WAIT, async {
        loop {
            let e = rx.recv().await.expect("event channel closed");
            if pred(&e) {
                return e;
            }
        }
    })
    .await
    .expect("no such event")
}

fn is_closed(e: &Event) -> bool {
    matches!(e, Event::ConnectionClosed { .. })
}

#[tokio::test]
async fn allowed_client_gets_echoes_and_first_use_is_reported() {
    let (target, accepted) = echo_target().await;
    let (gw, mut rx) = Gateway::new(Config::default());
    let key = access();
    let open = gw.open(spec(key, target, &["127.0.0.1/32"])).await.unwrap();
    assert_ne!(open.listen.port(), 0);
    assert!(gw.grant(key).unwrap().first_connection_at.is_none());

    let mut a = connect_from("127.0.0.1", open.listen).await.unwrap();
    echo_once(&mut a, b"hello").await;
    let Event::ConnectionOpened {
        key: k,
        first,
        source,
        at,
        ..
    } = next_event(&mut rx, |e| matches!(e, Event::ConnectionOpened { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(
        (k, first, source.ip()),
        (key, true, "127.0.0.1".parse().unwrap())
    );
    assert_eq!(gw.grant(key).unwrap().first_connection_at, Some(at));

    let mut b = connect_from("127.0.0.1", open.listen).await.unwrap();
    echo_once(&mut b, b"again").await;
    let Event::ConnectionOpened { first, .. } =
        next_event(&mut rx, |e| matches!(e, Event::ConnectionOpened { .. })).await
    else {
        unreachable!()
    };
    assert!(!first, "only the grant's first connection is first");
    assert_eq!(gw.connections(key).unwrap().len(), 2);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    drop(a);
    let Event::ConnectionClosed {
        bytes_in,
        bytes_out,
        reason,
        started_at,
        at: ended_at,
        ..
    } = next_event(&mut rx, is_closed).await
    else {
        unreachable!()
    };
    assert_eq!((bytes_in, bytes_out, reason), (5, 5, EndReason::Finished));
    assert_eq!(started_at, at, "the first connection's start");
    assert!(ended_at >= started_at);
    assert_eq!(gw.connections(key).unwrap().len(), 1);
}

#[tokio::test]
async fn source_outside_allow_from_is_refused_with_no_data() {
    let (target, accepted) = echo_target().await;
    let (gw, mut rx) = Gateway::new(Config::default());
    let key = access();
    let open = gw.open(spec(key, target, &["127.0.0.1/32"])).await.unwrap();

    let mut outsider = connect_from("127.0.0.2", open.listen).await.unwrap();
    // Whatever it sends, it gets nothing back and is closed.
    let _ = outsider.write_all(b"let me in").await;
    assert!(wait_closed(&mut outsider).await.is_empty());
    let Event::ConnectionRefused {
        key: k,
        source,
        refusal,
        ..
    } = next_event(&mut rx, |_| true).await
    else {
        panic!("the first event is not a refusal")
    };
    assert_eq!(k, key);
    assert_eq!(source.ip(), "127.0.0.2".parse::<IpAddr>().unwrap());
    assert_eq!(refusal, Refusal::SourceNotAllowed);
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "the target saw nothing");
    assert!(gw.grant(key).unwrap().first_connection_at.is_none());

    // The allowed source still works.
    let mut insider = connect_from("127.0.0.1", open.listen).await.unwrap();
    echo_once(&mut insider, b"ok").await;
}

#[tokio::test]
async fn allow_from_cidrs_and_rfc1918_flag() {
    let (target, _) = echo_target().await;
    let (gw, mut rx) = Gateway::new(Config::default());
    let key = access();
    let open = gw.open(spec(key, target, &["127.0.0.0/30"])).await.unwrap();
    for (source, allowed) in [
        ("127.0.0.1", true),
        ("127.0.0.2", true),
        ("127.0.0.3", true),
        ("127.0.0.4", false),
        ("127.0.1.1", false),
    ] {
        let mut s = connect_from(source, open.listen).await.unwrap();
        let event = next_event(&mut rx, |e| {
            matches!(
                e,
                Event::ConnectionOpened { .. } | Event::ConnectionRefused { .. }
            )
        })
        .await;
        assert_eq!(
            matches!(event, Event::ConnectionOpened { .. }),
            allowed,
            "{source}: {event:?}"
        );
        if allowed {
            echo_once(&mut s, source.as_bytes()).await;
        } else {
            assert!(wait_closed(&mut s).await.is_empty());
        }
    }

    // allow_rfc1918 admits private sources, not loopback.
    let key = access();
    let mut rfc = spec(key, target, &[]);
    rfc.sources.allow_rfc1918 = true;
    let open = gw.open(rfc).await.unwrap();
    let mut s = connect_from("127.0.0.1", open.listen).await.unwrap();
    assert!(wait_closed(&mut s).await.is_empty());
}

#[tokio::test]
async fn revoke_kills_a_live_connection_within_100ms() {
    let (target, _) = echo_target().await;
    let (gw, mut rx) = Gateway::new(Config::default());
    let key = access();
    // An address of its own, so that once the port is free no other test's socket
    // (the kernel hands out freed ports again) can answer the check at the end.
    let mut own = spec(key, target, &["127.0.0.1/32"]);
    own.listen = "127.0.0.61:0".parse().unwrap();
    let open = gw.open(own).await.unwrap();
    let mut s = connect_from("127.0.0.1", open.listen).await.unwrap();
    echo_once(&mut s, b"session").await;

    let started = Instant::now();
    let closer = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.close(key, EndReason::Revoked).await })
    };
    wait_closed(&mut s).await;
    let seen = started.elapsed();
    assert!(
        seen < Duration::from_millis(100),
        "client saw the end after {seen:?}"
    );
    let report = closer.await.unwrap().unwrap();
    assert_eq!(report.connections_killed, 1);
    assert_eq!(report.reason, EndReason::Revoked);

    let Event::ConnectionClosed {
        reason, bytes_in, ..
    } = next_event(&mut rx, is_closed).await
    else {
        unreachable!()
    };
    assert_eq!((reason, bytes_in), (EndReason::Revoked, 7));
    let closed = next_event(&mut rx, |e| matches!(e, Event::GrantClosed { .. })).await;
    assert!(matches!(
        closed,
        Event::GrantClosed {
            connections_killed: 1,
            reason: EndReason::Revoked,
            ..
        }
    ));
    // The listener is gone and the grant is unknown.
    assert!(connect_from("127.0.0.1", open.listen).await.is_err());
    assert!(matches!(gw.grant(key), Err(Error::NotFound { .. })));
    assert!(matches!(
        gw.close(key, EndReason::Revoked).await,
        Err(Error::NotFound { .. })
    ));
}

#[tokio::test]
async fn deadline_closes_the_grant_by_itself() {
    let (target, _) = echo_target().await;
    let (gw, mut rx) = Gateway::new(Config::default());
    let key = GrantKey::Forward(ForwardId::new());
    let mut s = spec(key, target, &["127.0.0.1/32"]);
    // An address of its own: see revoke_kills_a_live_connection_within_100ms.
    s.listen = "127.0.0.62:0".parse().unwrap();
    let deadline = Instant::now() + Duration::from_millis(300);
    s.deadline = Some(deadline);
    let open = gw.open(s).await.unwrap();
    let mut c = connect_from("127.0.0.1", open.listen).await.unwrap();
    echo_once(&mut c, b"before").await;

    // Nobody calls close.
    wait_closed(&mut c).await;
    let now = Instant::now();
    assert!(now >= deadline, "closed early");
    assert!(
        now - deadline < Duration::from_millis(100),
        "closed {:?} after the deadline",
        now - deadline
    );
    let Event::ConnectionClosed { reason, .. } = next_event(&mut rx, is_closed).await else {
        unreachable!()
    };
    assert_eq!(reason, EndReason::Expired);
    let closed = next_event(&mut rx, |e| matches!(e, Event::GrantClosed { .. })).await;
    assert!(matches!(
        closed,
        Event::GrantClosed {
            reason: EndReason::Expired,
            connections_killed: 1,
            ..
        }
    ));
    assert!(connect_from("127.0.0.1", open.listen).await.is_err());
    assert!(gw.grants().is_empty());
}

#[tokio::test]
async fn extending_and_shortening_the_deadline() {
    let (target, _) = echo_target().await;
    let (gw, mut rx) = Gateway::new(Config::default());
    let key = access();
    let mut s = spec(key, target, &["127.0.0.1/32"]);
    s.deadline = Some(Instant::now() + Duration::from_millis(200));
    let open = gw.open(s).await.unwrap();
    let extended = Instant::now() + Duration::from_millis(700);
    gw.set_deadline(key, Some(extended)).unwrap();
    assert_eq!(gw.grant(key).unwrap().deadline, Some(extended));

    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut c = connect_from("127.0.0.1", open.listen).await.unwrap();
    echo_once(&mut c, b"still here").await;
    wait_closed(&mut c).await;
    assert!(Instant::now() >= extended);

    // Shortening to the past closes at once, as expired.
    let key = access();
    let mut s = spec(key, target, &["127.0.0.1/32"]);
    s.deadline = Some(Instant::now() + Duration::from_secs(3600));
    let open = gw.open(s).await.unwrap();
    let mut c = connect_from("127.0.0.1", open.listen).await.unwrap();
    echo_once(&mut c, b"x").await;
    gw.set_deadline(key, Some(Instant::now())).unwrap();
    wait_closed(&mut c).await;
    let closed = next_event(
        &mut rx,
        |e| matches!(e, Event::GrantClosed { key: k, .. } if *k == key),
    )
    .await;
    assert!(matches!(
        closed,
        Event::GrantClosed {
            reason: EndReason::Expired,
            ..
        }
    ));
}

#[tokio::test]
async fn byte_counters_follow_each_direction() {
    let (gw, mut rx) = Gateway::new(Config::default());
    // Live counters, mid-connection.
    let (echo, _) = echo_target().await;
    let key = access();
    let open = gw.open(spec(key, echo, &["127.0.0.1/32"])).await.unwrap();
    let mut c = connect_from("127.0.0.1", open.listen).await.unwrap();
    echo_once(&mut c, &[7u8; 1000]).await;
    let live = gw.connections(key).unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!((live[0].bytes_in, live[0].bytes_out), (1000, 1000));
    assert_eq!(live[0].source, c.local_addr().unwrap());
    drop(c);
    next_event(&mut rx, is_closed).await;

    // Different counts each way, with a half-close passed through.
    let sink = sink_target(12_345).await;
    let key = access();
    let open = gw.open(spec(key, sink, &["127.0.0.1/32"])).await.unwrap();
    let mut c = connect_from("127.0.0.1", open.listen).await.unwrap();
    c.write_all(&vec![1u8; 300_000]).await.unwrap();
    c.shutdown().await.unwrap();
    let mut reply = Vec::new();
    timeout(WAIT, c.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.len(), 12_345);
    let Event::ConnectionClosed {
        bytes_in,
        bytes_out,
        reason,
        duration,
        ..
    } = next_event(&mut rx, is_closed).await
    else {
        unreachable!()
    };
    assert_eq!((bytes_in, bytes_out), (300_000, 12_345));
    assert_eq!(reason, EndReason::Finished);
    assert!(duration > Duration::ZERO);
}

/// Pseudo-random bytes (xorshift), so a misplaced chunk cannot go unnoticed.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Sends `len` bytes through a forward to an echo target and checks every byte comes
/// back in order; returns how the gateway moved them.
async fn bulk_round_trip(mode: TransferMode, len: usize) -> Transfer {
    use sha2::{Digest, Sha256};
    let (target, _) = echo_target().await;
    let config = Config {
        transfer: mode,
        ..Config::default()
    };
    let (gw, mut rx) = Gateway::new(config);
    let key = access();
    let open = gw.open(spec(key, target, &["127.0.0.1/32"])).await.unwrap();
    let c = connect_from("127.0.0.1", open.listen).await.unwrap();
    let data = Arc::new(pattern(len, 0x5eed));
    let (mut r, mut w) = c.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        for chunk in sent.chunks(1 << 20) {
            w.write_all(chunk).await.unwrap();
        }
        w.shutdown().await.unwrap();
    });
    let mut received = Vec::with_capacity(len);
    timeout(Duration::from_secs(60), r.read_to_end(&mut received))
        .await
        .expect("bulk transfer stalled")
        .unwrap();
    writer.await.unwrap();
    assert_eq!(received.len(), len);
    assert_eq!(
        Sha256::digest(&received),
        Sha256::digest(data.as_slice()),
        "the bytes came back altered"
    );
    let Event::ConnectionClosed {
        bytes_in,
        bytes_out,
        transfer,
        reason,
        ..
    } = next_event(&mut rx, is_closed).await
    else {
        unreachable!()
    };
    assert_eq!((bytes_in, bytes_out), (len as u64, len as u64));
    assert_eq!(reason, EndReason::Finished);
    transfer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_is_intact_through_splice() {
    let transfer = bulk_round_trip(TransferMode::Splice, 64 << 20).await;
    if cfg!(target_os = "linux") {
        assert_eq!(transfer, Transfer::Splice, "splice was not used");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forced_copy_fallback_is_intact() {
    let transfer = bulk_round_trip(TransferMode::Copy, 16 << 20).await;
    assert_eq!(transfer, Transfer::Copy);
}

#[tokio::test]
async fn unreachable_target_closes_the_client() {
    let target = dead_target().await;
    let (gw, mut rx) = Gateway::new(Config::default());
    let key = access();
    let open = gw.open(spec(key, target, &["127.0.0.1/32"])).await.unwrap();
    let mut c = connect_from("127.0.0.1", open.listen).await.unwrap();
    assert!(wait_closed(&mut c).await.is_empty());
    let Event::ConnectionClosed {
        reason,
        bytes_in,
        bytes_out,
        ..
    } = next_event(&mut rx, is_closed).await
    else {
        unreachable!()
    };
    assert_eq!(reason, EndReason::TargetUnreachable);
    assert_eq!((bytes_in, bytes_out), (0, 0));
    assert!(gw.connections(key).unwrap().is_empty());
}

#[tokio::test]
async fn connection_cap_refuses_the_extra_one() {
    let (target, _) = echo_target().await;
    let config = Config {
        max_connections_per_grant: 1,
        ..Config::default()
    };
    let (gw, mut rx) = Gateway::new(config);
    let key = access();
    let open = gw.open(spec(key, target, &["127.0.0.1/32"])).await.unwrap();
    let mut first = connect_from("127.0.0.1", open.listen).await.unwrap();
    echo_once(&mut first, b"1").await;
    let mut second = connect_from("127.0.0.1", open.listen).await.unwrap();
    assert!(wait_closed(&mut second).await.is_empty());
    let refused = next_event(&mut rx, |e| matches!(e, Event::ConnectionRefused { .. })).await;
    assert!(matches!(
        refused,
        Event::ConnectionRefused {
            refusal: Refusal::TooManyConnections,
            ..
        }
    ));
    echo_once(&mut first, b"2").await;
}

#[tokio::test]
async fn a_source_at_its_cap_is_refused_on_every_entry_port_and_others_are_not() {
    let (target, _) = echo_target().await;
    let config = Config {
        max_connections_per_source: 2,
        ..Config::default()
    };
    let (gw, mut rx) = Gateway::new(config);
    let (a, b) = (access(), access());
    let allow = &["127.0.0.1/32", "127.0.0.2/32"];
    let port_a = gw.open(spec(a, target, allow)).await.unwrap().listen;
    let port_b = gw.open(spec(b, target, allow)).await.unwrap().listen;
    // Two from 127.0.0.1, one on each entry port: at the cap.
    let mut first = connect_from("127.0.0.1", port_a).await.unwrap();
    echo_once(&mut first, b"1").await;
    let mut second = connect_from("127.0.0.1", port_b).await.unwrap();
    echo_once(&mut second, b"2").await;
    // A third from it is refused, on either port, counted and evented as such.
    let mut third = connect_from("127.0.0.1", port_a).await.unwrap();
    assert!(wait_closed(&mut third).await.is_empty());
    let refused = next_event(&mut rx, |e| matches!(e, Event::ConnectionRefused { .. })).await;
    let Event::ConnectionRefused {
        refusal,
        source,
        key,
        ..
    } = refused
    else {
        unreachable!()
    };
    assert_eq!(refusal, Refusal::TooManyFromSource);
    assert_eq!(source.ip().to_string(), "127.0.0.1");
    assert_eq!(key, a);
    assert_eq!(refusal.to_string(), "too many connections from this source");
    assert_eq!(gw.refused(Refusal::TooManyFromSource), 1);
    assert_eq!(gw.refused(Refusal::TooManyConnections), 0);
    // Another source is not held back by it.
    let mut other = connect_from("127.0.0.2", port_b).await.unwrap();
    echo_once(&mut other, b"3").await;
    // Once one of the first two ends, the source may connect again.
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        let mut c = connect_from("127.0.0.1", port_b).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(500), async {
            c.write_all(b"4").await?;
            let mut buf = [0u8; 1];
            c.read_exact(&mut buf).await.map(|_| buf)
        })
        .await
        .is_ok_and(|r| r.is_ok_and(|b| b == *b"4"))
        {
            again = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        again.is_some(),
        "the source stayed refused after a connection ended"
    );
    echo_once(&mut second, b"5").await;
}

#[tokio::test]
async fn a_full_event_queue_never_blocks_forwarding_and_never_loses_an_end() {
    let (target, _) = echo_target().await;
    let config = Config {
        event_capacity: 1,
        ..Config::default()
    };
    // Nobody reads while the connections come and go.
    let (gw, mut rx) = Gateway::new(config);
    let key = access();
    let open = gw.open(spec(key, target, &["127.0.0.1/32"])).await.unwrap();
    for i in 0..5u8 {
        let mut c = connect_from("127.0.0.1", open.listen).await.unwrap();
        echo_once(&mut c, &[i]).await;
    }
    let mut refused = connect_from("127.0.0.9", open.listen).await.unwrap();
    assert!(wait_closed(&mut refused).await.is_empty());
    gw.close(key, EndReason::Revoked).await.unwrap();
    // The first opening is kept (authorized_at), one more fits, the rest are dropped;
    // every end is there.
    assert_eq!(gw.events_dropped(), 4);
    let mut events = Vec::new();
    while let Some(e) = rx.try_recv() {
        events.push(e);
    }
    let closed = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::ConnectionClosed {
                    bytes_in: 1,
                    bytes_out: 1,
                    ..
                }
            )
        })
        .count();
    assert_eq!(closed, 5, "{events:?}");
    assert!(
        matches!(events.last(), Some(Event::GrantClosed { .. })),
        "{events:?}"
    );
    assert!(
        matches!(
            events.first(),
            Some(Event::ConnectionOpened { first: true, .. })
        ),
        "{events:?}"
    );
}

#[tokio::test]
async fn open_refuses_duplicates_past_deadlines_and_taken_addresses() {
    let (target, _) = echo_target().await;
    let (gw, _rx) = Gateway::new(Config::default());
    let key = access();
    gw.open(spec(key, target, &[])).await.unwrap();
    let err = gw.open(spec(key, target, &[])).await.unwrap_err();
    assert_eq!(err.to_string(), format!("{key} is already open"));

    let mut late = spec(access(), target, &[]);
    late.deadline = Some(Instant::now());
    assert!(matches!(
        gw.open(late).await,
        Err(Error::DeadlinePassed { .. })
    ));

    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut clash = spec(access(), target, &[]);
    clash.listen = taken.local_addr().unwrap();
    let err = gw.open(clash).await.unwrap_err();
    assert!(matches!(err, Error::Bind { .. }), "{err}");
    assert!(err.to_string().starts_with("cannot listen on 127.0.0.1:"));
    assert_eq!(gw.grants().len(), 1);
}

#[tokio::test]
async fn reconcile_rebuilds_listeners_from_desired_state() {
    let (target, _) = echo_target().await;
    let (gw, _rx) = Gateway::new(Config::default());
    let (a, b, c, d) = (
        access(),
        access(),
        GrantKey::Forward(ForwardId::new()),
        access(),
    );
    let report = gw
        .reconcile(vec![
            spec(a, target, &["127.0.0.1/32"]),
            spec(b, target, &["127.0.0.1/32"]),
        ])
        .await;
    assert_eq!(report.opened.len(), 2);
    assert!(report.failed.is_empty());
    let listen_a = gw.grant(a).unwrap().listen;
    let mut live_b = connect_from("127.0.0.1", gw.grant(b).unwrap().listen)
        .await
        .unwrap();
    echo_once(&mut live_b, b"b").await;

    let mut keep_a = spec(a, target, &["127.0.0.1/32"]);
    let later = Instant::now() + Duration::from_secs(3600);
    keep_a.deadline = Some(later);
    let mut expired_d = spec(d, target, &[]);
    expired_d.deadline = Some(Instant::now());
    let report = gw
        .reconcile(vec![keep_a, spec(c, target, &[]), expired_d])
        .await;
    assert_eq!(report.opened.len(), 1);
    assert_eq!(report.opened[0].key, c);
    assert_eq!(report.failed.len(), 1);
    assert!(matches!(report.failed[0], (k, Error::DeadlinePassed { .. }) if k == d));
    assert_eq!(report.kept, vec![a]);
    assert_eq!(report.closed.len(), 1);
    assert_eq!(report.closed[0].key, b);
    assert_eq!(report.closed[0].connections_killed, 1);
    wait_closed(&mut live_b).await;
    assert_eq!(gw.grant(a).unwrap().listen, listen_a, "kept, not reopened");
    assert_eq!(gw.grant(a).unwrap().deadline, Some(later));
    assert!(gw.grant(c).is_ok());
    assert_eq!(gw.grants().len(), 2);
}

#[tokio::test]
async fn shutdown_closes_every_grant() {
    let (target, _) = echo_target().await;
    let (gw, mut rx) = Gateway::new(Config::default());
    let mut clients = Vec::new();
    for _ in 0..3 {
        let key = access();
        let open = gw.open(spec(key, target, &["127.0.0.1/32"])).await.unwrap();
        let mut c = connect_from("127.0.0.1", open.listen).await.unwrap();
        echo_once(&mut c, b"up").await;
        clients.push(c);
    }
    let report = gw.shutdown().await;
    assert_eq!((report.grants, report.connections_killed), (3, 3));
    for c in &mut clients {
        wait_closed(c).await;
    }
    let Event::ConnectionClosed { reason, .. } = next_event(&mut rx, is_closed).await else {
        unreachable!()
    };
    assert_eq!(reason, EndReason::Shutdown);
    assert!(gw.grants().is_empty());
}

#[tokio::test]
async fn dropping_the_last_handle_stops_forwarding() {
    let (target, _) = echo_target().await;
    let (gw, _rx) = Gateway::new(Config::default());
    let key = access();
    let open = gw.open(spec(key, target, &["127.0.0.1/32"])).await.unwrap();
    let mut c = connect_from("127.0.0.1", open.listen).await.unwrap();
    echo_once(&mut c, b"up").await;
    drop(gw);
    wait_closed(&mut c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_kills_a_busy_transfer_within_100ms() {
    let (target, _) = echo_target().await;
    let (gw, mut rx) = Gateway::new(Config::default());
    let key = access();
    let open = gw.open(spec(key, target, &["127.0.0.1/32"])).await.unwrap();
    let c = connect_from("127.0.0.1", open.listen).await.unwrap();
    let (mut r, mut w) = c.into_split();
    // A writer that never stops until the connection dies.
    let writer = tokio::spawn(async move {
        let chunk = vec![9u8; 64 * 1024];
        while w.write_all(&chunk).await.is_ok() {}
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0usize;
    while total < (8 << 20) {
        total += r.read(&mut buf).await.unwrap();
    }
    let started = Instant::now();
    let closer = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.close(key, EndReason::Revoked).await })
    };
    let ended = timeout(WAIT, async {
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the transfer went on after revoke");
    let seen = started.elapsed();
    assert!(
        seen < Duration::from_millis(100),
        "client saw the end after {seen:?}"
    );
    assert_eq!(closer.await.unwrap().unwrap().connections_killed, 1);
    let Event::ConnectionClosed {
        reason, bytes_out, ..
    } = next_event(&mut rx, is_closed).await
    else {
        unreachable!()
    };
    assert_eq!(reason, EndReason::Revoked);
    assert!(bytes_out >= 8 << 20);
    timeout(WAIT, writer).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_target_that_never_answers_times_out_as_unreachable() {
    // A listener that never accepts, its queue filled: further SYNs are dropped, so a
    // connect hangs until the gateway's timeout.
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let stuck = socket.listen(1).unwrap();
    let target = stuck.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = timeout(Duration::from_millis(200), TcpStream::connect(target)).await {
            fillers.push(s);
        }
    }
    let config = Config {
        connect_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let (gw, mut rx) = Gateway::new(config);
    let key = access();
    let open = gw.open(spec(key, target, &["127.0.0.1/32"])).await.unwrap();
    let started = Instant::now();
    let mut c = connect_from("127.0.0.1", open.listen).await.unwrap();
    assert!(wait_closed(&mut c).await.is_empty());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    let Event::ConnectionClosed { reason, .. } = next_event(&mut rx, is_closed).await else {
        unreachable!()
    };
    assert_eq!(reason, EndReason::TargetUnreachable);
    drop(stuck);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_kills_fifty_sessions_within_100ms() {
    let (target, _) = echo_target().await;
    let (gw, _rx) = Gateway::new(Config::default());
    let key = access();
    let open = gw.open(spec(key, target, &["127.0.0.0/30"])).await.unwrap();
    let mut clients = Vec::new();
    for i in 0..50 {
        let source = ["127.0.0.1", "127.0.0.2", "127.0.0.3"][i % 3];
        let mut c = connect_from(source, open.listen).await.unwrap();
        echo_once(&mut c, b"up").await;
        clients.push(c);
    }
    assert_eq!(gw.grant(key).unwrap().connections, 50);
    let started = Instant::now();
    let report = gw.close(key, EndReason::Revoked).await.unwrap();
    assert_eq!(report.connections_killed, 50);
    for c in &mut clients {
        wait_closed(c).await;
    }
    let seen = started.elapsed();
    assert!(
        seen < Duration::from_millis(100),
        "the last client saw the end after {seen:?}"
    );
}

/// A dialer as the management tunnel is one: here a TCP connection made by the dialer
/// itself, counted, whose kill resets it.
struct Dialer {
    dials: Arc<AtomicUsize>,
    killed: Arc<AtomicUsize>,
}

struct Dialed {
    stream: TcpStream,
    killed: Arc<AtomicUsize>,
}

impl tokio::io::AsyncRead for Dialed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Dialed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl postern_gateway::Upstream for Dialed {
    fn kill(&mut self) {
        self.killed.fetch_add(1, Ordering::SeqCst);
        let _ = socket2::SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

impl postern_gateway::Dial for Dialer {
    fn dial(&self, address: SocketAddr) -> postern_gateway::DialFuture {
        self.dials.fetch_add(1, Ordering::SeqCst);
        let killed = self.killed.clone();
        Box::pin(async move {
            let stream = TcpStream::connect(address).await?;
            Ok(Box::new(Dialed { stream, killed }) as postern_gateway::BoxUpstream)
        })
    }

    fn via(&self) -> String {
        "test dialer".into()
    }
}

#[tokio::test]
async fn a_dialed_target_forwards_counts_and_is_killed_with_its_grant() {
    let (target, accepted) = echo_target().await;
    let (gw, mut rx) = Gateway::new(Config::default());
    let dials = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicUsize::new(0));
    let dialer: Arc<dyn postern_gateway::Dial> = Arc::new(Dialer {
        dials: dials.clone(),
        killed: killed.clone(),
    });
    let key = access();
    let mut s = spec(key, target, &["127.0.0.1/32"]);
    s.target = postern_gateway::Target::Dial {
        address: target,
        dialer: dialer.clone(),
    };
    let open = gw.open(s.clone()).await.unwrap();
    assert_eq!(
        gw.grant(key).unwrap().target.to_string(),
        format!("{target} via test dialer")
    );

    // Bytes both ways, half-close passed on, counted.
    let mut a = connect_from("127.0.0.1", open.listen).await.unwrap();
    echo_once(&mut a, b"through the dialer").await;
    a.shutdown().await.unwrap();
    assert!(wait_closed(&mut a).await.is_empty());
    let Event::ConnectionClosed {
        bytes_in,
        bytes_out,
        reason,
        transfer,
        ..
    } = next_event(&mut rx, is_closed).await
    else {
        unreachable!()
    };
    assert_eq!((bytes_in, bytes_out), (18, 18));
    assert_eq!(reason, EndReason::Finished);
    assert_eq!(transfer, postern_gateway::Transfer::Copy);
    assert_eq!(dials.load(Ordering::SeqCst), 1);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // The same spec again is kept as it is (same address, same dialer); another
    // dialer is another target.
    let report = gw.reconcile(vec![s.clone()]).await;
    assert_eq!(report.kept, vec![key]);

    // A live connection dies at once with its grant: the client reset, the upstream killed.
    let mut b = connect_from("127.0.0.1", open.listen).await.unwrap();
    echo_once(&mut b, b"live").await;
    let started = std::time::Instant::now();
    gw.close(key, EndReason::Revoked).await.unwrap();
    wait_closed(&mut b).await;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert_eq!(killed.load(Ordering::SeqCst), 1);
    let Event::ConnectionClosed { reason, .. } = next_event(&mut rx, is_closed).await else {
        unreachable!()
    };
    assert_eq!(reason, EndReason::Revoked);

    // A dial that fails is the target unreachable.
    let key = access();
    let mut s = spec(key, dead_target().await, &["127.0.0.1/32"]);
    s.target = postern_gateway::Target::Dial {
        address: dead_target().await,
        dialer,
    };
    let open = gw.open(s).await.unwrap();
    let mut c = connect_from("127.0.0.1", open.listen).await.unwrap();
    assert!(wait_closed(&mut c).await.is_empty());
    let Event::ConnectionClosed { reason, .. } = next_event(&mut rx, is_closed).await else {
        unreachable!()
    };
    assert_eq!(reason, EndReason::TargetUnreachable);
}

/// The gateway node, driven through control messages.
mod node;
