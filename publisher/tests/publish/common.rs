//! What the publisher's tests share: the `deltaroot` binary run as a release engineer runs
//! it, the fixture trees and ELF pairs, and a plain static web server.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_deltaroot");

/// The spine fixture's two trees (`v1`, `v2`), made by `fixtures/spine-tree/make.py` once
/// per version of the fixture (see [`built_once`]).
pub(crate) fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        assert!(
            rustix::process::geteuid().is_root(),
            "these tests need root for the fixture"
        );
        built_once("spine-tree", "make.py", &[], |script, out| {
            let mut c = Command::new("python3");
            c.arg(script).arg("--force").arg(out).stdout(Stdio::null());
            c
        })
    })
}

/// Real ELF pairs built by `fixtures/elf-pairs/make.sh` once per version of the fixture and
/// set of compilers and tools installed (`make.sh` skips what it cannot build).
pub(crate) fn elf_pairs() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tools = ["gcc", "aarch64-linux-gnu-gcc", "pahole", "objcopy"];
        let found: Vec<&str> = tools.into_iter().filter(|t| on_path(t)).collect();
        built_once("elf-pairs", "make.sh", &found, |script, out| {
            let mut c = Command::new("bash");
            c.arg(script).arg(out);
            c
        })
    })
}

/// Whether `tool` is an executable file in a folder of `PATH`.
fn on_path(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| {
            std::fs::metadata(d.join(tool))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// `fixtures/<name>`'s output, made by the command `make` gives for the script and an
/// output folder, and kept in the build's target folder (`CARGO_TARGET_TMPDIR`), not in
/// /tmp: named by a hash of the script, the files of `src/` and `extra`, so later runs use
/// the same copy until one of them changes. Made in a `TempDir` beside it (also the
/// script's `TMPDIR`, so its compilers' scratch files go there too) and renamed into place:
/// a run cut short or a concurrent run never sees half a fixture, and a run leaves nothing
/// behind.
fn built_once(
    name: &str,
    script: &str,
    extra: &[&str],
    make: impl FnOnce(&Path, &Path) -> Command,
) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fixtures")
        .join(name);
    let script = fixtures.join(script);
    let mut hasher = blake3::Hasher::new();
    let mut src: Vec<PathBuf> = std::fs::read_dir(fixtures.join("src"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    src.sort();
    for f in std::iter::once(&script).chain(&src) {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        hasher.update(f.file_name().unwrap().as_encoded_bytes());
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    for e in extra {
        hasher.update(e.as_bytes()).update(b"\0");
    }
    let version = hasher.finalize().to_hex();
    let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = parent.join(format!("{name}-{}", &version[..16]));
    if dir.is_dir() {
        return dir;
    }
    let tmp = tempfile::tempdir_in(parent).unwrap();
    let made = tmp.path().join("out");
    let st = make(&script, &made)
        .env("TMPDIR", tmp.path())
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(st.success(), "{} failed", script.display());
    // Another run may have renamed its copy first: then that one is used.
    if let Err(e) = std::fs::rename(&made, &dir) {
        assert!(dir.is_dir(), "{} -> {}: {e}", made.display(), dir.display());
    }
    dir
}

/// `publish OLD NEW --product demo --from-version FROM --version VERSION --key KEY` and then
/// `rest`: the arguments of a second release of the tests' product.
pub(crate) fn publish_args<'a>(
    [old, new]: [&'a str; 2],
    [from, version]: [&'a str; 2],
    key: &'a str,
    rest: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "publish",
        old,
        new,
        "--product",
        "demo",
        "--from-version",
        from,
        "--version",
        version,
        "--key",
        key,
    ];
    args.extend_from_slice(rest);
    args
}

pub(crate) fn run(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "deltaroot {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `deltaroot` expecting it to fail; returns its stderr.
pub(crate) fn fails(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "deltaroot {args:?} succeeded: {err}");
    err
}

/// A plain static file server (Python's http.server) over the release folder.
pub(crate) struct Static(std::process::Child, pub(crate) String);

impl Static {
    pub(crate) fn start(dir: &Path) -> Static {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
                "--directory",
            ])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Static(child, url)
    }
}

impl Drop for Static {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
