//! gzip 1.x's block coder: one block's symbols, the early-flush estimate, Huffman trees built
//! with the same heap and tie-breaks, and the bits written least significant first (`trees.c`).

use super::*;

/// Bits out, least significant first.
#[derive(Default)]
pub(super) struct Bits {
    pub(super) bytes: Vec<u8>,
    pub(super) acc: u64,
    pub(super) n: u32,
}

impl Bits {
    #[inline]
    pub(super) fn send(&mut self, value: usize, len: usize) {
        self.acc |= (value as u64) << self.n;
        self.n += len as u32;
        while self.n >= 8 {
            self.bytes.push(self.acc as u8);
            self.acc >>= 8;
            self.n -= 8;
        }
    }

    pub(super) fn windup(&mut self) {
        if self.n > 0 {
            self.bytes.push(self.acc as u8);
        }
        self.acc = 0;
        self.n = 0;
    }
}

/// One Huffman tree: frequencies, then lengths and codes; `dad` links built nodes.
pub(super) struct Tree {
    pub(super) freq: Vec<u32>,
    pub(super) len: Vec<u16>,
    pub(super) code: Vec<u16>,
    pub(super) dad: Vec<u16>,
    pub(super) max_code: usize,
}

impl Tree {
    pub(super) fn new(n: usize) -> Tree {
        Tree {
            freq: vec![0; n],
            len: vec![0; n],
            code: vec![0; n],
            dad: vec![0; n],
            max_code: 0,
        }
    }
}

pub(super) struct Desc {
    pub(super) elems: usize,
    pub(super) extra: &'static [u8],
    pub(super) extra_base: usize,
    pub(super) max_length: usize,
}

pub(super) const L_DESC: Desc = Desc {
    elems: L_CODES,
    extra: &EXTRA_LBITS,
    extra_base: LITERALS + 1,
    max_length: MAX_BITS,
};
pub(super) const D_DESC: Desc = Desc {
    elems: D_CODES,
    extra: &EXTRA_DBITS,
    extra_base: 0,
    max_length: MAX_BITS,
};
pub(super) const BL_DESC: Desc = Desc {
    elems: BL_CODES,
    extra: &EXTRA_BLBITS,
    extra_base: 0,
    max_length: MAX_BL_BITS,
};

pub(super) struct Trees {
    pub(super) ltree: Tree,
    pub(super) dtree: Tree,
    pub(super) bltree: Tree,
    pub(super) static_l: Tree,
    pub(super) static_d: Tree,
    pub(super) length_code: [u8; 256],
    pub(super) base_length: [usize; LENGTH_CODES],
    pub(super) dist_code: [u8; 512],
    pub(super) base_dist: [usize; D_CODES],
    pub(super) heap: [usize; HEAP_SIZE],
    pub(super) heap_len: usize,
    pub(super) heap_max: usize,
    pub(super) depth: [u8; HEAP_SIZE],
    pub(super) bl_count: [usize; MAX_BITS + 1],
    pub(super) l_buf: Vec<u8>,
    pub(super) d_buf: Vec<u16>,
    pub(super) flag_buf: Vec<u8>,
    pub(super) flags: u8,
    pub(super) flag_bit: u8,
    pub(super) opt_len: u64,
    pub(super) static_len: u64,
    pub(super) out: Bits,
}

#[derive(Clone, Copy)]
pub(super) enum Which {
    L,
    D,
    Bl,
}

impl Trees {
    pub(super) fn new(raw_len: usize) -> Trees {
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

    pub(super) fn init_block(&mut self) {
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
    pub(super) fn tally(
        &mut self,
        dist: usize,
        lc: usize,
        strstart: usize,
        block_start: isize,
    ) -> bool {
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

    pub(super) fn tree(&mut self, w: Which) -> &mut Tree {
        match w {
            Which::L => &mut self.ltree,
            Which::D => &mut self.dtree,
            Which::Bl => &mut self.bltree,
        }
    }

    pub(super) fn smaller(tree: &Tree, depth: &[u8], n: usize, m: usize) -> bool {
        tree.freq[n] < tree.freq[m] || (tree.freq[n] == tree.freq[m] && depth[n] <= depth[m])
    }

    pub(super) fn pqdownheap(&mut self, w: Which, mut k: usize) {
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

    pub(super) fn build_tree(&mut self, w: Which) {
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

    pub(super) fn gen_bitlen(&mut self, w: Which, desc: &Desc, max_code: usize) {
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
    pub(super) fn scan_tree(&mut self, w: Which) {
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
    pub(super) fn send_tree(&mut self, w: Which) {
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

    pub(super) fn build_bl_tree(&mut self) -> usize {
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

    pub(super) fn send_all_trees(&mut self, lcodes: usize, dcodes: usize, blcodes: usize) {
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

    pub(super) fn compress_block(&mut self, fixed: bool) {
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

    pub(super) fn flush_block(&mut self, buf: Option<&[u8]>, eof: bool) {
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
pub(super) fn d_code(dist_code: &[u8; 512], dist: usize) -> usize {
    usize::from(if dist < 256 {
        dist_code[dist]
    } else {
        dist_code[256 + (dist >> 7)]
    })
}

/// gzip's run-length coding of code lengths, shared by counting and sending them: calls
/// `emit` with each bit-length symbol in order, and the extra bits (value, count) of a
/// repeat. `len[max_code + 1]` must hold the guard `scan_tree` sets.
pub(super) fn length_runs(
    len: &[u16],
    max_code: usize,
    mut emit: impl FnMut(usize, Option<(usize, usize)>),
) {
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

pub(super) fn bi_reverse(mut code: u16, len: usize) -> u16 {
    let mut res = 0u16;
    for _ in 0..len {
        res = (res << 1) | (code & 1);
        code >>= 1;
    }
    res
}

pub(super) fn gen_codes(tree: &mut Tree, max_code: usize, bl_count: &[usize; MAX_BITS + 1]) {
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
