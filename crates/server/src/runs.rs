//! Gateway runs: which process records which connections, so that a server ends only
//! the live connection rows of gateways that are gone, never those of another server on
//! the same database.
//!
//! Each start of the in-process gateway is a run ([`domain::GatewayRunId`]), registered
//! in the store with this process's identity ([`Process`]) and a heartbeat. Another run
//! is judged gone ([`gone`]) in one of two ways:
//!
//! - on the same host and PID namespace (same boot id, same namespace), at once and
//!   exactly: its PID no longer names a live process started at the recorded time
//!   (`kill(pid, 0)` and `/proc/<pid>/stat`), so PID reuse is not mistaken for it;
//! - elsewhere, when its heartbeat is older than the staleness bound (four heartbeats),
//!   which assumes the hosts' clocks agree to well within that bound.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A process as another process may check it: the host it runs on (boot id and PID
/// namespace, when readable), its PID and the PID's start time (clock ticks since boot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    host: Option<String>,
    pid: u32,
    start: Option<u64>,
}

impl Process {
    /// This process.
    pub fn current() -> Process {
        let pid = std::process::id();
        Process {
            host: host(),
            pid,
            start: proc_stat(pid).map(|(_, start)| start),
        }
    }

    /// As stored: `host=<boot id>/<pid namespace> pid=<pid> start=<ticks>`, the parts
    /// not known left out.
    pub fn to_record(&self) -> String {
        let mut s = String::new();
        if let Some(h) = &self.host {
            s.push_str(&format!("host={h} "));
        }
        s.push_str(&format!("pid={}", self.pid));
        if let Some(t) = self.start {
            s.push_str(&format!(" start={t}"));
        }
        s
    }

    /// Reads a stored identity; `None` when it is not one of ours.
    pub fn parse(s: &str) -> Option<Process> {
        let mut host = None;
        let mut pid = None;
        let mut start = None;
        for part in s.split_whitespace() {
            let (k, v) = part.split_once('=')?;
            match k {
                "host" => host = Some(v.to_owned()),
                "pid" => pid = Some(v.parse().ok()?),
                "start" => start = Some(v.parse().ok()?),
                _ => return None,
            }
        }
        Some(Process {
            host,
            pid: pid?,
            start,
        })
    }

    /// Whether this process still runs, as seen from a process on the same host and PID
    /// namespace; `None` when that cannot be told from here.
    fn alive(&self) -> Option<bool> {
        let pid = i32::try_from(self.pid).ok()?;
        let pid = rustix::process::Pid::from_raw(pid)?;
        match rustix::process::test_kill_process(pid) {
            Err(rustix::io::Errno::SRCH) => return Some(false),
            // EPERM: it exists, under another user.
            Ok(()) | Err(rustix::io::Errno::PERM) => {}
            Err(_) => return None,
        }
        match proc_stat(self.pid) {
            // A zombie has stopped; another start time is another process on the PID.
            Some((state, start)) => {
                Some(!matches!(state, 'Z' | 'X') && self.start.is_none_or(|t| t == start))
            }
            // It exists but /proc hides it (hidepid): believe kill.
            None => Some(true),
        }
    }
}

/// Whether `run`, not this process's, is gone as seen by `me` at `now`: on the same host
/// by its process, elsewhere by a heartbeat older than `stale_after`.
pub fn gone(
    me: &Process,
    run: &store::GatewayRun,
    now: DateTime<Utc>,
    stale_after: Duration,
) -> bool {
    if let Some(p) = Process::parse(&run.process)
        && p.host.is_some()
        && p.host == me.host
        && let Some(alive) = p.alive()
    {
        return !alive;
    }
    (now - run.seen_at)
        .to_std()
        .is_ok_and(|age| age > stale_after)
}

/// The boot id and the PID namespace: two processes that share both see the same PIDs.
fn host() -> Option<String> {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let ns = ns.to_str()?;
    let inode = ns.strip_prefix("pid:[")?.strip_suffix(']')?;
    Some(format!("{}/{inode}", boot.trim()))
}

/// A process's state letter and start time from `/proc/<pid>/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold anything: read after the last.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    // Fields 3 (state) and 22 (starttime), counting from 1 over the whole line.
    let state = fields.next()?.chars().next()?;
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(process: &str, seen_secs_ago: i64) -> store::GatewayRun {
        let now = Utc::now();
        store::GatewayRun {
            id: domain::GatewayRunId::new(),
            process: process.to_owned(),
            started_at: now,
            seen_at: now - chrono::TimeDelta::seconds(seen_secs_ago),
        }
    }

    #[test]
    fn identities_round_trip_and_strangers_are_not_ours() {
        let me = Process::current();
        assert!(me.host.is_some() && me.start.is_some(), "{me:?}");
        assert_eq!(Process::parse(&me.to_record()), Some(me.clone()));
        assert_eq!(
            Process::parse("pid=42"),
            Some(Process {
                host: None,
                pid: 42,
                start: None
            })
        );
        for bad in ["", "pid=x", "host=a", "pid=1 colour=red", "garbage"] {
            assert_eq!(Process::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_run_is_gone_by_its_process_here_and_by_its_heartbeat_elsewhere() {
        let me = Process::current();
        let now = Utc::now();
        let stale = Duration::from_secs(20);
        // This very process, even unseen for long: alive.
        assert!(!gone(&me, &run(&me.to_record(), 3600), now, stale));
        // The same PID started at another time: another process, so gone at once.
        let reused = Process {
            start: me.start.map(|t| t + 1),
            ..me.clone()
        };
        assert!(gone(&me, &run(&reused.to_record(), 0), now, stale));
        // A PID no process has (above the kernel's pid_max): gone at once.
        let dead = Process {
            pid: 1 << 23,
            ..me.clone()
        };
        assert!(gone(&me, &run(&dead.to_record(), 0), now, stale));
        // A child that exited and was reaped: gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let child_pid = child.id();
        child.wait().unwrap();
        let exited = Process {
            pid: child_pid,
            start: None,
            ..me.clone()
        };
        assert!(gone(&me, &run(&exited.to_record(), 0), now, stale));
        // Another host: only the heartbeat tells.
        let elsewhere = Process {
            host: Some("another-boot/4026531836".into()),
            ..dead
        };
        assert!(!gone(&me, &run(&elsewhere.to_record(), 19), now, stale));
        assert!(gone(&me, &run(&elsewhere.to_record(), 21), now, stale));
        // Not ours to read: the heartbeat as well.
        assert!(!gone(&me, &run("something else", 5), now, stale));
        assert!(gone(&me, &run("something else", 25), now, stale));
    }
}
