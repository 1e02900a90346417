//! `print` queries as RouterOS evaluates them: a stack of booleans per item.
//!
//! Each query word pushes one value: `?name=x` (the property equals `x`; `?name=`
//! also matches items where it is not set), `?name` (the
//! item has the property), `?-name` (it lacks it), `?<name=x` and `?>name=x` (less or
//! greater: numerically when both sides are numbers or `*` ids, as text otherwise).
//! `?#ops` works on the stack, left to right: `|` and `&` pop two values and push their
//! or/and, `!` negates the top, a number `n` followed by another operation pushes a copy
//! of the value `n` places from the top (0 is the top), a number at the end of the word
//! replaces the whole stack with that value, and `.` after anything but a number pushes a
//! copy of the top. After the last word the stack is and-ed; an empty stack is true.

/// Why a query cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("invalid query: {0}")]
    Invalid(String),
}

/// A parsed query word.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Word {
    Has(String),
    Lacks(String),
    Eq(String, String),
    Less(String, String),
    Greater(String, String),
    Ops(String),
}

fn parse_word(word: &str) -> Result<Word, QueryError> {
    let body = word
        .strip_prefix('?')
        .ok_or_else(|| QueryError::Invalid(word.into()))?;
    let pair = |s: &str| -> (String, Option<String>) {
        match s.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (s.to_string(), None),
        }
    };
    if let Some(ops) = body.strip_prefix('#') {
        return Ok(Word::Ops(ops.to_string()));
    }
    let bad = || QueryError::Invalid(word.into());
    if let Some(rest) = body.strip_prefix('-') {
        if rest.is_empty() {
            return Err(bad());
        }
        return Ok(Word::Lacks(rest.to_string()));
    }
    if let Some(rest) = body.strip_prefix('<') {
        let (k, v) = pair(rest);
        return Ok(Word::Less(k, v.ok_or_else(bad)?));
    }
    if let Some(rest) = body.strip_prefix('>') {
        let (k, v) = pair(rest);
        return Ok(Word::Greater(k, v.ok_or_else(bad)?));
    }
    // `?=name=x` is the long form of `?name=x`.
    let body = body.strip_prefix('=').unwrap_or(body);
    if body.is_empty() {
        return Err(bad());
    }
    Ok(match pair(body) {
        (k, Some(v)) => Word::Eq(k, v),
        (k, None) => Word::Has(k),
    })
}

/// A set of query words, checked once, then applied to each item.
#[derive(Debug, Clone, Default)]
pub struct Query {
    words: Vec<Word>,
}

fn numeric(s: &str) -> Option<i128> {
    if let Some(hex) = s.strip_prefix('*') {
        return i128::from_str_radix(hex, 16).ok();
    }
    s.parse::<i128>().ok()
}

fn less(a: &str, b: &str) -> bool {
    match (numeric(a), numeric(b)) {
        (Some(x), Some(y)) => x < y,
        _ => a < b,
    }
}

fn same(a: &str, b: &str) -> bool {
    // Booleans print as true/false; RouterOS also takes yes/no for them.
    fn norm(s: &str) -> &str {
        match s {
            "yes" => "true",
            "no" => "false",
            other => other,
        }
    }
    a == b || ((a == "true" || a == "false") && a == norm(b))
}

impl Query {
    pub fn parse<S: AsRef<str>>(words: &[S]) -> Result<Query, QueryError> {
        let words = words
            .iter()
            .map(|w| parse_word(w.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        // Evaluate once against an empty item so malformed stack programs fail before
        // any item is printed, as RouterOS refuses them up front.
        let q = Query { words };
        q.matches(|_| None)?;
        Ok(q)
    }

    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// Whether the item whose properties `get` returns passes the query.
    pub fn matches<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> Result<bool, QueryError> {
        let mut stack: Vec<bool> = Vec::new();
        for word in &self.words {
            match word {
                Word::Has(k) => stack.push(get(k).is_some()),
                Word::Lacks(k) => stack.push(get(k).is_none()),
                // `?name=` (empty) also matches items where `name` is not set.
                Word::Eq(k, v) if v.is_empty() => stack.push(get(k).is_none_or(str::is_empty)),
                Word::Eq(k, v) => stack.push(get(k).is_some_and(|x| same(x, v))),
                Word::Less(k, v) => stack.push(get(k).is_some_and(|x| less(x, v))),
                Word::Greater(k, v) => stack.push(get(k).is_some_and(|x| less(v, x))),
                Word::Ops(ops) => run_ops(ops, &mut stack)?,
            }
        }
        Ok(stack.iter().all(|b| *b))
    }
}

fn run_ops(ops: &str, stack: &mut Vec<bool>) -> Result<(), QueryError> {
    let err = || QueryError::Invalid(format!("?#{ops}"));
    let chars: Vec<char> = ops.chars().collect();
    let mut i = 0;
    let mut after_index = false;
    while let Some(&c) = chars.get(i) {
        if c.is_ascii_digit() {
            let start = i;
            while chars.get(i).is_some_and(|c| c.is_ascii_digit()) {
                i += 1;
            }
            let n: usize = chars
                .get(start..i)
                .unwrap_or_default()
                .iter()
                .collect::<String>()
                .parse()
                .map_err(|_| err())?;
            let pos = stack.len().checked_sub(1 + n).ok_or_else(err)?;
            let v = *stack.get(pos).ok_or_else(err)?;
            if i >= chars.len() {
                stack.clear();
            }
            stack.push(v);
            after_index = true;
            continue;
        }
        match c {
            '!' => {
                let top = stack.last_mut().ok_or_else(err)?;
                *top = !*top;
            }
            '&' | '|' => {
                let a = stack.pop().ok_or_else(err)?;
                let b = stack.pop().ok_or_else(err)?;
                stack.push(if c == '&' { a && b } else { a || b });
            }
            '.' => {
                if !after_index {
                    let top = *stack.last().ok_or_else(err)?;
                    stack.push(top);
                }
            }
            _ => return Err(err()),
        }
        after_index = false;
        i += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(props: &[(&'static str, &'static str)]) -> impl Fn(&str) -> Option<&'static str> {
        let props = props.to_vec();
        move |k| props.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
    }

    fn check(words: &[&str], props: &[(&'static str, &'static str)], expected: bool) {
        let q = Query::parse(words).unwrap();
        assert_eq!(
            q.matches(item(props)).unwrap(),
            expected,
            "{words:?} on {props:?}"
        );
    }

    #[test]
    fn simple_words() {
        let a = [("name", "a"), (".id", "*A"), ("uid", "5")];
        check(&[], &a, true);
        check(&["?name=a"], &a, true);
        check(&["?=name=a"], &a, true);
        check(&["?name=b"], &a, false);
        check(&["?name"], &a, true);
        check(&["?comment"], &a, false);
        check(&["?-comment"], &a, true);
        check(&["?-name"], &a, false);
        check(&["?<uid=10"], &a, true);
        check(&["?>uid=10"], &a, false);
        check(&["?>.id=*9"], &a, true);
        check(&["?<.id=*9"], &a, false);
        check(&["?name=a", "?uid=5"], &a, true);
        check(&["?name=a", "?uid=6"], &a, false);
        check(&["?comment="], &a, true);
        check(&["?name="], &a, false);
    }

    #[test]
    fn stack_operations() {
        let a = [("name", "a"), ("type", "x")];
        check(&["?name=a", "?name=b", "?#|"], &a, true);
        check(&["?name=c", "?name=b", "?#|"], &a, false);
        check(&["?name=a", "?type=y", "?#&"], &a, false);
        check(&["?name=a", "?#!"], &a, false);
        check(&["?name=b", "?#!"], &a, true);
        // `.` duplicates the top, then `&` leaves it as it was.
        check(&["?name=a", "?#.&"], &a, true);
        // A trailing index replaces the whole stack: here with the false value below.
        check(&["?name=b", "?name=a", "?#1"], &a, false);
        check(&["?name=a", "?name=b", "?#1"], &a, true);
        // An index before another operation pushes a copy: (F T) -> (F T F) -> or ->
        // (F T), and-ed: false.
        check(&["?name=b", "?name=a", "?#1|"], &a, false);
        // (T F) -> (T F T) -> or -> (T T): true.
        check(&["?name=a", "?name=b", "?#1|"], &a, true);
        // `.` right after an index does nothing: (F T) -> (F T F) -> and -> (F F).
        check(&["?name=b", "?name=a", "?#1.&"], &a, false);
        // Three-way or, as RouterOS's documentation writes it.
        check(&["?type=z", "?type=y", "?type=x", "?#||"], &a, true);
    }

    #[test]
    fn malformed_programs_are_refused() {
        assert!(Query::parse(&["?#|"]).is_err());
        assert!(Query::parse(&["?name=a", "?#&"]).is_err());
        assert!(Query::parse(&["?#x"]).is_err());
        assert!(Query::parse(&["?"]).is_err());
        assert!(Query::parse(&["?<uid"]).is_err());
    }
}
