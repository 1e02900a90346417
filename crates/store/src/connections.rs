//! Connections through the gateway: one row per forwarded connection of a grant, written
//! when it opens (`ended_at` empty while it is live) and completed when it ends with the
//! bytes each way and how it ended. The gateway's events feed it; the API lists it.
//!
//! Each row names the gateway run that recorded it (one per `postern server` process),
//! and `gateway_runs` holds the runs alive with their last heartbeat, so a server ends
//! only the live rows of runs that are gone (`end_orphaned_connections`), never those
//! of another server on the same database.

use std::net::SocketAddr;

use chrono::{DateTime, Utc};
use domain::{ConnectionRecordId, GatewayRunId, OrgId, RouterId};

use crate::Store;
use crate::db::{Get, WritePool as _, db, db_write, ms, opt_ms, trunc};
use crate::error::{Result, StoreError};

/// Which kind of grant a connection belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantKind {
    Access,
    Forward,
}

impl GrantKind {
    /// `access` or `forward`, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            GrantKind::Access => "access",
            GrantKind::Forward => "forward",
        }
    }
}

/// A connection as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub id: ConnectionRecordId,
    pub org_id: OrgId,
    pub router_id: RouterId,
    pub grant_id: String,
    pub source: SocketAddr,
    pub started_at: DateTime<Utc>,
    /// `None` while the connection is live.
    pub ended_at: Option<DateTime<Utc>>,
    /// Client → target.
    pub bytes_from_client: u64,
    /// Target → client.
    pub bytes_to_client: u64,
    /// How it ended, in words (`finished`, `revoked`, `expired`, …).
    pub end_reason: Option<String>,
}

/// Input of `record_connection`: a connection that just opened, or (when its opening was
/// never recorded) one already over.
#[derive(Debug, Clone)]
pub struct NewConnection {
    pub id: ConnectionRecordId,
    /// The gateway run that forwards it.
    pub gateway_run: GatewayRunId,
    pub org_id: OrgId,
    pub router_id: RouterId,
    pub grant_kind: GrantKind,
    pub grant_id: String,
    pub source: SocketAddr,
    pub started_at: DateTime<Utc>,
    pub end: Option<ConnectionEnd>,
}

/// One run of a gateway, as registered: who it is and when it last said it was alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRun {
    pub id: GatewayRunId,
    /// Which process runs it, in the gateway's own words (opaque to the store).
    pub process: String,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
}

/// How a connection ended.
#[derive(Debug, Clone)]
pub struct ConnectionEnd {
    pub at: DateTime<Utc>,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub reason: String,
}

fn connection_from(r: &impl Get) -> Result<Connection> {
    let count = |col: &str| -> Result<u64> {
        let n = r.int(col)?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("{col} is negative: {n}")))
    };
    Ok(Connection {
        id: r.parse("id")?,
        org_id: r.parse("org_id")?,
        router_id: r.parse("router_id")?,
        grant_id: r.text("grant_id")?,
        source: r.parse("source_address")?,
        started_at: r.time("started_at")?,
        ended_at: r.opt_time("ended_at")?,
        bytes_from_client: count("bytes_from_client")?,
        bytes_to_client: count("bytes_to_client")?,
        end_reason: r.opt_text("end_reason")?,
    })
}

/// Byte counts as the database keeps them (BIGINT), saturating.
fn bigint(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// Records a connection (live, or already ended when `end` is given): one row of
    /// [`record_connections`](Self::record_connections).
    pub async fn record_connection(&self, new: NewConnection) -> Result<Connection> {
        self.record_connections(std::slice::from_ref(&new)).await?;
        let end = new.end.as_ref();
        Ok(Connection {
            id: new.id,
            org_id: new.org_id,
            router_id: new.router_id,
            grant_id: new.grant_id,
            source: new.source,
            started_at: trunc(new.started_at),
            ended_at: end.map(|e| trunc(e.at)),
            bytes_from_client: end.map_or(0, |e| e.bytes_from_client),
            bytes_to_client: end.map_or(0, |e| e.bytes_to_client),
            end_reason: end.map(|e| e.reason.clone()),
        })
    }

    /// Writes several connections in one transaction, in order: each is inserted, or,
    /// if its row exists and it carries an end, completed with that end (an opening
    /// the caller never wrote is no obstacle). The gateway's recorder writes what it
    /// has queued this way, one writer turn for many events.
    pub async fn record_connections(&self, rows: &[NewConnection]) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        db_write!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
            for new in rows {
                let end = new.end.as_ref();
                sqlx::query(
                    "INSERT INTO connections (id, org_id, router_id, grant_kind, grant_id, source_address, \
                     started_at, ended_at, bytes_from_client, bytes_to_client, end_reason, gateway_run_id) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
                     ON CONFLICT (id) DO UPDATE SET ended_at = excluded.ended_at, \
                     bytes_from_client = excluded.bytes_from_client, \
                     bytes_to_client = excluded.bytes_to_client, end_reason = excluded.end_reason \
                     WHERE excluded.ended_at IS NOT NULL",
                )
                .bind(new.id.to_string())
                .bind(new.org_id.to_string())
                .bind(new.router_id.to_string())
                .bind(new.grant_kind.as_str())
                .bind(&new.grant_id)
                .bind(new.source.to_string())
                .bind(ms(new.started_at))
                .bind(opt_ms(end.map(|e| e.at)))
                .bind(bigint(end.map_or(0, |e| e.bytes_from_client)))
                .bind(bigint(end.map_or(0, |e| e.bytes_to_client)))
                .bind(end.map(|e| e.reason.clone()))
                .bind(new.gateway_run.to_string())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Completes a recorded connection; `NotFound` if there is no such row.
    pub async fn end_connection(&self, id: ConnectionRecordId, end: ConnectionEnd) -> Result<()> {
        let _writer = self.sqlite_writer().await;
        let changed = db_write!(self, |p, pg| {
            sqlx::query(
                "UPDATE connections SET ended_at = $2, bytes_from_client = $3, bytes_to_client = $4, \
                 end_reason = $5 WHERE id = $1",
            )
            .bind(id.to_string())
            .bind(ms(end.at))
            .bind(bigint(end.bytes_from_client))
            .bind(bigint(end.bytes_to_client))
            .bind(&end.reason)
            .execute(p)
            .await?
            .rows_affected()
        });
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Ends the connections of one grant that `run` still records as live, as of `at`
    /// with `reason` (the grant's listener closed: none of them can still be open).
    /// Returns how many.
    pub async fn end_grant_connections(
        &self,
        run: GatewayRunId,
        kind: GrantKind,
        grant_id: &str,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<u64> {
        let _writer = self.sqlite_writer().await;
        Ok(db_write!(self, |p, pg| {
            sqlx::query(
                "UPDATE connections SET ended_at = $1, end_reason = $2 \
                 WHERE ended_at IS NULL AND gateway_run_id = $3 AND grant_id = $4 AND grant_kind = $5",
            )
            .bind(ms(at))
            .bind(reason)
            .bind(run.to_string())
            .bind(grant_id)
            .bind(kind.as_str())
            .execute(p)
            .await?
            .rows_affected()
        }))
    }

    /// Ends every connection still recorded as live whose gateway run is not registered
    /// (it was forgotten as gone, or the row predates owners), as of `at` with
    /// `reason`. Returns how many.
    pub async fn end_orphaned_connections(&self, at: DateTime<Utc>, reason: &str) -> Result<u64> {
        let _writer = self.sqlite_writer().await;
        Ok(db_write!(self, |p, pg| {
            sqlx::query(
                "UPDATE connections SET ended_at = $1, end_reason = $2 WHERE ended_at IS NULL \
                 AND (gateway_run_id IS NULL \
                      OR gateway_run_id NOT IN (SELECT id FROM gateway_runs))",
            )
            .bind(ms(at))
            .bind(reason)
            .execute(p)
            .await?
            .rows_affected()
        }))
    }

    /// Registers a gateway run, or renews its heartbeat (`seen_at`) if it is registered.
    pub async fn record_gateway_run(&self, run: &GatewayRun) -> Result<()> {
        let _writer = self.sqlite_writer().await;
        db_write!(self, |p, pg| {
            sqlx::query(
                "INSERT INTO gateway_runs (id, process, started_at, seen_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
            )
            .bind(run.id.to_string())
            .bind(&run.process)
            .bind(ms(run.started_at))
            .bind(ms(run.seen_at))
            .execute(p)
            .await?;
        });
        Ok(())
    }

    /// Every registered gateway run.
    pub async fn list_gateway_runs(&self) -> Result<Vec<GatewayRun>> {
        db!(self, |p, pg| {
            let rows = sqlx::query(
                "SELECT id, process, started_at, seen_at FROM gateway_runs ORDER BY started_at",
            )
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(GatewayRun {
                        id: r.parse("id")?,
                        process: r.text("process")?,
                        started_at: r.time("started_at")?,
                        seen_at: r.time("seen_at")?,
                    })
                })
                .collect()
        })
    }

    /// Forgets a gateway run (it stopped, or is judged gone); its live rows become
    /// orphans for `end_orphaned_connections`. Returns whether it was registered.
    pub async fn forget_gateway_run(&self, id: GatewayRunId) -> Result<bool> {
        let _writer = self.sqlite_writer().await;
        let n = db_write!(self, |p, pg| {
            sqlx::query("DELETE FROM gateway_runs WHERE id = $1")
                .bind(id.to_string())
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// The connections of one grant of `org`'s router, newest first, at most `limit`.
    pub async fn list_connections(
        &self,
        org: OrgId,
        router_id: RouterId,
        kind: GrantKind,
        grant_id: &str,
        limit: u32,
    ) -> Result<Vec<Connection>> {
        db!(self, |p, pg| {
            let rows = sqlx::query(
                "SELECT id, org_id, router_id, grant_id, source_address, started_at, ended_at, \
                 bytes_from_client, bytes_to_client, end_reason FROM connections \
                 WHERE grant_id = $1 AND org_id = $2 AND router_id = $3 AND grant_kind = $4 \
                 ORDER BY started_at DESC, id DESC LIMIT $5",
            )
            .bind(grant_id)
            .bind(org.to_string())
            .bind(router_id.to_string())
            .bind(kind.as_str())
            .bind(i64::from(limit))
            .fetch_all(p)
            .await?;
            rows.iter().map(connection_from).collect()
        })
    }
}
