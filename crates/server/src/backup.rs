//! `postern admin backup` and `restore`: what a data directory needs to come back.
//!
//! A backup is a directory (mode 0700) of files (mode 0600): `postern.db`, a consistent
//! copy of the SQLite database taken by SQLite while servers may be using it (terminal
//! recordings are rows in it), `secret.key`, the key that seals the secrets in it, and
//! `backup.json`, saying what it holds. On PostgreSQL the database is the operator's to
//! dump (`pg_dump`, which holds the recordings too); the backup then holds the key and
//! says so. Whoever holds a backup holds the key to every router password in it: keep
//! it as you keep the data directory, or keep the key apart from the database copy.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::config::ServerConfig;

/// The SQLite copy's name in a backup (and in a data directory).
pub const DATABASE_FILE: &str = "postern.db";
/// The key's name in a backup.
pub const KEY_FILE: &str = "secret.key";
/// What the backup holds.
pub const MANIFEST_FILE: &str = "backup.json";
/// The manifest's format.
const FORMAT: u32 = 1;

/// Why a backup or a restore could not be made.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} exists already: a backup is written to a new path")]
    Exists(String),
    #[error(
        "{0} is not empty: restore refuses to overwrite it (--force replaces its database and key)"
    )]
    NotEmpty(String),
    #[error("{0}")]
    Invalid(String),
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `backup.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// `sqlite` or `postgres`.
    pub backend: String,
    pub created_at: DateTime<Utc>,
    /// The Postern version that made it.
    pub postern: String,
    /// The newest store migration applied to the database copied (SQLite only).
    pub schema_version: Option<i64>,
    /// The files beside the manifest.
    pub files: Vec<String>,
}

/// What a backup made.
#[derive(Debug, Clone)]
pub struct Backup {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// What the operator must still do (PostgreSQL: dump the database).
    pub note: Option<String>,
}

/// What a restore made.
#[derive(Debug, Clone)]
pub struct Restore {
    pub data_dir: PathBuf,
    pub manifest: Manifest,
    pub note: Option<String>,
}

/// Makes a directory only its owner may enter.
fn private_dir(path: &Path) -> Result<(), BackupError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(path).map_err(io(path))
}

/// Writes `bytes` to a new file only its owner may read.
fn private_file(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io(path))
}

fn set_private(path: &Path) -> Result<(), BackupError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io(path))?;
    }
    Ok(())
}

fn read_key(path: &Path) -> Result<[u8; 32], BackupError> {
    let key = std::fs::read(path).map_err(io(path))?;
    <[u8; 32]>::try_from(key.as_slice()).map_err(|_| {
        BackupError::Invalid(format!(
            "{}: holds {} bytes, a key has 32",
            path.display(),
            key.len()
        ))
    })
}

fn pg_note(what: &str) -> String {
    format!(
        "the database is PostgreSQL: {what} it with PostgreSQL's own tools \
         (pg_dump --format=custom, then pg_restore into an empty database), \
         together with this key; terminal recordings are rows in it"
    )
}

/// Backs up the data directory of `config` into `out`, a path that must not exist.
pub async fn backup(
    config: &ServerConfig,
    out: &Path,
    now: DateTime<Utc>,
) -> Result<Backup, BackupError> {
    if out.exists() {
        return Err(BackupError::Exists(out.display().to_string()));
    }
    let key = read_key(&config.secret_key_path())?;
    let url = config.database_url();
    let postgres = store::maintenance::is_postgres(&url);
    // Written beside `out`, renamed when whole: a backup cut short is never mistaken
    // for one.
    let name = out
        .file_name()
        .ok_or_else(|| BackupError::Invalid(format!("{} names no file", out.display())))?;
    let mut partial_name = name.to_owned();
    partial_name.push(".partial");
    let partial = out.with_file_name(partial_name);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    private_dir(&partial)?;
    private_file(&partial.join(KEY_FILE), &key)?;
    let mut files = vec![KEY_FILE.to_string()];
    let (schema_version, note) = if postgres {
        (None, Some(pg_note("dump")))
    } else {
        let db = partial.join(DATABASE_FILE);
        store::maintenance::sqlite_copy(&url, &db).await?;
        set_private(&db)?;
        files.insert(0, DATABASE_FILE.to_string());
        let version =
            store::maintenance::schema_version(&format!("sqlite:{}", db.display())).await?;
        (Some(version), None)
    };
    let manifest = Manifest {
        format: FORMAT,
        backend: if postgres { "postgres" } else { "sqlite" }.into(),
        created_at: now,
        postern: env!("CARGO_PKG_VERSION").into(),
        schema_version,
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BackupError::Invalid(format!("manifest: {e}")))?;
    private_file(&partial.join(MANIFEST_FILE), &json)?;
    std::fs::rename(&partial, out).map_err(io(out))?;
    Ok(Backup {
        dir: out.to_owned(),
        manifest,
        note,
    })
}

/// Makes the data directory of `config` from the backup in `input`: refused when the
/// directory holds anything unless `force`, which replaces its database and key. The
/// database is then opened once, which applies this version's migrations (an older
/// backup is upgraded here, as a server's start would).
pub async fn restore(
    config: &ServerConfig,
    input: &Path,
    force: bool,
) -> Result<Restore, BackupError> {
    let manifest_path = input.join(MANIFEST_FILE);
    let text = std::fs::read(&manifest_path).map_err(io(&manifest_path))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| {
        BackupError::Invalid(format!(
            "{}: not a backup manifest: {e}",
            manifest_path.display()
        ))
    })?;
    if manifest.format != FORMAT {
        return Err(BackupError::Invalid(format!(
            "backup format {} is not known to this version (it reads {FORMAT})",
            manifest.format
        )));
    }
    let key = read_key(&input.join(KEY_FILE))?;
    let postgres = match manifest.backend.as_str() {
        "sqlite" => false,
        "postgres" => true,
        other => {
            return Err(BackupError::Invalid(format!("unknown backend {other:?}")));
        }
    };
    if !postgres && config.database_url.is_some() {
        return Err(BackupError::Invalid(
            "a SQLite backup is restored to the data directory's own database: \
             give no database URL"
                .into(),
        ));
    }

    let dir = &config.data_dir;
    let occupied = match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io(dir)(e)),
    };
    if occupied && !force {
        return Err(BackupError::NotEmpty(dir.display().to_string()));
    }
    private_dir(dir)?;
    let key_path = config.secret_key_path();
    let db_path = dir.join(DATABASE_FILE);
    let mut stale = vec![key_path.clone()];
    if !postgres {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            stale.push(dir.join(format!("{DATABASE_FILE}{suffix}")));
        }
    }
    for path in &stale {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(path)(e)),
        }
    }
    if let Some(parent) = key_path.parent().filter(|p| !p.as_os_str().is_empty()) {
        private_dir(parent)?;
    }
    private_file(&key_path, &key)?;
    if postgres {
        return Ok(Restore {
            data_dir: dir.clone(),
            manifest,
            note: Some(pg_note("restore")),
        });
    }

    let source = input.join(DATABASE_FILE);
    let mut partial = db_path.clone().into_os_string();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    std::fs::copy(&source, &partial).map_err(io(&source))?;
    set_private(&partial)?;
    std::fs::File::open(&partial)
        .and_then(|f| f.sync_all())
        .map_err(io(&partial))?;
    std::fs::rename(&partial, &db_path).map_err(io(&db_path))?;

    let store = store::Store::open(&config.database_url(), &store::StoreConfig::new(key)).await?;
    store.close().await;
    Ok(Restore {
        data_dir: dir.clone(),
        manifest,
        note: None,
    })
}
