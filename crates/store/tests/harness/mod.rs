//! The store suite's harness: a fresh store per test on SQLite (temp dir) or PostgreSQL
//! (a fresh database in a throwaway cluster this process starts itself, once), plus raw
//! access to the database for checks the store's API cannot make.
//!
//! PostgreSQL: `POSTERN_TEST_PG_URL` (a server URL whose user may create databases) is
//! used if set. Otherwise the binaries are looked up in `POSTERN_PG_BIN`,
//! /usr/lib/postgresql/*/bin (newest first), /usr/local/bin and `PATH`; `initdb` makes a
//! cluster in a temporary directory (as `nobody` when we are root, since PostgreSQL
//! refuses to run as root), and `postgres` listens on a Unix socket in that directory
//! only: no TCP port at all. A watchdog shell stops the cluster and removes the directory
//! as soon as this test process is gone, however it ends. Without binaries the
//! PostgreSQL half is skipped loudly, or fails when `CI` is set.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use postern_store::{Store, StoreConfig};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

pub const KEY: [u8; 32] = [42u8; 32];

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A store under test, the URL it was opened with, and what keeps its files alive.
pub struct Ctx {
    pub store: Store,
    pub url: String,
    pub db: Db,
    _dir: Option<tempfile::TempDir>,
}

impl Ctx {
    /// A fresh, migrated store, or `None` when PostgreSQL is unavailable outside CI.
    pub async fn new(db: Db) -> Option<Ctx> {
        let (url, dir) = empty_database(db).await?;
        let store = Store::open(&url, &StoreConfig::new(KEY)).await.unwrap();
        Some(Ctx {
            store,
            url,
            db,
            _dir: dir,
        })
    }

    /// Opens the same database again with another key/config.
    pub async fn reopen(&self, key: [u8; 32]) -> Store {
        Store::open(&self.url, &StoreConfig::new(key))
            .await
            .unwrap()
    }

    /// Runs raw SQL (for checks and sabotage the store's API cannot do).
    pub async fn exec(&self, sql: &str, binds: &[&str]) -> u64 {
        match self.db {
            Db::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
                for b in binds {
                    q = q.bind(b.to_string());
                }
                q.execute(&mut c).await.unwrap().rows_affected()
            }
            Db::Postgres => {
                let mut c = PgConnection::connect(&self.url).await.unwrap();
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()));
                for b in binds {
                    q = q.bind(b.to_string());
                }
                q.execute(&mut c).await.unwrap().rows_affected()
            }
        }
    }

    /// Runs raw SQL and returns the database's refusal, if any.
    pub async fn try_exec(&self, sql: &str) -> Result<u64, String> {
        let sql = sqlx::AssertSqlSafe(sql.to_owned());
        match self.db {
            Db::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .execute(&mut c)
                    .await
                    .map(|r| r.rows_affected())
            }
            Db::Postgres => {
                let mut c = PgConnection::connect(&self.url).await.unwrap();
                sqlx::query(sql)
                    .execute(&mut c)
                    .await
                    .map(|r| r.rows_affected())
            }
        }
        .map_err(|e| e.to_string())
    }

    /// The first column of the first row of a raw query, as bytes.
    pub async fn raw_bytes(&self, sql: &str, bind: &str) -> Vec<u8> {
        use sqlx::Row;
        match self.db {
            Db::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .bind(bind.to_owned())
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
                row.try_get::<Vec<u8>, _>(0).unwrap()
            }
            Db::Postgres => {
                let mut c = PgConnection::connect(&self.url).await.unwrap();
                let row = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                    .bind(bind.to_owned())
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
                row.try_get::<Vec<u8>, _>(0).unwrap()
            }
        }
    }

    /// `SELECT COUNT(*) FROM <table>`.
    pub async fn count(&self, table: &str) -> i64 {
        use sqlx::Row;
        let sql = format!("SELECT COUNT(*) AS n FROM {table}");
        match self.db {
            Db::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await.unwrap();
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
                row.try_get::<i64, _>("n").unwrap()
            }
            Db::Postgres => {
                let mut c = PgConnection::connect(&self.url).await.unwrap();
                let row = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&mut c)
                    .await
                    .unwrap();
                row.try_get::<i64, _>("n").unwrap()
            }
        }
    }
}

/// A PostgreSQL server to make test databases in.
pub struct PgServer {
    /// `postgres://user@host:port` without a database, or a socket form.
    base: String,
    /// Extra query string (the socket directory).
    query: String,
    /// Held (never written) until the process exits: see the watchdog.
    _lifeline: Option<std::process::ChildStdin>,
}

impl PgServer {
    pub fn url(&self, db: &str) -> String {
        format!("{}/{db}{}", self.base, self.query)
    }
}

/// The URL of a new, empty database (nothing migrated) and, for SQLite, the temporary
/// directory that holds it; `None` when PostgreSQL is unavailable outside CI.
pub async fn empty_database(db: Db) -> Option<(String, Option<tempfile::TempDir>)> {
    match db {
        Db::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!(
                "sqlite://{}?mode=rwc",
                dir.path().join("postern.db").display()
            );
            Some((url, Some(dir)))
        }
        Db::Postgres => {
            let server = pg_server()?;
            let name = format!("t_{}", uuid::Uuid::new_v4().simple());
            let mut admin = PgConnection::connect(&server.url("postgres"))
                .await
                .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .unwrap();
            admin.close().await.unwrap();
            Some((server.url(&name), None))
        }
    }
}

/// Started once per process; a failure is kept so every test reports it without
/// trying again.
static SERVER: OnceLock<Result<Option<PgServer>, String>> = OnceLock::new();

fn pg_server() -> Option<&'static PgServer> {
    let server = SERVER.get_or_init(|| {
        std::panic::catch_unwind(start_server).map_err(|panic| {
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    });
    match server {
        Ok(server) => server.as_ref(),
        Err(e) => panic!("the PostgreSQL test cluster could not start: {e}"),
    }
}

/// Removes the cluster's directory if starting fails before the watchdog owns it.
struct DirGuard(Option<PathBuf>);

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn start_server() -> Option<PgServer> {
    if let Ok(url) = std::env::var("POSTERN_TEST_PG_URL") {
        let url = url.trim_end_matches('/');
        let (base, query) = match url.split_once('?') {
            Some((b, q)) => (b.to_owned(), format!("?{q}")),
            None => (url.to_owned(), String::new()),
        };
        // Drop a database name if one was given.
        let base = match base.rsplit_once('/') {
            Some((head, _)) if head.contains("//") && !head.ends_with('/') => head.to_owned(),
            _ => base,
        };
        return Some(PgServer {
            base,
            query,
            _lifeline: None,
        });
    }
    let Some(bin) = find_bin_dir() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "PostgreSQL binaries (initdb, postgres) not found and CI is set: install Debian's postgresql"
            );
        }
        eprintln!(
            "\n\n*** SKIPPING the PostgreSQL half of the store suite: no initdb/postgres found \
             (apt-get install postgresql, or set POSTERN_TEST_PG_URL) ***\n"
        );
        return None;
    };
    Some(start_cluster(&bin))
}

/// Where PostgreSQL's binaries are (`initdb`, `postgres`), if anywhere.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    if let Some(d) = std::env::var_os("POSTERN_PG_BIN") {
        let d = PathBuf::from(d);
        if has(&d) {
            return Some(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, d)| has(d))
        .collect();
    versions.sort();
    if let Some((_, d)) = versions.pop() {
        return Some(d);
    }
    let mut dirs = vec![PathBuf::from("/usr/local/bin")];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().find(|d| has(d))
}

/// The command prefix that drops root privileges (PostgreSQL refuses to run as root).
pub fn unprivileged() -> (Vec<String>, Option<(u32, u32)>) {
    let uid = Command::new("id").arg("-u").output().unwrap();
    let uid = String::from_utf8_lossy(&uid.stdout).trim().to_owned();
    if uid != "0" {
        return (vec![], None);
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id").args([flag, "nobody"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    let (u, g) = (id("-u"), id("-g"));
    let prefix = vec![
        "setpriv".to_owned(),
        format!("--reuid={u}"),
        format!("--regid={g}"),
        "--clear-groups".to_owned(),
        "--".to_owned(),
    ];
    (prefix, Some((u, g)))
}

fn run(prefix: &[String], program: &Path, args: &[&str], log: &Path) {
    let log_file = std::fs::File::create(log).unwrap();
    let mut cmd = match prefix.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    };
    let status = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "{} failed: {}",
        program.display(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

fn start_cluster(bin: &Path) -> PgServer {
    // A directory of its own, removed by the watchdog after the server has stopped.
    let (prefix, ids) = unprivileged();
    // As root the server runs as `nobody`, who must reach the directory: /tmp rather than
    // a $TMPDIR that may sit under /root. /tmp also keeps the socket path short.
    let parent = if ids.is_some() {
        PathBuf::from("/tmp")
    } else {
        std::env::temp_dir()
    };
    let dir = tempfile::Builder::new()
        .prefix("postern-pg-")
        .tempdir_in(parent)
        .unwrap()
        .keep();
    let mut guard = DirGuard(Some(dir.clone()));
    let data = dir.join("data");
    if let Some((u, g)) = ids {
        std::os::unix::fs::chown(&dir, Some(u), Some(g)).unwrap();
    }
    run(
        &prefix,
        &bin.join("initdb"),
        &[
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        ],
        &dir.join("initdb.log"),
    );
    let log = dir.join("postgres.log");
    std::fs::File::create(&log).unwrap();
    if let Some((u, g)) = ids {
        std::os::unix::fs::chown(&log, Some(u), Some(g)).unwrap();
    }
    // The watchdog shell starts the server as its own child and holds it: its standard
    // input is a pipe only this process keeps open, so its `read` returns the moment this
    // process is gone, however it ends (the test harness has no teardown hook). It then
    // stops the server at once, reaps it, and removes the directory.
    let script = format!(
        "\"$@\" >>'{log}' 2>&1 </dev/null & pg=$!; read -r _; kill -QUIT $pg 2>/dev/null; \
         wait $pg; rm -rf '{dir}'",
        log = log.display(),
        dir = dir.display()
    );
    let mut watchdog = Command::new("sh");
    watchdog.args(["-c", &script, "postern-pg-watchdog"]);
    watchdog.args(&prefix);
    let mut watchdog = watchdog
        .arg(bin.join("postgres"))
        .args(["-D", data.to_str().unwrap(), "-k", dir.to_str().unwrap()])
        .args(["-c", "listen_addresses=", "-p", "5432"])
        .args([
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
        ])
        .args(["-c", "max_connections=300"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lifeline = watchdog.stdin.take().unwrap();
    // From here the watchdog removes the directory (if we panic below, the lifeline is
    // dropped, which stops the server too).
    guard.0 = None;
    let socket = dir.join(".s.PGSQL.5432");
    let deadline = Instant::now() + Duration::from_secs(60);
    let isready = bin.join("pg_isready");
    loop {
        let ready = if isready.is_file() {
            Command::new(&isready)
                .args([
                    "-q",
                    "-h",
                    dir.to_str().unwrap(),
                    "-p",
                    "5432",
                    "-U",
                    "postgres",
                ])
                .status()
                .is_ok_and(|s| s.success())
        } else {
            socket.exists()
        };
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "postgres did not start: {}",
            std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The watchdog is not waited for: it ends after this process.
    drop(watchdog);
    PgServer {
        base: "postgres://postgres@localhost:5432".to_owned(),
        query: format!("?host={}", dir.display()),
        _lifeline: Some(lifeline),
    }
}
