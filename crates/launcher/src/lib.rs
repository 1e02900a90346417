//! The `winbox://` protocol handler: turns a link from the portal into a WinBox launch.
//!
//! # Status
//!
//! Empty: this crate is built by the launcher issue. It depends on nothing of ours.
