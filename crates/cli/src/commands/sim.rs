//! `postern sim`: starts a fleet of virtual routers, prints one JSON line per router
//! once all listen, and runs until Ctrl-C (or SIGTERM).

use std::net::Ipv4Addr;

use anyhow::Context;
use clap::Args;
use sim::{Fleet, FleetOptions, Ports};

#[derive(Debug, Args)]
pub struct SimArgs {
    /// How many routers to start.
    #[arg(long, default_value_t = 1)]
    pub routers: usize,
    /// The first router's address; the others follow (127.0.1.1, 127.0.1.2, …).
    #[arg(long, default_value = "127.0.1.1")]
    pub base_address: Ipv4Addr,
    /// The `admin` password of every router; generated per router (and printed) when
    /// not given.
    #[arg(long, env = "POSTERN_SIM_ADMIN_PASSWORD")]
    pub admin_password: Option<String>,
    /// RouterOS API port (0: any free port).
    #[arg(long, default_value_t = 8728)]
    pub api_port: u16,
    /// RouterOS API-SSL port.
    #[arg(long, default_value_t = 8729)]
    pub api_tls_port: u16,
    /// WinBox-port stand-in (not the WinBox protocol).
    #[arg(long, default_value_t = 8291)]
    pub winbox_port: u16,
    /// SSH port (2222 so the sim runs unprivileged).
    #[arg(long, default_value_t = 2222)]
    pub ssh_port: u16,
    /// The RouterOS version the routers claim (7.18+ sends `!empty`).
    #[arg(long, default_value = "7.18.2")]
    pub routeros_version: String,
    /// Put the routers behind NAT: they open no TCP port on their address at all (the
    /// ports printed are 0) and are reachable only through the WireGuard tunnel each
    /// builds once its configuration has a peer (what Postern's enrolment line sets
    /// up). Inside the tunnel they serve RouterOS's ports (`/ip service`).
    #[arg(long)]
    pub behind_nat: bool,
    /// Build each router's tunnel with Debian's wireguard-go, wg and ip (TUN device
    /// `wgsim<N>` in this process's network namespace; needs root) instead of the
    /// built-in userspace WireGuard.
    #[arg(long)]
    pub wireguard_external: bool,
    /// With `--wireguard-external`: the TUN devices are `<PREFIX><N>`. wireguard-go's
    /// control sockets (`/var/run/wireguard/<device>.sock`) are shared by every network
    /// namespace, so fleets running at once need prefixes of their own. Letters and
    /// digits, at most 11.
    #[arg(long, value_name = "PREFIX", default_value = "wgsim", requires = "wireguard_external", value_parser = device_prefix)]
    pub wireguard_device_prefix: String,
    /// Read console lines from standard input, as a router's serial console (logged in
    /// as admin): each line (or a multi-line paste) runs on the first router, or on
    /// `sim-N` when prefixed with `sim-N> `; the output goes to standard output. How
    /// to paste an enrolment line into a router behind NAT.
    #[arg(long)]
    pub console: bool,
    /// CA certificates (PEM) the routers' `/tool fetch` trusts with
    /// `check-certificate=yes` or `yes-without-crl` (without it only
    /// `check-certificate=no` fetches over https).
    #[arg(long, value_name = "PEM")]
    pub trust_pem: Option<std::path::PathBuf>,
}

/// A TUN device's name is at most 15 bytes: the prefix leaves four for the number.
fn device_prefix(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 11 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("1 to 11 letters and digits".into());
    }
    Ok(s.to_owned())
}

pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    anyhow::ensure!(args.routers > 0, "--routers must be at least 1");
    let options = FleetOptions {
        ports: Ports {
            api: args.api_port,
            api_tls: args.api_tls_port,
            winbox: args.winbox_port,
            ssh: args.ssh_port,
        },
        admin_password: args.admin_password,
        version: args.routeros_version,
        behind_nat: args.behind_nat,
        wireguard_external: args
            .wireguard_external
            .then_some(args.wireguard_device_prefix),
        trust_pem: args.trust_pem,
        ..FleetOptions::default()
    };
    // Installed before the lines are printed, so a signal sent right after them is
    // never missed.
    let stop = super::server::shutdown_signal()?;
    let fleet = Fleet::start(args.routers, args.base_address, options)
        .await
        .context("starting the sim fleet")?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for r in &fleet.routers {
            let mut line = serde_json::json!({
                "identity": r.identity(),
                "address": r.address().to_string(),
                "api_port": r.api_addr.port(),
                "api_tls_port": r.api_tls_addr.port(),
                "winbox_port": r.winbox_addr.port(),
                "ssh_port": r.ssh_addr.port(),
                "admin_user": "admin",
                "tls_fingerprint_sha256": r.tls.fingerprint_sha256,
                "ssh_host_key": r.ssh_fingerprint,
                "behind_nat": r.behind_nat,
            });
            if r.password_generated
                && let Some(map) = line.as_object_mut()
            {
                map.insert("admin_password".into(), r.admin_password.clone().into());
            }
            writeln!(out, "{line}")?;
        }
        out.flush()?;
    }
    if args.console {
        let routers = fleet.routers.iter().map(|r| r.router().clone()).collect();
        tokio::spawn(console(routers));
    }
    stop.await;
    fleet.shutdown().await;
    Ok(())
}

/// The routers' console on standard input (read on a thread of its own: a line at a
/// time, passed on through a channel).
async fn console(routers: Vec<sim::Router>) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { break };
            if tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let caller = sim::Caller {
        user: "admin".into(),
        policies: sim::state::Policies::ALL,
    };
    let mut pending = String::new();
    let mut cwd = Vec::new();
    while let Some(line) = rx.recv().await {
        pending.push_str(&line);
        pending.push('\n');
        if sim::ssh::console::is_open(&pending) {
            continue;
        }
        let text = std::mem::take(&mut pending);
        let (router, text) = pick(&routers, &text);
        let Some(router) = router else {
            println!("no such router");
            continue;
        };
        let out = sim::ssh::console::run_line(router, &caller, text, &mut cwd).await;
        let mut output = out.output;
        if !output.is_empty() && !output.ends_with('\n') {
            output.push('\n');
        }
        print!("{output}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
}

/// The router a console line is for: `sim-2> line` names one; the first otherwise.
fn pick<'a>(routers: &'a [sim::Router], text: &'a str) -> (Option<&'a sim::Router>, &'a str) {
    if let Some((name, rest)) = text.split_once("> ")
        && !name.contains(char::is_whitespace)
        && name.starts_with("sim-")
    {
        return (routers.iter().find(|r| r.identity() == name), rest);
    }
    (routers.first(), text)
}
