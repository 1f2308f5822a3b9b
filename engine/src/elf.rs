//! The encoder of the ELF-aware method (container method 4; the decoder and the shared
//! reference discovery live in `deltaroot_format::elf`).
//!
//! 1. Find every reference of both images (relocation and symbol tables, relocated pointer
//!    slots, rel32 branches and RIP-relative operands, BTF fields, and in executables at a
//!    fixed address the data words, and from revision 5 the x86-64 code's 32-bit immediates
//!    and displacements, that hold addresses).
//! 2. Blank them (zero their bytes) in copies of both images and diff those with bsdiff: with
//!    references out of the way, moved code matches the old code again, and the aligned
//!    ranges of that diff are the first equivalence map.
//! 3. Normalise: rewrite each reference of the new image to the value it would have in the old
//!    image at the matching place, mapping its target (and, for relative references, its
//!    base) through the equivalence map. BTF type ids and string offsets (kernel modules'
//!    `.BTF`) are not addresses: the pairs of values the map aligns are fitted with a table of
//!    shifts ([`BtfShifts::fit`]) that the payload carries, and each new value is normalised
//!    to one the table sends to it. Where the old file's field at the matching place gives
//!    the new value back through the device's prediction, that is the value ([`normalised`]).
//!    A field found by its value keeps it where its normalised value would not read as an
//!    address: the device must find the same fields.
//! 4. Diff the old image against the normalised one with bsdiff; the device derives its
//!    equivalence map from this diff's control records. From revision 5, normalise the new
//!    image again through that map and diff again ([`second_pass`]). Over a section that relocations fill
//!    (zeros in the file, `elf::filled_pieces`), the records of both diffs are replaced by
//!    ones that follow the alignment the relocations show ([`follow`]), so that the map
//!    sends each slot to the same slot of the old file.
//! 5. Run the device's restore over the normalised image and record, for each reference whose
//!    predicted value is not the real one, the correction. The candidate exists only if the
//!    restore gives the new image back byte for byte.

use std::collections::HashMap;

use deltaroot_format::elf::{
    self, AddressMap, BtfShifts, Control, Equivalences, Layout, RefKind, Revision,
};

use crate::bsdiff::Index;
use crate::error::Result;

/// Encodes the method-4 payload (uncompressed) from `old` to `new`, or `None` when the files
/// are not both supported ELF images of one architecture.
///
/// Memory: besides the two files, one copy of the new file (blanked, then normalised, then
/// restored in place) and one of the old (blanked, during the first pass only), one suffix
/// array (four bytes per byte of the old file) at a time, each [released](Index::release)
/// so that the next one is mapped apart and returned when freed (the second serves both
/// diffs of the normalised image), and the payload once the second is freed. References are found as they are used, never collected.
pub fn encode(old: &[u8], new: &[u8]) -> Result<Option<Vec<u8>>> {
    encode_revision(old, new, Revision::Five)
}

/// [`encode`] to a payload of `revision` (the publisher sends the newest; the older ones are
/// what earlier publishers made, which devices still apply: kept to test that they do).
pub fn encode_revision(old: &[u8], new: &[u8], revision: Revision) -> Result<Option<Vec<u8>>> {
    let revised = revision >= Revision::Two;
    let Ok((lo, ln)) = layouts(old, new) else {
        return Ok(None);
    };
    // Revision 2: executables at a fixed address hold pointers that no relocation names,
    // which phase E finds.
    // Revision 3: an AArch64 ADRP and the instruction adding its low 12 bits are one
    // reference; so is each relocation's symbol index in a relocatable object.
    // Revision 4: the unwind tables' addresses are references.
    // Revision 5: only the nonzero diff bytes are sent, by position.
    let (lo, ln) = (lo.for_payload(revision), ln.for_payload(revision));
    let switch = if lo.relocatable {
        crate::bsdiff::RELOCATABLE_SWITCH
    } else {
        crate::bsdiff::SWITCH
    };
    let min_match = crate::bsdiff::min_match(old.len());
    // The new file with its references blanked; normalised in place below.
    let mut work = new.to_vec();
    let (eq0, filled) = {
        let mut blank_old = old.to_vec();
        elf::for_each_ref(&lo, old, |r| elf::write_ref(r, &mut blank_old, 0));
        elf::for_each_ref(&ln, new, |r| elf::write_ref(r, &mut work, 0));
        let index = Index::new(&blank_old);
        let controls = index.controls(&work, switch, min_match);
        index.release();
        let eq0 = Equivalences::from_controls(&controls, revised);
        // Sections that relocations fill are aligned as their relocations say (`filled`).
        let filled = elf::filled_pieces(&lo, old, &ln, new, &eq0);
        if filled.is_empty() {
            (eq0, filled)
        } else {
            let shaped = follow(&controls, &filled);
            (Equivalences::from_controls(&shaped, revised), filled)
        }
    };
    let btf = btf_shifts(&lo, old, &ln, new, &eq0);
    let map0 = AddressMap {
        old: &lo,
        new: &ln,
        eq: &eq0,
        btf: &btf,
    };
    let refs = normalise(&map0, old, new, &mut work);
    let index = Index::new(old);
    let diff = |work: &[u8]| {
        let controls = index.controls(work, switch, min_match);
        if filled.is_empty() {
            controls
        } else {
            follow(&controls, &filled)
        }
    };
    let mut controls = diff(&work);
    if second_pass(revision) {
        let eq = Equivalences::from_controls(&controls, revised);
        work.copy_from_slice(new);
        normalise(&AddressMap { eq: &eq, ..map0 }, old, new, &mut work);
        controls = diff(&work);
    }
    index.release();
    let eq1 = Equivalences::from_controls(&controls, revised);
    let payload = elf::build_payload(ln.arch, &btf, revision, &controls, old, &work);
    drop(controls);
    let found =
        payload.and_then(|p| Ok((p, elf::find_corrections(&lo, &mut work, new, &eq1, &btf)?)));
    let (mut payload, corrections) = match found {
        Ok(found) => found,
        Err(e) => {
            tracing::debug!(error = %e, "ELF normalisation does not round-trip; method skipped");
            return Ok(None);
        }
    };
    tracing::debug!(
        refs,
        btf_type_pieces = btf.types.len(),
        btf_string_pieces = btf.strings.len(),
        corrections = corrections.len(),
        "ELF references normalised"
    );
    let tail = elf::encode_corrections(&corrections);
    // Exactly: a doubled buffer would sit beside the compressor's tables.
    payload.reserve_exact(tail.len());
    payload.extend_from_slice(&tail);
    Ok(Some(payload))
}

/// Whether the new image is normalised a second time, through the alignment of the first
/// normalised image (which matches far more than the blanked images did), and diffed again:
/// the references the first alignment sent to the wrong place then agree with the old file.
/// The suffix array of the old file is kept for it, so it costs a normalisation and a
/// match, about a fifth more time. Corpus, ELF method: `python3.11` 575.4 to 555.5 kB,
/// `postgres` 225.1 to 220.2, `libpython3.11` 33.0 to 31.0, `libc` 16.4 to 16.2 (the ten
/// user-space pairs 1,101.4 to 1,074.5), `ko-i915` 49.3 to 48.5; `trees/kernel` B from A,
/// published to a folder: 8,476,581 to 8,405,833 bytes to download, 64.8 to 70.0 s. From
/// revision 5 on (what earlier publishers made stays as it was).
fn second_pass(revision: Revision) -> bool {
    revision >= Revision::Five
}

/// Writes each reference of `new` into `work` (a copy of `new` or of its blanked image)
/// normalised through `map`, in restore order; returns how many there are. A field found by
/// its value (phase E's words, revision 5's absolute code fields) is normalised only to a
/// value the device's restore also finds, else it keeps its own (which the restore finds, as
/// the encoder did here).
fn normalise(map: &AddressMap<'_>, old: &[u8], new: &[u8], work: &mut [u8]) -> usize {
    let mut refs = 0usize;
    elf::for_each_ref(map.new, new, |r| {
        if let Some(v) = elf::read_ref(r, new) {
            let n = normalised(map, r, v, old);
            let keep = r.kind.found_by_value() && !map.new.finds(r.kind, n as u64);
            elf::write_ref(r, work, if keep { v } else { n });
            refs += 1;
        }
    });
    refs
}

/// The value a field of the new file (`r`, holding `v`) is normalised to: the old file's
/// field at the place `map` aligns it with, when the device's prediction from that value is
/// `v` (the diff is then zero there); else the value `map` sends `v` back to
/// ([`AddressMap::normalise`]). The map is not one to one: BTF type ids the kernel's base
/// BTF renumbered take a piece of the shift tables of their own, and another piece may send
/// the same new id back to a different old one ([`BtfShifts::normalise`] takes the first);
/// two old functions may align with one new one. Corpus, ELF method: `snd-acp5x-i2s.ko`
/// 2,935 to 1,556 bytes, `mac80211.ko` 61,740 to 50,162, `btrfs.ko` 82,757 to 75,830 (BTF
/// fields); `python3.11` 576.1 to 575.4 kB (the others).
fn normalised(map: &AddressMap<'_>, r: &elf::Ref, v: i64, old: &[u8]) -> i64 {
    let aligned = map.eq.to_old(r.loc as u64).and_then(|o| {
        let at = elf::Ref {
            loc: usize::try_from(o).ok()?,
            ..*r
        };
        elf::read_ref(&at, old)
    });
    match aligned {
        Some(o) if map.predict(r, o) == v => o,
        _ => map.normalise(r, v),
    }
}

/// Why the method does not apply to `old` -> `new`, as far as their headers tell (`None`: it
/// applies; it may still find that its normalisation does not round-trip, which is logged).
pub fn refusal(old: &[u8], new: &[u8]) -> Option<String> {
    layouts(old, new).err()
}

/// Both files' layouts, when both are supported ELF images of one architecture and kind.
fn layouts(old: &[u8], new: &[u8]) -> std::result::Result<(Layout, Layout), String> {
    let lo = Layout::parse(old).map_err(|e| format!("the old file: {e}"))?;
    let ln = Layout::parse(new).map_err(|e| format!("the new file: {e}"))?;
    if lo.arch != ln.arch {
        return Err(format!(
            "the old file is {:?} and the new file {:?}",
            lo.arch, ln.arch
        ));
    }
    if lo.relocatable != ln.relocatable {
        return Err("one file is a relocatable object and the other is not".into());
    }
    Ok((lo, ln))
}

/// The shifts of BTF type ids and string offsets: each BTF field of the new file that the
/// alignment `eq` matches exactly with a field of the same kind in the old file gives a pair
/// (old value, new value), and each kind's pairs are fitted with [`BtfShifts::fit`].
fn btf_shifts(lo: &Layout, old: &[u8], ln: &Layout, new: &[u8], eq: &Equivalences) -> BtfShifts {
    let mut at_old: HashMap<usize, (RefKind, u32)> = HashMap::new();
    elf::for_each_btf_ref(lo, old, |r| {
        if let Some(v) = elf::read_ref(r, old) {
            at_old.insert(r.loc, (r.kind, v as u32));
        }
    });
    let (mut types, mut strings) = (Vec::new(), Vec::new());
    if !at_old.is_empty() {
        elf::for_each_btf_ref(ln, new, |r| {
            let Some(v) = elf::read_ref(r, new) else {
                return;
            };
            let matched = eq
                .to_old(r.loc as u64)
                .and_then(|o| at_old.get(&(o as usize)))
                .filter(|m| m.0 == r.kind);
            if let Some(&(kind, o)) = matched {
                let pairs = if kind == RefKind::BtfType {
                    &mut types
                } else {
                    &mut strings
                };
                pairs.push((o, v as u32));
            }
        });
    }
    BtfShifts {
        types: BtfShifts::fit(types),
        strings: BtfShifts::fit(strings),
    }
}

/// A stretch of the new file in a patch's records: mixed from `old` on, or copied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stretch {
    Mix { new: u64, old: u64, len: u64 },
    Copy { new: u64, len: u64 },
}

impl Stretch {
    fn new_range(self) -> (u64, u64) {
        match self {
            Stretch::Mix { new, len, .. } | Stretch::Copy { new, len } => (new, new + len),
        }
    }

    /// The part of this stretch within new offsets `[from, to)`, if any.
    fn within(self, from: u64, to: u64) -> Option<Stretch> {
        let (start, end) = self.new_range();
        let (a, b) = (start.max(from), end.min(to));
        (a < b).then(|| match self {
            Stretch::Mix { old, .. } => Stretch::Mix {
                new: a,
                old: old + (a - start),
                len: b - a,
            },
            Stretch::Copy { .. } => Stretch::Copy { new: a, len: b - a },
        })
    }
}

/// The stretches of the new file that `controls` make, in order (empty ones left out).
fn stretches(controls: &[Control]) -> Vec<Stretch> {
    let mut out = Vec::with_capacity(controls.len() * 2);
    let (mut old, mut new) = (0i128, 0u64);
    for c in controls {
        if c.mix > 0 {
            out.push(Stretch::Mix {
                new,
                old: u64::try_from(old).unwrap_or(0),
                len: c.mix,
            });
        }
        new += c.mix;
        if c.copy > 0 {
            out.push(Stretch::Copy { new, len: c.copy });
        }
        new += c.copy;
        old += i128::from(c.mix) + i128::from(c.seek);
    }
    out
}

/// `controls` with the new ranges of `pieces` ((new start, old start, length), sorted and
/// disjoint) mixed from the old ranges they name instead, and everything else as it was.
fn follow(controls: &[Control], pieces: &[(u64, u64, u64)]) -> Vec<Control> {
    // Cut the pieces' ranges out of the stretches, then put the pieces in.
    let mut kept = Vec::with_capacity(controls.len() * 2 + pieces.len() * 2);
    let mut p = 0;
    for s in stretches(controls) {
        let (start, end) = s.new_range();
        let mut at = start;
        while p < pieces.len() && pieces[p].0 + pieces[p].2 <= at {
            p += 1;
        }
        for &(n, _, len) in &pieces[p..] {
            if n >= end {
                break;
            }
            kept.extend(s.within(at, n));
            at = at.max(n + len);
        }
        kept.extend(s.within(at, end));
    }
    kept.extend(
        pieces
            .iter()
            .map(|&(new, old, len)| Stretch::Mix { new, old, len }),
    );
    kept.sort_unstable_by_key(|s| s.new_range().0);
    let mut out: Vec<Control> = Vec::with_capacity(kept.len());
    let mut old_end = 0i128;
    for s in kept {
        match s {
            Stretch::Mix { old, len, .. } => {
                if let Some(last) = out.last_mut() {
                    last.seek = i64::try_from(i128::from(old) - old_end).unwrap_or(0);
                }
                out.push(Control {
                    mix: len,
                    copy: 0,
                    seek: 0,
                });
                old_end = i128::from(old) + i128::from(len);
            }
            Stretch::Copy { len, .. } => match out.last_mut() {
                Some(last) => last.copy += len,
                None => out.push(Control {
                    mix: 0,
                    copy: len,
                    seek: 0,
                }),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A base type the kernel renumbered gets a piece of its own in the shift tables, and
    /// another piece may send the same new id back to a different old one. The aligned field
    /// is normalised to its own old value, so its diff is zero; a field the alignment did not
    /// match still gets a value the tables send to the new one.
    #[test]
    fn btf_fields_normalise_to_the_aligned_old_value() {
        let image = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fixtures/elf-small/x86_64-pie"
        ))
        .unwrap();
        let layout = Layout::parse(&image).unwrap();
        // Old ids 0..100 stay; 100.. move by -50; so new id 60 comes from old 60 or old 110.
        let btf = BtfShifts {
            types: vec![(100, (-50i32) as u32)],
            strings: Vec::new(),
        };
        let eq = Equivalences::new(&[(0, 0, 1024)], true);
        let map = AddressMap {
            old: &layout,
            new: &layout,
            eq: &eq,
            btf: &btf,
        };
        let mut old = vec![0u8; 2048];
        old[64..68].copy_from_slice(&110u32.to_le_bytes());
        old[72..76].copy_from_slice(&7u32.to_le_bytes());
        let field = |loc| elf::Ref {
            loc,
            kind: RefKind::BtfType,
            base: 0,
        };
        // Aligned, old 110 -> new 60: normalised to 110, not to 60.
        assert_eq!(map.normalise(&field(64), 60), 60);
        assert_eq!(normalised(&map, &field(64), 60, &old), 110);
        // Aligned, but the old field (7) does not predict 60: the tables' value.
        assert_eq!(normalised(&map, &field(72), 60, &old), 60);
        // Not aligned (past every range): the tables' value.
        assert_eq!(normalised(&map, &field(1500), 60, &old), 60);
    }

    /// (new start, old start of a mixed stretch, length) of each stretch.
    fn spans(controls: &[Control]) -> Vec<(u64, Option<u64>, u64)> {
        stretches(controls)
            .into_iter()
            .map(|s| match s {
                Stretch::Mix { new, old, len } => (new, Some(old), len),
                Stretch::Copy { new, len } => (new, None, len),
            })
            .collect()
    }

    #[test]
    fn records_follow_the_pieces_and_keep_the_rest() {
        let c = |mix, copy, seek| Control { mix, copy, seek };
        // new [0,100) from old 0, 20 copied, new [120,300) from old 500, 10 copied.
        let controls = [c(100, 20, 400), c(180, 10, 0)];
        let shaped = follow(&controls, &[(50, 1000, 100), (200, 2000, 64)]);
        assert_eq!(
            spans(&shaped),
            vec![
                (0, Some(0), 50),
                (50, Some(1000), 100),
                (150, Some(530), 50),
                (200, Some(2000), 64),
                (264, Some(644), 36),
                (300, None, 10),
            ]
        );
        // Nothing to follow: the same stretches.
        assert_eq!(spans(&follow(&controls, &[])), spans(&controls));
    }
}
