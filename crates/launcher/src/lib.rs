//! The `winbox://` protocol handler, `postern-launcher`: turns a link from Postern's
//! portal or API into a running, logged-in WinBox. The link carries no password: it
//! names the entry point, the user, a one-time ticket and the Postern server; the
//! launcher checks every part, redeems the ticket at the server for the password, and
//! starts WinBox with it. It depends on nothing of Postern's.
//!
//! # Layout
//!
//! - [`link`]: strict parsing of `winbox://HOST:PORT?user=…&ticket=…&server=…`.
//! - [`redeem`]: the ticket's one HTTPS request (rustls with ring), a minimal HTTP/1.1
//!   exchange.
//! - [`winbox`]: finding WinBox 4 or 3 (under Wine) and its argument vector.
//! - [`handler`]: `install` / `uninstall` as the current user's `winbox://` handler; the
//!   generated texts (desktop entry, registry entries, Info.plist) and the small
//!   per-platform parts behind `cfg`.
//!
//! **Architecture Invariant:** nothing is started and nothing is sent before the whole
//! link has passed [`link::parse`]; WinBox is started with an argument vector, never
//! through a shell.

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod handler;
pub mod link;
pub mod redeem;
pub mod winbox;

use std::ffi::OsString;
use std::path::PathBuf;

/// Everything that can stop a launch, each one plain line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("refused link: {0}")]
    Link(#[from] link::LinkError),
    #[error(transparent)]
    Redeem(#[from] redeem::RedeemError),
    #[error(transparent)]
    Launch(#[from] winbox::LaunchError),
    #[error(transparent)]
    Install(#[from] handler::InstallError),
}

/// How `open` runs.
#[derive(Debug, Clone, Default)]
pub struct OpenOptions {
    /// WinBox to start (`--winbox`, else `POSTERN_WINBOX`); `None` looks in the usual
    /// places.
    pub winbox: Option<PathBuf>,
    /// Accept a plain-HTTP server that is not on this machine.
    pub lab: bool,
    pub trust: redeem::Trust,
}

/// What was started.
#[derive(Debug)]
pub struct Started {
    pub program: PathBuf,
    pub pid: u32,
    /// `HOST:PORT` and the user WinBox was given (not the password).
    pub connect_to: String,
    pub user: String,
}

/// Opens `text`: checks the link, finds WinBox, redeems the ticket, checks the answer
/// against the link, and starts WinBox.
pub fn open(text: &str, options: &OpenOptions) -> Result<Started, Error> {
    let link = link::parse(text, link::Policy { lab: options.lab })?;
    let var = |k: &str| std::env::var_os(k);
    let os = winbox::Os::current();
    // WinBox is found first, so a missing one does not spend the ticket.
    let program = winbox::find(options.winbox.clone(), os, &var)?;
    let wine = winbox::find_wine(&var);
    let login = redeem::redeem(&link.server, &link.ticket, &options.trust)?;
    if !link.host.matches(&login.host) {
        return Err(redeem::RedeemError::Mismatch("another host").into());
    }
    if login.port != link.port {
        return Err(redeem::RedeemError::Mismatch("another port").into());
    }
    if login.user != link.user {
        return Err(redeem::RedeemError::Mismatch("another user").into());
    }
    let connect_to = link.connect_to();
    let args = winbox::arguments(&connect_to, &link.user, &login.password)?;
    let (program, args): (PathBuf, Vec<OsString>) =
        winbox::command_line(&program, os, wine.as_deref(), args)?;
    let pid = winbox::start(&program, &args)?;
    Ok(Started {
        program,
        pid,
        connect_to,
        user: link.user,
    })
}

#[cfg(test)]
mod tidy {
    /// Every module says its role first; the crate root lists its layout.
    #[test]
    fn every_module_opens_with_a_doc_comment() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("//!"),
                "{} lacks a //! header",
                path.display()
            );
        }
        assert!(
            std::fs::read_to_string(src.join("lib.rs"))
                .unwrap()
                .contains("# Layout")
        );
    }
}
