//! The URL map: every API route in one place, each with its OpenAPI description, plus the
//! unguarded `/healthz`, `/metrics` and the API docs. Handlers are grouped by area and
//! named `<area>_<method>`.

pub(crate) mod access;
mod admin;
pub(crate) mod common;
mod connections;
mod contract;
mod forwards;
mod gateways;
pub(crate) mod grants;
mod onboard;
mod routers;
pub(crate) mod shares;
mod signin;
mod system;
pub(crate) mod winbox;

pub(crate) use routers::{GATEWAY_UNREACHABLE, router_status, view as router_view};
pub(crate) use system::healthz;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Postern API",
        description = "Just-in-time remote access to MikroTik routers behind NAT: transient \
                       access (WinBox, SSH) and transient port forwarding, with their routers, \
                       sites, orchestration log and audit log.\n\n\
                       Every route but `/healthz` refuses a `Host` header that names neither \
                       an IP address, `localhost`, nor one of the server's configured \
                       `public_hosts` with 421 Misdirected Request (DNS rebinding). \
                       Connections are limited per client address \
                       (`max_connections_per_address`, more are closed at once) and a \
                       request's headers must arrive within `header_timeout` (10 s).",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(system::login_doc),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "transient-forwarding", description = "Temporary port forwards to LAN devices"),
        (name = "transient-access", description = "Temporary WinBox/SSH logins to routers"),
        (name = "routers", description = "Routers, sites and their orchestration log"),
        (name = "gateways", description = "Regional gateways joining the control plane"),
        (name = "admin", description = "Audit log, API tokens and users (admins only)"),
        (name = "system", description = "Health and metrics")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("pst_…")
                    .description(Some(
                        "An API token from `postern admin create-token`, POST /api/tokens or POST /api/login",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "metrics_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The server's `metrics_token` (configuration), for `/metrics` alone",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every route with its handler and description.
fn described() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(forwards::forwards_list, forwards::forwards_post))
        .routes(routes!(
            forwards::forward_get,
            forwards::forward_patch,
            forwards::forward_delete
        ))
        .routes(routes!(access::access_list, access::access_post))
        .routes(routes!(
            access::access_get,
            access::access_patch,
            access::access_delete
        ))
        .routes(routes!(access::access_credentials_get))
        .routes(routes!(
            shares::access_share_post,
            shares::access_shares_get
        ))
        .routes(routes!(shares::access_share_delete))
        .routes(routes!(winbox::winbox_redeem_post))
        .routes(routes!(connections::access_connections_get))
        .routes(routes!(connections::forward_connections_get))
        .routes(routes!(routers::routers_list, routers::routers_post))
        .routes(routes!(
            routers::router_get,
            routers::router_patch,
            routers::router_delete
        ))
        .routes(routes!(routers::router_jobs_get))
        .routes(routes!(routers::sites_list, onboard::sites_post))
        .routes(routes!(onboard::site_enrollment_post))
        .routes(routes!(onboard::site_removal_get))
        .routes(routes!(onboard::enroll_get, onboard::enroll_post))
        .routes(routes!(routers::site_get))
        .routes(routes!(routers::regions_list))
        .routes(routes!(gateways::gateway_join_post))
        .routes(routes!(routers::me_get))
        .routes(routes!(admin::audit_list))
        .routes(routes!(admin::tokens_list, admin::tokens_post))
        .routes(routes!(admin::token_delete))
        .routes(routes!(admin::users_list, admin::users_post))
        .routes(routes!(admin::user_patch, admin::user_delete))
        .routes(routes!(signin::login_post, signin::login_delete))
        .routes(routes!(system::healthz))
        .routes(routes!(system::metrics))
}

/// The API's routes (without state) and its OpenAPI document.
pub fn parts() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    described().split_for_parts()
}

/// The OpenAPI document alone.
pub fn openapi() -> utoipa::openapi::OpenApi {
    parts().1
}

/// The document as served by a server with `config` at `now`: the generated one
/// completed with the cross-field rules, the configured bounds and the answers every
/// route of a kind gives (see `contract`).
pub fn document(
    config: &crate::config::ServerConfig,
    now: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    static BASE: std::sync::OnceLock<serde_json::Value> = std::sync::OnceLock::new();
    let mut doc = BASE
        .get_or_init(|| serde_json::to_value(openapi()).unwrap_or_default())
        .clone();
    contract::complete(&mut doc, config, now);
    doc
}

/// Every route, for the OpenAPI document's own route and the docs page.
pub fn router() -> Router<AppState> {
    let (api, _) = parts();
    let docs = Router::new()
        .route("/api/docs", axum::routing::get(crate::docs::index))
        .route("/api/docs/", axum::routing::get(crate::docs::index))
        .route("/api/docs/{file}", axum::routing::get(crate::docs::asset))
        .route_layer(axum::middleware::from_fn(crate::docs::headers));
    api.route(
        "/api/openapi.json",
        axum::routing::get(system::openapi_json),
    )
    .merge(docs)
    .fallback(not_found)
    .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("route")
}

async fn method_not_allowed() -> impl IntoResponse {
    let problem = crate::error::Problem {
        kind: "urn:postern:problem:method".into(),
        title: "Method Not Allowed".into(),
        status: 405,
        detail: "this route does not take that method".into(),
        errors: Vec::new(),
    };
    crate::error::problem_response(StatusCode::METHOD_NOT_ALLOWED, &problem)
}
