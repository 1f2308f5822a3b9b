//! A manifest sent as a delta from the manifest the device runs (FORMAT.md §3.8): a delta
//! container (§6) of method 1 (`zstd-patch-from`) whose source is the running manifest's
//! bytes and whose target is the new manifest's. Only paths and addresses that changed are
//! sent (corpus trees/small: 104 kB instead of 993 kB). The result is what the release key
//! signed, so it is verified like a manifest fetched whole; the delta itself is not trusted.

use crate::container::{apply_delta, DeltaHeader, Method, DELTA_MAGIC};
use crate::error::Error;
use crate::hash::Hash;
use crate::sign::MAX_MANIFEST_BYTES;

/// Whether `bytes` (an answer to a manifest request) is a manifest delta rather than a
/// manifest.
pub fn is_delta(bytes: &[u8]) -> bool {
    bytes.starts_with(DELTA_MAGIC)
}

/// Rebuilds a manifest's bytes from `delta` and the `running` manifest's bytes. The header
/// must name method 1, the running manifest as source and a target of at most
/// [`MAX_MANIFEST_BYTES`]; the output is checked against the header's hash and size.
pub fn apply(delta: &[u8], running: &[u8]) -> Result<Vec<u8>, Error> {
    let (h, _) = DeltaHeader::decode(delta)?;
    let what = "manifest delta".to_string();
    if h.method != Method::ZstdPatchFrom {
        return Err(Error::DeltaMismatch {
            what,
            reason: format!(
                "method {} (a manifest delta is zstd-patch-from)",
                h.method.name()
            ),
        });
    }
    if h.target_size > MAX_MANIFEST_BYTES as u64 {
        return Err(Error::ManifestTooLarge(
            usize::try_from(h.target_size).unwrap_or(usize::MAX),
        ));
    }
    let have = Hash::of(running);
    if h.source != have {
        return Err(Error::DeltaMismatch {
            what,
            reason: format!(
                "it applies to manifest {}, and the device runs manifest {have}",
                h.source
            ),
        });
    }
    apply_delta(delta, running, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::encode_delta;

    fn delta(old: &[u8], new: &[u8], method: Method) -> Vec<u8> {
        let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 3, old).unwrap();
        enc.include_contentsize(true).unwrap();
        enc.set_pledged_src_size(Some(new.len() as u64)).unwrap();
        std::io::Write::write_all(&mut enc, new).unwrap();
        let payload = enc.finish().unwrap();
        let h = DeltaHeader {
            method,
            source: Hash::of(old),
            target: Hash::of(new),
            target_size: new.len() as u64,
        };
        encode_delta(&h, &payload)
    }

    #[test]
    fn a_manifest_delta_rebuilds_the_manifest_and_refuses_another_base() {
        let old = b"DRMANIF1 one two three".repeat(50);
        let mut new = old.clone();
        new.extend_from_slice(b" four");
        let d = delta(&old, &new, Method::ZstdPatchFrom);
        assert!(is_delta(&d) && !is_delta(&new));
        assert_eq!(apply(&d, &old).unwrap(), new);
        let e = apply(&d, b"another manifest").unwrap_err().to_string();
        assert!(e.contains("the device runs manifest"), "{e}");
        let e = apply(&delta(&old, &new, Method::BsdiffZstd), &old)
            .unwrap_err()
            .to_string();
        assert!(e.contains("method bsdiff"), "{e}");
        // A header that promises more than a manifest may be is refused before decoding.
        let mut big = d.clone();
        big[73..81].copy_from_slice(&(2u64 << 30).to_le_bytes());
        assert!(matches!(apply(&big, &old), Err(Error::ManifestTooLarge(_))));
        // Every cut is an error.
        for n in 0..d.len() {
            assert!(apply(&d[..n], &old).is_err(), "cut at {n}");
        }
    }
}
