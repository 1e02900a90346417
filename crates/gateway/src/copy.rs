//! The portable pump: one direction of a connection through a userspace buffer, driven by
//! tokio's readiness. The buffer is allocated at the first byte, so an idle connection
//! costs no buffer. Used where `splice` is unavailable, and when forced by configuration.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

/// The copy buffer: large enough for bulk transfer, allocated lazily.
const BUF_SIZE: usize = 64 * 1024;

/// Moves bytes from `from` to `to` until `from` reaches end of stream, then shuts down
/// the write side of `to`. Adds every byte written to `counter`.
pub(crate) async fn pump(from: &TcpStream, to: &TcpStream, counter: &AtomicU64) -> io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        from.readable().await?;
        if buf.is_empty() {
            buf.resize(BUF_SIZE, 0);
        }
        let n = match from.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut chunk = buf.get(..n).unwrap_or_default();
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
    }
    shutdown_write(to)
}

/// Half-closes `to` after its peer's data is all through: the far side sees end of
/// stream and may still answer. A socket already disconnected is not an error.
pub(crate) fn shutdown_write(to: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(to).shutdown(Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}
