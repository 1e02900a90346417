//! The control channel's frames (`control::frame`), as a gateway reads a server's and a
//! server a gateway's: any bytes, fed in pieces of any size, give messages or errors and
//! never a panic. A length over the limit is refused before anything is allocated for
//! it and breaks the stream; a frame that is not a message is skipped and the next one
//! reads; every message decoded encodes and decodes back to itself.
#![no_main]

use std::fmt::Debug;

use control::frame::{Decoder, FrameError, MAX_FRAME, encode};
use control::msg::{Down, Up};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn run<T: DeserializeOwned + Serialize + PartialEq + Debug>(bytes: &[u8], chunk: usize) {
    let mut decoder = Decoder::new();
    let mut pushed = 0;
    for piece in bytes.chunks(chunk) {
        decoder.push(piece);
        pushed += piece.len();
        loop {
            match decoder.next::<T>() {
                Ok(Some(message)) => {
                    let frame = encode(&message).expect("a message read encodes");
                    let mut again = Decoder::new();
                    again.push(&frame);
                    let back = again.next::<T>().expect("an encoded message decodes");
                    assert_eq!(back.as_ref(), Some(&message));
                    assert_eq!(again.buffered(), 0);
                }
                Ok(None) => break,
                // That frame is taken; the next one is read.
                Err(FrameError::Json(_)) => continue,
                Err(FrameError::TooLong(len)) => {
                    assert!(len > MAX_FRAME);
                    return;
                }
            }
        }
        // Nothing held beyond what was pushed.
        assert!(decoder.buffered() <= pushed);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    run::<Down>(bytes, chunk);
    run::<Up>(bytes, chunk);
});
