//! No code: this crate holds tests and benchmarks that put two independently written
//! sides against each other, Postern's RouterOS client (`routeros`) and the virtual
//! MikroTik (`sim`). Neither crate may depend on the other for its own tests (the sim's
//! suite speaks raw sentences, the client's a scripted peer), so their meeting point
//! lives here. The sim is also held against a client written by others
//! (librouteros, in `crates/sim/tests/interop.rs`).
//!
//! # Layout
//!
//! - `tests/client_sim.rs`: the client's every feature against a running sim.
//! - `benches/client_vs_sim.rs`: commands per second over one connection, 32 in flight.
