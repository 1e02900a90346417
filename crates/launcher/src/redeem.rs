//! Redeeming a ticket at the Postern server: one `POST /api/winbox/redeem` over HTTPS
//! (rustls with ring, the operating system's trusted roots plus an optional PEM file),
//! or plain HTTP where the link's checks allowed it. A minimal HTTP/1.1 exchange over a
//! blocking socket with timeouts: one request, `Connection: close`, a bounded answer.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::link::{Host, Origin, Scheme};

/// The redemption route, under the server's origin.
pub const REDEEM_PATH: &str = "/api/winbox/redeem";
/// Connecting, and each read or write, gives up after this long.
const TIMEOUT: Duration = Duration::from_secs(15);
/// A longer answer is refused.
const MAX_RESPONSE: usize = 64 * 1024;

/// Why redeeming failed, in words.
#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error("cannot reach the Postern server {0}: {1}")]
    Connect(String, String),
    #[error("TLS with the Postern server {0} failed: {1}")]
    Tls(String, String),
    #[error("cannot read the CA file {0}: {1}")]
    CaFile(String, String),
    #[error("the Postern server {0} sent an answer the launcher cannot read: {1}")]
    Protocol(String, &'static str),
    #[error(
        "the Postern server refused the ticket: {0} (a link works once, within a minute: open a fresh one from Postern)"
    )]
    Refused(String),
    #[error("the Postern server's answer does not match the link: {0}")]
    Mismatch(&'static str),
}

/// What a redeemed ticket gives: where to connect and the login.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How to trust the server's certificate.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// PEM certificates trusted in addition to the system's (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

/// Redeems `ticket` at `server`.
pub fn redeem(server: &Origin, ticket: &str, trust: &Trust) -> Result<Login, RedeemError> {
    let body = format!("{{\"ticket\":\"{ticket}\"}}");
    let request = format!(
        "POST {REDEEM_PATH} HTTP/1.1\r\nHost: {}\r\nUser-Agent: postern-launcher/{}\r\n\
         Accept: application/json\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        server.authority(),
        env!("CARGO_PKG_VERSION"),
        body.len()
    );
    let raw = exchange(server, request.as_bytes(), trust, MAX_RESPONSE)?;
    let (status, body) =
        parse_response(&raw).map_err(|e| RedeemError::Protocol(server.to_string(), e))?;
    let value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|_| RedeemError::Protocol(server.to_string(), "the body is not JSON"))?;
    if status != 200 {
        let detail = value
            .get("detail")
            .and_then(|d| d.as_str())
            .map(plain)
            .unwrap_or_else(|| format!("HTTP status {status}"));
        return Err(RedeemError::Refused(detail));
    }
    let text = |key: &'static str| {
        value
            .get(key)
            .and_then(|v| v.as_str())
            .map(str::to_owned)
            .ok_or(RedeemError::Protocol(
                server.to_string(),
                "a field is missing",
            ))
    };
    let port = value
        .get("port")
        .and_then(|p| p.as_u64())
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or(RedeemError::Protocol(
            server.to_string(),
            "the port is not a port",
        ))?;
    Ok(Login {
        host: text("host")?,
        port,
        user: text("user")?,
        password: text("password")?,
    })
}

/// A server's words made one plain line: control characters dropped, at most 200 long.
fn plain(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).take(200).collect()
}

/// One HTTP/1.1 request to a Postern server and its status and body: `method` and
/// `path`, `headers` (lines without their CRLF, e.g. `Authorization: Bearer …`) and a
/// body, over HTTPS or plain HTTP as `server` says, answers up to `max` bytes. The
/// client commands of `postern` talk to the API through this too.
pub fn request(
    server: &Origin,
    method: &str,
    path: &str,
    headers: &[String],
    body: &[u8],
    trust: &Trust,
    max: usize,
) -> Result<(u16, Vec<u8>), RedeemError> {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n",
        server.authority(),
        body.len()
    );
    for h in headers {
        if h.contains(['\r', '\n']) {
            return Err(RedeemError::Protocol(
                server.to_string(),
                "a header holds a line break",
            ));
        }
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(body);
    let answer = exchange(server, &raw, trust, max)?;
    parse_response(&answer).map_err(|e| RedeemError::Protocol(server.to_string(), e))
}

/// Sends `request` and reads the whole answer (the server closes the connection).
fn exchange(
    server: &Origin,
    request: &[u8],
    trust: &Trust,
    max: usize,
) -> Result<Vec<u8>, RedeemError> {
    let name = server.to_string();
    let connect_error = |e: std::io::Error| RedeemError::Connect(name.clone(), e.to_string());
    let host = match &server.host {
        Host::Name(n) => n.clone(),
        Host::V4(a) => a.to_string(),
        Host::V6(a) => a.to_string(),
    };
    let addrs: Vec<_> = (host.as_str(), server.port)
        .to_socket_addrs()
        .map_err(connect_error)?
        .collect();
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
    let mut stream = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream.ok_or_else(|| connect_error(last))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(connect_error)?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(connect_error)?;
    match server.scheme {
        Scheme::Http => talk(stream, request, max).map_err(connect_error),
        Scheme::Https => {
            let config = tls_config(trust)?;
            let server_name = rustls_pki_types::ServerName::try_from(host)
                .map_err(|e| RedeemError::Tls(name.clone(), e.to_string()))?;
            let conn = rustls::ClientConnection::new(config, server_name)
                .map_err(|e| RedeemError::Tls(name.clone(), e.to_string()))?;
            let tls = rustls::StreamOwned::new(conn, stream);
            talk(tls, request, max).map_err(|e| {
                match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(tls_error) => RedeemError::Tls(name.clone(), tls_error.to_string()),
                    None => RedeemError::Connect(name.clone(), e.to_string()),
                }
            })
        }
    }
}

/// Writes the request and reads until the server closes, at most `max` bytes.
fn talk(mut stream: impl Read + Write, request: &[u8], max: usize) -> std::io::Result<Vec<u8>> {
    stream.write_all(request)?;
    stream.flush()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(buf.get(..n).unwrap_or_default());
                if raw.len() > max {
                    return Err(std::io::Error::other("the answer is too long"));
                }
                if complete(&raw) {
                    break;
                }
            }
            // A peer that closes without TLS's close_notify: what came is judged by
            // its own length below.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        }
    }
    Ok(raw)
}

/// Whether `raw` holds a whole answer with a `Content-Length` body.
fn complete(raw: &[u8]) -> bool {
    let Some(end) = find(raw, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(raw.get(..end).unwrap_or_default());
    content_length(&head).is_some_and(|len| raw.len() >= end + 4 + len)
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().skip(1).find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The status and body of an HTTP/1.1 answer (`Content-Length` or chunked).
pub fn parse_response(raw: &[u8]) -> Result<(u16, Vec<u8>), &'static str> {
    let end = find(raw, b"\r\n\r\n").ok_or("the answer has no end of headers")?;
    let head = std::str::from_utf8(raw.get(..end).unwrap_or_default())
        .map_err(|_| "the headers are not text")?;
    let body = raw.get(end + 4..).unwrap_or_default();
    let status_line = head.lines().next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err("not an HTTP/1 answer");
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or("the status is not a number")?;
    let chunked = head.lines().skip(1).any(|line| {
        line.split_once(':').is_some_and(|(n, v)| {
            n.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    if chunked {
        return Ok((status, dechunk(body)?));
    }
    match content_length(head) {
        Some(len) => body
            .get(..len)
            .map(|b| (status, b.to_vec()))
            .ok_or("the body is shorter than its Content-Length"),
        None => Ok((status, body.to_vec())),
    }
}

/// Joins a chunked body.
fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n").ok_or("a chunk has no size line")?;
        let size_text = std::str::from_utf8(body.get(..line_end).unwrap_or_default())
            .map_err(|_| "a chunk size is not text")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "a chunk size is not hex")?;
        let rest = body.get(line_end + 2..).ok_or("a chunk is cut short")?;
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(rest.get(..size).ok_or("a chunk is cut short")?);
        body = rest.get(size + 2..).ok_or("a chunk is cut short")?;
    }
}

/// rustls over ring with the system's roots and `trust.ca_file`'s.
fn tls_config(trust: &Trust) -> Result<Arc<rustls::ClientConfig>, RedeemError> {
    let mut roots = rustls::RootCertStore::empty();
    // Certificates the system store holds that rustls cannot use are skipped, as the
    // store's other errors are: a missing system store still leaves `ca_file`.
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = &trust.ca_file {
        for cert in read_pem(path)? {
            roots
                .add(cert)
                .map_err(|e| RedeemError::CaFile(path.display().to_string(), e.to_string()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| RedeemError::Tls(String::new(), e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read_pem(path: &Path) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, RedeemError> {
    use rustls_pki_types::pem::PemObject as _;
    let shown = path.display().to_string();
    let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| RedeemError::CaFile(shown.clone(), e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RedeemError::CaFile(shown.clone(), e.to_string()))?;
    if certs.is_empty() {
        return Err(RedeemError::CaFile(shown, "no certificate in it".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_with_a_length_or_in_chunks_are_read() {
        let raw =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert_eq!(parse_response(raw), Ok((200, b"{}".to_vec())));
        assert!(complete(raw));
        let raw = b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n{\"a\r\n4\r\n\":1}\r\n0\r\n\r\n";
        assert_eq!(parse_response(raw), Ok((404, b"{\"a\":1}".to_vec())));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n{}"),
            Err("the body is shorter than its Content-Length")
        );
        assert_eq!(
            parse_response(b"SSH-2.0-x\r\n\r\n"),
            Err("not an HTTP/1 answer")
        );
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n").is_err()
        );
    }

    #[test]
    fn a_server_s_words_are_one_plain_line() {
        assert_eq!(plain("ticket\nnot found\u{1b}[31m"), "ticketnot found[31m");
        assert_eq!(plain(&"x".repeat(500)).len(), 200);
    }

    #[test]
    fn the_password_is_not_in_debug_output() {
        let login = Login {
            host: "h".into(),
            port: 1,
            user: "u".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{login:?}").contains("s3cret"));
    }
}
