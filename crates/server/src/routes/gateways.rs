//! A regional gateway's join in the API: `POST /api/gateways/join`, the public route a
//! `postern gateway --join` uses once with the token `postern admin add-gateway`
//! printed. Rate-limited per address with the enrolment routes; the token never reaches
//! a log line.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::onboard::EnrollerAddress;
use crate::error::{ApiError, FieldError, Problem, problem_response};
use crate::gateways::{self, GatewayError};
use crate::state::AppState;

/// The largest body the join reads.
pub const JOIN_LIMIT: usize = 16 * 1024;

/// A gateway's join (`control::msg::JoinRequest`, the same JSON).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JoinGateway {
    /// The join token `postern admin add-gateway` printed: `pgj_` and 40 letters and
    /// digits. Single use, until it expires (24 h unless told otherwise).
    #[schema(
        pattern = "^pgj_[A-Za-z0-9]{40}$",
        min_length = 44,
        max_length = 44,
        example = "pgj_Xk2v9QmT4rL8sW1yZ6bN3cH7dJ0fG5aE2uP9oI4q"
    )]
    pub token: String,
    /// A PKCS#10 request, PEM, for the gateway's control-channel key (made on the
    /// gateway; the key never leaves it), signed with that key. At most 8192 bytes.
    #[schema(
        max_length = 8192,
        pattern = "-----BEGIN CERTIFICATE REQUEST-----",
        example = "-----BEGIN CERTIFICATE REQUEST-----\nMIH…\n-----END CERTIFICATE REQUEST-----\n"
    )]
    pub csr_pem: String,
    /// The region tunnel's WireGuard public key (base64 of 32 bytes); its private half
    /// stays on the gateway.
    #[schema(
        pattern = "^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$",
        example = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
    )]
    pub wireguard_public_key: String,
    /// `host:port` where servers reach the gateway's control channel: a host name or
    /// IPv4 address (letters, digits, dots, hyphens) or an IPv6 address in brackets,
    /// and a port of 1-65535.
    #[schema(
        example = "eu-gw.example.net:7443",
        max_length = 261,
        pattern = "^([A-Za-z0-9.-]{1,253}|\\[[0-9A-Fa-f:.]{2,45}\\]):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
    )]
    pub control_address: String,
    /// `host:port` routers send WireGuard to, as `control_address`.
    #[schema(
        example = "eu-gw.example.net:51820",
        max_length = 261,
        pattern = "^([A-Za-z0-9.-]{1,253}|\\[[0-9A-Fa-f:.]{2,45}\\]):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
    )]
    pub tunnel_endpoint: String,
    /// The host operators connect to for entry ports: a host name or IPv4 address, or an
    /// IPv6 address in brackets.
    #[schema(
        example = "eu-gw.example.net",
        min_length = 1,
        max_length = 253,
        pattern = "^([A-Za-z0-9.-]{1,253}|\\[[0-9A-Fa-f:.]{2,45}\\])$"
    )]
    pub entry_host: String,
}

/// The region a gateway joined.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct JoinedRegionView {
    pub id: String,
    pub name: String,
    /// The region's tunnel prefix.
    #[schema(example = "100.64.1.0/24")]
    pub prefix: String,
    /// The gateway's own address in it.
    pub gateway_address: String,
    pub port_min: u16,
    pub port_max: u16,
}

/// A joined gateway's identity (`control::msg::JoinResponse`, the same JSON).
#[derive(Debug, Deserialize, Serialize, ToSchema)]
pub struct JoinedGateway {
    pub gateway_id: String,
    pub region: JoinedRegionView,
    /// Its control-channel certificate, signed by the control plane's CA (PEM).
    pub certificate_pem: String,
    /// The control plane's CA certificate (PEM): servers' client certificates chain to it.
    pub ca_pem: String,
}

fn problem(status: StatusCode, kind: &str, detail: &str, errors: Vec<FieldError>) -> Response {
    problem_response(
        status,
        &Problem {
            kind: format!("urn:postern:problem:{kind}"),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: detail.into(),
            errors,
        },
    )
}

/// Joins a regional gateway: spends its single-use token, signs its control-channel
/// certificate request with the control plane's CA, and records where servers reach it
/// and where routers send WireGuard. A gateway the region had is replaced. Every bad
/// token gets the same 401.
#[utoipa::path(
    post,
    path = "/api/gateways/join",
    tag = "gateways",
    security(()),
    request_body(content = JoinGateway, description = "At most 16 KiB of JSON"),
    responses(
        (status = 201, description = "Joined: the gateway's identity", body = JoinedGateway),
        (status = 400, description = "The body is not JSON of that shape (unknown, missing or mistyped field)", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "The token is unknown, used, expired or revoked", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The server is not set up for gateways (no control CA yet)", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 16 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "A field is invalid (`errors` names each)", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Over 30 enrolment or join requests a minute from this address", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn gateway_join_post(
    State(state): State<AppState>,
    EnrollerAddress(from): EnrollerAddress,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    if !state.enroll_limit.allow(from, std::time::Instant::now()) {
        tracing::warn!(%from, "gateway joins over the rate limit");
        let mut response = problem(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "too many requests from this address: wait a minute",
            Vec::new(),
        );
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("60"),
        );
        return Ok(response);
    }
    let body = body.unwrap_or_else(|_| Bytes::from_static(&[0; JOIN_LIMIT + 1]));
    if body.len() > JOIN_LIMIT {
        return Ok(problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too-large",
            "the join request is over 16 KiB",
            Vec::new(),
        ));
    }
    let req: control::msg::JoinRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return Ok(problem(
                StatusCode::BAD_REQUEST,
                "malformed",
                &format!("the join request is not JSON of the documented shape: {e}"),
                Vec::new(),
            ));
        }
    };
    if let Err(errors) = gateways::check_request(&req) {
        return Ok(validation(errors));
    }
    match gateways::join(&state.store, &state.config, &req, Some(from), state.now()).await {
        Ok(joined) => Ok((StatusCode::CREATED, axum::Json(joined)).into_response()),
        Err(GatewayError::Refused) => {
            tracing::warn!(%from, "a gateway join with an invalid token");
            Ok(problem(
                StatusCode::UNAUTHORIZED,
                "join-refused",
                "this join token is not valid: it is unknown, used, expired or revoked",
                Vec::new(),
            ))
        }
        Err(e @ GatewayError::Field(..)) => Ok(validation(vec![e])),
        Err(GatewayError::Setup(m)) => {
            Ok(problem(StatusCode::CONFLICT, "not-set-up", &m, Vec::new()))
        }
        Err(GatewayError::Store(e)) => Err(e.into()),
    }
}

fn validation(errors: Vec<GatewayError>) -> Response {
    problem(
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation",
        "the join request has invalid fields",
        errors
            .into_iter()
            .filter_map(|e| match e {
                GatewayError::Field(f, m) => Some(FieldError::new(f, m)),
                _ => None,
            })
            .collect(),
    )
}
