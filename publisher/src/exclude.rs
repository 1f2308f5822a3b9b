//! `--exclude GLOB`: paths of an input tree left out of the image, matched against the
//! tree-relative path (`run/app.sock`, never `./run/app.sock` or an absolute path).
//!
//! `*` matches any run of characters within one path component, `?` one character other
//! than `/`, `**` any run of characters including `/` (so `**/*.pyc` matches `a.pyc` and
//! `usr/lib/a.pyc`), `[abc]` one of the characters listed. A directory that matches is left
//! out with everything below it.

use deltaroot_format::EntryPath;

/// Compiled `--exclude` patterns.
#[derive(Clone, Debug, Default)]
pub struct Exclude {
    patterns: Vec<Vec<u8>>,
}

impl Exclude {
    /// The patterns as given on the command line (a leading `./` or `/` is dropped, as is a
    /// trailing `/`).
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Exclude {
        let patterns = patterns
            .iter()
            .map(|p| {
                let mut s = p.as_ref();
                while let Some(rest) = s.strip_prefix("./").or_else(|| s.strip_prefix('/')) {
                    s = rest;
                }
                s.trim_end_matches('/').as_bytes().to_vec()
            })
            .filter(|p| !p.is_empty())
            .collect();
        Exclude { patterns }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `path` is left out (its ancestors are not looked at: a walk that leaves out a
    /// directory never reaches what it holds).
    pub fn matches(&self, path: &EntryPath) -> bool {
        self.matches_bytes(path.as_bytes())
    }

    /// Whether `path` or one of its ancestors is left out, for inputs (tars) whose entries
    /// come in any order.
    pub fn covers(&self, path: &EntryPath) -> bool {
        let b = path.as_bytes();
        self.matches_bytes(b)
            || b.iter()
                .enumerate()
                .any(|(i, c)| *c == b'/' && self.matches_bytes(&b[..i]))
    }

    fn matches_bytes(&self, path: &[u8]) -> bool {
        self.patterns.iter().any(|p| glob(p, path))
    }
}

/// Whether the glob `p` matches all of `s`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', rest @ ..] => {
            // `**/x` also matches `x` at the top.
            if let Some(after) = rest.strip_prefix(b"/") {
                if glob(after, s) {
                    return true;
                }
            }
            (0..=s.len()).any(|i| glob(rest, &s[i..]))
        }
        [b'*', rest @ ..] => {
            let run = s.iter().position(|c| *c == b'/').unwrap_or(s.len());
            (0..=run).any(|i| glob(rest, &s[i..]))
        }
        [b'?', rest @ ..] => matches!(s, [c, tail @ ..] if *c != b'/' && glob(rest, tail)),
        [b'[', rest @ ..] => match rest.iter().position(|c| *c == b']') {
            Some(end) if end > 0 => match s {
                [c, tail @ ..] if *c != b'/' && rest[..end].contains(c) => {
                    glob(&rest[end + 1..], tail)
                }
                _ => false,
            },
            _ => matches!(s, [b'[', tail @ ..] if glob(rest, tail)),
        },
        [c, rest @ ..] => matches!(s, [d, tail @ ..] if c == d && glob(rest, tail)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(s: &str) -> EntryPath {
        EntryPath::new(s.as_bytes()).unwrap()
    }

    #[test]
    fn globs_match_tree_relative_paths() {
        let ex = Exclude::new(&[
            "run/*.sock",
            "**/*.pyc",
            "./var/cache/",
            "tmp/?",
            "dev/[ab]x",
        ]);
        for p in [
            "run/app.sock",
            "a.pyc",
            "usr/lib/x/a.pyc",
            "var/cache",
            "tmp/1",
            "dev/ax",
        ] {
            assert!(ex.matches(&path(p)), "{p}");
        }
        for p in [
            "run/sub/app.sock",
            "run/app.socket",
            "var/cache2",
            "tmp/12",
            "dev/cx",
            "usr/lib/a.py",
        ] {
            assert!(!ex.matches(&path(p)), "{p}");
        }
        assert!(ex.covers(&path("var/cache/apt/pkgcache.bin")));
        assert!(!ex.matches(&path("var/cache/apt/pkgcache.bin")));
        assert!(Exclude::new::<&str>(&[]).is_empty());
    }
}
