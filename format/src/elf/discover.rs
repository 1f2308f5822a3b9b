//! Finding references, in restore order (phases A to E, see the module above): relocation
//! and symbol tables, the pointer slots relocations name, PC-relative operands of x86-64 and
//! AArch64 code, BTF records ([`super::btf`]), and in revision 2 the data words of fixed
//! executables that hold addresses. Each reference is handed to a visitor as it is found.

use goblin::elf::section_header::{
    SHF_ALLOC, SHF_EXECINSTR, SHF_INFO_LINK, SHT_DYNSYM, SHT_FINI_ARRAY, SHT_INIT_ARRAY,
    SHT_PREINIT_ARRAY, SHT_PROGBITS, SHT_RELA, SHT_SYMTAB,
};

use super::layout::Section;
use super::refs::{read_u16, read_u64};
use super::{btf, Arch, ElfError, Layout, Ref, RefKind};

/// `SHT_RELR`: packed relative relocations.
pub(super) const SHT_RELR: u32 = 19;
pub(super) const STT_SECTION: u8 = 3;
/// Section indices at or above this are reserved (ABS, COMMON, …).
pub(super) const SHN_LORESERVE: u16 = 0xff00;

/// Entries of a table section: (file offset of each entry).
pub(super) fn entries(s: &Section, len: usize, size: usize) -> impl Iterator<Item = usize> {
    let range = s.file_range(len).filter(|_| s.entsize == size as u64);
    range.into_iter().flat_map(move |r| {
        (r.start..r.end)
            .step_by(size)
            .filter(move |&e| e + size <= r.end)
    })
}

/// What a discovery pass hands each reference to, with the image, which it may change: the
/// next reference is found in the image as the visitor left it.
pub(super) type Visit<'v, I> = dyn FnMut(&Ref, &mut I) -> Result<(), ElfError> + 'v;

/// Phase C finds at most this many references before handing them on (bounded memory).
pub(super) const CODE_CHUNK: usize = 1024;

/// Finds every reference of `image` in restore order (phases A to F) and visits each as it
/// is found. Nothing is collected: memory does not grow with the number of references.
pub(super) fn discover<I: AsRef<[u8]>>(
    layout: &Layout,
    image: &mut I,
    visit: &mut Visit<'_, I>,
) -> Result<(), ElfError> {
    phase_a(layout, image, visit)?;
    phase_b(layout, image, visit)?;
    phase_c(layout, image, visit)?;
    btf::phase_d(layout, image, visit)?;
    phase_e(layout, image, visit)?;
    super::unwind::phase_f(layout, image, visit)
}

/// Phase A: address fields of relocation and symbol tables.
pub(super) fn phase_a<I: AsRef<[u8]>>(
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
                    // Revision 3: the symbol index first, so that what follows reads it
                    // restored.
                    if layout.symbol_indices() {
                        visit(
                            &Ref {
                                loc: e + 12,
                                kind: RefKind::SymIndex,
                                base: 0,
                            },
                            image,
                        )?;
                    }
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
                    // Revision 3: the name, an offset into the linked string table.
                    if layout.symbol_names_are_refs() {
                        visit(
                            &Ref {
                                loc: e,
                                kind: RefKind::SymName {
                                    dynamic: s.kind == SHT_DYNSYM,
                                },
                                base: 0,
                            },
                            image,
                        )?;
                    }
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
pub(super) fn section_symbol_base(
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
pub(super) fn phase_b<I: AsRef<[u8]>>(
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
pub(super) fn phase_c<I: AsRef<[u8]>>(
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
        // the last instruction found. The visits change immediates alone (each reference
        // lies inside its own instruction, or for an ADRP pair its two), and finding reads
        // opcode and register bits alone, so this equals visiting each one as it is found.
        let mut at = range.start;
        while at < range.end {
            found.clear();
            let code = &image.as_ref()[at..range.end];
            let base = ip.wrapping_add((at - range.start) as u64);
            let used = match layout.arch {
                Arch::X86_64 => {
                    let absolute = layout.absolute_code().then_some(layout);
                    x86_code(code, at, base, absolute, &mut found)
                }
                Arch::AArch64 => a64_code(code, at, base, layout.adrp_pairs(), &mut found),
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
/// address of the image ([`Layout::finds`]). An executable at a fixed address
/// stores its pointers (function tables, string tables, jump tables in `.rodata`) as plain
/// words with no relocation to name them. A word of other data that happens to look like an
/// address costs a correction, never a wrong result: encoder and decoder judge the same words.
pub(super) fn phase_e<I: AsRef<[u8]>>(
    layout: &Layout,
    image: &mut I,
    visit: &mut Visit<'_, I>,
) -> Result<(), ElfError> {
    if !layout.pointers() {
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
            if read_u64(image.as_ref(), at).is_some_and(|v| layout.finds(RefKind::Ptr64, v)) {
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
/// [`CODE_CHUNK`] are found; returns the bytes swept. With `absolute` (revision 5, an
/// executable at a fixed address) also every other 32-bit displacement, then 32-bit
/// immediate, of an instruction whose value, zero-extended, `absolute` finds an address
/// ([`RefKind::Abs32`]): such code names its data by absolute address. Found by value, so
/// the value is read as the image holds it when the chunk is found; a visit changes only its
/// own field, so that is the value it has when its turn comes.
pub(super) fn x86_code(
    code: &[u8],
    start: usize,
    ip: u64,
    absolute: Option<&Layout>,
    out: &mut Vec<Ref>,
) -> usize {
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
        } else if let Some(layout) = absolute {
            let field = |offset: usize| {
                let b = code.get(at + offset..at + offset + 4)?;
                let v = u32::from_le_bytes(b.try_into().ok()?);
                layout.finds(RefKind::Abs32, u64::from(v)).then_some(Ref {
                    loc: start + at + offset,
                    kind: RefKind::Abs32,
                    base: 0,
                })
            };
            if offs.displacement_size() == 4 && !ins.is_ip_rel_memory_operand() {
                out.extend(field(offs.displacement_offset()));
            }
            if offs.immediate_size() == 4 {
                out.extend(field(offs.immediate_offset()));
            }
        }
    }
    dec.position()
}

/// AArch64: every aligned instruction word that holds a PC-relative field, until
/// [`CODE_CHUNK`] are found; returns the bytes swept (whole words). With `pairs` (revision
/// 3), an ADRP is taken together with the instruction that adds its address's low 12 bits
/// ([`adrp_pair`]).
pub(super) fn a64_code(
    code: &[u8],
    start: usize,
    ip: u64,
    pairs: bool,
    out: &mut Vec<Ref>,
) -> usize {
    let word = |n: usize| {
        code.get(4 * n..4 * n + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    };
    let mut used = 0;
    for n in 0..code.len() / 4 {
        if out.len() >= CODE_CHUNK {
            break;
        }
        used = 4 * (n + 1);
        let w = word(n).expect("a whole word");
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
            match adrp_pair(w, |gap| word(n + gap)).filter(|_| pairs) {
                Some((gap, scale)) => RefKind::A64AdrpPair { gap, scale },
                None => RefKind::A64Adrp,
            }
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

/// Most words after an ADRP in which [`adrp_pair`] looks for the instruction that adds the
/// low bits.
pub(super) const PAIR_GAP: usize = 8;

/// The instruction that completes ADRP `w`'s address, as (words after the ADRP, log2 of the
/// access size): among the next [`PAIR_GAP`] words (`next(gap)`), the first ADD (immediate,
/// 64-bit, unshifted) or load/store (unsigned offset) whose base register is the ADRP's
/// destination. The search stops at a branch, exception or system instruction (a hint
/// too), at an ADR or ADRP, and at the end of the section. (Stopping also where the register
/// may be overwritten, at a word whose bits 0-4 name it, paired fewer words and left the
/// AArch64 corpus's payloads 0.05 % larger.) Only opcode and register bits are read, never
/// an immediate, so the encoder (on the new file) and the device (on the normalised image)
/// pair the same words, and no word completes two ADRPs.
pub(super) fn adrp_pair(w: u32, next: impl Fn(usize) -> Option<u32>) -> Option<(u8, u8)> {
    let rd = w & 31;
    if rd == 31 {
        return None;
    }
    for gap in 1..=PAIR_GAP {
        let v = next(gap)?;
        let rn = v >> 5 & 31;
        if v & 0xffc0_0000 == 0x9100_0000 && rn == rd {
            return Some((gap as u8, 0));
        }
        if v & 0x3b00_0000 == 0x3900_0000 && rn == rd {
            let size = (v >> 30) as u8;
            let vector_q = v & 1 << 26 != 0 && size == 0 && v & 1 << 23 != 0;
            return Some((gap as u8, if vector_q { 4 } else { size }));
        }
        // Branch, exception and system instructions; ADR and ADRP.
        if v & 0x1c00_0000 == 0x1400_0000 || v & 0x1f00_0000 == 0x1000_0000 {
            return None;
        }
    }
    None
}

pub(super) fn is_near_branch(ins: &iced_x86::Instruction) -> bool {
    use iced_x86::OpKind;
    (0..ins.op_count()).any(|i| {
        matches!(
            ins.op_kind(i),
            OpKind::NearBranch16 | OpKind::NearBranch32 | OpKind::NearBranch64
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(ws: &[u32]) -> Option<(u8, u8)> {
        adrp_pair(ws[0], |gap| ws.get(gap).copied())
    }

    #[test]
    fn adrp_pairs_are_found_by_opcode_and_register() {
        let adrp_x1 = 0x9000_0001;
        let nop = 0xd503_201f;
        // add x1, x1, #imm; add x0, x1, #imm (another destination: still the pair)
        assert_eq!(pair(&[adrp_x1, 0x9100_0021]), Some((1, 0)));
        assert_eq!(
            pair(&[adrp_x1, nop, 0x9100_0020]),
            None,
            "a hint stops the search"
        );
        assert_eq!(pair(&[adrp_x1, 0xaa02_03e3, 0x9100_0020]), Some((2, 0)));
        // ldr x2 / ldr w2 / ldrb w2 / ldr q2 / str d2, [x1, #imm]
        assert_eq!(pair(&[adrp_x1, 0xf940_0022]), Some((1, 3)));
        assert_eq!(pair(&[adrp_x1, 0xb940_0022]), Some((1, 2)));
        assert_eq!(pair(&[adrp_x1, 0x3940_0022]), Some((1, 0)));
        assert_eq!(pair(&[adrp_x1, 0x3dc0_0022]), Some((1, 4)));
        assert_eq!(pair(&[adrp_x1, 0xfd00_0022]), Some((1, 3)));
        // Another base register; an ADD with its immediate shifted by 12; a 32-bit ADD.
        assert_eq!(pair(&[adrp_x1, 0x9100_0042]), None);
        assert_eq!(pair(&[adrp_x1, 0x9140_0021]), None);
        assert_eq!(pair(&[adrp_x1, 0x1100_0021]), None);
        // A branch or another ADRP first; nothing within reach; the section's end.
        assert_eq!(pair(&[adrp_x1, 0x9400_0010, 0x9100_0021]), None);
        assert_eq!(pair(&[adrp_x1, 0x9000_0002, 0x9100_0021]), None);
        let mut far = vec![adrp_x1];
        far.extend([0xaa02_03e3; PAIR_GAP]);
        far.push(0x9100_0021);
        assert_eq!(pair(&far), None);
        assert_eq!(pair(&[adrp_x1]), None);
        // ADRP into xzr names no register to pair with.
        assert_eq!(pair(&[0x9000_001f, 0x9100_03ff]), None);
    }
}
