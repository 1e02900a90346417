//! The link parser against the table of hostile links (each refused with its message)
//! and the links Postern makes (each accepted, with its parts).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use common::hostile::{HOSTILE_LINKS, fill, overlong};
use postern_launcher::link::{Host, Policy, Scheme, parse};

const SERVER: &str = "http%3A%2F%2F127.0.0.1%3A8080";
const TICKET: &str = "wbt_Abcdefghijklmnopqrstuvwxyz0123456789-_ABCDEF";

/// `input` is refused with a message containing `expected`.
fn check_refused(input: &str, expected: &str) {
    match parse(input, Policy::default()) {
        Ok(link) => panic!("accepted {input:?}: {link:?}"),
        Err(e) => assert!(
            e.to_string().contains(expected),
            "{input:?}: {e} (expected {expected:?})"
        ),
    }
}

#[test]
fn every_hostile_link_is_refused_with_its_reason() {
    for (template, expected) in HOSTILE_LINKS {
        check_refused(&fill(template, SERVER, TICKET), expected);
    }
    check_refused(&overlong(SERVER, TICKET), "longer than 2048");
}

#[test]
fn no_refusal_repeats_the_ticket() {
    for (template, _) in HOSTILE_LINKS {
        if let Err(e) = parse(&fill(template, SERVER, TICKET), Policy::default()) {
            assert!(!e.to_string().contains(TICKET), "{e}");
        }
    }
}

#[test]
fn the_links_postern_makes_are_accepted() {
    let link = parse(
        &format!("winbox://127.0.0.1:49159?user=postern-k3x9q2mz&ticket={TICKET}&server={SERVER}"),
        Policy::default(),
    )
    .unwrap();
    assert_eq!(link.host, Host::V4("127.0.0.1".parse().unwrap()));
    assert_eq!(link.port, 49159);
    assert_eq!(link.user, "postern-k3x9q2mz");
    assert_eq!(link.ticket, TICKET);
    assert_eq!(link.server.to_string(), "http://127.0.0.1:8080");
    assert_eq!(link.connect_to(), "127.0.0.1:49159");
    assert!(!format!("{link:?}").contains(TICKET));

    // A name, any case, a trailing slash, the parameters in another order, the server
    // not escaped.
    let link = parse(
        &format!("WinBox://GW-1.Example.NET:8291/?server=https://Postern.example.com/&ticket={TICKET}&user=ops.1_a"),
        Policy::default(),
    )
    .unwrap();
    assert_eq!(link.host, Host::Name("gw-1.example.net".into()));
    assert_eq!(link.server.scheme, Scheme::Https);
    assert_eq!(link.server.port, 443);
    assert_eq!(link.server.to_string(), "https://postern.example.com");

    // A bracketed IPv6 literal, and an HTTPS server on another port.
    let link = parse(
        &format!("winbox://[2001:db8::1]:8291?user=u&ticket={TICKET}&server=https%3A%2F%2F%5B2001%3Adb8%3A%3A2%5D%3A8443"),
        Policy::default(),
    )
    .unwrap();
    assert_eq!(link.connect_to(), "[2001:db8::1]:8291");
    assert_eq!(link.server.authority(), "[2001:db8::2]:8443");
}

#[test]
fn plain_http_is_for_this_machine_or_the_lab() {
    let remote =
        format!("winbox://10.0.0.1:8291?user=u&ticket={TICKET}&server=http://10.0.0.2:8080");
    check_refused(&remote, "plain HTTP");
    assert!(parse(&remote, Policy { lab: true }).is_ok());
    for local in [
        "http://localhost:8080",
        "http://127.9.9.9",
        "http://[::1]:8080",
    ] {
        let link = format!("winbox://10.0.0.1:8291?user=u&ticket={TICKET}&server={local}");
        assert!(parse(&link, Policy::default()).is_ok(), "{local}");
    }
}
