//! Grant lists as JSON, fast: each grant is serialised once, when it is read from the
//! store, except for the two fields that depend on the time of the request (`expired`
//! and `time_to_expire`), which every request writes after that prepared text. The
//! result is the same object the grant's view serialises to (the same keys and values;
//! those two keys come last).

use axum::body::Bytes;
use chrono::{DateTime, Utc};
use domain::GrantStatus;
use serde::Serialize;

use crate::error::ApiError;

/// Whether a grant counts as expired for the API: it ended by expiry, or its time is up.
pub fn is_expired(status: GrantStatus, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    status == GrantStatus::Expired || expires_at <= now
}

/// A grant's JSON object without its time-dependent fields: `{"id":…,…,` (the opening
/// brace and every other member, each followed by a comma), plus what those fields are
/// computed from.
pub struct Prerendered {
    head: Box<str>,
    status: GrantStatus,
    expires_at: DateTime<Utc>,
}

impl Prerendered {
    /// Prepares `view`, the grant's full view at any time, dropping its time fields.
    pub fn new(
        view: &impl Serialize,
        status: GrantStatus,
        expires_at: DateTime<Utc>,
    ) -> Result<Self, ApiError> {
        let mut value =
            serde_json::to_value(view).map_err(|e| ApiError::Internal(e.to_string()))?;
        let object = value
            .as_object_mut()
            .ok_or_else(|| ApiError::Internal("a grant view is not a JSON object".into()))?;
        object.remove("expired");
        object.remove("time_to_expire");
        let mut head =
            serde_json::to_string(&value).map_err(|e| ApiError::Internal(e.to_string()))?;
        // "{…}" becomes "{…," (or "{" for an empty object): the time fields follow.
        head.pop();
        if head.len() > 1 {
            head.push(',');
        }
        Ok(Self {
            head: head.into_boxed_str(),
            status,
            expires_at,
        })
    }
}

/// The JSON array of `grants` as of `now`.
pub fn list(grants: &[Prerendered], now: DateTime<Utc>) -> Bytes {
    let size = grants.iter().map(|g| g.head.len() + 64).sum::<usize>() + 2;
    let mut out = Vec::with_capacity(size);
    out.push(b'[');
    for (n, g) in grants.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(g.head.as_bytes());
        out.extend_from_slice(b"\"expired\":");
        let expired = is_expired(g.status, g.expires_at, now);
        out.extend_from_slice(if expired { b"true" } else { b"false" });
        out.extend_from_slice(b",\"time_to_expire\":");
        // The wording is plain ASCII, but escape it as JSON all the same.
        let words = domain::rules::time_to_expire(now, g.expires_at);
        if serde_json::to_writer(&mut out, &words).is_err() {
            out.extend_from_slice(b"null");
        }
        out.push(b'}');
    }
    out.push(b']');
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[derive(Serialize)]
    struct View {
        id: &'static str,
        expired: bool,
        note: &'static str,
        time_to_expire: String,
        n: u16,
    }

    #[test]
    fn lists_equal_the_views_as_of_each_request() {
        let t0 = DateTime::parse_from_rfc3339("2030-01-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let end = t0 + chrono::TimeDelta::hours(2);
        let view = |now| View {
            id: "a",
            expired: is_expired(GrantStatus::Active, end, now),
            note: "quote \" and \\ and é",
            time_to_expire: domain::rules::time_to_expire(now, end),
            n: 7,
        };
        let p = Prerendered::new(&view(t0), GrantStatus::Active, end).unwrap();
        for now in [t0, end, end + chrono::TimeDelta::minutes(5)] {
            let body: Value = serde_json::from_slice(&list(&[p.clone_for_test()], now)).unwrap();
            assert_eq!(body, json!([serde_json::to_value(view(now)).unwrap()]));
        }
        let two: Value =
            serde_json::from_slice(&list(&[p.clone_for_test(), p.clone_for_test()], t0)).unwrap();
        assert_eq!(two.as_array().unwrap().len(), 2);
        assert_eq!(list(&[], t0).as_ref(), b"[]");
        // A final status counts as expired only when it is `expired` or the time is up.
        let revoked = Prerendered::new(&view(t0), GrantStatus::Revoked, end).unwrap();
        let body: Value = serde_json::from_slice(&list(&[revoked], t0)).unwrap();
        assert_eq!(body[0]["expired"], false);
        assert_eq!(body[0]["time_to_expire"], "2 hours from now");
    }

    impl Prerendered {
        fn clone_for_test(&self) -> Self {
            Self {
                head: self.head.clone(),
                status: self.status,
                expires_at: self.expires_at,
            }
        }
    }
}
