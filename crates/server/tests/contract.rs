//! The OpenAPI document is the contract: a real server on 127.0.0.1:0 serves
//! `/api/openapi.json`, and for every operation in it this test generates requests from
//! the document alone. Bodies and queries the document calls valid (minimal, full, each
//! property at each of its boundary values and examples) must be accepted, or refused
//! only with a documented status that is not a validation one (409, 404, 429…). Each
//! bound broken in turn (below `minimum`, above `maximum`, too short, too long, off
//! `pattern` or `format`, not in `enum`, a wrong type, null, a missing required or an
//! unknown field, both of an exclusive pair, a dependency left out, no `Content-Type`,
//! too large a body, no credentials, a foreign `Host`) must get a 4xx problem+json whose
//! status the operation lists. Every response must have a documented status and
//! content type, and its body must validate against the documented schema
//! (`jsonschema`, draft 2020-12, formats checked).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeMap;

use postern_server as server;
use reqwest::Method;
use serde_json::{Map, Value, json};
use server::config::ServerConfig;

extern crate store as postern_store;

#[allow(dead_code)]
#[path = "../../store/tests/harness/mod.rs"]
mod harness;

mod support;

use support::{METRICS_TOKEN, Server};

/// One request to send.
#[derive(Debug, Clone)]
struct Req {
    why: String,
    path: String,
    query: Vec<(String, String)>,
    /// Raw body bytes and the content type sent with them (`None`: no header).
    body: Option<(Vec<u8>, Option<String>)>,
    auth: Auth,
    host: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Auth {
    Documented,
    None,
}

/// What the document says of one operation.
struct Op<'a> {
    method: String,
    path: String,
    op: &'a Value,
}

/// Validators over the document's schemas.
struct Schemas {
    components: Value,
}

impl Schemas {
    fn validator(&self, schema: &Value) -> jsonschema::Validator {
        let wrapped = json!({ "allOf": [schema], "components": self.components });
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft202012)
            .should_validate_formats(true)
            .with_format("ip", |s: &str| s.parse::<std::net::IpAddr>().is_ok())
            .with_format("cidr", |s: &str| {
                let (addr, len) = s.split_once('/').unwrap_or((s, "0"));
                addr.parse::<std::net::IpAddr>().is_ok() && len.parse::<u8>().is_ok()
            })
            .build(&wrapped)
            .unwrap_or_else(|e| panic!("schema does not compile: {e}: {schema}"))
    }

    fn valid(&self, schema: &Value, value: &Value) -> bool {
        self.validator(schema).is_valid(value)
    }

    /// Follows a `$ref` to its component.
    fn resolve<'a>(&'a self, schema: &'a Value) -> &'a Value {
        match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let name = r.rsplit('/').next().unwrap();
                &self.components["schemas"][name]
            }
            None => schema,
        }
    }

    /// The JSON types a schema allows (through `oneOf`/`anyOf` and `$ref`).
    fn types(&self, schema: &Value) -> Vec<String> {
        let s = self.resolve(schema);
        let mut out = Vec::new();
        match &s["type"] {
            Value::String(t) => out.push(t.clone()),
            Value::Array(ts) => out.extend(ts.iter().filter_map(|t| t.as_str().map(str::to_owned))),
            _ => {}
        }
        for key in ["oneOf", "anyOf"] {
            if let Some(branches) = s[key].as_array() {
                for b in branches {
                    out.extend(self.types(b));
                }
            }
        }
        if out.is_empty() && s.get("enum").is_some() {
            out.push("string".into());
        }
        out
    }

    /// Values the document allows for `schema`, boundaries and examples first; a value
    /// is kept only if the document's own schema accepts it.
    fn candidates(&self, schema: &Value) -> Vec<Value> {
        let s = self.resolve(schema);
        let mut out: Vec<Value> = Vec::new();
        for key in ["oneOf", "anyOf"] {
            if let Some(branches) = s[key].as_array() {
                for b in branches {
                    out.extend(self.candidates(b));
                }
            }
        }
        if let Some(e) = s.get("example") {
            out.push(e.clone());
        }
        if let Some(values) = s["enum"].as_array() {
            out.extend(values.iter().cloned());
        }
        for t in self.types(schema) {
            match t.as_str() {
                "integer" => {
                    match s["minimum"].as_i64() {
                        Some(m) => out.push(json!(m)),
                        None => out.extend([json!(0), json!(-1), json!(i64::MIN)]),
                    }
                    match s["maximum"].as_i64() {
                        Some(m) => out.push(json!(m)),
                        None => out.extend([json!(1_i64 << 53), json!(i64::MAX)]),
                    }
                }
                "boolean" => out.extend([json!(true), json!(false)]),
                "null" => out.push(Value::Null),
                "string" => {
                    if let Some((min, max)) = from_now(s) {
                        // Two minutes inside each end, for the time the request takes.
                        out.push(json!(in_seconds(min + 120)));
                        out.push(json!(in_seconds(max - 120)));
                    } else if s["format"] == "date-time" {
                        out.push(json!(in_seconds(3600)));
                    }
                    let min = s["minLength"].as_u64().unwrap_or(0) as usize;
                    let max = s["maxLength"].as_u64().map_or(300, |m| m as usize);
                    out.push(json!("a".repeat(min.max(1))));
                    out.push(json!("a".repeat(max)));
                    out.push(json!("a".repeat(min)));
                    // Strings a generator tries: white space at either end, a control
                    // character, something other than a letter.
                    let n = min.max(2);
                    out.push(json!(format!(" {}", "a".repeat(n))));
                    out.push(json!(format!("{}\u{1}", "a".repeat(n))));
                    out.push(json!(format!("{}=\"'", "a".repeat(n))));
                    out.push(json!("é".repeat(max.min(300))));
                }
                _ => {}
            }
        }
        let mut seen = Vec::new();
        out.retain(|v| {
            let fresh = !seen.contains(v);
            seen.push(v.clone());
            fresh && self.valid(schema, v)
        });
        out
    }

    /// Values that break `schema` one bound at a time, each named.
    fn breakers(&self, schema: &Value) -> Vec<(String, Value)> {
        let s = self.resolve(schema);
        let mut out: Vec<(String, Value)> = Vec::new();
        let types = self.types(schema);
        if let Some(m) = s["minimum"].as_i64() {
            out.push(("below minimum".into(), json!(m - 1)));
        }
        if let Some(m) = s["maximum"].as_i64() {
            out.push(("above maximum".into(), json!(m.saturating_add(1))));
        }
        if let Some(m) = s["minLength"].as_u64().filter(|m| *m > 0) {
            out.push(("too short".into(), json!("a".repeat(m as usize - 1))));
        }
        if let Some(m) = s["maxLength"].as_u64() {
            out.push(("too long".into(), json!("a".repeat(m as usize + 1))));
        }
        if s.get("pattern").is_some() {
            for v in [" a", "a ", "a\u{1}b", "a=b\"", "!", "\u{7f}"] {
                out.push((format!("off pattern {v:?}"), json!(v)));
            }
        }
        if s.get("format").is_some() {
            out.push(("off format".into(), json!("not-a-value")));
        }
        if let Some((min, max)) = from_now(s) {
            out.push(("too soon".into(), json!(in_seconds(min - 120))));
            out.push(("too late".into(), json!(in_seconds(max + 120))));
            out.push(("in the past".into(), json!(in_seconds(-3600))));
        }
        if s.get("enum").is_some() {
            out.push(("not in enum".into(), json!("no-such-value")));
        }
        if types.iter().any(|t| t == "integer") {
            out.push(("wrong type (string)".into(), json!("1")));
            out.push(("wrong type (fraction)".into(), json!(1.5)));
        }
        if types.iter().any(|t| t == "string") {
            out.push(("wrong type (number)".into(), json!(1)));
        }
        if types.iter().any(|t| t == "boolean") {
            out.push(("wrong type (string)".into(), json!("true")));
        }
        out.push(("wrong type (object)".into(), json!({})));
        out.push(("wrong type (array)".into(), json!([])));
        out.push(("null".into(), Value::Null));
        out.retain(|(why, v)| relative(why) || !self.valid(schema, v));
        out
    }
}

/// Whether a breaker breaks a bound relative to the time of the request, which the
/// document states in `x-postern-seconds-from-now` (JSON Schema has no word for it).
fn relative(why: &str) -> bool {
    why.ends_with("too soon") || why.ends_with("too late") || why.ends_with("in the past")
}

/// The bounds in seconds from the time of the request that `x-postern-seconds-from-now`
/// gives a time.
fn from_now(schema: &Value) -> Option<(i64, i64)> {
    let b = schema.get("x-postern-seconds-from-now")?;
    Some((b["minimum"].as_i64()?, b["maximum"].as_i64()?))
}

/// The time `seconds` from now, as RFC 3339.
fn in_seconds(seconds: i64) -> String {
    (chrono::Utc::now() + chrono::TimeDelta::seconds(seconds)).to_rfc3339()
}

/// A body schema's properties and required names.
fn object_parts(schema: &Value) -> (Map<String, Value>, Vec<String>) {
    let props = schema["properties"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let required = schema["required"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    (props, required)
}

/// Values, each with what it is.
type Named = Vec<(String, Value)>;

/// Valid and invalid bodies for an object schema.
fn bodies(schemas: &Schemas, schema: &Value) -> (Named, Named) {
    let resolved = schemas.resolve(schema).clone();
    let (props, required) = object_parts(&resolved);
    let cands: BTreeMap<String, Vec<Value>> = props
        .iter()
        .map(|(k, s)| (k.clone(), schemas.candidates(s)))
        .collect();
    let first = |k: &str| -> Option<Value> {
        cands
            .get(k)
            .and_then(|c| c.iter().find(|v| !v.is_null()).cloned())
    };
    let deps = |k: &str| -> Vec<String> {
        resolved["dependentRequired"][k]
            .as_array()
            .map(|d| {
                d.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    let ok = |b: &Value| schemas.valid(schema, b);
    // The minimal body: the required fields; if the document wants more (one of a
    // pair), the first optional field that makes it valid.
    let mut base = Map::new();
    for k in &required {
        if let Some(v) = first(k) {
            base.insert(k.clone(), v);
        }
    }
    if !ok(&Value::Object(base.clone())) {
        for k in props.keys() {
            let mut b = base.clone();
            if let Some(v) = first(k) {
                b.insert(k.clone(), v);
                for d in deps(k) {
                    if let Some(v) = first(&d) {
                        b.insert(d, v);
                    }
                }
            }
            if ok(&Value::Object(b.clone())) {
                base = b;
                break;
            }
        }
    }
    assert!(
        ok(&Value::Object(base.clone())),
        "no valid minimal body for {schema}"
    );
    let mut valid = vec![("minimal".to_owned(), Value::Object(base.clone()))];
    // Every property at each of its values, with what it depends on.
    for (k, values) in &cands {
        for v in values {
            let mut b = base.clone();
            b.insert(k.clone(), v.clone());
            for d in deps(k) {
                if let Some(v) = first(&d) {
                    b.entry(d).or_insert(v);
                }
            }
            // A value the rest of the minimal body excludes (the other of an exclusive
            // pair) is tried without it.
            if !ok(&Value::Object(b.clone())) {
                for other in base.keys().filter(|o| *o != k && !required.contains(o)) {
                    let mut without = b.clone();
                    without.remove(other);
                    if ok(&Value::Object(without.clone())) {
                        b = without;
                        break;
                    }
                }
            }
            let b = Value::Object(b);
            if ok(&b) {
                valid.push((format!("{k} = {v}"), b));
            }
        }
    }
    // Everything at once, dropping what the document will not take together.
    let mut full = base.clone();
    for k in props.keys() {
        if let Some(v) = first(k) {
            full.entry(k.clone()).or_insert(v);
        }
    }
    for k in props.keys() {
        if ok(&Value::Object(full.clone())) {
            break;
        }
        if !required.contains(k) {
            full.remove(k);
        }
    }
    if ok(&Value::Object(full.clone())) {
        valid.push(("every field".into(), Value::Object(full)));
    }

    let mut invalid = Vec::new();
    for (k, s) in &props {
        for (why, v) in schemas.breakers(s) {
            let mut b = base.clone();
            b.insert(k.clone(), v);
            for d in deps(k) {
                if let Some(v) = first(&d) {
                    b.entry(d).or_insert(v);
                }
            }
            invalid.push((format!("{k}: {why}"), Value::Object(b)));
        }
    }
    for k in &required {
        let mut b = base.clone();
        b.remove(k);
        invalid.push((format!("missing required {k}"), Value::Object(b)));
    }
    let mut b = base.clone();
    b.insert("no_such_field".into(), json!(1));
    invalid.push(("unknown field".into(), Value::Object(b)));
    invalid.push(("empty object".into(), json!({})));
    // Each `not` of an `allOf` made true; each `oneOf` with all its branches.
    for rule in resolved["allOf"].as_array().cloned().unwrap_or_default() {
        if let Some(not) = rule.get("not") {
            let mut b = base.clone();
            let (nprops, nreq) = object_parts(not);
            for k in &nreq {
                let v = match &nprops.get(k) {
                    Some(p) if p.get("const").is_some() => p["const"].clone(),
                    Some(p) if p["enum"].is_array() => p["enum"][0].clone(),
                    _ => first(k).unwrap_or(Value::Null),
                };
                b.insert(k.clone(), v);
            }
            invalid.push((format!("both of {nreq:?}"), Value::Object(b)));
        }
        if let Some(branches) = rule["oneOf"].as_array() {
            let mut b = base.clone();
            for br in branches {
                for k in object_parts(br).1 {
                    if let Some(v) = first(&k) {
                        b.insert(k, v);
                    }
                }
            }
            invalid.push(("every branch of a oneOf".into(), Value::Object(b)));
        }
    }
    if let Some(d) = resolved["dependentRequired"].as_object() {
        for (k, needs) in d {
            let mut b = base.clone();
            if let Some(v) = first(k) {
                b.insert(k.clone(), v);
            }
            for n in needs.as_array().unwrap() {
                b.remove(n.as_str().unwrap());
            }
            invalid.push((format!("{k} without {needs}"), Value::Object(b)));
        }
    }
    // Only what the document itself refuses counts as invalid.
    invalid.retain(|(why, b)| relative(why) || !ok(b));
    (valid, invalid)
}

fn query_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Ids for the path parameters, made through the API.
struct Fixtures {
    ids: BTreeMap<&'static str, String>,
}

impl Fixtures {
    async fn make(s: &Server) -> Self {
        let mut ids = BTreeMap::new();
        let router = s
            .post(
                "/api/routers",
                json!({"name": "fixture", "tunnel_address": "127.0.0.1",
                       "username": "postern", "password": "router-pass"}),
            )
            .await;
        let router_id = router["id"].as_str().unwrap().to_owned();
        ids.insert("site_id", router["site_id"].as_str().unwrap().to_owned());
        let forward = s
            .post(
                &format!("/api/routers/{router_id}/transient-forwarding"),
                json!({"dst_port": 22, "dst_address": "192.168.88.2"}),
            )
            .await;
        ids.insert("forward", forward["id"].as_str().unwrap().to_owned());
        let access = s
            .post(
                &format!("/api/routers/{router_id}/transient-access"),
                json!({}),
            )
            .await;
        let access_id = access["id"].as_str().unwrap().to_owned();
        let share = s
            .post(
                &format!("/api/routers/{router_id}/transient-access/{access_id}/share"),
                json!({}),
            )
            .await;
        ids.insert("share_id", share["id"].as_str().unwrap().to_owned());
        ids.insert("access", access_id);
        // A pending site: its enrolment token names `/enroll/{token}`.
        let site = s.post("/api/sites", json!({"name": "fixture-site"})).await;
        let url = site["enrollment"]["url"].as_str().unwrap();
        ids.insert("token", url.rsplit('/').next().unwrap().to_owned());
        let user = s
            .post(
                "/api/users",
                json!({"username": "fixture-user", "role": "viewer"}),
            )
            .await;
        ids.insert("user_id", user["id"].as_str().unwrap().to_owned());
        ids.insert("token_id", s.spare_token_id.clone());
        ids.insert("router_id", router_id);
        Self { ids }
    }

    fn fill(&self, path: &str) -> String {
        path.split('/')
            .map(
                |seg| match seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    Some("id") if path.contains("/transient-access/") => self.ids["access"].clone(),
                    Some("id") => self.ids["forward"].clone(),
                    Some(name) => self
                        .ids
                        .get(name)
                        .cloned()
                        .unwrap_or_else(|| panic!("no fixture for path parameter {name}")),
                    None => seg.to_owned(),
                },
            )
            .collect::<Vec<_>>()
            .join("/")
    }
}

/// Statuses a request the document calls valid may still get: none that says the
/// request itself was wrong.
fn validation_status(status: u16) -> bool {
    matches!(status, 400 | 413 | 415 | 422)
}

struct Checker<'a> {
    s: &'a Server,
    schemas: &'a Schemas,
    failures: Vec<String>,
    sent: usize,
}

impl Checker<'_> {
    /// Sends `req` and checks its answer against the document; `valid` says what the
    /// document makes of the request.
    async fn check(&mut self, op: &Op<'_>, req: Req, valid: bool) {
        self.sent += 1;
        let method = Method::from_bytes(op.method.to_uppercase().as_bytes()).unwrap();
        let mut r = self.s.http.request(
            method,
            format!("{}{}{}", self.s.base, req.path, query_string(&req.query)),
        );
        if req.auth == Auth::Documented {
            let schemes: Vec<String> = op.op["security"]
                .as_array()
                .map(|s| {
                    s.iter()
                        .flat_map(|o| o.as_object().unwrap().keys().cloned())
                        .collect()
                })
                .unwrap_or_else(|| vec!["bearer".into()]);
            if schemes.iter().any(|k| k == "metrics_token") {
                r = r.bearer_auth(METRICS_TOKEN);
            } else if schemes.iter().any(|k| k == "bearer") {
                r = r.bearer_auth(&self.s.admin);
            }
        }
        if let Some(h) = &req.host {
            r = r.header("host", h);
        }
        if let Some((bytes, ct)) = &req.body {
            r = r.body(bytes.clone());
            if let Some(ct) = ct {
                r = r.header("content-type", ct);
            }
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let kind = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap()
            .trim()
            .to_owned();
        let retry_after = resp.headers().get("retry-after").is_some();
        let text = resp.text().await.unwrap();
        let label = format!(
            "{} {} ({}; {}){}",
            op.method.to_uppercase(),
            op.path,
            req.why,
            if valid { "valid" } else { "invalid" },
            if req.query.is_empty() {
                String::new()
            } else {
                format!(" query {:?}", req.query)
            }
        );
        let mut fail = |m: String| self.failures.push(format!("{label}: {m}"));
        let Some(documented) = op.op["responses"].get(status.to_string()) else {
            fail(format!(
                "answered {status}, which the document does not list: {text}"
            ));
            return;
        };
        if valid {
            if validation_status(status) || status >= 500 {
                fail(format!(
                    "the document calls it valid, the server refused it with {status}: {text}"
                ));
            }
        } else if !(400..500).contains(&status) {
            fail(format!(
                "the document calls it invalid, the server answered {status}"
            ));
        } else if kind != "application/problem+json" && op.path != "/login" {
            fail(format!("a {status} must be problem+json, got {kind:?}"));
        }
        if status == 429 && !retry_after {
            fail("429 without Retry-After".into());
        }
        let documented = self.schemas.resolve(documented);
        match documented["content"].as_object() {
            None => {
                if !text.is_empty() {
                    fail(format!(
                        "{status} is documented without a body, got {text:?}"
                    ));
                }
            }
            Some(content) => match content.get(&kind) {
                None => fail(format!(
                    "{status} came as {kind:?}; the document lists {:?}",
                    content.keys().collect::<Vec<_>>()
                )),
                Some(media) => {
                    if kind.ends_with("json") {
                        match serde_json::from_str::<Value>(&text) {
                            Err(e) => fail(format!("{status} body is not JSON ({e}): {text}")),
                            Ok(body) => {
                                if let Some(schema) = media.get("schema") {
                                    let v = self.schemas.validator(schema);
                                    let errors: Vec<String> =
                                        v.iter_errors(&body).map(|e| e.to_string()).collect();
                                    if !errors.is_empty() {
                                        fail(format!(
                                            "{status} body does not match its schema: {errors:?}: {body}"
                                        ));
                                    }
                                }
                            }
                        }
                    }
                }
            },
        }
    }
}

fn json_req(why: String, path: &str, body: &Value) -> Req {
    Req {
        why,
        path: path.to_owned(),
        query: Vec::new(),
        body: Some((
            serde_json::to_vec(body).unwrap(),
            Some("application/json".into()),
        )),
        auth: Auth::Documented,
        host: None,
    }
}

/// Percent-encodes all but letters and digits.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn query_string(query: &[(String, String)]) -> String {
    if query.is_empty() {
        return String::new();
    }
    let pairs: Vec<String> = query
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect();
    format!("?{}", pairs.join("&"))
}

fn form_body(body: &Value) -> Vec<u8> {
    let pairs: Vec<String> = body
        .as_object()
        .unwrap()
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{k}={}", encode(&query_value(v))))
        .collect();
    pairs.join("&").into_bytes()
}

/// The order operations run in: reads, then creates, then changes, deletes last (a
/// router's delete after its grants').
fn rank(op: &Op<'_>) -> (u8, usize) {
    let m = match op.method.as_str() {
        "get" => 0,
        "post" => 1,
        "patch" | "put" => 2,
        _ => 3,
    };
    (m, usize::MAX - op.path.len())
}

#[tokio::test]
async fn every_operation_keeps_the_openapi_contract() {
    // The creation limits off: only the document's own rules decide here
    // (`tests/limits.rs` holds the server to the limits).
    let s = Server::start(|c| {
        c.creation.per_user = 0;
        c.creation.per_token = 0;
        c.creation.per_address = 0;
        c.creation.live_per_router = 0;
        c.creation.live_per_org = 0;
    })
    .await;
    let doc: Value = s
        .http
        .get(format!("{}/api/openapi.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schemas = Schemas {
        components: doc["components"].clone(),
    };
    let fixtures = Fixtures::make(&s).await;
    let mut ops: Vec<Op<'_>> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                ops.push(Op {
                    method: method.clone(),
                    path: path.clone(),
                    op,
                });
            }
        }
    }
    ops.sort_by_key(rank);
    let mut c = Checker {
        s: &s,
        schemas: &schemas,
        failures: Vec::new(),
        sent: 0,
    };
    let body_limit = ServerConfig::default().body_limit_bytes;
    for op in &ops {
        let path = fixtures.fill(&op.path);
        let secured = !op.op["security"].as_array().is_some_and(|s| {
            s.iter()
                .all(|r| r.as_object().is_some_and(|o| o.is_empty()))
        });
        let params: Vec<&Value> = op.op["parameters"]
            .as_array()
            .map(|p| p.iter().filter(|p| p["in"] == "query").collect())
            .unwrap_or_default();
        let content = op.op.pointer("/requestBody/content");
        let json_schema = content.and_then(|c| c.pointer("/application~1json/schema"));
        let form_schema =
            content.and_then(|c| c.pointer("/application~1x-www-form-urlencoded/schema"));
        let (valid_bodies, invalid_bodies) = match json_schema.or(form_schema) {
            Some(schema) => bodies(&schemas, schema),
            None => (vec![("no body".into(), Value::Null)], Vec::new()),
        };
        let make = |why: String, body: &Value| -> Req {
            match (json_schema, form_schema) {
                (Some(_), _) => json_req(why, &path, body),
                (None, Some(_)) => Req {
                    body: Some((
                        form_body(body),
                        Some("application/x-www-form-urlencoded".into()),
                    )),
                    ..json_req(why, &path, body)
                },
                _ => Req {
                    body: None,
                    ..json_req(why, &path, body)
                },
            }
        };
        let base_body = valid_bodies[0].1.clone();

        // Refusals first: none of them may change anything.
        let mut invalid: Vec<Req> = Vec::new();
        if secured {
            invalid.push(Req {
                auth: Auth::None,
                ..make("no credentials".into(), &base_body)
            });
        }
        if op.path != "/healthz" {
            invalid.push(Req {
                host: Some("rebound.example".into()),
                ..make("foreign Host".into(), &base_body)
            });
        }
        if json_schema.is_some() {
            for (why, b) in &invalid_bodies {
                invalid.push(make(why.clone(), b));
            }
            let raw = serde_json::to_vec(&base_body).unwrap();
            invalid.push(Req {
                body: Some((raw.clone(), None)),
                ..make("no Content-Type".into(), &base_body)
            });
            invalid.push(Req {
                body: Some((raw, Some("text/plain".into()))),
                ..make("Content-Type text/plain".into(), &base_body)
            });
            invalid.push(Req {
                body: Some((b"{\"a\":".to_vec(), Some("application/json".into()))),
                ..make("malformed JSON".into(), &base_body)
            });
            invalid.push(Req {
                body: Some((b"[]".to_vec(), Some("application/json".into()))),
                ..make("an array".into(), &base_body)
            });
            let mut big = b"{\"x\":\"".to_vec();
            big.extend(std::iter::repeat_n(b'a', body_limit + 1));
            big.extend(b"\"}");
            invalid.push(Req {
                body: Some((big, Some("application/json".into()))),
                ..make("body over the limit".into(), &base_body)
            });
        }
        if op.path.contains('{') {
            invalid.push(Req {
                path: op
                    .path
                    .split('/')
                    .map(|seg| {
                        if seg.starts_with('{') {
                            "7b8b1f9e-0000-4000-8000-000000000000"
                        } else {
                            seg
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("/"),
                ..make("unknown ids".into(), &base_body)
            });
        }
        // Query parameters: each bound broken, a wrong type, an unknown one, a
        // requirement left out.
        let requires = |p: &Value| -> Vec<(String, String)> {
            p["x-postern-requires"]
                .as_object()
                .map(|o| o.iter().map(|(k, v)| (k.clone(), query_value(v))).collect())
                .unwrap_or_default()
        };
        for p in &params {
            let name = p["name"].as_str().unwrap();
            let mut breakers = schemas.breakers(&p["schema"]);
            breakers.push(("not a value of its type".into(), json!("abc")));
            for (why, v) in breakers {
                // A query has only text: a breaker that reads as a valid value there
                // (the string "1" for an integer) breaks nothing.
                let text = query_value(&v);
                let read = serde_json::from_str(&text).unwrap_or(Value::String(text));
                if v.is_null()
                    || v.is_object()
                    || v.is_array()
                    || schemas.valid(&p["schema"], &read)
                {
                    continue;
                }
                let mut q = requires(p);
                q.push((name.to_owned(), query_value(&v)));
                invalid.push(Req {
                    query: q,
                    ..make(format!("query {name}: {why}"), &base_body)
                });
            }
            if !requires(p).is_empty()
                && let Some(v) = schemas
                    .candidates(&p["schema"])
                    .into_iter()
                    .find(|v| !v.is_null())
            {
                invalid.push(Req {
                    query: vec![(name.to_owned(), query_value(&v))],
                    ..make(
                        format!("query {name} without {:?}", requires(p)),
                        &base_body,
                    )
                });
            }
        }
        if !params.is_empty() {
            invalid.push(Req {
                query: vec![("no_such_param".into(), "1".into())],
                ..make("unknown query parameter".into(), &base_body)
            });
        }
        let refusals = invalid.len();
        for req in invalid {
            c.check(op, req, false).await;
        }

        // What the document accepts.
        let mut valid: Vec<Req> = Vec::new();
        for (why, b) in &valid_bodies {
            valid.push(make(why.clone(), b));
        }
        for p in &params {
            let name = p["name"].as_str().unwrap();
            for v in schemas.candidates(&p["schema"]) {
                if v.is_null() {
                    continue;
                }
                let mut q = requires(p);
                q.push((name.to_owned(), query_value(&v)));
                valid.push(Req {
                    query: q,
                    ..make(format!("query {name} = {v}"), &base_body)
                });
            }
        }
        eprintln!(
            "{} {}: {} valid, {refusals} invalid",
            op.method.to_uppercase(),
            op.path,
            valid.len()
        );
        for req in valid {
            c.check(op, req, true).await;
        }
    }
    let sent = c.sent;
    let failures = std::mem::take(&mut c.failures);
    s.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} requests broke the contract:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(sent > 500, "only {sent} requests generated");
    eprintln!("{sent} requests generated from the document, all as it says");
}
