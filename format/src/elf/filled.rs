//! Sections that relocations fill (the encoder's side only): in a kernel module,
//! `.orc_unwind_ip`, `__mcount_loc`, `.return_sites` and their kind are zeros in the file, one
//! slot per relocation. Their bytes say nothing about which old slot is which new one, so a
//! diff aligns them anywhere, every `r_offset` into them normalises to the wrong slot, and
//! the relocation tables, which would otherwise match the old ones entry for entry, differ
//! in every entry after the first inserted slot (the corpus's `ko-btrfs`: 62,077 of the
//! 132,134 bytes its diff did not cancel were such addends and offsets).
//!
//! The relocations say which slot is which: an old and a new entry of the same type whose
//! targets match through the equivalences fill the same slot. [`filled_pieces`] fits the
//! alignment of each such section from those pairs, as ranges the encoder then makes the
//! records of its patch follow; the decoder derives its map from the records, so it needs
//! nothing new.

use goblin::elf::section_header::{SHT_PROGBITS, SHT_RELA};
use std::collections::HashMap;

use super::discover::{entries, section_symbol_base};
use super::refs::read_u64;
use super::{Equivalences, Layout, MIN_EQUIVALENCE};

/// (new file offset, old file offset, length) ranges that together cover, in order, each
/// section of `new` filled by relocations whose counterpart in `old` is one too: the
/// alignment their relocations show. Empty unless both files are relocatable objects with
/// the same sections.
pub fn filled_pieces(
    lo: &Layout,
    old: &[u8],
    ln: &Layout,
    new: &[u8],
    eq: &Equivalences,
) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    if !lo.relocatable || !ln.relocatable || lo.sections.len() != ln.sections.len() {
        return out;
    }
    for (i, r) in ln.sections.iter().enumerate() {
        let ro = &lo.sections[i];
        if r.kind != SHT_RELA || ro.kind != SHT_RELA || r.info != ro.info {
            continue;
        }
        let (Some(s), Some(so)) = (
            ln.sections.get(r.info as usize),
            lo.sections.get(ro.info as usize),
        ) else {
            continue;
        };
        if s.kind != SHT_PROGBITS
            || so.kind != SHT_PROGBITS
            || s.size < 2 * MIN_EQUIVALENCE
            || !zeros(new, s.file_range(new.len()))
            || !zeros(old, so.file_range(old.len()))
        {
            continue;
        }
        // The old slots by what fills them: (type, target offset) -> r_offset.
        let mut by_target: HashMap<(u32, u64), Option<u64>> = HashMap::new();
        for (kind, target, offset) in relocations(lo, old, ro) {
            by_target
                .entry((kind, target))
                .and_modify(|o| *o = None)
                .or_insert(Some(offset));
        }
        let mut pairs: Vec<(u64, u64)> = relocations(ln, new, r)
            .filter_map(|(kind, target, offset)| {
                let old_target = eq.backward(target)?;
                let old_offset = (*by_target.get(&(kind, old_target))?)?;
                (offset < s.size && old_offset < so.size).then_some((offset, old_offset))
            })
            .collect();
        pairs.sort_unstable();
        out.extend(
            pieces(&pairs, s.size)
                .into_iter()
                .filter_map(|(n, o, len)| {
                    let old_start = so.offset.checked_add(o)?;
                    (old_start.checked_add(len)? <= old.len() as u64).then_some((
                        s.offset + n,
                        old_start,
                        len,
                    ))
                }),
        );
    }
    out.sort_unstable();
    out
}

fn zeros(image: &[u8], range: Option<std::ops::Range<usize>>) -> bool {
    range.is_some_and(|r| image[r].iter().all(|&b| b == 0))
}

/// (type, target file offset, r_offset) of each entry of relocation table `rela` whose
/// addend is an offset into a section (against a section symbol).
fn relocations<'a>(
    layout: &'a Layout,
    image: &'a [u8],
    rela: &'a super::layout::Section,
) -> impl Iterator<Item = (u32, u64, u64)> + 'a {
    let symtab = layout.sections.get(rela.link as usize);
    entries(rela, image.len(), 24).filter_map(move |e| {
        let offset = read_u64(image, e)?;
        let info = read_u64(image, e + 8)?;
        let addend = read_u64(image, e + 16)?;
        let base = section_symbol_base(layout, image, symtab?, (info >> 32) as usize)?;
        Some((info as u32, base.wrapping_add(addend), offset))
    })
}

/// Section-relative (new start, old start, length) pieces covering `[0, size)` from pairs
/// (new offset, old offset) sorted by new offset: a piece per run of pairs with one shift,
/// runs narrower than [`MIN_EQUIVALENCE`] folded into the piece before (the decoder ignores
/// shorter ranges). The first piece keeps the section's start in place, so that the section
/// maps onto the old one's start as its base.
fn pieces(pairs: &[(u64, u64)], size: u64) -> Vec<(u64, u64, u64)> {
    // (new start, shift) of each run.
    let mut runs: Vec<(u64, i128)> = Vec::new();
    for &(n, o) in pairs {
        let shift = i128::from(n) - i128::from(o);
        if runs.last().is_none_or(|r| r.1 != shift) {
            runs.push((n, shift));
        }
    }
    let mut starts: Vec<(u64, i128)> = vec![(0, 0)];
    for (k, &(n, shift)) in runs.iter().enumerate() {
        let end = runs.get(k + 1).map_or(size, |r| r.0);
        let last = *starts.last().expect("one start");
        if shift == last.1 || end.saturating_sub(n) < MIN_EQUIVALENCE {
            continue;
        }
        // A piece narrower than the minimum would not count: start this run later.
        let n = n.max(last.0 + MIN_EQUIVALENCE);
        if n + MIN_EQUIVALENCE <= size {
            starts.push((n, shift));
        }
    }
    let mut out = Vec::with_capacity(starts.len());
    for (k, &(n, shift)) in starts.iter().enumerate() {
        let end = starts.get(k + 1).map_or(size, |s| s.0);
        let old = i128::from(n) - shift;
        if let Ok(old) = u64::try_from(old) {
            out.push((n, old, end - n));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_follow_the_shifts_of_runs_wide_enough_to_count() {
        // Slots of 4 bytes; the new file inserted one slot at 400 and dropped one at 800.
        let mut pairs = Vec::new();
        for n in (0..1200).step_by(4) {
            let o = match n {
                0..400 => n,
                400 => continue,
                404..800 => n - 4,
                _ => n,
            };
            pairs.push((n, o));
        }
        assert_eq!(
            pieces(&pairs, 1200),
            vec![(0, 0, 404), (404, 400, 396), (800, 800, 400)]
        );
        // A run narrower than the minimum is folded into the one before.
        let pairs = [(0, 0), (100, 96), (120, 120)];
        assert_eq!(pieces(&pairs, 400), vec![(0, 0, 400)]);
        // A first run that moved keeps the section's start in place.
        let pairs = [(0, 8), (200, 208)];
        assert_eq!(pieces(&pairs, 400), vec![(0, 0, 64), (64, 72, 336)]);
    }
}
