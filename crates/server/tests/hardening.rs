//! Issue 13's attacks from outside, each against a real server on 127.0.0.1:0 (SQLite in
//! a temporary directory), bounded to a few hundred connections and a few seconds:
//! slow clients trickling headers and one address opening too many connections
//! (finding 2), a flood of sign-ins for unknown users (finding 3), and the smaller
//! ones (finding 12): the `Host` check, `/metrics` off by default or behind its token or
//! on its own listener. Clients come from distinct 127.x source addresses, as distinct
//! machines would.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use postern_server as server;
use reqwest::StatusCode;
use server::config::{Secret, ServerConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

struct Server {
    addr: SocketAddr,
    state: server::AppState,
    admin_password: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(tune: impl FnOnce(&mut ServerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig {
            data_dir: dir.path().to_owned(),
            ..ServerConfig::default()
        };
        tune(&mut config);
        let store = server::bootstrap::open_store(&config).await.unwrap();
        let admin = server::bootstrap::first_start(&store)
            .await
            .unwrap()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = server::AppState::new(store, config, std::sync::Arc::new(server::SystemClock));
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, state.clone(), async {
            let _ = rx.await;
        }));
        Self {
            addr,
            state,
            admin_password: admin.password,
            shutdown: Some(tx),
            task: Some(task),
            _dir: dir,
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }

    /// An HTTP client whose connections come from `from`.
    fn client(from: IpAddr) -> reqwest::Client {
        reqwest::Client::builder()
            .local_address(from)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The metrics text, with the token the test configured.
    async fn metrics(&self) -> String {
        Self::client(IpAddr::from([127, 0, 0, 1]))
            .get(self.url("/metrics"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

const TOKEN: &str = "a-metrics-token-for-this-test";

/// Posts a sign-in form (the values here need no escaping).
fn login(req: reqwest::RequestBuilder, username: &str, password: &str) -> reqwest::RequestBuilder {
    req.header("content-type", "application/x-www-form-urlencoded")
        .body(format!("username={username}&password={password}"))
}

/// A counter's value in the metrics text.
fn counter(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in {text}"))
}

/// A TCP connection to `to` from `from`.
async fn connect(from: IpAddr, to: SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).await.unwrap()
}

/// Sends `request` one byte every `every`, as a slow-loris client does, until the server
/// closes the connection; how long that took (or `None` within `give_up`).
async fn trickle(
    mut stream: tokio::net::TcpStream,
    request: &'static [u8],
    every: Duration,
    give_up: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 256];
    let mut bytes = request.iter().cycle();
    while start.elapsed() < give_up {
        tokio::select! {
            r = stream.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(start.elapsed()),
                Ok(_) => {}
            },
            () = tokio::time::sleep(every) => {
                let b = *bytes.next().unwrap();
                if stream.write_all(&[b]).await.is_err() {
                    return Some(start.elapsed());
                }
            }
        }
    }
    None
}

/// Issue 13, finding 2: 1,030 connections each sending a header byte every 20 s held
/// every slot, since the idle timer restarted on every byte, and `/healthz` timed out.
/// Here 300 clients from 30 addresses trickle a byte every 100 ms at a server with 100
/// slots: each is closed once its headers are a second late, in waves as slots free,
/// and `/healthz`, asked from elsewhere while they trickle, is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_closed_and_healthz_still_answers() {
    let s = Server::start(|c| {
        c.max_connections = 100;
        c.header_timeout = Duration::from_secs(1);
        c.metrics_token = Some(Secret::new(TOKEN));
    })
    .await;
    let started = Instant::now();
    let to = s.addr;
    let slow: Vec<_> = (0..300u32)
        .map(|i| {
            let from = IpAddr::from([127, 0, 40, 1 + (i % 30) as u8]);
            tokio::spawn(async move {
                let stream = connect(from, to).await;
                trickle(
                    stream,
                    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ",
                    Duration::from_millis(100),
                    Duration::from_secs(10),
                )
                .await
                .map(|_| started.elapsed())
            })
        })
        .collect();
    // While they trickle (every slot taken, 200 more queued), a visitor from elsewhere
    // is served once the deadline frees slots: within the three waves' time.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let resp = Server::client(IpAddr::from([127, 0, 41, 1]))
        .get(s.url("/healthz"))
        .timeout(Duration::from_secs(8))
        .send()
        .await
        .expect("/healthz answers during the attack");
    assert_eq!(resp.status(), StatusCode::OK);
    let waited = asked.elapsed();
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    // Every slow client was closed: the first hundred about a second after the start,
    // the others a second after a slot freed for them.
    let mut closed_at = Vec::new();
    for task in slow {
        closed_at.push(task.await.unwrap().expect("a slow client left open"));
    }
    closed_at.sort();
    let (first, last) = (closed_at[0], closed_at[closed_at.len() - 1]);
    assert!(first >= Duration::from_millis(900), "{closed_at:?}");
    assert!(last < Duration::from_secs(6), "{closed_at:?}");
    let text = s.metrics().await;
    assert!(
        counter(
            &text,
            r#"postern_http_connections_timed_out_total{reason="headers"}"#
        ) >= 300,
        "{text}"
    );
    eprintln!(
        "300 slow clients closed {first:?} to {last:?} after the start; /healthz waited \
         {waited:?}"
    );
    s.stop().await;
}

/// Finding 2, the per-address cap: one address opening 100 connections gets 16 served;
/// the rest are closed at once and counted in `/metrics`, and others are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_gets_its_share_of_connections_and_refusals_are_counted() {
    let s = Server::start(|c| {
        c.max_connections_per_address = 16;
        c.header_timeout = Duration::from_secs(5);
        c.metrics_token = Some(Secret::new(TOKEN));
    })
    .await;
    let hog = IpAddr::from([127, 0, 42, 1]);
    let mut streams = Vec::new();
    for _ in 0..100 {
        streams.push(connect(hog, s.addr).await);
    }
    // Closed at once: a read sees the end within a moment; the served ones stay open.
    let mut refused = 0;
    for stream in &mut streams {
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => refused += 1,
            Ok(Ok(_)) => panic!("the server said something unasked"),
            Err(_) => {}
        }
    }
    assert_eq!(refused, 84);
    // Another address is served as usual, the hog's served connections work.
    let resp = Server::client(IpAddr::from([127, 0, 42, 2]))
        .get(s.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let text = s.metrics().await;
    assert_eq!(
        counter(
            &text,
            r#"postern_http_connections_refused_total{reason="per_address_limit"}"#
        ),
        84,
        "{text}"
    );
    drop(streams);
    s.stop().await;
}

/// The peak resident memory of this process, and its current, in KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Issue 13, finding 3: 64 concurrent sign-ins for unknown users took the server from
/// 39 MB to 1.27 GB (an argon2id hash, 19 MiB, for each at once). Now at most four are
/// hashed at once: 64 sign-ins from 64 addresses raise this process's peak memory by
/// far less than 64 hashes would take, each is answered 401 (or 503 if the queue's
/// deadline passes), and the admin still signs in afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_is_hashed_a_few_at_a_time_and_memory_stays_bounded() {
    let s = Server::start(|c| {
        c.trusted_proxies = vec![IpAddr::from([127, 0, 0, 1])];
        c.metrics_token = Some(Secret::new(TOKEN));
    })
    .await;
    // The dummy hash (made on first use) and the runtime's first allocations.
    let warm = login(reqwest::Client::new().post(s.url("/login")), "warm-up", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::UNAUTHORIZED);
    let (_, before) = memory_kib();
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let flood: Vec<_> = (0..64u8)
        .map(|i| {
            let http = http.clone();
            let url = s.url("/login");
            tokio::spawn(async move {
                let req = http
                    .post(url)
                    .header("x-forwarded-for", format!("203.0.113.{}", i + 1));
                login(req, &format!("nobody-{i}"), "guess")
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in flood {
        statuses.push(task.await.unwrap());
    }
    let (peak, _) = memory_kib();
    let grew_mib = peak.saturating_sub(before) / 1024;
    eprintln!(
        "64 sign-ins: peak grew {grew_mib} MiB; at most {} hashes at once",
        s.state.hashing.most_running()
    );
    assert!(
        statuses
            .iter()
            .all(|st| [StatusCode::UNAUTHORIZED, StatusCode::SERVICE_UNAVAILABLE].contains(st)),
        "{statuses:?}"
    );
    assert!(s.state.hashing.most_running() <= 4);
    // 64 hashes at once would need about 1.2 GiB; four need about 76 MiB.
    assert!(grew_mib < 300, "peak resident memory grew {grew_mib} MiB");
    // The admin signs in as usual afterwards.
    let req = Server::client(IpAddr::from([127, 0, 43, 1])).post(s.url("/login"));
    let resp = login(req, "admin", &s.admin_password).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    s.stop().await;
}

/// Finding 3, the queue's deadline: with one hash at a time and a queue that waits
/// 100 ms, a burst is partly refused at once with 503 and `Retry-After`, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_ins_beyond_the_hashing_queue_are_refused_with_503() {
    let s = Server::start(|c| {
        c.trusted_proxies = vec![IpAddr::from([127, 0, 0, 1])];
        c.max_concurrent_hashes = 1;
        c.hash_queue_wait = Duration::from_millis(100);
        c.metrics_token = Some(Secret::new(TOKEN));
    })
    .await;
    let http = reqwest::Client::new();
    let burst: Vec<_> = (0..16u8)
        .map(|i| {
            let req = http
                .post(s.url("/login"))
                .header("x-forwarded-for", format!("198.51.100.{}", i + 1));
            let req = login(req, "admin", "wrong");
            tokio::spawn(async move { req.send().await.unwrap() })
        })
        .collect();
    let mut busy = 0;
    for task in burst {
        let resp = task.await.unwrap();
        if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
            busy += 1;
            assert_eq!(resp.headers()["retry-after"], "5");
            assert!(
                resp.text()
                    .await
                    .unwrap()
                    .contains("busy checking passwords")
            );
        } else {
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        }
    }
    assert!(busy > 0, "no sign-in met the queue's deadline");
    let text = s.metrics().await;
    assert_eq!(
        counter(&text, r#"postern_logins_refused_total{reason="busy"}"#),
        busy
    );
    s.stop().await;
}

/// Finding 12: a page on another site whose name resolves to this server (DNS
/// rebinding) sends its own name in `Host`: refused with 421 before any handler.
/// Addresses, `localhost` and the configured public names are served.
#[tokio::test]
async fn hosts_other_than_the_configured_names_are_misdirected() {
    let s = Server::start(|c| {
        c.public_hosts = vec!["postern.example.net".into()];
    })
    .await;
    let http = reqwest::Client::new();
    let ask =
        |path: &'static str, host: &'static str| http.get(s.url(path)).header("host", host).send();
    for (path, host, want) in [
        ("/login", "evil.example", 421),
        ("/api/openapi.json", "evil.example:8080", 421),
        ("/api/routers", "rebind.attacker.example", 421),
        ("/login", "postern.example.net", 200),
        ("/login", "POSTERN.example.net:443", 200),
        ("/login", "localhost:8080", 200),
        ("/login", "127.0.0.1", 200),
        ("/api/routers", "[::1]:8080", 401),
        // Load balancers probe health by any name.
        ("/healthz", "evil.example", 200),
    ] {
        let resp = ask(path, host).await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "{path} as {host}");
        if want == 421 {
            assert_eq!(resp.headers()["content-type"], "application/problem+json");
            assert!(resp.text().await.unwrap().contains("public_hosts"));
        }
    }
    s.stop().await;
}

/// Finding 12: `/metrics` was open to anyone who could reach the port. By default it is
/// not served at all; with `metrics_token` it needs that token; on `metrics_listen` it is
/// served alone, with `/healthz`, and nothing else.
#[tokio::test]
async fn metrics_are_off_by_default_and_served_on_their_own_listener() {
    let s = Server::start(|_| {}).await;
    let resp = reqwest::get(s.url("/metrics")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::serve_metrics(listener, s.state.clone(), async {
        let _ = rx.await;
    }));
    let text = reqwest::get(format!("http://{at}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("postern_http_connections_open"), "{text}");
    let health = reqwest::get(format!("http://{at}/healthz")).await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    for path in ["/api/routers", "/login", "/api/docs"] {
        let resp = reqwest::get(format!("http://{at}{path}")).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
    let _ = tx.send(());
    task.await.unwrap().unwrap();
    s.stop().await;
}
