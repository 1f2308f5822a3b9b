//! A release folder written by hand, as `deltaroot publish --out` lays it out (FORMAT.md
//! §8.5): objects zstd-compressed at their `object_path`, deltas at their `delta_path`, the
//! signed manifest, plans, and the channel's `latest` file; and the helpers the device tests
//! share. Each test file includes it with `#[path]`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use deltaroot_format::container::{encode_delta, DeltaHeader, Method};
use deltaroot_format::{
    compute_plan, delta_path, object_path, Entry, EntryPath, Hash, Kind, Manifest, Meta, SecretKey,
    VerifiedManifest,
};

pub struct Release {
    pub root: PathBuf,
    pub key: SecretKey,
    /// The shared paths every release published from now on declares.
    pub shared: Vec<EntryPath>,
}

pub fn put(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn meta(mode: u32) -> Meta {
    let id = rustix::process::geteuid().as_raw();
    Meta {
        mode,
        uid: id,
        gid: rustix::process::getegid().as_raw(),
        ..Meta::default()
    }
}

pub fn dir(path: &str) -> Entry {
    Entry::Node {
        path: EntryPath::new(path.as_bytes()).unwrap(),
        kind: Kind::Dir,
        meta: meta(0o755),
    }
}

pub fn file(path: &str, bytes: &[u8], mode: u32) -> Entry {
    Entry::Node {
        path: EntryPath::new(path.as_bytes()).unwrap(),
        kind: Kind::File {
            size: bytes.len() as u64,
            hash: Hash::of(bytes),
        },
        meta: meta(mode),
    }
}

pub fn symlink(path: &str, target: &str) -> Entry {
    Entry::Node {
        path: EntryPath::new(path.as_bytes()).unwrap(),
        kind: Kind::Symlink {
            target: target.as_bytes().to_vec(),
        },
        meta: meta(0o777),
    }
}

impl Release {
    /// Publishes `version` (made at `created`) with `entries` whose file contents are
    /// `contents`, for devices coming from `old` with deltas `(old bytes, new bytes)`,
    /// and points channel `stable` at it.
    pub fn publish(
        &self,
        version: &str,
        created: u64,
        entries: Vec<Entry>,
        contents: &[&[u8]],
        old: Option<&Manifest>,
        deltas: &[(&[u8], &[u8])],
    ) -> Manifest {
        let m = Manifest {
            product: "demo".into(),
            version: version.into(),
            created,
            shared: self.shared.clone(),
            entries,
        };
        for c in contents {
            let z = zstd::bulk::compress(c, 3).unwrap();
            put(&self.root, &object_path(&Hash::of(c)), &z);
        }
        let mut stored = Vec::new();
        for (s, t) in deltas {
            let h = DeltaHeader {
                method: Method::BsdiffZstd,
                source: Hash::of(s),
                target: Hash::of(t),
                target_size: t.len() as u64,
            };
            let mut patch = Vec::new();
            bsdiff::diff(s, t, &mut patch).unwrap();
            let d = encode_delta(&h, &zstd::bulk::compress(&patch, 3).unwrap());
            put(&self.root, &delta_path(&h.source, &h.target), &d);
            stored.push((h.source, h.target, d.len() as u64));
        }
        let size = |h: &Hash| {
            std::fs::metadata(self.root.join(object_path(h)))
                .ok()
                .map(|m| m.len())
        };
        let to = |t: &Hash| {
            stored
                .iter()
                .filter(|d| d.1 == *t)
                .map(|d| (d.0, d.2))
                .collect()
        };
        let base = "v1/products/demo";
        let plan = compute_plan(old, &m, size, to).unwrap();
        // Each plan signed by the release key beside it, as the publisher writes them.
        let put_plan = |from: Option<&str>, plan: &deltaroot_format::Plan| {
            let json = serde_json::to_vec(plan).unwrap();
            let rel = format!("{base}/plans/{}/{version}", from.unwrap_or("-"));
            let sig = deltaroot_format::answer::sign_folder_plan(
                &self.key,
                ("demo", from, version),
                &json,
            );
            put(&self.root, &rel, &json);
            put(&self.root, &format!("{rel}.sig"), sig.as_bytes());
        };
        put_plan(old.map(|o| o.version.as_str()), &plan);
        let fresh = compute_plan(None, &m, size, |_| Vec::new()).unwrap();
        put_plan(None, &fresh);
        let signed = VerifiedManifest::sign(m.clone(), &self.key);
        let rel = format!("{base}/releases/{version}");
        put(&self.root, &format!("{rel}/manifest"), signed.bytes());
        put(
            &self.root,
            &format!("{rel}/manifest.sig"),
            signed.signature(),
        );
        put(
            &self.root,
            &format!("{base}/channels/stable/latest"),
            format!("{version}\n").as_bytes(),
        );
        m
    }
}

use deltaroot_client::agent::{Agent, Settings};

/// `n` bytes that do not compress, the same for the same `seed`.
pub fn noise(seed: &[u8], n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    blake3::Hasher::new()
        .update(seed)
        .finalize_xof()
        .fill(&mut v);
    v
}

/// The tool of version 1, and of version 2 (a few bytes changed: a delta is far smaller).
pub fn tools() -> (Vec<u8>, Vec<u8>) {
    let one = noise(b"tool", 64 << 10);
    let mut two = one.clone();
    two[1000..1016].copy_from_slice(b"tool version two");
    (one, two)
}

/// A release folder with version 1, and an agent reading it.
pub fn folder_and_agent(tmp: &std::path::Path) -> (Release, Agent, deltaroot_format::Manifest) {
    let key = SecretKey::from_seed([7; 32]);
    let pubp = tmp.join("k.pub");
    std::fs::write(&pubp, key.public().to_text()).unwrap();
    let f = Release {
        root: tmp.join("release"),
        key,
        shared: Vec::new(),
    };
    let v1 = f.publish(
        "1",
        100,
        vec![
            dir("bin"),
            file("bin/tool", &tools().0, 0o4755),
            file("etc.conf", b"setting = 1\n", 0o644),
            symlink("link", "bin/tool"),
        ],
        &[&tools().0, b"setting = 1\n"],
        None,
        &[],
    );
    let agent = folder_agent(tmp, &f, |_| {});
    (f, agent, v1)
}

/// An agent on `tmp/root` updating from `f`, trusting `tmp/k.pub`, with the settings
/// `change` makes.
pub fn folder_agent(
    tmp: &std::path::Path,
    f: &Release,
    change: impl FnOnce(&mut Settings),
) -> Agent {
    let mut s = Settings {
        root: Some(tmp.join("root")),
        folder: Some(f.root.clone()),
        product: Some("demo".into()),
        trust: vec![tmp.join("k.pub")],
        device_id: Some("test-folder".into()),
        ..Settings::default()
    };
    change(&mut s);
    Agent::new(s).unwrap()
}

/// Every file (not directory) under `dir`.
pub fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.unwrap().path();
        if std::fs::symlink_metadata(&p).unwrap().is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
