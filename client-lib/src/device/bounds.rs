//! A plan's signature (a server's answer key; a release folder's plans have none) says who
//! chose its fetches, not that they are right: before anything is downloaded, every size it
//! declares is held to the bound the signed manifest gives ([`deltaroot_format::bounds`]).
//! Every item must be a content of the manifest with the manifest's size; an object or a
//! delta is at most the object bound of that size; a pack at most the sum of its items'
//! bounds.

use deltaroot_format::bounds::{delta_bound, object_bound};
use deltaroot_format::{delta_path, object_path, pack_path, Fetch, Plan, VerifiedManifest};

use crate::error::{Error, Result};

/// Refuses `plan` if it names a content `target` does not hold, another size than the
/// manifest's, or a download larger than its bound; the error names the entry, the size
/// declared and the bound. Returns the bytes the plan downloads, added up from its checked
/// entries (its `download_bytes` is one more claim, not used).
pub(super) fn check_plan(target: &VerifiedManifest, plan: &Plan) -> Result<u64> {
    let m = target.manifest();
    let contents = m.contents();
    let version = || m.version.clone();
    let mut pack_bounds = vec![0u64; plan.packs.len()];
    for item in &plan.items {
        let entry = match &item.fetch {
            Fetch::Object { .. } => object_path(&item.target),
            Fetch::Delta { source, .. } => delta_path(source, &item.target),
        };
        let Some(&size) = contents.get(&item.target) else {
            return Err(Error::PlanEntry {
                version: version(),
                entry,
                reason: "is not a content of the signed manifest".into(),
            });
        };
        if item.size != size {
            return Err(Error::PlanEntry {
                version: version(),
                entry,
                reason: format!(
                    "declares a size of {} bytes, the signed manifest {size}",
                    item.size
                ),
            });
        }
        let bound = match item.fetch {
            Fetch::Object { .. } => object_bound(size),
            Fetch::Delta { .. } => delta_bound(size),
        };
        if item.fetch.bytes() > bound {
            return Err(Error::PlanBound {
                version: version(),
                entry,
                declared: item.fetch.bytes(),
                bound,
            });
        }
        if let Some(declared) = item.object_bytes.filter(|b| *b > object_bound(size)) {
            return Err(Error::PlanBound {
                version: version(),
                entry: object_path(&item.target),
                declared,
                bound: object_bound(size),
            });
        }
        if let Some(b) = item.pack.and_then(|p| pack_bounds.get_mut(p)) {
            *b = b.saturating_add(bound);
        }
    }
    let mut total = 0u64;
    for (pack, bound) in plan.packs.iter().zip(pack_bounds) {
        if pack.bytes > bound {
            return Err(Error::PlanBound {
                version: version(),
                entry: pack_path(&pack.hash),
                declared: pack.bytes,
                bound,
            });
        }
        total = total.saturating_add(pack.bytes);
    }
    for item in &plan.items {
        if item.pack.is_none_or(|p| p >= plan.packs.len()) {
            total = total.saturating_add(item.fetch.bytes());
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use deltaroot_format::{
        compute_plan, Entry, EntryPath, Fetch, Hash, Kind, Manifest, Meta, PackRef, SecretKey,
        VerifiedManifest,
    };

    use super::check_plan;

    fn release(contents: &[Vec<u8>]) -> VerifiedManifest {
        let entries = contents
            .iter()
            .enumerate()
            .map(|(i, c)| Entry::Node {
                path: EntryPath::new(format!("f{i}").as_bytes()).unwrap(),
                kind: Kind::File {
                    size: c.len() as u64,
                    hash: Hash::of(c),
                },
                meta: Meta::default(),
            })
            .collect();
        let m = Manifest {
            product: "demo".into(),
            version: "2".into(),
            created: 1,
            shared: vec![],
            entries,
        };
        VerifiedManifest::sign(m, &SecretKey::from_seed([3; 32]))
    }

    /// A plan of real objects (incompressible, empty, tiny), a delta one byte smaller than
    /// its object and a pack as large as its items alone is within every bound.
    #[test]
    fn honest_plans_are_within_their_bounds() {
        let mut noise = vec![0u8; 200 << 10];
        blake3::Hasher::new()
            .update(b"honest")
            .finalize_xof()
            .fill(&mut noise);
        let contents = vec![
            noise.clone(),
            Vec::new(),
            b"x".to_vec(),
            noise[..4096].to_vec(),
        ];
        let target = release(&contents);
        let objects: std::collections::HashMap<Hash, u64> = contents
            .iter()
            .map(|c| {
                (
                    Hash::of(c),
                    zstd::bulk::compress(c, 19).unwrap().len() as u64,
                )
            })
            .collect();
        let mut plan = compute_plan(
            None,
            target.manifest(),
            |h| objects.get(h).copied(),
            |_| Vec::new(),
        )
        .unwrap();
        assert_eq!(check_plan(&target, &plan).unwrap(), plan.download_bytes);
        let first = &mut plan.items[0];
        first.fetch = Fetch::Delta {
            source: Hash::of(b"old"),
            bytes: first.fetch.bytes() - 1,
        };
        let total = plan.items.iter().map(|i| i.fetch.bytes()).sum();
        plan.packs = vec![PackRef {
            hash: Hash::of(b"pack"),
            bytes: total,
        }];
        plan.items.iter_mut().for_each(|i| i.pack = Some(0));
        assert_eq!(check_plan(&target, &plan).unwrap(), total);
        plan.packs[0].bytes = u64::MAX;
        let err = check_plan(&target, &plan).unwrap_err().to_string();
        assert!(err.contains("packs/"), "{err}");
    }
}
