//! Plans: what a device on one release downloads to reach another (`format::compute_plan`
//! over the stored objects and deltas, then the pair's packs attached). A pair's plan is
//! computed on first use and stored; the server recomputes it after building deltas for the
//! pair. The computation runs on the blocking pool.

use std::collections::HashMap;

use deltaroot_format::{
    attach_packs, compute_plan, offer_objects, Fetch, Hash, Method, Name, Plan,
};

/// Delta methods slow to rebuild on a device, beside which a plan offers the whole object:
/// `xz` compresses the content again (corpus trees/kernel: 20 s of one core for vmlinuz).
pub const SLOW_METHODS: &[Method] = &[Method::Xz];

use crate::db::ReleaseRow;
use crate::error::{blocking, Result};
use crate::releases::load_manifest;
use crate::App;

/// The stored plan for a pair, computed and saved on first use (one computation at a time
/// per replica, so a crowd asking for the same new pair computes it once). A plan from an
/// older release that fetches some content whole asks for the deltas it lacks to be built
/// in the background ([`crate::deltas::request`] decides whether the pair is worth it).
pub async fn plan_for(
    app: &App,
    product: &Name,
    from: Option<&ReleaseRow>,
    to: &ReleaseRow,
) -> Result<Plan> {
    let plan = plan_only(app, product, from, to).await?;
    if let Some(f) = from {
        if plan
            .items
            .iter()
            .any(|i| matches!(i.fetch, Fetch::Object { .. }))
        {
            crate::deltas::request(app, product, f, to).await;
        }
    }
    Ok(plan)
}

/// Like [`plan_for`], without asking for delta builds (the publisher made this pair's).
pub async fn plan_only(
    app: &App,
    product: &str,
    from: Option<&ReleaseRow>,
    to: &ReleaseRow,
) -> Result<Plan> {
    stored_or_computed(app, product, from, to).await
}

static COMPUTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn stored_or_computed(
    app: &App,
    product: &str,
    from: Option<&ReleaseRow>,
    to: &ReleaseRow,
) -> Result<Plan> {
    if let Some(p) = app.db.plan(from.map(|r| r.id), to.id).await? {
        return Ok(p);
    }
    let _one = COMPUTING.lock().await;
    if let Some(p) = app.db.plan(from.map(|r| r.id), to.id).await? {
        return Ok(p);
    }
    compute(app, product, from, to).await
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
    let with_packs = from.is_some();
    let packs = match from {
        Some(f) => app.db.plan_packs(Some(f.id), to.id).await?,
        None => Vec::new(),
    };
    let (mut plan, sizes) = blocking("computing a plan", move || {
        let mut plan = compute_plan(
            from_m.as_ref().map(|m| m.manifest()),
            to_m.manifest(),
            |h| sizes.get(h).copied(),
            |t| deltas.get(t).cloned().unwrap_or_default(),
        )?;
        if with_packs {
            attach_packs(&mut plan, &packs);
        }
        Ok((plan, sizes))
    })
    .await?;
    let fetched: Vec<(Hash, Hash)> = plan
        .items
        .iter()
        .filter_map(|i| match i.fetch {
            Fetch::Delta { source, .. } => Some((source, i.target)),
            Fetch::Object { .. } => None,
        })
        .collect();
    let methods = app.db.delta_methods(&fetched).await?;
    offer_objects(
        &mut plan,
        |s, t| {
            methods
                .get(&(*s, *t))
                .is_some_and(|m| SLOW_METHODS.iter().any(|slow| *slow as u8 == *m))
        },
        |h| sizes.get(h).copied(),
    );
    app.db.save_plan(from.map(|r| r.id), to.id, &plan).await?;
    app.fleet
        .set_plan_size(from.map(|r| r.id), to.id, plan.download_bytes);
    Ok(plan)
}
