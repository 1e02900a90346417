//! One-time WinBox tickets: made with their audit entry in one transaction when a WinBox
//! grant's credentials are read, and taken at most once, before they expire, by the
//! launcher's redemption. Stored by the SHA-256 (hex) of the ticket: the store never
//! sees the ticket itself. Time is a parameter.

use std::net::IpAddr;

use chrono::{DateTime, Duration, Utc};
use domain::{AccessId, OrgId, RouterId, TokenId, UserId};

use crate::Store;
use crate::db::{Get, WritePool as _, db, db_write, ms, trunc};
use crate::error::{Result, StoreError};
use crate::jobs::insert_audit;
use crate::records::NewAudit;
use crate::sessions::is_hash;

/// Tickets are kept this long past their end (so a late second use is recognised and
/// audited as such), then removed when a later ticket is made.
const KEPT_AFTER_EXPIRY: Duration = Duration::days(1);

/// A ticket as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WinboxTicket {
    pub org_id: OrgId,
    pub router_id: RouterId,
    pub access_id: AccessId,
    /// Who asked, as the audit log names them (a user name or `token:<name>`).
    pub issued_to: String,
    /// The user behind `issued_to`, when a user asked.
    pub user_id: Option<UserId>,
    /// The API token behind `issued_to`, when a token asked.
    pub token_id: Option<TokenId>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub used_from: Option<IpAddr>,
}

/// Input of `create_winbox_ticket`.
#[derive(Debug, Clone)]
pub struct NewWinboxTicket {
    /// SHA-256 of the ticket, hex.
    pub id_hash: String,
    pub org_id: OrgId,
    pub router_id: RouterId,
    pub access_id: AccessId,
    pub issued_to: String,
    pub user_id: Option<UserId>,
    pub token_id: Option<TokenId>,
    pub at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// Written in the same transaction as the ticket.
    pub audit: NewAudit,
}

/// What trying to take a ticket found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TicketUse {
    /// No such ticket (or not the shape of one).
    Unknown,
    /// The ticket exists but was used already or has expired; nothing changed.
    Spent(WinboxTicket),
    /// Taken now, by this call alone.
    Taken(WinboxTicket),
}

macro_rules! ticket_columns {
    () => {
        "org_id, router_id, access_id, issued_to, user_id, token_id, created_at, expires_at, \
         used_at, used_from"
    };
}

fn ticket_from(r: &impl Get) -> Result<WinboxTicket> {
    Ok(WinboxTicket {
        org_id: r.parse("org_id")?,
        router_id: r.parse("router_id")?,
        access_id: r.parse("access_id")?,
        issued_to: r.text("issued_to")?,
        user_id: r.opt_parse("user_id")?,
        token_id: r.opt_parse("token_id")?,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        used_at: r.opt_time("used_at")?,
        used_from: r.opt_parse("used_from")?,
    })
}

impl Store {
    /// Records a ticket and its audit entry in one transaction (and forgets tickets that
    /// ended more than a day ago). `NotFound` unless the grant is the router's in `org`.
    pub async fn create_winbox_ticket(&self, new: NewWinboxTicket) -> Result<WinboxTicket> {
        if !is_hash(&new.id_hash) {
            return Err(StoreError::Conflict(
                "a ticket id must be a sha-256 hex".into(),
            ));
        }
        let ticket = WinboxTicket {
            org_id: new.org_id,
            router_id: new.router_id,
            access_id: new.access_id,
            issued_to: new.issued_to.clone(),
            user_id: new.user_id,
            token_id: new.token_id,
            created_at: trunc(new.at),
            expires_at: trunc(new.expires_at),
            used_at: None,
            used_from: None,
        };
        db_write!(self, |p, pg| {
            let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
            sqlx::query("DELETE FROM winbox_tickets WHERE expires_at < $1")
                .bind(ms(new.at - KEPT_AFTER_EXPIRY))
                .execute(&mut *tx)
                .await?;
            let inserted = sqlx::query(
                "INSERT INTO winbox_tickets (id_hash, org_id, router_id, access_id, issued_to, \
                 user_id, token_id, created_at, expires_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 WHERE EXISTS \
                 (SELECT 1 FROM transient_access WHERE id = $4 AND org_id = $2 AND router_id = $3)",
            )
            .bind(&new.id_hash)
            .bind(new.org_id.to_string())
            .bind(new.router_id.to_string())
            .bind(new.access_id.to_string())
            .bind(&new.issued_to)
            .bind(new.user_id.map(|u| u.to_string()))
            .bind(new.token_id.map(|t| t.to_string()))
            .bind(ms(ticket.created_at))
            .bind(ms(ticket.expires_at))
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::unique(e, || "this ticket exists already".to_owned()))?
            .rows_affected();
            if inserted != 1 {
                return Err(StoreError::NotFound);
            }
            insert_audit!(&mut *tx, &new.audit);
            tx.commit().await?;
        });
        Ok(ticket)
    }

    /// Takes the ticket with this hash if it is unused and not expired at `at`, noting
    /// when and from where: of any number of concurrent calls, one alone gets `Taken`.
    pub async fn take_winbox_ticket(
        &self,
        id_hash: &str,
        at: DateTime<Utc>,
        from: Option<IpAddr>,
    ) -> Result<TicketUse> {
        if !is_hash(id_hash) {
            return Ok(TicketUse::Unknown);
        }
        let taken = {
            let _writer = self.sqlite_writer().await;
            db_write!(self, |p, pg| {
                let row = sqlx::query(concat!(
                    "UPDATE winbox_tickets SET used_at = $2, used_from = $3 \
                     WHERE id_hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING ",
                    ticket_columns!()
                ))
                .bind(id_hash)
                .bind(ms(at))
                .bind(from.map(|a| a.to_string()))
                .fetch_optional(p)
                .await?;
                row.map(|r| ticket_from(&r)).transpose()?
            })
        };
        if let Some(ticket) = taken {
            return Ok(TicketUse::Taken(ticket));
        }
        let found = db!(self, |p, pg| {
            let row = sqlx::query(concat!(
                "SELECT ",
                ticket_columns!(),
                " FROM winbox_tickets WHERE id_hash = $1"
            ))
            .bind(id_hash)
            .fetch_optional(p)
            .await?;
            row.map(|r| ticket_from(&r)).transpose()?
        });
        Ok(found.map_or(TicketUse::Unknown, TicketUse::Spent))
    }
}
