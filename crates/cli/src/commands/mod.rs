//! One module per subcommand: each parses its arguments and calls into the crates.

pub mod admin;
pub mod client;
pub mod demo;
pub mod gateway;
pub mod server;
pub mod sim;
