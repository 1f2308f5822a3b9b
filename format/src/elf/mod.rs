//! The ELF-aware delta method (delta method 4): references normalised before diffing.
//!
//! When one function grows, every call, jump, RIP-relative operand and pointer that crosses it
//! changes value, and a byte-level diff pays for each. This method finds those references in
//! both versions of an ELF file, rewrites each reference of the new file so that it holds the
//! value the *old* file would hold at the matching place (the "normalised" image), and diffs
//! the old file against that. The device undoes the rewrite after patching.
//!
//! The pieces, shared by the publisher's encoder and the device's decoder so that both see
//! exactly the same references:
//!
//! - [`Layout`]: an ELF's headers: class, type, architecture, `PT_LOAD` segments and sections,
//!   read with goblin and checked against the file's length.
//! - Reference discovery, in phases whose locations never depend on the values being
//!   restored (except E's, whose test both sides apply to the same values): (A) the address
//!   fields of relocation tables (`r_offset`, and the addends of relative relocations) and
//!   symbol tables (`st_value`); (B) pointer slots named by the
//!   relocations restored in phase A (`R_X86_64_RELATIVE`, `IRELATIVE`, `JUMP_SLOT`) and by
//!   `SHT_RELR` tables; (C) `rel32` branch displacements and RIP-relative operands found by a
//!   linear sweep of every executable section with iced-x86; (D) the type ids and string
//!   offsets of `.BTF` type records (kernel modules' split BTF, [`btf`]), predicted by the
//!   shift tables ([`BtfShifts`]) the payload carries; (E) in payloads of revision 2
//!   ([`HAS_REVISION_2`]) and executables at a fixed address, the data words whose value is an
//!   address of the image; (F) in payloads of revision 4 ([`HAS_REVISION_4`]), the addresses
//!   the unwind tables hold ([`unwind`]). References are handed on as they are found, never
//!   collected (phase F collects one unwind section's field offsets before visiting them):
//!   memory does not grow with their number. From revision 5 ([`HAS_REVISION_5`]) the
//!   payload sends only the nonzero diff bytes, by position ([`SPARSE_BLOCK`]).
//! - [`Equivalences`]: which ranges of the old file match which ranges of the new one,
//!   recovered from the control records of the bsdiff stream in the patch, so the decoder
//!   derives the same map the encoder used to check its work.
//! - [`decode_frames`] (and [`decode_from`]): the decoder proper. It reads the payload as it is
//!   decompressed (three zstd frames: the diff bytes straight into the image, the rest through
//!   a window of at most 2^20 bytes, [`WINDOW_LOG_MAX`]; one frame that declares its size is
//!   decompressed in one call into the buffer that becomes the image and rearranged there)
//!   and writes the normalised image as the streams arrive, holding only the records; then
//!   [`walk_restore`] visits each reference in order, predicts its new value from the
//!   normalised one by mapping the target through the equivalences (in revision 2, through
//!   the targets earlier corrections taught it first), and adds the correction the payload
//!   carries for it (almost always none), read when its turn comes. The old file
//!   may stay on disk (`format::method::Source::File`): its headers and the ranges the
//!   records name are read as needed. So a device holds the new image and little else.
//!
//! Everything read from the patch or from the patched image is bounds-checked: a hostile
//! patch yields an error, never a panic or an allocation beyond the announced target size.

//!
//! The files: [`layout`] (the headers), [`refs`] (reference fields), [`discover`] (phases A
//! to E), [`btf`] (phase D), [`equivalence`] (the maps), [`filled`] (the encoder's alignment
//! of sections that relocations fill), [`restore`] (the restore walk),
//! [`payload`] (the payload's bytes), [`decode`] (the decoder) and [`xzframe`] (payloads
//! framed as xz rather than zstd).

mod btf;
mod decode;
mod discover;
mod equivalence;
mod filled;
mod layout;
mod payload;
mod refs;
mod restore;
#[cfg(test)]
mod testing;
mod unwind;
mod xzframe;

pub use btf::BtfShifts;
pub use decode::{decode, decode_frames, decode_from};
pub(crate) use decode::{decode_frames_from, decode_source};
use discover::Visit;
pub use equivalence::{AddressMap, Equivalences, MIN_EQUIVALENCE, NEAR_RANGES};
pub use filled::filled_pieces;
pub use layout::Layout;
pub use payload::{
    build_payload, diff_range, encode_corrections, Control, Corrections, Revision, SplitPatch,
    HAS_REVISION_2, HAS_REVISION_3, HAS_REVISION_4, HAS_REVISION_5, SPARSE_BLOCK, WINDOW_LOG_MAX,
};
use payload::{unzigzag, zigzag, Stream};
pub use refs::{Ref, RefKind};
pub use restore::{
    find_corrections, for_each_btf_ref, for_each_ref, read_ref, ref_target, walk_restore, write_ref,
};
pub(crate) use xzframe::XzPayload;
pub use xzframe::{decompress_xz, is_xz, XZ_DICT_MAX};

/// Architectures the method understands; the byte is stored in the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    X86_64 = 1,
    AArch64 = 2,
}

impl Arch {
    fn from_u8(b: u8) -> Option<Arch> {
        match b {
            1 => Some(Arch::X86_64),
            2 => Some(Arch::AArch64),
            _ => None,
        }
    }

    /// Relocation types whose addend is an address: RELATIVE and IRELATIVE.
    fn is_relative(self, kind: u32) -> bool {
        match self {
            Arch::X86_64 => kind == 8 || kind == 37,
            Arch::AArch64 => kind == 1027 || kind == 1032,
        }
    }

    /// JUMP_SLOT: the slot holds a PLT address until the dynamic linker binds it.
    fn is_jump_slot(self, kind: u32) -> bool {
        match self {
            Arch::X86_64 => kind == 7,
            Arch::AArch64 => kind == 1026,
        }
    }
}

/// Why an image cannot be handled by this method.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ElfError(pub String);

fn bad(what: impl Into<String>) -> ElfError {
    ElfError(what.into())
}
