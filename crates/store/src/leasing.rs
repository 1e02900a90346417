//! Job leasing for the orchestrator: claiming the next runnable jobs (at most one running
//! job per router, in creation order; `FOR UPDATE SKIP LOCKED` on PostgreSQL, the writer
//! lock on SQLite) in the statement that selects them, lease renewal, ending attempts
//! (with their grant's move, their log lines and the lease of the router's next batch,
//! in one transaction), ending a grant in one transaction (closing, superseding its
//! pending creation, queuing its clean-up), log lines numbered by their writer, and the
//! wake-up channel between processes (PostgreSQL `LISTEN`/`NOTIFY`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::{GrantStatus, JobId, OrgId, RegionId, RouterId};
use sqlx::postgres::PgListener;

use crate::Store;
use crate::db::{Get, Pool, WritePool, db, db_write, ms};
use crate::error::{Result, StoreError};
use crate::grants::move_grant;
use crate::grouped::Write;
use crate::records::{Job, NewAudit, NewJob, Router};

/// The PostgreSQL channel a process notifies when it queued a job.
pub const JOBS_CHANNEL: &str = "postern_jobs";
/// The `NOTIFY` channel of grant ends and new deadlines, for every process's gateway.
pub const GRANTS_CHANNEL: &str = "postern_grants";

/// How a leased job ends its attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    /// Done for good.
    Completed,
    /// Given up; the reason is kept as `last_error`.
    Failed(String),
    /// Stopped, not to be retried: the router refused a command as unknown or invalid
    /// (its words kept as `last_error`).
    Stuck(String),
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

/// A subscription to [`Store::notify_grants`]: what every process sharing a PostgreSQL
/// store said about its grants' ends and deadlines.
pub struct GrantListener {
    listener: PgListener,
}

impl std::fmt::Debug for GrantListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GrantListener")
    }
}

impl GrantListener {
    /// The next notification's payload. After a lost connection sqlx reconnects and
    /// re-listens; the error is returned, since notifications sent meanwhile are lost.
    pub async fn recv(&mut self) -> Result<String> {
        let n = self.listener.recv().await?;
        Ok(n.payload().to_owned())
    }
}

/// The head of each router's queue that may run now: pending and due, or running with a
/// lapsed lease; and no earlier unfinished job of the same router.
const CLAIMABLE: &str = "FROM jobs j WHERE j.state IN ('pending', 'running') AND j.run_after <= $1 \
    AND (j.state = 'pending' OR j.lease_expires_at < $1) \
    AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.router_id = j.router_id \
        AND e.state IN ('pending', 'running') AND e.seq < j.seq) \
    ORDER BY j.run_after, j.seq LIMIT $2";

/// The jobs of one router (`$2`) that may run now, in order, as one batch: each one
/// due (pending, or running with a lapsed lease) and every earlier unfinished job of the
/// router in the batch too. Only taken by the worker that has just finished the
/// router's running job (whose row it holds), so no other worker holds any of them;
/// PostgreSQL waits for (rather than skips) a row another transaction is changing, so
/// a job is never taken before an earlier one.
const BATCH_ON_ROUTER: &str = "FROM jobs j WHERE j.router_id = $2 \
    AND j.state IN ('pending', 'running') AND j.run_after <= $1 \
    AND (j.state = 'pending' OR j.lease_expires_at < $1) \
    AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.router_id = j.router_id \
        AND e.state IN ('pending', 'running') AND e.seq < j.seq \
        AND NOT (e.run_after <= $1 AND (e.state = 'pending' OR e.lease_expires_at < $1))) \
    ORDER BY j.seq LIMIT 16";

/// Log lines per `INSERT` statement (4 parameters each, well under both backends' limits).
const LINES_PER_STATEMENT: usize = 200;

/// A line of a job's log with its number: whoever writes a job's lines numbers them
/// (a claim continues from the job's `log_seq`, a worker from its claim's), so lines
/// written by different transactions, in any order, still read in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub job_id: JobId,
    pub seq: u32,
    pub at: DateTime<Utc>,
    pub message: String,
}

pub use domain::GrantKey;

/// A life-cycle move of a grant made in the transaction that ends a job's attempt (so a
/// grant becomes `active` as its creation job completes, in one write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantMove {
    pub grant: GrantKey,
    pub from: Vec<GrantStatus>,
    pub to: GrantStatus,
    /// The job's log line saying how it went, written in the same transaction.
    pub line: Option<MoveLine>,
}

/// The log line of a [`GrantMove`]: `moved`, or `refused` followed by the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveLine {
    pub seq: u32,
    pub moved: String,
    pub refused: String,
}

/// The clean-up job [`Store::close_grant`] queues (`grant_id` is added to its payload).
#[derive(Debug, Clone)]
pub struct ClosingJob {
    pub kind: String,
    pub payload: serde_json::Value,
    pub max_attempts: u32,
}

/// How one attempt ended, to record.
#[derive(Debug, Clone)]
pub struct JobEnd {
    pub job: JobId,
    pub outcome: JobOutcome,
    /// The grant's move, made with it.
    pub grant: Option<GrantMove>,
    /// `None` for a job run under its own lease. `Some(started)` for one run without a
    /// lease of its own, behind a leased job of the same router (see
    /// [`Store::queued_behind`]): still pending in the database, its attempt is
    /// counted as its end is recorded. One no longer pending by then (a revoke
    /// superseded it meanwhile) is left as it is.
    pub behind: Option<DateTime<Utc>>,
}

/// How recording the end of attempts went.
#[derive(Debug)]
pub struct AttemptEnd {
    /// The leases still held and the ends are recorded; false: nothing changed (the
    /// lines were written all the same: they tell what this worker did).
    pub recorded: bool,
    /// Per end (when recorded), its grant's move when one was asked: the status it
    /// had, or why it could not move (it had changed meanwhile).
    pub grants: Vec<Option<std::result::Result<GrantStatus, String>>>,
    /// The router's next jobs, in order, leased to the same owner in the same
    /// transaction (the first with its opening lines written).
    pub next: Vec<Job>,
}

/// The lines that open an attempt of a job just leased.
pub type Intro<'a> = &'a (dyn Fn(&Job) -> Vec<String> + Send + Sync);

/// Log lines to write, asked for once the transaction holds the writer (so they are
/// taken as late as possible, and lines of other jobs can ride along).
pub type Lines<'a> = &'a (dyn Fn() -> Vec<LogLine> + Send + Sync);

/// The `INSERT` of `n` log lines (numbered by their writer; a line whose job is gone,
/// or whose number is taken, is skipped rather than failing the transaction).
fn lines_sql(n: usize, pg: bool) -> String {
    format!(
        "INSERT INTO job_lines (job_id, seq, at, message) \
         SELECT column1, column2, column3, column4 FROM (VALUES {}) AS v \
         WHERE EXISTS (SELECT 1 FROM jobs j WHERE j.id = v.column1) \
         ON CONFLICT (job_id, seq) DO NOTHING",
        crate::db::values_list(n, 4, pg)
    )
}

/// Inserts `$lines: &[LogLine]` in transaction `$tx`, a few hundred per statement.
macro_rules! insert_lines {
    ($tx:ident, $pg:ident, $lines:expr) => {{
        let lines: &[LogLine] = $lines;
        for chunk in lines.chunks(LINES_PER_STATEMENT) {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(lines_sql(chunk.len(), $pg)));
            for line in chunk {
                query = query
                    .bind(line.job_id.to_string())
                    .bind(i64::from(line.seq))
                    .bind(ms(line.at))
                    .bind(line.message.clone());
            }
            query.execute(&mut *$tx).await?;
        }
    }};
}

/// Leases the jobs `$select` (a claimable-jobs tail with `$1` now and `$2` a limit or
/// router) names to `$owner` until `$until` in one statement, inside transaction `$tx`;
/// a creation job's grant goes from `requested` to `provisioning` with it (skipped if
/// another transaction holds the grant: the worker then moves it itself). Evaluates to
/// the leased jobs, `log_seq` after their intro, and the lines `$intro` opens each
/// attempt with, for the caller to insert.
macro_rules! lease {
    ($tx:ident, $pg:ident, $select:expr, $pg_lock:expr, $bind2:expr, $owner:expr, $until:expr, $now:expr, $intro:expr, $first_only:expr) => {{
        let owner: &str = $owner;
        let until: DateTime<Utc> = $until;
        let now: DateTime<Utc> = $now;
        let sql = if $pg {
            format!(
                "WITH next AS MATERIALIZED (SELECT j.id {} {}) \
                 UPDATE jobs SET state = 'running', lease_owner = $3, lease_expires_at = $4, \
                 attempts = attempts + 1, started_at = COALESCE(started_at, $1) \
                 WHERE id IN (SELECT id FROM next) RETURNING {}, seq",
                $select,
                $pg_lock,
                crate::jobs::job_columns!()
            )
        } else {
            format!(
                "UPDATE jobs SET state = 'running', lease_owner = $3, lease_expires_at = $4, \
                 attempts = attempts + 1, started_at = COALESCE(started_at, $1) \
                 WHERE id IN (SELECT j.id {}) RETURNING {}, seq",
                $select,
                crate::jobs::job_columns!()
            )
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(ms(now))
            .bind($bind2)
            .bind(owner)
            .bind(ms(until))
            .fetch_all(&mut *$tx)
            .await?;
        let mut jobs = Vec::with_capacity(rows.len());
        let mut lines = Vec::new();
        let mut rows = rows
            .iter()
            .map(|row| Ok((row.int("seq")?, row)))
            .collect::<Result<Vec<_>>>()?;
        rows.sort_by_key(|(seq, _)| *seq);
        for (i, (_, row)) in rows.into_iter().enumerate() {
            let mut job = crate::jobs::job_from(row)?;
            if let Some(grant) = job.kind.strip_suffix(".create").and(job.payload.get("grant_id")).and_then(|g| g.as_str()) {
                let table = if job.kind.starts_with("access.") {
                    Some(if $pg {
                        "UPDATE transient_access SET status = 'provisioning' WHERE id = \
                         (SELECT id FROM transient_access WHERE id = $1 AND status = 'requested' FOR UPDATE SKIP LOCKED)"
                    } else {
                        "UPDATE transient_access SET status = 'provisioning' WHERE id = $1 AND status = 'requested'"
                    })
                } else if job.kind.starts_with("forward.") {
                    Some(if $pg {
                        "UPDATE transient_forwards SET status = 'provisioning' WHERE id = \
                         (SELECT id FROM transient_forwards WHERE id = $1 AND status = 'requested' FOR UPDATE SKIP LOCKED)"
                    } else {
                        "UPDATE transient_forwards SET status = 'provisioning' WHERE id = $1 AND status = 'requested'"
                    })
                } else {
                    None
                };
                if let Some(sql) = table {
                    sqlx::query(sql).bind(grant.to_owned()).execute(&mut *$tx).await?;
                }
            }
            let first_only: bool = $first_only;
            let opening = if i == 0 || !first_only { ($intro)(&job) } else { Vec::new() };
            for message in opening {
                job.log_seq += 1;
                lines.push(LogLine { job_id: job.id, seq: job.log_seq, at: now, message });
            }
            jobs.push(job);
        }
        (jobs, lines)
    }};
}

/// A grant to end, as [`Store::close_grant`] was asked.
pub(crate) struct CloseRow {
    grant: GrantKey,
    from: Vec<GrantStatus>,
    at: DateTime<Utc>,
    supersede: (String, String),
    job: ClosingJob,
    audit: Option<NewAudit>,
}

/// Generates, for one backend's connection type, the writes of [`Store::close_grant`]
/// inside a transaction (or savepoint) the caller opened and ends; on an error the
/// caller rolls it back.
macro_rules! grant_closer {
    ($conn:ty, $name:ident) => {
        /// Closes a grant: its organisation and router.
        pub(crate) async fn $name(tx: &mut $conn, c: &CloseRow) -> Result<(OrgId, RouterId)> {
            let grant_id = match c.grant {
                GrantKey::Access(g) => g.to_string(),
                GrantKey::Forward(g) => g.to_string(),
            };
            // One statement in the common case: the compare-and-set, with what the
            // rest needs. `closing` is not final: no port is released.
            let table = match c.grant {
                GrantKey::Access(_) => "transient_access",
                GrantKey::Forward(_) => "transient_forwards",
            };
            let from: Vec<String> = c
                .from
                .iter()
                .filter(|f| f.can_become(GrantStatus::Closing))
                .map(|f| format!("'{}'", f.as_str()))
                .collect();
            let row = if from.is_empty() {
                None
            } else {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} SET status = 'closing', \
                     revoked_early = (revoked_early OR $2 < expires_at) \
                     WHERE id = $1 AND status IN ({}) RETURNING org_id, router_id",
                    from.join(", ")
                )))
                .bind(&grant_id)
                .bind(ms(c.at))
                .fetch_optional(&mut *tx)
                .await?
            };
            let Some(row) = row else {
                // Say why: it is not live (or changed meanwhile), or is gone.
                let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT status FROM {table} WHERE id = $1"
                )))
                .bind(&grant_id)
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::NotFound)?;
                let status: GrantStatus = row.parse("status")?;
                crate::grants::check_transition(status, &c.from, GrantStatus::Closing)?;
                return Err(StoreError::Conflict("the grant changed meanwhile".into()));
            };
            let org: OrgId = row.parse("org_id")?;
            let router: RouterId = row.parse("router_id")?;
            sqlx::query(
                "UPDATE jobs SET state = 'completed', finished_at = $3, last_error = $4 \
                 WHERE grant_id = $1 AND state = 'pending' AND kind LIKE $2",
            )
            .bind(&grant_id)
            .bind(format!("%{}", c.supersede.0))
            .bind(ms(c.at))
            .bind(&c.supersede.1)
            .execute(&mut *tx)
            .await?;
            let mut payload = c.job.payload.clone();
            if let serde_json::Value::Object(map) = &mut payload {
                map.insert("grant_id".into(), grant_id.clone().into());
            }
            let new = NewJob {
                org_id: org,
                router_id: router,
                kind: c.job.kind.clone(),
                payload,
                max_attempts: c.job.max_attempts,
                run_after: c.at,
                created_at: c.at,
            };
            crate::jobs::insert_job!(&mut *tx, JobId::new(), &new);
            if let Some(audit) = &c.audit {
                crate::jobs::insert_audit!(&mut *tx, audit);
            }
            Ok((org, router))
        }
    };
}

grant_closer!(sqlx::SqliteConnection, close_grant_sqlite);
grant_closer!(sqlx::PgConnection, close_grant_pg);

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
    /// without a write of its own) and moves each creation job's grant from `requested`
    /// to `provisioning`.
    pub async fn claim_jobs(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease: Duration,
        limit: u32,
        intro: impl Fn(&Job) -> Vec<String>,
    ) -> Result<Vec<Job>> {
        let until = now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
        let jobs = db_write!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_urgent(&self.inner.write_lock).await?;
            let (jobs, lines) = lease!(
                tx,
                pg,
                CLAIMABLE,
                "FOR UPDATE OF j SKIP LOCKED",
                i64::from(limit.max(1)),
                owner,
                until,
                now,
                &intro,
                false
            );
            insert_lines!(tx, pg, &lines);
            tx.commit().await?;
            jobs
        });
        Ok(jobs)
    }

    /// The jobs of `router_id` queued behind job `after` that may run now, in order (up
    /// to `limit`): pending and due, stopping at the first that is not. A read, for the
    /// worker holding the lease of `after` (or of a job before it): while a router has
    /// a running job no worker claims any other of its jobs, so that worker may run
    /// these without a lease of their own and record them with its own end
    /// ([`JobEnd::behind`]).
    pub async fn queued_behind(
        &self,
        router_id: RouterId,
        after: JobId,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Job>> {
        db!(self, |p, pg| {
            let rows = sqlx::query(concat!(
                "SELECT ",
                crate::jobs::job_columns!(),
                " FROM jobs WHERE router_id = $1 AND state = 'pending' AND run_after <= $2 \
                 AND seq > (SELECT seq FROM jobs WHERE id = $3) \
                 AND NOT EXISTS (SELECT 1 FROM jobs e WHERE e.router_id = $1 \
                     AND e.state IN ('pending', 'running') \
                     AND e.seq > (SELECT seq FROM jobs WHERE id = $3) AND e.seq < jobs.seq \
                     AND NOT (e.state = 'pending' AND e.run_after <= $2)) \
                 ORDER BY seq LIMIT $4"
            ))
            .bind(router_id.to_string())
            .bind(ms(now))
            .bind(after.to_string())
            .bind(i64::from(limit))
            .fetch_all(p)
            .await?;
            rows.iter().map(crate::jobs::job_from).collect()
        })
    }

    /// Whether a job may be claimed now (a read: a claim is a write).
    pub async fn has_claimable_job(&self, now: DateTime<Utc>) -> Result<bool> {
        db!(self, |p, pg| {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT j.id {CLAIMABLE}")))
                .bind(ms(now))
                .bind(1_i64)
                .fetch_optional(p)
                .await?;
            Ok(row.is_some())
        })
    }

    /// Extends `owner`'s lease of a running job to `until`; false if the lease was lost
    /// (another worker took the job after it lapsed, or it finished).
    pub async fn renew_lease(&self, id: JobId, owner: &str, until: DateTime<Utc>) -> Result<bool> {
        let _writer = self.sqlite_writer_urgent().await;
        let changed = db_write!(self, |p, pg| {
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

    /// [`finish_job`](Self::finish_job) that also appends lines to the job's log in the
    /// same transaction, numbered after its existing ones.
    pub async fn finish_job_with_lines(
        &self,
        id: JobId,
        owner: &str,
        now: DateTime<Utc>,
        outcome: JobOutcome,
        lines: &[(DateTime<Utc>, String)],
    ) -> Result<bool> {
        let from = self.get_job(id).await?.log_seq;
        let numbered: Vec<LogLine> = lines
            .iter()
            .zip(from + 1..)
            .map(|((at, message), seq)| LogLine {
                job_id: id,
                seq,
                at: *at,
                message: message.clone(),
            })
            .collect();
        Ok(self
            .end_attempt(id, owner, now, outcome, None, &|| numbered.clone(), None)
            .await?
            .recorded)
    }

    /// Ends `owner`'s attempt at a running job in one transaction: see
    /// [`end_attempts`](Self::end_attempts).
    #[allow(clippy::too_many_arguments)]
    pub async fn end_attempt(
        &self,
        id: JobId,
        owner: &str,
        now: DateTime<Utc>,
        outcome: JobOutcome,
        grant: Option<&GrantMove>,
        lines: Lines<'_>,
        next: Option<(RouterId, Duration, Intro<'_>)>,
    ) -> Result<AttemptEnd> {
        let ends = [JobEnd {
            job: id,
            outcome,
            grant: grant.cloned(),
            behind: None,
        }];
        self.end_attempts(owner, now, &ends, &[], lines, next).await
    }

    /// Ends `owner`'s attempts at running jobs (a batch of one router's, in order) in one
    /// transaction: each job's new state and its grant's move when asked; `released`
    /// jobs (leased but not run: an earlier one must be retried first) go back to
    /// `pending` as they were; the log lines `lines` gives (asked for once the writer is
    /// held; written even if a lease was lost); and, with `next` (the router, a lease
    /// and its `intro`, given to the first), the lease of the router's jobs that may run
    /// now (up to 16, in order), so a worker goes on with a router's queue without
    /// another claim. All or nothing: if any lease was lost, nothing changes but the
    /// lines. One write per batch on the hot path.
    pub async fn end_attempts(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        ends: &[JobEnd],
        released: &[JobId],
        lines: Lines<'_>,
        next: Option<(RouterId, Duration, Intro<'_>)>,
    ) -> Result<AttemptEnd> {
        let (recorded, moves, claimed) = db_write!(self, |p, pg| {
            let (guard, mut tx) = p.begin_urgent(&self.inner.write_lock).await?;
            let mut written = Vec::new();
            let mut moves = Vec::with_capacity(ends.len());
            let mut lost = false;
            // Every grant first, then the jobs: grants' rows are locked before jobs'
            // (lock order, as `delete_router` takes them). A grant whose creation ran
            // behind a leased job is still `requested`: it was `provisioning` while it
            // ran, recorded now, before its move.
            for (table, access) in [("transient_access", true), ("transient_forwards", false)] {
                let ids: Vec<String> = ends
                    .iter()
                    .filter(|e| e.behind.is_some())
                    .filter_map(|e| match e.grant.as_ref()?.grant {
                        GrantKey::Access(g) if access => Some(g.to_string()),
                        GrantKey::Forward(g) if !access => Some(g.to_string()),
                        _ => None,
                    })
                    .collect();
                if ids.is_empty() {
                    continue;
                }
                let list: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
                let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE {table} SET status = 'provisioning' WHERE id IN ({}) \
                     AND status = 'requested'",
                    list.join(", ")
                )));
                for id in &ids {
                    query = query.bind(id);
                }
                query.execute(&mut *tx).await?;
            }
            for end in ends {
                let moved = match &end.grant {
                    None => None,
                    Some(m)
                        if m.to != GrantStatus::Closing
                            && m.from.iter().all(|f| f.can_become(m.to)) =>
                    {
                        // One statement in the common case (no `expires_at` needed).
                        let ending = crate::grants::ending(m.to, now, 0);
                        let (table, release) = match m.grant {
                            GrantKey::Access(_) => ("transient_access", None),
                            GrantKey::Forward(_) => (
                                "transient_forwards",
                                Some("DELETE FROM router_ports WHERE grant_id = $1"),
                            ),
                        };
                        let grant_id = match m.grant {
                            GrantKey::Access(g) => g.to_string(),
                            GrantKey::Forward(g) => g.to_string(),
                        };
                        let from: Vec<String> =
                            m.from.iter().map(|f| format!("'{}'", f.as_str())).collect();
                        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "UPDATE {table} SET status = $2, ended_at = COALESCE($3, ended_at), \
                             revoked_early = (revoked_early OR $4) WHERE id = $1 AND status IN ({}) \
                             RETURNING id",
                            from.join(", ")
                        )))
                        .bind(&grant_id)
                        .bind(m.to.as_str())
                        .bind(ending.ended_at)
                        .bind(ending.revoked_early)
                        .fetch_optional(&mut *tx)
                        .await?;
                        if row.is_some() {
                            if m.to.is_final() {
                                sqlx::query("DELETE FROM gateway_ports WHERE grant_id = $1")
                                    .bind(&grant_id)
                                    .execute(&mut *tx)
                                    .await?;
                                if let Some(release) = release {
                                    sqlx::query(release)
                                        .bind(&grant_id)
                                        .execute(&mut *tx)
                                        .await?;
                                }
                            }
                            Some(Ok(m.from.first().copied().unwrap_or(m.to)))
                        } else {
                            // Say why: it changed meanwhile, or is gone.
                            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                                "SELECT status FROM {table} WHERE id = $1"
                            )))
                            .bind(&grant_id)
                            .fetch_optional(&mut *tx)
                            .await?;
                            Some(match row {
                                None => Err(StoreError::NotFound),
                                Some(row) => {
                                    let status: GrantStatus = row.parse("status")?;
                                    crate::grants::check_transition(status, &m.from, m.to).and(Err(
                                        StoreError::Conflict("the grant changed meanwhile".into()),
                                    ))
                                }
                            })
                        }
                    }
                    Some(m) => Some(match m.grant {
                        GrantKey::Access(g) => move_grant!(
                            tx,
                            pg,
                            "transient_access",
                            "",
                            g.to_string(),
                            &m.from,
                            m.to,
                            now,
                            None
                        ),
                        GrantKey::Forward(g) => move_grant!(
                            tx,
                            pg,
                            "transient_forwards",
                            "DELETE FROM router_ports WHERE grant_id = $1",
                            g.to_string(),
                            &m.from,
                            m.to,
                            now,
                            None
                        ),
                    }),
                };
                moves.push(moved);
            }
            for (end, moved) in ends.iter().zip(&moves) {
                let (state, run_after, finished, error) = match &end.outcome {
                    JobOutcome::Completed => ("completed", None, Some(ms(now)), None),
                    JobOutcome::Failed(e) => ("failed", None, Some(ms(now)), Some(e.clone())),
                    JobOutcome::Stuck(e) => ("stuck", None, Some(ms(now)), Some(e.clone())),
                    JobOutcome::Retry { run_after, error } => {
                        ("pending", Some(ms(*run_after)), None, Some(error.clone()))
                    }
                };
                if let Some(started) = end.behind {
                    // Still pending, behind our lease; unless superseded meanwhile.
                    sqlx::query(
                        "UPDATE jobs SET state = $2, run_after = COALESCE($3, run_after), \
                         finished_at = $4, last_error = COALESCE($5, last_error), \
                         attempts = attempts + 1, started_at = COALESCE(started_at, $6) \
                         WHERE id = $1 AND state = 'pending'",
                    )
                    .bind(end.job.to_string())
                    .bind(state)
                    .bind(run_after)
                    .bind(finished)
                    .bind(error)
                    .bind(ms(started))
                    .execute(&mut *tx)
                    .await?;
                } else {
                    let changed = sqlx::query(
                        "UPDATE jobs SET state = $3, run_after = COALESCE($4, run_after), \
                         finished_at = $5, last_error = COALESCE($6, last_error), lease_owner = NULL, \
                         lease_expires_at = NULL WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
                    )
                    .bind(end.job.to_string())
                    .bind(owner)
                    .bind(state)
                    .bind(run_after)
                    .bind(finished)
                    .bind(error)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if changed != 1 {
                        lost = true;
                        break;
                    }
                }
                if let (Some(m), Some(result)) = (&end.grant, moved)
                    && let Some(line) = &m.line
                {
                    written.push(LogLine {
                        job_id: end.job,
                        seq: line.seq,
                        at: now,
                        message: match result {
                            Ok(_) => line.moved.clone(),
                            Err(e) => format!("{}{e}", line.refused),
                        },
                    });
                }
            }
            let moves: Vec<_> = moves
                .into_iter()
                .map(|m| m.map(|m| m.map_err(|e| e.to_string())))
                .collect();
            for id in released {
                let changed = sqlx::query(
                    "UPDATE jobs SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL, \
                     attempts = attempts - 1, \
                     started_at = CASE WHEN attempts <= 1 THEN NULL ELSE started_at END \
                     WHERE id = $1 AND lease_owner = $2 AND state = 'running'",
                )
                .bind(id.to_string())
                .bind(owner)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if changed != 1 {
                    lost = true;
                }
            }
            if lost {
                // Not ours any more: nothing changes but the lines.
                tx.rollback().await?;
                drop(guard);
                self.write_lines(lines).await?;
                return Ok(AttemptEnd {
                    recorded: false,
                    grants: Vec::new(),
                    next: Vec::new(),
                });
            }
            written.extend(lines());
            let mut claimed = Vec::new();
            if let Some((router_id, lease, intro)) = next {
                let until =
                    now + chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::MAX);
                let (jobs, lines) = lease!(
                    tx,
                    pg,
                    BATCH_ON_ROUTER,
                    "FOR UPDATE OF j",
                    router_id.to_string(),
                    owner,
                    until,
                    now,
                    intro,
                    true
                );
                claimed = jobs;
                written.extend(lines);
            }
            // These attempts' lines, those of other attempts waiting, and the next
            // one's opening lines: one statement.
            insert_lines!(tx, pg, &written);
            tx.commit().await?;
            (true, moves, claimed)
        });
        Ok(AttemptEnd {
            recorded,
            grants: moves,
            next: claimed,
        })
    }

    /// Writes the log lines `lines` gives, in one transaction (asked for once the writer
    /// is held, so lines queued meanwhile go too); nothing when there are none.
    /// Returns how many were given.
    pub async fn write_lines(&self, lines: Lines<'_>) -> Result<usize> {
        db_write!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_urgent(&self.inner.write_lock).await?;
            let lines = lines();
            if lines.is_empty() {
                tx.rollback().await?;
                return Ok(0);
            }
            insert_lines!(tx, pg, &lines);
            tx.commit().await?;
            Ok(lines.len())
        })
    }

    /// Ends a live grant in one transaction: `closing` (a compare-and-set from one of
    /// `from`), its pending jobs whose kind ends with `supersede.0` completed with
    /// `supersede.1` as `last_error`, `job` (its clean-up) queued, and `audit` appended
    /// when given (a revoke's entry). Returns the grant's organisation and router;
    /// `Conflict` (and nothing changed, no audit entry either) if it was not in `from`.
    /// On SQLite, closes and creates queued for the writer together are committed
    /// together, a savepoint each (see `grouped`).
    pub async fn close_grant(
        &self,
        grant: GrantKey,
        from: &[GrantStatus],
        at: DateTime<Utc>,
        supersede: (&str, &str),
        job: &ClosingJob,
        audit: Option<&NewAudit>,
    ) -> Result<(OrgId, RouterId)> {
        let row = Arc::new(CloseRow {
            grant,
            from: from.to_vec(),
            at,
            supersede: (supersede.0.to_owned(), supersede.1.to_owned()),
            job: job.clone(),
            audit: audit.cloned(),
        });
        match self.pool() {
            Pool::Sqlite { write, .. } => {
                self.group_commit(write, Write::Close(row)).await?.closed()
            }
            Pool::Postgres(pool) => {
                let (_guard, mut tx) = pool.begin_write(&self.inner.write_lock).await?;
                let closed = close_grant_pg(&mut tx, &row).await?;
                tx.commit().await?;
                Ok(closed)
            }
        }
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
        Ok(db_write!(self, |p, pg| {
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
        Ok(db_write!(self, |p, pg| {
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

    /// How many jobs are stuck (the router refused a command as unknown or invalid),
    /// every organisation's, for `/metrics`.
    pub async fn count_stuck_jobs(&self) -> Result<u64> {
        db!(self, |p, pg| {
            let row = sqlx::query("SELECT COUNT(*) AS n FROM jobs WHERE state = 'stuck'")
                .fetch_one(p)
                .await?;
            Ok(u64::try_from(row.int("n")?).unwrap_or(0))
        })
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

    /// Whether a `write` access grant not yet final (its user may be on the router) is
    /// on router `router_id`: while one is, no user-removing self-expiry entry may
    /// stand there. One indexed read of at most one row.
    pub async fn router_has_unfinished_write_access(&self, router_id: RouterId) -> Result<bool> {
        db!(self, |p, pg| {
            let row = sqlx::query(
                "SELECT id FROM transient_access WHERE router_id = $1 AND access = 'write' \
                 AND status IN ('requested', 'provisioning', 'active', 'closing') LIMIT 1",
            )
            .bind(router_id.to_string())
            .fetch_optional(p)
            .await?;
            Ok(row.is_some())
        })
    }

    /// Tells every process listening on this PostgreSQL store that a job was queued
    /// (`NOTIFY`); nothing on SQLite (one process per file).
    pub async fn notify_jobs(&self) -> Result<()> {
        if let Pool::Postgres(p) = self.pool() {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(JOBS_CHANNEL)
                .execute(p)
                .await?;
        }
        Ok(())
    }

    /// Tells every process listening on this PostgreSQL store something about a grant
    /// (`NOTIFY` with `payload`, at most 8000 bytes); nothing on SQLite (one process).
    pub async fn notify_grants(&self, payload: &str) -> Result<()> {
        if let Pool::Postgres(p) = self.pool() {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(GRANTS_CHANNEL)
                .bind(payload)
                .execute(p)
                .await?;
        }
        Ok(())
    }

    /// A subscription to [`notify_grants`](Self::notify_grants) on PostgreSQL; `None`
    /// on SQLite.
    pub async fn grant_listener(&self) -> Result<Option<GrantListener>> {
        match self.pool() {
            Pool::Postgres(p) => {
                let mut listener = PgListener::connect_with(p).await?;
                listener.listen(GRANTS_CHANNEL).await?;
                Ok(Some(GrantListener { listener }))
            }
            Pool::Sqlite { .. } => Ok(None),
        }
    }

    /// A subscription to [`notify_jobs`](Self::notify_jobs) on PostgreSQL; `None` on
    /// SQLite.
    pub async fn job_listener(&self) -> Result<Option<JobListener>> {
        match self.pool() {
            Pool::Postgres(p) => {
                let mut listener = PgListener::connect_with(p).await?;
                listener.listen(JOBS_CHANNEL).await?;
                Ok(Some(JobListener { listener }))
            }
            Pool::Sqlite { .. } => Ok(None),
        }
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

    /// For the expiry timer: the live grants whose end is at or before `now`, and the
    /// next end among the others. Two statements on an index of live grants by their end
    /// (migration 80), so as cheap with thousands of live grants as with one.
    pub async fn expiring(
        &self,
        now: DateTime<Utc>,
    ) -> Result<(Vec<GrantKey>, Option<DateTime<Utc>>)> {
        db!(self, |p, pg| {
            // SQLite, without statistics, would rather take the index on `status`.
            let (access, forwards) = if pg {
                ("transient_access", "transient_forwards")
            } else {
                (
                    "transient_access INDEXED BY transient_access_live_expiry",
                    "transient_forwards INDEXED BY transient_forwards_live_expiry",
                )
            };
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT 'access' AS kind, id FROM {access} \
                 WHERE status IN ('requested', 'provisioning', 'active') AND expires_at <= $1 \
                 UNION ALL SELECT 'forward' AS kind, id FROM {forwards} \
                 WHERE status IN ('requested', 'provisioning', 'active') AND expires_at <= $1"
            )))
            .bind(ms(now))
            .fetch_all(p)
            .await?;
            let mut due = Vec::with_capacity(rows.len());
            for row in &rows {
                due.push(match row.text("kind")?.as_str() {
                    "access" => GrantKey::Access(row.parse("id")?),
                    _ => GrantKey::Forward(row.parse("id")?),
                });
            }
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT MIN(at) AS next FROM ( \
                 SELECT MIN(expires_at) AS at FROM {access} \
                 WHERE status IN ('requested', 'provisioning', 'active') AND expires_at > $1 \
                 UNION ALL SELECT MIN(expires_at) AS at FROM {forwards} \
                 WHERE status IN ('requested', 'provisioning', 'active') AND expires_at > $1) AS ends"
            )))
            .bind(ms(now))
            .fetch_one(p)
            .await?;
            Ok((due, row.opt_time("next")?))
        })
    }

    /// Sets (or clears) a region's tunnel source address.
    pub async fn set_region_tunnel_source(
        &self,
        id: RegionId,
        source: Option<IpAddr>,
    ) -> Result<()> {
        let _writer = self.sqlite_writer().await;
        let changed = db_write!(self, |p, pg| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::StoreConfig;

    /// SQLite's plan for `sql` (`$1` now, `$2` as given).
    async fn plan(store: &Store, sql: &str, second: &str) -> String {
        db!(store, |p, pg| {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}")))
                .bind(0_i64)
                .bind(second.to_owned())
                .fetch_all(p)
                .await
                .unwrap();
            rows.iter()
                .map(|r| r.text("detail").unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// The expiry timer's reads (as `Store::expiring` writes them for SQLite) search the
    /// index of live grants by their end (migration 80), never every grant.
    #[tokio::test]
    async fn expiry_reads_only_live_grants_by_their_end() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("e.db").display());
        let store = Store::open(&url, &StoreConfig::new([1; 32])).await.unwrap();
        for (table, index) in [
            ("transient_access", "transient_access_live_expiry"),
            ("transient_forwards", "transient_forwards_live_expiry"),
        ] {
            for sql in [
                format!(
                    "SELECT id FROM {table} INDEXED BY {index} WHERE status IN ('requested', \
                     'provisioning', 'active') AND expires_at <= $1 AND $2 = $2"
                ),
                format!(
                    "SELECT MIN(expires_at) FROM {table} INDEXED BY {index} WHERE status IN \
                     ('requested', 'provisioning', 'active') AND expires_at > $1 AND $2 = $2"
                ),
            ] {
                // A search by the end within the index (not a scan of it).
                let plan = plan(&store, &sql, "x").await;
                assert!(
                    plan.contains(&format!("SEARCH {table} USING"))
                        && plan.contains(index)
                        && plan.contains("expires_at"),
                    "{sql}:\n{plan}"
                );
            }
        }
    }

    /// The claim's "no earlier unfinished job of the router" check, and a router's
    /// batch, read the router's unfinished jobs through the partial index (migration
    /// 60), never stepping over its finished ones.
    #[tokio::test]
    async fn claims_read_only_unfinished_jobs() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display());
        let store = Store::open(&url, &StoreConfig::new([1; 32])).await.unwrap();
        let claim = plan(&store, &format!("SELECT j.id {CLAIMABLE}"), "1").await;
        eprintln!("claim:\n{claim}");
        assert!(
            claim.contains("CORRELATED SCALAR SUBQUERY")
                && claim.contains("jobs_open_router_seq (router_id=? AND seq<?)"),
            "{claim}"
        );
        let batch = plan(&store, &format!("SELECT j.id {BATCH_ON_ROUTER}"), "r").await;
        eprintln!("batch:\n{batch}");
        assert!(!batch.contains("jobs_router_seq"), "{batch}");
        assert!(batch.contains("jobs_open_router_seq"), "{batch}");
        store.close().await;
    }
}
