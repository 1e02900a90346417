//! The RouterOS wire format (`routeros::codec`), both directions: any bytes a peer sends,
//! read whole or in pieces, give the same sentences and the same error; every sentence
//! decoded encodes and decodes back to itself; words encode and decode back to themselves.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use routeros::codec::{
    Decoder, Sentence, decode_length, encode_length, encode_sentence, length_size,
};

/// Small limits, so the fuzzer reaches them.
const DECODER: Decoder = Decoder {
    max_word_len: 4096,
    max_words: 64,
};

/// Sentences until the buffer holds no whole one, then the error, if any.
fn decode_all(buf: &mut BytesMut, out: &mut Vec<Sentence>) -> Option<routeros::DecodeError> {
    loop {
        match DECODER.decode(buf) {
            Ok(Some(s)) => out.push(s),
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };

    // Whole.
    let mut whole = BytesMut::from(bytes);
    let mut at_once = Vec::new();
    let error = decode_all(&mut whole, &mut at_once);

    // In pieces of 1 to 64 bytes, decoding after each.
    let step = usize::from(chunk % 64) + 1;
    let mut piecewise = Vec::new();
    let mut buf = BytesMut::new();
    let mut streamed_error = None;
    for piece in bytes.chunks(step) {
        buf.extend_from_slice(piece);
        if let Some(e) = decode_all(&mut buf, &mut piecewise) {
            streamed_error = Some(e);
            break;
        }
    }
    assert_eq!(at_once, piecewise, "pieces change the sentences");
    assert_eq!(error, streamed_error, "pieces change the error");
    if error.is_none() {
        assert_eq!(whole, buf, "pieces change what is left over");
        // At the end of the stream, leftovers are a truncation, never a sentence.
        let left = whole.len();
        match DECODER.decode_eof(&mut whole) {
            Ok(None) => assert_eq!(left, 0),
            Err(routeros::DecodeError::Truncated(n)) => assert_eq!(n, left),
            other => panic!("decode_eof after decode gave {other:?}"),
        }
    }

    // Each sentence read encodes to at most the bytes it came from (the shortest length
    // forms) and decodes back to itself.
    for s in &at_once {
        assert!(s.words.len() <= DECODER.max_words);
        let mut enc = BytesMut::new();
        s.encode(&mut enc).expect("a decoded sentence encodes");
        let back = DECODER
            .decode_eof(&mut enc)
            .expect("re-encoded sentence decodes");
        assert_eq!(back.as_ref(), Some(s));
        assert!(enc.is_empty());
    }

    // The other direction: the input's pieces (split at 0xFF) as words of one sentence.
    let words: Vec<&[u8]> = bytes
        .split(|&b| b == 0xFF)
        .filter(|w| !w.is_empty())
        .collect();
    let mut enc = BytesMut::new();
    encode_sentence(&words, &mut enc).expect("non-empty words encode");
    let back = Decoder::default()
        .decode_eof(&mut enc)
        .expect("an encoded sentence decodes")
        .expect("an encoded sentence is whole");
    let got: Vec<&[u8]> = back.words.iter().map(|w| w.as_ref()).collect();
    assert_eq!(got, words);

    // Lengths: the first four bytes as a length.
    if let Some(four) = bytes.get(..4) {
        let len = u32::from_be_bytes([four[0], four[1], four[2], four[3]]);
        let mut b = BytesMut::new();
        encode_length(len, &mut b);
        assert_eq!(b.len(), length_size(len));
        assert_eq!(decode_length(&b), Ok(Some((u64::from(len), b.len()))));
    }
});
