//! A pack on hostile input, and every body it gives applied as its entry says:
//! `[u32 LE source length][source][the pack's decompressed stream]` (compressed here, so the
//! fuzzer works on the index and bodies rather than on zstd's framing).
#![no_main]

use deltaroot_format::container::{apply_payload, Payload};
use deltaroot_format::{DeltaHeader, EntryKind, Hash, PackReader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<4>() else { return };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (source, stream) = rest.split_at(len);
    let Ok(pack) = zstd::bulk::compress(stream, 1) else { return };
    let Ok(mut reader) = PackReader::open("fuzz", &pack[..]) else { return };
    while let Ok(Some((e, body))) = reader.next_body(|_| 1 << 20) {
        if let EntryKind::Delta(method) = e.kind {
            let h = DeltaHeader {
                method,
                source: Hash::of(source),
                target: e.target,
                target_size: (e.len * 4).min(1 << 20),
            };
            let _ = apply_payload(&h, Payload::Unwrapped(&body), source);
        }
    }
});
