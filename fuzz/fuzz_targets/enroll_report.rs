//! What an enrolling router posts to `POST /enroll/{token}` (`server::onboarding`): the
//! JSON body is read into `EnrollReport` and checked by `check_report`. A body that is
//! not the report is refused, never a panic; a report that passes has a 32-byte key
//! (base64, not all zeros), printable identity, version and board within their lengths,
//! a RouterOS 7 version, a serial of letters, digits and `-`, and ports from 1 up; and
//! checking it again gives the same answer.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use server::onboarding::{EnrollReport, check_report};

fuzz_target!(|data: &[u8]| {
    let Ok(report) = serde_json::from_slice::<EnrollReport>(data) else {
        return;
    };
    let first = check_report(&report);
    assert_eq!(first, check_report(&report), "checked twice, answered twice");
    let Ok(checked) = first else {
        return;
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(&checked.public_key)
        .expect("an accepted key is base64");
    assert_eq!(key.len(), 32);
    assert!(key.iter().any(|b| *b != 0));
    for (text, max) in [(&checked.identity, 255), (&checked.version, 64), (&checked.board, 64)] {
        assert!(!text.is_empty() && text.chars().count() <= max, "{text:?}");
        assert!(!text.chars().any(char::is_control), "{text:?}");
    }
    assert!(checked.version.starts_with("7."));
    if let Some(serial) = &checked.serial {
        assert!(serial.len() <= 64 && serial.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    }
    assert!(checked.api_port > 0 && checked.ssh_port > 0 && checked.winbox_port > 0);
});
