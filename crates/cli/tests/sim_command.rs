//! `postern sim` end to end: the binary starts a fleet, prints one JSON line per router
//! in well under a second, serves the API, and stops cleanly on SIGINT.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use routeros::codec::{Decoder, encode_sentence};
use routeros::message::{Reply, ReplyKind};

fn call(stream: &mut std::net::TcpStream, words: &[&str]) -> Reply {
    let mut out = BytesMut::new();
    encode_sentence(words, &mut out).unwrap();
    stream.write_all(&out).unwrap();
    let mut buf = BytesMut::new();
    loop {
        if let Some(s) = Decoder::default().decode(&mut buf).unwrap() {
            return Reply::parse(&s).unwrap();
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[test]
fn postern_sim_prints_one_line_per_router_and_serves() {
    let start = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args([
            "sim",
            "--routers",
            "3",
            "--base-address",
            "127.0.6.1",
            "--api-port",
            "0",
            "--api-tls-port",
            "0",
            "--winbox-port",
            "0",
            "--ssh-port",
            "0",
        ])
        .env_remove("POSTERN_SIM_ADMIN_PASSWORD")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut routers = Vec::new();
    for _ in 0..3 {
        let line = lines.next().unwrap().unwrap();
        routers.push(serde_json::from_str::<serde_json::Value>(&line).unwrap());
    }
    let elapsed = start.elapsed();
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    for (i, r) in routers.iter().enumerate() {
        assert_eq!(r["identity"], format!("sim-{}", i + 1));
        assert_eq!(r["address"], format!("127.0.6.{}", i + 1));
        assert_eq!(r["admin_user"], "admin");
        assert!(r["ssh_port"].as_u64().unwrap() > 0);
        assert!(r["winbox_port"].as_u64().unwrap() > 0);
        assert!(r["api_tls_port"].as_u64().unwrap() > 0);
        let password = r["admin_password"]
            .as_str()
            .expect("a generated password is printed");
        let addr = format!("{}:{}", r["address"].as_str().unwrap(), r["api_port"]);
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let login = call(
            &mut s,
            &["/login", "=name=admin", &format!("=password={password}")],
        );
        assert_eq!(login.kind, ReplyKind::Done);
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "postern sim did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_given_password_is_not_printed() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args([
            "sim",
            "--routers",
            "1",
            "--base-address",
            "127.0.6.21",
            "--api-port",
            "0",
            "--api-tls-port",
            "0",
            "--winbox-port",
            "0",
            "--ssh-port",
            "0",
            "--admin-password",
            "given-pw",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(v.get("admin_password").is_none(), "{line}");
    assert!(!line.contains("given-pw"));
}
