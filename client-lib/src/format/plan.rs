//! Download plans: for a pair of releases, which content a device must fetch and how
//! (a whole object or a delta from content it already holds), with the byte counts.
//!
//! The server computes a plan when a release is published and on demand; the publisher
//! computes the same plan for its summary with the same function, so the figure it prints is
//! the figure devices download.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::hash::Hash;
use super::manifest::Manifest;
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
}

/// Everything a device on `from` needs to build `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub product: String,
    pub from: Option<String>,
    pub to: String,
    /// Sorted by target hash.
    pub items: Vec<PlanItem>,
    /// Sum of the items' bytes.
    pub download_bytes: u64,
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
        });
    }
    Ok(Plan {
        product: to.product.clone(),
        from: from.map(|m| m.version.clone()),
        to: to.version.clone(),
        download_bytes: items.iter().map(|i| i.fetch.bytes()).sum(),
        items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::manifest::{Entry, Kind, Meta};
    use crate::format::path::EntryPath;

    fn release(version: &str, files: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            product: "p".into(),
            version: version.into(),
            created: 0,
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
}
