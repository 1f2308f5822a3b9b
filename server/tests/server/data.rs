//! The server's data, end to end on both backends: stored files are written once (a racing
//! upload never changes a delta nor its recorded size), orphan uploads are swept after their
//! grace period and nothing a release references is, devices past the retention period are
//! forgotten, failure-rate limits bind as integers, and the caches keep no misses and stay
//! within their capacity. Time moves by the server's clock, never by sleeping.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use deltaroot_engine::{candidates, EngineOptions};
use deltaroot_format::api::{PublishResponse, StoredRequest, StoredResponse};
use deltaroot_format::{delta_path, object_path, Hash};
use deltaroot_publisher::publish::{publish, PublishOptions};
use deltaroot_publisher::sink::{Release, ServerSink, Sink};
use deltaroot_server::checkins::Report;
use deltaroot_server::db::{CheckIn, NewRollout, StoredFile};
use deltaroot_server::files::Body;
use sqlx::Row;

use crate::common::{agent, agent_with, key, promote_to, Backend, Server};
use crate::fleet::{publish_release, tree};

on_both_backends!(
    racing_uploads_keep_the_first_file_and_size,
    orphan_uploads_are_swept_after_the_grace_period,
    devices_past_the_retention_period_are_forgotten,
    the_last_check_in_of_a_batch_is_the_one_kept,
    failure_limits_bind_as_integers,
);

/// Two different deltas for one pair (two methods, or two levels of one).
fn two_deltas() -> (Hash, Hash, Vec<u8>, Vec<u8>) {
    let old: Vec<u8> = (0..60_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut new = old.clone();
    for i in (0..60_000).step_by(997) {
        new[i] ^= 0x5a;
    }
    let at = |level| {
        let opts = EngineOptions {
            level,
            ..EngineOptions::default()
        };
        candidates(&old, &new, &opts).unwrap()
    };
    let mut all: Vec<Vec<u8>> = at(3).into_iter().chain(at(19)).map(|c| c.bytes).collect();
    all.dedup();
    let b = all
        .iter()
        .find(|b| **b != all[0])
        .expect("two deltas")
        .clone();
    (Hash::of(&old), Hash::of(&new), all[0].clone(), b)
}

fn recorded_delta(server: &Server, s: Hash, t: Hash) -> Option<u64> {
    server.op(server.app.db.delta_sizes(&[(s, t)])).unwrap()[0]
}

fn racing_uploads_keep_the_first_file_and_size(backend: Backend) {
    let server = Server::start(backend);
    let app = &server.app;
    let (s, t, a, b) = two_deltas();
    let rel = delta_path(&s, &t);
    let method = |d: &[u8]| deltaroot_format::DeltaHeader::decode(d).unwrap().0.method as u8;

    // One upload after the other, each as the server stored one (file, then record): the
    // second, which passed the "already stored?" check before the first was recorded,
    // changes neither the file nor its size.
    server
        .op(app.store.put(&rel, Bytes::from(a.clone())))
        .unwrap();
    server
        .op(app.db.add_delta(&s, &t, a.len() as u64, method(&a)))
        .unwrap();
    server
        .op(app.store.put(&rel, Bytes::from(b.clone())))
        .unwrap();
    server
        .op(app.db.add_delta(&s, &t, b.len() as u64, method(&b)))
        .unwrap();
    assert!(
        server.read_stored(&rel) == a,
        "the second upload replaced the delta"
    );
    assert_eq!(recorded_delta(&server, s, t), Some(a.len() as u64));

    // Two uploads of another pair at the same time, the second recorded first: whichever
    // file stays, the recorded size is its size.
    let (s2, t2) = (Hash::of(b"other source"), t);
    let rel2 = delta_path(&s2, &t2);
    let (ra, rb) = server.op(async {
        tokio::join!(
            deltaroot_server::files::store_delta(
                app,
                &s2,
                &t2,
                Body::Bytes(a.clone().into()),
                method(&a)
            ),
            deltaroot_server::files::store_delta(
                app,
                &s2,
                &t2,
                Body::Bytes(b.clone().into()),
                method(&b)
            ),
        )
    });
    ra.unwrap();
    rb.unwrap();
    let kept = server.read_stored(&rel2);
    assert!(kept == a || kept == b);
    assert_eq!(recorded_delta(&server, s2, t2), Some(kept.len() as u64));
    // A late third upload of the other bytes through the API changes nothing either.
    let other = if kept == a { &b } else { &a };
    let r = server
        .http()
        .put(format!("{}/{rel2}", server.url))
        .bearer_auth(&server.token)
        .body(other.clone())
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let got = server
        .http()
        .get(format!("{}/{rel2}", server.url))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert!(got == kept, "the served delta changed");
    assert_eq!(recorded_delta(&server, s2, t2), Some(kept.len() as u64));

    // Objects too: the same content compressed twice, the first file and size stay.
    let content = b"the same content, compressed at two levels ".repeat(200);
    let h = Hash::of(&content);
    let z1 = zstd::bulk::compress(&content, 1).unwrap();
    let z19 = zstd::bulk::compress(&content, 19).unwrap();
    assert_ne!(z1, z19);
    for z in [&z1, &z19] {
        server
            .op(deltaroot_server::files::store_object(
                app,
                &h,
                Body::Bytes(z.clone().into()),
                content.len() as u64,
            ))
            .unwrap();
    }
    assert!(server.read_stored(&object_path(&h)) == z1);
    let sizes = server.op(app.db.object_sizes(&[h])).unwrap();
    assert_eq!(sizes.get(&h), Some(&(z1.len() as u64)));
}

/// Stored paths of the store's objects, deltas and packs.
fn stored(server: &Server) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["objects", "deltas", "packs"] {
        for f in server.op(server.app.store.list(prefix)).unwrap() {
            out.insert(f.rel);
        }
    }
    out
}

fn orphan_uploads_are_swept_after_the_grace_period(backend: Backend) {
    let server = Server::start(backend);
    let (k, trust, _keys) = key(1);
    let trees: Vec<_> = (1..=3).map(tree).collect();
    publish_release(&server, &k, &trees, 1);
    publish_release(&server, &k, &trees, 2);
    // A device's plan 1.0 -> 2.0 is stored, as after a first update check.
    let root = tempfile::tempdir().unwrap();
    let a = agent_with(&server, root.path(), &trust, |s| {
        s.channel = Some("ci".into())
    });
    a.install("1.0").unwrap();
    let _ = a.check().unwrap();
    let kept_before = stored(&server);
    server
        .op(server
            .client()
            .promote("demo", "stable", &promote_to("2.0")))
        .unwrap();

    // A publish of 3.0 from another tree that stops after its uploads (the publisher was
    // killed before it made the release visible): what it uploaded that 1.0 and 2.0 do not
    // hold is an orphan.
    let sink = ServerSink::new(&server.plain_url, &server.token).unwrap();
    let opts = PublishOptions {
        version: "3.0".into(),
        from_version: Some("1.0".into()),
        created: Some(1_009_000),
        ..crate::fleet::release_options(3, "ci")
    };
    let err = match publish(
        Some(trees[0].path()),
        trees[2].path(),
        &k,
        &Interrupted(&sink),
        &opts,
    ) {
        Ok(_) => panic!("an interrupted publish made 3.0 visible"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("stopped before publishing"), "{err}");
    // And a file whose record was never written (the server stopped between the two).
    let stray = Hash::of(b"stray");
    server.write_stored(
        &object_path(&stray),
        zstd::bulk::compress(b"stray", 1).unwrap(),
    );
    let orphans: BTreeSet<String> = stored(&server).difference(&kept_before).cloned().collect();
    let only_in_3 = object_path(&Hash::of(b"3"));
    assert!(orphans.contains(&only_in_3), "{orphans:?}");
    assert!(
        orphans.iter().any(|o| o.starts_with("deltas/")),
        "{orphans:?}"
    );

    let day = Duration::from_secs(24 * 3600);
    let sweep = |dry_run| {
        server
            .op(deltaroot_server::gc::sweep(
                &server.app.db,
                &server.app.store,
                day,
                dry_run,
            ))
            .unwrap()
    };
    // Within the grace period (a publish may be under way): nothing goes.
    let young = sweep(false);
    assert!(young.removed.is_empty(), "{young:?}");
    assert_eq!(young.young, orphans.len());

    server.advance(day + Duration::from_secs(3600));
    let dry = sweep(true);
    assert_eq!(dry.removed, orphans.iter().cloned().collect::<Vec<_>>());
    assert_eq!(stored(&server).len(), kept_before.len() + orphans.len());
    let done = sweep(false);
    assert_eq!(done.removed, dry.removed);
    assert_eq!(done.referenced, kept_before.len());
    assert_eq!(stored(&server), kept_before);
    let records = server.op(server.app.db.stored_files()).unwrap();
    for o in &orphans {
        let f = StoredFile::from_rel(o).unwrap();
        assert!(!records.contains_key(&f), "{o} is still recorded");
    }
    assert!(sweep(false).removed.is_empty());

    // What the releases, plans and packs reference is all there: the device updates.
    match a.update().unwrap() {
        deltaroot_client::agent::UpdateOutcome::Updated(r) => assert_eq!(r.version, "2.0"),
        o => panic!("{o:?}"),
    }
    let root = tempfile::tempdir().unwrap();
    assert!(agent(&server, root.path(), &trust).install("2.0").is_ok());

    // The command line agrees: nothing left to remove.
    if backend == Backend::Sqlite {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_deltaroot-server"))
            .args(["gc", "--dry-run", "--data"])
            .arg(server.data.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("would remove 0 orphan files"), "{text}");
    }
}

/// A product row to hang check-ins and releases on; its id.
fn product(server: &Server, name: &str) -> i64 {
    server
        .op(
            sqlx::query(
                "INSERT INTO products (name, public_key, created_at) VALUES ($1, 'key', 0) RETURNING id",
            )
            .bind(name)
            .fetch_one(server.app.db.pool()),
        )
        .unwrap()
        .try_get(0)
        .unwrap()
}

fn metric(server: &Server, name: &str) -> u64 {
    let text = server
        .http()
        .get(format!("{}/metrics", server.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
        .parse()
        .unwrap()
}

fn devices_past_the_retention_period_are_forgotten(backend: Backend) {
    let server = Server::start(backend);
    let id = product(&server, "demo");
    let fleet = &server.app.fleet;
    // Devices that checked in once, under ids nobody will use again.
    let n = 10_000;
    for i in 0..n {
        fleet.record(Report {
            checkin: CheckIn {
                product_id: id,
                device_id: format!("invented-{i}"),
                channel: "stable".into(),
                current: None,
                result: None,
                attempted: None,
                at: fleet.now(),
                signed: false,
            },
            proof: None,
        });
    }
    server.flush();
    assert_eq!(metric(&server, "deltaroot_devices"), n);

    // 60 days on, one device checks in; 31 days later the others are 91 days old.
    let day = Duration::from_secs(86400);
    server.advance(60 * day);
    let r = server
        .http()
        .get(format!(
            "{}/v1/products/demo/channels/stable/check?device=still-here",
            server.url
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    server.flush();
    server.advance(31 * day);
    assert_eq!(server.op(fleet.prune_devices(90 * day)).unwrap(), n);
    assert_eq!(server.op(fleet.prune_devices(90 * day)).unwrap(), 0);
    assert_eq!(metric(&server, "deltaroot_devices"), 1);
    assert_eq!(metric(&server, "deltaroot_devices_pruned_total"), n);
    let left = server.op(server.app.db.device(id, "still-here")).unwrap();
    assert!(left.is_some());
    assert!(server
        .op(server.app.db.device(id, "invented-7"))
        .unwrap()
        .is_none());
}

/// Check-ins written in one batch: for each device the last one queued is what its row
/// holds, whatever order the devices came in.
fn the_last_check_in_of_a_batch_is_the_one_kept(backend: Backend) {
    let server = Server::start(backend);
    let id = product(&server, "demo");
    let fleet = &server.app.fleet;
    let checkin = |device: String, version: &str| Report {
        checkin: CheckIn {
            product_id: id,
            device_id: device,
            channel: "stable".into(),
            current: Some(version.into()),
            result: None,
            attempted: None,
            at: fleet.now(),
            signed: false,
        },
        proof: None,
    };
    // Device i checks in (i % 3) + 1 times, the devices interleaved in descending order.
    for round in 1..=3 {
        for i in (0..300).rev() {
            if i % 3 + 1 >= round {
                fleet.record(checkin(format!("d-{i}"), &format!("{round}.0")));
            }
        }
    }
    server.flush();
    assert_eq!(metric(&server, "deltaroot_devices"), 300);
    for i in [0, 1, 2, 150, 298, 299] {
        let row = server
            .op(server.app.db.device(id, &format!("d-{i}")))
            .unwrap()
            .unwrap();
        assert_eq!(row.current, Some(format!("{}.0", i % 3 + 1)), "d-{i}");
    }
    let mut counts = server.op(server.app.db.version_counts(id)).unwrap();
    counts.sort();
    let expect: Vec<(Option<String>, u64)> = ["1.0", "2.0", "3.0"]
        .iter()
        .map(|v| (Some(v.to_string()), 100))
        .collect();
    assert_eq!(counts, expect);
}

/// A release row (its manifest is never read here); its id.
fn release(server: &Server, product_id: i64, version: &str, created: i64) -> i64 {
    server
        .op(sqlx::query(
            "INSERT INTO releases (product_id, version, created, manifest, signature, image_bytes,
                    entries, published_at, published_by)
                 VALUES ($1, $2, $3, $4, $5, 0, 0, 0, 'test') RETURNING id",
        )
        .bind(product_id)
        .bind(version)
        .bind(created)
        .bind(vec![0u8])
        .bind(vec![0u8])
        .fetch_one(server.app.db.pool()))
        .unwrap()
        .try_get(0)
        .unwrap()
}

fn failure_limits_bind_as_integers(backend: Backend) {
    let server = Server::start(backend);
    let db = &server.app.db;
    let p = product(&server, "demo");
    let r1 = release(&server, p, "1.0", 1);
    let r2 = release(&server, p, "2.0", 2);
    // With and without a limit, in turns, on one pool: each reads back as promoted.
    let limits = [
        None,
        Some(0.25),
        None,
        Some(1.0 / 3.0),
        Some(0.3),
        None,
        Some(0.0),
    ];
    for (i, limit) in limits.iter().enumerate() {
        let to = if i % 2 == 0 { r1 } else { r2 };
        let mut ro = NewRollout::whole(to, "x");
        ro.max_failure_rate = *limit;
        ro.percent = 10.0 + i as f64;
        server
            .op(db.promote(p, "demo", "stable", &ro, "ci"))
            .unwrap();
        let got = server
            .op(db.channel_state(p, "stable"))
            .unwrap()
            .unwrap()
            .rollout
            .unwrap();
        let want = limit.map(|v| (v * 1e6).round() / 1e6);
        assert_eq!(
            (got.max_failure_rate, got.start_percent),
            (want, ro.percent)
        );
    }
    // One statement for every limit: the value is a parameter, not text in the SQL.
    if backend == Backend::PostgresS3 {
        let prepared: i64 = server
            .op(
                sqlx::query(
                    "SELECT COUNT(*) FROM pg_prepared_statements WHERE statement LIKE '%INSERT INTO rollouts%'
                     AND statement NOT LIKE '%pg_prepared_statements%'",
                )
                .fetch_one(db.pool()),
            )
            .unwrap()
            .try_get(0)
            .unwrap();
        assert!(prepared <= 1, "{prepared} statements inserted rollouts");
    }
}

/// Lookups of names nobody published leave nothing in the caches, and what exists stays
/// within the capacity.
#[test]
fn caches_keep_no_misses_and_stay_within_their_capacity() {
    let server = Server::start_with(Backend::Sqlite, |c| c.cache_capacity = 64);
    let fleet = &server.app.fleet;
    let id = product(&server, "demo");
    let names = 100_000;
    server.op(async {
        for i in 0..names {
            assert!(fleet
                .product(&format!("nobody-{i}").parse().unwrap())
                .await
                .unwrap()
                .is_none());
        }
        for i in 0..1000 {
            assert!(fleet
                .channel(id, &format!("nowhere-{i}"))
                .await
                .unwrap()
                .is_none());
        }
    });
    assert_eq!(fleet.cache_entries(), 0, "misses were cached");
    // The product that exists is cached; plan sizes past the capacity are evicted.
    server
        .op(fleet.product(&"demo".parse().unwrap()))
        .unwrap()
        .unwrap();
    for to in 0..5000 {
        fleet.set_plan_size(Some(1), to, 42);
    }
    let entries = fleet.cache_entries();
    assert!((1..=2 * 64).contains(&entries), "{entries} entries");
    assert_eq!(
        metric(&server, "deltaroot_cache_entries"),
        fleet.cache_entries()
    );
    eprintln!("cache entries after {names} unknown products and 5000 plan sizes: {entries}");
}

/// Check answers are made (and signed) once per key and second, and the checks of invented
/// versions cannot grow their cache past its capacity.
#[test]
fn check_answers_are_made_once_per_second_and_stay_within_capacity() {
    use deltaroot_server::fleet::CheckKey;
    use std::cell::Cell;
    let server = Server::start_with(Backend::Sqlite, |c| c.cache_capacity = 64);
    let fleet = &server.app.fleet;
    product(&server, "demo");
    let p = server
        .op(fleet.product(&"demo".parse().unwrap()))
        .unwrap()
        .unwrap();
    let key = |current: &str, second: i64| CheckKey {
        product: std::sync::Arc::as_ptr(&p) as usize,
        channel_state: 0,
        channel: "stable".parse().unwrap(),
        current: Some(current.parse().unwrap()),
        latest: None,
        offer: None,
        paused: false,
        paced: false,
        next_check_secs: 600,
        second,
    };
    let made = Cell::new(0);
    let answer = |k: CheckKey| {
        fleet
            .answer(k, &p, None, || {
                made.set(made.get() + 1);
                Ok(Bytes::from(format!("answer {}", made.get())))
            })
            .unwrap()
    };
    let now = fleet.now();
    assert_eq!(answer(key("1.0", now)), "answer 1");
    assert_eq!(answer(key("1.0", now)), "answer 1", "made again");
    assert_eq!(answer(key("2.0", now)), "answer 2");
    // Another second is another answer (its issue time differs).
    assert_eq!(answer(key("1.0", now + 1)), "answer 3");
    let before = fleet.cache_entries();
    for i in 0..5000 {
        answer(key(&format!("invented-{i}"), now));
    }
    let entries = fleet.cache_entries();
    assert!(
        entries <= before + 64,
        "{entries} entries after 5000 invented versions"
    );
    assert_eq!(made.get(), 5003);
}

/// A publisher stopped after its uploads, before the release became visible.
struct Interrupted<'a>(&'a ServerSink);

impl Sink for Interrupted<'_> {
    fn stored(&self, req: &StoredRequest) -> deltaroot_publisher::Result<StoredResponse> {
        self.0.stored(req)
    }
    fn put(&self, rel: &str, bytes: &[u8]) -> deltaroot_publisher::Result<()> {
        self.0.put(rel, bytes)
    }
    fn get(&self, rel: &str) -> deltaroot_publisher::Result<Vec<u8>> {
        self.0.get(rel)
    }
    fn publish(&self, _: &Release<'_>) -> deltaroot_publisher::Result<PublishResponse> {
        Err(deltaroot_publisher::Error::Usage(
            "stopped before publishing".into(),
        ))
    }
    fn release(
        &self,
        product: &str,
        version: &str,
    ) -> deltaroot_publisher::Result<Option<(Vec<u8>, Vec<u8>)>> {
        self.0.release(product, version)
    }
    fn release_at(&self, product: &str, version: &str) -> String {
        self.0.release_at(product, version)
    }
}
