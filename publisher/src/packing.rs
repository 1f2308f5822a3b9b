//! Packing a release pair's small downloads (FORMAT.md §7.1).
//!
//! Once the plan from the old release is known, every item it fetches for at most
//! [`ITEM_MAX`] bytes is read back from the sink, unwrapped (objects and the zstd frames of
//! bsdiff and ELF deltas decompressed) and written into packs of at most [`BODIES_MAX`]
//! bytes of bodies, ordered so that alike files sit together (by kind, then by file
//! extension, then by path). Each pack is compressed as one zstd frame on its own core, and
//! kept only if it is smaller than the downloads it replaces.

use std::collections::HashMap;
use std::sync::Mutex;

use deltaroot_format::container::{decompress, unwrap_payload, unwrapped_bound};
use deltaroot_format::{
    delta_path, object_path, pack_path, DeltaHeader, EntryKind, EntryPath, Fetch, Hash, PackIndex,
    PackWriter, Plan, PlanItem,
};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::sink::Sink;
use deltaroot_engine::budget::Budget;

/// Largest download a pack takes: larger ones gain little from a shared window and are
/// better fetched (and resumed) alone.
pub const ITEM_MAX: u64 = 1 << 20;
/// Bodies per pack: one pack decompresses in a window of its own, and a device holds one
/// body at a time.
pub const BODIES_MAX: u64 = 48 << 20;
/// Window of a pack's frame (16 MiB): what a device needs to read it.
pub const WINDOW_LOG: u32 = 24;

/// What goes into packs, in the order they hold it.
fn candidates<'a>(plan: &'a Plan, path_of: &HashMap<Hash, &EntryPath>) -> Vec<&'a PlanItem> {
    let mut items: Vec<&PlanItem> = plan
        .items
        .iter()
        .filter(|i| i.fetch.bytes() <= ITEM_MAX)
        .collect();
    let key = |i: &PlanItem| {
        let path = path_of
            .get(&i.target)
            .map(|p| p.to_string())
            .unwrap_or_default();
        let ext = path
            .rsplit('/')
            .next()
            .and_then(|name| name.rsplit_once('.'))
            .map(|(_, e)| e.to_string())
            .unwrap_or_default();
        (matches!(i.fetch, Fetch::Object { .. }), ext, path)
    };
    items.sort_by_cached_key(|i| key(i));
    items
}

/// Reads one item's download back from the sink and returns what a pack holds for it.
fn body(sink: &dyn Sink, item: &PlanItem) -> Result<(EntryKind, Vec<u8>)> {
    match &item.fetch {
        Fetch::Object { .. } => {
            let rel = object_path(&item.target);
            let blob = sink.get(&rel)?;
            let out = decompress(&blob, item.size + 1).map_err(|e| Error::Encode {
                method: "pack",
                what: rel,
                reason: e.to_string(),
            })?;
            Ok((EntryKind::Object, out))
        }
        Fetch::Delta { source, .. } => {
            let blob = sink.get(&delta_path(source, &item.target))?;
            let (h, payload) = DeltaHeader::decode(&blob)?;
            let bound = unwrapped_bound(h.method, h.target_size, blob.len() as u64);
            Ok((
                EntryKind::Delta(h.method),
                unwrap_payload(&h, payload, bound)?,
            ))
        }
    }
}

/// Memory a pack takes while it is compressed, besides its bodies: zstd's tables at level 19
/// with a 16 MiB window, and the output.
const COMPRESS_MEM: u64 = 192 << 20;

/// Builds, stores and returns the packs for `plan` (those smaller than what they replace),
/// in the order a plan should try them. Bodies are read in batches on all cores; each full
/// pack is compressed on a core of its own while the next fills, within `budget`.
pub fn build(
    plan: &Plan,
    path_of: &HashMap<Hash, &EntryPath>,
    sink: &dyn Sink,
    level: i32,
    budget: &Budget,
) -> Result<Vec<PackIndex>> {
    let items = candidates(plan, path_of);
    if items.len() < 2 {
        return Ok(Vec::new());
    }
    let made: Mutex<Vec<(usize, PackIndex)>> = Mutex::new(Vec::new());
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let fail = |e: Error| {
        failed.lock().expect("not poisoned").get_or_insert(e);
    };
    rayon::scope(|scope| {
        let mut next = items.iter().peekable();
        let mut seq = 0;
        while next.peek().is_some() && failed.lock().expect("not poisoned").is_none() {
            let reservation = budget.reserve(BODIES_MAX + COMPRESS_MEM);
            let mut w = PackWriter::new();
            let mut held: Vec<&PlanItem> = Vec::new();
            while w.body_bytes() < BODIES_MAX && next.peek().is_some() {
                let batch: Vec<&PlanItem> = next.by_ref().take(64).copied().collect();
                match batch
                    .par_iter()
                    .map(|i| body(sink, i))
                    .collect::<Result<Vec<_>>>()
                {
                    Ok(bodies) => {
                        for (item, (kind, b)) in batch.iter().zip(bodies) {
                            w.push(kind, item.target, &b);
                        }
                        held.extend(batch);
                    }
                    Err(e) => {
                        fail(e);
                        return;
                    }
                }
            }
            let (made, fail) = (&made, &fail);
            scope.spawn(move |_| {
                let _reservation = reservation;
                match finish(w, &held, sink, level) {
                    Ok(Some(p)) => made.lock().expect("not poisoned").push((seq, p)),
                    Ok(None) => {}
                    Err(e) => fail(e),
                }
            });
            seq += 1;
        }
    });
    if let Some(e) = failed.into_inner().expect("not poisoned") {
        return Err(e);
    }
    let mut made = made.into_inner().expect("not poisoned");
    made.sort_by_key(|(seq, _)| *seq);
    Ok(made.into_iter().map(|(_, p)| p).collect())
}

/// Compresses one pack and stores it if it is smaller than its items fetched alone.
fn finish(
    w: PackWriter,
    held: &[&PlanItem],
    sink: &dyn Sink,
    level: i32,
) -> Result<Option<PackIndex>> {
    if w.len() < 2 {
        return Ok(None);
    }
    let alone: u64 = held.iter().map(|i| i.fetch.bytes()).sum();
    let (blob, index) = w.finish(level, WINDOW_LOG).map_err(|e| Error::Encode {
        method: "pack",
        what: format!("{} entries", held.len()),
        reason: e.to_string(),
    })?;
    let bytes = blob.len() as u64;
    tracing::debug!(entries = index.len(), bytes, alone, "pack");
    if bytes >= alone {
        return Ok(None);
    }
    let hash = Hash::of(&blob);
    sink.put(&pack_path(&hash), &blob)?;
    Ok(Some(PackIndex {
        hash,
        bytes,
        entries: index.iter().map(|e| (e.kind, e.target)).collect(),
    }))
}
