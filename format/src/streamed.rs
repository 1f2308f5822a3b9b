//! Deltas applied straight into an output file, in bounded memory: what a device with little
//! RAM runs for every content it rebuilds.
//!
//! The whole-file method (3) and bsdiff (2) are decoded as their payload arrives: the payload
//! is decompressed through a bounded zstd window, the source is read where the records name
//! it (positioned reads of at most [`CHUNK`] bytes), and the target is written to the output
//! as it is produced, hashed on the way and never allowed past the header's target size. A
//! 500 MB file is rebuilt this way in a few MiB beside the payload's window
//! (`bench/memory.sh`). The other methods build the target in memory as before
//! ([`crate::container::apply_payload_to`]) and write it out.
//!
//! Whatever the method, the output is only good once this returns `Ok`: the target's length
//! and hash are checked after its last byte is written, and a caller writes into a temporary
//! file it discards on an error. A failure to write the output (a full disk) is
//! [`Error::Io`] naming the output, never mistaken for a damaged delta.

use std::cell::RefCell;
use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::container::{apply_payload_to, check_target, DeltaHeader, HEADER_LEN};
use crate::error::Error;
use crate::hash::{delta_path, Hash};
use crate::method::{bsdiff_bound, framed, Method, Payload, Source, Watched, MAX_WINDOW_LOG};

/// Bytes decoded, read from the source or written at a time.
pub const CHUNK: usize = 1 << 16;

/// Whether `method` is decoded into the output as it arrives (the others are built whole in
/// memory first).
pub fn streams(method: Method) -> bool {
    matches!(method, Method::Zstd | Method::BsdiffZstd)
}

/// Applies the delta in `delta` (a whole container, as downloaded) to `source` and writes the
/// verified target to `out`. `expect` is the (hash, size) the caller's manifest wants.
/// Returns the target's length.
pub fn apply_delta_file(
    delta: &File,
    delta_name: &Path,
    source: Source<'_>,
    expect: Option<(Hash, u64)>,
    out: &mut dyn Write,
    out_name: &Path,
) -> Result<u64, Error> {
    let len = delta.metadata().map_err(Error::io(delta_name))?.len();
    let mut head = vec![0u8; HEADER_LEN.min(len as usize)];
    delta
        .read_exact_at(&mut head, 0)
        .map_err(Error::io(delta_name))?;
    let (h, _) = DeltaHeader::decode(&head)?;
    let what = delta_path(&h.source, &h.target);
    if let Some((hash, size)) = expect {
        if h.target != hash || h.target_size != size {
            return Err(Error::DeltaMismatch {
                what,
                reason: format!(
                    "produces {} ({} bytes), expected {hash} ({size} bytes)",
                    h.target, h.target_size
                ),
            });
        }
    }
    let failed = RefCell::new(None);
    let mut body = Positioned {
        file: delta,
        at: HEADER_LEN as u64,
        failed: &failed,
    };
    if streams(h.method) {
        let decoded =
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(CHUNK, body))
                .and_then(|mut d| d.window_log_max(MAX_WINDOW_LOG).map(|()| d));
        let res = match decoded {
            Ok(d) => stream(&h, Box::new(d), source, out, out_name),
            Err(e) => Err(invalid(&h, &what, e)),
        };
        return match failed.into_inner() {
            Some(e) => Err(Error::io(delta_name)(e)),
            None => res,
        };
    }
    // The other methods need their payload whole: it is no larger than the download, which
    // the caller bounded by the signed plan.
    let mut payload = Vec::new();
    body.read_to_end(&mut payload)
        .map_err(Error::io(delta_name))?;
    in_memory(&h, Payload::Stored(&payload), source, out, out_name)
}

/// Applies a payload whose header the caller knows (a pack's entry) to `source` and writes the
/// verified target to `out`. Returns the target's length.
pub fn apply_payload_into(
    h: &DeltaHeader,
    payload: Payload<'_>,
    source: Source<'_>,
    out: &mut dyn Write,
    out_name: &Path,
) -> Result<u64, Error> {
    if streams(h.method) {
        let what = delta_path(&h.source, &h.target);
        let reader = framed(payload).map_err(|e| invalid(h, &what, e))?;
        return stream(h, reader, source, out, out_name);
    }
    in_memory(h, payload, source, out, out_name)
}

fn in_memory(
    h: &DeltaHeader,
    payload: Payload<'_>,
    source: Source<'_>,
    out: &mut dyn Write,
    out_name: &Path,
) -> Result<u64, Error> {
    let new = apply_payload_to(h, payload, source)?;
    out.write_all(&new)
        .and_then(|()| out.flush())
        .map_err(Error::io(out_name))?;
    Ok(new.len() as u64)
}

fn invalid(h: &DeltaHeader, what: &str, e: io::Error) -> Error {
    Error::DeltaPayload {
        what: what.to_string(),
        method: h.method.name(),
        reason: e.to_string(),
    }
}

/// Decodes a method-2 or method-3 stream (`payload`, decompressed as it is read) into `out`.
fn stream(
    h: &DeltaHeader,
    payload: Box<dyn Read + '_>,
    source: Source<'_>,
    out: &mut dyn Write,
    out_name: &Path,
) -> Result<u64, Error> {
    let what = delta_path(&h.source, &h.target);
    if h.method != Method::Zstd {
        let have = source.hash().map_err(Error::io(source.path()))?;
        if have != h.source {
            return Err(Error::DeltaMismatch {
                what,
                reason: format!("applies to {}, but the source given is {have}", h.source),
            });
        }
    }
    let mut sink = Sink::new(out, h.target_size);
    let old = Watched::new(source);
    let decoded = match h.method {
        // One byte past the promised size is read so that an over-long stream is caught.
        Method::Zstd => copy(&mut payload.take(h.target_size + 1), &mut sink),
        // A bsdiff stream is 24-byte records plus exactly target-size bytes of data; even one
        // record per output byte fits this bound.
        _ => bsdiff(
            &mut payload.take(bsdiff_bound(h.target_size)),
            &old,
            &mut sink,
        ),
    };
    let flushed = decoded.and_then(|()| sink.flush());
    if let Some(e) = sink.failed.take() {
        return Err(Error::io(out_name)(e));
    }
    if let Some(e) = old.io_error() {
        return Err(e);
    }
    flushed.map_err(|e| invalid(h, &what, e))?;
    let (got, len) = sink.finish();
    check_target(h, what, len, got)?;
    Ok(len)
}

fn copy(from: &mut dyn Read, to: &mut Sink<'_>) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => to.put(&buf[..n])?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// The bsdiff stream (FORMAT.md §6.3) decoded record by record: the same output and the same
/// refusals as the `bsdiff` crate's `patch`, which holds source and target whole.
fn bsdiff(patch: &mut dyn Read, old: &Watched<'_>, out: &mut Sink<'_>) -> io::Result<()> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let old_len = old.source.size()?;
    let (mut diff, mut from_old) = (vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut oldpos: u64 = 0;
    loop {
        let mut rec = [0u8; 24];
        if !read_record(patch, &mut rec)? {
            return Ok(());
        }
        let word = |i: usize| u64::from_le_bytes(rec[i * 8..i * 8 + 8].try_into().expect("8"));
        let (mix, extra, seek) = (word(0), word(1), word(2));
        let seek = if seek & 1 << 63 == 0 {
            seek as i64
        } else {
            -((seek & !(1 << 63)) as i64)
        };
        let end = oldpos
            .checked_add(mix)
            .ok_or_else(|| bad("record overflows"))?;
        if end > old_len {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "record reads past the end of the source",
            ));
        }
        if out.room() < mix.saturating_add(extra) {
            return Err(bad("records write past the target size"));
        }
        let mut left = mix;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            patch.read_exact(&mut diff[..n])?;
            old.read_at(oldpos, &mut from_old[..n])?;
            for (d, o) in diff[..n].iter_mut().zip(&from_old[..n]) {
                *d = d.wrapping_add(*o);
            }
            out.put(&diff[..n])?;
            oldpos += n as u64;
            left -= n as u64;
        }
        let mut left = extra;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            patch.read_exact(&mut diff[..n])?;
            out.put(&diff[..n])?;
            left -= n as u64;
        }
        oldpos = i64::try_from(oldpos)
            .ok()
            .and_then(|p| p.checked_add(seek))
            .and_then(|p| u64::try_from(p).ok())
            .ok_or_else(|| bad("record seeks before the start of the source"))?;
    }
}

/// Fills `rec`; `false` at the end of the stream before its first byte, an error inside it.
fn read_record(r: &mut dyn Read, rec: &mut [u8; 24]) -> io::Result<bool> {
    let mut have = 0;
    while have < rec.len() {
        match r.read(&mut rec[have..]) {
            Ok(0) if have == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The output: buffered, hashed, held to the target size, its write errors kept aside (a full
/// disk is the device's error, not the delta's).
struct Sink<'a> {
    out: io::BufWriter<&'a mut dyn Write>,
    hasher: blake3::Hasher,
    len: u64,
    limit: u64,
    failed: Option<io::Error>,
}

impl<'a> Sink<'a> {
    fn new(out: &'a mut dyn Write, limit: u64) -> Self {
        Sink {
            out: io::BufWriter::with_capacity(CHUNK, out),
            hasher: blake3::Hasher::new(),
            len: 0,
            limit,
            failed: None,
        }
    }

    fn room(&self) -> u64 {
        self.limit - self.len
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() as u64 > self.room() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("decodes to more than the target size of {}", self.limit),
            ));
        }
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        self.out.write_all(bytes).map_err(|e| self.fail(e))
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush().map_err(|e| self.fail(e))
    }

    fn fail(&mut self, e: io::Error) -> io::Error {
        let kept = io::Error::new(e.kind(), e.to_string());
        self.failed.get_or_insert(e);
        kept
    }

    fn finish(self) -> (Hash, u64) {
        (self.hasher.finalize().into(), self.len)
    }
}

/// A file read from an offset on, by positioned reads (the file's own offset is not used),
/// its read errors kept aside in `failed`: the payload's decoder reports them as a damaged
/// payload, but a download that cannot be read is the device's error.
struct Positioned<'a> {
    file: &'a File,
    at: u64,
    failed: &'a RefCell<Option<io::Error>>,
}

impl Read for Positioned<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.at).inspect_err(|e| {
            self.failed
                .borrow_mut()
                .get_or_insert_with(|| io::Error::new(e.kind(), e.to_string()));
        })?;
        self.at += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::encode_delta;

    fn pseudo_random(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn bsdiff_delta(old: &[u8], new: &[u8]) -> (DeltaHeader, Vec<u8>) {
        let mut raw = Vec::new();
        bsdiff::diff(old, new, &mut raw).unwrap();
        let h = DeltaHeader {
            method: Method::BsdiffZstd,
            source: Hash::of(old),
            target: Hash::of(new),
            target_size: new.len() as u64,
        };
        (h, zstd::bulk::compress(&raw, 3).unwrap())
    }

    /// What the streamed decoder gives for `raw` (a bsdiff stream) against `old`, and what the
    /// `bsdiff` crate gives: the same bytes, or both a refusal.
    fn both(old: &[u8], raw: &[u8], size: u64) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
        let mut theirs = Vec::new();
        let theirs = bsdiff::patch(old, &mut &raw[..], &mut theirs)
            .ok()
            .map(|()| theirs)
            .filter(|t| t.len() as u64 <= size);
        let mut ours = Vec::new();
        let mut sink = Sink::new(&mut ours, size);
        let old = Watched::new(Source::Bytes(old));
        let ok = bsdiff(&mut &raw[..], &old, &mut sink).and_then(|()| sink.flush());
        drop(sink);
        (ok.ok().map(|()| ours), theirs)
    }

    #[test]
    fn bsdiff_streams_decode_as_the_bsdiff_crate_does_even_when_hostile() {
        let old = pseudo_random(300_000, 7);
        let mut new = old.clone();
        new.splice(1000..1000, b"inserted".iter().copied());
        new.drain(100_000..100_500);
        new[200_000] ^= 0xff;
        new.extend(pseudo_random(70_000, 9));
        let mut raw = Vec::new();
        bsdiff::diff(&old, &new, &mut raw).unwrap();
        let (ours, theirs) = both(&old, &raw, new.len() as u64);
        assert_eq!(ours.as_deref(), Some(&new[..]));
        assert_eq!(ours, theirs);
        // Every cut, and bytes flipped anywhere in the records: the same answer as the crate.
        for cut in (0..raw.len())
            .step_by(997)
            .chain([1, 23, 24, 25, raw.len() - 1])
        {
            let (ours, theirs) = both(&old, &raw[..cut], new.len() as u64);
            assert_eq!(ours, theirs, "cut at {cut}");
        }
        let mut x = 0x9e37_79b9_u64;
        for _ in 0..300 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let mut bad = raw.clone();
            let at = (x >> 33) as usize % 48.min(bad.len());
            bad[at] = (x >> 20) as u8;
            let (ours, theirs) = both(&old, &bad, u64::MAX / 2);
            assert_eq!(ours, theirs, "byte {at} set to {}", (x >> 20) as u8);
        }
        // Records that seek before the start, or read past the end of the source.
        let record = |mix: u64, extra: u64, seek: u64| {
            let mut r = Vec::new();
            for w in [mix, extra, seek] {
                r.extend_from_slice(&w.to_le_bytes());
            }
            r
        };
        for raw in [
            record(0, 0, 1 | 1 << 63),
            [record(0, 0, old.len() as u64 + 1), record(0, 0, 0)].concat(),
            [record(10, 0, 0), vec![0; 10]].concat(),
        ] {
            let (ours, theirs) = both(&old[..5], &raw, 1 << 20);
            assert_eq!((ours.is_none(), theirs.is_none()), (true, true));
        }
    }

    #[test]
    fn a_streamed_delta_is_written_verified_and_a_bad_one_says_what_is_wrong() {
        let tmp = tempfile::tempdir().unwrap();
        let old = pseudo_random(200_000, 3);
        let mut new = old.clone();
        new[5000..5100].fill(7);
        let (h, payload) = bsdiff_delta(&old, &new);
        let write = |bytes: &[u8]| {
            let p = tmp.path().join("delta");
            std::fs::write(&p, bytes).unwrap();
            File::open(&p).unwrap()
        };
        let apply = |delta: &File, out: &mut dyn Write| {
            apply_delta_file(
                delta,
                Path::new("dl"),
                Source::Bytes(&old),
                Some((h.target, h.target_size)),
                out,
                Path::new("out"),
            )
        };
        let good = write(&encode_delta(&h, &payload));
        let mut out = Vec::new();
        assert_eq!(apply(&good, &mut out).unwrap(), new.len() as u64);
        assert_eq!(out, new);

        // Cut short: a damaged payload, not a local error.
        let cut = write(&encode_delta(&h, &payload[..payload.len() / 2]));
        let e = apply(&cut, &mut Vec::new()).unwrap_err();
        assert!(e.is_unusable_delta(), "{e}");
        assert!(e.to_string().contains("bsdiff"), "{e}");

        // A header promising another target.
        let mut other = h;
        other.target_size += 1;
        let e = apply(&write(&encode_delta(&other, &payload)), &mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("expected"), "{e}");

        // A payload that decodes to other bytes: refused by hash once written.
        let (_, wrong) = bsdiff_delta(&old, &[&new[..1], &[new[1] ^ 1][..], &new[2..]].concat());
        let e = apply(&write(&encode_delta(&h, &wrong)), &mut Vec::new()).unwrap_err();
        assert!(matches!(e, Error::ContentHash { .. }), "{e}");

        // A full disk: the output's error, named as such, not a damaged delta.
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from_raw_os_error(28))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let e = apply(&good, &mut Full).unwrap_err();
        assert!(!e.is_unusable_delta(), "{e}");
        assert!(e.to_string().contains("out"), "{e}");
        assert!(e.to_string().contains("No space left"), "{e}");
    }

    #[test]
    fn a_whole_file_delta_and_a_pack_entry_stream_too_and_stop_at_the_target_size() {
        let new = pseudo_random(150_000, 11);
        let h = DeltaHeader {
            method: Method::Zstd,
            source: Hash::of(b""),
            target: Hash::of(&new),
            target_size: new.len() as u64,
        };
        let into = |payload| {
            let mut out = Vec::new();
            let n = apply_payload_into(&h, payload, Source::Bytes(b"x"), &mut out, Path::new("o"));
            (n, out)
        };
        let stored = zstd::bulk::compress(&new, 3).unwrap();
        let (n, out) = into(Payload::Stored(&stored));
        assert_eq!((n.unwrap(), &out), (new.len() as u64, &new));
        // Endless data: refused one byte past the target, never written further.
        let long = zstd::bulk::compress(&[&new[..], b"more"].concat(), 3).unwrap();
        let (e, out) = into(Payload::Stored(&long));
        let e = e.unwrap_err();
        assert!(e.is_unusable_delta(), "{e}");
        assert!(out.len() <= new.len(), "{}", out.len());
        // Unwrapped, as a pack holds it.
        let (n, out) = into(Payload::Unwrapped(&new));
        n.unwrap();
        assert_eq!(out, new);
    }
}
