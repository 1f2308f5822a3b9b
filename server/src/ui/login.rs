//! Logging in and out, and the [`Session`] extractor every page takes.

use axum::extract::{FromRequestParts, OptionalFromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Form;
use serde::Deserialize;

use super::{
    cookie, html, redirect, set_cookie, CsrfForm, User, FAILURE_WINDOW_SECS, MAX_ADDRESS_FAILURES,
    MAX_FAILURES, SESSION_SECS,
};
use super::{PageError, PageResult};
use crate::access::{verify_password, Role};
use crate::cache::Bounded;
use crate::conn::Peer;
use crate::error::{blocking, Error, Result};
use crate::App;

/// The session cookie.
pub const SESSION_COOKIE: &str = "drt_session";
/// The login form's CSRF cookie (before there is a session).
pub const LOGIN_CSRF_COOKIE: &str = "drt_login_csrf";

/// A signed-in user: the request carried the cookie of a live session.
#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    pub role: Role,
    /// The token every form of this session carries.
    pub csrf: String,
    /// The cookie's value, to end the session.
    id: String,
}

impl OptionalFromRequestParts<App> for Session {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Option<Self>> {
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        Ok(app.db.session(id).await?.map(|s| Session {
            user: s.user,
            role: s.role,
            csrf: s.csrf,
            id: id.to_string(),
        }))
    }
}

impl FromRequestParts<App> for Session {
    type Rejection = Response;
    async fn from_request_parts(
        parts: &mut Parts,
        app: &App,
    ) -> std::result::Result<Self, Response> {
        match <Session as OptionalFromRequestParts<App>>::from_request_parts(parts, app).await {
            Ok(Some(s)) => Ok(s),
            Ok(None) => Err(redirect("/ui/login")),
            Err(e) => Err(e.into_response()),
        }
    }
}

/// 32 random bytes as hex: session ids and CSRF tokens.
fn random() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS has randomness");
    hex::encode(b)
}

#[derive(askama::Template)]
#[template(path = "login.html")]
struct LoginPage<'a> {
    user: Option<User>,
    csrf: &'a str,
    error: Option<String>,
    name: &'a str,
}

fn login_page(status: StatusCode, csrf: &str, error: Option<&str>, name: &str) -> Response {
    html(
        status,
        &LoginPage {
            user: None,
            csrf,
            error: error.map(str::to_string),
            name,
        },
    )
}

/// `GET /ui/login`: the form, with a fresh CSRF token in a field and a cookie.
pub async fn form(State(app): State<App>, s: Option<Session>) -> Response {
    if s.is_some() {
        return redirect("/ui/");
    }
    let csrf = random();
    let mut r = login_page(StatusCode::OK, &csrf, None, "");
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&app.ui, LOGIN_CSRF_COOKIE, &csrf, 3600),
    );
    r
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

/// The hash of a random password nobody knows, verified for unknown users so that they
/// cost as much as a wrong password.
fn nobody() -> Result<String> {
    static NOBODY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(h) = NOBODY.get() {
        return Ok(h.clone());
    }
    let h = crate::access::hash_password(&random())?;
    Ok(NOBODY.get_or_init(|| h).clone())
}

/// The seconds to wait when `key` has `max` failures within the window, else `None`.
fn locked<K, Q>(
    failures: &Bounded<K, (u32, i64)>,
    key: &Q,
    max: u32,
    now: i64,
    now_ms: i64,
) -> Option<i64>
where
    K: std::hash::Hash + Eq + Clone + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
{
    let (n, since) = failures.get(key, now_ms)?;
    (n >= max).then(|| (since + FAILURE_WINDOW_SECS - now).max(1))
}

/// Counts one more failure of `key`; the count.
fn failed<K: std::hash::Hash + Eq + Clone>(
    failures: &Bounded<K, (u32, i64)>,
    key: K,
    now: i64,
    now_ms: i64,
) -> u32 {
    let (n, since) = failures.get(&key, now_ms).unwrap_or((0, now));
    // The window counts from the first failure: stored with that time.
    failures.insert(key, (n + 1, since), since * 1000);
    n + 1
}

/// `POST /ui/login`.
pub async fn login(
    State(app): State<App>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
    Form(f): Form<LoginForm>,
) -> PageResult<Response> {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or("");
    if f.csrf.is_empty() || expected != f.csrf {
        return Err(PageError(Error::Forbidden(
            "the sign-in form has expired or was not sent by this site: reload the page".into(),
        )));
    }
    let name = f.username.trim().to_string();
    let now = app.clock.now();
    let now_ms = app.clock.now_ms();
    let key = name.to_lowercase();
    let address = app
        .ui
        .client_address(peer.map(|Extension(Peer(ip))| ip), &headers);
    // Refused before the password is looked at: too many failures from this address (for
    // any names), or for this name (from any address).
    let limited = address
        .and_then(|ip| {
            locked(
                &app.ui.address_failures,
                &ip,
                MAX_ADDRESS_FAILURES,
                now,
                now_ms,
            )
            .map(|w| (w, "from this address"))
        })
        .or_else(|| {
            locked(&app.ui.failures, &key, MAX_FAILURES, now, now_ms).map(|w| (w, "for this user"))
        });
    if let Some((wait, whose)) = limited {
        tracing::warn!(user = %name, address = ?address, "sign-in refused: too many failures {whose}");
        let mut r = login_page(
            StatusCode::TOO_MANY_REQUESTS,
            &f.csrf,
            Some(&format!(
                "Too many failed sign-ins {whose}: try again in {wait} s."
            )),
            &name,
        );
        r.headers_mut().insert(
            header::RETRY_AFTER,
            wait.to_string().parse().expect("digits"),
        );
        return Ok(r);
    }
    let user = app.db.user_login(&name).await?;
    let password = f.password;
    let (role, good) = blocking("checking a password", move || {
        let (role, hash) = match user {
            Some((role, hash)) => (Some(role), hash),
            None => (None, nobody()?),
        };
        Ok((role, verify_password(&password, &hash)?))
    })
    .await?;
    let Some(role) = role.filter(|_| good) else {
        let n = failed(&app.ui.failures, key, now, now_ms);
        if let Some(ip) = address {
            failed(&app.ui.address_failures, ip, now, now_ms);
        }
        tracing::warn!(user = %name, address = ?address, failures = n, "failed sign-in");
        return Ok(login_page(
            StatusCode::UNAUTHORIZED,
            &f.csrf,
            Some("Wrong user name or password."),
            &name,
        ));
    };
    app.ui.failures.insert(key, (0, now), now * 1000);
    let id = random();
    app.db
        .create_session(&id, &name, &random(), SESSION_SECS)
        .await?;
    tracing::info!(user = %name, %role, "signed in");
    let mut r = redirect("/ui/");
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&app.ui, SESSION_COOKIE, &id, SESSION_SECS),
    );
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&app.ui, LOGIN_CSRF_COOKIE, "", 0),
    );
    Ok(r)
}

/// `POST /ui/logout`: ends the session; its CSRF token is required.
pub async fn logout(
    State(app): State<App>,
    s: Session,
    Form(f): Form<CsrfForm>,
) -> PageResult<Response> {
    s.check_csrf(&f.csrf)?;
    app.db.end_session(&s.id).await?;
    tracing::info!(user = %s.user, "signed out");
    let mut r = redirect("/ui/login");
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&app.ui, SESSION_COOKIE, "", 0),
    );
    Ok(r)
}
