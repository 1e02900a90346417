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
//!
//! # Differences from notes/STORE_API.md
//!
//! - `ValidationError { field: String, message: String }`; `Display` is
//!   "field: message".
//! - Expiry: `Limits { min, max, default }` are `chrono::TimeDelta`s (default 10 min,
//!   1440 min, 120 min), so the default duration is configuration too, and
//!   `rules::resolve_expiry(now, expire_after_minutes, expires_at, &limits)` takes no
//!   separate default. The result is truncated to whole milliseconds (as stored).
//!   Errors name `expire_after_minutes` or `expires_at` (both given → `expires_at`).
//! - `rules::time_to_expire` says "now" when less than half a second remains.
//! - `AllowFrom::from_addr(ip, &policy)` validates a single address (the caller's own);
//!   `FromStr`/serde read already-validated text without policy checks (so lab-mode
//!   grants read back); `AllowFrom::net()`. IPv4-mapped IPv6 peers match IPv4 networks.
//! - `DstAddress::check(ip)` validates a parsed address; `DstAddress::addr()`.
//! - Field rules in `rules` (each returns the value or a `ValidationError` on its
//!   field): `port(field, i64) -> u16`, `dst_port(i64)`, `router_name`, `site_name`
//!   (field `site`), `org_name`, `token_name`, `routeros_username` (field `username`),
//!   `username` (Postern logins: letters, digits, `._@-`), `tunnel_address -> IpAddr`
//!   (any unicast, loopback allowed for the simulator), `entry_point` (host name or IP,
//!   lowercased).
//! - `rules::classify(ip) -> AddressClass` is public; `GrantStatus::is_final()`; every
//!   enum has `ALL`.

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

pub use ids::{
    AccessId, BadGrantKey, ConnectionRecordId, ForwardId, GatewayId, GatewayRunId, GrantKey, JobId,
    OrgId, RegionId, RouterId, SiteId, TokenId, UserId,
};
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

#[cfg(test)]
mod tidy {
    /// Every module says its role first; the crate root lists its layout.
    #[test]
    fn every_module_opens_with_a_doc_comment() {
        fn walk(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, found);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    found.push(path);
                }
            }
        }
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        walk(&src, &mut files);
        assert!(files.len() > 3);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.starts_with("//!"),
                "{} lacks a //! header",
                file.display()
            );
        }
        let root = std::fs::read_to_string(src.join("lib.rs")).unwrap();
        assert!(root.contains("# Layout"));
    }
}
