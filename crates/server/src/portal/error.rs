//! The portal's errors, rendered as HTML pages (the API's are problem+json): signed out
//! goes to the login page (htmx requests get `HX-Redirect`), a refused form gets one page
//! whatever was wrong with it, another organisation's row is "not found".

use askama::Template;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};

use super::urls;

#[derive(Debug, thiserror::Error)]
pub enum PortalError {
    #[error("signed out")]
    SignedOut,
    /// A non-GET request without the session's CSRF token, or from another site.
    #[error("refused")]
    Forbidden,
    /// The role may not see this page.
    #[error("not allowed")]
    NotAllowed,
    /// A form body that is not a form.
    #[error("unreadable form")]
    BadForm,
    /// Absent or in another organisation: the same on purpose.
    #[error("not found")]
    NotFound,
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<store::StoreError> for PortalError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::NotFound => Self::NotFound,
            other => Self::Internal(other.to_string()),
        }
    }
}

/// What the API's shared code refused, as a page: its fields are shown in forms before
/// this is reached, so here a refusal is a whole page.
impl From<crate::error::ApiError> for PortalError {
    fn from(e: crate::error::ApiError) -> Self {
        use crate::error::ApiError;
        match e {
            ApiError::Forbidden(_) => Self::NotAllowed,
            ApiError::NotFound(_) => Self::NotFound,
            ApiError::Validation(_)
            | ApiError::PayloadTooLarge
            | ApiError::UnsupportedMediaType(_) => Self::BadForm,
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<askama::Error> for PortalError {
    fn from(e: askama::Error) -> Self {
        Self::Internal(format!("rendering a page: {e}"))
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    title: &'a str,
    message: &'a str,
    css: String,
    home: &'static str,
}

impl IntoResponse for PortalError {
    fn into_response(self) -> Response {
        let (status, title, message) = match &self {
            Self::SignedOut => {
                let mut r = axum::response::Redirect::to(urls::LOGIN).into_response();
                r.headers_mut()
                    .insert("hx-redirect", HeaderValue::from_static(urls::LOGIN));
                return r;
            }
            Self::Forbidden => (
                StatusCode::FORBIDDEN,
                "This form cannot be accepted",
                "It has expired or did not come from this site. Go back, reload the page and try again.",
            ),
            Self::NotAllowed => (
                StatusCode::FORBIDDEN,
                "Not allowed",
                "Your role does not allow this.",
            ),
            Self::BadForm => (
                StatusCode::BAD_REQUEST,
                "This form could not be read",
                "Go back, reload the page and try again.",
            ),
            Self::NotFound => (
                StatusCode::NOT_FOUND,
                "Not found",
                "There is nothing here, or it belongs to another organisation.",
            ),
            Self::Internal(cause) => {
                tracing::error!(%cause, "portal request failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Something went wrong",
                    "The server could not complete this request. Try again in a moment.",
                )
            }
        };
        let page = ErrorPage {
            title,
            message,
            css: urls::asset("portal.css"),
            home: urls::SITES,
        };
        let body = page
            .render()
            .unwrap_or_else(|_| format!("<!doctype html><title>{title}</title><p>{message}"));
        let mut r = (status, Html(body)).into_response();
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }
}
