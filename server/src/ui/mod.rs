//! The operators' dashboard under `/ui/`, server-rendered. This module holds what every
//! page stands on: logging in and out, sessions kept in the database (so any replica
//! answers), a CSRF token on every form, and a bound on failed logins.
//!
//! - `GET /ui/login`: the form (`username`, `password`, `csrf`); the CSRF token is also set
//!   as a cookie, and the post must carry both (a page of another site cannot read it).
//! - `POST /ui/login`: checks the CSRF pair, the failed-login limits (per user name, and per
//!   client address whatever the names: the socket's peer, or, from a proxy given to
//!   `serve --trust-forwarded-for`, the address its `X-Forwarded-For` names), then the password
//!   (argon2id, on the blocking pool; an unknown name costs the same as a wrong password);
//!   starts a session: cookie `drt_session`, `HttpOnly; SameSite=Strict; Path=/ui`, and
//!   `Secure` unless the server speaks plain HTTP.
//! - `POST /ui/logout`: ends the session (its CSRF token required).
//! - `GET /ui/`: the start page (a session required; without one, a redirect to the login);
//!   the other pages are in `pages.rs`, `channels.rs` (the channels page and the operator's
//!   forms: promote, change a rollout's waves, pause, resume, roll back), `release.rs`,
//!   `fleet.rs` and `ledger.rs` (the
//!   savings ledger and the file-by-file diff of two releases), their templates in
//!   `server/templates/`.

mod admin;
mod channels;
mod daily;
mod fleet;
mod ledger;
mod login;
mod pages;
mod release;

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
/// Failed logins from one client address within [`FAILURE_WINDOW_SECS`], whatever the user
/// names, before further tries from it are refused until the window passes.
pub const MAX_ADDRESS_FAILURES: u32 = 20;
/// User names, and client addresses, whose failed logins are remembered at once (each
/// limiter's own bound).
const LIMITER_CAPACITY: u64 = 10_000;

/// The dashboard's per-replica state.
pub struct Ui {
    /// Failed logins by user name: (count, first failure time in seconds).
    failures: Bounded<String, (u32, i64)>,
    /// Failed logins by the client's address (the socket's peer): (count, first failure).
    address_failures: Bounded<std::net::IpAddr, (u32, i64)>,
    /// Cookies get `Secure` (the server speaks HTTPS, or sits behind a proxy that does).
    pub secure_cookies: bool,
    /// Peers whose `X-Forwarded-For` is believed (`serve --trust-forwarded-for`).
    trusted_proxies: Vec<std::net::IpAddr>,
}

impl Ui {
    pub fn new(secure_cookies: bool, trusted_proxies: Vec<std::net::IpAddr>) -> Arc<Ui> {
        Arc::new(Ui {
            failures: Bounded::new(LIMITER_CAPACITY, FAILURE_WINDOW_SECS * 1000),
            address_failures: Bounded::new(LIMITER_CAPACITY, FAILURE_WINDOW_SECS * 1000),
            secure_cookies,
            trusted_proxies: trusted_proxies
                .into_iter()
                .map(|a| a.to_canonical())
                .collect(),
        })
    }

    /// The client's address: the socket's peer, or, when the peer is a trusted proxy, the
    /// nearest address of `X-Forwarded-For` that is not one (read from the right: what
    /// the client itself wrote on the left is not believed).
    pub fn client_address(
        &self,
        peer: Option<std::net::IpAddr>,
        headers: &HeaderMap,
    ) -> Option<std::net::IpAddr> {
        let peer = peer?;
        if !self.trusted_proxies.contains(&peer) {
            return Some(peer);
        }
        let forwarded: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for a in forwarded.iter().rev() {
            match a.parse::<std::net::IpAddr>() {
                Ok(ip) if self.trusted_proxies.contains(&ip.to_canonical()) => continue,
                Ok(ip) => return Some(ip.to_canonical()),
                Err(_) => break,
            }
        }
        Some(peer)
    }
}

/// The dashboard's routes.
pub fn routes() -> Router<App> {
    Router::new()
        .route("/ui/login", get(login::form).post(login::login))
        .route("/ui/logout", post(login::logout))
        .route("/ui/", get(pages::home))
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/assets/style.css", get(style))
        .route("/ui/products/{product}/releases", get(pages::releases))
        .route(
            "/ui/products/{product}/releases/{version}",
            get(release::release),
        )
        .route("/ui/products/{product}/ledger", get(ledger::ledger))
        .route("/ui/products/{product}/diff", get(ledger::diff))
        .route("/ui/products/{product}/channels", get(channels::channels))
        .route("/ui/products/{product}/devices", get(fleet::devices))
        .route("/ui/audit", get(fleet::audit))
        .route("/ui/admin/users", get(admin::users).post(admin::add_user))
        .route("/ui/admin/users/role", post(admin::set_role))
        .route("/ui/admin/users/remove", post(admin::remove_user))
        .route(
            "/ui/admin/tokens",
            get(admin::tokens).post(admin::create_token),
        )
        .route("/ui/admin/tokens/revoke", post(admin::revoke_token))
        .route("/ui/products/{product}/promote", post(channels::promote))
        .route(
            "/ui/products/{product}/rollout",
            post(channels::change_rollout),
        )
        .route("/ui/products/{product}/rollback", post(channels::rollback))
        .route(
            "/ui/products/{product}/channels/{channel}/{action}",
            post(channels::pause_or_resume),
        )
}

/// A 303 to `to`.
pub fn redirect(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

/// A form that carries only the session's CSRF token (sign-out, pause, resume).
#[derive(serde::Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
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

/// A rendered page, or a 500 naming the template.
pub fn html<T: askama::Template>(status: StatusCode, t: &T) -> Response {
    match t.render() {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => crate::error::Error::BadConfig(format!("rendering a page: {e}")).into_response(),
    }
}

#[derive(askama::Template)]
#[template(path = "error.html")]
struct ErrorPage {
    user: Option<User>,
    title: String,
    message: String,
    back: &'static str,
}

/// An error answered as a page of the dashboard, with the status the API would give: a 4xx
/// names what was wrong, a 5xx says "internal error" (the detail is logged).
pub struct PageError(pub crate::error::Error);

impl From<crate::error::Error> for PageError {
    fn from(e: crate::error::Error) -> PageError {
        PageError(e)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        if status.is_server_error() {
            tracing::error!(error = %self.0, "page failed");
        }
        let title = match status {
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            s if s.is_server_error() => "Server error",
            _ => "Refused",
        };
        html(
            status,
            &ErrorPage {
                user: None,
                title: title.into(),
                message: self.0.public_message(),
                back: "/ui/",
            },
        )
    }
}

/// What the dashboard's handlers answer.
pub type PageResult<T> = std::result::Result<T, PageError>;

/// The signed-in user, as the frame of every page shows it.
pub struct User {
    pub name: String,
    pub role: String,
    pub csrf: String,
}

impl From<&Session> for User {
    fn from(s: &Session) -> User {
        User {
            name: s.user.clone(),
            role: s.role.to_string(),
            csrf: s.csrf.clone(),
        }
    }
}

/// The dashboard's one style sheet, served from the binary (nothing from the internet).
const STYLE: &str = include_str!("../../templates/assets/style.css");

async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        STYLE,
    )
        .into_response()
}

impl Session {
    /// What the session's user may do.
    pub fn rights(&self) -> Rights {
        Rights::of_user(&self.user, self.role)
    }

    /// The audit log's name for the session's user: `user:NAME`.
    pub fn who(&self) -> String {
        format!("user:{}", self.user)
    }

    /// Refuses (403) a form whose CSRF token is not this session's.
    pub fn check_csrf(&self, csrf: &str) -> PageResult<()> {
        if csrf != self.csrf {
            return Err(PageError(crate::error::Error::Forbidden(
                "the form was not sent by this session: reload the page".into(),
            )));
        }
        Ok(())
    }
}
