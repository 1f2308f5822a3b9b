//! An ELF file's layout as the method needs it: class, type, architecture, `PT_LOAD`
//! segments and sections, read with goblin from the headers alone and checked against the
//! file's length; and the map between addresses and file offsets.

use std::ops::Range;

use goblin::container::{Container, Ctx};
use goblin::elf::header::{
    et_to_str, machine_to_str, EI_CLASS, EI_DATA, ELFCLASS32, ELFCLASS64, ELFDATA2LSB, ELFDATA2MSB,
    EM_AARCH64, EM_X86_64, ET_DYN, ET_EXEC, ET_REL,
};
use goblin::elf::program_header::PT_LOAD;
use goblin::elf::section_header::SHT_PROGBITS;
use goblin::elf::{Elf, ProgramHeader, SectionHeader};

use super::{bad, Arch, ElfError, RefKind, Revision};
use crate::method::Source;

/// An ELF file's headers, as far as this method needs them.
#[derive(Clone, Debug)]
pub struct Layout {
    pub arch: Arch,
    /// Relocatable objects (kernel modules) use file offsets as addresses.
    pub relocatable: bool,
    /// An executable at a fixed address (`ET_EXEC`, not position-independent): its data holds
    /// addresses that no relocation names.
    pub fixed: bool,
    /// The payload revision the references are read as ([`Layout::for_payload`]).
    pub(super) revision: Revision,
    /// The address of the first `.eh_frame_hdr` section.
    pub(super) index_addr: Option<u64>,
    pub(super) loads: Vec<Load>,
    pub(super) sections: Vec<Section>,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Load {
    pub(super) vaddr: u64,
    pub(super) offset: u64,
    pub(super) memsz: u64,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Section {
    pub(super) kind: u32,
    pub(super) flags: u64,
    pub(super) addr: u64,
    pub(super) offset: u64,
    pub(super) size: u64,
    pub(super) link: u32,
    pub(super) info: u32,
    pub(super) entsize: u64,
    /// Named `.BTF`: split BTF type records (phase D).
    pub(super) btf: bool,
    /// Named `.eh_frame` or `.eh_frame_hdr`: unwind tables (phase F).
    pub(super) unwind: Option<Unwind>,
}

/// The two unwind sections of phase F.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Unwind {
    /// `.eh_frame`: CIE and FDE records.
    Frames,
    /// `.eh_frame_hdr`: the sorted table of functions and their FDEs.
    Index,
}

impl Section {
    /// The section's bytes as a range of the file, when it lies inside it.
    pub(super) fn file_range(&self, len: usize) -> Option<Range<usize>> {
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

    /// [`Layout::parse`] of an open file, reading its headers only (the cheap question "does
    /// the method's layout parser accept this file, and if not, why").
    pub fn from_file(file: &std::fs::File) -> Result<Layout, ElfError> {
        let source = Source::File {
            file,
            path: std::path::Path::new(""),
        };
        let len = source
            .size()
            .map_err(|e| bad(format!("cannot read the file's length: {e}")))?;
        Layout::read(len, &mut |at, buf| source.read_at(at, buf))
    }

    /// What kind of image this is, for people: `x86-64 PIE or shared object`, `AArch64
    /// executable at a fixed address`, `x86-64 relocatable object`.
    pub fn describe(&self) -> String {
        let arch = match self.arch {
            Arch::X86_64 => "x86-64",
            Arch::AArch64 => "AArch64",
        };
        let kind = if self.relocatable {
            "relocatable object"
        } else if self.fixed {
            "executable at a fixed address"
        } else {
            "PIE or shared object"
        };
        format!(
            "{arch} {kind}, {} load segments, {} sections",
            self.loads.len(),
            self.sections.len()
        )
    }

    /// [`Layout::parse`] of a file of `len` bytes read by `read_at` (its headers only: at
    /// most 64 bytes, then the program and section header tables, each checked against `len`
    /// before it is read).
    pub(super) fn read(
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
        let (class, data) = (header.e_ident[EI_CLASS], header.e_ident[EI_DATA]);
        let machine = || {
            format!(
                "{} ({})",
                header.e_machine,
                machine_to_str(header.e_machine)
            )
        };
        if class != ELFCLASS64 || data != ELFDATA2LSB {
            let class = match class {
                ELFCLASS32 => "32-bit",
                ELFCLASS64 => "64-bit",
                _ => "unknown-class",
            };
            let data = match data {
                ELFDATA2LSB => "little-endian",
                ELFDATA2MSB => "big-endian",
                _ => "unknown-byte-order",
            };
            // x32 (EM_X86_64 in a 32-bit file) is named: it is the one "x86-64" refused here.
            let x32 = if class == "32-bit" && header.e_machine == EM_X86_64 {
                ", the x32 ABI"
            } else {
                ""
            };
            return Err(bad(format!(
                "{class} {data} ELF for machine {}{x32}: only 64-bit little-endian ELF is supported",
                machine()
            )));
        }
        let arch = match header.e_machine {
            EM_X86_64 => Arch::X86_64,
            EM_AARCH64 => Arch::AArch64,
            _ => {
                return Err(bad(format!(
                    "ELF machine {} is not supported (only x86-64 and AArch64)",
                    machine()
                )))
            }
        };
        let relocatable = match header.e_type {
            ET_REL => true,
            ET_DYN | ET_EXEC => false,
            t => {
                return Err(bad(format!(
                    "ELF type {t} ({}) is not supported (only REL, EXEC and DYN)",
                    et_to_str(t)
                )))
            }
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
        // Section names are read only to find `.BTF`, `.eh_frame` and `.eh_frame_hdr`: at
        // most 14 bytes of the section name table each.
        let names = shs.get(usize::from(header.e_shstrndx)).map(|n| n.sh_offset);
        let mut name_of = |s: &SectionHeader| {
            let mut name = [0u8; 14];
            let Some(at) = names.and_then(|n| n.checked_add(s.sh_name as u64)) else {
                return name;
            };
            let n = len.saturating_sub(at).min(14) as usize;
            // PROGBITS, or SHT_X86_64_UNWIND (some linkers' `.eh_frame`).
            let named = s.sh_type == SHT_PROGBITS || s.sh_type == 0x7000_0001;
            if !named || read_at(at, &mut name[..n]).is_err() {
                name = [0; 14];
            }
            name
        };
        let sections = shs
            .iter()
            .map(|s| {
                let name = name_of(s);
                let unwind = if name.starts_with(b".eh_frame\0") {
                    Some(Unwind::Frames)
                } else if name.starts_with(b".eh_frame_hdr\0") {
                    Some(Unwind::Index)
                } else {
                    None
                };
                Section {
                    kind: s.sh_type,
                    flags: s.sh_flags,
                    addr: s.sh_addr,
                    offset: s.sh_offset,
                    size: s.sh_size,
                    link: s.sh_link,
                    info: s.sh_info,
                    entsize: s.sh_entsize,
                    btf: s.sh_type == SHT_PROGBITS && name.starts_with(b".BTF\0"),
                    unwind,
                }
            })
            .collect::<Vec<Section>>();
        let index_addr = sections
            .iter()
            .find(|s| s.unwind == Some(Unwind::Index))
            .map(|s| s.addr);
        Ok(Layout {
            arch,
            relocatable,
            fixed,
            revision: Revision::One,
            index_addr,
            loads,
            sections,
        })
    }

    /// File offset (extended past the file for `.bss`) of an address.
    pub(super) fn to_offset(&self, addr: u64) -> Option<u64> {
        if self.relocatable {
            return Some(addr);
        }
        self.loads
            .iter()
            .find(|l| addr >= l.vaddr && addr - l.vaddr < l.memsz)
            .and_then(|l| (addr - l.vaddr).checked_add(l.offset))
    }

    /// Address of a file offset (extended past the file for `.bss`).
    pub(super) fn to_addr(&self, offset: u64) -> Option<u64> {
        if self.relocatable {
            return Some(offset);
        }
        self.loads
            .iter()
            .find(|l| offset >= l.offset && offset - l.offset < l.memsz)
            .and_then(|l| (offset - l.offset).checked_add(l.vaddr))
    }

    /// This layout as a payload of `revision` reads it: in revision 2
    /// ([`super::HAS_REVISION_2`]) phase E runs for an executable at a fixed address; in
    /// revision 3 ([`super::HAS_REVISION_3`]) an AArch64 ADRP and the instruction adding its
    /// low 12 bits are one reference, each symbol's name is one, and so is the symbol index
    /// of each relocation of a relocatable object; in revision 4 ([`super::HAS_REVISION_4`])
    /// the addresses of `.eh_frame` and `.eh_frame_hdr` are references (phase F), in images
    /// that are not relocatable.
    pub fn for_payload(mut self, revision: Revision) -> Layout {
        self.revision = revision;
        self
    }

    /// Phase E runs (revision 2, executables at a fixed address).
    pub(super) fn pointers(&self) -> bool {
        self.revision >= Revision::Two && self.fixed
    }

    /// Phase A takes symbols' names (revision 3).
    pub(super) fn symbol_names_are_refs(&self) -> bool {
        self.revision >= Revision::Three
    }

    /// Phase F runs (revision 4, images at their addresses).
    pub(super) fn unwind_tables(&self) -> bool {
        self.revision >= Revision::Four && !self.relocatable
    }

    /// The address of `.eh_frame_hdr`, the base of its table's rows, when phase F runs.
    pub(super) fn unwind_index(&self) -> Option<u64> {
        self.index_addr.filter(|_| self.unwind_tables())
    }

    /// Phase C pairs ADRPs (revision 3, AArch64).
    pub(super) fn adrp_pairs(&self) -> bool {
        self.revision >= Revision::Three && self.arch == Arch::AArch64
    }

    /// Phase A takes relocations' symbol indices (revision 3, relocatable objects).
    pub(super) fn symbol_indices(&self) -> bool {
        self.revision >= Revision::Three && self.relocatable
    }

    /// Where the first `SHT_SYMTAB` section with 24-byte entries is: (file offset, size).
    pub(super) fn symtab(&self) -> Option<(u64, u64)> {
        let s = self.first_symbols(false)?;
        Some((s.offset, s.size))
    }

    /// The first `SHT_SYMTAB` (or, `dynamic`, `SHT_DYNSYM`) section with 24-byte entries.
    fn first_symbols(&self, dynamic: bool) -> Option<&Section> {
        use goblin::elf::section_header::{SHT_DYNSYM, SHT_SYMTAB};
        let kind = if dynamic { SHT_DYNSYM } else { SHT_SYMTAB };
        self.sections
            .iter()
            .find(|s| s.kind == kind && s.entsize == 24)
    }

    /// Where the string table that the first symbol table of its kind links is: (file
    /// offset, size).
    pub(super) fn symbol_names(&self, dynamic: bool) -> Option<(u64, u64)> {
        let s = self
            .sections
            .get(self.first_symbols(dynamic)?.link as usize)?;
        (s.kind == goblin::elf::section_header::SHT_STRTAB).then_some((s.offset, s.size))
    }

    /// Whether `value` may be an address of this image for phase E: inside a loaded segment
    /// (`.bss` included), and not zero.
    pub fn holds_address(&self, value: u64) -> bool {
        value != 0 && !self.relocatable && self.to_offset(value).is_some()
    }

    /// Whether a field of `kind` found by its value ([`RefKind::found_by_value`]) that holds
    /// `value` is found: the value fits the field and is an address of the image.
    pub fn finds(&self, kind: RefKind, value: u64) -> bool {
        (kind != RefKind::Abs32 || value <= u64::from(u32::MAX)) && self.holds_address(value)
    }

    /// Phase C takes the 32-bit immediates and displacements that hold addresses
    /// ([`RefKind::Abs32`]): revision 5, x86-64 executables at a fixed address.
    pub(super) fn absolute_code(&self) -> bool {
        self.revision >= Revision::Five && self.fixed && self.arch == Arch::X86_64
    }

    /// Where a section's content starts, as an address of this method's address space.
    pub(super) fn section_base(&self, index: usize) -> Option<u64> {
        let s = self.sections.get(index)?;
        Some(if self.relocatable { s.offset } else { s.addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::elf::testing::*;
    use crate::elf::*;

    /// A load segment whose file offset or address is near 2^64 (found by the fuzzer): the
    /// address map answers "unmapped" instead of overflowing.
    #[test]
    fn hostile_load_segments_do_not_overflow_the_address_map() {
        let layout = Layout {
            arch: Arch::X86_64,
            relocatable: false,
            fixed: true,
            revision: Revision::Two,
            index_addr: None,
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

    /// Refusals say what the file is: class, byte order, machine (x32 named), type.
    #[test]
    fn refusals_name_class_machine_and_type() {
        let edit = |at: usize, bytes: &[u8]| {
            let mut image = X86_64_PIE.to_vec();
            image[at..at + bytes.len()].copy_from_slice(bytes);
            Layout::parse(&image).unwrap_err().to_string()
        };
        let x32 = edit(4, &[1]);
        assert!(
            x32.starts_with("32-bit little-endian ELF for machine 62 (X86_64), the x32 ABI"),
            "{x32}"
        );
        let arm = edit(18, &40u16.to_le_bytes());
        assert!(
            arm.starts_with("ELF machine 40 (ARM) is not supported"),
            "{arm}"
        );
        let core = edit(16, &4u16.to_le_bytes());
        assert!(
            core.starts_with("ELF type 4 (CORE) is not supported"),
            "{core}"
        );
    }

    #[test]
    fn non_elf_and_truncated_images_are_refused() {
        assert!(Layout::parse(b"not an elf at all").is_err());
        for me in images() {
            assert!(Layout::parse(&me).is_ok());
            for n in [0, 16, 63, 64, 100] {
                assert!(Layout::parse(&me[..n]).is_err(), "{n}");
            }
        }
    }
}
