//! The client commands against a real `postern server` (lab mode) and a sim router:
//! `postern login` by password stores a 0600 config; listings' `--json` parses;
//! `postern ssh SITE -- /system identity print` prints the router's identity through the
//! gateway with the system's OpenSSH (the password through the askpass helper) and
//! leaves no live grant behind; grants are made, shown and revoked; `POSTERN_SERVER` +
//! `POSTERN_TOKEN` stand in for a login; a revoked token, a wrong password, no login and
//! an unknown grant each give a plain message and their documented exit code;
//! completions and the man page come out of the clap definitions.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod listening;

use std::io::{BufRead, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_postern");

struct Server {
    child: Child,
    url: String,
    token: String,
    admin_password: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data: &Path) -> Server {
    let mut child = Command::new(BIN)
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
        .env_remove("POSTERN_LISTEN")
        .env_remove("POSTERN_DATA_DIR")
        .env_remove("POSTERN_DATABASE_URL")
        .env("POSTERN_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let admin_password = first
        .trim()
        .rsplit(' ')
        .next()
        .filter(|_| first.contains("with password"))
        .unwrap_or_else(|| panic!("no first-start password in {first:?}"))
        .to_owned();
    std::thread::spawn(move || {
        let mut rest = Vec::new();
        let _ = stdout.read_to_end(&mut rest);
    });
    let addr = listening::server_address(child.stderr.take().unwrap());
    let out = Command::new(BIN)
        .args([
            "admin",
            "create-token",
            "--role",
            "admin",
            "--name",
            "setup",
            "--data-dir",
        ])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    Server {
        child,
        url: format!("http://{addr}"),
        token: String::from_utf8(out.stdout).unwrap().trim().to_owned(),
        admin_password,
    }
}

/// The API, straight (to set up and to check what the CLI did).
fn api(s: &Server, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let mut req = client
        .request(method.parse().unwrap(), format!("{}{path}", s.url))
        .bearer_auth(&s.token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A user's machine: its own config directory and home, no login in the environment.
struct Home {
    dir: PathBuf,
}

impl Home {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("HOME", &self.dir)
            .env_remove("POSTERN_SERVER")
            .env_remove("POSTERN_TOKEN")
            .env_remove("POSTERN_SSH")
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    fn run_with_stdin(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json_of(out: &Output) -> Value {
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out.stdout)))
}

/// One plain line on stderr, and the exit code.
fn failed(out: &Output, code: i32, words: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{out:?}");
    assert!(err.starts_with("postern: "), "{err}");
    assert!(err.contains(words), "expected {words:?} in {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
}

/// The launcher's binary, built now (another package of the workspace), in the same
/// target directory and profile.
fn launcher_bin() -> PathBuf {
    let dir = Path::new(BIN).parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", "postern-launcher"]);
    if dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    let out = build.output().unwrap();
    assert!(out.status.success(), "building the launcher: {out:?}");
    dir.join("postern-launcher")
}

fn openssh_available() -> bool {
    Command::new("ssh")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_cli_logs_in_lists_and_sshes_through_the_gateway_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sim = runtime
        .block_on(sim::RouterHandle::start(sim::RouterOptions::new(
            "cli-1",
            "127.0.34.1".parse().unwrap(),
        )))
        .unwrap();
    let s = start(&dir.path().join("data"));
    let (status, router) = api(
        &s,
        "POST",
        "/api/routers",
        Some(json!({
            "name": "cli-1",
            "tunnel_address": sim.address().to_string(),
            "api_port": sim.api_addr.port(),
            "ssh_port": sim.ssh_addr.port(),
            "winbox_port": sim.winbox_addr.port(),
            "username": "admin",
            "password": sim.admin_password,
        })),
    );
    assert_eq!(status, 201, "{router}");
    let router_id = router["id"].as_str().unwrap().to_owned();
    let home = Home {
        dir: dir.path().join("home"),
    };
    std::fs::create_dir_all(&home.dir).unwrap();

    // No login yet: a plain message and exit 3.
    failed(&home.run(&["sites"]), 3, "not logged in");

    // A wrong password: refused, exit 3, nothing stored.
    let wrong = home.run_with_stdin(
        &["login", &s.url, "--username", "admin", "--stdin"],
        "not the password\n",
    );
    failed(&wrong, 3, "wrong username or password");
    let config = dir.path().join("home/config/postern/config.toml");
    assert!(!config.exists());

    // Signing in with the admin's password stores a token, in a 0600 file.
    let login = home.run_with_stdin(
        &["login", &s.url, "--username", "admin", "--stdin"],
        &format!("{}\n", s.admin_password),
    );
    assert!(login.status.success(), "{login:?}");
    assert!(text(&login.stdout).contains("Logged in to"), "{login:?}");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&config).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let dir_mode = std::fs::metadata(config.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o077, 0, "{dir_mode:o}");
    }
    let stored = std::fs::read_to_string(&config).unwrap();
    assert!(stored.contains("token = \"pst_"), "{stored}");
    assert!(
        !stored.contains(&s.admin_password),
        "the password is not stored"
    );

    // Listings: --json parses and tells the router's state; tables name it.
    let sites = json_of(&home.run(&["sites", "--json"]));
    assert_eq!(sites[0]["router"]["name"], "cli-1", "{sites}");
    let routers = json_of(&home.run(&["routers", "--json"]));
    assert_eq!(routers[0]["id"], router_id.as_str());
    assert!(routers[0]["status"].is_string());
    let table = home.run(&["routers"]);
    assert!(text(&table.stdout).starts_with("NAME"), "{table:?}");
    assert!(text(&table.stdout).contains("cli-1"));

    // ssh through the gateway: the router's identity, then no live grant is left.
    if openssh_available() {
        let out = home.run(&["ssh", "cli-1", "--", "/system", "identity", "print"]);
        assert_eq!(text(&out.stdout), "  name: cli-1\n", "{out:?}");
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let err = text(&out.stderr);
        assert!(err.contains("access revoked"), "{err}");
        // Revoked at once; the router's clean-up follows within moments.
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (_, live) = api(
                &s,
                "GET",
                &format!("/api/routers/{router_id}/transient-access"),
                None,
            );
            if live == json!([]) {
                break;
            }
            assert_eq!(live[0]["revoked_early"], true, "{live}");
            assert!(
                std::time::Instant::now() < deadline,
                "a grant was left behind: {live}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let (_, all) = api(
            &s,
            "GET",
            &format!("/api/routers/{router_id}/transient-access?all=true"),
            None,
        );
        assert_eq!(all.as_array().unwrap().len(), 1, "{all}");
        assert_eq!(all[0]["status"], "revoked", "{all}");
        assert_eq!(all[0]["type"], "ssh");
        // The remote command's failure is ssh's exit status, passed through.
        let bad = home.run(&["ssh", "cli-1", "--", "/no/such/command"]);
        assert_eq!(bad.status.code(), Some(1), "{bad:?}");
        // --keep leaves the grant live.
        let kept = home.run(&[
            "ssh", "cli-1", "--keep", "--", "/system", "identity", "print",
        ]);
        assert!(kept.status.success(), "{kept:?}");
        let (_, live) = api(
            &s,
            "GET",
            &format!("/api/routers/{router_id}/transient-access"),
            None,
        );
        assert_eq!(live.as_array().unwrap().len(), 1, "{live}");
        assert_eq!(live[0]["status"], "active", "{live}");
        let kept_id = live[0]["id"].as_str().unwrap().to_owned();
        let revoked = home.run(&["access", "revoke", &kept_id]);
        assert!(revoked.status.success(), "{revoked:?}");
    } else if std::env::var_os("CI").is_some() {
        panic!("OpenSSH's ssh is required in CI");
    } else {
        eprintln!("SKIPPED the ssh part: OpenSSH's ssh is not installed");
    }

    // postern winbox: a WinBox grant, started through the launcher (a stand-in WinBox
    // that records its arguments), which logs in with the grant's password.
    let launcher = launcher_bin();
    let record = dir.path().join("winbox-argv");
    let script = dir.path().join("WinBox");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$@\" > '{}.tmp' && mv '{0}.tmp' '{0}'\n",
            record.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let wb = home
        .cmd(&["winbox", "cli-1", "--minutes", "15"])
        .arg("--launcher")
        .arg(&launcher)
        .env("POSTERN_WINBOX", &script)
        .output()
        .unwrap();
    assert!(wb.status.success(), "{wb:?}");
    assert!(text(&wb.stdout).contains("WinBox started"), "{wb:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !record.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "WinBox was not started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let args: Vec<String> = std::fs::read_to_string(&record)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let (_, live) = api(
        &s,
        "GET",
        &format!("/api/routers/{router_id}/transient-access"),
        None,
    );
    let wb_grant = live
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["type"] == "winbox")
        .expect("the WinBox grant stays live")
        .clone();
    let (_, creds) = api(
        &s,
        "GET",
        &format!(
            "/api/routers/{router_id}/transient-access/{}/credentials",
            wb_grant["id"].as_str().unwrap()
        ),
        None,
    );
    assert_eq!(
        args,
        [
            format!("127.0.0.1:{}", wb_grant["port"]),
            creds["username"].as_str().unwrap().to_owned(),
            creds["password"].as_str().unwrap().to_owned(),
        ]
    );
    // No launcher: exit 6, and the grant made for it is revoked.
    let missing = home
        .cmd(&[
            "winbox",
            "cli-1",
            "--launcher",
            "/nonexistent/postern-launcher",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(6), "{missing:?}");
    let err = text(&missing.stderr);
    assert!(err.contains("cannot run the WinBox launcher"), "{err}");
    assert!(err.contains("access revoked"), "{err}");

    // access new / ls / show / revoke, all in JSON.
    let made = json_of(&home.run(&[
        "access",
        "new",
        "cli-1",
        "--type",
        "winbox",
        "--minutes",
        "30",
        "--wait",
        "--json",
    ]));
    assert_eq!(made["status"], "active", "{made}");
    assert_eq!(made["type"], "winbox");
    let id = made["id"].as_str().unwrap().to_owned();
    let listed = json_of(&home.run(&["access", "ls", "cli-1", "--json"]));
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == id.as_str())
    );
    let shown = json_of(&home.run(&["access", "show", &id, "--credentials", "--json"]));
    assert_eq!(shown["credentials"]["username"], made["username"]);
    assert!(
        shown["credentials"]["winbox_url"]
            .as_str()
            .unwrap()
            .starts_with("winbox://")
    );
    // A share link: printed alone on stdout; it opens the login once.
    let shared = home.run(&["access", "share", &id]);
    assert!(shared.status.success(), "{shared:?}");
    let link = text(&shared.stdout).trim().to_owned();
    assert!(
        link.starts_with(&format!("{}/shared/shr_", s.url)),
        "{link}"
    );
    let opened = reqwest::blocking::Client::new().post(&link).send().unwrap();
    assert_eq!(opened.status().as_u16(), 200);
    assert!(
        opened
            .text()
            .unwrap()
            .contains(made["username"].as_str().unwrap())
    );
    let again = reqwest::blocking::Client::new().post(&link).send().unwrap();
    assert_eq!(again.status().as_u16(), 404);
    let links = json_of(&home.run(&["access", "share", &id, "--list", "--json"]));
    assert_eq!(links[0]["state"], "opened", "{links}");
    assert_eq!(links[0]["opened_from"], "127.0.0.1");
    // A second link, revoked before use, opens nothing.
    let second = json_of(&home.run(&["access", "share", &id, "--json"]));
    let revoked = home.run(&[
        "access",
        "share",
        &id,
        "--revoke",
        second["id"].as_str().unwrap(),
    ]);
    assert!(revoked.status.success(), "{revoked:?}");
    let closed = reqwest::blocking::Client::new()
        .post(second["url"].as_str().unwrap())
        .send()
        .unwrap();
    assert_eq!(closed.status().as_u16(), 404);
    let conns = json_of(&home.run(&["connections", &id, "--json"]));
    assert!(conns.is_array());
    let revoke = home.run(&["access", "revoke", &id]);
    assert!(revoke.status.success(), "{revoke:?}");
    // Revoked now (`closing`), then cleaned off the router (`revoked`).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let after = json_of(&home.run(&["access", "show", &id, "--json"]));
        assert_eq!(after["revoked_early"], true, "{after}");
        if after["status"] == "revoked" {
            break;
        }
        assert_eq!(after["status"], "closing", "{after}");
        assert!(std::time::Instant::now() < deadline, "{after}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Its credentials are refused now: exit 5, the server's reason.
    failed(
        &home.run(&["access", "show", &id, "--credentials"]),
        5,
        "no longer work",
    );
    // Port forwards: new, ls, show, revoke.
    let fwd = json_of(&home.run(&[
        "forward",
        "new",
        "cli-1",
        "--to",
        "192.168.88.10",
        "--port",
        "443",
        "--wait",
        "--json",
    ]));
    assert_eq!(fwd["status"], "active", "{fwd}");
    assert_eq!(fwd["dst_port"], 443);
    let fwd_id = fwd["id"].as_str().unwrap().to_owned();
    let fwds = json_of(&home.run(&["forward", "ls", "cli-1", "--json"]));
    assert!(
        fwds.as_array()
            .unwrap()
            .iter()
            .any(|f| f["id"] == fwd_id.as_str())
    );
    let table = home.run(&["forward", "show", &fwd_id]);
    assert!(
        text(&table.stdout).contains("192.168.88.10:443"),
        "{table:?}"
    );
    assert!(home.run(&["forward", "revoke", &fwd_id]).status.success());
    assert_eq!(
        json_of(&home.run(&["forward", "show", &fwd_id, "--json"]))["revoked_early"],
        true
    );

    // An unknown grant and an unknown site: exit 4.
    failed(
        &home.run(&["access", "show", "00000000-0000-4000-8000-000000000000"]),
        4,
        "no transient access",
    );
    failed(&home.run(&["jobs", "no-such-site"]), 4, "no site");
    let jobs = json_of(&home.run(&["jobs", "cli-1", "--json"]));
    assert!(
        jobs.as_array()
            .unwrap()
            .iter()
            .any(|j| j["kind"] == "access.create")
    );
    // jobs --follow prints new jobs as they come.
    let mut follow = home
        .cmd(&["jobs", "cli-1", "--follow", "--limit", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let out = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // What it printed first, then a new grant's job appears.
    std::thread::sleep(Duration::from_millis(500));
    while rx.try_recv().is_ok() {}
    let (status, fresh) = api(
        &s,
        "POST",
        &format!("/api/routers/{router_id}/transient-access"),
        Some(json!({ "type": "ssh", "expire_after_minutes": 15 })),
    );
    assert_eq!(status, 201, "{fresh}");
    let fresh_id = fresh["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut seen = String::new();
    while !seen.contains(&fresh_id) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        assert!(!left.is_zero(), "--follow did not show the new job: {seen}");
        if let Ok(line) = rx.recv_timeout(left) {
            seen.push_str(&line);
            seen.push('\n');
        }
    }
    assert!(seen.contains("access.create"), "{seen}");
    let _ = follow.kill();
    let _ = follow.wait();
    let (status, _) = api(
        &s,
        "DELETE",
        &format!("/api/routers/{router_id}/transient-access/{fresh_id}"),
        None,
    );
    assert_eq!(status, 204);

    // An invalid field is the server's words, exit 5.
    failed(
        &home.run(&["access", "new", "cli-1", "--allow-from", "not-an-address"]),
        5,
        "allow_from",
    );

    // The environment stands in for a login (no config used).
    let bare = Home {
        dir: dir.path().join("ci"),
    };
    std::fs::create_dir_all(&bare.dir).unwrap();
    let env_routers = bare
        .cmd(&["routers", "--json"])
        .env("POSTERN_SERVER", &s.url)
        .env("POSTERN_TOKEN", &s.token)
        .output()
        .unwrap();
    assert_eq!(json_of(&env_routers)[0]["name"], "cli-1");
    assert!(!dir.path().join("ci/config").exists());

    // A revoked token: a clear message and exit 3.
    let (status, made) = api(
        &s,
        "POST",
        "/api/tokens",
        Some(json!({ "name": "short-lived", "role": "viewer" })),
    );
    assert_eq!(status, 201);
    let (status, _) = api(
        &s,
        "DELETE",
        &format!("/api/tokens/{}", made["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(status, 204);
    let refused = bare
        .cmd(&["sites"])
        .env("POSTERN_SERVER", &s.url)
        .env("POSTERN_TOKEN", made["token"].as_str().unwrap())
        .output()
        .unwrap();
    failed(&refused, 3, "refused the token");

    // An expired token: the same clear message and exit 3 (its end moved into the past
    // in the server's database, as time would).
    let (status, made) = api(
        &s,
        "POST",
        "/api/tokens",
        Some(json!({ "name": "expiring", "role": "viewer", "expires_in_days": 1 })),
    );
    assert_eq!(status, 201);
    let db = format!(
        "sqlite://{}",
        dir.path().join("data").join("postern.db").display()
    );
    let token_id = made["id"].as_str().unwrap().to_owned();
    runtime.block_on(async {
        use sqlx::Connection as _;
        let mut c = sqlx::SqliteConnection::connect(&db).await.unwrap();
        let done = sqlx::query("UPDATE api_tokens SET expires_at = 1 WHERE id = $1")
            .bind(&token_id)
            .execute(&mut c)
            .await
            .unwrap();
        assert_eq!(done.rows_affected(), 1);
    });
    let expired = bare
        .cmd(&["routers"])
        .env("POSTERN_SERVER", &s.url)
        .env("POSTERN_TOKEN", made["token"].as_str().unwrap())
        .output()
        .unwrap();
    failed(&expired, 3, "refused the token");
    assert!(text(&expired.stderr).contains("expired"));

    // logout deletes the signed-in token at the server: it stops working.
    let token = stored
        .lines()
        .find_map(|l| l.strip_prefix("token = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    let out = home.run(&["logout"]);
    assert!(out.status.success(), "{out:?}");
    assert!(!std::fs::read_to_string(&config).unwrap().contains(&token));
    let after_logout = bare
        .cmd(&["sites"])
        .env("POSTERN_SERVER", &s.url)
        .env("POSTERN_TOKEN", &token)
        .output()
        .unwrap();
    failed(&after_logout, 3, "refused the token");
    failed(&home.run(&["sites"]), 3, "not logged in");

    // Completions and the man page come from the clap definitions.
    let bash = home.run(&["completions", "bash"]);
    assert!(bash.status.success());
    assert!(text(&bash.stdout).contains("postern__subcmd__ssh"));
    assert!(text(&bash.stdout).contains("complete -F _postern"));
    let man = home.run(&["man"]);
    assert!(text(&man.stdout).contains(".TH postern"));
    // Usage errors are clap's exit 2; --help documents the exit codes.
    assert_eq!(home.run(&["access", "bogus"]).status.code(), Some(2));
    let help = text(&home.run(&["--help"]).stdout);
    assert!(help.contains("Exit codes: 0 ok"), "{help}");
    drop(sim);
}
