//! gzip 1.x's lazy matcher: the 64 KiB window that slides by 32 KiB, the 15-bit hash chains,
//! the level's limits, and where a block ends (`deflate.c`).

use super::*;

pub(super) struct Deflater<'a> {
    pub(super) input: &'a [u8],
    pub(super) read: usize,
    pub(super) window: Vec<u8>,
    pub(super) prev: Vec<u16>,
    pub(super) head: Vec<u16>,
    pub(super) ins_h: u32,
    pub(super) strstart: usize,
    pub(super) block_start: isize,
    pub(super) match_start: usize,
    pub(super) lookahead: usize,
    pub(super) eofile: bool,
    pub(super) prev_length: usize,
    pub(super) good: usize,
    pub(super) lazy: usize,
    pub(super) nice: usize,
    pub(super) chain: usize,
    pub(super) t: Trees,
}

impl Deflater<'_> {
    pub(super) fn read_buf(&mut self, at: usize, size: usize) -> usize {
        let n = size.min(self.input.len() - self.read);
        self.window[at..at + n].copy_from_slice(&self.input[self.read..self.read + n]);
        self.read += n;
        n
    }

    pub(super) fn fill_window(&mut self) {
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
    pub(super) fn insert(&mut self, s: usize) -> usize {
        self.ins_h =
            ((self.ins_h << H_SHIFT) ^ u32::from(self.window[s + MIN_MATCH - 1])) & HASH_MASK;
        let head = self.head[self.ins_h as usize];
        self.prev[s & WMASK] = head;
        self.head[self.ins_h as usize] = s as u16;
        usize::from(head)
    }

    pub(super) fn longest_match(&mut self, mut cur: usize) -> usize {
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

    pub(super) fn flush_block(&mut self, eof: bool) {
        let stored_len = (self.strstart as isize - self.block_start) as usize;
        let buf = (self.block_start >= 0).then(|| {
            let at = self.block_start as usize;
            &self.window[at..at + stored_len]
        });
        self.t.flush_block(buf, eof);
    }

    pub(super) fn run(&mut self) {
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
