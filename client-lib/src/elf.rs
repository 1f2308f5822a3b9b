//! The ELF-aware delta method (container method 4): references normalised before diffing.
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
//!   address of the image. References are handed on as they are found, never collected:
//!   memory does not grow with their number.
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
//!   may stay on disk (`format::container::Source::File`): its headers and the ranges the
//!   records name are read as needed. So a device holds the new image and little else.
//!
//! Everything read from the patch or from the patched image is bounds-checked: a hostile
//! patch yields an error, never a panic or an allocation beyond the announced target size.

use std::io::{BufRead, BufReader, Read};
use std::ops::Range;

use goblin::container::{Container, Ctx};
use goblin::elf::header::{EM_AARCH64, EM_X86_64, ET_DYN, ET_EXEC, ET_REL};
use goblin::elf::program_header::PT_LOAD;
use goblin::elf::section_header::{
    SHF_ALLOC, SHF_EXECINSTR, SHF_INFO_LINK, SHT_DYNSYM, SHT_FINI_ARRAY, SHT_INIT_ARRAY,
    SHT_PREINIT_ARRAY, SHT_PROGBITS, SHT_RELA, SHT_SYMTAB,
};
use goblin::elf::{Elf, ProgramHeader, SectionHeader};

use crate::format::container::{Source, Watched};
use crate::format::wire::put_varint;

mod btf;
pub use btf::BtfShifts;

/// `SHT_RELR`: packed relative relocations.
const SHT_RELR: u32 = 19;
const STT_SECTION: u8 = 3;
/// Section indices at or above this are reserved (ABS, COMMON, …).
const SHN_LORESERVE: u16 = 0xff00;

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

/// An ELF file's headers, as far as this method needs them.
#[derive(Clone, Debug)]
pub struct Layout {
    pub arch: Arch,
    /// Relocatable objects (kernel modules) use file offsets as addresses.
    pub relocatable: bool,
    /// An executable at a fixed address (`ET_EXEC`, not position-independent): its data holds
    /// addresses that no relocation names.
    pub fixed: bool,
    /// Phase E runs: data words whose value is an address of the image are references (for
    /// fixed executables in payloads of revision 2: [`Layout::for_revision`]).
    pointers: bool,
    loads: Vec<Load>,
    sections: Vec<Section>,
}

#[derive(Clone, Copy, Debug)]
struct Load {
    vaddr: u64,
    offset: u64,
    memsz: u64,
}

#[derive(Clone, Copy, Debug)]
struct Section {
    kind: u32,
    flags: u64,
    addr: u64,
    offset: u64,
    size: u64,
    link: u32,
    info: u32,
    entsize: u64,
    /// Named `.BTF`: split BTF type records (phase D).
    btf: bool,
}

impl Section {
    /// The section's bytes as a range of the file, when it lies inside it.
    fn file_range(&self, len: usize) -> Option<Range<usize>> {
        let start = usize::try_from(self.offset).ok()?;
        let end = start.checked_add(usize::try_from(self.size).ok()?)?;
        (end <= len).then_some(start..end)
    }
}

impl Layout {
    /// Reads the headers of a 64-bit little-endian x86-64 ELF file.
    pub fn parse(image: &[u8]) -> Result<Layout, ElfError> {
        Layout::read(image.len() as u64, &mut |at, buf| {
            Source::Bytes(image).read_at(at, buf)
        })
    }

    /// [`Layout::parse`] of a file of `len` bytes read by `read_at` (its headers only: at
    /// most 64 bytes, then the program and section header tables, each checked against `len`
    /// before it is read).
    fn read(
        len: u64,
        read_at: &mut dyn FnMut(u64, &mut [u8]) -> std::io::Result<()>,
    ) -> Result<Layout, ElfError> {
        let mut head = vec![0u8; len.min(64) as usize];
        read_at(0, &mut head).map_err(|e| bad(format!("not an ELF file: {e}")))?;
        let mut table = |at: u64, count: u64, size: u64, what: &str| {
            // As goblin's checks: no more entries than the file could hold, all inside it.
            let bytes = count.saturating_mul(size);
            if count > len / size || at.checked_add(bytes).is_none_or(|end| end > len) {
                return Err(bad(format!(
                    "{what}: {count} entries at {at} do not fit the file"
                )));
            }
            let mut buf = vec![0u8; bytes as usize];
            read_at(at, &mut buf).map_err(|e| bad(format!("{what}: {e}")))?;
            Ok(buf)
        };
        let header = Elf::parse_header(&head).map_err(|e| bad(format!("not an ELF file: {e}")))?;
        if header.e_ident[goblin::elf::header::EI_CLASS] != goblin::elf::header::ELFCLASS64
            || header.e_ident[goblin::elf::header::EI_DATA] != goblin::elf::header::ELFDATA2LSB
        {
            return Err(bad("only 64-bit little-endian ELF is supported"));
        }
        let arch = match header.e_machine {
            EM_X86_64 => Arch::X86_64,
            EM_AARCH64 => Arch::AArch64,
            m => return Err(bad(format!("ELF machine {m} is not supported"))),
        };
        let relocatable = match header.e_type {
            ET_REL => true,
            ET_DYN | ET_EXEC => false,
            t => return Err(bad(format!("ELF type {t} is not supported"))),
        };
        let fixed = header.e_type == ET_EXEC;
        let ctx = Ctx::new(Container::Big, goblin::container::Endian::Little);
        let (ph_size, sh_size) = (
            goblin::elf::program_header::program_header64::SIZEOF_PHDR as u64,
            goblin::elf::section_header::section_header64::SIZEOF_SHDR as u64,
        );
        let count = u64::from(header.e_phnum);
        let phs = if count == 0 {
            Vec::new()
        } else {
            let buf = table(header.e_phoff, count, ph_size, "program headers")?;
            ProgramHeader::parse(&buf, 0, count as usize, ctx)
                .map_err(|e| bad(format!("program headers: {e}")))?
        };
        // As goblin: offset 0 means no section headers; a count of 0 means the count is the
        // first header's `sh_size` (and at least that header is read).
        let shs = if header.e_shoff == 0 {
            Vec::new()
        } else {
            let first = table(header.e_shoff, 1, sh_size, "section headers")?;
            let first = SectionHeader::parse_from(&first, 0, 1, ctx)
                .map_err(|e| bad(format!("section headers: {e}")))?;
            let count = match header.e_shnum {
                0 => first.first().map_or(0, |s| s.sh_size),
                n => u64::from(n),
            }
            .max(1);
            let buf = table(header.e_shoff, count, sh_size, "section headers")?;
            SectionHeader::parse_from(&buf, 0, count as usize, ctx)
                .map_err(|e| bad(format!("section headers: {e}")))?
        };
        let loads = phs
            .iter()
            .filter(|p| p.p_type == PT_LOAD)
            .map(|p| Load {
                vaddr: p.p_vaddr,
                offset: p.p_offset,
                memsz: p.p_memsz.max(p.p_filesz),
            })
            .collect();
        // Section names are read only to find `.BTF`: five bytes of the section name table.
        let names = shs.get(usize::from(header.e_shstrndx)).map(|n| n.sh_offset);
        let mut is_btf = |s: &SectionHeader| {
            let mut name = [0u8; 5];
            let at = names
                .and_then(|n| n.checked_add(s.sh_name as u64))
                .filter(|at| at.checked_add(5).is_some_and(|end| end <= len));
            s.sh_type == SHT_PROGBITS
                && at.is_some_and(|at| read_at(at, &mut name).is_ok())
                && &name == b".BTF\0"
        };
        let sections = shs
            .iter()
            .map(|s| Section {
                kind: s.sh_type,
                flags: s.sh_flags,
                addr: s.sh_addr,
                offset: s.sh_offset,
                size: s.sh_size,
                link: s.sh_link,
                info: s.sh_info,
                entsize: s.sh_entsize,
                btf: is_btf(s),
            })
            .collect();
        Ok(Layout {
            arch,
            relocatable,
            fixed,
            pointers: false,
            loads,
            sections,
        })
    }

    /// File offset (extended past the file for `.bss`) of an address.
    fn to_offset(&self, addr: u64) -> Option<u64> {
        if self.relocatable {
            return Some(addr);
        }
        self.loads
            .iter()
            .find(|l| addr >= l.vaddr && addr - l.vaddr < l.memsz)
            .and_then(|l| (addr - l.vaddr).checked_add(l.offset))
    }

    /// Address of a file offset (extended past the file for `.bss`).
    fn to_addr(&self, offset: u64) -> Option<u64> {
        if self.relocatable {
            return Some(offset);
        }
        self.loads
            .iter()
            .find(|l| offset >= l.offset && offset - l.offset < l.memsz)
            .and_then(|l| (offset - l.offset).checked_add(l.vaddr))
    }

    /// This layout as a payload of revision 2 (`revised`, [`HAS_REVISION_2`]) or 1 reads it:
    /// phase E runs for an executable at a fixed address in revision 2.
    pub fn for_revision(mut self, revised: bool) -> Layout {
        self.pointers = revised && self.fixed;
        self
    }

    /// Whether `value` may be an address of this image for phase E: inside a loaded segment
    /// (`.bss` included), and not zero.
    pub fn holds_address(&self, value: u64) -> bool {
        value != 0 && !self.relocatable && self.to_offset(value).is_some()
    }

    /// Where a section's content starts, as an address of this method's address space.
    fn section_base(&self, index: usize) -> Option<u64> {
        let s = self.sections.get(index)?;
        Some(if self.relocatable { s.offset } else { s.addr })
    }
}

/// How a reference's value is stored in its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefKind {
    /// A 64-bit little-endian address or offset.
    Abs64,
    /// A 64-bit little-endian word of data that holds an address of the image (phase E):
    /// found by its value, not named by a table.
    Ptr64,
    /// x86-64: a 32-bit little-endian displacement from the next instruction.
    Rel32,
    /// AArch64 B/BL: imm26 words from the instruction.
    A64Branch26,
    /// AArch64 B.cond, CBZ/CBNZ, LDR literal: imm19 words from the instruction.
    A64Imm19,
    /// AArch64 TBZ/TBNZ: imm14 words from the instruction.
    A64Imm14,
    /// AArch64 ADR: a 21-bit byte offset from the instruction.
    A64Adr,
    /// AArch64 ADRP: a 21-bit offset in 4 KiB pages from the instruction's page.
    A64Adrp,
    /// BTF: a 32-bit little-endian type id (phase D, predicted by [`BtfShifts`]).
    BtfType,
    /// BTF: a 32-bit little-endian string offset (phase D, predicted by [`BtfShifts`]).
    BtfStr,
}

impl RefKind {
    /// A BTF field, whose value is not an address.
    pub fn is_btf(self) -> bool {
        matches!(self, RefKind::BtfType | RefKind::BtfStr)
    }

    fn size(self) -> usize {
        if self.is_64() {
            8
        } else {
            4
        }
    }

    fn is_64(self) -> bool {
        matches!(self, RefKind::Abs64 | RefKind::Ptr64)
    }

    /// Width of the value field in bits.
    fn bits(self) -> u32 {
        match self {
            RefKind::Abs64 | RefKind::Ptr64 => 64,
            RefKind::Rel32 | RefKind::BtfType | RefKind::BtfStr => 32,
            RefKind::A64Branch26 => 26,
            RefKind::A64Imm19 => 19,
            RefKind::A64Imm14 => 14,
            RefKind::A64Adr | RefKind::A64Adrp => 21,
        }
    }

    /// log2 of the bytes one unit of the field stands for.
    fn shift(self) -> u32 {
        match self {
            RefKind::Abs64
            | RefKind::Ptr64
            | RefKind::Rel32
            | RefKind::A64Adr
            | RefKind::BtfType
            | RefKind::BtfStr => 0,
            RefKind::A64Branch26 | RefKind::A64Imm19 | RefKind::A64Imm14 => 2,
            RefKind::A64Adrp => 12,
        }
    }

    /// The field's value, sign-extended.
    fn get(self, b: &[u8]) -> i64 {
        if self.is_64() {
            return i64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        let w = u32::from_le_bytes(b.try_into().expect("4 bytes"));
        if self.is_btf() {
            return i64::from(w);
        }
        let raw = match self {
            RefKind::Rel32 => w,
            RefKind::A64Branch26 => w & 0x03ff_ffff,
            RefKind::A64Imm19 => (w >> 5) & 0x7ffff,
            RefKind::A64Imm14 => (w >> 5) & 0x3fff,
            _ => ((w >> 5) & 0x7ffff) << 2 | (w >> 29) & 3,
        };
        sign_extend(u64::from(raw), self.bits())
    }

    /// Writes `value` (truncated to the field) into the field, keeping the other bits.
    fn set(self, b: &mut [u8], value: i64) {
        if self.is_64() {
            b.copy_from_slice(&value.to_le_bytes());
            return;
        }
        let v = value as u32;
        let w = u32::from_le_bytes((&*b).try_into().expect("4 bytes"));
        let w = match self {
            RefKind::Rel32 | RefKind::BtfType | RefKind::BtfStr => v,
            RefKind::A64Branch26 => (w & !0x03ff_ffff) | (v & 0x03ff_ffff),
            RefKind::A64Imm19 => (w & !(0x7ffff << 5)) | (v & 0x7ffff) << 5,
            RefKind::A64Imm14 => (w & !(0x3fff << 5)) | (v & 0x3fff) << 5,
            _ => (w & !(0x7ffff << 5 | 3 << 29)) | ((v >> 2) & 0x7ffff) << 5 | (v & 3) << 29,
        };
        b.copy_from_slice(&w.to_le_bytes());
    }
}

fn sign_extend(v: u64, bits: u32) -> i64 {
    if bits >= 64 {
        v as i64
    } else {
        ((v << (64 - bits)) as i64) >> (64 - bits)
    }
}

/// One reference: a field at `loc` whose value, scaled, is `target - base` (wrapping).
/// `base` is 0 for absolute addresses; for ADRP it is the instruction, whose page counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ref {
    pub loc: usize,
    pub kind: RefKind,
    pub base: u64,
}

impl Ref {
    fn abs(loc: usize, base: u64) -> Ref {
        Ref {
            loc,
            kind: RefKind::Abs64,
            base,
        }
    }

    fn bytes<'a>(&self, image: &'a [u8]) -> Option<&'a [u8]> {
        image.get(self.loc..self.loc.checked_add(self.kind.size())?)
    }

    fn read(&self, image: &[u8]) -> Option<i64> {
        self.bytes(image).map(|b| self.kind.get(b))
    }

    fn write(&self, image: &mut [u8], value: i64) {
        let end = self.loc.saturating_add(self.kind.size());
        if let Some(b) = image.get_mut(self.loc..end) {
            self.kind.set(b, value);
        }
    }

    /// The address the base stands for: ADRP counts from the instruction's page.
    fn anchor(&self, base: u64) -> u64 {
        if self.kind == RefKind::A64Adrp {
            base & !0xfff
        } else {
            base
        }
    }

    fn target_of(&self, base: u64, value: i64) -> u64 {
        self.anchor(base)
            .wrapping_add((value as u64).wrapping_shl(self.kind.shift()))
    }

    fn value_of(&self, base: u64, target: u64) -> i64 {
        (target.wrapping_sub(self.anchor(base)) as i64) >> self.kind.shift()
    }

    fn target(&self, image: &[u8]) -> Option<u64> {
        self.read(image).map(|v| self.target_of(self.base, v))
    }
}

fn read_u64(image: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        image.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn read_u16(image: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        image.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

/// Entries of a table section: (file offset of each entry).
fn entries(s: &Section, len: usize, size: usize) -> impl Iterator<Item = usize> {
    let range = s.file_range(len).filter(|_| s.entsize == size as u64);
    range.into_iter().flat_map(move |r| {
        (r.start..r.end)
            .step_by(size)
            .filter(move |&e| e + size <= r.end)
    })
}

/// What a discovery pass hands each reference to, with the image, which it may change: the
/// next reference is found in the image as the visitor left it.
type Visit<'v, I> = dyn FnMut(&Ref, &mut I) -> Result<(), ElfError> + 'v;

/// Phase C finds at most this many references before handing them on (bounded memory).
const CODE_CHUNK: usize = 1024;

/// Finds every reference of `image` in restore order (phases A, B, C, D) and visits each as it
/// is found. Nothing is collected: memory does not grow with the number of references.
fn discover<I: AsRef<[u8]>>(
    layout: &Layout,
    image: &mut I,
    visit: &mut Visit<'_, I>,
) -> Result<(), ElfError> {
    phase_a(layout, image, visit)?;
    phase_b(layout, image, visit)?;
    phase_c(layout, image, visit)?;
    btf::phase_d(layout, image, visit)?;
    phase_e(layout, image, visit)
}

/// Phase A: address fields of relocation and symbol tables.
fn phase_a<I: AsRef<[u8]>>(
    layout: &Layout,
    image: &mut I,
    visit: &mut Visit<'_, I>,
) -> Result<(), ElfError> {
    let len = image.as_ref().len();
    for s in &layout.sections {
        match s.kind {
            SHT_RELA => {
                let symtab = layout.sections.get(s.link as usize);
                for e in entries(s, len, 24) {
                    let Some(info) = read_u64(image.as_ref(), e + 8) else {
                        continue;
                    };
                    let (sym, kind) = ((info >> 32) as usize, info as u32);
                    if layout.relocatable {
                        // r_offset is relative to the section the table relocates.
                        if let Some(base) = layout.section_base(s.info as usize) {
                            visit(&Ref::abs(e, base), image)?;
                        }
                        // An addend against a section symbol is an offset into that section.
                        if let Some(base) =
                            symtab.and_then(|t| section_symbol_base(layout, image.as_ref(), t, sym))
                        {
                            visit(&Ref::abs(e + 16, base), image)?;
                        }
                    } else {
                        visit(&Ref::abs(e, 0), image)?;
                        if layout.arch.is_relative(kind) {
                            visit(&Ref::abs(e + 16, 0), image)?;
                        }
                    }
                }
            }
            SHT_SYMTAB | SHT_DYNSYM => {
                for e in entries(s, len, 24) {
                    let Some(shndx) = read_u16(image.as_ref(), e + 6) else {
                        continue;
                    };
                    if shndx == 0 || shndx >= SHN_LORESERVE {
                        continue;
                    }
                    let base = if layout.relocatable {
                        match layout.section_base(shndx as usize) {
                            Some(b) => b,
                            None => continue,
                        }
                    } else {
                        0
                    };
                    visit(&Ref::abs(e + 8, base), image)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// The base of a section symbol's section, when symbol `index` of `symtab` is one.
fn section_symbol_base(
    layout: &Layout,
    image: &[u8],
    symtab: &Section,
    index: usize,
) -> Option<u64> {
    if symtab.kind != SHT_SYMTAB || symtab.entsize != 24 {
        return None;
    }
    let r = symtab.file_range(image.len())?;
    let at = r.start.checked_add(index.checked_mul(24)?)?;
    if at + 24 > r.end {
        return None;
    }
    if image[at + 4] & 0xf != STT_SECTION {
        return None;
    }
    let shndx = read_u16(image, at + 6)?;
    if shndx == 0 || shndx >= SHN_LORESERVE {
        return None;
    }
    layout.section_base(shndx as usize)
}

/// Phase B: pointer slots named by relocations (read from `image` as restored so far).
fn phase_b<I: AsRef<[u8]>>(
    layout: &Layout,
    image: &mut I,
    visit: &mut Visit<'_, I>,
) -> Result<(), ElfError> {
    if layout.relocatable {
        return Ok(());
    }
    let len = image.as_ref().len();
    let slot = |addr: u64| {
        layout
            .to_offset(addr)
            .and_then(|o| usize::try_from(o).ok())
            .filter(|&o| o.checked_add(8).is_some_and(|end| end <= len))
            .map(|loc| Ref::abs(loc, 0))
    };
    for s in &layout.sections {
        match s.kind {
            SHT_RELA => {
                for e in entries(s, len, 24) {
                    let (Some(off), Some(info)) =
                        (read_u64(image.as_ref(), e), read_u64(image.as_ref(), e + 8))
                    else {
                        continue;
                    };
                    if layout.arch.is_relative(info as u32) || layout.arch.is_jump_slot(info as u32)
                    {
                        if let Some(r) = slot(off) {
                            visit(&r, image)?;
                        }
                    }
                }
            }
            SHT_RELR => {
                let mut next = 0u64;
                for e in entries(s, len, 8) {
                    let Some(word) = read_u64(image.as_ref(), e) else {
                        continue;
                    };
                    if word & 1 == 0 {
                        if let Some(r) = slot(word) {
                            visit(&r, image)?;
                        }
                        next = word.wrapping_add(8);
                    } else {
                        for bit in 1..64u64 {
                            if word >> bit & 1 == 1 {
                                if let Some(r) = slot(next.wrapping_add((bit - 1) * 8)) {
                                    visit(&r, image)?;
                                }
                            }
                        }
                        next = next.wrapping_add(63 * 8);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Phase C: PC-relative references in the code of every executable section.
fn phase_c<I: AsRef<[u8]>>(
    layout: &Layout,
    image: &mut I,
    visit: &mut Visit<'_, I>,
) -> Result<(), ElfError> {
    let mut found = Vec::with_capacity(CODE_CHUNK);
    for (i, s) in layout.sections.iter().enumerate() {
        if s.kind != SHT_PROGBITS || s.flags & u64::from(SHF_EXECINSTR) == 0 {
            continue;
        }
        let (Some(range), Some(ip)) = (s.file_range(image.as_ref().len()), layout.section_base(i))
        else {
            continue;
        };
        // A chunk of references is found, then visited; the next chunk's code starts after
        // the last instruction found, whose bytes the visits did not touch (each reference
        // lies inside its own instruction), so this equals visiting each one as it is found.
        let mut at = range.start;
        while at < range.end {
            found.clear();
            let code = &image.as_ref()[at..range.end];
            let base = ip.wrapping_add((at - range.start) as u64);
            let used = match layout.arch {
                Arch::X86_64 => x86_code(code, at, base, &mut found),
                Arch::AArch64 => a64_code(code, at, base, &mut found),
            };
            for r in &found {
                visit(r, image)?;
            }
            if used == 0 {
                break;
            }
            at += used;
        }
    }
    Ok(())
}

/// Phase E, when `layout.pointers` is set: every 8-byte-aligned word of the loaded data
/// sections (not code, not `.BTF`, not a section a relocation table names as its target,
/// which phase B covers) whose value, as the image holds it when the word is reached, is an
/// address of the image ([`Layout::holds_address`]). An executable at a fixed address
/// stores its pointers (function tables, string tables, jump tables in `.rodata`) as plain
/// words with no relocation to name them. A word of other data that happens to look like an
/// address costs a correction, never a wrong result: encoder and decoder judge the same words.
fn phase_e<I: AsRef<[u8]>>(
    layout: &Layout,
    image: &mut I,
    visit: &mut Visit<'_, I>,
) -> Result<(), ElfError> {
    if !layout.pointers {
        return Ok(());
    }
    let len = image.as_ref().len();
    let relocated = |index: usize| {
        layout.sections.iter().any(|r| {
            r.kind == SHT_RELA
                && r.flags & u64::from(SHF_INFO_LINK) != 0
                && r.info as usize == index
        })
    };
    for (i, s) in layout.sections.iter().enumerate() {
        let data = matches!(
            s.kind,
            SHT_PROGBITS | SHT_INIT_ARRAY | SHT_FINI_ARRAY | SHT_PREINIT_ARRAY
        );
        if !data
            || s.flags & u64::from(SHF_ALLOC) == 0
            || s.flags & u64::from(SHF_EXECINSTR) != 0
            || s.btf
            || relocated(i)
        {
            continue;
        }
        let Some(range) = s.file_range(len) else {
            continue;
        };
        // Words aligned by address.
        let skip = (8 - (s.addr % 8) as usize) % 8;
        let mut at = range.start.saturating_add(skip);
        while at.checked_add(8).is_some_and(|end| end <= range.end) {
            if read_u64(image.as_ref(), at).is_some_and(|v| layout.holds_address(v)) {
                visit(
                    &Ref {
                        loc: at,
                        kind: RefKind::Ptr64,
                        base: 0,
                    },
                    image,
                )?;
            }
            at += 8;
        }
    }
    Ok(())
}

/// rel32 branches and RIP-relative operands, by a linear sweep with iced-x86, until
/// [`CODE_CHUNK`] are found; returns the bytes swept.
fn x86_code(code: &[u8], start: usize, ip: u64, out: &mut Vec<Ref>) -> usize {
    use iced_x86::{Decoder, DecoderOptions, Instruction};
    let mut dec = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut ins = Instruction::default();
    while dec.can_decode() && out.len() < CODE_CHUNK {
        let at = dec.position();
        dec.decode_out(&mut ins);
        if ins.is_invalid() {
            continue;
        }
        let next_ip = ins.next_ip();
        let offs = dec.get_constant_offsets(&ins);
        if ins.is_ip_rel_memory_operand() && offs.displacement_size() == 4 {
            out.push(Ref {
                loc: start + at + offs.displacement_offset(),
                kind: RefKind::Rel32,
                base: next_ip,
            });
        } else if offs.immediate_size() == 4 && is_near_branch(&ins) {
            out.push(Ref {
                loc: start + at + offs.immediate_offset(),
                kind: RefKind::Rel32,
                base: next_ip,
            });
        }
    }
    dec.position()
}

/// AArch64: every aligned instruction word that holds a PC-relative field, until
/// [`CODE_CHUNK`] are found; returns the bytes swept (whole words).
fn a64_code(code: &[u8], start: usize, ip: u64, out: &mut Vec<Ref>) -> usize {
    let mut used = 0;
    for (n, word) in code.chunks_exact(4).enumerate() {
        if out.len() >= CODE_CHUNK {
            break;
        }
        used = 4 * (n + 1);
        let w = u32::from_le_bytes(word.try_into().expect("4 bytes"));
        let kind = if w & 0x7c00_0000 == 0x1400_0000 {
            RefKind::A64Branch26
        } else if w & 0xff00_0010 == 0x5400_0000
            || w & 0x7e00_0000 == 0x3400_0000
            || w & 0x3b00_0000 == 0x1800_0000
        {
            RefKind::A64Imm19
        } else if w & 0x7e00_0000 == 0x3600_0000 {
            RefKind::A64Imm14
        } else if w & 0x9f00_0000 == 0x1000_0000 {
            RefKind::A64Adr
        } else if w & 0x9f00_0000 == 0x9000_0000 {
            RefKind::A64Adrp
        } else {
            continue;
        };
        out.push(Ref {
            loc: start + 4 * n,
            kind,
            base: ip.wrapping_add(4 * n as u64),
        });
    }
    used
}

fn is_near_branch(ins: &iced_x86::Instruction) -> bool {
    use iced_x86::OpKind;
    (0..ins.op_count()).any(|i| {
        matches!(
            ins.op_kind(i),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        )
    })
}

/// Shortest aligned range that counts as a match between the files.
pub const MIN_EQUIVALENCE: u64 = 64;

/// Matching ranges of the old and new files, as a piecewise shift of file offsets.
///
/// The forward map (old to new) is the function the decoder predicts targets with; bases are
/// mapped back by [`Self::backward_approx`]. Two revisions of both exist (FORMAT.md §6.4):
///
/// - revision 1 (payloads without [`HAS_REVISION_2`]): an old offset moves by the shift of
///   the range with the largest old start at or below it, covering it or not;
/// - revision 2: by the shift of the longest range that covers it among the
///   [`NEAR_RANGES`] ranges starting nearest at or below it, or, when none covers it, of the
///   one among them that reaches furthest. bsdiff reuses old ranges and matches short runs
///   anywhere (zeros, repeated tables): a short range starting inside a long one no longer
///   takes over the rest of it (corpus, with revision 2's other parts: `libnode` 126.4 ->
///   87.8 kB, `ko-i915` 139.3 -> 125.3).
///
/// The encoder's inverse ([`Self::backward`]) tries the ranges covering a new offset, longest
/// first, for one the forward map sends back to it.
#[derive(Clone, Debug, Default)]
pub struct Equivalences {
    revised: bool,
    /// (old start, new start), sorted by old start: revision 1's forward pieces.
    by_old: Vec<(u64, u64)>,
    /// (new start, new end, old start) of each revision 1 forward piece, sorted by new start.
    pieces: Vec<(u64, u64, u64)>,
    /// (old start, old end, new start) of each range, sorted by old start (revision 2).
    spans: Vec<(u64, u64, u64)>,
    /// (new start, new end, old start) of each range, sorted by new start.
    by_new: Vec<(u64, u64, u64)>,
}

/// How many ranges, starting nearest at or below an offset, revision 2 of the maps looks at.
pub const NEAR_RANGES: usize = 32;

/// Of `near` (ranges as (start, end, other start), nearest start last), the longest that
/// covers `at`, else the one reaching furthest: `at`'s counterpart under it.
fn through_nearest(near: &[(u64, u64, u64)], at: u64) -> Option<u64> {
    let near = &near[near.len().saturating_sub(NEAR_RANGES)..];
    let covering = near
        .iter()
        .filter(|r| at < r.1)
        .max_by_key(|r| (r.1 - r.0, r.0));
    let &(from, _, to) = covering.or_else(|| near.iter().max_by_key(|r| (r.1, r.0)))?;
    to.checked_add(at - from)
}

impl Equivalences {
    /// From a list of (old start, new start, length); ranges shorter than
    /// [`MIN_EQUIVALENCE`] are chance matches and are ignored. `revised`: revision 2 maps.
    pub fn new(ranges: &[(u64, u64, u64)], revised: bool) -> Equivalences {
        let kept = ranges.iter().filter(|r| r.2 >= MIN_EQUIVALENCE);
        let mut by_new: Vec<(u64, u64, u64)> = kept
            .clone()
            .map(|&(o, n, len)| (n, n.saturating_add(len), o))
            .collect();
        by_new.sort_unstable();
        if revised {
            let mut spans: Vec<(u64, u64, u64)> = kept
                .map(|&(o, n, len)| (o, o.saturating_add(len), n))
                .collect();
            spans.sort_unstable();
            return Equivalences {
                revised,
                spans,
                by_new,
                ..Equivalences::default()
            };
        }
        let mut by_old: Vec<(u64, u64)> = kept.map(|r| (r.0, r.1)).collect();
        by_old.sort_unstable();
        by_old.dedup_by_key(|p| p.0);
        let mut pieces: Vec<(u64, u64, u64)> = by_old
            .iter()
            .enumerate()
            .map(|(i, &(o, n))| {
                let end = by_old.get(i + 1).map_or(u64::MAX, |next| next.0);
                (n, n.saturating_add(end - o), o)
            })
            .collect();
        pieces.sort_unstable();
        Equivalences {
            revised,
            by_old,
            pieces,
            by_new,
            ..Equivalences::default()
        }
    }

    /// The aligned ranges of a patch's control records.
    pub fn from_controls(controls: &[Control], revised: bool) -> Equivalences {
        let mut ranges = Vec::with_capacity(controls.len());
        let (mut old, mut new) = (0i128, 0u64);
        for c in controls {
            if old >= 0 && old <= i128::from(u64::MAX) {
                ranges.push((old as u64, new, c.mix));
            }
            new = new.saturating_add(c.mix).saturating_add(c.copy);
            old += i128::from(c.mix) + i128::from(c.seek);
        }
        Equivalences::new(&ranges, revised)
    }

    /// An old offset that the forward map sends to `new` exactly, when there is one.
    pub fn to_old(&self, new: u64) -> Option<u64> {
        self.backward(new).filter(|&o| self.forward(o) == Some(new))
    }

    /// The forward map: where an old offset went.
    fn forward(&self, old: u64) -> Option<u64> {
        if self.revised {
            let i = self.spans.partition_point(|p| p.0 <= old);
            return through_nearest(&self.spans[..i], old);
        }
        let i = self.by_old.partition_point(|p| p.0 <= old);
        let (from, to) = self.by_old.get(i.checked_sub(1)?)?;
        to.checked_add(old - from)
    }

    /// An old offset that the forward map sends to `new`, when there is one among the
    /// ranges covering `new` (longest first); else the longest's, if any covers it.
    fn backward(&self, new: u64) -> Option<u64> {
        let i = self.by_new.partition_point(|p| p.0 <= new);
        let near = &self.by_new[i.saturating_sub(NEAR_RANGES)..i];
        let mut covering: Vec<&(u64, u64, u64)> = near.iter().filter(|p| new < p.1).collect();
        covering.sort_unstable_by_key(|p| std::cmp::Reverse((p.1 - p.0, p.0)));
        let old_of = |&&(n, _, o): &&(u64, u64, u64)| o.saturating_add(new - n);
        covering
            .iter()
            .map(old_of)
            .find(|&o| self.forward(o) == Some(new))
            .or_else(|| covering.first().map(old_of))
    }

    /// Where a new offset was in the old file, approximately. Used for bases, which both
    /// sides map the same way: revision 1 takes the shift of the nearest piece at or below
    /// it, covering or not; revision 2 maps it as the forward map does, the other way.
    fn backward_approx(&self, new: u64) -> Option<u64> {
        if self.revised {
            let i = self.by_new.partition_point(|p| p.0 <= new);
            return through_nearest(&self.by_new[..i], new);
        }
        let i = self.pieces.partition_point(|p| p.0 <= new);
        let &(n, _, o) = self.pieces.get(i.checked_sub(1)?)?;
        o.checked_add(new - n)
    }
}
/// One bsdiff record: add `mix` bytes of diff to the old file at the cursor, append `copy`
/// extra bytes, then move the old cursor by `mix + seek`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    pub mix: u64,
    pub copy: u64,
    pub seek: i64,
}

/// The diff and extra bytes a list of records needs to turn `old` into `new`, one call of
/// `each(diff, extra)` per record: diff bytes are `new - old` over the record's mix range,
/// extra bytes are `new` over its copy range. Fails when a record does not fit the files.
fn record_bytes(
    controls: &[Control],
    old: &[u8],
    new: &[u8],
    mut each: impl FnMut(&[u8], &[u8], &[u8]),
) -> Result<(), ElfError> {
    let (mut oldpos, mut newpos) = (0i128, 0usize);
    for c in controls {
        let range = |start: usize, len: u64| {
            let len = usize::try_from(len).ok()?;
            Some(start..start.checked_add(len)?)
        };
        let start = usize::try_from(oldpos).map_err(|_| bad("record reads before the old file"))?;
        let src = range(start, c.mix).and_then(|r| old.get(r));
        let mixed = range(newpos, c.mix).and_then(|r| new.get(r));
        let (Some(src), Some(mixed)) = (src, mixed) else {
            return Err(bad("record does not fit the files"));
        };
        let copied = range(newpos + mixed.len(), c.copy)
            .and_then(|r| new.get(r))
            .ok_or_else(|| bad("record does not fit the new file"))?;
        each(src, mixed, copied);
        newpos += mixed.len() + copied.len();
        oldpos += i128::from(c.mix) + i128::from(c.seek);
    }
    Ok(())
}

/// A bsdiff patch split into its three streams (records, diff bytes, extra bytes), which
/// compress far better apart: the diff bytes of a normalised image are nearly all zero.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SplitPatch {
    pub controls: Vec<Control>,
    pub diff: Vec<u8>,
    pub extra: Vec<u8>,
}

impl SplitPatch {
    /// The streams of `controls` between `old` and `new`.
    pub fn from_controls(
        controls: Vec<Control>,
        old: &[u8],
        new: &[u8],
    ) -> Result<SplitPatch, ElfError> {
        let (mut diff, mut extra) = (Vec::new(), Vec::new());
        record_bytes(&controls, old, new, |src, mixed, copied| {
            diff.extend(mixed.iter().zip(src).map(|(n, o)| n.wrapping_sub(*o)));
            extra.extend_from_slice(copied);
        })?;
        Ok(SplitPatch {
            controls,
            diff,
            extra,
        })
    }

    /// Applies the patch to `old`; every read is checked against the inputs.
    pub fn apply(&self, old: &[u8]) -> Result<Vec<u8>, ElfError> {
        apply_records(&self.controls, &self.diff, &self.extra, old)
    }
}

/// Runs bsdiff records over `old`; every read is checked against the inputs.
fn apply_records(
    controls: &[Control],
    diff: &[u8],
    extra: &[u8],
    old: &[u8],
) -> Result<Vec<u8>, ElfError> {
    let mut out = Vec::with_capacity(diff.len() + extra.len());
    let (mut oldpos, mut d, mut e) = (0i128, 0usize, 0usize);
    for c in controls {
        let (mix, copy) = (c.mix as usize, c.copy as usize);
        let diff = diff
            .get(d..d.saturating_add(mix))
            .ok_or_else(|| bad("diff stream too short"))?;
        let start = usize::try_from(oldpos).map_err(|_| bad("record reads before the old file"))?;
        let src = old
            .get(
                start
                    ..start
                        .checked_add(mix)
                        .ok_or_else(|| bad("record overflows"))?,
            )
            .ok_or_else(|| bad("record reads past the old file"))?;
        out.extend(diff.iter().zip(src).map(|(a, b)| a.wrapping_add(*b)));
        out.extend_from_slice(
            extra
                .get(e..e.saturating_add(copy))
                .ok_or_else(|| bad("extra stream too short"))?,
        );
        d += mix;
        e += copy;
        oldpos += i128::from(c.mix) + i128::from(c.seek);
    }
    Ok(out)
}

/// Maps addresses between the old and new images through the equivalences.
pub struct AddressMap<'a> {
    pub old: &'a Layout,
    pub new: &'a Layout,
    pub eq: &'a Equivalences,
    /// BTF values are not addresses: they move by these shifts.
    pub btf: &'a BtfShifts,
}

impl AddressMap<'_> {
    /// Where an address of the new image was in the old one, for a base: approximate, and
    /// computed the same way by encoder and decoder (identity when unknown).
    pub fn base_to_old(&self, addr: u64) -> u64 {
        self.new
            .to_offset(addr)
            .and_then(|o| self.eq.backward_approx(o))
            .and_then(|o| self.old.to_addr(o))
            .unwrap_or(addr)
    }

    /// Where an address of the old image went in the new one (identity when unknown): the
    /// decoder's prediction of a target.
    pub fn to_new(&self, addr: u64) -> u64 {
        self.old
            .to_offset(addr)
            .and_then(|o| self.eq.forward(o))
            .and_then(|o| self.new.to_addr(o))
            .unwrap_or(addr)
    }

    /// An old address that [`Self::to_new`] sends to `addr`; failing that, an approximation.
    pub fn target_to_old(&self, addr: u64) -> u64 {
        let exact = self
            .new
            .to_offset(addr)
            .and_then(|o| self.eq.backward(o))
            .and_then(|o| self.old.to_addr(o))
            .filter(|&a| self.to_new(a) == addr);
        exact.unwrap_or_else(|| self.base_to_old(addr))
    }

    /// The field value a reference of the new image takes once normalised to the old image.
    pub fn normalise(&self, r: &Ref, value: i64) -> i64 {
        if r.kind.is_btf() {
            return self.btf.normalise(r.kind, value);
        }
        let target = r.target_of(r.base, value);
        if r.base == 0 {
            self.target_to_old(target) as i64
        } else {
            r.value_of(self.base_to_old(r.base), self.target_to_old(target))
        }
    }

    /// The decoder's prediction of a reference's new field value from its normalised one.
    pub fn predict(&self, r: &Ref, normalised: i64) -> i64 {
        if r.kind.is_btf() {
            self.btf.predict(r.kind, normalised)
        } else if r.base == 0 {
            self.to_new(normalised as u64) as i64
        } else {
            let old_target = r.target_of(self.base_to_old(r.base), normalised);
            r.value_of(r.base, self.to_new(old_target))
        }
    }
}

/// Corrections by reference index, increasing: (index, difference from the prediction).
pub type Corrections = Vec<(usize, i64)>;

/// Sign-folds a difference so small ones of either sign encode in few bytes.
fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The difference between an actual and a predicted field value, modulo the field.
fn correction(r: &Ref, actual: i64, predicted: i64) -> i64 {
    sign_extend(actual.wrapping_sub(predicted) as u64, r.kind.bits())
}

/// Runs the decoder's restore over `image` (the normalised image, restored in place),
/// calling `fix(index, ref, predicted)` to learn the correction of each reference.
/// References are found as they are restored (FORMAT.md §6.4, step 3): each in the image as
/// restored up to it; for a payload of revision 2 (`revised`), phase E runs on executables
/// at a fixed address. Returns the number of references visited.
pub fn walk_restore(
    old: &Layout,
    image: &mut [u8],
    eq: &Equivalences,
    btf: &BtfShifts,
    revised: bool,
    mut fix: impl FnMut(usize, &Ref, i64) -> Result<i64, ElfError>,
) -> Result<usize, ElfError> {
    let new = Layout::parse(image)?.for_revision(revised);
    let map = AddressMap {
        old,
        new: &new,
        eq,
        btf,
    };
    let mut index = 0usize;
    let mut image = image;
    let mut learned = Learned::for_image(image.len());
    discover(&new, &mut image, &mut |r, image: &mut &mut [u8]| {
        let Some(normalised) = r.read(image) else {
            return Ok(());
        };
        let mut predicted = map.predict(r, normalised);
        let target = (revised && !r.kind.is_btf()).then(|| r.target_of(r.base, predicted));
        if let Some(better) = target.and_then(|t| learned.get(t)) {
            predicted = r.value_of(r.base, better);
        }
        let c = fix(index, r, predicted)?;
        r.write(image, predicted.wrapping_add(c));
        if let (Some(t), true) = (target, c != 0) {
            if let Some(v) = r.read(image) {
                learned.insert(t, r.target_of(r.base, v));
            }
        }
        index += 1;
        Ok(())
    })?;
    Ok(index)
}

/// Revision 2: the targets corrections taught the restore, by the target it had predicted.
/// The references to one target the map gets wrong (a function whose entry no aligned range
/// covers) are predicted from the first one's correction instead of each carrying its own.
/// At most [`LEARNED_MAX`] targets are kept, and one per 64 bytes of the image (bounded
/// memory whatever the payload says); both sides keep the same ones.
struct Learned {
    targets: std::collections::HashMap<u64, u64>,
    max: usize,
}

/// Most targets [`Learned`] keeps.
const LEARNED_MAX: usize = 1 << 17;

impl Learned {
    fn for_image(len: usize) -> Learned {
        Learned {
            targets: std::collections::HashMap::new(),
            max: LEARNED_MAX.min(len / 64),
        }
    }

    fn get(&self, predicted: u64) -> Option<u64> {
        self.targets.get(&predicted).copied()
    }

    fn insert(&mut self, predicted: u64, actual: u64) {
        if self.targets.len() < self.max || self.targets.contains_key(&predicted) {
            self.targets.insert(predicted, actual);
        }
    }
}

/// Calls `f` for every reference of `image` in restore order (for the encoder, which blanks
/// and normalises them); the image is not changed, so each is found in it as it is.
pub fn for_each_ref(layout: &Layout, image: &[u8], mut f: impl FnMut(&Ref)) {
    let mut image = image;
    // The visitor never fails, so neither does the walk.
    let _ = discover(layout, &mut image, &mut |r, _: &mut &[u8]| {
        f(r);
        Ok(())
    });
}

/// Calls `f` for the BTF fields (phase D) of `image` alone, in restore order (for the
/// encoder, which fits their shifts).
pub fn for_each_btf_ref(layout: &Layout, image: &[u8], mut f: impl FnMut(&Ref)) {
    let mut image = image;
    // The visitor never fails, so neither does the walk.
    let _ = btf::phase_d(layout, &mut image, &mut |r, _: &mut &[u8]| {
        f(r);
        Ok(())
    });
}

/// Writes the corrections stream: for each nonzero correction, the gap in reference indices
/// since the previous one and the zigzag value, as varints, after a varint count.
pub fn encode_corrections(corrections: &[(usize, i64)]) -> Vec<u8> {
    let mut out = Vec::new();
    put_varint(&mut out, corrections.len() as u64);
    let mut prev = 0usize;
    for &(i, c) in corrections {
        put_varint(&mut out, (i - prev) as u64);
        put_varint(&mut out, zigzag(c));
        prev = i;
    }
    out
}

/// Set in the architecture byte when BTF shift tables follow it.
const HAS_BTF: u8 = 0x80;
/// Set in the architecture byte of payloads of revision 2 (FORMAT.md §6.4): the maps of
/// [`Equivalences`] revision 2, and phase E for executables at a fixed address.
pub const HAS_REVISION_2: u8 = 0x40;

/// Builds a method-4 payload (before compression) up to its corrections: the architecture
/// byte (with [`HAS_REVISION_2`] when `revised`, and [`HAS_BTF`] and the tables when
/// there are any), then the records, diff bytes and extra bytes that turn `old` into
/// `normalised`. The corrections ([`encode_corrections`]) are appended by the caller.
pub fn build_payload(
    arch: Arch,
    btf: &BtfShifts,
    revised: bool,
    controls: &[Control],
    old: &[u8],
    normalised: &[u8],
) -> Result<Vec<u8>, ElfError> {
    let mut out = vec![arch as u8];
    if revised {
        out[0] |= HAS_REVISION_2;
    }
    if !btf.is_empty() {
        out[0] |= HAS_BTF;
        btf.write(&mut out);
    }
    put_varint(&mut out, controls.len() as u64);
    let (mut mix, mut copy) = (0u64, 0u64);
    for c in controls {
        put_varint(&mut out, c.mix);
        put_varint(&mut out, c.copy);
        put_varint(&mut out, zigzag(c.seek));
        mix = mix.saturating_add(c.mix);
        copy = copy.saturating_add(c.copy);
    }
    out.reserve(usize::try_from(mix.saturating_add(copy)).unwrap_or(0) + 20);
    put_varint(&mut out, mix);
    record_bytes(controls, old, normalised, |src, mixed, _| {
        out.extend(mixed.iter().zip(src).map(|(n, o)| n.wrapping_sub(*o)));
    })?;
    put_varint(&mut out, copy);
    record_bytes(controls, old, normalised, |_, _, copied| {
        out.extend_from_slice(copied)
    })?;
    Ok(out)
}

/// Largest zstd window (log2) of a method-4 payload's first and last frames: the decoder reads
/// them as they decompress, holding this much of them at most (FORMAT.md §6.2).
pub const WINDOW_LOG_MAX: u32 = 20;

/// A decompressed payload read as it arrives; every read is checked and an error names the
/// field and its offset.
struct Stream<R: Read> {
    inner: BufReader<R>,
    offset: u64,
}

impl<'b> Stream<&'b [u8]> {
    /// A payload already in memory (a small read buffer suffices).
    fn over(bytes: &'b [u8]) -> Self {
        Stream {
            inner: BufReader::with_capacity(1 << 10, bytes),
            offset: 0,
        }
    }
}

impl<R: Read> Stream<R> {
    fn new(inner: R) -> Self {
        Stream {
            inner: BufReader::with_capacity(1 << 16, inner),
            offset: 0,
        }
    }

    fn fail(&self, what: &str, why: impl std::fmt::Display) -> ElfError {
        bad(format!("payload: {what} at byte {}: {why}", self.offset))
    }

    /// Fills `buf` from the payload.
    fn read(&mut self, buf: &mut [u8], what: &str) -> Result<(), ElfError> {
        if let Err(e) = self.inner.read_exact(buf) {
            return Err(if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.fail(what, "truncated")
            } else {
                self.fail(what, e)
            });
        }
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn u8(&mut self, what: &str) -> Result<u8, ElfError> {
        let mut b = [0u8];
        self.read(&mut b, what)?;
        Ok(b[0])
    }

    /// An unsigned LEB128 varint of at most 64 bits (as `wire::Reader::varint`).
    fn varint(&mut self, what: &str) -> Result<u64, ElfError> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.u8(what)?;
            let low = u64::from(b & 0x7f);
            if shift == 63 && low > 1 {
                return Err(self.fail(what, "varint overflows 64 bits"));
            }
            v |= low << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.fail(what, "varint longer than 10 bytes"))
    }

    fn at_end(&mut self) -> Result<bool, ElfError> {
        match self.inner.fill_buf() {
            Ok(b) => Ok(b.is_empty()),
            Err(e) => Err(self.fail("end", e)),
        }
    }
}

/// The corrections stream, read as the restore asks for each reference's correction.
struct PendingCorrections {
    left: u64,
    next: Option<(usize, i64)>,
}

impl PendingCorrections {
    fn start<R: Read>(s: &mut Stream<R>) -> Result<Self, ElfError> {
        let mut p = PendingCorrections {
            left: s.varint("correction count")?,
            next: None,
        };
        p.advance(s, None)?;
        Ok(p)
    }

    fn advance<R: Read>(&mut self, s: &mut Stream<R>, prev: Option<usize>) -> Result<(), ElfError> {
        if self.left == 0 {
            self.next = None;
            return Ok(());
        }
        self.left -= 1;
        let gap = s.varint("correction gap")?;
        if prev.is_some() && gap == 0 {
            return Err(s.fail("correction gap", "corrections are not in increasing order"));
        }
        let at = usize::try_from(gap)
            .ok()
            .and_then(|g| prev.unwrap_or(0).checked_add(g))
            .ok_or_else(|| s.fail("correction gap", "correction index overflows"))?;
        self.next = Some((at, unzigzag(s.varint("correction")?)));
        Ok(())
    }

    /// The correction of reference `index` (0 when it has none).
    fn take<R: Read>(&mut self, s: &mut Stream<R>, index: usize) -> Result<i64, ElfError> {
        match self.next {
            Some((at, c)) if at == index => {
                self.advance(s, Some(at))?;
                Ok(c)
            }
            _ => Ok(0),
        }
    }
}

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

/// The range of the diff bytes in a method-4 payload (before compression): the encoder cuts
/// the payload's zstd frames there (FORMAT.md §6.4).
pub fn diff_range(raw: &[u8]) -> Result<Range<usize>, ElfError> {
    let mut s = Stream::new(raw);
    if s.u8("architecture")? & HAS_BTF != 0 {
        BtfShifts::read(&mut s)?;
    }
    let mut mix = 0u64;
    for _ in 0..s.varint("record count")? {
        mix = mix.saturating_add(s.varint("mix length")?);
        s.varint("copy length")?;
        s.varint("seek")?;
    }
    if s.varint("diff length")? != mix {
        return Err(bad("diff stream does not match the records"));
    }
    let start = usize::try_from(s.offset).map_err(|_| bad("payload too large"))?;
    start
        .checked_add(usize::try_from(mix).map_err(|_| bad("payload too large"))?)
        .filter(|&end| end <= raw.len())
        .map(|end| start..end)
        .ok_or_else(|| bad("diff stream runs past the payload"))
}

/// Decodes a method-4 payload as the container holds it (FORMAT.md §6.2): one zstd frame, or
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
    fn stream(frame: &[u8], bound: u64) -> Result<PayloadStream<'_>, ElfError> {
        let fail = |e: std::io::Error| bad(format!("payload frame: {e}"));
        let mut d = zstd::stream::read::Decoder::with_buffer(frame).map_err(fail)?;
        d.window_log_max(WINDOW_LOG_MAX).map_err(fail)?;
        Ok(Stream::new(Box::new(d.take(bound))))
    }
    match cut[..] {
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
fn add_old(
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
const OLD_CHUNK: usize = 1 << 16;

/// A decompressed payload, or part of one, from any source.
type PayloadStream<'a> = Stream<Box<dyn Read + 'a>>;

/// The head of a method-4 payload: the architecture byte (checked against the old file's),
/// then the records, their mixed and copied lengths bounded by `max_output`.
struct Head {
    old_layout: Layout,
    btf: BtfShifts,
    /// Revision 2 ([`HAS_REVISION_2`]).
    revised: bool,
    old_len: u64,
    controls: Vec<Control>,
    total_mix: u64,
    total_copy: u64,
}

impl Head {
    fn read<R: Read>(
        old: &Watched<'_>,
        s: &mut Stream<R>,
        max_output: u64,
    ) -> Result<Head, ElfError> {
        let byte = s.u8("architecture")?;
        let Some(arch) = Arch::from_u8(byte & !(HAS_BTF | HAS_REVISION_2)) else {
            return Err(bad(format!("payload names unknown architecture {byte}")));
        };
        let btf = if byte & HAS_BTF != 0 {
            BtfShifts::read(s)?
        } else {
            BtfShifts::default()
        };
        let old_len = old
            .source
            .size()
            .map_err(|e| bad(format!("old file: {e}")))?;
        let old_layout = Layout::read(old_len, &mut |at, buf| old.read_at(at, buf))?;
        if old_layout.arch != arch {
            return Err(bad("payload is for another architecture than the source"));
        }
        let n = s.varint("record count")?;
        // Each record takes at least three bytes of the (bounded) payload.
        let mut controls = Vec::with_capacity(n.min(1 << 16) as usize);
        let (mut total_mix, mut total_copy) = (0u64, 0u64);
        for _ in 0..n {
            let mix = s.varint("mix length")?;
            let copy = s.varint("copy length")?;
            let seek = unzigzag(s.varint("seek")?);
            total_mix = total_mix
                .checked_add(mix)
                .ok_or_else(|| bad("patch lengths overflow"))?;
            total_copy = total_copy
                .checked_add(copy)
                .ok_or_else(|| bad("patch lengths overflow"))?;
            if total_mix.saturating_add(total_copy) > max_output {
                return Err(bad(format!(
                    "patch produces {} bytes, more than the {max_output} announced",
                    total_mix.saturating_add(total_copy)
                )));
            }
            controls.push(Control { mix, copy, seek });
        }
        if s.varint("diff length")? != total_mix {
            return Err(bad("diff stream does not match the records"));
        }
        Ok(Head {
            old_layout,
            btf,
            revised: byte & HAS_REVISION_2 != 0,
            old_len,
            controls,
            total_mix,
            total_copy,
        })
    }

    /// The image's length (fits: bounded by `max_output`, and allocated by the caller).
    fn total(&self) -> Result<usize, ElfError> {
        usize::try_from(self.total_mix + self.total_copy)
            .map_err(|_| bad("patch output does not fit in memory"))
    }

    /// Where a record whose old cursor is `oldpos` reads `mix` bytes of the old file.
    fn old_range(&self, oldpos: i128, mix: u64) -> Result<u64, ElfError> {
        let start = u64::try_from(oldpos).map_err(|_| bad("record reads before the old file"))?;
        if start.checked_add(mix).is_none_or(|end| end > self.old_len) {
            return Err(bad("record reads past the old file"));
        }
        Ok(start)
    }

    /// Steps 2 to 4: restores the references of the normalised `image`, reading each
    /// correction from `s` when its turn comes, and checks that `s` then ends.
    fn restore<R: Read>(self, mut image: Vec<u8>, s: &mut Stream<R>) -> Result<Vec<u8>, ElfError> {
        let eq = Equivalences::from_controls(&self.controls, self.revised);
        drop(self.controls);
        let mut pending = PendingCorrections::start(s)?;
        let visited = walk_restore(
            &self.old_layout,
            &mut image,
            &eq,
            &self.btf,
            self.revised,
            |i, _, _| pending.take(s, i),
        )?;
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
fn zeroed(len: usize) -> Result<Vec<u8>, ElfError> {
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
fn whole_slack(max_output: u64) -> u64 {
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
fn decode_whole(
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
fn decode_core<'a>(
    old: &Watched<'_>,
    mut s: PayloadStream<'a>,
    split: Option<(&[u8], PayloadStream<'a>)>,
    max_output: u64,
) -> Result<Vec<u8>, ElfError> {
    let head = Head::read(old, &mut s, max_output)?;
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
        } else {
            s.read(&mut image[pos..pos + mix], "diff bytes")?;
        }
        add_old(old, start, &mut image[pos..pos + mix], &mut chunk)?;
        pos += mix + copy;
        oldpos += i128::from(c.mix) + i128::from(c.seek);
    }
    drop(chunk);
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

/// The encoder's side of the same walk: restores `image` (the normalised image) in place and
/// returns the corrections that turn it into `new`.
pub fn find_corrections(
    old: &Layout,
    image: &mut [u8],
    new: &[u8],
    eq: &Equivalences,
    btf: &BtfShifts,
    revised: bool,
) -> Result<Vec<(usize, i64)>, ElfError> {
    let mut out = Vec::new();
    walk_restore(old, image, eq, btf, revised, |i, r, predicted| {
        let actual = r
            .read(new)
            .ok_or_else(|| bad("reference outside the new image"))?;
        let c = correction(r, actual, predicted);
        if c != 0 {
            out.push((i, c));
        }
        Ok(c)
    })?;
    if image != new {
        return Err(bad(
            "restoring the normalised image does not give the new image",
        ));
    }
    Ok(out)
}

/// Reads a reference's value from an image (for the encoder).
pub fn read_ref(r: &Ref, image: &[u8]) -> Option<i64> {
    r.read(image)
}

/// Writes a reference's value into an image (for the encoder).
pub fn write_ref(r: &Ref, image: &mut [u8], value: i64) {
    r.write(image, value)
}

/// The target address of a reference (for the encoder's blanking and statistics).
pub fn ref_target(r: &Ref, image: &[u8]) -> Option<u64> {
    r.target(image)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A load segment whose file offset or address is near 2^64 (found by the fuzzer): the
    /// address map answers "unmapped" instead of overflowing.
    #[test]
    fn hostile_load_segments_do_not_overflow_the_address_map() {
        let layout = Layout {
            arch: Arch::X86_64,
            relocatable: false,
            fixed: true,
            pointers: true,
            loads: vec![
                Load {
                    vaddr: 0x1000,
                    offset: u64::MAX - 4,
                    memsz: 0x100,
                },
                Load {
                    vaddr: u64::MAX - 4,
                    offset: 0x9000,
                    memsz: 0x100,
                },
            ],
            sections: Vec::new(),
        };
        assert_eq!(layout.to_offset(0x1010), None);
        assert_eq!(layout.to_addr(0x9010), None);
        assert_eq!(layout.to_offset(0x1000), Some(u64::MAX - 4));
        // Phase E's test of a word: an address of a loaded segment, never zero.
        assert!(layout.holds_address(0x1000) && !layout.holds_address(0x1010));
        assert!(!layout.holds_address(0));
    }

    #[test]
    fn zigzag_round_trips() {
        for v in [0i64, 1, -1, 4096, -4097, i64::MAX, i64::MIN] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    /// Every correction a stream holds, read the way the decoder reads them.
    fn read_corrections(bytes: &[u8]) -> Result<Vec<(usize, i64)>, ElfError> {
        let mut s = Stream::new(bytes);
        let mut p = PendingCorrections::start(&mut s)?;
        let mut out = Vec::new();
        while let Some((at, c)) = p.next {
            assert_eq!(p.take(&mut s, at)?, c);
            out.push((at, c));
        }
        Ok(out)
    }

    #[test]
    fn corrections_round_trip_and_reject_disorder() {
        let c = vec![(3, 5), (10, -2), (11, 1 << 40)];
        let bytes = encode_corrections(&c);
        assert_eq!(read_corrections(&bytes).unwrap(), c);
        let mut bad = Vec::new();
        put_varint(&mut bad, 2);
        put_varint(&mut bad, 1);
        put_varint(&mut bad, 0);
        put_varint(&mut bad, 0);
        put_varint(&mut bad, 0);
        assert!(read_corrections(&bad).is_err());
        for n in 0..bytes.len() {
            assert!(read_corrections(&bytes[..n]).is_err());
        }
    }

    /// A payload that rebuilds `old` itself: one record over the whole file with zero diff
    /// bytes, then `corrections` and `trailing` bytes.
    fn identity_payload(old: &[u8], corrections: &[(usize, i64)], trailing: &[u8]) -> Vec<u8> {
        identity_payload_of(old, false, corrections, trailing)
    }

    /// [`identity_payload`] of revision 2 (`revised`) or 1.
    fn identity_payload_of(
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
        let mut p = build_payload(
            Layout::parse(old).unwrap().arch,
            &BtfShifts::default(),
            revised,
            &controls,
            old,
            old,
        )
        .unwrap();
        p.extend_from_slice(&encode_corrections(corrections));
        p.extend_from_slice(trailing);
        p
    }

    /// In revision 2 one correction serves every later reference the restore predicted to
    /// the same target: moving the first reference to a function moves the ones after it
    /// too, where revision 1 moves that one alone.
    #[test]
    fn revision_2_reuses_a_correction_for_the_same_target() {
        let old = std::fs::read("/proc/self/exe").unwrap();
        let len = old.len() as u64;
        let decoded = |revised: bool, corrections: &[(usize, i64)]| {
            decode(
                &old,
                identity_payload_of(&old, revised, corrections, &[]),
                len,
            )
            .unwrap()
        };
        // The restore's numbering (references whose bytes lie inside the file), and where
        // each points when nothing is corrected.
        let base = decoded(true, &[]);
        assert_eq!(base, decoded(false, &[]));
        let mut refs = Vec::new();
        for_each_ref(&Layout::parse(&base).unwrap(), &base, |r| {
            if let Some(t) = r.target(&base) {
                refs.push((*r, t));
            }
        });
        let mut by_target = std::collections::HashMap::<u64, Vec<usize>>::new();
        for (i, (_, t)) in refs.iter().enumerate() {
            by_target.entry(*t).or_default().push(i);
        }
        let (target, same) = by_target
            .into_iter()
            .filter(|(_, v)| v.len() >= 3 && refs[v[0]].0.kind == RefKind::Rel32)
            .min_by_key(|(t, v)| (v[0], *t))
            .expect("a function called three times");
        let moved = |revised: bool| {
            let out = decoded(revised, &[(same[0], 16)]);
            let changed: Vec<usize> = (0..refs.len())
                .filter(|&i| refs[i].0.read(&out) != refs[i].0.read(&base))
                .collect();
            for &i in &changed {
                assert_eq!(refs[i].0.target(&out), Some(target + 16), "reference {i}");
            }
            changed
        };
        assert_eq!(moved(false), [same[0]]);
        assert_eq!(moved(true), same);
    }

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

    #[test]
    fn decoder_reads_the_payload_as_it_arrives() {
        let old = std::fs::read("/proc/self/exe").unwrap();
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

    /// The device reads a payload's frames through a window of at most 2^20 bytes (a larger
    /// window is refused before anything is read, so memory stays bounded), except the middle
    /// one of three, the diff bytes, which it decompresses into the image in one call.
    #[test]
    fn payloads_are_three_frames_with_a_bounded_window() {
        use crate::format::{apply_delta, encode_delta, DeltaHeader, Hash, Method};
        let old = std::fs::read("/proc/self/exe").unwrap();
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
        for i in (crate::format::container::HEADER_LEN..good.len()).step_by(step) {
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
        use crate::format::container::{apply_delta_to, Source};
        use crate::format::{apply_delta, encode_delta, DeltaHeader, Hash, Method};
        let old = std::fs::read("/proc/self/exe").unwrap();
        let len = old.len() as u64;
        let (a, b) = (len / 3, 2 * len / 3);
        // The old file with 8 and 5 bytes replaced, its middle taken from 50 bytes earlier.
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
                seek: 0,
            },
        ];
        let mut target = old.clone();
        let (a, b) = (a as usize, b as usize);
        target[a..a + 8].fill(1);
        target[b..b + 5].fill(2);
        let arch = Layout::parse(&old).unwrap().arch;
        let mut raw =
            build_payload(arch, &BtfShifts::default(), false, &controls, &old, &target).unwrap();
        raw.extend_from_slice(&encode_corrections(&[(1, 3)]));
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
        // The same delta applied to the old file read from disk.
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        tmp.write_all(&old).unwrap();
        let header = DeltaHeader {
            method: Method::Elf,
            source: Hash::of(&old),
            target: Hash::of(&streamed),
            target_size: streamed.len() as u64,
        };
        let delta = encode_delta(&header, &f);
        let from_file = Source::File {
            file: tmp.as_file(),
            path: tmp.path(),
        };
        assert!(apply_delta_to(&delta, from_file, None).unwrap() == streamed);
        assert!(apply_delta(&delta, &old, None).unwrap() == streamed);
        // Flipped bits: an error, or still the right image.
        let step = (delta.len() / 64).max(1);
        for i in (crate::format::container::HEADER_LEN..delta.len()).step_by(step) {
            let mut p = delta.clone();
            p[i] ^= 0x10;
            if let Ok(out) = apply_delta_to(&p, from_file, None) {
                assert!(out == streamed, "flip at {i} accepted with other output");
            }
        }
        // A source file cut short (its section headers are gone).
        tmp.as_file().set_len(len / 2).unwrap();
        let short = Watched::new(from_file);
        assert!(decode_frames_from(&short, &f, len, bound).is_err());
    }

    #[test]
    fn hostile_payloads_fail_cleanly() {
        let old = std::fs::read("/proc/self/exe").unwrap();
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
        let mut huge = vec![1u8];
        put_varint(&mut huge, 1);
        put_varint(&mut huge, 0);
        put_varint(&mut huge, u64::MAX / 2);
        put_varint(&mut huge, 0);
        assert!(decode(&old, huge, 1 << 40).is_err());
        let mut short = vec![1u8];
        put_varint(&mut short, 1);
        put_varint(&mut short, 16);
        put_varint(&mut short, 1 << 20);
        put_varint(&mut short, 0);
        put_varint(&mut short, 16);
        short.extend_from_slice(&[0; 16]);
        put_varint(&mut short, 1 << 20);
        assert!(decode(&old, short, len).is_err());
        // A record reading before or past the old file.
        for seek in [1i64, -100] {
            let mut p = vec![1u8];
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

    #[test]
    fn backward_inverts_forward_where_a_preimage_exists() {
        let ranges = [
            (100, 200, 500),
            (1000, 900, 100),
            (400, 2000, 300),
            (5000, 7000, 10),
        ];
        let eq = Equivalences::new(&ranges, true);
        assert_eq!(eq.forward(120), Some(220));
        assert_eq!(eq.forward(1005), Some(905));
        assert_eq!(eq.forward(50), None);
        // Every old offset inside a range maps to a new offset that the inverse finds a
        // preimage of (not always the same offset: (400, 2000) lies inside the longer
        // (100, 200), which wins there).
        for old in (0..1200).filter(|&o| {
            ranges
                .iter()
                .any(|r| r.2 >= 64 && (r.0..r.0 + r.2).contains(&o))
        }) {
            let new = eq.forward(old).unwrap();
            let back = eq.to_old(new).unwrap_or_else(|| panic!("{old} -> {new}"));
            assert_eq!(eq.forward(back), Some(new), "{old}");
        }
        assert_eq!(eq.to_old(2010), None, "no old offset maps there");
        assert_eq!(eq.backward(150), None);
    }

    /// Revision 1 moves an old offset by the range starting nearest below it; revision 2 by
    /// the longest range covering it, so a short match starting inside a long one (bsdiff
    /// reuses old bytes) maps only its own bytes; past every range, by the one reaching
    /// furthest.
    #[test]
    fn revision_2_maps_through_the_longest_covering_range() {
        let ranges = [(0, 1000, 500), (100, 5000, 64), (600, 9000, 64)];
        let (v1, v2) = (
            Equivalences::new(&ranges, false),
            Equivalences::new(&ranges, true),
        );
        assert_eq!(v1.forward(300), Some(5200));
        assert_eq!(v2.forward(300), Some(1300));
        assert_eq!(v2.forward(120), Some(1120));
        assert_eq!(v2.forward(610), Some(9010));
        // Past every range: revision 2 extends the one reaching furthest (600..664).
        assert_eq!(v2.forward(700), Some(9100));
        assert_eq!(v2.backward(1300), Some(300));
        assert_eq!(v2.backward_approx(1300), Some(300));
        assert_eq!(v1.backward_approx(5010), Some(110));
    }

    #[test]
    fn non_elf_and_truncated_images_are_refused() {
        assert!(Layout::parse(b"not an elf at all").is_err());
        let me = std::fs::read("/proc/self/exe").unwrap();
        assert!(Layout::parse(&me).is_ok());
        for n in [0, 16, 63, 64, 100] {
            assert!(Layout::parse(&me[..n]).is_err(), "{n}");
        }
    }
}
