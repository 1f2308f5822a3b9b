//! Writing a file whole or not at all: the one implementation every deltaroot writer uses
//! (`apply`, the device's state, manifests and content store, the agent's device id).
//!
//! The new contents go to a temporary file beside the target, created exclusively
//! (`O_CREAT|O_EXCL`: a symlink or any file already at that name is never opened, let alone
//! followed), named `.<target>.<pid>.<attempt>.deltaroot-tmp`; the file is written, synced,
//! renamed over the target (a symlink at the target is replaced, never followed), and the
//! directory is synced so the rename itself survives a power cut. On any failure the
//! temporary file is removed and the target is as it was.
//!
//! Everything goes through a `cap_std` directory handle ([`AtomicFile::create_in`],
//! [`write_atomic_in`]); [`write_atomic`] opens the target's folder and does the same.
//! Errors are plain `io::Error`s: the caller names the path in its own error type.

use std::ffi::OsString;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, OpenOptions, OpenOptionsExt};

/// Names tried for the temporary file before giving up (each taken name is skipped).
const ATTEMPTS: u32 = 16;

/// Writes `bytes` to `path` atomically and durably (see the module documentation).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let (dir, name) = open_parent(path)?;
    write_atomic_in(&dir, name, bytes)
}

/// Writes `bytes` to `rel` under `dir` atomically and durably.
pub fn write_atomic_in(dir: &Dir, rel: impl AsRef<Path>, bytes: &[u8]) -> io::Result<()> {
    let mut f = AtomicFile::create_in(dir, rel)?;
    f.write_all(bytes)?;
    f.commit()
}

/// The folder holding `path`, opened, and the file name in it.
pub fn open_parent(path: &Path) -> io::Result<(Dir, &Path)> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = Dir::open_ambient_dir(parent, ambient_authority())?;
    Ok((dir, Path::new(name)))
}

/// A file being written beside its target; renamed over it by [`AtomicFile::commit`],
/// removed if dropped before.
pub struct AtomicFile<'d> {
    dir: &'d Dir,
    tmp: PathBuf,
    target: PathBuf,
    file: Option<std::fs::File>,
}

impl<'d> AtomicFile<'d> {
    /// Creates the temporary file for `rel` (a path under `dir`), mode 0666 less the umask
    /// as any new file (set another with `file().set_permissions` before committing).
    pub fn create_in(dir: &'d Dir, rel: impl AsRef<Path>) -> io::Result<AtomicFile<'d>> {
        let target = rel.as_ref().to_owned();
        let mut opts = OpenOptions::new();
        opts.write(true).create_new(true).mode(0o666);
        let (tmp, f) = claim_temp(&target, |tmp| dir.open_with(tmp, &opts))?;
        Ok(AtomicFile {
            dir,
            tmp,
            target,
            file: Some(f.into_std()),
        })
    }

    /// The temporary file, to write to or to set the metadata of (`fchmod`, `fchown`).
    pub fn file(&self) -> &std::fs::File {
        self.file.as_ref().expect("open until committed")
    }

    /// The temporary file's path under the directory handle.
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Syncs the file, renames it over the target and syncs the directory.
    pub fn commit(self) -> io::Result<()> {
        self.finish(true)
    }

    /// Renames the file over the target without syncing either: for the device's content
    /// store, whose thousands of files reach the disk with one `syncfs` of the staged tree
    /// before anything points at them (and are verified by hash again if an update is
    /// resumed after a cut).
    pub fn commit_unsynced(self) -> io::Result<()> {
        self.finish(false)
    }

    fn finish(mut self, sync: bool) -> io::Result<()> {
        let file = self.file.take().expect("open until committed");
        if sync {
            file.sync_all()?;
        }
        drop(file);
        self.dir.rename(&self.tmp, self.dir, &self.target)?;
        // Renamed: nothing is left to remove.
        self.tmp = PathBuf::new();
        if sync {
            sync_dir_in(self.dir, self.target.parent())?;
        }
        Ok(())
    }
}

impl Write for AtomicFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_ref().expect("open until committed").write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for AtomicFile<'_> {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            let _ = self.dir.remove_file(&self.tmp);
        }
    }
}

/// Points the symlink `rel` under `dir` at `contents` atomically: a new symlink at a
/// temporary name (never one already taken) renamed over `rel`, then the directory synced.
/// A power cut leaves the old link or the new one.
pub fn symlink_atomic_in(
    dir: &Dir,
    contents: impl AsRef<Path>,
    rel: impl AsRef<Path>,
) -> io::Result<()> {
    let target = rel.as_ref();
    let (tmp, ()) = claim_temp(target, |tmp| dir.symlink_contents(contents.as_ref(), tmp))?;
    if let Err(e) = dir.rename(&tmp, dir, target) {
        let _ = dir.remove_file(&tmp);
        return Err(e);
    }
    sync_dir_in(dir, target.parent())
}

/// Makes something new (`make` must fail with `AlreadyExists` rather than reuse anything
/// there) at the first free temporary name beside `target`, and returns that name. A taken
/// name (a leftover of another process, or anything planted there) is never opened: the
/// next one is tried.
fn claim_temp<T>(
    target: &Path,
    mut make: impl FnMut(&Path) -> io::Result<T>,
) -> io::Result<(PathBuf, T)> {
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut last = None;
    for attempt in 0..ATTEMPTS {
        let tmp = target.with_file_name(temp_name(name.as_bytes(), attempt));
        match make(&tmp) {
            Ok(made) => return Ok((tmp, made)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Syncs the directory `rel` under `dir` (`dir` itself when `None` or empty). A directory
/// handle may be `O_PATH`; syncing opens a real descriptor.
pub fn sync_dir_in(dir: &Dir, rel: Option<&Path>) -> io::Result<()> {
    let rel = match rel {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    dir.open(rel)?.sync_all()
}

/// `.<name>.<pid>.<attempt>.deltaroot-tmp`, the name kept short enough for any file system.
pub fn temp_name(name: &[u8], attempt: u32) -> OsString {
    let mut out = b".".to_vec();
    out.extend_from_slice(&name[..name.len().min(200)]);
    out.extend_from_slice(format!(".{}.{attempt}.deltaroot-tmp", std::process::id()).as_bytes());
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_whole_and_replaces_a_symlink_without_following_it() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        write_atomic(&p("a"), b"one").unwrap();
        write_atomic(&p("a"), b"two").unwrap();
        assert_eq!(std::fs::read(p("a")).unwrap(), b"two");

        // A symlink at the target is replaced by the file; what it pointed at is untouched.
        std::fs::write(p("victim"), b"precious").unwrap();
        std::os::unix::fs::symlink(p("victim"), p("link")).unwrap();
        write_atomic(&p("link"), b"new").unwrap();
        assert_eq!(std::fs::read(p("victim")).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(p("link")).unwrap().is_file());

        // Symlinks planted at the first temporary names are skipped, never written through.
        for attempt in 0..3 {
            let name = temp_name(b"b", attempt);
            std::os::unix::fs::symlink(p("victim"), tmp.path().join(&name)).unwrap();
        }
        write_atomic(&p("b"), b"bee").unwrap();
        assert_eq!(std::fs::read(p("b")).unwrap(), b"bee");
        assert_eq!(std::fs::read(p("victim")).unwrap(), b"precious");
        assert_eq!(names(tmp.path()).len(), 4 + 3, "{:?}", names(tmp.path()));
    }

    #[test]
    fn a_failed_write_leaves_the_target_and_no_temporary_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = Dir::open_ambient_dir(tmp.path(), ambient_authority()).unwrap();
        write_atomic_in(&dir, "t", b"kept").unwrap();
        {
            let mut f = AtomicFile::create_in(&dir, "t").unwrap();
            f.write_all(b"half").unwrap();
            // Dropped without commit.
        }
        assert_eq!(std::fs::read(tmp.path().join("t")).unwrap(), b"kept");
        assert_eq!(names(tmp.path()), ["t"]);
        // Renaming over a directory fails: the temporary file goes too.
        std::fs::create_dir(tmp.path().join("d")).unwrap();
        std::fs::write(tmp.path().join("d/x"), b"x").unwrap();
        assert!(write_atomic_in(&dir, "d", b"no").is_err());
        assert_eq!(names(tmp.path()), ["d", "t"]);
        // A symlink replaced the same way.
        symlink_atomic_in(&dir, "t", "l").unwrap();
        symlink_atomic_in(&dir, "d/x", "l").unwrap();
        assert_eq!(std::fs::read(tmp.path().join("l")).unwrap(), b"x");
        assert_eq!(names(tmp.path()), ["d", "l", "t"]);
        // Under a sub-folder, through the handle.
        write_atomic_in(&dir, "d/y", b"why").unwrap();
        assert_eq!(std::fs::read(tmp.path().join("d/y")).unwrap(), b"why");
        assert_eq!(names(&tmp.path().join("d")), ["x", "y"]);
    }
}
