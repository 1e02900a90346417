//! The WinBox launcher end to end on Linux: `postern-launcher install` writes a desktop
//! entry that `xdg-mime` reports as the `winbox://` handler (and `uninstall` takes it
//! away); the "Open in WinBox" link of a real `postern server`'s portal (a sim router,
//! lab mode) runs a stand-in WinBox (a script that records its arguments) with the
//! grant's host, port, user and the password from the redeemed ticket, which logs into
//! the router through the gateway; a second use of the link is refused; and every link
//! of the hostile table starts nothing and spends nothing (its ticket works afterwards).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

#[path = "../../launcher/tests/common/hostile.rs"]
mod hostile;

mod listening;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const BIN: &str = env!("CARGO_BIN_EXE_postern");

/// The launcher's binary, built now (it is another package of the workspace, so cargo
/// does not build it for this test by itself), in the same target directory and profile.
fn launcher_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = Path::new(BIN).parent().unwrap();
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut build = Command::new(cargo);
            build.args(["build", "--quiet", "-p", "postern-launcher"]);
            if dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            let out = build.output().unwrap();
            assert!(out.status.success(), "building the launcher: {out:?}");
            let bin = dir.join("postern-launcher");
            assert!(bin.is_file(), "{} was not built", bin.display());
            bin
        })
        .clone()
}

/// A `postern server` child, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    token: String,
    admin_password: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `postern server` (lab mode) on a fresh `data`: its address, the admin's
/// first-start password, and an admin API token.
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
            "e2e",
            "--data-dir",
        ])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    Server {
        child,
        addr,
        token,
        admin_password,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn api(s: &Server, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
    let mut req = http()
        .request(method.clone(), format!("http://{}{path}", s.addr))
        .bearer_auth(&s.token);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    assert!(status.is_success(), "{method} {path}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// A signed-in portal session: its cookie and CSRF token.
struct Portal {
    cookie: String,
    csrf: String,
}

async fn sign_in(s: &Server) -> Portal {
    let resp = http()
        .post(format!("http://{}/login", s.addr))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("username=admin&password={}", s.admin_password))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_redirection(), "{}", resp.status());
    let cookie = resp
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned())
        .next()
        .expect("a session cookie");
    let page = http()
        .get(format!("http://{}/sites", s.addr))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split(r#""x-csrf-token": ""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the page's CSRF token")
        .to_owned();
    Portal { cookie, csrf }
}

/// The Credentials dialog's "Open in WinBox" link, as a browser hands it on.
async fn portal_link(s: &Server, portal: &Portal, site: &str, grant: &str) -> String {
    let dialog = http()
        .post(format!(
            "http://{}/sites/{site}/access/{grant}/credentials",
            s.addr
        ))
        .header("cookie", &portal.cookie)
        .header("x-csrf-token", &portal.csrf)
        .header("hx-request", "true")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(dialog.contains("Open in WinBox"), "{dialog}");
    let href = dialog
        .split(r#"href="winbox://"#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("an Open in WinBox link");
    // HTML's escapes of `&`, which a browser undoes.
    format!(
        "winbox://{}",
        href.replace("&#38;", "&").replace("&amp;", "&")
    )
}

/// A stand-in WinBox: a script that writes its arguments, one a line, to `out`.
fn stand_in(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    let out = dir.join("winbox-argv");
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

/// Runs `postern-launcher open --winbox SCRIPT -- LINK` with a clean environment.
fn open(script: &Path, home: &Path, link: &str) -> Output {
    Command::new(launcher_bin())
        .args(["open", "--winbox"])
        .arg(script)
        .arg("--")
        .arg(link)
        .env_remove("POSTERN_WINBOX")
        .env_remove("POSTERN_CA_FILE")
        .env("HOME", home)
        .output()
        .unwrap()
}

/// Waits for the stand-in's record of its arguments.
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

/// Standard error is exactly one plain line, starting with the program's name.
fn one_line(output: &Output) -> String {
    let err = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.starts_with("postern-launcher: "), "{err:?}");
    err.trim_end().to_owned()
}

async fn read_line(r: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    line.trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_portal_link_starts_winbox_once_and_hostile_links_start_nothing() {
    // Built before any ticket is issued: a build on a busy machine can outlast one.
    launcher_bin();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let (script, argv) = stand_in(dir.path());
    let sim = sim::RouterHandle::start(sim::RouterOptions::new(
        "wb-1",
        "127.0.32.1".parse().unwrap(),
    ))
    .await
    .unwrap();
    let s = start(&dir.path().join("data"));
    let router = api(
        &s,
        reqwest::Method::POST,
        "/api/routers",
        Some(json!({
            "name": "wb-1",
            "tunnel_address": sim.address().to_string(),
            "api_port": sim.api_addr.port(),
            "ssh_port": sim.ssh_addr.port(),
            "winbox_port": sim.winbox_addr.port(),
            "username": "admin",
            "password": sim.admin_password,
        })),
    )
    .await;
    let (router_id, site) = (
        router["id"].as_str().unwrap().to_owned(),
        router["site_id"].as_str().unwrap().to_owned(),
    );
    let grant = api(
        &s,
        reqwest::Method::POST,
        &format!("/api/routers/{router_id}/transient-access?wait=true"),
        Some(json!({ "type": "winbox", "allow_from": "127.0.0.1", "expire_after_minutes": 30 })),
    )
    .await;
    assert_eq!(grant["status"], "active", "{grant}");
    let grant_id = grant["id"].as_str().unwrap().to_owned();
    let port = grant["port"].as_u64().unwrap();
    let user = grant["username"].as_str().unwrap().to_owned();

    // The portal's link, as the browser hands it to the handler.
    let portal = sign_in(&s).await;
    let link = portal_link(&s, &portal, &site, &grant_id).await;
    let output = open(&script, &home, &link);
    assert!(output.status.success(), "{link}: {output:?}");
    assert!(output.stderr.is_empty(), "{output:?}");
    let args = recorded(&argv);
    let password = args.get(2).cloned().unwrap_or_default();
    assert_eq!(
        args,
        [format!("127.0.0.1:{port}"), user.clone(), password.clone()]
    );
    assert!(!link.contains(&password), "the link holds no password");
    // It is the grant's password: the router takes it through the gateway.
    let conn = tokio::net::TcpStream::connect(("127.0.0.1", u16::try_from(port).unwrap()))
        .await
        .unwrap();
    let (r, mut w) = conn.into_split();
    let mut r = tokio::io::BufReader::new(r);
    assert!(read_line(&mut r).await.ends_with("wb-1"));
    w.write_all(format!("login {user} {password}\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(read_line(&mut r).await, "ok wb-1");

    // A second use of the link is refused, in one line, and starts nothing.
    std::fs::remove_file(&argv).unwrap();
    let again = open(&script, &home, &link);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    let line = one_line(&again);
    assert!(line.contains("refused the ticket"), "{line}");
    std::thread::sleep(Duration::from_millis(200));
    assert!(!argv.exists(), "a refused link started WinBox");

    // Every hostile link, made with a fresh link's real server and unspent ticket,
    // starts nothing and is refused with its reason.
    let fresh = portal_link(&s, &portal, &site, &grant_id).await;
    let part = |key: &str| {
        fresh
            .split(&format!("{key}="))
            .nth(1)
            .unwrap()
            .split('&')
            .next()
            .unwrap()
            .to_owned()
    };
    let (server, ticket) = (part("server"), part("ticket"));
    let mut links: Vec<(String, &str)> = hostile::HOSTILE_LINKS
        .iter()
        .map(|(t, why)| (hostile::fill(t, &server, &ticket), *why))
        .collect();
    links.push((hostile::overlong(&server, &ticket), "longer than 2048"));
    for (hostile_link, why) in &links {
        let output = open(&script, &home, hostile_link);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{hostile_link:?}: {output:?}"
        );
        let line = one_line(&output);
        assert!(line.contains(why), "{hostile_link:?}: {line}");
        assert!(!line.contains(&ticket), "{line}");
        assert!(output.stdout.is_empty());
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(!argv.exists(), "a hostile link started WinBox");
    // None of them reached the server: the fresh link's ticket is unspent.
    let output = open(&script, &home, &fresh);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(recorded(&argv)[2], password);

    // No WinBox to start: one line, non-zero, and the ticket is not spent for nothing.
    let unspent = portal_link(&s, &portal, &site, &grant_id).await;
    let missing = open(&dir.path().join("no-such-winbox"), &home, &unspent);
    assert_eq!(missing.status.code(), Some(1));
    assert!(one_line(&missing).contains("does not exist"));
    std::fs::remove_file(&argv).unwrap();
    assert!(open(&script, &home, &unspent).status.success());
    assert_eq!(recorded(&argv)[1], user);

    // The audit log tells who issued and redeemed tickets, and the refusal.
    let audit = api(&s, reqwest::Method::GET, "/api/audit?limit=500", None).await;
    let count = |action: &str| {
        audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["action"] == action)
            .count()
    };
    assert_eq!(count("access.winbox_ticket.issue"), 3);
    assert_eq!(count("access.winbox_ticket.redeem"), 3);
    assert_eq!(count("access.winbox_ticket.refused"), 1);
}

/// `xdg-mime`, which the install test needs (Debian's `xdg-utils`, installed by CI).
fn xdg_mime_available() -> bool {
    Command::new("sh")
        .args(["-c", "command -v xdg-mime"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A command with a temporary home and XDG directories and no desktop of its own.
fn in_home(program: &Path, home: &Path) -> Command {
    let mut c = Command::new(program);
    c.env("HOME", home)
        .env("XDG_DATA_HOME", home.join("data"))
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_DIRS", home.join("system-data"))
        .env("XDG_CONFIG_DIRS", home.join("system-config"))
        .env_remove("XDG_CURRENT_DESKTOP")
        .env_remove("DESKTOP_SESSION")
        .env_remove("KDE_FULL_SESSION")
        .env_remove("GNOME_DESKTOP_SESSION_ID");
    c
}

#[test]
fn install_makes_the_launcher_the_winbox_handler_that_xdg_mime_reports() {
    if !xdg_mime_available() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have xdg-mime (Debian's xdg-utils)"
        );
        eprintln!("\n*** SKIPPING the install test: xdg-mime is not installed ***\n");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let query = || {
        let out = in_home(Path::new("xdg-mime"), home.path())
            .args(["query", "default", "x-scheme-handler/winbox"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(query(), "", "nothing handles winbox:// in a fresh home");

    let out = in_home(&launcher_bin(), home.path())
        .arg("install")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(query(), "postern-winbox.desktop");
    let entry = std::fs::read_to_string(
        home.path()
            .join("data")
            .join("applications")
            .join("postern-winbox.desktop"),
    )
    .unwrap();
    let exec = entry.lines().find(|l| l.starts_with("Exec=")).unwrap();
    assert_eq!(
        exec,
        format!(
            "Exec=\"{}\" open -- %u",
            launcher_bin().canonicalize().unwrap().display()
        )
    );
    assert!(entry.contains("MimeType=x-scheme-handler/winbox;\n"));

    // Again: still one entry, still ours.
    assert!(
        in_home(&launcher_bin(), home.path())
            .arg("install")
            .status()
            .unwrap()
            .success()
    );
    assert_eq!(query(), "postern-winbox.desktop");

    let out = in_home(&launcher_bin(), home.path())
        .arg("uninstall")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(query(), "", "uninstall leaves no handler behind");
    assert!(
        !home
            .path()
            .join("data/applications/postern-winbox.desktop")
            .exists()
    );
}

#[test]
fn a_bad_command_line_is_one_line_and_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"][..],
        &["open"][..],
        &["open", "--winbox"][..],
        &["open", "--bogus", "winbox://x"][..],
        &["open", "winbox://a", "winbox://b"][..],
        &["install", "extra"][..],
    ] {
        let out = Command::new(launcher_bin()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    let help = Command::new(launcher_bin()).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(
        String::from_utf8(help.stdout)
            .unwrap()
            .contains("postern-launcher open")
    );
}
