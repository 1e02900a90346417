//! WireGuard termination for many peers on one UDP socket, and TCP to the peers' tunnel
//! addresses through a userspace TCP/IP stack: no kernel module, no TUN device, no root.
//!
//! A region's gateway holds one [`Tunnel`]. Routers (behind NAT) are its peers: each has a
//! public key and one tunnel address inside the region's prefix; each initiates the
//! WireGuard handshake and keeps its NAT mapping open with a persistent keepalive. The
//! gateway only responds, follows a peer to the source of its last authenticated
//! datagram, and rate-limits handshakes with cookie replies. [`Tunnel::dial`] opens a TCP
//! stream to a peer's address and port, for the RouterOS API client, entry-port forwards
//! and the terminal.
//!
//! **Architecture invariant:** `tunnel` knows nothing of grants, routers or the database.
//! It is told which keys may connect at which addresses, and is asked for streams.
//!
//! # Layout
//!
//! - [`key`]: [`PublicKey`] and [`PrivateKey`], in the base64 form `wg` and RouterOS use.
//! - [`table`]: the sans-I/O [`PeerTable`]: boringtun's `Tunn` per peer, lookups by key,
//!   index and address, roaming, the handshake limiter, per-peer figures and the
//!   [`Counters`] of everything refused. Time is a parameter.
//! - `device`: the virtual IP device between the table and smoltcp: two bounded queues.
//! - [`driver`]: [`Tunnel`], the thin tokio driver: one UDP socket, the table, a smoltcp
//!   interface, `run(socket, shutdown)`, `dial` and [`TunnelStream`].
//! - [`error`]: [`KeyError`], [`PeerError`], [`TunnelError`].

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod device;
pub mod driver;
pub mod error;
pub mod key;
pub mod table;

pub use driver::{PeerStatus, Tunnel, TunnelConfig, TunnelStats, TunnelStream, bind_udp};
pub use error::{KeyError, PeerError, TunnelError};
pub use key::{PrivateKey, PublicKey};
pub use table::{Counters, PeerStats, PeerTable, Received, TableConfig};

#[cfg(test)]
mod tests {
    /// STYLE.md: each module opens with a `//!` comment and the root's `# Layout` names it.
    #[test]
    fn modules_have_a_header_and_a_place_in_the_layout() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let root = std::fs::read_to_string(src.join("lib.rs")).unwrap();
        let (_, layout) = root
            .split_once("# Layout")
            .expect("lib.rs has a # Layout section");
        let mut seen = 0;
        for entry in std::fs::read_dir(&src).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("//!"),
                "{} has no //! header",
                path.display()
            );
            let module = path.file_stem().unwrap().to_str().unwrap();
            if module != "lib" {
                assert!(
                    layout.contains(&format!("`{module}`"))
                        || layout.contains(&format!("[`{module}`]")),
                    "the layout does not mention {module}"
                );
                seen += 1;
            }
        }
        assert_eq!(seen, 5);
    }
}
