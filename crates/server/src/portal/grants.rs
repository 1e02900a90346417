//! The Transient Access and Transient Forwarding tabs: the Add forms with every option and
//! its default, the live list (countdown, who made it, when first used) with Credentials,
//! Details and Revoke, and the ended grants below.
//!
//! Every change goes through the API's own code (`routes::grants`): the form is turned
//! into the API's creation object, so validation, the audit entry and the router job are
//! the same; a 422's fields come back next to the inputs of the same name.

use askama::Template;
use axum::Form;
use axum::extract::rejection::FormRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, TimeDelta, Utc};
use domain::{AccessId, ForwardId, GrantStatus};
use serde::Deserialize;

use super::error::PortalError;
use super::session::Signed;
use super::sites::{ENDED_SHOWN, Which, load, respond};
use super::{Layout, human, hx_target, is_htmx, iso, render, urls};
use crate::dto::{AccessLevelDto, AccessTypeDto, CreateAccess, CreateForward};
use crate::error::{ApiError, FieldError};
use crate::routes::grants as api;
use crate::state::AppState;

/// Validity choices the form offers, in minutes, kept to those within the limits.
const VALIDITY_CHOICES: [i64; 10] = [10, 15, 30, 60, 120, 240, 480, 720, 1440, 10080];
/// The validity the form starts with (the reference's default), when the limits allow it.
const VALIDITY_DEFAULT: i64 = 120;

/// Words for a number of minutes.
fn minutes_words(m: i64) -> String {
    match m {
        m if m % 1440 == 0 => match m / 1440 {
            1 => "1 day".into(),
            d => format!("{d} days"),
        },
        m if m % 60 == 0 => match m / 60 {
            1 => "1 hour".into(),
            h => format!("{h} hours"),
        },
        m => format!("{m} minutes"),
    }
}

/// One option of a select.
pub struct Choice {
    value: String,
    label: String,
    selected: bool,
}

/// The validity durations within the configured limits, `selected` marked.
fn validity_choices(state: &AppState, selected: &str) -> Vec<Choice> {
    let limits = api::limits(state);
    let in_limits = |m: i64| {
        let d = TimeDelta::minutes(m);
        d >= limits.min && d <= limits.max
    };
    let mut minutes: Vec<i64> = VALIDITY_CHOICES
        .into_iter()
        .filter(|m| in_limits(*m))
        .collect();
    let default = limits.default.num_minutes();
    if !minutes.contains(&default) && in_limits(default) {
        minutes.push(default);
        minutes.sort_unstable();
    }
    minutes
        .into_iter()
        .map(|m| Choice {
            value: m.to_string(),
            label: minutes_words(m),
            selected: m.to_string() == selected,
        })
        .collect()
}

/// The validity a fresh form starts with: 2 hours, or the configured default when 2 hours
/// is outside the limits.
fn validity_default(state: &AppState) -> String {
    let limits = api::limits(state);
    let two_hours = TimeDelta::minutes(VALIDITY_DEFAULT);
    if two_hours >= limits.min && two_hours <= limits.max {
        VALIDITY_DEFAULT.to_string()
    } else {
        limits.default.num_minutes().to_string()
    }
}

/// The visitor's own address as Allow from starts with, or, when the rules refuse it
/// (a private address outside lab mode), nothing and a note saying why.
fn own_address(state: &AppState, signed: &Signed) -> (String, String) {
    let addr = match signed.caller.address {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map_or(signed.caller.address, std::net::IpAddr::V4),
        other => other,
    };
    match domain::AllowFrom::from_addr(addr, &state.policy()) {
        Ok(_) => (addr.to_string(), String::new()),
        Err(e) => (
            String::new(),
            format!(
                "Your address as Postern sees it ({addr}) cannot be used ({}): give the \
                 public address or network you will connect from.",
                e.message
            ),
        ),
    }
}

/// Field errors by input name, and one for the form as a whole.
#[derive(Default)]
pub struct Errors {
    fields: Vec<FieldError>,
    form: Option<String>,
}

impl Errors {
    /// The message for input `name`, or "" (templates test `is_empty`).
    pub fn of(&self, name: &str) -> &str {
        self.fields
            .iter()
            .find(|e| e.field == name)
            .map_or("", |e| e.message.as_str())
    }

    fn any(&self) -> bool {
        !self.fields.is_empty() || self.form.is_some()
    }

    /// Keeps a 422's fields, each under the input that shows it; a field the form has no
    /// input for goes to the form's own message.
    fn from_fields(errors: Vec<FieldError>, inputs: &[&str]) -> Self {
        let mut out = Errors::default();
        let mut loose = Vec::new();
        for mut e in errors {
            if e.field == "expires_at" {
                e.field = "expire_after_minutes".into();
            }
            if inputs.contains(&e.field.as_str()) {
                if out.of(&e.field).is_empty() {
                    out.fields.push(e);
                }
            } else {
                loose.push(format!("{}: {}", e.field, e.message));
            }
        }
        if !loose.is_empty() {
            out.form = Some(loose.join("; "));
        }
        out
    }
}

/// What went wrong with a submitted form: shown in the form (validation, conflict), or
/// a whole error page (not allowed, not found, our fault).
fn form_error(e: ApiError, inputs: &[&str]) -> Result<(StatusCode, Errors), PortalError> {
    match e {
        ApiError::Validation(fields) => Ok((
            StatusCode::UNPROCESSABLE_ENTITY,
            Errors::from_fields(fields, inputs),
        )),
        ApiError::Conflict(message) => Ok((
            StatusCode::CONFLICT,
            Errors {
                fields: Vec::new(),
                form: Some(message),
            },
        )),
        ApiError::TooManyRequests { message, .. } => Ok((
            StatusCode::TOO_MANY_REQUESTS,
            Errors {
                fields: Vec::new(),
                form: Some(message),
            },
        )),
        other => Err(other.into()),
    }
}

/// The Add form of the Transient Access tab, as typed (or the defaults).
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct AccessForm {
    #[serde(rename = "type")]
    access_type: String,
    /// "on" when ticked.
    full_access: Option<String>,
    /// The level without full access: "read" or "write".
    access: String,
    allow_rfc1918: Option<String>,
    allow_from: String,
    expire_after_minutes: String,
}

const ACCESS_INPUTS: [&str; 6] = [
    "type",
    "full_access",
    "access",
    "allow_rfc1918",
    "allow_from",
    "expire_after_minutes",
];

#[derive(Template)]
#[template(path = "site_access_form_partial.html")]
struct AccessFormView {
    url: String,
    csrf: String,
    f: AccessForm,
    validity: Vec<Choice>,
    e: Errors,
    /// Whether the form shows open (after an error).
    open: bool,
    /// Why Allow from does not start with the visitor's address, if it does not.
    allow_note: String,
}

/// The Add form of the Transient Forwarding tab.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct ForwardForm {
    dst_address: String,
    dst_port: String,
    masquerade: Option<String>,
    allow_from: String,
    expire_after_minutes: String,
}

const FORWARD_INPUTS: [&str; 5] = [
    "dst_address",
    "dst_port",
    "masquerade",
    "allow_from",
    "expire_after_minutes",
];

#[derive(Template)]
#[template(path = "site_forward_form_partial.html")]
struct ForwardFormView {
    url: String,
    csrf: String,
    f: ForwardForm,
    validity: Vec<Choice>,
    e: Errors,
    open: bool,
    allow_note: String,
}

/// A minutes field as the API takes it; text that is not a number is a field error.
fn minutes_field(text: &str, errors: &mut Vec<FieldError>) -> Option<i64> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    match t.parse::<i64>() {
        Ok(m) => Some(m),
        Err(_) => {
            errors.push(FieldError::new(
                "expire_after_minutes",
                "choose one of the durations offered",
            ));
            None
        }
    }
}

/// Text the API takes as "not given" when empty.
fn optional(text: &str) -> Option<String> {
    let t = text.trim();
    (!t.is_empty()).then(|| t.to_owned())
}

impl AccessForm {
    fn defaults(state: &AppState, signed: &Signed) -> Self {
        Self {
            access_type: "winbox".into(),
            full_access: Some("on".into()),
            access: "read".into(),
            allow_rfc1918: None,
            allow_from: own_address(state, signed).0,
            expire_after_minutes: validity_default(state),
        }
    }

    /// The API's creation object, or the fields that cannot become one.
    fn to_request(&self) -> Result<CreateAccess, Vec<FieldError>> {
        let mut errors = Vec::new();
        let access_type = match self.access_type.as_str() {
            "winbox" | "" => AccessTypeDto::Winbox,
            "ssh" => AccessTypeDto::Ssh,
            _ => {
                errors.push(FieldError::new("type", "choose WinBox or SSH"));
                AccessTypeDto::Winbox
            }
        };
        let access = if self.full_access.is_some() {
            AccessLevelDto::Full
        } else {
            match self.access.as_str() {
                "read" | "" => AccessLevelDto::Read,
                "write" => AccessLevelDto::Write,
                _ => {
                    errors.push(FieldError::new("access", "choose read-only or write"));
                    AccessLevelDto::Read
                }
            }
        };
        let minutes = minutes_field(&self.expire_after_minutes, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CreateAccess {
            access_type: Some(access_type),
            access: Some(access),
            full_access: None,
            allow_rfc1918: Some(self.allow_rfc1918.is_some()),
            allow_from: optional(&self.allow_from),
            expire_after_minutes: minutes,
            expires_at: None,
        })
    }
}

impl ForwardForm {
    fn defaults(state: &AppState, signed: &Signed) -> Self {
        Self {
            dst_address: String::new(),
            dst_port: String::new(),
            masquerade: None,
            allow_from: own_address(state, signed).0,
            expire_after_minutes: validity_default(state),
        }
    }

    fn to_request(&self) -> Result<CreateForward, Vec<FieldError>> {
        let mut errors = Vec::new();
        let dst_port = match self.dst_port.trim().parse::<i64>() {
            Ok(p) => p,
            Err(_) => {
                errors.push(FieldError::new(
                    "dst_port",
                    "must be a port number between 1 and 65535",
                ));
                0
            }
        };
        let minutes = minutes_field(&self.expire_after_minutes, &mut errors);
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(CreateForward {
            expire_after_minutes: minutes,
            expires_at: None,
            dst_port,
            dst_address: self.dst_address.trim().to_owned(),
            allow_from: optional(&self.allow_from),
            masquerade: Some(self.masquerade.is_some()),
        })
    }
}

/// A grant as the lists show it.
pub struct GrantRow {
    /// "WinBox · full" or the destination.
    what: String,
    /// The user (access) or what is forwarded (forwards).
    who: String,
    allow: String,
    endpoint: String,
    status: &'static str,
    created_by: String,
    created: String,
    first_used: String,
    expires_iso: String,
    expires: String,
    ended: String,
    reason: String,
    revoked_early: bool,
    /// Names the grant in button labels.
    label: String,
    credentials_url: String,
    share_url: String,
    details_url: String,
    revoke_url: String,
    /// The replay of its terminal session, for access the Terminal button made.
    recording_url: Option<String>,
    live: bool,
}

#[derive(Template)]
#[template(path = "site_grants_partial.html")]
struct GrantList {
    kind: &'static str,
    /// Where the list re-fetches itself from, and how often (`None`: it does not).
    url: String,
    poll: Option<&'static str>,
    has_router: bool,
    can_write: bool,
    csrf: String,
    live: Vec<GrantRow>,
    ended: Vec<GrantRow>,
}

#[derive(Template)]
#[template(path = "site_grant_tab_partial.html")]
struct GrantTab {
    has_router: bool,
    can_write: bool,
    role: String,
    /// What was just created, said once.
    notice: Option<String>,
    form: String,
    list: String,
}

/// How often a grant list refreshes itself: every 2 s while a grant is on its way up or
/// down, every 30 s while one is live (so an expired one moves to "Ended"), else never.
fn poll_every(rows: &[(GrantStatus, GrantRow)]) -> Option<&'static str> {
    use GrantStatus::*;
    if rows
        .iter()
        .any(|(s, _)| matches!(s, Requested | Provisioning | Closing))
    {
        Some("every 2s")
    } else if rows.iter().any(|(s, _)| *s == Active) {
        Some("every 30s")
    } else {
        None
    }
}

/// What every row has, whatever its kind.
struct Common {
    status: GrantStatus,
    created_by: String,
    created_at: DateTime<Utc>,
    authorized_at: Option<DateTime<Utc>>,
    expires_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    revoked_early: bool,
    reason: Option<String>,
    entry_point: String,
    port: u16,
}

impl Common {
    fn row(self, what: String, who: String, allow: String, label: String) -> GrantRow {
        GrantRow {
            what,
            who,
            allow,
            endpoint: format!("{}:{}", self.entry_point, self.port),
            status: self.status.as_str(),
            created_by: self.created_by,
            created: human(self.created_at),
            first_used: self
                .authorized_at
                .map_or_else(|| "not yet used".into(), human),
            expires_iso: iso(self.expires_at),
            expires: human(self.expires_at),
            ended: self.ended_at.map_or_else(String::new, human),
            reason: self.reason.unwrap_or_default(),
            revoked_early: self.revoked_early,
            label,
            credentials_url: String::new(),
            share_url: String::new(),
            details_url: String::new(),
            revoke_url: String::new(),
            recording_url: None,
            live: self.status.is_live(),
        }
    }
}

fn access_row(site: domain::SiteId, g: store::TransientAccess) -> (GrantStatus, GrantRow) {
    let kind = match g.access_type {
        domain::AccessType::Winbox => "WinBox",
        domain::AccessType::Ssh => "SSH",
    };
    let level = match g.access {
        domain::AccessLevel::Full => "full",
        domain::AccessLevel::Write => "write",
        domain::AccessLevel::Read => "read-only",
    };
    let allow = format!(
        "{}{}",
        g.allow_from,
        if g.allow_rfc1918 { " + RFC 1918" } else { "" }
    );
    let status = g.status;
    let mut row = Common {
        status,
        created_by: g.created_by,
        created_at: g.created_at,
        authorized_at: g.authorized_at,
        expires_at: g.expires_at,
        ended_at: g.ended_at,
        revoked_early: g.revoked_early,
        reason: g.failure_reason,
        entry_point: g.entry_point,
        port: g.port,
    }
    .row(
        format!("{kind} · {level}"),
        g.username.clone(),
        allow,
        g.username,
    );
    row.credentials_url = urls::site_access_credentials(site, g.id);
    row.share_url = urls::site_access_share(site, g.id);
    row.revoke_url = urls::site_access_revoke(site, g.id);
    (status, row)
}

fn forward_row(site: domain::SiteId, g: store::TransientForward) -> (GrantStatus, GrantRow) {
    let dst = format!("{}:{}", g.dst_address, g.dst_port);
    let status = g.status;
    let mut row = Common {
        status,
        created_by: g.created_by,
        created_at: g.created_at,
        authorized_at: g.authorized_at,
        expires_at: g.expires_at,
        ended_at: g.ended_at,
        revoked_early: g.revoked_early,
        reason: g.failure_reason,
        entry_point: g.entry_point,
        port: g.port,
    }
    .row(
        dst.clone(),
        if g.masquerade {
            "masquerade".into()
        } else {
            String::new()
        },
        g.allow_from.to_string(),
        format!("the forward to {dst}"),
    );
    row.details_url = urls::site_forward(site, g.id);
    row.revoke_url = urls::site_forward_revoke(site, g.id);
    (status, row)
}

/// The rows of a tab's list, newest first as the store gives them.
async fn rows(
    state: &AppState,
    signed: &Signed,
    site: domain::SiteId,
    router: Option<&store::Router>,
    kind: Which,
) -> Result<Vec<(GrantStatus, GrantRow)>, PortalError> {
    let Some(r) = router else {
        return Ok(Vec::new());
    };
    let org = signed.caller.org_id;
    let may_replay = signed.caller.may_read_credentials();
    Ok(match kind {
        Which::Forwards => state
            .store
            .list_forwards(org, r.id, Some(ENDED_SHOWN))
            .await?
            .into_iter()
            .map(|g| forward_row(site, g))
            .collect(),
        _ => {
            let recorded: std::collections::HashSet<domain::AccessId> = state
                .store
                .list_terminal_sessions(org, r.id, 500)
                .await?
                .into_iter()
                .map(|s| s.access_id)
                .collect();
            state
                .store
                .list_access(org, r.id, Some(ENDED_SHOWN))
                .await?
                .into_iter()
                .map(|g| {
                    let recording = (may_replay && recorded.contains(&g.id))
                        .then(|| urls::recording(site, g.id));
                    let (status, mut row) = access_row(site, g);
                    row.recording_url = recording;
                    (status, row)
                })
                .collect()
        }
    })
}

async fn list(
    state: &AppState,
    signed: &Signed,
    site: domain::SiteId,
    router: Option<&store::Router>,
    kind: Which,
) -> Result<GrantList, PortalError> {
    let rows = rows(state, signed, site, router, kind).await?;
    let poll = poll_every(&rows);
    let (live, ended): (Vec<_>, Vec<_>) = rows.into_iter().map(|(_, r)| r).partition(|r| r.live);
    let (kind, url) = match kind {
        Which::Forwards => ("forwards", urls::site_forwards(site)),
        _ => ("access", urls::site_access(site)),
    };
    Ok(GrantList {
        kind,
        url,
        poll,
        has_router: router.is_some(),
        can_write: signed.caller.role.can_write(),
        csrf: signed.csrf.clone(),
        live,
        ended,
    })
}

/// A form of either tab, ready to render.
enum AnyForm {
    Access(AccessForm),
    Forward(ForwardForm),
}

/// The tab's panel: notice, form and list; or the list alone for its own poll; or the
/// whole page. `status` is the answer's (422 with errors in the form).
#[allow(clippy::too_many_arguments)]
async fn tab(
    state: &AppState,
    signed: &Signed,
    headers: &HeaderMap,
    site: &store::Site,
    router: Option<&store::Router>,
    form: AnyForm,
    errors: Errors,
    notice: Option<String>,
    status: StatusCode,
) -> Result<Response, PortalError> {
    let which = match form {
        AnyForm::Access(_) => Which::Access,
        AnyForm::Forward(_) => Which::Forwards,
    };
    let list = list(state, signed, site.id, router, which).await?;
    if is_htmx(headers) && hx_target(headers) == Some("grants-list") {
        return render(&list);
    }
    let open = errors.any();
    let allow_note = own_address(state, signed).1;
    let form = match form {
        AnyForm::Access(f) => AccessFormView {
            url: urls::site_access(site.id),
            csrf: signed.csrf.clone(),
            validity: validity_choices(state, &f.expire_after_minutes),
            f,
            e: errors,
            open,
            allow_note,
        }
        .render()?,
        AnyForm::Forward(f) => ForwardFormView {
            url: urls::site_forwards(site.id),
            csrf: signed.csrf.clone(),
            validity: validity_choices(state, &f.expire_after_minutes),
            f,
            e: errors,
            open,
            allow_note,
        }
        .render()?,
    };
    let panel = GrantTab {
        has_router: router.is_some(),
        can_write: signed.caller.role.can_write(),
        role: signed.caller.role.as_str().to_owned(),
        notice,
        form,
        list: list.render()?,
    };
    let body = if is_htmx(headers) && hx_target(headers) == Some("grant-panel") {
        render(&panel)?
    } else {
        respond(state, signed, headers, site, router, which, panel.render()?)?
    };
    Ok((status, body).into_response())
}

/// `GET /sites/{id}/access`: the Transient Access tab.
pub async fn site_access_get(
    State(state): State<AppState>,
    signed: Signed,
    Path(site_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let (site, router) = load(&state, &signed, &site_id).await?;
    let form = AnyForm::Access(AccessForm::defaults(&state, &signed));
    tab(
        &state,
        &signed,
        &headers,
        &site,
        router.as_ref(),
        form,
        Errors::default(),
        None,
        StatusCode::OK,
    )
    .await
}

/// `GET /sites/{id}/forwards`: the Transient Forwarding tab.
pub async fn site_forwards_get(
    State(state): State<AppState>,
    signed: Signed,
    Path(site_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let (site, router) = load(&state, &signed, &site_id).await?;
    let form = AnyForm::Forward(ForwardForm::defaults(&state, &signed));
    tab(
        &state,
        &signed,
        &headers,
        &site,
        router.as_ref(),
        form,
        Errors::default(),
        None,
        StatusCode::OK,
    )
    .await
}

/// A form body, or the one page a malformed one gets.
fn form_body<T>(form: Result<Form<T>, FormRejection>) -> Result<T, PortalError> {
    form.map(|Form(f)| f).map_err(|_| PortalError::BadForm)
}

/// The site's router, or "not found" for a site without one.
fn router_of(router: Option<&store::Router>) -> Result<&store::Router, PortalError> {
    router.ok_or(PortalError::NotFound)
}

/// `POST /sites/{id}/access`: the Add form. Created: the tab with a fresh form and the
/// new grant listed (a plain form post is sent back to the tab); refused: the form as
/// typed with each error beside its input (422).
pub async fn site_access_post(
    State(state): State<AppState>,
    signed: Signed,
    Path(site_id): Path<String>,
    headers: HeaderMap,
    form: Result<Form<AccessForm>, FormRejection>,
) -> Result<Response, PortalError> {
    let typed = form_body(form)?;
    let (site, router) = load(&state, &signed, &site_id).await?;
    let r = router_of(router.as_ref())?;
    let outcome = match typed.to_request() {
        Err(fields) => Err(ApiError::Validation(fields)),
        Ok(req) => api::create_access(&state, &signed.caller, r, &req).await,
    };
    match outcome {
        Ok(grant) => {
            if !is_htmx(&headers) {
                return Ok(Redirect::to(&urls::site_access(site.id)).into_response());
            }
            let notice = format!(
                "Transient access {} created: the router is being set up now. Open its \
                 Credentials below to log in.",
                grant.username
            );
            tab(
                &state,
                &signed,
                &headers,
                &site,
                router.as_ref(),
                AnyForm::Access(AccessForm::defaults(&state, &signed)),
                Errors::default(),
                Some(notice),
                StatusCode::OK,
            )
            .await
        }
        Err(e) => {
            let (status, errors) = form_error(e, &ACCESS_INPUTS)?;
            tab(
                &state,
                &signed,
                &headers,
                &site,
                router.as_ref(),
                AnyForm::Access(typed),
                errors,
                None,
                status,
            )
            .await
        }
    }
}

/// `POST /sites/{id}/forwards`: the Add form of the Transient Forwarding tab.
pub async fn site_forwards_post(
    State(state): State<AppState>,
    signed: Signed,
    Path(site_id): Path<String>,
    headers: HeaderMap,
    form: Result<Form<ForwardForm>, FormRejection>,
) -> Result<Response, PortalError> {
    let typed = form_body(form)?;
    let (site, router) = load(&state, &signed, &site_id).await?;
    let r = router_of(router.as_ref())?;
    let outcome = match typed.to_request() {
        Err(fields) => Err(ApiError::Validation(fields)),
        Ok(req) => api::create_forward(&state, &signed.caller, r, &req).await,
    };
    match outcome {
        Ok(forward) => {
            if !is_htmx(&headers) {
                return Ok(Redirect::to(&urls::site_forwards(site.id)).into_response());
            }
            let notice = format!(
                "Forward to {}:{} created: connect to {}:{} once the router is set up.",
                forward.dst_address, forward.dst_port, forward.entry_point, forward.port
            );
            tab(
                &state,
                &signed,
                &headers,
                &site,
                router.as_ref(),
                AnyForm::Forward(ForwardForm::defaults(&state, &signed)),
                Errors::default(),
                Some(notice),
                StatusCode::OK,
            )
            .await
        }
        Err(e) => {
            let (status, errors) = form_error(e, &FORWARD_INPUTS)?;
            tab(
                &state,
                &signed,
                &headers,
                &site,
                router.as_ref(),
                AnyForm::Forward(typed),
                errors,
                None,
                status,
            )
            .await
        }
    }
}

/// One line of a details or credentials panel, with a copy button when `copy`.
pub struct Line {
    label: &'static str,
    value: String,
    copy: bool,
    secret: bool,
}

/// The Credentials or Details panel: a `<dialog>`'s content for htmx, else a page.
#[derive(Template)]
#[template(path = "site_grant_detail_partial.html")]
struct Detail {
    title: String,
    intro: String,
    lines: Vec<Line>,
    /// A link to follow (`winbox://…`), with its words.
    link: Option<(String, String)>,
    /// Whether to say how to get and install the WinBox launcher.
    launcher: bool,
    /// Builds of the launcher on offer: (link, file name).
    downloads: Vec<(String, String)>,
    back: String,
}

#[derive(Template)]
#[template(path = "grant_detail.html")]
struct DetailPage {
    l: Layout,
    detail: String,
    back: String,
}

fn detail_response(
    state: &AppState,
    signed: &Signed,
    headers: &HeaderMap,
    detail: Detail,
) -> Result<Response, PortalError> {
    if is_htmx(headers) {
        return render(&detail);
    }
    let back = detail.back.clone();
    render(&DetailPage {
        l: Layout::new(state, signed, detail.title.clone(), "sites"),
        detail: detail.render()?,
        back,
    })
}

async fn load_access(
    state: &AppState,
    signed: &Signed,
    site_id: &str,
    grant_id: &str,
) -> Result<(store::Site, store::Router, store::TransientAccess), PortalError> {
    let (site, router) = load(state, signed, site_id).await?;
    let router = router.ok_or(PortalError::NotFound)?;
    let id: AccessId = grant_id.parse().map_err(|_| PortalError::NotFound)?;
    let grant = state
        .store
        .get_access(signed.caller.org_id, router.id, id)
        .await?;
    Ok((site, router, grant))
}

async fn load_forward(
    state: &AppState,
    signed: &Signed,
    site_id: &str,
    grant_id: &str,
) -> Result<(store::Site, store::Router, store::TransientForward), PortalError> {
    let (site, router) = load(state, signed, site_id).await?;
    let router = router.ok_or(PortalError::NotFound)?;
    let id: ForwardId = grant_id.parse().map_err(|_| PortalError::NotFound)?;
    let grant = state
        .store
        .get_forward(signed.caller.org_id, router.id, id)
        .await?;
    Ok((site, router, grant))
}

/// `POST /sites/{id}/access/{grant}/credentials`: the login, read through the API's own
/// code (so audited as `access.credentials.read`). A POST, since reading is recorded.
pub async fn access_credentials_post(
    State(state): State<AppState>,
    signed: Signed,
    Path((site_id, grant_id)): Path<(String, String)>,
    origin: crate::routes::winbox::RequestOrigin,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let (site, _, grant) = load_access(&state, &signed, &site_id, &grant_id).await?;
    let back = urls::site_access(site.id);
    let c = match api::credentials(&state, &signed.caller, &grant, &origin).await {
        Ok(c) => c,
        Err(ApiError::Conflict(message)) => {
            let detail = Detail {
                title: format!("Credentials of {}", grant.username),
                intro: format!("{message}."),
                lines: Vec::new(),
                link: None,
                launcher: false,
                downloads: Vec::new(),
                back,
            };
            return Ok((
                StatusCode::CONFLICT,
                detail_response(&state, &signed, &headers, detail)?,
            )
                .into_response());
        }
        Err(e) => return Err(e.into()),
    };
    let mut lines = vec![
        Line {
            label: "Endpoint",
            value: format!("{}:{}", c.entry_point, c.port),
            copy: true,
            secret: false,
        },
        Line {
            label: "Username",
            value: c.username.clone(),
            copy: true,
            secret: false,
        },
        Line {
            label: "Password",
            value: c.password,
            copy: true,
            secret: true,
        },
    ];
    if let Some(cmd) = &c.ssh_command {
        lines.push(Line {
            label: "SSH command",
            value: cmd.clone(),
            copy: true,
            secret: false,
        });
    }
    let (kind, how) = match grant.access_type {
        domain::AccessType::Winbox => (
            "WinBox",
            "Open in WinBox starts WinBox logged in, through Postern's launcher (the link \
             works once, for a minute: it holds a ticket, not the password). Without the \
             launcher, copy them into WinBox's login (Connect To, Login, Password).",
        ),
        domain::AccessType::Ssh => (
            "SSH",
            "Connect with any SSH client; the password is asked for after the command.",
        ),
    };
    let detail = Detail {
        title: format!("Credentials of {}", c.username),
        intro: format!(
            "{kind} login, valid until {} and only from {}. {how}",
            human(grant.expires_at),
            grant.allow_from
        ),
        lines,
        launcher: c.winbox_url.is_some(),
        downloads: if c.winbox_url.is_some() {
            super::launcher::downloads(&state)
        } else {
            Vec::new()
        },
        link: c.winbox_url.map(|url| (url, "Open in WinBox".to_owned())),
        back,
    };
    detail_response(&state, &signed, &headers, detail)
}

/// `GET /sites/{id}/forwards/{grant}`: a forward's details.
pub async fn forward_get(
    State(state): State<AppState>,
    signed: Signed,
    Path((site_id, grant_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let (site, _, f) = load_forward(&state, &signed, &site_id, &grant_id).await?;
    let endpoint = format!("{}:{}", f.entry_point, f.port);
    let dst = format!("{}:{}", f.dst_address, f.dst_port);
    let detail = Detail {
        title: format!("Forward to {dst}"),
        intro: format!(
            "Connections from {} to {endpoint} are forwarded to {dst} on the site's LAN{}.",
            f.allow_from,
            if f.masquerade {
                ", masqueraded as the router"
            } else {
                ""
            }
        ),
        lines: vec![
            Line {
                label: "Endpoint",
                value: endpoint,
                copy: true,
                secret: false,
            },
            Line {
                label: "Destination",
                value: dst,
                copy: false,
                secret: false,
            },
            Line {
                label: "Allowed from",
                value: f.allow_from.to_string(),
                copy: false,
                secret: false,
            },
            Line {
                label: "Status",
                value: f.status.as_str().to_owned(),
                copy: false,
                secret: false,
            },
            Line {
                label: "Created",
                value: format!("{} by {}", human(f.created_at), f.created_by),
                copy: false,
                secret: false,
            },
            Line {
                label: "First used",
                value: f.authorized_at.map_or_else(|| "not yet used".into(), human),
                copy: false,
                secret: false,
            },
            Line {
                label: if f.status.is_live() {
                    "Expires"
                } else {
                    "Ended"
                },
                value: human(f.ended_at.unwrap_or(f.expires_at)),
                copy: false,
                secret: false,
            },
        ],
        link: None,
        launcher: false,
        downloads: Vec::new(),
        back: urls::site_forwards(site.id),
    };
    detail_response(&state, &signed, &headers, detail)
}

/// After a revoke: the list (htmx), or back to the tab.
async fn after_revoke(
    state: &AppState,
    signed: &Signed,
    headers: &HeaderMap,
    site: &store::Site,
    router: &store::Router,
    which: Which,
) -> Result<Response, PortalError> {
    if is_htmx(headers) {
        return render(&list(state, signed, site.id, Some(router), which).await?);
    }
    let to = match which {
        Which::Forwards => urls::site_forwards(site.id),
        _ => urls::site_access(site.id),
    };
    Ok(Redirect::to(&to).into_response())
}

/// `POST /sites/{id}/access/{grant}/revoke`: revoked through the API's own code.
pub async fn access_revoke_post(
    State(state): State<AppState>,
    signed: Signed,
    Path((site_id, grant_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let (site, router, grant) = load_access(&state, &signed, &site_id, &grant_id).await?;
    api::revoke_grant(
        &state,
        &signed.caller,
        api::Grant::Access(grant.id),
        grant.status,
        router.id,
        state.now(),
    )
    .await?;
    after_revoke(&state, &signed, &headers, &site, &router, Which::Access).await
}

/// `POST /sites/{id}/forwards/{grant}/revoke`.
pub async fn forward_revoke_post(
    State(state): State<AppState>,
    signed: Signed,
    Path((site_id, grant_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let (site, router, grant) = load_forward(&state, &signed, &site_id, &grant_id).await?;
    api::revoke_grant(
        &state,
        &signed.caller,
        api::Grant::Forward(grant.id),
        grant.status,
        router.id,
        state.now(),
    )
    .await?;
    after_revoke(&state, &signed, &headers, &site, &router, Which::Forwards).await
}

/// `POST /sites/{id}/access/{grant}/share`: the Share button: a one-use link to the
/// grant's credentials for someone without an account (`routes::shares`), shown once.
pub async fn access_share_post(
    State(state): State<AppState>,
    signed: Signed,
    Path((site_id, grant_id)): Path<(String, String)>,
    origin: crate::routes::winbox::RequestOrigin,
    headers: HeaderMap,
) -> Result<Response, PortalError> {
    let (site, _, grant) = load_access(&state, &signed, &site_id, &grant_id).await?;
    let back = urls::site_access(site.id);
    let (share, url) =
        match crate::routes::shares::make(&state, &signed.caller, &grant, &origin).await {
            Ok(made) => made,
            Err(ApiError::Conflict(message)) => {
                let detail = Detail {
                    title: format!("Share {}", grant.username),
                    intro: format!("{message}."),
                    lines: Vec::new(),
                    link: None,
                    launcher: false,
                    downloads: Vec::new(),
                    back,
                };
                return Ok((
                    StatusCode::CONFLICT,
                    detail_response(&state, &signed, &headers, detail)?,
                )
                    .into_response());
            }
            Err(e) => return Err(e.into()),
        };
    let detail = Detail {
        title: format!("Share {}", grant.username),
        intro: format!(
            "Send this link to the person who needs in. It shows the login once, to whoever \
             opens it first, until {}; after that, or once it is revoked (through the \
             API), it shows nothing. Connections are still only taken from {}. \
             Opening it is recorded in the audit log with the opener's address.",
            human(share.expires_at),
            grant.allow_from
        ),
        lines: vec![Line {
            label: "Link",
            value: url,
            copy: true,
            secret: true,
        }],
        link: None,
        launcher: false,
        downloads: Vec::new(),
        back,
    };
    detail_response(&state, &signed, &headers, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minutes_read_as_people_say_them() {
        for (m, words) in [
            (10, "10 minutes"),
            (60, "1 hour"),
            (120, "2 hours"),
            (90, "90 minutes"),
            (1440, "1 day"),
            (10080, "7 days"),
        ] {
            assert_eq!(minutes_words(m), words);
        }
    }

    #[test]
    fn api_fields_land_on_their_inputs_and_the_rest_on_the_form() {
        let e = Errors::from_fields(
            vec![
                FieldError::new("allow_from", "must be publicly routed"),
                FieldError::new("expires_at", "too far"),
                FieldError::new("router", "odd"),
            ],
            &ACCESS_INPUTS,
        );
        assert_eq!(e.of("allow_from"), "must be publicly routed");
        assert_eq!(e.of("expire_after_minutes"), "too far");
        assert_eq!(e.of("type"), "");
        assert_eq!(e.form.as_deref(), Some("router: odd"));
    }

    #[test]
    fn the_access_form_becomes_the_apis_request() {
        let mut f = AccessForm {
            access_type: "ssh".into(),
            full_access: None,
            access: "write".into(),
            allow_rfc1918: Some("on".into()),
            allow_from: " 198.51.100.7 ".into(),
            expire_after_minutes: "120".into(),
        };
        let r = f.to_request().unwrap();
        assert_eq!(r.access_type, Some(AccessTypeDto::Ssh));
        assert_eq!(r.access, Some(AccessLevelDto::Write));
        assert_eq!(r.allow_rfc1918, Some(true));
        assert_eq!(r.allow_from.as_deref(), Some("198.51.100.7"));
        assert_eq!(r.expire_after_minutes, Some(120));
        f.full_access = Some("on".into());
        assert_eq!(f.to_request().unwrap().access, Some(AccessLevelDto::Full));
        f.access_type = "telnet".into();
        f.expire_after_minutes = "two hours".into();
        let fields: Vec<String> = f
            .to_request()
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["type", "expire_after_minutes"]);
    }
}
