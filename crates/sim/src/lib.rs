//! A virtual MikroTik router, or a fleet of them, for tests, benchmarks and the demo.
//!
//! It stands in for RouterOS wherever Postern talks to a router: the API (plain and
//! TLS), SSH, the WinBox port, dst-nat, users and groups, active sessions and the
//! scheduler, with faults on demand. It shares no logic with Postern: it uses only the
//! `routeros` crate's codec and sentence splitting, so a test that passes against it
//! proves the client speaks RouterOS, not that both sides share a bug.
//!
//! ```no_run
//! # async fn demo() -> Result<(), postern_sim::Error> {
//! use postern_sim::{Fleet, FleetOptions, Ports};
//! let fleet = Fleet::start(3, "127.0.1.1".parse().unwrap(), FleetOptions {
//!     ports: Ports::ephemeral(),
//!     ..FleetOptions::default()
//! }).await?;
//! let r = &fleet.routers[0];
//! println!("{} at {} (admin / {})", r.identity(), r.api_addr, r.admin_password);
//! assert!(r.router().state().users.by_name("admin").is_some());
//! fleet.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Driving it from a test
//!
//! - Start: [`RouterHandle::start`] with [`RouterOptions`] (`ports` default to
//!   [`Ports::ephemeral`]; `clock: Clock::manual(t)` for time control;
//!   `version: "6.49.10"` for RouterOS 6 behaviour), or [`Fleet::start`]. The handle
//!   carries `api_addr`, `api_tls_addr`, `ssh_addr`, `winbox_addr`, `admin_password`,
//!   `tls.cert_der`/`tls.cert_pem`/`tls.fingerprint_sha256` (to pin API-SSL) and
//!   `ssh_fingerprint` (to pin the SSH host key).
//! - Read state: `handle.router().state()` locks the [`state::State`] (users, groups,
//!   active, nat, scheduler tables of [`state::Item`]s; keep the guard short, never
//!   across an `.await`), or `handle.router().items(TableKind::Users)` for a snapshot.
//!   Change it in-process with `handle.router().run(&Caller::system(), &Request…)` or
//!   [`Router::set_device_mode`].
//! - Time: `handle.clock().advance(d)`; the scheduler wakes when a manual clock moves,
//!   and [`RouterHandle::run_scheduler`] runs what is due at once.
//! - Faults: `handle.faults().set_latency(d)`, `.set_offline(true)`,
//!   `.set_drop_commands(Some(DropPoint::AfterApply))`, `.clear()`.
//! - Stop: `handle.shutdown().await` (or `fleet.shutdown().await`) closes every
//!   listener and connection, dst-nat forward and the scheduler.
//!
//! # Layout
//!
//! - [`fleet`]: starting one router ([`RouterHandle`]) or many ([`Fleet`]); ports.
//! - [`router`]: one router's handle: config, state lock, login and sessions.
//! - [`state`]: the data: users, groups and policies, active sessions, NAT rules,
//!   scheduler entries, device-mode; `.id`s.
//! - [`menu`]: what commands do, with RouterOS's checks and messages (all services).
//! - [`query`]: `print` queries, including the `?#` stack operations.
//! - [`api`]: the API service (8728) and API-SSL (8729); [`tls`]: its certificate.
//! - [`ssh`]: SSH with a small RouterOS-like console ([`ssh::console`]).
//! - [`winbox`]: the WinBox-port stand-in (8291), **not** the WinBox protocol.
//! - [`nat`]: dst-nat rules applied for real (TCP forwarding).
//! - [`scheduler`] and [`script`]: entries run when due, and the scripts Postern installs.
//! - [`faults`]: latency, offline, dropped connections.
//! - [`clock`]: real or manual time; RouterOS's date, time and interval formats.
//! - [`server`]: the accept loop all services share; [`addr`], [`net`]: helpers.
//!
//! # Fidelity
//!
//! What matches RouterOS (7.18 unless said otherwise):
//! - API words, login (plaintext and the MD5 challenge), tags on every reply, `!trap`
//!   then `!done`, `!empty` then `!done` for an empty `print` (7.18+, a per-router
//!   option; the pinned librouteros reads up to `!done` and skips `!empty`, which only
//!   works against 7.18+ if both are sent), `/cancel` (`!trap =category=2 =message=interrupted`), queries with the
//!   stack operators, `=.proplist=`, `=count-only=`, `.id`s as `*HEX` never reused.
//! - Messages: `invalid user name or password (6)` (for every login refusal alike:
//!   wrong password, disabled, address or policy), `not enough permissions (9)`,
//!   `failure: user with the same name already exists`, `no such item`,
//!   `input does not match any value of group`, `no such command or directory (x)` and
//!   `no such command prefix` (category 0). Failures of a command carry no category, as
//!   RouterOS sends them; only unknown commands (0) and interruptions (2) have one.
//! - Before login, RouterOS 7 answers other commands with `!trap =message=not logged
//!   in` and keeps the connection; a router configured as 6.x sends `!fatal` and closes.
//! - Built-in groups `read` (*1), `write` (*2), `full` (*3) with RouterOS's policies:
//!   `read` keeps reboot, sniff and sensitive; `write` lacks only policy. Changing users
//!   or groups needs `write` and `policy`.
//! - A user's `address=` list and its group's `api`/`ssh`/`winbox` policy are checked at
//!   login on every service; `request-logout` ends API, SSH and 8291 sessions at once;
//!   removing a user leaves its sessions alone.
//! - A scheduler entry's script runs with the entry's `policy` (RouterOS's default list
//!   when none is given, within the adding user's policies); giving an entry a policy
//!   the user lacks is `not enough permissions (9)`. Editing other fields of an entry
//!   with more policies than the editor's is allowed: RouterOS's rule is not documented,
//!   so the sim takes the worst case. `[find …]` in a script needs `read`.
//! - NAT rules: `src-address` and `in-interface` match (the sim's one interface is
//!   `ether1`; other names are refused as RouterOS refuses an interface it lacks).
//! - Device-mode `home` refuses `/system/scheduler/add` and stops entries from running;
//!   `/system/device-mode/update` is refused over the API (it needs a button press).
//!
//! What is simplified:
//! - Menus: only those above, and `/system/clock print` (the sim keeps UTC: `gmt-offset=+00:00`);
//!   other paths are `no such command or directory`.
//!   Messages the sim had to choose without a RouterOS to ask (missing required
//!   properties: `failure: <key> not specified`; default group removal; dst-port
//!   without tcp/udp) are close, not guaranteed identical.
//! - The SSH console knows a handful of commands and prints close to, not exactly as,
//!   RouterOS (`print` shows items in a `print detail`-like form).
//! - The WinBox port is a **line-based stand-in** ([`winbox`]), not the WinBox protocol.
//! - dst-nat forwards TCP on single ports only, and removing or disabling a rule closes
//!   the connections it forwarded (a real router keeps them through conntrack).
//! - Scheduler scripts: only the removal commands Postern installs, no scripting
//!   language; times are UTC; `start-time=startup` never runs.
//! - `/user/active/listen` reports new sessions and ended ones (`=.dead=yes`) only.

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod addr;
pub mod api;
pub mod clock;
pub mod faults;
pub mod fleet;
pub mod menu;
pub mod nat;
pub mod net;
pub mod query;
pub mod router;
pub mod scheduler;
pub mod script;
pub mod server;
pub mod ssh;
pub mod state;
pub mod tls;
pub mod winbox;

use std::net::{Ipv4Addr, SocketAddr};

pub use clock::Clock;
pub use faults::{DropPoint, Faults};
pub use fleet::{Fleet, FleetOptions, Ports, RouterHandle, RouterOptions};
pub use router::{Caller, Router, RouterConfig, Via};
pub use state::DeviceMode;

/// Why the sim could not start.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{count} routers from {base} do not fit in 127.0.0.0/8")]
    AddressRange { base: Ipv4Addr, count: usize },
    #[error("tls: {0}")]
    Tls(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
