//! Debian's nginx with the examples in `deploy/nginx/`, run as they are but for addresses and
//! paths: `cache.conf` in front of a real server (the second device's update comes from
//! nginx's cache, the server sends it nothing), and `static.conf` serving a folder that
//! `deltaroot publish --out` wrote, with no server at all. Without `/usr/sbin/nginx` (Debian's
//! `nginx` package) each case says it is skipped and passes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deltaroot_client::agent::{Agent, Settings, UpdateOutcome};
use deltaroot_client::device::DeployReport;
use deltaroot_publisher::publish::publish;
use deltaroot_publisher::sink::DirSink;

use crate::common::{agent_with, key, promote_to, tls, Backend, Server};
use crate::fleet::{publish_release, same_tree, tree, updated};

const NGINX: &str = "/usr/sbin/nginx";

/// Whether nginx is here; if not, says on stderr (past the harness's capture) that `case`
/// is skipped.
fn nginx_or_skip(case: &str) -> bool {
    if Path::new(NGINX).exists() {
        return true;
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "cache::{case} skipped: nginx not installed ({NGINX}; apt-get install nginx)"
    );
    false
}

/// nginx in the foreground, one process, in a folder of its own, on a free loopback port
/// with HTTPS (the test certificate); stopped when dropped.
struct Nginx {
    child: Child,
    dir: tempfile::TempDir,
    url: String,
}

impl Nginx {
    /// Runs `deploy/nginx/<file>` with its listen address, its certificate and the
    /// replacements `more` makes (given nginx's folder) in place: each must be found.
    fn start(file: &str, more: impl FnOnce(&Path) -> Vec<(&'static str, String)>) -> Nginx {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = crate::common::free_port();
        let (cert, key) = (d.join("tls.pem"), d.join("tls.key"));
        std::fs::write(&cert, &tls().cert).unwrap();
        std::fs::write(&key, &tls().key).unwrap();
        let mut replace = vec![
            ("listen 443 ssl;", format!("listen 127.0.0.1:{port} ssl;")),
            (
                "/etc/nginx/tls/updates.example.com.pem",
                cert.display().to_string(),
            ),
            (
                "/etc/nginx/tls/updates.example.com.key",
                key.display().to_string(),
            ),
        ];
        replace.extend(more(d));
        let example = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/nginx")
            .join(file);
        let mut site = std::fs::read_to_string(&example).unwrap();
        for (from, to) in &replace {
            assert!(
                site.contains(from),
                "{} no longer holds {from:?}",
                example.display()
            );
            site = site.replace(from, to);
        }
        std::fs::write(d.join("site.conf"), site).unwrap();
        // Debian's compiled-in temporary folders are under /var/lib/nginx: here, in `d`.
        let p = d.display();
        std::fs::write(
            d.join("nginx.conf"),
            format!(
                "master_process off;\n\
                 pid {p}/nginx.pid;\n\
                 error_log {p}/error.log info;\n\
                 events {{ worker_connections 256; }}\n\
                 http {{\n\
                 client_body_temp_path {p}/body;\n\
                 proxy_temp_path {p}/proxy;\n\
                 fastcgi_temp_path {p}/fastcgi;\n\
                 uwsgi_temp_path {p}/uwsgi;\n\
                 scgi_temp_path {p}/scgi;\n\
                 include {p}/site.conf;\n\
                 }}\n"
            ),
        )
        .unwrap();
        let mut child = Command::new(NGINX)
            .arg("-p")
            .arg(d)
            .arg("-c")
            .arg(d.join("nginx.conf"))
            .arg("-e")
            .arg(d.join("error.log"))
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "nginx exited ({st}):\n{}",
                    std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "nginx did not listen on port {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Nginx {
            child,
            dir,
            url: format!("https://127.0.0.1:{port}"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Asks for `/healthz?mark=MARK` and waits until its line is in the access log: every
    /// request answered before it is logged then too (one process logs each request as it
    /// finishes it). Returns the log's lines so far.
    fn log_through(&self, http: &reqwest::blocking::Client, mark: &str) -> Vec<String> {
        let r = http
            .get(format!("{}/healthz?mark={mark}", self.url))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        let start = Instant::now();
        loop {
            let log = self.log();
            if log.contains(&format!("mark={mark} ")) {
                return log.lines().map(str::to_string).collect();
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "nginx did not log /healthz?mark={mark}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking HTTPS client that trusts the test certificate (nginx's and the server's).
fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tls().cert.as_bytes()).unwrap())
        .build()
        .unwrap()
}

/// The server's `/metrics` lines named `name` (with any labels), their values summed.
fn metric(server: &Server, name: &str) -> u64 {
    let text = client()
        .get(format!("{}/metrics", server.url))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let values: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(!values.is_empty(), "no {name} in /metrics:\n{text}");
    values.iter().sum()
}

/// `deltaroot_served_bytes_total`: objects, deltas and packs sent to devices.
fn served_bytes(server: &Server) -> u64 {
    metric(server, "deltaroot_served_bytes_total")
}

fn report(o: UpdateOutcome) -> DeployReport {
    match o {
        UpdateOutcome::Updated(r) => r,
        other => panic!("expected an update, got {other:?}"),
    }
}

/// One access log line of `cache.conf`'s format: (path, status, cache status).
fn parse(line: &str) -> (String, u16, String) {
    let request = line.split('"').nth(1).unwrap_or_else(|| panic!("{line}"));
    let path = request.split(' ').nth(1).unwrap().to_string();
    let after = line.split('"').nth(2).unwrap();
    let status = after.split_whitespace().next().unwrap().parse().unwrap();
    let cache = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cache="))
        .unwrap_or_else(|| panic!("no cache= in {line}"))
        .to_string();
    (path, status, cache)
}

/// What `cache.conf` keeps: files named by content, and signed manifests.
fn cacheable(path: &str) -> bool {
    ["/objects/", "/deltas/", "/packs/"]
        .iter()
        .any(|p| path.starts_with(p))
        || path.ends_with("/manifest")
        || path.ends_with("/manifest.sig")
}

/// Devices A and B on 1.0 update to 2.0 through `cache.conf`: A's downloads reach the
/// server and fill the cache; B's come from the cache (every one a HIT in nginx's log) and
/// the server's served-bytes counter does not move, while B's checks and plan still reach
/// the server.
#[test]
fn a_second_device_updates_from_the_cache() {
    if !nginx_or_skip("a_second_device_updates_from_the_cache") {
        return;
    }
    let server = Server::start(Backend::Sqlite);
    let (k, trust, _keys) = key(1);
    let trees: Vec<_> = (1..=2).map(tree).collect();
    // Something worth caching: 256 KiB that no delta or compression makes smaller.
    let mut blob = vec![0u8; 256 << 10];
    blake3::Hasher::new()
        .update(b"release 2")
        .finalize_xof()
        .fill(&mut blob);
    std::fs::write(trees[1].path().join("bin/blob"), blob).unwrap();
    publish_release(&server, &k, &trees, 1);
    publish_release(&server, &k, &trees, 2);
    let http = client();
    server
        .op(server
            .client()
            .promote("demo", "stable", &promote_to("1.0")))
        .unwrap();

    let upstream = server.url.strip_prefix("https://").unwrap().to_string();
    let ca = server.ca_cert.display().to_string();
    let nginx = Nginx::start("cache.conf", |d| {
        vec![
            ("server 127.0.0.1:8443;", format!("server {upstream};")),
            ("/etc/deltaroot/tls/cert.pem", ca),
            (
                "proxy_ssl_name updates.example.com;",
                "proxy_ssl_name localhost;".into(),
            ),
            (
                "/var/cache/nginx/deltaroot",
                d.join("cache").display().to_string(),
            ),
            (
                "/var/log/nginx/deltaroot-cache.log",
                d.join("access.log").display().to_string(),
            ),
        ]
    });

    // Both devices on 1.0, straight from the server.
    let roots = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for r in &roots {
        updated(
            agent_with(&server, r.path(), &trust, |_| {})
                .update()
                .unwrap(),
        );
    }
    server
        .op(server
            .client()
            .promote("demo", "stable", &promote_to("2.0")))
        .unwrap();
    // The plan 1.0 -> 2.0 settles first: a content it fetches whole may start a delta
    // build on the server, which could change the plan between the two devices.
    let plan = http
        .get(format!("{}/v1/products/demo/plans/1.0/2.0", server.url))
        .send()
        .unwrap();
    assert_eq!(plan.status(), 200);
    server.op(server.app.builds.idle());
    let through = |r: &Path| {
        agent_with(&server, r, &trust, |s| {
            s.server = Some(nginx.url.clone());
        })
    };
    let checks = || metric(&server, "deltaroot_update_checks_total");

    let before_a = served_bytes(&server);
    let report_a = report(through(roots[0].path()).update().unwrap());
    let after_a = served_bytes(&server);
    let checks_a = checks();
    let lines_a = nginx.log_through(&http, "after-a");
    assert_eq!(report_a.version, "2.0");

    let report_b = report(through(roots[1].path()).update().unwrap());
    let after_b = served_bytes(&server);
    let lines = nginx.log_through(&http, "after-b");
    let lines_b = &lines[lines_a.len()..];
    assert_eq!(report_b.version, "2.0");
    same_tree(trees[1].path(), &roots[1].path().join("current"));
    same_tree(trees[1].path(), &roots[0].path().join("current"));

    // The server sent A's downloads, and nothing for B's.
    let a_bytes = after_a - before_a;
    assert!(a_bytes > 0, "A's downloads did not reach the server");
    assert_eq!(
        after_b,
        after_a,
        "the server sent {} bytes for B, whose downloads should all come from the cache",
        after_b - after_a
    );
    assert_eq!(report_b.downloaded_bytes, report_a.downloaded_bytes);
    // B's check went to the server (a check-in is never cached).
    assert_eq!(checks(), checks_a + 1);

    // nginx's log: A's cacheable requests were misses, B's the same paths, every one a HIT;
    // checks and plans passed through (no cache status).
    let cached = |lines: &[String], want: &str| -> Vec<String> {
        lines
            .iter()
            .map(|l| parse(l))
            .filter(|(p, _, _)| cacheable(p))
            .map(|(p, s, c)| {
                assert_eq!((s, c.as_str()), (200, want), "{p}");
                p
            })
            .collect::<std::collections::BTreeSet<String>>()
            .into_iter()
            .collect()
    };
    let a_lines: Vec<String> = lines_a
        .iter()
        .filter(|l| !l.contains("/healthz?mark="))
        .cloned()
        .collect();
    let a_paths = cached(&a_lines, "MISS");
    let b_paths = cached(lines_b, "HIT");
    assert_eq!(a_paths, b_paths);
    let downloads: Vec<&String> = b_paths
        .iter()
        .filter(|p| !p.contains("/manifest"))
        .collect();
    assert!(
        !downloads.is_empty(),
        "B downloaded nothing through nginx:\n{}",
        lines_b.join("\n")
    );
    for (path, status, cache) in lines_b.iter().map(|l| parse(l)) {
        if path.contains("/check?") || path.contains("/plans/") {
            assert_eq!((status, cache.as_str()), (200, "-"), "{path}");
        }
    }
    assert!(lines_b
        .iter()
        .any(|l| l.contains("/channels/stable/check?")));

    // What a client sees: the server's immutable lifetime and nginx's cache status.
    let r = http
        .get(format!("{}{}", nginx.url, downloads[0]))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-cache-status"], "HIT");
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    // A check is not cached and says so.
    let r = http
        .get(format!(
            "{}/v1/products/demo/channels/stable/check?current=1.0",
            nginx.url
        ))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-cache-status").is_none());
    assert!(r.headers().get("cache-control").is_none());
    // Uploads do not go through the cache.
    let r = http
        .put(format!("{}{}", nginx.url, downloads[0]))
        .bearer_auth(&server.token)
        .body("x")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(served_bytes(&server), after_a);
    eprintln!(
        "through nginx: the server sent {a_bytes} bytes for device A ({} files: {}), 0 for \
         device B (as many HITs); A and B each received {} bytes",
        a_paths.len(),
        a_paths.join(" "),
        report_b.downloaded_bytes
    );
}

/// A device given the folder's URL (`folder = "https://…"`) updates to 1.0, then to 2.0 once
/// it is published, from nginx serving what `deltaroot publish --out` wrote (`static.conf`):
/// the channel's `latest` file says what to install, manifests, plans, objects, deltas and
/// packs are plain files, and the device decides the check itself.
#[test]
fn a_device_updates_from_a_static_folder() {
    if !nginx_or_skip("a_device_updates_from_a_static_folder") {
        return;
    }
    let (k, trust, _keys) = key(1);
    let trees: Vec<_> = (1..=2).map(tree).collect();
    let out = tempfile::tempdir().unwrap();
    let sink = DirSink::new(out.path()).unwrap();
    let release = |n: u32| {
        let opts = crate::fleet::release_options(n, "stable");
        let old = (n > 1).then(|| trees[n as usize - 2].path());
        publish(old, trees[n as usize - 1].path(), &k, &sink, &opts).unwrap();
    };
    release(1);
    let root_dir = out.path().display().to_string();
    let nginx = Nginx::start("static.conf", |d| {
        vec![
            ("/srv/deltaroot/releases", root_dir),
            (
                "/var/log/nginx/deltaroot-static.log",
                d.join("access.log").display().to_string(),
            ),
        ]
    });
    let ca: PathBuf = nginx.dir.path().join("tls.pem");
    let root = tempfile::tempdir().unwrap();
    let agent = Agent::new(Settings {
        root: Some(root.path().to_owned()),
        folder: Some(PathBuf::from(&nginx.url)),
        product: Some("demo".into()),
        trust: vec![trust.clone()],
        device_id: Some("static-1".into()),
        ca_cert: Some(ca),
        ..Settings::default()
    })
    .unwrap();
    assert_eq!(updated(agent.update().unwrap()), "1.0");
    same_tree(trees[0].path(), &root.path().join("current"));
    assert!(
        matches!(
            agent.update().unwrap(),
            UpdateOutcome::UpToDate { version: Some(v) } if v == "1.0"
        ),
        "nothing newer in the folder yet"
    );
    release(2);
    let report = report(agent.update().unwrap());
    assert_eq!(report.version, "2.0");
    assert!(report.deltas + report.packs > 0, "{report:?}");
    same_tree(trees[1].path(), &root.path().join("current"));

    let http = client();
    let get = |path: &str| http.get(format!("{}{path}", nginx.url)).send().unwrap();
    // The channel's latest version, asked again every time.
    let r = get("/v1/products/demo/channels/stable/latest");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert_eq!(r.text().unwrap(), "2.0\n");
    let r = get("/v1/products/demo/plans/1.0/2.0");
    assert_eq!(r.headers()["cache-control"], "no-cache");
    assert_eq!(r.headers()["content-type"], "application/json");
    // Files named by content: a year, and a resumed download gets the rest.
    let log = std::fs::read_to_string(nginx.dir.path().join("access.log")).unwrap();
    let object = log
        .lines()
        .filter_map(|l| l.split('"').nth(1))
        .filter_map(|r| r.split(' ').nth(1))
        .find(|p| p.starts_with("/objects/"))
        .expect("an object was downloaded")
        .to_string();
    let r = get(&object);
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let whole = r.bytes().unwrap();
    let r = http
        .get(format!("{}{object}", nginx.url))
        .header("Range", "bytes=1-")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap(), whole[1..]);
    let r = get("/v1/products/demo/releases/2.0/manifest.sig");
    assert_eq!(r.bytes().unwrap().len(), 64);
    // No listings, no files being written, no update check.
    assert_eq!(get("/objects/").status(), 404);
    assert_eq!(get("/v1/products/demo/channels/stable/check").status(), 404);
}
