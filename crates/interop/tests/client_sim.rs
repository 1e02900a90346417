//! Postern's RouterOS client against the virtual MikroTik, over real sockets on
//! 127.x addresses and ephemeral ports. Each test asserts what an operator would see
//! on the router (its users, rules, sessions) or from the client (replies, errors).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::IpAddr;
use std::time::Duration;

use routeros::api::{Filter, active, group, nat, scheduler, system, user};
use routeros::{Client, ClientConfig, Command, Error, TlsMode, TrapCategory};
use sim::{RouterHandle, RouterOptions};

async fn router(address: &str, version: &str) -> RouterHandle {
    let mut options = RouterOptions::new("sim-interop", address.parse::<IpAddr>().unwrap());
    options.admin_password = Some("s3cret-admin".into());
    options.version = version.into();
    RouterHandle::start(options).await.unwrap()
}

fn config(r: &RouterHandle, name: &str, password: &str) -> ClientConfig {
    ClientConfig::new(r.api_addr.to_string(), name, password)
        .with_command_timeout(Duration::from_secs(5))
}

async fn admin(r: &RouterHandle) -> Client {
    Client::connect(&config(r, "admin", "s3cret-admin"))
        .await
        .unwrap()
}

fn new_user(name: &str, group: &str, password: &str) -> user::NewUser {
    user::NewUser {
        name: name.into(),
        group: group.into(),
        password: password.into(),
        address: vec![],
        comment: Some(format!("postern:test:{name}")),
        disabled: false,
    }
}

/// The flow CI also runs with librouteros: add a user, find it with a `?name=` query,
/// read the `!trap` for a duplicate, remove it, see it gone.
#[tokio::test]
async fn the_librouteros_flow_with_our_client() {
    let r = router("127.0.3.1", "7.18.2").await;
    let c = admin(&r).await;

    let id = user::add(&c, &new_user("flow", "read", "pw-flow-1"))
        .await
        .unwrap();
    let found = user::print(&c, &Filter::name("flow")).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, id);
    assert_eq!(found[0].group.as_deref(), Some("read"));

    match user::add(&c, &new_user("flow", "read", "pw-flow-2")).await {
        Err(Error::Trap { message, .. }) => {
            assert_eq!(message, "failure: user with the same name already exists")
        }
        other => panic!("duplicate add gave {other:?}"),
    }

    user::remove(&c, &id).await.unwrap();
    assert!(
        user::print(&c, &Filter::name("flow"))
            .await
            .unwrap()
            .is_empty()
    );
    // The router agrees, not just the client.
    assert!(r.router().state().users.by_name("flow").is_none());
    // Removing it again is RouterOS's "no such item".
    match user::remove(&c, &id).await {
        Err(Error::Trap { message, .. }) => assert_eq!(message, "no such item"),
        other => panic!("second remove gave {other:?}"),
    }
    r.shutdown().await;
}

#[tokio::test]
async fn wrong_password_is_refused_with_the_routers_message() {
    let r = router("127.0.3.2", "7.18.2").await;
    match Client::connect(&config(&r, "admin", "not-it")).await {
        Err(Error::Login { message }) => {
            assert_eq!(message, "invalid user name or password (6)");
        }
        other => panic!("login gave {other:?}"),
    }
    r.shutdown().await;
}

/// A router older than 6.43 answers the plaintext login with a challenge; the client
/// falls back to the MD5 method on its own.
#[tokio::test]
async fn old_router_gets_the_md5_login() {
    let r = router("127.0.3.3", "6.40.9").await;
    let c = admin(&r).await;
    assert_eq!(system::identity(&c).await.unwrap(), "sim-interop");
    r.shutdown().await;
}

#[tokio::test]
async fn tls_pinned_to_the_routers_certificate() {
    let r = router("127.0.3.4", "7.18.2").await;
    let pinned = ClientConfig::new(r.api_tls_addr.to_string(), "admin", "s3cret-admin")
        .with_tls(TlsMode::pinned_der(&r.tls.cert_der));
    let c = Client::connect(&pinned).await.unwrap();
    assert_eq!(system::identity(&c).await.unwrap(), "sim-interop");

    // Pinned to another router's certificate: refused before any login is sent.
    let other = router("127.0.3.5", "7.18.2").await;
    let wrong = ClientConfig::new(r.api_tls_addr.to_string(), "admin", "s3cret-admin")
        .with_tls(TlsMode::pinned_der(&other.tls.cert_der));
    assert!(matches!(
        Client::connect(&wrong).await,
        Err(Error::Tls { .. })
    ));
    r.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn typed_helpers_for_everything_postern_touches() {
    let r = router("127.0.3.6", "7.18.2").await;
    let c = admin(&r).await;

    // A read-only group: no reboot, sniff, sensitive, write, policy or password.
    let policy: Vec<String> = ["local", "ssh", "read", "winbox", "api", "test"]
        .map(String::from)
        .to_vec();
    group::add(
        &c,
        &group::NewGroup {
            name: "postern-read".into(),
            policy: policy.clone(),
            comment: Some("postern:group:read".into()),
        },
    )
    .await
    .unwrap();
    let groups = group::print(&c, &Filter::name("postern-read"))
        .await
        .unwrap();
    assert_eq!(groups.len(), 1);
    for p in &policy {
        assert!(groups[0].has_policy(p), "missing {p}");
    }
    for p in [
        "reboot",
        "sniff",
        "sensitive",
        "write",
        "policy",
        "password",
    ] {
        assert!(!groups[0].has_policy(p), "has {p}");
    }

    // NAT: a dst-nat rule as a transient forward installs it.
    let rule = nat::NewNatRule {
        chain: "dstnat".into(),
        action: "dst-nat".into(),
        protocol: Some("tcp".into()),
        dst_address: Some("127.0.3.6".into()),
        dst_port: Some("40001".into()),
        to_addresses: Some("192.168.88.43".into()),
        to_ports: Some("22".into()),
        comment: Some("postern:forward:abc".into()),
        ..nat::NewNatRule::default()
    };
    let rule_id = nat::add(&c, &rule).await.unwrap();
    let rules = nat::print(&c, &Filter::comment("postern:forward:abc"))
        .await
        .unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].id, rule_id);
    assert_eq!(rules[0].chain, "dstnat");
    nat::remove(&c, &rule_id).await.unwrap();
    assert!(r.router().state().nat.items.is_empty());

    // Scheduler: an entry that would remove a user at expiry.
    let entry = scheduler::NewSchedule {
        name: "postern-expire-abc".into(),
        start_date: Some("2030-01-01".into()),
        start_time: Some("00:00:00".into()),
        on_event: "/user remove [find comment=\"postern:access:abc\"]".into(),
        comment: Some("postern:access:abc".into()),
        ..scheduler::NewSchedule::default()
    };
    let entry_id = scheduler::add(&c, &entry).await.unwrap();
    let entries = scheduler::print(&c, &Filter::name("postern-expire-abc"))
        .await
        .unwrap();
    assert_eq!(entries.len(), 1);
    scheduler::remove(&c, &entry_id).await.unwrap();

    // System facts.
    let res = system::resource(&c).await.unwrap();
    assert_eq!(res.version.as_deref(), Some("7.18.2 (stable)"));
    assert_eq!(res.board_name.as_deref(), Some("CHR"));
    let mode = system::device_mode(&c).await.unwrap();
    assert!(mode.mode.is_some());
    r.shutdown().await;
}

/// What Postern's revoke does: find the user's live sessions and end them. RouterOS
/// refuses to end an API session (`action failed (6)`), and so does the sim: the
/// client gets the router's words and the session goes on.
#[tokio::test]
async fn removing_an_api_session_is_refused_as_routeros_does() {
    let r = router("127.0.3.7", "7.18.2").await;
    let c = admin(&r).await;
    user::add(&c, &new_user("temp", "full", "pw-temp-1"))
        .await
        .unwrap();
    let temp = Client::connect(&config(&r, "temp", "pw-temp-1"))
        .await
        .unwrap();
    assert_eq!(system::identity(&temp).await.unwrap(), "sim-interop");

    let sessions: Vec<_> = active::print(&c, &Filter::name("temp")).await.unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].via.as_deref(), Some("api"));
    let err = active::remove(&c, &sessions[0].id).await.unwrap_err();
    assert!(
        matches!(&err, routeros::Error::Trap { message, .. } if message == "action failed (6)"),
        "{err:?}"
    );
    assert_eq!(system::identity(&temp).await.unwrap(), "sim-interop");
    r.shutdown().await;
}

#[tokio::test]
async fn read_only_user_cannot_write() {
    let r = router("127.0.3.8", "7.18.2").await;
    let c = admin(&r).await;
    user::add(&c, &new_user("viewer", "read", "pw-view-1"))
        .await
        .unwrap();
    let v = Client::connect(&config(&r, "viewer", "pw-view-1"))
        .await
        .unwrap();
    // Reading works; adding is refused with RouterOS's message.
    assert!(!user::print(&v, &Filter::all()).await.unwrap().is_empty());
    match user::add(&v, &new_user("sneaky", "full", "pw")).await {
        Err(Error::Trap { message, .. }) => assert_eq!(message, "not enough permissions (9)"),
        other => panic!("read-only add gave {other:?}"),
    }
    assert!(r.router().state().users.by_name("sneaky").is_none());
    r.shutdown().await;
}

#[tokio::test]
async fn address_list_is_enforced_at_login() {
    let r = router("127.0.3.9", "7.18.2").await;
    let c = admin(&r).await;
    let mut only_elsewhere = new_user("fenced", "full", "pw-fenced");
    only_elsewhere.address = vec!["100.64.0.1/32".into()];
    user::add(&c, &only_elsewhere).await.unwrap();
    assert!(matches!(
        Client::connect(&config(&r, "fenced", "pw-fenced")).await,
        Err(Error::Login { .. })
    ));
    r.shutdown().await;
}

#[tokio::test]
async fn queries_and_proplist_from_our_client() {
    let r = router("127.0.3.10", "7.18.2").await;
    let c = admin(&r).await;
    for (name, group) in [("q-a", "read"), ("q-b", "write"), ("q-c", "full")] {
        user::add(&c, &new_user(name, group, "pw")).await.unwrap();
    }
    let names = |resp: routeros::Response| -> Vec<String> {
        let mut v: Vec<String> = resp
            .items
            .iter()
            .filter_map(|i| i.get_string("name"))
            .collect();
        v.sort();
        v
    };
    // group=read OR group=write, via the stack operator.
    let either = c
        .call(
            Command::new("/user/print")
                .query("?group=read")
                .query("?group=write")
                .query("?#|")
                .proplist(&["name"]),
        )
        .await
        .unwrap();
    assert_eq!(names(either.clone()), vec!["q-a", "q-b"]);
    // The proplist left only the name.
    assert!(either.items.iter().all(|i| i.get("group").is_none()));
    // A user without a comment, then the users lacking one.
    let mut bare = new_user("q-bare", "read", "pw");
    bare.comment = None;
    user::add(&c, &bare).await.unwrap();
    let lacking = c
        .call(
            Command::new("/user/print")
                .query("?-comment")
                .proplist(&["name"]),
        )
        .await
        .unwrap();
    assert_eq!(names(lacking), vec!["q-bare"]);
    r.shutdown().await;
}

/// RouterOS 7.18 answers a print that matches nothing with `!empty` then `!done`.
#[tokio::test]
async fn empty_print_then_more_commands() {
    let r = router("127.0.3.11", "7.18.2").await;
    let c = admin(&r).await;
    for _ in 0..3 {
        assert!(
            user::print(&c, &Filter::name("nobody"))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(system::identity(&c).await.unwrap(), "sim-interop");
    }
    r.shutdown().await;
}

#[tokio::test]
async fn cancel_a_long_running_command() {
    let r = router("127.0.3.12", "7.18.2").await;
    let c = admin(&r).await;
    let mut listen = c.stream(Command::new("/user/active/listen")).unwrap();
    let tag = listen.tag();
    let canceller = c.clone();
    let waited = tokio::spawn(async move { canceller.cancel(tag).await });
    let mut outcome = None;
    while let Some(item) = listen.next().await {
        if let Err(e) = item {
            outcome = Some(e);
            break;
        }
    }
    assert!(matches!(outcome, Some(Error::Cancelled)), "{outcome:?}");
    waited.await.unwrap().unwrap();
    // The connection is still good.
    assert_eq!(system::identity(&c).await.unwrap(), "sim-interop");
    r.shutdown().await;
}

#[tokio::test]
async fn router_going_offline_fails_every_waiting_command() {
    let r = router("127.0.3.13", "7.18.2").await;
    let c = admin(&r).await;
    r.faults().set_latency(Duration::from_millis(300));
    let pending: Vec<_> = (0..5)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { system::identity(&c).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(50)).await;
    r.faults().set_offline(true);
    for p in pending {
        let err = tokio::time::timeout(Duration::from_secs(2), p)
            .await
            .expect("a waiter hung")
            .unwrap()
            .unwrap_err();
        assert!(err.is_connection_error(), "{err:?}");
    }
    assert!(
        Client::connect(&config(&r, "admin", "s3cret-admin"))
            .await
            .is_err()
    );
    r.faults().set_offline(false);
    r.faults().set_latency(Duration::ZERO);
    let again = admin(&r).await;
    assert_eq!(system::identity(&again).await.unwrap(), "sim-interop");
    r.shutdown().await;
}

#[tokio::test]
async fn a_trap_carries_its_category() {
    let r = router("127.0.3.14", "7.18.2").await;
    let c = admin(&r).await;
    match c.call(Command::new("/no/such/menu/print")).await {
        Err(Error::Trap { category, .. }) => {
            assert_eq!(category, Some(TrapCategory::MissingItemOrCommand))
        }
        other => panic!("unknown path gave {other:?}"),
    }
    r.shutdown().await;
}
