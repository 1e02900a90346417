//! Postern's gateway tunnel (`tunnel`: the responder, boringtun and smoltcp) against the
//! sim router's own WireGuard (the initiator, written separately on the same
//! libraries): a router behind NAT builds its tunnel to the gateway, and Postern's
//! RouterOS client reaches it through `Tunnel::dial` only, logging in as a user whose
//! `address=` is the gateway's tunnel address; the router's NAT mapping changes and a
//! new handshake is made, and the gateway follows both.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use routeros::api::{system, user};
use routeros::{Client, ClientConfig};
use sim::addr::AddressList;
use sim::wg::{Key, WgConfig, WgPeerConfig};
use sim::{RouterHandle, RouterOptions};
use tunnel::{PrivateKey, PublicKey, Tunnel, TunnelConfig, bind_udp};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 1);
const ROUTER: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 9);

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn client(t: &Tunnel, name: &str, password: &str) -> Result<Client, routeros::Error> {
    let stream = t.dial(ROUTER, 8728).await.unwrap();
    let config = ClientConfig::new(format!("{ROUTER}:8728"), name, password)
        .with_command_timeout(Duration::from_secs(5));
    Client::handshake(stream, &config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postern_reaches_a_sim_router_behind_nat_through_its_tunnel() {
    let gateway_key = PrivateKey::generate().unwrap();
    let tunnel = Tunnel::new(TunnelConfig::new(
        gateway_key.clone(),
        GATEWAY,
        "100.64.0.0/10".parse().unwrap(),
    ))
    .unwrap();
    let router_key = Key::generate_private();
    let router_public: PublicKey = router_key.public().to_base64().parse().unwrap();
    tunnel.upsert_peer(router_public, ROUTER).unwrap();
    let socket = bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
    let gateway_udp = socket.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let driver = tunnel.clone();
    let task = tokio::spawn(async move {
        driver
            .run(socket, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });

    let mut options = RouterOptions::new("sim-tunnel", "127.0.3.9".parse().unwrap());
    options.admin_password = Some("s3cret-admin".into());
    options.behind_nat = true;
    let r = RouterHandle::start(options).await.unwrap();
    let mut config = WgConfig::new(router_key, ROUTER, GATEWAY);
    config.peers.push(WgPeerConfig {
        id: None,
        public_key: Key::from_base64(&gateway_key.public_key().to_base64()).unwrap(),
        preshared_key: None,
        endpoint: Some((gateway_udp.ip().to_string(), gateway_udp.port())),
        allowed: AddressList::parse(&format!("{GATEWAY}/32")).unwrap(),
        keepalive: Some(25),
    });
    r.set_wireguard(Some(config));

    // The sim records its socket's address once its WireGuard task has bound it, which may
    // be after the first handshake completes: wait for both.
    wait_for("the router's handshake", || {
        tunnel
            .peer(&router_public)
            .is_some_and(|p| p.last_handshake_at.is_some())
            && r.wireguard_status().is_some_and(|s| s.local.is_some())
    })
    .await;
    let local = r.wireguard_status().unwrap().local.unwrap();
    assert_eq!(tunnel.peer(&router_public).unwrap().endpoint, Some(local));
    assert!(
        tokio::net::TcpStream::connect(SocketAddr::new(r.address(), 8728))
            .await
            .is_err(),
        "nothing answers outside the tunnel"
    );

    let admin = client(&tunnel, "admin", "s3cret-admin").await.unwrap();
    assert_eq!(system::identity(&admin).await.unwrap(), "sim-tunnel");
    user::add(
        &admin,
        &user::NewUser {
            name: "postern".into(),
            group: "full".into(),
            password: "pw-postern".into(),
            address: vec![format!("{GATEWAY}/32")],
            comment: Some("postern:management".into()),
            disabled: false,
        },
    )
    .await
    .unwrap();
    let managed = client(&tunnel, "postern", "pw-postern").await.unwrap();
    assert_eq!(system::identity(&managed).await.unwrap(), "sim-tunnel");

    // The NAT mapping changes: the gateway follows the new source port, the open
    // client carries on.
    assert!(r.rebind_udp());
    wait_for("the gateway to follow the new port", || {
        let now = r.wireguard_status().and_then(|s| s.local);
        now.is_some_and(|l| l != local) && tunnel.peer(&router_public).unwrap().endpoint == now
    })
    .await;
    assert_eq!(system::identity(&managed).await.unwrap(), "sim-tunnel");

    // A new handshake (as after a gateway restart): the gateway sees it, the client
    // carries on.
    let first = tunnel.peer(&router_public).unwrap().last_handshake_at;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(r.rehandshake());
    wait_for("the second handshake", || {
        tunnel.peer(&router_public).unwrap().last_handshake_at > first
    })
    .await;
    assert_eq!(system::identity(&managed).await.unwrap(), "sim-tunnel");

    r.shutdown().await;
    let _ = stop.send(());
    task.await.unwrap();
}
