//! References: a field of the image whose value, scaled, is a target address less a base,
//! and how each kind of field (64-bit words, rel32, AArch64 immediates, BTF ids) stores it.

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
    /// x86-64, an executable at a fixed address (revision 5, phase C): a 32-bit immediate or
    /// displacement other than a rel32 whose value, zero-extended, is an address of the image
    /// (`mov $addr, %edi`, `jmp *addr(,%rax,8)`): found by its value, like [`RefKind::Ptr64`].
    Abs32,
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
    /// AArch64 ADRP and the instruction `gap` words after it that adds the low 12 bits of the
    /// same address (revision 3, [`super::HAS_REVISION_3`]): an ADD (immediate), whose imm12
    /// is those bits, or a load or store (unsigned offset) of `1 << scale` bytes, whose imm12
    /// holds them divided by its size. One 33-bit byte offset from the ADRP's page: the
    /// page offset times 4096 plus the low 12 bits. A load's imm12 bits above the low 12
    /// address bits (an offset past the page, rare) are part of the instruction, not of the
    /// value, and are kept as they are.
    A64AdrpPair { gap: u8, scale: u8 },
    /// BTF: a 32-bit little-endian type id (phase D, predicted by [`BtfShifts`]).
    BtfType,
    /// A relocatable object's relocation: the symbol index, the high 32 bits of `r_info`
    /// (revision 3, phase A), predicted through the symbol tables' alignment.
    SymIndex,
    /// A symbol's name (`st_name`, revision 3, phase A): an offset into the string table
    /// the first `SHT_SYMTAB` (or, `dynamic`, `SHT_DYNSYM`) section links, predicted
    /// through the alignment of the two string tables.
    SymName { dynamic: bool },
    /// BTF: a 32-bit little-endian string offset (phase D, predicted by [`BtfShifts`]).
    BtfStr,
}

impl RefKind {
    /// A BTF field.
    pub fn is_btf(self) -> bool {
        matches!(self, RefKind::BtfType | RefKind::BtfStr)
    }

    /// A field found by its value, not named by a table or an opcode: the encoder normalises
    /// it only to a value the device also finds ([`super::Layout::finds`]).
    pub fn found_by_value(self) -> bool {
        matches!(self, RefKind::Ptr64 | RefKind::Abs32)
    }

    /// A field whose value is an index or an offset of a table, not an address: a BTF field
    /// or a symbol index.
    pub fn is_index(self) -> bool {
        self.is_btf() || matches!(self, RefKind::SymIndex | RefKind::SymName { .. })
    }

    pub(super) fn size(self) -> usize {
        match self {
            RefKind::Abs64 | RefKind::Ptr64 => 8,
            RefKind::A64AdrpPair { gap, .. } => 4 * (usize::from(gap) + 1),
            _ => 4,
        }
    }

    pub(super) fn is_64(self) -> bool {
        matches!(self, RefKind::Abs64 | RefKind::Ptr64)
    }

    /// Width of the value field in bits.
    pub(super) fn bits(self) -> u32 {
        match self {
            RefKind::Abs64 | RefKind::Ptr64 => 64,
            RefKind::Rel32
            | RefKind::Abs32
            | RefKind::BtfType
            | RefKind::BtfStr
            | RefKind::SymIndex
            | RefKind::SymName { .. } => 32,
            RefKind::A64Branch26 => 26,
            RefKind::A64Imm19 => 19,
            RefKind::A64Imm14 => 14,
            RefKind::A64Adr | RefKind::A64Adrp => 21,
            RefKind::A64AdrpPair { .. } => 33,
        }
    }

    /// log2 of the bytes one unit of the field stands for.
    pub(super) fn shift(self) -> u32 {
        match self {
            RefKind::Abs64
            | RefKind::Ptr64
            | RefKind::Rel32
            | RefKind::Abs32
            | RefKind::A64Adr
            | RefKind::BtfType
            | RefKind::BtfStr
            | RefKind::SymIndex
            | RefKind::SymName { .. }
            | RefKind::A64AdrpPair { .. } => 0,
            RefKind::A64Branch26 | RefKind::A64Imm19 | RefKind::A64Imm14 => 2,
            RefKind::A64Adrp => 12,
        }
    }

    /// The field's value, sign-extended.
    pub(super) fn get(self, b: &[u8]) -> i64 {
        if self.is_64() {
            return i64::from_le_bytes(b.try_into().expect("8 bytes"));
        }
        if let RefKind::A64AdrpPair { gap, scale } = self {
            let (page, lo) = pair_words(b, gap);
            let page = sign_extend(u64::from(adr_imm(page)), 21) << 12;
            return page | i64::from((lo >> 10 & 0xfff) << scale & 0xfff);
        }
        let w = u32::from_le_bytes(b.try_into().expect("4 bytes"));
        if self.is_index() || self == RefKind::Abs32 {
            return i64::from(w);
        }
        let raw = match self {
            RefKind::Rel32 => w,
            RefKind::A64Branch26 => w & 0x03ff_ffff,
            RefKind::A64Imm19 => (w >> 5) & 0x7ffff,
            RefKind::A64Imm14 => (w >> 5) & 0x3fff,
            _ => adr_imm(w),
        };
        sign_extend(u64::from(raw), self.bits())
    }

    /// Writes `value` (truncated to the field) into the field, keeping the other bits.
    pub(super) fn set(self, b: &mut [u8], value: i64) {
        if self.is_64() {
            b.copy_from_slice(&value.to_le_bytes());
            return;
        }
        if let RefKind::A64AdrpPair { gap, scale } = self {
            let (page, lo) = pair_words(b, gap);
            let page = with_adr_imm(page, (value >> 12) as u32);
            // The address's low 12 bits, in the imm12 bits that hold them.
            let held = (0xfff >> scale) << 10;
            let lo = (lo & !held) | ((value as u32 & 0xfff) >> scale) << 10;
            b[..4].copy_from_slice(&page.to_le_bytes());
            b[4 * usize::from(gap)..].copy_from_slice(&lo.to_le_bytes());
            return;
        }
        let v = value as u32;
        let w = u32::from_le_bytes((&*b).try_into().expect("4 bytes"));
        let w = match self {
            RefKind::Rel32
            | RefKind::Abs32
            | RefKind::BtfType
            | RefKind::BtfStr
            | RefKind::SymIndex
            | RefKind::SymName { .. } => v,
            RefKind::A64Branch26 => (w & !0x03ff_ffff) | (v & 0x03ff_ffff),
            RefKind::A64Imm19 => (w & !(0x7ffff << 5)) | (v & 0x7ffff) << 5,
            RefKind::A64Imm14 => (w & !(0x3fff << 5)) | (v & 0x3fff) << 5,
            _ => with_adr_imm(w, v),
        };
        b.copy_from_slice(&w.to_le_bytes());
    }
}

/// The 21-bit immediate of an ADR or ADRP (immhi at bits 5-23, immlo at 29-30).
fn adr_imm(w: u32) -> u32 {
    ((w >> 5) & 0x7ffff) << 2 | (w >> 29) & 3
}

/// `w` with its ADR/ADRP immediate set to the low 21 bits of `v`.
fn with_adr_imm(w: u32, v: u32) -> u32 {
    (w & !(0x7ffff << 5 | 3 << 29)) | ((v >> 2) & 0x7ffff) << 5 | (v & 3) << 29
}

/// The ADRP word and the low-bits word `gap` words after it, of a pair's bytes.
fn pair_words(b: &[u8], gap: u8) -> (u32, u32) {
    let word = |i: usize| u32::from_le_bytes(b[4 * i..4 * i + 4].try_into().expect("4 bytes"));
    (word(0), word(usize::from(gap)))
}

pub(super) fn sign_extend(v: u64, bits: u32) -> i64 {
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
    pub(super) fn abs(loc: usize, base: u64) -> Ref {
        Ref {
            loc,
            kind: RefKind::Abs64,
            base,
        }
    }

    pub(super) fn bytes<'a>(&self, image: &'a [u8]) -> Option<&'a [u8]> {
        image.get(self.loc..self.loc.checked_add(self.kind.size())?)
    }

    pub(super) fn read(&self, image: &[u8]) -> Option<i64> {
        self.bytes(image).map(|b| self.kind.get(b))
    }

    pub(super) fn write(&self, image: &mut [u8], value: i64) {
        let end = self.loc.saturating_add(self.kind.size());
        if let Some(b) = image.get_mut(self.loc..end) {
            self.kind.set(b, value);
        }
    }

    /// The address the base stands for: ADRP counts from the instruction's page.
    pub(super) fn anchor(&self, base: u64) -> u64 {
        if matches!(self.kind, RefKind::A64Adrp | RefKind::A64AdrpPair { .. }) {
            base & !0xfff
        } else {
            base
        }
    }

    pub(super) fn target_of(&self, base: u64, value: i64) -> u64 {
        self.anchor(base)
            .wrapping_add((value as u64).wrapping_shl(self.kind.shift()))
    }

    pub(super) fn value_of(&self, base: u64, target: u64) -> i64 {
        (target.wrapping_sub(self.anchor(base)) as i64) >> self.kind.shift()
    }

    pub(super) fn target(&self, image: &[u8]) -> Option<u64> {
        self.read(image).map(|v| self.target_of(self.base, v))
    }
}

pub(super) fn read_u64(image: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        image.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

pub(super) fn read_u16(image: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        image.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(ws: &[u32]) -> Vec<u8> {
        ws.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// An ADRP and its ADD or load read as one byte offset from the page, and writing a
    /// value the instructions can hold reads back as it; a load's imm12 bits above the low
    /// 12 address bits stay as they were.
    #[test]
    fn adrp_pairs_read_and_write_one_offset() {
        // adrp x1, #+0x12345000; nop; add x1, x1, #0x678
        let add = RefKind::A64AdrpPair { gap: 2, scale: 0 };
        let mut b = words(&[0x9000_0001, 0xd503_201f, 0x9100_0021]);
        add.set(&mut b, 0x1234_5678);
        assert_eq!(add.get(&b), 0x1234_5678);
        assert_eq!(RefKind::A64Adrp.get(&b[..4]), 0x12345);
        assert_eq!(
            b[4..8],
            0xd503_201fu32.to_le_bytes(),
            "the word between is kept"
        );
        assert_eq!(
            u32::from_le_bytes(b[8..].try_into().unwrap()) >> 10 & 0xfff,
            0x678
        );
        // Backward, by more than the ADRP's 21 bits reach: wraps like the field.
        add.set(&mut b, -0x1000);
        assert_eq!(add.get(&b), -0x1000);
        add.set(&mut b, 1 << 32);
        assert_eq!(add.get(&b), -(1 << 32));

        // ldr x2, [x1, #8 * imm12], imm12 = 0x801: 0x4008 bytes, 0x8 of them the low bits.
        let ldr = RefKind::A64AdrpPair { gap: 1, scale: 3 };
        let mut b = words(&[0x9000_0001, 0xf940_0022 | 0x801 << 10]);
        assert_eq!(ldr.get(&b), 0x8);
        ldr.set(&mut b, 0x7000 | 0xff8);
        assert_eq!(ldr.get(&b), 0x7ff8);
        let imm12 = u32::from_le_bytes(b[4..].try_into().unwrap()) >> 10 & 0xfff;
        assert_eq!(imm12, 0x800 | 0xff8 >> 3, "the bit past the page is kept");
        // A value the load cannot hold loses its low bits (the restore's correction makes
        // every written value one it can).
        ldr.set(&mut b, 0x7004);
        assert_eq!(ldr.get(&b), 0x7000);
    }
}
