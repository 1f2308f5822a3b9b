//! Switching to a verified staging tree, rolling back, recording an attempt's outcome and
//! pruning what neither `current` nor `previous` needs.

use std::collections::HashSet;

use super::{
    now, DeployReport, Device, Status, CONTENT, DOWNLOADS, MANIFESTS, STAGING_TREE, STATUS,
};
use crate::error::Result;
use deltaroot_format::{Name, VerifiedManifest};

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

    fn write_status(&self, status: &Status) -> Result<()> {
        let json = serde_json::to_vec_pretty(status).expect("status serialises");
        self.write_atomic(STATUS, &json)
    }

    /// Moves the verified staging tree into place and switches `current` to it.
    pub(super) fn commit(&self, target: &VerifiedManifest) -> Result<()> {
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
        deltaroot_format::fsio::symlink_atomic_in(&self.dir, format!("deployments/{version}"), name)
            .map_err(self.io(name))
    }

    fn sync_dir(&self, rel: &str) -> Result<()> {
        let d = self.dir.open(rel).map_err(self.io(rel))?;
        rustix::fs::fsync(&d).map_err(|e| self.io(rel)(e.into()))
    }

    /// Swaps `current` and `previous`.
    pub fn rollback(&self) -> Result<Name> {
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
            .map(Name::into_string)
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
