//! The sim's integration tests: real routers on 127.x addresses and ephemeral ports,
//! driven through raw RouterOS API sentences (the sim's tests must not lean on any
//! Postern client), russh and OpenSSH, and plain TCP.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

mod api;
mod enroll;
mod faults;
mod fleet;
mod layout;
mod nat;
mod perf;
mod scheduler;
mod ssh;
mod surface;
mod winbox;
