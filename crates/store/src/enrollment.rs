//! Onboarding's single-use enrolment tokens: issued for a router (revoking the one it
//! had open), looked up when the router fetches its script, and spent by the one
//! completion that records the router's public key and facts, in one transaction with
//! its audit entry. Stored by the SHA-256 (hex) of the token: the store never sees the
//! token itself. Time is a parameter.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use domain::{OrgId, RouterId};

use crate::Store;
use crate::db::{Get, WritePool as _, db, db_write, ms, trunc};
use crate::error::{Result, StoreError};
use crate::jobs::insert_audit;
use crate::records::{NewAudit, Router};
use crate::sessions::is_hash;

/// A token as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enrollment {
    pub org_id: OrgId,
    pub router_id: RouterId,
    /// Who issued it, as the audit log names them.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub spent_at: Option<DateTime<Utc>>,
    pub spent_from: Option<IpAddr>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// Whether a token can still be used, and if not why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnrollmentState {
    Open,
    Spent,
    Revoked,
    Expired,
}

impl Enrollment {
    /// The token's state at `at` (spent and revoked win over expired).
    pub fn state(&self, at: DateTime<Utc>) -> EnrollmentState {
        if self.spent_at.is_some() {
            EnrollmentState::Spent
        } else if self.revoked_at.is_some() {
            EnrollmentState::Revoked
        } else if self.expires_at <= at {
            EnrollmentState::Expired
        } else {
            EnrollmentState::Open
        }
    }
}

/// Input of `issue_enrollment`.
#[derive(Debug, Clone)]
pub struct NewEnrollment {
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    pub org_id: OrgId,
    pub router_id: RouterId,
    pub created_by: String,
    pub at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Written in the same transaction as the token.
    pub audit: NewAudit,
}

/// What an enrolling router reported, already validated by the caller.
#[derive(Debug, Clone)]
pub struct EnrollmentReport {
    /// Its WireGuard public key, base64 of 32 bytes.
    pub public_key: String,
    pub identity: String,
    pub routeros_version: String,
    pub board_name: String,
    /// `None` when the router has none (a CHR).
    pub serial_number: Option<String>,
    pub api_port: u16,
    pub ssh_port: u16,
    pub winbox_port: u16,
    /// Where the report came from.
    pub from: Option<IpAddr>,
}

/// What completing an enrolment found.
#[derive(Debug, Clone)]
pub enum EnrollmentUse {
    /// No such token (or not the shape of one).
    Unknown,
    /// The token exists but is spent, revoked or expired: nothing changed.
    Closed(Enrollment),
    /// Spent now, by this call alone; the router as it is now.
    Done(Box<Router>, Enrollment),
}

macro_rules! enrollment_columns {
    () => {
        "org_id, router_id, created_by, created_at, expires_at, spent_at, spent_from, revoked_at"
    };
}

fn enrollment_from(r: &impl Get) -> Result<Enrollment> {
    Ok(Enrollment {
        org_id: r.parse("org_id")?,
        router_id: r.parse("router_id")?,
        created_by: r.text("created_by")?,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        spent_at: r.opt_time("spent_at")?,
        spent_from: r.opt_parse("spent_from")?,
        revoked_at: r.opt_time("revoked_at")?,
    })
}

/// Why a report clashes with another router, worded for the one who pasted the line.
fn clash(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            let text = format!("{} {}", db.message(), db.constraint().unwrap_or_default());
            if text.contains("serial") {
                StoreError::Conflict(
                    "serial: another router of this organisation has this serial number".into(),
                )
            } else {
                StoreError::Conflict("public_key: another router uses this public key".into())
            }
        }
        _ => e.into(),
    }
}

impl Store {
    /// Records a new token for a router of `org`, revoking the one it had open, with its
    /// audit entry, in one transaction. `NotFound` unless the router is `org`'s.
    pub async fn issue_enrollment(&self, new: NewEnrollment) -> Result<Enrollment> {
        if !is_hash(&new.token_hash) {
            return Err(StoreError::Conflict(
                "an enrolment token must be stored as a sha-256 hex".into(),
            ));
        }
        let token = Enrollment {
            org_id: new.org_id,
            router_id: new.router_id,
            created_by: new.created_by.clone(),
            created_at: trunc(new.at),
            expires_at: trunc(new.expires_at),
            spent_at: None,
            spent_from: None,
            revoked_at: None,
        };
        db_write!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
            sqlx::query(
                "UPDATE enrollment_tokens SET revoked_at = $2 \
                 WHERE router_id = $1 AND spent_at IS NULL AND revoked_at IS NULL",
            )
            .bind(new.router_id.to_string())
            .bind(ms(new.at))
            .execute(&mut *tx)
            .await?;
            let inserted = sqlx::query(
                "INSERT INTO enrollment_tokens (token_hash, org_id, router_id, created_by, \
                 created_at, expires_at) SELECT $1, $2, $3, $4, $5, $6 \
                 WHERE EXISTS (SELECT 1 FROM routers WHERE id = $3 AND org_id = $2)",
            )
            .bind(&new.token_hash)
            .bind(new.org_id.to_string())
            .bind(new.router_id.to_string())
            .bind(&new.created_by)
            .bind(ms(token.created_at))
            .bind(ms(token.expires_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::unique(e, || "this enrolment token exists already".into()))?
            .rows_affected();
            if inserted != 1 {
                return Err(StoreError::NotFound);
            }
            insert_audit!(&mut *tx, &new.audit);
            tx.commit().await?;
        });
        Ok(token)
    }

    /// The token with this hash, whatever its state (`None` when unknown).
    pub async fn find_enrollment(&self, token_hash: &str) -> Result<Option<Enrollment>> {
        if !is_hash(token_hash) {
            return Ok(None);
        }
        db!(self, |p, pg| {
            let row = sqlx::query(concat!(
                "SELECT ",
                enrollment_columns!(),
                " FROM enrollment_tokens WHERE token_hash = $1"
            ))
            .bind(token_hash)
            .fetch_optional(p)
            .await?;
            row.map(|r| enrollment_from(&r)).transpose()
        })
    }

    /// The open (neither spent nor revoked) token of each router of `org` that has one,
    /// expired ones included: what the portal shows of pending sites.
    pub async fn open_enrollments(&self, org: OrgId) -> Result<Vec<Enrollment>> {
        db!(self, |p, pg| {
            let rows = sqlx::query(concat!(
                "SELECT ",
                enrollment_columns!(),
                " FROM enrollment_tokens WHERE org_id = $1 AND spent_at IS NULL \
                 AND revoked_at IS NULL ORDER BY created_at"
            ))
            .bind(org.to_string())
            .fetch_all(p)
            .await?;
            rows.iter().map(enrollment_from).collect()
        })
    }

    /// Revokes the open token of a router of `org` (none open is fine); true when one
    /// was revoked.
    pub async fn revoke_enrollment(
        &self,
        org: OrgId,
        router: RouterId,
        at: DateTime<Utc>,
    ) -> Result<bool> {
        let _writer = self.sqlite_writer().await;
        let changed = db_write!(self, |p, pg| {
            sqlx::query(
                "UPDATE enrollment_tokens SET revoked_at = $3 WHERE router_id = $1 \
                 AND org_id = $2 AND spent_at IS NULL AND revoked_at IS NULL",
            )
            .bind(router.to_string())
            .bind(org.to_string())
            .bind(ms(at))
            .execute(p)
            .await?
            .rows_affected()
        });
        Ok(changed > 0)
    }

    /// Completes an enrolment: if the token is open at `at`, records the router's public
    /// key, serial number, facts and service ports, spends the token and writes `audit`
    /// (its `target` and `org_id` are set here), all in one transaction; of concurrent
    /// calls one alone gets `Done`. A key another router uses, or a serial number
    /// another router of the organisation has, is `Conflict` naming the field (nothing
    /// changes, the token stays open).
    pub async fn complete_enrollment(
        &self,
        token_hash: &str,
        at: DateTime<Utc>,
        report: &EnrollmentReport,
        audit: NewAudit,
    ) -> Result<EnrollmentUse> {
        if !is_hash(token_hash) {
            return Ok(EnrollmentUse::Unknown);
        }
        let spent = db_write!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
            let lock = if pg {
                concat!(
                    "SELECT ",
                    enrollment_columns!(),
                    " FROM enrollment_tokens WHERE token_hash = $1 FOR UPDATE"
                )
            } else {
                concat!(
                    "SELECT ",
                    enrollment_columns!(),
                    " FROM enrollment_tokens WHERE token_hash = $1"
                )
            };
            let Some(row) = sqlx::query(lock)
                .bind(token_hash)
                .fetch_optional(&mut *tx)
                .await?
            else {
                return Ok(EnrollmentUse::Unknown);
            };
            let token = enrollment_from(&row)?;
            if token.state(at) != EnrollmentState::Open {
                return Ok(EnrollmentUse::Closed(token));
            }
            let router = token.router_id.to_string();
            let org = token.org_id.to_string();
            let key_taken = sqlx::query(
                "SELECT COUNT(*) AS n FROM routers WHERE tunnel_public_key = $1 AND id <> $2",
            )
            .bind(&report.public_key)
            .bind(&router)
            .fetch_one(&mut *tx)
            .await?
            .int("n")?;
            if key_taken > 0 {
                return Err(StoreError::Conflict(
                    "public_key: another router uses this public key".into(),
                ));
            }
            if let Some(serial) = &report.serial_number {
                let serial_taken = sqlx::query(
                    "SELECT COUNT(*) AS n FROM routers \
                     WHERE org_id = $1 AND serial_number = $2 AND id <> $3",
                )
                .bind(&org)
                .bind(serial)
                .bind(&router)
                .fetch_one(&mut *tx)
                .await?
                .int("n")?;
                if serial_taken > 0 {
                    return Err(StoreError::Conflict(
                        "serial: another router of this organisation has this serial number".into(),
                    ));
                }
            }
            sqlx::query(
                "UPDATE routers SET tunnel_public_key = $3, serial_number = $4, identity = $5, \
                 routeros_version = $6, board_name = $7, api_port = $8, ssh_port = $9, \
                 winbox_port = $10, updated_at = $11 WHERE id = $1 AND org_id = $2",
            )
            .bind(&router)
            .bind(&org)
            .bind(&report.public_key)
            .bind(&report.serial_number)
            .bind(&report.identity)
            .bind(&report.routeros_version)
            .bind(&report.board_name)
            .bind(i64::from(report.api_port))
            .bind(i64::from(report.ssh_port))
            .bind(i64::from(report.winbox_port))
            .bind(ms(at))
            .execute(&mut *tx)
            .await
            .map_err(clash)?;
            sqlx::query(
                "UPDATE enrollment_tokens SET spent_at = $2, spent_from = $3 \
                 WHERE token_hash = $1",
            )
            .bind(token_hash)
            .bind(ms(at))
            .bind(report.from.map(|a| a.to_string()))
            .execute(&mut *tx)
            .await?;
            let audit = NewAudit {
                org_id: token.org_id,
                target: Some(format!("router:{}", token.router_id)),
                ..audit
            };
            insert_audit!(&mut *tx, &audit);
            tx.commit().await?;
            Enrollment {
                spent_at: Some(trunc(at)),
                spent_from: report.from,
                ..token
            }
        });
        let router = self.get_router(spent.org_id, spent.router_id).await?;
        Ok(EnrollmentUse::Done(Box::new(router), spent))
    }

    /// The serial number a router reported when it enrolled.
    pub async fn router_serial(&self, org: OrgId, id: RouterId) -> Result<Option<String>> {
        let row = db!(self, |p, pg| {
            sqlx::query("SELECT serial_number FROM routers WHERE id = $1 AND org_id = $2")
                .bind(id.to_string())
                .bind(org.to_string())
                .fetch_optional(p)
                .await?
                .map(|r| r.opt_text("serial_number"))
                .transpose()?
        });
        row.ok_or(StoreError::NotFound)
    }
}
