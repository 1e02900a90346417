//! The job worker: claims runnable jobs (woken at once in-process, by `NOTIFY` from
//! other processes, or when the next one falls due), runs each under a lease it renews
//! by heartbeat, and ends each attempt: completed, retried after an exponential back-off,
//! or failed (a creation that gives up fails its grant and queues the clean-up).

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::{AccessId, ForwardId, GrantStatus};
use store::{AttemptEnd, GrantMove, Job, JobEnd, JobOutcome, MoveLine};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

use crate::Inner;
use crate::dataplane::{EndReason, GrantKey, LiveGrant};
use crate::error::Error;
use crate::handlers::{self, Done};
use crate::joblog::JobLog;

/// The delay before attempt `attempts + 1`: base × 2^(attempts-1), capped.
pub fn backoff(base: Duration, max: Duration, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
    base.saturating_mul(factor).min(max)
}

/// Claims and starts jobs until shutdown, then waits for those running.
pub(crate) async fn dispatcher(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(inner.config.max_concurrent_jobs.max(1)));
    loop {
        if *shutdown.borrow() {
            break;
        }
        loop {
            let free = slots.available_permits();
            if free == 0 {
                break;
            }
            let now = inner.clock.now();
            // A read first: a claim is a write, not to be spent on finding nothing.
            match inner.store.has_claimable_job(now).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => tracing::warn!(error = %e, "could not look for jobs"),
            }
            // Up to one job per free slot, in one transaction.
            let limit = u32::try_from(free).unwrap_or(u32::MAX);
            match inner
                .store
                .claim_jobs(&inner.config.owner, now, inner.config.lease, limit, |job| {
                    intro(&inner.config.owner, job, now)
                })
                .await
            {
                Ok(jobs) if jobs.is_empty() => break,
                Ok(jobs) => {
                    let all = jobs.len() >= free;
                    for job in jobs {
                        let Ok(permit) = slots.clone().try_acquire_owned() else {
                            // Cannot happen (only this loop takes slots); the lease
                            // lapses and the job is taken again.
                            break;
                        };
                        tokio::spawn(run_job(inner.clone(), job, permit));
                    }
                    if !all {
                        // Every job that could run was taken.
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not claim jobs");
                    break;
                }
            }
        }
        let poll = inner.config.poll_interval;
        let wait = match inner.store.next_job_at().await {
            Ok(Some(at)) => {
                let now = inner.clock.now();
                match (at - now).to_std() {
                    Ok(d) if d > Duration::ZERO => d.min(poll),
                    // Due but not claimable: behind a running job, whose end wakes us.
                    _ => poll,
                }
            }
            _ => poll,
        };
        tokio::select! {
            _ = inner.jobs_wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
    // Let running attempts end (each is bounded by the attempt timeout).
    let _ = slots
        .acquire_many(u32::try_from(inner.config.max_concurrent_jobs.max(1)).unwrap_or(1))
        .await;
}

fn describe(job: &Job) -> String {
    let grant = job
        .payload
        .get("grant_id")
        .and_then(|g| g.as_str())
        .unwrap_or("-");
    match job.kind.as_str() {
        "access.create" => format!("create the temporary user of transient access {grant}"),
        "access.update" => format!("update transient access {grant} on the router"),
        "forward.create" => format!("create the NAT rules of transient forward {grant}"),
        "forward.update" => format!("update transient forward {grant} on the router"),
        "access.end" | "access.delete" => format!("end transient access {grant} on the router"),
        "forward.end" | "forward.delete" => {
            format!("end transient forward {grant} on the router")
        }
        "router.reconcile" => "reconcile the router with the live grants".to_string(),
        other => other.to_string(),
    }
}

/// The lines that open an attempt, written in the claiming transaction: so even if this
/// process dies mid-attempt, the log shows which worker had the job.
fn intro(owner: &str, job: &Job, now: chrono::DateTime<chrono::Utc>) -> Vec<String> {
    if job.attempts <= 1 {
        let waited = (now - job.created_at).num_milliseconds().max(0);
        vec![
            format!(
                "job created at {}: {}",
                job.created_at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
                describe(job)
            ),
            format!(
                "express execution requested: started by worker {owner} {waited} ms after creation"
            ),
        ]
    } else {
        let of = if job.max_attempts == 0 {
            "until it succeeds".to_string()
        } else {
            format!("of {}", job.max_attempts)
        };
        vec![format!(
            "attempt {} {of} started by worker {owner}",
            job.attempts
        )]
    }
}

/// Runs a leased job, then the router's further jobs leased as it ended, batch by batch.
async fn run_job(inner: Arc<Inner>, job: Job, _slot: OwnedSemaphorePermit) {
    let mut batch = vec![job];
    while !batch.is_empty() {
        batch = run_batch(&inner, batch).await;
    }
}

/// The most jobs a worker runs behind a leased one before it records their ends.
const RUN_BEHIND: u32 = 16;

/// Runs a batch of one router's leased jobs, one at a time in order (stopping at one to
/// be retried: the later ones wait for it); then, while the batch's lease keeps every
/// other worker off the router, the jobs queued behind it (up to [`RUN_BEHIND`], read
/// rather than leased: a job is on the router without waiting for a write). Records
/// all their ends in one write, which also leases the router's jobs that may run next:
/// returned.
async fn run_batch(inner: &Arc<Inner>, batch: Vec<Job>) -> Vec<Job> {
    let Some(router_id) = batch.first().map(|j| j.router_id) else {
        return Vec::new();
    };
    let owner = inner.config.owner.clone();
    // The log of the job being run, for the line saying the lease was lost.
    let current: std::sync::Mutex<Option<Arc<JobLog>>> = std::sync::Mutex::new(None);
    let set_current = |log: &Arc<JobLog>| {
        *current.lock().unwrap_or_else(|e| e.into_inner()) = Some(log.clone());
    };
    let heartbeat = async {
        loop {
            tokio::time::sleep(inner.config.heartbeat).await;
            let until = inner.clock.now()
                + chrono::Duration::from_std(inner.config.lease)
                    .unwrap_or(chrono::Duration::seconds(15));
            for job in &batch {
                match inner.store.renew_lease(job.id, &owner, until).await {
                    // Lost, or ended: the attempts that are left stop.
                    Ok(false) => return,
                    Ok(true) => {}
                    Err(e) => tracing::warn!(job = %job.id, error = %e, "lease renewal failed"),
                }
            }
        }
    };
    let work = async {
        let mut ends = Vec::with_capacity(batch.len());
        let mut retry = false;
        for (i, job) in batch.iter().enumerate() {
            let log = Arc::new(JobLog::new(inner, job.id, job.log_seq));
            set_current(&log);
            let (end, live, again) = attempt(inner, job, &log, i == 0).await;
            ends.push((end, live));
            if again {
                retry = true;
                break;
            }
        }
        let mut ran = 0;
        let mut last = batch.last().map(|j| j.id);
        while let (false, Some(after)) = (retry, last) {
            if ran >= RUN_BEHIND {
                break;
            }
            let behind = match inner
                .store
                .queued_behind(router_id, after, inner.clock.now(), RUN_BEHIND - ran)
                .await
            {
                Ok(jobs) => jobs,
                Err(e) => {
                    tracing::warn!(router = %router_id, error = %e, "could not read the jobs queued behind");
                    Vec::new()
                }
            };
            last = behind.last().map(|j| j.id);
            for mut job in behind {
                ran += 1;
                // This attempt, as a lease would have counted it.
                job.attempts += 1;
                let started = inner.clock.now();
                job.started_at.get_or_insert(started);
                let log = Arc::new(JobLog::new(inner, job.id, job.log_seq));
                set_current(&log);
                let (mut end, live, again) = attempt(inner, &job, &log, false).await;
                end.behind = Some(started);
                ends.push((end, live));
                if again {
                    retry = true;
                    break;
                }
            }
        }
        ends
    };
    let ends = tokio::select! {
        ends = work => ends,
        _ = heartbeat => {
            // The lines go with the next write (or the flusher's).
            if let Some(log) = current.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                log.line("lease lost: another worker has taken this job over; stopping this attempt");
            }
            inner.wake_jobs().await;
            return Vec::new();
        }
    };
    let leased_ended = ends.iter().filter(|(e, _)| e.behind.is_none()).count();
    let released: Vec<_> = batch.iter().skip(leased_ended).map(|j| j.id).collect();
    let (ends, lives): (Vec<_>, Vec<_>) = ends.into_iter().unzip();
    let now = inner.clock.now();
    let opening = |next: &Job| intro(&owner, next, now);
    let buffer = &inner.log_buffer;
    let recorded = inner
        .store
        .end_attempts(
            &owner,
            now,
            &ends,
            &released,
            &|| buffer.take(),
            Some((router_id, inner.config.lease, &opening)),
        )
        .await;
    let next = match recorded {
        Ok(AttemptEnd {
            recorded: true,
            grants,
            next,
        }) => {
            for (live, moved) in lives.into_iter().zip(grants) {
                let Some(mut live) = live else { continue };
                match moved {
                    // Already active (an update): its port stays where it is.
                    None => inner.dataplane.keep(&live),
                    Some(Ok(_)) => {
                        live.set_status(GrantStatus::Active);
                        inner.dataplane.open(&live);
                    }
                    // Ended meanwhile: its end closed the port.
                    Some(Err(_)) => {}
                }
            }
            next
        }
        Ok(_) => {
            tracing::warn!(router = %router_id, "the jobs' lease was lost before they ended");
            Vec::new()
        }
        Err(e) => {
            tracing::warn!(router = %router_id, error = %e, "could not record the jobs' end");
            Vec::new()
        }
    };
    if next.is_empty() {
        inner.wake_jobs().await;
    }
    next
}

/// One attempt of a leased job: how it ended (to record), the grant to open on the data
/// plane once recorded, and whether it is to be retried (so later jobs wait).
async fn attempt(
    inner: &Arc<Inner>,
    job: &Job,
    log: &JobLog,
    first: bool,
) -> (JobEnd, Option<LiveGrant>, bool) {
    let owner = &inner.config.owner;
    if first {
        // Written with the lease (see `intro`).
        for line in intro(owner, job, job.started_at.unwrap_or(job.created_at)) {
            tracing::info!(job = %job.id, "{line}");
        }
    } else {
        // Leased with the batch, started now.
        for line in intro(owner, job, inner.clock.now()) {
            log.line(line);
        }
    }
    let started = Instant::now();
    inner.count_execution();
    let result =
        match tokio::time::timeout(inner.config.attempt_timeout, handlers::run(inner, job, log))
            .await
        {
            Ok(r) => r,
            Err(_) => Err(Error::Unreachable(format!(
                "the attempt took longer than {} s",
                inner.config.attempt_timeout.as_secs()
            ))),
        };
    let elapsed = started.elapsed().as_millis();
    let (outcome, done) = match result {
        Ok(done) => (JobOutcome::Completed, done),
        Err(e) => {
            if matches!(e, Error::Unreachable(_)) {
                inner.conns.drop_router(job.router_id);
                inner.mark_offline(job.router_id).await;
            }
            let outcome = failed_attempt(inner, job, log, e, elapsed).await;
            (outcome, Done::Nothing)
        }
    };
    // The grant's move is recorded with the job's end; its line reads before "completed".
    let (grant, live) = match done {
        Done::Nothing => (None, None),
        Done::Activate(grant) if grant.status() == GrantStatus::Active => {
            log.line(format!("the grant ({}) is active", grant.key()));
            (None, Some(*grant))
        }
        Done::Activate(grant) => {
            let key = grant.key();
            let moved = GrantMove {
                grant: key,
                from: vec![GrantStatus::Provisioning],
                to: GrantStatus::Active,
                line: Some(MoveLine {
                    seq: log.reserve(),
                    moved: format!("the grant ({key}) is active"),
                    // Ended meanwhile: its end job (queued after this one) removes what
                    // we made.
                    refused: format!("the grant ({key}) did not become active: "),
                }),
            };
            (Some(moved), Some(*grant))
        }
        Done::End(key, to) => {
            let moved = GrantMove {
                grant: key,
                from: vec![GrantStatus::Closing],
                to,
                line: Some(MoveLine {
                    seq: log.reserve(),
                    moved: format!("the grant ({key}) is now {to}"),
                    refused: format!("the grant ({key}): "),
                }),
            };
            (Some(moved), None)
        }
    };
    if outcome == JobOutcome::Completed {
        log.line(format!("completed in {elapsed} ms"));
    }
    let retry = matches!(outcome, JobOutcome::Retry { .. });
    (
        JobEnd {
            job: job.id,
            outcome,
            grant,
            behind: None,
        },
        live,
        retry,
    )
}

/// Decides what a failed attempt leads to, and logs it.
async fn failed_attempt(
    inner: &Arc<Inner>,
    job: &Job,
    log: &JobLog,
    error: Error,
    elapsed: u128,
) -> JobOutcome {
    let creating = job.kind.ends_with(".create") || job.kind.ends_with(".update");
    if creating && !grant_still_live(inner, job).await {
        log.line(format!(
            "attempt {} failed ({error}); the grant has ended meanwhile, so creation stops here",
            job.attempts
        ));
        return JobOutcome::Completed;
    }
    if let Error::Refused(words) = &error
        && !creating
    {
        // The same commands would be refused again: not retried every minute for ever
        // but shown as stuck (the job, the router's page, /metrics), with the router's
        // words. A creation so refused fails its grant below instead.
        log.line(format!(
            "stuck after {} attempt(s): {words}; not retried, as the router will refuse the same command again (a restart of Postern queues a stuck clean-up once more)",
            job.attempts
        ));
        tracing::warn!(job = %job.id, router = %job.router_id, error = %words, "job stuck: the router refuses a command");
        return JobOutcome::Stuck(words.clone());
    }
    let exhausted = job.max_attempts > 0 && job.attempts >= job.max_attempts;
    if error.is_permanent() || matches!(error, Error::Refused(_)) || exhausted {
        log.line(format!(
            "failed after {} attempt(s) in {elapsed} ms: {error}",
            job.attempts
        ));
        if creating {
            give_up_grant(inner, job, log, &error).await;
        }
        return JobOutcome::Failed(error.to_string());
    }
    let delay = backoff(
        inner.config.backoff_base,
        inner.config.backoff_max,
        job.attempts,
    );
    log.line(format!(
        "attempt {} failed: {error}; retry in {} s",
        job.attempts,
        delay.as_secs_f64()
    ));
    let run_after =
        inner.clock.now() + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
    JobOutcome::Retry {
        run_after,
        error: error.to_string(),
    }
}

fn job_grant(job: &Job) -> Option<GrantKey> {
    let id = job.payload.get("grant_id")?.as_str()?;
    if job.kind.starts_with("access.") {
        id.parse::<AccessId>().ok().map(GrantKey::Access)
    } else {
        id.parse::<ForwardId>().ok().map(GrantKey::Forward)
    }
}

async fn grant_still_live(inner: &Arc<Inner>, job: &Job) -> bool {
    let status = match job_grant(job) {
        Some(GrantKey::Access(id)) => inner
            .store
            .get_access(job.org_id, job.router_id, id)
            .await
            .map(|g| g.status),
        Some(GrantKey::Forward(id)) => inner
            .store
            .get_forward(job.org_id, job.router_id, id)
            .await
            .map(|g| g.status),
        None => return true,
    };
    status.map(|s| s.is_live()).unwrap_or(false)
}

/// Creation gave up: the grant fails with the reason, the data plane closes, and the
/// clean-up of whatever was made is queued.
async fn give_up_grant(inner: &Arc<Inner>, job: &Job, log: &JobLog, error: &Error) {
    let Some(key) = job_grant(job) else { return };
    let now = inner.clock.now();
    let from = [GrantStatus::Requested, GrantStatus::Provisioning];
    let reason = Some(error.to_string());
    let moved = match key {
        GrantKey::Access(id) => inner
            .store
            .transition_access(id, &from, GrantStatus::Failed, now, reason)
            .await
            .map(|_| ()),
        GrantKey::Forward(id) => inner
            .store
            .transition_forward(id, &from, GrantStatus::Failed, now, reason)
            .await
            .map(|_| ()),
    };
    match moved {
        Ok(()) => {
            log.line(format!(
                "the grant ({key}) is now failed; its clean-up is queued"
            ));
            inner.dataplane.close(key, EndReason::Failed);
            if let Err(e) = inner
                .queue_end(job.org_id, job.router_id, key, EndReason::Failed)
                .await
            {
                log.line(format!("could not queue the clean-up: {e}"));
            }
        }
        Err(e) => log.line(format!("the grant ({key}) could not be marked failed: {e}")),
    }
}
