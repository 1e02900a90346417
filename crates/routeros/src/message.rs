//! The meaning of sentences: commands a client sends and replies a router sends back.
//!
//! A command is a path (`/user/add`), then attribute words (`=name=value`), API
//! attribute words (`.tag=7`, `=.proplist=name,group` is an ordinary attribute), and
//! query words (`?name=x`, `?-name`, `?<uid=5`, `?>uid=5`, `?#|`). A reply starts with
//! `!re`, `!done`, `!trap`, `!fatal` or `!empty`. Both sides split a sentence the same
//! way ([`Words`]), so the client and a server (the `sim`) can share this module
//! without sharing any logic about what commands do.

use bytes::{Bytes, BytesMut};

use crate::codec::{EncodeError, Sentence, encode_sentence};

/// `=key=value` attributes of a sentence, in the order they came.
///
/// Keys and values are bytes. Lookups by `&str` compare bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes(pub Vec<(Bytes, Bytes)>);

impl Attributes {
    /// The value of `key`, if present (the last one wins, as RouterOS does).
    pub fn get(&self, key: &str) -> Option<&[u8]> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.as_ref() == key.as_bytes())
            .map(|(_, v)| v.as_ref())
    }

    /// The value of `key` as text, if present and valid UTF-8.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v.as_ref()))
    }

    pub fn push(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        self.0.push((key.into(), value.into()));
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A sentence split into its parts, without judging what they mean.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Words {
    /// The first word: a command path or a reply type.
    pub head: Bytes,
    /// `=key=value` words.
    pub attributes: Attributes,
    /// API attributes (`.tag=…` and any other `.x=…`), tag excluded.
    pub api_attributes: Attributes,
    /// The `.tag=` value, if any.
    pub tag: Option<Bytes>,
    /// Query words, whole, with their leading `?`.
    pub queries: Vec<Bytes>,
    /// Words of no known form (the bare reason of a `!fatal`, for one).
    pub other: Vec<Bytes>,
}

/// Splits `word` (without its one-byte prefix) at the first `=`: `name=value`.
fn split_pair(word: &Bytes) -> (Bytes, Bytes) {
    match word.iter().position(|&b| b == b'=') {
        Some(i) => (word.slice(..i), word.slice(i + 1..)),
        None => (word.clone(), Bytes::new()),
    }
}

impl Words {
    pub fn parse(sentence: &Sentence) -> Words {
        let mut words = sentence.words.iter();
        let head = words.next().cloned().unwrap_or_default();
        let mut out = Words {
            head,
            ..Words::default()
        };
        for word in words {
            match word.first() {
                // `=key=value`; the key itself may start with a dot (`=.id=*1`).
                Some(b'=') => {
                    let (k, v) = split_pair(&word.slice(1..));
                    out.attributes.0.push((k, v));
                }
                Some(b'.') => {
                    let (k, v) = split_pair(&word.slice(1..));
                    if k.as_ref() == b"tag" {
                        out.tag = Some(v);
                    } else {
                        out.api_attributes.0.push((k, v));
                    }
                }
                Some(b'?') => out.queries.push(word.clone()),
                _ => out.other.push(word.clone()),
            }
        }
        out
    }
}

/// A command to send: a path, attributes, queries and an optional tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    words: Vec<Bytes>,
}

impl Command {
    /// A command for `path`, such as `/user/add` or `/system/resource/print`.
    pub fn new(path: impl AsRef<str>) -> Self {
        Self {
            words: vec![Bytes::copy_from_slice(path.as_ref().as_bytes())],
        }
    }

    /// Adds `=key=value`.
    pub fn attr(mut self, key: &str, value: impl AsRef<[u8]>) -> Self {
        let mut w = BytesMut::with_capacity(key.len() + value.as_ref().len() + 2);
        w.extend_from_slice(b"=");
        w.extend_from_slice(key.as_bytes());
        w.extend_from_slice(b"=");
        w.extend_from_slice(value.as_ref());
        self.words.push(w.freeze());
        self
    }

    /// Limits the properties a `print` returns: `=.proplist=a,b,c`.
    pub fn proplist(self, props: &[&str]) -> Self {
        self.attr(".proplist", props.join(","))
    }

    /// Adds a raw query word, such as `?name=x`, `?-name`, `?<uid=5` or `?#|`.
    pub fn query(mut self, word: impl AsRef<[u8]>) -> Self {
        let w = word.as_ref();
        let mut q = BytesMut::with_capacity(w.len() + 1);
        if !w.starts_with(b"?") {
            q.extend_from_slice(b"?");
        }
        q.extend_from_slice(w);
        self.words.push(q.freeze());
        self
    }

    /// `?key=value`: items whose `key` equals `value`.
    pub fn where_eq(self, key: &str, value: impl AsRef<[u8]>) -> Self {
        let mut q = Vec::with_capacity(key.len() + value.as_ref().len() + 2);
        q.extend_from_slice(b"?");
        q.extend_from_slice(key.as_bytes());
        q.push(b'=');
        q.extend_from_slice(value.as_ref());
        self.query(q)
    }

    /// Sets the `.tag=` word (a client normally leaves this to its connection).
    pub fn tag(mut self, tag: impl AsRef<str>) -> Self {
        self.words.retain(|w| !w.starts_with(b".tag="));
        self.words
            .push(Bytes::from(format!(".tag={}", tag.as_ref()).into_bytes()));
        self
    }

    /// The command's path.
    pub fn path(&self) -> &[u8] {
        self.words.first().map(|w| w.as_ref()).unwrap_or_default()
    }

    pub fn words(&self) -> &[Bytes] {
        &self.words
    }

    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        encode_sentence(&self.words, dst)
    }

    pub fn into_sentence(self) -> Sentence {
        Sentence::new(self.words)
    }
}

/// The type of a reply sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// One item of data.
    Re,
    /// The command finished; may carry `=ret=`.
    Done,
    /// The command failed; carries `=message=` and usually `=category=`.
    Trap,
    /// The router is closing the connection; carries a bare reason word.
    Fatal,
    /// The command found no data (RouterOS 7.18 and later); a `!done` follows, which is
    /// what ends the command.
    Empty,
}

impl ReplyKind {
    pub fn from_word(word: &[u8]) -> Option<Self> {
        Some(match word {
            b"!re" => Self::Re,
            b"!done" => Self::Done,
            b"!trap" => Self::Trap,
            b"!fatal" => Self::Fatal,
            b"!empty" => Self::Empty,
            _ => return None,
        })
    }

    pub fn word(self) -> &'static str {
        match self {
            Self::Re => "!re",
            Self::Done => "!done",
            Self::Trap => "!trap",
            Self::Fatal => "!fatal",
            Self::Empty => "!empty",
        }
    }

    /// Whether this reply ends its command: `!done` or `!fatal`. `!re`, `!trap` and
    /// `!empty` are each followed by more (RouterOS 7.18 sends `!empty` then `!done`).
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Fatal)
    }
}

/// The `=category=` of a `!trap`, as RouterOS documents them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrapCategory {
    MissingItemOrCommand = 0,
    ArgumentValueFailure = 1,
    Interrupted = 2,
    Scripting = 3,
    General = 4,
    Api = 5,
    Tty = 6,
    Return = 7,
}

impl TrapCategory {
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::MissingItemOrCommand,
            1 => Self::ArgumentValueFailure,
            2 => Self::Interrupted,
            3 => Self::Scripting,
            4 => Self::General,
            5 => Self::Api,
            6 => Self::Tty,
            7 => Self::Return,
            _ => return None,
        })
    }

    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Why a sentence from the router is not a reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    #[error("empty sentence where a reply was expected")]
    Empty,
    #[error("unknown reply type {0:?}")]
    UnknownType(String),
}

/// A reply from the router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: ReplyKind,
    pub tag: Option<Bytes>,
    pub attributes: Attributes,
    /// API attributes other than `.tag` (`.section=` and the like), kept, never required.
    pub api_attributes: Attributes,
    /// Bare words: the reason of a `!fatal`.
    pub other: Vec<Bytes>,
}

impl Reply {
    pub fn parse(sentence: &Sentence) -> Result<Reply, ReplyError> {
        if sentence.words.is_empty() {
            return Err(ReplyError::Empty);
        }
        let words = Words::parse(sentence);
        let kind = ReplyKind::from_word(&words.head).ok_or_else(|| {
            ReplyError::UnknownType(String::from_utf8_lossy(&words.head).into_owned())
        })?;
        Ok(Reply {
            kind,
            tag: words.tag,
            attributes: words.attributes,
            api_attributes: words.api_attributes,
            other: words.other,
        })
    }

    /// `=ret=` of a `!done` (the MD5 login challenge, or the id of an added item).
    pub fn ret(&self) -> Option<&[u8]> {
        self.attributes.get("ret")
    }

    /// `=message=` of a `!trap`, or the reason of a `!fatal`, as text.
    pub fn message(&self) -> Option<String> {
        match self.kind {
            ReplyKind::Fatal => {
                if let Some(m) = self.attributes.get("message") {
                    return Some(String::from_utf8_lossy(m).into_owned());
                }
                let parts: Vec<_> = self
                    .other
                    .iter()
                    .map(|w| String::from_utf8_lossy(w).into_owned())
                    .collect();
                (!parts.is_empty()).then(|| parts.join(" "))
            }
            _ => self
                .attributes
                .get("message")
                .map(|m| String::from_utf8_lossy(m).into_owned()),
        }
    }

    /// `=category=` of a `!trap`, when present and one of the eight known.
    pub fn category(&self) -> Option<TrapCategory> {
        self.attributes
            .get_str("category")
            .and_then(|c| c.parse::<u8>().ok())
            .and_then(TrapCategory::from_code)
    }

    /// Builds a reply sentence (for a server such as the sim).
    pub fn to_sentence(&self) -> Sentence {
        let mut words = vec![Bytes::from_static(self.kind.word().as_bytes())];
        words.extend(self.other.iter().cloned());
        for (k, v) in self.attributes.iter() {
            let mut w = Vec::with_capacity(k.len() + v.len() + 2);
            w.push(b'=');
            w.extend_from_slice(k);
            w.push(b'=');
            w.extend_from_slice(v);
            words.push(Bytes::from(w));
        }
        for (k, v) in self.api_attributes.iter() {
            let mut w = Vec::with_capacity(k.len() + v.len() + 2);
            w.push(b'.');
            w.extend_from_slice(k);
            w.push(b'=');
            w.extend_from_slice(v);
            words.push(Bytes::from(w));
        }
        if let Some(tag) = &self.tag {
            let mut w = Vec::with_capacity(tag.len() + 5);
            w.extend_from_slice(b".tag=");
            w.extend_from_slice(tag);
            words.push(Bytes::from(w));
        }
        Sentence::new(words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Decoder;

    fn sentence(words: &[&[u8]]) -> Sentence {
        Sentence::new(words.iter().map(|w| Bytes::copy_from_slice(w)).collect())
    }

    #[test]
    fn parses_each_reply_type() {
        let re = Reply::parse(&sentence(&[b"!re", b"=name=admin", b"=.id=*1", b".tag=3"])).unwrap();
        assert_eq!(re.kind, ReplyKind::Re);
        assert_eq!(re.attributes.get_str("name"), Some("admin"));
        assert_eq!(re.attributes.get_str(".id"), Some("*1"));
        assert_eq!(re.tag.as_deref(), Some(&b"3"[..]));

        let done = Reply::parse(&sentence(&[b"!done", b"=ret=abc123"])).unwrap();
        assert_eq!(done.kind, ReplyKind::Done);
        assert_eq!(done.ret(), Some(&b"abc123"[..]));

        let trap = Reply::parse(&sentence(&[
            b"!trap",
            b"=category=1",
            b"=message=failure: user with the same name already exists",
        ]))
        .unwrap();
        assert_eq!(trap.category(), Some(TrapCategory::ArgumentValueFailure));
        assert_eq!(
            trap.message().as_deref(),
            Some("failure: user with the same name already exists")
        );

        let fatal = Reply::parse(&sentence(&[b"!fatal", b"not logged in"])).unwrap();
        assert_eq!(fatal.kind, ReplyKind::Fatal);
        assert_eq!(fatal.message().as_deref(), Some("not logged in"));

        let empty = Reply::parse(&sentence(&[b"!empty", b".tag=9"])).unwrap();
        assert_eq!(empty.kind, ReplyKind::Empty);
        assert!(!empty.kind.is_final(), "a !done follows !empty");
        let done = Reply::parse(&sentence(&[b"!done", b".tag=9"])).unwrap();
        assert!(done.kind.is_final());
    }

    #[test]
    fn categories_outside_zero_to_seven_are_unknown() {
        for (raw, expected) in [
            (
                &b"=category=0"[..],
                Some(TrapCategory::MissingItemOrCommand),
            ),
            (b"=category=7", Some(TrapCategory::Return)),
            (b"=category=8", None),
            (b"=category=x", None),
        ] {
            let trap = Reply::parse(&sentence(&[b"!trap", raw])).unwrap();
            assert_eq!(trap.category(), expected, "{raw:?}");
        }
    }

    #[test]
    fn unknown_api_attributes_are_tolerated() {
        let re = Reply::parse(&sentence(&[b"!re", b".section=2", b"=a=b=c", b".tag=x"])).unwrap();
        assert_eq!(re.api_attributes.get_str("section"), Some("2"));
        // A value may itself contain `=`.
        assert_eq!(re.attributes.get_str("a"), Some("b=c"));
    }

    #[test]
    fn unknown_reply_type_is_an_error() {
        assert_eq!(
            Reply::parse(&sentence(&[b"!what"])),
            Err(ReplyError::UnknownType("!what".into()))
        );
        assert_eq!(Reply::parse(&Sentence::default()), Err(ReplyError::Empty));
    }

    #[test]
    fn command_words() {
        let cmd = Command::new("/user/print")
            .where_eq("name", "x")
            .query("?-disabled")
            .query("<uid=5")
            .query("?#|")
            .proplist(&["name", "group"])
            .tag("17");
        let words: Vec<&[u8]> = cmd.words().iter().map(|w| w.as_ref()).collect();
        assert_eq!(
            words,
            vec![
                &b"/user/print"[..],
                b"?name=x",
                b"?-disabled",
                b"?<uid=5",
                b"?#|",
                b"=.proplist=name,group",
                b".tag=17"
            ]
        );
        let parsed = Words::parse(&cmd.clone().into_sentence());
        assert_eq!(parsed.head.as_ref(), b"/user/print");
        assert_eq!(parsed.tag.as_deref(), Some(&b"17"[..]));
        assert_eq!(parsed.queries.len(), 4);
        assert_eq!(parsed.attributes.get_str(".proplist"), Some("name,group"));
    }

    #[test]
    fn reply_round_trips_through_the_codec() {
        let mut attrs = Attributes::default();
        attrs.push("message", "no such item");
        attrs.push("category", "0");
        let reply = Reply {
            kind: ReplyKind::Trap,
            tag: Some(Bytes::from_static(b"4")),
            attributes: attrs,
            api_attributes: Attributes::default(),
            other: vec![],
        };
        let mut buf = BytesMut::new();
        reply.to_sentence().encode(&mut buf).unwrap();
        let back = Reply::parse(&Decoder::default().decode(&mut buf).unwrap().unwrap()).unwrap();
        assert_eq!(back, reply);
    }
}
