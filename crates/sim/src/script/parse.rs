//! RouterOS script text into statements: words separated by spaces, statements by `;`
//! or new lines, `#` comments, `\` at a line's end continuing it, `"…"` strings with
//! `$var`, `$[…]` and `$(…)` inside, `[ … ]` substitutions, `( … )` expressions and
//! `{ … }` code blocks. What a statement's words mean (a path, a verb, arguments) is
//! decided when the script is compiled against a router ([`super::compile`]).

/// A parse failure: RouterOS's console words, with where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub column: usize,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "syntax error (line {} column {})",
            self.line, self.column
        )
    }
}

/// A list of statements (a script, a `{ … }` body, a `[ … ]` substitution).
pub type Block = Vec<Stmt>;

/// One command with its words, and where it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct Stmt {
    pub words: Vec<Word>,
    pub line: usize,
    pub column: usize,
    /// Where each word starts (line, column), for error messages.
    pub at: Vec<(usize, usize)>,
}

/// A word of a command.
#[derive(Debug, Clone, PartialEq)]
pub enum Word {
    /// An unquoted word without `=`: a path segment, a verb, a flag or a literal.
    Bare(String),
    /// `key=value`.
    Arg(String, Expr),
    /// A value on its own: a string, a variable, a substitution, an expression, a block.
    Value(Expr),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// Unquoted text (`yes`, `25s`, `*1A`, `8728,8729`).
    Lit(String),
    Str(Vec<Part>),
    Var(String),
    Sub(Block),
    Op(Box<Op>),
    Code(Block),
}

/// A piece of a quoted string.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Var(String),
    Sub(Block),
    Op(Box<Op>),
}

/// An expression inside `( … )`.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Val(Expr),
    Not(Box<Op>),
    Neg(Box<Op>),
    Bin(Box<Op>, BinOp, Box<Op>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Gt,
    Le,
    Ge,
    Concat,
    Add,
    Sub,
    /// `->`: an element of an array by key.
    Index,
}

/// Whether `text` leaves a quote or a bracket open (the console and `/import`
/// then take the lines that close it too).
pub fn is_open(text: &str) -> bool {
    let mut depth = 0i64;
    let mut quoted = false;
    let mut escaped = false;
    let mut comment = false;
    let mut line_start = true;
    for c in text.chars() {
        if comment {
            if c == '\n' {
                comment = false;
                line_start = true;
            }
            continue;
        }
        if escaped {
            escaped = false;
            continue;
        }
        let at_start = line_start;
        line_start = c == '\n' || (line_start && c.is_whitespace());
        match c {
            '#' if at_start && !quoted => comment = true,
            '\\' => escaped = true,
            '"' => quoted = !quoted,
            '{' | '[' | '(' if !quoted => depth += 1,
            '}' | ']' | ')' if !quoted => depth -= 1,
            _ => {}
        }
    }
    quoted || depth > 0
}

/// How deep brackets may nest (a hostile paste cannot exhaust the stack).
const MAX_DEPTH: usize = 64;

struct Parser {
    chars: Vec<char>,
    at: usize,
    line: usize,
    column: usize,
    depth: usize,
}

/// Parses a whole script.
pub fn parse(text: &str) -> Result<Block, SyntaxError> {
    parse_at(text, 1)
}

/// Parses text that starts on line `first_line` of a file (for error positions).
pub fn parse_at(text: &str, first_line: usize) -> Result<Block, SyntaxError> {
    let mut p = Parser {
        chars: text.chars().collect(),
        at: 0,
        line: first_line,
        column: 1,
        depth: 0,
    };
    let block = p.block(None)?;
    if p.peek().is_some() {
        return Err(p.error());
    }
    Ok(block)
}

fn is_bare_char(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, ';' | '"' | '[' | ']' | '{' | '}' | '(' | ')' | '$')
}

/// What a `$name` may hold (a name with other characters is written `$"a-b"`).
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

impl Parser {
    fn error(&self) -> SyntaxError {
        SyntaxError {
            line: self.line,
            column: self.column,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn peek_at(&self, n: usize) -> Option<char> {
        self.chars.get(self.at + n).copied()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    /// Skips spaces and tabs, and `\` followed by a line end (a continued line).
    fn skip_blanks(&mut self) {
        loop {
            match self.peek() {
                Some(' ' | '\t') => {
                    self.bump();
                }
                Some('\\') if matches!(self.peek_at(1), Some('\n' | '\r')) => {
                    self.bump();
                    if self.peek() == Some('\r') {
                        self.bump();
                    }
                    if self.peek() == Some('\n') {
                        self.bump();
                    }
                }
                _ => return,
            }
        }
    }

    /// Skips every kind of white space, new lines included (inside `( … )`).
    fn skip_all_blanks(&mut self) {
        while let Some(c) = self.peek() {
            let continued = c == '\\' && matches!(self.peek_at(1), Some('\n' | '\r'));
            if !(c.is_whitespace() || continued) {
                return;
            }
            self.bump();
        }
    }

    fn enter(&mut self) -> Result<(), SyntaxError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error());
        }
        Ok(())
    }

    /// Statements up to `close` (consumed) or the end of the text when `None`.
    fn block(&mut self, close: Option<char>) -> Result<Block, SyntaxError> {
        let mut out = Vec::new();
        loop {
            self.skip_blanks();
            match self.peek() {
                None if close.is_none() => return Ok(out),
                None => return Err(self.error()),
                Some(c) if Some(c) == close => {
                    self.bump();
                    return Ok(out);
                }
                Some(';' | '\n' | '\r') => {
                    self.bump();
                }
                Some('#') => {
                    while self.peek().is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                Some(']' | '}' | ')') => return Err(self.error()),
                Some(_) => out.push(self.statement(close)?),
            }
        }
    }

    fn statement(&mut self, close: Option<char>) -> Result<Stmt, SyntaxError> {
        let (line, column) = (self.line, self.column);
        let mut words = Vec::new();
        let mut at = Vec::new();
        loop {
            self.skip_blanks();
            match self.peek() {
                None | Some(';' | '\n' | '\r') => break,
                Some(c) if Some(c) == close => break,
                Some(']' | '}' | ')') => return Err(self.error()),
                Some(_) => {
                    at.push((self.line, self.column));
                    words.push(self.word()?);
                }
            }
        }
        Ok(Stmt {
            words,
            line,
            column,
            at,
        })
    }

    fn word(&mut self) -> Result<Word, SyntaxError> {
        match self.peek() {
            Some('"' | '$' | '[' | '(' | '{') => Ok(Word::Value(self.value()?)),
            _ => {
                let mut text = String::new();
                while let Some(c) = self.peek() {
                    if !is_bare_char(c) || (c == '=' && !text.is_empty()) {
                        break;
                    }
                    text.push(c);
                    self.bump();
                }
                if text.is_empty() {
                    return Err(self.error());
                }
                if self.peek() == Some('=') {
                    self.bump();
                    let value = match self.peek() {
                        None => Expr::Lit(String::new()),
                        Some(c) if c.is_whitespace() || c == ';' => Expr::Lit(String::new()),
                        Some(_) => self.value()?,
                    };
                    return Ok(Word::Arg(text, value));
                }
                Ok(Word::Bare(text))
            }
        }
    }

    /// One value: a string, `$var`, `[…]`, `(…)`, `{…}` or unquoted text.
    fn value(&mut self) -> Result<Expr, SyntaxError> {
        match self.peek() {
            Some('"') => Ok(Expr::Str(self.string()?)),
            Some('$') => self.dollar().map(|p| match p {
                Part::Var(v) => Expr::Var(v),
                Part::Sub(b) => Expr::Sub(b),
                Part::Op(o) => Expr::Op(o),
                Part::Text(t) => Expr::Lit(t),
            }),
            Some('[') => {
                self.bump();
                self.enter()?;
                let b = self.block(Some(']'))?;
                self.depth -= 1;
                Ok(Expr::Sub(b))
            }
            Some('{') => {
                self.bump();
                self.enter()?;
                let b = self.block(Some('}'))?;
                self.depth -= 1;
                Ok(Expr::Code(b))
            }
            Some('(') => {
                self.bump();
                self.enter()?;
                let op = self.expression()?;
                self.skip_all_blanks();
                if self.bump() != Some(')') {
                    return Err(self.error());
                }
                self.depth -= 1;
                Ok(Expr::Op(Box::new(op)))
            }
            _ => {
                let mut text = String::new();
                while let Some(c) = self.peek() {
                    if !is_bare_char(c) {
                        break;
                    }
                    text.push(c);
                    self.bump();
                }
                if text.is_empty() {
                    return Err(self.error());
                }
                Ok(Expr::Lit(text))
            }
        }
    }

    /// After `$`: a variable, `$[…]` or `$(…)`.
    fn dollar(&mut self) -> Result<Part, SyntaxError> {
        self.bump();
        match self.peek() {
            Some('[') => {
                self.bump();
                self.enter()?;
                let b = self.block(Some(']'))?;
                self.depth -= 1;
                Ok(Part::Sub(b))
            }
            Some('(') => {
                self.bump();
                self.enter()?;
                let op = self.expression()?;
                self.skip_all_blanks();
                if self.bump() != Some(')') {
                    return Err(self.error());
                }
                self.depth -= 1;
                Ok(Part::Op(Box::new(op)))
            }
            Some('"') => {
                // `$"name with spaces"`
                let parts = self.string()?;
                let name = parts
                    .into_iter()
                    .map(|p| match p {
                        Part::Text(t) => t,
                        _ => String::new(),
                    })
                    .collect();
                Ok(Part::Var(name))
            }
            _ => {
                let mut name = String::new();
                while let Some(c) = self.peek().filter(|c| is_name_char(*c)) {
                    name.push(c);
                    self.bump();
                }
                if name.is_empty() {
                    return Err(self.error());
                }
                Ok(Part::Var(name))
            }
        }
    }

    /// A quoted string, with its escapes and `$` parts.
    fn string(&mut self) -> Result<Vec<Part>, SyntaxError> {
        self.bump();
        let mut parts = Vec::new();
        let mut text = String::new();
        loop {
            match self.peek() {
                None => return Err(self.error()),
                Some('"') => {
                    self.bump();
                    break;
                }
                Some('\\') => {
                    self.bump();
                    let Some(c) = self.bump() else {
                        return Err(self.error());
                    };
                    match c {
                        'n' => text.push('\n'),
                        'r' => text.push('\r'),
                        't' => text.push('\t'),
                        'a' => text.push('\u{7}'),
                        'b' => text.push('\u{8}'),
                        'f' => text.push('\u{c}'),
                        'v' => text.push('\u{b}'),
                        '_' => text.push(' '),
                        '\n' => {}
                        c if c.is_ascii_hexdigit()
                            && self.peek().is_some_and(|d| d.is_ascii_hexdigit()) =>
                        {
                            let d = self.bump().unwrap_or('0');
                            let v = c.to_digit(16).unwrap_or(0) * 16 + d.to_digit(16).unwrap_or(0);
                            text.push(char::from_u32(v).unwrap_or('?'));
                        }
                        other => text.push(other),
                    }
                }
                Some('$')
                    if self
                        .peek_at(1)
                        .is_some_and(|c| is_name_char(c) || c == '[' || c == '(') =>
                {
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(self.dollar()?);
                }
                Some(c) => {
                    text.push(c);
                    self.bump();
                }
            }
        }
        if !text.is_empty() || parts.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(parts)
    }

    // Expressions, lowest precedence first: `||`, `&&`, comparisons, `.`, `+ -`,
    // unary `! -`, `->`.

    fn expression(&mut self) -> Result<Op, SyntaxError> {
        self.binary(0)
    }

    fn operator(&mut self, level: usize) -> Option<BinOp> {
        self.skip_all_blanks();
        let c = self.peek()?;
        let next = self.peek_at(1);
        let word_op = |p: &Self, w: &str| {
            let n = w.chars().count();
            (0..n).all(|i| p.peek_at(i) == w.chars().nth(i))
                && p.peek_at(n).is_some_and(|c| c.is_whitespace() || c == '(')
        };
        let (op, len) = match (level, c, next) {
            (0, '|', Some('|')) => (BinOp::Or, 2),
            (0, 'o', _) if word_op(self, "or") => (BinOp::Or, 2),
            (1, '&', Some('&')) => (BinOp::And, 2),
            (1, 'a', _) if word_op(self, "and") => (BinOp::And, 3),
            (2, '!', Some('=')) => (BinOp::Ne, 2),
            (2, '<', Some('=')) => (BinOp::Le, 2),
            (2, '>', Some('=')) => (BinOp::Ge, 2),
            (2, '=', _) => (BinOp::Eq, 1),
            (2, '<', _) => (BinOp::Lt, 1),
            (2, '>', _) => (BinOp::Gt, 1),
            (3, '.', _) => (BinOp::Concat, 1),
            (4, '+', _) => (BinOp::Add, 1),
            (4, '-', Some(n)) if n != '>' => (BinOp::Sub, 1),
            (5, '-', Some('>')) => (BinOp::Index, 2),
            _ => return None,
        };
        for _ in 0..len {
            self.bump();
        }
        Some(op)
    }

    fn binary(&mut self, level: usize) -> Result<Op, SyntaxError> {
        if level > 5 {
            return self.unary();
        }
        let mut left = if level == 5 {
            self.unary()?
        } else {
            self.binary(level + 1)?
        };
        while let Some(op) = self.operator(level) {
            let right = if level == 5 {
                self.unary()?
            } else {
                self.binary(level + 1)?
            };
            left = Op::Bin(Box::new(left), op, Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Op, SyntaxError> {
        self.skip_all_blanks();
        match self.peek() {
            Some('!') => {
                self.bump();
                self.enter()?;
                let inner = self.unary()?;
                self.depth -= 1;
                Ok(Op::Not(Box::new(inner)))
            }
            Some('-') if self.peek_at(1).is_some_and(|c| c.is_ascii_digit()) => {
                self.bump();
                Ok(Op::Neg(Box::new(self.unary()?)))
            }
            Some('"' | '$' | '[' | '(' | '{') => Ok(Op::Val(self.value()?)),
            Some(c) if c.is_ascii_alphanumeric() || c == '*' || c == ':' => {
                // A literal: a number, `true`, an address (dots between digits), `25s`.
                let mut text = String::new();
                while let Some(c) = self.peek() {
                    let dot_in_number = c == '.'
                        && text.chars().last().is_some_and(|p| p.is_ascii_digit())
                        && self.peek_at(1).is_some_and(|n| n.is_ascii_digit());
                    if c.is_ascii_alphanumeric()
                        || matches!(c, '*' | ':' | '/' | '_')
                        || dot_in_number
                    {
                        text.push(c);
                        self.bump();
                    } else {
                        break;
                    }
                }
                Ok(Op::Val(Expr::Lit(text)))
            }
            _ => Err(self.error()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_words_and_values() {
        let b = parse(
            ":local id [/interface wireguard find where comment=\"postern:wg\"]\n:if ([:len $id] = 0) do={ :set id [add name=wg comment=\"x $id y\"] } else={ :put \"have $id\" }; # c\n/ip firewall filter",
        )
        .unwrap();
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].words[0], Word::Bare(":local".into()));
        assert!(matches!(&b[0].words[2], Word::Value(Expr::Sub(s)) if s[0].words.len() == 5));
        let Word::Value(Expr::Op(op)) = &b[1].words[1] else {
            panic!("{:?}", b[1].words[1]);
        };
        assert!(matches!(**op, Op::Bin(_, BinOp::Eq, _)));
        let Word::Arg(k, Expr::Code(body)) = &b[1].words[2] else {
            panic!()
        };
        assert_eq!(k, "do");
        let Word::Value(Expr::Sub(add)) = &body[0].words[2] else {
            panic!()
        };
        assert_eq!(
            add[0].words[2],
            Word::Arg(
                "comment".into(),
                Expr::Str(vec![
                    Part::Text("x ".into()),
                    Part::Var("id".into()),
                    Part::Text(" y".into())
                ])
            )
        );
        assert_eq!(b[2].line, 3);
    }

    #[test]
    fn concatenation_and_literals() {
        let b = parse(":put (\"a\" . $b . 1.2.3.4 . \"\\\"q\\\"\")").unwrap();
        let Word::Value(Expr::Op(op)) = &b[0].words[1] else {
            panic!()
        };
        let Op::Bin(left, BinOp::Concat, right) = &**op else {
            panic!("{op:?}")
        };
        assert_eq!(
            **right,
            Op::Val(Expr::Str(vec![Part::Text("\"q\"".into())]))
        );
        let Op::Bin(_, BinOp::Concat, ip) = &**left else {
            panic!()
        };
        assert_eq!(**ip, Op::Val(Expr::Lit("1.2.3.4".into())));
    }

    #[test]
    fn broken_text_is_a_syntax_error_with_where() {
        assert_eq!(
            parse(":put \"open").unwrap_err(),
            SyntaxError {
                line: 1,
                column: 11
            }
        );
        assert!(parse(":if (1 = 1) do={ :put x").is_err());
        assert!(parse("]").is_err());
        let deep = "[".repeat(200);
        assert!(parse(&deep).is_err());
    }
}
