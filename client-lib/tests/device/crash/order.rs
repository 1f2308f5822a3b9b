//! The order of the agent's writes under a lost page cache (a power cut): a run is recorded
//! with `strace -f -y` and replayed on a model of what is durable. A file's data, a
//! directory's entries and an inode's metadata are dirty from the call that changes them
//! until an `fsync`/`fdatasync` of that file or directory, or a `syncfs`; a rename moves
//! the dirtiness of what it moves. At each cut point, what it depends on must be clean:
//!
//! - the rename of a temporary file into place (`fsio`): the file's data (the content store
//!   is written unsynced on purpose: the tree is synced as a whole before anything points
//!   at it, which the next two check);
//! - the rename of `state/complete/<v>`'s temporary file (the mark): every file and
//!   directory of `deployments/<v>`, `deployments` itself, and the version's manifests;
//! - the switch (a rename onto `current`, or rollback's exchange): the same, the mark,
//!   `state/complete`, and `state` with the trial or status written before it;
//! - the end of the run: the root, `deployments`, `state` and its folders.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// What a replay checked.
#[derive(Default, Debug)]
pub struct Checked {
    pub cut_points: usize,
    /// What each cut point was.
    pub points: Vec<String>,
    pub failures: Vec<String>,
}

/// One system call of the log: its name, its top-level arguments and what it returned.
struct Call {
    name: String,
    args: Vec<String>,
    ret: String,
}

/// Parses `strace -f -y -qq` output, joining the halves of calls other threads interrupted.
fn calls(log: &str) -> Vec<Call> {
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut out = Vec::new();
    for line in log.lines() {
        let (pid, rest) = line.split_once(' ').unwrap_or(("", line));
        let rest = rest.trim_start();
        let text = if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid.to_string(), head.to_string());
            continue;
        } else if rest.starts_with("<... ") {
            let tail = rest.split_once("resumed>").map_or("", |t| t.1);
            format!("{}{tail}", pending.remove(pid).unwrap_or_default())
        } else {
            rest.to_string()
        };
        let Some(open) = text.find('(') else { continue };
        let Some(eq) = text.rfind(") = ") else {
            continue;
        };
        out.push(Call {
            name: text[..open].to_string(),
            args: split_args(&text[open + 1..eq]),
            ret: text[eq + 4..].to_string(),
        });
    }
    out
}

/// Splits arguments at the commas outside quotes, brackets and braces.
fn split_args(s: &str) -> Vec<String> {
    let (mut out, mut cur, mut depth, mut quoted, mut escaped) =
        (Vec::new(), String::new(), 0i32, false, false);
    for c in s.chars() {
        if quoted {
            cur.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '[' | '{' | '(' => depth += 1,
            ']' | '}' | ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

/// The path `-y` prints for a descriptor: `5</a/b>` is `/a/b`.
fn fd_path(arg: &str) -> Option<PathBuf> {
    let (_, p) = arg.split_once('<')?;
    Some(PathBuf::from(p.strip_suffix('>')?))
}

fn unquote(arg: &str) -> String {
    let s = arg.trim_end_matches("...");
    let s = s
        .strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(s);
    s.replace("\\\"", "\"").replace("\\\\", "\\")
}

/// The path a (directory descriptor, name) pair names.
fn at(dirfd: &str, name: &str) -> PathBuf {
    let name = unquote(name);
    if name.starts_with('/') {
        return PathBuf::from(name);
    }
    let base = fd_path(dirfd).unwrap_or_default();
    if name.is_empty() || name == "." {
        base
    } else {
        base.join(name)
    }
}

/// The replayed state: paths whose data, entries or metadata a power cut may lose.
#[derive(Default)]
struct Durability {
    dirty: BTreeSet<PathBuf>,
}

impl Durability {
    fn touch(&mut self, p: &Path) {
        self.dirty.insert(p.to_owned());
    }
    fn touch_parent(&mut self, p: &Path) {
        if let Some(d) = p.parent() {
            self.dirty.insert(d.to_owned());
        }
    }
    /// Moves what is dirty at or under `from` to `to`.
    fn rename(&mut self, from: &Path, to: &Path) {
        let moved: Vec<PathBuf> = self
            .dirty
            .iter()
            .filter(|p| p.starts_with(from))
            .cloned()
            .collect();
        self.dirty.retain(|p| !p.starts_with(to));
        for p in moved {
            self.dirty.remove(&p);
            self.dirty.insert(
                to.join(p.strip_prefix(from).unwrap())
                    .components()
                    .collect(),
            );
        }
    }
    /// Dirty paths at or under `p`.
    fn under(&self, p: &Path) -> Vec<PathBuf> {
        self.dirty
            .iter()
            .filter(|d| d.starts_with(p))
            .cloned()
            .collect()
    }
}

/// Replays the calls of `log` under `root` and checks every cut point.
pub fn replay(log: &str, root: &Path) -> Checked {
    let mut st = Durability::default();
    let mut checked = Checked::default();
    // What each symlink made under the root points at.
    let mut links: HashMap<PathBuf, String> = HashMap::new();
    let check = |what: String, dirty: Vec<PathBuf>, checked: &mut Checked| {
        checked.cut_points += 1;
        checked.points.push(what.clone());
        if !dirty.is_empty() {
            checked
                .failures
                .push(format!("{what}: not synced before it: {dirty:?}"));
        }
    };
    for c in calls(log) {
        if c.ret.starts_with('-') {
            continue;
        }
        let a = |i: usize| c.args.get(i).map(String::as_str).unwrap_or("");
        match c.name.as_str() {
            "openat" if a(2).contains("O_CREAT") || a(2).contains("O_TRUNC") => {
                let p = at(a(0), a(1));
                st.touch(&p);
                st.touch_parent(&p);
            }
            "write" | "pwrite64" | "writev" | "pwritev" | "ftruncate" | "fallocate" | "fchmod"
            | "fchown" | "fsetxattr" => {
                if let Some(p) = fd_path(a(0)) {
                    st.touch(&p);
                }
            }
            "fchmodat" | "fchownat" | "utimensat" => st.touch(&at(a(0), a(1))),
            "lsetxattr" | "setxattr" | "chmod" | "chown" | "lchown" => {
                st.touch(Path::new(&unquote(a(0))))
            }
            "fsync" | "fdatasync" => {
                if let Some(p) = fd_path(a(0)) {
                    st.dirty.remove(&p);
                }
            }
            "syncfs" | "sync" => st.dirty.clear(),
            "mkdirat" => st.touch_parent(&at(a(0), a(1))),
            "mkdir" => st.touch_parent(Path::new(&unquote(a(0)))),
            "unlinkat" => {
                let p = at(a(0), a(1));
                st.dirty.retain(|d| !d.starts_with(&p));
                st.touch_parent(&p);
            }
            "symlinkat" => {
                let p = at(a(1), a(2));
                links.insert(p.clone(), unquote(a(0)));
                st.touch_parent(&p);
            }
            "linkat" => {
                let (from, to) = (at(a(0), a(1)), at(a(2), a(3)));
                if st.dirty.contains(&from) {
                    st.touch(&to);
                }
                st.touch_parent(&to);
            }
            "renameat" | "renameat2" | "rename" => {
                let (from, to) = if c.name == "rename" {
                    (PathBuf::from(unquote(a(0))), PathBuf::from(unquote(a(1))))
                } else {
                    (at(a(0), a(1)), at(a(2), a(3)))
                };
                let rel_to = to.strip_prefix(root).unwrap_or(&to).to_owned();
                let name = from.file_name().unwrap_or_default().to_string_lossy();
                let temporary = name.ends_with(".deltaroot-tmp");
                if temporary && !rel_to.starts_with("staging/content") {
                    check(
                        format!("{} renamed into place", rel_to.display()),
                        st.under(&from),
                        &mut checked,
                    );
                }
                let tree = |v: &str, what: String, extra: &[&str], checked: &mut Checked| {
                    let mut dirty = st.under(&root.join("deployments").join(v));
                    for d in ["deployments", "state/manifests"]
                        .iter()
                        .chain(extra)
                        .map(|d| root.join(d))
                    {
                        dirty.extend(st.dirty.contains(&d).then_some(d));
                    }
                    for m in [format!("{v}.manifest"), format!("{v}.sig")] {
                        let p = root.join("state/manifests").join(m);
                        dirty.extend(st.dirty.contains(&p).then_some(p));
                    }
                    check(what, dirty, checked);
                };
                if temporary && rel_to.starts_with("state/complete") {
                    let v = rel_to.file_name().unwrap().to_string_lossy().into_owned();
                    tree(&v, format!("the mark of {v}"), &[], &mut checked);
                }
                let exchange = a(4).contains("RENAME_EXCHANGE");
                // A new link renamed onto `current`, or `current` exchanged with `previous`
                // (rollback): what `current` points at after it (read from the root when
                // this run did not make the link).
                let switched = if rel_to == Path::new("current") {
                    Some(links.get(&from).cloned())
                } else if exchange && from == root.join("current") {
                    Some(links.get(&to).cloned())
                } else {
                    None
                };
                if let Some(target) = switched {
                    let target = target.unwrap_or_else(|| {
                        let now = std::fs::read_link(root.join("current")).unwrap_or_default();
                        now.to_string_lossy().into_owned()
                    });
                    let v = target
                        .strip_prefix("deployments/")
                        .unwrap_or("?")
                        .to_string();
                    let mark = format!("state/complete/{v}");
                    tree(
                        &v,
                        format!("the switch to {v}"),
                        // The trial (update, install) or the status (a revert) written
                        // before the switch, so that a cut after it is seen.
                        &[
                            "state/complete",
                            mark.as_str(),
                            "state",
                            "state/trial.json",
                            "state/status.json",
                        ],
                        &mut checked,
                    );
                }
                if exchange {
                    let spare = root.join(".exchange");
                    st.rename(&from, &spare);
                    st.rename(&to, &from);
                    st.rename(&spare, &to);
                    let (lf, lt) = (links.remove(&from), links.remove(&to));
                    links.extend(lf.map(|l| (to.clone(), l)));
                    links.extend(lt.map(|l| (from.clone(), l)));
                } else {
                    st.rename(&from, &to);
                    if let Some(l) = links.remove(&from) {
                        links.insert(to.clone(), l);
                    }
                }
                st.touch_parent(&from);
                st.touch_parent(&to);
            }
            _ => {}
        }
    }
    let end: Vec<PathBuf> = [
        "",
        "deployments",
        "state",
        "state/complete",
        "state/manifests",
    ]
    .iter()
    .map(|d| {
        if d.is_empty() {
            root.to_owned()
        } else {
            root.join(d)
        }
    })
    .filter(|d| st.dirty.contains(d))
    .collect();
    check("the end of the run".into(), end, &mut checked);
    checked
}
