//! The client against a scripted RouterOS peer on 127.0.0.1: login methods, tagged
//! commands in flight together, `/cancel`, timeouts, lost connections, `!fatal`,
//! `!empty`, bytes that are not sentences, TLS pinning, and the typed helpers.
//!
//! The peer is written here with the codec only: each test scripts exactly what a router
//! (or a misbehaving one) sends, and asserts on what the client sent.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use postern_routeros as routeros;
use routeros::api::{self, Filter, ItemId};
use routeros::{
    Client, ClientConfig, Command, Connection, Error, Sentence, TlsMode, TrapCategory, Words,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

type Conn = Connection<Box<dyn Stream>>;

const USER: &str = "admin";
const PASSWORD: &str = "s3cret-pw";

/// Listens on 127.0.0.1:0 and runs `script` on the first connection.
async fn fake_router<F, Fut>(script: F) -> (String, JoinHandle<()>)
where
    F: FnOnce(Conn) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let handle = tokio::spawn(async move {
        let (socket, _) = listener.accept().await.unwrap();
        script(Connection::new(Box::new(socket) as Box<dyn Stream>)).await;
    });
    (addr, handle)
}

/// Waits for the peer's script to end (it ends when the client closes the connection);
/// a peer still running after 10 s fails the test rather than hanging it.
async fn finish(peer: JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(10), peer)
        .await
        .expect("the peer's script did not end: did the client close the connection?")
        .unwrap();
}

fn config(addr: &str) -> ClientConfig {
    ClientConfig::new(addr, USER, PASSWORD)
        .with_connect_timeout(Duration::from_secs(5))
        .with_command_timeout(Duration::from_secs(5))
}

/// The next sentence from the client; a client that sends nothing within 10 s fails the
/// test rather than hanging it.
async fn recv(conn: &mut Conn) -> Words {
    let sentence = tokio::time::timeout(Duration::from_secs(10), conn.read_sentence())
        .await
        .expect("the client sent nothing within 10 s")
        .unwrap()
        .expect("the client sent a sentence");
    Words::parse(&sentence)
}

async fn send(conn: &mut Conn, words: &[&str]) {
    let sentence = Sentence::new(
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect(),
    );
    conn.write_sentence(&sentence).await.unwrap();
}

fn head(w: &Words) -> &str {
    std::str::from_utf8(&w.head).unwrap()
}

fn tag_of(w: &Words) -> String {
    String::from_utf8(w.tag.clone().expect("a tagged command").to_vec()).unwrap()
}

fn attr<'a>(w: &'a Words, key: &str) -> Option<&'a str> {
    w.attributes.get_str(key)
}

fn queries(w: &Words) -> Vec<String> {
    w.queries
        .iter()
        .map(|q| String::from_utf8(q.to_vec()).unwrap())
        .collect()
}

/// Reads a plaintext `/login` with the test's credentials and accepts it.
async fn accept_login(conn: &mut Conn) {
    let login = recv(conn).await;
    assert_eq!(head(&login), "/login");
    assert_eq!(attr(&login, "name"), Some(USER));
    assert_eq!(attr(&login, "password"), Some(PASSWORD));
    send(conn, &["!done"]).await;
}

/// Answers each command with what `handler` returns (reply words without the tag; the
/// command's tag is added), until the client goes away.
async fn serve(conn: &mut Conn, mut handler: impl FnMut(&Words) -> Vec<Vec<String>>) {
    while let Ok(Some(sentence)) = conn.read_sentence().await {
        let words = Words::parse(&sentence);
        let tag = format!(".tag={}", tag_of(&words));
        for mut reply in handler(&words) {
            reply.push(tag.clone());
            let refs: Vec<&str> = reply.iter().map(String::as_str).collect();
            send(conn, &refs).await;
        }
    }
}

fn words(ws: &[&str]) -> Vec<String> {
    ws.iter().map(|w| w.to_string()).collect()
}

#[tokio::test]
async fn plaintext_login_then_a_command() {
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        serve(&mut conn, |w| {
            assert_eq!(head(w), "/system/identity/print");
            vec![words(&["!re", "=name=edge-1"]), words(&["!done"])]
        })
        .await;
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();
    assert_eq!(api::system::identity(&client).await.unwrap(), "edge-1");
    drop(client);
    finish(peer).await;
}

#[tokio::test]
async fn md5_challenge_fallback_when_done_carries_ret() {
    let (addr, peer) = fake_router(|mut conn| async move {
        let first = recv(&mut conn).await;
        assert_eq!(attr(&first, "password"), Some("passTest"));
        // A router before 6.43 ignores the password and answers with a challenge.
        send(&mut conn, &["!done", "=ret=abc123"]).await;
        let second = recv(&mut conn).await;
        assert_eq!(head(&second), "/login");
        assert_eq!(attr(&second, "name"), Some(USER));
        assert_eq!(
            attr(&second, "response"),
            Some("0021277bff9ac7caf06aa608e46616d47f")
        );
        assert_eq!(attr(&second, "password"), None);
        send(&mut conn, &["!done"]).await;
        serve(&mut conn, |_| {
            vec![words(&["!re", "=name=old"]), words(&["!done"])]
        })
        .await;
    })
    .await;
    let client = Client::connect(&ClientConfig::new(&addr, USER, "passTest"))
        .await
        .unwrap();
    assert_eq!(api::system::identity(&client).await.unwrap(), "old");
    drop(client);
    finish(peer).await;
}

#[tokio::test]
async fn failed_login_reports_the_routers_message_and_not_the_password() {
    let (addr, peer) = fake_router(|mut conn| async move {
        recv(&mut conn).await;
        send(
            &mut conn,
            &["!trap", "=message=invalid user name or password (6)"],
        )
        .await;
        send(&mut conn, &["!done"]).await;
    })
    .await;
    let err = Client::connect(&config(&addr)).await.unwrap_err();
    match &err {
        Error::Login { message } => assert_eq!(message, "invalid user name or password (6)"),
        other => panic!("expected a login error, got {other:?}"),
    }
    assert!(!err.to_string().contains(PASSWORD));
    assert!(!format!("{err:?}").contains(PASSWORD));
    finish(peer).await;
}

#[tokio::test]
async fn fifty_concurrent_commands_answered_out_of_order() {
    const N: usize = 50;
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        let mut seen = Vec::new();
        for _ in 0..N {
            let w = recv(&mut conn).await;
            assert_eq!(head(&w), "/test/echo");
            seen.push((tag_of(&w), attr(&w, "n").unwrap().to_string()));
        }
        let tags: std::collections::HashSet<_> = seen.iter().map(|(t, _)| t.clone()).collect();
        assert_eq!(tags.len(), N, "every command has its own tag");
        // Replies interleaved: first items in reverse order, then second items in a
        // scrambled order, then each `!done` in yet another order.
        for (tag, n) in seen.iter().rev() {
            send(
                &mut conn,
                &["!re", &format!("=n={n}"), "=part=1", &format!(".tag={tag}")],
            )
            .await;
        }
        for i in 0..N {
            let (tag, n) = &seen[(i * 7) % N];
            send(
                &mut conn,
                &["!re", &format!("=n={n}"), "=part=2", &format!(".tag={tag}")],
            )
            .await;
        }
        for i in 0..N {
            let (tag, _) = &seen[(i * 13 + 5) % N];
            send(&mut conn, &["!done", &format!(".tag={tag}")]).await;
        }
        // Keep the connection open until the client is done.
        let _ = conn.read_sentence().await;
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..N {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let response = client
                .call(Command::new("/test/echo").attr("n", i.to_string()))
                .await
                .unwrap();
            assert_eq!(response.items.len(), 2);
            for (part, item) in response.items.iter().enumerate() {
                assert_eq!(item.get_str("n"), Some(i.to_string().as_str()));
                assert_eq!(item.get_u64("part").unwrap(), Some(part as u64 + 1));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(client.in_flight(), 0);
    drop(client);
    finish(peer).await;
}

#[tokio::test]
async fn cancel_sends_its_own_tag_and_the_command_ends_cancelled() {
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        let listen = recv(&mut conn).await;
        assert_eq!(head(&listen), "/interface/listen");
        let tag = tag_of(&listen);
        send(&mut conn, &["!re", "=name=ether1", &format!(".tag={tag}")]).await;
        let cancel = recv(&mut conn).await;
        assert_eq!(head(&cancel), "/cancel");
        assert_eq!(attr(&cancel, "tag"), Some(tag.as_str()));
        let own = tag_of(&cancel);
        assert_ne!(own, tag, "/cancel carries a tag of its own");
        send(
            &mut conn,
            &[
                "!trap",
                "=category=2",
                "=message=interrupted",
                &format!(".tag={tag}"),
            ],
        )
        .await;
        send(&mut conn, &["!done", &format!(".tag={tag}")]).await;
        send(&mut conn, &["!done", &format!(".tag={own}")]).await;
        let _ = conn.read_sentence().await;
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();
    let mut stream = client.stream(Command::new("/interface/listen")).unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.get_str("name"), Some("ether1"));
    client.cancel(stream.tag()).await.unwrap();
    assert!(matches!(stream.next().await, Some(Err(Error::Cancelled))));
    assert!(stream.next().await.is_none());
    assert_eq!(client.in_flight(), 0);
    drop(stream);
    drop(client);
    finish(peer).await;
}

#[tokio::test]
async fn dropping_a_stream_cancels_it_on_the_router() {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        let listen = recv(&mut conn).await;
        let tag = tag_of(&listen);
        let cancel = recv(&mut conn).await;
        assert_eq!(head(&cancel), "/cancel");
        assert_eq!(attr(&cancel, "tag"), Some(tag.as_str()));
        // Late replies for the dropped stream, then an answer to a new command.
        send(&mut conn, &["!re", "=x=late", &format!(".tag={tag}")]).await;
        send(
            &mut conn,
            &[
                "!trap",
                "=category=2",
                "=message=interrupted",
                &format!(".tag={tag}"),
            ],
        )
        .await;
        send(&mut conn, &["!done", &format!(".tag={tag}")]).await;
        send(&mut conn, &["!done", &format!(".tag={}", tag_of(&cancel))]).await;
        tx.send(()).unwrap();
        serve(&mut conn, |_| {
            vec![words(&["!re", "=x=fresh"]), words(&["!done"])]
        })
        .await;
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();
    let stream = client.stream(Command::new("/interface/listen")).unwrap();
    drop(stream);
    rx.await.unwrap();
    let response = client.call(Command::new("/anything")).await.unwrap();
    assert_eq!(response.items.len(), 1);
    assert_eq!(response.items[0].get_str("x"), Some("fresh"));
    drop(client);
    finish(peer).await;
}

#[tokio::test]
async fn a_timed_out_command_is_cancelled_and_its_late_replies_discarded() {
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        let slow = recv(&mut conn).await;
        let tag = tag_of(&slow);
        // Say nothing until the client gives up and cancels.
        let cancel = recv(&mut conn).await;
        assert_eq!(head(&cancel), "/cancel");
        assert_eq!(attr(&cancel, "tag"), Some(tag.as_str()));
        let own = tag_of(&cancel);
        assert_ne!(own, tag);
        send(&mut conn, &["!re", "=late=yes", &format!(".tag={tag}")]).await;
        send(
            &mut conn,
            &[
                "!trap",
                "=category=2",
                "=message=interrupted",
                &format!(".tag={tag}"),
            ],
        )
        .await;
        send(&mut conn, &["!done", &format!(".tag={tag}")]).await;
        send(&mut conn, &["!done", &format!(".tag={own}")]).await;
        serve(&mut conn, |_| {
            vec![words(&["!re", "=fresh=yes"]), words(&["!done"])]
        })
        .await;
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();
    let started = Instant::now();
    let err = client
        .call_with_timeout(Command::new("/slow"), Duration::from_millis(200))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, Error::Timeout(d) if d == Duration::from_millis(200)),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let response = client.call(Command::new("/next")).await.unwrap();
    assert_eq!(response.items.len(), 1);
    assert_eq!(response.items[0].get_str("fresh"), Some("yes"));
    assert_eq!(response.items[0].get_str("late"), None);
    drop(client);
    finish(peer).await;
}

#[tokio::test]
async fn a_dropped_connection_fails_every_waiter_and_later_commands_at_once() {
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        for _ in 0..5 {
            recv(&mut conn).await;
        }
        // Half an answer, then the connection goes away.
        send(&mut conn, &["!re", "=a=b", ".tag=1"]).await;
        drop(conn);
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();
    let mut waiters = Vec::new();
    for i in 0..5 {
        let client = client.clone();
        waiters.push(tokio::spawn(async move {
            client
                .call_with_timeout(
                    Command::new("/wait").attr("i", i.to_string()),
                    Duration::from_secs(30),
                )
                .await
        }));
    }
    let started = Instant::now();
    for w in waiters {
        let result = tokio::time::timeout(Duration::from_secs(3), w)
            .await
            .expect("a waiter hung on a lost connection")
            .unwrap();
        assert!(
            matches!(result, Err(Error::ConnectionLost { .. })),
            "{result:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(client.is_closed());
    let started = Instant::now();
    let err = client.call(Command::new("/after")).await.unwrap_err();
    assert!(matches!(err, Error::ConnectionLost { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(100));
    finish(peer).await;
}

#[tokio::test]
async fn fatal_fails_waiters_and_closes() {
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        recv(&mut conn).await;
        send(&mut conn, &["!fatal", "session terminated on request"]).await;
        // RouterOS closes after !fatal; this peer does too.
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();
    let err = client.call(Command::new("/user/print")).await.unwrap_err();
    match &err {
        Error::Fatal { message } => assert_eq!(message, "session terminated on request"),
        other => panic!("expected fatal, got {other:?}"),
    }
    assert!(client.is_closed());
    let err = client.call(Command::new("/user/print")).await.unwrap_err();
    assert!(
        matches!(&err, Error::ConnectionLost { reason } if reason.contains("session terminated")),
        "{err:?}"
    );
    finish(peer).await;
}

#[tokio::test]
async fn empty_reply_finishes_a_command_with_no_items() {
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        serve(&mut conn, |w| {
            assert_eq!(head(w), "/user/print");
            assert_eq!(queries(w), vec!["?name=nobody"]);
            vec![words(&["!empty"]), words(&["!done"])]
        })
        .await;
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();
    let users = api::user::print(&client, &Filter::name("nobody"))
        .await
        .unwrap();
    assert!(users.is_empty());
    // The `!done` after `!empty` was taken by the command, not left for the next one.
    assert_eq!(client.in_flight(), 0);
    drop(client);
    finish(peer).await;
}

#[tokio::test]
async fn a_command_answered_empty_ends_only_at_the_done_that_follows() {
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        let first = recv(&mut conn).await;
        let tag = format!(".tag={}", tag_of(&first));
        send(&mut conn, &["!empty", &tag]).await;
        // Long enough for a client that stopped at `!empty` to have returned.
        tokio::time::sleep(Duration::from_millis(100)).await;
        send(&mut conn, &["!done", "=ret=after-empty", &tag]).await;
        serve(&mut conn, |_| {
            vec![words(&["!re", "=name=x"]), words(&["!done"])]
        })
        .await;
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();
    let mut request = client.start(Command::new("/user/print")).unwrap();
    let started = std::time::Instant::now();
    assert!(request.next().await.is_none());
    assert!(started.elapsed() >= Duration::from_millis(90));
    assert_eq!(
        request.done().and_then(|d| d.get_str("ret")),
        Some("after-empty")
    );
    drop(request);
    // The next command on the same connection gets its own replies.
    let again = client.call(Command::new("/user/print")).await.unwrap();
    assert_eq!(again.items.len(), 1);
    drop(client);
    finish(peer).await;
}

#[tokio::test]
async fn a_control_byte_from_the_peer_is_a_lost_connection_not_a_panic() {
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        recv(&mut conn).await;
        let raw: &[u8] = &[0x03, b'!', b'r', b'e', 0xF9, 0x00];
        let mut conn = conn;
        // Write bytes that are not a sentence straight onto the socket.
        let stream: &mut Box<dyn Stream> = conn_stream(&mut conn);
        stream.write_all(raw).await.unwrap();
        stream.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();
    let err = client.call(Command::new("/x")).await.unwrap_err();
    assert!(
        matches!(&err, Error::ConnectionLost { reason } if reason.contains("control byte")),
        "{err:?}"
    );
    assert!(client.is_closed());
    finish(peer).await;
}

/// The stream under a peer's connection, for writing raw bytes.
fn conn_stream(conn: &mut Conn) -> &mut Box<dyn Stream> {
    conn.get_mut()
}

#[tokio::test]
async fn a_trap_fails_the_command_with_the_routers_message_after_its_done() {
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        serve(&mut conn, |w| {
            assert_eq!(head(w), "/user/add");
            vec![
                words(&[
                    "!trap",
                    "=category=1",
                    "=message=failure: user with the same name already exists",
                ]),
                words(&["!done"]),
            ]
        })
        .await;
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();
    let new_user = api::user::NewUser {
        name: "dup".into(),
        group: "read".into(),
        password: "pw".into(),
        ..Default::default()
    };
    let err = api::user::add(&client, &new_user).await.unwrap_err();
    match err {
        Error::Trap { message, category } => {
            assert_eq!(message, "failure: user with the same name already exists");
            assert_eq!(category, Some(TrapCategory::ArgumentValueFailure));
        }
        other => panic!("expected a trap, got {other:?}"),
    }
    // The connection is still good.
    assert!(!client.is_closed());
    assert_eq!(client.in_flight(), 0);
    drop(client);
    finish(peer).await;
}

/// A tiny in-memory router: enough of `/user`, `/ip/firewall/nat` and
/// `/system/scheduler` to check the words the typed helpers send and what they parse.
fn tiny_router() -> impl FnMut(&Words) -> Vec<Vec<String>> {
    let mut tables: HashMap<String, Vec<Vec<(String, String)>>> = HashMap::new();
    let mut next_id = 1;
    move |w| {
        let path = head(w).to_string();
        let (menu, verb) = path.rsplit_once('/').unwrap();
        let table = tables.entry(menu.to_string()).or_default();
        match verb {
            "add" => {
                let id = format!("*{next_id:X}");
                next_id += 1;
                let mut row = vec![(".id".to_string(), id.clone())];
                for (k, v) in w.attributes.iter() {
                    row.push((
                        String::from_utf8(k.to_vec()).unwrap(),
                        String::from_utf8(v.to_vec()).unwrap(),
                    ));
                }
                table.push(row);
                vec![vec!["!done".to_string(), format!("=ret={id}")]]
            }
            "print" => {
                let qs: Vec<(String, String)> = queries(w)
                    .iter()
                    .map(|q| {
                        let (k, v) = q.trim_start_matches('?').split_once('=').unwrap();
                        (k.to_string(), v.to_string())
                    })
                    .collect();
                let mut out: Vec<Vec<String>> = table
                    .iter()
                    .filter(|row| qs.iter().all(|q| row.contains(q)))
                    .map(|row| {
                        let mut r = vec!["!re".to_string()];
                        r.extend(row.iter().map(|(k, v)| format!("={k}={v}")));
                        r
                    })
                    .collect();
                out.push(vec!["!done".to_string()]);
                out
            }
            "remove" => {
                let id = attr(w, ".id").unwrap().to_string();
                let before = table.len();
                table.retain(|row| !row.contains(&(".id".to_string(), id.clone())));
                if table.len() == before {
                    vec![
                        words(&["!trap", "=category=0", "=message=no such item"]),
                        words(&["!done"]),
                    ]
                } else {
                    vec![words(&["!done"])]
                }
            }
            _ => vec![
                words(&["!trap", "=category=0", "=message=no such command"]),
                words(&["!done"]),
            ],
        }
    }
}

#[tokio::test]
async fn typed_helpers_send_routeros_spellings_and_parse_replies() {
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        serve(&mut conn, tiny_router()).await;
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();

    let id = api::user::add(
        &client,
        &api::user::NewUser {
            name: "t1".into(),
            group: "postern-read".into(),
            password: "pw1".into(),
            address: vec!["100.64.0.1/32".into(), "10.0.0.0/8".into()],
            comment: Some("note".into()),
            disabled: false,
        },
    )
    .await
    .unwrap();
    assert_eq!(id, ItemId::new("*1"));
    let users = api::user::print(&client, &Filter::comment("note"))
        .await
        .unwrap();
    assert_eq!(users.len(), 1);
    let u = &users[0];
    assert_eq!(u.id, id);
    assert_eq!(u.name, "t1");
    assert_eq!(u.group.as_deref(), Some("postern-read"));
    assert_eq!(u.address, vec!["100.64.0.1/32", "10.0.0.0/8"]);
    assert!(!u.disabled);
    assert_eq!(u.properties.get_str("password"), Some("pw1"));
    assert!(
        api::user::print(&client, &Filter::name("other"))
            .await
            .unwrap()
            .is_empty()
    );
    api::user::remove(&client, &id).await.unwrap();
    let err = api::user::remove(&client, &id).await.unwrap_err();
    assert!(
        matches!(&err, Error::Trap { message, .. } if message == "no such item"),
        "{err:?}"
    );

    let rule = api::nat::NewNatRule {
        chain: "dstnat".into(),
        action: "dst-nat".into(),
        protocol: Some("tcp".into()),
        dst_address: Some("100.64.0.2".into()),
        dst_port: Some("40001".into()),
        to_addresses: Some("192.168.88.10".into()),
        to_ports: Some("443".into()),
        src_address: Some("100.64.0.1".into()),
        in_interface: None,
        comment: Some("fwd".into()),
        disabled: false,
    };
    let nat_id = api::nat::add(&client, &rule).await.unwrap();
    let rules = api::nat::print(&client, &Filter::all()).await.unwrap();
    assert_eq!(rules.len(), 1);
    let r = &rules[0];
    assert_eq!(r.id, nat_id);
    assert_eq!(r.chain, "dstnat");
    assert_eq!(r.action.as_deref(), Some("dst-nat"));
    assert_eq!(r.to_addresses.as_deref(), Some("192.168.88.10"));
    assert_eq!(r.to_ports.as_deref(), Some("443"));
    assert_eq!(r.dst_port.as_deref(), Some("40001"));
    assert_eq!(r.src_address.as_deref(), Some("100.64.0.1"));
    api::nat::remove(&client, &nat_id).await.unwrap();

    let sched_id = api::scheduler::add(
        &client,
        &api::scheduler::NewSchedule {
            name: "expire-t1".into(),
            start_date: Some("2026-11-22".into()),
            start_time: Some("14:00:00".into()),
            interval: None,
            on_event: "/user/remove [find name=t1]".into(),
            comment: Some("c".into()),
            policy: vec!["read".into(), "write".into(), "policy".into()],
        },
    )
    .await
    .unwrap();
    let entries = api::scheduler::print(&client, &Filter::name("expire-t1"))
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.id, sched_id);
    assert_eq!(e.on_event.as_deref(), Some("/user/remove [find name=t1]"));
    assert_eq!(e.start_time.as_deref(), Some("14:00:00"));
    assert_eq!(e.policy, vec!["read", "write", "policy"]);
    assert_eq!(e.interval, None);
    api::scheduler::remove(&client, &sched_id).await.unwrap();

    let gid = api::group::add(
        &client,
        &api::group::NewGroup {
            name: "postern-read".into(),
            policy: vec!["read".into(), "winbox".into(), "!reboot".into()],
            comment: None,
        },
    )
    .await
    .unwrap();
    let groups = api::group::print(&client, &Filter::all()).await.unwrap();
    assert_eq!(groups[0].id, gid);
    assert!(groups[0].has_policy("winbox"));
    assert!(!groups[0].has_policy("reboot"));

    drop(client);
    finish(peer).await;
}

#[tokio::test]
async fn active_sessions_resource_and_device_mode() {
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        serve(&mut conn, |w| match head(w) {
            "/user/active/print" => vec![
                words(&[
                    "!re",
                    "=.id=*A1",
                    "=name=t1",
                    "=address=100.64.0.1",
                    "=via=winbox",
                    "=when=2026-11-22 12:00:00",
                ]),
                words(&[
                    "!re",
                    "=.id=*A2",
                    "=name=t1",
                    "=address=100.64.0.1",
                    "=via=ssh",
                    "=when=2026-11-22 12:01:00",
                    "=radius=false",
                ]),
                words(&["!done"]),
            ],
            "/user/active/remove" => {
                assert_eq!(attr(w, ".id"), Some("*A2"));
                vec![words(&["!done"])]
            }
            "/system/resource/print" => vec![
                words(&[
                    "!re",
                    "=uptime=1d2h3m4s",
                    "=version=7.18.2 (stable)",
                    "=board-name=CHR",
                    "=cpu-load=3",
                    "=free-memory=123456",
                    "=total-memory=268435456",
                    "=architecture-name=x86_64",
                    "=cpu-count=2",
                ]),
                words(&["!done"]),
            ],
            "/system/device-mode/print" => vec![
                words(&[
                    "!re",
                    "=mode=home",
                    "=scheduler=false",
                    "=socks=false",
                    "=fetch=true",
                    "=bandwidth-test=false",
                ]),
                words(&["!done"]),
            ],
            other => panic!("unexpected {other}"),
        })
        .await;
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();
    let active = api::active::print(&client, &Filter::all()).await.unwrap();
    assert_eq!(active.len(), 2);
    assert_eq!(active[1].via.as_deref(), Some("ssh"));
    assert_eq!(active[0].address.as_deref(), Some("100.64.0.1"));
    assert_eq!(active[0].when.as_deref(), Some("2026-11-22 12:00:00"));
    api::active::remove(&client, &active[1].id).await.unwrap();

    let r = api::system::resource(&client).await.unwrap();
    assert_eq!(r.version.as_deref(), Some("7.18.2 (stable)"));
    assert_eq!(r.board_name.as_deref(), Some("CHR"));
    assert_eq!(r.cpu_load, Some(3));
    assert_eq!(r.total_memory, Some(268_435_456));
    assert_eq!(r.free_memory, Some(123_456));
    assert_eq!(r.architecture_name.as_deref(), Some("x86_64"));
    assert_eq!(r.uptime.as_deref(), Some("1d2h3m4s"));

    let d = api::system::device_mode(&client).await.unwrap();
    assert_eq!(d.mode.as_deref(), Some("home"));
    assert_eq!(d.scheduler, Some(false));
    assert_eq!(d.flag("fetch"), Some(true));
    assert_eq!(d.flag("bandwidth-test"), Some(false));
    drop(client);
    finish(peer).await;
}

mod tls {
    use super::*;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio_rustls::TlsAcceptor;

    struct Cert {
        der: CertificateDer<'static>,
        pem: String,
        key: Vec<u8>,
    }

    fn make_cert() -> Cert {
        let ck = rcgen::generate_simple_self_signed(vec!["router.test".to_string()]).unwrap();
        Cert {
            der: ck.cert.der().clone(),
            pem: ck.cert.pem(),
            key: ck.signing_key.serialize_der(),
        }
    }

    /// A TLS peer on 127.0.0.1:0 presenting `cert`, serving a login and one identity
    /// print; returns its address and whether a client got through.
    async fn tls_router(cert: &Cert) -> (String, JoinHandle<bool>) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key.clone())),
            )
            .unwrap();
        let acceptor = TlsAcceptor::from(Arc::new(server));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let Ok(tls) = acceptor.accept(socket).await else {
                return false;
            };
            let mut conn: Conn = Connection::new(Box::new(tls) as Box<dyn Stream>);
            accept_login(&mut conn).await;
            serve(&mut conn, |_| {
                vec![words(&["!re", "=name=tls-router"]), words(&["!done"])]
            })
            .await;
            true
        });
        (addr, handle)
    }

    async fn try_mode(cert: &Cert, mode: TlsMode) -> (Result<String, Error>, bool) {
        let (addr, peer) = tls_router(cert).await;
        let result = match Client::connect(&config(&addr).with_tls(mode)).await {
            Ok(client) => api::system::identity(&client).await,
            Err(e) => Err(e),
        };
        let served = tokio::time::timeout(Duration::from_secs(10), peer)
            .await
            .expect("the tls peer did not end")
            .unwrap();
        (result, served)
    }

    #[tokio::test]
    async fn pinned_certificate_in_der_pem_or_fingerprint_succeeds() {
        let cert = make_cert();
        let fingerprint = routeros::CertFingerprint::of_der(&cert.der);
        for mode in [
            TlsMode::pinned_der(&cert.der),
            TlsMode::pinned_pem(cert.pem.as_bytes()).unwrap(),
            TlsMode::pinned_sha256(&fingerprint.to_string()).unwrap(),
        ] {
            let (result, served) = try_mode(&cert, mode.clone()).await;
            assert_eq!(result.unwrap(), "tls-router", "{mode:?}");
            assert!(served);
        }
    }

    #[tokio::test]
    async fn a_different_pinned_certificate_fails_the_handshake() {
        let cert = make_cert();
        let other = make_cert();
        let (result, served) = try_mode(&cert, TlsMode::pinned_der(&other.der)).await;
        let err = result.unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err:?}");
        assert!(err.to_string().contains("pinned"), "{err}");
        assert!(
            !served,
            "no login may reach a router whose certificate is not the pinned one"
        );
    }

    #[tokio::test]
    async fn connect_over_an_open_stream_does_tls_with_the_pin_and_logs_in() {
        // What the management tunnel hands the client: a stream already open.
        let cert = make_cert();
        let fingerprint = routeros::CertFingerprint::of_der(&cert.der);
        let (addr, peer) = tls_router(&cert).await;
        let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let peer_ip = stream.peer_addr().unwrap().ip();
        let pinned = config("router-in-a-tunnel:8729")
            .with_tls(TlsMode::pinned_sha256(&fingerprint.to_string()).unwrap());
        let client = Client::connect_over(stream, peer_ip, &pinned)
            .await
            .unwrap();
        assert_eq!(client.peer_certificate(), Some(fingerprint));
        assert_eq!(api::system::identity(&client).await.unwrap(), "tls-router");
        drop(client);
        let served = tokio::time::timeout(Duration::from_secs(10), peer)
            .await
            .expect("the tls peer did not end");
        assert!(served.unwrap());

        // Another certificate pinned: refused before any login, named by the address.
        let (addr, peer) = tls_router(&cert).await;
        let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let other = make_cert();
        let wrong = config("router-in-a-tunnel:8729").with_tls(TlsMode::pinned_der(&other.der));
        let err = Client::connect_over(stream, peer_ip, &wrong)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Tls { .. }), "{err:?}");
        assert!(err.to_string().contains("router-in-a-tunnel"), "{err}");
        let served = tokio::time::timeout(Duration::from_secs(10), peer)
            .await
            .expect("the tls peer did not end");
        assert!(!served.unwrap());
    }

    #[tokio::test]
    async fn insecure_mode_accepts_any_certificate() {
        let cert = make_cert();
        let (result, served) = try_mode(&cert, TlsMode::InsecureAcceptAnyCertificate).await;
        assert_eq!(result.unwrap(), "tls-router");
        assert!(served);
    }

    #[tokio::test]
    async fn plain_tcp_client_against_tls_is_refused_quickly() {
        // A TLS client against a plain-TCP router: the handshake fails, not a hang.
        let (addr, _peer) = fake_router(|mut conn| async move {
            let _ = conn.read_sentence().await;
        })
        .await;
        let started = Instant::now();
        let err = Client::connect(
            &config(&addr)
                .with_tls(TlsMode::InsecureAcceptAnyCertificate)
                .with_connect_timeout(Duration::from_secs(2)),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(err, Error::Tls { .. } | Error::ConnectTimeout { .. }),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
    }
}

#[tokio::test]
async fn a_silent_router_makes_connect_time_out() {
    let (addr, _peer) = fake_router(|mut conn| async move {
        // Read the login and never answer.
        let _ = conn.read_sentence().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    })
    .await;
    let started = Instant::now();
    let err = Client::connect(&config(&addr).with_connect_timeout(Duration::from_millis(300)))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ConnectTimeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let err = Client::connect(&config(&addr)).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
}

#[tokio::test]
async fn unknown_reply_types_and_untagged_replies_are_skipped() {
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        let w = recv(&mut conn).await;
        let tag = format!(".tag={}", tag_of(&w));
        send(&mut conn, &["!what", "=a=1", &tag]).await;
        send(&mut conn, &["!re", "=untagged=1"]).await;
        send(&mut conn, &["!re", "=ours=1", &tag]).await;
        send(&mut conn, &["!done", "=ret=*9", &tag]).await;
        let _ = conn.read_sentence().await;
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();
    let response = client.call(Command::new("/x")).await.unwrap();
    assert_eq!(response.items.len(), 1);
    assert_eq!(response.items[0].get_str("ours"), Some("1"));
    assert_eq!(response.ret(), Some("*9"));
    drop(client);
    finish(peer).await;
}

#[tokio::test]
async fn close_fails_waiters_and_later_commands() {
    let (addr, peer) = fake_router(|mut conn| async move {
        accept_login(&mut conn).await;
        let _ = conn.read_sentence().await;
        // The client closes: the peer sees the end of the stream.
        assert!(matches!(conn.read_sentence().await, Ok(None) | Err(_)));
    })
    .await;
    let client = Client::connect(&config(&addr)).await.unwrap();
    let mut waiting = client.start(Command::new("/long")).unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    client.close();
    assert!(matches!(
        waiting.next().await,
        Some(Err(Error::ConnectionLost { .. }))
    ));
    assert!(matches!(
        client.start(Command::new("/x")),
        Err(Error::ConnectionLost { .. })
    ));
    tokio::time::timeout(Duration::from_secs(3), peer)
        .await
        .expect("the socket closes when the client does")
        .unwrap();
}
