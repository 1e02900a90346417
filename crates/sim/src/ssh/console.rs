//! The SSH console's command line: what is typed runs through the script interpreter
//! ([`crate::script`]), so the console, `/import` and scheduler entries accept the same
//! language, and menus through the same [`menu`](crate::menu::execute) as the API;
//! `print` output and errors are shown as RouterOS shows them (closely, not byte for
//! byte). Relative commands run in the directory a path line moved to, shown in the
//! prompt.

use crate::router::{Caller, Router};
use crate::script;
use crate::state::TableKind;

/// What a console line produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConsoleOutput {
    pub output: String,
    /// The user asked to leave (`/quit`, `quit`).
    pub quit: bool,
    /// The command failed (an exec request exits with status 1).
    pub failed: bool,
}

fn quote(v: &str) -> String {
    let plain = !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.:/,*!@".contains(c));
    if plain {
        v.to_string()
    } else {
        format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

/// `key: value` lines with keys right-aligned, as `print` shows a single item.
pub(crate) fn format_single(row: &[(String, String)]) -> String {
    let width = row.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    row.iter()
        .map(|(k, v)| format!("{:>w$}: {}\n", k, v, w = width + 2))
        .collect()
}

/// Numbered items with flags and comments, as `print detail` shows a table.
pub(crate) fn format_table(kind: TableKind, rows: &[Vec<(String, String)>]) -> String {
    let mut out = String::new();
    let has_disabled = kind.schema().access("disabled").is_some();
    if has_disabled {
        out.push_str("Flags: X - disabled\n");
    }
    for (n, row) in rows.iter().enumerate() {
        let get = |k: &str| row.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let flag = if get("disabled") == Some("true") {
            "X"
        } else {
            " "
        };
        let mut line = format!("{n:>2} {flag} ");
        if let Some(c) = get("comment") {
            line.push_str(&format!(";;; {c}\n      "));
        }
        let props: Vec<String> = row
            .iter()
            .filter(|(k, _)| k != ".id" && k != "comment" && k != "disabled")
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        line.push_str(&props.join(" "));
        line.push('\n');
        out.push_str(&line);
    }
    out
}

/// Whether `text` leaves a quote or a bracket open (the console then waits for the
/// lines that close it, as RouterOS's does for a pasted multi-line script).
pub fn is_open(text: &str) -> bool {
    script::parse::is_open(text)
}

/// The prompt: `[admin@sim-1] > `, or with the current directory
/// `[admin@sim-1] /ip firewall filter> `.
pub fn prompt(user: &str, identity: &str, cwd: &[String]) -> String {
    if cwd.is_empty() {
        format!("[{user}@{identity}] > ")
    } else {
        format!("[{user}@{identity}] /{}> ", cwd.join(" "))
    }
}

/// Runs what was typed (a line, or several lines of one paste) as `caller`, from the
/// directory `cwd`, through the script interpreter: what it printed, then the error
/// that stopped it, as RouterOS's console shows them.
pub async fn run_line(
    router: &Router,
    caller: &Caller,
    line: &str,
    cwd: &mut Vec<String>,
) -> ConsoleOutput {
    let line = line.trim();
    if line.is_empty() {
        return ConsoleOutput::default();
    }
    if matches!(line, "/quit" | "quit" | "/exit" | "exit") {
        return ConsoleOutput {
            output: "interrupted".into(),
            quit: true,
            failed: false,
        };
    }
    let (mut output, result) = script::run_text(router, caller, line, cwd).await;
    let failed = match result {
        Ok(()) => false,
        Err(e) => {
            if !output.is_empty() && !output.ends_with('\n') {
                output.push('\n');
            }
            output.push_str(&e.0);
            true
        }
    };
    ConsoleOutput {
        output,
        quit: false,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::RouterConfig;

    fn router() -> Router {
        Router::new(RouterConfig::new(
            "sim-1",
            "127.0.0.1".parse().unwrap(),
            "pw",
        ))
    }

    async fn line(r: &Router, caller: &Caller, text: &str) -> ConsoleOutput {
        run_line(r, caller, text, &mut Vec::new()).await
    }

    #[tokio::test]
    async fn identity_in_both_forms() {
        let r = router();
        for l in ["/system identity print", "/system/identity/print"] {
            let out = line(&r, &Caller::system(), l).await;
            assert_eq!(out.output, "  name: sim-1\n", "{l}");
        }
    }

    #[tokio::test]
    async fn writes_and_permissions() {
        let r = router();
        let out = line(
            &r,
            &Caller::system(),
            "/user add name=x group=read password=y",
        )
        .await;
        assert!(!out.failed, "{out:?}");
        let reader = Caller {
            user: "x".into(),
            policies: r.state().group_policies("read").unwrap(),
        };
        let out = line(&r, &reader, "/system identity set name=z").await;
        assert_eq!(out.output, "not enough permissions (9)");
        assert!(out.failed);
        let out = line(&r, &reader, "/user print").await;
        assert!(out.output.contains("name=x group=read"), "{}", out.output);
        let out = line(&r, &Caller::system(), "/user remove x").await;
        assert!(!out.failed, "{out:?}");
        let out = line(&r, &Caller::system(), "/frob print").await;
        assert_eq!(out.output, "bad command name frob (line 1 column 1)");
    }

    #[tokio::test]
    async fn a_path_line_moves_the_console_and_the_prompt() {
        let r = router();
        let mut cwd = Vec::new();
        run_line(&r, &Caller::system(), "/ip firewall filter", &mut cwd).await;
        assert_eq!(
            prompt("admin", "sim-1", &cwd),
            "[admin@sim-1] /ip firewall filter> "
        );
        let out = run_line(
            &r,
            &Caller::system(),
            "add chain=input action=drop",
            &mut cwd,
        )
        .await;
        assert!(!out.failed, "{out:?}");
        assert_eq!(r.state().filter.items.len(), 1);
        assert!(is_open(":if (1 = 1) do={"));
        assert!(!is_open(":put \"{\""));
        assert!(!is_open("# a comment with a { in it\n:put x"));
    }
}
