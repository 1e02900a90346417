//! The client's HTTP: one HTTP/1.1 request per call (`launcher::redeem::request`,
//! rustls with ring and the operating system's roots, plus `POSTERN_CA_FILE`), bearer
//! tokens, and the API's problem details turned into plain words and an exit code
//! ([`Failure`]).

use launcher::link::Origin;
use launcher::redeem::{self, RedeemError, Trust};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::config::Target;
use super::{At as _, Failure};

/// The longest answer read (a long orchestration log fits).
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// An answer: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// One request to `url` (a server's origin) with an optional bearer token.
pub fn send(
    url: &str,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Answer, Failure> {
    let origin = Origin::parse(url)
        .map_err(|e| Failure::usage(format!("{url:?} is not a server URL: {e}")))?;
    let trust = Trust {
        ca_file: std::env::var_os("POSTERN_CA_FILE").map(Into::into),
    };
    let mut headers = vec![concat!("User-Agent: postern/", env!("CARGO_PKG_VERSION")).to_owned()];
    if let Some(t) = token {
        if t.chars().any(|c| c.is_control() || c == ' ') {
            return Err(Failure::auth(
                "the token has spaces or control characters: log in again",
            ));
        }
        headers.push(format!("Authorization: Bearer {t}"));
    }
    let bytes = match body {
        Some(b) => {
            headers.push("Content-Type: application/json".into());
            b.to_string().into_bytes()
        }
        None => Vec::new(),
    };
    let (status, body) =
        redeem::request(&origin, method, path, &headers, &bytes, &trust, MAX_ANSWER)
            .map_err(|e| unreachable(url, &e))?;
    Ok(Answer { status, body })
}

/// A failure to reach the server, in words.
pub fn unreachable(url: &str, e: &RedeemError) -> Failure {
    match e {
        RedeemError::Protocol(_, why) => Failure::error(format!(
            "the server {url} sent an answer postern cannot read: {why}"
        )),
        other => Failure::error(other.to_string()),
    }
}

/// An API server with a token.
pub struct Api {
    pub target: Target,
}

impl Api {
    pub fn new(target: Target) -> Result<Api, Failure> {
        Ok(Api { target })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.call("GET", path, None)
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, Failure> {
        self.call("POST", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Result<(), Failure> {
        self.call::<Value>("DELETE", path, None).map(|_| ())
    }

    /// GET that answers `None` for a 404 (used to find a grant among routers).
    pub fn get_if_found<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, Failure> {
        let answer = send(
            &self.target.url,
            Some(&self.target.token),
            "GET",
            path,
            None,
        )?;
        if answer.status == 404 {
            return Ok(None);
        }
        decode(check(answer, &self.target)?, &self.target).map(Some)
    }

    pub fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, Failure> {
        let answer = send(
            &self.target.url,
            Some(&self.target.token),
            method,
            path,
            body,
        )?;
        decode(check(answer, &self.target)?, &self.target)
    }
}

/// The answer if it succeeded, else its problem details as a [`Failure`].
pub fn check(answer: Answer, target: &Target) -> Result<Answer, Failure> {
    if (200..300).contains(&answer.status) {
        return Ok(answer);
    }
    Err(problem(
        answer.status,
        &String::from_utf8_lossy(&answer.body),
        target,
    ))
}

pub fn decode<T: DeserializeOwned>(answer: Answer, target: &Target) -> Result<T, Failure> {
    let body: &[u8] = if answer.body.is_empty() {
        b"null"
    } else {
        &answer.body
    };
    serde_json::from_slice(body).map_err(|e| {
        Failure::error(format!(
            "the server {} sent an answer postern cannot read ({e}): is it a Postern server?",
            target.url
        ))
    })
}

/// An API error in plain words, with the exit code for its kind.
pub fn problem(status: u16, body: &str, target: &Target) -> Failure {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let mut detail = v
        .at("detail")
        .as_str()
        .map(plain)
        .unwrap_or_else(|| format!("HTTP status {status}"));
    if let Some(errors) = v.at("errors").as_array()
        && errors.len() > 1
    {
        let fields: Vec<String> = errors
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    plain(e.at("field").as_str().unwrap_or("?")),
                    plain(e.at("message").as_str().unwrap_or("?"))
                )
            })
            .collect();
        detail = format!("{detail}: {}", fields.join("; "));
    }
    match status {
        401 => Failure::auth(format!(
            "the server {} refused the token ({detail}): it may have been revoked or have \
             expired; run `postern login {}` again{}",
            target.url,
            target.url,
            if target.name == "POSTERN_SERVER" {
                ", or set another POSTERN_TOKEN"
            } else {
                ""
            }
        )),
        403 => Failure::auth(format!("not allowed: {detail}")),
        404 => Failure::not_found(detail),
        409 | 422 | 429 => Failure::refused(detail),
        _ => Failure::error(format!("the server answered {status}: {detail}")),
    }
}

/// A server's words made one plain line: control characters dropped, at most 300 long.
pub fn plain(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(300).collect()
}
