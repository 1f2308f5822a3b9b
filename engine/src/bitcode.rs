//! The `bitcode` method's encoder: diff two LLVM bitcode files unpacked, not their bits.
//!
//! Both files are unpacked (`deltaroot_format::bitcode`) into byte-aligned values, the new
//! one is checked to pack back to itself bit for bit, and the unpacked forms are diffed with
//! zstd patch-from and bsdiff, keeping the smaller. Where the new file does not pack back
//! (a writer that is not LLVM's, a wrapper header) the method does not apply and the
//! generic methods compete alone. The decoder is `deltaroot_format::bitcode`.

use deltaroot_format::bitcode::{self, Patch};

use crate::competition::{self as engine, EngineOptions};

/// Largest unpacked file the encoder handles.
const RAW_MAX: u64 = 1 << 30;

/// The `bitcode` payload for `old` -> `new`, or `None` when the method does not apply.
pub fn encode(old: &[u8], new: &[u8], opts: &EngineOptions) -> std::io::Result<Option<Vec<u8>>> {
    if !(bitcode::is_bitcode(old) && bitcode::is_bitcode(new)) {
        return Ok(None);
    }
    let limit = |len: usize| bitcode::unpacked_limit(len as u64).min(RAW_MAX);
    let Ok(raw_new) = bitcode::unpack(new, limit(new.len())) else {
        return Ok(None);
    };
    if bitcode::pack(&raw_new, new.len() as u64).ok().as_deref() != Some(new) {
        tracing::debug!("bitcode does not pack back to itself; method skipped");
        return Ok(None);
    }
    let Ok(raw_old) = bitcode::unpack(old, limit(old.len())) else {
        return Ok(None);
    };
    let inner = engine::smallest_payload(&raw_old, &raw_new, opts, &engine::GENERIC)?;
    let Some((method, payload)) = inner else {
        return Ok(None);
    };
    Ok(Some(
        Patch {
            source_size: raw_old.len() as u64,
            target_size: raw_new.len() as u64,
            inner: method,
            payload: &payload,
        }
        .encode(),
    ))
}
