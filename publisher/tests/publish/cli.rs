//! The `deltaroot` command's own behaviour: tar input, a static release folder installed
//! from by a device, single-file `diff`/`apply` (and the mode `apply` gives), help lines
//! and the version, completions and man pages, progress lines.

use std::path::Path;
use std::process::Command;

use deltaroot_client::agent::{Agent, Settings};
use deltaroot_format::tree;
use deltaroot_publisher::input::InputTree;

use crate::common::{fails, fixture, publish_args, run, Static, BIN};

#[test]
fn tar_and_tar_zst_read_like_the_directory() {
    let fx = fixture().join("v2");
    let tmp = tempfile::tempdir().unwrap();
    let tar = tmp.path().join("v2.tar");
    let st = Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
        .arg(&fx)
        .args(["-cf"])
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(st.success());
    let zst = tmp.path().join("v2.tar.zst");
    std::fs::write(
        &zst,
        zstd::encode_all(std::fs::File::open(&tar).unwrap(), 3).unwrap(),
    )
    .unwrap();
    let dir = InputTree::open(&fx, &|_| {}).unwrap();
    for archive in [&tar, &zst] {
        let t = InputTree::open(archive, &|_| {}).unwrap();
        let diffs = tree::differences(&dir.entries, &t.entries);
        assert!(
            diffs.is_empty(),
            "{}:\n{}",
            archive.display(),
            diffs.join("\n")
        );
        for e in &t.entries {
            if let Some((h, _)) = e.file() {
                assert_eq!(deltaroot_format::Hash::of(&t.read(&h).unwrap()), h);
            }
        }
    }
}

#[test]
fn static_release_folder_installs_a_device() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("rel");
    run(&["keygen", "--out", key.to_str().unwrap()]);
    let out = tmp.path().join("out");
    let (o, k) = (out.to_str().unwrap(), key.with_extension("key"));
    let k = k.to_str().unwrap();
    let v1 = fx.join("v1");
    let v2 = fx.join("v2");
    run(&[
        "publish",
        v1.to_str().unwrap(),
        "--product",
        "demo",
        "--version",
        "1",
        "--key",
        k,
        "--out",
        o,
        "--quiet",
        "--level",
        "3",
    ]);
    let report = tmp.path().join("report.tsv");
    let summary = run(&publish_args(
        [v1.to_str().unwrap(), v2.to_str().unwrap()],
        ["1", "2"],
        k,
        &[
            "--out",
            o,
            "--quiet",
            "--level",
            "3",
            "--json",
            "--memory-mib",
            "64",
            "--report",
            report.to_str().unwrap(),
        ],
    ));
    let summary: serde_json::Value = serde_json::from_str(&summary).unwrap();
    assert!(
        summary["download_bytes"].as_u64().unwrap()
            < summary["image_compressed_bytes"].as_u64().unwrap() / 5
    );
    // The report lists every download, largest first, and adds up to the summary's total.
    let report = std::fs::read_to_string(tmp.path().join("report.tsv")).unwrap();
    let rows: Vec<Vec<&str>> = report
        .lines()
        .skip(1)
        .map(|l| l.split('\t').collect())
        .collect();
    let bytes: Vec<u64> = rows.iter().map(|r| r[0].parse().unwrap()).collect();
    assert!(
        !rows.is_empty() && bytes.windows(2).all(|w| w[0] >= w[1]),
        "{report}"
    );
    assert_eq!(
        bytes.iter().sum::<u64>(),
        summary["download_bytes"].as_u64().unwrap()
    );
    assert!(
        rows.iter().all(|r| r.len() == 5 && !r[4].is_empty()),
        "{report}"
    );
    // The small changed files went in packs, which the plan file names.
    assert!(summary["packs"].as_u64().unwrap() >= 1, "{summary}");
    assert!(
        rows.iter().filter(|r| r[3] == "yes").count() > 40,
        "{report}"
    );
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("v1/products/demo/plans/1/2")).unwrap())
            .unwrap();
    for p in plan["packs"].as_array().unwrap() {
        let hash = p["hash"].as_str().unwrap();
        let file = out.join(format!("packs/{}/{hash}", &hash[..2]));
        assert_eq!(
            std::fs::metadata(file).unwrap().len(),
            p["bytes"].as_u64().unwrap()
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("v1/products/demo/channels/stable/latest")).unwrap(),
        "2\n"
    );

    let web = Static::start(&out);
    // A web server serving the folder is a release folder to the agent (`folder` with a
    // URL): nothing there signs plans or answers, as a server does.
    let agent = Agent::new(Settings {
        root: Some(tmp.path().join("device")),
        folder: Some(web.1.clone().into()),
        product: Some("demo".into()),
        trust: vec![key.with_extension("pub")],
        ..Settings::default()
    })
    .unwrap();
    agent.install("1").unwrap();
    let deltaroot_client::agent::UpdateOutcome::Updated(r) = agent.install("2").unwrap() else {
        panic!("2 not installed")
    };
    assert_eq!(
        r.downloaded_bytes,
        summary["download_bytes"].as_u64().unwrap()
    );
    let diffs = tree::differences(
        &tree::scan(&v2).unwrap(),
        &tree::scan(&tmp.path().join("device/current")).unwrap(),
    );
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[test]
fn single_file_diff_and_apply_round_trip_and_refuse_the_wrong_base() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let (old, new) = (fx.join("v1/usr/bin/hello"), fx.join("v2/usr/bin/hello"));
    let patch = tmp.path().join("hello.patch");
    let back = tmp.path().join("hello.new");
    let said = run(&[
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        "--out",
        patch.to_str().unwrap(),
    ]);
    assert!(said.contains("bytes by"), "{said}");
    assert!(std::fs::metadata(&patch).unwrap().len() < std::fs::metadata(&new).unwrap().len() / 4);
    run(&[
        "apply",
        old.to_str().unwrap(),
        patch.to_str().unwrap(),
        "--out",
        back.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&new).unwrap());

    let wrong = fx.join("v1/etc/passwd");
    let out = Command::new(BIN)
        .args([
            "apply",
            wrong.to_str().unwrap(),
            patch.to_str().unwrap(),
            "--out",
        ])
        .arg(tmp.path().join("x"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("applies to"), "{err}");
    let mut cut = std::fs::read(&patch).unwrap();
    cut.truncate(cut.len() - 3);
    std::fs::write(&patch, cut).unwrap();
    let out = Command::new(BIN)
        .args([
            "apply",
            old.to_str().unwrap(),
            patch.to_str().unwrap(),
            "--out",
        ])
        .arg(tmp.path().join("y"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        !tmp.path().join("y").exists(),
        "a failed apply writes nothing"
    );
}

#[test]
fn apply_keeps_the_old_mode_or_sets_the_given_one() {
    use std::os::unix::fs::PermissionsExt;
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let old = tmp.path().join("hello");
    std::fs::copy(fx.join("v1/usr/bin/hello"), &old).unwrap();
    let new = fx.join("v2/usr/bin/hello");
    let patch = tmp.path().join("hello.patch");
    let p = patch.to_str().unwrap();
    run(&[
        "diff",
        old.to_str().unwrap(),
        new.to_str().unwrap(),
        "--out",
        p,
        "--level",
        "3",
    ]);
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o750)).unwrap();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    let (kept, given) = (tmp.path().join("kept"), tmp.path().join("given"));
    run(&[
        "apply",
        old.to_str().unwrap(),
        p,
        "--out",
        kept.to_str().unwrap(),
    ]);
    assert_eq!(mode(&kept), 0o750);
    let o = old.to_str().unwrap();
    run(&[
        "apply",
        o,
        p,
        "--out",
        given.to_str().unwrap(),
        "--mode",
        "4755",
    ]);
    assert_eq!(mode(&given), 0o4755);
    assert_eq!(std::fs::read(&given).unwrap(), std::fs::read(&new).unwrap());
    let err = fails(&[
        "apply",
        o,
        p,
        "--out",
        given.to_str().unwrap(),
        "--mode",
        "0o19",
    ]);
    assert!(err.contains("not an octal mode"), "{err}");
}

#[test]
fn every_option_has_help_and_version_names_the_command() {
    use clap::CommandFactory;
    let cli = deltaroot_publisher::cli::Cli::command();
    let mut missing = Vec::new();
    for name in ["publish", "keygen", "diff", "apply"] {
        let sub = cli.find_subcommand(name).unwrap();
        for arg in sub.get_arguments() {
            if arg.get_help().is_none() && !["help", "version"].contains(&arg.get_id().as_str()) {
                missing.push(format!("{name} {}", arg.get_id()));
            }
        }
    }
    assert!(missing.is_empty(), "no help line: {missing:?}");
    assert_eq!(
        run(&["--version"]),
        format!("deltaroot {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn completions_and_man_pages_cover_the_commands_and_their_options() {
    let script = run(&["completions", "bash"]);
    for sub in ["keygen", "publish", "diff", "apply", "completions", "man"] {
        assert!(
            script.contains(sub),
            "{sub} missing from the bash completions"
        );
    }
    assert!(script.contains("--from-version"));
    assert!(run(&["completions", "zsh"]).contains("publish"));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man1");
    run(&["man", "--out", dir.to_str().unwrap()]);
    let page = |name: &str| {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    assert!(page("deltaroot.1").contains("publish"));
    let publish = page("deltaroot-publish.1");
    for opt in [
        "product",
        "from\\-version",
        "ca\\-cert",
        "skip\\-method",
        "exclude",
    ] {
        assert!(publish.contains(opt), "{opt} missing from:\n{publish}");
    }
    // The page is one man(1) reads, when man is installed.
    if let Ok(out) = Command::new("man")
        .arg("-l")
        .arg(dir.join("deltaroot-publish.1"))
        .env("MANPAGER", "cat")
        .env("MANWIDTH", "100")
        .output()
    {
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("--from-version"), "{text}");
        }
    }
}

#[test]
fn publish_prints_progress_lines_when_stderr_is_not_a_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("rel");
    run(&["keygen", "--out", key.to_str().unwrap()]);
    let k = key.with_extension("key");
    let v1 = fixture().join("v1");
    let publish = |out: &str, extra: &str| {
        let o = Command::new(BIN)
            .arg("publish")
            .arg(&v1)
            .args(["--product", "demo", "--version", "1", "--key"])
            .arg(&k)
            .args(["--out", out, "--level", "3", extra])
            .output()
            .unwrap();
        assert!(o.status.success());
        String::from_utf8(o.stderr).unwrap()
    };
    let out = tmp.path().join("a");
    let err = publish(out.to_str().unwrap(), "--progress-every=0");
    let encoding: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("encoding: "))
        .collect();
    assert!(
        encoding.iter().any(|l| {
            // encoding: 1,234/5,678 files, 120.0 MB of 400.0 MB
            let counted = |l: &str| {
                let (files, bytes) = l.strip_prefix("encoding: ")?.split_once(" files, ")?;
                let (done, total) = files.split_once('/')?;
                let digits =
                    |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == ',');
                Some(digits(done) && digits(total) && bytes.contains("B of "))
            };
            counted(l) == Some(true)
        }),
        "{err}"
    );
    assert!(err.lines().any(|l| l.starts_with("scanning: ")), "{err}");
    assert!(
        err.lines().any(|l| l.starts_with("encoding: done, ")),
        "{err}"
    );
    let quiet = publish(tmp.path().join("b").to_str().unwrap(), "--quiet");
    assert!(quiet.is_empty(), "{quiet}");
}

/// `--no-channel` publishes a release without pointing any channel at it; `--percent` (a
/// server's staged rollout) has no meaning for a static folder and is refused.
#[test]
fn no_channel_publishes_without_moving_a_channel() {
    let fx = fixture();
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("rel");
    run(&["keygen", "--out", key.to_str().unwrap()]);
    let k = key.with_extension("key");
    let v1 = fx.join("v1");
    let publish = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "publish",
            v1.to_str().unwrap(),
            "--product",
            "demo",
            "--version",
            "1",
            "--key",
            k.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--quiet",
            "--level",
            "3",
        ];
        args.extend_from_slice(extra);
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let (with, without) = (tmp.path().join("with"), tmp.path().join("without"));
    let args = publish(&with, &[]);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let latest = "v1/products/demo/channels/stable/latest";
    assert_eq!(std::fs::read_to_string(with.join(latest)).unwrap(), "1\n");
    let args = publish(&without, &["--no-channel"]);
    run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(without
        .join("v1/products/demo/releases/1/manifest")
        .is_file());
    assert!(!without.join("v1/products/demo/channels").exists());
    let args = publish(&tmp.path().join("pct"), &["--percent", "10"]);
    let err = fails(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(err.contains("--server"), "{err}");
}
