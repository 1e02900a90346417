//! The gateway node driven through control messages only, as a server drives it: real
//! TCP entry ports on loopback, an echo target, sessions as pairs of channels, and a
//! sim router behind NAT with its own WireGuard for the tunnel end to end.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use chrono::{DateTime, Utc};
use control::msg::{
    CloseReason, DialRequest, Down, Event as Msg, GatewayState, GrantKey, GrantSpec, PROTOCOL,
    PeerSpec, Refusal as MsgRefusal, Sources, Status, Target, Up,
};
use domain::{AccessId, RegionId, RouterId};
use postern_gateway::{Node, NodeConfig, PortRange, RegionConfig, Udp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::{WAIT, connect_from, echo_once, echo_target, wait_closed};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);

struct Lab {
    node: Node,
    region: RegionId,
    key: tunnel::PrivateKey,
    udp: SocketAddr,
}

async fn lab(status_every: Duration) -> Lab {
    let region = RegionId::new();
    let key = tunnel::PrivateKey::generate().unwrap();
    let socket = tunnel::bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    let udp = socket.local_addr().unwrap();
    let mut config = NodeConfig::new(
        "gw-test",
        vec![RegionConfig {
            id: region,
            name: "eu".into(),
            private_key: key.clone(),
            gateway_address: GATEWAY,
            prefix: "100.64.0.0/24".parse().unwrap(),
            udp: Udp::Socket(socket),
            endpoint: udp.to_string(),
            entry_bind: "127.0.0.1".parse().unwrap(),
            ports: PortRange::new(1024, 65535).unwrap(),
        }],
    );
    config.status_every = status_every;
    let node = Node::start(config).await.unwrap();
    Lab {
        node,
        region,
        key,
        udp,
    }
}

/// One server's control stream.
struct Ctl {
    down: mpsc::Sender<Down>,
    up: mpsc::Receiver<Up>,
    state: GatewayState,
    /// Events that came while a reply was awaited.
    events: std::collections::VecDeque<(u64, Msg)>,
}

impl Ctl {
    async fn connect(node: &Node, server: &str) -> Ctl {
        let (down, down_rx) = mpsc::channel(64);
        let (up_tx, mut up) = mpsc::channel(64);
        tokio::spawn(node.session(down_rx, up_tx));
        down.send(Down::Hello {
            protocol: PROTOCOL,
            server: server.into(),
        })
        .await
        .unwrap();
        let first = timeout(WAIT, up.recv()).await.unwrap().unwrap();
        let Up::State(state) = first else {
            panic!("the first answer is not the state: {first:?}")
        };
        Ctl {
            down,
            up,
            state,
            events: Default::default(),
        }
    }

    async fn send(&self, down: Down) {
        self.down.send(down).await.unwrap();
    }

    /// The next frame that is not a status.
    async fn next(&mut self) -> Up {
        timeout(WAIT, async {
            loop {
                match self.up.recv().await.expect("the session ended") {
                    Up::Status(_) => {}
                    other => return other,
                }
            }
        })
        .await
        .expect("nothing came")
    }

    /// The next frame that is neither a status nor an event (events are kept for
    /// [`Ctl::event`]).
    async fn reply(&mut self) -> Up {
        loop {
            match self.next().await {
                Up::Event { seq, event } => self.events.push_back((seq, event)),
                other => return other,
            }
        }
    }

    /// The next event.
    async fn event(&mut self) -> (u64, Msg) {
        if let Some(e) = self.events.pop_front() {
            return e;
        }
        match self.next().await {
            Up::Event { seq, event } => (seq, event),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    /// Sends an `Open` and returns its answer.
    async fn open(&mut self, spec: &GrantSpec) -> Up {
        self.send(Down::Open(spec.clone())).await;
        self.reply().await
    }

    async fn opened(&mut self, spec: &GrantSpec) -> SocketAddr {
        match self.open(spec).await {
            Up::Opened { key, listen } if key == spec.key => listen,
            other => panic!("not opened: {other:?}"),
        }
    }

    async fn open_failed(&mut self, spec: &GrantSpec) -> String {
        match self.open(spec).await {
            Up::OpenFailed { key, error } if key == spec.key => error,
            other => panic!("not refused: {other:?}"),
        }
    }

    /// Events until one matches `pred`; all of them, with their numbers.
    async fn events_until(&mut self, pred: impl Fn(&Msg) -> bool) -> Vec<(u64, Msg)> {
        let mut got = Vec::new();
        loop {
            let (seq, event) = self.event().await;
            let done = pred(&event);
            got.push((seq, event));
            if done {
                return got;
            }
        }
    }

    /// Nothing but statuses for `d`.
    async fn quiet_for(&mut self, d: Duration) {
        let _ = timeout(d, async {
            loop {
                match self.up.recv().await {
                    Some(Up::Status(_)) => {}
                    Some(other) => panic!("unexpected: {other:?}"),
                    None => return,
                }
            }
        })
        .await;
    }

    async fn status(&mut self) -> Status {
        timeout(WAIT, async {
            loop {
                if let Up::Status(s) = self.up.recv().await.expect("the session ended") {
                    return s;
                }
            }
        })
        .await
        .expect("no status")
    }
}

/// A port free now on 127.0.0.1 (the control plane picks entry ports; here, the OS).
async fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

async fn grant(region: RegionId, target: Target, expires_at: DateTime<Utc>) -> GrantSpec {
    GrantSpec {
        key: GrantKey::Access(AccessId::new()),
        region,
        port: free_port().await,
        target,
        sources: Sources {
            allow: vec!["127.0.0.0/24".parse().unwrap()],
            allow_rfc1918: false,
        },
        expires_at,
    }
}

fn in_secs(s: i64) -> DateTime<Utc> {
    Utc::now() + chrono::TimeDelta::seconds(s)
}

fn in_millis(ms: i64) -> DateTime<Utc> {
    Utc::now() + chrono::TimeDelta::milliseconds(ms)
}

fn grant_closed(key: GrantKey) -> impl Fn(&Msg) -> bool {
    move |e| matches!(e, Msg::GrantClosed { key: k, .. } if *k == key)
}

#[tokio::test]
async fn node_opens_closes_and_expires_entry_ports_by_messages() {
    let lab = lab(Duration::from_secs(60)).await;
    let (echo, _) = echo_target().await;
    let mut ctl = Ctl::connect(&lab.node, "s1").await;
    assert_eq!(ctl.state.protocol, PROTOCOL);
    assert_eq!(ctl.state.gateway, "gw-test");
    assert_eq!(ctl.state.boot, lab.node.boot());
    assert_eq!(ctl.state.regions.len(), 1);
    assert_eq!(
        ctl.state.regions[0].public_key,
        lab.key.public_key().to_base64()
    );
    assert!(ctl.state.grants.is_empty());
    assert_eq!(ctl.state.next_seq, 1);

    // Open: the port listens and forwards; an Open again is the same answer.
    let direct = Target::Direct { address: echo };
    let g = grant(lab.region, direct, in_secs(3600)).await;
    let listen = ctl.opened(&g).await;
    assert_eq!(listen, SocketAddr::from(([127, 0, 0, 1], g.port)));
    assert_eq!(ctl.opened(&g).await, listen);
    let mut client = connect_from("127.0.0.1", listen).await.unwrap();
    echo_once(&mut client, b"hello through the node").await;
    let opened = ctl
        .events_until(|e| matches!(e, Msg::ConnectionOpened { .. }))
        .await;
    let (seq, Msg::ConnectionOpened { first, id, .. }) = &opened[0] else {
        panic!()
    };
    assert_eq!((*seq, *first), (1, true));
    let id = *id;

    // Close: the connection is killed, the port closed, the events say so.
    ctl.send(Down::Close {
        key: g.key,
        reason: CloseReason::Revoked,
    })
    .await;
    wait_closed(&mut client).await;
    assert!(TcpStream::connect(listen).await.is_err(), "port still open");
    let ends = ctl.events_until(grant_closed(g.key)).await;
    assert!(ends.iter().any(|(_, e)| matches!(e,
        Msg::ConnectionClosed { id: i, reason, bytes_in: 22, bytes_out: 22, .. }
            if *i == id && reason == "revoked")));
    assert!(matches!(&ends.last().unwrap().1,
        Msg::GrantClosed { reason, connections_killed: 1, .. } if reason == "revoked"));
    // A closed grant is never opened again; a Close again is nothing.
    assert!(ctl.open_failed(&g).await.contains("closed"));
    ctl.send(Down::Close {
        key: g.key,
        reason: CloseReason::Revoked,
    })
    .await;

    // Refused at once: a deadline past, a region not served here, a port out of range.
    let past = grant(lab.region, direct, in_secs(-1)).await;
    assert!(ctl.open_failed(&past).await.contains("passed"));
    let elsewhere = grant(RegionId::new(), direct, in_secs(60)).await;
    assert!(ctl.open_failed(&elsewhere).await.contains("not served"));
    let mut low = grant(lab.region, direct, in_secs(60)).await;
    low.port = 80;
    assert!(ctl.open_failed(&low).await.contains("outside"));
    // A port taken by someone else: the bind error, in words.
    let squatter = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut taken = grant(lab.region, direct, in_secs(60)).await;
    taken.port = squatter.local_addr().unwrap().port();
    assert!(ctl.open_failed(&taken).await.contains("cannot listen"));

    // The deadline, moved closer by SetDeadline, closes the port by itself.
    let g = grant(lab.region, direct, in_secs(3600)).await;
    let listen = ctl.opened(&g).await;
    let mut client = connect_from("127.0.0.1", listen).await.unwrap();
    echo_once(&mut client, b"x").await;
    ctl.send(Down::SetDeadline {
        key: g.key,
        expires_at: in_millis(500),
    })
    .await;
    let started = std::time::Instant::now();
    wait_closed(&mut client).await;
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(300), "closed early: {took:?}");
    assert!(took < Duration::from_millis(1500), "closed late: {took:?}");
    let ends = ctl.events_until(grant_closed(g.key)).await;
    assert!(matches!(&ends.last().unwrap().1,
        Msg::GrantClosed { reason, .. } if reason == "expired"));
    assert!(ctl.open_failed(&g).await.contains("closed"));

    // SetTarget: new connections go to the new target.
    let (echo2, accepted2) = echo_target().await;
    let g = grant(lab.region, direct, in_secs(3600)).await;
    let listen = ctl.opened(&g).await;
    ctl.send(Down::SetTarget {
        key: g.key,
        target: Target::Direct { address: echo2 },
    })
    .await;
    // Frames are applied in order: once a later Open is answered, the move is done
    // (that Open names the new target, as the server's would: an Open converges).
    let mut moved = g.clone();
    moved.target = Target::Direct { address: echo2 };
    assert_eq!(ctl.opened(&moved).await, listen);
    let mut client = connect_from("127.0.0.1", listen).await.unwrap();
    echo_once(&mut client, b"moved").await;
    assert_eq!(accepted2.load(std::sync::atomic::Ordering::SeqCst), 1);

    // A new session sees what is held, and where the events stand.
    let other = Ctl::connect(&lab.node, "s2").await;
    assert_eq!(other.state.grants.len(), 1);
    assert_eq!(other.state.grants[0].key, g.key);
    assert_eq!(other.state.grants[0].port, g.port);
    assert_eq!(other.state.next_seq, 1, "nothing was acknowledged");
    lab.node.shutdown().await;
}

#[tokio::test]
async fn a_session_must_open_with_hello_in_our_protocol() {
    let lab = lab(Duration::from_secs(60)).await;
    for first in [
        Down::Hello {
            protocol: PROTOCOL + 1,
            server: "future".into(),
        },
        Down::Synced,
    ] {
        let (down, down_rx) = mpsc::channel(4);
        let (up_tx, mut up) = mpsc::channel(4);
        let session = tokio::spawn(lab.node.session(down_rx, up_tx));
        down.send(first).await.unwrap();
        let Some(Up::Refused { error }) = timeout(WAIT, up.recv()).await.unwrap() else {
            panic!("not refused")
        };
        assert!(
            error.contains("protocol") || error.contains("hello"),
            "{error}"
        );
        assert!(
            timeout(WAIT, up.recv()).await.unwrap().is_none(),
            "still open"
        );
        timeout(WAIT, session).await.unwrap().unwrap();
    }
    assert_eq!(lab.node.figures().sessions, 0);
}

#[tokio::test]
async fn two_sessions_get_the_same_answers_and_events_fail_over_unacknowledged() {
    let lab = lab(Duration::from_secs(60)).await;
    let (echo, _) = echo_target().await;
    let mut a = Ctl::connect(&lab.node, "a").await;
    let mut b = Ctl::connect(&lab.node, "b").await;
    assert_eq!(lab.node.figures().sessions, 2);
    let g = grant(lab.region, Target::Direct { address: echo }, in_secs(3600)).await;
    let listen = a.opened(&g).await;
    assert_eq!(b.opened(&g).await, listen);

    let mut client = connect_from("127.0.0.1", listen).await.unwrap();
    echo_once(&mut client, b"one").await;
    drop(client);
    // A refused source, too.
    let refused = connect_from("127.0.1.1", listen).await.unwrap();
    drop(refused);
    let mut to_a = Vec::new();
    while !(to_a
        .iter()
        .any(|(_, e)| matches!(e, Msg::ConnectionRefused { .. }))
        && to_a
            .iter()
            .any(|(_, e)| matches!(e, Msg::ConnectionClosed { .. })))
    {
        to_a.push(a.event().await);
    }
    assert_eq!(to_a.len(), 3, "{to_a:?}");
    // Only the oldest session gets events.
    b.quiet_for(Duration::from_millis(300)).await;

    // a acknowledges the first, then goes away: b gets the rest again, same numbers.
    let (first_seq, _) = to_a[0];
    a.send(Down::Ack { seq: first_seq }).await;
    // Wait until the ack is applied (a frame after it is answered).
    a.opened(&g).await;
    drop(a);
    let last = to_a.last().unwrap().0;
    let mut to_b = Vec::new();
    while to_b.last().is_none_or(|(s, _)| *s < last) {
        to_b.push(b.event().await);
    }
    assert_eq!(
        to_b.as_slice(),
        to_a.get(1..).unwrap(),
        "resent, unacknowledged only"
    );

    // b acknowledges all; a third session starts after them.
    b.send(Down::Ack { seq: last }).await;
    b.opened(&g).await;
    let c = Ctl::connect(&lab.node, "c").await;
    assert_eq!(c.state.next_seq, last + 1);
    assert_eq!(lab.node.figures().events_pending, 0);

    // A close by one session is a close for all: the other's Open is refused.
    b.send(Down::Close {
        key: g.key,
        reason: CloseReason::Revoked,
    })
    .await;
    let mut c = c;
    assert!(c.open_failed(&g).await.contains("closed"));
    lab.node.shutdown().await;
}

#[tokio::test]
async fn without_a_session_ports_and_connections_stay_and_deadlines_still_close() {
    let lab = lab(Duration::from_secs(60)).await;
    let (echo, _) = echo_target().await;
    let mut ctl = Ctl::connect(&lab.node, "s").await;
    let g = grant(
        lab.region,
        Target::Direct { address: echo },
        in_millis(1500),
    )
    .await;
    let listen = ctl.opened(&g).await;
    let mut client = connect_from("127.0.0.1", listen).await.unwrap();
    echo_once(&mut client, b"before").await;
    // The server goes away.
    drop(ctl);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let figures = lab.node.figures();
    assert_eq!(figures.sessions, 0);
    assert!(figures.last_session_end.is_some());
    // The live connection and the port carry on.
    echo_once(&mut client, b"after").await;
    let mut second = connect_from("127.0.0.1", listen).await.unwrap();
    echo_once(&mut second, b"new connection").await;
    // The deadline closes both, on time, with nobody connected.
    wait_closed(&mut client).await;
    wait_closed(&mut second).await;
    assert!(TcpStream::connect(listen).await.is_err(), "port still open");
    // The next server gets the whole story, and the grant is no longer held.
    let mut next = Ctl::connect(&lab.node, "s2").await;
    assert!(next.state.grants.is_empty());
    assert_eq!(next.state.next_seq, 1);
    let events = next.events_until(grant_closed(g.key)).await;
    assert_eq!(
        events.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=events.len() as u64).collect::<Vec<_>>()
    );
    assert_eq!(
        events
            .iter()
            .filter(
                |(_, e)| matches!(e, Msg::ConnectionClosed { reason, .. } if reason == "expired")
            )
            .count(),
        2
    );
    assert!(next.open_failed(&g).await.contains("closed"));
    lab.node.shutdown().await;
}

#[tokio::test]
async fn status_reports_connections_refusals_peers_and_events() {
    let lab = lab(Duration::from_millis(100)).await;
    let (echo, _) = echo_target().await;
    let mut ctl = Ctl::connect(&lab.node, "s").await;
    let router = RouterId::new();
    let router_key = tunnel::PrivateKey::generate().unwrap().public_key();
    ctl.send(Down::UpsertPeer(PeerSpec {
        router,
        region: lab.region,
        public_key: router_key.to_base64(),
        address: Ipv4Addr::new(100, 64, 0, 9),
        endpoint: None,
    }))
    .await;
    // A bad key is refused in words, and the stream goes on.
    ctl.send(Down::UpsertPeer(PeerSpec {
        router: RouterId::new(),
        region: lab.region,
        public_key: "not a key".into(),
        address: Ipv4Addr::new(100, 64, 0, 10),
        endpoint: None,
    }))
    .await;
    let Up::Refused { error } = ctl.reply().await else {
        panic!()
    };
    assert!(error.contains("base64"), "{error}");
    let g = grant(lab.region, Target::Direct { address: echo }, in_secs(3600)).await;
    let listen = ctl.opened(&g).await;
    let mut client = connect_from("127.0.0.1", listen).await.unwrap();
    echo_once(&mut client, b"0123456789").await;
    drop(connect_from("127.0.2.1", listen).await.unwrap());
    ctl.events_until(|e| matches!(e, Msg::ConnectionRefused { .. }))
        .await;

    let status = ctl.status().await;
    assert_eq!(status.peers.len(), 1);
    assert_eq!(status.peers[0].router, router);
    assert_eq!(status.peers[0].last_handshake_at, None);
    assert_eq!(status.connections.len(), 1);
    assert_eq!(status.connections[0].key, g.key);
    assert_eq!(
        (
            status.connections[0].bytes_in,
            status.connections[0].bytes_out
        ),
        (10, 10)
    );
    assert_eq!(status.tunnels.len(), 1);
    assert_eq!(status.tunnels[0].region, lab.region);
    assert_eq!(
        (status.tunnels[0].peers, status.tunnels[0].peers_up),
        (1, 0)
    );
    assert!(
        status.refused.contains(&(MsgRefusal::SourceNotAllowed, 1)),
        "{:?}",
        status.refused
    );
    assert_eq!(
        status.events_pending, 2,
        "an opening and a refusal, unacknowledged"
    );
    assert_eq!(status.events_dropped, 0);

    let figures = lab.node.figures();
    assert_eq!(figures.sessions, 1);
    assert_eq!(figures.grants, 1);
    assert_eq!(figures.connections, 1);
    assert_eq!(figures.connections_total, 1);
    assert_eq!((figures.bytes_in, figures.bytes_out), (10, 10));
    assert_eq!(figures.regions.len(), 1);
    assert_eq!(figures.regions[0].listen, lab.udp);
    assert_eq!(figures.regions[0].stats.peers, 1);
    assert_eq!(figures.regions[0].oldest_handshake, None);

    // The peer removed: gone from the status.
    ctl.send(Down::RemovePeer { router }).await;
    ctl.send(Down::Synced).await;
    ctl.opened(&g).await;
    assert!(ctl.status().await.peers.is_empty());
    assert_eq!(lab.node.figures().sessions_synced, 1);

    // Shutdown: the port closes, the live connection is killed, the session ends, at once.
    timeout(Duration::from_secs(1), lab.node.shutdown())
        .await
        .expect("shutdown took too long");
    wait_closed(&mut client).await;
    assert!(TcpStream::connect(listen).await.is_err(), "port still open");
    timeout(WAIT, async { while ctl.up.recv().await.is_some() {} })
        .await
        .expect("the session did not end");
    assert_eq!(lab.node.figures().sessions, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sim_router_behind_nat_is_reached_through_the_nodes_tunnel() {
    use sim::addr::AddressList;
    use sim::wg::{Key, WgConfig, WgPeerConfig};
    use sim::{RouterHandle, RouterOptions};

    const ROUTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 9);
    let lab = lab(Duration::from_millis(200)).await;
    let mut ctl = Ctl::connect(&lab.node, "s").await;

    let mut options = RouterOptions::new("sim-node", "127.0.9.9".parse().unwrap());
    options.admin_password = Some("s3cret-admin".into());
    options.behind_nat = true;
    let r = RouterHandle::start(options).await.unwrap();
    let router_key = Key::generate_private();
    let router = RouterId::new();
    ctl.send(Down::UpsertPeer(PeerSpec {
        router,
        region: lab.region,
        public_key: router_key.public().to_base64(),
        address: ROUTER,
        endpoint: None,
    }))
    .await;
    // Not a peer's address, or not a region served here: not connected.
    for (region, address) in [
        (lab.region, Ipv4Addr::new(100, 64, 0, 10)),
        (RegionId::new(), ROUTER),
    ] {
        let refused = lab
            .node
            .dial(DialRequest {
                region,
                target: Target::Tunnel {
                    address,
                    port: 8728,
                },
            })
            .await
            .err()
            .unwrap();
        assert_eq!(
            refused.kind(),
            std::io::ErrorKind::NotConnected,
            "{refused}"
        );
    }

    let mut config = WgConfig::new(router_key, ROUTER, GATEWAY);
    config.peers.push(WgPeerConfig {
        id: None,
        public_key: Key::from_base64(&lab.key.public_key().to_base64()).unwrap(),
        preshared_key: None,
        endpoint: Some((lab.udp.ip().to_string(), lab.udp.port())),
        allowed: AddressList::parse(&format!("{GATEWAY}/32")).unwrap(),
        keepalive: Some(25),
    });
    r.set_wireguard(Some(config));

    // The handshake shows in the status.
    let status = timeout(Duration::from_secs(10), async {
        loop {
            let s = ctl.status().await;
            if s.peers
                .first()
                .is_some_and(|p| p.last_handshake_at.is_some())
            {
                return s;
            }
        }
    })
    .await
    .expect("no handshake");
    let local = r.wireguard_status().unwrap().local.unwrap();
    assert_eq!(status.peers[0].endpoint, Some(local));
    assert_eq!(status.tunnels[0].peers_up, 1);
    assert!(lab.node.figures().regions[0].oldest_handshake.is_some());

    // A server's dial reaches the router's API through the tunnel.
    let stream = lab
        .node
        .dial(DialRequest {
            region: lab.region,
            target: Target::Tunnel {
                address: ROUTER,
                port: 8728,
            },
        })
        .await
        .unwrap();
    let login = routeros::ClientConfig::new(format!("{ROUTER}:8728"), "admin", "s3cret-admin")
        .with_command_timeout(Duration::from_secs(5));
    let admin = routeros::Client::handshake(stream, &login).await.unwrap();
    assert_eq!(
        routeros::api::system::identity(&admin).await.unwrap(),
        "sim-node"
    );

    // An entry port whose target is in the tunnel: an operator reaches the router too.
    let g = grant(
        lab.region,
        Target::Tunnel {
            address: ROUTER,
            port: 8728,
        },
        in_secs(3600),
    )
    .await;
    let listen = ctl.opened(&g).await;
    let operator = connect_from("127.0.0.1", listen).await.unwrap();
    let via_port = routeros::Client::handshake(operator, &login).await.unwrap();
    assert_eq!(
        routeros::api::system::identity(&via_port).await.unwrap(),
        "sim-node"
    );
    // Revoked: the operator's connection through the tunnel is killed.
    ctl.send(Down::Close {
        key: g.key,
        reason: CloseReason::Revoked,
    })
    .await;
    let ends = ctl.events_until(grant_closed(g.key)).await;
    assert!(matches!(
        &ends.last().unwrap().1,
        Msg::GrantClosed {
            connections_killed: 1,
            ..
        }
    ));
    assert!(
        timeout(WAIT, routeros::api::system::identity(&via_port))
            .await
            .unwrap()
            .is_err()
    );

    // The router removed: its stream is reset, and dials are refused.
    ctl.send(Down::RemovePeer { router }).await;
    ctl.send(Down::Synced).await;
    ctl.open_failed(&g).await;
    let gone = lab
        .node
        .dial(DialRequest {
            region: lab.region,
            target: Target::Tunnel {
                address: ROUTER,
                port: 8728,
            },
        })
        .await
        .err()
        .unwrap();
    assert_eq!(gone.kind(), std::io::ErrorKind::NotConnected);

    // A direct dial is plain TCP from the node.
    let (echo, _) = echo_target().await;
    let mut direct = lab
        .node
        .dial(DialRequest {
            region: lab.region,
            target: Target::Direct { address: echo },
        })
        .await
        .unwrap();
    direct.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    direct.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping");

    r.shutdown().await;
    lab.node.shutdown().await;
}

#[tokio::test]
async fn a_reconnecting_server_converges_the_node_from_its_state() {
    let lab = lab(Duration::from_secs(60)).await;
    let (echo, _) = echo_target().await;
    let direct = Target::Direct { address: echo };
    let mut ctl = Ctl::connect(&lab.node, "s").await;
    let extended = grant(lab.region, direct, in_millis(1000)).await;
    let revoked = grant(lab.region, direct, in_secs(3600)).await;
    let kept = grant(lab.region, direct, in_secs(3600)).await;
    let extended_at = ctl.opened(&extended).await;
    let revoked_at = ctl.opened(&revoked).await;
    let kept_at = ctl.opened(&kept).await;
    let mut live = connect_from("127.0.0.1", kept_at).await.unwrap();
    echo_once(&mut live, b"live").await;
    drop(ctl);

    // Meanwhile the control plane extended one grant, revoked one, made a new one. It
    // reconnects and converges: Open for every active grant, Close for what the node
    // holds and the database says ended, then Synced.
    let mut ctl = Ctl::connect(&lab.node, "s").await;
    let held: Vec<GrantKey> = ctl.state.grants.iter().map(|g| g.key).collect();
    assert_eq!(held.len(), 3);
    let mut longer = extended.clone();
    longer.expires_at = in_secs(3600);
    let new = grant(lab.region, direct, in_secs(3600)).await;
    assert_eq!(ctl.opened(&longer).await, extended_at);
    assert_eq!(ctl.opened(&kept).await, kept_at);
    let new_at = ctl.opened(&new).await;
    ctl.send(Down::Close {
        key: revoked.key,
        reason: CloseReason::Revoked,
    })
    .await;
    ctl.send(Down::Synced).await;
    ctl.events_until(grant_closed(revoked.key)).await;
    assert!(
        TcpStream::connect(revoked_at).await.is_err(),
        "revoked port open"
    );
    // Past the old deadline, the extended grant still forwards; the live connection of
    // the kept one was never touched.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let mut c = connect_from("127.0.0.1", extended_at).await.unwrap();
    echo_once(&mut c, b"extended").await;
    echo_once(&mut live, b"still live").await;
    let mut c = connect_from("127.0.0.1", new_at).await.unwrap();
    echo_once(&mut c, b"new").await;
    assert_eq!(lab.node.figures().grants, 3);
    assert_eq!(lab.node.figures().sessions_synced, 1);
    lab.node.shutdown().await;
}

/// A reconnecting server's resynchronisation of many grants: every `Open` of a held
/// grant is answered from the ledger, without touching a port.
#[tokio::test]
async fn a_resynchronisation_of_many_grants_is_quick() {
    const GRANTS: usize = 2000;
    let lab = lab(Duration::from_secs(60)).await;
    let (echo, _) = echo_target().await;
    let direct = Target::Direct { address: echo };
    let mut ctl = Ctl::connect(&lab.node, "s").await;
    // Distinct free ports: held together while chosen.
    let mut held = Vec::with_capacity(GRANTS);
    for _ in 0..GRANTS {
        held.push(TcpListener::bind("127.0.0.1:0").await.unwrap());
    }
    let mut grants = Vec::with_capacity(GRANTS);
    for l in held {
        let mut g = grant(lab.region, direct, in_secs(3600)).await;
        g.port = l.local_addr().unwrap().port();
        grants.push(g);
    }
    let started = std::time::Instant::now();
    let (tx, rx) = (ctl.down.clone(), &mut ctl.up);
    let sender = tokio::spawn({
        let grants = grants.clone();
        async move {
            for g in grants {
                tx.send(Down::Open(g)).await.unwrap();
            }
        }
    });
    let mut opened = 0;
    while opened < GRANTS {
        match timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            Up::Opened { .. } => opened += 1,
            Up::OpenFailed { key, error } => panic!("{key}: {error}"),
            _ => {}
        }
    }
    sender.await.unwrap();
    let first = started.elapsed();
    drop(ctl);

    let mut ctl = Ctl::connect(&lab.node, "s").await;
    assert_eq!(ctl.state.grants.len(), GRANTS);
    let started = std::time::Instant::now();
    let (tx, rx) = (ctl.down.clone(), &mut ctl.up);
    let sender = tokio::spawn(async move {
        for g in grants {
            tx.send(Down::Open(g)).await.unwrap();
        }
        tx.send(Down::Synced).await.unwrap();
    });
    let mut answered = 0;
    while answered < GRANTS {
        if let Up::Opened { .. } = timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            answered += 1;
        }
    }
    sender.await.unwrap();
    let again = started.elapsed();
    eprintln!("{GRANTS} grants: opened in {first:?}, resynchronised in {again:?}");
    assert!(again < Duration::from_secs(2), "{again:?}");
    lab.node.shutdown().await;
}
