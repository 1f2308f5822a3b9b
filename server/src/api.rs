//! HTTP handlers: the device API (update checks, manifests, plans), immutable object and
//! delta downloads, and the publisher's uploads. Routes are listed in [`router`].

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::Ordering;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use deltaroot_client::format::api::{
    CheckResponse, PublishRequest, PublishResponse, StoredRequest, StoredResponse, UpdateOffer,
    RESULTS,
};
use deltaroot_client::format::{
    attach_packs, check_name, compute_plan, delta_path, object_path, pack_path, DeltaHeader,
    EntryKind, Hash, Method, PackEntry, PackReader, Plan, PublicKey, VerifiedManifest,
};
use futures::StreamExt;

use crate::db::{CheckIn, NewRelease, ReleaseRow};
use crate::error::{Error, Result};
use crate::fleet::{check_device_id, decide, Ask};
use crate::App;

/// Every route of the server: methods and path, as in `openapi.json` and `/metrics`.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/stored"),
    ("GET POST", "/v1/products/{product}/releases"),
    ("GET", "/v1/products/{product}/releases/{version}/{file}"),
    ("GET", "/v1/products/{product}/plans/{from}/{to}"),
    ("GET", "/v1/products/{product}/channels/{channel}/check"),
    ("GET", "/v1/products/{product}/channels"),
    ("GET", "/v1/products/{product}/channels/{channel}"),
    ("POST", "/v1/products/{product}/channels/{channel}/promote"),
    ("POST", "/v1/products/{product}/channels/{channel}/pause"),
    ("POST", "/v1/products/{product}/channels/{channel}/resume"),
    ("POST", "/v1/products/{product}/channels/{channel}/rollback"),
    ("POST", "/v1/products/{product}/channels/{channel}/rollout"),
    ("GET", "/v1/products/{product}/audit"),
    ("GET", "/v1/products/{product}/devices/{device}"),
    ("GET HEAD PUT", "/objects/{fan}/{name}"),
    ("GET HEAD PUT", "/deltas/{fan}/{name}"),
    ("GET HEAD PUT", "/packs/{fan}/{name}"),
];

/// The OpenAPI 3.1 document of the API.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// Every route of the server.
pub fn router(app: App) -> Router {
    use crate::channels as ch;
    let limit = app.max_upload;
    let metrics = app.metrics.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/v1/stored", post(stored))
        .route(
            "/v1/products/{product}/releases",
            post(publish).get(list_releases),
        )
        .route(
            "/v1/products/{product}/releases/{version}/{file}",
            get(manifest),
        )
        .route("/v1/products/{product}/plans/{from}/{to}", get(plan))
        .route(
            "/v1/products/{product}/channels/{channel}/check",
            get(check),
        )
        .route("/v1/products/{product}/channels", get(ch::list))
        .route("/v1/products/{product}/channels/{channel}", get(ch::status))
        .route(
            "/v1/products/{product}/channels/{channel}/promote",
            post(ch::promote),
        )
        .route(
            "/v1/products/{product}/channels/{channel}/pause",
            post(ch::pause),
        )
        .route(
            "/v1/products/{product}/channels/{channel}/resume",
            post(ch::resume),
        )
        .route(
            "/v1/products/{product}/channels/{channel}/rollback",
            post(ch::rollback),
        )
        .route(
            "/v1/products/{product}/channels/{channel}/rollout",
            post(ch::rollout),
        )
        .route("/v1/products/{product}/audit", get(ch::audit))
        .route("/v1/products/{product}/devices/{device}", get(ch::device))
        .route(
            "/objects/{fan}/{name}",
            get(get_object).put(put_object).head(get_object),
        )
        .route(
            "/deltas/{fan}/{name}",
            get(get_delta).put(put_delta).head(get_delta),
        )
        .route(
            "/packs/{fan}/{name}",
            get(get_pack).put(put_pack).head(get_pack),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(app)
}

/// A JSON body whose rejection answers like every other error: `{"error": "..."}`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;
    async fn from_request(req: Request, state: &S) -> Result<Self> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| JsonBody(v))
            .map_err(|rej| match rej.status() {
                StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge(rej.body_text()),
                _ => Error::BadRequest(rej.body_text()),
            })
    }
}

/// An upload body, refused with a JSON 413 past the server's limit.
pub struct Upload(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for Upload {
    type Rejection = Error;
    async fn from_request(req: Request, state: &S) -> Result<Self> {
        Bytes::from_request(req, state)
            .await
            .map(Upload)
            .map_err(|rej| match rej.status() {
                StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge(rej.body_text()),
                _ => Error::BadRequest(rej.body_text()),
            })
    }
}

/// The name of the token the request carries, or 401.
pub async fn authorize(app: &App, headers: &HeaderMap) -> Result<String> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or(Error::Unauthorized)?;
    app.db.token_name(token).await?.ok_or(Error::Unauthorized)
}

pub fn name(field: &'static str, v: &str) -> Result<()> {
    check_name(field, v).map_err(|e| Error::BadRequest(e.to_string()))
}

fn parse_hash(s: &str) -> Result<Hash> {
    s.parse()
        .map_err(|e: deltaroot_client::format::hash::BadHash| Error::BadRequest(e.to_string()))
}

async fn stored(
    State(app): State<App>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<StoredRequest>,
) -> Result<Json<StoredResponse>> {
    authorize(&app, &headers).await?;
    let sizes = app.db.object_sizes(&req.objects).await?;
    Ok(Json(StoredResponse {
        objects: req.objects.iter().map(|h| sizes.get(h).copied()).collect(),
        deltas: app.db.delta_sizes(&req.deltas).await?,
    }))
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
async fn put_object(
    State(app): State<App>,
    Path((fan, name)): Path<(String, String)>,
    headers: HeaderMap,
    Upload(body): Upload,
) -> Result<StatusCode> {
    authorize(&app, &headers).await?;
    let hash = upload_hash("object", &fan, &name)?;
    let rel = object_path(&hash);
    // Stored files are immutable: plans and caches rely on their sizes.
    if app.db.object_sizes(&[hash]).await?.contains_key(&hash) {
        return Ok(StatusCode::OK);
    }
    let data = body.clone();
    let (got, size) = tokio::task::spawn_blocking(move || -> Result<(Hash, u64)> {
        let mut dec = zstd::stream::read::Decoder::new(&data[..])
            .map_err(|e| Error::BadRequest(format!("object is not zstd: {e}")))?;
        dec.window_log_max(deltaroot_client::format::container::MAX_WINDOW_LOG)
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = dec
                .read(&mut buf)
                .map_err(|e| Error::BadRequest(format!("object does not decompress: {e}")))?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hasher.update(&buf[..n]);
        }
        Ok((hasher.finalize().into(), size))
    })
    .await
    .map_err(|e| Error::BadRequest(e.to_string()))??;
    if got != hash {
        return Err(Error::BadRequest(format!(
            "object content hashes to {got}, not {hash}"
        )));
    }
    let len = body.len() as u64;
    app.store.put(&rel, body).await?;
    app.db.add_object(&hash, len, size).await?;
    Ok(StatusCode::CREATED)
}

async fn put_delta(
    State(app): State<App>,
    Path((fan, name)): Path<(String, String)>,
    headers: HeaderMap,
    Upload(body): Upload,
) -> Result<StatusCode> {
    authorize(&app, &headers).await?;
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
    let (h, _) = DeltaHeader::decode(&body)?;
    if h.source != source || h.target != target {
        return Err(Error::BadRequest(format!(
            "delta header says {} -> {}, the path says {source} -> {target}",
            h.source, h.target
        )));
    }
    let len = body.len() as u64;
    app.store.put(&delta_path(&source, &target), body).await?;
    app.db
        .add_delta(&source, &target, len, h.method as u8)
        .await?;
    Ok(StatusCode::CREATED)
}

/// Packs are checked before they are stored: the body must hash to the name, and its index
/// and bodies must read to the end of the stream (the bodies are not applied).
async fn put_pack(
    State(app): State<App>,
    Path((fan, name)): Path<(String, String)>,
    headers: HeaderMap,
    Upload(body): Upload,
) -> Result<StatusCode> {
    authorize(&app, &headers).await?;
    let hash = upload_hash("pack", &fan, &name)?;
    if !app.db.packs_stored(&[hash]).await?.is_empty() {
        return Ok(StatusCode::OK);
    }
    let data = body.clone();
    let index = tokio::task::spawn_blocking(move || -> Result<Vec<PackEntry>> {
        let got = Hash::of(&data);
        if got != hash {
            return Err(Error::BadRequest(format!(
                "pack hashes to {got}, not {hash}"
            )));
        }
        Ok(PackReader::open(&pack_path(&hash), &data[..])?.check_all()?)
    })
    .await
    .map_err(|e| Error::BadRequest(e.to_string()))??;
    let entries: Vec<(EntryKind, Hash)> = index.iter().map(|e| (e.kind, e.target)).collect();
    let len = body.len() as u64;
    app.store.put(&pack_path(&hash), body).await?;
    app.db.add_pack(&hash, len, &entries).await?;
    Ok(StatusCode::CREATED)
}

async fn get_pack(
    State(app): State<App>,
    Path((fan, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    get_hashed(&app, &fan, &name, &headers, "pack", pack_path).await
}

async fn get_object(
    State(app): State<App>,
    Path((fan, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    get_hashed(&app, &fan, &name, &headers, "object", object_path).await
}

/// Serves the object or pack named by its hash, under its fan-out only.
async fn get_hashed(
    app: &App,
    fan: &str,
    name: &str,
    headers: &HeaderMap,
    kind: &'static str,
    path: fn(&Hash) -> String,
) -> Result<Response> {
    let hash = parse_hash(name)?;
    if fan != hash.fanout() {
        return Err(Error::NotFound(format!("no {kind} {fan}/{name}")));
    }
    serve_immutable(app, &path(&hash), name, headers, kind).await
}

async fn get_delta(
    State(app): State<App>,
    Path((fan, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response> {
    let Some((s, t)) = name.split_once('-') else {
        return Err(Error::NotFound(format!("no delta {fan}/{name}")));
    };
    let (source, target) = (parse_hash(s)?, parse_hash(t)?);
    if fan != target.fanout() {
        return Err(Error::NotFound(format!("no delta {fan}/{name}")));
    }
    serve_immutable(
        &app,
        &delta_path(&source, &target),
        &name,
        &headers,
        "delta",
    )
    .await
}

/// What a `Range` header asks of a file of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeAsk {
    /// Malformed, multi-range or another unit: ignored, the whole file is served (RFC 9110).
    Whole,
    Part(std::ops::Range<u64>),
    Unsatisfiable,
}

fn parse_range(v: &str, len: u64) -> RangeAsk {
    let Some(spec) = v.strip_prefix("bytes=") else {
        return RangeAsk::Whole;
    };
    if spec.contains(',') {
        return RangeAsk::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return RangeAsk::Whole;
    };
    let r = if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return RangeAsk::Whole;
        };
        len.saturating_sub(n)..len
    } else {
        let Ok(start) = a.parse::<u64>() else {
            return RangeAsk::Whole;
        };
        let end = if b.is_empty() {
            len
        } else {
            match b.parse::<u64>() {
                Ok(e) if e >= start => e.saturating_add(1).min(len),
                _ => return RangeAsk::Whole,
            }
        };
        start..end
    };
    if r.start < r.end {
        RangeAsk::Part(r)
    } else {
        RangeAsk::Unsatisfiable
    }
}

/// Serves an immutable file: long cache lifetime, ETag, and single-range requests.
async fn serve_immutable(
    app: &App,
    rel: &str,
    name: &str,
    headers: &HeaderMap,
    kind: &'static str,
) -> Result<Response> {
    let not_found = || Error::NotFound(format!("no {kind} {rel}"));
    let etag = format!("\"{name}\"");
    let mut resp = Response::builder()
        .header(header::ETAG, &etag)
        .header(header::CACHE_CONTROL, "public, max-age=31536000, immutable")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CONTENT_TYPE, "application/octet-stream");
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let revalidate = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    // The length is needed before the body only to answer a range or a revalidation.
    let known_len = if range_header.is_some() || revalidate {
        Some(app.store.size(rel).await?.ok_or_else(not_found)?)
    } else {
        None
    };
    if revalidate {
        return Ok(resp
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .expect("valid response"));
    }
    let ask = match (range_header, known_len) {
        (Some(v), Some(len)) => parse_range(v, len),
        _ => RangeAsk::Whole,
    };
    let range = match ask {
        RangeAsk::Whole => None,
        RangeAsk::Part(r) => Some(r),
        RangeAsk::Unsatisfiable => {
            let len = known_len.unwrap_or(0);
            let body = serde_json::to_vec(&deltaroot_client::format::api::ErrorBody {
                error: format!("range does not fit {rel} of {len} bytes"),
            })
            .expect("serialises");
            return Ok(resp
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .header(header::CONTENT_RANGE, format!("bytes */{len}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .expect("valid response"));
        }
    };
    if known_len == Some(0) {
        return Ok(resp
            .header(header::CONTENT_LENGTH, 0)
            .body(Body::empty())
            .expect("valid response"));
    }
    let (len, stream) = app
        .store
        .open_range(rel, range.clone())
        .await?
        .ok_or_else(not_found)?;
    let sent = match &range {
        Some(r) => {
            resp = resp.status(StatusCode::PARTIAL_CONTENT).header(
                header::CONTENT_RANGE,
                format!("bytes {}-{}/{len}", r.start, r.end - 1),
            );
            r.end - r.start
        }
        None => len,
    };
    resp = resp.header(header::CONTENT_LENGTH, sent);
    let counter = app.metrics.clone();
    let stream = stream.map(move |chunk| {
        if let Ok(c) = &chunk {
            let n = c.len() as u64;
            match kind {
                "object" => counter.object_bytes.fetch_add(n, Ordering::Relaxed),
                "pack" => counter.pack_bytes.fetch_add(n, Ordering::Relaxed),
                _ => counter.delta_bytes.fetch_add(n, Ordering::Relaxed),
            };
        }
        chunk
    });
    Ok(resp
        .body(Body::from_stream(stream))
        .expect("valid response"))
}

async fn publish(
    State(app): State<App>,
    Path(product): Path<String>,
    headers: HeaderMap,
    JsonBody(req): JsonBody<PublishRequest>,
) -> Result<(StatusCode, Json<PublishResponse>)> {
    let who = authorize(&app, &headers).await?;
    name("product", &product)?;
    if req.skip_methods.contains(&Method::Zstd) {
        return Err(Error::BadRequest(
            "skip_methods cannot hold zstd: the whole object is always made".into(),
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
    let signed = VerifiedManifest::verify(bytes, sig, std::slice::from_ref(&key))?;
    let m = signed.manifest();
    if m.product != product {
        return Err(Error::BadRequest(format!(
            "manifest is for product {}, not {product}",
            m.product
        )));
    }
    if let Some(c) = &req.channel {
        name("channel", c)?;
    }
    // Packs belong to the pair from `from_version`, which must exist, and must be stored.
    let from_release = match &req.from_version {
        Some(v) => {
            name("from_version", v)?;
            app.db.release(&product, v).await?
        }
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
    let id = app
        .db
        .insert_release(&NewRelease {
            product: &product,
            public_key: &key.to_text(),
            version: &m.version,
            created: m.created as i64,
            manifest: signed.bytes(),
            signature: signed.signature(),
            image_bytes: m.total_file_bytes() as i64,
            entries: m.entries.len() as i64,
            published_by: &who,
            skip_methods: &req.skip_methods,
            channel: req.channel.as_deref(),
            packs: from_release
                .as_ref()
                .filter(|_| !req.packs.is_empty())
                .map(|r| (r.id, &req.packs[..])),
        })
        .await?;
    app.fleet
        .invalidate(&product, app.db.product(&product).await?.map(|p| p.0));
    tracing::info!(product, version = m.version, by = who, "release published");
    let mut download_bytes = None;
    if let Some(old) = &from_release {
        let to = app
            .db
            .release(&product, &m.version)
            .await?
            .expect("just inserted");
        download_bytes = Some(
            plan_only(&app, &product, Some(old), &to)
                .await?
                .download_bytes,
        );
    }
    let _ = id;
    Ok((
        StatusCode::CREATED,
        Json(PublishResponse {
            product,
            version: m.version.clone(),
            channel: req.channel,
            download_bytes,
        }),
    ))
}

async fn list_releases(
    State(app): State<App>,
    Path(product): Path<String>,
) -> Result<Json<Vec<ReleaseRow>>> {
    name("product", &product)?;
    if app.db.product(&product).await?.is_none() {
        return Err(Error::NotFound(format!("no product {product}")));
    }
    Ok(Json(app.db.releases(&product).await?))
}

pub async fn find_release(app: &App, product: &str, version: &str) -> Result<ReleaseRow> {
    name("product", product)?;
    name("version", version)?;
    app.db
        .release(product, version)
        .await?
        .ok_or_else(|| Error::NotFound(format!("product {product} has no release {version}")))
}

async fn manifest(
    State(app): State<App>,
    Path((product, version, file)): Path<(String, String, String)>,
) -> Result<Response> {
    let r = find_release(&app, &product, &version).await?;
    let (m, s) = app.db.manifest(r.id).await?;
    let body = match file.as_str() {
        "manifest" => m,
        "manifest.sig" => s,
        other => return Err(Error::NotFound(format!("release {version} has no {other}"))),
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
        ],
        body,
    )
        .into_response())
}

/// Loads a release's manifest, re-verified with its product's key.
pub async fn load_manifest(app: &App, product: &str, r: &ReleaseRow) -> Result<VerifiedManifest> {
    let (_, key) = app
        .db
        .product(product)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no product {product}")))?;
    let key = PublicKey::from_text(&key)?;
    let (m, s) = app.db.manifest(r.id).await?;
    Ok(VerifiedManifest::verify(m, s, &[key])?)
}

/// The stored plan for a pair, computed and saved on first use (one computation at a time
/// per replica, so a crowd asking for the same new pair computes it once). A new plan from
/// an older release starts building the deltas it lacks in the background.
pub async fn plan_for(
    app: &App,
    product: &str,
    from: Option<&ReleaseRow>,
    to: &ReleaseRow,
) -> Result<Plan> {
    let (plan, fresh) = stored_or_computed(app, product, from, to).await?;
    if let (true, Some(f)) = (fresh, from) {
        if plan
            .items
            .iter()
            .any(|i| matches!(i.fetch, deltaroot_client::format::Fetch::Object { .. }))
        {
            crate::deltas::spawn(app, product, f, to);
        }
    }
    Ok(plan)
}

/// Like [`plan_for`], without starting delta builds (the publisher made this pair's).
pub async fn plan_only(
    app: &App,
    product: &str,
    from: Option<&ReleaseRow>,
    to: &ReleaseRow,
) -> Result<Plan> {
    Ok(stored_or_computed(app, product, from, to).await?.0)
}

static COMPUTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn stored_or_computed(
    app: &App,
    product: &str,
    from: Option<&ReleaseRow>,
    to: &ReleaseRow,
) -> Result<(Plan, bool)> {
    if let Some(p) = app.db.plan(from.map(|r| r.id), to.id).await? {
        return Ok((p, false));
    }
    let _one = COMPUTING.lock().await;
    if let Some(p) = app.db.plan(from.map(|r| r.id), to.id).await? {
        return Ok((p, false));
    }
    Ok((compute(app, product, from, to).await?, true))
}

/// Computes the plan again from the deltas stored now, and saves it.
pub async fn recompute_plan(
    app: &App,
    product: &str,
    from: Option<&ReleaseRow>,
    to: &ReleaseRow,
) -> Result<Plan> {
    let _one = COMPUTING.lock().await;
    compute(app, product, from, to).await
}

async fn compute(
    app: &App,
    product: &str,
    from: Option<&ReleaseRow>,
    to: &ReleaseRow,
) -> Result<Plan> {
    let to_m = load_manifest(app, product, to).await?;
    let from_m = match from {
        Some(r) => Some(load_manifest(app, product, r).await?),
        None => None,
    };
    let targets: Vec<Hash> = to_m.manifest().contents().into_keys().collect();
    let sizes = app.db.object_sizes(&targets).await?;
    let deltas: HashMap<Hash, Vec<(Hash, u64)>> = app.db.deltas_to(&targets).await?;
    let mut plan = compute_plan(
        from_m.as_ref().map(|m| m.manifest()),
        to_m.manifest(),
        |h| sizes.get(h).copied(),
        |t| deltas.get(t).cloned().unwrap_or_default(),
    )?;
    if let Some(f) = from {
        attach_packs(&mut plan, &app.db.plan_packs(Some(f.id), to.id).await?);
    }
    app.db.save_plan(from.map(|r| r.id), to.id, &plan).await?;
    app.fleet
        .set_plan_size(from.map(|r| r.id), to.id, plan.download_bytes);
    Ok(plan)
}

async fn plan(
    State(app): State<App>,
    Path((product, from, to)): Path<(String, String, String)>,
) -> Result<Json<Plan>> {
    let to = find_release(&app, &product, &to).await?;
    // A device on a version the server does not know gets what a fresh install needs,
    // as the update check promised it.
    let from = match from.as_str() {
        "-" => None,
        v => {
            name("version", v)?;
            app.db.release(&product, v).await?
        }
    };
    Ok(Json(plan_for(&app, &product, from.as_ref(), &to).await?))
}

/// A query parameter that must be a name when present.
fn query_name<'a>(q: &'a HashMap<String, String>, key: &'static str) -> Result<Option<&'a str>> {
    match q.get(key) {
        Some(v) => {
            name(key, v)?;
            Ok(Some(v.as_str()))
        }
        None => Ok(None),
    }
}

async fn check(
    State(app): State<App>,
    Path((product, channel)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<CheckResponse>> {
    name("product", &product)?;
    name("channel", &channel)?;
    let ask = Ask {
        current: query_name(&q, "current")?,
        attempted: query_name(&q, "attempted")?,
        pin: query_name(&q, "pin")?,
        device: match q.get("device") {
            Some(d) => {
                check_device_id(d)?;
                Some(d.as_str())
            }
            None => None,
        },
        result: match q.get("result") {
            Some(r) if RESULTS.contains(&r.as_str()) => Some(r.as_str()),
            Some(r) => {
                return Err(Error::BadRequest(format!(
                    "result {:?} is not one of {}",
                    r.chars().take(40).collect::<String>(),
                    RESULTS.join(", ")
                )))
            }
            None => None,
        },
    };
    app.metrics.checks.fetch_add(1, Ordering::Relaxed);
    let p = app
        .fleet
        .product(&product)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no product {product}")))?;
    let ch = app.fleet.channel(p.id, &channel).await?;
    let now = crate::fleet::now();
    let d = decide(&p, &channel, ch.as_deref(), &ask, now)?;
    if let Some(device) = ask.device {
        app.fleet.record(CheckIn {
            product_id: p.id,
            device_id: device.to_string(),
            channel: channel.clone(),
            current: ask.current.map(str::to_string),
            result: ask.result.map(str::to_string),
            attempted: ask.attempted.map(str::to_string),
            at: now,
        });
    }
    let update = match d.offer {
        Some((target, downgrade)) => {
            let from = ask.current.and_then(|v| p.by_version.get(v));
            let from_id = from.map(|r| r.id);
            let bytes = match app.fleet.plan_size(from_id, target.id) {
                Some(b) => b,
                None => match app.db.plan_size(from_id, target.id).await? {
                    Some(b) => {
                        app.fleet.set_plan_size(from_id, target.id, b);
                        b
                    }
                    None => {
                        plan_for(&app, &product, from.map(|r| r.as_ref()), &target)
                            .await?
                            .download_bytes
                    }
                },
            };
            Some(UpdateOffer {
                version: target.version.clone(),
                download_bytes: bytes,
                image_bytes: target.image_bytes as u64,
                downgrade,
            })
        }
        None => None,
    };
    Ok(Json(CheckResponse {
        product,
        channel,
        latest: d.latest,
        update,
        paused: d.paused,
        next_check_secs: Some(app.fleet.next_check_secs()),
    }))
}

/// Ready when the database and the object store answer.
async fn readyz(State(app): State<App>) -> Result<&'static str> {
    app.db
        .ping()
        .await
        .map_err(|e| Error::Unavailable(format!("database {}: {e}", app.db.url())))?;
    app.store
        .ping()
        .await
        .map_err(|e| Error::Unavailable(format!("object store {}: {e}", app.store.url())))?;
    Ok("ready")
}

async fn metrics_text(State(app): State<App>) -> Result<Response> {
    let mut s = app.metrics.render();
    s.push_str(
        "# HELP deltaroot_channel_paused 1 while an operator pauses the channel.\n\
         # TYPE deltaroot_channel_paused gauge\n\
         # HELP deltaroot_rollout_percent Share of devices offered the channel's release now.\n\
         # TYPE deltaroot_rollout_percent gauge\n\
         # HELP deltaroot_rollout_stopped 1 while the channel's rollout is stopped.\n\
         # TYPE deltaroot_rollout_stopped gauge\n",
    );
    let now = crate::fleet::now();
    for (p, c, paused, ro) in app.db.all_channels().await? {
        let l = format!("product=\"{p}\",channel=\"{c}\"");
        s.push_str(&format!(
            "deltaroot_channel_paused{{{l}}} {}\n",
            u8::from(paused)
        ));
        if let Some(ro) = ro {
            let pct = if ro.state == "active" {
                ro.percent_at(now)
            } else {
                0.0
            };
            s.push_str(&format!("deltaroot_rollout_percent{{{l}}} {pct}\n"));
            s.push_str(&format!(
                "deltaroot_rollout_stopped{{{l}}} {}\n",
                u8::from(ro.state == "stopped")
            ));
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s).into_response())
}

#[cfg(test)]
mod tests {
    use super::{parse_range, RangeAsk::*, OPENAPI, ROUTES};
    use std::collections::BTreeSet;

    #[test]
    fn openapi_documents_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for m in ["get", "post", "put", "head", "delete", "patch"] {
                if item.get(m).is_some() {
                    documented.insert((m.to_uppercase(), path.clone()));
                }
            }
        }
        let routed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .flat_map(|(ms, p)| ms.split(' ').map(|m| (m.to_string(), p.to_string())))
            .collect();
        assert_eq!(documented, routed);
        // Every schema reference resolves.
        let text = OPENAPI;
        for r in text.split("\"#/components/").skip(1) {
            let name = r.split('"').next().unwrap();
            let mut parts = name.split('/');
            let (kind, n) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                doc["components"][kind].get(n).is_some(),
                "dangling reference {name}"
            );
        }
        // Delta methods are documented by the names the API reads.
        let names: Vec<&str> = deltaroot_client::format::Method::ALL
            .iter()
            .map(|m| m.name())
            .collect();
        assert_eq!(
            doc["components"]["schemas"]["DeltaMethod"]["enum"],
            serde_json::json!(names)
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Part(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Part(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Part(90..100));
        assert_eq!(parse_range("bytes=95-200", 100), Part(95..100));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Whole);
        assert_eq!(parse_range("bytes=9-2", 100), Whole);
        assert_eq!(parse_range("items=0-1", 100), Whole);
    }
}
