//! Rules for the plain fields of routers, regions, sites and accounts: names, RouterOS
//! usernames, ports, tunnel addresses and entry-point host names.

use std::net::IpAddr;

use super::ValidationError;
use super::net::{AddressClass, classify};

/// A TCP port 1..=65535 for `field`.
pub fn port(field: &str, value: i64) -> Result<u16, ValidationError> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ValidationError::new(field, "must be between 1 and 65535"))
}

/// A display name: 1..=`max` characters, no control characters, no leading or trailing
/// white space.
fn display_name(field: &str, s: &str, max: usize) -> Result<String, ValidationError> {
    let count = s.chars().count();
    if count == 0 {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if count > max {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    if s.trim() != s {
        return Err(ValidationError::new(
            field,
            "must not start or end with white space",
        ));
    }
    Ok(s.to_owned())
}

/// A router's name (field `name`): 1..=64 printable characters.
pub fn router_name(s: &str) -> Result<String, ValidationError> {
    display_name("name", s, 64)
}

/// A site's name (field `site`): 1..=64 printable characters.
pub fn site_name(s: &str) -> Result<String, ValidationError> {
    display_name("site", s, 64)
}

/// An organisation's name (field `name`): 1..=64 printable characters.
pub fn org_name(s: &str) -> Result<String, ValidationError> {
    display_name("name", s, 64)
}

/// An API token's name (field `name`): 1..=64 printable characters.
pub fn token_name(s: &str) -> Result<String, ValidationError> {
    display_name("name", s, 64)
}

/// A RouterOS login name (field `username`): 1..=64 printable ASCII characters without
/// spaces, quotes, backslashes or `=` (which the API protocol uses as a separator).
pub fn routeros_username(s: &str) -> Result<String, ValidationError> {
    if s.is_empty() || s.len() > 64 {
        return Err(ValidationError::new(
            "username",
            "must be 1 to 64 characters",
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_graphic() && !b"\"'\\=`".contains(&b))
    {
        return Err(ValidationError::new(
            "username",
            "may hold only printable ASCII without spaces, quotes, backslashes or '='",
        ));
    }
    Ok(s.to_owned())
}

/// A Postern user name (field `username`): 1..=64 of letters, digits and `._@-`.
pub fn username(s: &str) -> Result<String, ValidationError> {
    if s.is_empty() || s.len() > 64 {
        return Err(ValidationError::new(
            "username",
            "must be 1 to 64 characters",
        ));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
    {
        return Err(ValidationError::new(
            "username",
            "may hold only letters, digits, '.', '_', '@' and '-'",
        ));
    }
    Ok(s.to_owned())
}

/// Where a router answers through its tunnel (field `tunnel_address`): any unicast
/// address, loopback included (the simulator and labs); not unspecified, multicast or
/// broadcast.
pub fn tunnel_address(s: &str) -> Result<IpAddr, ValidationError> {
    let addr: IpAddr = s
        .parse()
        .map_err(|_| ValidationError::new("tunnel_address", "not an IP address"))?;
    match classify(addr) {
        class @ (AddressClass::Unspecified | AddressClass::Multicast | AddressClass::Broadcast) => {
            Err(ValidationError::new(
                "tunnel_address",
                format!("{addr} is {}", class.describe()),
            ))
        }
        _ => Ok(addr),
    }
}

/// Where a directly reached router is registered (field `tunnel_address`): what
/// [`tunnel_address`] accepts, and like `allow_from` only a publicly routed address
/// unless `policy.lab_mode` lets loopback and private ones in. Postern sends the router's
/// management password there, so an address on the server's own machine or network is
/// a lab's choice, never an operator's; shared (100.64.0.0/10), link-local and other
/// special ranges are refused outright (a tunnelled router's address is Postern's to
/// assign, never typed).
pub fn router_address(s: &str, policy: &super::Policy) -> Result<IpAddr, ValidationError> {
    let addr = tunnel_address(s)?;
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        IpAddr::V4(_) => addr,
    };
    match classify(addr) {
        AddressClass::Public => Ok(addr),
        AddressClass::Private | AddressClass::Loopback if policy.lab_mode => Ok(addr),
        class => Err(ValidationError::new(
            "tunnel_address",
            format!(
                "{addr} is {}; only publicly routed addresses are allowed (loopback and private ones in lab mode)",
                class.describe()
            ),
        )),
    }
}

/// The SHA-256 fingerprint of a router's API-SSL certificate (field
/// `api_tls_fingerprint`): 64 hex digits, with or without `:` between bytes (as
/// `openssl x509 -fingerprint -sha256` prints them), in either case. Shown canonically:
/// lowercase, bytes separated by `:`.
pub fn tls_fingerprint(s: &str) -> Result<String, ValidationError> {
    let digits: String = s.chars().filter(|c| *c != ':').collect();
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(ValidationError::new(
            "api_tls_fingerprint",
            "must be the certificate's SHA-256: 64 hex digits, optionally separated by ':'",
        ));
    }
    let lower = digits.to_ascii_lowercase();
    let pairs: Vec<&str> = (0..32)
        .filter_map(|i| lower.get(i * 2..i * 2 + 2))
        .collect();
    Ok(pairs.join(":"))
}

/// A gateway's public host name or address (field `entry_point`): an IP address or a DNS
/// name of letters, digits and hyphens in labels of 1..=63, at most 253 characters.
pub fn entry_point(s: &str) -> Result<String, ValidationError> {
    if s.parse::<IpAddr>().is_ok() {
        return Ok(s.to_owned());
    }
    let bad = || ValidationError::new("entry_point", "must be a host name or an IP address");
    if s.is_empty() || s.len() > 253 {
        return Err(bad());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if s.split('.').all(label_ok) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: std::fmt::Debug + PartialEq>(
        got: Result<T, ValidationError>,
        expected: Result<T, (&str, &str)>,
    ) {
        match (got, expected) {
            (Ok(g), Ok(w)) => assert_eq!(g, w),
            (Err(e), Err((field, msg))) => {
                assert_eq!(e.field, field);
                assert!(e.message.contains(msg), "{:?} lacks {msg:?}", e.message);
            }
            (g, w) => panic!("got {g:?}, want {w:?}"),
        }
    }

    #[test]
    fn ports() {
        let msg = "must be between 1 and 65535";
        check(port("api_port", 0), Err(("api_port", msg)));
        check(port("api_port", 1), Ok(1));
        check(port("api_port", 65535), Ok(65535));
        check(port("api_port", 65536), Err(("api_port", msg)));
        check(port("ssh_port", -22), Err(("ssh_port", msg)));
    }

    #[test]
    fn names() {
        let long = "x".repeat(65);
        let max = "é".repeat(64);
        check(router_name("core-1"), Ok("core-1".to_owned()));
        check(router_name(&max), Ok(max.clone()));
        check(router_name(&long), Err(("name", "at most 64")));
        check(router_name(""), Err(("name", "must not be empty")));
        check(router_name("a\nb"), Err(("name", "control")));
        check(router_name(" a"), Err(("name", "white space")));
        check(site_name("Branch office"), Ok("Branch office".to_owned()));
        check(site_name(""), Err(("site", "empty")));
    }

    #[test]
    fn usernames() {
        check(routeros_username("admin"), Ok("admin".to_owned()));
        check(routeros_username("postern-a1"), Ok("postern-a1".to_owned()));
        check(routeros_username(""), Err(("username", "1 to 64")));
        check(
            routeros_username(&"a".repeat(65)),
            Err(("username", "1 to 64")),
        );
        check(routeros_username(&"a".repeat(64)), Ok("a".repeat(64)));
        for bad in ["a b", "a\"b", "a'b", "a=b", "a\\b", "ä"] {
            check(routeros_username(bad), Err(("username", "printable ASCII")));
        }
        check(
            username("alice@example.org"),
            Ok("alice@example.org".to_owned()),
        );
        check(username("al ice"), Err(("username", "letters, digits")));
    }

    #[test]
    fn tls_fingerprints_in_either_spelling() {
        let plain = "AB".repeat(32);
        let canonical = vec!["ab"; 32].join(":");
        check(tls_fingerprint(&plain), Ok(canonical.clone()));
        check(tls_fingerprint(&canonical), Ok(canonical.clone()));
        for bad in [
            "",
            "ab",
            &"ab".repeat(31),
            &"ab".repeat(33),
            &format!("g{}", &plain[1..]),
        ] {
            check(
                tls_fingerprint(bad),
                Err(("api_tls_fingerprint", "64 hex digits")),
            );
        }
    }

    #[test]
    fn router_addresses_obey_the_allow_from_classes() {
        let public = crate::rules::Policy { lab_mode: false };
        let lab = crate::rules::Policy { lab_mode: true };
        let rows: &[(&crate::rules::Policy, &str, Result<&str, &str>)] = &[
            (&public, "203.0.113.7", Ok("203.0.113.7")),
            (&public, "2001:db8::7", Ok("2001:db8::7")),
            (&public, "127.0.0.5", Err("a loopback address")),
            (&public, "::1", Err("a loopback address")),
            (&public, "::ffff:127.0.0.5", Err("a loopback address")),
            (&public, "10.0.0.1", Err("a private address")),
            (&public, "192.168.88.1", Err("a private address")),
            (&public, "fd00::1", Err("a private address")),
            (&public, "100.64.0.2", Err("shared address space")),
            (&public, "169.254.1.1", Err("link-local")),
            (&public, "0.0.0.0", Err("unspecified")),
            (&lab, "127.0.0.5", Ok("127.0.0.5")),
            (&lab, "::ffff:127.0.0.5", Ok("127.0.0.5")),
            (&lab, "10.0.0.1", Ok("10.0.0.1")),
            (&lab, "100.64.0.2", Err("shared address space")),
            (&lab, "169.254.1.1", Err("link-local")),
        ];
        for (policy, input, want) in rows {
            match (router_address(input, policy), want) {
                (Ok(got), Ok(w)) => assert_eq!(got.to_string(), *w, "{input}"),
                (Err(e), Err(w)) => {
                    assert_eq!(e.field, "tunnel_address", "{input}");
                    assert!(
                        e.message.contains(w),
                        "{input}: {:?} lacks {w:?}",
                        e.message
                    );
                }
                (got, want) => panic!("{input} ({policy:?}): got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn tunnel_addresses_and_entry_points() {
        check(
            tunnel_address("100.64.0.2"),
            Ok("100.64.0.2".parse().unwrap()),
        );
        check(
            tunnel_address("127.0.0.5"),
            Ok("127.0.0.5".parse().unwrap()),
        );
        check(
            tunnel_address("0.0.0.0"),
            Err(("tunnel_address", "unspecified")),
        );
        check(
            tunnel_address("224.0.0.1"),
            Err(("tunnel_address", "multicast")),
        );
        check(
            tunnel_address("255.255.255.255"),
            Err(("tunnel_address", "broadcast")),
        );
        check(
            tunnel_address("router.lan"),
            Err(("tunnel_address", "not an IP address")),
        );
        check(
            entry_point("US-East1.example.net"),
            Ok("us-east1.example.net".to_owned()),
        );
        check(entry_point("127.0.0.1"), Ok("127.0.0.1".to_owned()));
        check(entry_point("a..b"), Err(("entry_point", "host name")));
        check(entry_point("-a.b"), Err(("entry_point", "host name")));
        check(entry_point("a_b.c"), Err(("entry_point", "host name")));
        check(entry_point(""), Err(("entry_point", "host name")));
    }
}
