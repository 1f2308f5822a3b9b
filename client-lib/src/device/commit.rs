//! Switching to a verified staging tree, rolling back, recording an attempt's outcome and
//! pruning what neither `current` nor `previous` needs.

use std::collections::HashSet;

use super::{
    now, DeployReport, Device, Status, COMPLETE, CONTENT, DOWNLOADS, MANIFESTS, REPLACED,
    STAGED_MANIFEST, STAGED_SIG, STAGING_FOR, STAGING_TREE, STATUS,
};
use crate::error::Result;
use deltaroot_format::{Hash, Name, VerifiedManifest};

/// Where a real directory found at `current` is kept.
const UNMANAGED: &str = "current.unmanaged";

impl Device {
    /// Records the outcome of an attempt in `state/status.json`.
    pub fn record(&self, version: &str, result: &Result<DeployReport>) -> Result<()> {
        self.write_status(&Status {
            last_result: Some(if result.is_ok() { "ok" } else { "failed" }.into()),
            last_version: Some(version.to_string()),
            last_error: result.as_ref().err().map(|e| e.to_string()),
            updated_at: now(),
        })
    }

    /// Records that `left` was rolled back from, so the next check reports it.
    pub fn record_rollback(&self, left: Option<&Name>) -> Result<()> {
        self.write_status(&Status {
            last_result: Some("rolled-back".into()),
            last_version: left.map(|v| v.to_string()),
            last_error: None,
            updated_at: now(),
        })
    }

    /// Removes `state/status.json` (best effort) when an outcome could not be recorded, so
    /// that `status` does not go on showing an earlier result.
    pub fn forget_status(&self) {
        match self.dir.remove_file(STATUS) {
            Ok(()) => {
                let _ = self.sync_dir("state");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(error = %e, "could not remove the outdated {STATUS}"),
        }
    }

    pub(super) fn write_status(&self, status: &Status) -> Result<()> {
        let json = serde_json::to_vec_pretty(status).expect("status serialises");
        self.write_atomic(STATUS, &json)
    }

    /// Moves the verified staging tree into place and switches `current` to it.
    ///
    /// A complete tree is never deleted in place: an earlier, incomplete tree of the same
    /// version loses its mark first and is then moved aside whole (`staging/replaced`); the
    /// new tree is renamed in, synced, and marked complete last. A power cut at any point
    /// leaves either the old `current` or the new one, and never a marked tree that is not
    /// whole.
    pub(super) fn commit(
        &self,
        target: &VerifiedManifest,
        report: &mut DeployReport,
    ) -> Result<()> {
        let v = &target.manifest().version;
        let dest = format!("deployments/{v}");
        self.unmark_complete(v)?;
        let base = format!("{MANIFESTS}/{v}");
        self.write_atomic(&format!("{base}.manifest"), target.bytes())?;
        self.write_atomic(&format!("{base}.sig"), target.signature())?;
        if self.dir.symlink_metadata(&dest).is_ok() {
            self.remove_dir_if_present(REPLACED)?;
            self.dir
                .rename(&dest, &self.dir, REPLACED)
                .map_err(self.io(&dest))?;
        }
        self.dir
            .rename(STAGING_TREE, &self.dir, &dest)
            .map_err(self.io(&dest))?;
        self.sync_dir("deployments")?;
        self.sync_dir("staging")?;
        self.mark_complete(target)?;
        self.mark_running_deployment()?;
        self.ensure_shared(target.manifest())?;
        self.switch_on_trial(v, report)?;
        self.collect_garbage()
    }

    /// Switches to the complete deployment of `v`, which goes on trial: the pre-switch
    /// hooks first, which may stop the switch (the tree stays, complete, for a later
    /// attempt), the post-switch hooks after, which are told of it and cannot undo it.
    pub(super) fn switch_on_trial(&self, v: &str, report: &mut DeployReport) -> Result<()> {
        let from = self.current()?.map(Name::into_string);
        let (lines, failed) = self.run_hooks("pre-switch", from.as_deref(), v, true);
        report.hooks.extend(lines);
        if let Some(e) = failed {
            return Err(self.err(format!("a pre-switch hook stopped the switch to {v}: {e}")));
        }
        self.start_trial(v)?;
        self.switch_to(v)?;
        let (lines, _) = self.run_hooks("post-switch", from.as_deref(), v, false);
        report.hooks.extend(lines);
        Ok(())
    }

    /// Points `previous` at the running version (if any) and `current` at `v`.
    pub(super) fn switch_to(&self, v: &str) -> Result<()> {
        if let Some(old) = self.current()? {
            if old != v {
                self.set_link("previous", &old)?;
            }
        }
        // A real directory at `current` is kept, moved aside whole, never deleted.
        if self
            .dir
            .symlink_metadata("current")
            .is_ok_and(|m| m.is_dir())
        {
            if self.dir.symlink_metadata(UNMANAGED).is_ok() {
                return Err(self.err(format!(
                    "current is a directory and {UNMANAGED} is taken: move one of them away"
                )));
            }
            self.dir
                .rename("current", &self.dir, UNMANAGED)
                .map_err(self.io(UNMANAGED))?;
            tracing::warn!(root = %self.root.display(), "the directory at current was moved to {UNMANAGED}");
        }
        self.set_link("current", v)
    }

    /// The mark of a complete deployment holds the hash of its manifest's bytes.
    fn mark_complete(&self, target: &VerifiedManifest) -> Result<()> {
        let v = &target.manifest().version;
        let mark = format!("{}\n", Hash::of(target.bytes()));
        self.write_atomic(&format!("{COMPLETE}/{v}"), mark.as_bytes())
    }

    /// Marks the running deployment complete when an agent from before these marks put it
    /// there (it pointed `current` only at whole trees), so that it can be rolled back to.
    fn mark_running_deployment(&self) -> Result<()> {
        let Some(cur) = self.current()? else {
            return Ok(());
        };
        let mark = format!("{COMPLETE}/{cur}");
        let tree = self.dir.symlink_metadata(format!("deployments/{cur}"));
        if self.dir.exists(&mark) || !tree.is_ok_and(|m| m.is_dir()) {
            return Ok(());
        }
        let rel = format!("{MANIFESTS}/{cur}.manifest");
        let Ok(bytes) = self.dir.read(&rel) else {
            return Ok(());
        };
        self.write_atomic(&mark, format!("{}\n", Hash::of(&bytes)).as_bytes())
    }

    /// Marks `deployments/<v>` complete if it has no mark (an agent from before the marks
    /// installed it) but matches its stored, re-verified manifest entry by entry. Returns
    /// whether it is complete now; a tree that does not match (half deleted) stays
    /// unmarked.
    pub fn adopt_deployment(&self, v: &str, trusted: &[deltaroot_format::PublicKey]) -> bool {
        if self.is_complete(v, None) {
            return true;
        }
        let tree = self.dir.symlink_metadata(format!("deployments/{v}"));
        if !tree.is_ok_and(|m| m.is_dir()) {
            return false;
        }
        let Ok(m) = self.manifest(v, trusted) else {
            return false;
        };
        let found = match deltaroot_format::tree::scan(&self.deployment_path(v)) {
            Ok(found) => found,
            Err(_) => return false,
        };
        let want = super::shared::deployed_entries(m.manifest());
        let diffs = deltaroot_format::tree::differences(&want, &found);
        if let Some(first) = diffs.first() {
            tracing::warn!(version = v, differences = diffs.len(), first = %first, "deployment does not match its manifest");
            return false;
        }
        match self.mark_complete(&m) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(version = v, error = %e, "could not mark a verified deployment");
                false
            }
        }
    }

    /// Removes the mark of `v` (durably) before its tree is touched.
    fn unmark_complete(&self, v: &str) -> Result<()> {
        let rel = format!("{COMPLETE}/{v}");
        match self.dir.remove_file(&rel) {
            Ok(()) => self.sync_dir(COMPLETE),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(&rel)(e)),
        }
    }

    /// Whether `deployments/<v>` is a whole, verified deployment: its mark is there (and,
    /// given `manifest`, names that manifest) and its tree is a directory.
    pub(super) fn is_complete(&self, v: &str, manifest: Option<&VerifiedManifest>) -> bool {
        let Ok(mark) = self.dir.read_to_string(format!("{COMPLETE}/{v}")) else {
            return false;
        };
        if let Some(m) = manifest {
            if mark.trim() != Hash::of(m.bytes()).to_string() {
                return false;
            }
        }
        self.dir
            .symlink_metadata(format!("deployments/{v}"))
            .is_ok_and(|m| m.is_dir())
    }

    fn remove_dir_if_present(&self, rel: &str) -> Result<()> {
        match self.dir.remove_dir_all(rel) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(rel)(e)),
        }
    }

    /// Points `name` at `deployments/<version>` by renaming a new symlink over it.
    fn set_link(&self, name: &str, version: &str) -> Result<()> {
        deltaroot_format::fsio::symlink_atomic_in(&self.dir, format!("deployments/{version}"), name)
            .map_err(self.io(name))
    }

    pub(super) fn sync_dir(&self, rel: &str) -> Result<()> {
        let d = self.dir.open(rel).map_err(self.io(rel))?;
        rustix::fs::fsync(&d).map_err(|e| self.io(rel)(e.into()))
    }

    /// The `n` deployments whose completion marks are the newest.
    fn newest_complete(&self, n: usize) -> Vec<String> {
        let Ok(marks) = self.dir.read_dir(COMPLETE) else {
            return Vec::new();
        };
        let mut all: Vec<(std::time::SystemTime, String)> = marks
            .filter_map(|e| {
                let e = e.ok()?;
                let when = e.metadata().ok()?.modified().ok()?.into_std();
                Some((when, e.file_name().to_string_lossy().into_owned()))
            })
            .collect();
        all.sort_by(|a, b| b.cmp(a));
        all.into_iter().take(n).map(|(_, v)| v).collect()
    }

    /// Swaps `current` and `previous`.
    pub fn rollback(&self) -> Result<Name> {
        let cur = self
            .current()?
            .ok_or_else(|| self.err("nothing is installed"))?;
        let prev = self
            .previous()?
            .ok_or_else(|| self.err("there is no previous version to roll back to"))?;
        if !self.is_complete(&prev, None) {
            return Err(self.err(format!(
                "previous version {prev} is not complete in deployments/{prev} (an interrupted install or removal left it): not rolled back, nothing changed"
            )));
        }
        self.swap_links(&cur, &prev)?;
        Ok(prev)
    }

    /// Swaps `current` and `previous` in one step (`renameat2` with `RENAME_EXCHANGE`), then
    /// syncs the root: a kill or a power cut leaves both links as they were or both swapped,
    /// never both at one version (the one rolled back from lost). A file system without the
    /// exchange gets the two link renames.
    fn swap_links(&self, cur: &str, prev: &str) -> Result<()> {
        use rustix::fs::{renameat_with, RenameFlags};
        match renameat_with(
            &self.dir,
            "current",
            &self.dir,
            "previous",
            RenameFlags::EXCHANGE,
        ) {
            Ok(()) => self.sync_dir("."),
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOSYS) => {
                self.set_link("current", prev)?;
                self.set_link("previous", cur)
            }
            Err(e) => Err(self.io("current")(e.into())),
        }
    }

    /// Removes deployments and manifests other than `current` and `previous`, and what
    /// `staging/` holds.
    pub(super) fn collect_garbage(&self) -> Result<()> {
        self.prune()?;
        for d in [CONTENT, DOWNLOADS, REPLACED] {
            self.remove_dir_if_present(d)?;
        }
        for f in [STAGED_MANIFEST, STAGED_SIG, STAGING_FOR] {
            match self.dir.remove_file(f) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(self.io(f)(e)),
                _ => {}
            }
        }
        Ok(())
    }

    /// Removes deployments (each losing its mark first) and manifests other than those of
    /// `current`, `previous`, the last version marked good, and the `keep_versions` newest
    /// installed (by the time of their completion mark). Never `current` or `previous`: when
    /// a link cannot be read, nothing is removed. A version is whatever has a deployment, a
    /// mark or a manifest, so that what a killed removal left goes too.
    pub(super) fn prune(&self) -> Result<()> {
        let mut keep: HashSet<String> = [self.current()?, self.previous()?]
            .into_iter()
            .flatten()
            .map(Name::into_string)
            .collect();
        keep.extend(self.last_good());
        keep.extend(self.newest_complete(self.keep_versions));
        // A run killed half way through removing a version left some of its deployment,
        // mark and manifests: what is left goes too.
        let mut versions = std::collections::BTreeSet::new();
        for d in ["deployments", COMPLETE, MANIFESTS] {
            for e in self.dir.read_dir(d).map_err(self.io(d))? {
                let name = e.map_err(self.io(d))?.file_name();
                let name = name.to_string_lossy();
                if name.starts_with('.') {
                    continue;
                }
                let v = match d {
                    MANIFESTS => name
                        .strip_suffix(".manifest")
                        .or_else(|| name.strip_suffix(".sig"))
                        .unwrap_or(&name),
                    _ => &name,
                };
                versions.insert(v.to_string());
            }
        }
        for name in versions.into_iter().filter(|v| !keep.contains(v)) {
            self.unmark_complete(&name)?;
            let rel = format!("deployments/{name}");
            self.remove_dir_if_present(&rel)?;
            let _ = self.dir.remove_file(format!("{MANIFESTS}/{name}.manifest"));
            let _ = self.dir.remove_file(format!("{MANIFESTS}/{name}.sig"));
            self.sync_dir("deployments")?;
            self.sync_dir(MANIFESTS)?;
        }
        Ok(())
    }
}
