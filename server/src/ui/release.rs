//! `GET /ui/products/{product}/releases/{version}`: one release: what each stored plan to it
//! costs, and against the release before it, which files changed, how each is sent and what
//! it costs (largest first, searchable).

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use deltaroot_format::units::human_bytes;
use deltaroot_format::{Fetch, Hash, Method, Name};
use serde::Deserialize;

use super::{html, PageResult, Session, User};
use crate::access::Scope;
use crate::api::extract::{NamePath, NameQuery};
use crate::client::when;
use crate::error::Error;
use crate::releases::load_manifest;
use crate::App;

/// Files listed at most (the rest are counted).
pub const MAX_FILES: usize = 500;

struct PlanLine {
    from: String,
    bytes: String,
    share: String,
}

struct MethodLine {
    name: String,
    files: u64,
    bytes: String,
}

struct FileLine {
    path: String,
    change: &'static str,
    size: String,
    method: String,
    cost: String,
}

#[derive(askama::Template)]
#[template(path = "release.html")]
struct ReleasePage {
    user: Option<User>,
    product: Name,
    version: Name,
    created: String,
    by: String,
    entries: i64,
    image: String,
    plans: Vec<PlanLine>,
    before: Option<String>,
    added: usize,
    removed: usize,
    changed: usize,
    methods: Vec<MethodLine>,
    q: String,
    files: Vec<FileLine>,
    shown: usize,
    total: usize,
}

#[derive(Deserialize)]
pub struct Search {
    q: Option<String>,
}

fn share(bytes: u64, of: i64) -> String {
    format!("{:.1} %", 100.0 * bytes as f64 / of.max(1) as f64)
}

pub async fn release(
    State(app): State<App>,
    s: Session,
    NamePath((product, version)): NamePath<(Name, Name)>,
    NameQuery(search): NameQuery<Search>,
) -> PageResult<Response> {
    s.rights().require(Scope::Read, Some(&product))?;
    let all = crate::releases::list(&app, &product).await?;
    let at = all
        .iter()
        .position(|x| x.version == version)
        .ok_or_else(|| Error::NotFound(format!("product {product} has no release {version}")))?;
    let r = &all[at];
    let version_of: HashMap<i64, String> =
        all.iter().map(|r| (r.id, r.version.to_string())).collect();
    let plans = app
        .db
        .plans_to(r.id)
        .await?
        .into_iter()
        .map(|(from, bytes)| PlanLine {
            from: match from {
                Some(id) => version_of.get(&id).cloned().unwrap_or_else(|| "?".into()),
                None => "nothing installed".into(),
            },
            bytes: human_bytes(bytes),
            share: share(bytes, r.image_bytes),
        })
        .collect();
    // The release before: the next older in the list (newest first).
    let before = all.get(at + 1).cloned();
    let q = search.q.unwrap_or_default();
    let mut page = ReleasePage {
        user: Some((&s).into()),
        product: product.clone(),
        version: version.clone(),
        created: when(r.created),
        by: r.published_by.clone(),
        entries: r.entries,
        image: human_bytes(r.image_bytes.max(0) as u64),
        plans,
        before: before.as_ref().map(|b| b.version.to_string()),
        added: 0,
        removed: 0,
        changed: 0,
        methods: Vec::new(),
        q: q.clone(),
        files: Vec::new(),
        shown: 0,
        total: 0,
    };
    let Some(before) = before else {
        return Ok(html(StatusCode::OK, &page));
    };
    let new = load_manifest(&app, &product, r).await?;
    let old = load_manifest(&app, &product, &before).await?;
    let files = |m: &deltaroot_format::Manifest| -> BTreeMap<String, (Hash, u64)> {
        m.entries
            .iter()
            .filter_map(|e| e.file().map(|f| (e.path().to_string(), f)))
            .collect()
    };
    let (old_files, new_files) = (files(old.manifest()), files(new.manifest()));
    // How each target is sent from the release before, and what it costs.
    let plan = app.db.plan(Some(before.id), r.id).await?;
    let mut sent: HashMap<Hash, (Fetch, u64)> = HashMap::new();
    if let Some(plan) = &plan {
        for (item, cost) in plan.items.iter().zip(plan.item_costs()) {
            sent.insert(item.target, (item.fetch.clone(), cost));
        }
    }
    let pairs: Vec<(Hash, Hash)> = sent
        .iter()
        .filter_map(|(t, (f, _))| match f {
            Fetch::Delta { source, .. } => Some((*source, *t)),
            Fetch::Object { .. } => None,
        })
        .collect();
    let methods = app.db.delta_methods(&pairs).await?;
    let how = |target: &Hash| -> (String, Option<u64>) {
        match sent.get(target) {
            Some((Fetch::Object { .. }, cost)) => ("whole (zstd)".into(), Some(*cost)),
            Some((Fetch::Delta { source, .. }, cost)) => (
                methods
                    .get(&(*source, *target))
                    .and_then(|m| Method::from_u8(*m))
                    .map(|m| format!("delta: {}", m.name()))
                    .unwrap_or_else(|| "delta".into()),
                Some(*cost),
            ),
            None if plan.is_some() => ("on the device already".into(), None),
            None => ("no plan yet".into(), None),
        }
    };
    let mut by_method: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut lines: Vec<(u64, FileLine)> = Vec::new();
    for (path, (hash, size)) in &new_files {
        let change = match old_files.get(path) {
            None => "added",
            Some((h, _)) if h != hash => "changed",
            Some(_) => continue,
        };
        if change == "added" {
            page.added += 1;
        } else {
            page.changed += 1;
        }
        let (method, cost) = how(hash);
        if let Some(c) = cost {
            let m = by_method.entry(method.clone()).or_default();
            m.0 += 1;
            m.1 += c;
        }
        lines.push((
            *size,
            FileLine {
                path: path.clone(),
                change,
                size: human_bytes(*size),
                method,
                cost: cost.map(human_bytes).unwrap_or_else(|| "-".into()),
            },
        ));
    }
    for (path, (_, size)) in &old_files {
        if !new_files.contains_key(path) {
            page.removed += 1;
            lines.push((
                *size,
                FileLine {
                    path: path.clone(),
                    change: "removed",
                    size: human_bytes(*size),
                    method: "-".into(),
                    cost: "-".into(),
                },
            ));
        }
    }
    let mut by_cost: Vec<_> = by_method.into_iter().collect();
    by_cost.sort_by_key(|(_, (_, bytes))| std::cmp::Reverse(*bytes));
    page.methods = by_cost
        .into_iter()
        .map(|(name, (files, bytes))| MethodLine {
            name,
            files,
            bytes: human_bytes(bytes),
        })
        .collect();
    let needle = q.trim();
    lines.retain(|(_, f)| needle.is_empty() || f.path.contains(needle));
    lines.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.path.cmp(&b.1.path)));
    page.total = lines.len();
    page.files = lines.into_iter().take(MAX_FILES).map(|(_, f)| f).collect();
    page.shown = page.files.len();
    Ok(html(StatusCode::OK, &page))
}
