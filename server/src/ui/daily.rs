//! What the dashboard draws from the daily rollups (`crate::db::daily`): the devices page's
//! stacked chart of devices per version over the last [`CHART_DAYS`] days, and the start
//! page's bytes served this week against full images. Both read rollup rows only; days are
//! UTC days by the server's clock.

use std::collections::HashMap;

use deltaroot_format::units::human_bytes;

use crate::client::when;
use crate::db::daily::day_of;
use crate::error::Result;
use crate::fleet::ProductView;
use crate::App;

/// Days the devices page's chart shows, today included.
pub const CHART_DAYS: i64 = 30;
/// Versions the chart names; the rest are drawn together as "other".
pub const CHART_VERSIONS: usize = 7;

const WIDTH: u32 = 640;
const HEIGHT: u32 = 220;
const LEFT: u32 = 48;
const BOTTOM: u32 = 24;
const TOP: u32 = 8;
/// One color a version, the last for "other".
const COLORS: [&str; CHART_VERSIONS + 1] = [
    "#1b6ca8", "#e07b00", "#2a9d4b", "#b8336a", "#6a4c93", "#8c6d1f", "#3d7e8c", "#888888",
];

/// One stacked piece of a day's bar.
pub struct Bar {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    pub color: &'static str,
    /// What a pointer over it shows: "DAY: N devices on VERSION".
    pub title: String,
}

pub struct Legend {
    pub name: String,
    pub color: &'static str,
}

/// A day of the table under the chart (the chart's numbers, for screen readers and copying).
pub struct DayRow {
    pub date: String,
    pub counts: Vec<u64>,
    pub total: u64,
}

/// The devices page's chart.
pub struct ShareChart {
    pub width: u32,
    pub height: u32,
    pub bars: Vec<Bar>,
    pub legend: Vec<Legend>,
    pub columns: Vec<String>,
    pub rows: Vec<DayRow>,
    /// The most devices seen on one day (the top of the scale).
    pub max: u64,
    pub first: String,
    pub last: String,
    /// Where the axes' labels go.
    pub axis_x: u32,
    pub axis_y: u32,
    pub desc: String,
}

/// `YYYY-MM-DD` of a UTC day.
pub fn date(day: i64) -> String {
    when(day * 86_400)[..10].to_string()
}

/// The chart of a product's last [`CHART_DAYS`] days, from `version_days`; `None` when no
/// device was seen in them.
pub async fn share_chart(app: &App, p: &ProductView) -> Result<Option<ShareChart>> {
    let today = day_of(app.clock.now());
    let first = today - CHART_DAYS + 1;
    let rows = app.db.version_days(p.id, first, today).await?;
    if rows.is_empty() {
        return Ok(None);
    }
    // The versions most seen over the window get names, in release order; the rest "other".
    let mut totals: HashMap<Option<String>, u64> = HashMap::new();
    for (_, v, n) in &rows {
        *totals.entry(v.clone()).or_default() += n;
    }
    let mut named: Vec<(Option<String>, u64)> = totals.into_iter().collect();
    named.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let other = named.len() > CHART_VERSIONS + 1;
    if other {
        named.truncate(CHART_VERSIONS);
    }
    let order = |v: &Option<String>| {
        let r = v.as_deref().and_then(|v| p.by_version.get(v));
        (v.is_some(), r.map(|r| (r.created, r.id)), v.clone())
    };
    named.sort_by_key(|(v, _)| order(v));
    let mut columns: Vec<String> = named
        .iter()
        .map(|(v, _)| v.clone().unwrap_or_else(|| "nothing yet".into()))
        .collect();
    if other {
        columns.push("other".into());
    }
    let column = |v: &Option<String>| {
        named
            .iter()
            .position(|(n, _)| n == v)
            .unwrap_or(columns.len() - 1)
    };
    let mut by_day: Vec<Vec<u64>> = vec![vec![0; columns.len()]; CHART_DAYS as usize];
    for (day, v, n) in &rows {
        by_day[(day - first) as usize][column(v)] += n;
    }
    let max = by_day
        .iter()
        .map(|d| d.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
        .max(1);
    let plot_h = HEIGHT - TOP - BOTTOM;
    let step = (WIDTH - LEFT) / CHART_DAYS as u32;
    let mut bars = Vec::new();
    let mut table = Vec::new();
    for (i, counts) in by_day.iter().enumerate() {
        let d = date(first + i as i64);
        let total: u64 = counts.iter().sum();
        if total == 0 {
            continue;
        }
        let mut below = 0u64;
        for (c, n) in counts.iter().enumerate() {
            if *n == 0 {
                continue;
            }
            let y0 = TOP + plot_h - (plot_h as u64 * below / max) as u32;
            below += n;
            let y1 = TOP + plot_h - (plot_h as u64 * below / max) as u32;
            bars.push(Bar {
                x: LEFT + i as u32 * step + 1,
                y: y1,
                width: step.saturating_sub(2).max(1),
                height: (y0 - y1).max(1),
                color: COLORS[c.min(COLORS.len() - 1)],
                title: format!(
                    "{d}: {n} device{} on {}",
                    if *n == 1 { "" } else { "s" },
                    columns[c]
                ),
            });
        }
        table.push(DayRow {
            date: d,
            counts: counts.clone(),
            total,
        });
    }
    let legend = columns
        .iter()
        .enumerate()
        .map(|(i, name)| Legend {
            name: name.clone(),
            color: COLORS[i.min(COLORS.len() - 1)],
        })
        .collect();
    let last_row = table.last().expect("a day with devices");
    let desc = format!(
        "Devices seen each day from {} to {}, stacked by the version they ran; on {}: {}.",
        date(first),
        date(today),
        last_row.date,
        columns
            .iter()
            .zip(&last_row.counts)
            .filter(|(_, n)| **n > 0)
            .map(|(v, n)| format!("{n} on {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Some(ShareChart {
        width: WIDTH,
        height: HEIGHT,
        bars,
        legend,
        columns,
        rows: table,
        max,
        first: date(first),
        last: date(today),
        axis_x: LEFT - 4,
        axis_y: HEIGHT - 6,
        desc,
    }))
}

/// The start page's week of a product: the plans devices fetched in the last 7 days (today
/// included), their bytes, and the full images of the releases they led to.
pub struct Week {
    pub updates: u64,
    pub served: String,
    pub images: String,
    pub ratio: String,
}

fn bytes(n: u64) -> String {
    format!("{} ({n} bytes)", human_bytes(n))
}

pub async fn served_this_week(app: &App, product_id: i64) -> Result<Week> {
    let today = day_of(app.clock.now());
    let s = app.db.served(product_id, today - 6, today).await?;
    Ok(Week {
        updates: s.plans,
        served: bytes(s.download_bytes),
        images: bytes(s.image_bytes),
        ratio: if s.image_bytes == 0 {
            "-".into()
        } else {
            super::release::share(s.download_bytes, s.image_bytes as i64)
        },
    })
}
