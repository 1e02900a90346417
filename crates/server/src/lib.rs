//! Postern's HTTP API (with OpenAPI), authentication and authorisation, the portal and the SSH terminal bridge.
//!
//! # Status
//!
//! Empty: this crate is built by the control-plane issue. It is the only crate that knows HTTP and HTML.
