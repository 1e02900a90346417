//! Job leasing for the orchestrator: claiming the next runnable job (at most one running
//! job per router, in creation order; `FOR UPDATE SKIP LOCKED` on PostgreSQL, the writer
//! lock on SQLite), lease renewal, finishing, superseding a grant's pending creation, and
//! the wake-up channel between processes (PostgreSQL `LISTEN`/`NOTIFY`).

use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::{JobId, RegionId, RouterId};
use sqlx::postgres::PgListener;

use crate::Store;
use crate::db::{Get, Pool, WritePool, db, ms};
use crate::error::{Result, StoreError};
use crate::records::{Job, Router};

/// The PostgreSQL channel a process notifies when it queued a job.
pub const JOBS_CHANNEL: &str = "postern_jobs";

/// How a leased job ends its attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Done for good.
    Completed,
    /// Given up; the reason is kept as `last_error`.
    Failed(String),
    /// Back to `pending` until `run_after`; the error is kept as `last_error`.
    Retry {
        run_after: DateTime<Utc>,
        error: String,
    },
}

/// A subscription to "a job was queued" from every process sharing a PostgreSQL store.
pub struct JobListener {
    listener: PgListener,
}

impl std::fmt::Debug for JobListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JobListener")
    }
}

impl JobListener {
    /// Waits for the next notification (several queued at once may arrive as several).
    /// After a lost connection sqlx reconnects and re-listens; the error is returned so
    /// the caller can poll once, since notifications sent meanwhile are lost.
    pub async fn recv(&mut self) -> Result<()> {
        self.listener.recv().await?;
        Ok(())
    }
}

/// The head of each router's queue that may run now: pending and due, or running with a
/// lapsed lease; and no earlier unfinished job of the same router.
const CLAIMABLE: &str = "FROM jobs j WHERE j.state IN ('pending', 'running') AND j.run_after <= $1 \
    AND (j.state = 'pending' OR j.lease_expires_at < $1) \
    AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.router_id = j.router_id \
        AND e.state IN ('pending', 'running') AND e.seq < j.seq) \
    ORDER BY j.run_after, j.seq LIMIT";

/// The same, for one router (`$2`): its head, if it may run now.
const CLAIMABLE_ON_ROUTER: &str = "FROM jobs j WHERE j.router_id = $2 \
    AND j.state IN ('pending', 'running') AND j.run_after <= $1 \
    AND (j.state = 'pending' OR j.lease_expires_at < $1) \
    AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.router_id = j.router_id \
        AND e.state IN ('pending', 'running') AND e.seq < j.seq) \
    ORDER BY j.seq LIMIT 1";

/// Leases the selected `$rows` (each with an `id` column) to `$owner` until `$until`
/// inside transaction `$tx`, appending `$intro`'s lines; evaluates to the leased jobs.
macro_rules! lease_rows {
    ($tx:ident, $rows:expr, $owner:expr, $until:expr, $now:expr, $intro:expr) => {{
        let rows = $rows;
        let owner: &str = $owner;
        let until: DateTime<Utc> = $until;
        let now: DateTime<Utc> = $now;
        let mut ids = Vec::with_capacity(rows.len());
            for row in rows {
                let id = row.text("id")?;
                let changed = sqlx::query(
                    "UPDATE jobs SET state = 'running', lease_owner = $2, lease_expires_at = $3, \
                     attempts = attempts + 1, started_at = COALESCE(started_at, $4) WHERE id = $1",
                )
                .bind(&id)
                .bind(owner)
                .bind(ms(until))
                .bind(ms(now))
                .execute(&mut *$tx)
                .await?
                .rows_affected();
                if changed != 1 {
                    continue;
                }
                let row = sqlx::query(
                    "SELECT id, org_id, router_id, kind, payload, state, attempts, max_attempts, \
                     run_after, lease_owner, lease_expires_at, created_at, started_at, finished_at, \
                     last_error FROM jobs WHERE id = $1",
                )
                .bind(&id)
                .fetch_one(&mut *$tx)
                .await?;
                let job = crate::jobs::job_from(&row)?;
                let lines = ($intro)(&job);
                if !lines.is_empty() {
                    let row = sqlx::query(
                        "SELECT COALESCE(MAX(seq), 0) AS seq FROM job_lines WHERE job_id = $1",
                    )
                    .bind(&id)
                    .fetch_one(&mut *$tx)
                    .await?;
                    let mut seq = row.int("seq")?;
                    for message in lines {
                        seq += 1;
                        sqlx::query(
                            "INSERT INTO job_lines (job_id, seq, at, message) VALUES ($1, $2, $3, $4)",
                        )
                        .bind(&id)
                        .bind(seq)
                        .bind(ms(now))
                        .bind(message)
                        .execute(&mut *$tx)
                        .await?;
                    }
                }
                ids.push(job);
            }
        ids
    }};
}

impl Store {
    /// Leases the next runnable job to `owner` until `now + lease`: state `running`, one
    /// more attempt. `None` when nothing may run now. Two workers (or processes) never
    /// hold the same job, and a router never has two running jobs.
    pub async fn claim_job(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
    ) -> Result<Option<Job>> {
        Ok(self
            .claim_jobs(owner, now, lease, 1, |_| Vec::new())
            .await?
            .into_iter()
            .next())
    }

    /// Like [`claim_job`](Self::claim_job) for up to `limit` jobs (each the head of a
    /// different router's queue) in one transaction, which also appends the log lines
    /// `intro` gives for each claimed job (so the start of an attempt is on record
    /// without a write of its own).
    pub async fn claim_jobs(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
        intro: impl Fn(&Job) -> Vec<String>,
    ) -> Result<Vec<Job>> {
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let ids = db!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
            let select = if pg {
                format!("SELECT j.id {CLAIMABLE} $2 FOR UPDATE OF j SKIP LOCKED")
            } else {
                format!("SELECT j.id {CLAIMABLE} $2")
            };
            let rows = sqlx::query(sqlx::AssertSqlSafe(select))
                .bind(ms(now))
                .bind(i64::from(limit.max(1)))
                .fetch_all(&mut *tx)
                .await?;
            let ids = lease_rows!(tx, rows, owner, until, now, &intro);
            tx.commit().await?;
            ids
        });
        Ok(ids)
    }

    /// Extends `owner`'s lease of a running job to `until`; false if the lease was lost
    /// (another worker took the job after it lapsed, or it finished).
    pub async fn renew_lease(&self, id: JobId, owner: &str, until: DateTime<Utc>) -> Result<bool> {
        let _writer = self.sqlite_writer().await;
        let changed = db!(self, |p, pg| {
            sqlx::query(
                "UPDATE jobs SET lease_expires_at = $3 WHERE id = $1 AND lease_owner = $2 \
                 AND state = 'running'",
            )
            .bind(id.to_string())
            .bind(owner)
            .bind(ms(until))
            .execute(p)
            .await?
            .rows_affected()
        });
        Ok(changed == 1)
    }

    /// Ends `owner`'s attempt at a running job; false (and nothing changed) if the
    /// lease was lost meanwhile.
    pub async fn finish_job(
        &self,
        id: JobId,
        owner: &str,
        now: DateTime<Utc>,
        outcome: JobOutcome,
    ) -> Result<bool> {
        self.finish_job_with_lines(id, owner, now, outcome, &[])
            .await
    }

    /// [`finish_job`](Self::finish_job) that also appends the attempt's remaining log
    /// lines in the same transaction (written even if the lease was lost: they tell
    /// what this worker did).
    pub async fn finish_job_with_lines(
        &self,
        id: JobId,
        owner: &str,
        now: DateTime<Utc>,
        outcome: JobOutcome,
        lines: &[(DateTime<Utc>, String)],
    ) -> Result<bool> {
        Ok(self
            .finish_job_inner(id, owner, now, outcome, lines, None)
            .await?
            .0)
    }

    /// [`finish_job_with_lines`](Self::finish_job_with_lines), then, in the same
    /// transaction, leases to `owner` the next job of the same router if it may run now
    /// (with `intro`'s lines): a worker goes on with a router's queue without another
    /// claim. The job is `None` when the lease was lost or nothing may run.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_job_and_claim_next(
        &self,
        id: JobId,
        router_id: RouterId,
        owner: &str,
        now: DateTime<Utc>,
        outcome: JobOutcome,
        lines: &[(DateTime<Utc>, String)],
        lease: Duration,
        intro: &(dyn Fn(&Job) -> Vec<String> + Send + Sync),
    ) -> Result<(bool, Option<Job>)> {
        self.finish_job_inner(
            id,
            owner,
            now,
            outcome,
            lines,
            Some((router_id, lease, intro)),
        )
        .await
    }

    #[allow(clippy::type_complexity)]
    async fn finish_job_inner(
        &self,
        id: JobId,
        owner: &str,
        now: DateTime<Utc>,
        outcome: JobOutcome,
        lines: &[(DateTime<Utc>, String)],
        next: Option<(
            RouterId,
            Duration,
            &(dyn Fn(&Job) -> Vec<String> + Send + Sync),
        )>,
    ) -> Result<(bool, Option<Job>)> {
        let (state, run_after, finished, error) = match outcome {
            JobOutcome::Completed => ("completed", None, Some(ms(now)), None),
            JobOutcome::Failed(e) => ("failed", None, Some(ms(now)), Some(e)),
            JobOutcome::Retry { run_after, error } => {
                ("pending", Some(ms(run_after)), None, Some(error))
            }
        };
        let changed = db!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
            if !lines.is_empty() {
                let row = sqlx::query(
                    "SELECT COALESCE(MAX(seq), 0) AS seq FROM job_lines WHERE job_id = $1",
                )
                .bind(id.to_string())
                .fetch_one(&mut *tx)
                .await?;
                let mut seq = row.int("seq")?;
                for (at, message) in lines {
                    seq += 1;
                    sqlx::query(
                        "INSERT INTO job_lines (job_id, seq, at, message) VALUES ($1, $2, $3, $4)",
                    )
                    .bind(id.to_string())
                    .bind(seq)
                    .bind(ms(*at))
                    .bind(message)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            let changed = sqlx::query(
                "UPDATE jobs SET state = $3, run_after = COALESCE($4, run_after), \
                 finished_at = $5, last_error = COALESCE($6, last_error), lease_owner = NULL, \
                 lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
            )
            .bind(id.to_string())
            .bind(owner)
            .bind(state)
            .bind(run_after)
            .bind(finished)
            .bind(error)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let mut claimed = None;
            if let (1, Some((router_id, lease, intro))) = (changed, next) {
                let until =
                    now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
                let select = if pg {
                    format!("SELECT j.id {CLAIMABLE_ON_ROUTER} FOR UPDATE OF j SKIP LOCKED")
                } else {
                    format!("SELECT j.id {CLAIMABLE_ON_ROUTER}")
                };
                let rows = sqlx::query(sqlx::AssertSqlSafe(select))
                    .bind(ms(now))
                    .bind(router_id.to_string())
                    .fetch_all(&mut *tx)
                    .await?;
                claimed = lease_rows!(tx, rows, owner, until, now, intro)
                    .into_iter()
                    .next();
            }
            tx.commit().await?;
            (changed, claimed)
        });
        Ok((changed.0 == 1, changed.1))
    }

    /// Completes the pending jobs of a grant whose kind ends with `kind_suffix` (e.g. a
    /// revoke supersedes a creation still waiting for an offline router), with `reason`
    /// as `last_error`. A running one is left to finish. Returns how many.
    pub async fn supersede_jobs(
        &self,
        grant_id: &str,
        kind_suffix: &str,
        now: DateTime<Utc>,
        reason: &str,
    ) -> Result<u64> {
        let _writer = self.sqlite_writer().await;
        Ok(db!(self, |p, pg| {
            sqlx::query(
                "UPDATE jobs SET state = 'completed', finished_at = $3, last_error = $4 \
                 WHERE grant_id = $1 AND state = 'pending' AND kind LIKE $2",
            )
            .bind(grant_id)
            .bind(format!("%{kind_suffix}"))
            .bind(ms(now))
            .bind(reason)
            .execute(p)
            .await?
            .rows_affected()
        }))
    }

    /// Makes a router's pending jobs due now (it came back: no need to sit out the
    /// back-off). Returns how many.
    pub async fn hasten_jobs(&self, router_id: RouterId, now: DateTime<Utc>) -> Result<u64> {
        let _writer = self.sqlite_writer().await;
        Ok(db!(self, |p, pg| {
            sqlx::query(
                "UPDATE jobs SET run_after = $2 WHERE router_id = $1 AND state = 'pending' \
                 AND run_after > $2",
            )
            .bind(router_id.to_string())
            .bind(ms(now))
            .execute(p)
            .await?
            .rows_affected()
        }))
    }

    /// When the next job may become runnable: the earliest `run_after` of a pending job
    /// or lease end of a running one. `None` when there is no unfinished job.
    pub async fn next_job_at(&self) -> Result<Option<DateTime<Utc>>> {
        let at = db!(self, |p, pg| {
            let row = sqlx::query(
                "SELECT MIN(CASE WHEN state = 'pending' THEN run_after ELSE lease_expires_at END) AS at \
                 FROM jobs WHERE state IN ('pending', 'running')",
            )
            .fetch_one(p)
            .await?;
            row.opt_int("at")?
        });
        Ok(at.and_then(DateTime::from_timestamp_millis))
    }

    /// Whether a router has an unfinished job of `kind`.
    pub async fn has_open_job(&self, router_id: RouterId, kind: &str) -> Result<bool> {
        db!(self, |p, pg| {
            let row = sqlx::query(
                "SELECT id FROM jobs WHERE router_id = $1 AND kind = $2 \
                 AND state IN ('pending', 'running') LIMIT 1",
            )
            .bind(router_id.to_string())
            .bind(kind)
            .fetch_optional(p)
            .await?;
            Ok(row.is_some())
        })
    }

    /// Tells every process listening on this PostgreSQL store that a job was queued
    /// (`NOTIFY`); nothing on SQLite (one process per file).
    pub async fn notify_jobs(&self) -> Result<()> {
        if let Pool::Postgres(p) = &self.inner.pool {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(JOBS_CHANNEL)
                .execute(p)
                .await?;
        }
        Ok(())
    }

    /// A subscription to [`notify_jobs`](Self::notify_jobs) on PostgreSQL; `None` on
    /// SQLite.
    pub async fn job_listener(&self) -> Result<Option<JobListener>> {
        match &self.inner.pool {
            Pool::Postgres(p) => {
                let mut listener = PgListener::connect_with(p).await?;
                listener.listen(JOBS_CHANNEL).await?;
                Ok(Some(JobListener { listener }))
            }
            Pool::Sqlite(_) => Ok(None),
        }
    }

    /// Appends several lines to a job's log in one transaction, numbered after the
    /// existing ones. Returns the number of the last.
    pub async fn append_job_lines(
        &self,
        job_id: JobId,
        lines: &[(DateTime<Utc>, String)],
    ) -> Result<u32> {
        if lines.is_empty() {
            return Ok(0);
        }
        db!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
            let lock = if pg {
                "SELECT id FROM jobs WHERE id = $1 FOR UPDATE"
            } else {
                "SELECT id FROM jobs WHERE id = $1"
            };
            sqlx::query(lock)
                .bind(job_id.to_string())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
            let row =
                sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM job_lines WHERE job_id = $1")
                    .bind(job_id.to_string())
                    .fetch_one(&mut *tx)
                    .await?;
            let mut seq = row.int("seq")?;
            for (at, message) in lines {
                seq += 1;
                sqlx::query(
                    "INSERT INTO job_lines (job_id, seq, at, message) VALUES ($1, $2, $3, $4)",
                )
                .bind(job_id.to_string())
                .bind(seq)
                .bind(ms(*at))
                .bind(message)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            u32::try_from(seq).map_err(|_| StoreError::Corrupt(format!("job_lines.seq: {seq}")))
        })
    }

    /// Whether a grant has an unfinished job whose kind ends with `kind_suffix`.
    pub async fn has_open_grant_job(&self, grant_id: &str, kind_suffix: &str) -> Result<bool> {
        db!(self, |p, pg| {
            let row = sqlx::query(
                "SELECT id FROM jobs WHERE grant_id = $1 AND kind LIKE $2 \
                 AND state IN ('pending', 'running') LIMIT 1",
            )
            .bind(grant_id)
            .bind(format!("%{kind_suffix}"))
            .fetch_optional(p)
            .await?;
            Ok(row.is_some())
        })
    }

    /// Every router of every organisation (for the reconciler).
    pub async fn list_all_routers(&self) -> Result<Vec<Router>> {
        let ids = db!(self, |p, pg| {
            let rows = sqlx::query("SELECT id FROM routers ORDER BY id")
                .fetch_all(p)
                .await?;
            rows.iter()
                .map(|r| r.parse::<RouterId>("id"))
                .collect::<Result<Vec<_>>>()?
        });
        let mut routers = Vec::with_capacity(ids.len());
        for id in ids {
            match self.get_router_any_org(id).await {
                Ok(router) => routers.push(router),
                Err(StoreError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(routers)
    }

    /// The address routers see a region's gateway connections come from (what a
    /// temporary user's `address=` is limited to); `None` when not configured.
    pub async fn region_tunnel_source(&self, id: RegionId) -> Result<Option<IpAddr>> {
        let text = db!(self, |p, pg| {
            let row = sqlx::query("SELECT tunnel_source FROM regions WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(p)
                .await?
                .ok_or(StoreError::NotFound)?;
            row.opt_text("tunnel_source")?
        });
        text.map(|t| {
            t.parse()
                .map_err(|_| StoreError::Corrupt(format!("regions.tunnel_source: {t:?}")))
        })
        .transpose()
    }

    /// Sets (or clears) a region's tunnel source address.
    pub async fn set_region_tunnel_source(
        &self,
        id: RegionId,
        source: Option<IpAddr>,
    ) -> Result<()> {
        let _writer = self.sqlite_writer().await;
        let changed = db!(self, |p, pg| {
            sqlx::query("UPDATE regions SET tunnel_source = $2 WHERE id = $1")
                .bind(id.to_string())
                .bind(source.map(|s| s.to_string()))
                .execute(p)
                .await?
                .rows_affected()
        });
        if changed == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound)
        }
    }
}
