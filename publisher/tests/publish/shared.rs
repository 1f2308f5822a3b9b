//! `--shared PATH`: what NEW holds in a shared path is left out of the release (the
//! device's data), the path itself stays a directory a device links its shared folder to,
//! and the next release is read from an OLD that still holds those files.

use std::path::Path;
use std::process::Command;

use deltaroot_client::agent::{Agent, Settings};

use crate::common::{run, BIN};

/// `deltaroot publish [OLD] NEW --out OUT ...` as `version` of `demo`: (success, stdout,
/// stderr).
fn publish(
    trees: &[&Path],
    version: &str,
    key: &Path,
    out: &Path,
    extra: &[&str],
) -> (bool, String, String) {
    let o = Command::new(BIN)
        .arg("publish")
        .args(trees)
        .args(["--product", "demo", "--version", version, "--key"])
        .arg(key)
        .arg("--out")
        .arg(out)
        .args(["--quiet", "--level", "3"])
        .args(extra)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn shared_paths_are_left_out_of_the_release_and_linked_on_the_device() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let key = t.join("rel");
    run(&["keygen", "--out", key.to_str().unwrap()]);
    let (key, public) = (key.with_extension("key"), key.with_extension("pub"));
    let tree = t.join("v1");
    for d in ["etc", "usr/bin", "var/lib/dpkg", "var/log", "home/u"] {
        std::fs::create_dir_all(tree.join(d)).unwrap();
    }
    std::fs::write(tree.join("etc/hostname"), "demo\n").unwrap();
    std::fs::write(tree.join("var/lib/dpkg/status"), "the build's package list").unwrap();
    std::fs::write(tree.join("home/u/.profile"), "PS1=$\n").unwrap();
    // A file of the image hardlinked to one in a shared path keeps its content.
    std::fs::hard_link(tree.join("home/u/.profile"), tree.join("usr/bin/profile")).unwrap();

    let out = t.join("out");
    // Paths that cannot be shared are refused before anything is written.
    for (bad, want) in [
        (&["var", "var/lib"][..], "within the shared path var"),
        (&["../etc"], "`..`"),
        (&["srv"], "no directory srv"),
        (&["etc/hostname"], "not a directory"),
    ] {
        let args: Vec<&str> = bad.iter().flat_map(|p| ["--shared", *p]).collect();
        let (ok, _, err) = publish(&[&tree], "1", &key, &out, &args);
        assert!(
            !ok && err.contains("--shared") && err.contains(want),
            "{bad:?}: {err}"
        );
    }

    let (ok, summary, err) = publish(
        &[&tree],
        "1",
        &key,
        &out,
        &["--shared", "/var/lib/", "--shared", "home"],
    );
    assert!(ok, "{err}");
    // var/lib/dpkg, its status, home/u and its .profile.
    assert!(
        summary.contains("shared: home, var/lib (4 entries of NEW in them left out"),
        "{summary}"
    );

    let root = t.join("device");
    let agent = Agent::new(Settings {
        root: Some(root.clone()),
        folder: Some(out.clone()),
        product: Some("demo".into()),
        trust: vec![public],
        ..Settings::default()
    })
    .unwrap();
    agent.install("1").unwrap();
    let cur = root.join("current");
    assert_eq!(
        std::fs::read_to_string(cur.join("etc/hostname")).unwrap(),
        "demo\n"
    );
    assert_eq!(
        std::fs::read_to_string(cur.join("usr/bin/profile")).unwrap(),
        "PS1=$\n"
    );
    assert!(cur.join("var/log").is_dir());
    for p in ["var/lib", "home"] {
        assert!(
            std::fs::symlink_metadata(cur.join(p)).unwrap().is_symlink(),
            "{p}"
        );
        assert!(root.join("shared").join(p).is_dir(), "{p}");
    }
    assert!(std::fs::read_dir(root.join("shared/var/lib"))
        .unwrap()
        .next()
        .is_none());
    assert!(!cur.join("var/lib/dpkg").exists() && !cur.join("home/u").exists());

    // The next release from that tree (its files in var/lib still there), sharing var/lib
    // only: OLD is read as release 1 is, and the change is noted.
    let (ok, summary, err) = publish(
        &[&tree, &tree],
        "2",
        &key,
        &out,
        &["--from-version", "1", "--shared", "var/lib"],
    );
    assert!(ok, "{err}");
    assert!(
        summary.contains("2 entries of NEW in them left out"),
        "{summary}"
    );
    assert!(
        summary.contains("note: home is no longer shared"),
        "{summary}"
    );
    agent.update().unwrap();
    assert_eq!(
        std::fs::read_to_string(cur.join("home/u/.profile")).unwrap(),
        "PS1=$\n"
    );
    assert!(std::fs::symlink_metadata(cur.join("var/lib"))
        .unwrap()
        .is_symlink());
    assert!(
        root.join("shared/home").is_dir(),
        "the device keeps its folder"
    );
}
