//! Which ranges of the old file match which of the new one ([`Equivalences`], from the
//! records of the bsdiff stream), and the address map built on them ([`AddressMap`]): how
//! the encoder normalises a reference and the decoder predicts it.

use super::{BtfShifts, Control, Layout, Ref, RefKind};

/// Shortest aligned range that counts as a match between the files.
pub const MIN_EQUIVALENCE: u64 = 64;

/// Matching ranges of the old and new files, as a piecewise shift of file offsets.
///
/// The forward map (old to new) is the function the decoder predicts targets with; bases are
/// mapped back by [`Self::backward_approx`]. Two revisions of both exist (FORMAT.md §6.4):
///
/// - revision 1 (payloads without [`HAS_REVISION_2`]): an old offset moves by the shift of
///   the range with the largest old start at or below it, covering it or not;
/// - revision 2: by the shift of the longest range that covers it among the
///   [`NEAR_RANGES`] ranges starting nearest at or below it, or, when none covers it, of the
///   one among them that reaches furthest. bsdiff reuses old ranges and matches short runs
///   anywhere (zeros, repeated tables): a short range starting inside a long one no longer
///   takes over the rest of it (corpus, with revision 2's other parts: `libnode` 126.4 ->
///   87.8 kB, `ko-i915` 139.3 -> 125.3).
///
/// The encoder's inverse ([`Self::backward`]) tries the ranges covering a new offset, longest
/// first, for one the forward map sends back to it.
#[derive(Clone, Debug, Default)]
pub struct Equivalences {
    pub(super) revised: bool,
    /// (old start, new start), sorted by old start: revision 1's forward pieces.
    pub(super) by_old: Vec<(u64, u64)>,
    /// (new start, new end, old start) of each revision 1 forward piece, sorted by new start.
    pub(super) pieces: Vec<(u64, u64, u64)>,
    /// (old start, old end, new start) of each range, sorted by old start (revision 2).
    pub(super) spans: Vec<(u64, u64, u64)>,
    /// (new start, new end, old start) of each range, sorted by new start.
    pub(super) by_new: Vec<(u64, u64, u64)>,
}

/// How many ranges, starting nearest at or below an offset, revision 2 of the maps looks at.
pub const NEAR_RANGES: usize = 32;

/// Of `near` (ranges as (start, end, other start), nearest start last), the longest that
/// covers `at`, else the one reaching furthest: `at`'s counterpart under it.
pub(super) fn through_nearest(near: &[(u64, u64, u64)], at: u64) -> Option<u64> {
    let near = &near[near.len().saturating_sub(NEAR_RANGES)..];
    let covering = near
        .iter()
        .filter(|r| at < r.1)
        .max_by_key(|r| (r.1 - r.0, r.0));
    let &(from, _, to) = covering.or_else(|| near.iter().max_by_key(|r| (r.1, r.0)))?;
    to.checked_add(at - from)
}

impl Equivalences {
    /// From a list of (old start, new start, length); ranges shorter than
    /// [`MIN_EQUIVALENCE`] are chance matches and are ignored. `revised`: revision 2 maps.
    pub fn new(ranges: &[(u64, u64, u64)], revised: bool) -> Equivalences {
        let kept = ranges.iter().filter(|r| r.2 >= MIN_EQUIVALENCE);
        let mut by_new: Vec<(u64, u64, u64)> = kept
            .clone()
            .map(|&(o, n, len)| (n, n.saturating_add(len), o))
            .collect();
        by_new.sort_unstable();
        if revised {
            let mut spans: Vec<(u64, u64, u64)> = kept
                .map(|&(o, n, len)| (o, o.saturating_add(len), n))
                .collect();
            spans.sort_unstable();
            return Equivalences {
                revised,
                spans,
                by_new,
                ..Equivalences::default()
            };
        }
        let mut by_old: Vec<(u64, u64)> = kept.map(|r| (r.0, r.1)).collect();
        by_old.sort_unstable();
        by_old.dedup_by_key(|p| p.0);
        let mut pieces: Vec<(u64, u64, u64)> = by_old
            .iter()
            .enumerate()
            .map(|(i, &(o, n))| {
                let end = by_old.get(i + 1).map_or(u64::MAX, |next| next.0);
                (n, n.saturating_add(end - o), o)
            })
            .collect();
        pieces.sort_unstable();
        Equivalences {
            revised,
            by_old,
            pieces,
            by_new,
            ..Equivalences::default()
        }
    }

    /// The aligned ranges of a patch's control records.
    pub fn from_controls(controls: &[Control], revised: bool) -> Equivalences {
        let mut ranges = Vec::with_capacity(controls.len());
        let (mut old, mut new) = (0i128, 0u64);
        for c in controls {
            if old >= 0 && old <= i128::from(u64::MAX) {
                ranges.push((old as u64, new, c.mix));
            }
            new = new.saturating_add(c.mix).saturating_add(c.copy);
            old += i128::from(c.mix) + i128::from(c.seek);
        }
        Equivalences::new(&ranges, revised)
    }

    /// An old offset that the forward map sends to `new` exactly, when there is one.
    pub fn to_old(&self, new: u64) -> Option<u64> {
        self.backward(new).filter(|&o| self.forward(o) == Some(new))
    }

    /// The forward map: where an old offset went.
    pub(super) fn forward(&self, old: u64) -> Option<u64> {
        if self.revised {
            let i = self.spans.partition_point(|p| p.0 <= old);
            return through_nearest(&self.spans[..i], old);
        }
        let i = self.by_old.partition_point(|p| p.0 <= old);
        let (from, to) = self.by_old.get(i.checked_sub(1)?)?;
        to.checked_add(old - from)
    }

    /// An old offset that the forward map sends to `new`, when there is one among the
    /// ranges covering `new` (longest first); else the longest's, if any covers it.
    pub(super) fn backward(&self, new: u64) -> Option<u64> {
        let i = self.by_new.partition_point(|p| p.0 <= new);
        let near = &self.by_new[i.saturating_sub(NEAR_RANGES)..i];
        let mut covering: Vec<&(u64, u64, u64)> = near.iter().filter(|p| new < p.1).collect();
        covering.sort_unstable_by_key(|p| std::cmp::Reverse((p.1 - p.0, p.0)));
        let old_of = |&&(n, _, o): &&(u64, u64, u64)| o.saturating_add(new - n);
        covering
            .iter()
            .map(old_of)
            .find(|&o| self.forward(o) == Some(new))
            .or_else(|| covering.first().map(old_of))
    }

    /// Where a new offset was in the old file, approximately. Used for bases, which both
    /// sides map the same way: revision 1 takes the shift of the nearest piece at or below
    /// it, covering or not; revision 2 maps it as the forward map does, the other way.
    pub(super) fn backward_approx(&self, new: u64) -> Option<u64> {
        if self.revised {
            let i = self.by_new.partition_point(|p| p.0 <= new);
            return through_nearest(&self.by_new[..i], new);
        }
        let i = self.pieces.partition_point(|p| p.0 <= new);
        let &(n, _, o) = self.pieces.get(i.checked_sub(1)?)?;
        o.checked_add(new - n)
    }
}

/// One kind of table in both files, whose entries references name by number: (file offset,
/// length in bytes) of each, and the size of an entry.
#[derive(Clone, Copy)]
struct Tables {
    old: (u64, u64),
    new: (u64, u64),
    entry: u64,
}

/// Maps addresses between the old and new images through the equivalences.
pub struct AddressMap<'a> {
    pub old: &'a Layout,
    pub new: &'a Layout,
    pub eq: &'a Equivalences,
    /// BTF values are not addresses: they move by these shifts.
    pub btf: &'a BtfShifts,
}

impl AddressMap<'_> {
    /// Where an address of the new image was in the old one, for a base: approximate, and
    /// computed the same way by encoder and decoder (identity when unknown).
    pub fn base_to_old(&self, addr: u64) -> u64 {
        // Revision 4: the base of `.eh_frame_hdr`'s rows is that section's start, which is
        // the old one's (equivalences near a small section's start may be a neighbour's).
        if let (Some(new), Some(old)) = (self.new.unwind_index(), self.old.unwind_index()) {
            if addr == new {
                return old;
            }
        }
        self.new
            .to_offset(addr)
            .and_then(|o| self.eq.backward_approx(o))
            .and_then(|o| self.old.to_addr(o))
            .unwrap_or(addr)
    }

    /// Where an address of the old image went in the new one (identity when unknown): the
    /// decoder's prediction of a target.
    pub fn to_new(&self, addr: u64) -> u64 {
        self.old
            .to_offset(addr)
            .and_then(|o| self.eq.forward(o))
            .and_then(|o| self.new.to_addr(o))
            .unwrap_or(addr)
    }

    /// An old address that [`Self::to_new`] sends to `addr`; failing that, an approximation.
    pub fn target_to_old(&self, addr: u64) -> u64 {
        let exact = self
            .new
            .to_offset(addr)
            .and_then(|o| self.eq.backward(o))
            .and_then(|o| self.old.to_addr(o))
            .filter(|&a| self.to_new(a) == addr);
        exact.unwrap_or_else(|| self.base_to_old(addr))
    }

    /// The symbol tables of both files (the first `SHT_SYMTAB` of each), numbered by symbol.
    fn symbol_tables(&self) -> Option<Tables> {
        Some(Tables {
            old: self.old.symtab()?,
            new: self.new.symtab()?,
            entry: 24,
        })
    }

    /// The string tables that the first symbol table of each file links (`dynamic`: the
    /// first `SHT_DYNSYM`'s), numbered by byte.
    fn name_tables(&self, dynamic: bool) -> Option<Tables> {
        Some(Tables {
            old: self.old.symbol_names(dynamic)?,
            new: self.new.symbol_names(dynamic)?,
            entry: 1,
        })
    }

    /// Where entry `index` of the old table went in the new one: the entry the forward map
    /// sends its first byte to, when it sends it to the first byte of one; else `index`
    /// itself (and where there are no tables).
    fn entry_to_new(&self, tables: Option<Tables>, index: u32) -> u32 {
        let Some(Tables { old, new, entry }) = tables else {
            return index;
        };
        // A hostile section header may put a table anywhere: its entries' offsets are added
        // with a check (an entry past 2^64 names nothing).
        let to = (u64::from(index) < old.1 / entry)
            .then(|| old.0.checked_add(entry * u64::from(index)))
            .flatten()
            .and_then(|at| self.eq.forward(at))
            .and_then(|o| o.checked_sub(new.0))
            .filter(|o| o % entry == 0 && o / entry < new.1 / entry);
        to.map_or(index, |o| (o / entry) as u32)
    }

    /// An entry of the old table that [`Self::entry_to_new`] sends to new entry `index` (the
    /// encoder's normalisation); else `index` itself.
    fn entry_to_old(&self, tables: Option<Tables>, index: u32) -> u32 {
        let Some(Tables { old, new, entry }) = tables else {
            return index;
        };
        let from = (u64::from(index) < new.1 / entry)
            .then(|| new.0.checked_add(entry * u64::from(index)))
            .flatten()
            .and_then(|at| self.eq.to_old(at))
            .and_then(|o| o.checked_sub(old.0))
            .filter(|o| o % entry == 0 && o / entry < old.1 / entry)
            .map(|o| (o / entry) as u32)
            .filter(|&o| self.entry_to_new(tables, o) == index);
        from.unwrap_or(index)
    }

    /// The field value a reference of the new image takes once normalised to the old image.
    pub fn normalise(&self, r: &Ref, value: i64) -> i64 {
        let index = value as u32;
        match r.kind {
            RefKind::SymIndex => return i64::from(self.entry_to_old(self.symbol_tables(), index)),
            RefKind::SymName { dynamic } => {
                return i64::from(self.entry_to_old(self.name_tables(dynamic), index))
            }
            RefKind::BtfType | RefKind::BtfStr => return self.btf.normalise(r.kind, value),
            _ => {}
        }
        let target = r.target_of(r.base, value);
        if r.base == 0 {
            self.target_to_old(target) as i64
        } else {
            r.value_of(self.base_to_old(r.base), self.target_to_old(target))
        }
    }

    /// The decoder's prediction of a reference's new field value from its normalised one.
    pub fn predict(&self, r: &Ref, normalised: i64) -> i64 {
        if r.kind.is_btf() {
            self.btf.predict(r.kind, normalised)
        } else if r.kind == RefKind::SymIndex {
            i64::from(self.entry_to_new(self.symbol_tables(), normalised as u32))
        } else if let RefKind::SymName { dynamic } = r.kind {
            i64::from(self.entry_to_new(self.name_tables(dynamic), normalised as u32))
        } else if r.base == 0 {
            self.to_new(normalised as u64) as i64
        } else {
            let old_target = r.target_of(self.base_to_old(r.base), normalised);
            r.value_of(r.base, self.to_new(old_target))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backward_inverts_forward_where_a_preimage_exists() {
        let ranges = [
            (100, 200, 500),
            (1000, 900, 100),
            (400, 2000, 300),
            (5000, 7000, 10),
        ];
        let eq = Equivalences::new(&ranges, true);
        assert_eq!(eq.forward(120), Some(220));
        assert_eq!(eq.forward(1005), Some(905));
        assert_eq!(eq.forward(50), None);
        // Every old offset inside a range maps to a new offset that the inverse finds a
        // preimage of (not always the same offset: (400, 2000) lies inside the longer
        // (100, 200), which wins there).
        for old in (0..1200).filter(|&o| {
            ranges
                .iter()
                .any(|r| r.2 >= 64 && (r.0..r.0 + r.2).contains(&o))
        }) {
            let new = eq.forward(old).unwrap();
            let back = eq.to_old(new).unwrap_or_else(|| panic!("{old} -> {new}"));
            assert_eq!(eq.forward(back), Some(new), "{old}");
        }
        assert_eq!(eq.to_old(2010), None, "no old offset maps there");
        assert_eq!(eq.backward(150), None);
    }

    /// Revision 1 moves an old offset by the range starting nearest below it; revision 2 by
    /// the longest range covering it, so a short match starting inside a long one (bsdiff
    /// reuses old bytes) maps only its own bytes; past every range, by the one reaching
    /// furthest.
    #[test]
    fn revision_2_maps_through_the_longest_covering_range() {
        let ranges = [(0, 1000, 500), (100, 5000, 64), (600, 9000, 64)];
        let (v1, v2) = (
            Equivalences::new(&ranges, false),
            Equivalences::new(&ranges, true),
        );
        assert_eq!(v1.forward(300), Some(5200));
        assert_eq!(v2.forward(300), Some(1300));
        assert_eq!(v2.forward(120), Some(1120));
        assert_eq!(v2.forward(610), Some(9010));
        // Past every range: revision 2 extends the one reaching furthest (600..664).
        assert_eq!(v2.forward(700), Some(9100));
        assert_eq!(v2.backward(1300), Some(300));
        assert_eq!(v2.backward_approx(1300), Some(300));
        assert_eq!(v1.backward_approx(5010), Some(110));
    }
}
