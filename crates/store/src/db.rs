//! The two backends behind one face: the `Pool` enum, the `db!` macro that writes a
//! query body once and compiles it for each backend, the `Get` trait that reads a row
//! of either backend, write transactions, embedded migrations, and the column
//! conversions (unix milliseconds, text ids).

use std::fmt::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{PgPool, Postgres, Row, SqlSafeStr, Sqlite, SqlitePool, Transaction};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::error::{Result, StoreError};

/// The connection pools of the backend in use.
pub(crate) enum Pool {
    /// `read` serves reads (its connections are `query_only`); `write` is SQLite's
    /// writer's (two connections, one in use at a time), used only by whoever holds the
    /// writer lock (`Writer`), so a writer never queues for a connection behind readers.
    Sqlite {
        read: SqlitePool,
        write: SqlitePool,
    },
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's pool for reads and `$pg` to whether
/// it is PostgreSQL. The body is written once and compiled once per backend, so row
/// types, executors and transactions are each backend's own.
macro_rules! db {
    ($store:expr, |$pool:ident, $pg:ident| $body:block) => {
        match $store.pool() {
            $crate::db::Pool::Sqlite { read: $pool, .. } => {
                #[allow(unused_variables)]
                let $pg = false;
                $body
            }
            $crate::db::Pool::Postgres($pool) => {
                #[allow(unused_variables)]
                let $pg = true;
                $body
            }
        }
    };
}
pub(crate) use db;

/// [`db!`] for a write: on SQLite `$pool` is the writer connection, which the caller
/// must use only while it holds the writer lock (`sqlite_writer()` for a statement,
/// `begin_write`/`begin_urgent` for a transaction, which take it themselves); on
/// PostgreSQL the same pool as reads.
macro_rules! db_write {
    ($store:expr, |$pool:ident, $pg:ident| $body:block) => {
        match $store.pool() {
            $crate::db::Pool::Sqlite { write: $pool, .. } => {
                #[allow(unused_variables)]
                let $pg = false;
                $body
            }
            $crate::db::Pool::Postgres($pool) => {
                #[allow(unused_variables)]
                let $pg = true;
                $body
            }
        }
    };
}
pub(crate) use db_write;

/// SQLite's one writer: an in-process lock every write takes, and counters of its use
/// (how many writes, how long they queued for it and held it).
///
/// Two classes of writes: *urgent* ones (the orchestrator's leases and the ends of its
/// jobs, the log) queue for the writer directly; the others first pass `gate` one at a
/// time, so at most one of them is ever queued ahead of an urgent one. A burst of API
/// writes then delays a job's end by one write, not by the whole burst: work under way
/// finishes before new work is let in, and each new grant's job starts as soon as its
/// own creation is written.
#[derive(Default)]
pub(crate) struct Writer {
    lock: Arc<Mutex<()>>,
    gate: Mutex<()>,
    writes: AtomicU64,
    waited_ns: AtomicU64,
    held_ns: AtomicU64,
}

/// The writer, held until dropped.
pub(crate) struct WriterGuard {
    _guard: OwnedMutexGuard<()>,
    since: Instant,
    writer: Arc<Writer>,
}

impl Writer {
    /// The writer, for an ordinary write.
    pub(crate) async fn lock(self: &Arc<Self>) -> WriterGuard {
        let asked = Instant::now();
        let guard = {
            let _turn = self.gate.lock().await;
            self.lock.clone().lock_owned().await
        };
        self.held_from(asked, guard)
    }

    /// The writer, for an urgent write (queued ahead of all but one ordinary write).
    pub(crate) async fn lock_urgent(self: &Arc<Self>) -> WriterGuard {
        let asked = Instant::now();
        let guard = self.lock.clone().lock_owned().await;
        self.held_from(asked, guard)
    }

    fn held_from(self: &Arc<Self>, asked: Instant, guard: OwnedMutexGuard<()>) -> WriterGuard {
        let since = Instant::now();
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.waited_ns
            .fetch_add(nanos(since - asked), Ordering::Relaxed);
        WriterGuard {
            _guard: guard,
            since,
            writer: self.clone(),
        }
    }

    pub(crate) fn stats(&self) -> WriteStats {
        WriteStats {
            writes: self.writes.load(Ordering::Relaxed),
            waited: Duration::from_nanos(self.waited_ns.load(Ordering::Relaxed)),
            held: Duration::from_nanos(self.held_ns.load(Ordering::Relaxed)),
        }
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        self.writer
            .held_ns
            .fetch_add(nanos(self.since.elapsed()), Ordering::Relaxed);
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// How SQLite's writer has been used since the store was opened (all zero on
/// PostgreSQL, whose writers do not queue in the process).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Write transactions and single writing statements.
    pub writes: u64,
    /// Time spent queueing for the writer, summed over writes.
    pub waited: Duration,
    /// Time the writer was held, summed over writes.
    pub held: Duration,
}

/// A write transaction and, on SQLite, the in-process writer lock it holds.
pub(crate) type WriteTx<DB> = (Option<WriterGuard>, Transaction<'static, DB>);

/// A pool that can start a transaction that will write.
pub(crate) trait WritePool {
    type Db: sqlx::Database;
    /// Starts a write transaction. SQLite: `BEGIN IMMEDIATE` under an in-process lock, so
    /// writers queue here instead of failing on a stale read snapshot or spinning in the
    /// busy handler. The guard must live as long as the transaction.
    fn begin_write(
        &self,
        lock: &Arc<Writer>,
    ) -> impl Future<Output = Result<WriteTx<Self::Db>>> + Send;

    /// [`begin_write`](Self::begin_write) for an urgent write (see [`Writer`]).
    fn begin_urgent(
        &self,
        lock: &Arc<Writer>,
    ) -> impl Future<Output = Result<WriteTx<Self::Db>>> + Send;
}

impl WritePool for SqlitePool {
    type Db = Sqlite;
    async fn begin_write(&self, lock: &Arc<Writer>) -> Result<WriteTx<Sqlite>> {
        let guard = lock.lock().await;
        let tx = self.begin_with("BEGIN IMMEDIATE").await?;
        Ok((Some(guard), tx))
    }

    async fn begin_urgent(&self, lock: &Arc<Writer>) -> Result<WriteTx<Sqlite>> {
        let guard = lock.lock_urgent().await;
        let tx = self.begin_with("BEGIN IMMEDIATE").await?;
        Ok((Some(guard), tx))
    }
}

impl WritePool for PgPool {
    type Db = Postgres;
    async fn begin_write(&self, _lock: &Arc<Writer>) -> Result<WriteTx<Postgres>> {
        Ok((None, self.begin().await?))
    }

    async fn begin_urgent(&self, _lock: &Arc<Writer>) -> Result<WriteTx<Postgres>> {
        Ok((None, self.begin().await?))
    }
}

/// Reads columns of a row of either backend, mapping bad values to `Corrupt`.
pub(crate) trait Get {
    fn text(&self, col: &str) -> Result<String>;
    fn opt_text(&self, col: &str) -> Result<Option<String>>;
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    fn flag(&self, col: &str) -> Result<bool>;
    fn bytes(&self, col: &str) -> Result<Vec<u8>>;

    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        from_ms(col, self.int(col)?)
    }

    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        self.opt_int(col)?.map(|ms| from_ms(col, ms)).transpose()
    }

    /// Text parsed with `FromStr` (ids, enums, addresses).
    fn parse<T: FromStr>(&self, col: &str) -> Result<T> {
        let text = self.text(col)?;
        text.parse()
            .map_err(|_| StoreError::Corrupt(format!("{col}: unreadable value {text:?}")))
    }

    fn opt_parse<T: FromStr>(&self, col: &str) -> Result<Option<T>> {
        match self.opt_text(col)? {
            None => Ok(None),
            Some(text) => text
                .parse()
                .map(Some)
                .map_err(|_| StoreError::Corrupt(format!("{col}: unreadable value {text:?}"))),
        }
    }

    fn port(&self, col: &str) -> Result<u16> {
        let n = self.int(col)?;
        u16::try_from(n).map_err(|_| StoreError::Corrupt(format!("{col}: {n} is not a port")))
    }

    fn count(&self, col: &str) -> Result<u32> {
        let n = self.int(col)?;
        u32::try_from(n).map_err(|_| StoreError::Corrupt(format!("{col}: {n} out of range")))
    }

    fn json(&self, col: &str) -> Result<serde_json::Value> {
        serde_json::from_str(&self.text(col)?)
            .map_err(|e| StoreError::Corrupt(format!("{col}: {e}")))
    }
}

macro_rules! impl_get {
    ($row:ty) => {
        impl Get for $row {
            fn text(&self, col: &str) -> Result<String> {
                Ok(self.try_get(col)?)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>> {
                Ok(self.try_get(col)?)
            }
            fn int(&self, col: &str) -> Result<i64> {
                Ok(self.try_get(col)?)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>> {
                Ok(self.try_get(col)?)
            }
            fn flag(&self, col: &str) -> Result<bool> {
                Ok(self.try_get(col)?)
            }
            fn bytes(&self, col: &str) -> Result<Vec<u8>> {
                Ok(self.try_get(col)?)
            }
        }
    };
}
impl_get!(SqliteRow);
impl_get!(PgRow);

/// The parameters of a `VALUES` list of `rows` rows of `width` each: `($1, $2), ($3, $4)`
/// on PostgreSQL, `(?, ?), (?, ?)` on SQLite. (sqlx looks each numbered SQLite
/// parameter up by its name, which costs time in the number of parameters: a list of
/// a thousand numbered ones is slow to bind.)
pub(crate) fn values_list(rows: usize, width: usize, pg: bool) -> String {
    let mut sql = String::with_capacity(rows * width * if pg { 6 } else { 3 });
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for col in 0..width {
            if col > 0 {
                sql.push_str(", ");
            }
            if pg {
                let _ = write!(sql, "${}", row * width + col + 1);
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

/// A time as stored: unix milliseconds.
pub(crate) fn ms(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

pub(crate) fn opt_ms(at: Option<DateTime<Utc>>) -> Option<i64> {
    at.map(ms)
}

fn from_ms(col: &str, ms: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp_millis(ms)
        .ok_or_else(|| StoreError::Corrupt(format!("{col}: {ms} is not a time")))
}

/// The current time truncated to what the store keeps (milliseconds).
pub(crate) fn now() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now)
}

/// A time truncated to milliseconds, so what is returned equals what is read back.
pub(crate) fn trunc(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(at.timestamp_millis()).unwrap_or(at)
}

fn migration(version: i64, description: &'static str, sql: &'static str) -> Migration {
    Migration::new(
        version,
        description.into(),
        MigrationType::Simple,
        sql.into_sql_str(),
        false,
    )
}

/// A migration that opens its own transaction (SQLite's table rebuilds, which need
/// foreign keys off, and that pragma does nothing inside a transaction).
fn migration_outside_transaction(
    version: i64,
    description: &'static str,
    sql: &'static str,
) -> Migration {
    Migration::new(
        version,
        description.into(),
        MigrationType::Simple,
        sql.into_sql_str(),
        true,
    )
}

/// SQLite's migrations, embedded from `migrations/sqlite`.
pub(crate) fn sqlite_migrator() -> Migrator {
    Migrator::with_migrations(vec![
        migration(
            1,
            "init",
            include_str!("../migrations/sqlite/0001_init.sql"),
        ),
        migration(
            2,
            "audit append only",
            include_str!("../migrations/sqlite/0002_audit_append_only.sql"),
        ),
        migration(
            3,
            "grant lists",
            include_str!("../migrations/sqlite/0003_grant_lists.sql"),
        ),
        migration(
            4,
            "job leasing",
            include_str!("../migrations/sqlite/0004_job_leasing.sql"),
        ),
        // 10: the portal's sessions (numbers 5-9 were left free while branches ran side by side; gaps are harmless).
        migration(
            10,
            "sessions",
            include_str!("../migrations/sqlite/0010_sessions.sql"),
        ),
        // 20: connections through the gateway (a number far from other branches' next ones).
        migration(
            20,
            "connections",
            include_str!("../migrations/sqlite/0020_connections.sql"),
        ),
        // 30: router facts (numbers 20 and 40 are the gateway's and the terminal's).
        migration(
            30,
            "router facts",
            include_str!("../migrations/sqlite/0030_router_facts.sql"),
        ),
        // 40: the terminal's sessions and recordings (a number clear of other branches).
        migration(
            40,
            "terminal recordings",
            include_str!("../migrations/sqlite/0040_terminal_recordings.sql"),
        ),
        // 50: which transient access the portal's Terminal made.
        migration(
            50,
            "terminal grants",
            include_str!("../migrations/sqlite/0050_terminal_grants.sql"),
        ),
        // 60: a router's unfinished jobs, for the claim.
        migration(
            60,
            "open jobs index",
            include_str!("../migrations/sqlite/0060_open_jobs_index.sql"),
        ),
        // 70: which gateway run owns each connection, and the runs alive.
        migration(
            70,
            "connection owners",
            include_str!("../migrations/sqlite/0070_connection_owners.sql"),
        ),
        // 80: live grants by their end, for the expiry timer.
        migration(
            80,
            "live expiry index",
            include_str!("../migrations/sqlite/0080_live_expiry_index.sql"),
        ),
        // 95: API-SSL and its pinned certificate (a number clear of other branches).
        migration(
            95,
            "router api tls",
            include_str!("../migrations/sqlite/0095_router_api_tls.sql"),
        ),
        // 100: usernames unique per organisation (a number clear of other branches').
        migration_outside_transaction(
            100,
            "usernames per organisation",
            include_str!("../migrations/sqlite/0100_usernames_per_organisation.sql"),
        ),
        // 130: one-time WinBox tickets (a number clear of other branches' next ones).
        migration(
            130,
            "winbox tickets",
            include_str!("../migrations/sqlite/0130_winbox_tickets.sql"),
        ),
        // 140: the management tunnel (routers' reach and keys, regions' keys).
        migration(
            140,
            "tunnel",
            include_str!("../migrations/sqlite/0140_tunnel.sql"),
        ),
        // 150: enrolment tokens and routers' serial numbers (onboarding).
        migration(
            150,
            "enrollment tokens",
            include_str!("../migrations/sqlite/0150_enrollment_tokens.sql"),
        ),
        // 160: share links for a grant's credentials (a number reserved for them).
        migration(
            160,
            "grant shares",
            include_str!("../migrations/sqlite/0160_grant_shares.sql"),
        ),
        // 170: where the gateway last saw each tunnelled router, to resume it after a restart.
        migration(
            170,
            "tunnel endpoints",
            include_str!("../migrations/sqlite/0170_tunnel_endpoints.sql"),
        ),
        // 180: regional gateways with their join tokens, and the control channel's CA.
        migration(
            180,
            "gateways",
            include_str!("../migrations/sqlite/0180_gateways.sql"),
        ),
    ])
}

/// PostgreSQL's migrations, embedded from `migrations/postgres`.
pub(crate) fn postgres_migrator() -> Migrator {
    Migrator::with_migrations(vec![
        migration(
            1,
            "init",
            include_str!("../migrations/postgres/0001_init.sql"),
        ),
        migration(
            2,
            "audit append only",
            include_str!("../migrations/postgres/0002_audit_append_only.sql"),
        ),
        migration(
            3,
            "grant lists",
            include_str!("../migrations/postgres/0003_grant_lists.sql"),
        ),
        migration(
            4,
            "job leasing",
            include_str!("../migrations/postgres/0004_job_leasing.sql"),
        ),
        // 10: the portal's sessions (numbers 5-9 were left free while branches ran side by side; gaps are harmless).
        migration(
            10,
            "sessions",
            include_str!("../migrations/postgres/0010_sessions.sql"),
        ),
        // 20: connections through the gateway (a number far from other branches' next ones).
        migration(
            20,
            "connections",
            include_str!("../migrations/postgres/0020_connections.sql"),
        ),
        // 30: router facts (numbers 20 and 40 are the gateway's and the terminal's).
        migration(
            30,
            "router facts",
            include_str!("../migrations/postgres/0030_router_facts.sql"),
        ),
        // 40: the terminal's sessions and recordings (a number clear of other branches).
        migration(
            40,
            "terminal recordings",
            include_str!("../migrations/postgres/0040_terminal_recordings.sql"),
        ),
        // 50: which transient access the portal's Terminal made.
        migration(
            50,
            "terminal grants",
            include_str!("../migrations/postgres/0050_terminal_grants.sql"),
        ),
        // 60: a router's unfinished jobs, for the claim.
        migration(
            60,
            "open jobs index",
            include_str!("../migrations/postgres/0060_open_jobs_index.sql"),
        ),
        // 70: which gateway run owns each connection, and the runs alive.
        migration(
            70,
            "connection owners",
            include_str!("../migrations/postgres/0070_connection_owners.sql"),
        ),
        // 80: live grants by their end, for the expiry timer.
        migration(
            80,
            "live expiry index",
            include_str!("../migrations/postgres/0080_live_expiry_index.sql"),
        ),
        // 95: API-SSL and its pinned certificate (a number clear of other branches).
        migration(
            95,
            "router api tls",
            include_str!("../migrations/postgres/0095_router_api_tls.sql"),
        ),
        // 100: usernames unique per organisation.
        migration(
            100,
            "usernames per organisation",
            include_str!("../migrations/postgres/0100_usernames_per_organisation.sql"),
        ),
        // 130: one-time WinBox tickets (a number clear of other branches' next ones).
        migration(
            130,
            "winbox tickets",
            include_str!("../migrations/postgres/0130_winbox_tickets.sql"),
        ),
        // 140: the management tunnel (routers' reach and keys, regions' keys).
        migration(
            140,
            "tunnel",
            include_str!("../migrations/postgres/0140_tunnel.sql"),
        ),
        // 150: enrolment tokens and routers' serial numbers (onboarding).
        migration(
            150,
            "enrollment tokens",
            include_str!("../migrations/postgres/0150_enrollment_tokens.sql"),
        ),
        // 160: share links for a grant's credentials (a number reserved for them).
        migration(
            160,
            "grant shares",
            include_str!("../migrations/postgres/0160_grant_shares.sql"),
        ),
        // 170: where the gateway last saw each tunnelled router, to resume it after a restart.
        migration(
            170,
            "tunnel endpoints",
            include_str!("../migrations/postgres/0170_tunnel_endpoints.sql"),
        ),
        // 180: regional gateways with their join tokens, and the control channel's CA.
        migration(
            180,
            "gateways",
            include_str!("../migrations/postgres/0180_gateways.sql"),
        ),
    ])
}
