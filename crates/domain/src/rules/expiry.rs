//! Grant durations: when a grant ends, from either `expire_after_minutes` or an absolute
//! `expires_at`, within configurable [`Limits`]; and `time_to_expire`, the wording shown
//! next to it ("2 hours from now").

use chrono::{DateTime, TimeDelta, Utc};

use super::ValidationError;

/// How short, how long and how long by default a grant may be. The reference's values
/// are the default (10 minutes, 1 day, 2 hours); a test server may allow seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Shortest grant.
    pub min: TimeDelta,
    /// Longest grant.
    pub max: TimeDelta,
    /// Duration when the request gives none.
    pub default: TimeDelta,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            min: TimeDelta::minutes(10),
            max: TimeDelta::minutes(1440),
            default: TimeDelta::minutes(120),
        }
    }
}

impl Limits {
    fn range_text(&self) -> String {
        let (min, max) = (self.min.num_seconds(), self.max.num_seconds());
        if min % 60 == 0 && max % 60 == 0 {
            format!("between {} and {} minutes", min / 60, max / 60)
        } else {
            format!("between {min} and {max} seconds")
        }
    }
}

/// When a grant requested at `now` ends. Exactly one of `expire_after_minutes` and
/// `expires_at` may be given (both → an error on `expires_at`); neither means
/// `limits.default`. The result is truncated to whole milliseconds, as stored.
pub fn resolve_expiry(
    now: DateTime<Utc>,
    expire_after_minutes: Option<i64>,
    expires_at: Option<DateTime<Utc>>,
    limits: &Limits,
) -> Result<DateTime<Utc>, ValidationError> {
    let (field, at) = match (expire_after_minutes, expires_at) {
        (Some(_), Some(_)) => {
            return Err(ValidationError::new(
                "expires_at",
                "give either expire_after_minutes or expires_at, not both",
            ));
        }
        (None, None) => ("expire_after_minutes", now + limits.default),
        (Some(minutes), None) => {
            let out_of_range = || {
                ValidationError::new(
                    "expire_after_minutes",
                    format!("must be {}", limits.range_text()),
                )
            };
            let span = TimeDelta::try_minutes(minutes).ok_or_else(out_of_range)?;
            if span < limits.min || span > limits.max {
                return Err(out_of_range());
            }
            ("expire_after_minutes", now + span)
        }
        (None, Some(at)) => {
            let span = at - now;
            if span < limits.min || span > limits.max {
                return Err(ValidationError::new(
                    "expires_at",
                    format!("must be {} from now", limits.range_text()),
                ));
            }
            ("expires_at", at)
        }
    };
    truncate_millis(at).ok_or_else(|| ValidationError::new(field, "out of range"))
}

/// `at` without its sub-millisecond part.
pub fn truncate_millis(at: DateTime<Utc>) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(at.timestamp_millis())
}

/// How far `expires_at` is from `now`, in words: "2 hours from now", "3 minutes ago",
/// "now". Rounded to the nearest whole unit of the largest unit that fits, so 119m59s is
/// "2 hours from now" and 59m50s is "1 hour from now".
pub fn time_to_expire(now: DateTime<Utc>, expires_at: DateTime<Utc>) -> String {
    let millis = (expires_at - now).num_milliseconds();
    let seconds = (millis.unsigned_abs() + 500) / 1000;
    if seconds == 0 {
        return "now".to_owned();
    }
    let round = |unit: u64| (seconds + unit / 2) / unit;
    let (n, unit) = if seconds < 60 {
        (seconds, "second")
    } else if round(60) < 60 {
        (round(60), "minute")
    } else if round(3600) < 24 {
        (round(3600), "hour")
    } else {
        (round(86_400), "day")
    };
    let plural = if n == 1 { "" } else { "s" };
    let when = if millis > 0 { "from now" } else { "ago" };
    format!("{n} {unit}{plural} {when}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-06-22T02:33:29Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// `Ok(seconds after t0)` or `Err((field, message substring))`.
    fn check(
        minutes: Option<i64>,
        at_secs: Option<i64>,
        limits: Limits,
        expected: Result<i64, (&str, &str)>,
    ) {
        let at = at_secs.map(|s| t0() + TimeDelta::seconds(s));
        match (resolve_expiry(t0(), minutes, at, &limits), expected) {
            (Ok(got), Ok(want)) => {
                assert_eq!((got - t0()).num_seconds(), want, "{minutes:?} {at_secs:?}")
            }
            (Err(e), Err((field, msg))) => {
                assert_eq!(e.field, field, "{minutes:?} {at_secs:?}");
                assert!(e.message.contains(msg), "{:?} lacks {msg:?}", e.message);
            }
            (got, want) => panic!("{minutes:?} {at_secs:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn expiry_rules() {
        let d = Limits::default();
        let minutes_msg = (
            "expire_after_minutes",
            "must be between 10 and 1440 minutes",
        );
        let at_msg = ("expires_at", "must be between 10 and 1440 minutes from now");
        type Row<'a> = (Option<i64>, Option<i64>, Result<i64, (&'a str, &'a str)>);
        let rows: &[Row] = &[
            (None, None, Ok(120 * 60)),
            (Some(9), None, Err(minutes_msg)),
            (Some(10), None, Ok(600)),
            (Some(120), None, Ok(7200)),
            (Some(1440), None, Ok(86_400)),
            (Some(1441), None, Err(minutes_msg)),
            (Some(0), None, Err(minutes_msg)),
            (Some(-10), None, Err(minutes_msg)),
            (Some(i64::MAX), None, Err(minutes_msg)),
            (Some(i64::MIN), None, Err(minutes_msg)),
            (None, Some(599), Err(at_msg)),
            (None, Some(600), Ok(600)),
            (None, Some(86_400), Ok(86_400)),
            (None, Some(86_401), Err(at_msg)),
            (None, Some(-3600), Err(at_msg)),
            (Some(120), Some(7200), Err(("expires_at", "not both"))),
        ];
        for &(minutes, at, expected) in rows {
            check(minutes, at, d, expected);
        }
    }

    #[test]
    fn limits_in_seconds_for_test_servers() {
        let l = Limits {
            min: TimeDelta::seconds(2),
            max: TimeDelta::minutes(1440),
            default: TimeDelta::minutes(120),
        };
        check(None, Some(2), l, Ok(2));
        check(
            None,
            Some(1),
            l,
            Err(("expires_at", "between 2 and 86400 seconds")),
        );
        check(Some(1), None, l, Ok(60));
    }

    #[test]
    fn expiry_is_truncated_to_millis() {
        let at = t0() + TimeDelta::nanoseconds(3_600_123_456_789);
        let got = resolve_expiry(t0(), None, Some(at), &Limits::default()).unwrap();
        assert_eq!((got - t0()).num_nanoseconds(), Some(3_600_123_000_000));
    }

    #[test]
    fn time_to_expire_wording() {
        let rows: &[(i64, &str)] = &[
            (7_200_000, "2 hours from now"),
            ((119 * 60 + 59) * 1000, "2 hours from now"),
            (3_600_000, "1 hour from now"),
            ((59 * 60 + 50) * 1000, "1 hour from now"),
            ((59 * 60 + 29) * 1000, "59 minutes from now"),
            (5 * 60_000, "5 minutes from now"),
            (90_000, "2 minutes from now"),
            (89_000, "1 minute from now"),
            (60_000, "1 minute from now"),
            (59_000, "59 seconds from now"),
            (30_000, "30 seconds from now"),
            (1_000, "1 second from now"),
            (400, "now"),
            (0, "now"),
            (-3 * 60_000, "3 minutes ago"),
            (-1_000, "1 second ago"),
            (86_400_000, "1 day from now"),
            ((23 * 3600 + 40 * 60) * 1000, "1 day from now"),
            ((23 * 3600 + 20 * 60) * 1000, "23 hours from now"),
            (-3 * 86_400_000, "3 days ago"),
        ];
        for &(ms, want) in rows {
            assert_eq!(
                time_to_expire(t0(), t0() + TimeDelta::milliseconds(ms)),
                want,
                "{ms} ms"
            );
        }
    }
}
