//! The encoder of the ELF-aware method (container method 4; the decoder and the shared
//! reference discovery live in `deltaroot_client::elf`).
//!
//! 1. Find every reference of both images (relocation and symbol tables, relocated pointer
//!    slots, rel32 branches and RIP-relative operands).
//! 2. Blank them (zero their bytes) in copies of both images and diff those with bsdiff: with
//!    references out of the way, moved code matches the old code again, and the aligned
//!    ranges of that diff are the first equivalence map.
//! 3. Normalise: rewrite each reference of the new image to the value it would have in the old
//!    image at the matching place, mapping its target (and, for relative references, its
//!    base) through the equivalence map.
//! 4. Diff the old image against the normalised one with bsdiff; the device derives its
//!    equivalence map from this diff's control records.
//! 5. Run the device's restore over the normalised image and record, for each reference whose
//!    predicted value is not the real one, the correction. The candidate exists only if the
//!    restore gives the new image back byte for byte.

use deltaroot_client::elf::{self, AddressMap, Layout};

use crate::bsdiff::Index;
use crate::error::Result;

/// Encodes the method-4 payload (uncompressed) from `old` to `new`, or `None` when the files
/// are not both supported ELF images of one architecture.
///
/// `index` holds the suffix array of `old` once built: the caller may reuse it for other
/// methods. It is built here after the first pass, whose own index (of the blanked image)
/// is freed by then, so the two never take memory at once.
pub fn encode<'a>(
    old: &'a [u8],
    new: &[u8],
    index: &std::cell::OnceCell<Index<'a>>,
) -> Result<Option<Vec<u8>>> {
    let (Ok(lo), Ok(ln)) = (Layout::parse(old), Layout::parse(new)) else {
        return Ok(None);
    };
    if lo.arch != ln.arch || lo.relocatable != ln.relocatable {
        return Ok(None);
    }
    let refs_new = elf::all_refs(&ln, new);
    let blank = |image: &[u8], refs: &[elf::Ref]| {
        let mut b = image.to_vec();
        for r in refs {
            elf::write_ref(r, &mut b, 0);
        }
        b
    };
    let eq0 = {
        let blank_old = blank(old, &elf::all_refs(&lo, old));
        crate::bsdiff::diff(&blank_old, &blank(new, &refs_new)).equivalences()
    };
    let map0 = AddressMap {
        old: &lo,
        new: &ln,
        eq: &eq0,
    };
    let mut normalised = new.to_vec();
    for r in &refs_new {
        if let Some(v) = elf::read_ref(r, new) {
            elf::write_ref(r, &mut normalised, map0.normalise(r, v));
        }
    }
    let patch = index.get_or_init(|| Index::new(old)).diff(&normalised);
    let eq1 = patch.equivalences();
    let corrections = match elf::find_corrections(&lo, &normalised, new, &eq1) {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "ELF normalisation does not round-trip; method skipped");
            return Ok(None);
        }
    };
    tracing::debug!(
        refs = refs_new.len(),
        corrections = corrections.len(),
        "ELF references normalised"
    );
    Ok(Some(elf::build_payload(ln.arch, &patch, &corrections)))
}
