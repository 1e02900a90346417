//! Share links of a transient access grant: made with their audit entry in one
//! transaction, opened at most once (the first opener takes it, noting when and from
//! where), revocable, and worthless once the grant ends. Stored by the SHA-256 (hex) of
//! the link's secret: the store never sees the secret itself. Time is a parameter.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use domain::{AccessId, OrgId, RouterId};

use crate::Store;
use crate::db::{Get, WritePool as _, db, db_write, ms, trunc};
use crate::error::{Result, StoreError};
use crate::jobs::insert_audit;
use crate::records::NewAudit;
use crate::sessions::is_hash;

/// A share link as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantShare {
    /// Names the link (for revoking it); not its secret.
    pub id: uuid::Uuid,
    pub org_id: OrgId,
    pub router_id: RouterId,
    pub access_id: AccessId,
    /// Who made it, as the audit log names them.
    pub created_by: String,
    pub created_from: Option<IpAddr>,
    pub created_at: DateTime<Utc>,
    /// The grant's end when the link was made (the grant's own state is checked too).
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub used_from: Option<IpAddr>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Input of `create_grant_share`.
#[derive(Debug, Clone)]
pub struct NewGrantShare {
    pub id: uuid::Uuid,
    /// SHA-256 of the link's secret, hex.
    pub id_hash: String,
    pub org_id: OrgId,
    pub router_id: RouterId,
    pub access_id: AccessId,
    pub created_by: String,
    pub created_from: Option<IpAddr>,
    pub at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Written in the same transaction as the link.
    pub audit: NewAudit,
}

/// What trying to open a link found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShareUse {
    /// No such link (or not the shape of one).
    Unknown,
    /// The link exists but was opened, revoked or has expired; nothing changed.
    Spent(GrantShare),
    /// Opened now, by this call alone.
    Taken(GrantShare),
}

macro_rules! share_columns {
    () => {
        "id, org_id, router_id, access_id, created_by, created_from, created_at, expires_at, \
         used_at, used_from, revoked_at"
    };
}

fn share_from(r: &impl Get) -> Result<GrantShare> {
    Ok(GrantShare {
        id: r.parse("id")?,
        org_id: r.parse("org_id")?,
        router_id: r.parse("router_id")?,
        access_id: r.parse("access_id")?,
        created_by: r.text("created_by")?,
        created_from: r.opt_parse("created_from")?,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        used_at: r.opt_time("used_at")?,
        used_from: r.opt_parse("used_from")?,
        revoked_at: r.opt_time("revoked_at")?,
    })
}

impl Store {
    /// Records a share link and its audit entry in one transaction. `NotFound` unless
    /// the grant is the router's in `org`.
    pub async fn create_grant_share(&self, new: NewGrantShare) -> Result<GrantShare> {
        if !is_hash(&new.id_hash) {
            return Err(StoreError::Conflict(
                "a share link's id must be a sha-256 hex".into(),
            ));
        }
        let share = GrantShare {
            id: new.id,
            org_id: new.org_id,
            router_id: new.router_id,
            access_id: new.access_id,
            created_by: new.created_by.clone(),
            created_from: new.created_from,
            created_at: trunc(new.at),
            expires_at: trunc(new.expires_at),
            used_at: None,
            used_from: None,
            revoked_at: None,
        };
        db_write!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
            let inserted = sqlx::query(
                "INSERT INTO grant_shares (id, id_hash, org_id, router_id, access_id, created_by, \
                 created_from, created_at, expires_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE EXISTS \
                 (SELECT 1 FROM transient_access WHERE id = $5 AND org_id = $3 AND router_id = $4)",
            )
            .bind(new.id.to_string())
            .bind(&new.id_hash)
            .bind(new.org_id.to_string())
            .bind(new.router_id.to_string())
            .bind(new.access_id.to_string())
            .bind(&new.created_by)
            .bind(new.created_from.map(|a| a.to_string()))
            .bind(ms(share.created_at))
            .bind(ms(share.expires_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::unique(e, || "this share link exists already".to_owned()))?
            .rows_affected();
            if inserted != 1 {
                return Err(StoreError::NotFound);
            }
            insert_audit!(&mut *tx, &new.audit);
            tx.commit().await?;
        });
        Ok(share)
    }

    /// Opens the link with this hash if it is unused, unrevoked and not expired at
    /// `at`, noting when and from where: of any number of concurrent calls, one alone
    /// gets `Taken`.
    pub async fn take_grant_share(
        &self,
        id_hash: &str,
        at: DateTime<Utc>,
        from: Option<IpAddr>,
    ) -> Result<ShareUse> {
        if !is_hash(id_hash) {
            return Ok(ShareUse::Unknown);
        }
        let taken = {
            let _writer = self.sqlite_writer().await;
            db_write!(self, |p, pg| {
                let row = sqlx::query(concat!(
                    "UPDATE grant_shares SET used_at = $2, used_from = $3 \
                     WHERE id_hash = $1 AND used_at IS NULL AND revoked_at IS NULL \
                     AND expires_at > $2 RETURNING ",
                    share_columns!()
                ))
                .bind(id_hash)
                .bind(ms(at))
                .bind(from.map(|a| a.to_string()))
                .fetch_optional(p)
                .await?;
                row.map(|r| share_from(&r)).transpose()?
            })
        };
        if let Some(share) = taken {
            return Ok(ShareUse::Taken(share));
        }
        Ok(self
            .find_grant_share(id_hash)
            .await?
            .map_or(ShareUse::Unknown, ShareUse::Spent))
    }

    /// The link with this hash, whatever its state (for the page before opening).
    pub async fn find_grant_share(&self, id_hash: &str) -> Result<Option<GrantShare>> {
        if !is_hash(id_hash) {
            return Ok(None);
        }
        Ok(db!(self, |p, pg| {
            let row = sqlx::query(concat!(
                "SELECT ",
                share_columns!(),
                " FROM grant_shares WHERE id_hash = $1"
            ))
            .bind(id_hash)
            .fetch_optional(p)
            .await?;
            row.map(|r| share_from(&r)).transpose()?
        }))
    }

    /// A grant's share links, newest first.
    pub async fn list_grant_shares(&self, org: OrgId, access: AccessId) -> Result<Vec<GrantShare>> {
        Ok(db!(self, |p, pg| {
            let rows = sqlx::query(concat!(
                "SELECT ",
                share_columns!(),
                " FROM grant_shares WHERE org_id = $1 AND access_id = $2 ORDER BY created_at DESC"
            ))
            .bind(org.to_string())
            .bind(access.to_string())
            .fetch_all(p)
            .await?;
            rows.iter().map(share_from).collect::<Result<Vec<_>>>()?
        }))
    }

    /// Revokes a link of the grant (with its audit entry); `NotFound` if the grant has
    /// no such link in `org`. Revoking one already opened or revoked changes nothing.
    pub async fn revoke_grant_share(
        &self,
        org: OrgId,
        access: AccessId,
        id: uuid::Uuid,
        at: DateTime<Utc>,
        audit: NewAudit,
    ) -> Result<GrantShare> {
        db_write!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
            let row = sqlx::query(concat!(
                "SELECT ",
                share_columns!(),
                " FROM grant_shares WHERE id = $1 AND org_id = $2 AND access_id = $3"
            ))
            .bind(id.to_string())
            .bind(org.to_string())
            .bind(access.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else {
                return Err(StoreError::NotFound);
            };
            let mut share = share_from(&row)?;
            if share.revoked_at.is_none() && share.used_at.is_none() {
                sqlx::query("UPDATE grant_shares SET revoked_at = $2 WHERE id = $1")
                    .bind(id.to_string())
                    .bind(ms(at))
                    .execute(&mut *tx)
                    .await?;
                share.revoked_at = Some(trunc(at));
                insert_audit!(&mut *tx, &audit);
            }
            tx.commit().await?;
            Ok(share)
        })
    }
}
