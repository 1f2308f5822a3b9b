//! The binary plan (`DRPLANB1`, FORMAT.md §7.2): a plan (§7) for a device that holds both
//! manifests of the pair, with every content address replaced by its index among the
//! manifest's contents sorted by address. A device on a release asks for it
//! (`?encoding=binary`) because it is a twentieth of the JSON plan's size (corpus trees/small,
//! 3,038 items: 645 kB of JSON, about 20 kB here), and the JSON plan stays for devices that
//! do not ask.
//!
//! Decoding trusts nothing: every count is bounded by the manifests', every index must lie
//! inside its manifest's contents, targets must rise, and the names must be the pair's.

use std::io::Read;

use crate::error::Error;
use crate::hash::Hash;
use crate::manifest::Manifest;
use crate::plan::{Fetch, PackRef, Plan, PlanItem};
use crate::wire::{put_bytes, put_varint, Reader, WireError};

/// The first 8 bytes of a binary plan (a JSON plan starts with `{`).
pub const BINARY_PLAN_MAGIC: &[u8; 8] = b"DRPLANB1";

/// The zstd level the body is compressed at.
const LEVEL: i32 = 19;

/// Item tag bits: the fetch is a delta (else the object), the item is in a pack, the whole
/// object is offered beside the delta (`object_bytes`).
const TAG_DELTA: u8 = 1;
const TAG_PACK: u8 = 2;
const TAG_OBJECT: u8 = 4;

/// A manifest's distinct file contents, sorted by address, with their sizes: what the
/// indexes of a binary plan point into.
pub fn sorted_contents(m: &Manifest) -> Vec<(Hash, u64)> {
    let mut v: Vec<(Hash, u64)> = m.contents().into_iter().collect();
    v.sort_unstable_by_key(|(h, _)| *h);
    v
}

fn index_of(sorted: &[(Hash, u64)], h: &Hash) -> Option<usize> {
    sorted.binary_search_by_key(h, |(k, _)| *k).ok()
}

/// Encodes `plan`, the plan from `from` (a device's running release, or nothing) to `to`.
/// Every item's target must be a content of `to` and every delta's source one of `from`:
/// [`crate::compute_plan`]'s plans are.
pub fn encode(plan: &Plan, from: Option<&Manifest>, to: &Manifest) -> Result<Vec<u8>, Error> {
    let bad = |reason: String| malformed(plan.from.as_deref(), &plan.to, reason);
    let targets = sorted_contents(to);
    let sources = from.map(sorted_contents).unwrap_or_default();
    let mut body = Vec::with_capacity(64 + plan.items.len() * 8);
    put_bytes(&mut body, plan.product.as_bytes());
    put_bytes(&mut body, plan.from.as_deref().unwrap_or("").as_bytes());
    put_bytes(&mut body, plan.to.as_bytes());
    put_varint(&mut body, plan.packs.len() as u64);
    for p in &plan.packs {
        body.extend_from_slice(&p.hash.0);
        put_varint(&mut body, p.bytes);
    }
    put_varint(&mut body, plan.items.len() as u64);
    let mut next = 0usize;
    for item in &plan.items {
        let t = index_of(&targets, &item.target)
            .filter(|t| *t >= next)
            .ok_or_else(|| {
                bad(format!(
                    "item {} is not a content of {} after the item before it",
                    item.target, plan.to
                ))
            })?;
        put_varint(&mut body, (t - next) as u64);
        next = t + 1;
        let mut tag = 0;
        if matches!(item.fetch, Fetch::Delta { .. }) {
            tag |= TAG_DELTA;
        }
        if item.pack.is_some() {
            tag |= TAG_PACK;
        }
        if item.object_bytes.is_some() {
            tag |= TAG_OBJECT;
        }
        body.push(tag);
        if let Fetch::Delta { source, .. } = &item.fetch {
            let s = index_of(&sources, source).ok_or_else(|| {
                bad(format!(
                    "the delta to {} is from {source}, not a content of the running release",
                    item.target
                ))
            })?;
            put_varint(&mut body, s as u64);
        }
        put_varint(&mut body, item.fetch.bytes());
        if let Some(p) = item.pack {
            put_varint(&mut body, p as u64);
        }
        if let Some(b) = item.object_bytes {
            put_varint(&mut body, b);
        }
    }
    put_varint(&mut body, plan.download_bytes);
    let frame = zstd::bulk::compress(&body, LEVEL).map_err(|e| bad(e.to_string()))?;
    let mut out = BINARY_PLAN_MAGIC.to_vec();
    out.extend_from_slice(&frame);
    Ok(out)
}

/// The most bytes the body of a binary plan for `to` may decompress to: the names, then per
/// pack and per item their largest encodings (a pack is used by at least one item).
fn body_bound(targets: usize) -> u64 {
    let items = targets as u64;
    3 * 75 + 2 * 10 + items * (32 + 10) + items * (10 + 1 + 10 + 10 + 10 + 10)
}

/// Decodes a binary plan from `from` to `to`, the verified manifests of the device's running
/// release (or none) and of the release it moves to. Sizes come from `to`.
pub fn decode(bytes: &[u8], from: Option<&Manifest>, to: &Manifest) -> Result<Plan, Error> {
    let bad = |reason: String| malformed(from.map(|m| m.version.as_str()), &to.version, reason);
    let frame = bytes
        .strip_prefix(BINARY_PLAN_MAGIC.as_slice())
        .ok_or_else(|| bad("does not start with DRPLANB1".into()))?;
    let targets = sorted_contents(to);
    let sources = from.map(sorted_contents).unwrap_or_default();
    let bound = body_bound(targets.len());
    let mut body = Vec::new();
    zstd::stream::read::Decoder::new(frame)
        .and_then(|d| d.take(bound + 1).read_to_end(&mut body))
        .map_err(|e| bad(format!("body does not decompress: {e}")))?;
    if body.len() as u64 > bound {
        return Err(bad(format!(
            "body is over {bound} bytes, the most a plan of {} contents takes",
            targets.len()
        )));
    }
    let wire = |e: WireError| bad(e.to_string());
    let mut r = Reader::new(&body);
    let mut name = |what: &str| -> Result<String, Error> {
        let b = r.bytes(64, what).map_err(wire)?;
        String::from_utf8(b.to_vec()).map_err(|_| bad(format!("{what} is not UTF-8")))
    };
    let product = name("product")?;
    let from_name = name("from")?;
    let to_name = name("to")?;
    let want_from = from.map_or("", |m| m.version.as_str());
    if product != to.product || from_name != want_from || to_name != to.version {
        return Err(bad(format!(
            "it is the plan of {product} {from_name:?} -> {to_name:?}, not of {} {want_from:?} -> {:?}",
            to.product, to.version
        )));
    }
    let pack_count = r
        .varint_max(targets.len() as u64, "pack count")
        .map_err(wire)? as usize;
    let mut packs = Vec::with_capacity(pack_count);
    for _ in 0..pack_count {
        let hash = Hash(r.array("pack hash").map_err(wire)?);
        let bytes = r.varint("pack bytes").map_err(wire)?;
        packs.push(PackRef { hash, bytes });
    }
    let count = r
        .varint_max(targets.len() as u64, "item count")
        .map_err(wire)? as usize;
    let mut items = Vec::with_capacity(count);
    let mut next = 0u64;
    for _ in 0..count {
        let gap = r.varint("target gap").map_err(wire)?;
        let t = next
            .checked_add(gap)
            .filter(|t| *t < targets.len() as u64)
            .ok_or_else(|| {
                bad(format!(
                    "an item's target is past {} contents",
                    targets.len()
                ))
            })?;
        next = t + 1;
        let (target, size) = targets[t as usize];
        let tag = r.u8("item tag").map_err(wire)?;
        if tag & !(TAG_DELTA | TAG_PACK | TAG_OBJECT) != 0 {
            return Err(bad(format!("item {target} has the unknown tag {tag}")));
        }
        let source = if tag & TAG_DELTA != 0 {
            let s = r
                .varint_max(sources.len().saturating_sub(1) as u64, "source index")
                .map_err(wire)?;
            Some(sources.get(s as usize).map(|(h, _)| *h).ok_or_else(|| {
                bad(format!(
                    "item {target} is a delta, and the device runs nothing"
                ))
            })?)
        } else {
            None
        };
        let bytes = r.varint("item bytes").map_err(wire)?;
        let pack = if tag & TAG_PACK != 0 {
            let p = r
                .varint_max(pack_count.saturating_sub(1) as u64, "pack index")
                .map_err(wire)?;
            Some(p as usize)
                .filter(|p| *p < pack_count)
                .ok_or_else(|| bad(format!("item {target} names a pack, and the plan has none")))?;
            Some(p as usize)
        } else {
            None
        };
        let object_bytes = if tag & TAG_OBJECT != 0 {
            Some(r.varint("object bytes").map_err(wire)?)
        } else {
            None
        };
        let fetch = match source {
            Some(source) => Fetch::Delta { source, bytes },
            None => Fetch::Object { bytes },
        };
        items.push(PlanItem {
            target,
            size,
            fetch,
            pack,
            object_bytes,
        });
    }
    let download_bytes = r.varint("download bytes").map_err(wire)?;
    if !r.is_empty() {
        return Err(bad(format!(
            "{} bytes after the download bytes",
            body.len() - r.offset()
        )));
    }
    Ok(Plan {
        product,
        from: from.map(|m| m.version.clone()),
        to: to_name,
        items,
        packs,
        download_bytes,
    })
}

fn malformed(from: Option<&str>, to: &str, reason: String) -> Error {
    Error::PlanMalformed {
        what: format!("{} -> {to}", from.unwrap_or("nothing")),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{Entry, Kind, Meta};
    use crate::path::EntryPath;

    fn manifest(version: &str, files: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            product: "demo".into(),
            version: version.into(),
            created: 1,
            shared: Vec::new(),
            entries: files
                .iter()
                .map(|(p, data)| Entry::Node {
                    path: EntryPath::new(*p).unwrap(),
                    kind: Kind::File {
                        size: data.len() as u64,
                        hash: Hash::of(data),
                    },
                    meta: Meta::default(),
                })
                .collect(),
        }
    }

    fn pair() -> (Manifest, Manifest, Plan) {
        let a = manifest("1.0", &[("a", b"one"), ("b", b"two"), ("c", b"three")]);
        let b = manifest(
            "1.1",
            &[("a", b"one!"), ("b", b"two"), ("c", b"three?"), ("d", b"4")],
        );
        let mut plan = crate::compute_plan(
            Some(&a),
            &b,
            |_| Some(20),
            |t| {
                if *t == Hash::of(b"one!") {
                    vec![(Hash::of(b"one"), 9)]
                } else if *t == Hash::of(b"three?") {
                    vec![(Hash::of(b"three"), 7)]
                } else {
                    vec![]
                }
            },
        )
        .unwrap();
        plan.packs.push(PackRef {
            hash: Hash::of(b"pack"),
            bytes: 12,
        });
        plan.items[0].pack = Some(0);
        crate::plan::offer_objects(&mut plan, |_, _| true, |_| Some(20));
        assert_eq!(
            plan.items
                .iter()
                .filter(|i| i.object_bytes == Some(20))
                .count(),
            1,
            "the delta fetched alone, not the packed one: {plan:?}"
        );
        (a, b, plan)
    }

    #[test]
    fn a_binary_plan_decodes_to_the_plan_it_encodes() {
        let (a, b, plan) = pair();
        assert!(plan
            .items
            .iter()
            .any(|i| matches!(i.fetch, Fetch::Delta { .. })));
        let bytes = encode(&plan, Some(&a), &b).unwrap();
        assert!(bytes.starts_with(BINARY_PLAN_MAGIC));
        assert_eq!(decode(&bytes, Some(&a), &b).unwrap(), plan);
        // From nothing: objects only.
        let fresh = crate::compute_plan(None, &b, |_| Some(20), |_| vec![]).unwrap();
        let bytes = encode(&fresh, None, &b).unwrap();
        assert_eq!(decode(&bytes, None, &b).unwrap(), fresh);
        let json = serde_json::to_vec(&fresh).unwrap();
        assert!(
            bytes.len() * 4 < json.len(),
            "{} vs {}",
            bytes.len(),
            json.len()
        );
    }

    #[test]
    fn a_binary_plan_for_another_pair_or_damaged_says_what_is_wrong() {
        let (a, b, plan) = pair();
        let bytes = encode(&plan, Some(&a), &b).unwrap();
        // Read against the wrong running release: the names say so.
        let other = manifest("0.9", &[("a", b"one")]);
        let e = decode(&bytes, Some(&other), &b).unwrap_err().to_string();
        assert!(e.contains("0.9 -> 1.1") && e.contains("not of demo"), "{e}");
        // Every cut is an error, never a panic or a different plan.
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n], Some(&a), &b).is_err(), "cut at {n}");
        }
        // Hostile bodies: a target past the contents, a delta with nothing running, a pack
        // index past the packs, an unknown tag, trailing bytes.
        let body = |f: &dyn Fn(&mut Vec<u8>)| {
            let mut v = Vec::new();
            put_bytes(&mut v, b"demo");
            put_bytes(&mut v, b"1.0");
            put_bytes(&mut v, b"1.1");
            f(&mut v);
            let mut out = BINARY_PLAN_MAGIC.to_vec();
            out.extend(zstd::bulk::compress(&v, 3).unwrap());
            decode(&out, Some(&a), &b).unwrap_err().to_string()
        };
        let e = body(&|v| v.extend([0, 1, 9, 0, 3, 0]));
        assert!(e.contains("target is past 4 contents"), "{e}");
        let e = body(&|v| v.extend([0, 1, 0, 1, 9, 3, 0]));
        assert!(e.contains("source index"), "{e}");
        let e = body(&|v| v.extend([0, 1, 0, 2, 3, 0, 0]));
        assert!(e.contains("pack index") || e.contains("has none"), "{e}");
        let e = body(&|v| v.extend([0, 1, 0, 8, 3, 0]));
        assert!(e.contains("unknown tag 8"), "{e}");
        let e = body(&|v| v.extend([0, 0, 0, 7]));
        assert!(e.contains("1 bytes after"), "{e}");
        let e = decode(b"{\"product\":1}", Some(&a), &b)
            .unwrap_err()
            .to_string();
        assert!(e.contains("DRPLANB1"), "{e}");
    }
}
