//! The per-file diff engine: every method the publisher can send, each candidate checked
//! to apply back to the exact new bytes, and the smallest kept.
//!
//! Methods: zstd with the old file as a referenced prefix ("patch-from"), bsdiff with a
//! zstd-compressed patch, ELF-aware (`crate::elf`), gzip contents (`crate::gzip`), and the
//! whole file compressed with zstd (the object itself).
//! New methods slot in as one more candidate in [`candidates`].

use deltaroot_format::{apply_delta, encode_delta, DeltaHeader, Hash, Method};

use crate::error::{Error, Result};

/// Tuning of the engine.
#[derive(Clone, Copy, Debug)]
pub struct EngineOptions {
    /// zstd level for delta payloads and for the objects an update downloads.
    pub level: i32,
    /// zstd level for the objects of contents a delta sends (what only a fresh install
    /// downloads); `level` is used where the delta does not clearly win.
    pub install_level: i32,
    /// Files larger than this are not given to bsdiff (its suffix sort needs ~9x memory).
    pub bsdiff_max: u64,
    /// Pairs whose two files together are larger than this are not given to zstd patch-from:
    /// a device rebuilds such a content with the source, the target and the frame's window
    /// in memory, where bsdiff and whole objects stream into the file in a few MiB
    /// (`deltaroot_format::streamed`).
    pub patch_from_max: u64,
    /// Only this method (`Zstd`: whole files only), to measure one method alone.
    pub only: Option<Method>,
    /// Frame revision-5 ELF payloads as xz where that is smaller (FORMAT.md §6.2); off, they
    /// stay zstd frames, which agents that predate xz framing read.
    pub elf_xz: bool,
    /// Methods never tried, inside `gzip` and `xz` deltas too (where a device's time to apply
    /// them matters more than the bytes they save): such files go by another method or whole.
    pub skip: MethodSet,
}

/// A set of delta methods (one bit per method number).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MethodSet(u32);

impl MethodSet {
    pub fn contains(self, m: Method) -> bool {
        self.0 & 1 << m as u32 != 0
    }

    pub fn insert(&mut self, m: Method) {
        self.0 |= 1 << m as u32;
    }

    /// The methods in the set, in [`Method::ALL`] order.
    pub fn methods(self) -> Vec<Method> {
        Method::ALL
            .into_iter()
            .filter(|m| self.contains(*m))
            .collect()
    }
}

impl FromIterator<Method> for MethodSet {
    fn from_iter<I: IntoIterator<Item = Method>>(iter: I) -> Self {
        let mut set = MethodSet::default();
        for m in iter {
            set.insert(m);
        }
        set
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            level: 19,
            install_level: 14,
            bsdiff_max: 1 << 30,
            patch_from_max: PATCH_FROM_MAX,
            only: None,
            elf_xz: true,
            skip: MethodSet::default(),
        }
    }
}

/// The default of [`EngineOptions::patch_from_max`]: 64 MiB for the two files together.
pub const PATCH_FROM_MAX: u64 = 64 << 20;

/// Largest window (as a log) of a bsdiff payload's frame: a device decompresses it as it
/// rebuilds the file, through at most 8 MiB (a payload of a few MiB compresses the same).
pub const BSDIFF_WINDOW_LOG_MAX: u32 = 23;

/// Smallest window log (zstd's) that covers `n` bytes, clamped to what every decoder accepts.
fn window_log_for(n: usize) -> u32 {
    let bits = usize::BITS - n.max(2).saturating_sub(1).leading_zeros();
    bits.clamp(10, deltaroot_format::container::MAX_WINDOW_LOG.min(30))
}

/// Compresses a whole object: what a device fetches when no delta is smaller.
pub fn compress_object(data: &[u8], level: i32) -> Result<Vec<u8>> {
    let wlog = window_log_for(data.len()).min(27);
    one_frame(data, &[], level, wlog, None, false).map_err(|e| Error::Encode {
        method: "zstd",
        what: Hash::of(data).to_string(),
        reason: e.to_string(),
    })
}

/// A manifest sent as a delta from an older one (FORMAT.md §3.8): a method 1 container,
/// zstd level 19 with the old manifest's bytes as prefix, built by the server for devices
/// that name the manifest they run.
pub fn manifest_delta(old: &[u8], new: &[u8]) -> Result<Vec<u8>> {
    let payload = zstd_patch_from(old, new, 19, false).map_err(|e| Error::Encode {
        method: "zstd-patch-from",
        what: "a manifest delta".into(),
        reason: e.to_string(),
    })?;
    let header = DeltaHeader {
        method: Method::ZstdPatchFrom,
        source: Hash::of(old),
        target: Hash::of(new),
        target_size: new.len() as u64,
    };
    Ok(encode_delta(&header, &payload))
}

/// zstd with `old` as a referenced prefix. `light` caps the match finder's tables at a quarter
/// of the window each, for pairs where another method is expected to win (corpus `libcurl`:
/// 69,304 bytes instead of 68,397, in 12 MiB instead of 30).
pub(crate) fn zstd_patch_from(
    old: &[u8],
    new: &[u8],
    level: i32,
    light: bool,
) -> std::io::Result<Vec<u8>> {
    let wlog = window_log_for(old.len() + new.len());
    delta_frame(new, old, level, wlog, light.then_some((2, 2)))
}

/// The frame settings of every delta payload (FORMAT.md §6.2): content size, no checksum,
/// window log `wlog`, long-distance matching past 2^27. `cap` lowers the chain and hash
/// tables to the window log minus the given amounts (no effect on small windows).
fn delta_frame(
    data: &[u8],
    prefix: &[u8],
    level: i32,
    wlog: u32,
    cap: Option<(u32, u32)>,
) -> std::io::Result<Vec<u8>> {
    one_frame(
        data,
        prefix,
        level,
        wlog,
        cap.filter(|_| wlog > 16),
        wlog > 27,
    )
}

/// Compresses `data` into one zstd frame in one call, with its content size and no checksum,
/// window log `wlog`, the chain and hash tables at `wlog` minus `cap`, long-distance matching
/// when `ldm`, and `prefix` referenced when it is not empty. Given the whole input and an
/// output buffer of the worst-case size, zstd keeps no window or staging buffers of its own,
/// only its match tables (corpus `ko-e1000e`, ELF payload at level 19: 2.3 MiB instead of 3.5);
/// the frame is the one the streaming encoder writes with the same settings.
fn one_frame(
    data: &[u8],
    prefix: &[u8],
    level: i32,
    wlog: u32,
    cap: Option<(u32, u32)>,
    ldm: bool,
) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::{compress_bound, get_error_name, CCtx, CParameter};
    let fail = |code: usize| std::io::Error::other(get_error_name(code));
    let mut cctx =
        CCtx::try_create().ok_or_else(|| std::io::Error::other("cannot create a zstd context"))?;
    let mut params = vec![
        CParameter::CompressionLevel(level),
        CParameter::ChecksumFlag(false),
        CParameter::ContentSizeFlag(true),
        CParameter::WindowLog(wlog),
    ];
    if let Some((chain, hash)) = cap {
        params.push(CParameter::ChainLog(wlog - chain));
        params.push(CParameter::HashLog(wlog - hash));
    }
    if ldm {
        params.push(CParameter::EnableLongDistanceMatching(true));
    }
    for p in params {
        cctx.set_parameter(p).map_err(fail)?;
    }
    cctx.set_pledged_src_size(Some(data.len() as u64))
        .map_err(fail)?;
    if !prefix.is_empty() {
        cctx.ref_prefix(prefix).map_err(fail)?;
    }
    let mut out = Vec::new();
    out.try_reserve_exact(compress_bound(data.len()))
        .map_err(|_| std::io::Error::other("cannot allocate the compressed frame"))?;
    cctx.compress2(&mut out, data).map_err(fail)?;
    drop(cctx);
    out.shrink_to_fit();
    Ok(out)
}

/// Highest zstd level for patch-from on a pair of ELF images (see [`candidates_of`]).
pub const ELF_PATCH_FROM_LEVEL: i32 = 9;

fn is_elf(data: &[u8]) -> bool {
    data.starts_with(b"\x7fELF")
}

/// Compresses a delta payload. The match-finder tables are capped below zstd's defaults for
/// the level (chain table a quarter of the window, hash table a sixteenth): delta payloads are
/// long runs of zero bytes and literal inserts, where the deeper search finds nothing more
/// (corpus `git`, ELF payload: 10,485 bytes with level 19's tables, 10,480 with the capped
/// ones, in a fifth of the memory).
pub(crate) fn compress_payload(raw: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    compress_payload_within(raw, level, u32::MAX)
}

/// [`compress_payload`] with the window log at most `max_wlog` (the ELF method's payload is
/// read by the device as it decompresses, through a window of at most 2^20 bytes). One frame
/// of the delta settings ([`delta_frame`]), in one call: the streaming encoder copied the
/// payload through a window buffer of its own (corpus `ko-e1000e`: generation peak 360 KiB
/// lower, median of seven runs; bytes within 0.3% either way).
fn compress_payload_within(raw: &[u8], level: i32, max_wlog: u32) -> std::io::Result<Vec<u8>> {
    let wlog = window_log_for(raw.len()).min(max_wlog);
    delta_frame(raw, &[], level, wlog, (level >= 16).then_some((2, 4)))
}

/// Compresses a method-4 payload (FORMAT.md §6.2). The device reads its frames as they
/// decompress through a window of at most 2^20 bytes. A payload larger than 4 MiB is cut into
/// three frames: the diff bytes alone, with the window sized to them, which the device
/// decompresses in one call into the image, needing no window (1 MiB less to apply). Each
/// frame carries its own entropy tables and the last can no longer refer to the first two:
/// on the corpus that cost 0.0 to 0.2% above 4 MiB (`postgres`, `python3.11`, `libcrypto`,
/// `ko-i915`; `libpython3.11` gained 34 bytes) but up to 4% below (`ko-btrfs`: 154,599 ->
/// 160,628 bytes, `libc` 2.2%), where the payload stays one frame. (Making both and keeping
/// the smaller cost `ko-btrfs` a second level-19 pass: 1 s.)
///
/// A payload of revision 5 ([`deltaroot_format::elf::HAS_REVISION_5`]) is always one frame:
/// its diff bytes are sparse, so it is a small part of the image, read as a stream. At the
/// publisher's levels (16 and up) it is framed as xz ([`compress_xz_payload`]): from 64 KiB
/// on without trying zstd, below that when xz is the smaller.
fn compress_elf_payload(raw: &[u8], level: i32, xz: bool) -> std::io::Result<Vec<u8>> {
    let max = deltaroot_format::elf::WINDOW_LOG_MAX;
    let sparse = raw
        .first()
        .is_some_and(|b| b & deltaroot_format::elf::HAS_REVISION_5 != 0);
    if sparse {
        let zstd = || compress_payload_within(raw, level, max);
        if !xz || level < XZ_PAYLOAD_LEVEL {
            return zstd();
        }
        let xz = compress_xz_payload(raw)?;
        if raw.len() >= XZ_PAYLOAD_ALONE {
            return Ok(xz);
        }
        let zstd = zstd()?;
        return Ok(if xz.len() < zstd.len() { xz } else { zstd });
    }
    if raw.len() <= 4 << 20 {
        return compress_payload_within(raw, level, max);
    }
    let diff =
        deltaroot_format::elf::diff_range(raw).map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut out = compress_payload_within(&raw[..diff.start], level, max)?;
    out.extend(compress_payload(&raw[diff.clone()], level)?);
    out.extend(compress_payload_within(&raw[diff.end..], level, max)?);
    Ok(out)
}

/// Lowest zstd level (`--level`) at which a revision-5 ELF payload is framed as xz: below
/// it the publisher was asked for speed, and zstd is faster to encode and to decode.
const XZ_PAYLOAD_LEVEL: i32 = 16;

/// Raw payloads at least this long are framed as xz without trying zstd beside it: on the
/// corpus xz was smaller on every such payload (5 to 7%), and its encoder runs at zstd's
/// level-19 speed (`python3.11`: 0.24 s against 0.22), so trying both would double the time.
/// Below it both are tried and the smaller kept (xz's stream framing costs about 60 bytes).
const XZ_PAYLOAD_ALONE: usize = 64 << 10;

/// A revision-5 ELF payload as one xz stream (FORMAT.md §6.2): LZMA2 alone, preset 6 with no
/// position bits (`pb=0`: instruction bytes have no 2- or 4-byte alignment to model; corpus,
/// against the default `pb=2`: `python3.11` 528.1 to 527.3 kB, `postgres` 209.1 to 208.5),
/// the dictionary the payload's size rounded up to a power of two, at most 8 MiB
/// (`elf::XZ_DICT_MAX`, what a device holds to decode it), and no check: the container's
/// hash covers the result. Encoder memory: about 11x the dictionary, at most 94 MiB.
pub fn compress_xz_payload(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    use liblzma::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};
    let fail = |e: liblzma::stream::Error| std::io::Error::other(format!("xz encoder: {e}"));
    let dict = (raw.len().max(4096).next_power_of_two() as u64)
        .min(u64::from(deltaroot_format::elf::XZ_DICT_MAX)) as u32;
    let mut lzma = LzmaOptions::new_preset(6).map_err(fail)?;
    lzma.dict_size(dict)
        .literal_context_bits(3)
        .literal_position_bits(0)
        .position_bits(0);
    let mut filters = Filters::new();
    filters.lzma2(&lzma);
    let mut s = Stream::new_stream_encoder(&filters, Check::None).map_err(fail)?;
    let mut out = Vec::with_capacity(raw.len() / 3 + 4096);
    loop {
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(1 << 16));
        }
        let at = usize::try_from(s.total_in()).map_err(|_| std::io::Error::other("too long"))?;
        if s.process_vec(&raw[at..], &mut out, Action::Finish)
            .map_err(fail)?
            == Status::StreamEnd
        {
            out.shrink_to_fit();
            return Ok(out);
        }
    }
}

/// One encoded delta.
#[derive(Clone, Debug)]
pub struct Candidate {
    pub method: Method,
    /// The whole container, header included.
    pub bytes: Vec<u8>,
}

/// Encodes `new` against `old` with every applicable delta method, checks that each one
/// applies back to `new` exactly, and returns them smallest first. Methods that fail to
/// encode, or encode but do not round-trip (logged as a bug), are skipped.
pub fn candidates(old: &[u8], new: &[u8], opts: &EngineOptions) -> Result<Vec<Candidate>> {
    candidates_of(old, new, opts, opts.only)
}

/// The delta methods that apply to this pair and are not skipped, or just `only` where it
/// applies.
fn methods_for(old: &[u8], new: &[u8], opts: &EngineOptions, only: Option<Method>) -> Vec<Method> {
    let mut methods = Vec::new();
    if deltaroot_format::gzip::is_gzip(old) && deltaroot_format::gzip::is_gzip(new) {
        methods.push(Method::Gzip);
    }
    if crate::xz::holds_stream(new) && crate::xz::holds_stream(old) {
        methods.push(Method::Xz);
    }
    if deltaroot_format::bitcode::is_bitcode(old) && deltaroot_format::bitcode::is_bitcode(new) {
        methods.push(Method::Bitcode);
    }
    if (old.len() as u64) <= opts.bsdiff_max && (new.len() as u64) <= opts.bsdiff_max {
        if is_elf(old) && is_elf(new) {
            methods.push(Method::Elf);
        }
        methods.push(Method::BsdiffZstd);
    }
    methods.push(Method::ZstdPatchFrom);
    methods.retain(|m| only.is_none_or(|o| o == *m) && !opts.skip.contains(*m));
    methods
}

/// Why `method` gives no delta for `old` -> `new` under `opts`: what a `diff --method` that
/// finds none reports. Told from the options and the files' first bytes and headers, without
/// encoding; where those allow the method, its encoder declined or failed, which it logs.
pub fn why_not(old: &[u8], new: &[u8], opts: &EngineOptions, method: Method) -> String {
    let larger = |limit: u64, option: &str| {
        let (which, size) = if old.len() >= new.len() {
            ("old", old.len())
        } else {
            ("new", new.len())
        };
        format!(
            "the {which} file ({size} bytes) is larger than {option}'s {} MiB",
            limit >> 20
        )
    };
    let fits = |limit: u64| (old.len() as u64) <= limit && (new.len() as u64) <= limit;
    if opts.skip.contains(method) {
        return format!("--skip-method {method} skips it");
    }
    match method {
        Method::Elf if !(is_elf(old) && is_elf(new)) => {
            "both files must start with the ELF magic \\x7fELF".into()
        }
        Method::Elf | Method::BsdiffZstd if !fits(opts.bsdiff_max) => {
            larger(opts.bsdiff_max, "--bsdiff-max-mib")
        }
        Method::Elf => crate::elf::refusal(old, new).unwrap_or_else(|| {
            "its normalised image does not restore to the new file (RUST_LOG=debug tells more)"
                .into()
        }),
        Method::ZstdPatchFrom
            if (old.len() as u64).saturating_add(new.len() as u64) > opts.patch_from_max =>
        {
            format!(
                "the two files together ({} bytes) are larger than --patch-from-max-mib's {} MiB",
                old.len() as u64 + new.len() as u64,
                opts.patch_from_max >> 20
            )
        }
        Method::Gzip
            if !(deltaroot_format::gzip::is_gzip(old) && deltaroot_format::gzip::is_gzip(new)) =>
        {
            "both files must be gzip files".into()
        }
        Method::Xz if !(crate::xz::holds_stream(old) && crate::xz::holds_stream(new)) => {
            "both files must hold an xz stream".into()
        }
        Method::Bitcode
            if !(deltaroot_format::bitcode::is_bitcode(old)
                && deltaroot_format::bitcode::is_bitcode(new)) =>
        {
            "both files must be raw LLVM bitcode (BC C0 DE)".into()
        }
        _ => "its encoder declined or failed (RUST_LOG=debug tells more)".into(),
    }
}

/// The payload of each of `methods` that encodes this pair, in order; an error of one method
/// is kept beside it, so the others still compete.
///
/// The methods run one after another, so peak memory is the largest one's, not their sum
/// (the publisher already runs one file per core). The ELF method sorts its own suffix
/// array; plain bsdiff, which runs only where that method does not encode, builds one of
/// `old` after it. For a pair of ELF
/// images the ELF method is the one expected to win, and zstd patch-from runs light (capped
/// tables) at [`ELF_PATCH_FROM_LEVEL`] at most: on x86-64 binaries its optimal parser at
/// level 19 takes ~25x longer for a larger patch (corpus `git`: 173,644 bytes in 5.9 s at 19,
/// 168,855 bytes in 0.19 s at 9).
type Payloads = Vec<(Method, std::io::Result<Vec<u8>>)>;

fn payloads(old: &[u8], new: &[u8], opts: &EngineOptions, methods: &[Method]) -> Result<Payloads> {
    let mut index = None;
    let mut encoded: Payloads = Vec::new();
    for &method in methods {
        let payload = match method {
            Method::ZstdPatchFrom => {
                let elf = methods.contains(&Method::Elf);
                let level = if elf {
                    opts.level.min(ELF_PATCH_FROM_LEVEL)
                } else {
                    opts.level
                };
                zstd_patch_from(old, new, level, elf)
            }
            // The ELF method's patch is this same matcher run on an image whose references
            // already agree with the old file: where it encodes, plain bsdiff is not tried.
            Method::BsdiffZstd if encoded.iter().any(|(m, p)| *m == Method::Elf && p.is_ok()) => {
                continue
            }
            Method::BsdiffZstd => {
                let index = index.get_or_insert_with(|| crate::bsdiff::Index::new(old));
                let raw = crate::bsdiff::interleave(&index.diff(new));
                compress_payload_within(&raw, opts.level, BSDIFF_WINDOW_LOG_MAX)
            }
            Method::Elf => match crate::elf::encode(old, new)? {
                Some(raw) => compress_elf_payload(&raw, opts.level, opts.elf_xz),
                None => continue,
            },
            Method::Gzip => match crate::gzip::encode(old, new, opts).transpose() {
                Some(p) => p,
                None => continue,
            },
            Method::Xz => match crate::xz::encode(old, new, opts).transpose() {
                Some(p) => p,
                None => continue,
            },
            Method::Bitcode => match crate::bitcode::encode(old, new, opts).transpose() {
                Some(p) => p,
                None => continue,
            },
            Method::Zstd => unreachable!("whole objects are not deltas"),
        };
        encoded.push((method, payload));
    }
    Ok(encoded)
}

/// The inner methods of a `gzip` or `bitcode` delta: the generic ones.
pub(crate) const GENERIC: [Method; 2] = [Method::ZstdPatchFrom, Method::BsdiffZstd];

/// The smallest payload among `allowed` of the methods that apply to this pair (what the
/// `gzip`, `xz` and `bitcode` methods send between decompressed or unpacked contents), not
/// applied back on its own: the enclosing candidate is.
pub(crate) fn smallest_payload(
    old: &[u8],
    new: &[u8],
    opts: &EngineOptions,
    allowed: &[Method],
) -> std::io::Result<Option<(Method, Vec<u8>)>> {
    let methods: Vec<Method> = methods_for(old, new, opts, None)
        .into_iter()
        .filter(|m| allowed.contains(m))
        .collect();
    let payloads =
        payloads(old, new, opts, &methods).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(payloads
        .into_iter()
        .filter_map(|(m, p)| p.ok().map(|p| (m, p)))
        .min_by_key(|(_, p)| p.len()))
}

/// [`candidates`], restricted to `only` when it is set.
fn candidates_of(
    old: &[u8],
    new: &[u8],
    opts: &EngineOptions,
    only: Option<Method>,
) -> Result<Vec<Candidate>> {
    let mut methods = methods_for(old, new, opts, only);
    // Inside gzip and xz deltas the device holds the contents in memory whatever the inner
    // method; only a file's own delta is held to the limit.
    if (old.len() as u64).saturating_add(new.len() as u64) > opts.patch_from_max {
        methods.retain(|m| *m != Method::ZstdPatchFrom);
    }
    let encoded = payloads(old, new, opts, &methods)?;
    let (source, target) = (Hash::of(old), Hash::of(new));
    let header = |method| DeltaHeader {
        method,
        source,
        target,
        target_size: new.len() as u64,
    };
    let mut out = Vec::new();
    for (method, payload) in encoded {
        let payload = match payload {
            Ok(payload) => payload,
            Err(e) => {
                tracing::debug!(%method, error = %e, "method failed to encode; the others compete");
                continue;
            }
        };
        let h = header(method);
        let bytes = encode_delta(&h, &payload);
        // A candidate that does not round-trip is a bug to report, not a reason to stop a
        // publish: it is dropped and the others compete.
        match apply_delta(&bytes, old, Some((h.target, h.target_size))) {
            Ok(back) if back == new => out.push(Candidate { method, bytes }),
            Ok(_) => {
                tracing::warn!(%method, source = %h.source, target = %h.target, "candidate output differs; dropped")
            }
            Err(e) => {
                tracing::warn!(%method, source = %h.source, target = %h.target, error = %e, "candidate does not apply; dropped")
            }
        }
    }
    out.sort_by_key(|c| c.bytes.len());
    Ok(out)
}

/// The single-file `deltaroot diff`: the smallest container, a whole-file one included, or
/// with `opts.only` set, that method's (`None` when it does not apply to these files).
pub fn diff_file(old: &[u8], new: &[u8], opts: &EngineOptions) -> Result<Option<Candidate>> {
    let only = opts.only;
    let mut all = candidates_of(old, new, opts, only)?;
    // The whole file at the full level costs more than every delta of an ELF pair together,
    // in time and memory (zstd's level-19 tables: 92 MB for corpus `python3.11`, more than
    // the whole ELF method); it is worth it only where a fast estimate (zstd level 3, on the
    // corpus at most 1.27x the level-19 size) comes within 2x of the best delta.
    let whole_may_win = || -> Result<bool> {
        let Some(best) = all.first() else {
            return Ok(true);
        };
        let estimate = compress_object(new, opts.level.min(3))?;
        Ok(estimate.len() < best.bytes.len().saturating_mul(2))
    };
    if only == Some(Method::Zstd) || (only.is_none() && whole_may_win()?) {
        let whole = DeltaHeader {
            method: Method::Zstd,
            source: Hash::of(old),
            target: Hash::of(new),
            target_size: new.len() as u64,
        };
        all.push(Candidate {
            method: Method::Zstd,
            bytes: encode_delta(&whole, &compress_object(new, opts.level)?),
        });
    }
    all.sort_by_key(|c| c.bytes.len());
    Ok(all.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pseudo_random;

    /// The server's manifest delta is what the device's decoder rebuilds the manifest from.
    #[test]
    fn a_manifest_delta_rebuilds_the_new_manifest_from_the_old() {
        let old = pseudo_random(100_000, 3, 256);
        let mut new = old.clone();
        new[5_000..5_032].copy_from_slice(&[7; 32]);
        let d = manifest_delta(&old, &new).unwrap();
        assert!(d.len() < 400, "{}", d.len());
        assert_eq!(
            deltaroot_format::manifest_delta::apply(&d, &old).unwrap(),
            new
        );
    }

    const X86_64_PIE: &[u8] = include_bytes!("../../fixtures/elf-small/x86_64-pie");
    const AARCH64_PIE: &[u8] = include_bytes!("../../fixtures/elf-small/aarch64-pie");

    /// A `diff --method elf` that gives no delta says why: the size limit that left the method
    /// out (an image larger than `--bsdiff-max-mib`, as a 300 MB browser was under the old
    /// 256 MiB default), which file's headers the method refuses, or that the two differ.
    #[test]
    fn why_not_names_the_limit_or_the_refusal() {
        let opts = EngineOptions {
            level: 3,
            only: Some(Method::Elf),
            ..Default::default()
        };
        let mut big = X86_64_PIE.to_vec();
        big.resize(3 << 20, 0);
        let capped = EngineOptions {
            bsdiff_max: 2 << 20,
            ..opts
        };
        assert!(diff_file(X86_64_PIE, &big, &capped).unwrap().is_none());
        assert_eq!(
            why_not(X86_64_PIE, &big, &capped, Method::Elf),
            "the new file (3145728 bytes) is larger than --bsdiff-max-mib's 2 MiB"
        );
        // Under the limit the same pair encodes.
        assert!(diff_file(X86_64_PIE, &big, &opts).unwrap().is_some());

        let mut x32 = X86_64_PIE.to_vec();
        x32[4] = 1;
        assert!(diff_file(X86_64_PIE, &x32, &opts).unwrap().is_none());
        let why = why_not(X86_64_PIE, &x32, &opts, Method::Elf);
        assert!(
            why.starts_with("the new file: 32-bit little-endian ELF"),
            "{why}"
        );
        assert_eq!(
            why_not(X86_64_PIE, AARCH64_PIE, &opts, Method::Elf),
            "the old file is X86_64 and the new file AArch64"
        );
        assert_eq!(
            why_not(X86_64_PIE, b"text", &opts, Method::Elf),
            "both files must start with the ELF magic \\x7fELF"
        );
    }

    #[test]
    fn every_candidate_round_trips_and_beats_whole_on_small_edits() {
        let old = pseudo_random(200_000, 1, 256);
        let mut new = old.clone();
        new[1000..1010].copy_from_slice(b"0123456789");
        new.splice(50_000..50_000, b"inserted bytes".iter().copied());
        let opts = EngineOptions {
            level: 3,
            ..Default::default()
        };
        let c = candidates(&old, &new, &opts).unwrap();
        assert_eq!(c.len(), 2);
        for cand in &c {
            assert_eq!(apply_delta(&cand.bytes, &old, None).unwrap(), new);
            assert!(
                cand.bytes.len() < 2_000,
                "{} is {} bytes",
                cand.method,
                cand.bytes.len()
            );
        }
        let best = diff_file(&old, &new, &opts).unwrap().unwrap();
        assert_ne!(best.method, Method::Zstd);
    }

    /// A revision-5 ELF payload of 64 KiB or more goes as one xz stream whose dictionary
    /// a device may hold; a smaller one as the smaller of xz and zstd; at a fast `--level`,
    /// with `--elf-zstd` and for earlier revisions, as zstd.
    #[test]
    fn revision_5_elf_payloads_are_framed_as_xz_unless_speed_was_asked_for() {
        use deltaroot_format::elf::{decompress_xz, is_xz, HAS_REVISION_4, HAS_REVISION_5};
        let mut raw = pseudo_random(100_000, 5, 16);
        raw[0] = 1 | HAS_REVISION_5;
        let big = compress_elf_payload(&raw, 19, true).unwrap();
        assert!(is_xz(&big));
        assert_eq!(decompress_xz(&big, u64::MAX).unwrap(), raw);
        assert!(big.len() < compress_elf_payload(&raw, 9, true).unwrap().len());
        assert!(!is_xz(&compress_elf_payload(&raw, 9, true).unwrap()));
        let max = deltaroot_format::elf::WINDOW_LOG_MAX;
        for len in [40, 3_000, 60_000] {
            let small = &raw[..len];
            let zstd = compress_payload_within(small, 19, max).unwrap();
            let xz = compress_xz_payload(small).unwrap();
            let chosen = compress_elf_payload(small, 19, true).unwrap();
            assert_eq!(chosen.len(), zstd.len().min(xz.len()), "{len} bytes");
            assert_eq!(is_xz(&chosen), xz.len() < zstd.len());
        }
        // A tiny payload: xz's stream framing makes zstd the smaller.
        assert!(!is_xz(&compress_elf_payload(&raw[..40], 19, true).unwrap()));
        assert!(!is_xz(&compress_elf_payload(&raw, 19, false).unwrap()));
        raw[0] = 1 | HAS_REVISION_4;
        assert!(!is_xz(&compress_elf_payload(&raw, 19, true).unwrap()));
    }

    #[test]
    fn unrelated_files_fall_back_to_whole() {
        let old = pseudo_random(10_000, 1, 256);
        let new = b"short text".repeat(50);
        let best = diff_file(&old, &new, &EngineOptions::default())
            .unwrap()
            .unwrap();
        assert_eq!(apply_delta(&best.bytes, &old, None).unwrap(), new);
    }

    #[test]
    fn pairs_over_the_patch_from_limit_go_as_bsdiff_a_device_streams() {
        let old = pseudo_random(200_000, 1, 256);
        let mut new = old.clone();
        new[1000..1010].copy_from_slice(b"0123456789");
        let opts = EngineOptions {
            level: 3,
            patch_from_max: 399_999,
            ..Default::default()
        };
        let methods: Vec<Method> = candidates(&old, &new, &opts)
            .unwrap()
            .iter()
            .map(|c| c.method)
            .collect();
        assert_eq!(methods, [Method::BsdiffZstd]);
        // At the limit, both compete.
        let opts = EngineOptions {
            patch_from_max: 400_000,
            ..opts
        };
        let with = candidates(&old, &new, &opts).unwrap();
        assert!(with.iter().any(|c| c.method == Method::ZstdPatchFrom));
    }
}
