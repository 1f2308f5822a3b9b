//! The table of decoders, one per method: the container decodes its header and checks the
//! source, then hands the payload to the method's decoder here. The methods' modules
//! (`elf`, `gzip`, `xz`, `bitcode`) know nothing of the container: they take a payload and a
//! source ([`crate::method`]) and give bytes; gzip, xz and bitcode deltas hold an inner
//! delta's payload, which they decode through this table again.

use std::io::Read;

use crate::error::Error;
use crate::method::{bsdiff_bound, framed, Method, Payload, Source, Watched, MAX_WINDOW_LOG};

/// One payload to decode: the method, the size the target must have, and the name errors
/// give it.
#[derive(Clone, Copy)]
pub(crate) struct Part<'a> {
    pub method: Method,
    pub target_size: u64,
    pub payload: Payload<'a>,
    pub what: &'a str,
}

impl Part<'_> {
    /// A payload that fails to decode: [`Error::DeltaPayload`] naming this part's method.
    fn invalid(&self, reason: String) -> Error {
        Error::DeltaPayload {
            what: self.what.to_string(),
            method: self.method.name(),
            reason,
        }
    }

    /// Methods 1, 5, 6 and 7 read the same bytes either way.
    fn bytes(&self) -> &[u8] {
        let (Payload::Stored(p) | Payload::Unwrapped(p)) = self.payload;
        p
    }

    /// An empty output, reserved modestly: the header is untrusted until the output hashes
    /// right.
    fn output(&self) -> Vec<u8> {
        Vec::with_capacity(self.target_size.min(64 << 20) as usize)
    }
}

/// A method's decoder: the payload of `part` applied to the whole `source`.
type Decode = fn(&Part<'_>, &[u8]) -> Result<Vec<u8>, Error>;

/// The decoder of each method.
fn decoder(method: Method) -> Decode {
    match method {
        Method::ZstdPatchFrom => zstd_patch_from,
        Method::BsdiffZstd => bsdiff_zstd,
        Method::Zstd => zstd,
        Method::Elf => elf_bytes,
        Method::Gzip => gzip,
        Method::Xz => xz,
        Method::Bitcode => bitcode,
    }
}

/// Decodes `part` against the whole `source` (every method but ELF reads its source whole).
pub(crate) fn decode(part: &Part<'_>, source: &[u8]) -> Result<Vec<u8>, Error> {
    decoder(part.method)(part, source)
}

fn zstd(part: &Part<'_>, _: &[u8]) -> Result<Vec<u8>, Error> {
    let fail = |e: std::io::Error| part.invalid(e.to_string());
    let mut out = part.output();
    // Read one byte past the promised size so an over-long stream is caught.
    let d = framed(part.payload).map_err(fail)?;
    d.take(part.target_size + 1)
        .read_to_end(&mut out)
        .map_err(fail)?;
    Ok(out)
}

fn zstd_patch_from(part: &Part<'_>, source: &[u8]) -> Result<Vec<u8>, Error> {
    let fail = |e: std::io::Error| part.invalid(e.to_string());
    let mut out = part.output();
    let mut d = zstd::stream::read::Decoder::with_ref_prefix(part.bytes(), source).map_err(fail)?;
    d.window_log_max(MAX_WINDOW_LOG).map_err(fail)?;
    d.take(part.target_size + 1)
        .read_to_end(&mut out)
        .map_err(fail)?;
    Ok(out)
}

fn bsdiff_zstd(part: &Part<'_>, source: &[u8]) -> Result<Vec<u8>, Error> {
    let fail = |e: std::io::Error| part.invalid(e.to_string());
    let mut out = part.output();
    let d = framed(part.payload).map_err(fail)?;
    // A bsdiff stream is 24-byte control triples plus exactly target-size bytes of
    // data; even one triple per output byte fits this bound, and it bounds the output.
    let mut bounded = d.take(bsdiff_bound(part.target_size));
    bsdiff::patch(source, &mut bounded, &mut out).map_err(fail)?;
    Ok(out)
}

/// Method 4 with the source in memory (an inner delta of `xz`).
fn elf_bytes(part: &Part<'_>, source: &[u8]) -> Result<Vec<u8>, Error> {
    elf(part, Source::Bytes(source))
}

/// A method-4 payload: as stored, one frame or three, read as they decompress (FORMAT.md
/// §6.4), the decoder writing the image as the payload arrives; unwrapped (from a pack), the
/// frames' contents one after another. The payload holds a bsdiff stream and at most a few
/// varints per reference. The source is read where the records name it.
pub(crate) fn elf(part: &Part<'_>, source: Source<'_>) -> Result<Vec<u8>, Error> {
    let bound = bsdiff_bound(part.target_size).saturating_mul(2);
    let old = Watched::new(source);
    let out = match part.payload {
        Payload::Stored(p) => crate::elf::decode_frames_from(&old, p, part.target_size, bound),
        Payload::Unwrapped(p) if p.len() as u64 > bound => {
            return Err(part.invalid(format!(
                "payload of {} bytes is over the limit of {bound}",
                p.len()
            )))
        }
        Payload::Unwrapped(p) => crate::elf::decode_source(&old, p, part.target_size),
    };
    out.map_err(|e| {
        old.io_error()
            .unwrap_or_else(|| part.invalid(e.to_string()))
    })
}

/// The inner delta of a gzip or bitcode delta: `payload` of `method` applied to `raw_old`
/// (the source decompressed, or unpacked: `form` names which), which must give exactly
/// `target_size` bytes. `raw_old` is freed before the result is returned.
fn inner(
    part: &Part<'_>,
    method: Method,
    target_size: u64,
    payload: &[u8],
    raw_old: Vec<u8>,
    form: &str,
) -> Result<Vec<u8>, Error> {
    let inner = Part {
        method,
        target_size,
        payload: Payload::Stored(payload),
        what: part.what,
    };
    let raw_new = decode(&inner, &raw_old)?;
    drop(raw_old);
    if raw_new.len() as u64 != target_size {
        return Err(Error::ContentLength {
            what: format!("{} ({form})", part.what),
            got: raw_new.len() as u64,
            want: target_size,
        });
    }
    Ok(raw_new)
}

fn gzip(part: &Part<'_>, source: &[u8]) -> Result<Vec<u8>, Error> {
    use crate::gzip;
    let fail = |e: std::io::Error| part.invalid(e.to_string());
    let p =
        gzip::Patch::decode(part.bytes(), source.len() as u64, part.target_size).map_err(fail)?;
    let old = gzip::member(source).map_err(fail)?;
    let raw_old = gzip::inflate(old.deflate, p.source_size).map_err(fail)?;
    if raw_old.len() as u64 != p.source_size {
        return Err(part.invalid(format!(
            "source inflates to {} bytes, the patch says {}",
            raw_old.len(),
            p.source_size
        )));
    }
    let raw_new = inner(
        part,
        p.inner,
        p.target_size,
        p.payload,
        raw_old,
        "decompressed",
    )?;
    gzip::rebuild(p.header, &raw_new, p.deflater).map_err(fail)
}

fn bitcode(part: &Part<'_>, source: &[u8]) -> Result<Vec<u8>, Error> {
    use crate::bitcode;
    let fail = |e: std::io::Error| part.invalid(e.to_string());
    let p =
        bitcode::decode_patch(part.bytes(), source.len() as u64, part.target_size).map_err(fail)?;
    let raw_old = bitcode::unpack(source, p.source_size).map_err(|e| {
        part.invalid(format!(
            "source does not unpack within the patch's {} bytes: {e}",
            p.source_size
        ))
    })?;
    if raw_old.len() as u64 != p.source_size {
        return Err(part.invalid(format!(
            "source unpacks to {} bytes, the patch says {}",
            raw_old.len(),
            p.source_size
        )));
    }
    let raw_new = inner(part, p.inner, p.target_size, p.payload, raw_old, "unpacked")?;
    bitcode::pack(&raw_new, part.target_size).map_err(fail)
}

fn xz(part: &Part<'_>, source: &[u8]) -> Result<Vec<u8>, Error> {
    use crate::xz;
    let fail = |e: std::io::Error| part.invalid(e.to_string());
    let p = xz::Patch::decode(part.bytes(), source.len() as u64, part.target_size).map_err(fail)?;
    // decode() bounded both by the source's length.
    let (at, len) = (p.source_at as usize, p.source_len as usize);
    let (raw_old, used) = xz::decode_stream(&source[at..at + len], p.source_size).map_err(fail)?;
    if used != len || raw_old.len() as u64 != p.source_size {
        return Err(part.invalid(format!(
            "source stream is {used} bytes holding {}, the patch says {len} holding {}",
            raw_old.len(),
            p.source_size
        )));
    }
    let inner = |method, target_size, payload| Part {
        method,
        target_size,
        payload: Payload::Stored(payload),
        what: part.what,
    };
    let frame = decode(
        &inner(Method::ZstdPatchFrom, p.frame_size, p.frame),
        &xz::frame_of(source, at, len),
    )?;
    let raw_new = decode(&inner(p.inner, p.target_size, p.payload), &raw_old)?;
    drop(raw_old);
    if frame.len() as u64 != p.frame_size
        || raw_new.len() as u64 != p.target_size
        || p.target_at > p.frame_size
    {
        return Err(part.invalid(format!(
            "frame of {} bytes (want {}, stream at {}), contents of {} bytes (want {})",
            frame.len(),
            p.frame_size,
            p.target_at,
            raw_new.len(),
            p.target_size
        )));
    }
    let stream = xz::encode(&raw_new, &p.options, None).map_err(fail)?;
    drop(raw_new);
    let cut = p.target_at as usize;
    let mut out = Vec::with_capacity(frame.len() + stream.len());
    out.extend_from_slice(&frame[..cut]);
    out.extend_from_slice(&stream);
    out.extend_from_slice(&frame[cut..]);
    Ok(out)
}
