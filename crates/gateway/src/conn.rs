//! One forwarded connection's byte pumping: both directions at once, each through
//! `splice` where it works and the plain copy otherwise, counting bytes as they are
//! delivered. Connecting, cancellation and events are the gateway's (see `gateway`).

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

use crate::copy;
use crate::event::Transfer;
use crate::gateway::TransferMode;

/// Bytes delivered so far, readable while the connection runs.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Client → target.
    pub(crate) bytes_in: AtomicU64,
    /// Target → client.
    pub(crate) bytes_out: AtomicU64,
}

impl Counters {
    pub(crate) fn get(&self) -> (u64, u64) {
        (
            self.bytes_in.load(Ordering::Relaxed),
            self.bytes_out.load(Ordering::Relaxed),
        )
    }
}

/// How a gateway pumps bytes, shared by its connections.
#[derive(Debug)]
pub(crate) struct Pumps {
    pub(crate) mode: TransferMode,
    #[cfg(target_os = "linux")]
    pub(crate) pipes: crate::splice::PipePool,
}

impl Pumps {
    pub(crate) fn new(mode: TransferMode, pipe_size: Option<usize>) -> Self {
        #[cfg(not(target_os = "linux"))]
        let _ = pipe_size;
        Self {
            mode,
            #[cfg(target_os = "linux")]
            pipes: crate::splice::PipePool::new(PIPES_KEPT, pipe_size),
        }
    }
}

/// Idle pipes a gateway keeps for reuse (two descriptors each).
#[cfg(target_os = "linux")]
const PIPES_KEPT: usize = 256;

/// Forwards until both directions reach end of stream (half-closes are passed on), or
/// until either fails.
pub(crate) async fn forward(
    client: &TcpStream,
    upstream: &TcpStream,
    counters: &Counters,
    pumps: &Pumps,
) -> io::Result<Transfer> {
    let (a, b) = tokio::try_join!(
        pump(client, upstream, &counters.bytes_in, pumps),
        pump(upstream, client, &counters.bytes_out, pumps),
    )?;
    Ok(if a == Transfer::Splice && b == Transfer::Splice {
        Transfer::Splice
    } else {
        Transfer::Copy
    })
}

async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    counter: &AtomicU64,
    pumps: &Pumps,
) -> io::Result<Transfer> {
    #[cfg(target_os = "linux")]
    if pumps.mode == TransferMode::Splice {
        use crate::splice::{SpliceError, pump as splice_pump};
        match splice_pump(from, to, counter, &pumps.pipes).await {
            Ok(()) => return Ok(Transfer::Splice),
            Err(SpliceError::Io(e)) => return Err(e),
            Err(SpliceError::Unsupported(e)) => {
                tracing::debug!(error = %e, "splice unavailable, copying instead");
            }
        }
    }
    copy::pump(from, to, counter).await?;
    Ok(Transfer::Copy)
}

/// Forwards between a client and a dialed upstream (the tunnel) through user space,
/// until both directions reach end of stream (half-closes are passed on), or until
/// either fails.
pub(crate) async fn forward_dialed(
    client: &TcpStream,
    upstream: &mut crate::BoxUpstream,
    counters: &Counters,
) -> io::Result<Transfer> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut up_read, mut up_write) = tokio::io::split(&mut **upstream);
    let inbound = async {
        loop {
            client.readable().await?;
            let mut buf: Vec<u8> = Vec::with_capacity(DIAL_BUF);
            match client.try_read_buf(&mut buf) {
                Ok(0) => {
                    up_write.shutdown().await?;
                    return Ok::<(), io::Error>(());
                }
                Ok(n) => {
                    up_write.write_all(buf.get(..n).unwrap_or_default()).await?;
                    counters.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    };
    let outbound = async {
        let mut buf = vec![0u8; DIAL_BUF];
        loop {
            let n = up_read.read(&mut buf).await?;
            if n == 0 {
                return copy::shutdown_write(client);
            }
            copy::write_all(
                client,
                buf.get(..n).unwrap_or_default(),
                &counters.bytes_out,
            )
            .await?;
        }
    };
    tokio::try_join!(inbound, outbound)?;
    Ok(Transfer::Copy)
}

/// The buffer of a dialed connection's pump, each way.
const DIAL_BUF: usize = 64 * 1024;
