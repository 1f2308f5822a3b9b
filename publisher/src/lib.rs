//! deltaroot's publisher: turns two image trees into a signed release.
//!
//! - [`input`]: reading a tree (directory or tar) into manifest entries and contents.
//! - [`matching`]: finding the old version of each changed file, renames included.
//! - [`engine`]: per-file delta methods, round-trip checked, smallest kept.
//! - [`elf`]: the encoder of the ELF-aware method.
//! - [`bsdiff`]: bsdiff's matching on an SA-IS suffix array, for methods 2 and 4.
//! - [`packing`]: packing a release pair's small downloads into a few compressed packs.
//! - [`publish`]: the whole run, on all cores, with progress and a summary.
//! - [`sink`]: uploading to a server or writing a static release folder.
//! - [`keys`]: signing keys.
//! - [`cli`]: the `deltaroot` command line.

pub mod bsdiff;
pub mod budget;
pub mod cli;
pub mod elf;
pub mod engine;
pub mod error;
pub mod gzip;
pub mod input;
pub mod keys;
pub mod matching;
pub mod packing;
pub mod publish;
pub mod sink;
pub mod xz;

pub use error::{Error, Result};

/// Test data shared by the unit tests.
#[cfg(test)]
pub(crate) mod testing {
    /// `n` bytes of xorshift64 from `seed`, each below `alphabet` (256: any byte; a small
    /// alphabet makes data with many short repeats).
    pub fn pseudo_random(n: usize, seed: u64, alphabet: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % alphabet) as u8
            })
            .collect()
    }
}
