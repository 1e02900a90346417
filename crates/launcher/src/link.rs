//! Strict parsing of the links the launcher is handed:
//! `winbox://HOST:PORT?user=USER&ticket=TICKET&server=ORIGIN`. Anything else is refused
//! with a message saying what is wrong, before anything is started or sent: the link
//! comes from a browser, so it is hostile until every part has been checked.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longer links are refused before they are looked at.
pub const MAX_LINK_LEN: usize = 2048;
/// Longest user name accepted.
const MAX_USER_LEN: usize = 64;
/// A ticket's length bounds (Postern's are `wbt_` and 43 characters).
const TICKET_LEN: std::ops::RangeInclusive<usize> = 16..=128;

/// Why a link was refused, in words for the person who clicked it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("the link is longer than {MAX_LINK_LEN} characters")]
    TooLong,
    #[error("the link is empty")]
    Empty,
    #[error("the link contains {0} at position {1}")]
    BadCharacter(&'static str, usize),
    #[error("not a winbox:// link (it starts with {0:?})")]
    Scheme(String),
    #[error("the link has a fragment (#…), which a WinBox link never has")]
    Fragment,
    #[error("the link has no ?user=…&ticket=…&server=… part: open it from Postern's portal")]
    NoQuery,
    #[error("the link has a path after the port; expected winbox://HOST:PORT?…")]
    Path,
    #[error("user information before the host (as in a@b) is not allowed: the user goes in ?user=")]
    UserInfo,
    #[error("the {0} may not contain percent-escapes")]
    EscapedHost(&'static str),
    #[error("the {0} is empty")]
    EmptyHost(&'static str),
    #[error("the {0} may not start with '-'")]
    DashHost(&'static str),
    #[error("the {0} is not a valid IPv4 address")]
    BadIpv4(&'static str),
    #[error("the {0} is not a valid IPv6 address in brackets")]
    BadIpv6(&'static str),
    #[error("an IPv6 address must be in brackets, as in [2001:db8::1]:8291")]
    UnbracketedIpv6,
    #[error("the {0} is not a valid host name")]
    BadHostName(&'static str),
    #[error("the link has no port; expected winbox://HOST:PORT?…")]
    NoPort,
    #[error("the {0} port is not a number from 1 to 65535")]
    BadPort(&'static str),
    #[error("the link has an empty parameter")]
    EmptyParameter,
    #[error("the parameter {0:?} has no value")]
    NoValue(String),
    #[error("unknown parameter {0:?}")]
    UnknownParameter(String),
    #[error("the parameter {0} appears more than once")]
    Repeated(&'static str),
    #[error("the link has no {0} parameter")]
    Missing(&'static str),
    #[error("the {0} has a malformed percent-escape")]
    BadEscape(&'static str),
    #[error("the {0} contains a control, space or non-ASCII character")]
    ControlInValue(&'static str),
    #[error(
        "the user is not a RouterOS user name Postern makes (letters, digits, '.', '_', '-'; 1 to {MAX_USER_LEN})"
    )]
    BadUser,
    #[error("the user may not start with '-'")]
    DashUser,
    #[error("the ticket is malformed")]
    BadTicket,
    #[error("the server must be an https:// origin, as in server=https://postern.example.com")]
    ServerScheme,
    #[error(
        "the server must be an origin alone (scheme, host and port), with no path, query or user"
    )]
    ServerShape,
    #[error(
        "the server {0} is plain HTTP: only https:// is accepted, unless the server is on this machine (loopback) or the launcher runs with --lab"
    )]
    PlainHttp(String),
}

/// A host as the launcher accepts it: a DNS name, an IPv4 address, or an IPv6 address
/// (written in brackets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// Lowercase letters, digits, dots and inner hyphens.
    Name(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Host {
    /// Parses a host as written in a URL's authority (`[…]` around IPv6). `what` names
    /// it in errors ("host", "server host").
    pub fn parse(text: &str, what: &'static str) -> Result<Host, LinkError> {
        if text.is_empty() {
            return Err(LinkError::EmptyHost(what));
        }
        if text.contains('%') {
            return Err(LinkError::EscapedHost(what));
        }
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or(LinkError::BadIpv6(what))?;
            return inner
                .parse::<Ipv6Addr>()
                .map(Host::V6)
                .map_err(|_| LinkError::BadIpv6(what));
        }
        if text.contains(':') {
            return Err(LinkError::UnbracketedIpv6);
        }
        if text.starts_with('-') {
            return Err(LinkError::DashHost(what));
        }
        if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return parse_ipv4(text)
                .map(Host::V4)
                .ok_or(LinkError::BadIpv4(what));
        }
        if is_host_name(text) {
            Ok(Host::Name(text.to_ascii_lowercase()))
        } else {
            Err(LinkError::BadHostName(what))
        }
    }

    /// Whether the host is this machine: `localhost`, 127.0.0.0/8 or `::1`.
    pub fn is_loopback(&self) -> bool {
        match self {
            Host::Name(n) => n == "localhost",
            Host::V4(a) => a.is_loopback(),
            Host::V6(a) => a.is_loopback(),
        }
    }

    /// Whether `text` (a host as a server wrote it, without brackets) names this host.
    pub fn matches(&self, text: &str) -> bool {
        match self {
            Host::Name(n) => n.eq_ignore_ascii_case(text),
            Host::V4(a) => text.parse::<Ipv4Addr>().is_ok_and(|b| *a == b),
            Host::V6(a) => text
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse::<Ipv6Addr>()
                .is_ok_and(|b| *a == b),
        }
    }
}

impl fmt::Display for Host {
    /// As in a URL's authority: IPv6 in brackets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

/// Four decimal numbers 0–255, no leading zeros (`010` is octal to some parsers).
fn parse_ipv4(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part.starts_with('0')) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(octets))
}

/// A DNS name: labels of letters, digits and inner hyphens, 1–63 each, 253 in all, the
/// last not all digits.
fn is_host_name(text: &str) -> bool {
    if text.len() > 253 {
        return false;
    }
    let labels: Vec<&str> = text.split('.').collect();
    let well_formed = labels.iter().all(|l| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    well_formed
        && labels
            .last()
            .is_some_and(|l| !l.bytes().all(|b| b.is_ascii_digit()))
}

/// `1`–`65535`, decimal, no sign and no leading zero.
fn parse_port(text: &str, what: &'static str) -> Result<u16, LinkError> {
    let digits = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && !text.starts_with('0');
    match text.parse::<u16>() {
        Ok(port) if digits && port > 0 => Ok(port),
        _ => Err(LinkError::BadPort(what)),
    }
}

/// How the launcher reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Https,
    Http,
}

/// The Postern server a ticket is redeemed at: scheme, host and port, nothing else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub scheme: Scheme,
    pub host: Host,
    pub port: u16,
}

impl Origin {
    /// Parses `https://HOST[:PORT]` (or `http://`), with at most a trailing `/`.
    pub fn parse(text: &str) -> Result<Origin, LinkError> {
        let (scheme, rest) = if let Some(rest) = strip_prefix_ci(text, "https://") {
            (Scheme::Https, rest)
        } else if let Some(rest) = strip_prefix_ci(text, "http://") {
            (Scheme::Http, rest)
        } else {
            return Err(LinkError::ServerScheme);
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@', '\\']) {
            return Err(LinkError::ServerShape);
        }
        let default_port = match scheme {
            Scheme::Https => 443,
            Scheme::Http => 80,
        };
        let (host, port) = split_host_port(rest, "server host")?;
        let port = match port {
            Some(p) => parse_port(p, "server")?,
            None => default_port,
        };
        Ok(Origin { scheme, host, port })
    }

    /// The `Host` header's value: the host, and the port unless it is the scheme's own.
    pub fn authority(&self) -> String {
        match (self.scheme, self.port) {
            (Scheme::Https, 443) | (Scheme::Http, 80) => self.host.to_string(),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Https => "https",
            Scheme::Http => "http",
        };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// Splits `host[:port]` or `[v6][:port]`.
fn split_host_port<'a>(
    text: &'a str,
    what: &'static str,
) -> Result<(Host, Option<&'a str>), LinkError> {
    if text.starts_with('[') {
        let end = text.find(']').ok_or(LinkError::BadIpv6(what))?;
        let (host, rest) = text.split_at(end + 1);
        let port = match rest {
            "" => None,
            _ => Some(rest.strip_prefix(':').ok_or(LinkError::BadIpv6(what))?),
        };
        return Ok((Host::parse(host, what)?, port));
    }
    match text.matches(':').count() {
        0 => Ok((Host::parse(text, what)?, None)),
        1 => {
            let (host, port) = text.split_once(':').ok_or(LinkError::NoPort)?;
            Ok((Host::parse(host, what)?, Some(port)))
        }
        _ => Err(LinkError::UnbracketedIpv6),
    }
}

fn strip_prefix_ci<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| text.get(prefix.len()..))
        .flatten()
}

/// What the launcher may accept beyond the defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Accept a plain-HTTP server that is not on this machine (a lab-mode server).
    pub lab: bool,
}

/// A parsed, checked link.
#[derive(Clone, PartialEq, Eq)]
pub struct Link {
    pub host: Host,
    pub port: u16,
    pub user: String,
    /// The one-time ticket, redeemed at `server` for the password.
    pub ticket: String,
    pub server: Origin,
}

impl fmt::Debug for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("ticket", &"<redacted>")
            .field("server", &self.server)
            .finish()
    }
}

impl Link {
    /// WinBox's first argument: `HOST:PORT` (`[v6]:PORT`).
    pub fn connect_to(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Characters refused anywhere in a link, whatever the part: they have no place in a
/// WinBox link and are what quoting and injection tricks are made of.
fn refused_character(b: u8) -> Option<&'static str> {
    match b {
        b' ' => Some("a space"),
        b'\n' | b'\r' => Some("a line break"),
        0..=0x1f | 0x7f => Some("a control character"),
        0x80..=0xff => Some("a non-ASCII character"),
        b'"' | b'\'' | b'`' => Some("a quote"),
        b'\\' | b'<' | b'>' | b'^' | b'{' | b'}' | b'|' => {
            Some("a character not allowed in a link")
        }
        _ => None,
    }
}

/// Parses and checks a link under `policy`.
pub fn parse(text: &str, policy: Policy) -> Result<Link, LinkError> {
    if text.len() > MAX_LINK_LEN {
        return Err(LinkError::TooLong);
    }
    if text.is_empty() {
        return Err(LinkError::Empty);
    }
    if let Some((i, what)) = text
        .bytes()
        .enumerate()
        .find_map(|(i, b)| refused_character(b).map(|w| (i, w)))
    {
        return Err(LinkError::BadCharacter(what, i + 1));
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        let head: String = text.chars().take(12).collect();
        return Err(LinkError::Scheme(head));
    };
    if !scheme.eq_ignore_ascii_case("winbox") {
        let head: String = scheme.chars().take(12).collect();
        return Err(LinkError::Scheme(format!("{head}://")));
    }
    if rest.contains('#') {
        return Err(LinkError::Fragment);
    }
    let (authority, query) = rest.split_once('?').ok_or(LinkError::NoQuery)?;
    let authority = authority.strip_suffix('/').unwrap_or(authority);
    if authority.contains('@') {
        return Err(LinkError::UserInfo);
    }
    if authority.contains('/') {
        return Err(LinkError::Path);
    }
    let (host, port) = split_host_port(authority, "host")?;
    let port = parse_port(port.ok_or(LinkError::NoPort)?, "link's")?;

    let (mut user, mut ticket, mut server) = (None, None, None);
    for pair in query.split('&') {
        if pair.is_empty() {
            return Err(LinkError::EmptyParameter);
        }
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| LinkError::NoValue(pair.chars().take(20).collect()))?;
        let (slot, name) = match key {
            "user" => (&mut user, "user"),
            "ticket" => (&mut ticket, "ticket"),
            "server" => (&mut server, "server"),
            other => {
                return Err(LinkError::UnknownParameter(
                    other.chars().take(20).collect(),
                ));
            }
        };
        if slot.is_some() {
            return Err(LinkError::Repeated(name));
        }
        if value.is_empty() {
            return Err(LinkError::NoValue(name.to_owned()));
        }
        *slot = Some(decode(value, name)?);
    }
    let user = user.ok_or(LinkError::Missing("user"))?;
    let ticket = ticket.ok_or(LinkError::Missing("ticket"))?;
    let server = server.ok_or(LinkError::Missing("server"))?;

    check_user(&user)?;
    let ticket_ok = TICKET_LEN.contains(&ticket.len())
        && ticket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ticket_ok {
        return Err(LinkError::BadTicket);
    }
    let server = Origin::parse(&server)?;
    if server.scheme == Scheme::Http && !server.host.is_loopback() && !policy.lab {
        return Err(LinkError::PlainHttp(server.to_string()));
    }
    Ok(Link {
        host,
        port,
        user,
        ticket,
        server,
    })
}

/// A user name as Postern makes them, safe as WinBox's second argument.
pub fn check_user(user: &str) -> Result<(), LinkError> {
    if user.starts_with('-') {
        return Err(LinkError::DashUser);
    }
    let ok = !user.is_empty()
        && user.len() <= MAX_USER_LEN
        && user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(LinkError::BadUser) }
}

/// Percent-decodes a parameter's value; what it decodes to must be visible ASCII.
fn decode(value: &str, name: &'static str) -> Result<String, LinkError> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .ok_or(LinkError::BadEscape(name))?;
            let byte = u8::from_str_radix(hex, 16).map_err(|_| LinkError::BadEscape(name))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    if out.iter().any(|&b| !(0x21..=0x7e).contains(&b)) {
        return Err(LinkError::ControlInValue(name));
    }
    String::from_utf8(out).map_err(|_| LinkError::ControlInValue(name))
}
