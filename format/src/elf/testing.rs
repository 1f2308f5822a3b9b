//! What the ELF method's unit tests share: small real ELF files (`fixtures/elf-small`, whose
//! README says how they were built) and payloads that rebuild an image unchanged.

use super::{build_payload, encode_corrections, BtfShifts, Control, Layout};

/// `fixtures/elf-small/x86_64-pie`: a small real position-independent executable (its
/// README says how it was built), with relocations, symbols, calls and RIP-relative operands.
pub(super) const X86_64_PIE: &[u8] = include_bytes!("../../../fixtures/elf-small/x86_64-pie");
/// `fixtures/elf-small/aarch64-pie`: the same program built for AArch64.
pub(super) const AARCH64_PIE: &[u8] = include_bytes!("../../../fixtures/elf-small/aarch64-pie");

/// Every fixture image, for the tests that hold for any architecture.
pub(super) fn images() -> [Vec<u8>; 2] {
    [X86_64_PIE.to_vec(), AARCH64_PIE.to_vec()]
}

/// The size the tests of the frames pad an image to (2.5 MiB): a first frame holding the
/// diff bytes then needs a wider zstd window than the decoder allows, and a one-frame
/// payload is larger than the slack of a one-byte image.
pub(super) const LARGE: usize = 5 << 19;

/// `image` grown to `len` bytes by bytes after its section headers, which belong to no
/// section: a larger ELF file with the same references.
pub(super) fn padded(image: &[u8], len: usize) -> Vec<u8> {
    let mut out = image.to_vec();
    out.extend((image.len()..len).map(|i| (i * 7 % 251) as u8));
    out
}

/// A payload that rebuilds `old` itself: one record over the whole file with zero diff
/// bytes, then `corrections` and `trailing` bytes.
pub(super) fn identity_payload(
    old: &[u8],
    corrections: &[(usize, i64)],
    trailing: &[u8],
) -> Vec<u8> {
    identity_payload_of(old, false, corrections, trailing)
}

/// [`identity_payload`] of revision 2 (`revised`) or 1.
pub(super) fn identity_payload_of(
    old: &[u8],
    revised: bool,
    corrections: &[(usize, i64)],
    trailing: &[u8],
) -> Vec<u8> {
    let controls = [Control {
        mix: old.len() as u64,
        copy: 0,
        seek: 0,
    }];
    let arch = Layout::parse(old).unwrap().arch;
    let mut p = build_payload(
        arch,
        &BtfShifts::default(),
        if revised {
            super::Revision::Two
        } else {
            super::Revision::One
        },
        &controls,
        old,
        old,
    )
    .unwrap();
    p.extend_from_slice(&encode_corrections(corrections));
    p.extend_from_slice(trailing);
    p
}

/// `raw` as one xz stream (LZMA2, preset 6, no check) with a dictionary of `dict` bytes: a
/// method-4 payload framed as the publisher frames large ones.
pub(super) fn xz_frame(raw: &[u8], dict: u32) -> Vec<u8> {
    use liblzma::stream::{Action, Check, Filters, LzmaOptions, Status, Stream};
    let mut filters = Filters::new();
    filters.lzma2(LzmaOptions::new_preset(6).unwrap().dict_size(dict));
    let mut s = Stream::new_stream_encoder(&filters, Check::None).unwrap();
    let mut out = Vec::with_capacity(raw.len() + 1024);
    while s.process_vec(raw, &mut out, Action::Finish).unwrap() != Status::StreamEnd {
        out.reserve(1 << 16);
    }
    out
}
