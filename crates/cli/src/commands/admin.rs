//! `postern admin …`: administration straight on a data directory, for scripts and first
//! steps. `create-token` prints the new API token alone on standard output, `add-site`
//! the enrolment line of a new site alone, `add-gateway` the command that joins a new
//! regional gateway alone; `backup`
//! and `restore` copy a data directory out and back (`server::backup`).

use std::path::PathBuf;

use anyhow::Context as _;
use domain::Role;
use server::config::{Overrides, ServerConfig};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Make an API token and print it (alone) on standard output.
    CreateToken(CreateToken),
    /// Add a site to onboard (a pending router reached through its region's tunnel) and
    /// print the line to paste into the router's terminal (alone) on standard output.
    AddSite(AddSite),
    /// Add a regional gateway for a region configured `gateway = "remote"`, and print
    /// the command that joins it (alone) on standard output: run it on the gateway's
    /// machine. Its token works once, for --valid-for-hours.
    AddGateway(AddGateway),
    /// Remove a regional gateway (pending or joined; its id is in `GET /api/regions`):
    /// its token stops working and servers stop reaching it within seconds. Its region's
    /// routers are unreachable until another gateway joins the region.
    RemoveGateway(RemoveGateway),
    /// Copy the database (consistently, while servers run) and its key into a new
    /// directory OUT, readable by its owner only.
    Backup(BackupArgs),
    /// Make a data directory from a backup (refused on a non-empty one without --force).
    Restore(RestoreArgs),
}

/// Where the data directory is: the server's own options.
#[derive(clap::Args)]
pub struct Location {
    /// The server's data directory [default: ./postern-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// sqlite://… or postgres://… [default: SQLite in the data directory].
    #[arg(long)]
    database_url: Option<String>,
    /// The server's TOML configuration file, if it has one.
    #[arg(long)]
    config: Option<PathBuf>,
}

impl Location {
    fn load(self) -> anyhow::Result<ServerConfig> {
        Ok(ServerConfig::load(
            self.config.as_deref(),
            std::env::vars(),
            &Overrides {
                data_dir: self.data_dir,
                database_url: self.database_url,
                ..Default::default()
            },
        )?)
    }
}

#[derive(clap::Args)]
pub struct AddSite {
    #[command(flatten)]
    location: Location,
    /// The site's name (also its router's).
    #[arg(long)]
    name: String,
    /// The region [default: the first configured one].
    #[arg(long)]
    region: Option<String>,
    /// The organisation [default: "default"].
    #[arg(long)]
    org: Option<String>,
}

#[derive(clap::Args)]
pub struct AddGateway {
    #[command(flatten)]
    location: Location,
    /// The region the gateway serves (configured `gateway = "remote"`).
    #[arg(long)]
    region: String,
    /// Hours the join token works (at most 720).
    #[arg(long, default_value_t = 24)]
    valid_for_hours: i64,
}

#[derive(clap::Args)]
pub struct RemoveGateway {
    #[command(flatten)]
    location: Location,
    /// The gateway's id.
    #[arg(long)]
    id: domain::GatewayId,
}

#[derive(clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    location: Location,
    /// The backup directory to make; it must not exist.
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    location: Location,
    /// Replace the database and key of a data directory that is not empty (stop its
    /// server first).
    #[arg(long)]
    force: bool,
    /// The backup directory made by `postern admin backup`.
    input: PathBuf,
}

#[derive(clap::Args)]
pub struct CreateToken {
    /// The server's data directory [default: ./postern-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// sqlite://… or postgres://… [default: SQLite in the data directory].
    #[arg(long)]
    database_url: Option<String>,
    /// The server's TOML configuration file, if it has one.
    #[arg(long)]
    config: Option<PathBuf>,
    /// admin, operator or viewer.
    #[arg(long)]
    role: Role,
    /// A name to recognise the token by.
    #[arg(long, default_value = "cli")]
    name: String,
    /// Days until the token stops working [default: never].
    #[arg(long)]
    expires_in_days: Option<i64>,
    /// The organisation [default: "default"].
    #[arg(long)]
    org: Option<String>,
}

pub fn run(cmd: Command) -> anyhow::Result<()> {
    match cmd {
        Command::CreateToken(args) => create_token(args),
        Command::AddSite(args) => add_site(args),
        Command::AddGateway(args) => add_gateway(args),
        Command::RemoveGateway(args) => remove_gateway(args),
        Command::Backup(args) => backup(args),
        Command::Restore(args) => restore(args),
    }
}

fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let config = args.location.load()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let made = runtime.block_on(server::backup::backup(
        &config,
        &args.out,
        chrono::Utc::now(),
    ))?;
    println!(
        "backup of {} written to {}: {}",
        config.data_dir.display(),
        made.dir.display(),
        made.manifest.files.join(", ")
    );
    if let Some(note) = made.note {
        println!("note: {note}");
    }
    println!(
        "note: secret.key decrypts every router password in the database: keep the backup \
         where only its owner can read it, or the key apart from the database"
    );
    Ok(())
}

fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let config = args.location.load()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let made = runtime.block_on(server::backup::restore(&config, &args.input, args.force))?;
    println!(
        "restored {} (made {} by Postern {}) into {}",
        args.input.display(),
        made.manifest.created_at.to_rfc3339(),
        made.manifest.postern,
        made.data_dir.display()
    );
    if let Some(note) = made.note {
        println!("note: {note}");
    }
    Ok(())
}

fn create_token(args: CreateToken) -> anyhow::Result<()> {
    let config = ServerConfig::load(
        args.config.as_deref(),
        std::env::vars(),
        &Overrides {
            data_dir: args.data_dir,
            database_url: args.database_url,
            ..Default::default()
        },
    )?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let token = runtime.block_on(async {
        let store = server::bootstrap::open_store(&config).await?;
        server::bootstrap::create_token(
            &store,
            args.org.as_deref(),
            args.role,
            &args.name,
            args.expires_in_days,
            chrono::Utc::now(),
        )
        .await
    })?;
    println!("{token}");
    Ok(())
}

fn add_site(args: AddSite) -> anyhow::Result<()> {
    let config = args.location.load()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let line = runtime.block_on(async {
        // Opening the store brings the regions (and their tunnel keys) up to date.
        let store = server::bootstrap::open_store(&config).await?;
        let wanted = args.org.as_deref().unwrap_or("default");
        let org = store
            .find_organisation_by_name(wanted)
            .await?
            .with_context(|| {
                format!(
                    "no organisation named {wanted:?}: start `postern server` once on this data directory first"
                )
            })?;
        let asker = server::sites::Asker {
            org_id: org.id,
            actor: "cli".into(),
            address: None,
        };
        let (_, _, line) = server::sites::add_site(
            &store,
            &config,
            &asker,
            &args.name,
            args.region.as_deref(),
            chrono::Utc::now(),
        )
        .await?;
        anyhow::Ok(line)
    })?;
    println!("{}", line.command);
    Ok(())
}

fn add_gateway(args: AddGateway) -> anyhow::Result<()> {
    let config = args.location.load()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let added = runtime.block_on(async {
        let store = server::bootstrap::open_store(&config).await?;
        // The control CA signs the gateway's certificate at its join: made now if this
        // data directory's server never ran with a remote region.
        server::links::identity(&store, "admin")
            .await
            .map_err(anyhow::Error::msg)?;
        let added = server::gateways::add_gateway(
            &store,
            &config,
            &args.region,
            "cli",
            chrono::Duration::hours(args.valid_for_hours),
            chrono::Utc::now(),
        )
        .await?;
        anyhow::Ok(added)
    })?;
    eprintln!(
        "gateway {} added for region {}; run this on the gateway's machine before {} \
         (add --control-address, --tunnel-endpoint and --entry-host as `postern gateway --help` says):",
        added.gateway.id, args.region, added.gateway.token_expires_at
    );
    println!("{}", added.command);
    Ok(())
}

fn remove_gateway(args: RemoveGateway) -> anyhow::Result<()> {
    let config = args.location.load()?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let removed = runtime.block_on(async {
        let store = server::bootstrap::open_store(&config).await?;
        anyhow::Ok(store.remove_gateway(args.id, chrono::Utc::now()).await?)
    })?;
    if !removed {
        anyhow::bail!("no gateway {} (or it was removed already)", args.id);
    }
    eprintln!("gateway {} removed", args.id);
    Ok(())
}
