//! Router jobs with their log lines (the orchestration log), and the append-only audit
//! log. The `insert_audit!` and `insert_job!` macros let a grant's transaction write
//! its audit entry and first job with the same statements.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use domain::{JobId, JobState, OrgId, RouterId};

use crate::Store;
use crate::db::{Get, db, db_write, ms, trunc};
use crate::error::{Result, StoreError};
use crate::records::{AuditEntry, Job, JobLine, NewAudit, NewJob, Page};

/// Inserts `$audit: &NewAudit` with executor `$exec`; evaluates to the new entry's id.
macro_rules! insert_audit {
    ($exec:expr, $audit:expr) => {{
        let audit: &$crate::records::NewAudit = $audit;
        let row = sqlx::query(
            "INSERT INTO audit_log (org_id, at, actor, actor_address, action, target, details) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(audit.org_id.to_string())
        .bind($crate::db::ms(audit.at))
        .bind(&audit.actor)
        .bind(audit.actor_address.map(|a| a.to_string()))
        .bind(&audit.action)
        .bind(&audit.target)
        .bind(audit.details.to_string())
        .fetch_one($exec)
        .await?;
        $crate::db::Get::int(&row, "id")?
    }};
}
pub(crate) use insert_audit;

/// Inserts `$job: &NewJob` as `$id: JobId` with executor `$exec`, only if its router
/// belongs to its organisation; `NotFound` (returned from the enclosing function)
/// otherwise.
macro_rules! insert_job {
    ($exec:expr, $id:expr, $job:expr) => {{
        let job: &$crate::records::NewJob = $job;
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, org_id, router_id, kind, payload, state, attempts, max_attempts, \
             run_after, created_at, grant_id) SELECT $1, $2, $3, $4, $5, $6, 0, $7, $8, $9, $10 \
             WHERE EXISTS (SELECT 1 FROM routers WHERE id = $3 AND org_id = $2)",
        )
        .bind($id.to_string())
        .bind(job.org_id.to_string())
        .bind(job.router_id.to_string())
        .bind(&job.kind)
        .bind(job.payload.to_string())
        .bind(domain::JobState::Pending.as_str())
        .bind(i64::from(job.max_attempts))
        .bind($crate::db::ms(job.run_after))
        .bind($crate::db::ms(job.created_at))
        .bind(job.payload.get("grant_id").and_then(|g| g.as_str()).map(str::to_owned))
        .execute($exec)
        .await?
        .rows_affected();
        if inserted != 1 {
            return Err($crate::error::StoreError::NotFound);
        }
    }};
}
pub(crate) use insert_job;

/// The columns `job_from` reads, as a select list of table `jobs` (also a `RETURNING`
/// list): `log_seq` is the number of the job's last log line.
macro_rules! job_columns {
    () => {
        "id, org_id, router_id, kind, payload, state, attempts, max_attempts, run_after, \
         lease_owner, lease_expires_at, created_at, started_at, finished_at, last_error, \
         (SELECT COALESCE(MAX(l.seq), 0) FROM job_lines l WHERE l.job_id = jobs.id) AS log_seq"
    };
}
pub(crate) use job_columns;

macro_rules! job_sql {
    ($tail:literal) => {
        concat!("SELECT ", job_columns!(), " FROM jobs ", $tail)
    };
}

pub(crate) fn job_from(r: &impl Get) -> Result<Job> {
    Ok(Job {
        id: r.parse("id")?,
        org_id: r.parse("org_id")?,
        router_id: r.parse("router_id")?,
        kind: r.text("kind")?,
        payload: r.json("payload")?,
        state: r.parse("state")?,
        attempts: r.count("attempts")?,
        max_attempts: r.count("max_attempts")?,
        run_after: r.time("run_after")?,
        lease_owner: r.opt_text("lease_owner")?,
        lease_expires_at: r.opt_time("lease_expires_at")?,
        created_at: r.time("created_at")?,
        started_at: r.opt_time("started_at")?,
        finished_at: r.opt_time("finished_at")?,
        last_error: r.opt_text("last_error")?,
        log_seq: r.count("log_seq")?,
    })
}

fn line_from(r: &impl Get) -> Result<JobLine> {
    Ok(JobLine {
        job_id: r.parse("job_id")?,
        seq: r.count("seq")?,
        at: r.time("at")?,
        message: r.text("message")?,
    })
}

fn audit_from(r: &impl Get) -> Result<AuditEntry> {
    Ok(AuditEntry {
        id: r.int("id")?,
        org_id: r.parse("org_id")?,
        at: r.time("at")?,
        actor: r.text("actor")?,
        actor_address: r.opt_parse("actor_address")?,
        action: r.text("action")?,
        target: r.opt_text("target")?,
        details: r.json("details")?,
    })
}

pub(crate) fn job_record(id: JobId, new: &NewJob) -> Job {
    Job {
        id,
        org_id: new.org_id,
        router_id: new.router_id,
        kind: new.kind.clone(),
        payload: new.payload.clone(),
        state: JobState::Pending,
        attempts: 0,
        max_attempts: new.max_attempts,
        run_after: trunc(new.run_after),
        lease_owner: None,
        lease_expires_at: None,
        created_at: trunc(new.created_at),
        started_at: None,
        finished_at: None,
        last_error: None,
        log_seq: 0,
    }
}

impl Store {
    /// Queues a job (state `pending`); `NotFound` unless its router is in its org.
    pub async fn create_job(&self, new: NewJob) -> Result<Job> {
        let _writer = self.sqlite_writer().await;
        let id = JobId::new();
        db_write!(self, |p, pg| {
            insert_job!(p, id, &new);
        });
        Ok(job_record(id, &new))
    }

    /// A job by id (any organisation: for the orchestrator).
    pub async fn get_job(&self, id: JobId) -> Result<Job> {
        let job = db!(self, |p, pg| {
            let row = sqlx::query(job_sql!("WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(p)
                .await?;
            row.map(|r| job_from(&r)).transpose()?
        });
        job.ok_or(StoreError::NotFound)
    }

    /// A router's stuck jobs (the router refused a command as unknown or invalid),
    /// oldest first.
    pub async fn stuck_jobs(&self, router_id: RouterId) -> Result<Vec<Job>> {
        db!(self, |p, pg| {
            let rows = sqlx::query(job_sql!(
                "WHERE router_id = $1 AND state = 'stuck' ORDER BY created_at"
            ))
            .bind(router_id.to_string())
            .fetch_all(p)
            .await?;
            rows.iter().map(job_from).collect::<Result<Vec<_>>>()
        })
    }

    /// Appends a line to a job's log; returns its sequence number (1, 2, …).
    pub async fn append_job_line(
        &self,
        job_id: JobId,
        at: DateTime<Utc>,
        message: &str,
    ) -> Result<u32> {
        let _writer = self.sqlite_writer().await;
        // Two concurrent appends may pick the same number (PostgreSQL); the primary key
        // refuses one, which tries again.
        for _ in 0..5 {
            let inserted = db_write!(self, |p, pg| {
                sqlx::query(
                    "INSERT INTO job_lines (job_id, seq, at, message) \
                     SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3 FROM job_lines WHERE job_id = $1 \
                     RETURNING seq",
                )
                .bind(job_id.to_string())
                .bind(ms(at))
                .bind(message)
                .fetch_one(p)
                .await
                .map(|row| row.count("seq"))
            });
            match inserted {
                Ok(seq) => return seq,
                Err(sqlx::Error::Database(e)) if e.is_unique_violation() => continue,
                Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                    return Err(StoreError::NotFound);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Conflict("job log is busy; try again".into()))
    }

    /// The jobs of a router of `org`, newest first, each with its log lines in order.
    pub async fn list_jobs(
        &self,
        org: OrgId,
        router_id: RouterId,
        page: Page,
    ) -> Result<Vec<(Job, Vec<JobLine>)>> {
        let (jobs, lines) = db!(self, |p, pg| {
            let found = sqlx::query("SELECT id FROM routers WHERE id = $1 AND org_id = $2")
                .bind(router_id.to_string())
                .bind(org.to_string())
                .fetch_optional(p)
                .await?;
            if found.is_none() {
                return Err(StoreError::NotFound);
            }
            let jobs = sqlx::query(job_sql!(
                "WHERE router_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
            ))
            .bind(router_id.to_string())
            .bind(page.limit_i64())
            .bind(page.offset_i64())
            .fetch_all(p)
            .await?;
            let jobs = jobs.iter().map(job_from).collect::<Result<Vec<_>>>()?;
            let lines = sqlx::query(
                "SELECT job_id, seq, at, message FROM job_lines WHERE job_id IN \
                 (SELECT id FROM jobs WHERE router_id = $1 ORDER BY created_at DESC, id DESC \
                  LIMIT $2 OFFSET $3) ORDER BY job_id, seq",
            )
            .bind(router_id.to_string())
            .bind(page.limit_i64())
            .bind(page.offset_i64())
            .fetch_all(p)
            .await?;
            let lines = lines.iter().map(line_from).collect::<Result<Vec<_>>>()?;
            (jobs, lines)
        });
        let mut by_job: HashMap<JobId, Vec<JobLine>> = HashMap::new();
        for line in lines {
            by_job.entry(line.job_id).or_default().push(line);
        }
        Ok(jobs
            .into_iter()
            .map(|job| {
                let lines = by_job.remove(&job.id).unwrap_or_default();
                (job, lines)
            })
            .collect())
    }

    /// Appends to the audit log (there is no way to change or remove an entry).
    pub async fn append_audit(&self, new: NewAudit) -> Result<AuditEntry> {
        let _writer = self.sqlite_writer().await;
        let id = db_write!(self, |p, pg| { insert_audit!(p, &new) });
        Ok(AuditEntry {
            id,
            org_id: new.org_id,
            at: trunc(new.at),
            actor: new.actor,
            actor_address: new.actor_address,
            action: new.action,
            target: new.target,
            details: new.details,
        })
    }

    /// The audit log of `org`, newest first.
    pub async fn list_audit(&self, org: OrgId, page: Page) -> Result<Vec<AuditEntry>> {
        db!(self, |p, pg| {
            let rows = sqlx::query(
                "SELECT id, org_id, at, actor, actor_address, action, target, details FROM audit_log \
                 WHERE org_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
            )
            .bind(org.to_string())
            .bind(page.limit_i64())
            .bind(page.offset_i64())
            .fetch_all(p)
            .await?;
            rows.iter().map(audit_from).collect()
        })
    }
}
