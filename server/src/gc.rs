//! Housekeeping: the orphan sweep and the periodic task that runs it beside device
//! retention, expired sessions, the admissions of ended paced rollouts and the dashboard's
//! daily rollups past their 400 days.
//!
//! Uploads come before the release that uses them: a publish refused at the end (a version
//! that exists, another key) or never sent leaves objects, deltas and packs no release
//! holds. The sweep removes a stored file when nothing references it and both its record
//! (`created_at`, its upload) and the file itself (the store's last-modified) are older than
//! the grace period. Referenced, and never removed: every content of every release, every
//! delta between two such contents (a later plan may use it), and everything a stored plan
//! fetches or a release pair's packs hold. The record goes before the file, so a sweep cut
//! short leaves a file without a record, which the next sweep finds.
//!
//! The grace period covers a publish in progress: its uploads are young. A publisher that
//! resumes a publish after the grace period re-uploads what the sweep removed (the server's
//! `/v1/stored` no longer lists it).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use deltaroot_format::{Fetch, Hash, PublicKey, VerifiedManifest};

use crate::db::{Db, StoredFile};
use crate::error::{Error, Result};
use crate::fleet::Fleet;
use crate::store::Store;
use crate::Metrics;

/// The top folders of the store the sweep looks in.
const PREFIXES: [&str; 3] = ["objects", "deltas", "packs"];

/// What one sweep found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Store paths removed (or that a dry run would remove), sorted.
    pub removed: Vec<String>,
    /// Files a release, plan or pack references.
    pub referenced: usize,
    /// Unreferenced files within the grace period, kept.
    pub young: usize,
}

/// What releases, plans and packs reference.
struct Live {
    contents: HashSet<Hash>,
    files: HashSet<StoredFile>,
}

impl Live {
    fn holds(&self, f: &StoredFile) -> bool {
        self.files.contains(f)
            || match f {
                StoredFile::Object(h) => self.contents.contains(h),
                StoredFile::Delta(s, t) => self.contents.contains(s) && self.contents.contains(t),
                StoredFile::Pack(_) => false,
            }
    }
}

async fn live(db: &Db) -> Result<Live> {
    let mut contents = HashSet::new();
    // Every key each product's releases were signed with: the current one and those
    // rotations replaced.
    let mut keys: std::collections::HashMap<String, Vec<PublicKey>> = Default::default();
    for (product, key, manifest, signature) in db.all_manifests().await? {
        if !keys.contains_key(&product) {
            let mut all = vec![PublicKey::from_text(&key)?];
            if let Some((id, _)) = db.product(&product).await? {
                for (_, _, old) in db.rotations(id).await? {
                    all.push(PublicKey::from_text(&old)?);
                }
            }
            keys.insert(product.clone(), all);
        }
        let m = VerifiedManifest::verify(manifest, signature, &keys[&product]).map_err(|e| {
            // Never sweep on a guess: a release that does not read stops the sweep.
            Error::Corrupt(format!("a release manifest of product {product}: {e}"))
        })?;
        contents.extend(m.manifest().contents().into_keys());
    }
    let mut files: HashSet<StoredFile> = db
        .planned_packs()
        .await?
        .into_iter()
        .map(StoredFile::Pack)
        .collect();
    for plan in db.all_plans().await? {
        for item in &plan.items {
            files.insert(match item.fetch {
                Fetch::Object { .. } => StoredFile::Object(item.target),
                Fetch::Delta { source, .. } => StoredFile::Delta(source, item.target),
            });
        }
        files.extend(plan.packs.iter().map(|p| StoredFile::Pack(p.hash)));
    }
    Ok(Live { contents, files })
}

/// Removes stored files that nothing references and that are older than `grace` by the
/// database's clock (with `dry_run`, only says which).
pub async fn sweep(db: &Db, store: &Store, grace: Duration, dry_run: bool) -> Result<Sweep> {
    let grace = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
    let cutoff = db.clock().now().saturating_sub(grace);
    // Files first, then what references them: a release published meanwhile is seen.
    let recorded = db.stored_files().await?;
    let mut listed: HashMap<StoredFile, i64> = HashMap::new();
    for prefix in PREFIXES {
        for f in store.list(prefix).await? {
            if let Some(sf) = StoredFile::from_rel(&f.rel) {
                listed.insert(sf, f.modified);
            }
        }
    }
    let live = live(db).await?;
    let mut all: Vec<&StoredFile> = recorded.keys().chain(listed.keys()).collect();
    all.sort_unstable();
    all.dedup();
    let mut out = Sweep::default();
    for f in all {
        if live.holds(f) {
            out.referenced += 1;
            continue;
        }
        let young = |t: Option<&i64>| t.is_some_and(|t| *t >= cutoff);
        if young(recorded.get(f)) || young(listed.get(f)) {
            out.young += 1;
            continue;
        }
        let rel = f.rel();
        if !dry_run {
            if recorded.contains_key(f) {
                db.forget_stored(f).await?;
            }
            store.delete(&rel).await?;
        }
        out.removed.push(rel);
    }
    out.removed.sort();
    Ok(out)
}

/// How often housekeeping runs, and what it does.
#[derive(Clone, Copy, Debug)]
pub struct Housekeeping {
    pub every: Duration,
    /// Devices not seen for this long are forgotten (`None`: kept for ever).
    pub device_retention: Option<Duration>,
    /// Unreferenced stored files older than this are removed (`None`: never by itself).
    pub orphan_grace: Option<Duration>,
}

/// Starts housekeeping on the current runtime; it ends when the fleet does.
pub fn spawn(h: Housekeeping, fleet: Weak<Fleet>, db: Db, store: Store, metrics: Arc<Metrics>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(h.every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(f) = fleet.upgrade() else { return };
            if let Some(keep) = h.device_retention {
                if let Err(e) = f.prune_devices(keep).await {
                    tracing::error!(error = %e, "forgetting old devices failed");
                }
            }
            drop(f);
            if let Err(e) = db.prune_sessions().await {
                tracing::error!(error = %e, "removing expired sessions failed");
            }
            if let Err(e) = db.prune_egress().await {
                tracing::error!(error = %e, "forgetting the admissions of ended rollouts failed");
            }
            if let Err(e) = db.prune_days().await {
                tracing::error!(error = %e, "dropping old days of the dashboard's rollups failed");
            }
            if let Some(grace) = h.orphan_grace {
                match sweep(&db, &store, grace, false).await {
                    Ok(s) => {
                        metrics
                            .orphans_removed
                            .fetch_add(s.removed.len() as u64, Ordering::Relaxed);
                        if !s.removed.is_empty() {
                            tracing::info!(files = s.removed.len(), "removed orphan uploads");
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "the orphan sweep failed"),
                }
            }
        }
    });
}
