//! The ELF method's decoder on hostile input: `[u32 LE source length][source][payload]`,
//! the payload as it is after decompression. It must return, never panic, and never hold
//! more than the bound it is given.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<4>() else { return };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (source, payload) = rest.split_at(len);
    // Read as a stream, as the container reads it from the zstd decoder.
    if let Ok(out) = deltaroot_format::elf::decode_from(source, payload, 1 << 22) {
        assert!(out.len() <= 1 << 22);
    }
});
