//! Helpers the fuzz targets share: splitting an input into parts, and reading sentences.

use bytes::BytesMut;
use routeros::codec::{Decoder, Sentence};

/// Splits `data` at each `sep` byte (an input that holds several fields).
pub fn fields(data: &[u8], sep: u8) -> Vec<&[u8]> {
    data.split(|&b| b == sep).collect()
}

/// Every whole sentence at the start of `data`, decoded with `decoder`, up to the first
/// error or incomplete sentence.
pub fn sentences(data: &[u8], decoder: Decoder) -> Vec<Sentence> {
    let mut buf = BytesMut::from(data);
    let mut out = Vec::new();
    while let Ok(Some(s)) = decoder.decode(&mut buf) {
        out.push(s);
    }
    out
}

/// A runtime whose clock only moves when every task waits, so a target's timeouts cost
/// no real time and a hang shows as a timeout.
pub fn paused_runtime() -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("cannot build a runtime: {e}"),
    }
}
