//! Waiting for a spawned `postern server --log-format json` to be ready: the address in
//! its "postern server listening" line, logged once everything is up.

#![allow(dead_code)] // each test binary uses its part

use std::io::{BufRead, BufReader};
use std::process::ChildStderr;
use std::time::Duration;

/// The API address the server logs when it is ready. Its later log lines are read, so the
/// pipe never fills, and dropped, except errors, which are copied to the test's output so
/// that a failure comes with its cause.
pub fn server_address(stderr: ChildStderr) -> String {
    server_address_kept(stderr, None)
}

/// As [`server_address`], every line also appended to `keep` (a log to read after a
/// failure).
pub fn server_address_kept(stderr: ChildStderr, keep: Option<std::path::PathBuf>) -> String {
    use std::io::Write as _;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut kept = keep.and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        });
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(f) = &mut kept {
                let _ = writeln!(f, "{line}");
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["level"] == "ERROR" {
                eprintln!("server error: {line}");
            }
            if v["fields"]["message"] == "postern server listening"
                && let Some(a) = v["fields"]["listen"].as_str()
            {
                let _ = tx.send(a.to_owned());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("the server's listening line")
}
