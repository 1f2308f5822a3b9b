//! The `gzip` method's encoder: diff what two gzip files hold, not their compressed bytes.
//!
//! A changelog that gains one entry at the top compresses to a stream that differs from the
//! old one almost everywhere; its decompressed text differs by the entry alone. The encoder
//! inflates both files, finds the zlib level that gives the new file's deflate stream byte
//! for byte (`gzip -9n`, which Debian compresses documentation with, is reproduced by zlib
//! level 9 on most files), and diffs the decompressed contents with zstd patch-from and
//! bsdiff, keeping the smaller. Where no level reproduces the stream the method does not
//! apply and the generic methods compete alone. The decoder is `deltaroot_client::gzip`.

use deltaroot_client::format::Method;
use deltaroot_client::gzip::{self, Patch, MAX_RATIO};

use crate::engine::{self, EngineOptions};

/// Levels tried, most common first: `gzip -9`, zlib's default, then the rest.
const LEVELS: [u8; 9] = [9, 6, 1, 2, 3, 4, 5, 7, 8];
/// Past this decompressed size only levels 9 and 6 are tried.
const ALL_LEVELS_MAX: usize = 4 << 20;
/// Largest decompressed file the encoder handles.
const RAW_MAX: u64 = 1 << 30;

/// The `gzip` payload for `old` -> `new`, or `None` when the method does not apply (either is
/// not a single gzip member, or zlib does not reproduce the new file's stream).
pub fn encode(old: &[u8], new: &[u8], opts: &EngineOptions) -> std::io::Result<Option<Vec<u8>>> {
    let (Ok(o), Ok(n)) = (gzip::member(old), gzip::member(new)) else {
        return Ok(None);
    };
    let limit = |len: usize| (len as u64).saturating_mul(MAX_RATIO).min(RAW_MAX);
    let Ok(raw_new) = gzip::inflate(n.deflate, limit(new.len())) else {
        return Ok(None);
    };
    if gzip::crc32(&raw_new) != n.crc || raw_new.len() as u32 != n.isize {
        return Ok(None);
    }
    let tries = if raw_new.len() > ALL_LEVELS_MAX {
        2
    } else {
        LEVELS.len()
    };
    let mut level = None;
    for &l in &LEVELS[..tries] {
        if gzip::deflate(&raw_new, l)? == n.deflate {
            level = Some(l);
            break;
        }
    }
    let Some(level) = level else {
        return Ok(None);
    };
    let Ok(raw_old) = gzip::inflate(o.deflate, limit(old.len())) else {
        return Ok(None);
    };
    let inner = engine::smallest_payload(
        &raw_old,
        &raw_new,
        opts,
        &[Method::ZstdPatchFrom, Method::BsdiffZstd],
    )
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let Some((method, payload)) = inner else {
        return Ok(None);
    };
    Ok(Some(
        Patch {
            level,
            header: n.header,
            source_size: raw_old.len() as u64,
            target_size: raw_new.len() as u64,
            inner: method,
            payload: &payload,
        }
        .encode(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltaroot_client::format::{apply_delta, Hash};

    fn gz(raw: &[u8], level: u8) -> Vec<u8> {
        gzip::rebuild(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3], raw, level).unwrap()
    }

    fn changelog(entries: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for i in (0..entries).rev() {
            out.extend_from_slice(
                format!("deltaroot ({i}.0) stable; urgency=medium\n\n  * Release {i}: fixes {}.\n\n -- Release Team  Thu, {i} Jan 2026\n\n", i * 7919 % 1000)
                    .as_bytes(),
            );
        }
        out
    }

    #[test]
    fn a_changelog_that_grows_costs_its_new_entry() {
        let opts = EngineOptions {
            level: 19,
            ..Default::default()
        };
        for level in [9, 6, 1] {
            let (old, new) = (gz(&changelog(400), level), gz(&changelog(401), level));
            let c = engine::candidates(&old, &new, &opts).unwrap();
            let best = &c[0];
            assert_eq!(best.method, Method::Gzip, "level {level}");
            assert_eq!(
                apply_delta(&best.bytes, &old, Some((Hash::of(&new), new.len() as u64))).unwrap(),
                new
            );
            let generic = c.iter().find(|c| c.method != Method::Gzip).unwrap();
            assert!(
                best.bytes.len() * 5 < generic.bytes.len(),
                "gzip {} vs {} {}",
                best.bytes.len(),
                generic.method,
                generic.bytes.len()
            );
        }
    }

    #[test]
    fn streams_zlib_does_not_reproduce_are_left_to_the_generic_methods() {
        let opts = EngineOptions::default();
        let old = gz(&changelog(50), 9);
        // A stored (uncompressed) deflate block: valid gzip, no zlib level 1-9 writes it.
        let raw = changelog(51);
        let mut stored = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3];
        for (i, chunk) in raw.chunks(65535).enumerate() {
            let last = (i + 1) * 65535 >= raw.len();
            stored.push(u8::from(last));
            stored.extend_from_slice(&(chunk.len() as u16).to_le_bytes());
            stored.extend_from_slice(&(!(chunk.len() as u16)).to_le_bytes());
            stored.extend_from_slice(chunk);
        }
        stored.extend_from_slice(&gzip::crc32(&raw).to_le_bytes());
        stored.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        assert_eq!(
            gzip::inflate(gzip::member(&stored).unwrap().deflate, 1 << 20).unwrap(),
            raw
        );
        assert_eq!(encode(&old, &stored, &opts).unwrap(), None);
        // Not gzip at all, or a trailer that lies.
        assert_eq!(encode(&old, &raw, &opts).unwrap(), None);
        let mut lying = gz(&raw, 9);
        let n = lying.len();
        lying[n - 5] ^= 1;
        assert_eq!(encode(&old, &lying, &opts).unwrap(), None);
    }
}
