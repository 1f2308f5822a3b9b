//! The publisher's memory budget: encoding jobs reserve what they are expected to need before
//! they read their files, and wait while the jobs already running hold too much of it.
//!
//! Jobs start largest first (`publish.rs`), so the big pairs run early and the small ones fill
//! the cores around them. A job larger than the whole budget waits until nothing else runs,
//! then runs alone: the budget bounds concurrency, never what one file may need.

use std::sync::{Condvar, Mutex};

/// Bytes shared by the encoding threads.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: Mutex<(u64, usize)>,
    freed: Condvar,
}

/// A job's share; given back when dropped.
#[derive(Debug)]
pub struct Reservation<'a> {
    budget: &'a Budget,
    bytes: u64,
}

impl Budget {
    pub fn new(limit: u64) -> Budget {
        Budget {
            limit,
            used: Mutex::new((0, 0)),
            freed: Condvar::new(),
        }
    }

    /// Waits until `bytes` fit beside the running jobs (or no job runs), then takes them.
    pub fn reserve(&self, bytes: u64) -> Reservation<'_> {
        let mut used = self.used.lock().expect("not poisoned");
        while used.1 > 0 && used.0.saturating_add(bytes) > self.limit {
            used = self.freed.wait(used).expect("not poisoned");
        }
        used.0 += bytes;
        used.1 += 1;
        Reservation {
            budget: self,
            bytes,
        }
    }

    /// Bytes reserved now.
    pub fn in_use(&self) -> u64 {
        self.used.lock().expect("not poisoned").0
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock().expect("not poisoned");
        used.0 -= self.bytes;
        used.1 -= 1;
        self.budget.freed.notify_all();
    }
}

/// What encoding one content is expected to need at its peak: the files themselves, and for a
/// pair the largest delta method (the ELF method and bsdiff: suffix arrays and images of about
/// 10x the larger file; corpus `libnode`, 47.5 MB: 515 MiB peak), or for an object alone zstd's
/// tables at level 19.
pub fn estimate(old_size: Option<u64>, new_size: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    match old_size {
        Some(old) => old
            .max(new_size)
            .saturating_mul(12)
            .saturating_add(old + new_size)
            .saturating_add(16 * MIB),
        None => new_size.saturating_mul(3).saturating_add(8 * MIB),
    }
}

/// [`estimate`] for a pair whose files are read: a gzip file or one holding an xz stream is
/// diffed decompressed, so it counts at the size it is expected to decompress to (4x for
/// gzip; 8x for xz, the corpus kernel's ratio), and LLVM bitcode unpacked (2x).
pub fn estimate_pair(old: &[u8], new: &[u8]) -> u64 {
    let factor = if deltaroot_format::gzip::is_gzip(old) && deltaroot_format::gzip::is_gzip(new) {
        4
    } else if crate::xz::holds_stream(old) && crate::xz::holds_stream(new) {
        8
    } else if deltaroot_format::bitcode::is_bitcode(old)
        && deltaroot_format::bitcode::is_bitcode(new)
    {
        // Unpacked bitcode: 1.07x on the corpus's PostgreSQL files, with room to spare.
        2
    } else {
        1
    };
    estimate(Some(old.len() as u64 * factor), new.len() as u64 * factor)
}

/// Memory the scanned trees and manifests hold for `entries` entries (paths, metadata,
/// hashes and the maps over them, with room to spare). The process's resident size is no
/// measure of it: after the scan the allocator keeps the freed read buffers, which the jobs
/// reuse.
pub fn tree_bytes(entries: usize) -> u64 {
    (entries as u64).saturating_mul(1024) + (32 << 20)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn jobs_wait_for_room_and_a_job_over_the_budget_runs_alone() {
        let budget = Budget::new(100);
        let peak = AtomicU64::new(0);
        let alone = AtomicU64::new(0);
        std::thread::scope(|s| {
            for i in 0..16u64 {
                let (budget, peak, alone) = (&budget, &peak, &alone);
                s.spawn(move || {
                    let want = if i == 7 { 250 } else { 10 + i * 3 };
                    let r = budget.reserve(want);
                    let now = budget.in_use();
                    if want > 100 {
                        alone.store(now, Ordering::SeqCst);
                    } else {
                        peak.fetch_max(now, Ordering::SeqCst);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    drop(r);
                });
            }
        });
        assert!(peak.load(Ordering::SeqCst) <= 100);
        assert_eq!(alone.load(Ordering::SeqCst), 250, "ran beside another job");
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn estimates_grow_with_the_larger_file() {
        assert!(estimate(Some(1 << 20), 50 << 20) > 500 << 20);
        assert!(estimate(None, 50 << 20) < estimate(Some(50 << 20), 50 << 20));
    }
}
