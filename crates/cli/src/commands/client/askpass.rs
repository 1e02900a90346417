//! Handing a grant's password to OpenSSH without argv, the environment or a file: ssh
//! runs `$SSH_ASKPASS`, this very binary (`SSH_ASKPASS_REQUIRE=force`), for the password
//! prompt, and the helper fetches the password from the `postern ssh` that started ssh
//! over a Unix socket in a fresh directory only the user can enter (0700). The socket
//! answers its first connection alone and is then removed.
//!
//! Why not an inherited pipe: OpenSSH closes every descriptor above stderr when it
//! starts (`closefrom(3)`), so its askpass child never sees one of ours (and the number
//! may by then name another descriptor of ssh's). The socket's path is in the helper's
//! environment (`POSTERN_ASKPASS_SOCKET`), which is no secret: the directory keeps
//! other users out, and the first connection spends the password.

use std::ffi::OsString;
use std::io::{Read as _, Write as _};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use super::Failure;

/// The variable that puts `postern` in askpass mode, naming the socket.
pub const SOCKET_VAR: &str = "POSTERN_ASKPASS_SOCKET";

/// A served password: the socket in its private directory.
pub struct Served {
    dir: tempfile::TempDir,
    pub socket: PathBuf,
}

impl Served {
    /// Listens in a new private directory and answers the first connection with
    /// `password`, then stops listening.
    pub fn start(password: String) -> Result<Served, Failure> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        // tempfile makes the directory with mode 0700.
        let dir = tempfile::Builder::new()
            .prefix("postern-askpass-")
            .tempdir_in(base)
            .map_err(|e| Failure::error(format!("cannot make the askpass directory: {e}")))?;
        let socket = dir.path().join("s");
        let listener = UnixListener::bind(&socket)
            .map_err(|e| Failure::error(format!("cannot listen for the askpass helper: {e}")))?;
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
                let _ = stream.write_all(password.as_bytes());
            }
            // The listener is dropped here: no second answer.
        });
        Ok(Served { dir, socket })
    }

    /// Stops serving: the directory and its socket are removed.
    pub fn close(self) {
        let _ = self.dir.close();
    }
}

/// The askpass helper: `postern PROMPT` with `POSTERN_ASKPASS_SOCKET` set, run by ssh.
/// Prints the password for a password prompt; refuses anything else (a host key
/// question, a passphrase) so that ssh fails rather than taking a wrong answer.
pub fn helper(socket: OsString) -> std::process::ExitCode {
    let prompt = std::env::args().nth(1).unwrap_or_default();
    if !prompt.to_ascii_lowercase().contains("password") {
        eprintln!("postern: ssh asked something postern does not answer: {prompt}");
        return std::process::ExitCode::FAILURE;
    }
    let mut password = String::new();
    let read = UnixStream::connect(PathBuf::from(socket)).and_then(|s| {
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.take(4096).read_to_string(&mut password)
    });
    if read.is_err() || password.is_empty() {
        eprintln!("postern: the password was already handed out (or postern ssh has ended)");
        return std::process::ExitCode::FAILURE;
    }
    let mut out = std::io::stdout();
    if writeln!(out, "{password}")
        .and_then(|()| out.flush())
        .is_err()
    {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
