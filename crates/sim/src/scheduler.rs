//! The scheduler: runs each enabled `/system/scheduler` entry's `on-event` when it is
//! due, by the router's [`Clock`](crate::clock::Clock).
//!
//! An entry first runs at `start-date` + `start-time` (UTC); with an `interval` it runs
//! again every interval after that, otherwise once. An entry whose start is already past
//! when it is added runs at the next interval boundary, or never without an interval
//! (RouterOS does the same). `start-time=startup` is accepted and never runs (the sim
//! does not reboot). With a manual clock, [`tick`] runs what is due at once; the
//! background task also wakes whenever the manual clock moves.

use std::time::Duration;

use crate::clock;
use crate::router::{Caller, Router};
use crate::script;
use crate::state::Policies;

/// The hidden property holding an entry's next due time (Unix seconds); `print` never
/// shows it because it is not in the schema.
pub const DUE: &str = "_due";

/// The first time at or after `now` that an entry starting at `start` with `interval`
/// seconds is due: `start` itself when it is still ahead.
pub fn next_due(start: u64, interval: u64, now: u64) -> Option<u64> {
    if start >= now {
        return Some(start);
    }
    if interval == 0 {
        return None;
    }
    let periods = (now - start).div_ceil(interval);
    start.checked_add(periods.checked_mul(interval)?)
}

/// Runs every entry that is due now. Returns how many ran.
pub fn tick(router: &Router) -> usize {
    let now = router.clock().unix();
    let due: Vec<(u32, String, String, String)> = {
        let mut state = router.state();
        if !state.device_mode.allows_scheduler() {
            return 0;
        }
        let mut due = Vec::new();
        for item in state.scheduler.items.iter_mut() {
            let Some(at) = item.get(DUE).and_then(|d| d.parse::<u64>().ok()) else {
                continue;
            };
            if item.is_disabled() || at > now {
                continue;
            }
            let interval = clock::parse_interval(item.get("interval").unwrap_or("0s"))
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let runs = item
                .get("run-count")
                .and_then(|r| r.parse::<u64>().ok())
                .unwrap_or(0);
            item.set("run-count", (runs + 1).to_string());
            let next = if interval == 0 {
                None
            } else {
                next_due(at, interval, now + 1)
            };
            match next {
                Some(n) => {
                    item.set(DUE, n.to_string());
                    item.set("next-run", clock::format_datetime(n));
                }
                None => {
                    item.props.remove(DUE);
                    item.props.remove("next-run");
                }
            }
            due.push((
                item.id,
                item.get("name").unwrap_or_default().to_string(),
                item.get("on-event").unwrap_or_default().to_string(),
                item.get("policy").unwrap_or_default().to_string(),
            ));
        }
        due
    };
    let count = due.len();
    for (_, name, script_text, policy) in due {
        tracing::info!(entry = %name, "scheduler entry due, running its on-event");
        let caller = Caller {
            user: format!("scheduler:{name}"),
            policies: Policies::parse(&policy).unwrap_or_default(),
        };
        script::run(router, &caller, &script_text);
    }
    count
}

/// Runs the scheduler until the router shuts down: every second of real time, and at
/// once whenever a manual clock moves or an entry changes.
pub async fn run(router: Router) {
    let shutdown = router.shutdown_token();
    let mut moved = router.clock().subscribe();
    let mut interval = tokio::time::interval(Duration::from_millis(500));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
            r = moved.changed() => if r.is_err() { return },
            _ = router.inner.scheduler_wake.notified() => {}
        }
        tick(&router);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_due_times() {
        assert_eq!(next_due(100, 0, 50), Some(100));
        assert_eq!(next_due(100, 0, 150), None);
        assert_eq!(next_due(100, 60, 150), Some(160));
        assert_eq!(next_due(100, 60, 160), Some(160));
        assert_eq!(next_due(100, 60, 161), Some(220));
    }
}
