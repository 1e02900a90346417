//! One-time WinBox tickets in the store suite (included by `store.rs`): made only for a
//! grant of that router and organisation, with their audit entry in the same
//! transaction; taken once, by one of many concurrent takers, never after their end;
//! a second use finds the ticket spent; gone with their grant's router.

use super::*;

fn hash(n: u8) -> String {
    format!("{:064x}", u64::from(n) + 0xabc0)
}

fn new_ticket(w: &World, grant: AccessId, n: u8, router: RouterId, org: OrgId) -> NewWinboxTicket {
    NewWinboxTicket {
        id_hash: hash(n),
        org_id: org,
        router_id: router,
        access_id: grant,
        issued_to: "alice".into(),
        user_id: None,
        token_id: None,
        at: t(1),
        expires_at: t(2),
        audit: audit(w.org, "access.winbox_ticket.issue", t(1)),
    }
}

async fn tickets(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let grant = s
        .create_access(new_access(&w, &[40001], true))
        .await
        .unwrap();
    let audits = |s: &Store| {
        let s = s.clone();
        let org = w.org;
        async move {
            s.list_audit(org, Page::default())
                .await
                .unwrap()
                .into_iter()
                .filter(|a| a.action == "access.winbox_ticket.issue")
                .count()
        }
    };
    // Only for the grant's own router, in its own organisation; nothing audited then.
    assert!(is_not_found(
        s.create_winbox_ticket(new_ticket(&w, grant.id, 1, w.router.id, w.other))
            .await
    ));
    assert!(is_not_found(
        s.create_winbox_ticket(new_ticket(&w, grant.id, 1, w.foreign.id, w.org))
            .await
    ));
    assert_eq!(audits(s).await, 0);
    let mut bad = new_ticket(&w, grant.id, 1, w.router.id, w.org);
    bad.id_hash = "not-a-hash".into();
    assert!(conflict(s.create_winbox_ticket(bad).await).contains("sha-256"));

    let made = s
        .create_winbox_ticket(new_ticket(&w, grant.id, 1, w.router.id, w.org))
        .await
        .unwrap();
    assert_eq!(audits(s).await, 1);
    assert_eq!(made.access_id, grant.id);
    assert!(
        conflict(
            s.create_winbox_ticket(new_ticket(&w, grant.id, 1, w.router.id, w.org))
                .await
        )
        .contains("exists")
    );

    // Unknown and malformed hashes are simply unknown.
    assert_eq!(
        s.take_winbox_ticket(&hash(9), t(1), None).await.unwrap(),
        TicketUse::Unknown
    );
    assert_eq!(
        s.take_winbox_ticket("' OR 1=1 --", t(1), None)
            .await
            .unwrap(),
        TicketUse::Unknown
    );

    // Eight at once: exactly one takes it, the others find it spent.
    let from: std::net::IpAddr = "198.51.100.7".parse().unwrap();
    let takers = (0..8).map(|_| {
        let s = s.clone();
        async move {
            s.take_winbox_ticket(&hash(1), t(1), Some(from))
                .await
                .unwrap()
        }
    });
    let uses = futures::future::join_all(takers).await;
    let taken: Vec<_> = uses
        .iter()
        .filter_map(|u| match u {
            TicketUse::Taken(t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(taken.len(), 1, "{uses:?}");
    assert_eq!(taken[0].used_at, Some(t(1)));
    assert_eq!(taken[0].used_from, Some(from));
    assert_eq!(taken[0].issued_to, "alice");
    assert!(uses.iter().all(|u| !matches!(u, TicketUse::Unknown)));
    match s.take_winbox_ticket(&hash(1), t(1), None).await.unwrap() {
        TicketUse::Spent(t) => assert_eq!(t.used_from, Some(from)),
        other => panic!("second use: {other:?}"),
    }

    // Expired: spent without ever being used (its end is exclusive).
    s.create_winbox_ticket(new_ticket(&w, grant.id, 2, w.router.id, w.org))
        .await
        .unwrap();
    match s.take_winbox_ticket(&hash(2), t(2), None).await.unwrap() {
        TicketUse::Spent(t) => assert_eq!(t.used_at, None),
        other => panic!("expired: {other:?}"),
    }

    // A day after their end, making another ticket forgets them.
    let mut later = new_ticket(&w, grant.id, 3, w.router.id, w.org);
    later.at = t(2 + 24 * 60 + 1);
    later.expires_at = later.at + TimeDelta::minutes(1);
    s.create_winbox_ticket(later).await.unwrap();
    assert_eq!(
        s.take_winbox_ticket(&hash(1), t(3), None).await.unwrap(),
        TicketUse::Unknown
    );

    // Gone with the router (its grants go with it).
    s.create_winbox_ticket(new_ticket(&w, grant.id, 4, w.router.id, w.org))
        .await
        .unwrap();
    s.transition_access(
        grant.id,
        &[GrantStatus::Requested],
        GrantStatus::Failed,
        t(1),
        None,
    )
    .await
    .unwrap();
    s.delete_router(w.org, w.router.id).await.unwrap();
    assert_eq!(
        s.take_winbox_ticket(&hash(4), t(1), None).await.unwrap(),
        TicketUse::Unknown
    );
}
both!(tickets_taken_once, tickets);
