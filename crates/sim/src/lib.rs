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
//! - Console and scripts: `script::run_text(router, &caller, text, &mut cwd).await`
//!   returns what a console paste prints and its error; `RouterOptions::trust_pem`
//!   (`postern sim --trust-pem`) is the CA `/tool fetch` trusts; `serial_number` makes
//!   a RouterBOARD-like router with `/system/routerboard`.
//! - Faults: `handle.faults().set_latency(d)`, `.set_offline(true)`,
//!   `.set_drop_commands(Some(DropPoint::AfterApply))`, `.set_missing_command("/user/remove")`
//!   (answered as a router without it), `.clear()`.
//! - WireGuard: a router follows its `/interface/wireguard` configuration by itself
//!   ([`wg::follow`]); `handle.set_wireguard(Some(WgConfig…))` sets a tunnel up
//!   directly, `handle.wireguard_status()` shows its socket and each peer's endpoint,
//!   last handshake and bytes, `handle.rebind_udp()` moves its UDP source port (a NAT
//!   mapping change), `handle.rehandshake()` starts a new handshake now (after a
//!   gateway restart, rather than waiting for the session to expire).
//!   `RouterOptions { behind_nat: true, .. }` opens no TCP listener;
//!   `wireguard_external` uses `wireguard-go` (root). While offline (a fault) the tunnel
//!   is silent.
//! - Commands received: `handle.router().record_commands()` then `.received()` (every
//!   API command, as sent), to hold what a client sends against a command database.
//! - Stop: `handle.shutdown().await` (or `fleet.shutdown().await`) closes every
//!   listener and connection, dst-nat forward and the scheduler.
//!
//! # Layout
//!
//! - [`fleet`]: starting one router ([`RouterHandle`]) or many ([`Fleet`]); ports.
//! - [`router`]: one router's handle: config, state lock, login and sessions.
//! - [`state`]: the data: users, groups and policies, active sessions, NAT and filter
//!   rules, scheduler entries, WireGuard interfaces and peers, IP addresses, services,
//!   files, device-mode; `.id`s. [`Router::wireguard`] gives the WireGuard state in a
//!   plain form and [`Router::subscribe_wireguard`] says when it changes.
//! - [`menu`]: what commands do, with RouterOS's checks and messages (all services).
//! - [`query`]: `print` queries, including the `?#` stack operations.
//! - [`api`]: the API service (8728) and API-SSL (8729); [`tls`]: its certificate.
//! - [`ssh`]: SSH with a small RouterOS-like console ([`ssh::console`]).
//! - [`winbox`]: the WinBox-port stand-in (8291), **not** the WinBox protocol.
//! - [`nat`]: dst-nat rules applied for real (TCP forwarding).
//! - [`wg`]: the router's own WireGuard tunnel, built from its configuration: boringtun's
//!   Noise as the initiator and a smoltcp stack on the tunnel address serving the same
//!   handlers (`wg::stack`, [`wg::stream`]), or Debian's `wireguard-go`
//!   ([`wg::external`]); a router `behind_nat` is reachable only through it.
//! - [`scheduler`]: entries run when due; [`script`]: the one interpreter of the
//!   console, `/import` and scheduler entries (RouterOS's language, the part Postern's
//!   scripts use), compiled against the router before it runs.
//! - [`fetch`]: `/tool fetch`'s HTTP and HTTPS client, with the router's trust store.
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
//!   `input does not match any value of group`, `invalid value for argument x`,
//!   `unknown parameter`, `no such command or directory (x)` and `no such command
//!   prefix` (category 0). Failures of a command carry no category, as RouterOS sends
//!   them; only unknown commands (0) and interruptions (2) have one. Sources: MikroTik's
//!   REST API manual (`no such command or directory (remove)`); users of real routers
//!   quoting the API's `!trap` (GideonLeGrange/mikrotik-java #15 and #36 and
//!   mdshemul48/mikro-routeros #1: `unknown parameter`, with no name;
//!   ansible-collections/community.routeros #440, RouterOS 7.20.6: `invalid value for
//!   argument interface`, `input does not match any value of interface`).
//! - **The command surface is a real router's.** [`menu::surface`] lists every command
//!   the sim implements with the parameters it takes, [`menu::execute`] refuses anything
//!   outside it before a command runs, and `tests/sim/surface.rs` holds the list (and
//!   each listed value and printed property) against RouterOS 7.21.4's command database
//!   (`postern-surface`, dumped from a real CHR).
//! - Before login, RouterOS 7 answers other commands with `!trap =message=not logged
//!   in` and keeps the connection; a router configured as 6.x sends `!fatal` and closes.
//! - Built-in groups `read` (*1), `write` (*2), `full` (*3) with RouterOS's policies:
//!   `read` keeps reboot, sniff and sensitive; `write` lacks only policy. Changing users
//!   or groups needs `write` and `policy`.
//! - A user's `address=` list and its group's `api`/`ssh`/`winbox` policy are checked at
//!   login on every service; removing a user leaves its sessions alone (MikroTik does
//!   not document that it ends them).
//! - `/user/active` has `print` and `remove` (RouterOS 7.21.4's dump lists add, find,
//!   get, print and remove; no `request-logout`, which the sim refuses as unknown).
//!   `remove` ends SSH and 8291 sessions at once and refuses API ones with `action
//!   failed (6)` (ending none of the command's sessions then), as measured on real
//!   routers: RouterOS 7.24 and 7.24.1 refuse `via=api` and `via=rest-api` rows
//!   (SecOps-7/MikroDash, its RouterOS users page), 7.23.2 refuses the REST rows
//!   (danikf/tik4net's REST notes, which cite the MikroTik forum for the same error).
//!   Whether several sessions in one `remove` are ended up to the refused one is not
//!   known, so Postern removes them one at a time.
//! - Scripts are compiled before they run: a command the router lacks stops the whole
//!   script before its first line (`bad command name x (line L column C)`, pointing at
//!   the word), as RouterOS resolves commands while compiling
//!   (routeros-lsp's probes), and so does a parameter the command lacks (`expected end
//!   of command`, RouterOS's console words as remembered, not confirmed here). One
//!   interpreter ([`script`]) runs the console, `/import` and scheduler entries.
//! - `/interface/wireguard` (RouterOS 7 only): the router makes the interface's
//!   Curve25519 key pair itself when no `private-key` is given, and prints both keys in
//!   base64; `listen-port` 13231 and `mtu` 1420 by default and names `wireguard1`, … for
//!   an interface added without one (MikroTik's WireGuard manual). Peers take
//!   `interface` (an existing WireGuard interface, else `input does not match any value
//!   of interface`, as for other interface names), `public-key`, `endpoint-address`,
//!   `endpoint-port`, `allowed-address` (printed as `a.b.c.d/n`), `persistent-keepalive`
//!   (printed `25s`) and `preshared-key`. Parameters, printed properties and listed
//!   values are RouterOS 7.21.4's (`tests/sim/surface.rs`). Chosen without a router to
//!   ask: `failure: already have interface with such name` (as remembered from RouterOS
//!   consoles), `failure: peer with such public key already exists`,
//!   `failure: already have such address`, and `invalid value for argument x` for a key
//!   that is not base64 of 32 bytes. `private-key` and `preshared-key` are shown only
//!   to users with the `sensitive` policy (RouterOS hides sensitive properties from
//!   the others).
//! - `/ip/address`: `address` without a prefix is `/32`; `network` defaults to the
//!   address's network and may name the other end of a point-to-point address;
//!   `interface` must exist (`ether1` or a WireGuard interface).
//! - `/ip/firewall/filter`: ordered, `place-before=*id` inserts before that rule (`no
//!   such item` for an id that is not there), RouterOS 7.21.4's actions, protocols,
//!   `connection-state` and `reject-with` values. Rules are kept, not enforced.
//! - `/ip/service`: RouterOS 7's eight services (`telnet ftp www ssh www-ssl api api-ssl
//!   winbox`, 7.21.4's `numbers` list; `www-ssl` disabled) with the ports the sim's
//!   services really listen on; `get`/`set`/`enable`/`disable` by name. Settings are kept,
//!   not enforced (the listeners do not move).
//! - `/system/routerboard`: a CHR has none (7.21.4's dump of a CHR lacks the menu), so a
//!   script that names it does not compile on a CHR-like sim; a sim given a
//!   `serial_number` has it (`get serial-number`).
//! - `/tool/fetch` (console, `/import`, scheduler): `url` (http, https), `http-method`
//!   get|post|put|delete, `http-data`, `http-header-field` (`Name: value,…`), `output`
//!   file|user|none (file by default, named by `dst-path` or the URL's last segment),
//!   `as-value` (`status`, `downloaded`, `total`, `duration`, `data`),
//!   `check-certificate` no (any certificate; RouterOS 7's default) or
//!   yes|yes-without-crl (the chain against the CA certificates the router was given,
//!   `trust_pem`, and the name). Any 2xx is success and a file is written, anything else
//!   fails (as MikroCloud's notes on RouterOS 7.13+ describe); the words
//!   `failure: closing connection: <404 Not Found> host:port (4)` and
//!   `failure: SSL: ssl: no trusted CA certificate found (6)` are as users quote them
//!   from real routers, not confirmed here. Refused in device-mode `home` (its `fetch`
//!   feature) and without the `write` and `test` policies.
//! - `/import file-name=x`: runs the file line by line, each line (with what `;` puts on
//!   it and the lines its open brackets span) compiled and run on its own in a scope
//!   of its own, so a `:local` does not reach the next line (routeros-lsp's probes of
//!   7.21.4: "in an imported file every line is a scope of its own"; a script body is
//!   one scope); the first failing line stops the import and the lines before it stay
//!   done; then `Script file loaded and executed successfully`. A failure stops the
//!   script that imported it too. `/file` lists what fetch wrote (`print`, `get`,
//!   `remove`).
//! - `:set` of a name no `:local`/`:global` declared is refused (routeros-lsp:
//!   `vars/set-undeclared`, from its device probes); the sim's words for it are its own.
//!   Reading an undeclared name gives nothing, as RouterOS reads it empty.
//! - A scheduler entry's script runs with the entry's `policy` (RouterOS's default list
//!   when none is given, within the adding user's policies); giving an entry a policy
//!   the user lacks is `not enough permissions (9)`. Editing other fields of an entry
//!   with more policies than the editor's is allowed: RouterOS's rule is not documented,
//!   so the sim takes the worst case. `[find …]` in a script needs `read`.
//! - NAT rules: `src-address` and `in-interface` match (the sim's one interface is
//!   `ether1`; other names are refused with `input does not match any value of interface`).
//! - Device-mode `home` refuses `/system/scheduler/add` and stops entries from running;
//!   `/system/device-mode/update` is refused over the API (it needs a button press).
//!
//! Versions (`version` of [`RouterOptions`], `--routeros-version`):
//! - `/user active remove`: RouterOS 7 only. RouterOS 6's manuals document only
//!   `/user active print` there (MikroTik's v2.9 to v4 manuals; nothing newer says
//!   otherwise, and public scripts skip ending sessions on 6.x), so a 6.49 router has
//!   no way to end a session and Postern logs that it could not. Not confirmed on a
//!   6.49 router.
//! - `/system/device-mode`: 7.13 and later, and 6.49.8 and later (MikroTik's
//!   device-mode page prints `allowed-versions: 7.13+,6.49.8+`); mode `home` by default
//!   on home devices shipped with 7.17 or later, and the mode that allows everything
//!   named `advanced` from 7.17, `enterprise` before (same page). Older routers answer
//!   `no such command or directory (device-mode)`.
//! - Dates: 6.x prints and takes `nov/22/2026` (MikroTik's v3/v4 manuals: `mmm/DD/YYYY`),
//!   7.x `2026-11-22` (7.21.4's `start-date` is `Year-Month-Day`). The change came
//!   within 7.x (7.10 as MikroTik's changelog is remembered, not confirmed here); the
//!   sim switches at 7.0.
//! - `!empty` for an empty `print`: 7.18 and later (MikroTik's API manual, "Reply word";
//!   socialwifi/RouterOS-api #103).
//! - WireGuard and `/interface/wireguard`: RouterOS 7 only (RouterOS 6 has none), behind
//!   `menu::available`; the enrolment line on a 6.x sim runs its `else` branch.
//! - Before 6.43 login is the MD5 challenge only.
//! - The WireGuard tunnel ([`wg`]) is WireGuard for real (boringtun's Noise IK, the
//!   protocol's timers: handshake retries every 5 s, re-keying after 120 s, sessions
//!   rejected after 180 s, the persistent keepalive), so any WireGuard peer
//!   interoperates (the tests use Debian's `wireguard-go` as the gateway). As on
//!   RouterOS, the router initiates towards a peer with an endpoint, binds
//!   `listen-port` (13231 by default), follows a peer to the source of its last
//!   authenticated datagram, accepts only packets from a peer's `allowed-address` and
//!   routes to the peer whose `allowed-address` holds the destination; its services
//!   answer on the tunnel address on `/ip service`'s ports, a login through the tunnel
//!   comes from the gateway's tunnel address (what `/user` `address=` checks), and
//!   dst-nat rules whose `in-interface` is the WireGuard interface (or that name none)
//!   forward what arrives through it. `peers print` shows `last-handshake`, `rx`, `tx`
//!   and `current-endpoint-*` from the running tunnel.
//!
//! What is simplified:
//! - WireGuard: one tunnel per router (the first enabled WireGuard interface with an
//!   enabled IPv4 address and an enabled peer); IPv4 inside the tunnel, TCP only (no
//!   ICMP beyond echo, no UDP services); the router forwards nothing between the tunnel
//!   and other interfaces except dst-nat, and `/ip firewall filter` rules are kept, not
//!   enforced, on it too. Any change to the interface, its peers or its address
//!   rebuilds the tunnel, ending what came through it (a real router keeps sessions
//!   across a peer edit); a change of `/ip service` alone moves the ports it serves
//!   and keeps its sessions. A handshake attempt that gave up (90 s) starts again at the next keepalive.
//!   `behind_nat` is a switch (no TCP listener on the router's address) for the demo and
//!   tests without root; a real NAT is made by the namespace tests. `rebind_udp` sends
//!   a keepalive from the new port at once (the packet that makes the new mapping).
//!   The `external` backend serves no dst-nat through the tunnel. After a gateway
//!   restart the router re-handshakes when WireGuard's timers say so (its session
//!   expires at most 180 s after it was made; the next keepalive then starts a
//!   handshake), as a real router does; `rehandshake()` does it at once for tests.
//! - Menus: only those above, and `/system/clock print` (the sim keeps UTC: `gmt-offset=+00:00`);
//!   other paths are `no such command or directory`, including real ones the sim does
//!   not implement (a subset of the real surface, never more).
//!   Messages the sim had to choose without a RouterOS to ask (missing required
//!   properties: `failure: <key> not specified`; default group removal; dst-port
//!   without tcp/udp) are close, not guaranteed identical.
//! - The SSH console runs the script language below and prints close to, not exactly
//!   as, RouterOS (`print` shows items in a `print detail`-like form); a paste with open
//!   brackets or quotes waits for the lines that close them.
//! - The WinBox port is a **line-based stand-in** ([`winbox`]), not the WinBox protocol.
//! - dst-nat forwards TCP on single ports only, and removing or disabling a rule closes
//!   the connections it forwarded (a real router keeps them through conntrack).
//! - Scripts: the part of RouterOS's language Postern's scripts use (listed in
//!   [`script`]): `:local`/`:set`/`:global`, `:if`, `:do … on-error`, `:foreach`,
//!   `:error`, `:put`, `:delay`, `:len`, `:pick`, `:tostr`, `:tonum`, `:typeof`,
//!   `:parse`, expressions, interpolation, `find`/`get`/`add`/`set`/`remove`; no loops
//!   other than `:foreach`, no functions, `$var` names of letters, digits and `_`.
//!   Values are compared leniently (`5` equals `"5"`). A scheduler entry's script that
//!   waits (fetch, `:delay`) goes on in a task of its own. Times are UTC;
//!   `start-time=startup` never runs.
//! - `/tool/fetch` over the API answers one `!re` with its values (as `as-value` gives
//!   them), not RouterOS's progress rows.
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
pub mod fetch;
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
pub mod wg;
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
