//! The data plane: ephemeral entry-port allocation, source-CIDR checks, forwarding with
//! per-connection byte counts, and the kill of every live connection when a grant ends.
//!
//! A [`Gateway`] holds one TCP listener per live grant ([`ForwardSpec`]). Each accepted
//! connection is checked against the grant's [`SourcePolicy`] at once: outside, it is
//! reset without a byte sent; inside, it is forwarded to the grant's target, with
//! `splice(2)` through a pipe on Linux and a plain copy as the fallback. Revoke
//! ([`Gateway::close`]) or the grant's own deadline closes the listener and kills every
//! live connection of the grant; the deadline fires inside the gateway, so access ends
//! here first whether or not anyone else is running. What happens is reported as
//! [`Event`]s on a queue that never blocks the data path and never loses an end.
//!
//! **Architecture invariant:** `gateway` never touches the database. It knows grants only
//! as [`GrantKey`]s with a listen address, a target, sources and a deadline; the caller
//! (the orchestrator, or a regional gateway process fed by the server) rebuilds its
//! listeners at start-up with [`Gateway::reconcile`] and writes the events to the store.
//! The [`PortAllocator`] is likewise in-memory: it proposes candidates, the store enforces
//! uniqueness across processes.
//!
//! A [`Node`] is the whole data plane of one or more regions: a `tunnel::Tunnel` per
//! region and one `Gateway` for their entry ports, driven only by control messages
//! (`control::msg`) from one or several servers' sessions, with its events numbered and
//! held until acknowledged. It knows nothing of how the messages travel.
//!
//! # Layout
//!
//! - [`ports`]: [`PortAllocator`] and [`PortRange`]: random ports from a range, never a
//!   live one, a cool-down before reuse; time is a parameter.
//! - [`spec`]: what to open: [`GrantKey`], [`ForwardSpec`], [`SourcePolicy`].
//! - [`event`]: [`Event`], [`EndReason`], [`Refusal`], [`ConnectionId`], and the
//!   queue ([`Events`]) that drops and counts refusals and openings when its reader
//!   falls behind, but never an end.
//! - [`gateway`]: the [`Gateway`] handle: `open`, `close`, `set_deadline`, `connections`,
//!   `reconcile`, `shutdown`; the accept loop, the deadline timer and the kill.
//! - `conn`: one forwarded connection: connect with a timeout, pump both ways, count.
//! - `copy`: the portable pump (read into a buffer, write out).
//! - `splice`: the Linux zero-copy pump (socket → pipe → socket), safe code over `rustix`.
//! - [`clock`]: the wall clock as a parameter, for event times.
//! - [`node`]: the gateway [`Node`]: the data plane of one or more regions (a
//!   `tunnel::Tunnel` per region, one [`Gateway`] for every entry port) driven only by
//!   control messages (`control::msg`): sessions, desired state, numbered events,
//!   status, dials.
//!   - `node/ledger`: its protocol logic, sans I/O: sessions in order, held grants and
//!     peers, tombstones, the event outbox and its acknowledgements.
//!   - `node/wire`: conversions between the gateway's types and the messages.
//!   - `node/dial`: streams through a region's tunnel (`RegionDial`, `TunnelConn`) and
//!     what a dial returns (`DialStream`).
//!   - `node/renew`: the gateway's side of a certificate renewal ([`node::Renewal`]):
//!     a request from the key held here, the certificate checked, written, served.

#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod clock;
mod conn;
mod copy;
pub mod event;
pub mod gateway;
pub mod node;
pub mod ports;
pub mod spec;
#[cfg(target_os = "linux")]
mod splice;

use std::io;
use std::net::SocketAddr;

pub use clock::{Clock, SystemClock};
pub use event::{ConnectionId, EndReason, Event, Events, Refusal, Transfer};
pub use gateway::{
    CloseReport, Config, ConnectionInfo, Gateway, GrantInfo, OpenForward, ReconcileReport,
    ShutdownReport, TransferMode,
};
pub use node::{Node, NodeConfig, NodeFigures, RegionConfig, Udp};
pub use ports::{PortAllocator, PortRange};
pub use spec::{
    BoxUpstream, Dial, DialFuture, ForwardSpec, GrantKey, SourcePolicy, Target, Upstream,
};

/// What the gateway refuses to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every port of the range is live or cooling down.
    #[error("no free port in {range}: every port is in use or cooling down")]
    PortsExhausted { range: PortRange },
    /// A port range with its ends reversed or starting at 0.
    #[error("invalid port range {first}-{last}: it must be 1-65535 with first <= last")]
    InvalidPortRange { first: u16, last: u16 },
    /// A port outside the allocator's range.
    #[error("port {port} is outside the range {range}")]
    PortOutOfRange { port: u16, range: PortRange },
    /// A port already held by a live grant.
    #[error("port {port} is already in use")]
    PortInUse { port: u16 },
    /// A grant with this key is already open.
    #[error("{key} is already open")]
    AlreadyOpen { key: GrantKey },
    /// No open grant has this key.
    #[error("{key} is not open")]
    NotFound { key: GrantKey },
    /// The deadline given to `open` is already past.
    #[error("{key}: the deadline has already passed")]
    DeadlinePassed { key: GrantKey },
    /// A region of a node could not be set up (its tunnel, its UDP socket).
    #[error("region {region}: {message}")]
    Region { region: String, message: String },
    /// The listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

#[cfg(test)]
mod tests {
    /// Every module says its role in a `//!` comment (STYLE.md), and the crate root lists
    /// every module under `# Layout`.
    #[test]
    fn every_module_opens_with_a_doc_comment_and_is_in_the_layout() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let root = std::fs::read_to_string(dir.join("lib.rs")).unwrap();
        let layout = root.split("# Layout").nth(1).unwrap();
        let mut files = Vec::new();
        let mut dirs = vec![dir.clone()];
        while let Some(d) = dirs.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    dirs.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        for path in files {
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
