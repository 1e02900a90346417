//! `postern ssh SITE [-- COMMAND]` and `postern winbox SITE`: a transient access grant for
//! the caller's address (or `--allow-from`), progress while the router is configured
//! (`?wait=true`), then OpenSSH with the password through the askpass helper, or the
//! WinBox launcher with the grant's one-time link; `ssh` revokes the grant when ssh
//! exits unless `--keep`.
//!
//! ssh is told `HostKeyAlias=postern-ROUTER_ID` and postern's own known-hosts file (in
//! its config directory) with `StrictHostKeyChecking=accept-new`: a router's key is
//! learnt on first use and checked after, whichever gateway port the grant got.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::api::{self, Api};
use super::{At as _, Failure, On, askpass, config, set, site_router};

#[derive(clap::Args)]
pub struct SshArgs {
    /// The site (name or id).
    pub site: String,
    /// Who may connect [default: your address as the server sees it].
    #[arg(long)]
    pub allow_from: Option<String>,
    /// Minutes the access lasts [default: 60].
    #[arg(long, default_value_t = 60)]
    pub minutes: i64,
    /// A read-only login.
    #[arg(long)]
    pub read_only: bool,
    /// Leave the access in place when ssh exits (it still ends at its time).
    #[arg(long)]
    pub keep: bool,
    /// The ssh program [default: ssh on the PATH].
    #[arg(long, env = "POSTERN_SSH", default_value = "ssh")]
    pub ssh: PathBuf,
    #[command(flatten)]
    pub on: On,
    /// The command to run on the router (after `--`); none: an interactive session.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(clap::Args)]
pub struct WinboxArgs {
    /// The site (name or id).
    pub site: String,
    /// Who may connect [default: your address as the server sees it].
    #[arg(long)]
    pub allow_from: Option<String>,
    /// Minutes the access lasts (WinBox is left running: the access ends at its time,
    /// or with `postern access revoke`).
    #[arg(long, default_value_t = 60)]
    pub minutes: i64,
    /// A read-only login.
    #[arg(long)]
    pub read_only: bool,
    /// The launcher [default: postern-launcher beside this program, else on the PATH].
    #[arg(long, env = "POSTERN_LAUNCHER")]
    pub launcher: Option<PathBuf>,
    #[command(flatten)]
    pub on: On,
}

/// A live grant made for a session, revoked on drop unless kept.
struct Made<'a> {
    api: &'a Api,
    path: String,
    keep: bool,
}

impl Drop for Made<'_> {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        match self.api.delete(&self.path) {
            Ok(()) => status("access revoked"),
            Err(f) => eprintln!(
                "postern: could not revoke the access ({}): it ends at its time; \
                 `postern access revoke` ends it now",
                f.message
            ),
        }
    }
}

fn status(text: &str) {
    let mut err = std::io::stderr();
    if err.is_terminal() {
        let _ = write!(err, "\r\x1b[2K");
    }
    let _ = writeln!(err, "postern: {text}");
}

/// Makes the grant and waits for it, showing progress on a terminal; the grant's path
/// and its view once `active`.
fn make<'a>(
    api: &'a Api,
    site: &str,
    access_type: &str,
    allow_from: Option<&str>,
    minutes: i64,
    read_only: bool,
) -> Result<(Made<'a>, Value, Value), Failure> {
    let (router, found) = site_router(api, site)?;
    let mut body = json!({
        "type": access_type,
        "access": if read_only { "read" } else { "full" },
        "expire_after_minutes": minutes,
    });
    if let Some(f) = allow_from {
        set(&mut body, "allow_from", json!(f));
    }
    let name = api::plain(found.at("name").as_str().unwrap_or(site));
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let (tx, rx) = std::sync::mpsc::channel();
    let ticker = tty.then(|| {
        let name = name.clone();
        let access_type = access_type.to_owned();
        std::thread::spawn(move || {
            while rx.recv_timeout(Duration::from_millis(200)).is_err() {
                let _ = write!(
                    std::io::stderr(),
                    "\rpostern: configuring {name} for your {access_type} access… {:.1} s",
                    started.elapsed().as_secs_f64()
                );
            }
        })
    });
    let made: Result<Value, Failure> = api.post(
        &format!("/api/routers/{router}/transient-access?wait=true"),
        &body,
    );
    let _ = tx.send(());
    if let Some(t) = ticker {
        let _ = t.join();
    }
    let grant = made?;
    let id = grant.at("id").as_str().unwrap_or_default().to_owned();
    let guard = Made {
        api,
        path: format!("/api/routers/{router}/transient-access/{id}"),
        keep: false,
    };
    if grant.at("status") != "active" {
        let why = last_error(api, &router).unwrap_or_else(|| {
            format!(
                "it is still {} after {:.0} s",
                grant.at("status").as_str().unwrap_or("?"),
                started.elapsed().as_secs_f64()
            )
        });
        return Err(Failure::error(format!(
            "the router of {name} could not be configured for the access: {why}"
        )));
    }
    status(&format!(
        "{access_type} access to {name} ready in {:.1} s, from {}, for {minutes} min",
        started.elapsed().as_secs_f64(),
        api::plain(grant.at("allow_only_cidr").as_str().unwrap_or("?"))
    ));
    let creds: Value = api.get(&format!("{}/credentials", guard.path))?;
    Ok((guard, grant, creds))
}

/// The newest access job's error, for a grant that failed.
fn last_error(api: &Api, router: &str) -> Option<String> {
    let jobs: Value = api
        .get(&format!("/api/routers/{router}/jobs?limit=5"))
        .ok()?;
    jobs.as_array()?
        .iter()
        .find(|j| j.at("kind") == "access.create")
        .and_then(|j| j.at("last_error").as_str())
        .map(api::plain)
}

pub fn ssh(a: SshArgs) -> Result<u8, Failure> {
    let api = a.on.api()?;
    let (mut made, grant, creds) = make(
        &api,
        &a.site,
        "ssh",
        a.allow_from.as_deref(),
        a.minutes,
        a.read_only,
    )?;
    made.keep = a.keep;
    let text = |v: &Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    let (user, host, port) = (
        text(&creds, "username"),
        text(&creds, "entry_point"),
        creds.at("port").as_u64().unwrap_or(0),
    );
    let password = text(&creds, "password");
    let router = made.path.split('/').nth(3).unwrap_or_default().to_owned();
    let known_hosts = config::dir()?.join("known_hosts");
    if let Some(dir) = known_hosts.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let served = askpass::Served::start(password)?;
    let exe = std::env::current_exe()
        .map_err(|e| Failure::launch(format!("cannot find postern's own program: {e}")))?;
    let mut cmd = Command::new(&a.ssh);
    cmd.arg("-p")
        .arg(port.to_string())
        .args(["-o", &format!("HostKeyAlias=postern-{router}")])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .args(["-o", "StrictHostKeyChecking=accept-new"])
        .args([
            "-o",
            "PreferredAuthentications=password,keyboard-interactive",
        ])
        .args(["-o", "PubkeyAuthentication=no"])
        .args(["-o", "GSSAPIAuthentication=no"])
        .args(["-o", "NumberOfPasswordPrompts=1"])
        .args(["-o", "ControlMaster=no", "-o", "ControlPath=none"])
        .args(["-o", "LogLevel=ERROR"])
        .arg("-l")
        .arg(&user)
        .arg(&host)
        .env("SSH_ASKPASS", &exe)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env(askpass::SOCKET_VAR, &served.socket);
    if !a.command.is_empty() {
        cmd.arg("--").args(&a.command);
    }
    let _ = grant;
    // Ctrl-C goes to ssh (same terminal process group); postern waits for it to exit
    // and then revokes, rather than dying first.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::error(format!("cannot start the runtime: {e}")))?;
    let _signals = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::quit()).ok(),
        )
    });
    let status = cmd.status().map_err(|e| {
        Failure::launch(format!(
            "cannot run {} (OpenSSH's client): {e}",
            a.ssh.display()
        ))
    });
    served.close();
    let status = status?;
    drop(made);
    Ok(status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .unwrap_or(255))
}

pub fn winbox(a: WinboxArgs) -> Result<(), Failure> {
    let api = a.on.api()?;
    let launcher = match a.launcher.clone() {
        Some(p) => p,
        None => std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("postern-launcher")))
            .filter(|p| p.is_file())
            .unwrap_or_else(|| PathBuf::from("postern-launcher")),
    };
    let (mut made, grant, creds) = make(
        &api,
        &a.site,
        "winbox",
        a.allow_from.as_deref(),
        a.minutes,
        a.read_only,
    )?;
    let url = creds
        .at("winbox_url")
        .as_str()
        .ok_or_else(|| Failure::error("the server gave no WinBox link"))?;
    let out = Command::new(&launcher)
        .arg("open")
        .arg("--")
        .arg(url)
        .status();
    match out {
        Ok(s) if s.success() => {
            // WinBox runs on by itself: the access stays until its end.
            made.keep = true;
            println!(
                "WinBox started for {} (access {} ends {}; `postern access revoke {}` ends it sooner)",
                api::plain(grant.at("username").as_str().unwrap_or("?")),
                api::plain(grant.at("id").as_str().unwrap_or("?")),
                api::plain(grant.at("expires_at").as_str().unwrap_or("?")),
                api::plain(grant.at("id").as_str().unwrap_or("?")),
            );
            Ok(())
        }
        Ok(s) => Err(Failure::launch(format!(
            "the WinBox launcher {} failed ({s}); the access was revoked",
            launcher.display()
        ))),
        Err(e) => Err(Failure::launch(format!(
            "cannot run the WinBox launcher {} ({e}); install it from the portal's \
             Credentials dialog, or name it with --launcher; the access was revoked",
            launcher.display()
        ))),
    }
}
