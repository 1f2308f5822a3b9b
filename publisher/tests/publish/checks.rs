//! What `deltaroot publish` checks before encoding and writes nothing when refused: a
//! version already taken, an OLD tree that is not the release it names, a release another
//! key signed, in a release folder and against a server.

use std::path::{Path, PathBuf};

use deltaroot_format::tree;
use deltaroot_publisher::input::InputTree;

use crate::common::{fails, fixture, publish_args, run, Static};

/// Every file under `dir` with its size: what a refused publish must leave as it was.
fn listing(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            } else {
                out.push((e.path(), e.metadata().unwrap().len()));
            }
        }
    }
    out.sort();
    out
}

/// A folder holding release 1 of `demo` (fixture v1), and the key that signed it.
fn release_folder(tmp: &Path) -> (PathBuf, String) {
    let key = tmp.join("rel");
    run(&["keygen", "--out", key.to_str().unwrap()]);
    let out = tmp.join("out");
    let k = key.with_extension("key").to_str().unwrap().to_string();
    let v1 = fixture().join("v1");
    let (v1, o) = (v1.to_str().unwrap(), out.to_str().unwrap());
    run(&[
        "publish",
        v1,
        "--product",
        "demo",
        "--version",
        "1",
        "--key",
        &k,
        "--out",
        o,
        "--quiet",
        "--level",
        "3",
    ]);
    (out, k)
}

/// How many paths differ between the fixture's v1 and v2 trees.
fn v1_v2_differences() -> usize {
    let v1 = InputTree::open(&fixture().join("v1"), &|_| {}).unwrap();
    let v2 = InputTree::open(&fixture().join("v2"), &|_| {}).unwrap();
    tree::differences(&v1.entries, &v2.entries).len()
}

#[test]
fn publish_refuses_a_taken_version_and_a_wrong_old_tree_before_writing_anything() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, k) = release_folder(tmp.path());
    let o = out.to_str().unwrap();
    let (v1, v2) = (fixture().join("v1"), fixture().join("v2"));
    let (v1, v2) = (v1.to_str().unwrap(), v2.to_str().unwrap());
    let before = listing(&out);
    let publish = |old: &str, from: &str, version: &str, key: &str| {
        fails(&publish_args(
            [old, v2],
            [from, version],
            key,
            &["--out", o, "--quiet", "--level", "3"],
        ))
    };

    let err = publish(v1, "1", "1", &k);
    assert!(
        err.contains("product demo already has a release 1"),
        "{err}"
    );
    assert_eq!(listing(&out), before, "a taken version writes nothing");

    // v2 given as OLD: refused naming how many paths differ and the first.
    let err = publish(v2, "1", "2", &k);
    let n = v1_v2_differences();
    assert!(
        err.contains(&format!(
            "is not release 1 of demo: {n} paths differ, first: "
        )),
        "{err}"
    );
    assert_eq!(listing(&out), before, "a wrong OLD writes nothing");

    let err = publish(v1, "7", "2", &k);
    assert!(err.contains("product demo has no release 7"), "{err}");
    assert_eq!(listing(&out), before);

    // Release 1 as another key's publisher sees it: not the release this key made.
    let other = tmp.path().join("other");
    run(&["keygen", "--out", other.to_str().unwrap()]);
    let err = publish(v1, "1", "2", other.with_extension("key").to_str().unwrap());
    assert!(
        err.contains("release 1 of demo is not one this key signed"),
        "{err}"
    );
    assert_eq!(listing(&out), before);

    run(&publish_args(
        [v1, v2],
        ["1", "2"],
        &k,
        &["--out", o, "--quiet", "--level", "3"],
    ));
}

/// The same checks against a server: here a static web server over a release folder, which
/// answers the manifest routes (and nothing the encoding would need).
#[test]
fn publish_asks_the_server_for_the_versions_before_encoding() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, k) = release_folder(tmp.path());
    let web = Static::start(&out);
    let (v1, v2) = (fixture().join("v1"), fixture().join("v2"));
    let (v1, v2) = (v1.to_str().unwrap(), v2.to_str().unwrap());
    let publish = |old: &str, from: &str, version: &str| {
        fails(&publish_args(
            [old, v2],
            [from, version],
            &k,
            &["--server", &web.1, "--token", "t", "--quiet"],
        ))
    };
    let err = publish(v1, "1", "1");
    let url = format!("{}/v1/products/demo/releases/1/manifest", web.1);
    assert!(
        err.contains(&format!("{url}: product demo already has a release 1")),
        "{err}"
    );
    let err = publish(v1, "9", "2");
    assert!(err.contains("product demo has no release 9"), "{err}");
    let err = publish(v2, "1", "2");
    assert!(err.contains("is not release 1 of demo: "), "{err}");
}
