//! [`Transport`] from a static release folder, as `deltaroot publish --out DIR` writes it
//! (`docs/FORMAT.md` §8.5): a USB stick, a mounted share, a folder synced by other means.
//!
//! The paths are the server's URL paths:
//!
//! ```text
//! objects/<fan>/<hash>, deltas/<fan>/<source>-<target>, packs/<fan>/<hash>
//! v1/products/<p>/releases/<v>/manifest, manifest.sig
//! v1/products/<p>/plans/<from>/<to>, plans/-/<to>
//! v1/products/<p>/channels/<c>/latest          "<version>\n", written last by the publisher
//! ```
//!
//! What a device reads from it, and how it decides, is in [`super::layout`].
//!
//! Everything is read through a `cap_std` handle of the folder: a symlink on the stick that
//! leads out of it is refused. A missing file is [`Error::Missing`]; for a delta or pack
//! that means the device fetches the whole object instead.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

use super::{
    check_exact, copy_bounded, layout, CheckQuery, Deadline, DeadlineSlot, Sink, Transport,
};
use crate::error::{Error, Result};
use deltaroot_format::api::CheckResponse;
use deltaroot_format::{Name, Plan};

/// A static release folder.
pub struct Folder {
    root: PathBuf,
    dir: Dir,
    downloaded: AtomicU64,
    deadline: DeadlineSlot,
    /// The release keys a plan's `.sig` must verify with ([`Transport::trust_plans`]).
    plan_trust: std::sync::Mutex<Option<Vec<deltaroot_format::PublicKey>>>,
}

impl Folder {
    /// Opens the release folder at `root`.
    pub fn open(root: &Path) -> Result<Folder> {
        let dir = Dir::open_ambient_dir(root, ambient_authority()).map_err(Error::io(root))?;
        Ok(Folder {
            root: root.to_owned(),
            dir,
            downloaded: AtomicU64::new(0),
            deadline: DeadlineSlot::default(),
            plan_trust: Default::default(),
        })
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn open_file(&self, rel: &str) -> Result<cap_std::fs::File> {
        // Every path is made of names and hashes; anything else is refused outright.
        if rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Error::Missing {
                location: self.path(rel).display().to_string(),
            });
        }
        self.dir.open(rel).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::Missing {
                location: self.path(rel).display().to_string(),
            },
            _ => Error::io(self.path(rel))(e),
        })
    }

    /// Reads `rel` whole, refusing more than `limit` bytes.
    fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.open_file(rel)?
            .take(limit + 1)
            .read_to_end(&mut out)
            .map_err(Error::io(self.path(rel)))?;
        if out.len() as u64 > limit {
            return Err(Error::TooLarge {
                url: self.path(rel).display().to_string(),
                limit,
            });
        }
        Ok(out)
    }
}

impl layout::Files for Folder {
    fn read(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        Folder::read(self, rel, limit)
    }

    fn locate(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }

    fn holds(&self, rel: &str, _limit: u64) -> Result<bool> {
        Ok(self.dir.is_file(rel))
    }
}

impl Transport for Folder {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn check(&self, q: &CheckQuery<'_>) -> Result<CheckResponse> {
        layout::check(self, q)
    }

    fn get(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        self.read(rel, limit)
    }

    fn plan(&self, product: &Name, from: Option<&Name>, to: &Name) -> Result<Plan> {
        let trust = self.plan_trust.lock().expect("not poisoned").clone();
        layout::plan(self, product, from, to, trust.as_deref())
    }

    fn trust_plans(&self, trusted: Vec<deltaroot_format::PublicKey>) {
        *self.plan_trust.lock().expect("not poisoned") = Some(trusted);
    }

    fn download(
        &self,
        rel: &str,
        file: &mut File,
        path: &Path,
        exact: Option<u64>,
        max: u64,
    ) -> Result<u64> {
        let location = self.path(rel).display().to_string();
        let mut src = self.open_file(rel)?.into_std();
        let size = src.metadata().map_err(Error::io(self.path(rel)))?.len();
        let mut have = file.metadata().map_err(Error::io(path))?.len();
        if have >= max || have > size {
            have = 0;
        }
        std::io::Seek::seek(&mut src, std::io::SeekFrom::Start(have))
            .map_err(Error::io(self.path(rel)))?;
        let from = self.path(rel);
        let len = copy_bounded(
            src,
            Sink {
                file,
                path,
                deadline: self.deadline.get().as_ref(),
            },
            have,
            max,
            &location,
            &self.downloaded,
            |e, _| Error::io(&from)(e),
        )?;
        check_exact(file, &location, len, exact)
    }

    fn downloaded(&self) -> u64 {
        self.downloaded.load(Ordering::Relaxed)
    }

    fn set_deadline(&self, deadline: Option<Deadline>) {
        self.deadline.set(deadline);
    }
}
