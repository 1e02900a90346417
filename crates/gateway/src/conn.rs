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

/// Forwards until both directions reach end of stream (half-closes are passed on), or
/// until either fails.
pub(crate) async fn forward(
    client: &TcpStream,
    upstream: &TcpStream,
    counters: &Counters,
    mode: TransferMode,
    pipe_size: Option<usize>,
) -> io::Result<Transfer> {
    let (a, b) = tokio::try_join!(
        pump(client, upstream, &counters.bytes_in, mode, pipe_size),
        pump(upstream, client, &counters.bytes_out, mode, pipe_size),
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
    mode: TransferMode,
    pipe_size: Option<usize>,
) -> io::Result<Transfer> {
    #[cfg(target_os = "linux")]
    if mode == TransferMode::Splice {
        use crate::splice::{SpliceError, pump as splice_pump};
        match splice_pump(from, to, counter, pipe_size).await {
            Ok(()) => return Ok(Transfer::Splice),
            Err(SpliceError::Io(e)) => return Err(e),
            Err(SpliceError::Unsupported(e)) => {
                tracing::debug!(error = %e, "splice unavailable, copying instead");
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (mode, pipe_size);
    copy::pump(from, to, counter).await?;
    Ok(Transfer::Copy)
}
