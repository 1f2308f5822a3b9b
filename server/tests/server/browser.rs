//! The dashboard in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! driven over WebDriver by fantoccini) against a real server holding releases the real
//! publisher made: an operator signs in, reads the releases, opens a release, the savings
//! ledger and the diff of two releases, promotes a release to 10 %, sees it on the channels
//! page and in the audit log; a viewer's promote is refused. axe-core (vendored in `fixtures/dashboard`) checks every page visited: no
//! serious or critical violation.
//!
//! `.ci/run` installs Chromium and chromedriver; without `chromedriver` on the PATH the test
//! is skipped, saying so, unless `CI` is set (then it fails). With `DELTAROOT_SCREENSHOTS=DIR`
//! it writes a PNG of every page to DIR (how `docs/screenshots/` is made).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deltaroot_server::access::Role;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

use crate::common::Backend;
use crate::fleet::{fleet, Fleet};

/// axe-core, as `npm pack axe-core@4.14.1` ships it.
const AXE: &str = include_str!("../../../fixtures/dashboard/axe.min.js");

/// chromedriver on a free port, stopped when dropped.
struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chromedriver() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("chromedriver"))
        .find(|p| p.is_file())
}

fn start_driver() -> Option<Driver> {
    let Some(exe) = chromedriver() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromedriver is not installed: apt-get install chromium chromium-driver"
        );
        eprintln!(
            "SKIPPED browser test: chromedriver is not on the PATH \
             (apt-get install chromium chromium-driver; .ci/run does)"
        );
        return None;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(exe)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Ready when it accepts connections.
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "chromedriver did not start"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
        _profile: tempfile::tempdir().unwrap(),
    })
}

async fn browser(d: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--ignore-certificate-errors",
                "--window-size=1200,900",
                format!("--user-data-dir={}", d._profile.path().display()),
            ]
        }),
    );
    let http = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(http)
        .capabilities(caps)
        .connect(&d.url)
        .await
        .expect("a Chromium session")
}

/// Runs axe-core on the page: the serious and critical violations, as `id: help (targets)`.
async fn axe(c: &Client) -> Vec<String> {
    c.execute(AXE, vec![]).await.expect("axe loads");
    let out = c
        .execute_async(
            "const done = arguments[arguments.length - 1];
             axe.run(document).then(r => done(r.violations
               .filter(v => v.impact === 'serious' || v.impact === 'critical')
               .map(v => v.id + ': ' + v.help + ' (' + v.nodes.map(n => n.target.join(' ')).join(', ') + ')')))
               .catch(e => done(['axe failed: ' + e]));",
            vec![],
        )
        .await
        .expect("axe runs");
    serde_json::from_value(out).unwrap()
}

/// Checks the page with axe, and writes a screenshot named `name` when asked to.
async fn look(c: &Client, name: &str) {
    let v = axe(c).await;
    assert!(v.is_empty(), "{name}: {v:#?}");
    if let Some(dir) = std::env::var_os("DELTAROOT_SCREENSHOTS") {
        let png = c.screenshot().await.unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(PathBuf::from(dir).join(format!("{name}.png")), png).unwrap();
    }
}

/// Waits (at most 10 s) for the page a click started to load at `path` (and query): a WebDriver click
/// may return before the navigation it starts ends.
async fn wait_path(c: &Client, path: &str) {
    let start = Instant::now();
    loop {
        let at = c.current_url().await.unwrap();
        let ready = c
            .execute("return document.readyState", vec![])
            .await
            .unwrap();
        let here = match at.query() {
            Some(q) => format!("{}?{q}", at.path()),
            None => at.path().to_string(),
        };
        if here == path && ready == "complete" {
            return;
        }
        if start.elapsed() > Duration::from_secs(10) {
            panic!("still at {at} waiting for {path}: {}", shown(c).await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn sign_in(c: &Client, url: &str, user: &str) {
    c.goto(&format!("{url}/ui/login")).await.unwrap();
    c.find(Locator::Css("input[name=username]"))
        .await
        .unwrap()
        .send_keys(user)
        .await
        .unwrap();
    c.find(Locator::Css("input[name=password]"))
        .await
        .unwrap()
        .send_keys("a long enough secret")
        .await
        .unwrap();
    c.find(Locator::Css("form[action='/ui/login'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(c, "/ui/").await;
}

async fn sign_out(c: &Client) {
    c.find(Locator::Css("form.signout button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(c, "/ui/login").await;
}

/// The text of the page's `<main>`. A page still replacing itself (a form's redirect landing
/// while it is read) can make the element found stale before its text is read: it is found
/// again, a few times, before that counts as a failure.
async fn text(c: &Client) -> String {
    for _ in 0..4 {
        if let Ok(m) = c.find(Locator::Css("main")).await {
            if let Ok(t) = m.text().await {
                return t;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    match c.find(Locator::Css("main")).await {
        Ok(m) => m.text().await.unwrap(),
        Err(e) => panic!(
            "no <main> at {:?} ({e}): {}",
            c.current_url().await.map(|u| u.to_string()),
            shown(c).await
        ),
    }
}

/// What the page shows as text (a browser error page names its error code there).
async fn shown(c: &Client) -> String {
    c.execute(
        "return document.body ? document.body.innerText : ''",
        vec![],
    )
    .await
    .map(|v| v.as_str().unwrap_or_default().to_string())
    .unwrap_or_else(|e| format!("(no text: {e})"))
}

async fn operator_and_viewer(f: &Fleet, d: &Driver) {
    let url = &f.server.url;
    let c = browser(d).await;

    // The login page, then an operator's session.
    c.goto(&format!("{url}/ui/login")).await.unwrap();
    // The checker finds what it should: an input without a label is a critical violation.
    c.execute(
        "document.querySelector('main').appendChild(document.createElement('input'))",
        vec![],
    )
    .await
    .unwrap();
    let found = axe(&c).await;
    assert!(found.iter().any(|v| v.starts_with("label:")), "{found:?}");
    c.goto(&format!("{url}/ui/login")).await.unwrap();
    look(&c, "login").await;
    sign_in(&c, url, "op").await;
    look(&c, "products").await;

    // The releases, and one release.
    c.goto(&format!("{url}/ui/products/demo/releases"))
        .await
        .unwrap();
    let page = text(&c).await;
    assert!(page.contains("% of the image"), "{page}");
    look(&c, "releases").await;
    c.find(Locator::LinkText("2.0"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&c, "/ui/products/demo/releases/2.0").await;
    let page = text(&c).await;
    assert!(page.contains("What changed since 1.0"), "{page}");
    assert!(page.contains("bin/app"), "{page}");
    look(&c, "release").await;

    // The savings ledger, and from it the file-by-file diff of 1.0 -> 2.0.
    c.find(Locator::LinkText("savings ledger"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&c, "/ui/products/demo/ledger").await;
    let page = text(&c).await;
    assert!(page.contains("Moving the fleet to a release"), "{page}");
    look(&c, "ledger").await;
    c.find(Locator::Css(
        "a[href='/ui/products/demo/diff?from=1.0&to=2.0']",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    wait_path(&c, "/ui/products/demo/diff?from=1.0&to=2.0").await;
    let page = text(&c).await;
    assert!(page.contains("bin/app"), "{page}");
    look(&c, "diff").await;

    // Promote 2.0 to a tenth of the devices.
    c.goto(&format!("{url}/ui/products/demo/channels"))
        .await
        .unwrap();
    look(&c, "channels").await;
    c.find(Locator::Css("select[name=version]"))
        .await
        .unwrap()
        .select_by_value("2.0")
        .await
        .unwrap();
    let percent = c
        .find(Locator::Css(
            "form[action='/ui/products/demo/promote'] input[name=percent]",
        ))
        .await
        .unwrap();
    percent.clear().await.unwrap();
    percent.send_keys("10").await.unwrap();
    c.find(Locator::Css(
        "form[action='/ui/products/demo/promote'] input[name=confirm]",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    c.find(Locator::Css(
        "form[action='/ui/products/demo/promote'] button",
    ))
    .await
    .unwrap()
    .click()
    .await
    .unwrap();
    wait_path(&c, "/ui/products/demo/channels?done=promote").await;
    let page = text(&c).await;
    assert!(page.contains("Promoted."), "{page}");
    assert!(page.contains("stable: 2.0"), "{page}");
    assert!(page.contains("offered to 10.0 % of devices"), "{page}");
    let st = f.server.client().channel("demo", "stable").await.unwrap();
    assert_eq!(st.rollout.unwrap().percent, 10.0);

    // Paced by egress from the rollout's change form, folded until opened.
    let waves = "#waves-stable form";
    c.find(Locator::Css("#waves-stable summary"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let budget = c
        .find(Locator::Css(&format!(
            "{waves} input[name=max_bytes_per_hour]"
        )))
        .await
        .unwrap();
    budget.send_keys("50G").await.unwrap();
    for part in ["input[name=confirm]", "button"] {
        c.find(Locator::Css(&format!("{waves} {part}")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
    }
    wait_path(&c, "/ui/products/demo/channels?done=rollout").await;
    let page = text(&c).await;
    assert!(
        page.contains("Paced by egress: at most 50.0 GB an hour"),
        "{page}"
    );
    let st = f.server.client().channel("demo", "stable").await.unwrap();
    let ro = st.rollout.unwrap();
    assert_eq!(
        (ro.percent, ro.max_bytes_per_hour),
        (10.0, Some(50_000_000_000)),
        "{page}\n{ro:?}"
    );

    // The audit log names the operator.
    c.goto(&format!("{url}/ui/audit")).await.unwrap();
    let page = text(&c).await;
    assert!(page.contains("user:op"), "{page}");
    assert!(page.contains("promote"), "{page}");
    look(&c, "audit").await;
    c.goto(&format!("{url}/ui/products/demo/devices"))
        .await
        .unwrap();
    look(&c, "devices").await;
    sign_out(&c).await;

    // A viewer sees no promote form, and a promote posted from the page anyway is refused.
    sign_in(&c, url, "vi").await;
    c.goto(&format!("{url}/ui/products/demo/channels"))
        .await
        .unwrap();
    let page = text(&c).await;
    assert!(page.contains("Your role (viewer) reads"), "{page}");
    assert!(c
        .find(Locator::Css("form[action='/ui/products/demo/promote']"))
        .await
        .is_err());
    c.execute(
        "const f = document.createElement('form');
         f.method = 'post'; f.action = '/ui/products/demo/promote';
         const csrf = document.querySelector('form.signout input[name=csrf]').value;
         for (const [k, v] of [['csrf', csrf], ['channel', 'stable'], ['version', '1.0'],
                               ['percent', '100'], ['confirm', 'yes']]) {
           const i = document.createElement('input'); i.name = k; i.value = v; f.appendChild(i);
         }
         document.body.appendChild(f); f.submit();",
        vec![],
    )
    .await
    .unwrap();
    // The answer page replaces this one.
    wait_path(&c, "/ui/products/demo/promote").await;
    let page = text(&c).await;
    assert!(
        page.contains("user \"vi\" lacks the operate scope"),
        "{page}"
    );
    let st = f.server.client().channel("demo", "stable").await.unwrap();
    assert_eq!(st.rollout.unwrap().percent, 10.0, "nothing changed");

    // An admin's pages: users, and tokens (with one just created, shown once).
    c.goto(&format!("{url}/ui/")).await.unwrap();
    sign_out(&c).await;
    sign_in(&c, url, "ad").await;
    c.goto(&format!("{url}/ui/admin/users")).await.unwrap();
    let page = text(&c).await;
    assert!(page.contains("Add a user"), "{page}");
    look(&c, "admin-users").await;
    c.goto(&format!("{url}/ui/admin/tokens")).await.unwrap();
    c.find(Locator::Css("input#name"))
        .await
        .unwrap()
        .send_keys("nightly")
        .await
        .unwrap();
    c.find(Locator::Css("form[action='/ui/admin/tokens'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_path(&c, "/ui/admin/tokens").await;
    let page = text(&c).await;
    assert!(page.contains("Token nightly created"), "{page}");
    look(&c, "admin-tokens").await;
    c.close().await.unwrap();
}

#[test]
fn the_dashboard_in_a_real_browser() {
    let _network = crate::common::network_lock();
    let Some(driver) = start_driver() else {
        return;
    };
    let f = fleet(Backend::Sqlite, 2, "1.0");
    let s = &f.server;
    for (name, role) in [
        ("op", Role::Operator),
        ("vi", Role::Viewer),
        ("ad", Role::Admin),
    ] {
        s.add_user(name, role);
    }
    // Check-ins and a plan fetched: the devices page draws its chart, the start page its
    // week of bytes served, and axe checks both.
    for (id, current) in [("dev-1", "1.0"), ("dev-2", "1.0"), ("dev-3", "2.0")] {
        f.check(&format!("current={current}&device={id}"));
    }
    s.flush();
    let plan = f
        .http
        .get(format!("{}/v1/products/demo/plans/1.0/2.0", s.url));
    assert_eq!(plan.send().unwrap().status(), 200);
    s.op(operator_and_viewer(&f, &driver));
}
