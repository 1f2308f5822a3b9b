//! Releases: publishing one (its manifest verified with the key it names, every content and
//! pack stored first, the product bound to its first key), finding one by version, and
//! loading a stored manifest verified again with its product's key. The HTTP handlers in
//! [`crate::api`] and [`crate::channels`] and the delta builder call these; none of this
//! knows about HTTP.

use base64::Engine;
use deltaroot_format::api::{PublishRequest, PublishResponse};
use deltaroot_format::{Delegation, Hash, Method, Name, PublicKey, VerifiedManifest};

use crate::db::{NewRelease, ReleaseRow};
use crate::error::{blocking, Error, Result};
use crate::App;

/// The release `version` of `product`, or 404. Both are names: read as [`Name`]s from the
/// request, or from a signed statement that checks its own.
pub async fn find_release(app: &App, product: &str, version: &str) -> Result<ReleaseRow> {
    app.db
        .release(product, version)
        .await?
        .ok_or_else(|| Error::NotFound(format!("product {product} has no release {version}")))
}

/// A product's releases, newest first, or 404.
pub async fn list(app: &App, product: &Name) -> Result<Vec<ReleaseRow>> {
    if app.db.product(product).await?.is_none() {
        return Err(Error::NotFound(format!("no product {product}")));
    }
    app.db.releases(product).await
}

/// Loads a release's manifest, re-verified with its product's key (on the blocking pool: a
/// manifest can be large). A stored manifest that no longer verifies is corrupt data, a
/// server error.
pub async fn load_manifest(app: &App, product: &str, r: &ReleaseRow) -> Result<VerifiedManifest> {
    let (id, key) = app
        .db
        .product(product)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no product {product}")))?;
    // A release signed before a key rotation verifies with the key it replaced.
    let keys = crate::answers::product_keys(app, id, &key).await?;
    let (m, s) = app.db.manifest(r.id).await?;
    let version = r.version.clone();
    blocking("verifying a stored manifest", move || {
        VerifiedManifest::verify(m, s, &keys)
            .map_err(|e| Error::Corrupt(format!("stored manifest of {version}: {e}")))
    })
    .await
}

/// Publishes the release `req` describes for `product`, by the token named `who`.
pub async fn publish(
    app: &App,
    product: Name,
    who: &str,
    req: PublishRequest,
) -> Result<PublishResponse> {
    if req.skip_methods.contains(&Method::Zstd) {
        return Err(Error::BadRequest(
            "skip_methods cannot hold zstd: the whole object is always made".into(),
        ));
    }
    let percent = req.percent.unwrap_or(100.0);
    if !(percent.is_finite() && (0.0..=100.0).contains(&percent)) {
        return Err(Error::BadRequest(format!(
            "percent must be between 0 and 100, not {percent}"
        )));
    }
    if req.percent.is_some() && req.channel.is_none() {
        return Err(Error::BadRequest(
            "percent is the share of a channel's devices: name the channel".into(),
        ));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let bytes = b64
        .decode(&req.manifest)
        .map_err(|e| Error::BadRequest(format!("manifest is not base64: {e}")))?;
    let sig = b64
        .decode(&req.signature)
        .map_err(|e| Error::BadRequest(format!("signature is not base64: {e}")))?;
    let key = PublicKey::from_text(&req.public_key)?;
    let signed = {
        let key = key.clone();
        blocking("verifying a published manifest", move || {
            Ok(VerifiedManifest::verify(bytes, sig, &[key])?)
        })
        .await?
    };
    let m = signed.manifest();
    if m.product != product {
        return Err(Error::BadRequest(format!(
            "manifest is for product {}, not {product}",
            m.product
        )));
    }
    let delegation = req
        .delegation
        .as_ref()
        .map(|d| app.answers.check_delegation(&product, &key, d))
        .transpose()?;
    // Packs belong to the pair from `from_version`, which must exist, and must be stored.
    let from_release = match &req.from_version {
        Some(v) => app.db.release(&product, v).await?,
        None => None,
    };
    if !req.packs.is_empty() {
        if from_release.is_none() {
            return Err(Error::BadRequest(
                "packs need a from_version the server holds".into(),
            ));
        }
        let stored = app.db.packs_stored(&req.packs).await?;
        if let Some(missing) = req.packs.iter().find(|p| !stored.contains(p)) {
            return Err(Error::BadRequest(format!(
                "pack {missing} is not stored: upload it first"
            )));
        }
    }
    // Every content must be stored before the release can exist.
    let hashes: Vec<Hash> = m.contents().into_keys().collect();
    let sizes = app.db.object_sizes(&hashes).await?;
    if let Some(missing) = hashes.iter().find(|h| !sizes.contains_key(h)) {
        let n = hashes.iter().filter(|h| !sizes.contains_key(h)).count();
        return Err(Error::BadRequest(format!(
            "release {} lacks {n} objects, first {missing}: upload them first",
            m.version
        )));
    }
    app.db
        .insert_release(&NewRelease {
            product: &product,
            public_key: &key.to_text(),
            version: &m.version,
            created: m.created as i64,
            manifest: signed.bytes(),
            signature: signed.signature(),
            image_bytes: m.total_file_bytes() as i64,
            entries: m.entries.len() as i64,
            published_by: who,
            skip_methods: &req.skip_methods,
            channel: req.channel.as_deref(),
            percent,
            packs: from_release
                .as_ref()
                .filter(|_| !req.packs.is_empty())
                .map(|r| (r.id, &req.packs[..])),
        })
        .await?;
    let product_id = app.db.product(&product).await?.map(|p| p.0);
    if let (Some(id), Some((bytes, sig))) = (product_id, &delegation) {
        // Devices refuse a delegation older than one they took: keep the newest.
        let issued = |b: &[u8]| Delegation::decode(b).map_or(0, |d| d.issued);
        let stored = app.db.delegation(id).await?;
        if stored.is_none_or(|(b, _)| issued(&b) <= issued(bytes)) {
            app.db.set_delegation(id, bytes, sig).await?;
        }
    }
    app.fleet.invalidate(&product, product_id);
    tracing::info!(%product, version = m.version, by = who, "release published");
    let mut download_bytes = None;
    if let Some(old) = &from_release {
        let to = app.db.release(&product, &m.version).await?.ok_or_else(|| {
            Error::Corrupt(format!(
                "release {} is not found after insertion",
                m.version
            ))
        })?;
        // The publisher made this pair's deltas: no build.
        download_bytes = Some(
            crate::plans::plan_only(app, &product, Some(old), &to)
                .await?
                .download_bytes,
        );
    }
    Ok(PublishResponse {
        product,
        version: Name::new("version", m.version.as_str())?,
        channel: req.channel,
        download_bytes,
    })
}
