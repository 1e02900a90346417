//! The hostile links: each row a link template and a fragment of the message it must
//! be refused with. `{server}` and `{ticket}` stand for a real server's origin
//! (percent-encoded) and a real, unspent ticket, so that in the end-to-end test only the
//! hostile part can be what stops the link (and the ticket must still work afterwards).
//! Shared by the launcher's parser test and the end-to-end test (crates/cli).

/// `(link template, part of the refusal)`.
pub const HOSTILE_LINKS: &[(&str, &str)] = &[
    // Quotes, spaces and what a shell or an argument parser would split on.
    (
        "winbox://\"127.0.0.1\":8291?user=postern-a&ticket={ticket}&server={server}",
        "a quote at position 10",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a'&ticket={ticket}&server={server}",
        "a quote",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a`id`&ticket={ticket}&server={server}",
        "a quote",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern a&ticket={ticket}&server={server}",
        "a space",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a%20b&ticket={ticket}&server={server}",
        "the user contains a control, space or non-ASCII character",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&ticket={ticket}&server={server}&x=$(id)",
        "unknown parameter \"x\"",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a;id&ticket={ticket}&server={server}",
        "the user is not a RouterOS user name",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a|id&ticket={ticket}&server={server}",
        "a character not allowed",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a\\&ticket={ticket}&server={server}",
        "a character not allowed",
    ),
    // NUL and line breaks, raw or escaped.
    (
        "winbox://127.0.0.1:8291?user=postern-a%00&ticket={ticket}&server={server}",
        "the user contains a control",
    ),
    (
        "winbox://127.0.0.1%00:8291?user=postern-a&ticket={ticket}&server={server}",
        "the host may not contain percent-escapes",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a\n&ticket={ticket}&server={server}",
        "a line break",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a%0d%0aX&ticket={ticket}&server={server}",
        "the user contains a control",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&ticket={ticket}%0A&server={server}",
        "the ticket contains a control",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&ticket={ticket}&server={server}\r\n",
        "a line break",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&ticket={ticket}&server={server}\t",
        "a control character",
    ),
    (
        "winbox://127.0.0.1:8291?user=pöstern&ticket={ticket}&server={server}",
        "a non-ASCII character",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a%zz&ticket={ticket}&server={server}",
        "malformed percent-escape",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a%4&ticket={ticket}&server={server}",
        "malformed percent-escape",
    ),
    // Something WinBox would read as an option.
    (
        "winbox://-oProxyCommand=id:8291?user=postern-a&ticket={ticket}&server={server}",
        "the host may not start with '-'",
    ),
    (
        "winbox://--romon:8291?user=postern-a&ticket={ticket}&server={server}",
        "the host may not start with '-'",
    ),
    (
        "winbox://127.0.0.1:8291?user=--romon&ticket={ticket}&server={server}",
        "the user may not start with '-'",
    ),
    (
        "winbox://127.0.0.1:8291?user=%2D%2Dromon&ticket={ticket}&server={server}",
        "the user may not start with '-'",
    ),
    // User information and other authority tricks.
    (
        "winbox://admin@127.0.0.1:8291?user=postern-a&ticket={ticket}&server={server}",
        "user information",
    ),
    (
        "winbox://a@b@c:8291?user=postern-a&ticket={ticket}&server={server}",
        "user information",
    ),
    (
        "winbox://admin:pw@127.0.0.1:8291?user=postern-a&ticket={ticket}&server={server}",
        "user information",
    ),
    (
        "winbox://127.0.0.1:8291?user=a@b@c&ticket={ticket}&server={server}",
        "the user is not a RouterOS user name",
    ),
    (
        "winbox://127.0.0.1:8291/etc/passwd?user=postern-a&ticket={ticket}&server={server}",
        "has a path",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&ticket={ticket}&server={server}#frag",
        "fragment",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&user=admin&ticket={ticket}&server={server}",
        "the parameter user appears more than once",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&&ticket={ticket}&server={server}",
        "empty parameter",
    ),
    (
        "winbox://127.0.0.1:8291?user=&ticket={ticket}&server={server}",
        "the parameter \"user\" has no value",
    ),
    (
        "winbox://127.0.0.1:8291?ticket={ticket}&server={server}",
        "the link has no user parameter",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&server={server}",
        "the link has no ticket parameter",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&ticket={ticket}",
        "the link has no server parameter",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&ticket=short&server={server}",
        "the ticket is malformed",
    ),
    ("winbox://127.0.0.1:8291", "no ?user="),
    // Hosts: bad names, IPv4 and IPv6 forms.
    (
        "winbox://:8291?user=postern-a&ticket={ticket}&server={server}",
        "the host is empty",
    ),
    (
        "winbox://exa_mple.com:8291?user=postern-a&ticket={ticket}&server={server}",
        "not a valid host name",
    ),
    (
        "winbox://example-.com:8291?user=postern-a&ticket={ticket}&server={server}",
        "not a valid host name",
    ),
    (
        "winbox://256.1.1.1:8291?user=postern-a&ticket={ticket}&server={server}",
        "not a valid IPv4 address",
    ),
    (
        "winbox://127.0.0.01:8291?user=postern-a&ticket={ticket}&server={server}",
        "not a valid IPv4 address",
    ),
    (
        "winbox://127.1:8291?user=postern-a&ticket={ticket}&server={server}",
        "not a valid IPv4 address",
    ),
    (
        "winbox://2001:db8::1:8291?user=postern-a&ticket={ticket}&server={server}",
        "must be in brackets",
    ),
    (
        "winbox://::1:8291?user=postern-a&ticket={ticket}&server={server}",
        "must be in brackets",
    ),
    (
        "winbox://[2001:db8::1:8291?user=postern-a&ticket={ticket}&server={server}",
        "not a valid IPv6 address",
    ),
    (
        "winbox://[2001:db8::g]:8291?user=postern-a&ticket={ticket}&server={server}",
        "not a valid IPv6 address",
    ),
    (
        "winbox://[::1%25eth0]:8291?user=postern-a&ticket={ticket}&server={server}",
        "percent-escapes",
    ),
    (
        "winbox://[::1]8291?user=postern-a&ticket={ticket}&server={server}",
        "not a valid IPv6 address",
    ),
    // Ports.
    (
        "winbox://127.0.0.1?user=postern-a&ticket={ticket}&server={server}",
        "no port",
    ),
    (
        "winbox://127.0.0.1:0?user=postern-a&ticket={ticket}&server={server}",
        "port is not a number from 1 to 65535",
    ),
    (
        "winbox://127.0.0.1:65536?user=postern-a&ticket={ticket}&server={server}",
        "port is not a number from 1 to 65535",
    ),
    (
        "winbox://127.0.0.1:99999999999?user=postern-a&ticket={ticket}&server={server}",
        "port is not a number",
    ),
    (
        "winbox://127.0.0.1:-1?user=postern-a&ticket={ticket}&server={server}",
        "port is not a number",
    ),
    (
        "winbox://127.0.0.1:+8291?user=postern-a&ticket={ticket}&server={server}",
        "port is not a number",
    ),
    (
        "winbox://127.0.0.1:08291?user=postern-a&ticket={ticket}&server={server}",
        "port is not a number",
    ),
    (
        "winbox://127.0.0.1:82a1?user=postern-a&ticket={ticket}&server={server}",
        "port is not a number",
    ),
    // The server: only an https origin, or http on this machine.
    (
        "winbox://127.0.0.1:8291?user=postern-a&ticket={ticket}&server=http%3A%2F%2Fpostern.example.com",
        "plain HTTP",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&ticket={ticket}&server=ftp://127.0.0.1",
        "must be an https:// origin",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&ticket={ticket}&server=file:///etc/passwd",
        "must be an https:// origin",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&ticket={ticket}&server=https://evil@postern.example.com",
        "an origin alone",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&ticket={ticket}&server=https://postern.example.com/x",
        "an origin alone",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&ticket={ticket}&server=https://-x.example.com",
        "may not start with '-'",
    ),
    (
        "winbox://127.0.0.1:8291?user=postern-a&ticket={ticket}&server=https://postern.example.com:0",
        "port is not a number",
    ),
    // Other schemes and non-links.
    (
        "http://127.0.0.1:8291?user=postern-a&ticket={ticket}&server={server}",
        "not a winbox:// link",
    ),
    ("javascript://alert(1)", "not a winbox:// link"),
    (
        "winbox:127.0.0.1:8291?user=postern-a&ticket={ticket}&server={server}",
        "not a winbox:// link",
    ),
    ("", "the link is empty"),
];

/// An overlong link: a valid one padded past the limit.
pub fn overlong(server: &str, ticket: &str) -> String {
    let mut link =
        format!("winbox://127.0.0.1:8291?user=postern-a&ticket={ticket}&server={server}");
    link.push_str(&"&".repeat(2100));
    link
}

/// A template made a link.
pub fn fill(template: &str, server: &str, ticket: &str) -> String {
    template
        .replace("{server}", server)
        .replace("{ticket}", ticket)
}
