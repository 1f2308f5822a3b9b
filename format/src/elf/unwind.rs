//! Phase F (payloads of revision 4): the addresses held by the unwind tables, `.eh_frame`
//! and `.eh_frame_hdr` (LSB, "Exception Frames").
//!
//! Every function has an FDE whose first address (`pc_begin`) is stored relative to the
//! field, and a row in `.eh_frame_hdr`'s sorted table whose two values (the function and its
//! FDE) are stored relative to that section's start. When code moves, every one of them
//! changes: python3.11's table (5,000 rows) came out of a byte-level delta as 76 kB of new
//! bytes. As references, each is predicted from the old one through the address map.
//!
//! Only the common encodings are references: a 4-byte signed value relative to the field
//! (`DW_EH_PE_pcrel | DW_EH_PE_sdata4`, 0x1b) for `pc_begin`, the LSDA and the personality
//! (also indirect, 0x9b) and the header's `.eh_frame` pointer; relative to the header
//! (`DW_EH_PE_datarel | DW_EH_PE_sdata4`, 0x3b) for the table. A record in another encoding,
//! or one the walk cannot read, ends the walk of its section: what is left is diffed as
//! bytes. The walk reads lengths, CIE pointers and augmentations, never a field it hands
//! on, so it finds the same fields in the image however far it is restored.

use std::collections::HashMap;

use super::layout::Unwind;
use super::{ElfError, Layout, Ref, RefKind};

/// `DW_EH_PE_pcrel | DW_EH_PE_sdata4`.
const PCREL_SDATA4: u8 = 0x1b;
/// `DW_EH_PE_indirect | DW_EH_PE_pcrel | DW_EH_PE_sdata4`.
const INDIRECT_PCREL_SDATA4: u8 = 0x9b;
/// `DW_EH_PE_datarel | DW_EH_PE_sdata4`.
const DATAREL_SDATA4: u8 = 0x3b;
/// `DW_EH_PE_udata4`.
const UDATA4: u8 = 0x03;
/// `DW_EH_PE_omit`.
const OMIT: u8 = 0xff;

/// Visits the references of every unwind section of `layout`, in section order.
pub(super) fn phase_f<I: AsRef<[u8]>>(
    layout: &Layout,
    image: &mut I,
    visit: &mut super::Visit<'_, I>,
) -> Result<(), ElfError> {
    if !layout.unwind_tables() {
        return Ok(());
    }
    let mut found = Vec::new();
    for s in &layout.sections {
        let Some(kind) = s.unwind else { continue };
        let Some(range) = s.file_range(image.as_ref().len()) else {
            continue;
        };
        found.clear();
        let bytes = &image.as_ref()[range.clone()];
        match kind {
            Unwind::Frames => frames(bytes, &mut found),
            Unwind::Index => index(bytes, &mut found),
        }
        // Fields found relative to the section; bases are addresses.
        for &(at, base) in &found {
            let r = Ref {
                loc: range.start + at,
                kind: RefKind::Rel32,
                base: match base {
                    Base::Field => s.addr.wrapping_add(at as u64),
                    Base::Section => s.addr,
                },
            };
            visit(&r, image)?;
        }
    }
    Ok(())
}

/// What a field's value is relative to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Base {
    Field,
    Section,
}

/// A cursor over a section's bytes.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn u8(&mut self) -> Option<u8> {
        let v = *self.b.get(self.at)?;
        self.at += 1;
        Some(v)
    }

    fn u32(&mut self) -> Option<u32> {
        let v = u32::from_le_bytes(self.b.get(self.at..self.at + 4)?.try_into().ok()?);
        self.at += 4;
        Some(v)
    }

    /// An unsigned LEB128 of at most 10 bytes (its low 64 bits); a signed one is read
    /// through it too when only its length matters.
    fn leb(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f).checked_shl(7 * i).unwrap_or(0);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// A NUL-terminated string.
    fn str(&mut self) -> Option<&[u8]> {
        let rest = self.b.get(self.at..)?;
        let n = rest.iter().position(|&c| c == 0)?;
        self.at += n + 1;
        Some(&rest[..n])
    }
}

/// What a CIE says of its FDEs: the encoding of their addresses and of their LSDA, and
/// whether they carry augmentation data.
#[derive(Clone, Copy)]
struct Cie {
    fde: u8,
    lsda: u8,
    z: bool,
}

/// The references of `.eh_frame`: each FDE's `pc_begin` and LSDA pointer, each CIE's
/// personality pointer (offsets in the section, relative to themselves).
fn frames(b: &[u8], out: &mut Vec<(usize, Base)>) {
    let mut cies: HashMap<usize, Option<Cie>> = HashMap::new();
    let mut at = 0usize;
    while let Some(len) = b
        .get(at..at + 4)
        .map(|w| u32::from_le_bytes(w.try_into().unwrap()))
    {
        // A zero length ends the section; 64-bit records are not read.
        if len == 0 || len == u32::MAX {
            return;
        }
        let Some(end) = (at + 4).checked_add(len as usize).filter(|&e| e <= b.len()) else {
            return;
        };
        let rec = &b[..end];
        let id_at = at + 4;
        let Some(id) = rec.get(id_at..id_at + 4) else {
            return;
        };
        let id = u32::from_le_bytes(id.try_into().unwrap());
        if id == 0 {
            cies.insert(at, cie(rec, id_at + 4, out));
        } else {
            // The CIE pointer is the distance back from this field to the CIE's start.
            let cie = id_at
                .checked_sub(id as usize)
                .and_then(|c| cies.get(&c).copied().flatten());
            let Some(cie) = cie else {
                return;
            };
            if fde(rec, id_at + 4, cie, out).is_none() {
                return;
            }
        }
        at = end;
    }
}

/// Reads a CIE's augmentation from `at` (after its id); records its personality pointer.
fn cie(rec: &[u8], at: usize, out: &mut Vec<(usize, Base)>) -> Option<Cie> {
    let mut c = Cursor { b: rec, at };
    let version = c.u8()?;
    let aug = c.str()?.to_vec();
    c.leb()?; // code alignment
    c.leb()?; // data alignment
    if version == 1 {
        c.u8()?;
    } else {
        c.leb()?;
    }
    let mut cie = Cie {
        fde: 0,
        lsda: OMIT,
        z: false,
    };
    let Some(rest) = aug.strip_prefix(b"z") else {
        // No augmentation data: FDE addresses are absolute, which phase F leaves alone.
        return aug.is_empty().then_some(cie);
    };
    cie.z = true;
    c.leb()?; // augmentation data length
    for &ch in rest {
        match ch {
            b'R' => cie.fde = c.u8()?,
            b'L' => cie.lsda = c.u8()?,
            b'P' => {
                let enc = c.u8()?;
                if enc != PCREL_SDATA4 && enc != INDIRECT_PCREL_SDATA4 {
                    return None;
                }
                out.push((c.at, Base::Field));
                c.u32()?;
            }
            b'S' | b'B' => {}
            _ => return None,
        }
    }
    Some(cie)
}

/// Records an FDE's `pc_begin` and LSDA pointer, read from `at` (after its CIE pointer).
fn fde(rec: &[u8], at: usize, cie: Cie, out: &mut Vec<(usize, Base)>) -> Option<()> {
    if cie.fde != PCREL_SDATA4 {
        return None;
    }
    let mut c = Cursor { b: rec, at };
    out.push((c.at, Base::Field));
    c.u32()?; // pc_begin
    c.u32()?; // pc_range
              // The LSDA pointer, when the augmentation data holds one.
    if cie.z && c.leb()? >= 4 && cie.lsda == PCREL_SDATA4 {
        out.push((c.at, Base::Field));
        c.u32()?;
    }
    Some(())
}

/// The references of `.eh_frame_hdr`: the pointer to `.eh_frame` (relative to itself) and
/// both values of every table row (relative to the section).
fn index(b: &[u8], out: &mut Vec<(usize, Base)>) {
    let [1, frame_enc, count_enc, table_enc, ..] = *b else {
        return;
    };
    if frame_enc != PCREL_SDATA4 || count_enc != UDATA4 {
        return;
    }
    let mut c = Cursor { b, at: 4 };
    out.push((4, Base::Field));
    let (Some(_), Some(count)) = (c.u32(), c.u32()) else {
        return;
    };
    if table_enc != DATAREL_SDATA4 {
        return;
    }
    let rows = (b.len() - c.at) / 8;
    for i in 0..(count as usize).min(rows) {
        out.push((c.at + 8 * i, Base::Section));
        out.push((c.at + 8 * i + 4, Base::Section));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cie_and_its_fdes_give_pc_begin_lsda_and_personality() {
        // CIE "zPLR": personality indirect pcrel, LSDA pcrel, FDE pcrel.
        let mut b = Vec::new();
        let cie_body: Vec<u8> = [
            &0u32.to_le_bytes()[..],
            &[1],
            b"zPLR\0",
            &[1, 0x78, 16, 7, INDIRECT_PCREL_SDATA4],
            &0x1234u32.to_le_bytes(),
            &[PCREL_SDATA4, PCREL_SDATA4],
        ]
        .concat();
        b.extend((cie_body.len() as u32).to_le_bytes());
        b.extend(&cie_body);
        let fde_at = b.len();
        let fde_body: Vec<u8> = [
            &((fde_at + 4) as u32).to_le_bytes()[..],
            &0x100u32.to_le_bytes(),
            &0x20u32.to_le_bytes(),
            &[4],
            &0x40u32.to_le_bytes(),
        ]
        .concat();
        b.extend((fde_body.len() as u32).to_le_bytes());
        b.extend(&fde_body);
        b.extend(0u32.to_le_bytes());
        let mut out = Vec::new();
        frames(&b, &mut out);
        // length, id, version, "zPLR\0", three LEBs and the data length, the encoding.
        let personality = 4 + 4 + 1 + 5 + 4 + 1;
        assert_eq!(
            out,
            [
                (personality, Base::Field),
                (fde_at + 8, Base::Field),
                (fde_at + 17, Base::Field)
            ]
        );
        // Cut anywhere or with a CIE pointer that names no CIE: what was read stays found,
        // nothing past the damage is, and nothing panics.
        for n in 0..b.len() {
            let mut part = Vec::new();
            frames(&b[..n], &mut part);
            assert!(out.starts_with(&part), "{n}");
        }
        let mut bad = b.clone();
        bad[fde_at + 4] ^= 1;
        let mut part = Vec::new();
        frames(&bad, &mut part);
        assert_eq!(part, [(personality, Base::Field)]);
    }

    #[test]
    fn the_header_table_gives_both_values_of_every_row_it_holds() {
        let mut b = vec![1, PCREL_SDATA4, UDATA4, DATAREL_SDATA4];
        b.extend(0x80u32.to_le_bytes());
        b.extend(3u32.to_le_bytes());
        b.extend([0u8; 16]);
        let mut out = Vec::new();
        index(&b, &mut out);
        // Three rows claimed, two present.
        assert_eq!(
            out,
            [
                (4, Base::Field),
                (12, Base::Section),
                (16, Base::Section),
                (20, Base::Section),
                (24, Base::Section)
            ]
        );
        b[3] = 0x1b;
        out.clear();
        index(&b, &mut out);
        assert_eq!(out, [(4, Base::Field)]);
    }
}
