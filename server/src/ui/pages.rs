//! The dashboard's start page and a product's releases (with what each update costs to
//! download). A product's channels and the operator's forms are in [`super::channels`].

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use deltaroot_format::units::human_bytes;
use deltaroot_format::Name;
use serde::Deserialize;

use super::PageResult as Result;
use super::{html, redirect, Session, User};
use crate::access::Scope;
use crate::api::extract::{NamePath, NameQuery};
use crate::channels::{channel_status, product};
use crate::client::when;
use crate::db::stored_name;
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
