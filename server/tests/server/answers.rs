//! Signed answers end to end, on both backends: the publisher delegates to the server's
//! answer key, the server signs every check's answer, and a device refuses what a network
//! (or anyone without the keys) makes of them: an answer replayed after the channel moved
//! (the freeze, and the withdrawn downgrade), an expired one, another device's question,
//! an unsigned one, one under a replaced delegation, one from an untrusted key. A device
//! acts on the signed bytes only, whatever the JSON around them says. Release keys rotate
//! (`deltaroot rotate-key`), and the key replaced is refused for anything new.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deltaroot_client::agent::{Agent, Settings};
use deltaroot_client::transport::{CheckQuery, Deadline, Http, Transport};
use deltaroot_client::Result;
use deltaroot_format::answer::Offer;
use deltaroot_format::api::{AnswerKey, CheckResponse, PromoteRequest};
use deltaroot_format::{Answer, Delegation, Name, Plan, SecretKey, TrustedAnswer};
use deltaroot_publisher::publish::{publish, PublishOptions};
use deltaroot_publisher::sink::ServerSink;

use crate::common::{agent, key, promote_to, Backend};
use crate::fleet::{fleet, updated, Fleet};

on_both_backends!(
    signed_answers_hold_against_replay_freeze_and_mix_and_match,
    release_keys_rotate_and_the_old_key_is_refused,
    forged_check_ins_stop_nothing_against_a_signed_only_rollout,
);

/// A network in the middle: every check is answered with `answer`, the rest goes to the
/// server.
struct Replay {
    inner: Http,
    answer: CheckResponse,
}

impl Transport for Replay {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn check(&self, _q: &CheckQuery<'_>) -> Result<CheckResponse> {
        Ok(self.answer.clone())
    }
    fn signs_answers(&self) -> bool {
        true
    }
    fn get(&self, rel: &str, limit: u64) -> Result<Vec<u8>> {
        self.inner.get(rel, limit)
    }
    fn plan(&self, product: &Name, from: Option<&Name>, to: &Name) -> Result<Plan> {
        self.inner.plan(product, from, to)
    }
    fn download(
        &self,
        rel: &str,
        file: &mut std::fs::File,
        path: &Path,
        exact: Option<u64>,
        max: u64,
    ) -> Result<u64> {
        self.inner.download(rel, file, path, exact, max)
    }
    fn downloaded(&self) -> u64 {
        self.inner.downloaded()
    }
    fn set_deadline(&self, d: Option<Deadline>) {
        self.inner.set_deadline(d)
    }
}

/// The device at `root`, its checks answered with `answer`.
fn replayed(f: &Fleet, root: &Path, answer: CheckResponse) -> Agent {
    let inner = Http::with_ca_cert(&f.server.url, None, Some(&f.server.ca_cert)).unwrap();
    let s = Settings {
        root: Some(root.to_owned()),
        product: Some("demo".into()),
        trust: vec![f.trust.clone()],
        device_id: Some("test-replayed".into()),
        ..Settings::default()
    };
    Agent::with_transport(s, Box::new(Replay { inner, answer })).unwrap()
}

fn refused(a: &Agent) -> String {
    a.check().unwrap_err().to_string()
}

fn signed_answers_hold_against_replay_freeze_and_mix_and_match(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    let root = tempfile::tempdir().unwrap();
    let a = agent(&f.server, root.path(), &f.trust);
    assert_eq!(updated(a.update().unwrap()), "1.0");

    // What the server answers is signed by its answer key, which the release key delegated
    // to at publish, and valid for a day.
    let on_1 = "current=1.0&device=test-replayed";
    let before = f.check(on_1);
    let answer_key: AnswerKey = f
        .http
        .get(format!("{}/v1/answer-key", f.server.url))
        .bearer_auth(&f.server.token)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let t = TrustedAnswer::verify(before.signed.as_ref(), &[f.key.public()]).unwrap();
    assert_eq!(t.delegation().unwrap().key.to_text(), answer_key.public_key);
    assert_eq!(t.answer().expires - t.answer().issued, 86_400);
    assert_eq!(t.answer().offer, None);
    // The answer key is no secret but the route still wants a token.
    let anon = f
        .http
        .get(format!("{}/v1/answer-key", f.server.url))
        .send()
        .unwrap();
    assert_eq!(anon.status(), 401);

    // Plans are signed by the answer key too, with the delegation beside them.
    let http = Http::with_ca_cert(&f.server.url, None, Some(&f.server.ca_cert)).unwrap();
    let (demo, one, two): (Name, Name, Name) = (
        "demo".parse().unwrap(),
        "1.0".parse().unwrap(),
        "2.0".parse().unwrap(),
    );
    http.trust_plans(vec![f.key.public()]);
    let plan = http.plan(&demo, Some(&one), &two).unwrap();
    assert!(!plan.items.is_empty());
    http.trust_plans(vec![SecretKey::from_seed([9; 32]).public()]);
    let err = http.plan(&demo, Some(&one), &two).unwrap_err().to_string();
    assert!(
        err.contains("plans/1.0/2.0") && err.contains("does not verify"),
        "{err}"
    );

    // The channel moves to 2.0; the device takes that state.
    f.promote(promote_to("2.0"));
    f.server.advance(Duration::from_millis(1100));
    let now = f.check(on_1);
    assert_eq!(now.update.as_ref().unwrap().version, "2.0");
    assert_eq!(a.check().unwrap().update.unwrap().version, "2.0");
    let seen = a.device.answers_seen().unwrap();
    assert!(seen.channels["stable"].channel_serial > 0, "{seen:?}");

    // Freeze: the network replays the answer from before the promotion. Refused.
    let err = refused(&replayed(&f, root.path(), before.clone()));
    assert!(err.contains("older than the state"), "{err}");

    // The JSON around the signed answer is not what the device acts on.
    let mut lying = now.clone();
    lying.update = None;
    lying.latest = None;
    let r = replayed(&f, root.path(), lying).check().unwrap();
    assert_eq!(r.update.unwrap().version, "2.0");

    // Unsigned (a server that holds no delegation, or a network that strips it): refused.
    let mut bare = now.clone();
    bare.signed = None;
    let err = refused(&replayed(&f, root.path(), bare));
    assert!(err.contains("did not sign"), "{err}");

    // Another question's answer: the one for a device on 2.0.
    let on_2 = f.check("current=2.0&device=test-replayed");
    let err = refused(&replayed(&f, root.path(), on_2));
    assert!(
        err.contains("answers a device running 2.0, and this one runs 1.0"),
        "{err}"
    );

    // Expired: the device's clock is past the answer's validity.
    let mut late = agent(&f.server, root.path(), &f.trust);
    let past = t.answer().expires + 86_400 * 2;
    late.wall = Arc::new(move || past);
    let err = refused(&late);
    assert!(err.contains("expired"), "{err}");

    // An old online key the release key once delegated to, signing a fresh answer: the
    // device has seen a newer delegation, so that key is replaced.
    let old_key = SecretKey::from_seed([42; 32]);
    let old_delegation = Delegation {
        product: "demo".parse().unwrap(),
        key: old_key.public(),
        issued: 1,
    }
    .sign(&f.key);
    let mut forged = Answer::decode(&b64(&now.signed.as_ref().unwrap().answer)).unwrap();
    forged.offer = Some(Offer {
        version: "2.0".parse().unwrap(),
        download_bytes: 1,
        image_bytes: 1,
        downgrade: None,
    });
    let mut old = now.clone();
    old.signed = Some(forged.sign(&old_key, Some(old_delegation)));
    let err = refused(&replayed(&f, root.path(), old));
    assert!(err.contains("was replaced"), "{err}");

    // A device that trusts another release key takes none of it.
    let (_, other_trust, _keys) = key(7);
    let stranger = tempfile::tempdir().unwrap();
    let s = agent(&f.server, stranger.path(), &other_trust);
    let err = s.check().unwrap_err().to_string();
    assert!(
        err.contains("does not verify against the trusted key"),
        "{err}"
    );

    // Replay of a withdrawn downgrade: the device on 2.0 is rolled back to 1.0 with a
    // signed statement; the channel then moves forward again. The answer that carried the
    // statement, replayed, is refused.
    assert_eq!(updated(a.update().unwrap()), "2.0");
    let c = f.server.client();
    f.server
        .op(c.rollback("demo", "stable", "1.0", &f.key))
        .unwrap();
    f.server.advance(Duration::from_millis(1100));
    let rolled_back = f.check("current=2.0&device=test-replayed");
    assert!(rolled_back.update.as_ref().unwrap().downgrade.is_some());
    assert_eq!(a.check().unwrap().update.unwrap().version, "1.0");
    f.promote(promote_to("2.0"));
    f.server.advance(Duration::from_millis(1100));
    assert!(a.check().unwrap().update.is_none());
    let err = refused(&replayed(&f, root.path(), rolled_back.clone()));
    assert!(err.contains("older than the state"), "{err}");
    // The statement sent with the answer in force now (which offers nothing): nothing.
    let mut mixed = f.check("current=2.0&device=test-replayed");
    mixed.update = rolled_back.update.clone();
    assert!(replayed(&f, root.path(), mixed)
        .check()
        .unwrap()
        .update
        .is_none());
    assert!(matches!(
        a.update().unwrap(),
        deltaroot_client::agent::UpdateOutcome::UpToDate { .. }
    ));
    assert_eq!(a.device.current().unwrap().as_deref(), Some("2.0"));
}

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// `deltaroot rotate-key`: the product's key changes on the server by a statement the old
/// key signed; devices learn the new key from the answers, take releases the old key signed
/// before, and refuse it for anything new.
fn release_keys_rotate_and_the_old_key_is_refused(backend: Backend) {
    let f = fleet(backend, 2, "2.0");
    let root = tempfile::tempdir().unwrap();
    let a = agent(&f.server, root.path(), &f.trust);
    assert_eq!(updated(a.update().unwrap()), "2.0");

    let (k2, k2_trust, _k2_dir) = key(2);
    let sink = ServerSink::new(&f.server.plain_url, &f.server.token).unwrap();
    // Signed by a key that is not the product's: refused.
    let stranger = SecretKey::from_seed([9; 32]);
    let err = sink
        .rotate_key("demo", &stranger, &k2)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("400") && err.contains("does not verify"),
        "{err}"
    );
    let r = sink.rotate_key("demo", &f.key, &k2).unwrap();
    assert_eq!(r.key_id, k2.public().id());
    let audit = f.server.op(f.server.client().audit("demo")).unwrap();
    assert_eq!(audit[0].action, "rotate-key");

    // The old key publishes nothing more; the new one does, from a release the old one signed
    // once told it may be (--previous-key).
    let trees = [crate::fleet::tree(2), crate::fleet::tree(3)];
    let opts = crate::fleet::release_options(3, "stable");
    let old_key = publish(Some(trees[0].path()), trees[1].path(), &f.key, &sink, &opts)
        .unwrap_err()
        .to_string();
    assert!(old_key.contains("another key"), "{old_key}");
    let unknown = publish(Some(trees[0].path()), trees[1].path(), &k2, &sink, &opts)
        .unwrap_err()
        .to_string();
    assert!(unknown.contains("2.0"), "{unknown}");
    let opts = PublishOptions {
        previous_keys: vec![f.key.public()],
        ..opts
    };
    publish(Some(trees[0].path()), trees[1].path(), &k2, &sink, &opts).unwrap();
    f.server.advance(Duration::from_millis(1100));

    // The device, trusting the old key only, learns the new one from the answer.
    assert_eq!(updated(a.update().unwrap()), "3.0");
    assert_eq!(a.active_keys().unwrap(), vec![k2.public()]);
    // A release the old key signed before the rotation still installs.
    assert_eq!(updated(a.install("1.0").unwrap()), "1.0");
    // An answer signed by the old key is refused now.
    let mut by_old = f.check("current=1.0&device=test-replayed");
    let answer = Answer::decode(&b64(&by_old.signed.as_ref().unwrap().answer)).unwrap();
    by_old.signed = Some(answer.sign(&f.key, None));
    let err = refused(&replayed(&f, root.path(), by_old));
    assert!(
        err.contains("does not verify against the trusted key"),
        "{err}"
    );
    // A release the old key signs after the rotation (a thief's) is refused by name.
    let url = format!("{}/v1/products/demo/releases/2.0/manifest", f.server.url);
    let get = |url: &str| f.http.get(url).send().unwrap().bytes().unwrap().to_vec();
    let stored = deltaroot_format::VerifiedManifest::verify(
        get(&url),
        get(&format!("{url}.sig")),
        &[f.key.public()],
    )
    .unwrap();
    let mut m = stored.manifest().clone();
    m.created = 4_000_000_000;
    let forged = deltaroot_format::VerifiedManifest::sign(m, &f.key);
    f.server.sql(
        "UPDATE releases SET manifest = $1 WHERE version = '2.0'",
        forged.bytes().to_vec(),
    );
    f.server.sql(
        "UPDATE releases SET signature = $1 WHERE version = '2.0'",
        forged.signature().to_vec(),
    );
    let err = a.install("2.0").unwrap_err().to_string();
    assert!(err.contains("which a rotation replaced"), "{err}");
    assert_eq!(a.device.current().unwrap().as_deref(), Some("1.0"));

    // A new device given the new key takes the releases it signs.
    let fresh = tempfile::tempdir().unwrap();
    let b = agent(&f.server, fresh.path(), &k2_trust);
    assert_eq!(updated(b.update().unwrap()), "3.0");
}

/// Enrolled devices sign their check-ins; a rollout can count signed reports only. Forged
/// reports (unsigned, or badly signed, or in an enrolled device's name) then neither stop
/// it nor hide a real failure; a signed revert does stop it.
fn forged_check_ins_stop_nothing_against_a_signed_only_rollout(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    let server = &f.server;
    server
        .op(server.app.db.create_token(
            "factory",
            "drt_factory_token_0123456789",
            "enroll",
            Some("demo"),
        ))
        .unwrap();
    let read = deltaroot_server::new_token();
    server
        .op(server.app.db.create_token("dash", &read, "read", None))
        .unwrap();

    let (ra, rb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = agent(&f.server, ra.path(), &f.trust);
    let b = agent(&f.server, rb.path(), &f.trust);
    // Only a token of the enroll scope enrolls.
    let err = a.enroll(&read).unwrap_err().to_string();
    assert!(err.contains("403") && err.contains("enroll"), "{err}");
    let err = a.enroll("drt_nonsense").unwrap_err().to_string();
    assert!(err.contains("401"), "{err}");
    for d in [&a, &b] {
        let e = d.enroll("drt_factory_token_0123456789").unwrap();
        assert_eq!(e.key_id.len(), 16);
        assert_eq!(updated(d.update().unwrap()), "1.0");
    }
    let key = ra.path().join("state/device.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let st = f.promote(PromoteRequest {
        max_failure_rate: Some(0.4),
        min_reports: Some(1),
        signed_reports_only: true,
        ..promote_to("2.0")
    });
    assert!(st.rollout.as_ref().unwrap().signed_reports_only);
    server.advance(Duration::from_millis(1100));
    assert_eq!(updated(a.update().unwrap()), "2.0");
    a.check().unwrap(); // reports ok, signed
    server.flush();

    // 30 forged failures from invented devices, and one in a's name, unsigned or with a
    // signature that is not a's: none is counted, a's own report stands.
    for i in 0..30 {
        f.check(&format!(
            "device=forged-{i}&current=1.0&result=failed&attempted=2.0"
        ));
    }
    let a_id = a.device_id.to_string();
    f.check(&format!(
        "device={a_id}&current=1.0&result=failed&attempted=2.0"
    ));
    let stranger = SecretKey::from_seed([77; 32]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let forged = deltaroot_format::checkin::CheckIn {
        product: "demo",
        channel: "stable",
        device: &a_id,
        current: Some("1.0"),
        result: Some("failed"),
        attempted: Some("2.0"),
        pin: None,
        at: now,
    };
    f.check(&format!(
        "device={a_id}&current=1.0&result=failed&attempted=2.0&at={now}&sig={}",
        forged.sign(&stranger)
    ));
    server.flush();
    assert_eq!(
        server.op(server.app.fleet.watch_rollouts()).unwrap(),
        Vec::<i64>::new()
    );
    let ro = f.status().rollout.unwrap();
    assert_eq!(
        (ro.state.as_str(), ro.reports, ro.failures),
        ("active", 1, 0)
    );
    let row = server.op(server.client().device("demo", &a_id)).unwrap();
    assert_eq!(row.result.as_deref(), Some("ok"));
    let metrics = f
        .http
        .get(format!("{}/metrics", server.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains("deltaroot_checkins_unsigned_total 2"),
        "{metrics}"
    );

    // b installs 2.0, never marks it good, and reverts: its signed report stops the rollout.
    assert_eq!(updated(b.update().unwrap()), "2.0");
    for _ in 0..4 {
        b.boot_check(3).unwrap();
    }
    assert_eq!(b.device.current().unwrap().as_deref(), Some("1.0"));
    b.check().unwrap();
    server.flush();
    let stopped = server.op(server.app.fleet.watch_rollouts()).unwrap();
    assert_eq!(stopped, [ro.id]);
    let ro = f.status().rollout.unwrap();
    assert_eq!(
        (ro.state.as_str(), ro.reports, ro.failures),
        ("stopped", 2, 1)
    );
}
