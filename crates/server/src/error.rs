//! The web layer's error type: every failure a handler can meet, mapped to a status and an
//! RFC 9457 `application/problem+json` body. Internal causes are logged, never shown.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// One offending field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The request field, as named in the JSON body, path or query.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem; `about:blank` when the status says it all.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Present for 422: each offending field.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// What went wrong, from the caller's point of view.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing, malformed, unknown or expired credentials: all look the same.
    #[error("missing or invalid credentials")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    /// Absent, or in another organisation: the two are indistinguishable on purpose.
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("{0}")]
    Conflict(String),
    #[error("invalid request")]
    Validation(Vec<FieldError>),
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("{0}")]
    UnsupportedMediaType(&'static str),
    /// A bounded resource (password hashing, the database's writer lock) stayed taken:
    /// try again shortly (503 with `Retry-After`).
    #[error("{0}")]
    Busy(&'static str),
    /// The caller went over a rate limit: try again after `retry_after` seconds (429
    /// with `Retry-After`).
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    /// A fault of ours: logged with its cause, shown as a bare 500.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Unauthorized => "urn:postern:problem:unauthorized",
            Self::Forbidden(_) => "urn:postern:problem:forbidden",
            Self::NotFound(_) => "urn:postern:problem:not-found",
            Self::Conflict(_) => "urn:postern:problem:conflict",
            Self::Validation(_) => "urn:postern:problem:validation",
            Self::PayloadTooLarge => "urn:postern:problem:too-large",
            Self::UnsupportedMediaType(_) => "urn:postern:problem:media-type",
            Self::Busy(_) => "urn:postern:problem:busy",
            Self::TooManyRequests { .. } => "urn:postern:problem:rate-limited",
            Self::Internal(_) => "about:blank",
        }
    }

    /// The problem document for this error.
    pub fn problem(&self) -> Problem {
        let status = self.status();
        let detail = match self {
            Self::Internal(_) => "the server failed to handle the request".to_owned(),
            Self::Validation(errors) => match errors.as_slice() {
                [one] => format!("{}: {}", one.field, one.message),
                _ => "the request has invalid fields".to_owned(),
            },
            other => other.to_string(),
        };
        Problem {
            kind: self.kind().to_owned(),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail,
            errors: match self {
                Self::Validation(e) => e.clone(),
                _ => Vec::new(),
            },
        }
    }
}

impl From<store::StoreError> for ApiError {
    fn from(e: store::StoreError) -> Self {
        match e {
            store::StoreError::NotFound => Self::NotFound("resource"),
            store::StoreError::Conflict(m) => Self::Conflict(m),
            store::StoreError::Busy(cause) => {
                tracing::warn!(%cause, "the database stayed locked; the request is refused with 503");
                Self::Busy("the database is locked by another writer: try again in a few seconds")
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<domain::ValidationError> for ApiError {
    fn from(e: domain::ValidationError) -> Self {
        Self::field(e.field.to_string(), e.message)
    }
}

/// Writes a problem document with the right content type.
pub fn problem_response(status: StatusCode, problem: &Problem) -> Response {
    let body = serde_json::to_vec(problem).unwrap_or_default();
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(cause) = &self {
            tracing::error!(%cause, "request failed");
        }
        let mut response = problem_response(self.status(), &self.problem());
        if let Self::TooManyRequests { retry_after, .. } = &self
            && let Ok(v) = HeaderValue::from_str(&retry_after.max(&1).to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, v);
        }
        response
    }
}
