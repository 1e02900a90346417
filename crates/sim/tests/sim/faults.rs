//! Faults: latency, offline, dropping a connection in the middle of a command.

use std::time::{Duration, Instant};

use postern_sim::DropPoint;

use crate::common::*;

#[tokio::test]
async fn latency_delays_every_reply() {
    let r = router().await;
    let mut c = Raw::admin(r.api_addr).await;
    r.faults().set_latency(Duration::from_millis(100));
    let start = Instant::now();
    // Two sentences (!re, !done): at least two delays.
    assert_eq!(c.rows(&["/system/identity/print"]).await.len(), 1);
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
    r.faults().set_latency(Duration::ZERO);
    let start = Instant::now();
    c.rows(&["/system/identity/print"]).await;
    assert!(start.elapsed() < Duration::from_millis(100));
    r.shutdown().await;
}

#[tokio::test]
async fn offline_cuts_connections_and_refuses_new_ones() {
    let r = router().await;
    let mut c = Raw::admin(r.api_addr).await;
    r.faults().set_offline(true);
    assert!(c.closed().await, "a live connection is cut");
    // New connections are accepted and reset before a word is exchanged.
    let mut again = Raw::connect(r.api_addr).await;
    assert!(again.closed().await);
    let mut w = tokio::net::TcpStream::connect(r.winbox_addr).await.unwrap();
    let mut buf = [0u8; 64];
    use tokio::io::AsyncReadExt;
    let n = tokio::time::timeout(TIMEOUT, w.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "winbox refused too: {n:?}");
    // Back online.
    r.faults().set_offline(false);
    let mut c = Raw::admin(r.api_addr).await;
    assert_eq!(c.rows(&["/system/identity/print"]).await.len(), 1);
    r.shutdown().await;
}

#[tokio::test]
async fn drop_before_apply_loses_the_command() {
    let r = router().await;
    let mut c = Raw::admin(r.api_addr).await;
    r.faults().set_drop_commands(Some(DropPoint::BeforeApply));
    c.send(&["/user/add", "=name=lost", "=group=read", ".tag=1"])
        .await;
    assert!(c.closed().await);
    r.faults().set_drop_commands(None);
    assert!(r.router().state().users.by_name("lost").is_none());
    r.shutdown().await;
}

#[tokio::test]
async fn drop_after_apply_keeps_the_change_but_not_the_reply() {
    let r = router().await;
    let mut c = Raw::admin(r.api_addr).await;
    r.faults().set_drop_commands(Some(DropPoint::AfterApply));
    c.send(&["/user/add", "=name=applied", "=group=read", ".tag=1"])
        .await;
    assert!(c.closed().await, "no reply, the connection is closed");
    r.faults().set_drop_commands(None);
    // A client retrying meets its own work: look up before adding.
    let mut c = Raw::admin(r.api_addr).await;
    assert_eq!(
        names(&c.rows(&["/user/print", "?name=applied"]).await),
        ["applied"]
    );
    let (msg, _) = c.trap(&["/user/add", "=name=applied", "=group=read"]).await;
    assert_eq!(msg, "failure: user with the same name already exists");
    r.shutdown().await;
}
