//! Onboarding in the portal: the Add site form's answer and Re-issue line, each a page
//! showing the line to paste (with a copy button) and when it stops working; and what
//! the site's Overview shows of onboarding (a pending router's token, the tunnel, the
//! removal script). The work is `sites`' (as for the API and the CLI).

use askama::Template;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::PortalError;
use super::session::Signed;
use super::{Layout, human, render, urls};
use crate::sites::{self, Asker, Line, SiteError};
use crate::state::AppState;

/// The Add site form.
#[derive(Debug, Deserialize)]
pub struct AddSiteForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub region: String,
    #[allow(dead_code)]
    #[serde(default)]
    pub csrf: String,
}

#[derive(Template)]
#[template(path = "site_line.html")]
struct LinePage {
    l: Layout,
    site: String,
    site_url: String,
    command: String,
    expires: String,
    left: String,
    lab: bool,
    new_site: bool,
}

fn asker(signed: &Signed) -> Asker {
    Asker {
        org_id: signed.caller.org_id,
        actor: signed.caller.actor.clone(),
        address: Some(signed.caller.address),
    }
}

fn line_page(
    state: &AppState,
    signed: &Signed,
    site: &store::Site,
    line: Line,
    new_site: bool,
) -> Result<Response, PortalError> {
    let now = state.now();
    let mut response = render(&LinePage {
        l: Layout::new(state, signed, format!("Enrol {}", site.name), "sites"),
        site: site.name.clone(),
        site_url: urls::site(site.id),
        lab: line.command.starts_with('#'),
        command: line.command,
        expires: human(line.expires_at),
        left: domain::rules::time_to_expire(now, line.expires_at),
        new_site,
    })?;
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

/// `POST /sites`: adds a site to onboard; its line, or the sites page with the error.
pub async fn sites_post(
    State(state): State<AppState>,
    signed: Signed,
    form: Result<Form<AddSiteForm>, FormRejection>,
) -> Result<Response, PortalError> {
    let Form(form) = form.map_err(|_| PortalError::BadForm)?;
    if !signed.caller.role.can_write() {
        return Err(PortalError::NotAllowed);
    }
    let region = Some(form.region.as_str()).filter(|r| !r.is_empty());
    match sites::add_site(
        &state.store,
        &state.config,
        &asker(&signed),
        &form.name,
        region,
        state.now(),
    )
    .await
    {
        Ok((site, _, line)) => line_page(&state, &signed, &site, line, true),
        Err(SiteError::Store(store::StoreError::Conflict(m)) | SiteError::Setup(m)) => {
            super::sites::sites_page(&state, &signed, Some((form, m)), StatusCode::CONFLICT).await
        }
        Err(SiteError::Field(field, m)) => {
            let message = format!("{field}: {m}");
            super::sites::sites_page(
                &state,
                &signed,
                Some((form, message)),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await
        }
        Err(SiteError::Store(e)) => Err(e.into()),
    }
}

/// `POST /sites/{id}/enrollment`: a new line for the site's router (the old one stops
/// working); admins only once the router has enrolled.
pub async fn site_enrollment_post(
    State(state): State<AppState>,
    signed: Signed,
    Path(site_id): Path<String>,
) -> Result<Response, PortalError> {
    let (site, router) = super::sites::load(&state, &signed, &site_id).await?;
    let router = router.ok_or(PortalError::NotFound)?;
    let role = signed.caller.role;
    let allowed = role.can_write()
        && (router.tunnel_public_key.is_none() || role == domain::Role::Admin)
        && router.reach == store::Reach::Tunnel;
    if !allowed {
        return Err(PortalError::NotAllowed);
    }
    let url = match state.config.enroll_url() {
        Ok(u) => u,
        Err(m) => return Ok((StatusCode::CONFLICT, m).into_response()),
    };
    let line = sites::issue_line(
        &state.store,
        &state.config,
        &url,
        &asker(&signed),
        router.id,
        state.now(),
    )
    .await
    .map_err(|e| match e {
        SiteError::Store(e) => PortalError::from(e),
        other => PortalError::Internal(other.to_string()),
    })?;
    line_page(&state, &signed, &site, line, false)
}

/// What the Overview shows of onboarding.
#[derive(Template)]
#[template(path = "site_onboarding_partial.html")]
pub struct OnboardingPanel {
    /// A pending router: waiting for its line to be pasted.
    pending: bool,
    /// Its open token's end, in words and as a time (none open: empty).
    left: String,
    expires: String,
    /// The Re-issue form's URL, when the caller may re-issue.
    reissue: Option<String>,
    csrf: String,
    removal: String,
}

/// The Overview's onboarding panel for `router` (empty for a directly reached router).
pub async fn panel(
    state: &AppState,
    signed: &Signed,
    site: &store::Site,
    router: &store::Router,
) -> Result<String, PortalError> {
    if router.reach != store::Reach::Tunnel {
        return Ok(String::new());
    }
    let now = state.now();
    let open = state
        .store
        .open_enrollments(signed.caller.org_id)
        .await?
        .into_iter()
        .find(|t| t.router_id == router.id);
    let (left, expires) = match &open {
        Some(t) if t.expires_at > now => (
            domain::rules::time_to_expire(now, t.expires_at),
            human(t.expires_at),
        ),
        Some(t) => ("expired".to_owned(), human(t.expires_at)),
        None => (String::new(), String::new()),
    };
    let role = signed.caller.role;
    let pending = router.tunnel_public_key.is_none();
    let may = role.can_write() && (pending || role == domain::Role::Admin);
    Ok(OnboardingPanel {
        pending,
        left,
        expires,
        reissue: may.then(|| urls::site_enrollment(site.id)),
        csrf: signed.csrf.clone(),
        removal: crate::onboarding::removal_script(&router.name),
    }
    .render()?)
}
