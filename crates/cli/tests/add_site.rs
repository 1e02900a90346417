//! `postern admin add-site` as a user runs it: the real binary on a data directory a
//! server has started on once; the line alone on standard output, and clear refusals.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_postern");

fn postern(args: &[&str], data: &std::path::Path, public_url: Option<&str>) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
        .env_remove("POSTERN_PUBLIC_URL")
        .env_remove("POSTERN_LAB_MODE");
    if let Some(url) = public_url {
        cmd.env("POSTERN_PUBLIC_URL", url);
    }
    cmd.output().unwrap()
}

/// Starts `postern server` on the data directory until it listens, then stops it.
fn start_once(data: &std::path::Path) {
    let mut child = Command::new(BIN)
        .args([
            "server",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(data)
        .env_remove("POSTERN_LISTEN")
        .env_remove("POSTERN_DATABASE_URL")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("postern server listening") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the server listens");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

#[test]
fn add_site_prints_the_line_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    start_once(&data);
    let add = ["admin", "add-site", "--name", "branch-1"];

    // Without a public address routers could reach, it says what to set.
    let out = postern(&add, &data, None);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("public_url"), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = postern(&add, &data, Some("https://postern.example.com"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout.strip_suffix('\n').unwrap();
    assert!(!line.contains('\n'), "{stdout:?}");
    assert!(line.starts_with(":if ([:pick [/system resource get version] 0 2] = \"7.\") do={/tool fetch url=\"https://postern.example.com/enroll/pet_"), "{line}");
    assert!(line.contains("check-certificate=yes-without-crl"), "{line}");

    // The same name again, and an unknown region, are refused by name.
    let out = postern(&add, &data, Some("https://postern.example.com"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("branch-1"));
    let out = postern(
        &["admin", "add-site", "--name", "b2", "--region", "mars"],
        &data,
        Some("https://postern.example.com"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("mars"));
}
