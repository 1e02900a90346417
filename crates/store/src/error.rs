//! The store's error type: what a caller can act on (not found, conflict) kept apart from
//! what it can only report (database, crypto, corrupt rows).

/// Everything a store method can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such row in the caller's organisation (rows of other organisations are
    /// reported the same way).
    #[error("not found")]
    NotFound,
    /// A uniqueness or business rule refused the change; the text says which.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database stayed locked by another writer past the wait (SQLite's busy timeout;
    /// on PostgreSQL a lock or serialisation conflict). Nothing was written: the same call
    /// may succeed a moment later.
    #[error("database busy: {0}")]
    Busy(sqlx::Error),
    /// The database failed.
    #[error("database: {0}")]
    Database(sqlx::Error),
    /// The database could not be migrated at open.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A secret could not be encrypted or decrypted (wrong key, or a ciphertext moved to
    /// another row or column).
    #[error("secret could not be decrypted or encrypted")]
    Crypto,
    /// A row holds a value our types refuse (written by something else, or a bug).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// `Store::open` was given something that is neither a SQLite path/URL nor a
    /// PostgreSQL URL.
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
}

/// The store's result.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if is_busy(&err) {
            StoreError::Busy(err)
        } else {
            StoreError::Database(err)
        }
    }
}

/// Whether the database refused for a lock someone else holds, so that trying again later
/// is the answer: SQLite's `SQLITE_BUSY` and `SQLITE_LOCKED` (with their extended codes),
/// PostgreSQL's `lock_not_available`, `serialization_failure` and `deadlock_detected`.
fn is_busy(err: &sqlx::Error) -> bool {
    let sqlx::Error::Database(db) = err else {
        return false;
    };
    let Some(code) = db.code() else {
        return false;
    };
    match code.parse::<u32>() {
        Ok(sqlite) => matches!(sqlite & 0xff, 5 | 6),
        Err(_) => matches!(code.as_ref(), "55P03" | "40001" | "40P01"),
    }
}

impl StoreError {
    /// `Conflict(what)` for a unique violation, [`From`]'s answer otherwise.
    pub(crate) fn unique(err: sqlx::Error, what: impl FnOnce() -> String) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what()),
            _ => err.into(),
        }
    }
}
