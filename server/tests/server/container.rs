//! The server's container image (`deploy/container`), built by `build.sh` from this test's
//! own `deltaroot-server` and run with podman as an operator runs it: on the host's network,
//! /data a host folder. The image has no shell; its process runs as uid 65532; the
//! `deltaroot-server health` subcommand (the image's HEALTHCHECK) answers 0 for the running
//! server and 1, naming the URL, for a port nothing listens on; a token made inside the
//! container publishes two releases with the real publisher, and a device folder installs
//! the first and updates to the second from the container.
//!
//! Skipped, saying so on stderr, where podman is not installed or no runtime can start a
//! container (crun is tried first, then runc: crun refuses cgroups in hybrid mode).

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use deltaroot_client::agent::{Agent, Settings};

use crate::common::deltaroot;

const EXE: &str = env!("CARGO_BIN_EXE_deltaroot-server");
const BUILD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/container/build.sh");
/// The image's user (`deploy/container/build.sh` writes it into /etc/passwd).
const UID: u32 = 65532;
/// Explicit limits: some hosts refuse the runtime's own setrlimit calls.
const LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=20000:20000",
    "--ulimit",
    "nproc=1000:1000",
];

fn skipped(why: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED container::the_image_serves_a_device_as_a_user_without_a_shell: {why}"
    );
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// podman with the runtime that starts containers here (`None`: its default).
struct Podman {
    runtime: Option<&'static str>,
}

impl Podman {
    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        if let Some(r) = self.runtime {
            c.args(["--runtime", r]);
        }
        c
    }

    /// `podman ARGS`, which must succeed: its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd().args(args).output().unwrap();
        assert!(out.status.success(), "podman {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Removes the container and the image when the test ends, however it ends.
struct Cleanup {
    image: String,
    container: String,
    runtime: Option<&'static str>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let p = Podman {
            runtime: self.runtime,
        };
        let _ = p
            .cmd()
            .args(["rm", "--force", "--volumes", "--time", "0", &self.container])
            .output();
        let _ = p.cmd().args(["rmi", "--force", &self.image]).output();
    }
}

fn random() -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    hex::encode(b)
}

#[test]
fn the_image_serves_a_device_as_a_user_without_a_shell() {
    if Command::new("podman").arg("--version").output().is_err() {
        return skipped("podman is not installed (Debian: apt-get install podman runc)");
    }
    let _network = crate::common::network_lock();
    // Before the guard, so that the container is gone before its /data is.
    let tmp = tempfile::tempdir().unwrap();
    let id = random();
    let mut cleanup = Cleanup {
        image: format!("localhost/deltaroot-server-test:{id}"),
        container: format!("deltaroot-server-test-{id}"),
        runtime: None,
    };
    let image = cleanup.image.clone();
    let name = cleanup.container.clone();

    let out = Command::new("bash")
        .args([BUILD, "--no-check", "--binary", EXE, "--tag", &image])
        .output()
        .unwrap();
    assert!(out.status.success(), "build.sh: {}", text(&out));
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        summary.starts_with(&format!("image {image}: ")),
        "{summary}"
    );
    eprintln!("{}", summary.trim());

    // The runtime that starts a container here: crun (podman's default), else runc.
    let mut failures = Vec::new();
    let podman = [None, Some("runc")].into_iter().find_map(|runtime| {
        let p = Podman { runtime };
        let out = p
            .cmd()
            .args(["run", "--rm", "--no-healthcheck"])
            .args(LIMITS)
            .args([&image, "--version"])
            .output()
            .unwrap();
        if out.status.success() {
            let v = String::from_utf8_lossy(&out.stdout);
            assert!(v.starts_with("deltaroot-server "), "{v}");
            Some(p)
        } else {
            failures.push(format!("{}: {}", runtime.unwrap_or("crun"), text(&out)));
            None
        }
    });
    let Some(podman) = podman else {
        return skipped(&format!(
            "no container runtime starts a container here:\n{}",
            failures.join("\n")
        ));
    };
    cleanup.runtime = podman.runtime;

    // /data: a host folder the image's user owns.
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::os::unix::fs::chown(&data, Some(UID), Some(UID)).unwrap();
    let port = crate::common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let volume = format!("{}:/data", data.display());
    let health_env = format!("DELTAROOT_HEALTH_URL={url}/healthz");
    // The image's own command, on this port; no health check timer (there may be no
    // systemd to run it): `podman healthcheck run` below runs the image's check.
    let mut run = vec![
        "run",
        "--detach",
        "--name",
        &name,
        "--network",
        "host",
        "--health-interval",
        "disable",
        "--env",
        &health_env,
        "--volume",
        &volume,
    ];
    run.extend(LIMITS);
    run.extend([
        image.as_str(),
        "serve",
        "--listen",
        listen.as_str(),
        "--plain-http",
        "--data",
        "/data",
    ]);
    podman.ok(&run);

    let start = Instant::now();
    while reqwest::blocking::get(format!("{url}/healthz"))
        .map(|r| r.status() != 200)
        .unwrap_or(true)
    {
        if start.elapsed() > Duration::from_secs(30) {
            let logs = podman.cmd().args(["logs", &name]).output().unwrap();
            panic!("the container did not answer /healthz: {}", text(&logs));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    // The health subcommand inside the container: the image's HEALTHCHECK, then the same
    // command against a port nothing listens on.
    let out = podman
        .cmd()
        .args(["healthcheck", "run", &name])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "podman healthcheck run: {}",
        text(&out)
    );
    let ok = podman.ok(&["exec", &name, "deltaroot-server", "health"]);
    assert_eq!(ok.trim(), format!("{url}/healthz: 200 OK ok"));
    let out = podman
        .cmd()
        .args(["exec", &name, "deltaroot-server", "health", "--url"])
        .arg("http://127.0.0.1:1/healthz")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("GET http://127.0.0.1:1/healthz"), "{err}");

    // Not root, and no shell to run anything else with.
    let pid = podman.ok(&["inspect", "--format", "{{.State.Pid}}", &name]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap();
    let uids = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uids.split_whitespace().skip(1).collect::<Vec<_>>(),
        vec![UID.to_string(); 4],
        "{uids}"
    );
    let out = podman
        .cmd()
        .args(["exec", &name, "/bin/sh", "-c", "true"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a shell in the image: {}",
        text(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/bin/sh"),
        "{}",
        text(&out)
    );

    // A token made in the container, on the server's own /data.
    let token = podman.ok(&[
        "exec",
        &name,
        "deltaroot-server",
        "token",
        "create",
        "ci",
        "--data",
        "/data",
    ]);
    let token = token.trim();
    assert!(!token.is_empty());
    use std::os::unix::fs::MetadataExt;
    let db = std::fs::metadata(data.join("deltaroot.db")).unwrap();
    assert_eq!((db.uid(), db.gid()), (UID, UID));

    // Two releases with the real publisher; a device installs the first, then updates.
    let t = tmp.path();
    let release = t.join("release");
    deltaroot(&["keygen", "--out", release.to_str().unwrap()]).unwrap();
    let key = t.join("release.key");
    let tree = |version: &str| {
        let dir = t.join(format!("tree-{version}"));
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::write(dir.join("etc/os-release"), format!("VERSION={version}\n")).unwrap();
        std::fs::write(
            dir.join("etc/motd"),
            "a container served this\n".repeat(100),
        )
        .unwrap();
        dir
    };
    let (one, two) = (tree("1"), tree("2"));
    let publish = |trees: &[&Path], from: Option<&str>, version: &str| {
        let mut args: Vec<&str> = trees.iter().map(|p| p.to_str().unwrap()).collect();
        args.insert(0, "publish");
        if let Some(f) = from {
            args.extend(["--from-version", f]);
        }
        args.extend([
            "--product",
            "demo",
            "--version",
            version,
            "--key",
            key.to_str().unwrap(),
            "--server",
            &url,
            "--token",
            token,
            "--quiet",
            "--level",
            "3",
        ]);
        deltaroot(&args).unwrap_or_else(|e| panic!("publishing {version}: {e}"));
    };
    let root = t.join("device");
    std::fs::create_dir(&root).unwrap();
    let agent = Agent::new(Settings {
        root: Some(root.clone()),
        server: Some(url.clone()),
        product: Some("demo".into()),
        trust: vec![t.join("release.pub")],
        device_id: Some("container-test".into()),
        ..Settings::default()
    })
    .unwrap();
    publish(&[one.as_path()], None, "1");
    agent.update().unwrap();
    publish(&[one.as_path(), two.as_path()], Some("1"), "2");
    let report = format!("{:?}", agent.update().unwrap());
    assert!(report.contains("version: \"2\""), "{report}");
    assert_eq!(
        std::fs::read_link(root.join("current")).unwrap(),
        Path::new("deployments/2")
    );
    assert_eq!(
        std::fs::read_to_string(root.join("current/etc/os-release")).unwrap(),
        "VERSION=2\n"
    );
    // The container is still healthy after serving them.
    podman.ok(&["exec", &name, "deltaroot-server", "health"]);
}

/// `deploy/compose/compose.yaml` checked by `deploy/compose/check.py` (no compose tool
/// checks a file offline): its structure, and every flag and `DELTAROOT_*` variable the
/// replicas use against this test's `deltaroot-server --help`.
#[test]
fn the_compose_file_runs_replicas_with_the_servers_real_flags() {
    let check = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/compose/check.py");
    let yaml = Command::new("python3").args(["-c", "import yaml"]).output();
    if !yaml.is_ok_and(|o| o.status.success()) {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED container::the_compose_file_runs_replicas_with_the_servers_real_flags: \
             python3 with PyYAML is not installed (Debian: apt-get install python3-yaml)"
        );
        return;
    }
    let out = Command::new("python3")
        .args([check, "--server-bin", EXE])
        .output()
        .unwrap();
    assert!(out.status.success(), "check.py: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("6 services checked"),
        "{}",
        text(&out)
    );
}
