//! What the `postern-cli` benchmarks share: a real `postern server` child process (SQLite
//! in a directory of the caller's, lab mode, its JSON log read from a pipe) with an
//! admin token, calls to its API, and the machine facts a figure is printed with.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The `postern` binary: the one cargo built, or `POSTERN_BENCH_BIN` (a copy, safe from
/// other builds sharing the target directory).
pub fn bin() -> String {
    std::env::var("POSTERN_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_postern").into())
}

/// A child process killed and reaped when dropped.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running `postern server` and an admin token for its API.
pub struct Server {
    child: Reaped,
    /// Its API's address (`host:port`).
    pub api: String,
    pub token: String,
    client: reqwest::Client,
}

impl Server {
    /// Starts `postern server` on an ephemeral port with its data in `data` and
    /// `POSTERN_LOG=log`; returns once it listens and an admin token is made.
    #[allow(dead_code)] // Not every benchmark starts it without a configuration.
    pub fn start(data: &std::path::Path, log: &str) -> Self {
        Self::start_with(data, log, None)
    }

    /// [`start`](Self::start) with a configuration file (passed to the admin command
    /// that makes the token too, so both see the same regions).
    pub fn start_with(data: &std::path::Path, log: &str, config: Option<&std::path::Path>) -> Self {
        let config_args: Vec<std::ffi::OsString> = config
            .map(|c| vec!["--config".into(), c.as_os_str().to_owned()])
            .unwrap_or_default();
        let mut child = Command::new(bin())
            .args([
                "server",
                "--listen",
                "127.0.0.1:0",
                "--log-format",
                "json",
                "--lab-mode",
                "--data-dir",
            ])
            .arg(data)
            .args(&config_args)
            .env_remove("POSTERN_LISTEN")
            .env_remove("POSTERN_DATA_DIR")
            .env_remove("POSTERN_DATABASE_URL")
            .env("POSTERN_LOG", log)
            // The benchmark's one client stands for many operators: 100 requests at once
            // from one address, over the per-address cap a real client meets.
            .env("POSTERN_MAX_CONNECTIONS_PER_ADDRESS", "1024")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads (and drops) the whole log, as a log collector would.
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["fields"]["message"] == "postern server listening"
                    && let Some(a) = v["fields"]["listen"].as_str()
                {
                    let _ = tx.send(a.to_owned());
                }
            }
        });
        let child = Reaped(child);
        let api = rx.recv_timeout(Duration::from_secs(30)).expect("listening");
        let out = Command::new(bin())
            .args([
                "admin",
                "create-token",
                "--role",
                "admin",
                "--name",
                "bench",
            ])
            .args(&config_args)
            .arg("--data-dir")
            .arg(data)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        Server {
            child,
            api,
            token,
            client: reqwest::Client::new(),
        }
    }

    /// Its process id.
    #[allow(dead_code)] // Not every benchmark reads it.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// `method path` with `body` as JSON; the JSON answer (`null` for none), which must
    /// be a success.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let url = format!("http://{}{path}", self.api);
        let req = match method {
            "POST" => self.client.post(url),
            "DELETE" => self.client.delete(url),
            _ => self.client.get(url),
        }
        .bearer_auth(&self.token);
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(b.to_string()),
            None => req,
        };
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(status.is_success(), "{method} {path}: {status} {text}");
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        }
    }
}

/// CPU time of process `pid` so far, threads that ended included, in nanoseconds
/// (`utime + stime` of `/proc/<pid>/stat`, in ticks of 10 ms).
#[allow(dead_code)] // Not every benchmark reads it.
pub fn cpu_ns(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    // Fields 14 and 15 of the line are 11 and 12 after the name.
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    (f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) * 10_000_000
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into())
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
