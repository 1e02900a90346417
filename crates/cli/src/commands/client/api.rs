//! The client's HTTP: one blocking `reqwest` client (rustls with ring, the operating
//! system's roots), bearer-token requests to the server's API, and its problem
//! details turned into plain words and an exit code ([`Failure`]).

use std::time::Duration;

use reqwest::Method;
use reqwest::blocking::{Client, Response};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Failure;
use super::config::Target;

/// A request gives up after this long (a `?wait=true` create waits server-side first).
const TIMEOUT: Duration = Duration::from_secs(90);

/// The HTTP client, with ring as rustls's provider.
pub fn http() -> Result<Client, Failure> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .timeout(TIMEOUT)
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("postern/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| Failure::error(format!("cannot start the HTTP client: {e}")))
}

/// An API server with a token.
pub struct Api {
    pub target: Target,
    client: Client,
}

impl Api {
    pub fn new(target: Target) -> Result<Api, Failure> {
        Ok(Api {
            target,
            client: http()?,
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        self.call(Method::GET, path, None)
    }

    pub fn post<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, Failure> {
        self.call(Method::POST, path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Result<(), Failure> {
        let res = self.send(Method::DELETE, path, None)?;
        check(res, &self.target).map(|_| ())
    }

    /// GET that answers `None` for a 404 (used to find a grant among routers).
    pub fn get_if_found<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, Failure> {
        let res = self.send(Method::GET, path, None)?;
        if res.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        decode(check(res, &self.target)?, &self.target).map(Some)
    }

    pub fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, Failure> {
        let res = self.send(method, path, body)?;
        decode(check(res, &self.target)?, &self.target)
    }

    fn send(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Response, Failure> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.target.url))
            .bearer_auth(&self.target.token)
            .header("accept", "application/json");
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        req.send().map_err(|e| unreachable(&self.target.url, &e))
    }
}

/// A failure to reach the server, in words.
pub fn unreachable(url: &str, e: &reqwest::Error) -> Failure {
    let mut cause = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        cause = s.to_string();
        source = s.source();
    }
    if e.is_timeout() {
        return Failure::error(format!("the server {url} did not answer in time"));
    }
    Failure::error(format!("cannot reach the server {url}: {cause}"))
}

/// The response if it succeeded, else its problem details as a [`Failure`].
pub fn check(res: Response, target: &Target) -> Result<Response, Failure> {
    let status = res.status();
    if status.is_success() {
        return Ok(res);
    }
    let retry = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = res.text().unwrap_or_default();
    Err(problem(status.as_u16(), &body, retry.as_deref(), target))
}

fn decode<T: DeserializeOwned>(res: Response, target: &Target) -> Result<T, Failure> {
    let bytes = res.bytes().map_err(|e| unreachable(&target.url, &e))?;
    let bytes = if bytes.is_empty() {
        b"null".as_slice().to_owned()
    } else {
        bytes.to_vec()
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        Failure::error(format!(
            "the server {} sent an answer postern cannot read ({e}): is it a Postern server of this version?",
            target.url
        ))
    })
}

/// An API error in plain words, with the exit code for its kind.
pub fn problem(status: u16, body: &str, retry: Option<&str>, target: &Target) -> Failure {
    let v: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let mut detail = v["detail"]
        .as_str()
        .map(plain)
        .unwrap_or_else(|| format!("HTTP status {status}"));
    if let Some(errors) = v["errors"].as_array()
        && errors.len() > 1
    {
        let fields: Vec<String> = errors
            .iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    plain(e["field"].as_str().unwrap_or("?")),
                    plain(e["message"].as_str().unwrap_or("?"))
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
        409 | 422 => Failure::refused(detail),
        429 => Failure::refused(match retry {
            Some(s) => format!("{detail} (retry after {s} s)"),
            None => detail,
        }),
        _ => Failure::error(format!("the server answered {status}: {detail}")),
    }
}

/// A server's words made one plain line: control characters dropped, at most 300 long.
pub fn plain(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(300).collect()
}
