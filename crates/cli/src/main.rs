//! `postern`: the one binary. It parses arguments and hands each subcommand to its module
//! in `commands/`; the logic lives in the crates.

mod commands;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "postern",
    version,
    about = "Just-in-time remote access to MikroTik routers",
    after_help = commands::client::EXIT_CODES
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Try Postern on this machine: a server, its gateway and three sim routers, with
    /// an admin login, an API token and an SSH example printed.
    Demo(commands::demo::Args),
    /// Run the control plane: API, orchestrator and in-process gateway.
    Server(commands::server::Args),
    /// Run a region's gateway (tunnel, entry ports) as a process of its own, driven by
    /// the servers over the control channel; join it once with --join and --token.
    Gateway(commands::gateway::Args),
    /// Administer a data directory (tokens, …) without going through the API.
    #[command(subcommand)]
    Admin(commands::admin::Command),
    /// Run virtual MikroTik routers (API, API-SSL, SSH, a WinBox-port stand-in) for
    /// tests and demos.
    Sim(commands::sim::SimArgs),
    #[command(flatten)]
    Client(commands::client::Command),
}

fn main() -> std::process::ExitCode {
    // Run by ssh as its SSH_ASKPASS helper (`postern ssh`): no arguments of ours.
    if let Some(socket) = std::env::var_os(commands::client::askpass::SOCKET_VAR) {
        return commands::client::askpass::helper(socket);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Client(cmd) => {
            return commands::client::run(cmd, <Cli as clap::CommandFactory>::command);
        }
        Command::Demo(args) => commands::demo::run(args),
        Command::Server(args) => commands::server::run(args),
        Command::Admin(cmd) => commands::admin::run(cmd),
        Command::Gateway(args) => commands::gateway::run(args),
        Command::Sim(args) => run_async(commands::sim::run(args)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postern: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs an async subcommand on a multi-threaded runtime of its own.
fn run_async(task: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(task)
}
