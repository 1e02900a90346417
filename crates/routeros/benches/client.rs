//! Client throughput: commands per second over one connection with 32 in flight, against
//! a scripted peer on loopback that answers each command with one `!re` and a `!done`.
//!
//! The peer does almost nothing, so this measures the client (tagging, routing,
//! the writer and reader tasks) and the loopback socket, not a router.

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use postern_routeros::codec::Sentence;
use postern_routeros::connection::Connection;
use postern_routeros::message::Words;
use postern_routeros::{Client, ClientConfig, Command};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const IN_FLIGHT: u64 = 32;

fn sentence(words: Vec<Bytes>) -> Sentence {
    Sentence::new(words)
}

/// Accepts one connection, accepts any login, answers every command.
async fn echo_peer(listener: TcpListener) {
    let Ok((socket, _)) = listener.accept().await else {
        return;
    };
    let mut conn = Connection::new(socket);
    if !matches!(conn.read_sentence().await, Ok(Some(_))) {
        return;
    }
    if conn
        .write_sentence(&sentence(vec![Bytes::from_static(b"!done")]))
        .await
        .is_err()
    {
        return;
    }
    let (mut reader, mut writer) = conn.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    tokio::spawn(async move {
        while let Ok(Some(s)) = reader.read_sentence().await {
            let words = Words::parse(&s);
            let Some(tag) = words.tag else { continue };
            if tx.send(tag).is_err() {
                return;
            }
        }
    });
    while let Some(first) = rx.recv().await {
        let mut tags = vec![first];
        while let Ok(t) = rx.try_recv() {
            tags.push(t);
        }
        for tag in tags {
            let mut t = b".tag=".to_vec();
            t.extend_from_slice(&tag);
            let t = Bytes::from(t);
            let re = sentence(vec![
                Bytes::from_static(b"!re"),
                Bytes::from_static(b"=name=edge"),
                t.clone(),
            ]);
            let done = sentence(vec![Bytes::from_static(b"!done"), t]);
            if writer.write_sentence(&re).await.is_err()
                || writer.write_sentence(&done).await.is_err()
            {
                return;
            }
        }
        if writer.flush().await.is_err() {
            return;
        }
    }
}

fn client(c: &mut Criterion) {
    let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    else {
        return;
    };
    let Some(client) = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.ok()?;
        let addr = listener.local_addr().ok()?.to_string();
        tokio::spawn(echo_peer(listener));
        Client::connect(&ClientConfig::new(addr, "bench", "bench"))
            .await
            .ok()
    }) else {
        return;
    };

    let mut group = c.benchmark_group("client");
    group.throughput(Throughput::Elements(1));
    group.bench_function("commands_32_in_flight", |b| {
        b.iter_custom(|iters| {
            let client = client.clone();
            rt.block_on(async move {
                let per_task = iters.div_ceil(IN_FLIGHT);
                let started = Instant::now();
                let mut tasks = Vec::new();
                for _ in 0..IN_FLIGHT {
                    let client = client.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut failed = 0u64;
                        for _ in 0..per_task {
                            let call = client.call(Command::new("/system/identity/print"));
                            if !matches!(call.await, Ok(r) if r.items.len() == 1) {
                                failed += 1;
                            }
                        }
                        failed
                    }));
                }
                let mut failed = 0;
                for t in tasks {
                    failed += t.await.unwrap_or(per_task);
                }
                // A failing command returns fast; do not let it pass for speed.
                assert_eq!(failed, 0, "commands failed during the benchmark");
                // Report the time per command actually run.
                let ran = per_task * IN_FLIGHT;
                let took = started.elapsed();
                Duration::from_secs_f64(took.as_secs_f64() * iters as f64 / ran as f64)
            })
        })
    });
    group.finish();
}

criterion_group!(benches, client);
criterion_main!(benches);
