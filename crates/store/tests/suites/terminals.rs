//! Terminal sessions and their recordings in the store suite (included by `store.rs`):
//! one per grant, of that grant's router and organisation, claimed once, chunks in
//! order with their bytes counted, first end wins, gone with their grant's router.

use super::*;

async fn terminals(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let grant = s
        .create_access(new_access(&w, &[40001], true))
        .await
        .unwrap();
    let new = |org: OrgId, router: RouterId| NewTerminalSession {
        access_id: grant.id,
        org_id: org,
        router_id: router,
        created_by: "alice".into(),
        at: t(1),
    };
    // Only for the grant's own router, in its own organisation.
    assert!(is_not_found(
        s.create_terminal_session(new(w.other, w.router.id)).await
    ));
    assert!(is_not_found(
        s.create_terminal_session(new(w.org, w.foreign.id)).await
    ));
    let made = s
        .create_terminal_session(new(w.org, w.router.id))
        .await
        .unwrap();
    assert_eq!(made.started_at, None);
    assert!(conflict(s.create_terminal_session(new(w.org, w.router.id)).await).contains("already"));
    assert_eq!(s.get_terminal_session(w.org, grant.id).await.unwrap(), made);
    assert!(is_not_found(
        s.get_terminal_session(w.other, grant.id).await
    ));
    assert!(is_not_found(s.terminal_recording(w.other, grant.id).await));

    // Claimed once.
    assert!(
        s.start_terminal_session(grant.id, t(2), 120, 40)
            .await
            .unwrap()
    );
    assert!(
        !s.start_terminal_session(grant.id, t(3), 80, 24)
            .await
            .unwrap()
    );
    let started = s.get_terminal_session(w.org, grant.id).await.unwrap();
    assert_eq!(
        (started.started_at, started.width, started.height),
        (Some(t(2)), Some(120), Some(40))
    );

    // Chunks come back in order, whatever order they were written in; sizes add up.
    s.append_terminal_chunk(grant.id, 1, "[0.5, \"o\", \"é\"]\n")
        .await
        .unwrap();
    s.append_terminal_chunk(grant.id, 0, "{\"version\": 2}\n")
        .await
        .unwrap();
    assert!(conflict(s.append_terminal_chunk(grant.id, 1, "again").await).contains("exists"));
    assert!(is_not_found(
        s.append_terminal_chunk(AccessId::new(), 0, "x").await
    ));
    assert_eq!(
        s.terminal_recording(w.org, grant.id).await.unwrap(),
        "{\"version\": 2}\n[0.5, \"o\", \"é\"]\n"
    );
    let sized = s.get_terminal_session(w.org, grant.id).await.unwrap();
    assert_eq!(sized.size, 15 + 17);

    // The first end wins.
    s.end_terminal_session(grant.id, t(4), "closed by the browser")
        .await
        .unwrap();
    s.end_terminal_session(grant.id, t(5), "late")
        .await
        .unwrap();
    let ended = s.get_terminal_session(w.org, grant.id).await.unwrap();
    assert_eq!(ended.ended_at, Some(t(4)));
    assert_eq!(ended.end_reason.as_deref(), Some("closed by the browser"));
    let listed = s
        .list_terminal_sessions(w.org, w.router.id, 10)
        .await
        .unwrap();
    assert_eq!(listed, vec![ended]);
    assert!(
        s.list_terminal_sessions(w.other, w.router.id, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // A session and its recording go with the router (once its grants have ended).
    s.transition_access(
        grant.id,
        &[GrantStatus::Requested],
        GrantStatus::Failed,
        t(6),
        None,
    )
    .await
    .unwrap();
    s.delete_router(w.org, w.router.id).await.unwrap();
    assert!(is_not_found(s.get_terminal_session(w.org, grant.id).await));
    assert!(is_not_found(s.terminal_recording(w.org, grant.id).await));
}
both!(terminal_sessions_and_recordings, terminals);
