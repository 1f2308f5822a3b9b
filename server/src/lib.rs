//! deltaroot's server: stores releases and serves them to devices.
//!
//! - [`api`]: the HTTP routes (device API, immutable downloads, publisher uploads).
//! - [`db`]: products, releases, channels, plans and tokens in SQLite.
//! - [`store`]: objects and deltas in a local folder (or any `object_store` backend).
//! - [`cli`]: the `deltaroot-server` command line.

pub mod api;
pub mod cli;
pub mod db;
pub mod error;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

pub use error::{Error, Result};

/// Counters behind `/metrics`.
#[derive(Default)]
pub struct Metrics {
    pub object_bytes: AtomicU64,
    pub delta_bytes: AtomicU64,
    pub checks: AtomicU64,
}

/// Shared state of every request.
#[derive(Clone)]
pub struct App {
    pub db: db::Db,
    pub store: store::Store,
    pub metrics: Arc<Metrics>,
    /// Largest upload body, in bytes.
    pub max_upload: usize,
}

/// Where the embedded default keeps its files.
pub struct DataDir(pub PathBuf);

impl DataDir {
    pub fn database(&self) -> PathBuf {
        self.0.join("deltaroot.db")
    }
    pub fn objects(&self) -> PathBuf {
        self.0.join("store")
    }
}

impl App {
    /// Opens the SQLite database and object folder in `data`.
    pub async fn open(data: &Path, max_upload: usize) -> Result<App> {
        std::fs::create_dir_all(data).map_err(|source| Error::Io {
            path: data.to_owned(),
            source,
        })?;
        let d = DataDir(data.to_owned());
        Ok(App {
            db: db::Db::open_sqlite(&d.database()).await?,
            store: store::Store::local(&d.objects())?,
            metrics: Arc::new(Metrics::default()),
            max_upload,
        })
    }
}

/// Serves `app` on `listener` until `shutdown` resolves, finishing requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = api::router(app).layer(tower_http::trace::TraceLayer::new_for_http());
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A new random upload token.
pub fn new_token() -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).expect("the OS has randomness");
    format!("drt_{}", hex::encode(b))
}
