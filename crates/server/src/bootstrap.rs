//! Starting up: the secret key file, the store, the configured regions, and on the very
//! first start an organisation "default" with an admin whose password is handed back once.
//! Also the admin CLI's token making.

use std::io::Write as _;
use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use domain::Role;
use rand::RngCore as _;

use crate::auth::{generate_token, hash_password, hash_token, random_alnum};
use crate::config::ServerConfig;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("secret key file {path}: {message}")]
    SecretKey { path: String, message: String },
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    #[error("{0}")]
    Invalid(String),
}

/// The admin made on first start; the password exists nowhere else.
pub struct FirstAdmin {
    pub username: String,
    pub password: String,
}

/// Reads the 32-byte key, creating it (mode 0600, CSPRNG bytes) when absent.
pub fn secret_key(path: &Path) -> Result<[u8; 32], BootstrapError> {
    let err = |message: String| BootstrapError::SecretKey {
        path: path.display().to_string(),
        message,
    };
    match std::fs::read(path) {
        Ok(bytes) => {
            return <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| err(format!("holds {} bytes, expected 32", bytes.len())));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e.to_string())),
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| err(e.to_string()))?;
    file.write_all(&key)
        .and_then(|()| file.sync_all())
        .map_err(|e| err(e.to_string()))?;
    Ok(key)
}

/// Makes the data directory (0700) if it is absent, and brings it and the files in it
/// (database, WAL, shared memory, key) to 0700 and 0600 if they are looser, whatever the
/// umask: they hold the secret key and every sealed secret. Returns one note per path it
/// had to tighten (each also logged as a warning), or that it could not.
pub fn secure_data_dir(dir: &Path) -> Result<Vec<String>, BootstrapError> {
    let failed = |source| BootstrapError::DataDir {
        path: dir.display().to_string(),
        source,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(failed)?;
    let mut notes = Vec::new();
    #[cfg(unix)]
    {
        tighten(dir, 0o700, &mut notes);
        for entry in std::fs::read_dir(dir).map_err(failed)?.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                tighten(&entry.path(), 0o600, &mut notes);
            }
        }
    }
    Ok(notes)
}

/// Sets `path`'s mode to `mode` if group or others have any access, with a warning.
#[cfg(unix)]
fn tighten(path: &Path, mode: u32, notes: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    let was = meta.permissions().mode() & 0o777;
    if was & 0o077 == 0 {
        return;
    }
    let note = match std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
        Ok(()) => format!(
            "{} was {was:o}, open to other users: set to {mode:o}",
            path.display()
        ),
        Err(e) => format!(
            "{} is {was:o}, open to other users, and could not be set to {mode:o}: {e}",
            path.display()
        ),
    };
    tracing::warn!("data directory: {note}");
    notes.push(note);
}

/// Creates an empty file readable by its owner alone, unless it exists (SQLite then
/// gives its WAL and shared-memory files the database file's mode).
fn create_private(path: &Path) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens the store the configuration names (creating the data directory for SQLite) and
/// makes sure every configured region exists. The data directory and its files are
/// checked, and tightened, before and after the database opens ([`secure_data_dir`]).
pub async fn open_store(config: &ServerConfig) -> Result<store::Store, BootstrapError> {
    secure_data_dir(&config.data_dir)?;
    if config.database_url.is_none() {
        create_private(&config.data_dir.join("postern.db")).map_err(|source| {
            BootstrapError::DataDir {
                path: config.data_dir.display().to_string(),
                source,
            }
        })?;
    }
    let key = secret_key(&config.secret_key_path())?;
    let store = store::Store::open(&config.database_url(), &store::StoreConfig::new(key)).await?;
    secure_data_dir(&config.data_dir)?;
    for region in &config.regions {
        domain::rules::entry_point(&region.entry_point)
            .map_err(|e| BootstrapError::Invalid(format!("region {}: {e}", region.name)))?;
        let stored = store
            .upsert_region(store::NewRegion {
                name: region.name.clone(),
                entry_point: region.entry_point.clone(),
                port_min: region.port_min,
                port_max: region.port_max,
            })
            .await?;
        store
            .set_region_tunnel_source(stored.id, region.tunnel_source)
            .await?;
        // A remote region's key is its gateway's, made there when it joins.
        if !region.remote() {
            ensure_region_tunnel(&store, stored.id).await?;
        }
    }
    Ok(store)
}

/// Makes the region's WireGuard key on its first start: generated here, the private key
/// sealed in the store and never logged; a region that has one keeps it.
pub async fn ensure_region_tunnel(
    store: &store::Store,
    region: domain::RegionId,
) -> Result<store::RegionTunnel, BootstrapError> {
    if let Some(made) = store.region_tunnel(region).await? {
        return Ok(made);
    }
    let private = tunnel::PrivateKey::generate()
        .map_err(|e| BootstrapError::Invalid(format!("cannot make the tunnel key: {e}")))?;
    let public = private.public_key().to_base64();
    let made = store
        .ensure_region_tunnel(region, &store::Secret::new(private.to_base64()), &public)
        .await?;
    if made.public_key == public {
        tracing::info!(region = %region, public_key = %public, "made the region's tunnel key");
    }
    Ok(made)
}

/// On a store without users: creates organisation "default" and user `admin` with a random
/// password, returned so the caller can show it once.
pub async fn first_start(store: &store::Store) -> Result<Option<FirstAdmin>, BootstrapError> {
    if store.count_users().await? > 0 {
        return Ok(None);
    }
    let org = match store
        .list_organisations()
        .await?
        .into_iter()
        .find(|o| o.name == "default")
    {
        Some(o) => o,
        None => store.create_organisation("default").await?,
    };
    let password = random_alnum(20, false);
    let hash = {
        let p = password.clone();
        tokio::task::spawn_blocking(move || hash_password(&p))
            .await
            .map_err(|e| BootstrapError::Invalid(e.to_string()))?
            .map_err(|e| BootstrapError::Invalid(e.to_string()))?
    };
    store
        .create_user(store::NewUser {
            org_id: org.id,
            username: "admin".into(),
            role: Role::Admin,
            password_hash: hash,
        })
        .await?;
    Ok(Some(FirstAdmin {
        username: "admin".into(),
        password,
    }))
}

/// Makes an API token in organisation `org_name` (default "default") and returns its
/// secret, for `postern admin create-token`.
pub async fn create_token(
    store: &store::Store,
    org_name: Option<&str>,
    role: Role,
    name: &str,
    expires_in_days: Option<i64>,
    now: DateTime<Utc>,
) -> Result<String, BootstrapError> {
    let name =
        domain::rules::token_name(name).map_err(|e| BootstrapError::Invalid(e.to_string()))?;
    let wanted = org_name.unwrap_or("default");
    let orgs = store.list_organisations().await?;
    let org = orgs
        .iter()
        .find(|o| o.name == wanted)
        .ok_or_else(|| {
            BootstrapError::Invalid(format!(
                "no organisation named {wanted:?}: start `postern server` once on this data directory first"
            ))
        })?;
    let expires_at = match expires_in_days {
        None => None,
        Some(d) if (1..=3650).contains(&d) => Some(now + TimeDelta::days(d)),
        Some(_) => {
            return Err(BootstrapError::Invalid(
                "expires-in-days must be between 1 and 3650".into(),
            ));
        }
    };
    let secret = generate_token();
    let token = store
        .create_api_token(store::NewApiToken {
            org_id: org.id,
            name: name.clone(),
            role,
            token_hash: hash_token(&secret),
            created_by: None,
            expires_at,
        })
        .await?;
    store
        .append_audit(store::NewAudit {
            org_id: org.id,
            at: now,
            actor: "cli".into(),
            actor_address: None,
            action: "token.create".into(),
            target: Some(format!("token:{}", token.id)),
            details: serde_json::json!({ "name": name, "role": role.as_str() }),
        })
        .await?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Under umask 022 (files 0644, directories 0755 by default), a fresh data directory
    /// and everything SQLite writes in it are still private; a looser one from before is
    /// tightened with a note.
    #[cfg(unix)]
    #[tokio::test]
    async fn the_data_directory_and_its_files_are_private_whatever_the_umask() {
        use std::os::unix::fs::PermissionsExt as _;
        let old = rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o022));
        let top = tempfile::tempdir().unwrap();
        let dir = top.path().join("data");
        let config = ServerConfig {
            data_dir: dir.clone(),
            ..ServerConfig::default()
        };
        let store = open_store(&config).await.unwrap();
        let org = store.create_organisation("o").await.unwrap();
        store
            .create_user(store::NewUser {
                org_id: org.id,
                username: "u".into(),
                role: Role::Admin,
                password_hash: "x".into(),
            })
            .await
            .unwrap();
        assert_eq!(mode(&dir), 0o700);
        for name in [
            "postern.db",
            "postern.db-wal",
            "postern.db-shm",
            "secret.key",
        ] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        }
        store.close().await;

        // A directory left open by an older version or a careless copy.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for name in ["postern.db", "secret.key"] {
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        let notes = secure_data_dir(&dir).unwrap();
        rustix::process::umask(old);
        assert_eq!(notes.len(), 3, "{notes:?}");
        assert!(
            notes.iter().any(|n| n.contains("secret.key was 644")),
            "{notes:?}"
        );
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("postern.db")), 0o600);
        assert_eq!(mode(&dir.join("secret.key")), 0o600);
        assert!(secure_data_dir(&dir).unwrap().is_empty());
    }

    #[test]
    fn secret_key_is_made_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/secret.key");
        let a = secret_key(&path).unwrap();
        let b = secret_key(&path).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, [0u8; 32]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(&path, b"short").unwrap();
        assert!(
            secret_key(&path)
                .unwrap_err()
                .to_string()
                .contains("5 bytes")
        );
    }
}
