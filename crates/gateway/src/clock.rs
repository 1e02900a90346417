//! The wall clock as a parameter. Event times (`at`, `started_at`) come from a [`Clock`]
//! so that tests can fix them; deadlines use tokio's monotonic `Instant`, which tests can
//! pause and advance.

use std::fmt::Debug;

use chrono::{DateTime, Utc};

/// Where the gateway reads the time of day (UTC) for its events.
pub trait Clock: Debug + Send + Sync + 'static {
    /// Now, in UTC.
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}
