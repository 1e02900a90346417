//! The `Host` check: a request must name this server by an IP address, `localhost`, or
//! one of the configured `public_hosts`. A page on another site whose name an attacker
//! re-points at this server's address (DNS rebinding) sends its own name in `Host`, so
//! it is refused (421) before any handler runs. `/healthz` is exempt, for load balancers
//! that probe by any name.

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::error::{Problem, problem_response};
use crate::state::AppState;

/// The host part of a `Host` value, without its port (`[v6]:port` and `v4:port` too),
/// lowercased, without a trailing dot.
fn host_part(value: &str) -> String {
    let value = value.trim();
    let host = if let Some(rest) = value.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(h, _)| h)
    } else {
        match value.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => value,
        }
    };
    host.trim_end_matches('.').to_ascii_lowercase()
}

/// Whether `value` (a `Host` header) names this server.
pub fn allowed(public_hosts: &[String], value: &str) -> bool {
    let host = host_part(value);
    if host.parse::<IpAddr>().is_ok() || host == "localhost" {
        return true;
    }
    let whole = value.trim().trim_end_matches('.').to_ascii_lowercase();
    public_hosts.iter().any(|configured| {
        let configured = configured.trim().to_ascii_lowercase();
        // A configured name without a port matches any port; with one, that port only.
        configured == whole || (!configured.contains(':') && configured == host)
    })
}

/// Middleware on every route but `/healthz`: refuses a `Host` this server was not
/// configured for with 421 Misdirected Request. A request without `Host` (HTTP/1.0, not
/// a browser) passes.
pub async fn host_guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{fffd}").to_owned());
    match host {
        Some(h) if req.uri().path() != "/healthz" && !allowed(&state.config.public_hosts, &h) => {
            let problem = Problem {
                kind: "urn:postern:problem:misdirected".into(),
                title: "Misdirected Request".into(),
                status: 421,
                detail: "this server does not answer to that host name: add it to \
                         public_hosts (POSTERN_PUBLIC_HOSTS) if it is this server's"
                    .into(),
                errors: Vec::new(),
            };
            problem_response(StatusCode::MISDIRECTED_REQUEST, &problem)
        }
        _ => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_addresses_localhost_or_configured() {
        let configured = vec![
            "postern.example.net".to_owned(),
            "ops.example.net:8443".to_owned(),
        ];
        let rows: &[(&str, bool)] = &[
            ("127.0.0.1:8080", true),
            ("127.0.0.1", true),
            ("[::1]:8080", true),
            ("[2001:db8::1]", true),
            ("198.51.100.7:443", true),
            ("localhost:8080", true),
            ("LOCALHOST", true),
            ("postern.example.net", true),
            ("Postern.Example.Net.:8443", true),
            ("ops.example.net:8443", true),
            ("ops.example.net:8080", false),
            ("ops.example.net", false),
            ("evil.example", false),
            ("evil.example:8080", false),
            ("127.0.0.1.evil.example", false),
            ("localhost.evil.example", false),
            ("postern.example.net.evil.example", false),
            ("", false),
        ];
        for &(host, ok) in rows {
            assert_eq!(allowed(&configured, host), ok, "{host}");
        }
        assert!(!allowed(&[], "postern.example.net"));
    }
}
