//! Shared paths on a device: the folder a release declares shared lives in `shared/` under
//! the device root, is linked into every deployment, and no update, rollback or pruning
//! touches what the device wrote there; a manifest that places files in it is refused.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::folder::*;
use deltaroot_format::{Entry, EntryPath, Error, Manifest, VerifiedManifest};

/// `dir(path)` with another mode.
fn dir_mode(path: &str, mode: u32) -> Entry {
    match dir(path) {
        Entry::Node {
            path,
            kind,
            mut meta,
        } => {
            meta.mode = mode;
            Entry::Node { path, kind, meta }
        }
        e => e,
    }
}

/// A release of the tool whose setting file holds `conf`, with `var/lib` (mode 0750) and
/// `var/log` in its tree.
fn entries(conf: &[u8]) -> Vec<Entry> {
    vec![
        dir("bin"),
        file("bin/tool", &tools().0, 0o755),
        file("etc.conf", conf, 0o644),
        dir("var"),
        dir_mode("var/lib", 0o750),
        dir("var/log"),
    ]
}

/// What the device wrote, read through the running version.
fn data(root: &Path) -> (Vec<u8>, u64, i64) {
    data_at(&root.join("current/var/lib"))
}

/// What the device wrote in the shared folder `shared`: its bytes, inode and modification
/// time.
fn data_at(shared: &Path) -> (Vec<u8>, u64, i64) {
    let p = shared.join("app/db");
    let m = std::fs::metadata(&p).unwrap();
    (std::fs::read(&p).unwrap(), m.ino(), m.mtime())
}

/// A release folder in `tmp` whose release 1 shares `var/lib`, an agent on `tmp/root` and
/// release 1's manifest.
fn sharing_var_lib(tmp: &Path) -> (Release, deltaroot_client::agent::Agent, Manifest) {
    let (mut f, agent, _) = folder_and_agent(tmp);
    f.shared = vec![EntryPath::new("var/lib").unwrap()];
    let tool = tools().0;
    let v1 = f.publish(
        "1",
        100,
        entries(b"setting = 1\n"),
        &[&tool, b"setting = 1\n"],
        None,
        &[],
    );
    (f, agent, v1)
}

#[test]
fn a_shared_folder_survives_updates_rollbacks_and_pruning_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, _, v1) = sharing_var_lib(tmp.path());
    let root = tmp.path().join("root");
    assert_eq!(v1.shared.len(), 1);
    // Keeping no more than current and previous: 2 is pruned by the last update.
    let agent = folder_agent(tmp.path(), &f, |s| s.keep_versions = Some(0));
    agent.install("1").unwrap();

    // The shared folder was made with the mode the release declares; each deployment links it.
    let shared = root.join("shared/var/lib");
    let m = std::fs::symlink_metadata(&shared).unwrap();
    assert!(m.is_dir());
    assert_eq!(m.permissions().mode() & 0o7777, 0o750);
    let link = |v: &str| std::fs::read_link(root.join(format!("deployments/{v}/var/lib"))).unwrap();
    assert_eq!(link("1"), Path::new("../../../shared/var/lib"));
    assert!(root.join("current/var/log").is_dir());

    // The device writes its data through the running version, as any program would.
    std::fs::create_dir_all(root.join("current/var/lib/app")).unwrap();
    std::fs::write(root.join("current/var/lib/app/db"), b"the device's data").unwrap();
    let written = data(&root);
    assert_eq!(written.0, b"the device's data");
    assert_eq!(
        std::fs::read(shared.join("app/db")).unwrap(),
        b"the device's data"
    );

    let v2 = f.publish(
        "2",
        200,
        entries(b"setting = 2\n"),
        &[b"setting = 2\n"],
        Some(&v1),
        &[],
    );
    agent.update().unwrap();
    assert_eq!(agent.device.current().unwrap().unwrap(), "2");
    assert_eq!(link("2"), Path::new("../../../shared/var/lib"));
    assert_eq!(data(&root), written);

    // Without its mark (as an older agent left it), 1 is verified whole, its link included,
    // before it is rolled back to.
    std::fs::remove_file(root.join("state/complete/1")).unwrap();
    assert_eq!(agent.rollback().unwrap(), "1");
    assert!(root.join("state/complete/1").is_file());
    assert_eq!(data(&root), written);

    // 2 was rolled back from and is not offered again: 3 is the next update.
    f.publish(
        "3",
        300,
        entries(b"setting = 3\n"),
        &[b"setting = 3\n"],
        Some(&v2),
        &[],
    );
    agent.update().unwrap();
    assert_eq!(agent.device.current().unwrap().unwrap(), "3");
    assert_eq!(agent.device.previous().unwrap().unwrap(), "1");
    assert!(!root.join("deployments/2").exists(), "2 is pruned");
    assert_eq!(data(&root), written);
    let mut names: Vec<_> = std::fs::read_dir(&shared)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["app"]);
    assert_eq!(
        std::fs::symlink_metadata(&shared)
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o750
    );
}

#[test]
fn a_manifest_placing_a_file_in_a_shared_path_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, agent, v1) = sharing_var_lib(tmp.path());
    let root = tmp.path().join("root");
    agent.install("1").unwrap();
    std::fs::create_dir_all(root.join("current/var/lib/app")).unwrap();
    std::fs::write(root.join("current/var/lib/app/db"), b"the device's data").unwrap();
    let written = data(&root);

    // Signed with the release key, yet it would overwrite the device's data.
    let mut hostile = entries(b"setting = 1\n");
    hostile.insert(5, dir("var/lib/app"));
    hostile.insert(6, file("var/lib/app/db", b"replaced", 0o644));
    let m = Manifest {
        version: "2".into(),
        created: 200,
        entries: hostile.clone(),
        ..v1.clone()
    };
    let signed = VerifiedManifest::sign(m, &f.key);
    let err = VerifiedManifest::verify(
        signed.bytes().to_vec(),
        signed.signature().to_vec(),
        &[f.key.public()],
    )
    .unwrap_err();
    assert!(matches!(err, Error::ManifestEntry { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("var/lib/app") && text.contains("shared path var/lib"),
        "{text}"
    );

    // Offered as an update from the release folder: refused, nothing changes.
    f.publish("2", 200, hostile, &[b"replaced"], Some(&v1), &[]);
    let err = agent.update().unwrap_err().to_string();
    assert!(err.contains("shared path var/lib"), "{err}");
    assert_eq!(agent.device.current().unwrap().unwrap(), "1");
    assert_eq!(data(&root), written);

    // The shared path itself may not be anything but a directory.
    let mut as_link = entries(b"setting = 1\n");
    as_link[4] = symlink("var/lib", "/elsewhere");
    let m = Manifest {
        version: "3".into(),
        entries: as_link,
        ..v1
    };
    let signed = VerifiedManifest::sign(m, &f.key);
    let err = VerifiedManifest::verify(
        signed.bytes().to_vec(),
        signed.signature().to_vec(),
        &[f.key.public()],
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("entry var/lib:") && err.contains("must be a directory"),
        "{err}"
    );
}

#[test]
fn a_shared_folder_the_device_has_already_is_left_as_it_is() {
    let tmp = tempfile::tempdir().unwrap();
    let (_f, agent, _) = sharing_var_lib(tmp.path());
    let root = tmp.path().join("root");
    // Made by hand before the first install (another mode than the release's 0750), with
    // data in it.
    let shared = root.join("shared/var/lib");
    std::fs::create_dir_all(shared.join("app")).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::write(shared.join("app/db"), b"the device's data").unwrap();
    let before = data_at(&shared);
    agent.install("1").unwrap();
    assert_eq!(data(&root), before);
    let m = std::fs::symlink_metadata(&shared).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o700);
}
