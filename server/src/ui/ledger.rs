//! What updates cost, in bytes:
//!
//! - `GET /ui/products/{product}/ledger?page=N`: the savings ledger. For each release (newest
//!   first, [`LEDGER_PAGE`] a page) and each stored plan ending at it: the bytes a device
//!   downloads against the whole image, split by how each content is sent; and what moving
//!   today's fleet to the release costs: the devices on each version (one `GROUP BY` over the
//!   devices) times the plan from that version, the whole image where no plan is stored.
//! - `GET /ui/products/{product}/diff?from=A&to=B&q=…&page=N`: the files that differ between
//!   two releases' signed manifests, how the stored plan sends each and what it costs,
//!   largest first, [`DIFF_PAGE`] a page, filtered by a path substring.
//! - The savings chart of the releases page ([`chart`]): inline SVG, no script.
//!
//! Nothing here computes a plan: the pages show the plans the server holds.

use std::collections::HashMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use deltaroot_format::units::human_bytes;
use deltaroot_format::Name;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::Deserialize;

use super::release::{by_method, compare, sent_by, share, FileLine, MethodLine};
use super::{html, PageResult, Session, User};
use crate::access::Scope;
use crate::api::extract::{NamePath, NameQuery};
use crate::error::Error;
use crate::App;

/// Releases on one page of the ledger.
pub const LEDGER_PAGE: usize = 20;
/// Files on one page of the diff.
pub const DIFF_PAGE: usize = 200;

/// A byte count: shown for people, exact in a `<data value>` for machines.
pub(super) struct Bytes {
    pub human: String,
    pub exact: u64,
}

impl Bytes {
    fn of(n: u64) -> Bytes {
        Bytes {
            human: human_bytes(n),
            exact: n,
        }
    }
}

struct LedgerPlan {
    from: String,
    diff: Option<String>,
    download: Bytes,
    share: String,
    saved: String,
    methods: Vec<MethodLine>,
}

struct LedgerRelease {
    version: String,
    image: Bytes,
    plans: Vec<LedgerPlan>,
    fleet: Bytes,
    fleet_share: String,
    /// The devices counted at the whole image (no plan from their version), said in words;
    /// `none` when every device has a plan.
    unplanned: String,
}

struct VersionCount {
    version: String,
    devices: u64,
}

#[derive(askama::Template)]
#[template(path = "ledger.html")]
struct Ledger {
    user: Option<User>,
    product: Name,
    releases: Vec<LedgerRelease>,
    versions: Vec<VersionCount>,
    devices: u64,
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(Deserialize)]
pub struct PageQuery {
    page: Option<usize>,
}

/// The name of a plan's starting point.
fn from_name(v: Option<&str>) -> String {
    v.unwrap_or("nothing installed").to_string()
}

/// `GET /ui/products/{product}/ledger`.
pub async fn ledger(
    State(app): State<App>,
    s: Session,
    NamePath(product): NamePath<Name>,
    NameQuery(q): NameQuery<PageQuery>,
) -> PageResult<Response> {
    s.rights().require(Scope::Read, Some(&product))?;
    let all = crate::releases::list(&app, &product).await?;
    let (product_id, _) = app
        .db
        .product(&product)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no product {product}")))?;
    let version_of: HashMap<i64, &str> = all.iter().map(|r| (r.id, r.version.as_str())).collect();
    let id_of: HashMap<&str, i64> = all.iter().map(|r| (r.version.as_str(), r.id)).collect();
    // Today's fleet: devices by the version they run (None: nothing installed yet).
    let counts = app.db.version_counts(product_id).await?;
    let page = q.page.unwrap_or(0);
    let start = page.saturating_mul(LEDGER_PAGE).min(all.len());
    let end = (start + LEDGER_PAGE).min(all.len());
    let mut releases = Vec::with_capacity(end - start);
    for r in &all[start..end] {
        let image = r.image_bytes.max(0) as u64;
        let stored = app.db.plans_to(r.id).await?;
        let size_from: HashMap<Option<i64>, u64> = stored.iter().copied().collect();
        let mut plans = Vec::with_capacity(stored.len());
        for (from, bytes) in &stored {
            let methods = match app.db.plan(*from, r.id).await? {
                Some(p) => by_method(sent_by(&app, &p).await?.values()),
                None => Vec::new(),
            };
            let from_version = from.and_then(|id| version_of.get(&id).copied());
            plans.push(LedgerPlan {
                from: match from {
                    Some(_) => from_version.unwrap_or("?").to_string(),
                    None => from_name(None),
                },
                diff: from_version.map(str::to_string),
                download: Bytes::of(*bytes),
                share: share(*bytes, r.image_bytes),
                saved: human_bytes(image.saturating_sub(*bytes)),
                methods,
            });
        }
        let (mut cost, mut unplanned, mut unplanned_from) = (0u64, 0u64, Vec::new());
        for (v, n) in &counts {
            if v.as_deref() == Some(r.version.as_str()) {
                continue;
            }
            let from = match v {
                None => Some(None),
                Some(v) => id_of.get(v.as_str()).map(|id| Some(*id)),
            };
            match from.and_then(|f| size_from.get(&f)) {
                Some(bytes) => cost += n * bytes,
                None => {
                    cost += n * image;
                    unplanned += n;
                    unplanned_from.push(from_name(v.as_deref()));
                }
            }
        }
        let devices: u64 = counts.iter().map(|(_, n)| n).sum();
        releases.push(LedgerRelease {
            version: r.version.to_string(),
            image: Bytes::of(image),
            plans,
            fleet: Bytes::of(cost),
            fleet_share: share(cost, (devices * image).min(i64::MAX as u64) as i64),
            unplanned: match unplanned {
                0 => "none".into(),
                n => format!(
                    "{n} device{} on {}: no plan from there, so the whole image",
                    if n == 1 { "" } else { "s" },
                    unplanned_from.join(", ")
                ),
            },
        });
    }
    Ok(html(
        StatusCode::OK,
        &Ledger {
            user: Some((&s).into()),
            product,
            releases,
            devices: counts.iter().map(|(_, n)| n).sum(),
            versions: counts
                .into_iter()
                .map(|(v, n)| VersionCount {
                    version: from_name(v.as_deref()),
                    devices: n,
                })
                .collect(),
            prev: page.checked_sub(1),
            next: (end < all.len()).then_some(page + 1),
        },
    ))
}

#[derive(askama::Template)]
#[template(path = "diff.html")]
struct Diff {
    user: Option<User>,
    product: Name,
    from: String,
    to: String,
    /// Why there is no comparison (from is newer than to, or the same release).
    problem: Option<String>,
    /// The comparison the other way round, when `from` is newer.
    swapped: Option<String>,
    planned: bool,
    download: Option<Bytes>,
    image: Bytes,
    added: usize,
    removed: usize,
    changed: usize,
    methods: Vec<MethodLine>,
    q: String,
    files: Vec<FileLine>,
    first: usize,
    last: usize,
    total: usize,
    prev: Option<String>,
    next: Option<String>,
}

#[derive(Deserialize)]
pub struct DiffQuery {
    from: Option<Name>,
    to: Option<Name>,
    #[serde(default)]
    q: String,
    page: Option<usize>,
}

/// This diff's URL (query escaped) at `page`.
fn diff_url(product: &Name, from: &str, to: &str, q: &str, page: usize) -> String {
    let mut u = format!("/ui/products/{product}/diff?from={from}&to={to}");
    if !q.is_empty() {
        u.push_str(&format!("&q={}", utf8_percent_encode(q, NON_ALPHANUMERIC)));
    }
    if page > 0 {
        u.push_str(&format!("&page={page}"));
    }
    u
}

/// `GET /ui/products/{product}/diff?from=A&to=B`.
pub async fn diff(
    State(app): State<App>,
    s: Session,
    NamePath(product): NamePath<Name>,
    NameQuery(query): NameQuery<DiffQuery>,
) -> PageResult<Response> {
    s.rights().require(Scope::Read, Some(&product))?;
    let (Some(from), Some(to)) = (query.from, query.to) else {
        return Err(Error::BadRequest("name two releases: ?from=VERSION&to=VERSION".into()).into());
    };
    let all = crate::releases::list(&app, &product).await?;
    let find = |v: &Name| {
        all.iter()
            .position(|r| r.version == *v)
            .ok_or_else(|| Error::NotFound(format!("product {product} has no release {v}")))
    };
    let (at_from, at_to) = (find(&from)?, find(&to)?);
    let (old, new) = (&all[at_from], &all[at_to]);
    let q = query.q.trim().to_string();
    let mut page = Diff {
        user: Some((&s).into()),
        product: product.clone(),
        from: from.to_string(),
        to: to.to_string(),
        problem: None,
        swapped: None,
        planned: false,
        download: None,
        image: Bytes::of(new.image_bytes.max(0) as u64),
        added: 0,
        removed: 0,
        changed: 0,
        methods: Vec::new(),
        q: q.clone(),
        files: Vec::new(),
        first: 0,
        last: 0,
        total: 0,
        prev: None,
        next: None,
    };
    // The list is newest first: a smaller position is a newer release.
    if at_from == at_to {
        page.problem = Some(format!(
            "{from} and {to} are the same release: nothing differs."
        ));
        return Ok(html(StatusCode::BAD_REQUEST, &page));
    }
    if at_from < at_to {
        page.problem = Some(format!(
            "{from} is newer than {to}: devices update from an older release to a newer one."
        ));
        page.swapped = Some(diff_url(&product, &to, &from, "", 0));
        return Ok(html(StatusCode::BAD_REQUEST, &page));
    }
    let d = compare(&app, &product, old, new).await?;
    page.planned = d.planned;
    page.download = app.db.plan_size(Some(old.id), new.id).await?.map(Bytes::of);
    page.added = d.added;
    page.removed = d.removed;
    page.changed = d.changed;
    page.methods = d.methods;
    let mut lines = d.lines;
    lines.retain(|f| q.is_empty() || f.path.contains(q.as_str()));
    page.total = lines.len();
    let n = query.page.unwrap_or(0);
    let start = n.saturating_mul(DIFF_PAGE).min(lines.len());
    let end = (start + DIFF_PAGE).min(lines.len());
    page.first = start + 1;
    page.last = end;
    page.prev = n
        .checked_sub(1)
        .map(|p| diff_url(&product, &from, &to, &q, p));
    page.next = (end < lines.len()).then(|| diff_url(&product, &from, &to, &q, n + 1));
    page.files = lines.drain(start..end).collect();
    Ok(html(StatusCode::OK, &page))
}

/// One release in the savings chart.
pub(super) struct Bar {
    pub version: String,
    /// Left edge of the release's slot, and the bars' width.
    pub x: u32,
    pub width: u32,
    /// The whole image's bar: top and height.
    pub image_y: u32,
    pub image_h: u32,
    /// The download's bar (none without a plan from the release before; at least 2 units
    /// high when the download is not nothing, so that a small one still shows).
    pub download_y: u32,
    pub download_h: u32,
    /// The download's share of the image, written above the bars ("-" without a plan).
    pub share: String,
    pub label: String,
}

/// The savings chart: its size, and its bars.
pub(super) struct Chart {
    pub width: u32,
    pub height: u32,
    /// Where the versions are written, below the bars.
    pub baseline: u32,
    pub bars: Vec<Bar>,
}

/// Room above the bars (for the shares), the bars' height, and each release's slot width,
/// in the chart's units.
const TOP: u32 = 18;
const PLOT: u32 = 160;
const SLOT: u32 = 64;

/// The chart of `points` (oldest first): version, whole image, download from the release
/// before; bars scaled to the largest image.
pub(super) fn chart(points: &[(String, u64, Option<u64>)]) -> Chart {
    let max = points
        .iter()
        .map(|(_, i, d)| (*i).max(d.unwrap_or(0)))
        .max()
        .unwrap_or(0)
        .max(1);
    let h = |v: u64| ((v as u128 * PLOT as u128) / max as u128) as u32;
    let bars = points
        .iter()
        .enumerate()
        .map(|(i, (version, image, download))| {
            let ih = h(*image);
            let dh = match download {
                Some(0) | None => 0,
                Some(d) => h(*d).max(2),
            };
            let share = download.map(|d| 100.0 * d as f64 / (*image).max(1) as f64);
            Bar {
                version: version.clone(),
                x: i as u32 * SLOT + 8,
                width: SLOT - 16,
                image_y: TOP + PLOT - ih,
                image_h: ih,
                download_y: TOP + PLOT - dh,
                download_h: dh,
                share: share
                    .map(|s| format!("{s:.1} %"))
                    .unwrap_or_else(|| "-".into()),
                label: match (download, share) {
                    (Some(d), Some(s)) => format!(
                        "{version}: {} of {} ({s:.1} %)",
                        human_bytes(*d),
                        human_bytes(*image),
                    ),
                    _ => format!("{version}: no plan from the release before"),
                },
            }
        })
        .collect();
    Chart {
        width: (points.len() as u32 * SLOT).max(SLOT),
        height: TOP + PLOT + 20,
        baseline: TOP + PLOT + 14,
        bars,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_scales_to_the_largest_image_and_shows_small_downloads() {
        let c = chart(&[
            ("1.0".into(), 1000, None),
            ("2.0".into(), 2000, Some(1000)),
            ("3.0".into(), 2000, Some(1)),
        ]);
        let bars: Vec<_> = c
            .bars
            .iter()
            .map(|b| (b.image_h, b.download_h, b.share.as_str()))
            .collect();
        assert_eq!(bars, [(80, 0, "-"), (160, 80, "50.0 %"), (160, 2, "0.1 %")]);
        assert_eq!(c.bars[1].image_y, TOP);
        assert_eq!(c.bars[2].download_y, TOP + PLOT - 2);
        assert_eq!(c.bars[0].label, "1.0: no plan from the release before");
        assert_eq!(c.bars[1].label, "2.0: 1.0 kB of 2.0 kB (50.0 %)");
    }

    #[test]
    fn diff_urls_escape_the_search() {
        let p = Name::new("product", "demo".to_string()).unwrap();
        assert_eq!(
            diff_url(&p, "1.0", "2.0", "usr/lib x&y", 2),
            "/ui/products/demo/diff?from=1.0&to=2.0&q=usr%2Flib%20x%26y&page=2"
        );
        assert_eq!(
            diff_url(&p, "1.0", "2.0", "", 0),
            "/ui/products/demo/diff?from=1.0&to=2.0"
        );
    }
}
