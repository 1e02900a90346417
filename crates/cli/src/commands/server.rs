//! `postern server`: loads the configuration, opens the store, creates the first admin on
//! a fresh data directory (printing its password once), starts the orchestrator (router
//! jobs, expiry, reconciler) and the in-process gateway (every active grant's entry port
//! reopened from the store), and serves the API until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use server::config::{LogFormat, Overrides, ServerConfig};

#[derive(clap::Args)]
pub struct Args {
    /// Where the SQLite database and the secret key live [default: ./postern-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// sqlite://… or postgres://… [default: SQLite in the data directory].
    #[arg(long)]
    database_url: Option<String>,
    /// A TOML configuration file (overridden by POSTERN_* variables and flags).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Accept loopback and private sources in allow_from: for labs and demos only.
    #[arg(long)]
    lab_mode: bool,
    /// text or json.
    #[arg(long)]
    log_format: Option<LogFormat>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = ServerConfig::load(
        args.config.as_deref(),
        std::env::vars(),
        &Overrides {
            data_dir: args.data_dir,
            listen: args.listen,
            database_url: args.database_url,
            lab_mode: args.lab_mode.then_some(true),
            log_format: args.log_format,
        },
    )?;
    init_logs(config.log_format);
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

pub fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("POSTERN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn serve(config: ServerConfig) -> anyhow::Result<()> {
    if config.lab_mode {
        tracing::warn!(
            "LAB MODE IS ON: allow_from accepts loopback and private addresses; never run a production server like this"
        );
    }
    let store = server::bootstrap::open_store(&config).await?;
    if let Some(admin) = server::bootstrap::first_start(&store).await? {
        // Standard output only, once: never through the log.
        println!(
            "first start: created organisation \"default\" and user \"{}\" with password {}",
            admin.username, admin.password
        );
        println!("keep it now: it is not shown again");
    }
    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let local = listener.local_addr()?;
    let database = store_kind(&store);
    let data_dir = config.data_dir.display().to_string();
    // Said once everything is up (the gateway's listeners rebuilt from the store
    // included), so whoever waits for this line may use every live grant at once.
    let ready = move || {
        tracing::info!(
            listen = %local,
            database,
            data_dir,
            "postern server listening"
        );
    };
    run_parts(config, store, listener, shutdown, ready).await
}

/// Runs everything of a server on a store already open and a listener already bound:
/// the in-process gateway (its listeners rebuilt from the store first), the
/// orchestrator and the API, until `shutdown`; then stops them in turn. `ready` is
/// called once all of it is up, before requests are served.
pub async fn run_parts(
    config: ServerConfig,
    store: store::Store,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ready: impl FnOnce(),
) -> anyhow::Result<()> {
    // `listen` with port 0 becomes the port bound: the enrolment line names it.
    let mut config = config;
    if let Ok(bound) = listener.local_addr() {
        config.listen = bound;
    }
    let gateway = server::dataplane::GatewayPlane::start(
        store.clone(),
        &config,
        gateway::Config {
            max_connections_per_grant: config.gateway_max_connections_per_port,
            max_connections_per_source: config.gateway_max_connections_per_source,
            ..gateway::Config::default()
        },
    )
    .await
    .context("starting the gateway")?;
    // Before the orchestrator runs, so the rebuild sees every active grant as it is.
    gateway
        .rebuild()
        .await
        .context("rebuilding the gateway's listeners")?;
    let orchestrator = orchestrator::Orchestrator::new(
        store.clone(),
        orchestrator::Config {
            reconcile_interval: config.reconcile_interval,
            router_idle: config.router_idle,
            ..orchestrator::Config::default()
        },
        Arc::new(orchestrator::SystemClock),
        Arc::new(gateway.clone()),
    );
    tracing::info!(worker = orchestrator.owner(), "orchestrator starting");
    let (stop_jobs, jobs_stopped) = tokio::sync::watch::channel(false);
    let jobs = tokio::spawn(orchestrator.clone().run(jobs_stopped));
    let state = server::AppState::new(store, config, Arc::new(server::SystemClock))
        .with_orchestrator(orchestrator)
        .with_gateway(gateway.clone());
    ready();
    let served = server::run(listener, state, shutdown).await;
    let _ = stop_jobs.send(true);
    let _ = jobs.await;
    gateway.shutdown().await;
    served?;
    tracing::info!("postern server stopped");
    Ok(())
}

fn store_kind(store: &store::Store) -> &'static str {
    match store.backend() {
        store::Backend::Sqlite => "sqlite",
        store::Backend::Postgres => "postgres",
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed now, before the server says
/// it is listening, so a signal sent right after that line is never missed.
pub fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
            tracing::info!("shutting down: draining open requests");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down: draining open requests");
        })
    }
}
