//! Deltas for any pair of releases. The publisher uploads deltas from the release it names
//! as the previous one; a device several versions behind would otherwise fetch every content
//! changed since its own release whole. When the server computes a plan for a pair, it
//! starts this job in the background: for each content the plan fetches whole while the
//! device's release holds a file at the same path, it builds a delta from that file with the
//! publisher's engine (every candidate is applied back before it counts; methods the target
//! release's publisher skipped are not tried), stores the smallest if it beats the object,
//! and then recomputes and saves the plan. Devices asking meanwhile get the plan with whole
//! objects.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::Mutex;

use deltaroot_client::format::{delta_path, object_path, Entry, Fetch, Hash, Manifest};
use deltaroot_publisher::engine::{candidates, EngineOptions, MethodSet};

use crate::db::ReleaseRow;
use crate::error::{Error, Result};
use crate::App;

/// Contents larger than this are not diffed on the server (memory: old, new and the diff).
const MAX_DIFF_BYTES: u64 = 256 << 20;

/// Pairs whose deltas are being built on this replica.
#[derive(Default)]
pub struct Builds {
    running: Mutex<HashSet<(i64, i64)>>,
    done: tokio::sync::Notify,
}

impl Builds {
    /// Waits until no build runs on this replica (for tests and shutdown).
    pub async fn idle(&self) {
        loop {
            let notified = self.done.notified();
            if self.running.lock().expect("builds lock").is_empty() {
                return;
            }
            notified.await;
        }
    }
}

/// The (source, target) pairs worth a delta: contents `plan` fetches whole whose path in
/// `to` holds another content in `from`.
pub fn wanted(from: &Manifest, to: &Manifest, whole: &HashSet<Hash>) -> Vec<(Hash, Hash, u64)> {
    let old: HashMap<&[u8], (Hash, u64)> = from
        .entries
        .iter()
        .filter_map(|e| e.file().map(|f| (e.path().as_bytes(), f)))
        .collect();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for e in &to.entries {
        let Some((hash, size)) = e.file() else {
            continue;
        };
        if !whole.contains(&hash) || size > MAX_DIFF_BYTES {
            continue;
        }
        if let Some((src, src_size)) = old.get(e.path().as_bytes()) {
            if *src != hash && *src_size <= MAX_DIFF_BYTES && seen.insert(hash) {
                out.push((*src, hash, size));
            }
        }
    }
    out
}

/// Starts building the missing deltas of `from` → `to` unless that already runs here.
pub fn spawn(app: &App, product: &str, from: &ReleaseRow, to: &ReleaseRow) {
    let key = (from.id, to.id);
    if !app.builds.running.lock().expect("builds lock").insert(key) {
        return;
    }
    let (app, product, from, to) = (app.clone(), product.to_string(), from.clone(), to.clone());
    tokio::spawn(async move {
        let result = build(&app, &product, &from, &to).await;
        match result {
            Ok(n) => tracing::info!(
                product,
                from = from.version,
                to = to.version,
                deltas = n,
                "built deltas for a pair"
            ),
            Err(e) => tracing::error!(
                product,
                from = from.version,
                to = to.version,
                error = %e,
                "building deltas failed"
            ),
        }
        app.builds.running.lock().expect("builds lock").remove(&key);
        app.builds.done.notify_waiters();
    });
}

/// Decompresses a stored object, refusing more than `size` bytes of output or content that
/// does not hash to its name.
async fn content(app: &App, hash: Hash, size: u64) -> Result<Vec<u8>> {
    let rel = object_path(&hash);
    let compressed = app.store.get(&rel).await?;
    tokio::task::spawn_blocking(move || {
        let bad = |what: String| Error::Corrupt(format!("{rel}: {what}"));
        let mut dec =
            zstd::stream::read::Decoder::new(&compressed[..]).map_err(|e| bad(e.to_string()))?;
        dec.window_log_max(deltaroot_client::format::container::MAX_WINDOW_LOG)
            .map_err(|e| bad(e.to_string()))?;
        let mut out = Vec::with_capacity(size as usize);
        dec.take(size + 1)
            .read_to_end(&mut out)
            .map_err(|e| bad(e.to_string()))?;
        if out.len() as u64 != size || Hash::of(&out) != hash {
            return Err(bad("does not hold the content it is named after".into()));
        }
        Ok(out)
    })
    .await
    .map_err(|e| Error::Corrupt(e.to_string()))?
}

async fn build(app: &App, product: &str, from: &ReleaseRow, to: &ReleaseRow) -> Result<usize> {
    let from_m = crate::api::load_manifest(app, product, from).await?;
    let to_m = crate::api::load_manifest(app, product, to).await?;
    let plan = crate::api::plan_only(app, product, Some(from), to).await?;
    let whole: HashSet<Hash> = plan
        .items
        .iter()
        .filter(|i| matches!(i.fetch, Fetch::Object { .. }))
        .map(|i| i.target)
        .collect();
    let object_bytes: HashMap<Hash, u64> = plan
        .items
        .iter()
        .map(|i| (i.target, i.fetch.bytes()))
        .collect();
    let mut stored = 0;
    for (source, target, size) in wanted(from_m.manifest(), to_m.manifest(), &whole) {
        if app.db.delta_sizes(&[(source, target)]).await?[0].is_some() {
            continue;
        }
        let src_size = from_m
            .manifest()
            .entries
            .iter()
            .filter_map(Entry::file)
            .find(|(h, _)| *h == source)
            .map(|(_, s)| s)
            .unwrap_or(0);
        let old = content(app, source, src_size).await?;
        let new = content(app, target, size).await?;
        let level = app.delta_level;
        // The release's publisher chose which methods its devices get (`--skip-method`).
        let skip: MethodSet = to.skip_methods.iter().copied().collect();
        let best = tokio::task::spawn_blocking(move || {
            let opts = EngineOptions {
                level,
                skip,
                ..EngineOptions::default()
            };
            candidates(&old, &new, &opts).map(|c| c.into_iter().next())
        })
        .await
        .map_err(|e| Error::Corrupt(e.to_string()))?
        .map_err(|e| Error::Corrupt(format!("diffing {source} -> {target}: {e}")))?;
        let Some(best) = best else { continue };
        if best.bytes.len() as u64 >= object_bytes.get(&target).copied().unwrap_or(u64::MAX) {
            continue;
        }
        let len = best.bytes.len() as u64;
        app.store
            .put(&delta_path(&source, &target), best.bytes.into())
            .await?;
        app.db
            .add_delta(&source, &target, len, best.method as u8)
            .await?;
        stored += 1;
    }
    if stored > 0 {
        crate::api::recompute_plan(app, product, Some(from), to).await?;
    }
    Ok(stored)
}
