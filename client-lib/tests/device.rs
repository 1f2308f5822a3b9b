//! The device library on its own: settings files, hostile manifests, and a device root with
//! nothing installed.

use deltaroot_client::agent::{Agent, Settings};
use deltaroot_client::format::{
    Entry, EntryPath, Hash, Kind, Manifest, Meta, SecretKey, VerifiedManifest,
};
use deltaroot_client::Error;

fn manifest(entries: Vec<Entry>) -> Manifest {
    Manifest {
        product: "demo".into(),
        version: "1".into(),
        created: 1,
        entries,
    }
}

#[test]
fn settings_come_from_toml_and_flags_override_them() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed([4; 32]);
    let pubp = dir.path().join("k.pub");
    std::fs::write(&pubp, key.public().to_text()).unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "root = {:?}\nserver = \"http://127.0.0.1:9\"\nproduct = \"demo\"\nchannel = \"beta\"\ntrust = [{:?}]\n",
            dir.path().join("root"),
            pubp
        ),
    )
    .unwrap();
    let file = Settings::from_file(&cfg).unwrap();
    assert_eq!(file.channel.as_deref(), Some("beta"));
    let merged = file.merge(Settings {
        channel: Some("stable".into()),
        ..Settings::default()
    });
    let agent = Agent::new(merged).unwrap();
    assert_eq!(agent.channel, "stable");
    assert_eq!(agent.product, "demo");

    std::fs::write(&cfg, "root = 3\n").unwrap();
    let err = Settings::from_file(&cfg).unwrap_err().to_string();
    assert!(err.contains("agent.toml"), "{err}");
    std::fs::write(&cfg, "rooot = \"/x\"\n").unwrap();
    assert!(Settings::from_file(&cfg)
        .unwrap_err()
        .to_string()
        .contains("rooot"));
}

#[test]
fn the_deployed_example_settings_parse() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
    let s = Settings::from_file(&path).unwrap();
    assert_eq!(s.root.as_deref(), Some(std::path::Path::new("/sysroot")));
    assert_eq!(s.product.as_deref(), Some("acme-gateway"));
    assert_eq!(s.channel.as_deref(), Some("stable"));
    assert_eq!(
        s.trust,
        [std::path::PathBuf::from("/etc/deltaroot/release.pub")]
    );
    assert!(s.server.as_deref().unwrap().starts_with("https://"));
    // Every commented-out setting is one the agent knows.
    let text = std::fs::read_to_string(&path).unwrap();
    let commented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.contains(" = "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(commented.lines().count() >= 4, "{commented}");
    let extra: Settings = toml::from_str(&commented).unwrap();
    assert!(extra.ca_cert.is_some() && extra.objects_url.is_some());
    assert!(extra.pin.is_some() && extra.device_id.is_some());
}

#[test]
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

/// A bsdiff delta of `old` to `new` in its container, as the publisher would write it.
fn bsdiff_delta(old: &[u8], new: &[u8]) -> Vec<u8> {
    use deltaroot_client::format::container::{encode_delta, DeltaHeader, Method};
    let mut patch = Vec::new();
    bsdiff::diff(old, new, &mut patch).unwrap();
    let h = DeltaHeader {
        method: Method::BsdiffZstd,
        source: Hash::of(old),
        target: Hash::of(new),
        target_size: new.len() as u64,
    };
    encode_delta(&h, &zstd::bulk::compress(&patch, 3).unwrap())
}

#[test]
fn deltaroot_apply_applies_one_delta_and_refuses_the_wrong_base_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n);
    let old: Vec<u8> = (0..40_000u32).flat_map(|i| (i / 7).to_le_bytes()).collect();
    let mut new = old.clone();
    new[1000..1010].copy_from_slice(b"0123456789");
    new.extend_from_slice(b"and a tail");
    std::fs::write(p("old"), &old).unwrap();
    std::fs::write(p("patch"), bsdiff_delta(&old, &new)).unwrap();
    let run = |args: &[&std::path::Path]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_deltaroot-apply"))
            .args(args)
            .output()
            .unwrap()
    };

    let out = run(&[&p("old"), &p("patch"), "--out".as_ref(), &p("new")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(p("new")).unwrap(), new);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("{} bytes, verified", new.len())),
        "{said}"
    );

    // Applied to another file, it says which file and which content it wanted, and writes
    // nothing.
    std::fs::write(p("other"), b"not the old file").unwrap();
    let out = run(&[&p("other"), &p("patch"), "--out".as_ref(), &p("x")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("other") && err.contains(&Hash::of(&old).to_string()),
        "{err}"
    );
    assert!(!p("x").exists());

    // No output path, or an option it does not know: the usage, and a failure.
    let (o, d) = (p("old"), p("patch"));
    for bad in [
        vec![o.as_path(), d.as_path()],
        vec![o.as_path(), "--in".as_ref()],
    ] {
        let out = run(&bad);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("usage: deltaroot-apply"),
            "{err}"
        );
    }
}
