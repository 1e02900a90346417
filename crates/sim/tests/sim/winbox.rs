//! The WinBox-port stand-in: line login with address and policy checks, /user/active,
//! /user/active remove.

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::*;

struct Line {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
}

impl Line {
    async fn connect(stream: TcpStream) -> (Line, String) {
        let (rd, wr) = stream.into_split();
        let mut l = Line {
            rd: BufReader::new(rd),
            wr,
        };
        let banner = l.read().await.unwrap();
        (l, banner)
    }

    async fn read(&mut self) -> Option<String> {
        let mut s = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.rd.read_line(&mut s))
            .await
            .unwrap()
            .ok()?;
        (n > 0).then(|| s.trim_end().to_string())
    }

    async fn say(&mut self, line: &str) -> Option<String> {
        self.wr
            .write_all(format!("{line}\n").as_bytes())
            .await
            .ok()?;
        self.read().await
    }
}

#[tokio::test]
async fn login_whoami_and_active_sessions() {
    let r = router().await;
    let (mut w, banner) = Line::connect(TcpStream::connect(r.winbox_addr).await.unwrap()).await;
    assert!(banner.contains("not the WinBox protocol"), "{banner}");
    assert_eq!(w.say("login admin wrong").await.as_deref(), Some("denied"));
    assert_eq!(w.say("login admin pw").await.as_deref(), Some("ok sim-1"));
    assert_eq!(w.say("whoami").await.as_deref(), Some("admin"));
    assert_eq!(w.say("hello").await.as_deref(), Some("echo: hello"));
    let mut api = Raw::admin(r.api_addr).await;
    let active = api.rows(&["/user/active/print", "?via=winbox"]).await;
    assert_eq!(names(&active), ["admin"]);
    assert_eq!(w.say("quit").await.as_deref(), Some("bye"));
    assert_eq!(w.read().await, None);
    let router = r.router().clone();
    eventually("the winbox session to end", move || {
        router
            .state()
            .active
            .items
            .iter()
            .all(|i| i.get("via") != Some("winbox"))
    })
    .await;
    r.shutdown().await;
}

#[tokio::test]
async fn winbox_policy_address_and_three_strikes() {
    let r = router().await;
    let mut api = Raw::admin(r.api_addr).await;
    api.ok(&["/user/group/add", "=name=no-winbox", "=policy=api,ssh,read"])
        .await;
    add_user(&mut api, "nw", "no-winbox", "n", &[]).await;
    add_user(&mut api, "local", "read", "l", &["=address=127.0.0.7"]).await;
    let (mut w, _) = Line::connect(TcpStream::connect(r.winbox_addr).await.unwrap()).await;
    assert_eq!(w.say("login nw n").await.as_deref(), Some("denied"));
    assert_eq!(w.say("login local l").await.as_deref(), Some("denied"));
    assert_eq!(w.say("garbage").await.as_deref(), Some("denied"));
    assert_eq!(w.read().await, None, "closed after three failures");
    let (mut w, _) = Line::connect(connect_from("127.0.0.7", r.winbox_addr).await).await;
    assert_eq!(w.say("login local l").await.as_deref(), Some("ok sim-1"));
    r.shutdown().await;
}

#[tokio::test]
async fn removing_the_session_closes_the_winbox_session() {
    let r = router().await;
    let mut api = Raw::admin(r.api_addr).await;
    add_user(&mut api, "tech", "read", "t", &[]).await;
    let (mut w, _) = Line::connect(TcpStream::connect(r.winbox_addr).await.unwrap()).await;
    assert_eq!(w.say("login tech t").await.as_deref(), Some("ok sim-1"));
    let id = get(
        &api.rows(&["/user/active/print", "?name=tech"]).await[0],
        ".id",
    )
    .unwrap()
    .to_string();
    api.ok(&["/user/remove", "=numbers=tech"]).await;
    assert_eq!(
        w.say("whoami").await.as_deref(),
        Some("tech"),
        "removing the user keeps the session"
    );
    api.ok(&["/user/active/remove", &format!("=numbers={id}")])
        .await;
    assert_eq!(w.read().await, None);
    r.shutdown().await;
}
