//! Reading a tree on disk into manifest entries.
//!
//! The publisher scans its input trees with this, and the device scans a staged deployment
//! with the same code to verify it against the signed manifest, so "what was published" and
//! "what was built" are compared by one definition.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::{Entry, EntryPath, Hash, Kind, Meta, Xattrs};

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// One entry as found on disk, before content hashes are known.
#[derive(Debug, Clone)]
pub struct Found {
    pub path: EntryPath,
    /// Where it is on disk.
    pub abs: PathBuf,
    pub kind: FoundKind,
    pub meta: Meta,
    /// (device, inode) when a non-directory has more than one link.
    pub inode: Option<(u64, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FoundKind {
    Dir,
    File { size: u64 },
    Symlink { target: Vec<u8> },
    Fifo,
    CharDev { rdev: u64 },
    BlockDev { rdev: u64 },
}

/// Walks `root` (not following symlinks) and returns every entry below it, sorted by path.
pub fn walk(root: &Path) -> Result<Vec<Found>, Error> {
    walk_except(root, &|_| false)
}

/// Like [`walk`], leaving out every path `skip` accepts without looking at what it is (a
/// socket left out is no error), and for a directory everything below it.
pub fn walk_except(root: &Path, skip: &dyn Fn(&EntryPath) -> bool) -> Result<Vec<Found>, Error> {
    let mut out = Vec::new();
    walk_dir(root, None, skip, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn walk_dir(
    dir: &Path,
    rel: Option<&EntryPath>,
    skip: &dyn Fn(&EntryPath) -> bool,
    out: &mut Vec<Found>,
) -> Result<(), Error> {
    let rd = fs::read_dir(dir).map_err(io_err(dir))?;
    for item in rd {
        let item = item.map_err(io_err(dir))?;
        let abs = item.path();
        let name = item.file_name();
        let path = match rel {
            Some(r) => r.join(name.as_bytes()),
            None => EntryPath::new(name.as_bytes()),
        }
        .map_err(|e| Error::Unsupported {
            path: abs.clone(),
            what: e.to_string(),
        })?;
        if skip(&path) {
            continue;
        }
        let st = fs::symlink_metadata(&abs).map_err(io_err(&abs))?;
        let ft = st.file_type();
        let kind = if ft.is_dir() {
            FoundKind::Dir
        } else if ft.is_file() {
            FoundKind::File { size: st.len() }
        } else if ft.is_symlink() {
            let t = fs::read_link(&abs).map_err(io_err(&abs))?;
            FoundKind::Symlink {
                target: t.as_os_str().as_bytes().to_vec(),
            }
        } else if ft.is_fifo() {
            FoundKind::Fifo
        } else if ft.is_char_device() {
            FoundKind::CharDev { rdev: st.rdev() }
        } else if ft.is_block_device() {
            FoundKind::BlockDev { rdev: st.rdev() }
        } else {
            return Err(Error::Unsupported {
                path: abs,
                what: "sockets cannot be part of an image".into(),
            });
        };
        let meta = Meta {
            mode: st.mode() & 0o7777,
            uid: st.uid(),
            gid: st.gid(),
            xattrs: read_xattrs(&abs)?,
        };
        let inode = (kind != FoundKind::Dir && st.nlink() > 1).then(|| (st.dev(), st.ino()));
        let is_dir = kind == FoundKind::Dir;
        out.push(Found {
            path: path.clone(),
            abs: abs.clone(),
            kind,
            meta,
            inode,
        });
        if is_dir {
            walk_dir(&abs, Some(&path), skip, out)?;
        }
    }
    Ok(())
}

/// The extended attributes of `path` (not following a symlink), sorted by name.
pub fn read_xattrs(path: &Path) -> Result<Xattrs, Error> {
    let err = |e: rustix::io::Errno| Error::Io {
        path: path.to_owned(),
        source: e.into(),
    };
    let n = match rustix::fs::llistxattr_query(path) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(err(e)),
    };
    if n == 0 {
        return Ok(Vec::new());
    }
    let mut names = vec![0u8; n];
    let n = rustix::fs::llistxattr(path, &mut names[..]).map_err(err)?;
    names.truncate(n);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::OsStr::from_bytes(name);
        let len = match rustix::fs::lgetxattr_query(path, cname) {
            Ok(len) => len,
            Err(rustix::io::Errno::NODATA) => continue,
            Err(e) => return Err(err(e)),
        };
        let mut value = vec![0u8; len];
        let len = rustix::fs::lgetxattr(path, cname, &mut value[..]).map_err(err)?;
        value.truncate(len);
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}

/// BLAKE3 of a file's content, streamed.
pub fn hash_file(path: &Path) -> Result<Hash, Error> {
    let mut f = fs::File::open(path).map_err(io_err(path))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Turns walked entries and their file hashes (`hashes[i]` for `found[i]` when it is a regular
/// file) into manifest entries, grouping hardlinks under their first path.
pub fn to_entries(found: &[Found], hashes: &[Option<Hash>]) -> Vec<Entry> {
    let mut first: HashMap<(u64, u64), EntryPath> = HashMap::new();
    let mut out = Vec::with_capacity(found.len());
    for (f, hash) in found.iter().zip(hashes) {
        if let Some(ino) = f.inode {
            if let Some(target) = first.get(&ino) {
                out.push(Entry::Hardlink {
                    path: f.path.clone(),
                    target: target.clone(),
                });
                continue;
            }
            first.insert(ino, f.path.clone());
        }
        let kind = match &f.kind {
            FoundKind::Dir => Kind::Dir,
            FoundKind::File { size } => Kind::File {
                size: *size,
                hash: hash.expect("every regular file is hashed"),
            },
            FoundKind::Symlink { target } => Kind::Symlink {
                target: target.clone(),
            },
            FoundKind::Fifo => Kind::Fifo,
            FoundKind::CharDev { rdev } => Kind::CharDev { rdev: *rdev },
            FoundKind::BlockDev { rdev } => Kind::BlockDev { rdev: *rdev },
        };
        out.push(Entry::Node {
            path: f.path.clone(),
            kind,
            meta: f.meta.clone(),
        });
    }
    out
}

/// Scans and hashes a whole tree on one thread: the device's verification and tests use it;
/// the publisher hashes in parallel itself.
pub fn scan(root: &Path) -> Result<Vec<Entry>, Error> {
    let found = walk(root)?;
    let hashes = found
        .iter()
        .map(|f| match f.kind {
            FoundKind::File { .. } => hash_file(&f.abs).map(Some),
            _ => Ok(None),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(to_entries(&found, &hashes))
}

/// How one path differs between the entries wanted and those found.
#[derive(Debug)]
pub enum Difference<'a> {
    /// Wanted, not found.
    Missing(&'a Entry),
    /// Found, not wanted.
    Unexpected(&'a Entry),
    /// Both, not the same: `what` differs first (`type`, `content`, `symlink target`,
    /// `device number`, `hardlink`, `mode`, `owner` or `xattrs`).
    Differs {
        want: &'a Entry,
        got: &'a Entry,
        what: &'static str,
    },
}

impl Difference<'_> {
    pub fn path(&self) -> &EntryPath {
        match self {
            Difference::Missing(e) | Difference::Unexpected(e) => e.path(),
            Difference::Differs { want, .. } => want.path(),
        }
    }
}

/// Every path where `got` differs from `want` (both sorted by path, as manifests and
/// [`scan`] give them), in path order.
pub fn compare<'a>(want: &'a [Entry], got: &'a [Entry]) -> Vec<Difference<'a>> {
    use std::cmp::Ordering;
    let mut out = Vec::new();
    let (mut w, mut g) = (want.iter().peekable(), got.iter().peekable());
    loop {
        let step = match (w.peek(), g.peek()) {
            (None, None) => return out,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some(a), Some(b)) => a.path().cmp(b.path()),
        };
        match step {
            Ordering::Less => out.extend(w.next().map(Difference::Missing)),
            Ordering::Greater => out.extend(g.next().map(Difference::Unexpected)),
            Ordering::Equal => {
                let (a, b) = (w.next().expect("peeked"), g.next().expect("peeked"));
                if let Some(what) = first_difference(a, b) {
                    out.push(Difference::Differs {
                        want: a,
                        got: b,
                        what,
                    });
                }
            }
        }
    }
}

/// What differs first between two entries of the same path, if anything.
fn first_difference(a: &Entry, b: &Entry) -> Option<&'static str> {
    let (
        Entry::Node {
            kind: ka, meta: ma, ..
        },
        Entry::Node {
            kind: kb, meta: mb, ..
        },
    ) = (a, b)
    else {
        return (a != b).then_some("hardlink");
    };
    let what = match (ka, kb) {
        _ if std::mem::discriminant(ka) != std::mem::discriminant(kb) => "type",
        (Kind::File { .. }, _) if ka != kb => "content",
        (Kind::Symlink { .. }, _) if ka != kb => "symlink target",
        (Kind::CharDev { .. } | Kind::BlockDev { .. }, _) if ka != kb => "device number",
        _ if ma.mode != mb.mode => "mode",
        _ if (ma.uid, ma.gid) != (mb.uid, mb.gid) => "owner",
        _ if ma.xattrs != mb.xattrs => "xattrs",
        _ => return None,
    };
    Some(what)
}

/// Lists how two entry lists differ (both sorted by path), one line per path, for error
/// messages and tests.
pub fn differences(want: &[Entry], got: &[Entry]) -> Vec<String> {
    compare(want, got)
        .into_iter()
        .map(|d| match d {
            Difference::Missing(e) => format!("{}: missing", e.path()),
            Difference::Unexpected(e) => format!("{}: not in the manifest", e.path()),
            Difference::Differs { want, got, .. } => {
                format!("{}: want {want:?}, found {got:?}", want.path())
            }
        })
        .collect()
}
