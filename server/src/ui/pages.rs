//! The dashboard's pages and forms: products, a product's releases (with what each update
//! costs to download), its channels with the operator's actions. Every page takes a
//! [`Session`]; every form checks the session's CSRF token, then the user's role, and goes
//! through the same functions as the API (`crate::channels`), so the audit log records the
//! user as `user:NAME`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Form;
use deltaroot_format::api::{PromoteRequest, RollbackRequest};
use deltaroot_format::units::human_bytes;
use deltaroot_format::Name;
use serde::Deserialize;

use super::{html, redirect, CsrfForm, Session, User};
use super::{PageError, PageResult as Result};
use crate::access::Scope;
use crate::api::extract::{NamePath, NameQuery};
use crate::channels::{channel_status, product, promote_as, rollback_as, set_paused};
use crate::client::when;
use crate::db::stored_name;
use crate::error::Error;
use crate::App;

/// Releases on one page of the releases list.
pub const RELEASES_PAGE: usize = 50;

struct ChannelGlance {
    name: String,
    version: String,
    state: String,
    failures: String,
}

struct ProductGlance {
    name: String,
    newest: String,
    devices: u64,
    share: String,
    week: super::daily::Week,
    channels: Vec<ChannelGlance>,
}

#[derive(askama::Template)]
#[template(path = "home.html")]
struct Home {
    user: Option<User>,
    products: Vec<ProductGlance>,
}

/// Products on the start page at most (the rest by their pages).
pub const HOME_PRODUCTS: usize = 50;

/// `GET /ui/`: every product at a glance: its newest release, each channel's release and
/// rollout with its failure rate, which versions its devices run, and the bytes served this
/// week against what full images would have cost.
pub async fn home(State(app): State<App>, s: Option<Session>) -> Result<Response> {
    let Some(s) = s else {
        return Ok(redirect("/ui/login"));
    };
    let rights = s.rights();
    let mut products = Vec::new();
    for name in app
        .db
        .product_names()
        .await?
        .into_iter()
        .take(HOME_PRODUCTS)
    {
        let name = stored_name("product", name)?;
        if rights.require(Scope::Read, Some(&name)).is_err() {
            continue;
        }
        let p = product(&app, &name).await?;
        let newest = p
            .by_id
            .values()
            .max_by_key(|r| (r.created, r.id))
            .map(|r| format!("{} ({})", r.version, when(r.created)))
            .unwrap_or_else(|| "none".into());
        let counts = app.db.version_counts(p.id).await?;
        let devices: u64 = counts.iter().map(|(_, n)| n).sum();
        let share = counts
            .iter()
            .take(4)
            .map(|(v, n)| {
                format!(
                    "{:.0} % on {}",
                    100.0 * *n as f64 / devices.max(1) as f64,
                    v.as_deref().unwrap_or("nothing")
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let mut channels = Vec::new();
        for c in app.db.channel_names(p.id).await? {
            let st = channel_status(&app, &p, &stored_name("channel", c)?).await?;
            let (state, failures) = match &st.rollout {
                Some(r) => (
                    format!("{} at {:.0} %", r.state, r.percent),
                    if r.reports == 0 {
                        "no reports yet".to_string()
                    } else {
                        format!(
                            "{:.1} % ({} of {})",
                            100.0 * r.failures as f64 / r.reports as f64,
                            r.failures,
                            r.reports
                        )
                    },
                ),
                None if st.downgrade.is_some() => ("rolled back".into(), "-".into()),
                None => ("all devices".into(), "-".into()),
            };
            channels.push(ChannelGlance {
                name: st.channel.to_string(),
                version: st.version.map(|v| v.to_string()).unwrap_or("-".into()),
                state: if st.paused {
                    format!("paused; {state}")
                } else {
                    state
                },
                failures,
            });
        }
        products.push(ProductGlance {
            name: name.to_string(),
            newest,
            devices,
            share,
            week: super::daily::served_this_week(&app, p.id).await?,
            channels,
        });
    }
    Ok(html(
        StatusCode::OK,
        &Home {
            user: Some((&s).into()),
            products,
        },
    ))
}

struct ReleaseLine {
    version: String,
    created: String,
    by: String,
    entries: i64,
    image: String,
    download: String,
}

#[derive(askama::Template)]
#[template(path = "releases.html")]
struct Releases {
    user: Option<User>,
    product: Name,
    rows: Vec<ReleaseLine>,
    chart: super::ledger::Chart,
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(Deserialize)]
pub struct PageQuery {
    page: Option<usize>,
}

/// `GET /ui/products/{product}/releases?page=N`: newest first, with the download a device on
/// the release before needs (from the stored plan, when there is one), and the page's
/// releases charted oldest first: that download against the whole image.
pub async fn releases(
    State(app): State<App>,
    s: Session,
    NamePath(product_name): NamePath<Name>,
    NameQuery(q): NameQuery<PageQuery>,
) -> Result<Response> {
    s.rights().require(Scope::Read, Some(&product_name))?;
    let all = crate::releases::list(&app, &product_name).await?;
    let page = q.page.unwrap_or(0);
    let start = page.saturating_mul(RELEASES_PAGE).min(all.len());
    let end = (start + RELEASES_PAGE).min(all.len());
    let mut rows = Vec::with_capacity(end - start);
    let mut points = Vec::with_capacity(end - start);
    for (i, r) in all.iter().enumerate().take(end).skip(start) {
        let before = all.get(i + 1);
        let size = match before {
            Some(b) => app.db.plan_size(Some(b.id), r.id).await?,
            None => None,
        };
        points.push((r.version.to_string(), r.image_bytes.max(0) as u64, size));
        let download = match before {
            Some(b) => match size {
                Some(n) => format!(
                    "{} from {} ({:.1} % of the image)",
                    human_bytes(n),
                    b.version,
                    100.0 * n as f64 / (r.image_bytes.max(1) as f64)
                ),
                None => format!("no plan from {} yet", b.version),
            },
            None => "first release".into(),
        };
        rows.push(ReleaseLine {
            version: r.version.to_string(),
            created: when(r.created),
            by: r.published_by.clone(),
            entries: r.entries,
            image: human_bytes(r.image_bytes.max(0) as u64),
            download,
        });
    }
    Ok(html(
        StatusCode::OK,
        &Releases {
            user: Some((&s).into()),
            product: product_name,
            rows,
            chart: super::ledger::chart(&{
                points.reverse();
                points
            }),
            prev: page.checked_sub(1),
            next: (end < all.len()).then_some(page + 1),
        },
    ))
}

struct ChannelLine {
    name: String,
    version: String,
    paused: bool,
    rollout: String,
}

#[derive(askama::Template)]
#[template(path = "channels.html")]
struct Channels {
    user: Option<User>,
    product: Name,
    channels: Vec<ChannelLine>,
    versions: Vec<String>,
    can_operate: bool,
    role: String,
    csrf: String,
    notice: Option<String>,
}

#[derive(Deserialize)]
pub struct NoticeQuery {
    done: Option<String>,
}

/// `GET /ui/products/{product}/channels`: each channel, its rollout, and (for operators)
/// pause, resume and promote.
pub async fn channels(
    State(app): State<App>,
    s: Session,
    NamePath(product_name): NamePath<Name>,
    NameQuery(q): NameQuery<NoticeQuery>,
) -> Result<Response> {
    let rights = s.rights();
    rights.require(Scope::Read, Some(&product_name))?;
    let p = product(&app, &product_name).await?;
    let mut channels = Vec::new();
    for c in app.db.channel_names(p.id).await? {
        let st = channel_status(&app, &p, &stored_name("channel", c)?).await?;
        let rollout = match &st.rollout {
            Some(r) => format!(
                "Rollout of {}: {}, offered to {:.1} % of devices ({} reports, {} failures){}",
                r.version,
                r.state,
                r.percent,
                r.reports,
                r.failures,
                r.reason
                    .as_deref()
                    .map(|w| format!("; {w}"))
                    .unwrap_or_default()
            ),
            None => match &st.downgrade {
                Some(d) => format!("Rolled back to {d} by a signed downgrade."),
                None => "Every device is offered it.".into(),
            },
        };
        channels.push(ChannelLine {
            name: st.channel.to_string(),
            version: st.version.map(|v| v.to_string()).unwrap_or("-".into()),
            paused: st.paused,
            rollout,
        });
    }
    let mut versions: Vec<_> = p.by_version.values().collect();
    versions.sort_by_key(|r| std::cmp::Reverse((r.created, r.id)));
    let notice = q.done.map(|d| match d.as_str() {
        "promote" => "Promoted.".to_string(),
        "pause" => "Paused.".to_string(),
        "resume" => "Resumed.".to_string(),
        "rollback" => "Rolled back with the signed downgrade statement.".to_string(),
        _ => "Done.".to_string(),
    });
    Ok(html(
        StatusCode::OK,
        &Channels {
            user: Some((&s).into()),
            product: product_name.clone(),
            channels,
            versions: versions.iter().map(|r| r.version.to_string()).collect(),
            can_operate: rights.require(Scope::Operate, Some(&product_name)).is_ok(),
            role: s.role.to_string(),
            csrf: s.csrf.clone(),
            notice,
        },
    ))
}

/// A form's CSRF token must be the session's, then the user must operate the product.
fn may_operate(s: &Session, csrf: &str, product: &Name) -> Result<()> {
    s.check_csrf(csrf)?;
    Ok(s.rights().require(Scope::Operate, Some(product))?)
}

fn back_to_channels(product: &Name, done: &str) -> Response {
    redirect(&format!("/ui/products/{product}/channels?done={done}"))
}

#[derive(Deserialize)]
pub struct PromoteForm {
    #[serde(default)]
    csrf: String,
    channel: Name,
    version: Name,
    percent: f64,
    #[serde(default)]
    step_percent: Option<f64>,
    #[serde(default)]
    step_secs: Option<u64>,
    #[serde(default, deserialize_with = "empty_is_none")]
    max_failure_rate: Option<f64>,
}

/// An empty number field is no value.
fn empty_is_none<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<f64>, D::Error> {
    let s: Option<String> = Option::deserialize(d)?;
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// `POST /ui/products/{product}/promote`.
pub async fn promote(
    State(app): State<App>,
    s: Session,
    NamePath(product_name): NamePath<Name>,
    Form(f): Form<PromoteForm>,
) -> Result<Response> {
    may_operate(&s, &f.csrf, &product_name)?;
    let req = PromoteRequest {
        version: f.version,
        percent: Some(f.percent),
        step_percent: f.step_percent.filter(|v| *v > 0.0),
        step_secs: f.step_secs.filter(|v| *v > 0),
        floor: None,
        max_failure_rate: f.max_failure_rate,
        min_reports: None,
    };
    promote_as(&app, &product_name, &f.channel, req, &s.who()).await?;
    Ok(back_to_channels(&product_name, "promote"))
}

/// `POST /ui/products/{product}/channels/{channel}/pause|resume`.
pub async fn pause_or_resume(
    State(app): State<App>,
    s: Session,
    NamePath((product_name, channel, action)): NamePath<(Name, Name, String)>,
    Form(f): Form<CsrfForm>,
) -> Result<Response> {
    may_operate(&s, &f.csrf, &product_name)?;
    let paused = match action.as_str() {
        "pause" => true,
        "resume" => false,
        other => return Err(PageError(Error::NotFound(format!("no action {other:?}")))),
    };
    let _ = set_paused(app, product_name.clone(), channel, s.who(), paused).await?;
    Ok(back_to_channels(&product_name, &action))
}

#[derive(Deserialize)]
pub struct RollbackForm {
    #[serde(default)]
    csrf: String,
    channel: Name,
    /// The JSON `deltaroot-server rollback … --out FILE` writes.
    #[serde(default)]
    statement: String,
}

/// `POST /ui/products/{product}/rollback`: rolls a channel back with a downgrade statement
/// signed offline (`deltaroot-server rollback … --key K --out FILE`), verified exactly as
/// the API's `POST …/rollback` verifies it (the same function).
pub async fn rollback(
    State(app): State<App>,
    s: Session,
    NamePath(product_name): NamePath<Name>,
    Form(f): Form<RollbackForm>,
) -> Result<Response> {
    may_operate(&s, &f.csrf, &product_name)?;
    let req: RollbackRequest = serde_json::from_str(f.statement.trim()).map_err(|e| {
        Error::BadRequest(format!(
            "the statement is not what `deltaroot-server rollback … --out FILE` writes: {e}"
        ))
    })?;
    let _ = rollback_as(&app, &product_name, &f.channel, &req, &s.who()).await?;
    Ok(back_to_channels(&product_name, "rollback"))
}
