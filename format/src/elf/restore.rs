//! Restoring references: the walk both sides make over the normalised image, predicting each
//! reference's new value through the address map and adding its correction
//! ([`walk_restore`]); the encoder finds the corrections with the same walk
//! ([`find_corrections`]).

use super::discover::discover;
use super::refs::sign_extend;
use super::{bad, btf, AddressMap, BtfShifts, ElfError, Equivalences, Layout, Ref, Revision};

/// The difference between an actual and a predicted field value, modulo the field.
pub(super) fn correction(r: &Ref, actual: i64, predicted: i64) -> i64 {
    sign_extend(actual.wrapping_sub(predicted) as u64, r.kind.bits())
}

/// Runs the decoder's restore over `image` (the normalised image, restored in place),
/// calling `fix(index, ref, predicted)` to learn the correction of each reference.
/// References are found as they are restored (FORMAT.md §6.4, step 3): each in the image as
/// restored up to it, as the payload revision `old` is read for says
/// ([`Layout::for_payload`]). Returns the number of references visited.
pub fn walk_restore(
    old: &Layout,
    image: &mut [u8],
    eq: &Equivalences,
    btf: &BtfShifts,
    mut fix: impl FnMut(usize, &Ref, i64) -> Result<i64, ElfError>,
) -> Result<usize, ElfError> {
    // The new file's references are read as the payload says the old one's are.
    let new = Layout::parse(image)?.for_payload(old.revision);
    let revised = old.revision >= Revision::Two;
    let map = AddressMap {
        old,
        new: &new,
        eq,
        btf,
    };
    let mut index = 0usize;
    let mut image = image;
    let mut learned = Learned::for_image(image.len());
    discover(&new, &mut image, &mut |r, image: &mut &mut [u8]| {
        let Some(normalised) = r.read(image) else {
            return Ok(());
        };
        let mut predicted = map.predict(r, normalised);
        let target = (revised && !r.kind.is_index()).then(|| r.target_of(r.base, predicted));
        if let Some(better) = target.and_then(|t| learned.get(t)) {
            predicted = r.value_of(r.base, better);
        }
        let c = fix(index, r, predicted)?;
        r.write(image, predicted.wrapping_add(c));
        if let (Some(t), true) = (target, c != 0) {
            if let Some(v) = r.read(image) {
                learned.insert(t, r.target_of(r.base, v));
            }
        }
        index += 1;
        Ok(())
    })?;
    Ok(index)
}

/// Revision 2: the targets corrections taught the restore, by the target it had predicted.
/// The references to one target the map gets wrong (a function whose entry no aligned range
/// covers) are predicted from the first one's correction instead of each carrying its own.
/// At most [`LEARNED_MAX`] targets are kept, and one per 64 bytes of the image (bounded
/// memory whatever the payload says); both sides keep the same ones.
pub(super) struct Learned {
    pub(super) targets: std::collections::HashMap<u64, u64>,
    pub(super) max: usize,
}

/// Most targets [`Learned`] keeps.
pub(super) const LEARNED_MAX: usize = 1 << 17;

impl Learned {
    pub(super) fn for_image(len: usize) -> Learned {
        Learned {
            targets: std::collections::HashMap::new(),
            max: LEARNED_MAX.min(len / 64),
        }
    }

    pub(super) fn get(&self, predicted: u64) -> Option<u64> {
        self.targets.get(&predicted).copied()
    }

    pub(super) fn insert(&mut self, predicted: u64, actual: u64) {
        if self.targets.len() < self.max || self.targets.contains_key(&predicted) {
            self.targets.insert(predicted, actual);
        }
    }
}

/// Calls `f` for every reference of `image` in restore order (for the encoder, which blanks
/// and normalises them); the image is not changed, so each is found in it as it is.
pub fn for_each_ref(layout: &Layout, image: &[u8], mut f: impl FnMut(&Ref)) {
    let mut image = image;
    // The visitor never fails, so neither does the walk.
    let _ = discover(layout, &mut image, &mut |r, _: &mut &[u8]| {
        f(r);
        Ok(())
    });
}

/// Calls `f` for the BTF fields (phase D) of `image` alone, in restore order (for the
/// encoder, which fits their shifts).
pub fn for_each_btf_ref(layout: &Layout, image: &[u8], mut f: impl FnMut(&Ref)) {
    let mut image = image;
    // The visitor never fails, so neither does the walk.
    let _ = btf::phase_d(layout, &mut image, &mut |r, _: &mut &[u8]| {
        f(r);
        Ok(())
    });
}

/// The encoder's side of the same walk: restores `image` (the normalised image) in place and
/// returns the corrections that turn it into `new`.
pub fn find_corrections(
    old: &Layout,
    image: &mut [u8],
    new: &[u8],
    eq: &Equivalences,
    btf: &BtfShifts,
) -> Result<Vec<(usize, i64)>, ElfError> {
    let mut out = Vec::new();
    walk_restore(old, image, eq, btf, |i, r, predicted| {
        let actual = r
            .read(new)
            .ok_or_else(|| bad("reference outside the new image"))?;
        let c = correction(r, actual, predicted);
        if c != 0 {
            out.push((i, c));
        }
        Ok(c)
    })?;
    if image != new {
        return Err(bad(
            "restoring the normalised image does not give the new image",
        ));
    }
    Ok(out)
}

/// Reads a reference's value from an image (for the encoder).
pub fn read_ref(r: &Ref, image: &[u8]) -> Option<i64> {
    r.read(image)
}

/// Writes a reference's value into an image (for the encoder).
pub fn write_ref(r: &Ref, image: &mut [u8], value: i64) {
    r.write(image, value)
}

/// The target address of a reference (for the encoder's blanking and statistics).
pub fn ref_target(r: &Ref, image: &[u8]) -> Option<u64> {
    r.target(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::testing::*;
    use crate::elf::*;

    /// In revision 2 one correction serves every later reference the restore predicted to
    /// the same target: moving the first reference to a function moves the ones after it
    /// too, where revision 1 moves that one alone.
    #[test]
    fn revision_2_reuses_a_correction_for_the_same_target() {
        let old = X86_64_PIE.to_vec();
        let len = old.len() as u64;
        let decoded = |revised: bool, corrections: &[(usize, i64)]| {
            decode(
                &old,
                identity_payload_of(&old, revised, corrections, &[]),
                len,
            )
            .unwrap()
        };
        // The restore's numbering (references whose bytes lie inside the file), and where
        // each points when nothing is corrected.
        let base = decoded(true, &[]);
        assert_eq!(base, decoded(false, &[]));
        let mut refs = Vec::new();
        for_each_ref(&Layout::parse(&base).unwrap(), &base, |r| {
            if let Some(t) = r.target(&base) {
                refs.push((*r, t));
            }
        });
        let mut by_target = std::collections::HashMap::<u64, Vec<usize>>::new();
        for (i, (_, t)) in refs.iter().enumerate() {
            by_target.entry(*t).or_default().push(i);
        }
        let (target, same) = by_target
            .into_iter()
            .filter(|(_, v)| v.len() >= 3 && refs[v[0]].0.kind == RefKind::Rel32)
            .min_by_key(|(t, v)| (v[0], *t))
            .expect("a function called three times");
        let moved = |revised: bool| {
            let out = decoded(revised, &[(same[0], 16)]);
            let changed: Vec<usize> = (0..refs.len())
                .filter(|&i| refs[i].0.read(&out) != refs[i].0.read(&base))
                .collect();
            for &i in &changed {
                assert_eq!(refs[i].0.target(&out), Some(target + 16), "reference {i}");
            }
            changed
        };
        assert_eq!(moved(false), [same[0]]);
        assert_eq!(moved(true), same);
    }
}
