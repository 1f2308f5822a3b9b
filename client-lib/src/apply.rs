//! One delta applied to one file, outside any update: what `deltaroot apply` (the publisher's
//! CLI) and `deltaroot-apply` (the device's stand-alone tool) run.
//!
//! The old file is read where the delta needs it (the ELF method reads its headers and the
//! ranges its records name; the other methods read it whole); the new one is built in memory
//! and checked against the hash the delta's header names, then written beside the output path
//! and renamed over it. A delta that does not apply leaves the output path as it was.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::format::container::{apply_delta_to, Source};

/// Applies the delta in the file `patch` to the file `old` and puts the verified result at
/// `out`. Returns the number of bytes written.
pub fn apply_file(old: &Path, patch: &Path, out: &Path) -> Result<u64> {
    let file = File::open(old).map_err(Error::io(old))?;
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
    write_replacing(out, &new)?;
    Ok(new.len() as u64)
}

/// Writes `bytes` to a file beside `out` (one a cut-off run left there is overwritten), syncs
/// it and renames it over `out`; on any failure the partial file is removed and `out` is
/// untouched.
fn write_replacing(out: &Path, bytes: &[u8]) -> Result<()> {
    let partial = partial_path(out);
    let written = File::create(&partial).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&partial, out));
    renamed.map_err(|e| {
        let _ = std::fs::remove_file(&partial);
        Error::io(out)(e)
    })
}

/// `<dir>/.<name>.deltaroot-partial`: in the output's folder, so the rename stays on one
/// file system.
fn partial_path(out: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(out.file_name().unwrap_or(out.as_os_str()));
    name.push(".deltaroot-partial");
    out.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::container::tests::zstd_delta as delta;

    #[test]
    fn a_good_delta_replaces_the_output_and_a_bad_one_leaves_it() {
        let tmp = tempfile::tempdir().unwrap();
        let p = |n: &str| tmp.path().join(n);
        std::fs::write(p("old"), b"old contents").unwrap();
        std::fs::write(p("out"), b"what was there").unwrap();
        let d = delta(b"old contents", b"new contents, longer");
        std::fs::write(p("good"), &d).unwrap();
        // What a run cut off by a power loss left behind does not stand in the way.
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
        assert_eq!(left, ["bad", "good", "old", "out"]);
    }
}
