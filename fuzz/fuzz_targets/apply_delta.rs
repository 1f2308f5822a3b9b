//! The whole delta container on hostile input: `[u32 LE source length][source][container]`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<4>() else { return };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (source, delta) = rest.split_at(len);
    let _ = deltaroot_format::apply_delta(delta, source, None);
});
