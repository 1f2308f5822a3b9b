//! Entry paths: raw bytes, relative, normalised, and unable to escape a tree.
//!
//! Every path that comes out of a manifest is an [`EntryPath`]. Parsing rejects absolute
//! paths, `.` and `..` components, empty components, NUL bytes and over-long names, so the
//! staging code can join it under a directory handle without checking again.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Longest path a manifest may hold, in bytes (Linux `PATH_MAX` less the terminator).
pub const MAX_PATH_LEN: usize = 4095;
/// Longest single name, in bytes (Linux `NAME_MAX`).
pub const MAX_NAME_LEN: usize = 255;

/// A relative path inside an image tree, as raw bytes separated by `/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryPath(Vec<u8>);

/// Why a byte string is not an [`EntryPath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is empty")]
    Empty,
    #[error("path {0} is absolute")]
    Absolute(String),
    #[error("path {0} has an empty, `.` or `..` component")]
    BadComponent(String),
    #[error("path {0} holds a NUL byte")]
    Nul(String),
    #[error(
        "path {0} is longer than {MAX_PATH_LEN} bytes or has a name longer than {MAX_NAME_LEN}"
    )]
    TooLong(String),
}

impl EntryPath {
    /// Checks `bytes` and wraps it.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, PathError> {
        let bytes = bytes.into();
        let shown = || escape_bytes(&bytes);
        if bytes.is_empty() {
            return Err(PathError::Empty);
        }
        if bytes[0] == b'/' {
            return Err(PathError::Absolute(shown()));
        }
        if bytes.contains(&0) {
            return Err(PathError::Nul(shown()));
        }
        if bytes.len() > MAX_PATH_LEN {
            return Err(PathError::TooLong(shown()));
        }
        for part in bytes.split(|&b| b == b'/') {
            if part.is_empty() || part == b"." || part == b".." {
                return Err(PathError::BadComponent(shown()));
            }
            if part.len() > MAX_NAME_LEN {
                return Err(PathError::TooLong(shown()));
            }
        }
        Ok(EntryPath(bytes))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as a relative [`Path`], for use under a directory handle.
    pub fn as_path(&self) -> &Path {
        Path::new(OsStr::from_bytes(&self.0))
    }

    /// The parent directory, or `None` for a top-level entry.
    pub fn parent(&self) -> Option<EntryPath> {
        let cut = self.0.iter().rposition(|&b| b == b'/')?;
        Some(EntryPath(self.0[..cut].to_vec()))
    }

    /// The last component.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(cut) => &self.0[cut + 1..],
            None => &self.0,
        }
    }

    /// Whether `self` is `other` or lies below it (component by component: `a-b` is not
    /// within `a`).
    pub fn is_within(&self, other: &EntryPath) -> bool {
        match self.0.strip_prefix(other.0.as_slice()) {
            Some(rest) => rest.is_empty() || rest[0] == b'/',
            None => false,
        }
    }

    /// How many components the path has (`var/lib`: 2).
    pub fn depth(&self) -> usize {
        1 + self.0.iter().filter(|&&b| b == b'/').count()
    }

    /// `self/name`, checked.
    pub fn join(&self, name: &[u8]) -> Result<EntryPath, PathError> {
        let mut bytes = self.0.clone();
        bytes.push(b'/');
        bytes.extend_from_slice(name);
        EntryPath::new(bytes)
    }
}

impl fmt::Display for EntryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape_bytes(&self.0))
    }
}

impl fmt::Debug for EntryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// Shows bytes as text: valid UTF-8 as is (control characters escaped), other bytes as `\xNN`.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() {
                out.extend(c.escape_default());
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_escapes() {
        for bad in [
            &b""[..],
            b"/etc",
            b"a/../b",
            b"..",
            b"a//b",
            b"a/",
            b"./a",
            b"a\0b",
        ] {
            assert!(
                EntryPath::new(bad).is_err(),
                "{:?} accepted",
                escape_bytes(bad)
            );
        }
        assert!(EntryPath::new(vec![b'a'; 256]).is_err());
        assert!(EntryPath::new(vec![b'a'; 255]).is_ok());
    }

    #[test]
    fn raw_names_round_trip() {
        let p = EntryPath::new(&b"names/caf\xe9/line\nbreak"[..]).unwrap();
        assert_eq!(p.file_name(), b"line\nbreak");
        assert_eq!(p.parent().unwrap().as_bytes(), b"names/caf\xe9");
        assert_eq!(p.to_string(), "names/caf\\xe9/line\\nbreak");
    }

    #[test]
    fn within_is_by_component() {
        let p = |s: &str| EntryPath::new(s).unwrap();
        assert!(p("var/lib").is_within(&p("var/lib")));
        assert!(p("var/lib/x").is_within(&p("var/lib")));
        assert!(p("var/lib/x").is_within(&p("var")));
        assert!(!p("var/libx").is_within(&p("var/lib")));
        assert!(!p("var").is_within(&p("var/lib")));
        assert_eq!((p("home").depth(), p("var/lib/x").depth()), (1, 3));
    }

    #[test]
    fn parents_sort_before_children() {
        let a = EntryPath::new("a").unwrap();
        let ab = EntryPath::new("a/b").unwrap();
        let a_dash = EntryPath::new("a-b").unwrap();
        assert!(a < a_dash && a_dash < ab);
    }
}
