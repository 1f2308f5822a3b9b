//! LLVM bitcode files for the `bitcode` delta method (FORMAT.md §6.7): a bitstream unpacked
//! into byte-aligned values, and packed again bit for bit.
//!
//! A bitcode file is a bitstream: records of fields a few bits wide, one after another with
//! no regard for byte boundaries. When one value changes width, every bit after it moves, so
//! a byte-level delta finds little of the old file past the first change: PostgreSQL's
//! `postgres.index.bc` costs 1.13 MB of its 1.66 MB as a zstd patch-from delta. Unpacked,
//! each field is a varint on byte boundaries and each blob its bytes, so the generic
//! methods find what did not change. The device unpacks its old file, applies the inner
//! delta and packs the result. Packing is canonical (shortest VBR chunks, zero padding,
//! block lengths computed), so the publisher keeps the method only for files that pack back
//! to themselves, and the device hashes the result like every other delta's output.
//!
//! The unpacked form, after the magic `BC C0 DE` (not written): for each top-level block,
//! its id and abbreviation width; in a block, each abbreviation id as read, then what it
//! holds: a sub-block's id and width; a definition's operand count and each operand's
//! literal flag, then its value or its encoding (and width); an unabbreviated record's code,
//! operand count and operands; an abbreviated record's fields (arrays as a count and the
//! elements, blobs as a count and the bytes). Every value is an unsigned LEB128 varint.
//! Block lengths and padding are not kept: packing writes them.

use std::io;

use crate::method::{expanded_limit, Contents};
use crate::wire::{put_varint, Reader};

/// The raw bitcode magic: `BC` then `0xC0DE`.
pub const MAGIC: [u8; 4] = [b'B', b'C', 0xc0, 0xde];

/// Most bytes the unpacked form may take per byte of bitcode: a one-bit field becomes a
/// one-byte varint; bounds what a `bitcode` patch may claim.
pub const MAX_RATIO: u64 = 64;

/// Deepest nesting of blocks accepted.
const MAX_DEPTH: usize = 64;
/// Most abbreviation operands a file may define (bounds the reader's tables).
const MAX_OPS: usize = 1 << 20;

/// Whether `data` starts like a raw bitcode file.
pub fn is_bitcode(data: &[u8]) -> bool {
    data.starts_with(&MAGIC)
}

fn bad(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

/// One operand of an abbreviation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Literal,
    Fixed(u8),
    Vbr(u8),
    Array,
    Char6,
    Blob,
}

/// The abbreviations in force: each definition's operands in one table, the block-info
/// abbreviations of each block id, and per open block the block-info ones it inherited (a
/// count: block-info lists only grow) and its own.
#[derive(Default)]
struct Abbrevs {
    ops: Vec<Op>,
    /// Definition `i` is `ops[defs[i].0..defs[i].1]`.
    defs: Vec<(usize, usize)>,
    /// The block-info definitions of each block id that has some, and where its list is.
    info: Vec<Vec<usize>>,
    info_of: std::collections::HashMap<u64, usize>,
}

/// An open block: its id, abbreviation width, block-info list and how much of it the block
/// inherited, and its own definitions; for the block-info block, the block id SETBID last
/// named.
struct Frame {
    id: u64,
    width: u8,
    info: Option<usize>,
    inherited: usize,
    own: Vec<usize>,
    set_bid: Option<u64>,
}

impl Abbrevs {
    fn enter(&self, id: u64, width: u64) -> io::Result<Frame> {
        if width > 32 {
            return Err(bad(format!("block {id}: abbreviation width {width}")));
        }
        let info = self.info_of.get(&id).copied();
        Ok(Frame {
            id,
            width: width as u8,
            info,
            inherited: info.map_or(0, |i| self.info[i].len()),
            own: Vec::new(),
            set_bid: None,
        })
    }

    /// The operands of abbreviation id `abbrev` (4 and up) in `frame`.
    #[inline]
    fn get(&self, frame: &Frame, abbrev: u64) -> io::Result<&[Op]> {
        let i = (abbrev - 4) as usize;
        let def = match frame.info {
            Some(list) if i < frame.inherited => self.info[list][i],
            _ => *frame.own.get(i - frame.inherited).ok_or_else(|| {
                bad(format!(
                    "block {}: undefined abbreviation {abbrev}",
                    frame.id
                ))
            })?,
        };
        let (a, b) = self.defs[def];
        Ok(&self.ops[a..b])
    }

    /// Records a definition of `ops` (already checked) in `frame`.
    fn define(&mut self, frame: &mut Frame, ops: &[Op]) -> io::Result<()> {
        if self.ops.len() + ops.len() > MAX_OPS {
            return Err(bad("too many abbreviation operands"));
        }
        let start = self.ops.len();
        self.ops.extend_from_slice(ops);
        self.defs.push((start, self.ops.len()));
        let def = self.defs.len() - 1;
        if frame.id == 0 {
            let bid = frame
                .set_bid
                .ok_or_else(|| bad("block-info abbreviation before SETBID"))?;
            let list = *self.info_of.entry(bid).or_insert_with(|| {
                self.info.push(Vec::new());
                self.info.len() - 1
            });
            self.info[list].push(def);
        } else {
            frame.own.push(def);
        }
        Ok(())
    }
}

/// Checks an abbreviation's operands as LLVM's reader does: an array's element operand
/// follows it and ends the list, a blob ends the list.
fn check_ops(ops: &[Op]) -> io::Result<()> {
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Array => {
                if i + 2 != ops.len()
                    || !matches!(ops[i + 1], Op::Fixed(_) | Op::Vbr(_) | Op::Char6)
                {
                    return Err(bad("array operand not followed by its element alone"));
                }
                return Ok(());
            }
            Op::Blob if i + 1 != ops.len() => return Err(bad("blob operand not last")),
            Op::Vbr(w) if *w == 1 || *w > 32 => return Err(bad(format!("VBR width {w}"))),
            Op::Fixed(w) if *w > 64 => return Err(bad(format!("fixed width {w}"))),
            _ => {}
        }
    }
    Ok(())
}

/// Reads bits least significant first.
struct Bits<'a> {
    data: &'a [u8],
    pos: u64,
}

impl Bits<'_> {
    /// The 8 bytes from the current byte, shifted to start at the current bit, and how many
    /// of their bits are the stream's (57 to 64); `None` within 8 bytes of the end.
    #[inline]
    fn word(&self) -> Option<(u64, u64)> {
        let at = (self.pos / 8) as usize;
        let bytes = self.data.get(at..at + 8)?;
        let shift = self.pos % 8;
        Some((
            u64::from_le_bytes(bytes.try_into().expect("8 bytes")) >> shift,
            64 - shift,
        ))
    }

    #[inline]
    fn read(&mut self, n: u8) -> io::Result<u64> {
        if n == 0 {
            return Ok(0);
        }
        let end = self.pos + u64::from(n);
        if end > self.data.len() as u64 * 8 {
            return Err(bad(format!(
                "bitstream ends inside a field at bit {}",
                self.pos
            )));
        }
        let v = match self.word() {
            // One load serves any field that fits the word after the shift.
            Some((word, avail)) if u64::from(n) <= avail => word,
            _ => {
                let (at, shift) = ((self.pos / 8) as usize, self.pos % 8);
                let mut buf = [0u8; 16];
                let take = (self.data.len() - at).min(16);
                buf[..take].copy_from_slice(&self.data[at..at + take]);
                (u128::from_le_bytes(buf) >> shift) as u64
            }
        };
        self.pos = end;
        Ok(if n == 64 { v } else { v & ((1u64 << n) - 1) })
    }

    #[inline]
    fn vbr(&mut self, n: u8) -> io::Result<u64> {
        // Most values end within one 8-byte load: take their chunks from it. Whole chunks
        // in at most 64 bits carry fewer than 64 value bits, so nothing overflows here.
        if let Some((word, avail)) = self.word() {
            let n = u64::from(n);
            let (high, mut used, mut v) = (1u64 << (n - 1), 0, 0);
            while used + n <= avail {
                let chunk = word >> used;
                v |= (chunk & (high - 1)) << (used / n * (n - 1));
                used += n;
                if chunk & high == 0 {
                    self.pos += used;
                    return Ok(v);
                }
            }
        }
        self.vbr_slow(n)
    }

    fn vbr_slow(&mut self, n: u8) -> io::Result<u64> {
        let high = 1u64 << (n - 1);
        let (mut v, mut shift) = (0u128, 0u32);
        loop {
            let chunk = self.read(n)?;
            v |= u128::from(chunk & (high - 1)) << shift;
            if chunk & high == 0 {
                return u64::try_from(v).map_err(|_| bad("VBR value over 64 bits"));
            }
            shift += u32::from(n) - 1;
            if shift >= 64 {
                return Err(bad("VBR value over 64 bits"));
            }
        }
    }

    fn align(&mut self) -> io::Result<()> {
        self.pos = self.pos.div_ceil(32) * 32;
        if self.pos > self.data.len() as u64 * 8 {
            return Err(bad("bitstream ends inside padding"));
        }
        Ok(())
    }

    fn at_end(&self) -> bool {
        self.pos >= self.data.len() as u64 * 8
    }
}

/// Writes bits least significant first.
#[derive(Default)]
struct Sink {
    out: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Sink {
    /// Appends the low `bits` of `v`; whole 32-bit words go out as they fill, the rest waits
    /// in `acc` (fewer than 32 bits) until the next word or `align`.
    #[inline]
    fn write(&mut self, v: u64, bits: u8) {
        if bits > 32 {
            self.write32(v & 0xffff_ffff, 32);
            self.write32(v >> 32, u32::from(bits) - 32);
        } else {
            self.write32(v, u32::from(bits));
        }
    }

    #[inline]
    fn write32(&mut self, v: u64, bits: u32) {
        let v = v & ((1u64 << bits) - 1);
        self.acc |= v << self.n;
        self.n += bits;
        if self.n >= 32 {
            self.out.extend_from_slice(&(self.acc as u32).to_le_bytes());
            self.acc >>= 32;
            self.n -= 32;
        }
    }

    #[inline]
    fn vbr(&mut self, mut v: u64, n: u8) {
        let high = 1u64 << (n - 1);
        // Most values take one chunk.
        if v < high {
            self.write32(v, u32::from(n));
            return;
        }
        while v >= high {
            self.write((v & (high - 1)) | high, n);
            v >>= n - 1;
        }
        self.write(v, n);
    }

    /// Pads with zeros to 32 bits and flushes: `out` then holds every bit written.
    fn align(&mut self) {
        let pad = (32 - self.bits() % 32) % 32;
        self.write(0, pad as u8);
        while self.n >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    fn bits(&self) -> u64 {
        self.out.len() as u64 * 8 + u64::from(self.n)
    }
}

/// Where values go when unpacking, or come from when packing; one walk over the structure
/// serves both, so they cannot disagree.
trait Side {
    /// A field of `bits` fixed bits (a block of abbreviation width 0 reads id 0 from no bits:
    /// it ends at once).
    fn fixed(&mut self, bits: u8, what: &str) -> io::Result<u64>;
    fn vbr(&mut self, bits: u8, what: &str) -> io::Result<u64>;
    /// Padding to 32 bits and a block's length word.
    fn block_start(&mut self) -> io::Result<()>;
    fn block_end(&mut self) -> io::Result<()>;
    fn blob(&mut self, len: u64) -> io::Result<()>;
    /// Whether the stream is over (at the top level, between blocks).
    fn at_end(&self) -> bool;
}

/// Unpacking: reads bits, writes varints.
struct Unpack<'a> {
    bits: Bits<'a>,
    out: Vec<u8>,
    max: u64,
}

impl Unpack<'_> {
    #[inline]
    fn put(&mut self, v: u64) -> io::Result<u64> {
        put_varint(&mut self.out, v);
        if self.out.len() as u64 > self.max {
            return Err(bad(format!("unpacks to more than {} bytes", self.max)));
        }
        Ok(v)
    }
}

impl Side for Unpack<'_> {
    #[inline]
    fn fixed(&mut self, bits: u8, _: &str) -> io::Result<u64> {
        let v = self.bits.read(bits)?;
        self.put(v)
    }

    #[inline]
    fn vbr(&mut self, bits: u8, _: &str) -> io::Result<u64> {
        let v = self.bits.vbr(bits)?;
        self.put(v)
    }

    fn block_start(&mut self) -> io::Result<()> {
        self.bits.align()?;
        self.bits.read(32).map(drop)
    }

    fn block_end(&mut self) -> io::Result<()> {
        self.bits.align()
    }

    fn blob(&mut self, len: u64) -> io::Result<()> {
        self.bits.align()?;
        let at = self.bits.pos / 8;
        let end = at
            .checked_add(len)
            .filter(|&e| e <= self.bits.data.len() as u64)
            .ok_or_else(|| bad("blob runs past the end"))?;
        self.out
            .extend_from_slice(&self.bits.data[at as usize..end as usize]);
        if self.out.len() as u64 > self.max {
            return Err(bad(format!("unpacks to more than {} bytes", self.max)));
        }
        self.bits.pos = end * 8;
        self.bits.align()
    }

    fn at_end(&self) -> bool {
        self.bits.at_end()
    }
}

/// Packing: reads varints, writes bits; block lengths are patched in when a block ends.
struct Pack<'a> {
    input: Reader<'a>,
    sink: Sink,
    starts: Vec<usize>,
    max: u64,
}

impl Pack<'_> {
    #[inline]
    fn take(&mut self, what: &str) -> io::Result<u64> {
        self.input.varint(what).map_err(|e| bad(e.to_string()))
    }

    #[inline]
    fn check(&self) -> io::Result<()> {
        if self.sink.bits() > self.max * 8 {
            return Err(bad(format!("packs to more than {} bytes", self.max)));
        }
        Ok(())
    }
}

impl Side for Pack<'_> {
    #[inline]
    fn fixed(&mut self, bits: u8, what: &str) -> io::Result<u64> {
        let v = self.take(what)?;
        if bits < 64 && v >> bits != 0 {
            return Err(bad(format!("{what} {v} does not fit {bits} bits")));
        }
        self.sink.write(v, bits);
        self.check()?;
        Ok(v)
    }

    #[inline]
    fn vbr(&mut self, bits: u8, what: &str) -> io::Result<u64> {
        let v = self.take(what)?;
        self.sink.vbr(v, bits);
        self.check()?;
        Ok(v)
    }

    fn block_start(&mut self) -> io::Result<()> {
        self.sink.align();
        self.starts.push(self.sink.out.len());
        self.sink.write(0, 32);
        self.check()
    }

    fn block_end(&mut self) -> io::Result<()> {
        self.sink.align();
        let start = self.starts.pop().expect("a block is open");
        let words = (self.sink.out.len() - start - 4) / 4;
        let words = u32::try_from(words).map_err(|_| bad("block over 2^32 words"))?;
        self.sink.out[start..start + 4].copy_from_slice(&words.to_le_bytes());
        self.check()
    }

    fn blob(&mut self, len: u64) -> io::Result<()> {
        self.sink.align();
        let len = usize::try_from(len).map_err(|_| bad("blob too long"))?;
        let bytes = self
            .input
            .take(len, "blob")
            .map_err(|e| bad(e.to_string()))?;
        self.sink.out.extend_from_slice(bytes);
        self.sink.align();
        self.check()
    }

    fn at_end(&self) -> bool {
        self.input.is_empty()
    }
}

/// Walks a whole bitstream (after the magic) through `side`.
fn walk(side: &mut impl Side) -> io::Result<()> {
    let mut abbrevs = Abbrevs::default();
    let mut stack: Vec<Frame> = Vec::new();
    loop {
        let Some(frame) = stack.last_mut() else {
            if side.at_end() {
                return Ok(());
            }
            // Top level: abbreviation width 2, and only blocks.
            if side.fixed(2, "abbreviation id")? != 1 {
                return Err(bad("top level holds something other than a block"));
            }
            let (id, width) = (side.vbr(8, "block id")?, side.vbr(4, "abbreviation width")?);
            side.block_start()?;
            stack.push(abbrevs.enter(id, width)?);
            continue;
        };
        let abbrev = side.fixed(frame.width, "abbreviation id")?;
        match abbrev {
            0 => {
                side.block_end()?;
                stack.pop();
            }
            1 => {
                if stack.len() >= MAX_DEPTH {
                    return Err(bad("blocks nested too deep"));
                }
                let (id, width) = (side.vbr(8, "block id")?, side.vbr(4, "abbreviation width")?);
                side.block_start()?;
                stack.push(abbrevs.enter(id, width)?);
            }
            2 => {
                let n = side.vbr(5, "operand count")?;
                let mut ops = Vec::new();
                let mut i = 0;
                while i < n {
                    if side.fixed(1, "literal flag")? == 1 {
                        side.vbr(8, "literal")?;
                        ops.push(Op::Literal);
                    } else {
                        let op = match side.fixed(3, "encoding")? {
                            e @ (1 | 2) => {
                                let w = side.vbr(5, "width")?;
                                let w = u8::try_from(w).map_err(|_| bad(format!("width {w}")))?;
                                // LLVM reads a width of 0 as the literal 0: nothing stored.
                                match (e, w) {
                                    (_, 0) => Op::Literal,
                                    (1, w) => Op::Fixed(w),
                                    (_, w) => Op::Vbr(w),
                                }
                            }
                            3 => Op::Array,
                            4 => Op::Char6,
                            5 => Op::Blob,
                            e => return Err(bad(format!("abbreviation encoding {e}"))),
                        };
                        ops.push(op);
                    }
                    if ops.len() > MAX_OPS {
                        return Err(bad("too many abbreviation operands"));
                    }
                    i += 1;
                }
                check_ops(&ops)?;
                let frame = stack.last_mut().expect("inside a block");
                abbrevs.define(frame, &ops)?;
            }
            3 => {
                let code = side.vbr(6, "record code")?;
                let n = side.vbr(6, "operand count")?;
                let mut first = None;
                for _ in 0..n {
                    let v = side.vbr(6, "operand")?;
                    first.get_or_insert(v);
                }
                // Block-info SETBID names the block later definitions are for.
                if frame.id == 0 && code == 1 {
                    let frame = stack.last_mut().expect("inside a block");
                    frame.set_bid = Some(first.ok_or_else(|| bad("SETBID without a block id"))?);
                }
            }
            id => {
                let ops = abbrevs.get(frame, id)?;
                let mut k = 0;
                while k < ops.len() {
                    match ops[k] {
                        Op::Literal => {}
                        Op::Fixed(w) => {
                            side.fixed(w, "field")?;
                        }
                        Op::Vbr(w) => {
                            side.vbr(w, "field")?;
                        }
                        Op::Char6 => {
                            side.fixed(6, "field")?;
                        }
                        Op::Array => {
                            let n = side.vbr(6, "array length")?;
                            k += 1;
                            let element = ops[k];
                            for _ in 0..n {
                                match element {
                                    Op::Fixed(w) => side.fixed(w, "element")?,
                                    Op::Vbr(w) => side.vbr(w, "element")?,
                                    _ => side.fixed(6, "element")?,
                                };
                            }
                        }
                        Op::Blob => {
                            let n = side.vbr(6, "blob length")?;
                            side.blob(n)?;
                        }
                    }
                    k += 1;
                }
            }
        }
    }
}

/// The unpacked form of bitcode file `data`, at most `max` bytes.
pub fn unpack(data: &[u8], max: u64) -> io::Result<Vec<u8>> {
    if !is_bitcode(data) {
        return Err(bad("not a raw bitcode file (no BC C0 DE magic)"));
    }
    let mut side = Unpack {
        bits: Bits {
            data: &data[4..],
            pos: 0,
        },
        out: Vec::with_capacity(data.len() + data.len() / 4),
        max,
    };
    walk(&mut side)?;
    Ok(side.out)
}

/// Packs an unpacked form back into a bitcode file of at most `max` bytes.
pub fn pack(unpacked: &[u8], max: u64) -> io::Result<Vec<u8>> {
    let mut side = Pack {
        input: Reader::new(unpacked),
        sink: Sink {
            out: {
                let mut out = Vec::with_capacity(unpacked.len());
                out.extend_from_slice(&MAGIC);
                out
            },
            ..Sink::default()
        },
        starts: Vec::new(),
        max,
    };
    walk(&mut side)?;
    if !side.starts.is_empty() {
        return Err(bad("unpacked form ends inside a block"));
    }
    side.sink.align();
    Ok(side.sink.out)
}

/// The payload of a `bitcode` delta (FORMAT.md §6.7): the unpacked sizes of the source and
/// the target, the inner method (1 or 2) and its payload (its delta header left out).
pub type Patch<'a> = Contents<'a>;

/// Parses a payload for a target of `bc_size` bytes from a source of `source_len` bytes,
/// checking the sizes against what bitcode files of those sizes unpack to.
pub fn decode_patch(payload: &[u8], source_len: u64, bc_size: u64) -> io::Result<Patch<'_>> {
    Contents::read(
        &mut Reader::new(payload),
        unpacked_limit(source_len),
        unpacked_limit(bc_size),
    )
}

/// The most a bitcode file of `len` bytes unpacks to.
pub fn unpacked_limit(len: u64) -> u64 {
    expanded_limit(len, MAX_RATIO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Method;

    /// A small bitstream written by hand: a block-info block defining an abbreviation for
    /// block 8, then block 8 using it (a fixed field, a VBR field, a char6 array and a blob),
    /// an unabbreviated record, a nested block, and a local abbreviation.
    fn sample() -> Vec<u8> {
        let mut s = Sink {
            out: MAGIC.to_vec(),
            ..Sink::default()
        };
        let mut starts = Vec::new();
        let enter = |s: &mut Sink, starts: &mut Vec<usize>, width: u8, id: u64, new: u64| {
            s.write(1, width);
            s.vbr(id, 8);
            s.vbr(new, 4);
            s.align();
            starts.push(s.out.len());
            s.write(0, 32);
        };
        let end = |s: &mut Sink, starts: &mut Vec<usize>, width: u8| {
            s.write(0, width);
            s.align();
            let start = starts.pop().unwrap();
            let words = ((s.out.len() - start - 4) / 4) as u32;
            s.out[start..start + 4].copy_from_slice(&words.to_le_bytes());
        };
        // Block-info (id 0), width 2: SETBID 8, DEFINE_ABBREV [literal 7, fixed 3, vbr 6,
        // array of char6].
        enter(&mut s, &mut starts, 2, 0, 2);
        s.write(3, 2);
        s.vbr(1, 6);
        s.vbr(1, 6);
        s.vbr(8, 6);
        s.write(2, 2);
        s.vbr(5, 5);
        for (lit, v, w) in [(1, 7, 0), (0, 1, 3), (0, 2, 6), (0, 3, 0), (0, 4, 0)] {
            s.write(lit, 1);
            if lit == 1 {
                s.vbr(v, 8);
            } else {
                s.write(v, 3);
                if w > 0 {
                    s.vbr(w, 5);
                }
            }
        }
        end(&mut s, &mut starts, 2);
        // Block 8, width 3.
        enter(&mut s, &mut starts, 2, 8, 3);
        // Abbreviated record 4: fixed 5, vbr 1000, "ab".
        s.write(4, 3);
        s.write(5, 3);
        s.vbr(1000, 6);
        s.vbr(2, 6);
        s.write(0, 6);
        s.write(1, 6);
        // Unabbreviated record: code 9, operands 1, 2^40.
        s.write(3, 3);
        s.vbr(9, 6);
        s.vbr(2, 6);
        s.vbr(1, 6);
        s.vbr(1 << 40, 6);
        // A local abbreviation 5: [blob]; a record with it.
        s.write(2, 3);
        s.vbr(1, 5);
        s.write(0, 1);
        s.write(5, 3);
        s.write(5, 3);
        s.vbr(3, 6);
        s.align();
        for b in b"xyz" {
            s.write(u64::from(*b), 8);
        }
        s.align();
        // A nested block 9 holding one unabbreviated record.
        enter(&mut s, &mut starts, 3, 9, 4);
        s.write(3, 4);
        s.vbr(1, 6);
        s.vbr(0, 6);
        end(&mut s, &mut starts, 4);
        end(&mut s, &mut starts, 3);
        s.out
    }

    #[test]
    fn unpack_and_pack_round_trip() {
        let bc = sample();
        let u = unpack(&bc, 1 << 20).unwrap();
        assert!(
            u.windows(3).any(|w| w == b"xyz"),
            "the blob's bytes are kept"
        );
        assert_eq!(pack(&u, 1 << 20).unwrap(), bc);
    }

    /// A value that changes width moves every later bit of the bitstream; unpacked, the
    /// rest of the file stays as it was, byte for byte.
    #[test]
    fn a_wider_value_moves_bits_but_not_the_unpacked_bytes_after_it() {
        let bc = sample();
        let mut u = unpack(&bc, 1 << 20).unwrap();
        // The unabbreviated record's operand 1 (a varint 1 after code 9 and count 2).
        let at = u.windows(3).position(|w| w == [9, 2, 1]).unwrap() + 2;
        u.splice(at..at + 1, [0x80, 0x80, 0x01]);
        let wider = pack(&u, 1 << 20).unwrap();
        assert_eq!(unpack(&wider, 1 << 20).unwrap(), u);
        let same_tail = bc
            .iter()
            .rev()
            .zip(wider.iter().rev())
            .take_while(|(a, b)| a == b)
            .count();
        assert!(
            same_tail < bc.len() / 2,
            "the packed bytes after the change moved"
        );
    }

    #[test]
    fn hostile_input_fails_cleanly() {
        let bc = sample();
        assert!(unpack(b"BC", 1 << 20).is_err());
        assert!(unpack(b"\x7fELF....", 1 << 20).is_err());
        for n in 5..bc.len() {
            // Cut short anywhere: an error, never a panic (a cut at a block boundary of the
            // top level is a shorter valid file).
            let _ = unpack(&bc[..n], 1 << 20);
        }
        assert!(unpack(&bc[..bc.len() - 4], 1 << 20).is_err());
        let err = unpack(&bc, 8).unwrap_err();
        assert!(err.to_string().contains("more than 8"), "{err}");
        let u = unpack(&bc, 1 << 20).unwrap();
        assert!(pack(&u[..u.len() - 1], 1 << 20).is_err());
        let err = pack(&u, 16).unwrap_err();
        assert!(err.to_string().contains("more than 16"), "{err}");
        // Every single-byte change of the unpacked form: packs or fails, never panics.
        for i in 0..u.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut h = u.clone();
                h[i] = v;
                let _ = pack(&h, 1 << 20);
            }
        }
        // Blocks nested past the limit: block 16 of width 2 entered again and again.
        let mut nested = Vec::new();
        for _ in 0..=MAX_DEPTH {
            nested.extend([1, 16, 2]);
        }
        let err = pack(&nested, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("nested"), "{err}");
    }

    #[test]
    fn word_reads_agree_with_the_bit_by_bit_paths_up_to_the_end() {
        // Fields and VBRs at every bit position of a stream, near its end too, where the
        // one-load paths give way to the slow ones; a Sink writes them back.
        let data: Vec<u8> = (0u32..40)
            .map(|i| (i.wrapping_mul(0x9e) ^ 0x5a) as u8)
            .collect();
        for n in [2u8, 3, 4, 5, 6, 8, 13, 32] {
            for pos in 0..data.len() as u64 * 8 {
                let mut fast = Bits { data: &data, pos };
                let mut slow = Bits { data: &data, pos };
                let (f, s) = (fast.vbr(n), slow.vbr_slow(n));
                assert_eq!(f.is_ok(), s.is_ok(), "vbr{n} at bit {pos}");
                if let (Ok(f), Ok(s)) = (f, s) {
                    assert_eq!((f, fast.pos), (s, slow.pos), "vbr{n} at bit {pos}");
                    // Written back canonically, it reads the same (the stream's own
                    // chunks need not be canonical).
                    let mut sink = Sink::default();
                    sink.write(0b101, 3);
                    sink.vbr(f, n);
                    let end = sink.bits();
                    sink.align();
                    let mut back = Bits {
                        data: &sink.out,
                        pos: 3,
                    };
                    assert_eq!(back.vbr(n).unwrap(), f, "vbr{n} {f} written back");
                    assert_eq!(back.pos, end);
                }
                let mut fixed = Bits { data: &data, pos };
                let mut by_bits = Bits { data: &data, pos };
                let f = fixed.read(n.min(60) + 4);
                let s: io::Result<u64> = (0..n.min(60) + 4)
                    .map(|i| by_bits.read(1).map(|b| b << i))
                    .sum();
                assert_eq!(f.ok(), s.ok(), "fixed {} at bit {pos}", n.min(60) + 4);
            }
        }
    }

    #[test]
    fn patch_sizes_are_bounded_by_the_files() {
        let p = Patch {
            source_size: 640,
            target_size: 100,
            inner: Method::BsdiffZstd,
            payload: b"inner",
        };
        let bytes = p.encode();
        assert_eq!(decode_patch(&bytes, 10, 10).unwrap(), p);
        assert!(decode_patch(&bytes, 0, 10).is_ok(), "1024 bytes of slack");
        let big = Patch {
            source_size: 64 * 100 + 1025,
            ..p
        };
        assert!(decode_patch(&big.encode(), 100, 10).is_err());
        let mut wrong = bytes.clone();
        wrong[3] = 3;
        assert!(decode_patch(&wrong, 10, 10).is_err());
    }
}
