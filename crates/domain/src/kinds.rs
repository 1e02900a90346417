//! The closed vocabularies of Postern: roles, access types and levels, and the statuses
//! of grants, routers and jobs. Each is lowercase text on the wire and in the database
//! (`as_str`/`FromStr`/serde agree). `GrantStatus::can_become` is the grant life cycle.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident, $what:literal { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The lowercase name used on the wire and in the database.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = Error;
            fn from_str(s: &str) -> Result<Self, Error> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(Error::UnknownVariant {
                        what: $what,
                        value: s.chars().take(64).collect(),
                        expected: concat!($($text, " "),+).trim_ascii_end(),
                    }),
                }
            }
        }
    };
}

text_enum!(
    /// What a user or token may do in its organisation.
    Role, "role" {
        /// Everything, including users, tokens and the audit log.
        Admin = "admin",
        /// Routers, sites and grants.
        Operator = "operator",
        /// Read only.
        Viewer = "viewer",
    }
);

impl Role {
    /// Admins and operators may change things; viewers may not.
    pub const fn can_write(self) -> bool {
        matches!(self, Role::Admin | Role::Operator)
    }

    /// Only admins manage users, tokens and read the audit log.
    pub const fn is_admin(self) -> bool {
        matches!(self, Role::Admin)
    }
}

text_enum!(
    /// How a transient access grant reaches the router.
    AccessType, "access type" {
        /// WinBox, port 8291 on the router.
        Winbox = "winbox",
        /// SSH, port 22 on the router.
        Ssh = "ssh",
    }
);

text_enum!(
    /// The RouterOS group a temporary user is put in.
    AccessLevel, "access level" {
        /// `postern-full`.
        Full = "full",
        /// `postern-write`.
        Write = "write",
        /// `postern-read`: truly read-only.
        Read = "read",
    }
);

text_enum!(
    /// Where a grant (transient access or forward) is in its life cycle.
    ///
    /// `requested → provisioning → active → closing → expired | revoked`; `requested` and
    /// `provisioning` may go to `failed`; `requested`, `provisioning` and `active` may go
    /// to `closing`. `failed`, `expired` and `revoked` are final.
    GrantStatus, "grant status" {
        /// Recorded; no job has run yet.
        Requested = "requested",
        /// Jobs are creating the router user or NAT rule and opening the gateway port.
        Provisioning = "provisioning",
        /// Usable.
        Active = "active",
        /// Expired or revoked: the gateway port is closed, router clean-up is running.
        Closing = "closing",
        /// Ended at its expiry time.
        Expired = "expired",
        /// Ended early by a user.
        Revoked = "revoked",
        /// Provisioning gave up.
        Failed = "failed",
    }
);

impl GrantStatus {
    /// A live grant holds its gateway port and can be extended or revoked.
    pub const fn is_live(self) -> bool {
        matches!(
            self,
            GrantStatus::Requested | GrantStatus::Provisioning | GrantStatus::Active
        )
    }

    /// Nothing follows a final status.
    pub const fn is_final(self) -> bool {
        matches!(
            self,
            GrantStatus::Expired | GrantStatus::Revoked | GrantStatus::Failed
        )
    }

    /// Whether the life cycle allows going from `self` to `next` (never to itself).
    pub const fn can_become(self, next: GrantStatus) -> bool {
        use GrantStatus::*;
        matches!(
            (self, next),
            (Requested, Provisioning)
                | (Provisioning, Active)
                | (Requested | Provisioning | Active, Closing)
                | (Requested | Provisioning, Failed)
                | (Closing, Expired | Revoked)
        )
    }
}

text_enum!(
    /// Whether Postern can reach a router, as last seen.
    RouterStatus, "router status" {
        /// Never contacted.
        Unknown = "unknown",
        /// Answered on the last attempt.
        Online = "online",
        /// Did not answer on the last attempt.
        Offline = "offline",
    }
);

text_enum!(
    /// Where a router job is.
    JobState, "job state" {
        /// Waiting to run (possibly after `run_after`).
        Pending = "pending",
        /// Leased by a worker.
        Running = "running",
        /// Done.
        Completed = "completed",
        /// Gave up after its attempts.
        Failed = "failed",
        /// Stopped without retrying: the router refused a command as unknown or
        /// invalid (its words are the job's `last_error`), which another attempt of
        /// the same commands cannot change. Shown until someone acts; a restart of the
        /// orchestrator queues a stuck clean-up once more.
        Stuck = "stuck",
    }
);

#[cfg(test)]
mod tests {
    use super::GrantStatus::*;
    use super::*;

    /// Every allowed transition; every pair not listed must be refused.
    const ALLOWED: &[(GrantStatus, GrantStatus)] = &[
        (Requested, Provisioning),
        (Requested, Closing),
        (Requested, Failed),
        (Provisioning, Active),
        (Provisioning, Closing),
        (Provisioning, Failed),
        (Active, Closing),
        (Closing, Expired),
        (Closing, Revoked),
    ];

    #[test]
    fn grant_state_machine_allows_exactly_the_table() {
        for &from in GrantStatus::ALL {
            for &to in GrantStatus::ALL {
                let expected = ALLOWED.contains(&(from, to));
                assert_eq!(from.can_become(to), expected, "{from} -> {to}");
            }
        }
    }

    #[test]
    fn final_states_have_no_exit_and_live_states_are_not_final() {
        for &s in GrantStatus::ALL {
            if s.is_final() {
                assert!(GrantStatus::ALL.iter().all(|&n| !s.can_become(n)), "{s}");
            }
            assert!(!(s.is_final() && s.is_live()), "{s}");
        }
        let live: Vec<_> = GrantStatus::ALL.iter().filter(|s| s.is_live()).collect();
        assert_eq!(live, [&Requested, &Provisioning, &Active]);
        assert!(!Closing.is_live() && !Closing.is_final());
    }

    #[test]
    fn enums_round_trip_and_refuse_unknown_text() {
        for &s in GrantStatus::ALL {
            assert_eq!(s.as_str().parse::<GrantStatus>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        for &r in Role::ALL {
            assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        }
        let err = "Admin".parse::<Role>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown role \"Admin\"; expected one of: admin operator viewer"
        );
        assert!(serde_json::from_str::<AccessLevel>("\"root\"").is_err());
    }

    #[test]
    fn roles_permissions() {
        assert!(Role::Admin.can_write() && Role::Admin.is_admin());
        assert!(Role::Operator.can_write() && !Role::Operator.is_admin());
        assert!(!Role::Viewer.can_write() && !Role::Viewer.is_admin());
    }
}
