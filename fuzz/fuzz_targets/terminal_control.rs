//! The terminal WebSocket's control messages (`server::terminal::protocol`): any text
//! frame a browser sends is a resize within the allowed sizes or a refusal, and a resize
//! accepted reads the same when written afresh.
#![no_main]

use libfuzzer_sys::fuzz_target;
use server::terminal::protocol::{COLS, Control, ROWS, control, size};

fuzz_target!(|data: &[u8]| {
    // WebSocket text frames are UTF-8 (the WebSocket layer refuses others).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match control(text) {
        Ok(Control::Resize { cols, rows }) => {
            assert!(
                COLS.contains(&cols) && ROWS.contains(&rows),
                "{cols}x{rows}"
            );
            let again = format!(r#"{{"type":"resize","cols":{cols},"rows":{rows}}}"#);
            assert_eq!(control(&again), Ok(Control::Resize { cols, rows }));
        }
        Err(refused) => {
            // What the session's end reason says: short, whatever was sent.
            assert!(refused.to_string().len() < 256, "{refused}");
        }
    }
    if let Some(four) = data.get(..8) {
        let cols = u32::from_le_bytes([four[0], four[1], four[2], four[3]]);
        let rows = u32::from_le_bytes([four[4], four[5], four[6], four[7]]);
        match size(cols, rows) {
            Ok((c, r)) => assert_eq!((u32::from(c), u32::from(r)), (cols, rows)),
            Err(_) => assert!(
                !(u16::try_from(cols).is_ok_and(|c| COLS.contains(&c))
                    && u16::try_from(rows).is_ok_and(|r| ROWS.contains(&r)))
            ),
        }
    }
});
