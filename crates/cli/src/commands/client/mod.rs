//! The client commands: `postern login`, `sites`, `routers`, `access`, `forward`, `jobs`,
//! `connections`, `ssh`, `winbox`, `completions`, `man`, talking to a Postern server's
//! API with a stored login ([`config`]) or `POSTERN_SERVER` + `POSTERN_TOKEN`.
//!
//! - [`config`]: the logins file (0600) and which server a command uses.
//! - [`api`]: HTTP, and the API's problem details as plain words and exit codes.
//! - [`askpass`]: the password handed to OpenSSH through `SSH_ASKPASS`.
//! - `session`: `postern ssh` and `postern winbox`.
//!
//! Exit codes ([`Failure`]): 0 ok, 1 error, 2 usage, 3 not logged in or token refused
//! or not allowed, 4 not found, 5 refused or conflict (an ended grant, an invalid field,
//! throttled), 6 OpenSSH or the WinBox launcher could not be started. Once ssh has run,
//! `postern ssh` exits with ssh's own status (the remote command's, or 255).

pub mod api;
pub mod askpass;
pub mod config;
mod session;

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::time::Duration;

use serde_json::{Value, json};

use api::Api;

/// What `--help` says of exit codes.
pub const EXIT_CODES: &str = "Exit codes: 0 ok; 1 error (server unreachable, server fault); \
2 usage; 3 not logged in, token refused (revoked, expired) or not allowed; 4 not found; \
5 refused (conflict, invalid field, ended grant, throttled); 6 ssh or the WinBox launcher \
could not be started. `postern ssh` exits with ssh's own status once ssh has run \
(the remote command's, or 255 for ssh's failure).";

/// A failure with the exit code for its kind.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn error(m: impl Into<String>) -> Self {
        Self {
            code: 1,
            message: m.into(),
        }
    }
    pub fn usage(m: impl Into<String>) -> Self {
        Self {
            code: 2,
            message: m.into(),
        }
    }
    pub fn auth(m: impl Into<String>) -> Self {
        Self {
            code: 3,
            message: m.into(),
        }
    }
    pub fn not_found(m: impl Into<String>) -> Self {
        Self {
            code: 4,
            message: m.into(),
        }
    }
    pub fn refused(m: impl Into<String>) -> Self {
        Self {
            code: 5,
            message: m.into(),
        }
    }
    pub fn launch(m: impl Into<String>) -> Self {
        Self {
            code: 6,
            message: m.into(),
        }
    }
}

/// `--server NAME`, on every command that talks to a server.
#[derive(clap::Args, Debug, Clone)]
pub struct On {
    /// The stored login to use (see `postern login --name`) [default: the default
    /// login, or POSTERN_SERVER + POSTERN_TOKEN].
    #[arg(long, value_name = "NAME")]
    pub server: Option<String>,
}

impl On {
    fn api(&self) -> Result<Api, Failure> {
        Api::new(config::target(self.server.as_deref())?)
    }
}

/// `--json`, on every listing.
#[derive(clap::Args, Debug, Clone, Copy)]
pub struct Out {
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Store a server and a token (asked for, or made by signing in with a username and
    /// password) in your config directory (mode 0600).
    Login(LoginArgs),
    /// Forget a stored login (a token made by signing in is deleted at the server).
    Logout(LogoutArgs),
    /// The sites and their routers' state.
    Sites(ListArgs),
    /// The routers, with their state, identity and version.
    Routers(ListArgs),
    /// Transient access (WinBox/SSH logins): ls, new, show, revoke, share.
    #[command(subcommand)]
    Access(AccessCommand),
    /// Transient port forwards: ls, new, show, revoke.
    #[command(subcommand)]
    Forward(ForwardCommand),
    /// A site's orchestration log (its router jobs and their lines).
    Jobs(JobsArgs),
    /// The connections made through a grant's entry port.
    Connections(GrantArgs),
    /// SSH to a site's router: a transient SSH access for your address, OpenSSH with
    /// the password handed over privately, and the access revoked when ssh exits.
    Ssh(session::SshArgs),
    /// Open WinBox on a site's router: a transient WinBox access and the launcher
    /// (`postern-launcher open`).
    Winbox(session::WinboxArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Print the man page (roff).
    Man,
}

#[derive(clap::Args)]
pub struct LoginArgs {
    /// The server's address, e.g. https://postern.example.com.
    pub url: String,
    /// A name for this login, for --server [default: "default"].
    #[arg(long, visible_alias = "server", default_value = "default")]
    pub name: String,
    /// Sign in as this user (asks for the password) instead of pasting a token.
    #[arg(long, short)]
    pub username: Option<String>,
    /// The user's organisation [default: "default", or the only one].
    #[arg(long)]
    pub organisation: Option<String>,
    /// Read the password (with --username) or the token from standard input.
    #[arg(long)]
    pub stdin: bool,
    /// Days the token made by signing in works (1-365).
    #[arg(long, default_value_t = 30)]
    pub days: i64,
}

#[derive(clap::Args)]
pub struct LogoutArgs {
    /// The login to forget [default: the default one].
    #[arg(long, value_name = "NAME")]
    pub server: Option<String>,
}

#[derive(clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub on: On,
    #[command(flatten)]
    pub out: Out,
}

#[derive(clap::Args)]
pub struct SiteListArgs {
    /// The site: its name or id (or its router's name or id).
    pub site: String,
    /// Ended grants too.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub on: On,
    #[command(flatten)]
    pub out: Out,
}

#[derive(clap::Args)]
pub struct GrantArgs {
    /// The grant's id.
    pub grant: String,
    /// Look only at this site (name or id) instead of every one.
    #[arg(long)]
    pub site: Option<String>,
    #[command(flatten)]
    pub on: On,
    #[command(flatten)]
    pub out: Out,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub grant: GrantArgs,
    /// Also print the login (username and password; audited at the server).
    #[arg(long)]
    pub credentials: bool,
}

#[derive(clap::Args)]
pub struct ShareArgs {
    #[command(flatten)]
    pub grant: GrantArgs,
    /// List the grant's share links (who made each, when and from where it was opened).
    #[arg(long, conflicts_with = "revoke")]
    pub list: bool,
    /// Revoke this share link (its id, from the listing) instead of making one.
    #[arg(long, value_name = "SHARE_ID")]
    pub revoke: Option<String>,
}

#[derive(clap::Args)]
pub struct AccessNewArgs {
    /// The site (name or id).
    pub site: String,
    /// winbox or ssh.
    #[arg(long = "type", default_value = "ssh", value_parser = ["ssh", "winbox"])]
    pub access_type: String,
    /// Minutes the access lasts [default: the server's].
    #[arg(long)]
    pub minutes: Option<i64>,
    /// Who may connect (an address or CIDR) [default: your address as the server sees it].
    #[arg(long)]
    pub allow_from: Option<String>,
    /// A read-only login instead of a full one.
    #[arg(long)]
    pub read_only: bool,
    /// Wait until the router is configured.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub on: On,
    #[command(flatten)]
    pub out: Out,
}

#[derive(clap::Args)]
pub struct ForwardNewArgs {
    /// The site (name or id).
    pub site: String,
    /// The device's address behind the router.
    #[arg(long)]
    pub to: String,
    /// The device's port.
    #[arg(long)]
    pub port: u16,
    /// Minutes the forward lasts [default: the server's].
    #[arg(long)]
    pub minutes: Option<i64>,
    /// Who may connect (an address or CIDR) [default: your address].
    #[arg(long)]
    pub allow_from: Option<String>,
    /// Masquerade, for devices that do not route through the router.
    #[arg(long)]
    pub masquerade: bool,
    /// Wait until the router is configured.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub on: On,
    #[command(flatten)]
    pub out: Out,
}

#[derive(clap::Subcommand)]
pub enum AccessCommand {
    /// A site's transient access grants.
    Ls(SiteListArgs),
    /// Make a transient access grant.
    New(AccessNewArgs),
    /// One grant (`--credentials`: with its login).
    Show(ShowArgs),
    /// Revoke a grant.
    Revoke(GrantArgs),
    /// A one-use link that shows the grant's login to whoever opens it first (someone
    /// without an account), until the grant ends; audited at the server. `--list` shows
    /// the grant's links, `--revoke ID` revokes one.
    Share(ShareArgs),
}

#[derive(clap::Subcommand)]
pub enum ForwardCommand {
    /// A site's port forwards.
    Ls(SiteListArgs),
    /// Make a port forward.
    New(ForwardNewArgs),
    /// One port forward.
    Show(GrantArgs),
    /// Revoke a port forward.
    Revoke(GrantArgs),
}

#[derive(clap::Args)]
pub struct JobsArgs {
    /// The site (name or id).
    pub site: String,
    /// Keep watching: print new jobs and lines as they come (Ctrl-C to stop).
    #[arg(long, short)]
    pub follow: bool,
    /// How many of the newest jobs.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    #[command(flatten)]
    pub on: On,
    #[command(flatten)]
    pub out: Out,
}

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    pub shell: clap_complete::Shell,
}

/// Runs a client command; the exit code.
pub fn run(cmd: Command, app: impl FnOnce() -> clap::Command) -> std::process::ExitCode {
    let result = match cmd {
        Command::Login(a) => login(a),
        Command::Logout(a) => logout(a),
        Command::Sites(a) => sites(a),
        Command::Routers(a) => routers(a),
        Command::Access(AccessCommand::Ls(a)) => grants_ls(a, Kind::Access),
        Command::Access(AccessCommand::New(a)) => access_new(a),
        Command::Access(AccessCommand::Show(a)) => access_show(a),
        Command::Access(AccessCommand::Revoke(a)) => revoke(a, Kind::Access),
        Command::Access(AccessCommand::Share(a)) => share(a),
        Command::Forward(ForwardCommand::Ls(a)) => grants_ls(a, Kind::Forward),
        Command::Forward(ForwardCommand::New(a)) => forward_new(a),
        Command::Forward(ForwardCommand::Show(a)) => forward_show(a),
        Command::Forward(ForwardCommand::Revoke(a)) => revoke(a, Kind::Forward),
        Command::Jobs(a) => jobs(a),
        Command::Connections(a) => connections(a),
        Command::Ssh(a) => session::ssh(a),
        Command::Winbox(a) => session::winbox(a).map(|()| 0),
        Command::Completions(a) => {
            let mut app = app();
            clap_complete::generate(a.shell, &mut app, "postern", &mut std::io::stdout());
            Ok(0)
        }
        Command::Man => clap_mangen::Man::new(app())
            .render(&mut std::io::stdout())
            .map(|()| 0)
            .map_err(|e| Failure::error(format!("cannot write the man page: {e}"))),
    };
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(f) => {
            eprintln!("postern: {}", f.message);
            std::process::ExitCode::from(f.code)
        }
    }
}

type Done = Result<u8, Failure>;

/// Reading a JSON answer's fields without indexing (which may panic on a write).
pub trait At {
    /// The field `key`, or `null` when absent or when this is no object.
    fn at(&self, key: &str) -> &Value;
}

impl At for Value {
    fn at(&self, key: &str) -> &Value {
        static NULL: Value = Value::Null;
        self.get(key).unwrap_or(&NULL)
    }
}

/// Sets a field of a JSON object (nothing for any other value).
pub fn set(object: &mut Value, key: &str, value: Value) {
    if let Some(map) = object.as_object_mut() {
        map.insert(key.to_owned(), value);
    }
}

fn print_json(v: &Value) -> Done {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    println!("{text}");
    Ok(0)
}

/// Columns, padded to their widest cell.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<String>, out: &mut std::io::StdoutLock| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(header.iter().map(|h| (*h).to_owned()).collect(), &mut out);
    for row in rows {
        line(row, &mut out);
    }
}

/// A JSON field as text ("-" when absent).
fn s(v: &Value, key: &str) -> String {
    match v.at(key) {
        Value::String(t) => api::plain(t),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

// ------------------------------------------------------------------ login and logout

fn read_secret(prompt: &str, from_stdin: bool) -> Result<String, Failure> {
    let secret = if from_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| Failure::error(format!("cannot read standard input: {e}")))?;
        line
    } else {
        rpassword::prompt_password(prompt)
            .map_err(|e| Failure::error(format!("cannot read from the terminal: {e}")))?
    };
    Ok(secret.trim_end_matches(['\r', '\n']).to_owned())
}

fn login(a: LoginArgs) -> Done {
    let url = config::normalise_url(&a.url)?;
    if a.name.is_empty() || a.name.chars().any(char::is_control) {
        return Err(Failure::usage("--name must be a plain, non-empty name"));
    }
    let (token, signed_in) = match &a.username {
        Some(user) => {
            let password = read_secret(&format!("Password for {user} at {url}: "), a.stdin)?;
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "cli".into());
            let body = json!({
                "username": user,
                "password": password,
                "organisation": a.organisation,
                "token_name": api::plain(&format!("postern login ({host})")).chars().take(64).collect::<String>(),
                "expires_in_days": a.days,
            });
            let target = config::Target {
                name: a.name.clone(),
                url: url.clone(),
                token: String::new(),
            };
            let answer = api::send(&url, None, "POST", "/api/login", Some(&body))?;
            if answer.status == 401 {
                return Err(Failure::auth(
                    "the server refused the sign-in: wrong username or password (or organisation)",
                ));
            }
            let made: Value = api::decode(api::check(answer, &target)?, &target)?;
            let token = made
                .at("token")
                .as_str()
                .ok_or_else(|| Failure::error("the server's answer holds no token"))?;
            (token.to_owned(), true)
        }
        None => {
            let token = read_secret(
                &format!("API token for {url} (from `postern admin create-token` or the portal): "),
                a.stdin,
            )?;
            if token.trim().is_empty() {
                return Err(Failure::usage(
                    "no token given (or sign in with --username)",
                ));
            }
            (token.trim().to_owned(), false)
        }
    };
    let target = config::Target {
        name: a.name.clone(),
        url: url.clone(),
        token: token.clone(),
    };
    let me: Value = Api::new(target)?.get("/api/me")?;
    let mut cfg = config::Config::load()?;
    cfg.servers.insert(
        a.name.clone(),
        config::Server {
            url: url.clone(),
            token,
            signed_in,
        },
    );
    cfg.default = Some(a.name.clone());
    let path = cfg.save()?;
    println!(
        "Logged in to {url} as {} ({}, organisation {}); saved as {:?} in {}",
        s(&me, "actor"),
        s(&me, "role"),
        s(&me, "organisation"),
        a.name,
        path.display()
    );
    Ok(0)
}

fn logout(a: LogoutArgs) -> Done {
    let mut cfg = config::Config::load()?;
    let name = match a.server.or_else(|| cfg.default.clone()) {
        Some(n) => n,
        None if cfg.servers.len() == 1 => cfg.servers.keys().next().cloned().unwrap_or_default(),
        None => return Err(Failure::usage("name the login to forget with --server")),
    };
    let Some(server) = cfg.servers.remove(&name) else {
        return Err(Failure::not_found(format!("no login named {name:?}")));
    };
    if server.signed_in {
        let target = config::Target {
            name: name.clone(),
            url: server.url.clone(),
            token: server.token.clone(),
        };
        match Api::new(target).and_then(|api| api.delete("/api/login")) {
            Ok(()) => {}
            Err(f) if f.code == 3 => {}
            Err(f) => eprintln!(
                "postern: the token could not be deleted at the server ({}); it is forgotten here",
                f.message
            ),
        }
    }
    if cfg.default.as_deref() == Some(name.as_str()) {
        cfg.default = None;
    }
    cfg.save()?;
    println!("Logged out of {} ({name:?})", server.url);
    Ok(0)
}

// ------------------------------------------------------------------ sites and routers

/// The site a name or id means (a site's or its router's).
fn find_site(api: &Api, site: &str) -> Result<Value, Failure> {
    let sites: Vec<Value> = api.get("/api/sites")?;
    let matches = |v: &Value, key: &str| v[key].as_str().is_some_and(|t| t == site);
    let found: Vec<&Value> = sites
        .iter()
        .filter(|x| {
            matches(x, "id")
                || matches(x, "name")
                || matches(x.at("router"), "id")
                || matches(x.at("router"), "name")
        })
        .collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Failure::not_found(format!(
            "no site {site:?} (see `postern sites`)"
        ))),
        _ => Err(Failure::usage(format!(
            "{site:?} names several sites: give its id"
        ))),
    }
}

/// The router id of a site.
fn site_router(api: &Api, site: &str) -> Result<(String, Value), Failure> {
    let found = find_site(api, site)?;
    let id = found
        .at("router")
        .at("id")
        .as_str()
        .ok_or_else(|| Failure::not_found(format!("the site {site:?} has no router")))?
        .to_owned();
    Ok((id, found))
}

fn sites(a: ListArgs) -> Done {
    let api = a.on.api()?;
    let sites: Value = api.get("/api/sites")?;
    if a.out.json {
        return print_json(&sites);
    }
    let rows = sites
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| {
            let r = &x.at("router");
            vec![
                s(x, "name"),
                s(r, "status"),
                s(r, "identity"),
                s(r, "routeros_version"),
                s(r, "region"),
                s(r, "last_seen_at"),
            ]
        })
        .collect();
    table(
        &[
            "SITE",
            "STATE",
            "IDENTITY",
            "VERSION",
            "REGION",
            "LAST SEEN",
        ],
        rows,
    );
    Ok(0)
}

fn routers(a: ListArgs) -> Done {
    let api = a.on.api()?;
    let routers: Value = api.get("/api/routers")?;
    if a.out.json {
        return print_json(&routers);
    }
    let rows = routers
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            vec![
                s(r, "name"),
                s(r, "status"),
                s(r, "identity"),
                s(r, "routeros_version"),
                s(r, "board_name"),
                s(r, "tunnel_address"),
                s(r, "region"),
                s(r, "last_seen_at"),
                s(r, "id"),
            ]
        })
        .collect();
    table(
        &[
            "NAME",
            "STATE",
            "IDENTITY",
            "VERSION",
            "BOARD",
            "ADDRESS",
            "REGION",
            "LAST SEEN",
            "ID",
        ],
        rows,
    );
    Ok(0)
}

// ------------------------------------------------------------------ grants

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Access,
    Forward,
}

impl Kind {
    fn path(self) -> &'static str {
        match self {
            Kind::Access => "transient-access",
            Kind::Forward => "transient-forwarding",
        }
    }
    fn word(self) -> &'static str {
        match self {
            Kind::Access => "transient access",
            Kind::Forward => "port forward",
        }
    }
}

fn grant_rows(kind: Kind, grants: &Value) {
    let rows = grants
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| {
            let ends = if g.at("expired").as_bool() == Some(true) || g.at("status") != "active" {
                s(g, "expires_at")
            } else {
                format!("in {}", s(g, "time_to_expire"))
            };
            match kind {
                Kind::Access => vec![
                    s(g, "id"),
                    s(g, "type"),
                    s(g, "status"),
                    s(g, "username"),
                    format!("{}:{}", s(g, "entry_point"), s(g, "port")),
                    s(g, "allow_only_cidr"),
                    ends,
                ],
                Kind::Forward => vec![
                    s(g, "id"),
                    s(g, "status"),
                    format!("{}:{}", s(g, "entry_point"), s(g, "port")),
                    format!("{}:{}", s(g, "dst_address"), s(g, "dst_port")),
                    s(g, "allow_only_cidr"),
                    ends,
                ],
            }
        })
        .collect();
    match kind {
        Kind::Access => table(
            &["ID", "TYPE", "STATE", "USER", "ENTRY", "ALLOW FROM", "ENDS"],
            rows,
        ),
        Kind::Forward => table(&["ID", "STATE", "ENTRY", "TO", "ALLOW FROM", "ENDS"], rows),
    }
}

fn grants_ls(a: SiteListArgs, kind: Kind) -> Done {
    let api = a.on.api()?;
    let (router, _) = site_router(&api, &a.site)?;
    let all = if a.all { "?all=true" } else { "" };
    let grants: Value = api.get(&format!("/api/routers/{router}/{}{all}", kind.path()))?;
    if a.out.json {
        return print_json(&grants);
    }
    grant_rows(kind, &grants);
    Ok(0)
}

/// A grant by id: its router id and the grant, looking at one site or every one.
fn find_grant(api: &Api, a: &GrantArgs, kind: Kind) -> Result<(String, Value), Failure> {
    if a.grant.is_empty() || !a.grant.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(Failure::usage(format!("{:?} is not a grant id", a.grant)));
    }
    let routers: Vec<String> = match &a.site {
        Some(site) => vec![site_router(api, site)?.0],
        None => {
            let all: Vec<Value> = api.get("/api/routers")?;
            all.iter()
                .filter_map(|r| r.at("id").as_str().map(str::to_owned))
                .collect()
        }
    };
    for router in routers {
        if let Some(g) = api.get_if_found::<Value>(&format!(
            "/api/routers/{router}/{}/{}",
            kind.path(),
            a.grant
        ))? {
            return Ok((router, g));
        }
    }
    Err(Failure::not_found(format!(
        "no {} {}",
        kind.word(),
        a.grant
    )))
}

fn show_grant(kind: Kind, g: &Value) {
    grant_rows(kind, &Value::Array(vec![g.clone()]));
}

fn access_new(a: AccessNewArgs) -> Done {
    let api = a.on.api()?;
    let (router, _) = site_router(&api, &a.site)?;
    let mut body = json!({
        "type": a.access_type,
        "access": if a.read_only { "read" } else { "full" },
    });
    if let Some(m) = a.minutes {
        set(&mut body, "expire_after_minutes", json!(m));
    }
    if let Some(f) = &a.allow_from {
        set(&mut body, "allow_from", json!(f));
    }
    let wait = if a.wait { "?wait=true" } else { "" };
    let g: Value = api.post(
        &format!("/api/routers/{router}/transient-access{wait}"),
        &body,
    )?;
    if a.out.json {
        return print_json(&g);
    }
    show_grant(Kind::Access, &g);
    Ok(0)
}

fn forward_new(a: ForwardNewArgs) -> Done {
    let api = a.on.api()?;
    let (router, _) = site_router(&api, &a.site)?;
    let mut body = json!({
        "dst_address": a.to,
        "dst_port": a.port,
        "masquerade": a.masquerade,
    });
    if let Some(m) = a.minutes {
        set(&mut body, "expire_after_minutes", json!(m));
    }
    if let Some(f) = &a.allow_from {
        set(&mut body, "allow_from", json!(f));
    }
    let wait = if a.wait { "?wait=true" } else { "" };
    let g: Value = api.post(
        &format!("/api/routers/{router}/transient-forwarding{wait}"),
        &body,
    )?;
    if a.out.json {
        return print_json(&g);
    }
    show_grant(Kind::Forward, &g);
    Ok(0)
}

fn access_show(a: ShowArgs) -> Done {
    let api = a.grant.on.api()?;
    let (router, mut g) = find_grant(&api, &a.grant, Kind::Access)?;
    let creds = if a.credentials {
        Some(api.get::<Value>(&format!(
            "/api/routers/{router}/transient-access/{}/credentials",
            a.grant.grant
        ))?)
    } else {
        None
    };
    if a.grant.out.json {
        if let Some(c) = creds {
            set(&mut g, "credentials", c);
        }
        return print_json(&g);
    }
    show_grant(Kind::Access, &g);
    if let Some(c) = creds {
        println!();
        println!("username: {}", s(&c, "username"));
        println!("password: {}", s(&c, "password"));
        println!("entry:    {}:{}", s(&c, "entry_point"), s(&c, "port"));
        if let Some(cmd) = c.at("ssh_command").as_str() {
            println!("ssh:      {}", api::plain(cmd));
        }
        if let Some(url) = c.at("winbox_url").as_str() {
            println!("winbox:   {}", api::plain(url));
        }
    }
    Ok(0)
}

fn forward_show(a: GrantArgs) -> Done {
    let api = a.on.api()?;
    let (_, g) = find_grant(&api, &a, Kind::Forward)?;
    if a.out.json {
        return print_json(&g);
    }
    show_grant(Kind::Forward, &g);
    Ok(0)
}

fn revoke(a: GrantArgs, kind: Kind) -> Done {
    let api = a.on.api()?;
    let (router, _) = find_grant(&api, &a, kind)?;
    api.delete(&format!(
        "/api/routers/{router}/{}/{}",
        kind.path(),
        a.grant
    ))?;
    if a.out.json {
        return print_json(&json!({ "revoked": a.grant }));
    }
    println!("Revoked {} {}", kind.word(), a.grant);
    Ok(0)
}

fn share(a: ShareArgs) -> Done {
    let g = &a.grant;
    let api = g.on.api()?;
    let (router, _) = find_grant(&api, g, Kind::Access)?;
    let base = format!("/api/routers/{router}/transient-access/{}/share", g.grant);
    if let Some(id) = &a.revoke {
        if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            return Err(Failure::usage(format!("{id:?} is not a share link id")));
        }
        api.delete(&format!("{base}/{id}"))?;
        if g.out.json {
            return print_json(&json!({ "revoked": id }));
        }
        println!("Revoked share link {id}");
        return Ok(0);
    }
    if a.list {
        let list: Value = api.get(&base)?;
        if g.out.json {
            return print_json(&list);
        }
        let rows = list
            .as_array()
            .into_iter()
            .flatten()
            .map(|l| {
                vec![
                    s(l, "id"),
                    s(l, "state"),
                    s(l, "created_by"),
                    s(l, "created_at"),
                    s(l, "opened_at"),
                    s(l, "opened_from"),
                ]
            })
            .collect();
        table(
            &["ID", "STATE", "MADE BY", "MADE", "OPENED", "OPENED FROM"],
            rows,
        );
        return Ok(0);
    }
    let made: Value = api.post(&base, &json!({}))?;
    if g.out.json {
        return print_json(&made);
    }
    println!("{}", s(&made, "url"));
    eprintln!(
        "postern: the link shows the login once, to whoever opens it first, until {}; \
         `postern access share {} --revoke {}` revokes it",
        s(&made, "expires_at"),
        g.grant,
        s(&made, "id")
    );
    Ok(0)
}

fn connections(a: GrantArgs) -> Done {
    let api = a.on.api()?;
    let (router, kind) = match find_grant(&api, &a, Kind::Access) {
        Ok((r, _)) => (r, Kind::Access),
        Err(f) if f.code == 4 => (find_grant(&api, &a, Kind::Forward)?.0, Kind::Forward),
        Err(f) => return Err(f),
    };
    let list: Value = api.get(&format!(
        "/api/routers/{router}/{}/{}/connections",
        kind.path(),
        a.grant
    ))?;
    if a.out.json {
        return print_json(&list);
    }
    let rows = list
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            vec![
                format!("{}:{}", s(c, "source_address"), s(c, "source_port")),
                s(c, "started_at"),
                s(c, "ended_at"),
                s(c, "bytes_from_client"),
                s(c, "bytes_to_client"),
                c.at("end_reason")
                    .as_str()
                    .map_or_else(|| "live".into(), api::plain),
            ]
        })
        .collect();
    table(
        &["FROM", "STARTED", "ENDED", "BYTES IN", "BYTES OUT", "END"],
        rows,
    );
    Ok(0)
}

// ------------------------------------------------------------------ jobs

fn print_job(job: &Value, from_seq: i64) {
    if from_seq == 0 {
        println!(
            "{}  {}  {}  attempt {}/{}  {}",
            s(job, "created_at"),
            s(job, "kind"),
            s(job, "state"),
            s(job, "attempts"),
            s(job, "max_attempts"),
            s(job, "id"),
        );
    }
    for line in job.at("lines").as_array().into_iter().flatten() {
        if line.at("seq").as_i64().unwrap_or(0) > from_seq {
            println!("    {}  {}", s(line, "at"), s(line, "message"));
        }
    }
    if from_seq == 0
        && let Some(e) = job.at("last_error").as_str()
    {
        println!("    error: {}", api::plain(e));
    }
}

fn jobs(a: JobsArgs) -> Done {
    let api = a.on.api()?;
    let (router, _) = site_router(&api, &a.site)?;
    let limit = a.limit.clamp(1, 200);
    let path = format!("/api/routers/{router}/jobs?limit={limit}");
    let list: Value = api.get(&path)?;
    if a.out.json && !a.follow {
        return print_json(&list);
    }
    let jobs: Vec<Value> = list.as_array().cloned().unwrap_or_default();
    // Oldest first, as a log reads.
    let mut seen: std::collections::HashMap<String, (i64, String)> = Default::default();
    for job in jobs.iter().rev() {
        if a.out.json {
            println!("{}", serde_json::to_string(job).unwrap_or_default());
        } else {
            print_job(job, 0);
        }
        seen.insert(s(job, "id"), (last_seq(job), s(job, "state")));
    }
    if !a.follow {
        return Ok(0);
    }
    loop {
        std::thread::sleep(Duration::from_millis(700));
        let list: Value = api.get(&path)?;
        for job in list.as_array().into_iter().flatten().rev() {
            let id = s(job, "id");
            let seq = last_seq(job);
            let state = s(job, "state");
            match seen.get(&id) {
                None => {
                    if a.out.json {
                        println!("{}", serde_json::to_string(job).unwrap_or_default());
                    } else {
                        print_job(job, 0);
                    }
                }
                Some((old_seq, old_state)) if *old_seq != seq || *old_state != state => {
                    if a.out.json {
                        println!("{}", serde_json::to_string(job).unwrap_or_default());
                    } else {
                        if *old_state != state {
                            println!("{}  {} is now {}", s(job, "kind"), id, state);
                        }
                        print_job(job, *old_seq);
                    }
                }
                Some(_) => {}
            }
            seen.insert(id, (seq, state));
        }
        let _ = std::io::stdout().flush();
    }
}

fn last_seq(job: &Value) -> i64 {
    job.at("lines")
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l.at("seq").as_i64())
        .max()
        .unwrap_or(0)
}
