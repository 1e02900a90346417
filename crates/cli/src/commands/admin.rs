//! `postern admin …`: administration straight on a data directory, for scripts and first
//! steps. `create-token` prints the new API token alone on standard output.

use std::path::PathBuf;

use anyhow::Context as _;
use domain::Role;
use server::config::{Overrides, ServerConfig};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Make an API token and print it (alone) on standard output.
    CreateToken(CreateToken),
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
    }
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
