//! Backups and upgrades: a consistent copy of a live SQLite database, taken by SQLite
//! itself (`VACUUM INTO`, on a read-only connection of its own, so servers using the
//! file go on reading and writing), and a database migrated only up to a given
//! migration, from which upgrade tests start.

use std::path::Path;
use std::str::FromStr as _;
use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use crate::db;
use crate::error::{Result, StoreError};

/// Whether `url` names a PostgreSQL database (else it is SQLite's).
pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// A SQLite database's options from a `sqlite:` URL or a bare path, as `Store::open`
/// takes them.
fn sqlite_options(url: &str) -> Result<SqliteConnectOptions> {
    if url.starts_with("sqlite:") {
        SqliteConnectOptions::from_str(url).map_err(|e| StoreError::InvalidUrl(e.to_string()))
    } else if url.contains("://") || url.is_empty() {
        Err(StoreError::InvalidUrl(format!(
            "{:?} is neither a sqlite:// nor a postgres:// url",
            url.split("://").next().unwrap_or_default()
        )))
    } else {
        Ok(SqliteConnectOptions::new().filename(url))
    }
}

/// Writes a consistent copy of the SQLite database at `url` to `out`, a file that must
/// not exist yet. Safe while servers use the database: the copy is one read
/// transaction (a snapshot, thanks to WAL) and writers are not held up.
pub async fn sqlite_copy(url: &str, out: &Path) -> Result<()> {
    let options = sqlite_options(url)?
        .read_only(true)
        .create_if_missing(false)
        .busy_timeout(Duration::from_secs(5));
    let mut conn = SqliteConnection::connect_with(&options).await?;
    let out = out
        .to_str()
        .ok_or_else(|| StoreError::InvalidUrl(format!("{} is not UTF-8", out.display())))?;
    sqlx::query("VACUUM INTO $1")
        .bind(out)
        .execute(&mut conn)
        .await?;
    conn.close().await?;
    Ok(())
}

/// The newest migration applied to the database at `url` (0 for none).
pub async fn schema_version(url: &str) -> Result<i64> {
    let sql = "SELECT COALESCE(MAX(version), 0) FROM _sqlx_migrations WHERE success";
    let version: i64 = if is_postgres(url) {
        let mut conn = PgConnection::connect(url).await?;
        let v = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
        conn.close().await?;
        v
    } else {
        let options = sqlite_options(url)?.read_only(true);
        let mut conn = SqliteConnection::connect_with(&options).await?;
        let v = sqlx::query_scalar(sql).fetch_one(&mut conn).await?;
        conn.close().await?;
        v
    };
    Ok(version)
}

/// Applies the backend's migrations up to and including `last`, and no further: the
/// database an older Postern left, for upgrade tests (`Store::open` then applies the
/// rest, as it does after an upgrade). Creates a SQLite file that is absent.
pub async fn migrate_until(url: &str, last: i64) -> Result<()> {
    let until = |mut m: sqlx::migrate::Migrator| {
        m.migrations = m
            .migrations
            .iter()
            .filter(|x| x.version <= last)
            .cloned()
            .collect::<Vec<_>>()
            .into();
        m
    };
    if is_postgres(url) {
        let mut conn = PgConnection::connect(url).await?;
        until(db::postgres_migrator()).run(&mut conn).await?;
        conn.close().await?;
    } else {
        let options = sqlite_options(url)?.create_if_missing(true);
        let mut conn = SqliteConnection::connect_with(&options).await?;
        until(db::sqlite_migrator()).run(&mut conn).await?;
        conn.close().await?;
    }
    Ok(())
}

/// The versions of the backend's migrations, oldest first.
pub fn migration_versions(postgres: bool) -> Vec<i64> {
    let m = if postgres {
        db::postgres_migrator()
    } else {
        db::sqlite_migrator()
    };
    m.migrations.iter().map(|x| x.version).collect()
}
