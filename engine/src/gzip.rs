//! The `gzip` method's encoder: diff what two gzip files hold, not their compressed bytes.
//!
//! A changelog that gains one entry at the top compresses to a stream that differs from the
//! old one almost everywhere; its decompressed text differs by the entry alone. The encoder
//! inflates both files, finds the deflater that gives the new file's deflate stream byte for
//! byte, and diffs the decompressed contents with zstd patch-from and bsdiff, keeping the
//! smaller. Debian compresses documentation with `gzip -9n`: zlib level 9 reproduces it
//! while the file fits one deflate block, GNU gzip's own deflate (`deltaroot_format::
//! gnu_deflate`) on every file of the corpus. zlib is tried first where both would do, so
//! agents that predate the GNU deflater still apply those patches. Where no deflater
//! reproduces the stream the method does not apply and the generic methods compete alone.
//! The decoder is `deltaroot_format::gzip`.

use deltaroot_format::gzip::{self, Deflater, Patch, MAX_RATIO};

use crate::competition::{self as engine, EngineOptions};

/// Deflaters tried, most common first: `gzip -9` (zlib's, then GNU's), the default level 6
/// of both, then the rest.
const DEFLATERS: [Deflater; 15] = [
    Deflater::Zlib(9),
    Deflater::Gnu(9),
    Deflater::Zlib(6),
    Deflater::Gnu(6),
    Deflater::Zlib(1),
    Deflater::Zlib(2),
    Deflater::Zlib(3),
    Deflater::Zlib(4),
    Deflater::Zlib(5),
    Deflater::Zlib(7),
    Deflater::Zlib(8),
    Deflater::Gnu(4),
    Deflater::Gnu(5),
    Deflater::Gnu(7),
    Deflater::Gnu(8),
];
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
        4
    } else {
        DEFLATERS.len()
    };
    let mut deflater = None;
    for &d in &DEFLATERS[..tries] {
        if d.deflate(&raw_new)? == n.deflate {
            deflater = Some(d);
            break;
        }
    }
    let Some(deflater) = deflater else {
        return Ok(None);
    };
    let Ok(raw_old) = gzip::inflate(o.deflate, limit(old.len())) else {
        return Ok(None);
    };
    let inner = engine::smallest_payload(&raw_old, &raw_new, opts, &engine::GENERIC)?;
    let Some((method, payload)) = inner else {
        return Ok(None);
    };
    Ok(Some(
        Patch {
            deflater,
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
    use deltaroot_format::Method;
    use deltaroot_format::{apply_delta, DeltaHeader, Hash};

    fn gz(raw: &[u8], level: u8) -> Vec<u8> {
        gzip::rebuild(
            &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3],
            raw,
            Deflater::Zlib(level),
        )
        .unwrap()
    }

    /// `gzip -9n` of `raw` by GNU gzip (Debian's, as dh_compress runs it).
    fn gnu_gzip_9n(raw: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut child = std::process::Command::new("gzip")
            .args(["-9", "-n", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("GNU gzip runs");
        let mut stdin = child.stdin.take().unwrap();
        let input = raw.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success());
        out.stdout
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
    fn a_large_changelog_gnu_gzip_wrote_is_rebuilt_by_its_deflater() {
        // Many deflate blocks: zlib ends them elsewhere, GNU gzip's own deflater does not.
        let (raw_old, raw_new) = (changelog(20_000), changelog(20_003));
        let (old, new) = (gnu_gzip_9n(&raw_old), gnu_gzip_9n(&raw_new));
        let m = gzip::member(&new).unwrap();
        assert_ne!(gzip::deflate(&raw_new, 9).unwrap(), m.deflate);
        let opts = EngineOptions {
            level: 19,
            ..Default::default()
        };
        let delta = encode_delta(&old, &new, &opts);
        let (h, payload) = DeltaHeader::decode(&delta).unwrap();
        assert_eq!(h.method, Method::Gzip);
        assert_eq!(
            Deflater::from_byte(payload[0]).unwrap(),
            Deflater::Gnu(9),
            "the patch names GNU gzip -9"
        );
        assert_eq!(
            apply_delta(&delta, &old, Some((Hash::of(&new), new.len() as u64))).unwrap(),
            new
        );
        assert!(
            delta.len() * 50 < new.len(),
            "{} bytes for three entries of a {}-byte file",
            delta.len(),
            new.len()
        );
    }

    fn encode_delta(old: &[u8], new: &[u8], opts: &EngineOptions) -> Vec<u8> {
        let c = engine::candidates(old, new, opts).unwrap();
        c.into_iter().next().unwrap().bytes
    }

    #[test]
    fn streams_zlib_does_not_reproduce_are_left_to_the_generic_methods() {
        let opts = EngineOptions::default();
        let old = gz(&changelog(50), 9);
        // Stored (uncompressed) deflate blocks of 65,535 bytes: valid gzip that neither zlib
        // nor GNU gzip writes (gzip's stored blocks end with its 32,767-symbol blocks).
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
