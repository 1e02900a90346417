//! The orchestration log: lines an operator reads, each numbered by the attempt that
//! writes it and mirrored to tracing at once. Lines are durable within a few
//! milliseconds without a write of their own on the hot path: every attempt of this
//! process queues its lines in one [`LogBuffer`], and whichever write comes first takes
//! all of them, those of other jobs too: the end of any attempt (in its one
//! transaction), or the [`flusher`], which writes what is left `log_flush_delay` after a
//! line was queued. So a process killed mid-attempt leaves the lines of that attempt up
//! to its last few milliseconds (connected, each command sent) on record. Never given a
//! secret: handlers describe commands by their non-secret attributes.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use domain::JobId;
use store::LogLine;
use tokio::sync::{Notify, watch};

use crate::Inner;
use crate::clock::Clock;

/// The lines of this process's attempts, waiting to be written.
#[derive(Default)]
pub(crate) struct LogBuffer {
    /// The lines, and when the first of them was queued.
    lines: Mutex<(Vec<LogLine>, Option<Instant>)>,
    queued: Notify,
}

impl LogBuffer {
    fn push(&self, line: LogLine) {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.0.push(line);
        if lines.1.is_none() {
            lines.1 = Some(Instant::now());
            self.queued.notify_one();
        }
    }

    /// Every line waiting, taken out (by the write that will carry them).
    pub(crate) fn take(&self) -> Vec<LogLine> {
        let mut lines = self.lines.lock().unwrap_or_else(|e| e.into_inner());
        lines.1 = None;
        std::mem::take(&mut lines.0)
    }

    /// When the oldest waiting line was queued.
    fn oldest(&self) -> Option<Instant> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// Writes the lines no attempt's end took, `log_flush_delay` after the first of them
/// was queued; at shutdown, whatever is left.
pub(crate) async fn flusher(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let buffer = &inner.log_buffer;
    loop {
        let stopping = tokio::select! {
            _ = buffer.queued.notified() => false,
            _ = shutdown.changed() => true,
        };
        if !stopping {
            // Let lines gather, and an attempt's end carry them at no cost: write only
            // what has waited `log_flush_delay` (ends take every line, so while jobs
            // end often this write is never needed).
            let delay = inner.config.log_flush_delay;
            while let Some(oldest) = buffer.oldest() {
                let waited = oldest.elapsed();
                if waited >= delay {
                    break;
                }
                tokio::time::sleep(delay - waited).await;
            }
        }
        if buffer.oldest().is_some()
            && let Err(e) = inner.store.write_lines(&|| buffer.take()).await
        {
            tracing::warn!(error = %e, "could not write job log lines");
        }
        if stopping || *shutdown.borrow() {
            return;
        }
    }
}

/// Lines of one job's attempt (or, detached, of no job: the reconciler's scans only
/// trace).
pub struct JobLog {
    job: Option<JobId>,
    clock: Arc<dyn Clock>,
    buffer: Option<Arc<Inner>>,
    /// The number of the last line given out.
    seq: AtomicU32,
}

impl JobLog {
    /// The log of an attempt of `job` whose lines so far end at `log_seq`.
    pub(crate) fn new(inner: &Arc<Inner>, job: JobId, log_seq: u32) -> Self {
        Self {
            job: Some(job),
            clock: inner.clock.clone(),
            buffer: Some(inner.clone()),
            seq: AtomicU32::new(log_seq),
        }
    }

    /// A log that only traces.
    pub(crate) fn detached(clock: Arc<dyn Clock>) -> Self {
        Self {
            job: None,
            clock,
            buffer: None,
            seq: AtomicU32::new(0),
        }
    }

    /// Adds a line: traced now, written within a few milliseconds.
    pub fn line(&self, message: impl Into<String>) {
        let seq = self.reserve();
        self.line_at(seq, message);
    }

    /// A number for a line to be written later (so it reads before later lines).
    pub(crate) fn reserve(&self) -> u32 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Adds a line under a number from [`reserve`](Self::reserve).
    pub(crate) fn line_at(&self, seq: u32, message: impl Into<String>) {
        let message = message.into();
        match self.job {
            Some(job) => tracing::info!(job = %job, "{message}"),
            None => tracing::debug!("{message}"),
        }
        if let (Some(job_id), Some(inner)) = (self.job, &self.buffer) {
            inner.log_buffer.push(LogLine {
                job_id,
                seq,
                at: self.clock.now(),
                message,
            });
        }
    }
}
