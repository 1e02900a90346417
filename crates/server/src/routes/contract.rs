//! What the OpenAPI document says beyond what each handler's annotation can: the rules
//! that span fields (exclusive and dependent choices), the bounds that come from the
//! configuration (grant durations, region names), and the answers every route of a kind
//! gives (421 for a foreign `Host`, 401 without credentials, 413/415/422 for a JSON
//! body, 422 for a query, 429 for grant creates). Applied to the generated document, so
//! a route added later gets them too; `tests/contract.rs` holds the server to the result.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use crate::config::ServerConfig;

/// A problem+json response with `description`.
fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {
            "application/problem+json": {
                "schema": { "$ref": "#/components/schemas/Problem" }
            }
        }
    })
}

/// `response` with `key` set to `value`.
fn with(mut response: Value, key: &str, value: Value) -> Value {
    if let Some(o) = response.as_object_mut() {
        o.insert(key.to_owned(), value);
    }
    response
}

/// `name` is present and not null.
fn given(name: &str) -> Value {
    json!({ "required": [name], "properties": { name: { "not": { "type": "null" } } } })
}

/// Both present and not null.
fn both(a: &str, b: &str) -> Value {
    json!({
        "required": [a, b],
        "properties": { a: { "not": { "type": "null" } }, b: { "not": { "type": "null" } } }
    })
}

/// Adds `rules` to the `allOf` of component schema `name` (if it exists).
fn constrain(doc: &mut Value, name: &str, rules: Vec<Value>) {
    let Some(schema) = doc
        .pointer_mut(&format!("/components/schemas/{name}"))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let all = schema.entry("allOf").or_insert_with(|| json!([]));
    if let Some(all) = all.as_array_mut() {
        all.extend(rules);
    }
}

/// Sets `key` of property `prop` of component schema `name` (if both exist).
fn set_property(doc: &mut Value, name: &str, prop: &str, key: &str, value: Value) {
    if let Some(p) = doc
        .pointer_mut(&format!("/components/schemas/{name}/properties/{prop}"))
        .and_then(Value::as_object_mut)
    {
        p.insert(key.to_owned(), value);
    }
}

/// Completes the generated document for a server with `config`, served at `now`.
pub fn complete(doc: &mut Value, config: &ServerConfig, now: DateTime<Utc>) {
    cross_field_rules(doc);
    configured_bounds(doc, config, now);
    common_answers(doc, config);
}

fn cross_field_rules(doc: &mut Value) {
    let expiry_not_both = json!({ "not": both("expire_after_minutes", "expires_at") });
    constrain(doc, "CreateForward", vec![expiry_not_both.clone()]);
    // `access` and `full_access` must agree: true is `full`, false is `read`.
    constrain(
        doc,
        "CreateAccess",
        vec![
            expiry_not_both,
            json!({ "not": {
                "required": ["access", "full_access"],
                "properties": { "access": { "enum": ["write", "read"] }, "full_access": { "const": true } }
            }}),
            json!({ "not": {
                "required": ["access", "full_access"],
                "properties": { "access": { "enum": ["full", "write"] }, "full_access": { "const": false } }
            }}),
        ],
    );
    constrain(
        doc,
        "UpdateExpiry",
        vec![json!({ "oneOf": [given("expire_after_minutes"), given("expires_at")] })],
    );
    constrain(
        doc,
        "UpdateUser",
        vec![json!({ "anyOf": [given("role"), given("disabled")] })],
    );
    // A pinned certificate needs API-SSL.
    let pin_needs_tls = json!({ "not": {
        "required": ["api_tls", "api_tls_fingerprint"],
        "properties": { "api_tls": { "const": false }, "api_tls_fingerprint": { "type": "string" } }
    }});
    constrain(doc, "CreateRouter", vec![pin_needs_tls.clone()]);
    constrain(doc, "UpdateRouter", vec![pin_needs_tls]);
    // Moving the management login needs its password again (the server asks only when
    // the value really changes).
    if let Some(s) = doc
        .pointer_mut("/components/schemas/UpdateRouter")
        .and_then(Value::as_object_mut)
    {
        s.insert(
            "dependentRequired".into(),
            json!({
                "tunnel_address": ["password"],
                "api_port": ["password"],
                "api_tls": ["password"],
                "api_tls_fingerprint": ["password"]
            }),
        );
    }
}

/// Whole minutes within `[min, max]` seconds.
fn minute_bounds(min: std::time::Duration, max: std::time::Duration) -> (u64, u64) {
    (min.as_secs().div_ceil(60), max.as_secs() / 60)
}

fn configured_bounds(doc: &mut Value, config: &ServerConfig, now: DateTime<Utc>) {
    let l = &config.grant_limits;
    let (min, max) = minute_bounds(l.min, l.max);
    // `expires_at` is bounded from the time of the request: said in seconds in
    // `x-postern-seconds-from-now` for generators, and its example is the default end
    // as of when the document was served.
    let default_end = TimeDelta::from_std(l.default)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .map(crate::dto::timestamp);
    for name in ["CreateForward", "CreateAccess", "UpdateExpiry"] {
        set_property(doc, name, "expire_after_minutes", "minimum", json!(min));
        set_property(doc, name, "expire_after_minutes", "maximum", json!(max));
        set_property(
            doc,
            name,
            "expires_at",
            "x-postern-seconds-from-now",
            json!({ "minimum": l.min.as_secs(), "maximum": l.max.as_secs() }),
        );
        if let Some(at) = &default_end {
            set_property(doc, name, "expires_at", "example", json!(at));
        }
    }
    let mut regions: Vec<Value> = config.regions.iter().map(|r| json!(r.name)).collect();
    if let Some(first) = regions.first().cloned() {
        set_property(doc, "CreateRouter", "region", "example", first.clone());
        set_property(doc, "UpdateRouter", "region", "example", first);
    }
    regions.push(Value::Null);
    set_property(doc, "CreateRouter", "region", "enum", json!(regions));
    set_property(doc, "UpdateRouter", "region", "enum", json!(regions));
    set_property(doc, "CreateSite", "region", "enum", json!(regions));
}

/// `limit` and `offset` of a grant list page the ended grants, so they need `all=true`:
/// said in `x-postern-requires` (`{"all": true}`) for generators, OpenAPI having no word
/// for one parameter needing another.
fn requirements_between_parameters(op: &mut Value) {
    let Some(params) = op.get_mut("parameters").and_then(Value::as_array_mut) else {
        return;
    };
    if !params
        .iter()
        .any(|p| p["in"] == "query" && p["name"] == "all")
    {
        return;
    }
    for p in params.iter_mut() {
        if p["in"] == "query"
            && (p["name"] == "limit" || p["name"] == "offset")
            && let Some(o) = p.as_object_mut()
        {
            o.insert("x-postern-requires".into(), json!({ "all": true }));
        }
    }
}

/// Whether an operation creates a grant (rate-limited and capped).
fn creates_grant(path: &str, method: &str) -> bool {
    method == "post"
        && (path.ends_with("/transient-access") || path.ends_with("/transient-forwarding"))
}

fn common_answers(doc: &mut Value, config: &ServerConfig) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    let limit = config.body_limit_bytes;
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                continue;
            }
            let open = op
                .get("security")
                .and_then(Value::as_array)
                .is_some_and(|s| {
                    s.iter()
                        .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
                });
            let json_body = op
                .pointer("/requestBody/content/application~1json")
                .is_some();
            let query = op
                .get("parameters")
                .and_then(Value::as_array)
                .is_some_and(|ps| ps.iter().any(|p| p["in"] == "query"));
            let html = path == "/login";
            requirements_between_parameters(op);
            let Some(responses) = op.get_mut("responses").and_then(Value::as_object_mut) else {
                continue;
            };
            let mut add = |status: &str, response: Value| {
                responses.entry(status.to_owned()).or_insert(response);
            };
            if path != "/healthz" {
                // The portal's sign-in shares the guard and its problem body.
                let r = problem(if html {
                    "The `Host` header is not one of this server's names"
                } else {
                    "The `Host` header names neither an IP address, `localhost`, nor one of \
                     the server's `public_hosts` (DNS rebinding)"
                });
                add("421", r);
            }
            if !open {
                add("401", problem("No or invalid credentials"));
            }
            if json_body {
                add(
                    "413",
                    problem(&format!(
                        "Body larger than the server's `body_limit_bytes` ({limit})"
                    )),
                );
                add(
                    "415",
                    problem("The body is not sent as `Content-Type: application/json`"),
                );
                add(
                    "422",
                    problem(
                        "Invalid field: malformed JSON, a wrong type, a missing, unknown or out-of-bounds field",
                    ),
                );
            }
            if query {
                add(
                    "422",
                    problem("Bad query: a wrong type, an unknown or out-of-bounds parameter"),
                );
            }
            if method != "get" {
                // A write may find the database locked by another process past the store's
                // wait; nothing is written.
                let busy = "The database stayed locked by another writer (a backup, another \
                            process): nothing was changed; try again after `Retry-After` seconds";
                match responses.get_mut("503") {
                    Some(r) => {
                        let said = r["description"].as_str().unwrap_or_default();
                        r["description"] = json!(format!("{said}; or: {busy}"));
                    }
                    None => {
                        responses.insert("503".into(), problem(busy));
                    }
                }
            }
            if creates_grant(path, method) {
                let r = problem(
                    "Too many creates: more than `grant_rate_per_user`, `grant_rate_per_token` \
                     or `grant_rate_per_address` a minute (configuration; 0 is no limit) by this \
                     user, token or client address. `Retry-After` gives the seconds to wait",
                );
                let r = with(
                    r,
                    "headers",
                    json!({
                        "Retry-After": {
                            "description": "Seconds until a create is accepted again",
                            "schema": { "type": "integer", "minimum": 1 }
                        }
                    }),
                );
                responses.insert("429".into(), r);
                let conflict = problem(
                    "No free port in the region, or the router or the organisation already has \
                     as many live grants as `max_live_grants_per_router` / \
                     `max_live_grants_per_org` allow (configuration; 0 is no cap)",
                );
                responses.insert("409".into(), conflict);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn minute_bounds_are_whole_minutes_inside_the_limits() {
        let m = |s| Duration::from_secs(s);
        assert_eq!(minute_bounds(m(600), m(86_400)), (10, 1440));
        assert_eq!(minute_bounds(m(1), m(120)), (1, 2));
        assert_eq!(minute_bounds(m(61), m(179)), (2, 2));
    }
}
