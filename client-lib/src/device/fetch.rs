//! Fetching the contents a target needs and the running tree lacks: packs, deltas applied to
//! the running tree's files, and whole objects, into the content store
//! (`staging/content/<hash>`), each verified by hash before it is stored.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use cap_std::fs::Dir;

use super::{DeployReport, Device, Job, CONTENT, DOWNLOADS, FETCH_THREADS};
use crate::error::{Error, Result};
use crate::transport::Transport;
use deltaroot_format::bounds::{object_bound, pack_body_bound};
use deltaroot_format::container::{Payload, Source};
use deltaroot_format::fsio::AtomicFile;
use deltaroot_format::plan::entry_matches;
use deltaroot_format::streamed::{apply_delta_file, apply_payload_into};
use deltaroot_format::tree;
use deltaroot_format::Error as FormatError;
use deltaroot_format::{
    delta_path, object_path, pack_path, DeltaHeader, EntryKind, EntryPath, Fetch, Hash, PackEntry,
    PackReader, PackRef, Plan, PlanItem, VerifiedManifest,
};

impl Device {
    /// Downloads and verifies every content the target needs and the running tree lacks.
    pub(super) fn fetch_contents(
        &self,
        target: &VerifiedManifest,
        base: Option<(&deltaroot_format::Manifest, &Dir)>,
        plan: &Plan,
        transport: &dyn Transport,
        report: &mut DeployReport,
        distrusted: &HashSet<Hash>,
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
                    .filter(|(h, _)| !distrusted.contains(h))
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
                    match self.fetch_pack(pack, &items, &needed, &have, base, transport) {
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
            let alone_done = self.fetch_alone(alone, &planned, &have, base, transport);
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
        let (d3, o3) = self.fetch_alone(rest, &planned, &have, base, transport)?;
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
        base: Option<(&deltaroot_format::Manifest, &Dir)>,
        transport: &dyn Transport,
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
                    match self.fetch_one(hash, size, fetch, have, base, transport) {
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
        base: Option<(&deltaroot_format::Manifest, &Dir)>,
        transport: &dyn Transport,
    ) -> Result<bool> {
        let dest = format!("{CONTENT}/{hash}");
        if let (Some(Fetch::Delta { source, bytes }), Some((_, base_dir))) = (fetch, base) {
            if let Some(src_path) = have.get(source) {
                match self.fetch_delta(hash, size, *source, *bytes, src_path, base_dir, transport) {
                    Ok(()) => return Ok(true),
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
        // The plan's bytes were checked against this bound (`bounds::check_plan`).
        let max = exact.unwrap_or(object_bound(size));
        let dl = format!("{DOWNLOADS}/{hash}.zst");
        let rel = object_path(&hash);
        self.download(transport, &rel, &dl, exact, max)?;
        let res = self.unpack_object(&dl, &dest, hash, size, &rel);
        let _ = self.dir.remove_file(&dl);
        res?;
        Ok(false)
    }

    /// Downloads the delta `source` -> `hash` and applies it to the running tree's copy of
    /// `source`, writing the verified content into the store as it is decoded
    /// (`deltaroot_format::streamed`: bsdiff and whole-file deltas in bounded memory).
    #[allow(clippy::too_many_arguments)]
    fn fetch_delta(
        &self,
        hash: Hash,
        size: u64,
        source: Hash,
        bytes: u64,
        src_path: &EntryPath,
        base_dir: &Dir,
        transport: &dyn Transport,
    ) -> Result<()> {
        let rel = delta_path(&source, &hash);
        let dl = format!("{DOWNLOADS}/{source}-{hash}");
        self.download(transport, &rel, &dl, Some(bytes), bytes)?;
        let started = std::time::Instant::now();
        let mut slow = false;
        let applied = self.dir.open(&dl).map_err(self.io(&dl)).and_then(|delta| {
            let old = open_source(base_dir, src_path)?;
            let from = Source::File {
                file: &old,
                path: src_path.as_path(),
            };
            let (delta, dl_path) = (delta.into_std(), self.root.join(&dl));
            slow = is_slow(&delta);
            self.write_content_with(&format!("{CONTENT}/{hash}"), |out, out_name| {
                apply_delta_file(&delta, &dl_path, from, Some((hash, size)), out, out_name)
            })
        });
        // A download that does not apply is not kept for a resume.
        let _ = self.dir.remove_file(&dl);
        if slow && applied.is_ok() {
            self.count_rebuilt(size, started.elapsed());
        }
        applied
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
        base: Option<(&deltaroot_format::Manifest, &Dir)>,
        transport: &dyn Transport,
    ) -> Result<(Vec<Hash>, Vec<Hash>)> {
        let rel = pack_path(&pack.hash);
        let dl = format!("{DOWNLOADS}/{}.pack", pack.hash);
        let path = self.root.join(&dl);
        self.download(transport, &rel, &dl, Some(pack.bytes), pack.bytes)?;
        let got = tree::hash_file(&path)?;
        if got != pack.hash {
            let _ = self.dir.remove_file(&dl);
            return Err(Error::from(FormatError::ContentHash {
                what: rel,
                got,
                want: pack.hash,
            }));
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
        base: Option<(&deltaroot_format::Manifest, &Dir)>,
    ) -> Result<(Vec<Hash>, Vec<Hash>)> {
        let mut reader = PackReader::open(rel, file)?;
        for e in reader.index() {
            if !want
                .get(&e.target)
                .is_some_and(|i| entry_matches(e.kind, &i.fetch))
            {
                return Err(Error::from(FormatError::PackMalformed {
                    pack: rel.to_string(),
                    reason: format!("entry {} is not one the plan fetches through it", e.target),
                }));
            }
            // Item sizes are the signed manifest's (`bounds::check_plan`); no body is read,
            // nor room made for it, past its bound.
            let bound = pack_body_bound(e.kind, want[&e.target].size);
            if e.len > bound {
                return Err(Error::from(FormatError::PackMalformed {
                    pack: rel.to_string(),
                    reason: format!(
                        "entry {} declares {} bytes, more than its bound of {bound}",
                        e.target, e.len
                    ),
                }));
            }
        }
        let given: Mutex<(Vec<Hash>, Vec<Hash>)> = Mutex::new((Vec::new(), Vec::new()));
        let produce = || loop {
            let next = reader.next_body(|e| pack_body_bound(e.kind, want[&e.target].size));
            match next {
                Ok(Some(entry)) if !needed.contains(&entry.0.target) => {}
                Ok(Some(entry)) => return Some(entry),
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(pack = rel, error = %e, "pack ends early; fetching the rest alone");
                    return None;
                }
            }
        };
        let consume = |(e, body): (PackEntry, Vec<u8>)| {
            let item = want[&e.target];
            match self.apply_entry(&e, &body, item, have, base) {
                Ok(()) => {
                    let mut g = given.lock().expect("not poisoned");
                    match e.kind {
                        EntryKind::Object => g.1.push(e.target),
                        EntryKind::Delta(_) => g.0.push(e.target),
                    }
                    Ok(())
                }
                Err(err) if err.is_unusable_delta() => {
                    tracing::warn!(content = %e.target, error = %err, "pack entry unusable; fetching it alone");
                    Ok(())
                }
                Err(err) => Err(err),
            }
        };
        pipeline(FETCH_THREADS, produce, consume)?;
        Ok(given.into_inner().expect("not poisoned"))
    }

    /// Stores the content one pack entry gives, verified.
    fn apply_entry(
        &self,
        e: &PackEntry,
        body: &[u8],
        item: &PlanItem,
        have: &HashMap<Hash, &EntryPath>,
        base: Option<(&deltaroot_format::Manifest, &Dir)>,
    ) -> Result<()> {
        let dest = format!("{CONTENT}/{}", e.target);
        match (e.kind, &item.fetch) {
            (EntryKind::Delta(method), Fetch::Delta { source, .. }) => {
                let (Some(src_path), Some((_, base_dir))) = (have.get(source), base) else {
                    return Err(Error::from(FormatError::DeltaMismatch {
                        what: delta_path(source, &e.target),
                        reason: "the running tree does not hold its source".into(),
                    }));
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
                self.write_content_with(&dest, |out, out_name| {
                    apply_payload_into(&h, Payload::Unwrapped(body), from, out, out_name)
                })
            }
            _ => {
                let what = format!("{} in a pack", object_path(&e.target));
                if body.len() as u64 != item.size {
                    return Err(Error::from(FormatError::ContentLength {
                        what,
                        got: body.len() as u64,
                        want: item.size,
                    }));
                }
                let got = Hash::of(body);
                if got != e.target {
                    return Err(Error::from(FormatError::ContentHash {
                        what,
                        got,
                        want: e.target,
                    }));
                }
                self.write_content(&dest, body)
            }
        }
    }

    /// Downloads `rel` into `dl` under the root, resuming what an interrupted attempt left.
    fn download(
        &self,
        transport: &dyn Transport,
        rel: &str,
        dl: &str,
        exact: Option<u64>,
        max: u64,
    ) -> Result<u64> {
        let mut opts = cap_std::fs::OpenOptions::new();
        opts.read(true).write(true).create(true);
        let mut file = self
            .dir
            .open_with(dl, &opts)
            .map_err(self.io(dl))?
            .into_std();
        let res = transport.download(rel, &mut file, &self.root.join(dl), exact, max);
        // A download refused (too long, cut short, not there) is emptied by the transport:
        // it is removed rather than left for a resume that has nothing to resume. One that
        // failed on the way keeps its bytes for the next attempt.
        if res.is_err() && file.metadata().is_ok_and(|m| m.len() == 0) {
            let _ = self.dir.remove_file(dl);
        }
        res
    }

    /// Writes a verified content into the store. Not synced one by one: the staged tree is
    /// synced as a whole before anything points at it, and the store is re-verified by hash
    /// when an interrupted attempt is resumed.
    fn write_content(&self, rel: &str, data: &[u8]) -> Result<()> {
        self.write_content_with(rel, |out, name| {
            out.write_all(data).map_err(FormatError::io(name))?;
            Ok(data.len() as u64)
        })
    }

    /// Writes a content into the store through `write`, which gets the temporary file and its
    /// path and verifies what it writes; the file is renamed into place only when `write`
    /// succeeds, and removed otherwise.
    fn write_content_with(
        &self,
        rel: &str,
        write: impl FnOnce(&mut dyn Write, &std::path::Path) -> Result<u64, FormatError>,
    ) -> Result<()> {
        let mut f = AtomicFile::create_in(&self.dir, rel).map_err(self.io(rel))?;
        let name = self.root.join(f.temp_path());
        write(&mut f, &name)?;
        f.commit_unsynced().map_err(self.io(rel))
    }

    fn content_ok(&self, rel: &str, hash: Hash, size: u64) -> Result<bool> {
        let p = self.root.join(rel);
        let len = std::fs::metadata(&p).map_err(Error::io(&p))?.len();
        Ok(len == size && tree::hash_file(&p)? == hash)
    }

    /// Decompresses a downloaded object into the content store, hashing as it goes.
    fn unpack_object(&self, dl: &str, dest: &str, hash: Hash, size: u64, url: &str) -> Result<()> {
        let src = self.dir.open(dl).map_err(self.io(dl))?;
        let mut out = AtomicFile::create_in(&self.dir, dest).map_err(self.io(dest))?;
        let bad = |reason: String| {
            Error::from(FormatError::DeltaPayload {
                what: url.to_string(),
                method: "zstd",
                reason,
            })
        };
        let mut dec = zstd::stream::read::Decoder::new(src).map_err(|e| bad(e.to_string()))?;
        dec.window_log_max(deltaroot_format::container::MAX_WINDOW_LOG)
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
            out.write_all(&buf[..n]).map_err(self.io(dest))?;
        }
        let got: Hash = hasher.finalize().into();
        // Dropped on the errors below, the temporary file is removed.
        if len != size {
            return Err(Error::from(FormatError::ContentLength {
                what: url.to_string(),
                got: len,
                want: size,
            }));
        }
        if got != hash {
            return Err(Error::from(FormatError::ContentHash {
                what: url.to_string(),
                got,
                want: hash,
            }));
        }
        // The file is synced (the directory is, with the whole tree, before anything points
        // at it).
        out.file().sync_all().map_err(self.io(dest))?;
        out.commit_unsynced().map_err(self.io(dest))
    }
}

/// Hands what `produce` gives (until `None`) to `workers` threads running `consume`, through
/// a queue of `workers` items, and returns the first error of a consumer.
///
/// An end on either side ends both: the producer's end (or its error, which it logs and
/// turns into `None`) drops the sender, so the consumers see the queue close; a consumer's
/// error drops the receiver, so a producer blocked on a full queue gets a send error at once
/// instead of waiting for ever for consumers that are gone (and holding `state/lock`).
fn pipeline<T: Send>(
    workers: usize,
    mut produce: impl FnMut() -> Option<T>,
    consume: impl Fn(T) -> Result<()> + Sync,
) -> Result<()> {
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let (tx, rx) = std::sync::mpsc::sync_channel::<T>(workers);
    let rx = Mutex::new(Some(rx));
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let next = rx.lock().expect("not poisoned").as_ref().map(|r| r.recv());
                let Some(Ok(item)) = next else { break };
                if let Err(err) = consume(item) {
                    failed.lock().expect("not poisoned").get_or_insert(err);
                    // Whoever waits on a full queue learns at once that no one will take it.
                    drop(rx.lock().expect("not poisoned").take());
                    break;
                }
            });
        }
        loop {
            if failed.lock().expect("not poisoned").is_some() {
                break;
            }
            let Some(item) = produce() else { break };
            if tx.send(item).is_err() {
                break;
            }
        }
        drop(tx);
    });
    match failed.into_inner().expect("not poisoned") {
        Some(e) => Err(e),
        None => Ok(()),
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

/// Whether the delta in `file` is of a method slow to rebuild (`xz`: the content is
/// compressed again), whose rebuild speed the device measures ([`super::prefer`]).
fn is_slow(file: &std::fs::File) -> bool {
    let mut head = [0u8; deltaroot_format::container::HEADER_LEN];
    std::os::unix::fs::FileExt::read_exact_at(file, &mut head, 0).is_ok()
        && DeltaHeader::decode(&head).is_ok_and(|(h, _)| h.method == deltaroot_format::Method::Xz)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::pipeline;
    use crate::error::Error;

    /// Every consumer fails (a full disk) after the producer has filled the queue: the
    /// producer must see it and stop, not wait for ever to hand over the next item.
    #[test]
    fn a_pipeline_whose_consumers_all_fail_returns_their_error_instead_of_hanging() {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut n = 0u32;
            let res = pipeline(
                4,
                || {
                    n += 1;
                    (n < 100_000).then_some(n)
                },
                |_| {
                    std::thread::sleep(Duration::from_millis(100));
                    Err(Error::io("staging/content/x")(std::io::Error::other(
                        "No space left on device",
                    )))
                },
            );
            tx.send(res.map_err(|e| e.to_string())).unwrap();
        });
        let res = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the pipeline hangs when its consumers fail");
        let err = res.unwrap_err();
        assert!(err.contains("staging/content/x: No space left"), "{err}");
    }

    /// The producer ends early (a pack cut short): the consumers see the end and stop.
    #[test]
    fn a_pipeline_ends_when_its_producer_does() {
        let done = std::sync::atomic::AtomicU32::new(0);
        let mut n = 0u32;
        pipeline(
            4,
            || {
                n += 1;
                (n <= 10).then_some(n)
            },
            |_| {
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(done.into_inner(), 10);
    }
}
