//! `deltaroot inspect-elf`: whether the ELF method's layout parser accepts each file, and if
//! not, why, without building a delta. Only the headers are read (the ELF header, then the
//! program and section header tables, each checked against the file's length first), so a
//! survey of thousands of files, or of one 300 MB browser, takes moments.

use std::io::Write;
use std::path::PathBuf;

use deltaroot_format::elf::Layout;

use crate::error::{Error, Result};

/// Writes one line per path to `out`: `PATH: ok: <kind>` or `PATH: refused: <reason>` (a file
/// that cannot be opened counts as refused), and returns how many were refused.
pub fn report(paths: &[PathBuf], out: &mut dyn Write) -> Result<usize> {
    let mut refused = 0;
    for path in paths {
        let file = std::fs::File::open(path);
        let answer = match &file {
            Ok(f) => Layout::from_file(f).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let line = match answer {
            Ok(layout) => format!("{}: ok: {}", path.display(), layout.describe()),
            Err(why) => {
                refused += 1;
                format!("{}: refused: {why}", path.display())
            }
        };
        writeln!(out, "{line}").map_err(Error::io("standard output"))?;
    }
    Ok(refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_file_gets_a_line_naming_it_and_refusals_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notes.txt");
        std::fs::write(&text, "not an ELF file").unwrap();
        let elf =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/elf-small/x86_64-pie");
        let missing = dir.path().join("missing");
        let mut out = Vec::new();
        let refused = report(&[elf.clone(), text.clone(), missing.clone()], &mut out).unwrap();
        let out = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(refused, 2, "{out}");
        assert!(
            lines[0].starts_with(&format!("{}: ok: x86-64 PIE", elf.display())),
            "{out}"
        );
        assert!(
            lines[1].starts_with(&format!("{}: refused: not an ELF file", text.display())),
            "{out}"
        );
        assert!(
            lines[2].starts_with(&format!("{}: refused: ", missing.display())),
            "{out}"
        );
    }
}
