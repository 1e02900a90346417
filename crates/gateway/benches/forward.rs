//! Issue 5's performance figures, side by side in one run on loopback: a direct
//! connection, one gateway forward, and socat doing the same job.
//!
//! - (a) bulk throughput: 1 GiB client → sink, acknowledged at end of stream;
//! - (b) 1-byte ping-pong latency, p50 and p99 over 20,000 round trips;
//! - (c) new connections per second: 20,000 × (connect, 1-byte echo, close), 64 at once;
//! - (d) 10,000 concurrent idle forwarded connections (each has echoed one byte): the
//!   gateway's resident memory before and after.
//!
//! The gateway runs in a child process (this binary re-executed with `--serve-gateway`),
//! so its memory is its own and it competes for the CPUs as socat does. Clients and
//! targets run in this process. Run: `cargo bench -p postern-gateway --bench forward`.
//!
//! Each bulk round also reports CPU seconds per GiB of the writer, the process in the
//! middle and the sink, and the time they waited for a CPU (`schedstat`), so a ratio can
//! be explained by cost rather than guessed at. Knobs for tuning: `POSTERN_BENCH_ROUNDS`,
//! `POSTERN_BENCH_BULK_ONLY`, `POSTERN_BENCH_VARIANTS` (direct against gateway children
//! with different environments, interleaved), `POSTERN_BENCH_PIPE_SIZE` (0: no growth),
//! `POSTERN_BENCH_COPY`, `POSTERN_BENCH_CURRENT_THREAD`, `POSTERN_BENCH_SOCAT_OPTS`.
//!
//! With `POSTERN_BENCH_VARIANTS`, two minimal forwarders also run in the same rounds, as
//! the ceiling for any userspace forwarder on the machine: no checks, no tokio, one
//! blocking OS thread per direction, either `splice` through a pipe grown to 1 MiB
//! ("raw splice") or a plain read/write copy through 256 KiB ("raw copy")
//! (`POSTERN_BENCH_RAW=splice,copy` by default; empty for none). For placement
//! experiments, `POSTERN_BENCH_PIN_WRITER`, `POSTERN_BENCH_PIN_SINK` and
//! `POSTERN_BENCH_PIN_MIDDLE` pin the writer, the sink and the forwarder children to CPUs
//! (`taskset -c` lists). Columns: CPU seconds per GiB of writer, middle and sink, the
//! seconds per GiB they waited runnable for a CPU, wall seconds per GiB, and how many
//! of the machine's CPUs were busy (everyone's).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use postern_gateway::{Config, ForwardSpec, Gateway, GrantKey, SourcePolicy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const BULK: u64 = 1 << 30;
const PINGS: usize = 20_000;
const CONNS: usize = 20_000;
const CONCURRENCY: usize = 64;
const IDLE: usize = 10_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    raise_nofile(200_000);
    if let Some(i) = args.iter().position(|a| a == "--serve-gateway") {
        serve_gateway(&args[i + 1..]);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--serve-raw") {
        serve_raw(&args[i + 1..]);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let socat = socat_available();
    println!("postern-gateway forward benchmark (loopback, release build)");
    println!(
        "machine: {} CPUs, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model()
    );
    if !socat {
        println!("socat: not installed");
    }
    if let Ok(variants) = std::env::var("POSTERN_BENCH_VARIANTS") {
        tune(&variants);
        return;
    }
    if std::env::var("POSTERN_BENCH_ONLY_IDLE").is_err() {
        paths(&rt, socat);
    }
    if std::env::var("POSTERN_BENCH_BULK_ONLY").is_err() {
        idle(&rt);
    }
    println!("(whole run: {:.0} s)", started.elapsed().as_secs_f64());
}

/// Median of a few values.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// (a), (b), (c): direct, forward and socat, interleaved over several rounds (5 unless
/// `POSTERN_BENCH_ROUNDS` says otherwise); medians. Every path uses the same writer (one
/// thread, 256 KiB writes) and the same sink (one thread, 256 KiB reads).
fn paths(rt: &tokio::runtime::Runtime, socat: bool) {
    // For tuning: `POSTERN_BENCH_BULK_ONLY=1` skips (b), (c) and (d);
    // `POSTERN_BENCH_ROUNDS=n` changes the number of rounds.
    let bulk_only = std::env::var("POSTERN_BENCH_BULK_ONLY").is_ok();
    let rounds: usize = std::env::var("POSTERN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let names: &[&str] = if socat {
        &["direct", "forward", "socat"]
    } else {
        &["direct", "forward"]
    };
    // Targets, one set per path so no path inherits another's TIME_WAIT.
    let bulk_t: Vec<SocketAddr> = names.iter().map(|_| std_sink()).collect();
    let ping_t: Vec<SocketAddr> = names.iter().map(|_| std_echo()).collect();
    let conn_t: Vec<SocketAddr> = names.iter().map(|_| rt.block_on(tokio_echo()).0).collect();
    let mut gw = GatewayChild::spawn(&[bulk_t[1], ping_t[1], conn_t[1]]);
    let mut socats = Vec::new();
    let mut entries = |targets: &[SocketAddr], gw_index: usize| -> Vec<SocketAddr> {
        let mut out = vec![targets[0], gw.listen[gw_index]];
        if socat {
            let (child, addr) = spawn_socat(targets[2]);
            socats.push(child);
            out.push(addr);
        }
        out
    };
    let bulk_e = entries(&bulk_t, 0);
    let ping_e = entries(&ping_t, 1);
    let conn_e = entries(&conn_t, 2);
    // The process in the middle of each bulk path, for its CPU time.
    let middles: Vec<Option<u32>> = (0..names.len())
        .map(|i| match i {
            1 => Some(gw.child.id()),
            2 => socats.first().map(|c: &Reaped| c.0.id()),
            _ => None,
        })
        .collect();

    let mut bulk = vec![Vec::new(); names.len()];
    let mut p50 = vec![Vec::new(); names.len()];
    let mut p99 = vec![Vec::new(); names.len()];
    let mut rates = vec![Vec::new(); names.len()];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        for (i, &addr) in bulk_e.iter().enumerate() {
            let b = bulk_run(addr, middles[i]);
            eprintln!(
                "  {:<8} {:6.2} Gb/s   CPU s/GiB: writer {:.3}  middle {:.3}  sink {:.3}  waited {:.3}  wall {:.3}  sink reads {:.0} KiB  (machine busy {:.2} of {} CPUs)",
                names[i],
                b.gbps,
                b.writer,
                b.middle,
                b.sink,
                b.waited,
                b.wall,
                b.sink_read_kib,
                b.machine_busy,
                cpus()
            );
            bulk[i].push(b);
        }
        for (i, &addr) in ping_e.iter().enumerate() {
            if bulk_only {
                p50[i].push(0.0);
                p99[i].push(0.0);
                continue;
            }
            let (a, b) = ping_pong(addr);
            p50[i].push(a);
            p99[i].push(b);
        }
    }
    // Connection rates once each: 20k connections per path leave 20k TIME_WAITs behind.
    for (i, &addr) in conn_e.iter().enumerate() {
        rates[i].push(if bulk_only {
            0.0
        } else {
            rt.block_on(conn_rate(addr))
        });
    }
    gw.stop();
    drop(socats);
    let cpu: Vec<[f64; 6]> = bulk
        .iter()
        .map(|runs| {
            [
                median(runs.iter().map(|b| b.writer).collect()),
                median(runs.iter().map(|b| b.middle).collect()),
                median(runs.iter().map(|b| b.sink).collect()),
                median(runs.iter().map(|b| b.waited).collect()),
                median(runs.iter().map(|b| b.wall).collect()),
                median(runs.iter().map(|b| b.machine_busy).collect()),
            ]
        })
        .collect();
    let spread: Vec<(f64, f64)> = bulk
        .iter()
        .map(|runs| {
            let g = runs.iter().map(|b| b.gbps);
            (g.clone().fold(f64::MAX, f64::min), g.fold(0.0, f64::max))
        })
        .collect();
    // The ratio of each round (same round, back to back), then its median.
    let ratio = |i: usize| {
        median(
            (0..rounds)
                .map(|r| bulk[i][r].gbps / bulk[0][r].gbps)
                .collect(),
        )
    };
    let round_ratios: Vec<f64> = (1..names.len()).map(ratio).collect();
    let bulk: Vec<f64> = bulk
        .into_iter()
        .map(|runs| median(runs.iter().map(|b| b.gbps).collect()))
        .collect();
    let p50: Vec<f64> = p50.into_iter().map(median).collect();
    let p99: Vec<f64> = p99.into_iter().map(median).collect();
    let rates: Vec<f64> = rates.into_iter().map(median).collect();

    println!();
    print!("{:<40}", "figure (median of rounds)");
    for p in names {
        print!("{p:>14}");
    }
    println!("{:>16}{:>16}", "forward/direct", "socat/direct");
    let row = |name: &str, vals: &[f64], unit: &str| {
        print!("{name:<40}");
        for v in vals {
            print!("{:>14}", format!("{v:.2} {unit}"));
        }
        let ratio = |i: usize| {
            vals.get(i)
                .map_or("-".to_string(), |v| format!("{:.3}", v / vals[0]))
        };
        println!("{:>16}{:>16}", ratio(1), ratio(2));
    };
    row("(a) bulk 1 GiB", &bulk, "Gb/s");
    print!("{:<40}", "    min-max over rounds");
    for (lo, hi) in &spread {
        print!("{:>14}", format!("{lo:.1}-{hi:.1}"));
    }
    println!();
    print!("{:<40}", "    median of per-round ratios");
    print!("{:>14}", "");
    for r in &round_ratios {
        print!("{:>14}", format!("{r:.3}"));
    }
    println!();
    for (what, k) in [
        ("    CPU s/GiB: writer", 0),
        ("    CPU s/GiB: forwarder", 1),
        ("    CPU s/GiB: sink", 2),
        ("    s/GiB runnable, waiting for a CPU", 3),
        ("    s/GiB wall clock", 4),
        ("    machine CPUs busy (all processes)", 5),
    ] {
        print!("{what:<40}");
        for c in &cpu {
            print!("{:>14}", format!("{:.3}", c[k]));
        }
        println!();
    }
    row("(b) 1-byte ping-pong RTT p50", &p50, "us");
    row("(b) 1-byte ping-pong RTT p99", &p99, "us");
    row("(c) connect+echo+close, 64 at once", &rates, "c/s");
    println!();
    println!(
        "added latency through the forward: p50 {:+.1} us, p99 {:+.1} us",
        p50[1] - p50[0],
        p99[1] - p99[0]
    );
    if let (Some(s50), Some(s99)) = (p50.get(2), p99.get(2)) {
        println!(
            "added latency through socat:       p50 {:+.1} us, p99 {:+.1} us",
            s50 - p50[0],
            s99 - p99[0]
        );
    }
}

/// For tuning: bulk only, direct against one gateway child per variant, interleaved in
/// each round. `POSTERN_BENCH_VARIANTS="label:VAR=value VAR2=value|label2:..."`; each
/// variant's gateway child runs with those environment variables set.
fn tune(spec: &str) {
    pin("POSTERN_BENCH_PIN_WRITER", false);
    let rounds: usize = std::env::var("POSTERN_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let variants: Vec<(String, Vec<(String, String)>)> = spec
        .split('|')
        .map(|v| {
            let (label, vars) = v.split_once(':').unwrap_or((v, ""));
            let vars = vars
                .split_whitespace()
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap();
                    (k.to_string(), v.to_string())
                })
                .collect();
            (label.to_string(), vars)
        })
        .collect();
    let direct = std_sink();
    let gws: Vec<GatewayChild> = variants
        .iter()
        .map(|(_, vars)| GatewayChild::spawn_with(&[std_sink()], vars))
        .collect();
    let raws: Vec<(String, GatewayChild)> = std::env::var("POSTERN_BENCH_RAW")
        .unwrap_or_else(|_| "splice,copy".into())
        .split(',')
        .filter(|m| !m.is_empty())
        .map(|m| (format!("raw {m}"), GatewayChild::spawn_raw(m, std_sink())))
        .collect();
    let socat = socat_available().then(|| spawn_socat(std_sink()));
    let mut labels: Vec<String> = vec!["direct".into()];
    labels.extend(variants.iter().map(|(l, _)| l.clone()));
    labels.extend(raws.iter().map(|(l, _)| l.clone()));
    let middles: Vec<&GatewayChild> = gws.iter().chain(raws.iter().map(|(_, c)| c)).collect();
    let mut runs: Vec<Vec<Bulk>> = vec![Vec::new(); middles.len() + 2];
    for round in 0..rounds {
        eprintln!("round {}/{rounds}", round + 1);
        runs[0].push(bulk_run(direct, None));
        for (i, gw) in middles.iter().enumerate() {
            runs[i + 1].push(bulk_run(gw.listen[0], Some(gw.child.id())));
        }
        if let Some((child, addr)) = &socat {
            runs[middles.len() + 1].push(bulk_run(*addr, Some(child.0.id())));
        }
    }
    if socat.is_none() {
        runs.pop();
    }
    labels.push("socat".into());
    println!(
        "{:<24}{:>10}{:>12}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}{:>8}",
        "path", "Gb/s", "min-max", "ratio", "writer", "middle", "sink", "waited", "wall", "busy"
    );

    for (i, r) in runs.iter().enumerate() {
        let label = &labels[i];
        let g: Vec<f64> = r.iter().map(|b| b.gbps).collect();
        let lo = g.iter().copied().fold(f64::MAX, f64::min);
        let hi = g.iter().copied().fold(0.0, f64::max);
        let ratio = median((0..rounds).map(|k| r[k].gbps / runs[0][k].gbps).collect());
        println!(
            "{label:<24}{:>10.2}{:>12}{ratio:>8.3}{:>8.3}{:>8.3}{:>8.3}{:>8.3}{:>8.3}{:>8.2}",
            median(g),
            format!("{lo:.1}-{hi:.1}"),
            median(r.iter().map(|b| b.writer).collect()),
            median(r.iter().map(|b| b.middle).collect()),
            median(r.iter().map(|b| b.sink).collect()),
            median(r.iter().map(|b| b.waited).collect()),
            median(r.iter().map(|b| b.wall).collect()),
            median(r.iter().map(|b| b.machine_busy).collect()),
        );
    }
}

/// (d): idle forwarded connections in a fresh gateway process.
fn idle(rt: &tokio::runtime::Runtime) {
    eprintln!("idle connections");
    let (target, accepted) = rt.block_on(tokio_echo());
    let mut gw = GatewayChild::spawn(&[target]);
    std::thread::sleep(Duration::from_millis(200));
    let before = rss_kib(gw.child.id());
    let n = idle_count();
    let clients = rt.block_on(open_idle(gw.listen[0], n));
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(gw.child.id());
    let reached = accepted.load(Ordering::SeqCst);
    drop(clients);
    gw.stop();
    let per_conn = after.saturating_sub(before) as f64 * 1024.0 / n as f64;
    println!(
        "(d) {n} idle forwarded connections ({reached} reached the target): gateway VmRSS {:.1} MiB before, {:.1} MiB after, {:.0} bytes per connection",
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        per_conn
    );
    if n < IDLE {
        println!(
            "    (RLIMIT_NOFILE allows only {n} here: each side holds 2 descriptors per connection) projected for {IDLE}: {:.1} MiB",
            (before as f64 * 1024.0 + per_conn * IDLE as f64) / 1048576.0
        );
    }
}

/// The gateway child: `--serve-gateway TARGET...` opens one forward per target and prints
/// each listen address, then serves until its stdin closes.
fn serve_gateway(targets: &[String]) {
    pin("POSTERN_BENCH_PIN_MIDDLE", true);
    let rt = if std::env::var("POSTERN_BENCH_CURRENT_THREAD").is_ok() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    rt.block_on(async {
        let config = Config {
            max_connections: 100_000,
            max_connections_per_grant: 100_000,
            event_capacity: 65_536,
            transfer: if std::env::var("POSTERN_BENCH_COPY").is_ok() {
                postern_gateway::TransferMode::Copy
            } else {
                postern_gateway::TransferMode::Splice
            },
            // For tuning: `POSTERN_BENCH_PIPE_SIZE=0` keeps pipes at the kernel's default.
            pipe_size: match std::env::var("POSTERN_BENCH_PIPE_SIZE").map(|v| v.parse()) {
                Ok(Ok(0)) => None,
                Ok(Ok(n)) => Some(n),
                _ => Config::default().pipe_size,
            },
            ..Config::default()
        };
        let (gw, mut events) = Gateway::new(config);
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        for t in targets {
            let spec = ForwardSpec {
                key: GrantKey::Access(domain::AccessId::new()),
                listen: "127.0.0.1:0".parse().unwrap(),
                target: t.parse().unwrap(),
                sources: SourcePolicy::new(["127.0.0.0/8".parse().unwrap()], false),
                deadline: None,
            };
            let open = gw.open(spec).await.unwrap();
            println!("{}", open.listen);
        }
        println!("ready");
        // Serve until the parent closes our stdin.
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await
        .unwrap();
        gw.shutdown().await;
    });
}

/// The ceiling: `--serve-raw MODE TARGET` forwards every connection to `TARGET` with no
/// checks and no runtime, one blocking thread per direction, `MODE` `splice` (through a
/// pipe grown to 1 MiB) or `copy` (256 KiB buffer). Prints its listen address, then
/// serves until its stdin closes. Pump threads are kept for the next connection, so
/// their CPU time stays readable in `/proc/<pid>/task`.
fn serve_raw(args: &[String]) {
    pin("POSTERN_BENCH_PIN_MIDDLE", true);
    use std::sync::Mutex;
    use std::sync::mpsc;
    let mode = match args[0].as_str() {
        "splice" => Raw::Splice,
        "copy" => Raw::Copy,
        other => panic!("unknown raw mode {other}"),
    };
    let target: SocketAddr = args[1].parse().unwrap();
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    println!("{}", listener.local_addr().unwrap());
    println!("ready");
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    type Job = (Raw, StdStream, StdStream);
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let idle = Arc::new(AtomicUsize::new(0));
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let Ok(upstream) = StdStream::connect(target) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = upstream.set_nodelay(true);
        let jobs = [
            (
                mode,
                client.try_clone().unwrap(),
                upstream.try_clone().unwrap(),
            ),
            (mode, upstream, client),
        ];
        for job in jobs {
            if idle.load(Ordering::SeqCst) == 0 {
                let (rx, idle) = (rx.clone(), idle.clone());
                idle.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let next = || rx.lock().unwrap().recv();
                    while let Ok((mode, from, to)) = next() {
                        idle.fetch_sub(1, Ordering::SeqCst);
                        raw_pump(mode, &from, &to);
                        idle.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
            tx.send(job).unwrap();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Raw {
    Splice,
    Copy,
}

/// One direction until end of stream, then a half-close.
fn raw_pump(mode: Raw, from: &StdStream, mut to: &StdStream) {
    use rustix::pipe::{PipeFlags, SpliceFlags, fcntl_setpipe_size, pipe_with};
    if mode == Raw::Splice {
        let (r, w) = pipe_with(PipeFlags::CLOEXEC).unwrap();
        let _ = fcntl_setpipe_size(&w, 1 << 20);
        'outer: while let Ok(n) =
            rustix::pipe::splice(from, None, &w, None, 1 << 20, SpliceFlags::MOVE)
        {
            if n == 0 {
                break;
            }
            let mut left = n;
            while left > 0 {
                match rustix::pipe::splice(&r, None, to, None, left, SpliceFlags::MOVE) {
                    Ok(m) if m > 0 => left -= m,
                    _ => break 'outer,
                }
            }
        }
    } else {
        let mut from = from;
        let mut buf = vec![0u8; 256 * 1024];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

struct GatewayChild {
    child: Child,
    listen: Vec<SocketAddr>,
}

impl GatewayChild {
    fn spawn(targets: &[SocketAddr]) -> Self {
        Self::spawn_with(targets, &[])
    }

    fn spawn_with(targets: &[SocketAddr], vars: &[(String, String)]) -> Self {
        let mut args = vec!["--serve-gateway".to_string()];
        args.extend(targets.iter().map(|t| t.to_string()));
        Self::spawn_args(&args, vars, targets.len())
    }

    /// The ceiling forwarder (`serve_raw`) in a child process.
    fn spawn_raw(mode: &str, target: SocketAddr) -> Self {
        let args = [
            "--serve-raw".to_string(),
            mode.to_string(),
            target.to_string(),
        ];
        Self::spawn_args(&args, &[], 1)
    }

    fn spawn_args(args: &[String], vars: &[(String, String)], listens: usize) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut listen = Vec::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line == "ready" {
                break;
            }
            listen.push(line.parse().unwrap());
        }
        assert_eq!(listen.len(), listens, "forwarder child failed to start");
        Self { child, listen }
    }

    fn stop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for GatewayChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn raise_nofile(want: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let hard = cur.maximum.unwrap_or(want);
    // Root may raise the hard limit; anyone may raise the soft one up to it.
    if setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(want),
            maximum: Some(want.max(hard)),
        },
    )
    .is_err()
    {
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard.min(want)),
                maximum: Some(hard),
            },
        );
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn socat_available() -> bool {
    Command::new("socat")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// For the placement experiment: pins this thread (or, with `process`, this whole
/// process before it starts threads) to the CPU list in `var` (`taskset -c` syntax):
/// `POSTERN_BENCH_PIN_WRITER`, `POSTERN_BENCH_PIN_SINK`, `POSTERN_BENCH_PIN_MIDDLE`
/// (the last one per variant).
fn pin(var: &str, process: bool) {
    let Ok(cpus) = std::env::var(var) else { return };
    let me = std::fs::read_link("/proc/thread-self").unwrap();
    let id = if process {
        std::process::id().to_string()
    } else {
        me.file_name().unwrap().to_string_lossy().into_owned()
    };
    let ok = Command::new("taskset")
        .args(["-p", "-c", &cpus, &id])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "taskset -p -c {cpus} {id} failed");
}

/// A child process killed when dropped, even when the bench panics.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_socat(target: SocketAddr) -> (Reaped, SocketAddr) {
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Reaped(
        Command::new("socat")
            // For tuning: `POSTERN_BENCH_SOCAT_OPTS="-b 262144"` (socat's default
            // buffer is 8 KiB).
            .args(
                std::env::var("POSTERN_BENCH_SOCAT_OPTS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork"))
            .arg(format!("TCP:{target}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    // Wait for it to listen (a probe connection is forwarded and closed).
    for _ in 0..200 {
        if StdStream::connect(addr).is_ok() {
            return (child, addr);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("socat did not start");
}

/// A sink: reads to end of stream, then acknowledges with one byte.
fn std_sink() -> SocketAddr {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                pin("POSTERN_BENCH_PIN_SINK", false);
                let start = thread_sched();
                let mut buf = vec![0u8; 256 * 1024];
                let mut reads = 0;
                let mut bytes = 0;
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    reads += 1;
                    bytes += n as u64;
                }
                SINK_BYTES.store(bytes, Ordering::SeqCst);
                let end = thread_sched();
                SINK_CPU_NS.store(end.0 - start.0, Ordering::SeqCst);
                SINK_WAIT_NS.store(end.1 - start.1, Ordering::SeqCst);
                SINK_READS.store(reads, Ordering::SeqCst);
                let _ = s.write_all(b"k");
            });
        }
    });
    addr
}

/// A blocking echo for latency: one thread per connection.
fn std_echo() -> SocketAddr {
    let listener = StdListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// An async echo for many connections; counts accepted connections.
async fn tokio_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// CPU time of the sink thread of the last bulk transfer, in nanoseconds.
static SINK_CPU_NS: AtomicU64 = AtomicU64::new(0);
/// Time the sink thread of the last bulk transfer was runnable but waiting for a CPU.
static SINK_WAIT_NS: AtomicU64 = AtomicU64::new(0);
/// How many reads the sink of the last bulk transfer made.
static SINK_READS: AtomicU64 = AtomicU64::new(0);
/// How many bytes the sink of the last bulk transfer received.
static SINK_BYTES: AtomicU64 = AtomicU64::new(0);

/// (ran, waited) nanoseconds of a task: time on a CPU, and time runnable but waiting
/// for one (`schedstat`; with `CONFIG_IRQ_TIME_ACCOUNTING` off, softirq work done in
/// the task's context counts as its own).
fn schedstat(path: &str) -> (u64, u64) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut f = text
        .split_whitespace()
        .map(|v| v.parse::<u64>().unwrap_or(0));
    (f.next().unwrap_or(0), f.next().unwrap_or(0))
}

fn thread_sched() -> (u64, u64) {
    schedstat("/proc/thread-self/schedstat")
}

/// (ran, waited) nanoseconds of every thread of process `pid`, plus the CPU time of its
/// reaped children (ticks; socat forks one child per connection).
fn process_sched(pid: u32) -> (u64, u64) {
    let (mut ran, mut waited) = (0, 0);
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let (r, w) = schedstat(&t.path().join("schedstat").to_string_lossy());
            ran += r;
            waited += w;
        }
    }
    let tick_ns = 1e9 / 100.0;
    let children = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit(')').next()?.to_string();
            let f: Vec<u64> = after
                .split_whitespace()
                .map(|v| v.parse().unwrap_or(0))
                .collect();
            // Fields 16 and 17 of stat (cutime, cstime) are 14 and 15 after the name.
            Some(f.get(14)? + f.get(15)?)
        })
        .unwrap_or(0);
    (ran + (children as f64 * tick_ns) as u64, waited)
}

/// The machine's CPUs (`/proc/stat`), not this thread's affinity, which pinning narrows.
fn cpus() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let n = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    n.max(1) as f64
}

/// Busy and idle jiffies of the whole machine (`/proc/stat`).
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let idle = f.get(3).unwrap_or(&0) + f.get(4).unwrap_or(&0);
    (f.iter().sum::<u64>() - idle, idle)
}

/// One bulk transfer: rate, and CPU seconds per GiB of each party.
#[derive(Debug, Clone, Copy, Default)]
struct Bulk {
    gbps: f64,
    writer: f64,
    middle: f64,
    sink: f64,
    /// Seconds per GiB that the three parties together were runnable but waiting for a
    /// CPU (other processes' load, or each other).
    waited: f64,
    /// Wall-clock seconds per GiB.
    wall: f64,
    /// The sink's average read, in KiB.
    sink_read_kib: f64,
    /// CPUs the whole machine kept busy during the transfer (everyone's, not just ours).
    machine_busy: f64,
}

/// 1 GiB written to a sink, from the first byte to the sink's acknowledgement; `middle` is
/// the forwarding process (the gateway or socat), if any.
fn bulk_run(addr: SocketAddr, middle: Option<u32>) -> Bulk {
    let m0 = middle.map_or((0, 0), process_sched);
    let (busy0, idle0) = machine_jiffies();
    let w0 = thread_sched();
    let gbps = bulk_gbps(addr);
    let w1 = thread_sched();
    let (busy1, idle1) = machine_jiffies();
    // Let socat reap its child so the child's time is counted.
    std::thread::sleep(Duration::from_millis(100));
    let m1 = middle.map_or((0, 0), process_sched);
    let gib = BULK as f64 / (1u64 << 30) as f64;
    let per_gib = |ns: u64| ns as f64 / 1e9 / gib;
    let waited = (w1.1 - w0.1) + m1.1.saturating_sub(m0.1) + SINK_WAIT_NS.load(Ordering::SeqCst);
    Bulk {
        gbps,
        writer: per_gib(w1.0 - w0.0),
        middle: per_gib(m1.0.saturating_sub(m0.0)),
        sink: per_gib(SINK_CPU_NS.load(Ordering::SeqCst)),
        waited: per_gib(waited),
        wall: 8.0 / gbps,
        sink_read_kib: BULK as f64 / 1024.0 / SINK_READS.load(Ordering::SeqCst).max(1) as f64,
        machine_busy: cpus() * (busy1 - busy0) as f64
            / ((busy1 - busy0) + (idle1 - idle0)).max(1) as f64,
    }
}

/// Gb/s for 1 GiB written to a sink, from the first byte to the sink's acknowledgement.
fn bulk_gbps(addr: SocketAddr) -> f64 {
    let chunk = vec![0x5au8; 256 * 1024];
    let mut s = StdStream::connect(addr).unwrap();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < BULK {
        s.write_all(&chunk).unwrap();
        sent += chunk.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut ack = [0u8; 1];
    s.read_exact(&mut ack).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let got = SINK_BYTES.load(Ordering::SeqCst);
    assert_eq!(
        got, BULK,
        "the sink via {addr} received {got} bytes, not {BULK}"
    );
    (BULK as f64 * 8.0) / secs / 1e9
}

/// (p50, p99) round-trip time in µs of 1-byte ping-pongs.
fn ping_pong(addr: SocketAddr) -> (f64, f64) {
    let mut s = StdStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut b = [0u8; 1];
    for _ in 0..1000 {
        s.write_all(b"p").unwrap();
        s.read_exact(&mut b).unwrap();
    }
    let mut rtts = Vec::with_capacity(PINGS);
    for _ in 0..PINGS {
        let t = Instant::now();
        s.write_all(b"p").unwrap();
        s.read_exact(&mut b).unwrap();
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    rtts.sort_by(|a, b| a.total_cmp(b));
    (rtts[PINGS / 2], rtts[PINGS * 99 / 100])
}

/// Connections per second: connect, 1-byte echo, close; `CONCURRENCY` at once.
async fn conn_rate(addr: SocketAddr) -> f64 {
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let next = next.clone();
            let errors = errors.clone();
            tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < CONNS {
                    let one = async {
                        let mut s = TcpStream::connect(addr).await?;
                        s.set_nodelay(true)?;
                        s.write_all(b"c").await?;
                        let mut b = [0u8; 1];
                        s.read_exact(&mut b).await?;
                        std::io::Result::Ok(())
                    };
                    if let Err(e) = one.await
                        && errors.fetch_add(1, Ordering::Relaxed) == 0
                    {
                        eprintln!("  first connection error via {addr}: {e}");
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
    let rate = CONNS as f64 / start.elapsed().as_secs_f64();
    let errors = errors.load(Ordering::Relaxed);
    eprintln!("  {addr}: {rate:.0} connections/s, {errors} failed");
    rate
}

/// How many idle connections fit: the gateway and this process each hold two
/// descriptors per connection (accepted + upstream; client + target side).
fn idle_count() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let fit = usize::try_from(limit.saturating_sub(200) / 2).unwrap_or(usize::MAX);
    IDLE.min(fit)
}

/// Opens `n` connections through the forward from several 127.x sources (so no single
/// source runs out of ephemeral ports), each echoing one byte, and keeps them open.
async fn open_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut clients = Vec::with_capacity(n);
    for i in 0..n {
        let source = Ipv4Addr::new(127, 0, 0, 1 + (i % 4) as u8);
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((source, 0))).unwrap();
        let mut s = socket.connect(addr).await.unwrap();
        s.write_all(b"i").await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        clients.push(s);
        if (i + 1) % 2000 == 0 {
            eprintln!("  {} open", i + 1);
        }
    }
    clients
}
