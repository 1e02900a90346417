//! Validation rules for everything an operator types: each returns a typed value or a
//! [`ValidationError`] naming the offending field, with a message meant for a person.
//!
//! - [`net`]: `allow_from` sources, `dst_address`, `dst_port`, address classes.
//! - [`expiry`]: grant durations within configurable [`Limits`], and `time_to_expire`.
//! - [`fields`]: names, usernames, ports, host names of routers, regions and accounts.

pub mod expiry;
pub mod fields;
pub mod net;

pub use expiry::{Limits, resolve_expiry, time_to_expire};
pub use fields::{
    entry_point, org_name, port, router_name, routeros_username, site_name, token_name,
    tunnel_address, username,
};
pub use net::{AddressClass, AllowFrom, DstAddress, classify, dst_port};

/// An input that breaks a rule: which field, and why (lowercase, no trailing period).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// The request field at fault, as named in the API (`allow_from`, `expires_at`, …).
    pub field: String,
    /// What is wrong, for a person.
    pub message: String,
}

impl ValidationError {
    /// An error on `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Deployment policy that loosens rules for a lab; passed in, never global.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Accept loopback and private (RFC 1918, ULA) sources in `allow_from`, for a
    /// self-hosted lab where operators connect from the same LAN or machine.
    pub lab_mode: bool,
}
