//! The orchestrator against real sim routers on 127.0.x.x (ephemeral ports) and a real
//! store (SQLite; PostgreSQL for two workers): grants reach routers and leave them on
//! time, offline routers converge when back, revoke ends live sessions, the reconciler
//! repairs drift, two workers never run a job twice, and the log tells each story.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

extern crate store as postern_store;

#[path = "../../store/tests/harness/mod.rs"]
#[allow(dead_code)]
mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use domain::{AccessLevel, AccessType, AllowFrom, GrantStatus, OrgId, RegionId};
use harness::{Ctx, Db};
use postern_orchestrator::{Config, GrantKey, LoggingDataPlane, Orchestrator, SystemClock};
use routeros::api::{self, Filter};
use routeros::{Client, ClientConfig};
use serde_json::json;
use sim::{RouterHandle, RouterOptions};
use tokio::sync::watch;
use tokio::task::JoinHandle;

struct World {
    ctx: Ctx,
    org: OrgId,
    region: RegionId,
    sims: Vec<RouterHandle>,
    routers: Vec<store::Router>,
    orch: Orchestrator,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn fast_config() -> Config {
    Config {
        backoff_base: Duration::from_millis(200),
        backoff_max: Duration::from_millis(800),
        offline_probe_interval: Duration::from_millis(200),
        sweep_interval: Duration::from_millis(500),
        poll_interval: Duration::from_millis(200),
        connect_timeout: Duration::from_secs(2),
        command_timeout: Duration::from_secs(3),
        ..Config::default()
    }
}

/// A store with one org and region (tunnel source 127.0.0.1), `n` sim routers
/// registered, and a running orchestrator.
async fn world(db: Db, n: usize, base: u8, config: Config) -> Option<World> {
    world_of(db, n, base, config, None).await
}

/// [`world`] with sim routers claiming RouterOS `version` (default: the sim's).
async fn world_of(
    db: Db,
    n: usize,
    base: u8,
    config: Config,
    version: Option<&str>,
) -> Option<World> {
    let ctx = Ctx::new(db).await?;
    let store = ctx.store.clone();
    let org = store.create_organisation("acme").await.unwrap().id;
    let region = store
        .upsert_region(store::NewRegion {
            name: "local".into(),
            entry_point: "127.0.0.1".into(),
            port_min: 40000,
            port_max: 60000,
        })
        .await
        .unwrap();
    store
        .set_region_tunnel_source(region.id, Some("127.0.0.1".parse().unwrap()))
        .await
        .unwrap();
    let mut sims = Vec::new();
    let mut routers = Vec::new();
    for i in 0..n {
        let address = format!("127.0.{base}.{}", i + 2).parse().unwrap();
        let mut options = RouterOptions::new(&format!("r{i}"), address);
        if let Some(v) = version {
            options.version = v.into();
        }
        let sim = RouterHandle::start(options).await.unwrap();
        // Every sentence the router receives is kept and checked at `stop`.
        sim.router().record_commands();
        let router = store
            .create_router(store::NewRouter {
                org_id: org,
                site_name: None,
                region_id: region.id,
                name: format!("r{i}"),
                tunnel_address: address,
                api_port: sim.api_addr.port(),
                ssh_port: sim.ssh_addr.port(),
                winbox_port: sim.winbox_addr.port(),
                api_tls: false,
                api_tls_fingerprint: None,
                username: "admin".into(),
                password: sim.admin_password.clone(),
            })
            .await
            .unwrap();
        sims.push(sim);
        routers.push(router);
    }
    let orch = Orchestrator::new(
        store,
        config,
        Arc::new(SystemClock),
        Arc::new(LoggingDataPlane),
    );
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(orch.clone().run(stopped));
    Some(World {
        ctx,
        org,
        region: region.id,
        sims,
        routers,
        orch,
        stop,
        task,
    })
}

impl World {
    fn store(&self) -> &store::Store {
        &self.ctx.store
    }

    /// Creates a transient access on router `i` as the API does (grant + first job in
    /// one transaction) and wakes the orchestrator.
    async fn access(
        &self,
        i: usize,
        expires_in: Duration,
        rfc1918: bool,
    ) -> store::TransientAccess {
        self.access_with(i, expires_in, rfc1918, 8).await
    }

    async fn access_with(
        &self,
        i: usize,
        expires_in: Duration,
        rfc1918: bool,
        attempts: u32,
    ) -> store::TransientAccess {
        self.access_as(i, expires_in, rfc1918, attempts, AccessLevel::Read)
            .await
    }

    async fn access_as(
        &self,
        i: usize,
        expires_in: Duration,
        rfc1918: bool,
        attempts: u32,
        level: AccessLevel,
    ) -> store::TransientAccess {
        let now = Utc::now();
        let router = &self.routers[i];
        let grant = self
            .store()
            .create_access(store::NewAccess {
                org_id: self.org,
                router_id: router.id,
                access_type: AccessType::Ssh,
                access: level,
                allow_rfc1918: rfc1918,
                allow_from: "198.51.100.0/24".parse::<AllowFrom>().unwrap(),
                username: format!(
                    "postern-{}",
                    &uuid::Uuid::new_v4().simple().to_string()[..8]
                ),
                password: "S3cret-temporary-pw".into(),
                expires_at: now + chrono::Duration::from_std(expires_in).unwrap(),
                created_by: "test".into(),
                region_id: self.region,
                entry_point: "127.0.0.1".into(),
                port_candidates: (40000..40100).collect(),
                audit: store::NewAudit {
                    org_id: self.org,
                    at: now,
                    actor: "test".into(),
                    actor_address: None,
                    action: "access.create".into(),
                    target: None,
                    details: json!({}),
                },
                terminal: false,
                job: Some(store::NewJob {
                    org_id: self.org,
                    router_id: router.id,
                    kind: "access.create".into(),
                    payload: json!({}),
                    max_attempts: attempts,
                    run_after: now,
                    created_at: now,
                }),
            })
            .await
            .unwrap();
        self.orch.jobs_queued().await;
        self.orch.expiry_changed();
        grant
    }

    /// A transient forward on router `i` to `dst` (router port from 30000 up).
    async fn forward(
        &self,
        i: usize,
        dst: std::net::SocketAddr,
        masquerade: bool,
    ) -> store::TransientForward {
        let now = Utc::now();
        let router = &self.routers[i];
        let f = self
            .store()
            .create_forward(store::NewForward {
                org_id: self.org,
                router_id: router.id,
                dst_address: dst.ip(),
                dst_port: dst.port(),
                masquerade,
                allow_from: "198.51.100.0/24".parse::<AllowFrom>().unwrap(),
                expires_at: now + chrono::Duration::minutes(30),
                created_by: "test".into(),
                region_id: self.region,
                entry_point: "127.0.0.1".into(),
                port_candidates: (41000..41100).collect(),
                router_port_candidates: (30000..30100).collect(),
                audit: store::NewAudit {
                    org_id: self.org,
                    at: now,
                    actor: "test".into(),
                    actor_address: None,
                    action: "forward.create".into(),
                    target: None,
                    details: json!({}),
                },
                job: Some(store::NewJob {
                    org_id: self.org,
                    router_id: router.id,
                    kind: "forward.create".into(),
                    payload: json!({}),
                    max_attempts: 8,
                    run_after: now,
                    created_at: now,
                }),
            })
            .await
            .unwrap();
        self.orch.jobs_queued().await;
        f
    }

    async fn status(&self, g: &store::TransientAccess) -> GrantStatus {
        self.store()
            .get_access(self.org, g.router_id, g.id)
            .await
            .unwrap()
            .status
    }

    fn user_on(&self, i: usize, name: &str) -> Option<std::collections::BTreeMap<String, String>> {
        let state = self.sims[i].router().state();
        state.users.by_name(name).map(|u| u.props.clone())
    }

    /// Every line of every job of router `i`, oldest job first.
    async fn log(&self, i: usize) -> Vec<String> {
        let jobs = self
            .store()
            .list_jobs(
                self.org,
                self.routers[i].id,
                store::Page {
                    limit: 1000,
                    offset: 0,
                },
            )
            .await
            .unwrap();
        jobs.into_iter()
            .rev()
            .flat_map(|(job, lines)| {
                lines
                    .into_iter()
                    .map(move |l| format!("[{} {}] {}", job.kind, job.state, l.message))
            })
            .collect()
    }

    /// The log once every job of router `i` has ended (lines are written when an
    /// attempt ends, just after the grant's status moved).
    async fn settled_log(&self, i: usize) -> Vec<String> {
        until(Duration::from_secs(5), "every job ended", || async {
            let jobs = self
                .store()
                .list_jobs(
                    self.org,
                    self.routers[i].id,
                    store::Page {
                        limit: 1000,
                        offset: 0,
                    },
                )
                .await
                .unwrap();
            jobs.iter().all(|(j, _)| {
                matches!(
                    j.state,
                    domain::JobState::Completed | domain::JobState::Failed
                )
            })
        })
        .await;
        self.log(i).await
    }

    async fn stop(self) {
        self.stop_checking(true).await;
    }

    /// Stops; `sims_spoken_to` is false for a test whose routers point elsewhere.
    async fn stop_checking(self, sims_spoken_to: bool) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        let sent = check_surface(&self.sims);
        assert!(sent > 0 || !sims_spoken_to, "the sims recorded no sentence");
        for sim in self.sims {
            sim.shutdown().await;
        }
    }
}

/// The scripts written onto the sims: every scheduler entry's `on-event`.
fn scripts_sent(sims: &[RouterHandle]) -> Vec<String> {
    let mut out: Vec<String> = sims
        .iter()
        .flat_map(|s| s.router().received())
        .filter(|r| r.path.starts_with("/system/scheduler/"))
        .flat_map(|r| r.attrs.into_iter())
        .filter(|(k, _)| k == "on-event")
        .map(|(_, v)| v)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Holds every sentence the sims received (from the orchestrator, its reconciler and
/// handlers, and the tests' own clients) and every script written onto them against
/// RouterOS 7.21.4's command database; returns how many sentences there were. The
/// scripts are also written to `$POSTERN_ROUTEROS_SCRIPTS` when set, for
/// `routeros-lsp check --strict` (`.ci/run`).
fn check_surface(sims: &[RouterHandle]) -> usize {
    let db = surface::Database::routeros_7().unwrap();
    let mut wrong = Vec::new();
    let mut count = 0;
    for sim in sims {
        for req in sim.router().received() {
            count += 1;
            let mut words = vec![req.path.clone()];
            words.extend(req.attrs.iter().map(|(k, v)| format!("={k}={v}")));
            words.extend(req.queries.iter().cloned());
            if let Err(f) = db.check_sentence(&words) {
                wrong.push(f.to_string());
            }
        }
    }
    for script in scripts_sent(sims) {
        wrong.extend(
            db.check_script(&script)
                .iter()
                .map(|f| format!("script: {f}")),
        );
        if let Some(dir) = std::env::var_os("POSTERN_ROUTEROS_SCRIPTS") {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            script.hash(&mut h);
            let dir = std::path::PathBuf::from(dir);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("{:016x}.rsc", h.finish())), &script).unwrap();
        }
    }
    assert!(
        wrong.is_empty(),
        "sent to a router but not in RouterOS {}'s command database:\n{}",
        db.version(),
        wrong.join("\n")
    );
    count
}

/// Polls `check` every 10 ms until it holds or `within` passes.
async fn until<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn has(log: &[String], text: &str) -> bool {
    log.iter().any(|l| l.contains(text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_reaches_the_router_and_leaves_it_at_expiry() {
    let w = world(Db::Sqlite, 1, 11, fast_config()).await.unwrap();
    let g = w.access(0, Duration::from_secs(3), true).await;
    until(Duration::from_secs(5), "the user on the router", || async {
        w.user_on(0, &g.username).is_some()
    })
    .await;
    let user = w.user_on(0, &g.username).unwrap();
    assert_eq!(user["group"], "postern-read");
    assert_eq!(
        user["address"],
        "127.0.0.1/32,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16"
    );
    assert_eq!(user["comment"], format!("postern:access:{}", g.id));
    until(Duration::from_secs(2), "the grant active", || async {
        w.status(&g).await == GrantStatus::Active
    })
    .await;
    // What the router says of itself is on its record, for the portal's Overview.
    until(Duration::from_secs(3), "the router's facts", || async {
        let r = w
            .ctx
            .store
            .get_router(w.org, w.routers[0].id)
            .await
            .unwrap();
        r.identity.is_some()
    })
    .await;
    let router = w
        .ctx
        .store
        .get_router(w.org, w.routers[0].id)
        .await
        .unwrap();
    assert_eq!(router.status, domain::RouterStatus::Online);
    assert_eq!(router.identity.as_deref(), Some("r0"));
    assert!(
        router
            .routeros_version
            .as_deref()
            .is_some_and(|v| v.starts_with("7.18.2")),
        "{router:?}"
    );
    assert_eq!(router.board_name.as_deref(), Some("CHR"));
    assert!(
        router.uptime.as_deref().is_some_and(|u| u.ends_with('s')),
        "{router:?}"
    );
    let seen = router.last_seen_at.expect("last seen");
    assert!((Utc::now() - seen).num_seconds().abs() < 10, "{seen}");
    // The read group is really read-only.
    {
        let state = w.sims[0].router().state();
        let group = state.groups.by_name("postern-read").unwrap();
        for p in [
            "reboot",
            "sniff",
            "sensitive",
            "write",
            "policy",
            "password",
        ] {
            assert!(
                !group.props["policy"].split(',').any(|x| x == p),
                "postern-read has {p}"
            );
        }
        // And the router ends it by itself if Postern is down at expiry.
        let name = format!("postern-access-{}", g.id);
        assert!(
            state.scheduler.by_name(&name).is_some(),
            "no self-expiry entry"
        );
    }
    until(
        Duration::from_secs(6),
        "the user gone at expiry",
        || async { w.user_on(0, &g.username).is_none() },
    )
    .await;
    let late = Utc::now() - g.expires_at;
    assert!(
        late < chrono::Duration::milliseconds(1500),
        "removed {late} after expiry"
    );
    until(Duration::from_secs(3), "the grant expired", || async {
        w.status(&g).await == GrantStatus::Expired
    })
    .await;
    let log = w.settled_log(0).await;
    for text in [
        "express execution requested",
        "router r0 at 127.0.11.2",
        "(RouterOS 7.18.2",
        "sent /user/group/add name=postern-read",
        &format!("sent /user/add name={} group=postern-read", g.username),
        "/system/scheduler/add name=postern-access-",
        "is active",
        "completed in",
        "end transient access",
        "has no active session",
        "is now expired",
    ] {
        assert!(has(&log, text), "log lacks {text:?}:\n{}", log.join("\n"));
    }
    // Postern's timer or the router's own scheduler entry (due a second later) removed it.
    assert!(
        has(&log, "sent /user/remove") || has(&log, "is not on the router (already removed)"),
        "{}",
        log.join("\n")
    );
    assert!(!has(&log, "S3cret"), "the password leaked into the log");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoke_ends_a_live_session_and_removes_the_user_even_where_the_router_refuses() {
    use tokio::io::AsyncBufReadExt;
    let w = world(Db::Sqlite, 1, 12, fast_config()).await.unwrap();
    let g = w.access(0, Duration::from_secs(600), false).await;
    until(Duration::from_secs(5), "the grant active", || async {
        w.status(&g).await == GrantStatus::Active
    })
    .await;
    // The temporary user logs in through the WinBox port and over the API, from
    // 127.0.0.1 (its allowed address).
    let mut winbox = winbox_login(&w.sims[0], &g.username, "S3cret-temporary-pw").await;
    let mut line = String::new();
    let session = Client::connect(&ClientConfig::new(
        w.sims[0].api_addr.to_string(),
        &g.username,
        "S3cret-temporary-pw",
    ))
    .await
    .unwrap();
    assert!(api::system::identity(&session).await.is_ok());
    let started = Instant::now();
    assert!(w.orch.revoke(GrantKey::Access(g.id)).await.unwrap());
    until(Duration::from_secs(3), "the user gone", || async {
        w.user_on(0, &g.username).is_none()
    })
    .await;
    // The WinBox session is ended on the router ...
    let n = tokio::time::timeout(Duration::from_secs(3), winbox.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the WinBox session was not ended: {line}");
    assert!(started.elapsed() < Duration::from_secs(2));
    until(Duration::from_secs(3), "the grant revoked", || async {
        w.status(&g).await == GrantStatus::Revoked
    })
    .await;
    let revoked = w
        .store()
        .get_access(w.org, g.router_id, g.id)
        .await
        .unwrap();
    assert!(revoked.revoked_early);
    let log = w.settled_log(0).await;
    assert!(
        has(&log, "sent /user/active/remove") && has(&log, "(winbox session from"),
        "{}",
        log.join("\n")
    );
    // ... the API one RouterOS refuses to end (`action failed (6)`): logged, and the
    // user's removal went on (the gateway cuts such connections in production).
    assert!(
        has(&log, "action failed (6)")
            && has(&log, "session of")
            && has(&log, "could not be ended on the router"),
        "{}",
        log.join("\n")
    );
    assert!(!session.is_closed());
    assert!(has(&log, "is now revoked"), "{}", log.join("\n"));
    // Revoking again does nothing.
    assert!(!w.orch.revoke(GrantKey::Access(g.id)).await.unwrap());
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_offline_at_creation_gets_the_user_when_it_returns() {
    let w = world(Db::Sqlite, 1, 13, fast_config()).await.unwrap();
    w.sims[0].faults().set_offline(true);
    let g = w.access(0, Duration::from_secs(600), false).await;
    until(Duration::from_secs(5), "a retry in the log", || async {
        has(&w.log(0).await, "retry in")
    })
    .await;
    assert_eq!(w.status(&g).await, GrantStatus::Provisioning);
    let router = w
        .ctx
        .store
        .get_router(w.org, w.routers[0].id)
        .await
        .unwrap();
    assert_eq!(router.status, domain::RouterStatus::Offline);
    w.sims[0].faults().set_offline(false);
    until(Duration::from_secs(5), "the user on the router", || async {
        w.user_on(0, &g.username).is_some()
    })
    .await;
    until(Duration::from_secs(3), "the grant active", || async {
        w.status(&g).await == GrantStatus::Active
    })
    .await;
    let log = w.settled_log(0).await;
    assert!(
        has(&log, "cannot reach router r0 at 127.0.13.2"),
        "{}",
        log.join("\n")
    );
    assert!(
        has(&log, "attempt 1 failed: router unreachable"),
        "{}",
        log.join("\n")
    );
    assert!(has(&log, "attempt 2"), "{}", log.join("\n"));
    assert!(has(&log, "completed in"), "{}", log.join("\n"));
    until(
        Duration::from_secs(3),
        "the router online again",
        || async {
            let r = w
                .ctx
                .store
                .get_router(w.org, w.routers[0].id)
                .await
                .unwrap();
            r.status == domain::RouterStatus::Online
        },
    )
    .await;
    let router = w
        .ctx
        .store
        .get_router(w.org, w.routers[0].id)
        .await
        .unwrap();
    assert_eq!(router.status, domain::RouterStatus::Online);
    assert_eq!(router.identity.as_deref(), Some("r0"));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_offline_at_expiry_is_cleaned_when_it_returns() {
    let mut config = fast_config();
    // Only Postern's own clean-up is under test here.
    config.router_self_expiry = false;
    let w = world(Db::Sqlite, 1, 14, config).await.unwrap();
    let g = w.access(0, Duration::from_secs(2), false).await;
    until(Duration::from_secs(5), "the grant active", || async {
        w.status(&g).await == GrantStatus::Active
    })
    .await;
    w.sims[0].faults().set_offline(true);
    until(Duration::from_secs(5), "the clean-up retried", || async {
        w.log(0)
            .await
            .iter()
            .any(|l| l.starts_with("[access.end") && l.contains("retry in"))
    })
    .await;
    assert_eq!(w.status(&g).await, GrantStatus::Closing);
    assert!(w.user_on(0, &g.username).is_some());
    w.sims[0].faults().set_offline(false);
    until(Duration::from_secs(5), "the user gone", || async {
        w.user_on(0, &g.username).is_none()
    })
    .await;
    until(Duration::from_secs(3), "the grant expired", || async {
        w.status(&g).await == GrantStatus::Expired
    })
    .await;
    let log = w.settled_log(0).await;
    assert!(has(&log, "until it succeeds"), "{}", log.join("\n"));
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoke_while_offline_supersedes_the_pending_creation() {
    let w = world(Db::Sqlite, 1, 15, fast_config()).await.unwrap();
    w.sims[0].faults().set_offline(true);
    let g = w.access(0, Duration::from_secs(600), false).await;
    until(Duration::from_secs(5), "a retry in the log", || async {
        has(&w.log(0).await, "retry in")
    })
    .await;
    w.orch.revoke(GrantKey::Access(g.id)).await.unwrap();
    w.sims[0].faults().set_offline(false);
    until(Duration::from_secs(5), "the grant revoked", || async {
        w.status(&g).await == GrantStatus::Revoked
    })
    .await;
    assert!(
        w.user_on(0, &g.username).is_none(),
        "a revoked grant's user was created"
    );
    let jobs = w
        .store()
        .list_jobs(w.org, w.routers[0].id, store::Page::default())
        .await
        .unwrap();
    let create = jobs
        .iter()
        .find(|(j, _)| j.kind == "access.create")
        .unwrap();
    assert!(
        create
            .0
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("superseded")
            || create
                .1
                .iter()
                .any(|l| l.message.contains("nothing to create")),
        "{:?}",
        create
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reconciler_removes_planted_objects_and_recreates_a_missing_user() {
    let mut config = fast_config();
    config.reconcile_interval = Duration::from_secs(3600);
    let w = world(Db::Sqlite, 1, 16, config).await.unwrap();
    let g = w.access(0, Duration::from_secs(600), false).await;
    until(Duration::from_secs(5), "the grant active", || async {
        w.status(&g).await == GrantStatus::Active
    })
    .await;
    let admin = Client::connect(&ClientConfig::new(
        w.sims[0].api_addr.to_string(),
        "admin",
        w.sims[0].admin_password.as_str(),
    ))
    .await
    .unwrap();
    let stray = format!("postern:access:{}", uuid::Uuid::new_v4());
    api::user::add(
        &admin,
        &api::user::NewUser {
            name: "planted".into(),
            group: "read".into(),
            password: "x-planted-1".into(),
            comment: Some(stray.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let stray_forward = format!("postern:forward:{}", uuid::Uuid::new_v4());
    api::nat::add(
        &admin,
        &api::nat::NewNatRule {
            chain: "dstnat".into(),
            action: "dst-nat".into(),
            protocol: Some("tcp".into()),
            dst_port: Some("31000".into()),
            to_addresses: Some("192.168.88.10".into()),
            to_ports: Some("22".into()),
            comment: Some(stray_forward.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Someone removed the live grant's user by hand.
    let real = api::user::print(&admin, &Filter::name(&g.username))
        .await
        .unwrap();
    api::user::remove(&admin, &real[0].id).await.unwrap();
    // And its self-expiry entry.
    let entries = api::scheduler::print(&admin, &Filter::all()).await.unwrap();
    api::scheduler::remove(&admin, &entries[0].id)
        .await
        .unwrap();
    assert_eq!(w.orch.reconcile_router(w.routers[0].id).await.unwrap(), 4);
    until(Duration::from_secs(5), "drift repaired", || async {
        w.user_on(0, "planted").is_none()
            && w.user_on(0, &g.username).is_some()
            && w.sims[0].router().state().nat.items.is_empty()
            && w.sims[0].router().state().scheduler.items.len() == 1
    })
    .await;
    let log = w.settled_log(0).await;
    for text in [
        format!("drift: user planted is tagged {stray} but no live grant backs it"),
        format!("is tagged {stray_forward} but no live grant backs it"),
        format!(
            "is active but its user {} is missing on the router",
            g.username
        ),
        "is active but its self-expiry scheduler entry is missing on the router".to_string(),
        "the router matches the live grants again".to_string(),
    ] {
        assert!(has(&log, &text), "log lacks {text:?}:\n{}", log.join("\n"));
    }
    // Nothing more to do now.
    until(
        Duration::from_secs(3),
        "the repair job finished",
        || async {
            !w.store()
                .has_open_job(w.routers[0].id, "router.reconcile")
                .await
                .unwrap()
        },
    )
    .await;
    assert_eq!(w.orch.reconcile_router(w.routers[0].id).await.unwrap(), 0);
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_postgres_never_run_a_job_twice() {
    let Some(ctx) = Ctx::new(Db::Postgres).await else {
        return;
    };
    let store = ctx.store.clone();
    let org = store.create_organisation("acme").await.unwrap().id;
    let region = store
        .upsert_region(store::NewRegion {
            name: "local".into(),
            entry_point: "127.0.0.1".into(),
            port_min: 40000,
            port_max: 60000,
        })
        .await
        .unwrap();
    let mut routers = Vec::new();
    for i in 0..10 {
        routers.push(
            store
                .create_router(store::NewRouter {
                    org_id: org,
                    site_name: None,
                    region_id: region.id,
                    name: format!("r{i}"),
                    tunnel_address: "127.0.0.1".parse().unwrap(),
                    api_port: 1,
                    ssh_port: 1,
                    winbox_port: 1,
                    api_tls: false,
                    api_tls_fingerprint: None,
                    username: "admin".into(),
                    password: "pw".into(),
                })
                .await
                .unwrap(),
        );
    }
    let mut workers = Vec::new();
    for name in ["worker-a", "worker-b"] {
        let other = ctx.reopen(harness::KEY).await;
        let orch = Orchestrator::new(
            other,
            Config {
                owner: name.into(),
                reconcile_interval: Duration::from_secs(3600),
                ..fast_config()
            },
            Arc::new(SystemClock),
            Arc::new(LoggingDataPlane),
        );
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(orch.clone().run(stopped));
        workers.push((orch, stop, task));
    }
    let now = Utc::now();
    for n in 0..200 {
        store
            .create_job(store::NewJob {
                org_id: org,
                router_id: routers[n % routers.len()].id,
                kind: "noop".into(),
                payload: json!({}),
                max_attempts: 3,
                run_after: now,
                created_at: now,
            })
            .await
            .unwrap();
        // Wakes both, through NOTIFY.
        store.notify_jobs().await.unwrap();
    }
    until(Duration::from_secs(30), "every job completed", || async {
        ctx.count("jobs").await == 200 && {
            let mut done = 0;
            for r in &routers {
                let jobs = store
                    .list_jobs(
                        org,
                        r.id,
                        store::Page {
                            limit: 1000,
                            offset: 0,
                        },
                    )
                    .await
                    .unwrap();
                done += jobs
                    .iter()
                    .filter(|(j, _)| j.state == domain::JobState::Completed)
                    .count();
            }
            done == 200
        }
    })
    .await;
    let mut by_worker = std::collections::HashMap::new();
    for r in &routers {
        let jobs = store
            .list_jobs(
                org,
                r.id,
                store::Page {
                    limit: 1000,
                    offset: 0,
                },
            )
            .await
            .unwrap();
        for (job, lines) in jobs {
            assert_eq!(job.attempts, 1, "job {} ran {} times", job.id, job.attempts);
            let runs: Vec<_> = lines
                .iter()
                .filter(|l| l.message.starts_with("nothing to do"))
                .collect();
            assert_eq!(runs.len(), 1, "job {} ran {} times", job.id, runs.len());
            *by_worker.entry(runs[0].message.clone()).or_insert(0) += 1;
        }
    }
    let total: u64 = workers.iter().map(|(o, _, _)| o.executions()).sum();
    assert_eq!(total, 200);
    eprintln!("jobs per worker: {by_worker:?}");
    for (_, stop, task) in workers {
        let _ = stop.send(true);
        let _ = task.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_reaches_a_tcp_service_behind_the_router_and_is_removed_on_revoke() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world(Db::Sqlite, 1, 17, fast_config()).await.unwrap();
    // A LAN device: a TCP service on another loopback address.
    let service = tokio::net::TcpListener::bind("127.0.17.50:0")
        .await
        .unwrap();
    let dst = service.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = service.accept().await {
            let _ = s.write_all(b"hello from the device").await;
        }
    });
    let f = w.forward(0, dst, true).await;
    let tag = format!("postern:forward:{}", f.id);
    until(Duration::from_secs(5), "the forward active", || async {
        w.store()
            .get_forward(w.org, f.router_id, f.id)
            .await
            .unwrap()
            .status
            == GrantStatus::Active
    })
    .await;
    {
        let state = w.sims[0].router().state();
        let rules: Vec<_> = state
            .nat
            .items
            .iter()
            .filter(|r| r.get("comment") == Some(tag.as_str()))
            .map(|r| r.props.clone())
            .collect();
        assert_eq!(rules.len(), 2, "{rules:?}");
        let dnat = rules.iter().find(|r| r["action"] == "dst-nat").unwrap();
        assert_eq!(dnat["dst-address"], "127.0.17.2");
        assert_eq!(dnat["dst-port"], f.router_port.to_string());
        assert_eq!(dnat["to-addresses"], dst.ip().to_string());
        assert_eq!(dnat["to-ports"], dst.port().to_string());
        assert!(rules.iter().any(|r| r["action"] == "masquerade"));
    }
    // Through the router's dst-nat to the device.
    let mut conn = tokio::net::TcpStream::connect(("127.0.17.2", f.router_port))
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut got)).await;
    assert_eq!(got, b"hello from the device");
    assert!(w.orch.revoke(GrantKey::Forward(f.id)).await.unwrap());
    until(
        Duration::from_secs(5),
        "the rules gone and the forward revoked",
        || async {
            w.sims[0].router().state().nat.items.is_empty()
                && w.store()
                    .get_forward(w.org, f.router_id, f.id)
                    .await
                    .unwrap()
                    .status
                    == GrantStatus::Revoked
        },
    )
    .await;
    let log = w.settled_log(0).await;
    assert!(
        has(
            &log,
            "sent /ip/firewall/nat/add chain=dstnat action=dst-nat"
        ),
        "{}",
        log.join("\n")
    );
    assert!(
        has(&log, "sent /ip/firewall/nat/remove"),
        "{}",
        log.join("\n")
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creation_gives_up_after_its_attempts_and_the_grant_fails_with_the_reason() {
    let w = world(Db::Sqlite, 1, 18, fast_config()).await.unwrap();
    w.sims[0].faults().set_offline(true);
    let g = w.access_with(0, Duration::from_secs(600), false, 2).await;
    until(Duration::from_secs(5), "the grant failed", || async {
        w.status(&g).await == GrantStatus::Failed
    })
    .await;
    let failed = w
        .store()
        .get_access(w.org, g.router_id, g.id)
        .await
        .unwrap();
    assert!(
        failed
            .failure_reason
            .as_deref()
            .unwrap_or("")
            .contains("router unreachable"),
        "{failed:?}"
    );
    // Its clean-up waits for the router, and runs when it is back.
    w.sims[0].faults().set_offline(false);
    let log = w.settled_log(0).await;
    for text in [
        "failed after 2 attempt(s)",
        "is now failed; its clean-up is queued",
        "the router holds nothing of the failed grant",
    ] {
        assert!(has(&log, text), "log lacks {text:?}:\n{}", log.join("\n"));
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_home_device_mode_router_gets_no_scheduler_entry_and_the_log_says_so() {
    let w = world(Db::Sqlite, 1, 19, fast_config()).await.unwrap();
    w.sims[0].router().set_device_mode(sim::DeviceMode::Home);
    let g = w.access(0, Duration::from_secs(600), false).await;
    until(Duration::from_secs(5), "the grant active", || async {
        w.status(&g).await == GrantStatus::Active
    })
    .await;
    assert!(w.sims[0].router().state().scheduler.items.is_empty());
    let log = w.settled_log(0).await;
    assert!(
        has(
            &log,
            "router's device-mode does not allow the scheduler; expiry relies on Postern"
        ),
        "{}",
        log.join("\n")
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extending_a_grant_moves_the_routers_self_expiry_entry() {
    let w = world(Db::Sqlite, 1, 20, fast_config()).await.unwrap();
    let g = w.access(0, Duration::from_secs(600), false).await;
    until(Duration::from_secs(5), "the grant active", || async {
        w.status(&g).await == GrantStatus::Active
    })
    .await;
    let name = format!("postern-access-{}", g.id);
    let start_of = || {
        let state = w.sims[0].router().state();
        let e = state.scheduler.by_name(&name).unwrap();
        format!("{} {}", e.props["start-date"], e.props["start-time"])
    };
    let before = start_of();
    let later = g.expires_at + chrono::Duration::hours(2);
    w.store()
        .set_access_expiry(w.org, g.router_id, g.id, later)
        .await
        .unwrap();
    w.orch
        .grant_extended(GrantKey::Access(g.id), w.org, g.router_id, later)
        .await
        .unwrap();
    // The router's clock is UTC here; the entry starts within two seconds after the
    // grant's new end, never before it.
    let parse = |text: &str| {
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
            .unwrap()
            .and_utc()
    };
    until(Duration::from_secs(5), "the entry moved", || async {
        w.sims[0]
            .router()
            .state()
            .scheduler
            .by_name(&name)
            .is_some()
            && start_of() != before
    })
    .await;
    let moved = parse(&start_of());
    assert!(
        moved > later && moved <= later + chrono::Duration::seconds(2),
        "entry at {moved}, grant ends at {later}"
    );
    assert_eq!(w.sims[0].router().state().scheduler.items.len(), 1);
    let log = w.settled_log(0).await;
    assert!(
        has(&log, "(its time, script or policy is not Postern's)"),
        "{}",
        log.join("\n")
    );
    assert!(has(&log, "user postern-"), "{}", log.join("\n"));
    w.stop().await;
}

impl World {
    /// Stops the orchestrator alone (Postern down), leaving the sims running.
    async fn stop_orchestrator(&mut self) {
        let _ = self.stop.send(true);
        let task = std::mem::replace(&mut self.task, tokio::spawn(async {}));
        let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    }
}

/// Logs in through the sim's WinBox port; the reader ends (0 bytes) when the session
/// is ended on the router.
async fn winbox_login(
    sim: &RouterHandle,
    user: &str,
    password: &str,
) -> tokio::io::BufReader<tokio::net::TcpStream> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(sim.winbox_addr)
        .await
        .unwrap();
    let mut r = BufReader::new(stream);
    r.get_mut()
        .write_all(format!("login {user} {password}\n").as_bytes())
        .await
        .unwrap();
    // A banner first, then the answer to the login.
    let mut line = String::new();
    for _ in 0..2 {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        if line.starts_with("ok") {
            return r;
        }
    }
    panic!("WinBox-port login refused: {line}");
}

/// The router-side fail-closed expiry: with Postern down, the self-expiry entry ends
/// the user's WinBox session, goes on past the API session RouterOS refuses to end,
/// removes the user and then itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_self_expiry_script_removes_the_user_while_postern_is_down() {
    use tokio::io::AsyncBufReadExt;
    let mut w = world(Db::Sqlite, 1, 25, fast_config()).await.unwrap();
    let g = w.access(0, Duration::from_secs(3), false).await;
    until(Duration::from_secs(5), "the grant active", || async {
        w.status(&g).await == GrantStatus::Active
    })
    .await;
    let mut winbox = winbox_login(&w.sims[0], &g.username, "S3cret-temporary-pw").await;
    let api_session = Client::connect(&ClientConfig::new(
        w.sims[0].api_addr.to_string(),
        &g.username,
        "S3cret-temporary-pw",
    ))
    .await
    .unwrap();
    assert!(api::system::identity(&api_session).await.is_ok());
    w.stop_orchestrator().await;
    until(
        Duration::from_secs(8),
        "the router to remove the user",
        || async { w.user_on(0, &g.username).is_none() },
    )
    .await;
    let mut line = String::new();
    let n = tokio::time::timeout(Duration::from_secs(3), winbox.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0, "the WinBox session was not ended: {line}");
    until(
        Duration::from_secs(3),
        "the entry to remove itself",
        || async { w.sims[0].router().state().scheduler.items.is_empty() },
    )
    .await;
    // RouterOS refuses to end API sessions: the script went on past it.
    assert!(!api_session.is_closed());
    w.stop().await;
}

/// What Postern sends a router, end to end (a user with sessions, a forward with
/// masquerade, revoke, expiry, the reconciler's repairs), exists in RouterOS 7.21.4's
/// command database (checked at `stop`, as in every test here), and the scripts pass
/// `routeros-lsp check --strict` when the CI venv is at hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sentence_and_script_postern_sends_is_routeros_7s() {
    let w = world(Db::Sqlite, 1, 26, fast_config()).await.unwrap();
    let a = w.access(0, Duration::from_secs(600), true).await;
    let short = w.access(0, Duration::from_secs(2), false).await;
    let backend = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let f = w.forward(0, backend.local_addr().unwrap(), true).await;
    until(Duration::from_secs(5), "the grants active", || async {
        w.status(&a).await == GrantStatus::Active && w.status(&short).await == GrantStatus::Active
    })
    .await;
    let _winbox = winbox_login(&w.sims[0], &a.username, "S3cret-temporary-pw").await;
    // Drift: a planted tagged user the reconciler removes.
    w.sims[0]
        .router()
        .run(
            &sim::Caller::system(),
            &sim::menu::Request::new("/user/add")
                .attr("name", "planted")
                .attr("group", "read")
                .attr("password", "x")
                .attr(
                    "comment",
                    "postern:access:00000000-0000-0000-0000-000000000000",
                ),
        )
        .unwrap();
    w.orch.reconcile_router(w.routers[0].id).await.ok();
    until(
        Duration::from_secs(8),
        "expiry, and the planted user gone",
        || async {
            w.status(&short).await == GrantStatus::Expired && w.user_on(0, "planted").is_none()
        },
    )
    .await;
    assert!(w.orch.revoke(GrantKey::Access(a.id)).await.unwrap());
    assert!(w.orch.revoke(GrantKey::Forward(f.id)).await.unwrap());
    until(Duration::from_secs(5), "the grants revoked", || async {
        w.status(&a).await == GrantStatus::Revoked
    })
    .await;
    let _ = w.settled_log(0).await;
    let sent: Vec<String> = w.sims[0]
        .router()
        .received()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    for path in [
        "/user/group/add",
        "/user/add",
        "/user/active/print",
        "/user/active/remove",
        "/system/scheduler/add",
        "/ip/firewall/nat/add",
        "/ip/firewall/nat/remove",
        "/user/remove",
    ] {
        assert!(
            sent.iter().any(|p| p == path),
            "{path} never sent: {sent:?}"
        );
    }
    let scripts = scripts_sent(&w.sims);
    assert!(scripts.len() >= 3, "{scripts:?}");
    if let Some(python) = std::env::var_os("POSTERN_PYTHON") {
        for script in &scripts {
            let mut child = std::process::Command::new(&python)
                .args(["-m", "routeros_lsp", "check", "--strict", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(script.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "routeros-lsp check --strict refused the script:\n{script}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "POSTERN_PYTHON must name the CI venv's python"
        );
    }
    w.stop().await;
}

/// A clean-up the router refuses as unknown is not retried for ever in silence: the
/// job ends `stuck` with the router's words after one attempt, the grant stays
/// `closing` (its user on the router), and the reconciler neither removes the user
/// nor calls the router matched while the job is stuck.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_up_the_router_refuses_as_unknown_is_stuck_not_looped() {
    let mut config = fast_config();
    config.reconcile_interval = Duration::from_secs(3600);
    let w = world(Db::Sqlite, 1, 27, config).await.unwrap();
    let g = w.access(0, Duration::from_secs(600), false).await;
    until(Duration::from_secs(5), "the grant active", || async {
        w.status(&g).await == GrantStatus::Active
    })
    .await;
    w.sims[0].faults().set_missing_command("/user/remove");
    assert!(w.orch.revoke(GrantKey::Access(g.id)).await.unwrap());
    let end_job = || async {
        w.store()
            .list_jobs(w.org, w.routers[0].id, store::Page::default())
            .await
            .unwrap()
            .into_iter()
            .find(|(j, _)| j.kind == "access.end")
    };
    until(Duration::from_secs(5), "the clean-up stuck", || async {
        end_job()
            .await
            .is_some_and(|(j, _)| j.state == domain::JobState::Stuck)
    })
    .await;
    // Not retried: still one attempt after several back-off periods.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (job, lines) = end_job().await.unwrap();
    assert_eq!(job.state, domain::JobState::Stuck);
    assert_eq!(job.attempts, 1);
    assert!(
        job.last_error
            .as_deref()
            .is_some_and(|e| e.contains("no such command or directory (remove)")),
        "{:?}",
        job.last_error
    );
    let text: Vec<_> = lines.iter().map(|l| l.message.clone()).collect();
    assert!(
        has(&text, "stuck after 1 attempt(s)"),
        "{}",
        text.join("\n")
    );
    assert_eq!(w.status(&g).await, GrantStatus::Closing);
    assert!(w.user_on(0, &g.username).is_some());
    assert_eq!(w.store().count_stuck_jobs().await.unwrap(), 1);
    // The reconciler sees no drift to repair (the closing grant backs its user) and
    // removes nothing.
    assert_eq!(w.orch.reconcile_router(w.routers[0].id).await.unwrap(), 0);
    assert!(w.user_on(0, &g.username).is_some());
    w.stop().await;
}

/// Logs in to sim `i`'s API as `user`.
async fn login(w: &World, i: usize, user: &str, password: &str) -> Client {
    Client::connect(&ClientConfig::new(
        w.sims[i].api_addr.to_string(),
        user,
        password,
    ))
    .await
    .unwrap()
}

/// The policies an entry or group grants (what it lists without `!`), sorted.
fn granted(policy: &str) -> Vec<String> {
    let mut p: Vec<String> = policy
        .split(',')
        .filter(|p| !p.is_empty() && !p.starts_with('!'))
        .map(str::to_owned)
        .collect();
    p.sort();
    p
}

/// Issue 13, finding 4: a write user rewrote Postern's self-expiry entry (made with no
/// `policy=`, so with every policy) into `/user add … group=full`. Now each entry
/// carries only what its script needs, a write grant gets none (nor do others while it
/// is live), an entry's policy cannot be raised by a write user, and the reconciler
/// puts back an entry whose script was changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_user_cannot_turn_a_self_expiry_entry_into_a_full_user() {
    use routeros::Command;
    let w = world(Db::Sqlite, 1, 21, fast_config()).await.unwrap();
    let service = tokio::net::TcpListener::bind("127.0.21.50:0")
        .await
        .unwrap();
    let dst = service.local_addr().unwrap();
    // A read grant's entry exists before the write grant comes.
    let reader = w.access(0, Duration::from_secs(600), false).await;
    let reader_entry = format!("postern-access-{}", reader.id);
    until(Duration::from_secs(5), "the read grant's entry", || async {
        w.sims[0]
            .router()
            .state()
            .scheduler
            .by_name(&reader_entry)
            .is_some()
    })
    .await;
    assert_eq!(
        granted(
            w.sims[0]
                .router()
                .state()
                .scheduler
                .by_name(&reader_entry)
                .unwrap()
                .props["policy"]
                .as_str()
        ),
        ["policy", "read", "write"]
    );
    let f = w.forward(0, dst, false).await;
    let entry = format!("postern-forward-{}", f.id);
    until(Duration::from_secs(5), "the forward's entry", || async {
        w.sims[0]
            .router()
            .state()
            .scheduler
            .by_name(&entry)
            .is_some()
    })
    .await;
    assert_eq!(
        granted(
            w.sims[0]
                .router()
                .state()
                .scheduler
                .by_name(&entry)
                .unwrap()
                .props["policy"]
                .as_str()
        ),
        ["read", "write"],
        "a NAT-removing entry needs read and write only"
    );
    let g = w
        .access_as(0, Duration::from_secs(600), false, 8, AccessLevel::Write)
        .await;
    until(Duration::from_secs(5), "the write grant active", || async {
        w.status(&g).await == GrantStatus::Active
    })
    .await;
    {
        let state = w.sims[0].router().state();
        assert!(
            state
                .scheduler
                .by_name(&format!("postern-access-{}", g.id))
                .is_none(),
            "a write grant got a self-expiry entry"
        );
        assert!(
            state.scheduler.by_name(&reader_entry).is_none(),
            "a user-removing entry stayed while a write user is on the router"
        );
    }
    // The write user tries: raising an entry's policy is refused…
    let attacker = login(&w, 0, &g.username, "S3cret-temporary-pw").await;
    let id = api::scheduler::print(&attacker, &Filter::name(&entry))
        .await
        .unwrap()[0]
        .id
        .clone();
    let raised = attacker
        .call(
            Command::new("/system/scheduler/set")
                .attr(".id", id.as_str())
                .attr("policy", "read,write,policy"),
        )
        .await;
    assert!(
        matches!(&raised, Err(routeros::Error::Trap { message, .. }) if message.contains("not enough permissions")),
        "{raised:?}"
    );
    // …and a script rewritten to add a full user runs with the entry's read,write only.
    let soon = Utc::now() + chrono::Duration::seconds(2);
    attacker
        .call(
            Command::new("/system/scheduler/set")
                .attr(".id", id.as_str())
                .attr(
                    "on-event",
                    "/user add name=evil group=full password=evil-password-1",
                )
                .attr("start-date", soon.format("%Y-%m-%d").to_string())
                .attr("start-time", soon.format("%H:%M:%S").to_string()),
        )
        .await
        .unwrap();
    until(Duration::from_secs(6), "the altered entry ran", || async {
        w.sims[0]
            .router()
            .state()
            .scheduler
            .by_name(&entry)
            .is_some_and(|e| e.props.get("run-count").map(String::as_str) == Some("1"))
    })
    .await;
    assert!(
        w.user_on(0, "evil").is_none(),
        "the write user made a full user"
    );
    // The reconciler sees the changed script and writes Postern's entry again.
    assert!(w.orch.reconcile_router(w.routers[0].id).await.unwrap() >= 1);
    until(Duration::from_secs(5), "Postern's entry back", || async {
        w.sims[0]
            .router()
            .state()
            .scheduler
            .by_name(&entry)
            .is_some_and(|e| {
                e.props
                    .get("on-event")
                    .is_some_and(|s| s.starts_with("/ip firewall nat remove"))
            })
    })
    .await;
    let log = w.settled_log(0).await;
    for text in [
        "no self-expiry entry for a write grant",
        ": a write user may edit scheduler entries)",
        "has a script or policy Postern did not write",
        "policy=read,write comment=postern:forward:",
    ] {
        assert!(has(&log, text), "log lacks {text:?}:\n{}", log.join("\n"));
    }
    // Once the write grant is gone, the read grant's entry comes back.
    assert!(w.orch.revoke(GrantKey::Access(g.id)).await.unwrap());
    until(
        Duration::from_secs(5),
        "the write grant revoked",
        || async { w.status(&g).await == GrantStatus::Revoked },
    )
    .await;
    w.orch.reconcile_router(w.routers[0].id).await.unwrap();
    until(
        Duration::from_secs(5),
        "the read grant's entry back",
        || async {
            w.sims[0]
                .router()
                .state()
                .scheduler
                .by_name(&reader_entry)
                .is_some()
        },
    )
    .await;
    w.stop().await;
}

/// On RouterOS 6 (no `/user active remove`) the self-expiry script only removes the
/// user: a script naming a command the router lacks would not compile there and would
/// remove nothing. The revoke path logs that sessions could not be ended and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_routeros_6_the_self_expiry_script_still_removes_the_user() {
    let mut w = world_of(Db::Sqlite, 1, 28, fast_config(), Some("6.49.10"))
        .await
        .unwrap();
    // A revoke there: the session cannot be ended on the router (no such command),
    // which is logged, and the user goes all the same.
    let other = w.access(0, Duration::from_secs(600), false).await;
    until(Duration::from_secs(5), "the other grant active", || async {
        w.status(&other).await == GrantStatus::Active
    })
    .await;
    let _other_winbox = winbox_login(&w.sims[0], &other.username, "S3cret-temporary-pw").await;
    assert!(w.orch.revoke(GrantKey::Access(other.id)).await.unwrap());
    until(
        Duration::from_secs(5),
        "the other grant revoked",
        || async { w.status(&other).await == GrantStatus::Revoked },
    )
    .await;
    assert!(w.user_on(0, &other.username).is_none());
    let log = w.settled_log(0).await;
    assert!(
        has(&log, "no such command or directory (remove)")
            && has(&log, "could not be ended on the router"),
        "{}",
        log.join("\n")
    );
    // The self-expiry entry, with Postern down.
    let g = w.access(0, Duration::from_secs(3), false).await;
    until(Duration::from_secs(5), "the grant active", || async {
        w.status(&g).await == GrantStatus::Active
    })
    .await;
    w.stop_orchestrator().await;
    let scripts = scripts_sent(&w.sims);
    assert!(
        !scripts.is_empty() && scripts.iter().all(|s| !s.contains("/user active")),
        "{scripts:?}"
    );
    until(
        Duration::from_secs(8),
        "the router to remove the user",
        || async { w.user_on(0, &g.username).is_none() },
    )
    .await;
    until(
        Duration::from_secs(3),
        "the entry to remove itself",
        || async { w.sims[0].router().state().scheduler.items.is_empty() },
    )
    .await;
    w.stop().await;
}

/// Issue 13, finding 5: a full user widened `postern-read`; the next read grant's user
/// joined a group that could write. Now the groups are set back before a user is added
/// and by the reconciler, and the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_widened_postern_group_is_set_back_before_a_user_joins_it() {
    let w = world(Db::Sqlite, 1, 22, fast_config()).await.unwrap();
    let first = w.access(0, Duration::from_secs(600), false).await;
    until(Duration::from_secs(5), "the first grant active", || async {
        w.status(&first).await == GrantStatus::Active
    })
    .await;
    let admin = login(&w, 0, "admin", &w.sims[0].admin_password).await;
    let widen = || async {
        let group = api::group::print(&admin, &Filter::name("postern-read"))
            .await
            .unwrap()
            .remove(0);
        let wide: Vec<String> = "local,ssh,read,write,policy,test,api"
            .split(',')
            .map(str::to_owned)
            .collect();
        api::group::set_policy(&admin, &group.id, &wide)
            .await
            .unwrap();
    };
    let read_policy = || {
        w.sims[0]
            .router()
            .state()
            .groups
            .by_name("postern-read")
            .unwrap()
            .props["policy"]
            .clone()
    };
    widen().await;
    assert!(granted(&read_policy()).contains(&"policy".to_owned()));
    let second = w.access(0, Duration::from_secs(600), false).await;
    until(
        Duration::from_secs(5),
        "the second grant active",
        || async { w.status(&second).await == GrantStatus::Active },
    )
    .await;
    assert_eq!(
        granted(&read_policy()),
        granted("local,telnet,ssh,read,test,winbox,web,api,romon,rest-api"),
        "the group was not set back before the user joined it"
    );
    // The reconciler's scan finds it too.
    widen().await;
    assert!(w.orch.reconcile_router(w.routers[0].id).await.unwrap() >= 1);
    until(Duration::from_secs(5), "the group set back", || async {
        !granted(&read_policy()).contains(&"write".to_owned())
    })
    .await;
    let log = w.settled_log(0).await;
    assert!(
        has(
            &log,
            "drift: group postern-read has policy api,local,policy,read,ssh,test,write instead of Postern's"
        ),
        "{}",
        log.join("\n")
    );
    assert!(has(&log, "sent /user/group/set .id="), "{}", log.join("\n"));
    w.stop().await;
}

/// Issue 13, finding 6: a forward's rules matched any source. Now they match the
/// gateway's tunnel address only: another host reaching the router's address does not
/// reach the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_admits_only_the_gateways_tunnel_address() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let w = world(Db::Sqlite, 1, 23, fast_config()).await.unwrap();
    let service = tokio::net::TcpListener::bind("127.0.23.50:0")
        .await
        .unwrap();
    let dst = service.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = service.accept().await {
            let _ = s.write_all(b"hello from the device").await;
        }
    });
    let f = w.forward(0, dst, true).await;
    until(Duration::from_secs(5), "the forward active", || async {
        w.store()
            .get_forward(w.org, f.router_id, f.id)
            .await
            .unwrap()
            .status
            == GrantStatus::Active
    })
    .await;
    {
        let state = w.sims[0].router().state();
        let tag = format!("postern:forward:{}", f.id);
        let rules: Vec<_> = state
            .nat
            .items
            .iter()
            .filter(|r| r.get("comment") == Some(tag.as_str()))
            .map(|r| r.props.clone())
            .collect();
        assert_eq!(rules.len(), 2, "{rules:?}");
        for r in &rules {
            assert_eq!(r["src-address"], "127.0.0.1", "{r:?}");
        }
    }
    let read = |from: &'static str| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
        let mut got = Vec::new();
        if let Ok(mut conn) = socket
            .connect(format!("127.0.23.2:{}", f.router_port).parse().unwrap())
            .await
        {
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.read_to_end(&mut got)).await;
        }
        got
    };
    // From the gateway's tunnel address: through to the device.
    assert_eq!(read("127.0.0.1").await, b"hello from the device");
    // From anywhere else (a LAN host, another source): nothing.
    assert_eq!(read("127.0.23.9").await, b"");
    let log = w.settled_log(0).await;
    assert!(
        has(
            &log,
            "chain=dstnat action=dst-nat protocol=tcp src-address=127.0.0.1 dst-address=127.0.23.2"
        ),
        "{}",
        log.join("\n")
    );
    assert!(
        has(
            &log,
            "chain=srcnat action=masquerade protocol=tcp src-address=127.0.0.1"
        ),
        "{}",
        log.join("\n")
    );
    w.stop().await;
}

/// Issue 13, finding 11: a "router" registered at an arbitrary address let operators
/// read `Connection refused` or `protocol error … (103 bytes left over)` in the job
/// log. Now the log says the same neutral words whatever answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_logs_never_repeat_what_a_non_routeros_peer_said() {
    use tokio::io::AsyncWriteExt;
    let w = world(Db::Sqlite, 2, 24, fast_config()).await.unwrap();
    // Router 0 now "is" a chatty non-RouterOS service; router 1 a closed port.
    let chatty = tokio::net::TcpListener::bind("127.0.24.60:0")
        .await
        .unwrap();
    let chatty_addr = chatty.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = chatty.accept().await {
            let _ = s
                .write_all(b"SSH-2.0-OpenSSH_9.6 secret-banner of an internal service\r\n")
                .await;
        }
    });
    let closed = {
        let l = std::net::TcpListener::bind("127.0.24.61:0").unwrap();
        l.local_addr().unwrap()
    };
    for (i, at) in [(0, chatty_addr), (1, closed)] {
        w.store()
            .update_router(
                w.org,
                w.routers[i].id,
                store::RouterPatch {
                    tunnel_address: Some(at.ip()),
                    api_port: Some(at.port()),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        w.orch.router_changed(w.routers[i].id);
    }
    let a = w.access_with(0, Duration::from_secs(600), false, 1).await;
    let b = w.access_with(1, Duration::from_secs(600), false, 1).await;
    for g in [&a, &b] {
        until(Duration::from_secs(8), "the grant failed", || async {
            w.status(g).await == GrantStatus::Failed
        })
        .await;
    }
    for i in [0, 1] {
        // The failed grants' clean-ups retry for ever against these peers: the log is
        // read once the creation's lines are in.
        until(
            Duration::from_secs(5),
            "the creation's last line",
            || async { has(&w.log(i).await, "failed after 1 attempt(s)") },
        )
        .await;
        let log = w.log(i).await.join("\n");
        assert!(
            log.contains("no RouterOS API answered as expected"),
            "{log}"
        );
        for leak in [
            "SSH-2.0",
            "secret-banner",
            "protocol error",
            "left over",
            "refused",
            "os error",
        ] {
            assert!(
                !log.to_lowercase().contains(&leak.to_lowercase()),
                "the log repeats {leak:?}:\n{log}"
            );
        }
    }
    let failed = w
        .store()
        .get_access(w.org, a.router_id, a.id)
        .await
        .unwrap();
    let reason = failed.failure_reason.unwrap_or_default();
    assert!(
        !reason.contains("SSH-2.0") && !reason.contains("protocol error"),
        "{reason}"
    );
    // Its routers are not sims: nothing reached them.
    w.stop_checking(false).await;
}

/// Issue 13, finding 1: a router moved elsewhere kept its open connection (and so
/// answered from the old place) until it broke. Now a change drops it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_router_is_connected_to_afresh() {
    let w = world(Db::Sqlite, 2, 25, fast_config()).await.unwrap();
    let first = w.access(0, Duration::from_secs(600), false).await;
    until(Duration::from_secs(5), "the first grant active", || async {
        w.status(&first).await == GrantStatus::Active
    })
    .await;
    // Router 0 is re-pointed at sim 1 (its admin password is sim 1's).
    let to = &w.sims[1];
    w.store()
        .update_router(
            w.org,
            w.routers[0].id,
            store::RouterPatch {
                tunnel_address: Some(to.api_addr.ip()),
                api_port: Some(to.api_addr.port()),
                password: Some(to.admin_password.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    w.orch.router_changed(w.routers[0].id);
    let second = w.access(0, Duration::from_secs(600), false).await;
    until(
        Duration::from_secs(5),
        "the second grant active",
        || async { w.status(&second).await == GrantStatus::Active },
    )
    .await;
    assert!(
        w.user_on(1, &second.username).is_some(),
        "not made at the new place"
    );
    assert!(
        w.user_on(0, &second.username).is_none(),
        "made at the old place"
    );
    w.stop().await;
}

/// Issue 13, finding 1: API-SSL with the router's certificate pinned on first use and
/// then kept: a router moved to a peer with another certificate is not logged in to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_ssl_pins_the_certificate_on_first_use_and_keeps_it() {
    let w = world(Db::Sqlite, 2, 26, fast_config()).await.unwrap();
    let id = w.routers[0].id;
    let tls_port = |i: usize| w.sims[i].api_tls_addr.port();
    w.store()
        .update_router(
            w.org,
            id,
            store::RouterPatch {
                api_tls: Some(true),
                api_port: Some(tls_port(0)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    w.orch.router_changed(id);
    let first = w.access(0, Duration::from_secs(600), false).await;
    until(
        Duration::from_secs(5),
        "the grant active over API-SSL",
        || async { w.status(&first).await == GrantStatus::Active },
    )
    .await;
    let pinned = w
        .store()
        .get_router(w.org, id)
        .await
        .unwrap()
        .api_tls_fingerprint;
    let want = routeros::CertFingerprint::from_hex(&w.sims[0].tls.fingerprint_sha256)
        .unwrap()
        .to_string();
    assert_eq!(pinned.as_deref(), Some(want.as_str()));
    // (The pin is logged by whichever connection made it first: the job's, or the
    // reconciler's scan, whose log is its own.)
    // Moved to a peer with another certificate (sim 1, with the right password even):
    // the pin is kept and the login never happens.
    w.store()
        .update_router(
            w.org,
            id,
            store::RouterPatch {
                tunnel_address: Some(w.sims[1].api_tls_addr.ip()),
                api_port: Some(tls_port(1)),
                password: Some(w.sims[1].admin_password.clone()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    w.orch.router_changed(id);
    let second = w.access_with(0, Duration::from_secs(600), false, 1).await;
    until(Duration::from_secs(8), "the grant failed", || async {
        w.status(&second).await == GrantStatus::Failed
    })
    .await;
    assert!(w.user_on(1, &second.username).is_none());
    assert_eq!(
        w.store()
            .get_router(w.org, id)
            .await
            .unwrap()
            .api_tls_fingerprint
            .as_deref(),
        Some(want.as_str()),
        "the pin was replaced"
    );
    // The grant's failure and the attempt's log lines are separate writes: wait for the
    // lines.
    until(Duration::from_secs(8), "the refusal in the log", || async {
        has(&w.log(0).await, "no RouterOS API answered as expected")
    })
    .await;
    let log = w.log(0).await;
    let moved_to = format!("connected to router r0 at {}", w.sims[1].api_tls_addr);
    assert!(!has(&log, &moved_to), "{}", log.join("\n"));
    w.stop().await;
}

/// The API sessions the orchestrator (the sims' `admin`) holds on router `i`, as the
/// router's `/user/active` shows them.
fn api_sessions(w: &World, i: usize) -> usize {
    w.sims[i]
        .router()
        .state()
        .active
        .items
        .iter()
        .filter(|s| {
            s.props.get("via").map(String::as_str) == Some("api")
                && s.props.get("name").map(String::as_str) == Some("admin")
        })
        .count()
}

/// Issue 15, scale: a router's connection closes once no job has used it for
/// `router_idle` (the router sees its API session end), and the next job opens it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_is_closed_and_the_next_job_reopens_it() {
    let idle = Duration::from_millis(1500);
    let config = Config {
        router_idle: idle,
        reconcile_interval: Duration::from_secs(3600),
        ..fast_config()
    };
    let w = world(Db::Sqlite, 1, 29, config).await.unwrap();
    // The reconciler's first scan opened a connection and closed it when done.
    until(Duration::from_secs(5), "the first scan done", || async {
        let s = w.orch.connection_stats();
        s.opened == 1 && s.open == 0 && api_sessions(&w, 0) == 0
    })
    .await;
    assert_eq!(w.orch.connection_stats().closed_after_scan, 1);

    let first = w.access(0, Duration::from_secs(600), false).await;
    until(Duration::from_secs(5), "the first grant active", || async {
        w.status(&first).await == GrantStatus::Active
    })
    .await;
    let active_at = Instant::now();
    // Kept after the job: the next one would use it.
    assert_eq!(w.orch.connection_stats().open, 1);
    assert_eq!(api_sessions(&w, 0), 1, "the job's session is open");
    until(
        idle + Duration::from_secs(3),
        "the idle connection closed on the router",
        || async { api_sessions(&w, 0) == 0 },
    )
    .await;
    // Not before the idle time (measured from after the job's last use).
    let closed_after = active_at.elapsed();
    let stats = w.orch.connection_stats();
    assert_eq!((stats.open, stats.closed_idle), (0, 1), "{stats:?}");
    assert!(
        closed_after < idle + Duration::from_secs(2),
        "{closed_after:?}"
    );

    // The next job connects afresh, and says so.
    let second = w.access(0, Duration::from_secs(600), false).await;
    until(
        Duration::from_secs(5),
        "the second grant active",
        || async { w.status(&second).await == GrantStatus::Active },
    )
    .await;
    assert!(w.user_on(0, &second.username).is_some());
    assert_eq!(api_sessions(&w, 0), 1);
    let log = w.settled_log(0).await;
    let connected = log
        .iter()
        .filter(|l| l.contains("connected to router r0 at"))
        .count();
    assert_eq!(connected, 2, "each job connected: {log:#?}");
    assert!(!has(&log, "using the open connection"), "{log:#?}");
    assert_eq!(w.orch.connection_stats().opened, 3);
    w.stop().await;
}

/// A job's connection is never closed under it: with every reply slower than the idle
/// time, the job runs its commands on the one connection it opened, in one attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_in_use_is_not_closed_for_idleness() {
    let config = Config {
        router_idle: Duration::from_millis(100),
        reconcile_interval: Duration::from_secs(3600),
        attempt_timeout: Duration::from_secs(30),
        ..fast_config()
    };
    let w = world(Db::Sqlite, 1, 30, config).await.unwrap();
    until(Duration::from_secs(5), "the first scan done", || async {
        let s = w.orch.connection_stats();
        s.opened == 1 && s.open == 0 && api_sessions(&w, 0) == 0
    })
    .await;
    // Each reply sentence waits 250 ms: every command is in flight longer than the
    // idle time, and the job holds the connection between commands.
    w.sims[0].faults().set_latency(Duration::from_millis(250));
    let grant = w.access(0, Duration::from_secs(600), false).await;
    let most = std::cell::Cell::new(0);
    until(Duration::from_secs(25), "the grant active", || {
        most.set(most.get().max(api_sessions(&w, 0)));
        async { w.status(&grant).await == GrantStatus::Active }
    })
    .await;
    w.sims[0].faults().set_latency(Duration::ZERO);
    let log = w.settled_log(0).await;
    let jobs = w
        .store()
        .list_jobs(
            w.org,
            w.routers[0].id,
            store::Page {
                limit: 10,
                offset: 0,
            },
        )
        .await
        .unwrap();
    let (create, _) = jobs
        .iter()
        .find(|(j, _)| j.kind == "access.create")
        .unwrap();
    assert_eq!(create.attempts, 1, "{log:#?}");
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("connected to router r0"))
            .count(),
        1,
        "{log:#?}"
    );
    assert!(
        log.iter()
            .filter(|l| l.starts_with("[access.create"))
            .count()
            > 5,
        "{log:#?}"
    );
    assert_eq!(most.get(), 1, "one session through the job");
    // Once the job let go of it, it goes.
    until(
        Duration::from_secs(3),
        "the connection closed after the job",
        || async { api_sessions(&w, 0) == 0 },
    )
    .await;
    assert_eq!(w.orch.connection_stats().closed_idle, 1);
    w.stop().await;
}

/// The reconciler's scans keep no connection open: a scan closes the connection it
/// opened when it is done, and leaves a job's open one as it found it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_scan_closes_only_the_connection_it_opened() {
    let config = Config {
        router_idle: Duration::from_secs(600),
        reconcile_interval: Duration::from_secs(3600),
        ..fast_config()
    };
    let w = world(Db::Sqlite, 2, 31, config).await.unwrap();
    until(Duration::from_secs(5), "the first scans done", || async {
        let s = w.orch.connection_stats();
        s.opened == 2 && s.open == 0 && api_sessions(&w, 0) == 0 && api_sessions(&w, 1) == 0
    })
    .await;
    assert_eq!(w.orch.reconcile_router(w.routers[1].id).await.unwrap(), 0);
    let s = w.orch.connection_stats();
    assert_eq!((s.opened, s.open, s.closed_after_scan), (3, 0, 3), "{s:?}");
    until(
        Duration::from_secs(3),
        "no session left on router 1",
        || async { api_sessions(&w, 1) == 0 },
    )
    .await;

    let grant = w.access(0, Duration::from_secs(600), false).await;
    until(Duration::from_secs(5), "the grant active", || async {
        w.status(&grant).await == GrantStatus::Active
    })
    .await;
    assert_eq!(w.orch.reconcile_router(w.routers[0].id).await.unwrap(), 0);
    let s = w.orch.connection_stats();
    assert_eq!((s.opened, s.open, s.closed_after_scan), (4, 1, 3), "{s:?}");
    assert_eq!(api_sessions(&w, 0), 1, "the job's connection is still open");
    w.stop().await;
}
