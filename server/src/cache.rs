//! A bounded map for the fleet's read-mostly caches (products, channels, plan sizes): reads
//! take a shared lock and one hash lookup, as the unbounded maps it replaced did, and an
//! insert into a full map first drops the entries older than the lifetime, then, if none
//! were, an arbitrary one. Only what exists is ever inserted (callers do not cache misses),
//! so the capacity bounds what a client asking for invented names can make it hold.
//!
//! An entry past its lifetime is not dropped at once: for one more lifetime, [`Bounded::lookup`]
//! hands it to every caller but one, which reads the state again. Without this, every check
//! in flight when the product's entry expired read it from the database at once (256
//! connections: hundreds of queries, each new copy a new answer to sign), which cost the
//! load benchmark a tenth of the server's CPU and most of its p99 latency.
//!
//! It replaced moka's concurrent cache on the update-check path (three reads a check):
//! `bench/load.sh` answered 68,855 and 71,398 checks/s with moka, 73,105 with this map
//! (nginx, in the same runs: 121,118, 126,333, 117,774).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::RwLock;

/// Values stamped with the time (milliseconds) they were read.
pub struct Bounded<K, V> {
    map: RwLock<HashMap<K, Entry<V>>>,
    capacity: usize,
    ttl_ms: i64,
}

struct Entry<V> {
    at: i64,
    /// Whether a caller took on reading this entry's state again ([`Bounded::lookup`]).
    claimed: AtomicBool,
    value: V,
}

/// What [`Bounded::lookup`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<V> {
    /// A value to use: fresh, or past its lifetime while another caller reads it again.
    Hit(V),
    /// Nothing usable, or a value past its lifetime that this caller is to read again (and
    /// [`Bounded::insert`]).
    Read,
}

impl<K: Hash + Eq + Clone, V: Clone> Bounded<K, V> {
    pub fn new(capacity: u64, ttl_ms: i64) -> Self {
        Bounded {
            map: RwLock::default(),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX).max(1),
            ttl_ms,
        }
    }

    /// The value for `k` if it was stored less than the lifetime before `now_ms`.
    pub fn get<Q>(&self, k: &Q, now_ms: i64) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        match map.get(k) {
            Some(e) if self.within(e.at, now_ms, 1) => Some(e.value.clone()),
            _ => None,
        }
    }

    /// Whether an entry stored at `at` is younger than `lifetimes` lifetimes at `now_ms`.
    fn within(&self, at: i64, now_ms: i64, lifetimes: i64) -> bool {
        (0..self.ttl_ms.saturating_mul(lifetimes)).contains(&now_ms.saturating_sub(at))
    }

    /// [`Bounded::get`], except that an entry past its lifetime (but not past twice it) is
    /// still a hit for every caller but one: the first to find it so is told to read the
    /// state again. Should that caller never insert (its query failed, its request was
    /// dropped), the entry is a miss for all once twice its lifetime has passed.
    pub fn lookup<Q>(&self, k: &Q, now_ms: i64) -> Lookup<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        let Some(e) = map.get(k) else {
            return Lookup::Read;
        };
        if self.within(e.at, now_ms, 1) {
            return Lookup::Hit(e.value.clone());
        }
        if !self.within(e.at, now_ms, 2) {
            return Lookup::Read;
        }
        if e.claimed.swap(true, Ordering::Relaxed) {
            Lookup::Hit(e.value.clone())
        } else {
            Lookup::Read
        }
    }

    pub fn insert(&self, k: K, v: V, now_ms: i64) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= self.capacity && !map.contains_key(&k) {
            map.retain(|_, e| self.within(e.at, now_ms, 1));
            if map.len() >= self.capacity {
                if let Some(old) = map.keys().next().cloned() {
                    map.remove(&old);
                }
            }
        }
        map.insert(
            k,
            Entry {
                at: now_ms,
                claimed: AtomicBool::new(false),
                value: v,
            },
        );
    }

    pub fn remove<Q>(&self, k: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(k);
    }

    /// Drops the entries `f` names.
    pub fn remove_if(&self, f: impl Fn(&K) -> bool) {
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| !f(k));
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_at_most_its_capacity_and_answers_only_fresh_values() {
        let c: Bounded<String, u32> = Bounded::new(3, 1000);
        for i in 0..10 {
            c.insert(format!("k{i}"), i, 0);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("k9", 999), Some(9));
        assert_eq!(c.get("k9", 1000), None, "stale at its lifetime");
        // Stale entries make room before a fresh one is dropped.
        c.insert("new".into(), 1, 5000);
        assert_eq!(c.len(), 1);
        c.insert("a".into(), 2, 5000);
        c.remove("new");
        assert_eq!(c.get("new", 5000), None);
        c.remove_if(|k| k == "a");
        assert!(c.is_empty());
    }

    #[test]
    fn one_caller_reads_an_expired_entry_again_while_the_others_keep_it() {
        let c: Bounded<&str, u32> = Bounded::new(3, 1000);
        assert_eq!(c.lookup("p", 0), Lookup::Read, "a miss");
        assert_eq!(c.lookup("p", 0), Lookup::Read, "every caller reads a miss");
        c.insert("p", 1, 0);
        assert_eq!(c.lookup("p", 999), Lookup::Hit(1));
        // Expired: the first caller reads, the others keep the value meanwhile.
        assert_eq!(c.lookup("p", 1000), Lookup::Read);
        assert_eq!(c.lookup("p", 1001), Lookup::Hit(1));
        assert_eq!(c.lookup("p", 1999), Lookup::Hit(1));
        assert_eq!(c.get("p", 1001), None, "get answers fresh values only");
        // Past twice the lifetime it is a miss for everyone.
        assert_eq!(c.lookup("p", 2000), Lookup::Read);
        assert_eq!(c.lookup("p", 2000), Lookup::Read);
        // The reader inserts: fresh again, for everyone.
        c.insert("p", 2, 1500);
        assert_eq!(c.lookup("p", 1600), Lookup::Hit(2));
        // A reader that never inserts: a miss for all at twice the lifetime.
        assert_eq!(c.lookup("p", 2500), Lookup::Read);
        assert_eq!(c.lookup("p", 3000), Lookup::Hit(2));
        assert_eq!(c.lookup("p", 3499), Lookup::Hit(2));
        assert_eq!(c.lookup("p", 3500), Lookup::Read);
        assert_eq!(c.lookup("p", 3500), Lookup::Read);
    }
}
