//! gzip members for the `gzip` delta method (FORMAT.md §6.5): parsing a single-member file,
//! inflating it within a bound, and deflating it again bit for bit.
//!
//! A gzip file changes almost everywhere when one line of what it compresses changes, so a
//! delta between two of them costs nearly the whole new file. The `gzip` method diffs the
//! decompressed contents instead and has the device compress the result again. That only
//! works where the compressor is reproducible: the publisher keeps the method only when the
//! deflater named in the patch gives the new file's deflate stream exactly: zlib at a level
//! (built from the source pinned in `Cargo.lock`, `libz-sys` feature `static`, so every
//! device runs the very code the publisher checked against), or GNU gzip's own deflate
//! ([`crate::gnu_deflate`]), which is what `gzip -9n` wrote and what zlib does not match past
//! one deflate block. The device still hashes the rebuilt file, like every other delta's
//! output.

use std::io;

use flate2::{Compress, Compression, Crc, Decompress, FlushCompress, FlushDecompress, Status};

use crate::method::{expanded_limit, Contents, Method};
use crate::wire::{put_bytes, Reader};

/// Most bytes deflate can expand to per compressed byte (a 258-byte match costs at least
/// two bits), plus slack for a stream's tail: bounds what a `gzip` patch may claim.
pub const MAX_RATIO: u64 = 1032;

/// The payload of a `gzip` delta (FORMAT.md §6.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patch<'a> {
    /// The deflater that reproduces the target's deflate stream.
    pub deflater: Deflater,
    /// The target's gzip header, verbatim.
    pub header: &'a [u8],
    /// Decompressed sizes of the source and the target.
    pub source_size: u64,
    pub target_size: u64,
    /// Method of the inner delta between the decompressed contents: 1 or 2.
    pub inner: Method,
    /// The inner delta's payload (its delta header left out).
    pub payload: &'a [u8],
}

impl<'a> Patch<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header.len() + self.payload.len() + 32);
        out.push(self.deflater.byte());
        put_bytes(&mut out, self.header);
        Contents {
            source_size: self.source_size,
            target_size: self.target_size,
            inner: self.inner,
            payload: self.payload,
        }
        .write(&mut out);
        out
    }

    /// Parses a payload for a target of `gz_size` bytes from a source of `source_len` bytes,
    /// checking every field against what a gzip file of that size can hold.
    pub fn decode(payload: &'a [u8], source_len: u64, gz_size: u64) -> io::Result<Patch<'a>> {
        let mut r = Reader::new(payload);
        let wire = |e: crate::wire::WireError| bad(e.to_string());
        let deflater = Deflater::from_byte(r.u8("deflater").map_err(wire)?)?;
        let header = r
            .bytes(
                usize::try_from(gz_size).unwrap_or(usize::MAX),
                "gzip header",
            )
            .map_err(wire)?;
        let c = Contents::read(
            &mut r,
            expanded_limit(source_len, MAX_RATIO),
            expanded_limit(gz_size, MAX_RATIO),
        )?;
        Ok(Patch {
            deflater,
            header,
            source_size: c.source_size,
            target_size: c.target_size,
            inner: c.inner,
            payload: c.payload,
        })
    }
}

/// The gzip magic and the deflate compression method byte.
pub const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

/// One gzip member that spans the whole file: header, raw deflate stream, and trailer.
#[derive(Clone, Copy, Debug)]
pub struct Member<'a> {
    /// Everything before the deflate stream, verbatim.
    pub header: &'a [u8],
    /// The deflate stream and nothing after it but the trailer.
    pub deflate: &'a [u8],
    /// CRC-32 of the decompressed bytes, from the trailer.
    pub crc: u32,
    /// Decompressed length modulo 2^32, from the trailer.
    pub isize: u32,
}

fn bad(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

/// Whether `data` starts like a gzip file.
pub fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&GZIP_MAGIC)
}

/// Length of the gzip header at the start of `data` (RFC 1952 §2.3).
pub fn header_len(data: &[u8]) -> io::Result<usize> {
    if !is_gzip(data) {
        return Err(bad("not a gzip file (magic 1f 8b 08)"));
    }
    let short = || bad("gzip header is truncated");
    let flags = *data.get(3).ok_or_else(short)?;
    if flags & 0xe0 != 0 {
        return Err(bad(format!("gzip header has reserved flags {flags:#04x}")));
    }
    let mut at = 10;
    if at > data.len() {
        return Err(short());
    }
    if flags & 0x04 != 0 {
        let b = data.get(at..at + 2).ok_or_else(short)?;
        at += 2 + usize::from(u16::from_le_bytes([b[0], b[1]]));
    }
    for flag in [0x08, 0x10] {
        if flags & flag != 0 {
            let rest = data.get(at..).ok_or_else(short)?;
            at += rest.iter().position(|&b| b == 0).ok_or_else(short)? + 1;
        }
    }
    if flags & 0x02 != 0 {
        at += 2;
    }
    if at > data.len() {
        return Err(short());
    }
    Ok(at)
}

/// Splits a file that is exactly one gzip member into its parts. That the deflate stream
/// ends where the trailer starts is checked when it is inflated ([`inflate`]).
pub fn member(data: &[u8]) -> io::Result<Member<'_>> {
    let h = header_len(data)?;
    if data.len() < h + 8 {
        return Err(bad("gzip file is too short for its trailer"));
    }
    let t = data.len() - 8;
    let word = |at: usize| u32::from_le_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
    Ok(Member {
        header: &data[..h],
        deflate: &data[h..t],
        crc: word(t),
        isize: word(t + 4),
    })
}

/// Inflates a raw deflate stream that must end exactly at the end of `deflate` and give at
/// most `max` bytes.
pub fn inflate(deflate: &[u8], max: u64) -> io::Result<Vec<u8>> {
    let over = || bad(format!("inflates to more than {max} bytes"));
    let mut d = Decompress::new(false);
    // Room for one byte past the bound, so a stream that goes on is caught.
    let cap = usize::try_from(max.saturating_add(1)).unwrap_or(usize::MAX);
    let first = deflate
        .len()
        .saturating_mul(4)
        .clamp(1024, 64 << 20)
        .min(cap);
    let mut out: Vec<u8> = Vec::with_capacity(first);
    loop {
        if out.len() == out.capacity() {
            if out.len() >= cap {
                return Err(over());
            }
            out.reserve_exact(out.len().max(1 << 16).min(cap - out.len()));
        }
        let (read, wrote) = (d.total_in(), out.len());
        let at = usize::try_from(read).map_err(|_| bad("input too long"))?;
        let status = d
            .decompress_vec(&deflate[at..], &mut out, FlushDecompress::Finish)
            .map_err(|e| bad(format!("deflate stream: {e}")))?;
        if status == Status::StreamEnd {
            break;
        }
        if d.total_in() == read && out.len() == wrote {
            return Err(bad("deflate stream is truncated"));
        }
    }
    if out.len() as u64 > max {
        return Err(over());
    }
    if d.total_in() != deflate.len() as u64 {
        return Err(bad(format!(
            "{} bytes follow the deflate stream before the trailer",
            deflate.len() as u64 - d.total_in()
        )));
    }
    Ok(out)
}

/// Raw deflate of `raw` with zlib at `level` (1–9; memLevel 8, 32 KiB window, default
/// strategy: zlib's defaults, which `gzip -n` reproduces on most files).
pub fn deflate(raw: &[u8], level: u8) -> io::Result<Vec<u8>> {
    if !(1..=9).contains(&level) {
        return Err(bad(format!("deflate level {level} is not 1 to 9")));
    }
    let mut c = Compress::new(Compression::new(u32::from(level)), false);
    let mut out = Vec::with_capacity(raw.len() / 3 + 1024);
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(4096));
        }
        let consumed = usize::try_from(c.total_in()).map_err(|_| bad("input too long"))?;
        let status = c
            .compress_vec(&raw[consumed..], &mut out, FlushCompress::Finish)
            .map_err(|e| bad(format!("deflate: {e}")))?;
        if status == Status::StreamEnd {
            return Ok(out);
        }
    }
}

/// CRC-32 (gzip's) of `raw`.
pub fn crc32(raw: &[u8]) -> u32 {
    let mut c = Crc::new();
    c.update(raw);
    c.sum()
}

/// Which compressor, at which level, rebuilds a deflate stream: the first byte of a `gzip`
/// payload (FORMAT.md §6.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deflater {
    /// zlib at level 1–9 ([`deflate`]); byte 1–9.
    Zlib(u8),
    /// GNU gzip's deflate at level 4–9 ([`crate::gnu_deflate`]); byte `0x80 | level`.
    Gnu(u8),
}

impl Deflater {
    const GNU: u8 = 0x80;

    pub fn byte(self) -> u8 {
        match self {
            Deflater::Zlib(l) => l,
            Deflater::Gnu(l) => Self::GNU | l,
        }
    }

    pub fn from_byte(b: u8) -> io::Result<Deflater> {
        let d = if b & Self::GNU != 0 {
            Deflater::Gnu(b & !Self::GNU)
        } else {
            Deflater::Zlib(b)
        };
        match d {
            Deflater::Zlib(1..=9) => Ok(d),
            Deflater::Gnu(l) if crate::gnu_deflate::LEVELS.contains(&l) => Ok(d),
            _ => Err(bad(format!(
                "deflater {b:#04x} is neither zlib 1 to 9 nor GNU gzip 4 to 9"
            ))),
        }
    }

    /// The raw deflate stream of `raw`.
    pub fn deflate(self, raw: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Deflater::Zlib(l) => deflate(raw, l),
            Deflater::Gnu(l) => crate::gnu_deflate::deflate(raw, l),
        }
    }
}

impl std::fmt::Display for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Deflater::Zlib(l) => write!(f, "zlib -{l}"),
            Deflater::Gnu(l) => write!(f, "gzip -{l}"),
        }
    }
}

/// A whole gzip file: `header`, `raw` deflated by `deflater`, and the trailer.
pub fn rebuild(header: &[u8], raw: &[u8], deflater: Deflater) -> io::Result<Vec<u8>> {
    let body = deflater.deflate(raw)?;
    let mut out = Vec::with_capacity(header.len() + body.len() + 8);
    out.extend_from_slice(header);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(raw).to_le_bytes());
    out.extend_from_slice(&(raw.len() as u32).to_le_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip_file(raw: &[u8], level: u8, name: Option<&[u8]>) -> Vec<u8> {
        let level = Deflater::Zlib(level);
        let mut header = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 3];
        if let Some(n) = name {
            header[3] = 0x08;
            header.extend_from_slice(n);
            header.push(0);
        }
        rebuild(&header, raw, level).unwrap()
    }

    #[test]
    fn members_parse_inflate_and_rebuild_bit_for_bit() {
        let raw = b"deltaroot changelog entry\n".repeat(500);
        for level in [1, 6, 9] {
            let file = gzip_file(&raw, level, Some(b"changelog"));
            let m = member(&file).unwrap();
            assert_eq!(m.header.len(), 10 + 10);
            let back = inflate(m.deflate, raw.len() as u64).unwrap();
            assert_eq!(back, raw);
            assert_eq!(m.crc, crc32(&raw));
            assert_eq!(m.isize as usize, raw.len());
            assert_eq!(
                rebuild(m.header, &back, Deflater::Zlib(level)).unwrap(),
                file
            );
        }
    }

    #[test]
    fn deflaters_are_named_by_one_byte() {
        for d in (1..=9)
            .map(Deflater::Zlib)
            .chain((4..=9).map(Deflater::Gnu))
        {
            assert_eq!(Deflater::from_byte(d.byte()).unwrap(), d);
        }
        assert_eq!(Deflater::Gnu(9).byte(), 0x89);
        for b in [0, 10, 0x7f, 0x80, 0x83, 0x8a, 0xff] {
            let e = Deflater::from_byte(b).unwrap_err().to_string();
            assert!(e.contains(&format!("{b:#04x}")), "{e}");
        }
    }

    #[test]
    fn hostile_members_fail_cleanly() {
        let raw = b"0123456789".repeat(10_000);
        let file = gzip_file(&raw, 9, None);
        let m = member(&file).unwrap();
        // Over the bound, truncated, and with bytes after the stream.
        assert!(inflate(m.deflate, raw.len() as u64 - 1).is_err());
        assert!(inflate(&m.deflate[..m.deflate.len() / 2], 1 << 30).is_err());
        let mut longer = m.deflate.to_vec();
        longer.extend_from_slice(b"xx");
        assert!(inflate(&longer, 1 << 30).is_err());
        for n in 0..12 {
            assert!(member(&file[..n]).is_err(), "prefix {n}");
        }
        let mut reserved = file.clone();
        reserved[3] = 0x80;
        assert!(header_len(&reserved).is_err());
        let mut unterminated = vec![0x1f, 0x8b, 8, 0x08, 0, 0, 0, 0, 0, 3];
        unterminated.extend_from_slice(b"name without end");
        assert!(header_len(&unterminated).is_err());
        assert!(deflate(b"x", 0).is_err() && deflate(b"x", 10).is_err());
    }
}
