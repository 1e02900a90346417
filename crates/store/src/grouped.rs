//! Group commit on SQLite of grant creations and closes (a revoke, an expiry). A write
//! queues its row here, then waits for SQLite's one writer (an ordinary write, see
//! `db::Writer`); whichever waiting write gets the writer first takes every write queued
//! by then (up to [`MAX_BATCH`]) and writes them in one transaction. The batch's
//! transient-access creations are written first, all at once (a few multi-row
//! statements, `grants::write_accesses_sqlite`: SQLite's writer pays for each
//! statement's hand-over to its worker thread, not for the rows); every other write, and
//! every creation that path leaves out, goes inside its own savepoint: one that fails (no
//! free port, router gone, a job for a router that is not the org's, a grant already
//! ending) is rolled back to its savepoint alone and gets its own error, as if it had run
//! by itself. One `COMMIT` ends the batch, and only then is each write answered; if the
//! commit fails, every write of the batch gets the error and nothing of it is left. A
//! burst of 100 creates or revokes then costs a few writer turns instead of 100.
//!
//! The batch runs in a task of its own that holds the writer until every write is
//! answered: a caller that goes away (a closed HTTP request) does not abort the others'
//! transaction, and a write whose caller went away before its batch began is skipped.
//! PostgreSQL does not come here: its writers run side by side.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use domain::{OrgId, RouterId};
use sqlx::SqlitePool;
use tokio::sync::oneshot;

use crate::Store;
use crate::db::WriterGuard;
use crate::error::{Result, StoreError};
use crate::grants::{
    AccessRow, ForwardRow, write_access_sqlite, write_accesses_sqlite, write_forward_sqlite,
};
use crate::leasing::{CloseRow, close_grant_sqlite};

/// The most writes one transaction takes.
pub(crate) const MAX_BATCH: usize = 64;

/// A write to group.
pub(crate) enum Write {
    Access(Arc<AccessRow>),
    Forward(Arc<ForwardRow>),
    Close(Arc<CloseRow>),
}

/// What a grouped write did.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Written {
    /// A create, and the ports it took.
    Created(Claimed),
    /// A close, and the grant's organisation and router.
    Closed(OrgId, RouterId),
}

impl Written {
    pub(crate) fn claimed(self) -> Result<Claimed> {
        match self {
            Written::Created(c) => Ok(c),
            Written::Closed(..) => Err(mismatch()),
        }
    }

    pub(crate) fn closed(self) -> Result<(OrgId, RouterId)> {
        match self {
            Written::Closed(org, router) => Ok((org, router)),
            Written::Created(_) => Err(mismatch()),
        }
    }
}

/// A write answered with another kind's outcome (a bug, never a panic).
fn mismatch() -> StoreError {
    StoreError::Database(sqlx::Error::Protocol(
        "a grouped write got another kind's answer".into(),
    ))
}

/// The ports a create took (`router_port` is 0 for a transient access).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Claimed {
    pub(crate) port: u16,
    pub(crate) router_port: u16,
}

type Reply = oneshot::Sender<Result<Written>>;

/// The writes waiting for the writer.
#[derive(Default)]
pub(crate) struct Queue {
    queue: Mutex<VecDeque<(Write, Reply)>>,
}

impl Queue {
    fn push(&self, create: Write, reply: Reply) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back((create, reply));
    }

    /// Up to [`MAX_BATCH`] queued writes whose callers still wait, oldest first.
    fn take(&self) -> Vec<(Write, Reply)> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH {
            let Some((create, reply)) = queue.pop_front() else {
                break;
            };
            if !reply.is_closed() {
                batch.push((create, reply));
            }
        }
        batch
    }
}

impl Store {
    /// Queues `create` and waits for its answer, leading a batch if this caller gets
    /// the writer before another batch took its write. `pool` is the writer's.
    pub(crate) async fn group_commit(&self, pool: &SqlitePool, create: Write) -> Result<Written> {
        let creates = &self.inner.grouped;
        let (reply, mut answer) = oneshot::channel();
        creates.push(create, reply);
        tokio::select! {
            biased;
            answered = &mut answer => return answered.map_err(|_| lost())?,
            guard = self.inner.write_lock.lock() => {
                let batch = creates.take();
                if !batch.is_empty() {
                    tokio::spawn(write_batch(pool.clone(), guard, batch));
                }
            }
        }
        answer.await.map_err(|_| lost())?
    }
}

/// A batch task ended without answering (it panicked, or the runtime is shutting down).
fn lost() -> StoreError {
    StoreError::Database(sqlx::Error::WorkerCrashed)
}

/// Writes `batch` in one transaction (see [`write_each`]), and answers every write once
/// the transaction is committed (or failed). Holds the writer until then.
async fn write_batch(pool: SqlitePool, guard: WriterGuard, batch: Vec<(Write, Reply)>) {
    let creates: Vec<&Write> = batch.iter().map(|(c, _)| c).collect();
    match write_all(&pool, &guard, &creates).await {
        Ok(outcomes) => {
            for ((_, reply), outcome) in batch.into_iter().zip(outcomes) {
                let _ = reply.send(outcome);
            }
        }
        Err(e) => {
            let told = e.to_string();
            let mut first = Some(e);
            for (_, reply) in batch {
                let error = first.take().unwrap_or_else(|| {
                    StoreError::Database(sqlx::Error::Protocol(format!(
                        "the grouped transaction failed: {told}"
                    )))
                });
                let _ = reply.send(Err(error));
            }
        }
    }
    drop(guard);
}

/// The batch's transaction: every write's own outcome, or the error that failed the
/// whole transaction (a savepoint that could not be taken or undone, or the commit),
/// rolled back before the writer is let go.
async fn write_all(
    pool: &SqlitePool,
    _guard: &WriterGuard,
    writes: &[&Write],
) -> Result<Vec<Result<Written>>> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    match write_each(&mut tx, writes).await {
        Ok(outcomes) => {
            tx.commit().await?;
            Ok(outcomes)
        }
        Err(e) => {
            // The error is what the callers need; a failed rollback is left to the
            // connection's own (sqlx rolls back a dropped transaction).
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// The batch's creations of transient access first, all at once when there are several
/// (`write_accesses_sqlite`: a few statements in all); then every other write, and every
/// creation that could not be written that way, in a savepoint of its own: one that
/// fails is rolled back to it alone. `Err` only when a savepoint could not be taken or
/// undone.
async fn write_each(
    tx: &mut sqlx::SqliteConnection,
    writes: &[&Write],
) -> Result<Vec<Result<Written>>> {
    let mut outcomes: Vec<Option<Result<Written>>> = writes.iter().map(|_| None).collect();
    let accesses: Vec<(usize, &AccessRow)> = writes
        .iter()
        .enumerate()
        .filter_map(|(i, w)| match w {
            Write::Access(row) => Some((i, &**row)),
            _ => None,
        })
        .collect();
    if accesses.len() > 1 {
        sqlx::query("SAVEPOINT grouped_accesses")
            .execute(&mut *tx)
            .await?;
        let rows: Vec<&AccessRow> = accesses.iter().map(|(_, row)| *row).collect();
        match write_accesses_sqlite(tx, &rows).await {
            Ok(written) => {
                for ((i, _), port) in accesses.iter().zip(written) {
                    if let (Some(slot), Some(port)) = (outcomes.get_mut(*i), port) {
                        *slot = Some(Ok(Written::Created(Claimed {
                            port,
                            router_port: 0,
                        })));
                    }
                }
            }
            // A constraint the batch broke (one of its rows, or a row deleted meanwhile):
            // each is written alone below and meets it alone.
            Err(_) => {
                sqlx::query("ROLLBACK TO grouped_accesses")
                    .execute(&mut *tx)
                    .await?;
            }
        }
    }
    for (write, slot) in writes.iter().zip(outcomes.iter_mut()) {
        if slot.is_some() {
            continue;
        }
        // Savepoints of the same name stack; `ROLLBACK TO` undoes back to the latest,
        // this write's own. A successful one's is left for the `COMMIT` to release: one
        // statement less per write.
        sqlx::query("SAVEPOINT grouped_write")
            .execute(&mut *tx)
            .await?;
        let outcome = match write {
            Write::Access(row) => write_access_sqlite(tx, row).await.map(|port| {
                Written::Created(Claimed {
                    port,
                    router_port: 0,
                })
            }),
            Write::Forward(row) => write_forward_sqlite(tx, row)
                .await
                .map(|(port, router_port)| Written::Created(Claimed { port, router_port })),
            Write::Close(row) => close_grant_sqlite(tx, row)
                .await
                .map(|(org, router)| Written::Closed(org, router)),
        };
        if outcome.is_err() {
            sqlx::query("ROLLBACK TO grouped_write")
                .execute(&mut *tx)
                .await?;
        }
        *slot = Some(outcome);
    }
    Ok(outcomes.into_iter().flatten().collect())
}
