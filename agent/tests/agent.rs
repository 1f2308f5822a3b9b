//! The device binaries' crate: settings files (TOML, flags over them, the example in
//! `deploy/`) and `deltaroot-apply` run as a process.

use deltaroot_agent::settings_file;
use deltaroot_client::agent::{Agent, Settings};
use deltaroot_format::{Hash, SecretKey};

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
    let file = settings_file(&cfg).unwrap();
    assert_eq!(file.channel.as_deref(), Some("beta"));
    let merged = file.merge(Settings {
        channel: Some("stable".into()),
        ..Settings::default()
    });
    let agent = Agent::new(merged).unwrap();
    assert_eq!(agent.channel, "stable");
    assert_eq!(agent.product, "demo");

    std::fs::write(&cfg, "root = 3\n").unwrap();
    let err = settings_file(&cfg).unwrap_err().to_string();
    assert!(err.contains("agent.toml"), "{err}");
    std::fs::write(&cfg, "rooot = \"/x\"\n").unwrap();
    assert!(settings_file(&cfg)
        .unwrap_err()
        .to_string()
        .contains("rooot"));
}

#[test]
fn a_key_file_given_as_settings_is_never_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed([9; 32]);
    let text = key.to_text();
    let secret = text.split_whitespace().nth(1).unwrap();
    let path = dir.path().join("release.key");
    std::fs::write(&path, &text).unwrap();
    let err = settings_file(&path).unwrap_err().to_string();
    assert!(
        err.contains("release.key") && err.contains("line 1"),
        "{err}"
    );
    assert!(!err.contains(&secret[..12]), "{err}");
    // Nor as a trusted public key.
    let pubp = dir.path().join("k.pub");
    std::fs::write(&pubp, &text).unwrap();
    let err = Agent::new(Settings {
        root: Some(dir.path().join("root")),
        server: Some("http://127.0.0.1:9".into()),
        product: Some("demo".into()),
        trust: vec![pubp, path.clone()],
        ..Settings::default()
    })
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("k.pub") && err.contains("secret key"), "{err}");
    assert!(!err.contains(&secret[..12]), "{err}");
    // Nor a device-id file that holds something else.
    std::fs::create_dir_all(dir.path().join("r/state")).unwrap();
    std::fs::write(dir.path().join("r/state/device-id"), &text).unwrap();
    let err = deltaroot_client::agent::resolve_device_id(
        &dir.path().join("r"),
        &dir.path().join("no-machine-id"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("device-id"), "{err}");
    assert!(!err.contains(&secret[..12]), "{err}");
}

#[test]
fn the_deployed_example_settings_parse() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/agent.toml");
    let s = settings_file(&path).unwrap();
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
    assert_eq!(extra.update_deadline_secs, Some(6 * 3600));
}

/// A bsdiff delta of `old` to `new` in its container, as the publisher would write it.
fn bsdiff_delta(old: &[u8], new: &[u8]) -> Vec<u8> {
    use deltaroot_format::container::{encode_delta, DeltaHeader, Method};
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

    // The output keeps the old file's mode (setuid included) unless --mode says otherwise.
    use std::os::unix::fs::PermissionsExt;
    let mode = |n: &str| std::fs::metadata(p(n)).unwrap().permissions().mode() & 0o7777;
    std::fs::set_permissions(p("old"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    let out = run(&[&p("old"), &p("patch"), "--out".as_ref(), &p("suid")]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode("suid"), 0o4755);
    let out = run(&[
        &p("old"),
        &p("patch"),
        "--out".as_ref(),
        &p("plain"),
        "--mode".as_ref(),
        "0644".as_ref(),
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mode("plain"), 0o644);
    assert_eq!(std::fs::read(p("plain")).unwrap(), new);
    let out = run(&[
        &p("old"),
        &p("patch"),
        "--out=x".as_ref(),
        "--mode=9".as_ref(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("octal"), "{err}");

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

#[test]
fn reading_commands_on_a_device_root_that_does_not_exist_create_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed([4; 32]);
    let pubp = dir.path().join("k.pub");
    std::fs::write(&pubp, key.public().to_text()).unwrap();
    let folder = dir.path().join("release");
    std::fs::create_dir(&folder).unwrap();
    let root = dir.path().join("no/such/root");
    for cmd in ["check", "status", "rollback"] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_deltaroot-agent"))
            .arg("--root")
            .arg(&root)
            .arg("--folder")
            .arg(&folder)
            .args(["--product", "demo", "--device-id", "test"])
            .arg("--trust")
            .arg(&pubp)
            .arg(cmd)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd}: {out:?}");
        assert!(
            err.contains(&root.display().to_string()) && err.contains("does not exist"),
            "{cmd}: {err}"
        );
        assert!(!dir.path().join("no").exists(), "{cmd} created the root");
    }
}

#[test]
fn the_update_deadline_comes_from_toml_and_the_flag_overrides_it() {
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "update_deadline_secs = 600\n").unwrap();
    let cfg_arg = cfg.to_str().unwrap();
    let cli =
        deltaroot_agent::Cli::try_parse_from(["deltaroot-agent", "--config", cfg_arg, "status"])
            .unwrap();
    assert_eq!(cli.settings().unwrap().update_deadline_secs, Some(600));
    let cli = deltaroot_agent::Cli::try_parse_from([
        "deltaroot-agent",
        "--config",
        cfg_arg,
        "--update-deadline-secs",
        "30",
        "status",
    ])
    .unwrap();
    assert_eq!(cli.settings().unwrap().update_deadline_secs, Some(30));
}

#[test]
fn the_bandwidth_limit_comes_from_toml_and_the_flag_reads_sizes() {
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "max_rate = 250000\n").unwrap();
    let cfg_arg = cfg.to_str().unwrap();
    let settings = |extra: &[&str]| {
        let mut args = vec!["deltaroot-agent", "--config", cfg_arg];
        args.extend_from_slice(extra);
        args.push("status");
        deltaroot_agent::Cli::try_parse_from(args).map(|c| c.settings().unwrap().max_rate)
    };
    assert_eq!(settings(&[]).unwrap(), Some(250_000));
    assert_eq!(settings(&["--max-rate", "2M"]).unwrap(), Some(2_000_000));
    assert_eq!(settings(&["--max-rate", "64KiB"]).unwrap(), Some(65_536));
    let err = settings(&["--max-rate", "fast"]).err().unwrap().to_string();
    assert!(err.contains("\"fast\" is not a size"), "{err}");
}

/// Every `ExecStart` of `deploy/` that runs the agent parses with its command line, so a
/// flag renamed in the code cannot leave a unit that fails at boot.
#[test]
fn the_deploy_units_run_the_agent_with_flags_it_has() {
    use clap::Parser;
    let deploy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let mut seen = Vec::new();
    for e in std::fs::read_dir(&deploy).unwrap() {
        let path = e.unwrap().path();
        if path.extension().and_then(|x| x.to_str()) != Some("service") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            let Some(cmd) = line.strip_prefix("ExecStart=/usr/bin/deltaroot-agent ") else {
                continue;
            };
            let args = std::iter::once("deltaroot-agent").chain(cmd.split_whitespace());
            if let Err(e) = deltaroot_agent::Cli::try_parse_from(args) {
                panic!("{}: {cmd}: {e}", path.display());
            }
            seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "deltaroot-agent.service",
            "deltaroot-boot-check.service",
            "deltaroot-health.service"
        ]
    );
}
