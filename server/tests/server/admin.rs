//! The dashboard's admin pages (users and tokens: admins only, CSRF on every form, each change
//! in the audit log) and the channels page's rollback with an uploaded signed statement.

use deltaroot_server::access::Role;

use crate::common::Backend;
use crate::dashboard::{browser, sign_in};
use crate::fleet::fleet;

on_both_backends!(
    admins_manage_users_and_tokens_from_the_dashboard,
    operators_roll_back_with_an_uploaded_statement,
);

const EXE: &str = env!("CARGO_BIN_EXE_deltaroot-server");

/// `(status, location, body)` of a request with a session cookie.
fn send(req: reqwest::blocking::RequestBuilder, session: &str) -> (u16, Option<String>, String) {
    let r = req
        .header("cookie", format!("drt_session={session}"))
        .send()
        .unwrap();
    let location = r
        .headers()
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    (r.status().as_u16(), location, r.text().unwrap())
}

fn admins_manage_users_and_tokens_from_the_dashboard(backend: Backend) {
    let f = fleet(backend, 2, "1.0");
    let s = &f.server;
    let url = &s.url;
    let b = browser();
    for (name, role) in [("root", Role::Admin), ("op", Role::Operator)] {
        s.add_user(name, role);
    }
    let get = |session: &str, path: &str| {
        let (st, _, body) = send(b.get(format!("{url}{path}")), session);
        (st, body)
    };
    let post = |session: &str, path: &str, form: &[(&str, &str)]| {
        send(b.post(format!("{url}{path}")).form(form), session)
    };

    // An operator gets 403 on every admin page and form, even with its own CSRF token.
    let (op, op_csrf) = sign_in(&b, url, "op", "a long enough secret");
    for path in ["/ui/admin/users", "/ui/admin/tokens"] {
        let (st, html) = get(&op, path);
        assert_eq!(st, 403, "{path}: {html}");
        assert!(html.contains("lacks the admin scope"), "{html}");
    }
    let forms: [(&str, &[(&str, &str)]); 5] = [
        (
            "/ui/admin/users",
            &[
                ("name", "eve"),
                ("role", "admin"),
                ("password", "a long enough secret"),
            ],
        ),
        ("/ui/admin/users/role", &[("name", "op"), ("role", "admin")]),
        (
            "/ui/admin/users/remove",
            &[("name", "root"), ("confirm", "yes")],
        ),
        ("/ui/admin/tokens", &[("name", "mine"), ("operate", "yes")]),
        (
            "/ui/admin/tokens/revoke",
            &[("name", "ci"), ("confirm", "yes")],
        ),
    ];
    for (path, form) in forms {
        let mut with = vec![("csrf", op_csrf.as_str())];
        with.extend_from_slice(form);
        let (st, _, _) = post(&op, path, &with);
        assert_eq!(st, 403, "{path}");
    }
    assert_eq!(s.op(s.app.db.users()).unwrap().len(), 2);
    assert!(s
        .op(s.app.db.tokens())
        .unwrap()
        .iter()
        .all(|t| t.name != "mine"));

    // An admin: a form without the CSRF token, or with a wrong one, is refused.
    let (root, csrf) = sign_in(&b, url, "root", "a long enough secret");
    let (st, html) = get(&root, "/ui/admin/users");
    assert_eq!(st, 200, "{html}");
    assert!(html.contains("<td>op</td><td>operator</td>"), "{html}");
    assert!(html.contains("href=\"/ui/admin/users\""), "{html}");
    let add = |token: &str, name: &str, password: &str| {
        post(
            &root,
            "/ui/admin/users",
            &[
                ("csrf", token),
                ("name", name),
                ("role", "viewer"),
                ("password", password),
            ],
        )
    };
    assert_eq!(add("", "vi", "a long enough secret").0, 403);
    assert_eq!(add("00", "vi", "a long enough secret").0, 403);
    let (st, _, html) = add(&csrf, "vi", "too short");
    assert_eq!(st, 400);
    assert!(html.contains("shorter than 12 characters"), "{html}");
    assert_eq!(s.op(s.app.db.users()).unwrap().len(), 2);

    // Add a viewer, who can sign in; make them an operator; remove them (which ends their
    // session).
    let (st, location, _) = add(&csrf, "vi", "a long enough secret");
    assert_eq!(
        (st, location.as_deref()),
        (303, Some("/ui/admin/users?done=add"))
    );
    let (st, _, html) = add(&csrf, "vi", "a long enough secret");
    assert_eq!(st, 409, "{html}");
    let (vi, _) = sign_in(&b, url, "vi", "a long enough secret");
    assert_eq!(get(&vi, "/ui/").0, 200);
    let (st, _, _) = post(
        &root,
        "/ui/admin/users/role",
        &[("csrf", &csrf), ("name", "vi"), ("role", "operator")],
    );
    assert_eq!(st, 303);
    let (_, html) = get(&root, "/ui/admin/users?done=role");
    assert!(html.contains("<td>vi</td><td>operator</td>"), "{html}");
    assert_eq!(get(&vi, "/ui/").0, 303, "a new role ends the sessions");
    let (vi, _) = sign_in(&b, url, "vi", "a long enough secret");
    let (st, _, _) = post(
        &root,
        "/ui/admin/users/remove",
        &[("csrf", &csrf), ("name", "vi")],
    );
    assert_eq!(st, 400, "removing needs the confirmation");
    let (st, _, _) = post(
        &root,
        "/ui/admin/users/remove",
        &[("csrf", &csrf), ("name", "vi"), ("confirm", "yes")],
    );
    assert_eq!(st, 303);
    assert_eq!(get(&vi, "/ui/").0, 303, "a removed user's session ends");
    assert!(s
        .op(s.app.db.users())
        .unwrap()
        .iter()
        .all(|u| u.name != "vi"));
    // An admin cannot remove or demote themselves.
    let (st, _, _) = post(
        &root,
        "/ui/admin/users/remove",
        &[("csrf", &csrf), ("name", "root"), ("confirm", "yes")],
    );
    assert_eq!(st, 400);

    // Create a read token for demo: shown once, then only its name, scopes and products.
    let (st, _, html) = post(
        &root,
        "/ui/admin/tokens",
        &[
            ("csrf", &csrf),
            ("name", "dash"),
            ("read", "yes"),
            ("products", "demo"),
        ],
    );
    assert_eq!(st, 200, "{html}");
    let token = html
        .split("<code id=\"new-token\">")
        .nth(1)
        .and_then(|t| t.split('<').next())
        .unwrap()
        .to_string();
    assert_eq!(token.len(), deltaroot_server::new_token().len());
    let (_, html) = get(&root, "/ui/admin/tokens");
    assert!(
        html.contains("<td>dash</td><td>read</td><td>demo</td>"),
        "{html}"
    );
    assert!(!html.contains(&token), "the token is shown only once");
    // It reads demo, and may not operate.
    let api = |method: &str, path: &str| {
        let req = match method {
            "POST" => f.http.post(format!("{url}/{path}")),
            _ => f.http.get(format!("{url}/{path}")),
        };
        req.bearer_auth(&token)
            .header("content-type", "application/json")
            .body(r#"{"version":"2.0","percent":10}"#)
            .send()
            .unwrap()
            .status()
            .as_u16()
    };
    assert_eq!(api("GET", "v1/products/demo/channels"), 200);
    assert_eq!(api("POST", "v1/products/demo/channels/stable/promote"), 403);
    // Revoked (with the confirmation): refused from then on.
    let (st, location, _) = post(
        &root,
        "/ui/admin/tokens/revoke",
        &[("csrf", &csrf), ("name", "dash"), ("confirm", "yes")],
    );
    assert_eq!(
        (st, location.as_deref()),
        (303, Some("/ui/admin/tokens?done=revoke"))
    );
    assert_eq!(api("GET", "v1/products/demo/channels"), 401);

    // Every change is in the audit log under the admin's name.
    let (_, html) = get(&root, "/ui/audit?who=user:root");
    for action in [
        "user-add",
        "user-role",
        "user-remove",
        "token-create",
        "token-revoke",
    ] {
        assert!(
            html.contains(&format!("<td>{action}</td>")),
            "{action}: {html}"
        );
    }
    assert!(
        !html.contains(&token),
        "the audit log never holds the token"
    );
}

fn operators_roll_back_with_an_uploaded_statement(backend: Backend) {
    let f = fleet(backend, 3, "2.0");
    let s = &f.server;
    let url = &s.url;
    let b = browser();
    s.add_user("op", Role::Operator);
    let (op, csrf) = sign_in(&b, url, "op", "a long enough secret");

    // The page shows the command and the form.
    let (st, _, html) = send(b.get(format!("{url}/ui/products/demo/channels")), &op);
    assert_eq!(st, 200);
    assert!(
        html.contains("--out rollback.json")
            && html.contains("action=\"/ui/products/demo/rollback\""),
        "{html}"
    );

    // `rollback --out FILE` signs without a server.
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("release.key");
    std::fs::write(&key, f.key.to_text()).unwrap();
    let sign = |channel: &str, version: &str| {
        let out = dir.path().join(format!("{channel}-{version}.json"));
        let o = std::process::Command::new(EXE)
            .args([
                "rollback",
                "--product",
                "demo",
                "--channel",
                channel,
                version,
            ])
            .arg("--key")
            .arg(&key)
            .arg("--out")
            .arg(&out)
            .env_remove("DELTAROOT_SERVER")
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read_to_string(&out).unwrap()
    };
    let good = sign("stable", "1.0");
    let other = sign("ci", "1.0");
    let roll = |channel: &str, statement: &str, token: &str| {
        send(
            b.post(format!("{url}/ui/products/demo/rollback")).form(&[
                ("csrf", token),
                ("channel", channel),
                ("statement", statement),
                ("confirm", "yes"),
            ]),
            &op,
        )
    };
    // Refused: a statement for another channel, a tampered one, not JSON, a wrong CSRF token.
    let (st, _, html) = roll("stable", &other, &csrf);
    assert_eq!(st, 400);
    assert!(
        html.contains("the statement is for demo/ci, not demo/stable"),
        "{html}"
    );
    let tampered = {
        let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
        let text = v["statement"].as_str().unwrap().to_string();
        let mut bytes = base64_decode(&text);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        v["statement"] = base64_encode(&bytes).into();
        v.to_string()
    };
    let (st, _, html) = roll("stable", &tampered, &csrf);
    assert_eq!(st, 400);
    assert!(html.contains("signed with the product"), "{html}");
    let (st, _, html) = roll("stable", "not a statement", &csrf);
    assert_eq!(st, 400);
    assert!(html.contains("rollback … --out FILE"), "{html}");
    assert_eq!(roll("stable", &good, "00").0, 403);
    assert_eq!(f.status().version.as_deref(), Some("2.0"));

    // The right one rolls stable back to 1.0, under the user's name in the audit log.
    let (st, location, _) = roll("stable", &good, &csrf);
    assert_eq!(
        (st, location.as_deref()),
        (303, Some("/ui/products/demo/channels?done=rollback"))
    );
    let st = f.status();
    assert_eq!(
        (st.version.as_deref(), st.downgrade.as_deref()),
        (Some("1.0"), Some("1.0"))
    );
    let audit = s.op(s.client().audit("demo")).unwrap();
    assert_eq!(
        (audit[0].who.as_str(), audit[0].action.as_str()),
        ("user:op", "rollback")
    );
    let (_, _, html) = send(
        b.get(format!("{url}/ui/products/demo/channels?done=rollback")),
        &op,
    );
    assert!(
        html.contains("Rolled back to 1.0 by a signed downgrade."),
        "{html}"
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}
