//! `/tool fetch`'s HTTP and HTTPS: one request over a TCP (or TLS) connection of its
//! own with hyper's HTTP/1.1 client, so the router's trust store and
//! `check-certificate` decide, not the host's. `check-certificate=no` takes any
//! certificate; `yes` and `yes-without-crl` check the chain against the CA
//! certificates the router was given ([`crate::RouterConfig::trust_pem`]) and the name
//! (the sim has no CRLs, so the two behave alike). Bodies are limited: 64 KiB for
//! `output=user`, 4 MiB for a file. A status outside 2xx fails as RouterOS words it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::TcpStream;

use crate::router::Router;

/// The most `output=user` keeps (RouterOS 7 limits it to 64 KiB).
pub const USER_LIMIT: usize = 64 * 1024;
/// The most the sim writes to a file.
pub const FILE_LIMIT: usize = 4 << 20;
/// How long a fetch may take in all.
const TIMEOUT: Duration = Duration::from_secs(10);

/// `check-certificate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    No,
    Yes,
    YesWithoutCrl,
}

#[derive(Debug, Clone)]
pub struct FetchRequest {
    pub url: String,
    /// `get`, `post`, `put` or `delete`.
    pub method: String,
    pub data: Option<String>,
    pub headers: Vec<(String, String)>,
    pub check: Check,
    pub trust_pem: Option<std::path::PathBuf>,
    pub limit: usize,
}

#[derive(Debug, Clone)]
pub struct FetchResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// `http-header-field="Content-Type: application/json,X-A: b"`: name and value pairs.
pub fn header_fields(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part
            .split_once(':')
            .ok_or_else(|| "invalid value for argument http-header-field".to_string())?;
        let name = name.trim();
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
            && !value.contains(['\r', '\n']);
        if !valid {
            return Err("invalid value for argument http-header-field".into());
        }
        out.push((name.to_string(), value.trim().to_string()));
    }
    Ok(out)
}

/// The file name `/tool fetch` writes when no `dst-path` is given: the URL's last
/// path segment.
pub fn file_name_of(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let after_host = path.splitn(4, '/').nth(3).unwrap_or_default();
    after_host
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or("index.html")
        .to_string()
}

/// Writes (or replaces) a file in `/file`.
pub fn write_file(router: &Router, name: &str, body: &[u8]) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 || name.contains("..") || name.starts_with('/') {
        return Err("failure: invalid dst-path".into());
    }
    let now = crate::clock::format_datetime(router.clock().unix());
    let contents = String::from_utf8_lossy(body).into_owned();
    let kind = if name.ends_with(".rsc") {
        "script"
    } else {
        "file"
    };
    let mut state = router.state();
    let existing = state
        .files
        .items
        .iter()
        .position(|f| f.get("name") == Some(name));
    let item = match existing.and_then(|i| state.files.items.get_mut(i)) {
        Some(f) => f,
        None => {
            let id = state.files.insert(Default::default());
            state
                .files
                .get_mut(id)
                .ok_or_else(|| "failure: cannot write file".to_string())?
        }
    };
    item.set("name", name);
    item.set("type", kind);
    item.set("size", body.len().to_string());
    item.set("last-modified", now);
    item.set("contents", contents);
    Ok(())
}

struct Url {
    https: bool,
    host: String,
    port: u16,
    /// Path and query, from the first `/`.
    target: String,
}

fn parse_url(url: &str) -> Result<Url, String> {
    let bad = || "failure: invalid url".to_string();
    let (https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("failure: unsupported mode: only http and https".into());
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = rest.get(..end).ok_or_else(bad)?;
    let mut target = rest.get(end..).unwrap_or_default().to_string();
    if let Some(hash) = target.find('#') {
        target.truncate(hash);
    }
    if !target.starts_with('/') {
        target.insert(0, '/');
    }
    if authority.contains('@') || authority.is_empty() {
        return Err(bad());
    }
    let default = if https { 443 } else { 80 };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(bad)?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if after.is_empty() => default,
            None => return Err(bad()),
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad())?),
            None => (authority.to_string(), default),
        }
    };
    if host.is_empty() || target.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad());
    }
    Ok(Url {
        https,
        host,
        port,
        target,
    })
}

/// Accepts any certificate (`check-certificate=no`), still checking the handshake's
/// signatures.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(check: Check, trust: Option<&std::path::Path>) -> Result<ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("failure: SSL: {e}"))?;
    Ok(match check {
        Check::No => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
            .with_no_client_auth(),
        Check::Yes | Check::YesWithoutCrl => {
            let mut roots = RootCertStore::empty();
            if let Some(path) = trust {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("failure: cannot read trusted certificates: {e}"))?;
                for cert in certs {
                    let cert = cert
                        .map_err(|e| format!("failure: cannot read trusted certificates: {e}"))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("failure: bad trusted certificate: {e}"))?;
                }
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    })
}

/// Runs one request.
pub async fn fetch(req: &FetchRequest) -> Result<FetchResponse, String> {
    tokio::time::timeout(TIMEOUT, fetch_inner(req))
        .await
        .map_err(|_| "failure: connection timeout".to_string())?
}

async fn fetch_inner(req: &FetchRequest) -> Result<FetchResponse, String> {
    let url = parse_url(&req.url)?;
    let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| "failure: could not resolve dns name".to_string())?;
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|_| "failure: connection refused".to_string())?;
    // `Host` names the port only when it is not the scheme's own, as clients do.
    let host = if url.host.contains(':') {
        format!("[{}]", url.host)
    } else {
        url.host.clone()
    };
    let default_port = if url.https { 443 } else { 80 };
    let host_header = if url.port == default_port {
        host
    } else {
        format!("{host}:{}", url.port)
    };
    if url.https {
        let config = tls_config(req.check, req.trust_pem.as_deref())?;
        let name = ServerName::try_from(url.host.clone())
            .map_err(|_| "failure: invalid url".to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| {
                tracing::debug!(error = %e, "fetch: tls handshake failed");
                match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(rustls::Error::InvalidCertificate(_)) => {
                        "failure: SSL: ssl: no trusted CA certificate found (6)".to_string()
                    }
                    _ => "failure: SSL: handshake failed".to_string(),
                }
            })?;
        exchange(TokioIo::new(tls), req, &url, &host_header).await
    } else {
        exchange(TokioIo::new(tcp), req, &url, &host_header).await
    }
}

async fn exchange<T>(
    io: T,
    req: &FetchRequest,
    url: &Url,
    host_header: &str,
) -> Result<FetchResponse, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("failure: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let method = match req.method.as_str() {
        "post" => hyper::Method::POST,
        "put" => hyper::Method::PUT,
        "delete" => hyper::Method::DELETE,
        _ => hyper::Method::GET,
    };
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(url.target.as_str())
        .header(hyper::header::HOST, host_header);
    for (k, v) in &req.headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let body = Full::new(Bytes::from(
        req.data.clone().unwrap_or_default().into_bytes(),
    ));
    let request = builder
        .body(body)
        .map_err(|_| "invalid value for argument http-header-field".to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("failure: {e}"))?;
    let status = response.status();
    let collected = Limited::new(response.into_body(), req.limit)
        .collect()
        .await
        .map_err(|_| "failure: max data size reached".to_string());
    driver.abort();
    if !status.is_success() {
        return Err(format!(
            "failure: closing connection: <{} {}> {}:{} (4)",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            url.host,
            url.port
        ));
    }
    let body = collected?.to_bytes().to_vec();
    Ok(FetchResponse {
        status: status.as_u16(),
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_headers_and_names() {
        let u = parse_url("https://h.example:8443/enroll/t?x=1").unwrap();
        assert!(u.https);
        assert_eq!((u.host.as_str(), u.port), ("h.example", 8443));
        assert_eq!(u.target, "/enroll/t?x=1");
        let u = parse_url("http://127.0.0.1").unwrap();
        assert_eq!((u.port, u.target.as_str()), (80, "/"));
        let u = parse_url("http://[::1]:81/a").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 81));
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("http://u@x/").is_err());
        assert!(parse_url("http://x:99999/").is_err());
        assert!(parse_url("http://x/a b").is_err());
        assert_eq!(
            header_fields("Content-Type: application/json,X-A:b").unwrap(),
            [
                ("Content-Type".to_string(), "application/json".to_string()),
                ("X-A".to_string(), "b".to_string())
            ]
        );
        assert!(header_fields("nocolon").is_err());
        assert!(header_fields("A B: c").is_err());
        assert_eq!(file_name_of("http://h/enroll/x.rsc?y"), "x.rsc");
        assert_eq!(file_name_of("http://h/"), "index.html");
        assert_eq!(file_name_of("http://h"), "index.html");
    }
}
