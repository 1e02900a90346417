//! The RouterOS API protocol, and nothing of Postern.
//!
//! # Layout
//!
//! - [`codec`]: the wire format, sans I/O: word lengths, sentences, limits.
//! - [`message`]: commands and replies (`!re`, `!done`, `!trap`, `!fatal`, `!empty`),
//!   attributes, queries and tags.
//! - [`connection`]: sentences over any async byte stream, buffered; a reader and a
//!   writer half for separate tasks.
//! - [`tls`]: rustls (ring) settings: a pinned certificate, or an explicit insecure
//!   opt-in.
//! - [`client`]: the async client: connect, log in (plaintext, then the MD5 challenge),
//!   many tagged commands on one connection, `/cancel`, timeouts, lost connections.
//! - [`item`]: `!re` items with typed getters, and a finished command's [`Response`].
//! - [`api`]: typed helpers for the menus a remote-access tool needs: users, groups,
//!   active sessions, dst-nat, the scheduler, identity, resources, device mode.
//! - [`error`]: the crate's one error type.
//!
//! **Architecture invariant:** this crate knows nothing of grants, sites or Postern's
//! tags; it speaks RouterOS to whoever asks.

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod api;
pub mod client;
pub mod codec;
pub mod connection;
pub mod error;
pub mod item;
pub mod message;
pub mod tls;

pub use client::{Client, ClientConfig, Password, Request, Tag};
pub use codec::{DecodeError, Decoder, EncodeError, Sentence};
pub use connection::Connection;
pub use error::Error;
pub use item::{Item, Response};
pub use message::{Attributes, Command, Reply, ReplyError, ReplyKind, TrapCategory, Words};
pub use tls::{CertFingerprint, TlsMode};
