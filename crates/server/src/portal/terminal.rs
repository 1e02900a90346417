//! The Terminal button and what follows it: `POST /sites/{id}/terminal` makes an SSH
//! transient access for the signed-in user (the API's create, waiting for the router)
//! and answers with the terminal panel; the panel's script opens
//! `/sites/{id}/terminal/{access}/ws`, which [`crate::terminal`] bridges to the router;
//! and each session's recording is replayed at `/sites/{id}/recordings/{access}` or
//! downloaded as a `.cast` file. The Overview shows the button and the site's sessions.

use askama::Template;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use domain::{AccessId, GrantStatus, SiteId};
use serde_json::json;

use super::error::PortalError;
use super::session::Signed;
use super::{Layout, human, is_htmx, render, urls};
use crate::dto::{AccessLevelDto, AccessTypeDto, CreateAccess};
use crate::error::ApiError;
use crate::routes::common::{Grant, audit};
use crate::state::AppState;
use crate::terminal::{self, protocol};

/// How many terminal sessions the Overview lists, newest first.
const SESSIONS_SHOWN: u32 = 20;
/// The terminal size when the browser gives none.
const DEFAULT_SIZE: (u16, u16) = (80, 24);

/// The site and its router, in the caller's organisation.
async fn site_router(
    state: &AppState,
    signed: &Signed,
    site_id: &str,
) -> Result<(store::Site, store::Router), PortalError> {
    let id: SiteId = site_id.parse().map_err(|_| PortalError::NotFound)?;
    let (site, routers) = state.store.get_site(signed.caller.org_id, id).await?;
    let router = routers.into_iter().next().ok_or(PortalError::NotFound)?;
    Ok((site, router))
}

/// A terminal session of this site's router, in the caller's organisation.
async fn session_of(
    state: &AppState,
    signed: &Signed,
    router: &store::Router,
    access_id: &str,
) -> Result<store::TerminalSession, PortalError> {
    let id: AccessId = access_id.parse().map_err(|_| PortalError::NotFound)?;
    // Recordings hold what the router printed (exports, sometimes typed secrets): only
    // the roles that may read credentials may replay or download them.
    if !signed.caller.may_read_credentials() {
        return Err(PortalError::NotAllowed);
    }
    let session = state
        .store
        .get_terminal_session(signed.caller.org_id, id)
        .await?;
    if session.router_id != router.id {
        return Err(PortalError::NotFound);
    }
    Ok(session)
}

struct SessionRow {
    who: String,
    started: String,
    ended: String,
    reason: String,
    size: String,
    replay: String,
    cast: String,
}

#[derive(Template)]
#[template(path = "site_terminal_partial.html")]
struct Launch {
    can_write: bool,
    /// Whether the visitor may replay and download recordings (not viewers).
    may_replay: bool,
    sessions: Vec<SessionRow>,
}

#[derive(Template)]
#[template(path = "site_terminal_button_partial.html")]
struct Button {
    post_url: String,
    csrf: String,
}

/// The site page's Terminal button (top right, on every tab): for a site with a router,
/// to roles that may write.
pub fn button(signed: &Signed, site: SiteId, has_router: bool) -> Result<String, PortalError> {
    if !has_router || !signed.caller.role.can_write() {
        return Ok(String::new());
    }
    Ok(Button {
        post_url: urls::site_terminal(site),
        csrf: signed.csrf.clone(),
    }
    .render()?)
}

/// The Overview's terminal block: what the button does and the site's recorded sessions.
pub async fn overview(
    state: &AppState,
    signed: &Signed,
    site: &store::Site,
    router: &store::Router,
) -> Result<String, PortalError> {
    let sessions = state
        .store
        .list_terminal_sessions(signed.caller.org_id, router.id, SESSIONS_SHOWN)
        .await?
        .into_iter()
        .map(|s| SessionRow {
            who: s.created_by,
            started: s.started_at.map_or_else(|| "not opened".into(), human),
            ended: s.ended_at.map_or_else(|| "running".into(), human),
            reason: s.end_reason.unwrap_or_default(),
            size: kib(s.size),
            replay: urls::recording(site.id, s.access_id),
            cast: urls::recording_cast(site.id, s.access_id),
        })
        .collect();
    let may_replay = signed.caller.may_read_credentials();
    Ok(Launch {
        can_write: signed.caller.role.can_write(),
        may_replay,
        sessions,
    }
    .render()?)
}

fn kib(bytes: u64) -> String {
    if bytes < 1024 {
        format!("{bytes} B")
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

/// The terminal panel: connecting to `ws`, or the reason it cannot.
#[derive(Template)]
#[template(path = "terminal_panel_partial.html")]
struct Panel {
    router: String,
    username: String,
    ws: Option<String>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "terminal.html")]
struct TerminalPage {
    l: Layout,
    site: String,
    site_url: String,
    panel: String,
}

/// `POST /sites/{id}/terminal`: a new SSH access for the signed-in user, from their own
/// address, waited for; htmx gets the panel for the page's dock, a plain form post the
/// terminal page.
pub async fn terminal_post(
    State(state): State<AppState>,
    signed: Signed,
    Path(site_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    if !signed.caller.role.can_write() {
        return Err(PortalError::NotAllowed);
    }
    let (site, router) = site_router(&state, &signed, &site_id).await?;
    let request = CreateAccess {
        access_type: Some(AccessTypeDto::Ssh),
        access: Some(AccessLevelDto::Full),
        full_access: None,
        allow_rfc1918: None,
        allow_from: None,
        expire_after_minutes: None,
        expires_at: None,
    };
    let created = match crate::routes::grants::create_terminal_access(
        &state,
        &signed.caller,
        &router,
        &request,
    )
    .await
    {
        Ok(grant) => Ok(crate::routes::access::settled(&state, signed.caller.org_id, grant).await),
        Err(e) => Err(e),
    };
    let mut panel = Panel {
        router: router.name.clone(),
        username: String::new(),
        ws: None,
        error: None,
    };
    match created {
        Ok(grant) if grant.status == GrantStatus::Failed => {
            panel.error = Some(format!(
                "The router refused the access: {}",
                grant.failure_reason.as_deref().unwrap_or("no reason given")
            ));
        }
        Ok(grant) => {
            state
                .store
                .create_terminal_session(store::NewTerminalSession {
                    access_id: grant.id,
                    org_id: signed.caller.org_id,
                    router_id: router.id,
                    created_by: signed.caller.actor.clone(),
                    at: state.now(),
                })
                .await?;
            tokio::spawn(terminal::revoke_unopened(
                state.clone(),
                terminal::Ticket {
                    caller: signed.caller.clone(),
                    router: router.clone(),
                    session: signed.id_hash.clone(),
                    access_id: grant.id,
                    cols: DEFAULT_SIZE.0,
                    rows: DEFAULT_SIZE.1,
                },
                terminal::OPEN_WITHIN,
            ));
            panel.username = grant.username.clone();
            panel.ws = Some(urls::terminal_ws(site.id, grant.id));
            if !is_htmx(&headers) {
                return Ok(Redirect::to(&urls::terminal(site.id, grant.id)).into_response());
            }
        }
        Err(ApiError::Validation(errors)) => {
            let words: Vec<String> = errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect();
            panel.error = Some(format!("No terminal: {}.", words.join("; ")));
        }
        Err(ApiError::Conflict(why)) => panel.error = Some(format!("No terminal: {why}.")),
        Err(e) => return Err(PortalError::Internal(e.to_string())),
    }
    if is_htmx(&headers) {
        return render(&panel);
    }
    page(&state, &signed, &site, panel)
}

fn page(
    state: &AppState,
    signed: &Signed,
    site: &store::Site,
    panel: Panel,
) -> Result<Response, PortalError> {
    render(&TerminalPage {
        l: Layout::new(state, signed, format!("Terminal · {}", site.name), "sites"),
        site: site.name.clone(),
        site_url: urls::site(site.id),
        panel: panel.render()?,
    })
}

/// `GET /sites/{id}/terminal/{access}`: the terminal on a page of its own (after a form
/// post without htmx), while the session has not been opened.
pub async fn terminal_get(
    State(state): State<AppState>,
    signed: Signed,
    Path((site_id, access_id)): Path<(String, String)>,
) -> Result<Response, PortalError> {
    let (site, router) = site_router(&state, &signed, &site_id).await?;
    let session = session_of(&state, &signed, &router, &access_id).await?;
    if session.created_by != signed.caller.actor {
        return Err(PortalError::NotFound);
    }
    let grant = state
        .store
        .get_access(signed.caller.org_id, router.id, session.access_id)
        .await?;
    let open = session.started_at.is_none() && grant.status.is_live();
    let panel = Panel {
        router: router.name.clone(),
        username: grant.username,
        ws: open.then(|| urls::terminal_ws(site.id, session.access_id)),
        error: (!open).then(|| {
            "This terminal has been used or has ended: press Terminal on the site for a new one."
                .to_owned()
        }),
    };
    page(&state, &signed, &site, panel)
}

/// Whether a WebSocket handshake comes from a page of this server: `Origin` present and
/// naming the `Host` the request was sent to (browsers always send `Origin` here).
fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let (Some(origin), Some(host)) = (text(header::ORIGIN), text(header::HOST)) else {
        return false;
    };
    match origin.split_once("://") {
        Some((scheme, authority)) => {
            matches!(scheme, "http" | "https") && authority.eq_ignore_ascii_case(host)
        }
        None => false,
    }
}

/// `cols` and `rows` from the WebSocket URL's query: both or neither, numbers in range,
/// nothing else.
fn size(query: Option<&str>) -> Result<(u16, u16), String> {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return Ok(DEFAULT_SIZE);
    };
    if query.len() > 64 {
        return Err("query too long".into());
    }
    let (mut cols, mut rows) = (None, None);
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').ok_or("expected name=value")?;
        let number: u32 = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            value.parse().map_err(|_| "number too large")?
        } else {
            return Err(format!("{name} must be a number"));
        };
        let slot = match name {
            "cols" => &mut cols,
            "rows" => &mut rows,
            _ => return Err(format!("unknown parameter {name}")),
        };
        if slot.replace(number).is_some() {
            return Err(format!("{name} given twice"));
        }
    }
    match (cols, rows) {
        (Some(c), Some(r)) => protocol::size(c, r).map_err(|e| e.to_string()),
        _ => Err("give cols and rows together".into()),
    }
}

/// `GET /sites/{id}/terminal/{access}/ws`: the WebSocket of a terminal. Signed in
/// (the guarded router), from this site's own pages (`Origin`), the session's own user
/// with a role that may write, in the organisation, once per session.
pub async fn terminal_ws_get(
    State(state): State<AppState>,
    signed: Signed,
    Path((site_id, access_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, PortalError> {
    if !same_origin(&headers) {
        return Err(PortalError::Forbidden);
    }
    let (_, router) = site_router(&state, &signed, &site_id).await?;
    let session = session_of(&state, &signed, &router, &access_id).await?;
    // Another user's terminal is not found, as another organisation's is.
    if session.created_by != signed.caller.actor {
        return Err(PortalError::NotFound);
    }
    if !signed.caller.role.can_write() {
        return Err(PortalError::NotAllowed);
    }
    let (cols, rows) = match size(query.as_deref()) {
        Ok(s) => s,
        Err(why) => return Ok((StatusCode::BAD_REQUEST, why).into_response()),
    };
    let user = format!("{}/{}", signed.caller.org_id, signed.caller.actor);
    let Some(slot) = state.terminals.slot(&user) else {
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            "too many terminals are open (4 per user at most): close one and try again",
        )
            .into_response());
    };
    let now = state.now();
    let claimed = state
        .store
        .start_terminal_session(session.access_id, now, cols, rows)
        .await?;
    if !claimed {
        return Ok((
            StatusCode::CONFLICT,
            "this terminal was opened already: press Terminal for a new one",
        )
            .into_response());
    }
    state
        .store
        .append_audit(audit(
            &signed.caller,
            now,
            "terminal.start",
            Some(Grant::Access(session.access_id).target()),
            json!({ "router_id": router.id.to_string(), "cols": cols, "rows": rows }),
        ))
        .await?;
    let ticket = terminal::Ticket {
        caller: signed.caller.clone(),
        session: signed.id_hash.clone(),
        router,
        access_id: session.access_id,
        cols,
        rows,
    };
    let failed = (state.clone(), ticket.clone());
    Ok(ws
        .max_message_size(protocol::MAX_MESSAGE)
        .max_frame_size(protocol::MAX_MESSAGE)
        .on_failed_upgrade(move |e| {
            tracing::info!(error = %e, "terminal websocket upgrade failed");
            let (state, ticket) = failed;
            tokio::spawn(terminal::abandoned(state, ticket));
        })
        .on_upgrade(move |socket| terminal::run(state, ticket, socket, slot)))
}

#[derive(Template)]
#[template(path = "terminal_replay.html")]
struct Replay {
    l: Layout,
    site: String,
    site_url: String,
    who: String,
    started: String,
    ended: String,
    reason: String,
    size: String,
    cast: String,
}

/// `GET /sites/{id}/recordings/{access}`: a session's recording, played in the page.
pub async fn recording_get(
    State(state): State<AppState>,
    signed: Signed,
    Path((site_id, access_id)): Path<(String, String)>,
) -> Result<Response, PortalError> {
    let (site, router) = site_router(&state, &signed, &site_id).await?;
    let session = session_of(&state, &signed, &router, &access_id).await?;
    render(&Replay {
        l: Layout::new(
            &state,
            &signed,
            format!("Recording · {}", site.name),
            "sites",
        ),
        site: site.name.clone(),
        site_url: urls::site(site.id),
        who: session.created_by,
        started: session
            .started_at
            .map_or_else(|| "never opened".into(), human),
        ended: session
            .ended_at
            .map_or_else(|| "still running".into(), human),
        reason: session.end_reason.unwrap_or_default(),
        size: kib(session.size),
        cast: urls::recording_cast(site.id, session.access_id),
    })
}

/// `GET /sites/{id}/recordings/{access}/cast`: the recording as an asciicast v2 file.
pub async fn recording_cast_get(
    State(state): State<AppState>,
    signed: Signed,
    Path((site_id, access_id)): Path<(String, String)>,
) -> Result<Response, PortalError> {
    let (_, router) = site_router(&state, &signed, &site_id).await?;
    let session = session_of(&state, &signed, &router, &access_id).await?;
    let text = state
        .store
        .terminal_recording(signed.caller.org_id, session.access_id)
        .await?;
    let day = session
        .started_at
        .unwrap_or(session.created_at)
        .format("%Y%m%d-%H%M%S");
    let name: String = router
        .name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(40)
        .collect();
    let disposition = format!("attachment; filename=\"postern-{name}-{day}.cast\"");
    let mut response = text.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-asciicast"),
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn websocket_origin_must_be_this_host() {
        let check = |origin: Option<&str>, host: &str, expected: bool| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, host.parse().unwrap());
            if let Some(o) = origin {
                h.insert(header::ORIGIN, o.parse().unwrap());
            }
            assert_eq!(same_origin(&h), expected, "{origin:?} to {host}");
        };
        check(Some("http://127.0.0.1:8080"), "127.0.0.1:8080", true);
        check(Some("https://Postern.example"), "postern.example", true);
        check(Some("http://127.0.0.1:8081"), "127.0.0.1:8080", false);
        check(Some("http://evil.example"), "127.0.0.1:8080", false);
        check(Some("null"), "127.0.0.1:8080", false);
        check(Some("ftp://127.0.0.1:8080"), "127.0.0.1:8080", false);
        check(None, "127.0.0.1:8080", false);
    }

    #[test]
    fn terminal_size_from_the_query() {
        assert_eq!(size(None), Ok(DEFAULT_SIZE));
        assert_eq!(size(Some("")), Ok(DEFAULT_SIZE));
        assert_eq!(size(Some("cols=120&rows=40")), Ok((120, 40)));
        assert_eq!(size(Some("rows=1&cols=2")), Ok((2, 1)));
        for bad in [
            "cols=1&rows=24",
            "cols=501&rows=24",
            "cols=80&rows=0",
            "cols=80",
            "cols=80&rows=24&x=1",
            "cols=80&cols=81&rows=2",
            "cols=-1&rows=24",
            "cols=8a&rows=24",
            "cols=99999999999999999999&rows=1",
            "cols",
        ] {
            assert!(size(Some(bad)).is_err(), "{bad}");
        }
    }
}
