//! One delta applied to one file, outside any update: what `deltaroot apply` (the publisher's
//! CLI) and `deltaroot-apply` (the device's stand-alone tool) run.
//!
//! The old file is read where the delta needs it (the ELF method reads its headers and the
//! ranges its records name; the other methods read it whole); the new one is built in memory
//! and checked against the hash the delta's header names, then written beside the output path
//! and renamed over it ([`crate::fsio`]). A delta that does not apply leaves the output path
//! as it was.
//!
//! **The output is never followed.** The new file is written to a temporary file created
//! exclusively (a symlink planted at its name is skipped, never written through) and renamed
//! over the output: a symlink at the output is replaced by the regular file, and what it
//! pointed at is untouched.
//!
//! **Mode and owner** (the new file is the new version of the old one):
//! - the mode is [`ApplyOptions::mode`] if given, else the old file's, setuid, setgid and
//!   sticky bits included;
//! - running as root, the new file is given the old file's owner and group;
//! - otherwise it is owned by whoever runs the tool; if that is not the old file's owner and
//!   group, a mode taken from the old file loses its setuid and setgid bits (as `install`
//!   does), so nobody hands out a set-id program in someone else's name. A mode given with
//!   `--mode` is set as given.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::container::{apply_delta_to, Source};
use crate::error::{Error, Result};
use crate::fsio::{open_parent, AtomicFile};

/// How [`apply_file_with`] writes its output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyOptions {
    /// The new file's permission bits (`0o7777` at most); the old file's when `None`.
    pub mode: Option<u32>,
}

/// Applies the delta in the file `patch` to the file `old` and puts the verified result at
/// `out`, with the old file's mode and owner (see the module documentation). Returns the
/// number of bytes written.
pub fn apply_file(old: &Path, patch: &Path, out: &Path) -> Result<u64> {
    apply_file_with(old, patch, out, &ApplyOptions::default())
}

/// [`apply_file`] with options.
pub fn apply_file_with(old: &Path, patch: &Path, out: &Path, opts: &ApplyOptions) -> Result<u64> {
    if let Some(m) = opts.mode {
        if m > 0o7777 {
            return Err(Error::Unsupported {
                path: out.to_owned(),
                what: format!("mode {m:o} is not a permission mode (at most 7777)"),
            });
        }
    }
    let file = File::open(old).map_err(Error::io(old))?;
    let meta = file.metadata().map_err(Error::io(old))?;
    let delta = std::fs::read(patch).map_err(Error::io(patch))?;
    let new = apply_delta_to(
        &delta,
        Source::File {
            file: &file,
            path: old,
        },
        None,
    )?;
    drop(delta);
    write_replacing(out, &new, &meta, opts).map_err(Error::io(out))?;
    Ok(new.len() as u64)
}

/// Writes `bytes` beside `out`, gives the file its owner and mode, and renames it over `out`;
/// on any failure the temporary file is removed and `out` is untouched.
fn write_replacing(
    out: &Path,
    bytes: &[u8],
    old: &std::fs::Metadata,
    opts: &ApplyOptions,
) -> std::io::Result<()> {
    let (dir, name) = open_parent(out)?;
    let mut f = AtomicFile::create_in(&dir, name)?;
    f.write_all(bytes)?;
    let root = rustix::process::geteuid().is_root();
    let created = f.file().metadata()?;
    let (chown, mode) = owner_and_mode(
        (old.uid(), old.gid()),
        old.mode(),
        (created.uid(), created.gid()),
        root,
        opts.mode,
    );
    if let Some((uid, gid)) = chown {
        // Owner first: chown clears the set-id bits the mode then sets.
        rustix::fs::fchown(
            f.file(),
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )?;
    }
    f.file()
        .set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.commit()
}

/// The rule of the module documentation: the owner to give the new file (`None`: leave it),
/// and its mode, from the old file's ids and mode, the ids the new file was created with,
/// whether we run as root, and any mode asked for.
fn owner_and_mode(
    old_ids: (u32, u32),
    old_mode: u32,
    created_ids: (u32, u32),
    root: bool,
    asked: Option<u32>,
) -> (Option<(u32, u32)>, u32) {
    let chown = (root && created_ids != old_ids).then_some(old_ids);
    let mode = match asked {
        Some(m) => m,
        None if root || created_ids == old_ids => old_mode & 0o7777,
        None => old_mode & 0o7777 & !0o6000,
    };
    (chown, mode)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::tests::zstd_delta as delta;

    #[test]
    fn a_good_delta_replaces_the_output_and_a_bad_one_leaves_it() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        std::fs::write(p("old"), b"old contents").unwrap();
        std::fs::write(p("out"), b"what was there").unwrap();
        let d = delta(b"old contents", b"new contents, longer");
        std::fs::write(p("good"), &d).unwrap();
        // What a run cut off by a power loss left behind does not stand in the way (and is
        // not ours to remove).
        std::fs::write(p(".out.deltaroot-partial"), b"half of it").unwrap();
        assert_eq!(apply_file(&p("old"), &p("good"), &p("out")).unwrap(), 20);
        assert_eq!(std::fs::read(p("out")).unwrap(), b"new contents, longer");

        std::fs::write(p("bad"), &d[..d.len() - 2]).unwrap();
        let e = apply_file(&p("old"), &p("bad"), &p("out")).unwrap_err();
        assert!(e.to_string().contains("does not decode"), "{e}");
        assert_eq!(std::fs::read(p("out")).unwrap(), b"new contents, longer");
        let missing = apply_file(&p("nope"), &p("good"), &p("out")).unwrap_err();
        assert!(missing.to_string().contains("nope"), "{missing}");

        // The output's folder cannot be written: nothing is left behind, the error names it.
        let e = apply_file(&p("old"), &p("good"), &p("no-dir/out")).unwrap_err();
        assert!(e.to_string().contains("no-dir"), "{e}");
        let mut left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [".out.deltaroot-partial", "bad", "good", "old", "out"]
        );
    }

    #[test]
    fn symlinks_at_the_output_or_the_temporary_names_are_never_followed() {
        use std::os::unix::fs::symlink;
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        std::fs::write(p("old"), b"old contents").unwrap();
        std::fs::write(p("patch"), delta(b"old contents", b"new contents")).unwrap();
        std::fs::write(p("victim"), b"root's precious file").unwrap();
        // The partial name of earlier versions, and the first temporary names of this one.
        symlink(p("victim"), p(".out.deltaroot-partial")).unwrap();
        for attempt in 0..2 {
            symlink(
                p("victim"),
                p("").join(crate::fsio::temp_name(b"out", attempt)),
            )
            .unwrap();
        }
        apply_file(&p("old"), &p("patch"), &p("out")).unwrap();
        assert_eq!(std::fs::read(p("out")).unwrap(), b"new contents");
        assert_eq!(std::fs::read(p("victim")).unwrap(), b"root's precious file");

        // A symlink at the output is replaced by the new file, its target left alone.
        symlink(p("victim"), p("link")).unwrap();
        apply_file(&p("old"), &p("patch"), &p("link")).unwrap();
        assert!(std::fs::symlink_metadata(p("link")).unwrap().is_file());
        assert_eq!(std::fs::read(p("link")).unwrap(), b"new contents");
        assert_eq!(std::fs::read(p("victim")).unwrap(), b"root's precious file");
    }

    #[test]
    fn the_new_file_keeps_the_old_files_mode_or_takes_the_one_asked_for() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        let mode = |n: &str| std::fs::metadata(p(n)).unwrap().permissions().mode() & 0o7777;
        std::fs::write(p("old"), b"old contents").unwrap();
        std::fs::set_permissions(p("old"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        std::fs::write(p("patch"), delta(b"old contents", b"new contents")).unwrap();
        // Beside it, and in place (the usual way: the old file is replaced by the new one).
        apply_file(&p("old"), &p("patch"), &p("new")).unwrap();
        assert_eq!(mode("new"), 0o4755);
        let (old_meta, new_meta) = (
            std::fs::metadata(p("old")).unwrap(),
            std::fs::metadata(p("new")).unwrap(),
        );
        assert_eq!(
            (old_meta.uid(), old_meta.gid()),
            (new_meta.uid(), new_meta.gid())
        );
        std::fs::copy(p("old"), p("inplace")).unwrap();
        std::fs::set_permissions(p("inplace"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        apply_file(&p("inplace"), &p("patch"), &p("inplace")).unwrap();
        assert_eq!(mode("inplace"), 0o4755);
        assert_eq!(std::fs::read(p("inplace")).unwrap(), b"new contents");

        let opts = ApplyOptions { mode: Some(0o644) };
        apply_file_with(&p("old"), &p("patch"), &p("plain"), &opts).unwrap();
        assert_eq!(mode("plain"), 0o644);
        let opts = ApplyOptions {
            mode: Some(0o10644),
        };
        let e = apply_file_with(&p("old"), &p("patch"), &p("x"), &opts).unwrap_err();
        assert!(e.to_string().contains("10644"), "{e}");
    }

    #[test]
    fn set_id_bits_survive_only_for_the_same_owner_or_root() {
        let (alice, bob) = ((1000, 1000), (1001, 1001));
        // Root gives the old owner back, and the whole mode.
        assert_eq!(
            owner_and_mode(alice, 0o104755, (0, 0), true, None),
            (Some(alice), 0o4755)
        );
        assert_eq!(
            owner_and_mode(alice, 0o6755, alice, true, None),
            (None, 0o6755)
        );
        // The old file's owner keeps the whole mode.
        assert_eq!(
            owner_and_mode(alice, 0o6755, alice, false, None),
            (None, 0o6755)
        );
        // Anyone else gets the mode without set-id bits, and no chown.
        assert_eq!(
            owner_and_mode(alice, 0o6755, bob, false, None),
            (None, 0o755)
        );
        assert_eq!(
            owner_and_mode(alice, 0o1777, bob, false, None),
            (None, 0o1777)
        );
        // A mode asked for is set as given.
        assert_eq!(
            owner_and_mode(alice, 0o644, bob, false, Some(0o4711)),
            (None, 0o4711)
        );
    }
}
