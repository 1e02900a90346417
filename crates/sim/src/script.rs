//! The scripts Postern installs in scheduler entries, run as RouterOS would run them:
//! `/user remove [find name="x"]`, `/ip firewall nat remove [find comment="…"]`,
//! `/system scheduler remove [find name="…"]`, separated by `;` or new lines. Paths may
//! use spaces or slashes. A `[find …]` takes `key="value"` conditions (and-ed, `where`
//! allowed); no match means nothing to do, as on RouterOS.
//!
//! A script is compiled before it runs, as RouterOS does: a command the router does not
//! have (`bad command name`) stops the whole script before its first line runs, so a
//! script with one unknown command removes nothing.
//!
//! `:do { … } on-error={ … }` runs its body (errors caught when `on-error` is there),
//! `:foreach v in=[/menu find …] do={ … }` runs its body once per item with `$v` its
//! `.id`, and `:log` lines are ignored. This is not a RouterOS scripting language
//! interpreter: no other variables, no `:if`, no expressions.

use crate::menu::{self, Request};
use crate::router::{Caller, Router};

/// Splits a script into commands at `;` and new lines outside quotes and brackets.
pub fn split_commands(script: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut depth = 0usize;
    for c in script.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '[' | '{' if !quoted => {
                depth += 1;
                cur.push(c);
            }
            ']' | '}' if !quoted => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            ';' | '\n' | '\r' if !quoted && depth == 0 => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_string());
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// A token of a command: a word, `key=value` (value unquoted), or a `[find …]` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    Word(String),
    Pair(String, Value),
    Find(Vec<(String, String)>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Text(String),
    Find(Vec<(String, String)>),
}

fn unquote(s: &str) -> String {
    let inner = s.strip_prefix('"').and_then(|s| s.strip_suffix('"'));
    let Some(inner) = inner else {
        return s.to_string();
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(o) => out.push(o),
                None => {}
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Splits a command line into raw tokens at spaces outside quotes and brackets.
fn raw_tokens(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut depth = 0usize;
    for c in line.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '[' if !quoted => {
                depth += 1;
                cur.push(c);
            }
            ']' if !quoted => {
                depth = depth.saturating_sub(1);
                cur.push(c);
            }
            c if c.is_whitespace() && !quoted && depth == 0 => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Parses `[find name="x" comment="y"]` (or `[find where …]`) into its conditions.
fn parse_find(block: &str) -> Option<Vec<(String, String)>> {
    let inner = block.strip_prefix('[')?.strip_suffix(']')?.trim();
    let mut toks = raw_tokens(inner).into_iter();
    if toks.next()?.as_str() != "find" {
        return None;
    }
    let mut conds = Vec::new();
    for t in toks {
        if t == "where" {
            continue;
        }
        let (k, v) = t.split_once('=')?;
        conds.push((k.to_string(), unquote(v)));
    }
    Some(conds)
}

/// Tokenises one command line.
pub fn tokenize(line: &str) -> Option<Vec<Token>> {
    let mut out = Vec::new();
    for raw in raw_tokens(line) {
        if raw.starts_with('[') {
            out.push(Token::Find(parse_find(&raw)?));
        } else if let Some((k, v)) = raw.split_once('=')
            && !raw.starts_with('"')
        {
            let v = if v.starts_with('[') {
                Value::Find(parse_find(v)?)
            } else {
                Value::Text(unquote(v))
            };
            out.push(Token::Pair(k.to_string(), v));
        } else {
            out.push(Token::Word(unquote(&raw)));
        }
    }
    Some(out)
}

/// The API path of a command's leading words: `/ip firewall nat remove` and
/// `/ip/firewall/nat/remove` both give `/ip/firewall/nat/remove`.
pub fn path_of(words: &[String]) -> String {
    let joined = words.join("/");
    let mut path = String::from("/");
    path.push_str(joined.trim_start_matches('/'));
    while path.contains("//") {
        path = path.replace("//", "/");
    }
    path
}

/// Resolves `[find …]` in `path`'s menu into comma-separated ids.
fn find_ids(
    router: &Router,
    caller: &Caller,
    path: &str,
    conds: &[(String, String)],
) -> Result<String, String> {
    let print = match path.rsplit_once('/') {
        Some((menu, _)) => format!("{menu}/print"),
        None => return Err("bad path".into()),
    };
    let mut req = Request::new(&print).attr(".proplist", ".id");
    for (k, v) in conds {
        req = req.query(&format!("?{k}={v}"));
    }
    // `find` reads, so it needs the `read` policy like a `print`.
    let out = menu::execute(router, caller, &req).map_err(|t| t.message)?;
    let ids: Vec<String> = out
        .rows
        .into_iter()
        .filter_map(|r| r.into_iter().find(|(k, _)| k == ".id").map(|(_, v)| v))
        .collect();
    Ok(ids.join(","))
}

/// Runs one command line as `caller`. `Ok(false)` when it was skipped as unknown.
pub fn run_line(router: &Router, caller: &Caller, line: &str) -> Result<bool, String> {
    let tokens = tokenize(line).ok_or_else(|| format!("cannot parse {line:?}"))?;
    // The path's words; an item's `.id` (`*1A`, what `:foreach` hands its body) after
    // them is the command's unnamed argument.
    let words: Vec<String> = tokens
        .iter()
        .take_while(|t| matches!(t, Token::Word(w) if !w.starts_with('*')))
        .filter_map(|t| match t {
            Token::Word(w) => Some(w.clone()),
            _ => None,
        })
        .collect();
    if words.first().is_none_or(|w| !w.starts_with('/')) {
        return Ok(false);
    }
    let path = path_of(&words);
    if menu::resolve(router, &path).is_err() {
        return Ok(false);
    }
    let mut req = Request::new(&path);
    for t in tokens.iter().skip(words.len()) {
        match t {
            Token::Find(conds) | Token::Pair(_, Value::Find(conds)) => {
                let ids = find_ids(router, caller, &path, conds)?;
                if ids.is_empty() {
                    // `remove [find …]` with no match does nothing, without an error.
                    return Ok(true);
                }
                req = req.attr(".id", &ids);
            }
            Token::Pair(k, Value::Text(v)) => req = req.attr(k, v),
            Token::Word(w) if w.starts_with('*') => req = req.attr(".id", w),
            Token::Word(w) => return Err(format!("unexpected word {w:?}")),
        }
    }
    menu::execute(router, caller, &req).map_err(|t| t.message)?;
    Ok(true)
}

/// Splits `:do { body } on-error={ … }` into its body and whether errors are caught.
fn do_block(line: &str) -> Option<(&str, bool)> {
    let rest = line.strip_prefix(":do")?.trim_start();
    let inner = rest.strip_prefix('{')?;
    let mut depth = 1usize;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '{' if !quoted => depth += 1,
            '}' if !quoted => {
                depth -= 1;
                if depth == 0 {
                    let body = inner.get(..i)?;
                    let after = inner.get(i + 1..)?.trim_start();
                    return Some((body, after.starts_with("on-error")));
                }
            }
            _ => {}
        }
    }
    None
}

/// `:foreach v in=[/menu find k="x"] do={ body }`: the variable, the menu's path,
/// the conditions and the body.
struct Foreach<'a> {
    var: &'a str,
    path: String,
    conds: Vec<(String, String)>,
    body: &'a str,
}

/// The block that starts `text` (`[…]` or `{…}`, nested ones and quotes inside): its
/// inside and what follows it.
fn block(text: &str, open: char, close: char) -> Option<(&str, &str)> {
    let inner = text.strip_prefix(open)?;
    let mut depth = 1usize;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == open && !quoted => depth += 1,
            c if c == close && !quoted => {
                depth -= 1;
                if depth == 0 {
                    return Some((inner.get(..i)?, inner.get(i + 1..)?));
                }
            }
            _ => {}
        }
    }
    None
}

fn foreach(line: &str) -> Option<Foreach<'_>> {
    let rest = line.strip_prefix(":foreach")?.trim_start();
    let (var, rest) = rest.split_once(char::is_whitespace)?;
    let rest = rest.trim_start().strip_prefix("in=")?;
    let (list, rest) = block(rest, '[', ']')?;
    let (body, _) = block(rest.trim_start().strip_prefix("do=")?, '{', '}')?;
    // `/user active find name="x"`: path words up to `find`, then conditions.
    let toks = raw_tokens(list.trim());
    let at = toks.iter().position(|t| t == "find")?;
    let path = path_of(toks.get(..at)?);
    let conds = parse_find(&format!("[find {}]", toks.get(at + 1..)?.join(" ")))?;
    Some(Foreach {
        var,
        path: format!("{path}/find"),
        conds,
        body,
    })
}

/// Checks every command of a script before it runs, as RouterOS compiles a script
/// first: `Err` names the first command this router does not have.
pub fn compile(router: &Router, script: &str) -> Result<(), String> {
    for line in split_commands(script) {
        if let Some((body, _)) = do_block(&line) {
            compile(router, body)?;
            continue;
        }
        if let Some(each) = foreach(&line) {
            menu::resolve(router, &each.path.replace("/find", "/print"))
                .map_err(|t| format!("bad command name ({})", t.message))?;
            compile(router, each.body)?;
            continue;
        }
        if line.starts_with(":log") || line.starts_with('#') {
            continue;
        }
        let tokens = tokenize(&line).ok_or_else(|| format!("cannot parse {line:?}"))?;
        let words: Vec<String> = tokens
            .iter()
            .take_while(
                |t| matches!(t, Token::Word(w) if !w.starts_with('*') && !w.starts_with('$')),
            )
            .filter_map(|t| match t {
                Token::Word(w) => Some(w.clone()),
                _ => None,
            })
            .collect();
        let path = path_of(&words);
        if words.first().is_none_or(|w| !w.starts_with('/'))
            || menu::resolve(router, &path).is_err()
        {
            return Err(format!("bad command name in {line:?}"));
        }
    }
    Ok(())
}

/// Runs a script; `Err` when a command failed (which stops the script, as on RouterOS).
fn run_script(router: &Router, caller: &Caller, script: &str) -> Result<(), String> {
    for line in split_commands(script) {
        if let Some((body, catch)) = do_block(&line) {
            match run_script(router, caller, body) {
                Err(e) if !catch => return Err(e),
                _ => continue,
            }
        }
        if let Some(each) = foreach(&line) {
            let ids = find_ids(router, caller, &each.path, &each.conds)?;
            for id in ids.split(',').filter(|i| !i.is_empty()) {
                let body = each.body.replace(&format!("${}", each.var), id);
                run_script(router, caller, &body)?;
            }
            continue;
        }
        if line.starts_with(":log") || line.starts_with('#') {
            continue;
        }
        match run_line(router, caller, &line) {
            Ok(true) => {}
            Ok(false) => return Err(format!("bad command name in {line:?}")),
            Err(e) => {
                tracing::warn!(command = %line, error = %e, "script command failed");
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Runs a whole script, command after command, once it compiles (a command the router
/// does not have stops it before anything runs): a failing command stops the script
/// (as RouterOS does) unless it is inside `:do { … } on-error={ … }`; `:log` lines and
/// comments are ignored.
pub fn run(router: &Router, caller: &Caller, script: &str) {
    if let Err(e) = compile(router, script) {
        tracing::warn!(error = %e, "script not run: it does not compile on this router");
        return;
    }
    let _ = run_script(router, caller, script);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn do_blocks_run_their_body_and_catch_errors_with_on_error() {
        use crate::router::RouterConfig;
        let r = Router::new(RouterConfig::new("r", "127.0.0.1".parse().unwrap(), "pw"));
        for name in ["a", "b"] {
            let add = Request::new("/user/add")
                .attr("name", name)
                .attr("group", "read");
            menu::execute(&r, &Caller::system(), &add).unwrap();
        }
        // The first block fails (no such group) but on-error catches it; the script goes
        // on and removes `b` in a second block.
        run(
            &r,
            &Caller::system(),
            ":do { /user set [find name=\"a\"] group=nosuch } on-error={ :log warning \"x\" }\n:log info \"removing\"; :do { /user remove [find name=\"b\"] }",
        );
        let names: Vec<_> = r
            .items(crate::state::TableKind::Users)
            .iter()
            .map(|u| u.get("name").unwrap().to_string())
            .collect();
        assert_eq!(names, ["admin", "a"]);
        // Without on-error the failure stops the script.
        run(
            &r,
            &Caller::system(),
            ":do { /user set [find name=\"a\"] group=nosuch }; /user remove [find name=\"a\"]",
        );
        assert!(r.state().users.by_name("a").is_some());
        // A plain failing command stops it too.
        run(
            &r,
            &Caller::system(),
            "/user set [find name=\"a\"] group=nosuch; /user remove [find name=\"a\"]",
        );
        assert!(r.state().users.by_name("a").is_some());
    }

    #[test]
    fn splits_and_tokenizes() {
        let cmds = split_commands(
            "/user remove [find name=\"a;b\"]; /ip firewall nat remove [find comment=\"x\"]\n/system scheduler remove [find name=\"s\"]",
        );
        assert_eq!(cmds.len(), 3);
        assert_eq!(cmds[0], "/user remove [find name=\"a;b\"]");
        let t = tokenize(&cmds[1]).unwrap();
        assert_eq!(
            t,
            vec![
                Token::Word("/ip".into()),
                Token::Word("firewall".into()),
                Token::Word("nat".into()),
                Token::Word("remove".into()),
                Token::Find(vec![("comment".into(), "x".into())]),
            ]
        );
        assert_eq!(
            path_of(&[
                "/ip".into(),
                "firewall".into(),
                "nat".into(),
                "remove".into()
            ]),
            "/ip/firewall/nat/remove"
        );
        assert_eq!(path_of(&["/user/remove".into()]), "/user/remove");
        let t =
            tokenize("/user remove numbers=[find where comment=\"postern:a \\\"b\\\"\"]").unwrap();
        assert_eq!(
            t[2],
            Token::Pair(
                "numbers".into(),
                Value::Find(vec![("comment".into(), "postern:a \"b\"".into())])
            )
        );
    }
}
