//! Manifest deltas a device cannot use. A server answers a device that names its running
//! release with the new manifest as a delta from that release's (FORMAT.md §3.8); the delta
//! is not signed, only what it rebuilds is. A delta from another manifest, a damaged one, or
//! one that rebuilds something else costs one more request, for the manifest whole, and
//! the update goes on; a manifest that is not the signed one is refused as ever.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use deltaroot_client::agent::{Agent, Settings, UpdateOutcome};
use deltaroot_client::transport::{CheckQuery, Folder, Transport};
use deltaroot_format::{encode_delta, DeltaHeader, Hash, Method, Name, Plan};

use super::folder::{dir, file, folder_and_agent, tools};

/// A release folder that answers `manifest_since` with what `answer` makes of the running
/// and the new manifest's bytes, and counts the manifests fetched whole.
struct DeltaServer {
    inner: Folder,
    answer: fn(&[u8], &[u8]) -> Vec<u8>,
    since: AtomicU64,
    whole: AtomicU64,
}

impl Transport for &'static DeltaServer {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn check(
        &self,
        q: &CheckQuery<'_>,
    ) -> deltaroot_client::Result<deltaroot_format::api::CheckResponse> {
        self.inner.check(q)
    }
    fn get(&self, rel: &str, limit: u64) -> deltaroot_client::Result<Vec<u8>> {
        if rel.ends_with("/manifest") {
            self.whole.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.get(rel, limit)
    }
    fn manifest_since(
        &self,
        product: &Name,
        version: &Name,
        running: &Name,
    ) -> deltaroot_client::Result<(Vec<u8>, Vec<u8>)> {
        self.since.fetch_add(1, Ordering::Relaxed);
        let base = format!("v1/products/{product}/releases");
        let old = self
            .inner
            .get(&format!("{base}/{running}/manifest"), 1 << 30)?;
        let new = self
            .inner
            .get(&format!("{base}/{version}/manifest"), 1 << 30)?;
        let sig = self
            .inner
            .get(&format!("{base}/{version}/manifest.sig"), 64)?;
        Ok(((self.answer)(&old, &new), sig))
    }
    fn plan(
        &self,
        product: &Name,
        from: Option<&Name>,
        to: &Name,
    ) -> deltaroot_client::Result<Plan> {
        self.inner.plan(product, from, to)
    }
    fn download(
        &self,
        rel: &str,
        file: &mut std::fs::File,
        path: &Path,
        exact: Option<u64>,
        max: u64,
    ) -> deltaroot_client::Result<u64> {
        self.inner.download(rel, file, path, exact, max)
    }
    fn downloaded(&self) -> u64 {
        self.inner.downloaded()
    }
}

/// A container of method 1 from `source` claiming to rebuild `target`, with `payload`.
fn container(source: &[u8], target: &[u8], payload: &[u8]) -> Vec<u8> {
    let h = DeltaHeader {
        method: Method::ZstdPatchFrom,
        source: Hash::of(source),
        target: Hash::of(target),
        target_size: target.len() as u64,
    };
    encode_delta(&h, payload)
}

/// A device on 1 (under `tmp`) and an agent that updates it to 2 through a [`DeltaServer`]
/// answering with `answer`.
fn device_on_1(tmp: &Path, answer: fn(&[u8], &[u8]) -> Vec<u8>) -> (Agent, &'static DeltaServer) {
    let (f, agent, v1) = folder_and_agent(tmp);
    agent.install("1").unwrap();
    let (_, two) = tools();
    f.publish(
        "2",
        200,
        vec![dir("bin"), file("bin/tool", &two, 0o4755)],
        &[&two],
        Some(&v1),
        &[],
    );
    let t: &'static DeltaServer = Box::leak(Box::new(DeltaServer {
        inner: Folder::open(&f.root).unwrap(),
        answer,
        since: AtomicU64::new(0),
        whole: AtomicU64::new(0),
    }));
    let agent = Agent::with_transport(
        Settings {
            root: Some(tmp.join("root")),
            product: Some("demo".into()),
            trust: vec![tmp.join("k.pub")],
            device_id: Some("test-folder".into()),
            ..Settings::default()
        },
        Box::new(t),
    )
    .unwrap();
    (agent, t)
}

/// A device on 1 updated to 2 through a [`DeltaServer`] answering with `answer`: how many
/// manifests it fetched whole.
fn update_with(answer: fn(&[u8], &[u8]) -> Vec<u8>) -> u64 {
    let tmp = tempfile::tempdir().unwrap();
    let (agent, t) = device_on_1(tmp.path(), answer);
    let before = t.whole.load(Ordering::Relaxed);
    match agent.update().unwrap() {
        UpdateOutcome::Updated(r) => assert_eq!(r.version, "2"),
        other => panic!("expected an update to 2, got {other:?}"),
    }
    assert_eq!(agent.device.current().unwrap().as_deref(), Some("2"));
    assert_eq!(t.since.load(Ordering::Relaxed), 1, "asked as a delta once");
    t.whole.load(Ordering::Relaxed) - before
}

#[test]
fn a_manifest_delta_the_device_cannot_use_costs_one_whole_manifest() {
    // The manifest itself (a server that makes no delta): nothing more is fetched.
    assert_eq!(update_with(|_, new| new.to_vec()), 0);
    // From a manifest the device does not run.
    assert_eq!(
        update_with(|_, new| container(b"another release", new, b"payload")),
        1
    );
    // From the right manifest, damaged.
    assert_eq!(
        update_with(|old, new| container(old, new, &[0x28, 0xb5, 0x2f])),
        1
    );
    // Of another method.
    assert_eq!(
        update_with(|old, new| {
            let mut d = container(old, new, b"");
            d[8] = Method::BsdiffZstd as u8;
            d
        }),
        1
    );
}

/// A real manifest delta (zstd with the old manifest as prefix) from `old` to `new`.
fn patch_from(old: &[u8], new: &[u8]) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(3).unwrap();
    c.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))
        .unwrap();
    c.set_parameter(zstd::zstd_safe::CParameter::WindowLog(20))
        .unwrap();
    c.context_mut().ref_prefix(old).unwrap();
    container(old, new, &c.compress(new).unwrap())
}

#[test]
fn a_good_manifest_delta_is_used_and_one_that_rebuilds_another_is_refused() {
    // The real thing: no manifest fetched whole.
    assert_eq!(update_with(patch_from), 0);
    // A well-formed delta that rebuilds other bytes than the signed manifest: its own
    // hash checks out, the release key's signature does not, and nothing is installed.
    let tmp = tempfile::tempdir().unwrap();
    let (agent, _) = device_on_1(tmp.path(), |old, new| {
        let mut other = new.to_vec();
        let n = other.len();
        other[n - 40] ^= 1;
        patch_from(old, &other)
    });
    let err = agent.update().unwrap_err().to_string();
    assert!(
        err.contains("signature of the manifest does not verify"),
        "{err}"
    );
    assert_eq!(agent.device.current().unwrap().as_deref(), Some("1"));
}
