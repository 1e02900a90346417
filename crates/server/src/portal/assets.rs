//! The portal's static assets (htmx, xterm.js, the stylesheet and script), embedded at
//! build time by `build.rs` and served under `/assets/<content hash>/<name>` with a
//! year-long immutable cache: a new build changes the hash, so the URL.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/portal_assets.rs"));

/// The content hash of an embedded asset.
pub fn hash_of(name: &str) -> Option<&'static str> {
    PORTAL_ASSETS
        .iter()
        .find(|(n, ..)| *n == name)
        .map(|(_, _, hash, _)| *hash)
}

/// Whether every asset was found at build time (else the portal has no live updates).
pub fn complete() -> bool {
    PORTAL_ASSETS.iter().all(|(.., bytes)| bytes.is_some())
}

/// `GET /assets/{hash}/{name}`.
pub async fn asset_get(Path((hash, name)): Path<(String, String)>) -> Response {
    let found = PORTAL_ASSETS
        .iter()
        .find(|(n, _, h, _)| *n == name && *h == hash);
    match found {
        Some((_, kind, _, Some(bytes))) => (
            [
                (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=31536000, immutable"),
                ),
                (
                    header::X_CONTENT_TYPE_OPTIONS,
                    HeaderValue::from_static("nosniff"),
                ),
            ],
            *bytes,
        )
            .into_response(),
        _ => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}
