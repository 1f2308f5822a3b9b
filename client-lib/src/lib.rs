//! deltaroot's device side, and the wire format everyone shares.
//!
//! - [`format`]: manifests, signatures, content addresses, delta containers, plans.
//! - [`tree`]: reading the metadata of a tree on disk into manifest entries.
//! - [`device`]: the device root (deployments, `current`/`previous`), staging a new version
//!   beside the running one, verifying it and switching atomically.
//! - [`transport`]: fetching manifests, plans, objects and deltas over HTTP(S).
//! - [`apply`]: one delta applied to one file (`deltaroot apply`, `deltaroot-apply`).
//! - [`agent`]: the commands of `deltaroot-agent` (install, check, update, status, rollback).
//!
//! This crate must stay small: it never depends on the server's crates.

pub mod error;
pub mod format;

pub use error::{Error, Result};
pub mod agent;
pub mod apply;
pub mod device;
pub mod elf;
pub mod gnu_deflate;
pub mod gzip;
pub mod transport;
pub mod tree;
pub mod xz;
