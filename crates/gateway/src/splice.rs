//! The Linux zero-copy pump: one direction of a connection moved socket → pipe → socket
//! with `splice(2)`, so the bytes never enter userspace.
//!
//! No `unsafe` here: `rustix::pipe::splice` is a safe function over borrowed file
//! descriptors. Both sockets are tokio's (non-blocking), the pipe is created with
//! `O_NONBLOCK`, and every call passes `SPLICE_F_NONBLOCK`, so no call ever blocks the
//! runtime; readiness comes from tokio (`readable`/`writable` + `try_io`). The pipe is
//! always drained before the next read from the socket, so a read that would block means
//! the socket is empty (never that the pipe is full), which keeps tokio's readiness
//! bookkeeping true. A splice into a socket whose peer is gone would raise `SIGPIPE`;
//! Rust's runtime sets `SIGPIPE` to ignored before `main` in every binary, so it comes
//! back as `EPIPE` and ends the connection like any other error.
//!
//! A pipe's slots hold at most a page each, so a default pipe (16 slots) moves 64 KiB
//! per call whatever is asked. Once a read fills half the pipe (bulk traffic), the pipe
//! grows for the rest of the burst (`Config::pipe_size`, 1 MiB: 256 slots); on loopback
//! that is 16× fewer calls and cut the gateway's CPU time per GiB from about 0.47 s to
//! 0.33 s (`benches/forward.rs`). Interactive traffic never fills a pipe, so its pipes
//! stay small.
//!
//! On loopback, splice and the plain copy cost about the same in total (about 0.9 CPU
//! seconds per GiB for writer, gateway and sink together): splice spends less in the
//! gateway (0.30 against 0.39-0.46 s/GiB) but passes the writer's pages on, so the
//! writer and the sink spend more. Splice stays the default because the gateway's own
//! CPU time is what a gateway host pays, and with real NICs the endpoints are elsewhere.
//!
//! Pipes are borrowed from a [`PipePool`] for one burst (until the socket has nothing
//! more to read) and given back empty and shrunk to the default, so an idle connection
//! holds no pipe and the pool holds no more of the user's pipe quota than default pipes
//! would: 10,000 idle sessions cost 20,000 socket descriptors, not 60,000. A pipe that
//! may still hold bytes (an error or a kill mid-burst) is closed, never pooled.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use rustix::io::Errno;
use rustix::pipe::{
    PipeFlags, SpliceFlags, fcntl_getpipe_size, fcntl_setpipe_size, pipe_with, splice,
};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::copy::shutdown_write;

/// Why the splice pump stopped short.
#[derive(Debug)]
pub(crate) enum SpliceError {
    /// Splice cannot be used here and no byte has moved yet: use the plain copy.
    Unsupported(io::Error),
    /// A real I/O error, after which the connection is over.
    Io(io::Error),
}

impl From<io::Error> for SpliceError {
    fn from(e: io::Error) -> Self {
        SpliceError::Io(e)
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error().map(Errno::from_raw_os_error),
        Some(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP)
    )
}

/// A pipe, how much it holds at most, and the size it was made with.
#[derive(Debug)]
pub(crate) struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
    /// The kernel's default for a new pipe, which the pool keeps.
    base: usize,
    /// Growing was refused during this burst (per-user pipe limits): don't ask again.
    grow_refused: bool,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        let capacity = fcntl_getpipe_size(&write).unwrap_or(64 * 1024);
        Ok(Self {
            read,
            write,
            capacity,
            base: capacity,
            grow_refused: false,
        })
    }

    /// Best effort: the kernel caps the size at `pipe-max-size` and refuses it beyond
    /// the user's pipe quota (`pipe-user-pages-soft`), which leaves the pipe as it is.
    fn grow(&mut self, to: usize) {
        if self.capacity >= to || self.grow_refused {
            return;
        }
        match fcntl_setpipe_size(&self.write, to) {
            Ok(size) => self.capacity = size,
            Err(_) => self.grow_refused = true,
        }
    }

    /// Back to the default size, so a pooled pipe holds no more of the quota than a new
    /// one. False if the kernel refused, in which case the pipe is not pooled.
    fn shrink(&mut self) -> bool {
        self.grow_refused = false;
        if self.capacity <= self.base {
            return true;
        }
        match fcntl_setpipe_size(&self.write, self.base) {
            Ok(size) => {
                self.capacity = size;
                true
            }
            Err(_) => false,
        }
    }
}

/// Empty pipes shared by every connection of a gateway.
#[derive(Debug)]
pub(crate) struct PipePool {
    pipes: Mutex<Vec<Pipe>>,
    keep: usize,
    grow_to: Option<usize>,
}

impl PipePool {
    /// A pool keeping at most `keep` idle pipes of the kernel's default size; a pipe
    /// that a burst fills grows to `grow_to` bytes for the rest of that burst (`None`:
    /// pipes keep the default size).
    pub(crate) fn new(keep: usize, grow_to: Option<usize>) -> Self {
        Self {
            pipes: Mutex::new(Vec::new()),
            keep,
            grow_to,
        }
    }

    fn take(&self) -> io::Result<Pipe> {
        let pooled = self
            .pipes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match pooled {
            Some(pipe) => Ok(pipe),
            None => Pipe::new(),
        }
    }

    /// Gives back a pipe known to be empty.
    fn put(&self, mut pipe: Pipe) {
        if !pipe.shrink() {
            return;
        }
        let mut pipes = self.pipes.lock().unwrap_or_else(PoisonError::into_inner);
        if pipes.len() < self.keep {
            pipes.push(pipe);
        }
    }
}

/// The most one read asks for. The pipe is empty before every read, so asking for more
/// than its byte capacity is safe: the kernel stops when the pipe's slots are full, and
/// with large socket fragments (loopback, GRO) one call can move far more than 64 KiB.
const READ_MAX: usize = 1 << 20;

enum Burst {
    /// The socket has nothing more for now; the pipe is empty.
    Drained,
    /// End of stream; the pipe is empty.
    Eof,
}

/// Moves bytes from `from` to `to` until `from` reaches end of stream, then shuts down
/// the write side of `to`. Adds every byte written to `counter`.
pub(crate) async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    counter: &AtomicU64,
    pool: &PipePool,
) -> Result<(), SpliceError> {
    let mut moved = false;
    loop {
        from.readable().await?;
        let mut pipe = match pool.take() {
            Ok(pipe) => pipe,
            // Out of descriptors or pipe pages: the copy needs neither.
            Err(e) if !moved => return Err(SpliceError::Unsupported(e)),
            Err(e) => return Err(SpliceError::Io(e)),
        };
        // On error the pipe is dropped here: it may still hold bytes.
        let burst = burst(from, to, counter, &mut pipe, pool.grow_to, &mut moved).await?;
        pool.put(pipe);
        if let Burst::Eof = burst {
            break;
        }
    }
    shutdown_write(to)?;
    Ok(())
}

/// Splices until the socket would block or ends, draining the pipe after every read.
async fn burst(
    from: &TcpStream,
    to: &TcpStream,
    counter: &AtomicU64,
    pipe: &mut Pipe,
    grow_to: Option<usize>,
    moved: &mut bool,
) -> Result<Burst, SpliceError> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        let read = from.try_io(Interest::READABLE, || {
            splice(
                from,
                None,
                &pipe.write,
                None,
                READ_MAX.max(pipe.capacity),
                flags,
            )
            .map_err(io::Error::from)
        });
        let mut in_pipe = match read {
            Ok(0) => return Ok(Burst::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Burst::Drained),
            Err(e) if !*moved && unsupported(&e) => return Err(SpliceError::Unsupported(e)),
            Err(e) => return Err(SpliceError::Io(e)),
        };
        *moved = true;
        // A read that filled at least half the pipe (slots hold at most a page each, so
        // "full" can be short of the byte capacity) means bulk: a bigger pipe moves it
        // in fewer calls.
        let bulk = in_pipe.saturating_mul(2) >= pipe.capacity;
        while in_pipe > 0 {
            to.writable().await?;
            let written = to.try_io(Interest::WRITABLE, || {
                splice(&pipe.read, None, to, None, in_pipe, flags).map_err(io::Error::from)
            });
            match written {
                Ok(0) => return Err(SpliceError::Io(io::ErrorKind::WriteZero.into())),
                Ok(m) => {
                    in_pipe = in_pipe.saturating_sub(m);
                    counter.fetch_add(m as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(SpliceError::Io(e)),
            }
        }
        if let (true, Some(size)) = (bulk, grow_to) {
            pipe.grow(size);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe grows on demand and goes back to the pool at the default size.
    #[test]
    fn a_grown_pipe_is_pooled_at_the_default_size() {
        let pool = PipePool::new(4, Some(1 << 20));
        let mut pipe = pool.take().unwrap();
        let base = pipe.capacity;
        assert_eq!(base, pipe.base);
        let max: usize = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        pipe.grow(1 << 20);
        assert_eq!(pipe.capacity, fcntl_getpipe_size(&pipe.write).unwrap());
        if max >= 1 << 20 && !pipe.grow_refused {
            assert_eq!(pipe.capacity, 1 << 20);
        }
        pool.put(pipe);
        let again = pool.take().unwrap();
        assert_eq!(again.capacity, base);
        assert_eq!(fcntl_getpipe_size(&again.write).unwrap(), base);
        assert!(!again.grow_refused);
    }
}
