//! deltaroot's device side: a device root with its deployments, and the update that stages a
//! new version beside the running one, verifies it against its signed manifest and switches
//! to it atomically. The wire format and the decoders are `deltaroot_format`'s.
//!
//! - [`device`]: the device root (deployments, `current`/`previous`), staging a new version
//!   beside the running one, verifying it and switching atomically.
//! - [`transport`]: where a device fetches from: the [`transport::Transport`] trait, over
//!   HTTP(S) (feature `http`, on by default) or from a static release folder.
//! - [`agent`]: the commands of `deltaroot-agent` (install, check, update, status, rollback).
//!
//! This crate must stay small: no server crates, no async runtime of its own, no command
//! line (the binaries are in `deltaroot-agent`); `.ci/deps` checks it.

pub mod agent;
pub mod device;
pub mod error;
pub mod health;
pub mod transport;

pub use error::{Error, Result};
