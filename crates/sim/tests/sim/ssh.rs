//! SSH: password login with address and policy checks, the console (russh client and
//! OpenSSH), exec requests, write refusals, /user/active remove.

use std::sync::Arc;
use std::time::Duration;

use russh::ChannelMsg;
use russh::client;
use russh::keys::{HashAlg, PublicKeyOrCertificate};

use crate::common::*;

pub(crate) struct Client {
    expected_fingerprint: String,
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        // Pin the router's host key.
        Ok(match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.fingerprint(HashAlg::Sha256).to_string() == self.expected_fingerprint
            }
            _ => false,
        })
    }
}

pub(crate) async fn ssh_connect(
    r: &postern_sim::RouterHandle,
    user: &str,
    password: &str,
) -> Result<client::Handle<Client>, String> {
    let config = Arc::new(client::Config::default());
    let handler = Client {
        expected_fingerprint: r.ssh_fingerprint.clone(),
    };
    let mut h = client::connect(config, r.ssh_addr, handler)
        .await
        .map_err(|e| e.to_string())?;
    let auth = h
        .authenticate_password(user, password)
        .await
        .map_err(|e| e.to_string())?;
    if !auth.success() {
        return Err("denied".into());
    }
    Ok(h)
}

/// Runs `command` as an exec request; returns (output, exit status).
async fn exec(h: &client::Handle<Client>, command: &str) -> (String, Option<u32>) {
    let mut ch = h.channel_open_session().await.unwrap();
    ch.exec(true, command).await.unwrap();
    let mut out = Vec::new();
    let mut status = None;
    tokio::time::timeout(TIMEOUT, async {
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    (String::from_utf8(out).unwrap(), status)
}

#[tokio::test]
async fn exec_requests_in_both_path_forms() {
    let r = router().await;
    let h = ssh_connect(&r, "admin", "pw").await.unwrap();
    assert_eq!(
        exec(&h, "/system identity print").await,
        ("  name: sim-1\n".into(), Some(0))
    );
    assert_eq!(
        exec(&h, "/system/identity/print").await,
        ("  name: sim-1\n".into(), Some(0))
    );
    let (out, _) = exec(&h, "/system resource print").await;
    assert!(out.contains("version: 7.18.2 (stable)"), "{out}");
    let (out, _) = exec(&h, "/user print").await;
    assert!(out.contains("name=admin group=full"), "{out}");
    let (out, status) = exec(&h, "/ip firewall nat add chain=dstnat action=dst-nat protocol=tcp dst-port=4000 to-addresses=127.0.0.1 to-ports=9 disabled=yes comment=\"from ssh\"").await;
    assert_eq!((out.as_str(), status), ("", Some(0)));
    let (out, _) = exec(&h, "/ip firewall nat print").await;
    assert!(out.contains(";;; from ssh"), "{out}");
    assert!(out.contains("chain=dstnat action=dst-nat"), "{out}");
    let (out, status) = exec(&h, "/frobnicate").await;
    assert_eq!(status, Some(1));
    assert!(out.starts_with("bad command name"), "{out}");
    r.shutdown().await;
}

#[tokio::test]
async fn the_same_users_through_api_and_ssh_and_writes_refused_for_readers() {
    let r = router().await;
    let mut api = Raw::admin(r.api_addr).await;
    add_user(&mut api, "viewer", "read", "v", &[]).await;
    let h = ssh_connect(&r, "viewer", "v").await.unwrap();
    let (out, _) = exec(&h, "/user print").await;
    assert!(out.contains("name=viewer group=read"), "{out}");
    let (out, status) = exec(&h, "/user add name=x group=read password=y").await;
    assert_eq!(
        (out.trim(), status),
        ("not enough permissions (9)", Some(1))
    );
    let (out, _) = exec(&h, "/system identity set name=z").await;
    assert_eq!(out.trim(), "not enough permissions (9)");
    assert_eq!(
        names(&api.rows(&["/user/print"]).await),
        ["admin", "viewer"]
    );
    // A write through SSH by admin shows up in the API.
    let admin = ssh_connect(&r, "admin", "pw").await.unwrap();
    assert_eq!(
        exec(&admin, "/user add name=made-by-ssh group=read password=y")
            .await
            .1,
        Some(0)
    );
    assert_eq!(
        names(&api.rows(&["/user/print", "?name=made-by-ssh"]).await),
        ["made-by-ssh"]
    );
    r.shutdown().await;
}

#[tokio::test]
async fn interactive_console_with_a_pty() {
    let r = router().await;
    let h = ssh_connect(&r, "admin", "pw").await.unwrap();
    let mut ch = h.channel_open_session().await.unwrap();
    ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .unwrap();
    ch.request_shell(true).await.unwrap();
    let mut screen = String::new();
    let read_until = async |ch: &mut russh::Channel<client::Msg>,
                            screen: &mut String,
                            needle: &str,
                            count: usize| {
        tokio::time::timeout(TIMEOUT, async {
            while screen.matches(needle).count() < count {
                match ch.wait().await {
                    Some(ChannelMsg::Data { data }) => {
                        screen.push_str(&String::from_utf8_lossy(&data))
                    }
                    Some(_) => {}
                    None => break,
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} in {screen:?}"));
    };
    read_until(&mut ch, &mut screen, "[admin@sim-1] > ", 1).await;
    ch.data(&b"/system identity print\r"[..]).await.unwrap();
    read_until(&mut ch, &mut screen, "[admin@sim-1] > ", 2).await;
    assert!(
        screen.contains("/system identity print\r\n  name: sim-1\r\n"),
        "{screen:?}"
    );
    ch.data(&b"/quit\r"[..]).await.unwrap();
    let closed = tokio::time::timeout(TIMEOUT, async {
        loop {
            match ch.wait().await {
                Some(ChannelMsg::Close) | None => return true,
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(closed, Ok(true));
    r.shutdown().await;
}

#[tokio::test]
async fn ssh_login_checks_password_address_policy_and_disabled() {
    let r = router().await;
    let mut api = Raw::admin(r.api_addr).await;
    api.ok(&["/user/group/add", "=name=no-ssh", "=policy=api,read,winbox"])
        .await;
    add_user(&mut api, "nossh", "no-ssh", "n", &[]).await;
    add_user(&mut api, "far", "full", "f", &["=address=10.0.0.0/8"]).await;
    add_user(&mut api, "off", "full", "o", &["=disabled=yes"]).await;
    assert!(ssh_connect(&r, "admin", "wrong").await.is_err());
    assert!(ssh_connect(&r, "nossh", "n").await.is_err());
    assert!(ssh_connect(&r, "far", "f").await.is_err());
    assert!(ssh_connect(&r, "off", "o").await.is_err());
    api.ok(&["/user/set", "=numbers=far", "=address=127.0.0.1/32"])
        .await;
    assert!(ssh_connect(&r, "far", "f").await.is_ok());
    r.shutdown().await;
}

#[tokio::test]
async fn removing_the_session_disconnects_an_ssh_session() {
    let r = router().await;
    let mut api = Raw::admin(r.api_addr).await;
    add_user(&mut api, "temp", "full", "t", &[]).await;
    let h = ssh_connect(&r, "temp", "t").await.unwrap();
    let active = api.rows(&["/user/active/print", "?via=ssh"]).await;
    assert_eq!(names(&active), ["temp"]);
    let id = get(&active[0], ".id").unwrap().to_string();
    // Removing the user leaves the session alone.
    api.ok(&["/user/remove", "=numbers=temp"]).await;
    assert_eq!(exec(&h, "/system identity print").await.1, Some(0));
    api.ok(&["/user/active/remove", &format!("=.id={id}")])
        .await;
    let gone = tokio::time::timeout(TIMEOUT, async {
        while !h.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the ssh session is still open");
    assert!(
        api.rows(&["/user/active/print", "?via=ssh"])
            .await
            .is_empty()
    );
    r.shutdown().await;
}

#[tokio::test]
async fn shutdown_disconnects_ssh_sessions() {
    let r = router().await;
    let h = ssh_connect(&r, "admin", "pw").await.unwrap();
    assert_eq!(exec(&h, "/system identity print").await.1, Some(0));
    r.shutdown().await;
    let gone = tokio::time::timeout(TIMEOUT, async {
        while !h.is_closed() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the ssh session outlived the router");
}

fn openssh_available() -> bool {
    let ok = |c: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {c}"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    ok("ssh") && ok("sshpass")
}

fn openssh(
    r: &postern_sim::RouterHandle,
    user: &str,
    password: &str,
    extra: &[&str],
) -> std::process::Command {
    let mut c = std::process::Command::new("sshpass");
    c.args([
        "-p",
        password,
        "ssh",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "PubkeyAuthentication=no",
        "-o",
        "NumberOfPasswordPrompts=1",
        "-p",
    ])
    .arg(r.ssh_addr.port().to_string())
    .args(extra)
    .arg(format!("{user}@{}", r.ssh_addr.ip()));
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssh_client_exec_interactive_and_logout() {
    if !openssh_available() {
        if std::env::var_os("CI").is_some() {
            panic!("ssh and sshpass are required in CI");
        }
        eprintln!("SKIPPED: OpenSSH ssh or sshpass not installed");
        return;
    }
    let r = router().await;
    // Exec.
    let out = tokio::task::spawn_blocking({
        let mut c = openssh(&r, "admin", "pw", &[]);
        move || c.arg("/system identity print").output().unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "  name: sim-1\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success());
    // A wrong password fails.
    let out = tokio::task::spawn_blocking({
        let mut c = openssh(&r, "admin", "nope", &[]);
        move || c.arg("/system identity print").output().unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    // Interactive, with a forced pty: a command, then /quit.
    let out = tokio::task::spawn_blocking({
        let mut c = openssh(&r, "admin", "pw", &["-tt"]);
        move || {
            use std::io::Write;
            let mut child = c
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            // ssh forwards what it reads once the shell is up; the console takes the
            // lines in order and closes the channel at `/quit`.
            let mut stdin = child.stdin.take().unwrap();
            stdin.write_all(b"/user print\r/quit\r").unwrap();
            let out = child.wait_with_output().unwrap();
            drop(stdin);
            out
        }
    })
    .await
    .unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("[admin@sim-1] > "), "{screen}");
    assert!(screen.contains("name=admin group=full"), "{screen}");
    // /user/active remove ends a live OpenSSH session.
    let mut api = Raw::admin(r.api_addr).await;
    let child = openssh(&r, "admin", "pw", &["-tt"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let router = r.router().clone();
    let ssh_sessions = move || {
        router
            .state()
            .active
            .items
            .iter()
            .filter(|i| i.get("via") == Some("ssh"))
            .count()
    };
    let s = ssh_sessions.clone();
    eventually("the OpenSSH session to log in", move || s() == 1).await;
    let id = get(
        &api.rows(&["/user/active/print", "?via=ssh"]).await[0],
        ".id",
    )
    .unwrap()
    .to_string();
    api.ok(&["/user/active/remove", &format!("=.id={id}")])
        .await;
    let status = tokio::task::spawn_blocking(move || {
        let mut child = child;
        for _ in 0..500 {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        None
    })
    .await
    .unwrap();
    assert!(
        status.is_some(),
        "ssh did not exit after /user/active remove"
    );
    assert_eq!(ssh_sessions(), 0);
    r.shutdown().await;
}
