//! `postern server` and `postern admin create-token` as a user runs them: the real binary
//! on a temporary data directory, port from the OS, stopped with SIGTERM.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_postern");

struct Running {
    child: Child,
    addr: String,
    /// Collects standard output until the process ends.
    stdout: std::thread::JoinHandle<Vec<String>>,
}

/// Starts the server and waits for its "listening" log line.
fn start(data: &std::path::Path) -> Running {
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
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the log to its end (so the server never writes to a closed pipe), handing
    // over the listen address when it shows.
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let v: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("log lines are JSON: {line}"));
            if v["fields"]["message"] == "postern server listening"
                && let Some(a) = v["fields"]["listen"].as_str()
            {
                let _ = tx.send(a.to_owned());
            }
        }
    });
    let addr = rx.recv_timeout(Duration::from_secs(30)).ok();
    let stdout_pipe = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        BufReader::new(stdout_pipe)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    Running {
        child,
        addr: addr.expect("a listen address in the log"),
        stdout,
    }
}

fn stop(mut r: Running) -> Vec<String> {
    let status = Command::new("kill")
        .args(["-TERM", &r.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = r.child.wait().unwrap();
    assert!(exit.success(), "graceful stop exits 0: {exit:?}");
    r.stdout.join().unwrap()
}

fn get(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut req = reqwest::Client::new().get(format!("http://{addr}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    })
}

#[test]
fn first_start_prints_the_admin_password_once_and_create_token_prints_only_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let r = start(&data);
    let (status, body) = get(&r.addr, "/healthz", None);
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"status":"ok","database":"sqlite"}"#)
    );

    let out = Command::new(BIN)
        .args([
            "admin",
            "create-token",
            "--role",
            "operator",
            "--name",
            "ci",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = stdout.strip_suffix('\n').unwrap();
    assert!(
        token.starts_with("pst_") && token.len() == 47 && !token.contains('\n'),
        "{stdout:?}"
    );
    let (status, body) = get(&r.addr, "/api/routers", Some(token));
    assert_eq!((status, body.as_str()), (200, "[]"));
    let (status, _) = get(&r.addr, "/api/routers", Some("pst_wrong"));
    assert_eq!(status, 401);

    let printed = stop(r);
    let password_lines: Vec<_> = printed.iter().filter(|l| l.contains("password")).collect();
    assert_eq!(password_lines.len(), 1, "{printed:?}");
    let password = password_lines[0].rsplit(' ').next().unwrap();
    assert!(password.len() >= 16, "{password}");
    let key = std::fs::metadata(data.join("secret.key")).unwrap();
    assert_eq!(key.len(), 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(key.permissions().mode() & 0o777, 0o600);
    }

    // A second start on the same data directory makes no new admin and prints nothing.
    let r = start(&data);
    let printed = stop(r);
    assert!(printed.is_empty(), "{printed:?}");

    // Bad input to the admin command is an error on stderr, nothing on stdout.
    let out = Command::new(BIN)
        .args(["admin", "create-token", "--role", "root", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
}
