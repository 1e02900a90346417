//! The launcher's `winbox://` link parser (`launcher::link::parse`), which reads what a
//! web page or a mail handed the desktop. A link accepted under either policy carries
//! no character that could change how WinBox is started (nothing but the host, the port,
//! a plain user name and a ticket), its WinBox target reads back as a host and port, and
//! the lab policy accepts everything the strict one does; a refusal is an error, never a
//! panic.
#![no_main]

use launcher::link::{Policy, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let strict = parse(text, Policy { lab: false });
    let lab = parse(text, Policy { lab: true });
    if let Ok(link) = &strict {
        assert_eq!(lab.as_ref().ok(), Some(link), "lab mode refused a strict link");
    }
    for link in [strict, lab].into_iter().flatten() {
        for part in [&link.user, &link.ticket] {
            assert!(
                part.bytes().all(|b| b.is_ascii_graphic()
                    && !matches!(b, b'"' | b'\'' | b'`' | b'\\' | b'<' | b'>' | b'|')),
                "an accepted link carries {part:?}"
            );
        }
        assert!(link.port > 0);
        let target = link.connect_to();
        let (host, port) = target.rsplit_once(':').expect("HOST:PORT");
        assert_eq!(port.parse::<u16>().ok(), Some(link.port));
        assert!(!host.is_empty() && !host.contains(char::is_whitespace));
    }
});
