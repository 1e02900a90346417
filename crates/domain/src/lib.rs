//! Postern's types and rules: identities, the grant life cycle as a state machine, and the
//! validation of addresses, CIDRs, ports, names and durations. No I/O: everything here is
//! a pure function of its inputs, and time is always a parameter.
//!
//! # Layout
//!
//! - [`ids`]: newtypes over uuid v4 for every identity (`OrgId`, `RouterId`, …).
//! - [`kinds`]: the closed vocabularies (`Role`, `AccessType`, `AccessLevel`,
//!   `GrantStatus` with its transition rule, `RouterStatus`, `JobState`).
//! - [`rules`]: validation returning [`ValidationError`] (field + message):
//!   `allow_from`, `dst_address`, `dst_port`, expiry, router and account fields, and
//!   `time_to_expire` wording.
//! - [`Error`]: parse errors of ids and enums (text that is not one of ours).

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod ids;
pub mod kinds;
pub mod rules;

pub use ids::{AccessId, ForwardId, JobId, OrgId, RegionId, RouterId, SiteId, TokenId, UserId};
pub use kinds::{AccessLevel, AccessType, GrantStatus, JobState, Role, RouterStatus};
pub use rules::{AllowFrom, DstAddress, Limits, Policy, ValidationError};

/// Text that is not a valid id or enum value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a uuid.
    #[error("invalid {what} {value:?}: not a uuid")]
    InvalidId { what: &'static str, value: String },
    /// Not one of the enum's names.
    #[error("unknown {what} {value:?}; expected one of: {expected}")]
    UnknownVariant {
        what: &'static str,
        value: String,
        expected: &'static str,
    },
}
