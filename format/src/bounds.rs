//! The most bytes a download may take, derived from the signed manifest's sizes only.
//!
//! A plan is not signed: its byte counts are claims. A device caps every download by the
//! bound of what it fetches, computed here from the content's size in the verified manifest,
//! and refuses a plan whose counts are over it before anything is downloaded.
//!
//! - An object (§5) is one zstd frame of its content, no header of deltaroot's: at most
//!   [`compress_bound`] of the content's size (zstd's `ZSTD_COMPRESSBOUND`, which covers the
//!   frame header, block headers and a checksum).
//! - A delta is used by a plan only when strictly smaller than the object of its target
//!   (`compute_plan`), and the object is stored for every target, so a delta in a plan is
//!   never larger than [`object_bound`] of its target, whatever its method.
//! - A pack is used only when smaller than its items fetched alone (`attach_packs`), so it
//!   is never larger than the sum of its items' bounds.
//! - A pack's index entry declares the length of a body held unwrapped (§7.1): at most the
//!   content for an object, else the method's own decoder bound on a payload that is itself
//!   at most a delta's bound less its header ([`pack_body_bound`]).

use crate::container::{unwrapped_bound, Method};
use crate::pack::EntryKind;

/// zstd's `ZSTD_COMPRESSBOUND(size)`: the largest one frame of `size` bytes can compress to.
pub fn compress_bound(size: u64) -> u64 {
    let small = if size < (128 << 10) {
        ((128 << 10) - size) >> 11
    } else {
        0
    };
    size.saturating_add(size >> 8).saturating_add(small)
}

/// The most bytes the object of a content of `size` bytes may take.
pub fn object_bound(size: u64) -> u64 {
    compress_bound(size)
}

/// The most bytes a delta a plan fetches for a target of `size` bytes may take: a plan
/// takes a delta only when it is smaller than the target's object.
pub fn delta_bound(size: u64) -> u64 {
    object_bound(size)
}

/// The most bytes a pack entry of `kind` for a target of `size` bytes may declare.
pub fn pack_body_bound(kind: EntryKind, size: u64) -> u64 {
    match kind {
        EntryKind::Object => size,
        EntryKind::Delta(m) => pack_delta_bound(m, size),
    }
}

fn pack_delta_bound(method: Method, size: u64) -> u64 {
    unwrapped_bound(method, size, delta_bound(size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compress_bound_is_zstds_formula() {
        // Figures of zstd's own ZSTD_compressBound.
        assert_eq!(compress_bound(0), 64);
        assert_eq!(compress_bound(1), 64);
        assert_eq!(compress_bound(128 << 10), (128 << 10) + 512);
        assert_eq!(compress_bound(1 << 20), (1 << 20) + 4096);
        assert_eq!(compress_bound(u64::MAX), u64::MAX);
        for size in [0, 1, 100, 4095, 131_071, 1 << 20] {
            assert_eq!(
                compress_bound(size),
                zstd::zstd_safe::compress_bound(size as usize) as u64,
                "{size}"
            );
        }
    }

    /// Whatever zstd makes of incompressible or empty contents stays within the bound,
    /// at any level.
    #[test]
    fn real_objects_are_within_their_bound() {
        let mut noise = vec![0u8; 300 << 10];
        blake3::Hasher::new()
            .update(b"bound")
            .finalize_xof()
            .fill(&mut noise);
        for n in [0usize, 1, 17, 4096, 128 << 10, 300 << 10] {
            for level in [1, 3, 19] {
                let z = zstd::bulk::compress(&noise[..n], level).unwrap();
                assert!(z.len() as u64 <= object_bound(n as u64), "{n} at {level}");
                assert!(z.len() as u64 <= delta_bound(n as u64), "{n} at {level}");
            }
        }
    }

    #[test]
    fn pack_bodies_are_bounded_by_kind_and_size() {
        assert_eq!(pack_body_bound(EntryKind::Object, 121_000), 121_000);
        assert_eq!(
            pack_body_bound(EntryKind::Delta(Method::Zstd), 121_000),
            121_000
        );
        let bsdiff = pack_body_bound(EntryKind::Delta(Method::BsdiffZstd), 121_000);
        assert_eq!(bsdiff, 26 * 121_001 + (1 << 20));
        let patch_from = pack_body_bound(EntryKind::Delta(Method::ZstdPatchFrom), 121_000);
        assert_eq!(patch_from, object_bound(121_000) - 81);
        // A 3 GiB entry for a 121 kB file is over every bound.
        for m in [
            Method::ZstdPatchFrom,
            Method::BsdiffZstd,
            Method::Zstd,
            Method::Elf,
            Method::Gzip,
            Method::Xz,
            Method::Bitcode,
        ] {
            assert!(
                pack_body_bound(EntryKind::Delta(m), 121_000) < 3 << 30,
                "{m:?}"
            );
        }
    }
}
