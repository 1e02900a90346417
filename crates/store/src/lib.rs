//! Persistence through sqlx for SQLite and PostgreSQL; the only crate with SQL.
//!
//! # Status
//!
//! Being built by the control-plane issue.
