//! The sim's API service (`sim::api::connection`) reading what a client sends: its
//! sentence reading, login, tags, `/cancel`, and every command's parsing and checks
//! through `menu` and `query`. The first input byte chooses: bit 0, log in as admin
//! before the rest; bit 1, RouterOS 6 rather than 7. The rest is sent as it is, then the
//! client closes. The sim stops within its timeouts, and all it wrote is whole sentences,
//! each a reply whose tag, if any, the client sent.
//!
//! The router is shut down before the connection starts, so dst-nat rules bind no real
//! port (nothing else depends on it).
#![no_main]

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use routeros::codec::{Decoder, encode_sentence};
use routeros::{Reply, Words};
use sim::clock::Clock;
use sim::router::{Router, RouterConfig};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

const PASSWORD: &str = "fuzz-admin-password";
const HANG: Duration = Duration::from_secs(60);
/// The sim's own limits for what a client sends.
const CLIENT: Decoder = Decoder {
    max_word_len: 1024 * 1024,
    max_words: 4096,
};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let rt = postern_fuzz::paused_runtime();
    rt.block_on(async {
        let address = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut config = RouterConfig::new("fuzz", address, PASSWORD);
        config.clock = Clock::manual(UNIX_EPOCH + Duration::from_secs(1_795_000_000));
        if flags & 2 != 0 {
            config.version = "6.49.10".into();
        }
        let router = Router::new(config);
        router.shutdown();

        let mut sent = BytesMut::new();
        if flags & 1 != 0 {
            let login = ["/login", "=name=admin", &format!("=password={PASSWORD}")];
            encode_sentence(login, &mut sent).expect("the login encodes");
        }
        sent.extend_from_slice(input);
        let tags: HashSet<Bytes> = postern_fuzz::sentences(&sent, CLIENT)
            .iter()
            .filter_map(|s| Words::parse(s).tag)
            .collect();

        let (client, server) = tokio::io::duplex(1 << 16);
        let peer = SocketAddr::new(address, 50_000);
        let conn = tokio::spawn(sim::api::connection(
            server,
            peer,
            router,
            CancellationToken::new(),
        ));
        let (mut rd, mut wr) = tokio::io::split(client);
        tokio::spawn(async move {
            let _ = wr.write_all(&sent).await;
            let _ = wr.shutdown().await;
        });
        let mut out = Vec::new();
        match tokio::time::timeout(HANG, rd.read_to_end(&mut out)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("reading the sim's answers: {e}"),
            Err(_) => panic!("the sim did not close after the client did"),
        }
        if tokio::time::timeout(HANG, conn).await.is_err() {
            panic!("the sim's connection task outlived the connection");
        }

        let mut out = BytesMut::from(&out[..]);
        loop {
            match Decoder::default().decode_eof(&mut out) {
                Ok(Some(sentence)) => {
                    let reply = Reply::parse(&sentence)
                        .unwrap_or_else(|e| panic!("the sim sent {sentence:?}: {e}"));
                    if let Some(tag) = &reply.tag {
                        assert!(tags.contains(tag), "a reply under tag {tag:?}, never sent");
                    }
                }
                Ok(None) => break,
                Err(e) => panic!("the sim wrote something that is not a sentence: {e}"),
            }
        }
    });
});
