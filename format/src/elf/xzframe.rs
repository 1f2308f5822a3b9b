//! Method-4 payloads framed as one xz stream (LZMA2) instead of zstd (FORMAT.md §6.2).
//!
//! Most of a large ELF payload is the extra bytes: code that no old range matches, which no
//! delta can take from the old file (corpus `libxul`, 140 to 153: 121 MB of its 184 MB, whose
//! zstd frame is the same size with the old file as a prefix or without). LZMA's literal and
//! match coding packs such code 5 to 7% tighter than zstd at level 19 (corpus, revision-5
//! payloads: `python3.11` 555.6 to 527.3 kB, `postgres` 219.9 to 208.5, `libnode` 47.9 to
//! 45.1), and 9 to 11% on browser-sized ones, whose zstd frame a device reads through a 1 MiB
//! window (the ELF method on Chromium 150 to 156: 55.8 to 50.6 MB; on `libxul`: 56.9 to
//! 50.6). The dictionary is bounded ([`XZ_DICT_MAX`]), so a device decodes such a payload in
//! 8 MiB more than a zstd frame's window, whatever a hostile payload asks for.

use std::io::{self, Read};

use liblzma::stream::{Action, Status, Stream};

/// Largest LZMA2 dictionary an xz-framed payload may use: 8 MiB.
pub const XZ_DICT_MAX: u32 = 1 << 23;

/// What the decoder may use: the largest dictionary and liblzma's own state (about 32 KiB).
/// A stream whose dictionary is larger fails with liblzma's memory-limit error.
const MEMLIMIT: u64 = XZ_DICT_MAX as u64 + (1 << 20);

/// Whether a stored method-4 payload is framed as xz (it starts with the xz magic; a zstd
/// frame starts with `28 b5 2f fd`).
pub fn is_xz(payload: &[u8]) -> bool {
    payload.starts_with(&crate::xz::XZ_MAGIC)
}

/// The contents of one xz stream that must span `input` exactly: an error names a truncated
/// stream, bytes after it, or a dictionary over [`XZ_DICT_MAX`].
pub(crate) struct XzPayload<'a> {
    stream: Stream,
    input: &'a [u8],
    ended: bool,
}

impl<'a> XzPayload<'a> {
    pub(crate) fn new(input: &'a [u8]) -> io::Result<Self> {
        let stream = Stream::new_stream_decoder(MEMLIMIT, 0)
            .map_err(|e| io::Error::other(format!("xz stream: {e}")))?;
        Ok(XzPayload {
            stream,
            input,
            ended: false,
        })
    }
}

impl Read for XzPayload<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended || buf.is_empty() {
            return Ok(0);
        }
        loop {
            let (read, wrote) = (self.stream.total_in(), self.stream.total_out());
            let at = usize::try_from(read)
                .unwrap_or(usize::MAX)
                .min(self.input.len());
            let status = self
                .stream
                .process(&self.input[at..], buf, Action::Run)
                .map_err(|e| match e {
                    liblzma::stream::Error::MemLimit => io::Error::other(format!(
                        "xz stream: its dictionary is over the limit of {XZ_DICT_MAX} bytes"
                    )),
                    e => io::Error::other(format!("xz stream: {e}")),
                })?;
            let out = (self.stream.total_out() - wrote) as usize;
            if status == Status::StreamEnd {
                self.ended = true;
                let used = self.stream.total_in();
                if used != self.input.len() as u64 {
                    return Err(io::Error::other(format!(
                        "{} bytes follow the xz stream",
                        self.input.len() as u64 - used
                    )));
                }
                return Ok(out);
            }
            if out > 0 {
                return Ok(out);
            }
            if self.stream.total_in() == read {
                return Err(io::Error::other("xz stream is truncated"));
            }
        }
    }
}

/// What an xz-framed payload decompresses to, at most `max` bytes (a pack holds payloads
/// decompressed).
pub fn decompress_xz(payload: &[u8], max: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    XzPayload::new(payload)?.take(max).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::testing::xz_frame;

    #[test]
    fn reads_one_stream_and_refuses_what_is_not_exactly_one() {
        let raw: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let good = xz_frame(&raw, 1 << 16);
        assert!(is_xz(&good));
        assert!(!is_xz(&zstd::bulk::compress(&raw, 3).unwrap()));
        assert_eq!(decompress_xz(&good, u64::MAX).unwrap(), raw);
        // Bounded by `max`.
        assert_eq!(decompress_xz(&good, 10).unwrap().len(), 10);
        let err = |p: &[u8]| decompress_xz(p, u64::MAX).unwrap_err().to_string();
        for cut in [1, 3, good.len() / 2, good.len() - 1] {
            let e = err(&good[..cut]);
            assert!(
                e.contains("truncated") || e.contains("xz stream"),
                "{cut}: {e}"
            );
        }
        let mut long = good.clone();
        long.extend_from_slice(b"more");
        assert_eq!(err(&long), "4 bytes follow the xz stream");
        let mut bent = good.clone();
        let mid = bent.len() / 2;
        bent[mid] ^= 0x55;
        assert!(decompress_xz(&bent, u64::MAX).map_or(true, |o| o != raw));
    }

    /// A stream whose dictionary is over 8 MiB is refused before anything is decoded: the
    /// device never allocates what a hostile payload asks for.
    #[test]
    fn a_dictionary_over_the_limit_is_refused() {
        let raw = vec![7u8; 1000];
        assert_eq!(
            decompress_xz(&xz_frame(&raw, XZ_DICT_MAX), u64::MAX).unwrap(),
            raw
        );
        let e = decompress_xz(&xz_frame(&raw, XZ_DICT_MAX * 2), u64::MAX).unwrap_err();
        assert!(
            e.to_string().contains("dictionary is over the limit"),
            "{e}"
        );
    }
}
