//! The crash harness: the real `deltaroot-agent` killed with SIGKILL at system call N, for
//! every N of a short command or N spread over the whole of a long one, on a copy of a
//! prepared device root each time. After every kill:
//!
//! - `current` resolves to exactly the old tree or exactly the new one: bytes, modes, owners,
//!   xattrs, symlink targets and hardlink groups, against the image trees published;
//! - every `state/complete/<v>` mark names a deployment that is exactly the image of `v`;
//! - `deltaroot-agent status` reports as running the version `current` points at;
//! - `rollback`, run on a copy, either refuses or switches to a complete tree;
//! - the next run of the same command (for `rollback` and `update --apply-staged` once they
//!   have switched, which have nothing left to do then: a command that only takes the lock) finishes the job and leaves nothing behind: no
//!   `staging/` content, no deployment, mark or manifest but those kept, no temporary file
//!   (`.<name>.<pid>.<n>.deltaroot-tmp`, `deltaroot_format::fsio`) anywhere under the root.
//!
//! The release folder is written by hand (`common/folder.rs`); no server.

#[path = "crash/order.rs"]
mod order;
#[path = "crash/ptrace.rs"]
mod ptrace;
#[path = "crash/tree.rs"]
mod tree;

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use tree::snapshot;

/// The agent binary cargo built for this workspace and profile, built first when it is
/// missing or older than the sources it is made of (`cargo test -p deltaroot-client` alone
/// does not build other packages' binaries; `cargo test --workspace` does).
fn agent_exe() -> PathBuf {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let test = std::env::current_exe().unwrap();
        // <target>/<profile>/deps/device-<hash>
        let profile = test.parent().unwrap().parent().unwrap().to_owned();
        let exe = profile.join("deltaroot-agent");
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let built = std::fs::metadata(&exe).and_then(|m| m.modified()).ok();
        let newest = ["client-lib/src", "agent/src", "format/src", "Cargo.lock"]
            .iter()
            .map(|d| newest_mtime(&workspace.join(d)))
            .max()
            .flatten();
        if built.is_none() || built < newest {
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let mut cmd = Command::new(cargo);
            cmd.args(["build", "-p", "deltaroot-agent", "--bin", "deltaroot-agent"])
                .env("CARGO_TARGET_DIR", profile.parent().unwrap())
                .current_dir(workspace);
            if profile.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let out = cmd.output().expect("running cargo build");
            assert!(
                out.status.success(),
                "cargo build -p deltaroot-agent: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(exe.is_file(), "no agent at {}", exe.display());
        exe
    })
    .clone()
}

fn newest_mtime(p: &Path) -> Option<std::time::SystemTime> {
    let m = std::fs::symlink_metadata(p).ok()?;
    let mut newest = m.modified().ok();
    if m.is_dir() {
        for e in std::fs::read_dir(p).ok()? {
            newest = newest.max(newest_mtime(&e.ok()?.path()));
        }
    }
    newest
}

/// `cp -a`: a copy of a device root with its hardlinks, owners, modes and xattrs.
fn copy_root(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    let ok = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cp -a {} {}", from.display(), to.display());
}

/// The version a link of the root points at (`deployments/<v>`).
fn link(root: &Path, name: &str) -> Option<String> {
    let t = std::fs::read_link(root.join(name)).ok()?;
    Some(
        t.strip_prefix("deployments")
            .unwrap_or_else(|_| panic!("{name} -> {}", t.display()))
            .to_string_lossy()
            .into_owned(),
    )
}

fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every path under `dir` (not following symlinks) whose name has `tmp` in it.
fn temporaries(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().contains("tmp") {
            out.push(e.path());
        }
        if e.file_type().unwrap().is_dir() {
            temporaries(&e.path(), out);
        }
    }
}

/// A release folder with versions 1, 2 and 3, their image trees, and device roots prepared
/// by the agent itself.
struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    agent: PathBuf,
    folder: PathBuf,
    key: PathBuf,
    /// Each version's image tree, described.
    want: HashMap<String, Vec<String>>,
}

impl Fixture {
    fn new() -> Fixture {
        // On a tmpfs when there is one: a SIGKILL loses no page cache, so the syncs the
        // agent makes change nothing here but the time they take on a disk.
        let tmp = tempfile::Builder::new()
            .prefix("deltaroot-crash")
            .tempdir_in("/dev/shm")
            .ok()
            .filter(|t| {
                let p = t.path().join("xattr");
                std::fs::write(&p, b"").is_ok()
                    && rustix::fs::lsetxattr(&p, "user.x", b"", rustix::fs::XattrFlags::empty())
                        .is_ok()
            })
            .unwrap_or_else(|| tempfile::tempdir().unwrap());
        let dir = tmp.path().to_owned();
        let key = deltaroot_format::SecretKey::from_seed([9; 32]);
        std::fs::write(dir.join("k.pub"), key.public().to_text()).unwrap();
        let f = super::folder::Release {
            root: dir.join("release"),
            key,
            shared: Vec::new(),
        };
        let images = dir.join("images");
        let fx = Fixture {
            agent: agent_exe(),
            folder: f.root.clone(),
            key: dir.join("k.pub"),
            want: HashMap::new(),
            dir,
            _tmp: tmp,
        };
        // r1: 1 installed; r12: updated to 2; r123: updated to 3, 1 pruned (keep 1);
        // r123b: 3 booted once on trial; r12s: 3 downloaded into the staging of r12.
        let m1 = tree::publish(&f, &images, 1, None);
        fx.agent_ok(&fx.root("r1"), &["install", "1"]);
        let m2 = tree::publish(&f, &images, 2, Some(&m1));
        copy_root(&fx.root("r1"), &fx.root("r12"));
        fx.agent_ok(&fx.root("r12"), &["update"]);
        tree::publish(&f, &images, 3, Some(&m2));
        copy_root(&fx.root("r12"), &fx.root("r123"));
        fx.agent_ok(&fx.root("r123"), &["update"]);
        assert_eq!(names(&fx.root("r123").join("deployments")).len(), 2);
        copy_root(&fx.root("r12"), &fx.root("r12s"));
        fx.agent_ok(&fx.root("r12s"), &["update", "--download-only"]);
        copy_root(&fx.root("r123"), &fx.root("r123b"));
        fx.agent_ok(&fx.root("r123b"), &["boot-check", "--boot-attempts", "1"]);
        let want = (1..=3)
            .map(|v| (v.to_string(), snapshot(&images.join(v.to_string()))))
            .collect();
        Fixture { want, ..fx }
    }

    fn root(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn args(&self, root: &Path, cmd: &[&str]) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["--root".into(), root.into()];
        a.extend(["--folder".into(), self.folder.clone().into()]);
        a.extend(["--trust".into(), self.key.clone().into()]);
        for s in [
            "--product",
            "demo",
            "--device-id",
            "crash",
            "--keep-versions",
            "1",
        ] {
            a.push(s.into());
        }
        a.extend(cmd.iter().map(OsString::from));
        a
    }

    /// Runs the agent to its end: its success and what it printed.
    fn agent(&self, root: &Path, cmd: &[&str]) -> (bool, String) {
        let out = Command::new(&self.agent)
            .args(self.args(root, cmd))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    fn agent_ok(&self, root: &Path, cmd: &[&str]) -> String {
        let (ok, text) = self.agent(root, cmd);
        assert!(ok, "deltaroot-agent {cmd:?} on {}: {text}", root.display());
        text
    }

    /// What `deltaroot-agent status` reports as running.
    fn status_current(&self, root: &Path) -> Option<String> {
        let text = self.agent_ok(root, &["--json", "status"]);
        // The JSON document (warnings on stderr come after it).
        let json = &text[text.find('{').unwrap()..=text.rfind('}').unwrap()];
        let v: serde_json::Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {text}"));
        v["current"].as_str().map(str::to_string)
    }

    /// The tree at `path` is exactly the image of `v`.
    fn assert_image(&self, path: &Path, v: &str, at: &str) {
        let got = snapshot(path);
        let want = &self.want[v];
        if &got != want {
            let diff: Vec<_> = got
                .iter()
                .filter(|l| !want.contains(l))
                .map(|l| format!("+ {l}"))
                .chain(
                    want.iter()
                        .filter(|l| !got.contains(l))
                        .map(|l| format!("- {l}")),
                )
                .collect();
            panic!(
                "{at}: {} is not the image of {v}:\n{}",
                path.display(),
                diff.join("\n")
            );
        }
    }
}

/// One command killed at many points.
struct Case<'a> {
    name: &'a str,
    /// The prepared root every kill starts from.
    from: &'a str,
    cmd: &'a [&'a str],
    old: &'a str,
    new: &'a str,
    /// Once `current` is the new version the command has nothing left to do (`rollback` would
    /// undo it, `update --apply-staged` finds nothing staged): the next run is then
    /// `boot-check`, which only takes the lock (and tidies).
    done_once_switched: bool,
    /// Kill points at most: every system call of a shorter command.
    points: u64,
}

/// Kills `case.cmd` at each chosen point and checks what it left; returns the points.
fn crash_case(fx: &Fixture, case: &Case) -> usize {
    let work = fx.root(&format!("work-{}", case.name));
    let spare = fx.root(&format!("spare-{}", case.name));
    // Once to its end, counting (and naming) its system calls.
    copy_root(&fx.root(case.from), &work);
    let full = ptrace::run(&fx.agent, &fx.args(&work, case.cmd), None, true);
    assert_eq!(full.code, Some(0), "{}: the traced run failed", case.name);
    assert_eq!(link(&work, "current").as_deref(), Some(case.new));
    let total = full.entered;
    // Right before and right after every system call that changes the disk, then
    // evenly over the whole run (its reading phases too), every call of a short one.
    let mut points: BTreeSet<u64> = BTreeSet::new();
    for (i, &call) in full.calls.iter().enumerate() {
        // A file written in chunks: its first and last chunk.
        let same = |j: usize| full.calls.get(j).is_some_and(|c| *c == call);
        if ptrace::changes_disk(call) && !(i > 0 && same(i - 1) && same(i + 1)) {
            points.extend([i as u64 + 1, i as u64 + 2]);
        }
    }
    points.retain(|&p| p <= total);
    let at_changes = points.len();
    if total <= case.points {
        points.extend(1..=total);
    } else {
        points.extend((0..case.points).map(|i| 1 + i * (total - 1) / (case.points - 1)));
    }
    for &n in &points {
        let nr = full.calls.get(n as usize - 1).map_or(-1, |c| c.0);
        let at = format!(
            "{}: killed at system call {n} of {total} (number {nr})",
            case.name
        );
        copy_root(&fx.root(case.from), &work);
        let t = ptrace::run(&fx.agent, &fx.args(&work, case.cmd), Some(n), false);
        if !t.killed {
            assert_eq!(t.code, Some(0), "{at}: it ended by itself, and failed");
        }
        check_killed(fx, case, &work, &spare, &at);
        // The next run finishes the job.
        let cur = link(&work, "current");
        let next: &[&str] = if case.done_once_switched && cur.as_deref() == Some(case.new) {
            &["boot-check"]
        } else {
            case.cmd
        };
        let (ok, text) = fx.agent(&work, next);
        assert!(ok, "{at}: the next run failed: {text}");
        check_finished(fx, case, &work, &at);
    }
    eprintln!(
        "crash harness: {}: {} kill points ({at_changes} around the {total} system calls' writes), all recovered",
        case.name,
        points.len()
    );
    points.len()
}

/// Right after a kill: the old tree or the new one, marks and status true, rollback safe.
fn check_killed(fx: &Fixture, case: &Case, root: &Path, spare: &Path, at: &str) {
    let cur = link(root, "current").unwrap_or_else(|| panic!("{at}: no current"));
    assert!(
        cur == case.old || cur == case.new,
        "{at}: current is {cur}, neither {} nor {}",
        case.old,
        case.new
    );
    fx.assert_image(&root.join("current"), &cur, at);
    for v in names(&root.join("state/complete")) {
        if v.contains("tmp") {
            continue;
        }
        fx.assert_image(&root.join("deployments").join(&v), &v, at);
    }
    assert_eq!(
        fx.status_current(root).as_deref(),
        Some(cur.as_str()),
        "{at}: status"
    );
    // Rollback, on a copy: refused, or onto a complete tree.
    copy_root(root, spare);
    let (ok, text) = fx.agent(spare, &["rollback"]);
    let after = link(spare, "current").unwrap_or_else(|| panic!("{at}: rollback lost current"));
    if ok {
        assert!(
            spare.join("state/complete").join(&after).is_file(),
            "{at}: rollback switched to {after}, which has no complete mark"
        );
        fx.assert_image(
            &spare.join("current"),
            &after,
            &format!("{at}, rolled back"),
        );
    } else {
        assert_eq!(after, cur, "{at}: a refused rollback moved current: {text}");
    }
}

/// After the next run: the new version running, the old one previous, nothing left over.
fn check_finished(fx: &Fixture, case: &Case, root: &Path, at: &str) {
    let at = format!("{at}, then run again");
    assert_eq!(link(root, "current").as_deref(), Some(case.new), "{at}");
    assert_eq!(link(root, "previous").as_deref(), Some(case.old), "{at}");
    fx.assert_image(&root.join("current"), case.new, &at);
    fx.assert_image(&root.join("previous"), case.old, &at);
    let kept: BTreeSet<String> = [case.old, case.new].map(String::from).into();
    assert_eq!(names(&root.join("deployments")), kept, "{at}: deployments");
    assert_eq!(names(&root.join("state/complete")), kept, "{at}: marks");
    let manifests: BTreeSet<String> = kept
        .iter()
        .flat_map(|v| [format!("{v}.manifest"), format!("{v}.sig")])
        .collect();
    assert_eq!(
        names(&root.join("state/manifests")),
        manifests,
        "{at}: manifests"
    );
    assert_eq!(
        names(&root.join("staging")),
        BTreeSet::new(),
        "{at}: staging"
    );
    let mut tmp = Vec::new();
    temporaries(root, &mut tmp);
    assert!(tmp.is_empty(), "{at}: temporary files left: {tmp:?}");
    assert_eq!(
        fx.status_current(root).as_deref(),
        Some(case.new),
        "{at}: status"
    );
}

#[test]
fn an_update_killed_at_any_system_call_recovers() {
    let fx = Fixture::new();
    let case = Case {
        name: "update",
        from: "r12",
        cmd: &["update"],
        old: "2",
        new: "3",
        done_once_switched: false,
        points: 60,
    };
    crash_case(&fx, &case);
    let staged = Case {
        name: "update --apply-staged",
        from: "r12s",
        cmd: &["update", "--apply-staged"],
        old: "2",
        new: "3",
        done_once_switched: true,
        points: 60,
    };
    crash_case(&fx, &staged);
}

#[test]
fn installs_of_a_pruned_and_of_the_previous_version_killed_at_any_system_call_recover() {
    let fx = Fixture::new();
    let pruned = Case {
        name: "install of a pruned version",
        from: "r123",
        cmd: &["install", "1"],
        old: "3",
        new: "1",
        done_once_switched: false,
        points: 60,
    };
    crash_case(&fx, &pruned);
    let previous = Case {
        name: "install of the previous version",
        from: "r123",
        cmd: &["install", "2"],
        old: "3",
        new: "2",
        done_once_switched: false,
        points: 60,
    };
    crash_case(&fx, &previous);
}

#[test]
fn rollback_and_a_boot_check_revert_killed_at_any_system_call_recover() {
    let fx = Fixture::new();
    let rollback = Case {
        name: "rollback",
        from: "r123",
        cmd: &["rollback"],
        old: "3",
        new: "2",
        done_once_switched: true,
        points: 60,
    };
    crash_case(&fx, &rollback);
    let boot = Case {
        name: "boot-check revert",
        from: "r123b",
        cmd: &["boot-check", "--boot-attempts", "1"],
        old: "3",
        new: "2",
        done_once_switched: false,
        points: 60,
    };
    crash_case(&fx, &boot);
}

/// The agent's writes recorded with strace and replayed on a model of a lost page cache
/// (`crash/order.rs`): every file and directory a switch or a completion mark depends on
/// is synced before it, and nothing is left unsynced at the end.
#[test]
fn every_switch_and_mark_comes_after_the_syncs_it_depends_on() {
    let strace = Path::new("/usr/bin/strace");
    if !strace.is_file() {
        eprintln!("skipped: no {}", strace.display());
        return;
    }
    let fx = Fixture::new();
    let runs: [(&str, &str, &[&str]); 4] = [
        ("update", "r12", &["update"]),
        ("install-pruned", "r123", &["install", "1"]),
        ("rollback", "r123", &["rollback"]),
        (
            "boot-check",
            "r123b",
            &["boot-check", "--boot-attempts", "1"],
        ),
    ];
    let mut total = 0;
    for (name, from, cmd) in runs {
        let work = fx.root(&format!("order-{name}"));
        copy_root(&fx.root(from), &work);
        let log = fx.root(&format!("order-{name}.strace"));
        let traced = "trace=%file,%desc,fsync,fdatasync,syncfs,sync_file_range,rename,renameat,renameat2,linkat,symlinkat,unlinkat,mkdirat";
        let out = Command::new(strace)
            .args(["-f", "-qq", "-y", "-s", "4096", "-e", traced, "-o"])
            .arg(&log)
            .arg(&fx.agent)
            .args(fx.args(&work, cmd))
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name} under strace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let checked = order::replay(&std::fs::read_to_string(&log).unwrap(), &work);
        assert!(
            checked.failures.is_empty(),
            "{name}: {}",
            checked.failures.join("\n")
        );
        eprintln!(
            "crash harness: fsync order: {name}: {} cut points checked, each synced before ({})",
            checked.cut_points,
            checked.points.join(", ")
        );
        total += checked.cut_points;
        if name == "update" {
            // The model has teeth: without the sync of the staged tree, the mark and the
            // switch come before what they depend on is durable.
            let log = std::fs::read_to_string(&log).unwrap();
            let unsynced: Vec<&str> = log.lines().filter(|l| !l.contains("syncfs(")).collect();
            let bad = order::replay(&unsynced.join("\n"), &work);
            assert!(!bad.failures.is_empty(), "the replay saw no missing sync");
        }
    }
    assert!(total > 0);
}
