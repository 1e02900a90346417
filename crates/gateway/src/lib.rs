//! The data plane: ephemeral entry-port allocation, source-CIDR checks, forwarding, live-connection tracking and kill.
//!
//! # Status
//!
//! Empty: this crate is built by the gateway issue. It never touches the database.
