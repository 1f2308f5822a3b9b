//! deltaroot's diff engine: every delta encoder, the competition between them, and the
//! memory budget encoding jobs reserve from. The publisher encodes releases with it; the
//! server builds deltas for release pairs the publisher did not diff. Every delta it keeps
//! has been applied back with the device's own decoder (`deltaroot_format`).
//!
//! - [`competition`] (re-exported here): the candidates for one file pair, round-trip
//!   checked, the smallest kept; whole objects compressed.
//! - [`elf`]: the encoder of the ELF-aware method.
//! - [`bsdiff`]: bsdiff's matching on an SA-IS suffix array, for methods 2 and 4.
//! - [`gzip`], [`xz`]: diffing what a gzip file or an embedded xz stream holds.
//! - [`budget`]: the memory budget (`--memory-mib`).
//!
//! No I/O of its own beyond what its callers hand it, no HTTP, no command line.

pub mod bitcode;
pub mod bsdiff;
pub mod budget;
pub mod competition;
pub mod elf;
pub mod error;
pub mod gzip;
pub mod xz;

pub use competition::*;
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
