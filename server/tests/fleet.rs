//! The fleet, end to end on both backends: promote, pause, signed rollback, staged rollouts
//! and their automatic stop, pinning, a device several versions behind, floors, two
//! replicas on one database and store, the operator CLI, graceful shutdown, and bad
//! requests that must change nothing. Devices talk HTTPS; trees are small and made here.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use deltaroot_client::agent::UpdateOutcome;
use deltaroot_client::format::api::{ChannelStatus, CheckResponse, PromoteRequest};
use deltaroot_client::format::{Downgrade, SecretKey};
use deltaroot_publisher::engine::{candidates, EngineOptions, MethodSet};
use deltaroot_publisher::publish::{publish, PublishOptions};
use deltaroot_publisher::sink::ServerSink;
use deltaroot_server::fleet::bucket;

mod common;
use common::{agent, agent_with, key, Backend, Server};

on_both_backends!(
    promote_pause_resume_with_an_audit_log,
    rollback_is_a_signed_downgrade,
    staged_rollout_reaches_only_its_share,
    rollout_stops_itself_on_failures,
    pinned_devices_follow_their_version,
    device_several_versions_behind_and_floors,
    server_built_deltas_skip_the_publishers_skipped_methods,
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
    let pem = std::fs::read(&common::tls().cert).unwrap();
    let h1 = reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap())
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

/// Release `n` of a small tree: some files change every release, one never does.
fn tree(n: u32) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::create_dir_all(p.join("etc")).unwrap();
    std::fs::create_dir_all(p.join("bin")).unwrap();
    std::fs::write(p.join("etc/version"), format!("{n}\n")).unwrap();
    std::fs::write(
        p.join("etc/common"),
        "the same in every release\n".repeat(50),
    )
    .unwrap();
    let mut app: Vec<u8> = (0..40_000u32).map(|i| (i * 7 % 251) as u8).collect();
    for i in 0..n as usize * 10 {
        app[i * 97 % 40_000] = n as u8;
    }
    std::fs::write(p.join("bin/app"), app).unwrap();
    std::fs::write(p.join(format!("etc/only-in-{n}")), format!("{n}")).unwrap();
    d
}

/// A server with releases 1.0 … `count`.0 published to channel `ci` (each from the one
/// before, created 1000 s apart) and `stable` pointing at `stable`.
struct Fleet {
    server: Server,
    http: reqwest::blocking::Client,
    key: SecretKey,
    trust: std::path::PathBuf,
    _keys: tempfile::TempDir,
    trees: Vec<tempfile::TempDir>,
}

fn fleet(backend: Backend, count: u32, stable: &str) -> Fleet {
    let server = Server::start(backend);
    let (k, trust, keys) = key(1);
    let trees: Vec<_> = (1..=count).map(tree).collect();
    for n in 1..=count {
        publish_release(&server, &k, &trees, n);
    }
    let f = Fleet {
        http: server.http(),
        server,
        key: k,
        trust,
        _keys: keys,
        trees,
    };
    f.promote(stable, PromoteRequest::default());
    f
}

fn publish_release(server: &Server, k: &SecretKey, trees: &[tempfile::TempDir], n: u32) {
    publish_skipping(server, k, trees, n, MethodSet::default());
}

/// [`publish_release`] with `deltaroot publish --skip-method` for each method of `skip`.
fn publish_skipping(
    server: &Server,
    k: &SecretKey,
    trees: &[tempfile::TempDir],
    n: u32,
    skip: MethodSet,
) {
    let sink = ServerSink::new(&server.plain_url, &server.token).unwrap();
    let old = (n > 1).then(|| trees[n as usize - 2].path());
    let opts = PublishOptions {
        product: "demo".into(),
        version: format!("{n}.0"),
        from_version: (n > 1).then(|| format!("{}.0", n - 1)),
        channel: "ci".into(),
        engine: EngineOptions {
            level: 3,
            skip,
            ..EngineOptions::default()
        },
        created: Some(1_000_000 + u64::from(n) * 1000),
        progress: false,
        memory_budget: deltaroot_publisher::publish::DEFAULT_MEMORY_BUDGET,
        packs: true,
    };
    publish(old, trees[n as usize - 1].path(), k, &sink, &opts).unwrap();
}

impl Fleet {
    fn promote(&self, version: &str, mut req: PromoteRequest) -> ChannelStatus {
        req.version = version.into();
        self.server
            .op(self.server.client().promote("demo", "stable", &req))
            .unwrap()
    }

    fn status(&self) -> ChannelStatus {
        self.server
            .op(self.server.client().channel("demo", "stable"))
            .unwrap()
    }

    fn audit_len(&self) -> usize {
        self.server
            .op(self.server.client().audit("demo"))
            .unwrap()
            .len()
    }

    /// An update check as device `id` running `current`.
    fn check(&self, query: &str) -> CheckResponse {
        let url = format!(
            "{}/v1/products/demo/channels/stable/check?{query}",
            self.server.url
        );
        let r = self.http.get(&url).send().unwrap();
        assert_eq!(r.status(), 200, "{url}");
        r.json().unwrap()
    }

    fn offered(&self, query: &str) -> Option<String> {
        self.check(query).update.map(|u| u.version)
    }

    fn tree_of(&self, n: usize) -> &Path {
        self.trees[n - 1].path()
    }
}

fn updated(o: UpdateOutcome) -> String {
    match o {
        UpdateOutcome::Updated(r) => r.version,
        other => panic!("expected an update, got {other:?}"),
    }
}

fn same_tree(want: &Path, got: &Path) {
    let diffs = deltaroot_client::tree::differences(
        &deltaroot_client::tree::scan(want).unwrap(),
        &deltaroot_client::tree::scan(got).unwrap(),
    );
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// The status code and error text of an answer.
fn status_of(r: reqwest::blocking::Response) -> (u16, String) {
    let s = r.status().as_u16();
    let text = r.text().unwrap();
    let body: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{s}: not JSON: {text}"));
    (s, body["error"].as_str().unwrap_or_default().to_string())
}

fn promote_pause_resume_with_an_audit_log(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    let root = tempfile::tempdir().unwrap();
    let a = agent(&f.server, root.path(), &f.trust);
    assert_eq!(updated(a.update().unwrap()), "1.0");

    let st = f.promote("2.0", PromoteRequest::default());
    assert_eq!(st.version.as_deref(), Some("2.0"));
    let answer = a.check().unwrap();
    assert_eq!(answer.update.as_ref().unwrap().version, "2.0");
    let next = answer.next_check_secs.unwrap();
    assert!((480..=720).contains(&next), "poll 600 s ± 20 %: {next}");

    let c = f.server.client();
    assert!(f.server.op(c.pause("demo", "stable")).unwrap().paused);
    let answer = a.check().unwrap();
    assert!(answer.paused && answer.update.is_none(), "{answer:?}");
    assert!(matches!(
        a.update().unwrap(),
        UpdateOutcome::UpToDate { .. }
    ));
    assert!(!f.server.op(c.resume("demo", "stable")).unwrap().paused);
    assert_eq!(updated(a.update().unwrap()), "2.0");
    same_tree(f.tree_of(2), &root.path().join("current"));

    // Promoting an older release is refused: that is a rollback, which must be signed.
    let err = f
        .server
        .op(c.promote(
            "demo",
            "stable",
            &PromoteRequest {
                version: "1.0".into(),
                ..PromoteRequest::default()
            },
        ))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("409") && err.contains("signed downgrade"),
        "{err}"
    );
    assert_eq!(f.status().version.as_deref(), Some("2.0"));

    let audit = f.server.op(c.audit("demo")).unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .rev()
        .map(|e| (e.action.as_str(), e.who.as_str()))
        .collect();
    assert_eq!(
        actions,
        [
            ("publish", "ci"),
            ("promote", "ci"),
            ("publish", "ci"),
            ("promote", "ci"),
            ("promote", "ci"),
            ("promote", "ci"),
            ("pause", "ci"),
            ("resume", "ci"),
        ],
        "{audit:?}"
    );
    assert_eq!(audit[2].detail["version"], "2.0");
    assert!(audit.iter().all(|e| e.at > 1_700_000_000));

    let m = f
        .server
        .http()
        .get(format!("{}/metrics", f.server.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(m.contains("deltaroot_channel_paused{product=\"demo\",channel=\"stable\"} 0"));
    assert!(m.contains("deltaroot_rollout_percent{product=\"demo\",channel=\"stable\"} 100"));
    assert!(m.contains(
        "deltaroot_http_requests_total{route=\"/v1/products/{product}/channels/{channel}/check\",status=\"2xx\"}"
    ));
    assert!(m.contains(
        "deltaroot_http_request_duration_seconds_bucket{route=\"/objects/{fan}/{name}\""
    ));
}

fn rollback_is_a_signed_downgrade(backend: Backend) {
    let f = fleet(backend, 2, "2.0");
    let root = tempfile::tempdir().unwrap();
    let a = agent(&f.server, root.path(), &f.trust);
    assert_eq!(updated(a.update().unwrap()), "2.0");
    let c = f.server.client();

    // Signed with another key: refused, nothing changes.
    let before = f.audit_len();
    let other = SecretKey::from_seed([9; 32]);
    let err = f
        .server
        .op(c.rollback("demo", "stable", "1.0", &other))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("400") && err.contains("does not verify"),
        "{err}"
    );
    // A statement for another channel, properly signed: refused too.
    let wrong = Downgrade {
        product: "demo".into(),
        channel: "beta".into(),
        version: "1.0".into(),
        issued: 2_000_000_000,
    }
    .sign(&f.key)
    .to_offer();
    let (s, e) = status_of(
        f.server
            .http()
            .post(format!(
                "{}/v1/products/demo/channels/stable/rollback",
                f.server.url
            ))
            .bearer_auth(&f.server.token)
            .json(&wrong)
            .send()
            .unwrap(),
    );
    assert_eq!(s, 400, "{e}");
    assert!(e.contains("demo/beta"), "{e}");
    assert_eq!(f.status().version.as_deref(), Some("2.0"));
    assert_eq!(f.audit_len(), before);

    // Signed with the release key: devices move back.
    let st = f
        .server
        .op(c.rollback("demo", "stable", "1.0", &f.key))
        .unwrap();
    assert_eq!(
        (st.version.as_deref(), st.downgrade.as_deref()),
        (Some("1.0"), Some("1.0"))
    );
    let offer = a.check().unwrap().update.unwrap();
    assert_eq!(offer.version, "1.0");
    assert!(offer.downgrade.is_some());
    assert_eq!(updated(a.update().unwrap()), "1.0");
    same_tree(f.tree_of(1), &root.path().join("current"));
    assert_eq!(a.status().unwrap().last.last_result.as_deref(), Some("ok"));

    // Forward again. Then whoever holds the server's database points the channel back with
    // a statement the device must refuse: signed by another key, or signed properly but
    // issued before the running release existed (a replay of an old rollback).
    f.promote("2.0", PromoteRequest::default());
    assert_eq!(updated(a.update().unwrap()), "2.0");
    let forged = |key: &SecretKey, issued: u64| {
        let s = Downgrade {
            product: "demo".into(),
            channel: "stable".into(),
            version: "1.0".into(),
            issued,
        }
        .sign(key);
        f.server.sql(
            "UPDATE channels SET release_id = (SELECT id FROM releases WHERE version = '1.0'),
             rollout_id = NULL, downgrade = $1",
            s.bytes().to_vec(),
        );
        f.server.sql(
            "UPDATE channels SET downgrade_sig = $1",
            s.signature().to_vec(),
        );
        std::thread::sleep(Duration::from_millis(300));
        assert!(a.check().unwrap().update.unwrap().downgrade.is_some());
        let err = a.update().unwrap_err().to_string();
        assert!(err.contains("older than the running 2.0"), "{err}");
        assert_eq!(a.device.current().unwrap().as_deref(), Some("2.0"));
        err
    };
    let err = forged(&other, 2_000_000_000);
    assert!(err.contains("does not verify"), "{err}");
    let err = forged(&f.key, 1_001_500);
    assert!(
        err.contains("before the running release was created"),
        "{err}"
    );
}

fn staged_rollout_reaches_only_its_share(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    let st = f.promote(
        "2.0",
        PromoteRequest {
            percent: Some(20.0),
            ..PromoteRequest::default()
        },
    );
    let ro = st.rollout.unwrap();
    assert_eq!((ro.percent, ro.previous.as_deref()), (20.0, Some("1.0")));
    let devices: Vec<String> = (0..500).map(|i| format!("dev-{i}")).collect();
    let wave = |pct: f64| -> BTreeSet<&str> {
        devices
            .iter()
            .filter(|d| bucket("demo", "stable", d) < pct)
            .map(String::as_str)
            .collect()
    };
    let offered = || -> BTreeSet<&str> {
        devices
            .iter()
            .filter(|d| f.offered(&format!("device={d}&current=1.0")).as_deref() == Some("2.0"))
            .map(String::as_str)
            .collect()
    };
    let first = offered();
    assert_eq!(first, wave(20.0));
    assert!((60..=140).contains(&first.len()), "{}", first.len());
    // Devices outside the wave that run nothing get the release before it.
    assert_eq!(
        f.offered("device=dev-new-outside-9").as_deref(),
        Some(if bucket("demo", "stable", "dev-new-outside-9") < 20.0 {
            "2.0"
        } else {
            "1.0"
        })
    );

    let c = f.server.client();
    assert_eq!(
        f.server
            .op(c.rollout("demo", "stable", 50.0))
            .unwrap()
            .rollout
            .unwrap()
            .percent,
        50.0
    );
    let second = offered();
    assert_eq!(second, wave(50.0));
    assert!(first.is_subset(&second));

    // Check-ins were recorded.
    f.server.flush();
    let d = f.server.op(c.device("demo", "dev-7")).unwrap();
    assert_eq!(
        (d["current"].as_str(), d["channel"].as_str()),
        (Some("1.0"), Some("stable"))
    );

    // Raised over time: from nothing to everyone in one step of three seconds. Steps count
    // whole seconds from the second of the promotion, so the first may come as little as two
    // seconds after it: the check right after is safe (a one-second step failed it whenever
    // the check fell into the next second), and 4.1 s later the step has surely been taken.
    f.promote(
        "2.0",
        PromoteRequest {
            percent: Some(0.0),
            step_percent: Some(100.0),
            step_secs: Some(3),
            ..PromoteRequest::default()
        },
    );
    assert_eq!(f.offered("device=dev-1&current=1.0"), None);
    std::thread::sleep(Duration::from_millis(4100));
    assert_eq!(offered().len(), devices.len());
}

fn rollout_stops_itself_on_failures(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    let st = f.promote(
        "2.0",
        PromoteRequest {
            max_failure_rate: Some(0.3),
            min_reports: Some(4),
            ..PromoteRequest::default()
        },
    );
    let id = st.rollout.unwrap().id;
    for d in ["a", "b"] {
        f.check(&format!(
            "device={d}&current=1.0&result=failed&attempted=2.0"
        ));
    }
    f.check("device=c&current=2.0&result=ok&attempted=2.0");
    f.server.flush();
    // Three reports are fewer than the four asked for: no decision yet.
    assert_eq!(
        f.server.op(f.server.app.fleet.watch_rollouts()).unwrap(),
        Vec::<i64>::new()
    );
    f.check("device=d&current=1.0&result=rolled-back&attempted=2.0");
    f.server.flush();
    assert_eq!(
        f.server.op(f.server.app.fleet.watch_rollouts()).unwrap(),
        [id]
    );

    let ro = f.status().rollout.unwrap();
    assert_eq!(
        (ro.state.as_str(), ro.reports, ro.failures),
        ("stopped", 4, 3)
    );
    assert!(ro.reason.unwrap().contains("3 of 4 devices"));
    assert_eq!(f.offered("device=fresh&current=1.0"), None);
    assert_eq!(f.offered("device=c&current=2.0"), None);
    let audit = f.server.op(f.server.client().audit("demo")).unwrap();
    assert_eq!(
        (audit[0].action.as_str(), audit[0].who.as_str()),
        ("stop", "server")
    );

    // An operator restarts it by hand.
    f.server
        .op(f.server.client().rollout("demo", "stable", 100.0))
        .unwrap();
    assert_eq!(f.status().rollout.unwrap().state, "active");
    assert_eq!(
        f.offered("device=fresh&current=1.0").as_deref(),
        Some("2.0")
    );
}

fn pinned_devices_follow_their_version(backend: Backend) {
    let f = fleet(backend, 2, "2.0");
    let root = tempfile::tempdir().unwrap();
    let pinned = agent_with(&f.server, root.path(), &f.trust, |s| {
        s.pin = Some("1.0".into())
    });
    assert_eq!(updated(pinned.update().unwrap()), "1.0");
    assert!(matches!(
        pinned.update().unwrap(),
        UpdateOutcome::UpToDate { .. }
    ));
    same_tree(f.tree_of(1), &root.path().join("current"));
    // The same device unpinned follows the channel; pinned again, it goes back.
    let free = agent(&f.server, root.path(), &f.trust);
    assert_eq!(updated(free.update().unwrap()), "2.0");
    assert_eq!(updated(pinned.update().unwrap()), "1.0");
    let (s, e) = status_of(
        f.server
            .http()
            .get(format!(
                "{}/v1/products/demo/channels/stable/check?pin=7.0",
                f.server.url
            ))
            .send()
            .unwrap(),
    );
    assert_eq!((s, e.contains("no release 7.0")), (404, true), "{e}");
}

fn device_several_versions_behind_and_floors(backend: Backend) {
    let f = fleet(backend, 4, "4.0");
    let root = tempfile::tempdir().unwrap();
    let a = agent(&f.server, root.path(), &f.trust);
    a.install("1.0").unwrap();
    // The first check computes the plan 1.0 -> 4.0 with what the publisher made (deltas
    // between neighbours only: bin/app comes whole) and starts building the missing deltas.
    let first = a.check().unwrap().update.unwrap();
    f.server.op(f.server.app.builds.idle());
    let offer = a.check().unwrap().update.unwrap();
    assert!(
        offer.download_bytes < first.download_bytes,
        "after the background build {} must be less than {}",
        offer.download_bytes,
        first.download_bytes
    );
    let fresh = f.check("").update.unwrap();
    assert_eq!(
        (offer.version.as_str(), fresh.version.as_str()),
        ("4.0", "4.0")
    );
    assert!(
        offer.download_bytes < fresh.download_bytes,
        "from 1.0 {} must cost less than from nothing {}",
        offer.download_bytes,
        fresh.download_bytes
    );
    let report = match a.update().unwrap() {
        UpdateOutcome::Updated(r) => r,
        o => panic!("{o:?}"),
    };
    assert_eq!(
        (report.version.as_str(), report.from.as_deref()),
        ("4.0", Some("1.0"))
    );
    assert_eq!(report.downloaded_bytes, offer.download_bytes);
    assert!(report.deltas >= 1, "{report:?}");
    same_tree(f.tree_of(4), &root.path().join("current"));

    // A floor: a device older than 3.0 installs 3.0 first, then 4.0.
    f.promote(
        "4.0",
        PromoteRequest {
            floor: Some("3.0".into()),
            ..PromoteRequest::default()
        },
    );
    let root = tempfile::tempdir().unwrap();
    let b = agent(&f.server, root.path(), &f.trust);
    b.install("2.0").unwrap();
    assert_eq!(updated(b.update().unwrap()), "3.0");
    assert_eq!(updated(b.update().unwrap()), "4.0");
    same_tree(f.tree_of(4), &root.path().join("current"));
    assert_eq!(f.status().rollout.unwrap().floor.as_deref(), Some("3.0"));
}

/// The deltas the server builds for a device several versions behind leave out the methods
/// the target release's publisher skipped, as the publisher's own deltas do.
fn server_built_deltas_skip_the_publishers_skipped_methods(backend: Backend) {
    let server = Server::start(backend);
    let (k, trust, _keys) = key(1);
    let trees: Vec<_> = (1..=3).map(tree).collect();
    // The method the server's engine picks for bin/app from 1.0 to 3.0 when nothing is
    // skipped: 3.0 is published skipping it.
    let app = |n: usize| std::fs::read(trees[n - 1].path().join("bin/app")).unwrap();
    let opts = EngineOptions {
        level: server.app.delta_level,
        ..EngineOptions::default()
    };
    let preferred = candidates(&app(1), &app(3), &opts).unwrap()[0].method;
    publish_release(&server, &k, &trees, 1);
    publish_release(&server, &k, &trees, 2);
    publish_skipping(&server, &k, &trees, 3, [preferred].into_iter().collect());
    let listed: serde_json::Value = server
        .http()
        .get(format!("{}/v1/products/demo/releases", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(listed[0]["version"], "3.0");
    assert_eq!(
        listed[0]["skip_methods"],
        serde_json::json!([preferred.name()])
    );
    assert_eq!(listed[1].get("skip_methods"), None, "{listed}");

    let root = tempfile::tempdir().unwrap();
    let a = agent(&server, root.path(), &trust);
    a.install("1.0").unwrap();
    server
        .op(server.client().promote(
            "demo",
            "stable",
            &PromoteRequest {
                version: "3.0".into(),
                ..PromoteRequest::default()
            },
        ))
        .unwrap();
    // The first check starts the build for 1.0 -> 3.0 (bin/app comes whole until then).
    a.check().unwrap();
    server.op(server.app.builds.idle());
    let h = server.http();
    let plan: deltaroot_client::format::Plan = h
        .get(format!("{}/v1/products/demo/plans/1.0/3.0", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let target = deltaroot_client::format::Hash::of(&app(3));
    let item = plan.items.iter().find(|i| i.target == target).unwrap();
    let deltaroot_client::format::Fetch::Delta { source, .. } = item.fetch else {
        panic!("bin/app should come as a delta after the build: {item:?}");
    };
    let delta = h
        .get(format!(
            "{}/{}",
            server.url,
            deltaroot_client::format::delta_path(&source, &target)
        ))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let (header, _) = deltaroot_client::format::DeltaHeader::decode(&delta).unwrap();
    assert_eq!(source, deltaroot_client::format::Hash::of(&app(1)));
    assert_ne!(header.method, preferred, "the server used a skipped method");
    assert_eq!(updated(a.update().unwrap()), "3.0");
    same_tree(trees[2].path(), &root.path().join("current"));
}

fn two_replicas_serve_one_fleet(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    let b = f.server.replica();
    let root = tempfile::tempdir().unwrap();
    let on_b = agent(&b, root.path(), &f.trust);
    assert_eq!(updated(on_b.update().unwrap()), "1.0");
    // Promoted through B, published through A, downloaded from B.
    b.op(b.client().promote(
        "demo",
        "stable",
        &PromoteRequest {
            version: "2.0".into(),
            ..PromoteRequest::default()
        },
    ))
    .unwrap();
    let before = b.served();
    assert_eq!(updated(on_b.update().unwrap()), "2.0");
    assert!(b.served() > before);
    same_tree(f.tree_of(2), &root.path().join("current"));

    // Paused through A: B stops offering within its cache lifetime.
    f.server
        .op(f.server.client().pause("demo", "stable"))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
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
    assert_eq!(d["current"], "1.0");
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
    let hash = deltaroot_client::format::Hash::of(b"big");
    let (s, e) = status_of(
        small
            .http()
            .put(format!(
                "{}/{}",
                small.url,
                deltaroot_client::format::object_path(&hash)
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
                deltaroot_client::format::object_path(&hash)
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
            .arg(&common::tls().cert)
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
        out.contains("demo/stable: 2.0") && out.contains("active at 10.0 %"),
        "{out}"
    );
    let (ok, out, _) = run(&["pause"]);
    assert!(ok && out.contains("(paused)"), "{out}");
    let (ok, out, _) = run(&["resume"]);
    assert!(ok && !out.contains("(paused)"), "{out}");
    let keyfile = f._keys.path().join("release.key");
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
    let rt = common::runtime();
    let place = common::Place::new(backend, &rt, data.path());
    let app = rt
        .block_on(deltaroot_server::App::start(&place.config))
        .unwrap();
    let token = deltaroot_server::new_token();
    rt.block_on(app.db.create_token("ci", &token)).unwrap();
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
    let hash = deltaroot_client::format::Hash::of(&content);
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
    let rel = deltaroot_client::format::object_path(&hash);
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
    // Shut down while most of the object is still to be sent.
    tx.send(()).unwrap();
    std::thread::sleep(Duration::from_millis(200));
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
}
