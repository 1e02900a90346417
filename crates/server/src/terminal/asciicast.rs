//! The recording format, asciicast v2, sans I/O: a header line (`version`, `width`,
//! `height`, `timestamp`, `title`), then one JSON array per event, `[seconds, "o", text]`
//! for output and `[seconds, "r", "COLSxROWS"]` for a resize. Keystrokes are not
//! recorded (they would hold whatever passwords were typed). SSH output may split a
//! UTF-8 character between packets: the tail is held until the next packet. Time is a
//! parameter (the offset from the start); the bridge decides when chunks go to the store.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

/// Said in the recording (and to the browser) when the cap is reached.
pub const CAP_NOTICE: &str = "\r\n[postern: the recording limit is reached; the session ends]\r\n";

/// The recording is full: nothing more was added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the recording reached its size limit")]
pub struct Full;

/// An asciicast v2 recording being written.
#[derive(Debug)]
pub struct Recorder {
    /// Lines not yet handed out as a chunk.
    pending: String,
    /// The start of a UTF-8 character whose other bytes have not arrived.
    carry: Vec<u8>,
    /// Bytes produced so far (header included), against `cap`.
    written: usize,
    cap: usize,
    full: bool,
    next_seq: u32,
}

impl Recorder {
    /// A recording of a `width`×`height` terminal started at `timestamp`, at most `cap`
    /// bytes (the header always fits).
    pub fn new(width: u16, height: u16, timestamp: DateTime<Utc>, title: &str, cap: usize) -> Self {
        let header = json!({
            "version": 2,
            "width": width,
            "height": height,
            "timestamp": timestamp.timestamp(),
            "title": title,
            "env": { "TERM": "xterm-256color" },
        });
        let mut pending = header.to_string();
        pending.push('\n');
        Self {
            written: pending.len(),
            pending,
            carry: Vec::new(),
            cap,
            full: false,
            next_seq: 0,
        }
    }

    /// Adds output the terminal showed `at` after the start.
    pub fn output(&mut self, at: Duration, bytes: &[u8]) -> Result<(), Full> {
        let mut joined = std::mem::take(&mut self.carry);
        joined.extend_from_slice(bytes);
        let (text, carry) = decode(&joined);
        self.carry = carry;
        if text.is_empty() {
            return if self.full { Err(Full) } else { Ok(()) };
        }
        self.event(at, "o", &text)
    }

    /// Adds a resize to `cols`×`rows`.
    pub fn resize(&mut self, at: Duration, cols: u16, rows: u16) -> Result<(), Full> {
        self.event(at, "r", &format!("{cols}x{rows}"))
    }

    /// The recording is full (the last event was refused).
    pub fn is_full(&self) -> bool {
        self.full
    }

    /// Bytes waiting for the store.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The next chunk for the store, numbered from 0, if anything is waiting.
    pub fn take_chunk(&mut self) -> Option<(u32, String)> {
        if self.pending.is_empty() {
            return None;
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        Some((seq, std::mem::take(&mut self.pending)))
    }

    /// Ends the recording: a held partial character is written as U+FFFD, and when the
    /// cap was reached, the notice saying so (the cap keeps room for it).
    pub fn finish(&mut self, at: Duration) {
        if !self.carry.is_empty() {
            self.carry.clear();
            let _ = self.event(at, "o", "\u{fffd}");
        }
        if self.full {
            let line = line(at, "o", CAP_NOTICE);
            self.written += line.len();
            self.pending.push_str(&line);
        }
    }

    fn event(&mut self, at: Duration, kind: &str, data: &str) -> Result<(), Full> {
        if self.full {
            return Err(Full);
        }
        let line = line(at, kind, data);
        let room = self.cap.saturating_sub(CAP_NOTICE.len() + 64);
        if self.written + line.len() > room {
            self.full = true;
            return Err(Full);
        }
        self.written += line.len();
        self.pending.push_str(&line);
        Ok(())
    }
}

/// One event line: `[seconds, kind, data]` and a newline.
fn line(at: Duration, kind: &str, data: &str) -> String {
    let data = serde_json::Value::String(data.to_owned());
    format!("[{:.6}, \"{kind}\", {data}]\n", at.as_secs_f64())
}

/// The text of `bytes`, invalid sequences as U+FFFD, and the bytes of a character cut
/// off at the end (to be completed by the next packet).
fn decode(bytes: &[u8]) -> (String, Vec<u8>) {
    let mut text = String::with_capacity(bytes.len());
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                text.push_str(s);
                return (text, Vec::new());
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                text.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    // A character cut off at the end: keep it for the next packet.
                    None => return (text, after.to_vec()),
                    Some(n) => {
                        text.push('\u{fffd}');
                        rest = after.get(n..).unwrap_or_default();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(r: &mut Recorder) -> Vec<serde_json::Value> {
        let (_, text) = r.take_chunk().unwrap();
        text.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn start() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn header_then_output_and_resize_events() {
        let mut r = Recorder::new(120, 40, start(), "router r1", 1 << 20);
        r.output(
            Duration::from_millis(1500),
            b"hello \x1b[1mworld\x1b[0m\r\n",
        )
        .unwrap();
        r.resize(Duration::from_secs(2), 100, 30).unwrap();
        let l = lines(&mut r);
        assert_eq!(l[0]["version"], 2);
        assert_eq!(
            (l[0]["width"].as_u64(), l[0]["height"].as_u64()),
            (Some(120), Some(40))
        );
        assert_eq!(l[0]["timestamp"], start().timestamp());
        assert_eq!(l[0]["title"], "router r1");
        assert_eq!(l[1][0].as_f64(), Some(1.5));
        assert_eq!(l[1][1], "o");
        assert_eq!(l[1][2], "hello \u{1b}[1mworld\u{1b}[0m\r\n");
        assert_eq!(l[2], json!([2.0, "r", "100x30"]));
        assert!(r.take_chunk().is_none(), "a chunk is handed out once");
        r.output(Duration::from_secs(3), b"x").unwrap();
        assert_eq!(r.take_chunk().unwrap().0, 1, "chunks are numbered");
    }

    #[test]
    fn a_character_split_between_packets_is_joined() {
        let mut r = Recorder::new(80, 24, start(), "t", 1 << 20);
        let e_acute = "é".as_bytes();
        r.output(Duration::ZERO, &[b'a', e_acute[0]]).unwrap();
        r.output(Duration::from_millis(1), &[e_acute[1], b'b'])
            .unwrap();
        r.output(Duration::from_millis(2), &[0xff, b'c']).unwrap();
        let l = lines(&mut r);
        assert_eq!(l[1][2], "a");
        assert_eq!(l[2][2], "éb");
        assert_eq!(l[3][2], "\u{fffd}c");
        // A character still cut off at the end is written as U+FFFD.
        r.output(Duration::from_millis(3), &[0xe2, 0x82]).unwrap();
        assert!(r.take_chunk().is_none());
        r.finish(Duration::from_millis(4));
        assert_eq!(lines(&mut r)[0][2], "\u{fffd}");
    }

    #[test]
    fn the_cap_stops_recording_and_says_so() {
        let mut r = Recorder::new(80, 24, start(), "t", 1024);
        let mut refused = None;
        for i in 0..100u64 {
            if r.output(Duration::from_millis(i), &[b'x'; 40]).is_err() {
                refused = Some(i);
                break;
            }
        }
        assert!(refused.is_some() && r.is_full());
        assert_eq!(r.resize(Duration::from_secs(9), 1, 1), Err(Full));
        r.finish(Duration::from_secs(10));
        let (_, text) = r.take_chunk().unwrap();
        assert!(text.len() <= 1024, "{} bytes", text.len());
        let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last[2], CAP_NOTICE);
    }
}
