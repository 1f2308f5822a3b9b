//! Backups that restore, on both backends: two releases published, a backup taken while the
//! server runs (`deltaroot-server backup`), restored into an empty place (a data folder, or
//! a new PostgreSQL database and bucket prefix), a server on the restored place: the audit
//! log is there, the same token works, and a device on 1.0 updates to 2.0 from it.

use std::ffi::OsString;
use std::time::Duration;

use crate::common::{agent, agent_with, promote_to, runtime, Backend, Place};

on_both_backends!(a_backup_restores_a_server_that_updates_devices);

/// `deltaroot-server ARGS` with `env`: (success, stdout, stderr).
fn server_cli(args: &[OsString], env: &[(&str, String)]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_deltaroot-server"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn with(first: &[&str], rest: &[OsString]) -> Vec<OsString> {
    first
        .iter()
        .map(OsString::from)
        .chain(rest.iter().cloned())
        .collect()
}

/// A `deltaroot-server serve` process, killed when dropped.
struct Serving(std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn a_backup_restores_a_server_that_updates_devices(backend: Backend) {
    let f = crate::fleet::fleet(backend, 2, "1.0");
    let root = tempfile::tempdir().unwrap();
    let a = agent(&f.server, root.path(), &f.trust);
    a.install("1.0").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let backup = tmp.path().join("backup");
    let (from, env) = f.server.place.cli(f.server.data.path());
    let out_arg = [OsString::from("--out"), backup.clone().into()];

    let (ok, out, err) = server_cli(&with(&["backup"], &[from, out_arg.to_vec()].concat()), &env);
    assert!(ok, "{err}");
    assert!(out.starts_with("backed up the database and "), "{out}");
    assert!(!out.contains(" and 0 stored files"), "{out}");
    let snapshot = match backend {
        Backend::Sqlite => "deltaroot.db",
        Backend::PostgresS3 => "deltaroot.pgdump",
    };
    assert!(backup.join(snapshot).is_file(), "{out}");
    // A second backup copies nothing new.
    let (from, _) = f.server.place.cli(f.server.data.path());
    let (ok, again, err) = server_cli(&with(&["backup"], &[from, out_arg.to_vec()].concat()), &env);
    assert!(ok, "{err}");
    assert!(again.contains(" and 0 stored files (0 bytes; "), "{again}");

    // Restored into an empty place of the same kind.
    let rt = runtime();
    let restored = tmp.path().join("restored");
    let twin = f.server.place.empty_twin(&rt, &restored);
    let (to, to_env) = twin.cli(&restored);
    let from_arg = [OsString::from("--from"), backup.clone().into()];
    let restore = with(&["restore"], &[from_arg.to_vec(), to.clone()].concat());
    let (ok, out, err) = server_cli(&restore, &to_env);
    assert!(ok, "{err}");
    assert!(out.contains("restored the database and "), "{out}");
    assert!(!out.contains(" and 0 stored files"), "{out}");
    // Never over a database.
    let (ok, _, err) = server_cli(&restore, &to_env);
    assert!(
        !ok && (err.contains("restore into an empty data folder")
            || err.contains("already holds deltaroot's tables: restore into an empty database")),
        "{err}"
    );
    // Nor a backup of the other kind.
    if backend == Backend::PostgresS3 {
        let sqlite_dir = tmp.path().join("sqlite");
        let (ok, _, err) = server_cli(
            &with(
                &["restore", "--data"],
                &[sqlite_dir.into(), from_arg[0].clone(), from_arg[1].clone()],
            ),
            &[],
        );
        assert!(!ok && err.contains("holds a PostgreSQL snapshot"), "{err}");
    }

    // The restored place, served: the same token promotes 2.0, the device updates.
    let port = crate::common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let _serve = Serving(
        std::process::Command::new(env!("CARGO_BIN_EXE_deltaroot-server"))
            .args(["serve", "--plain-http", "--listen", &listen])
            .args(&to)
            .envs(to_env.iter().map(|(k, v)| (k, v)))
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://{listen}");
    let start = std::time::Instant::now();
    while reqwest::blocking::get(format!("{url}/healthz")).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the restored server did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let c = deltaroot_server::client::Client::new(&url, Some(&f.server.token), None).unwrap();
    let audit = rt.block_on(c.audit("demo")).unwrap();
    assert!(audit.iter().any(|e| e.action == "promote"), "{audit:?}");
    rt.block_on(c.promote("demo", "stable", &promote_to("2.0")))
        .unwrap();
    let a = agent_with(&f.server, root.path(), &f.trust, |s| {
        s.server = Some(url.clone());
        s.ca_cert = None;
    });
    let report = a.update().unwrap();
    drop(_serve);
    remove(&twin, &rt);
    assert!(format!("{report:?}").contains("2.0"), "{report:?}");
    assert_eq!(
        std::fs::read_link(root.path().join("current")).unwrap(),
        std::path::Path::new("deployments/2.0")
    );
}

fn remove(place: &Place, rt: &tokio::runtime::Runtime) {
    place.remove(rt);
}
