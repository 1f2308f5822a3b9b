//! Extractors: who calls (an upload token's holder), and path parameters, query strings and
//! JSON bodies that answer errors like every other route. Product, channel and version names
//! in any of them are [`deltaroot_format::Name`]s, checked as they are read: a handler never
//! sees one that is not valid.
//!
//! [`Caller`] and [`Allowed`] read only the request's head, and handlers list them before their
//! path and body extractors, so a request without a valid token is answered 401, and one
//! whose token lacks the route's scope 403, before anything else of it is read.

use axum::extract::path::ErrorKind;
use axum::extract::rejection::PathRejection;
use std::marker::PhantomData;

use axum::extract::{
    FromRequest, FromRequestParts, OptionalFromRequestParts, Path, Query, RawPathParams, Request,
};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use deltaroot_format::{Hash, Name};

use crate::access::{Rights, Scope};
use crate::error::{Error, Result};
use crate::App;

/// The holder of an upload token calling a route that needs one. `Caller` as an extractor
/// answers 401 when the token is missing or unknown; `Option<Caller>` is `None` then.
/// [`Allowed`] also checks a scope on the path's product.
///
/// [`Caller::of`] is the one place a request's token becomes a name and its rights.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name, as `token create NAME` gave it; the audit log records it.
    pub name: String,
    pub rights: Rights,
}

impl Caller {
    /// The caller the request's `Authorization: Bearer` token names, if any: one database
    /// lookup of the token's hash, and none without the header.
    pub async fn of(app: &App, headers: &HeaderMap) -> Result<Option<Caller>> {
        let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        else {
            return Ok(None);
        };
        Ok(app
            .db
            .token_rights(token.trim())
            .await?
            .map(|rights| Caller {
                name: rights.who.name().to_string(),
                rights,
            }))
    }

    /// Refuses (403) unless the caller holds `scope` on `product`.
    pub fn require(&self, scope: Scope, product: &Name) -> Result<()> {
        self.rights.require(scope, Some(product))
    }
}

impl FromRequestParts<App> for Caller {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self> {
        Caller::of(app, &parts.headers)
            .await?
            .ok_or(Error::Unauthorized)
    }
}

impl OptionalFromRequestParts<App> for Caller {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Option<Self>> {
        Caller::of(app, &parts.headers).await
    }
}

/// The scope a route needs, as a type: `Allowed<Operate>`.
pub trait Need {
    const SCOPE: Scope;
}

/// Reading releases, channels, devices, the audit log.
pub struct Read;
/// Uploads and new releases.
pub struct Publish;
/// Promote, pause, resume, roll back, set a rollout's share.
pub struct Operate;
/// Enrolling a device's key.
pub struct Enroll;

impl Need for Read {
    const SCOPE: Scope = Scope::Read;
}
impl Need for Publish {
    const SCOPE: Scope = Scope::Publish;
}
impl Need for Operate {
    const SCOPE: Scope = Scope::Operate;
}
impl Need for Enroll {
    const SCOPE: Scope = Scope::Enroll;
}

/// A [`Caller`] holding the scope `N` on the product the path names (any product for a route
/// that names none): 401 without a known token, 403 naming the missing scope or product.
/// Like `Caller`, it reads only the request's head.
pub struct Allowed<N>(pub Caller, pub PhantomData<N>);

impl<N: Need + Send> FromRequestParts<App> for Allowed<N> {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self> {
        let caller = <Caller as FromRequestParts<App>>::from_request_parts(parts, app).await?;
        // A product that is not a valid name is answered 400 by the handler's `NamePath`.
        let product = match RawPathParams::from_request_parts(parts, app).await {
            Ok(params) => params
                .iter()
                .find(|(k, _)| *k == "product")
                .and_then(|(_, v)| Name::new("product", v).ok()),
            Err(_) => None,
        };
        caller.rights.require(N::SCOPE, product.as_ref())?;
        Ok(Allowed(caller, PhantomData))
    }
}

/// A JSON body whose rejection answers like every other error: `{"error": "..."}`.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Error;
    async fn from_request(req: Request, state: &S) -> Result<Self> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| JsonBody(v))
            .map_err(|rej| match rej.status() {
                StatusCode::PAYLOAD_TOO_LARGE => Error::TooLarge(rej.body_text()),
                _ => Error::BadRequest(rej.body_text()),
            })
    }
}

/// Path parameters read through serde, so `NamePath<(Name, Name)>` checks both names. A
/// parameter that does not read answers 400 `{"error": ...}` naming it:
/// `channel "a b" is not a valid name (...)`.
pub struct NamePath<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for NamePath<T> {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        let rej = match <Path<T> as FromRequestParts<S>>::from_request_parts(parts, state).await {
            Ok(Path(v)) => return Ok(NamePath(v)),
            Err(rej) => rej,
        };
        if let PathRejection::FailedToDeserializePathParams(e) = &rej {
            if let ErrorKind::DeserializeError { key, message, .. } = e.kind() {
                return Err(Error::BadRequest(param_message(key, message)));
            }
        }
        if rej.status() == StatusCode::BAD_REQUEST {
            return Err(Error::BadRequest(rej.body_text()));
        }
        // A handler whose parameters do not match its route.
        Err(Error::BadConfig(format!(
            "route {}: {}",
            parts.uri.path(),
            rej.body_text()
        )))
    }
}

/// What is wrong with path parameter `key`: a [`deltaroot_format::Name`]'s message names
/// the field `name`, which the parameter's own name replaces.
fn param_message(key: &str, message: &str) -> String {
    match message.strip_prefix("name \"") {
        Some(rest) => format!("{key} \"{rest}"),
        None => format!("{key}: {message}"),
    }
}

/// A query string read through serde into `T`; one that does not read answers 400
/// `{"error": ...}` naming the parameter.
pub struct NameQuery<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequestParts<S> for NameQuery<T> {
    type Rejection = Error;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| NameQuery(v))
            .map_err(|rej| Error::BadRequest(rej.body_text()))
    }
}

/// A content address from a path, or 400.
pub fn parse_hash(s: &str) -> Result<Hash> {
    s.parse()
        .map_err(|e: deltaroot_format::hash::BadHash| Error::BadRequest(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::{get, post};
    use axum::Router;
    use deltaroot_format::api::PromoteRequest;
    use deltaroot_format::{DeviceId, Name};
    use tower::ServiceExt;

    /// Routes shaped like the server's, whose handlers echo what they were given.
    fn router() -> Router {
        Router::new()
            .route(
                "/{product}/channels/{channel}",
                post(
                    |NamePath((p, c)): NamePath<(Name, Name)>,
                     JsonBody(req): JsonBody<PromoteRequest>| async move {
                        format!("{p}/{c}@{}", req.version)
                    },
                ),
            )
            .route(
                "/{product}",
                get(|NamePath(p): NamePath<Name>| async move { p.to_string() }),
            )
            .route(
                "/{product}/devices/{device}",
                get(|NamePath((_, d)): NamePath<(Name, DeviceId)>| async move { d.to_string() }),
            )
            .route(
                "/{product}/check",
                get(
                    |NameQuery(q): NameQuery<std::collections::HashMap<String, Name>>| async move {
                        q.len().to_string()
                    },
                ),
            )
    }

    async fn call(method: &str, uri: &str, body: &str) -> (StatusCode, String) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let r = router().oneshot(req).await.unwrap();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        let text = String::from_utf8(bytes.to_vec()).unwrap();
        if status.is_success() {
            return (status, text);
        }
        let v: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{status}: not a JSON error body: {text}"));
        (status, v["error"].as_str().unwrap().to_string())
    }

    #[tokio::test]
    async fn names_are_checked_where_they_are_read_and_refused_as_json_400s() {
        let ok = r#"{"version":"2.0"}"#;
        assert_eq!(
            call("POST", "/demo/channels/stable", ok).await,
            (StatusCode::OK, "demo/stable@2.0".into())
        );
        assert_eq!(call("GET", "/demo", "").await.1, "demo");
        assert_eq!(
            call("GET", "/demo/check?current=1.0&pin=2", "").await.1,
            "2"
        );

        // A bad name in the path: 400, naming the parameter and the value.
        let (s, e) = call("POST", "/demo/channels/bad..name!", ok).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert!(
            e.starts_with(r#"channel "bad..name!" is not a valid name"#),
            "{e}"
        );
        let (s, e) = call("GET", "/-rf", "").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert!(e.starts_with(r#"product "-rf" is not a valid name"#), "{e}");
        // Percent-decoded before it is checked.
        let (s, e) = call("GET", "/..%2Fetc", "").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert!(e.contains(r#""../etc" is not a valid name"#), "{e}");

        // A bad name in a JSON body: 400, naming the field and the value.
        let (s, e) = call("POST", "/demo/channels/stable", r#"{"version":"../x"}"#).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert!(
            e.contains(r#"version: name "../x" is not a valid name"#),
            "{e}"
        );
        let (s, e) = call(
            "POST",
            "/demo/channels/stable",
            r#"{"version":"2.0","floor":"a b"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert!(
            e.contains(r#"floor: name "a b" is not a valid name"#),
            "{e}"
        );

        // In a query string: 400 naming the parameter.
        let (s, e) = call("GET", "/demo/check?current=..%2Fx", "").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert!(
            e.contains(r#"current: name "../x" is not a valid name"#),
            "{e}"
        );

        // A device id in a path is refused without being echoed.
        let (s, e) = call("GET", "/demo/devices/top%20secret", "").await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{e}");
        assert!(
            e.starts_with("device: device id: ") && !e.contains("secret"),
            "{e}"
        );
    }
}
