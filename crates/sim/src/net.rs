//! Small socket helpers shared by the services.

use tokio::net::TcpStream;

/// Closes a connection with a reset (SO_LINGER 0), as a router refusing service does.
pub fn reset(stream: TcpStream) {
    // An error only means a plain close, which is still a refusal.
    let _ = stream.set_zero_linger();
    drop(stream);
}
