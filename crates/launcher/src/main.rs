//! `postern-launcher`: parses its arguments and runs `open`, `install` or `uninstall`.
//! Exits 0 only when the asked thing was done (for `open`: WinBox was started), else
//! prints one plain line to standard error and exits non-zero.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: postern-launcher open [--winbox PATH] [--lab] [--ca-file PEM] [--] LINK
       postern-launcher install [--lab]
       postern-launcher uninstall

open       checks a winbox:// link from Postern, redeems its one-time ticket at the
           Postern server for the password, and starts WinBox logged in
install    makes this launcher the current user's winbox:// handler (no admin rights)
uninstall  removes that again

--winbox PATH  the WinBox program to start (also POSTERN_WINBOX); otherwise WinBox 4
               or WinBox 3 (under Wine) is looked for in the usual places
--lab          accept a plain-HTTP Postern server that is not on this machine
--ca-file PEM  trust these certificates for the server too (also POSTERN_CA_FILE)";

/// Exit status for a refused command line.
const USAGE_ERROR: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(args) {
        Ok(message) => {
            if !message.is_empty() {
                println!("{message}");
            }
            ExitCode::SUCCESS
        }
        Err((code, message)) => {
            eprintln!("postern-launcher: {message}");
            ExitCode::from(code)
        }
    }
}

fn run(args: Vec<OsString>) -> Result<String, (u8, String)> {
    let usage = |m: &str| (USAGE_ERROR, format!("{m} (see postern-launcher --help)"));
    let mut args = args.into_iter();
    let command = args.next().ok_or_else(|| usage("no command given"))?;
    let command = command.to_str().ok_or_else(|| usage("unknown command"))?;
    let mut winbox = std::env::var_os("POSTERN_WINBOX")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let mut ca_file = std::env::var_os("POSTERN_CA_FILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let mut lab = false;
    let mut link: Option<OsString> = None;
    let mut options_done = false;
    while let Some(arg) = args.next() {
        if !options_done && command == "open" {
            match arg.to_str() {
                Some("--") => {
                    options_done = true;
                    continue;
                }
                Some("--winbox") => {
                    winbox = Some(
                        args.next()
                            .ok_or_else(|| usage("--winbox needs a path"))?
                            .into(),
                    );
                    continue;
                }
                Some("--ca-file") => {
                    ca_file = Some(
                        args.next()
                            .ok_or_else(|| usage("--ca-file needs a path"))?
                            .into(),
                    );
                    continue;
                }
                Some("--lab") => {
                    lab = true;
                    continue;
                }
                Some(other) if other.starts_with('-') => {
                    return Err(usage(&format!("unknown option {:?}", clip(other))));
                }
                _ => {}
            }
        }
        if command != "open" {
            if command == "install" && arg.to_str() == Some("--lab") {
                lab = true;
                continue;
            }
            return Err(usage("unexpected argument"));
        }
        if link.is_some() {
            return Err(usage("give one link"));
        }
        link = Some(arg);
    }
    match command {
        "open" => {
            let link = link.ok_or_else(|| usage("open needs a winbox:// link"))?;
            // A link that is not text is refused like any other bad character.
            let text = link.to_str().ok_or((
                1,
                "refused link: the link contains a non-UTF-8 character".to_owned(),
            ))?;
            let options = postern_launcher::OpenOptions {
                winbox,
                lab,
                trust: postern_launcher::redeem::Trust { ca_file },
            };
            let started = postern_launcher::open(text, &options).map_err(|e| (1, e.to_string()))?;
            Ok(format!(
                "started {} for {} at {} (process {})",
                started.program.display(),
                started.user,
                started.connect_to,
                started.pid
            ))
        }
        "install" => {
            let done = postern_launcher::handler::install(lab).map_err(|e| (1, e.to_string()))?;
            Ok(format!(
                "winbox:// links now open with this launcher ({})",
                done.0.display()
            ))
        }
        "uninstall" => {
            let done = postern_launcher::handler::uninstall().map_err(|e| (1, e.to_string()))?;
            Ok(format!(
                "the winbox:// handler is removed ({})",
                done.0.display()
            ))
        }
        "--help" | "-h" | "help" => Ok(USAGE.to_owned()),
        "--version" | "-V" => Ok(format!("postern-launcher {}", env!("CARGO_PKG_VERSION"))),
        other => Err(usage(&format!("unknown command {:?}", clip(other)))),
    }
}

/// At most 40 characters of something the user typed, for a message.
fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}
