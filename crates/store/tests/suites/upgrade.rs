//! Upgrades in the store suite (included by `store.rs`): a database made by the oldest
//! migration set still supported (migration 1 alone; every later one is applied at open)
//! and filled with rows, opened by today's `Store`: every row is still there, equal to
//! what was written, secrets still open with the key, and new rows go in beside them.
//!
//! The rows are the ones today's store writes (in a second database, whose API seals the
//! secrets with the row ids they are bound to), copied column by column into the tables
//! the first migration made: exactly the columns that version had.

use futures::TryStreamExt as _;
use sqlx::Connection as _;

use super::harness::empty_database;
use super::*;

/// The tables of migration 1, parents before children.
const TABLES: &[&str] = &[
    "organisations",
    "users",
    "api_tokens",
    "regions",
    "sites",
    "routers",
    "transient_access",
    "transient_forwards",
    "gateway_ports",
    "router_ports",
    "jobs",
    "job_lines",
    "audit_log",
];

/// Copies `donor`'s rows into the migration-1 database at `url`, columns that version
/// had only.
async fn copy_rows(db: Db, donor: &str, url: &str) {
    match db {
        Db::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
            let path = donor
                .trim_start_matches("sqlite://")
                .trim_end_matches("?mode=rwc");
            sqlx::query("ATTACH DATABASE $1 AS donor")
                .bind(path)
                .execute(&mut c)
                .await
                .unwrap();
            for table in TABLES {
                let columns: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT name FROM pragma_table_info('{table}')"
                )))
                .fetch_all(&mut c)
                .await
                .unwrap();
                let list = columns.join(", ");
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO main.{table} ({list}) SELECT {list} FROM donor.{table}"
                )))
                .execute(&mut c)
                .await
                .unwrap();
            }
        }
        Db::Postgres => {
            let mut from = sqlx::postgres::PgConnection::connect(donor).await.unwrap();
            let mut to = sqlx::postgres::PgConnection::connect(url).await.unwrap();
            for table in TABLES {
                let columns: Vec<String> = sqlx::query_scalar(
                    "SELECT column_name::text FROM information_schema.columns \
                     WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
                )
                .bind(table)
                .fetch_all(&mut to)
                .await
                .unwrap();
                let list = columns.join(", ");
                let rows: Vec<_> = from
                    .copy_out_raw(&format!("COPY {table} ({list}) TO STDOUT"))
                    .await
                    .unwrap()
                    .try_collect()
                    .await
                    .unwrap();
                let mut copy = to
                    .copy_in_raw(&format!("COPY {table} ({list}) FROM STDIN"))
                    .await
                    .unwrap();
                for chunk in rows {
                    copy.send(chunk).await.unwrap();
                }
                copy.finish().await.unwrap();
            }
            // Serial columns carry on after the copied rows, as they would have.
            sqlx::raw_sql(
                "SELECT setval(pg_get_serial_sequence('audit_log', 'id'), \
                 (SELECT COALESCE(MAX(id), 0) + 1 FROM audit_log), false)",
            )
            .execute(&mut to)
            .await
            .unwrap();
        }
    }
}

async fn upgrade_from_the_first_migration(db: Db) {
    let Some(donor) = Ctx::new(db).await else {
        return;
    };
    let s = &donor.store;
    let w = world(s).await;
    let alice = s
        .create_user(NewUser {
            org_id: w.org,
            username: "alice".into(),
            role: Role::Operator,
            password_hash: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".into(),
        })
        .await
        .unwrap();
    let token = s
        .create_api_token(NewApiToken {
            org_id: w.org,
            name: "ci".into(),
            role: Role::Admin,
            token_hash: "cd".repeat(32),
            created_by: Some(alice.id),
            expires_at: None,
        })
        .await
        .unwrap();
    let access = s
        .create_access(new_access(&w, &[40001], true))
        .await
        .unwrap();
    let forward = s
        .create_forward(new_forward(&w, &[40002], &[20001]))
        .await
        .unwrap();
    s.append_audit(audit(w.org, "token.create", t(1)))
        .await
        .unwrap();
    let jobs = s
        .list_jobs(
            w.org,
            w.router.id,
            Page {
                limit: 100,
                offset: 0,
            },
        )
        .await
        .unwrap();
    let audit_log = s
        .list_audit(
            w.org,
            Page {
                limit: 100,
                offset: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(jobs.len(), 2);
    s.close().await;

    let (url, _dir) = empty_database(db).await.unwrap();
    let oldest = maintenance::migration_versions(db == Db::Postgres)[0];
    maintenance::migrate_until(&url, oldest).await.unwrap();
    assert_eq!(maintenance::schema_version(&url).await.unwrap(), oldest);
    copy_rows(db, &donor.url, &url).await;

    // Today's store on the old database: it applies every later migration.
    let up = Store::open(&url, &StoreConfig::new(KEY)).await.unwrap();
    let newest = *maintenance::migration_versions(db == Db::Postgres)
        .last()
        .unwrap();
    assert_eq!(maintenance::schema_version(&url).await.unwrap(), newest);
    assert_eq!(up.find_user(w.org, "alice").await.unwrap(), Some(alice));
    assert_eq!(
        up.find_api_token_by_hash(&"cd".repeat(32)).await.unwrap(),
        Some(token)
    );
    assert_eq!(up.get_router(w.org, w.router.id).await.unwrap(), w.router);
    assert_eq!(
        up.router_password(w.router.id).await.unwrap().expose(),
        "router-pw-1"
    );
    assert_eq!(
        up.get_access(w.org, w.router.id, access.id).await.unwrap(),
        access
    );
    assert_eq!(
        up.access_password(access.id).await.unwrap().expose(),
        "grant-secret-pw"
    );
    assert_eq!(
        up.get_forward(w.org, w.router.id, forward.id)
            .await
            .unwrap(),
        forward
    );
    let after: Vec<_> = up
        .list_jobs(
            w.org,
            w.router.id,
            Page {
                limit: 100,
                offset: 0,
            },
        )
        .await
        .unwrap()
        .into_iter()
        .map(|(j, lines)| (j.id, j.kind, j.state, lines.len()))
        .collect();
    let before: Vec<_> = jobs
        .into_iter()
        .map(|(j, lines)| (j.id, j.kind, j.state, lines.len()))
        .collect();
    assert_eq!(after, before);
    assert_eq!(
        up.list_audit(
            w.org,
            Page {
                limit: 100,
                offset: 0
            }
        )
        .await
        .unwrap(),
        audit_log
    );

    // The upgraded database takes new rows: the old grant's port stays taken.
    let msg = conflict(up.create_access(new_access(&w, &[40001], true)).await);
    assert!(!msg.is_empty());
    let next = up
        .create_access(new_access(&w, &[40003], true))
        .await
        .unwrap();
    assert_eq!(next.port, 40003);
    up.append_audit(audit(w.org, "after.upgrade", t(2)))
        .await
        .unwrap();
    up.close().await;
}

mod upgrade {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        upgrade_from_the_first_migration(Db::Sqlite).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        upgrade_from_the_first_migration(Db::Postgres).await;
    }
}
