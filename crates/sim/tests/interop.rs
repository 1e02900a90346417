//! Interop with a RouterOS API client written by others: the Python `librouteros`
//! (pinned in `.ci/requirements.txt`) runs `interop/librouteros_flow.py` against a sim
//! router started here. The interpreter is `$POSTERN_PYTHON` (set by `.ci/run`) or the
//! workspace's `.venv/bin/python`. Without librouteros the test fails when `CI` is set
//! and is skipped loudly otherwise.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::PathBuf;
use std::process::Command;

use postern_sim::{RouterHandle, RouterOptions};

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn python_with_librouteros() -> Option<PathBuf> {
    let candidates = std::env::var_os("POSTERN_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([workspace_root().join(".venv/bin/python")]);
    for py in candidates {
        let ok = Command::new(&py)
            .args(["-c", "import librouteros"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Some(py);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librouteros_runs_the_flow_against_the_sim() {
    let Some(python) = python_with_librouteros() else {
        if std::env::var_os("CI").is_some() {
            panic!(
                "librouteros is not installed: run .ci/run (it makes the venv) or set POSTERN_PYTHON"
            );
        }
        eprintln!(
            "\n\n*** SKIPPED librouteros interop: no Python with librouteros \
             (python3 -m venv .venv && .venv/bin/pip install -r .ci/requirements.txt) ***\n\n"
        );
        return;
    };
    let mut options = RouterOptions::new("sim-interop", "127.0.0.1".parse().unwrap());
    options.admin_password = Some("Interop-admin-1".into());
    let r = RouterHandle::start(options).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("sim.pem");
    std::fs::write(&cert, &r.tls.cert_pem).unwrap();
    let script =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/interop/librouteros_flow.py");
    let mut cmd = Command::new(&python);
    cmd.arg(script)
        .arg(r.api_addr.ip().to_string())
        .arg(r.api_addr.port().to_string())
        .arg(r.api_tls_addr.port().to_string())
        .arg(&cert)
        .arg(&r.admin_password);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "librouteros flow failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("librouteros flow: OK"), "{stdout}");
    // What librouteros did is visible in the router: the users it added are gone.
    let users = r.router().state().users.items.len();
    assert_eq!(users, 1);
    r.shutdown().await;
}
