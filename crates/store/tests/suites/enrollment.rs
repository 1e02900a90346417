//! Onboarding's enrolment tokens in the store suite (included by `store.rs`): issued
//! only for a router of the organisation, with their audit entry; re-issuing revokes
//! the router's open token; an unknown, revoked, expired or spent token changes
//! nothing; completion records the key, serial, facts and ports, spends the token and
//! audits it, once among concurrent tries; a key or serial another router has is
//! refused naming the field, and the token stays open.

use super::*;

fn hash(n: u8) -> String {
    format!("{:064x}", u64::from(n) + 0xe000)
}

fn issue(w: &World, router: RouterId, n: u8, at: DateTime<Utc>) -> NewEnrollment {
    NewEnrollment {
        token_hash: hash(n),
        org_id: w.org,
        router_id: router,
        created_by: "alice".into(),
        at,
        expires_at: at + TimeDelta::hours(24),
        audit: audit(w.org, "site.enrollment.issue", at),
    }
}

fn tunnelled(w: &World, name: &str) -> NewTunnelRouter {
    NewTunnelRouter {
        org_id: w.org,
        site_name: None,
        region_id: w.region.id,
        name: name.into(),
        tunnel_prefix: "100.64.0.0/24".parse().unwrap(),
        gateway_address: "100.64.0.1".parse().unwrap(),
        api_port: 8728,
        ssh_port: 22,
        winbox_port: 8291,
        username: "postern".into(),
        password: "pw".into(),
    }
}

const KEY_A: &str = "hT3p0Rk4VxgZf5H0Uq7m1c3lQWqz8dJv6yY2bN0aE1s=";
const KEY_B: &str = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=";

fn report(key: &str, serial: Option<&str>) -> EnrollmentReport {
    EnrollmentReport {
        public_key: key.into(),
        identity: "MikroTik".into(),
        routeros_version: "7.21.4 (stable)".into(),
        board_name: "hAP ax3".into(),
        serial_number: serial.map(str::to_owned),
        api_port: 18728,
        ssh_port: 2222,
        winbox_port: 8291,
        from: Some("198.51.100.9".parse().unwrap()),
    }
}

fn enrolled(u: EnrollmentUse) -> (Router, Enrollment) {
    match u {
        EnrollmentUse::Done(r, t) => (*r, t),
        other => panic!("not enrolled: {other:?}"),
    }
}

fn closed(u: EnrollmentUse) -> Enrollment {
    match u {
        EnrollmentUse::Closed(t) => t,
        other => panic!("not refused as closed: {other:?}"),
    }
}

async fn enrollment(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let r1 = s
        .create_tunnel_router(tunnelled(&w, "branch-1"))
        .await
        .unwrap();
    let r2 = s
        .create_tunnel_router(tunnelled(&w, "branch-2"))
        .await
        .unwrap();

    // Issued only for a router of the organisation, and only as a hash.
    let mut foreign = issue(&w, w.foreign.id, 1, t(0));
    assert!(is_not_found(s.issue_enrollment(foreign.clone()).await));
    foreign.router_id = r1.id;
    foreign.token_hash = "pet_plaintext".into();
    assert!(conflict(s.issue_enrollment(foreign).await).contains("sha-256"));

    // Re-issuing revokes the open one.
    let first = s.issue_enrollment(issue(&w, r1.id, 1, t(0))).await.unwrap();
    assert_eq!(first.state(t(1)), EnrollmentState::Open);
    assert_eq!(first.state(t(24 * 60)), EnrollmentState::Expired);
    s.issue_enrollment(issue(&w, r1.id, 2, t(5))).await.unwrap();
    let old = s.find_enrollment(&hash(1)).await.unwrap().unwrap();
    assert_eq!(old.state(t(6)), EnrollmentState::Revoked);
    assert_eq!(old.revoked_at, Some(t(5)));
    let open = s.open_enrollments(w.org).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(
        (open[0].router_id, open[0].expires_at),
        (r1.id, t(5 + 24 * 60))
    );
    assert!(s.open_enrollments(w.other).await.unwrap().is_empty());

    // Unknown, malformed, revoked and expired tokens change nothing.
    let a = report(KEY_A, Some("HE608ABC"));
    let audit_at = |at| audit(w.other, "router.enroll", at);
    assert!(matches!(
        s.complete_enrollment(&hash(9), t(6), &a, audit_at(t(6)))
            .await
            .unwrap(),
        EnrollmentUse::Unknown
    ));
    assert!(matches!(
        s.complete_enrollment("nope", t(6), &a, audit_at(t(6)))
            .await
            .unwrap(),
        EnrollmentUse::Unknown
    ));
    let revoked = closed(
        s.complete_enrollment(&hash(1), t(6), &a, audit_at(t(6)))
            .await
            .unwrap(),
    );
    assert_eq!(revoked.state(t(6)), EnrollmentState::Revoked);
    let late = t(5 + 24 * 60);
    let expired = closed(
        s.complete_enrollment(&hash(2), late, &a, audit_at(late))
            .await
            .unwrap(),
    );
    assert_eq!(expired.state(late), EnrollmentState::Expired);
    let still = s.get_router(w.org, r1.id).await.unwrap();
    assert_eq!((still.tunnel_public_key, still.api_port), (None, 8728));
    assert_eq!(s.router_serial(w.org, r1.id).await.unwrap(), None);

    // Completion: key, serial, facts and ports, the token spent, audited (in the
    // token's organisation, whatever the caller put).
    let before = s.list_audit(w.org, Page::default()).await.unwrap().len();
    let (router, token) = enrolled(
        s.complete_enrollment(&hash(2), t(7), &a, audit_at(t(7)))
            .await
            .unwrap(),
    );
    assert_eq!(router.id, r1.id);
    assert_eq!(router.tunnel_public_key.as_deref(), Some(KEY_A));
    assert_eq!(router.identity.as_deref(), Some("MikroTik"));
    assert_eq!(router.routeros_version.as_deref(), Some("7.21.4 (stable)"));
    assert_eq!(router.board_name.as_deref(), Some("hAP ax3"));
    assert_eq!(
        (router.api_port, router.ssh_port, router.winbox_port),
        (18728, 2222, 8291)
    );
    assert_eq!(
        s.router_serial(w.org, r1.id).await.unwrap().as_deref(),
        Some("HE608ABC")
    );
    assert_eq!(token.spent_at, Some(t(7)));
    assert_eq!(token.spent_from, Some("198.51.100.9".parse().unwrap()));
    let audits = s.list_audit(w.org, Page::default()).await.unwrap();
    assert_eq!(audits.len(), before + 1);
    assert_eq!(audits[0].action, "router.enroll");
    assert_eq!(
        audits[0].target.as_deref(),
        Some(format!("router:{}", r1.id).as_str())
    );
    assert!(s.open_enrollments(w.org).await.unwrap().is_empty());

    // Spent: a second use changes nothing.
    let b = report(KEY_B, None);
    let spent = closed(
        s.complete_enrollment(&hash(2), t(8), &b, audit_at(t(8)))
            .await
            .unwrap(),
    );
    assert_eq!(spent.state(t(8)), EnrollmentState::Spent);
    assert_eq!(
        s.get_router(w.org, r1.id)
            .await
            .unwrap()
            .tunnel_public_key
            .as_deref(),
        Some(KEY_A)
    );

    // Another router may not claim that key, nor that serial in this organisation;
    // its token stays open.
    s.issue_enrollment(issue(&w, r2.id, 3, t(9))).await.unwrap();
    let same_key = report(KEY_A, None);
    let e = conflict(
        s.complete_enrollment(&hash(3), t(10), &same_key, audit_at(t(10)))
            .await,
    );
    assert!(e.contains("public_key"), "{e}");
    let same_serial = report(KEY_B, Some("HE608ABC"));
    let e = conflict(
        s.complete_enrollment(&hash(3), t(10), &same_serial, audit_at(t(10)))
            .await,
    );
    assert!(e.contains("serial"), "{e}");
    assert_eq!(
        s.find_enrollment(&hash(3))
            .await
            .unwrap()
            .unwrap()
            .state(t(10)),
        EnrollmentState::Open
    );
    assert_eq!(
        s.get_router(w.org, r2.id).await.unwrap().tunnel_public_key,
        None
    );

    // Concurrent completions: one alone enrols.
    let tries = (0..6).map(|_| {
        let s = s.clone();
        let b = report(KEY_B, Some("OTHER-1"));
        let at = audit_at(t(11));
        tokio::spawn(async move {
            s.complete_enrollment(&hash(3), t(11), &b, at)
                .await
                .unwrap()
        })
    });
    let mut done = 0;
    for task in tries {
        match task.await.unwrap() {
            EnrollmentUse::Done(..) => done += 1,
            EnrollmentUse::Closed(t) => assert!(t.spent_at.is_some()),
            EnrollmentUse::Unknown => panic!("unknown"),
        }
    }
    assert_eq!(done, 1);

    // A router's tokens go with it.
    s.delete_router(w.org, r2.id).await.unwrap();
    assert_eq!(s.find_enrollment(&hash(3)).await.unwrap(), None);
}
both!(enrollment_tokens, enrollment);
