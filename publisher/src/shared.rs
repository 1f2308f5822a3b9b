//! `--shared PATH`: folders of the image that hold the device's data (`var/lib`, `home`).
//! The release declares them (`Manifest::shared`); devices keep one copy of each outside
//! their deployments, linked into every version, which no update or rollback rewrites. So
//! what NEW holds below a shared path is not the release's to ship: it is left out of the
//! manifest, and only the directory itself stays, where the device links its folder.

use deltaroot_format::manifest::check_shared;
use deltaroot_format::{Entry, EntryPath, Kind, Manifest};

use crate::error::{Error, Result};

/// The `--shared` arguments as shared paths: a leading `./` or `/` and a trailing `/`
/// dropped, sorted; refused when one is not a path of the image, or is given twice, or lies
/// within another.
pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Vec<EntryPath>> {
    let mut out = Vec::with_capacity(args.len());
    for arg in args {
        let mut s = arg.as_ref();
        while let Some(rest) = s.strip_prefix("./").or_else(|| s.strip_prefix('/')) {
            s = rest;
        }
        let s = s.strip_suffix('/').unwrap_or(s);
        let p = EntryPath::new(s)
            .map_err(|e| Error::Usage(format!("--shared {}: {e}", arg.as_ref())))?;
        out.push(p);
    }
    out.sort();
    check_shared(&out).map_err(|e| Error::Usage(format!("--shared: {e}")))?;
    Ok(out)
}

/// Removes every entry strictly below one of `shared` from `entries` (sorted, as a scan
/// gives them) and returns how many went. A hardlink group whose node is left out keeps
/// its names outside: the first becomes the node, the others link to it.
pub fn leave_out(entries: &mut Vec<Entry>, shared: &[EntryPath]) -> usize {
    if shared.is_empty() {
        return 0;
    }
    let below = |p: &EntryPath| shared.iter().any(|s| p.is_within(s) && p != s);
    // A node left out -> the entry that replaced it outside, if one has yet.
    let mut moved: std::collections::HashMap<EntryPath, (Entry, Option<EntryPath>)> =
        std::collections::HashMap::new();
    let before = entries.len();
    let mut kept = Vec::with_capacity(entries.len());
    let mut left_out = 0;
    for e in entries.drain(..) {
        if below(e.path()) {
            left_out += 1;
            if let Entry::Node { path, .. } = &e {
                moved.insert(path.clone(), (e.clone(), None));
            }
            continue;
        }
        let e = match e {
            Entry::Hardlink { path, target } => match moved.get_mut(&target) {
                Some((_, Some(node))) => Entry::Hardlink {
                    path,
                    target: node.clone(),
                },
                Some((Entry::Node { kind, meta, .. }, first @ None)) => {
                    *first = Some(path.clone());
                    Entry::Node {
                        path,
                        kind: kind.clone(),
                        meta: meta.clone(),
                    }
                }
                _ => Entry::Hardlink { path, target },
            },
            e => e,
        };
        kept.push(e);
    }
    *entries = kept;
    debug_assert_eq!(before, entries.len() + left_out);
    left_out
}

/// Checks that NEW holds each shared path as a directory: the device links its shared
/// folder there, with that directory's mode and owner.
pub fn check_directories(entries: &[Entry], shared: &[EntryPath]) -> Result<()> {
    for s in shared {
        let found = entries
            .binary_search_by(|e| e.path().cmp(s))
            .ok()
            .map(|i| &entries[i]);
        match found {
            Some(Entry::Node {
                kind: Kind::Dir, ..
            }) => {}
            Some(_) => {
                return Err(Error::Usage(format!(
                    "--shared {s}: NEW's {s} is not a directory"
                )))
            }
            None => {
                return Err(Error::Usage(format!(
                    "--shared {s}: NEW has no directory {s} (make it, empty, where the device's folder goes)"
                )))
            }
        }
    }
    Ok(())
}

/// One line per shared path that changes from the release devices run (`old`) to this one:
/// what devices do about it.
pub fn changes(old: &Manifest, new: &[EntryPath]) -> Vec<String> {
    let mut out = Vec::new();
    for p in new.iter().filter(|p| !old.shared.contains(p)) {
        out.push(format!(
            "{p} is shared from this release on: devices make an empty shared/{p}; what release {} holds in {p} stays in its own deployment",
            old.version
        ));
    }
    for p in old.shared.iter().filter(|p| !new.contains(p)) {
        out.push(format!(
            "{p} is no longer shared: this release's {p} is its own again, and devices keep shared/{p} as it is"
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use deltaroot_format::{Hash, Meta};

    fn p(s: &str) -> EntryPath {
        EntryPath::new(s).unwrap()
    }

    fn node(path: &str, kind: Kind) -> Entry {
        Entry::Node {
            path: p(path),
            kind,
            meta: Meta::default(),
        }
    }

    #[test]
    fn arguments_are_normalised_and_checked() {
        assert_eq!(
            parse(&["/var/lib/", "./home"]).unwrap(),
            [p("home"), p("var/lib")]
        );
        for (bad, want) in [
            (&["var/../etc"][..], "`..`"),
            (&["/"], "empty"),
            (&["home", "home/"], "twice"),
            (&["var", "var/lib"], "within the shared path var"),
        ] {
            let err = parse(bad).unwrap_err().to_string();
            assert!(
                err.contains("--shared") && err.contains(want),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn entries_below_a_shared_path_are_left_out_and_their_hardlinks_kept() {
        let f = || Kind::File {
            size: 1,
            hash: Hash::of(b"x"),
        };
        let mut entries = vec![
            node("home", Kind::Dir),
            node("home/u", Kind::Dir),
            node("home/u/a", f()),
            node("home/u/b", f()),
            node("usr", Kind::Dir),
            Entry::Hardlink {
                path: p("usr/a"),
                target: p("home/u/a"),
            },
            Entry::Hardlink {
                path: p("usr/a2"),
                target: p("home/u/a"),
            },
        ];
        assert_eq!(leave_out(&mut entries, &[p("home")]), 3);
        assert_eq!(
            entries,
            [
                node("home", Kind::Dir),
                node("usr", Kind::Dir),
                node("usr/a", f()),
                Entry::Hardlink {
                    path: p("usr/a2"),
                    target: p("usr/a"),
                },
            ]
        );
        assert!(check_directories(&entries, &[p("home")]).is_ok());
        let err = check_directories(&entries, &[p("var")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no directory var"), "{err}");
        let err = check_directories(&entries, &[p("usr/a")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a directory"), "{err}");
    }
}
