//! The `xz` method's encoder: for files that hold an xz stream (a compressed kernel, an `.xz`
//! file), diff the decompressed contents and the bytes around the stream apart.
//!
//! The stream's headers name its check, filters and dictionary; the preset is the first
//! candidate whose compression of the new contents agrees with the stream's first 64 KiB (the
//! corpus kernel: `xz --check=crc32 --x86 --lzma2=dict=32MiB`, preset 6). Whether the whole
//! stream comes out byte for byte is left to the engine's round trip of every candidate
//! ([`engine::candidates`]), which rebuilds the file as the device does: compressing the
//! whole stream here as well doubled the method's cost (two 16 s passes over corpus
//! `vmlinuz`'s 66 MB). A stream whose first 64 KiB agree and whose rest does not (one cut into
//! blocks by a multi-threaded `xz`) fails that round trip, and the other methods compete
//! without it. The contents are diffed with the engine's own methods (the ELF method for a
//! kernel image), the surroundings with zstd patch-from. The decoder is
//! `deltaroot_format::xz`.

use deltaroot_format::xz::{self, Options, Patch, EXTREME};
use deltaroot_format::Method;

use crate::competition::{self as engine, EngineOptions};

/// Presets tried, most common first (xz's default 6, then 9, each plain and extreme).
const PRESETS: [u32; 20] = [
    6,
    9,
    6 | EXTREME,
    9 | EXTREME,
    0,
    1,
    2,
    3,
    4,
    5,
    7,
    8,
    EXTREME,
    1 | EXTREME,
    2 | EXTREME,
    3 | EXTREME,
    4 | EXTREME,
    5 | EXTREME,
    7 | EXTREME,
    8 | EXTREME,
];
/// Compressed bytes compared before a preset is tried on the whole stream.
const PROBE: usize = 64 << 10;
/// Largest decompressed stream the encoder handles.
const RAW_MAX: u64 = 1 << 30;

/// Whether `data` holds an xz stream the method may apply to (the engine's cheap test).
pub fn holds_stream(data: &[u8]) -> bool {
    xz::find_stream(data).is_some()
}

/// The `xz` payload for `old` -> `new`, or `None` when the method does not apply.
pub fn encode(old: &[u8], new: &[u8], opts: &EngineOptions) -> std::io::Result<Option<Vec<u8>>> {
    let (Some(new_at), Some(old_at)) = (xz::find_stream(new), xz::find_stream(old)) else {
        return Ok(None);
    };
    let Some((check, bcj, dict)) = xz::stream_options(&new[new_at..]) else {
        return Ok(None);
    };
    let limit = |len: usize| xz::contents_limit(len as u64).min(RAW_MAX);
    let Ok((raw_new, new_len)) = xz::decode_stream(&new[new_at..], limit(new.len())) else {
        return Ok(None);
    };
    let stream = &new[new_at..new_at + new_len];
    let mut options = None;
    for preset in PRESETS {
        let o = Options {
            check,
            bcj,
            preset,
            dict,
        };
        let head = xz::encode(&raw_new, &o, Some(PROBE))?;
        let n = head.len().min(stream.len());
        if head[..n] == stream[..n] {
            options = Some(o);
            break;
        }
    }
    let Some(options) = options else {
        return Ok(None);
    };
    let Ok((raw_old, old_len)) = xz::decode_stream(&old[old_at..], limit(old.len())) else {
        return Ok(None);
    };
    let new_frame = xz::frame_of(new, new_at, new_len);
    let frame = engine::zstd_patch_from(
        &xz::frame_of(old, old_at, old_len),
        &new_frame,
        opts.level,
        false,
    )?;
    let inner = engine::smallest_payload(&raw_old, &raw_new, opts, &INNER)?;
    let Some((inner, payload)) = inner else {
        return Ok(None);
    };
    Ok(Some(
        Patch {
            options,
            source_at: old_at as u64,
            source_len: old_len as u64,
            target_at: new_at as u64,
            source_size: raw_old.len() as u64,
            target_size: raw_new.len() as u64,
            frame: &frame,
            frame_size: new_frame.len() as u64,
            inner,
            payload: &payload,
        }
        .encode(),
    ))
}

/// Methods the contents may be diffed with inside an `xz` delta.
pub const INNER: [Method; 3] = [Method::Elf, Method::BsdiffZstd, Method::ZstdPatchFrom];

#[cfg(test)]
mod tests {
    use super::*;
    use deltaroot_format::xz::Bcj;
    use deltaroot_format::{apply_delta, Hash};

    /// A stand-in for a compressed kernel: setup bytes, an xz stream, a trailer.
    fn image(contents: &[u8], setup: &[u8], preset: u32) -> Vec<u8> {
        let o = Options {
            check: 1,
            bcj: Bcj::X86,
            preset,
            dict: 1 << 20,
        };
        let mut out = setup.to_vec();
        out.extend(xz::encode(contents, &o, None).unwrap());
        out.extend_from_slice(&(contents.len() as u32).to_le_bytes());
        out
    }

    fn contents(seed: u32) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..40_000u32 {
            let v = i.wrapping_mul(2_654_435_761) >> 20;
            out.extend_from_slice(&(v + if i % 997 == 0 { seed } else { 0 }).to_le_bytes());
        }
        out
    }

    #[test]
    fn a_compressed_image_costs_what_its_contents_changed() {
        let opts = EngineOptions {
            level: 19,
            ..Default::default()
        };
        for preset in [6, 1 | EXTREME] {
            let old = image(&contents(1), b"setup v1 ", preset);
            let new = image(&contents(2), b"setup v2 ", preset);
            let c = engine::candidates(&old, &new, &opts).unwrap();
            assert_eq!(c[0].method, Method::Xz, "preset {preset:#x}");
            let back = apply_delta(&c[0].bytes, &old, Some((Hash::of(&new), new.len() as u64)));
            assert_eq!(back.unwrap(), new);
            let generic = c.iter().find(|c| c.method != Method::Xz).unwrap();
            assert!(
                c[0].bytes.len() * 3 < generic.bytes.len(),
                "xz {} vs {} {}",
                c[0].bytes.len(),
                generic.method,
                generic.bytes.len()
            );
        }
    }

    /// A stream that agrees with preset 6 over its first 64 KiB and not after: here an encoder
    /// that ends its LZMA2 chunk early three quarters of the way through, as another encoder
    /// could. The round trip drops the xz candidate and the other methods still give one.
    #[test]
    fn a_stream_that_agrees_only_at_its_start_falls_back_to_the_other_methods() {
        use liblzma::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};
        // Incompressible contents, so the stream is longer than the probe.
        let raw = crate::testing::pseudo_random(300_000, 7, 256);
        let mut raw_old = raw.clone();
        raw_old[1_000..1_016].copy_from_slice(&[0; 16]);
        // (x86 BCJ refuses a flush midway: the stream has LZMA2 alone.)
        let mut filters = Filters::new();
        filters.lzma2(LzmaOptions::new_preset(6).unwrap().dict_size(1 << 20));
        let mut s = Stream::new_stream_encoder(&filters, Check::Crc32).unwrap();
        let mut stream = Vec::with_capacity(raw.len());
        let cut = raw.len() * 3 / 4;
        for (part, action) in [
            (&raw[..cut], Action::SyncFlush),
            (&raw[cut..], Action::Finish),
        ] {
            let start = s.total_in();
            // Both actions end in StreamEnd once done (liblzma's LZMA_STREAM_END).
            loop {
                let at = (s.total_in() - start) as usize;
                stream.reserve(1 << 16);
                if s.process_vec(&part[at..], &mut stream, action).unwrap() == Status::StreamEnd {
                    break;
                }
            }
        }
        let o = Options {
            check: 1,
            bcj: Bcj::None,
            preset: 6,
            dict: 1 << 20,
        };
        let plain = xz::encode(&raw, &o, None).unwrap();
        assert!(stream.len() > PROBE, "{} bytes", stream.len());
        assert_eq!(plain[..PROBE], stream[..PROBE]);
        assert_ne!(plain, stream);
        let mut old = b"setup v1 ".to_vec();
        old.extend(xz::encode(&raw_old, &o, None).unwrap());
        let mut new = b"setup v2 ".to_vec();
        new.extend(&stream);
        let c = engine::candidates(&old, &new, &EngineOptions::default()).unwrap();
        // The same contents as one plain stream: the xz method wins.
        let mut whole = b"setup v2 ".to_vec();
        whole.extend(&plain);
        let w = engine::candidates(&old, &whole, &EngineOptions::default()).unwrap();
        assert_eq!(w[0].method, Method::Xz);
        assert!(!c.is_empty());
        assert!(c.iter().all(|c| c.method != Method::Xz));
    }

    #[test]
    fn hostile_xz_patches_fail_cleanly() {
        let opts = EngineOptions::default();
        let old = image(&contents(1), b"setup v1 ", 6);
        let new = image(&contents(2), b"setup v2 ", 6);
        let patch = engine::candidates(&old, &new, &opts).unwrap()[0]
            .bytes
            .clone();
        let apply = |p: &[u8]| apply_delta(p, &old, Some((Hash::of(&new), new.len() as u64)));
        for n in 0..patch.len() {
            assert!(apply(&patch[..n]).is_err(), "prefix of {n} bytes accepted");
        }
        for i in deltaroot_format::container::HEADER_LEN..patch.len().min(200) {
            for bit in [0x01u8, 0x80] {
                let mut p = patch.clone();
                p[i] ^= bit;
                if let Ok(out) = apply(&p) {
                    assert_eq!(out, new);
                }
            }
        }
    }
}
