//! The device root: deployments side by side, an atomic `current`/`previous` switch, and the
//! staging of a new version beside the running one.
//!
//! Layout under the root (see `ARCHITECTURE.md`, "A device applies an update"):
//!
//! ```text
//! deployments/<version>/   one complete tree per kept version
//! current  -> deployments/<version>      the running version
//! previous -> deployments/<version>      what `rollback` returns to
//! staging/tree/            the next version while it is built
//! staging/content/<hash>   verified new contents waiting to be placed
//! staging/downloads/       partial downloads, resumed after a cut
//! state/manifests/         the signed manifests of the kept versions
//! state/status.json        the last result, for `status`
//! ```
//!
//! The running tree is only ever read: unchanged files are hardlinked from it, and a file
//! whose content is kept but whose metadata changes is copied, because hardlinks share
//! metadata. Every write goes through a `cap_std` directory handle of the staging tree.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use rustix::fs::{AtFlags, FileType, Mode, Timestamps};
use rustix::time::Timespec;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::container::{
    apply_delta_to, apply_payload_to, unwrapped_bound, Payload, Source,
};
use crate::format::plan::entry_matches;
use crate::format::{
    delta_path, object_path, pack_path, DeltaHeader, Entry, EntryKind, EntryPath, Fetch, Hash,
    Kind, Meta, PackEntry, PackReader, PackRef, Plan, PlanItem, PublicKey, VerifiedManifest,
};
use crate::transport::Http;
use crate::tree;

const STAGING_TREE: &str = "staging/tree";
const CONTENT: &str = "staging/content";
const DOWNLOADS: &str = "staging/downloads";
const MANIFESTS: &str = "state/manifests";
const STATUS: &str = "state/status.json";
/// Downloads and delta applications in flight at once.
const FETCH_THREADS: usize = 4;

/// A content to fetch, and its size.
type Job = (Hash, u64);

/// What the last update attempt did, kept in `state/status.json`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Status {
    pub last_result: Option<String>,
    pub last_version: Option<String>,
    pub last_error: Option<String>,
    pub updated_at: u64,
}

/// Counts of one deployment.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct DeployReport {
    pub version: String,
    pub from: Option<String>,
    /// Bytes the plan said this would cost.
    pub planned_bytes: u64,
    /// Bytes actually received for objects and deltas.
    pub downloaded_bytes: u64,
    pub deltas: u64,
    pub objects: u64,
    /// Packs downloaded (their contents count among `deltas` and `objects`).
    pub packs: u64,
    /// Files shared with the running tree by hardlink.
    pub linked: u64,
    /// Files whose content was kept but copied for new metadata, or reused twice.
    pub copied: u64,
    /// Files written from downloaded content.
    pub written: u64,
}

/// The device's update lock (`state/lock`, `flock`), released when dropped. It is released
/// explicitly: a process started by another thread at the wrong moment holds a copy of the
/// descriptor until it runs its program, and closing ours alone would leave the lock with it.
pub struct DeviceLock(File);

impl Drop for DeviceLock {
    fn drop(&mut self) {
        // Unlocking cannot fail on a descriptor we hold; the file closes after.
        let _ = rustix::fs::flock(&self.0, rustix::fs::FlockOperation::Unlock);
    }
}

/// An opened device root.
pub struct Device {
    root: PathBuf,
    dir: Dir,
}

impl Device {
    /// Opens (and creates, if needed) the device root at `root`.
    pub fn open(root: &Path) -> Result<Device> {
        std::fs::create_dir_all(root).map_err(Error::io(root))?;
        let dir = Dir::open_ambient_dir(root, ambient_authority()).map_err(Error::io(root))?;
        for d in ["deployments", "staging", "state", MANIFESTS] {
            dir.create_dir_all(d).map_err(Error::io(root.join(d)))?;
        }
        Ok(Device {
            root: root.to_owned(),
            dir,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn err(&self, what: impl Into<String>) -> Error {
        Error::Device {
            root: self.root.clone(),
            what: what.into(),
        }
    }

    fn io(&self, rel: &str) -> impl FnOnce(io::Error) -> Error {
        Error::io(self.root.join(rel))
    }

    /// Takes the device's update lock; held until the returned guard is dropped.
    pub fn lock(&self) -> Result<DeviceLock> {
        let f = self
            .dir
            .create("state/lock")
            .map_err(self.io("state/lock"))?
            .into_std();
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| self.err("another deltaroot-agent holds state/lock"))?;
        Ok(DeviceLock(f))
    }

    fn link_version(&self, name: &str) -> Result<Option<String>> {
        match self.dir.read_link_contents(name) {
            Ok(t) => {
                let t = t.as_os_str().as_bytes();
                let v = t
                    .strip_prefix(b"deployments/")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .ok_or_else(|| self.err(format!("{name} does not point into deployments/")))?;
                Ok(Some(v.to_string()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(self.root.join(name))(e)),
        }
    }

    /// The running version.
    pub fn current(&self) -> Result<Option<String>> {
        self.link_version("current")
    }

    /// The version `rollback` returns to.
    pub fn previous(&self) -> Result<Option<String>> {
        self.link_version("previous")
    }

    /// The path of a deployed version's tree.
    pub fn deployment_path(&self, version: &str) -> PathBuf {
        self.root.join("deployments").join(version)
    }

    /// Loads and re-verifies the stored manifest of a deployed version.
    pub fn manifest(&self, version: &str, trusted: &[PublicKey]) -> Result<VerifiedManifest> {
        let base = format!("{MANIFESTS}/{version}");
        let bytes = self
            .dir
            .read(format!("{base}.manifest"))
            .map_err(self.io(&format!("{base}.manifest")))?;
        let sig = self
            .dir
            .read(format!("{base}.sig"))
            .map_err(self.io(&format!("{base}.sig")))?;
        VerifiedManifest::verify(bytes, sig, trusted)
    }

    pub fn status(&self) -> Result<Status> {
        match self.dir.read(STATUS) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| self.err(format!("{STATUS}: {e}"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Status::default()),
            Err(e) => Err(self.io(STATUS)(e)),
        }
    }

    /// Records the outcome of an attempt.
    pub fn record(&self, version: &str, result: &Result<DeployReport>) -> Result<()> {
        let status = Status {
            last_result: Some(if result.is_ok() { "ok" } else { "failed" }.into()),
            last_version: Some(version.to_string()),
            last_error: result.as_ref().err().map(|e| e.to_string()),
            updated_at: now(),
        };
        let json = serde_json::to_vec_pretty(&status).expect("status serialises");
        self.write_atomic(STATUS, &json)
    }

    fn write_atomic(&self, rel: &str, data: &[u8]) -> Result<()> {
        let tmp = format!("{rel}.tmp");
        let mut f = self.dir.create(&tmp).map_err(self.io(&tmp))?;
        f.write_all(data).map_err(self.io(&tmp))?;
        f.sync_all().map_err(self.io(&tmp))?;
        self.dir.rename(&tmp, &self.dir, rel).map_err(self.io(rel))
    }

    /// Builds `target` beside the running version, verifies it and switches to it.
    /// On any error the running version and the `current` link are untouched.
    pub fn deploy(
        &self,
        target: &VerifiedManifest,
        http: &Http,
        trusted: &[PublicKey],
    ) -> Result<DeployReport> {
        let m = target.manifest();
        let current = self.current()?;
        if current.as_deref() == Some(m.version.as_str()) {
            return Err(self.err(format!("version {} is already running", m.version)));
        }
        let base = match &current {
            Some(v) => {
                let cm = self.manifest(v, trusted)?;
                if cm.manifest().product != m.product {
                    return Err(self.err(format!(
                        "running product {} cannot move to product {}",
                        cm.manifest().product,
                        m.product
                    )));
                }
                let dir = self
                    .dir
                    .open_dir(format!("deployments/{v}"))
                    .map_err(self.io(&format!("deployments/{v}")))?;
                Some((cm, dir))
            }
            None => None,
        };
        let plan = http.plan(&m.product, current.as_deref(), &m.version)?;
        let before = http.downloaded.load(Ordering::Relaxed);
        let mut report = DeployReport {
            version: m.version.clone(),
            from: current.clone(),
            planned_bytes: plan.download_bytes,
            ..Default::default()
        };
        let base_ref = base.as_ref().map(|(cm, d)| (cm.manifest(), d));
        self.fetch_contents(target, base_ref, &plan, http, &mut report)?;
        report.downloaded_bytes = http.downloaded.load(Ordering::Relaxed) - before;
        self.build_tree(target, base_ref, &mut report)?;
        self.verify_staged(target)?;
        self.commit(target)?;
        Ok(report)
    }

    /// Downloads and verifies every content the target needs and the running tree lacks.
    fn fetch_contents(
        &self,
        target: &VerifiedManifest,
        base: Option<(&crate::format::Manifest, &Dir)>,
        plan: &Plan,
        http: &Http,
        report: &mut DeployReport,
    ) -> Result<()> {
        self.dir.create_dir_all(CONTENT).map_err(self.io(CONTENT))?;
        self.dir
            .create_dir_all(DOWNLOADS)
            .map_err(self.io(DOWNLOADS))?;
        let have: HashMap<Hash, &EntryPath> = base
            .map(|(m, _)| {
                m.entries
                    .iter()
                    .filter_map(|e| e.file().map(|(h, _)| (h, e.path())))
                    .collect()
            })
            .unwrap_or_default();
        let planned: HashMap<Hash, &Fetch> =
            plan.items.iter().map(|i| (i.target, &i.fetch)).collect();
        let mut jobs: Vec<Job> = Vec::new();
        for (hash, size) in target.manifest().contents() {
            let dest = format!("{CONTENT}/{hash}");
            if have.contains_key(&hash)
                || (self.dir.exists(&dest) && self.content_ok(&dest, hash, size)?)
            {
                continue;
            }
            jobs.push((hash, size));
        }
        // Packs and the downloads fetched alone at once (the largest alone, a rebuilt kernel
        // say, is worth starting early); what a pack does not give (missing, damaged, or an
        // entry that does not apply) is fetched alone afterwards, as if there were no pack.
        let packed: HashMap<Hash, usize> = plan
            .items
            .iter()
            .filter_map(|i| Some((i.target, i.pack?)))
            .filter(|(_, p)| *p < plan.packs.len())
            .collect();
        let (in_packs, alone): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| packed.contains_key(&j.0));
        let needed: HashSet<Hash> = in_packs.iter().map(|j| j.0).collect();
        let (packs_done, alone_done) = std::thread::scope(|scope| {
            let packs = scope.spawn(|| -> Result<(u64, HashSet<Hash>, u64, u64)> {
                let (mut n, mut given, mut d_count, mut o_count) = (0, HashSet::new(), 0, 0);
                for (p, pack) in plan.packs.iter().enumerate() {
                    let items: HashMap<Hash, &PlanItem> = plan
                        .items
                        .iter()
                        .filter(|i| i.pack == Some(p))
                        .map(|i| (i.target, i))
                        .collect();
                    if !items.keys().any(|t| needed.contains(t)) {
                        continue;
                    }
                    match self.fetch_pack(pack, &items, &needed, &have, base, http) {
                        Ok((d, o)) => {
                            n += 1;
                            d_count += d.len() as u64;
                            o_count += o.len() as u64;
                            given.extend(d.into_iter().chain(o));
                        }
                        Err(e) if e.is_unusable_delta() => {
                            tracing::warn!(pack = %pack.hash, error = %e, "pack unusable; fetching its contents alone");
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok((n, given, d_count, o_count))
            });
            let alone_done = self.fetch_alone(alone, &planned, &have, base, http);
            (
                packs.join().expect("pack thread does not panic"),
                alone_done,
            )
        });
        let (packs, given, d, o) = packs_done?;
        let (d2, o2) = alone_done?;
        let rest: Vec<Job> = in_packs
            .into_iter()
            .filter(|j| !given.contains(&j.0))
            .collect();
        let (d3, o3) = self.fetch_alone(rest, &planned, &have, base, http)?;
        report.packs += packs;
        report.deltas += d + d2 + d3;
        report.objects += o + o2 + o3;
        Ok(())
    }

    /// Fetches `jobs` one by one, largest first, on a few threads (downloads wait on the
    /// network, deltas on a core). Returns how many came as deltas and as objects.
    fn fetch_alone(
        &self,
        mut jobs: Vec<Job>,
        planned: &HashMap<Hash, &Fetch>,
        have: &HashMap<Hash, &EntryPath>,
        base: Option<(&crate::format::Manifest, &Dir)>,
        http: &Http,
    ) -> Result<(u64, u64)> {
        jobs.sort_by_key(|j| std::cmp::Reverse(j.1));
        let next = AtomicUsize::new(0);
        let (deltas, objects) = (AtomicU64::new(0), AtomicU64::new(0));
        let failed: Mutex<Option<Error>> = Mutex::new(None);
        std::thread::scope(|scope| {
            for _ in 0..FETCH_THREADS.min(jobs.len()) {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(hash, size)) = jobs.get(i) else {
                        break;
                    };
                    if failed.lock().expect("not poisoned").is_some() {
                        break;
                    }
                    let fetch = planned.get(&hash).copied();
                    match self.fetch_one(hash, size, fetch, have, base, http) {
                        Ok(true) => deltas.fetch_add(1, Ordering::Relaxed),
                        Ok(false) => objects.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            failed.lock().expect("not poisoned").get_or_insert(e);
                            break;
                        }
                    };
                });
            }
        });
        if let Some(e) = failed.into_inner().expect("not poisoned") {
            return Err(e);
        }
        Ok((deltas.into_inner(), objects.into_inner()))
    }

    /// Fetches one content into the content store; `true` when it came as a delta.
    fn fetch_one(
        &self,
        hash: Hash,
        size: u64,
        fetch: Option<&Fetch>,
        have: &HashMap<Hash, &EntryPath>,
        base: Option<(&crate::format::Manifest, &Dir)>,
        http: &Http,
    ) -> Result<bool> {
        let dest = format!("{CONTENT}/{hash}");
        if let (Some(Fetch::Delta { source, bytes }), Some((_, base_dir))) = (fetch, base) {
            if let Some(src_path) = have.get(source) {
                match self.fetch_delta(hash, size, *source, *bytes, src_path, base_dir, http) {
                    Ok(new) => {
                        self.write_content(&dest, &new)?;
                        return Ok(true);
                    }
                    // A delta that is missing or does not give the content (damaged in
                    // storage, or a method this agent does not know) costs bytes, not the
                    // update: the whole object is verified the same way.
                    Err(e) if e.is_unusable_delta() => {
                        tracing::warn!(content = %hash, error = %e, "delta unusable; fetching the whole object");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let exact = match fetch {
            Some(Fetch::Object { bytes }) => Some(*bytes),
            _ => None,
        };
        let max = exact.unwrap_or(size + size / 8 + (1 << 20));
        let dl = format!("{DOWNLOADS}/{hash}.zst");
        let rel = object_path(&hash);
        http.download(&rel, &self.root.join(&dl), exact, max)?;
        let res = self.unpack_object(&dl, &dest, hash, size, &rel);
        let _ = self.dir.remove_file(&dl);
        res?;
        Ok(false)
    }

    /// Downloads the delta `source` -> `hash` and applies it to the running tree's copy of
    /// `source`, returning the verified content.
    #[allow(clippy::too_many_arguments)]
    fn fetch_delta(
        &self,
        hash: Hash,
        size: u64,
        source: Hash,
        bytes: u64,
        src_path: &EntryPath,
        base_dir: &Dir,
        http: &Http,
    ) -> Result<Vec<u8>> {
        let rel = delta_path(&source, &hash);
        let dl = format!("{DOWNLOADS}/{source}-{hash}");
        http.download(&rel, &self.root.join(&dl), Some(bytes), bytes)?;
        let delta = self.dir.read(&dl).map_err(self.io(&dl));
        // A download that does not apply is not kept for a resume.
        let _ = self.dir.remove_file(&dl);
        let old = open_source(base_dir, src_path)?;
        let source = Source::File {
            file: &old,
            path: src_path.as_path(),
        };
        apply_delta_to(&delta?, source, Some((hash, size)))
    }

    /// Downloads a pack, checks its index against the plan's `items` of this pack and stores
    /// every content it gives that is `needed` (on a few threads while the next bodies are
    /// read; a content stored by an earlier, interrupted attempt is skipped). Returns the
    /// contents given as deltas and as objects; an entry that does not give its content is
    /// logged and left to be fetched alone, and so are the entries after a body that cannot
    /// be read.
    fn fetch_pack(
        &self,
        pack: &PackRef,
        items: &HashMap<Hash, &PlanItem>,
        needed: &HashSet<Hash>,
        have: &HashMap<Hash, &EntryPath>,
        base: Option<(&crate::format::Manifest, &Dir)>,
        http: &Http,
    ) -> Result<(Vec<Hash>, Vec<Hash>)> {
        let rel = pack_path(&pack.hash);
        let dl = format!("{DOWNLOADS}/{}.pack", pack.hash);
        let path = self.root.join(&dl);
        http.download(&rel, &path, Some(pack.bytes), pack.bytes)?;
        let got = tree::hash_file(&path)?;
        if got != pack.hash {
            let _ = self.dir.remove_file(&dl);
            return Err(Error::ContentHash {
                what: rel,
                got,
                want: pack.hash,
            });
        }
        let file = self.dir.open(&dl).map_err(self.io(&dl))?;
        let res = self.unpack(&rel, file, items, needed, have, base);
        let _ = self.dir.remove_file(&dl);
        res
    }

    fn unpack(
        &self,
        rel: &str,
        file: cap_std::fs::File,
        want: &HashMap<Hash, &PlanItem>,
        needed: &HashSet<Hash>,
        have: &HashMap<Hash, &EntryPath>,
        base: Option<(&crate::format::Manifest, &Dir)>,
    ) -> Result<(Vec<Hash>, Vec<Hash>)> {
        let mut reader = PackReader::open(rel, file)?;
        for e in reader.index() {
            if !want
                .get(&e.target)
                .is_some_and(|i| entry_matches(e.kind, &i.fetch))
            {
                return Err(Error::PackMalformed {
                    pack: rel.to_string(),
                    reason: format!("entry {} is not one the plan fetches through it", e.target),
                });
            }
        }
        let given: Mutex<(Vec<Hash>, Vec<Hash>)> = Mutex::new((Vec::new(), Vec::new()));
        let failed: Mutex<Option<Error>> = Mutex::new(None);
        let (tx, rx) = std::sync::mpsc::sync_channel::<(PackEntry, Vec<u8>)>(FETCH_THREADS);
        let rx = Mutex::new(rx);
        std::thread::scope(|scope| {
            for _ in 0..FETCH_THREADS {
                scope.spawn(|| loop {
                    let next = rx.lock().expect("not poisoned").recv();
                    let Ok((e, body)) = next else { break };
                    let item = want[&e.target];
                    match self.apply_entry(&e, &body, item, have, base) {
                        Ok(()) => {
                            let mut g = given.lock().expect("not poisoned");
                            match e.kind {
                                EntryKind::Object => g.1.push(e.target),
                                EntryKind::Delta(_) => g.0.push(e.target),
                            }
                        }
                        Err(err) if err.is_unusable_delta() => {
                            tracing::warn!(content = %e.target, error = %err, "pack entry unusable; fetching it alone");
                        }
                        Err(err) => {
                            failed.lock().expect("not poisoned").get_or_insert(err);
                            break;
                        }
                    }
                });
            }
            loop {
                if failed.lock().expect("not poisoned").is_some() {
                    break;
                }
                let next = reader.next_body(|e| {
                    let item = want[&e.target];
                    match e.kind {
                        EntryKind::Object => item.size,
                        EntryKind::Delta(m) => unwrapped_bound(m, item.size, item.fetch.bytes()),
                    }
                });
                match next {
                    Ok(Some(entry)) if !needed.contains(&entry.0.target) => {}
                    Ok(Some(entry)) => {
                        if tx.send(entry).is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(pack = rel, error = %e, "pack ends early; fetching the rest alone");
                        break;
                    }
                }
            }
            drop(tx);
        });
        if let Some(e) = failed.into_inner().expect("not poisoned") {
            return Err(e);
        }
        Ok(given.into_inner().expect("not poisoned"))
    }

    /// Stores the content one pack entry gives, verified.
    fn apply_entry(
        &self,
        e: &PackEntry,
        body: &[u8],
        item: &PlanItem,
        have: &HashMap<Hash, &EntryPath>,
        base: Option<(&crate::format::Manifest, &Dir)>,
    ) -> Result<()> {
        let dest = format!("{CONTENT}/{}", e.target);
        match (e.kind, &item.fetch) {
            (EntryKind::Delta(method), Fetch::Delta { source, .. }) => {
                let (Some(src_path), Some((_, base_dir))) = (have.get(source), base) else {
                    return Err(Error::DeltaMismatch {
                        what: delta_path(source, &e.target),
                        reason: "the running tree does not hold its source".into(),
                    });
                };
                let old = open_source(base_dir, src_path)?;
                let h = DeltaHeader {
                    method,
                    source: *source,
                    target: e.target,
                    target_size: item.size,
                };
                let from = Source::File {
                    file: &old,
                    path: src_path.as_path(),
                };
                let new = apply_payload_to(&h, Payload::Unwrapped(body), from)?;
                self.write_content(&dest, &new)
            }
            _ => {
                let what = format!("{} in a pack", object_path(&e.target));
                if body.len() as u64 != item.size {
                    return Err(Error::ContentLength {
                        what,
                        got: body.len() as u64,
                        want: item.size,
                    });
                }
                let got = Hash::of(body);
                if got != e.target {
                    return Err(Error::ContentHash {
                        what,
                        got,
                        want: e.target,
                    });
                }
                self.write_content(&dest, body)
            }
        }
    }

    /// Writes a verified content into the store. Not synced one by one: the staged tree is
    /// synced as a whole before anything points at it, and the store is re-verified by hash
    /// when an interrupted attempt is resumed.
    fn write_content(&self, rel: &str, data: &[u8]) -> Result<()> {
        let tmp = format!("{rel}.tmp");
        self.dir.write(&tmp, data).map_err(self.io(&tmp))?;
        self.dir.rename(&tmp, &self.dir, rel).map_err(self.io(rel))
    }

    fn content_ok(&self, rel: &str, hash: Hash, size: u64) -> Result<bool> {
        let p = self.root.join(rel);
        let len = std::fs::metadata(&p).map_err(Error::io(&p))?.len();
        Ok(len == size && tree::hash_file(&p)? == hash)
    }

    /// Decompresses a downloaded object into the content store, hashing as it goes.
    fn unpack_object(&self, dl: &str, dest: &str, hash: Hash, size: u64, url: &str) -> Result<()> {
        let src = self.dir.open(dl).map_err(self.io(dl))?;
        let tmp = format!("{dest}.tmp");
        let mut out = self.dir.create(&tmp).map_err(self.io(&tmp))?;
        let bad = |reason: String| Error::DeltaPayload {
            what: url.to_string(),
            method: "zstd",
            reason,
        };
        let mut dec = zstd::stream::read::Decoder::new(src).map_err(|e| bad(e.to_string()))?;
        dec.window_log_max(crate::format::container::MAX_WINDOW_LOG)
            .map_err(|e| bad(e.to_string()))?;
        let mut dec = dec.take(size + 1);
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut len = 0u64;
        loop {
            let n = dec.read(&mut buf).map_err(|e| bad(e.to_string()))?;
            if n == 0 {
                break;
            }
            len += n as u64;
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(self.io(&tmp))?;
        }
        let got: Hash = hasher.finalize().into();
        if len != size {
            let _ = self.dir.remove_file(&tmp);
            return Err(Error::ContentLength {
                what: url.to_string(),
                got: len,
                want: size,
            });
        }
        if got != hash {
            let _ = self.dir.remove_file(&tmp);
            return Err(Error::ContentHash {
                what: url.to_string(),
                got,
                want: hash,
            });
        }
        out.sync_all().map_err(self.io(&tmp))?;
        self.dir
            .rename(&tmp, &self.dir, dest)
            .map_err(self.io(dest))
    }

    /// Builds the staging tree from the running tree and the content store.
    fn build_tree(
        &self,
        target: &VerifiedManifest,
        base: Option<(&crate::format::Manifest, &Dir)>,
        report: &mut DeployReport,
    ) -> Result<()> {
        if self.dir.exists(STAGING_TREE) {
            self.dir
                .remove_dir_all(STAGING_TREE)
                .map_err(self.io(STAGING_TREE))?;
        }
        self.dir
            .create_dir(STAGING_TREE)
            .map_err(self.io(STAGING_TREE))?;
        let staging = self
            .dir
            .open_dir(STAGING_TREE)
            .map_err(self.io(STAGING_TREE))?;
        let content = self.dir.open_dir(CONTENT).map_err(self.io(CONTENT))?;
        let staging_path = self.root.join(STAGING_TREE);
        let builder = Builder {
            staging: &staging,
            staging_path: &staging_path,
        };

        // Unchanged files of the running tree, by content and metadata, each usable once by
        // hardlink; and any running file by content alone, to copy from.
        let mut linkable: HashMap<(Hash, &Meta), Vec<&EntryPath>> = HashMap::new();
        let mut by_content: HashMap<Hash, &EntryPath> = HashMap::new();
        if let Some((bm, _)) = base {
            for e in &bm.entries {
                if let Entry::Node {
                    path,
                    kind: Kind::File { hash, .. },
                    meta,
                } = e
                {
                    linkable.entry((*hash, meta)).or_default().push(path);
                    by_content.entry(*hash).or_insert(path);
                }
            }
            for v in linkable.values_mut() {
                v.reverse();
            }
        }
        let mut placed: HashMap<Hash, &EntryPath> = HashMap::new();
        let mut dirs: Vec<(&EntryPath, &Meta)> = Vec::new();

        for e in &target.manifest().entries {
            match e {
                Entry::Hardlink { path, target } => builder.hardlink(target, path)?,
                Entry::Node { path, kind, meta } => match kind {
                    Kind::Dir => {
                        builder.mkdir(path)?;
                        dirs.push((path, meta));
                    }
                    Kind::File { hash, .. } => {
                        let reuse = linkable.get_mut(&(*hash, meta)).and_then(Vec::pop);
                        if let (Some(from), Some((_, bdir))) = (reuse, base) {
                            bdir.hard_link(from.as_path(), &staging, path.as_path())
                                .map_err(builder.io(path))?;
                            report.linked += 1;
                            continue;
                        }
                        if let (Some(from), Some((_, bdir))) = (by_content.get(hash), base) {
                            bdir.copy(from.as_path(), &staging, path.as_path())
                                .map_err(builder.io(path))?;
                            report.copied += 1;
                        } else if let Some(first) = placed.get(hash) {
                            // Content placed once already: a copy, so the two stay
                            // separate inodes as the manifest says.
                            staging
                                .copy(first.as_path(), &staging, path.as_path())
                                .map_err(builder.io(path))?;
                            report.copied += 1;
                        } else {
                            // Moved, not linked: the store never shares an inode (and so
                            // metadata) with the tree.
                            content
                                .rename(hash.to_string(), &staging, path.as_path())
                                .map_err(builder.io(path))?;
                            placed.insert(*hash, path);
                            report.written += 1;
                        }
                        builder.set_meta(path, meta, true)?;
                    }
                    Kind::Symlink { target } => {
                        builder.symlink(target, path)?;
                        builder.set_meta(path, meta, false)?;
                    }
                    Kind::Fifo => {
                        builder.mknod(path, FileType::Fifo, 0)?;
                        builder.set_meta(path, meta, true)?;
                    }
                    Kind::CharDev { rdev } => {
                        builder.mknod(path, FileType::CharacterDevice, *rdev)?;
                        builder.set_meta(path, meta, true)?;
                    }
                    Kind::BlockDev { rdev } => {
                        builder.mknod(path, FileType::BlockDevice, *rdev)?;
                        builder.set_meta(path, meta, true)?;
                    }
                },
            }
        }
        // Directories last and deepest first, so a read-only directory is filled before it
        // is closed and its mtime is not disturbed by its children.
        for (path, meta) in dirs.into_iter().rev() {
            builder.set_meta(path, meta, true)?;
        }
        // The tree's root is not in the manifest: it is always a 0755 directory of root's.
        let root_dir = rustix::fs::chownat(
            &self.dir,
            STAGING_TREE,
            Some(rustix::fs::Uid::ROOT),
            Some(rustix::fs::Gid::ROOT),
            AtFlags::empty(),
        )
        .and_then(|()| {
            rustix::fs::chmodat(
                &self.dir,
                STAGING_TREE,
                Mode::from_raw_mode(0o755),
                AtFlags::empty(),
            )
        });
        root_dir.map_err(|e| Error::io(&staging_path)(e.into()))?;
        // Directory handles are O_PATH; syncing needs a real descriptor.
        let fd = self.dir.open(STAGING_TREE).map_err(self.io(STAGING_TREE))?;
        rustix::fs::syncfs(&fd).map_err(|e| Error::io(&staging_path)(e.into()))?;
        Ok(())
    }

    /// Scans the staging tree and compares it with the manifest, entry by entry.
    fn verify_staged(&self, target: &VerifiedManifest) -> Result<()> {
        let found = tree::scan(&self.root.join(STAGING_TREE))?;
        let diffs = tree::differences(&target.manifest().entries, &found);
        if let Some(first) = diffs.first() {
            return Err(Error::Verify {
                version: target.manifest().version.clone(),
                count: diffs.len(),
                first: first.clone(),
            });
        }
        Ok(())
    }

    /// Moves the verified staging tree into place and switches `current` to it.
    fn commit(&self, target: &VerifiedManifest) -> Result<()> {
        let v = &target.manifest().version;
        let dest = format!("deployments/{v}");
        if self.dir.exists(&dest) {
            self.dir.remove_dir_all(&dest).map_err(self.io(&dest))?;
        }
        let base = format!("{MANIFESTS}/{v}");
        self.write_atomic(&format!("{base}.manifest"), target.bytes())?;
        self.write_atomic(&format!("{base}.sig"), target.signature())?;
        self.dir
            .rename(STAGING_TREE, &self.dir, &dest)
            .map_err(self.io(&dest))?;
        self.sync_dir("deployments")?;
        let old = self.current()?;
        if let Some(old) = &old {
            self.set_link("previous", old)?;
        }
        self.set_link("current", v)?;
        self.collect_garbage()
    }

    /// Points `name` at `deployments/<version>` by renaming a new symlink over it.
    fn set_link(&self, name: &str, version: &str) -> Result<()> {
        let tmp = format!("{name}.new");
        let _ = self.dir.remove_file(&tmp);
        self.dir
            .symlink_contents(format!("deployments/{version}"), &tmp)
            .map_err(self.io(&tmp))?;
        self.dir
            .rename(&tmp, &self.dir, name)
            .map_err(self.io(name))?;
        self.sync_dir(".")
    }

    fn sync_dir(&self, rel: &str) -> Result<()> {
        let d = self.dir.open(rel).map_err(self.io(rel))?;
        rustix::fs::fsync(&d).map_err(|e| self.io(rel)(e.into()))
    }

    /// Swaps `current` and `previous`.
    pub fn rollback(&self) -> Result<String> {
        let cur = self
            .current()?
            .ok_or_else(|| self.err("nothing is installed"))?;
        let prev = self
            .previous()?
            .ok_or_else(|| self.err("there is no previous version to roll back to"))?;
        if !self.dir.exists(format!("deployments/{prev}")) {
            return Err(self.err(format!("previous version {prev} is no longer deployed")));
        }
        self.set_link("current", &prev)?;
        self.set_link("previous", &cur)?;
        Ok(prev)
    }

    /// Removes deployments and manifests other than `current` and `previous`, and the
    /// content store.
    fn collect_garbage(&self) -> Result<()> {
        let keep: HashSet<String> = [self.current()?, self.previous()?]
            .into_iter()
            .flatten()
            .collect();
        for e in self
            .dir
            .read_dir("deployments")
            .map_err(self.io("deployments"))?
        {
            let e = e.map_err(self.io("deployments"))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name) {
                let rel = format!("deployments/{name}");
                self.dir.remove_dir_all(&rel).map_err(self.io(&rel))?;
                let _ = self.dir.remove_file(format!("{MANIFESTS}/{name}.manifest"));
                let _ = self.dir.remove_file(format!("{MANIFESTS}/{name}.sig"));
            }
        }
        for d in [CONTENT, DOWNLOADS] {
            if self.dir.exists(d) {
                self.dir.remove_dir_all(d).map_err(self.io(d))?;
            }
        }
        Ok(())
    }
}

/// Writes entries into the staging tree through its directory handle.
struct Builder<'a> {
    staging: &'a Dir,
    staging_path: &'a Path,
}

impl Builder<'_> {
    fn io<'p>(&self, path: &'p EntryPath) -> impl FnOnce(io::Error) -> Error + 'p {
        let full = self.staging_path.join(path.as_path());
        move |e| Error::io(full)(e)
    }

    fn errno<'p>(
        &self,
        path: &'p EntryPath,
        what: &'static str,
    ) -> impl FnOnce(rustix::io::Errno) -> Error + 'p {
        let full = self.staging_path.join(path.as_path());
        move |e| Error::Io {
            path: full,
            source: io::Error::new(io::Error::from(e).kind(), format!("{what}: {e}")),
        }
    }

    /// The directory handle holding `path` and the last component.
    fn parent<'p>(&self, path: &'p EntryPath) -> Result<(Dir, &'p [u8])> {
        let dir = match path.parent() {
            Some(p) => self.staging.open_dir(p.as_path()).map_err(self.io(&p))?,
            None => self.staging.try_clone().map_err(self.io(path))?,
        };
        Ok((dir, path.file_name()))
    }

    fn mkdir(&self, path: &EntryPath) -> Result<()> {
        self.staging
            .create_dir(path.as_path())
            .map_err(self.io(path))
    }

    fn hardlink(&self, target: &EntryPath, path: &EntryPath) -> Result<()> {
        self.staging
            .hard_link(target.as_path(), self.staging, path.as_path())
            .map_err(self.io(path))
    }

    fn symlink(&self, target: &[u8], path: &EntryPath) -> Result<()> {
        self.staging
            .symlink_contents(std::ffi::OsStr::from_bytes(target), path.as_path())
            .map_err(self.io(path))
    }

    fn mknod(&self, path: &EntryPath, ft: FileType, rdev: u64) -> Result<()> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::mknodat(&dir, name, ft, Mode::from_raw_mode(0o600), rdev)
            .map_err(self.errno(path, "mknod"))
    }

    /// Owner, then mode (chown clears setuid), then xattrs (chown clears capabilities),
    /// then the normalised mtime.
    fn set_meta(&self, path: &EntryPath, meta: &Meta, chmod: bool) -> Result<()> {
        let (dir, name) = self.parent(path)?;
        rustix::fs::chownat(
            &dir,
            name,
            Some(rustix::fs::Uid::from_raw(meta.uid)),
            Some(rustix::fs::Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(self.errno(path, "chown"))?;
        if chmod {
            rustix::fs::chmodat(&dir, name, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(self.errno(path, "chmod"))?;
        }
        if !meta.xattrs.is_empty() {
            // lsetxattr through the directory descriptor: never follows the entry itself,
            // and works for every entry type, fifos and devices included.
            let proc = PathBuf::from(format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd()))
                .join(std::ffi::OsStr::from_bytes(name));
            for (k, v) in &meta.xattrs {
                rustix::fs::lsetxattr(
                    &proc,
                    std::ffi::OsStr::from_bytes(k),
                    v,
                    rustix::fs::XattrFlags::empty(),
                )
                .map_err(self.errno(path, "setxattr"))?;
            }
        }
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let times = Timestamps {
            last_access: zero,
            last_modification: zero,
        };
        rustix::fs::utimensat(&dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(self.errno(path, "utimensat"))
    }
}

/// A delta's source in the running tree, opened to be read where the delta needs it (an ELF
/// delta reads the headers and the ranges its records name, not the whole file).
fn open_source(base_dir: &Dir, path: &EntryPath) -> Result<std::fs::File> {
    Ok(base_dir
        .open(path.as_path())
        .map_err(Error::io(path.as_path()))?
        .into_std())
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
