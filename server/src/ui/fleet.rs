//! The devices page (which versions the fleet runs, a chart of that over the last 30 days
//! from the daily rollup, devices by last report, a device by id) and the audit log page (filtered by product, operator and action).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use deltaroot_format::{DeviceId, Name};
use serde::Deserialize;

use super::{html, PageResult, Session, User};
use crate::access::Scope;
use crate::api::extract::{NamePath, NameQuery};
use crate::channels::{product, DEVICES_PAGE};
use crate::client::when;
use crate::db::{CheckInResult, DeviceRow};
use crate::App;

/// Audit lines one page shows.
pub const AUDIT_LINES: i64 = 200;

struct VersionLine {
    version: String,
    count: u64,
    share: String,
}

struct DeviceLine {
    id: String,
    channel: String,
    runs: String,
    attempt: String,
    seen: String,
}

struct ResultChoice {
    name: &'static str,
    selected: bool,
}

#[derive(askama::Template)]
#[template(path = "devices.html")]
struct Devices {
    user: Option<User>,
    product: Name,
    versions: Vec<VersionLine>,
    total: u64,
    chart: Option<super::daily::ShareChart>,
    id: String,
    results: Vec<ResultChoice>,
    devices: Vec<DeviceLine>,
    listed: String,
}

#[derive(Deserialize)]
pub struct DevicesQuery {
    id: Option<String>,
    result: Option<String>,
}

fn line(d: DeviceRow) -> DeviceLine {
    DeviceLine {
        id: d.device_id,
        channel: d.channel,
        runs: d.current.unwrap_or_else(|| "nothing yet".into()),
        attempt: match (d.attempted, d.result) {
            (Some(v), Some(r)) => format!("{v}: {r}"),
            (None, Some(r)) => r.to_string(),
            _ => "-".into(),
        },
        seen: when(d.seen_at),
    }
}

/// `GET /ui/products/{product}/devices?id=ID&result=failed`.
pub async fn devices(
    State(app): State<App>,
    s: Session,
    NamePath(product_name): NamePath<Name>,
    NameQuery(q): NameQuery<DevicesQuery>,
) -> PageResult<Response> {
    s.rights().require(Scope::Read, Some(&product_name))?;
    let p = product(&app, &product_name).await?;
    let counts = app.db.version_counts(p.id).await?;
    let total: u64 = counts.iter().map(|(_, n)| n).sum();
    let versions = counts
        .into_iter()
        .map(|(v, n)| VersionLine {
            version: v.unwrap_or_else(|| "nothing yet".into()),
            count: n,
            share: format!("{:.1} %", 100.0 * n as f64 / total.max(1) as f64),
        })
        .collect();
    let chart = super::daily::share_chart(&app, &p).await?;
    let id = q.id.unwrap_or_default().trim().to_string();
    let result: Option<CheckInResult> = match q.result.as_deref().map(str::trim) {
        None | Some("") | Some("any") => None,
        Some(r) => Some(r.parse()?),
    };
    let (devices, listed) = if !id.is_empty() {
        let id = DeviceId::new(id.clone())
            .map_err(|e| crate::error::Error::BadRequest(e.to_string()))?;
        match app.db.device(p.id, &id).await? {
            Some(d) => (vec![line(d)], format!("Device {id}.")),
            None => (Vec::new(), format!("No device {id} has checked in.")),
        }
    } else if let Some(r) = result {
        let rows = app
            .db
            .devices(p.id, None, Some(r), DEVICES_PAGE.into())
            .await?;
        let listed = if rows.is_empty() {
            format!("No device's last report is {r}.")
        } else {
            format!("Devices whose last report is {r} (at most {DEVICES_PAGE}).")
        };
        (rows.into_iter().map(line).collect(), listed)
    } else {
        (Vec::new(), String::new())
    };
    let chosen = result.map(|r| r.as_str()).unwrap_or("any");
    let results = ["any", "ok", "failed", "rolled-back"]
        .into_iter()
        .map(|name| ResultChoice {
            name,
            selected: name == chosen,
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        &Devices {
            user: Some((&s).into()),
            product: product_name,
            versions,
            total,
            chart,
            id,
            results,
            devices,
            listed,
        },
    ))
}

struct AuditLine {
    at: String,
    who: String,
    product: String,
    channel: String,
    action: String,
    detail: String,
}

#[derive(askama::Template)]
#[template(path = "audit.html")]
struct Audit {
    user: Option<User>,
    product: String,
    who: String,
    action: String,
    filtered: bool,
    limit: i64,
    lines: Vec<AuditLine>,
}

#[derive(Deserialize)]
pub struct AuditQuery {
    product: Option<String>,
    who: Option<String>,
    action: Option<String>,
}

/// `GET /ui/audit?product=P&who=W&action=A`: every product's changes, newest first.
pub async fn audit(
    State(app): State<App>,
    s: Session,
    NameQuery(q): NameQuery<AuditQuery>,
) -> PageResult<Response> {
    s.rights().require(Scope::Read, None)?;
    let field = |v: Option<String>| v.map(|s| s.trim().to_string()).unwrap_or_default();
    let (product, who, action) = (field(q.product), field(q.who), field(q.action));
    let some = |s: &str| (!s.is_empty()).then_some(s.to_string());
    let rows = app
        .db
        .audit_where(
            some(&product).as_deref(),
            some(&who).as_deref(),
            some(&action).as_deref(),
            AUDIT_LINES,
        )
        .await?;
    let lines = rows
        .into_iter()
        .map(|r| AuditLine {
            at: when(r.at),
            who: r.who,
            product: r.product,
            channel: r.channel.unwrap_or_else(|| "-".into()),
            action: r.action,
            detail: r.detail,
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        &Audit {
            user: Some((&s).into()),
            filtered: !(product.is_empty() && who.is_empty() && action.is_empty()),
            product,
            who,
            action,
            limit: AUDIT_LINES,
            lines,
        },
    ))
}
