//! The device routes: update checks, manifests and their signatures, and plans (none needs a
//! token), and the list of a product's releases (the read scope). What a device is offered is decided by [`crate::fleet`], plans come from
//! [`crate::plans`].

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use bytes::Bytes;
use deltaroot_format::answer::plan_message;
use deltaroot_format::answer::Offer;
use deltaroot_format::api::{AnswerKey, CheckResponse, EnrollRequest, EnrollResponse, UpdateOffer};
use deltaroot_format::checkin::CHECKIN_SKEW_SECS;
use deltaroot_format::{Answer, DeviceId, Hash, Name, PublicKey};
use serde::Deserialize;

use super::extract::{Allowed, Enroll, JsonBody, NamePath, NameQuery, Publish, Read};
use crate::checkins::{Proof, Report};
use crate::db::{CheckIn, ReleaseRow};
use crate::error::{Error, Result};
use crate::fleet::{decide, paced_by, Ask, CheckKey};
use crate::plans::plan_for;
use crate::releases::find_release;
use crate::App;

pub async fn list_releases(
    State(app): State<App>,
    _caller: Allowed<Read>,
    NamePath(product): NamePath<Name>,
) -> Result<Json<Vec<ReleaseRow>>> {
    Ok(Json(crate::releases::list(&app, &product).await?))
}

/// `…/releases/{v}/manifest[?from=V]`, `…/manifest.sig`. A device that names the release
/// it runs (`from`) gets the manifest as a delta from that release's when the delta is
/// smaller (FORMAT.md §3.8), else the manifest itself.
pub async fn manifest(
    State(app): State<App>,
    NamePath((product, version, file)): NamePath<(Name, Name, String)>,
    NameQuery(q): NameQuery<ManifestQuery>,
) -> Result<Response> {
    let r = find_release(&app, &product, &version).await?;
    let (m, s) = app.db.manifest(r.id).await?;
    let body = match file.as_str() {
        "manifest" => match q.from.filter(|f| *f != version) {
            // A `from` the server does not know gets the manifest whole.
            Some(from) => match app.db.release(&product, &from).await? {
                Some(f) => crate::metadata::manifest_delta(&app, &f, &r, &m)
                    .await?
                    .unwrap_or_else(|| m.into()),
                None => m.into(),
            },
            None => m.into(),
        },
        "manifest.sig" => s.into(),
        other => return Err(Error::NotFound(format!("release {version} has no {other}"))),
    };
    app.metrics
        .manifest_bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
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

/// The query of a manifest request: the release the device runs, if it says.
#[derive(Deserialize)]
pub struct ManifestQuery {
    from: Option<Name>,
}

/// The query of a plan request: `encoding=binary` asks for the binary plan (§7.2).
#[derive(Deserialize)]
pub struct PlanQuery {
    encoding: Option<String>,
}

pub async fn plan(
    State(app): State<App>,
    NamePath((product, from, to)): NamePath<(Name, PlanFrom, Name)>,
    NameQuery(q): NameQuery<PlanQuery>,
) -> Result<Response> {
    let binary = match q.encoding.as_deref() {
        None | Some("json") => false,
        Some("binary") => true,
        Some(other) => {
            return Err(Error::BadRequest(format!(
                "encoding {other:?}: a plan is json or binary"
            )))
        }
    };
    let to = find_release(&app, &product, &to).await?;
    // A device on a version the server does not know gets what a fresh install needs,
    // as the update check promised it.
    let from = match from {
        PlanFrom::Nothing => None,
        PlanFrom::Version(v) => app.db.release(&product, &v).await?,
    };
    let plan = plan_for(&app, &product, from.as_ref(), &to).await?;
    let json = serde_json::to_vec(&plan)
        .map_err(|e| Error::Corrupt(format!("a plan does not serialise: {e}")))?;
    let download_bytes = plan.download_bytes;
    let (body, kind) = if binary {
        let b =
            crate::metadata::binary_plan(&app, &product, from.as_ref(), &to, plan, &json).await?;
        (b, BINARY_PLAN_TYPE)
    } else {
        (json.into(), "application/json")
    };
    app.metrics
        .plan_bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    let mut headers = vec![(header::CONTENT_TYPE, HeaderValue::from_static(kind))];
    if let Some(p) = app.fleet.product(&product).await? {
        // The dashboard's bytes served against full images count plans as devices fetch
        // them (downloads are by content and name no product). A failure here costs the
        // count only.
        let image = to.image_bytes.max(0) as u64;
        if let Err(e) = app.db.count_plan(p.id, download_bytes, image).await {
            tracing::warn!(error = %e, "counting a plan for the dashboard failed");
        }
        // Signed by the answer key, with the release key's delegation to it.
        if let Some(d) = &p.delegation {
            let message = plan_message(
                &product,
                from.as_ref().map(|r| r.version.as_str()),
                &to.version,
                &body,
            );
            let sig = hex::encode(app.answers.key.sign(&message));
            let delegation = format!("{}.{}", d.statement, d.signature);
            for (name, value) in [(SIGNATURE, sig), (DELEGATION, delegation)] {
                let value = HeaderValue::from_str(&value)
                    .map_err(|e| Error::Corrupt(format!("a plan header: {e}")))?;
                headers.push((header::HeaderName::from_static(name), value));
            }
        }
    }
    let mut r = body.into_response();
    r.headers_mut().extend(headers);
    Ok(r)
}

/// The media type of a binary plan.
const BINARY_PLAN_TYPE: &str = "application/vnd.deltaroot.plan";

/// The answer key's signature of a plan (hex), and the delegation to it.
const SIGNATURE: &str = "deltaroot-signature";
const DELEGATION: &str = "deltaroot-delegation";

/// The version a plan starts from: a name, or `-` for a device with nothing.
pub enum PlanFrom {
    Nothing,
    Version(Name),
}

impl<'de> Deserialize<'de> for PlanFrom {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        match String::deserialize(d)? {
            s if s == "-" => Ok(PlanFrom::Nothing),
            s => s
                .parse()
                .map(PlanFrom::Version)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// The query string of a check: `current=V&device=ID&result=R&attempted=V&pin=V`, each
/// optional, and `at=T&sig=S` from an enrolled device (`format::checkin`); others are
/// ignored.
#[derive(Deserialize)]
pub struct CheckQuery {
    current: Option<Name>,
    attempted: Option<Name>,
    pin: Option<Name>,
    device: Option<DeviceId>,
    result: Option<String>,
    at: Option<u64>,
    sig: Option<String>,
}

/// The device's signature of its check-in, if it sent one dated within
/// [`CHECKIN_SKEW_SECS`] of the server's time; the check-in writer verifies it
/// (`crate::checkins`).
fn proof(product: &Name, q: &CheckQuery, now: i64) -> Option<Proof> {
    let (Some(at), Some(sig)) = (q.at, q.sig.as_ref()) else {
        return None;
    };
    (now.max(0).abs_diff(at as i64) <= CHECKIN_SKEW_SECS).then(|| Proof {
        product: product.to_string(),
        result: q.result.clone(),
        pin: q.pin.as_ref().map(|p| p.to_string()),
        at,
        sig: sig.clone(),
    })
}

/// `POST /v1/products/{product}/devices/{device}/key`: enrolls the key a device signs its
/// check-ins with (the enroll scope).
pub async fn enroll(
    State(app): State<App>,
    Allowed(caller, _): Allowed<Enroll>,
    NamePath((product, device)): NamePath<(Name, DeviceId)>,
    JsonBody(req): JsonBody<EnrollRequest>,
) -> Result<Json<EnrollResponse>> {
    let key = PublicKey::from_text(&req.public_key)
        .map_err(|e| Error::BadRequest(format!("public_key: {e}")))?;
    let (id, _) = app
        .db
        .product(&product)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no product {product}")))?;
    app.db
        .enroll(&product, id, &device, &key.to_text(), &caller.name)
        .await?;
    tracing::info!(%product, device = %device, key = key.id(), by = caller.name, "device enrolled");
    Ok(Json(EnrollResponse {
        product,
        device: device.to_string(),
        key_id: key.id(),
    }))
}

pub async fn check(
    State(app): State<App>,
    NamePath((product, channel)): NamePath<(Name, Name)>,
    NameQuery(q): NameQuery<CheckQuery>,
) -> Result<Response> {
    let ask = Ask {
        current: q.current.as_deref(),
        attempted: q.attempted.as_deref(),
        pin: q.pin.as_deref(),
        device: q.device.as_deref(),
        result: q.result.as_deref().map(str::parse).transpose()?,
    };
    app.metrics.checks.fetch_add(1, Ordering::Relaxed);
    let p = app
        .fleet
        .product(&product)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no product {product}")))?;
    let ch = app.fleet.channel(p.id, &channel).await?;
    if ch.is_none() && ask.pin.is_none() {
        // A channel name the product does not have (a typo in the device's settings) is an
        // error naming the ones it has; a product with no channel yet offers nothing.
        let known = app.db.channel_names(p.id).await?;
        if !known.is_empty() {
            return Err(Error::NotFound(format!(
                "product {product} has no channel {channel} (its channels: {})",
                known.join(", ")
            )));
        }
    }
    let now = app.clock.now();
    let d = decide(&p, &channel, ch.as_deref(), &ask, now)?;
    if let Some(device) = ask.device {
        app.fleet.record(Report {
            proof: proof(&product, &q, now),
            checkin: CheckIn {
                signed: false,
                product_id: p.id,
                device_id: device.to_string(),
                channel: channel.to_string(),
                current: ask.current.map(str::to_string),
                result: ask.result,
                attempted: ask.attempted.map(str::to_string),
                at: now,
            },
        });
    }
    let mut paced = false;
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
            // A rollout paced by egress offers its release to the devices it admits.
            let admitted = match paced_by(ch.as_deref(), &ask, &target) {
                Some((rollout, budget)) => app.db.admit(rollout, ask.device, bytes, budget).await?,
                None => true,
            };
            paced = !admitted;
            if paced {
                app.metrics.checks_paced.fetch_add(1, Ordering::Relaxed);
            }
            admitted.then(|| UpdateOffer {
                version: target.version.clone(),
                download_bytes: bytes,
                image_bytes: target.image_bytes as u64,
                downgrade,
            })
        }
        None => None,
    };
    let next_check_secs = app.fleet.next_check_secs();
    // Checks that get the same answer within one second share its bytes, signed once.
    let key = CheckKey {
        product: Arc::as_ptr(&p) as usize,
        channel_state: ch.as_ref().map_or(0, |c| Arc::as_ptr(c) as usize),
        channel: channel.clone(),
        current: q.current.clone(),
        latest: d.latest.clone(),
        offer: update
            .as_ref()
            .map(|u| (u.version.clone(), u.download_bytes, u.downgrade.is_some())),
        paused: d.paused,
        paced,
        next_check_secs,
        second: now,
    };
    let body = app.fleet.answer(key, &p, ch.as_ref(), || {
        // What the device acts on: the same answer, signed and expiring, when the product's
        // release key delegated to this server's key.
        let signed = p.delegation.as_ref().map(|delegation| {
            let answer = Answer {
                product: product.clone(),
                channel: channel.clone(),
                current: q.current.clone(),
                latest: d.latest.clone(),
                offer: update.as_ref().map(|u| Offer {
                    version: u.version.clone(),
                    download_bytes: u.download_bytes,
                    image_bytes: u.image_bytes,
                    downgrade: u.downgrade.as_ref().and_then(|d| {
                        let b64 = base64::engine::general_purpose::STANDARD;
                        b64.decode(&d.statement).ok().map(|b| Hash::of(&b))
                    }),
                }),
                paused: d.paused,
                paced,
                next_check_secs,
                channel_serial: ch.as_ref().map_or(0, |c| c.row.serial),
                issued: 0,
                expires: 0,
            };
            app.answers.sign(answer, now, Some(delegation))
        });
        serde_json::to_vec(&CheckResponse {
            product: product.clone(),
            channel: channel.clone(),
            latest: d.latest.clone(),
            update: update.clone(),
            paused: d.paused,
            next_check_secs: Some(next_check_secs),
            paced,
            signed,
            rotations: p.rotations.clone(),
        })
        .map(Bytes::from)
        .map_err(|e| Error::Corrupt(format!("a check answer does not serialise: {e}")))
    })?;
    app.metrics
        .check_bytes
        .fetch_add(body.len() as u64, Ordering::Relaxed);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// `GET /v1/answer-key`: the key that signs this server's answers, for a publisher to
/// delegate to.
pub async fn answer_key(State(app): State<App>, _caller: Allowed<Publish>) -> Json<AnswerKey> {
    Json(app.answers.public())
}
