//! Durable router jobs, their handlers, the orchestration log, expiry timers and the reconciler.
//!
//! # Status
//!
//! Empty: this crate is built by the orchestration issue. It will depend on `domain`, `store` and `routeros` only.
