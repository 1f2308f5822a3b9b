//! bsdiff's matching, on a suffix array built with SA-IS (the `suffix_array` crate).
//!
//! The `bsdiff` crate's own diff sorts suffixes with qsufsort into 64-bit indices: slow, and
//! sixteen bytes of memory per byte of the old file. SA-IS with 32-bit indices is several
//! times faster and needs four. The matching loop is Colin Percival's: extend an approximate
//! match forwards and backwards, and emit a record whenever a better exact match appears.
//! The output is a [`SplitPatch`]: records, diff bytes and extra bytes as separate streams,
//! which the ELF method stores as they are and method 2 interleaves into the `bsdiff` crate's
//! stream format (so devices apply it with that crate's `patch`).

use deltaroot_format::elf::{Control, SplitPatch};
use suffix_array::SuffixArray;

/// Exact matches at least this long that do not end a search are stepped over ([`diff`]).
const SKIP_MIN: isize = 256;
/// Bytes at the end of such a match still searched one by one.
const SKIP_KEEP: isize = 64;

/// How many bytes longer than the current alignment's matching bytes an exact match must be
/// for the matcher to leave the alignment for it (Colin Percival's 8). The ELF method lowers it
/// for relocatable objects ([`RELOCATABLE_SWITCH`]).
pub const SWITCH: isize = 8;

/// [`SWITCH`] for kernel modules: their code holds zeros where relocations go, so exact
/// matches are short and the true alignment is found by following them sooner. Corpus, ELF
/// method: the four modules of `bench/elf.sh` 332,206 -> 310,423 bytes (ko-btrfs 3.3 -> 2.6
/// s); 101 and 100 other modules of the kernel tree pair, one in forty each, -2.3% and
/// -0.3%. Not for other ELF files: 375 changed user-space ELF files of the small tree pair
/// grow 1.2% with it.
pub const RELOCATABLE_SWITCH: isize = 6;

/// Length of the common prefix of two slices.
fn common(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// An old file indexed for matching: built once, diffed against any number of new files
/// (the engine diffs one old file against its new version and against the ELF method's
/// normalised image).
pub struct Index<'a> {
    old: &'a [u8],
    sa: SuffixArray<'a>,
}

impl<'a> Index<'a> {
    /// Sorts the suffixes of `old` (SA-IS, four bytes of memory per byte of `old`).
    pub fn new(old: &'a [u8]) -> Index<'a> {
        let mut sa = SuffixArray::new(old);
        sa.enable_buckets();
        Index { old, sa }
    }

    /// Frees the index. Its suffix array is first shrunk in place to one entry: glibc returns
    /// the pages of a block it mapped on its own when the block shrinks, but freeing the
    /// block would raise its mmap threshold to the block's size, and the next suffix array,
    /// of the same size, would then be carved from the heap, whose pages stay with the
    /// process once freed (corpus `ko-e1000e`: 2.6 MiB more at the peak of a `diff`).
    pub fn release(self) {
        let (_, mut sa) = self.sa.into_parts();
        sa.truncate(1);
        sa.shrink_to_fit();
    }

    /// The indexed file.
    pub fn old(&self) -> &'a [u8] {
        self.old
    }

    /// The longest match of `pattern` in the old file: (position, length).
    fn search(&self, pattern: &[u8]) -> (usize, usize) {
        let r = self.sa.search_lcp(pattern);
        if r.start >= self.old.len() {
            return (0, 0);
        }
        (r.start, common(&self.old[r.start..], pattern))
    }

    /// Diffs the indexed old file against `new`.
    pub fn diff(&self, new: &[u8]) -> SplitPatch {
        let mut patch = SplitPatch::default();
        patch.controls = diff_indexed(self, new, SWITCH, Some(&mut patch));
        patch
    }

    /// The records alone of [`Self::diff`] (the diff and extra bytes follow from them and
    /// the two files), leaving an alignment for a match `switch` bytes better ([`SWITCH`]):
    /// what the ELF method needs, without holding a copy of the new file.
    pub fn controls(&self, new: &[u8], switch: isize) -> Vec<Control> {
        diff_indexed(self, new, switch, None)
    }
}

/// Diffs `old` against `new`.
pub fn diff(old: &[u8], new: &[u8]) -> SplitPatch {
    Index::new(old).diff(new)
}

/// The matcher: returns the records, and fills `bytes`' diff and extra streams when given.
fn diff_indexed(
    index: &Index<'_>,
    new: &[u8],
    switch: isize,
    mut bytes: Option<&mut SplitPatch>,
) -> Vec<Control> {
    let old = index.old;
    let mut controls = Vec::new();
    let (oldsize, newsize) = (old.len() as isize, new.len() as isize);
    let (mut scan, mut len, mut pos) = (0isize, 0isize, 0isize);
    let (mut lastscan, mut lastpos, mut lastoffset) = (0isize, 0isize, 0isize);
    let at = |buf: &[u8], i: isize| buf[i as usize];
    while scan < newsize {
        let mut oldscore = 0isize;
        scan += len;
        let mut scsc = scan;
        while scan < newsize {
            let (p, l) = index.search(&new[scan as usize..]);
            (pos, len) = (p as isize, l as isize);
            while scsc < scan + len {
                if scsc + lastoffset < oldsize && at(old, scsc + lastoffset) == at(new, scsc) {
                    oldscore += 1;
                }
                scsc += 1;
            }
            if (len == oldscore && len != 0) || len > oldscore + switch {
                break;
            }
            // A long exact match no better than the current alignment: the positions inside
            // it find the same match shifted by one, each search comparing the whole length
            // again (quadratic: corpus xfs.ko took 53 s). Step over all but its last
            // SKIP_KEEP bytes, keeping oldscore the count over [scan, scsc).
            let step = if len >= SKIP_MIN { len - SKIP_KEEP } else { 1 };
            for _ in 0..step {
                if scan + lastoffset < oldsize && at(old, scan + lastoffset) == at(new, scan) {
                    oldscore -= 1;
                }
                scan += 1;
            }
        }
        if len != oldscore || scan == newsize {
            // Extend the previous match forwards...
            let (mut s, mut sf, mut lenf) = (0isize, 0isize, 0isize);
            let mut i = 0isize;
            while lastscan + i < scan && lastpos + i < oldsize {
                if at(old, lastpos + i) == at(new, lastscan + i) {
                    s += 1;
                }
                i += 1;
                if s * 2 - i > sf * 2 - lenf {
                    sf = s;
                    lenf = i;
                }
            }
            // ...and the new one backwards.
            let mut lenb = 0isize;
            if scan < newsize {
                let (mut s, mut sb) = (0isize, 0isize);
                let mut i = 1isize;
                while scan >= lastscan + i && pos >= i {
                    if at(old, pos - i) == at(new, scan - i) {
                        s += 1;
                    }
                    if s * 2 - i > sb * 2 - lenb {
                        sb = s;
                        lenb = i;
                    }
                    i += 1;
                }
            }
            // Where they overlap, split at the best point.
            if lastscan + lenf > scan - lenb {
                let overlap = (lastscan + lenf) - (scan - lenb);
                let (mut s, mut ss, mut lens) = (0isize, 0isize, 0isize);
                for i in 0..overlap {
                    if at(new, lastscan + lenf - overlap + i)
                        == at(old, lastpos + lenf - overlap + i)
                    {
                        s += 1;
                    }
                    if at(new, scan - lenb + i) == at(old, pos - lenb + i) {
                        s -= 1;
                    }
                    if s > ss {
                        ss = s;
                        lens = i + 1;
                    }
                }
                lenf += lens - overlap;
                lenb -= lens;
            }
            let extra_end = scan - lenb;
            if let Some(patch) = bytes.as_deref_mut() {
                for i in 0..lenf {
                    patch
                        .diff
                        .push(at(new, lastscan + i).wrapping_sub(at(old, lastpos + i)));
                }
                patch
                    .extra
                    .extend_from_slice(&new[(lastscan + lenf) as usize..extra_end as usize]);
            }
            controls.push(Control {
                mix: lenf as u64,
                copy: (extra_end - (lastscan + lenf)) as u64,
                seek: ((pos - lenb) - (lastpos + lenf)) as i64,
            });
            lastscan = scan - lenb;
            lastpos = pos - lenb;
            lastoffset = pos - scan;
        }
    }
    controls
}

/// The `bsdiff` crate's stream format: each record as three little-endian 64-bit words
/// (the seek in sign-magnitude), followed by its diff and extra bytes.
pub fn interleave(p: &SplitPatch) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.diff.len() + p.extra.len() + 24 * p.controls.len());
    let (mut d, mut e) = (0usize, 0usize);
    for c in &p.controls {
        out.extend_from_slice(&c.mix.to_le_bytes());
        out.extend_from_slice(&c.copy.to_le_bytes());
        let seek = if c.seek < 0 {
            c.seek.unsigned_abs() | 1 << 63
        } else {
            c.seek as u64
        };
        out.extend_from_slice(&seek.to_le_bytes());
        out.extend_from_slice(&p.diff[d..d + c.mix as usize]);
        out.extend_from_slice(&p.extra[e..e + c.copy as usize]);
        d += c.mix as usize;
        e += c.copy as usize;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pseudo_random;

    #[test]
    fn patches_apply_back_through_both_decoders() {
        let old = pseudo_random(50_000, 3, 7);
        let mut new = old.clone();
        new.splice(1000..1000, b"inserted".iter().copied());
        new.drain(30_000..30_500);
        new[40_000] ^= 0xff;
        for (o, n) in [
            (&old, &new),
            (&Vec::new(), &new),
            (&old, &Vec::new()),
            (&new, &old),
        ] {
            let p = diff(o, n);
            assert_eq!(&p.apply(o).unwrap(), n);
            // The records alone give the same streams back (what the ELF method stores).
            let controls = Index::new(o).controls(n, SWITCH);
            assert_eq!(SplitPatch::from_controls(controls, o, n).unwrap(), p);
            let mut back = Vec::new();
            bsdiff::patch(o, &mut &interleave(&p)[..], &mut back).unwrap();
            assert_eq!(&back, n);
        }
        let p = diff(&old, &new);
        assert!(p.extra.len() < 64, "extra {} bytes", p.extra.len());
    }

    #[test]
    fn the_switch_margin_decides_when_an_alignment_is_left() {
        // The new file is the old one with 7 bytes changed in a 100-byte span, and the old
        // file also holds that span exactly, elsewhere: the exact match is 7 bytes better
        // than staying aligned, which is enough for a margin of 6 and not for one of 8.
        let base = pseudo_random(4000, 11, 256);
        let mut new = base.clone();
        for i in 0..7 {
            new[1000 + 13 * i] ^= 0x5a;
        }
        let mut old = base.clone();
        old.extend_from_slice(&pseudo_random(500, 12, 256));
        old.extend_from_slice(&new[1000..1100]);
        old.extend_from_slice(&pseudo_random(500, 13, 256));
        let index = Index::new(&old);
        let stays = index.controls(&new, SWITCH);
        let leaves = index.controls(&new, RELOCATABLE_SWITCH);
        assert_eq!(stays.len(), 1, "{stays:?}");
        assert!(leaves.len() > 1, "{leaves:?}");
        // The span is then read from its exact copy.
        assert!(leaves.iter().any(|c| c.seek > 0), "{leaves:?}");
        for controls in [stays, leaves] {
            let patch = SplitPatch::from_controls(controls, &old, &new).unwrap();
            assert_eq!(patch.apply(&old).unwrap(), new);
        }
    }
}
