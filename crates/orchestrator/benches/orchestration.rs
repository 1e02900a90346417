//! Orchestration benchmark against a sim fleet of 20 routers on loopback with SQLite:
//!
//! 1. 20 grants created one at a time, then 100 at once (5 per router): time from the create (grant and job in
//!    one transaction) to the user existing on the router; targets p50 < 50 ms,
//!    p99 < 250 ms.
//! 2. Revoke of those 100, each with a live API session of its user: time until the
//!    session is ended and the user gone; target p99 < 250 ms.
//! 3. 1,000 grants expiring within the same 30 s: lateness of the user's removal
//!    against `expires_at` (router self-expiry off, so Postern's own timer is measured);
//!    target within 1 s.
//!
//! Run: `cargo bench -p postern-orchestrator --bench orchestration` (bounded to 4 min);
//! with `BENCH_TIMELINE=1` it also prints the log of the slowest creation's router, as
//! times from the first of its jobs: where a grant waited.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use domain::{AccessLevel, AccessType, OrgId, RegionId};
use postern_orchestrator::{Config, GrantKey, LoggingDataPlane, Orchestrator, SystemClock};
use routeros::{Client, ClientConfig};
use serde_json::json;
use sim::{Fleet, FleetOptions, Ports};
use tokio::sync::watch;

const ROUTERS: usize = 20;
const PASSWORD: &str = "Bench-temporary-pw1";

struct Env {
    store: store::Store,
    org: OrgId,
    region: RegionId,
    fleet: Fleet,
    routers: Vec<store::Router>,
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    println!(
        "{name}: n={} p50={:.1} ms p90={:.1} ms p99={:.1} ms max={:.1} ms",
        v.len(),
        pct(&v, 0.5).as_secs_f64() * 1e3,
        pct(&v, 0.9).as_secs_f64() * 1e3,
        pct(&v, 0.99).as_secs_f64() * 1e3,
        v.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

async fn create(
    env: &Env,
    i: usize,
    router: usize,
    expires_in: chrono::Duration,
) -> store::TransientAccess {
    let now = Utc::now();
    let r = &env.routers[router];
    env.store
        .create_access(store::NewAccess {
            org_id: env.org,
            router_id: r.id,
            access_type: AccessType::Winbox,
            access: AccessLevel::Full,
            allow_rfc1918: false,
            allow_from: "198.51.100.0/24".parse().unwrap(),
            username: format!("pb-{i}"),
            password: PASSWORD.into(),
            expires_at: now + expires_in,
            created_by: "bench".into(),
            region_id: env.region,
            entry_point: "127.0.0.1".into(),
            port_candidates: vec![20000 + i as u16],
            audit: store::NewAudit {
                org_id: env.org,
                at: now,
                actor: "bench".into(),
                actor_address: None,
                action: "access.create".into(),
                target: None,
                details: json!({}),
            },
            terminal: false,
            job: Some(store::NewJob {
                org_id: env.org,
                router_id: r.id,
                kind: "access.create".into(),
                payload: json!({}),
                max_attempts: 8,
                run_after: now,
                created_at: now,
            }),
        })
        .await
        .unwrap()
}

/// Watches the routers for users coming (or going) in one task that scans every
/// 250 µs: a hundred tasks each polling would load the 2 cores being measured.
#[derive(Default)]
struct Watcher {
    waiting: std::sync::Mutex<Vec<Waiting>>,
}

/// A router, a user name, whether it should be there, and whom to tell.
type Waiting = (usize, String, bool, tokio::sync::oneshot::Sender<()>);

impl Watcher {
    fn start(env: Arc<Env>) -> (Arc<Watcher>, tokio::task::JoinHandle<()>) {
        let watcher = Arc::new(Watcher::default());
        let w = watcher.clone();
        let task = tokio::spawn(async move {
            loop {
                {
                    let mut waiting = w.waiting.lock().unwrap();
                    let mut i = 0;
                    while i < waiting.len() {
                        let (router, name, present, _) = &waiting[i];
                        if user_exists(&env, *router, name) == *present {
                            let (_, _, _, tx) = waiting.swap_remove(i);
                            let _ = tx.send(());
                        } else {
                            i += 1;
                        }
                    }
                }
                if Arc::strong_count(&w) == 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_micros(250)).await;
            }
        });
        (watcher, task)
    }

    /// Until user `name` is on `router` (`present`) or gone from it.
    async fn until(&self, router: usize, name: &str, present: bool) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting
            .lock()
            .unwrap()
            .push((router, name.to_owned(), present, tx));
        rx.await.unwrap();
    }
}

fn user_exists(env: &Env, router: usize, name: &str) -> bool {
    env.fleet.routers[router]
        .router()
        .state()
        .users
        .by_name(name)
        .is_some()
}

fn start_orchestrator(
    env: &Env,
    self_expiry: bool,
) -> (
    Orchestrator,
    watch::Sender<bool>,
    tokio::task::JoinHandle<()>,
) {
    let orch = Orchestrator::new(
        env.store.clone(),
        Config {
            router_self_expiry: self_expiry,
            reconcile_interval: Duration::from_secs(3600),
            ..Config::default()
        },
        Arc::new(SystemClock),
        Arc::new(LoggingDataPlane),
    );
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(orch.clone().run(stopped));
    (orch, stop, task)
}

async fn bench() {
    let dir = tempfile::tempdir().unwrap();
    let store = store::Store::open(
        &format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        ),
        &store::StoreConfig::new([7u8; 32]),
    )
    .await
    .unwrap();
    let org = store.create_organisation("bench").await.unwrap().id;
    let region = store
        .upsert_region(store::NewRegion {
            name: "local".into(),
            entry_point: "127.0.0.1".into(),
            port_min: 20000,
            port_max: 30000,
        })
        .await
        .unwrap();
    store
        .set_region_tunnel_source(region.id, Some("127.0.0.1".parse().unwrap()))
        .await
        .unwrap();
    let fleet = Fleet::start(
        ROUTERS,
        "127.0.40.1".parse().unwrap(),
        FleetOptions {
            ports: Ports::ephemeral(),
            ..FleetOptions::default()
        },
    )
    .await
    .unwrap();
    let mut routers = Vec::new();
    for (i, r) in fleet.routers.iter().enumerate() {
        routers.push(
            store
                .create_router(store::NewRouter {
                    org_id: org,
                    site_name: None,
                    region_id: region.id,
                    name: format!("r{i}"),
                    tunnel_address: r.address(),
                    api_port: r.api_addr.port(),
                    ssh_port: r.ssh_addr.port(),
                    winbox_port: r.winbox_addr.port(),
                    api_tls: false,
                    api_tls_fingerprint: None,
                    username: "admin".into(),
                    password: r.admin_password.clone(),
                })
                .await
                .unwrap(),
        );
    }
    let env = Arc::new(Env {
        store,
        org,
        region: region.id,
        fleet,
        routers,
    });

    // --- 1 and 2: create and revoke, router self-expiry on (the scheduler entry too).
    let (orch, stop, task) = start_orchestrator(&env, true);
    // Warm-up: one grant per router, so connections and groups exist (as in steady state).
    for r in 0..ROUTERS {
        create(&env, 10_000 + r, r, chrono::Duration::minutes(30)).await;
    }
    orch.jobs_queued().await;
    for r in 0..ROUTERS {
        while !user_exists(&env, r, &format!("pb-{}", 10_000 + r)) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // One at a time: the cost of a grant without a queue.
    let mut alone = Vec::new();
    for i in 0..20 {
        let router = i % ROUTERS;
        let t0 = Instant::now();
        let g = create(&env, 20_000 + i, router, chrono::Duration::minutes(30)).await;
        orch.jobs_queued().await;
        while !user_exists(&env, router, &g.username) {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        alone.push(t0.elapsed());
    }
    summary("create -> user on router (one at a time)", alone);
    let writes_before = env.store.write_stats();
    let (watcher, watching) = Watcher::start(env.clone());
    let mut tasks = Vec::new();
    for i in 0..100 {
        let env = env.clone();
        let orch = orch.clone();
        let watcher = watcher.clone();
        tasks.push(tokio::spawn(async move {
            let router = i % ROUTERS;
            let t0 = Instant::now();
            let g = create(&env, i, router, chrono::Duration::minutes(30)).await;
            let recorded = t0.elapsed();
            orch.jobs_queued().await;
            watcher.until(router, &g.username, true).await;
            (t0.elapsed(), g, router, recorded)
        }));
    }
    let mut created = Vec::new();
    for t in tasks {
        created.push(t.await.unwrap());
    }
    summary(
        "create -> user on router (100 concurrent, 20 routers)",
        created.iter().map(|c| c.0).collect(),
    );
    summary(
        "  of which: the create's own transaction (grant + job), queued behind the others",
        created.iter().map(|c| c.3).collect(),
    );
    summary(
        "  of which: committed -> user on router",
        created.iter().map(|c| c.0 - c.3).collect(),
    );
    // Let the last jobs end, then count the writes the 100 grants cost.
    for (_, g, _, _) in &created {
        while env
            .store
            .get_access(env.org, g.router_id, g.id)
            .await
            .unwrap()
            .status
            != domain::GrantStatus::Active
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    write_stats(
        "100 concurrent creations",
        writes_before,
        env.store.write_stats(),
        100,
    );
    if std::env::var_os("BENCH_TIMELINE").is_some() {
        timeline(&env, &created).await;
    }

    // Live API sessions of each user.
    let mut sessions = Vec::new();
    for (_, g, router, _) in &created {
        let addr = env.fleet.routers[*router].api_addr.to_string();
        let client = Client::connect(&ClientConfig::new(addr, &g.username, PASSWORD))
            .await
            .unwrap();
        sessions.push(client);
    }
    let mut tasks = Vec::new();
    let writes_before = env.store.write_stats();
    for ((_, g, router, _), session) in created.into_iter().zip(sessions) {
        let orch = orch.clone();
        let watcher = watcher.clone();
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            assert!(orch.revoke(GrantKey::Access(g.id)).await.unwrap());
            // The sessions are logged out before the user is removed.
            watcher.until(router, &g.username, false).await;
            while !session.is_closed() {
                tokio::time::sleep(Duration::from_micros(250)).await;
            }
            t0.elapsed()
        }));
    }
    drop(watcher);
    let mut revoked = Vec::new();
    for t in tasks {
        revoked.push(t.await.unwrap());
    }
    let _ = watching.await;
    summary(
        "revoke -> sessions ended and user gone (100 concurrent)",
        revoked,
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    write_stats(
        "100 concurrent revokes",
        writes_before,
        env.store.write_stats(),
        100,
    );
    let _ = stop.send(true);
    let _ = task.await;

    // --- 3: 1,000 grants expiring within the same 30 s, Postern's timer only.
    let (orch, stop, task) = start_orchestrator(&env, false);
    let base = Utc::now() + chrono::Duration::seconds(25);
    let mut grants = Vec::new();
    let t0 = Instant::now();
    for i in 0..1000 {
        let router = i % ROUTERS;
        let at = base + chrono::Duration::milliseconds((i as i64 * 30) % 30_000);
        let g = create(&env, 1000 + i, router, at - Utc::now()).await;
        grants.push((g, router));
    }
    orch.jobs_queued().await;
    orch.expiry_changed();
    // All on their routers before the first expiry.
    for (g, r) in &grants {
        while !user_exists(&env, *r, &g.username) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    println!(
        "1,000 grants created and on their routers in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let mut pending: HashMap<String, (usize, chrono::DateTime<Utc>)> = grants
        .iter()
        .map(|(g, r)| (g.username.clone(), (*r, g.expires_at)))
        .collect();
    let mut lateness = Vec::new();
    let mut latest: Option<(Duration, String)> = None;
    let mut early = 0;
    let writes_before = env.store.write_stats();
    while !pending.is_empty() {
        let gone: Vec<String> = pending
            .iter()
            .filter(|(name, (r, _))| !user_exists(&env, *r, name))
            .map(|(name, _)| name.clone())
            .collect();
        // Sampled after the scan: a user seen gone was gone by now (a time taken before
        // the scan could precede a removal the scan saw, and read as early).
        let now = Utc::now();
        for name in gone {
            let (_, at) = pending.remove(&name).unwrap();
            match (now - at).to_std() {
                Ok(d) => {
                    if latest.as_ref().is_none_or(|(l, _)| d > *l) {
                        latest = Some((d, name.clone()));
                    }
                    lateness.push(d)
                }
                Err(_) => {
                    early += 1;
                    println!("early: {name} gone at {now}, expires at {at}");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("users removed before expires_at: {early}");
    summary("expiry lateness (1,000 grants within 30 s)", lateness);
    write_stats(
        "1,000 expiries",
        writes_before,
        env.store.write_stats(),
        1000,
    );
    if let (Some((late, name)), true) = (latest, std::env::var_os("BENCH_TIMELINE").is_some()) {
        let (g, r) = grants.iter().find(|(g, _)| g.username == name).unwrap();
        println!(
            "  the latest ({:.1} ms), on router r{r}: its jobs, from expires_at:",
            late.as_secs_f64() * 1e3
        );
        let jobs = env
            .store
            .list_jobs(
                env.org,
                g.router_id,
                store::Page {
                    limit: 40,
                    offset: 0,
                },
            )
            .await
            .unwrap();
        for (job, lines) in jobs.iter().rev() {
            if job.payload["grant_id"].as_str() != Some(&g.id.to_string()) {
                continue;
            }
            println!(
                "    job {} {} created {:+} ms",
                job.kind,
                job.id,
                (job.created_at - g.expires_at).num_milliseconds()
            );
            for l in lines {
                println!(
                    "      {:+} ms {}",
                    (l.at - g.expires_at).num_milliseconds(),
                    l.message
                );
            }
        }
    }
    let _ = stop.send(true);
    let _ = task.await;
}

/// The SQLite writer's use between two readings, per grant.
fn write_stats(what: &str, before: store::WriteStats, after: store::WriteStats, grants: u64) {
    let writes = after.writes - before.writes;
    let held = after.held - before.held;
    let waited = after.waited - before.waited;
    println!(
        "  writes for {what}: {writes} ({:.1} per grant), writer held {:.1} ms in all ({:.0} µs per write), queued for it {:.1} ms in all",
        writes as f64 / grants as f64,
        held.as_secs_f64() * 1e3,
        held.as_secs_f64() * 1e6 / writes.max(1) as f64,
        waited.as_secs_f64() * 1e3,
    );
}

/// The log of the slowest creation's router, as times from the first job's creation:
/// where a grant queued.
async fn timeline(env: &Env, created: &[(Duration, store::TransientAccess, usize, Duration)]) {
    let Some((took, slowest, router, _)) = created.iter().max_by_key(|c| c.0) else {
        return;
    };
    println!(
        "  the slowest ({:.1} ms), on router r{router}, and the jobs before it:",
        took.as_secs_f64() * 1e3
    );
    let mut jobs = env
        .store
        .list_jobs(
            env.org,
            slowest.router_id,
            store::Page {
                limit: 6,
                offset: 0,
            },
        )
        .await
        .unwrap();
    jobs.reverse();
    let Some(origin) = jobs.iter().map(|(j, _)| j.created_at).min() else {
        return;
    };
    for (job, lines) in &jobs {
        let grant = job.payload["grant_id"].as_str().unwrap_or("-");
        let mark = if grant == slowest.id.to_string() {
            " <- slowest"
        } else {
            ""
        };
        println!(
            "    job {} created +{} ms{mark}",
            job.id,
            (job.created_at - origin).num_milliseconds()
        );
        for l in lines {
            println!(
                "      +{:>4} ms {}",
                (l.at - origin).num_milliseconds(),
                l.message
            );
        }
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if tokio::time::timeout(Duration::from_secs(240), bench())
            .await
            .is_err()
        {
            eprintln!("the benchmark did not finish within 4 minutes");
            std::process::exit(1);
        }
    });
}
