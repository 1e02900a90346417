//! Postern's HTTP API (JSON, OpenAPI 3, Swagger UI), its authentication and authorisation.
//! The only crate that knows HTTP; it also serves the portal and the SSH terminal bridge.
//!
//! # Layout
//!
//! - [`config`]: `ServerConfig` from defaults, a TOML file, `POSTERN_*` variables and flags.
//! - [`bootstrap`]: first start (secret key, organisation, admin), regions, admin tokens.
//! - [`backup`]: `postern admin backup` and `restore` of a data directory.
//! - [`state`]: `AppState` shared by handlers, and the `Clock`.
//! - [`tunnels`]: the management tunnels as the server sees them, behind
//!   [`tunnels::TunnelGateway`] (admit and remove a router's key, its status, a stream to
//!   it): every call goes to the gateway of the router's region over its link.
//! - [`dataplane`]: the gateways behind the orchestrator's data-plane hook: the
//!   in-process node for `local` regions, entry-port candidates, opens and closes
//!   through the links, this process's gateway run.
//! - [`gateways`]: adding a regional gateway (a join token) and its join (its
//!   certificate signed by the control CA, its addresses recorded).
//! - [`links`]: the control plane's side of the control channel: a link to each gateway
//!   (the in-process node over an in-memory stream, each `postern gateway` over mTLS),
//!   its convergence to the database, the events and status it brings back. One code
//!   path for both.
//! - [`regions`]: regions and their gateways as the API, the portal and `/metrics` show
//!   them (local or remote; a remote one's link state and last status report).
//! - [`runs`]: which gateway run owns which connections, and when another run is gone.
//! - [`cache`]: grant lists kept under their router's grants version (never stale).
//! - [`render`]: grant lists as JSON, prepared once per grant, timed per request.
//! - [`auth`]: API tokens, password hashes, and the `Caller` extractor.
//! - [`backpressure`]: rate limits and live-grant caps on creating grants.
//! - [`error`]: `ApiError`, rendered as RFC 9457 problem+json.
//! - [`extract`]: JSON body, path and query extractors whose rejections are problems.
//! - [`dto`]: request and response bodies with their schemas.
//! - `routes`: the URL map and the handlers, grouped by area.
//! - [`docs`]: Swagger UI, embedded at build time.
//! - [`metrics`]: Prometheus counters and latency histograms.
//! - [`listen`]: the connection-capped listener (per address too, header deadline) and
//!   [`serve`].
//! - [`hosts`]: the `Host` check against the configured public names (DNS rebinding).
//! - [`onboarding`]: the line to paste, the enrolment and removal scripts (RouterOS 7),
//!   the check of what an enrolling router posts, the public routes' rate limit.
//! - [`sites`]: adding a site to onboard and issuing its line (API, portal and CLI).
//! - [`portal`]: the web portal (server-rendered pages, htmx), its sessions and assets.
//! - [`terminal`]: the SSH terminal bridge (WebSocket to russh) and its asciicast
//!   recordings.
//!
//! **Architecture Invariant:** every guarded handler takes a [`auth::Caller`] and reaches
//! data only through the caller's organisation; another organisation's row is a 404.

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod auth;
pub mod backpressure;
pub mod backup;
pub mod bootstrap;
pub mod cache;
pub mod config;
pub mod dataplane;
pub mod docs;
pub mod dto;
pub mod error;
pub mod extract;
pub mod gateways;
pub mod hosts;
pub mod links;
pub mod listen;
pub mod metrics;
pub mod onboarding;
pub mod portal;
pub mod regions;
pub mod render;
mod routes;
pub mod runs;
pub mod sites;
pub mod state;
pub mod terminal;
pub mod tunnels;

use std::future::Future;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use tokio::net::TcpListener;

pub use config::ServerConfig;
pub use error::ApiError;
pub use state::{AppState, Clock, SystemClock};

/// The whole HTTP application over `state`.
pub fn app(state: AppState) -> Router {
    routes::router()
        .merge(portal::router(state.clone()))
        // One sign-in throttle for the portal's form and the API's `POST /api/login`.
        .layer(axum::Extension(portal::session::Throttle::default()))
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            hosts::host_guard,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .with_state(state)
}

/// What the separate metrics listener (`metrics_listen`) serves: `/metrics` and
/// `/healthz`, nothing else.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", axum::routing::get(metrics::exposition))
        .route("/healthz", axum::routing::get(routes::healthz))
        .with_state(state)
}

/// The OpenAPI document of the API as generated from the handlers' annotations.
pub fn openapi() -> utoipa::openapi::OpenApi {
    routes::openapi()
}

/// The OpenAPI document as a server with `config` serves it at `/api/openapi.json` now.
pub fn openapi_document(config: &ServerConfig) -> serde_json::Value {
    routes::document(config, chrono::Utc::now())
}

/// Serves the app on `listener` until `shutdown` resolves, then drains open requests.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = listen::Limits::from_config(&state.config);
    let stats = state.metrics.connections.clone();
    // Upgraded connections (terminals) outlive the HTTP drain: end them when it starts,
    // and give them a moment to revoke their access and close their recordings.
    let terminals = state.terminals.clone();
    let stop_terminals = terminals.clone();
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        stop_terminals.stop();
        let _ = stopping.send(true);
    };
    let metrics = match state.config.metrics_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr).await?;
            tracing::info!(listen = %listener.local_addr()?, "metrics listening");
            let mut stopped = stopped.clone();
            Some(tokio::spawn(serve_metrics(
                listener,
                state.clone(),
                async move {
                    let _ = stopped.wait_for(|s| *s).await;
                },
            )))
        }
        None => None,
    };
    let tls = match (&state.config.tls_cert, &state.config.tls_key) {
        (Some(cert), Some(key)) => Some(
            listen::tls_acceptor(cert, key)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?,
        ),
        _ => None,
    };
    let served = listen::serve_tls(listener, limits, stats, tls, app(state), shutdown).await;
    terminals.shutdown(std::time::Duration::from_secs(5)).await;
    if let Some(task) = metrics {
        let _ = task.await;
    }
    served
}

/// Serves [`metrics_app`] on its own listener until `shutdown` resolves.
pub async fn serve_metrics(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let limits = listen::Limits {
        max: 16,
        ..listen::Limits::from_config(&state.config)
    };
    let stats = state.metrics.connections.clone();
    listen::serve(listener, limits, stats, metrics_app(state), shutdown).await
}

pub use listen::serve;
