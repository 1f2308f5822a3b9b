//! The delta container: a fixed header naming the method, the source and target content
//! addresses and the target size, followed by the method's payload (`docs/FORMAT.md`,
//! "Delta container"). Decoding trusts nothing: every length is checked against the header
//! and the header against what the caller expects. The container decodes this framing
//! and hands the payload to its method's decoder (`crate::decoders`); what the container and
//! the methods share (the method numbers, the limits, the source) is `crate::method`.

use std::io::Read;

use super::hash::{delta_path, Hash};
use super::wire::Reader;
use crate::decoders::{self, Part};
use crate::error::Error;
use crate::method::{bsdiff_bound, framed};
pub use crate::method::{Method, Payload, Source, MAX_TARGET_SIZE, MAX_WINDOW_LOG};

pub const DELTA_MAGIC: &[u8; 8] = b"DRDELTA1";
/// Header length: magic, method, source hash, target hash, target size.
pub const HEADER_LEN: usize = 8 + 1 + 32 + 32 + 8;
/// The parsed header of a delta.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaHeader {
    pub method: Method,
    pub source: Hash,
    pub target: Hash,
    pub target_size: u64,
}

impl DeltaHeader {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN);
        out.extend_from_slice(DELTA_MAGIC);
        out.push(self.method as u8);
        out.extend_from_slice(&self.source.0);
        out.extend_from_slice(&self.target.0);
        out.extend_from_slice(&self.target_size.to_le_bytes());
        out
    }

    /// Parses the header of `delta` and returns it with the payload.
    pub fn decode(delta: &[u8]) -> Result<(DeltaHeader, &[u8]), Error> {
        let mut r = Reader::new(delta);
        let malformed = |e: super::wire::WireError| Error::DeltaMalformed {
            what: "header".into(),
            reason: e.to_string(),
        };
        if r.take(8, "magic").map_err(malformed)? != DELTA_MAGIC {
            return Err(Error::DeltaMalformed {
                what: "header".into(),
                reason: "does not start with DRDELTA1".into(),
            });
        }
        let m = r.u8("method").map_err(malformed)?;
        let method = Method::from_u8(m).ok_or(Error::DeltaMethod {
            what: "header".into(),
            method: m,
        })?;
        let source = Hash(r.array("source hash").map_err(malformed)?);
        let target = Hash(r.array("target hash").map_err(malformed)?);
        let target_size = r.u64_le("target size").map_err(malformed)?;
        if target_size > MAX_TARGET_SIZE {
            return Err(Error::DeltaMalformed {
                what: delta_path(&source, &target),
                reason: format!("target size {target_size} is over the limit of {MAX_TARGET_SIZE}"),
            });
        }
        let header = DeltaHeader {
            method,
            source,
            target,
            target_size,
        };
        Ok((header, &delta[HEADER_LEN..]))
    }
}

/// Builds a container from a header and an encoded payload.
pub fn encode_delta(header: &DeltaHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = header.encode();
    out.extend_from_slice(payload);
    out
}

/// Whether a pack holds this method's payload decompressed.
pub fn unwraps(method: Method) -> bool {
    matches!(method, Method::Zstd | Method::BsdiffZstd | Method::Elf)
}

/// The payload of a stored delta as a pack holds it, at most `max` bytes.
pub fn unwrap_payload(h: &DeltaHeader, payload: &[u8], max: u64) -> Result<Vec<u8>, Error> {
    if !unwraps(h.method) {
        return Ok(payload.to_vec());
    }
    let out = if h.method == Method::Elf && crate::elf::is_xz(payload) {
        crate::elf::decompress_xz(payload, max)
    } else {
        decompress(payload, max)
    };
    out.map_err(|e| Error::DeltaPayload {
        what: delta_path(&h.source, &h.target),
        method: h.method.name(),
        reason: e.to_string(),
    })
}

/// What zstd `frames` (an object, or a method 2, 3 or 4 payload) decompress to, at most
/// `max` bytes.
pub fn decompress(frames: &[u8], max: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    framed(Payload::Stored(frames))?
        .take(max)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// Most bytes an unwrapped payload of `method` for a target of `size` may hold; for the
/// methods a pack does not unwrap, `stored` (the delta's size in the plan) less its header.
pub fn unwrapped_bound(method: Method, size: u64, stored: u64) -> u64 {
    match method {
        Method::Zstd => size,
        Method::BsdiffZstd => bsdiff_bound(size),
        Method::Elf => bsdiff_bound(size).saturating_mul(2),
        _ => stored.saturating_sub(HEADER_LEN as u64),
    }
}

/// Applies `delta` to `source` and returns the verified target bytes.
///
/// `expect` is the (hash, size) the caller's manifest wants, when it has one. The output is
/// never allowed to grow past the header's target size, and it is hashed before it is
/// returned.
pub fn apply_delta(
    delta: &[u8],
    source: &[u8],
    expect: Option<(Hash, u64)>,
) -> Result<Vec<u8>, Error> {
    apply_delta_to(delta, Source::Bytes(source), expect)
}

/// [`apply_delta`] to a source in memory or in a file.
pub fn apply_delta_to(
    delta: &[u8],
    source: Source<'_>,
    expect: Option<(Hash, u64)>,
) -> Result<Vec<u8>, Error> {
    let (h, payload) = DeltaHeader::decode(delta)?;
    if let Some((hash, size)) = expect {
        if h.target != hash || h.target_size != size {
            return Err(Error::DeltaMismatch {
                what: delta_path(&h.source, &h.target),
                reason: format!(
                    "produces {} ({} bytes), expected {hash} ({size} bytes)",
                    h.target, h.target_size
                ),
            });
        }
    }
    apply_payload_to(&h, Payload::Stored(payload), source)
}

/// Applies a payload whose header the caller knows (from a container, or from its plan for
/// a pack's entry) and returns the verified target bytes.
pub fn apply_payload(
    h: &DeltaHeader,
    payload: Payload<'_>,
    source: &[u8],
) -> Result<Vec<u8>, Error> {
    apply_payload_to(h, payload, Source::Bytes(source))
}

/// [`apply_payload`] to a source in memory or in a file.
pub fn apply_payload_to(
    h: &DeltaHeader,
    payload: Payload<'_>,
    source: Source<'_>,
) -> Result<Vec<u8>, Error> {
    let what = delta_path(&h.source, &h.target);
    // The methods other than ELF need the whole source: read once, and hashed from memory.
    let whole = match h.method {
        Method::Elf | Method::Zstd => None,
        _ => Some(source.bytes().map_err(Error::io(source.path()))?),
    };
    if h.method != Method::Zstd {
        let have = match &whole {
            Some(bytes) => Hash::of(bytes),
            None => source.hash().map_err(Error::io(source.path()))?,
        };
        if have != h.source {
            return Err(Error::DeltaMismatch {
                what,
                reason: format!("applies to {}, but the source given is {have}", h.source),
            });
        }
    }
    let part = Part {
        method: h.method,
        target_size: h.target_size,
        payload,
        what: &what,
    };
    let out = match h.method {
        Method::Elf => decoders::elf(&part, source)?,
        _ => decoders::decode(&part, whole.as_deref().unwrap_or(&[]))?,
    };
    check_target(h, what, out.len() as u64, Hash::of(&out))?;
    Ok(out)
}

/// The last step of every apply: the target decoded must have the header's size and hash.
pub(crate) fn check_target(
    h: &DeltaHeader,
    what: String,
    len: u64,
    got: Hash,
) -> Result<(), Error> {
    if len != h.target_size {
        return Err(Error::ContentLength {
            what,
            got: len,
            want: h.target_size,
        });
    }
    if got != h.target {
        return Err(Error::ContentHash {
            what,
            got,
            want: h.target,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A whole-file (method 3) delta of `target`, named as applying to `source`.
    pub(crate) fn zstd_delta(source: &[u8], target: &[u8]) -> Vec<u8> {
        let header = DeltaHeader {
            method: Method::Zstd,
            source: Hash::of(source),
            target: Hash::of(target),
            target_size: target.len() as u64,
        };
        encode_delta(&header, &zstd::bulk::compress(target, 3).unwrap())
    }

    #[test]
    fn unwrapped_payloads_apply_like_stored_ones() {
        let source = b"old contents".repeat(100);
        let target = b"new contents, longer".repeat(200);
        let h = DeltaHeader {
            method: Method::Zstd,
            source: Hash::of(&source),
            target: Hash::of(&target),
            target_size: target.len() as u64,
        };
        // Two frames, as a large ELF payload is stored: unwrapped, they are one stream.
        let (a, b) = target.split_at(1000);
        let mut stored = zstd::bulk::compress(a, 3).unwrap();
        stored.extend(zstd::bulk::compress(b, 3).unwrap());
        let body = unwrap_payload(&h, &stored, u64::MAX).unwrap();
        assert_eq!(body, target);
        for p in [Payload::Stored(&stored), Payload::Unwrapped(&body)] {
            assert_eq!(apply_payload(&h, p, &source).unwrap(), target);
        }
        // An unwrapped body one byte short or long is refused.
        assert!(apply_payload(&h, Payload::Unwrapped(&body[1..]), &source).is_err());
        let mut long = body.clone();
        long.push(0);
        assert!(apply_payload(&h, Payload::Unwrapped(&long), &source).is_err());
        // The bound holds while unwrapping.
        assert!(unwrap_payload(&h, &stored, 10).unwrap().len() == 10);
    }

    #[test]
    fn a_source_file_reads_and_hashes_like_its_bytes() {
        use std::io::Write;
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&bytes).unwrap();
        let file = Source::File {
            file: tmp.as_file(),
            path: tmp.path(),
        };
        for s in [Source::Bytes(&bytes), file] {
            assert_eq!(s.size().unwrap(), bytes.len() as u64);
            assert_eq!(s.hash().unwrap(), Hash::of(&bytes));
            let mut buf = [0u8; 10];
            s.read_at(100_000, &mut buf).unwrap();
            assert_eq!(buf, bytes[100_000..100_010]);
            assert!(s.read_at(bytes.len() as u64 - 5, &mut buf).is_err());
            assert!(s.read_at(u64::MAX - 2, &mut buf).is_err());
        }
        // Every method applies to a file as to its bytes.
        let target = b"new contents".repeat(1000);
        let delta = zstd_delta(&bytes, &target);
        assert_eq!(apply_delta_to(&delta, file, None).unwrap(), target);
        let h = DeltaHeader {
            method: Method::ZstdPatchFrom,
            source: Hash::of(&bytes),
            target: Hash::of(&target),
            target_size: target.len() as u64,
        };
        let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 3, &bytes).unwrap();
        enc.write_all(&target).unwrap();
        let delta = encode_delta(&h, &enc.finish().unwrap());
        assert_eq!(apply_delta_to(&delta, file, None).unwrap(), target);
        // Another source: refused by its hash.
        let other = tempfile::NamedTempFile::new().unwrap();
        let err = apply_delta_to(
            &delta,
            Source::File {
                file: other.as_file(),
                path: other.path(),
            },
            None,
        )
        .unwrap_err();
        assert!(matches!(err, Error::DeltaMismatch { .. }), "{err}");
    }

    /// An ELF delta (one frame) applies to a source file as to its bytes, reading the file
    /// where its records name it; flipped bits give an error or still the right image.
    #[test]
    fn an_elf_delta_applies_to_a_source_file() {
        use crate::elf::{build_payload, encode_corrections, BtfShifts, Control, Layout};
        use std::io::Write;
        let old = include_bytes!("../../fixtures/elf-small/x86_64-pie").to_vec();
        let len = old.len() as u64;
        // The old file with 8 bytes replaced after its middle taken from 50 bytes earlier.
        let controls = [
            Control {
                mix: len / 2,
                copy: 8,
                seek: -50,
            },
            Control {
                mix: len - len / 2 - 8,
                copy: 0,
                seek: 0,
            },
        ];
        let mut target = old.clone();
        target[len as usize / 2..][..8].fill(1);
        let arch = Layout::parse(&old).unwrap().arch;
        let mut raw = build_payload(
            arch,
            &BtfShifts::default(),
            crate::elf::Revision::One,
            &controls,
            &old,
            &target,
        )
        .unwrap();
        raw.extend_from_slice(&encode_corrections(&[(1, 3)]));
        let new = crate::elf::decode(&old, raw.clone(), len).unwrap();
        let header = DeltaHeader {
            method: Method::Elf,
            source: Hash::of(&old),
            target: Hash::of(&new),
            target_size: new.len() as u64,
        };
        let delta = encode_delta(&header, &zstd::bulk::compress(&raw, 3).unwrap());
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&old).unwrap();
        let from_file = Source::File {
            file: tmp.as_file(),
            path: tmp.path(),
        };
        assert!(apply_delta_to(&delta, from_file, None).unwrap() == new);
        assert!(apply_delta(&delta, &old, None).unwrap() == new);
        let step = (delta.len() / 64).max(1);
        for i in (HEADER_LEN..delta.len()).step_by(step) {
            let mut p = delta.clone();
            p[i] ^= 0x10;
            if let Ok(out) = apply_delta_to(&p, from_file, None) {
                assert!(out == new, "flip at {i} accepted with other output");
            }
        }
    }

    /// A payload whose architecture byte sets a revision flag this decoder does not know (as
    /// revision 5's `0x08` is to an agent of the release before it) is refused as an
    /// unusable delta, whose whole object the device fetches instead; the same payload with
    /// the flags it knows applies.
    #[test]
    fn an_elf_payload_of_an_unknown_revision_is_an_unusable_delta() {
        use crate::elf::{build_payload, encode_corrections, BtfShifts, Control, Layout, Revision};
        let old = include_bytes!("../../fixtures/elf-small/x86_64-pie").to_vec();
        let controls = [Control {
            mix: old.len() as u64,
            copy: 0,
            seek: 0,
        }];
        let arch = Layout::parse(&old).unwrap().arch;
        let mut raw = build_payload(
            arch,
            &BtfShifts::default(),
            Revision::Five,
            &controls,
            &old,
            &old,
        )
        .unwrap();
        raw.extend_from_slice(&encode_corrections(&[]));
        let delta = |raw: &[u8]| {
            let header = DeltaHeader {
                method: Method::Elf,
                source: Hash::of(&old),
                target: Hash::of(&old),
                target_size: old.len() as u64,
            };
            encode_delta(&header, &zstd::bulk::compress(raw, 3).unwrap())
        };
        assert!(apply_delta(&delta(&raw), &old, None).unwrap() == old);
        raw[0] |= 0x04;
        let err = apply_delta(&delta(&raw), &old, None).unwrap_err();
        assert!(err.is_unusable_delta(), "{err}");
        assert!(err.to_string().contains("architecture"), "{err}");
    }

    #[test]
    fn truncated_and_flipped_deltas_fail_cleanly() {
        let source = b"old contents".repeat(100);
        let target = b"new contents".repeat(100);
        let delta = zstd_delta(&source, &target);
        assert_eq!(apply_delta(&delta, &source, None).unwrap(), target);
        for n in [0, 5, HEADER_LEN - 1, HEADER_LEN, delta.len() - 1] {
            assert!(
                apply_delta(&delta[..n], &source, None).is_err(),
                "prefix {n}"
            );
        }
        let mut flipped = delta.clone();
        let last = flipped.len() - 5;
        flipped[last] ^= 0x40;
        assert!(apply_delta(&flipped, &source, None).is_err());
        let err = apply_delta(&delta, &source, Some((Hash::of(b"x"), 1))).unwrap_err();
        assert!(matches!(err, Error::DeltaMismatch { .. }), "{err}");
    }
}
