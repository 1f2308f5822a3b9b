//! Deltas for any pair of releases. The publisher uploads deltas from the release it names
//! as the previous one; a device several versions behind would otherwise fetch every content
//! changed since its own release whole. When the server computes a plan for a pair, it
//! starts this job in the background: for each content the plan fetches whole while the
//! device's release holds a file at the same path, it builds a delta from that file with the
//! publisher's engine (every candidate is applied back before it counts; methods the target
//! release's publisher skipped are not tried), stores the smallest if it beats the object,
//! and then recomputes and saves the plan. Devices asking meanwhile get the plan with whole
//! objects.
//!
//! Plans are public (devices fetch them without a token), so builds are bounded: only pairs
//! devices can be offered are built ([`request`]), each once per replica, at most
//! `--max-builds` at a time, and at most `--build-queue` pairs wait; past that a pair is not
//! queued now, and a later plan request queues it.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use deltaroot_engine::{candidates, EngineOptions, MethodSet};
use deltaroot_format::{object_path, Entry, Fetch, Hash, Manifest, Name};

use crate::db::{ReleaseRow, RolloutState};
use crate::error::{blocking, Error, Result};
use crate::App;

/// Contents larger than this are not diffed on the server (memory: old, new and the diff).
const MAX_DIFF_BYTES: u64 = 256 << 20;

/// Most finished pairs remembered; past this the memory is cleared (a pair asked for again
/// is then built again, which stores only the deltas still missing).
const MAX_FINISHED: usize = 1 << 16;

/// The build queue of this replica: each pair at most once, at most `max_running` building
/// at once, at most `max_queue` waiting or building.
pub struct Builds {
    max_queue: usize,
    permits: tokio::sync::Semaphore,
    state: Mutex<Queue>,
    done: tokio::sync::Notify,
    running: AtomicUsize,
    peak: AtomicUsize,
}

#[derive(Default)]
struct Queue {
    /// Waiting for a permit or building.
    pending: HashSet<(i64, i64)>,
    /// Built (or failed) since this replica started.
    finished: HashSet<(i64, i64)>,
}

impl Queue {
    fn known(&self, key: (i64, i64)) -> Option<Admission> {
        if self.finished.contains(&key) {
            Some(Admission::Finished)
        } else if self.pending.contains(&key) {
            Some(Admission::Pending)
        } else {
            None
        }
    }
}

/// What became of a request to build a pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Queued,
    /// Already waiting or building.
    Pending,
    /// Already built on this replica.
    Finished,
    /// The queue is full: not queued now.
    QueueFull,
}

impl Builds {
    pub fn new(max_running: usize, max_queue: usize) -> Builds {
        Builds {
            max_queue: max_queue.max(1),
            permits: tokio::sync::Semaphore::new(max_running.max(1)),
            state: Mutex::default(),
            done: tokio::sync::Notify::new(),
            running: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `key` would be queued now, without queueing it.
    fn known(&self, key: (i64, i64)) -> Option<Admission> {
        self.queue().known(key)
    }

    /// Queues `key` unless it is pending, finished or the queue is full.
    pub fn admit(&self, key: (i64, i64)) -> Admission {
        let mut q = self.queue();
        if let Some(a) = q.known(key) {
            a
        } else if q.pending.len() >= self.max_queue {
            Admission::QueueFull
        } else {
            q.pending.insert(key);
            Admission::Queued
        }
    }

    fn finish(&self, key: (i64, i64)) {
        let mut q = self.queue();
        q.pending.remove(&key);
        if q.finished.len() >= MAX_FINISHED {
            q.finished.clear();
        }
        q.finished.insert(key);
        drop(q);
        self.done.notify_waiters();
    }

    /// Waits until no build is queued or running on this replica (for tests and shutdown).
    pub async fn idle(&self) {
        loop {
            let notified = self.done.notified();
            if self.queue().pending.is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Builds running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Pairs waiting for a build or building now.
    pub fn queued(&self) -> usize {
        self.queue().pending.len()
    }

    /// The most builds that ran at once since this replica started.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
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

/// Whether devices can be offered `to` while they run `from` (as [`crate::fleet::decide`]
/// offers): `from` is older, and `to` is a channel's release, or the previous release of
/// its rollout while that reaches only part of the fleet, or its rollout's floor. Only such
/// pairs are worth building; anyone can ask for a plan of any pair. (Devices that pin a
/// version, and rollbacks, get the plan of whole objects for pairs not built otherwise.)
async fn offered(app: &App, product: &Name, from: &ReleaseRow, to: &ReleaseRow) -> Result<bool> {
    if from.created >= to.created {
        return Ok(false);
    }
    let Some(p) = app.fleet.product(product).await? else {
        return Ok(false);
    };
    let now = app.clock.now();
    for name in app.db.channel_names(p.id).await? {
        let Some(ch) = app.fleet.channel(p.id, &name).await? else {
            continue;
        };
        if ch.row.release_id == to.id {
            return Ok(true);
        }
        let Some(ro) = ch
            .row
            .rollout
            .as_ref()
            .filter(|r| r.release_id == ch.row.release_id)
        else {
            continue;
        };
        let partial = match ro.state {
            RolloutState::Active => ro.percent_at(now) < 100.0,
            RolloutState::Stopped => true,
            RolloutState::Superseded => false,
        };
        if (partial && ro.previous_release_id == Some(to.id)) || ro.floor_release_id == Some(to.id)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Queues a build of the missing deltas of `from` → `to`, whose plan fetches some content
/// whole, when devices can be offered that pair and it is not queued or built on this
/// replica yet. Never waits for the build; never fails the caller (errors are logged).
pub async fn request(app: &App, product: &Name, from: &ReleaseRow, to: &ReleaseRow) {
    let key = (from.id, to.id);
    if app.builds.known(key).is_some() {
        return;
    }
    match offered(app, product, from, to).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            tracing::warn!(%product, from = %from.version, to = %to.version, error = %e,
                "cannot tell whether a pair is offered: no delta build");
            return;
        }
    }
    match app.builds.admit(key) {
        Admission::Queued => {}
        Admission::QueueFull => {
            app.metrics
                .delta_builds_refused
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        Admission::Pending | Admission::Finished => return,
    }
    let (app, product, from, to) = (app.clone(), product.to_string(), from.clone(), to.clone());
    tokio::spawn(async move {
        let permit = app.builds.permits.acquire().await;
        let now = app.builds.running.fetch_add(1, Ordering::SeqCst) + 1;
        app.builds.peak.fetch_max(now, Ordering::SeqCst);
        app.metrics
            .delta_builds_started
            .fetch_add(1, Ordering::Relaxed);
        let result = build(&app, &product, &from, &to).await;
        match result {
            Ok(n) => tracing::info!(
                product,
                from = %from.version,
                to = %to.version,
                deltas = n,
                "built deltas for a pair"
            ),
            Err(e) => tracing::error!(
                product,
                from = %from.version,
                to = %to.version,
                error = %e,
                "building deltas failed"
            ),
        }
        app.builds.running.fetch_sub(1, Ordering::SeqCst);
        drop(permit);
        app.builds.finish(key);
    });
}

/// Decompresses a stored object, refusing more than `size` bytes of output or content that
/// does not hash to its name.
async fn content(app: &App, hash: Hash, size: u64) -> Result<Vec<u8>> {
    let rel = object_path(&hash);
    let compressed = app.store.get(&rel).await?;
    blocking("decompressing a stored object", move || {
        let bad = |what: String| Error::Corrupt(format!("{rel}: {what}"));
        let mut dec =
            zstd::stream::read::Decoder::new(&compressed[..]).map_err(|e| bad(e.to_string()))?;
        dec.window_log_max(deltaroot_format::container::MAX_WINDOW_LOG)
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
}

async fn build(app: &App, product: &str, from: &ReleaseRow, to: &ReleaseRow) -> Result<usize> {
    let from_m = crate::releases::load_manifest(app, product, from).await?;
    let to_m = crate::releases::load_manifest(app, product, to).await?;
    let plan = crate::plans::plan_only(app, product, Some(from), to).await?;
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
        let best = blocking("diffing two contents", move || {
            let opts = EngineOptions {
                level,
                skip,
                // The server builds beside its requests: bsdiff's suffix sort (about 9x the
                // file) is kept to files of at most 256 MiB, as publishers had it by default
                // before their limit rose to 1 GiB.
                bsdiff_max: 256 << 20,
                ..EngineOptions::default()
            };
            candidates(&old, &new, &opts)
                .map(|c| c.into_iter().next())
                .map_err(|e| Error::Corrupt(format!("diffing {source} -> {target}: {e}")))
        })
        .await?;
        let Some(best) = best else { continue };
        if best.bytes.len() as u64 >= object_bytes.get(&target).copied().unwrap_or(u64::MAX) {
            continue;
        }
        let body = crate::files::Body::Bytes(best.bytes.into());
        crate::files::store_delta(app, &source, &target, body, best.method as u8).await?;
        stored += 1;
    }
    if stored > 0 {
        crate::plans::recompute_plan(app, product, Some(from), to).await?;
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::{Admission::*, Builds};

    #[test]
    fn the_queue_holds_each_pair_once_and_is_bounded() {
        let b = Builds::new(1, 2);
        assert_eq!(b.admit((1, 2)), Queued);
        assert_eq!(b.admit((1, 2)), Pending);
        assert_eq!(b.admit((1, 3)), Queued);
        assert_eq!(b.admit((2, 3)), QueueFull);
        assert_eq!(b.queued(), 2);
        b.finish((1, 2));
        assert_eq!(b.admit((1, 2)), Finished);
        assert_eq!(b.admit((2, 3)), Queued);
    }
}
