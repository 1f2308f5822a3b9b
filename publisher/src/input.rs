//! Input image trees: a directory, or a `.tar` / `.tar.zst` archive unpacked into a
//! content-addressed scratch folder (so owners, devices and xattrs need no root to read).
//!
//! Either way the result is an [`InputTree`]: the manifest entries, sorted, and where to read
//! each content by hash.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use deltaroot_format::tree::{self, FoundKind};
use deltaroot_format::{Entry, EntryPath, Hash, Kind, Meta};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::exclude::Exclude;

/// How an input tree is read: paths left out, and components stripped from a tar's names.
#[derive(Clone, Debug, Default)]
pub struct InputOptions {
    /// `--exclude`: paths (and, for directories, all below them) left out of the image.
    pub exclude: Exclude,
    /// `--strip-components N`: the first N components of each tar member's name are
    /// removed (members with no more are skipped), as `tar --strip-components` does.
    pub strip_components: usize,
    /// `--shared`: NEW's shared paths (the device's data), everything below them left out
    /// of the release (`crate::shared`); OLD is read as the release it is, by the shared
    /// paths that release declares.
    pub shared: Vec<EntryPath>,
}

/// A scanned input tree.
pub struct InputTree {
    pub entries: Vec<Entry>,
    /// Where each content can be read.
    content: HashMap<Hash, PathBuf>,
    /// Keeps a tar's scratch folder alive.
    _scratch: Option<tempfile::TempDir>,
}

impl InputTree {
    /// Reads a directory or a tar archive (by its name).
    pub fn open(path: &Path, progress: &dyn Fn(u64)) -> Result<InputTree> {
        Self::open_with(path, progress, &InputOptions::default())
    }

    /// Like [`InputTree::open`], leaving out what `opts.exclude` matches and stripping
    /// `opts.strip_components` from a tar's names.
    pub fn open_with(
        path: &Path,
        progress: &dyn Fn(u64),
        opts: &InputOptions,
    ) -> Result<InputTree> {
        let meta = std::fs::metadata(path).map_err(Error::io(path))?;
        if meta.is_dir() {
            Self::from_dir_except(path, progress, &opts.exclude)
        } else {
            let name = path.to_string_lossy();
            let zstd = name.ends_with(".tar.zst") || name.ends_with(".tzst");
            if !zstd && !name.ends_with(".tar") {
                return Err(Error::Input {
                    path: path.to_owned(),
                    what: "not a directory, .tar or .tar.zst".into(),
                });
            }
            Self::from_tar(path, zstd, opts)
        }
    }

    /// Scans a directory, hashing files on all cores.
    pub fn from_dir(root: &Path, progress: &dyn Fn(u64)) -> Result<InputTree> {
        Self::from_dir_except(root, progress, &Exclude::default())
    }

    fn from_dir_except(
        root: &Path,
        progress: &dyn Fn(u64),
        exclude: &Exclude,
    ) -> Result<InputTree> {
        let found = tree::walk_except(root, &|p| exclude.matches(p)).map_err(|e| match e {
            // A socket (or a name no image can hold): say how to leave it out.
            deltaroot_format::Error::Unsupported { path, what } => Error::Input {
                what: format!(
                    "{what}; leave it out of the image with --exclude {}",
                    path.strip_prefix(root).unwrap_or(&path).display()
                ),
                path,
            },
            e => e.into(),
        })?;
        let hashes: Vec<Option<Hash>> = found
            .par_iter()
            .map(|f| match f.kind {
                FoundKind::File { .. } => tree::hash_file(&f.abs).map(Some),
                _ => Ok(None),
            })
            .collect::<std::result::Result<_, _>>()?;
        let mut content = HashMap::new();
        for (f, h) in found.iter().zip(&hashes) {
            if let (Some(h), FoundKind::File { size }) = (h, &f.kind) {
                progress(*size);
                content.entry(*h).or_insert_with(|| f.abs.clone());
            }
        }
        Ok(InputTree {
            entries: tree::to_entries(&found, &hashes),
            content,
            _scratch: None,
        })
    }

    fn from_tar(path: &Path, zstd: bool, opts: &InputOptions) -> Result<InputTree> {
        let file = File::open(path).map_err(Error::io(path))?;
        let reader: Box<dyn Read> = if zstd {
            Box::new(zstd::stream::read::Decoder::new(file).map_err(Error::io(path))?)
        } else {
            Box::new(io::BufReader::new(file))
        };
        let scratch = tempfile::Builder::new()
            .prefix("deltaroot-tar-")
            .tempdir()
            .map_err(Error::io(std::env::temp_dir()))?;
        let bad = |what: String| Error::Input {
            path: path.to_owned(),
            what,
        };
        let mut archive = tar::Archive::new(reader);
        let mut nodes: BTreeMap<EntryPath, (Kind, Meta)> = BTreeMap::new();
        let mut links: Vec<(EntryPath, EntryPath)> = Vec::new();
        let mut content = HashMap::new();
        // The first component of every member's name, while there is only one.
        let mut tops = TopLevel::default();
        let strip = opts.strip_components;
        for (n, item) in archive.entries().map_err(Error::io(path))?.enumerate() {
            let mut item = item.map_err(Error::io(path))?;
            let raw = item.path_bytes().into_owned();
            let Some(p) = tar_path(&raw, strip).map_err(|e| bad(e.to_string()))? else {
                continue;
            };
            if strip == 0 {
                tops.see(&p, item.header().entry_type() == tar::EntryType::Directory);
            }
            if opts.exclude.covers(&p) {
                continue;
            }
            let h = item.header().clone();
            let mut xattrs: deltaroot_format::Xattrs = Vec::new();
            if let Some(exts) = item.pax_extensions().map_err(Error::io(path))? {
                for ext in exts {
                    let ext = ext.map_err(Error::io(path))?;
                    if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                        xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
                    }
                }
            }
            xattrs.sort_by(|a, b| a.0.cmp(&b.0));
            // A later record of the same name wins, as when extracting.
            xattrs.reverse();
            xattrs.dedup_by(|a, b| a.0 == b.0);
            xattrs.reverse();
            let meta = Meta {
                // Linux symlinks always have mode 0777, whatever the archive says.
                mode: if h.entry_type() == tar::EntryType::Symlink {
                    0o777
                } else {
                    h.mode().map_err(Error::io(path))? & 0o7777
                },
                uid: h.uid().map_err(Error::io(path))? as u32,
                gid: h.gid().map_err(Error::io(path))? as u32,
                xattrs,
            };
            let dev = || -> Result<u64> {
                let maj = h.device_major().map_err(Error::io(path))?.unwrap_or(0);
                let min = h.device_minor().map_err(Error::io(path))?.unwrap_or(0);
                Ok(rustix::fs::makedev(maj, min))
            };
            let link = || -> Result<Vec<u8>> {
                Ok(item
                    .link_name_bytes()
                    .ok_or_else(|| bad(format!("entry {n} has no link name")))?
                    .into_owned())
            };
            let kind = match h.entry_type() {
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let tmp = scratch.path().join(format!("incoming-{n}"));
                    let mut out = File::create(&tmp).map_err(Error::io(&tmp))?;
                    let mut hasher = blake3::Hasher::new();
                    let mut buf = vec![0u8; 1 << 16];
                    let mut size = 0u64;
                    loop {
                        let k = item.read(&mut buf).map_err(Error::io(path))?;
                        if k == 0 {
                            break;
                        }
                        hasher.update(&buf[..k]);
                        out.write_all(&buf[..k]).map_err(Error::io(&tmp))?;
                        size += k as u64;
                    }
                    let hash: Hash = hasher.finalize().into();
                    let dest = scratch.path().join(hash.to_string());
                    std::fs::rename(&tmp, &dest).map_err(Error::io(&dest))?;
                    content.insert(hash, dest);
                    Kind::File { size, hash }
                }
                tar::EntryType::Symlink => Kind::Symlink { target: link()? },
                tar::EntryType::Link => {
                    let t = tar_path(&link()?, strip)
                        .map_err(|e| bad(e.to_string()))?
                        .ok_or_else(|| bad("hardlink to the root".into()))?;
                    links.push((p, t));
                    continue;
                }
                tar::EntryType::Fifo => Kind::Fifo,
                tar::EntryType::Char => Kind::CharDev { rdev: dev()? },
                tar::EntryType::Block => Kind::BlockDev { rdev: dev()? },
                other => return Err(bad(format!("entry {n} has unsupported type {other:?}"))),
            };
            nodes.insert(p, (kind, meta));
        }
        if let Some(top) = tops.single() {
            eprintln!(
                "warning: {}: every path is under {top}/, which the image would hold as a \
                 folder at its root; --strip-components 1 takes the tree out of it",
                path.display()
            );
        }
        // Parents a tar leaves implicit become plain 0755 root directories.
        let implicit: Vec<EntryPath> = nodes
            .keys()
            .chain(links.iter().map(|(p, _)| p))
            .flat_map(|p| std::iter::successors(p.parent(), EntryPath::parent))
            .filter(|p| !nodes.contains_key(p))
            .collect();
        for p in implicit {
            nodes.insert(
                p,
                (
                    Kind::Dir,
                    Meta {
                        mode: 0o755,
                        ..Meta::default()
                    },
                ),
            );
        }
        // A hardlink group is led by its smallest path, as the manifest requires.
        let mut groups: BTreeMap<EntryPath, Vec<EntryPath>> = BTreeMap::new();
        for (p, t) in links {
            match nodes.get(&t) {
                None => {
                    return Err(bad(format!(
                        "hardlink {p} points at {t}, which is not earlier in the archive"
                    )))
                }
                Some((Kind::Dir, _)) => {
                    return Err(bad(format!("hardlink {p} points at directory {t}")))
                }
                Some(_) => {}
            }
            groups.entry(t).or_default().push(p);
        }
        let mut entries: BTreeMap<EntryPath, Entry> = nodes
            .into_iter()
            .map(|(path, (kind, meta))| (path.clone(), Entry::Node { path, kind, meta }))
            .collect();
        for (first, others) in groups {
            let mut all = others;
            all.push(first.clone());
            all.sort();
            let lead = all[0].clone();
            if lead != first {
                let Some(Entry::Node { kind, meta, .. }) = entries.remove(&first) else {
                    unreachable!("group leader is a node");
                };
                entries.insert(
                    lead.clone(),
                    Entry::Node {
                        path: lead.clone(),
                        kind,
                        meta,
                    },
                );
            }
            for p in all.into_iter().skip(1) {
                entries.insert(
                    p.clone(),
                    Entry::Hardlink {
                        path: p,
                        target: lead.clone(),
                    },
                );
            }
        }
        Ok(InputTree {
            entries: entries.into_values().collect(),
            content,
            _scratch: Some(scratch),
        })
    }

    /// An empty tree (the "old" side of a first release).
    pub fn empty() -> InputTree {
        InputTree {
            entries: Vec::new(),
            content: HashMap::new(),
            _scratch: None,
        }
    }

    /// Reads a content by hash.
    pub fn read(&self, hash: &Hash) -> Result<Vec<u8>> {
        let p = self.content.get(hash).ok_or_else(|| Error::Input {
            path: PathBuf::from(hash.to_string()),
            what: "content is not in this tree".into(),
        })?;
        std::fs::read(p).map_err(Error::io(p))
    }
}

/// Normalises a tar member name: strips `./`, a trailing `/` and the first `strip`
/// components; `None` for the root (and for names with no more than `strip` components).
fn tar_path(
    raw: &[u8],
    strip: usize,
) -> std::result::Result<Option<EntryPath>, deltaroot_format::PathError> {
    let mut s = raw;
    while let Some(rest) = s.strip_prefix(b"./") {
        s = rest;
    }
    while let Some(rest) = s.strip_suffix(b"/") {
        s = rest;
    }
    for _ in 0..strip {
        let rest = match s.iter().position(|c| *c == b'/') {
            Some(i) => &s[i + 1..],
            None => &[][..],
        };
        s = rest;
        while let Some(rest) = s.strip_prefix(b"/") {
            s = rest;
        }
    }
    if s.is_empty() || s == b"." {
        return Ok(None);
    }
    EntryPath::new(s).map(Some)
}

/// Whether every member of a tar sits under one top-level folder (`rootfs/etc/…`,
/// `rootfs/usr/…`): the mistake `--strip-components 1` undoes.
#[derive(Default)]
struct TopLevel {
    /// The one first component seen so far.
    top: Option<Vec<u8>>,
    /// Whether that component is a directory member or only a prefix of others.
    deeper: bool,
    /// A second first component, or a top-level member that is not a directory.
    mixed: bool,
}

impl TopLevel {
    fn see(&mut self, p: &EntryPath, is_dir: bool) {
        let b = p.as_bytes();
        let (first, nested) = match b.iter().position(|c| *c == b'/') {
            Some(i) => (&b[..i], true),
            None => (b, false),
        };
        if !nested && !is_dir {
            self.mixed = true;
        }
        match &self.top {
            Some(t) if t.as_slice() != first => self.mixed = true,
            Some(_) => {}
            None => self.top = Some(first.to_vec()),
        }
        self.deeper |= nested;
    }

    /// The one top-level folder, if every path is under it (and it holds something).
    fn single(&self) -> Option<String> {
        match &self.top {
            Some(t) if !self.mixed && self.deeper => Some(String::from_utf8_lossy(t).into()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strip_components_drops_leading_folders() {
        let p = |raw: &str, n| tar_path(raw.as_bytes(), n).unwrap().map(|p| p.to_string());
        assert_eq!(p("./rootfs/etc/passwd", 1).as_deref(), Some("etc/passwd"));
        assert_eq!(p("rootfs/etc/", 1).as_deref(), Some("etc"));
        assert_eq!(p("rootfs/", 1), None);
        assert_eq!(p("a/b/c", 2).as_deref(), Some("c"));
        assert_eq!(p("a/b", 2), None);
        assert_eq!(p("etc/passwd", 0).as_deref(), Some("etc/passwd"));
    }
}
