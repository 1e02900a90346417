//! Newtypes for identities: each a uuid v4, so an `OrgId` can never be passed where a
//! `RouterId` is expected. Serialised as the bare uuid string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;

macro_rules! id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A fresh random (v4) id.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self(Uuid::new_v4())
            }

            /// Wraps an existing uuid.
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The uuid inside.
            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                Uuid::parse_str(s).map(Self).map_err(|_| Error::InvalidId {
                    what: $what,
                    value: s.chars().take(64).collect(),
                })
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    };
}

id!(/// An organisation (tenant).
    OrgId, "organisation id");
id!(/// A user account of an organisation.
    UserId, "user id");
id!(/// An API token.
    TokenId, "token id");
id!(/// A region (one gateway and its port range).
    RegionId, "region id");
id!(/// A site (a place with one router).
    SiteId, "site id");
id!(/// A managed router.
    RouterId, "router id");
id!(/// A transient access grant.
    AccessId, "access id");
id!(/// A transient port forward.
    ForwardId, "forward id");
id!(/// A router job of the orchestration log.
    JobId, "job id");
id!(/// A connection through the gateway, as recorded in the store.
    ConnectionRecordId, "connection id");
id!(/// One run of a gateway (a `postern server` process): the owner of the connections
    /// it records.
    GatewayRunId, "gateway run id");
id!(/// A gateway enrolled with `postern admin add-gateway` (a `postern gateway` process, or
    /// the one inside `postern server`).
    GatewayId, "gateway id");

/// A grant, as every part names it: a transient access or a transient port forward.
/// Written `access:<uuid>` or `forward:<uuid>` (so in JSON, and in the comments Postern
/// puts on router objects after `postern:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum GrantKey {
    /// A transient access (WinBox or SSH to the router).
    Access(AccessId),
    /// A transient port forward (to a LAN device behind the router's dst-nat).
    Forward(ForwardId),
}

impl GrantKey {
    /// `access` or `forward`, as in job kinds and router tags.
    pub fn kind(self) -> &'static str {
        match self {
            GrantKey::Access(_) => "access",
            GrantKey::Forward(_) => "forward",
        }
    }

    /// The grant's id as text.
    pub fn id(self) -> String {
        match self {
            GrantKey::Access(id) => id.to_string(),
            GrantKey::Forward(id) => id.to_string(),
        }
    }

    /// The comment every router object of this grant carries: `postern:access:<id>`.
    pub fn tag(self) -> String {
        format!("postern:{self}")
    }
}

impl fmt::Display for GrantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GrantKey::Access(id) => write!(f, "access:{id}"),
            GrantKey::Forward(id) => write!(f, "forward:{id}"),
        }
    }
}

impl From<AccessId> for GrantKey {
    fn from(id: AccessId) -> Self {
        GrantKey::Access(id)
    }
}

impl From<ForwardId> for GrantKey {
    fn from(id: ForwardId) -> Self {
        GrantKey::Forward(id)
    }
}

/// Text that is not a grant key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a grant key (access:<uuid> or forward:<uuid>): {0:?}")]
pub struct BadGrantKey(String);

impl FromStr for GrantKey {
    type Err = BadGrantKey;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || BadGrantKey(s.chars().take(80).collect());
        match s.split_once(':').ok_or_else(bad)? {
            ("access", id) => Ok(GrantKey::Access(id.parse().map_err(|_| bad())?)),
            ("forward", id) => Ok(GrantKey::Forward(id.parse().map_err(|_| bad())?)),
            _ => Err(bad()),
        }
    }
}

impl TryFrom<String> for GrantKey {
    type Error = BadGrantKey;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<GrantKey> for String {
    fn from(key: GrantKey) -> String {
        key.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text_and_json() {
        let id = RouterId::new();
        let text = id.to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.parse::<RouterId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{text}\""));
        assert_eq!(serde_json::from_str::<RouterId>(&json).unwrap(), id);
    }

    #[test]
    fn grant_keys_read_back_what_they_write() {
        let key = GrantKey::Forward(ForwardId::new());
        assert_eq!(key.to_string().parse::<GrantKey>().unwrap(), key);
        assert_eq!(key.tag(), format!("postern:forward:{}", key.id()));
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(serde_json::from_str::<GrantKey>(&json).unwrap(), key);
        for bad in ["", "access", "access:", "user:x", "forward:not-a-uuid"] {
            assert!(bad.parse::<GrantKey>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn bad_id_text_is_an_error_naming_the_kind() {
        let err = "not-a-uuid".parse::<OrgId>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid organisation id \"not-a-uuid\": not a uuid"
        );
    }
}
