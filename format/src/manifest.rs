//! The release manifest: every entry of an image tree, sorted by path, in a compact binary
//! encoding that is signed byte for byte (see `docs/FORMAT.md`, "Manifest").
//!
//! A [`Manifest`] is built by the publisher and encoded with [`Manifest::encode`]. Decoding is
//! private to this crate: the only way to get a manifest from bytes is
//! [`crate::VerifiedManifest::verify`], which checks the signature first.

use std::collections::{HashMap, HashSet};

use super::hash::Hash;
use super::path::{escape_bytes, EntryPath, MAX_PATH_LEN};
use super::wire::{put_bytes, put_varint, Reader, WireError};
use crate::error::Error;

/// First eight bytes of a manifest that declares no shared path.
pub const MANIFEST_MAGIC: &[u8; 8] = b"DRMANIF1";
/// First eight bytes of a manifest that declares shared paths: their list follows `created`
/// (`docs/FORMAT.md` §3.1). A reader that knows only `DRMANIF1` refuses it by its magic.
pub const MANIFEST_MAGIC_SHARED: &[u8; 8] = b"DRMANIF2";
/// Most shared paths a manifest may declare.
pub const MAX_SHARED: usize = 64;
/// Most entries a manifest may hold.
pub const MAX_ENTRIES: u64 = 16_000_000;
/// Largest xattr value accepted (the Linux VFS limit).
pub const MAX_XATTR_VALUE: usize = 65536;
/// Most xattrs on one entry.
pub const MAX_XATTRS: u64 = 1024;

/// Extended attributes: (name, value) pairs sorted by name.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Metadata of an inode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (`mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Extended attributes, sorted by name, names unique.
    pub xattrs: Xattrs,
}

/// What an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File { size: u64, hash: Hash },
    Symlink { target: Vec<u8> },
    Fifo,
    CharDev { rdev: u64 },
    BlockDev { rdev: u64 },
}

/// One entry of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// An inode of its own.
    Node {
        path: EntryPath,
        kind: Kind,
        meta: Meta,
    },
    /// Another name for an earlier, non-directory node (a hardlink group).
    Hardlink { path: EntryPath, target: EntryPath },
}

impl Entry {
    pub fn path(&self) -> &EntryPath {
        match self {
            Entry::Node { path, .. } | Entry::Hardlink { path, .. } => path,
        }
    }

    /// The content hash and size when this is a regular file.
    pub fn file(&self) -> Option<(Hash, u64)> {
        match self {
            Entry::Node {
                kind: Kind::File { size, hash },
                ..
            } => Some((*hash, *size)),
            _ => None,
        }
    }
}

/// A release of one product: its identity and its tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub product: String,
    pub version: String,
    /// Seconds since the Unix epoch when the release was made; devices refuse to move to a
    /// release older than the one they run unless told to install it by name.
    pub created: u64,
    /// Folders that live outside the deployments and survive updates and rollbacks (the
    /// device's data: `var/lib`, `home`). Sorted, none within another ([`check_shared`]);
    /// each is a directory of `entries` (where the device links its shared folder) with no
    /// entry below it.
    pub shared: Vec<EntryPath>,
    /// Sorted by path, unique.
    pub entries: Vec<Entry>,
}

/// Checks a list of shared paths: at most [`MAX_SHARED`], sorted (so no duplicates), none
/// within another.
pub fn check_shared(shared: &[EntryPath]) -> Result<(), Error> {
    let bad = |p: &EntryPath, what: String| Error::SharedPath {
        path: p.to_string(),
        what,
    };
    if let Some(p) = shared.get(MAX_SHARED) {
        return Err(bad(p, format!("more than {MAX_SHARED} shared paths")));
    }
    for (i, p) in shared.iter().enumerate() {
        if let Some(prev) = i.checked_sub(1).map(|j| &shared[j]) {
            if prev == p {
                return Err(bad(p, "is declared twice".into()));
            }
            if prev > p {
                return Err(bad(p, format!("is not sorted after {prev}")));
            }
        }
        // A folder sorts before everything within it.
        if let Some(outer) = shared[..i].iter().find(|o| p.is_within(o)) {
            return Err(bad(p, format!("is within the shared path {outer}")));
        }
    }
    Ok(())
}

/// Checks a product or version name: it is used as a URL and directory component.
pub fn check_name(field: &'static str, value: &str) -> Result<(), Error> {
    crate::name::Name::new(field, value).map(drop)
}

const TAG_DIR: u8 = 1;
const TAG_FILE: u8 = 2;
const TAG_SYMLINK: u8 = 3;
const TAG_HARDLINK: u8 = 4;
const TAG_FIFO: u8 = 5;
const TAG_CHAR: u8 = 6;
const TAG_BLOCK: u8 = 7;

impl Manifest {
    /// The canonical encoding; these are the bytes that get signed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.entries.len() * 64);
        // Without shared paths, the bytes of the first format: every reader takes them.
        out.extend_from_slice(if self.shared.is_empty() {
            MANIFEST_MAGIC
        } else {
            MANIFEST_MAGIC_SHARED
        });
        put_bytes(&mut out, self.product.as_bytes());
        put_bytes(&mut out, self.version.as_bytes());
        out.extend_from_slice(&self.created.to_le_bytes());
        if !self.shared.is_empty() {
            put_varint(&mut out, self.shared.len() as u64);
            for p in &self.shared {
                put_bytes(&mut out, p.as_bytes());
            }
        }
        put_varint(&mut out, self.entries.len() as u64);
        for e in &self.entries {
            put_bytes(&mut out, e.path().as_bytes());
            match e {
                Entry::Hardlink { target, .. } => {
                    out.push(TAG_HARDLINK);
                    put_bytes(&mut out, target.as_bytes());
                }
                Entry::Node { kind, meta, .. } => {
                    out.push(match kind {
                        Kind::Dir => TAG_DIR,
                        Kind::File { .. } => TAG_FILE,
                        Kind::Symlink { .. } => TAG_SYMLINK,
                        Kind::Fifo => TAG_FIFO,
                        Kind::CharDev { .. } => TAG_CHAR,
                        Kind::BlockDev { .. } => TAG_BLOCK,
                    });
                    put_varint(&mut out, u64::from(meta.mode));
                    put_varint(&mut out, u64::from(meta.uid));
                    put_varint(&mut out, u64::from(meta.gid));
                    put_varint(&mut out, meta.xattrs.len() as u64);
                    for (name, value) in &meta.xattrs {
                        put_bytes(&mut out, name);
                        put_bytes(&mut out, value);
                    }
                    match kind {
                        Kind::Dir | Kind::Fifo => {}
                        Kind::File { size, hash } => {
                            put_varint(&mut out, *size);
                            out.extend_from_slice(&hash.0);
                        }
                        Kind::Symlink { target } => put_bytes(&mut out, target),
                        Kind::CharDev { rdev } | Kind::BlockDev { rdev } => {
                            put_varint(&mut out, *rdev)
                        }
                    }
                }
            }
        }
        out
    }

    /// Parses and validates untrusted bytes. Crate-private: callers go through signature
    /// verification.
    pub(crate) fn decode(bytes: &[u8]) -> Result<Manifest, Error> {
        let mut r = Reader::new(bytes);
        let magic = r.take(8, "magic")?;
        let declares_shared = if magic == MANIFEST_MAGIC {
            false
        } else if magic == MANIFEST_MAGIC_SHARED {
            true
        } else {
            return Err(WireError {
                offset: 0,
                what: "does not start with DRMANIF1 or DRMANIF2".into(),
            }
            .into());
        };
        let product = utf8(r.bytes(64, "product")?, "product")?;
        check_name("product", &product)?;
        let version = utf8(r.bytes(64, "version")?, "version")?;
        check_name("version", &version)?;
        let created = r.u64_le("created")?;
        let shared = if declares_shared {
            read_shared(&mut r)?
        } else {
            Vec::new()
        };
        let shared_set: HashSet<&EntryPath> = shared.iter().collect();
        let count = r.varint_max(MAX_ENTRIES, "entry count")?;
        // Each entry takes at least four bytes, which bounds the allocation by the input.
        let mut entries = Vec::with_capacity((count as usize).min(bytes.len() / 4));
        // path -> (is_dir, is_node)
        let mut seen: HashMap<EntryPath, (bool, bool)> = HashMap::new();
        for _ in 0..count {
            let path_bytes = r.bytes(MAX_PATH_LEN, "entry path")?;
            let path = EntryPath::new(path_bytes).map_err(|e| Error::ManifestEntry {
                path: super::path::escape_bytes(path_bytes),
                what: e.to_string(),
            })?;
            let bad = |what: String| Error::ManifestEntry {
                path: path.to_string(),
                what,
            };
            if let Some(prev) = entries.last().map(Entry::path) {
                if *prev >= path {
                    return Err(bad(format!("not sorted after {prev}")));
                }
            }
            if let Some(parent) = path.parent() {
                match seen.get(&parent) {
                    Some((true, _)) => {}
                    _ => return Err(bad(format!("parent {parent} is not an earlier directory"))),
                }
                // Every entry's parent came earlier, so the first entry below a shared path
                // is one whose parent is that path: refusing those refuses all below.
                if shared_set.contains(&parent) {
                    return Err(bad(format!(
                        "is in the shared path {parent}: a release cannot place files there"
                    )));
                }
            }
            let tag = r.u8("entry type")?;
            if tag != TAG_DIR && shared_set.contains(&path) {
                return Err(bad(
                    "is a shared path: it must be a directory (where the device links the shared folder)".into(),
                ));
            }
            let entry = if tag == TAG_HARDLINK {
                let t = r.bytes(MAX_PATH_LEN, "hardlink target")?;
                let target = EntryPath::new(t).map_err(|e| bad(e.to_string()))?;
                match seen.get(&target) {
                    Some((false, true)) => {}
                    _ => {
                        return Err(bad(format!(
                            "hardlink target {target} is not an earlier non-directory node"
                        )))
                    }
                }
                Entry::Hardlink { path, target }
            } else {
                let mode = r.varint_max(0o7777, "mode")? as u32;
                let uid = r.varint_max(u64::from(u32::MAX), "uid")? as u32;
                let gid = r.varint_max(u64::from(u32::MAX), "gid")? as u32;
                let nx = r.varint_max(MAX_XATTRS, "xattr count")?;
                let mut xattrs: Xattrs = Vec::new();
                for _ in 0..nx {
                    let name = r.bytes(255, "xattr name")?.to_vec();
                    let value = r.bytes(MAX_XATTR_VALUE, "xattr value")?.to_vec();
                    if name.is_empty() || name.contains(&0) {
                        return Err(bad("xattr name is empty or holds NUL".into()));
                    }
                    if let Some((prev, _)) = xattrs.last() {
                        if *prev >= name {
                            return Err(bad("xattrs not sorted by name".into()));
                        }
                    }
                    xattrs.push((name, value));
                }
                let kind = match tag {
                    TAG_DIR => Kind::Dir,
                    TAG_FIFO => Kind::Fifo,
                    TAG_FILE => {
                        let size = r.varint("file size")?;
                        Kind::File {
                            size,
                            hash: Hash(r.array("file hash")?),
                        }
                    }
                    TAG_SYMLINK => {
                        let target = r.bytes(MAX_PATH_LEN, "symlink target")?.to_vec();
                        if target.is_empty() || target.contains(&0) {
                            return Err(bad("symlink target is empty or holds NUL".into()));
                        }
                        Kind::Symlink { target }
                    }
                    TAG_CHAR => Kind::CharDev {
                        rdev: r.varint("rdev")?,
                    },
                    TAG_BLOCK => Kind::BlockDev {
                        rdev: r.varint("rdev")?,
                    },
                    other => return Err(bad(format!("unknown entry type {other}"))),
                };
                Entry::Node {
                    path,
                    kind,
                    meta: Meta {
                        mode,
                        uid,
                        gid,
                        xattrs,
                    },
                }
            };
            let (is_dir, is_node) = match &entry {
                Entry::Node { kind, .. } => (*kind == Kind::Dir, true),
                Entry::Hardlink { .. } => (false, false),
            };
            seen.insert(entry.path().clone(), (is_dir, is_node));
            entries.push(entry);
        }
        if !r.is_empty() {
            return Err(r.error("trailing bytes after the last entry").into());
        }
        if let Some(p) = shared.iter().find(|p| !seen.contains_key(*p)) {
            return Err(Error::SharedPath {
                path: p.to_string(),
                what: "has no directory entry in the manifest (where the device links it)".into(),
            });
        }
        Ok(Manifest {
            product,
            version,
            created,
            shared,
            entries,
        })
    }

    /// Whether `path` is one of the shared paths.
    pub fn is_shared(&self, path: &EntryPath) -> bool {
        self.shared.binary_search(path).is_ok()
    }

    /// The shared path `path` lies strictly below, if any.
    pub fn shared_above(&self, path: &EntryPath) -> Option<&EntryPath> {
        self.shared.iter().find(|s| path.is_within(s) && path != *s)
    }

    /// Content hash -> size of every regular file.
    pub fn contents(&self) -> HashMap<Hash, u64> {
        self.entries.iter().filter_map(Entry::file).collect()
    }

    /// Sum of the sizes of all regular files (hardlinks counted once).
    pub fn total_file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .filter_map(Entry::file)
            .map(|(_, s)| s)
            .sum()
    }

    /// Looks an entry up by path (binary search; entries are sorted).
    pub fn get(&self, path: &EntryPath) -> Option<&Entry> {
        self.entries
            .binary_search_by(|e| e.path().cmp(path))
            .ok()
            .map(|i| &self.entries[i])
    }
}

/// The shared paths of a `DRMANIF2`: a count, then each path.
fn read_shared(r: &mut Reader<'_>) -> Result<Vec<EntryPath>, Error> {
    let n = r.varint_max(MAX_SHARED as u64, "shared path count")?;
    let mut shared = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let b = r.bytes(MAX_PATH_LEN, "shared path")?;
        let p = EntryPath::new(b).map_err(|e| Error::SharedPath {
            path: escape_bytes(b),
            what: e.to_string(),
        })?;
        shared.push(p);
    }
    check_shared(&shared)?;
    Ok(shared)
}

fn utf8(b: &[u8], field: &'static str) -> Result<String, Error> {
    String::from_utf8(b.to_vec()).map_err(|_| Error::BadName {
        field,
        value: super::path::escape_bytes(b),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> Manifest {
        let p = |s: &[u8]| EntryPath::new(s).unwrap();
        let meta = |mode| Meta {
            mode,
            uid: 0,
            gid: 0,
            xattrs: vec![],
        };
        Manifest {
            product: "demo".into(),
            version: "1.0".into(),
            created: 1_700_000_000,
            shared: vec![],
            entries: vec![
                Entry::Node {
                    path: p(b"bin"),
                    kind: Kind::Dir,
                    meta: meta(0o755),
                },
                Entry::Node {
                    path: p(b"bin/a"),
                    kind: Kind::File {
                        size: 3,
                        hash: Hash::of(b"abc"),
                    },
                    meta: Meta {
                        mode: 0o4755,
                        uid: 0,
                        gid: 0,
                        xattrs: vec![(b"security.capability".to_vec(), vec![1, 2, 3])],
                    },
                },
                Entry::Hardlink {
                    path: p(b"bin/b"),
                    target: p(b"bin/a"),
                },
                Entry::Node {
                    path: p(b"bin/caf\xe9"),
                    kind: Kind::Symlink {
                        target: b"/\xff".to_vec(),
                    },
                    meta: meta(0o777),
                },
                Entry::Node {
                    path: p(b"dev"),
                    kind: Kind::CharDev { rdev: 0x103 },
                    meta: meta(0o666),
                },
            ],
        }
    }

    /// [`sample`] with `home` and `var/lib` shared, and `var/log` beside them.
    pub(crate) fn sample_shared() -> Manifest {
        let mut m = sample();
        let dir = |s: &str| Entry::Node {
            path: EntryPath::new(s).unwrap(),
            kind: Kind::Dir,
            meta: Meta {
                mode: 0o750,
                uid: 0,
                gid: 0,
                xattrs: vec![],
            },
        };
        m.entries
            .extend(["home", "var", "var/lib", "var/log"].map(dir));
        m.shared = vec![
            EntryPath::new("home").unwrap(),
            EntryPath::new("var/lib").unwrap(),
        ];
        m
    }

    /// `m` (which declares no shared path) encoded as a `DRMANIF2` declaring `raw`, byte
    /// strings that need not be paths.
    fn with_raw_shared(m: &Manifest, raw: &[&[u8]]) -> Vec<u8> {
        let v1 = m.encode();
        let head = 8 + 1 + m.product.len() + 1 + m.version.len() + 8;
        let mut out = MANIFEST_MAGIC_SHARED.to_vec();
        out.extend_from_slice(&v1[8..head]);
        put_varint(&mut out, raw.len() as u64);
        for p in raw {
            put_bytes(&mut out, p);
        }
        out.extend_from_slice(&v1[head..]);
        out
    }

    #[test]
    fn shared_paths_round_trip_under_the_second_magic() {
        let m = sample_shared();
        let bytes = m.encode();
        assert_eq!(&bytes[..8], b"DRMANIF2");
        assert_eq!(Manifest::decode(&bytes).unwrap(), m);
        // The list sits right after `created`: two paths, `home` and `var/lib`.
        let at = 8 + 5 + 4 + 8;
        assert_eq!(&bytes[at..at + 14], b"\x02\x04home\x07var/lib");
        // A manifest without shared paths keeps the first format's bytes.
        assert_eq!(&sample().encode()[..8], b"DRMANIF1");
        let mut later = bytes.clone();
        later[7] = b'3';
        let err = Manifest::decode(&later).unwrap_err().to_string();
        assert!(err.contains("DRMANIF1 or DRMANIF2"), "{err}");
        for n in 0..bytes.len() {
            assert!(
                Manifest::decode(&bytes[..n]).is_err(),
                "prefix {n} accepted"
            );
        }
        let mut m = sample_shared();
        let i = m.entries.len() - 1;
        assert!(m.is_shared(m.entries[i - 1].path()) && !m.is_shared(m.entries[i].path()));
        let below = EntryPath::new("var/lib/x/y").unwrap();
        assert_eq!(
            m.shared_above(&below).map(|p| p.to_string()).as_deref(),
            Some("var/lib")
        );
        assert_eq!(m.shared_above(m.entries[i - 1].path()), None);
        m.entries.truncate(0);
        assert!(Manifest::decode(&m.encode()).is_err());
    }

    #[test]
    fn an_entry_in_a_shared_path_is_refused_naming_both() {
        for (path, shared) in [("var/lib/db", "var/lib"), ("home/u", "home")] {
            let mut m = sample_shared();
            let at = m
                .entries
                .iter()
                .position(|e| e.path().as_bytes() > path.as_bytes());
            let entry = Entry::Node {
                path: EntryPath::new(path).unwrap(),
                kind: Kind::File {
                    size: 1,
                    hash: Hash::of(b"x"),
                },
                meta: Meta::default(),
            };
            m.entries.insert(at.unwrap_or(m.entries.len()), entry);
            let err = Manifest::decode(&m.encode()).unwrap_err().to_string();
            assert!(
                err.contains(&format!("entry {path}:"))
                    && err.contains(&format!("shared path {shared}")),
                "{err}"
            );
        }
        // The shared path itself must be a directory, and there.
        let mut m = sample_shared();
        let i = m
            .entries
            .iter()
            .position(|e| e.path().as_bytes() == b"home")
            .unwrap();
        m.entries[i] = Entry::Node {
            path: EntryPath::new("home").unwrap(),
            kind: Kind::Symlink {
                target: b"/elsewhere".to_vec(),
            },
            meta: Meta::default(),
        };
        let err = Manifest::decode(&m.encode()).unwrap_err().to_string();
        assert!(
            err.contains("entry home:") && err.contains("must be a directory"),
            "{err}"
        );
        m.entries.remove(i);
        let err = Manifest::decode(&m.encode()).unwrap_err().to_string();
        assert!(
            err.contains("shared path home: has no directory entry"),
            "{err}"
        );
    }

    #[test]
    fn bad_shared_paths_are_refused() {
        let mut m = sample_shared();
        m.shared.clear();
        let cases: [(&[&[u8]], &str); 7] = [
            (&[b"../etc"], "`..`"),
            (&[b"/var/lib"], "absolute"),
            (&[b""], "empty"),
            (&[b"home", b"home"], "declared twice"),
            (&[b"var", b"var/lib"], "within the shared path var"),
            (&[b"var/lib", b"home"], "not sorted after var/lib"),
            (&[b"home/"], "`..`"),
        ];
        for (raw, want) in cases {
            let err = Manifest::decode(&with_raw_shared(&m, raw))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("shared path") && err.contains(want),
                "{raw:?}: {err}"
            );
        }
        let many: Vec<Vec<u8>> = (0..=MAX_SHARED)
            .map(|i| format!("d{i:03}").into_bytes())
            .collect();
        let many: Vec<&[u8]> = many.iter().map(Vec::as_slice).collect();
        let err = Manifest::decode(&with_raw_shared(&m, &many))
            .unwrap_err()
            .to_string();
        assert!(err.contains("shared path count"), "{err}");
        // The same list with the entries it needs decodes.
        let back = Manifest::decode(&with_raw_shared(&m, &[b"home", b"var/lib"])).unwrap();
        assert_eq!(back, sample_shared());
        let nested = [EntryPath::new("a").unwrap(), EntryPath::new("a/b").unwrap()];
        assert!(check_shared(&nested).is_err());
        assert!(
            check_shared(&[EntryPath::new("a").unwrap(), EntryPath::new("a-b").unwrap()]).is_ok()
        );
    }

    #[test]
    fn round_trips() {
        let m = sample();
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn rejects_unsorted_orphans_and_bad_links() {
        let mut m = sample();
        m.entries.swap(1, 3);
        assert!(Manifest::decode(&m.encode()).is_err());

        let mut m = sample();
        m.entries.remove(0);
        let err = Manifest::decode(&m.encode()).unwrap_err().to_string();
        assert!(err.contains("bin/a") && err.contains("parent"), "{err}");

        let mut m = sample();
        m.entries[2] = Entry::Hardlink {
            path: EntryPath::new("bin/b").unwrap(),
            target: EntryPath::new("bin").unwrap(),
        };
        assert!(Manifest::decode(&m.encode()).is_err());
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            assert!(
                Manifest::decode(&bytes[..n]).is_err(),
                "prefix {n} accepted"
            );
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(Manifest::decode(&long).is_err());
    }
}
