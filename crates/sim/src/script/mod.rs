//! The router's scripting: one interpreter for the console (SSH), `/import` and
//! scheduler entries, covering the part of RouterOS's language that Postern's scripts
//! use.
//!
//! A script is parsed ([`parse`]) and compiled against the router before anything
//! runs: every command's path and verb must exist on this router (paths with spaces or
//! slashes, relative commands after a path line, `[ … ]` run in the command's menu) and
//! take the parameters given, else the whole script stops with `bad command name x`
//! or `expected end of command` and its line and column, as RouterOS resolves commands
//! while compiling.
//!
//! Then it runs: `:local`, `:set`, `:global`, `:if (…) do={…} else={…}`,
//! `:do {…} on-error={…}`, `:foreach v in=… do={…}`, `:error`, `:put`, `:delay`,
//! `:len`, `:pick`, `:tostr`, `:tonum`, `:typeof`, `:log` (to the sim's log),
//! `:parse` (a code value, compiled when it runs); expressions in `( … )` with `.`,
//! `= != < > <= >=`, `&& ||` (`and`, `or`), `!`, `+ -` and `->`; `"…$var…$[…]…"`
//! interpolation; and on menus `print [where …]`, `find [where] k="v" …`, `get`, `add`
//! (its value is the new `.id`), `set`, `remove`, `enable`, `disable`, `/tool fetch`
//! ([`crate::fetch`]) and `/import file-name=` (line by line, each line a scope of its
//! own, as RouterOS 7 imports). A failing command stops the script unless a
//! `:do … on-error` catches it.

pub mod parse;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::menu::{self, Menu, Request};
use crate::router::{Caller, Router};
use parse::{BinOp, Block, Expr, Op, Part, Stmt, Word};

/// A script value.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Nothing,
    Str(String),
    Num(i64),
    Bool(bool),
    /// An item's `.id` (`*1A`).
    Id(String),
    Time(Duration),
    Array(Vec<Val>),
    /// An array with keys (what `as-value` gives).
    Map(Vec<(String, Val)>),
    Code(Block),
}

impl Val {
    /// As `:tostr` and `:put` show it.
    pub fn text(&self) -> String {
        match self {
            Val::Nothing => String::new(),
            Val::Str(s) | Val::Id(s) => s.clone(),
            Val::Num(n) => n.to_string(),
            Val::Bool(b) => b.to_string(),
            Val::Time(d) => format_time_value(*d),
            Val::Array(a) => a.iter().map(Val::text).collect::<Vec<_>>().join(";"),
            Val::Map(m) => m
                .iter()
                .map(|(k, v)| format!("{k}={}", v.text()))
                .collect::<Vec<_>>()
                .join(";"),
            Val::Code(_) => "(code)".into(),
        }
    }

    /// As a command's argument: arrays are comma-separated lists.
    fn arg(&self) -> String {
        match self {
            Val::Array(a) => a.iter().map(Val::text).collect::<Vec<_>>().join(","),
            other => other.text(),
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Val::Nothing => "nothing",
            Val::Str(_) => "str",
            Val::Num(_) => "num",
            Val::Bool(_) => "bool",
            Val::Id(_) => "id",
            Val::Time(_) => "time",
            Val::Array(_) | Val::Map(_) => "array",
            Val::Code(_) => "code",
        }
    }

    fn truthy(&self) -> bool {
        match self {
            Val::Bool(b) => *b,
            Val::Num(n) => *n != 0,
            _ => false,
        }
    }

    /// A property's text as `get` returns it: typed like RouterOS's values.
    fn typed(s: &str) -> Val {
        match s {
            "true" => Val::Bool(true),
            "false" => Val::Bool(false),
            s if !s.is_empty() && s.len() < 19 && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse()
                .map(Val::Num)
                .unwrap_or_else(|_| Val::Str(s.into())),
            s if crate::state::parse_id(s).is_some() => Val::Id(s.into()),
            s => Val::Str(s.into()),
        }
    }
}

fn format_time_value(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// Why a script stopped: the message RouterOS shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptError(pub String);

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<menu::Trap> for ScriptError {
    fn from(t: menu::Trap) -> Self {
        ScriptError(t.message)
    }
}

type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The global commands the interpreter knows (`:local` …).
const GLOBALS: &[&str] = &[
    "local", "set", "global", "if", "do", "foreach", "error", "put", "delay", "len", "pick",
    "tostr", "tonum", "typeof", "log", "parse", "nothing",
];

/// How many statements one run may execute, output bytes it may print, and how
/// deeply `/import` may nest: a hostile script ends, it does not run forever.
const MAX_STEPS: usize = 200_000;
const MAX_OUTPUT: usize = 1 << 20;
const MAX_IMPORT_DEPTH: usize = 8;
/// How deeply blocks (and code values calling code values) may nest while running.
const MAX_NESTING: usize = 100;
/// The longest `:delay` one statement may ask.
const MAX_DELAY: Duration = Duration::from_secs(600);

/// What a command's first words are.
#[derive(Debug, Clone, PartialEq)]
enum Head {
    /// `:name`.
    Global(String),
    /// A line with only a path: later relative commands run there.
    Path(Vec<String>),
    /// A menu's command; `words` is how many words the path and verb took.
    Command {
        path: Vec<String>,
        menu: Menu,
        verb: String,
        words: usize,
    },
    /// The statement starts with a value (`$f`, `[…]`): evaluated, and run if code.
    Value,
}

/// Where word `word` of a statement starts.
fn position(stmt: &Stmt, word: usize) -> (usize, usize) {
    stmt.at
        .get(word)
        .copied()
        .unwrap_or((stmt.line, stmt.column))
}

/// RouterOS's words for a command it does not have, pointing at the word.
fn bad_command(name: &str, stmt: &Stmt, word: usize) -> String {
    let (line, column) = position(stmt, word);
    format!("bad command name {name} (line {line} column {column})")
}

/// Works out a statement's menu, verb or global command, in directory `cwd`.
fn head(router: &Router, cwd: &[String], stmt: &Stmt) -> Result<Head, String> {
    let Some(first) = stmt.words.first() else {
        return Ok(Head::Path(cwd.to_vec()));
    };
    let first = match first {
        Word::Bare(b) => b,
        Word::Value(_) => return Ok(Head::Value),
        Word::Arg(k, _) => return Err(bad_command(k, stmt, 0)),
    };
    if let Some(name) = first.strip_prefix(':') {
        if !GLOBALS.contains(&name) {
            return Err(bad_command(name, stmt, 0));
        }
        return Ok(Head::Global(name.to_string()));
    }
    // Segments with the word each came from: a leading `/` path may use slashes.
    let mut segments: Vec<(String, usize)> = Vec::new();
    let mut path: Vec<String> = if first.starts_with('/') {
        for s in first.split('/').filter(|s| !s.is_empty()) {
            segments.push((s.to_string(), 0));
        }
        Vec::new()
    } else {
        segments.push((first.clone(), 0));
        cwd.to_vec()
    };
    for (i, w) in stmt.words.iter().enumerate().skip(1) {
        match w {
            Word::Bare(b) if !b.starts_with(':') => segments.push((b.clone(), i)),
            _ => break,
        }
    }
    let mut iter = segments.into_iter().peekable();
    let mut consumed = 1;
    while let Some((seg, word)) = iter.peek().cloned() {
        if seg == ".." {
            path.pop();
        } else {
            let mut next = path.clone();
            next.push(seg.clone());
            let joined = next.join("/");
            if !(menu::is_directory(&joined) || menu::menu_at(&joined).is_some()) {
                break;
            }
            // A menu this router's version lacks (`/interface wireguard` on RouterOS
            // 6), or `/system routerboard` on a CHR, is not there at all.
            let lacking = !menu::available(router.version_triple(), &joined)
                || (joined == "system/routerboard" && router.config().serial_number.is_none());
            if lacking {
                return Err(bad_command(&seg, stmt, word));
            }
            path = next;
        }
        consumed = word + 1;
        iter.next();
    }
    let joined = path.join("/");
    let Some((verb, word)) = iter.next() else {
        if stmt.words.len() > consumed {
            return Err(bad_command(&joined, stmt, consumed));
        }
        return Ok(Head::Path(path));
    };
    // A verb must end its word (`/ip/address/add/x` is not a command).
    if iter.peek().is_some_and(|(_, w)| *w == word) {
        return Err(bad_command(&verb, stmt, word));
    }
    let Some(menu) = menu::menu_at(&joined) else {
        return Err(bad_command(&verb, stmt, word));
    };
    let extra: &[&str] = match menu {
        Menu::Table(_) => &["find", "get"],
        Menu::Identity | Menu::Resource | Menu::Clock | Menu::Routerboard | Menu::DeviceMode => {
            &["get"]
        }
        _ => &[],
    };
    let known = menu::menu_verbs(menu).contains(&verb.as_str()) || extra.contains(&verb.as_str());
    let real = if extra.contains(&verb.as_str()) {
        "print"
    } else {
        verb.as_str()
    };
    let full = if joined.is_empty() {
        format!("/{real}")
    } else {
        format!("/{joined}/{real}")
    };
    if !known || menu::resolve(router, &full).is_err() {
        return Err(bad_command(&verb, stmt, word));
    }
    Ok(Head::Command {
        path,
        menu,
        verb,
        words: word + 1,
    })
}

/// Checks a parsed script against the router: every command exists with the
/// parameters given. `cwd` is the directory it starts in.
pub fn check(router: &Router, block: &Block, cwd: &[String]) -> Result<(), String> {
    let mut cwd = cwd.to_vec();
    for stmt in block {
        match head(router, &cwd, stmt)? {
            Head::Path(p) => {
                cwd = p;
                continue;
            }
            Head::Command {
                path,
                menu,
                verb,
                words,
            } => {
                let rest = stmt.words.get(words..).unwrap_or_default();
                if !matches!(verb.as_str(), "find" | "get") {
                    let params = menu::params(menu, &verb);
                    // What follows `print … where` are conditions, not parameters.
                    let end = rest
                        .iter()
                        .position(|w| verb == "print" && matches!(w, Word::Bare(b) if b == "where"))
                        .unwrap_or(rest.len());
                    for (i, w) in rest.iter().enumerate().take(end) {
                        if let Word::Arg(k, _) = w
                            && !params.contains(&k.as_str())
                        {
                            let (line, column) = position(stmt, words + i);
                            return Err(format!(
                                "expected end of command (line {line} column {column})"
                            ));
                        }
                    }
                }
                check_words(router, rest, &path)?;
            }
            Head::Global(_) | Head::Value => check_words(router, &stmt.words, &cwd)?,
        }
    }
    Ok(())
}

/// Checks the blocks inside a statement's words: `[…]` in the command's menu, `{…}`
/// bodies where the statement is.
fn check_words(router: &Router, words: &[Word], cwd: &[String]) -> Result<(), String> {
    for w in words {
        match w {
            Word::Arg(_, e) | Word::Value(e) => check_expr(router, e, cwd)?,
            Word::Bare(_) => {}
        }
    }
    Ok(())
}

fn check_expr(router: &Router, e: &Expr, cwd: &[String]) -> Result<(), String> {
    match e {
        Expr::Sub(b) | Expr::Code(b) => check(router, b, cwd),
        Expr::Str(parts) => {
            for p in parts {
                match p {
                    Part::Sub(b) => check(router, b, cwd)?,
                    Part::Op(o) => check_op(router, o, cwd)?,
                    _ => {}
                }
            }
            Ok(())
        }
        Expr::Op(o) => check_op(router, o, cwd),
        Expr::Lit(_) | Expr::Var(_) => Ok(()),
    }
}

fn check_op(router: &Router, o: &Op, cwd: &[String]) -> Result<(), String> {
    match o {
        Op::Val(e) => check_expr(router, e, cwd),
        Op::Not(o) | Op::Neg(o) => check_op(router, o, cwd),
        Op::Bin(a, _, b) => {
            check_op(router, a, cwd)?;
            check_op(router, b, cwd)
        }
    }
}

/// Parses and checks a script: the error is what the console prints.
pub fn compile(router: &Router, text: &str) -> Result<Block, String> {
    compile_in(router, text, &[])
}

fn compile_in(router: &Router, text: &str, cwd: &[String]) -> Result<Block, String> {
    let block = parse::parse(text).map_err(|e| e.to_string())?;
    check(router, &block, cwd)?;
    Ok(block)
}

/// One run of a script: who runs it, what it printed, its limits.
pub struct Run {
    router: Router,
    caller: Caller,
    /// What `:put`, `print` and `/tool fetch` printed.
    pub output: String,
    steps: usize,
    imports: usize,
    nesting: usize,
    /// Variables of `:global`.
    globals: HashMap<String, Val>,
}

/// Local variables: one frame per block.
#[derive(Default)]
struct Scope {
    frames: Vec<HashMap<String, Val>>,
}

impl Scope {
    fn get(&self, name: &str) -> Option<&Val> {
        self.frames.iter().rev().find_map(|f| f.get(name))
    }

    fn set(&mut self, name: &str, v: Val) -> bool {
        for f in self.frames.iter_mut().rev() {
            if let Some(slot) = f.get_mut(name) {
                *slot = v;
                return true;
            }
        }
        false
    }

    fn local(&mut self, name: &str, v: Val) {
        if self.frames.is_empty() {
            self.frames.push(HashMap::new());
        }
        if let Some(f) = self.frames.last_mut() {
            f.insert(name.to_string(), v);
        }
    }
}

impl Run {
    pub fn new(router: &Router, caller: &Caller) -> Run {
        Run {
            router: router.clone(),
            caller: caller.clone(),
            output: String::new(),
            steps: 0,
            imports: 0,
            nesting: 0,
            globals: HashMap::new(),
        }
    }

    fn print(&mut self, text: &str) {
        if self.output.len() + text.len() <= MAX_OUTPUT {
            self.output.push_str(text);
        }
    }

    /// Runs a compiled script from directory `cwd` (which relative path lines change).
    pub async fn run(&mut self, block: &Block, cwd: &mut Vec<String>) -> Result<Val, ScriptError> {
        let mut scope = Scope::default();
        scope.frames.push(HashMap::new());
        self.block(block, &mut scope, cwd).await
    }

    /// Runs statements; the value is the last one's (what `[ … ]` gives).
    fn block<'a>(
        &'a mut self,
        block: &'a Block,
        scope: &'a mut Scope,
        cwd: &'a mut Vec<String>,
    ) -> Fut<'a, Result<Val, ScriptError>> {
        Box::pin(async move {
            let mut last = Val::Nothing;
            for stmt in block {
                self.steps += 1;
                if self.steps > MAX_STEPS {
                    return Err(ScriptError("script too long: stopped".into()));
                }
                last = self.statement(stmt, scope, cwd).await?;
            }
            Ok(last)
        })
    }

    /// Runs a nested block in a frame of its own.
    fn nested<'a>(
        &'a mut self,
        block: &'a Block,
        scope: &'a mut Scope,
        cwd: &'a [String],
    ) -> Fut<'a, Result<Val, ScriptError>> {
        Box::pin(async move {
            if self.nesting >= MAX_NESTING {
                return Err(ScriptError("failure: script nested too deeply".into()));
            }
            self.nesting += 1;
            scope.frames.push(HashMap::new());
            let mut inner = cwd.to_vec();
            let out = self.block(block, scope, &mut inner).await;
            scope.frames.pop();
            self.nesting -= 1;
            out
        })
    }

    fn statement<'a>(
        &'a mut self,
        stmt: &'a Stmt,
        scope: &'a mut Scope,
        cwd: &'a mut Vec<String>,
    ) -> Fut<'a, Result<Val, ScriptError>> {
        Box::pin(async move {
            let h = head(&self.router, cwd, stmt).map_err(ScriptError)?;
            match h {
                Head::Path(p) => {
                    *cwd = p;
                    Ok(Val::Nothing)
                }
                Head::Global(name) => self.global(&name, stmt, scope, cwd).await,
                Head::Value => {
                    let Some(Word::Value(e)) = stmt.words.first() else {
                        return Ok(Val::Nothing);
                    };
                    let v = self.expr(e, scope, cwd).await?;
                    match v {
                        Val::Code(block) => {
                            check(&self.router, &block, cwd).map_err(ScriptError)?;
                            self.nested(&block, scope, cwd).await
                        }
                        other => Ok(other),
                    }
                }
                Head::Command {
                    path,
                    menu,
                    verb,
                    words,
                } => {
                    let rest = stmt.words.get(words..).unwrap_or_default();
                    self.command(&path, menu, &verb, rest, scope).await
                }
            }
        })
    }

    fn expr<'a>(
        &'a mut self,
        e: &'a Expr,
        scope: &'a mut Scope,
        cwd: &'a [String],
    ) -> Fut<'a, Result<Val, ScriptError>> {
        Box::pin(async move {
            Ok(match e {
                Expr::Lit(t) => literal(t),
                Expr::Var(name) => self.var(name, scope),
                Expr::Sub(b) => self.nested(b, scope, cwd).await?,
                Expr::Code(b) => Val::Code(b.clone()),
                Expr::Op(o) => self.op(o, scope, cwd).await?,
                Expr::Str(parts) => {
                    let mut s = String::new();
                    for p in parts {
                        match p {
                            Part::Text(t) => s.push_str(t),
                            Part::Var(v) => s.push_str(&self.var(v, scope).text()),
                            Part::Sub(b) => s.push_str(&self.nested(b, scope, cwd).await?.text()),
                            Part::Op(o) => s.push_str(&self.op(o, scope, cwd).await?.text()),
                        }
                    }
                    Val::Str(s)
                }
            })
        })
    }

    fn var(&self, name: &str, scope: &Scope) -> Val {
        scope
            .get(name)
            .or_else(|| self.globals.get(name))
            .cloned()
            .unwrap_or(Val::Nothing)
    }

    fn op<'a>(
        &'a mut self,
        o: &'a Op,
        scope: &'a mut Scope,
        cwd: &'a [String],
    ) -> Fut<'a, Result<Val, ScriptError>> {
        Box::pin(async move {
            match o {
                Op::Val(e) => self.expr(e, scope, cwd).await,
                Op::Not(inner) => Ok(Val::Bool(!self.op(inner, scope, cwd).await?.truthy())),
                Op::Neg(inner) => match self.op(inner, scope, cwd).await? {
                    Val::Num(n) => Ok(Val::Num(-n)),
                    _ => Err(ScriptError("invalid value for negation".into())),
                },
                Op::Bin(a, op, b) => {
                    let left = self.op(a, scope, cwd).await?;
                    // `&&` and `||` stop early, as RouterOS's do.
                    match (op, left.truthy()) {
                        (BinOp::And, false) => return Ok(Val::Bool(false)),
                        (BinOp::Or, true) => return Ok(Val::Bool(true)),
                        _ => {}
                    }
                    let right = self.op(b, scope, cwd).await?;
                    binary(&left, *op, &right)
                }
            }
        })
    }

    /// `:local`, `:if`, `:do` … with the statement's words after the name.
    fn global<'a>(
        &'a mut self,
        name: &'a str,
        stmt: &'a Stmt,
        scope: &'a mut Scope,
        cwd: &'a [String],
    ) -> Fut<'a, Result<Val, ScriptError>> {
        Box::pin(async move {
            let words = stmt.words.get(1..).unwrap_or_default();
            // Unnamed words, and `name=` ones, not evaluated yet.
            let positional: Vec<&Word> = words
                .iter()
                .filter(|w| !matches!(w, Word::Arg(..)))
                .collect();
            let named = |key: &str| {
                words.iter().find_map(|w| match w {
                    Word::Arg(k, e) if k == key => Some(e),
                    _ => None,
                })
            };
            match name {
                "local" | "set" | "global" => {
                    let var = match positional.first() {
                        Some(Word::Bare(n)) => n.clone(),
                        Some(Word::Value(Expr::Str(_))) | None => {
                            return Err(ScriptError(format!(
                                "syntax error (line {} column {})",
                                stmt.line, stmt.column
                            )));
                        }
                        Some(w) => self.word_value(w, scope, cwd).await?.text(),
                    };
                    let value = match positional.get(1) {
                        Some(w) => self.word_value(w, scope, cwd).await?,
                        None => match named("value") {
                            Some(e) => self.expr(e, scope, cwd).await?,
                            // `:global f` declares it, keeping a value it has.
                            None if name == "global" => {
                                self.globals.get(&var).cloned().unwrap_or(Val::Nothing)
                            }
                            None => Val::Nothing,
                        },
                    };
                    match name {
                        "local" => scope.local(&var, value),
                        "global" => {
                            self.globals.insert(var, value);
                        }
                        _ => {
                            if !scope.set(&var, value.clone()) {
                                // RouterOS refuses `:set` of a name no `:local` or
                                // `:global` before it declared (routeros-lsp's probes
                                // of 7.21.4, `vars/set-undeclared`).
                                match self.globals.get_mut(&var) {
                                    Some(slot) => *slot = value,
                                    None => {
                                        return Err(ScriptError(format!(
                                            "syntax error: {var} is not declared (line {} column {})",
                                            stmt.line, stmt.column
                                        )));
                                    }
                                }
                            }
                        }
                    }
                    Ok(Val::Nothing)
                }
                "if" => {
                    let cond = match positional.first() {
                        Some(w) => self.word_value(w, scope, cwd).await?,
                        None => match named("condition") {
                            Some(e) => self.expr(e, scope, cwd).await?,
                            None => return Err(ScriptError("missing condition".into())),
                        },
                    };
                    let branch = if cond.truthy() {
                        named("do")
                    } else {
                        named("else")
                    };
                    match branch {
                        Some(Expr::Code(b)) => self.nested(b, scope, cwd).await,
                        Some(e) => self.expr(e, scope, cwd).await,
                        None => Ok(Val::Nothing),
                    }
                }
                "do" => {
                    let body = positional
                        .first()
                        .and_then(|w| match w {
                            Word::Value(Expr::Code(b)) => Some(b),
                            _ => None,
                        })
                        .or_else(|| match named("command") {
                            Some(Expr::Code(b)) => Some(b),
                            _ => None,
                        });
                    let Some(body) = body else {
                        return Err(ScriptError("missing do body".into()));
                    };
                    match (self.nested(body, scope, cwd).await, named("on-error")) {
                        (Ok(_), _) => Ok(Val::Nothing),
                        (Err(e), None) => Err(e),
                        (Err(e), Some(handler)) => {
                            tracing::debug!(error = %e, "caught by on-error");
                            match handler {
                                Expr::Code(b) => self.nested(b, scope, cwd).await?,
                                other => self.expr(other, scope, cwd).await?,
                            };
                            Ok(Val::Nothing)
                        }
                    }
                }
                "foreach" => {
                    let var = match positional.first() {
                        Some(Word::Bare(n)) => n.clone(),
                        _ => return Err(ScriptError("missing foreach variable".into())),
                    };
                    let list = match named("in") {
                        Some(e) => self.expr(e, scope, cwd).await?,
                        None => Val::Nothing,
                    };
                    let items = match list {
                        Val::Array(a) => a,
                        Val::Map(m) => m.into_iter().map(|(_, v)| v).collect(),
                        Val::Nothing => vec![],
                        other => vec![other],
                    };
                    let Some(Expr::Code(body)) = named("do") else {
                        return Err(ScriptError("missing foreach body".into()));
                    };
                    for item in items {
                        scope.frames.push(HashMap::from([(var.clone(), item)]));
                        let mut inner = cwd.to_vec();
                        let out = self.block(body, scope, &mut inner).await;
                        scope.frames.pop();
                        out?;
                    }
                    Ok(Val::Nothing)
                }
                "error" => {
                    let msg = match positional.first() {
                        Some(w) => self.word_value(w, scope, cwd).await?.text(),
                        None => match named("message") {
                            Some(e) => self.expr(e, scope, cwd).await?.text(),
                            None => String::new(),
                        },
                    };
                    Err(ScriptError(msg))
                }
                "put" => {
                    let v = match positional.first() {
                        Some(w) => self.word_value(w, scope, cwd).await?,
                        None => match named("message") {
                            Some(e) => self.expr(e, scope, cwd).await?,
                            None => Val::Nothing,
                        },
                    };
                    let line = format!("{}\n", v.text());
                    self.print(&line);
                    Ok(Val::Nothing)
                }
                "log" => {
                    let mut parts = Vec::new();
                    for w in &positional {
                        parts.push(self.word_value(w, scope, cwd).await?.text());
                    }
                    tracing::info!(router = %self.router.identity(), message = %parts.join(" "), "script :log");
                    Ok(Val::Nothing)
                }
                "delay" => {
                    let v = match positional.first() {
                        Some(w) => self.word_value(w, scope, cwd).await?,
                        None => match named("delay-time") {
                            Some(e) => self.expr(e, scope, cwd).await?,
                            None => Val::Str("1s".into()),
                        },
                    };
                    let d = match &v {
                        Val::Time(d) => Some(*d),
                        Val::Num(n) => u64::try_from(*n).ok().map(Duration::from_secs),
                        other => parse_delay(&other.text()),
                    }
                    .ok_or_else(|| ScriptError("invalid value for argument delay-time".into()))?;
                    tokio::time::sleep(d.min(MAX_DELAY)).await;
                    Ok(Val::Nothing)
                }
                "len" | "tostr" | "tonum" | "typeof" | "parse" => {
                    let v = match positional.first() {
                        Some(w) => self.word_value(w, scope, cwd).await?,
                        None => match named("value") {
                            Some(e) => self.expr(e, scope, cwd).await?,
                            None => Val::Nothing,
                        },
                    };
                    Ok(match name {
                        "len" => Val::Num(match &v {
                            Val::Nothing => 0,
                            Val::Array(a) => a.len() as i64,
                            Val::Map(m) => m.len() as i64,
                            other => other.text().len() as i64,
                        }),
                        "tostr" => Val::Str(v.text()),
                        "tonum" => match v {
                            Val::Num(n) => Val::Num(n),
                            other => other
                                .text()
                                .trim()
                                .parse()
                                .map(Val::Num)
                                .unwrap_or(Val::Nothing),
                        },
                        "typeof" => Val::Str(v.type_name().into()),
                        _ => {
                            let block =
                                parse::parse(&v.text()).map_err(|e| ScriptError(e.to_string()))?;
                            Val::Code(block)
                        }
                    })
                }
                "pick" => {
                    let mut args = Vec::new();
                    for w in &positional {
                        args.push(self.word_value(w, scope, cwd).await?);
                    }
                    let mut it = args.into_iter();
                    let v = it.next().unwrap_or(Val::Nothing);
                    let num = |x: Option<Val>| match x {
                        Some(Val::Num(n)) => Some(n.max(0) as usize),
                        Some(other) => other.text().trim().parse::<usize>().ok(),
                        None => None,
                    };
                    let start = num(it.next()).unwrap_or(0);
                    let end = num(it.next());
                    Ok(pick(v, start, end))
                }
                _ => Ok(Val::Nothing),
            }
        })
    }

    /// The value of an unnamed word (a bare word is literal text).
    fn word_value<'a>(
        &'a mut self,
        w: &'a Word,
        scope: &'a mut Scope,
        cwd: &'a [String],
    ) -> Fut<'a, Result<Val, ScriptError>> {
        Box::pin(async move {
            match w {
                Word::Bare(b) => Ok(literal(b)),
                Word::Value(e) | Word::Arg(_, e) => self.expr(e, scope, cwd).await,
            }
        })
    }

    /// A menu's command.
    fn command<'a>(
        &'a mut self,
        path: &'a [String],
        menu: Menu,
        verb: &'a str,
        words: &'a [Word],
        scope: &'a mut Scope,
    ) -> Fut<'a, Result<Val, ScriptError>> {
        Box::pin(async move {
            let joined = path.join("/");
            let api_path = |verb: &str| {
                if joined.is_empty() {
                    format!("/{verb}")
                } else {
                    format!("/{joined}/{verb}")
                }
            };
            if verb == "find" {
                if !matches!(menu, Menu::Table(_)) {
                    return Err(ScriptError(format!("bad command name {verb}")));
                }
                return self.find(&api_path("print"), words, scope, path).await;
            }
            // `print … where k="v" …`: the rows `find` would give.
            let where_at = words
                .iter()
                .position(|w| matches!(w, Word::Bare(b) if b == "where"));
            let (words, only) = match where_at {
                Some(i) if verb == "print" => {
                    let conditions = words.get(i + 1..).unwrap_or_default();
                    let found = self
                        .find(&api_path("print"), conditions, scope, path)
                        .await?;
                    (words.get(..i).unwrap_or_default(), Some(found))
                }
                _ => (words, None),
            };
            let params = if verb == "get" {
                vec!["number", "value-name"]
            } else {
                menu::params(menu, verb)
            };
            let mut positional = Vec::new();
            let mut named: Vec<(String, Val)> = Vec::new();
            for w in words {
                match w {
                    Word::Bare(b) if params.contains(&b.as_str()) => {
                        named.push((b.clone(), Val::Str(String::new())))
                    }
                    Word::Bare(b) => positional.push(literal(b)),
                    Word::Value(e) => positional.push(self.expr(e, scope, path).await?),
                    Word::Arg(k, e) => {
                        let v = self.expr(e, scope, path).await?;
                        named.push((k.clone(), v));
                    }
                }
            }
            match verb {
                "get" => self.get(&api_path("print"), menu, positional, named),
                "print" => {
                    let mut req = Request::new(&api_path("print"));
                    for (k, v) in &named {
                        req = req.attr(k, &v.arg());
                    }
                    let mut out = menu::execute(&self.router, &self.caller, &req)?;
                    if let Some(Val::Array(ids)) = &only {
                        let ids: Vec<String> = ids.iter().map(Val::text).collect();
                        out.rows
                            .retain(|r| r.iter().any(|(k, v)| k == ".id" && ids.contains(v)));
                    }
                    if let (Some(Val::Array(ids)), true) =
                        (&only, named.iter().any(|(k, _)| k == "count-only"))
                    {
                        return Ok(Val::Num(ids.len() as i64));
                    }
                    if named.iter().any(|(k, _)| k == "count-only") {
                        return Ok(out.ret.as_deref().map(Val::typed).unwrap_or(Val::Num(0)));
                    }
                    if named.iter().any(|(k, _)| k == "as-value") {
                        return Ok(Val::Array(
                            out.rows
                                .into_iter()
                                .map(|r| {
                                    Val::Map(
                                        r.into_iter().map(|(k, v)| (k, Val::typed(&v))).collect(),
                                    )
                                })
                                .collect(),
                        ));
                    }
                    let text = match menu {
                        Menu::Table(kind) => crate::ssh::console::format_table(kind, &out.rows),
                        _ => out
                            .rows
                            .first()
                            .map(|r| crate::ssh::console::format_single(r))
                            .unwrap_or_default(),
                    };
                    self.print(&text);
                    Ok(Val::Nothing)
                }
                "fetch" => self.fetch(named).await,
                "import" => self.import(named).await,
                _ => {
                    let mut req = Request::new(&api_path(verb));
                    if let Some(target) = positional.first() {
                        if matches!(target, Val::Array(a) if a.is_empty())
                            || *target == Val::Nothing
                        {
                            // `remove [find …]` that found nothing does nothing.
                            return Ok(Val::Nothing);
                        }
                        req = req.attr("numbers", &target.arg());
                    }
                    for (k, v) in &named {
                        req = req.attr(k, &v.arg());
                    }
                    let out = menu::execute(&self.router, &self.caller, &req)?;
                    Ok(out.ret.as_deref().map(Val::typed).unwrap_or(Val::Nothing))
                }
            }
        })
    }

    /// `find [where] k="v" k!="v" flag !flag …`: the `.id`s of the matching items.
    fn find<'a>(
        &'a mut self,
        print: &'a str,
        words: &'a [Word],
        scope: &'a mut Scope,
        cwd: &'a [String],
    ) -> Fut<'a, Result<Val, ScriptError>> {
        Box::pin(async move {
            // (property, wanted value, whether it must differ)
            let mut conds: Vec<(String, Option<Val>, bool)> = Vec::new();
            for w in words {
                match w {
                    Word::Bare(b) if matches!(b.as_str(), "where" | "and" | "&&") => {}
                    Word::Bare(b) => match b.strip_prefix('!') {
                        Some(p) => conds.push((p.to_string(), Some(Val::Bool(true)), true)),
                        None => conds.push((b.clone(), Some(Val::Bool(true)), false)),
                    },
                    Word::Arg(k, e) => {
                        let v = self.expr(e, scope, cwd).await?;
                        match k.strip_suffix('!') {
                            Some(p) => conds.push((p.to_string(), Some(v), true)),
                            None => conds.push((k.clone(), Some(v), false)),
                        }
                    }
                    Word::Value(_) => {
                        return Err(ScriptError("syntax error in find".into()));
                    }
                }
            }
            let out = menu::execute(&self.router, &self.caller, &Request::new(print))?;
            let mut ids = Vec::new();
            for row in out.rows {
                let get = |k: &str| row.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
                let ok = conds.iter().all(|(prop, want, differ)| {
                    let have = get(prop);
                    let same = match (have, want) {
                        (None, Some(Val::Nothing)) => true,
                        (None, _) => false,
                        (Some(h), Some(Val::Bool(b))) => {
                            matches!((h, b), ("true" | "yes", true) | ("false" | "no", false))
                        }
                        (Some(h), Some(w)) => {
                            let w = w.text();
                            h == w || bool_text(h).is_some() && bool_text(h) == bool_text(&w)
                        }
                        (Some(_), None) => true,
                    };
                    same != *differ
                });
                if ok && let Some(id) = get(".id") {
                    ids.push(Val::Id(id.to_string()));
                }
            }
            Ok(Val::Array(ids))
        })
    }

    /// `get [item] property`.
    fn get(
        &mut self,
        print: &str,
        menu: Menu,
        positional: Vec<Val>,
        named: Vec<(String, Val)>,
    ) -> Result<Val, ScriptError> {
        let mut args = positional.into_iter();
        let named_of = |k: &str| named.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let out = menu::execute(&self.router, &self.caller, &Request::new(print))?;
        let (row, prop) = match menu {
            Menu::Table(kind) => {
                let target = named_of("number")
                    .or_else(|| args.next())
                    .unwrap_or(Val::Nothing);
                let prop = named_of("value-name").or_else(|| args.next());
                let target = match target {
                    Val::Array(a) => a
                        .into_iter()
                        .next()
                        .ok_or_else(|| ScriptError("invalid internal item number".into()))?,
                    Val::Nothing => {
                        return Err(ScriptError("invalid internal item number".into()));
                    }
                    other => other,
                };
                let t = target.text();
                let row = out
                    .rows
                    .into_iter()
                    .find(|r| {
                        r.iter().any(|(k, v)| {
                            (k == ".id" && *v == t)
                                || (k == "name" && kind.schema().has_name() && *v == t)
                        })
                    })
                    .ok_or_else(|| ScriptError("no such item".into()))?;
                let known = |p: &str| {
                    p == ".id"
                        || kind
                            .schema()
                            .access(p)
                            .is_some_and(|a| a != crate::state::Access::Secret)
                };
                let prop = match prop {
                    None => {
                        return Ok(Val::Map(
                            row.into_iter().map(|(k, v)| (k, Val::typed(&v))).collect(),
                        ));
                    }
                    Some(p) => p.text(),
                };
                if !known(&prop) {
                    return Err(ScriptError(
                        "input does not match any value of value-name".into(),
                    ));
                }
                (row, prop)
            }
            _ => {
                let row = out.rows.into_iter().next().unwrap_or_default();
                let Some(prop) = named_of("value-name").or_else(|| args.next()) else {
                    return Ok(Val::Map(
                        row.into_iter().map(|(k, v)| (k, Val::typed(&v))).collect(),
                    ));
                };
                let prop = prop.text();
                if !row.iter().any(|(k, _)| *k == prop) {
                    return Err(ScriptError(
                        "input does not match any value of value-name".into(),
                    ));
                }
                (row, prop)
            }
        };
        Ok(row
            .into_iter()
            .find(|(k, _)| *k == prop)
            .map(|(_, v)| Val::typed(&v))
            .unwrap_or(Val::Nothing))
    }

    /// `/tool fetch`.
    fn fetch(&mut self, named: Vec<(String, Val)>) -> Fut<'_, Result<Val, ScriptError>> {
        Box::pin(async move {
            let get = |k: &str| named.iter().find(|(n, _)| n == k).map(|(_, v)| v.arg());
            if !self.caller.policies.has("write") || !self.caller.policies.has("test") {
                return Err(ScriptError("not enough permissions (9)".into()));
            }
            if self.router.state().device_mode == crate::state::DeviceMode::Home {
                return Err(ScriptError("failure: not allowed by device-mode".into()));
            }
            let url = get("url").ok_or_else(|| ScriptError("failure: url not specified".into()))?;
            let check = match get("check-certificate").as_deref() {
                None | Some("no") => crate::fetch::Check::No,
                Some("yes") => crate::fetch::Check::Yes,
                Some("yes-without-crl") => crate::fetch::Check::YesWithoutCrl,
                Some(_) => {
                    return Err(ScriptError(
                        "input does not match any value of check-certificate".into(),
                    ));
                }
            };
            let method = get("http-method").unwrap_or_else(|| "get".into());
            if !["get", "post", "put", "delete"].contains(&method.as_str()) {
                return Err(ScriptError(
                    "input does not match any value of http-method".into(),
                ));
            }
            let output = get("output").unwrap_or_else(|| "file".into());
            if !["file", "user", "none"].contains(&output.as_str()) {
                return Err(ScriptError(
                    "input does not match any value of output".into(),
                ));
            }
            let as_value = named.iter().any(|(k, _)| k == "as-value");
            let headers = get("http-header-field")
                .map(|h| crate::fetch::header_fields(&h))
                .transpose()
                .map_err(ScriptError)?
                .unwrap_or_default();
            let request = crate::fetch::FetchRequest {
                url: url.clone(),
                method,
                data: get("http-data"),
                headers,
                check,
                trust_pem: self.router.config().trust_pem.clone(),
                limit: if output == "user" {
                    crate::fetch::USER_LIMIT
                } else {
                    crate::fetch::FILE_LIMIT
                },
            };
            let started = std::time::Instant::now();
            let response = crate::fetch::fetch(&request).await.map_err(ScriptError)?;
            let elapsed = started.elapsed();
            let size = response.body.len();
            let mut result = vec![("status".to_string(), Val::Str("finished".into()))];
            result.push(("downloaded".into(), Val::Num((size / 1024) as i64)));
            result.push(("total".into(), Val::Num((size / 1024) as i64)));
            result.push(("duration".into(), Val::Time(elapsed)));
            match output.as_str() {
                "file" => {
                    let name = get("dst-path")
                        .filter(|p| !p.is_empty())
                        .unwrap_or_else(|| crate::fetch::file_name_of(&url));
                    crate::fetch::write_file(&self.router, &name, &response.body)
                        .map_err(ScriptError)?;
                }
                "user" => {
                    let data = String::from_utf8_lossy(&response.body).into_owned();
                    result.push(("data".into(), Val::Str(data)));
                }
                _ => {}
            }
            if as_value {
                return Ok(Val::Map(result));
            }
            let mut text = String::new();
            for (k, v) in &result {
                let v = match (k.as_str(), v) {
                    ("downloaded" | "total", Val::Num(n)) => format!("{n}KiB"),
                    ("duration", Val::Time(d)) => {
                        crate::clock::format_interval(Duration::from_secs(d.as_secs().max(1)))
                    }
                    (_, v) => v.text(),
                };
                text.push_str(&format!("{k:>12}: {v}\n"));
            }
            self.print(&text);
            Ok(Val::Nothing)
        })
    }

    /// `/import file-name=x`: runs a file's script, in a scope of its own.
    fn import(&mut self, named: Vec<(String, Val)>) -> Fut<'_, Result<Val, ScriptError>> {
        Box::pin(async move {
            let name = named
                .iter()
                .find(|(k, _)| k == "file-name")
                .map(|(_, v)| v.text())
                .ok_or_else(|| ScriptError("failure: file-name not specified".into()))?;
            let contents = {
                let state = self.router.state();
                state
                    .files
                    .by_name(&name)
                    .map(|f| f.get("contents").unwrap_or_default().to_string())
            };
            let Some(contents) = contents else {
                return Err(ScriptError("failure: no such file".into()));
            };
            if self.imports >= MAX_IMPORT_DEPTH {
                return Err(ScriptError("failure: import nested too deeply".into()));
            }
            self.imports += 1;
            let out = self.import_lines(&contents).await;
            self.imports -= 1;
            out?;
            self.print("\nScript file loaded and executed successfully\n");
            Ok(Val::Nothing)
        })
    }
}

impl Run {
    /// Runs an imported file as RouterOS 7 does: line by line, each line (with what
    /// `;` puts on it, and the lines its open brackets span) compiled and run on its
    /// own, in a scope of its own (routeros-lsp's probes of 7.21.4: "in an imported
    /// file every line is a scope of its own"), path lines carrying over. The first
    /// line that fails stops the import; the lines before it stay done.
    fn import_lines<'a>(&'a mut self, contents: &'a str) -> Fut<'a, Result<(), ScriptError>> {
        Box::pin(async move {
            let mut cwd = Vec::new();
            let mut chunk = String::new();
            let mut first_line = 1;
            let lines: Vec<&str> = contents.split('\n').collect();
            let count = lines.len();
            for (i, line) in lines.into_iter().enumerate() {
                if chunk.is_empty() {
                    first_line = i + 1;
                }
                chunk.push_str(line.trim_end_matches('\r'));
                chunk.push('\n');
                let continued = line.trim_end().ends_with('\\');
                if (continued || parse::is_open(&chunk)) && i + 1 < count {
                    continue;
                }
                let text = std::mem::take(&mut chunk);
                if text.trim().is_empty() {
                    continue;
                }
                let block =
                    parse::parse_at(&text, first_line).map_err(|e| ScriptError(e.to_string()))?;
                check(&self.router, &block, &cwd).map_err(ScriptError)?;
                let mut scope = Scope::default();
                scope.frames.push(HashMap::new());
                self.block(&block, &mut scope, &mut cwd).await?;
            }
            Ok(())
        })
    }
}

fn bool_text(s: &str) -> Option<bool> {
    match s {
        "true" | "yes" => Some(true),
        "false" | "no" => Some(false),
        _ => None,
    }
}

/// An unquoted word as a value: numbers and `true`/`false` typed, the rest text.
fn literal(t: &str) -> Val {
    match t {
        "true" => Val::Bool(true),
        "false" => Val::Bool(false),
        t if !t.is_empty() && t.len() < 19 && t.bytes().all(|b| b.is_ascii_digit()) => t
            .parse()
            .map(Val::Num)
            .unwrap_or_else(|_| Val::Str(t.into())),
        t if crate::state::parse_id(t).is_some() => Val::Id(t.into()),
        t => Val::Str(t.into()),
    }
}

/// `1s`, `500ms`, `2m30s`, `00:00:05`, or seconds.
fn parse_delay(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse::<u64>().ok().map(Duration::from_millis);
    }
    crate::clock::parse_interval(s)
}

fn pick(v: Val, start: usize, end: Option<usize>) -> Val {
    match v {
        Val::Array(a) => match end {
            None => a.into_iter().nth(start).unwrap_or(Val::Nothing),
            Some(e) => Val::Array(
                a.into_iter()
                    .skip(start)
                    .take(e.saturating_sub(start))
                    .collect(),
            ),
        },
        other => {
            let s = other.text();
            let chars: Vec<char> = s.chars().collect();
            let end = end.unwrap_or(start + 1).min(chars.len());
            if start >= end {
                return Val::Str(String::new());
            }
            Val::Str(
                chars
                    .get(start..end)
                    .map(|c| c.iter().collect())
                    .unwrap_or_default(),
            )
        }
    }
}

fn binary(a: &Val, op: BinOp, b: &Val) -> Result<Val, ScriptError> {
    let nums = match (a, b) {
        (Val::Num(x), Val::Num(y)) => Some((*x, *y)),
        _ => None,
    };
    Ok(match op {
        BinOp::And => Val::Bool(a.truthy() && b.truthy()),
        BinOp::Or => Val::Bool(a.truthy() || b.truthy()),
        BinOp::Eq => Val::Bool(equal(a, b)),
        BinOp::Ne => Val::Bool(!equal(a, b)),
        BinOp::Lt | BinOp::Gt | BinOp::Le | BinOp::Ge => {
            let ord = match nums {
                Some((x, y)) => x.cmp(&y),
                None => a.text().cmp(&b.text()),
            };
            Val::Bool(match op {
                BinOp::Lt => ord.is_lt(),
                BinOp::Gt => ord.is_gt(),
                BinOp::Le => ord.is_le(),
                _ => ord.is_ge(),
            })
        }
        BinOp::Concat => Val::Str(format!("{}{}", a.text(), b.text())),
        BinOp::Add | BinOp::Sub => {
            let Some((x, y)) = nums else {
                return Err(ScriptError("invalid value for arithmetic".into()));
            };
            Val::Num(if op == BinOp::Add {
                x.saturating_add(y)
            } else {
                x.saturating_sub(y)
            })
        }
        BinOp::Index => {
            let key = b.text();
            match a {
                Val::Map(m) => m
                    .iter()
                    .find(|(k, _)| *k == key)
                    .map(|(_, v)| v.clone())
                    .unwrap_or(Val::Nothing),
                Val::Array(v) => key
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| v.get(i).cloned())
                    .unwrap_or(Val::Nothing),
                _ => Val::Nothing,
            }
        }
    })
}

fn equal(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Num(x), Val::Num(y)) => x == y,
        (Val::Bool(x), Val::Bool(y)) => x == y,
        (Val::Array(x), Val::Array(y)) => x == y,
        _ => a.text() == b.text(),
    }
}

/// Runs a whole script as `caller` (a scheduler entry's on-event): compiled first,
/// so a command the router does not have stops it before anything runs; a failing
/// command stops it unless `:do … on-error` catches it. What needs to wait (a
/// `/tool fetch`, a `:delay`) goes on in a task of its own; the rest is done when this
/// returns.
pub fn run(router: &Router, caller: &Caller, script: &str) {
    let block = match compile(router, script) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "script not run: it does not compile on this router");
            return;
        }
    };
    let mut run = Run::new(router, caller);
    let mut fut = Box::pin(async move {
        let mut cwd = Vec::new();
        if let Err(e) = run.run(&block, &mut cwd).await {
            tracing::warn!(error = %e, "script stopped");
        }
    });
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        // Outside a runtime (a unit test): run it to the end on one of its own.
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt.block_on(fut),
            Err(e) => tracing::warn!(error = %e, "script not run: no runtime"),
        }
        return;
    };
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    if fut.as_mut().poll(&mut cx).is_pending() {
        handle.spawn(fut);
    }
}

/// Runs an API sentence for a command that does I/O or runs a script (`/tool/fetch`,
/// `/import`): its `!re` row (fetch's `status`, `downloaded`, …) or its `!trap`.
pub async fn run_request(
    router: &Router,
    caller: &Caller,
    req: &Request,
) -> Result<menu::Outcome, menu::Trap> {
    let (_, verb) = menu::check(router, req)?;
    let named: Vec<(String, Val)> = req
        .attrs
        .iter()
        .map(|(k, v)| (k.clone(), Val::Str(v.clone())))
        .collect();
    let mut run = Run::new(router, caller);
    let result = match verb.as_str() {
        "fetch" => {
            let mut named = named;
            // The API always answers with the values, never the console's lines.
            if !named.iter().any(|(k, _)| k == "as-value") {
                named.push(("as-value".into(), Val::Str(String::new())));
            }
            run.fetch(named).await
        }
        _ => run.import(named).await,
    };
    match result {
        Ok(Val::Map(values)) => Ok(menu::Outcome {
            rows: vec![
                values
                    .into_iter()
                    .map(|(k, v)| {
                        let v = match v {
                            Val::Time(d) => crate::clock::format_interval(d),
                            other => other.text(),
                        };
                        (k, v)
                    })
                    .collect(),
            ],
            ret: None,
            is_print: false,
        }),
        Ok(_) => Ok(menu::Outcome::default()),
        Err(e) => Err(menu::Trap::new(e.0)),
    }
}

/// Compiles and runs `text` as `caller`, starting in directory `cwd` (which path
/// lines change): what the console does with a line. Returns what it printed and,
/// if it stopped, why.
pub async fn run_text(
    router: &Router,
    caller: &Caller,
    text: &str,
    cwd: &mut Vec<String>,
) -> (String, Result<(), ScriptError>) {
    let block = match compile_in(router, text, cwd) {
        Ok(b) => b,
        Err(e) => return (String::new(), Err(ScriptError(e))),
    };
    let mut run = Run::new(router, caller);
    let result = run.run(&block, cwd).await.map(|_| ());
    (run.output, result)
}

#[cfg(test)]
mod tests;
