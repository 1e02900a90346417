//! Every portal URL in one place: the route patterns the router mounts and the functions
//! that build links to them, so a page never spells a path by hand.

use domain::{AccessId, ForwardId, SiteId};

pub const ROOT: &str = "/";
pub const LOGIN: &str = "/login";
pub const LOGOUT: &str = "/logout";
pub const SITES: &str = "/sites";
pub const SITE: &str = "/sites/{site_id}";
pub const SITE_ACCESS: &str = "/sites/{site_id}/access";
pub const SITE_FORWARDS: &str = "/sites/{site_id}/forwards";
pub const SITE_JOBS: &str = "/sites/{site_id}/jobs";
pub const SITE_ENROLLMENT: &str = "/sites/{site_id}/enrollment";
pub const SITE_ACCESS_CREDENTIALS: &str = "/sites/{site_id}/access/{grant_id}/credentials";
pub const SITE_ACCESS_REVOKE: &str = "/sites/{site_id}/access/{grant_id}/revoke";
pub const SITE_ACCESS_SHARE: &str = "/sites/{site_id}/access/{grant_id}/share";
/// A share link's public page (no session needed): `crate::routes::shares`.
pub const SHARED: &str = "/shared/{secret}";
pub const SITE_FORWARD: &str = "/sites/{site_id}/forwards/{grant_id}";
pub const SITE_FORWARD_REVOKE: &str = "/sites/{site_id}/forwards/{grant_id}/revoke";
pub const USERS: &str = "/users";
pub const TOKENS: &str = "/tokens";
pub const AUDIT: &str = "/audit";
pub const REGIONS: &str = "/regions";
pub const ASSET: &str = "/assets/{hash}/{name}";
pub const SITE_TERMINAL: &str = "/sites/{site_id}/terminal";
pub const TERMINAL: &str = "/sites/{site_id}/terminal/{access_id}";
pub const TERMINAL_WS: &str = "/sites/{site_id}/terminal/{access_id}/ws";
pub const RECORDING: &str = "/sites/{site_id}/recordings/{access_id}";
pub const RECORDING_CAST: &str = "/sites/{site_id}/recordings/{access_id}/cast";
pub const LAUNCHER_FILE: &str = "/launcher/{file}";

/// A build of the WinBox launcher (the name is checked by `launcher` first).
pub fn launcher_file(name: &str) -> String {
    format!("/launcher/{name}")
}

pub fn site(id: SiteId) -> String {
    format!("/sites/{id}")
}

pub fn site_access(id: SiteId) -> String {
    format!("/sites/{id}/access")
}

pub fn site_forwards(id: SiteId) -> String {
    format!("/sites/{id}/forwards")
}

pub fn site_enrollment(id: SiteId) -> String {
    format!("/sites/{id}/enrollment")
}

pub fn site_jobs(id: SiteId) -> String {
    format!("/sites/{id}/jobs")
}

pub fn site_access_credentials(site: SiteId, grant: AccessId) -> String {
    format!("/sites/{site}/access/{grant}/credentials")
}

pub fn site_access_revoke(site: SiteId, grant: AccessId) -> String {
    format!("/sites/{site}/access/{grant}/revoke")
}

pub fn site_access_share(site: SiteId, grant: AccessId) -> String {
    format!("/sites/{site}/access/{grant}/share")
}

pub fn site_forward(site: SiteId, grant: ForwardId) -> String {
    format!("/sites/{site}/forwards/{grant}")
}

pub fn site_forward_revoke(site: SiteId, grant: ForwardId) -> String {
    format!("/sites/{site}/forwards/{grant}/revoke")
}

pub fn site_terminal(id: SiteId) -> String {
    format!("/sites/{id}/terminal")
}

pub fn terminal(site: SiteId, access: AccessId) -> String {
    format!("/sites/{site}/terminal/{access}")
}

pub fn terminal_ws(site: SiteId, access: AccessId) -> String {
    format!("/sites/{site}/terminal/{access}/ws")
}

pub fn recording(site: SiteId, access: AccessId) -> String {
    format!("/sites/{site}/recordings/{access}")
}

pub fn recording_cast(site: SiteId, access: AccessId) -> String {
    format!("/sites/{site}/recordings/{access}/cast")
}

/// The URL of an embedded asset, with its content hash (cached for a year).
pub fn asset(name: &str) -> String {
    let hash = super::assets::hash_of(name).unwrap_or("missing");
    format!("/assets/{hash}/{name}")
}
