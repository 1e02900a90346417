//! Terminal recordings (`server::terminal::asciicast`): whatever bytes a router's shell
//! prints, in whatever packets, with resizes between, the recording reads back as
//! asciicast v2: a header, then `[seconds, "o"|"r", text]` lines with times that never go
//! back, within the size cap. Its output is the shell's bytes as UTF-8 (invalid
//! sequences as U+FFFD, a character split between packets joined): all of it, or while
//! the cap was not reached, the start of it; its resizes are the ones made.
#![no_main]

use std::time::Duration;

use chrono::DateTime;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use server::terminal::asciicast::{CAP_NOTICE, Recorder};

fuzz_target!(|data: &[u8]| {
    let Some((cap_bytes, mut rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let cap = 512 + usize::from(u16::from_le_bytes(*cap_bytes));
    let start = DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default();
    let mut rec = Recorder::new(80, 24, start, "fuzz \u{1b}[31m\"title\"", cap);

    // Operations: a byte saying what (and how long), then its bytes.
    let mut fed = Vec::new();
    let mut resizes = Vec::new();
    let mut full = false;
    let mut at = Duration::ZERO;
    let mut chunks = String::new();
    while let Some((&op, tail)) = rest.split_first() {
        at += Duration::from_millis(u64::from(op & 0x0F) * 37);
        if op & 0xF0 == 0xF0 {
            let Some(([c, r], tail)) = tail.split_first_chunk::<2>().map(|(a, t)| (*a, t)) else {
                break;
            };
            rest = tail;
            let (cols, rows) = (u16::from(c) + 2, u16::from(r) + 1);
            if rec.resize(at, cols, rows).is_err() {
                full = true;
                break;
            }
            resizes.push(format!("{cols}x{rows}"));
        } else {
            let n = usize::from(op >> 4).min(tail.len());
            let (packet, tail) = tail.split_at(n);
            rest = tail;
            if rec.output(at, packet).is_err() {
                full = true;
                break;
            }
            fed.extend_from_slice(packet);
        }
        if op & 0x08 != 0 {
            if let Some((_, chunk)) = rec.take_chunk() {
                chunks.push_str(&chunk);
            }
        }
    }
    assert_eq!(full, rec.is_full());
    rec.finish(at);
    // Finishing may reach the cap too (a character left incomplete is written as U+FFFD).
    let full = rec.is_full();
    while let Some((_, chunk)) = rec.take_chunk() {
        chunks.push_str(&chunk);
    }

    assert!(
        chunks.len() <= cap,
        "{} bytes over a cap of {cap}",
        chunks.len()
    );
    let mut lines = chunks.lines();
    let header: Value = serde_json::from_str(lines.next().expect("a header")).expect("JSON");
    assert_eq!(header["version"], 2);
    assert_eq!(
        (header["width"].as_u64(), header["height"].as_u64()),
        (Some(80), Some(24))
    );
    let mut shown = String::new();
    let mut resized = Vec::new();
    let mut last = 0.0f64;
    for line in lines {
        let event: Value = serde_json::from_str(line).expect("an event is JSON");
        let t = event[0].as_f64().expect("an event's time");
        assert!(t >= last, "time went back: {t} after {last}");
        last = t;
        let text = event[2].as_str().expect("an event's text");
        match event[1].as_str() {
            Some("o") => shown.push_str(text),
            Some("r") => resized.push(text.to_string()),
            other => panic!("event kind {other:?}"),
        }
    }
    let expected = String::from_utf8_lossy(&fed);
    if full {
        let shown = shown.strip_suffix(CAP_NOTICE).expect("the cap is said");
        assert!(
            expected.starts_with(shown),
            "{shown:?} is not the start of {expected:?}"
        );
    } else {
        assert_eq!(shown, expected);
    }
    assert_eq!(resized, resizes);
});
