//! Conversions between the gateway's own types and the control channel's messages
//! (`control::msg`): grant keys, sources, refusals, close reasons and events. Pure
//! functions, no I/O.

use control::msg;

use crate::event::{EndReason, Event, Refusal};
use crate::spec::{GrantKey, SourcePolicy};

/// A grant key as the gateway names it.
pub fn key_in(key: msg::GrantKey) -> GrantKey {
    match key {
        msg::GrantKey::Access(id) => GrantKey::Access(id),
        msg::GrantKey::Forward(id) => GrantKey::Forward(id),
    }
}

/// A grant key as the control channel names it.
pub fn key_out(key: GrantKey) -> msg::GrantKey {
    match key {
        GrantKey::Access(id) => msg::GrantKey::Access(id),
        GrantKey::Forward(id) => msg::GrantKey::Forward(id),
    }
}

/// A grant's sources as a policy.
pub fn sources(sources: msg::Sources) -> SourcePolicy {
    SourcePolicy::new(sources.allow, sources.allow_rfc1918)
}

/// A refusal as the control channel names it.
pub fn refusal(refusal: Refusal) -> msg::Refusal {
    match refusal {
        Refusal::SourceNotAllowed => msg::Refusal::SourceNotAllowed,
        Refusal::TooManyConnections => msg::Refusal::TooManyConnections,
        Refusal::TooManyFromSource => msg::Refusal::TooManyFromSource,
    }
}

/// Why the gateway ends a grant a server closed. A failed provisioning ends it as a
/// revoke does (the server records its own reason).
pub fn close_reason(reason: msg::CloseReason) -> EndReason {
    match reason {
        msg::CloseReason::Expired => EndReason::Expired,
        msg::CloseReason::Revoked | msg::CloseReason::Failed => EndReason::Revoked,
    }
}

/// An event as the control channel carries it.
pub fn event(event: Event) -> msg::Event {
    match event {
        Event::ConnectionRefused {
            key,
            source,
            at,
            refusal: r,
        } => msg::Event::ConnectionRefused {
            key: key_out(key),
            source,
            at,
            refusal: refusal(r),
        },
        Event::ConnectionOpened {
            key,
            id,
            source,
            at,
            first,
        } => msg::Event::ConnectionOpened {
            key: key_out(key),
            id: id.0,
            source,
            at,
            first,
        },
        Event::ConnectionClosed {
            key,
            id,
            source,
            started_at,
            at,
            bytes_in,
            bytes_out,
            reason,
            ..
        } => msg::Event::ConnectionClosed {
            key: key_out(key),
            id: id.0,
            source,
            started_at,
            at,
            bytes_in,
            bytes_out,
            reason: reason.to_string(),
        },
        Event::GrantClosed {
            key,
            at,
            reason,
            connections_killed,
        } => msg::Event::GrantClosed {
            key: key_out(key),
            at,
            reason: reason.to_string(),
            connections_killed: connections_killed as u64,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{AccessId, ForwardId};

    #[test]
    fn keys_round_trip_and_keep_their_text() {
        for key in [
            GrantKey::Access(AccessId::new()),
            GrantKey::Forward(ForwardId::new()),
        ] {
            assert_eq!(key_in(key_out(key)), key);
            assert_eq!(key_out(key).to_string(), key.to_string());
        }
    }

    #[test]
    fn reasons_read_as_the_gateway_says_them() {
        let key = GrantKey::Access(AccessId::new());
        let at = chrono::Utc::now();
        let e = event(Event::GrantClosed {
            key,
            at,
            reason: EndReason::TargetUnreachable,
            connections_killed: 2,
        });
        assert_eq!(
            e,
            msg::Event::GrantClosed {
                key: key_out(key),
                at,
                reason: "target unreachable".into(),
                connections_killed: 2
            }
        );
        assert_eq!(close_reason(msg::CloseReason::Failed), EndReason::Revoked);
    }
}
