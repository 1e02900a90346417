//! Sites and the site page: the list, and the tabs (Overview, Transient Access, Transient
//! Forwarding, Orchestration Log), each its own URL; htmx asks for the tab's fragment,
//! anything else gets the whole page with that tab open.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{Redirect, Response};
use chrono::{DateTime, Utc};
use domain::{GrantStatus, JobState, RouterStatus, SiteId};

use super::error::PortalError;
use super::session::Signed;
use super::{Layout, ago, human, hx_target, is_htmx, iso, render, urls};
use crate::state::AppState;

/// How many ended grants a tab shows below the live ones, newest first.
const ENDED_SHOWN: store::Page = store::Page {
    limit: 50,
    offset: 0,
};

/// `GET /`: the sites.
pub async fn root_get() -> Redirect {
    Redirect::to(urls::SITES)
}

struct SiteRow {
    url: String,
    name: String,
    identity: String,
    region: String,
    status: &'static str,
    live: usize,
}

#[derive(Template)]
#[template(path = "sites.html")]
struct SitesPage {
    l: Layout,
    rows: Vec<SiteRow>,
}

fn status_word(s: RouterStatus) -> &'static str {
    match s {
        RouterStatus::Online => "online",
        RouterStatus::Offline => "offline",
        RouterStatus::Unknown => "unknown",
    }
}

async fn region_names(state: &AppState) -> Result<HashMap<domain::RegionId, String>, PortalError> {
    Ok(state
        .store
        .list_regions()
        .await?
        .into_iter()
        .map(|r| (r.id, r.name))
        .collect())
}

/// `GET /sites`.
pub async fn sites_get(
    State(state): State<AppState>,
    signed: Signed,
) -> Result<Response, PortalError> {
    let org = signed.caller.org_id;
    let regions = region_names(&state).await?;
    let mut rows = Vec::new();
    for (site, routers) in state.store.list_sites(org).await? {
        let router = routers.first();
        let mut live = 0;
        if let Some(r) = router {
            live += state
                .store
                .list_access(org, r.id, None)
                .await?
                .iter()
                .filter(|g| g.status.is_live())
                .count();
            live += state
                .store
                .list_forwards(org, r.id, None)
                .await?
                .iter()
                .filter(|g| g.status.is_live())
                .count();
        }
        rows.push(SiteRow {
            url: urls::site(site.id),
            name: site.name,
            identity: router
                .and_then(|r| r.identity.clone())
                .unwrap_or_else(|| "—".into()),
            region: router
                .and_then(|r| regions.get(&r.region_id).cloned())
                .unwrap_or_else(|| "—".into()),
            status: router.map_or("unknown", |r| status_word(r.status)),
            live,
        });
    }
    render(&SitesPage {
        l: Layout::new(&state, &signed, "Sites", "sites"),
        rows,
    })
}

/// One tab of the site page.
pub struct Tab {
    label: &'static str,
    url: String,
    current: bool,
}

#[derive(Template)]
#[template(path = "site.html")]
struct SitePage {
    l: Layout,
    name: String,
    status: &'static str,
    tabs: Vec<Tab>,
    panel: String,
}

#[derive(Template)]
#[template(path = "site_body_partial.html")]
struct SiteBody {
    tabs: Vec<Tab>,
    panel: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Overview,
    Access,
    Forwards,
    Jobs,
}

fn tabs(site: SiteId, open: Which) -> Vec<Tab> {
    [
        ("Overview", urls::site(site), Which::Overview),
        ("Transient Access", urls::site_access(site), Which::Access),
        (
            "Transient Forwarding",
            urls::site_forwards(site),
            Which::Forwards,
        ),
        ("Orchestration Log", urls::site_jobs(site), Which::Jobs),
    ]
    .into_iter()
    .map(|(label, url, w)| Tab {
        label,
        url,
        current: w == open,
    })
    .collect()
}

/// The whole page, or for htmx the tabs and the panel.
fn respond(
    state: &AppState,
    signed: &Signed,
    headers: &HeaderMap,
    site: &store::Site,
    router: Option<&store::Router>,
    open: Which,
    panel: String,
) -> Result<Response, PortalError> {
    let tabs = tabs(site.id, open);
    if is_htmx(headers) {
        return render(&SiteBody { tabs, panel });
    }
    render(&SitePage {
        l: Layout::new(state, signed, site.name.clone(), "sites"),
        name: site.name.clone(),
        status: router.map_or("unknown", |r| status_word(r.status)),
        tabs,
        panel,
    })
}

async fn load(
    state: &AppState,
    signed: &Signed,
    site_id: &str,
) -> Result<(store::Site, Option<store::Router>), PortalError> {
    let id: SiteId = site_id.parse().map_err(|_| PortalError::NotFound)?;
    let (site, routers) = state.store.get_site(signed.caller.org_id, id).await?;
    Ok((site, routers.into_iter().next()))
}

struct Fact {
    label: &'static str,
    value: String,
}

#[derive(Template)]
#[template(path = "site_overview_partial.html")]
struct Overview {
    facts: Vec<Fact>,
    has_router: bool,
    /// The Terminal button and the recorded sessions (`portal::terminal`).
    terminal: String,
}

/// `GET /sites/{id}`: the Overview tab.
pub async fn site_get(
    State(state): State<AppState>,
    signed: Signed,
    Path(site_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let (site, router) = load(&state, &signed, &site_id).await?;
    let now = state.now();
    let mut facts = Vec::new();
    let mut terminal = String::new();
    if let Some(r) = &router {
        terminal = super::terminal::overview(&state, &signed, &site, r).await?;
        let region = state.store.get_region(r.region_id).await?;
        let or_unknown =
            |v: &Option<String>| v.clone().unwrap_or_else(|| "not reported yet".into());
        facts = vec![
            Fact {
                label: "Router",
                value: r.name.clone(),
            },
            Fact {
                label: "Identity",
                value: or_unknown(&r.identity),
            },
            Fact {
                label: "RouterOS version",
                value: or_unknown(&r.routeros_version),
            },
            Fact {
                label: "Board",
                value: or_unknown(&r.board_name),
            },
            Fact {
                label: "Status",
                value: status_word(r.status).into(),
            },
            Fact {
                label: "Tunnel address",
                value: r.tunnel_address.to_string(),
            },
            Fact {
                label: "Region",
                value: format!("{} ({})", region.name, region.entry_point),
            },
            Fact {
                label: "Last seen",
                value: r.last_seen_at.map_or_else(
                    || "never".into(),
                    |at| format!("{} ({})", ago(now, at), human(at)),
                ),
            },
        ];
    }
    let panel = Overview {
        has_router: router.is_some(),
        facts,
        terminal,
    }
    .render()?;
    respond(
        &state,
        &signed,
        &headers,
        &site,
        router.as_ref(),
        Which::Overview,
        panel,
    )
}

/// A grant as the lists show it.
struct GrantRow {
    what: String,
    detail: String,
    endpoint: String,
    status: &'static str,
    created_by: String,
    created: String,
    first_used: String,
    expires_iso: String,
    expires: String,
    ended: String,
    reason: String,
    /// The replay of its terminal session, for grants the Terminal button made.
    recording: Option<String>,
}

#[derive(Template)]
#[template(path = "site_grants_partial.html")]
struct Grants {
    kind: &'static str,
    /// Where the list re-fetches itself from, and how often (`None`: it does not).
    url: String,
    poll: Option<&'static str>,
    has_router: bool,
    live: Vec<GrantRow>,
    ended: Vec<GrantRow>,
}

fn grant_status(s: GrantStatus) -> &'static str {
    s.as_str()
}

#[allow(clippy::too_many_arguments)]
fn row(
    what: String,
    detail: String,
    endpoint: String,
    status: GrantStatus,
    created_by: &str,
    created: DateTime<Utc>,
    authorized: Option<DateTime<Utc>>,
    expires: DateTime<Utc>,
    ended: Option<DateTime<Utc>>,
    reason: Option<&str>,
) -> GrantRow {
    GrantRow {
        what,
        detail,
        endpoint,
        status: grant_status(status),
        created_by: created_by.to_owned(),
        created: human(created),
        first_used: authorized.map_or_else(|| "not yet".into(), human),
        expires_iso: iso(expires),
        expires: human(expires),
        ended: ended.map_or_else(String::new, human),
        reason: reason.unwrap_or_default().to_owned(),
        recording: None,
    }
}

/// How often a grant list refreshes itself: every 2 s while a grant is on its way up or
/// down, every 30 s while one is live (so an expired one moves to "Ended"), else never.
fn poll_every(statuses: &[GrantStatus]) -> Option<&'static str> {
    use GrantStatus::*;
    if statuses
        .iter()
        .any(|s| matches!(s, Requested | Provisioning | Closing))
    {
        Some("every 2s")
    } else if statuses.contains(&Active) {
        Some("every 30s")
    } else {
        None
    }
}

/// The list alone for its own poll; else the tab (fragment or page).
fn respond_grants(
    state: &AppState,
    signed: &Signed,
    headers: &HeaderMap,
    site: &store::Site,
    router: Option<&store::Router>,
    open: Which,
    panel: Grants,
) -> Result<Response, PortalError> {
    if is_htmx(headers) && hx_target(headers) == Some("grants-list") {
        return render(&panel);
    }
    let panel = panel.render()?;
    respond(state, signed, headers, site, router, open, panel)
}

fn split(rows: Vec<(bool, GrantRow)>) -> (Vec<GrantRow>, Vec<GrantRow>) {
    let (live, ended): (Vec<_>, Vec<_>) = rows.into_iter().partition(|(live, _)| *live);
    (
        live.into_iter().map(|(_, r)| r).collect(),
        ended.into_iter().map(|(_, r)| r).collect(),
    )
}

/// `GET /sites/{id}/access`: the Transient Access tab.
pub async fn site_access_get(
    State(state): State<AppState>,
    signed: Signed,
    Path(site_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let (site, router) = load(&state, &signed, &site_id).await?;
    let mut rows = Vec::new();
    let mut statuses = Vec::new();
    if let Some(r) = &router {
        let recorded: std::collections::HashSet<domain::AccessId> = state
            .store
            .list_terminal_sessions(signed.caller.org_id, r.id, 500)
            .await?
            .into_iter()
            .map(|s| s.access_id)
            .collect();
        for g in state
            .store
            .list_access(signed.caller.org_id, r.id, Some(ENDED_SHOWN))
            .await?
        {
            let what = match g.access_type {
                domain::AccessType::Winbox => "WinBox",
                domain::AccessType::Ssh => "SSH",
            };
            let detail = format!(
                "{} access, user {}, from {}{}",
                g.access.as_str(),
                g.username,
                g.allow_from,
                if g.allow_rfc1918 { " + RFC1918" } else { "" }
            );
            statuses.push(g.status);
            let mut line = row(
                what.into(),
                detail,
                format!("{}:{}", g.entry_point, g.port),
                g.status,
                &g.created_by,
                g.created_at,
                g.authorized_at,
                g.expires_at,
                g.ended_at,
                g.failure_reason.as_deref(),
            );
            if recorded.contains(&g.id) {
                line.recording = Some(urls::recording(site.id, g.id));
            }
            rows.push((!g.status.is_final(), line));
        }
    }
    let (live, ended) = split(rows);
    let panel = Grants {
        kind: "access",
        url: urls::site_access(site.id),
        poll: poll_every(&statuses),
        has_router: router.is_some(),
        live,
        ended,
    };
    respond_grants(
        &state,
        &signed,
        &headers,
        &site,
        router.as_ref(),
        Which::Access,
        panel,
    )
}

/// `GET /sites/{id}/forwards`: the Transient Forwarding tab.
pub async fn site_forwards_get(
    State(state): State<AppState>,
    signed: Signed,
    Path(site_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let (site, router) = load(&state, &signed, &site_id).await?;
    let mut rows = Vec::new();
    let mut statuses = Vec::new();
    if let Some(r) = &router {
        for g in state
            .store
            .list_forwards(signed.caller.org_id, r.id, Some(ENDED_SHOWN))
            .await?
        {
            let detail = format!(
                "from {}{}",
                g.allow_from,
                if g.masquerade { ", masquerade" } else { "" }
            );
            statuses.push(g.status);
            rows.push((
                !g.status.is_final(),
                row(
                    format!("{}:{}", g.dst_address, g.dst_port),
                    detail,
                    format!("{}:{}", g.entry_point, g.port),
                    g.status,
                    &g.created_by,
                    g.created_at,
                    g.authorized_at,
                    g.expires_at,
                    g.ended_at,
                    g.failure_reason.as_deref(),
                ),
            ));
        }
    }
    let (live, ended) = split(rows);
    let panel = Grants {
        kind: "forwards",
        url: urls::site_forwards(site.id),
        poll: poll_every(&statuses),
        has_router: router.is_some(),
        live,
        ended,
    };
    respond_grants(
        &state,
        &signed,
        &headers,
        &site,
        router.as_ref(),
        Which::Forwards,
        panel,
    )
}

struct JobRow {
    id: String,
    kind: String,
    state: &'static str,
    open: bool,
    created: String,
    attempts: String,
    error: String,
    lines: Vec<(String, String)>,
}

#[derive(Template)]
#[template(path = "site_jobs_partial.html")]
struct Jobs {
    url: String,
    running: bool,
    has_router: bool,
    jobs: Vec<JobRow>,
}

/// `GET /sites/{id}/jobs`: the Orchestration Log tab; while a job runs the log polls
/// itself every 2 s.
pub async fn site_jobs_get(
    State(state): State<AppState>,
    signed: Signed,
    Path(site_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let (site, router) = load(&state, &signed, &site_id).await?;
    let mut jobs = Vec::new();
    if let Some(r) = &router {
        let page = store::Page {
            limit: 50,
            offset: 0,
        };
        for (job, lines) in state
            .store
            .list_jobs(signed.caller.org_id, r.id, page)
            .await?
        {
            let unfinished = matches!(job.state, JobState::Pending | JobState::Running);
            jobs.push(JobRow {
                id: job.id.to_string(),
                kind: job.kind.replace('_', " "),
                state: job.state.as_str(),
                open: unfinished,
                created: human(job.created_at),
                attempts: format!("{}/{}", job.attempts, job.max_attempts),
                error: job.last_error.unwrap_or_default(),
                lines: lines
                    .into_iter()
                    .map(|l| (l.at.format("%H:%M:%S").to_string(), l.message))
                    .collect(),
            });
        }
    }
    let panel = Jobs {
        url: urls::site_jobs(site.id),
        running: jobs.iter().any(|j| j.open),
        has_router: router.is_some(),
        jobs,
    };
    if is_htmx(&headers) && hx_target(&headers) == Some("jobs-log") {
        return render(&panel);
    }
    let panel = panel.render()?;
    respond(
        &state,
        &signed,
        &headers,
        &site,
        router.as_ref(),
        Which::Jobs,
        panel,
    )
}
