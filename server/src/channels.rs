//! Operator routes: promote a release to a channel (at once or in waves), pause and resume
//! it, roll it back with a signed downgrade, change a rollout's waves (share, steps, failure
//! limit, egress budget) after it started, and read channel
//! status, devices and the audit log. Reading needs a token with the read scope (publish and
//! operate include it), changing needs the operate scope, on the path's product; every change
//! is in the audit log under the token's name.

use axum::extract::State;
use axum::Json;
use deltaroot_format::api::{
    AuditEntry, ChannelStatus, PromoteRequest, RollbackRequest, RolloutRequest, RolloutStatus,
};
use deltaroot_format::{DeviceId, Name, PublicKey, SignedDowngrade};

use crate::api::extract::{Allowed, JsonBody, NamePath, NameQuery, Operate, Read};
use crate::db::{stored_name, DeviceRow, NewRollout, RolloutChange, RolloutState};
use crate::error::{Error, Result};
use crate::fleet::ProductView;
use crate::releases::find_release;
use crate::App;

/// A downgrade statement issued more than this far in the future is refused (clock skew).
const MAX_SKEW_SECS: i64 = 3600;

pub(crate) async fn product(app: &App, product: &Name) -> Result<std::sync::Arc<ProductView>> {
    // Operators read their own writes: no cached copy.
    app.fleet.invalidate(product, None);
    app.fleet
        .product(product)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no product {product}")))
}

fn percent(field: &str, v: f64) -> Result<f64> {
    if v.is_finite() && (0.0..=100.0).contains(&v) {
        Ok(v)
    } else {
        Err(Error::BadRequest(format!(
            "{field} must be between 0 and 100, not {v}"
        )))
    }
}

fn failure_rate(v: Option<f64>) -> Result<Option<f64>> {
    match v {
        Some(r) if !(r.is_finite() && (0.0..=1.0).contains(&r)) => Err(Error::BadRequest(format!(
            "max_failure_rate is a share between 0 and 1, not {r}"
        ))),
        v => Ok(v),
    }
}

/// An egress budget as stored: `Some(None)` for 0 (no budget); at most `i64::MAX` bytes.
fn budget(v: Option<u64>) -> Result<Option<Option<i64>>> {
    match v {
        None => Ok(None),
        Some(0) => Ok(Some(None)),
        Some(b) => i64::try_from(b).map(|b| Some(Some(b))).map_err(|_| {
            Error::BadRequest(format!(
                "max_bytes_per_hour {b} is more than this server counts"
            ))
        }),
    }
}

/// The status of one channel as operators see it.
pub(crate) async fn channel_status(
    app: &App,
    p: &ProductView,
    channel: &Name,
) -> Result<ChannelStatus> {
    let row =
        app.db.channel_state(p.id, channel).await?.ok_or_else(|| {
            Error::NotFound(format!("product {} has no channel {channel}", p.name))
        })?;
    let version_of = |id: i64| p.by_id.get(&id).map(|r| r.version.clone());
    let downgrade = match &row.downgrade {
        Some((s, _)) => Some(stored_name(
            "version",
            deltaroot_format::Downgrade::decode(s)
                .map_err(|e| Error::Corrupt(format!("downgrade of {channel}: {e}")))?
                .version,
        )?),
        None => None,
    };
    let rollout = match &row.rollout {
        Some(ro) => {
            // Only a release published and promoted while this request read can be missing.
            let version = version_of(ro.release_id).ok_or_else(|| {
                Error::Conflict(format!("{channel} changed while it was read: ask again"))
            })?;
            let (reports, failures) = app
                .db
                .reports(p.id, &version, ro.created_at, ro.signed_reports_only)
                .await?;
            let egress = match ro.max_bytes_per_hour {
                Some(_) => app.db.egress(ro.id).await?,
                None => Default::default(),
            };
            Some(RolloutStatus {
                id: ro.id,
                version,
                previous: ro.previous_release_id.and_then(version_of),
                floor: ro.floor_release_id.and_then(version_of),
                state: ro.state.as_str().to_string(),
                reason: ro.reason.clone(),
                percent: if ro.state == RolloutState::Stopped {
                    0.0
                } else {
                    ro.percent_at(app.clock.now())
                },
                start_percent: ro.start_percent,
                step_percent: ro.step_percent,
                step_secs: ro.step_secs as u64,
                max_failure_rate: ro.max_failure_rate,
                min_reports: ro.min_reports as u64,
                started_at: ro.started_at,
                reports,
                failures,
                max_bytes_per_hour: ro.max_bytes_per_hour.map(|b| b.max(0) as u64),
                egress_bytes_this_hour: egress.bytes_this_hour,
                devices_admitted: egress.devices,
                signed_reports_only: ro.signed_reports_only,
            })
        }
        None => None,
    };
    Ok(ChannelStatus {
        product: p.name.clone(),
        channel: channel.clone(),
        version: version_of(row.release_id),
        paused: row.paused,
        downgrade,
        rollout,
        updated_at: row.updated_at,
    })
}

/// After a change: this replica forgets its cached copy, and answers the new status.
async fn changed(app: &App, p: &ProductView, channel: &Name) -> Result<Json<ChannelStatus>> {
    app.fleet.invalidate(&p.name, Some(p.id));
    Ok(Json(channel_status(app, p, channel).await?))
}

pub async fn list(
    State(app): State<App>,
    _caller: Allowed<Read>,
    NamePath(p): NamePath<Name>,
) -> Result<Json<Vec<ChannelStatus>>> {
    let p = product(&app, &p).await?;
    let mut out = Vec::new();
    for c in app.db.channel_names(p.id).await? {
        out.push(channel_status(&app, &p, &stored_name("channel", c)?).await?);
    }
    Ok(Json(out))
}

pub async fn status(
    State(app): State<App>,
    _caller: Allowed<Read>,
    NamePath((p, channel)): NamePath<(Name, Name)>,
) -> Result<Json<ChannelStatus>> {
    let p = product(&app, &p).await?;
    Ok(Json(channel_status(&app, &p, &channel).await?))
}

pub async fn promote(
    State(app): State<App>,
    Allowed(caller, _): Allowed<Operate>,
    NamePath((p, channel)): NamePath<(Name, Name)>,
    JsonBody(req): JsonBody<PromoteRequest>,
) -> Result<Json<ChannelStatus>> {
    promote_as(&app, &p, &channel, req, &caller.name)
        .await
        .map(Json)
}

/// Promotes as `who` (a token's name, or a dashboard user's): the API route and the
/// dashboard's form both come here, after checking the operate right.
pub async fn promote_as(
    app: &App,
    p: &Name,
    channel: &Name,
    req: PromoteRequest,
    who: &str,
) -> Result<ChannelStatus> {
    let (app, channel, who) = (app.clone(), channel.clone(), who.to_string());
    let p = product(&app, p).await?;
    let start = percent("percent", req.percent.unwrap_or(100.0))?;
    let step = percent("step_percent", req.step_percent.unwrap_or(0.0))?;
    let step_secs = req.step_secs.unwrap_or(0);
    if step > 0.0 && step_secs == 0 {
        return Err(Error::BadRequest(
            "step_percent needs step_secs (how often to take a step)".into(),
        ));
    }
    failure_rate(req.max_failure_rate)?;
    let target = find_release(&app, &p.name, &req.version).await?;
    let floor = match &req.floor {
        Some(f) => {
            let f = find_release(&app, &p.name, f).await?;
            if f.created > target.created {
                return Err(Error::BadRequest(format!(
                    "floor {} is newer than {}",
                    f.version, target.version
                )));
            }
            Some(f)
        }
        None => None,
    };
    if let Some(cur) = app.db.channel_state(p.id, &channel).await? {
        if let Some(c) = p.by_id.get(&cur.release_id) {
            if target.created < c.created {
                return Err(Error::Conflict(format!(
                    "{} is older than {} on {channel}: roll back with a signed downgrade instead",
                    target.version, c.version
                )));
            }
        }
    }
    app.db
        .promote(
            p.id,
            &p.name,
            &channel,
            &NewRollout {
                release_id: target.id,
                version: target.version.to_string(),
                floor_release_id: floor.as_ref().map(|f| f.id),
                floor: floor.as_ref().map(|f| f.version.to_string()),
                percent: start,
                step_percent: step,
                step_secs: step_secs.min(i64::MAX as u64) as i64,
                max_failure_rate: req.max_failure_rate,
                min_reports: req.min_reports.unwrap_or(10).min(i64::MAX as u64) as i64,
                max_bytes_per_hour: budget(req.max_bytes_per_hour)?.flatten(),
                signed_reports_only: req.signed_reports_only,
            },
            &who,
        )
        .await?;
    tracing::info!(
        product = %p.name,
        %channel,
        version = %target.version,
        percent = start,
        by = who,
        "promoted"
    );
    changed(&app, &p, &channel).await.map(|Json(s)| s)
}

/// Pauses or resumes as `who` (the API routes and the dashboard's forms).
pub async fn set_paused(
    app: App,
    p: Name,
    channel: Name,
    who: String,
    paused: bool,
) -> Result<Json<ChannelStatus>> {
    let p = product(&app, &p).await?;
    if !app
        .db
        .set_paused(p.id, &p.name, &channel, paused, &who)
        .await?
    {
        return Err(Error::NotFound(format!(
            "product {} has no channel {channel}",
            p.name
        )));
    }
    tracing::info!(
        product = %p.name,
        %channel,
        paused,
        by = who,
        "channel paused or resumed"
    );
    changed(&app, &p, &channel).await
}

pub async fn pause(
    State(app): State<App>,
    Allowed(caller, _): Allowed<Operate>,
    NamePath((p, channel)): NamePath<(Name, Name)>,
) -> Result<Json<ChannelStatus>> {
    set_paused(app, p, channel, caller.name, true).await
}

pub async fn resume(
    State(app): State<App>,
    Allowed(caller, _): Allowed<Operate>,
    NamePath((p, channel)): NamePath<(Name, Name)>,
) -> Result<Json<ChannelStatus>> {
    set_paused(app, p, channel, caller.name, false).await
}

pub async fn rollback(
    State(app): State<App>,
    Allowed(caller, _): Allowed<Operate>,
    NamePath((p, channel)): NamePath<(Name, Name)>,
    JsonBody(req): JsonBody<RollbackRequest>,
) -> Result<Json<ChannelStatus>> {
    rollback_as(&app, &p, &channel, &req, &caller.name).await
}

/// Rolls `channel` back with the signed downgrade statement of `req`, verified against the
/// product's release key, as `who` (the API route and the dashboard's channels page).
pub async fn rollback_as(
    app: &App,
    p: &Name,
    channel: &Name,
    req: &RollbackRequest,
    who: &str,
) -> Result<Json<ChannelStatus>> {
    let channel = channel.clone();
    let p = product(app, p).await?;
    let key = PublicKey::from_text(&p.key)?;
    let signed =
        SignedDowngrade::from_offer(&req.downgrade, std::slice::from_ref(&key)).map_err(|e| {
            Error::BadRequest(format!(
                "{e} (it must be signed with the product's release key {})",
                key.id()
            ))
        })?;
    let s = signed.statement();
    if s.product != p.name || s.channel != channel {
        return Err(Error::BadRequest(format!(
            "the statement is for {}/{}, not {}/{channel}",
            s.product, s.channel, p.name
        )));
    }
    let now = app.clock.now();
    if s.issued as i64 > now + MAX_SKEW_SECS {
        return Err(Error::BadRequest(format!(
            "the statement is issued at {}, in the future (now {now})",
            s.issued
        )));
    }
    let target = find_release(app, &p.name, &s.version).await?;
    let cur = app.db.channel_state(p.id, &channel).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "product {} has no channel {channel} to roll back",
            p.name
        ))
    })?;
    if let Some(c) = p.by_id.get(&cur.release_id) {
        // A rollback goes to an older release; a newer one goes out by promotion, in waves.
        // Older as the releases list orders them: by creation, then by publication (two
        // releases built within one second).
        if (target.created, target.id) >= (c.created, c.id) {
            return Err(Error::Conflict(format!(
                "{channel} is on {}: a rollback goes to an older release, and {} is not older; \
                 promote it instead",
                c.version, target.version
            )));
        }
        if (s.issued as i64) < c.created {
            return Err(Error::BadRequest(format!(
                "the statement was issued before {} was created: devices would refuse it; sign a new one",
                c.version
            )));
        }
    }
    app.db
        .rollback(
            p.id,
            &p.name,
            &channel,
            target.id,
            &target.version,
            signed.bytes(),
            signed.signature(),
            who,
        )
        .await?;
    tracing::warn!(
        product = %p.name,
        %channel,
        version = %target.version,
        by = who,
        "channel rolled back"
    );
    changed(app, &p, &channel).await
}

pub async fn rollout(
    State(app): State<App>,
    Allowed(caller, _): Allowed<Operate>,
    NamePath((p, channel)): NamePath<(Name, Name)>,
    JsonBody(req): JsonBody<RolloutRequest>,
) -> Result<Json<ChannelStatus>> {
    change_rollout_as(&app, &p, &channel, req, &caller.name)
        .await
        .map(Json)
}

/// Changes the waves of a channel's rollout as `who` (the API route and the dashboard's
/// form both come here, after checking the operate right).
pub async fn change_rollout_as(
    app: &App,
    p: &Name,
    channel: &Name,
    req: RolloutRequest,
    who: &str,
) -> Result<ChannelStatus> {
    let p = product(app, p).await?;
    let change = RolloutChange {
        percent: req.percent.map(|v| percent("percent", v)).transpose()?,
        step_percent: req
            .step_percent
            .map(|v| percent("step_percent", v))
            .transpose()?,
        step_secs: req.step_secs.map(|v| v.min(i64::MAX as u64) as i64),
        max_failure_rate: failure_rate(req.max_failure_rate)?,
        min_reports: req.min_reports.map(|v| v.min(i64::MAX as u64) as i64),
        max_bytes_per_hour: budget(req.max_bytes_per_hour)?,
    };
    if change == RolloutChange::default() {
        return Err(Error::BadRequest(
            "nothing to change: give percent, step_percent, step_secs, max_failure_rate, \
             min_reports or max_bytes_per_hour"
                .into(),
        ));
    }
    if !app
        .db
        .change_rollout(p.id, &p.name, channel, &change, who)
        .await?
    {
        return Err(Error::NotFound(format!(
            "product {} has no rollout on channel {channel}",
            p.name
        )));
    }
    let s = changed(app, &p, channel).await?.0;
    tracing::info!(product = %p.name, %channel, by = who, "rollout changed");
    Ok(s)
}

pub async fn audit(
    State(app): State<App>,
    _caller: Allowed<Read>,
    NamePath(p): NamePath<Name>,
) -> Result<Json<Vec<AuditEntry>>> {
    let p = product(&app, &p).await?;
    let rows = app.db.audit(&p.name, 1000).await?;
    let entries = rows.into_iter().map(|r| {
        Ok(AuditEntry {
            at: r.at,
            who: r.who,
            product: stored_name("product", r.product)?,
            channel: r.channel.map(|c| stored_name("channel", c)).transpose()?,
            action: r.action,
            detail: serde_json::from_str(&r.detail).unwrap_or(serde_json::Value::Null),
        })
    });
    Ok(Json(entries.collect::<Result<_>>()?))
}

pub async fn device(
    State(app): State<App>,
    _caller: Allowed<Read>,
    NamePath((p, device)): NamePath<(Name, DeviceId)>,
) -> Result<Json<DeviceRow>> {
    let p = product(&app, &p).await?;
    app.db
        .device(p.id, &device)
        .await?
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("product {} has no device {device}", p.name)))
}

/// `?after=ID&limit=N&result=failed`: a page of devices by id.
#[derive(serde::Deserialize)]
pub struct DevicesQuery {
    after: Option<DeviceId>,
    limit: Option<u32>,
    result: Option<String>,
}

/// The most devices one page lists.
pub const DEVICES_PAGE: u32 = 1000;

pub async fn devices(
    State(app): State<App>,
    _caller: Allowed<Read>,
    NamePath(p): NamePath<Name>,
    NameQuery(q): NameQuery<DevicesQuery>,
) -> Result<Json<Vec<DeviceRow>>> {
    let p = product(&app, &p).await?;
    let result = q.result.as_deref().map(str::parse).transpose()?;
    let limit = q.limit.unwrap_or(DEVICES_PAGE).clamp(1, DEVICES_PAGE);
    let rows = app
        .db
        .devices(p.id, q.after.as_deref(), result, limit.into())
        .await?;
    Ok(Json(rows))
}
