//! GNU gzip's own deflate (levels 4–9), for the `gzip` delta method (FORMAT.md §6.5).
//!
//! Debian compresses documentation with `gzip -9n`. zlib at level 9 gives the same bytes
//! only while a file fits one deflate block: past that the two compressors end their blocks
//! in different places (gzip keeps up to 32,767 symbols where zlib keeps 16,383, and ends a
//! block early, every 4,096 symbols, when matches are sparse and the block would compress
//! to under half its input), so a 1.3 MB changelog differs from the first byte on. This
//! module is gzip 1.x's lazy matcher and block coder, written to make the same decisions in
//! the same order: a 64 KiB window that slides by 32 KiB, 15-bit hash chains, the level's
//! chain limits, the early-flush estimate, and Huffman trees built with the same heap and
//! tie-breaks. The publisher uses it only where it reproduces the file, and the device
//! hashes what it rebuilds, so a difference costs bytes, never a wrong file.
//!
//! Memory is fixed: the window, the chains and one block's symbols (about 400 KiB).
//!
//! [`matcher`] is the lazy matcher (window, hash chains, when a block ends), [`trees`] the
//! block coder (symbol buffers, Huffman trees, the bit writer).

use std::io;

mod matcher;
mod trees;

use matcher::Deflater;
use trees::Trees;

pub(super) const WSIZE: usize = 0x8000;
pub(super) const WMASK: usize = WSIZE - 1;
pub(super) const WINDOW_SIZE: usize = 2 * WSIZE;
pub(super) const HASH_BITS: u32 = 15;
pub(super) const HASH_SIZE: usize = 1 << HASH_BITS;
pub(super) const HASH_MASK: u32 = (1 << HASH_BITS) - 1;
pub(super) const H_SHIFT: u32 = HASH_BITS.div_ceil(MIN_MATCH as u32);
pub(super) const MIN_MATCH: usize = 3;
pub(super) const MAX_MATCH: usize = 258;
pub(super) const MIN_LOOKAHEAD: usize = MAX_MATCH + MIN_MATCH + 1;
pub(super) const MAX_DIST: usize = WSIZE - MIN_LOOKAHEAD;
pub(super) const TOO_FAR: usize = 4096;
pub(super) const LIT_BUFSIZE: usize = 0x8000;
pub(super) const DIST_BUFSIZE: usize = LIT_BUFSIZE;

pub(super) const MAX_BITS: usize = 15;
pub(super) const MAX_BL_BITS: usize = 7;
pub(super) const LENGTH_CODES: usize = 29;
pub(super) const LITERALS: usize = 256;
pub(super) const END_BLOCK: usize = 256;
pub(super) const L_CODES: usize = LITERALS + 1 + LENGTH_CODES;
pub(super) const D_CODES: usize = 30;
pub(super) const BL_CODES: usize = 19;
pub(super) const HEAP_SIZE: usize = 2 * L_CODES + 1;
pub(super) const REP_3_6: usize = 16;
pub(super) const REPZ_3_10: usize = 17;
pub(super) const REPZ_11_138: usize = 18;

pub(super) const EXTRA_LBITS: [u8; LENGTH_CODES] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
pub(super) const EXTRA_DBITS: [u8; D_CODES] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
pub(super) const EXTRA_BLBITS: [u8; BL_CODES] =
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 7];
pub(super) const BL_ORDER: [usize; BL_CODES] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// gzip's `configuration_table` for the lazy levels: good length, max lazy, nice length,
/// max chain.
pub(super) const CONFIG: [[usize; 4]; 6] = [
    [4, 4, 16, 16],
    [8, 16, 32, 32],
    [8, 16, 128, 128],
    [8, 32, 128, 256],
    [32, 128, 258, 1024],
    [32, 258, 258, 4096],
];

/// Levels this module reproduces (gzip's 1–3 use another matcher).
pub const LEVELS: std::ops::RangeInclusive<u8> = 4..=9;

/// The raw deflate stream `gzip -<level>` writes for `raw`.
pub fn deflate(raw: &[u8], level: u8) -> io::Result<Vec<u8>> {
    if !LEVELS.contains(&level) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("GNU deflate level {level} is not 4 to 9"),
        ));
    }
    let [good, lazy, nice, chain] = CONFIG[usize::from(level) - 4];
    let mut d = Deflater {
        input: raw,
        read: 0,
        // Room past the window for the reads gzip makes beyond its end at the input's end.
        window: vec![0; WINDOW_SIZE + MAX_MATCH + 8],
        prev: vec![0; WSIZE],
        head: vec![0; HASH_SIZE],
        ins_h: 0,
        strstart: 0,
        block_start: 0,
        match_start: 0,
        lookahead: 0,
        eofile: false,
        prev_length: 0,
        good,
        lazy,
        nice,
        chain,
        t: Trees::new(raw.len()),
    };
    d.run();
    Ok(d.t.out.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// What `gzip -<level> -n` (GNU gzip, on every Debian system) writes for `raw`: its
    /// raw deflate stream, between the 10-byte header and the 8-byte trailer.
    fn gnu_gzip(raw: &[u8], level: u8) -> Vec<u8> {
        let mut child = Command::new("gzip")
            .args([format!("-{level}").as_str(), "-n", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("GNU gzip runs");
        let mut stdin = child.stdin.take().unwrap();
        let input = raw.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success());
        out.stdout[10..out.stdout.len() - 8].to_vec()
    }

    /// Deterministic bytes that exercise every kind of block: text that repeats with edits
    /// (dynamic trees, long matches, the window sliding), runs of one byte, incompressible
    /// noise (stored blocks), and stretches of sparse long matches between literals (the
    /// early end of a block every 4,096 symbols).
    fn mixed(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let words: Vec<String> = (0..400)
            .map(|i| format!("w{:x}{}", i * 7919, "abc".repeat(i % 4)))
            .collect();
        let mut out = Vec::with_capacity(len + 1024);
        while out.len() < len {
            match next() % 10 {
                0..=4 => {
                    for _ in 0..(next() % 200) {
                        out.extend_from_slice(words[(next() % 400) as usize].as_bytes());
                        out.push(if next() % 9 == 0 { b'\n' } else { b' ' });
                    }
                }
                5 => out.extend(std::iter::repeat_n(next() as u8, (next() % 3000) as usize)),
                6 => out.extend((0..next() % 20_000).map(|_| next() as u8)),
                7 => {
                    // An older stretch again, as a changelog repeats itself.
                    if out.len() > 70_000 {
                        let from = (next() as usize) % (out.len() - 60_000);
                        let n = (next() % 60_000) as usize;
                        out.extend_from_within(from..from + n);
                    }
                }
                _ => {
                    for _ in 0..(next() % 300) {
                        out.push(next() as u8);
                        let at = out.len() - 1;
                        let back = 1 + (next() as usize % at.clamp(1, 30_000));
                        let n = 20 + (next() % 200) as usize;
                        for k in 0..n {
                            let b = out[at - back.min(at) + k];
                            out.push(b);
                        }
                    }
                }
            }
        }
        out.truncate(len);
        out
    }

    #[test]
    fn gives_what_gnu_gzip_writes_at_every_lazy_level() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect();
        let inputs = [
            (0, 1),
            (1, 2),
            (300, 3),
            (65_536, 4),
            (70_000, 5),
            (2_500_000, 6),
        ]
        .map(|(len, seed)| mixed(len, seed))
        .into_iter()
        // Noise: stored blocks.
        .chain([noise]);
        for raw in inputs {
            let len = raw.len();
            for level in LEVELS {
                let ours = deflate(&raw, level).unwrap();
                let theirs = gnu_gzip(&raw, level);
                let first = ours.iter().zip(&theirs).position(|(a, b)| a != b);
                assert!(
                    ours == theirs,
                    "{len} bytes at -{level}: {} vs {} bytes, first difference at {first:?}",
                    ours.len(),
                    theirs.len()
                );
                // And the stream is deflate that gives the input back.
                assert_eq!(crate::gzip::inflate(&ours, len as u64).unwrap(), raw);
            }
        }
    }

    #[test]
    fn zlib_does_not_write_what_gnu_gzip_writes_past_one_block() {
        let raw = mixed(1_000_000, 7);
        let gnu = deflate(&raw, 9).unwrap();
        assert_eq!(gnu, gnu_gzip(&raw, 9));
        assert_ne!(crate::gzip::deflate(&raw, 9).unwrap(), gnu);
    }

    #[test]
    fn levels_outside_the_lazy_matcher_are_refused() {
        for level in [0, 1, 3, 10] {
            let e = deflate(b"x", level).unwrap_err().to_string();
            assert!(e.contains(&format!("level {level}")), "{e}");
        }
    }
}
