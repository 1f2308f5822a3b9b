//! The decoder proper: a method-4 payload, in memory, read as it arrives, or as a stored
//! delta's one or three zstd frames, applied to the old file (in memory or read where the
//! records name it) to give the new image, whose references are then restored.

use std::io::Read;

use super::payload::{
    add_sparse, max_records, read_old_starts, unzigzag, PendingCorrections, Stream, HAS_BTF,
    REVISION_BITS,
};
use super::WINDOW_LOG_MAX;
use super::{
    bad, walk_restore, Arch, BtfShifts, Control, ElfError, Equivalences, Layout, Revision,
};
use crate::method::{Source, Watched};

/// Decodes a method-4 payload held in memory (already decompressed); see [`decode_from`].
pub fn decode(old: &[u8], raw: Vec<u8>, max_output: u64) -> Result<Vec<u8>, ElfError> {
    decode_from(old, raw.as_slice(), max_output)
}

/// Decodes a method-4 payload as it is read (decompressed) from `payload` and rebuilds the
/// new image from `old`: the patch writes the image as its streams arrive (the mixed ranges
/// from the diff stream, then the copied ranges from the extra stream), then the references
/// are restored with the corrections read as they are needed. No part of the payload is held
/// beyond its records; `max_output` bounds the image, allocated once the records are read.
pub fn decode_from(old: &[u8], payload: impl Read, max_output: u64) -> Result<Vec<u8>, ElfError> {
    decode_source(&Watched::new(Source::Bytes(old)), payload, max_output)
}

/// [`decode_from`] with the old file read where the records name it.
pub(crate) fn decode_source(
    old: &Watched<'_>,
    payload: impl Read,
    max_output: u64,
) -> Result<Vec<u8>, ElfError> {
    decode_core(old, Stream::new(Box::new(payload)), None, max_output)
}

/// Decodes a method-4 payload as a stored delta holds it (FORMAT.md §6.2): one zstd frame, or
/// three, read as they decompress through a window of at most 2^20 bytes (each read bounded
/// by `bound` bytes), except the middle one of three (the diff bytes), decompressed in one
/// call straight into the image, where it needs no window at all.
pub fn decode_frames(
    old: &[u8],
    frames: &[u8],
    max_output: u64,
    bound: u64,
) -> Result<Vec<u8>, ElfError> {
    decode_frames_from(&Watched::new(Source::Bytes(old)), frames, max_output, bound)
}

/// [`decode_frames`] with the old file read where the records name it.
pub(crate) fn decode_frames_from(
    old: &Watched<'_>,
    frames: &[u8],
    max_output: u64,
    bound: u64,
) -> Result<Vec<u8>, ElfError> {
    if super::is_xz(frames) {
        // An xz-framed payload (FORMAT.md §6.2) is of revision 5 or later, read as a stream.
        let xz = || -> Result<PayloadStream<'_>, ElfError> {
            let d = super::XzPayload::new(frames).map_err(|e| bad(format!("payload: {e}")))?;
            Ok(Stream::new(Box::new(d.take(bound))))
        };
        if xz()?.revision()? < Revision::Five {
            return Err(bad("an xz-framed payload must be of revision 5 or later"));
        }
        return decode_core(old, xz()?, None, max_output);
    }
    let mut cut = Vec::with_capacity(3);
    let mut rest = frames;
    while !rest.is_empty() && cut.len() < 3 {
        let len = zstd::zstd_safe::find_frame_compressed_size(rest).map_err(|c| {
            bad(format!(
                "payload frame: {}",
                zstd::zstd_safe::get_error_name(c)
            ))
        })?;
        let (frame, tail) = rest.split_at(len.min(rest.len()));
        cut.push(frame);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(bad("payload has bytes after its third frame"));
    }
    pub(super) fn stream(frame: &[u8], bound: u64) -> Result<PayloadStream<'_>, ElfError> {
        let fail = |e: std::io::Error| bad(format!("payload frame: {e}"));
        let mut d = zstd::stream::read::Decoder::with_buffer(frame).map_err(fail)?;
        d.window_log_max(WINDOW_LOG_MAX).map_err(fail)?;
        Ok(Stream::new(Box::new(d.take(bound))))
    }
    match cut[..] {
        // Revision 5's diff bytes are sparse: the payload is far smaller than the image and
        // is read as a stream.
        [whole] if stream(whole, bound)?.revision()? >= Revision::Five => {
            decode_core(old, stream(whole, bound)?, None, max_output)
        }
        [whole] => match decode_whole(old, whole, max_output, bound)? {
            Some(image) => Ok(image),
            None => decode_core(old, stream(whole, bound)?, None, max_output),
        },
        [head, diff, tail] => decode_core(
            old,
            stream(head, bound)?,
            Some((diff, stream(tail, bound)?)),
            max_output,
        ),
        _ => Err(bad("payload is neither one nor three zstd frames")),
    }
}

/// Adds the old file's bytes from offset `at` to `dst` (diff bytes become the image's); a file
/// is read through `chunk`, at most [`OLD_CHUNK`] bytes at a time.
pub(super) fn add_old(
    old: &Watched<'_>,
    at: u64,
    dst: &mut [u8],
    chunk: &mut Vec<u8>,
) -> Result<(), ElfError> {
    let fail = |e: std::io::Error| bad(format!("old file at {at}: {e}"));
    if let Source::Bytes(b) = old.source {
        let src = usize::try_from(at)
            .ok()
            .and_then(|s| b.get(s..s.checked_add(dst.len())?))
            .ok_or_else(|| bad("record reads past the old file"))?;
        for (d, o) in dst.iter_mut().zip(src) {
            *d = d.wrapping_add(*o);
        }
        return Ok(());
    }
    chunk.resize(dst.len().min(OLD_CHUNK), 0);
    let mut at = at;
    for part in dst.chunks_mut(OLD_CHUNK) {
        let src = &mut chunk[..part.len()];
        old.read_at(at, src).map_err(fail)?;
        for (d, o) in part.iter_mut().zip(src.iter()) {
            *d = d.wrapping_add(*o);
        }
        at += part.len() as u64;
    }
    Ok(())
}

/// Bytes of the old file read at a time when it is a file.
pub(super) const OLD_CHUNK: usize = 1 << 16;

/// A decompressed payload, or part of one, from any source.
pub(super) type PayloadStream<'a> = Stream<Box<dyn Read + 'a>>;

/// The head of a method-4 payload: the architecture byte (checked against the old file's),
/// then the records, their mixed and copied lengths bounded by `max_output`.
pub(super) struct Head {
    pub(super) old_layout: Layout,
    pub(super) btf: BtfShifts,
    pub(super) old_len: u64,
    pub(super) controls: Vec<Control>,
    pub(super) total_mix: u64,
    pub(super) total_copy: u64,
}

impl Head {
    pub(super) fn read<R: Read>(
        old: &Watched<'_>,
        s: &mut Stream<R>,
        max_output: u64,
    ) -> Result<Head, ElfError> {
        let byte = s.u8("architecture")?;
        let flags = HAS_BTF | REVISION_BITS;
        let Some(arch) = Arch::from_u8(byte & !flags) else {
            return Err(bad(format!("payload names unknown architecture {byte}")));
        };
        let revision = Revision::of_byte(byte)?;
        let btf = if byte & HAS_BTF != 0 {
            BtfShifts::read(s)?
        } else {
            BtfShifts::default()
        };
        let old_len = old
            .source
            .size()
            .map_err(|e| bad(format!("old file: {e}")))?;
        let old_layout =
            Layout::read(old_len, &mut |at, buf| old.read_at(at, buf))?.for_payload(revision);
        if old_layout.arch != arch {
            return Err(bad("payload is for another architecture than the source"));
        }
        let n = s.varint("record count")?;
        let columns = revision >= Revision::Five;
        if columns && n > max_records(max_output) {
            return Err(s.fail(
                "record count",
                format!("{n} records, more than an image of {max_output} bytes may have"),
            ));
        }
        // Each record takes at least three bytes of the (bounded) payload.
        let mut controls = Vec::with_capacity(n.min(1 << 16) as usize);
        let (mut total_mix, mut total_copy) = (0u64, 0u64);
        let grow = |total: &mut u64, by: u64, other: u64| {
            *total = total
                .checked_add(by)
                .ok_or_else(|| bad("patch lengths overflow"))?;
            if total.saturating_add(other) > max_output {
                return Err(bad(format!(
                    "patch produces {} bytes, more than the {max_output} announced",
                    total.saturating_add(other)
                )));
            }
            Ok(())
        };
        if columns {
            for _ in 0..n {
                let mix = s.varint("mix length")?;
                grow(&mut total_mix, mix, 0)?;
                controls.push(Control {
                    mix,
                    copy: 0,
                    seek: 0,
                });
            }
            for c in controls.iter_mut() {
                c.copy = s.varint("copy length")?;
                grow(&mut total_copy, c.copy, total_mix)?;
            }
            read_old_starts(s, &mut controls)?;
        } else {
            for _ in 0..n {
                let mix = s.varint("mix length")?;
                let copy = s.varint("copy length")?;
                let seek = unzigzag(s.varint("seek")?);
                grow(&mut total_mix, mix, total_copy)?;
                grow(&mut total_copy, copy, total_mix)?;
                controls.push(Control { mix, copy, seek });
            }
        }
        if s.varint("diff length")? != total_mix {
            return Err(bad("diff stream does not match the records"));
        }
        Ok(Head {
            old_layout,
            btf,
            old_len,
            controls,
            total_mix,
            total_copy,
        })
    }

    /// The image's length (fits: bounded by `max_output`, and allocated by the caller).
    pub(super) fn total(&self) -> Result<usize, ElfError> {
        usize::try_from(self.total_mix + self.total_copy)
            .map_err(|_| bad("patch output does not fit in memory"))
    }

    /// Where a record whose old cursor is `oldpos` reads `mix` bytes of the old file.
    pub(super) fn old_range(&self, oldpos: i128, mix: u64) -> Result<u64, ElfError> {
        let start = u64::try_from(oldpos).map_err(|_| bad("record reads before the old file"))?;
        if start.checked_add(mix).is_none_or(|end| end > self.old_len) {
            return Err(bad("record reads past the old file"));
        }
        Ok(start)
    }

    /// Steps 2 to 4: restores the references of the normalised `image`, reading each
    /// correction from `s` when its turn comes, and checks that `s` then ends.
    pub(super) fn restore<R: Read>(
        self,
        mut image: Vec<u8>,
        s: &mut Stream<R>,
    ) -> Result<Vec<u8>, ElfError> {
        let revised = self.old_layout.revision >= Revision::Two;
        let eq = Equivalences::from_controls(&self.controls, revised);
        drop(self.controls);
        let mut pending = PendingCorrections::start(s)?;
        let visited = walk_restore(&self.old_layout, &mut image, &eq, &self.btf, |i, _, _| {
            pending.take(s, i)
        })?;
        if let Some((at, _)) = pending.next {
            return Err(bad(format!(
                "correction for reference {at}, but the image has only {visited} references"
            )));
        }
        if !s.at_end()? {
            return Err(s.fail("end", "payload has trailing bytes"));
        }
        Ok(image)
    }
}

/// Allocates an image of `len` zero bytes, or fails clearly.
pub(super) fn zeroed(len: usize) -> Result<Vec<u8>, ElfError> {
    let mut image = Vec::new();
    image.try_reserve_exact(len).map_err(|_| {
        bad(format!(
            "cannot allocate the {len} bytes the patch produces"
        ))
    })?;
    image.resize(len, 0);
    Ok(image)
}

/// Most bytes a one-frame payload may hold beyond the image for [`decode_whole`] to take it:
/// records and corrections are a small part of a real payload.
pub(super) fn whole_slack(max_output: u64) -> u64 {
    (max_output / 2).saturating_add(1 << 20)
}

/// A one-frame payload decompressed in one call into the buffer that becomes the image,
/// needing no zstd window: the frame declares its size, at most the image plus
/// [`whole_slack`]. The decompressed payload is the records, the diff bytes, the extra bytes
/// and the corrections; the image ends where the extra bytes end. The extra bytes and the
/// corrections are set aside (copies), then each record's diff bytes move up to their place,
/// last first (never onto bytes still to be moved: a record's place is its diff offset plus
/// the copies before it, past where the diff bytes start), the old file's bytes are added and
/// its extra bytes are put after them; the image is then moved to the buffer's start. `None`
/// when the frame does not qualify (its size unknown or too large): it is read as a stream.
pub(super) fn decode_whole(
    old: &Watched<'_>,
    frame: &[u8],
    max_output: u64,
    bound: u64,
) -> Result<Option<Vec<u8>>, ElfError> {
    let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(frame) else {
        return Ok(None);
    };
    let limit = max_output
        .saturating_add(whole_slack(max_output))
        .min(bound);
    let Some(size) = usize::try_from(size).ok().filter(|&n| n as u64 <= limit) else {
        return Ok(None);
    };
    let mut buf = zeroed(size)?;
    let got = zstd::bulk::Decompressor::new()
        .and_then(|mut d| d.decompress_to_buffer(frame, &mut buf[..]))
        .map_err(|e| bad(format!("payload frame: {e}")))?;
    if got != size {
        return Err(bad("payload frame is shorter than it declares"));
    }
    let mut s = Stream::over(&buf);
    let head = Head::read(old, &mut s, max_output)?;
    if head.old_layout.revision >= Revision::Five {
        return Err(bad("a payload of revision 5 is read as a stream"));
    }
    let total = head.total()?;
    // Where the diff bytes start and end, where the extra bytes start and end.
    let d0 = usize::try_from(s.offset).map_err(|_| bad("payload too large"))?;
    let d1 = d0
        .checked_add(head.total_mix as usize)
        .filter(|&e| e <= size)
        .ok_or_else(|| s.fail("diff bytes", "truncated"))?;
    let mut s = Stream::over(&buf[d1..]);
    if s.varint("extra length")? != head.total_copy {
        return Err(bad("extra stream does not match the records"));
    }
    let e0 = d1 + s.offset as usize;
    let e1 = e0
        .checked_add(head.total_copy as usize)
        .filter(|&e| e <= size)
        .ok_or_else(|| s.fail("extra bytes", "truncated"))?;
    let extra = buf[e0..e1].to_vec();
    let tail = buf[e1..].to_vec();
    // The image is buf[e1 - total..e1]: it starts at or after the diff bytes.
    let start = e1 - total;
    let mut oldpos = head
        .controls
        .iter()
        .fold(0i128, |p, c| p + i128::from(c.mix) + i128::from(c.seek));
    let (mut at, mut diff, mut ex) = (e1, d1, extra.len());
    let mut chunk = Vec::new();
    for c in head.controls.iter().rev() {
        // Both fit: their sums are the image's parts.
        let (mix, copy) = (c.mix as usize, c.copy as usize);
        oldpos -= i128::from(c.mix) + i128::from(c.seek);
        at -= copy;
        ex -= copy;
        buf[at..at + copy].copy_from_slice(&extra[ex..ex + copy]);
        at -= mix;
        diff -= mix;
        buf.copy_within(diff..diff + mix, at);
        let from = head.old_range(oldpos, c.mix)?;
        add_old(old, from, &mut buf[at..at + mix], &mut chunk)?;
    }
    drop((extra, chunk));
    buf.copy_within(start..e1, 0);
    buf.truncate(total);
    head.restore(buf, &mut Stream::over(&tail)).map(Some)
}

/// [`decode_from`] and [`decode_frames`]: `s` reads the payload, or with `split` only up to
/// the diff bytes, which are then the given zstd frame, and the rest is the given stream.
pub(super) fn decode_core<'a>(
    old: &Watched<'_>,
    mut s: PayloadStream<'a>,
    split: Option<(&[u8], PayloadStream<'a>)>,
    max_output: u64,
) -> Result<Vec<u8>, ElfError> {
    let head = Head::read(old, &mut s, max_output)?;
    let sparse = head.old_layout.revision >= Revision::Five;
    if sparse && split.is_some() {
        return Err(bad("a payload of revision 5 is one zstd frame, not three"));
    }
    let total = head.total()?;
    let mut image = zeroed(total)?;
    // Step 1, the diff stream: each record's mixed range, diff bytes plus the old file's.
    // With a split payload the diff bytes are one frame, decompressed in one call into the
    // image's last `total_mix` bytes; each record's then moves down to its place (never past
    // bytes still to be moved: a record's place is its diff offset plus the copies before it).
    let mut placed = total - head.total_mix as usize;
    if let Some((frame, _)) = &split {
        if !s.at_end()? {
            return Err(s.fail("diff length", "first frame does not end here"));
        }
        let got = zstd::bulk::Decompressor::new()
            .and_then(|mut d| d.decompress_to_buffer(frame, &mut image[placed..]))
            .map_err(|e| bad(format!("diff frame: {e}")))?;
        if got as u64 != head.total_mix {
            return Err(bad("diff frame does not match the records"));
        }
    }
    let (mut pos, mut oldpos) = (0usize, 0i128);
    let mut chunk = Vec::new();
    for c in &head.controls {
        // Both fit: their sum is the image's length.
        let (mix, copy) = (c.mix as usize, c.copy as usize);
        let start = head.old_range(oldpos, c.mix)?;
        if split.is_some() {
            image.copy_within(placed..placed + mix, pos);
            placed += mix;
        } else if !sparse {
            s.read(&mut image[pos..pos + mix], "diff bytes")?;
        }
        add_old(old, start, &mut image[pos..pos + mix], &mut chunk)?;
        pos += mix + copy;
        oldpos += i128::from(c.mix) + i128::from(c.seek);
    }
    drop(chunk);
    if sparse {
        add_sparse(&mut s, &head.controls, head.total_mix, &mut image)?;
    }
    if let Some((_, tail)) = split {
        s = tail;
    }
    // The extra stream: each record's copied range.
    if s.varint("extra length")? != head.total_copy {
        return Err(bad("extra stream does not match the records"));
    }
    pos = 0;
    for c in &head.controls {
        pos += c.mix as usize;
        let copy = c.copy as usize;
        s.read(&mut image[pos..pos + copy], "extra bytes")?;
        pos += copy;
    }
    head.restore(image, &mut s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::payload::{apply_records, max_records, zigzag};
    use crate::elf::testing::*;
    use crate::elf::*;
    use crate::method::{Source, Watched};
    use crate::wire::put_varint;
    use std::io::Write;

    /// Hands out its bytes one at a time, as a slow decompressor might.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// Inputs on which `fuzz/run.sh` found a panic (fixtures/fuzz-regressions), read as the
    /// `elf_decode` target reads them: each is refused with an error naming what is wrong.
    #[test]
    fn fuzz_regressions_are_refused_not_panics() {
        let found: &[(&str, &[u8], &str)] = &[(
            "symtab-offset-overflow",
            include_bytes!("../../../fixtures/fuzz-regressions/elf_decode-symtab-offset-overflow"),
            "correction for reference 1787, but the image has only 153 references",
        )];
        for (name, data, why) in found {
            let (len, rest) = data.split_first_chunk::<4>().unwrap();
            let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
            let (source, payload) = rest.split_at(len);
            let err = decode_from(source, payload, 1 << 22).unwrap_err();
            assert!(err.0.contains(why), "{name}: {err}");
        }
    }

    #[test]
    fn decoder_reads_the_payload_as_it_arrives() {
        for old in images() {
            let len = old.len() as u64;
            let payload = identity_payload(&old, &[], &[]);
            let whole = decode_from(&old, payload.as_slice(), len).unwrap();
            assert_eq!(whole.len(), old.len());
            assert!(decode_from(&old, Trickle(&payload), len).unwrap() == whole);
            // A correction changes the reference it names, and only that one.
            let fixed = decode(&old, identity_payload(&old, &[(0, 8)], &[]), len).unwrap();
            let changed: Vec<usize> = (0..old.len()).filter(|&i| fixed[i] != whole[i]).collect();
            assert!(!changed.is_empty() && changed.len() <= 8, "{changed:?}");
        }
    }

    /// The device reads a payload's frames through a window of at most 2^20 bytes (a larger
    /// window is refused before anything is read, so memory stays bounded), except the middle
    /// one of three, the diff bytes, which it decompresses into the image in one call.
    #[test]
    fn payloads_are_three_frames_with_a_bounded_window() {
        for image in images() {
            three_frames_with_a_bounded_window(padded(&image, LARGE));
        }
    }

    fn three_frames_with_a_bounded_window(old: Vec<u8>) {
        use crate::{apply_delta, encode_delta, DeltaHeader, Hash, Method};
        let raw = identity_payload(&old, &[(2, 1)], &[]);
        let new = decode(&old, raw.clone(), old.len() as u64).unwrap();
        let header = DeltaHeader {
            method: Method::Elf,
            source: Hash::of(&old),
            target: Hash::of(&new),
            target_size: new.len() as u64,
        };
        let frame = |part: &[u8], wlog: u32| {
            let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
            enc.set_pledged_src_size(Some(part.len() as u64)).unwrap();
            enc.window_log(wlog).unwrap();
            enc.write_all(part).unwrap();
            enc.finish().unwrap()
        };
        let diff = diff_range(&raw).unwrap();
        let (head, mid, tail) = (&raw[..diff.start], &raw[diff.clone()], &raw[diff.end..]);
        let framed = |frames: &[Vec<u8>]| encode_delta(&header, &frames.concat());
        let ok = [frame(head, 20), frame(mid, 23), frame(tail, 20)];
        assert!(apply_delta(&framed(&ok), &old, None).unwrap() == new);
        // A first frame that needs a 2^22 window (it holds the diff bytes too).
        let wide = [frame(&raw[..diff.end], 22), frame(&[], 20), frame(tail, 20)];
        assert!(raw[..diff.end].len() > 1 << 21);
        let err = apply_delta(&framed(&wide), &old, None).unwrap_err();
        assert!(err.to_string().contains("too much memory"), "{err}");
        // Flipped bits anywhere in the three frames: an error, or still the right image.
        let good = framed(&ok);
        let step = (good.len() / 64).max(1);
        for i in (header.encode().len()..good.len()).step_by(step) {
            let mut p = good.clone();
            p[i] ^= 0x10;
            if let Ok(out) = apply_delta(&p, &old, None) {
                assert!(out == new, "flip at {i} accepted with other output");
            }
        }
        // One frame holding the whole payload is the other form (small payloads).
        assert!(apply_delta(&framed(&[frame(&raw, 20)]), &old, None).unwrap() == new);
        // Two frames, four frames, a cut in the wrong place.
        for frames in [
            vec![frame(head, 20), frame(&raw[diff.start..], 20)],
            vec![ok[0].clone(), ok[1].clone(), ok[2].clone(), frame(&[], 20)],
            vec![
                frame(&raw[..diff.start - 1], 20),
                frame(&raw[diff.start - 1..diff.end], 23),
                ok[2].clone(),
            ],
            vec![
                ok[0].clone(),
                frame(&mid[1..], 23),
                frame(&raw[diff.end - 1..], 20),
            ],
        ] {
            assert!(apply_delta(&framed(&frames), &old, None).is_err());
        }
    }

    /// A one-frame payload is decompressed in one call into the buffer that becomes the image
    /// and rearranged in place; the image is the one the streaming decoder builds, from the
    /// old file in memory or read from a file, with copies between the records and seeks both
    /// ways. A frame that does not declare its size is read as a stream.
    #[test]
    fn one_frame_payloads_are_rearranged_in_place_like_a_stream() {
        for image in images() {
            one_frame_rearranged_in_place(padded(&image, LARGE));
        }
    }

    fn one_frame_rearranged_in_place(old: Vec<u8>) {
        use crate::{apply_delta, encode_delta, DeltaHeader, Hash, Method};
        let len = old.len() as u64;
        let (controls, target) = mixed_and_copied(&old);
        let raw = payload_of(&old, &controls, &target, Revision::One);
        let streamed = decode_from(&old, raw.as_slice(), len).unwrap();
        let frame = |with_size: bool| {
            let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
            if with_size {
                enc.set_pledged_src_size(Some(raw.len() as u64)).unwrap();
            } else {
                enc.include_contentsize(false).unwrap();
            }
            enc.window_log(20).unwrap();
            enc.write_all(&raw).unwrap();
            enc.finish().unwrap()
        };
        let bound = u64::MAX;
        for with_size in [true, false] {
            let f = frame(with_size);
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(&f)
                    .unwrap()
                    .is_some(),
                with_size
            );
            assert!(decode_frames(&old, &f, len, bound).unwrap() == streamed);
            let file = Watched::new(Source::Bytes(&old));
            assert!(decode_whole(&file, &f, len, bound).unwrap().is_some() == with_size);
        }
        // An image larger than announced, or a frame larger than the slack allows (read as a
        // stream, which then refuses the records).
        let f = frame(true);
        assert!(decode_frames(&old, &f, len - 1, bound).is_err());
        let old_file = Watched::new(Source::Bytes(&old));
        assert!(decode_whole(&old_file, &f, 1, bound).unwrap().is_none());
        // The same payload decoded from the old file read from disk (a whole delta applied to
        // a file, with flipped bits, is among the delta tests).
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&old).unwrap();
        let from_file = Source::File {
            file: tmp.as_file(),
            path: tmp.path(),
        };
        let header = DeltaHeader {
            method: Method::Elf,
            source: Hash::of(&old),
            target: Hash::of(&streamed),
            target_size: streamed.len() as u64,
        };
        assert!(apply_delta(&encode_delta(&header, &f), &old, None).unwrap() == streamed);
        let file = Watched::new(from_file);
        assert!(decode_frames_from(&file, &f, len, bound).unwrap() == streamed);
        // A source file cut short (its section headers are gone).
        tmp.as_file().set_len(len / 2).unwrap();
        let short = Watched::new(from_file);
        assert!(decode_frames_from(&short, &f, len, bound).is_err());
    }

    /// Revision 5 sends only the nonzero diff bytes, by position, and the records a column at
    /// a time: the records and bytes that give an image in revision 4 give the same image in
    /// revision 5, read as a stream, trickled, as one zstd frame (three are refused) and
    /// from the old file on disk, in a payload a small part of the image.
    #[test]
    fn revision_5_payloads_give_the_image_revision_4_gives() {
        for image in images() {
            revision_5_gives_the_image_of_revision_4(padded(&image, LARGE));
        }
    }

    /// A revision-5 payload framed as one xz stream gives the image its zstd frame gives, from
    /// memory, from the file on disk, in a container and unwrapped for a pack; an xz frame
    /// of an earlier revision, a cut or padded stream and a dictionary over 8 MiB are refused.
    #[test]
    fn xz_framed_payloads_give_the_image_zstd_frames_give() {
        for image in images() {
            xz_framed(padded(&image, LARGE));
        }
    }

    fn xz_framed(old: Vec<u8>) {
        use crate::container::{apply_delta, encode_delta, unwrap_payload, DeltaHeader};
        use crate::elf::testing::xz_frame;
        let len = old.len() as u64;
        let (controls, target) = mixed_and_copied(&old);
        let r5 = payload_of(&old, &controls, &target, Revision::Five);
        let want = decode_from(&old, r5.as_slice(), len).unwrap();
        let xz = xz_frame(&r5, 1 << 16);
        let bound = u64::MAX;
        assert!(decode_frames(&old, &xz, len, bound).unwrap() == want);
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&old).unwrap();
        let on_disk = Watched::new(Source::File {
            file: tmp.as_file(),
            path: tmp.path(),
        });
        assert!(decode_frames_from(&on_disk, &xz, len, bound).unwrap() == want);
        let header = DeltaHeader {
            method: crate::Method::Elf,
            source: crate::Hash::of(&old),
            target: crate::Hash::of(&want),
            target_size: len,
        };
        assert!(apply_delta(&encode_delta(&header, &xz), &old, None).unwrap() == want);
        assert_eq!(unwrap_payload(&header, &xz, u64::MAX).unwrap(), r5);
        let refused = |p: &[u8], why: &str| {
            let err = decode_frames(&old, p, len, bound).unwrap_err();
            assert!(err.0.contains(why), "{err}, expected {why:?}");
            assert!(apply_delta(&encode_delta(&header, p), &old, None).is_err());
        };
        let r4 = payload_of(&old, &controls, &target, Revision::Four);
        refused(&xz_frame(&r4, 1 << 16), "revision 5 or later");
        refused(&xz[..xz.len() - 1], "xz stream");
        refused(&[&xz[..], b"\0"].concat(), "1 bytes follow the xz stream");
        refused(
            &xz_frame(&r5, XZ_DICT_MAX * 2),
            "dictionary is over the limit",
        );
        // Bounded like a zstd frame: a payload longer than the bound is cut and fails.
        assert!(decode_frames(&old, &xz, len, r5.len() as u64 / 2).is_err());
    }

    /// Records with copies between them and seeks both ways over `old` (padded: past its
    /// headers), and a target they make with a few changed bytes inside the mixed ranges.
    fn mixed_and_copied(old: &[u8]) -> ([Control; 3], Vec<u8>) {
        let len = old.len() as u64;
        let (a, b) = (len / 3, 2 * len / 3);
        let controls = [
            Control {
                mix: a,
                copy: 8,
                seek: -50,
            },
            Control {
                mix: b - a - 8,
                copy: 5,
                seek: 63,
            },
            Control {
                mix: len - b - 5,
                copy: 0,
                seek: 7,
            },
        ];
        let mix = controls.iter().map(|c| c.mix as usize).sum();
        let mut target = apply_records(
            &controls,
            &vec![0; mix],
            &[[1; 8], [2; 8]].concat()[..13],
            old,
        )
        .unwrap();
        let (a, b) = (a as usize, b as usize);
        for at in [a - 100, a - 99, a + 8, a + 300, b + 5, old.len() - 1] {
            target[at] = target[at].wrapping_add(3);
        }
        (controls, target)
    }

    fn payload_of(old: &[u8], controls: &[Control], target: &[u8], revision: Revision) -> Vec<u8> {
        let arch = Layout::parse(old).unwrap().arch;
        let mut raw =
            build_payload(arch, &BtfShifts::default(), revision, controls, old, target).unwrap();
        raw.extend_from_slice(&encode_corrections(&[(1, 3)]));
        raw
    }

    fn revision_5_gives_the_image_of_revision_4(old: Vec<u8>) {
        let len = old.len() as u64;
        let (controls, target) = mixed_and_copied(&old);
        let r4 = payload_of(&old, &controls, &target, Revision::Four);
        let r5 = payload_of(&old, &controls, &target, Revision::Five);
        assert_eq!(r5[0] & 0x78, 0x78, "revision 5 sets the flags of 2 to 5");
        assert!(r5.len() < 100, "{} bytes", r5.len());
        let four = decode_from(&old, r4.as_slice(), len).unwrap();
        assert!(four != old);
        assert!(decode_from(&old, r5.as_slice(), len).unwrap() == four);
        assert!(decode_from(&old, Trickle(&r5), len).unwrap() == four);
        let frame = |part: &[u8]| zstd::bulk::compress(part, 3).unwrap();
        let bound = u64::MAX;
        assert!(decode_frames(&old, &frame(&r5), len, bound).unwrap() == four);
        let file = Watched::new(Source::Bytes(&old));
        let err = decode_whole(&file, &frame(&r5), len, bound).unwrap_err();
        assert!(err.0.contains("read as a stream"), "{err}");
        let cut = r5.len() / 2;
        let three = [frame(&r5[..cut]), frame(&[]), frame(&r5[cut..])].concat();
        let err = decode_frames(&old, &three, len, bound).unwrap_err();
        assert!(err.0.contains("one zstd frame, not three"), "{err}");
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&old).unwrap();
        let on_disk = Watched::new(Source::File {
            file: tmp.as_file(),
            path: tmp.path(),
        });
        assert!(decode_frames_from(&on_disk, &frame(&r5), len, bound).unwrap() == four);
        // Cut anywhere: refused.
        for n in 0..r5.len() {
            assert!(decode_from(&old, &r5[..n], len).is_err(), "{n} bytes");
        }
    }

    #[test]
    fn hostile_revision_5_payloads_fail_cleanly() {
        for image in images() {
            hostile_revision_5_on(padded(&image, LARGE));
        }
    }

    fn hostile_revision_5_on(old: Vec<u8>) {
        let len = old.len() as u64;
        let arch = Layout::parse(&old).unwrap().arch as u8;
        let flags = HAS_REVISION_2 | HAS_REVISION_3 | HAS_REVISION_4 | HAS_REVISION_5;
        let refused = |p: Vec<u8>, why: &str| {
            let err = decode(&old, p, len).unwrap_err();
            assert!(err.0.contains(why), "{err}, expected {why:?}");
        };
        // One record over the whole file, `count` nonzero diff bytes with these gaps.
        let one = |count: u64, gaps: &[u64]| {
            let mut p = vec![arch | flags];
            for v in [1, len, 0, len, count] {
                put_varint(&mut p, v);
            }
            gaps.iter().for_each(|&g| put_varint(&mut p, g));
            p.extend(gaps.iter().map(|_| 1u8));
            put_varint(&mut p, 0);
            put_varint(&mut p, 0);
            p
        };
        let image = decode(&old, one(2, &[len - 3, 1]), len).unwrap();
        let n = len as usize;
        assert_eq!(
            (image[n - 3], image[n - 2], image[n - 1]),
            (old[n - 3] + 1, old[n - 2], old[n - 1] + 1)
        );
        refused(one(len + 1, &[]), "more than the");
        refused(one(1, &[len]), "position past the diff bytes");
        refused(one(2, &[len - 1, 0]), "position past the diff bytes");
        refused(one(2, &[u64::MAX, 1]), "position past the diff bytes");
        refused(one(2, &[0]), "truncated");
        // Revision 5 without revision 4.
        let mut p = one(0, &[]);
        p[0] = arch | HAS_REVISION_2 | HAS_REVISION_3 | HAS_REVISION_5;
        refused(p, "revision 5 without revision 4");
        // More records than an image of this size may have: refused before they are read.
        let mut p = vec![arch | flags];
        put_varint(&mut p, max_records(len) + 1);
        refused(p, "more than an image of");
        // A second record whose old start lies before the old file or past it.
        for diagonal in [-(len as i64), len as i64] {
            let mut p = vec![arch | flags];
            for v in [2, len / 2, len - len / 2, 0, 0] {
                put_varint(&mut p, v);
            }
            put_varint(&mut p, zigzag(diagonal) << 2);
            for v in [len, 0, 0, 0] {
                put_varint(&mut p, v);
            }
            refused(p, "old file");
        }
    }

    #[test]
    fn hostile_payloads_fail_cleanly() {
        for old in images() {
            hostile_payloads_fail_cleanly_on(old);
        }
    }

    fn hostile_payloads_fail_cleanly_on(old: Vec<u8>) {
        let arch = Layout::parse(&old).unwrap().arch as u8;
        let len = old.len() as u64;
        let payload = identity_payload(&old, &[(3, 1)], &[]);
        // Truncated anywhere: in the records, the diff stream, the corrections.
        for n in [
            0,
            1,
            2,
            5,
            20,
            payload.len() / 2,
            payload.len() - 2,
            payload.len() - 1,
        ] {
            assert!(decode(&old, payload[..n].to_vec(), len).is_err(), "{n}");
        }
        // Trailing bytes; a correction past the last reference; an image over the bound.
        assert!(decode(&old, identity_payload(&old, &[], &[0]), len).is_err());
        let far = identity_payload(&old, &[(usize::MAX >> 1, 1)], &[]);
        assert!(decode(&old, far, len).is_err());
        assert!(decode(&old, payload.clone(), len - 1).is_err());
        // Records promising far more than the payload holds: refused before any allocation
        // beyond the bound, or by the stream running out.
        let mut huge = vec![arch];
        put_varint(&mut huge, 1);
        put_varint(&mut huge, 0);
        put_varint(&mut huge, u64::MAX / 2);
        put_varint(&mut huge, 0);
        assert!(decode(&old, huge, 1 << 40).is_err());
        let mut short = vec![arch];
        put_varint(&mut short, 1);
        put_varint(&mut short, 16);
        put_varint(&mut short, 1 << 20);
        put_varint(&mut short, 0);
        put_varint(&mut short, 16);
        short.extend_from_slice(&[0; 16]);
        put_varint(&mut short, 1 << 20);
        assert!(decode(&old, short, len).is_err());
        // Revision 3 without revision 2.
        let mut p = payload.clone();
        p[0] = arch | HAS_REVISION_3;
        let err = decode(&old, p, len).unwrap_err();
        assert!(err.0.contains("revision 3 without revision 2"), "{err}");
        // Revision 4 without revision 3.
        let mut p = payload.clone();
        p[0] = arch | HAS_REVISION_2 | HAS_REVISION_4;
        let err = decode(&old, p, len).unwrap_err();
        assert!(err.0.contains("revision 4 without revision 3"), "{err}");
        // A record reading before or past the old file.
        for seek in [1i64, -100] {
            let mut p = vec![arch];
            put_varint(&mut p, 2);
            for (mix, seek) in [(0, seek), (len, 0)] {
                put_varint(&mut p, mix);
                put_varint(&mut p, 0);
                put_varint(&mut p, zigzag(seek));
            }
            put_varint(&mut p, len);
            p.resize(p.len() + old.len(), 0);
            put_varint(&mut p, 0);
            put_varint(&mut p, 0);
            let err = decode(&old, p, len).unwrap_err();
            assert!(err.0.contains("old file"), "{err}");
        }
    }
}
