//! deltaroot's server: stores releases and serves them to a fleet of devices.
//!
//! - [`api`]: the HTTP routes (device API, immutable downloads, publisher uploads).
//! - [`channels`]: operator routes: promote, pause, roll back, staged rollouts, audit log.
//! - [`fleet`]: what each device is offered, batched check-ins, the rollout watcher.
//! - [`db`]: products, releases, channels, rollouts, plans, tokens and devices in SQLite
//!   or PostgreSQL.
//! - [`store`]: objects and deltas in a local folder or S3-compatible storage.
//! - [`deltas`]: deltas for release pairs the publisher did not diff, built in the background.
//! - [`metrics`]: Prometheus counters.
//! - [`client`]: the operator commands' HTTP client.
//! - [`cli`]: the `deltaroot-server` command line.

pub mod api;
pub mod channels;
pub mod cli;
pub mod client;
pub mod db;
pub mod deltas;
pub mod error;
pub mod fleet;
pub mod metrics;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use error::{Error, Result};
pub use metrics::Metrics;

/// Where state lives and how the fleet is steered.
#[derive(Clone, Debug)]
pub struct Config {
    /// The data folder: the default SQLite database and object folder live here.
    pub data: PathBuf,
    /// `sqlite://…` or `postgres://…`; SQLite in `data` when `None`.
    pub database: Option<String>,
    /// `s3://bucket/prefix`, `file:///…` or a folder; `data/store` when `None`.
    pub objects: Option<String>,
    pub s3: store::S3Options,
    /// Largest upload body, in bytes.
    pub max_upload: usize,
    /// How long a replica answers checks from its cached channel state.
    pub cache_ttl: Duration,
    pub poll: fleet::PollSettings,
    /// How often the rollout watcher looks at failure rates (`None`: never by itself).
    pub watch_every: Option<Duration>,
    /// zstd level of the deltas the server builds for pairs the publisher did not diff.
    pub delta_level: i32,
}

impl Config {
    /// Everything in `data`, the defaults otherwise.
    pub fn in_folder(data: &Path) -> Config {
        Config {
            data: data.to_owned(),
            database: None,
            objects: None,
            s3: store::S3Options::default(),
            max_upload: 4096 << 20,
            cache_ttl: Duration::from_secs(1),
            poll: fleet::PollSettings {
                secs: 3600,
                jitter: 0.2,
            },
            watch_every: Some(Duration::from_secs(5)),
            delta_level: 19,
        }
    }
}

/// Shared state of every request.
#[derive(Clone)]
pub struct App {
    pub db: db::Db,
    pub store: store::Store,
    pub metrics: Arc<Metrics>,
    pub fleet: Arc<fleet::Fleet>,
    /// Largest upload body, in bytes.
    pub max_upload: usize,
    /// Delta builds running on this replica.
    pub builds: Arc<deltas::Builds>,
    pub delta_level: i32,
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
        App::start(&Config {
            max_upload,
            ..Config::in_folder(data)
        })
        .await
    }

    /// Opens the database and object store `config` names, runs migrations, and starts the
    /// check-in writer and the rollout watcher on the current runtime.
    pub async fn start(config: &Config) -> Result<App> {
        let d = DataDir(config.data.clone());
        if config.database.is_none() || config.objects.is_none() {
            std::fs::create_dir_all(&d.0).map_err(|source| Error::Io {
                path: d.0.clone(),
                source,
            })?;
        }
        let db = match &config.database {
            Some(url) => db::Db::open(url).await?,
            None => db::Db::open_sqlite(&d.database()).await?,
        };
        let store = match &config.objects {
            Some(url) => store::Store::open(url, &config.s3)?,
            None => store::Store::local(&d.objects())?,
        };
        let metrics = Arc::new(Metrics::default());
        let fleet = fleet::Fleet::start(db.clone(), config.cache_ttl, config.poll, metrics.clone());
        if let Some(every) = config.watch_every {
            let f = Arc::downgrade(&fleet);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(f) = f.upgrade() else { return };
                    if let Err(e) = f.watch_rollouts().await {
                        tracing::error!(error = %e, "watching rollouts failed");
                    }
                }
            });
        }
        Ok(App {
            db,
            store,
            metrics,
            fleet,
            max_upload: config.max_upload,
            builds: Arc::default(),
            delta_level: config.delta_level,
        })
    }
}

/// Loads a PEM certificate chain and private key for HTTPS (HTTP/2 and HTTP/1.1 by ALPN).
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |path: &Path, what: String| Error::BadConfig(format!("{}: {what}", path.display()));
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e.to_string()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(bad(cert, "no certificate in the file".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| bad(cert, e.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `app` on `listener` (over TLS when `tls` is set) until `shutdown` resolves, then
/// stops accepting, lets requests in flight finish (downloads included, up to `grace`), and
/// writes the check-ins still queued.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    app: App,
    tls: Option<Arc<rustls::ServerConfig>>,
    grace: Duration,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let router = api::router(app.clone());
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait, do not spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                Some(acc) => {
                    let tls =
                        match tokio::time::timeout(Duration::from_secs(10), acc.accept(stream))
                            .await
                        {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls), service)
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                }
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    let _ = watcher.watch(conn).await;
                }
            }
        });
    }
    drop(listener);
    tracing::info!("shutting down: finishing requests in flight");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "requests still running after the grace period"
        );
    }
    app.fleet.flush().await;
    Ok(())
}

/// Plain HTTP, no time limit on requests in flight at shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: App,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        app,
        None,
        Duration::from_secs(365 * 86400),
        shutdown,
    )
    .await
}

/// A new random upload token.
pub fn new_token() -> String {
    let mut b = [0u8; 24];
    getrandom::fill(&mut b).expect("the OS has randomness");
    format!("drt_{}", hex::encode(b))
}
