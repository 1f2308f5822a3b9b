//! bsdiff's matching, on a suffix array built by libsais on all cores.
//!
//! The `bsdiff` crate's own diff sorts suffixes with qsufsort into 64-bit indices: slow, and
//! sixteen bytes of memory per byte of the old file. libsais (induced sorting, OpenMP) with
//! 32-bit indices needs four, and sorts corpus `libnode` (47 MB) in 1.3 s on two cores where
//! divsufsort took 2.4 s, a 280 MB Chromium in 9.6 s where it took 21.2 s. The matching loop
//! is Colin Percival's: extend an approximate match forwards and backwards, and emit a record
//! whenever a better exact match appears; it runs over pieces of the new file in parallel
//! ([`PIECE`]).
//! The output is a [`SplitPatch`]: records, diff bytes and extra bytes as separate streams,
//! which the ELF method stores as they are and method 2 interleaves into the `bsdiff` crate's
//! stream format (so devices apply it with that crate's `patch`).

use deltaroot_format::elf::{Control, SplitPatch};
use libsais::{SuffixArrayConstruction, ThreadCount};

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

/// The shortest exact match the ELF method leaves an alignment for: floor(log2(old size)) -
/// 10, so 10 bytes in a 1 MiB file and 18 in a 256 MiB one. Where the new file holds code that
/// the old one does not, every longer exact match anywhere in the old file started a record
/// of its own, a few bytes long: in a larger file, more of them are chance. Corpus, ELF
/// method, bytes against no minimum: python3.11 676,391 -> 670,565 (12), ko-btrfs 83,948 ->
/// 82,891 (11), libc 23,738 -> 23,619 (10), libnode 87,734 -> 87,010 (14 of 15); Chromium 150
/// -> 156 (279 MB, `ELF_ARCH=big bench/elf.sh`) 62.6 MB -> 58.7 with 20, 60.6 with 32, in
/// 1.5 M records instead of 4.5 M.
pub fn min_match(old_len: usize) -> isize {
    (old_len.max(1).ilog2() as isize - 10).max(0)
}

/// Files smaller than this are sorted on one thread: the publisher already diffs one file per
/// core, and a sort's extra threads would wait for cores that other files hold (OpenMP's
/// threads spin while they wait). A file this large is where the time goes.
const PARALLEL_SORT_MIN: usize = 16 << 20;

/// Length of the common prefix of two slices.
fn common(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// An old file indexed for matching: built once, diffed against any number of new files
/// (the engine diffs one old file against its new version and against the ELF method's
/// normalised image).
pub struct Index<'a> {
    old: &'a [u8],
    /// The old file's suffixes in order (their start positions).
    sa: Vec<i32>,
    /// Where the suffixes starting with each two bytes begin in `sa`: those starting with
    /// bytes `a b` are `sa[bucket[a * 256 + b]..bucket[a * 256 + b + 1]]`; the one-byte suffix
    /// at the end of the file sorts first among those starting with its byte.
    bucket: Vec<u32>,
}

impl<'a> Index<'a> {
    /// Sorts the suffixes of `old` (four bytes of memory per byte of `old`; on as many threads
    /// as rayon's pool has for files of [`PARALLEL_SORT_MIN`] or more).
    ///
    /// # Panics
    /// If `old` is 2 GiB or larger (`--bsdiff-max-mib` keeps files below 1 GiB).
    pub fn new(old: &'a [u8]) -> Index<'a> {
        let sort = SuffixArrayConstruction::for_text(old).in_owned_buffer32();
        let threads = rayon::current_num_threads().clamp(1, u16::MAX.into()) as u16;
        let sa = if old.len() >= PARALLEL_SORT_MIN && threads > 1 {
            sort.multi_threaded(ThreadCount::fixed(threads)).run()
        } else {
            sort.single_threaded().run()
        }
        .expect("libsais sorts any text below 2 GiB")
        .into_vec();
        let mut bucket = vec![0u32; 65_537];
        for &i in &sa {
            bucket[Self::key(old, i as usize) + 1] += 1;
        }
        for k in 1..bucket.len() {
            bucket[k] += bucket[k - 1];
        }
        Index { old, sa, bucket }
    }

    /// The bucket of the suffix at `i` (its first two bytes; a last byte alone counts as
    /// followed by 0, and sorts first in that bucket).
    fn key(old: &[u8], i: usize) -> usize {
        usize::from(old[i]) << 8 | usize::from(old.get(i + 1).copied().unwrap_or(0))
    }

    /// Frees the index. Its suffix array is first shrunk in place to one entry: glibc returns
    /// the pages of a block it mapped on its own when the block shrinks, but freeing the
    /// block would raise its mmap threshold to the block's size, and the next suffix array,
    /// of the same size, would then be carved from the heap, whose pages stay with the
    /// process once freed (corpus `ko-e1000e`: 2.6 MiB more at the peak of a `diff`).
    pub fn release(self) {
        let mut sa = self.sa;
        sa.truncate(1);
        sa.shrink_to_fit();
    }

    /// The indexed file.
    pub fn old(&self) -> &'a [u8] {
        self.old
    }

    /// The longest match of `pattern` in the old file: (position, length); (0, 0) when no
    /// byte of it occurs.
    ///
    /// A binary search among the suffixes that share the pattern's first two bytes, which
    /// starts each comparison after the bytes that both bounds are known to share with the
    /// pattern: a long match is compared about once, not once per step.
    fn search(&self, pattern: &[u8]) -> (usize, usize) {
        let (old, sa) = (self.old, &self.sa);
        let Some(&first) = pattern.first() else {
            return (0, 0);
        };
        let suffix = |k: usize| sa[k] as usize;
        let b = match pattern.get(1) {
            Some(&second) => usize::from(first) << 8 | usize::from(second),
            None => usize::from(first) << 8,
        };
        let (mut lo, mut hi) = (self.bucket[b] as usize, self.bucket[b + 1] as usize);
        if pattern.len() < 2 || lo == hi || (hi - lo == 1 && suffix(lo) + 1 == old.len()) {
            // No suffix shares two bytes with the pattern: one that shares its first, if any.
            let row = usize::from(first) << 8;
            let (a, z) = (self.bucket[row] as usize, self.bucket[row + 256] as usize);
            return if a < z { (suffix(a), 1) } else { (0, 0) };
        }
        // lo and hi - 1 are the first and last suffixes of the bucket; the pattern sorts
        // between them or next to one of them, and so does its longest match.
        hi -= 1;
        let lcp = |k: usize, from: usize| from + common(&old[suffix(k) + from..], &pattern[from..]);
        let (mut llo, mut lhi) = (lcp(lo, 0), lcp(hi, 0));
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            let l = lcp(mid, llo.min(lhi));
            if l == pattern.len() {
                return (suffix(mid), l);
            }
            // The suffix sorts before the pattern if it ends first or has the smaller byte.
            if old.get(suffix(mid) + l).is_none_or(|&c| c < pattern[l]) {
                (lo, llo) = (mid, l);
            } else {
                (hi, lhi) = (mid, l);
            }
        }
        if llo > lhi {
            (suffix(lo), llo)
        } else {
            (suffix(hi), lhi)
        }
    }

    /// Diffs the indexed old file against `new`.
    pub fn diff(&self, new: &[u8]) -> SplitPatch {
        let mut patch = SplitPatch::default();
        patch.controls = diff_indexed(self, new, SWITCH, 0, PIECE, Some(&mut patch));
        patch
    }

    /// The records alone of [`Self::diff`] (the diff and extra bytes follow from them and
    /// the two files), leaving an alignment for a match `switch` bytes better ([`SWITCH`]):
    /// what the ELF method needs, without holding a copy of the new file.
    /// It starts a record only at exact matches of `min_match` bytes or more ([`min_match`];
    /// 0 for bsdiff's own rule).
    pub fn controls(&self, new: &[u8], switch: isize, min_match: isize) -> Vec<Control> {
        diff_indexed(self, new, switch, min_match, PIECE, None)
    }
}

/// Diffs `old` against `new`.
pub fn diff(old: &[u8], new: &[u8]) -> SplitPatch {
    Index::new(old).diff(new)
}

/// The new file is matched in pieces of this many bytes, on all cores: each piece is matched
/// as a file of its own against the whole old file, and its records are joined to those
/// before it by the seek of the piece's last record, which returns the old cursor to where
/// the next piece's records start (0). The pieces depend on the file alone, never on the
/// number of cores, so a publisher makes the same patch on any machine. A piece boundary
/// costs at most one record that a whole-file scan would not have cut (corpus, ELF method:
/// see `bench/results/elf.md`).
pub const PIECE: usize = 8 << 20;

/// The matcher: returns the records, and fills `bytes`' diff and extra streams when given.
fn diff_indexed(
    index: &Index<'_>,
    new: &[u8],
    switch: isize,
    min_match: isize,
    piece: usize,
    mut bytes: Option<&mut SplitPatch>,
) -> Vec<Control> {
    use rayon::prelude::*;
    if new.len() <= piece {
        return match_piece(index, new, switch, min_match, bytes);
    }
    let streams = bytes.is_some();
    let pieces: Vec<(Vec<Control>, SplitPatch)> = new
        .par_chunks(piece)
        .map(|piece| {
            let mut patch = SplitPatch::default();
            let controls = match_piece(
                index,
                piece,
                switch,
                min_match,
                streams.then_some(&mut patch),
            );
            (controls, patch)
        })
        .collect();
    let mut controls: Vec<Control> = Vec::with_capacity(pieces.iter().map(|p| p.0.len()).sum());
    // Where the old cursor stands after the last record's diff bytes: each piece's records
    // start at 0, and the join keeps them there.
    let mut end = 0i64;
    for (piece, streams) in pieces {
        let piece_end = cursor_after(&piece);
        let mut records = piece.into_iter();
        if let Some(before) = controls.last_mut() {
            // Back to the start of the old file, where the piece's records begin; a piece's
            // first record that only seeks (it does when its start matches) joins this one.
            let first = records.as_slice().first();
            let joined = first.filter(|c| c.mix == 0 && c.copy == 0).map(|c| c.seek);
            if joined.is_some() {
                records.next();
            }
            before.seek = joined.unwrap_or(0) - end;
        }
        end = piece_end;
        controls.extend(records);
        if let Some(patch) = bytes.as_deref_mut() {
            patch.diff.extend_from_slice(&streams.diff);
            patch.extra.extend_from_slice(&streams.extra);
        }
    }
    controls
}

/// Where the old cursor stands after the diff bytes of the last of `records`, relative to
/// where it stood before the first: the sum of their moves but for the last one's seek
/// (0 for no records).
fn cursor_after(records: &[Control]) -> i64 {
    let last_seek = records.last().map_or(0, |c| c.seek);
    records.iter().map(|c| c.mix as i64 + c.seek).sum::<i64>() - last_seek
}

/// The matcher over one piece of the new file (all of it when it is small).
fn match_piece(
    index: &Index<'_>,
    new: &[u8],
    switch: isize,
    min_match: isize,
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
            if (len == oldscore && len != 0) || (len > oldscore + switch && len >= min_match) {
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

    /// `patch` gives `new` back from `old` through both decoders, and `controls` alone give
    /// its streams back (what the ELF method stores).
    fn applies_back(old: &[u8], new: &[u8], patch: &SplitPatch, controls: Vec<Control>) {
        assert_eq!(patch.apply(old).unwrap(), new);
        assert_eq!(
            &SplitPatch::from_controls(controls, old, new).unwrap(),
            patch
        );
        let mut back = Vec::new();
        bsdiff::patch(old, &mut &interleave(patch)[..], &mut back).unwrap();
        assert_eq!(back, new);
    }

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
            applies_back(o, n, &diff(o, n), Index::new(o).controls(n, SWITCH, 0));
        }
        let p = diff(&old, &new);
        assert!(p.extra.len() < 64, "extra {} bytes", p.extra.len());
    }

    #[test]
    fn the_search_finds_a_longest_match() {
        // Against every position of the old file, for patterns that match long, short, at
        // the file's end, by one byte only, and not at all.
        let mut old = pseudo_random(3000, 21, 4);
        old.extend_from_slice(&old.clone()[100..600]);
        old.extend_from_slice(b"\xfe\xfd");
        let index = Index::new(&old);
        let longest = |p: &[u8]| (0..old.len()).map(|i| common(&old[i..], p)).max().unwrap();
        let mut patterns: Vec<Vec<u8>> = (0..old.len())
            .step_by(37)
            .map(|i| {
                let mut p = old[i..(i + 300).min(old.len())].to_vec();
                p.extend_from_slice(&pseudo_random(20, i as u64, 256));
                p
            })
            .collect();
        patterns.extend([
            vec![0xfe],
            vec![0xfd, 0x00],
            vec![0xfe, 0xfd, 0xfc],
            vec![0xff; 4],
        ]);
        patterns.extend((0..200).map(|i| pseudo_random(40, 100 + i, 6)));
        for p in &patterns {
            let (pos, len) = index.search(p);
            assert_eq!(len, longest(p), "pattern {:?}", &p[..p.len().min(8)]);
            assert_eq!(common(&old[pos..], p), len);
        }
        assert_eq!(index.search(&[0xff; 4]), (0, 0));
        assert_eq!(index.search(&[]), (0, 0));
    }

    #[test]
    fn the_minimum_match_grows_with_the_old_file() {
        assert_eq!(min_match(0), 0);
        assert_eq!(min_match(1000), 0);
        assert_eq!(min_match(1 << 20), 10);
        assert_eq!(min_match(6_834_488), 12);
        assert_eq!(min_match(279_452_424), 18);
    }

    #[test]
    fn pieces_join_into_a_patch_that_applies() {
        // A file matched in pieces of 4 kB: the same streams as the records say, applied back
        // by both decoders, and each piece boundary costs little against one whole scan.
        let old = pseudo_random(60_000, 5, 7);
        let mut new = old.clone();
        new.splice(2000..2000, b"inserted".iter().copied());
        new.drain(30_000..30_500);
        new[41_000] ^= 0xff;
        let index = Index::new(&old);
        let whole = diff_indexed(&index, &new, SWITCH, 0, usize::MAX, None);
        let mut patch = SplitPatch::default();
        let controls = diff_indexed(&index, &new, SWITCH, 0, 4096, Some(&mut patch));
        assert!(
            controls.len() > whole.len() && controls.len() <= whole.len() + 15,
            "{} records in pieces, {} whole",
            controls.len(),
            whole.len()
        );
        patch.controls = controls.clone();
        applies_back(&old, &new, &patch, controls);
        assert!(patch.extra.len() < 64, "extra {} bytes", patch.extra.len());
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
        let stays = index.controls(&new, SWITCH, 0);
        let leaves = index.controls(&new, RELOCATABLE_SWITCH, 0);
        // The span's exact copy is 100 bytes long: a minimum above that keeps the alignment.
        assert_eq!(index.controls(&new, RELOCATABLE_SWITCH, 101).len(), 1);
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
