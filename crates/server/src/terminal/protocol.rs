//! What the browser and the bridge say to each other over the WebSocket. From the
//! browser: binary frames are keystrokes and pastes (bytes for the shell), text frames
//! are JSON control messages, of which only `{"type":"resize","cols":C,"rows":R}` exists;
//! anything else is refused and ends the session. To the browser: binary frames are the
//! shell's output, text frames JSON notes (`status` while connecting, `end` with the
//! reason). Every value from the browser is checked here before anything acts on it.

use serde::Deserialize;

/// The terminal sizes accepted, in columns and rows.
pub const COLS: std::ops::RangeInclusive<u16> = 2..=500;
pub const ROWS: std::ops::RangeInclusive<u16> = 1..=200;

/// The largest message the browser may send (a paste), in bytes.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// A control message from the browser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Resize { cols: u16, rows: u16 },
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum Wire {
    Resize { cols: u32, rows: u32 },
}

/// Why a control message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("control message is not a known JSON message: {0}")]
    Malformed(String),
    #[error("terminal size {cols}x{rows} is outside 2-500 columns and 1-200 rows")]
    Size { cols: u32, rows: u32 },
}

/// A terminal size, if it is within [`COLS`] and [`ROWS`].
pub fn size(cols: u32, rows: u32) -> Result<(u16, u16), Refused> {
    match (u16::try_from(cols), u16::try_from(rows)) {
        (Ok(c), Ok(r)) if COLS.contains(&c) && ROWS.contains(&r) => Ok((c, r)),
        _ => Err(Refused::Size { cols, rows }),
    }
}

/// Parses a text frame from the browser.
pub fn control(text: &str) -> Result<Control, Refused> {
    let wire: Wire = serde_json::from_str(text).map_err(|e| {
        // serde_json's message may quote the browser's text: cut at a character's edge.
        let mut why = e.to_string();
        why.truncate(why.floor_char_boundary(120));
        Refused::Malformed(why)
    })?;
    match wire {
        Wire::Resize { cols, rows } => {
            let (cols, rows) = size(cols, rows)?;
            Ok(Control::Resize { cols, rows })
        }
    }
}

/// A note for the browser: `{"type":"status","text":…}` or `{"type":"end","reason":…}`.
pub fn status(text: &str) -> String {
    serde_json::json!({ "type": "status", "text": text }).to_string()
}

pub fn end(reason: &str) -> String {
    serde_json::json!({ "type": "end", "reason": reason }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, expected: Result<Control, &str>) {
        let got = control(input);
        match (got, expected) {
            (Ok(g), Ok(e)) => assert_eq!(g, e, "{input}"),
            (Err(g), Err(e)) => assert!(g.to_string().contains(e), "{input}: {g}"),
            (g, e) => panic!("{input}: got {g:?}, expected {e:?}"),
        }
    }

    #[test]
    fn control_messages() {
        let resize = |cols, rows| Ok(Control::Resize { cols, rows });
        check(r#"{"type":"resize","cols":80,"rows":24}"#, resize(80, 24));
        check(r#"{"rows":1,"cols":2,"type":"resize"}"#, resize(2, 1));
        check(
            r#"{"type":"resize","cols":500,"rows":200}"#,
            resize(500, 200),
        );
        check(r#"{"type":"resize","cols":1,"rows":24}"#, Err("outside"));
        check(r#"{"type":"resize","cols":501,"rows":24}"#, Err("outside"));
        check(r#"{"type":"resize","cols":80,"rows":0}"#, Err("outside"));
        check(r#"{"type":"resize","cols":80,"rows":201}"#, Err("outside"));
        check(
            r#"{"type":"resize","cols":4294967296,"rows":2}"#,
            Err("not a known"),
        );
        check(
            r#"{"type":"resize","cols":-1,"rows":2}"#,
            Err("not a known"),
        );
        check(
            r#"{"type":"resize","cols":"80","rows":24}"#,
            Err("not a known"),
        );
        check(r#"{"type":"resize","cols":80}"#, Err("not a known"));
        check(
            r#"{"type":"resize","cols":80,"rows":24,"x":1}"#,
            Err("not a known"),
        );
        check(r#"{"type":"exec","command":"reboot"}"#, Err("not a known"));
        check(r#"{"cols":80,"rows":24}"#, Err("not a known"));
        check("resize 80 24", Err("not a known"));
        check("", Err("not a known"));
        check("[]", Err("not a known"));
        // Found writing the `terminal_control` fuzz target: a message whose unknown type is
        // long and not ASCII panicked when the refusal was cut to 120 bytes inside a
        // character (serde_json quotes the type back).
        for pad in 0..4 {
            let kind = format!("{}{}", "x".repeat(pad), "é".repeat(80));
            let msg = format!(r#"{{"type":"{kind}","cols":80,"rows":24}}"#);
            check(&msg, Err("not a known"));
        }
    }

    #[test]
    fn notes_are_json() {
        let v: serde_json::Value = serde_json::from_str(&end("the \"shell\" exited")).unwrap();
        assert_eq!(v["type"], "end");
        assert_eq!(v["reason"], "the \"shell\" exited");
        let v: serde_json::Value = serde_json::from_str(&status("connecting")).unwrap();
        assert_eq!(v["type"], "status");
    }
}
