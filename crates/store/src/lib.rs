//! Persistence for Postern through sqlx, on SQLite (default: one file, WAL) or
//! PostgreSQL (several servers sharing one database); the only crate with SQL.
//!
//! # Layout
//!
//! - [`Store`], [`StoreConfig`], [`Backend`]: opening (migrations run at open).
//! - `db`: the two backends behind one face (the `db!` macro, row reading, migrations).
//! - `accounts`: organisations, users, API tokens.
//! - `routers`: regions, sites, routers (with their encrypted management password).
//! - `grants`: transient access and transient forwards, gateway-port allocation, the
//!   grant life cycle as compare-and-set transitions.
//! - `jobs`: router jobs with their log lines, and the append-only audit log.
//! - `leasing`: claiming jobs (one running per router, in order, a router's due jobs as
//!   one batch), leases, ending attempts and grants in one write each, numbered log
//!   lines, superseding, `LISTEN`/`NOTIFY` wake-ups; regions' tunnel source address.
//! - `db::Writer`: SQLite's writer lock, urgent (orchestrator) and ordinary writes, and
//!   [`WriteStats`].
//! - `grouped`: group commit of grant creations and closes on SQLite (those queued
//!   for the writer together share one transaction: transient-access creations in a
//!   few multi-row statements, the rest a savepoint each).
//! - `sessions`: the portal's sessions, stored by the hash of their cookie token.
//! - `enrollment`: onboarding's single-use enrolment tokens (by hash), issued (revoking
//!   the router's open one), spent once with the router's key and facts.
//! - `tickets`: one-time WinBox tickets (by hash), made with their audit entry, taken once.
//! - `tunnels`: the management tunnel: regions' WireGuard keys (private half sealed),
//!   tunnelled routers (pending until enrolled with their public key) at addresses
//!   allocated in the region's prefix, and the peers the gateway loads.
//! - `gateways`: regional gateways (pending with a join token by hash, joined once, a
//!   later join for the region replacing the old) and the control plane's CA (private
//!   key sealed).
//! - `shares`: share links of a grant's login (by hash), made with their audit entry, opened
//!   once, revocable.
//! - `connections`: connections through the gateway per grant (source, times, bytes
//!   each way, how they ended), written from the gateway's events.
//! - `terminals`: the portal's terminal sessions and their asciicast recordings.
//! - [`maintenance`]: backups (a consistent copy of a live SQLite database) and the
//!   databases of older versions that upgrade tests start from.
//! - [`secret`]: AES-256-GCM for secrets at rest, and the redacting [`Secret`].
//! - [`records`]: the records handed out and the inputs taken.
//! - [`StoreError`].
//!
//! # Two backends: an enum over native pools
//!
//! The store holds either a `SqlitePool` or a `PgPool` and writes every query body once
//! inside `db!`, which compiles it for each backend. Chosen over sqlx's `Any` driver
//! because each backend keeps its own types, errors (unique and foreign-key violations
//! are recognised reliably), connection options (WAL, busy timeout, `BEGIN IMMEDIATE`)
//! and row locks (`FOR UPDATE` on PostgreSQL), at the cost of compiling each body twice.
//! SQL is dialect-neutral (`$1` placeholders, `ON CONFLICT`, `RETURNING`), with column
//! types that mean the same on both: ids are TEXT uuids, times BIGINT unix
//! milliseconds (UTC; so every time handed out is truncated to milliseconds), secrets
//! BLOB/BYTEA, JSON as TEXT. No compile-time-checked `query!`: nothing needs a database
//! at build time. Migrations live in `migrations/sqlite` and `migrations/postgres`,
//! embedded in the binary and applied by [`Store::open`].
//!
//! SQLite has one writer at a time: every write takes an in-process lock first (write
//! transactions then `BEGIN IMMEDIATE`), so writers queue in order instead of failing
//! on a stale snapshot or polling in SQLite's busy handler; the 5 s busy timeout covers
//! another process on the same file. The lock's holder writes on a connection of its
//! own (a pool of two, one write at a time, `db_write!`), never queueing for a
//! connection behind readers;
//! the read pool's connections are `query_only`, so a write that skipped the lock
//! fails instead of slipping past it. Reads never wait (WAL).
//!
//! # Connections
//!
//! A store opens, per process: the pool of [`StoreConfig::max_connections`] (8) that
//! every handle but the orchestrator's uses; the orchestrator's own pool of
//! [`StoreConfig::orchestrator_connections`] (8, opened on first use: as many as
//! the orchestrator had when it shared the pool, since its jobs read a lot), which
//! [`Store::for_orchestrator`] handles use for their reads (and on PostgreSQL their
//! writes), so API requests never hold the orchestrator up; and on SQLite the writer's
//! two connections (one in use at a time), shared by both (on PostgreSQL one more in
//! the orchestrator's pool for its `LISTEN`). 18 connections in all by default on
//! SQLite, 17 on PostgreSQL. Grant creations and closes
//! queued for the writer together share one transaction (`grouped`), so a burst of
//! creates or revokes costs a few writer turns, not one each.
//!
//! # Rules the database enforces
//!
//! - Gateway ports: a row in `gateway_ports` (primary key region + port) per grant that
//!   holds one, written in the grant's transaction and deleted when the grant becomes
//!   final (`expired`, `revoked`, `failed`). A `closing` grant still holds its port, as
//!   the gateway may still be closing it. Two concurrent creates can never share a port.
//!   Forwards' router dst-nat ports likewise (`router_ports`, per router).
//! - A grant, its port rows, its audit entry and its first job are one transaction (on
//!   SQLite, one savepoint of a grouped transaction, answered after its `COMMIT`): a
//!   failure at any step leaves nothing.
//! - A router is deleted only without live grants, checked in the deleting transaction
//!   under a row lock; its ended grants and jobs go with it (its audit entries stay).
//! - The audit log is append-only: triggers refuse UPDATE and DELETE (and TRUNCATE on
//!   PostgreSQL), so an organisation with audit entries cannot be deleted either.
//! - Every org-scoped method returns `NotFound` for a row of another organisation.
//! - `routers.grants_version` goes up in the transaction of every insert or update of
//!   one of the router's grants: triggers (migration 3), so no writer can forget it,
//!   whether a store method, another process or a hand-written statement. A reader that
//!   saw version V before reading a list knows the list is no older than V.
//!
//! # Differences from notes/STORE_API.md (what the server codes against)
//!
//! - `Store::open(url, &StoreConfig)`: the url may also be a bare file path; a SQLite
//!   file is created if missing unless the url sets `mode=`. `StoreConfig::new(key)` sets `max_connections` to 8
//!   and `orchestrator_connections` to 8. `Store::close()` closes the pools.
//! - `close_grant` takes the revoke's audit entry (`Option<&NewAudit>`), written in its
//!   transaction; `Store::for_orchestrator()` is the orchestrator's handle.
//! - `StoreError` has `Migrate` and `InvalidUrl` too.
//! - Records are in [`records`] and re-exported at the root. `AuditEntry::id` is an
//!   `i64` increasing in append order. Grants carry `region_id`.
//! - `NewAccess`/`NewForward` take `audit: NewAudit` and `job: Option<NewJob>`; the
//!   grant's `created_at` is `audit.at` (time stays a parameter). `NewJob` has
//!   `created_at` and `max_attempts: u32`; `create_job` (and a grant's first job) is
//!   refused with `NotFound` unless the job's router is in the job's org.
//! - `create_router` returns `Conflict` when a router of that name exists in the org,
//!   or when the named site already has a router (one router per site).
//! - `get_site(org, id) -> (Site, Vec<Router>)`, like an item of `list_sites`.
//! - `list_access`/`list_forwards(org, router_id, ended: Option<Page>)`: the router's
//!   grants that are not final (closing included), newest first, filtered in SQL
//!   (a partial index holds only those); with `ended`, a window of its final grants
//!   too, merged newest first. `NotFound` if the router is not in the org.
//! - `list_stamp(org, router_id, token)`: the router's `grants_version` and whether a
//!   token still exists, in one statement, for the server's grant-list cache.
//!   `api_token_exists(id)` checks a cached token alone. `list_live_access()`/`list_live_forwards()`: all orgs, every grant not yet
//!   final (`requested`, `provisioning`, `active` and `closing`), for the orchestrator.
//! - `transition_access(id, from, to, at, reason)` also refuses (`Conflict`) a move that
//!   `GrantStatus::can_become` forbids; `reason` goes to `failure_reason`.
//! - `set_access_authorized(id, at) -> bool`: true if it was set now, false if it was
//!   already set.
//! - `set_access_expiry` returns the updated grant; `NotFound` for another org's grant,
//!   `Conflict` when the grant is not live.
//! - `count_users() -> u64`; extra: `get_organisation`, `list_organisations`,
//!   `set_user_password_hash`, `get_job`, `get_router_any_org` (orchestrator),
//!   `ping()` (health) and `pool_connections() -> (open, idle)` (metrics).
//! - `Debug` of `User`, `NewUser`, `NewRouter`, `RouterPatch`, `NewAccess` shows
//!   `<redacted>` for passwords and password hashes.
//! - `RouterFacts` fields are `status` (always set) and `identity`, `routeros_version`,
//!   `board_name`, `uptime`, `last_seen_at` (`None` leaves the stored value).

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod accounts;
mod connections;
mod db;
mod enrollment;
mod error;
mod gateways;
mod grants;
mod grouped;
mod jobs;
mod leasing;
pub mod maintenance;
pub mod records;
mod routers;
pub mod secret;
mod sessions;
mod shares;
mod terminals;
mod tickets;
mod tunnels;

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use connections::{Connection, ConnectionEnd, GatewayRun, GrantKind, NewConnection};
pub use db::WriteStats;
pub use enrollment::{Enrollment, EnrollmentReport, EnrollmentState, EnrollmentUse, NewEnrollment};
pub use error::{Result, StoreError};
pub use gateways::{Gateway, GatewayJoin, JoinedGateway, NewGateway};
pub use leasing::{
    AttemptEnd, ClosingJob, GRANTS_CHANNEL, GrantKey, GrantListener, GrantMove, Intro,
    JOBS_CHANNEL, JobEnd, JobListener, JobOutcome, Lines, LogLine, MoveLine,
};
pub use records::*;
pub use secret::Secret;
pub use sessions::{NewSession, Session};
pub use shares::{GrantShare, NewGrantShare, ShareUse};
pub use terminals::{NewTerminalSession, TerminalSession};
pub use tickets::{NewWinboxTicket, TicketUse, WinboxTicket};

use db::Pool;
use secret::Cipher;

/// Which database is behind a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How to open a store.
#[derive(Clone)]
pub struct StoreConfig {
    /// The AES-256-GCM key for secrets at rest.
    pub secret_key: [u8; 32],
    /// The pool's size for everything but the orchestrator (the API, the portal, the
    /// gateway's events).
    pub max_connections: u32,
    /// The orchestrator's own pool's size (its handle: [`Store::for_orchestrator`]), so
    /// its reads (and on PostgreSQL its writes) never queue behind API requests. On
    /// PostgreSQL one more connection is opened for its `LISTEN`.
    pub orchestrator_connections: u32,
}

impl StoreConfig {
    /// A config with this key, 8 connections, and 8 for the orchestrator.
    pub fn new(secret_key: [u8; 32]) -> Self {
        Self {
            secret_key,
            max_connections: 8,
            orchestrator_connections: 8,
        }
    }
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("secret_key", &"<redacted>")
            .field("max_connections", &self.max_connections)
            .field("orchestrator_connections", &self.orchestrator_connections)
            .finish()
    }
}

/// The repository: cheap to clone, shared by every task.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    /// Whose connections this handle uses.
    lane: Lane,
}

/// Whose connections a [`Store`] handle uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Api,
    Orchestrator,
}

struct Inner {
    /// Everyone's but the orchestrator's.
    pool: Pool,
    /// The orchestrator's (on SQLite sharing the writer connection with `pool`).
    orchestrator: Pool,
    cipher: Cipher,
    /// Serialises SQLite write transactions (see the crate doc).
    write_lock: Arc<db::Writer>,
    /// SQLite's grant creations and closes waiting to be committed together.
    grouped: grouped::Queue,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .field("lane", &self.lane)
            .finish()
    }
}

impl Store {
    /// Opens (creating if needed) and migrates a database: `postgres://…` or
    /// `postgresql://…` for PostgreSQL; `sqlite://path?mode=rwc`, `sqlite:path` or a bare
    /// file path for SQLite (WAL, 5 s busy timeout, foreign keys on).
    pub async fn open(url: &str, config: &StoreConfig) -> Result<Store> {
        let cipher = Cipher::new(&config.secret_key)?;
        let max = config.max_connections.max(1);
        let orchestrator_max = config.orchestrator_connections.max(1);
        let (pool, orchestrator) =
            if url.starts_with("postgres://") || url.starts_with("postgresql://") {
                let options = PgConnectOptions::from_str(url)
                    .map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
                let pool = PgPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options.clone())
                    .await?;
                db::postgres_migrator().run(&pool).await?;
                // Opened on first use: a store that runs no orchestrator opens none.
                let orchestrator = PgPoolOptions::new()
                    .max_connections(orchestrator_max + 1)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_lazy_with(options);
                (Pool::Postgres(pool), Pool::Postgres(orchestrator))
            } else {
                let options = if url.starts_with("sqlite:") {
                    let options = SqliteConnectOptions::from_str(url)
                        .map_err(|e| StoreError::InvalidUrl(e.to_string()))?;
                    // Without an explicit `mode=`, create the file on first start.
                    if url.contains("mode=") {
                        options
                    } else {
                        options.create_if_missing(true)
                    }
                } else if url.contains("://") || url.is_empty() {
                    return Err(StoreError::InvalidUrl(format!(
                        "{:?} is neither a sqlite:// nor a postgres:// url",
                        url.split("://").next().unwrap_or_default()
                    )));
                } else {
                    SqliteConnectOptions::new()
                        .filename(url)
                        .create_if_missing(true)
                };
                let options = options
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true);
                // Into WAL on one connection before any pool opens several at once: changing
                // into WAL takes an exclusive lock that SQLite does not wait for, and sqlx
                // opens a pool's `min_connections` from two tasks at once, so on a new file
                // one of them could fail with "database is locked". Once the file is in WAL
                // (a lasting setting), opening takes no such lock.
                {
                    use sqlx::Connection as _;
                    let first = sqlx::SqliteConnection::connect_with(&options).await?;
                    first.close().await?;
                }
                // The writer first: it migrates. Used only by the holder of the writer lock, so
                // one write at a time; two connections, kept open, so the next holder never waits
                // for the last one's connection to be returned (sqlx returns a connection in a task
                // of its own that pings it first). Every write's statements are prepared on
                // them, so each keeps more than a reader does (sqlx's default of 100 would have the
                // log lines' inserts, one per number of lines, evict the creates' and the leases').
                let write = SqlitePoolOptions::new()
                    .max_connections(2)
                    .min_connections(2)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options.clone().statement_cache_capacity(1024))
                    .await?;
                db::sqlite_migrator().run(&write).await?;
                // Readers cannot write: a write that forgot the writer fails loudly. Not
                // pinged when taken from the pool (a file cannot hang up; the ping is one
                // more hand-over to the connection's thread on every read).
                let options = options.pragma("query_only", "ON");
                let read = SqlitePoolOptions::new()
                    .max_connections(max)
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options.clone())
                    .await?;
                let orchestrator = SqlitePoolOptions::new()
                    .max_connections(orchestrator_max)
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_lazy_with(options);
                (
                    Pool::Sqlite {
                        read,
                        write: write.clone(),
                    },
                    Pool::Sqlite {
                        read: orchestrator,
                        write,
                    },
                )
            };
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                orchestrator,
                cipher,
                write_lock: Arc::new(db::Writer::default()),
                grouped: grouped::Queue::default(),
            }),
            lane: Lane::Api,
        })
    }

    /// This store, through the orchestrator's own connections
    /// ([`StoreConfig::orchestrator_connections`]): the handle the orchestrator works
    /// with, so its reads (and on PostgreSQL its writes) never queue for a connection
    /// behind API requests. SQLite's writer stays one, shared.
    pub fn for_orchestrator(&self) -> Store {
        Store {
            inner: self.inner.clone(),
            lane: Lane::Orchestrator,
        }
    }

    /// The pools this handle uses.
    pub(crate) fn pool(&self) -> &Pool {
        match self.lane {
            Lane::Api => &self.inner.pool,
            Lane::Orchestrator => &self.inner.orchestrator,
        }
    }

    /// SQLite's writer for an urgent write of a single statement (see `db::Writer`).
    pub(crate) async fn sqlite_writer_urgent(&self) -> Option<db::WriterGuard> {
        match self.inner.pool {
            Pool::Sqlite { .. } => Some(self.inner.write_lock.lock_urgent().await),
            Pool::Postgres(_) => None,
        }
    }

    /// On SQLite, the in-process writer lock, for a write of a single statement (run in
    /// `db_write!`, on the writer connection): writers then queue in order instead of
    /// polling in SQLite's busy handler. `None` on PostgreSQL. Never held across another
    /// write (it is not reentrant).
    pub(crate) async fn sqlite_writer(&self) -> Option<db::WriterGuard> {
        match self.inner.pool {
            Pool::Sqlite { .. } => Some(self.inner.write_lock.lock().await),
            Pool::Postgres(_) => None,
        }
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        match self.inner.pool {
            Pool::Sqlite { .. } => Backend::Sqlite,
            Pool::Postgres(_) => Backend::Postgres,
        }
    }

    /// Whether the database answers (`SELECT 1`), for health checks.
    pub async fn ping(&self) -> Result<()> {
        match self.pool() {
            Pool::Sqlite { read: p, .. } => {
                sqlx::query("SELECT 1").execute(p).await?;
            }
            Pool::Postgres(p) => {
                sqlx::query("SELECT 1").execute(p).await?;
            }
        }
        Ok(())
    }

    /// How SQLite's one writer has been used so far (for benchmarks and metrics).
    pub fn write_stats(&self) -> WriteStats {
        self.inner.write_lock.stats()
    }

    /// The read pool's open connections and how many of them are idle, for metrics
    /// (this handle's: the orchestrator's pool for [`for_orchestrator`](Self::for_orchestrator)).
    pub fn pool_connections(&self) -> (u32, usize) {
        match self.pool() {
            Pool::Sqlite { read: p, .. } => (p.size(), p.num_idle()),
            Pool::Postgres(p) => (p.size(), p.num_idle()),
        }
    }

    /// Closes every connection (waits for those in use). Clones of this store fail
    /// afterwards.
    pub async fn close(&self) {
        match &self.inner.pool {
            Pool::Sqlite { read, write } => {
                read.close().await;
                write.close().await;
            }
            Pool::Postgres(p) => p.close().await,
        }
        match &self.inner.orchestrator {
            Pool::Sqlite { read, .. } => read.close().await,
            Pool::Postgres(p) => p.close().await,
        }
    }
}

#[cfg(test)]
mod tidy {
    /// Every module says its role first; the crate root lists its layout.
    #[test]
    fn every_module_opens_with_a_doc_comment() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut count = 0;
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                assert!(
                    text.starts_with("//!"),
                    "{} lacks a //! header",
                    path.display()
                );
                count += 1;
            }
        }
        assert!(count >= 8);
        assert!(
            std::fs::read_to_string(src.join("lib.rs"))
                .unwrap()
                .contains("# Layout")
        );
    }
}
