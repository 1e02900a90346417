//! Connections through the gateway in the store suite (included by `store.rs`): recorded
//! live, completed with their bytes, listed per grant newest first within the caller's
//! organisation; ended per grant for their run, and in bulk when their run is gone but
//! never while it is registered (another server on the same database).

use super::*;

async fn connections(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let grant = AccessId::new().to_string();
    let run = domain::GatewayRunId::new();
    let new = |source: &str, at: i64, end: Option<ConnectionEnd>| NewConnection {
        id: domain::ConnectionRecordId::new(),
        gateway_run: run,
        org_id: w.org,
        router_id: w.router.id,
        grant_kind: GrantKind::Access,
        grant_id: grant.clone(),
        source: source.parse().unwrap(),
        started_at: t(at),
        end,
    };
    let live = s
        .record_connection(new("198.51.100.7:50000", 0, None))
        .await
        .unwrap();
    let done = s
        .record_connection(new(
            "[2001:db8::1]:40000",
            1,
            Some(ConnectionEnd {
                at: t(2),
                bytes_from_client: 10,
                bytes_to_client: u64::MAX,
                reason: "finished".into(),
            }),
        ))
        .await
        .unwrap();
    let list = s
        .list_connections(w.org, w.router.id, GrantKind::Access, &grant, 100)
        .await
        .unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].id, done.id, "newest first");
    // Counts beyond BIGINT saturate rather than fail.
    assert_eq!(list[0].bytes_to_client, i64::MAX as u64);
    assert_eq!(list[0].source.to_string(), "[2001:db8::1]:40000");
    assert_eq!(list[1], live);
    assert_eq!(list[1].ended_at, None);

    s.end_connection(
        live.id,
        ConnectionEnd {
            at: t(5),
            bytes_from_client: 123,
            bytes_to_client: 456,
            reason: "revoked".into(),
        },
    )
    .await
    .unwrap();
    let list = s
        .list_connections(w.org, w.router.id, GrantKind::Access, &grant, 1)
        .await
        .unwrap();
    assert_eq!(list.len(), 1, "limit applies");
    let list = s
        .list_connections(w.org, w.router.id, GrantKind::Access, &grant, 10)
        .await
        .unwrap();
    assert_eq!(
        (
            list[1].ended_at,
            list[1].bytes_from_client,
            list[1].bytes_to_client
        ),
        (Some(t(5)), 123, 456)
    );
    assert_eq!(list[1].end_reason.as_deref(), Some("revoked"));
    assert!(is_not_found(
        s.end_connection(
            domain::ConnectionRecordId::new(),
            ConnectionEnd {
                at: t(5),
                bytes_from_client: 0,
                bytes_to_client: 0,
                reason: "x".into()
            }
        )
        .await
    ));

    // Another organisation, another router or the other kind sees nothing.
    for (org, router, kind) in [
        (w.other, w.router.id, GrantKind::Access),
        (w.org, w.foreign.id, GrantKind::Access),
        (w.org, w.router.id, GrantKind::Forward),
    ] {
        assert!(
            s.list_connections(org, router, kind, &grant, 10)
                .await
                .unwrap()
                .is_empty()
        );
    }

    // In one transaction: an opening, its end, and an end whose opening was never
    // written; an opening again does not undo an end.
    let batch_grant = AccessId::new().to_string();
    let mut opened = new("198.51.100.20:5", 3, None);
    opened.grant_id = batch_grant.clone();
    let mut closed = opened.clone();
    closed.end = Some(ConnectionEnd {
        at: t(4),
        bytes_from_client: 7,
        bytes_to_client: 8,
        reason: "finished".into(),
    });
    let mut unseen = closed.clone();
    unseen.id = domain::ConnectionRecordId::new();
    s.record_connections(&[opened.clone(), closed, unseen, opened.clone()])
        .await
        .unwrap();
    s.record_connections(&[]).await.unwrap();
    let list = s
        .list_connections(w.org, w.router.id, GrantKind::Access, &batch_grant, 10)
        .await
        .unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    for c in &list {
        assert_eq!(
            (
                c.ended_at,
                c.bytes_from_client,
                c.bytes_to_client,
                c.end_reason.as_deref()
            ),
            (Some(t(4)), 7, 8, Some("finished")),
            "{c:?}"
        );
    }

    // Runs: registered, renewed, listed.
    let other_run = domain::GatewayRunId::new();
    for (id, at) in [(run, 6), (other_run, 6), (run, 8)] {
        s.record_gateway_run(&GatewayRun {
            id,
            process: format!("p-{id}"),
            started_at: t(at),
            seen_at: t(at),
        })
        .await
        .unwrap();
    }
    let runs = s.list_gateway_runs().await.unwrap();
    assert_eq!(runs.len(), 2, "{runs:?}");
    let mine = runs.iter().find(|r| r.id == run).unwrap();
    assert_eq!(
        (mine.started_at, mine.seen_at, mine.process.clone()),
        (t(6), t(8), format!("p-{run}"))
    );

    // A live row of each run, and one of a grant closed by its run.
    let other_grant = AccessId::new().to_string();
    let mut theirs = new("198.51.100.9:2", 6, None);
    theirs.gateway_run = other_run;
    let theirs = s.record_connection(theirs).await.unwrap();
    let ours = s
        .record_connection(new("198.51.100.8:1", 6, None))
        .await
        .unwrap();
    let mut closed = new("198.51.100.10:3", 6, None);
    closed.grant_id = other_grant.clone();
    s.record_connection(closed).await.unwrap();
    // Another run's rows of the grant are not its to end.
    let mut foreign = new("198.51.100.11:4", 6, None);
    foreign.grant_id = other_grant.clone();
    foreign.gateway_run = other_run;
    s.record_connection(foreign).await.unwrap();
    assert_eq!(
        s.end_grant_connections(run, GrantKind::Access, &other_grant, t(7), "revoked")
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.end_grant_connections(run, GrantKind::Forward, &grant, t(7), "revoked")
            .await
            .unwrap(),
        0,
        "the kind is part of the grant"
    );
    let list = s
        .list_connections(w.org, w.router.id, GrantKind::Access, &other_grant, 10)
        .await
        .unwrap();
    // Both started at once: in any order.
    let mut ended: Vec<_> = list.iter().map(|c| c.end_reason.as_deref()).collect();
    ended.sort();
    assert_eq!(ended, [None, Some("revoked")], "{list:?}");

    // While both runs are registered nothing is an orphan.
    assert_eq!(
        s.end_orphaned_connections(t(9), "gateway stopped")
            .await
            .unwrap(),
        0
    );
    // The other run is gone: its live rows are ended, ours are not.
    assert!(s.forget_gateway_run(other_run).await.unwrap());
    assert!(!s.forget_gateway_run(other_run).await.unwrap());
    assert_eq!(
        s.end_orphaned_connections(t(9), "gateway stopped")
            .await
            .unwrap(),
        2
    );
    let list = s
        .list_connections(w.org, w.router.id, GrantKind::Access, &grant, 10)
        .await
        .unwrap();
    let of = |id| list.iter().find(|c| c.id == id).unwrap();
    assert_eq!(of(theirs.id).ended_at, Some(t(9)));
    assert_eq!(of(theirs.id).end_reason.as_deref(), Some("gateway stopped"));
    assert_eq!(of(ours.id).ended_at, None);
    assert_eq!(s.end_orphaned_connections(t(10), "again").await.unwrap(), 0);
    assert_eq!(s.list_gateway_runs().await.unwrap().len(), 1);
}
both!(connections_recorded_and_listed, connections);
