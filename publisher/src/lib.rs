//! deltaroot's publisher: turns two image trees into a signed release.
//!
//! - [`input`]: reading a tree (directory or tar) into manifest entries and contents.
//! - [`matching`]: finding the old version of each changed file, renames included.
//! - [`engine`]: per-file delta methods, round-trip checked, smallest kept.
//! - [`elf`]: the encoder of the ELF-aware method.
//! - [`bsdiff`]: bsdiff's matching on an SA-IS suffix array, for methods 2 and 4.
//! - [`publish`]: the whole run, on all cores, with progress and a summary.
//! - [`sink`]: uploading to a server or writing a static release folder.
//! - [`keys`]: signing keys.
//! - [`cli`]: the `deltaroot` command line.

pub mod bsdiff;
pub mod cli;
pub mod elf;
pub mod engine;
pub mod error;
pub mod input;
pub mod keys;
pub mod matching;
pub mod publish;
pub mod sink;

pub use error::{Error, Result};
