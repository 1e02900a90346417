//! The router's own WireGuard tunnel, held against WireGuard written by others:
//! Debian's `wireguard-go` as the gateway in a network namespace (root; skipped with a
//! message otherwise), and, without root, what a router behind NAT refuses.
//!
//! Through the tunnel: the RouterOS API (raw sentences) and SSH (russh) log in, the
//! client address the router sees is the gateway's tunnel address (a user limited to it
//! logs in, one limited elsewhere does not), a dst-nat rule forwards over real TCP, and
//! a NAT mapping change (the router's UDP source port moves) is followed by the gateway.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code
)]

#[path = "sim/common.rs"]
mod common;
#[path = "wireguard/gateway.rs"]
mod gateway;
#[path = "wireguard/lab.rs"]
mod lab;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use postern_sim::addr::AddressList;
use postern_sim::wg::{Key, WgConfig, WgPeerConfig};
use postern_sim::{Ports, RouterHandle, RouterOptions};
use russh::client;
use russh::keys::{HashAlg, PublicKeyOrCertificate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 2);

async fn wait_for(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port nothing listens on now.
fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_router_behind_nat_refuses_every_direct_connection() {
    let ip = "127.0.0.1";
    let ports = Ports {
        api: free_port(ip),
        api_tls: free_port(ip),
        winbox: free_port(ip),
        ssh: free_port(ip),
    };
    let r = router_with(|o| {
        o.ports = ports;
        o.behind_nat = true;
    })
    .await;
    assert!(r.behind_nat);
    assert_eq!(r.api_addr.port(), 0, "no API listener is reported");
    for port in [ports.api, ports.api_tls, ports.winbox, ports.ssh] {
        let e = tokio::net::TcpStream::connect((ip, port))
            .await
            .unwrap_err();
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionRefused,
            "port {port}"
        );
    }
    // A dst-nat rule opens no listener on the router's address either.
    let fwd = free_port(ip);
    let rule = postern_sim::menu::Request::new("/ip/firewall/nat/add")
        .attr("chain", "dstnat")
        .attr("action", "dst-nat")
        .attr("protocol", "tcp")
        .attr("dst-port", &fwd.to_string())
        .attr("to-addresses", "127.0.0.1")
        .attr("to-ports", "9");
    r.router()
        .run(&postern_sim::Caller::system(), &rule)
        .unwrap();
    let e = tokio::net::TcpStream::connect((ip, fwd)).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    // No tunnel configured: nothing to rebind, no status.
    assert!(!r.rebind_udp());
    assert!(r.wireguard_status().is_none());
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_boringtun_responder_reaches_the_router_only_through_its_tunnel_and_follows_a_rebind() {
    let key = Key::generate_private();
    let gw = gateway::Gateway::start("127.0.0.1:0", GATEWAY, 10, key.public().0, ROUTER).await;
    let r = router_with(|o| {
        o.identity = "sim-gw".into();
        o.behind_nat = true;
    })
    .await;
    let public = Key(gw.public).to_base64();
    r.set_wireguard(Some(router_config(key, &public, gw.udp)));
    wait_for("the handshake", Duration::from_secs(10), || {
        r.wireguard_status().is_some_and(|s| s.is_up())
    })
    .await;
    assert_eq!(gw.handshakes(), 1, "one initiation, answered");
    let local = r.wireguard_status().unwrap().local.unwrap();
    assert_eq!(gw.endpoint(), Some(local));

    let mut admin = Raw::new(gw.dial(8728).await.unwrap());
    admin.login_ok("admin", "pw").await;
    add_user(
        &mut admin,
        "postern",
        "full",
        "s3cret",
        &[&format!("=address={GATEWAY}/32")],
    )
    .await;
    add_user(
        &mut admin,
        "elsewhere",
        "full",
        "s3cret",
        &["=address=10.9.9.9/32"],
    )
    .await;
    let mut c = Raw::new(gw.dial(8728).await.unwrap());
    c.login_ok("postern", "s3cret").await;
    let mut c = Raw::new(gw.dial(8728).await.unwrap());
    let denied = c.login("elsewhere", "s3cret").await;
    assert_eq!(
        denied[0].message().as_deref(),
        Some("invalid user name or password (6)")
    );
    let out = ssh_exec(
        gw.dial(22).await.unwrap(),
        &r.ssh_fingerprint,
        "postern",
        "s3cret",
        "/system identity print",
    )
    .await
    .unwrap();
    assert!(out.contains("sim-gw"), "{out}");
    // A port the router does not serve is refused (RST from its stack).
    assert!(gw.dial(8080).await.is_err());

    // The NAT mapping changes; the responder follows the authenticated datagrams.
    assert!(r.rebind_udp());
    wait_for("the gateway to follow", Duration::from_secs(5), || {
        let now = r.wireguard_status().and_then(|s| s.local);
        now.is_some_and(|l| l != local) && gw.endpoint() == now
    })
    .await;
    let rows = admin.rows(&["/system/identity/print"]).await;
    assert_eq!(get(&rows[0], "name"), Some("sim-gw"));
    let mut c = Raw::new(gw.dial(8728).await.unwrap());
    c.login_ok("postern", "s3cret").await;
    assert_eq!(gw.handshakes(), 1, "roaming needs no new handshake");

    // A new handshake on demand (what a restarted gateway waits for); the open
    // session carries on over the new keys.
    assert!(r.rehandshake());
    wait_for("the second handshake", Duration::from_secs(5), || {
        gw.handshakes() == 2
    })
    .await;
    let rows = admin.rows(&["/system/identity/print"]).await;
    assert_eq!(get(&rows[0], "name"), Some("sim-gw"));

    // A dst-nat rule for the WireGuard interface forwards through the tunnel: 1 MiB
    // each way, echoed. (The interface is made in the menus for the rule to name; with
    // no address nor peer it asks for no tunnel, so the one set up here stays.)
    console(&r, "/interface/wireguard/add", &[("name", "postern")]);
    let echo = echo_server(Ipv4Addr::LOCALHOST).await;
    admin
        .ok(&[
            "/ip/firewall/nat/add",
            "=chain=dstnat",
            "=action=dst-nat",
            "=protocol=tcp",
            "=dst-port=9000",
            "=in-interface=postern",
            &format!("=to-addresses={}", echo.ip()),
            &format!("=to-ports={}", echo.port()),
        ])
        .await;
    let mut fwd = None;
    for _ in 0..50 {
        if let Ok(s) = gw.dial(9000).await {
            fwd = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let fwd = fwd.expect("the forward listens in the tunnel");
    let data: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let (mut rd, mut wr) = tokio::io::split(fwd);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        wr.write_all(&sent).await.unwrap();
        wr
    });
    let mut back = vec![0u8; data.len()];
    tokio::time::timeout(Duration::from_secs(30), rd.read_exact(&mut back))
        .await
        .expect("the echo came back in time")
        .unwrap();
    assert!(back == data, "the forwarded bytes differ");
    drop(writer.await.unwrap());
    // A rule for `ether1` is not served through the tunnel.
    admin
        .ok(&[
            "/ip/firewall/nat/add",
            "=chain=dstnat",
            "=action=dst-nat",
            "=protocol=tcp",
            "=dst-port=9001",
            "=in-interface=ether1",
            &format!("=to-addresses={}", echo.ip()),
            &format!("=to-ports={}", echo.port()),
        ])
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = gw.dial(9001).await.err().unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);

    // Hostile datagrams at the router's WireGuard port move nothing and break nothing:
    // junk, a forged initiation, and "data" naming the gateway's session index.
    let at = r.wireguard_status().unwrap().local.unwrap();
    let attacker = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut init = vec![0u8; 148];
    init[0] = 1;
    let mut data = vec![0u8; 64];
    data[0] = 4;
    data[4..8].copy_from_slice(&(1u32 << 8).to_le_bytes());
    for d in [&b"junk"[..], &init, &data, &[0xff; 1500][..], &[][..]] {
        for _ in 0..50 {
            attacker.send_to(d, at).unwrap();
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = r.wireguard_status().unwrap();
    assert_eq!(status.peers[0].endpoint, Some(gw.udp), "the endpoint stays");
    let rows = admin.rows(&["/system/identity/print"]).await;
    assert_eq!(get(&rows[0], "name"), Some("sim-gw"));

    // Offline: the router falls silent in the tunnel (a dial gets no answer), and is
    // back once online again, on the same session.
    r.faults().set_offline(true);
    let e = gw.dial(8728).await.err().unwrap();
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    r.faults().set_offline(false);
    let mut c = Raw::new(gw.dial(8728).await.unwrap());
    c.login_ok("postern", "s3cret").await;
    r.shutdown().await;
}

struct SshClient {
    fingerprint: String,
}

impl client::Handler for SshClient {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.fingerprint(HashAlg::Sha256).to_string() == self.fingerprint
            }
            _ => false,
        })
    }
}

/// Logs in over `stream` and runs `command`; returns its output.
async fn ssh_exec(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    fingerprint: &str,
    user: &str,
    password: &str,
    command: &str,
) -> Result<String, String> {
    let config = Arc::new(client::Config::default());
    let handler = SshClient {
        fingerprint: fingerprint.to_string(),
    };
    let mut h = client::connect_stream(config, stream, handler)
        .await
        .map_err(|e| e.to_string())?;
    let auth = h
        .authenticate_password(user, password)
        .await
        .map_err(|e| e.to_string())?;
    if !auth.success() {
        return Err("denied".into());
    }
    let mut ch = h.channel_open_session().await.map_err(|e| e.to_string())?;
    ch.exec(true, command).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(TIMEOUT, async {
        while let Some(msg) = ch.wait().await {
            match msg {
                russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
                russh::ChannelMsg::Close => break,
                _ => {}
            }
        }
    })
    .await
    .map_err(|_| "no output".to_string())?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The router's side of the tunnel as Postern's enrolment script configures it.
fn router_config(key: Key, gateway_public: &str, endpoint: SocketAddr) -> WgConfig {
    let mut c = WgConfig::new(key, ROUTER, GATEWAY);
    c.interface = "postern".into();
    c.listen_port = 0;
    c.peers.push(WgPeerConfig {
        id: None,
        public_key: Key::from_base64(gateway_public).unwrap(),
        preshared_key: None,
        endpoint: Some((endpoint.ip().to_string(), endpoint.port())),
        allowed: AddressList::parse(&format!("{GATEWAY}/32")).unwrap(),
        keepalive: Some(25),
    });
    c
}

/// An echo server on our side, the target of a dst-nat rule.
async fn echo_server(ip: Ipv4Addr) -> SocketAddr {
    let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = c.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tunnel_to_a_wireguard_go_gateway_carries_api_ssh_and_dst_nat_and_follows_a_rebind() {
    if !lab::can_run() {
        return;
    }
    let mut lab = lab::Lab::new();
    let key = Key::generate_private();
    lab.start_gateway(&format!("{GATEWAY}/10"), &key.public().to_base64(), ROUTER);
    let mut o = RouterOptions::new("sim-nat", lab.host_ip.into());
    o.admin_password = Some("pw".into());
    o.behind_nat = true;
    let r = RouterHandle::start(o).await.unwrap();
    r.set_wireguard(Some(router_config(
        key,
        &lab.gateway_public,
        SocketAddr::from((lab.gateway_ip, lab::GATEWAY_PORT)),
    )));

    // The router initiates; wireguard-go answers.
    wait_for("the handshake", Duration::from_secs(15), || {
        r.wireguard_status().is_some_and(|s| s.is_up())
    })
    .await;
    assert!(lab.latest_handshake() > 0, "the gateway saw the handshake");
    let local = r.wireguard_status().unwrap().local.unwrap();
    assert_eq!(local.ip(), std::net::IpAddr::V4(lab.host_ip));
    assert_eq!(lab.router_endpoint(), Some(local));

    // Direct TCP to the router is refused: it sits behind NAT.
    let e = tokio::net::TcpStream::connect((lab.host_ip, 8728))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);

    // The API through the tunnel, from the gateway's side.
    let api = SocketAddr::from((ROUTER, 8728));
    let mut admin = Raw::new(lab.connect(api).await.unwrap());
    admin.login_ok("admin", "pw").await;
    let rows = admin.rows(&["/system/identity/print"]).await;
    assert_eq!(get(&rows[0], "name"), Some("sim-nat"));
    add_user(
        &mut admin,
        "postern",
        "full",
        "s3cret",
        &[&format!("=address={GATEWAY}/32")],
    )
    .await;
    add_user(
        &mut admin,
        "elsewhere",
        "full",
        "s3cret",
        &["=address=10.9.9.9/32"],
    )
    .await;
    // The router sees the gateway's tunnel address as the client's.
    let active = admin.rows(&["/user/active/print"]).await;
    assert!(
        active
            .iter()
            .any(|a| get(a, "address") == Some(&GATEWAY.to_string())),
        "{active:?}"
    );
    let mut c = Raw::new(lab.connect(api).await.unwrap());
    c.login_ok("postern", "s3cret").await;
    let mut c = Raw::new(lab.connect(api).await.unwrap());
    let denied = c.login("elsewhere", "s3cret").await;
    assert_eq!(
        denied[0].message().as_deref(),
        Some("invalid user name or password (6)")
    );

    // SSH through the tunnel, on RouterOS's port 22.
    let ssh = lab.connect(SocketAddr::from((ROUTER, 22))).await.unwrap();
    let out = ssh_exec(
        ssh,
        &r.ssh_fingerprint,
        "postern",
        "s3cret",
        "/system identity print",
    )
    .await
    .unwrap();
    assert!(out.contains("sim-nat"), "{out}");
    let ssh = lab.connect(SocketAddr::from((ROUTER, 22))).await.unwrap();
    let refused = ssh_exec(ssh, &r.ssh_fingerprint, "elsewhere", "s3cret", "/quit").await;
    assert_eq!(refused, Err("denied".into()));

    // WinBox-port stand-in and API-SSL answer there too.
    let mut wb = lab.connect(SocketAddr::from((ROUTER, 8291))).await.unwrap();
    wb.write_all(b"login postern s3cret\n").await.unwrap();
    let mut buf = vec![0u8; 512];
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got).contains("ok sim-nat") {
        let n = tokio::time::timeout(TIMEOUT, wb.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "winbox closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }

    // A dst-nat rule is served through the tunnel, forwarding over real TCP.
    let echo = echo_server(lab.host_ip).await;
    admin
        .ok(&[
            "/ip/firewall/nat/add",
            "=chain=dstnat",
            "=action=dst-nat",
            "=protocol=tcp",
            "=dst-port=9000",
            &format!("=to-addresses={}", echo.ip()),
            &format!("=to-ports={}", echo.port()),
        ])
        .await;
    let mut fwd = None;
    for _ in 0..50 {
        if let Ok(s) = lab.connect(SocketAddr::from((ROUTER, 9000))).await {
            fwd = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut fwd = fwd.expect("the forward listens through the tunnel");
    fwd.write_all(b"through the tunnel").await.unwrap();
    let mut back = [0u8; 18];
    tokio::time::timeout(TIMEOUT, fwd.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"through the tunnel");

    // The NAT mapping changes: a new source port. The gateway follows it, and both the
    // open session and new connections keep working.
    assert!(r.rebind_udp());
    wait_for("the new source port", Duration::from_secs(5), || {
        r.wireguard_status()
            .and_then(|s| s.local)
            .is_some_and(|l| l != local)
    })
    .await;
    let moved = r.wireguard_status().unwrap().local.unwrap();
    wait_for("the gateway to follow", Duration::from_secs(10), || {
        lab.router_endpoint() == Some(moved)
    })
    .await;
    let rows = admin.rows(&["/system/identity/print"]).await;
    assert_eq!(get(&rows[0], "name"), Some("sim-nat"));
    let mut c = Raw::new(lab.connect(api).await.unwrap());
    c.login_ok("postern", "s3cret").await;

    // Taking the tunnel down closes what came through it.
    r.set_wireguard(None);
    assert!(admin.closed().await, "the API session ends with the tunnel");
    assert!(r.wireguard_status().is_none());
    r.shutdown().await;
}

/// Runs a command on the router's console, as the pasted enrolment script does.
fn console(r: &RouterHandle, path: &str, attrs: &[(&str, &str)]) -> postern_sim::menu::Outcome {
    let mut req = postern_sim::menu::Request::new(path);
    for (k, v) in attrs {
        req = req.attr(k, v);
    }
    r.router()
        .run(&postern_sim::Caller::system(), &req)
        .unwrap_or_else(|t| panic!("{path}: {}", t.message))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_builds_the_tunnel_its_menus_describe_and_drops_it_with_the_peer() {
    if !lab::can_run() {
        return;
    }
    let mut lab = lab::Lab::new();
    let mut o = RouterOptions::new("sim-menu", lab.host_ip.into());
    o.admin_password = Some("pw".into());
    o.behind_nat = true;
    let r = RouterHandle::start(o).await.unwrap();

    // What the enrolment script does: the interface (the router makes its key), the
    // address, then the peer last.
    console(
        &r,
        "/interface/wireguard/add",
        &[("name", "postern"), ("comment", "postern:wg")],
    );
    let public = r
        .router()
        .wireguard()
        .first()
        .map(|i| Key(i.public_key).to_base64())
        .unwrap();
    lab.start_gateway(&format!("{GATEWAY}/10"), &public, ROUTER);
    console(
        &r,
        "/ip/address/add",
        &[
            ("address", &format!("{ROUTER}/32")),
            ("network", &GATEWAY.to_string()),
            ("interface", "postern"),
        ],
    );
    assert!(r.wireguard_status().is_none(), "no peer, no tunnel");
    console(
        &r,
        "/interface/wireguard/peers/add",
        &[
            ("interface", "postern"),
            ("public-key", &lab.gateway_public),
            ("endpoint-address", &lab.gateway_ip.to_string()),
            ("endpoint-port", &lab::GATEWAY_PORT.to_string()),
            ("allowed-address", &format!("{GATEWAY}/32")),
            ("persistent-keepalive", "25s"),
        ],
    );
    wait_for("the handshake", Duration::from_secs(15), || {
        r.wireguard_status().is_some_and(|s| s.is_up())
    })
    .await;
    // `peers print` shows what the tunnel saw.
    wait_for(
        "last-handshake in peers print",
        Duration::from_secs(5),
        || {
            r.router()
                .items(postern_sim::state::TableKind::WireguardPeers)
                .first()
                .is_some_and(|p| p.get("last-handshake").is_some())
        },
    )
    .await;

    assert_eq!(
        r.wireguard_status().unwrap().local.unwrap().port(),
        13231,
        "the interface's listen-port"
    );

    // Editing the peer rebuilds the tunnel, on the same port, and it comes up again.
    let peer = r
        .router()
        .items(postern_sim::state::TableKind::WireguardPeers)
        .first()
        .unwrap()
        .id_string();
    console(
        &r,
        "/interface/wireguard/peers/set",
        &[(".id", &peer), ("persistent-keepalive", "20s")],
    );
    wait_for("the rebuilt tunnel", Duration::from_secs(15), || {
        r.wireguard_status()
            .is_some_and(|s| s.is_up() && s.local.is_some_and(|l| l.port() == 13231))
    })
    .await;

    // `/ip/service`'s API port (RouterOS's 8728 behind NAT) answers through the tunnel.
    let mut c = Raw::new(lab.connect(SocketAddr::from((ROUTER, 8728))).await.unwrap());
    c.login_ok("admin", "pw").await;
    // Moving a service through that very session keeps the session and the tunnel.
    let handshakes = lab.latest_handshake();
    c.ok(&["/ip/service/set", "=numbers=winbox", "=port=18291"])
        .await;
    let rows = c.rows(&["/system/identity/print"]).await;
    assert_eq!(get(&rows[0], "name"), Some("sim-menu"));
    let mut wb = None;
    for _ in 0..50 {
        if let Ok(s) = lab.connect(SocketAddr::from((ROUTER, 18291))).await {
            wb = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut wb = wb.expect("winbox on its new port");
    let mut banner = [0u8; 16];
    wb.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"POSTERN-SIM WINB");
    assert_eq!(lab.latest_handshake(), handshakes, "no new handshake");

    // Removing the peer takes the tunnel down and ends what came through it.
    let peer = r
        .router()
        .items(postern_sim::state::TableKind::WireguardPeers)
        .first()
        .unwrap()
        .id_string();
    console(&r, "/interface/wireguard/peers/remove", &[(".id", &peer)]);
    wait_for("the tunnel to go", Duration::from_secs(5), || {
        r.wireguard_status().is_none()
    })
    .await;
    assert!(c.closed().await, "the API session ends with the tunnel");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_external_backend_runs_wireguard_go_with_the_routers_listeners_on_the_tunnel_address() {
    if !lab::can_run() {
        return;
    }
    let mut lab = lab::Lab::new();
    // This backend's device and addresses live in the test's own namespace: addresses
    // of their own, so that parallel tests do not collide.
    let octet = (std::process::id() % 250) as u8 + 1;
    let gateway = Ipv4Addr::new(100, 127, octet, 1);
    let router = Ipv4Addr::new(100, 127, octet, 2);
    let device = format!("pswx{}", std::process::id() % 100_000);
    lab.cleanup_links.push(device.clone());
    let key = Key::generate_private();
    lab.start_gateway(&format!("{gateway}/24"), &key.public().to_base64(), router);

    let mut o = RouterOptions::new("sim-ext", lab.host_ip.into());
    o.admin_password = Some("pw".into());
    o.behind_nat = true;
    o.wireguard_external = Some(postern_sim::wg::external::Options {
        device: device.clone(),
        dir: std::env::temp_dir(),
    });
    let r = RouterHandle::start(o).await.unwrap();
    let mut config = router_config(
        key,
        &lab.gateway_public,
        SocketAddr::from((lab.gateway_ip, lab::GATEWAY_PORT)),
    );
    config.address = router;
    config.network = gateway;
    config.peers[0].allowed = AddressList::parse(&format!("{gateway}/32")).unwrap();
    r.set_wireguard(Some(config));
    wait_for("wg show to list the peer", Duration::from_secs(10), || {
        r.wireguard_status().is_some_and(|s| !s.peers.is_empty())
    })
    .await;

    // The first packet through the tunnel makes wireguard-go handshake.
    let api = SocketAddr::from((router, 8728));
    let mut admin = Raw::new(lab.connect(api).await.unwrap());
    admin.login_ok("admin", "pw").await;
    assert!(r.wireguard_status().unwrap().is_up());
    add_user(
        &mut admin,
        "postern",
        "full",
        "s3cret",
        &[&format!("=address={gateway}/32")],
    )
    .await;
    let ssh = lab.connect(SocketAddr::from((router, 22))).await.unwrap();
    let out = ssh_exec(
        ssh,
        &r.ssh_fingerprint,
        "postern",
        "s3cret",
        "/system identity print",
    )
    .await
    .unwrap();
    assert!(out.contains("sim-ext"), "{out}");

    // A new source port; the gateway follows it.
    let before = lab.router_endpoint().unwrap();
    assert!(r.rebind_udp());
    wait_for("the gateway to follow", Duration::from_secs(10), || {
        lab.router_endpoint()
            .is_some_and(|e| e.port() != before.port())
    })
    .await;
    let mut c = Raw::new(lab.connect(api).await.unwrap());
    c.login_ok("postern", "s3cret").await;

    r.set_wireguard(None);
    let gone = std::process::Command::new("ip")
        .args(["link", "show", &device])
        .output()
        .unwrap();
    assert!(
        !gone.status.success(),
        "the device is deleted with the tunnel"
    );
    r.shutdown().await;
}
