//! The launcher's own binary against a real TLS server standing in for Postern (rustls,
//! a certificate made by rcgen for `localhost`): with the server's CA given
//! (`--ca-file`) the ticket is redeemed over HTTPS and WinBox (a stand-in script) gets
//! the answer's password; without it the TLS handshake is refused and nothing starts;
//! an answer for another user than the link's is refused too.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

const LAUNCHER: &str = env!("CARGO_BIN_EXE_postern-launcher");
const TICKET: &str = "wbt_Abcdefghijklmnopqrstuvwxyz0123456789-_ABCDEF";

/// A one-request-at-a-time HTTPS server answering every request with `body`; sends
/// each request it read on the channel. Returns its port and the CA's PEM.
fn https_server(body: &'static str) -> (u16, String, mpsc::Receiver<String>) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let pem = key.cert.pem();
    let certs = vec![key.cert.der().clone()];
    let private = rustls_pki_types::PrivateKeyDer::Pkcs8(
        rustls_pki_types::PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()),
    );
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = Arc::new(
        rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let conn = rustls::ServerConnection::new(config.clone()).unwrap();
            let mut tls = rustls::StreamOwned::new(conn, stream);
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Headers, then the body's Content-Length bytes.
            loop {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
                let text = String::from_utf8_lossy(&request);
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("Content-Length: "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            if request.is_empty() {
                continue;
            }
            let _ = tx.send(String::from_utf8_lossy(&request).into_owned());
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = tls.write_all(answer.as_bytes());
            tls.conn.send_close_notify();
            let _ = tls.flush();
        }
    });
    (port, pem, rx)
}

/// A stand-in WinBox recording its arguments in `dir/argv`.
fn stand_in(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    let out = dir.join("argv");
    let script = dir.join("WinBox");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}.tmp' && mv '{0}.tmp' '{0}'\n",
            out.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    (script, out)
}

fn open(script: &Path, ca: Option<&Path>, link: &str) -> Output {
    let mut c = Command::new(LAUNCHER);
    c.args(["open", "--winbox"]).arg(script);
    if let Some(ca) = ca {
        c.arg("--ca-file").arg(ca);
    }
    c.arg(link)
        .env_remove("POSTERN_WINBOX")
        .env_remove("POSTERN_CA_FILE")
        .output()
        .unwrap()
}

fn recorded(out: &Path) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(text) = std::fs::read_to_string(out) {
            return text.lines().map(str::to_owned).collect();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the stand-in WinBox was not started");
}

const LOGIN: &str = r#"{"host":"gw.example.net","port":40001,"user":"postern-a1","password":"S3cretFromServer","expires_at":"2030-01-01T00:00:00+00:00"}"#;

#[test]
fn the_ticket_is_redeemed_over_https_with_the_given_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (script, argv) = stand_in(dir.path());
    let (port, pem, requests) = https_server(LOGIN);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let link = format!(
        "winbox://GW.example.net:40001?user=postern-a1&ticket={TICKET}&server=https%3A%2F%2Flocalhost%3A{port}"
    );

    let out = open(&script, Some(&ca), &link);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        recorded(&argv),
        ["gw.example.net:40001", "postern-a1", "S3cretFromServer"]
    );
    let request = requests.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        request.starts_with("POST /api/winbox/redeem HTTP/1.1\r\n"),
        "{request}"
    );
    assert!(
        request.contains(&format!("\r\nHost: localhost:{port}\r\n")),
        "{request}"
    );
    assert!(
        request.ends_with(&format!("{{\"ticket\":\"{TICKET}\"}}")),
        "{request}"
    );
    // The password is not in what the launcher prints.
    assert!(!String::from_utf8_lossy(&out.stdout).contains("S3cret"));

    // Without the CA: the certificate is refused, nothing is started.
    std::fs::remove_file(&argv).unwrap();
    let out = open(&script, None, &link);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("TLS with the Postern server https://localhost:"),
        "{err}"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(!argv.exists());
}

#[test]
fn an_answer_for_another_login_than_the_link_s_starts_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (script, argv) = stand_in(dir.path());
    let (port, pem, _requests) = https_server(LOGIN);
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, pem).unwrap();
    for (link_part, why) in [
        ("gw.example.net:40001?user=postern-zz", "another user"),
        ("gw.example.net:40002?user=postern-a1", "another port"),
        ("other.example.net:40001?user=postern-a1", "another host"),
    ] {
        let link =
            format!("winbox://{link_part}&ticket={TICKET}&server=https%3A%2F%2Flocalhost%3A{port}");
        let out = open(&script, Some(&ca), &link);
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(
            err.contains("does not match the link") && err.contains(why),
            "{err}"
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(!argv.exists());
}
