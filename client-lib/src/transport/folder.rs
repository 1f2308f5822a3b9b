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
//! **Check.** A folder has no server to ask: the offer is the device's pin if it has one,
//! else the version the channel's `latest` file names (none if there is no such file). It
//! is offered when it is not the running version, nor one the device rolled back from (as a
//! server does); its release must be in the folder.
//! `download_bytes` is that of the plan the device will use, `image_bytes` the sum of the
//! distinct contents of the release (its plan from nothing). A folder carries no signed
//! downgrade statement: an older release than the running one is refused by the agent unless
//! the device is pinned to it or an operator installs it by name (`deltaroot-agent install`).
//! Device id and last result are not reported anywhere.
//!
//! **Plan.** `plans/<from>/<to>` when the folder holds it, else `plans/-/<to>` (the whole
//! release), as the server does for a version it does not know.
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

use super::MAX_PLAN_BYTES;
use super::{check_exact, copy_bounded, CheckQuery, Deadline, DeadlineSlot, Sink, Transport};
use crate::error::{Error, Result};
use deltaroot_format::api::{CheckResponse, UpdateOffer};
use deltaroot_format::{Name, Plan};

/// A static release folder.
pub struct Folder {
    root: PathBuf,
    dir: Dir,
    downloaded: AtomicU64,
    deadline: DeadlineSlot,
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

    fn exists(&self, rel: &str) -> bool {
        self.dir.is_file(rel)
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

    /// The version `channels/<c>/latest` names, if the file is there.
    fn latest(&self, product: &Name, channel: &Name) -> Result<Option<Name>> {
        let rel = format!("v1/products/{product}/channels/{channel}/latest");
        let bytes = match self.read(&rel, 256) {
            Err(Error::Missing { .. }) => return Ok(None),
            other => other?,
        };
        let text = String::from_utf8_lossy(&bytes);
        Name::new("version", text.trim())
            .map(Some)
            .map_err(|e| Error::Config {
                path: self.path(&rel),
                what: e.to_string(),
            })
    }
}

impl Transport for Folder {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn check(&self, q: &CheckQuery<'_>) -> Result<CheckResponse> {
        let latest = self.latest(q.product, q.channel)?;
        let target = q.pin.or(latest.as_ref());
        // As a server does: a device that rolled back from a release is not offered it again.
        let rolled_back = |t: &Name| q.last == Some(("rolled-back", t));
        let update = match target {
            Some(t) if Some(t) != q.current && !rolled_back(t) => {
                let rel = format!("v1/products/{}/releases/{t}/manifest", q.product);
                if !self.exists(&rel) {
                    return Err(Error::Missing {
                        location: self.path(&rel).display().to_string(),
                    });
                }
                let plan = self.plan(q.product, q.current, t)?;
                let whole = match q.current {
                    Some(_) => self.plan(q.product, None, t)?,
                    None => plan.clone(),
                };
                Some(UpdateOffer {
                    version: t.clone(),
                    download_bytes: plan.download_bytes,
                    image_bytes: whole.items.iter().map(|i| i.size).sum(),
                    downgrade: None,
                })
            }
            _ => None,
        };
        Ok(CheckResponse {
            product: q.product.clone(),
            channel: q.channel.clone(),
            latest,
            update,
            paused: false,
            next_check_secs: None,
        })
    }

    fn get(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        self.read(rel, limit)
    }

    fn plan(&self, product: &Name, from: Option<&Name>, to: &Name) -> Result<Plan> {
        let pair = from
            .map(|f| format!("v1/products/{product}/plans/{f}/{to}"))
            .filter(|rel| self.exists(rel));
        let rel = pair.unwrap_or_else(|| format!("v1/products/{product}/plans/-/{to}"));
        let bytes = self.read(&rel, MAX_PLAN_BYTES)?;
        serde_json::from_slice(&bytes).map_err(|e| Error::Config {
            path: self.path(&rel),
            what: format!("not a plan: {e}"),
        })
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
