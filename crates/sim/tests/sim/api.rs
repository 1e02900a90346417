//! The API service: logins, tags, /cancel, queries, proplist, traps, permissions.

use md5::{Digest, Md5};
use routeros::message::ReplyKind;

use crate::common::*;

#[tokio::test]
async fn plaintext_login_and_a_wrong_password_that_keeps_the_connection() {
    let r = router().await;
    let mut c = Raw::connect(r.api_addr).await;
    let bad = c.login("admin", "wrong").await;
    assert_eq!(bad[0].kind, ReplyKind::Trap);
    assert_eq!(
        bad[0].message().unwrap(),
        "invalid user name or password (6)"
    );
    assert_eq!(bad[1].kind, ReplyKind::Done);
    let bad = c.login("nobody", "pw").await;
    assert_eq!(
        bad[0].message().unwrap(),
        "invalid user name or password (6)"
    );
    // Same connection, right password.
    c.login_ok("admin", "pw").await;
    let rows = c.rows(&["/system/identity/print"]).await;
    assert_eq!(rows, vec![vec![("name".to_string(), "sim-1".to_string())]]);
    r.shutdown().await;
}

#[tokio::test]
async fn md5_challenge_login() {
    let r = router().await;
    let mut c = Raw::connect(r.api_addr).await;
    let first = c.call(&["/login"]).await;
    assert_eq!(first.len(), 1);
    let challenge = String::from_utf8(first[0].ret().unwrap().to_vec()).unwrap();
    assert_eq!(challenge.len(), 32);
    assert!(challenge.chars().all(|c| c.is_ascii_hexdigit()));
    // Computed here, independently of the sim: "00" + md5(0 + password + challenge).
    let mut h = Md5::new();
    h.update([0u8]);
    h.update(b"pw");
    h.update(hex::decode(&challenge).unwrap());
    let response = format!("=response=00{}", hex::encode(h.finalize()));
    let done = c.call(&["/login", "=name=admin", &response]).await;
    assert_eq!(done[0].kind, ReplyKind::Done, "{done:?}");
    assert_eq!(c.rows(&["/system/identity/print"]).await.len(), 1);

    // A wrong response is refused; a response without a challenge is too.
    let mut c = Raw::connect(r.api_addr).await;
    c.call(&["/login"]).await;
    let bad = c
        .call(&[
            "/login",
            "=name=admin",
            "=response=00aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        ])
        .await;
    assert_eq!(
        bad[0].message().unwrap(),
        "invalid user name or password (6)"
    );
    let bad = c.call(&["/login", "=name=admin", &response]).await;
    assert_eq!(bad[0].kind, ReplyKind::Trap, "a challenge is used once");
    r.shutdown().await;
}

#[tokio::test]
async fn too_many_failed_logins_close_the_connection() {
    let r = router().await;
    let mut c = Raw::connect(r.api_addr).await;
    for _ in 0..5 {
        let bad = c.login("admin", "nope").await;
        assert_eq!(bad[0].kind, ReplyKind::Trap);
    }
    assert!(c.closed().await);
    r.shutdown().await;
}

#[tokio::test]
async fn commands_before_login() {
    // RouterOS 7: a trap, and the connection stays.
    let r = router().await;
    let mut c = Raw::connect(r.api_addr).await;
    let (msg, _) = c.trap(&["/user/print", ".tag=1"]).await;
    assert_eq!(msg, "not logged in");
    c.login_ok("admin", "pw").await;
    r.shutdown().await;

    // RouterOS 6: !fatal and the connection closes.
    let r = router_with(|o| o.version = "6.49.10".into()).await;
    let mut c = Raw::connect(r.api_addr).await;
    let replies = c.call(&["/user/print"]).await;
    assert_eq!(replies[0].kind, ReplyKind::Fatal);
    assert_eq!(replies[0].message().unwrap(), "not logged in");
    assert!(c.closed().await);
    r.shutdown().await;
}

#[tokio::test]
async fn tags_are_echoed_on_every_reply_with_many_commands_in_flight() {
    let r = router().await;
    let mut c = Raw::admin(r.api_addr).await;
    // Three commands sent before reading anything.
    c.send(&["/user/print", ".tag=a"]).await;
    c.send(&["/user/add", "=name=dup", "=group=read", ".tag=b"])
        .await;
    c.send(&["/user/add", "=name=dup", "=group=read", ".tag=c"])
        .await;
    c.send(&["/system/resource/print", ".tag=d"]).await;
    let mut seen = Vec::new();
    let mut done = 0;
    while done < 4 {
        let reply = c.recv().await.unwrap();
        let tag =
            String::from_utf8(reply.tag.clone().expect("every reply is tagged").to_vec()).unwrap();
        if reply.kind == ReplyKind::Done {
            done += 1;
        }
        seen.push((tag, reply.kind, reply.message()));
    }
    assert!(seen.contains(&("a".into(), ReplyKind::Re, None)));
    assert!(seen.contains(&("b".into(), ReplyKind::Done, None)));
    assert!(seen.contains(&(
        "c".into(),
        ReplyKind::Trap,
        Some("failure: user with the same name already exists".into())
    )));
    assert!(seen.contains(&("d".into(), ReplyKind::Re, None)));
    // Each command's `!done` is its last reply.
    for tag in ["a", "b", "c", "d"] {
        let last = seen.iter().rposition(|(t, _, _)| t == tag).unwrap();
        assert_eq!(seen[last].1, ReplyKind::Done, "{tag}: {seen:?}");
    }
    r.shutdown().await;
}

#[tokio::test]
async fn cancel_interrupts_a_running_command() {
    let r = router().await;
    let mut c = Raw::admin(r.api_addr).await;
    c.send(&["/user/active/listen", ".tag=L"]).await;
    // A new session shows up in the listen.
    let mut other = Raw::connect(r.api_addr).await;
    other.login_ok("admin", "pw").await;
    let re = c.recv().await.unwrap();
    assert_eq!(re.kind, ReplyKind::Re);
    assert_eq!(re.tag.as_deref(), Some(&b"L"[..]));
    assert_eq!(re.attributes.get_str("via"), Some("api"));
    // ... and one that ends, as `.dead`.
    drop(other);
    let dead = c.recv().await.unwrap();
    assert_eq!(dead.attributes.get_str(".dead"), Some("yes"), "{dead:?}");

    c.send(&["/cancel", "=tag=L", ".tag=C"]).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let r = c.recv().await.unwrap();
        got.push((
            String::from_utf8(r.tag.clone().unwrap().to_vec()).unwrap(),
            r.kind,
            r.message(),
            r.category().map(|c| c.code()),
        ));
    }
    assert!(
        got.contains(&(
            "L".into(),
            ReplyKind::Trap,
            Some("interrupted".into()),
            Some(2)
        )),
        "{got:?}"
    );
    assert!(
        got.contains(&("L".into(), ReplyKind::Done, None, None)),
        "{got:?}"
    );
    assert!(
        got.contains(&("C".into(), ReplyKind::Done, None, None)),
        "{got:?}"
    );
    let trap_at = got
        .iter()
        .position(|g| g.0 == "L" && g.1 == ReplyKind::Trap)
        .unwrap();
    let done_at = got
        .iter()
        .position(|g| g.0 == "L" && g.1 == ReplyKind::Done)
        .unwrap();
    assert!(trap_at < done_at);
    // The connection still works.
    assert_eq!(c.rows(&["/system/identity/print"]).await.len(), 1);
    r.shutdown().await;
}

async fn query_fixture() -> (postern_sim::RouterHandle, Raw) {
    let r = router().await;
    let mut c = Raw::admin(r.api_addr).await;
    add_user(&mut c, "alice", "read", "x", &["=comment=postern:access:1"]).await;
    add_user(&mut c, "bob", "write", "x", &[]).await;
    add_user(
        &mut c,
        "carol",
        "read",
        "x",
        &["=comment=other", "=disabled=yes"],
    )
    .await;
    (r, c)
}

async fn query(c: &mut Raw, q: &[&str]) -> Vec<String> {
    let mut words = vec!["/user/print"];
    words.extend_from_slice(q);
    let mut n = names(&c.rows(&words).await);
    n.sort();
    n
}

#[tokio::test]
async fn every_query_operator() {
    let (r, mut c) = query_fixture().await;
    assert_eq!(query(&mut c, &["?name=bob"]).await, ["bob"]);
    assert_eq!(query(&mut c, &["?group=read"]).await, ["alice", "carol"]);
    assert_eq!(
        query(&mut c, &["?comment"]).await,
        ["admin", "alice", "carol"]
    );
    assert_eq!(query(&mut c, &["?-comment"]).await, ["bob"]);
    assert_eq!(query(&mut c, &["?disabled=true"]).await, ["carol"]);
    assert_eq!(
        query(&mut c, &["?disabled=no"]).await,
        ["admin", "alice", "bob"]
    );
    // admin *1, alice *2, bob *3, carol *4.
    assert_eq!(query(&mut c, &["?<.id=*3"]).await, ["admin", "alice"]);
    assert_eq!(query(&mut c, &["?>.id=*2"]).await, ["bob", "carol"]);
    assert_eq!(query(&mut c, &["?>name=b"]).await, ["bob", "carol"]);
    // Two conditions and-ed.
    assert_eq!(
        query(&mut c, &["?group=read", "?-disabled"]).await,
        Vec::<String>::new()
    );
    assert_eq!(
        query(&mut c, &["?group=read", "?disabled=false"]).await,
        ["alice"]
    );
    // Stack operations.
    assert_eq!(
        query(&mut c, &["?name=alice", "?name=bob", "?#|"]).await,
        ["alice", "bob"]
    );
    assert_eq!(
        query(&mut c, &["?group=read", "?comment=other", "?#&"]).await,
        ["carol"]
    );
    assert_eq!(
        query(&mut c, &["?group=read", "?#!"]).await,
        ["admin", "bob"]
    );
    assert_eq!(
        query(
            &mut c,
            &["?name=alice", "?name=bob", "?name=carol", "?#||!"]
        )
        .await,
        ["admin"]
    );
    // `.` duplicates the top; a trailing index replaces the stack with that value.
    assert_eq!(query(&mut c, &["?name=bob", "?#.&"]).await, ["bob"]);
    assert_eq!(
        query(&mut c, &["?name=bob", "?group=read", "?#1"]).await,
        ["bob"]
    );
    assert_eq!(
        query(&mut c, &["?name=bob", "?group=read", "?#0"]).await,
        ["alice", "carol"]
    );
    // A malformed stack program is a trap, not a panic.
    let (msg, _) = c.trap(&["/user/print", "?#|"]).await;
    assert!(msg.contains("invalid query"), "{msg}");
    r.shutdown().await;
}

#[tokio::test]
async fn proplist_count_only_and_empty() {
    let (r, mut c) = query_fixture().await;
    let rows = c
        .rows(&["/user/print", "?name=alice", "=.proplist=.id,name,comment"])
        .await;
    assert_eq!(
        rows,
        vec![vec![
            (".id".to_string(), "*2".to_string()),
            ("name".to_string(), "alice".to_string()),
            ("comment".to_string(), "postern:access:1".to_string()),
        ]]
    );
    // Passwords are never printed.
    let all = c.rows(&["/user/print"]).await;
    assert!(all.iter().all(|r| get(r, "password").is_none()));
    assert_eq!(get(&all[0], "group"), Some("full"));
    let done = c
        .call(&["/user/print", "=count-only=", "?group=read"])
        .await;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].ret(), Some(&b"2"[..]));
    // RouterOS 7.18+: an empty print sends !empty, then !done.
    let empty = c.call(&["/ip/firewall/nat/print", ".tag=e"]).await;
    let kinds: Vec<_> = empty.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [ReplyKind::Empty, ReplyKind::Done]);
    assert!(empty.iter().all(|r| r.tag.as_deref() == Some(&b"e"[..])));
    r.shutdown().await;

    // With the option off (or an older version), just !done.
    let r = router_with(|o| o.empty_reply = Some(false)).await;
    let mut c = Raw::admin(r.api_addr).await;
    let kinds: Vec<_> = c
        .call(&["/ip/firewall/nat/print"])
        .await
        .iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, [ReplyKind::Done]);
    r.shutdown().await;
    let r = router_with(|o| o.version = "7.16.2".into()).await;
    let mut c = Raw::admin(r.api_addr).await;
    let kinds: Vec<_> = c
        .call(&["/system/scheduler/print"])
        .await
        .iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, [ReplyKind::Done]);
    r.shutdown().await;
}

#[tokio::test]
async fn traps_and_categories() {
    let r = router().await;
    let mut c = Raw::admin(r.api_addr).await;
    add_user(&mut c, "u", "read", "x", &[]).await;
    let check = [
        (
            vec!["/user/add", "=name=u", "=group=read", "=password=y"],
            "failure: user with the same name already exists",
            None,
        ),
        (vec!["/user/remove", "=.id=*99"], "no such item", None),
        (
            vec!["/user/set", "=.id=*99", "=comment=x"],
            "no such item",
            None,
        ),
        (
            vec!["/user/add", "=name=v", "=group=nosuch"],
            "input does not match any value of group",
            None,
        ),
        (
            vec!["/user/add", "=name=v", "=group=read", "=colour=blue"],
            "unknown parameter",
            None,
        ),
        (
            vec!["/user/add", "=name=v", "=group=read", "=address=not-an-ip"],
            "invalid value for argument address",
            None,
        ),
        (
            vec!["/ip/route/print"],
            "no such command or directory (route)",
            Some(0),
        ),
        (
            vec!["/user/frobnicate"],
            "no such command or directory (frobnicate)",
            Some(0),
        ),
        (
            vec!["/nothing/print"],
            "no such command or directory (nothing)",
            Some(0),
        ),
        (vec!["user/print"], "no such command prefix", Some(0)),
        (
            vec!["/user/group/add", "=name=full", "=policy=read"],
            "failure: group with the same name already exists",
            None,
        ),
        (
            vec!["/user/group/remove", "=.id=*3"],
            "failure: can not remove default group",
            None,
        ),
        (
            vec!["/system/device-mode/update", "=mode=advanced"],
            "failure: update requires physical confirmation at the device (press the button or cold-boot)",
            None,
        ),
        (
            vec!["/ip/firewall/nat/add", "=chain=dstnat", "=action=explode"],
            "input does not match any value of action",
            None,
        ),
    ];
    for (words, message, category) in check {
        let got = c.trap(&words).await;
        assert_eq!(got, (message.to_string(), category), "{words:?}");
    }
    // Nothing of the failed commands was applied.
    assert_eq!(names(&c.rows(&["/user/print"]).await), ["admin", "u"]);
    r.shutdown().await;
}

#[tokio::test]
async fn ids_increase_and_are_never_reused() {
    let r = router().await;
    let mut c = Raw::admin(r.api_addr).await;
    let a = add_user(&mut c, "a", "read", "x", &[]).await;
    let b = add_user(&mut c, "b", "read", "x", &[]).await;
    assert_eq!((a.as_str(), b.as_str()), ("*2", "*3"));
    c.ok(&["/user/remove", "=.id=*3"]).await;
    assert_eq!(add_user(&mut c, "c", "read", "x", &[]).await, "*4");
    // Remove by name through numbers=, several at once.
    c.ok(&["/user/remove", "=numbers=a,c"]).await;
    assert_eq!(names(&c.rows(&["/user/print"]).await), ["admin"]);
    r.shutdown().await;
}

#[tokio::test]
async fn menus_postern_touches() {
    let r = router().await;
    let mut c = Raw::admin(r.api_addr).await;
    // Identity.
    c.ok(&["/system/identity/set", "=name=edge-7"]).await;
    assert_eq!(
        get(&c.rows(&["/system/identity/print"]).await[0], "name"),
        Some("edge-7")
    );
    // Resource.
    let res = &c.rows(&["/system/resource/print"]).await[0];
    assert_eq!(get(res, "version"), Some("7.18.2 (stable)"));
    assert_eq!(get(res, "board-name"), Some("CHR"));
    assert!(get(res, "uptime").is_some());
    // Device mode.
    let dm = &c.rows(&["/system/device-mode/print"]).await[0];
    assert_eq!(get(dm, "mode"), Some("advanced"));
    assert_eq!(get(dm, "scheduler"), Some("yes"));
    // Groups, with a real read-only group as Postern makes it.
    let id = c
        .ok(&[
            "/user/group/add",
            "=name=postern-read",
            "=policy=local,ssh,read,winbox,api,test,web,!write,!policy",
            "=comment=postern:group:read",
        ])
        .await
        .unwrap();
    assert_eq!(id, "*4");
    let g = &c.rows(&["/user/group/print", "?name=postern-read"]).await[0];
    let policy = get(g, "policy").unwrap();
    assert!(
        policy.starts_with("local,ssh,read,test,winbox,web,api,!telnet"),
        "{policy}"
    );
    let built_in_read = &c.rows(&["/user/group/print", "?name=read"]).await[0];
    let p = get(built_in_read, "policy").unwrap();
    for has in ["reboot", "read", "sniff", "sensitive"] {
        assert!(p.split(',').any(|x| x == has), "{p}");
    }
    for lacks in ["write", "policy", "password"] {
        assert!(p.split(',').any(|x| x == format!("!{lacks}")), "{p}");
    }
    c.ok(&["/user/group/set", "=.id=*4", "=comment=changed"])
        .await;
    add_user(&mut c, "t", "postern-read", "x", &[]).await;
    assert_eq!(
        c.trap(&["/user/group/remove", "=numbers=postern-read"])
            .await
            .0,
        "failure: group is used by some user"
    );
    c.ok(&["/user/remove", "=numbers=t"]).await;
    c.ok(&["/user/group/remove", "=numbers=postern-read"]).await;
    // User set, disable, enable.
    add_user(&mut c, "d", "read", "x", &[]).await;
    c.ok(&["/user/disable", "=numbers=d"]).await;
    assert_eq!(query(&mut c, &["?disabled=true"]).await, ["d"]);
    c.ok(&["/user/enable", "=numbers=d"]).await;
    c.ok(&[
        "/user/set",
        "=numbers=d",
        "=group=write",
        "=address=10.0.0.0/8,192.168.88.1",
    ])
    .await;
    let d = &c.rows(&["/user/print", "?name=d"]).await[0];
    assert_eq!(get(d, "group"), Some("write"));
    assert_eq!(get(d, "address"), Some("10.0.0.0/8,192.168.88.1"));
    // NAT rules.
    let nat = c
        .ok(&[
            "/ip/firewall/nat/add",
            "=chain=srcnat",
            "=action=masquerade",
            "=comment=postern:masq:1",
        ])
        .await
        .unwrap();
    assert_eq!(nat, "*1");
    c.ok(&["/ip/firewall/nat/disable", "=.id=*1"]).await;
    let rule = &c.rows(&["/ip/firewall/nat/print"]).await[0];
    assert_eq!(get(rule, "disabled"), Some("true"));
    assert_eq!(get(rule, "action"), Some("masquerade"));
    // place-before puts a rule ahead of another (rule order decides which dst-nat wins).
    let first = c
        .ok(&[
            "/ip/firewall/nat/add",
            "=chain=srcnat",
            "=action=masquerade",
            "=place-before=*1",
            "=comment=first",
        ])
        .await
        .unwrap();
    assert_eq!(first, "*2");
    let order: Vec<_> = c
        .rows(&["/ip/firewall/nat/print"])
        .await
        .iter()
        .map(|r| get(r, ".id").unwrap().to_string())
        .collect();
    assert_eq!(order, ["*2", "*1"]);
    assert_eq!(
        c.trap(&["/ip/firewall/nat/add", "=chain=srcnat", "=place-before=*77"])
            .await
            .0,
        "no such item"
    );
    c.ok(&["/ip/firewall/nat/remove", "=.id=*1,*2"]).await;
    // Scheduler, 7.x date format.
    c.ok(&[
        "/system/scheduler/add",
        "=name=s",
        "=start-date=nov/22/2030",
        "=start-time=10:00:00",
        "=on-event=/user remove [find name=\"d\"]",
        "=comment=postern:expiry:1",
    ])
    .await;
    let s = &c.rows(&["/system/scheduler/print"]).await[0];
    assert_eq!(get(s, "start-date"), Some("2030-11-22"));
    assert_eq!(get(s, "next-run"), Some("2030-11-22 10:00:00"));
    assert_eq!(get(s, "owner"), Some("admin"));
    assert_eq!(get(s, "interval"), Some("0s"));
    c.ok(&["/system/scheduler/set", "=numbers=s", "=interval=1h30m"])
        .await;
    assert_eq!(
        get(&c.rows(&["/system/scheduler/print"]).await[0], "interval"),
        Some("1h30m")
    );
    c.ok(&["/system/scheduler/remove", "=numbers=s"]).await;
    r.shutdown().await;
}

#[tokio::test]
async fn home_device_mode_refuses_the_scheduler() {
    let r = router().await;
    r.router().state().device_mode = postern_sim::DeviceMode::Home;
    let mut c = Raw::admin(r.api_addr).await;
    let dm = &c.rows(&["/system/device-mode/print"]).await[0];
    assert_eq!(get(dm, "mode"), Some("home"));
    assert_eq!(get(dm, "scheduler"), Some("no"));
    let (msg, _) = c
        .trap(&[
            "/system/scheduler/add",
            "=name=x",
            "=on-event=/user remove [find name=\"a\"]",
        ])
        .await;
    assert_eq!(msg, "failure: not allowed by device-mode");
    r.shutdown().await;
}

#[tokio::test]
async fn group_policies_are_enforced_on_every_command() {
    let r = router().await;
    let mut admin = Raw::admin(r.api_addr).await;
    add_user(&mut admin, "reader", "read", "r", &[]).await;
    add_user(&mut admin, "writer", "write", "w", &[]).await;
    admin
        .ok(&["/user/group/add", "=name=blind", "=policy=api,write"])
        .await;
    admin
        .ok(&["/user/group/add", "=name=no-api", "=policy=ssh,read,write"])
        .await;
    add_user(&mut admin, "blind", "blind", "b", &[]).await;
    add_user(&mut admin, "noapi", "no-api", "n", &[]).await;

    let mut reader = Raw::connect(r.api_addr).await;
    reader.login_ok("reader", "r").await;
    assert_eq!(reader.rows(&["/user/print"]).await.len(), 5);
    let perm = ("not enough permissions (9)".to_string(), None);
    assert_eq!(
        reader.trap(&["/user/add", "=name=x", "=group=read"]).await,
        perm
    );
    assert_eq!(
        reader.trap(&["/user/remove", "=numbers=writer"]).await,
        perm
    );
    assert_eq!(
        reader
            .trap(&[
                "/ip/firewall/nat/add",
                "=chain=srcnat",
                "=action=masquerade"
            ])
            .await,
        perm
    );
    assert_eq!(
        reader.trap(&["/system/identity/set", "=name=x"]).await,
        perm
    );
    assert_eq!(
        reader.trap(&["/user/active/remove", "=numbers=*1"]).await,
        perm
    );

    // `write` can add NAT rules but not users (that needs `policy`).
    let mut writer = Raw::connect(r.api_addr).await;
    writer.login_ok("writer", "w").await;
    writer
        .ok(&[
            "/ip/firewall/nat/add",
            "=chain=srcnat",
            "=action=masquerade",
        ])
        .await;
    assert_eq!(
        writer.trap(&["/user/add", "=name=x", "=group=read"]).await,
        perm
    );

    // Without `read`, print fails.
    let mut blind = Raw::connect(r.api_addr).await;
    blind.login_ok("blind", "b").await;
    assert_eq!(blind.trap(&["/user/print"]).await, perm);

    // Without `api`, no API login at all.
    let mut noapi = Raw::connect(r.api_addr).await;
    let replies = noapi.login("noapi", "n").await;
    assert_eq!(
        replies[0].message().unwrap(),
        "invalid user name or password (6)"
    );
    r.shutdown().await;
}

#[tokio::test]
async fn address_lists_and_disabled_users_at_api_login() {
    let r = router().await;
    let mut admin = Raw::admin(r.api_addr).await;
    add_user(
        &mut admin,
        "net",
        "full",
        "p",
        &["=address=127.0.0.0/30,127.9.9.9"],
    )
    .await;
    add_user(&mut admin, "off", "full", "p", &["=disabled=yes"]).await;
    for (from, ok) in [
        ("127.0.0.2", true),
        ("127.0.0.5", false),
        ("127.9.9.9", true),
        ("127.9.9.8", false),
    ] {
        let mut c = Raw::connect_from(from, r.api_addr).await;
        let replies = c.login("net", "p").await;
        assert_eq!(
            replies[0].kind == ReplyKind::Done,
            ok,
            "from {from}: {replies:?}"
        );
    }
    let mut c = Raw::connect(r.api_addr).await;
    assert_eq!(c.login("off", "p").await[0].kind, ReplyKind::Trap);
    admin.ok(&["/user/enable", "=numbers=off"]).await;
    c.login_ok("off", "p").await;
    r.shutdown().await;
}

#[tokio::test]
async fn active_sessions_and_the_refused_removal_of_an_api_session() {
    let r = router().await;
    let mut admin = Raw::admin(r.api_addr).await;
    add_user(&mut admin, "tmp", "read", "t", &[]).await;
    let mut tmp = Raw::connect_from("127.0.0.3", r.api_addr).await;
    tmp.login_ok("tmp", "t").await;
    let active = admin.rows(&["/user/active/print", "?name=tmp"]).await;
    assert_eq!(active.len(), 1);
    assert_eq!(get(&active[0], "via"), Some("api"));
    assert_eq!(get(&active[0], "address"), Some("127.0.0.3"));
    assert_eq!(get(&active[0], "group"), Some("read"));
    let id = get(&active[0], ".id").unwrap().to_string();
    assert!(
        r.router()
            .state()
            .users
            .by_name("tmp")
            .unwrap()
            .get("last-logged-in")
            .is_some()
    );

    // Removing the user does not end its session (RouterOS behaviour)...
    admin.ok(&["/user/remove", "=numbers=tmp"]).await;
    assert_eq!(tmp.rows(&["/system/identity/print"]).await.len(), 1);
    // ... and RouterOS 7 refuses to remove an API session (`action failed (6)`, as
    // measured on 7.23 and 7.24); it goes on.
    assert_eq!(
        admin
            .trap(&["/user/active/remove", &format!("=.id={id}")])
            .await
            .0,
        "action failed (6)"
    );
    assert_eq!(tmp.rows(&["/system/identity/print"]).await.len(), 1);
    // `request-logout` is no command of RouterOS 7.21 (nor 6.49).
    assert_eq!(
        admin
            .trap(&["/user/active/request-logout", &format!("=.id={id}")])
            .await
            .0,
        "no such command or directory (request-logout)"
    );
    drop(tmp);
    let router = r.router().clone();
    eventually("the closed session to leave /user/active", || {
        router.state().active.by_name("tmp").is_none()
    })
    .await;
    assert_eq!(
        admin
            .trap(&["/user/active/remove", &format!("=.id={id}")])
            .await
            .0,
        "no such item"
    );
    // A session that ends by itself leaves /user/active too.
    let mut short = Raw::admin(r.api_addr).await;
    assert_eq!(short.rows(&["/user/active/print"]).await.len(), 2);
    drop(short);
    let router = r.router().clone();
    eventually("the session to leave /user/active", || {
        router.state().active.items.len() == 1
    })
    .await;
    r.shutdown().await;
}

#[tokio::test]
async fn tls_login_with_the_pinned_certificate() {
    use std::sync::Arc;
    let r = router().await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(r.tls.cert_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(r.api_tls_addr)
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(
        "127.0.0.1".parse::<std::net::IpAddr>().unwrap().into(),
    );
    let tls = connector.connect(name, tcp).await.unwrap();
    let mut c = Raw::new(tls);
    c.login_ok("admin", "pw").await;
    assert_eq!(names(&c.rows(&["/user/print"]).await), ["admin"]);
    assert_eq!(r.tls.fingerprint_sha256.len(), 64);
    assert!(r.tls.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    r.shutdown().await;
}

#[tokio::test]
async fn hostile_bytes_get_a_fatal_not_a_panic() {
    let r = router().await;
    let mut s = tokio::net::TcpStream::connect(r.api_addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(&[0xF9, 0x01, 0x02]).await.unwrap();
    let mut c = Raw::new(s);
    let fatal = c.recv().await.unwrap();
    assert_eq!(fatal.kind, ReplyKind::Fatal);
    assert!(c.closed().await);
    // The router still serves others.
    Raw::admin(r.api_addr).await;
    r.shutdown().await;
}

#[tokio::test]
async fn quit_ends_the_session() {
    let r = router().await;
    let mut c = Raw::admin(r.api_addr).await;
    let replies = c.call(&["/quit"]).await;
    assert_eq!(replies[0].kind, ReplyKind::Fatal);
    assert!(c.closed().await);
    r.shutdown().await;
}

#[tokio::test]
async fn routers_older_than_6_43_answer_a_plaintext_login_with_a_challenge() {
    let r = router_with(|o| o.version = "6.42.12".into()).await;
    let mut c = Raw::connect(r.api_addr).await;
    let first = c.login("admin", "pw").await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert_eq!(first[0].kind, ReplyKind::Done);
    let challenge = hex::decode(first[0].ret().expect("a challenge")).unwrap();
    // Not logged in yet.
    let replies = c.call(&["/user/print"]).await;
    assert_eq!(
        replies[0].kind,
        ReplyKind::Fatal,
        "6.x: !fatal before login"
    );
    let mut c = Raw::connect(r.api_addr).await;
    let first = c.login("admin", "pw").await;
    let challenge2 = hex::decode(first[0].ret().unwrap()).unwrap();
    assert_ne!(challenge, challenge2, "a fresh challenge each time");
    let mut h = Md5::new();
    h.update([0u8]);
    h.update(b"pw");
    h.update(&challenge2);
    let response = format!("=response=00{}", hex::encode(h.finalize()));
    assert_eq!(
        c.call(&["/login", "=name=admin", &response]).await[0].kind,
        ReplyKind::Done
    );
    assert_eq!(c.rows(&["/system/identity/print"]).await.len(), 1);
    r.shutdown().await;
}

#[tokio::test]
async fn oversized_words_and_garbage_are_refused_without_harm() {
    use tokio::io::AsyncWriteExt;
    let r = router().await;
    // A word announcing 2 MiB (over the sim's 1 MiB limit): refused before reading it.
    let mut s = tokio::net::TcpStream::connect(r.api_addr).await.unwrap();
    s.write_all(&[0xE0, 0x20, 0x00, 0x00]).await.unwrap();
    let mut c = Raw::new(s);
    assert_eq!(c.recv().await.unwrap().kind, ReplyKind::Fatal);
    assert!(c.closed().await);
    // A truncated sentence and then end of stream: the router just closes.
    let mut s = tokio::net::TcpStream::connect(r.api_addr).await.unwrap();
    s.write_all(&[0x06, b'/', b'l', b'o']).await.unwrap();
    s.shutdown().await.unwrap();
    let mut c = Raw::new(s);
    assert!(c.closed().await);
    // Non-UTF-8 names and values are just bytes that match nothing.
    let mut c = Raw::admin(r.api_addr).await;
    c.send_raw(&[b"/user/print", b"?name=\xff\xfe", b".tag=x"])
        .await;
    let kinds: Vec<_> = c.read_done().await.iter().map(|r| r.kind).collect();
    assert_eq!(kinds, [ReplyKind::Empty, ReplyKind::Done]);
    c.send_raw(&[b"/user/add", b"=name=\xff", b"=group=read"])
        .await;
    assert_eq!(c.read_done().await.last().unwrap().kind, ReplyKind::Done);
    r.shutdown().await;
}

#[tokio::test]
async fn connections_beyond_the_cap_are_closed() {
    let r = router().await;
    let mut open = Vec::new();
    for _ in 0..postern_sim::server::MAX_CONNECTIONS {
        open.push(Raw::connect(r.api_addr).await);
    }
    // Make sure the router has taken them all before the one too many.
    open.last_mut().unwrap().login_ok("admin", "pw").await;
    let mut extra = Raw::connect(r.api_addr).await;
    assert!(extra.closed().await, "connection over the cap is closed");
    drop(open.pop());
    let router = r.router().clone();
    eventually("the freed slot", move || {
        router.state().active.items.is_empty()
    })
    .await;
    Raw::admin(r.api_addr).await;
    r.shutdown().await;
}
