//! Hostile plans with honest, signed manifests. A release folder's plan is signed by the
//! release key: one edited, unsigned or signed by another key is refused. Behind that, every
//! size a plan declares is held to the bound the signed manifest gives
//! (`deltaroot_format::bounds`), before anything is downloaded (the hostile transport below
//! hands the agent edited plans past the signature, as a compromised key would).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use deltaroot_client::agent::{Agent, Settings};
use deltaroot_client::transport::{CheckQuery, Folder, Transport};
use deltaroot_format::bounds::{delta_bound, object_bound};
use deltaroot_format::{delta_path, object_path, pack_path, Hash, Name, PackRef, Plan};

use super::folder::{folder_and_agent, noise, tools, walk};

/// A release folder whose plans `edit` changes; downloads are counted.
struct HostilePlan {
    inner: Folder,
    edit: Box<dyn Fn(&mut Plan) + Send + Sync>,
    downloads: AtomicU64,
    asked: Mutex<Vec<String>>,
}

impl Transport for HostilePlan {
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
        self.inner.get(rel, limit)
    }
    fn plan(
        &self,
        product: &Name,
        from: Option<&Name>,
        to: &Name,
    ) -> deltaroot_client::Result<Plan> {
        let mut plan = self.inner.plan(product, from, to)?;
        (self.edit)(&mut plan);
        Ok(plan)
    }
    fn download(
        &self,
        rel: &str,
        file: &mut std::fs::File,
        path: &Path,
        exact: Option<u64>,
        max: u64,
    ) -> deltaroot_client::Result<u64> {
        self.downloads.fetch_add(1, Ordering::Relaxed);
        self.asked.lock().unwrap().push(rel.to_string());
        self.inner.download(rel, file, path, exact, max)
    }
    fn downloaded(&self) -> u64 {
        self.inner.downloaded()
    }
}

/// An agent on `tmp/root` reading the release folder through a [`HostilePlan`].
fn hostile(
    tmp: &Path,
    release: &Path,
    edit: impl Fn(&mut Plan) + Send + Sync + 'static,
) -> (Agent, &'static HostilePlan) {
    let t: &'static HostilePlan = Box::leak(Box::new(HostilePlan {
        inner: Folder::open(release).unwrap(),
        edit: Box::new(edit),
        downloads: AtomicU64::new(0),
        asked: Mutex::new(Vec::new()),
    }));
    struct Shared(&'static HostilePlan);
    impl Transport for Shared {
        fn location(&self) -> String {
            self.0.location()
        }
        fn check(
            &self,
            q: &CheckQuery<'_>,
        ) -> deltaroot_client::Result<deltaroot_format::api::CheckResponse> {
            self.0.check(q)
        }
        fn get(&self, rel: &str, limit: u64) -> deltaroot_client::Result<Vec<u8>> {
            self.0.get(rel, limit)
        }
        fn plan(
            &self,
            product: &Name,
            from: Option<&Name>,
            to: &Name,
        ) -> deltaroot_client::Result<Plan> {
            self.0.plan(product, from, to)
        }
        fn download(
            &self,
            rel: &str,
            file: &mut std::fs::File,
            path: &Path,
            exact: Option<u64>,
            max: u64,
        ) -> deltaroot_client::Result<u64> {
            self.0.download(rel, file, path, exact, max)
        }
        fn downloaded(&self) -> u64 {
            self.0.downloaded()
        }
    }
    let agent = Agent::with_transport(
        Settings {
            root: Some(tmp.join("root")),
            product: Some("demo".into()),
            trust: vec![tmp.join("k.pub")],
            device_id: Some("test-folder".into()),
            ..Settings::default()
        },
        Box::new(Shared(t)),
    )
    .unwrap();
    (agent, t)
}

fn files_under(root: &Path, rel: &str) -> Vec<PathBuf> {
    walk(&root.join(rel))
}

#[test]
fn a_plan_naming_a_terabyte_object_is_refused_by_name_before_any_download() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, _agent, _v1) = folder_and_agent(tmp.path());
    let tool = Hash::of(&tools().0);
    let (agent, t) = hostile(tmp.path(), &f.root, move |plan| {
        for i in &mut plan.items {
            if i.target == tool {
                i.fetch = deltaroot_format::Fetch::Object { bytes: 1 << 40 };
            }
        }
    });
    let err = agent.install("1").unwrap_err().to_string();
    let bound = object_bound(64 << 10);
    assert!(err.contains(&object_path(&tool)), "{err}");
    assert!(err.contains(&(1u64 << 40).to_string()), "{err}");
    assert!(err.contains(&bound.to_string()), "{err}");
    assert_eq!(t.downloads.load(Ordering::Relaxed), 0, "{:?}", t.asked);
    let left = files_under(&tmp.path().join("root"), "staging");
    assert!(left.is_empty(), "{left:?}");
}

/// A device on 1 under `tmp`, and release 2 published with a delta of its tool: the release
/// folder and the tool of 1 and of 2.
fn on_1_with_2_by_delta(tmp: &Path) -> (super::folder::Release, Vec<u8>, Vec<u8>) {
    use super::folder::*;
    let (f, agent, v1) = folder_and_agent(tmp);
    agent.install("1").unwrap();
    let (one, two) = tools();
    f.publish(
        "2",
        200,
        vec![dir("bin"), file("bin/tool", &two, 0o4755)],
        &[&two],
        Some(&v1),
        &[(&one, &two)],
    );
    (f, one, two)
}

#[test]
fn a_plan_naming_a_delta_past_its_bound_is_refused_by_name_before_any_download() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, one, two) = on_1_with_2_by_delta(tmp.path());
    let (agent, t) = hostile(tmp.path(), &f.root, |plan| {
        for i in &mut plan.items {
            if let deltaroot_format::Fetch::Delta { bytes, .. } = &mut i.fetch {
                *bytes = 3 << 29;
            }
        }
    });
    let err = agent.install("2").unwrap_err().to_string();
    let rel = delta_path(&Hash::of(&one), &Hash::of(&two));
    assert!(err.contains(&rel), "{err}");
    assert!(err.contains(&(3u64 << 29).to_string()), "{err}");
    assert!(err.contains(&delta_bound(64 << 10).to_string()), "{err}");
    assert_eq!(t.downloads.load(Ordering::Relaxed), 0, "{:?}", t.asked);
    assert_eq!(agent.device.current().unwrap().unwrap(), "1");
}

/// An object offered beside a slow delta is held to the object bound like any fetch, whatever
/// the device's policy would choose.
#[test]
fn a_plan_offering_an_object_past_its_bound_is_refused_by_name_before_any_download() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, _, two) = on_1_with_2_by_delta(tmp.path());
    let (agent, t) = hostile(tmp.path(), &f.root, |plan| {
        for i in &mut plan.items {
            if matches!(i.fetch, deltaroot_format::Fetch::Delta { .. }) {
                i.object_bytes = Some(1 << 40);
            }
        }
    });
    let err = agent.install("2").unwrap_err().to_string();
    assert!(err.contains(&object_path(&Hash::of(&two))), "{err}");
    assert!(err.contains(&(1u64 << 40).to_string()), "{err}");
    assert!(err.contains(&object_bound(64 << 10).to_string()), "{err}");
    assert_eq!(t.downloads.load(Ordering::Relaxed), 0, "{:?}", t.asked);
    assert_eq!(agent.device.current().unwrap().unwrap(), "1");
}

#[test]
fn a_plan_item_whose_size_is_not_the_signed_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, _agent, _v1) = folder_and_agent(tmp.path());
    let conf = Hash::of(b"setting = 1\n");
    let (agent, t) = hostile(tmp.path(), &f.root, move |plan| {
        for i in &mut plan.items {
            if i.target == conf {
                i.size = 3 << 30;
            }
        }
    });
    let err = agent.install("1").unwrap_err().to_string();
    assert!(err.contains(&object_path(&conf)), "{err}");
    assert!(err.contains(&(3u64 << 30).to_string()), "{err}");
    assert!(err.contains("12"), "{err}");
    assert_eq!(t.downloads.load(Ordering::Relaxed), 0, "{:?}", t.asked);
}

#[test]
fn a_pack_past_the_bound_of_its_items_or_naming_a_target_not_signed_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, _agent, _v1) = folder_and_agent(tmp.path());
    let pack = Hash::of(b"no such pack");
    let (agent, t) = hostile(tmp.path(), &f.root, move |plan| {
        plan.packs = vec![PackRef {
            hash: pack,
            bytes: 10 << 30,
        }];
        for i in &mut plan.items {
            i.pack = Some(0);
        }
    });
    let err = agent.install("1").unwrap_err().to_string();
    let bound = object_bound(64 << 10) + object_bound(12);
    assert!(err.contains(&pack_path(&pack)), "{err}");
    assert!(err.contains(&(10u64 << 30).to_string()), "{err}");
    assert!(err.contains(&bound.to_string()), "{err}");
    assert_eq!(t.downloads.load(Ordering::Relaxed), 0, "{:?}", t.asked);

    // An item for a content the signed manifest does not hold, in a pack of honest size.
    let stranger = Hash::of(&noise(b"stranger", 10));
    let (agent, t) = hostile(tmp.path(), &f.root, move |plan| {
        let mut extra = plan.items[0].clone();
        extra.target = stranger;
        extra.size = 10;
        extra.fetch = deltaroot_format::Fetch::Object { bytes: 20 };
        plan.items.push(extra);
        plan.packs = vec![PackRef {
            hash: pack,
            bytes: 100,
        }];
        for i in &mut plan.items {
            i.pack = Some(0);
        }
    });
    let err = agent.install("1").unwrap_err().to_string();
    assert!(err.contains(&stranger.to_string()), "{err}");
    assert!(err.contains("not a content of"), "{err}");
    assert_eq!(t.downloads.load(Ordering::Relaxed), 0, "{:?}", t.asked);
}

#[test]
fn a_download_cut_at_its_bound_leaves_no_partial_file_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, _agent, _v1) = folder_and_agent(tmp.path());
    let tool = Hash::of(&tools().0);
    let real = std::fs::metadata(f.root.join(object_path(&tool)))
        .unwrap()
        .len();
    // Within the bound, but shorter than the object: the download is cut and refused.
    let (agent, t) = hostile(tmp.path(), &f.root, move |plan| {
        for i in &mut plan.items {
            if i.target == tool {
                i.fetch = deltaroot_format::Fetch::Object { bytes: real - 1 };
            }
        }
    });
    let err = agent.install("1").unwrap_err().to_string();
    assert!(err.contains(&object_path(&tool)), "{err}");
    assert!(t.downloads.load(Ordering::Relaxed) >= 1);
    let left = files_under(&tmp.path().join("root"), "staging/downloads");
    assert!(left.is_empty(), "{left:?}");
}

/// The free space is checked against the downloads the plan's checked entries add up to,
/// not against its `download_bytes`, a claim the signed manifest does not bound.
#[test]
fn the_free_space_is_checked_against_the_plans_bounded_entries_not_its_claimed_total() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, _agent, _v1) = folder_and_agent(tmp.path());
    let (agent, _t) = hostile(tmp.path(), &f.root, |plan| plan.download_bytes = 1 << 50);
    agent.install("1").unwrap();
    assert_eq!(
        std::fs::read(tmp.path().join("root/current/bin/tool")).unwrap(),
        tools().0
    );
}

#[test]
fn a_folder_plan_not_signed_by_a_trusted_release_key_is_refused_before_any_download() {
    let tmp = tempfile::tempdir().unwrap();
    let (f, agent, _v1) = folder_and_agent(tmp.path());
    let plan = f.root.join("v1/products/demo/plans/-/1");
    let sig = PathBuf::from(format!("{}.sig", plan.display()));
    let (body, good) = (std::fs::read(&plan).unwrap(), std::fs::read(&sig).unwrap());
    let refused = |why: &str| {
        let err = agent.install("1").unwrap_err().to_string();
        assert!(err.contains(&plan.display().to_string()), "{err}");
        assert!(err.contains(why), "{err}");
        assert_eq!(agent.device.current().unwrap(), None);
        let left = files_under(&tmp.path().join("root"), "staging");
        assert!(left.is_empty(), "{left:?}");
    };
    // Edited: still a plan (one byte of white space more), no longer the one signed.
    std::fs::write(&plan, [&body[..], b" "].concat()).unwrap();
    refused("does not verify");
    std::fs::write(&plan, &body).unwrap();
    // Without its signature.
    std::fs::remove_file(&sig).unwrap();
    refused("no signature");
    // Signed by a key the device does not trust, or over another pair.
    let other = deltaroot_format::SecretKey::from_seed([9; 32]);
    let by = |key: &deltaroot_format::SecretKey, to: &str| {
        deltaroot_format::answer::sign_folder_plan(key, ("demo", None, to), &body)
    };
    std::fs::write(&sig, by(&other, "1")).unwrap();
    refused("does not verify");
    std::fs::write(&sig, by(&f.key, "2")).unwrap();
    refused("does not verify");
    std::fs::write(&sig, b"not hex").unwrap();
    refused("not a hex signature");
    // Put back, it installs.
    std::fs::write(&sig, &good).unwrap();
    agent.install("1").unwrap();
    assert_eq!(agent.device.current().unwrap().as_deref(), Some("1"));
}
