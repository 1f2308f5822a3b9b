//! The dashboard's sign-in, over HTTP on both backends: the CSRF pair on the login form, wrong
//! passwords refused and then rate-limited, sessions in the database (a second replica
//! knows them), cookie flags, and a logged-out session refused; the pages' figures against
//! the API's (the savings ledger, the fleet's cost, the file-by-file diff).

use std::time::Duration;

use deltaroot_server::access::{hash_password, Role};

use crate::common::{key, tls, Backend, Server};
use crate::fleet::{fleet, publish_release};

on_both_backends!(
    sign_in_sessions_and_sign_out,
    operators_act_from_the_channels_page_viewers_only_read,
    the_ledger_and_the_diff_show_the_plans_the_server_serves,
);

/// An HTTPS client that trusts the test certificate, keeps no cookies and follows no
/// redirects: each test sees every answer.
fn browser() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(tls().cert.as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The value a `Set-Cookie` of the answer gives `name`, and the whole header.
fn set_cookie(r: &reqwest::blocking::Response, name: &str) -> Option<(String, String)> {
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
fn login_form(b: &reqwest::blocking::Client, url: &str) -> String {
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

fn post_login(
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
    let hash = hash_password("a long enough secret").unwrap();
    server
        .op(server.app.db.add_user("ada", Role::Operator, &hash))
        .unwrap();

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
fn sign_in(
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
        let h = hash_password("a long enough secret").unwrap();
        s.op(s.app.db.add_user(name, role, &h)).unwrap();
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

/// The exact byte counts (`<data value="N">`) in `html`, in order.
fn data_values(html: &str) -> Vec<u64> {
    html.split("<data value=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().parse().unwrap())
        .collect()
}

/// The body rows of the table with id `id`: each row's cells, markup inside them kept.
fn table_rows(html: &str, id: &str) -> Vec<Vec<String>> {
    let table = html
        .split(&format!("<table id=\"{id}\">"))
        .nth(1)
        .unwrap_or_else(|| panic!("no table {id}: {html}"));
    let body = table.split("<tbody>").nth(1).unwrap();
    let body = body.split("</tbody>").next().unwrap();
    body.split("<tr>")
        .skip(1)
        .map(|row| {
            row.split("<td")
                .skip(1)
                .map(|cell| {
                    let inner = cell.split_once('>').unwrap().1;
                    inner.rsplit_once("</td>").unwrap().0.to_string()
                })
                .collect()
        })
        .collect()
}

fn the_ledger_and_the_diff_show_the_plans_the_server_serves(backend: Backend) {
    let f = fleet(backend, 3, "1.0");
    let s = &f.server;
    let url = &s.url;
    let b = browser();
    let h = hash_password("a long enough secret").unwrap();
    s.op(s.app.db.add_user("vi", Role::Viewer, &h)).unwrap();
    let (vi, _) = sign_in(&b, url, "vi", "a long enough secret");
    let get = |path: &str| {
        let r = b
            .get(format!("{url}{path}"))
            .header("cookie", format!("drt_session={vi}"))
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    // The plans the server serves devices, once any delta build they start has ended.
    let plan = |from: &str, to: &str| -> deltaroot_format::Plan {
        let ask = || {
            let r = f
                .http
                .get(format!("{url}/v1/products/demo/plans/{from}/{to}"))
                .send()
                .unwrap();
            assert_eq!(r.status(), 200, "{from} -> {to}");
            r.json::<deltaroot_format::Plan>().unwrap()
        };
        ask();
        s.op(s.app.builds.idle());
        ask()
    };
    let image = |v: &str| {
        s.op(s.app.db.release("demo", v))
            .unwrap()
            .unwrap()
            .image_bytes as u64
    };
    let (p12, p23) = (plan("1.0", "2.0"), plan("2.0", "3.0"));
    let (img1, img2, img3) = (image("1.0"), image("2.0"), image("3.0"));
    assert!(
        p12.download_bytes > 0 && p12.download_bytes < img2,
        "{p12:?}"
    );

    // Today's fleet: two devices on 1.0, one on 2.0.
    for (id, current) in [("dev-1", "1.0"), ("dev-2", "1.0"), ("dev-3", "2.0")] {
        let r = f
            .http
            .get(format!(
                "{url}/v1/products/demo/channels/stable/check?current={current}&device={id}"
            ))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    s.flush();

    // The releases page charts the download from the release before against the image,
    // and links the ledger.
    let (st, html) = get("/ui/products/demo/releases");
    assert_eq!(st, 200, "{html}");
    assert!(html.contains("<svg role=\"img\" aria-labelledby=\"chart-title chart-desc\""));
    assert_eq!(
        html.matches("<rect class=\"download\"").count(),
        3,
        "{html}"
    );
    assert!(
        html.contains("1.0: no plan from the release before"),
        "{html}"
    );
    assert!(html.contains("href=\"/ui/products/demo/ledger\""), "{html}");

    // The ledger: each stored plan's download as the API serves it, split by method to the
    // byte; the fleet's cost: devices on each version times the plan from it, the whole
    // image where none is stored (1.0 -> 3.0 yet).
    let ledger = || {
        let (st, html) = get("/ui/products/demo/ledger");
        assert_eq!(st, 200, "{html}");
        html
    };
    let html = ledger();
    let plans = table_rows(&html, "plans");
    let row = |to: &str, from: &str| {
        plans
            .iter()
            .find(|r| r[0] == to && r[1].contains(&format!(">{from}</a>")))
            .unwrap_or_else(|| panic!("no plan {from} -> {to}: {plans:?}"))
            .clone()
    };
    for (from, to, p) in [("1.0", "2.0", &p12), ("2.0", "3.0", &p23)] {
        let r = row(to, from);
        assert_eq!(data_values(&r[2]), [p.download_bytes], "{r:?}");
        let split = data_values(&r[5]);
        assert!(!split.is_empty(), "{r:?}");
        assert_eq!(split.iter().sum::<u64>(), p.download_bytes, "{r:?}");
        assert!(
            r[1].contains(&format!("diff?from={from}&amp;to={to}")),
            "{r:?}"
        );
    }
    let fleet_cost = |html: &str| -> Vec<(String, u64, u64, String)> {
        table_rows(html, "fleet-cost")
            .into_iter()
            .map(|r| {
                (
                    r[0].clone(),
                    data_values(&r[1])[0],
                    data_values(&r[2])[0],
                    r[4].clone(),
                )
            })
            .collect()
    };
    let p = |v: &deltaroot_format::Plan| v.download_bytes;
    assert_eq!(
        fleet_cost(&html),
        [
            (
                "3.0".to_string(),
                img3,
                2 * img3 + p(&p23),
                "2 devices on 1.0: no plan from there, so the whole image".to_string()
            ),
            ("2.0".to_string(), img2, 2 * p(&p12), "none".to_string()),
            (
                "1.0".to_string(),
                img1,
                img1,
                "1 device on 2.0: no plan from there, so the whole image".to_string()
            ),
        ]
    );
    // Nor does the diff of that pair make up a cost: it lists the files and says so.
    let (st, html) = get("/ui/products/demo/diff?from=1.0&to=3.0");
    assert_eq!(st, 200, "{html}");
    assert!(
        html.contains("No plan from 1.0 to 3.0 is stored yet"),
        "{html}"
    );
    let files = table_rows(&html, "files");
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(
        files
            .iter()
            .all(|r| r[3] == "no plan yet" || r[1] == "removed"),
        "{files:?}"
    );
    // A device asks for 1.0 -> 3.0: the plan is stored, and the fleet's cost uses it.
    let p13 = plan("1.0", "3.0");
    assert!(p13.download_bytes < img3, "{p13:?}");
    let html = ledger();
    assert_eq!(fleet_cost(&html)[0].2, 2 * p(&p13) + p(&p23), "{html}");
    assert_eq!(data_values(&row_of(&html, "3.0", "1.0")[2]), [p(&p13)]);

    // The release page links each plan's diff.
    let (_, html) = get("/ui/products/demo/releases/3.0");
    assert!(
        html.contains("/ui/products/demo/diff?from=1.0&amp;to=3.0")
            && html.contains("/ui/products/demo/diff?from=2.0&amp;to=3.0"),
        "{html}"
    );

    // The diff of 1.0 -> 2.0: exactly the files that differ; each sent file's method and
    // cost are its plan item's (the costs add up to the download).
    let (st, html) = get("/ui/products/demo/diff?from=1.0&to=2.0");
    assert_eq!(st, 200, "{html}");
    let files = table_rows(&html, "files");
    let mut changes: Vec<(String, String)> = files
        .iter()
        .map(|r| {
            (
                r[0].replace("<code>", "").replace("</code>", ""),
                r[1].clone(),
            )
        })
        .collect();
    changes.sort();
    assert_eq!(
        changes,
        [
            ("bin/app", "changed"),
            ("etc/only-in-1", "removed"),
            ("etc/only-in-2", "added"),
            ("etc/version", "changed"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let mut shown: Vec<(bool, u64)> = files
        .iter()
        .filter(|r| r[1] != "removed")
        .map(|r| (r[3].starts_with("delta"), data_values(&r[4])[0]))
        .collect();
    let mut planned: Vec<(bool, u64)> = p12
        .items
        .iter()
        .zip(p12.item_costs())
        .map(|(i, c)| (matches!(i.fetch, deltaroot_format::Fetch::Delta { .. }), c))
        .collect();
    shown.sort();
    planned.sort();
    assert_eq!(shown, planned, "{html}");
    assert!(
        files
            .iter()
            .all(|r| r[1] == "removed" || r[3] == "whole (zstd)" || r[3].starts_with("delta: ")),
        "{files:?}"
    );
    assert_eq!(html.matches("id=\"download\">").count(), 1, "{html}");
    assert!(
        html.contains(&format!("<data value=\"{}\" id=\"download\">", p(&p12))),
        "{html}"
    );
    // Largest first.
    assert!(files[0][0].contains("bin/app"), "{files:?}");
    // The search box filters by path.
    let (_, html) = get("/ui/products/demo/diff?from=1.0&to=2.0&q=only-in");
    let found: Vec<String> = table_rows(&html, "files")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(
        found,
        ["<code>etc/only-in-1</code>", "<code>etc/only-in-2</code>"],
        "{html}"
    );
    assert!(html.contains("files 1 to 2 of 2 matching"), "{html}");
    let (_, html) = get("/ui/products/demo/diff?from=1.0&to=2.0&q=no-such-file");
    assert!(html.contains("No file matching"), "{html}");
    // Versions not found, the wrong way round, the same release.
    let (st, html) = get("/ui/products/demo/diff?from=1.0&to=9.9");
    assert_eq!(st, 404, "{html}");
    assert!(html.contains("product demo has no release 9.9"), "{html}");
    let (st, _) = get("/ui/products/nothing/diff?from=1.0&to=2.0");
    assert_eq!(st, 404);
    let (st, html) = get("/ui/products/demo/diff?from=3.0&to=1.0");
    assert_eq!(st, 400, "{html}");
    assert!(html.contains("3.0 is newer than 1.0"), "{html}");
    assert!(html.contains("diff?from=1.0&#38;to=3.0"), "{html}");
    let (st, html) = get("/ui/products/demo/diff?from=2.0&to=2.0");
    assert_eq!(st, 400);
    assert!(html.contains("the same release"), "{html}");
}

/// The ledger's plan row for `from` -> `to`.
fn row_of(html: &str, to: &str, from: &str) -> Vec<String> {
    table_rows(html, "plans")
        .into_iter()
        .find(|r| r[0] == to && r[1].contains(&format!(">{from}</a>")))
        .unwrap_or_else(|| panic!("no plan {from} -> {to}: {html}"))
}

/// The diff page lists at most 200 files a page, largest first, with links on; the search
/// and the page travel together.
#[test]
fn the_diff_is_paged() {
    let server = Server::start(Backend::Sqlite);
    let (k, _, _keys) = key(1);
    // 230 files, each different in 2.0 (file i is 10 + i bytes: the order is known).
    let trees: Vec<_> = (1..=2u8)
        .map(|n| {
            let d = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(d.path().join("data")).unwrap();
            for i in 0..230usize {
                std::fs::write(d.path().join(format!("data/f{i:03}")), vec![n; 10 + i]).unwrap();
            }
            d
        })
        .collect();
    for n in 1..=2 {
        publish_release(&server, &k, &trees, n);
    }
    let h = hash_password("a long enough secret").unwrap();
    server
        .op(server.app.db.add_user("vi", Role::Viewer, &h))
        .unwrap();
    let b = browser();
    let (vi, _) = sign_in(&b, &server.url, "vi", "a long enough secret");
    let get = |path: &str| {
        let r = b
            .get(format!("{}{path}", server.url))
            .header("cookie", format!("drt_session={vi}"))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        r.text().unwrap()
    };
    let paths = |html: &str| -> Vec<String> {
        table_rows(html, "files")
            .into_iter()
            .map(|r| r[0].replace("<code>", "").replace("</code>", ""))
            .collect()
    };
    let html = get("/ui/products/demo/diff?from=1.0&to=2.0");
    let first = paths(&html);
    assert_eq!(first.len(), 200);
    assert_eq!(
        (first[0].as_str(), first[199].as_str()),
        ("data/f229", "data/f030")
    );
    assert!(html.contains("files 1 to 200 of 230"), "{html}");
    assert!(
        html.contains("href=\"/ui/products/demo/diff?from=1.0&#38;to=2.0&#38;page=1\">next files"),
        "{html}"
    );
    let html = get("/ui/products/demo/diff?from=1.0&to=2.0&page=1");
    let rest = paths(&html);
    assert_eq!(rest.len(), 30);
    assert_eq!(
        (rest[0].as_str(), rest[29].as_str()),
        ("data/f029", "data/f000")
    );
    assert!(!html.contains("next files"), "{html}");
    // Searched: the ten paths holding "f22", largest first.
    let html = get("/ui/products/demo/diff?from=1.0&to=2.0&q=f22");
    let found = paths(&html);
    let want: Vec<String> = (220..230).rev().map(|i| format!("data/f{i}")).collect();
    assert_eq!(found, want);
    // The search travels with the page links.
    let html = get("/ui/products/demo/diff?from=1.0&to=2.0&q=data%2F&page=1");
    assert_eq!(paths(&html).len(), 30);
    assert!(
        html.contains(
            "href=\"/ui/products/demo/diff?from=1.0&#38;to=2.0&#38;q=data%2F\">previous files"
        ),
        "{html}"
    );
    // A page past the end says so, and links back.
    let html = get("/ui/products/demo/diff?from=1.0&to=2.0&page=9");
    assert!(html.contains("No file on this page: 230 differ."), "{html}");
    assert!(html.contains("previous files"), "{html}");
}
