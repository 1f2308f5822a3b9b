//! Building the staging tree (`staging/tree`) from the running tree and the content store,
//! through its directory handle ([`Builder`]), and verifying it against the manifest.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cap_std::fs::Dir;
use rustix::fs::{AtFlags, FileType, Mode, Timestamps};
use rustix::time::Timespec;

use super::{shared, DeployReport, Device, CONTENT, STAGING_TREE};
use crate::error::{Error, Result};
use deltaroot_format::tree;
use deltaroot_format::{Entry, EntryPath, Hash, Kind, Meta, VerifiedManifest};

impl Device {
    /// Builds the staging tree from the running tree and the content store.
    pub(super) fn build_tree(
        &self,
        target: &VerifiedManifest,
        base: Option<(&deltaroot_format::Manifest, &Dir)>,
        report: &mut DeployReport,
        distrusted: &std::collections::HashSet<Hash>,
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
                    if distrusted.contains(hash) {
                        continue;
                    }
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

        let m = target.manifest();
        for e in &m.entries {
            match e {
                Entry::Hardlink { path, target } => builder.hardlink(target, path)?,
                Entry::Node { path, kind, meta } => match kind {
                    // Where the device's shared folder is linked in (`shared.rs`).
                    Kind::Dir if m.is_shared(path) => {
                        builder.symlink(&shared::link_target(path), path)?;
                        builder.set_meta(path, &shared::link_meta(meta), false)?;
                    }
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
    /// The contents of the running tree the target reuses whose files are not what the
    /// running manifest says (a byte changed on the device): they are fetched whole instead.
    pub(super) fn damaged_base(
        &self,
        target: &VerifiedManifest,
        base: (&deltaroot_format::Manifest, &Dir),
    ) -> Result<std::collections::HashSet<Hash>> {
        use std::io::Read;
        let wanted: std::collections::HashSet<Hash> =
            target.manifest().contents().into_keys().collect();
        let mut bad = std::collections::HashSet::new();
        for e in &base.0.entries {
            let Entry::Node {
                path,
                kind: Kind::File { hash, .. },
                ..
            } = e
            else {
                continue;
            };
            if !wanted.contains(hash) || bad.contains(hash) {
                continue;
            }
            let found = base.1.open(path.as_path()).and_then(|f| {
                let mut f = f.into_std();
                let mut h = blake3::Hasher::new();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = f.read(&mut buf)?;
                    if n == 0 {
                        return Ok(Hash::from(h.finalize()));
                    }
                    h.update(&buf[..n]);
                }
            });
            if found.ok() != Some(*hash) {
                tracing::warn!(path = %path.as_path().display(), "a file of the running tree is not what its manifest says: fetching its content whole");
                bad.insert(*hash);
            }
        }
        Ok(bad)
    }

    pub(super) fn verify_staged(&self, target: &VerifiedManifest) -> Result<()> {
        let found = tree::scan(&self.root.join(STAGING_TREE))?;
        let diffs = tree::differences(&shared::deployed_entries(target.manifest()), &found);
        if let Some(first) = diffs.first() {
            return Err(Error::Verify {
                version: target.manifest().version.clone(),
                count: diffs.len(),
                first: first.clone(),
            });
        }
        Ok(())
    }
}

/// The entry `name` of the directory `dir` named through the directory's descriptor, for the
/// calls that take a path (the `l*xattr` family): no component of the path the directory was
/// opened by is looked up again, so a symlink planted above it is never followed.
pub(super) fn entry_through(dir: &Dir, name: &[u8]) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", dir.as_fd().as_raw_fd()))
        .join(std::ffi::OsStr::from_bytes(name))
}

/// Writes entries into the staging tree (or the shared folders) through its directory
/// handle.
pub(super) struct Builder<'a> {
    pub(super) staging: &'a Dir,
    pub(super) staging_path: &'a Path,
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
    pub(super) fn set_meta(&self, path: &EntryPath, meta: &Meta, chmod: bool) -> Result<()> {
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
            let proc = entry_through(&dir, name);
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
