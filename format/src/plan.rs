//! Download plans: for a pair of releases, which content a device must fetch and how
//! (a whole object or a delta from content it already holds), with the byte counts.
//!
//! The server computes a plan when a release is published and on demand; the publisher
//! computes the same plan for its summary with the same function, so the figure it prints is
//! the figure devices download.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::hash::Hash;
use super::manifest::Manifest;
use super::pack::EntryKind;
use crate::error::Error;

/// How to get one content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Fetch {
    /// The whole object, zstd-compressed, `bytes` long.
    Object { bytes: u64 },
    /// A delta from `source` (content of the old release), `bytes` long.
    Delta { source: Hash, bytes: u64 },
}

impl Fetch {
    pub fn bytes(&self) -> u64 {
        match self {
            Fetch::Object { bytes } | Fetch::Delta { bytes, .. } => *bytes,
        }
    }
}

/// One content the device needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanItem {
    pub target: Hash,
    /// Uncompressed size of the content.
    pub size: u64,
    pub fetch: Fetch,
    /// The pack (index into [`Plan::packs`]) that holds this fetch; the item can still be
    /// fetched alone, for `fetch.bytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<usize>,
    /// The whole object's bytes, offered beside a delta that is slow to rebuild on the
    /// device (an `xz` delta compresses the content again: [`offer_objects`]). A device
    /// whose policy prefers time over bytes fetches the object instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_bytes: Option<u64>,
}

/// A pack a plan uses (§7.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackRef {
    pub hash: Hash,
    pub bytes: u64,
}

/// A stored pack and what its index holds, for [`attach_packs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackIndex {
    pub hash: Hash,
    pub bytes: u64,
    pub entries: Vec<(EntryKind, Hash)>,
}

/// Everything a device on `from` needs to build `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub product: String,
    pub from: Option<String>,
    pub to: String,
    /// Sorted by target hash.
    pub items: Vec<PlanItem>,
    /// Packs holding some of the items' fetches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub packs: Vec<PackRef>,
    /// Sum of the packs' bytes and of the bytes of the items no pack holds.
    pub download_bytes: u64,
}

impl Plan {
    /// What each item costs, in item order: its `bytes` when fetched alone; for an item in a
    /// pack, a share of the pack in proportion to its `bytes` alone (the remainder of the
    /// division goes to the pack's first item). The costs add up to `download_bytes`.
    pub fn item_costs(&self) -> Vec<u64> {
        let mut alone = vec![0u64; self.packs.len()];
        for i in &self.items {
            if let Some(p) = i.pack.filter(|p| *p < alone.len()) {
                alone[p] += i.fetch.bytes();
            }
        }
        let mut given = vec![0u64; self.packs.len()];
        let mut first = vec![None; self.packs.len()];
        let mut costs: Vec<u64> = self
            .items
            .iter()
            .enumerate()
            .map(|(n, i)| match i.pack.filter(|p| *p < alone.len()) {
                None => i.fetch.bytes(),
                Some(p) => {
                    let share = (u128::from(self.packs[p].bytes) * u128::from(i.fetch.bytes())
                        / u128::from(alone[p].max(1))) as u64;
                    given[p] += share;
                    first[p].get_or_insert(n);
                    share
                }
            })
            .collect();
        for (p, f) in first.iter().enumerate() {
            if let Some(n) = f {
                costs[*n] += self.packs[p].bytes - given[p];
            }
        }
        costs
    }

    /// The packs' bytes and those of the items no pack holds: what `download_bytes` says.
    pub fn total(&self) -> u64 {
        let alone: u64 = self
            .items
            .iter()
            .filter(|i| i.pack.is_none())
            .map(|i| i.fetch.bytes())
            .sum();
        alone + self.packs.iter().map(|p| p.bytes).sum::<u64>()
    }
}

/// Whether a pack entry gives what a plan item fetches: an object entry for an object, a
/// delta entry for a delta.
pub fn entry_matches(kind: EntryKind, fetch: &Fetch) -> bool {
    matches!(
        (kind, fetch),
        (EntryKind::Object, Fetch::Object { .. }) | (EntryKind::Delta(_), Fetch::Delta { .. })
    )
}

/// Lets `plan` fetch items through `packs`, in order. A pack is used only when every entry
/// matches an item no earlier pack holds, and it is smaller than those items fetched alone;
/// otherwise it is left out (a plan recomputed after other deltas were stored may no longer
/// fetch what a pack holds).
pub fn attach_packs(plan: &mut Plan, packs: &[PackIndex]) {
    let at: HashMap<Hash, usize> = plan
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| (item.target, i))
        .collect();
    for p in packs {
        let mut held = Vec::with_capacity(p.entries.len());
        let mut alone = 0u64;
        let mut seen = HashSet::new();
        let usable = p.entries.iter().all(|(kind, target)| {
            let Some(&i) = at.get(target) else {
                return false;
            };
            let item = &plan.items[i];
            if item.pack.is_some() || !seen.insert(i) || !entry_matches(*kind, &item.fetch) {
                return false;
            }
            held.push(i);
            alone += item.fetch.bytes();
            true
        });
        if !usable || held.is_empty() || p.bytes >= alone {
            continue;
        }
        let n = plan.packs.len();
        for i in held {
            plan.items[i].pack = Some(n);
        }
        plan.packs.push(PackRef {
            hash: p.hash,
            bytes: p.bytes,
        });
    }
    plan.download_bytes = plan.total();
}

/// Offers the whole object beside every delta of `plan` fetched alone that `slow` says is
/// slow to rebuild (its source and target): the object's stored size from `object_bytes`
/// goes in the item's `object_bytes`. `download_bytes` stays the fewest bytes.
pub fn offer_objects(
    plan: &mut Plan,
    slow: impl Fn(&Hash, &Hash) -> bool,
    object_bytes: impl Fn(&Hash) -> Option<u64>,
) {
    for item in &mut plan.items {
        if let (Fetch::Delta { source, .. }, None) = (&item.fetch, item.pack) {
            if slow(source, &item.target) {
                item.object_bytes = object_bytes(&item.target);
            }
        }
    }
}

/// Computes the cheapest plan from `from` (or from nothing) to `to`.
///
/// `object_bytes` gives the stored size of a whole object; `deltas_to` lists the stored
/// deltas that produce a target, as (source, bytes).
pub fn compute_plan(
    from: Option<&Manifest>,
    to: &Manifest,
    object_bytes: impl Fn(&Hash) -> Option<u64>,
    deltas_to: impl Fn(&Hash) -> Vec<(Hash, u64)>,
) -> Result<Plan, Error> {
    let have: HashMap<Hash, u64> = from.map(Manifest::contents).unwrap_or_default();
    let need: BTreeMap<Hash, u64> = to
        .contents()
        .into_iter()
        .filter(|(h, _)| !have.contains_key(h))
        .collect();
    let mut items = Vec::with_capacity(need.len());
    for (target, size) in need {
        let object = object_bytes(&target).ok_or(Error::MissingObject(target))?;
        let mut fetch = Fetch::Object { bytes: object };
        for (source, bytes) in deltas_to(&target) {
            if have.contains_key(&source) && bytes < fetch.bytes() {
                fetch = Fetch::Delta { source, bytes };
            }
        }
        items.push(PlanItem {
            target,
            size,
            fetch,
            pack: None,
            object_bytes: None,
        });
    }
    let mut plan = Plan {
        product: to.product.clone(),
        from: from.map(|m| m.version.clone()),
        to: to.version.clone(),
        items,
        packs: Vec::new(),
        download_bytes: 0,
    };
    plan.download_bytes = plan.total();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Entry, Kind, Meta};
    use crate::path::EntryPath;

    fn release(version: &str, files: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            product: "p".into(),
            version: version.into(),
            created: 0,
            shared: vec![],
            entries: files
                .iter()
                .map(|(p, c)| Entry::Node {
                    path: EntryPath::new(*p).unwrap(),
                    kind: Kind::File {
                        size: c.len() as u64,
                        hash: Hash::of(c),
                    },
                    meta: Meta::default(),
                })
                .collect(),
        }
    }

    #[test]
    fn picks_smallest_usable_and_skips_held_content() {
        let v1 = release("1", &[("a", b"same"), ("b", b"old")]);
        let v2 = release("2", &[("a", b"same"), ("b", b"new"), ("c", b"fresh")]);
        let (old, new, fresh) = (Hash::of(b"old"), Hash::of(b"new"), Hash::of(b"fresh"));
        let stranger = Hash::of(b"not on the device");
        let plan = compute_plan(
            Some(&v1),
            &v2,
            |_| Some(100),
            |t| {
                if *t == new {
                    vec![(stranger, 1), (old, 40)]
                } else {
                    vec![]
                }
            },
        )
        .unwrap();
        assert_eq!(plan.items.len(), 2);
        let b = plan.items.iter().find(|i| i.target == new).unwrap();
        assert_eq!(
            b.fetch,
            Fetch::Delta {
                source: old,
                bytes: 40
            }
        );
        let c = plan.items.iter().find(|i| i.target == fresh).unwrap();
        assert_eq!(c.fetch, Fetch::Object { bytes: 100 });
        assert_eq!(plan.download_bytes, 140);
        assert!(compute_plan(None, &v2, |_| None, |_| vec![]).is_err());
    }

    #[test]
    fn packs_attach_only_when_they_match_and_save() {
        let v1 = release("1", &[("b", b"old")]);
        let v2 = release("2", &[("b", b"new"), ("c", b"fresh"), ("d", b"more")]);
        let (old, new, fresh, more) = (
            Hash::of(b"old"),
            Hash::of(b"new"),
            Hash::of(b"fresh"),
            Hash::of(b"more"),
        );
        let base = compute_plan(
            Some(&v1),
            &v2,
            |_| Some(100),
            |t| if *t == new { vec![(old, 40)] } else { vec![] },
        )
        .unwrap();
        assert_eq!(base.download_bytes, 240);
        let pack = |bytes, entries: Vec<(EntryKind, Hash)>| PackIndex {
            hash: Hash::of(format!("{entries:?}{bytes}").as_bytes()),
            bytes,
            entries,
        };
        let delta = EntryKind::Delta(crate::Method::BsdiffZstd);
        // An object entry for what the plan fetches as a delta: not used.
        let wrong_kind = pack(10, vec![(EntryKind::Object, new)]);
        // An entry for content the plan does not need: not used.
        let stranger = pack(10, vec![(EntryKind::Object, old)]);
        // Not smaller than its two items alone (140): not used.
        let big = pack(140, vec![(delta, new), (EntryKind::Object, fresh)]);
        let good = pack(120, vec![(delta, new), (EntryKind::Object, fresh)]);
        // Holds an item the first pack took: not used.
        let overlap = pack(
            50,
            vec![(EntryKind::Object, fresh), (EntryKind::Object, more)],
        );
        let mut plan = base.clone();
        attach_packs(
            &mut plan,
            &[wrong_kind, stranger, big, good.clone(), overlap],
        );
        assert_eq!(
            plan.packs,
            vec![PackRef {
                hash: good.hash,
                bytes: 120
            }]
        );
        assert_eq!(plan.download_bytes, 120 + 100);
        // Shares of the pack: 40 and 100 alone make 120 packed (34 and 85, and the byte of
        // remainder to the first), and the object outside the pack costs its 100.
        let costs = plan.item_costs();
        assert_eq!(costs.iter().sum::<u64>(), plan.download_bytes);
        for (item, cost) in plan.items.iter().zip(&costs) {
            let want = match (item.target == new, item.target == fresh) {
                (true, _) => 34..=35,
                (_, true) => 85..=86,
                _ => 100..=100,
            };
            assert!(want.contains(cost), "{item:?} costs {cost}");
        }
        let packed: Vec<_> = plan
            .items
            .iter()
            .filter(|i| i.pack == Some(0))
            .map(|i| i.target)
            .collect();
        assert_eq!(packed.len(), 2);
        assert!(packed.contains(&new) && packed.contains(&fresh));
        // The JSON of a plan without packs is what it was before packs existed.
        let json = serde_json::to_string(&base).unwrap();
        assert!(!json.contains("pack"), "{json}");
        let back: Plan = serde_json::from_str(&serde_json::to_string(&plan).unwrap()).unwrap();
        assert_eq!(back, plan);
    }
}
