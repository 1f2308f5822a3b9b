//! `GET /ui/products/{product}/releases/{version}`: one release: what each stored plan to it
//! costs, and against the release before it, which files changed, how each is sent and what
//! it costs (largest first, searchable). The comparison of two releases ([`compare`]) and
//! the split of a plan by method ([`sent_by`]) serve the ledger and diff pages too.

use std::collections::{BTreeMap, HashMap};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use deltaroot_format::units::human_bytes;
use deltaroot_format::{Fetch, Hash, Method, Name, Plan};
use serde::Deserialize;

use super::{html, PageResult, Session, User};
use crate::access::Scope;
use crate::api::extract::{NamePath, NameQuery};
use crate::client::when;
use crate::db::ReleaseRow;
use crate::error::{Error, Result};
use crate::releases::load_manifest;
use crate::App;

/// Files listed at most (the rest are counted).
pub const MAX_FILES: usize = 500;

struct PlanLine {
    from: String,
    /// The version it starts from, for the link to the file-by-file diff.
    diff: Option<String>,
    bytes: String,
    share: String,
}

pub(super) struct MethodLine {
    pub name: String,
    pub files: u64,
    pub bytes: String,
    /// `bytes`, exact.
    pub exact: u64,
}

/// One file that differs between two releases.
pub(super) struct FileLine {
    pub path: String,
    pub change: &'static str,
    pub size: String,
    pub method: String,
    pub cost: String,
    /// `cost`, exact: the file's share of the plan (none for a removed file, or without a
    /// plan).
    pub exact: Option<u64>,
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

pub(super) fn share(bytes: u64, of: i64) -> String {
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
            diff: from.and_then(|id| version_of.get(&id).cloned()),
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
    let diff = compare(&app, &product, &before, r).await?;
    page.added = diff.added;
    page.removed = diff.removed;
    page.changed = diff.changed;
    page.methods = diff.methods;
    let mut lines = diff.lines;
    let needle = q.trim();
    lines.retain(|f| needle.is_empty() || f.path.contains(needle));
    page.total = lines.len();
    page.files = lines.into_iter().take(MAX_FILES).collect();
    page.shown = page.files.len();
    Ok(html(StatusCode::OK, &page))
}

/// How a plan sends each content: by target, the method's name ("whole (zstd)", or
/// "delta: NAME" from the stored delta) and the item's cost ([`deltaroot_format::Plan::item_costs`]).
pub(super) async fn sent_by(app: &App, plan: &Plan) -> Result<HashMap<Hash, (String, u64)>> {
    let pairs: Vec<(Hash, Hash)> = plan
        .items
        .iter()
        .filter_map(|i| match &i.fetch {
            Fetch::Delta { source, .. } => Some((*source, i.target)),
            Fetch::Object { .. } => None,
        })
        .collect();
    let methods = app.db.delta_methods(&pairs).await?;
    Ok(plan
        .items
        .iter()
        .zip(plan.item_costs())
        .map(|(item, cost)| {
            let name = match &item.fetch {
                Fetch::Object { .. } => "whole (zstd)".to_string(),
                Fetch::Delta { source, .. } => methods
                    .get(&(*source, item.target))
                    .and_then(|m| Method::from_u8(*m))
                    .map(|m| format!("delta: {}", m.name()))
                    .unwrap_or_else(|| "delta".into()),
            };
            (item.target, (name, cost))
        })
        .collect())
}

/// Bytes and files by method over the contents a plan sends, most bytes first.
pub(super) fn by_method<'a>(sent: impl IntoIterator<Item = &'a (String, u64)>) -> Vec<MethodLine> {
    let mut by: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (name, cost) in sent {
        let m = by.entry(name.clone()).or_default();
        m.0 += 1;
        m.1 += cost;
    }
    let mut by_cost: Vec<_> = by.into_iter().collect();
    by_cost.sort_by_key(|(_, (_, bytes))| std::cmp::Reverse(*bytes));
    by_cost
        .into_iter()
        .map(|(name, (files, bytes))| MethodLine {
            name,
            files,
            bytes: human_bytes(bytes),
            exact: bytes,
        })
        .collect()
}

/// Two releases compared: the files that differ, largest first.
pub(super) struct Compared {
    pub added: usize,
    pub removed: usize,
    pub changed: usize,
    /// Bytes a device on the older release downloads, by method (empty without a plan).
    pub methods: Vec<MethodLine>,
    /// A plan from `old` to `new` is stored.
    pub planned: bool,
    pub lines: Vec<FileLine>,
}

/// What changed from release `old` to `new` of `product` (their signed manifests, verified
/// again), and how the stored plan between them sends each file (none is computed here).
pub(super) async fn compare(
    app: &App,
    product: &Name,
    old: &ReleaseRow,
    new: &ReleaseRow,
) -> Result<Compared> {
    let new_m = load_manifest(app, product, new).await?;
    let old_m = load_manifest(app, product, old).await?;
    let files = |m: &deltaroot_format::Manifest| -> BTreeMap<String, (Hash, u64)> {
        m.entries
            .iter()
            .filter_map(|e| e.file().map(|f| (e.path().to_string(), f)))
            .collect()
    };
    let (old_files, new_files) = (files(old_m.manifest()), files(new_m.manifest()));
    let plan = app.db.plan(Some(old.id), new.id).await?;
    let sent = match &plan {
        Some(p) => sent_by(app, p).await?,
        None => HashMap::new(),
    };
    let how = |target: &Hash| -> (String, Option<u64>) {
        match sent.get(target) {
            Some((name, cost)) => (name.clone(), Some(*cost)),
            None if plan.is_some() => ("on the device already".into(), None),
            None => ("no plan yet".into(), None),
        }
    };
    let mut out = Compared {
        added: 0,
        removed: 0,
        changed: 0,
        methods: by_method(sent.values()),
        planned: plan.is_some(),
        lines: Vec::new(),
    };
    let mut lines: Vec<(u64, FileLine)> = Vec::new();
    for (path, (hash, size)) in &new_files {
        let change = match old_files.get(path) {
            None => "added",
            Some((h, _)) if h != hash => "changed",
            Some(_) => continue,
        };
        if change == "added" {
            out.added += 1;
        } else {
            out.changed += 1;
        }
        let (method, cost) = how(hash);
        lines.push((
            *size,
            FileLine {
                path: path.clone(),
                change,
                size: human_bytes(*size),
                method,
                cost: cost.map(human_bytes).unwrap_or_else(|| "-".into()),
                exact: cost,
            },
        ));
    }
    for (path, (_, size)) in &old_files {
        if !new_files.contains_key(path) {
            out.removed += 1;
            lines.push((
                *size,
                FileLine {
                    path: path.clone(),
                    change: "removed",
                    size: human_bytes(*size),
                    method: "-".into(),
                    cost: "-".into(),
                    exact: None,
                },
            ));
        }
    }
    lines.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.path.cmp(&b.1.path)));
    out.lines = lines.into_iter().map(|(_, f)| f).collect();
    Ok(out)
}
