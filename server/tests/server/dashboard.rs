//! The dashboard's sign-in, over HTTP on both backends: the CSRF pair on the login form, wrong
//! passwords refused and then rate-limited, sessions in the database (a second replica
//! knows them), cookie flags, and a logged-out session refused.

use std::time::Duration;

use deltaroot_server::access::{hash_password, Role};
use deltaroot_server::ui::MAX_ADDRESS_FAILURES;

use crate::common::{agent, promote_to, tls, Backend, Server};
use crate::fleet::{fleet, updated};

on_both_backends!(
    sign_in_sessions_and_sign_out,
    operators_act_from_the_channels_page_viewers_only_read,
    version_share_by_day_and_bytes_served_this_week,
);

/// An HTTPS client that trusts the test certificate, keeps no cookies and follows no
/// redirects: each test sees every answer.
pub(crate) fn browser() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tls().cert.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value a `Set-Cookie` of the answer gives `name`, and the whole header.
pub(crate) fn set_cookie(r: &reqwest::blocking::Response, name: &str) -> Option<(String, String)> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            let (kv, _) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = kv.split_once('=')?;
            (k == name).then(|| (val.to_string(), v.to_string()))
        })
}

/// The login form's CSRF token: from the page's hidden field, which must equal the cookie.
pub(crate) fn login_form(b: &reqwest::blocking::Client, url: &str) -> String {
    let r = b.get(format!("{url}/ui/login")).send().unwrap();
    assert_eq!(r.status(), 200);
    let (cookie, _) = set_cookie(&r, "drt_login_csrf").expect("a CSRF cookie");
    let html = r.text().unwrap();
    for input in ["name=\"username\"", "name=\"password\"", "name=\"csrf\""] {
        assert!(html.contains(input), "{html}");
    }
    assert!(html.contains(&format!("value=\"{cookie}\"")), "{html}");
    cookie
}

pub(crate) fn post_login(
    b: &reqwest::blocking::Client,
    url: &str,
    cookie: Option<&str>,
    csrf: &str,
    user: &str,
    password: &str,
) -> reqwest::blocking::Response {
    let mut req = b.post(format!("{url}/ui/login")).form(&[
        ("username", user),
        ("password", password),
        ("csrf", csrf),
    ]);
    if let Some(c) = cookie {
        req = req.header("cookie", format!("drt_login_csrf={c}"));
    }
    req.send().unwrap()
}

fn sign_in_sessions_and_sign_out(backend: Backend) {
    let server = Server::start(backend);
    let b = browser();
    let url = &server.url;
    server.add_user("ada", Role::Operator);

    // Without a session the start page sends to the login.
    let r = b.get(format!("{url}/ui/")).send().unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/login");

    // The CSRF pair: a post without the token, with a wrong one, or without the cookie is
    // refused, whatever the password.
    let csrf = login_form(&b, url);
    for (cookie, token) in [
        (Some(csrf.as_str()), ""),
        (Some(csrf.as_str()), "00"),
        (None, csrf.as_str()),
    ] {
        let r = post_login(&b, url, cookie, token, "ada", "a long enough secret");
        assert_eq!(r.status(), 403, "{cookie:?} {token:?}");
        assert!(set_cookie(&r, "drt_session").is_none());
    }

    // Wrong passwords (and an unknown user) are refused; past five the user is locked out
    // for five minutes, even with the right password.
    let r = post_login(&b, url, Some(&csrf), &csrf, "nobody", "whatever it is");
    assert_eq!(r.status(), 401);
    for _ in 0..5 {
        let r = post_login(&b, url, Some(&csrf), &csrf, "ada", "not the secret");
        assert_eq!(r.status(), 401);
        assert!(r.text().unwrap().contains("Wrong user name or password."));
    }
    let r = post_login(&b, url, Some(&csrf), &csrf, "ada", "a long enough secret");
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert!(set_cookie(&r, "drt_session").is_none());
    server.advance(Duration::from_secs(301));

    // The right password now: a session cookie with every flag, and the start page.
    let r = post_login(&b, url, Some(&csrf), &csrf, "ada", "a long enough secret");
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/ui/");
    let (session, header) = set_cookie(&r, "drt_session").expect("a session cookie");
    for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/ui"] {
        assert!(header.contains(flag), "{header}");
    }
    let page = |server_url: &str, session: &str| {
        b.get(format!("{server_url}/ui/"))
            .header("cookie", format!("drt_session={session}"))
            .send()
            .unwrap()
    };
    let r = page(url, &session);
    assert_eq!(r.status(), 200);
    let html = r.text().unwrap();
    assert!(html.contains("<span>ada (operator)</span>"), "{html}");
    assert!(html.contains("No product yet"), "{html}");
    let form_csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();

    // Sessions live in the database: another replica knows this one.
    let replica = server.replica();
    assert_eq!(page(&replica.url, &session).status(), 200);
    // An invented cookie is no session.
    assert_eq!(page(url, &"ab".repeat(32)).status(), 303);

    // Signing out needs the session's CSRF token; then the cookie is refused everywhere.
    let logout = |token: &str| {
        b.post(format!("{url}/ui/logout"))
            .header("cookie", format!("drt_session={session}"))
            .form(&[("csrf", token)])
            .send()
            .unwrap()
    };
    assert_eq!(logout("00").status(), 403);
    assert_eq!(
        page(url, &session).status(),
        200,
        "a refused sign-out ends nothing"
    );
    let r = logout(&form_csrf);
    assert_eq!(r.status(), 303);
    assert_eq!(page(url, &session).status(), 303);
    assert_eq!(page(&replica.url, &session).status(), 303);

    // A new password ends the user's sessions.
    let r = post_login(&b, url, Some(&csrf), &csrf, "ada", "a long enough secret");
    let (again, _) = set_cookie(&r, "drt_session").unwrap();
    assert_eq!(page(url, &again).status(), 200);
    let new = hash_password("a brand new secret").unwrap();
    server
        .op(server.app.db.update_user("ada", Some(&new), None))
        .unwrap();
    assert_eq!(page(url, &again).status(), 303);
}

/// One address trying many user names is refused, before any password is checked, once it
/// has failed [`MAX_ADDRESS_FAILURES`] times in the window; after the window it may try again.
#[test]
fn one_address_trying_many_names_is_refused() {
    let server = Server::start(Backend::Sqlite);
    let b = browser();
    let url = &server.url;
    server.add_user("ada", Role::Operator);
    let csrf = login_form(&b, url);
    for i in 0..MAX_ADDRESS_FAILURES {
        // An X-Forwarded-For from a peer that is no trusted proxy is not believed.
        let client = format!("198.51.100.{i}");
        let r = from(&b, url, &csrf, &client, &format!("u{i}"), "a guess at it");
        assert_eq!(r.status(), 401, "try {i}");
    }
    // Every name had one failure only, but the address is spent: even the right password
    // of a user who never failed is refused.
    let r = post_login(&b, url, Some(&csrf), &csrf, "ada", "a long enough secret");
    assert_eq!(r.status(), 429);
    assert!(r.headers().contains_key("retry-after"));
    assert!(set_cookie(&r, "drt_session").is_none());
    let html = r.text().unwrap();
    assert!(
        html.contains("Too many failed sign-ins from this address"),
        "{html}"
    );
    server.advance(Duration::from_secs(301));
    let r = post_login(&b, url, Some(&csrf), &csrf, "ada", "a long enough secret");
    assert_eq!(r.status(), 303);
    assert!(set_cookie(&r, "drt_session").is_some());
}

/// A sign-in whose request says it was forwarded for `client`.
fn from(
    b: &reqwest::blocking::Client,
    url: &str,
    csrf: &str,
    client: &str,
    user: &str,
    password: &str,
) -> reqwest::blocking::Response {
    b.post(format!("{url}/ui/login"))
        .header("cookie", format!("drt_login_csrf={csrf}"))
        .header("x-forwarded-for", client)
        .form(&[("username", user), ("password", password), ("csrf", csrf)])
        .send()
        .unwrap()
}

/// Behind a proxy given to `serve --trust-forwarded-for`, the address its X-Forwarded-For
/// names is the client: one client spent is refused, another signs in.
#[test]
fn behind_a_trusted_proxy_the_forwarded_address_is_the_client() {
    let server = Server::start_with(Backend::Sqlite, |c| {
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    });
    let b = browser();
    let url = &server.url;
    server.add_user("ada", Role::Operator);
    let csrf = login_form(&b, url);
    for i in 0..MAX_ADDRESS_FAILURES {
        // What the client wrote itself (on the left) is not believed; the proxy's entry is.
        let chain = format!("10.9.9.{i}, 203.0.113.5");
        let r = from(&b, url, &csrf, &chain, &format!("u{i}"), "a guess at it");
        assert_eq!(r.status(), 401, "try {i}");
    }
    let r = from(&b, url, &csrf, "203.0.113.5", "ada", "a long enough secret");
    assert_eq!(r.status(), 429);
    let r = from(&b, url, &csrf, "203.0.113.6", "ada", "a long enough secret");
    assert_eq!(r.status(), 303);
}

/// `serve --plain-http` leaves `Secure` off (a browser would not send the cookie back).
#[test]
fn plain_http_cookies_are_not_secure() {
    let server = Server::start_with(Backend::Sqlite, |c| c.secure_cookies = false);
    let r = browser()
        .get(format!("{}/ui/login", server.plain_url))
        .send()
        .unwrap();
    let (_, header) = set_cookie(&r, "drt_login_csrf").unwrap();
    assert!(
        header.contains("HttpOnly") && !header.contains("Secure"),
        "{header}"
    );
}

/// Signs `user` in: the session cookie and the session's CSRF token (from the start page).
pub(crate) fn sign_in(
    b: &reqwest::blocking::Client,
    url: &str,
    user: &str,
    password: &str,
) -> (String, String) {
    let csrf = login_form(b, url);
    let r = post_login(b, url, Some(&csrf), &csrf, user, password);
    assert_eq!(r.status(), 303, "{user}");
    let (session, _) = set_cookie(&r, "drt_session").unwrap();
    let html = b
        .get(format!("{url}/ui/"))
        .header("cookie", format!("drt_session={session}"))
        .send()
        .unwrap()
        .text()
        .unwrap();
    let token = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    (session, token)
}

fn operators_act_from_the_channels_page_viewers_only_read(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    let s = &f.server;
    let url = &s.url;
    let b = browser();
    for (name, role) in [("op", Role::Operator), ("vi", Role::Viewer)] {
        s.add_user(name, role);
    }
    let get = |session: &str, path: &str| {
        let r = b
            .get(format!("{url}{path}"))
            .header("cookie", format!("drt_session={session}"))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let post = |session: &str, path: &str, form: &[(&str, &str)]| {
        let r = b
            .post(format!("{url}{path}"))
            .header("cookie", format!("drt_session={session}"))
            .form(form)
            .send()
            .unwrap();
        let location = r
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_string());
        (r.status().as_u16(), location, r.text().unwrap())
    };

    // A viewer reads the releases (with what each update costs) and the channels...
    let (vi, vi_csrf) = sign_in(&b, url, "vi", "a long enough secret");
    let (st, html) = get(&vi, "/ui/products/demo/releases");
    assert_eq!(st, 200, "{html}");
    assert!(
        html.contains("/ui/products/demo/releases/2.0\">2.0</a>")
            && html.contains("/ui/products/demo/releases/1.0\">1.0</a>"),
        "{html}"
    );
    assert!(html.contains("first release"), "{html}");
    assert!(
        html.contains("% of the image)"),
        "a download from 1.0 to 2.0: {html}"
    );
    // A release: what changed since the one before, how each file is sent, what it costs.
    let (st, html) = get(&vi, "/ui/products/demo/releases/2.0");
    assert_eq!(st, 200, "{html}");
    assert!(html.contains("What changed since 1.0"), "{html}");
    assert!(
        html.contains("<code>bin/app</code></td><td>changed</td>"),
        "{html}"
    );
    assert!(
        html.contains("<code>etc/only-in-2</code></td><td>added</td>"),
        "{html}"
    );
    assert!(
        html.contains("<code>etc/only-in-1</code></td><td>removed</td>"),
        "{html}"
    );
    assert!(
        html.contains("delta: ") || html.contains("whole (zstd)"),
        "{html}"
    );
    let (_, found) = get(&vi, "/ui/products/demo/releases/2.0?q=no-such-file");
    assert!(!found.contains("<code>bin/app</code>"), "{found}");
    let (st, _) = get(&vi, "/ui/products/demo/releases/9.9");
    assert_eq!(st, 404);
    let (st, html) = get(&vi, "/ui/products/demo/channels");
    assert_eq!(st, 200);
    assert!(html.contains("stable: 1.0"), "{html}");
    assert!(
        !html.contains("action=\"/ui/products/demo/promote\""),
        "{html}"
    );
    assert!(html.contains("Your role (viewer) reads"), "{html}");
    // ...and is refused every write, with a page that says why; nothing changes.
    let promote = [
        ("csrf", vi_csrf.as_str()),
        ("channel", "stable"),
        ("version", "2.0"),
        ("percent", "10"),
        ("confirm", "yes"),
    ];
    let (st, _, html) = post(&vi, "/ui/products/demo/promote", &promote);
    assert_eq!(st, 403);
    assert!(
        html.contains("vi&#34; lacks the operate scope (it has read)"),
        "{html}"
    );
    for action in ["pause", "resume"] {
        let path = format!("/ui/products/demo/channels/stable/{action}");
        let (st, _, _) = post(
            &vi,
            &path,
            &[("csrf", vi_csrf.as_str()), ("confirm", "yes")],
        );
        assert_eq!(st, 403, "{action}");
    }
    let st = f.status();
    assert_eq!((st.version.as_deref(), st.paused), (Some("1.0"), false));

    // An operator promotes to a tenth of the devices, pauses and resumes; each lands in the
    // audit log under the user's name. A form without the session's token is refused.
    let (op, op_csrf) = sign_in(&b, url, "op", "a long enough secret");
    let (st, html) = get(&op, "/ui/products/demo/channels");
    assert_eq!(st, 200);
    assert!(
        html.contains("action=\"/ui/products/demo/promote\""),
        "{html}"
    );
    let mut forged = promote;
    forged[0].1 = "00";
    let (st, _, _) = post(&op, "/ui/products/demo/promote", &forged);
    assert_eq!(st, 403);
    let mut good = promote;
    good[0].1 = op_csrf.as_str();
    let (st, location, _) = post(&op, "/ui/products/demo/promote", &good);
    assert_eq!(
        (st, location.as_deref()),
        (303, Some("/ui/products/demo/channels?done=promote"))
    );
    let st = f.status();
    let ro = st.rollout.unwrap();
    assert_eq!((ro.version.as_str(), ro.percent), ("2.0", 10.0));
    let (_, html) = get(&op, "/ui/products/demo/channels?done=promote");
    assert!(
        html.contains("Promoted.") && html.contains("offered to 10.0 % of devices"),
        "{html}"
    );
    let (st, _, _) = post(
        &op,
        "/ui/products/demo/channels/stable/pause",
        &[("csrf", op_csrf.as_str()), ("confirm", "yes")],
    );
    assert_eq!(st, 303);
    assert!(f.status().paused);
    let (st, _, _) = post(
        &op,
        "/ui/products/demo/channels/stable/resume",
        &[("csrf", op_csrf.as_str()), ("confirm", "yes")],
    );
    assert_eq!(st, 303);
    assert!(!f.status().paused);
    let audit = s.op(s.client().audit("demo")).unwrap();
    let got: Vec<(&str, &str)> = audit
        .iter()
        .take(3)
        .map(|e| (e.who.as_str(), e.action.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("user:op", "resume"),
            ("user:op", "pause"),
            ("user:op", "promote")
        ]
    );
    // The audit log page, filtered by operator and by action.
    let (st, html) = get(&vi, "/ui/audit?who=user:op");
    assert_eq!(st, 200);
    assert_eq!(html.matches("<td>user:op</td>").count(), 3, "{html}");
    let (_, html) = get(&vi, "/ui/audit?product=demo&action=no-such-action");
    assert!(html.contains("Nothing in the audit log matches."), "{html}");

    // The devices page: versions the fleet runs, devices by last report, one by id.
    let (_, html) = get(&vi, "/ui/products/demo/devices");
    assert!(html.contains("No device has checked in yet"), "{html}");
    for (id, result) in [("dev-1", "failed"), ("dev-2", "ok"), ("dev-3", "ok")] {
        let r = f
            .http
            .get(format!(
                "{url}/v1/products/demo/channels/stable/check?current=1.0&device={id}&result={result}&attempted=2.0"
            ))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    s.flush();
    let (_, html) = get(&vi, "/ui/products/demo/devices");
    assert!(
        html.contains("<td>1.0</td><td class=\"num\">3</td><td class=\"num\">100.0 %</td>"),
        "{html}"
    );
    let (_, html) = get(&vi, "/ui/products/demo/devices?result=failed");
    assert!(
        html.contains("<code>dev-1</code>") && !html.contains("<code>dev-2</code>"),
        "{html}"
    );
    assert!(html.contains("2.0: failed"), "{html}");
    let (_, html) = get(&vi, "/ui/products/demo/devices?id=dev-3");
    assert!(html.contains("<code>dev-3</code>"), "{html}");
    let (_, html) = get(&vi, "/ui/products/demo/devices?id=nope");
    assert!(html.contains("No device nope has checked in."), "{html}");

    // The start page: every product at a glance.
    let (_, html) = get(&vi, "/ui/");
    assert!(html.contains("<h2>demo</h2>"), "{html}");
    assert!(html.contains("Newest release: 2.0 (1970-01-12"), "{html}");
    assert!(html.contains("Devices: 3 (100 % on 1.0)"), "{html}");
    assert!(
        html.contains("<td>stable</td><td>2.0</td><td>active at 10 %</td><td>33.3 % (1 of 3)</td>"),
        "{html}"
    );

    // Another product's page is a 404 page, not a server error.
    let (st, html) = get(&op, "/ui/products/nothing/channels");
    assert_eq!(st, 404, "{html}");
}

/// The daily rollup: check-ins on two days, one device changing version within the first,
/// give one row per (day, version) with each device counted once a day on its last version;
/// the devices page draws them (and lists the numbers). The plans two updates fetched are
/// the start page's bytes served this week, equal to what the server counted as served,
/// against the two releases' full images. Days move with the server's clock; old days go.
fn version_share_by_day_and_bytes_served_this_week(backend: Backend) {
    use deltaroot_server::db::daily::{day_of, KEEP_DAYS};

    let f = fleet(backend, 2, "1.0");
    let s = &f.server;
    let url = &s.url;
    let b = browser();
    s.add_user("vi", Role::Viewer);
    // Sessions last 12 hours: each page is read with a new one, whatever the clock says.
    let get = |path: &str| {
        let (vi, _) = sign_in(&b, url, "vi", "a long enough secret");
        let r = b
            .get(format!("{url}{path}"))
            .header("cookie", format!("drt_session={vi}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.text().unwrap()
    };
    let (pid, _) = s.op(s.app.db.product("demo")).unwrap().unwrap();
    let html = get("/ui/products/demo/devices");
    assert!(!html.contains("<svg role=\"img\""), "{html}");
    let html = get("/ui/");
    assert!(html.contains("No update was fetched this week."), "{html}");

    // Day one: three devices on 1.0 (dev-1 twice), then dev-1 on 2.0 the same day.
    let day = day_of(s.app.clock.now());
    for (id, current) in [
        ("dev-1", "1.0"),
        ("dev-2", "1.0"),
        ("dev-3", "1.0"),
        ("dev-1", "1.0"),
    ] {
        f.check(&format!("current={current}&device={id}"));
    }
    s.flush();
    f.check("current=2.0&device=dev-1");
    s.flush();
    // Day two: dev-1 and dev-2 on 2.0; dev-3 is not seen.
    s.advance(Duration::from_secs(86_400));
    for id in ["dev-1", "dev-2"] {
        f.check(&format!("current=2.0&device={id}"));
    }
    s.flush();
    let rows = s
        .op(s.app.db.version_days(pid, day - 40, day + 40))
        .unwrap();
    let v = |v: &str| Some(v.to_string());
    assert_eq!(
        rows,
        [
            (day, v("1.0"), 2),
            (day, v("2.0"), 1),
            (day + 1, v("2.0"), 2)
        ]
    );
    let date = |d: i64| deltaroot_server::client::when(d * 86_400)[..10].to_string();
    let html = get("/ui/products/demo/devices");
    assert!(
        html.contains("<svg role=\"img\" aria-labelledby=\"share-title share-desc\""),
        "{html}"
    );
    for title in [
        format!("<title>{}: 2 devices on 1.0</title>", date(day)),
        format!("<title>{}: 1 device on 2.0</title>", date(day)),
        format!("<title>{}: 2 devices on 2.0</title>", date(day + 1)),
    ] {
        assert!(html.contains(&title), "{title}: {html}");
    }
    assert!(
        html.contains(&format!("on {}: 2 on 2.0.</desc>", date(day + 1))),
        "{html}"
    );
    assert!(
        html.contains(
            "<th scope=\"col\">Day</th><th scope=\"col\">1.0</th><th scope=\"col\">2.0</th>"
        ),
        "{html}"
    );
    for row in [
        format!(
            "<tr><th scope=\"row\">{}</th><td class=\"num\">2</td><td class=\"num\">1</td><td class=\"num\">3</td></tr>",
            date(day)
        ),
        format!(
            "<tr><th scope=\"row\">{}</th><td class=\"num\">0</td><td class=\"num\">2</td><td class=\"num\">2</td></tr>",
            date(day + 1)
        ),
    ] {
        assert!(html.contains(&row), "{row}: {html}");
    }

    // A device installs 1.0 and updates to 2.0: two plans, what the server served for them.
    f.promote(promote_to("2.0"));
    let root = tempfile::tempdir().unwrap();
    let a = agent(s, root.path(), &f.trust);
    let before = s.served();
    a.install("1.0").unwrap();
    assert_eq!(updated(a.update().unwrap()), "2.0");
    let served = s.served() - before;
    let images: i64 = s
        .op(s.app.db.releases("demo"))
        .unwrap()
        .iter()
        .map(|r| r.image_bytes)
        .sum();
    let week = s.op(s.app.db.served(pid, day - 6, day + 1)).unwrap();
    assert_eq!(
        (week.plans, week.download_bytes, week.image_bytes),
        (2, served, images as u64)
    );
    assert!(served > 0 && served < images as u64, "{served} {images}");
    let html = get("/ui/");
    let expected = format!(
        "<tr><td class=\"num\">2</td><td class=\"num\">{} ({served} bytes)</td><td class=\"num\">{} ({images} bytes)</td><td class=\"num\">{:.1} %</td></tr>",
        deltaroot_format::units::human_bytes(served),
        deltaroot_format::units::human_bytes(images as u64),
        100.0 * served as f64 / images as f64
    );
    assert!(html.contains(&expected), "{expected}: {html}");

    // A week later nothing was fetched this week; the chart keeps 30 days; housekeeping
    // drops days past the rollup's 400.
    s.advance(Duration::from_secs(7 * 86_400));
    assert!(get("/ui/").contains("No update was fetched this week."));
    assert!(get("/ui/products/demo/devices").contains(&format!("{}: 2 devices on 1.0", date(day))));
    s.advance(Duration::from_secs(30 * 86_400));
    assert!(!get("/ui/products/demo/devices").contains("<svg role=\"img\""));
    assert_eq!(s.op(s.app.db.prune_days()).unwrap(), 0);
    s.advance(Duration::from_secs(KEEP_DAYS as u64 * 86_400));
    assert!(s.op(s.app.db.prune_days()).unwrap() >= 4);
    assert!(s
        .op(s.app.db.version_days(pid, 0, i64::MAX))
        .unwrap()
        .is_empty());
}
