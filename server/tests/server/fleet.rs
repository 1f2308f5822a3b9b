//! The fleet, end to end on both backends: promote, pause, signed rollback, staged rollouts
//! and their automatic stop, pinning, a device several versions behind, floors, and the
//! deltas the server builds. Devices talk HTTPS; trees are small and made here. The
//! helpers here (`tree`, `fleet`, `publish_release`) serve the other modules too.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use deltaroot_client::agent::UpdateOutcome;
use deltaroot_engine::{candidates, EngineOptions, MethodSet};
use deltaroot_format::api::{ChannelStatus, CheckResponse, PromoteRequest, RolloutRequest};
use deltaroot_format::{Downgrade, SecretKey};
use deltaroot_publisher::publish::{publish, PublishOptions};
use deltaroot_publisher::sink::ServerSink;
use deltaroot_server::fleet::bucket;

use crate::common::{agent, agent_with, key, promote_to, Backend, Server};

on_both_backends!(
    promote_pause_resume_with_an_audit_log,
    rollback_is_a_signed_downgrade,
    staged_rollout_reaches_only_its_share,
    rollout_stops_itself_on_failures,
    pinned_devices_follow_their_version,
    device_several_versions_behind_and_floors,
    server_built_deltas_skip_the_publishers_skipped_methods,
    a_channel_the_product_lacks_is_named_not_empty,
    a_device_reverts_a_version_never_marked_good_and_the_rollout_stops,
);

/// Release `n` of a small tree: some files change every release, one never does.
pub(crate) fn tree(n: u32) -> tempfile::TempDir {
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
pub(crate) struct Fleet {
    pub(crate) server: Server,
    pub(crate) http: reqwest::blocking::Client,
    pub(crate) key: SecretKey,
    pub(crate) trust: std::path::PathBuf,
    /// Holds the public key file `trust`.
    pub(crate) keys: tempfile::TempDir,
    pub(crate) trees: Vec<tempfile::TempDir>,
}

pub(crate) fn fleet(backend: Backend, count: u32, stable: &str) -> Fleet {
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
        keys,
        trees,
    };
    f.promote(promote_to(stable));
    f
}

/// What release `n` of [`tree`] is published with: version `n.0` from `(n-1).0` onto
/// `channel`, created 1000 s after the one before.
pub(crate) fn release_options(n: u32, channel: &str) -> PublishOptions {
    PublishOptions {
        product: "demo".into(),
        version: format!("{n}.0"),
        from_version: (n > 1).then(|| format!("{}.0", n - 1)),
        channel: Some(channel.into()),
        percent: None,
        engine: EngineOptions {
            level: 3,
            ..EngineOptions::default()
        },
        created: Some(1_000_000 + u64::from(n) * 1000),
        progress: false,
        memory_budget: deltaroot_publisher::publish::DEFAULT_MEMORY_BUDGET,
        packs: true,
        input: Default::default(),
        previous_keys: Vec::new(),
    }
}

pub(crate) fn publish_release(server: &Server, k: &SecretKey, trees: &[tempfile::TempDir], n: u32) {
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
    let mut opts = release_options(n, "ci");
    opts.engine.skip = skip;
    publish(old, trees[n as usize - 1].path(), k, &sink, &opts).unwrap();
}

impl Fleet {
    pub(crate) fn promote(&self, req: PromoteRequest) -> ChannelStatus {
        self.server
            .op(self.server.client().promote("demo", "stable", &req))
            .unwrap()
    }

    pub(crate) fn status(&self) -> ChannelStatus {
        self.server
            .op(self.server.client().channel("demo", "stable"))
            .unwrap()
    }

    pub(crate) fn audit_len(&self) -> usize {
        self.server
            .op(self.server.client().audit("demo"))
            .unwrap()
            .len()
    }

    /// An update check as device `id` running `current`.
    pub(crate) fn check(&self, query: &str) -> CheckResponse {
        let url = format!(
            "{}/v1/products/demo/channels/stable/check?{query}",
            self.server.url
        );
        let r = self.http.get(&url).send().unwrap();
        assert_eq!(r.status(), 200, "{url}");
        r.json().unwrap()
    }

    pub(crate) fn offered(&self, query: &str) -> Option<String> {
        self.check(query).update.map(|u| u.version.into_string())
    }

    pub(crate) fn tree_of(&self, n: usize) -> &Path {
        self.trees[n - 1].path()
    }
}

pub(crate) fn updated(o: UpdateOutcome) -> String {
    match o {
        UpdateOutcome::Updated(r) => r.version,
        other => panic!("expected an update, got {other:?}"),
    }
}

pub(crate) fn same_tree(want: &Path, got: &Path) {
    let diffs = deltaroot_format::tree::differences(
        &deltaroot_format::tree::scan(want).unwrap(),
        &deltaroot_format::tree::scan(got).unwrap(),
    );
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// The status code and error text of an answer.
pub(crate) fn status_of(r: reqwest::blocking::Response) -> (u16, String) {
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

    let st = f.promote(promote_to("2.0"));
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
        .op(c.promote("demo", "stable", &promote_to("1.0")))
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
    f.promote(promote_to("2.0"));
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
        // Past the cache lifetime: the server reads the channel again.
        f.server.advance(Duration::from_millis(300));
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
    let st = f.promote(PromoteRequest {
        percent: Some(20.0),
        ..promote_to("2.0")
    });
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
            .op(c.rollout("demo", "stable", &RolloutRequest::percent(50.0)))
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
        (d.current.as_deref(), Some(d.channel.as_str())),
        (Some("1.0"), Some("stable"))
    );

    // Raised over time: from nothing to everyone in one step of three seconds. Steps count
    // whole seconds from the second of the promotion, so the check right after it is still
    // before the step, and three seconds later by the server's clock it has been taken.
    f.promote(PromoteRequest {
        percent: Some(0.0),
        step_percent: Some(100.0),
        step_secs: Some(3),
        ..promote_to("2.0")
    });
    assert_eq!(f.offered("device=dev-1&current=1.0"), None);
    f.server.advance(Duration::from_secs(3));
    assert_eq!(offered().len(), devices.len());
}

fn rollout_stops_itself_on_failures(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    let st = f.promote(PromoteRequest {
        max_failure_rate: Some(0.3),
        min_reports: Some(4),
        ..promote_to("2.0")
    });
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
        .op(f
            .server
            .client()
            .rollout("demo", "stable", &RolloutRequest::percent(100.0)))
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
    f.promote(PromoteRequest {
        floor: Some("3.0".parse().unwrap()),
        ..promote_to("4.0")
    });
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
        .bearer_auth(&server.token)
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
        .op(server
            .client()
            .promote("demo", "stable", &promote_to("3.0")))
        .unwrap();
    // The first check starts the build for 1.0 -> 3.0 (bin/app comes whole until then).
    a.check().unwrap();
    server.op(server.app.builds.idle());
    let h = server.http();
    let plan: deltaroot_format::Plan = h
        .get(format!("{}/v1/products/demo/plans/1.0/3.0", server.url))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let target = deltaroot_format::Hash::of(&app(3));
    let item = plan.items.iter().find(|i| i.target == target).unwrap();
    let deltaroot_format::Fetch::Delta { source, .. } = item.fetch else {
        panic!("bin/app should come as a delta after the build: {item:?}");
    };
    let delta = h
        .get(format!(
            "{}/{}",
            server.url,
            deltaroot_format::delta_path(&source, &target)
        ))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let (header, _) = deltaroot_format::DeltaHeader::decode(&delta).unwrap();
    assert_eq!(source, deltaroot_format::Hash::of(&app(1)));
    assert_ne!(header.method, preferred, "the server used a skipped method");
    assert_eq!(updated(a.update().unwrap()), "3.0");
    same_tree(trees[2].path(), &root.path().join("current"));
}

/// A device set to a channel its product does not have (a typo) gets an error naming the
/// channels there are, not "up to date" for ever; a pinned device needs no channel.
fn a_channel_the_product_lacks_is_named_not_empty(backend: Backend) {
    let f = fleet(backend, 1, "1.0");
    let url = format!(
        "{}/v1/products/demo/channels/stabel/check?device=d1",
        f.server.url
    );
    let r = f.http.get(&url).send().unwrap();
    assert_eq!(r.status(), 404);
    let body = r.text().unwrap();
    assert!(
        body.contains("product demo has no channel stabel (its channels: ci, stable)"),
        "{body}"
    );
    let root = tempfile::tempdir().unwrap();
    let a = agent_with(&f.server, root.path(), &f.trust, |s| {
        s.channel = Some("stabel".into())
    });
    let err = a.check().unwrap_err().to_string();
    assert!(
        err.contains("no channel stabel (its channels: ci, stable)"),
        "{err}"
    );
    let r = f.http.get(format!("{url}&pin=1.0")).send().unwrap();
    assert_eq!(r.status(), 200);
}

/// A simulated boot loop: a device updates to 2, boots it three times without mark-good,
/// the fourth boot-check reverts it to 1; its next check reports `rolled-back`, and the
/// rollout's failure limit stops the rollout.
fn a_device_reverts_a_version_never_marked_good_and_the_rollout_stops(backend: Backend) {
    use deltaroot_client::device::BootCheck;
    let f = fleet(backend, 2, "1.0");
    let root = tempfile::tempdir().unwrap();
    let a = agent(&f.server, root.path(), &f.trust);
    a.update().unwrap();
    a.mark_good().unwrap();
    f.promote(PromoteRequest {
        max_failure_rate: Some(0.5),
        min_reports: Some(1),
        ..promote_to("2.0")
    });
    a.update().unwrap();
    assert_eq!(a.device.current().unwrap().as_deref(), Some("2.0"));
    for _ in 0..3 {
        assert!(matches!(
            a.boot_check(3).unwrap(),
            BootCheck::OnTrial { .. }
        ));
    }
    assert!(matches!(
        a.boot_check(3).unwrap(),
        BootCheck::Reverted { ref to, .. } if to == "1.0"
    ));
    assert_eq!(
        std::fs::read_to_string(root.path().join("current/etc/version")).unwrap(),
        "1\n"
    );
    // The check after the revert reports it and is not offered 2.0 again.
    assert!(a.check().unwrap().update.is_none());
    f.server.flush();
    let stopped = f.server.op(f.server.app.fleet.watch_rollouts()).unwrap();
    assert_eq!(stopped.len(), 1);
    let ro = f.status().rollout.unwrap();
    assert_eq!(
        (ro.state.as_str(), ro.reports, ro.failures),
        ("stopped", 1, 1)
    );
}
