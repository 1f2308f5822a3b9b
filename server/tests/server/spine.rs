//! End to end: the real server on a loopback port, the publisher uploading two releases of
//! the spine fixture tree, and a device root installed, updated, attacked and rolled back.
//!
//! Needs root (the fixture holds device nodes, owners and `security.*` xattrs), python3 and
//! gcc; `fixtures/spine-tree/README.md` says what the trees hold.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use deltaroot_client::agent::UpdateOutcome;
use deltaroot_engine::EngineOptions;
use deltaroot_format::tree;
use deltaroot_format::{Entry, EntryPath, SecretKey};
use deltaroot_publisher::publish::{publish, PublishOptions, Summary};
use deltaroot_publisher::sink::ServerSink;

use crate::common::{agent, agent_with, key, Backend, Server};

on_both_backends!(
    publish_install_update_and_roll_back_a_whole_tree,
    flipped_manifest_byte_is_refused,
    signature_by_another_key_is_refused,
    object_that_hashes_wrong_is_refused,
    truncated_download_is_refused,
    corrupt_delta_falls_back_to_the_object,
    lying_delta_headers_fall_back_to_the_object,
    damaged_pack_falls_back_to_its_items,
    interrupted_update_resumes_through_its_pack,
    first_release_by_another_key_is_forbidden,
    downloads_are_cacheable_ranged_and_bad_requests_get_clear_4xx,
    a_device_on_a_release_gets_its_manifest_as_a_delta_and_a_binary_plan,
    beside_a_delta_slow_to_rebuild_the_device_policy_chooses_bytes_or_time,
);

/// The fixture trees, made once per version of `make.py` and kept in the build's target
/// folder (`CARGO_TARGET_TMPDIR`), not in /tmp: later runs use the same copy, and a run
/// leaves nothing else behind. Made in a `TempDir` beside it and renamed into place, so a
/// run cut short or a concurrent run never sees half a fixture.
fn fixture() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        assert!(
            rustix::process::geteuid().is_root(),
            "the spine tests need root: the fixture holds device nodes, owners and security xattrs"
        );
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/spine-tree/make.py");
        let version = blake3::hash(&std::fs::read(&script).unwrap()).to_hex();
        let parent = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = parent.join(format!("spine-tree-{}", &version[..16]));
        if dir.is_dir() {
            return dir;
        }
        let tmp = tempfile::tempdir_in(parent).unwrap();
        let made = tmp.path().join("trees");
        let st = std::process::Command::new("python3")
            .arg(&script)
            .arg("--force")
            .arg(&made)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("python3 runs");
        assert!(st.success(), "{} failed", script.display());
        // Another run may have renamed its copy first: then that one is used.
        if let Err(e) = std::fs::rename(&made, &dir) {
            assert!(dir.is_dir(), "{} -> {}: {e}", made.display(), dir.display());
        }
        dir
    })
}

/// Publishes `new` (over `old`) as `version` of product `demo` on channel `stable`.
fn publish_to(
    server: &Server,
    key: &SecretKey,
    old: Option<(&str, &Path)>,
    version: &str,
    new: &Path,
) -> Summary {
    let sink = ServerSink::new(&server.plain_url, &server.token).unwrap();
    let opts = PublishOptions {
        product: "demo".into(),
        version: version.into(),
        from_version: old.map(|o| o.0.to_string()),
        channel: Some("stable".into()),
        percent: None,
        engine: EngineOptions {
            level: 9,
            ..EngineOptions::default()
        },
        created: None,
        progress: false,
        memory_budget: deltaroot_publisher::publish::DEFAULT_MEMORY_BUDGET,
        packs: true,
        input: Default::default(),
        previous_keys: Vec::new(),
    };
    deltaroot_publisher::publish::publish(old.map(|o| o.1), new, key, &sink, &opts).unwrap()
}

/// Asserts a deployed tree equals a source tree: types, bytes, modes, owners, xattrs,
/// symlink targets and hardlink groups.
fn assert_same_tree(want: &Path, got: &Path) {
    let w = tree::scan(want).unwrap();
    let g = tree::scan(got).unwrap();
    let diffs = tree::differences(&w, &g);
    assert!(
        diffs.is_empty(),
        "{} differs from {}:\n{}",
        got.display(),
        want.display(),
        diffs.join("\n")
    );
}

fn inode(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).unwrap().ino()
}

fn files(entries: &[Entry]) -> HashMap<EntryPath, &Entry> {
    entries.iter().map(|e| (e.path().clone(), e)).collect()
}

/// Server, key, releases 1 and 2, and a device on 1.
struct World {
    server: Server,
    trust: PathBuf,
    root: tempfile::TempDir,
    _keys: tempfile::TempDir,
    update_summary: Summary,
}

fn world(backend: Backend) -> World {
    let fx = fixture();
    let server = Server::start(backend);
    let (k, trust, keys) = key(1);
    publish_to(&server, &k, None, "1.0", &fx.join("v1"));
    let update_summary = publish_to(
        &server,
        &k,
        Some(("1.0", &fx.join("v1"))),
        "2.0",
        &fx.join("v2"),
    );
    let root = tempfile::tempdir().unwrap();
    agent(&server, root.path(), &trust).install("1.0").unwrap();
    World {
        server,
        trust,
        root,
        _keys: keys,
        update_summary,
    }
}

fn publish_install_update_and_roll_back_a_whole_tree(backend: Backend) {
    let fx = fixture();
    let w = world(backend);
    let a = agent(&w.server, w.root.path(), &w.trust);
    let dep = |v: &str| w.root.path().join("deployments").join(v);
    assert_same_tree(&fx.join("v1"), &dep("1.0"));

    let offer = a.check().unwrap().update.expect("2.0 is offered");
    assert_eq!(offer.version, "2.0");
    assert_eq!(offer.download_bytes, w.update_summary.download_bytes);

    let before = w.server.served();
    let report = match a.update().unwrap() {
        UpdateOutcome::Updated(r) => r,
        other => panic!("expected an update, got {other:?}"),
    };
    let served = w.server.served() - before;
    assert_eq!(served, report.downloaded_bytes);
    assert!(
        served <= w.update_summary.download_bytes,
        "served {served} bytes, the summary promised {}",
        w.update_summary.download_bytes
    );
    assert!(
        report.deltas > 0,
        "some files must come as deltas: {report:?}"
    );
    // The small downloads came in packs, as the plan said.
    let s = &w.update_summary;
    assert!(s.packs > 0 && s.packed > 1, "nothing was packed: {s:?}");
    assert_eq!(report.packs, s.packs, "{report:?}");
    assert_same_tree(&fx.join("v2"), &dep("2.0"));
    // The previous deployment is untouched by the update: metadata-only changes did not
    // leak into it through a shared inode.
    assert_same_tree(&fx.join("v1"), &dep("1.0"));
    assert_eq!(a.device.current().unwrap().as_deref(), Some("2.0"));
    assert_eq!(a.device.previous().unwrap().as_deref(), Some("1.0"));

    // Unchanged files share inodes with the previous deployment; metadata-only changes don't.
    let v1 = files(&tree::scan(&fx.join("v1")).unwrap())
        .into_iter()
        .map(|(p, e)| (p, e.clone()))
        .collect::<HashMap<_, _>>();
    let v2 = tree::scan(&fx.join("v2")).unwrap();
    let mut shared = 0;
    for e in &v2 {
        let Entry::Node {
            path,
            kind: deltaroot_format::Kind::File { .. },
            ..
        } = e
        else {
            continue;
        };
        let (new_ino, old_ino) = (
            inode(&dep("2.0").join(path.as_path())),
            dep("1.0").join(path.as_path()),
        );
        match v1.get(path) {
            Some(old) if old == e => {
                assert_eq!(
                    new_ino,
                    inode(&old_ino),
                    "{path} is unchanged but not shared"
                );
                shared += 1;
            }
            Some(_) if old_ino.exists() => {
                assert_ne!(
                    new_ino,
                    inode(&old_ino),
                    "{path} changed but shares the old inode"
                )
            }
            _ => {}
        }
    }
    assert!(shared >= 10, "only {shared} unchanged files checked");
    for p in ["etc/mode-change", "etc/owner-change", "etc/xattr-change"] {
        assert_ne!(
            inode(&dep("2.0").join(p)),
            inode(&dep("1.0").join(p)),
            "{p}"
        );
    }

    assert!(matches!(
        a.update().unwrap(),
        UpdateOutcome::UpToDate { .. }
    ));
    assert_eq!(a.rollback().unwrap(), "1.0");
    assert_eq!(a.device.current().unwrap().as_deref(), Some("1.0"));
    assert_same_tree(&fx.join("v1"), &w.root.path().join("current"));
}

/// Runs an update that must fail with a message containing `want`, and checks the device
/// still runs 1.0, intact.
fn refused(w: &World, want: &str) {
    let a = agent(&w.server, w.root.path(), &w.trust);
    let err = match a.update() {
        Ok(o) => panic!("update succeeded: {o:?}"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains(want),
        "error {err:?} does not mention {want:?}"
    );
    assert_eq!(a.device.current().unwrap().as_deref(), Some("1.0"));
    assert_same_tree(&fixture().join("v1"), &w.root.path().join("current"));
    assert_eq!(
        a.status().unwrap().last.last_result.as_deref(),
        Some("failed")
    );
}

/// The plan the server gives a device on 1.0 for 2.0.
fn plan_1_to_2(w: &World) -> deltaroot_format::Plan {
    w.server
        .http()
        .get(format!("{}/v1/products/demo/plans/1.0/2.0", w.server.url))
        .send()
        .unwrap()
        .json()
        .unwrap()
}

/// The store path of an object release 2.0 fetches whole. Its packs are damaged first, so
/// the object is fetched alone.
fn release_2_changed_object(w: &World) -> String {
    damage_packs(w);
    let plan = plan_1_to_2(w);
    let item = plan
        .items
        .iter()
        .find(|i| matches!(i.fetch, deltaroot_format::Fetch::Object { .. }) && i.size > 100)
        .expect("the plan fetches some object whole");
    deltaroot_format::object_path(&item.target)
}

fn flipped_manifest_byte_is_refused(backend: Backend) {
    let w = world(backend);
    let mut m = manifest_2(&w);
    m[20] ^= 1;
    w.server
        .sql("UPDATE releases SET manifest = $1 WHERE version = '2.0'", m);
    refused(&w, "signature of the manifest does not verify");
}

fn manifest_2(w: &World) -> Vec<u8> {
    let pool = w.server.app.db.pool().clone();
    w.server
        .rt
        .block_on(
            sqlx::query_scalar("SELECT manifest FROM releases WHERE version = '2.0'")
                .fetch_one(&pool),
        )
        .unwrap()
}

fn signature_by_another_key_is_refused(backend: Backend) {
    let w = world(backend);
    let other = SecretKey::from_seed([2; 32]);
    let m = manifest_2(&w);
    w.server.sql(
        "UPDATE releases SET signature = $1 WHERE version = '2.0'",
        other.sign(&m).to_vec(),
    );
    refused(&w, "signature of the manifest does not verify");
}

fn object_that_hashes_wrong_is_refused(backend: Backend) {
    let w = world(backend);
    let p = release_2_changed_object(&w);
    let len = w.server.read_stored(&p).len();
    // Same length, valid zstd, other content.
    let mut other = zstd::bulk::compress(&vec![7u8; 4096], 1).unwrap();
    other.resize(len.max(other.len()), 0);
    w.server.write_stored(&p, other[..len].to_vec());
    refused(&w, "objects/");
}

fn truncated_download_is_refused(backend: Backend) {
    let w = world(backend);
    let p = release_2_changed_object(&w);
    let data = w.server.read_stored(&p);
    w.server.write_stored(&p, data[..data.len() / 2].to_vec());
    refused(&w, "download ended after");
}

/// The stored paths of every pack.
fn packs(w: &World) -> Vec<String> {
    let pool = w.server.app.db.pool().clone();
    let hashes: Vec<(String,)> = w
        .server
        .rt
        .block_on(sqlx::query_as("SELECT hash FROM packs").fetch_all(&pool))
        .unwrap();
    hashes
        .into_iter()
        .map(|(h,)| deltaroot_format::pack_path(&h.parse().unwrap()))
        .collect()
}

/// Flips a byte in the middle of every stored pack.
fn damage_packs(w: &World) {
    let packs = packs(w);
    assert!(!packs.is_empty(), "release 2.0 has packs");
    for rel in &packs {
        let mut data = w.server.read_stored(rel);
        let mid = data.len() / 2;
        data[mid] ^= 0x01;
        w.server.write_stored(rel, data);
    }
}

fn damaged_pack_falls_back_to_its_items(backend: Backend) {
    let w = world(backend);
    damage_packs(&w);
    // The pack does not hash to its name: its items come alone, deltas where the plan
    // has them, and the update lands.
    let a = agent(&w.server, w.root.path(), &w.trust);
    let report = match a.update().unwrap() {
        UpdateOutcome::Updated(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(report.packs, 0, "{report:?}");
    assert!(report.deltas > 40, "{report:?}");
    assert!(report.downloaded_bytes > report.planned_bytes);
    assert_eq!(a.device.current().unwrap().as_deref(), Some("2.0"));
    assert_same_tree(&fixture().join("v2"), &w.root.path().join("current"));
}

fn interrupted_update_resumes_through_its_pack(backend: Backend) {
    let w = world(backend);
    let saved: Vec<(String, Vec<u8>)> = packs(&w)
        .into_iter()
        .map(|p| {
            let data = w.server.read_stored(&p);
            (p, data)
        })
        .collect();
    // First attempt: the pack is damaged, so its items come alone, and the smallest object
    // (fetched last) hashes wrong: the update stops with some contents already stored.
    damage_packs(&w);
    let plan = plan_1_to_2(&w);
    let last = plan
        .items
        .iter()
        .filter(|i| matches!(i.fetch, deltaroot_format::Fetch::Object { .. }) && i.size > 0)
        .min_by_key(|i| i.size)
        .unwrap();
    let rel = deltaroot_format::object_path(&last.target);
    let good = w.server.read_stored(&rel);
    w.server
        .write_stored(&rel, zstd::bulk::compress(b"other content", 3).unwrap());
    let a = agent(&w.server, w.root.path(), &w.trust);
    let err = a.update().unwrap_err().to_string();
    assert!(err.contains(&rel), "{err}");
    let staged = std::fs::read_dir(w.root.path().join("staging/content"))
        .unwrap()
        .count();
    assert!(staged > 10, "{staged} contents stored by the first attempt");
    // Second attempt, everything intact: the pack is used for what is still missing, and
    // the contents stored before are skipped, not refused.
    for (p, data) in saved {
        w.server.write_stored(&p, data);
    }
    w.server.write_stored(&rel, good);
    let report = match a.update().unwrap() {
        UpdateOutcome::Updated(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(report.packs, 1, "{report:?}");
    assert!(
        report.deltas + report.objects < plan.items.len() as u64,
        "{report:?}"
    );
    assert_eq!(a.device.current().unwrap().as_deref(), Some("2.0"));
    assert_same_tree(&fixture().join("v2"), &w.root.path().join("current"));
}

fn corrupt_delta_falls_back_to_the_object(backend: Backend) {
    let w = world(backend);
    // Packs hold copies of the deltas: damage them, so every delta comes alone.
    damage_packs(&w);
    let pool = w.server.app.db.pool().clone();
    let pairs: Vec<(String, String)> = w
        .server
        .rt
        .block_on(sqlx::query_as("SELECT source, target FROM deltas").fetch_all(&pool))
        .unwrap();
    assert!(!pairs.is_empty(), "release 2.0 has deltas");
    for (s, t) in pairs {
        let rel = deltaroot_format::delta_path(&s.parse().unwrap(), &t.parse().unwrap());
        let mut data = w.server.read_stored(&rel);
        let last = data.len() - 1;
        data[last] ^= 0xff;
        w.server.write_stored(&rel, data);
    }
    // Every delta fails its check; each content comes whole instead, verified the same way.
    let a = agent(&w.server, w.root.path(), &w.trust);
    let report = match a.update().unwrap() {
        UpdateOutcome::Updated(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(report.deltas, 0);
    assert!(report.objects > 0);
    assert!(report.downloaded_bytes > report.planned_bytes);
    assert_eq!(a.device.current().unwrap().as_deref(), Some("2.0"));
    assert_same_tree(&fixture().join("v2"), &w.root.path().join("current"));
}

/// Deltas whose headers lie: a target of a terabyte, another source, another method than
/// the payload's. Each is refused (the device never reserves what a header claims) and its
/// content comes whole.
fn lying_delta_headers_fall_back_to_the_object(backend: Backend) {
    use deltaroot_format::{encode_delta, DeltaHeader, Hash, Method};
    let w = world(backend);
    damage_packs(&w);
    let pool = w.server.app.db.pool().clone();
    let pairs: Vec<(String, String)> = w
        .server
        .rt
        .block_on(sqlx::query_as("SELECT source, target FROM deltas").fetch_all(&pool))
        .unwrap();
    assert!(pairs.len() >= 3, "release 2.0 has {} deltas", pairs.len());
    for (i, (s, t)) in pairs.iter().enumerate() {
        let rel = deltaroot_format::delta_path(&s.parse().unwrap(), &t.parse().unwrap());
        let data = w.server.read_stored(&rel);
        let (mut h, payload) = DeltaHeader::decode(&data).unwrap();
        match i % 3 {
            0 => h.target_size = 1 << 40,
            1 => h.source = Hash([7; 32]),
            _ => {
                h.method = if h.method == Method::Zstd {
                    Method::BsdiffZstd
                } else {
                    Method::Zstd
                }
            }
        }
        let lying = encode_delta(&h, payload);
        w.server.write_stored(&rel, lying);
    }
    let a = agent(&w.server, w.root.path(), &w.trust);
    let report = match a.update().unwrap() {
        UpdateOutcome::Updated(r) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(report.deltas, 0);
    assert!(report.objects > 0);
    assert_same_tree(&fixture().join("v2"), &w.root.path().join("current"));
}

fn first_release_by_another_key_is_forbidden(backend: Backend) {
    let w = world(backend);
    let (k, _, _keys) = key(3);
    let sink = ServerSink::new(&w.server.plain_url, &w.server.token).unwrap();
    let opts = PublishOptions {
        product: "demo".into(),
        version: "3.0".into(),
        from_version: None,
        channel: Some("stable".into()),
        percent: None,
        engine: EngineOptions::default(),
        created: None,
        progress: false,
        memory_budget: deltaroot_publisher::publish::DEFAULT_MEMORY_BUDGET,
        packs: true,
        input: Default::default(),
        previous_keys: Vec::new(),
    };
    let err = publish(None, &fixture().join("v2"), &k, &sink, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("403") && err.contains("signed by another key"),
        "{err}"
    );
    let bad = ServerSink::new(&w.server.plain_url, "drt_wrong").unwrap();
    let err = publish(None, &fixture().join("v2"), &k, &bad, &opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("401"), "{err}");
}

fn downloads_are_cacheable_ranged_and_bad_requests_get_clear_4xx(backend: Backend) {
    let w = world(backend);
    let c = w.server.http();
    let url = |p: &str| format!("{}/{p}", w.server.url);
    let rel = release_2_changed_object(&w);
    let whole = w.server.read_stored(&rel);

    let r = c.get(url(&rel)).send().unwrap();
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().unwrap().to_string();
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    assert_eq!(r.bytes().unwrap(), whole);

    let r = c
        .get(url(&rel))
        .header("range", "bytes=10-19")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(
        r.headers()["content-range"].to_str().unwrap(),
        format!("bytes 10-19/{}", whole.len())
    );
    assert_eq!(r.bytes().unwrap(), whole[10..20]);
    let r = c
        .get(url(&rel))
        .header("range", format!("bytes={}-", whole.len()))
        .send()
        .unwrap();
    assert_eq!(r.status(), 416);
    let r = c
        .get(url(&rel))
        .header("if-none-match", &etag)
        .send()
        .unwrap();
    assert_eq!(r.status(), 304);

    let status = |r: reqwest::blocking::Response| {
        let s = r.status().as_u16();
        let text = r.text().unwrap();
        let body: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{s}: not JSON: {text}"));
        (s, body["error"].as_str().unwrap_or_default().to_string())
    };
    let (s, e) = status(
        c.get(url("v1/products/nope/channels/stable/check"))
            .send()
            .unwrap(),
    );
    assert_eq!((s, e.contains("no product nope")), (404, true), "{e}");
    let (s, e) = status(
        c.get(url("v1/products/demo/channels/stable/check?current=..%2Fx"))
            .send()
            .unwrap(),
    );
    assert_eq!(s, 400, "{e}");
    let (s, _) = status(c.get(url("objects/00/not-a-hash")).send().unwrap());
    assert_eq!(s, 400);
    let (s, e) = status(
        c.get(url("v1/products/demo/releases/9.9/manifest"))
            .send()
            .unwrap(),
    );
    assert_eq!((s, e.contains("no release 9.9")), (404, true), "{e}");

    // Uploads: no token, a wrong token, content that does not hash to its name, a bad delta.
    let h = deltaroot_format::Hash::of(b"hello");
    let path = url(&deltaroot_format::object_path(&h));
    let body = zstd::bulk::compress(b"hello", 3).unwrap();
    assert_eq!(
        c.put(&path).body(body.clone()).send().unwrap().status(),
        401
    );
    assert_eq!(
        c.put(&path)
            .bearer_auth("drt_nope")
            .body(body.clone())
            .send()
            .unwrap()
            .status(),
        401
    );
    let other = zstd::bulk::compress(b"jello", 3).unwrap();
    let (s, e) = status(
        c.put(&path)
            .bearer_auth(&w.server.token)
            .body(other)
            .send()
            .unwrap(),
    );
    assert_eq!((s, e.contains("hashes to")), (400, true), "{e}");
    assert_eq!(
        c.get(&path).send().unwrap().status(),
        404,
        "a refused upload stores nothing"
    );
    let (s, _) = status(
        c.put(&path)
            .bearer_auth(&w.server.token)
            .body(b"not zstd".to_vec())
            .send()
            .unwrap(),
    );
    assert_eq!(s, 400);
    assert_eq!(
        c.put(&path)
            .bearer_auth(&w.server.token)
            .body(body)
            .send()
            .unwrap()
            .status(),
        201
    );
    let dpath = url(&deltaroot_format::delta_path(&h, &h));
    let (s, e) = status(
        c.put(&dpath)
            .bearer_auth(&w.server.token)
            .body(b"DRDELTA1".to_vec())
            .send()
            .unwrap(),
    );
    assert_eq!((s, e.contains("malformed")), (400, true), "{e}");
    let (s, e) = status(
        c.post(url("v1/products/demo/releases"))
            .bearer_auth(&w.server.token)
            .header("content-type", "application/json")
            .body("{\"manifest\": 3}")
            .send()
            .unwrap(),
    );
    assert!(s == 400 || s == 422, "{s} {e}");
}

/// A device on 1.0 fetches 2.0's manifest as a delta from 1.0's and the plan in binary form,
/// both far smaller than whole, and the binary plan says what the JSON plan says. Counted by
/// the server as it sends them (`deltaroot_served_metadata_bytes_total`).
fn a_device_on_a_release_gets_its_manifest_as_a_delta_and_a_binary_plan(backend: Backend) {
    use std::sync::atomic::Ordering;
    let w = world(backend);
    let m = &w.server.app.metrics;
    let sent = || {
        (
            m.manifest_bytes.load(Ordering::Relaxed),
            m.plan_bytes.load(Ordering::Relaxed),
        )
    };
    let (manifest_before, plan_before) = sent();
    let a = agent(&w.server, w.root.path(), &w.trust);
    assert!(matches!(a.update().unwrap(), UpdateOutcome::Updated(_)));
    assert_same_tree(&fixture().join("v2"), &w.root.path().join("current"));
    let (manifest_after, plan_after) = sent();
    let whole = manifest_2(&w).len() as u64;
    let json = w
        .server
        .http()
        .get(format!("{}/v1/products/demo/plans/1.0/2.0", w.server.url))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let (manifest_sent, plan_sent) = (manifest_after - manifest_before, plan_after - plan_before);
    assert!(
        manifest_sent * 2 < whole,
        "{manifest_sent} bytes of manifest sent for a manifest of {whole}"
    );
    assert!(
        plan_sent * 3 < json.len() as u64,
        "{plan_sent} bytes of plan sent for a JSON plan of {}",
        json.len()
    );
    // The binary plan is the JSON plan, read against the two manifests.
    let get = |path: &str| {
        let r = w
            .server
            .http()
            .get(format!("{}/{path}", w.server.url))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.bytes().unwrap().to_vec()
    };
    let binary = get("v1/products/demo/plans/1.0/2.0?encoding=binary");
    let key = deltaroot_format::PublicKey::from_text(&std::fs::read_to_string(&w.trust).unwrap())
        .unwrap();
    let manifest = |v: &str| {
        let base = format!("v1/products/demo/releases/{v}/manifest");
        deltaroot_format::VerifiedManifest::verify(
            get(&base),
            get(&format!("{base}.sig")),
            std::slice::from_ref(&key),
        )
        .unwrap()
    };
    let (m1, m2) = (manifest("1.0"), manifest("2.0"));
    let decoded =
        deltaroot_format::plan_binary::decode(&binary, Some(m1.manifest()), m2.manifest()).unwrap();
    assert_eq!(decoded, serde_json::from_slice(&json).unwrap());
    // The delta rebuilds 2.0's manifest from 1.0's; a `from` the server does not know, or
    // the release itself, gets the manifest whole; an unknown encoding is a clear 400.
    let delta = get("v1/products/demo/releases/2.0/manifest?from=1.0");
    let old = get("v1/products/demo/releases/1.0/manifest");
    assert_eq!(
        deltaroot_format::manifest_delta::apply(&delta, &old).unwrap(),
        manifest_2(&w)
    );
    assert_eq!(
        get("v1/products/demo/releases/2.0/manifest?from=0.1"),
        manifest_2(&w)
    );
    assert_eq!(
        get("v1/products/demo/releases/2.0/manifest?from=2.0"),
        manifest_2(&w)
    );
    let r = w
        .server
        .http()
        .get(format!(
            "{}/v1/products/demo/plans/1.0/2.0?encoding=xml",
            w.server.url
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("json or binary"));
}

/// A plan offers the whole object beside every delta slow to rebuild (method `xz`; here the
/// stored deltas are marked so) that it fetches alone. A device whose policy is `bytes` downloads
/// exactly the plan's fewest bytes; one whose policy is `time` downloads the objects instead,
/// exactly the difference more; both end with release 2.0.
fn beside_a_delta_slow_to_rebuild_the_device_policy_chooses_bytes_or_time(backend: Backend) {
    use deltaroot_client::device::prefer::Prefer;
    let w = world(backend);
    // Every delta marked slow, fetched alone (the packs forgotten), the plan made again.
    w.server.exec("UPDATE deltas SET method = 6");
    w.server.exec("DELETE FROM plan_packs");
    w.server.exec("DELETE FROM plans");
    let plan = plan_1_to_2(&w);
    let offered: Vec<_> = plan
        .items
        .iter()
        .filter_map(|i| Some((i.object_bytes?, i.fetch.bytes())))
        .collect();
    assert!(!offered.is_empty(), "no object offered: {plan:?}");
    assert!(plan.items.iter().all(|i| i.object_bytes.is_none()
        || (i.pack.is_none() && matches!(i.fetch, deltaroot_format::Fetch::Delta { .. }))));
    let extra: u64 = offered.iter().map(|(o, d)| o - d).sum();
    let update = |prefer: Prefer| {
        let root = tempfile::tempdir().unwrap();
        agent(&w.server, root.path(), &w.trust)
            .install("1.0")
            .unwrap();
        let a = agent_with(&w.server, root.path(), &w.trust, |s| {
            s.prefer = Some(prefer)
        });
        let before = w.server.served();
        let report = match a.update().unwrap() {
            UpdateOutcome::Updated(r) => r,
            other => panic!("expected an update, got {other:?}"),
        };
        assert_same_tree(&fixture().join("v2"), &root.path().join("current"));
        (w.server.served() - before, report)
    };
    let (bytes, by_bytes) = update(Prefer::Bytes);
    let (time, by_time) = update(Prefer::Time);
    assert_eq!(bytes, plan.download_bytes);
    assert_eq!(time, plan.download_bytes + extra);
    assert_eq!(by_time.objects, by_bytes.objects + offered.len() as u64);
    assert_eq!(by_time.deltas + offered.len() as u64, by_bytes.deltas);
}
