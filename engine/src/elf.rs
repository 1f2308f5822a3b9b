//! The encoder of the ELF-aware method (container method 4; the decoder and the shared
//! reference discovery live in `deltaroot_format::elf`).
//!
//! 1. Find every reference of both images (relocation and symbol tables, relocated pointer
//!    slots, rel32 branches and RIP-relative operands, BTF fields, and in executables at a
//!    fixed address the data words that hold addresses).
//! 2. Blank them (zero their bytes) in copies of both images and diff those with bsdiff: with
//!    references out of the way, moved code matches the old code again, and the aligned
//!    ranges of that diff are the first equivalence map.
//! 3. Normalise: rewrite each reference of the new image to the value it would have in the old
//!    image at the matching place, mapping its target (and, for relative references, its
//!    base) through the equivalence map. BTF type ids and string offsets (kernel modules'
//!    `.BTF`) are not addresses: the pairs of values the map aligns are fitted with a table of
//!    shifts ([`BtfShifts::fit`]) that the payload carries, and each new value is normalised
//!    to one the table sends to it. A data word found by its value keeps it where its
//!    normalised value would not read as an address: the device must find the same words.
//! 4. Diff the old image against the normalised one with bsdiff; the device derives its
//!    equivalence map from this diff's control records.
//! 5. Run the device's restore over the normalised image and record, for each reference whose
//!    predicted value is not the real one, the correction. The candidate exists only if the
//!    restore gives the new image back byte for byte.

use std::collections::HashMap;

use deltaroot_format::elf::{self, AddressMap, BtfShifts, Equivalences, Layout, RefKind};

use crate::bsdiff::Index;
use crate::error::Result;

/// Encodes the method-4 payload (uncompressed) from `old` to `new`, or `None` when the files
/// are not both supported ELF images of one architecture.
///
/// Memory: besides the two files, one copy of the new file (blanked, then normalised, then
/// restored in place) and one of the old (blanked, during the first pass only), one suffix
/// array (four bytes per byte of the old file) at a time, each [released](Index::release)
/// so that the next one is mapped apart and returned when freed, and the payload once the
/// second is freed. References are found as they are used, never collected.
pub fn encode(old: &[u8], new: &[u8]) -> Result<Option<Vec<u8>>> {
    encode_revision(old, new, true)
}

/// [`encode`] to a payload of revision 2 (`revised`, what the publisher sends) or 1 (what
/// publishers made before it, which devices still apply: kept to test that they do).
pub fn encode_revision(old: &[u8], new: &[u8], revised: bool) -> Result<Option<Vec<u8>>> {
    let Ok((lo, ln)) = layouts(old, new) else {
        return Ok(None);
    };
    // Revision 2: executables at a fixed address hold pointers that no relocation names,
    // which phase E finds.
    let (lo, ln) = (lo.for_revision(revised), ln.for_revision(revised));
    let switch = if lo.relocatable {
        crate::bsdiff::RELOCATABLE_SWITCH
    } else {
        crate::bsdiff::SWITCH
    };
    // The new file with its references blanked; normalised in place below.
    let mut work = new.to_vec();
    let eq0 = {
        let mut blank_old = old.to_vec();
        elf::for_each_ref(&lo, old, |r| elf::write_ref(r, &mut blank_old, 0));
        elf::for_each_ref(&ln, new, |r| elf::write_ref(r, &mut work, 0));
        let index = Index::new(&blank_old);
        let eq0 = Equivalences::from_controls(&index.controls(&work, switch), revised);
        index.release();
        eq0
    };
    let btf = btf_shifts(&lo, old, &ln, new, &eq0);
    let map0 = AddressMap {
        old: &lo,
        new: &ln,
        eq: &eq0,
        btf: &btf,
    };
    // Every blanked field is written again (in the same order as it was blanked), so this
    // gives the new file with each reference normalised. A phase E word is found by its
    // value: it is normalised only to a value the device's restore also takes for an
    // address, else it keeps its own (which the restore finds, as the encoder did here).
    let mut refs = 0usize;
    elf::for_each_ref(&ln, new, |r| {
        if let Some(v) = elf::read_ref(r, new) {
            let n = map0.normalise(r, v);
            let keep = r.kind == RefKind::Ptr64 && !ln.holds_address(n as u64);
            elf::write_ref(r, &mut work, if keep { v } else { n });
            refs += 1;
        }
    });
    drop(eq0);
    let index = Index::new(old);
    let controls = index.controls(&work, switch);
    index.release();
    let eq1 = Equivalences::from_controls(&controls, revised);
    let payload = elf::build_payload(ln.arch, &btf, revised, &controls, old, &work);
    drop(controls);
    let found = payload.and_then(|p| {
        Ok((
            p,
            elf::find_corrections(&lo, &mut work, new, &eq1, &btf, revised)?,
        ))
    });
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
