//! Postern's types and rules: addresses, CIDRs, ports, durations and the grant life cycle. No I/O.
//!
//! # Status
//!
//! Being built by the control-plane issue.
