//! The control channel end to end: a server's `Channel` against a gateway's `serve`,
//! in memory (`tokio::io::duplex`) and over real TCP with mTLS from `control::pki`;
//! dials reach real TCP echo servers on 127.0.0.1.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use control::channel::{
    Channel, ChannelConfig, ChannelError, DialIo, Handler, serve, serve_tls, serve_with,
};
use control::frame::{self, Decoder};
use control::msg::{DialRequest, Down, GatewayState, PROTOCOL, Target, Up};
use control::pki::{self, Ca, KeyPem};
use domain::{GatewayId, GatewayRunId, RegionId};
use futures::future::BoxFuture;
use postern_control as control;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

// ---------------------------------------------------------------------------------------
// The gateway under test: states who said hello, echoes every other message as a refusal
// (so a test sees what arrived, in order), dials real TCP for `Direct` targets.

#[derive(Default)]
struct TestGateway {
    /// Whether a control handler is still running, per stream opened.
    controls: Mutex<Vec<Arc<AtomicBool>>>,
}

impl Handler for TestGateway {
    fn control(
        &self,
        mut down: mpsc::Receiver<Down>,
        up: mpsc::Sender<Up>,
    ) -> BoxFuture<'static, ()> {
        let running = Arc::new(AtomicBool::new(true));
        self.controls.lock().unwrap().push(running.clone());
        Box::pin(async move {
            while let Some(message) = down.recv().await {
                let reply = match message {
                    Down::Hello { server, .. } => Up::State(GatewayState {
                        protocol: PROTOCOL,
                        gateway: format!("hello {server}"),
                        boot: GatewayRunId::new(),
                        regions: vec![],
                        grants: vec![],
                        peers: vec![],
                        next_seq: 0,
                    }),
                    other => Up::Refused {
                        error: format!("echo {}", serde_json::to_string(&other).unwrap()),
                    },
                };
                if up.send(reply).await.is_err() {
                    break;
                }
            }
            running.store(false, Ordering::SeqCst);
        })
    }

    fn dial(&self, request: DialRequest) -> BoxFuture<'static, io::Result<Box<dyn DialIo>>> {
        Box::pin(async move {
            match request.target {
                Target::Direct { address } => {
                    let stream = TcpStream::connect(address).await?;
                    Ok(Box::new(stream) as Box<dyn DialIo>)
                }
                Target::Tunnel { port: 1, .. } => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the router did not answer in 10 s",
                )),
                Target::Tunnel { port: 2, .. } => {
                    Err(io::Error::other("the tunnel's stack is full"))
                }
                Target::Tunnel { .. } => Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "no session with the router",
                )),
            }
        })
    }
}

fn hello(server: &str) -> Down {
    Down::Hello {
        protocol: PROTOCOL,
        server: server.into(),
    }
}

fn direct(address: SocketAddr) -> DialRequest {
    DialRequest {
        region: RegionId::new(),
        target: Target::Direct { address },
    }
}

fn tunnel(port: u16) -> DialRequest {
    DialRequest {
        region: RegionId::new(),
        target: Target::Tunnel {
            address: "100.64.0.9".parse().unwrap(),
            port,
        },
    }
}

/// A TCP echo server on 127.0.0.1: echoes until EOF, then ends its side (half-close).
async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let (mut read, mut write) = stream.into_split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
                let _ = write.shutdown().await;
            });
        }
    });
    address
}

/// A port on 127.0.0.1 where nothing listens.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

/// A channel to a `TestGateway` in memory.
async fn in_memory(config: ChannelConfig) -> (Channel, Arc<TestGateway>) {
    let (client, server) = tokio::io::duplex(256 * 1024);
    let gateway = Arc::new(TestGateway::default());
    let handler: Arc<dyn Handler> = gateway.clone();
    tokio::spawn(serve_with(server, handler, config.clone()));
    (
        Channel::connect_with(client, config).await.unwrap(),
        gateway,
    )
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: timed out"))
}

// ---------------------------------------------------------------------------------------
// Control and dial streams in memory.

#[tokio::test]
async fn the_control_stream_carries_messages_both_ways_in_order_and_ends_cleanly() {
    let (channel, gateway) = in_memory(ChannelConfig::default()).await;
    let mut control = channel.control(hello("server-1")).await.unwrap();
    match within("state", control.recv()).await.unwrap() {
        Up::State(state) => assert_eq!(state.gateway, "hello server-1"),
        other => panic!("first frame {other:?}"),
    }
    for seq in 0..50 {
        control.send(Down::Ack { seq }).await.unwrap();
    }
    for seq in 0..50 {
        let Up::Refused { error } = within("echo", control.recv()).await.unwrap() else {
            panic!("not an echo");
        };
        assert_eq!(error, format!("echo {{\"type\":\"ack\",\"seq\":{seq}}}"));
    }
    // The server ends its side: the gateway's handler sees the end and returns, which
    // ends the gateway's side.
    let (down, mut up) = control.into_parts();
    drop(down);
    assert_eq!(within("end", up.recv()).await, None);
    let running = gateway.controls.lock().unwrap()[0].clone();
    within("handler returns", async {
        while running.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(!channel.is_closed());
}

#[tokio::test]
async fn a_dial_echoes_and_half_close_carries_both_ways() {
    let echo = echo_server().await;
    let (channel, _) = in_memory(ChannelConfig::default()).await;
    let mut stream = channel.dial(direct(echo)).await.unwrap();
    stream.write_all(b"hello router").await.unwrap();
    // Our END_STREAM reaches the echo server as EOF; its FIN comes back as our EOF, and
    // every byte before it arrives.
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    within("echo", stream.read_to_end(&mut back)).await.unwrap();
    assert_eq!(back, b"hello router");
}

/// A target on 127.0.0.1 that reports each connection's bytes when it ends.
async fn recording_target() -> (SocketAddr, mpsc::UnboundedReceiver<Vec<u8>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (ended, ends) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let ended = ended.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = stream.read_to_end(&mut got).await;
                let _ = ended.send(got);
            });
        }
    });
    (address, ends)
}

#[tokio::test]
async fn a_dial_dropped_after_shutdown_delivers_and_one_dropped_before_aborts() {
    let (target, mut ends) = recording_target().await;
    let (client, server) = tokio::io::duplex(64 * 1024);
    let handler: Arc<dyn Handler> = Arc::new(TestGateway::default());
    let served = tokio::spawn(serve(server, handler));
    let channel = Channel::connect(client).await.unwrap();

    // Written, shut down, dropped at once (the target has not answered): delivered.
    let command = vec![b'c'; 300 * 1024];
    let mut stream = channel.dial(direct(target)).await.unwrap();
    stream.write_all(&command).await.unwrap();
    stream.shutdown().await.unwrap();
    drop(stream);
    let got = within("delivered", ends.recv()).await.unwrap();
    assert!(got == command, "{} of {} bytes", got.len(), command.len());

    // Dropped without a shutdown: the target's connection is ended all the same.
    let mut stream = channel.dial(direct(target)).await.unwrap();
    stream.write_all(b"half a command").await.unwrap();
    drop(stream);
    let got = within("aborted", ends.recv()).await.unwrap();
    assert!(b"half a command".starts_with(&got), "{got:?}");

    // The server drops its channel: the gateway's side ends cleanly.
    drop(channel);
    let result = within("serve ends", served).await.unwrap();
    assert!(result.is_ok(), "{result:?}");
}

#[tokio::test]
async fn a_target_that_goes_away_fails_the_servers_writes_and_abort_ends_a_dial() {
    // A target that closes every connection at once.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    let (channel, _) = in_memory(ChannelConfig::default()).await;
    let mut stream = channel.dial(direct(closing)).await.unwrap();
    let chunk = vec![7u8; 64 * 1024];
    let error = within("writes fail", async {
        loop {
            if let Err(error) = stream.write_all(&chunk).await {
                return error;
            }
        }
    })
    .await;
    assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}");

    // The server aborts a dial: the target's connection ends.
    let (target, mut ends) = recording_target().await;
    let mut stream = channel.dial(direct(target)).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    stream.abort();
    let got = within("aborted", ends.recv()).await.unwrap();
    assert!(b"ping".starts_with(&got), "{got:?}");
}

#[tokio::test]
async fn a_hundred_dials_share_one_connection() {
    let echo = echo_server().await;
    let (channel, _) = in_memory(ChannelConfig::default()).await;
    let mut tasks = Vec::new();
    for n in 0..100u32 {
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = channel.dial(direct(echo)).await.unwrap();
            let data: Vec<u8> = (0..32 * 1024u32).map(|i| (i * 7 + n) as u8).collect();
            let (mut read, mut write) = tokio::io::split(&mut stream);
            let sent = data.clone();
            let writer = async move {
                write.write_all(&sent).await.unwrap();
                write.shutdown().await.unwrap();
            };
            let reader = async move {
                let mut back = Vec::new();
                read.read_to_end(&mut back).await.unwrap();
                back
            };
            let ((), back) = tokio::join!(writer, reader);
            assert_eq!(back, data, "stream {n}");
        }));
    }
    within("100 dials", async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await;
}

#[tokio::test]
async fn sixty_four_mebibytes_pass_through_one_dial_intact() {
    let echo = echo_server().await;
    let (channel, _) = in_memory(ChannelConfig::default()).await;
    let stream = channel.dial(direct(echo)).await.unwrap();
    let total = 64 * 1024 * 1024;
    let (mut read, mut write) = tokio::io::split(stream);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        let mut hash = Sha256::new();
        let mut block = vec![0u8; 256 * 1024];
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..total / block.len() {
            for chunk in block.chunks_mut(8) {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                chunk.copy_from_slice(&state.to_le_bytes());
            }
            hash.update(&block);
            write.write_all(&block).await.unwrap();
        }
        write.shutdown().await.unwrap();
        hash.finalize()
    });
    let mut hash = Sha256::new();
    let mut received = 0usize;
    let mut buf = vec![0u8; 128 * 1024];
    // Integrity, not speed, is the point: a debug build on a loaded 2-core machine has
    // taken over 20 s, so this one waits longer.
    tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let n = read.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            received += n;
        }
    })
    .await
    .expect("64 MiB within two minutes");
    assert_eq!(received, total);
    assert_eq!(hash.finalize(), writer.await.unwrap());
    eprintln!("64 MiB echoed in {:?}", started.elapsed());
}

#[tokio::test]
async fn a_failed_dial_has_the_kind_and_message_the_gateway_gave() {
    let nothing = closed_port().await;
    let (channel, _) = in_memory(ChannelConfig::default()).await;
    let refused = channel.dial(direct(nothing)).await.unwrap_err();
    assert_eq!(
        refused.kind(),
        io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    let cases = [
        (
            1,
            io::ErrorKind::TimedOut,
            "the router did not answer in 10 s",
        ),
        (2, io::ErrorKind::Other, "the tunnel's stack is full"),
        (
            8291,
            io::ErrorKind::NotConnected,
            "no session with the router",
        ),
    ];
    for (port, kind, message) in cases {
        let error = channel.dial(tunnel(port)).await.unwrap_err();
        assert_eq!(
            (error.kind(), error.to_string()),
            (kind, message.to_owned())
        );
    }
    // The connection is fine after failures.
    let echo = echo_server().await;
    let mut stream = channel.dial(direct(echo)).await.unwrap();
    stream.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    stream.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"x");
}

// ---------------------------------------------------------------------------------------
// Bytes the gateway sends with its reply; garbage on the streams (a raw h2 peer).

#[tokio::test]
async fn bytes_in_the_same_data_frame_as_the_reply_are_not_lost() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    // A raw h2 gateway: the reply and the target's first bytes in one DATA frame.
    tokio::spawn(async move {
        let mut connection = h2::server::handshake(server).await.unwrap();
        while let Some(Ok((request, mut respond))) = connection.accept().await {
            tokio::spawn(async move {
                let mut body = request.into_body();
                let mut decoder = Decoder::new();
                while decoder.next::<DialRequest>().unwrap().is_none() {
                    let chunk = body.data().await.unwrap().unwrap();
                    body.flow_control().release_capacity(chunk.len()).unwrap();
                    decoder.push(&chunk);
                }
                let mut send = respond
                    .send_response(http::Response::new(()), false)
                    .unwrap();
                let mut data = frame::encode(&control::msg::DialReply::Connected)
                    .unwrap()
                    .to_vec();
                data.extend_from_slice(b"MikroTik banner");
                send.send_data(Bytes::from(data), true).unwrap();
                // Keep the stream until the client is done.
                let _ = body.data().await;
            });
        }
    });
    let channel = Channel::connect(client).await.unwrap();
    let mut stream = channel.dial(tunnel(8291)).await.unwrap();
    let mut back = Vec::new();
    within("banner", stream.read_to_end(&mut back))
        .await
        .unwrap();
    assert_eq!(back, b"MikroTik banner");
}

/// A raw h2 client's control stream to a `TestGateway`: what it sends is written as is.
async fn raw_control() -> (
    h2::SendStream<Bytes>,
    h2::RecvStream,
    tokio::task::JoinHandle<Result<(), ChannelError>>,
) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let handler: Arc<dyn Handler> = Arc::new(TestGateway::default());
    let served = tokio::spawn(serve(server, handler));
    let (send, connection) = h2::client::handshake(client).await.unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    let request = http::Request::post("http://gateway/control")
        .body(())
        .unwrap();
    let (response, stream) = send.send_request(request, false).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    (stream, response.into_body(), served)
}

async fn read_up(body: &mut h2::RecvStream, decoder: &mut Decoder) -> Result<Option<Up>, String> {
    loop {
        if let Some(up) = decoder.next::<Up>().map_err(|e| e.to_string())? {
            return Ok(Some(up));
        }
        match body.data().await {
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                decoder.push(&chunk);
            }
            Some(Err(e)) => return Err(format!("{e}")),
            None => return Ok(None),
        }
    }
}

#[tokio::test]
async fn garbage_on_the_control_stream_is_refused_and_the_stream_goes_on_until_framing_breaks() {
    let (mut send, mut body, served) = raw_control().await;
    let mut decoder = Decoder::new();
    send.send_data(frame::encode(&hello("raw")).unwrap(), false)
        .unwrap();
    assert!(matches!(
        read_up(&mut body, &mut decoder).await,
        Ok(Some(Up::State(_)))
    ));
    // A frame that is not a message: refused, and the next one is read.
    let mut junk = 9u32.to_be_bytes().to_vec();
    junk.extend_from_slice(b"{\"type\":1");
    send.send_data(Bytes::from(junk), false).unwrap();
    send.send_data(frame::encode(&Down::Synced).unwrap(), false)
        .unwrap();
    let Ok(Some(Up::Refused { error })) = read_up(&mut body, &mut decoder).await else {
        panic!("no refusal");
    };
    assert!(error.starts_with("not a message"), "{error}");
    let Ok(Some(Up::Refused { error })) = read_up(&mut body, &mut decoder).await else {
        panic!("no echo");
    };
    assert_eq!(error, "echo {\"type\":\"synced\"}");
    // A length that breaks framing: refused, then the stream ends.
    send.send_data(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, b'{']), false)
        .unwrap();
    let refusal = read_up(&mut body, &mut decoder).await;
    let Ok(Some(Up::Refused { error })) = refusal else {
        panic!("no refusal: {refusal:?}");
    };
    assert!(error.contains("over the limit"), "{error}");
    let end = read_up(&mut body, &mut decoder).await;
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    // The connection and its gateway are still there.
    assert!(!served.is_finished());
}

#[tokio::test]
async fn a_control_stream_must_open_with_a_hello_of_this_protocol() {
    let firsts = [
        frame::encode(&Down::Synced).unwrap(),
        frame::encode(&Down::Hello {
            protocol: PROTOCOL + 1,
            server: "future".into(),
        })
        .unwrap(),
        Bytes::from_static(b"\0\0\0\x02[]"),
    ];
    for first in firsts {
        let (mut send, mut body, _) = raw_control().await;
        send.send_data(first, false).unwrap();
        let mut decoder = Decoder::new();
        let Ok(Some(Up::Refused { error })) = read_up(&mut body, &mut decoder).await else {
            panic!("no refusal");
        };
        assert!(
            error.contains("hello") || error.contains("protocol"),
            "{error}"
        );
        assert!(matches!(read_up(&mut body, &mut decoder).await, Ok(None)));
    }
}

#[tokio::test]
async fn other_paths_get_404_and_noise_instead_of_http2_ends_the_connection() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let handler: Arc<dyn Handler> = Arc::new(TestGateway::default());
    tokio::spawn(serve(server, handler.clone()));
    let (send, connection) = h2::client::handshake(client).await.unwrap();
    tokio::spawn(connection);
    let mut send = send.ready().await.unwrap();
    for (method, path) in [("POST", "/metrics"), ("GET", "/control"), ("GET", "/")] {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("http://gateway{path}"))
            .body(())
            .unwrap();
        let (response, _) = send.send_request(request, true).unwrap();
        assert_eq!(response.await.unwrap().status(), 404, "{method} {path}");
    }
    // Bytes that are not HTTP/2 at all.
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn(serve(server, handler));
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let result = within("serve ends", served).await.unwrap();
    assert!(result.is_err());
}

// ---------------------------------------------------------------------------------------
// Keepalive: a peer that goes silent (a dropped link) is declared dead.

/// A stream that can be made to go silent: reads never complete, writes vanish.
struct Stallable<T> {
    inner: T,
    stalled: Arc<AtomicBool>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Stallable<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stalled.load(Ordering::SeqCst) {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stallable<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.stalled.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.stalled.load(Ordering::SeqCst) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn quick() -> ChannelConfig {
    ChannelConfig {
        keepalive_interval: Duration::from_millis(200),
        keepalive_timeout: Duration::from_secs(1),
        ..ChannelConfig::default()
    }
}

#[tokio::test]
async fn a_silent_gateway_is_declared_dead_and_a_live_one_is_not() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let stalled = Arc::new(AtomicBool::new(false));
    let client = Stallable {
        inner: client,
        stalled: stalled.clone(),
    };
    let handler: Arc<dyn Handler> = Arc::new(TestGateway::default());
    tokio::spawn(serve(server, handler));
    let channel = Channel::connect_with(client, quick()).await.unwrap();
    let mut control = channel.control(hello("s")).await.unwrap();
    assert!(matches!(control.recv().await, Some(Up::State(_))));
    // Pings answered: two seconds of them leave the connection up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!channel.is_closed());
    // The link drops silently.
    stalled.store(true, Ordering::SeqCst);
    let started = Instant::now();
    within("declared dead", channel.closed()).await;
    let took = started.elapsed();
    // At most an interval and a timeout (1.2 s), with room for a loaded machine.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(channel.is_closed());
    assert_eq!(within("control ends", control.recv()).await, None);
    let error = channel.dial(tunnel(8291)).await.unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted, "{error}");
}

#[tokio::test]
async fn a_gateway_gives_up_a_silent_server() {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let stalled = Arc::new(AtomicBool::new(false));
    let server = Stallable {
        inner: server,
        stalled: stalled.clone(),
    };
    let gateway = Arc::new(TestGateway::default());
    let handler: Arc<dyn Handler> = gateway.clone();
    let served = tokio::spawn(serve_with(server, handler, quick()));
    let channel = Channel::connect(client).await.unwrap();
    let mut control = channel.control(hello("s")).await.unwrap();
    assert!(matches!(control.recv().await, Some(Up::State(_))));
    stalled.store(true, Ordering::SeqCst);
    let result = within("serve gives up", served).await.unwrap();
    assert!(
        matches!(result, Err(ChannelError::KeepaliveTimeout(_))),
        "{result:?}"
    );
    // The handler's stream ended with the connection.
    let running = gateway.controls.lock().unwrap()[0].clone();
    within("handler returns", async {
        while running.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Real TCP and mTLS.

struct Pki {
    ca: Ca,
    gateway: GatewayId,
    gateway_cert: String,
    gateway_key: KeyPem,
    server_cert: String,
    server_key: KeyPem,
}

fn pki() -> Pki {
    let ca = Ca::generate().unwrap();
    let gateway = GatewayId::new();
    let (gateway_key, csr) = pki::gateway_request().unwrap();
    let gateway_cert = ca.sign_gateway(&csr, gateway).unwrap();
    // The server's certificate from the CA as stored and loaded again (its key sealed
    // in the database, in real life): what it signs chains to the same CA.
    let reloaded = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    let (server_cert, server_key) = reloaded.issue_server("server-1").unwrap();
    Pki {
        ca,
        gateway,
        gateway_cert,
        gateway_key,
        server_cert,
        server_key,
    }
}

/// A gateway listening with TLS on 127.0.0.1; every handshake's outcome is reported.
async fn tls_gateway(
    config: rustls::ServerConfig,
) -> (SocketAddr, mpsc::UnboundedReceiver<Result<(), String>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (report, reports) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let report = report.clone();
            tokio::spawn(async move {
                match acceptor.accept(tcp).await {
                    Ok(tls) => {
                        let _ = report.send(Ok(()));
                        let handler: Arc<dyn Handler> = Arc::new(TestGateway::default());
                        let _ = serve(tls, handler).await;
                    }
                    Err(e) => {
                        let _ = report.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
    (address, reports)
}

async fn tls_channel(
    address: SocketAddr,
    config: rustls::ClientConfig,
    gateway: GatewayId,
) -> Result<Channel, String> {
    let tcp = TcpStream::connect(address).await.unwrap();
    let tls = TlsConnector::from(Arc::new(config))
        .connect(pki::gateway_server_name(gateway), tcp)
        .await
        .map_err(|e| e.to_string())?;
    Channel::connect(tls).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn over_tcp_and_mtls_control_and_dials_work() {
    let p = pki();
    let echo = echo_server().await;
    // The gateway as `postern gateway` runs it: a listener, `serve_tls` per connection.
    let gateway_tls = pki::gateway_tls(&p.gateway_cert, &p.gateway_key, p.ca.cert_pem()).unwrap();
    let gateway_tls = Arc::new(gateway_tls);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let served = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let handler: Arc<dyn Handler> = Arc::new(TestGateway::default());
        serve_tls(tcp, gateway_tls, handler, ChannelConfig::default()).await
    });
    let server_tls = pki::server_tls(&p.server_cert, &p.server_key, p.ca.cert_pem()).unwrap();
    let tcp = TcpStream::connect(address).await.unwrap();
    let channel = Channel::connect_tls(
        tcp,
        Arc::new(server_tls),
        p.gateway,
        ChannelConfig::default(),
    )
    .await
    .unwrap();
    let mut control = channel.control(hello("tls")).await.unwrap();
    match within("state", control.recv()).await.unwrap() {
        Up::State(state) => assert_eq!(state.gateway, "hello tls"),
        other => panic!("{other:?}"),
    }
    let mut tasks = Vec::new();
    for n in 0..20u8 {
        let channel = channel.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = channel.dial(direct(echo)).await.unwrap();
            let data = vec![n; 256 * 1024];
            stream.write_all(&data).await.unwrap();
            stream.shutdown().await.unwrap();
            let mut back = Vec::new();
            stream.read_to_end(&mut back).await.unwrap();
            assert_eq!(back, data);
        }));
    }
    within("dials over tls", async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await;
    drop(control);
    drop(channel);
    let result = within("serve_tls ends", served).await.unwrap();
    assert!(result.is_ok(), "{result:?}");
}

/// Connects with `client` to a gateway serving `gateway`, meaning to reach `meant`:
/// the gateway's and the server's verdicts.
async fn handshake(
    gateway: rustls::ServerConfig,
    client: rustls::ClientConfig,
    meant: GatewayId,
) -> (Result<(), String>, Result<(), String>) {
    let (address, mut reports) = tls_gateway(gateway).await;
    let server_side = match tls_channel(address, client, meant).await {
        // TLS 1.3: the client may finish before the gateway has judged its certificate;
        // a stream shows the verdict.
        Ok(channel) => channel
            .control(hello("x"))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let gateway_side = within("gateway verdict", reports.recv()).await.unwrap();
    (gateway_side, server_side)
}

#[tokio::test]
async fn each_side_refuses_certificates_that_are_not_the_one_it_requires() {
    let p = pki();
    let ca_pem = p.ca.cert_pem();
    let gateway_tls = || pki::gateway_tls(&p.gateway_cert, &p.gateway_key, ca_pem).unwrap();
    let server_tls = || pki::server_tls(&p.server_cert, &p.server_key, ca_pem).unwrap();

    // The right pair agrees.
    let (g, s) = handshake(gateway_tls(), server_tls(), p.gateway).await;
    assert_eq!((g, s), (Ok(()), Ok(())));

    // No client certificate.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let anonymous = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (g, s) = handshake(gateway_tls(), anonymous, p.gateway).await;
    assert!(
        g.as_ref().is_err_and(|e| e.contains("certificate")),
        "{g:?}"
    );
    assert!(s.is_err());

    // A gateway's certificate, signed by the CA, used as a client.
    let (other_key, csr) = pki::gateway_request().unwrap();
    let other_gateway = GatewayId::new();
    let other_cert = p.ca.sign_gateway(&csr, other_gateway).unwrap();
    let posing = pki::server_tls(&other_cert, &other_key, ca_pem).unwrap();
    let (g, s) = handshake(gateway_tls(), posing, p.gateway).await;
    assert!(g.is_err(), "a gateway certificate was accepted as a server");
    assert!(s.is_err());

    // Another gateway's valid certificate where this one was meant.
    let other_gateway_tls = pki::gateway_tls(&other_cert, &other_key, ca_pem).unwrap();
    let (g, s) = handshake(other_gateway_tls, server_tls(), p.gateway).await;
    assert!(
        s.as_ref().is_err_and(|e| e.contains("not valid for name")),
        "{s:?}"
    );
    assert!(g.is_err());

    // Certificates of another CA, each way.
    let q = pki();
    let foreign_server = pki::server_tls(&q.server_cert, &q.server_key, ca_pem).unwrap();
    let (g, s) = handshake(gateway_tls(), foreign_server, p.gateway).await;
    assert!(
        g.as_ref().is_err_and(|e| e.contains("UnknownIssuer")),
        "{g:?}"
    );
    assert!(s.is_err());
    let foreign_gateway = pki::gateway_tls(&q.gateway_cert, &q.gateway_key, ca_pem).unwrap();
    let (g, s) = handshake(foreign_gateway, server_tls(), q.gateway).await;
    assert!(
        s.as_ref().is_err_and(|e| e.contains("UnknownIssuer")),
        "{s:?}"
    );
    assert!(g.is_err());

    // A server certificate posing as a gateway (it names the server role, for clients).
    let posing_gateway = pki::gateway_tls(&p.server_cert, &p.server_key, ca_pem).unwrap();
    let (_, s) = handshake(posing_gateway, server_tls(), p.gateway).await;
    assert!(s.is_err());

    // TLS 1.2 is not offered.
    let mut old = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    old.alpn_protocols = vec![b"h2".to_vec()];
    let (g, _) = handshake(gateway_tls(), old, p.gateway).await;
    assert!(g.is_err());
}
