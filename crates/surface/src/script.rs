//! Reads a RouterOS script far enough to check its commands against the database:
//! statements split at `;` and line ends (outside quotes, `[ ]` and `{ }`), absolute
//! (`/ip firewall nat remove`, `/user/remove`), global (`:do`, `:log info`) and
//! relative commands (after a line that is only a path, as RouterOS tracks it),
//! `key=value` parameters, unnamed arguments, `[ … ]` substitutions (run in the
//! command's menu, so `remove [find name="x"]` checks `find` there) and `{ … }` bodies.

use crate::{Command, Database, Finding, child, is_command};

/// Global commands that take any parameter (routeros-lsp's probes: the router
/// compiled them with made-up parameters); only their bodies are checked.
const FREE_FORM: &[&str] = &["do", "time", "retry", "onerror", "recursive-print"];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(String),
    Named(String, Box<Token>),
    Str(String),
    Subst(String),
    Block(String),
}

/// Splits `text` at `;` and line ends outside quotes and brackets.
fn statements(text: &str) -> Vec<String> {
    split(text, |c, depth| {
        depth == 0 && matches!(c, ';' | '\n' | '\r')
    })
}

fn split(text: &str, at: impl Fn(char, usize) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut escaped = false;
    let mut depth = 0usize;
    for c in text.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        if quoted {
            cur.push(c);
            match c {
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
            continue;
        }
        if at(c, depth) {
            if !cur.trim().is_empty() {
                out.push(cur.trim().to_string());
            }
            cur.clear();
            continue;
        }
        match c {
            '"' => quoted = true,
            '[' | '{' | '(' => depth += 1,
            ']' | '}' | ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn inner(text: &str, open: char, close: char) -> Option<&str> {
    text.strip_prefix(open)?.strip_suffix(close)
}

fn token(raw: &str) -> Token {
    if raw.starts_with('"') {
        return Token::Str(raw.to_string());
    }
    if let Some(body) = inner(raw, '[', ']') {
        return Token::Subst(body.trim().to_string());
    }
    if let Some(body) = inner(raw, '{', '}') {
        return Token::Block(body.to_string());
    }
    if let Some((key, value)) = raw.split_once('=')
        && !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
    {
        return Token::Named(key.to_string(), Box::new(token(value)));
    }
    Token::Word(raw.to_string())
}

fn tokens(statement: &str) -> Vec<Token> {
    split(statement, |c, depth| depth == 0 && c.is_whitespace())
        .iter()
        .map(|t| token(t))
        .collect()
}

/// The text of a literal value, when it is one (no variable, no substitution).
fn literal(value: &Token) -> Option<String> {
    match value {
        Token::Word(w) if !w.starts_with('$') && !w.starts_with('(') => Some(w.clone()),
        Token::Str(s) if !s.contains('$') => {
            let body = inner(s, '"', '"')?;
            Some(body.replace("\\\"", "\"").replace("\\\\", "\\"))
        }
        _ => None,
    }
}

struct Checker<'a> {
    db: &'a Database,
    findings: Vec<Finding>,
}

pub(crate) fn check(db: &Database, text: &str) -> Vec<Finding> {
    let mut c = Checker {
        db,
        findings: Vec::new(),
    };
    c.script(text, Some(Vec::new()));
    c.findings
}

impl<'a> Checker<'a> {
    fn report(&mut self, statement: &str, problem: impl Into<String>) {
        self.findings.push(Finding::new(statement, problem));
    }

    /// Checks a list of statements starting in menu `path` (`None`: unknown, after a
    /// mistake); returns the path after them.
    fn script(&mut self, text: &str, mut path: Option<Vec<String>>) -> Option<Vec<String>> {
        for statement in statements(text) {
            path = self.statement(&statement, path);
        }
        path
    }

    fn statement(&mut self, statement: &str, path: Option<Vec<String>>) -> Option<Vec<String>> {
        if statement.starts_with('#') {
            return path;
        }
        let toks = tokens(statement);
        let Some(Token::Word(first)) = toks.first() else {
            // A bare block or substitution: check what is inside.
            for t in &toks {
                self.nested(t, path.clone());
            }
            return path;
        };
        let (global, absolute) = (first.starts_with(':'), first.starts_with('/'));
        let mut current: Vec<String> = if global || absolute {
            Vec::new()
        } else {
            // After a mistake in a path nothing relative can be checked.
            path.clone()?
        };
        let mut node = self.node(&current);
        for (i, t) in toks.iter().enumerate() {
            let word = match t {
                Token::Word(w) => w.trim_start_matches([':', '/']),
                Token::Block(body) => {
                    // `/ip firewall { … }`: the body runs in that menu.
                    self.script(body, Some(current.clone()));
                    continue;
                }
                _ => {
                    self.report(statement, "a value where a menu or command was expected");
                    return None;
                }
            };
            for segment in word.split('/').filter(|s| !s.is_empty()) {
                if segment == ".." {
                    current.pop();
                    node = self.node(&current);
                    continue;
                }
                let Some(next) = node.and_then(|n| child(n, segment)) else {
                    self.report(
                        statement,
                        format!(
                            "RouterOS {} has no menu or command {segment} in /{}",
                            self.db.version(),
                            current.join(" ")
                        ),
                    );
                    return if global { path } else { None };
                };
                if is_command(next) {
                    let menu = node.unwrap_or(next);
                    let command = Command { node: next, menu };
                    let args = toks.get(i + 1..).unwrap_or_default();
                    self.arguments(statement, segment, command, args, &current, global);
                    return path;
                }
                current.push(segment.to_string());
                node = Some(next);
            }
        }
        // A line that is only a path makes it the current one (not after `:`).
        if global { path } else { Some(current) }
    }

    fn node(&self, path: &[String]) -> Option<&'a serde_json::Value> {
        let mut node = self.db.root();
        for name in path {
            node = child(node, name)?;
        }
        Some(node)
    }

    fn nested(&mut self, t: &Token, path: Option<Vec<String>>) {
        match t {
            Token::Subst(body) => {
                self.script(body, path);
            }
            Token::Block(body) => {
                self.script(body, path);
            }
            Token::Named(_, value) => self.nested(value, path),
            _ => {}
        }
    }

    fn arguments(
        &mut self,
        statement: &str,
        name: &str,
        command: Command<'a>,
        args: &[Token],
        menu: &[String],
        global: bool,
    ) {
        let inside = Some(menu.to_vec());
        let find = name == "find";
        let open = global && FREE_FORM.contains(&name);
        let mut provided = Vec::new();
        let mut unnamed = 0u64;
        for t in args {
            match t {
                Token::Named(key, value) => {
                    self.nested(value, inside.clone());
                    if open {
                        continue;
                    }
                    if find {
                        if let Err(e) = command.check_property(key) {
                            self.report(statement, format!("find condition {key}: {e}"));
                        }
                        continue;
                    }
                    match literal(value) {
                        Some(v) => {
                            if let Err(e) = command.check_value(key, &v) {
                                self.report(statement, e);
                            }
                        }
                        None if !command.has_arg(key) => self.report(
                            statement,
                            format!("{key} is not a parameter of this command"),
                        ),
                        None => {}
                    }
                    provided.push(key.clone());
                }
                Token::Word(w) if find || open || w == "where" => {}
                Token::Word(w) if command.has_arg(w) => provided.push(w.clone()),
                other => {
                    self.nested(other, inside.clone());
                    unnamed += 1;
                }
            }
        }
        if find || open {
            return;
        }
        if unnamed > command.unnamed() {
            self.report(
                statement,
                format!(
                    "{name} takes {} unnamed argument(s), given {unnamed}",
                    command.unnamed()
                ),
            );
            return;
        }
        let missing: Vec<&str> = command
            .required()
            .into_iter()
            .filter(|r| !provided.iter().any(|p| p == r))
            .skip(usize::try_from(unnamed).unwrap_or(usize::MAX))
            .collect();
        if !missing.is_empty() {
            self.report(statement, format!("missing {}", missing.join(", ")));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
    use crate::Database;

    fn findings(script: &str) -> Vec<String> {
        Database::routeros_7()
            .unwrap()
            .check_script(script)
            .into_iter()
            .map(|f| f.problem)
            .collect()
    }

    #[test]
    fn scripts() {
        assert_eq!(
            findings(
                ":do { /user active remove [find name=\"a\"] } on-error={ :log warning \"x\" }\n\
                 /user remove [find comment=\"postern:access:1\"]\n\
                 /ip firewall nat remove [find comment=\"c\"]; /system scheduler remove [find name=\"s\"]"
            ),
            Vec::<String>::new()
        );
        let f = findings("/user active request-logout [find name=\"a\"]");
        assert!(f[0].contains("no menu or command request-logout"), "{f:?}");
        let f = findings(":do { /user active request-logout [find name=\"a\"] } on-error={}");
        assert!(f[0].contains("request-logout"), "{f:?}");
        let f = findings("/user remove [find colour=\"a\"]");
        assert!(f[0].contains("colour"), "{f:?}");
        let f = findings("/user add name=a group=full password=x disabled=maybe");
        assert!(f[0].contains("disabled=maybe"), "{f:?}");
        let f = findings("/user add name=a group=full");
        assert!(f[0].contains("missing password"), "{f:?}");
        // A line that is only a path makes later relative lines run there.
        assert!(findings("/ip firewall nat\nremove [find comment=\"x\"]").is_empty());
        let f = findings("/ip firewall nat\nfrobnicate");
        assert!(f[0].contains("frobnicate in /ip firewall nat"), "{f:?}");
        assert!(findings("/interface/wireguard/add name=wg0 listen-port=13231").is_empty());
        assert!(findings("# a comment\n:log info \"hello\"").is_empty());
    }

    /// What an onboarding script writes (WireGuard, address, firewall, fetch, import,
    /// variables, :if) reads clean; a wrong parameter in it does not.
    #[test]
    fn an_onboarding_like_script() {
        let script = r#"/interface wireguard add name=postern listen-port=13231 comment="postern"
/interface wireguard peers add interface=postern public-key="abc=" endpoint-address=1.2.3.4 endpoint-port=51820 allowed-address=100.64.0.1/32 persistent-keepalive=25s
/ip address add address=100.64.0.2/10 interface=postern
/ip firewall filter add chain=input action=accept src-address=100.64.0.1 protocol=tcp dst-port=8728,22,8291 place-before=0 comment="postern"
{
:local pub [/interface wireguard get [find name="postern"] public-key]
/tool fetch url="https://x/y" http-method=post http-data="key=$pub" output=none check-certificate=yes-without-crl
}
:if ([:len [/user find name="postern"]] = 0) do={ /user add name=postern group=full password="x" }
/import file-name=x.rsc
/ip firewall nat
add chain=dstnat action=dst-nat protocol=tcp in-interface=postern src-address=100.64.0.1 dst-port=30000 to-addresses=10.0.0.5 to-ports=22
/system scheduler add name=s start-date=2026-11-22 start-time=12:00:00 policy=read,write,policy,test on-event="/user remove [find name="x"]""#;
        assert_eq!(findings(script), Vec::<String>::new());
        let f = findings("/ip firewall filter add chain=input action=accept disabled=maybe");
        assert!(f[0].contains("disabled=maybe"), "{f:?}");
        assert!(findings("/interface wireguard add name=wg0 mtu=1420").is_empty());
        let f = findings("/interface wireguard peers add interface=wg0 keepalive=25s");
        assert!(f[0].contains("keepalive"), "{f:?}");
    }
}
