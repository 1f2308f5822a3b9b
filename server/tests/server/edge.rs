//! The HTTP edge against a hostile or careless client: requests without a token are refused
//! before their body is read, uploads stream through a file (never held in memory) and stop
//! at the size limit, plan requests start bounded delta builds only for pairs devices can be
//! offered, connections that send nothing or half a request are closed, server errors say
//! no more than "internal error", and bytes read by the publisher are not counted as served
//! to devices.
//!
//! Tests that measure the process (memory, file descriptors, close times) run alone in a
//! child process of this binary ([`alone`]), so no other test shares their numbers.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deltaroot_format::{delta_path, object_path, pack_path, Hash};

use crate::common::{key, promote_to, Backend, Server};

on_both_backends!(uploads_stream_through_a_file_to_the_store);

/// Runs the test `name` of this module alone in a child process of this binary (bounded to
/// `limit`); `true` in the parent, which then returns, `false` in the child, which runs it.
fn alone(name: &str, limit: Duration) -> bool {
    if std::env::var("DELTAROOT_EDGE_ALONE").as_deref() == Ok(name) {
        return false;
    }
    // One measured test at a time: they would share the machine's two cores otherwise.
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|e| e.into_inner());
    let log = tempfile::NamedTempFile::new().unwrap();
    let out = log.reopen().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([&format!("edge::{name}"), "--exact", "--nocapture"])
        .args(["--test-threads", "1"])
        .env("DELTAROOT_EDGE_ALONE", name)
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = std::fs::read_to_string(log.path()).unwrap();
    eprintln!("{out}");
    let status = status.unwrap_or_else(|| panic!("{name} ran longer than {limit:?}"));
    assert!(status.success(), "{name} failed alone");
    assert!(out.contains("1 passed"), "{name} did not run: {out}");
    true
}

/// Resident memory of this process, in KiB.
fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn host(server: &Server) -> String {
    server
        .plain_url
        .strip_prefix("http://")
        .unwrap()
        .to_string()
}

/// Sends `method path` with a body of `len` bytes announced by `Content-Length`, writing
/// the body while reading the answer. Returns the answer's status line and how many body
/// bytes the client had written when the status line arrived. Writing stops then.
fn send_big(host: &str, method: &str, path: &str, token: Option<&str>, len: u64) -> (String, u64) {
    let s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n{auth}\r\n"
    );
    (&s).write_all(head.as_bytes()).unwrap();
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (mut w, sent, stop) = (s.try_clone().unwrap(), sent.clone(), stop.clone());
        std::thread::spawn(move || {
            // Generated as it is sent: never allocated whole.
            let chunk = vec![b' '; 256 << 10];
            let mut n = 0u64;
            while n < len && !stop.load(Ordering::SeqCst) {
                let k = chunk.len().min((len - n) as usize);
                match w.write(&chunk[..k]) {
                    Ok(k) => {
                        n += k as u64;
                        sent.store(n, Ordering::SeqCst);
                    }
                    Err(_) => break,
                }
            }
        })
    };
    let mut line = String::new();
    let read = BufReader::new(&s).read_line(&mut line);
    let at_answer = sent.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let _ = s.shutdown(Shutdown::Both);
    writer.join().unwrap();
    read.unwrap_or_else(|e| panic!("{method} {path}: no answer: {e}"));
    (line.trim_end().to_string(), at_answer)
}

/// A request without a valid token gets 401 before the server reads its body: a 600 MB
/// upload does not grow the server's memory, and the client has sent only what the socket
/// buffers hold when the 401 arrives.
#[test]
fn upload_without_a_token_is_refused_before_its_body_is_read() {
    if alone(
        "upload_without_a_token_is_refused_before_its_body_is_read",
        Duration::from_secs(120),
    ) {
        return;
    }
    let server = Server::start_with(Backend::Sqlite, |c| c.max_upload = 2048 << 20);
    let host = host(&server);
    let hash = Hash::of(b"some content");
    let object = format!("/{}", object_path(&hash));
    // Warm up: the first connection and answer allocate what every later one reuses.
    send_big(&host, "PUT", &object, None, 1 << 20);
    let before = rss_kib();
    let start = Instant::now();
    let (status, sent) = send_big(&host, "PUT", &object, None, 600 << 20);
    let after = rss_kib();
    eprintln!(
        "600 MB PUT without a token: {status:?} after {:?}, {sent} bytes sent by then, \
         RSS {before} -> {after} KiB",
        start.elapsed()
    );
    assert!(status.starts_with("HTTP/1.1 401"), "{status}");
    assert!(sent < 64 << 20, "the client had sent {sent} bytes");
    assert!(
        after.saturating_sub(before) < 64 << 10,
        "RSS grew from {before} to {after} KiB"
    );
    // Every route that takes a body refuses a missing or unknown token the same way.
    let delta = format!("/{}", delta_path(&hash, &hash));
    let pack = format!("/{}", pack_path(&hash));
    let routes = [
        ("PUT", object.as_str()),
        ("PUT", delta.as_str()),
        ("PUT", pack.as_str()),
        ("POST", "/v1/stored"),
        ("POST", "/v1/products/demo/releases"),
        ("POST", "/v1/products/demo/channels/stable/promote"),
        ("POST", "/v1/products/demo/channels/stable/rollback"),
        ("POST", "/v1/products/demo/channels/stable/rollout"),
    ];
    for (method, path) in routes {
        for token in [None, Some("drt_not_a_token")] {
            let (status, sent) = send_big(&host, method, path, token, 600 << 20);
            assert!(
                status.starts_with("HTTP/1.1 401"),
                "{method} {path}: {status}"
            );
            assert!(sent < 64 << 20, "{method} {path}: {sent} bytes read first");
        }
    }
    // A known token without the route's scope is refused (403) before the body too.
    let reader = deltaroot_server::new_token();
    let publisher = deltaroot_server::new_token();
    server
        .op(server.app.db.create_token("reader", &reader, "read", None))
        .unwrap();
    server
        .op(server
            .app
            .db
            .create_token("publisher", &publisher, "publish", None))
        .unwrap();
    for (method, path) in routes {
        let token = if path.contains("/channels/") {
            &publisher
        } else {
            &reader
        };
        let (status, sent) = send_big(&host, method, path, Some(token), 600 << 20);
        assert!(
            status.starts_with("HTTP/1.1 403"),
            "{method} {path}: {status}"
        );
        assert!(sent < 64 << 20, "{method} {path}: {sent} bytes read first");
    }
    let after_all = rss_kib();
    eprintln!("after 24 more refused 600 MB requests: RSS {after_all} KiB");
    assert!(after_all.saturating_sub(before) < 64 << 10);
}

/// Deterministic incompressible content of `len` bytes (BLAKE3's output stream).
fn content(seed: &str, len: u64) -> impl Read + Send + 'static {
    let mut h = blake3::Hasher::new();
    h.update(seed.as_bytes());
    h.finalize_xof().take(len)
}

fn content_hash(seed: &str, len: u64) -> Hash {
    let mut h = blake3::Hasher::new();
    std::io::copy(&mut content(seed, len), &mut h).unwrap();
    h.finalize().into()
}

/// A zstd object of `content(seed, len)`, compressed as it is sent.
fn object_body(seed: &str, len: u64) -> reqwest::blocking::Body {
    let enc = zstd::stream::read::Encoder::new(content(seed, len), 1).unwrap();
    reqwest::blocking::Body::new(enc)
}

/// BLAKE3 and length of a download, read as it arrives.
fn download(url: &str, token: Option<&str>) -> (u16, Hash, u64) {
    let mut req = reqwest::blocking::Client::new().get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let mut r = req.send().unwrap();
    let status = r.status().as_u16();
    let mut h = blake3::Hasher::new();
    let n = std::io::copy(&mut r, &mut h).unwrap();
    (status, h.finalize().into(), n)
}

fn uploads_left(app: &deltaroot_server::App) -> Vec<String> {
    std::fs::read_dir(&*app.uploads)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A large object upload streams through a file: the server's memory does not grow with
/// it, its content is verified, and the stored file is the upload.
#[test]
fn large_upload_is_streamed_not_held() {
    if alone(
        "large_upload_is_streamed_not_held",
        Duration::from_secs(300),
    ) {
        return;
    }
    let server = Server::start_with(Backend::Sqlite, |c| c.max_upload = 1024 << 20);
    let len = 192u64 << 20;
    let hash = content_hash("large", len);
    let url = format!("{}/{}", server.plain_url, object_path(&hash));
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap();
    // Warm up with a small upload.
    let small = content_hash("small", 4 << 20);
    let r = client
        .put(format!("{}/{}", server.plain_url, object_path(&small)))
        .bearer_auth(&server.token)
        .body(object_body("small", 4 << 20))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let before = rss_kib();
    let start = Instant::now();
    let r = client
        .put(&url)
        .bearer_auth(&server.token)
        .body(object_body("large", len))
        .send()
        .unwrap();
    let after = rss_kib();
    eprintln!(
        "{len}-byte object uploaded in {:?}: RSS {before} -> {after} KiB",
        start.elapsed()
    );
    assert_eq!(r.status(), 201, "{:?}", r.text());
    assert!(
        after.saturating_sub(before) < 64 << 10,
        "RSS grew from {before} to {after} KiB"
    );
    assert!(
        uploads_left(&server.app).is_empty(),
        "{:?}",
        uploads_left(&server.app)
    );
    // The stored object decompresses to the content.
    let stored = server.data.path().join("store").join(object_path(&hash));
    let mut dec = zstd::stream::read::Decoder::new(std::fs::File::open(stored).unwrap()).unwrap();
    let mut h = blake3::Hasher::new();
    assert_eq!(std::io::copy(&mut dec, &mut h).unwrap(), len);
    assert_eq!(Hash::from(h.finalize()), hash);
}

/// Objects, deltas and packs go through a file to the store (parts of 8 MiB past that
/// size), are checked there, and leave no file behind, accepted or refused.
fn uploads_stream_through_a_file_to_the_store(backend: Backend) {
    let server = Server::start_with(backend, |c| c.max_upload = 64 << 20);
    let base = &server.plain_url;
    let client = reqwest::blocking::Client::new();
    let put = |rel: &str, body: reqwest::blocking::Body| {
        let r = client
            .put(format!("{base}/{rel}"))
            .bearer_auth(&server.token)
            .body(body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    // 20 MiB: three parts on S3.
    let len = 20u64 << 20;
    let hash = content_hash("object", len);
    let compressed = {
        let mut v = Vec::new();
        zstd::stream::read::Encoder::new(content("object", len), 1)
            .unwrap()
            .read_to_end(&mut v)
            .unwrap();
        v
    };
    assert_eq!(put(&object_path(&hash), object_body("object", len)).0, 201);
    assert_eq!(server.read_stored(&object_path(&hash)), compressed);
    // Stored once: a second upload is answered without reading it.
    let (status, sent) = send_big(
        &host(&server),
        "PUT",
        &format!("/{}", object_path(&hash)),
        Some(&server.token),
        len,
    );
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(sent < len, "{sent}");
    // Content that does not hash to the name is refused and not stored.
    let wrong = Hash::of(b"another content");
    let (s, e) = put(&object_path(&wrong), object_body("object", 1 << 20));
    assert_eq!(s, 400, "{e}");
    assert!(e.contains("hashes to"), "{e}");
    let (s, _, _) = download(&format!("{base}/{}", object_path(&wrong)), None);
    assert_eq!(s, 404);
    // A delta whose header names another pair is refused; a good one is stored.
    let (a, b) = (Hash::of(b"a"), Hash::of(b"b"));
    let header = deltaroot_format::DeltaHeader {
        method: deltaroot_format::Method::Zstd,
        source: a,
        target: b,
        target_size: 1,
    };
    let delta = deltaroot_format::encode_delta(&header, &[0u8; 100]);
    let (s, e) = put(&delta_path(&b, &a), delta.clone().into());
    assert_eq!(s, 400, "{e}");
    assert!(e.contains("header says"), "{e}");
    assert_eq!(put(&delta_path(&a, &b), delta.clone().into()).0, 201);
    assert_eq!(server.read_stored(&delta_path(&a, &b)), delta);
    // A pack that is not a pack is refused.
    let junk = vec![7u8; 1000];
    let (s, e) = put(&pack_path(&Hash::of(&junk)), junk.into());
    assert_eq!(s, 400, "{e}");
    assert!(
        uploads_left(&server.app).is_empty(),
        "{:?}",
        uploads_left(&server.app)
    );
}

/// The size limit holds while the body streams, with or without `Content-Length`: 413
/// naming the limit, nothing stored, no file left.
#[test]
fn uploads_past_the_limit_are_refused_while_streaming() {
    let server = Server::start_with(Backend::Sqlite, |c| c.max_upload = 1 << 20);
    let hash = content_hash("over", 4 << 20);
    let url = format!("{}/{}", server.plain_url, object_path(&hash));
    // Chunked: counted as it arrives.
    let r = reqwest::blocking::Client::new()
        .put(&url)
        .bearer_auth(&server.token)
        .body(object_body("over", 4 << 20))
        .send();
    match r {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            let e = r.text().unwrap();
            assert!(e.contains("1048576 bytes"), "{e}");
        }
        // The server may close before the client has sent everything: then it must not
        // have stored anything (checked below).
        Err(e) => eprintln!("chunked upload cut off: {e}"),
    }
    // Announced: refused before the body is read.
    let (status, sent) = send_big(
        &host(&server),
        "PUT",
        &format!("/{}", object_path(&hash)),
        Some(&server.token),
        512 << 20,
    );
    assert!(status.starts_with("HTTP/1.1 413"), "{status}");
    assert!(sent < 64 << 20, "{sent}");
    let (s, _, _) = download(&url, None);
    assert_eq!(s, 404);
    assert!(
        uploads_left(&server.app).is_empty(),
        "{:?}",
        uploads_left(&server.app)
    );
}

/// 1,000 unauthenticated plan requests for every pair of six releases, pairs with invented
/// versions and fresh installs start delta builds one at a time, each pair at most once,
/// and only for pairs whose target a channel offers and whose source is older.
#[test]
fn plan_requests_start_bounded_builds_for_offered_pairs_only() {
    let server = Server::start_with(Backend::Sqlite, |c| {
        c.max_builds = 1;
        c.build_queue = 3;
    });
    let (k, _trust, _keys) = key(1);
    let trees: Vec<_> = (1..=6).map(crate::fleet::tree).collect();
    for n in 1..=6 {
        crate::fleet::publish_release(&server, &k, &trees, n);
    }
    // Channel `ci` offers 6.0 (the publisher's channel), `stable` 4.0.
    server
        .op(server
            .client()
            .promote("demo", "stable", &promote_to("4.0")))
        .unwrap();
    let offered: Vec<(u32, u32)> = (1..6)
        .map(|f| (f, 6))
        .chain((1..4).map(|f| (f, 4)))
        .collect();
    let mut paths = Vec::new();
    for f in 1..=6 {
        for t in 1..=6 {
            if f != t {
                paths.push(format!("{f}.0/{t}.0"));
            }
        }
        paths.push(format!("-/{f}.0"));
        paths.push(format!("9.{f}/{f}.0"));
        paths.push(format!("{f}.0/9.{f}"));
    }
    let base = format!("{}/v1/products/demo/plans", server.plain_url);
    let next = Arc::new(AtomicU64::new(0));
    let answers: Vec<(u16, u64)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let (next, paths, base) = (next.clone(), &paths, &base);
                s.spawn(move || {
                    let c = reqwest::blocking::Client::new();
                    let mut got = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= 1000 {
                            return got;
                        }
                        let p = &paths[i as usize % paths.len()];
                        let r = c.get(format!("{base}/{p}")).send().unwrap();
                        got.push((r.status().as_u16(), i));
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(answers.len(), 1000);
    for (status, i) in &answers {
        let p = &paths[*i as usize % paths.len()];
        let want = if p.contains("/9.") { 404 } else { 200 };
        assert_eq!(*status, want, "{p}");
    }
    // Pairs refused while the queue was full are queued by a later request.
    server.op(server.app.builds.idle());
    for (f, t) in &offered {
        let r = reqwest::blocking::get(format!("{base}/{f}.0/{t}.0")).unwrap();
        assert_eq!(r.status(), 200);
    }
    server.op(server.app.builds.idle());
    let m = &server.app.metrics;
    let started = m.delta_builds_started.load(Ordering::SeqCst);
    let refused = m.delta_builds_refused.load(Ordering::SeqCst);
    let peak = server.app.builds.peak();
    eprintln!(
        "1000 plan requests over {} paths: {started} builds started, {refused} refused \
         (queue full), at most {peak} at once; {} pairs offered",
        paths.len(),
        offered.len()
    );
    assert_eq!(peak, 1, "builds ran at once");
    assert!(
        started >= 1 && started as usize <= offered.len(),
        "{started} builds for {} offered pairs",
        offered.len()
    );
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.plain_url))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(&format!("deltaroot_delta_builds_started_total {started}\n")),
        "{metrics}"
    );
    // Built for an offered pair, not for one nobody is offered or a downgrade.
    let app = |n: usize| Hash::of(&std::fs::read(trees[n - 1].path().join("bin/app")).unwrap());
    let built = |a: usize, b: usize| {
        server
            .op(server.app.db.delta_sizes(&[(app(a), app(b))]))
            .unwrap()[0]
            .is_some()
    };
    assert!(
        built(1, 6) && built(2, 6) && built(1, 4),
        "offered pairs not built"
    );
    assert!(
        !built(1, 3) && !built(1, 5),
        "built for a pair no channel offers"
    );
    assert!(!built(6, 1) && !built(4, 2), "built for a downgrade");
}

/// Connections that send half a request line, or nothing, are closed within the timeouts
/// (5,000 at once, on loopback), a stalled upload body is refused, and `/healthz` answers
/// all the while.
#[test]
fn half_open_connections_are_closed_and_health_answers_meanwhile() {
    if alone(
        "half_open_connections_are_closed_and_health_answers_meanwhile",
        Duration::from_secs(120),
    ) {
        return;
    }
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= 11_000,
        "the test needs 11,000 file descriptors; the hard limit is {hard}"
    );
    setrlimit(
        Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(hard.min(65536)),
            maximum: lim.maximum,
        },
    )
    .unwrap();
    let header = Duration::from_secs(1);
    let idle = Duration::from_secs(2);
    // The harness's listeners have tokio's backlog of 1,024: a connection the kernel holds
    // unaccepted past it is not the server's to close. These take the system's largest.
    let data = tempfile::tempdir().unwrap();
    let rt = crate::common::runtime();
    let mut place = crate::common::Place::new(Backend::Sqlite, &rt, data.path());
    place.config.header_timeout = header;
    place.config.idle_timeout = idle;
    let app = rt
        .block_on(deltaroot_server::App::start(&place.config))
        .unwrap();
    let token = deltaroot_server::new_token();
    rt.block_on(app.db.create_token("ci", &token, "all", None))
        .unwrap();
    let t = crate::common::tls();
    let pem = tempfile::tempdir().unwrap();
    let (cert, key) = (pem.path().join("cert.pem"), pem.path().join("key.pem"));
    std::fs::write(&cert, &t.cert).unwrap();
    std::fs::write(&key, &t.key).unwrap();
    let mut stops = Vec::new();
    let mut addrs = Vec::new();
    for tls in [
        None,
        Some(deltaroot_server::tls_config(&cert, &key).unwrap()),
    ] {
        let listener = rt.block_on(async {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
            s.listen(8192).unwrap()
        });
        addrs.push(listener.local_addr().unwrap().to_string());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(deltaroot_server::serve_with(
            listener,
            app.clone(),
            tls,
            Duration::from_secs(5),
            async {
                let _ = rx.await;
            },
        ));
        stops.push(tx);
    }
    let (plain, tls) = (addrs[0].clone(), addrs[1].clone());

    // Health checks every 100 ms on new connections while the storm lasts.
    let storm = Arc::new(AtomicBool::new(true));
    let health = {
        let (storm, url) = (storm.clone(), format!("http://{plain}/healthz"));
        std::thread::spawn(move || {
            let c = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(2))
                .pool_max_idle_per_host(0)
                .build()
                .unwrap();
            let (mut ok, mut slowest, mut failed) = (0, Duration::ZERO, Vec::new());
            while storm.load(Ordering::SeqCst) {
                let t = Instant::now();
                match c.get(&url).send() {
                    Ok(r) if r.status() == 200 => {
                        ok += 1;
                        slowest = slowest.max(t.elapsed());
                    }
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (ok, slowest, failed)
        })
    };

    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Kind {
        HalfLine,
        Silent,
        SilentTls,
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let results: Vec<(Kind, Option<Duration>)> = rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let sem = Arc::new(tokio::sync::Semaphore::new(256));
        let mut tasks = Vec::new();
        for i in 0..5000 {
            let kind = match i % 10 {
                0 | 1 => Kind::Silent,
                2 => Kind::SilentTls,
                _ => Kind::HalfLine,
            };
            let addr = if kind == Kind::SilentTls {
                &tls
            } else {
                &plain
            }
            .clone();
            // At most 256 connections being opened at once, and a pause every 1,000: the
            // listen backlog is bounded.
            let permit = sem.clone().acquire_owned().await.unwrap();
            if i % 1000 == 999 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tasks.push(tokio::spawn(async move {
                let mut s = loop {
                    match tokio::net::TcpStream::connect(&addr).await {
                        Ok(s) => break s,
                        Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                };
                if kind == Kind::HalfLine {
                    s.write_all(b"GET /healthz HT").await.unwrap();
                }
                drop(permit);
                let start = tokio::time::Instant::now();
                let mut buf = [0u8; 64];
                let closed = tokio::time::timeout(Duration::from_secs(15), async {
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                })
                .await;
                (kind, closed.ok().map(|_| start.elapsed()))
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });

    // A stalled upload body: refused once it has sent nothing for the idle timeout.
    let s = TcpStream::connect(&plain).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let h = Hash::of(b"stalled");
    (&s).write_all(
        format!(
            "PUT /{} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
             Content-Length: 100000\r\n\r\n0123456789",
            object_path(&h),
            token
        )
        .as_bytes(),
    )
    .unwrap();
    let t = Instant::now();
    let mut answer = String::new();
    let _ = (&s).read_to_string(&mut answer);
    let stalled = t.elapsed();

    storm.store(false, Ordering::SeqCst);
    let (ok, slowest, failed) = health.join().unwrap();

    let mut report = Vec::new();
    for kind in [Kind::HalfLine, Kind::Silent, Kind::SilentTls] {
        let mut times: Vec<Duration> = results
            .iter()
            .filter(|r| r.0 == kind)
            .map(|r| {
                r.1.unwrap_or_else(|| panic!("a {kind:?} connection stayed open 15 s"))
            })
            .collect();
        times.sort();
        report.push(format!(
            "{kind:?}: {} closed, min {:?}, median {:?}, max {:?}",
            times.len(),
            times[0],
            times[times.len() / 2],
            times[times.len() - 1]
        ));
        let (lo, hi) = match kind {
            Kind::HalfLine | Kind::SilentTls => (header, header + Duration::from_millis(1500)),
            Kind::Silent => (idle, 2 * idle + Duration::from_millis(1500)),
        };
        assert!(
            // The client notes its start after the server accepted: a little later.
            times[0] >= lo - Duration::from_millis(500) && times[times.len() - 1] <= hi,
            "{kind:?} closed after {:?} .. {:?}, not within {lo:?} .. {hi:?}",
            times[0],
            times[times.len() - 1]
        );
    }
    eprintln!(
        "{}\nstalled upload answered after {stalled:?}: {:?}\n/healthz: {ok} answered, \
         slowest {slowest:?}, failed {failed:?}",
        report.join("\n"),
        answer.lines().next()
    );
    assert!(failed.is_empty(), "/healthz failed: {failed:?}");
    assert!(ok >= 5, "/healthz answered {ok} times");
    assert!(
        slowest < Duration::from_secs(1),
        "/healthz took {slowest:?}"
    );
    assert!(
        answer.starts_with("HTTP/1.1 400") || answer.is_empty(),
        "{answer}"
    );
    assert!(
        stalled >= idle - Duration::from_millis(100)
            && stalled <= 2 * idle + Duration::from_secs(1),
        "stalled upload ended after {stalled:?}"
    );
    assert!(uploads_left(&app).is_empty());
    for tx in stops {
        let _ = tx.send(());
    }
}

/// A database error answers 500 with `{"error": "internal error"}`: no table names, driver
/// text or paths.
#[test]
fn server_errors_say_internal_error_only() {
    let server = Server::start(Backend::Sqlite);
    server
        .op(sqlx::query("DROP TABLE objects").execute(server.app.db.pool()))
        .unwrap();
    let h = Hash::of(b"x");
    let r = reqwest::blocking::Client::new()
        .put(format!("{}/{}", server.plain_url, object_path(&h)))
        .bearer_auth(&server.token)
        .body(vec![0u8; 10])
        .send()
        .unwrap();
    assert_eq!(r.status(), 500);
    let body: serde_json::Value = r.json().unwrap();
    assert_eq!(body, serde_json::json!({"error": "internal error"}));
    // 4xx answers still say what was wrong.
    let r = reqwest::blocking::get(format!(
        "{}/v1/products/nope/channels/stable/check",
        server.plain_url
    ))
    .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().unwrap().contains("no product nope"));
}

/// Bytes the publisher reads back with its token are not counted as served to devices.
#[test]
fn publisher_reads_are_not_counted_as_served() {
    let server = Server::start(Backend::Sqlite);
    let len = 1u64 << 20;
    let hash = content_hash("counted", len);
    let url = format!("{}/{}", server.plain_url, object_path(&hash));
    let r = reqwest::blocking::Client::new()
        .put(&url)
        .bearer_auth(&server.token)
        .body(object_body("counted", len))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let token_read = || server.app.metrics.token_object_bytes.load(Ordering::SeqCst);
    let (s, _, n) = download(&url, Some(&server.token));
    assert_eq!(s, 200);
    assert_eq!((server.served(), token_read()), (0, n));
    // A device (no token, or one the server does not know) is counted.
    let (_, _, m) = download(&url, None);
    let (_, _, k) = download(&url, Some("drt_unknown"));
    assert_eq!((server.served(), token_read()), (m + k, n));
    let metrics = reqwest::blocking::get(format!("{}/metrics", server.plain_url))
        .unwrap()
        .text()
        .unwrap();
    assert!(
        metrics.contains(&format!(
            "deltaroot_served_bytes_total{{kind=\"object\"}} {}\n",
            m + k
        )) && metrics.contains(&format!(
            "deltaroot_token_read_bytes_total{{kind=\"object\"}} {n}\n"
        )),
        "{metrics}"
    );
}
