//! The control channel between Postern's servers (the control plane) and its gateways
//! (the data plane of a region): what they say to each other and how.
//!
//! A server opens one long-lived, mutually authenticated connection to each gateway and
//! multiplexes streams over it: one control stream (desired state down, events and
//! status up, as [`msg::Down`] and [`msg::Up`] frames) and one stream per dial (a TCP
//! stream to a router's tunnel address, which the gateway makes through its tunnel).
//! The gateway inside `postern server` is driven over the same channel, in memory.
//!
//! **Architecture invariant:** `control` knows nothing of the database, of HTTP's API or
//! of how a gateway forwards: it is the contract between the two sides, and the only
//! code both share.
//!
//! # Layout
//!
//! - [`msg`]: the messages, one type per direction, versioned ([`msg::PROTOCOL`]).
//! - [`frame`]: length-prefixed frames and their incremental decoder (sans-I/O).
//! - [`channel`]: the connection, HTTP/2 over any byte stream: a server's [`Channel`]
//!   (control stream, dial streams), a gateway's [`serve`] and its [`Handler`];
//!   keepalive, flow control, bounds.
//! - [`pki`]: the control plane's CA, gateways' and servers' certificates, and the
//!   rustls configurations that check each side's role (mTLS, TLS 1.3).

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod channel;
pub mod frame;
pub mod msg;
pub mod pki;

pub use channel::{
    Channel, ChannelConfig, ChannelError, ControlStream, DialIo, DialStream, Handler, serve,
    serve_tls, serve_with,
};

#[cfg(test)]
mod tests {
    /// Every module says its role in a `//!` comment (STYLE.md), and the crate root lists
    /// every module under `# Layout`.
    #[test]
    fn every_module_opens_with_a_doc_comment_and_is_in_the_layout() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let root = std::fs::read_to_string(dir.join("lib.rs")).unwrap();
        let layout = root.split("# Layout").nth(1).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                text.starts_with("//!"),
                "{} lacks a //! comment",
                path.display()
            );
            let name = path.file_stem().unwrap().to_str().unwrap();
            if name != "lib" {
                assert!(layout.contains(name), "{name} is not in # Layout");
            }
        }
    }
}
