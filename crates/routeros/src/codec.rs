//! The RouterOS API wire format, sans I/O: length-prefixed words grouped into sentences.
//!
//! A word is a length followed by that many bytes; a sentence is words ended by an empty
//! word. Lengths take one to five bytes, the high bits of the first byte saying how many:
//!
//! | length               | encoding                     |
//! | -------------------- | ---------------------------- |
//! | `0x00..=0x7F`        | `len`                        |
//! | `0x80..=0x3FFF`      | `len \| 0x8000`, 2 bytes      |
//! | `0x4000..=0x1F_FFFF` | `len \| 0xC0_0000`, 3 bytes   |
//! | `0x20_0000..=0xFFF_FFFF` | `len \| 0xE000_0000`, 4 bytes |
//! | `0x1000_0000..`      | `0xF0` then 4 bytes of `len` |
//!
//! A first byte of `0xF8` or above is a control byte, which RouterOS reserves: the
//! decoder refuses it. Words are bytes; nothing here assumes UTF-8.
//!
//! The decoder follows mini-redis's frame shape: [`Decoder::decode`] returns `Ok(None)`
//! while the buffer holds only part of a sentence and consumes nothing, so a caller reads
//! more and tries again; [`Decoder::decode_eof`] tells a clean end of stream from one that
//! cut a sentence short.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The longest word the decoder accepts unless told otherwise (RouterOS replies with
/// scripts or large `print` values stay far below this).
pub const DEFAULT_MAX_WORD_LEN: usize = 16 * 1024 * 1024;

/// The most words one sentence may carry unless told otherwise.
pub const DEFAULT_MAX_WORDS: usize = 65_536;

/// Why bytes from the peer are not a valid sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A length began with a byte RouterOS reserves for control (0xF8 and above).
    #[error("control byte 0x{0:02X} where a word length was expected")]
    ControlByte(u8),
    /// A word announced more bytes than the decoder accepts.
    #[error("word of {len} bytes is longer than the limit of {max}")]
    WordTooLong { len: u64, max: usize },
    /// A sentence had more words than the decoder accepts.
    #[error("sentence has more than {max} words")]
    TooManyWords { max: usize },
    /// The stream ended inside a word or a sentence.
    #[error("stream ended inside a sentence ({0} bytes left over)")]
    Truncated(usize),
}

/// Writes the length prefix of a word of `len` bytes.
pub fn encode_length(len: u32, dst: &mut BytesMut) {
    match len {
        0..=0x7F => dst.put_u8(len as u8),
        0x80..=0x3FFF => dst.put_u16(len as u16 | 0x8000),
        0x4000..=0x1F_FFFF => {
            let v = len | 0xC0_0000;
            dst.put_slice(&v.to_be_bytes()[1..]);
        }
        0x20_0000..=0x0FFF_FFFF => dst.put_u32(len | 0xE000_0000),
        _ => {
            dst.put_u8(0xF0);
            dst.put_u32(len);
        }
    }
}

/// The number of bytes [`encode_length`] writes for `len`.
pub fn length_size(len: u32) -> usize {
    match len {
        0..=0x7F => 1,
        0x80..=0x3FFF => 2,
        0x4000..=0x1F_FFFF => 3,
        0x20_0000..=0x0FFF_FFFF => 4,
        _ => 5,
    }
}

/// Why a word cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("word of {0} bytes cannot be encoded (the protocol's limit is 4 GiB - 1)")]
    TooLong(usize),
    /// An empty word ends a sentence, so a sentence cannot carry one.
    #[error("a sentence cannot contain an empty word")]
    EmptyWord,
}

/// Appends one word, its length first. An empty word is the end-of-sentence marker.
pub fn encode_word(word: &[u8], dst: &mut BytesMut) -> Result<(), EncodeError> {
    let len = u32::try_from(word.len()).map_err(|_| EncodeError::TooLong(word.len()))?;
    dst.reserve(length_size(len) + word.len());
    encode_length(len, dst);
    dst.put_slice(word);
    Ok(())
}

/// Appends a whole sentence: each word, then the empty word that ends it.
pub fn encode_sentence<W: AsRef<[u8]>>(
    words: impl IntoIterator<Item = W>,
    dst: &mut BytesMut,
) -> Result<(), EncodeError> {
    let start = dst.len();
    for word in words {
        let word = word.as_ref();
        if word.is_empty() {
            dst.truncate(start);
            return Err(EncodeError::EmptyWord);
        }
        if let Err(e) = encode_word(word, dst) {
            dst.truncate(start);
            return Err(e);
        }
    }
    dst.put_u8(0);
    Ok(())
}

/// Reads a length prefix at the start of `src` without consuming it.
///
/// `Ok(None)` when `src` is too short to hold the whole prefix; otherwise the length and
/// the number of bytes the prefix took.
pub fn decode_length(src: &[u8]) -> Result<Option<(u64, usize)>, DecodeError> {
    let Some(&first) = src.first() else {
        return Ok(None);
    };
    let size = match first {
        0x00..=0x7F => 1,
        0x80..=0xBF => 2,
        0xC0..=0xDF => 3,
        0xE0..=0xEF => 4,
        0xF0..=0xF7 => 5,
        _ => return Err(DecodeError::ControlByte(first)),
    };
    let Some(prefix) = src.get(..size) else {
        return Ok(None);
    };
    let len = match size {
        1 => u64::from(first),
        5 => prefix
            .iter()
            .skip(1)
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        _ => {
            let mask: u64 = match size {
                2 => 0x3F,
                3 => 0x1F,
                _ => 0x0F,
            };
            prefix
                .iter()
                .skip(1)
                .fold(u64::from(first) & mask, |acc, &b| (acc << 8) | u64::from(b))
        }
    };
    Ok(Some((len, size)))
}

/// A sentence as it crossed the wire: its words, without the terminating empty word.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sentence {
    pub words: Vec<Bytes>,
}

impl Sentence {
    pub fn new(words: Vec<Bytes>) -> Self {
        Self { words }
    }

    /// The first word: a command (`/user/print`) or a reply type (`!re`).
    pub fn first(&self) -> Option<&[u8]> {
        self.words.first().map(|w| w.as_ref())
    }

    /// Encodes this sentence onto `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), EncodeError> {
        encode_sentence(&self.words, dst)
    }
}

/// Turns a byte stream into sentences, with limits against a hostile peer.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    pub max_word_len: usize,
    pub max_words: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            max_word_len: DEFAULT_MAX_WORD_LEN,
            max_words: DEFAULT_MAX_WORDS,
        }
    }
}

impl Decoder {
    /// Checks that `src` starts with a complete sentence and returns its size in bytes.
    ///
    /// `Ok(None)` when more bytes are needed. Limits are enforced here, before anything is
    /// allocated, so a peer announcing a 4 GiB word is refused at once.
    pub fn check(&self, src: &[u8]) -> Result<Option<usize>, DecodeError> {
        let mut pos = 0usize;
        let mut words = 0usize;
        loop {
            let rest = src.get(pos..).unwrap_or_default();
            let Some((len, size)) = decode_length(rest)? else {
                return Ok(None);
            };
            if len > self.max_word_len as u64 {
                return Err(DecodeError::WordTooLong {
                    len,
                    max: self.max_word_len,
                });
            }
            pos += size;
            if len == 0 {
                return Ok(Some(pos));
            }
            words += 1;
            if words > self.max_words {
                return Err(DecodeError::TooManyWords {
                    max: self.max_words,
                });
            }
            // len <= max_word_len, which is a usize.
            pos += len as usize;
            if pos > src.len() {
                return Ok(None);
            }
        }
    }

    /// Takes one complete sentence off the front of `src`, or `Ok(None)` (consuming
    /// nothing) if `src` holds only part of one.
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Sentence>, DecodeError> {
        let Some(total) = self.check(src)? else {
            return Ok(None);
        };
        let mut frame = src.split_to(total).freeze();
        let mut words = Vec::new();
        loop {
            // `check` has validated every prefix and length in `frame`.
            let Some((len, size)) = decode_length(&frame)? else {
                return Err(DecodeError::Truncated(frame.len()));
            };
            frame.advance(size);
            if len == 0 {
                return Ok(Some(Sentence { words }));
            }
            let len = len as usize;
            if len > frame.len() {
                return Err(DecodeError::Truncated(frame.len()));
            }
            words.push(frame.split_to(len));
        }
    }

    /// Like [`decode`](Self::decode), for when the stream has ended: leftover bytes that do
    /// not make a whole sentence are an error rather than a wait.
    pub fn decode_eof(&self, src: &mut BytesMut) -> Result<Option<Sentence>, DecodeError> {
        match self.decode(src)? {
            Some(sentence) => Ok(Some(sentence)),
            None if src.is_empty() => Ok(None),
            None => Err(DecodeError::Truncated(src.len())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enc(len: u32) -> Vec<u8> {
        let mut b = BytesMut::new();
        encode_length(len, &mut b);
        b.to_vec()
    }

    #[test]
    fn golden_length_vectors() {
        let check = |len: u32, expected: &[u8]| {
            assert_eq!(enc(len), expected, "encoding {len:#x}");
            assert_eq!(
                decode_length(expected),
                Ok(Some((u64::from(len), expected.len()))),
                "decoding {expected:02X?}"
            );
        };
        // The vectors.
        check(0x01, &[0x01]);
        check(0x87, &[0x80, 0x87]);
        check(0x4321, &[0xC0, 0x43, 0x21]);
        check(0x2A_CDEF, &[0xE0, 0x2A, 0xCD, 0xEF]);
        check(0x1000_0080, &[0xF0, 0x10, 0x00, 0x00, 0x80]);
        // Every range boundary, both sides.
        check(0x00, &[0x00]);
        check(0x7F, &[0x7F]);
        check(0x80, &[0x80, 0x80]);
        check(0x3FFF, &[0xBF, 0xFF]);
        check(0x4000, &[0xC0, 0x40, 0x00]);
        check(0x1F_FFFF, &[0xDF, 0xFF, 0xFF]);
        check(0x20_0000, &[0xE0, 0x20, 0x00, 0x00]);
        check(0x0FFF_FFFF, &[0xEF, 0xFF, 0xFF, 0xFF]);
        check(0x1000_0000, &[0xF0, 0x10, 0x00, 0x00, 0x00]);
        check(u32::MAX, &[0xF0, 0xFF, 0xFF, 0xFF, 0xFF]);
    }

    #[test]
    fn control_bytes_are_refused() {
        for b in 0xF8..=0xFF {
            assert_eq!(decode_length(&[b]), Err(DecodeError::ControlByte(b)));
            let mut buf = BytesMut::from(&[0x02, b'h', b'i', b][..]);
            assert_eq!(
                Decoder::default().decode(&mut buf),
                Err(DecodeError::ControlByte(b))
            );
        }
    }

    #[test]
    fn partial_input_waits_and_consumes_nothing() {
        let mut full = BytesMut::new();
        encode_sentence([&b"/login"[..], b"=name=admin"], &mut full).unwrap();
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(
                Decoder::default().decode(&mut part),
                Ok(None),
                "cut at {cut}"
            );
            assert_eq!(part.len(), cut);
        }
    }

    #[test]
    fn truncated_word_at_end_of_stream_is_an_error() {
        // A word that announces 5 bytes and carries 2, then the stream ends.
        let mut buf = BytesMut::from(&[0x05, b'a', b'b'][..]);
        assert_eq!(
            Decoder::default().decode_eof(&mut buf),
            Err(DecodeError::Truncated(3))
        );
        // A length prefix cut in half.
        let mut buf = BytesMut::from(&[0xC0, 0x43][..]);
        assert_eq!(
            Decoder::default().decode_eof(&mut buf),
            Err(DecodeError::Truncated(2))
        );
        // A clean end of stream.
        let mut buf = BytesMut::new();
        assert_eq!(Decoder::default().decode_eof(&mut buf), Ok(None));
    }

    #[test]
    fn overlong_word_is_refused_before_reading_it() {
        let d = Decoder {
            max_word_len: 1024,
            max_words: 16,
        };
        let mut buf = BytesMut::new();
        encode_length(1025, &mut buf);
        assert_eq!(
            d.decode(&mut buf),
            Err(DecodeError::WordTooLong {
                len: 1025,
                max: 1024
            })
        );
        // The five-byte form up to 4 GiB is refused by the default limit too.
        let mut buf = BytesMut::from(&[0xF0, 0xFF, 0xFF, 0xFF, 0xFF][..]);
        assert!(matches!(
            Decoder::default().decode(&mut buf),
            Err(DecodeError::WordTooLong { .. })
        ));
    }

    #[test]
    fn too_many_words_are_refused() {
        let d = Decoder {
            max_word_len: 1024,
            max_words: 3,
        };
        let mut buf = BytesMut::new();
        encode_sentence(["a", "b", "c", "d"], &mut buf).unwrap();
        assert_eq!(
            d.decode(&mut buf),
            Err(DecodeError::TooManyWords { max: 3 })
        );
    }

    #[test]
    fn words_are_bytes_not_utf8() {
        let word: &[u8] = &[0xFF, 0x00, 0xC3, 0x28];
        let mut buf = BytesMut::new();
        encode_sentence([word], &mut buf).unwrap();
        let s = Decoder::default().decode(&mut buf).unwrap().unwrap();
        assert_eq!(s.words, vec![Bytes::from_static(&[0xFF, 0x00, 0xC3, 0x28])]);
    }

    #[test]
    fn empty_word_cannot_be_encoded_and_leaves_buffer_as_it_was() {
        let mut buf = BytesMut::from(&b"xy"[..]);
        assert_eq!(
            encode_sentence(["/user/print", ""], &mut buf),
            Err(EncodeError::EmptyWord)
        );
        assert_eq!(&buf[..], b"xy");
    }

    #[test]
    fn two_sentences_in_one_buffer() {
        let mut buf = BytesMut::new();
        encode_sentence(["!re", "=name=a"], &mut buf).unwrap();
        encode_sentence(["!done"], &mut buf).unwrap();
        let d = Decoder::default();
        assert_eq!(d.decode(&mut buf).unwrap().unwrap().words.len(), 2);
        assert_eq!(
            d.decode(&mut buf).unwrap().unwrap().first(),
            Some(&b"!done"[..])
        );
        assert!(buf.is_empty());
    }

    proptest! {
        #[test]
        fn length_round_trips(len in any::<u32>()) {
            let bytes = enc(len);
            prop_assert_eq!(bytes.len(), length_size(len));
            prop_assert_eq!(decode_length(&bytes), Ok(Some((u64::from(len), bytes.len()))));
        }

        #[test]
        fn sentence_round_trips(words in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 1..300), 0..12)) {
            let mut buf = BytesMut::new();
            encode_sentence(&words, &mut buf).unwrap();
            let s = Decoder::default().decode_eof(&mut buf).unwrap().unwrap();
            let got: Vec<Vec<u8>> = s.words.iter().map(|w| w.to_vec()).collect();
            prop_assert_eq!(got, words);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            let d = Decoder { max_word_len: 256, max_words: 64 };
            while let Ok(Some(_)) = d.decode(&mut buf) {}
        }
    }
}
