//! Frames on a control or dial stream: a 4-byte big-endian length, then that many bytes
//! of one JSON message. [`encode`] makes one; [`Decoder`] takes bytes as they come and
//! yields whole messages, refusing a length over [`MAX_FRAME`] before it allocates
//! anything for it. Sans-I/O: the transport feeds it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The longest frame either side sends or accepts: far above any message (a status of
/// ten thousand live connections is about 1 MiB), far below what would hurt.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

const HEADER: usize = 4;

/// Why bytes are not a message.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the limit of {MAX_FRAME}")]
    TooLong(usize),
    #[error("frame is not a message: {0}")]
    Json(#[from] serde_json::Error),
}

/// One message as a frame.
pub fn encode<T: Serialize>(message: &T) -> Result<Bytes, FrameError> {
    let json = serde_json::to_vec(message)?;
    if json.len() > MAX_FRAME {
        return Err(FrameError::TooLong(json.len()));
    }
    let mut out = BytesMut::with_capacity(HEADER + json.len());
    // MAX_FRAME fits a u32.
    out.put_u32(u32::try_from(json.len()).map_err(|_| FrameError::TooLong(json.len()))?);
    out.extend_from_slice(&json);
    Ok(out.freeze())
}

/// Bytes in, messages out.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn new() -> Self {
        Decoder::default()
    }

    /// Takes bytes from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` until one has arrived. A frame that is not a
    /// `T` ([`FrameError::Json`]) has been taken: the next call reads the frame after
    /// it. A frame over the limit leaves the stream unusable.
    #[allow(clippy::should_implement_trait)] // generic over `T`, and fallible
    pub fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let Some(header) = self.buf.get(..HEADER) else {
            return Ok(None);
        };
        let mut len = [0u8; HEADER];
        len.copy_from_slice(header);
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLong(len));
        }
        if self.buf.len() < HEADER + len {
            self.buf.reserve(HEADER + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(HEADER);
        let body = self.buf.split_to(len);
        Ok(Some(serde_json::from_slice(&body)?))
    }

    /// Bytes held that are not yet a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// What is left after the last frame (a dial stream's first raw bytes, which may
    /// arrive with its reply).
    pub fn into_remainder(self) -> Bytes {
        self.buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{Down, PROTOCOL};

    #[test]
    fn frames_decode_whatever_the_chunking() {
        let messages: Vec<Down> = (0..5)
            .map(|n| Down::Hello {
                protocol: PROTOCOL,
                server: format!("server-{n}"),
            })
            .chain([Down::Synced, Down::Ack { seq: 42 }])
            .collect();
        let mut wire = Vec::new();
        for m in &messages {
            wire.extend_from_slice(&encode(m).unwrap());
        }
        for chunk in [1, 3, 7, wire.len()] {
            let mut decoder = Decoder::new();
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                decoder.push(piece);
                while let Some(m) = decoder.next::<Down>().unwrap() {
                    out.push(m);
                }
            }
            assert_eq!(out, messages, "chunks of {chunk}");
            assert_eq!(decoder.buffered(), 0);
        }
    }

    #[test]
    fn an_oversized_length_is_refused_before_anything_is_allocated() {
        let mut decoder = Decoder::new();
        decoder.push(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decoder.next::<Down>(),
            Err(FrameError::TooLong(n)) if n == u32::MAX as usize
        ));
        assert!(decoder.buf.capacity() < 1024);
    }

    #[test]
    fn a_frame_that_is_not_a_message_is_an_error() {
        let mut decoder = Decoder::new();
        decoder.push(&encode(&serde_json::json!({"type": "launch_missiles"})).unwrap());
        assert!(matches!(decoder.next::<Down>(), Err(FrameError::Json(_))));
    }

    #[test]
    fn a_frame_that_is_not_a_message_is_skipped_and_the_next_one_reads() {
        let mut decoder = Decoder::new();
        decoder.push(&encode(&serde_json::json!({"type": "launch_missiles"})).unwrap());
        decoder.push(&encode(&Down::Synced).unwrap());
        assert!(matches!(decoder.next::<Down>(), Err(FrameError::Json(_))));
        assert_eq!(decoder.next::<Down>().unwrap(), Some(Down::Synced));
        assert_eq!(decoder.buffered(), 0);
    }
}
