//! What a device fetches besides contents, made small for the devices that ask for it
//! (FORMAT.md §3.8, §7.2): a manifest as a delta from the manifest the device runs
//! (`manifest?from=V`), a plan in binary form (`?encoding=binary`). Each is made on first
//! request, one at a time per replica, and kept in a bounded cache, so a crowd of devices
//! on one pair costs one computation and a client naming many pairs holds at most
//! [`CAPACITY`] answers and one blocking thread.

use bytes::Bytes;
use deltaroot_format::{plan_binary, Hash, Plan};

use crate::cache::Bounded;
use crate::db::ReleaseRow;
use crate::error::{blocking, Error, Result};
use crate::releases::load_manifest;
use crate::App;

/// Answers kept: manifest deltas of a few hundred kB and binary plans of tens of kB.
pub const CAPACITY: u64 = 256;
/// How long one is kept (they never change: a plan recomputed is another key).
const LIFETIME_MS: i64 = 3_600_000;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    ManifestDelta {
        from: i64,
        to: i64,
    },
    BinaryPlan {
        from: Option<i64>,
        to: i64,
        json: Hash,
    },
}

/// The cache of manifest deltas and binary plans.
pub struct Metadata {
    made: Bounded<Key, Bytes>,
    computing: tokio::sync::Mutex<()>,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            made: Bounded::new(CAPACITY, LIFETIME_MS),
            computing: tokio::sync::Mutex::const_new(()),
        }
    }
}

impl Metadata {
    async fn get_or_make(
        &self,
        app: &App,
        key: Key,
        make: impl std::future::Future<Output = Result<Vec<u8>>>,
    ) -> Result<Bytes> {
        if let Some(v) = self.made.get(&key, app.clock.now_ms()) {
            return Ok(v);
        }
        let _one = self.computing.lock().await;
        if let Some(v) = self.made.get(&key, app.clock.now_ms()) {
            return Ok(v);
        }
        let v = Bytes::from(make.await?);
        self.made.insert(key, v.clone(), app.clock.now_ms());
        Ok(v)
    }
}

/// The manifest of `to` as a delta from the manifest of `from`, or `None` when the delta is
/// not smaller than `manifest` (the bytes of `to`'s, sent whole then).
pub async fn manifest_delta(
    app: &App,
    from: &ReleaseRow,
    to: &ReleaseRow,
    manifest: &[u8],
) -> Result<Option<Bytes>> {
    let key = Key::ManifestDelta {
        from: from.id,
        to: to.id,
    };
    let (from_id, from_version, to_version) = (from.id, from.version.clone(), to.version.clone());
    let d = app
        .metadata
        .get_or_make(app, key, async move {
            let (old, _) = app.db.manifest(from_id).await?;
            let new = manifest.to_vec();
            blocking("making a manifest delta", move || {
                let d = deltaroot_engine::manifest_delta(&old, &new).map_err(|e| {
                    Error::Corrupt(format!(
                        "manifest delta {from_version} -> {to_version}: {e}"
                    ))
                })?;
                // An empty answer: the manifest goes whole.
                Ok(if d.len() < new.len() { d } else { Vec::new() })
            })
            .await
        })
        .await?;
    Ok((!d.is_empty()).then_some(d))
}

/// `plan` (whose JSON is `json`) in binary form, for a device that holds both manifests.
pub async fn binary_plan(
    app: &App,
    product: &str,
    from: Option<&ReleaseRow>,
    to: &ReleaseRow,
    plan: Plan,
    json: &[u8],
) -> Result<Bytes> {
    let key = Key::BinaryPlan {
        from: from.map(|r| r.id),
        to: to.id,
        json: Hash::of(json),
    };
    app.metadata
        .get_or_make(app, key, async move {
            let to_m = load_manifest(app, product, to).await?;
            let from_m = match from {
                Some(r) => Some(load_manifest(app, product, r).await?),
                None => None,
            };
            blocking("encoding a binary plan", move || {
                Ok(plan_binary::encode(
                    &plan,
                    from_m.as_ref().map(|m| m.manifest()),
                    to_m.manifest(),
                )?)
            })
            .await
        })
        .await
}
