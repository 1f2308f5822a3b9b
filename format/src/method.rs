//! What every delta method shares, and what the container and the methods' decoders both
//! use without either importing the other: the method numbers, the limits a decoder holds a
//! payload to, the payload as stored or unwrapped, its zstd framing, and the source a delta
//! applies to (bytes, or a file read where a decoder needs it).

use std::cell::RefCell;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::Error;
use crate::hash::Hash;

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
    /// LLVM bitcode: a delta between the bitstreams unpacked to byte-aligned values, packed
    /// again bit for bit (see `crate::bitcode`).
    Bitcode = 7,
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
            7 => Method::Bitcode,
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
            Method::Bitcode => "bitcode",
        }
    }

    pub const ALL: [Method; 7] = [
        Method::ZstdPatchFrom,
        Method::BsdiffZstd,
        Method::Zstd,
        Method::Elf,
        Method::Gzip,
        Method::Xz,
        Method::Bitcode,
    ];

    /// The method named `name` ([`Method::name`]).
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// The contents' delta a `gzip` or `bitcode` payload ends with (FORMAT.md §6.5, §6.7): the
/// source's and the target's decompressed (or unpacked) sizes, the inner method, 1 or 2, and
/// its payload to the end. A `bitcode` payload is this alone ([`crate::bitcode::Patch`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contents<'a> {
    pub source_size: u64,
    pub target_size: u64,
    pub inner: Method,
    pub payload: &'a [u8],
}

impl<'a> Contents<'a> {
    /// The encoded contents' delta.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.payload.len() + 24);
        self.write(&mut out);
        out
    }

    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        crate::wire::put_varint(out, self.source_size);
        crate::wire::put_varint(out, self.target_size);
        out.push(self.inner as u8);
        out.extend_from_slice(self.payload);
    }

    /// Reads the rest of `r`, the sizes at most `source_max` and `target_max`.
    pub(crate) fn read(
        r: &mut crate::wire::Reader<'a>,
        source_max: u64,
        target_max: u64,
    ) -> std::io::Result<Contents<'a>> {
        let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let wire = |e: crate::wire::WireError| bad(e.to_string());
        let source_size = r.varint_max(source_max, "source size").map_err(wire)?;
        let target_size = r.varint_max(target_max, "target size").map_err(wire)?;
        let inner = match r.u8("inner method").map_err(wire)? {
            1 => Method::ZstdPatchFrom,
            2 => Method::BsdiffZstd,
            m => return Err(bad(format!("inner method {m} is not 1 or 2"))),
        };
        Ok(Contents {
            source_size,
            target_size,
            inner,
            payload: r.rest(),
        })
    }
}

/// The most a compressed or packed file of `len` bytes may claim to hold, at most `ratio`
/// bytes per byte and 1 KiB of slack, within [`MAX_TARGET_SIZE`].
pub(crate) fn expanded_limit(len: u64, ratio: u64) -> u64 {
    len.saturating_mul(ratio)
        .saturating_add(1024)
        .min(MAX_TARGET_SIZE)
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

/// A delta's payload: as its container stores it, or as a pack holds it (§7.1: for methods
/// 2, 3 and 4 the stream their zstd frame holds, for the others the same bytes).
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    Stored(&'a [u8]),
    Unwrapped(&'a [u8]),
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
    pub(crate) fn bytes(&self) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
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

    pub(crate) fn path(&self) -> &Path {
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

    pub(crate) fn io_error(&self) -> Option<Error> {
        let e = self.failed.borrow_mut().take()?;
        Some(Error::io(self.source.path())(e))
    }
}

/// Most bytes a bsdiff stream for a target of `size` bytes may hold: one 24-byte record per
/// output byte at worst, plus the data.
pub(crate) fn bsdiff_bound(size: u64) -> u64 {
    (size + 1).saturating_mul(26) + (1 << 20)
}

/// The stream a method-2, 3 or 4 payload holds: its zstd frame decompressed as it is read,
/// or the bytes themselves when a pack held them unwrapped.
pub(crate) fn framed<'a>(payload: Payload<'a>) -> std::io::Result<Box<dyn Read + 'a>> {
    Ok(match payload {
        Payload::Stored(p) => {
            let mut d = zstd::stream::read::Decoder::with_buffer(p)?;
            d.window_log_max(MAX_WINDOW_LOG)?;
            Box::new(d)
        }
        Payload::Unwrapped(p) => Box::new(p),
    })
}
