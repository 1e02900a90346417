//! Connections through the gateway in the store suite (included by `store.rs`): recorded
//! live, completed with their bytes, listed per grant newest first within the caller's
//! organisation, and ended in bulk at start-up.

use super::*;

async fn connections(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let grant = AccessId::new().to_string();
    let new = |source: &str, at: i64, end: Option<ConnectionEnd>| NewConnection {
        id: domain::ConnectionRecordId::new(),
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

    // Start-up: what is still live is ended.
    s.record_connection(new("198.51.100.8:1", 6, None))
        .await
        .unwrap();
    assert_eq!(
        s.end_open_connections(t(9), "gateway restarted")
            .await
            .unwrap(),
        1
    );
    let list = s
        .list_connections(w.org, w.router.id, GrantKind::Access, &grant, 10)
        .await
        .unwrap();
    assert_eq!(list[0].ended_at, Some(t(9)));
    assert_eq!(list[0].end_reason.as_deref(), Some("gateway restarted"));
    assert_eq!(s.end_open_connections(t(10), "again").await.unwrap(), 0);
}
both!(connections_recorded_and_listed, connections);
