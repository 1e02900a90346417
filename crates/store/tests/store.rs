//! The store suite: every test runs against SQLite and against PostgreSQL (see
//! `harness`), asserting what the server will rely on: org isolation, uniqueness,
//! encryption at rest, the grant life cycle, port allocation under concurrency and
//! all-or-nothing grant creation.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod harness;

use std::collections::HashSet;

use chrono::{DateTime, TimeDelta, Utc};
use domain::{
    AccessId, AccessLevel, AccessType, AllowFrom, ForwardId, GrantStatus, JobId, JobState, OrgId,
    Policy, RegionId, Role, RouterId, RouterStatus, SiteId, TokenId, UserId,
};
use harness::{Ctx, Db, KEY};
use postern_store::*;
use serde_json::json;

/// Defines `<name>::sqlite` and `<name>::postgres` running `body(ctx)`.
macro_rules! both {
    ($name:ident, $body:ident) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let ctx = Ctx::new(Db::Sqlite).await.expect("sqlite store");
                $body(&ctx).await;
                ctx.store.close().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some(ctx) = Ctx::new(Db::Postgres).await else {
                    return;
                };
                $body(&ctx).await;
                ctx.store.close().await;
            }
        }
    };
}

fn t(minutes: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
        + TimeDelta::minutes(minutes)
}

/// Every grant of a router, ended ones too (as many as a test makes).
const ALL: Option<Page> = Some(Page {
    limit: 1000,
    offset: 0,
});

fn allow() -> AllowFrom {
    AllowFrom::parse("198.51.100.0/24", &Policy::default()).unwrap()
}

fn audit(org: OrgId, action: &str, at: DateTime<Utc>) -> NewAudit {
    NewAudit {
        org_id: org,
        at,
        actor: "alice".into(),
        actor_address: Some("203.0.113.7".parse().unwrap()),
        action: action.into(),
        target: None,
        details: json!({"k": 1}),
    }
}

struct World {
    org: OrgId,
    other: OrgId,
    region: Region,
    router: Router,
    /// A router of the other organisation.
    foreign: Router,
}

fn new_router(org: OrgId, region: &Region, name: &str, password: &str) -> NewRouter {
    NewRouter {
        org_id: org,
        site_name: None,
        region_id: region.id,
        name: name.into(),
        tunnel_address: "100.64.0.2".parse().unwrap(),
        api_port: 8728,
        ssh_port: 22,
        winbox_port: 8291,
        api_tls: false,
        api_tls_fingerprint: None,
        username: "admin".into(),
        password: password.into(),
    }
}

async fn world(s: &Store) -> World {
    let org = s.create_organisation("acme").await.unwrap().id;
    let other = s.create_organisation("globex").await.unwrap().id;
    let region = s
        .upsert_region(NewRegion {
            name: "eu".into(),
            entry_point: "eu.example.net".into(),
            port_min: 40000,
            port_max: 40100,
        })
        .await
        .unwrap();
    let router = s
        .create_router(new_router(org, &region, "core-1", "router-pw-1"))
        .await
        .unwrap();
    let foreign = s
        .create_router(new_router(other, &region, "theirs", "their-pw"))
        .await
        .unwrap();
    World {
        org,
        other,
        region,
        router,
        foreign,
    }
}

fn new_access(w: &World, ports: &[u16], job: bool) -> NewAccess {
    NewAccess {
        org_id: w.org,
        router_id: w.router.id,
        access_type: AccessType::Winbox,
        access: AccessLevel::Full,
        allow_rfc1918: false,
        allow_from: allow(),
        username: "postern-a1".into(),
        password: "grant-secret-pw".into(),
        expires_at: t(120),
        created_by: "alice".into(),
        region_id: w.region.id,
        entry_point: w.region.entry_point.clone(),
        port_candidates: ports.to_vec(),
        audit: audit(w.org, "transient_access.create", t(0)),
        terminal: false,
        job: job.then(|| new_job(w.org, w.router.id, t(0))),
    }
}

fn new_forward(w: &World, ports: &[u16], router_ports: &[u16]) -> NewForward {
    NewForward {
        org_id: w.org,
        router_id: w.router.id,
        dst_address: "192.168.88.43".parse().unwrap(),
        dst_port: 22,
        masquerade: true,
        allow_from: allow(),
        expires_at: t(120),
        created_by: "token:ci".into(),
        region_id: w.region.id,
        entry_point: w.region.entry_point.clone(),
        port_candidates: ports.to_vec(),
        router_port_candidates: router_ports.to_vec(),
        audit: audit(w.org, "transient_forward.create", t(0)),
        job: Some(new_job(w.org, w.router.id, t(0))),
    }
}

fn new_job(org: OrgId, router: RouterId, at: DateTime<Utc>) -> NewJob {
    NewJob {
        org_id: org,
        router_id: router,
        kind: "access.provision".into(),
        payload: json!({"at": at.to_rfc3339()}),
        max_attempts: 5,
        run_after: at,
        created_at: at,
    }
}

fn is_not_found<T: std::fmt::Debug>(r: Result<T>) -> bool {
    matches!(r, Err(StoreError::NotFound))
}

fn conflict<T: std::fmt::Debug>(r: Result<T>) -> String {
    match r {
        Err(StoreError::Conflict(m)) => m,
        other => panic!("expected Conflict, got {other:?}"),
    }
}

// ---------------------------------------------------------------- accounts

async fn accounts(ctx: &Ctx) {
    let s = &ctx.store;
    assert_eq!(s.count_users().await.unwrap(), 0);
    let org = s.create_organisation("acme").await.unwrap();
    let other = s.create_organisation("globex").await.unwrap();
    assert_eq!(s.get_organisation(org.id).await.unwrap(), org);
    assert_eq!(s.list_organisations().await.unwrap().len(), 2);

    let alice = s
        .create_user(NewUser {
            org_id: org.id,
            username: "alice".into(),
            role: Role::Admin,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        })
        .await
        .unwrap();
    let bob = s
        .create_user(NewUser {
            org_id: org.id,
            username: "bob".into(),
            role: Role::Viewer,
            password_hash: "h".into(),
        })
        .await
        .unwrap();
    // Names are per organisation: taken in its own, free in another (whose answer
    // says nothing of this one's names).
    let msg = conflict(
        s.create_user(NewUser {
            org_id: org.id,
            username: "alice".into(),
            role: Role::Viewer,
            password_hash: "h".into(),
        })
        .await,
    );
    assert!(msg.contains("alice"), "{msg}");
    let other_alice = s
        .create_user(NewUser {
            org_id: other.id,
            username: "alice".into(),
            role: Role::Viewer,
            password_hash: "h".into(),
        })
        .await
        .unwrap();
    assert_eq!(s.count_users().await.unwrap(), 3);

    let found = s.find_user(org.id, "alice").await.unwrap().unwrap();
    assert_eq!(found, alice);
    assert!(!found.disabled);
    assert_eq!(
        s.find_user(other.id, "alice").await.unwrap().unwrap(),
        other_alice
    );
    assert!(s.find_user(other.id, "bob").await.unwrap().is_none());
    assert!(s.find_user(org.id, "carol").await.unwrap().is_none());
    assert_eq!(
        s.find_organisation_by_name("globex").await.unwrap(),
        Some(other.clone())
    );
    assert!(
        s.find_organisation_by_name("GLOBEX")
            .await
            .unwrap()
            .is_none()
    );
    // Neither is "default" and there are two: a sign-in must name its organisation.
    assert_eq!(s.default_organisation().await.unwrap(), None);
    let default = s.create_organisation("default").await.unwrap();
    assert_eq!(s.default_organisation().await.unwrap(), Some(default));
    s.delete_user(other.id, other_alice.id).await.unwrap();
    assert_eq!(s.get_user(org.id, bob.id).await.unwrap(), bob);
    let names: Vec<_> = s
        .list_users(org.id)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.username)
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    assert!(s.list_users(other.id).await.unwrap().is_empty());

    assert_eq!(
        s.set_user_role(org.id, bob.id, Role::Operator)
            .await
            .unwrap()
            .role,
        Role::Operator
    );
    assert!(
        s.set_user_disabled(org.id, bob.id, true)
            .await
            .unwrap()
            .disabled
    );
    s.set_user_password_hash(org.id, bob.id, "new-hash")
        .await
        .unwrap();
    assert_eq!(
        s.get_user(org.id, bob.id).await.unwrap().password_hash,
        "new-hash"
    );

    // Another organisation sees nothing and changes nothing.
    assert!(is_not_found(s.get_user(other.id, bob.id).await));
    assert!(is_not_found(
        s.set_user_role(other.id, bob.id, Role::Admin).await
    ));
    assert!(is_not_found(
        s.set_user_disabled(other.id, bob.id, false).await
    ));
    assert!(is_not_found(
        s.set_user_password_hash(other.id, bob.id, "x").await
    ));
    assert!(is_not_found(s.delete_user(other.id, bob.id).await));
    assert!(is_not_found(s.get_user(org.id, UserId::new()).await));
    assert_eq!(
        s.get_user(org.id, bob.id).await.unwrap().role,
        Role::Operator
    );

    // Tokens.
    let token = s
        .create_api_token(NewApiToken {
            org_id: org.id,
            name: "ci".into(),
            role: Role::Operator,
            token_hash: "ab".repeat(32),
            created_by: Some(alice.id),
            expires_at: Some(t(60)),
        })
        .await
        .unwrap();
    let msg = conflict(
        s.create_api_token(NewApiToken {
            org_id: other.id,
            name: "dup".into(),
            role: Role::Viewer,
            token_hash: "ab".repeat(32),
            created_by: None,
            expires_at: None,
        })
        .await,
    );
    assert!(msg.contains("hash"), "{msg}");
    let found = s
        .find_api_token_by_hash(&"ab".repeat(32))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found, token);
    assert_eq!(found.expires_at, Some(t(60)));
    assert!(
        s.find_api_token_by_hash(&"cd".repeat(32))
            .await
            .unwrap()
            .is_none()
    );
    s.touch_api_token(token.id, t(5)).await.unwrap();
    assert!(is_not_found(s.touch_api_token(TokenId::new(), t(5)).await));
    let listed = s.list_api_tokens(org.id).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].last_used_at, Some(t(5)));
    assert!(s.list_api_tokens(other.id).await.unwrap().is_empty());
    assert!(is_not_found(s.delete_api_token(other.id, token.id).await));

    // Deleting the creator keeps the token; deleting the token removes it.
    s.delete_user(org.id, alice.id).await.unwrap();
    assert!(is_not_found(s.get_user(org.id, alice.id).await));
    let kept = s
        .find_api_token_by_hash(&"ab".repeat(32))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(kept.created_by, None);
    s.delete_api_token(org.id, token.id).await.unwrap();
    assert!(
        s.find_api_token_by_hash(&"ab".repeat(32))
            .await
            .unwrap()
            .is_none()
    );
    assert!(is_not_found(s.delete_api_token(org.id, token.id).await));
}
both!(accounts_crud_and_isolation, accounts);

// ---------------------------------------------------------------- routers and sites

async fn routers(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;

    // Regions: upsert by name.
    let again = s
        .upsert_region(NewRegion {
            name: "eu".into(),
            entry_point: "eu2.example.net".into(),
            port_min: 41000,
            port_max: 41010,
        })
        .await
        .unwrap();
    assert_eq!(again.id, w.region.id);
    assert_eq!(
        (again.entry_point.as_str(), again.port_min, again.port_max),
        ("eu2.example.net", 41000, 41010)
    );
    assert_eq!(s.get_region(w.region.id).await.unwrap(), again);
    assert_eq!(
        s.find_region_by_name("eu").await.unwrap(),
        Some(again.clone())
    );
    assert!(s.find_region_by_name("us").await.unwrap().is_none());
    assert_eq!(s.list_regions().await.unwrap(), vec![again]);
    conflict(
        s.upsert_region(NewRegion {
            name: "x".into(),
            entry_point: "x".into(),
            port_min: 10,
            port_max: 9,
        })
        .await,
    );

    // The router made its site, named after it.
    let r = &w.router;
    assert_eq!(r.status, RouterStatus::Unknown);
    assert_eq!((r.api_port, r.ssh_port, r.winbox_port), (8728, 22, 8291));
    let (site, routers) = s.get_site(w.org, r.site_id).await.unwrap();
    assert_eq!(site.name, "core-1");
    assert_eq!(routers, vec![r.clone()]);

    // A router in a named, new site; then a site that already has a router.
    let mut second = new_router(w.org, &w.region, "edge-1", "pw2");
    second.site_name = Some("Branch".into());
    let edge = s.create_router(second).await.unwrap();
    let mut third = new_router(w.org, &w.region, "edge-2", "pw3");
    third.site_name = Some("Branch".into());
    let msg = conflict(s.create_router(third).await);
    assert!(msg.contains("Branch"), "{msg}");
    let msg = conflict(
        s.create_router(new_router(w.org, &w.region, "core-1", "pw"))
            .await,
    );
    assert!(msg.contains("core-1"), "{msg}");
    // Same name in another organisation is fine (the world made "theirs" there).
    s.create_router(new_router(w.other, &w.region, "core-1", "pw"))
        .await
        .unwrap();

    let sites = s.list_sites(w.org).await.unwrap();
    let summary: Vec<_> = sites
        .iter()
        .map(|(s, r)| (s.name.as_str(), r.len()))
        .collect();
    assert_eq!(summary, [("Branch", 1), ("core-1", 1)]);
    assert_eq!(sites[0].1[0].id, edge.id);
    let names: Vec<_> = s
        .list_routers(w.org)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["core-1", "edge-1"]);

    // Update and facts.
    let patched = s
        .update_router(
            w.org,
            r.id,
            RouterPatch {
                name: Some("core-one".into()),
                api_port: Some(8729),
                ..RouterPatch::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (patched.name.as_str(), patched.api_port, patched.ssh_port),
        ("core-one", 8729, 22)
    );
    let msg = conflict(
        s.update_router(
            w.org,
            r.id,
            RouterPatch {
                name: Some("edge-1".into()),
                ..RouterPatch::default()
            },
        )
        .await,
    );
    assert!(msg.contains("edge-1"), "{msg}");
    s.set_router_facts(
        r.id,
        RouterFacts {
            status: RouterStatus::Online,
            identity: Some("MikroTik".into()),
            routeros_version: Some("7.16.1".into()),
            board_name: Some("RB5009".into()),
            uptime: Some("1d2h3m4s".into()),
            last_seen_at: Some(t(1)),
        },
    )
    .await
    .unwrap();
    s.set_router_facts(
        r.id,
        RouterFacts {
            status: RouterStatus::Offline,
            identity: None,
            routeros_version: None,
            board_name: None,
            uptime: None,
            last_seen_at: None,
        },
    )
    .await
    .unwrap();
    let got = s.get_router(w.org, r.id).await.unwrap();
    assert_eq!(got.status, RouterStatus::Offline);
    assert_eq!(got.routeros_version.as_deref(), Some("7.16.1"));
    assert_eq!(got.uptime.as_deref(), Some("1d2h3m4s"));
    assert_eq!(got.board_name.as_deref(), Some("RB5009"));
    assert_eq!(got.last_seen_at, Some(t(1)));
    assert!(is_not_found(
        s.set_router_facts(
            RouterId::new(),
            RouterFacts {
                status: RouterStatus::Online,
                identity: None,
                routeros_version: None,
                board_name: None,
                uptime: None,
                last_seen_at: None
            }
        )
        .await
    ));

    // Another organisation: NotFound on every router and site method.
    assert!(is_not_found(s.get_router(w.other, r.id).await));
    assert!(is_not_found(
        s.update_router(w.other, r.id, RouterPatch::default()).await
    ));
    assert!(is_not_found(s.delete_router(w.other, r.id).await));
    assert!(is_not_found(s.get_site(w.other, r.site_id).await));
    assert!(is_not_found(s.get_site(w.org, SiteId::new()).await));
    assert!(
        s.list_routers(w.other)
            .await
            .unwrap()
            .iter()
            .all(|x| x.org_id == w.other)
    );
    assert!(
        s.list_sites(w.other)
            .await
            .unwrap()
            .iter()
            .all(|(x, _)| x.org_id == w.other)
    );
    assert_eq!(s.get_router(w.org, r.id).await.unwrap().name, "core-one");

    // Delete: gone, its site stays.
    s.delete_router(w.org, edge.id).await.unwrap();
    assert!(is_not_found(s.get_router(w.org, edge.id).await));
    let (_, left) = s.get_site(w.org, edge.site_id).await.unwrap();
    assert!(left.is_empty());
}
both!(routers_sites_regions, routers);

// ---------------------------------------------------------------- secrets

async fn secrets(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let raw = ctx
        .raw_bytes(
            "SELECT password FROM routers WHERE id = $1",
            &w.router.id.to_string(),
        )
        .await;
    assert!(raw.len() >= 12 + "router-pw-1".len() + 16);
    assert!(
        !raw.windows(11).any(|x| x == b"router-pw-1"),
        "plaintext at rest"
    );
    assert_eq!(
        s.router_password(w.router.id).await.unwrap().expose(),
        "router-pw-1"
    );
    assert_eq!(
        format!("{:?}", s.router_password(w.router.id).await.unwrap()),
        "Secret(<redacted>)"
    );

    // A new password replaces the old one, encrypted too.
    s.update_router(
        w.org,
        w.router.id,
        RouterPatch {
            password: Some("router-pw-2".into()),
            ..RouterPatch::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        s.router_password(w.router.id).await.unwrap().expose(),
        "router-pw-2"
    );

    let grant = s
        .create_access(new_access(&w, &[40001], false))
        .await
        .unwrap();
    let raw = ctx
        .raw_bytes(
            "SELECT password FROM transient_access WHERE id = $1",
            &grant.id.to_string(),
        )
        .await;
    assert!(
        !raw.windows(15).any(|x| x == b"grant-secret-pw"),
        "plaintext at rest"
    );
    assert_eq!(
        s.access_password(grant.id).await.unwrap().expose(),
        "grant-secret-pw"
    );
    assert!(is_not_found(s.access_password(AccessId::new()).await));
    assert!(is_not_found(s.router_password(RouterId::new()).await));

    // A ciphertext copied to another row does not decrypt there.
    ctx.exec(
        "UPDATE routers SET password = (SELECT password FROM routers WHERE id = $1) WHERE id = $2",
        &[&w.router.id.to_string(), &w.foreign.id.to_string()],
    )
    .await;
    assert!(matches!(
        s.router_password(w.foreign.id).await,
        Err(StoreError::Crypto)
    ));

    // Another key cannot read them.
    let wrong = ctx.reopen([1u8; 32]).await;
    assert!(matches!(
        wrong.router_password(w.router.id).await,
        Err(StoreError::Crypto)
    ));
    assert!(matches!(
        wrong.access_password(grant.id).await,
        Err(StoreError::Crypto)
    ));
    wrong.close().await;
    let right = ctx.reopen(KEY).await;
    assert_eq!(
        right.router_password(w.router.id).await.unwrap().expose(),
        "router-pw-2"
    );
    right.close().await;
}
both!(secrets_encrypted_at_rest, secrets);

// ---------------------------------------------------------------- grants

async fn access_life_cycle(ctx: &Ctx) {
    use GrantStatus::*;
    let s = &ctx.store;
    let w = world(s).await;
    let g = s
        .create_access(new_access(&w, &[40005, 40006], true))
        .await
        .unwrap();
    assert_eq!(
        (g.status, g.port, g.created_at, g.expires_at),
        (Requested, 40005, t(0), t(120))
    );
    assert_eq!(s.get_access(w.org, w.router.id, g.id).await.unwrap(), g);
    assert_eq!(
        s.list_access(w.org, w.router.id, ALL).await.unwrap(),
        vec![g.clone()]
    );
    assert_eq!(ctx.count("audit_log").await, 1);
    assert_eq!(ctx.count("jobs").await, 1);

    // Another organisation: NotFound everywhere.
    assert!(is_not_found(s.get_access(w.other, w.router.id, g.id).await));
    assert!(is_not_found(s.get_access(w.org, w.foreign.id, g.id).await));
    assert!(is_not_found(s.list_access(w.other, w.router.id, ALL).await));
    assert!(is_not_found(s.list_access(w.org, w.foreign.id, ALL).await));
    assert!(is_not_found(
        s.set_access_expiry(w.other, w.router.id, g.id, t(30)).await
    ));
    let mut theirs = new_access(&w, &[40050], false);
    theirs.router_id = w.foreign.id;
    assert!(is_not_found(s.create_access(theirs).await));
    assert_eq!(
        s.list_access(w.other, w.foreign.id, ALL).await.unwrap(),
        vec![]
    );

    // Expiry changes while live.
    let g2 = s
        .set_access_expiry(w.org, w.router.id, g.id, t(300))
        .await
        .unwrap();
    assert_eq!(g2.expires_at, t(300));

    // Transitions: invalid ones and stale compare-and-set are refused, changing nothing.
    conflict(
        s.transition_access(g.id, &[Requested], Active, t(1), None)
            .await,
    );
    conflict(
        s.transition_access(g.id, &[Provisioning], Active, t(1), None)
            .await,
    );
    conflict(
        s.transition_access(g.id, &[Requested], Expired, t(1), None)
            .await,
    );
    assert!(is_not_found(
        s.transition_access(AccessId::new(), &[Requested], Provisioning, t(1), None)
            .await
    ));
    assert_eq!(
        s.get_access(w.org, w.router.id, g.id).await.unwrap().status,
        Requested
    );

    let p = s
        .transition_access(g.id, &[Requested], Provisioning, t(1), None)
        .await
        .unwrap();
    assert_eq!(p.status, Provisioning);
    let a = s
        .transition_access(g.id, &[Provisioning], Active, t(2), None)
        .await
        .unwrap();
    assert_eq!(
        (a.status, a.ended_at, a.revoked_early),
        (Active, None, false)
    );
    assert!(s.set_access_authorized(g.id, t(3)).await.unwrap());
    assert!(!s.set_access_authorized(g.id, t(4)).await.unwrap());
    assert!(is_not_found(
        s.set_access_authorized(AccessId::new(), t(4)).await
    ));
    assert_eq!(
        s.get_access(w.org, w.router.id, g.id)
            .await
            .unwrap()
            .authorized_at,
        Some(t(3))
    );

    // Revoke early: closing keeps the port, revoked releases it.
    let c = s
        .transition_access(
            g.id,
            &[Requested, Provisioning, Active],
            Closing,
            t(10),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (c.status, c.revoked_early, c.ended_at),
        (Closing, true, None)
    );
    let msg = conflict(s.set_access_expiry(w.org, w.router.id, g.id, t(500)).await);
    assert!(msg.contains("closing"), "{msg}");
    let live: Vec<_> = s
        .list_live_access()
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(live, vec![g.id]);
    let mut blocked = new_access(&w, &[40005], false);
    blocked.username = "other".into();
    conflict(s.create_access(blocked).await);

    let r = s
        .transition_access(g.id, &[Closing], Revoked, t(11), None)
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.revoked_early, r.ended_at),
        (Revoked, true, Some(t(11)))
    );
    conflict(
        s.transition_access(g.id, &[Revoked], Closing, t(12), None)
            .await,
    );
    assert!(s.list_live_access().await.unwrap().is_empty());
    let again = s
        .create_access(new_access(&w, &[40005], false))
        .await
        .unwrap();
    assert_eq!(again.port, 40005, "a final grant's port is free again");

    // Expiry at its time: closing then expired, not early.
    s.transition_access(again.id, &[Requested], Provisioning, t(1), None)
        .await
        .unwrap();
    s.transition_access(again.id, &[Provisioning], Active, t(1), None)
        .await
        .unwrap();
    let c = s
        .transition_access(again.id, &[Active], Closing, t(120), None)
        .await
        .unwrap();
    assert!(!c.revoked_early);
    let e = s
        .transition_access(again.id, &[Closing], Expired, t(121), None)
        .await
        .unwrap();
    assert_eq!((e.status, e.revoked_early), (Expired, false));

    // Failure keeps its reason.
    let f = s
        .create_access(new_access(&w, &[40007], false))
        .await
        .unwrap();
    let f = s
        .transition_access(
            f.id,
            &[Requested],
            Failed,
            t(1),
            Some("router unreachable".into()),
        )
        .await
        .unwrap();
    assert_eq!(
        (f.status, f.failure_reason.as_deref(), f.ended_at),
        (Failed, Some("router unreachable"), Some(t(1)))
    );

    // Newest first.
    let listed: Vec<_> = s
        .list_access(w.org, w.router.id, ALL)
        .await
        .unwrap()
        .into_iter()
        .map(|x| x.id)
        .collect();
    assert_eq!(listed.len(), 3);
    assert!(listed.contains(&g.id) && listed.contains(&again.id) && listed.contains(&f.id));
}
both!(access_life_cycle_and_isolation, access_life_cycle);

async fn forwards(ctx: &Ctx) {
    use GrantStatus::*;
    let s = &ctx.store;
    let w = world(s).await;
    let f = s
        .create_forward(new_forward(&w, &[40010, 40011], &[50000, 50001]))
        .await
        .unwrap();
    assert_eq!(
        (f.port, f.router_port, f.status, f.dst_port),
        (40010, 50000, Requested, 22)
    );
    assert_eq!(f.dst_address.to_string(), "192.168.88.43");
    assert_eq!(f.allow_from.to_string(), "198.51.100.0/24");
    assert_eq!(s.get_forward(w.org, w.router.id, f.id).await.unwrap(), f);
    assert!(is_not_found(
        s.get_forward(w.other, w.router.id, f.id).await
    ));
    assert!(is_not_found(
        s.list_forwards(w.other, w.router.id, ALL).await
    ));
    assert!(is_not_found(
        s.set_forward_expiry(w.other, w.router.id, f.id, t(60))
            .await
    ));
    assert!(is_not_found(
        s.get_forward(w.org, w.router.id, ForwardId::new()).await
    ));
    let mut theirs = new_forward(&w, &[40090], &[50090]);
    theirs.router_id = w.foreign.id;
    assert!(is_not_found(s.create_forward(theirs).await));

    // Access and forwards share the region's gateway ports; router ports are per router.
    let a = s
        .create_access(new_access(&w, &[40010, 40011], false))
        .await
        .unwrap();
    assert_eq!(a.port, 40011);
    let f2 = s
        .create_forward(new_forward(&w, &[40010, 40011, 40012], &[50000, 50001]))
        .await
        .unwrap();
    assert_eq!((f2.port, f2.router_port), (40012, 50001));
    let mut elsewhere = new_forward(&w, &[40013], &[50000]);
    elsewhere.org_id = w.other;
    elsewhere.router_id = w.foreign.id;
    elsewhere.audit.org_id = w.other;
    elsewhere.job = None;
    assert_eq!(
        s.create_forward(elsewhere).await.unwrap().router_port,
        50000
    );
    let msg = conflict(
        s.create_forward(new_forward(&w, &[40014], &[50000, 50001]))
            .await,
    );
    assert!(msg.contains("router"), "{msg}");

    let g = s
        .set_forward_expiry(w.org, w.router.id, f.id, t(60))
        .await
        .unwrap();
    assert_eq!(g.expires_at, t(60));
    s.transition_forward(f.id, &[Requested], Closing, t(5), None)
        .await
        .unwrap();
    assert_eq!(s.list_live_forwards().await.unwrap().len(), 3);
    let r = s
        .transition_forward(f.id, &[Closing], Revoked, t(6), None)
        .await
        .unwrap();
    assert_eq!((r.status, r.revoked_early), (Revoked, true));
    assert!(s.set_forward_authorized(f2.id, t(7)).await.unwrap());
    // Both of its ports are free again.
    let f3 = s
        .create_forward(new_forward(&w, &[40010], &[50000]))
        .await
        .unwrap();
    assert_eq!((f3.port, f3.router_port), (40010, 50000));
    assert_eq!(
        s.list_forwards(w.org, w.router.id, ALL)
            .await
            .unwrap()
            .len(),
        3
    );
}
both!(forwards_and_shared_ports, forwards);

async fn concurrent_ports(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let candidates: Vec<u16> = (40000..40012).collect();
    // 16 creates race for 12 ports, all trying them in the same order.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let s = s.clone();
            let new = if i % 2 == 0 {
                Either::A(new_access(&w, &candidates, true))
            } else {
                Either::F(new_forward(&w, &candidates, &[50000 + i]))
            };
            tokio::spawn(async move {
                match new {
                    Either::A(n) => s.create_access(n).await.map(|g| g.port),
                    Either::F(n) => s.create_forward(n).await.map(|g| g.port),
                }
            })
        })
        .collect();
    let mut ports = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(port) => ports.push(port),
            Err(StoreError::Conflict(_)) => conflicts += 1,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    let unique: HashSet<_> = ports.iter().collect();
    assert_eq!(
        unique.len(),
        ports.len(),
        "a port was given twice: {ports:?}"
    );
    assert_eq!((ports.len(), conflicts), (12, 4));
    assert_eq!(ctx.count("gateway_ports").await, 12);
    assert_eq!(ctx.count("audit_log").await, 12);
    assert_eq!(ctx.count("jobs").await, 12);
}
both!(ports_unique_under_concurrency, concurrent_ports);

enum Either {
    A(NewAccess),
    F(NewForward),
}

async fn no_half_made(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    s.create_access(new_access(&w, &[40001], true))
        .await
        .unwrap();
    let before = (
        ctx.count("transient_access").await,
        ctx.count("transient_forwards").await,
        ctx.count("gateway_ports").await,
        ctx.count("router_ports").await,
        ctx.count("audit_log").await,
        ctx.count("jobs").await,
    );
    assert_eq!(before, (1, 0, 1, 0, 1, 1));

    // All candidate ports taken.
    let msg = conflict(s.create_access(new_access(&w, &[40001], true)).await);
    assert!(msg.contains("port"), "{msg}");
    conflict(s.create_access(new_access(&w, &[], true)).await);
    // Gateway port free, router ports all taken: the gateway port claim is undone.
    s.create_forward(new_forward(&w, &[40002], &[50000]))
        .await
        .unwrap();
    let mut after = before;
    after.1 += 1;
    after.2 += 1;
    after.3 += 1;
    after.4 += 1;
    after.5 += 1;
    conflict(s.create_forward(new_forward(&w, &[40003], &[50000])).await);
    // The last step fails: a job for a router that does not exist.
    let mut broken = new_access(&w, &[40004], true);
    broken.job.as_mut().unwrap().router_id = RouterId::new();
    assert!(is_not_found(s.create_access(broken).await));
    // Or a job for another organisation's router.
    let mut sneaky = new_access(&w, &[40004], true);
    sneaky.job.as_mut().unwrap().router_id = w.foreign.id;
    assert!(is_not_found(s.create_access(sneaky).await));
    let now = (
        ctx.count("transient_access").await,
        ctx.count("transient_forwards").await,
        ctx.count("gateway_ports").await,
        ctx.count("router_ports").await,
        ctx.count("audit_log").await,
        ctx.count("jobs").await,
    );
    assert_eq!(now, after, "a failed create left rows behind");
    // Its port was not kept either.
    assert_eq!(
        s.create_access(new_access(&w, &[40004], false))
            .await
            .unwrap()
            .port,
        40004
    );
}
both!(failed_create_leaves_nothing, no_half_made);

/// What each of the grouped creates should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Port(u16),
    OneOf,
    Gone,
}

/// 50 creates at once, some bound to fail: on SQLite they are committed in a few
/// grouped transactions (a savepoint each), on PostgreSQL side by side; either way each
/// caller gets its own answer, no port is shared, a failed create leaves nothing and a
/// successful one has its audit entry and job.
async fn grouped_creates(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let before = s.write_stats();
    let mut tasks = Vec::new();
    for i in 0..50u16 {
        let s = s.clone();
        let (new, expect) = match i {
            // Ports of their own.
            0..30 => (
                Either::A(new_access(&w, &[40020 + i], true)),
                Expect::Port(40020 + i),
            ),
            // Six want the same only port: one gets it.
            30..36 => (Either::A(new_access(&w, &[40060], true)), Expect::OneOf),
            // A router that does not exist.
            36..40 => {
                let mut n = new_access(&w, &[40070 + i - 36], true);
                n.router_id = RouterId::new();
                n.job.as_mut().unwrap().router_id = n.router_id;
                (Either::A(n), Expect::Gone)
            }
            // A job for another organisation's router: fails after its port was claimed.
            40..44 => {
                let mut n = new_access(&w, &[40080 + i - 40], true);
                n.job.as_mut().unwrap().router_id = w.foreign.id;
                (Either::A(n), Expect::Gone)
            }
            // Six forwards with ports of their own but one router port: one gets it.
            _ => (
                Either::F(new_forward(&w, &[40090 + i - 44], &[50000])),
                Expect::OneOf,
            ),
        };
        let mut new = new;
        let details = json!({ "i": i });
        match &mut new {
            Either::A(n) => n.audit.details = details,
            Either::F(n) => n.audit.details = details,
        }
        tasks.push((
            i,
            expect,
            tokio::spawn(async move {
                match new {
                    Either::A(n) => s.create_access(n).await.map(|g| (g.id.to_string(), g.port)),
                    Either::F(n) => s
                        .create_forward(n)
                        .await
                        .map(|g| (g.id.to_string(), g.port)),
                }
            }),
        ));
    }
    let mut made = Vec::new();
    let mut one_of: [(u32, u32); 2] = [(0, 0); 2];
    for (i, expect, task) in tasks {
        let got = task.await.unwrap();
        match (expect, got) {
            (Expect::Port(want), Ok((id, port))) => {
                assert_eq!(port, want, "create {i}");
                made.push((i, id, port));
            }
            (Expect::OneOf, Ok((id, port))) => {
                one_of[usize::from(i >= 44)].0 += 1;
                made.push((i, id, port));
            }
            (Expect::OneOf, Err(StoreError::Conflict(msg))) => {
                assert!(msg.contains("port"), "create {i}: {msg}");
                one_of[usize::from(i >= 44)].1 += 1;
            }
            (Expect::Gone, Err(StoreError::NotFound)) => {}
            (expect, got) => panic!("create {i}: expected {expect:?}, got {got:?}"),
        }
    }
    let writes = s.write_stats().writes - before.writes;
    assert_eq!(one_of, [(1, 5), (1, 5)], "one winner per contested port");
    assert_eq!(made.len(), 32);
    let ports: HashSet<u16> = made.iter().map(|(_, _, p)| *p).collect();
    assert_eq!(ports.len(), made.len(), "a port was given twice");

    // Exactly the successful creates left rows, each with its audit entry and job.
    assert_eq!(ctx.count("gateway_ports").await, 32);
    assert_eq!(ctx.count("router_ports").await, 1);
    assert_eq!(ctx.count("transient_access").await, 31);
    assert_eq!(ctx.count("transient_forwards").await, 1);
    assert_eq!(ctx.count("jobs").await, 32);
    let audited: HashSet<u64> = s
        .list_audit(
            w.org,
            Page {
                limit: 1000,
                offset: 0,
            },
        )
        .await
        .unwrap()
        .iter()
        .filter_map(|a| a.details.get("i").and_then(|i| i.as_u64()))
        .collect();
    let expected: HashSet<u64> = made.iter().map(|(i, _, _)| u64::from(*i)).collect();
    assert_eq!(audited, expected);
    for (i, id, _) in &made {
        assert!(
            s.has_open_grant_job(id, "").await.unwrap(),
            "create {i} has no job"
        );
    }
    // A failed create's port was not kept: the others' ports are free.
    for port in [40070, 40080, 40081, 40082, 40083] {
        assert_eq!(
            s.create_access(new_access(&w, &[port], false))
                .await
                .unwrap()
                .port,
            port
        );
    }

    match s.backend() {
        Backend::Sqlite => {
            eprintln!("50 grouped creates: {writes} write transactions");
            assert!(
                writes < 25,
                "50 creates took {writes} write transactions: not grouped"
            );
        }
        Backend::Postgres => assert_eq!(writes, 0, "PostgreSQL's writers are not counted"),
    }
}
both!(grouped_creates_answer_each_caller, grouped_creates);

/// Callers that go away while their creates are queued (a closed HTTP request) do not
/// fail the others': each create is whole or absent, and the store goes on.
async fn abandoned_creates(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let tasks: Vec<_> = (0..30u16)
        .map(|i| {
            let s = s.clone();
            let n = new_access(&w, &[40020 + i], true);
            tokio::spawn(async move { s.create_access(n).await })
        })
        .collect();
    for (i, task) in tasks.iter().enumerate() {
        if i % 3 == 1 {
            task.abort();
        }
    }
    let mut answered = 0;
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(created) => {
                created.unwrap();
                answered += 1;
            }
            Err(e) => assert!(e.is_cancelled() && i % 3 == 1, "create {i}: {e}"),
        }
    }
    assert!(
        answered >= 20,
        "only {answered} of the kept creates were answered"
    );
    let grants = ctx.count("transient_access").await;
    assert!(grants >= answered);
    for table in ["gateway_ports", "audit_log", "jobs"] {
        assert_eq!(
            ctx.count(table).await,
            grants,
            "{table}: a half-made create"
        );
    }
    s.create_access(new_access(&w, &[40090], false))
        .await
        .unwrap();
}
both!(abandoned_creates_leave_the_others_whole, abandoned_creates);

/// A close as a revoke makes it: from any live status, with the revoke's audit entry.
async fn revoke(s: &Store, id: AccessId, org: OrgId, i: u16) -> Result<(OrgId, RouterId)> {
    let mut entry = audit(org, "access.revoke", t(5));
    entry.details = json!({ "close": i });
    s.close_grant(
        GrantKey::Access(id),
        &[
            GrantStatus::Requested,
            GrantStatus::Provisioning,
            GrantStatus::Active,
        ],
        t(5),
        (".create", "superseded"),
        &ClosingJob {
            kind: "access.end".into(),
            payload: json!({ "reason": "revoked" }),
            max_attempts: 0,
        },
        Some(&entry),
    )
    .await
}

/// The `close` numbers of the audit entries of closes.
async fn closes_audited(s: &Store, org: OrgId) -> HashSet<u64> {
    s.list_audit(
        org,
        Page {
            limit: 1000,
            offset: 0,
        },
    )
    .await
    .unwrap()
    .iter()
    .filter_map(|a| a.details.get("close").and_then(|i| i.as_u64()))
    .collect()
}

/// 30 revokes at once, creates among them, one of a grant already ending: on SQLite
/// they are committed in a few grouped transactions with the creates (a savepoint
/// each); either way that one gets `Conflict` and leaves no trace (no audit entry, no
/// second clean-up job), every other is closing with its clean-up job and its audit
/// entry, written in the same transaction.
async fn grouped_closes(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let mut grants = Vec::new();
    for i in 0..30u16 {
        grants.push(
            s.create_access(new_access(&w, &[40000 + i], true))
                .await
                .unwrap()
                .id,
        );
    }
    // Already ending: its close must be refused.
    revoke(s, grants[7], w.org, 7).await.unwrap();
    let before = s.write_stats();
    let mut tasks = Vec::new();
    for (i, id) in grants.iter().enumerate() {
        let s = s.clone();
        let (id, org) = (*id, w.org);
        tasks.push(tokio::spawn(async move {
            revoke(&s, id, org, 100 + i as u16).await
        }));
    }
    let mut creates = Vec::new();
    for i in 0..10u16 {
        let s = s.clone();
        let n = new_access(&w, &[40050 + i], true);
        creates.push(tokio::spawn(async move { s.create_access(n).await }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        match (i, task.await.unwrap()) {
            (7, Err(StoreError::Conflict(_))) => {}
            (7, got) => panic!("close of an ending grant: {got:?}"),
            (_, Ok((org, router))) => assert_eq!((org, router), (w.org, w.router.id)),
            (i, Err(e)) => panic!("close {i}: {e}"),
        }
    }
    for task in creates {
        task.await.unwrap().unwrap();
    }
    let writes = s.write_stats().writes - before.writes;
    for (i, id) in grants.iter().enumerate() {
        let g = s.get_access(w.org, w.router.id, *id).await.unwrap();
        assert_eq!(g.status, GrantStatus::Closing, "grant {i}");
        assert!(g.revoked_early, "grant {i}");
        assert!(
            s.has_open_grant_job(&id.to_string(), ".end").await.unwrap(),
            "grant {i} has no clean-up job"
        );
    }
    // One audit entry per close that happened: grant 7's first, none for its refusal.
    let expected: HashSet<u64> = (0..30u64)
        .filter(|i| *i != 7)
        .map(|i| 100 + i)
        .chain([7])
        .collect();
    assert_eq!(closes_audited(s, w.org).await, expected);
    // 30 creations' jobs + 10 more, and one clean-up per grant: none twice.
    assert_eq!(ctx.count("jobs").await, 30 + 10 + 30);
    match s.backend() {
        Backend::Sqlite => {
            eprintln!("30 grouped closes and 10 creates: {writes} write transactions");
            assert!(
                writes < 20,
                "30 closes and 10 creates took {writes} write transactions: not grouped"
            );
        }
        Backend::Postgres => assert_eq!(writes, 0, "PostgreSQL's writers are not counted"),
    }
}
both!(grouped_closes_answer_each_caller, grouped_closes);

/// Revokes whose callers go away while queued: each close is whole (closing, clean-up
/// job, audit entry) or absent, and an absent one can still be made.
async fn abandoned_closes(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let mut grants = Vec::new();
    for i in 0..30u16 {
        grants.push(
            s.create_access(new_access(&w, &[40000 + i], false))
                .await
                .unwrap()
                .id,
        );
    }
    let tasks: Vec<_> = grants
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let s = s.clone();
            let (id, org) = (*id, w.org);
            tokio::spawn(async move { revoke(&s, id, org, i as u16).await })
        })
        .collect();
    for (i, task) in tasks.iter().enumerate() {
        if i % 3 == 1 {
            task.abort();
        }
    }
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(closed) => {
                closed.unwrap();
            }
            Err(e) => assert!(e.is_cancelled() && i % 3 == 1, "close {i}: {e}"),
        }
    }
    let audited = closes_audited(s, w.org).await;
    for (i, id) in grants.iter().enumerate() {
        let status = s.get_access(w.org, w.router.id, *id).await.unwrap().status;
        let job = s.has_open_grant_job(&id.to_string(), ".end").await.unwrap();
        let entry = audited.contains(&(i as u64));
        match status {
            GrantStatus::Closing => assert!(job && entry, "close {i}: half made"),
            GrantStatus::Requested => {
                assert!(i % 3 == 1 && !job && !entry, "close {i}: half made");
                revoke(s, *id, w.org, i as u16).await.unwrap();
            }
            other => panic!("close {i}: {other}"),
        }
    }
}
both!(abandoned_closes_leave_the_others_whole, abandoned_closes);

async fn delete_router_rules(ctx: &Ctx) {
    use GrantStatus::*;
    let s = &ctx.store;
    let w = world(s).await;
    let g = s
        .create_access(new_access(&w, &[40001], true))
        .await
        .unwrap();
    let msg = conflict(s.delete_router(w.org, w.router.id).await);
    assert!(msg.contains("live"), "{msg}");
    s.transition_access(g.id, &[Requested], Closing, t(1), None)
        .await
        .unwrap();
    s.transition_access(g.id, &[Closing], Revoked, t(2), None)
        .await
        .unwrap();
    let f = s
        .create_forward(new_forward(&w, &[40002], &[50000]))
        .await
        .unwrap();
    conflict(s.delete_router(w.org, w.router.id).await);
    s.transition_forward(f.id, &[Requested], Failed, t(1), None)
        .await
        .unwrap();
    s.append_audit(audit(w.org, "router.delete", t(3)))
        .await
        .unwrap();

    s.delete_router(w.org, w.router.id).await.unwrap();
    assert!(is_not_found(s.get_router(w.org, w.router.id).await));
    assert!(is_not_found(s.list_access(w.org, w.router.id, ALL).await));
    assert_eq!(ctx.count("transient_access").await, 0);
    assert_eq!(ctx.count("jobs").await, 0);
    assert_eq!(ctx.count("gateway_ports").await, 0);
    // The audit log is not touched.
    assert_eq!(ctx.count("audit_log").await, 3);
    assert!(is_not_found(s.delete_router(w.org, w.router.id).await));
}
both!(router_delete_needs_no_live_grants, delete_router_rules);

// ---------------------------------------------------------------- jobs and audit

async fn jobs_and_audit(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let job = s
            .create_job(new_job(w.org, w.router.id, t(i)))
            .await
            .unwrap();
        assert_eq!(
            (job.state, job.attempts, job.max_attempts),
            (JobState::Pending, 0, 5)
        );
        assert_eq!(s.get_job(job.id).await.unwrap(), job);
        ids.push(job.id);
    }
    for n in 1..=3u32 {
        let seq = s
            .append_job_line(ids[1], t(10 + i64::from(n)), &format!("step {n}"))
            .await
            .unwrap();
        assert_eq!(seq, n);
    }
    assert_eq!(s.append_job_line(ids[4], t(20), "only").await.unwrap(), 1);
    assert!(is_not_found(
        s.append_job_line(JobId::new(), t(20), "x").await
    ));
    assert!(is_not_found(s.get_job(JobId::new()).await));
    assert!(is_not_found(
        s.create_job(new_job(w.org, w.foreign.id, t(0))).await
    ));
    assert!(is_not_found(
        s.create_job(new_job(w.org, RouterId::new(), t(0))).await
    ));

    let all = s
        .list_jobs(
            w.org,
            w.router.id,
            Page {
                limit: 10,
                offset: 0,
            },
        )
        .await
        .unwrap();
    let order: Vec<_> = all.iter().map(|(j, _)| j.id).collect();
    let newest_first: Vec<_> = ids.iter().rev().copied().collect();
    assert_eq!(order, newest_first);
    assert_eq!(
        all[0]
            .1
            .iter()
            .map(|l| l.message.as_str())
            .collect::<Vec<_>>(),
        ["only"]
    );
    let lines: Vec<_> = all[3]
        .1
        .iter()
        .map(|l| (l.seq, l.message.as_str(), l.at))
        .collect();
    assert_eq!(
        lines,
        [
            (1, "step 1", t(11)),
            (2, "step 2", t(12)),
            (3, "step 3", t(13))
        ]
    );
    assert!(all[2].1.is_empty());

    let page = s
        .list_jobs(
            w.org,
            w.router.id,
            Page {
                limit: 2,
                offset: 2,
            },
        )
        .await
        .unwrap();
    let order: Vec<_> = page.iter().map(|(j, _)| j.id).collect();
    assert_eq!(order, [ids[2], ids[1]]);
    assert_eq!(page[1].1.len(), 3);
    assert!(
        s.list_jobs(
            w.org,
            w.router.id,
            Page {
                limit: 2,
                offset: 10
            }
        )
        .await
        .unwrap()
        .is_empty()
    );
    assert!(is_not_found(
        s.list_jobs(w.other, w.router.id, Page::default()).await
    ));
    assert!(
        s.list_jobs(w.other, w.foreign.id, Page::default())
            .await
            .unwrap()
            .is_empty()
    );

    // Audit: append-only, newest first, per organisation, paged.
    for i in 0..4 {
        let mut a = audit(w.org, &format!("action.{i}"), t(i));
        a.target = Some(format!("router:{}", w.router.id));
        a.details = json!({"i": i});
        let entry = s.append_audit(a).await.unwrap();
        assert_eq!(entry.at, t(i));
    }
    let mut theirs = audit(w.other, "theirs", t(9));
    theirs.actor_address = None;
    s.append_audit(theirs).await.unwrap();
    let log = s
        .list_audit(
            w.org,
            Page {
                limit: 10,
                offset: 0,
            },
        )
        .await
        .unwrap();
    let actions: Vec<_> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["action.3", "action.2", "action.1", "action.0"]);
    assert_eq!(log[0].details, json!({"i": 3}));
    assert_eq!(log[0].actor_address, Some("203.0.113.7".parse().unwrap()));
    assert_eq!(log[0].actor, "alice");
    assert!(log.windows(2).all(|p| p[0].id > p[1].id));
    let page = s
        .list_audit(
            w.org,
            Page {
                limit: 2,
                offset: 1,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["action.2", "action.1"]
    );
    // Append-only in the database itself.
    for sql in [
        "UPDATE audit_log SET actor = 'mallory'",
        "DELETE FROM audit_log",
    ] {
        let refused = ctx.try_exec(sql).await.unwrap_err();
        assert!(refused.contains("append-only"), "{refused}");
    }
    if ctx.db == Db::Postgres {
        let refused = ctx.try_exec("TRUNCATE audit_log").await.unwrap_err();
        assert!(refused.contains("append-only"), "{refused}");
    }
    assert_eq!(ctx.count("audit_log").await, 5);
    let other = s.list_audit(w.other, Page::default()).await.unwrap();
    assert_eq!((other.len(), other[0].actor_address), (1, None));
}
both!(jobs_and_audit_newest_first, jobs_and_audit);

async fn reopen(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    // Opening again runs the (already applied) migrations and sees the same data.
    s.ping().await.unwrap();
    let (open, idle) = s.pool_connections();
    assert!(open >= 1 && idle <= open as usize);
    let again = ctx.reopen(KEY).await;
    assert_eq!(
        again.get_router(w.org, w.router.id).await.unwrap(),
        w.router
    );
    assert_eq!(
        again.backend(),
        if ctx.db == Db::Sqlite {
            Backend::Sqlite
        } else {
            Backend::Postgres
        }
    );
    again.close().await;
}
both!(reopen_keeps_data, reopen);

#[tokio::test]
async fn bad_urls_are_refused() {
    let config = StoreConfig::new(KEY);
    for url in ["", "mysql://localhost/x", "http://example.invalid/"] {
        assert!(
            matches!(
                Store::open(url, &config).await,
                Err(StoreError::InvalidUrl(_))
            ),
            "{url}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.db");
    let s = Store::open(path.to_str().unwrap(), &config).await.unwrap();
    assert_eq!(s.backend(), Backend::Sqlite);
    s.create_organisation("x").await.unwrap();
    s.close().await;
    assert!(path.exists());
    let url = format!("sqlite://{}", dir.path().join("fresh.db").display());
    let s = Store::open(&url, &config).await.unwrap();
    s.close().await;
    assert!(dir.path().join("fresh.db").exists());
    assert!(
        !format!("{config:?}").contains("42"),
        "the key is not printed"
    );
}

async fn port_order(ctx: &Ctx) {
    use GrantStatus::*;
    let s = &ctx.store;
    let w = world(s).await;
    let candidates: Vec<u16> = (40000..40020).collect();
    let mut grants = Vec::new();
    for _ in 0..10 {
        grants.push(
            s.create_access(new_access(&w, &candidates, false))
                .await
                .unwrap(),
        );
    }
    let ports: Vec<u16> = grants.iter().map(|g| g.port).collect();
    assert_eq!(ports, (40000..40010).collect::<Vec<u16>>());
    // A final grant frees its port for the next create; a closing one does not.
    s.transition_access(grants[3].id, &[Requested], Failed, t(1), None)
        .await
        .unwrap();
    s.transition_access(grants[1].id, &[Requested], Closing, t(1), None)
        .await
        .unwrap();
    assert_eq!(
        s.create_access(new_access(&w, &candidates, false))
            .await
            .unwrap()
            .port,
        40003
    );
    assert_eq!(
        s.create_access(new_access(&w, &candidates, false))
            .await
            .unwrap()
            .port,
        40010
    );
    // Port 0 is never handed out.
    conflict(s.create_access(new_access(&w, &[0, 40000], false)).await);
}
both!(ports_first_free_in_candidate_order, port_order);

async fn hostile_text(ctx: &Ctx) {
    let s = &ctx.store;
    assert!(s.find_user(OrgId::new(), "a\0b").await.unwrap().is_none());
    assert!(s.find_organisation_by_name("a\0b").await.unwrap().is_none());
    assert!(s.find_api_token_by_hash("\0").await.unwrap().is_none());
    assert!(s.find_region_by_name("eu\0").await.unwrap().is_none());
    // Text is bound, never spliced into SQL.
    let org = s
        .create_organisation("o'brien \"&\" co; DROP TABLE users;--")
        .await
        .unwrap();
    let name = "x'); DROP TABLE users;--";
    s.create_user(NewUser {
        org_id: org.id,
        username: name.into(),
        role: Role::Viewer,
        password_hash: "h".into(),
    })
    .await
    .unwrap();
    assert_eq!(
        s.find_user(org.id, name).await.unwrap().unwrap().username,
        name
    );
    assert_eq!(s.get_organisation(org.id).await.unwrap().name, org.name);
    assert_eq!(s.count_users().await.unwrap(), 1);
}
both!(hostile_text_is_harmless, hostile_text);

/// SQLite's migration 100 rebuilds `users`: on a database from before it, users,
/// sessions and tokens survive with their links, and a name may then exist once per
/// organisation.
#[tokio::test]
async fn sqlite_users_rebuild_keeps_sessions_and_tokens() {
    use sqlx::{Connection as _, Executor as _, Row as _};
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("old.db").display());
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    c.execute("PRAGMA foreign_keys = ON").await.unwrap();
    let mut before = Vec::new();
    for entry in
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite")).unwrap()
    {
        let path = entry.unwrap().path();
        before.push(path);
    }
    before.sort();
    // The migrations before 100, then 100 itself (later ones are not this test's).
    let at = before
        .iter()
        .position(|p| p.ends_with("0100_usernames_per_organisation.sql"))
        .unwrap();
    let (earlier, rest) = before.split_at(at);
    let upgrade = &rest[0];
    for path in earlier {
        c.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(
            std::fs::read_to_string(path).unwrap(),
        )))
        .await
        .unwrap();
    }
    c.execute(sqlx::raw_sql(
        "INSERT INTO organisations VALUES ('o1', 'default', 1), ('o2', 'beta', 2); \
         INSERT INTO users VALUES ('u1', 'o1', 'admin', 'admin', 'h', FALSE, 1); \
         INSERT INTO sessions (id_hash, user_id, org_id, csrf_token, created_at, last_seen_at, expires_at) \
             VALUES ('s1', 'u1', 'o1', 'c', 1, 1, 9); \
         INSERT INTO api_tokens (id, org_id, name, role, token_hash, created_by, created_at) \
             VALUES ('t1', 'o1', 'ci', 'admin', 'x', 'u1', 1);",
    ))
    .await
    .unwrap();
    c.execute(sqlx::raw_sql(sqlx::AssertSqlSafe(
        std::fs::read_to_string(upgrade).unwrap(),
    )))
    .await
    .unwrap();
    let count = |sql: &'static str| sqlx::query(sql);
    let n: i64 = count("SELECT COUNT(*) FROM sessions WHERE user_id = 'u1'")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the session survived the rebuild");
    let by: Option<String> = count("SELECT created_by FROM api_tokens WHERE id = 't1'")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert_eq!(by.as_deref(), Some("u1"), "the token still names its maker");
    let broken = count("PRAGMA foreign_key_check")
        .fetch_all(&mut c)
        .await
        .unwrap();
    assert!(broken.is_empty());
    // The same name in another organisation is now allowed, twice in one is not.
    c.execute("INSERT INTO users VALUES ('u2', 'o2', 'admin', 'admin', 'h', FALSE, 2)")
        .await
        .unwrap();
    assert!(
        c.execute("INSERT INTO users VALUES ('u3', 'o1', 'admin', 'admin', 'h', FALSE, 3)")
            .await
            .is_err()
    );
    // Foreign keys are on again, and point at the new table: deleting a user ends its
    // sessions and unlinks its tokens.
    c.execute("DELETE FROM users WHERE id = 'u1'")
        .await
        .unwrap();
    let n: i64 = count("SELECT COUNT(*) FROM sessions")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test]
async fn sqlite_file_uses_wal() {
    use sqlx::{Connection, Row};
    let ctx = Ctx::new(Db::Sqlite).await.unwrap();
    let mut c = sqlx::SqliteConnection::connect(&ctx.url).await.unwrap();
    let mode: String = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&mut c)
        .await
        .unwrap()
        .get(0);
    assert_eq!(mode, "wal");
    ctx.store.close().await;
}

async fn delete_races_create(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    for round in 0..4u16 {
        let router = s
            .create_router(new_router(w.org, &w.region, &format!("race-{round}"), "pw"))
            .await
            .unwrap();
        let creates: Vec<_> = (0..6u16)
            .map(|i| {
                let s = s.clone();
                let mut n = new_access(&w, &[41000 + round * 10 + i], true);
                n.router_id = router.id;
                n.job.as_mut().unwrap().router_id = router.id;
                tokio::spawn(async move { s.create_access(n).await })
            })
            .collect();
        let delete = {
            let s = s.clone();
            let org = w.org;
            tokio::spawn(async move { s.delete_router(org, router.id).await })
        };
        let mut created = 0;
        for c in creates {
            match c.await.unwrap() {
                Ok(_) => created += 1,
                Err(StoreError::NotFound) => {}
                Err(e) => panic!("create: {e}"),
            }
        }
        match delete.await.unwrap() {
            Ok(()) => {
                assert_eq!(
                    created, 0,
                    "round {round}: a grant was created, then lost with its router"
                );
            }
            Err(StoreError::Conflict(_)) => assert!(created > 0, "round {round}"),
            Err(e) => panic!("delete: {e}"),
        }
        let left = s.list_access(w.org, router.id, ALL).await;
        match left {
            Ok(grants) => assert_eq!(grants.len(), created),
            Err(StoreError::NotFound) => assert_eq!(created, 0),
            Err(e) => panic!("{e}"),
        }
    }
}
both!(router_delete_races_grant_create, delete_races_create);

async fn grants_newest_first(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let mut access = Vec::new();
    let mut forwards = Vec::new();
    for i in 1..=3u16 {
        let mut a = new_access(&w, &[40000 + i], false);
        a.audit.at = t(i64::from(i));
        access.push(s.create_access(a).await.unwrap().id);
        let mut f = new_forward(&w, &[40100 + i], &[50000 + i]);
        f.audit.at = t(i64::from(i));
        forwards.push(s.create_forward(f).await.unwrap().id);
    }
    let listed: Vec<_> = s
        .list_access(w.org, w.router.id, ALL)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.id)
        .collect();
    assert_eq!(listed, access.iter().rev().copied().collect::<Vec<_>>());
    let listed: Vec<_> = s
        .list_forwards(w.org, w.router.id, ALL)
        .await
        .unwrap()
        .into_iter()
        .map(|g| g.id)
        .collect();
    assert_eq!(listed, forwards.iter().rev().copied().collect::<Vec<_>>());
    let first = s.get_access(w.org, w.router.id, access[0]).await.unwrap();
    assert_eq!(first.created_at, t(1));
}
both!(grants_listed_newest_first, grants_newest_first);

async fn lists_filter_and_page(ctx: &Ctx) {
    use GrantStatus::*;
    let s = &ctx.store;
    let w = world(s).await;
    // Five access grants at t(1)..t(5): the 1st, 2nd and 4th end (revoked, failed,
    // expired); the 3rd closes; the 5th stays requested.
    let mut ids = Vec::new();
    for i in 1..=5u16 {
        let mut a = new_access(&w, &[40000 + i], false);
        a.audit.at = t(i64::from(i));
        ids.push(s.create_access(a).await.unwrap().id);
    }
    let live = [Requested, Provisioning, Active];
    s.transition_access(ids[0], &live, Closing, t(6), None)
        .await
        .unwrap();
    s.transition_access(ids[0], &[Closing], Revoked, t(6), None)
        .await
        .unwrap();
    s.transition_access(ids[1], &live, Failed, t(6), Some("x".into()))
        .await
        .unwrap();
    s.transition_access(ids[2], &live, Closing, t(6), None)
        .await
        .unwrap();
    s.transition_access(ids[3], &live, Closing, t(6), None)
        .await
        .unwrap();
    s.transition_access(ids[3], &[Closing], Expired, t(7), None)
        .await
        .unwrap();
    let listed = |page: Option<Page>| async move {
        s.list_access(w.org, w.router.id, page)
            .await
            .unwrap()
            .into_iter()
            .map(|g| g.id)
            .collect::<Vec<_>>()
    };
    // Without `ended`: what is not final (closing included), newest first.
    assert_eq!(listed(None).await, vec![ids[4], ids[2]]);
    // With it: the ended ones too, merged newest first.
    assert_eq!(
        listed(ALL).await,
        vec![ids[4], ids[3], ids[2], ids[1], ids[0]]
    );
    // The page applies to the ended ones alone; the live ones are always there.
    let page = |limit, offset| Some(Page { limit, offset });
    assert_eq!(listed(page(1, 0)).await, vec![ids[4], ids[3], ids[2]]);
    assert_eq!(listed(page(1, 1)).await, vec![ids[4], ids[2], ids[1]]);
    assert_eq!(listed(page(2, 2)).await, vec![ids[4], ids[2], ids[0]]);
    assert_eq!(listed(page(5, 3)).await, vec![ids[4], ids[2]]);
    // Forwards alike.
    let f = s
        .create_forward(new_forward(&w, &[40050], &[50001]))
        .await
        .unwrap();
    s.transition_forward(f.id, &live, Failed, t(1), None)
        .await
        .unwrap();
    assert!(
        s.list_forwards(w.org, w.router.id, None)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        s.list_forwards(w.org, w.router.id, ALL).await.unwrap(),
        vec![s.get_forward(w.org, w.router.id, f.id).await.unwrap()]
    );
    // An empty list of a router of another organisation is still NotFound.
    assert!(is_not_found(
        s.list_forwards(w.other, w.router.id, None).await
    ));
}
both!(
    lists_show_live_grants_and_page_ended_ones,
    lists_filter_and_page
);

async fn version_moves(ctx: &Ctx) {
    use GrantStatus::*;
    let s = &ctx.store;
    let w = world(s).await;
    let version = || async {
        s.list_stamp(w.org, w.router.id, None)
            .await
            .unwrap()
            .grants_version
            .unwrap()
    };
    let mut seen = vec![version().await];
    let mut moved = |v: i64, what: &str| {
        assert!(
            v > *seen.last().unwrap(),
            "{what} did not move the version: {seen:?} then {v}"
        );
        seen.push(v);
    };
    let a = s
        .create_access(new_access(&w, &[40001], false))
        .await
        .unwrap();
    moved(version().await, "create_access");
    let f = s
        .create_forward(new_forward(&w, &[40002], &[50001]))
        .await
        .unwrap();
    moved(version().await, "create_forward");
    s.set_access_expiry(w.org, w.router.id, a.id, t(60))
        .await
        .unwrap();
    moved(version().await, "set_access_expiry");
    s.set_forward_expiry(w.org, w.router.id, f.id, t(60))
        .await
        .unwrap();
    moved(version().await, "set_forward_expiry");
    assert!(s.set_access_authorized(a.id, t(1)).await.unwrap());
    moved(version().await, "set_access_authorized");
    assert!(s.set_forward_authorized(f.id, t(1)).await.unwrap());
    moved(version().await, "set_forward_authorized");
    let live = [Requested, Provisioning, Active];
    s.transition_access(a.id, &live, Provisioning, t(2), None)
        .await
        .unwrap();
    moved(version().await, "transition_access");
    s.transition_forward(f.id, &live, Failed, t(2), Some("no route".into()))
        .await
        .unwrap();
    moved(version().await, "transition_forward");
    // Any writer, not only the store's methods: another process with its own SQL.
    ctx.exec(
        "UPDATE transient_access SET failure_reason = 'x' WHERE id = $1",
        &[&a.id.to_string()],
    )
    .await;
    moved(version().await, "a raw update");
    // A refused change moves nothing.
    let before = version().await;
    assert!(s.set_access_authorized(a.id, t(3)).await.is_ok());
    assert!(
        s.transition_forward(f.id, &live, Active, t(3), None)
            .await
            .is_err()
    );
    assert_eq!(version().await, before);
    // Other routers are not touched, and another organisation sees no version.
    let theirs = s.list_stamp(w.other, w.foreign.id, None).await.unwrap();
    assert_eq!(theirs.grants_version, Some(0));
    let hidden = s.list_stamp(w.other, w.router.id, None).await.unwrap();
    assert_eq!(hidden.grants_version, None);
    // The token half of the stamp: there while the token is, gone once it is deleted.
    let token = s
        .create_api_token(NewApiToken {
            org_id: w.org,
            name: "ci".into(),
            role: Role::Operator,
            token_hash: "ab".repeat(32),
            created_by: None,
            expires_at: None,
        })
        .await
        .unwrap();
    let stamp = s
        .list_stamp(w.org, w.router.id, Some(token.id))
        .await
        .unwrap();
    assert!(stamp.token_exists);
    assert!(!hidden.token_exists);
    assert!(s.api_token_exists(token.id).await.unwrap());
    s.delete_api_token(w.org, token.id).await.unwrap();
    let stamp = s
        .list_stamp(w.org, w.router.id, Some(token.id))
        .await
        .unwrap();
    assert!(!stamp.token_exists);
    assert!(!s.api_token_exists(token.id).await.unwrap());
    assert_eq!(stamp.grants_version, Some(before));
}
both!(grants_version_moves_with_every_grant_write, version_moves);

async fn delete_races_end(ctx: &Ctx) {
    use GrantStatus::*;
    let s = &ctx.store;
    let w = world(s).await;
    // A router is deleted while the orchestrator ends its closing grant: one of them
    // wins cleanly, whatever the interleaving (no deadlock, no database error).
    for round in 0..12u16 {
        let router = s
            .create_router(new_router(w.org, &w.region, &format!("end-{round}"), "pw"))
            .await
            .unwrap();
        let mut n = new_access(&w, &[41500 + round], false);
        n.router_id = router.id;
        let g = s.create_access(n).await.unwrap();
        s.transition_access(g.id, &[Requested], Closing, t(1), None)
            .await
            .unwrap();
        let end = {
            let s = s.clone();
            tokio::spawn(async move {
                s.transition_access(g.id, &[Closing], Expired, t(2), None)
                    .await
            })
        };
        let delete = {
            let s = s.clone();
            let org = w.org;
            tokio::spawn(async move { s.delete_router(org, router.id).await })
        };
        match end.await.unwrap() {
            Ok(_) | Err(StoreError::NotFound) => {}
            Err(e) => panic!("round {round}: end: {e}"),
        }
        match delete.await.unwrap() {
            Ok(()) => {}
            Err(e) => panic!("round {round}: delete: {e}"),
        }
        assert!(is_not_found(s.get_router(w.org, router.id).await));
    }
}
both!(router_delete_races_grant_end, delete_races_end);
// Portal sessions, in a file of their own.
#[path = "suites/sessions.rs"]
mod sessions_suite;
// Terminal sessions and recordings, likewise.
#[path = "suites/terminals.rs"]
mod terminals_suite;
// One-time WinBox tickets, likewise.
#[path = "suites/tickets.rs"]
mod tickets_suite;
// The management tunnel's keys, addresses and peers, likewise.
#[path = "suites/tunnels.rs"]
mod tunnels_suite;
// Onboarding's enrolment tokens, likewise.
#[path = "suites/enrollment.rs"]
mod enrollment_suite;
// Regional gateways and the control CA, likewise.
#[path = "suites/gateways.rs"]
mod gateways_suite;

/// Job leasing: one running job per router, in creation order; leases lapse and are
/// taken over; a lost lease cannot finish; back-off, hastening, superseding.
async fn leasing(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let r2 = s
        .create_router(new_router(w.org, &w.region, "core-2", "pw-2"))
        .await
        .unwrap();
    let now = Utc::now();
    let lease = std::time::Duration::from_secs(15);
    let a = s
        .create_job(new_job(w.org, w.router.id, now))
        .await
        .unwrap();
    let b = s
        .create_job(new_job(w.org, w.router.id, now))
        .await
        .unwrap();
    let c = s.create_job(new_job(w.org, r2.id, now)).await.unwrap();
    let claimed = s
        .claim_jobs("w1", now, lease, 10, |j| {
            vec![format!("started, attempt {}", j.attempts)]
        })
        .await
        .unwrap();
    let mut ids: Vec<_> = claimed.iter().map(|j| j.id).collect();
    ids.sort();
    let mut want = vec![a.id, c.id];
    want.sort();
    assert_eq!(ids, want, "the head of each router's queue, not b");
    assert!(claimed.iter().all(|j| j.state == JobState::Running
        && j.attempts == 1
        && j.lease_owner.as_deref() == Some("w1")));
    // b waits for a; nothing else may run.
    assert!(s.claim_job("w2", now, lease).await.unwrap().is_none());
    assert!(
        s.finish_job(c.id, "w1", now, JobOutcome::Completed)
            .await
            .unwrap()
    );
    // a's worker died: once the lease lapses another takes it, and the first cannot
    // renew or finish it any more.
    let later = now + chrono::Duration::seconds(16);
    let again = s.claim_job("w2", later, lease).await.unwrap().unwrap();
    assert_eq!((again.id, again.attempts), (a.id, 2));
    assert!(!s.renew_lease(a.id, "w1", later).await.unwrap());
    assert!(
        !s.finish_job(a.id, "w1", later, JobOutcome::Completed)
            .await
            .unwrap()
    );
    assert!(
        s.renew_lease(a.id, "w2", later + chrono::Duration::seconds(15))
            .await
            .unwrap()
    );
    // A retry puts it back, due later; it stays the head, so b still waits.
    let retry_at = later + chrono::Duration::seconds(4);
    assert!(
        s.finish_job_with_lines(
            a.id,
            "w2",
            later,
            JobOutcome::Retry {
                run_after: retry_at,
                error: "router unreachable".into()
            },
            &[(later, "attempt 2 failed; retry in 4 s".to_string())],
        )
        .await
        .unwrap()
    );
    assert!(s.claim_job("w2", later, lease).await.unwrap().is_none());
    let waiting = s.get_job(a.id).await.unwrap();
    assert_eq!(waiting.state, JobState::Pending);
    assert_eq!(
        waiting.run_after.timestamp_millis(),
        retry_at.timestamp_millis()
    );
    // b (due, but behind a) is the earliest due job: the worker sleeps at most its poll.
    assert!(
        s.next_job_at()
            .await
            .unwrap()
            .is_some_and(|t| t <= retry_at)
    );
    // The router came back: its jobs are due now.
    assert_eq!(s.hasten_jobs(w.router.id, later).await.unwrap(), 1);
    let third = s.claim_job("w2", later, lease).await.unwrap().unwrap();
    assert_eq!((third.id, third.attempts), (a.id, 3));
    assert!(
        s.finish_job(a.id, "w2", later, JobOutcome::Failed("gave up".into()))
            .await
            .unwrap()
    );
    let next = s.claim_job("w2", later, lease).await.unwrap().unwrap();
    assert_eq!(next.id, b.id);
    let jobs = s
        .list_jobs(w.org, w.router.id, Page::default())
        .await
        .unwrap();
    let (job_a, lines_a) = jobs.iter().find(|(j, _)| j.id == a.id).unwrap();
    assert_eq!(job_a.state, JobState::Failed);
    assert_eq!(job_a.last_error.as_deref(), Some("gave up"));
    let texts: Vec<_> = lines_a.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(
        texts,
        ["started, attempt 1", "attempt 2 failed; retry in 4 s"]
    );
    // A pending creation of a grant is superseded when the grant ends.
    let grant = s
        .create_access(new_access(&w, &[40001], true))
        .await
        .unwrap();
    let gid = grant.id.to_string();
    assert!(s.has_open_grant_job(&gid, "").await.unwrap());
    let creation = s
        .create_job(NewJob {
            kind: "access.create".into(),
            payload: json!({ "grant_id": gid }),
            ..new_job(w.org, w.router.id, later)
        })
        .await
        .unwrap();
    assert!(s.has_open_grant_job(&gid, ".create").await.unwrap());
    assert_eq!(
        s.supersede_jobs(&gid, ".create", later, "superseded")
            .await
            .unwrap(),
        1
    );
    assert!(!s.has_open_grant_job(&gid, ".create").await.unwrap());
    let superseded = s.get_job(creation.id).await.unwrap();
    assert_eq!(superseded.state, JobState::Completed);
    assert_eq!(superseded.last_error.as_deref(), Some("superseded"));
    // Regions remember the address their gateway's connections come from.
    assert_eq!(s.region_tunnel_source(w.region.id).await.unwrap(), None);
    s.set_region_tunnel_source(w.region.id, Some("100.64.0.1".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(
        s.region_tunnel_source(w.region.id).await.unwrap(),
        Some("100.64.0.1".parse().unwrap())
    );
    assert_eq!(s.list_all_routers().await.unwrap().len(), 3);
}

both!(job_leasing, leasing);

#[path = "suites/connections.rs"]
mod connection_suite;
/// A finished job leases its router's due jobs as one batch, in order, the first with
/// its opening lines; a creation's grant moves with its lease and with its end; jobs
/// of a batch left unrun go back as they were; lines numbered by their writer read in
/// order whichever transaction wrote them.
async fn batches(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let now = Utc::now();
    let lease = std::time::Duration::from_secs(15);
    let grant = s
        .create_access(new_access(&w, &[40101], false))
        .await
        .unwrap();
    let create = s
        .create_job(NewJob {
            kind: "access.create".into(),
            payload: json!({ "grant_id": grant.id.to_string() }),
            ..new_job(w.org, w.router.id, now)
        })
        .await
        .unwrap();
    let b = s
        .create_job(new_job(w.org, w.router.id, now))
        .await
        .unwrap();
    let c = s
        .create_job(new_job(w.org, w.router.id, now))
        .await
        .unwrap();
    let later = s
        .create_job(new_job(w.org, w.router.id, now + TimeDelta::seconds(60)))
        .await
        .unwrap();
    let intro = |j: &Job| vec![format!("started {}", j.attempts)];
    let first = s.claim_jobs("w1", now, lease, 10, intro).await.unwrap();
    assert_eq!(first.iter().map(|j| j.id).collect::<Vec<_>>(), [create.id]);
    assert_eq!(first[0].log_seq, 1, "its opening line");
    let g = s.get_access(w.org, w.router.id, grant.id).await.unwrap();
    assert_eq!(g.status, GrantStatus::Provisioning, "moved with the lease");
    // Its end: the grant active, a line from "another attempt" riding along, and the
    // router's due jobs (b, c; not the one due later) leased in order.
    let move_line = MoveLine {
        seq: 3,
        moved: "active".into(),
        refused: "not active: ".into(),
    };
    let lines = vec![LogLine {
        job_id: create.id,
        seq: 2,
        at: now,
        message: "connected".into(),
    }];
    let ended = s
        .end_attempt(
            create.id,
            "w1",
            now,
            JobOutcome::Completed,
            Some(&GrantMove {
                grant: GrantKey::Access(grant.id),
                from: vec![GrantStatus::Provisioning],
                to: GrantStatus::Active,
                line: Some(move_line),
            }),
            &|| lines.clone(),
            Some((w.router.id, lease, &intro)),
        )
        .await
        .unwrap();
    assert!(ended.recorded);
    assert!(matches!(
        ended.grants.as_slice(),
        [Some(Ok(GrantStatus::Provisioning))]
    ));
    assert_eq!(
        ended.next.iter().map(|j| j.id).collect::<Vec<_>>(),
        [b.id, c.id]
    );
    assert!(ended.next.iter().all(|j| j.state == JobState::Running));
    let g = s.get_access(w.org, w.router.id, grant.id).await.unwrap();
    assert_eq!(g.status, GrantStatus::Active);
    // b is retried: c, leased with it but not run, goes back as it was; nothing of
    // the router may run before b.
    let retry_at = now + TimeDelta::seconds(5);
    let ended = s
        .end_attempts(
            "w1",
            now,
            &[JobEnd {
                job: b.id,
                outcome: JobOutcome::Retry {
                    run_after: retry_at,
                    error: "router unreachable".into(),
                },
                grant: None,
                behind: None,
            }],
            &[c.id],
            &Vec::new,
            Some((w.router.id, lease, &intro)),
        )
        .await
        .unwrap();
    assert!(ended.recorded && ended.next.is_empty());
    let c_now = s.get_job(c.id).await.unwrap();
    assert_eq!(
        (
            c_now.state,
            c_now.attempts,
            c_now.started_at,
            c_now.lease_owner
        ),
        (JobState::Pending, 0, None, None)
    );
    assert!(s.claim_job("w2", now, lease).await.unwrap().is_none());
    // Once b is due, another worker takes it; its end leases c and then the one due
    // later only when it is due.
    let b2 = s.claim_job("w2", retry_at, lease).await.unwrap().unwrap();
    assert_eq!((b2.id, b2.attempts), (b.id, 2));
    let ended = s
        .end_attempt(
            b.id,
            "w2",
            retry_at,
            JobOutcome::Completed,
            None,
            &Vec::new,
            Some((w.router.id, lease, &intro)),
        )
        .await
        .unwrap();
    assert_eq!(ended.next.iter().map(|j| j.id).collect::<Vec<_>>(), [c.id]);
    // A lost lease records nothing but the lines.
    let lost = s
        .end_attempt(
            c.id,
            "w1",
            retry_at,
            JobOutcome::Completed,
            None,
            &Vec::new,
            None,
        )
        .await
        .unwrap();
    assert!(!lost.recorded);
    assert_eq!(s.get_job(c.id).await.unwrap().state, JobState::Running);
    assert_eq!(s.get_job(later.id).await.unwrap().state, JobState::Pending);
    let jobs = s
        .list_jobs(w.org, w.router.id, Page::default())
        .await
        .unwrap();
    let (_, lines) = jobs.iter().find(|(j, _)| j.id == create.id).unwrap();
    let texts: Vec<_> = lines.iter().map(|l| l.message.as_str()).collect();
    assert_eq!(texts, ["started 1", "connected", "active"]);
    // Ending a grant is one write: closing, its pending creation superseded, its
    // clean-up queued.
    let other = s
        .create_access(new_access(&w, &[40102], false))
        .await
        .unwrap();
    let pending_create = s
        .create_job(NewJob {
            kind: "access.create".into(),
            payload: json!({ "grant_id": other.id.to_string() }),
            ..new_job(w.org, w.router.id, now)
        })
        .await
        .unwrap();
    let (org, router) = s
        .close_grant(
            GrantKey::Access(other.id),
            &[GrantStatus::Requested, GrantStatus::Active],
            now,
            (".create", "superseded"),
            &ClosingJob {
                kind: "access.end".into(),
                payload: json!({ "reason": "revoked" }),
                max_attempts: 0,
            },
            None,
        )
        .await
        .unwrap();
    assert_eq!((org, router), (w.org, w.router.id));
    let superseded = s.get_job(pending_create.id).await.unwrap();
    assert_eq!(superseded.state, JobState::Completed);
    assert_eq!(superseded.last_error.as_deref(), Some("superseded"));
    assert!(
        s.has_open_grant_job(&other.id.to_string(), ".end")
            .await
            .unwrap()
    );
    assert!(matches!(
        s.close_grant(
            GrantKey::Access(other.id),
            &[GrantStatus::Requested, GrantStatus::Active],
            now,
            (".create", "superseded"),
            &ClosingJob {
                kind: "access.end".into(),
                payload: json!({}),
                max_attempts: 0,
            },
            None,
        )
        .await,
        Err(StoreError::Conflict(_))
    ));
}
both!(job_batches, batches);

/// `at` as stored: whole milliseconds.
fn ms_only(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap()
}

/// While a worker holds a router's running job, it reads the jobs queued behind it
/// (due ones, in order, up to one not yet due) and records their ends with its own:
/// each counted as one attempt, a creation's grant through `provisioning` to `active`,
/// one to retry back to `pending`, and one a revoke superseded meanwhile left as the
/// revoke made it.
async fn run_behind(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let now = Utc::now();
    let lease = std::time::Duration::from_secs(15);
    let head = s
        .create_job(new_job(w.org, w.router.id, now))
        .await
        .unwrap();
    let mut creates = Vec::new();
    for port in [40111, 40112] {
        let grant = s
            .create_access(new_access(&w, &[port], false))
            .await
            .unwrap();
        let job = s
            .create_job(NewJob {
                kind: "access.create".into(),
                payload: json!({ "grant_id": grant.id.to_string() }),
                ..new_job(w.org, w.router.id, now)
            })
            .await
            .unwrap();
        creates.push((grant, job));
    }
    let retried = s
        .create_job(new_job(w.org, w.router.id, now))
        .await
        .unwrap();
    let later = s
        .create_job(new_job(w.org, w.router.id, now + TimeDelta::seconds(60)))
        .await
        .unwrap();
    let after_later = s
        .create_job(new_job(w.org, w.router.id, now))
        .await
        .unwrap();
    let claimed = s
        .claim_jobs("w1", now, lease, 10, |_| Vec::new())
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|j| j.id).collect::<Vec<_>>(), [head.id]);
    // Nothing else of the router can be claimed while its head runs.
    assert!(s.claim_job("w2", now, lease).await.unwrap().is_none());

    let behind = s
        .queued_behind(w.router.id, head.id, now, 16)
        .await
        .unwrap();
    let ids: Vec<_> = behind.iter().map(|j| j.id).collect();
    assert_eq!(
        ids,
        [creates[0].1.id, creates[1].1.id, retried.id],
        "in order, stopping at the one not yet due"
    );
    assert!(
        behind
            .iter()
            .all(|j| j.state == JobState::Pending && j.attempts == 0)
    );
    assert_eq!(
        s.queued_behind(w.router.id, head.id, now, 2)
            .await
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        s.queued_behind(w.router.id, retried.id, now, 16)
            .await
            .unwrap()
            .len(),
        0,
        "the one not yet due holds back those after it"
    );

    // The second creation is revoked while it runs.
    let superseded = &creates[1];
    s.close_grant(
        GrantKey::Access(superseded.0.id),
        &[GrantStatus::Requested],
        now,
        (".create", "superseded"),
        &ClosingJob {
            kind: "access.end".into(),
            payload: json!({}),
            max_attempts: 0,
        },
        None,
    )
    .await
    .unwrap();
    let activate = |g: AccessId| GrantMove {
        grant: GrantKey::Access(g),
        from: vec![GrantStatus::Provisioning],
        to: GrantStatus::Active,
        line: None,
    };
    let started = now + TimeDelta::milliseconds(3);
    let retry_at = now + TimeDelta::seconds(5);
    let ended = s
        .end_attempts(
            "w1",
            now,
            &[
                JobEnd {
                    job: head.id,
                    outcome: JobOutcome::Completed,
                    grant: None,
                    behind: None,
                },
                JobEnd {
                    job: creates[0].1.id,
                    outcome: JobOutcome::Completed,
                    grant: Some(activate(creates[0].0.id)),
                    behind: Some(started),
                },
                JobEnd {
                    job: superseded.1.id,
                    outcome: JobOutcome::Completed,
                    grant: Some(activate(superseded.0.id)),
                    behind: Some(started),
                },
                JobEnd {
                    job: retried.id,
                    outcome: JobOutcome::Retry {
                        run_after: retry_at,
                        error: "router unreachable".into(),
                    },
                    grant: None,
                    behind: Some(started),
                },
            ],
            &[],
            &Vec::new,
            Some((w.router.id, lease, &|_: &Job| Vec::new())),
        )
        .await
        .unwrap();
    assert!(ended.recorded);
    assert!(
        ended.next.is_empty(),
        "the retried job holds the router's queue"
    );
    assert!(matches!(
        ended.grants.as_slice(),
        [
            None,
            Some(Ok(GrantStatus::Provisioning)),
            Some(Err(_)),
            None
        ]
    ));
    let g = s
        .get_access(w.org, w.router.id, creates[0].0.id)
        .await
        .unwrap();
    assert_eq!(g.status, GrantStatus::Active);
    let g = s
        .get_access(w.org, w.router.id, superseded.0.id)
        .await
        .unwrap();
    assert_eq!(g.status, GrantStatus::Closing, "the revoke's, not ours");

    let job = s.get_job(creates[0].1.id).await.unwrap();
    assert_eq!(
        (
            job.state,
            job.attempts,
            job.started_at,
            job.lease_owner.is_none()
        ),
        (JobState::Completed, 1, Some(ms_only(started)), true)
    );
    let job = s.get_job(superseded.1.id).await.unwrap();
    assert_eq!(
        (job.state, job.attempts, job.last_error.as_deref()),
        (JobState::Completed, 0, Some("superseded"))
    );
    let job = s.get_job(retried.id).await.unwrap();
    assert_eq!(
        (
            job.state,
            job.attempts,
            job.run_after,
            job.last_error.as_deref()
        ),
        (
            JobState::Pending,
            1,
            ms_only(retry_at),
            Some("router unreachable")
        )
    );
    assert_eq!(s.get_job(later.id).await.unwrap().state, JobState::Pending);
    assert_eq!(
        s.get_job(after_later.id).await.unwrap().state,
        JobState::Pending
    );
}
both!(jobs_run_behind_a_leased_one, run_behind);

/// The expiry timer's question: which live grants are due at `now` (access and
/// forwards; not closing or ended ones), and the next end among the others.
async fn expiring(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    assert_eq!(s.expiring(t(0)).await.unwrap(), (Vec::new(), None));
    let mut access = Vec::new();
    for (i, ends) in [10, 20, 30, 40].into_iter().enumerate() {
        let mut n = new_access(&w, &[40300 + i as u16], false);
        n.expires_at = t(ends);
        access.push(s.create_access(n).await.unwrap());
    }
    let mut f = new_forward(&w, &[40310], &[50310]);
    f.expires_at = t(15);
    let forward = s.create_forward(f).await.unwrap();
    // One active, one closing (revoked meanwhile): only live ones count.
    use GrantStatus::{Active, Closing, Provisioning, Requested};
    for (g, from, to) in [
        (&access[1], Requested, Provisioning),
        (&access[1], Provisioning, Active),
        (&access[2], Requested, Closing),
    ] {
        s.transition_access(g.id, &[from], to, t(1), None)
            .await
            .unwrap();
    }

    let (due, next) = s.expiring(t(5)).await.unwrap();
    assert!(due.is_empty());
    assert_eq!(next, Some(t(10)));
    let (due, next) = s.expiring(t(20)).await.unwrap();
    let due: HashSet<GrantKey> = due.into_iter().collect();
    assert_eq!(
        due,
        HashSet::from([
            GrantKey::Access(access[0].id),
            GrantKey::Access(access[1].id),
            GrantKey::Forward(forward.id),
        ])
    );
    assert_eq!(next, Some(t(40)), "the closing one (30) is not waited for");
    let (due, next) = s.expiring(t(50)).await.unwrap();
    assert_eq!(due.len(), 4);
    assert_eq!(next, None);
}
both!(expiry_asks_only_for_live_grants, expiring);

/// A grouped batch of creates in which one breaks a constraint (a region that does not
/// exist): the batch's all-at-once write fails, and each create is written alone, the
/// broken one failing by itself.
async fn batch_with_a_broken_create(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let mut tasks = Vec::new();
    for i in 0..10u16 {
        let s = s.clone();
        let mut new = new_access(&w, &[40200 + i], true);
        if i == 4 {
            new.region_id = RegionId::new();
        }
        tasks.push(tokio::spawn(async move { s.create_access(new).await }));
    }
    let mut ports = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match (i, task.await.unwrap()) {
            (4, got) => assert!(got.is_err(), "the broken create succeeded"),
            (_, got) => ports.push(got.unwrap().port),
        }
    }
    ports.sort_unstable();
    assert_eq!(
        ports,
        (0..10u16)
            .filter(|i| *i != 4)
            .map(|i| 40200 + i)
            .collect::<Vec<_>>()
    );
    assert_eq!(ctx.count("transient_access").await, 9);
    assert_eq!(ctx.count("gateway_ports").await, 9);
    assert_eq!(ctx.count("jobs").await, 9);
}
both!(
    a_broken_create_fails_alone_in_its_batch,
    batch_with_a_broken_create
);

/// A job the router refused as unknown or invalid ends `stuck`: out of the router's
/// queue (the next job runs), the router's words kept, counted for `/metrics`, and not
/// an open job of its grant (so a restart queues the clean-up once more).
async fn stuck_jobs(ctx: &Ctx) {
    let s = &ctx.store;
    let w = world(s).await;
    let lease = std::time::Duration::from_secs(15);
    let a = s
        .create_job(new_job(w.org, w.router.id, t(0)))
        .await
        .unwrap();
    let b = s
        .create_job(new_job(w.org, w.router.id, t(0)))
        .await
        .unwrap();
    assert_eq!(s.count_stuck_jobs().await.unwrap(), 0);
    let first = s.claim_job("w1", t(1), lease).await.unwrap().unwrap();
    assert_eq!(first.id, a.id);
    let words = "the router refused /user/active/request-logout: no such command or directory (request-logout)";
    assert!(
        s.finish_job(a.id, "w1", t(1), JobOutcome::Stuck(words.into()))
            .await
            .unwrap()
    );
    let stuck = s.get_job(a.id).await.unwrap();
    assert_eq!(stuck.state, JobState::Stuck);
    assert_eq!(stuck.last_error.as_deref(), Some(words));
    assert!(stuck.finished_at.is_some());
    assert_eq!(s.count_stuck_jobs().await.unwrap(), 1);
    // Not retried: the next claim is the router's next job.
    let next = s.claim_job("w1", t(2), lease).await.unwrap().unwrap();
    assert_eq!(next.id, b.id);
    assert!(
        s.finish_job(b.id, "w1", t(2), JobOutcome::Completed)
            .await
            .unwrap()
    );
    assert!(s.claim_job("w1", t(3), lease).await.unwrap().is_none());
    assert_eq!(s.get_job(a.id).await.unwrap().state, JobState::Stuck);
}
both!(
    a_stuck_job_leaves_the_queue_with_the_routers_words,
    stuck_jobs
);

#[path = "suites/upgrade.rs"]
mod upgrade_suite;
