//! The operators' dashboard under `/ui/`, server-rendered. This module holds what every
//! page stands on: logging in and out, sessions kept in the database (so any replica
//! answers), a CSRF token on every form, and a bound on failed logins.
//!
//! - `GET /ui/login`: the form (`username`, `password`, `csrf`); the CSRF token is also set
//!   as a cookie, and the post must carry both (a page of another site cannot read it).
//! - `POST /ui/login`: checks the CSRF pair, the failed-login limit, then the password
//!   (argon2id, on the blocking pool; an unknown name costs the same as a wrong password);
//!   starts a session: cookie `drt_session`, `HttpOnly; SameSite=Strict; Path=/ui`, and
//!   `Secure` unless the server speaks plain HTTP.
//! - `POST /ui/logout`: ends the session (its CSRF token required).
//! - `GET /ui/`: the start page (a session required; without one, a redirect to the login).

mod login;

use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::access::Rights;
use crate::cache::Bounded;
use crate::App;

pub use login::Session;

/// How long a session lasts, in seconds (12 hours).
pub const SESSION_SECS: i64 = 12 * 3600;
/// Failed logins of one user name within [`FAILURE_WINDOW_SECS`] before further tries are
/// refused until the window passes.
pub const MAX_FAILURES: u32 = 5;
pub const FAILURE_WINDOW_SECS: i64 = 300;
/// User names whose failed logins are remembered at once (the limiter's own bound).
const LIMITER_CAPACITY: u64 = 10_000;

/// The dashboard's per-replica state.
pub struct Ui {
    /// Failed logins by user name: (count, first failure time in seconds).
    failures: Bounded<String, (u32, i64)>,
    /// Cookies get `Secure` (the server speaks HTTPS, or sits behind a proxy that does).
    pub secure_cookies: bool,
}

impl Ui {
    pub fn new(secure_cookies: bool) -> Arc<Ui> {
        Arc::new(Ui {
            failures: Bounded::new(LIMITER_CAPACITY, FAILURE_WINDOW_SECS * 1000),
            secure_cookies,
        })
    }
}

/// The dashboard's routes.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/ui/login", get(login::form).post(login::login))
        .route("/ui/logout", post(login::logout))
        .route("/ui/", get(home))
        .route("/ui", get(|| async { redirect("/ui/") }))
}

/// A 303 to `to`.
pub fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

/// `name=value` of the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value for the dashboard's paths.
pub fn set_cookie(ui: &Ui, name: &str, value: &str, max_age: i64) -> HeaderValue {
    let secure = if ui.secure_cookies { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("cookie values are hex")
}

/// Text made safe for HTML.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: the dashboard's frame around `body` (already escaped).
pub fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · deltaroot</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.4}}\
         label{{display:block;margin:.6rem 0 .2rem}}input{{font-size:1rem;padding:.4rem}}\
         button{{font-size:1rem;padding:.4rem 1rem;margin-top:1rem}}.error{{color:#a00}}</style>\
         </head><body><main>{body}</main></body></html>\n",
        escape(title)
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// The start page: who is signed in, and the products.
async fn home(
    axum::extract::State(app): axum::extract::State<App>,
    s: Option<Session>,
) -> crate::error::Result<Response> {
    let Some(s) = s else {
        return Ok(redirect("/ui/login"));
    };
    let products = app.db.product_names().await?;
    let list = if products.is_empty() {
        "<p>No product yet: publish a first release with <code>deltaroot publish NEW --product P \
         --version V --key release.key --server URL --token T</code>.</p>"
            .to_string()
    } else {
        let items: String = products
            .iter()
            .map(|p| format!("<li>{}</li>", escape(p)))
            .collect();
        format!("<h2>Products</h2><ul>{items}</ul>")
    };
    Ok(page(
        "Products",
        &format!(
            "<h1>deltaroot</h1><p>Signed in as <strong>{}</strong> ({}).</p>{list}\
             <form method=\"post\" action=\"/ui/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Sign out</button></form>",
            escape(&s.user),
            s.role,
            escape(&s.csrf)
        ),
    ))
}

impl Session {
    /// What the session's user may do.
    pub fn rights(&self) -> Rights {
        Rights::of_user(&self.user, self.role)
    }
}
