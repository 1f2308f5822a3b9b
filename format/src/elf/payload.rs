//! The bytes of a method-4 payload (FORMAT.md §6.4): the architecture byte and its flags,
//! the bsdiff records ([`Control`], [`SplitPatch`]), the diff and extra streams, the
//! corrections; written by [`build_payload`] and [`encode_corrections`], read as they
//! arrive through [`Stream`].

use std::io::{BufRead, BufReader, Read};
use std::ops::Range;

use super::{bad, Arch, BtfShifts, ElfError};
use crate::wire::put_varint;

/// One bsdiff record: add `mix` bytes of diff to the old file at the cursor, append `copy`
/// extra bytes, then move the old cursor by `mix + seek`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    pub mix: u64,
    pub copy: u64,
    pub seek: i64,
}

/// The diff and extra bytes a list of records needs to turn `old` into `new`, one call of
/// `each(diff, extra)` per record: diff bytes are `new - old` over the record's mix range,
/// extra bytes are `new` over its copy range. Fails when a record does not fit the files.
pub(super) fn record_bytes(
    controls: &[Control],
    old: &[u8],
    new: &[u8],
    mut each: impl FnMut(&[u8], &[u8], &[u8]),
) -> Result<(), ElfError> {
    let (mut oldpos, mut newpos) = (0i128, 0usize);
    for c in controls {
        let range = |start: usize, len: u64| {
            let len = usize::try_from(len).ok()?;
            Some(start..start.checked_add(len)?)
        };
        let start = usize::try_from(oldpos).map_err(|_| bad("record reads before the old file"))?;
        let src = range(start, c.mix).and_then(|r| old.get(r));
        let mixed = range(newpos, c.mix).and_then(|r| new.get(r));
        let (Some(src), Some(mixed)) = (src, mixed) else {
            return Err(bad("record does not fit the files"));
        };
        let copied = range(newpos + mixed.len(), c.copy)
            .and_then(|r| new.get(r))
            .ok_or_else(|| bad("record does not fit the new file"))?;
        each(src, mixed, copied);
        newpos += mixed.len() + copied.len();
        oldpos += i128::from(c.mix) + i128::from(c.seek);
    }
    Ok(())
}

/// A bsdiff patch split into its three streams (records, diff bytes, extra bytes), which
/// compress far better apart: the diff bytes of a normalised image are nearly all zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitPatch {
    pub controls: Vec<Control>,
    pub diff: Vec<u8>,
    pub extra: Vec<u8>,
}

impl SplitPatch {
    /// The streams of `controls` between `old` and `new`.
    pub fn from_controls(
        controls: Vec<Control>,
        old: &[u8],
        new: &[u8],
    ) -> Result<SplitPatch, ElfError> {
        let (mut diff, mut extra) = (Vec::new(), Vec::new());
        record_bytes(&controls, old, new, |src, mixed, copied| {
            diff.extend(mixed.iter().zip(src).map(|(n, o)| n.wrapping_sub(*o)));
            extra.extend_from_slice(copied);
        })?;
        Ok(SplitPatch {
            controls,
            diff,
            extra,
        })
    }

    /// Applies the patch to `old`; every read is checked against the inputs.
    pub fn apply(&self, old: &[u8]) -> Result<Vec<u8>, ElfError> {
        apply_records(&self.controls, &self.diff, &self.extra, old)
    }
}

/// Runs bsdiff records over `old`; every read is checked against the inputs.
pub(super) fn apply_records(
    controls: &[Control],
    diff: &[u8],
    extra: &[u8],
    old: &[u8],
) -> Result<Vec<u8>, ElfError> {
    let mut out = Vec::with_capacity(diff.len() + extra.len());
    let (mut oldpos, mut d, mut e) = (0i128, 0usize, 0usize);
    for c in controls {
        let (mix, copy) = (c.mix as usize, c.copy as usize);
        let diff = diff
            .get(d..d.saturating_add(mix))
            .ok_or_else(|| bad("diff stream too short"))?;
        let start = usize::try_from(oldpos).map_err(|_| bad("record reads before the old file"))?;
        let src = old
            .get(
                start
                    ..start
                        .checked_add(mix)
                        .ok_or_else(|| bad("record overflows"))?,
            )
            .ok_or_else(|| bad("record reads past the old file"))?;
        out.extend(diff.iter().zip(src).map(|(a, b)| a.wrapping_add(*b)));
        out.extend_from_slice(
            extra
                .get(e..e.saturating_add(copy))
                .ok_or_else(|| bad("extra stream too short"))?,
        );
        d += mix;
        e += copy;
        oldpos += i128::from(c.mix) + i128::from(c.seek);
    }
    Ok(out)
}

/// Corrections by reference index, increasing: (index, difference from the prediction).
pub type Corrections = Vec<(usize, i64)>;

/// Sign-folds a difference so small ones of either sign encode in few bytes.
pub(super) fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub(super) fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Writes the corrections stream: for each nonzero correction, the gap in reference indices
/// since the previous one and the zigzag value, as varints, after a varint count.
pub fn encode_corrections(corrections: &[(usize, i64)]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, corrections.len() as u64);
    let mut prev = 0usize;
    for &(i, c) in corrections {
        put_varint(&mut out, (i - prev) as u64);
        put_varint(&mut out, zigzag(c));
        prev = i;
    }
    out
}

/// The revisions of the method-4 payload (FORMAT.md §6.4). Devices apply every one; an
/// encoder writes the newest unless a test asks for an older one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Revision {
    /// The first: no flag.
    One = 1,
    /// [`HAS_REVISION_2`]: the maps of [`super::Equivalences`] revision 2, phase E, learned
    /// targets.
    Two = 2,
    /// Revision 2 and [`HAS_REVISION_3`]: AArch64 ADRP pairs, relocatable objects'
    /// relocation symbol indices, symbol names.
    Three = 3,
    /// Revision 3 and [`HAS_REVISION_4`]: the unwind tables' addresses (phase F).
    Four = 4,
    /// Revision 4 and [`HAS_REVISION_5`]: the diff bytes sent sparse, as the positions and
    /// values of the nonzero ones ([`SPARSE_BLOCK`]).
    Five = 5,
}

/// Each revision's flag in the architecture byte, oldest first: a payload of a revision sets
/// its flag and every one before it.
const REVISION_FLAGS: [(Revision, u8); 4] = [
    (Revision::Two, HAS_REVISION_2),
    (Revision::Three, HAS_REVISION_3),
    (Revision::Four, HAS_REVISION_4),
    (Revision::Five, HAS_REVISION_5),
];

impl Revision {
    /// The flags an architecture byte of this revision sets.
    fn flags(self) -> u8 {
        REVISION_FLAGS
            .iter()
            .filter(|(from, _)| self >= *from)
            .fold(0, |flags, (_, flag)| flags | flag)
    }

    /// The revision an architecture byte names; a flag set without the one before it is
    /// refused.
    pub(super) fn of_byte(byte: u8) -> Result<Revision, ElfError> {
        let mut revision = Revision::One;
        for (r, flag) in REVISION_FLAGS {
            if byte & flag == 0 {
                continue;
            }
            if revision as u8 + 1 != r as u8 {
                return Err(bad(format!(
                    "payload's architecture byte {byte:#04x} sets revision {} without revision {}",
                    r as u8,
                    r as u8 - 1
                )));
            }
            revision = r;
        }
        Ok(revision)
    }
}

/// Set in the architecture byte when BTF shift tables follow it.
pub(super) const HAS_BTF: u8 = 0x80;
/// Set in the architecture byte of payloads of revision 2 (FORMAT.md §6.4): the maps of
/// [`Equivalences`] revision 2, and phase E for executables at a fixed address.
pub const HAS_REVISION_2: u8 = 0x40;
/// Set in the architecture byte of payloads of revision 3 (FORMAT.md §6.4): an AArch64 ADRP
/// and the instruction that adds its address's low 12 bits are one reference
/// ([`super::RefKind::A64AdrpPair`]), a relocatable object's relocations' symbol indices
/// are references ([`super::RefKind::SymIndex`]), and so are symbols' names
/// ([`super::RefKind::SymName`]). Only with [`HAS_REVISION_2`].
pub const HAS_REVISION_3: u8 = 0x20;
/// Set in the architecture byte of payloads of revision 4 (FORMAT.md §6.4): the addresses
/// that `.eh_frame` and `.eh_frame_hdr` hold are references (phase F). Only with
/// [`HAS_REVISION_3`].
pub const HAS_REVISION_4: u8 = 0x10;
/// Set in the architecture byte of payloads of revision 5 (FORMAT.md §6.4): the diff bytes are
/// sent sparse, the nonzero ones' positions and values in blocks of at most [`SPARSE_BLOCK`].
/// Only with [`HAS_REVISION_4`].
pub const HAS_REVISION_5: u8 = 0x08;
/// Every revision's flag ([`REVISION_FLAGS`]): with [`HAS_BTF`], the bits of the architecture
/// byte that are not the architecture.
pub(super) const REVISION_BITS: u8 = {
    let (mut bits, mut i) = (0, 0);
    while i < REVISION_FLAGS.len() {
        bits |= REVISION_FLAGS[i].1;
        i += 1;
    }
    bits
};

/// Most nonzero diff bytes in one block of a revision-5 payload: the block's gaps come first,
/// then its values, so a decoder holds the positions of one block at most. Two streams
/// compress better apart than interleaved (corpus `python3.11`, the diff bytes alone at zstd
/// 19: dense 251.3 kB, (gap, value) pairs 233.7, blocks of 2^15 228.5, of 2^18 224.8).
pub const SPARSE_BLOCK: usize = 1 << 16;

/// Most records a revision-5 payload may hold for an image of `max_output` bytes: one per 16
/// bytes, and 2^16 more (corpus: one per 300 bytes, `python3.11`). Its records are read a
/// column at a time, so the decoder holds them all before their lengths are checked against
/// the payload; this bounds what a hostile count makes it hold.
pub fn max_records(max_output: u64) -> u64 {
    max_output / 16 + (1 << 16)
}

/// Revision 5's records, a column at a time: every `mix`, every `copy`, then for each record
/// after the first its old start, coded against the diagonals ([`Diagonals`]).
fn put_columns(out: &mut Vec<u8>, controls: &[Control], image: u64) -> Result<(), ElfError> {
    if controls.len() as u64 > max_records(image) {
        return Err(bad("more records than a payload may hold"));
    }
    controls.iter().for_each(|c| put_varint(out, c.mix));
    controls.iter().for_each(|c| put_varint(out, c.copy));
    let mut diagonals = Diagonals::default();
    let (mut old, mut new) = (0i128, 0i128);
    for pair in controls.windows(2) {
        old += i128::from(pair[0].mix) + i128::from(pair[0].seek);
        new += i128::from(pair[0].mix) + i128::from(pair[0].copy);
        let v = diagonals
            .code(old - new)
            .ok_or_else(|| bad("a record's old start is too far from its new start"))?;
        put_varint(out, v);
    }
    Ok(())
}

/// The last four diagonals (a record's old start minus its new start) of a revision-5
/// payload's records, most recent first; four zeros before the first. Code moved as a block
/// keeps its diagonal, and the records around an insertion return to a recent one: each old
/// start is coded as the index of the nearest of them (ties: the lower index) and the
/// difference from it, `zigzag(difference) * 4 + index`, after which its diagonal moves to the
/// front (an equal one leaves its place; otherwise the last is dropped). Corpus, records
/// alone at zstd 19 (interleaved with seeks, then columns with seeks, then this):
/// `python3.11` 93.1, 88.2, 83.8 kB; `postgres` 26.1, 24.9, 23.6.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Diagonals([i128; 4]);

impl Diagonals {
    fn remember(&mut self, d: i128) {
        let at = self.0.iter().position(|&x| x == d).unwrap_or(3);
        self.0.copy_within(0..at, 1);
        self.0[0] = d;
    }

    /// The value that codes diagonal `d` (`None` when the difference does not fit).
    fn code(&mut self, d: i128) -> Option<u64> {
        let mut best = (0, d - self.0[0]);
        for (j, &x) in self.0.iter().enumerate().skip(1) {
            if (d - x).unsigned_abs() < best.1.unsigned_abs() {
                best = (j, d - x);
            }
        }
        let r = i64::try_from(best.1)
            .ok()
            .filter(|r| r.unsigned_abs() < 1 << 61)?;
        self.remember(d);
        Some(zigzag(r) << 2 | best.0 as u64)
    }

    /// The diagonal value `v` codes.
    pub(super) fn decode(&mut self, v: u64) -> i128 {
        let d = self.0[(v & 3) as usize] + i128::from(unzigzag(v >> 2));
        self.remember(d);
        d
    }
}

/// Writes diff bytes sparse (revision 5): their length, the count of nonzero ones, then in
/// blocks of at most [`SPARSE_BLOCK`] each one's gap (its position minus the previous one's
/// position plus one; the first counts from 0) and then each one's value.
fn put_sparse(out: &mut Vec<u8>, diff: &[u8]) {
    put_varint(out, diff.len() as u64);
    let nonzero = diff.iter().filter(|&&b| b != 0).count();
    put_varint(out, nonzero as u64);
    let mut block = Vec::with_capacity(nonzero.min(SPARSE_BLOCK));
    let mut next = 0usize;
    let mut positions = diff
        .iter()
        .enumerate()
        .filter(|(_, &b)| b != 0)
        .map(|(i, _)| i);
    loop {
        block.clear();
        block.extend(positions.by_ref().take(SPARSE_BLOCK));
        if block.is_empty() {
            return;
        }
        for &at in &block {
            put_varint(out, (at - next) as u64);
            next = at + 1;
        }
        out.extend(block.iter().map(|&at| diff[at]));
    }
}

/// Builds a method-4 payload (before compression) up to its corrections: the architecture
/// byte (with the flags of `revision`: [`HAS_REVISION_2`] from revision 2 on,
/// [`HAS_REVISION_3`] from 3, [`HAS_REVISION_4`] from 4; and [`HAS_BTF`] and the tables when
/// there are any), then the records, diff bytes (sparse from revision 5) and extra bytes that
/// turn `old` into `normalised`. The corrections ([`encode_corrections`]) are appended by the caller.
pub fn build_payload(
    arch: Arch,
    btf: &BtfShifts,
    revision: Revision,
    controls: &[Control],
    old: &[u8],
    normalised: &[u8],
) -> Result<Vec<u8>, ElfError> {
    let mut out = vec![arch as u8 | revision.flags()];
    if !btf.is_empty() {
        out[0] |= HAS_BTF;
        btf.write(&mut out);
    }
    put_varint(&mut out, controls.len() as u64);
    let total = |part: fn(&Control) -> u64| controls.iter().map(part).fold(0, u64::saturating_add);
    let (mix, copy) = (total(|c| c.mix), total(|c| c.copy));
    if revision >= Revision::Five {
        put_columns(&mut out, controls, mix.saturating_add(copy))?;
    } else {
        for c in controls {
            put_varint(&mut out, c.mix);
            put_varint(&mut out, c.copy);
            put_varint(&mut out, zigzag(c.seek));
        }
    }
    let mut diff = Vec::with_capacity(usize::try_from(mix).unwrap_or(0));
    record_bytes(controls, old, normalised, |src, mixed, _| {
        diff.extend(mixed.iter().zip(src).map(|(n, o)| n.wrapping_sub(*o)));
    })?;
    if revision >= Revision::Five {
        put_sparse(&mut out, &diff);
        drop(diff);
        out.reserve(usize::try_from(copy).unwrap_or(0) + 10);
    } else {
        out.reserve(diff.len() + usize::try_from(copy).unwrap_or(0) + 20);
        put_varint(&mut out, mix);
        out.extend_from_slice(&diff);
        drop(diff);
    }
    put_varint(&mut out, copy);
    record_bytes(controls, old, normalised, |_, _, copied| {
        out.extend_from_slice(copied)
    })?;
    Ok(out)
}

/// Largest zstd window (log2) of a method-4 payload's first and last frames: the decoder reads
/// them as they decompress, holding this much of them at most (FORMAT.md §6.2).
pub const WINDOW_LOG_MAX: u32 = 20;

/// A decompressed payload read as it arrives; every read is checked and an error names the
/// field and its offset.
pub(super) struct Stream<R: Read> {
    pub(super) inner: BufReader<R>,
    pub(super) offset: u64,
}

impl<'b> Stream<&'b [u8]> {
    /// A payload already in memory (a small read buffer suffices).
    pub(super) fn over(bytes: &'b [u8]) -> Self {
        Stream {
            inner: BufReader::with_capacity(1 << 10, bytes),
            offset: 0,
        }
    }
}

impl<R: Read> Stream<R> {
    pub(super) fn new(inner: R) -> Self {
        Stream {
            inner: BufReader::with_capacity(1 << 16, inner),
            offset: 0,
        }
    }

    pub(super) fn fail(&self, what: &str, why: impl std::fmt::Display) -> ElfError {
        bad(format!("payload: {what} at byte {}: {why}", self.offset))
    }

    /// Fills `buf` from the payload.
    pub(super) fn read(&mut self, buf: &mut [u8], what: &str) -> Result<(), ElfError> {
        if let Err(e) = self.inner.read_exact(buf) {
            return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.fail(what, "truncated")
            } else {
                self.fail(what, e)
            });
        }
        self.offset += buf.len() as u64;
        Ok(())
    }

    pub(super) fn u8(&mut self, what: &str) -> Result<u8, ElfError> {
        let mut b = [0u8];
        self.read(&mut b, what)?;
        Ok(b[0])
    }

    /// An unsigned LEB128 varint of at most 64 bits (as `wire::Reader::varint`).
    pub(super) fn varint(&mut self, what: &str) -> Result<u64, ElfError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            let low = u64::from(b & 0x7f);
            if shift == 63 && low > 1 {
                return Err(self.fail(what, "varint overflows 64 bits"));
            }
            v |= low << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.fail(what, "varint longer than 10 bytes"))
    }

    /// The revision the architecture byte, read first, names.
    pub(super) fn revision(&mut self) -> Result<Revision, ElfError> {
        Revision::of_byte(self.u8("architecture")?)
    }

    pub(super) fn at_end(&mut self) -> Result<bool, ElfError> {
        match self.inner.fill_buf() {
            Ok(b) => Ok(b.is_empty()),
            Err(e) => Err(self.fail("end", e)),
        }
    }
}

/// Revision 5's old starts, one per record after the first ([`Diagonals`]), turned into the
/// records' seeks (the last record's is 0: nothing reads past it).
pub(super) fn read_old_starts<R: Read>(
    s: &mut Stream<R>,
    controls: &mut [Control],
) -> Result<(), ElfError> {
    let mut diagonals = Diagonals::default();
    let (mut old, mut new) = (0i128, 0i128);
    for i in 1..controls.len() {
        let prev = controls[i - 1];
        new += i128::from(prev.mix) + i128::from(prev.copy);
        let start = new + diagonals.decode(s.varint("old start")?);
        controls[i - 1].seek = i64::try_from(start - old - i128::from(prev.mix))
            .map_err(|_| s.fail("old start", "seek out of range"))?;
        old = start;
    }
    Ok(())
}

/// Revision 5's diff bytes: the count of nonzero ones, then blocks of at most
/// [`SPARSE_BLOCK`] gaps followed by as many values; each value is added to the image byte at
/// its position among the records' mixed ranges (which hold the old file's bytes). Holds one
/// block's image offsets at most.
pub(super) fn add_sparse<R: Read>(
    s: &mut Stream<R>,
    controls: &[Control],
    total_mix: u64,
    image: &mut [u8],
) -> Result<(), ElfError> {
    let mut left = s.varint("nonzero diff byte count")?;
    if left > total_mix {
        return Err(s.fail(
            "nonzero diff byte count",
            format!("{left} is more than the {} diff bytes", total_mix),
        ));
    }
    let mut block = Vec::with_capacity(left.min(SPARSE_BLOCK as u64) as usize);
    // The next position a gap counts from; the record it falls in, where that record's mixed
    // range starts among the diff bytes and in the image.
    let (mut next, mut record, mut mix_start, mut image_start) = (0u64, 0usize, 0u64, 0usize);
    while left > 0 {
        block.clear();
        for _ in 0..left.min(SPARSE_BLOCK as u64) {
            let gap = s.varint("diff byte gap")?;
            let at = next
                .checked_add(gap)
                .filter(|&at| at < total_mix)
                .ok_or_else(|| s.fail("diff byte gap", "position past the diff bytes"))?;
            next = at + 1;
            // A record holds `at`: the mixed lengths add up to `total_mix`.
            while at >= mix_start + controls[record].mix {
                let c = controls[record];
                mix_start += c.mix;
                image_start += (c.mix + c.copy) as usize;
                record += 1;
            }
            block.push(image_start + (at - mix_start) as usize);
        }
        for &i in &block {
            image[i] = image[i].wrapping_add(s.u8("diff byte")?);
        }
        left -= block.len() as u64;
    }
    Ok(())
}

/// The corrections stream, read as the restore asks for each reference's correction.
pub(super) struct PendingCorrections {
    pub(super) left: u64,
    pub(super) next: Option<(usize, i64)>,
}

impl PendingCorrections {
    pub(super) fn start<R: Read>(s: &mut Stream<R>) -> Result<Self, ElfError> {
        let mut p = PendingCorrections {
            left: s.varint("correction count")?,
            next: None,
        };
        p.advance(s, None)?;
        Ok(p)
    }

    pub(super) fn advance<R: Read>(
        &mut self,
        s: &mut Stream<R>,
        prev: Option<usize>,
    ) -> Result<(), ElfError> {
        if self.left == 0 {
            self.next = None;
            return Ok(());
        }
        self.left -= 1;
        let gap = s.varint("correction gap")?;
        if prev.is_some() && gap == 0 {
            return Err(s.fail("correction gap", "corrections are not in increasing order"));
        }
        let at = usize::try_from(gap)
            .ok()
            .and_then(|g| prev.unwrap_or(0).checked_add(g))
            .ok_or_else(|| s.fail("correction gap", "correction index overflows"))?;
        self.next = Some((at, unzigzag(s.varint("correction")?)));
        Ok(())
    }

    /// The correction of reference `index` (0 when it has none).
    pub(super) fn take<R: Read>(
        &mut self,
        s: &mut Stream<R>,
        index: usize,
    ) -> Result<i64, ElfError> {
        match self.next {
            Some((at, c)) if at == index => {
                self.advance(s, Some(at))?;
                Ok(c)
            }
            _ => Ok(0),
        }
    }
}

/// The range of the diff bytes in a method-4 payload of revision 4 or earlier (before
/// compression): the encoder cuts the payload's zstd frames there (FORMAT.md §6.2). A payload
/// of revision 5 is one frame (its diff bytes are sparse): refused.
pub fn diff_range(raw: &[u8]) -> Result<Range<usize>, ElfError> {
    let mut s = Stream::new(raw);
    let byte = s.u8("architecture")?;
    if Revision::of_byte(byte)? >= Revision::Five {
        return Err(bad("a payload of revision 5 is not cut into frames"));
    }
    if byte & HAS_BTF != 0 {
        BtfShifts::read(&mut s)?;
    }
    let mut mix = 0u64;
    for _ in 0..s.varint("record count")? {
        mix = mix.saturating_add(s.varint("mix length")?);
        s.varint("copy length")?;
        s.varint("seek")?;
    }
    if s.varint("diff length")? != mix {
        return Err(bad("diff stream does not match the records"));
    }
    let start = usize::try_from(s.offset).map_err(|_| bad("payload too large"))?;
    start
        .checked_add(usize::try_from(mix).map_err(|_| bad("payload too large"))?)
        .filter(|&end| end <= raw.len())
        .map(|end| start..end)
        .ok_or_else(|| bad("diff stream runs past the payload"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::*;
    use crate::wire::put_varint;

    #[test]
    fn zigzag_round_trips() {
        for v in [0i64, 1, -1, 4096, -4097, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    /// Every correction a stream holds, read the way the decoder reads them.
    fn read_corrections(bytes: &[u8]) -> Result<Vec<(usize, i64)>, ElfError> {
        let mut s = Stream::new(bytes);
        let mut p = PendingCorrections::start(&mut s)?;
        let mut out = Vec::new();
        while let Some((at, c)) = p.next {
            assert_eq!(p.take(&mut s, at)?, c);
            out.push((at, c));
        }
        Ok(out)
    }

    /// Each diagonal is coded against the nearest of the last four (ties: the lower index)
    /// and decoded back; one equal to the most recent codes as 0.
    #[test]
    fn diagonals_round_trip_against_the_recent_ones() {
        let seq = [
            0i128,
            100,
            100,
            -5,
            100,
            7,
            1 << 40,
            -3,
            0,
            96,
            -(1 << 50),
            104,
        ];
        let (mut enc, mut dec) = (Diagonals::default(), Diagonals::default());
        let codes: Vec<u64> = seq.iter().map(|&d| enc.code(d).unwrap()).collect();
        for (&d, &v) in seq.iter().zip(&codes) {
            assert_eq!(dec.decode(v), d);
        }
        assert_eq!(enc, dec);
        // 100 after [100, 0, ...]: index 0, difference 0. -5 after [100, 0, 0, 0]: index 1
        // (0 is nearer), -5. 96 after [0, -3, 1 << 40, 7]: 7 is nearest, index 3.
        assert_eq!(codes[2], 0);
        assert_eq!(codes[3], zigzag(-5) << 2 | 1);
        assert_eq!(codes[9], zigzag(89) << 2 | 3);
        // Too far to code.
        assert_eq!(Diagonals::default().code(1 << 62), None);
    }

    #[test]
    fn corrections_round_trip_and_reject_disorder() {
        let c = vec![(3, 5), (10, -2), (11, 1 << 40)];
        let bytes = encode_corrections(&c);
        assert_eq!(read_corrections(&bytes).unwrap(), c);
        let mut bad = Vec::new();
        put_varint(&mut bad, 2);
        put_varint(&mut bad, 1);
        put_varint(&mut bad, 0);
        put_varint(&mut bad, 0);
        put_varint(&mut bad, 0);
        assert!(read_corrections(&bad).is_err());
        for n in 0..bytes.len() {
            assert!(read_corrections(&bytes[..n]).is_err());
        }
    }
}
