//! Packs: many downloads of one release pair in one zstd frame (`docs/FORMAT.md` §7.1).
//!
//! Thousands of small deltas and objects each compressed alone pay for their own frame and
//! start with an empty window; a pack holds what they carry (the decompressed bsdiff and
//! ELF streams, the contents of objects) one after another under a single frame, so one
//! delta's bytes help compress the next. A pack starts with an index naming each entry's
//! target and kind, so the server can check it on upload and a device can match it against
//! its plan before reading any body. Bodies are read one at a time with a bound the caller
//! derives from its signed manifest; nothing in a pack is trusted until the content it gives
//! hashes right.

use std::io::{self, Read, Write};

use super::container::{Method, MAX_WINDOW_LOG};
use super::hash::Hash;
use super::wire::{put_varint, Reader};
use crate::error::Error;

pub const PACK_MAGIC: &[u8; 8] = b"DRPACK01";
/// Most entries one pack may hold.
pub const MAX_PACK_ENTRIES: u64 = 1 << 20;
/// Most bytes the index may take (an entry is at most 1 + 32 + 10 bytes).
pub const MAX_INDEX_BYTES: u32 = 48 << 20;

/// What an entry's body gives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// The content itself.
    Object,
    /// A delta of this method from the source the plan names; the body is its payload as
    /// [`super::container::unwrap_payload`] gives it.
    Delta(Method),
}

impl EntryKind {
    pub fn to_u8(self) -> u8 {
        match self {
            EntryKind::Object => 0,
            EntryKind::Delta(m) => m as u8,
        }
    }

    pub fn from_u8(b: u8) -> Option<EntryKind> {
        match b {
            0 => Some(EntryKind::Object),
            m => Method::from_u8(m).map(EntryKind::Delta),
        }
    }
}

/// One entry of a pack's index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackEntry {
    pub kind: EntryKind,
    pub target: Hash,
    /// Length of the body in the decompressed stream.
    pub len: u64,
}

/// Collects bodies and compresses them into a pack.
#[derive(Default)]
pub struct PackWriter {
    index: Vec<PackEntry>,
    bodies: Vec<u8>,
}

impl PackWriter {
    pub fn new() -> PackWriter {
        PackWriter::default()
    }

    pub fn push(&mut self, kind: EntryKind, target: Hash, body: &[u8]) {
        self.index.push(PackEntry {
            kind,
            target,
            len: body.len() as u64,
        });
        self.bodies.extend_from_slice(body);
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Bytes of bodies held so far.
    pub fn body_bytes(&self) -> u64 {
        self.bodies.len() as u64
    }

    /// The pack: one zstd frame at `level` with a window of `2^window_log` bytes, and its
    /// index.
    pub fn finish(self, level: i32, window_log: u32) -> io::Result<(Vec<u8>, Vec<PackEntry>)> {
        let mut index = Vec::with_capacity(self.index.len() * 40 + 8);
        put_varint(&mut index, self.index.len() as u64);
        for e in &self.index {
            index.push(e.kind.to_u8());
            index.extend_from_slice(&e.target.0);
            put_varint(&mut index, e.len);
        }
        let head_len = u32::try_from(index.len())
            .ok()
            .filter(|n| *n <= MAX_INDEX_BYTES)
            .ok_or_else(|| io::Error::other("pack index too large"))?;
        let total = 8 + 4 + index.len() + self.bodies.len();
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), level)?;
        enc.set_pledged_src_size(Some(total as u64))?;
        enc.include_checksum(false)?;
        enc.include_contentsize(true)?;
        enc.window_log(window_log)?;
        enc.write_all(PACK_MAGIC)?;
        enc.write_all(&head_len.to_le_bytes())?;
        enc.write_all(&index)?;
        enc.write_all(&self.bodies)?;
        Ok((enc.finish()?, self.index))
    }
}

/// Reads a pack's index, then its bodies in order.
pub struct PackReader<R: Read> {
    name: String,
    dec: zstd::stream::read::Decoder<'static, io::BufReader<R>>,
    index: Vec<PackEntry>,
    next: usize,
}

impl<R: Read> PackReader<R> {
    /// Opens the pack `name` (for messages: its path or URL) and reads its index.
    pub fn open(name: &str, r: R) -> Result<PackReader<R>, Error> {
        let bad = |reason: String| Error::PackMalformed {
            pack: name.to_string(),
            reason,
        };
        let io_bad = |e: io::Error| bad(e.to_string());
        let mut dec = zstd::stream::read::Decoder::new(r).map_err(io_bad)?;
        dec.window_log_max(MAX_WINDOW_LOG).map_err(io_bad)?;
        let mut head = [0u8; 12];
        dec.read_exact(&mut head)
            .map_err(|e| bad(format!("header: {e}")))?;
        if &head[..8] != PACK_MAGIC {
            return Err(bad("does not start with DRPACK01".into()));
        }
        let n = u32::from_le_bytes(head[8..].try_into().expect("4 bytes"));
        if n > MAX_INDEX_BYTES {
            return Err(bad(format!(
                "index of {n} bytes is over the limit of {MAX_INDEX_BYTES}"
            )));
        }
        let mut raw = Vec::new();
        (&mut dec)
            .take(u64::from(n))
            .read_to_end(&mut raw)
            .map_err(io_bad)?;
        if raw.len() != n as usize {
            return Err(bad(format!(
                "index is {} bytes, the header says {n}",
                raw.len()
            )));
        }
        let mut r = Reader::new(&raw);
        let wire = |e: super::wire::WireError| bad(format!("index: {e}"));
        let count = r
            .varint_max(MAX_PACK_ENTRIES, "entry count")
            .map_err(wire)?;
        let mut index = Vec::with_capacity(count.min(1 << 16) as usize);
        for _ in 0..count {
            let k = r.u8("entry kind").map_err(wire)?;
            let kind = EntryKind::from_u8(k)
                .ok_or_else(|| bad(format!("index: unknown entry kind {k}")))?;
            let target = Hash(r.array("entry target").map_err(wire)?);
            let len = r
                .varint_max(super::container::MAX_TARGET_SIZE * 32, "entry length")
                .map_err(wire)?;
            index.push(PackEntry { kind, target, len });
        }
        if !r.is_empty() {
            return Err(bad(format!(
                "index: {} bytes after the last entry",
                raw.len() - r.offset()
            )));
        }
        Ok(PackReader {
            name: name.to_string(),
            dec,
            index,
            next: 0,
        })
    }

    pub fn index(&self) -> &[PackEntry] {
        &self.index
    }

    fn bad(&self, reason: String) -> Error {
        Error::PackMalformed {
            pack: self.name.clone(),
            reason,
        }
    }

    /// The next entry and its body, or `None` after the last one (when the stream must end).
    /// `max` is the longest body the caller accepts for that entry: a longer one fails before
    /// any of it is read.
    pub fn next_body(
        &mut self,
        max: impl FnOnce(&PackEntry) -> u64,
    ) -> Result<Option<(PackEntry, Vec<u8>)>, Error> {
        let Some(&e) = self.index.get(self.next) else {
            return self.expect_end().map(|()| None);
        };
        self.next += 1;
        let limit = max(&e);
        if e.len > limit {
            return Err(self.bad(format!(
                "body of {} is {} bytes, over its limit of {limit}",
                e.target, e.len
            )));
        }
        let mut body = Vec::with_capacity(e.len.min(64 << 20) as usize);
        (&mut self.dec)
            .take(e.len)
            .read_to_end(&mut body)
            .map_err(|err| self.bad(format!("body of {}: {err}", e.target)))?;
        if body.len() as u64 != e.len {
            return Err(self.bad(format!(
                "body of {} ends after {} of {} bytes",
                e.target,
                body.len(),
                e.len
            )));
        }
        Ok(Some((e, body)))
    }

    /// Reads every body without keeping it and checks the stream ends after the last: what
    /// the server does with an upload (in constant memory, whatever the index claims).
    pub fn check_all(mut self) -> Result<Vec<PackEntry>, Error> {
        while let Some(&e) = self.index.get(self.next) {
            self.next += 1;
            let got = io::copy(&mut (&mut self.dec).take(e.len), &mut io::sink())
                .map_err(|err| self.bad(format!("body of {}: {err}", e.target)))?;
            if got != e.len {
                return Err(self.bad(format!(
                    "body of {} ends after {got} of {} bytes",
                    e.target, e.len
                )));
            }
        }
        self.expect_end()?;
        Ok(self.index)
    }

    /// After the last body: the stream must end.
    fn expect_end(&mut self) -> Result<(), Error> {
        let mut probe = [0u8; 1];
        match self.dec.read(&mut probe) {
            Ok(0) => Ok(()),
            Ok(_) => Err(self.bad("bytes after the last body".into())),
            Err(err) => Err(self.bad(err.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Vec<u8>, Vec<PackEntry>) {
        let mut w = PackWriter::new();
        w.push(EntryKind::Object, Hash::of(b"one"), b"one");
        w.push(
            EntryKind::Delta(Method::BsdiffZstd),
            Hash::of(b"two"),
            &[7u8; 5000],
        );
        w.push(EntryKind::Object, Hash::of(b""), b"");
        w.finish(3, 20).unwrap()
    }

    #[test]
    fn round_trips_index_and_bodies() {
        let (blob, index) = sample();
        let mut r = PackReader::open("p", &blob[..]).unwrap();
        assert_eq!(r.index(), &index[..]);
        let (e, b) = r.next_body(|_| 10_000).unwrap().unwrap();
        assert_eq!((e.kind, &b[..]), (EntryKind::Object, &b"one"[..]));
        let (e, b) = r.next_body(|_| 10_000).unwrap().unwrap();
        assert_eq!(e.kind, EntryKind::Delta(Method::BsdiffZstd));
        assert_eq!(b, vec![7u8; 5000]);
        assert_eq!(r.next_body(|_| 0).unwrap().unwrap().1, b"");
        assert!(r.next_body(|_| 0).unwrap().is_none());
        assert_eq!(
            PackReader::open("p", &blob[..])
                .unwrap()
                .check_all()
                .unwrap(),
            index
        );
    }

    #[test]
    fn refuses_long_bodies_truncation_and_garbage() {
        let (blob, _) = sample();
        let mut r = PackReader::open("p", &blob[..]).unwrap();
        r.next_body(|_| 3).unwrap();
        let e = r.next_body(|_| 4999).unwrap_err().to_string();
        assert!(e.contains("over its limit of 4999"), "{e}");
        for cut in [0, 5, blob.len() / 2, blob.len() - 1] {
            let res = PackReader::open("p", &blob[..cut]).and_then(|r| r.check_all());
            assert!(matches!(res, Err(Error::PackMalformed { .. })), "cut {cut}");
        }
        let not_zstd = PackReader::open("p", &b"DRPACK01 not zstd"[..]);
        assert!(matches!(not_zstd, Err(Error::PackMalformed { .. })));
        // A stream with bytes after the last body.
        let mut raw = PACK_MAGIC.to_vec();
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.push(0);
        raw.push(9);
        let z = zstd::encode_all(&raw[..], 3).unwrap();
        let e = PackReader::open("p", &z[..])
            .unwrap()
            .check_all()
            .unwrap_err()
            .to_string();
        assert!(e.contains("after the last body"), "{e}");
        // An index claiming more entries than it holds.
        let mut raw = PACK_MAGIC.to_vec();
        raw.extend_from_slice(&1u32.to_le_bytes());
        raw.push(5);
        let z = zstd::encode_all(&raw[..], 3).unwrap();
        assert!(PackReader::open("p", &z[..]).is_err());
    }
}
