//! Helpers shared by the launcher's tests (and the end-to-end test in crates/cli).

pub mod hostile;
