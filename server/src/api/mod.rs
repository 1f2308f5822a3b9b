//! HTTP: the route table, its OpenAPI document, and the operations routes. The handlers live
//! by concern:
//!
//! - [`extract`]: who calls (upload tokens, checked before any body is read) and JSON bodies;
//! - [`device`]: update checks, manifests, plans (no token);
//! - [`downloads`]: immutable objects, deltas and packs (ETag, Range);
//! - [`uploads`]: the publisher's uploads and publish;
//! - [`crate::channels`]: the operator routes.
//!
//! Routes are listed in [`router`].

pub mod device;
pub mod downloads;
pub mod extract;
pub mod uploads;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::db::RolloutState;
use crate::error::{Error, Result};
use crate::App;

/// Every route of the server: methods and path, as in `openapi.json` and `/metrics`.
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    ("POST", "/v1/stored"),
    ("GET", "/v1/answer-key"),
    ("GET POST", "/v1/products/{product}/releases"),
    ("GET", "/v1/products/{product}/releases/{version}/{file}"),
    ("POST", "/v1/products/{product}/keys"),
    ("GET", "/v1/products/{product}/plans/{from}/{to}"),
    ("GET", "/v1/products/{product}/channels/{channel}/check"),
    ("GET", "/v1/products/{product}/channels"),
    ("GET", "/v1/products/{product}/channels/{channel}"),
    ("POST", "/v1/products/{product}/channels/{channel}/promote"),
    ("POST", "/v1/products/{product}/channels/{channel}/pause"),
    ("POST", "/v1/products/{product}/channels/{channel}/resume"),
    ("POST", "/v1/products/{product}/channels/{channel}/rollback"),
    ("POST", "/v1/products/{product}/channels/{channel}/rollout"),
    ("GET", "/v1/products/{product}/audit"),
    ("GET", "/v1/products/{product}/devices"),
    ("GET", "/v1/products/{product}/devices/{device}"),
    ("POST", "/v1/products/{product}/devices/{device}/key"),
    ("GET HEAD PUT", "/objects/{fan}/{name}"),
    ("GET HEAD PUT", "/deltas/{fan}/{name}"),
    ("GET HEAD PUT", "/packs/{fan}/{name}"),
];

/// The OpenAPI 3.1 document of the API.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Every route of the server.
pub fn router(app: App) -> Router {
    use crate::channels as ch;
    use downloads as down;
    use uploads as up;
    let limit = app.max_upload;
    let idle = app.timeouts.idle;
    let metrics = app.metrics.clone();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .route("/v1/stored", post(up::stored))
        .route("/v1/answer-key", get(device::answer_key))
        .route("/v1/products/{product}/keys", post(up::rotate_key))
        .route(
            "/v1/products/{product}/releases",
            post(up::publish).get(device::list_releases),
        )
        .route(
            "/v1/products/{product}/releases/{version}/{file}",
            get(device::manifest),
        )
        .route(
            "/v1/products/{product}/plans/{from}/{to}",
            get(device::plan),
        )
        .route(
            "/v1/products/{product}/channels/{channel}/check",
            get(device::check),
        )
        .route("/v1/products/{product}/channels", get(ch::list))
        .route("/v1/products/{product}/channels/{channel}", get(ch::status))
        .route(
            "/v1/products/{product}/channels/{channel}/promote",
            post(ch::promote),
        )
        .route(
            "/v1/products/{product}/channels/{channel}/pause",
            post(ch::pause),
        )
        .route(
            "/v1/products/{product}/channels/{channel}/resume",
            post(ch::resume),
        )
        .route(
            "/v1/products/{product}/channels/{channel}/rollback",
            post(ch::rollback),
        )
        .route(
            "/v1/products/{product}/channels/{channel}/rollout",
            post(ch::rollout),
        )
        .route("/v1/products/{product}/audit", get(ch::audit))
        .route("/v1/products/{product}/devices", get(ch::devices))
        .route("/v1/products/{product}/devices/{device}", get(ch::device))
        .route(
            "/v1/products/{product}/devices/{device}/key",
            post(device::enroll),
        )
        .route(
            "/objects/{fan}/{name}",
            get(down::get_object)
                .put(up::put_object)
                .head(down::get_object),
        )
        .route(
            "/deltas/{fan}/{name}",
            get(down::get_delta)
                .put(up::put_delta)
                .head(down::get_delta),
        )
        .route(
            "/packs/{fan}/{name}",
            get(down::get_pack).put(up::put_pack).head(down::get_pack),
        )
        .merge(crate::ui::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::metrics::track,
        ))
        // JSON bodies (uploads stream past this extractor limit, counted by `spool`).
        .layer(DefaultBodyLimit::max(limit))
        // A request body that sends nothing for this long is cut off.
        .layer(RequestBodyTimeoutLayer::new(idle))
        .with_state(app)
}

/// Ready when the database and the object store answer.
async fn readyz(State(app): State<App>) -> Result<&'static str> {
    app.db.ping().await.map_err(|e| Error::Unavailable {
        service: "database",
        detail: format!("{}: {e}", app.db.url()),
    })?;
    app.store.ping().await.map_err(|e| Error::Unavailable {
        service: "object store",
        detail: format!("{}: {e}", app.store.url()),
    })?;
    Ok("ready")
}

async fn metrics_text(State(app): State<App>) -> Result<Response> {
    let mut s = app.metrics.render();
    s.push_str(&format!(
        "# HELP deltaroot_delta_builds_running Delta builds running on this replica.\n\
         # TYPE deltaroot_delta_builds_running gauge\n\
         deltaroot_delta_builds_running {}\n\
         # HELP deltaroot_delta_builds_queued Pairs waiting for or in a delta build.\n\
         # TYPE deltaroot_delta_builds_queued gauge\n\
         deltaroot_delta_builds_queued {}\n",
        app.builds.running(),
        app.builds.queued()
    ));
    s.push_str(&crate::metrics::fleet_gauges(&app).await?);
    s.push_str(
        "# HELP deltaroot_channel_paused 1 while an operator pauses the channel.\n\
         # TYPE deltaroot_channel_paused gauge\n\
         # HELP deltaroot_rollout_percent Share of devices offered the channel's release now.\n\
         # TYPE deltaroot_rollout_percent gauge\n\
         # HELP deltaroot_rollout_stopped 1 while the channel's rollout is stopped.\n\
         # TYPE deltaroot_rollout_stopped gauge\n",
    );
    let now = app.clock.now();
    for (p, c, paused, ro) in app.db.all_channels().await? {
        let l = format!("product=\"{p}\",channel=\"{c}\"");
        s.push_str(&format!(
            "deltaroot_channel_paused{{{l}}} {}\n",
            u8::from(paused)
        ));
        if let Some(ro) = ro {
            let pct = if ro.state == RolloutState::Active {
                ro.percent_at(now)
            } else {
                0.0
            };
            s.push_str(&format!("deltaroot_rollout_percent{{{l}}} {pct}\n"));
            s.push_str(&format!(
                "deltaroot_rollout_stopped{{{l}}} {}\n",
                u8::from(ro.state == RolloutState::Stopped)
            ));
        }
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s).into_response())
}

#[cfg(test)]
mod tests {
    use super::{OPENAPI, ROUTES};
    use std::collections::BTreeSet;

    #[test]
    fn openapi_documents_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for m in ["get", "post", "put", "head", "delete", "patch"] {
                if item.get(m).is_some() {
                    documented.insert((m.to_uppercase(), path.clone()));
                }
            }
        }
        let routed: BTreeSet<(String, String)> = ROUTES
            .iter()
            .flat_map(|(ms, p)| ms.split(' ').map(|m| (m.to_string(), p.to_string())))
            .collect();
        assert_eq!(documented, routed);
        // Every schema reference resolves.
        let text = OPENAPI;
        for r in text.split("\"#/components/").skip(1) {
            let name = r.split('"').next().unwrap();
            let mut parts = name.split('/');
            let (kind, n) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(
                doc["components"][kind].get(n).is_some(),
                "dangling reference {name}"
            );
        }
        // Delta methods are documented by the names the API reads.
        let names: Vec<&str> = deltaroot_format::Method::ALL
            .iter()
            .map(|m| m.name())
            .collect();
        assert_eq!(
            doc["components"]["schemas"]["DeltaMethod"]["enum"],
            serde_json::json!(names)
        );
    }
}
