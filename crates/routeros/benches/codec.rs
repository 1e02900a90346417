//! Codec throughput: encoding and decoding a 10-word sentence (a typical `!re` of a
//! `/user/print`), reported in sentences per second.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use postern_routeros::codec::{Decoder, Sentence};

fn ten_words() -> Sentence {
    let words = [
        "!re",
        "=.id=*1F",
        "=name=postern-3f9a2c",
        "=group=postern-read",
        "=address=100.64.0.1/32,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16",
        "=last-logged-in=2026-11-22 12:00:00",
        "=disabled=false",
        "=comment=a comment of a moderate length for realism",
        "=expired=false",
        ".tag=4242",
    ];
    Sentence::new(
        words
            .iter()
            .map(|w| Bytes::from_static(w.as_bytes()))
            .collect(),
    )
}

fn codec(c: &mut Criterion) {
    let sentence = ten_words();
    let mut encoded = BytesMut::new();
    sentence.encode(&mut encoded).unwrap_or_default();
    let encoded = encoded.freeze();
    let decoder = Decoder::default();

    let mut group = c.benchmark_group("codec");
    group.throughput(Throughput::Elements(1));
    group.bench_function("encode_10_words", |b| {
        let mut buf = BytesMut::with_capacity(512);
        b.iter(|| {
            buf.clear();
            black_box(&sentence).encode(&mut buf).unwrap_or_default();
            black_box(buf.len())
        })
    });
    // Decoding reads a stream: a buffer of many sentences, as a socket read fills it.
    const BATCH: u64 = 1000;
    let mut stream = BytesMut::new();
    for _ in 0..BATCH {
        stream.extend_from_slice(&encoded);
    }
    let stream = stream.freeze();
    group.throughput(Throughput::Elements(BATCH));
    group.bench_function("decode_10_words", |b| {
        b.iter(|| {
            let mut buf = BytesMut::from(black_box(&stream[..]));
            let mut n = 0u64;
            while let Ok(Some(s)) = decoder.decode(&mut buf) {
                n += s.words.len() as u64;
            }
            black_box(n)
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
