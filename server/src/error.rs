//! The one error type of the server library, and how each variant answers over HTTP.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use deltaroot_format::api::ErrorBody;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or unknown upload token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("upload is too large: {0}")]
    TooLarge(String),
    /// A service the server depends on does not answer: `service` names it in the answer,
    /// `detail` (addresses, driver messages) is only logged.
    #[error("{service} is unavailable: {detail}")]
    Unavailable {
        service: &'static str,
        detail: String,
    },
    /// An upload body did not arrive: the client stalled past the idle timeout or broke off.
    #[error("reading the request body: {0}")]
    Body(String),
    /// Work run on the blocking pool panicked or was cancelled.
    #[error("{what}: the task failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("configuration: {0}")]
    BadConfig(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("connecting to database {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("object store at {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] deltaroot_format::Error),
    #[error("{method} {url}: {source}")]
    Request {
        method: &'static str,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url}: server answered {status}: {message}")]
    Remote {
        method: &'static str,
        url: String,
        status: u16,
        message: String,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<std::path::PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) | Error::Format(_) => StatusCode::BAD_REQUEST,
            Error::Unauthorized => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Body(_) => StatusCode::BAD_REQUEST,
            Error::Store {
                source: object_store::Error::NotFound { .. },
                ..
            } => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the answer's body says: a 4xx names what was wrong with the request; a 5xx
    /// says no more than its kind (database messages, paths and addresses stay in the log).
    pub fn public_message(&self) -> String {
        match self {
            Error::Unavailable { service, .. } => format!("{service} is unavailable"),
            // The store's own message names the folder or bucket: the relative path will do.
            Error::Store {
                path,
                source: object_store::Error::NotFound { .. },
            } => format!("{path} is not stored"),
            e if e.status().is_server_error() => "internal error".into(),
            e => e.to_string(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let body = ErrorBody {
            error: self.public_message(),
        };
        (status, axum::Json(body)).into_response()
    }
}

/// Runs CPU-bound or blocking work (signature checks, plans, hashing, decompression) on
/// tokio's blocking pool. A panic there answers 500, not a client error.
pub async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|source| Error::Task { what, source })?
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(e: Error) -> (StatusCode, String) {
        let r = e.into_response();
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        (status, v["error"].as_str().unwrap().to_string())
    }

    #[tokio::test]
    async fn server_errors_answer_without_internals() {
        let db = Error::Db(sqlx::Error::Protocol(
            "relation \"plans\" does not exist at postgres://admin:secret@10.0.0.5/prod".into(),
        ));
        assert_eq!(
            answer(db).await,
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
        );
        let io = Error::Io {
            path: "/srv/deltaroot/tmp/upload-1".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(
            answer(io).await,
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
        );
        let down = Error::Unavailable {
            service: "database",
            detail: "postgres://admin:secret@10.0.0.5/prod: connection refused".into(),
        };
        assert_eq!(
            answer(down).await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "database is unavailable".into()
            )
        );
        // Client errors keep saying what was wrong.
        assert_eq!(
            answer(Error::NotFound("product demo has no release 9.0".into())).await,
            (
                StatusCode::NOT_FOUND,
                "product demo has no release 9.0".into()
            )
        );
    }

    #[tokio::test]
    async fn a_panic_on_the_blocking_pool_answers_500() {
        let e = blocking("hashing an upload", || -> Result<()> {
            panic!("index out of bounds at /build/src/lib.rs:12")
        })
        .await
        .unwrap_err();
        assert!(matches!(e, Error::Task { .. }), "{e:?}");
        assert_eq!(
            answer(e).await,
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error".into())
        );
    }
}
