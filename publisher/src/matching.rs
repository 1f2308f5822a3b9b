//! Finding the old version of each changed file, so it can be sent as a delta.
//!
//! In order: the same path; a file of the same name elsewhere (a renamed directory, such as
//! the kernel's module directory on an ABI bump), preferring the most trailing path
//! components in common; a file whose name matches once digits are ignored (a changed
//! soname: `libfoo.so.1` -> `libfoo.so.2`) in a directory that matches likewise.

use std::collections::{HashMap, HashSet};

use deltaroot_format::{Entry, EntryPath, Hash};

/// A new content and the old content to diff it against.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Pair {
    pub old: Hash,
    pub new: Hash,
    /// A path of the new file, for messages.
    pub path: EntryPath,
    pub old_size: u64,
    pub new_size: u64,
}

/// Replaces each run of digits by `#`.
fn shape(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len());
    for &b in name {
        if b.is_ascii_digit() {
            if out.last() != Some(&b'#') {
                out.push(b'#');
            }
        } else {
            out.push(b);
        }
    }
    out
}

fn common_suffix(a: &EntryPath, b: &EntryPath) -> usize {
    a.as_bytes()
        .rsplit(|&c| c == b'/')
        .zip(b.as_bytes().rsplit(|&c| c == b'/'))
        .take_while(|(x, y)| x == y)
        .count()
}

/// For every content of `new` that `old` lacks, the best old file to diff against, if any.
pub fn pairs(old: &[Entry], new: &[Entry]) -> Vec<Pair> {
    let old_files: Vec<(&EntryPath, Hash, u64)> = old
        .iter()
        .filter_map(|e| e.file().map(|(h, s)| (e.path(), h, s)))
        .collect();
    let old_contents: HashSet<Hash> = old_files.iter().map(|f| f.1).collect();
    let by_path: HashMap<&EntryPath, (Hash, u64)> =
        old_files.iter().map(|(p, h, s)| (*p, (*h, *s))).collect();
    let mut by_name: HashMap<&[u8], Vec<usize>> = HashMap::new();
    let mut by_shape: HashMap<(Vec<u8>, Vec<u8>), Vec<usize>> = HashMap::new();
    for (i, (p, _, _)) in old_files.iter().enumerate() {
        by_name.entry(p.file_name()).or_default().push(i);
        let dir = p.parent().map(|d| shape(d.as_bytes())).unwrap_or_default();
        by_shape
            .entry((dir, shape(p.file_name())))
            .or_default()
            .push(i);
    }
    let best_of = |path: &EntryPath, idx: &[usize], size: u64| -> Option<(Hash, u64)> {
        idx.iter()
            .map(|&i| old_files[i])
            .max_by_key(|(p, _, s)| (common_suffix(p, path), std::cmp::Reverse(s.abs_diff(size))))
            .map(|(_, h, s)| (h, s))
    };
    let mut seen: HashSet<Hash> = HashSet::new();
    let mut out = Vec::new();
    for e in new {
        let Some((hash, size)) = e.file() else {
            continue;
        };
        if old_contents.contains(&hash) || !seen.insert(hash) {
            continue;
        }
        let path = e.path();
        let base = by_path
            .get(path)
            .copied()
            .or_else(|| {
                by_name
                    .get(path.file_name())
                    .and_then(|i| best_of(path, i, size))
            })
            .or_else(|| {
                let dir = path
                    .parent()
                    .map(|d| shape(d.as_bytes()))
                    .unwrap_or_default();
                by_shape
                    .get(&(dir, shape(path.file_name())))
                    .and_then(|i| best_of(path, i, size))
            });
        if let Some((old, old_size)) = base {
            if old_size > 0 && size > 0 {
                out.push(Pair {
                    old,
                    new: hash,
                    path: path.clone(),
                    old_size,
                    new_size: size,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltaroot_format::{Kind, Meta};

    fn file(p: &str, content: &[u8]) -> Entry {
        Entry::Node {
            path: EntryPath::new(p).unwrap(),
            kind: Kind::File {
                size: content.len() as u64,
                hash: Hash::of(content),
            },
            meta: Meta::default(),
        }
    }

    #[test]
    fn renamed_directories_and_sonames_find_their_base() {
        let old = vec![
            file("lib/modules/6.1.0-50/kernel/fs/ext4.ko", b"ext4 old"),
            file("lib/modules/6.1.0-50/kernel/fs/btrfs.ko", b"btrfs old"),
            file("usr/lib/libgreet.so.1", b"greet old"),
            file("etc/same", b"same"),
        ];
        let new = vec![
            file("lib/modules/6.1.0-56/kernel/fs/ext4.ko", b"ext4 new"),
            file("lib/modules/6.1.0-56/kernel/fs/btrfs.ko", b"btrfs new"),
            file("usr/lib/libgreet.so.2", b"greet new"),
            file("etc/same", b"same"),
            file("etc/fresh", b"nothing like it"),
        ];
        let p = pairs(&old, &new);
        let find = |n: &[u8]| p.iter().find(|x| x.new == Hash::of(n)).map(|x| x.old);
        assert_eq!(find(b"ext4 new"), Some(Hash::of(b"ext4 old")));
        assert_eq!(find(b"btrfs new"), Some(Hash::of(b"btrfs old")));
        assert_eq!(find(b"greet new"), Some(Hash::of(b"greet old")));
        assert_eq!(find(b"nothing like it"), None);
        assert_eq!(p.len(), 3);
    }
}
