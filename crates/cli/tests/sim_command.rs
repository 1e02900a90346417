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

#[test]
fn behind_nat_routers_open_no_port_and_take_console_lines_on_standard_input() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_postern"))
        .args([
            "sim",
            "--routers",
            "2",
            "--base-address",
            "127.0.6.31",
            "--admin-password",
            "pw",
            "--behind-nat",
            "--console",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for i in 1..=2 {
        let line = lines.next().unwrap().unwrap();
        let r: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(r["behind_nat"], true, "{line}");
        assert_eq!(r["api_port"], 0, "{line}");
        assert_eq!(r["ssh_port"], 0, "{line}");
        for port in [8728, 8729, 8291, 2222] {
            let e = std::net::TcpStream::connect(("127.0.6.3".to_string() + &i.to_string(), port))
                .unwrap_err();
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "port {port}"
            );
        }
    }
    // The console: the first router by default, another by its name.
    writeln!(stdin, "/system identity print").unwrap();
    writeln!(stdin, "sim-2> /system identity print").unwrap();
    writeln!(stdin, "sim-2> /interface wireguard add name=postern").unwrap();
    writeln!(stdin, "sim-2> /interface wireguard print").unwrap();
    stdin.flush().unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("public-key=")) {
        seen.push(lines.next().expect("console output").unwrap());
    }
    let text = seen.join("\n");
    let first = text.find("name: sim-1").expect(&text);
    let second = text.find("name: sim-2").expect(&text);
    assert!(first < second, "{text}");
    assert!(text.contains("name=postern"), "{text}");
    child.kill().unwrap();
    child.wait().unwrap();
}
