//! `postern demo`: the whole chain on one machine, in one command. A server (SQLite in a
//! temporary directory, or `--data-dir`), its in-process gateway, lab mode on, and a sim
//! fleet of three routers on 127.x addresses, each registered as a site and router with
//! its tunnel address and management credentials. Prints the portal URL, the admin
//! login, an API token and a copy-paste example (or, with `--json`, the same as one JSON
//! line) once everything listens, and runs until Ctrl-C or SIGTERM.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use domain::Role;
use server::config::{Overrides, ServerConfig};
use sim::{Fleet, FleetOptions, Ports};

/// Where the demo listens unless told otherwise (falls back to any free port when busy).
const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);

#[derive(clap::Args)]
pub struct Args {
    /// Keep the database here instead of a temporary directory (removed at exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address of the portal and API [default: 127.0.0.1:8080, or a free port when that
    /// one is taken].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Print one JSON object on one line (portal_url, admin_user, admin_password,
    /// api_token, routers) instead of the text.
    #[arg(long)]
    json: bool,
    /// How many sim routers.
    #[arg(long, default_value_t = 3)]
    routers: usize,
    /// The first sim router's address; the others follow.
    #[arg(long, default_value = "127.0.10.1")]
    base_address: Ipv4Addr,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    init_logs();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(demo(args))
}

/// Warnings only by default (the demo's own output is the point); `POSTERN_LOG` overrides.
fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// One registered sim router.
struct DemoRouter {
    id: String,
    name: String,
    address: IpAddr,
}

async fn demo(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=50).contains(&args.routers),
        "--routers must be between 1 and 50"
    );
    let temp = match &args.data_dir {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("postern-demo-")
                .tempdir()
                .context("making a temporary data directory")?,
        ),
    };
    let data_dir = match (&args.data_dir, &temp) {
        (Some(d), _) => d.clone(),
        (None, Some(t)) => t.path().to_owned(),
        (None, None) => anyhow::bail!("no data directory"),
    };
    let shutdown = super::server::shutdown_signal()?;
    let (listener, fell_back) = bind(args.listen).await?;
    let listen = listener.local_addr()?;
    if fell_back {
        tracing::warn!("{DEFAULT_LISTEN} is taken: the demo listens on {listen} instead");
    }
    let config = ServerConfig::load(
        None,
        std::env::vars(),
        &Overrides {
            data_dir: Some(data_dir.clone()),
            listen: Some(listen),
            database_url: None,
            lab_mode: Some(true),
            log_format: None,
        },
    )?;
    let config = ServerConfig {
        // The demo's database is its own, whatever the environment says.
        database_url: None,
        ..config
    };
    tracing::warn!(
        "LAB MODE IS ON: allow_from accepts loopback and private addresses; this is a demo, never run a production server like this"
    );
    let store = server::bootstrap::open_store(&config).await?;
    let password = admin_password(&store).await?;
    let token = server::bootstrap::create_token(
        &store,
        None,
        Role::Admin,
        &format!("demo {}", server::auth::random_alnum(6, true)),
        None,
        chrono::Utc::now(),
    )
    .await?;
    let fleet = Fleet::start(
        args.routers,
        args.base_address,
        FleetOptions {
            ports: Ports::ephemeral(),
            // Reachable only through the tunnel each builds from the pasted line.
            behind_nat: true,
            ..FleetOptions::default()
        },
    )
    .await
    .context("starting the sim routers")?;
    let fleet = std::sync::Arc::new(fleet);
    let base = format!("http://{listen}");
    let json = args.json;
    // Once the server is up (its listener is bound, so the routers' fetches wait in its
    // backlog until it serves), each router gets its site's line pasted into its
    // console, as an operator would; the demo reports when all are online.
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let report = {
        let (store, config, fleet) = (store.clone(), config.clone(), fleet.clone());
        move || {
            tokio::spawn(async move {
                match enrol(&store, &config, &fleet).await {
                    Ok(routers) if json => {
                        print_json(&base, &password, &token, &routers, &data_dir);
                    }
                    Ok(routers) => {
                        print_text(&base, &password, &token, &routers, fell_back, &data_dir);
                    }
                    Err(e) => {
                        let _ = failed_tx.send(e);
                    }
                }
            });
        }
    };
    // A failed enrolment stops the demo, and the demo then fails with its reason.
    let (reason_tx, reason_rx) = tokio::sync::oneshot::channel::<anyhow::Error>();
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            Ok(e) = failed_rx => {
                let _ = reason_tx.send(e);
            }
        }
    };
    let served = super::server::run_parts(config, store, listener, stop, report).await;
    if let Ok(fleet) = std::sync::Arc::try_unwrap(fleet) {
        fleet.shutdown().await;
    }
    drop(temp);
    served?;
    match reason_rx.await {
        Ok(e) => Err(e.context("the demo's routers could not enrol")),
        Err(_) => Ok(()),
    }
}

/// Binds `--listen`, or 127.0.0.1:8080 and, when that is taken, any free port.
async fn bind(asked: Option<SocketAddr>) -> anyhow::Result<(tokio::net::TcpListener, bool)> {
    if let Some(addr) = asked {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        return Ok((l, false));
    }
    match tokio::net::TcpListener::bind(DEFAULT_LISTEN).await {
        Ok(l) => Ok((l, false)),
        Err(_) => {
            let any = SocketAddr::new(DEFAULT_LISTEN.ip(), 0);
            let l = tokio::net::TcpListener::bind(any)
                .await
                .with_context(|| format!("binding {any}"))?;
            Ok((l, true))
        }
    }
}

/// The admin's password: made on a fresh data directory, else reset (the demo shows it,
/// and an earlier run's is not known).
async fn admin_password(store: &store::Store) -> anyhow::Result<String> {
    if let Some(admin) = server::bootstrap::first_start(store).await? {
        return Ok(admin.password);
    }
    let org = store
        .default_organisation()
        .await?
        .context("this data directory has users but no organisation \"default\"")?;
    let user = store
        .find_user(org.id, "admin")
        .await?
        .context("this data directory has users but no `admin` in organisation \"default\"")?;
    let password = server::auth::random_alnum(20, false);
    let hash = {
        let p = password.clone();
        tokio::task::spawn_blocking(move || server::auth::hash_password(&p))
            .await?
            .map_err(|e| anyhow::anyhow!("hashing the password: {e}"))?
    };
    store
        .set_user_password_hash(user.org_id, user.id, &hash)
        .await?;
    Ok(password)
}

/// How long a router may take from the pasted line to its tunnel's first handshake.
const ENROL_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);

/// Onboards each sim router as an operator would: adds its site (or, for a router of
/// the same name left by an earlier run on this data directory, issues a new line), pastes
/// the line into the router's console, and waits for its tunnel to come up.
async fn enrol(
    store: &store::Store,
    config: &ServerConfig,
    fleet: &Fleet,
) -> anyhow::Result<Vec<DemoRouter>> {
    let org = store
        .list_organisations()
        .await?
        .into_iter()
        .find(|o| o.name == "default")
        .context("no organisation \"default\"")?;
    let asker = server::sites::Asker {
        org_id: org.id,
        actor: "demo".into(),
        address: None,
    };
    let url = config
        .enroll_url()
        .map_err(|e| anyhow::anyhow!("the enrolment address: {e}"))?;
    let existing = store.list_routers(org.id).await?;
    let mut out = Vec::new();
    for r in &fleet.routers {
        let name = r.identity();
        let now = chrono::Utc::now();
        let (router_id, line) = match existing.iter().find(|e| e.name == name) {
            Some(e) => {
                let line = server::sites::issue_line(store, config, &url, &asker, e.id, now)
                    .await
                    .map_err(|e| anyhow::anyhow!("a new line for {name}: {e}"))?;
                (e.id, line)
            }
            None => {
                let (_, router, line) =
                    server::sites::add_site(store, config, &asker, &name, None, now)
                        .await
                        .map_err(|e| anyhow::anyhow!("adding site {name}: {e}"))?;
                (router.id, line)
            }
        };
        let started = std::time::Instant::now();
        let mut cwd = Vec::new();
        let pasted = sim::ssh::console::run_line(
            r.router(),
            &sim::Caller::system(),
            &line.command,
            &mut cwd,
        )
        .await;
        anyhow::ensure!(
            !pasted.failed,
            "{name}'s console refused the line: {}",
            pasted.output.trim()
        );
        while !r.wireguard_status().is_some_and(|s| s.is_up()) {
            anyhow::ensure!(
                started.elapsed() < ENROL_WITHIN,
                "{name}: no tunnel {ENROL_WITHIN:?} after the line was pasted"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        tracing::info!(router = %name, after = ?started.elapsed(), "pasted the line; the router is online through its tunnel");
        let router = store.get_router(org.id, router_id).await?;
        out.push(DemoRouter {
            id: router_id.to_string(),
            name,
            address: router.tunnel_address,
        });
    }
    Ok(out)
}

fn print_json(
    base: &str,
    password: &str,
    token: &str,
    routers: &[DemoRouter],
    data_dir: &std::path::Path,
) {
    let line = serde_json::json!({
        "data_dir": data_dir.display().to_string(),
        "portal_url": format!("{base}/"),
        "api_url": format!("{base}/api"),
        "admin_user": "admin",
        "admin_password": password,
        "api_token": token,
        "routers": routers
            .iter()
            .map(|r| serde_json::json!({
                "id": r.id,
                "name": r.name,
                "tunnel_address": r.address.to_string(),
            }))
            .collect::<Vec<_>>(),
    });
    println!("{line}");
}

fn print_text(
    base: &str,
    password: &str,
    token: &str,
    routers: &[DemoRouter],
    fell_back: bool,
    data_dir: &std::path::Path,
) {
    let mut text = String::new();
    let mut line = |s: &str| {
        text.push_str(s);
        text.push('\n');
    };
    line("Postern demo is running (lab mode: loopback sources are allowed; demo only).");
    if fell_back {
        line(&format!(
            "  {DEFAULT_LISTEN} was taken, so the portal listens on a free port instead."
        ));
    }
    line("");
    line(&format!("  Portal     {base}/"));
    line(&format!("  Login      admin / {password}"));
    line(&format!("  API token  {token}"));
    line(&format!("  Data       {}", data_dir.display()));
    line(
        "  Routers    (sim routers behind NAT, each a site of its own, reached through its tunnel)",
    );
    for r in routers {
        line(&format!("    {:<8} {:<12} {}", r.name, r.address, r.id));
    }
    if let Some(r) = routers.first() {
        let access = format!("{base}/api/routers/{}/transient-access", r.id);
        line("");
        line(&format!(
            "Try it: SSH access to {} for this machine, valid 30 minutes:",
            r.name
        ));
        line("");
        line(&format!("  TOKEN={token}"));
        line(&format!(
            "  curl -s -X POST -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' \\\n    -d '{{\"type\":\"ssh\",\"allow_from\":\"127.0.0.1\",\"expire_after_minutes\":30}}' \\\n    '{access}?wait=true'"
        ));
        line("");
        line("Then its login (use the \"id\" the first call printed):");
        line("");
        line(&format!(
            "  curl -s -H \"Authorization: Bearer $TOKEN\" {access}/ID/credentials"
        ));
        line(
            "  ssh -p PORT USER@127.0.0.1      # PORT, USER and the password from the credentials",
        );
        line("");
        line("Revoke it (the session ends at once):");
        line("");
        line(&format!(
            "  curl -s -X DELETE -H \"Authorization: Bearer $TOKEN\" {access}/ID"
        ));
    }
    line("");
    line("Ctrl-C stops everything.");
    print!("{text}");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}
