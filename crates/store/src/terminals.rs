//! The portal's terminal sessions and their recordings: one row per grant the Terminal
//! button made, claimed once by the bridge when it connects, and the asciicast v2 text
//! appended in numbered chunks while the session runs (durable as it goes; a crash loses
//! at most the last unflushed second). Reads are scoped by organisation. Time is a
//! parameter.

use chrono::{DateTime, Utc};
use domain::{AccessId, OrgId, RouterId};

use crate::Store;
use crate::db::{Get, WritePool as _, db, db_write, ms, trunc};
use crate::error::{Result, StoreError};

/// A terminal session as stored (its recording aside).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TerminalSession {
    /// The SSH transient access the session runs on.
    pub access_id: AccessId,
    pub org_id: OrgId,
    pub router_id: RouterId,
    /// Who pressed the button (a username); only they may connect.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// When the bridge connected (once: a session is never connected twice).
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// The terminal's size at the start, in columns and rows.
    pub width: Option<u16>,
    pub height: Option<u16>,
    /// Bytes of recording stored so far.
    pub size: u64,
    /// Why it ended, in words ("closed by the browser", "the shell exited", …).
    pub end_reason: Option<String>,
}

/// Input of `create_terminal_session`.
#[derive(Debug, Clone)]
pub struct NewTerminalSession {
    pub access_id: AccessId,
    pub org_id: OrgId,
    pub router_id: RouterId,
    pub created_by: String,
    pub at: DateTime<Utc>,
}

macro_rules! terminal_sql {
    ($tail:literal) => {
        concat!(
            "SELECT access_id, org_id, router_id, created_by, created_at, started_at, ended_at, \
             width, height, size, end_reason FROM terminal_sessions ",
            $tail
        )
    };
}

fn dimension(r: &impl Get, col: &str) -> Result<Option<u16>> {
    r.opt_int(col)?
        .map(|n| {
            u16::try_from(n)
                .map_err(|_| StoreError::Corrupt(format!("{col}: {n} is not a terminal size")))
        })
        .transpose()
}

fn terminal_from(r: &impl Get) -> Result<TerminalSession> {
    let size = r.int("size")?;
    Ok(TerminalSession {
        access_id: r.parse("access_id")?,
        org_id: r.parse("org_id")?,
        router_id: r.parse("router_id")?,
        created_by: r.text("created_by")?,
        created_at: r.time("created_at")?,
        started_at: r.opt_time("started_at")?,
        ended_at: r.opt_time("ended_at")?,
        width: dimension(r, "width")?,
        height: dimension(r, "height")?,
        size: u64::try_from(size)
            .map_err(|_| StoreError::Corrupt(format!("size: {size} is negative")))?,
        end_reason: r.opt_text("end_reason")?,
    })
}

impl Store {
    /// Records a terminal session for an access grant of the router; `NotFound` unless the
    /// grant is that router's in `org`, `Conflict` if it has one already.
    pub async fn create_terminal_session(
        &self,
        new: NewTerminalSession,
    ) -> Result<TerminalSession> {
        self.get_access(new.org_id, new.router_id, new.access_id)
            .await?;
        let _writer = self.sqlite_writer().await;
        let session = TerminalSession {
            access_id: new.access_id,
            org_id: new.org_id,
            router_id: new.router_id,
            created_by: new.created_by,
            created_at: trunc(new.at),
            started_at: None,
            ended_at: None,
            width: None,
            height: None,
            size: 0,
            end_reason: None,
        };
        db_write!(self, |p, pg| {
            sqlx::query(
                "INSERT INTO terminal_sessions (access_id, org_id, router_id, created_by, created_at) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(session.access_id.to_string())
            .bind(session.org_id.to_string())
            .bind(session.router_id.to_string())
            .bind(&session.created_by)
            .bind(ms(session.created_at))
            .execute(p)
            .await
            .map_err(|e| {
                StoreError::unique(e, || "this grant has a terminal session already".to_owned())
            })?;
        });
        Ok(session)
    }

    /// The terminal session of an access grant in `org`; `NotFound` otherwise.
    pub async fn get_terminal_session(
        &self,
        org: OrgId,
        access_id: AccessId,
    ) -> Result<TerminalSession> {
        let found = db!(self, |p, pg| {
            let row = sqlx::query(terminal_sql!("WHERE access_id = $1 AND org_id = $2"))
                .bind(access_id.to_string())
                .bind(org.to_string())
                .fetch_optional(p)
                .await?;
            row.map(|r| terminal_from(&r)).transpose()?
        });
        found.ok_or(StoreError::NotFound)
    }

    /// A router's terminal sessions in `org`, newest first, at most `limit`.
    pub async fn list_terminal_sessions(
        &self,
        org: OrgId,
        router_id: RouterId,
        limit: u32,
    ) -> Result<Vec<TerminalSession>> {
        db!(self, |p, pg| {
            let rows = sqlx::query(terminal_sql!(
                "WHERE org_id = $1 AND router_id = $2 ORDER BY created_at DESC, access_id LIMIT $3"
            ))
            .bind(org.to_string())
            .bind(router_id.to_string())
            .bind(i64::from(limit))
            .fetch_all(p)
            .await?;
            rows.iter().map(terminal_from).collect()
        })
    }

    /// Claims a session for the bridge that connects now, at `width`×`height`: true the
    /// first time, false ever after (a session is connected once).
    pub async fn start_terminal_session(
        &self,
        access_id: AccessId,
        at: DateTime<Utc>,
        width: u16,
        height: u16,
    ) -> Result<bool> {
        let _writer = self.sqlite_writer().await;
        let n = db_write!(self, |p, pg| {
            sqlx::query(
                "UPDATE terminal_sessions SET started_at = $2, width = $3, height = $4 \
                 WHERE access_id = $1 AND started_at IS NULL",
            )
            .bind(access_id.to_string())
            .bind(ms(at))
            .bind(i64::from(width))
            .bind(i64::from(height))
            .execute(p)
            .await?
            .rows_affected()
        });
        Ok(n == 1)
    }

    /// Appends chunk `seq` of a session's recording and counts its bytes, in one
    /// transaction; `NotFound` for no such session, `Conflict` if `seq` was written.
    pub async fn append_terminal_chunk(
        &self,
        access_id: AccessId,
        seq: u32,
        data: &str,
    ) -> Result<()> {
        let len = i64::try_from(data.len()).unwrap_or(i64::MAX);
        db_write!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
            let n =
                sqlx::query("UPDATE terminal_sessions SET size = size + $2 WHERE access_id = $1")
                    .bind(access_id.to_string())
                    .bind(len)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            if n != 1 {
                return Err(StoreError::NotFound);
            }
            sqlx::query("INSERT INTO terminal_chunks (access_id, seq, data) VALUES ($1, $2, $3)")
                .bind(access_id.to_string())
                .bind(i64::from(seq))
                .bind(data)
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::unique(e, || format!("chunk {seq} exists already")))?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// Notes the end of a session (the first end wins).
    pub async fn end_terminal_session(
        &self,
        access_id: AccessId,
        at: DateTime<Utc>,
        reason: &str,
    ) -> Result<()> {
        let _writer = self.sqlite_writer().await;
        db_write!(self, |p, pg| {
            sqlx::query(
                "UPDATE terminal_sessions SET ended_at = $2, end_reason = $3 \
                 WHERE access_id = $1 AND ended_at IS NULL",
            )
            .bind(access_id.to_string())
            .bind(ms(at))
            .bind(reason)
            .execute(p)
            .await?;
        });
        Ok(())
    }

    /// A session's recording: its chunks in order, as one text (asciicast v2 when the
    /// bridge wrote it); `NotFound` unless the session is in `org`.
    pub async fn terminal_recording(&self, org: OrgId, access_id: AccessId) -> Result<String> {
        self.get_terminal_session(org, access_id).await?;
        let chunks: Vec<String> = db!(self, |p, pg| {
            let rows =
                sqlx::query("SELECT data FROM terminal_chunks WHERE access_id = $1 ORDER BY seq")
                    .bind(access_id.to_string())
                    .fetch_all(p)
                    .await?;
            rows.iter().map(|r| r.text("data")).collect::<Result<_>>()?
        });
        Ok(chunks.concat())
    }
}
