//! Who may do what, on both backends: scoped tokens held to their scopes and products (403
//! naming what is missing), revoked tokens, publishing without a channel and with a staged
//! share, rollbacks that only go back, and the `token` and `user` commands.

use std::process::Command;

use deltaroot_format::api::ChannelStatus;
use deltaroot_publisher::publish::{publish, PublishOptions};
use deltaroot_publisher::sink::ServerSink;

use crate::common::{promote_to, Backend, Server};
use crate::fleet::{fleet, release_options, status_of, tree, Fleet};

on_both_backends!(
    scoped_tokens_are_held_to_their_scope_and_products,
    publishing_on_no_channel_or_to_a_share,
    a_rollback_goes_only_to_an_older_release,
);

const EXE: &str = env!("CARGO_BIN_EXE_deltaroot-server");

/// A token made as `token create` makes it.
fn token(server: &Server, name: &str, scopes: &str, products: Option<&str>) -> String {
    let t = deltaroot_server::new_token();
    server
        .op(server.app.db.create_token(name, &t, scopes, products))
        .unwrap();
    t
}

/// `(status, error or body)` of a call with `token`.
fn call(f: &Fleet, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let url = format!("{}/{path}", f.server.url);
    let mut req = match method {
        "POST" => f.http.post(&url),
        _ => f.http.get(&url),
    };
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    status_of(
        req.header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .unwrap(),
    )
}

/// Publishes release `n` of the fleet's trees with `token`, onto `channel` at `percent`.
fn publish_with(
    f: &Fleet,
    token: &str,
    n: u32,
    channel: Option<&str>,
    percent: Option<f64>,
) -> Result<(), String> {
    let trees = [tree(n - 1), tree(n)];
    let sink = ServerSink::new(&f.server.plain_url, token).unwrap();
    let opts = PublishOptions {
        channel: channel.map(str::to_string),
        percent,
        ..release_options(n, "ci")
    };
    publish(Some(trees[0].path()), trees[1].path(), &f.key, &sink, &opts)
        .map(|_| ())
        .map_err(|e| format!("{e:#}"))
}

fn scoped_tokens_are_held_to_their_scope_and_products(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    let s = &f.server;
    let read = token(s, "dash", "read", Some("demo"));
    let pub_demo = token(s, "ci-demo", "publish", Some("demo"));
    let pub_other = token(s, "ci-other", "publish", Some("other"));
    let operate = token(s, "ops", "operate", None);
    let promote = r#"{"version":"2.0","percent":10}"#;
    let stored = r#"{"objects":[],"deltas":[]}"#;

    // Reading: any scope on the product; no token is 401, another product's token 403.
    for t in [&read, &pub_demo, &operate, &s.token] {
        for path in [
            "v1/products/demo/releases",
            "v1/products/demo/channels",
            "v1/products/demo/channels/stable",
            "v1/products/demo/audit",
            "v1/products/demo/devices",
        ] {
            let (st, body) = call(&f, "GET", path, Some(t), "");
            assert_eq!(st, 200, "GET {path}: {body}");
        }
    }
    let (st, _) = call(&f, "GET", "v1/products/demo/releases", None, "");
    assert_eq!(st, 401, "releases need a token now");
    let (st, e) = call(&f, "GET", "v1/products/demo/releases", Some(&pub_other), "");
    assert_eq!(
        (st, e.as_str()),
        (
            403,
            "token \"ci-other\" may act only on product other, not demo"
        )
    );

    // Operating: only operate (or all).
    for (t, name, has) in [(&read, "dash", "read"), (&pub_demo, "ci-demo", "publish")] {
        for action in ["promote", "pause", "resume", "rollout", "rollback"] {
            let path = format!("v1/products/demo/channels/stable/{action}");
            let (st, e) = call(&f, "POST", &path, Some(t), promote);
            assert_eq!(st, 403, "{action} by {name}: {e}");
            assert_eq!(
                e,
                format!("token \"{name}\" lacks the operate scope (it has {has})")
            );
        }
    }
    assert_eq!(f.status().version.as_deref(), Some("1.0"), "nothing moved");
    let (st, body) = call(
        &f,
        "POST",
        "v1/products/demo/channels/stable/promote",
        Some(&operate),
        promote,
    );
    assert_eq!(st, 200, "{body}");
    let c: ChannelStatus = f.status();
    assert_eq!(c.rollout.unwrap().percent, 10.0);

    // Uploading: only publish (or all), whatever the body.
    for (t, name, has) in [(&read, "dash", "read"), (&operate, "ops", "operate")] {
        let (st, e) = call(&f, "POST", "v1/stored", Some(t), stored);
        assert_eq!(
            (st, e),
            (
                403,
                format!("token \"{name}\" lacks the publish scope (it has {has})")
            )
        );
        let put = f
            .http
            .put(format!("{}/objects/00/{}", s.url, "00".repeat(32)))
            .bearer_auth(t)
            .body(vec![0u8; 1000])
            .send()
            .unwrap();
        assert_eq!(put.status().as_u16(), 403);
    }
    let (st, _) = call(&f, "POST", "v1/stored", Some(&pub_demo), stored);
    assert_eq!(st, 200);

    // The audit log (newest first) names the token that acted.
    let audit = s.op(s.client().audit("demo")).unwrap();
    assert_eq!(
        (audit[0].who.as_str(), audit[0].action.as_str()),
        ("ops", "promote")
    );

    // A publish token for another product can't publish here; one for this product can't
    // put its release on a channel (an operator's decision), only publish it.
    let e = publish_with(&f, &pub_other, 3, Some("stable"), None).unwrap_err();
    assert!(e.contains("may act only on product other, not demo"), "{e}");
    let e = publish_with(&f, &pub_demo, 3, Some("stable"), None).unwrap_err();
    assert!(e.contains("lacks the operate scope"), "{e}");
    publish_with(&f, &pub_demo, 3, None, None).unwrap();
    let st = f.status();
    assert_eq!(
        st.version.as_deref(),
        Some("2.0"),
        "publish moved no channel"
    );

    // A revoked token is refused from the next request on.
    assert!(s.op(s.app.db.revoke_token("dash")).unwrap());
    let (st, _) = call(&f, "GET", "v1/products/demo/releases", Some(&read), "");
    assert_eq!(st, 401);
}

fn publishing_on_no_channel_or_to_a_share(backend: Backend) {
    let f = fleet(backend, 2, "2.0");
    publish_with(&f, &f.server.token, 3, Some("stable"), Some(25.0)).unwrap();
    let st = f.status();
    let ro = st.rollout.expect("a staged rollout");
    assert_eq!(
        (st.version.as_deref(), ro.version.as_str(), ro.percent),
        (Some("3.0"), "3.0", 25.0)
    );
    assert_eq!(
        ro.previous.as_deref(),
        Some("2.0"),
        "the others stay on 2.0"
    );
    // A share is out of range, or without a channel: refused before anything is stored.
    let e = publish_with(&f, &f.server.token, 4, Some("stable"), Some(120.0)).unwrap_err();
    assert!(e.contains("percent must be between 0 and 100"), "{e}");
    let e = publish_with(&f, &f.server.token, 4, None, Some(5.0)).unwrap_err();
    assert!(e.contains("name the channel"), "{e}");
    assert!(f
        .server
        .op(f.server.client().releases("demo"))
        .unwrap()
        .iter()
        .all(|r| r.version != "4.0"));
}

fn a_rollback_goes_only_to_an_older_release(backend: Backend) {
    let f = fleet(backend, 3, "2.0");
    let s = &f.server;
    let c = s.client();
    for (to, on) in [("3.0", "2.0"), ("2.0", "2.0")] {
        let e = s
            .op(c.rollback("demo", "stable", to, &f.key))
            .unwrap_err()
            .to_string();
        assert!(e.contains("409"), "{e}");
        assert!(
            e.contains(&format!(
                "stable is on {on}: a rollback goes to an older release, and {to} is not older"
            )),
            "{e}"
        );
    }
    assert_eq!(f.status().version.as_deref(), Some("2.0"));
    assert!(f.status().downgrade.is_none());
    let st = s.op(c.rollback("demo", "stable", "1.0", &f.key)).unwrap();
    assert_eq!(
        (st.version.as_deref(), st.downgrade.as_deref()),
        (Some("1.0"), Some("1.0"))
    );
    // Forward again is a promotion.
    f.promote(promote_to("3.0"));
    assert_eq!(f.status().version.as_deref(), Some("3.0"));
}

/// `deltaroot-server ARGS --data DIR`, with `stdin`: (success, stdout, stderr).
fn offline(data: &std::path::Path, args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(EXE)
        .args(args)
        .arg("--data")
        .arg(data)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn token_and_user_commands() {
    let data = tempfile::tempdir().unwrap();
    let d = data.path();
    let (ok, token, err) = offline(
        d,
        &[
            "token",
            "create",
            "ci",
            "--scope",
            "publish",
            "--product",
            "demo",
            "--product",
            "acme",
        ],
        "",
    );
    assert!(ok, "{err}");
    assert!(token.trim().starts_with("drt_"), "{token}");
    let (ok, _, err) = offline(d, &["token", "create", "old-style"], "");
    assert!(ok, "{err}");
    let (ok, _, err) = offline(d, &["token", "create", "x", "--scope", "admin"], "");
    assert!(!ok && err.contains("admin is a user role"), "{err}");
    let (ok, out, _) = offline(d, &["token", "list"], "");
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        lines[0].starts_with("ci\tscopes publish\tproducts acme,demo\tcreated 20"),
        "{out}"
    );
    assert!(
        lines[1].starts_with("old-style\tscopes all\tproducts all\t"),
        "{out}"
    );
    assert!(
        !out.contains(token.trim()),
        "the token itself is never shown"
    );
    let (ok, out, _) = offline(d, &["token", "revoke", "ci"], "");
    assert!(ok && out.contains("revoked token \"ci\""), "{out}");
    let (ok, _, err) = offline(d, &["token", "revoke", "ci"], "");
    assert!(!ok && err.contains("no token is named \"ci\""), "{err}");

    // Users: the password from stdin or a file, hashed with argon2id, never shown.
    let (ok, out, _) = offline(d, &["user", "list"], "");
    assert!(ok && out.contains("add the first admin"), "{out}");
    let (ok, _, err) = offline(d, &["user", "add", "ada", "--role", "admin"], "short\n");
    assert!(!ok && err.contains("shorter than 12 characters"), "{err}");
    let (ok, out, err) = offline(
        d,
        &["user", "add", "ada", "--role", "admin"],
        "a long enough secret\n",
    );
    assert!(ok && out.contains("added user ada (admin)"), "{out}{err}");
    let pw = d.join("pw");
    std::fs::write(&pw, "another long secret\n").unwrap();
    let (ok, _, err) = offline(
        d,
        &[
            "user",
            "add",
            "vic",
            "--role",
            "viewer",
            "--password-file",
            pw.to_str().unwrap(),
        ],
        "",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = offline(
        d,
        &["user", "add", "vic", "--role", "viewer"],
        "x".repeat(20).as_str(),
    );
    assert!(
        !ok && err.contains("a user named \"vic\" exists already"),
        "{err}"
    );
    let (ok, _, err) = offline(
        d,
        &["user", "add", "eve", "--role", "root"],
        "x".repeat(20).as_str(),
    );
    assert!(!ok && err.contains("viewer, operator, admin"), "{err}");
    let (ok, out, err) = offline(
        d,
        &["user", "passwd", "vic", "--role", "operator"],
        "a third long secret\n",
    );
    assert!(ok, "{out}{err}");
    let (ok, out, _) = offline(d, &["user", "list"], "");
    assert!(ok);
    assert!(
        out.contains("ada\tadmin\t") && out.contains("vic\toperator\t"),
        "{out}"
    );
    assert!(!out.contains("argon2"), "{out}");
    // What a login will check: the stored hash is argon2id and matches the new password only.
    let rt = crate::common::runtime();
    let db = rt
        .block_on(deltaroot_server::db::Db::open_sqlite(
            &d.join("deltaroot.db"),
        ))
        .unwrap();
    let (role, hash) = rt.block_on(db.user_login("vic")).unwrap().unwrap();
    assert_eq!(role, deltaroot_server::access::Role::Operator);
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(deltaroot_server::access::verify_password("a third long secret", &hash).unwrap());
    assert!(!deltaroot_server::access::verify_password("another long secret", &hash).unwrap());
    let (ok, _, _) = offline(d, &["user", "remove", "vic"], "");
    assert!(ok);
    let (ok, _, err) = offline(d, &["user", "remove", "vic"], "");
    assert!(!ok && err.contains("no user is named vic"), "{err}");
    // Every change is in the audit log, by the account that ran the command; failed
    // commands wrote nothing.
    let lines = rt.block_on(db.audit_where(None, None, None, 100)).unwrap();
    let actions: Vec<(&str, &str)> = lines
        .iter()
        .rev()
        .map(|l| (l.who.as_str(), l.action.as_str()))
        .collect();
    let me = format!(
        "cli:{}",
        ["USER", "LOGNAME"]
            .iter()
            .find_map(|v| std::env::var(v).ok().filter(|u| !u.is_empty()))
            .unwrap_or("unknown".into())
    );
    assert_eq!(
        actions,
        [
            "token-create",
            "token-create",
            "token-revoke",
            "user-add",
            "user-add",
            "user-passwd",
            "user-remove"
        ]
        .map(|a| (me.as_str(), a)),
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&lines[1].detail).unwrap(),
        serde_json::json!({"user": "vic", "role": "operator"})
    );
}
