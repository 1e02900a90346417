//! Where the client commands keep their logins: `config.toml` in the user's config
//! directory (`$XDG_CONFIG_HOME/postern`, else `~/.config/postern`; `~/Library/Application
//! Support/postern` on macOS, `%APPDATA%\postern` on Windows), one `[servers.NAME]` table
//! per server with its URL and token, and `default` naming the one used without
//! `--server`. The file holds API tokens: it is written whole to a new file made with
//! mode 0600 (in a 0700 directory) and renamed over the old one, never widened.
//!
//! `POSTERN_SERVER` (a URL) with `POSTERN_TOKEN` stands in for a login, for scripts and
//! CI, unless `--server NAME` names a stored one.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::Failure;

/// One stored login.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Server {
    pub url: String,
    pub token: String,
    /// Made by `postern login` from a username and password (so `logout` deletes it at
    /// the server); a pasted token is only forgotten.
    #[serde(default)]
    pub signed_in: bool,
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Config {
    pub default: Option<String>,
    #[serde(default)]
    pub servers: BTreeMap<String, Server>,
}

/// The directory the file lives in.
pub fn dir() -> Result<PathBuf, Failure> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(x) = env("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(x).join("postern"));
    }
    if cfg!(windows)
        && let Some(appdata) = env("APPDATA")
    {
        return Ok(PathBuf::from(appdata).join("postern"));
    }
    let home = env("HOME").ok_or_else(|| {
        Failure::error("cannot find your config directory: neither XDG_CONFIG_HOME nor HOME is set")
    })?;
    if cfg!(target_os = "macos") {
        return Ok(PathBuf::from(home).join("Library/Application Support/postern"));
    }
    Ok(PathBuf::from(home).join(".config/postern"))
}

pub fn path() -> Result<PathBuf, Failure> {
    Ok(dir()?.join("config.toml"))
}

impl Config {
    /// The file's contents, or an empty config when there is none.
    pub fn load() -> Result<Config, Failure> {
        let path = path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| {
                Failure::error(format!(
                    "{} is not a config file postern can read: {}",
                    path.display(),
                    e.message()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(Failure::error(format!(
                "cannot read {}: {e}",
                path.display()
            ))),
        }
    }

    /// Writes the file: a new 0600 file in a 0700 directory, renamed over the old one.
    pub fn save(&self) -> Result<PathBuf, Failure> {
        let dir = dir()?;
        let path = dir.join("config.toml");
        let fail = |what: &str, e: std::io::Error| {
            Failure::error(format!("cannot {what} {}: {e}", path.display()))
        };
        create_private_dir(&dir).map_err(|e| fail("make the directory of", e))?;
        let tmp = dir.join(".config.toml.new");
        let _ = std::fs::remove_file(&tmp);
        let mut file = private_file(&tmp).map_err(|e| fail("write", e))?;
        file.write_all(self.to_toml().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| fail("write", e))?;
        drop(file);
        std::fs::rename(&tmp, &path).map_err(|e| fail("write", e))?;
        Ok(path)
    }

    /// The file's text (TOML, strings escaped).
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# postern's logins (postern login / logout). Holds API tokens: keep it 0600.\n",
        );
        if let Some(d) = &self.default {
            out.push_str(&format!("default = {}\n", quote(d)));
        }
        for (name, s) in &self.servers {
            out.push_str(&format!(
                "\n[servers.{}]\nurl = {}\ntoken = {}\nsigned_in = {}\n",
                quote(name),
                quote(&s.url),
                quote(&s.token),
                s.signed_in
            ));
        }
        out
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

/// Which server a command talks to, and with what token.
#[derive(Debug, Clone)]
pub struct Target {
    /// The stored login's name, or `POSTERN_SERVER` for the environment's.
    pub name: String,
    pub url: String,
    pub token: String,
}

/// The server for `--server NAME`, else `POSTERN_SERVER` + `POSTERN_TOKEN`, else the
/// stored default (or the only stored one).
pub fn target(server: Option<&str>) -> Result<Target, Failure> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if server.is_none()
        && let Some(url) = env("POSTERN_SERVER")
    {
        let token = env("POSTERN_TOKEN").ok_or_else(|| {
            Failure::auth("POSTERN_SERVER is set but POSTERN_TOKEN is not: set both, or neither")
        })?;
        return Ok(Target {
            name: "POSTERN_SERVER".into(),
            url: normalise_url(&url)?,
            token: token.trim().to_owned(),
        });
    }
    let config = Config::load()?;
    let name = match server {
        Some(n) => n.to_owned(),
        None => match (&config.default, config.servers.len()) {
            (Some(d), _) => d.clone(),
            (None, 1) => config.servers.keys().next().cloned().unwrap_or_default(),
            (None, 0) => {
                return Err(Failure::auth(
                    "not logged in: run `postern login URL`, or set POSTERN_SERVER and POSTERN_TOKEN",
                ));
            }
            (None, _) => {
                return Err(Failure::usage(
                    "several servers are stored and none is the default: name one with --server",
                ));
            }
        },
    };
    let s = config.servers.get(&name).ok_or_else(|| {
        Failure::auth(format!(
            "no login named {name:?}: run `postern login URL --name {name}`"
        ))
    })?;
    Ok(Target {
        name,
        url: s.url.clone(),
        token: s.token.clone(),
    })
}

/// A server URL as stored: `http(s)://host[:port]` with no path, query or credentials
/// (a bare `host:port` is taken as `https://`).
pub fn normalise_url(given: &str) -> Result<String, Failure> {
    let given = given.trim();
    let with_scheme = if given.contains("://") {
        given.to_owned()
    } else {
        format!("https://{given}")
    };
    let bad = |why: &str| Failure::usage(format!("{given:?} is not a server URL: {why}"));
    let (scheme, rest) = with_scheme
        .split_once("://")
        .ok_or_else(|| bad("no scheme"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad("only http:// and https:// are taken"));
    }
    let authority = rest.trim_end_matches('/');
    if authority.is_empty() {
        return Err(bad("no host"));
    }
    if authority.contains(['/', '?', '#', '@', ' ']) || authority.chars().any(char::is_control) {
        return Err(bad(
            "give the server's address alone (scheme, host and port), with no path or user",
        ));
    }
    Ok(format!("{scheme}://{authority}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_file_round_trips_with_awkward_strings() {
        let mut c = Config {
            default: Some("lab \"one\"".into()),
            ..Default::default()
        };
        c.servers.insert(
            "lab \"one\"".into(),
            Server {
                url: "http://127.0.0.1:8080".into(),
                token: "pst_a\\b\n".into(),
                signed_in: true,
            },
        );
        let back: Config = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn urls_are_checked() {
        let ok = |s: &str, want: &str| assert_eq!(normalise_url(s).unwrap(), want, "{s}");
        ok("http://127.0.0.1:8080/", "http://127.0.0.1:8080");
        ok("postern.example.com", "https://postern.example.com");
        ok("HTTPS://[::1]:8443", "https://[::1]:8443");
        for bad in [
            "ftp://x",
            "http://",
            "http://a/b",
            "http://u@h",
            "http://h?x",
            "http://a b",
        ] {
            assert!(normalise_url(bad).is_err(), "{bad}");
        }
    }
}
