//! `postern`: the one binary. It parses arguments and wires the crates together; each
//! subcommand lives in `commands/`.

mod commands;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "postern",
    about = "Just-in-time remote access to MikroTik routers",
    version
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run virtual MikroTik routers (API, API-SSL, SSH, a WinBox-port stand-in) for
    /// tests and demos.
    Sim(commands::sim::SimArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match cli.command {
            Command::Sim(args) => commands::sim::run(args).await,
        }
    })
}
