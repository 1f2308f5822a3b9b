//! The crash harness's image trees, written on disk as a publisher's input would be, and a
//! description of a tree on disk that two trees compare by: every path with its kind,
//! permission bits, owner, extended attributes, content (BLAKE3 and length) or symlink
//! target, and the hardlink groups within the tree.

use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use deltaroot_format::{Entry, Manifest};

/// Describes the tree at `dir` (followed if it is a symlink, like `current`), a line per
/// entry, sorted by path. A file with more than one link names the first path of its group
/// in the tree; links from outside the tree (other deployments) do not show.
pub fn snapshot(dir: &Path) -> Vec<String> {
    let mut lines = Vec::new();
    let mut first: HashMap<(u64, u64), String> = HashMap::new();
    walk(dir, "", &mut first, &mut lines);
    lines
}

fn walk(dir: &Path, prefix: &str, first: &mut HashMap<(u64, u64), String>, out: &mut Vec<String>) {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    for name in names {
        let abs = dir.join(&name);
        let rel = format!("{prefix}{}", name.to_string_lossy());
        let m = std::fs::symlink_metadata(&abs).unwrap();
        let ft = m.file_type();
        if !ft.is_dir() && m.nlink() > 1 {
            if let Some(f) = first.get(&(m.dev(), m.ino())) {
                out.push(format!("{rel} hardlink {f}"));
                continue;
            }
            first.insert((m.dev(), m.ino()), rel.clone());
        }
        let xattrs: Vec<String> = deltaroot_format::tree::read_xattrs(&abs)
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{}={}", String::from_utf8_lossy(k), hex::encode(v)))
            .collect();
        let what = if ft.is_dir() {
            "dir".to_string()
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&abs).unwrap();
            format!("symlink {}", t.display())
        } else if ft.is_file() {
            let bytes = std::fs::read(&abs).unwrap();
            format!("file {} {}", bytes.len(), blake3::hash(&bytes).to_hex())
        } else {
            format!("other {:o}", m.mode())
        };
        let mode = if ft.is_symlink() {
            String::new()
        } else {
            format!(" mode {:o}", m.mode() & 0o7777)
        };
        out.push(format!(
            "{rel} {what}{mode} owner {}:{} xattrs [{}]",
            m.uid(),
            m.gid(),
            xattrs.join(",")
        ));
        if ft.is_dir() {
            walk(&abs, &format!("{rel}/"), first, out);
        }
    }
}

/// The tool of version `v`: 64 KiB that do not compress, a few bytes apart from one version
/// to the next (a delta).
pub fn tool(v: u32) -> Vec<u8> {
    let mut t = super::super::folder::noise(b"crash tool", 64 << 10);
    t[1000..1016].copy_from_slice(format!("tool version {v:03}").as_bytes());
    t
}

/// An owner other than the test's, when the test may give one (it runs as root).
fn other_owner() -> Option<(u32, u32)> {
    rustix::process::geteuid().is_root().then_some((1000, 1001))
}

/// Writes the image tree of version `v` (1, 2 or 3) at `dir`: an executable that changes in
/// every version, a hardlink pair with an xattr, a symlink (retargeted in 3), a file owned
/// by another user (when root), a file removed in 2, one added in 2 and changed in 3, one
/// added in 3. Returns its manifest entries (the tree scanned as the publisher scans it) and
/// its file contents.
pub fn write_image(dir: &Path, v: u32) -> (Vec<Entry>, Vec<Vec<u8>>) {
    use std::os::unix::fs::PermissionsExt;
    let put = |rel: &str, bytes: &[u8], mode: u32| {
        let p = dir.join(rel);
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::set_permissions(dir.join("etc"), std::fs::Permissions::from_mode(0o750)).unwrap();
    put("bin/tool", &tool(v), 0o755);
    let link = if v >= 3 { "bin/tool" } else { "tool" };
    let at = if v >= 3 { "tool-link" } else { "bin/tool-link" };
    std::os::unix::fs::symlink(link, dir.join(at)).unwrap();
    put("etc/conf", b"setting = 1\n", 0o644);
    rustix::fs::lsetxattr(
        dir.join("etc/conf"),
        "user.deltaroot.label",
        b"conf",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    std::fs::hard_link(dir.join("etc/conf"), dir.join("etc/conf.same")).unwrap();
    put("etc/secret", b"owned by someone else\n", 0o600);
    if let Some((uid, gid)) = other_owner() {
        std::os::unix::fs::lchown(dir.join("etc/secret"), Some(uid), Some(gid)).unwrap();
        std::os::unix::fs::lchown(dir.join("etc"), Some(0), Some(gid)).unwrap();
    }
    if v == 1 {
        put("old-file", b"only in version 1\n", 0o644);
    } else {
        put(
            "new-file",
            format!("added in 2, now {v}\n").as_bytes(),
            0o640,
        );
    }
    if v >= 3 {
        put("bin/third", b"#!/bin/sh\necho three\n", 0o755);
    }
    let entries = deltaroot_format::tree::scan(dir).unwrap();
    let mut contents = Vec::new();
    for e in &entries {
        if let Entry::Node {
            path,
            kind: deltaroot_format::Kind::File { .. },
            ..
        } = e
        {
            let p = dir.join(std::ffi::OsStr::from_bytes(path.as_bytes()));
            contents.push(std::fs::read(p).unwrap());
        }
    }
    (entries, contents)
}

/// Publishes version `v` of the image written at `images/<v>` into the release folder `f`,
/// with a delta of the tool from `old` (the version before), and points `stable` at it.
pub fn publish(
    f: &super::super::folder::Release,
    images: &Path,
    v: u32,
    old: Option<&Manifest>,
) -> Manifest {
    let (entries, contents) = write_image(&images.join(v.to_string()), v);
    let refs: Vec<&[u8]> = contents.iter().map(Vec::as_slice).collect();
    let (from, to) = (tool(v.saturating_sub(1)), tool(v));
    let deltas: Vec<(&[u8], &[u8])> = match old {
        Some(_) => vec![(&from, &to)],
        None => Vec::new(),
    };
    f.publish(&v.to_string(), 100 * v as u64, entries, &refs, old, &deltas)
}
