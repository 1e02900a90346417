//! The router's clock: real time by default, or a manual clock a test moves forward.
//!
//! Everything in the sim that depends on time (uptime, `last-logged-in`, `/user/active`
//! `when`, scheduler runs) reads a [`Clock`], never the system time directly, so a test
//! can make an hour pass in a microsecond. The clock is UTC; the sim has no time zones.
//! This module also holds RouterOS's date, time and interval formats.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A clock handle; clones share the same time.
#[derive(Clone, Debug)]
pub struct Clock {
    inner: Arc<ClockInner>,
}

#[derive(Debug)]
struct ClockInner {
    /// `None` for the real clock; the manual time otherwise.
    manual: Option<Mutex<SystemTime>>,
    /// Bumped whenever a manual clock moves, so the scheduler wakes at once.
    moved: watch::Sender<u64>,
}

impl Default for Clock {
    fn default() -> Self {
        Self::real()
    }
}

impl Clock {
    /// The system clock.
    pub fn real() -> Self {
        Self {
            inner: Arc::new(ClockInner {
                manual: None,
                moved: watch::channel(0).0,
            }),
        }
    }

    /// A clock that stands still at `start` until [`advance`](Self::advance) or
    /// [`set`](Self::set) moves it.
    pub fn manual(start: SystemTime) -> Self {
        Self {
            inner: Arc::new(ClockInner {
                manual: Some(Mutex::new(start)),
                moved: watch::channel(0).0,
            }),
        }
    }

    pub fn is_manual(&self) -> bool {
        self.inner.manual.is_some()
    }

    pub fn now(&self) -> SystemTime {
        match &self.inner.manual {
            Some(t) => *t.lock().unwrap_or_else(|e| e.into_inner()),
            None => SystemTime::now(),
        }
    }

    /// Seconds since the Unix epoch (0 for times before it).
    pub fn unix(&self) -> u64 {
        unix_secs(self.now())
    }

    /// Moves a manual clock forward; does nothing to the real clock.
    pub fn advance(&self, by: Duration) {
        if let Some(t) = &self.inner.manual {
            let mut t = t.lock().unwrap_or_else(|e| e.into_inner());
            *t += by;
        }
        self.inner.moved.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Sets a manual clock; does nothing to the real clock.
    pub fn set(&self, to: SystemTime) {
        if let Some(t) = &self.inner.manual {
            *t.lock().unwrap_or_else(|e| e.into_inner()) = to;
        }
        self.inner.moved.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that changes whenever a manual clock moves.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.moved.subscribe()
    }
}

pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// RouterOS 7's date format: `2026-11-22`.
pub fn format_date(unix: u64) -> String {
    let (y, m, d) = civil_from_days((unix / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// RouterOS 6's date format: `nov/22/2026`.
pub fn format_date_v6(unix: u64) -> String {
    let (y, m, d) = civil_from_days((unix / 86_400) as i64);
    let name = MONTHS.get(m as usize - 1).copied().unwrap_or("jan");
    format!("{name}/{d:02}/{y:04}")
}

pub fn format_time(unix: u64) -> String {
    let s = unix % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// `2026-11-22 11:09:44`, as RouterOS 7 prints `last-logged-in` and `next-run`.
pub fn format_datetime(unix: u64) -> String {
    format!("{} {}", format_date(unix), format_time(unix))
}

/// Parses a date in RouterOS 7 (`2026-11-22`) or RouterOS 6 (`nov/22/2026`) form into
/// seconds since the epoch at midnight UTC.
pub fn parse_date(s: &str) -> Option<u64> {
    let (y, m, d) = if let Some((mon, rest)) = s.split_once('/') {
        let (d, y) = rest.split_once('/')?;
        let m = MONTHS
            .iter()
            .position(|n| n.eq_ignore_ascii_case(mon))
            .map(|i| i as u32 + 1)?;
        (y.parse::<i64>().ok()?, m, d.parse::<u32>().ok()?)
    } else {
        let mut it = s.split('-');
        let y = it.next()?.parse::<i64>().ok()?;
        let m = it.next()?.parse::<u32>().ok()?;
        let d = it.next()?.parse::<u32>().ok()?;
        if it.next().is_some() {
            return None;
        }
        (y, m, d)
    };
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    let days = days_from_civil(y, m, d);
    // Refuse dates such as 2026-02-31 that do not round-trip.
    if civil_from_days(days) != (y, m, d) {
        return None;
    }
    u64::try_from(days).ok().map(|d| d * 86_400)
}

/// Parses `HH:MM:SS` (or `HH:MM`) into seconds after midnight.
pub fn parse_time(s: &str) -> Option<u64> {
    let mut it = s.split(':');
    let h = it.next()?.parse::<u64>().ok()?;
    let m = it.next()?.parse::<u64>().ok()?;
    let sec = match it.next() {
        Some(v) => v.parse::<u64>().ok()?,
        None => 0,
    };
    if it.next().is_some() || h > 23 || m > 59 || sec > 59 {
        return None;
    }
    Some(h * 3600 + m * 60 + sec)
}

/// Parses a RouterOS interval: `0s`, `30s`, `5m`, `1h30m`, `1d`, `1w2d`, `00:05:00`,
/// `1d00:00:00`, or a bare number of seconds.
pub fn parse_interval(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<u64>() {
        return Some(Duration::from_secs(n));
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    let mut rest = s;
    // A trailing `HH:MM:SS` part.
    if let Some(colon) = s.find(':') {
        let start = s
            .get(..colon)?
            .rfind(|c: char| !c.is_ascii_digit())
            .map(|i| i + 1)
            .unwrap_or(0);
        total += parse_time_unbounded(s.get(start..)?)?;
        rest = s.get(..start)?;
    }
    for c in rest.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'w' => 7 * 86_400,
            'd' => 86_400,
            'h' => 3600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs(total))
}

fn parse_time_unbounded(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 3 {
        return None;
    }
    let mut total = 0u64;
    for p in parts {
        total = total.checked_mul(60)?.checked_add(p.parse::<u64>().ok()?)?;
    }
    Some(total)
}

/// Formats an interval as RouterOS prints it: `1w2d3h4m5s`, units that are zero left
/// out, `0s` for nothing.
pub fn format_interval(d: Duration) -> String {
    let mut s = d.as_secs();
    if s == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, name) in [
        (7 * 86_400, 'w'),
        (86_400, 'd'),
        (3600, 'h'),
        (60, 'm'),
        (1, 's'),
    ] {
        if s >= unit {
            out.push_str(&(s / unit).to_string());
            out.push(name);
            s %= unit;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip_both_formats() {
        let t = parse_date("2026-11-22").unwrap();
        assert_eq!(format_date(t), "2026-11-22");
        assert_eq!(format_date_v6(t), "nov/22/2026");
        assert_eq!(parse_date("nov/22/2026"), Some(t));
        assert_eq!(parse_date("NOV/22/2026"), Some(t));
        assert_eq!(parse_date("2026-02-31"), None);
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_date("xyz"), None);
        assert_eq!(format_date(0), "1970-01-01");
        assert_eq!(parse_date("2000-03-01").map(|t| t / 86_400), Some(11_017));
    }

    #[test]
    fn times_and_intervals() {
        assert_eq!(parse_time("01:02:03"), Some(3723));
        assert_eq!(parse_time("24:00:00"), None);
        assert_eq!(format_time(3723), "01:02:03");
        for (s, secs) in [
            ("0s", 0),
            ("30s", 30),
            ("5m", 300),
            ("1h30m", 5400),
            ("1d", 86_400),
            ("1w2d", 9 * 86_400),
            ("00:05:00", 300),
            ("1d00:00:10", 86_410),
            ("90", 90),
        ] {
            assert_eq!(parse_interval(s), Some(Duration::from_secs(secs)), "{s}");
        }
        assert_eq!(parse_interval("5x"), None);
        assert_eq!(parse_interval("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_interval(""), None);
        assert_eq!(format_interval(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_interval(Duration::ZERO), "0s");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual(UNIX_EPOCH + Duration::from_secs(100));
        let mut rx = c.subscribe();
        assert_eq!(c.unix(), 100);
        c.advance(Duration::from_secs(50));
        assert_eq!(c.unix(), 150);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        c.set(UNIX_EPOCH + Duration::from_secs(10));
        assert_eq!(c.unix(), 10);
    }
}
