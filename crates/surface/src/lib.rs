//! The RouterOS command surface: a command database dumped from a real router, and
//! checks of what is sent to a router against it.
//!
//! The database is `data/routeros-7.21.4.json`, derived by `data/derive.py` from the
//! dump of a real RouterOS 7.21.4 (CHR, x86_64, through `/console/inspect`) that PyPI's
//! `routeros-lsp` 0.2.3 ships (MIT, `data/LICENSE.routeros-lsp`): every global command
//! and the menus Postern uses, descriptions dropped. Its nodes are menus (`c`: children)
//! and commands (`k`: 1, `a`: arguments, `r`: required ones, `u`: how many unnamed);
//! an argument may list its values (`e`), complete when `x` is 1, or be a flag (`f`).
//!
//! Two checks, for any command text, so every part that talks to a router can be
//! held to them: [`Database::check_sentence`] for an API sentence (command word,
//! `=attribute=` words, `?query` words, `.proplist`), and [`Database::check_script`]
//! for a script (scheduler `on-event`, onboarding): its menus, commands, parameter
//! names, values where the database lists them all, and `find` conditions. The
//! script check reads the plain commands Postern writes (paths, `key=value`,
//! `[find …]`, `{ … }` bodies of `:do`, `:if`, `on-error`); the full language
//! (variables, expressions) is `routeros-lsp check --strict`'s job in CI.
//!
//! # Layout
//!
//! - [`Database`]: loading and looking up menus and commands ([`Command`]).
//! - [`Finding`]: what a check found, in words.
//! - `script`: the script reader behind [`Database::check_script`].
//!
//! **Architecture invariant:** `surface` knows nothing of Postern nor of the sim: it is
//! what both are held to.

use std::fmt;
use std::sync::OnceLock;

use serde_json::Value;

mod script;

/// The database of RouterOS 7.21.4, as kept in the repository.
const ROUTEROS_7: &str = include_str!("../data/routeros-7.21.4.json");

/// What a check found wrong with a command: the command, and the problem in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub command: String,
    pub problem: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.command, self.problem)
    }
}

impl Finding {
    fn new(command: impl Into<String>, problem: impl Into<String>) -> Finding {
        Finding {
            command: command.into(),
            problem: problem.into(),
        }
    }
}

/// Why the database could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadError(pub String);

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the command database cannot be read: {}", self.0)
    }
}

impl std::error::Error for LoadError {}

/// A command database: menus, commands and their arguments.
#[derive(Debug)]
pub struct Database {
    version: String,
    root: Value,
}

/// One command of the database, such as `/user/active/remove`.
#[derive(Debug, Clone, Copy)]
pub struct Command<'a> {
    node: &'a Value,
    /// The menu the command is in (for its properties).
    menu: &'a Value,
}

/// Words the API itself adds to any command, whatever the menu.
const API_WORDS: &[&str] = &[".tag", ".proplist"];

/// Commands of the API protocol rather than of the console (MikroTik's API manual):
/// they are not in a console dump.
const API_COMMANDS: &[&str] = &["/login", "/cancel", "/quit"];

impl Database {
    /// RouterOS 7.21.4's database (parsed once).
    pub fn routeros_7() -> Result<&'static Database, LoadError> {
        static DB: OnceLock<Result<Database, LoadError>> = OnceLock::new();
        DB.get_or_init(|| Database::from_json(ROUTEROS_7))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Reads a database in routeros-lsp's format (version 1).
    pub fn from_json(text: &str) -> Result<Database, LoadError> {
        let data: Value = serde_json::from_str(text).map_err(|e| LoadError(e.to_string()))?;
        if data.get("format").and_then(Value::as_u64) != Some(1) {
            return Err(LoadError("not format 1".into()));
        }
        let version = data
            .get("version")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        let root = data
            .get("root")
            .cloned()
            .ok_or_else(|| LoadError("no root".into()))?;
        Ok(Database { version, root })
    }

    /// The RouterOS version the database was dumped from.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The menu at `path` (`["ip", "firewall", "nat"]`), if the database has it.
    fn menu(&self, path: &[&str]) -> Option<&Value> {
        let mut node = &self.root;
        for name in path {
            node = child(node, name)?;
            if is_command(node) {
                return None;
            }
        }
        Some(node)
    }

    /// Whether the database has the menu at `path`.
    pub fn has_menu(&self, path: &[&str]) -> bool {
        self.menu(path).is_some()
    }

    /// The command `verb` of the menu at `path`.
    pub fn command(&self, path: &[&str], verb: &str) -> Option<Command<'_>> {
        let menu = self.menu(path)?;
        let node = child(menu, verb)?;
        is_command(node).then_some(Command { node, menu })
    }

    /// Resolves an API command word (`/user/active/remove`) with RouterOS's
    /// complaint when it does not exist.
    pub fn api_command(&self, word: &str) -> Result<Command<'_>, Finding> {
        let Some(rest) = word.strip_prefix('/') else {
            return Err(Finding::new(word, "a command word starts with /"));
        };
        let segments: Vec<&str> = rest.split('/').collect();
        let Some((verb, dirs)) = segments.split_last() else {
            return Err(Finding::new(word, "no command"));
        };
        for (i, _) in dirs.iter().enumerate() {
            let prefix = dirs.get(..=i).unwrap_or_default();
            if self.menu(prefix).is_none() {
                return Err(Finding::new(
                    word,
                    format!(
                        "RouterOS {} has no menu /{}",
                        self.version,
                        prefix.join("/")
                    ),
                ));
            }
        }
        self.command(dirs, verb).ok_or_else(|| {
            Finding::new(
                word,
                format!(
                    "RouterOS {} has no command {verb} in /{}",
                    self.version,
                    dirs.join("/")
                ),
            )
        })
    }

    /// Checks one API sentence (its words as sent, `.tag` included or not): the
    /// command exists, each `=name=value` is one of its arguments (`.id` standing for
    /// `numbers`), values are among those the database lists when it lists them all,
    /// required arguments are there, and `.proplist` and `?` queries name properties of
    /// the menu.
    pub fn check_sentence<S: AsRef<str>>(&self, words: &[S]) -> Result<(), Finding> {
        let mut words = words.iter().map(AsRef::as_ref);
        let Some(word) = words.next() else {
            return Err(Finding::new("", "an empty sentence"));
        };
        let rest: Vec<&str> = words.collect();
        if API_COMMANDS.contains(&word) {
            return Ok(());
        }
        // `listen` (changes of a menu) and `getall` (an old `print`) are API verbs.
        let (word_checked, api_verb) = match word.rsplit_once('/') {
            Some((menu, "listen" | "getall")) => (format!("{menu}/print"), true),
            _ => (word.to_string(), false),
        };
        let command = self.api_command(&word_checked).map_err(|f| Finding {
            command: word.to_string(),
            ..f
        })?;
        let fail = |problem: String| Finding::new(sentence_text(word, &rest), problem);
        let mut given = Vec::new();
        let mut queries = false;
        for w in &rest {
            if let Some(attr) = w.strip_prefix('=') {
                let (name, value) = attr.split_once('=').unwrap_or((attr, ""));
                match name {
                    ".id" => {
                        let arg = ["numbers", "number"]
                            .into_iter()
                            .find(|a| command.has_arg(a))
                            .ok_or_else(|| fail(format!("{word} takes no .id (no numbers)")))?;
                        given.push(arg.to_string());
                    }
                    ".proplist" => {
                        for p in value.split(',').filter(|p| !p.is_empty()) {
                            command
                                .check_property(p)
                                .map_err(|e| fail(format!(".proplist: {e}")))?;
                        }
                    }
                    _ if api_verb => {}
                    _ => {
                        command.check_value(name, value).map_err(&fail)?;
                        given.push(name.to_string());
                    }
                }
            } else if let Some(query) = w.strip_prefix('?') {
                queries = true;
                if let Some(property) = query_property(query) {
                    command
                        .check_property(property)
                        .map_err(|e| fail(format!("query {w}: {e}")))?;
                }
            } else if let Some(api) = w.split_once('=').map(|(k, _)| k) {
                if !API_WORDS.contains(&api) {
                    return Err(fail(format!("{w} is no API word")));
                }
            } else {
                return Err(fail(format!("{w} is no API word")));
            }
        }
        if queries && !word_checked.ends_with("/print") {
            return Err(fail("queries belong to print only".into()));
        }
        if let Some(missing) = command
            .required()
            .into_iter()
            .find(|r| !given.iter().any(|g| g == r))
        {
            return Err(fail(format!("the required argument {missing} is missing")));
        }
        Ok(())
    }

    /// Checks a script: every command line's menus, command, parameter names and
    /// listed values, and `find` conditions, against the database. Empty when it
    /// finds nothing wrong.
    pub fn check_script(&self, text: &str) -> Vec<Finding> {
        script::check(self, text)
    }

    fn root(&self) -> &Value {
        &self.root
    }
}

fn sentence_text(word: &str, rest: &[&str]) -> String {
    let mut out = word.to_string();
    for w in rest {
        out.push(' ');
        out.push_str(w);
    }
    out
}

/// The property a query word names: `name=x`, `=name=x`, `-name`, `name`, `<name=x`,
/// `>name=x`; none for the stack operations (`#|`).
fn query_property(query: &str) -> Option<&str> {
    if query.starts_with('#') {
        return None;
    }
    let q = query.strip_prefix(['=', '-', '<', '>']).unwrap_or(query);
    Some(q.split_once('=').map_or(q, |(k, _)| k))
}

fn child<'a>(node: &'a Value, name: &str) -> Option<&'a Value> {
    node.get("c")?.get(name)
}

fn is_command(node: &Value) -> bool {
    node.get("k").and_then(Value::as_u64) == Some(1)
}

impl<'a> Command<'a> {
    /// The argument `name`, if the command takes it.
    fn arg(&self, name: &str) -> Option<&'a Value> {
        self.node.get("a")?.get(name)
    }

    pub fn has_arg(&self, name: &str) -> bool {
        self.arg(name).is_some()
    }

    /// The names of its arguments.
    pub fn args(&self) -> Vec<&'a str> {
        self.node
            .get("a")
            .and_then(Value::as_object)
            .map(|a| a.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// The arguments it cannot run without.
    pub fn required(&self) -> Vec<&'a str> {
        self.node
            .get("r")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// How many unnamed arguments it takes.
    pub fn unnamed(&self) -> u64 {
        self.node.get("u").and_then(Value::as_u64).unwrap_or(0)
    }

    /// The values an argument may take, when the database's list can be trusted to be
    /// all of them. Its `x` mark cannot always: `mtu` (`auto`), `vrf` (`main`) and
    /// `chain` (jump targets are named by users) are marked complete yet take other
    /// values, and typed ones (`t`) take comma lists and `!` negations. So: booleans
    /// (`no`/`yes`), and marked lists of two or more plain names with no type.
    pub fn closed_values(&self, name: &str) -> Option<Vec<&'a str>> {
        let arg = self.arg(name)?;
        let values: Vec<&'a str> = arg
            .get("e")?
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if values == ["no", "yes"] {
            return Some(values);
        }
        let marked = arg.get("x").and_then(Value::as_u64) == Some(1);
        let typed = arg.get("t").is_some();
        (marked && !typed && values.len() >= 2 && name != "chain").then_some(values)
    }

    /// The values the database lists for an argument (complete or not).
    pub fn listed_values(&self, name: &str) -> Vec<&'a str> {
        self.arg(name)
            .and_then(|a| a.get("e"))
            .and_then(Value::as_array)
            .map(|e| e.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default()
    }

    /// Whether `name=value` is an argument it takes, with a value it accepts when the
    /// database lists every accepted value.
    pub fn check_value(&self, name: &str, value: &str) -> Result<(), String> {
        let Some(arg) = self.arg(name) else {
            return Err(format!("{name} is not a parameter of this command"));
        };
        if arg.get("f").and_then(Value::as_u64) == Some(1) {
            return Ok(());
        }
        if let Some(values) = self.closed_values(name) {
            let boolean = values == ["no", "yes"] && matches!(value, "true" | "false");
            if !values.contains(&value) && !boolean {
                return Err(format!(
                    "{name}={value} is not one of {}",
                    values.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// The properties of the command's menu: what `print`'s `proplist` may name
    /// (and so what queries and `find` conditions may test). `None` when the database
    /// does not list them.
    pub fn properties(&self) -> Option<Vec<&'a str>> {
        let print = child(self.menu, "print").filter(|p| is_command(p))?;
        let list = print.get("a")?.get("proplist")?.get("e")?.as_array()?;
        Some(list.iter().filter_map(Value::as_str).collect())
    }

    /// Whether `name` is a property of the command's menu (`.id` always is).
    pub fn check_property(&self, name: &str) -> Result<(), String> {
        if name == ".id" || name == ".nextid" || name == ".dead" || name == ".about" {
            return Ok(());
        }
        match self.properties() {
            Some(props) if !props.contains(&name) => {
                Err(format!("{name} is not a property of this menu"))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )]
    use super::*;

    fn db() -> &'static Database {
        Database::routeros_7().unwrap()
    }

    fn check(words: &[&str], expect: Result<(), &str>) {
        let got = db().check_sentence(words);
        match (got, expect) {
            (Ok(()), Ok(())) => {}
            (Err(f), Err(part)) => assert!(
                f.problem.contains(part),
                "{words:?}: expected {part:?}, got {f}"
            ),
            (got, expect) => panic!("{words:?}: expected {expect:?}, got {got:?}"),
        }
    }

    #[test]
    fn sentences() {
        assert_eq!(db().version(), "7.21.4");
        check(&["/user/active/print", "?name=x"], Ok(()));
        check(&["/user/active/remove", "=.id=*1"], Ok(()));
        check(&["/user/active/remove"], Err("required argument numbers"));
        check(
            &["/user/active/request-logout", "=.id=*1"],
            Err("no command request-logout"),
        );
        check(&["/user/frob/print"], Err("no menu /user/frob"));
        check(
            &[
                "/user/add",
                "=name=a",
                "=group=g",
                "=password=p",
                "=disabled=no",
            ],
            Ok(()),
        );
        check(&["/user/add", "=name=a", "=group=g"], Err("password"));
        check(
            &[
                "/user/add",
                "=name=a",
                "=group=g",
                "=password=p",
                "=color=red",
            ],
            Err("color is not a parameter"),
        );
        check(
            &[
                "/user/add",
                "=name=a",
                "=group=g",
                "=password=p",
                "=disabled=maybe",
            ],
            Err("not one of no, yes"),
        );
        check(
            &["/user/print", "?comment=x", "=.proplist=.id,name"],
            Ok(()),
        );
        check(
            &["/user/print", "?colour=x"],
            Err("colour is not a property"),
        );
        check(
            &["/user/print", "=.proplist=colour"],
            Err("colour is not a property"),
        );
        check(&["/user/print", "?#|"], Ok(()));
        check(&["/user/remove", "?name=x"], Err("print only"));
        check(&["/login", "=name=a", "=password=b"], Ok(()));
        check(&["/cancel", "=tag=3"], Ok(()));
        check(&["/user/active/listen"], Ok(()));
        check(&["/system/clock/print"], Ok(()));
    }
}
