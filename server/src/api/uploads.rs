//! The publisher's routes: object, delta and pack uploads, the stored-files query, and
//! publishing a release. Every handler takes [`Allowed`]`<Publish>` before its body, so a
//! request without a valid token, or whose token may not publish, is refused before its body
//! is read; publishing onto a channel also needs the operate scope. Upload bodies are spooled to
//! a file ([`crate::spool`]) and verified there before the store gets them.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use deltaroot_format::api::{
    PublishRequest, PublishResponse, RotateKeyRequest, RotateKeyResponse, StoredRequest,
    StoredResponse,
};
use deltaroot_format::{pack_path, EntryKind, Hash, Name};

use super::extract::{parse_hash, Allowed, JsonBody, NamePath, Publish};
use crate::access::Scope;
use crate::error::{Error, Result};
use crate::spool::{self, spool};
use crate::{files, App};

pub async fn stored(
    State(app): State<App>,
    _caller: Allowed<Publish>,
    JsonBody(req): JsonBody<StoredRequest>,
) -> Result<Json<StoredResponse>> {
    let sizes = app.db.object_sizes(&req.objects).await?;
    Ok(Json(StoredResponse {
        objects: req.objects.iter().map(|h| sizes.get(h).copied()).collect(),
        deltas: app.db.delta_sizes(&req.deltas).await?,
    }))
}

pub async fn publish(
    State(app): State<App>,
    Allowed(caller, _): Allowed<Publish>,
    NamePath(product): NamePath<Name>,
    JsonBody(req): JsonBody<PublishRequest>,
) -> Result<(StatusCode, Json<PublishResponse>)> {
    // Putting the release on a channel is an operator's decision.
    if req.channel.is_some() {
        caller.require(Scope::Operate, &product)?;
    }
    let r = crate::releases::publish(&app, product, &caller.name, req).await?;
    Ok((StatusCode::CREATED, Json(r)))
}

/// `POST /v1/products/{product}/keys`: a release key rotation (the publish scope on the
/// product).
pub async fn rotate_key(
    State(app): State<App>,
    Allowed(caller, _): Allowed<Publish>,
    NamePath(product): NamePath<Name>,
    JsonBody(req): JsonBody<RotateKeyRequest>,
) -> Result<Json<RotateKeyResponse>> {
    crate::answers::rotate_key(&app, &product, &caller.name, req)
        .await
        .map(Json)
}

/// The hash an upload of a `kind` (object, pack) is named by, which must sit under its
/// fan-out folder.
fn upload_hash(kind: &str, fan: &str, name: &str) -> Result<Hash> {
    let hash = parse_hash(name)?;
    if fan != hash.fanout() {
        return Err(Error::BadRequest(format!(
            "{kind} {hash} belongs under {kind}s/{}/",
            hash.fanout()
        )));
    }
    Ok(hash)
}

/// Objects are checked before they are stored: the body must be one zstd stream whose
/// content hashes to the name.
pub async fn put_object(
    State(app): State<App>,
    _caller: Allowed<Publish>,
    Path((fan, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode> {
    let hash = upload_hash("object", &fan, &name)?;
    // Stored files are immutable: plans and caches rely on their sizes.
    if app.db.object_sizes(&[hash]).await?.contains_key(&hash) {
        return Ok(StatusCode::OK);
    }
    let file = spool(&app.uploads, &headers, body, app.max_upload as u64).await?;
    let size = spool::verify_object(&file, hash).await?;
    files::store_object(&app, &hash, file.body(), size).await?;
    Ok(StatusCode::CREATED)
}

pub async fn put_delta(
    State(app): State<App>,
    _caller: Allowed<Publish>,
    Path((fan, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode> {
    let (s, t) = name
        .split_once('-')
        .ok_or_else(|| Error::BadRequest(format!("{name:?} is not <source>-<target>")))?;
    let (source, target) = (parse_hash(s)?, parse_hash(t)?);
    if fan != target.fanout() {
        return Err(Error::BadRequest(format!(
            "delta belongs under deltas/{}/",
            target.fanout()
        )));
    }
    if app.db.delta_sizes(&[(source, target)]).await?[0].is_some() {
        return Ok(StatusCode::OK);
    }
    let file = spool(&app.uploads, &headers, body, app.max_upload as u64).await?;
    let h = spool::delta_header(&file).await?;
    if h.source != source || h.target != target {
        return Err(Error::BadRequest(format!(
            "delta header says {} -> {}, the path says {source} -> {target}",
            h.source, h.target
        )));
    }
    files::store_delta(&app, &source, &target, file.body(), h.method as u8).await?;
    Ok(StatusCode::CREATED)
}

/// Packs are checked before they are stored: the body must hash to the name, and its index
/// and bodies must read to the end of the stream (the bodies are not applied).
pub async fn put_pack(
    State(app): State<App>,
    _caller: Allowed<Publish>,
    Path((fan, name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<StatusCode> {
    let hash = upload_hash("pack", &fan, &name)?;
    if !app.db.packs_stored(&[hash]).await?.is_empty() {
        return Ok(StatusCode::OK);
    }
    let file = spool(&app.uploads, &headers, body, app.max_upload as u64).await?;
    let index = spool::verify_pack(&file, hash, pack_path(&hash)).await?;
    let entries: Vec<(EntryKind, Hash)> = index.iter().map(|e| (e.kind, e.target)).collect();
    files::store_pack(&app, &hash, file.body(), &entries).await?;
    Ok(StatusCode::CREATED)
}
