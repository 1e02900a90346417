//! Sites and the site page: the list, and the tabs (Overview, Transient Access, Transient
//! Forwarding, Orchestration Log), each its own URL; htmx asks for the tab's fragment,
//! anything else gets the whole page with that tab open.

use std::collections::HashMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{Redirect, Response};
use domain::{JobState, SiteId};

use super::error::PortalError;
use super::session::Signed;
use super::{Layout, ago, human, hx_target, is_htmx, render, urls};
use crate::state::AppState;

/// How many ended grants a tab shows below the live ones, newest first.
pub(super) const ENDED_SHOWN: store::Page = store::Page {
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
    status_label: &'static str,
    live: usize,
}

#[derive(Template)]
#[template(path = "sites.html")]
struct SitesPage {
    l: Layout,
    rows: Vec<SiteRow>,
    /// The Add site form, for writers: the regions to pick from, what was typed, and
    /// why it was refused.
    can_add: bool,
    regions: Vec<String>,
    name: String,
    region: String,
    error: String,
}

/// A router's status as shown, as the API says it (`routes::router_status`): `pending`
/// until a tunnelled router enrols, then online or offline from its tunnel (a direct
/// router's from the orchestrator), `gateway_unreachable` while its region's remote
/// gateway cannot be reached.
pub(super) fn shown_status(state: &AppState, r: &store::Router) -> &'static str {
    crate::routes::router_status(r, state.gateway.as_ref().map(|g| g.tunnels()))
}

/// A status in words (the badge's class is the status itself).
pub(super) fn status_label(status: &str) -> &str {
    if status == crate::routes::GATEWAY_UNREACHABLE {
        "gateway unreachable"
    } else {
        status
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
    sites_page(&state, &signed, None, axum::http::StatusCode::OK).await
}

/// The sites page, with the Add site form as typed and its error after a refusal.
pub(super) async fn sites_page(
    state: &AppState,
    signed: &Signed,
    refused: Option<(super::onboard::AddSiteForm, String)>,
    status: axum::http::StatusCode,
) -> Result<Response, PortalError> {
    let state = state.clone();
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
        let status = router.map_or("unknown", |r| shown_status(&state, r));
        rows.push(SiteRow {
            url: urls::site(site.id),
            name: site.name,
            identity: router
                .and_then(|r| r.identity.clone())
                .unwrap_or_else(|| NOT_REPORTED.into()),
            region: router
                .and_then(|r| regions.get(&r.region_id).cloned())
                .unwrap_or_else(|| "—".into()),
            status,
            status_label: status_label(status),
            live,
        });
    }
    let (typed, error) = match refused {
        Some((form, error)) => (Some(form), error),
        None => (None, String::new()),
    };
    let mut response = render(&SitesPage {
        l: Layout::new(&state, signed, "Sites", "sites"),
        rows,
        can_add: signed.caller.role.can_write(),
        regions: state
            .config
            .regions
            .iter()
            .map(|r| r.name.clone())
            .collect(),
        name: typed.as_ref().map(|f| f.name.clone()).unwrap_or_default(),
        region: typed.map(|f| f.region).unwrap_or_default(),
        error,
    })?;
    *response.status_mut() = status;
    Ok(response)
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
    status_label: &'static str,
    tabs: Vec<Tab>,
    panel: String,
    /// The site's actions at the top right: the Terminal button (`portal::terminal`).
    actions: String,
}

#[derive(Template)]
#[template(path = "site_body_partial.html")]
struct SiteBody {
    tabs: Vec<Tab>,
    panel: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Which {
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
pub(super) fn respond(
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
    let status = router.map_or("unknown", |r| shown_status(state, r));
    render(&SitePage {
        l: Layout::new(state, signed, site.name.clone(), "sites"),
        name: site.name.clone(),
        status,
        status_label: status_label(status),
        tabs,
        panel,
        actions: super::terminal::button(signed, site.id, router.is_some())?,
    })
}

/// The site (within the caller's organisation) and its router.
pub(super) async fn load(
    state: &AppState,
    signed: &Signed,
    site_id: &str,
) -> Result<(store::Site, Option<store::Router>), PortalError> {
    let id: SiteId = site_id.parse().map_err(|_| PortalError::NotFound)?;
    let (site, routers) = state.store.get_site(signed.caller.org_id, id).await?;
    Ok((site, routers.into_iter().next()))
}

/// What a router fact reads before the router has reported it.
const NOT_REPORTED: &str = "not reported yet";

struct Fact {
    label: &'static str,
    value: String,
}

impl Fact {
    fn missing(&self) -> bool {
        self.value == NOT_REPORTED
    }
}

#[derive(Template)]
#[template(path = "site_overview_partial.html")]
struct Overview {
    facts: Vec<Fact>,
    has_router: bool,
    /// Jobs the router refused as unknown or invalid: (what, the router's words).
    stuck: Vec<(String, String)>,
    /// The Terminal button and the recorded sessions (`portal::terminal`).
    terminal: String,
    /// A tunnelled router's onboarding: its pending line, the removal script
    /// (`portal::onboard`).
    onboarding: String,
}

/// A tunnelled router's tunnel as the API's `tunnel` field has it: the gateway's address,
/// the router's public endpoint as the gateway sees it, the last handshake, bytes each
/// way.
fn tunnel_facts(
    state: &AppState,
    r: &store::Router,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<Fact> {
    let tunnels = state.gateway.as_ref().map(|g| g.tunnels());
    let view = crate::routes::router_view(r, &[], tunnels);
    let Some(t) = view.tunnel else {
        return Vec::new();
    };
    let or_none = |v: Option<String>| v.unwrap_or_else(|| NOT_REPORTED.into());
    vec![
        Fact {
            label: "Gateway tunnel address",
            value: or_none(t.gateway_address),
        },
        Fact {
            label: "Router's public endpoint",
            value: or_none(t.endpoint),
        },
        Fact {
            label: "Last handshake",
            value: t
                .last_handshake_at
                .and_then(|at| at.parse::<chrono::DateTime<chrono::Utc>>().ok())
                .map_or_else(
                    || NOT_REPORTED.into(),
                    |at| format!("{} ({})", ago(now, at), human(at)),
                ),
        },
        Fact {
            label: "Tunnel bytes (from / to the router)",
            value: format!("{} / {}", t.rx_bytes, t.tx_bytes),
        },
    ]
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
    let mut stuck = Vec::new();
    let mut onboarding = String::new();
    if let Some(r) = &router {
        terminal = super::terminal::overview(&state, &signed, &site, r).await?;
        onboarding = super::onboard::panel(&state, &signed, &site, r).await?;
        stuck = state
            .store
            .stuck_jobs(r.id)
            .await?
            .into_iter()
            .map(|j| {
                (
                    format!("{} ({})", job_title(&j.kind), human(j.created_at)),
                    j.last_error.unwrap_or_default(),
                )
            })
            .collect();
        let region = state.store.get_region(r.region_id).await?;
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| NOT_REPORTED.into());
        let org = signed.caller.org_id;
        let live_access = state.store.list_access(org, r.id, None).await?.len();
        let live_forwards = state.store.list_forwards(org, r.id, None).await?.len();
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
                label: "Uptime",
                // As the router reported it when last seen.
                value: match (&r.uptime, r.last_seen_at) {
                    (Some(uptime), Some(at)) => format!("{uptime} (at {})", human(at)),
                    (Some(uptime), None) => uptime.clone(),
                    _ => NOT_REPORTED.into(),
                },
            },
            Fact {
                label: "Status",
                value: status_label(shown_status(&state, r)).into(),
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
                    || NOT_REPORTED.into(),
                    |at| format!("{} ({})", ago(now, at), human(at)),
                ),
            },
            Fact {
                label: "Reached",
                value: match r.reach {
                    store::Reach::Tunnel => "through the management tunnel (WireGuard)".into(),
                    store::Reach::Direct => "directly, at its address".into(),
                },
            },
            Fact {
                label: "Live transient access",
                value: live_access.to_string(),
            },
            Fact {
                label: "Live transient forwards",
                value: live_forwards.to_string(),
            },
        ];
    }
    if let Some(r) = &router {
        facts.extend(tunnel_facts(&state, r, now));
    }
    let panel = Overview {
        has_router: router.is_some(),
        facts,
        stuck,
        terminal,
        onboarding,
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

struct JobRow {
    id: String,
    kind: String,
    /// What the job does, in words.
    title: &'static str,
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

/// What a job kind does, for people (the kind itself is shown beside it).
fn job_title(kind: &str) -> &'static str {
    match kind {
        "access.create" => "Set up transient access",
        "access.update" => "Move transient access's end",
        "access.end" => "Remove transient access",
        "forward.create" => "Set up a transient forward",
        "forward.update" => "Move a transient forward's end",
        "forward.end" => "Remove a transient forward",
        _ => "Router job",
    }
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
                title: job_title(&job.kind),
                kind: job.kind.replace('_', " "),
                state: job.state.as_str(),
                open: unfinished,
                created: human(job.created_at),
                // A clean-up (max 0) is retried until it succeeds: no "of n".
                attempts: if job.max_attempts == 0 {
                    format!("attempt {}", job.attempts)
                } else {
                    format!("attempt {} of {}", job.attempts, job.max_attempts)
                },
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
