//! Files that carry an xz stream, for the `xz` delta method (FORMAT.md §6.6): a compressed
//! kernel (`vmlinuz`: setup code, then the kernel as one xz stream, then a trailer) or an
//! `.xz` file.
//!
//! Like gzip (`crate::gzip`), a small change to what the stream holds changes nearly every
//! compressed byte. The `xz` method diffs the decompressed contents, and the bytes around the
//! stream, separately; the device compresses the contents again with the options the patch
//! names. liblzma is built from the source the `liblzma-sys` crate ships (feature `static`),
//! pinned by `Cargo.lock`, so the device runs the encoder the publisher checked against.
//!
//! Compressing again is the costly half: the corpus kernel (66 MB decompressed, preset 6 with
//! a 32 MiB dictionary) takes about 25 s and 370 MiB on one core of the benchmark machine,
//! 17 s where malloc asks for transparent huge pages (`deploy/`'s agent unit sets
//! `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`): the match finder's 256 MiB of tables miss the
//! TLB on nearly every lookup otherwise.
//! The dictionary is bounded ([`MAX_DICT`]) so a patch cannot ask for more.

use std::io;

use liblzma::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};

use crate::method::{Method, MAX_TARGET_SIZE};
use crate::wire::{put_bytes, put_varint, Reader};

/// The xz stream header magic.
pub const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0];
/// Largest dictionary a patch may name (the encoder needs about 11x this).
pub const MAX_DICT: u32 = 64 << 20;
/// Memory the decoder of a source stream may use.
const DECODER_MEMLIMIT: u64 = 256 << 20;

fn bad(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

/// Branch/call filter ahead of LZMA2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bcj {
    None = 0,
    X86 = 1,
    Arm64 = 2,
}

/// How a stream is compressed again: what `xz --check=C --FILTER --lzma2=preset=P,dict=D`
/// sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Options {
    /// liblzma check id: 0 none, 1 CRC32, 4 CRC64, 10 SHA-256.
    pub check: u8,
    pub bcj: Bcj,
    /// 0–9, and [`EXTREME`] for `-e`.
    pub preset: u32,
    pub dict: u32,
}

/// The preset flag of `xz -e`.
pub const EXTREME: u32 = 0x8000_0000;

impl Options {
    fn check(&self) -> io::Result<Check> {
        Ok(match self.check {
            0 => Check::None,
            1 => Check::Crc32,
            4 => Check::Crc64,
            10 => Check::Sha256,
            c => return Err(bad(format!("xz check {c} is not 0, 1, 4 or 10"))),
        })
    }

    fn validate(&self) -> io::Result<()> {
        self.check()?;
        if self.preset & !EXTREME > 9 {
            return Err(bad(format!("xz preset {:#x} is not 0 to 9", self.preset)));
        }
        if !(4096..=MAX_DICT).contains(&self.dict) {
            return Err(bad(format!(
                "xz dictionary of {} bytes is not 4 KiB to {MAX_DICT}",
                self.dict
            )));
        }
        Ok(())
    }

    fn encoder(&self) -> io::Result<Stream> {
        self.validate()?;
        let fail = |e: liblzma::stream::Error| bad(format!("xz encoder: {e}"));
        let mut lzma = LzmaOptions::new_preset(self.preset).map_err(fail)?;
        lzma.dict_size(self.dict);
        let mut filters = Filters::new();
        match self.bcj {
            Bcj::None => {}
            Bcj::X86 => {
                filters.x86();
            }
            Bcj::Arm64 => {
                filters.arm64();
            }
        }
        filters.lzma2(&lzma);
        Stream::new_stream_encoder(&filters, self.check()?).map_err(fail)
    }
}

/// Offset of the first xz stream header in `data`.
pub fn find_stream(data: &[u8]) -> Option<usize> {
    memchr::memmem::find(data, &XZ_MAGIC)
}

/// Decodes the one xz stream at the start of `data` (bytes after it are left alone) into at
/// most `max` bytes; returns the contents and the stream's length.
pub fn decode_stream(data: &[u8], max: u64) -> io::Result<(Vec<u8>, usize)> {
    let fail = |e: liblzma::stream::Error| bad(format!("xz stream: {e}"));
    let mut s = Stream::new_stream_decoder(DECODER_MEMLIMIT, 0).map_err(fail)?;
    let cap = usize::try_from(max.saturating_add(1)).unwrap_or(usize::MAX);
    let mut out: Vec<u8> = Vec::with_capacity(data.len().saturating_mul(4).min(cap).min(256 << 20));
    loop {
        if out.len() == out.capacity() {
            if out.len() >= cap {
                return Err(bad(format!("xz stream holds more than {max} bytes")));
            }
            out.reserve_exact(out.len().max(1 << 20).min(cap - out.len()));
        }
        let (read, wrote) = (s.total_in(), out.len());
        let at = usize::try_from(read).map_err(|_| bad("input too long"))?;
        let status = s
            .process_vec(&data[at..], &mut out, Action::Run)
            .map_err(fail)?;
        if status == Status::StreamEnd {
            break;
        }
        if s.total_in() == read && out.len() == wrote {
            return Err(bad("xz stream is truncated"));
        }
    }
    if out.len() as u64 > max {
        return Err(bad(format!("xz stream holds more than {max} bytes")));
    }
    Ok((out, s.total_in() as usize))
}

/// `raw` compressed as one xz stream with `opts`; with `limit`, stops once the output passes
/// that many bytes (the publisher's quick test of a preset against a stream's first bytes).
pub fn encode(raw: &[u8], opts: &Options, limit: Option<usize>) -> io::Result<Vec<u8>> {
    let mut s = opts.encoder()?;
    let mut out = Vec::with_capacity(limit.unwrap_or(raw.len() / 3 + 4096));
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(1 << 16));
        }
        let at = usize::try_from(s.total_in()).map_err(|_| bad("input too long"))?;
        let status = s
            .process_vec(&raw[at..], &mut out, Action::Finish)
            .map_err(|e| bad(format!("xz encoder: {e}")))?;
        if status == Status::StreamEnd || limit.is_some_and(|l| out.len() >= l) {
            return Ok(out);
        }
    }
}

/// Largest decompressed size a patch may claim for a stream in a file of `len` bytes:
/// `32 × len + 64 MiB` (a compressed kernel holds about 8x its size), so a hostile patch
/// cannot make a device build contents out of proportion with the file.
pub fn contents_limit(len: u64) -> u64 {
    len.saturating_mul(32)
        .saturating_add(64 << 20)
        .min(MAX_TARGET_SIZE)
}

/// The payload of an `xz` delta.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patch<'a> {
    pub options: Options,
    /// Where the stream starts in the source and how long it is.
    pub source_at: u64,
    pub source_len: u64,
    /// Where the stream starts in the target.
    pub target_at: u64,
    /// Decompressed sizes of the source's and the target's streams.
    pub source_size: u64,
    pub target_size: u64,
    /// zstd patch-from payload: the source's bytes around its stream -> the target's.
    pub frame: &'a [u8],
    /// Length of the target's bytes around its stream.
    pub frame_size: u64,
    /// Method (1, 2 or 4) and payload between the decompressed contents.
    pub inner: Method,
    pub payload: &'a [u8],
}

impl<'a> Patch<'a> {
    pub fn encode(&self) -> Vec<u8> {
        let o = &self.options;
        let mut out = Vec::with_capacity(self.frame.len() + self.payload.len() + 64);
        out.push(o.check);
        out.push(o.bcj as u8);
        out.extend_from_slice(&o.preset.to_le_bytes());
        out.extend_from_slice(&o.dict.to_le_bytes());
        for v in [
            self.source_at,
            self.source_len,
            self.target_at,
            self.source_size,
            self.target_size,
            self.frame_size,
        ] {
            put_varint(&mut out, v);
        }
        put_bytes(&mut out, self.frame);
        out.push(self.inner as u8);
        out.extend_from_slice(self.payload);
        out
    }

    /// Parses a payload for a source of `source_len` bytes and a target of `size` bytes.
    pub fn decode(payload: &'a [u8], source_len: u64, size: u64) -> io::Result<Patch<'a>> {
        let mut r = Reader::new(payload);
        let wire = |e: crate::wire::WireError| bad(e.to_string());
        let check = r.u8("check").map_err(wire)?;
        let bcj = match r.u8("filter").map_err(wire)? {
            0 => Bcj::None,
            1 => Bcj::X86,
            2 => Bcj::Arm64,
            b => return Err(bad(format!("xz filter {b} is not 0, 1 or 2"))),
        };
        let preset = u32::from_le_bytes(r.array("preset").map_err(wire)?);
        let dict = u32::from_le_bytes(r.array("dictionary").map_err(wire)?);
        let options = Options {
            check,
            bcj,
            preset,
            dict,
        };
        options.validate()?;
        let source_at = r.varint_max(source_len, "source offset").map_err(wire)?;
        let source_stream_len = r
            .varint_max(source_len - source_at, "source stream length")
            .map_err(wire)?;
        let target_at = r.varint_max(size, "target offset").map_err(wire)?;
        let source_size = r
            .varint_max(contents_limit(source_len), "source contents size")
            .map_err(wire)?;
        let target_size = r
            .varint_max(contents_limit(size), "target contents size")
            .map_err(wire)?;
        let frame_size = r.varint_max(size - target_at, "frame size").map_err(wire)?;
        let frame = r
            .bytes(usize::try_from(size).unwrap_or(usize::MAX), "frame")
            .map_err(wire)?;
        let inner = match r.u8("inner method").map_err(wire)? {
            1 => Method::ZstdPatchFrom,
            2 => Method::BsdiffZstd,
            4 => Method::Elf,
            m => return Err(bad(format!("inner method {m} is not 1, 2 or 4"))),
        };
        Ok(Patch {
            options,
            source_at,
            source_len: source_stream_len,
            target_at,
            source_size,
            target_size,
            frame,
            frame_size,
            inner,
            payload: r.rest(),
        })
    }
}

/// The bytes of `file` around its stream at `at`, `len` long: what comes before, then after.
pub fn frame_of(file: &[u8], at: usize, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(file.len() - len);
    out.extend_from_slice(&file[..at]);
    out.extend_from_slice(&file[at + len..]);
    out
}

/// Options that describe the stream at the start of `xz`, read from its headers: the check,
/// the filters of its first block and the LZMA2 dictionary. The preset is not recorded in a
/// stream; the caller tries presets. `None` when the stream uses anything else.
pub fn stream_options(xz: &[u8]) -> Option<(u8, Bcj, u32)> {
    if xz.len() < 12 + 2 || xz[..6] != XZ_MAGIC || xz[6] != 0 {
        return None;
    }
    let check = xz[7] & 0x0f;
    let b = &xz[12..];
    let header_len = (usize::from(b[0]) + 1) * 4;
    let header = b.get(..header_len)?;
    let flags = header[1];
    if flags & 0x3c != 0 || flags & 0xc0 != 0 {
        // Reserved bits, or compressed/uncompressed sizes present: not what xz writes alone.
        return None;
    }
    let filters = usize::from(flags & 0x03) + 1;
    let mut r = Reader::new(&header[2..]);
    let mut bcj = Bcj::None;
    let mut dict = None;
    for i in 0..filters {
        let id = r.varint("filter id").ok()?;
        let props = r.bytes(64, "filter properties").ok()?;
        match (id, props.len(), i + 1 == filters) {
            (0x04, 0, false) => bcj = Bcj::X86,
            (0x0a, 0, false) => bcj = Bcj::Arm64,
            (0x21, 1, true) => {
                let p = u32::from(props[0]);
                if p > 40 {
                    return None;
                }
                dict = Some(if p == 40 {
                    u32::MAX
                } else {
                    (2 | (p & 1)) << (p / 2 + 11)
                });
            }
            _ => return None,
        }
    }
    let dict = dict?;
    (dict <= MAX_DICT).then_some((check, bcj, dict))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_inside_files_decode_and_encode_again_bit_for_bit() {
        let raw: Vec<u8> = (0..300_000u32)
            .flat_map(|i| (i / 7).to_le_bytes())
            .collect();
        let opts = Options {
            check: 1,
            bcj: Bcj::X86,
            preset: 6,
            dict: 1 << 20,
        };
        let xz = encode(&raw, &opts, None).unwrap();
        assert_eq!(stream_options(&xz), Some((1, Bcj::X86, 1 << 20)));
        let mut file = b"setup code".to_vec();
        file.extend_from_slice(&xz);
        file.extend_from_slice(b"trailer");
        let at = find_stream(&file).unwrap();
        let (back, len) = decode_stream(&file[at..], raw.len() as u64).unwrap();
        assert_eq!((back.as_slice(), len), (raw.as_slice(), xz.len()));
        assert_eq!(frame_of(&file, at, len), b"setup codetrailer");
        assert!(decode_stream(&file[at..], raw.len() as u64 - 1).is_err());
        assert!(decode_stream(&file[at..at + len / 2], 1 << 30).is_err());
        let first = encode(&raw, &opts, Some(100)).unwrap();
        assert!(first.len() >= 100 && xz.starts_with(&first[..100]));
    }

    #[test]
    fn options_out_of_bounds_are_refused() {
        let ok = Options {
            check: 4,
            bcj: Bcj::None,
            preset: 6,
            dict: 8 << 20,
        };
        assert!(ok.validate().is_ok());
        for o in [
            Options { check: 3, ..ok },
            Options { preset: 10, ..ok },
            Options {
                dict: MAX_DICT + 1,
                ..ok
            },
            Options { dict: 1, ..ok },
        ] {
            assert!(encode(b"x", &o, None).is_err(), "{o:?}");
        }
    }
}
