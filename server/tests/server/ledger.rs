//! The dashboard's figures against the API's, over HTTP on both backends: the savings
//! ledger (each stored plan's download against the image, split by method), what moving
//! today's fleet to a release costs, and the file-by-file diff of two releases, paged.

use deltaroot_server::access::Role;

use crate::common::{key, Backend, Server};
use crate::dashboard::{browser, sign_in};
use crate::fleet::{fleet, publish_release};

on_both_backends!(the_ledger_and_the_diff_show_the_plans_the_server_serves);

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
    s.add_user("vi", Role::Viewer);
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
    server.add_user("vi", Role::Viewer);
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
