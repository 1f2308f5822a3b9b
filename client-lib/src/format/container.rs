//! The delta container: a fixed header naming the method, the source and target content
//! addresses and the target size, followed by the method's payload (`docs/FORMAT.md`,
//! "Delta container"). Decoding trusts nothing: every length is checked against the header
//! and the header against what the caller expects.

use std::cell::RefCell;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::hash::{delta_path, Hash};
use super::wire::Reader;
use crate::error::Error;

pub const DELTA_MAGIC: &[u8; 8] = b"DRDELTA1";
/// Header length: magic, method, source hash, target hash, target size.
pub const HEADER_LEN: usize = 8 + 1 + 32 + 32 + 8;
/// Largest target a delta may produce (16 GiB).
pub const MAX_TARGET_SIZE: u64 = 16 << 30;
/// Largest zstd window a decoder accepts: 2 GiB, or 1 GiB where pointers are 32 bits.
pub const MAX_WINDOW_LOG: u32 = if cfg!(target_pointer_width = "32") {
    30
} else {
    31
};

/// How the payload turns the source into the target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// A zstd frame compressed with the source as a referenced prefix ("patch-from").
    ZstdPatchFrom = 1,
    /// A bsdiff patch (control triples, diff and extra bytes interleaved), zstd-compressed.
    BsdiffZstd = 2,
    /// The target alone, zstd-compressed; the source is ignored.
    Zstd = 3,
    /// ELF-aware: references normalised to the source, bsdiff, corrections (see `crate::elf`).
    Elf = 4,
    /// gzip files: a delta between the decompressed contents, compressed again bit for bit
    /// (see `crate::gzip`).
    Gzip = 5,
    /// Files holding an xz stream (a compressed kernel): the contents and the bytes around the
    /// stream diffed apart, the stream compressed again bit for bit (see `crate::xz`).
    Xz = 6,
}

impl Method {
    pub fn from_u8(b: u8) -> Option<Method> {
        Some(match b {
            1 => Method::ZstdPatchFrom,
            2 => Method::BsdiffZstd,
            3 => Method::Zstd,
            4 => Method::Elf,
            5 => Method::Gzip,
            6 => Method::Xz,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Method::ZstdPatchFrom => "zstd-patch-from",
            Method::BsdiffZstd => "bsdiff",
            Method::Zstd => "zstd",
            Method::Elf => "elf",
            Method::Gzip => "gzip",
            Method::Xz => "xz",
        }
    }

    pub const ALL: [Method; 6] = [
        Method::ZstdPatchFrom,
        Method::BsdiffZstd,
        Method::Zstd,
        Method::Elf,
        Method::Gzip,
        Method::Xz,
    ];

    /// The method named `name` ([`Method::name`]).
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// Methods cross the API by name (FORMAT.md §8).
impl serde::Serialize for Method {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Method, D::Error> {
        let name = String::deserialize(d)?;
        Method::from_name(&name).ok_or_else(|| {
            let known: Vec<&str> = Method::ALL.iter().map(|m| m.name()).collect();
            serde::de::Error::custom(format!(
                "unknown delta method {name:?}, expected one of {}",
                known.join(", ")
            ))
        })
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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

/// A delta's payload: as its container stores it, or as a pack holds it (§7.1: for methods
/// 2, 3 and 4 the stream their zstd frame holds, for the others the same bytes).
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    Stored(&'a [u8]),
    Unwrapped(&'a [u8]),
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
    decompress(payload, max).map_err(|e| Error::DeltaPayload {
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

/// What a delta applies to: bytes in memory, or a file read where the decoder needs it. The
/// ELF method reads only a file's headers and the ranges its records name, so a device holds
/// the new image but not the source; the other methods read a file whole.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    Bytes(&'a [u8]),
    /// `path` names the file in errors.
    File {
        file: &'a File,
        path: &'a Path,
    },
}

/// Bytes read from a [`Source`] at a time.
const SOURCE_CHUNK: usize = 1 << 16;

impl Source<'_> {
    /// The source's length (a file's when it is opened; one that shrinks later fails to read).
    pub fn size(&self) -> std::io::Result<u64> {
        match self {
            Source::Bytes(b) => Ok(b.len() as u64),
            Source::File { file, .. } => Ok(file.metadata()?.len()),
        }
    }

    /// Fills `buf` from offset `at`; a read past the end fails.
    pub fn read_at(&self, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match self {
            Source::Bytes(b) => {
                let range = usize::try_from(at)
                    .ok()
                    .and_then(|s| Some(s..s.checked_add(buf.len())?));
                let part = range.and_then(|r| b.get(r)).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "read past the end")
                })?;
                buf.copy_from_slice(part);
                Ok(())
            }
            Source::File { file, .. } => file.read_exact_at(buf, at),
        }
    }

    /// The content address of the source's bytes, read in chunks.
    pub fn hash(&self) -> std::io::Result<Hash> {
        match self {
            Source::Bytes(b) => Ok(Hash::of(b)),
            Source::File { .. } => {
                let (len, mut at) = (self.size()?, 0u64);
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; SOURCE_CHUNK];
                while at < len {
                    let n = (len - at).min(SOURCE_CHUNK as u64) as usize;
                    self.read_at(at, &mut buf[..n])?;
                    h.update(&buf[..n]);
                    at += n as u64;
                }
                Ok(h.finalize().into())
            }
        }
    }

    /// The whole source in memory (read once, for the methods that need it all).
    fn bytes(&self) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        match self {
            Source::Bytes(b) => Ok(std::borrow::Cow::Borrowed(b)),
            Source::File { .. } => {
                let len = usize::try_from(self.size()?).map_err(std::io::Error::other)?;
                let mut out = Vec::new();
                out.try_reserve_exact(len)
                    .map_err(|_| std::io::Error::other("source does not fit in memory"))?;
                out.resize(len, 0);
                self.read_at(0, &mut out)?;
                Ok(std::borrow::Cow::Owned(out))
            }
        }
    }

    fn path(&self) -> &Path {
        match self {
            Source::Bytes(_) => Path::new("source"),
            Source::File { path, .. } => path,
        }
    }
}

/// A source whose read errors are kept aside: a decoder reports them as a malformed payload,
/// but a source that cannot be read is a local error ([`Error::Io`]), not a damaged delta.
pub(crate) struct Watched<'a> {
    pub source: Source<'a>,
    failed: RefCell<Option<std::io::Error>>,
}

impl<'a> Watched<'a> {
    pub(crate) fn new(source: Source<'a>) -> Self {
        Watched {
            source,
            failed: RefCell::new(None),
        }
    }

    /// [`Source::read_at`], remembering a failure other than a read past the end (which the
    /// decoder reports as the payload's fault).
    pub fn read_at(&self, at: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.source.read_at(at, buf).inspect_err(|e| {
            if e.kind() != std::io::ErrorKind::UnexpectedEof {
                self.failed
                    .borrow_mut()
                    .get_or_insert_with(|| std::io::Error::new(e.kind(), e.to_string()));
            }
        })
    }

    fn io_error(&self) -> Option<Error> {
        let e = self.failed.borrow_mut().take()?;
        Some(Error::io(self.source.path())(e))
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
    let out = match h.method {
        Method::Elf => decode_elf(h, payload, source, &what)?,
        _ => decode_payload(h, payload, whole.as_deref().unwrap_or(&[]), &what)?,
    };
    if out.len() as u64 != h.target_size {
        return Err(Error::ContentLength {
            what,
            got: out.len() as u64,
            want: h.target_size,
        });
    }
    let got = Hash::of(&out);
    if got != h.target {
        return Err(Error::ContentHash {
            what,
            got,
            want: h.target,
        });
    }
    Ok(out)
}

/// A method-4 payload: as stored, one frame or three, read as they decompress (FORMAT.md
/// §6.4), the decoder writing the image as the payload arrives; unwrapped (from a pack), the
/// frames' contents one after another. The payload holds a bsdiff stream and at most a few
/// varints per reference. The source is read where the records name it.
fn decode_elf(
    h: &DeltaHeader,
    payload: Payload<'_>,
    source: Source<'_>,
    what: &str,
) -> Result<Vec<u8>, Error> {
    let invalid = |reason: String| Error::DeltaPayload {
        what: what.to_string(),
        method: h.method.name(),
        reason,
    };
    let bound = bsdiff_bound(h.target_size).saturating_mul(2);
    let old = Watched::new(source);
    let out = match payload {
        Payload::Stored(p) => crate::elf::decode_frames_from(&old, p, h.target_size, bound),
        Payload::Unwrapped(p) if p.len() as u64 > bound => {
            return Err(invalid(format!(
                "payload of {} bytes is over the limit of {bound}",
                p.len()
            )))
        }
        Payload::Unwrapped(p) => crate::elf::decode_source(&old, p, h.target_size),
    };
    out.map_err(|e| old.io_error().unwrap_or_else(|| invalid(e.to_string())))
}

/// Most bytes a bsdiff stream for a target of `size` bytes may hold: one 24-byte record per
/// output byte at worst, plus the data.
fn bsdiff_bound(size: u64) -> u64 {
    (size + 1).saturating_mul(26) + (1 << 20)
}

/// The stream a method-2, 3 or 4 payload holds: its zstd frame decompressed as it is read,
/// or the bytes themselves when a pack held them unwrapped.
fn framed<'a>(payload: Payload<'a>) -> std::io::Result<Box<dyn Read + 'a>> {
    Ok(match payload {
        Payload::Stored(p) => {
            let mut d = zstd::stream::read::Decoder::with_buffer(p)?;
            d.window_log_max(MAX_WINDOW_LOG)?;
            Box::new(d)
        }
        Payload::Unwrapped(p) => Box::new(p),
    })
}

fn decode_payload(
    h: &DeltaHeader,
    payload: Payload<'_>,
    source: &[u8],
    what: &str,
) -> Result<Vec<u8>, Error> {
    let framed_payload = payload;
    // Methods 1, 5 and 6 read the same bytes either way.
    let (Payload::Stored(payload) | Payload::Unwrapped(payload)) = payload;
    let method = h.method;
    let invalid = |reason: String| Error::DeltaPayload {
        what: what.to_string(),
        method: method.name(),
        reason,
    };
    let fail = |e: std::io::Error| invalid(e.to_string());
    // Read one byte past the promised size so an over-long stream is caught.
    let limit = h.target_size + 1;
    // The header is untrusted until the output hashes right: reserve modestly.
    let mut out = Vec::with_capacity(h.target_size.min(64 << 20) as usize);
    match method {
        Method::Zstd => {
            let d = framed(framed_payload).map_err(fail)?;
            d.take(limit).read_to_end(&mut out).map_err(fail)?;
        }
        Method::ZstdPatchFrom => {
            let mut d =
                zstd::stream::read::Decoder::with_ref_prefix(payload, source).map_err(fail)?;
            d.window_log_max(MAX_WINDOW_LOG).map_err(fail)?;
            d.take(limit).read_to_end(&mut out).map_err(fail)?;
        }
        Method::BsdiffZstd => {
            let d = framed(framed_payload).map_err(fail)?;
            // A bsdiff stream is 24-byte control triples plus exactly target-size bytes of
            // data; even one triple per output byte fits this bound, and it bounds the output.
            let mut bounded = d.take(bsdiff_bound(h.target_size));
            bsdiff::patch(source, &mut bounded, &mut out).map_err(fail)?;
        }
        Method::Elf => {
            // Only through `decode_elf`, which reads the source where it needs it.
            let bytes = Source::Bytes(source);
            out = decode_elf(h, framed_payload, bytes, what)?;
        }
        Method::Gzip => {
            use crate::gzip;
            let p =
                gzip::Patch::decode(payload, source.len() as u64, h.target_size).map_err(fail)?;
            let old = gzip::member(source).map_err(fail)?;
            let raw_old = gzip::inflate(old.deflate, p.source_size).map_err(fail)?;
            if raw_old.len() as u64 != p.source_size {
                return Err(invalid(format!(
                    "source inflates to {} bytes, the patch says {}",
                    raw_old.len(),
                    p.source_size
                )));
            }
            let inner = DeltaHeader {
                method: p.inner,
                target_size: p.target_size,
                ..*h
            };
            let raw_new = decode_payload(&inner, Payload::Stored(p.payload), &raw_old, what)?;
            drop(raw_old);
            if raw_new.len() as u64 != p.target_size {
                return Err(Error::ContentLength {
                    what: format!("{what} (decompressed)"),
                    got: raw_new.len() as u64,
                    want: p.target_size,
                });
            }
            out = gzip::rebuild(p.header, &raw_new, p.deflater).map_err(fail)?;
        }
        Method::Xz => {
            use crate::xz;
            let p = xz::Patch::decode(payload, source.len() as u64, h.target_size).map_err(fail)?;
            // decode() bounded both by the source's length.
            let (at, len) = (p.source_at as usize, p.source_len as usize);
            let (raw_old, used) =
                xz::decode_stream(&source[at..at + len], p.source_size).map_err(fail)?;
            if used != len || raw_old.len() as u64 != p.source_size {
                return Err(invalid(format!(
                    "source stream is {used} bytes holding {}, the patch says {len} holding {}",
                    raw_old.len(),
                    p.source_size
                )));
            }
            let part = |method, size| DeltaHeader {
                method,
                target_size: size,
                ..*h
            };
            let frame = decode_payload(
                &part(Method::ZstdPatchFrom, p.frame_size),
                Payload::Stored(p.frame),
                &xz::frame_of(source, at, len),
                what,
            )?;
            let raw_new = decode_payload(
                &part(p.inner, p.target_size),
                Payload::Stored(p.payload),
                &raw_old,
                what,
            )?;
            drop(raw_old);
            if frame.len() as u64 != p.frame_size
                || raw_new.len() as u64 != p.target_size
                || p.target_at > p.frame_size
            {
                return Err(invalid(format!(
                    "frame of {} bytes (want {}, stream at {}), contents of {} bytes (want {})",
                    frame.len(),
                    p.frame_size,
                    p.target_at,
                    raw_new.len(),
                    p.target_size
                )));
            }
            let stream = xz::encode(&raw_new, &p.options, None).map_err(fail)?;
            drop(raw_new);
            let cut = p.target_at as usize;
            out = Vec::with_capacity(frame.len() + stream.len());
            out.extend_from_slice(&frame[..cut]);
            out.extend_from_slice(&stream);
            out.extend_from_slice(&frame[cut..]);
        }
    }
    Ok(out)
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
