//! The device library on its own: hostile manifests, a device root with nothing installed,
//! and installs and updates from a release folder written by hand (no server, no
//! publisher).

use deltaroot_client::agent::{Agent, Settings};
use deltaroot_client::device::Device;
use deltaroot_client::transport::{Folder, Transport};
use deltaroot_format::Error;
use deltaroot_format::{
    object_path, Entry, EntryPath, Hash, Kind, Manifest, Meta, SecretKey, VerifiedManifest,
};

fn manifest(entries: Vec<Entry>) -> Manifest {
    Manifest {
        product: "demo".into(),
        version: "1".into(),
        created: 1,
        shared: vec![],
        entries,
    }
}

#[test]
#[cfg(feature = "http")]
fn nothing_installed_means_clear_answers() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed([5; 32]);
    let pubp = dir.path().join("k.pub");
    std::fs::write(&pubp, key.public().to_text()).unwrap();
    let agent = Agent::new(Settings {
        root: Some(dir.path().join("root")),
        // Nothing listens on port 9: the network error names the URL.
        server: Some("http://127.0.0.1:9".into()),
        product: Some("demo".into()),
        trust: vec![pubp],
        ..Settings::default()
    })
    .unwrap();
    assert_eq!(agent.status().unwrap().current, None);
    let err = agent.rollback().unwrap_err().to_string();
    assert!(err.contains("nothing is installed"), "{err}");
    let err = agent.check().unwrap_err().to_string();
    assert!(
        err.contains("http://127.0.0.1:9/v1/products/demo/channels/stable/check"),
        "{err}"
    );
    let err = agent.install("../etc").unwrap_err().to_string();
    assert!(err.contains("not a valid name"), "{err}");
}

#[test]
#[cfg(not(feature = "http"))]
fn without_http_a_server_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let err = Agent::new(Settings {
        root: Some(dir.path().join("root")),
        server: Some("http://127.0.0.1:9".into()),
        product: Some("demo".into()),
        ..Settings::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("without the http feature"), "{err}");
}

#[test]
fn well_signed_but_hostile_manifests_are_refused_by_name() {
    let key = SecretKey::from_seed([6; 32]);
    let trusted = [key.public()];
    let p = |s: &[u8]| EntryPath::new(s).unwrap();
    let file = |path: &[u8]| Entry::Node {
        path: p(path),
        kind: Kind::File {
            size: 1,
            hash: Hash::of(b"x"),
        },
        meta: Meta::default(),
    };
    // An entry whose parent is a file, not a directory: it would write through it.
    let orphan = manifest(vec![file(b"etc"), file(b"etc/passwd")]);
    // A hardlink to a path that comes later (or does not exist).
    let dangling = manifest(vec![Entry::Hardlink {
        path: p(b"a"),
        target: p(b"b"),
    }]);
    for (m, want) in [(orphan, "etc/passwd"), (dangling, "hardlink target b")] {
        let signed = VerifiedManifest::sign(m, &key);
        let err = VerifiedManifest::verify(
            signed.bytes().to_vec(),
            signed.signature().to_vec(),
            &trusted,
        )
        .unwrap_err();
        assert!(matches!(err, Error::ManifestEntry { .. }), "{err}");
        assert!(err.to_string().contains(want), "{err}");
    }
    // A path that climbs out, smuggled past the encoder by editing the bytes, then signed.
    let mut bytes = manifest(vec![file(b"aa")]).encode();
    let at = bytes.windows(2).position(|w| w == b"aa").unwrap();
    bytes[at..at + 2].copy_from_slice(b"..");
    let sig = key.sign(&bytes).to_vec();
    let err = VerifiedManifest::verify(bytes, sig, &trusted)
        .unwrap_err()
        .to_string();
    assert!(err.contains(".."), "{err}");
    // Garbage, well signed.
    let junk = vec![0xffu8; 4096];
    let sig = key.sign(&junk).to_vec();
    assert!(VerifiedManifest::verify(junk, sig, &trusted).is_err());
}

#[path = "common/folder.rs"]
mod folder;

use folder::{folder_and_agent, noise, tools, walk};

#[test]
fn a_device_installs_and_updates_from_a_release_folder() {
    use deltaroot_client::agent::UpdateOutcome;
    use folder::*;
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (f, agent, v1) = folder_and_agent(tmp.path());
    let root = tmp.path().join("root");
    let (one, two) = tools();

    let offer = agent.check().unwrap();
    assert_eq!(offer.latest.as_deref(), Some("1"));
    assert_eq!(offer.update.as_ref().unwrap().version, "1");
    let UpdateOutcome::Updated(r) = agent.update().unwrap() else {
        panic!("not updated")
    };
    assert_eq!((r.version.as_str(), r.from.as_deref()), ("1", None));
    assert_eq!((r.objects, r.deltas, r.written), (2, 0, 2));
    assert_eq!(r.downloaded_bytes, r.planned_bytes);
    let cur = root.join("current");
    assert_eq!(std::fs::read(cur.join("bin/tool")).unwrap(), one);
    let mode = |p: &str| std::fs::metadata(cur.join(p)).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode("bin/tool"), 0o4755);
    assert_eq!(mode("etc.conf"), 0o644);
    assert_eq!(
        std::fs::read_link(cur.join("link")).unwrap(),
        std::path::Path::new("bin/tool")
    );
    assert!(root.join("state/manifests/1.manifest").is_file());

    // Version 2: the tool changes (a delta), the setting stays (hardlinked), a file is new.
    f.publish(
        "2",
        200,
        vec![
            dir("bin"),
            file("bin/tool", &two, 0o4755),
            file("etc.conf", b"setting = 1\n", 0o644),
            symlink("link", "bin/tool"),
            file("new", b"a new file", 0o600),
        ],
        &[&two, b"a new file"],
        Some(&v1),
        &[(&one, &two)],
    );
    let offer = agent.check().unwrap();
    let planned = offer.update.as_ref().unwrap().download_bytes;
    let UpdateOutcome::Updated(r) = agent.update().unwrap() else {
        panic!("not updated")
    };
    assert_eq!((r.version.as_str(), r.from.as_deref()), ("2", Some("1")));
    assert_eq!((r.deltas, r.objects, r.linked, r.written), (1, 1, 1, 2));
    assert_eq!((r.planned_bytes, r.downloaded_bytes), (planned, planned));
    assert_eq!(std::fs::read(cur.join("bin/tool")).unwrap(), two);
    assert!(planned < 2000, "{planned}");
    assert_eq!(std::fs::read(cur.join("new")).unwrap(), b"a new file");
    assert_eq!(mode("bin/tool"), 0o4755);
    assert_eq!(mode("new"), 0o600);
    assert_eq!(agent.device.current().unwrap().unwrap(), "2");
    assert_eq!(agent.device.previous().unwrap().unwrap(), "1");
    assert!(!root.join("staging/tree").exists());
    assert!(matches!(
        agent.update().unwrap(),
        UpdateOutcome::UpToDate { version: Some(v) } if v == "2"
    ));
    assert_eq!(agent.rollback().unwrap(), "1");
    assert_eq!(
        agent.status().unwrap().last.last_result.as_deref(),
        Some("rolled-back")
    );

    // The device library alone, no agent: version 2 straight onto an empty root.
    let trusted = [f.key.public()];
    let transport = Folder::open(&f.root).unwrap();
    let (bytes, sig) = transport
        .manifest(&"demo".parse().unwrap(), &"2".parse().unwrap())
        .unwrap();
    let m = VerifiedManifest::verify(bytes, sig, &trusted).unwrap();
    let device = Device::open(&tmp.path().join("other")).unwrap();
    let r = device.deploy(&m, &transport, &trusted).unwrap();
    assert_eq!((r.objects, r.deltas), (3, 0));
    assert_eq!(
        std::fs::read(device.deployment_path("2").join("bin/tool")).unwrap(),
        two
    );
}

#[test]
fn a_failed_update_reports_its_own_error_even_when_its_status_cannot_be_written() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, agent, _) = folder_and_agent(tmp.path());
    // The object is gone from the folder: the update fails for that reason...
    let obj = f.root.join(object_path(&Hash::of(&tools().0)));
    std::fs::remove_file(&obj).unwrap();
    // ...and the status cannot be recorded (a directory stands at its name).
    let status = tmp.path().join("root/state/status.json");
    std::fs::create_dir_all(status.join("x")).unwrap();
    let err = agent.install("1").unwrap_err().to_string();
    assert!(err.contains(&obj.display().to_string()), "{err}");
    assert!(!err.contains("status.json"), "{err}");
}

#[test]
fn a_full_disk_while_staging_is_the_error_reported() {
    // A 1 MiB tmpfs as the device root needs root (or a user namespace) to mount.
    let tmp = tempfile::tempdir().unwrap();
    let mnt = tmp.path().join("root");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&mnt)
        .output();
    match mounted {
        Ok(o) if o.status.success() => {}
        other => {
            eprintln!("skipped: cannot mount a tmpfs here ({other:?})");
            return;
        }
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);

    let (f, agent, _) = folder_and_agent(tmp.path());
    // 3 MiB that do not compress: the download alone fills the disk.
    let big = noise(b"big", 3 << 20);
    let v1 = deltaroot_format::Manifest {
        product: "demo".into(),
        version: "1".into(),
        created: 1,
        shared: vec![],
        entries: vec![],
    };
    f.publish(
        "2",
        200,
        vec![folder::file("big", &big, 0o644)],
        &[&big],
        Some(&v1),
        &[],
    );
    // Refused before anything is staged, with what it needs and what there is.
    let err = agent.install("2").unwrap_err().to_string();
    assert!(err.contains("needs") && err.contains("available"), "{err}");
    assert!(err.contains(&mnt.display().to_string()), "{err}");
    assert!(!err.contains("status.json"), "{err}");
}

/// Version 1 installed, then version 2 over it: `current` is 2, `previous` is 1.
fn one_then_two(tmp: &std::path::Path) -> (folder::Release, Agent, std::path::PathBuf) {
    use folder::*;
    let (f, agent, v1) = folder_and_agent(tmp);
    agent.install("1").unwrap();
    publish_two(&f, &v1, b"setting = 2\n");
    agent.install("2").unwrap();
    assert_eq!(agent.device.current().unwrap().unwrap(), "2");
    assert_eq!(agent.device.previous().unwrap().unwrap(), "1");
    (f, agent, tmp.join("root"))
}

#[test]
fn rollback_refuses_a_half_deleted_previous_deployment_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (_f, agent, root) = one_then_two(tmp.path());
    // What a kill in the middle of removing deployments/1 leaves: the folder, part of its
    // files, and no mark of a complete deployment.
    std::fs::remove_file(root.join("deployments/1/bin/tool")).unwrap();
    let _ = std::fs::remove_file(root.join("state/complete/1"));
    let err = agent.rollback().unwrap_err().to_string();
    assert!(err.contains("1") && err.contains("not complete"), "{err}");
    assert_eq!(agent.device.current().unwrap().unwrap(), "2");
    assert_eq!(agent.device.previous().unwrap().unwrap(), "1");
    assert_ne!(
        agent.status().unwrap().last.last_result.as_deref(),
        Some("rolled-back")
    );
}

#[test]
fn a_complete_previous_deployment_is_marked_and_rolled_back_to() {
    let tmp = tempfile::tempdir().unwrap();
    let (_f, agent, root) = one_then_two(tmp.path());
    assert!(root.join("state/complete/1").is_file());
    assert!(root.join("state/complete/2").is_file());
    assert_eq!(agent.rollback().unwrap(), "1");
    assert_eq!(
        std::fs::read(root.join("current/bin/tool")).unwrap(),
        tools().0
    );
}

/// A 1 MiB tmpfs at `<tmp>/root`, unmounted when dropped; `None` where mounting needs root
/// this test does not have.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(tmp: &std::path::Path) -> Option<Tmpfs> {
        let mnt = tmp.join("root");
        std::fs::create_dir(&mnt).unwrap();
        let o = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&mnt)
            .output();
        match o {
            Ok(o) if o.status.success() => Some(Tmpfs(mnt)),
            other => {
                eprintln!("skipped: cannot mount a tmpfs here ({other:?})");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A release folder that fills the device's disk (a file at `fill`) just before its first
/// download: the update runs out of space in the middle of staging.
struct FillsTheDisk {
    inner: Folder,
    fill: std::path::PathBuf,
}

impl Transport for FillsTheDisk {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn check(
        &self,
        q: &deltaroot_client::transport::CheckQuery<'_>,
    ) -> deltaroot_client::Result<deltaroot_format::api::CheckResponse> {
        self.inner.check(q)
    }
    fn get(&self, rel: &str, limit: u64) -> deltaroot_client::Result<Vec<u8>> {
        self.inner.get(rel, limit)
    }
    fn plan(
        &self,
        product: &deltaroot_format::Name,
        from: Option<&deltaroot_format::Name>,
        to: &deltaroot_format::Name,
    ) -> deltaroot_client::Result<deltaroot_format::Plan> {
        self.inner.plan(product, from, to)
    }
    fn download(
        &self,
        rel: &str,
        file: &mut std::fs::File,
        path: &std::path::Path,
        exact: Option<u64>,
        max: u64,
    ) -> deltaroot_client::Result<u64> {
        use std::io::Write;
        if let Ok(mut f) = std::fs::File::create_new(&self.fill) {
            while f.write_all(&[7u8; 4096]).is_ok() {}
        }
        self.inner.download(rel, file, path, exact, max)
    }
    fn downloaded(&self) -> u64 {
        self.inner.downloaded()
    }
}

#[test]
fn a_disk_that_fills_while_staging_reports_its_own_error_and_leaves_no_staging_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mnt) = Tmpfs::mount(tmp.path()) else {
        return;
    };
    let (f, agent, v1) = folder_and_agent(tmp.path());
    agent.install("1").unwrap();
    assert_eq!(
        agent.status().unwrap().last.last_result.as_deref(),
        Some("ok")
    );
    let big = noise(b"big", 200 << 10);
    f.publish(
        "2",
        200,
        vec![folder::file("big", &big, 0o644)],
        &[&big],
        Some(&v1),
        &[],
    );
    let transport = FillsTheDisk {
        inner: Folder::open(&f.root).unwrap(),
        fill: mnt.0.join("filler"),
    };
    let agent = Agent::with_transport(
        Settings {
            root: Some(mnt.0.clone()),
            product: Some("demo".into()),
            trust: vec![tmp.path().join("k.pub")],
            device_id: Some("test-folder".into()),
            ..Settings::default()
        },
        Box::new(transport),
    )
    .unwrap();
    let err = agent.install("2").unwrap_err().to_string();
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("staging/"), "{err}");
    assert!(!err.contains("status.json"), "{err}");
    // The last result is not the earlier "ok".
    let last = agent.status().unwrap().last;
    assert_ne!(last.last_result.as_deref(), Some("ok"), "{last:?}");
    // Nothing of the attempt is left under staging/.
    let left: Vec<_> = walk(&mnt.0.join("staging"));
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(agent.device.current().unwrap().unwrap(), "1");
    assert_eq!(
        std::fs::read(mnt.0.join("current/bin/tool")).unwrap(),
        tools().0
    );
}

#[test]
fn a_release_larger_than_the_free_space_is_refused_before_staging_with_the_figures() {
    use folder::*;
    let tmp = tempfile::tempdir().unwrap();
    let (f, agent, v1) = folder_and_agent(tmp.path());
    agent.install("1").unwrap();
    // A signed manifest naming a file of 2^52 bytes: no disk here holds it. Its object is a
    // few bytes, so only the manifest's sizes can tell.
    let huge = deltaroot_format::Entry::Node {
        path: EntryPath::new(b"huge").unwrap(),
        kind: Kind::File {
            size: 1 << 52,
            hash: Hash::of(b"huge"),
        },
        meta: match file("x", b"", 0o644) {
            deltaroot_format::Entry::Node { meta, .. } => meta,
            _ => unreachable!(),
        },
    };
    f.publish("2", 200, vec![huge], &[b"huge"], Some(&v1), &[]);
    // A partial download an earlier attempt left.
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("staging/downloads")).unwrap();
    std::fs::write(root.join("staging/downloads/leftover.zst"), b"partial").unwrap();
    let err = agent.install("2").unwrap_err().to_string();
    // It needs the file and its download; the figures are in the message.
    let needed: u64 = err
        .split("needs ")
        .nth(1)
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{err}"));
    assert!(needed > 1 << 52 && err.contains("are available"), "{err}");
    assert!(err.contains("not enough space for version 2"), "{err}");
    assert!(err.contains(&root.display().to_string()), "{err}");
    assert_eq!(
        agent.status().unwrap().last.last_result.as_deref(),
        Some("failed")
    );
    let left = walk(&root.join("staging"));
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(agent.device.current().unwrap().unwrap(), "1");
}

#[test]
fn current_pointing_at_a_missing_version_is_left_by_the_next_update() {
    use deltaroot_client::agent::UpdateOutcome;
    let tmp = tempfile::tempdir().unwrap();
    let (_f, agent, _) = folder_and_agent(tmp.path());
    let root = tmp.path().join("root");
    agent.install("1").unwrap();
    std::fs::remove_file(root.join("current")).unwrap();
    std::os::unix::fs::symlink("deployments/9", root.join("current")).unwrap();
    assert!(agent.status().is_ok());
    let out = agent.update().unwrap();
    assert!(matches!(out, UpdateOutcome::Updated(_)), "{out:?}");
    assert_eq!(agent.device.current().unwrap().unwrap(), "1");
    assert_eq!(
        std::fs::read(root.join("current/bin/tool")).unwrap(),
        tools().0
    );
    assert_eq!(agent.device.previous().unwrap(), None);
}

#[test]
fn current_as_a_real_directory_is_moved_aside_not_deleted_and_left() {
    use deltaroot_client::agent::UpdateOutcome;
    let tmp = tempfile::tempdir().unwrap();
    let (_f, agent, _) = folder_and_agent(tmp.path());
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("current/etc")).unwrap();
    std::fs::write(root.join("current/etc/mine"), b"kept").unwrap();
    assert_eq!(agent.status().unwrap().current, None);
    let out = agent.update().unwrap();
    assert!(matches!(out, UpdateOutcome::Updated(_)), "{out:?}");
    assert_eq!(agent.device.current().unwrap().unwrap(), "1");
    assert_eq!(
        std::fs::read(root.join("current/bin/tool")).unwrap(),
        tools().0
    );
    // What stood there is kept, untouched, beside.
    assert_eq!(
        std::fs::read(root.join("current.unmanaged/etc/mine")).unwrap(),
        b"kept"
    );
}

#[test]
fn garbage_in_the_status_file_is_an_unknown_status_not_a_stuck_agent() {
    use deltaroot_client::agent::UpdateOutcome;
    let tmp = tempfile::tempdir().unwrap();
    let (_f, agent, _) = folder_and_agent(tmp.path());
    let root = tmp.path().join("root");
    std::fs::write(root.join("state/status.json"), b"\x00{ not json").unwrap();
    assert_eq!(agent.status().unwrap().last.last_result, None);
    assert!(agent.check().unwrap().update.is_some());
    let out = agent.update().unwrap();
    assert!(matches!(out, UpdateOutcome::Updated(_)), "{out:?}");
    assert_eq!(
        agent.status().unwrap().last.last_result.as_deref(),
        Some("ok")
    );
}

#[test]
fn a_missing_running_manifest_means_an_update_of_whole_objects() {
    use deltaroot_client::agent::UpdateOutcome;
    let tmp = tempfile::tempdir().unwrap();
    let (f, agent, v1) = folder_and_agent(tmp.path());
    let root = tmp.path().join("root");
    agent.install("1").unwrap();
    let (one, two) = tools();
    f.publish(
        "2",
        200,
        vec![folder::file("tool", &two, 0o755)],
        &[&two],
        Some(&v1),
        &[(&one, &two)],
    );
    std::fs::remove_file(root.join("state/manifests/1.manifest")).unwrap();
    let UpdateOutcome::Updated(r) = agent.update().unwrap() else {
        panic!("not updated")
    };
    assert_eq!((r.deltas, r.objects, r.linked), (0, 1, 0), "{r:?}");
    assert_eq!(std::fs::read(root.join("current/tool")).unwrap(), two);
    assert_eq!(agent.device.previous().unwrap().unwrap(), "1");
}

#[test]
fn installing_the_running_version_succeeds_saying_so_and_records_no_failure() {
    use deltaroot_client::agent::UpdateOutcome;
    let tmp = tempfile::tempdir().unwrap();
    let (_f, agent, _) = folder_and_agent(tmp.path());
    agent.install("1").unwrap();
    let out = agent.install("1").unwrap();
    assert!(
        matches!(&out, UpdateOutcome::UpToDate { version: Some(v) } if v == "1"),
        "{out:?}"
    );
    use deltaroot_client::agent::Show;
    assert!(
        out.text().contains("1 is already running"),
        "{}",
        out.text()
    );
    let last = agent.status().unwrap().last;
    assert_eq!(last.last_result.as_deref(), Some("ok"), "{last:?}");
    assert_eq!(last.last_error, None);
}

#[test]
fn installing_the_previous_version_again_reuses_its_complete_deployment() {
    use deltaroot_client::agent::UpdateOutcome;
    let tmp = tempfile::tempdir().unwrap();
    let (f, agent, root) = one_then_two(tmp.path());
    assert_eq!(agent.rollback().unwrap(), "1");
    // Nothing can be downloaded any more: version 2 must come from deployments/2.
    std::fs::remove_dir_all(f.root.join("objects")).unwrap();
    std::fs::remove_dir_all(f.root.join("deltas")).unwrap();
    let UpdateOutcome::Updated(r) = agent.install("2").unwrap() else {
        panic!("not installed")
    };
    assert_eq!(
        (r.downloaded_bytes, r.objects, r.deltas),
        (0, 0, 0),
        "{r:?}"
    );
    assert_eq!(agent.device.current().unwrap().unwrap(), "2");
    assert_eq!(agent.device.previous().unwrap().unwrap(), "1");
    assert_eq!(
        std::fs::read(root.join("current/bin/tool")).unwrap(),
        tools().1
    );
}

#[test]
fn after_a_rollback_check_and_update_agree_that_the_version_left_is_not_offered() {
    use deltaroot_client::agent::UpdateOutcome;
    let tmp = tempfile::tempdir().unwrap();
    let (_f, agent, _) = one_then_two(tmp.path());
    assert_eq!(agent.rollback().unwrap(), "1");
    let offer = agent.check().unwrap();
    assert_eq!(offer.latest.as_deref(), Some("2"));
    assert!(offer.update.is_none(), "{offer:?}");
    let out = agent.update().unwrap();
    assert!(
        matches!(&out, UpdateOutcome::UpToDate { version: Some(v) } if v == "1"),
        "{out:?}"
    );
    assert_eq!(agent.device.current().unwrap().unwrap(), "1");
}

#[test]
fn the_next_run_after_a_kill_past_the_switch_cleans_staging_and_prunes() {
    use deltaroot_client::agent::UpdateOutcome;
    let tmp = tempfile::tempdir().unwrap();
    let (_f, agent, root) = one_then_two(tmp.path());
    // What a kill right after the switch leaves: the contents and downloads of the attempt,
    // and a deployment older than `previous` not yet pruned.
    std::fs::create_dir_all(root.join("deployments/0/bin")).unwrap();
    std::fs::write(root.join("deployments/0/bin/tool"), b"old").unwrap();
    std::fs::write(root.join("state/manifests/0.manifest"), b"old").unwrap();
    for d in ["staging/content", "staging/downloads", "staging/tree"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
        std::fs::write(root.join(d).join("left"), b"left").unwrap();
    }
    let out = agent.update().unwrap();
    assert!(matches!(out, UpdateOutcome::UpToDate { .. }), "{out:?}");
    let left = walk(&root.join("staging"));
    assert!(left.is_empty(), "{left:?}");
    let mut kept: Vec<String> = std::fs::read_dir(root.join("deployments"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    kept.sort();
    assert_eq!(kept, ["1", "2"]);
    assert!(!root.join("state/manifests/0.manifest").exists());
    assert_eq!(
        std::fs::read(root.join("current/bin/tool")).unwrap(),
        tools().1
    );
    assert_eq!(
        std::fs::read(root.join("previous/bin/tool")).unwrap(),
        tools().0
    );
}

#[test]
fn an_attempt_that_failed_keeps_its_verified_contents_for_the_next_run_to_resume() {
    use folder::*;
    let tmp = tempfile::tempdir().unwrap();
    let (f, agent, v1) = folder_and_agent(tmp.path());
    let root = tmp.path().join("root");
    agent.install("1").unwrap();
    let (kept, lost) = (noise(b"kept", 4096), noise(b"lost", 1000));
    f.publish(
        "2",
        200,
        vec![file("kept", &kept, 0o644), file("lost", &lost, 0o644)],
        &[&kept, &lost],
        Some(&v1),
        &[],
    );
    let obj = f.root.join(object_path(&Hash::of(&lost)));
    let saved = std::fs::read(&obj).unwrap();
    std::fs::remove_file(&obj).unwrap();
    assert!(agent.install("2").is_err());
    // Another command takes the lock: the contents for version 2 are still there.
    agent.update().unwrap_err();
    let stored = root
        .join("staging/content")
        .join(Hash::of(&kept).to_string());
    assert!(stored.is_file());
    std::fs::write(&obj, saved).unwrap();
    agent.install("2").unwrap();
    assert_eq!(std::fs::read(root.join("current/kept")).unwrap(), kept);
    let left = walk(&root.join("staging"));
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn an_unmarked_previous_deployment_that_verifies_whole_is_rolled_back_to() {
    let tmp = tempfile::tempdir().unwrap();
    let (_f, agent, root) = one_then_two(tmp.path());
    // As an agent from before the marks left it: the tree whole, no mark.
    std::fs::remove_file(root.join("state/complete/1")).unwrap();
    assert_eq!(agent.rollback().unwrap(), "1");
    assert!(root.join("state/complete/1").is_file());
    assert_eq!(
        std::fs::read(root.join("current/bin/tool")).unwrap(),
        tools().0
    );
}

/// Publishes version 2 of [`folder_and_agent`]'s release: the tool changes (by delta), the
/// setting file holds `conf`.
fn publish_two(f: &folder::Release, v1: &deltaroot_format::Manifest, conf: &[u8]) {
    use folder::*;
    let (one, two) = tools();
    f.publish(
        "2",
        200,
        vec![
            dir("bin"),
            file("bin/tool", &two, 0o4755),
            file("etc.conf", conf, 0o644),
            symlink("link", "bin/tool"),
        ],
        &[&two, conf],
        Some(v1),
        &[(&one, &two)],
    );
}

/// A simulated boot sequence: an update puts 2 on trial; three boots without mark-good
/// count, the fourth reverts to 1 and records `rolled-back` with the reason, which the next
/// check reports; a trial marked good is kept through any number of boots.
#[test]
fn a_version_never_marked_good_is_reverted_after_its_boots() {
    use deltaroot_client::device::{BootCheck, MarkGood};
    let tmp = tempfile::tempdir().unwrap();
    let (f, agent, v1) = folder_and_agent(tmp.path());
    agent.update().unwrap();
    // The first install is on trial too, with nothing to go back to.
    assert_eq!(agent.status().unwrap().trial.unwrap().previous, None);
    assert_eq!(
        agent.mark_good().unwrap(),
        MarkGood::Marked {
            version: "1".into()
        }
    );
    assert_eq!(
        agent.boot_check(3).unwrap(),
        BootCheck::NoTrial {
            current: Some("1".into())
        }
    );
    publish_two(&f, &v1, b"setting = 1\n");
    agent.update().unwrap();
    let t = agent.status().unwrap().trial.unwrap();
    assert_eq!(
        (t.version.as_str(), t.previous.as_deref(), t.boots),
        ("2", Some("1"), 0)
    );
    for boot in 1..=3 {
        assert_eq!(
            agent.boot_check(3).unwrap(),
            BootCheck::OnTrial {
                version: "2".into(),
                boot,
                attempts: 3
            }
        );
        assert_eq!(agent.device.current().unwrap().as_deref(), Some("2"));
    }
    let reason = "2 was not marked good within 3 boots";
    assert_eq!(
        agent.boot_check(3).unwrap(),
        BootCheck::Reverted {
            from: "2".into(),
            to: "1".into(),
            reason: reason.into(),
            hooks: Vec::new(),
        }
    );
    let st = agent.status().unwrap();
    assert_eq!(st.current.as_deref(), Some("1"));
    assert_eq!(st.trial, None);
    assert_eq!(
        (
            st.last.last_result.as_deref(),
            st.last.last_version.as_deref(),
            st.last.last_error.as_deref()
        ),
        (Some("rolled-back"), Some("2"), Some(reason))
    );
    // The next check reports the revert, and 2 is not offered again.
    let answer = agent.check().unwrap();
    assert!(answer.update.is_none(), "{answer:?}");
    // Later boots count nothing.
    assert!(matches!(
        agent.boot_check(3).unwrap(),
        BootCheck::NoTrial { .. }
    ));

    // Installed by name again and marked good after one boot: it stays.
    agent.install("2").unwrap();
    assert!(matches!(
        agent.boot_check(1).unwrap(),
        BootCheck::OnTrial { boot: 1, .. }
    ));
    assert_eq!(
        agent.mark_good().unwrap(),
        MarkGood::Marked {
            version: "2".into()
        }
    );
    for _ in 0..5 {
        assert!(matches!(
            agent.boot_check(1).unwrap(),
            BootCheck::NoTrial { .. }
        ));
    }
    assert_eq!(agent.device.current().unwrap().as_deref(), Some("2"));
}

/// A first install never marked good has nothing to revert to: it stays, recorded as
/// failed with the reason; a garbage trial file counts as no trial.
#[test]
fn a_first_install_never_marked_good_stays_and_says_so() {
    use deltaroot_client::device::BootCheck;
    let tmp = tempfile::tempdir().unwrap();
    let (_f, agent, _v1) = folder_and_agent(tmp.path());
    agent.update().unwrap();
    assert!(matches!(
        agent.boot_check(0).unwrap(),
        BootCheck::Kept { ref version, .. } if version == "1"
    ));
    let st = agent.status().unwrap();
    assert_eq!(st.current.as_deref(), Some("1"));
    assert_eq!(st.last.last_result.as_deref(), Some("failed"));
    assert!(st
        .last
        .last_error
        .unwrap()
        .contains("there is no version to revert to"));
    std::fs::write(tmp.path().join("root/state/trial.json"), b"{garbage").unwrap();
    assert!(matches!(
        agent.boot_check(0).unwrap(),
        BootCheck::NoTrial { .. }
    ));
    assert!(!tmp.path().join("root/state/trial.json").exists());
}

/// Health checks run in name order; the first failure stops the rest and names the script,
/// its exit and the end of its output; one that overruns its limit is stopped.
#[test]
fn health_checks_pass_fail_and_time_out() {
    use deltaroot_client::health::run_checks;
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("health.d");
    std::fs::create_dir(&dir).unwrap();
    let script = |name: &str, body: &str, mode: u32| {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    let limit = std::time::Duration::from_secs(2);
    assert!(run_checks(&tmp.path().join("none"), limit)
        .unwrap()
        .is_empty());
    script("10-fine", "echo fine", 0o755);
    script("README", "exit 1", 0o644);
    script(".20-hidden", "exit 1", 0o755);
    let ran = run_checks(&dir, limit).unwrap();
    assert_eq!(ran, vec![dir.join("10-fine")]);
    script("30-broken", "echo the disk is read-only >&2; exit 3", 0o755);
    script("40-never", "touch \"$0.ran\"", 0o755);
    let err = run_checks(&dir, limit).unwrap_err().to_string();
    assert!(err.contains("30-broken"), "{err}");
    assert!(err.contains("exit status: 3"), "{err}");
    assert!(err.contains("the disk is read-only"), "{err}");
    assert!(
        !dir.join("40-never.ran").exists(),
        "checks after a failure run"
    );
    std::fs::remove_file(dir.join("30-broken")).unwrap();
    script("35-hangs", "echo waiting; sleep 60", 0o755);
    let err = run_checks(&dir, std::time::Duration::from_millis(500))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("35-hangs") && err.contains("still running after 0 s: stopped"),
        "{err}"
    );
}

/// Hooks around a switch: pre-switch and post-switch scripts run with the move in their
/// environment and their output in the report; a failing pre-switch hook stops the switch
/// (the running version stays, the attempt is recorded failed naming the hook); revert hooks
/// run after boot-check switched back.
#[test]
fn hooks_run_around_a_switch_and_a_failing_one_stops_it() {
    use deltaroot_client::agent::UpdateOutcome;
    use deltaroot_client::device::BootCheck;
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let (f, _, v1) = folder_and_agent(tmp.path());
    let hooks = tmp.path().join("hooks");
    let log = tmp.path().join("hooks.log");
    let hook = |event: &str, name: &str, body: &str| {
        let d = hooks.join(format!("{event}.d"));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let record = format!(
        "echo \"$DELTAROOT_EVENT $DELTAROOT_FROM>$DELTAROOT_TO $(cat \"$DELTAROOT_TREE/etc.conf\")\" >> {}; echo noted",
        log.display()
    );
    for event in ["pre-switch", "post-switch", "revert"] {
        hook(event, "10-record", &record);
    }
    let agent = folder::folder_agent(tmp.path(), &f, |s| s.hooks = Some(hooks.clone()));
    let UpdateOutcome::Updated(r) = agent.update().unwrap() else {
        panic!("not updated")
    };
    assert_eq!(
        r.hooks,
        [
            "pre-switch 10-record: ok: noted",
            "post-switch 10-record: ok: noted"
        ]
    );
    agent.mark_good().unwrap();
    publish_two(&f, &v1, b"setting = 2\n");
    // A failing pre-switch hook: 2 is not switched to, and the attempt says why.
    hook(
        "pre-switch",
        "20-refuse",
        "echo not during a shift >&2; exit 4",
    );
    let err = agent.update().unwrap_err().to_string();
    assert!(
        err.contains("a pre-switch hook stopped the switch to 2")
            && err.contains("20-refuse")
            && err.contains("not during a shift"),
        "{err}"
    );
    assert_eq!(agent.device.current().unwrap().as_deref(), Some("1"));
    let st = agent.status().unwrap();
    assert_eq!(st.last.last_result.as_deref(), Some("failed"));
    assert_eq!(st.trial, None);
    // Allowed again: the switch goes through, then a revert runs the revert hooks.
    std::fs::remove_file(hooks.join("pre-switch.d/20-refuse")).unwrap();
    agent.update().unwrap();
    assert!(matches!(
        agent.boot_check(0).unwrap(),
        BootCheck::Reverted { ref hooks, .. } if hooks == &["revert 10-record: ok: noted"]
    ));
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        [
            "pre-switch >1 setting = 1",
            "post-switch >1 setting = 1",
            "pre-switch 1>2 setting = 2",
            "pre-switch 1>2 setting = 2",
            "post-switch 1>2 setting = 2",
            "revert 2>1 setting = 1",
            ""
        ]
        .join("\n")
    );
}

/// A maintenance window: `update --download-only` fetches and verifies 2 into staging and
/// changes nothing else; `update --apply-staged` installs it with the release folder gone
/// (no network), and refuses, changing nothing, when a staged content is missing or nothing
/// is staged.
#[test]
fn download_only_then_apply_staged_without_the_network() {
    use deltaroot_client::agent::UpdateOutcome;
    let tmp = tempfile::tempdir().unwrap();
    let (f, agent, v1) = folder_and_agent(tmp.path());
    let root = tmp.path().join("root");
    let err = agent.apply_staged().unwrap_err().to_string();
    assert!(
        err.contains("nothing is staged (the device runs no version)"),
        "{err}"
    );
    agent.install("1").unwrap();
    let err = agent.apply_staged().unwrap_err().to_string();
    assert!(
        err.contains("nothing is staged (the device runs 1)"),
        "{err}"
    );
    publish_two(&f, &v1, b"setting = 2\n");
    let UpdateOutcome::Staged(r) = agent.download_update().unwrap() else {
        panic!("not staged")
    };
    assert_eq!(r.version, "2");
    assert!(r.downloaded_bytes > 0);
    assert_eq!(agent.device.current().unwrap().as_deref(), Some("1"));
    assert!(!root.join("deployments/2").exists());
    assert!(root.join("staging/manifest").is_file());
    assert_eq!(
        agent.status().unwrap().last.last_result.as_deref(),
        Some("ok")
    );

    // A staged content lost: refused, nothing changes, and the staging stays for a
    // download that completes it.
    let content = root.join("staging/content");
    let lost = std::fs::read_dir(&content)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let kept = std::fs::read(&lost).unwrap();
    std::fs::remove_file(&lost).unwrap();
    let moved = tmp.path().join("release-away");
    std::fs::rename(&f.root, &moved).unwrap();
    let err = agent.apply_staged().unwrap_err().to_string();
    assert!(
        err.contains("was not downloaded by `update --download-only`"),
        "{err}"
    );
    assert_eq!(agent.device.current().unwrap().as_deref(), Some("1"));
    std::fs::write(&lost, kept).unwrap();

    // Whole again: installed with the release folder still away.
    let UpdateOutcome::Updated(r) = agent.apply_staged().unwrap() else {
        panic!("not updated")
    };
    assert_eq!((r.version.as_str(), r.downloaded_bytes), ("2", 0));
    assert_eq!(agent.device.current().unwrap().as_deref(), Some("2"));
    assert_eq!(
        std::fs::read(root.join("current/etc.conf")).unwrap(),
        b"setting = 2\n"
    );
    assert!(!root.join("staging/manifest").exists());
    assert!(
        walk(&root.join("staging")).is_empty(),
        "{:?}",
        walk(&root.join("staging"))
    );
    let err = agent.apply_staged().unwrap_err().to_string();
    assert!(
        err.contains("nothing is staged (the device runs 2)"),
        "{err}"
    );
}

/// Pruning keeps the running and previous deployments, the last one marked good, and the
/// `keep_versions` newest installed; the others go.
#[test]
fn pruning_keeps_the_last_good_version_and_the_newest() {
    use folder::*;
    let tmp = tempfile::tempdir().unwrap();
    let (f, _, v1) = folder_and_agent(tmp.path());
    let root = tmp.path().join("root");
    let agent_keeping = |n: u32| folder_agent(tmp.path(), &f, |s| s.keep_versions = Some(n));
    let agent = agent_keeping(2);
    agent.install("1").unwrap();
    agent.mark_good().unwrap();
    publish_two(&f, &v1, b"setting = 2\n");
    agent.install("2").unwrap();
    let (one, _) = tools();
    for (v, at) in [("3", 300), ("4", 400)] {
        let conf = format!("setting = {v}\n");
        f.publish(
            v,
            at,
            vec![
                dir("bin"),
                file("bin/tool", &one, 0o4755),
                file("etc.conf", conf.as_bytes(), 0o644),
            ],
            &[&one, conf.as_bytes()],
            None,
            &[],
        );
        agent.install(v).unwrap();
    }
    let kept = || {
        let mut v: Vec<String> = std::fs::read_dir(root.join("deployments"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // 4 runs, 3 is previous, 1 was marked good; 2 went.
    assert_eq!(kept(), ["1", "3", "4"]);
    assert!(!root.join("state/manifests/2.manifest").exists());
    // Keeping three: 2 comes back with its install, and stays beside the newest.
    let agent = agent_keeping(3);
    agent.install("2").unwrap();
    assert_eq!(kept(), ["1", "2", "3", "4"]);
    assert_eq!(agent.device.last_good().as_deref(), Some("1"));
}

/// A byte changed on the device in a running file that the next release keeps: the update
/// does not fail for ever on it; the content is fetched whole, and the new tree is right.
#[test]
fn a_running_file_changed_on_the_device_is_fetched_whole_by_the_next_update() {
    use deltaroot_client::agent::UpdateOutcome;
    let tmp = tempfile::tempdir().unwrap();
    let (f, agent, v1) = folder_and_agent(tmp.path());
    let root = tmp.path().join("root");
    agent.install("1").unwrap();
    // Not through the link: the running deployment's own file, as a stray write would.
    std::fs::write(root.join("deployments/1/etc.conf"), b"setting = 9\n").unwrap();
    publish_two(&f, &v1, b"setting = 1\n");
    let UpdateOutcome::Updated(r) = agent.update().unwrap() else {
        panic!("not updated")
    };
    assert_eq!(r.repaired, 1);
    assert_eq!(
        std::fs::read(root.join("current/etc.conf")).unwrap(),
        b"setting = 1\n"
    );
    assert_eq!(
        agent.status().unwrap().last.last_result.as_deref(),
        Some("ok")
    );
}

/// The real `deltaroot-agent` killed at every system call of its commands (ptrace), and what
/// each kill leaves checked: `device/crash.rs`.
#[path = "device/crash.rs"]
mod crash;
#[path = "device/deadline.rs"]
mod deadline;
#[path = "device/metadata.rs"]
mod metadata;
#[path = "device/plans.rs"]
mod plans;
#[path = "device/shared.rs"]
mod shared;
