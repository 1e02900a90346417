//! A share link's public page, `/shared/{secret}`: no session needed. `GET` shows a
//! button and spends nothing (a link preview or a scanner fetching the page leaves it
//! intact); `POST` opens the link once (`routes::shares::open`, audited with the
//! opener's address) and shows the login. Every link that cannot be opened gets the
//! same page, 404.

use askama::Template;
use axum::extract::{FromRequestParts as _, Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::error::PortalError;
use super::session::{self, Signed};
use super::{human, render, urls};
use crate::routes::shares;
use crate::state::AppState;

struct Login {
    endpoint: String,
    username: String,
    password: String,
    ssh_command: Option<String>,
    program: &'static str,
    expires: String,
    allow: String,
}

#[derive(Template)]
#[template(path = "shared.html")]
struct SharedPage {
    css: String,
    action: String,
    csrf: Option<String>,
    login: Option<Login>,
    unusable: bool,
}

fn page(action: String) -> SharedPage {
    SharedPage {
        css: urls::asset("portal.css"),
        action,
        csrf: None,
        login: None,
        unusable: false,
    }
}

/// `GET /shared/{secret}`: the button (a well-formed link only; nothing is spent).
pub async fn shared_get(
    State(state): State<AppState>,
    Path(secret): Path<String>,
    req: Request,
) -> Result<Response, PortalError> {
    let (mut parts, _) = req.into_parts();
    let mut p = page(format!("/shared/{secret}"));
    if !shares::well_formed(&secret) {
        p.unusable = true;
        return Ok((StatusCode::NOT_FOUND, render(&p)?).into_response());
    }
    // Someone signed in to this portal posts the form through the CSRF guard.
    if let Ok(signed) = Signed::from_request_parts(&mut parts, &state).await {
        p.csrf = Some(signed.csrf);
    }
    render(&p)
}

/// `POST /shared/{secret}`: opens the link (once) and shows the login.
pub async fn shared_post(
    State(state): State<AppState>,
    Path(secret): Path<String>,
    req: Request,
) -> Result<Response, PortalError> {
    let (parts, _) = req.into_parts();
    let address = session::address(&state, &parts.extensions, &parts.headers);
    let mut p = page(format!("/shared/{secret}"));
    match shares::open(&state, &secret, address).await? {
        Some(opened) => {
            let g = &opened.grant;
            let endpoint = format!("{}:{}", g.entry_point, g.port);
            let (ssh_command, program) = match g.access_type {
                domain::AccessType::Ssh => (
                    Some(format!(
                        "ssh -p {} {}@{}",
                        g.port, g.username, g.entry_point
                    )),
                    "SSH",
                ),
                domain::AccessType::Winbox => (
                    None,
                    "WinBox: connect to the endpoint with this username and password",
                ),
            };
            p.login = Some(Login {
                endpoint,
                username: g.username.clone(),
                password: opened.password,
                ssh_command,
                program,
                expires: human(g.expires_at),
                allow: g.allow_from.to_string(),
            });
            render(&p)
        }
        None => {
            p.unusable = true;
            Ok((StatusCode::NOT_FOUND, render(&p)?).into_response())
        }
    }
}
