//! Request extractors whose every rejection is a problem+json error naming the field:
//! JSON bodies (size-limited, unknown fields refused), path ids and query strings.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::{StatusCode, header, request::Parts};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON body. Malformed JSON, wrong types, missing and unknown fields are 422 with the
/// field named; a body over the limit is 413; a body that does not say it is JSON is 415.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                let essence = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                essence == "application/json" || essence.ends_with("+json")
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType(
                "the request body must be application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::field("body", "could not read the request body")
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses a JSON document, naming the offending field on failure.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::field(
            "body",
            "expected a JSON object, got nothing",
        ));
    }
    // Bodies are objects; serde would otherwise read a struct from an array.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(ApiError::field("body", "expected a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = strip_position(&inner.to_string());
        let root = path == "." || path == "?";
        let named = backticked(&message).map(str::to_owned);
        let field = match named {
            // The path already ends in the unknown key.
            Some(name) if message.starts_with("unknown field") => {
                if root {
                    name
                } else {
                    path
                }
            }
            // The path is the object that lacks the key.
            Some(name) if message.starts_with("missing field") => {
                if root {
                    name
                } else {
                    format!("{path}.{name}")
                }
            }
            _ if root => "body".to_owned(),
            _ => path,
        };
        ApiError::field(field, message)
    })?;
    de.end()
        .map_err(|e| ApiError::field("body", strip_position(&e.to_string())))?;
    Ok(value)
}

/// serde_json appends " at line 1 column 9": useful to a parser, noise to a caller.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message.get(..i).unwrap_or(message).to_owned(),
        None => message.to_owned(),
    }
}

fn backticked(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let rest = message.get(start..)?;
    let end = rest.find('`')?;
    rest.get(..end)
}

/// Path parameters. Anything that does not parse is "not found", never plain text.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|_| ApiError::NotFound("resource"))
    }
}

/// A query string; a bad one is 422 naming `query`.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e| ApiError::field("query", e.body_text()))
    }
}

/// Parses an id from a path segment; a malformed id is simply not found.
pub fn parse_id<T: std::str::FromStr>(s: &str, what: &'static str) -> Result<T, ApiError> {
    s.parse().map_err(|_| ApiError::NotFound(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        dst_port: i64,
        name: Option<String>,
    }

    fn field_of(body: &str) -> String {
        match parse_json::<Req>(body.as_bytes()) {
            Err(ApiError::Validation(e)) => e[0].field.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(field_of(r#"{"dst_port": "x"}"#), "dst_port");
        assert_eq!(field_of(r#"{"name": "a"}"#), "dst_port");
        assert_eq!(field_of(r#"{"dst_port": 1, "bogus": 2}"#), "bogus");
        assert_eq!(field_of(r#"{"dst_port": 1e400}"#), "dst_port");
        assert_eq!(
            field_of(r#"{"dst_port": 99999999999999999999999}"#),
            "dst_port"
        );
        assert_eq!(field_of(r#"{"dst_port": 1} x"#), "body");
        assert_eq!(field_of(""), "body");
        assert_eq!(field_of("[1]"), "body");
    }
}
