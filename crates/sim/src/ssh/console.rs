//! The SSH console's command line: RouterOS CLI syntax for the commands the sim knows,
//! run through the same [`menu`](crate::menu::execute) as the API, printed as RouterOS prints
//! them (closely, not byte for byte).

use crate::menu::{self, Menu, Request};
use crate::router::{Caller, Router};
use crate::script::{self, Token, Value};
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

fn failure(msg: impl Into<String>) -> ConsoleOutput {
    ConsoleOutput {
        output: msg.into(),
        quit: false,
        failed: true,
    }
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
fn format_single(row: &[(String, String)]) -> String {
    let width = row.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    row.iter()
        .map(|(k, v)| format!("{:>w$}: {}\n", k, v, w = width + 2))
        .collect()
}

/// Numbered items with flags and comments, as `print detail` shows a table.
fn format_table(kind: TableKind, rows: &[Vec<(String, String)>]) -> String {
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

/// Runs one console line as `caller`.
pub fn run_line(router: &Router, caller: &Caller, line: &str) -> ConsoleOutput {
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
    let Some(tokens) = script::tokenize(line) else {
        return failure("syntax error (line 1 column 1)");
    };
    let words: Vec<String> = tokens
        .iter()
        .take_while(|t| matches!(t, Token::Word(_)))
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.clone()),
            _ => None,
        })
        .collect();
    if words.first().is_none_or(|w| !w.starts_with('/')) {
        let first = words.first().cloned().unwrap_or_default();
        return failure(format!("bad command name {first} (line 1 column 1)"));
    }
    // The longest run of leading words that is a menu and a verb; the rest are
    // positional arguments (item names or ids, or print flags).
    let mut split = None;
    for k in (1..=words.len()).rev() {
        let path = script::path_of(words.get(..k).unwrap_or_default());
        if let Ok((menu, verb)) = menu::parse_path(&path) {
            split = Some((k, path, menu, verb));
            break;
        }
    }
    let Some((k, path, menu, verb)) = split else {
        let path = script::path_of(&words);
        return match menu::parse_path(&path) {
            Err(t) => failure(
                t.message
                    .replace("no such command or directory", "bad command name"),
            ),
            Ok(_) => failure("syntax error"),
        };
    };
    let mut req = Request::new(&path);
    let positional: Vec<String> = words.get(k..).unwrap_or_default().to_vec();
    if verb != "print" && !positional.is_empty() {
        req = req.attr("numbers", &positional.join(","));
    }
    for t in tokens.iter().skip(words.len()) {
        match t {
            Token::Find(conds) | Token::Pair(_, Value::Find(conds)) => {
                let mut q = Request::new(&path.replace(&format!("/{verb}"), "/print"));
                for (k, v) in conds {
                    q = q.query(&format!("?{k}={v}"));
                }
                let ids = match menu::execute(router, caller, &q) {
                    Ok(out) => out
                        .rows
                        .iter()
                        .filter_map(|r| r.iter().find(|(k, _)| k == ".id").map(|(_, v)| v.clone()))
                        .collect::<Vec<_>>(),
                    Err(t) => return failure(t.message),
                };
                if ids.is_empty() {
                    return ConsoleOutput::default();
                }
                req = req.attr("numbers", &ids.join(","));
            }
            Token::Pair(k, Value::Text(v)) => {
                if verb == "print" && k == "where" {
                    continue;
                }
                req = req.attr(k, v);
            }
            Token::Word(w) => return failure(format!("expected end of command near {w}")),
        }
    }
    match menu::execute(router, caller, &req) {
        Ok(out) => {
            let output = if verb == "print" {
                match menu {
                    Menu::Table(kind) => format_table(kind, &out.rows),
                    _ => out
                        .rows
                        .first()
                        .map(|r| format_single(r))
                        .unwrap_or_default(),
                }
            } else {
                String::new()
            };
            ConsoleOutput {
                output,
                quit: false,
                failed: false,
            }
        }
        Err(t) => failure(t.message),
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

    #[test]
    fn identity_in_both_forms() {
        let r = router();
        for line in ["/system identity print", "/system/identity/print"] {
            let out = run_line(&r, &Caller::system(), line);
            assert_eq!(out.output, "  name: sim-1\n", "{line}");
        }
    }

    #[test]
    fn writes_and_permissions() {
        let r = router();
        let out = run_line(
            &r,
            &Caller::system(),
            "/user add name=x group=read password=y",
        );
        assert!(!out.failed, "{out:?}");
        let reader = Caller {
            user: "x".into(),
            policies: r.state().group_policies("read").unwrap(),
        };
        let out = run_line(&r, &reader, "/system identity set name=z");
        assert_eq!(out.output, "not enough permissions (9)");
        assert!(out.failed);
        let out = run_line(&r, &reader, "/user print");
        assert!(out.output.contains("name=x group=read"), "{}", out.output);
        let out = run_line(&r, &Caller::system(), "/user remove x");
        assert!(!out.failed, "{out:?}");
        let out = run_line(&r, &Caller::system(), "/frob print");
        assert!(out.output.starts_with("bad command name"), "{}", out.output);
    }
}
