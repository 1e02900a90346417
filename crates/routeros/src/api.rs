//! Typed helpers.
