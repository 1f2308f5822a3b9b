//! The ELF method (4) on real ELF pairs built by `fixtures/elf-pairs/make.sh` for x86_64
//! and aarch64: round trips, smaller than bsdiff, revision 1 payloads still applying, split
//! BTF against a renumbered base, pointers of fixed executables, hostile patches.

use crate::common::{elf_pairs, fixture};
use deltaroot_format::elf::Revision;

fn elf_candidate(old: &[u8], new: &[u8]) -> (usize, Vec<u8>) {
    use deltaroot_format::Method;
    let opts = deltaroot_engine::EngineOptions {
        level: 19,
        ..Default::default()
    };
    let only = |m| {
        let opts = deltaroot_engine::EngineOptions {
            only: Some(m),
            ..opts
        };
        deltaroot_engine::diff_file(old, new, &opts).unwrap()
    };
    let bsdiff = only(Method::BsdiffZstd)
        .expect("bsdiff applies")
        .bytes
        .len();
    let elf = only(Method::Elf).expect("the ELF method applies");
    // The publisher tries the ELF method and, where it encodes, not plain bsdiff.
    let tried: Vec<Method> = deltaroot_engine::candidates(old, new, &opts)
        .unwrap()
        .iter()
        .map(|c| c.method)
        .collect();
    assert!(tried.contains(&Method::Elf) && !tried.contains(&Method::BsdiffZstd));
    // As a pack holds it (its frames decompressed), the payload gives the same file.
    use deltaroot_format::container::{apply_payload, unwrap_payload, Payload};
    let (h, payload) = deltaroot_format::DeltaHeader::decode(&elf.bytes).unwrap();
    let body = unwrap_payload(&h, payload, 1 << 30).unwrap();
    assert_eq!(
        apply_payload(&h, Payload::Unwrapped(&body), old).unwrap(),
        new
    );
    (bsdiff, elf.bytes)
}

/// The old and new files of fixture pair `name` (`<arch>/<pair>`), built by `make.sh` with
/// `tool`, which the message names when the pair is missing.
fn elf_pair(name: &str, tool: &str) -> (Vec<u8>, Vec<u8>) {
    let dir = elf_pairs().join(name);
    assert!(
        dir.exists(),
        "{} was not built (is {tool} installed?)",
        dir.display()
    );
    (
        std::fs::read(dir.join("old")).unwrap(),
        std::fs::read(dir.join("new")).unwrap(),
    )
}

fn elf_pairs_round_trip_and_beat_bsdiff(arch: &str) {
    for pair in ["calc-pie", "calc-static", "shapes-so", "calc-o"] {
        let (old, new) = elf_pair(
            &format!("{arch}/{pair}"),
            &format!("the compiler for {arch}"),
        );
        let (bsdiff, elf) = elf_candidate(&old, &new);
        let back = deltaroot_format::apply_delta(&elf, &old, None).unwrap();
        assert_eq!(back, new, "{arch}/{pair}");
        // Payloads of revision 1, which publishers made before revision 2, still apply.
        let raw = deltaroot_engine::elf::encode_revision(&old, &new, Revision::One)
            .unwrap()
            .unwrap();
        assert_eq!(raw[0] & 0x40, 0);
        let back = deltaroot_format::elf::decode(&old, raw, new.len() as u64).unwrap();
        assert_eq!(back, new, "{arch}/{pair}, revision 1");
        assert!(
            elf.len() < bsdiff,
            "{arch}/{pair}: elf {} bytes, bsdiff {bsdiff}",
            elf.len()
        );
    }
}

#[test]
fn elf_method_round_trips_and_beats_bsdiff_on_real_aarch64_binaries() {
    elf_pairs_round_trip_and_beat_bsdiff("aarch64");
}

#[test]
fn elf_method_round_trips_and_beats_bsdiff_on_real_x86_64_binaries() {
    elf_pairs_round_trip_and_beat_bsdiff("x86_64");
    // The publisher's own fixture tree: the executable and the library whose soname changed.
    for (o, n) in [
        ("v1/usr/bin/hello", "v2/usr/bin/hello"),
        ("v1/usr/lib/libgreet.so.1", "v2/usr/lib/libgreet.so.2"),
    ] {
        let (old, new) = (
            std::fs::read(fixture().join(o)).unwrap(),
            std::fs::read(fixture().join(n)).unwrap(),
        );
        let (_, elf) = elf_candidate(&old, &new);
        assert_eq!(
            deltaroot_format::apply_delta(&elf, &old, None).unwrap(),
            new,
            "{n}"
        );
    }
}

/// A module's split BTF after the base it refers to renumbered its types and moved its
/// strings: the ELF method predicts every moved type id and string offset from the shift
/// tables it carries, so the patched image needs almost no byte of the `.BTF` section
/// changed (a field the alignment did not match may still be predicted from a neighbour's
/// shift).
#[test]
fn elf_method_follows_a_renumbered_btf_base() {
    let (old, new) = elf_pair("x86_64/btf-ko", "pahole, Debian's dwarves,");
    let moved = old.iter().zip(&new).filter(|(a, b)| a != b).count();
    assert!(
        old.len() == new.len() && moved >= 40,
        "the fixture's BTF should move ({moved} bytes differ)"
    );
    let (bsdiff, elf) = elf_candidate(&old, &new);
    assert!(
        elf.len() < bsdiff,
        "elf {} bytes, bsdiff {bsdiff}",
        elf.len()
    );
    use deltaroot_format::container::unwrap_payload;
    let (h, payload) = deltaroot_format::DeltaHeader::decode(&elf).unwrap();
    let raw = unwrap_payload(&h, payload, 1 << 30).unwrap();
    assert!(raw[0] & 0x80 != 0, "the payload carries BTF shift tables");
    let changed = diff_byte_offsets(&raw).len();
    assert!(
        changed * 10 <= moved,
        "{changed} diff bytes left after normalisation, {moved} bytes moved"
    );
}

/// File offsets (in `new`) of the 8-byte-aligned words of loaded data sections that hold
/// an address of `new` and differ from the word at the same place of the same section in
/// `old`: pointers that moved and that no relocation names in an executable at a fixed
/// address.
fn moved_pointer_words(old: &[u8], new: &[u8]) -> Vec<usize> {
    use goblin::elf::section_header::{SHF_ALLOC, SHF_EXECINSTR, SHT_INIT_ARRAY, SHT_PROGBITS};
    let (eo, en) = (
        goblin::elf::Elf::parse(old).unwrap(),
        goblin::elf::Elf::parse(new).unwrap(),
    );
    let address = |v: u64| {
        v != 0
            && en.program_headers.iter().any(|p| {
                p.p_type == goblin::elf::program_header::PT_LOAD
                    && (p.p_vaddr..p.p_vaddr + p.p_memsz).contains(&v)
            })
    };
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let mut out = Vec::new();
    for s in &en.section_headers {
        let data = s.sh_type == SHT_PROGBITS || s.sh_type == SHT_INIT_ARRAY;
        if !data
            || s.sh_flags & u64::from(SHF_ALLOC) == 0
            || s.sh_flags & u64::from(SHF_EXECINSTR) != 0
        {
            continue;
        }
        let name = en.shdr_strtab.get_at(s.sh_name).unwrap();
        let Some(o) = eo
            .section_headers
            .iter()
            .find(|o| eo.shdr_strtab.get_at(o.sh_name) == Some(name))
        else {
            continue;
        };
        let first = (8 - (s.sh_addr % 8) as usize) % 8;
        for k in (first..s.sh_size.min(o.sh_size) as usize).step_by(8) {
            let (at_new, at_old) = (s.sh_offset as usize + k, o.sh_offset as usize + k);
            if k + 8 <= s.sh_size.min(o.sh_size) as usize
                && address(word(new, at_new))
                && word(new, at_new) != word(old, at_old)
            {
                out.push(at_new);
            }
        }
    }
    out
}

/// The new-file offsets of the nonzero diff bytes of a method-4 payload (FORMAT.md §6.4:
/// architecture byte, BTF shift tables, records, diff bytes in record order; from revision 5
/// the records by column and the diff bytes sparse).
/// A payload of `revision` from `old` to `new`, checked to decode to `new`.
fn encode_and_apply(old: &[u8], new: &[u8], revision: Revision, label: &str) -> Vec<u8> {
    let raw = deltaroot_engine::elf::encode_revision(old, new, revision)
        .unwrap()
        .unwrap();
    let back = deltaroot_format::elf::decode(old, raw.clone(), new.len() as u64).unwrap();
    assert_eq!(back, new, "{label}: {revision:?}");
    raw
}

fn diff_byte_offsets(raw: &[u8]) -> Vec<usize> {
    let mut at = 1;
    let varint = |at: &mut usize| {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let b = raw[*at];
            *at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return v as usize;
            }
            shift += 7;
        }
    };
    if raw[0] & 0x80 != 0 {
        // BTF shift tables: type ids, then string offsets, each (count, count x two varints).
        for _ in 0..2 {
            let pieces = varint(&mut at);
            (0..2 * pieces).for_each(|_| {
                varint(&mut at);
            });
        }
    }
    let n = varint(&mut at);
    if raw[0] & 0x08 == 0 {
        let records: Vec<(usize, usize)> = (0..n)
            .map(|_| {
                let (mix, copy) = (varint(&mut at), varint(&mut at));
                varint(&mut at);
                (mix, copy)
            })
            .collect();
        varint(&mut at);
        let mut diff = &raw[at..];
        let (mut pos, mut out) = (0, Vec::new());
        for (mix, copy) in records {
            out.extend((0..mix).filter(|&i| diff[i] != 0).map(|i| pos + i));
            diff = &diff[mix..];
            pos += mix + copy;
        }
        return out;
    }
    // Revision 5: the records by column, then the nonzero diff bytes' gaps and values.
    let mix: Vec<usize> = (0..n).map(|_| varint(&mut at)).collect();
    let copy: Vec<usize> = (0..n).map(|_| varint(&mut at)).collect();
    (1..n).for_each(|_| {
        varint(&mut at);
    });
    varint(&mut at);
    let (mut left, mut next, mut positions) = (varint(&mut at), 0, Vec::new());
    while left > 0 {
        let block = left.min(1 << 16);
        for _ in 0..block {
            next += varint(&mut at);
            positions.push(next);
            next += 1;
        }
        at += block;
        left -= block;
    }
    let (mut mixed, mut pos, mut out) = (0, 0, Vec::new());
    for (m, c) in mix.iter().zip(&copy) {
        out.extend(
            positions
                .iter()
                .filter(|&&p| (mixed..mixed + m).contains(&p))
                .map(|&p| pos + p - mixed),
        );
        (mixed, pos) = (mixed + m, pos + m + c);
    }
    out
}

/// An executable at a fixed address keeps its pointer tables (functions and strings, in
/// `.rodata` and `.init_array`) as plain words that no relocation names. A payload of
/// revision 2 finds them by their value (phase E), so the patched image needs almost none of
/// the moved pointers changed; a payload of revision 1, which does not, changes nearly all
/// of them. Both apply.
#[test]
fn elf_method_follows_the_pointers_of_fixed_executables() {
    for arch in ["x86_64", "aarch64"] {
        let (old, new) = elf_pair(
            &format!("{arch}/calc-static"),
            &format!("the compiler for {arch}"),
        );
        let moved = moved_pointer_words(&old, &new);
        assert!(moved.len() >= 8, "{arch}: {} pointers moved", moved.len());
        let touched = |revised: bool| {
            let revision = if revised {
                Revision::Two
            } else {
                Revision::One
            };
            let raw = deltaroot_engine::elf::encode_revision(&old, &new, revision)
                .unwrap()
                .unwrap();
            assert_eq!(raw[0] & 0x40 != 0, revised, "{arch}: revision flag");
            let back = deltaroot_format::elf::decode(&old, raw.clone(), new.len() as u64).unwrap();
            assert_eq!(back, new, "{arch}: revision 2 = {revised}");
            let diff = diff_byte_offsets(&raw);
            moved
                .iter()
                .filter(|&&w| diff.iter().any(|&d| (w..w + 8).contains(&d)))
                .count()
        };
        let (before, after) = (touched(false), touched(true));
        assert!(
            before * 2 >= moved.len() && after * 4 <= moved.len(),
            "{arch}: of {} moved pointers, {before} left as diff bytes by revision 1, {after} by revision 2",
            moved.len()
        );
    }
}

/// AArch64 code reaches data with an ADRP (the page) and an ADD or a load (the low 12
/// bits). Revision 3 takes the two as one reference, so when the data moves within its page
/// the low bits are predicted too, where revision 2 leaves them as diff bytes. Revisions 2
/// and 3 both apply (devices apply what earlier publishers made).
#[test]
fn aarch64_adrp_pairs_predict_the_low_bits() {
    let (mut low2, mut low3) = (0, 0);
    for pair in ["calc-pie", "calc-static", "shapes-so"] {
        let (old, new) = elf_pair(&format!("aarch64/{pair}"), "the compiler for aarch64");
        let encode = |revision| encode_and_apply(&old, &new, revision, pair);
        let (r2, r3) = (encode(Revision::Two), encode(Revision::Three));
        assert_eq!(r2[0] & 0x60, 0x40, "{pair}: revision 2's flags");
        assert_eq!(r3[0] & 0x60, 0x60, "{pair}: revision 3's flags");
        // The words right after an ADRP that add its low bits (ADD x, xd, #imm12), and the
        // nonzero diff bytes each payload leaves in them.
        let words: Vec<usize> = (4..new.len() / 4 * 4)
            .step_by(4)
            .filter(|&at| {
                let w = |at: usize| u32::from_le_bytes(new[at..at + 4].try_into().unwrap());
                let (adrp, add) = (w(at - 4), w(at));
                adrp & 0x9f00_0000 == 0x9000_0000
                    && add & 0xffc0_0000 == 0x9100_0000
                    && add >> 5 & 31 == adrp & 31
            })
            .collect();
        let low = |raw: &[u8]| {
            let diff = diff_byte_offsets(raw);
            words
                .iter()
                .filter(|&&w| diff.iter().any(|&d| (w..w + 4).contains(&d)))
                .count()
        };
        let (d2, d3) = (low(&r2), low(&r3));
        eprintln!(
            "{pair}: {} pairs; low bits left in diff bytes: revision 2 {d2}, revision 3 {d3}",
            words.len()
        );
        (low2, low3) = (low2 + d2, low3 + d3);
    }
    assert!(
        low2 >= 8 && low3 * 4 <= low2,
        "low-bit words left as diff bytes: revision 2 {low2}, revision 3 {low3}"
    );
}

/// A relocatable object's relocations name their symbols by index (the high half of
/// `r_info`); a symbol inserted early renumbers every later one, and moves the names after
/// its own in the string table. Revision 3 predicts each index through the alignment of the
/// symbol tables, and each name offset through that of the string tables, where revision 2
/// leaves the moved ones as diff bytes. Both apply.
#[test]
fn relocation_symbol_indices_follow_the_symbol_table() {
    use goblin::elf::section_header::SHT_RELA;
    for arch in ["x86_64", "aarch64"] {
        let (old, new) = elf_pair(
            &format!("{arch}/syms-o"),
            &format!("the compiler for {arch}"),
        );
        let encode = |revision| encode_and_apply(&old, &new, revision, arch);
        let (r2, r3) = (encode(Revision::Two), encode(Revision::Three));
        assert_eq!(r3[0] & 0x60, 0x60, "{arch}: revision 3's flags");
        // The symbol index bytes of every relocation of `new`, and those whose index differs
        // from the relocation at the same place of `old`'s table of the same name.
        let (eo, en) = (
            goblin::elf::Elf::parse(&old).unwrap(),
            goblin::elf::Elf::parse(&new).unwrap(),
        );
        let mut fields = Vec::new();
        let mut renumbered = 0;
        for s in en.section_headers.iter().filter(|s| s.sh_type == SHT_RELA) {
            let name = en.shdr_strtab.get_at(s.sh_name);
            let o = eo
                .section_headers
                .iter()
                .find(|o| eo.shdr_strtab.get_at(o.sh_name) == name)
                .unwrap();
            for k in (0..s.sh_size as usize).step_by(24) {
                let at = s.sh_offset as usize + k + 12;
                fields.push(at);
                let o_at = o.sh_offset as usize + k + 12;
                if k < o.sh_size as usize && old[o_at..o_at + 4] != new[at..at + 4] {
                    renumbered += 1;
                }
            }
        }
        // How many 4-byte fields at `fields` a payload leaves as nonzero diff bytes.
        let left = |raw: &[u8], fields: &[usize]| {
            let diff = diff_byte_offsets(raw);
            fields
                .iter()
                .filter(|&&f| diff.iter().any(|&d| (f..f + 4).contains(&d)))
                .count()
        };
        let (d2, d3) = (left(&r2, &fields), left(&r3, &fields));
        // What is left names the symbols the new version added (no old index to map).
        assert!(
            renumbered >= 8 && d2 >= 8 && d3 * 2 <= d2,
            "{arch}: {renumbered} of {} indices renumbered; left as diff bytes: revision 2 {d2}, revision 3 {d3}",
            fields.len()
        );
        // The names of the symbols after the new ones moved in the string table: revision 3
        // predicts each symbol's name offset through the string tables' alignment.
        let symtab = en
            .section_headers
            .iter()
            .find(|s| s.sh_type == goblin::elf::section_header::SHT_SYMTAB)
            .unwrap();
        let names: Vec<usize> = (0..symtab.sh_size as usize)
            .step_by(24)
            .map(|k| symtab.sh_offset as usize + k)
            .collect();
        let (n2, n3) = (left(&r2, &names), left(&r3, &names));
        assert!(
            n2 >= 8 && n3 * 2 <= n2,
            "{arch}: symbol names left as diff bytes: revision 2 {n2}, revision 3 {n3}"
        );
    }
}

/// A section that only relocations fill (`__mcount_loc`: zeros in the file, a slot per
/// function) after functions were inserted before and among the others: the records of the
/// patch follow the slots as the relocations pair them, so the relocation table that fills
/// them is patched only where entries were inserted, instead of in every entry after the
/// first insertion.
#[test]
fn elf_method_follows_the_slots_relocations_fill() {
    let (old, new) = elf_pair("x86_64/slots-o", "gcc");
    let elf = goblin::elf::Elf::parse(&new).unwrap();
    let rela = elf
        .section_headers
        .iter()
        .find(|s| elf.shdr_strtab.get_at(s.sh_name) == Some(".rela__mcount_loc"))
        .expect("gcc -mrecord-mcount made __mcount_loc");
    let table = rela.sh_offset as usize..(rela.sh_offset + rela.sh_size) as usize;
    let raw = deltaroot_engine::elf::encode(&old, &new).unwrap().unwrap();
    let back = deltaroot_format::elf::decode(&old, raw.clone(), new.len() as u64).unwrap();
    assert_eq!(back, new);
    let patched: Vec<usize> = diff_byte_offsets(&raw)
        .into_iter()
        .filter(|d| table.contains(d))
        .collect();
    // Three functions were inserted. Without the records following the slots, each entry
    // after the middle insertion differed in a byte (36 bytes); with them, only the inserted
    // entries do (6 bytes).
    assert!(
        patched.len() <= 24,
        "{} bytes of the {}-byte relocation table patched: {patched:?}",
        patched.len(),
        table.len()
    );
}

#[test]
fn hostile_elf_patches_fail_cleanly() {
    for arch in ["x86_64", "aarch64"] {
        hostile_patches_fail_cleanly(elf_pair(
            &format!("{arch}/calc-pie"),
            &format!("the compiler for {arch}"),
        ));
    }
    // A payload with BTF shift tables: damaged tables fail as cleanly.
    hostile_patches_fail_cleanly(elf_pair("x86_64/btf-ko", "pahole"));
    // An executable at a fixed address: the restore also finds words by their value.
    hostile_patches_fail_cleanly(elf_pair("x86_64/calc-static", "gcc"));
}

fn hostile_patches_fail_cleanly((old, new): (Vec<u8>, Vec<u8>)) {
    let (_, elf) = elf_candidate(&old, &new);
    // The same payload framed both ways a publisher frames it (FORMAT.md §6.2).
    let header = &elf[..deltaroot_format::container::HEADER_LEN];
    let (h, payload) = deltaroot_format::DeltaHeader::decode(&elf).unwrap();
    let raw = deltaroot_format::container::unwrap_payload(&h, payload, 1 << 30).unwrap();
    let xz = deltaroot_engine::compress_xz_payload(&raw).unwrap();
    let zstd = zstd::bulk::compress(&raw, 19).unwrap();
    for framed in [xz, zstd] {
        let delta = [header, &framed].concat();
        assert_eq!(
            deltaroot_format::apply_delta(&delta, &old, None).unwrap(),
            new
        );
        hostile_containers_fail_cleanly(&old, &new, delta);
    }
}

fn hostile_containers_fail_cleanly(old: &[u8], new: &[u8], elf: Vec<u8>) {
    let apply = |p: &[u8]| deltaroot_format::apply_delta(p, old, None);
    for n in 0..elf.len() {
        assert!(apply(&elf[..n]).is_err(), "prefix of {n} bytes accepted");
    }
    let mut rejected = 0;
    for i in 0..elf.len() {
        for bit in [0x01u8, 0x80] {
            let mut p = elf.clone();
            p[i] ^= bit;
            // Never a panic; anything that is accepted must still be the verified target.
            match apply(&p) {
                Ok(out) => assert_eq!(out, new),
                Err(_) => rejected += 1,
            }
        }
    }
    assert!(rejected > elf.len(), "only {rejected} flips rejected");
    // Garbage that decompresses, behind a valid header.
    let header = &elf[..deltaroot_format::container::HEADER_LEN];
    for junk in [
        vec![1u8; 64],
        vec![1, 0, 0, 0, 0, 0],
        b"\x01\xff\xff\xff\xff\x0f".to_vec(),
        vec![2, 0, 0, 0, 0],
    ] {
        for framed in [
            zstd::bulk::compress(&junk, 3).unwrap(),
            deltaroot_engine::compress_xz_payload(&junk).unwrap(),
        ] {
            assert!(apply(&[header, &framed].concat()).is_err());
        }
    }
}

/// The fixture pairs of executables and libraries for both architectures: (`arch/pair`, old,
/// new).
fn executables_and_libraries() -> impl Iterator<Item = (String, Vec<u8>, Vec<u8>)> {
    ["x86_64", "aarch64"].into_iter().flat_map(|arch| {
        ["calc-pie", "calc-static", "shapes-so"].map(move |pair| {
            let label = format!("{arch}/{pair}");
            let (old, new) = elf_pair(&label, &format!("the compiler for {arch}"));
            (label, old, new)
        })
    })
}

/// When code moves, every function's row in `.eh_frame_hdr` (and the first address of its
/// FDE in `.eh_frame`) changes with it. Revision 4 takes them as references, predicted
/// through the address map, where revision 3 leaves them as diff bytes. Both apply.
#[test]
fn unwind_tables_follow_the_code() {
    let (mut left3, mut left4) = (0, 0);
    for (label, old, new) in executables_and_libraries() {
        let encode = |revision| encode_and_apply(&old, &new, revision, &label);
        let (r3, r4) = (encode(Revision::Three), encode(Revision::Four));
        assert_eq!(r3[0] & 0x70, 0x60, "{label}: revision 3's flags");
        assert_eq!(r4[0] & 0x70, 0x70, "{label}: revision 4's flags");
        // The rows of `.eh_frame_hdr`'s table: references alone (the FDEs of `.eh_frame`
        // also hold call-frame programs, which change with the code they describe).
        let en = goblin::elf::Elf::parse(&new).unwrap();
        let Some(table) = en
            .section_headers
            .iter()
            .find(|s| en.shdr_strtab.get_at(s.sh_name) == Some(".eh_frame_hdr"))
            .map(|s| s.sh_offset as usize + 12..(s.sh_offset + s.sh_size) as usize)
        else {
            continue; // built without unwind tables
        };
        let left = |raw: &[u8]| {
            diff_byte_offsets(raw)
                .iter()
                .filter(|&d| table.contains(d))
                .count()
        };
        let (d3, d4) = (left(&r3), left(&r4));
        eprintln!(
            "{label}: {} table rows; bytes left as diff bytes: revision 3 {d3}, revision 4 {d4}",
            table.len() / 8
        );
        (left3, left4) = (left3 + d3, left4 + d4);
    }
    assert!(
        left3 >= 16 && left4 * 4 <= left3,
        "table bytes left as diff bytes: revision 3 {left3}, revision 4 {left4}"
    );
}

/// Revision 5 sends the nonzero diff bytes by position and the records a column at a time:
/// the same image as revision 4 from every fixture pair, and fewer bytes once compressed.
#[test]
fn revision_5_sends_fewer_bytes_than_revision_4() {
    for (label, old, new) in executables_and_libraries() {
        let encode = |revision| encode_and_apply(&old, &new, revision, &label);
        let (r4, r5) = (encode(Revision::Four), encode(Revision::Five));
        assert_eq!(r5[0] & 0x78, 0x78, "{label}: revision 5's flags");
        let packed = |raw: &[u8]| zstd::bulk::compress(raw, 19).unwrap().len();
        let (p4, p5) = (packed(&r4), packed(&r5));
        eprintln!("{label}: revision 4 {p4} bytes, revision 5 {p5}");
        assert!(p5 < p4, "{label}: revision 5 {p5} bytes, revision 4 {p4}");
    }
}

/// An executable at a fixed address names its data by absolute address in its code
/// (`mov $addr, %edi`, `jmp *addr(,%rax,8)`). Revision 5 takes those 32-bit immediates and
/// displacements as references (found by their value, on x86-64), so when the data moves
/// they are predicted, where revision 4 leaves them as diff bytes.
#[test]
fn absolute_addresses_in_fixed_code_follow_the_data() {
    use deltaroot_format::elf::{for_each_ref, Layout, RefKind};
    let (old, new) = elf_pair("x86_64/calc-static", "the compiler for x86_64");
    let fields = |revision| {
        let layout = Layout::parse(&new).unwrap().for_payload(revision);
        let mut found = Vec::new();
        for_each_ref(&layout, &new, |r| {
            if r.kind == RefKind::Abs32 {
                found.push(r.loc);
            }
        });
        found
    };
    let found = fields(Revision::Five);
    assert!(fields(Revision::Four).is_empty());
    let encode = |revision| encode_and_apply(&old, &new, revision, "calc-static");
    let left = |raw: &[u8]| {
        diff_byte_offsets(raw)
            .iter()
            .filter(|&&d| found.iter().any(|&f| (f..f + 4).contains(&d)))
            .count()
    };
    let (left4, left5) = (left(&encode(Revision::Four)), left(&encode(Revision::Five)));
    eprintln!(
        "{} absolute addresses in code; bytes left as diff bytes: revision 4 {left4}, revision 5 {left5}",
        found.len()
    );
    assert!(
        found.len() >= 8 && left4 > 0 && left5 == 0,
        "{} fields, revision 4 {left4}, revision 5 {left5}",
        found.len()
    );
    // Not in a position-independent executable, whose code reaches data RIP-relative.
    let (_, pie) = elf_pair("x86_64/calc-pie", "the compiler for x86_64");
    let layout = Layout::parse(&pie).unwrap().for_payload(Revision::Five);
    for_each_ref(&layout, &pie, |r| assert_ne!(r.kind, RefKind::Abs32));
}
