//! BTF references: the type ids and string offsets in a `.BTF` section (phase D).
//!
//! A kernel module carries *split* BTF (BPF Type Format): its type records name the kernel's
//! own types by id and the kernel's strings by offset, and number their own types and strings
//! after the kernel's. Every kernel build renumbers both, so between two kernel versions
//! nearly every record of every module's `.BTF` changes although the types themselves did
//! not: the new value is the old one plus a shift that is constant over long ranges of old
//! values (all of the module's own types move by the number of types the kernel gained, a
//! kernel type by the number inserted before it). A byte diff pays for each of those fields,
//! in thousands of modules per update.
//!
//! So the type-id and string-offset fields of every record are references too, and their
//! prediction is not an address mapping but a table of [`BtfShifts`] the payload carries: for
//! each kind of value, the pieces (first old value, shift) of a piecewise-constant function
//! of the old value. The encoder fits it to the pairs of values its alignment matches; a
//! value below a table's first piece keeps its value.

use std::io::Read;
use std::ops::Range;

use super::{ElfError, Layout, Ref, RefKind, Stream, Visit};
use crate::wire::put_varint;

/// `0xeB9F`, the first two bytes of a BTF header (little-endian).
const MAGIC: u16 = 0xeb9f;
/// Bytes of a BTF header this method reads (`hdr_len` may be larger).
const HEADER_LEN: usize = 24;
/// Bytes of a type record's common part: `name_off`, `info`, `size`/`type`.
const RECORD_LEN: usize = 12;

/// The type records of a BTF section, as a range of the section's bytes, when its header is
/// one this method reads: magic, version 1, and a type area that lies inside the section.
fn type_area(sec: &[u8]) -> Option<Range<usize>> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = sec.get(at..at + 4)?;
        usize::try_from(u32::from_le_bytes(b.try_into().ok()?)).ok()
    };
    if sec.len() < HEADER_LEN || u16::from_le_bytes([sec[0], sec[1]]) != MAGIC || sec[2] != 1 {
        return None;
    }
    let hdr_len = u32_at(4)?;
    if hdr_len < HEADER_LEN {
        return None;
    }
    let start = hdr_len.checked_add(u32_at(8)?)?;
    let end = start.checked_add(u32_at(12)?)?;
    (end <= sec.len()).then_some(start..end)
}

/// A field of a type record: its offset in the record and what it holds.
type Field = (usize, RefKind);

const NAME: Field = (0, RefKind::BtfStr);
const TYPE: Field = (8, RefKind::BtfType);

/// Where the reference fields of a record of one BTF kind lie: in its common part, in the
/// fixed part after it (`tail` bytes), and in each of its `vlen` entries (`entry` bytes each,
/// after the tail).
struct Shape {
    common: &'static [Field],
    tail: usize,
    tail_fields: &'static [Field],
    entry: usize,
    entry_fields: &'static [Field],
}

/// The [`Shape`] of a record of BTF kind `kind`; `None` for a kind this method does not know
/// (the walk of that section stops there).
fn shape(kind: u32) -> Option<Shape> {
    const NAME_ONLY: &[Field] = &[NAME];
    const NAME_TYPE: &[Field] = &[NAME, TYPE];
    const STR0: &[Field] = &[(0, RefKind::BtfStr)];
    const STR0_TYPE4: &[Field] = &[(0, RefKind::BtfStr), (4, RefKind::BtfType)];
    let plain = |common, tail| Shape {
        common,
        tail,
        tail_fields: &[],
        entry: 0,
        entry_fields: &[],
    };
    let entries = |common, entry, entry_fields| Shape {
        common,
        tail: 0,
        tail_fields: &[],
        entry,
        entry_fields,
    };
    Some(match kind {
        // INT: a 4-byte encoding after the common part.
        1 => plain(NAME_ONLY, 4),
        // PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, TYPE_TAG: the common part names a
        // type.
        2 | 8..=12 | 18 => plain(NAME_TYPE, 0),
        // ARRAY: element type, index type, element count.
        3 => Shape {
            common: NAME_ONLY,
            tail: 12,
            tail_fields: &[(0, RefKind::BtfType), (4, RefKind::BtfType)],
            entry: 0,
            entry_fields: &[],
        },
        // STRUCT, UNION: members (name, type, offset).
        4 | 5 => entries(NAME_ONLY, 12, STR0_TYPE4),
        // ENUM: (name, value).
        6 => entries(NAME_ONLY, 8, STR0),
        // FWD, FLOAT.
        7 | 16 => plain(NAME_ONLY, 0),
        // FUNC_PROTO: return type, then parameters (name, type).
        13 => entries(NAME_TYPE, 8, STR0_TYPE4),
        // VAR: type, then linkage; DECL_TAG: type, then component index.
        14 | 17 => plain(NAME_TYPE, 4),
        // DATASEC: variables (type, offset, size).
        15 => entries(NAME_ONLY, 12, &[(0, RefKind::BtfType)]),
        // ENUM64: (name, low half, high half).
        19 => entries(NAME_ONLY, 12, STR0),
        _ => return None,
    })
}

fn read_u32(image: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(image.get(at..at + 4)?.try_into().ok()?))
}

/// Phase D: the type-id and string-offset fields of every type record of every `.BTF`
/// section, record by record in file order. A record's kind and entry count (its `info`) are
/// not references, so where each record and field lies never depends on restored values.
pub(super) fn phase_d<I: AsRef<[u8]>>(
    layout: &Layout,
    image: &mut I,
    visit: &mut Visit<'_, I>,
) -> Result<(), ElfError> {
    for s in layout.sections.iter().filter(|s| s.btf) {
        let Some(sec) = s.file_range(image.as_ref().len()) else {
            continue;
        };
        let Some(area) = type_area(&image.as_ref()[sec.clone()]) else {
            continue;
        };
        let end = sec.start + area.end;
        let mut at = sec.start + area.start;
        while at + RECORD_LEN <= end {
            let Some(info) = read_u32(image.as_ref(), at + 4) else {
                break;
            };
            let Some(shape) = shape((info >> 24) & 0x1f) else {
                break;
            };
            let vlen = (info & 0xffff) as usize;
            let tail = at + RECORD_LEN;
            let entries = tail + shape.tail;
            let next = entries + vlen * shape.entry;
            if next > end {
                break;
            }
            let fields = (shape.common.iter().map(|&(off, kind)| (at + off, kind)))
                .chain(
                    shape
                        .tail_fields
                        .iter()
                        .map(|&(off, kind)| (tail + off, kind)),
                )
                .chain((0..vlen).flat_map(|e| {
                    let entry = entries + e * shape.entry;
                    shape
                        .entry_fields
                        .iter()
                        .map(move |&(off, kind)| (entry + off, kind))
                }));
            for (loc, kind) in fields {
                visit(&btf_ref(loc, kind), image)?;
            }
            at = next;
        }
    }
    Ok(())
}

fn btf_ref(loc: usize, kind: RefKind) -> Ref {
    Ref { loc, kind, base: 0 }
}

/// How the type ids and string offsets of a `.BTF` section moved from the old file to the
/// new: per kind of value, pieces (first old value, shift modulo 2^32), by increasing first
/// value. An old value `v` becomes `v + shift` of the last piece starting at or below it, or
/// stays `v` below the first piece.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BtfShifts {
    pub types: Vec<(u32, u32)>,
    pub strings: Vec<(u32, u32)>,
}

/// Most pieces a table may hold: more than a `.BTF` section's 16-bit entry counts could ever
/// use, far fewer than would let a hostile payload make the decoder hold much memory.
const MAX_PIECES: u64 = 1 << 20;

impl BtfShifts {
    pub fn is_empty(&self) -> bool {
        self.types.is_empty() && self.strings.is_empty()
    }

    fn table(&self, kind: RefKind) -> &[(u32, u32)] {
        if kind == RefKind::BtfType {
            &self.types
        } else {
            &self.strings
        }
    }

    /// The shift of an old value in a table.
    fn shift(table: &[(u32, u32)], old: u32) -> u32 {
        let i = table.partition_point(|p| p.0 <= old);
        i.checked_sub(1).map_or(0, |i| table[i].1)
    }

    /// The decoder's prediction of a new value from the old (normalised) one.
    pub fn predict(&self, kind: RefKind, old: i64) -> i64 {
        let old = old as u32;
        i64::from(old.wrapping_add(Self::shift(self.table(kind), old)))
    }

    /// An old value that [`Self::predict`] sends to `new` (the first piece, in order, that
    /// has one), or `new` itself when none does: the encoder's normalisation.
    pub fn normalise(&self, kind: RefKind, new: i64) -> i64 {
        let new = new as u32;
        let table = self.table(kind);
        let first = table
            .first()
            .map_or(u64::from(u32::MAX) + 1, |p| u64::from(p.0));
        if u64::from(new) < first {
            return i64::from(new);
        }
        for (i, &(start, shift)) in table.iter().enumerate() {
            let end = table
                .get(i + 1)
                .map_or(u64::from(u32::MAX) + 1, |p| u64::from(p.0));
            let old = new.wrapping_sub(shift);
            if old >= start && u64::from(old) < end {
                return i64::from(old);
            }
        }
        i64::from(new)
    }

    /// Appends both tables: per table a varint count, then per piece the varint gap from the
    /// previous piece's first value (the first from 0; later gaps at least 1) and the zigzag
    /// change of the shift (as a signed 32-bit difference) from the previous piece's (the
    /// first from 0).
    pub fn write(&self, out: &mut Vec<u8>) {
        for table in [&self.types, &self.strings] {
            put_varint(out, table.len() as u64);
            let (mut at, mut shift) = (0u32, 0u32);
            for &(start, s) in table {
                put_varint(out, u64::from(start - at));
                put_varint(out, super::zigzag(i64::from(s.wrapping_sub(shift) as i32)));
                (at, shift) = (start, s);
            }
        }
    }

    /// Reads what [`Self::write`] wrote; the tables grow only as their bytes arrive.
    pub(super) fn read<R: Read>(s: &mut Stream<R>) -> Result<BtfShifts, ElfError> {
        let mut tables = [Vec::new(), Vec::new()];
        for table in &mut tables {
            let n = s.varint("BTF piece count")?;
            if n > MAX_PIECES {
                return Err(s.fail("BTF piece count", format!("{n} pieces")));
            }
            let (mut at, mut shift) = (0u32, 0u32);
            for i in 0..n {
                let gap = s.varint("BTF piece start")?;
                if i > 0 && gap == 0 {
                    return Err(s.fail("BTF piece start", "pieces are not in increasing order"));
                }
                // A gap up to 2^64 - 1 must not overflow on the way to the check.
                at = u64::from(at)
                    .checked_add(gap)
                    .and_then(|v| u32::try_from(v).ok())
                    .ok_or_else(|| s.fail("BTF piece start", "past 2^32"))?;
                let change = i32::try_from(super::unzigzag(s.varint("BTF shift")?))
                    .map_err(|_| s.fail("BTF shift", "wider than 32 bits"))?;
                shift = shift.wrapping_add(change as u32);
                table.push((at, shift));
            }
        }
        let [types, strings] = tables;
        Ok(BtfShifts { types, strings })
    }

    /// Fits one table to pairs (old value, new value) that an alignment matched: for each old
    /// value the shift most of its pairs agree on; a new piece wherever that shift changes,
    /// except for a value seen once whose shift the next value goes back to (one correction
    /// costs less than the two pieces around it).
    pub fn fit(mut pairs: Vec<(u32, u32)>) -> Vec<(u32, u32)> {
        pairs.sort_unstable();
        // (old value, its most common shift (the smallest of equals), how many pairs have it).
        let mut votes: Vec<(u32, u32, usize)> = Vec::new();
        for same in pairs.chunk_by(|a, b| a == b) {
            let (old, new) = same[0];
            let (shift, n) = (new.wrapping_sub(old), same.len());
            match votes.last_mut() {
                Some(v) if v.0 == old => {
                    if n > v.2 || (n == v.2 && shift < v.1) {
                        (v.1, v.2) = (shift, n);
                    }
                }
                _ => votes.push((old, shift, n)),
            }
        }
        let mut out = Vec::new();
        let mut current = 0u32;
        for (i, &(old, shift, count)) in votes.iter().enumerate() {
            if shift == current {
                continue;
            }
            let returns = votes.get(i + 1).is_some_and(|next| next.1 == current);
            if count == 1 && returns {
                continue;
            }
            out.push((old, shift));
            current = shift;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shifts_predict_normalise_and_round_trip() {
        let t = BtfShifts {
            types: vec![(10, 3), (100, 7), (200, u32::MAX)],
            strings: vec![(0, 1 << 31)],
        };
        let k = RefKind::BtfType;
        assert_eq!(t.predict(k, 5), 5);
        assert_eq!(t.predict(k, 10), 13);
        assert_eq!(t.predict(k, 150), 157);
        assert_eq!(t.predict(k, 250), 249);
        for v in [0u32, 9, 10, 99, 100, 199, 200, 5000, u32::MAX] {
            for kind in [RefKind::BtfType, RefKind::BtfStr] {
                let new = t.predict(kind, i64::from(v));
                assert_eq!(t.predict(kind, t.normalise(kind, new)), new, "{v}");
            }
        }
        let mut bytes = Vec::new();
        t.write(&mut bytes);
        let mut s = Stream::new(bytes.as_slice());
        assert_eq!(BtfShifts::read(&mut s).unwrap(), t);
        assert!(s.at_end().unwrap());
        for n in 0..bytes.len() {
            assert!(BtfShifts::read(&mut Stream::new(&bytes[..n])).is_err());
        }
    }

    #[test]
    fn hostile_tables_are_refused() {
        let table = |entries: &[u64]| {
            let mut b = Vec::new();
            for &e in entries {
                put_varint(&mut b, e);
            }
            BtfShifts::read(&mut Stream::new(b.as_slice()))
        };
        assert!(table(&[2, 5, 0, 0, 0, 0]).is_err(), "repeated start");
        assert!(table(&[1, 1 << 32, 0, 0]).is_err(), "start past 2^32");
        // A second start whose gap overflows 64 bits on the way (found by fuzz/run.sh).
        assert!(table(&[2, 5, 0, u64::MAX, 0, 0]).is_err(), "gap past 2^64");
        assert!(
            table(&[1, 0, 1 << 33, 0]).is_err(),
            "shift wider than 32 bits"
        );
        assert!(table(&[MAX_PIECES + 1]).is_err(), "too many pieces");
        assert!(table(&[0, 0]).is_ok());
    }

    #[test]
    fn fit_follows_runs_and_skips_lone_outliers() {
        // Ids 1..50 unchanged, 50..80 moved by 2, one stray pair at 60, then 100.. by 5.
        let mut pairs: Vec<(u32, u32)> = (1..50).map(|v| (v, v)).collect();
        pairs.extend((50..80).map(|v| (v, if v == 60 { v + 9 } else { v + 2 })));
        pairs.extend((100..140).flat_map(|v| [(v, v + 5), (v, v + 5), (v, v + 1)]));
        let t = BtfShifts::fit(pairs);
        assert_eq!(t, vec![(50, 2), (100, 5)]);
    }
}
