//! Portal sessions in the store suite (included by `store.rs`): stored by hash, scoped to
//! the user's organisation, touched, swept by their limits, gone with their user.

use super::*;

async fn sessions(ctx: &Ctx) {
    let s = &ctx.store;
    let org = s.create_organisation("acme").await.unwrap();
    let other = s.create_organisation("globex").await.unwrap();
    let user = s
        .create_user(postern_store::NewUser {
            org_id: org.id,
            username: "alice".into(),
            role: Role::Admin,
            password_hash: "x".into(),
        })
        .await
        .unwrap();
    let new = |hash: &str, org_id: OrgId, at: i64, until: i64| postern_store::NewSession {
        id_hash: hash.into(),
        user_id: user.id,
        org_id,
        csrf_token: format!("csrf-{hash}"),
        at: t(at),
        expires_at: t(until),
    };
    let a = "a1".repeat(32);
    let b = "b2".repeat(32);
    let made = s.create_session(new(&a, org.id, 0, 720)).await.unwrap();
    assert_eq!(made.last_seen_at, t(0));
    // A user of another organisation cannot be given a session there.
    assert!(is_not_found(
        s.create_session(new(&b, other.id, 0, 720)).await
    ));
    // Not a hash: refused before SQL; the same hash twice: a conflict.
    assert!(
        s.create_session(new("plain-token", org.id, 0, 720))
            .await
            .is_err()
    );
    assert!(s.create_session(new(&a, org.id, 0, 720)).await.is_err());
    assert!(s.find_session("plain-token").await.unwrap().is_none());

    let found = s.find_session(&a).await.unwrap().unwrap();
    assert_eq!(found, made);
    assert_eq!(found.csrf_token, format!("csrf-{a}"));
    s.touch_session(&a, t(30)).await.unwrap();
    assert_eq!(
        s.find_session(&a).await.unwrap().unwrap().last_seen_at,
        t(30)
    );

    // The sweep removes sessions idle since before the cut-off or past their limit.
    s.create_session(new(&b, org.id, 0, 60)).await.unwrap();
    assert_eq!(s.delete_stale_sessions(t(61), t(0)).await.unwrap(), 1);
    assert!(s.find_session(&b).await.unwrap().is_none());
    assert!(s.find_session(&a).await.unwrap().is_some());
    assert_eq!(s.delete_stale_sessions(t(100), t(31)).await.unwrap(), 1);
    assert!(s.find_session(&a).await.unwrap().is_none());

    // Logout deletes; a user's deletion ends their sessions.
    s.create_session(new(&a, org.id, 0, 720)).await.unwrap();
    assert!(s.delete_session(&a).await.unwrap());
    assert!(!s.delete_session(&a).await.unwrap());
    s.create_session(new(&b, org.id, 0, 720)).await.unwrap();
    s.delete_user(org.id, user.id).await.unwrap();
    assert!(s.find_session(&b).await.unwrap().is_none());
}
both!(portal_sessions, sessions);
