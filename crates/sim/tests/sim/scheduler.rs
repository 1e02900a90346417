//! Scheduler entries run their on-event when due, by a manual clock.

use std::time::{Duration, UNIX_EPOCH};

use postern_sim::{Clock, clock};

use crate::common::*;

fn at(date: &str, time: &str) -> std::time::SystemTime {
    UNIX_EPOCH
        + Duration::from_secs(clock::parse_date(date).unwrap() + clock::parse_time(time).unwrap())
}

#[tokio::test]
async fn expiry_entry_removes_the_user_its_nat_rules_and_itself() {
    let clock = Clock::manual(at("2026-11-22", "12:00:00"));
    let r = router_with(|o| o.clock = clock.clone()).await;
    let mut api = Raw::admin(r.api_addr).await;
    add_user(
        &mut api,
        "tmp-1",
        "read",
        "t",
        &["=comment=postern:access:7"],
    )
    .await;
    add_user(&mut api, "keep", "read", "k", &[]).await;
    api.ok(&[
        "/ip/firewall/nat/add",
        "=chain=dstnat",
        "=action=dst-nat",
        "=protocol=tcp",
        "=dst-port=40001",
        "=to-addresses=10.0.0.9",
        "=to-ports=22",
        "=comment=postern:forward:7",
        "=disabled=yes",
    ])
    .await;
    api.ok(&[
        "/ip/firewall/nat/add",
        "=chain=srcnat",
        "=action=masquerade",
        "=comment=postern:forward:7",
    ])
    .await;
    api.ok(&[
        "/ip/firewall/nat/add",
        "=chain=srcnat",
        "=action=masquerade",
        "=comment=unrelated",
    ])
    .await;
    let script = "/user remove [find name=\"tmp-1\"]; /ip firewall nat remove [find comment=\"postern:forward:7\"]\n/system scheduler remove [find name=\"postern-expiry-7\"]";
    api.ok(&[
        "/system/scheduler/add",
        "=name=postern-expiry-7",
        "=start-date=2026-11-22",
        "=start-time=12:05:00",
        &format!("=on-event={script}"),
        "=comment=postern:expiry:7",
    ])
    .await;

    // Not yet due.
    clock.advance(Duration::from_secs(299));
    assert_eq!(r.run_scheduler(), 0);
    assert!(r.router().state().users.by_name("tmp-1").is_some());

    // Due: the background task notices the clock moving, no tick call needed.
    clock.advance(Duration::from_secs(1));
    let router = r.router().clone();
    eventually("the user to be removed", move || {
        router.state().users.by_name("tmp-1").is_none()
    })
    .await;
    let router = r.router().clone();
    eventually("the entry to remove itself", move || {
        router.state().scheduler.items.is_empty()
    })
    .await;
    assert_eq!(names(&api.rows(&["/user/print"]).await), ["admin", "keep"]);
    let rules = api.rows(&["/ip/firewall/nat/print"]).await;
    assert_eq!(rules.len(), 1);
    assert_eq!(get(&rules[0], "comment"), Some("unrelated"));
    r.shutdown().await;
}

#[tokio::test]
async fn repeating_entries_and_routeros_6_dates() {
    let clock = Clock::manual(at("2026-11-22", "08:00:00"));
    let r = router_with(|o| {
        o.clock = clock.clone();
        o.version = "6.49.10".into();
    })
    .await;
    let mut api = Raw::admin(r.api_addr).await;
    for i in 0..3 {
        add_user(&mut api, &format!("u{i}"), "read", "x", &["=comment=batch"]).await;
    }
    // Removes one `batch` user per run? No: `[find comment=…]` removes all of them; the
    // entry keeps running every hour and finds nothing the second time.
    api.ok(&[
        "/system/scheduler/add",
        "=name=sweep",
        "=start-date=nov/22/2026",
        "=start-time=09:00:00",
        "=interval=1h",
        "=on-event=/user remove [find comment=\"batch\"]",
    ])
    .await;
    let row = &api.rows(&["/system/scheduler/print"]).await[0];
    assert_eq!(get(row, "start-date"), Some("nov/22/2026"));
    assert_eq!(get(row, "next-run"), Some("2026-11-22 09:00:00"));
    clock.advance(Duration::from_secs(3600));
    // The background task may run it first; either way it runs exactly once.
    r.run_scheduler();
    wait_runs(&r, "1").await;
    assert_eq!(names(&api.rows(&["/user/print"]).await), ["admin"]);
    let row = &api.rows(&["/system/scheduler/print"]).await[0];
    assert_eq!(get(row, "run-count"), Some("1"));
    assert_eq!(get(row, "next-run"), Some("2026-11-22 10:00:00"));
    clock.advance(Duration::from_secs(3600));
    r.run_scheduler();
    wait_runs(&r, "2").await;
    // Disabled entries do not run.
    api.ok(&["/system/scheduler/disable", "=numbers=sweep"])
        .await;
    clock.advance(Duration::from_secs(3600));
    assert_eq!(r.run_scheduler(), 0);
    r.shutdown().await;
}

async fn wait_runs(r: &postern_sim::RouterHandle, n: &'static str) {
    let router = r.router().clone();
    eventually("the entry to run", move || {
        router
            .state()
            .scheduler
            .items
            .first()
            .and_then(|i| i.get("run-count").map(str::to_string))
            .as_deref()
            == Some(n)
    })
    .await;
}

#[tokio::test]
async fn home_device_mode_stops_entries() {
    let clock = Clock::manual(at("2026-11-22", "08:00:00"));
    let r = router_with(|o| o.clock = clock.clone()).await;
    let mut api = Raw::admin(r.api_addr).await;
    add_user(&mut api, "x", "read", "x", &[]).await;
    api.ok(&[
        "/system/scheduler/add",
        "=name=e",
        "=start-time=08:01:00",
        "=on-event=/user remove [find name=\"x\"]",
    ])
    .await;
    r.router().state().device_mode = postern_sim::DeviceMode::Home;
    clock.advance(Duration::from_secs(120));
    assert_eq!(r.run_scheduler(), 0);
    assert!(r.router().state().users.by_name("x").is_some());
    r.shutdown().await;
}

/// RouterOS compiles a script before running it: one command it does not have (here
/// `request-logout`, gone from RouterOS 7) and nothing of the script runs.
#[tokio::test]
async fn a_script_with_a_command_the_router_lacks_runs_nothing() {
    let clock = Clock::manual(at("2026-11-22", "12:00:00"));
    let r = router_with(|o| o.clock = clock.clone()).await;
    let mut api = Raw::admin(r.api_addr).await;
    add_user(&mut api, "tmp-2", "read", "t", &[]).await;
    let script = "/user active request-logout [find name=\"tmp-2\"]\n/user remove [find name=\"tmp-2\"]\n/system scheduler remove [find name=\"e\"]";
    api.ok(&[
        "/system/scheduler/add",
        "=name=e",
        "=start-date=2026-11-22",
        "=start-time=12:00:10",
        &format!("=on-event={script}"),
    ])
    .await;
    clock.advance(Duration::from_secs(10));
    r.run_scheduler();
    let router = r.router().clone();
    eventually("the entry to run", move || {
        router.state().scheduler.items[0].get("run-count") == Some("1")
    })
    .await;
    assert!(r.router().state().users.by_name("tmp-2").is_some());
    assert_eq!(r.router().state().scheduler.items.len(), 1);
    r.shutdown().await;
}

/// The session loop Postern writes: each session removed on its own, a refusal
/// (`action failed (6)` for an API session) caught, and the user removed after.
#[tokio::test]
async fn a_foreach_ends_each_session_it_may_and_the_user_goes() {
    use tokio::io::AsyncWriteExt;
    let clock = Clock::manual(at("2026-11-22", "12:00:00"));
    let r = router_with(|o| o.clock = clock.clone()).await;
    let mut api = Raw::admin(r.api_addr).await;
    add_user(&mut api, "tmp-3", "full", "t", &[]).await;
    let mut by_api = Raw::connect(r.api_addr).await;
    by_api.login_ok("tmp-3", "t").await;
    let mut winbox = tokio::net::TcpStream::connect(r.winbox_addr).await.unwrap();
    winbox.write_all(b"login tmp-3 t\n").await.unwrap();
    let router = r.router().clone();
    eventually("two sessions", move || {
        router
            .state()
            .active
            .items
            .iter()
            .filter(|s| s.get("name") == Some("tmp-3"))
            .count()
            == 2
    })
    .await;
    let script = ":foreach s in=[/user active find where name=\"tmp-3\"] do={ :do { /user active remove $s } on-error={} }\n/user remove [find name=\"tmp-3\"]\n/system scheduler remove [find name=\"e\"]";
    api.ok(&[
        "/system/scheduler/add",
        "=name=e",
        "=start-date=2026-11-22",
        "=start-time=12:00:10",
        &format!("=on-event={script}"),
    ])
    .await;
    clock.advance(Duration::from_secs(10));
    r.run_scheduler();
    let router = r.router().clone();
    eventually("the entry to run and remove itself", move || {
        router.state().scheduler.items.is_empty()
    })
    .await;
    {
        let state = r.router().state();
        assert!(
            state.users.by_name("tmp-3").is_none(),
            "the user is removed"
        );
        let left: Vec<_> = state
            .active
            .items
            .iter()
            .filter(|s| s.get("name") == Some("tmp-3"))
            .map(|s| s.get("via").unwrap().to_string())
            .collect();
        assert_eq!(
            left,
            ["api"],
            "the WinBox session is ended, the API one refused"
        );
        assert!(state.scheduler.items.is_empty());
    }
    r.shutdown().await;
}
