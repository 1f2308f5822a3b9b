//! What `publish` reads of its input trees: `--exclude` (a socket or fifo left out instead
//! of refusing the publish) and a tar's `--strip-components`, with the warning for a tar
//! whose every path sits under one folder.

use std::path::Path;
use std::process::Command;

use deltaroot_client::agent::{Agent, Settings};

use crate::common::{run, BIN};

/// `deltaroot publish NEW --out OUT ...` as version 1 of `demo`: (success, stderr).
fn publish(new: &Path, key: &Path, out: &Path, extra: &[&str]) -> (bool, String) {
    let o = Command::new(BIN)
        .arg("publish")
        .arg(new)
        .args(["--product", "demo", "--version", "1", "--key"])
        .arg(key)
        .arg("--out")
        .arg(out)
        .args(["--quiet", "--level", "3"])
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Installs version 1 from the release folder `out` into `root`; the deployed tree.
fn install(out: &Path, root: &Path, public: &Path) -> std::path::PathBuf {
    let agent = Agent::new(Settings {
        root: Some(root.to_owned()),
        folder: Some(out.to_owned()),
        product: Some("demo".into()),
        trust: vec![public.to_owned()],
        ..Settings::default()
    })
    .unwrap();
    agent.install("1").unwrap();
    root.join("current")
}

fn keygen(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = dir.join("rel");
    run(&["keygen", "--out", key.to_str().unwrap()]);
    (key.with_extension("key"), key.with_extension("pub"))
}

#[test]
fn exclude_leaves_out_sockets_fifos_and_whole_folders() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (key, public) = keygen(t);
    let tree = t.join("tree");
    for d in ["etc", "run", "var/cache/apt", "usr/lib/py/__pycache__"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::write(tree.join("etc/hostname"), "demo\n").unwrap();
    std::fs::write(tree.join("var/cache/apt/pkgcache.bin"), "cache").unwrap();
    std::fs::write(tree.join("usr/lib/py/m.py"), "x = 1\n").unwrap();
    std::fs::write(tree.join("usr/lib/py/__pycache__/m.pyc"), "pyc").unwrap();
    let _socket = std::os::unix::net::UnixListener::bind(tree.join("run/app.sock")).unwrap();
    let st = Command::new("mkfifo")
        .arg(tree.join("run/ctl.fifo"))
        .status()
        .unwrap();
    assert!(st.success());

    // The socket refuses the publish, naming itself and the way out.
    let (ok, err) = publish(&tree, &key, &t.join("refused"), &[]);
    assert!(!ok);
    assert!(
        err.contains("run/app.sock") && err.contains("--exclude"),
        "{err}"
    );

    let out = t.join("out");
    let (ok, err) = publish(
        &tree,
        &key,
        &out,
        &[
            "--exclude",
            "run/*.sock",
            "--exclude",
            "run/ctl.fifo",
            "--exclude",
            "var/cache",
            "--exclude",
            "**/__pycache__",
        ],
    );
    assert!(ok, "{err}");
    let current = install(&out, &t.join("device"), &public);
    assert_eq!(
        std::fs::read_to_string(current.join("etc/hostname")).unwrap(),
        "demo\n"
    );
    assert!(current.join("usr/lib/py/m.py").is_file());
    assert!(current.join("run").is_dir() && current.join("var").is_dir());
    for gone in [
        "run/app.sock",
        "run/ctl.fifo",
        "var/cache",
        "usr/lib/py/__pycache__",
    ] {
        assert!(
            std::fs::symlink_metadata(current.join(gone)).is_err(),
            "{gone} was published"
        );
    }
}

#[test]
fn strip_components_takes_a_tar_out_of_its_folder_and_the_folder_is_warned_of() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (key, public) = keygen(t);
    let src = t.join("src/rootfs");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::create_dir_all(src.join("usr/bin")).unwrap();
    std::fs::write(src.join("etc/hostname"), "demo\n").unwrap();
    std::fs::write(src.join("usr/bin/tool"), "#!/bin/sh\n").unwrap();
    let tar = t.join("rootfs.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(t.join("src"))
        .arg("-cf")
        .arg(&tar)
        .arg("rootfs")
        .status()
        .unwrap();
    assert!(st.success());

    // Without --strip-components: published as is, with a warning naming the folder.
    let (ok, err) = publish(&tar, &key, &t.join("as-is"), &[]);
    assert!(ok, "{err}");
    assert!(
        err.contains("warning") && err.contains("rootfs/") && err.contains("--strip-components"),
        "{err}"
    );

    let out = t.join("out");
    let (ok, err) = publish(&tar, &key, &out, &["--strip-components", "1"]);
    assert!(ok, "{err}");
    assert!(!err.contains("warning"), "{err}");
    let current = install(&out, &t.join("device"), &public);
    assert_eq!(
        std::fs::read_to_string(current.join("etc/hostname")).unwrap(),
        "demo\n"
    );
    assert!(current.join("usr/bin/tool").is_file());
    assert!(!current.join("rootfs").exists());

    // A tar of the tree's own contents draws no warning.
    let flat = t.join("flat.tar");
    let st = Command::new("tar")
        .arg("-C")
        .arg(&src)
        .arg("-cf")
        .arg(&flat)
        .args(["etc", "usr"])
        .status()
        .unwrap();
    assert!(st.success());
    let (ok, err) = publish(&flat, &key, &t.join("flat"), &[]);
    assert!(ok && !err.contains("warning"), "{err}");
}
