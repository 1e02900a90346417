//! Transient access and transient forwards: creation with gateway-port allocation in one
//! transaction (grant, port rows, audit entry, first job), reads, expiry changes, and the
//! life cycle as compare-and-set transitions that release ports at final states.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::{AccessId, ForwardId, GrantStatus, JobId, OrgId, RouterId, TokenId};

use crate::Store;
use crate::db::{Get, Pool, WritePool, db, db_write, ms, trunc, values_list};
use crate::error::{Result, StoreError};
use crate::grouped::Write;
use crate::jobs::{insert_audit, insert_job};
use crate::records::{
    ListStamp, LiveCounts, NewAccess, NewForward, Page, TransientAccess, TransientForward,
};
use crate::secret::{Secret, Slot};

/// How many candidate ports `claim_port!` tries blindly before it reads which are taken.
const BLIND_TRIES: usize = 4;

/// Claims the first free port among `$candidates` in a ports table for `$scope` (region
/// or router) on behalf of `$grant`, inside transaction `$tx`. Evaluates to
/// `Option<u16>`. The first few candidates are tried blindly (one statement each: the
/// common case when ports are mostly free); after that the taken ports are read once,
/// so a crowded range costs one query rather than one per port. Each insert is
/// `ON CONFLICT DO NOTHING`: a port taken by a concurrent transaction is skipped, never
/// shared (on PostgreSQL the insert waits for that transaction to end).
macro_rules! claim_port {
    ($tx:ident, $taken_sql:literal, $insert_sql:literal, $scope:expr, $candidates:expr, $grant:expr) => {{
        let scope: String = $scope;
        let candidates: &[u16] = $candidates;
        let mut taken: Option<HashSet<i64>> = None;
        let mut claimed = None;
        for (tried, &port) in candidates.iter().enumerate() {
            if tried == BLIND_TRIES {
                let rows = sqlx::query($taken_sql)
                    .bind(&scope)
                    .fetch_all(&mut *$tx)
                    .await?;
                taken = Some(
                    rows.iter()
                        .map(|r| r.int("port"))
                        .collect::<Result<HashSet<i64>>>()?,
                );
            }
            if port == 0 || taken.as_ref().is_some_and(|t| t.contains(&i64::from(port))) {
                continue;
            }
            let inserted = sqlx::query($insert_sql)
                .bind(&scope)
                .bind(i64::from(port))
                .bind($grant)
                .execute(&mut *$tx)
                .await?
                .rows_affected();
            if inserted == 1 {
                claimed = Some(port);
                break;
            }
        }
        claimed
    }};
}

macro_rules! claim_gateway_port {
    ($tx:ident, $region:expr, $candidates:expr, $grant:expr) => {
        claim_port!(
            $tx,
            "SELECT port FROM gateway_ports WHERE region_id = $1",
            "INSERT INTO gateway_ports (region_id, port, grant_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            $region,
            $candidates,
            $grant
        )
    };
}

/// The columns `access_from` reads, as a select list of table `transient_access`.
macro_rules! access_columns {
    () => {
        "id, org_id, router_id, region_id, access_type, access, allow_rfc1918, allow_from, \
         username, port, entry_point, status, created_by, created_at, expires_at, authorized_at, \
         ended_at, revoked_early, failure_reason, terminal"
    };
}

macro_rules! access_sql {
    ($tail:literal) => {
        concat!(
            "SELECT ",
            access_columns!(),
            " FROM transient_access ",
            $tail
        )
    };
}

macro_rules! forward_sql {
    ($tail:literal) => {
        concat!(
            "SELECT id, org_id, router_id, region_id, dst_address, dst_port, masquerade, allow_from, \
             port, router_port, entry_point, status, created_by, created_at, expires_at, \
             authorized_at, ended_at, revoked_early, failure_reason FROM transient_forwards ",
            $tail
        )
    };
}

fn access_from(r: &impl Get) -> Result<TransientAccess> {
    Ok(TransientAccess {
        id: r.parse("id")?,
        org_id: r.parse("org_id")?,
        router_id: r.parse("router_id")?,
        region_id: r.parse("region_id")?,
        access_type: r.parse("access_type")?,
        access: r.parse("access")?,
        allow_rfc1918: r.flag("allow_rfc1918")?,
        allow_from: r.parse("allow_from")?,
        username: r.text("username")?,
        port: r.port("port")?,
        entry_point: r.text("entry_point")?,
        status: r.parse("status")?,
        created_by: r.text("created_by")?,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        authorized_at: r.opt_time("authorized_at")?,
        ended_at: r.opt_time("ended_at")?,
        revoked_early: r.flag("revoked_early")?,
        failure_reason: r.opt_text("failure_reason")?,
        terminal: r.flag("terminal")?,
    })
}

fn forward_from(r: &impl Get) -> Result<TransientForward> {
    Ok(TransientForward {
        id: r.parse("id")?,
        org_id: r.parse("org_id")?,
        router_id: r.parse("router_id")?,
        region_id: r.parse("region_id")?,
        dst_address: r.parse("dst_address")?,
        dst_port: r.port("dst_port")?,
        masquerade: r.flag("masquerade")?,
        allow_from: r.parse("allow_from")?,
        port: r.port("port")?,
        router_port: r.port("router_port")?,
        entry_point: r.text("entry_point")?,
        status: r.parse("status")?,
        created_by: r.text("created_by")?,
        created_at: r.time("created_at")?,
        expires_at: r.time("expires_at")?,
        authorized_at: r.opt_time("authorized_at")?,
        ended_at: r.opt_time("ended_at")?,
        revoked_early: r.flag("revoked_early")?,
        failure_reason: r.opt_text("failure_reason")?,
    })
}

/// What a transition writes besides the status.
pub(crate) struct Ending {
    pub(crate) ended_at: Option<i64>,
    pub(crate) revoked_early: bool,
}

pub(crate) fn check_transition(
    current: GrantStatus,
    from: &[GrantStatus],
    to: GrantStatus,
) -> Result<()> {
    if !from.contains(&current) || !current.can_become(to) {
        return Err(StoreError::Conflict(format!(
            "the grant is {current}; it cannot become {to} now"
        )));
    }
    Ok(())
}

/// A closing before expiry, or a revocation, is an early end.
pub(crate) fn ending(to: GrantStatus, at: DateTime<Utc>, expires_at: i64) -> Ending {
    Ending {
        ended_at: to.is_final().then(|| ms(at)),
        revoked_early: to == GrantStatus::Revoked
            || (to == GrantStatus::Closing && ms(at) < expires_at),
    }
}

/// Inside transaction `$tx`, moves grant `$id` (text) of `$table` from a status in
/// `$from` to `$to` if `GrantStatus::can_become` allows it: a final status sets
/// `ended_at` and releases its ports (`$extra_release` too, when not empty); `revoked`,
/// or `closing` before `expires_at`, sets `revoked_early`; `$reason` is kept as
/// `failure_reason`. Locks the grant's row first on PostgreSQL (the lock order is a
/// grant before its router, and before its jobs). Evaluates to `Result<GrantStatus>`:
/// the status it had, `Conflict` or `NotFound` (database errors return from the
/// enclosing function).
macro_rules! move_grant {
    ($tx:ident, $pg:ident, $table:literal, $extra_release:literal, $id:expr, $from:expr, $to:expr, $at:expr, $reason:expr) => {{
        let id: String = $id;
        let from: &[GrantStatus] = $from;
        let to: GrantStatus = $to;
        let at: DateTime<Utc> = $at;
        let reason: Option<String> = $reason;
        let current = if $pg {
            concat!("SELECT status, expires_at FROM ", $table, " WHERE id = $1 FOR UPDATE")
        } else {
            concat!("SELECT status, expires_at FROM ", $table, " WHERE id = $1")
        };
        let row = sqlx::query(current)
            .bind(&id)
            .fetch_optional(&mut *$tx)
            .await?;
        let checked = match &row {
            None => Err(StoreError::NotFound),
            Some(row) => {
                let status: GrantStatus = $crate::db::Get::parse(row, "status")?;
                $crate::grants::check_transition(status, from, to)
                    .map(|()| (status, $crate::db::Get::int(row, "expires_at")))
            }
        };
        match checked {
            Err(e) => Err(e),
            Ok((status, expires_at)) => {
                let end = $crate::grants::ending(to, at, expires_at?);
                let row = sqlx::query(concat!(
                    "UPDATE ", $table, " SET status = $2, ended_at = COALESCE($3, ended_at), \
                     revoked_early = (revoked_early OR $4), failure_reason = COALESCE($5, failure_reason) \
                     WHERE id = $1 AND status = $6"
                ))
                .bind(&id)
                .bind(to.as_str())
                .bind(end.ended_at)
                .bind(end.revoked_early)
                .bind(reason)
                .bind(status.as_str())
                .execute(&mut *$tx)
                .await?;
                if row.rows_affected() != 1 {
                    Err(StoreError::Conflict("the grant changed meanwhile; try again".into()))
                } else {
                    if to.is_final() {
                        sqlx::query("DELETE FROM gateway_ports WHERE grant_id = $1")
                            .bind(&id)
                            .execute(&mut *$tx)
                            .await?;
                        if !$extra_release.is_empty() {
                            sqlx::query($extra_release)
                                .bind(&id)
                                .execute(&mut *$tx)
                                .await?;
                        }
                    }
                    Ok(status)
                }
            }
        }
    }};
}
pub(crate) use move_grant;

/// Generates the methods that are the same for both kinds of grant.
macro_rules! grant_methods {
    (
        kind: $kind:literal,
        table: $table:literal,
        record: $record:ty,
        id: $id:ty,
        select: $select:ident,
        from_row: $from_row:ident,
        extra_release: $extra_release:literal,
        get: $get:ident,
        get_any: $get_any:ident,
        list: $list:ident,
        list_live: $list_live:ident,
        set_expiry: $set_expiry:ident,
        transition: $transition:ident,
        set_authorized: $set_authorized:ident,
    ) => {
        impl Store {
            #[doc = concat!("A ", $kind, " of a router of `org`.")]
            pub async fn $get(&self, org: OrgId, router_id: RouterId, id: $id) -> Result<$record> {
                let grant = db!(self, |p, pg| {
                    let row = sqlx::query($select!("WHERE id = $1 AND org_id = $2 AND router_id = $3"))
                        .bind(id.to_string())
                        .bind(org.to_string())
                        .bind(router_id.to_string())
                        .fetch_optional(p)
                        .await?;
                    row.map(|r| $from_row(&r)).transpose()?
                });
                grant.ok_or(StoreError::NotFound)
            }

            #[doc = concat!("A ", $kind, " of any organisation, whatever its state, if it exists: for the gateways' bookkeeping.")]
            pub async fn $get_any(&self, id: $id) -> Result<Option<$record>> {
                db!(self, |p, pg| {
                    let row = sqlx::query($select!("WHERE id = $1"))
                        .bind(id.to_string())
                        .fetch_optional(p)
                        .await?;
                    row.map(|r| $from_row(&r)).transpose()
                })
            }

            #[doc = concat!(
                "The ", $kind, "s of a router of `org`, newest first: every one not yet final \
                 (live or closing), and with `ended` a window of the final ones (expired, revoked, \
                 failed; newest first, `Page` applied to them alone). One statement, so one \
                 snapshot. `NotFound` if the router is not in `org`."
            )]
            pub async fn $list(
                &self,
                org: OrgId,
                router_id: RouterId,
                ended: Option<Page>,
            ) -> Result<Vec<$record>> {
                let (limit, offset) = ended.map_or((0, 0), |p| (p.limit_i64(), p.offset_i64()));
                let grants = db!(self, |p, pg| {
                    let rows = sqlx::query(concat!(
                        $select!(
                            "WHERE router_id = $1 AND org_id = $2 \
                             AND status IN ('requested', 'provisioning', 'active', 'closing') "
                        ),
                        "UNION ALL SELECT * FROM (",
                        $select!(
                            "WHERE router_id = $1 AND org_id = $2 \
                             AND status IN ('expired', 'revoked', 'failed') \
                             ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4"
                        ),
                        ") AS ended ORDER BY created_at DESC, id DESC"
                    ))
                    .bind(router_id.to_string())
                    .bind(org.to_string())
                    .bind(limit)
                    .bind(offset)
                    .fetch_all(p)
                    .await?;
                    rows.iter().map($from_row).collect::<Result<Vec<_>>>()?
                });
                if grants.is_empty() {
                    // Tell an empty list from a router that is not the caller's.
                    self.get_router(org, router_id).await?;
                }
                Ok(grants)
            }

            #[doc = concat!("Every ", $kind, " not yet final (live or closing), in all organisations, soonest expiry first: for the orchestrator.")]
            pub async fn $list_live(&self) -> Result<Vec<$record>> {
                db!(self, |p, pg| {
                    let rows = sqlx::query($select!(
                        "WHERE status IN ('requested', 'provisioning', 'active', 'closing') ORDER BY expires_at, id"
                    ))
                    .fetch_all(p)
                    .await?;
                    rows.iter().map($from_row).collect()
                })
            }

            #[doc = concat!("Moves the end of a live ", $kind, " (extend or shorten); `Conflict` if it is not live.")]
            pub async fn $set_expiry(
                &self,
                org: OrgId,
                router_id: RouterId,
                id: $id,
                expires_at: DateTime<Utc>,
            ) -> Result<$record> {
                let _writer = self.sqlite_writer().await;
                let changed = db_write!(self, |p, pg| {
                    sqlx::query(concat!(
                        "UPDATE ", $table, " SET expires_at = $4 WHERE id = $1 AND org_id = $2 \
                         AND router_id = $3 AND status IN ('requested', 'provisioning', 'active')"
                    ))
                    .bind(id.to_string())
                    .bind(org.to_string())
                    .bind(router_id.to_string())
                    .bind(ms(expires_at))
                    .execute(p)
                    .await?
                    .rows_affected()
                });
                let grant = self.$get(org, router_id, id).await?;
                if changed == 0 {
                    return Err(StoreError::Conflict(format!(
                        "the grant is {}; only a live grant can be changed",
                        grant.status
                    )));
                }
                Ok(grant)
            }

            #[doc = concat!(
                "Compare-and-set on the life cycle of a ", $kind, ": moves it to `to` if its status is in `from` \
                 and `GrantStatus::can_become` allows it, else `Conflict`. A final status sets `ended_at` \
                 and releases its ports; `revoked`, or `closing` before `expires_at`, sets `revoked_early`; \
                 `reason` is kept as `failure_reason`. Any organisation: for the orchestrator and the API \
                 after it checked the grant is the caller's."
            )]
            pub async fn $transition(
                &self,
                id: $id,
                from: &[GrantStatus],
                to: GrantStatus,
                at: DateTime<Utc>,
                reason: Option<String>,
            ) -> Result<$record> {
                db_write!(self, |p, pg| {
                    let (_guard, mut tx) = p.begin_write(&self.inner.write_lock).await?;
                    move_grant!(tx, pg, $table, $extra_release, id.to_string(), from, to, at, reason)?;
                    let row = sqlx::query($select!("WHERE id = $1"))
                        .bind(id.to_string())
                        .fetch_one(&mut *tx)
                        .await?;
                    let grant = $from_row(&row)?;
                    tx.commit().await?;
                    Ok(grant)
                })
            }

            #[doc = concat!("Records when a ", $kind, " was first used; true if set now, false if it already was.")]
            pub async fn $set_authorized(&self, id: $id, at: DateTime<Utc>) -> Result<bool> {
                let _writer = self.sqlite_writer().await;
                let changed = db_write!(self, |p, pg| {
                    sqlx::query(concat!(
                        "UPDATE ", $table, " SET authorized_at = $2 WHERE id = $1 AND authorized_at IS NULL"
                    ))
                    .bind(id.to_string())
                    .bind(ms(at))
                    .execute(p)
                    .await?
                    .rows_affected()
                });
                if changed == 1 {
                    return Ok(true);
                }
                let exists = db!(self, |p, pg| {
                    sqlx::query(concat!("SELECT id FROM ", $table, " WHERE id = $1"))
                        .bind(id.to_string())
                        .fetch_optional(p)
                        .await?
                        .is_some()
                });
                if exists { Ok(false) } else { Err(StoreError::NotFound) }
            }
        }
    };
}

grant_methods! {
    kind: "transient access",
    table: "transient_access",
    record: TransientAccess,
    id: AccessId,
    select: access_sql,
    from_row: access_from,
    extra_release: "",
    get: get_access,
    get_any: get_access_any_org,
    list: list_access,
    list_live: list_live_access,
    set_expiry: set_access_expiry,
    transition: transition_access,
    set_authorized: set_access_authorized,
}

grant_methods! {
    kind: "transient forward",
    table: "transient_forwards",
    record: TransientForward,
    id: ForwardId,
    select: forward_sql,
    from_row: forward_from,
    extra_release: "DELETE FROM router_ports WHERE grant_id = $1",
    get: get_forward,
    get_any: get_forward_any_org,
    list: list_forwards,
    list_live: list_live_forwards,
    set_expiry: set_forward_expiry,
    transition: transition_forward,
    set_authorized: set_forward_authorized,
}

/// The first job of a grant, with `grant_id` in its payload: the grant's id is made
/// here, so the caller could not name it.
fn naming_grant(job: &crate::records::NewJob, grant_id: &str) -> crate::records::NewJob {
    let mut job = job.clone();
    match &mut job.payload {
        serde_json::Value::Object(map) => {
            map.insert("grant_id".into(), grant_id.into());
        }
        other => *other = serde_json::json!({ "grant_id": grant_id }),
    }
    job
}

/// The router was deleted by a concurrent transaction after we looked it up.
fn router_gone(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => StoreError::NotFound,
        _ => e.into(),
    }
}

fn no_port(what: &str) -> StoreError {
    StoreError::Conflict(format!("no free {what} port among the candidates"))
}

/// A transient access ready to be written: its id made, its password sealed, its times
/// truncated to what is stored.
pub(crate) struct AccessRow {
    pub(crate) id: AccessId,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) sealed: Vec<u8>,
    pub(crate) new: NewAccess,
}

/// A transient forward ready to be written.
pub(crate) struct ForwardRow {
    pub(crate) id: ForwardId,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) expires_at: DateTime<Utc>,
    pub(crate) new: NewForward,
}

/// Generates, for one backend's connection type, the writes of a grant's creation:
/// its port rows, the grant, its audit entry and its first job, inside a transaction
/// (or savepoint) the caller opened and ends. On an error the caller rolls it back.
macro_rules! grant_writers {
    ($conn:ty, $access:ident, $forward:ident) => {
        /// Writes a transient access; the gateway port it took.
        pub(crate) async fn $access(tx: &mut $conn, a: &AccessRow) -> Result<u16> {
            let new = &a.new;
            let id = a.id.to_string();
            // The router is checked to be the organisation's by the grant's insert.
            let port = claim_gateway_port!(tx, new.region_id.to_string(), &new.port_candidates, &id)
                .ok_or_else(|| no_port("gateway"))?;
            let inserted = sqlx::query(
                "INSERT INTO transient_access (id, org_id, router_id, region_id, access_type, access, \
                 allow_rfc1918, allow_from, username, password, port, entry_point, status, created_by, \
                 created_at, expires_at, terminal) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17 \
                 WHERE EXISTS (SELECT 1 FROM routers WHERE id = $3 AND org_id = $2)",
            )
            .bind(&id)
            .bind(new.org_id.to_string())
            .bind(new.router_id.to_string())
            .bind(new.region_id.to_string())
            .bind(new.access_type.as_str())
            .bind(new.access.as_str())
            .bind(new.allow_rfc1918)
            .bind(new.allow_from.to_string())
            .bind(&new.username)
            .bind(&a.sealed)
            .bind(i64::from(port))
            .bind(&new.entry_point)
            .bind(GrantStatus::Requested.as_str())
            .bind(&new.created_by)
            .bind(ms(a.created_at))
            .bind(ms(a.expires_at))
            .bind(new.terminal)
            .execute(&mut *tx)
            .await
            .map_err(router_gone)?
            .rows_affected();
            if inserted != 1 {
                return Err(StoreError::NotFound);
            }
            insert_audit!(&mut *tx, &new.audit);
            if let Some(job) = &new.job {
                let job = &naming_grant(job, &id);
                insert_job!(&mut *tx, JobId::new(), job);
            }
            Ok(port)
        }

        /// Writes a transient forward; the gateway port and the router port it took.
        pub(crate) async fn $forward(tx: &mut $conn, f: &ForwardRow) -> Result<(u16, u16)> {
            let new = &f.new;
            let id = f.id.to_string();
            let port = claim_gateway_port!(tx, new.region_id.to_string(), &new.port_candidates, &id)
                .ok_or_else(|| no_port("gateway"))?;
            let router_port = claim_port!(
                tx,
                "SELECT port FROM router_ports WHERE router_id = $1",
                "INSERT INTO router_ports (router_id, port, grant_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                new.router_id.to_string(),
                &new.router_port_candidates,
                &id
            )
            .ok_or_else(|| no_port("router"))?;
            let inserted = sqlx::query(
                "INSERT INTO transient_forwards (id, org_id, router_id, region_id, dst_address, dst_port, \
                 masquerade, allow_from, port, router_port, entry_point, status, created_by, created_at, \
                 expires_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15 \
                 WHERE EXISTS (SELECT 1 FROM routers WHERE id = $3 AND org_id = $2)",
            )
            .bind(&id)
            .bind(new.org_id.to_string())
            .bind(new.router_id.to_string())
            .bind(new.region_id.to_string())
            .bind(new.dst_address.to_string())
            .bind(i64::from(new.dst_port))
            .bind(new.masquerade)
            .bind(new.allow_from.to_string())
            .bind(i64::from(port))
            .bind(i64::from(router_port))
            .bind(&new.entry_point)
            .bind(GrantStatus::Requested.as_str())
            .bind(&new.created_by)
            .bind(ms(f.created_at))
            .bind(ms(f.expires_at))
            .execute(&mut *tx)
            .await
            .map_err(router_gone)?
            .rows_affected();
            if inserted != 1 {
                return Err(StoreError::NotFound);
            }
            insert_audit!(&mut *tx, &new.audit);
            if let Some(job) = &new.job {
                let job = &naming_grant(job, &id);
                insert_job!(&mut *tx, JobId::new(), job);
            }
            Ok((port, router_port))
        }
    };
}

grant_writers!(
    sqlx::SqliteConnection,
    write_access_sqlite,
    write_forward_sqlite
);
grant_writers!(sqlx::PgConnection, write_access_pg, write_forward_pg);

/// Writes several transient accesses at once on SQLite, for a group commit: one
/// statement each for all their ports, grants, audit entries and jobs, however many
/// there are. SQLite's writer pays most for each statement's hand-over to its worker
/// thread, so a burst of creates costs a few statements instead of five each.
///
/// Only the common case is written here: the grant gets its first candidate port, its
/// router is its organisation's, and its job (if any) is for that router. Each other one
/// is `None`, with nothing of it left written, for the caller to write alone (which
/// tries the further candidates, or says what is wrong). On an error some rows may be
/// written: the caller rolls back to a savepoint taken before.
pub(crate) async fn write_accesses_sqlite(
    tx: &mut sqlx::SqliteConnection,
    rows: &[&AccessRow],
) -> Result<Vec<Option<u16>>> {
    /// A grant this path takes: its place in `rows`, its row and id, the port it asks.
    struct Taken<'a> {
        at: usize,
        row: &'a AccessRow,
        id: String,
        port: u16,
    }
    let mut taken: Vec<Taken> = rows
        .iter()
        .enumerate()
        .filter_map(|(at, row)| {
            let new = &row.new;
            let port = new.port_candidates.first().copied().filter(|p| *p != 0)?;
            let job_is_its_routers = new
                .job
                .as_ref()
                .is_none_or(|j| j.router_id == new.router_id && j.org_id == new.org_id);
            job_is_its_routers.then(|| Taken {
                at,
                row,
                id: row.id.to_string(),
                port,
            })
        })
        .collect();
    let mut written: Vec<Option<u16>> = vec![None; rows.len()];
    if taken.is_empty() {
        return Ok(written);
    }

    // Their ports: a port another grant holds (or one of this batch asked first) is
    // skipped here, and that grant goes the long way.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO gateway_ports (region_id, port, grant_id) VALUES {} \
         ON CONFLICT DO NOTHING RETURNING grant_id",
        values_list(taken.len(), 3, false)
    )))
    .persistent(false);
    for t in &taken {
        query = query
            .bind(t.row.new.region_id.to_string())
            .bind(i64::from(t.port))
            .bind(&t.id);
    }
    let ported: HashSet<String> = query
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.text("grant_id"))
        .collect::<Result<_>>()?;
    taken.retain(|t| ported.contains(&t.id));
    if taken.is_empty() {
        return Ok(written);
    }

    // The grants, each only if its router is its organisation's.
    const GRANT_COLUMNS: usize = 17;
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO transient_access (id, org_id, router_id, region_id, access_type, access, \
         allow_rfc1918, allow_from, username, password, port, entry_point, status, created_by, \
         created_at, expires_at, terminal) \
         SELECT {} FROM (VALUES {}) AS v \
         WHERE EXISTS (SELECT 1 FROM routers r WHERE r.id = v.column3 AND r.org_id = v.column2) \
         RETURNING id",
        (1..=GRANT_COLUMNS)
            .map(|c| format!("column{c}"))
            .collect::<Vec<_>>()
            .join(", "),
        values_list(taken.len(), GRANT_COLUMNS, false)
    )))
    .persistent(false);
    for t in &taken {
        let new = &t.row.new;
        query = query
            .bind(&t.id)
            .bind(new.org_id.to_string())
            .bind(new.router_id.to_string())
            .bind(new.region_id.to_string())
            .bind(new.access_type.as_str())
            .bind(new.access.as_str())
            .bind(new.allow_rfc1918)
            .bind(new.allow_from.to_string())
            .bind(&new.username)
            .bind(&t.row.sealed)
            .bind(i64::from(t.port))
            .bind(&new.entry_point)
            .bind(GrantStatus::Requested.as_str())
            .bind(&new.created_by)
            .bind(ms(t.row.created_at))
            .bind(ms(t.row.expires_at))
            .bind(new.terminal);
    }
    let inserted: HashSet<String> = query
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.text("id"))
        .collect::<Result<_>>()?;
    let (done, refused): (Vec<Taken>, Vec<Taken>) =
        taken.into_iter().partition(|t| inserted.contains(&t.id));
    if !refused.is_empty() {
        // Their routers are not their organisations': the long way says so. Their
        // ports go back.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM gateway_ports WHERE grant_id IN {}",
            values_list(1, refused.len(), false)
        )))
        .persistent(false);
        for t in &refused {
            query = query.bind(&t.id);
        }
        query.execute(&mut *tx).await?;
    }
    if done.is_empty() {
        return Ok(written);
    }

    // Their audit entries and jobs.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO audit_log (org_id, at, actor, actor_address, action, target, details) \
         VALUES {}",
        values_list(done.len(), 7, false)
    )))
    .persistent(false);
    for t in &done {
        let audit = &t.row.new.audit;
        query = query
            .bind(audit.org_id.to_string())
            .bind(ms(audit.at))
            .bind(&audit.actor)
            .bind(audit.actor_address.map(|a| a.to_string()))
            .bind(&audit.action)
            .bind(&audit.target)
            .bind(audit.details.to_string());
    }
    query.execute(&mut *tx).await?;
    let jobs: Vec<(&Taken, crate::records::NewJob)> = done
        .iter()
        .filter_map(|t| Some((t, naming_grant(t.row.new.job.as_ref()?, &t.id))))
        .collect();
    if !jobs.is_empty() {
        // In the batch's order: each router's jobs run in the order they were made.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO jobs (id, org_id, router_id, kind, payload, state, attempts, \
             max_attempts, run_after, created_at, grant_id) VALUES {}",
            values_list(jobs.len(), 11, false)
        )))
        .persistent(false);
        for (t, job) in &jobs {
            query = query
                .bind(JobId::new().to_string())
                .bind(job.org_id.to_string())
                .bind(job.router_id.to_string())
                .bind(&job.kind)
                .bind(job.payload.to_string())
                .bind(domain::JobState::Pending.as_str())
                .bind(0_i64)
                .bind(i64::from(job.max_attempts))
                .bind(ms(job.run_after))
                .bind(ms(job.created_at))
                .bind(&t.id);
        }
        query.execute(&mut *tx).await?;
    }
    for t in done {
        if let Some(slot) = written.get_mut(t.at) {
            *slot = Some(t.port);
        }
    }
    Ok(written)
}

impl Store {
    /// The router's grants version (`None` if it is not in `org`) and whether `token`
    /// still exists, in one statement: a server that caches grant lists reads this on
    /// every list request, and it also authorises the request when the caller's token
    /// was cached. The version changes in the transaction of every insert or update of
    /// a grant of the router (database triggers), whoever writes.
    pub async fn list_stamp(
        &self,
        org: OrgId,
        router_id: RouterId,
        token: Option<TokenId>,
    ) -> Result<ListStamp> {
        db!(self, |p, pg| {
            let row = sqlx::query(
                "SELECT (SELECT grants_version FROM routers WHERE id = $1 AND org_id = $2) AS version, \
                 (SELECT COUNT(*) FROM api_tokens WHERE id = $3) AS tokens",
            )
            .bind(router_id.to_string())
            .bind(org.to_string())
            .bind(token.map(|t| t.to_string()).unwrap_or_default())
            .fetch_one(p)
            .await?;
            Ok(ListStamp {
                grants_version: row.opt_int("version")?,
                token_exists: row.int("tokens")? > 0,
            })
        })
    }

    /// How many live grants (requested, provisioning, active or closing; access and
    /// forwards, the portal's terminals too) the router has, and the organisation: for
    /// the server's caps on live grants.
    pub async fn count_live_grants(&self, org: OrgId, router_id: RouterId) -> Result<LiveCounts> {
        db!(self, |p, pg| {
            let row = sqlx::query(
                "SELECT \
                 (SELECT COUNT(*) FROM transient_access WHERE router_id = $1 AND org_id = $2 \
                    AND status IN ('requested', 'provisioning', 'active', 'closing')) + \
                 (SELECT COUNT(*) FROM transient_forwards WHERE router_id = $1 AND org_id = $2 \
                    AND status IN ('requested', 'provisioning', 'active', 'closing')) AS router, \
                 (SELECT COUNT(*) FROM transient_access WHERE org_id = $2 \
                    AND status IN ('requested', 'provisioning', 'active', 'closing')) + \
                 (SELECT COUNT(*) FROM transient_forwards WHERE org_id = $2 \
                    AND status IN ('requested', 'provisioning', 'active', 'closing')) AS org",
            )
            .bind(router_id.to_string())
            .bind(org.to_string())
            .fetch_one(p)
            .await?;
            Ok(LiveCounts {
                router: u64::try_from(row.int("router")?).unwrap_or(0),
                org: u64::try_from(row.int("org")?).unwrap_or(0),
            })
        })
    }

    /// Records a transient access grant (status `requested`) with the first free gateway
    /// port among `port_candidates`, its audit entry and its first job, in one
    /// transaction: on any failure nothing is left. `NotFound` if the router is not in
    /// the org; `Conflict` if no candidate port is free. The password is encrypted. On
    /// SQLite, creates queued for the writer together are committed together (see
    /// `grouped`), each still all or nothing and answered only once committed.
    pub async fn create_access(&self, new: NewAccess) -> Result<TransientAccess> {
        let id = AccessId::new();
        let sealed =
            self.inner
                .cipher
                .seal(Slot::AccessPassword, &id.to_string(), &new.password)?;
        let row = Arc::new(AccessRow {
            id,
            created_at: trunc(new.audit.at),
            expires_at: trunc(new.expires_at),
            sealed,
            new,
        });
        let port = match self.pool() {
            Pool::Sqlite { write, .. } => {
                self.group_commit(write, Write::Access(row.clone()))
                    .await?
                    .claimed()?
                    .port
            }
            Pool::Postgres(pool) => {
                let (_guard, mut tx) = pool.begin_write(&self.inner.write_lock).await?;
                let port = write_access_pg(&mut tx, &row).await?;
                tx.commit().await?;
                port
            }
        };
        let AccessRow {
            id,
            created_at,
            expires_at,
            ref new,
            ..
        } = *row;
        Ok(TransientAccess {
            id,
            org_id: new.org_id,
            router_id: new.router_id,
            region_id: new.region_id,
            access_type: new.access_type,
            access: new.access,
            allow_rfc1918: new.allow_rfc1918,
            allow_from: new.allow_from,
            username: new.username.clone(),
            port,
            entry_point: new.entry_point.clone(),
            status: GrantStatus::Requested,
            created_by: new.created_by.clone(),
            created_at,
            expires_at,
            authorized_at: None,
            ended_at: None,
            revoked_early: false,
            failure_reason: None,
            terminal: new.terminal,
        })
    }

    /// The temporary password of a transient access grant, decrypted (any organisation:
    /// the API checks the grant is the caller's first, and audits the read).
    pub async fn access_password(&self, id: AccessId) -> Result<Secret> {
        let sealed = db!(self, |p, pg| {
            let row = sqlx::query("SELECT password FROM transient_access WHERE id = $1")
                .bind(id.to_string())
                .fetch_optional(p)
                .await?;
            row.map(|r| r.bytes("password")).transpose()?
        });
        let sealed = sealed.ok_or(StoreError::NotFound)?;
        self.inner
            .cipher
            .open(Slot::AccessPassword, &id.to_string(), &sealed)
    }

    /// What making a transient access's user on its router takes, in one read: the grant
    /// (of a router of `org`), its password, and its region's tunnel source address
    /// (`None` when unset, or when the region is gone).
    pub async fn access_to_make(
        &self,
        org: OrgId,
        router_id: RouterId,
        id: AccessId,
    ) -> Result<(TransientAccess, Secret, Option<std::net::IpAddr>)> {
        let found = db!(self, |p, pg| {
            let row = sqlx::query(concat!(
                "SELECT ",
                access_columns!(),
                ", password, (SELECT r.tunnel_source FROM regions r \
                 WHERE r.id = transient_access.region_id) AS tunnel_source \
                 FROM transient_access WHERE id = $1 AND org_id = $2 AND router_id = $3"
            ))
            .bind(id.to_string())
            .bind(org.to_string())
            .bind(router_id.to_string())
            .fetch_optional(p)
            .await?;
            row.map(|r| {
                Ok::<_, StoreError>((
                    access_from(&r)?,
                    r.bytes("password")?,
                    r.opt_text("tunnel_source")?,
                ))
            })
            .transpose()?
        });
        let (grant, sealed, source) = found.ok_or(StoreError::NotFound)?;
        let password = self
            .inner
            .cipher
            .open(Slot::AccessPassword, &id.to_string(), &sealed)?;
        let source = source
            .map(|t| {
                t.parse()
                    .map_err(|_| StoreError::Corrupt(format!("regions.tunnel_source: {t:?}")))
            })
            .transpose()?;
        Ok((grant, password, source))
    }

    /// Records a transient forward (status `requested`) with the first free gateway port
    /// and the first free router dst-nat port among the candidates, its audit entry and
    /// its first job, in one transaction. `NotFound` if the router is not in the org;
    /// `Conflict` if no candidate port is free. Grouped on SQLite as `create_access` is.
    pub async fn create_forward(&self, new: NewForward) -> Result<TransientForward> {
        let row = Arc::new(ForwardRow {
            id: ForwardId::new(),
            created_at: trunc(new.audit.at),
            expires_at: trunc(new.expires_at),
            new,
        });
        let (port, router_port) = match self.pool() {
            Pool::Sqlite { write, .. } => {
                let claimed = self
                    .group_commit(write, Write::Forward(row.clone()))
                    .await?
                    .claimed()?;
                (claimed.port, claimed.router_port)
            }
            Pool::Postgres(pool) => {
                let (_guard, mut tx) = pool.begin_write(&self.inner.write_lock).await?;
                let ports = write_forward_pg(&mut tx, &row).await?;
                tx.commit().await?;
                ports
            }
        };
        let ForwardRow {
            id,
            created_at,
            expires_at,
            ref new,
        } = *row;
        Ok(TransientForward {
            id,
            org_id: new.org_id,
            router_id: new.router_id,
            region_id: new.region_id,
            dst_address: new.dst_address,
            dst_port: new.dst_port,
            masquerade: new.masquerade,
            allow_from: new.allow_from,
            port,
            router_port,
            entry_point: new.entry_point.clone(),
            status: GrantStatus::Requested,
            created_by: new.created_by.clone(),
            created_at,
            expires_at,
            authorized_at: None,
            ended_at: None,
            revoked_early: false,
            failure_reason: None,
        })
    }
}
