//! The state every handler shares: the store, the configuration, the clock, the metrics
//! and the token cache. Cheap to clone.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::auth::TokenCache;
use crate::cache::ListCache;
use crate::config::ServerConfig;
use crate::metrics::Metrics;

/// Where "now" comes from: a parameter so tests can move time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// Shared by every request.
#[derive(Clone)]
pub struct AppState {
    pub store: store::Store,
    pub config: Arc<ServerConfig>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Metrics,
    pub tokens: TokenCache,
    pub lists: ListCache,
    /// The orchestrator running in this process, if any: created grants' jobs run at
    /// once, revoke goes through it (gateway first, then the router).
    pub orchestrator: Option<orchestrator::Orchestrator>,
    /// The gateway running in this process, if any: entry-port candidates skip what it
    /// cannot use, `?wait=true` waits for its listener, connections show live counts.
    pub gateway: Option<crate::dataplane::GatewayPlane>,
    /// The portal's terminal sessions running in this process.
    pub terminals: crate::terminal::Terminals,
    /// Password hashing, bounded (`max_concurrent_hashes`, `hash_queue_wait`).
    pub hashing: crate::auth::Hashing,
    /// Requests to the public enrolment routes per client address.
    pub enroll_limit: crate::onboarding::RateLimit,
}

impl AppState {
    pub fn new(store: store::Store, config: ServerConfig, clock: Arc<dyn Clock>) -> Self {
        let hashing =
            crate::auth::Hashing::new(config.max_concurrent_hashes, config.hash_queue_wait);
        Self {
            hashing,
            store,
            config: Arc::new(config),
            clock,
            metrics: Metrics::default(),
            tokens: TokenCache::default(),
            lists: ListCache::default(),
            orchestrator: None,
            gateway: None,
            terminals: crate::terminal::Terminals::default(),
            enroll_limit: crate::onboarding::RateLimit::default(),
        }
    }

    /// With the orchestrator this process runs.
    pub fn with_orchestrator(mut self, orchestrator: orchestrator::Orchestrator) -> Self {
        self.orchestrator = Some(orchestrator);
        self
    }

    /// With the gateway this process runs.
    pub fn with_gateway(mut self, gateway: crate::dataplane::GatewayPlane) -> Self {
        self.gateway = Some(gateway);
        self
    }

    pub fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    /// The validation policy this server runs with.
    pub fn policy(&self) -> domain::Policy {
        domain::Policy {
            lab_mode: self.config.lab_mode,
        }
    }
}

impl axum::extract::FromRef<AppState> for Metrics {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}
