//! GNU gzip's own deflate (levels 4–9), for the `gzip` delta method (FORMAT.md §6.5).
//!
//! Debian compresses documentation with `gzip -9n`. zlib at level 9 gives the same bytes
//! only while a file fits one deflate block: past that the two compressors end their blocks
//! in different places (gzip keeps up to 32,767 symbols where zlib keeps 16,383, and ends a
//! block early, every 4,096 symbols, when matches are sparse and the block would compress
//! to under half its input), so a 1.3 MB changelog differs from the first byte on. This
//! module is gzip 1.x's lazy matcher and block coder, written to make the same decisions in
//! the same order: a 64 KiB window that slides by 32 KiB, 15-bit hash chains, the level's
//! chain limits, the early-flush estimate, and Huffman trees built with the same heap and
//! tie-breaks. The publisher uses it only where it reproduces the file, and the device
//! hashes what it rebuilds, so a difference costs bytes, never a wrong file.
//!
//! Memory is fixed: the window, the chains and one block's symbols (about 400 KiB).

use std::io;

const WSIZE: usize = 0x8000;
const WMASK: usize = WSIZE - 1;
const WINDOW_SIZE: usize = 2 * WSIZE;
const HASH_BITS: u32 = 15;
const HASH_SIZE: usize = 1 << HASH_BITS;
const HASH_MASK: u32 = (1 << HASH_BITS) - 1;
const H_SHIFT: u32 = HASH_BITS.div_ceil(MIN_MATCH as u32);
const MIN_MATCH: usize = 3;
const MAX_MATCH: usize = 258;
const MIN_LOOKAHEAD: usize = MAX_MATCH + MIN_MATCH + 1;
const MAX_DIST: usize = WSIZE - MIN_LOOKAHEAD;
const TOO_FAR: usize = 4096;
const LIT_BUFSIZE: usize = 0x8000;
const DIST_BUFSIZE: usize = LIT_BUFSIZE;

const MAX_BITS: usize = 15;
const MAX_BL_BITS: usize = 7;
const LENGTH_CODES: usize = 29;
const LITERALS: usize = 256;
const END_BLOCK: usize = 256;
const L_CODES: usize = LITERALS + 1 + LENGTH_CODES;
const D_CODES: usize = 30;
const BL_CODES: usize = 19;
const HEAP_SIZE: usize = 2 * L_CODES + 1;
const REP_3_6: usize = 16;
const REPZ_3_10: usize = 17;
const REPZ_11_138: usize = 18;

const EXTRA_LBITS: [u8; LENGTH_CODES] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const EXTRA_DBITS: [u8; D_CODES] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];
const EXTRA_BLBITS: [u8; BL_CODES] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 3, 7];
const BL_ORDER: [usize; BL_CODES] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// gzip's `configuration_table` for the lazy levels: good length, max lazy, nice length,
/// max chain.
const CONFIG: [[usize; 4]; 6] = [
    [4, 4, 16, 16],
    [8, 16, 32, 32],
    [8, 16, 128, 128],
    [8, 32, 128, 256],
    [32, 128, 258, 1024],
    [32, 258, 258, 4096],
];

/// Levels this module reproduces (gzip's 1–3 use another matcher).
pub const LEVELS: std::ops::RangeInclusive<u8> = 4..=9;

/// The raw deflate stream `gzip -<level>` writes for `raw`.
pub fn deflate(raw: &[u8], level: u8) -> io::Result<Vec<u8>> {
    if !LEVELS.contains(&level) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("GNU deflate level {level} is not 4 to 9"),
        ));
    }
    let [good, lazy, nice, chain] = CONFIG[usize::from(level) - 4];
    let mut d = Deflater {
        input: raw,
        read: 0,
        // Room past the window for the reads gzip makes beyond its end at the input's end.
        window: vec![0; WINDOW_SIZE + MAX_MATCH + 8],
        prev: vec![0; WSIZE],
        head: vec![0; HASH_SIZE],
        ins_h: 0,
        strstart: 0,
        block_start: 0,
        match_start: 0,
        lookahead: 0,
        eofile: false,
        prev_length: 0,
        good,
        lazy,
        nice,
        chain,
        t: Trees::new(raw.len()),
    };
    d.run();
    Ok(d.t.out.bytes)
}

struct Deflater<'a> {
    input: &'a [u8],
    read: usize,
    window: Vec<u8>,
    prev: Vec<u16>,
    head: Vec<u16>,
    ins_h: u32,
    strstart: usize,
    block_start: isize,
    match_start: usize,
    lookahead: usize,
    eofile: bool,
    prev_length: usize,
    good: usize,
    lazy: usize,
    nice: usize,
    chain: usize,
    t: Trees,
}

impl Deflater<'_> {
    fn read_buf(&mut self, at: usize, size: usize) -> usize {
        let n = size.min(self.input.len() - self.read);
        self.window[at..at + n].copy_from_slice(&self.input[self.read..self.read + n]);
        self.read += n;
        n
    }

    fn fill_window(&mut self) {
        let mut more = WINDOW_SIZE - self.lookahead - self.strstart;
        if self.strstart >= WSIZE + MAX_DIST {
            self.window.copy_within(WSIZE..WINDOW_SIZE, 0);
            self.match_start = self.match_start.wrapping_sub(WSIZE);
            self.strstart -= WSIZE;
            self.block_start -= WSIZE as isize;
            for p in self.head.iter_mut().chain(self.prev.iter_mut()) {
                *p = if usize::from(*p) >= WSIZE {
                    *p - WSIZE as u16
                } else {
                    0
                };
            }
            more += WSIZE;
        }
        if !self.eofile {
            let at = self.strstart + self.lookahead;
            let n = self.read_buf(at, more);
            if n == 0 {
                self.eofile = true;
                self.window[at..at + MIN_MATCH - 1].fill(0);
            } else {
                self.lookahead += n;
            }
        }
    }

    #[inline]
    fn insert(&mut self, s: usize) -> usize {
        self.ins_h =
            ((self.ins_h << H_SHIFT) ^ u32::from(self.window[s + MIN_MATCH - 1])) & HASH_MASK;
        let head = self.head[self.ins_h as usize];
        self.prev[s & WMASK] = head;
        self.head[self.ins_h as usize] = s as u16;
        usize::from(head)
    }

    fn longest_match(&mut self, mut cur: usize) -> usize {
        let w = &self.window;
        let mut chain = self.chain;
        let scan = self.strstart;
        let mut best_len = self.prev_length;
        let limit = self.strstart.saturating_sub(MAX_DIST);
        let strend = scan + MAX_MATCH;
        let mut scan_end1 = w[scan + best_len - 1];
        let mut scan_end = w[scan + best_len];
        if self.prev_length >= self.good {
            chain >>= 2;
        }
        loop {
            let m = cur;
            // The third byte is not compared: equal hashes and equal first two bytes imply
            // it (gzip relies on this, and so do its matches).
            if w[m + best_len] == scan_end
                && w[m + best_len - 1] == scan_end1
                && w[m] == w[scan]
                && w[m + 1] == w[scan + 1]
            {
                let (mut s, mut p) = (scan + 2, m + 2);
                'cmp: loop {
                    for _ in 0..8 {
                        s += 1;
                        p += 1;
                        if w[s] != w[p] {
                            break 'cmp;
                        }
                    }
                    if s >= strend {
                        break;
                    }
                }
                let len = MAX_MATCH - (strend - s);
                if len > best_len {
                    self.match_start = cur;
                    best_len = len;
                    if len >= self.nice {
                        break;
                    }
                    scan_end1 = w[scan + best_len - 1];
                    scan_end = w[scan + best_len];
                }
            }
            cur = usize::from(self.prev[cur & WMASK]);
            if cur <= limit {
                break;
            }
            chain -= 1;
            if chain == 0 {
                break;
            }
        }
        best_len
    }

    fn flush_block(&mut self, eof: bool) {
        let stored_len = (self.strstart as isize - self.block_start) as usize;
        let buf = (self.block_start >= 0).then(|| {
            let at = self.block_start as usize;
            &self.window[at..at + stored_len]
        });
        self.t.flush_block(buf, eof);
    }

    fn run(&mut self) {
        self.lookahead = self.read_buf(0, WINDOW_SIZE);
        if self.lookahead == 0 {
            self.eofile = true;
        } else {
            while self.lookahead < MIN_LOOKAHEAD && !self.eofile {
                self.fill_window();
            }
            self.ins_h = 0;
            for j in 0..MIN_MATCH - 1 {
                self.ins_h = ((self.ins_h << H_SHIFT) ^ u32::from(self.window[j])) & HASH_MASK;
            }
        }
        let mut match_available = false;
        let mut match_length = MIN_MATCH - 1;
        while self.lookahead != 0 {
            let hash_head = self.insert(self.strstart);
            self.prev_length = match_length;
            let prev_match = self.match_start;
            match_length = MIN_MATCH - 1;
            if hash_head != 0
                && self.prev_length < self.lazy
                && self.strstart - hash_head <= MAX_DIST
                && self.strstart <= WINDOW_SIZE - MIN_LOOKAHEAD
            {
                match_length = self.longest_match(hash_head).min(self.lookahead);
                if match_length == MIN_MATCH
                    && self.strstart.wrapping_sub(self.match_start) > TOO_FAR
                {
                    match_length -= 1;
                }
            }
            if self.prev_length >= MIN_MATCH && match_length <= self.prev_length {
                let dist = self.strstart.wrapping_sub(1).wrapping_sub(prev_match) & 0xffff_ffff;
                let flush = self.t.tally(
                    dist,
                    self.prev_length - MIN_MATCH,
                    self.strstart,
                    self.block_start,
                );
                self.lookahead -= self.prev_length - 1;
                for _ in 0..self.prev_length - 2 {
                    self.strstart += 1;
                    self.insert(self.strstart);
                }
                match_available = false;
                match_length = MIN_MATCH - 1;
                self.strstart += 1;
                if flush {
                    self.flush_block(false);
                    self.block_start = self.strstart as isize;
                }
            } else if match_available {
                let c = usize::from(self.window[self.strstart - 1]);
                if self.t.tally(0, c, self.strstart, self.block_start) {
                    self.flush_block(false);
                    self.block_start = self.strstart as isize;
                }
                self.strstart += 1;
                self.lookahead -= 1;
            } else {
                match_available = true;
                self.strstart += 1;
                self.lookahead -= 1;
            }
            while self.lookahead < MIN_LOOKAHEAD && !self.eofile {
                self.fill_window();
            }
        }
        if match_available {
            let c = usize::from(self.window[self.strstart - 1]);
            self.t.tally(0, c, self.strstart, self.block_start);
        }
        self.flush_block(true);
    }
}

/// Bits out, least significant first.
#[derive(Default)]
struct Bits {
    bytes: Vec<u8>,
    acc: u64,
    n: u32,
}

impl Bits {
    #[inline]
    fn send(&mut self, value: usize, len: usize) {
        self.acc |= (value as u64) << self.n;
        self.n += len as u32;
        while self.n >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    fn windup(&mut self) {
        if self.n > 0 {
            self.bytes.push(self.acc as u8);
        }
        self.acc = 0;
        self.n = 0;
    }
}

/// One Huffman tree: frequencies, then lengths and codes; `dad` links built nodes.
struct Tree {
    freq: Vec<u32>,
    len: Vec<u16>,
    code: Vec<u16>,
    dad: Vec<u16>,
    max_code: usize,
}

impl Tree {
    fn new(n: usize) -> Tree {
        Tree {
            freq: vec![0; n],
            len: vec![0; n],
            code: vec![0; n],
            dad: vec![0; n],
            max_code: 0,
        }
    }
}

struct Desc {
    elems: usize,
    extra: &'static [u8],
    extra_base: usize,
    max_length: usize,
}

const L_DESC: Desc = Desc {
    elems: L_CODES,
    extra: &EXTRA_LBITS,
    extra_base: LITERALS + 1,
    max_length: MAX_BITS,
};
const D_DESC: Desc = Desc {
    elems: D_CODES,
    extra: &EXTRA_DBITS,
    extra_base: 0,
    max_length: MAX_BITS,
};
const BL_DESC: Desc = Desc {
    elems: BL_CODES,
    extra: &EXTRA_BLBITS,
    extra_base: 0,
    max_length: MAX_BL_BITS,
};

struct Trees {
    ltree: Tree,
    dtree: Tree,
    bltree: Tree,
    static_l: Tree,
    static_d: Tree,
    length_code: [u8; 256],
    base_length: [usize; LENGTH_CODES],
    dist_code: [u8; 512],
    base_dist: [usize; D_CODES],
    heap: [usize; HEAP_SIZE],
    heap_len: usize,
    heap_max: usize,
    depth: [u8; HEAP_SIZE],
    bl_count: [usize; MAX_BITS + 1],
    l_buf: Vec<u8>,
    d_buf: Vec<u16>,
    flag_buf: Vec<u8>,
    flags: u8,
    flag_bit: u8,
    opt_len: u64,
    static_len: u64,
    out: Bits,
}

#[derive(Clone, Copy)]
enum Which {
    L,
    D,
    Bl,
}

impl Trees {
    fn new(raw_len: usize) -> Trees {
        let mut t = Trees {
            ltree: Tree::new(HEAP_SIZE),
            dtree: Tree::new(2 * D_CODES + 1),
            bltree: Tree::new(2 * BL_CODES + 1),
            static_l: Tree::new(L_CODES + 2),
            static_d: Tree::new(D_CODES),
            length_code: [0; 256],
            base_length: [0; LENGTH_CODES],
            dist_code: [0; 512],
            base_dist: [0; D_CODES],
            heap: [0; HEAP_SIZE],
            heap_len: 0,
            heap_max: 0,
            depth: [0; HEAP_SIZE],
            bl_count: [0; MAX_BITS + 1],
            l_buf: Vec::with_capacity(LIT_BUFSIZE),
            d_buf: Vec::with_capacity(DIST_BUFSIZE),
            flag_buf: Vec::with_capacity(LIT_BUFSIZE / 8 + 1),
            flags: 0,
            flag_bit: 1,
            opt_len: 0,
            static_len: 0,
            out: Bits {
                bytes: Vec::with_capacity(raw_len / 3 + 64),
                ..Bits::default()
            },
        };
        let mut length = 0;
        for (code, &extra) in EXTRA_LBITS[..LENGTH_CODES - 1].iter().enumerate() {
            t.base_length[code] = length;
            for _ in 0..1 << extra {
                t.length_code[length] = code as u8;
                length += 1;
            }
        }
        // Match length 258 has two codes; 285 (no extra bits) is the one used.
        t.length_code[length - 1] = (LENGTH_CODES - 1) as u8;
        let mut dist = 0;
        for (code, &extra) in EXTRA_DBITS[..16].iter().enumerate() {
            t.base_dist[code] = dist;
            for _ in 0..1 << extra {
                t.dist_code[dist] = code as u8;
                dist += 1;
            }
        }
        dist >>= 7;
        for (code, &extra) in EXTRA_DBITS.iter().enumerate().skip(16) {
            t.base_dist[code] = dist << 7;
            for _ in 0..1 << (extra - 7) {
                t.dist_code[256 + dist] = code as u8;
                dist += 1;
            }
        }
        let mut count = [0usize; MAX_BITS + 1];
        for n in 0..L_CODES + 2 {
            let len = match n {
                0..=143 => 8,
                144..=255 => 9,
                256..=279 => 7,
                _ => 8,
            };
            t.static_l.len[n] = len;
            count[usize::from(len)] += 1;
        }
        gen_codes(&mut t.static_l, L_CODES + 1, &count);
        for n in 0..D_CODES {
            t.static_d.len[n] = 5;
            t.static_d.code[n] = bi_reverse(n as u16, 5);
        }
        t.init_block();
        t
    }

    fn init_block(&mut self) {
        self.ltree.freq[..L_CODES].fill(0);
        self.dtree.freq[..D_CODES].fill(0);
        self.bltree.freq[..BL_CODES].fill(0);
        self.ltree.freq[END_BLOCK] = 1;
        self.opt_len = 0;
        self.static_len = 0;
        self.l_buf.clear();
        self.d_buf.clear();
        self.flag_buf.clear();
        self.flags = 0;
        self.flag_bit = 1;
    }

    /// gzip's `ct_tally`: records a literal (`dist` 0) or a match, and says whether the
    /// block should end here.
    fn tally(&mut self, dist: usize, lc: usize, strstart: usize, block_start: isize) -> bool {
        self.l_buf.push(lc as u8);
        if dist == 0 {
            self.ltree.freq[lc] += 1;
        } else {
            let dist = dist - 1;
            self.ltree.freq[usize::from(self.length_code[lc]) + LITERALS + 1] += 1;
            let dc = d_code(&self.dist_code, dist);
            self.dtree.freq[dc] += 1;
            self.d_buf.push(dist as u16);
            self.flags |= self.flag_bit;
        }
        self.flag_bit = self.flag_bit.wrapping_shl(1);
        let last_lit = self.l_buf.len();
        if last_lit & 7 == 0 {
            self.flag_buf.push(self.flags);
            self.flags = 0;
            self.flag_bit = 1;
        }
        let last_dist = self.d_buf.len();
        if last_lit & 0xfff == 0 {
            let mut out_length = last_lit as u64 * 8;
            let in_length = (strstart as isize - block_start) as u64;
            for (&f, &extra) in self.dtree.freq.iter().zip(&EXTRA_DBITS) {
                out_length += u64::from(f) * (5 + u64::from(extra));
            }
            out_length >>= 3;
            if last_dist < last_lit / 2 && out_length < in_length / 2 {
                return true;
            }
        }
        last_lit == LIT_BUFSIZE - 1 || last_dist == DIST_BUFSIZE
    }

    fn tree(&mut self, w: Which) -> &mut Tree {
        match w {
            Which::L => &mut self.ltree,
            Which::D => &mut self.dtree,
            Which::Bl => &mut self.bltree,
        }
    }

    fn smaller(tree: &Tree, depth: &[u8], n: usize, m: usize) -> bool {
        tree.freq[n] < tree.freq[m] || (tree.freq[n] == tree.freq[m] && depth[n] <= depth[m])
    }

    fn pqdownheap(&mut self, w: Which, mut k: usize) {
        let heap_len = self.heap_len;
        let v = self.heap[k];
        let mut j = k << 1;
        let tree = match w {
            Which::L => &self.ltree,
            Which::D => &self.dtree,
            Which::Bl => &self.bltree,
        };
        while j <= heap_len {
            if j < heap_len && Self::smaller(tree, &self.depth, self.heap[j + 1], self.heap[j]) {
                j += 1;
            }
            if Self::smaller(tree, &self.depth, v, self.heap[j]) {
                break;
            }
            self.heap[k] = self.heap[j];
            k = j;
            j <<= 1;
        }
        self.heap[k] = v;
    }

    fn build_tree(&mut self, w: Which) {
        let desc = match w {
            Which::L => &L_DESC,
            Which::D => &D_DESC,
            Which::Bl => &BL_DESC,
        };
        let elems = desc.elems;
        let mut max_code: isize = -1;
        self.heap_len = 0;
        self.heap_max = HEAP_SIZE;
        for n in 0..elems {
            if self.tree(w).freq[n] != 0 {
                self.heap_len += 1;
                self.heap[self.heap_len] = n;
                max_code = n as isize;
                self.depth[n] = 0;
            } else {
                self.tree(w).len[n] = 0;
            }
        }
        // At least two codes of non-zero frequency, so the tree has a root with two leaves.
        while self.heap_len < 2 {
            let new = if max_code < 2 {
                max_code += 1;
                max_code as usize
            } else {
                0
            };
            self.heap_len += 1;
            self.heap[self.heap_len] = new;
            self.tree(w).freq[new] = 1;
            self.depth[new] = 0;
            self.opt_len = self.opt_len.wrapping_sub(1);
            let s = match w {
                Which::L => u64::from(self.static_l.len[new]),
                Which::D => u64::from(self.static_d.len[new]),
                Which::Bl => 0,
            };
            self.static_len = self.static_len.wrapping_sub(s);
        }
        let max_code = max_code as usize;
        self.tree(w).max_code = max_code;
        for n in (1..=self.heap_len / 2).rev() {
            self.pqdownheap(w, n);
        }
        let mut node = elems;
        loop {
            let n = self.heap[1];
            self.heap[1] = self.heap[self.heap_len];
            self.heap_len -= 1;
            self.pqdownheap(w, 1);
            let m = self.heap[1];
            self.heap_max -= 1;
            self.heap[self.heap_max] = n;
            self.heap_max -= 1;
            self.heap[self.heap_max] = m;
            let t = self.tree(w);
            t.freq[node] = t.freq[n] + t.freq[m];
            t.dad[n] = node as u16;
            t.dad[m] = node as u16;
            self.depth[node] = self.depth[n].max(self.depth[m]) + 1;
            self.heap[1] = node;
            node += 1;
            self.pqdownheap(w, 1);
            if self.heap_len < 2 {
                break;
            }
        }
        self.heap_max -= 1;
        self.heap[self.heap_max] = self.heap[1];
        self.gen_bitlen(w, desc, max_code);
        let count = self.bl_count;
        gen_codes(self.tree(w), max_code, &count);
    }

    fn gen_bitlen(&mut self, w: Which, desc: &Desc, max_code: usize) {
        let max_length = desc.max_length;
        self.bl_count = [0; MAX_BITS + 1];
        let root = self.heap[self.heap_max];
        self.tree(w).len[root] = 0;
        let mut overflow = 0usize;
        let mut h = self.heap_max + 1;
        while h < HEAP_SIZE {
            let n = self.heap[h];
            let t = match w {
                Which::L => &mut self.ltree,
                Which::D => &mut self.dtree,
                Which::Bl => &mut self.bltree,
            };
            let mut bits = usize::from(t.len[usize::from(t.dad[n])]) + 1;
            if bits > max_length {
                bits = max_length;
                overflow += 1;
            }
            t.len[n] = bits as u16;
            h += 1;
            if n > max_code {
                continue;
            }
            self.bl_count[bits] += 1;
            let xbits = if n >= desc.extra_base {
                u64::from(desc.extra[n - desc.extra_base])
            } else {
                0
            };
            let f = u64::from(t.freq[n]);
            self.opt_len = self.opt_len.wrapping_add(f * (bits as u64 + xbits));
            let s = match w {
                Which::L => Some(u64::from(self.static_l.len[n])),
                Which::D => Some(u64::from(self.static_d.len[n])),
                Which::Bl => None,
            };
            if let Some(s) = s {
                self.static_len = self.static_len.wrapping_add(f * (s + xbits));
            }
        }
        if overflow == 0 {
            return;
        }
        loop {
            let mut bits = max_length - 1;
            while self.bl_count[bits] == 0 {
                bits -= 1;
            }
            self.bl_count[bits] -= 1;
            self.bl_count[bits + 1] += 2;
            self.bl_count[max_length] -= 1;
            overflow = overflow.saturating_sub(2);
            if overflow == 0 {
                break;
            }
        }
        let mut h = HEAP_SIZE;
        for bits in (1..=max_length).rev() {
            let mut n = self.bl_count[bits];
            while n != 0 {
                h -= 1;
                let m = self.heap[h];
                if m > max_code {
                    continue;
                }
                let t = match w {
                    Which::L => &mut self.ltree,
                    Which::D => &mut self.dtree,
                    Which::Bl => &mut self.bltree,
                };
                if usize::from(t.len[m]) != bits {
                    let delta = (bits as i64 - i64::from(t.len[m])) * i64::from(t.freq[m]);
                    self.opt_len = self.opt_len.wrapping_add(delta as u64);
                    t.len[m] = bits as u16;
                }
                n -= 1;
            }
        }
    }

    /// Counts the bit-length symbols of a tree's code lengths (gzip's `scan_tree`), after
    /// setting the guard length past its last code that [`length_runs`] stops at.
    fn scan_tree(&mut self, w: Which) {
        let tree = match w {
            Which::L => &mut self.ltree,
            Which::D => &mut self.dtree,
            Which::Bl => unreachable!("the bit length tree is not scanned"),
        };
        tree.len[tree.max_code + 1] = 0xffff;
        let bl = &mut self.bltree;
        length_runs(&tree.len, tree.max_code, |sym, _| bl.freq[sym] += 1);
    }

    /// Sends a tree's code lengths with the bit-length code (gzip's `send_tree`).
    fn send_tree(&mut self, w: Which) {
        let (tree, bl, out) = match w {
            Which::L => (&self.ltree, &self.bltree, &mut self.out),
            Which::D => (&self.dtree, &self.bltree, &mut self.out),
            Which::Bl => unreachable!("the bit length tree is sent as lengths"),
        };
        length_runs(&tree.len, tree.max_code, |sym, extra| {
            out.send(usize::from(bl.code[sym]), usize::from(bl.len[sym]));
            if let Some((value, bits)) = extra {
                out.send(value, bits);
            }
        });
    }

    fn build_bl_tree(&mut self) -> usize {
        self.scan_tree(Which::L);
        self.scan_tree(Which::D);
        self.build_tree(Which::Bl);
        let mut max_blindex = BL_CODES - 1;
        while max_blindex >= 3 {
            if self.bltree.len[BL_ORDER[max_blindex]] != 0 {
                break;
            }
            max_blindex -= 1;
        }
        self.opt_len = self
            .opt_len
            .wrapping_add(3 * (max_blindex as u64 + 1) + 5 + 5 + 4);
        max_blindex
    }

    fn send_all_trees(&mut self, lcodes: usize, dcodes: usize, blcodes: usize) {
        self.out.send(lcodes - 257, 5);
        self.out.send(dcodes - 1, 5);
        self.out.send(blcodes - 4, 4);
        for &code in &BL_ORDER[..blcodes] {
            let len = usize::from(self.bltree.len[code]);
            self.out.send(len, 3);
        }
        self.send_tree(Which::L);
        self.send_tree(Which::D);
    }

    fn compress_block(&mut self, fixed: bool) {
        let (lt, dt) = if fixed {
            (&self.static_l, &self.static_d)
        } else {
            (&self.ltree, &self.dtree)
        };
        let out = &mut self.out;
        let mut dx = 0;
        let mut flag = 0u8;
        for (lx, &lc) in self.l_buf.iter().enumerate() {
            if lx & 7 == 0 {
                flag = self.flag_buf.get(lx >> 3).copied().unwrap_or(self.flags);
            }
            let lc = usize::from(lc);
            if flag & 1 == 0 {
                out.send(usize::from(lt.code[lc]), usize::from(lt.len[lc]));
            } else {
                let code = usize::from(self.length_code[lc]);
                let sym = code + LITERALS + 1;
                out.send(usize::from(lt.code[sym]), usize::from(lt.len[sym]));
                let extra = usize::from(EXTRA_LBITS[code]);
                if extra != 0 {
                    out.send(lc - self.base_length[code], extra);
                }
                let dist = usize::from(self.d_buf[dx]);
                dx += 1;
                let code = d_code(&self.dist_code, dist);
                out.send(usize::from(dt.code[code]), usize::from(dt.len[code]));
                let extra = usize::from(EXTRA_DBITS[code]);
                if extra != 0 {
                    out.send(dist - self.base_dist[code], extra);
                }
            }
            flag >>= 1;
        }
        out.send(
            usize::from(lt.code[END_BLOCK]),
            usize::from(lt.len[END_BLOCK]),
        );
    }

    fn flush_block(&mut self, buf: Option<&[u8]>, eof: bool) {
        self.build_tree(Which::L);
        self.build_tree(Which::D);
        let max_blindex = self.build_bl_tree();
        let mut opt_lenb = (self.opt_len.wrapping_add(3 + 7)) >> 3;
        let static_lenb = (self.static_len.wrapping_add(3 + 7)) >> 3;
        if static_lenb <= opt_lenb {
            opt_lenb = static_lenb;
        }
        let eof_bit = usize::from(eof);
        match buf {
            Some(buf) if buf.len() as u64 + 4 <= opt_lenb => {
                self.out.send(eof_bit, 3);
                self.out.windup();
                let len = buf.len() as u16;
                self.out.bytes.extend_from_slice(&len.to_le_bytes());
                self.out.bytes.extend_from_slice(&(!len).to_le_bytes());
                self.out.bytes.extend_from_slice(buf);
            }
            _ if static_lenb == opt_lenb => {
                self.out.send((1 << 1) + eof_bit, 3);
                self.compress_block(true);
            }
            _ => {
                self.out.send((2 << 1) + eof_bit, 3);
                let (l, d) = (self.ltree.max_code + 1, self.dtree.max_code + 1);
                self.send_all_trees(l, d, max_blindex + 1);
                self.compress_block(false);
            }
        }
        self.init_block();
        if eof {
            self.out.windup();
        }
    }
}

/// The distance code of a match distance minus one.
#[inline]
fn d_code(dist_code: &[u8; 512], dist: usize) -> usize {
    usize::from(if dist < 256 {
        dist_code[dist]
    } else {
        dist_code[256 + (dist >> 7)]
    })
}

/// gzip's run-length coding of code lengths, shared by counting and sending them: calls
/// `emit` with each bit-length symbol in order, and the extra bits (value, count) of a
/// repeat. `len[max_code + 1]` must hold the guard `scan_tree` sets.
fn length_runs(len: &[u16], max_code: usize, mut emit: impl FnMut(usize, Option<(usize, usize)>)) {
    let mut prevlen: i32 = -1;
    let mut nextlen = i32::from(len[0]);
    let mut count = 0usize;
    let (mut max_count, mut min_count) = if nextlen == 0 { (138, 3) } else { (7, 4) };
    for n in 0..=max_code {
        let curlen = nextlen;
        nextlen = i32::from(len[n + 1]);
        count += 1;
        if count < max_count && curlen == nextlen {
            continue;
        } else if count < min_count {
            for _ in 0..count {
                emit(curlen as usize, None);
            }
        } else if curlen != 0 {
            if curlen != prevlen {
                emit(curlen as usize, None);
                count -= 1;
            }
            emit(REP_3_6, Some((count - 3, 2)));
        } else if count <= 10 {
            emit(REPZ_3_10, Some((count - 3, 3)));
        } else {
            emit(REPZ_11_138, Some((count - 11, 7)));
        }
        count = 0;
        prevlen = curlen;
        (max_count, min_count) = if nextlen == 0 {
            (138, 3)
        } else if curlen == nextlen {
            (6, 3)
        } else {
            (7, 4)
        };
    }
}

fn bi_reverse(mut code: u16, len: usize) -> u16 {
    let mut res = 0u16;
    for _ in 0..len {
        res = (res << 1) | (code & 1);
        code >>= 1;
    }
    res
}

fn gen_codes(tree: &mut Tree, max_code: usize, bl_count: &[usize; MAX_BITS + 1]) {
    let mut next_code = [0u16; MAX_BITS + 1];
    let mut code = 0u16;
    for bits in 1..=MAX_BITS {
        code = (code.wrapping_add(bl_count[bits - 1] as u16)) << 1;
        next_code[bits] = code;
    }
    for n in 0..=max_code {
        let len = usize::from(tree.len[n]);
        if len == 0 {
            continue;
        }
        tree.code[n] = bi_reverse(next_code[len], len);
        next_code[len] = next_code[len].wrapping_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::process::{Command, Stdio};

    /// What `gzip -<level> -n` (GNU gzip, on every Debian system) writes for `raw`: its
    /// raw deflate stream, between the 10-byte header and the 8-byte trailer.
    fn gnu_gzip(raw: &[u8], level: u8) -> Vec<u8> {
        let mut child = Command::new("gzip")
            .args([format!("-{level}").as_str(), "-n", "-c"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("GNU gzip runs");
        let mut stdin = child.stdin.take().unwrap();
        let input = raw.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        assert!(out.status.success());
        out.stdout[10..out.stdout.len() - 8].to_vec()
    }

    /// Deterministic bytes that exercise every kind of block: text that repeats with edits
    /// (dynamic trees, long matches, the window sliding), runs of one byte, incompressible
    /// noise (stored blocks), and stretches of sparse long matches between literals (the
    /// early end of a block every 4,096 symbols).
    fn mixed(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let words: Vec<String> = (0..400)
            .map(|i| format!("w{:x}{}", i * 7919, "abc".repeat(i % 4)))
            .collect();
        let mut out = Vec::with_capacity(len + 1024);
        while out.len() < len {
            match next() % 10 {
                0..=4 => {
                    for _ in 0..(next() % 200) {
                        out.extend_from_slice(words[(next() % 400) as usize].as_bytes());
                        out.push(if next() % 9 == 0 { b'\n' } else { b' ' });
                    }
                }
                5 => out.extend(std::iter::repeat_n(next() as u8, (next() % 3000) as usize)),
                6 => out.extend((0..next() % 20_000).map(|_| next() as u8)),
                7 => {
                    // An older stretch again, as a changelog repeats itself.
                    if out.len() > 70_000 {
                        let from = (next() as usize) % (out.len() - 60_000);
                        let n = (next() % 60_000) as usize;
                        out.extend_from_within(from..from + n);
                    }
                }
                _ => {
                    for _ in 0..(next() % 300) {
                        out.push(next() as u8);
                        let at = out.len() - 1;
                        let back = 1 + (next() as usize % at.clamp(1, 30_000));
                        let n = 20 + (next() % 200) as usize;
                        for k in 0..n {
                            let b = out[at - back.min(at) + k];
                            out.push(b);
                        }
                    }
                }
            }
        }
        out.truncate(len);
        out
    }

    #[test]
    fn gives_what_gnu_gzip_writes_at_every_lazy_level() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..300_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect();
        let inputs = [
            (0, 1),
            (1, 2),
            (300, 3),
            (65_536, 4),
            (70_000, 5),
            (2_500_000, 6),
        ]
        .map(|(len, seed)| mixed(len, seed))
        .into_iter()
        // Noise: stored blocks.
        .chain([noise]);
        for raw in inputs {
            let len = raw.len();
            for level in LEVELS {
                let ours = deflate(&raw, level).unwrap();
                let theirs = gnu_gzip(&raw, level);
                let first = ours.iter().zip(&theirs).position(|(a, b)| a != b);
                assert!(
                    ours == theirs,
                    "{len} bytes at -{level}: {} vs {} bytes, first difference at {first:?}",
                    ours.len(),
                    theirs.len()
                );
                // And the stream is deflate that gives the input back.
                assert_eq!(crate::gzip::inflate(&ours, len as u64).unwrap(), raw);
            }
        }
    }

    #[test]
    fn zlib_does_not_write_what_gnu_gzip_writes_past_one_block() {
        let raw = mixed(1_000_000, 7);
        let gnu = deflate(&raw, 9).unwrap();
        assert_eq!(gnu, gnu_gzip(&raw, 9));
        assert_ne!(crate::gzip::deflate(&raw, 9).unwrap(), gnu);
    }

    #[test]
    fn levels_outside_the_lazy_matcher_are_refused() {
        for level in [0, 1, 3, 10] {
            let e = deflate(b"x", level).unwrap_err().to_string();
            assert!(e.contains(&format!("level {level}")), "{e}");
        }
    }
}
