//! The server as operators and hostile clients meet it, on both backends: every listed
//! route served, HTTP/2 and HTTP/1.1, two replicas on one database and store, bad requests
//! that must change nothing, the operator CLI, and graceful shutdown. The fleet it runs
//! against is `crate::fleet`'s.

use std::time::Duration;

use deltaroot_format::api::{ChannelStatus, CheckResponse};

use crate::common::{agent, promote_to, Backend, Server};
use crate::fleet::{fleet, same_tree, status_of, updated};

on_both_backends!(
    two_replicas_serve_one_fleet,
    bad_requests_get_clear_4xx_and_change_nothing,
    operator_cli_against_a_running_server,
    shutdown_finishes_downloads_in_flight,
);

/// Every route the server lists (and `openapi.json` documents, see the unit test) is
/// served: no 405, and no bare 404 of an unknown route.
#[test]
fn every_listed_route_is_served() {
    let f = fleet(Backend::Sqlite, 1, "1.0");
    let h = f.server.http();
    let hash = "00".repeat(32);
    for (methods, path) in deltaroot_server::api::ROUTES {
        let concrete = path
            .replace("{product}", "demo")
            .replace("{channel}", "stable")
            .replace("{version}", "1.0")
            .replace("{file}", "manifest")
            .replace("{from}", "-")
            .replace("{to}", "1.0")
            .replace("{device}", "d1")
            .replace("{fan}", "00")
            .replace("{name}", &hash);
        for m in methods.split(' ') {
            let r = h
                .request(m.parse().unwrap(), format!("{}{concrete}", f.server.url))
                .send()
                .unwrap();
            let status = r.status().as_u16();
            let body = r.bytes().unwrap();
            assert_ne!(status, 405, "{m} {path}");
            assert!(
                status != 404 || !body.is_empty() || m == "HEAD",
                "{m} {path}: unrouted 404"
            );
        }
    }
}

/// HTTPS negotiates HTTP/2 by ALPN with a client that offers it and HTTP/1.1 with one that
/// does not; plain HTTP (only when asked for) speaks HTTP/1.1.
#[test]
fn https_speaks_http2_and_http1() {
    let f = fleet(Backend::Sqlite, 1, "1.0");
    let url = format!("{}/healthz", f.server.url);
    let h2 = f.server.http().get(&url).send().unwrap();
    assert_eq!(
        (h2.version(), h2.status().as_u16()),
        (reqwest::Version::HTTP_2, 200)
    );
    let pem = crate::common::tls().cert.as_bytes();
    let h1 = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(pem).unwrap())
        .http1_only()
        .build()
        .unwrap()
        .get(&url)
        .send()
        .unwrap();
    assert_eq!(
        (h1.version(), h1.status().as_u16()),
        (reqwest::Version::HTTP_11, 200)
    );
    let plain = reqwest::blocking::get(format!("{}/healthz", f.server.plain_url)).unwrap();
    assert_eq!(plain.version(), reqwest::Version::HTTP_11);
}

fn two_replicas_serve_one_fleet(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    let b = f.server.replica();
    let root = tempfile::tempdir().unwrap();
    let on_b = agent(&b, root.path(), &f.trust);
    assert_eq!(updated(on_b.update().unwrap()), "1.0");
    // Promoted through B, published through A, downloaded from B.
    b.op(b.client().promote("demo", "stable", &promote_to("2.0")))
        .unwrap();
    let before = b.served();
    assert_eq!(updated(on_b.update().unwrap()), "2.0");
    assert!(b.served() > before);
    same_tree(f.tree_of(2), &root.path().join("current"));

    // Paused through A: B stops offering within its cache lifetime.
    f.server
        .op(f.server.client().pause("demo", "stable"))
        .unwrap();
    f.server.advance(Duration::from_millis(300));
    let answer: CheckResponse = b
        .http()
        .get(format!(
            "{}/v1/products/demo/channels/stable/check?current=1.0&device=x",
            b.url
        ))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert!(answer.paused && answer.update.is_none(), "{answer:?}");

    // Check-ins through B are seen through A; the audit log has both replicas' changes.
    b.flush();
    let d = f.server.op(f.server.client().device("demo", "x")).unwrap();
    assert_eq!(d.current.as_deref(), Some("1.0"));
    let all = f
        .server
        .op(f.server.client().devices("demo", None))
        .unwrap();
    let ids: Vec<&str> = all.iter().map(|d| d.device_id.as_str()).collect();
    assert!(ids.contains(&"x") && ids.is_sorted(), "{ids:?}");
    let failed = f
        .server
        .op(f.server.client().devices("demo", Some("failed")))
        .unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    let e = f
        .server
        .op(f.server.client().devices("demo", Some("melted")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("400") && e.contains("result \"melted\" is not one of"),
        "{e}"
    );
    let actions: Vec<String> = b
        .op(b.client().audit("demo"))
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(&actions[..2], ["pause", "promote"]);
}

fn bad_requests_get_clear_4xx_and_change_nothing(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    let h = f.server.http();
    let url = |p: &str| format!("{}/{p}", f.server.url);
    let before = (f.status(), f.audit_len());
    let promote = |product: &str, token: Option<&str>, body: &str| {
        let mut r = h
            .post(url(&format!(
                "v1/products/{product}/channels/stable/promote"
            )))
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        status_of(r.send().unwrap())
    };
    let tok = Some(f.server.token.as_str());
    let cases: Vec<(u16, &str, (u16, String))> = vec![
        (
            401,
            "missing or unknown",
            promote("demo", None, r#"{"version":"2.0"}"#),
        ),
        (
            401,
            "missing or unknown",
            promote("demo", Some("drt_wrong"), r#"{"version":"2.0"}"#),
        ),
        (
            404,
            "no product nope",
            promote("nope", tok, r#"{"version":"2.0"}"#),
        ),
        (
            404,
            "no release 9.0",
            promote("demo", tok, r#"{"version":"9.0"}"#),
        ),
        (400, "", promote("demo", tok, r#"{"version":"2.0""#)),
        (
            400,
            "unknown field",
            promote("demo", tok, r#"{"version":"2.0","percentage":5}"#),
        ),
        (
            400,
            "between 0 and 100",
            promote("demo", tok, r#"{"version":"2.0","percent":150}"#),
        ),
        (
            400,
            "share between 0 and 1",
            promote("demo", tok, r#"{"version":"2.0","max_failure_rate":3}"#),
        ),
        (
            400,
            "needs step_secs",
            promote("demo", tok, r#"{"version":"2.0","step_percent":5}"#),
        ),
        (
            400,
            "floor 2.0 is newer",
            promote("demo", tok, r#"{"version":"1.0","floor":"2.0"}"#),
        ),
        (
            400,
            "not a valid name",
            promote("demo", tok, r#"{"version":"../x"}"#),
        ),
    ];
    for (want, text, (got, err)) in &cases {
        assert_eq!(*got, *want, "{err}");
        assert!(err.contains(text), "{err:?} lacks {text:?}");
    }
    let post = |path: &str, body: &str| {
        status_of(
            h.post(url(path))
                .bearer_auth(&f.server.token)
                .header("content-type", "application/json")
                .body(body.to_string())
                .send()
                .unwrap(),
        )
    };
    let (s, e) = post(
        "v1/products/demo/channels/stable/rollback",
        r#"{"statement":"not base64!","signature":"AAAA"}"#,
    );
    assert_eq!((s, e.contains("base64")), (400, true), "{e}");
    let (s, e) = post("v1/products/demo/channels/nothere/pause", "{}");
    assert_eq!((s, e.contains("no channel nothere")), (404, true), "{e}");
    let (s, _) = post("v1/products/demo/channels/bad..name!/pause", "{}");
    assert_eq!(s, 400);
    // A device id the device itself would refuse (one rule, `DeviceId`): a 400 that says
    // what is wrong without echoing the id.
    for id in ["", "bad%20id", "secret%2Fkey"] {
        let (s, e) = status_of(
            h.get(url(&format!(
                "v1/products/demo/channels/stable/check?current=1.0&device={id}"
            )))
            .send()
            .unwrap(),
        );
        assert_eq!(s, 400, "{id}: {e}");
        assert!(e.contains("device id") && !e.contains("secret"), "{e}");
    }
    let (s, e) = post(
        "v1/products/demo/channels/stable/rollout",
        r#"{"percent":-1}"#,
    );
    assert_eq!((s, e.contains("between 0 and 100")), (400, true), "{e}");
    // A publish naming a method it may not skip, or one that does not exist.
    let publish = |skip: &str| {
        post(
            "v1/products/demo/releases",
            &format!(
                r#"{{"manifest":"","signature":"","public_key":"","channel":null,"from_version":null,"skip_methods":[{skip}]}}"#
            ),
        )
    };
    let (s, e) = publish(r#""xz","zstd""#);
    assert_eq!((s, e.contains("cannot hold zstd")), (400, true), "{e}");
    let (s, e) = publish(r#""lzip""#);
    assert_eq!(
        (s, e.contains("unknown delta method \"lzip\"")),
        (400, true),
        "{e}"
    );
    for q in [
        "device=has%20space",
        "device=",
        "result=maybe",
        "attempted=..%2Fx",
        "pin=a/b",
    ] {
        let (s, e) = status_of(
            h.get(url(&format!("v1/products/demo/channels/stable/check?{q}")))
                .send()
                .unwrap(),
        );
        assert_eq!(s, 400, "{q}: {e}");
    }
    // An oversized upload: 413 with a JSON body, nothing stored.
    let small = Server::start_with(backend, |c| c.max_upload = 1 << 20);
    let big = vec![0u8; (1 << 20) + 1];
    let hash = deltaroot_format::Hash::of(b"big");
    let (s, e) = status_of(
        small
            .http()
            .put(format!(
                "{}/{}",
                small.url,
                deltaroot_format::object_path(&hash)
            ))
            .bearer_auth(&small.token)
            .body(big)
            .send()
            .unwrap(),
    );
    assert_eq!(s, 413, "{e}");
    assert_eq!(
        small
            .http()
            .get(format!(
                "{}/{}",
                small.url,
                deltaroot_format::object_path(&hash)
            ))
            .send()
            .unwrap()
            .status(),
        404
    );
    let (s, _) = status_of(h.get(url("v1/products/demo/audit")).send().unwrap());
    assert_eq!(s, 401);

    assert_eq!(
        (f.status(), f.audit_len()),
        before,
        "a refused request changed something"
    );
}

fn operator_cli_against_a_running_server(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    let exe = env!("CARGO_BIN_EXE_deltaroot-server");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(exe)
            .args(args)
            .args(["--server", &f.server.url, "--product", "demo"])
            .arg("--ca-cert")
            .arg(&f.server.ca_cert)
            .env("DELTAROOT_TOKEN", &f.server.token)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["releases"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("2.0\t") && out.contains("\n1.0\t"), "{out}");
    // Times for people, not epoch seconds (the fleet's releases are dated early in 1970).
    assert!(out.contains("\tcreated 1970-01-12 "), "{out}");
    // Releases are read with a token, like channels and the audit log.
    let anon = std::process::Command::new(exe)
        .args(["releases", "--server", &f.server.url, "--product", "demo"])
        .arg("--ca-cert")
        .arg(&f.server.ca_cert)
        .env_remove("DELTAROOT_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&anon.stderr);
    assert!(!anon.status.success() && err.contains("401"), "{err}");
    let (ok, out, _) = run(&["devices"]);
    assert!(
        ok && out.contains("product demo has no devices that checked in"),
        "{out}"
    );
    let (ok, out, err) = run(&[
        "promote",
        "2.0",
        "--percent",
        "10",
        "--max-failure-rate",
        "0.5",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("demo/stable: 2.0")
            && out.contains("rollout #")
            && out.contains(
                "of version 2.0: active, offered to 10.0 % of devices; others stay on 1.0"
            ),
        "{out}"
    );
    let (ok, out, _) = run(&["pause"]);
    assert!(ok && out.contains("(paused)"), "{out}");
    let (ok, out, _) = run(&["resume"]);
    assert!(ok && !out.contains("(paused)"), "{out}");
    let keyfile = f.keys.path().join("release.key");
    std::fs::write(&keyfile, f.key.to_text()).unwrap();
    let (ok, out, err) = run(&["rollback", "1.0", "--key", keyfile.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("rolled back to 1.0 by signed downgrade"),
        "{out}"
    );
    let (ok, out, _) = run(&["status", "--json"]);
    let st: ChannelStatus = serde_json::from_str(&out).unwrap();
    assert!(ok && st.version.as_deref() == Some("1.0"));
    let (ok, out, _) = run(&["audit"]);
    assert!(ok && out.contains("rollback"), "{out}");
    let first = out.lines().next().unwrap();
    assert!(
        first.starts_with("20") && first.contains(" UTC\tci\tstable\trollback"),
        "{out}"
    );
    let (ok, _, err) = run(&["promote", "9.9"]);
    assert!(
        !ok && err.contains("404") && err.contains("no release 9.9"),
        "{err}"
    );

    // `serve` refuses to speak plain HTTP unless asked to.
    let data = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(exe)
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--plain-http"));
}

fn shutdown_finishes_downloads_in_flight(backend: Backend) {
    use std::io::Read;
    let data = tempfile::tempdir().unwrap();
    let rt = crate::common::runtime();
    let place = crate::common::Place::new(backend, &rt, data.path());
    let app = rt
        .block_on(deltaroot_server::App::start(&place.config))
        .unwrap();
    let token = deltaroot_server::new_token();
    rt.block_on(app.db.create_token("ci", &token, "all", None))
        .unwrap();
    // An incompressible object of 8 MiB.
    let mut content = vec![0u8; 8 << 20];
    let mut x = 0x9e3779b97f4a7c15u64;
    for b in content.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let object = zstd::bulk::compress(&content, 1).unwrap();
    let hash = deltaroot_format::Hash::of(&content);
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let served = rt.spawn(deltaroot_server::serve_with(
        listener,
        app.clone(),
        None,
        Duration::from_secs(30),
        async {
            let _ = rx.await;
        },
    ));
    let rel = deltaroot_format::object_path(&hash);
    let c = reqwest::blocking::Client::new();
    let r = c
        .put(format!("{url}/{rel}"))
        .bearer_auth(&token)
        .body(object.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut resp = c.get(format!("{url}/{rel}")).send().unwrap();
    let mut got = vec![0u8; 64 << 10];
    resp.read_exact(&mut got).unwrap();
    // Shut down while most of the object is still to be sent; the rest is read once the
    // server has stopped accepting connections.
    tx.send(()).unwrap();
    let addr = url.strip_prefix("http://").unwrap();
    while std::net::TcpStream::connect(addr).is_ok() {
        std::thread::yield_now();
    }
    let mut rest = Vec::new();
    resp.read_to_end(&mut rest).unwrap();
    got.extend_from_slice(&rest);
    assert_eq!(got.len(), object.len());
    assert!(got == object, "the download was cut or changed");
    rt.block_on(served).unwrap().unwrap();
    assert!(
        c.get(format!("{url}/healthz")).send().is_err(),
        "the server still accepts connections"
    );
    place.remove(&rt);
}

#[test]
fn completions_and_man_pages_cover_every_command() {
    let exe = env!("CARGO_BIN_EXE_deltaroot-server");
    let out = std::process::Command::new(exe)
        .args(["completions", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let script = String::from_utf8(out.stdout).unwrap();
    for sub in [
        "serve",
        "promote",
        "rollback",
        "token",
        "create",
        "completions",
    ] {
        assert!(
            script.contains(sub),
            "{sub} missing from the bash completions"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(exe)
        .args(["man", "--out"])
        .arg(dir.path().join("man1"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = |name: &str| {
        std::fs::read_to_string(dir.path().join("man1").join(name))
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    assert!(page("deltaroot-server.1").contains("promote"));
    let serve = page("deltaroot-server-serve.1");
    for opt in ["tls\\-cert", "poll\\-jitter", "max\\-upload\\-mib"] {
        assert!(serve.contains(opt), "{opt} missing from:\n{serve}");
    }
    assert!(page("deltaroot-server-token-create.1").contains(".TH"));
}
