//! Fleets: N routers on consecutive addresses, each with its own admin password, and a
//! clean shutdown.

use std::time::{Duration, Instant};

use postern_sim::{Fleet, FleetOptions, Ports};

use crate::common::*;

#[tokio::test]
async fn a_fleet_starts_fast_and_each_router_answers() {
    let start = Instant::now();
    let fleet = Fleet::start(
        3,
        "127.0.7.1".parse().unwrap(),
        FleetOptions {
            ports: Ports::ephemeral(),
            ..FleetOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    let mut passwords = Vec::new();
    for (i, r) in fleet.routers.iter().enumerate() {
        assert_eq!(r.identity(), format!("sim-{}", i + 1));
        assert_eq!(r.address().to_string(), format!("127.0.7.{}", i + 1));
        assert_eq!(r.api_addr.ip(), r.address());
        assert!(r.password_generated);
        assert_eq!(r.admin_password.len(), 20);
        let mut c = Raw::connect(r.api_addr).await;
        c.login_ok("admin", &r.admin_password).await;
        let id = c.rows(&["/system/identity/print"]).await;
        assert_eq!(get(&id[0], "name"), Some(format!("sim-{}", i + 1).as_str()));
        passwords.push(r.admin_password.clone());
    }
    passwords.sort();
    passwords.dedup();
    assert_eq!(passwords.len(), 3, "each router has its own password");
    let addrs: Vec<_> = fleet.routers.iter().map(|r| r.api_addr).collect();
    fleet.shutdown().await;
    for a in addrs {
        assert!(
            tokio::net::TcpStream::connect(a).await.is_err(),
            "{a} still listening"
        );
    }
}

#[tokio::test]
async fn a_given_password_is_shared_and_shutdown_drains_connections() {
    let fleet = Fleet::start(
        2,
        "127.0.7.11".parse().unwrap(),
        FleetOptions {
            ports: Ports::ephemeral(),
            admin_password: Some("s3cret".into()),
            ..FleetOptions::default()
        },
    )
    .await
    .unwrap();
    let r = &fleet.routers[1];
    assert!(!r.password_generated);
    let mut c = Raw::connect(r.api_addr).await;
    c.login_ok("admin", "s3cret").await;
    let mut w = tokio::net::TcpStream::connect(r.winbox_addr).await.unwrap();
    let started = std::time::Instant::now();
    fleet.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown drained promptly"
    );
    assert!(c.closed().await, "api connections end at shutdown");
    use tokio::io::AsyncReadExt;
    let mut sink = Vec::new();
    let n = tokio::time::timeout(TIMEOUT, w.read_to_end(&mut sink))
        .await
        .unwrap();
    assert!(n.is_ok() || n.is_err(), "winbox connection closed");
}

#[tokio::test]
async fn addresses_outside_loopback_are_refused() {
    let e = Fleet::start(
        2,
        "127.255.255.255".parse().unwrap(),
        FleetOptions {
            ports: Ports::ephemeral(),
            ..FleetOptions::default()
        },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
}
