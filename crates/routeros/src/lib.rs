//! The RouterOS API protocol, and nothing of Postern.
//!
//! # Layout
//!
//! - [`codec`]: the wire format, sans I/O: word lengths, sentences, limits.
//! - [`message`]: commands and replies (`!re`, `!done`, `!trap`, `!fatal`, `!empty`),
//!   attributes, queries and tags.
//!
//! **Architecture invariant:** this crate knows nothing of grants, sites or Postern's
//! tags; it speaks RouterOS to whoever asks.

pub mod codec;
pub mod message;

pub use codec::{DecodeError, Decoder, EncodeError, Sentence};
pub use message::{Attributes, Command, Reply, ReplyError, ReplyKind, TrapCategory, Words};
