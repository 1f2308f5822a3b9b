//! Publishing a release: scan both trees, sign the new manifest, encode every missing object
//! and delta on all cores, hand them to the sink, make the release visible, and summarise.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use deltaroot_format::api::StoredRequest;
use deltaroot_format::{
    attach_packs, compute_plan, delta_path, object_path, Entry, Fetch, Hash, Manifest, Name,
    PublicKey, SecretKey, VerifiedManifest,
};
use rayon::prelude::*;
use serde::Serialize;

use crate::checks;
use crate::error::Result;
use crate::input::{InputOptions, InputTree};
use crate::matching::{self, Pair};
use crate::progress::{self, Progress};
use crate::shared;
use crate::sink::{Release, Sink};
use deltaroot_engine::budget::Budget;
use deltaroot_engine::{self, EngineOptions};

/// What to publish.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    pub product: String,
    pub version: String,
    pub from_version: Option<String>,
    /// The channel to point at the new release; `None` publishes it on no channel (an
    /// operator promotes it later).
    pub channel: Option<String>,
    /// The share of the channel's devices offered it at first (0-100; default all).
    pub percent: Option<f64>,
    pub engine: EngineOptions,
    /// Release time; now when unset.
    pub created: Option<u64>,
    /// Show progress on stderr: bars on a terminal, plain lines elsewhere (see
    /// [`progress::Mode::auto`]; [`publish_with`] takes the mode itself).
    pub progress: bool,
    /// Peak memory the run should stay under, in bytes: encoding jobs are scheduled so the
    /// estimates of those running, plus what the scan holds, fit (see `crate::budget`).
    pub memory_budget: u64,
    /// Pack the pair's small downloads together (`--no-packs` turns it off).
    pub packs: bool,
    /// How OLD and NEW are read: `--exclude`, `--strip-components`.
    pub input: InputOptions,
    /// Earlier release keys of the product (replaced by `rotate-key`): release
    /// `from_version` may be signed by one of them rather than by the key that signs now.
    pub previous_keys: Vec<PublicKey>,
}

/// The default `memory_budget`: 2 GiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 2 << 30;

/// How often a method was the cheapest way to send a content, and the bytes it sent.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct MethodWins {
    pub count: u64,
    pub bytes: u64,
}

/// The closing summary of a publish.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Summary {
    pub product: String,
    pub version: String,
    pub from_version: Option<String>,
    pub entries_added: u64,
    pub entries_removed: u64,
    pub entries_changed: u64,
    pub entries_unchanged: u64,
    /// Regular files whose content changed at the same path.
    pub files_changed: u64,
    /// Bytes of all regular files of the new tree.
    pub image_bytes: u64,
    /// Bytes of the whole new tree as zstd objects (what a fresh install downloads).
    pub image_compressed_bytes: u64,
    /// Bytes a device on `from_version` downloads.
    pub download_bytes: u64,
    /// New bytes the device needs (uncompressed).
    pub new_content_bytes: u64,
    /// Objects and deltas uploaded by this run (the rest were stored already).
    pub uploaded_objects: u64,
    pub uploaded_deltas: u64,
    pub uploaded_bytes: u64,
    /// Per method (`zstd` is the whole object): how often it was the cheapest.
    pub methods: BTreeMap<String, MethodWins>,
    /// Every content a device on `from_version` downloads, largest download first.
    pub downloads: Vec<Download>,
    /// Packs made for devices on `from_version`, and how many downloads they hold.
    pub packs: u64,
    pub packed: u64,
    /// What `download_bytes` would be with every download fetched alone.
    pub unpacked_bytes: u64,
    /// The shared paths the release declares (`--shared`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared: Vec<String>,
    /// Entries of NEW below them, left out of the release (the device's data).
    #[serde(skip_serializing_if = "is_zero")]
    pub shared_left_out: u64,
    /// What changes for devices where the release's shared paths differ from the one they
    /// run, a line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shared_changes: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One content a device downloads, and what it costs.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Download {
    /// A path of the new tree with this content.
    pub path: String,
    /// Uncompressed size.
    pub size: u64,
    /// `zstd` for the whole object, else the delta's method.
    pub method: String,
    /// Sent in a pack.
    pub packed: bool,
    /// Bytes on the wire; for a packed download its share of the pack (in proportion to its
    /// size alone).
    pub bytes: u64,
}

/// Result of the work for one new content.
struct Encoded {
    hash: Hash,
    object_bytes: Option<u64>,
    delta: Option<(Hash, u64, &'static str)>,
    uploaded: (u64, u64, u64),
}

/// Publishes `new` (from `old`, when given) to `sink`, with progress as [`progress::Mode::auto`]
/// picks it when `opts.progress` is set.
pub fn publish(
    old: Option<&Path>,
    new: &Path,
    key: &SecretKey,
    sink: &dyn Sink,
    opts: &PublishOptions,
) -> Result<Summary> {
    let mode = if opts.progress {
        progress::Mode::auto(progress::DEFAULT_EVERY)
    } else {
        progress::Mode::Off
    };
    publish_with(old, new, key, sink, opts, mode)
}

/// [`publish`] with progress shown as `mode` says (`opts.progress` is not read).
///
/// Before anything is encoded the sink is asked whether `opts.version` exists already (it is
/// refused), and, when `old` is given with `opts.from_version`, for that release's signed
/// manifest: it must verify with `key` and list exactly the entries of `old`.
pub fn publish_with(
    old: Option<&Path>,
    new: &Path,
    key: &SecretKey,
    sink: &dyn Sink,
    opts: &PublishOptions,
    mode: progress::Mode,
) -> Result<Summary> {
    deltaroot_format::check_name("product", &opts.product)?;
    deltaroot_format::check_name("version", &opts.version)?;
    let channel = opts
        .channel
        .as_deref()
        .map(|c| Name::new("channel", c))
        .transpose()?;
    if let Some(v) = &opts.from_version {
        deltaroot_format::check_name("from-version", v)?;
    }
    // Asked first, before minutes of scanning and encoding: a taken version would only be
    // refused when the release is made visible, every upload then orphaned. The server
    // refuses it then too, for a run that takes it meanwhile.
    checks::version_is_free(sink, &opts.product, &opts.version)?;
    let from_release = match (old, &opts.from_version) {
        (Some(_), Some(v)) => Some(checks::fetch_release(
            sink,
            &opts.product,
            v,
            &std::iter::once(key.public())
                .chain(opts.previous_keys.iter().cloned())
                .collect::<Vec<_>>(),
        )?),
        _ => None,
    };
    deltaroot_format::manifest::check_shared(&opts.input.shared)?;
    let scan = Progress::new(mode, "scanning", 0, 0);
    let add = |n: u64| scan.file_done(n);
    let mut old_tree = match old {
        Some(p) => InputTree::open_with(p, &add, &opts.input)?,
        None => InputTree::empty(),
    };
    // OLD as devices run it: without what its release's shared paths hold.
    if let Some(release) = &from_release {
        shared::leave_out(&mut old_tree.entries, &release.manifest().shared);
    }
    // Deltas from an OLD that is not the release devices run start from contents they do
    // not hold: they would download whole objects instead.
    if let (Some(path), Some(release)) = (old, &from_release) {
        checks::old_is_release(path, release, &old_tree.entries)?;
    }
    let mut new_tree = InputTree::open_with(new, &add, &opts.input)?;
    scan.finish();
    shared::check_directories(&new_tree.entries, &opts.input.shared)?;
    let shared_left_out = shared::leave_out(&mut new_tree.entries, &opts.input.shared) as u64;

    let created = opts.created.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    });
    let manifest = Manifest {
        product: opts.product.clone(),
        version: opts.version.clone(),
        created,
        shared: opts.input.shared.clone(),
        entries: new_tree.entries.clone(),
    };
    let old_manifest = old.map(|_| Manifest {
        product: opts.product.clone(),
        version: opts.from_version.clone().unwrap_or_else(|| "old".into()),
        created: 0,
        shared: from_release
            .as_ref()
            .map(|r| r.manifest().shared.clone())
            .unwrap_or_default(),
        entries: old_tree.entries.clone(),
    });
    let signed = VerifiedManifest::sign(manifest, key);
    // Read back what devices will read: a manifest they would refuse is never published.
    VerifiedManifest::verify(
        signed.bytes().to_vec(),
        signed.signature().to_vec(),
        &[key.public()],
    )?;

    // What must exist: an object for every content, a delta for every matched pair.
    let contents = signed.manifest().contents();
    let mut hashes: Vec<Hash> = contents.keys().copied().collect();
    hashes.sort();
    let pairs = matching::pairs(&old_tree.entries, &signed.manifest().entries);
    let stored = sink.stored(&StoredRequest {
        objects: hashes.clone(),
        deltas: pairs.iter().map(|p| (p.old, p.new)).collect(),
    })?;
    let object_stored: HashMap<Hash, Option<u64>> =
        hashes.iter().copied().zip(stored.objects).collect();
    let delta_stored: HashMap<(Hash, Hash), Option<u64>> = pairs
        .iter()
        .map(|p| (p.old, p.new))
        .zip(stored.deltas)
        .collect();
    let pair_of: HashMap<Hash, &Pair> = pairs.iter().map(|p| (p.new, p)).collect();

    // Largest first, so the longest jobs start early and cores stay busy to the end.
    let mut jobs: Vec<Hash> = hashes.clone();
    jobs.sort_by_key(|h| std::cmp::Reverse(contents[h]));
    let total: u64 = jobs.iter().map(|h| contents[h]).sum();
    let work = Progress::new(mode, "encoding", jobs.len() as u64, total);
    // What the scans and manifests hold counts against the budget; the jobs share the rest
    // (never less than 64 MiB, so a tight budget still makes progress, one job at a time).
    let held =
        deltaroot_engine::budget::tree_bytes(old_tree.entries.len() + new_tree.entries.len());
    let budget = Budget::new(opts.memory_budget.saturating_sub(held).max(64 << 20));
    let failed: Mutex<Option<crate::error::Error>> = Mutex::new(None);
    // One job per task: rayon otherwise hands each thread runs of jobs it works through
    // alone, and a run that holds a few large pairs kept one core idle for minutes
    // (trees/kernel: 128% CPU on 2 cores).
    let results: Vec<Encoded> = jobs
        .par_iter()
        .with_max_len(1)
        .filter_map(|h| {
            if failed.lock().expect("not poisoned").is_some() {
                return None;
            }
            let started = std::time::Instant::now();
            let r = encode_one(
                *h,
                &old_tree,
                &new_tree,
                &object_stored,
                &delta_stored,
                pair_of.get(h).copied(),
                sink,
                &opts.engine,
                &budget,
            );
            work.file_done(contents[h]);
            tracing::debug!(
                content = %h,
                bytes = contents[h],
                seconds = started.elapsed().as_secs_f64(),
                "encoded"
            );
            match r {
                Ok(e) => Some(e),
                Err(e) => {
                    failed.lock().expect("not poisoned").get_or_insert(e);
                    None
                }
            }
        })
        .collect();
    work.finish();
    if let Some(e) = failed.into_inner().expect("not poisoned") {
        return Err(e);
    }

    let object_bytes: HashMap<Hash, u64> = results
        .iter()
        .filter_map(|r| r.object_bytes.map(|b| (r.hash, b)))
        .collect();
    let deltas: Vec<(Hash, Hash, u64)> = results
        .iter()
        .filter_map(|r| r.delta.map(|(s, b, _)| (s, r.hash, b)))
        .collect();
    let delta_method: HashMap<Hash, &'static str> = results
        .iter()
        .filter_map(|r| r.delta.map(|(_, _, m)| (r.hash, m)))
        .collect();
    let by_target: HashMap<Hash, Vec<(Hash, u64)>> = deltas
        .iter()
        .map(|(s, t, b)| (*t, vec![(*s, *b)]))
        .collect();
    let mut plan = compute_plan(
        old_manifest.as_ref(),
        signed.manifest(),
        |h| object_bytes.get(h).copied(),
        |t| by_target.get(t).cloned().unwrap_or_default(),
    )?;
    let path_of: HashMap<Hash, &deltaroot_format::EntryPath> = signed
        .manifest()
        .entries
        .iter()
        .filter_map(|e| e.file().map(|(h, _)| (h, e.path())))
        .collect();
    // Packs only for devices coming from the old release: a fresh install fetches objects.
    let packs = match old_manifest {
        Some(_) if opts.packs => {
            let packing = Progress::new(mode, "packing", 0, 0);
            let packs = crate::packing::build(&plan, &path_of, sink, opts.engine.level, &budget)?;
            packing.finish();
            attach_packs(&mut plan, &packs);
            packs
        }
        _ => Vec::new(),
    };

    let public = key.public().to_text();
    let answer = sink.publish(&Release {
        signed: &signed,
        public_key: &public,
        key,
        channel: channel.as_ref(),
        percent: opts.percent,
        old: old_manifest.as_ref(),
        deltas: &deltas,
        packs: &packs,
        skipped: &opts.engine.skip.methods(),
    })?;

    let mut s = Summary {
        product: opts.product.clone(),
        version: opts.version.clone(),
        from_version: opts.from_version.clone(),
        image_bytes: signed.manifest().total_file_bytes(),
        image_compressed_bytes: object_bytes.values().sum(),
        download_bytes: answer.download_bytes.unwrap_or(plan.download_bytes),
        shared: opts.input.shared.iter().map(|p| p.to_string()).collect(),
        shared_left_out,
        shared_changes: from_release
            .as_ref()
            .map(|r| shared::changes(r.manifest(), &opts.input.shared))
            .unwrap_or_default(),
        ..Summary::default()
    };
    s.packs = plan.packs.len() as u64;
    s.packed = plan.items.iter().filter(|i| i.pack.is_some()).count() as u64;
    s.unpacked_bytes = plan.items.iter().map(|i| i.fetch.bytes()).sum();
    for (item, cost) in plan.items.iter().zip(plan.item_costs()) {
        s.new_content_bytes += item.size;
        let name = match &item.fetch {
            Fetch::Object { .. } => "zstd",
            Fetch::Delta { .. } => delta_method.get(&item.target).copied().unwrap_or("delta"),
        };
        let w = s.methods.entry(name.to_string()).or_default();
        w.count += 1;
        w.bytes += cost;
        s.downloads.push(Download {
            path: path_of
                .get(&item.target)
                .map(|p| p.to_string())
                .unwrap_or_default(),
            size: item.size,
            method: name.to_string(),
            packed: item.pack.is_some(),
            bytes: cost,
        });
    }
    s.downloads
        .sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.path.cmp(&b.path)));
    for r in &results {
        s.uploaded_objects += r.uploaded.0;
        s.uploaded_deltas += r.uploaded.1;
        s.uploaded_bytes += r.uploaded.2;
    }
    count_entries(&old_tree.entries, &signed.manifest().entries, &mut s);
    Ok(s)
}

/// Encodes what is missing of one content: its object, and its delta when it has an old
/// version. Its share of the memory budget is taken once its files are read (for a delta the
/// estimate depends on what they hold) and given back when it returns.
#[allow(clippy::too_many_arguments)]
fn encode_one(
    hash: Hash,
    old_tree: &InputTree,
    new_tree: &InputTree,
    object_stored: &HashMap<Hash, Option<u64>>,
    delta_stored: &HashMap<(Hash, Hash), Option<u64>>,
    pair: Option<&Pair>,
    sink: &dyn Sink,
    eng: &EngineOptions,
    budget: &Budget,
) -> Result<Encoded> {
    let mut uploaded = (0, 0, 0);
    let stored_object = object_stored.get(&hash).copied().flatten();
    let stored_delta = pair.and_then(|p| {
        delta_stored
            .get(&(p.old, p.new))
            .copied()
            .flatten()
            .map(|bytes| (p.old, bytes, "delta"))
    });
    // The pair whose delta is still to be encoded.
    let due = pair.filter(|_| stored_delta.is_none());
    if let (Some(object_bytes), None) = (stored_object, due) {
        // Published before: nothing to read or encode.
        return Ok(Encoded {
            hash,
            object_bytes: Some(object_bytes),
            delta: stored_delta,
            uploaded,
        });
    }
    let new = new_tree.read(&hash)?;
    let old = due.map(|p| old_tree.read(&p.old)).transpose()?;
    let _share = budget.reserve(match &old {
        Some(old) => deltaroot_engine::budget::estimate_pair(old, &new),
        None => deltaroot_engine::budget::estimate(None, new.len() as u64),
    });
    // The best delta encoded now, if one was due.
    let fresh = match (due, old) {
        (Some(p), Some(old)) => deltaroot_engine::candidates(&old, &new, eng)?
            .into_iter()
            .next()
            .map(|best| (p.old, best.bytes, best.method.name())),
        _ => None,
    };
    let delta_bytes = fresh.as_ref().map(|(_, b, _)| b.len() as u64);
    let object_bytes = match stored_object {
        Some(b) => b,
        None => {
            // Where a delta sends this content, its object serves fresh installs only: the
            // faster install level, unless the delta does not clearly win. Without a delta
            // (a first release, a new file) the object is what devices download: the full
            // level at once (a first publish of trees/kernel compressed 61 s of CPU at the
            // install level only to throw it away).
            let compress = |level| deltaroot_engine::compress_object(&new, level);
            let z = match delta_bytes {
                Some(d) if eng.install_level < eng.level => {
                    let z = compress(eng.install_level)?;
                    if d.saturating_mul(2) < z.len() as u64 {
                        z
                    } else {
                        compress(eng.level)?
                    }
                }
                _ => compress(eng.level)?,
            };
            tracing::debug!(content = %hash, size = new.len(), delta = ?delta_bytes, object = z.len(), "object compressed");
            sink.put(&object_path(&hash), &z)?;
            uploaded = (1, 0, z.len() as u64);
            z.len() as u64
        }
    };
    let delta = match fresh {
        // A delta no smaller than the object is never sent, so never stored.
        Some((old, bytes, method)) if (bytes.len() as u64) < object_bytes => {
            sink.put(&delta_path(&old, &hash), &bytes)?;
            uploaded.1 += 1;
            uploaded.2 += bytes.len() as u64;
            Some((old, bytes.len() as u64, method))
        }
        _ => stored_delta,
    };
    Ok(Encoded {
        hash,
        object_bytes: Some(object_bytes),
        delta,
        uploaded,
    })
}

/// Writes `summary.downloads` as TSV with a header line.
pub fn write_report(summary: &Summary, path: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(w, "bytes\tmethod\tsize\tpacked\tpath")?;
    for d in &summary.downloads {
        let packed = if d.packed { "yes" } else { "no" };
        writeln!(
            w,
            "{}\t{}\t{}\t{packed}\t{}",
            d.bytes, d.method, d.size, d.path
        )?;
    }
    w.flush()
}

fn count_entries(old: &[Entry], new: &[Entry], s: &mut Summary) {
    let old_by: HashMap<_, _> = old.iter().map(|e| (e.path(), e)).collect();
    let new_by: HashMap<_, _> = new.iter().map(|e| (e.path(), e)).collect();
    for e in new {
        match old_by.get(e.path()) {
            None => s.entries_added += 1,
            Some(o) if *o == e => s.entries_unchanged += 1,
            Some(o) => {
                s.entries_changed += 1;
                if let (Some((a, _)), Some((b, _))) = (o.file(), e.file()) {
                    if a != b {
                        s.files_changed += 1;
                    }
                }
            }
        }
    }
    s.entries_removed = old
        .iter()
        .filter(|e| !new_by.contains_key(e.path()))
        .count() as u64;
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use deltaroot_format::human_bytes as hb;
        let pct = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                100.0 * a as f64 / b as f64
            }
        };
        writeln!(
            f,
            "published {} {} (from {})",
            self.product,
            self.version,
            self.from_version.as_deref().unwrap_or("nothing")
        )?;
        writeln!(
            f,
            "  entries: {} changed ({} file contents), {} added, {} removed, {} unchanged",
            self.entries_changed,
            self.files_changed,
            self.entries_added,
            self.entries_removed,
            self.entries_unchanged
        )?;
        if !self.shared.is_empty() {
            writeln!(
                f,
                "  shared: {} ({} entries of NEW in them left out: the device's data, not the release's)",
                self.shared.join(", "),
                self.shared_left_out
            )?;
        }
        for c in &self.shared_changes {
            writeln!(f, "  note: {c}")?;
        }
        writeln!(
            f,
            "  image: {} in files, {} as zstd objects",
            hb(self.image_bytes),
            hb(self.image_compressed_bytes)
        )?;
        writeln!(
            f,
            "  a device on {} downloads {} ({:.1}% of the image, {:.1}% of the compressed image) for {} of new content",
            self.from_version.as_deref().unwrap_or("nothing"),
            hb(self.download_bytes),
            pct(self.download_bytes, self.image_bytes),
            pct(self.download_bytes, self.image_compressed_bytes),
            hb(self.new_content_bytes)
        )?;
        for (m, w) in &self.methods {
            writeln!(
                f,
                "  {m:>16}: cheapest for {} contents, {}",
                w.count,
                hb(w.bytes)
            )?;
        }
        if self.packs > 0 {
            writeln!(
                f,
                "  {} small downloads travel in {} pack(s), counted above by their share ({} alone)",
                self.packed,
                self.packs,
                hb(self.unpacked_bytes)
            )?;
        }
        if !self.downloads.is_empty() {
            writeln!(f, "  largest downloads:")?;
        }
        for d in self.downloads.iter().take(5) {
            writeln!(
                f,
                "  {:>10} {:>16} {} ({})",
                hb(d.bytes),
                d.method,
                d.path,
                hb(d.size)
            )?;
        }
        write!(
            f,
            "  uploaded {} objects and {} deltas, {}",
            self.uploaded_objects,
            self.uploaded_deltas,
            hb(self.uploaded_bytes)
        )
    }
}
