//! Throughput of the API service with 32 commands in flight on one connection (ignored
//! by default; `cargo test --release -p postern-sim --test sim perf -- --ignored
//! --nocapture` prints the figure).

use std::time::{Duration, Instant};

use routeros::message::ReplyKind;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a check"]
async fn api_commands_per_second_with_32_in_flight() {
    let r = router().await;
    let mut c = Raw::admin(r.api_addr).await;
    let total = 50_000u32;
    let window = 32u32;
    let start = Instant::now();
    let mut sent = 0u32;
    let mut done = 0u32;
    while sent < window {
        c.send(&["/system/identity/print", &format!(".tag={sent}")])
            .await;
        sent += 1;
    }
    while done < total {
        let reply = c.recv().await.unwrap();
        if reply.kind == ReplyKind::Done {
            done += 1;
            if sent < total {
                c.send(&["/system/identity/print", &format!(".tag={sent}")])
                    .await;
                sent += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    let rate = f64::from(total) / elapsed.as_secs_f64();
    eprintln!("{total} commands in {elapsed:?}: {rate:.0} commands/s");
    assert!(elapsed < Duration::from_secs(60));
    r.shutdown().await;
}
