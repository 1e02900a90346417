//! dst-nat rules forward real TCP connections, and stop when the rule goes.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::*;

/// A TCP echo service; returns its address.
async fn echo_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = s.split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    addr
}

/// A port that was free on `ip` a moment ago (the rule needs a fixed number).
fn free_port(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn echo_through(stream: &mut TcpStream, msg: &[u8]) -> bool {
    if stream.write_all(msg).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    matches!(
        tokio::time::timeout(TIMEOUT, stream.read_exact(&mut buf)).await,
        Ok(Ok(_)) if buf == msg
    )
}

async fn is_closed(stream: &mut TcpStream) -> bool {
    let mut b = [0u8; 16];
    matches!(
        tokio::time::timeout(TIMEOUT, stream.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn dst_nat_forwards_and_stops_when_the_rule_goes() {
    let ip = "127.0.9.1";
    let r = router_at(ip).await;
    let echo = echo_server().await;
    let port = free_port(ip);
    let mut api = Raw::admin(r.api_addr).await;
    let id = api
        .ok(&[
            "/ip/firewall/nat/add",
            "=chain=dstnat",
            "=action=dst-nat",
            "=protocol=tcp",
            &format!("=dst-address={ip}"),
            &format!("=dst-port={port}"),
            "=to-addresses=127.0.0.1",
            &format!("=to-ports={}", echo.port()),
            "=comment=postern:forward:1",
        ])
        .await
        .unwrap();
    let target: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let mut conn = TcpStream::connect(target).await.unwrap();
    assert!(echo_through(&mut conn, b"hello through the router").await);

    // Disable: listener and forwarded connection close; enable: back.
    api.ok(&["/ip/firewall/nat/disable", &format!("=.id={id}")])
        .await;
    assert!(is_closed(&mut conn).await);
    assert!(TcpStream::connect(target).await.is_err());
    api.ok(&["/ip/firewall/nat/enable", &format!("=.id={id}")])
        .await;
    let mut conn = TcpStream::connect(target).await.unwrap();
    assert!(echo_through(&mut conn, b"again").await);

    // Remove: the same.
    api.ok(&["/ip/firewall/nat/remove", &format!("=.id={id}")])
        .await;
    assert!(is_closed(&mut conn).await);
    assert!(TcpStream::connect(target).await.is_err());
    r.shutdown().await;
}

#[tokio::test]
async fn src_address_restricts_and_other_rules_are_not_forwarded() {
    let ip = "127.0.9.2";
    let r = router_at(ip).await;
    let echo = echo_server().await;
    let port = free_port(ip);
    let mut api = Raw::admin(r.api_addr).await;
    api.ok(&[
        "/ip/firewall/nat/add",
        "=chain=dstnat",
        "=action=dst-nat",
        "=protocol=tcp",
        &format!("=dst-port={port}"),
        "=to-addresses=127.0.0.1",
        &format!("=to-ports={}", echo.port()),
        "=src-address=127.0.0.44/32",
    ])
    .await;
    let target: SocketAddr = format!("{ip}:{port}").parse().unwrap();
    let mut allowed = connect_from("127.0.0.44", target).await;
    assert!(echo_through(&mut allowed, b"ok").await);
    let mut other = connect_from("127.0.0.45", target).await;
    assert!(!echo_through(&mut other, b"no").await);

    // A rule for another address, a udp rule and a masquerade open nothing.
    let port2 = free_port(ip);
    api.ok(&[
        "/ip/firewall/nat/add",
        "=chain=dstnat",
        "=action=dst-nat",
        "=protocol=tcp",
        "=dst-address=10.1.1.1",
        &format!("=dst-port={port2}"),
        "=to-addresses=127.0.0.1",
    ])
    .await;
    api.ok(&[
        "/ip/firewall/nat/add",
        "=chain=dstnat",
        "=action=dst-nat",
        "=protocol=udp",
        &format!("=dst-port={port2}"),
        "=to-addresses=127.0.0.1",
    ])
    .await;
    api.ok(&[
        "/ip/firewall/nat/add",
        "=chain=srcnat",
        "=action=masquerade",
    ])
    .await;
    assert!(TcpStream::connect((ip, port2)).await.is_err());
    r.shutdown().await;
    // Shutdown stops forwarding.
    assert!(TcpStream::connect(target).await.is_err());
}
