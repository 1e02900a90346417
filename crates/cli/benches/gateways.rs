//! A remote gateway against the in-process one, side by side in one run, on loopback: a
//! real `postern server` (SQLite in a temporary directory, lab mode) whose configuration
//! has a `local` region (the node inside the server, driven over an in-memory stream)
//! and a `remote` region served by a real `postern gateway` process on 127.0.0.2
//! (joined with a token from `postern admin add-gateway`, driven over mTLS). Two sim
//! routers in this process, reached directly (one per region), so the router side is
//! the same for both; only the control plane's path to the data plane differs.
//!
//! 1. `POST /api/routers/{id}/transient-access?wait=true` (SSH), one at a time,
//!    alternating local and remote: time to the answer (`active`) and to the entry
//!    port accepting a connection with the user on the router (target: remote p50
//!    within 1.5x of local). The same without `?wait=true`, the port and the router
//!    probed every millisecond from the answer on (the API answers a waiting create
//!    on a 5 ms tick).
//! 2. `DELETE` of that grant: time from sending it to the first refused connection to
//!    the entry port (probed every millisecond from the moment the DELETE is sent);
//!    the answer; the user gone (target: remote p99 within 100 ms).
//! 3. 10,000 active grants of the remote region (written through the store with the
//!    server stopped, on a router that does not answer, so no job runs for them): from
//!    the server's start, and then from each restart of the gateway process (killed,
//!    started again at once), until the gateway holds all 10,000 ports open (its
//!    `/healthz` `grants`, read every 10 ms) (target: under 5 s).
//!
//! Run: `cargo bench -p postern-cli --bench gateways` (`POSTERN_BENCH_ROUNDS`, default
//! 10 rounds of `POSTERN_BENCH_PER_ROUND` (5) grants per region; `POSTERN_BENCH_GRANTS`,
//! default 10000; `POSTERN_BENCH_RESTARTS`, default 5; `POSTERN_BENCH_BIN`, the
//! `postern` binary to run instead of the one cargo built). It raises its open-files
//! soft limit to the hard one (the gateway inherits it) and prints both.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sim::{Fleet, FleetOptions, Ports};

mod common;

/// The remote gateway's host: its control channel, tunnel and entry ports.
const GATEWAY_HOST: &str = "127.0.0.2";
/// The local region's entry ports (below the kernel's ephemeral range).
const LOCAL_PORTS: (u16, u16) = (12000, 12999);
/// The remote region's: room for 10,000 grants and the side-by-side ones.
const REMOTE_PORTS: (u16, u16) = (20000, 31999);
/// A link whose session lasted this long dials again after its shortest wait (the
/// server's `RETRY_MAX * 4`, and a second more).
const BACKOFF_RESET: Duration = Duration::from_secs(17);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rounds = env_or("POSTERN_BENCH_ROUNDS", 10);
    let per_round = env_or("POSTERN_BENCH_PER_ROUND", 5);
    let grants = env_or("POSTERN_BENCH_GRANTS", 10_000);
    let restarts = env_or("POSTERN_BENCH_RESTARTS", 5);
    let (before, soft, hard) = raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "postern-cli gateways benchmark (a `postern server` with a local region and a remote one served by a `postern gateway` process on {GATEWAY_HOST})"
    );
    println!(
        "machine: {} CPUs, {}; load average at start: {}; open files (RLIMIT_NOFILE): soft {before} raised to {soft}, hard {hard}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        common::cpu_model(),
        common::loadavg()
    );
    rt.block_on(run(rounds, per_round, grants, restarts));
    println!("load average at end: {}", common::loadavg());
}

/// Raises RLIMIT_NOFILE's soft limit to the hard one: the gateway holds a socket per
/// entry port. The soft limit before, and the limits now.
fn raise_nofile() -> (u64, u64, u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    let _ = setrlimit(Resource::Nofile, raised);
    let now = getrlimit(Resource::Nofile);
    (
        before,
        now.current.unwrap_or(u64::MAX),
        now.maximum.unwrap_or(u64::MAX),
    )
}

fn config(dir: &Path) -> PathBuf {
    let path = dir.join("server.toml");
    std::fs::write(
        &path,
        format!(
            r#"lab_mode = true
grant_rate_per_user = 0
grant_rate_per_token = 0
grant_rate_per_address = 0
max_live_grants_per_router = 0
max_live_grants_per_org = 0

[[regions]]
name = "local"
entry_point = "127.0.0.1"
port_min = {}
port_max = {}

[[regions]]
name = "remote"
entry_point = "{GATEWAY_HOST}"
port_min = {}
port_max = {}
tunnel_prefix = "100.64.7.0/24"
gateway = "remote"
"#,
            LOCAL_PORTS.0, LOCAL_PORTS.1, REMOTE_PORTS.0, REMOTE_PORTS.1
        ),
    )
    .unwrap();
    path
}

const SERVER_LOG: &str = "warn,postern::commands::server=info";

/// A `postern gateway` process and where its `/healthz` is.
struct Gateway {
    child: common::Reaped,
    health: String,
}

impl Gateway {
    /// Starts it (joining with `join = (url, token)` the first time); returns once it
    /// printed its line (it listens), with when it was spawned.
    fn start(dir: &Path, join: Option<(&str, &str)>) -> (Gateway, Instant) {
        let data = dir.join("gateway");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("gateway.log"))
            .unwrap();
        let mut cmd = Command::new(common::bin());
        cmd.arg("gateway");
        if let Some((url, token)) = join {
            cmd.args([
                "--join",
                url,
                "--token",
                token,
                "--lab",
                "--control-listen",
                &format!("{GATEWAY_HOST}:0"),
                "--tunnel-listen",
                &format!("{GATEWAY_HOST}:0"),
                "--entry-bind",
                GATEWAY_HOST,
            ]);
        }
        // Not kept in its identity: a fresh ephemeral port at every start.
        cmd.args(["--http-listen", &format!("{GATEWAY_HOST}:0"), "--data-dir"])
            .arg(&data)
            .env("POSTERN_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let spawned = Instant::now();
        let mut child = cmd.spawn().unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let child = common::Reaped(child);
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let health = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|_| line.contains("health on http://"))
            .unwrap_or_else(|| {
                panic!(
                    "the gateway's first line: {line:?} (log: {})",
                    std::fs::read_to_string(dir.join("gateway.log")).unwrap_or_default()
                )
            })
            .to_owned();
        // Whatever else it prints is read and dropped.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while out.read_line(&mut sink).is_ok_and(|n| n > 0) {
                sink.clear();
            }
        });
        (Gateway { child, health }, spawned)
    }

    async fn health(&self, client: &reqwest::Client) -> Value {
        match client.get(format!("{}/healthz", self.health)).send().await {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.0.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }
}

/// `postern admin add-gateway --region remote`: the join token.
fn add_gateway(dir: &Path, config: &Path) -> String {
    let out = Command::new(common::bin())
        .args(["admin", "add-gateway", "--region", "remote", "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(dir.join("data"))
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let line = String::from_utf8(out.stdout).unwrap();
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words.get(4), Some(&"--token"), "{line}");
    words[5].to_owned()
}

/// One region's router and where its grants' ports listen.
struct Side {
    name: &'static str,
    router: String,
    /// Its index in the fleet.
    index: usize,
    entry: &'static str,
}

/// One region's samples: each a round's list.
#[derive(Default)]
struct Samples {
    answered: Vec<Vec<Duration>>,
    ready: Vec<Vec<Duration>>,
    probed: Vec<Vec<Duration>>,
    refused: Vec<Vec<Duration>>,
    deleted: Vec<Vec<Duration>>,
    gone: Vec<Vec<Duration>>,
}

impl Samples {
    fn new_round(&mut self) {
        for v in [
            &mut self.answered,
            &mut self.ready,
            &mut self.probed,
            &mut self.refused,
            &mut self.deleted,
            &mut self.gone,
        ] {
            v.push(Vec::new());
        }
    }
}

async fn run(rounds: usize, per_round: usize, grants: usize, restarts: usize) {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let data = dir.path().join("data");
    let server = common::Server::start_with(&data, SERVER_LOG, Some(&config));
    let url = format!("http://{}", server.api);
    let token = add_gateway(dir.path(), &config);
    let (gateway, _) = Gateway::start(dir.path(), Some((&url, &token)));
    let client = reqwest::Client::new();
    until(
        "the server drives the gateway",
        Duration::from_secs(30),
        || async { gateway.health(&client).await["control"] == "connected" },
    )
    .await;

    let fleet = Fleet::start(
        2,
        "127.0.46.1".parse().unwrap(),
        FleetOptions {
            ports: Ports::ephemeral(),
            ..FleetOptions::default()
        },
    )
    .await
    .unwrap();
    let mut sides = Vec::new();
    for (index, (name, entry)) in [("local", "127.0.0.1"), ("remote", GATEWAY_HOST)]
        .into_iter()
        .enumerate()
    {
        let r = &fleet.routers[index];
        let router = server
            .call(
                "POST",
                "/api/routers",
                Some(json!({
                    "name": format!("r-{name}"),
                    "region": name,
                    "tunnel_address": r.address().to_string(),
                    "api_port": r.api_addr.port(),
                    "ssh_port": r.ssh_addr.port(),
                    "winbox_port": r.winbox_addr.port(),
                    "username": "admin",
                    "password": r.admin_password,
                })),
            )
            .await;
        sides.push(Side {
            name,
            router: router["id"].as_str().unwrap().to_owned(),
            index,
            entry,
        });
    }

    // Warm-up: a grant and its revoke on each side (the routers' connections, the
    // client's connection to the API).
    let mut warm = Samples::default();
    warm.new_round();
    for side in &sides {
        for wait in [true, false] {
            one_grant(&server, &fleet, side, &mut warm, wait).await;
        }
    }

    let mut samples = [Samples::default(), Samples::default()];
    for round in 0..rounds {
        samples[0].new_round();
        samples[1].new_round();
        // Which side goes first alternates every round, and within it every grant.
        for i in 0..per_round {
            for k in 0..2 {
                let s = (round + i + k) % 2;
                for wait in [true, false] {
                    one_grant(&server, &fleet, &sides[s], &mut samples[s], wait).await;
                }
            }
        }
        let p = |s: &Samples, f: fn(&Samples) -> &Vec<Vec<Duration>>| {
            ms(pct(f(s).last().unwrap(), 0.5))
        };
        eprintln!(
            "round {round}: POST -> ready p50 local {:.1} ms remote {:.1} ms; DELETE -> refused p50 local {:.1} ms remote {:.1} ms; load {}",
            p(&samples[0], |s| &s.ready),
            p(&samples[1], |s| &s.ready),
            p(&samples[0], |s| &s.refused),
            p(&samples[1], |s| &s.refused),
            common::loadavg()
        );
    }

    println!(
        "\n1-2. one grant at a time, alternating local and remote: {rounds} rounds of {per_round} per region with ?wait=true and as many without (ms; p50/p90/p99 over all {} samples per region, {} for the revokes; ratio remote/local of each round's p50: median (min-max))",
        rounds * per_round,
        2 * rounds * per_round
    );
    println!(
        "  {:<44} {:>22} {:>22}   {:>6} {:>20}",
        "", "local p50/p90/p99", "remote p50/p90/p99", "ratio", "per round"
    );
    type Field = fn(&Samples) -> &Vec<Vec<Duration>>;
    let rows: [(&str, Field); 6] = [
        ("POST ?wait=true -> answer (active)", |s| &s.answered),
        ("POST ?wait=true -> port accepts, user on it", |s| &s.ready),
        ("POST, no wait -> port accepts, user on it", |s| &s.probed),
        ("DELETE -> first refused connect", |s| &s.refused),
        ("DELETE -> answer (204)", |s| &s.deleted),
        ("DELETE -> user gone from the router", |s| &s.gone),
    ];
    for (name, field) in rows {
        let all = |s: &Samples| field(s).iter().flatten().copied().collect::<Vec<_>>();
        let (l, r) = (all(&samples[0]), all(&samples[1]));
        let f = |v: &[Duration]| {
            format!(
                "{:.1}/{:.1}/{:.1}",
                ms(pct(v, 0.5)),
                ms(pct(v, 0.9)),
                ms(pct(v, 0.99))
            )
        };
        let ratios: Vec<f64> = field(&samples[0])
            .iter()
            .zip(field(&samples[1]))
            .map(|(l, r)| ms(pct(r, 0.5)) / ms(pct(l, 0.5)).max(1e-3))
            .collect();
        println!(
            "  {name:<44} {:>22} {:>22}   {:>6.2} {:>8.2} ({:.2}-{:.2})",
            f(&l),
            f(&r),
            ms(pct(&r, 0.5)) / ms(pct(&l, 0.5)).max(1e-3),
            median(&ratios),
            min(&ratios),
            max(&ratios)
        );
    }

    // 3. Many grants' desired state to a gateway that (re)connects.
    drop(server);
    let inserted = Instant::now();
    bulk_grants(&config, &data, grants).await;
    let inserted = inserted.elapsed();
    println!(
        "\n3. {grants} active grants of the remote region written through the store in {:.1} s (server stopped; gateway up, holding {})",
        inserted.as_secs_f64(),
        gateway.health(&client).await["grants"]
    );
    let spawned = Instant::now();
    let server = common::Server::start_with(&data, SERVER_LOG, Some(&config));
    let listening = spawned.elapsed();
    let all = until_grants(&gateway, &client, grants, spawned).await;
    println!(
        "  server start -> gateway holds {grants}: {:.2} s (the server listening and a token made after {:.2} s); gateway RSS {:.0} MiB",
        all.as_secs_f64(),
        listening.as_secs_f64(),
        gateway.rss_mib()
    );
    let mut gateway = gateway;
    let (mut up, mut linked, mut holding) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..restarts {
        // A link whose session lasted long enough dials again after its shortest wait.
        tokio::time::sleep(BACKOFF_RESET).await;
        drop(gateway);
        let (g, spawned) = Gateway::start(dir.path(), None);
        gateway = g;
        let printed = spawned.elapsed();
        let mut connected = None;
        loop {
            let h = gateway.health(&client).await;
            if connected.is_none() && h["control"] == "connected" {
                connected = Some(spawned.elapsed());
            }
            if h["grants"].as_u64().unwrap_or(0) >= grants as u64 {
                break;
            }
            assert!(
                spawned.elapsed() < Duration::from_secs(120),
                "the gateway never held every grant: {h}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let all = spawned.elapsed();
        let connected = connected.unwrap_or(all);
        eprintln!(
            "restart {round}: listening {:.2} s, server's control stream {:.2} s, {grants} ports {:.2} s; load {}",
            printed.as_secs_f64(),
            connected.as_secs_f64(),
            all.as_secs_f64(),
            common::loadavg()
        );
        up.push(printed);
        linked.push(connected);
        holding.push(all);
    }
    if restarts > 0 {
        println!(
            "  gateway restarted (killed, started again at once), {restarts} times: from its start (s; median (min-max)):"
        );
        for (name, v) in [
            ("listening (its first line printed)", &up),
            ("a server's control stream up", &linked),
            ("all ports open", &holding),
        ] {
            let s: Vec<f64> = v.iter().map(Duration::as_secs_f64).collect();
            println!(
                "    {name:<36} {:>6.2} ({:.2}-{:.2})",
                median(&s),
                min(&s),
                max(&s)
            );
        }
        let from_link: Vec<f64> = linked
            .iter()
            .zip(&holding)
            .map(|(l, h)| (*h - *l).as_secs_f64())
            .collect();
        println!(
            "    {:<36} {:>6.2} ({:.2}-{:.2})",
            "control stream up -> all ports open",
            median(&from_link),
            min(&from_link),
            max(&from_link)
        );
        println!("  gateway RSS holding them: {:.0} MiB", gateway.rss_mib());
    }
    drop(gateway);
    drop(server);
    fleet.shutdown().await;
}

/// One SSH grant on `side`, made with `?wait=true` (else without, its port and the
/// router probed every millisecond from the answer on) and revoked, its figures added
/// to the current round of `samples`.
async fn one_grant(
    server: &common::Server,
    fleet: &Fleet,
    side: &Side,
    samples: &mut Samples,
    wait: bool,
) {
    let router = fleet.routers[side.index].router();
    let has_user = |name: &str| router.state().users.by_name(name).is_some();
    let t0 = Instant::now();
    let g = server
        .call(
            "POST",
            &format!(
                "/api/routers/{}/transient-access{}",
                side.router,
                if wait { "?wait=true" } else { "" }
            ),
            Some(json!({"type": "ssh", "allow_from": "127.0.0.1", "expire_after_minutes": 30})),
        )
        .await;
    let answered = t0.elapsed();
    if wait {
        assert_eq!(g["status"], "active", "{}: {g}", side.name);
    }
    assert_eq!(g["entry_point"], side.entry, "{g}");
    let id = g["id"].as_str().unwrap().to_owned();
    let name = g["username"].as_str().unwrap().to_owned();
    let addr = format!("{}:{}", side.entry, g["port"].as_u64().unwrap());
    loop {
        if has_user(&name) && tokio::net::TcpStream::connect(&addr).await.is_ok() {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{}: never ready",
            side.name
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let ready = t0.elapsed();
    // Let the probe's connection end before the revoke.
    tokio::time::sleep(Duration::from_millis(20)).await;

    let path = format!("/api/routers/{}/transient-access/{id}", side.router);
    let t0 = Instant::now();
    let delete = server.call("DELETE", &path, None);
    tokio::pin!(delete);
    let (mut deleted, mut refused) = (None, None);
    // One attempt, then a millisecond's pause if it got in (the DELETE is polled all
    // the while).
    let probe = || async {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(c) => {
                drop(c);
                tokio::time::sleep(Duration::from_millis(1)).await;
                Ok(())
            }
            Err(e) => Err(e),
        }
    };
    while refused.is_none() {
        tokio::select! {
            _ = &mut delete, if deleted.is_none() => deleted = Some(t0.elapsed()),
            c = probe() => match c {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    refused = Some(t0.elapsed());
                }
                // A connection caught in the closing listener's queue is reset:
                // closing, not yet refused.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                Err(e) => panic!("probing {addr}: {e}"),
                Ok(()) => {}
            },
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{}: never refused",
            side.name
        );
    }
    let deleted = match deleted {
        Some(d) => d,
        None => {
            delete.await;
            t0.elapsed()
        }
    };
    while has_user(&name) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{}: the user stayed",
            side.name
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let gone = t0.elapsed();
    if wait {
        samples.answered.last_mut().unwrap().push(answered);
        samples.ready.last_mut().unwrap().push(ready);
    } else {
        samples.probed.last_mut().unwrap().push(ready);
    }
    for (v, d) in [
        (&mut samples.refused, refused.unwrap()),
        (&mut samples.deleted, deleted),
        (&mut samples.gone, gone),
    ] {
        v.last_mut().unwrap().push(d);
    }
}

/// Writes `n` active SSH grants of the remote region through the store (the server
/// stopped), on a router of that region nothing answers for (no job runs for them).
async fn bulk_grants(config: &Path, data: &Path, n: usize) {
    let config = server::config::ServerConfig::load(
        Some(config),
        std::iter::empty(),
        &server::config::Overrides {
            data_dir: Some(data.to_owned()),
            ..Default::default()
        },
    )
    .unwrap();
    let store = server::bootstrap::open_store(&config).await.unwrap();
    let org = store.list_organisations().await.unwrap().remove(0);
    let region = store.find_region_by_name("remote").await.unwrap().unwrap();
    let router = store
        .create_router(store::NewRouter {
            org_id: org.id,
            site_name: None,
            region_id: region.id,
            name: "r-bulk".into(),
            tunnel_address: "127.0.47.1".parse().unwrap(),
            api_port: 8728,
            ssh_port: 22,
            winbox_port: 8291,
            api_tls: false,
            api_tls_fingerprint: None,
            username: "admin".into(),
            password: "x".into(),
        })
        .await
        .unwrap();
    let allow = domain::AllowFrom::parse("127.0.0.1", &domain::Policy { lab_mode: true }).unwrap();
    let now = chrono::Utc::now();
    let (org_id, region_id, router_id) = (org.id, region.id, router.id);
    let mut tasks = tokio::task::JoinSet::new();
    const WRITERS: usize = 64;
    for w in 0..WRITERS {
        let store = store.clone();
        tasks.spawn(async move {
            for i in (w..n).step_by(WRITERS) {
                let grant = store
                    .create_access(store::NewAccess {
                        org_id,
                        router_id,
                        access_type: domain::AccessType::Ssh,
                        access: domain::AccessLevel::Full,
                        allow_rfc1918: false,
                        allow_from: allow,
                        username: format!("bulk{i:05}"),
                        password: "x".into(),
                        expires_at: now + chrono::TimeDelta::hours(20),
                        created_by: "bench".into(),
                        region_id,
                        entry_point: GATEWAY_HOST.into(),
                        port_candidates: (0..64)
                            .map(|k| REMOTE_PORTS.0 + ((i + k * 157) % 12000) as u16)
                            .collect(),
                        audit: store::NewAudit {
                            org_id,
                            at: now,
                            actor: "bench".into(),
                            actor_address: None,
                            action: "access.create".into(),
                            target: None,
                            details: json!({}),
                        },
                        terminal: false,
                        job: None,
                    })
                    .await
                    .unwrap();
                for (from, to) in [
                    (
                        domain::GrantStatus::Requested,
                        domain::GrantStatus::Provisioning,
                    ),
                    (
                        domain::GrantStatus::Provisioning,
                        domain::GrantStatus::Active,
                    ),
                ] {
                    store
                        .transition_access(grant.id, &[from], to, now, None)
                        .await
                        .unwrap();
                }
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.unwrap();
    }
    store.close().await;
}

/// When the gateway first held `n` grants, from `since`.
async fn until_grants(
    gateway: &Gateway,
    client: &reqwest::Client,
    n: usize,
    since: Instant,
) -> Duration {
    loop {
        let h = gateway.health(client).await;
        if h["grants"].as_u64().unwrap_or(0) >= n as u64 {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < Duration::from_secs(180),
            "the gateway never held every grant: {h}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn until<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::MAX, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}
