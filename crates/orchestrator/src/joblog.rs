//! The orchestration log of one job attempt: lines an operator reads, kept in memory
//! during the attempt and written to the store in one transaction when it ends (so a
//! busy SQLite writer is not taken once per line), and mirrored to tracing at once.
//! Never given a secret: handlers describe commands by their non-secret attributes.

use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use domain::JobId;

use crate::clock::Clock;

/// Lines of one job (or, detached, of no job: the reconciler's scans only trace).
pub struct JobLog {
    job: Option<JobId>,
    clock: Arc<dyn Clock>,
    lines: Mutex<Vec<(DateTime<Utc>, String)>>,
}

impl JobLog {
    pub(crate) fn new(job: Option<JobId>, clock: Arc<dyn Clock>) -> Self {
        Self {
            job,
            clock,
            lines: Mutex::new(Vec::new()),
        }
    }

    /// Adds a line (written at the next [`flush`](Self::flush)).
    pub fn line(&self, message: impl Into<String>) {
        let message = message.into();
        match self.job {
            Some(job) => tracing::info!(job = %job, "{message}"),
            None => tracing::debug!("{message}"),
        }
        if self.job.is_some() {
            self.lines
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((self.clock.now(), message));
        }
    }

    /// The lines gathered so far, taken out (for a caller that writes them itself).
    pub(crate) fn take(&self) -> Vec<(DateTime<Utc>, String)> {
        std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Writes the lines gathered so far.
    pub(crate) async fn flush(&self, store: &store::Store) {
        let Some(job) = self.job else { return };
        let lines = std::mem::take(&mut *self.lines.lock().unwrap_or_else(|e| e.into_inner()));
        if let Err(e) = store.append_job_lines(job, &lines).await {
            tracing::warn!(job = %job, error = %e, "could not write the job's log lines");
        }
    }
}
