//! Postern's RouterOS client (`routeros::Client`) reading whatever a router sends: the
//! input is everything the "router" says, then it closes the connection. The login ends,
//! three commands in flight (tags 1 to 3) each end with an answer or an error, none
//! waits past its timeout, and the lost connection is noticed: the client is closed and
//! a later command fails at once.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use routeros::api::{Filter, user};
use routeros::codec::Decoder;
use routeros::{Client, ClientConfig, Command};
use tokio::io::AsyncWriteExt as _;

/// Longer than the command timeout: a command still waiting then is a hang.
const HANG: Duration = Duration::from_secs(60);

fuzz_target!(|data: &[u8]| {
    let rt = postern_fuzz::paused_runtime();
    rt.block_on(async {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let said = data.to_vec();
        let (mut heard, mut says) = tokio::io::split(theirs);
        // The router reads whatever the client sends, so the client never blocks writing.
        tokio::spawn(async move {
            let _ = tokio::io::copy(&mut heard, &mut tokio::io::sink()).await;
        });
        tokio::spawn(async move {
            let _ = says.write_all(&said).await;
            let _ = says.shutdown().await;
        });

        let config = ClientConfig::new("fuzz:8728", "admin", "secret")
            .with_command_timeout(Duration::from_secs(5))
            .with_decoder(Decoder {
                max_word_len: 4096,
                max_words: 256,
            });
        let login = tokio::time::timeout(HANG, Client::handshake(ours, &config)).await;
        let Ok(login) = login else {
            panic!("the login did not end after the router closed the connection");
        };
        let Ok(client) = login else {
            return;
        };

        let identity = client.call(Command::new("/system/identity/print"));
        let everyone = Filter::all();
        let users = user::print(&client, &everyone);
        let clock = client.call(Command::new("/system/clock/print"));
        let all = async { tokio::join!(identity, users, clock) };
        if tokio::time::timeout(HANG, all).await.is_err() {
            panic!("a command outlived its timeout");
        }

        // Everything the router said has been read by now.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            client.is_closed(),
            "the end of the connection went unnoticed"
        );
        let later =
            tokio::time::timeout(Duration::from_millis(1), client.call(Command::new("/quit")));
        match later.await {
            Ok(Err(_)) => {}
            other => panic!("a command on a closed client gave {other:?}"),
        }
    });
});
