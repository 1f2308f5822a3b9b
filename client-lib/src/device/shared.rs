//! Shared paths: folders a release declares shared (`Manifest::shared`, e.g. `var/lib`,
//! `home`) hold the device's data, not the image's. They live once under the device root,
//! in `shared/<path>`, outside every deployment; in each deployment the shared path is a
//! relative symlink to that folder, so every version sees the same one, and no update,
//! rollback or pruning writes into it.
//!
//! A symlink rather than a bind mount: it needs no privilege and no step at boot, it is made
//! and verified with the rest of the staging tree, and pruning a deployment removes the
//! link, never what it points at. The link climbs one `..` per component of the path plus
//! two (`deployments/<v>/var/lib -> ../../../shared/var/lib`): from a deployment seen under
//! the device root it reaches the root's `shared/`; from a deployment booted as `/`, where
//! `..` of `/` is `/`, the same link names `/shared/var/lib`, so a boot that makes a
//! deployment the root file system mounts the device root's `shared/` at `/shared`.

use std::borrow::Cow;
use std::io;
use std::path::Path;

use super::stage::Builder;
use super::Device;
use crate::error::{Error, Result};
use deltaroot_format::{Entry, EntryPath, Kind, Manifest, Meta};

/// Where the shared folders live, under the device root.
pub(super) const SHARED: &str = "shared";

/// The target of the symlink at `path` in a deployment: `../` once per component plus
/// twice (out of `deployments/<version>`), then `shared/<path>`.
pub(super) fn link_target(path: &EntryPath) -> Vec<u8> {
    let mut target = b"../".repeat(path.depth() + 1);
    target.extend_from_slice(SHARED.as_bytes());
    target.push(b'/');
    target.extend_from_slice(path.as_bytes());
    target
}

/// The metadata of that symlink: the owner of the directory the manifest declares, mode
/// `0777` as Linux reports for every symlink, no xattrs.
pub(super) fn link_meta(dir: &Meta) -> Meta {
    Meta {
        mode: 0o777,
        uid: dir.uid,
        gid: dir.gid,
        xattrs: Vec::new(),
    }
}

/// The entries a deployment of `m` holds on the device: the manifest's, each shared path
/// a symlink to `shared/<path>` instead of a directory. What the staged tree is verified
/// against.
pub(super) fn deployed_entries(m: &Manifest) -> Cow<'_, [Entry]> {
    if m.shared.is_empty() {
        return Cow::Borrowed(&m.entries);
    }
    Cow::Owned(
        m.entries
            .iter()
            .map(|e| match e {
                Entry::Node { path, meta, .. } if m.is_shared(path) => Entry::Node {
                    path: path.clone(),
                    kind: Kind::Symlink {
                        target: link_target(path),
                    },
                    meta: link_meta(meta),
                },
                e => e.clone(),
            })
            .collect(),
    )
}

impl Device {
    /// Creates `shared/<path>` for every shared path of `m` the device does not have yet
    /// (a first install, or a release that shares a new path), with the mode, owner and
    /// xattrs of the directory the manifest declares there; its missing parents are made
    /// `0755`. Whatever is at `shared/<path>` already (a folder full of data, or a link the
    /// device's owner put there to another disk) is left exactly as it is.
    pub(super) fn ensure_shared(&self, m: &Manifest) -> Result<()> {
        for path in &m.shared {
            let rel = Path::new(SHARED).join(path.as_path());
            match self.dir.symlink_metadata(&rel) {
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(self.root.join(&rel))(e)),
            }
            let meta = match m.get(path) {
                Some(Entry::Node { meta, .. }) => meta.clone(),
                // The decoder requires the directory; a manifest built by hand may lack it.
                _ => Meta {
                    mode: 0o755,
                    ..Meta::default()
                },
            };
            let parent = rel.parent().unwrap_or(Path::new(SHARED));
            self.dir
                .create_dir_all(parent)
                .map_err(Error::io(self.root.join(parent)))?;
            // Made under a temporary name, given its metadata, then renamed into place: a
            // power cut never leaves a shared folder with the wrong mode for good.
            let name = path.file_name();
            let mut tmp_name = b".deltaroot-new-".to_vec();
            tmp_name.extend_from_slice(name);
            let tmp_entry = match path.parent() {
                Some(p) => p.join(&tmp_name),
                None => EntryPath::new(tmp_name),
            }
            .map_err(|e| self.err(format!("shared path {path}: {e}")))?;
            let shared = self.dir.open_dir(SHARED).map_err(self.io(SHARED))?;
            let shared_path = self.root.join(SHARED);
            let tmp = Path::new(SHARED).join(tmp_entry.as_path());
            match self.dir.remove_dir(&tmp) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Error::io(self.root.join(&tmp))(e))
                }
                _ => {}
            }
            self.dir
                .create_dir(&tmp)
                .map_err(Error::io(self.root.join(&tmp)))?;
            let builder = Builder {
                staging: &shared,
                staging_path: &shared_path,
            };
            builder.set_meta(&tmp_entry, &meta, true)?;
            self.dir
                .rename(&tmp, &self.dir, &rel)
                .map_err(Error::io(self.root.join(&rel)))?;
            // The folder and any parent made for it are durable once each folder holding
            // one is synced, up to the root.
            for dir in rel.ancestors().skip(1) {
                deltaroot_format::fsio::sync_dir_in(&self.dir, Some(dir))
                    .map_err(Error::io(self.root.join(dir)))?;
            }
            tracing::info!(path = %self.root.join(&rel).display(), "created the shared folder");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_climb_out_of_the_deployment() {
        let p = |s: &str| EntryPath::new(s).unwrap();
        assert_eq!(link_target(&p("home")), b"../../shared/home");
        assert_eq!(link_target(&p("var/lib")), b"../../../shared/var/lib");
    }
}
