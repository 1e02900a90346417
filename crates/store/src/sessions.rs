//! The portal's sessions: one row per signed-in browser, keyed by the SHA-256 (hex) of
//! the random token in its cookie. The store never sees the token itself. Time is a
//! parameter: the server decides what "now", idle and expired mean.

use chrono::{DateTime, Utc};
use domain::{OrgId, UserId};

use crate::Store;
use crate::db::{Get, db, db_write, ms, trunc};
use crate::error::{Result, StoreError};

/// A portal session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// SHA-256 of the cookie token, hex.
    pub id_hash: String,
    pub user_id: UserId,
    pub org_id: OrgId,
    /// The token every form and htmx request of this session must carry.
    pub csrf_token: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// The absolute limit, whatever the activity.
    pub expires_at: DateTime<Utc>,
}

/// Input of `create_session`.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id_hash: String,
    pub user_id: UserId,
    pub org_id: OrgId,
    pub csrf_token: String,
    pub at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

macro_rules! session_sql {
    ($tail:literal) => {
        concat!(
            "SELECT id_hash, user_id, org_id, csrf_token, created_at, last_seen_at, expires_at \
             FROM sessions ",
            $tail
        )
    };
}

fn session_from(r: &impl Get) -> Result<Session> {
    Ok(Session {
        id_hash: r.text("id_hash")?,
        user_id: r.parse("user_id")?,
        org_id: r.parse("org_id")?,
        csrf_token: r.text("csrf_token")?,
        created_at: r.time("created_at")?,
        last_seen_at: r.time("last_seen_at")?,
        expires_at: r.time("expires_at")?,
    })
}

/// Whether text looks like a stored hash (64 lowercase hex digits): anything else is
/// refused before it reaches SQL.
pub(crate) fn is_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Store {
    /// Records a new session; `NotFound` if the user is not in the organisation.
    pub async fn create_session(&self, new: NewSession) -> Result<Session> {
        if !is_hash(&new.id_hash) {
            return Err(StoreError::Conflict(
                "a session id must be a sha-256 hex".into(),
            ));
        }
        // The user must belong to the organisation the session is scoped to.
        self.get_user(new.org_id, new.user_id).await?;
        let _writer = self.sqlite_writer().await;
        let session = Session {
            id_hash: new.id_hash,
            user_id: new.user_id,
            org_id: new.org_id,
            csrf_token: new.csrf_token,
            created_at: trunc(new.at),
            last_seen_at: trunc(new.at),
            expires_at: trunc(new.expires_at),
        };
        db_write!(self, |p, pg| {
            sqlx::query(
                "INSERT INTO sessions (id_hash, user_id, org_id, csrf_token, created_at, last_seen_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&session.id_hash)
            .bind(session.user_id.to_string())
            .bind(session.org_id.to_string())
            .bind(&session.csrf_token)
            .bind(ms(session.created_at))
            .bind(ms(session.last_seen_at))
            .bind(ms(session.expires_at))
            .execute(p)
            .await
            .map_err(|e| StoreError::unique(e, || "this session exists already".to_owned()))?;
        });
        Ok(session)
    }

    /// The session with this hash, if there is one (expired or not: the caller decides).
    pub async fn find_session(&self, id_hash: &str) -> Result<Option<Session>> {
        if !is_hash(id_hash) {
            return Ok(None);
        }
        db!(self, |p, pg| {
            let row = sqlx::query(session_sql!("WHERE id_hash = $1"))
                .bind(id_hash)
                .fetch_optional(p)
                .await?;
            row.map(|r| session_from(&r)).transpose()
        })
    }

    /// Notes activity on a session (for its idle limit).
    pub async fn touch_session(&self, id_hash: &str, at: DateTime<Utc>) -> Result<()> {
        let _writer = self.sqlite_writer().await;
        db_write!(self, |p, pg| {
            sqlx::query("UPDATE sessions SET last_seen_at = $1 WHERE id_hash = $2")
                .bind(ms(at))
                .bind(id_hash)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// Ends a session; true if there was one.
    pub async fn delete_session(&self, id_hash: &str) -> Result<bool> {
        let _writer = self.sqlite_writer().await;
        let n = db_write!(self, |p, pg| {
            sqlx::query("DELETE FROM sessions WHERE id_hash = $1")
                .bind(id_hash)
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    /// Removes sessions past their absolute limit or idle since before `idle_before`;
    /// returns how many.
    pub async fn delete_stale_sessions(
        &self,
        now: DateTime<Utc>,
        idle_before: DateTime<Utc>,
    ) -> Result<u64> {
        let _writer = self.sqlite_writer().await;
        let n = db_write!(self, |p, pg| {
            sqlx::query("DELETE FROM sessions WHERE expires_at <= $1 OR last_seen_at < $2")
                .bind(ms(now))
                .bind(ms(idle_before))
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(n)
    }
}
