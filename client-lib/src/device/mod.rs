//! The device root: deployments side by side, an atomic `current`/`previous` switch, and the
//! staging of a new version beside the running one.
//!
//! Layout under the root (see `ARCHITECTURE.md`, "A device applies an update"):
//!
//! ```text
//! deployments/<version>/   one complete tree per kept version; each shared path of its
//!                          release (`var/lib`) a symlink to shared/<path>
//!                          (`deployments/2/var/lib -> ../../../shared/var/lib`)
//! shared/<path>/           the device's data in a shared path: created (empty, with the
//!                          mode the release declares) when a release first shares it, then
//!                          never written by updates, rollbacks or pruning
//! current  -> deployments/<version>      the running version
//! previous -> deployments/<version>      what `rollback` returns to
//! staging/tree/            the next version while it is built
//! staging/content/<hash>   verified new contents waiting to be placed
//! staging/downloads/       partial downloads, resumed after a cut
//! staging/replaced/        an incomplete tree of the version installed, moved aside
//! staging/for              the version the contents and downloads are for (resumable)
//! staging/manifest(.sig)   what `update --download-only` staged, for `--apply-staged`
//! state/manifests/         the signed manifests of the kept versions
//! state/complete/<v>       written last: that deployment is whole and verified
//! state/status.json        the last result, for `status`
//! state/trial.json         the running version's trial until it is marked good (`trial`)
//! state/answers.json       the newest signed answers taken, to refuse older ones (`answers`)
//! ```
//!
//! The running tree is only ever read: unchanged files are hardlinked from it, and a file
//! whose content is kept but whose metadata changes is copied, because hardlinks share
//! metadata. Every write goes through a `cap_std` directory handle of the device root; files
//! are put in place with `deltaroot_format::fsio` (exclusive temporary file, synced, renamed,
//! directory synced).
//!
//! - this module: [`Device`], opening the root, the lock, `current`/`previous`, status, and
//!   [`Device::deploy`], which runs the steps below in order;
//! - `fetch`: the contents the target needs, from packs, deltas and single downloads;
//! - `stage`: the staging tree built from the running tree and the content store, verified;
//! - `commit`: the switch, rollback, the record of an attempt, pruning;
//! - `shared`: the shared paths, linked into each deployment, their folders made once;
//! - `trial`: the trial of a new version, `mark_good` and `boot_check`'s revert.

use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::transport::Transport;
use deltaroot_format::{fsio, Hash, Name, PublicKey, VerifiedManifest};

mod answers;
mod bounds;
mod commit;
mod fetch;
pub mod prefer;
mod shared;
mod stage;
mod trial;

pub use trial::{BootCheck, MarkGood, Trial};

const STAGING_TREE: &str = "staging/tree";
const CONTENT: &str = "staging/content";
const DOWNLOADS: &str = "staging/downloads";
const MANIFESTS: &str = "state/manifests";
/// `state/complete/<version>`: written last, after `deployments/<version>` was verified,
/// renamed into place and synced; removed first, before the tree is touched. Only a
/// deployment with its mark is switched to.
const COMPLETE: &str = "state/complete";
/// Where an incomplete tree of the version being installed is moved aside whole.
const REPLACED: &str = "staging/replaced";
/// The version the contents and downloads under `staging/` are for, written before the
/// first download: what the next run may resume.
const STAGING_FOR: &str = "staging/for";
const STATUS: &str = "state/status.json";
/// The signed manifest (and `.sig`) of what `update --download-only` staged, for
/// `update --apply-staged`.
const STAGED_MANIFEST: &str = "staging/manifest";
const STAGED_SIG: &str = "staging/manifest.sig";
/// The folders of the root that `fsio` writes temporary files in (beside each target:
/// `current` and `previous`, the state files, manifests, marks, the staging files and store).
const TEMP_DIRS: &[&str] = &[
    "", "state", MANIFESTS, COMPLETE, "staging", CONTENT, DOWNLOADS,
];
/// How `deltaroot_format::fsio` ends the name of a temporary file
/// (`.<target>.<pid>.<attempt>.deltaroot-tmp`).
const TEMP_SUFFIX: &[u8] = b".deltaroot-tmp";
/// Deployments kept by default: the newest two (the running one and the one before).
pub const DEFAULT_KEEP_VERSIONS: usize = 2;
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
    /// Contents of the running tree that were not what its manifest says (changed on the
    /// device), fetched whole instead of reused.
    #[serde(skip_serializing_if = "is_zero")]
    pub repaired: u64,
    /// What the hooks around the switch did, a line each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<String>,
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
    /// The hooks run around a switch and a revert, if the device has any.
    hooks: Option<crate::health::Hooks>,
    /// Deployments pruning keeps besides the running, previous and last good ones: the
    /// newest installed.
    keep_versions: usize,
    /// Fewer bytes or less time, where a plan offers the choice ([`prefer`]).
    prefer: prefer::Prefer,
    /// The bandwidth limit, which caps the link speed the policy assumes.
    max_rate: Option<u64>,
    /// Content bytes rebuilt from slow deltas in this update, and the time they took.
    rebuilt: std::sync::Mutex<(u64, std::time::Duration)>,
}

impl Device {
    /// Opens (and creates, if needed) the device root at `root`.
    pub fn open(root: &Path) -> Result<Device> {
        std::fs::create_dir_all(root).map_err(Error::io(root))?;
        let dir = Dir::open_ambient_dir(root, ambient_authority()).map_err(Error::io(root))?;
        for d in ["deployments", "staging", "state", MANIFESTS, COMPLETE] {
            if !dir.exists(d) {
                dir.create_dir_all(d).map_err(Error::io(root.join(d)))?;
                // The new entry is durable only once the folder holding it is synced.
                let parent = Path::new(d).parent();
                fsio::sync_dir_in(&dir, parent).map_err(Error::io(root.join(d)))?;
            }
        }
        Ok(Device {
            root: root.to_owned(),
            dir,
            hooks: None,
            keep_versions: DEFAULT_KEEP_VERSIONS,
            prefer: prefer::Prefer::default(),
            max_rate: None,
            rebuilt: Default::default(),
        })
    }

    /// Keeps the `n` newest deployments from now on (besides the running, previous and last
    /// good ones, which are always kept).
    pub fn set_keep_versions(&mut self, n: usize) {
        self.keep_versions = n;
    }

    /// Chooses between a delta slow to rebuild and the whole object by `prefer`, assuming
    /// a link no faster than `max_rate` when set.
    pub fn set_prefer(&mut self, prefer: prefer::Prefer, max_rate: Option<u64>) {
        self.prefer = prefer;
        self.max_rate = max_rate;
    }

    /// The speeds this device measured (none yet, or unreadable: the defaults).
    pub fn rates(&self) -> prefer::Rates {
        self.dir
            .read(prefer::RATES)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Runs `hooks` around every switch and revert of this device from now on.
    pub fn set_hooks(&mut self, hooks: Option<crate::health::Hooks>) {
        self.hooks = hooks;
    }

    /// Runs the hooks of `event` for a move from `from` to `to`, if the device has hooks:
    /// their lines, and the first failure (the only one when `stop_at_failure`).
    fn run_hooks(
        &self,
        event: &str,
        from: Option<&str>,
        to: &str,
        stop_at_failure: bool,
    ) -> (Vec<String>, Option<Error>) {
        let Some(h) = &self.hooks else {
            return (Vec::new(), None);
        };
        let env = [
            ("DELTAROOT_ROOT", self.root.display().to_string()),
            ("DELTAROOT_FROM", from.unwrap_or("").to_string()),
            ("DELTAROOT_TO", to.to_string()),
            (
                "DELTAROOT_TREE",
                self.deployment_path(to).display().to_string(),
            ),
        ];
        h.run(event, &env, stop_at_failure)
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
        self.tidy();
        Ok(DeviceLock(f))
    }

    fn link_version(&self, name: &str) -> Result<Option<Name>> {
        match self.dir.read_link_contents(name) {
            Ok(t) => {
                let t = t.as_os_str().as_bytes();
                let v = t
                    .strip_prefix(b"deployments/")
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| Name::new("version", v).ok())
                    .ok_or_else(|| {
                        self.err(format!(
                            "{name} does not point at a version in deployments/"
                        ))
                    })?;
                Ok(Some(v))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(self.root.join(name))(e)),
        }
    }

    /// The running version: `current`'s, when it is a link to a deployment that is there.
    /// A `current` that is a real directory, or a link to a deployment that is gone, runs no
    /// version deltaroot knows: it is logged and counts as nothing installed, so the next
    /// update installs a whole version and replaces it (a real directory is kept, moved
    /// aside to `current.unmanaged`).
    pub fn current(&self) -> Result<Option<Name>> {
        match self.dir.symlink_metadata("current") {
            Ok(m) if m.is_dir() => {
                tracing::warn!(root = %self.root.display(), "current is a directory, not a link to a deployment: treated as nothing installed");
                return Ok(None);
            }
            _ => {}
        }
        let v = self.link_version("current")?;
        if let Some(name) = &v {
            let tree = self.dir.symlink_metadata(format!("deployments/{name}"));
            if !tree.is_ok_and(|m| m.is_dir()) {
                tracing::warn!(root = %self.root.display(), version = %name, "current points at a deployment that is not there: treated as nothing installed");
                return Ok(None);
            }
        }
        Ok(v)
    }

    /// The version `rollback` returns to.
    pub fn previous(&self) -> Result<Option<Name>> {
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
        Ok(VerifiedManifest::verify(bytes, sig, trusted)?)
    }

    /// The last result; a status file that cannot be parsed is logged and counts as no
    /// result (it is rewritten by the next attempt).
    pub fn status(&self) -> Result<Status> {
        match self.dir.read(STATUS) {
            Ok(b) => Ok(serde_json::from_slice(&b).unwrap_or_else(|e| {
                tracing::warn!(path = %self.root.join(STATUS).display(), error = %e, "unreadable status: treated as unknown");
                Status::default()
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Status::default()),
            Err(e) => Err(self.io(STATUS)(e)),
        }
    }

    /// The stored manifest of the running version `v`, re-verified; `None` (logged) when it
    /// is not there, so that an update proceeds as onto a device with nothing verified.
    pub fn running_manifest(
        &self,
        v: &str,
        trusted: &[PublicKey],
    ) -> Result<Option<VerifiedManifest>> {
        match self.manifest(v, trusted) {
            Ok(m) => Ok(Some(m)),
            Err(Error::Io { path, source }) if source.kind() == io::ErrorKind::NotFound => {
                tracing::warn!(path = %path.display(), "the running version's manifest is missing: nothing of the running tree is reused");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Writes `data` to `rel` under the root atomically and durably.
    fn write_atomic(&self, rel: &str, data: &[u8]) -> Result<()> {
        deltaroot_format::fsio::write_atomic_in(&self.dir, rel, data).map_err(self.io(rel))
    }

    /// Builds `target` beside the running version, verifies it and switches to it.
    /// On any error the running version and the `current` link are untouched.
    pub fn deploy(
        &self,
        target: &VerifiedManifest,
        transport: &dyn Transport,
        trusted: &[PublicKey],
    ) -> Result<DeployReport> {
        self.deploy_with(target, transport, trusted, false)
    }

    /// Downloads and verifies what `target` needs into `staging/`, and keeps its signed
    /// manifest there, without building or switching: [`Device::staged`] and
    /// [`Device::deploy`] with a transport that fetches nothing finish it later.
    pub fn stage_downloads(
        &self,
        target: &VerifiedManifest,
        transport: &dyn Transport,
        trusted: &[PublicKey],
    ) -> Result<DeployReport> {
        self.deploy_with(target, transport, trusted, true)
    }

    /// The manifest `stage_downloads` kept, re-verified with `trusted`; `None` when nothing is
    /// staged (or what is staged is for the running version).
    pub fn staged(&self, trusted: &[PublicKey]) -> Result<Option<VerifiedManifest>> {
        let bytes = match self.dir.read(STAGED_MANIFEST) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(STAGED_MANIFEST)(e)),
        };
        let sig = self.dir.read(STAGED_SIG).map_err(self.io(STAGED_SIG))?;
        let m = VerifiedManifest::verify(bytes, sig, trusted)?;
        let for_version = self.dir.read_to_string(STAGING_FOR).unwrap_or_default();
        let current = self.current()?;
        if for_version.trim() != m.manifest().version
            || current.as_deref() == Some(m.manifest().version.as_str())
        {
            return Ok(None);
        }
        Ok(Some(m))
    }

    fn deploy_with(
        &self,
        target: &VerifiedManifest,
        transport: &dyn Transport,
        trusted: &[PublicKey],
        download_only: bool,
    ) -> Result<DeployReport> {
        let m = target.manifest();
        let current = self.current()?;
        if current.as_deref() == Some(m.version.as_str()) {
            return Err(self.err(format!("version {} is already running", m.version)));
        }
        // A complete deployment of this very release (rolled back from, say) is switched
        // to again, not fetched again.
        if self.is_complete(&m.version, Some(target)) {
            tracing::info!(version = %m.version, "its deployment is complete on the device: switching to it without a download");
            let mut report = DeployReport {
                version: m.version.clone(),
                from: current.map(Name::into_string),
                ..Default::default()
            };
            self.ensure_shared(m)?;
            self.switch_on_trial(&m.version, &mut report)?;
            self.collect_garbage()?;
            return Ok(report);
        }
        let running = match &current {
            Some(v) => self.running_manifest(v, trusted)?,
            None => None,
        };
        let base = match (&current, running) {
            (Some(v), Some(cm)) => {
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
            _ => None,
        };
        // The manifest's names were checked when it was verified.
        let product = Name::new("product", m.product.as_str())?;
        let version = Name::new("version", m.version.as_str())?;
        // Without the running manifest nothing of the running tree is verified: the plan
        // is that of a device with nothing installed (whole objects).
        let from = current.as_ref().filter(|_| base.is_some());
        let mut plan = transport.plan_between(
            &product,
            from.zip(base.as_ref().map(|(cm, _)| cm.manifest())),
            (&version, m),
        )?;
        let rates = self.rates();
        prefer::choose(&mut plan, self.prefer, rates, self.max_rate);
        // Signed by the server's answer key (checked by the transport) or not (a release
        // folder): either way its sizes are held to the signed manifest's before any download.
        let download_bytes = bounds::check_plan(target, &plan)?;
        tracing::info!(
            version = %version,
            from = from.map(|f| f.as_str()).unwrap_or("nothing"),
            download_bytes,
            "plan read: downloading"
        );
        let before = transport.downloaded();
        let mut report = DeployReport {
            version: m.version.clone(),
            from: current.map(Name::into_string),
            planned_bytes: plan.download_bytes,
            ..Default::default()
        };
        let base_ref = base.as_ref().map(|(cm, d)| (cm.manifest(), d));
        let none = std::collections::HashSet::new();
        let fetch_started = std::time::Instant::now();
        *self.rebuilt.lock().expect("not poisoned") = Default::default();
        let staged = self
            .check_space(target, base_ref.map(|b| b.0), download_bytes)
            .and_then(|()| self.write_atomic(STAGING_FOR, format!("{version}\n").as_bytes()))
            .and_then(|()| {
                self.fetch_contents(target, base_ref, &plan, transport, &mut report, &none)
            });
        if staged.is_ok() {
            self.record_rates(
                rates,
                transport.downloaded() - before,
                fetch_started.elapsed(),
            );
        }
        if download_only {
            report.downloaded_bytes = transport.downloaded() - before;
            let kept = staged
                .and_then(|()| self.write_atomic(STAGED_MANIFEST, target.bytes()))
                .and_then(|()| self.write_atomic(STAGED_SIG, target.signature()));
            if let Err(e) = &kept {
                self.clean_failed_attempt(e);
            } else {
                tracing::info!(version = %version, downloaded_bytes = report.downloaded_bytes, "downloaded and verified: `update --apply-staged` installs it");
            }
            return kept.map(|()| report);
        }
        let staged = staged
            .and_then(|()| {
                report.downloaded_bytes = transport.downloaded() - before;
                tracing::info!(
                    downloaded_bytes = report.downloaded_bytes,
                    "downloads verified: building the new tree in staging"
                );
                self.build_tree(target, base_ref, &mut report, &none)
            })
            .and_then(|()| {
                tracing::info!(
                    linked = report.linked,
                    copied = report.copied,
                    written = report.written,
                    "tree built: verifying it against the manifest"
                );
                self.verify_staged(target)
            });
        // A tree that does not verify may have reused a file the device changed under the
        // running version: those contents are fetched whole and the tree built again.
        let staged = match (staged, base_ref) {
            (Err(e @ Error::Verify { .. }), Some(b)) => {
                let bad = self.damaged_base(target, b)?;
                if bad.is_empty() {
                    Err(e)
                } else {
                    report.repaired = bad.len() as u64;
                    let before = transport.downloaded();
                    report = DeployReport {
                        linked: 0,
                        copied: 0,
                        written: 0,
                        ..report
                    };
                    let r = self
                        .fetch_contents(target, Some(b), &plan, transport, &mut report, &bad)
                        .and_then(|()| self.build_tree(target, Some(b), &mut report, &bad))
                        .and_then(|()| self.verify_staged(target));
                    report.downloaded_bytes += transport.downloaded() - before;
                    r
                }
            }
            (r, _) => r,
        };
        let staged = staged.and_then(|()| self.commit(target, &mut report));
        if staged.is_ok() {
            tracing::info!(version = %version, "switched: current is now {version}");
        }
        if let Err(e) = &staged {
            self.clean_failed_attempt(e);
        }
        staged.map(|()| report)
    }

    /// Refuses, before anything is staged, a target that the file system of the root cannot
    /// hold: its downloads (`download_bytes`, the plan's checked entries added up) and every
    /// file that is not hardlinked from the running tree.
    fn check_space(
        &self,
        target: &VerifiedManifest,
        base: Option<&deltaroot_format::Manifest>,
        download_bytes: u64,
    ) -> Result<()> {
        let linkable: std::collections::HashSet<(Hash, &deltaroot_format::Meta)> = base
            .map(|b| {
                b.entries
                    .iter()
                    .filter_map(|e| match e {
                        deltaroot_format::Entry::Node {
                            kind: deltaroot_format::Kind::File { hash, .. },
                            meta,
                            ..
                        } => Some((*hash, meta)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut needed = download_bytes;
        for e in &target.manifest().entries {
            if let deltaroot_format::Entry::Node {
                kind: deltaroot_format::Kind::File { hash, size },
                meta,
                ..
            } = e
            {
                if !linkable.contains(&(*hash, meta)) {
                    needed = needed.saturating_add(*size);
                }
            }
        }
        let fs = rustix::fs::statvfs(&self.root).map_err(|e| self.io(".")(e.into()))?;
        let available = fs.f_bavail.saturating_mul(fs.f_frsize);
        if needed > available {
            return Err(Error::NoSpace {
                path: self.root.clone(),
                version: target.manifest().version.clone(),
                needed,
                available,
            });
        }
        Ok(())
    }

    /// What a failed attempt leaves under `staging/`: the tree (always rebuilt) goes; on a
    /// full disk everything goes, downloads and contents included, so the disk is not left
    /// full; otherwise verified contents and partial downloads stay for the next attempt
    /// to resume. Best effort: the attempt's own error is what is reported.
    fn clean_failed_attempt(&self, error: &Error) {
        let all = error.is_out_of_space();
        let dirs: &[&str] = if all {
            &[
                STAGING_TREE,
                REPLACED,
                CONTENT,
                DOWNLOADS,
                STAGING_FOR,
                STAGED_MANIFEST,
                STAGED_SIG,
            ]
        } else {
            &[STAGING_TREE, REPLACED]
        };
        self.remove_quietly(dirs);
    }

    /// Removes each of `rels` (a folder or a file) under the root, logging what fails.
    fn remove_quietly(&self, rels: &[&str]) {
        for rel in rels {
            let res = match self.dir.symlink_metadata(rel) {
                Ok(m) if m.is_dir() => self.dir.remove_dir_all(rel),
                Ok(_) => self.dir.remove_file(rel),
                Err(e) => Err(e),
            };
            match res {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %self.root.join(rel).display(), error = %e, "could not remove a leftover")
                }
            }
        }
    }

    /// Run with the lock taken, before anything else: removes what an earlier run killed at
    /// any point left behind. The staging tree and a tree moved aside always go (an attempt
    /// rebuilds them); contents and downloads go too unless they are for a version still
    /// to be installed (`staging/for`), which the next attempt resumes: then the contents
    /// a killed build had moved into the staging tree go back to the store first. The temporary files
    /// of writes cut short go. Deployments other than `current` and `previous` are pruned.
    /// Best effort: logged, never an error.
    fn tidy(&self) {
        let staged_for = self
            .dir
            .read_to_string(STAGING_FOR)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| self.current().ok().flatten().as_deref() != Some(v.as_str()));
        let pending = staged_for.clone().filter(|v| !self.is_complete(v, None));
        if let Some(v) = &pending {
            // A tree of it renamed into place but not marked is pruned below: its contents
            // go back too (never out of `current`'s or `previous`'s tree).
            let links = [
                self.current().ok().flatten(),
                self.previous().ok().flatten(),
            ];
            let unmarked = format!("deployments/{v}");
            let own = !links.iter().flatten().any(|l| l.as_str() == v);
            for tree in [STAGING_TREE, REPLACED, unmarked.as_str()] {
                if tree == STAGING_TREE || tree == REPLACED || own {
                    self.rescue_contents(tree);
                }
            }
        }
        self.remove_quietly(&[STAGING_TREE, REPLACED]);
        self.remove_temporaries();
        if pending.is_none() && staged_for.is_some() {
            // Complete but not switched to (a run killed before its switch): its contents
            // are not needed, but `update --apply-staged` still finds what it staged, and
            // switches to it.
            self.remove_quietly(&[CONTENT, DOWNLOADS]);
        } else if pending.is_none() {
            self.remove_quietly(&[CONTENT, DOWNLOADS, STAGING_FOR, STAGED_MANIFEST, STAGED_SIG]);
        }
        if let Err(e) = self.prune() {
            tracing::warn!(root = %self.root.display(), error = %e, "could not prune old deployments");
        }
    }
}

impl Device {
    /// Moves back into the content store what a killed build had moved from it into the
    /// tree at `rel` (its files of one link, named by their hash, their xattrs removed), so
    /// that the next attempt need not fetch them again: `update --apply-staged` cannot.
    /// The store is verified by hash before it is used. Best effort.
    fn rescue_contents(&self, rel: &str) {
        let tree = self.root.join(rel);
        let Ok(found) = deltaroot_format::tree::walk(&tree) else {
            return;
        };
        let mut moved = false;
        for f in found {
            // Hardlinked from the running tree (or within the tree): not the store's.
            let one_link = f.inode.is_none();
            if !matches!(f.kind, deltaroot_format::tree::FoundKind::File { .. }) || !one_link {
                continue;
            }
            let Ok(hash) = deltaroot_format::tree::hash_file(&f.abs) else {
                continue;
            };
            let dest = format!("{CONTENT}/{hash}");
            if self.dir.exists(&dest) || self.dir.create_dir_all(CONTENT).is_err() {
                continue;
            }
            let from = Path::new(rel).join(f.path.as_path());
            // Through the handle of its folder under the root: a folder of the killed tree
            // swapped for a symlink since the walk leads nowhere else.
            let parent = from.parent().map(|p| self.dir.open_dir(p));
            let (Some(Ok(parent)), Some(name)) = (parent, from.file_name()) else {
                continue;
            };
            let entry = stage::entry_through(&parent, name.as_bytes());
            for (name, _) in deltaroot_format::tree::read_xattrs(&entry).unwrap_or_default() {
                let _ = rustix::fs::lremovexattr(&entry, std::ffi::OsStr::from_bytes(&name));
            }
            match self.dir.rename(&from, &self.dir, &dest) {
                Ok(()) => moved = true,
                Err(e) => {
                    tracing::warn!(path = %f.abs.display(), error = %e, "could not move a content back into the store")
                }
            }
        }
        if moved {
            let _ = fsio::sync_dir_in(&self.dir, Some(Path::new(CONTENT)));
        }
    }

    /// Removes the temporary files of writes that a killed run left half done (a temporary
    /// file is only ever renamed into place by the run that made it, and runs hold the lock).
    fn remove_temporaries(&self) {
        for d in TEMP_DIRS {
            let Ok(entries) = self.dir.read_dir(if d.is_empty() { "." } else { d }) else {
                continue;
            };
            let mut removed = false;
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.as_bytes();
                if name.starts_with(b".") && name.ends_with(TEMP_SUFFIX) {
                    let rel = Path::new(d).join(std::ffi::OsStr::from_bytes(name));
                    match self.dir.remove_file(&rel) {
                        Ok(()) => removed = true,
                        Err(e) => {
                            tracing::warn!(path = %self.root.join(&rel).display(), error = %e, "could not remove a leftover temporary file")
                        }
                    }
                }
            }
            if removed {
                let _ = fsio::sync_dir_in(&self.dir, Some(Path::new(d)));
            }
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
