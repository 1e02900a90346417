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
    entry_point, org_name, port, router_address, router_name, routeros_username, site_name,
    tls_fingerprint, token_name, tunnel_address, username,
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

#[cfg(test)]
mod hostile {
    use chrono::{DateTime, TimeDelta};
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// No text, however malformed, makes a rule panic; what is accepted shows back
        /// in a form that is accepted again.
        #[test]
        fn text_rules_never_panic(s in "\\PC{0,80}", ip in "[0-9a-f:./]{0,45}") {
            for input in [s.as_str(), ip.as_str()] {
                for lab_mode in [false, true] {
                    if let Ok(a) = AllowFrom::parse(input, &Policy { lab_mode }) {
                        let shown = a.to_string();
                        prop_assert_eq!(AllowFrom::parse(&shown, &Policy { lab_mode }), Ok(a));
                    }
                }
                let _ = input.parse::<AllowFrom>();
                let _ = DstAddress::parse(input);
                let _ = tunnel_address(input);
                let _ = entry_point(input);
                let _ = router_name(input);
                let _ = routeros_username(input);
                let _ = username(input);
            }
        }

        #[test]
        fn numbers_never_panic(n in any::<i64>(), secs in any::<i64>(), ms in -100_000_000_000_000i64..100_000_000_000_000) {
            let now = DateTime::from_timestamp_millis(1_700_000_000_000).unwrap();
            let _ = dst_port(n);
            let _ = port("api_port", n);
            let _ = resolve_expiry(now, Some(n), None, &Limits::default());
            if let Some(at) = TimeDelta::try_seconds(secs / 1000).and_then(|d| now.checked_add_signed(d)) {
                let _ = resolve_expiry(now, None, Some(at), &Limits::default());
            }
            let _ = time_to_expire(now, now + TimeDelta::milliseconds(ms));
        }
    }
}
