//! The WinBox launcher's downloads: builds of `postern-launcher` an administrator put in
//! the data directory's `launcher/` folder are listed in the Credentials dialog and
//! served to signed-in users. Only plain file names starting with `postern-launcher`
//! are listed or served; nothing else of the data directory is reachable.

use std::path::{Path, PathBuf};

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::error::PortalError;
use super::urls;
use crate::state::AppState;

/// The folder under the data directory the builds go in.
pub const FOLDER: &str = "launcher";
/// Longest file name served.
const MAX_NAME: usize = 100;

/// Whether `name` is a launcher build's file name: `postern-launcher` and letters,
/// digits, `.`, `_`, `-` (so never a path).
fn is_build_name(name: &str) -> bool {
    name.starts_with("postern-launcher")
        && name.len() <= MAX_NAME
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn folder(state: &AppState) -> PathBuf {
    state.config.data_dir.join(FOLDER)
}

/// The builds on offer: (link, file name), by name.
pub fn downloads(state: &AppState) -> Vec<(String, String)> {
    let Ok(entries) = std::fs::read_dir(folder(state)) else {
        return Vec::new();
    };
    let mut names: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_build_name(n))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|n| (urls::launcher_file(&n), n))
        .collect()
}

fn read(path: &Path) -> Option<Vec<u8>> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    meta.is_file().then(|| std::fs::read(path).ok()).flatten()
}

/// `GET /launcher/{file}`: one build, as a download.
pub async fn launcher_file_get(
    State(state): State<AppState>,
    UrlPath(file): UrlPath<String>,
) -> Result<Response, PortalError> {
    if !is_build_name(&file) {
        return Err(PortalError::NotFound);
    }
    let path = folder(&state).join(&file);
    let bytes = tokio::task::spawn_blocking(move || read(&path))
        .await
        .ok()
        .flatten()
        .ok_or(PortalError::NotFound)?;
    let mut response = bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_launcher_builds_are_served() {
        assert!(is_build_name("postern-launcher-x86_64-pc-windows-msvc.exe"));
        assert!(is_build_name("postern-launcher"));
        for bad in [
            "secret.key",
            "postern.db",
            "postern-launcher/../secret.key",
            "postern-launcher..exe",
            "postern-launcher x",
            "postern-launcher\\a",
            &format!("postern-launcher{}", "a".repeat(100)),
        ] {
            assert!(!is_build_name(bad), "{bad}");
        }
    }
}
