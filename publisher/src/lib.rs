//! deltaroot's publisher: turns two image trees into a signed release. The encoders are
//! `deltaroot_engine`'s, the wire format `deltaroot_format`'s.
//!
//! - [`checks`]: what is asked of the destination before encoding: a free version, and the
//!   release OLD must be.
//! - [`input`]: reading a tree (directory or tar) into manifest entries and contents.
//! - [`exclude`]: `--exclude` globs, paths left out of the image.
//! - [`shared`]: `--shared` paths, the device's data: left out of the image.
//! - [`matching`]: finding the old version of each changed file, renames included.
//! - [`packing`]: packing a release pair's small downloads into a few compressed packs.
//! - [`publish`]: the whole run, on all cores, with progress and a summary.
//! - [`progress`]: progress bars on a terminal, plain lines in logs.
//! - [`sink`]: uploading to a server or writing a static release folder.
//! - [`keys`]: signing keys.
//! - [`inspect`]: whether the ELF method's layout parser accepts a file, and why not.
//! - [`cli`]: the `deltaroot` command line.

pub mod checks;
pub mod cli;
pub mod error;
pub mod exclude;
pub mod input;
pub mod inspect;
pub mod keys;
pub mod matching;
pub mod packing;
pub mod progress;
pub mod publish;
pub mod shared;
pub mod sink;

pub use error::{Error, Result};
