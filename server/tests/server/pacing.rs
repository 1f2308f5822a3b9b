//! Rollouts paced by an egress budget (`promote --max-bytes-per-hour`), and a rollout's
//! waves changed after it started (`rollout`, the API's `POST …/rollout`).

use std::time::Duration;

use deltaroot_format::api::{PromoteRequest, RolloutRequest};

use deltaroot_server::access::Role;

use crate::common::{promote_to, Backend};
use crate::dashboard::{browser, sign_in};
use crate::fleet::{fleet, Fleet};

/// Moves the server's clock to the start of the next clock hour, so that the checks that
/// follow fall in one hour however long they take.
fn to_next_hour(f: &Fleet) {
    let now = f.server.app.clock.now();
    f.server
        .advance(Duration::from_secs((3600 - now.rem_euclid(3600)) as u64));
}

fn admitted(f: &Fleet, devices: std::ops::Range<u32>) -> Vec<u32> {
    devices
        .filter(|i| {
            let c = f.check(&format!("device=dev-{i}&current=1.0"));
            assert_eq!(c.paced, c.update.is_none(), "dev-{i}: {c:?}");
            c.update.is_some()
        })
        .collect()
}

fn egress_budget_paces_a_rollout(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    to_next_hour(&f);
    // What one device's update costs: the plan from 1.0 to 2.0.
    let plan = f.check("current=1.0").update;
    assert!(plan.is_none(), "stable is on 1.0 still");
    let unpaced = f.promote(promote_to("2.0"));
    assert_eq!(unpaced.rollout.as_ref().unwrap().max_bytes_per_hour, None);
    let d = f
        .check("device=probe&current=1.0")
        .update
        .unwrap()
        .download_bytes;
    assert!(d > 0);

    // A budget of three and a half downloads an hour admits three devices.
    let st = f.promote(PromoteRequest {
        max_bytes_per_hour: Some(3 * d + d / 2),
        ..promote_to("2.0")
    });
    assert_eq!(st.rollout.unwrap().max_bytes_per_hour, Some(3 * d + d / 2));
    assert_eq!(admitted(&f, 0..10), vec![0, 1, 2]);
    // Once admitted, offered again without a second charge; a device without an id is
    // charged at each check, and the hour is spent.
    assert_eq!(admitted(&f, 0..3), vec![0, 1, 2]);
    let anonymous = f.check("current=1.0");
    assert!(anonymous.paced && anonymous.update.is_none());
    // A device already on 2.0 is up to date, not paced.
    let current = f.check("device=dev-5&current=2.0");
    assert!(!current.paced && current.update.is_none());
    let ro = f.status().rollout.unwrap();
    assert_eq!((ro.egress_bytes_this_hour, ro.devices_admitted), (3 * d, 3));
    // 7 devices and one anonymous check held back so far.
    let paced = f
        .server
        .app
        .metrics
        .checks_paced
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(paced, 8);

    // Another replica shares the budget: it admits no one this hour.
    let replica = f.server.replica();
    let behind = f.server.app.clock.now() - replica.app.clock.now();
    replica.advance(Duration::from_secs(behind.max(0) as u64));
    let url = format!(
        "{}/v1/products/demo/channels/stable/check?device=dev-20&current=1.0",
        replica.url
    );
    let r: deltaroot_format::api::CheckResponse =
        replica.http().get(&url).send().unwrap().json().unwrap();
    assert!(r.paced && r.update.is_none(), "{r:?}");
    drop(replica);

    // The next hour admits three more.
    f.server.advance(Duration::from_secs(3600));
    assert_eq!(admitted(&f, 3..10), vec![3, 4, 5]);
    let ro = f.status().rollout.unwrap();
    assert_eq!((ro.egress_bytes_this_hour, ro.devices_admitted), (3 * d, 6));

    // A budget below one download still lets one device an hour through.
    f.promote(PromoteRequest {
        max_bytes_per_hour: Some(1),
        ..promote_to("2.0")
    });
    assert_eq!(admitted(&f, 10..13), vec![10]);
    // The earlier rollout's admissions are forgotten by housekeeping once no channel
    // points at it; the current one's stay.
    let rows = |f: &Fleet| {
        f.server
            .op(sqlx::query("SELECT COUNT(*) FROM rollout_admissions")
                .fetch_one(f.server.app.db.pool()))
            .map(|r| sqlx::Row::get::<i64, _>(&r, 0))
            .unwrap()
    };
    assert_eq!(rows(&f), 7);
    f.server.op(f.server.app.db.prune_egress()).unwrap();
    assert_eq!(rows(&f), 1);

    // Removing the budget offers the release to the whole wave.
    let c = f.server.client();
    let st = f
        .server
        .op(c.rollout(
            "demo",
            "stable",
            &RolloutRequest {
                max_bytes_per_hour: Some(0),
                ..RolloutRequest::default()
            },
        ))
        .unwrap();
    assert_eq!(st.rollout.unwrap().max_bytes_per_hour, None);
    assert_eq!(admitted(&f, 11..15), vec![11, 12, 13, 14]);
    let audit = f.server.op(c.audit("demo")).unwrap();
    let last = audit.iter().find(|e| e.action == "rollout").unwrap();
    assert_eq!(last.who, "ci");
    assert_eq!(
        last.detail,
        serde_json::json!({ "max_bytes_per_hour": null })
    );
}

fn waves_change_after_the_rollout_started(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    f.promote(PromoteRequest {
        percent: Some(0.0),
        max_failure_rate: Some(0.5),
        ..promote_to("2.0")
    });
    let c = f.server.client();
    let change = |req: RolloutRequest| f.server.op(c.rollout("demo", "stable", &req));
    // Steps from now: nothing yet, everyone a step later.
    let st = change(RolloutRequest {
        step_percent: Some(100.0),
        step_secs: Some(60),
        ..RolloutRequest::default()
    })
    .unwrap();
    let ro = st.rollout.unwrap();
    assert_eq!(
        (ro.percent, ro.step_percent, ro.step_secs),
        (0.0, 100.0, 60)
    );
    assert_eq!(ro.max_failure_rate, Some(0.5), "kept");
    assert_eq!(f.offered("device=dev-1&current=1.0"), None);
    f.server.advance(Duration::from_secs(60));
    assert_eq!(
        f.offered("device=dev-1&current=1.0").as_deref(),
        Some("2.0")
    );
    // The failure limit alone changes nothing else.
    let ro = change(RolloutRequest {
        max_failure_rate: Some(0.2),
        min_reports: Some(3),
        ..RolloutRequest::default()
    })
    .unwrap()
    .rollout
    .unwrap();
    assert_eq!(
        (ro.max_failure_rate, ro.min_reports, ro.percent),
        (Some(0.2), 3, 100.0)
    );
    // Bad changes name what is wrong and change nothing.
    let e = change(RolloutRequest::default()).unwrap_err().to_string();
    assert!(e.contains("nothing to change"), "{e}");
    let e = change(RolloutRequest {
        max_failure_rate: Some(2.0),
        ..RolloutRequest::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("max_failure_rate is a share between 0 and 1, not 2"),
        "{e}"
    );
    let e = f
        .server
        .op(c.rollout("demo", "beta", &RolloutRequest::percent(5.0)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("has no rollout on channel beta"), "{e}");
    assert_eq!(f.status().rollout.unwrap().max_failure_rate, Some(0.2));
}

fn operators_pace_and_change_waves_from_the_channels_page(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    let s = &f.server;
    let url = &s.url;
    s.add_user("op", Role::Operator);
    s.add_user("vi", Role::Viewer);
    let b = browser();
    let (op, csrf) = sign_in(&b, url, "op", "a long enough secret");
    let send = |session: &str, path: &str, form: &[(&str, &str)]| {
        let r = b
            .post(format!("{url}{path}"))
            .header("cookie", format!("drt_session={session}"))
            .form(form)
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let page = |session: &str| {
        b.get(format!("{url}/ui/products/demo/channels"))
            .header("cookie", format!("drt_session={session}"))
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let promote = |budget: &str| {
        send(
            &op,
            "/ui/products/demo/promote",
            &[
                ("csrf", csrf.as_str()),
                ("channel", "stable"),
                ("version", "2.0"),
                ("percent", "10"),
                ("max_bytes_per_hour", budget),
                ("confirm", "yes"),
            ],
        )
    };
    let (st, html) = promote("lots");
    assert_eq!(st, 400, "{html}");
    assert!(html.contains("egress budget: &#34;lots&#34;"), "{html}");
    assert_eq!(
        f.status().version.as_deref(),
        Some("1.0"),
        "nothing changed"
    );
    let (st, html) = promote("50G");
    assert_eq!(st, 303, "{html}");
    let ro = f.status().rollout.unwrap();
    assert_eq!(
        (ro.percent, ro.max_bytes_per_hour),
        (10.0, Some(50_000_000_000))
    );
    let html = page(&op);
    assert!(
        html.contains("Paced by egress: at most 50.0 GB an hour; 0 B charged this hour, 0 devices admitted so far."),
        "{html}"
    );
    // The change form shows the rollout's settings.
    assert!(html.contains("Change the waves of stable"), "{html}");
    assert!(
        html.contains("name=\"max_bytes_per_hour\" value=\"50.0 GB\""),
        "{html}"
    );

    // Changed from the form: the share and the budget (cleared); the unchanged fields are
    // not changed, and the audit log says exactly what changed, and who did.
    let waves = |session: &str, token: &str, percent: &str, budget: &str| {
        send(
            session,
            "/ui/products/demo/rollout",
            &[
                ("csrf", token),
                ("channel", "stable"),
                ("percent", percent),
                ("step_percent", "0"),
                ("step_secs", "0"),
                ("max_failure_rate", ""),
                ("max_bytes_per_hour", budget),
                ("confirm", "yes"),
            ],
        )
    };
    let (vi, vi_csrf) = sign_in(&b, url, "vi", "a long enough secret");
    let (st, html) = waves(&vi, &vi_csrf, "100", "");
    assert_eq!(st, 403, "{html}");
    assert!(!page(&vi).contains("Change the waves"));
    let (st, html) = waves(&op, &csrf, "25", "");
    assert_eq!(st, 303, "{html}");
    let ro = f.status().rollout.unwrap();
    assert_eq!((ro.percent, ro.max_bytes_per_hour), (25.0, None));
    let audit = s.op(s.client().audit("demo")).unwrap();
    let e = audit.iter().find(|e| e.action == "rollout").unwrap();
    assert_eq!(e.who, "user:op");
    assert_eq!(
        e.detail,
        serde_json::json!({ "percent": 25.0, "max_bytes_per_hour": null })
    );
    // The same values again change nothing, and say so.
    let (st, html) = waves(&op, &csrf, "25", "");
    assert_eq!(st, 400, "{html}");
    assert!(html.contains("nothing to change"), "{html}");
}

on_both_backends!(
    egress_budget_paces_a_rollout,
    waves_change_after_the_rollout_started,
    operators_pace_and_change_waves_from_the_channels_page
);
